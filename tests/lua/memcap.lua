-- memcap.lua: what a plugin makes kvscope hold counts against its memory
-- cap (run by tests/e2e/lua.sh with --mem-cap 16). Each loop below would
-- grow the host without bound if only the Lua state were counted (a 1 MiB
-- string copied into a view line, a command's help, a view's name, a
-- heatmap, a session's turns): with a cap of 16 MiB at most 16 such copies
-- can be held, so each loop must stop before its 16th, with an error that
-- names the cap, and kvscope.plugins() must report mem <= the cap.
local kvscope = require "kvscope"
local fails = 0
local function check(cond, what)
  if cond then print("ok   " .. what) else print("FAIL " .. what); fails = fails + 1 end
end
local CAP, MiB = 16 << 20, 1 << 20
local function me()
  for _, p in ipairs(kvscope.plugins()) do if p.name == "memcap" then return p end end
end
-- fill(what, fn): call fn(i) until it raises; returns the count and the error
local function fill(what, fn, limit)
  local n, err = 0, nil
  for i = 1, limit or 64 do
    local ok, e = pcall(fn, i)
    if not ok then err = e; break end
    n = n + 1
  end
  local p = me()
  check(err ~= nil and tostring(err):find("memory cap") ~= nil,
        what .. ": stopped after " .. n .. " with: " .. tostring(err):gsub("\n.*", ""))
  check(p.mem <= CAP and p.host <= p.mem,
        string.format("%s: mem %.1f MiB (host %.1f MiB) within the 16 MiB cap", what, p.mem / MiB, p.host / MiB))
  return n, err
end

local line = string.rep("x", MiB)
check(me().host > 0 and me().host < 64 << 10, "at start kvscope holds the source only: " .. me().host .. " bytes")

-- view lines (the report: a view:text loop reached 2.5 GB with --mem-cap 16)
local v = kvscope.view("mem")
local n = fill("view:text of 1 MiB lines", function() v:text(line) end)
check(n < 16, "at most 15 lines of 1 MiB were kept: " .. n)
local held = me().host
check(held >= n * MiB, "host counts the lines: " .. held .. " >= " .. n * MiB)
v:clear()
check(me().host < held - (n - 1) * MiB, "view:clear gives the lines' bytes back: " .. me().host)
v:text("small")
check(#v:items() == 1, "the view works again after clear")

-- commands with long help (replacing one gives the old help's bytes back)
n = fill("commands with 1 MiB help", function(i) kvscope.command("c" .. i, function() end, line) end)
check(n < 16, "commands: " .. n)
local before = me().host
for i = 1, n do kvscope.command("c" .. i, function() end, "short") end
check(me().host < before - (n - 1) * MiB, "replacing the commands freed their old help: " .. me().host)
n = fill("bars with 1 MiB labels", function() v:bar(line, 1) end)
check(n < 16, "bars: " .. n)
v:clear()

-- heatmaps: the cells (4 bytes each) are held; 512 x 512 = 1 MiB
local row = {}
for i = 1, 512 do row[i] = i end
local m = {}
for i = 1, 512 do m[i] = row end
before = me().host
v:heatmap("h", m)
check(me().host - before >= 512 * 512 * 4, "a heatmap's cells are counted: " .. (me().host - before))
v:clear()
m, row = nil, nil

-- status: at most 200 bytes kept
before = me().host
kvscope.status(line)
check(me().host - before <= 201, "a status item keeps at most 200 bytes")
kvscope.status(nil)
check(me().host == before, "clearing it gives them back")

-- hooks, timers and scheduled functions: small each, counted each
local f = function() end
local h0 = me().host
local id = kvscope.on("turn_end", f)
check(me().host > h0, "a hook is counted")
kvscope.off(id)
check(me().host == h0, "removing it gives its bytes back")
local t = kvscope.timer(1e9, f)
check(me().host > h0, "a timer is counted")
t:stop()
kvscope.schedule(f)
check(me().host > h0, "a scheduled function is counted")

-- sessions: at most 4 open per plugin; their turns' texts are counted
local loads = 0
kvscope.on("model_loaded", function() loads = loads + 1 end)
local base = me().host
local ss = {}
for i = 1, 4 do ss[i] = kvscope.session{ temp = 0, max_tokens = 2 } end
local ok5, err5 = pcall(kvscope.session, { temp = 0 })
check(not ok5 and tostring(err5):find("4 sessions open") ~= nil, "a fifth session is refused: " .. tostring(err5))
ss = nil
local s = kvscope.session{ temp = 0, max_tokens = 4 }
check(s ~= nil, "sessions no longer referenced are collected when the limit is reached")
local text = "remember " .. string.rep("abc ", 500)
local h1 = me().host
local reply = s:chat(text)
check(me().host - h1 >= #text + #reply, "a turn's texts are counted: " .. (me().host - h1) .. " >= " .. (#text + #reply))
s:set_system(string.rep("s", 5000))
check(me().host - h1 >= #text + #reply + 5000, "the system prompt is counted")
local h2 = me().host
s:reset()
check(h2 - me().host >= #text + #reply, "reset gives the turns back: " .. (h2 - me().host))
s:close()
collectgarbage()
check(me().host <= base + 1024, "closed sessions give everything back: " .. me().host .. " vs " .. base)

-- a plugin's finalizers cannot open sessions or hooks while its state
-- closes: __gc is refused to plugins altogether (doc/lua.md: Lua runs
-- finalizers outside any time budget), so a session opened then cannot
-- outlive the plugin and leak
local gcp = kvscope.write("memcap/atclose.lua", [[
keep = setmetatable({}, { __gc = function() end })
]])
local ok, err = kvscope.load_plugin(gcp)
check(not ok and tostring(err):find("__gc finalizers are not available", 1, true),
      "a plugin's __gc is refused: " .. tostring(err))
local s2 = kvscope.session{ temp = 0, max_tokens = 3 }
s2:chat("no plugin hook runs after a refused load")
check(true, "a token dispatch after it ran")
s2:close()

-- views by name and policy slots stay until the plugin goes: each in a plugin of its own
local function in_child(name, body)
  local path = kvscope.write("memcap/" .. name .. ".lua", "local kvscope = require 'kvscope'\n" ..
    "local line = string.rep('x', 1 << 20)\nlocal n, err = 0\n" ..
    "for i = 1, 64 do local ok, e = pcall(function() " .. body .. " end)\n" ..
    "  if not ok then err = e break end n = n + 1 end\n" ..
    "kvscope.status(n .. ' ' .. tostring(err):gsub('\\n.*', ''))\n")
  assert(kvscope.load_plugin(path))
  local st = kvscope.status_items()[name]
  local info
  for _, p in ipairs(kvscope.plugins()) do if p.name == name then info = p end end
  kvscope.unload_plugin(name)
  local cn = tonumber(st:match("^%d+"))
  check(cn < 16 and st:find("memory cap") ~= nil, name .. ": stopped after " .. st)
  check(info.mem <= CAP, string.format("%s: mem %.1f MiB (host %.1f MiB) within the cap", name,
        info.mem / MiB, info.host / MiB))
  return info
end
in_child("views", "kvscope.view(i .. line)")
in_child("policies", "kvscope.policy.register(i .. line, function() return {} end)")
-- 20000 timers: each row kvscope keeps (at least 32 bytes) is counted, and
-- given back once the timers are stopped and the loop has dropped them
local h3 = me().host
local timers = {}
for i = 1, 20000 do timers[i] = kvscope.timer(1e9, f) end
check(me().host - h3 >= 20000 * 32, "20000 timers are counted: " .. (me().host - h3))
for i = 1, #timers do timers[i]:stop() end
timers = nil
kvscope.sleep(1) -- the loop runs: stopped timers go
check(me().host - h3 < 1024, "stopped timers are given back: " .. (me().host - h3))

if fails > 0 then error(fails .. " memory checks failed") end
print("memcap: all checks passed")
