-- api.lua: the Lua API on a tiny model (run by tests/e2e/lua.sh with
-- kvscope run --model TINY --results DIR api.lua). Each check compares with
-- a value computed independently here (from the events, from the session's
-- own token list, from arithmetic), not with what the code printed before.
local kvscope = require "kvscope"
local fails = 0
local function check(cond, what)
  if cond then print("ok   " .. what) else print("FAIL " .. what); fails = fails + 1 end
end
local function close(a, b, eps) return math.abs(a - b) <= (eps or 1e-4) end

-- helpers from lua/kvscope.lua
check(kvscope.json({ a = 1, b = { true, false }, c = "x\"\n" }) == '{"a":1,"b":[true,false],"c":"x\\"\\n"}',
      "json encodes objects, arrays and escapes")
check(kvscope.json({}) == "[]" and kvscope.json(0.5) == "0.5" and kvscope.json(nil) == "null", "json scalars")
check(kvscope.csv({ 1, "a,b", 'say "hi"', 0.25 }) == '1,"a,b","say ""hi""",0.25', "csv quoting")
local tbl = kvscope.table({ "name", "n" }, { { "ab", 1 }, { "c", 22 } })
check(tbl == "name  n\n----  --\nab    1\nc     22", "aligned table:\n" .. tbl)
check(kvscope.api_version() == 1, "api_version")

