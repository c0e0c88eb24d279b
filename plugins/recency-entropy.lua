-- recency-entropy.lua: a retention policy written in Lua, "recency-entropy".
--
-- SirLLM keeps the tokens the model found surprising (high -log p) and lets
-- old scores decay per turn; this variant scores each cached token by its
-- surprisal plus a recency boost that grows linearly from 0 (oldest) to
-- `boost` nats (newest), and always keeps the first `sinks` tokens (the
-- attention sinks). Tokens whose surprisal is unknown score as the mean.
-- The cache keeps pinned tokens, then the n_keep highest scores. Positions
-- are re-compacted like StreamingLLM's (base policy "streaming"), which is
-- also what decides an eviction when this function fails or overruns.
--
--   session:set_policy("recency-entropy")   or   kvscope.session{ policy = "recency-entropy" }
--   :recency-entropy BOOST SINKS            change the parameters
local kvscope = require "kvscope"

local boost, sinks = 4.0, 4

local function score(toks, n_keep)
  local n = #toks
  local scores, sum, known = {}, 0, 0
  for i = 1, n do
    local s = toks[i].surprisal
    if s then sum, known = sum + s, known + 1 end
  end
  local mean = known > 0 and sum / known or 0
  for i = 1, n do
    local t = toks[i]
    if i <= sinks then
      scores[i] = math.huge
    else
      local s = t.surprisal or mean
      scores[i] = s + boost * (i - 1) / math.max(n - 1, 1)
    end
  end
  return scores
end

kvscope.policy.register("recency-entropy", score, { base = "streaming", budget_ms = 50 })

kvscope.command("recency-entropy", function(args)
  local b, s = args:match("^%s*(%S+)%s+(%S+)%s*$")
  if b then
    b, s = tonumber(b), math.tointeger(tonumber(s))
    if not b or not s or b < 0 or s < 0 then error("expected :recency-entropy BOOST SINKS (>= 0)", 0) end
    boost, sinks = b, s
  end
  kvscope.log(string.format("recency-entropy: boost %.2f nats, %d sinks", boost, sinks))
end, "parameters of the recency-entropy retention policy: :recency-entropy [BOOST SINKS]")
