-- heads.lua: session:heads(position), which (layer, KV head) pairs keep a
-- token (run by tests/e2e/lua.sh on a tiny model).
--   - with one keep-set (full, sirllm) every pair keeps every cached token;
--   - kvzip with spread 1 (the default): the union stays within the budget
--     and every pair keeps all of it;
--   - kvzip:spread=2 after evictions: n is the number of true entries,
--     every cached token is kept by at least one pair, no pair keeps more
--     than the budget, the pairs do differ, the bytes held are the union's;
--   - against the engine: in the last captured step, every query head of a
--     (layer, KV head) that the map says dropped a token gave it exactly
--     zero weight (the map is what the attention was masked by);
--   - an evicted position gives nil; a non-number is refused;
--   - kvzip:spread=2,store=heads (the per-head store) answers as the slot
--     store does, with the same maps, the bytes held within the budget's
--     and fewer allocated.
local kvscope = require "kvscope"
local fails = 0
local function check(cond, what)
  if cond then print("ok   " .. what) else print("FAIL " .. what); fails = fails + 1 end
end

local turns = {
  "The secret code is TIGER-42. Please remember it for later.",
  "Tell me about the weather on the coast today, in a few words.",
  "What colour is the sky over the mountains at dusk?",
  "Count from one to ten, slowly, with words and not digits.",
  "What was the secret code I told you at the start?",
}

-- one keep-set: every pair, for every cached token
local s1 = kvscope.session{ temp = 0, max_tokens = 4, policy = "sirllm", budget = 48, ctx = 512 }
for _, text in ipairs(turns) do s1:chat(text) end
local info = s1:info()
local pairs_n = info.n_layer * info.n_head_kv
local all_ok, nt = true, 0
for i = 1, #s1:tokens() do
  local map, n = s1:heads(s1:tokens()[i].position)
  nt = nt + 1
  if n ~= pairs_n or #map ~= info.n_layer or #map[1] ~= info.n_head_kv then all_ok = false end
end
check(nt > 0 and all_ok, "one keep-set: every (layer, KV head) keeps each of " .. nt .. " tokens")
s1:close()

-- per-head keep-sets, spread 1: the union within the budget, one set
local budget = 40
local s0 = kvscope.session{ temp = 0, max_tokens = 6, policy = "kvzip:heads=1", budget = budget, ctx = 1024 }
for _, text in ipairs(turns) do s0:chat(text) end
local agree, n0 = true, #s0:tokens()
for i = 1, n0 do
  local _, n = s0:heads(s0:tokens()[i].position)
  if n ~= pairs_n then agree = false end
end
check(s0:stats().n_evicted > 0 and n0 <= budget and agree and
      s0:stats().bytes == n0 * s0:stats().bytes_per_token,
      "kvzip, spread 1: " .. n0 .. " tokens held within the budget, every pair keeps each")
s0:close()

-- per-head keep-sets that differ: kvzip:spread=2, the last step captured
local s = kvscope.session{ temp = 0, max_tokens = 6, policy = "kvzip:heads=1,spread=2", budget = budget,
                           ctx = 1024, capture = "full" }
local grp = info.n_head // info.n_head_kv
local last -- the last step: positions of its columns and weights[l][h][i]
kvscope.on("attention", function(a)
  -- copied: the handle and its rows go stale after the event
  local w = {}
  for l = 1, a.n_layer do
    w[l] = {}
    for h = 1, a.n_head do
      local row = {}
      for i = 1, a.n_cached do row[i] = a:get(l, h, i) end
      w[l][h] = row
    end
  end
  local pos = {}
  for i = 1, a.n_cached do pos[i] = a:position(i) end
  last = { pos = pos, w = w }
end)
local evicted = {}
kvscope.on("evict", function(ev)
  for i = 1, #ev.tokens do evicted[#evicted + 1] = ev.tokens[i].position end
end)
for _, text in ipairs(turns) do s:chat(text) end
check(s:stats().n_evicted > 0, "kvzip at budget " .. budget .. " evicted (" .. s:stats().n_evicted .. ")")

