-- recall.lua: recall scorers written in Lua (kvscope.recall.register) on
-- sessions with a cold tier (cold = true; run by tests/e2e/lua.sh on a
-- tiny model).
--   - a scorer is given every cold block of the conversation with its id,
--     turn, positions, token count, text, BM25 and summary score, and the
--     block it ranks first comes back: here the earliest, where the first
--     recall event's tokens begin;
--   - a scorer that gives every block nil recalls nothing;
--   - a scorer that fails leaves the ranking to both: blocks still come back;
--   - built-in names are refused; kvscope.recall.scorers lists them all.
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
}

local base = { policy = "streaming", temp = 0, max_tokens = 8, budget = 128, ctx = 1024, cold = true, cold_block = 8,
               recall_budget = 16 }
local function with(t)
  local o = {}
  for k, v in pairs(base) do o[k] = v end
  for k, v in pairs(t) do o[k] = v end
  return o
end

-- the original positions every recall brought back, and the lowest of the
-- first recall's (its tokens come in original order)
local recalled, first_recall = {}, nil
kvscope.on("recall", function(ev)
  for i = 1, #ev.tokens do recalled[#recalled + 1] = ev.tokens[i].position end
  if first_recall == nil and #ev.tokens > 0 then first_recall = ev.tokens[1].position end
end)

local function run(opts)
  recalled, first_recall = {}, nil
  local s = kvscope.session(opts)
  for _, text in ipairs(dialogue) do s:chat(text) end
  s:close()
  return recalled
end

-- without SQLite there is no cold tier to test
local okc, errc = pcall(kvscope.session, with{ recall = "fts" })
if not okc and tostring(errc):find("SQLite", 1, true) then
  print("recall: all checks passed (built without SQLite: nothing to test)")
  return
end
check(okc, "a session with cold = true opens (" .. tostring(errc) .. ")")
if okc then errc:close() end

local calls, first, fields_ok = 0, nil, true
kvscope.recall.register("earliest", function(blocks)
  calls = calls + 1
  local scores, lo = {}, nil
  for i, b in ipairs(blocks) do
    scores[i] = -b.positions[1]
    if lo == nil or b.positions[1] < lo[1] then lo = { b.positions[1], b.positions[2] } end
    fields_ok = fields_ok and type(b.id) == "number" and type(b.turn) == "number" and
        type(b.text) == "string" and type(b.bm25) == "number" and
        b.n == b.positions[2] - b.positions[1] + 1 and
        (b.summary == nil or type(b.summary) == "number")
  end
  first = first or lo
  return scores
end)
local got = run(with{ recall = "earliest" })
check(calls > 0, "the scorer was called (" .. calls .. " turns)")
check(fields_ok, "every block has id, turn, positions, n, text, bm25 and summary")
check(#got > 0, "blocks came back (" .. #got .. " tokens)")
check(first ~= nil and first_recall == first[1],
      "the earliest block came back first (it starts at " .. tostring(first and first[1]) ..
      ", the first recall at " .. tostring(first_recall) .. ")")

kvscope.recall.register("none", function(blocks)
  local s = {}
  for i = 1, #blocks do s[i] = nil end
  return s
end)
check(#run(with{ recall = "none" }) == 0, "a scorer that gives nil everywhere recalls nothing")

kvscope.recall.register("broken", function() error("broken on purpose") end)
check(#run(with{ recall = "broken" }) > 0, "a failing scorer falls back to both, which recalls")

check(not pcall(kvscope.recall.register, "both", function() end), "a built-in name is refused")
local okb, errb = pcall(kvscope.session, with{ recall = "nosuch" })
check(not okb and tostring(errb):find("nosuch", 1, true), "an unknown scorer is refused by name")
local names = table.concat(kvscope.recall.scorers(), " ")
check(names:find("both", 1, true) and names:find("earliest", 1, true), "scorers: " .. names)

if fails > 0 then error(fails .. " recall checks failed") end
print("recall: all checks passed")
