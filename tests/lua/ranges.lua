-- ranges.lua: every integer the API takes from Lua is range-checked, with an
-- error naming the argument and the range, never truncated to 32 bits or
-- rounded (run by tests/e2e/lua.sh on the tiny model). The expected values
-- are the documented ranges; a truncating binding would accept the values
-- refused here (2^40 -> 0, 2^32 + 1 -> 1, 1.5 -> 1 or 0).
local kvscope = require "kvscope"
local fails = 0
local function check(cond, what)
  if cond then print("ok   " .. what) else print("FAIL " .. what); fails = fails + 1 end
end
-- refused(what, pattern, fn, ...): fn(...) raises an error matching pattern
local function refused(what, pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  check(not ok and tostring(err):find(pattern) ~= nil, what .. " refused: " .. tostring(err):gsub("\n.*", ""))
end

local s = kvscope.session{ temp = 0, max_tokens = 4 }
s:feed("hello world, this is a test")
local n = #s:tokens()
check(n >= 4, "the session holds " .. n .. " tokens")
-- positions: 0..2^31-1; position 0 and 1 are cached, so a truncation would find them
check(s:find(0) == 1 and s:find(1) == 2, "find(0), find(1) give cache indices 1 and 2")
refused("find(2^40)", "find: position: .*expected an integer in %-2147483648%.%.2147483647", s.find, s, 2^40)
refused("find(2^32)", "expected an integer in %-2147483648%.%.2147483647", s.find, s, 1 << 32)
refused("find(-2^31 - 1)", "expected an integer in %-2147483648%.%.2147483647", s.find, s, -(1 << 31) - 1)
check(s:find(-1) == nil, "find(-1) is nil (no such position)")
refused("find(1.5)", "find: position: 1%.5: expected an integer", s.find, s, 1.5)
refused("find('x')", "expected an integer", s.find, s, "x")
refused("pin(2^32 + 1)", "pin: position: .*expected an integer in %-2147483648%.%.2147483647", s.pin, s, 2^32 + 1)
check(not s:tokens()[2].pinned, "position 1 was not pinned by pin(2^32 + 1)")
s:pin(1)
check(s:tokens()[2].pinned, "pin(1) pins position 1")
-- token ids: integers in 0..n_vocab - 1
local nv = s:info().n_vocab
refused("detokenize{1.5}", "detokenize: id: 1%.5: expected an integer in 0%.%." .. (nv - 1), s.detokenize, s, { 1.5 })
refused("detokenize{n_vocab}", "expected an integer in 0%.%." .. (nv - 1), s.detokenize, s, { nv })
refused("detokenize{2^40}", "expected an integer", s.detokenize, s, { 2^40 })
refused("detokenize{'a'}", "expected an integer", s.detokenize, s, { "a" })
check(s:detokenize{ 1.0 } == s:detokenize{ 1 }, "detokenize{1.0} is detokenize{1}")
refused("logprobs{2^32 + 3}", "logprobs: token id: .*expected an integer in 0%.%." .. (nv - 1), s.logprobs, s, { 2^32 + 3 })
refused("logprobs{0.5}", "logprobs: token id: 0%.5", s.logprobs, s, { 0.5 })
-- counts
refused("top(2^32 + 1)", "top: k: .*expected an integer in 1%.%.1000", s.top, s, 2^32 + 1)
refused("top(2.5)", "top: k: 2%.5", s.top, s, 2.5)
refused("generate(2^32 + 1)", "generate: tokens: .*1%.%.16777216", s.generate, s, 2^32 + 1)
refused("generate(0)", "generate: tokens: 0: expected an integer in 1%.%.16777216", s.generate, s, 0)
refused("set_budget(2^32 + 64)", "set_budget: tokens: .*8%.%.16777216", s.set_budget, s, 2^32 + 64)
refused("prompt extra 2^32", "prompt: extra: .*0%.%.16777216", s.prompt, s, "x", 1 << 32)
refused("chat max_tokens 2^32 + 2", "chat: max_tokens: .*1%.%.16777216", s.chat, s, "x", { max_tokens = 2^32 + 2 })
-- session options: integers where the field is an integer
refused("session ctx 16.5", "kvscope.session: ctx: 16%.5: expected an integer in 16%.%.1048576", kvscope.session, { ctx = 16.5 })
refused("session ctx 2^32 + 64", "kvscope.session: ctx: .*expected an integer in 16%.%.1048576", kvscope.session, { ctx = 2^32 + 64 })
refused("session seed 1.5", "kvscope.session: seed: 1%.5", kvscope.session, { seed = 1.5 })
refused("session threads -1", "kvscope.session: threads: %-1: expected an integer in 0%.%.1024", kvscope.session, { threads = -1 })
check(pcall(kvscope.session, { temp = 0.5, top_p = 0.9 }), "float options still take fractions")
-- the loop
refused("on priority 2^40", "kvscope.on: priority: .*expected an integer", kvscope.on, "token", function() end, 2^40)
refused("on priority 0.5", "kvscope.on: priority: 0%.5", kvscope.on, "token", function() end, 0.5)
refused("off(1.5)", "kvscope.off: id: 1%.5", kvscope.off, 1.5)
refused("string.rep count 1.5", "string.rep: count: 1%.5", string.rep, "x", 1.5)
-- a forged exit request (an error table with kvscope_exit out of 0..125) is an error, not an exit
local okf, errf = pcall(function() error({ kvscope_exit = 2^32 + 3 }) end)
check(not okf and type(errf) == "table", "a table error stays a table inside pcall")
kvscope.command("forge", function() error({ kvscope_exit = 2^32 + 3 }) end)
local okc, errc = kvscope.run_command("forge")
check(not okc and not tostring(errc):find("exited"), "an out-of-range kvscope_exit table is an error: " .. tostring(errc))

if fails > 0 then error(fails .. " range checks failed") end
print("ranges: all checks passed")
