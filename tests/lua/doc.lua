-- doc.lua: a pinned document in Lua sessions (run by tests/e2e/lua.sh as
-- `kvscope run --doc FILE doc.lua FILE`). Every session a script opens pins
-- run's --doc: session:doc() reports it before the first turn (on, path,
-- tokens, none cached) and after (all of its tokens cached); doc = false
-- opens one without it; session:doc(PATH) loads another and session:doc(false)
-- drops it, both starting the conversation over once it has begun; under
-- squeezed the first turn clusters it (keys = the cached document tokens);
-- a missing file, a wrong argument and a wrong option fail with one line.
local kvscope = require "kvscope"
local fails = 0
local function check(cond, what)
  if cond then print("ok   " .. what) else print("FAIL " .. what); fails = fails + 1 end
end
local path = assert(kvscope.args[1], "expected the document's path as the argument")

local s = kvscope.session{ temp = 0, max_tokens = 4, ctx = 512 }
local d, restarted = s:doc()
check(d.on and d.path == path and d.tokens > 0 and d.cached == 0 and not d.clustered
      and restarted == false,
      "--doc pinned, not fed yet: " .. tostring(d.path) .. ", " .. d.tokens .. " tokens")
s:chat("what is the code of the vault?")
local d2 = s:doc()
check(d2.cached == d.tokens, "after a turn every document token is cached: " .. d2.cached)
check(s:stats().n_pinned >= d.tokens, "and pinned: " .. s:stats().n_pinned)

local other = kvscope.write("doc2.txt", "The lighthouse keeper counts ships at dawn.\n")
local d3, r3 = s:doc(other)
check(d3.path == other and d3.tokens > 0 and r3 == true,
      "another document starts the begun conversation over: " .. tostring(r3))
local d4, r4 = s:doc(false)
check(d4.path == nil and not d4.on and r4 == false,
      "none (the conversation had not begun again): on " .. tostring(d4.on))
s:close()

local n = kvscope.session{ temp = 0, max_tokens = 4, ctx = 512, doc = false }
check(not n:doc().on, "doc = false: no document")
n:close()

local q = kvscope.session{ temp = 0, max_tokens = 4, ctx = 512,
                           sparse = "squeezed:clusters=20,fanout=2,dense=0,sinks=2,recent=4" }
check(not q:doc().clustered, "squeezed: not clustered before the first turn")
q:chat("the code?")
local dq = q:doc()
check(dq.clustered and dq.keys == dq.cached and dq.fine >= 1 and dq.coarse >= 1,
      "the first turn clustered it: " .. tostring(dq.keys) .. " keys, " .. tostring(dq.fine)
      .. " fine, " .. tostring(dq.coarse) .. " coarse")
q:close()

local t = kvscope.session{ temp = 0, max_tokens = 4, ctx = 512 }
local ok, err = pcall(t.doc, t, "/nonexistent/doc.txt")
check(not ok and tostring(err):find("/nonexistent/doc.txt", 1, true) ~= nil
      and not tostring(err):find("\n"), "a missing file, one line: " .. tostring(err))
ok, err = pcall(t.doc, t, 42)
check(not ok and tostring(err):find("expected a file path, or false") ~= nil,
      "a number: " .. tostring(err))
check(t:doc().path == path, "a refused document leaves the one there")
t:close()
ok, err = pcall(kvscope.session, { doc = 42 })
check(not ok and tostring(err):find("doc = number %(expected a file path or false%)") ~= nil,
      "doc = 42: " .. tostring(err))

if fails == 0 then print("doc: all checks passed") end
