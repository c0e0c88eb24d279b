-- store.lua: kvscope.store_sessions and kvscope.store_turns read what
-- `kvscope chat --db` saved. tests/e2e/lua.sh writes the database first:
-- one session titled "lua-store" with the turns "first line" and "second
-- line", and passes its replies as arguments (as the chat printed them).
local kvscope = require "kvscope"
local fails = 0
local function check(cond, what)
  if cond then print("ok   " .. what) else print("FAIL " .. what); fails = fails + 1 end
end
local reply1, reply2 = kvscope.args[1], kvscope.args[2]

local list = kvscope.store_sessions()
check(#list == 1, "one saved session (" .. #list .. ")")
local s = list[1] or {}
check(s.title == "lua-store", "its title: " .. tostring(s.title))
check(s.n_turns == 2 and s.n_incomplete == 0, "two complete turns")
check(type(s.id) == "number" and s.created <= s.updated, "id and times")

local turns = kvscope.store_turns("lua-store")
check(#turns == 2, "two exchanges by title")
check(turns[1] and turns[1].user == "first line" and turns[2].user == "second line",
      "user texts in order")
check(turns[1] and turns[1].reply == reply1 and turns[2].reply == reply2,
      "replies equal what the chat printed")
local by_id = kvscope.store_turns(tostring(s.id))
check(#by_id == 2 and by_id[2].user == "second line", "the same by id")
local ok, err = pcall(kvscope.store_turns, "no such title")
check(not ok and tostring(err):find("no session") ~= nil, "an unknown session is an error: " .. tostring(err))

if fails > 0 then error(fails .. " store checks failed") end
print("store: all checks passed")
