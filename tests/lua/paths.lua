-- paths.lua: kvscope.write writes only under the results directory (run by
-- tests/e2e/lua.sh, which first puts these into the results directory:
-- link-file, a symbolic link to a file outside it; link-dir, a symbolic
-- link to a folder outside it; hard-link, a second name of a file outside
-- it; fifo, a FIFO). Each write through them is refused; lua.sh then checks
-- that the files outside are unchanged and that nothing new appeared there.
local kvscope = require "kvscope"
local fails = 0
local function check(cond, what)
  if cond then print("ok   " .. what) else print("FAIL " .. what); fails = fails + 1 end
end
local function refused(what, pattern, ...)
  local ok, err = pcall(kvscope.write, ...)
  check(not ok and tostring(err):find(pattern) ~= nil, what .. " refused: " .. tostring(err):gsub("\n.*", ""))
end

refused("a symbolic link to a file", "link%-file: a symbolic link: refused", "link-file", "pwned\n")
refused("appending through it", "a symbolic link: refused", "link-file", "pwned\n", "a")
refused("a file under a linked folder", "link%-dir: not a folder", "link-dir/victim", "pwned\n")
refused("a new file under a linked folder", "link%-dir: not a folder", "link-dir/new.txt", "pwned\n")
refused("a folder under a linked folder", "link%-dir: not a folder", "link-dir/sub/new.txt", "pwned\n")
refused("a hard link to a file outside", "hard%-link: not a regular file of its own", "hard-link", "pwned\n")
refused("a FIFO", "fifo: a FIFO", "fifo", "x")
refused("..", "refused", "../escape.txt", "x")
refused("a .. inside", "refused", "sub/../../escape.txt", "x")
refused("an absolute path", "refused", "/tmp/abs.txt", "x")
refused("a NUL in the name", "holds a NUL byte", "ok.txt\0/../../escape", "x")
refused("a NUL at the end", "holds a NUL byte", "ok.txt\0", "x")
refused("an empty name", "refused", "", "x")
refused("an empty component", "refused", "a//b", "x")
refused("a . component", "refused", "./a", "x")
refused("a name with a space", "refused", "a b", "x")

-- what is allowed still works, creating folders on the way
local p = kvscope.write("paths/sub/out.txt", "one\n")
kvscope.write("paths/sub/out.txt", "two\n", "a")
check(p:find("/paths/sub/out%.txt$") ~= nil, "a nested write returns its path: " .. p)
local p2 = kvscope.write("paths/sub/out.txt", "three\n")
check(p2 == p, "writing again truncates the same file")
-- text with NUL bytes is written whole (only names are refused)
kvscope.write("paths/bin.dat", "a\0b")

if fails > 0 then error(fails .. " path checks failed") end
print("paths: all checks passed")
