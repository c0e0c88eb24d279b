-- rps.lua: SirLLM's Rock-Paper-Scissors memory test, written over the Lua
-- API so that it can be varied (prompts, move statistics, scoring).
--
--   kvscope run rps.lua [--rounds N] [--policy P] [--budget N]
--                       [--dominant rock|paper|scissors] [--seed S] [--json]
--
-- The same protocol as `kvscope eval rps` (src/cli/cmd-eval-rps.c, chat
-- format): the user plays the dominant move with probability 0.5, the move
-- that beats it 0.3, the third 0.2, drawn from splitmix64 seeded with --seed
-- (the same generator, so the same moves); every round is one turn; the
-- model's move is the letter whose first token has the largest
-- log-probability after the prompt; the chosen letter and the end of the
-- turn are fed back. With the same options both print the same counts
-- under the policies that keep tokens by position (full, window,
-- streaming, lminfinite; tests/e2e/lua.sh checks it). Under h2o and sirllm
-- they may part where scores are close: this script feeds a round in the
-- session's pieces (the system prompt with the first question; the
-- question, the reply header, the letter and the end of the turn as
-- separate forward calls), the C command in its own (the system prompt
-- alone, the question with its header, the letter with the end of the
-- turn), so the turns differ and the scores are not summed in the same
-- steps.
local kvscope = require "kvscope"

local opt = { rounds = 300, policy = "streaming", budget = nil, dominant = "rock", seed = 1, json = false }
kvscope.getopt("rps.lua", kvscope.args, {
  { "--rounds", function(v) opt.rounds = math.tointeger(tonumber(v)) end, value = "N",
    help = "rounds to play (default 300)" },
  { "--policy", function(v) opt.policy = v end, value = "P", help = "retention policy (default streaming)" },
  { "--budget", function(v) opt.budget = math.tointeger(tonumber(v)) end, value = "N",
    help = "KV budget in tokens (default: the whole context)" },
  { "--dominant", function(v) opt.dominant = v end, value = "rock|paper|scissors",
    help = "the user's favourite move (default rock)" },
  { "--seed", function(v) opt.seed = math.tointeger(tonumber(v)) end, value = "S",
    help = "seed of the user's moves (default 1)" },
  { "--json", function() opt.json = true end, flag = true, help = "end with one JSON object" },
}, "SirLLM's Rock-Paper-Scissors memory test; prints the same counts as `kvscope eval rps` under the "
  .. "position-based policies.")
if not opt.rounds or opt.rounds < 1 then kvscope.exit(2, "rps.lua: --rounds expects a positive whole number") end
if not opt.seed or opt.seed < 0 then kvscope.exit(2, "rps.lua: --seed expects a whole number >= 0") end

local moves = { "rock", "paper", "scissors" }
local letters = { "A", "B", "C" }
local dom
for k, m in ipairs(moves) do if m == opt.dominant then dom = k end end
if not dom then kvscope.exit(2, "rps.lua: --dominant '" .. opt.dominant .. "', expected rock, paper or scissors") end

-- splitmix64, as src/cli/eval.c (Lua integers wrap modulo 2^64; >> is logical)
local state = opt.seed
local function rng_unit()
  state = state + 0x9E3779B97F4A7C15
  local z = state
  z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
  z = (z ~ (z >> 27)) * 0x94D049BB133111EB
  z = z ~ (z >> 31)
  return (z >> 11) / 9007199254740992.0
end
local function beats(m) return m % 3 + 1 end -- 1-based: paper beats rock, ...
local function user_move()
  local x = rng_unit()
  if x < 0.5 then return dom end
  if x < 0.8 then return beats(dom) end
  return beats(beats(dom))
end
local function outcome(a, u) if a == u then return 0 elseif a == beats(u) then return 1 else return -1 end end

-- SirLLM's README runs RPS with decay 0.9
local policy = opt.policy
if policy:match("^sirllm") and not policy:find("lambda=") then
  policy = policy .. (policy:find(":") and "," or ":") .. "lambda=0.9"
end
local evicting = policy ~= "full"
local sopts = { policy = policy, temp = 0 }
if evicting then sopts.budget = opt.budget or 256 else sopts.ctx = 64 + opt.rounds * 64 end
local s = kvscope.session(sopts)
s:set_system(s:info().default_system or "")

