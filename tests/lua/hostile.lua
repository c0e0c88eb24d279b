-- hostile.lua: plugins that try to crash, freeze or confuse the host.
-- Run by tests/e2e/lua.sh: kvscope run --model TINY --hook-ms 50 hostile.lua
--   - re-entrancy: every session method from this session's turn_end hook
--     (close, reset, chat ... refused with an error naming the hook; pin and
--     the readers allowed), past the turns array's first growth (turn 17);
--     deferred methods from fast hooks (token, turn_start, evict) and from a
--     retention policy's callback are refused by the tier check;
--   - error values: a table whose __index fails or loops, one whose
--     __tostring loops, a forged exit request in a plugin: each is a plain
--     error of the call, never an unprotected one;
--   - time: each construct that once froze the host (string.rep of "",
--     table.move of 2^40, backtracking patterns, table functions under a
--     huge __len, an xpcall handler that loops, a __close that loops in a
--     dying coroutine, a long load, a long reply) stops at the command's
--     50 ms deadline (the best of 3 tries within 250 ms), and __gc is refused;
--   - the runtime keeps working after all of it.
local kvscope = require "kvscope"
local fails = 0
local function check(cond, what)
  if cond then print("ok   " .. what) else print("FAIL " .. what); fails = fails + 1 end
end
local function first_line(v) return (tostring(v):gsub("\n.*", "")) end

