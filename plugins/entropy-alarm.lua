-- entropy-alarm.lua: flag runs of high-surprisal tokens in a reply.
--
-- A token whose surprisal (-log p of the token the model produced, nats)
-- is above the threshold extends the current run; any other token ends it.
-- A run of at least `run` tokens raises the alarm: a status item, a line in
-- the plugin's log and a line in the "entropy alarm" pane. Surprisal is
-- known when the session computes token statistics (kvscope run: open the
-- session with token_stats = true; the TUI: --token-stats on).
--
--   :entropy-alarm                 show the settings and the alarm count
--   :entropy-alarm THRESHOLD RUN   set them (e.g. :entropy-alarm 4.5 5)
local kvscope = require "kvscope"

local threshold, min_run = 4.0, 5
local run_len, run_start = 0, nil
local alarms, pending = 0, {}

local function report()
  local v = kvscope.view("entropy alarm")
  while #pending > 0 do
    local a = table.remove(pending, 1)
    local line = string.format("%d tokens above %.1f nats from position %d (max %.2f)", a.n, threshold, a.start, a.max)
    v:text(line)
    kvscope.log("alarm: " .. line)
  end
end

local run_max = 0
kvscope.on("token", function(tok)
  local s = tok.surprisal
  if s ~= nil and s > threshold and not tok.eog then
    if run_len == 0 then run_start, run_max = tok.position, 0 end
    run_len = run_len + 1
    run_max = math.max(run_max, s)
    if run_len == min_run then
      alarms = alarms + 1
      kvscope.status(string.format("entropy alarm x%d", alarms))
      pending[#pending + 1] = { n = run_len, start = run_start, max = run_max }
      -- views are deferred: draw on the main loop
      kvscope.schedule(report)
    elseif run_len > min_run then
      pending[#pending] = pending[#pending] or { n = run_len, start = run_start, max = run_max }
      pending[#pending].n, pending[#pending].max = run_len, run_max
    end
  else
    run_len = 0
  end
end)

kvscope.on("turn_start", function() run_len = 0 end)

kvscope.command("entropy-alarm", function(args)
  local t, r = args:match("^%s*(%S+)%s+(%S+)%s*$")
  if t then
    t, r = tonumber(t), math.tointeger(tonumber(r))
    if not t or not r or t <= 0 or r < 1 then
      error("expected :entropy-alarm THRESHOLD RUN (nats > 0, tokens >= 1)", 0)
    end
    threshold, min_run = t, r
  elseif args:match("%S") then
    error("expected :entropy-alarm or :entropy-alarm THRESHOLD RUN", 0)
  end
  kvscope.log(string.format("threshold %.2f nats, run %d tokens, %d alarms", threshold, min_run, alarms))
end, "flag runs of high-surprisal tokens: :entropy-alarm [THRESHOLD RUN]")