-- original positions of the tokens of the move word inside "[move]" in a prompt
local function locate(first, n, move)
  local list = s:tokens()
  local text, start, pos = {}, {}, {}
  local len = 0
  for k = 1, #list do
    local t = list[k]
    if t.position >= first and t.position < first + n then
      start[#start + 1] = len
      pos[#pos + 1] = t.position
      text[#text + 1] = t.text
      len = len + #t.text
    end
  end
  start[#start + 1] = len
  local all = table.concat(text)
  local hit = all:find("[" .. move .. "]", 1, true)
  if not hit then return nil end
  local a, b = hit, hit + #move -- 0-based offsets of the word: [hit, hit + #move)
  local lo, hi
  for k = 1, #pos do
    if start[k] < b and start[k + 1] > a then lo = lo or pos[k]; hi = pos[k] end
  end
  return lo and { lo, hi } or nil
end
local function held(r)
  if not r then return false end
  for p = r[1], r[2] do if not s:find(p) then return false end end
  return true
end

local win, tie, lose = 0, 0, 0
local hist, uhist = { 0, 0, 0 }, { 0, 0, 0 }
local located, prev = {}, nil
local held_sum = 0
for r = 1, opt.rounds do
  local q
  if not prev then
    q = "Let's play a game of Rock-Paper-Scissors. Choose one option from: (A) rock (B) paper (C) scissors. "
  else
    q = "I chose [" .. moves[prev] .. "]. Analyze my preferences to maximize your winning rate and proceed to the next round. Choices: (A) rock (B) paper (C) scissors. You choose:"
  end
  -- trailing spaces move into the candidates, as SirLLM's encoding does
  local body, sp = q:match("^(.-)( *)$")
  local cands = {}
  for k = 1, 3 do cands[k] = sp .. letters[k] end
  -- the candidate's tokens, the end-of-turn token and what follows it
  local n_cand = #s:tokenize(cands[1]) + #s:tokenize("<|im_end|>\n", true)
  local first, n = s:prompt(body, n_cand)
  if prev then located[r - 1] = locate(first, n, moves[prev]) end
  local lp = s:logprobs(cands)
  local pick = 1
  for k = 2, 3 do if lp[k] > lp[pick] then pick = k end end
  s:feed(cands[pick], "assistant")
  s:end_reply(false)
  local u = user_move()
  local o = outcome(pick, u)
  if o > 0 then win = win + 1 elseif o == 0 then tie = tie + 1 else lose = lose + 1 end
  hist[pick] = hist[pick] + 1
  uhist[u] = uhist[u] + 1
  if r > 1 then
    local h = 0
    for k = 1, r - 1 do if held(located[k]) then h = h + 1 end end
    held_sum = held_sum + h / (r - 1)
  end
  prev = u
  kvscope.progress(r, opt.rounds, string.format("win %.1f%%", 100 * win / r))
end
local held_end = 0
for k = 1, opt.rounds - 1 do if held(located[k]) then held_end = held_end + 1 end end
local st = s:stats()
local n = opt.rounds
print(string.format("rps (lua): %s, budget %d tokens, dominant %s, seed %d, %d rounds",
  s:policy(), st.budget, opt.dominant, opt.seed, n))
print(string.format("win %.1f %%  tie %.1f %%  lose %.1f %%", 100 * win / n, 100 * tie / n, 100 * lose / n))
print(string.format("model moves: rock %d, paper %d, scissors %d; user moves: rock %d, paper %d, scissors %d",
  hist[1], hist[2], hist[3], uhist[1], uhist[2], uhist[3]))
print(string.format("bracketed moves held: %d of %d at the end; %.1f %% on average over the rounds",
  held_end, n - 1, n > 1 and 100 * held_sum / (n - 1) or 0))
if opt.json then
  print(kvscope.json{
    eval = "rps", impl = "lua", policy = s:policy(), budget = st.budget, seed = opt.seed,
    dominant = opt.dominant, rounds = n, win = win, tie = tie, lose = lose,
    model_moves = { rock = hist[1], paper = hist[2], scissors = hist[3] },
    user_moves = { rock = uhist[1], paper = uhist[2], scissors = uhist[3] },
    moves_held_end = held_end,
  })
end
