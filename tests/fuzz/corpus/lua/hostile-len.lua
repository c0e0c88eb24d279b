-- table functions under a huge __len
local t = setmetatable({}, { __len = function() return 2^40 end, __index = tostring })
pcall(table.insert, t, 1, 0)
pcall(table.remove, t, 1)
pcall(table.concat, t)
table.unpack(t, 1, 500000)
