-- sparsity.lua: a session under sparse attention tells Lua what the
-- workbench's sparsity pane shows: stats().sparsity after a reply, with
-- the keys and bytes read against dense consistent with each other, the
-- shadow (every 2 steps) measured, the overlap a share; a bad spec is
-- refused with the parser's message; without capture there is no table.
local kvscope = require "kvscope"
local fails = 0
local function check(ok, what)
  if not ok then
    fails = fails + 1
    print("FAIL: " .. what)
  end
end

local s = kvscope.session{ temp = 0, max_tokens = 12, ctx = 512, capture = "summary",
                           sparse = "quest:budget=16,page=4,sinks=2,recent=4,dense=1,shadow=2" }
s:chat("tell me a short story about a small boat on a wide river")
local st = s:stats()
local sp = st.sparsity
check(sp ~= nil, "stats().sparsity under sparse attention with capture")
if sp then
  check(st.keys_read < st.keys_dense, "fewer keys read than dense: " .. st.keys_read .. " of " .. st.keys_dense)
  -- the bytes are the keys times one key-head's K and V bytes
  check(sp.bytes_read * st.keys_dense == sp.bytes_dense * st.keys_read,
        "bytes in proportion to keys: " .. sp.bytes_read .. "/" .. sp.bytes_dense)
  check(sp.shadow_every == 2 and sp.shadow_step > 0 and sp.shadow_step <= sp.step,
        "a shadow ran: step " .. tostring(sp.shadow_step) .. " of " .. tostring(sp.step))
  check(sp.mass_mean ~= nil and sp.mass_mean >= 0 and sp.mass_mean <= 1.0001
        and sp.mass_min <= sp.mass_mean, "captured mass in [0, 1]: " .. tostring(sp.mass_mean))
  check(sp.overlap == nil or (sp.overlap >= 0 and sp.overlap <= 1), "overlap a share")
  check(sp.tight == nil or sp.tight <= 1.001, "tightness at most 1: " .. tostring(sp.tight))
end
s:close()

local ok, err = pcall(kvscope.session, { sparse = "qwest" })
check(not ok and tostring(err):find("sparse mode 'qwest'") ~= nil, "a bad spec: " .. tostring(err))

local d = kvscope.session{ temp = 0, max_tokens = 4, ctx = 256, sparse = "quest:budget=16" }
d:chat("hello")
check(d:stats().sparsity == nil, "no sparsity table without capture")
d:close()

if fails == 0 then print("sparsity: all checks passed") end