local per_pair, count_ok, some_part, none_zero, nt2 = {}, true, false, true, 0
for i = 1, #s:tokens() do
  local map, n = s:heads(s:tokens()[i].position)
  local k = 0
  for l = 1, info.n_layer do
    for h = 1, info.n_head_kv do
      if map[l][h] then
        k = k + 1
        local key = l * 1000 + h
        per_pair[key] = (per_pair[key] or 0) + 1
      end
    end
  end
  if k ~= n then count_ok = false end
  if n == 0 then none_zero = false end
  if n < pairs_n then some_part = true end
  nt2 = nt2 + 1
end
local most = 0
for _, v in pairs(per_pair) do most = math.max(most, v) end
check(count_ok, "n counts the true entries of the map (" .. nt2 .. " tokens)")
check(none_zero, "every cached token is kept by at least one pair")
check(most <= budget, "no (layer, KV head) keeps more than the budget: " .. most .. " <= " .. budget)
check(some_part, "the pairs differ: some token is kept by fewer than all")
check(nt2 <= 2 * budget and s:stats().bytes == nt2 * s:stats().bytes_per_token and
      s:stats().bytes_entries < s:stats().bytes,
      "spread 2: the union (" .. nt2 .. ") within 2 x the budget, bytes held = its tokens', " ..
      "the kept entries' fewer")

-- the engine's attention in the last step obeys the map
local dropped_seen, zero_ok, kept_ok = 0, true, true
check(last ~= nil, "a step was captured")
if last ~= nil then
  for i, p in ipairs(last.pos) do
    local map = s:heads(p)
    if map ~= nil then
      for l = 1, info.n_layer do
        for kvh = 1, info.n_head_kv do
          local tot = 0
          for q = 1, grp do tot = tot + last.w[l][(kvh - 1) * grp + q][i] end
          if not map[l][kvh] then
            dropped_seen = dropped_seen + 1
            if tot ~= 0 then zero_ok = false end
          elseif tot <= 0 then
            kept_ok = false
          end
        end
      end
    end
  end
end
check(dropped_seen > 0 and zero_ok, "a pair that dropped a token gave it exactly zero weight (" ..
      dropped_seen .. " dropped entries in the last step)")
check(kept_ok, "a pair that keeps a token gave it some weight")

check(#evicted > 0 and s:heads(evicted[1]) == nil, "an evicted position gives nil")
check(not pcall(s.heads, s, "seven"), "a non-number position is refused")

-- the per-head store: the same chat, the same replies and maps, the
-- budget's bytes held and allocated for the budget and the scratch only
local sh = kvscope.session{ temp = 0, max_tokens = 6, policy = "kvzip:heads=1,spread=2,store=heads",
                            budget = budget, ctx = 1024 }
local same_reply = true
local s3 = kvscope.session{ temp = 0, max_tokens = 6, policy = "kvzip:heads=1,spread=2", budget = budget,
                            ctx = 1024 }
for _, text in ipairs(turns) do
  if sh:chat(text) ~= s3:chat(text) then same_reply = false end
end
local same_map = #sh:tokens() == #s3:tokens()
for i = 1, #sh:tokens() do
  local p = sh:tokens()[i].position
  local a, na = sh:heads(p)
  local b, nb = s3:heads(p)
  if b == nil or na ~= nb then same_map = false end
  for l = 1, info.n_layer do
    for kvh = 1, info.n_head_kv do
      if b ~= nil and a[l][kvh] ~= b[l][kvh] then same_map = false end
    end
  end
end
local st, bpt = sh:stats(), sh:stats().bytes_per_token
check(same_reply and same_map, "store=heads: the replies and every token's pairs as the slot store's")
check(st.bytes == st.bytes_entries and st.bytes <= budget * bpt and
      st.bytes_allocated == (budget + math.min(512, budget) + 64) * bpt,
      "store=heads: " .. #sh:tokens() .. " tokens held in " .. st.bytes .. " bytes (budget " ..
      budget * bpt .. "), " .. st.bytes_allocated .. " allocated: the budget, a chunk and " ..
      "the prompt")
sh:close()
s3:close()
s:close()

if fails > 0 then error(fails .. " check(s) failed") end
print("heads: all checks passed")
