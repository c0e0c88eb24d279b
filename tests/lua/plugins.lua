-- plugins.lua: the bundled plugins, loaded with --plugin (run by
-- tests/e2e/lua.sh with plugins/entropy-alarm.lua, recency-entropy.lua and
-- token-stats.lua). Expected values are computed here from this script's
-- own token hook, a second reading of the same events.
local kvscope = require "kvscope"
local fails = 0
local function check(cond, what)
  if cond then print("ok   " .. what) else print("FAIL " .. what); fails = fails + 1 end
end
local function view(name)
  for _, v in ipairs(kvscope.views()) do if v.name == name then return v end end
end

local loaded = {}
for _, p in ipairs(kvscope.plugins()) do loaded[p.name] = p end
check(loaded["entropy-alarm"] and loaded["recency-entropy"] and loaded["token-stats"], "the three plugins are loaded")

-- this script's own count: tokens, known surprisals, runs above T of length >= R
local T, R = 1.5, 3
local n, known, alarms, run = 0, 0, 0, 0
kvscope.on("turn_start", function() run = 0 end)
kvscope.on("token", function(t)
  n = n + 1
  local s = t.surprisal
  if s then known = known + 1 end
  if s and s > T and not t.eog then
    run = run + 1
    if run == R then alarms = alarms + 1 end
  else
    run = 0
  end
end)
check(kvscope.run_command("entropy-alarm", T .. " " .. R), ":entropy-alarm sets threshold and run")
local bad_ok, bad_err = kvscope.run_command("entropy-alarm", "x y")
check(not bad_ok and bad_err:find("expected :entropy%-alarm") ~= nil, "bad :entropy-alarm arguments: " .. tostring(bad_err))

local s = kvscope.session{ temp = 0, max_tokens = 20, token_stats = true, policy = "recency-entropy", budget = 64 }
for i = 1, 4 do s:chat("say something about the number " .. i .. " and the sea") end
kvscope.sleep(400) -- the stats pane redraws on a 250 ms timer

local status = kvscope.status_items()
if alarms > 0 then
  check(status["entropy-alarm"] == "entropy alarm x" .. alarms, "alarm count " .. tostring(status["entropy-alarm"]) .. ", expected " .. alarms)
  local v = view("entropy alarm")
  check(v and #v.items == alarms, "one pane line per alarm")
else
  check(status["entropy-alarm"] == nil, "no alarm, no status item")
end

local v = view("token statistics")
check(v ~= nil and v.items[1].text == "tokens " .. n, "pane counts every token: " .. tostring(v and v.items[1].text) .. " (expected " .. n .. ")")
local bars, total = 0, 0
for _, it in ipairs(v.items) do if it.kind == "bar" then bars = bars + 1; total = total + it.value end end
check(bars == 8 and total == known, "histogram: 8 bars over " .. total .. " tokens with known surprisal (expected " .. known .. ")")
check(status["token-stats"] ~= nil and status["token-stats"]:find("tok/s") ~= nil, "tok/s status item")

-- the Lua policy ran without falling back, kept the sinks and evicted something
local st = s:stats()
check(st.policy == "recency-entropy" and st.base:find("^streaming") ~= nil, "stats name the Lua policy and its base")
check(st.n_evictions > 0 and st.n_fallbacks == 0, "recency-entropy evicted " .. st.n_evicted .. " tokens with no fallback")
check(s:find(0) == 1 and s:find(3) == 4, "the first 4 tokens (sinks) are still cached")
local list = s:tokens()
check(#list == st.n_cached and #list <= 64, "budget respected")

check(kvscope.run_command("token-stats", "reset"), ":token-stats reset")
v = view("token statistics")
check(v.items[1].text == "tokens 0", "reset clears the pane")

-- unloading removes the plugin's views, commands, status items and policy
check(kvscope.unload_plugin("token-stats") and view("token statistics") == nil, "unloading token-stats removed its pane")
check(kvscope.unload_plugin("recency-entropy"), "recency-entropy unloaded")
local pols = table.concat(kvscope.policies(), ",")
check(not pols:find("recency%-entropy"), "its policy is gone: " .. pols)
check(s:policy():find("^streaming") ~= nil, "the session fell back to the base policy: " .. s:policy())
s:chat("one more exchange after the unload")

if fails > 0 then error(fails .. " plugin checks failed") end
print("plugins: all checks passed")
