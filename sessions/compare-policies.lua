-- compare-policies.lua: replay one scripted dialogue under several KV
-- retention policies and budgets, and print one table.
--
--   kvscope run compare-policies.lua [--policies P1,P2,...] [--budgets N1,N2,...]
--                                    [--max-tokens N] [--csv | --json]
--
-- The dialogue plants four facts, talks about other things, then asks for
-- each fact. Per (policy, budget): tokens kept at the end, tokens evicted
-- and eviction rounds, how many of the facts' turns are still fully in the
-- cache when their question comes, and the answers: a recall question counts
-- as answered when the reply contains the expected word (case-insensitive).
-- Lua policies registered by a --plugin can be named like built-in ones.
local kvscope = require "kvscope"

local opt = {
  policies = { "full", "window", "streaming", "sirllm", "lminfinite", "h2o" },
  budgets = { 256 },
  max_tokens = 40,
  format = "table",
}
local function split(s)
  local out = {}
  for item in s:gmatch("[^,]+") do out[#out + 1] = item end
  return out
end
kvscope.getopt("compare-policies.lua", kvscope.args, {
  { "--policies", function(v) opt.policies = split(v) end, value = "P1,P2,...",
    help = "retention policies to compare (default " .. table.concat(opt.policies, ",") .. ")" },
  { "--budgets", function(v)
    opt.budgets = {}
    for _, b in ipairs(split(v)) do
      local n = math.tointeger(tonumber(b))
      if not n or n < 8 then kvscope.exit(2, "compare-policies.lua: --budgets: '" .. b .. "' is not a whole number >= 8") end
      opt.budgets[#opt.budgets + 1] = n
    end
  end, value = "N1,N2,...", help = "KV budgets in tokens (default 256)" },
  { "--max-tokens", function(v) opt.max_tokens = math.tointeger(tonumber(v)) end, value = "N",
    help = "tokens per reply at most (default 40)" },
  { "--csv", function() opt.format = "csv" end, flag = true, help = "print CSV instead of a table" },
  { "--json", function() opt.format = "json" end, flag = true, help = "print one JSON object" },
}, "Replays one scripted dialogue (four facts, filler, then a question per fact) under each\n" ..
   "policy and budget, and prints what each kept, evicted and answered.")
if not opt.max_tokens or opt.max_tokens < 1 then kvscope.exit(2, "compare-policies.lua: --max-tokens expects a positive whole number") end

-- the dialogue: facts (with the word a correct answer contains), filler, questions
local facts = {
  { say = "My name is Marguerite and I am a lighthouse keeper.", ask = "What is my name?", want = "marguerite" },
  { say = "My dog is called Biscuit.", ask = "What is my dog called?", want = "biscuit" },
  { say = "I live in the town of Tromso in Norway.", ask = "In which town do I live?", want = "tromso" },
  { say = "The code for the storeroom is 4721.", ask = "What is the code for the storeroom?", want = "4721" },
}
local filler = {
  "Tell me how lighthouses guide ships at night.",
  "What should I cook for dinner on a cold evening?",
  "Explain in a few sentences why the sea is salty.",
  "Suggest three books to read during a long winter.",
}

local rows = {}
local function run(policy, budget)
  local sopts = { policy = policy, temp = 0, max_tokens = opt.max_tokens }
  if policy == "full" then sopts.ctx = 4096 else sopts.budget = budget end
  local ok, s = pcall(kvscope.session, sopts)
  if not ok then error("compare-policies.lua: " .. policy .. ", budget " .. budget .. ": " .. tostring(s)) end
  local spans = {}
  local function turn(text)
    local reply, st = s:chat(text)
    return reply, st
  end
  for k, f in ipairs(facts) do
    local _, st = turn(f.say)
    spans[k] = { st.first_pos, st.first_pos + st.n_prompt - 1 }
  end
  for _, t in ipairs(filler) do turn(t) end
  local answered, in_cache, answers = 0, 0, {}
  for k, f in ipairs(facts) do
    local whole = true
    for p = spans[k][1], spans[k][2] do if not s:find(p) then whole = false; break end end
    if whole then in_cache = in_cache + 1 end
    local reply = turn(f.ask)
    local good = reply:lower():find(f.want, 1, true) ~= nil
    if good then answered = answered + 1 end
    answers[k] = good and "yes" or "no"
  end
  local st = s:stats()
  local restarted = 0
  for k = 1, s:turns() do if s:turn(k).restarted then restarted = restarted + 1 end end
  rows[#rows + 1] = {
    policy = s:policy():match("^%S+"), spec = s:policy(), budget = policy == "full" and st.budget or budget, kept = st.n_cached,
    evicted = st.n_evicted, evictions = st.n_evictions, restarts = restarted,
    facts_cached = in_cache, recalled = answered, answers = table.concat(answers, " "),
    fallbacks = st.n_fallbacks,
  }
  s:close()
end

local total = #opt.policies * #opt.budgets
local done = 0
for _, p in ipairs(opt.policies) do
  for _, b in ipairs(opt.budgets) do
    if p ~= "full" or b == opt.budgets[1] then run(p, b) end
    done = done + 1
    kvscope.progress(done, total, p .. " " .. b)
  end
end

local cols = { "policy", "budget", "kept", "evicted", "evictions", "restarts", "facts_cached", "recalled", "answers", "fallbacks" }
if opt.format == "json" then
  print(kvscope.json(rows))
else
  local out = {}
  for k, r in ipairs(rows) do
    local line = {}
    for c, name in ipairs(cols) do line[c] = r[name] end
    out[k] = line
  end
  if opt.format == "csv" then
    print(kvscope.csv(cols))
    for _, line in ipairs(out) do print(kvscope.csv(line)) end
  else
    print(string.format("%d facts, %d filler turns, %d questions; replies up to %d tokens; recalled = answer contains the fact",
      #facts, #filler, #facts, opt.max_tokens))
    print(kvscope.table(cols, out))
  end
end