-- hooks: priority order, removal during dispatch, hooks added during dispatch wait
local order = {}
local id_low
kvscope.on("turn_start", function() order[#order + 1] = "low" end, -5)
kvscope.on("turn_start", function() order[#order + 1] = "high" end, 10)
kvscope.on("turn_start", function()
  order[#order + 1] = "mid"
  if id_low then kvscope.off(id_low); id_low = nil end
  kvscope.on("turn_start", function() order[#order + 1] = "late" end, 100)
end, 0)
id_low = kvscope.on("turn_start", function() order[#order + 1] = "removed" end, -10)

-- token events: one per sampled token, text adds up to the reply
local toks, text, ids = 0, {}, {}
local surprisal_ok = true
kvscope.on("token", function(t)
  toks = toks + 1
  text[#text + 1] = t.text
  ids[#ids + 1] = t.id
  if not t.eog and t.surprisal ~= nil and not (t.surprisal >= 0) then surprisal_ok = false end
  check_in_hook = kvscope.in_fast()
end)
local ends = {}
kvscope.on("turn_end", function(t) ends[#ends + 1] = t end)

local s = kvscope.session{ temp = 0, max_tokens = 12, token_stats = true, ctx = 1024 }
local reply, st = s:chat("hello there")
check(table.concat(order, ",") == "high,mid,low",
      "hooks by priority; one removed during dispatch does not run, one added waits: " .. table.concat(order, ","))
order = {}
s:chat("again")
check(table.concat(order, ",") == "late,high,mid,low", "removed hook gone, added one now first: " .. table.concat(order, ","))
check(toks >= st.n_reply and st.n_reply >= 1, "token events: " .. toks .. " for the first reply's " .. st.n_reply)
check(#ends == 2 and ends[1].reply == reply and ends[1].index == 1 and ends[2].index == 2, "turn_end per exchange, after it")
check(check_in_hook == true and kvscope.in_fast() == false, "token hooks run in the fast tier")
check(surprisal_ok, "surprisal is >= 0 whenever known")
local t1 = s:turn(1)
check(s:turns() == 2 and t1.user == "hello there" and t1.reply == reply, "turn history")

-- cached-token list: positions ascend, ids match what was fed
local list = s:tokens()
local asc = true
for i = 2, #list do if list[i].position <= list[i - 1].position then asc = false end end
check(#list == s:stats().n_cached and asc, "token list in cache order (" .. #list .. ")")
check(s:find(list[1].position) == 1 and s:find(-5) == nil, "find by original position")
local ok_ro = pcall(function() list[1].id = 3 end)
check(not ok_ro, "token handles are read-only")
s:feed(" more text")
local ok_stale, err_stale = pcall(function() return list[1].id end)
check(not ok_stale and tostring(err_stale):find("no longer valid") ~= nil, "a stale token list raises: " .. tostring(err_stale))

-- the token event allocates nothing: in a plugin of its own, a hook reading
-- numeric fields sees the Lua heap unchanged from one token to the next
-- (after the first two, which may grow the stack)
local probe = kvscope.write("allocprobe.lua", [[
local kvscope = require "kvscope"
local heap = {}
for k = 1, 64 do heap[k] = 0 end
for k = 64, 1, -1 do heap[k] = nil end -- the array part stays sized
kvscope.on("token", function(t)
  local c = collectgarbage("count")
  local x = t.id + t.position + (t.surprisal or 0) + (t.entropy or 0) + t.turn
  if #heap < 64 then heap[#heap + 1] = c end
end)
kvscope.command("allocprobe", function()
  local grew = 0
  for k = 3, #heap do if heap[k] ~= heap[k - 1] then grew = grew + 1 end end
  kvscope.status(#heap .. " " .. grew)
end)
]])
assert(kvscope.load_plugin(probe))
s:chat("count the allocations", { max_tokens = 20 })
kvscope.run_command("allocprobe")
local nev, grew = (kvscope.status_items()["allocprobe"] or ""):match("(%d+) (%d+)")
check(tonumber(nev) and tonumber(nev) >= 5 and tonumber(grew) == 0,
      "no allocation per token event (" .. tostring(nev) .. " events, " .. tostring(grew) .. " grew the heap)")
kvscope.unload_plugin("allocprobe")

-- tokenize / detokenize round trip; logprobs agree with top
local tk = s:tokenize("round trip text")
check(s:detokenize(tk) == "round trip text", "tokenize/detokenize round trip")
s:prompt("what next?")
local top = s:top(5)
local lp = s:logprobs({ top[1].id, top[2].id })
check(#top == 5 and close(lp[1], top[1].logprob) and close(lp[2], top[2].logprob) and top[1].logprob >= top[2].logprob,
      "logprobs equal top's, top is sorted")
local sum = 0
for _, e in ipairs(s:top(1000)) do sum = sum + math.exp(e.logprob) end
check(sum <= 1.0001 and sum > 0, string.format("probabilities of the top 1000 sum to %.4f <= 1", sum))
local gtext, gstop, gn = s:generate(5)
check(type(gtext) == "string" and gn >= 1 and gn <= 5, "generate: " .. gn .. " tokens, stop " .. gstop)
s:end_reply(gstop == "eos")

-- tiers: a deferred function from a fast hook is an error naming it
local tier_err
local hid = kvscope.on("token", function()
  local ok, err = pcall(kvscope.view, "x")
  if not ok and not tier_err then tier_err = err end
end)
s:chat("tier test", { max_tokens = 2 })
kvscope.off(hid)
check(tier_err and tier_err:find("deferred") and tier_err:find("schedule"), "deferred from a fast hook: " .. tostring(tier_err))
-- schedule runs on the next tick
local ran = false
local hid2 = kvscope.on("token", function() kvscope.schedule(function() ran = kvscope.in_fast() == false end) end)
s:chat("schedule test", { max_tokens = 2 })
kvscope.off(hid2)
kvscope.sleep(1)
check(ran, "scheduled function ran on the main loop")

-- timers: one-shot and periodic, stop
local fired, periodic = 0, 0
kvscope.timer(5, function() fired = fired + 1 end)
local tm = kvscope.timer(2, function() periodic = periodic + 1 end, true)
kvscope.sleep(30)
tm:stop()
local p_after = periodic
kvscope.sleep(10)
check(fired == 1 and periodic >= 2 and periodic == p_after, "timers: one-shot once, periodic " .. periodic .. " times, stopped")

-- commands, completion list, status, views
kvscope.command("greet", function(args) greeted = args end, "say hello", function(prefix) return { prefix .. "1" } end)
local okc = kvscope.run_command("greet", "world")
check(okc and greeted == "world", "command runs with its arguments")
local found = false
for _, c in ipairs(kvscope.commands()) do if c.name == "greet" and c.help == "say hello" then found = true end end
check(found, "command listed with its help")
local okbad = pcall(kvscope.command, "Bad Name", function() end)
check(not okbad, "bad command name refused")
kvscope.status("42 tokens")
check(kvscope.status_items()["api"] == "42 tokens", "status item")
local v = kvscope.view("stats")
v:text("line one")
v:bar("kept", 3, 4)
v:heatmap("m", { { 1, 2 }, { 3, 0.5 } })
local items = v:items()
check(#items == 3 and items[1].kind == "text" and items[2].value == 3 and items[2].max == 4
      and items[3].rows == 2 and items[3].cols == 2 and items[3].lo == 0.5 and items[3].hi == 3, "view items")
check(not pcall(v.heatmap, v, "bad", { { 1, 2 }, { 3 } }), "ragged heatmap refused")
v:clear()
check(#v:items() == 0, "view cleared")

-- files only under the results directory
local path = kvscope.write("sub/out.csv", "a,b\n")
kvscope.write("sub/out.csv", "1,2\n", "a")
check(path:find("sub/out.csv$") ~= nil, "write under the results directory: " .. path)
check(not pcall(kvscope.write, "../escape.txt", "x"), "write refuses ..")
check(not pcall(kvscope.write, "/tmp/abs.txt", "x"), "write refuses absolute paths")

-- no front-end session under kvscope run
local oks, errs = pcall(kvscope.send, "policy", "h2o")
check(not oks and tostring(errs):find("no front%-end session") ~= nil, "kvscope.send without a front end: " .. tostring(errs))
check(kvscope.current() == nil, "no current session under kvscope run")

-- session options are checked
local okt, errt = pcall(kvscope.session, { budgt = 64 })
check(not okt and tostring(errt):find("unknown option 'budgt'") ~= nil, "unknown session option refused: " .. tostring(errt))
okt, errt = pcall(kvscope.session, { temp = 200 })
check(not okt and tostring(errt):find("temp = 200") ~= nil, "out-of-range option refused: " .. tostring(errt))

-- attention userdata on a capture-full session
local sa = kvscope.session{ temp = 0, max_tokens = 3, capture = "full", ctx = 512 }
local info = sa:info()
local shape_ok, sum_ok, get_ok, pos_ok, nsteps = true, true, true, true, 0
local stale_attn
kvscope.on("attention", function(a)
  nsteps = nsteps + 1
  stale_attn = a
  if #a ~= info.n_layer or #a[1] ~= info.n_head or #a[1][1] ~= a.n_cached then shape_ok = false end
  for l = 1, #a do
    for h = 1, #a[l] do
      local row, tot = a[l][h], 0
      for i = 1, #row do tot = tot + row[i] end
      if not close(tot, 1, 1e-3) then sum_ok = false end
      if a:get(l, h, #row) ~= row[#row] then get_ok = false end
    end
  end
  for i = 2, a.n_cached do if a:position(i) <= a:position(i - 1) then pos_ok = false end end
end)
sa:chat("look at me")
check(nsteps >= 1 and shape_ok, "attention: layers x heads x cached (" .. nsteps .. " steps)")
check(sum_ok, "every attention row sums to 1")
check(get_ok and pos_ok, "a:get agrees with indexing; column positions ascend")
check(not pcall(function() return stale_attn[1] end), "attention handle is stale after the event")

-- evict events under a small budget
local evicted, ev_ok = 0, true
kvscope.on("evict", function(ev)
  evicted = evicted + ev.n
  if #ev.tokens ~= ev.n or ev.policy ~= "streaming" then ev_ok = false end
end)
local se = kvscope.session{ temp = 0, max_tokens = 10, policy = "streaming", budget = 48 }
for i = 1, 4 do se:chat("message number " .. i .. " with some words in it") end
local sst = se:stats()
check(evicted > 0 and evicted == sst.n_evicted and ev_ok and sst.n_cached <= 48,
      "evict events count every evicted token (" .. evicted .. ")")
-- policy and budget switches
se:set_policy("window")
se:set_budget(32)
check(se:policy():find("^window") ~= nil and se:stats().n_cached <= 32, "set_policy and set_budget")
check(not pcall(se.set_policy, se, "nonsense"), "unknown policy refused")
-- length control: a target set from Lua governs the next reply
check(se:length() == nil, "no length target by default")
se:set_length("12w")
check(se:length() ~= nil and se:length():find("^12 words") ~= nil, "set_length 12w: " .. tostring(se:length()))
local lr, lst = se:chat("write about the sea")
local lt = se:turn(se:turns())
check(lt.stop ~= "eos" and lt.n_words ~= nil and lt.n_words <= 22,
      "a 12-word target ends at most 22 words (window (2, 22]) and not by eos: " ..
      tostring(lt.stop) .. ", " .. tostring(lt.n_words) .. " words")
se:set_length("off")
check(se:length() == nil, "set_length off")
check(not pcall(se.set_length, se, "12q"), "a bad length spec is refused")
se:close()
check(not pcall(se.stats, se), "closed session refused")

if fails > 0 then error(fails .. " API checks failed") end
print("api: all checks passed")
