-- attention-dump.lua: write the attention rows of chosen layers and heads
-- as CSV, one line per (step, layer, head, cached token).
--
--   kvscope run attention-dump.lua [--prompt TEXT] [--layers 0,15] [--heads 0,3]
--                                  [--max-tokens N] [--out FILE.csv | --out -]
--
-- The session captures every forward's attention (capture = "full"); the
-- attention hook (fast tier) copies the chosen rows into a Lua table while
-- the data is lent, and the file is written after the exchange, under the
-- results directory (kvscope run --results DIR; default results/), or to
-- stdout with --out -. Layers, heads and columns count from 0, as the
-- workbench's :layer and :head do (the Lua attn[l][h][i] rows count from 1:
-- the hook adds one); columns are the cached tokens in cache order with
-- their original positions. Each step is one
-- forward: the prompt's last token, then each generated token.
local kvscope = require "kvscope"

local opt = { prompt = "The quick brown fox jumps over the lazy dog.", layers = { 0 }, heads = { 0 },
              max_tokens = 8, out = "attention.csv" }
local function list(s, what)
  local out = {}
  for item in s:gmatch("[^,]+") do
    local n = math.tointeger(tonumber(item))
    if not n or n < 0 then kvscope.exit(2, "attention-dump.lua: " .. what .. ": '" .. item .. "' is not a number >= 0") end
    out[#out + 1] = n
  end
  return out
end
kvscope.getopt("attention-dump.lua", kvscope.args, {
  { "--prompt", function(v) opt.prompt = v end, value = "TEXT", help = "the user's message" },
  { "--layers", function(v) opt.layers = list(v, "--layers") end, value = "L1,L2,...",
    help = "layers to dump, from 0 as in the workbench (default 0)" },
  { "--heads", function(v) opt.heads = list(v, "--heads") end, value = "H1,H2,...",
    help = "query heads to dump, from 0 (default 0)" },
  { "--max-tokens", function(v) opt.max_tokens = math.tointeger(tonumber(v)) end, value = "N",
    help = "tokens to generate (default 8)" },
  { "--out", function(v) opt.out = v end, value = "FILE.csv|-",
    help = "output under the results directory, or - for stdout (default attention.csv)" },
}, "Writes the attention rows of the chosen layers and heads as CSV, one line per\n" ..
   "(step, layer, head, cached token).")
if not opt.max_tokens or opt.max_tokens < 1 then kvscope.exit(2, "attention-dump.lua: --max-tokens expects a positive whole number") end

local s = kvscope.session{ temp = 0, max_tokens = opt.max_tokens, capture = "full" }
local info = s:info()
for _, l in ipairs(opt.layers) do
  if l >= info.n_layer then kvscope.exit(2, string.format("attention-dump.lua: layer %d, expected 0 .. %d", l, info.n_layer - 1)) end
end
for _, h in ipairs(opt.heads) do
  if h >= info.n_head then kvscope.exit(2, string.format("attention-dump.lua: head %d, expected 0 .. %d", h, info.n_head - 1)) end
end

local lines = { kvscope.csv{ "step", "query_position", "layer", "head", "column", "position", "weight" } }
local steps = 0
kvscope.on("attention", function(a)
  if not a.rows then return end
  steps = steps + 1
  local q = a.query or ""
  for _, l in ipairs(opt.layers) do
    for _, h in ipairs(opt.heads) do
      for c = 1, a.n_cached do
        lines[#lines + 1] = string.format("%d,%s,%d,%d,%d,%d,%.6g", a.step, q, l, h, c - 1, a:position(c) or -1,
          a:get(l + 1, h + 1, c))
      end
    end
  end
end)
s:chat(opt.prompt)
local csv = table.concat(lines, "\n") .. "\n"
if opt.out == "-" then
  print((csv:gsub("\n$", "")))
else
  local path = kvscope.write(opt.out, csv)
  print(string.format("%s: %d rows (%d steps x %d layers x %d heads x cached tokens)", path, #lines - 1,
    steps, #opt.layers, #opt.heads))
end