-- ---------------------------------------------------------------- re-entrancy
local s = kvscope.session{ temp = 0, max_tokens = 2 }
local methods = {
  close = function() s:close() end, reset = function() s:reset() end,
  chat = function() s:chat("x") end, feed = function() s:feed("x") end,
  prompt = function() s:prompt("x") end, generate = function() s:generate(1) end,
  end_reply = function() s:end_reply() end, set_policy = function() s:set_policy("window") end,
  set_budget = function() s:set_budget(64) end, set_length = function() s:set_length("10w") end,
}
local refused, allowed, ends = {}, {}, 0
local h_end = kvscope.on("turn_end", function(t)
  ends = ends + 1
  for name, fn in pairs(methods) do
    local ok, err = pcall(fn)
    if not ok and tostring(err):find("session:" .. name .. "%(%) inside this session's turn_end hook: not allowed") then
      refused[name] = (refused[name] or 0) + 1
    end
  end
  local ok, err = pcall(function() local p = s:tokens()[1].position s:pin(p) s:pin(p, false) end)
  local ok2, n = pcall(function() return s:turns() + #s:tokens() + s:stats().n_cached end)
  if ok and ok2 and n > 0 and s:turn(t.index).reply == t.reply then allowed[#allowed + 1] = true
  elseif #allowed == 0 then print("  pin: " .. tostring(err) .. ", readers: " .. tostring(n)) end
end)
local replies = {}
for i = 1, 20 do replies[i] = s:chat("turn " .. i) end
kvscope.off(h_end)
local all = true
for name in pairs(methods) do
  all = all and refused[name] == 20
  if refused[name] ~= 20 then print("  " .. name .. " refused " .. tostring(refused[name]) .. " of 20 times") end
end
check(ends == 20 and all, "every changing method is refused inside this session's turn_end hook, 20 turns")
check(#allowed == 20, "pin and the readers work inside it (" .. #allowed .. " of 20)")
local same = s:turns() == 20
for i = 1, 20 do same = same and s:turn(i).reply == replies[i] end
check(same, "the replies chat returned are the turns' replies (the turns array grew past 16)")

-- another session may be driven from the turn_end hook of this one
local other = kvscope.session{ temp = 0, max_tokens = 2 }
local nested
local h = kvscope.on("turn_end", function() if not nested then nested = other:chat("from a hook") end end)
-- the nested chat runs under the hook's 50 ms deadline, which a loaded
-- machine can pass before a reply ends: a few turns give it its chances
for _ = 1, 5 do
  s:chat("drive the other one")
  if nested then break end
end
kvscope.off(h)
check(type(nested) == "string" and other:turns() >= 1, "another session chats from this one's turn_end hook")

-- fast hooks and policy callbacks: deferred methods refused by the tier check
local tier = {}
local function try_all(where)
  for _, fn in ipairs{ function() s:chat("x") end, function() s:close() end, function() s:reset() end,
                       function() s:pin(1) end, function() s:set_budget(64) end } do
    local ok, err = pcall(fn)
    if not ok and tostring(err):find("is deferred") then tier[where] = (tier[where] or 0) + 1 end
  end
end
local hooks = {
  kvscope.on("token", function() try_all("token") end),
  kvscope.on("turn_start", function() try_all("turn_start") end),
  kvscope.on("evict", function() try_all("evict") end),
}
kvscope.policy.register("hostile-policy", function(toks, n_keep)
  try_all("policy")
  local out = {}
  for i = 1, #toks do out[i] = toks[i].position end
  return out
end, { base = "window" })
local ps = kvscope.session{ temp = 0, max_tokens = 8, budget = 32, ctx = 256, policy = "hostile-policy" }
for i = 1, 4 do ps:chat("fill the small cache with words " .. i) end
for _, id in ipairs(hooks) do kvscope.off(id) end
check((tier.token or 0) >= 5 and (tier.turn_start or 0) >= 5 and (tier.evict or 0) >= 5 and (tier.policy or 0) >= 5,
      string.format("fast hooks and policy callbacks refuse deferred methods (token %s, turn_start %s, evict %s, policy %s)",
        tostring(tier.token), tostring(tier.turn_start), tostring(tier.evict), tostring(tier.policy)))

-- ---------------------------------------------------------------- error values
local n = 0
local bad_index = setmetatable({}, { __index = function() n = n + 1 if n == 1 then return 0 end error("boom") end })
local loop_index = setmetatable({}, { __index = function() while true do end end })
local loop_tostring = setmetatable({}, { __tostring = function() while true do end end })
local named = setmetatable({}, { __tostring = function() return "a named error" end })
kvscope.command("raise", function(which)
  if which == "index" then n = 0 error(bad_index) end
  if which == "loop-index" then error(loop_index) end
  if which == "loop-tostring" then error(loop_tostring) end
  if which == "named" then error(named) end
  if which == "exit-bad" then error({ kvscope_exit = -7 }) end
end)
for _, c in ipairs{ { "index", "error object is a table value" }, { "loop-index", "error object is a table value" },
                    { "loop-tostring", "error object is a table value" }, { "named", "a named error" },
                    { "exit-bad", "exit request needs an integer status" } } do
  local t0 = kvscope.clock()
  local ok, err = kvscope.run_command("raise", c[1])
  check(not ok and tostring(err):find(c[2], 1, true) and kvscope.clock() - t0 < 1000,
        "error value '" .. c[1] .. "': a plain error (" .. first_line(err) .. ")")
end

-- a plugin raising what looks like kvscope.exit's request: a plain error of
-- that call (only a script's request ends it)
local forger = kvscope.write("forger.lua", [[
local kvscope = require "kvscope"
kvscope.command("forge", function() error({ kvscope_exit = 0 }) end)
]])
assert(kvscope.load_plugin(forger))
local okf, errf = kvscope.run_command("forge")
local forger_on
for _, p in ipairs(kvscope.plugins()) do if p.name == "forger" then forger_on = p.enabled end end
check(not okf and tostring(errf):find("error object is a table value", 1, true) and forger_on,
      "a plugin's forged exit request is a plain error (" .. first_line(errf) .. ")")

-- ---------------------------------------------------------------- time
local loops = {
  move = function() table.move({}, 1, 2 ^ 40, 1, {}) end,
  find = function() string.find(("a"):rep(3000), ("a*"):rep(12) .. "b") end,
  match = function() ("a"):rep(5000):match(("(a-)"):rep(10) .. "$b") end,
  gsub = function() string.gsub(("a"):rep(3000), ("a?"):rep(40) .. ("a"):rep(40), "") end,
  gmatch = function() for _ in ("a"):rep(3000):gmatch(("a*"):rep(10) .. "b") do end end,
  insert = function() table.insert(setmetatable({}, { __len = function() return 2 ^ 40 end }), 1, 0) end,
  remove = function() table.remove(setmetatable({}, { __len = function() return 2 ^ 40 end }), 1) end,
  concat = function() table.concat(setmetatable({}, { __len = function() return 2 ^ 40 end, __index = tostring })) end,
  sort = function() local t = { string.byte(("ab"):rep(1e5), 1, -1) } table.sort(t) end,
  xpcall = function() xpcall(function() while true do end end, function() while true do end end) end,
  xpcall_error = function() while true do xpcall(error, function() while true do end end) end end,
  close = function()
    while true do
      pcall(coroutine.wrap(function()
        local x <close> = setmetatable({}, { __close = function() while true do end end })
        while true do end
      end))
    end
  end,
  -- a 10 MB comment parses in ~15 ms on a quiet machine: load it until the
  -- deadline, which then falls inside load (its reader checks the deadline
  -- per piece; the loop around it runs a few instructions a call)
  load = function() local chunk = string.rep("-", 1e7) while true do load(chunk) end end,
  chat = function()
    local c = kvscope.session{ temp = 0, max_tokens = 100000, budget = 64, policy = "window" }
    c:set_length("50000t")
    c:chat("go on")
  end,
}
local names = {}
for name in pairs(loops) do names[#names + 1] = name end
table.sort(names)
for _, name in ipairs(names) do
  kvscope.command("loop-" .. name, loops[name])
  local best, msg = math.huge, nil
  for _ = 1, 3 do
    local t0 = kvscope.clock()
    local ok, err = kvscope.run_command("loop-" .. name)
    local dt = kvscope.clock() - t0
    msg = err
    if not ok then best = math.min(best, dt) end
  end
  check(best < 250 and tostring(msg):find("time budget") ~= nil,
        string.format("%s stops at the 50 ms deadline: %.0f ms (%s)", name, best, first_line(msg)))
end
local ok_gc, err_gc = pcall(setmetatable, {}, { __gc = function() while true do end end })
check(not ok_gc and tostring(err_gc):find("__gc finalizers are not available"), "__gc refused: " .. first_line(err_gc))
check(string.rep("", math.maxinteger) == "" and string.rep("", 5, "") == "", "string.rep of nothing is empty at once")
check(select(2, pcall(kvscope.sleep, 0 / 0)):find("NaN") ~= nil, "kvscope.sleep(NaN) is an error")

-- the runtime keeps working
local r, st = s:chat("still here?")
check(type(r) == "string" and st.n_reply >= 1, "a session chats after all of the above")
check(("hello world"):gsub("o", "0") == "hell0 w0rld" and ("k=v"):match("(%w+)=(%w+)") == "k", "patterns still match")

if fails > 0 then error(fails .. " hostile checks failed") end
print("hostile: all checks passed")
