-- token-stats.lua: a "token statistics" pane and a status item.
--
-- The token hook (fast tier) only accumulates numbers; a periodic timer on
-- the main loop redraws the pane from them: tokens seen, tokens per second
-- of the last reply, mean surprisal and entropy, and a histogram of
-- surprisal in 1-nat bins as bars. The status item shows the running
-- tokens per second. :token-stats reset clears the counts.
local kvscope = require "kvscope"

local BINS = 8
local n, n_known, sum_s, sum_e, n_e = 0, 0, 0, 0, 0
local hist = {}
local reply_n, reply_t0, rate = 0, nil, nil
local dirty = true

local function reset()
  n, n_known, sum_s, sum_e, n_e = 0, 0, 0, 0, 0
  for b = 1, BINS do hist[b] = 0 end
  reply_n, reply_t0, rate = 0, nil, nil
  dirty = true
end
reset()

kvscope.on("turn_start", function()
  reply_n, reply_t0 = 0, kvscope.clock()
end)

kvscope.on("token", function(tok)
  n = n + 1
  reply_n = reply_n + 1
  local s, e = tok.surprisal, tok.entropy
  if s then
    n_known = n_known + 1
    sum_s = sum_s + s
    local b = math.min(BINS, math.floor(s) + 1)
    hist[b] = hist[b] + 1
  end
  if e then sum_e, n_e = sum_e + e, n_e + 1 end
  if reply_t0 then
    local dt = kvscope.clock() - reply_t0
    if dt > 0 then rate = reply_n * 1000 / dt end
  end
  dirty = true
end)

local function redraw()
  if not dirty then return end
  dirty = false
  local v = kvscope.view("token statistics")
  v:clear()
  v:text(string.format("tokens %d", n))
  v:text(rate and string.format("last reply %.1f tok/s", rate) or "last reply -")
  v:text(n_known > 0 and string.format("mean surprisal %.2f nats", sum_s / n_known) or "mean surprisal -")
  v:text(n_e > 0 and string.format("mean entropy %.2f nats", sum_e / n_e) or "mean entropy -")
  local top = 1
  for b = 1, BINS do top = math.max(top, hist[b]) end
  for b = 1, BINS do
    v:bar(string.format(b < BINS and "%d-%d nats" or "%d+ nats", b - 1, b), hist[b], top)
  end
  kvscope.status(rate and string.format("%.0f tok/s", rate) or nil)
end

kvscope.timer(250, redraw, true)
kvscope.on("turn_end", redraw)

kvscope.command("token-stats", function(args)
  if args:match("^%s*reset%s*$") then reset(); redraw()
  elseif args:match("%S") then error("expected :token-stats or :token-stats reset", 0)
  else redraw() end
end, "token statistics pane: :token-stats [reset]", function(prefix)
  return ("reset"):sub(1, #prefix) == prefix and { "reset" } or {}
end)
