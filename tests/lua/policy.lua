-- policy.lua: retention policies written in Lua, and plugin failures
-- during generation (run by tests/e2e/lua.sh on a tiny model).
--   - a Lua policy equivalent to StreamingLLM keeps exactly the tokens the
--     built-in streaming policy keeps, turn after turn, on a fixed dialogue;
--   - a Lua policy that fails or overruns is replaced by its base policy for
--     that eviction: the evict event says so and the kept set is the base
--     policy's (a second session running the base policy itself);
--   - a plugin whose token hook fails does not change the reply, is
--     disabled after 3 errors, and unloading it removes what it owned.
local kvscope = require "kvscope"
local fails = 0
local function check(cond, what)
  if cond then print("ok   " .. what) else print("FAIL " .. what); fails = fails + 1 end
end

local dialogue = {
  "The secret word is pineapple. Remember it.",
  "Tell me about the weather on the coast today.",
  "What colour is the sky over the mountains at dusk?",
  "Count from one to ten, slowly, with words.",
  "What was the secret word I told you at the start?",
  "Thank you, that is all for now.",
}

local function kept(s)
  local out, list = {}, s:tokens()
  for i = 1, #list do out[i] = list[i].position end
  return table.concat(out, " ")
end

-- run the dialogue on a session; returns the kept sets after each turn and the replies
local function run(opts)
  local s = kvscope.session(opts)
  local sets, replies = {}, {}
  for i, text in ipairs(dialogue) do
    replies[i] = s:chat(text)
    sets[i] = kept(s)
  end
  return sets, replies, s
end

local base = { temp = 0, max_tokens = 16, budget = 64, ctx = 1024 }
local function with(t)
  local o = {}
  for k, v in pairs(base) do o[k] = v end
  for k, v in pairs(t) do o[k] = v end
  return o
end

-- StreamingLLM in Lua: the first 4 cached tokens, then the most recent
-- (token by token, as the built-in rule with span=off: with spans a top-k
-- skips a word that does not fit where the recent window stops)
kvscope.policy.register("lua-streaming", function(toks, n_keep)
  local scores = {}
  for i = 1, #toks do
    scores[i] = i <= 4 and 1e12 or toks[i].position
  end
  return scores
end, { base = "window:span=off" })

local fallbacks = 0
kvscope.on("evict", function(ev) if ev.fallback then fallbacks = fallbacks + 1 end end)

local want = run(with{ policy = "streaming:span=off" })
local got, _, sl = run(with{ policy = "lua-streaming" })
local same = #want == #got
for i = 1, #want do if want[i] ~= got[i] then same = false; print("turn " .. i .. "\n  built-in " .. want[i] .. "\n  lua      " .. got[i]) end end
local st = sl:stats()
check(st.n_evictions > 0, "the dialogue evicts (" .. st.n_evictions .. " rounds)")
check(same, "Lua streaming keeps the same tokens as built-in streaming after each of " .. #want .. " turns")
check(st.n_fallbacks == 0 and fallbacks == 0, "no fallback happened")
check(sl:policy() == "lua-streaming", "session reports the Lua policy")
sl:close() -- a plugin has at most 4 sessions open

-- a failing policy falls back to its base (window) for every eviction
kvscope.policy.register("lua-broken", function(toks) error("broken on purpose") end, { base = "window" })
local why
kvscope.on("evict", function(ev) if ev.fallback then why = ev.why end end)
local win = run(with{ policy = "window" })
local broken, _, sb = run(with{ policy = "lua-broken" })
local same_w = true
for i = 1, #win do if win[i] ~= broken[i] then same_w = false end end
check(sb:stats().n_fallbacks > 0 and why ~= nil and why:find("failed") ~= nil,
      "a failing policy is reported as a fallback: " .. tostring(why))
check(same_w, "after a fallback the kept set is the base policy's (window)")
sb:close()

-- an overrunning policy is stopped at its budget and falls back too
kvscope.policy.register("lua-slow", function(toks) while true do end end, { base = "window", budget_ms = 5 })
why = nil
local _, _, ss = run(with{ policy = "lua-slow" })
check(ss:stats().n_fallbacks > 0 and why ~= nil, "an overrunning policy falls back: " .. tostring(why))
ss:close()
-- a policy returning the wrong shape
kvscope.policy.register("lua-short", function(toks) return { 1, 2 } end, { base = "window" })
why = nil
run(with{ policy = "lua-short" })
check(why ~= nil, "a policy returning too few scores falls back: " .. tostring(why))

-- a plugin's policy that never fails but always returns garbage is disabled
-- after 3 bad results in a row (strikes count bad results, not only errors);
-- the session goes on with the base policy
local garbage = kvscope.write("garbage.lua", [[
local kvscope = require "kvscope"
local calls = 0
kvscope.policy.register("lua-garbage", function(toks)
  calls = calls + 1
  kvscope.status("calls " .. calls)
  return { "not", "numbers" }
end, { base = "window" })
]])
assert(kvscope.load_plugin(garbage))
local _, _, sg = run(with{ policy = "lua-garbage" })
local ginfo
for _, p in ipairs(kvscope.plugins()) do if p.name == "garbage" then ginfo = p end end
check(sg:stats().n_evictions > 3, "the dialogue asked the policy " .. sg:stats().n_evictions .. " times")
check(ginfo and not ginfo.enabled and ginfo.errors == 3 and ginfo.why:find("3 consecutive") ~= nil,
      "a policy returning garbage is disabled after 3 bad results: " .. tostring(ginfo and ginfo.why))
check(sg:stats().n_fallbacks == sg:stats().n_evictions, "every eviction fell back to the base policy")
sg:close()
kvscope.unload_plugin("garbage")

-- a plugin failing in every token hook does not disturb generation
local plugin = [[
local kvscope = require "kvscope"
kvscope.command("owned", function() end, "a command the plugin owns")
kvscope.status("failing plugin here")
kvscope.view("owned-view"):text("x")
kvscope.on("token", function(t) error("token hook failure " .. t.id) end)
]]
local path = kvscope.write("failing.lua", plugin)
local okl, errl = kvscope.load_plugin(path)
check(okl, "plugin loaded: " .. tostring(errl))
local s1 = kvscope.session(with{ max_tokens = 12 })
local r1 = s1:chat("a plugin fails in every token hook")
check(kvscope.unload_plugin("failing"), "plugin unloaded")
local s2 = kvscope.session(with{ max_tokens = 12 })
local r2 = s2:chat("a plugin fails in every token hook")
check(r1 == r2 and #r1 > 0, "the reply is the same with and without the failing plugin")

okl = kvscope.load_plugin(path)
local s3 = kvscope.session(with{ max_tokens = 12 })
s3:chat("once more")
local info
for _, p in ipairs(kvscope.plugins()) do if p.name == "failing" then info = p end end
check(info and not info.enabled and info.errors == 3 and info.why:find("3 consecutive") ~= nil,
      "the plugin is disabled after 3 errors: " .. tostring(info and info.why))
local log = kvscope.plugin_log("failing")
local has_tb = false
for _, l in ipairs(log) do if l:find("stack traceback") then has_tb = true end end
check(has_tb, "the plugin's log holds the traceback (" .. #log .. " lines)")
kvscope.unload_plugin("failing")
local left = false
for _, c in ipairs(kvscope.commands()) do if c.name == "owned" then left = true end end
check(not left and kvscope.status_items()["failing"] == nil, "unloading removed its command and status item")

if fails > 0 then error(fails .. " policy checks failed") end
print("policy: all checks passed")
