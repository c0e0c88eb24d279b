-- files.lua: what kvscope.load_plugin reads (run by tests/e2e/lua.sh with
-- one argument, the path of a FIFO named like a plugin). Only regular files
-- are read, without blocking, up to the source limit (4 MiB, or a quarter
-- of --mem-cap), and a file that does not compile gets "PATH:LINE: what
-- Lua says" without the text Lua quotes from it.
local kvscope = require "kvscope"
local fails = 0
local function check(cond, what)
  if cond then print("ok   " .. what) else print("FAIL " .. what); fails = fails + 1 end
end
local function load_fails(what, path, pattern)
  local ok, err = kvscope.load_plugin(path)
  check(not ok and tostring(err):find(pattern) ~= nil and not tostring(err):find("\n"),
        what .. " refused in one line: " .. tostring(err))
  return err
end

load_fails("/dev/zero", "/dev/zero", "/dev/zero: is a character device")
load_fails("a directory", kvscope.write("files/dir.lua/x", "x"):gsub("/x$", ""), "is a directory")
local fifo = assert(kvscope.args[1], "expected the FIFO's path as the argument")
local t0 = kvscope.clock()
load_fails("a FIFO", fifo, "is a FIFO")
check(kvscope.clock() - t0 < 2000, "the FIFO was refused without waiting for a writer")
load_fails("a path with a NUL", "/dev/null\0.lua", "holds a NUL byte")

-- the size limit: 4 MiB of source (a valid chunk: only spaces)
local big = kvscope.write("files/big.lua", string.rep(" ", (4 << 20) + 1))
load_fails("a 4 MiB + 1 byte plugin", big, "big%.lua: 4194305 bytes, expected at most 4194304")
local fits = kvscope.write("files/fits.lua", string.rep(" ", 4 << 20))
check(kvscope.load_plugin(fits), "a plugin of exactly 4 MiB loads")
kvscope.unload_plugin("fits")

-- syntax errors name the file and the line, not the file's text
local secret = kvscope.write("files/secret.lua", "-- line 1\n\nSECRETWORD = = 1\n")
local e1 = load_fails("a syntax error", secret, "secret%.lua:3: unexpected symbol$")
check(not e1:find("SECRETWORD") and not e1:find("near"), "the message quotes none of the file")
local unfinished = kvscope.write("files/unfinished.lua", "x = \"SECRETWORD and more\nprint(x)\n")
local e2 = load_fails("an unfinished string", unfinished, "unfinished%.lua:1: unfinished string$")
check(not e2:find("SECRETWORD"), "the unfinished string is not quoted")
local notlua = kvscope.write("files/notlua.lua", "root:x:0:0:SECRETWORD:/root:/bin/sh\n")
local e3 = load_fails("a file that is not Lua", notlua, "notlua%.lua:1: ")
check(not e3:find("SECRETWORD") and not e3:find("root:"), "its text is not quoted: " .. e3)
-- an error when the chunk runs is Lua's own message (the plugin's code, not data)
local runerr = kvscope.write("files/runerr.lua", "error('raised on purpose')\n")
load_fails("a chunk that raises", runerr, "raised on purpose")

if fails > 0 then error(fails .. " file checks failed") end
print("files: all checks passed")
