-- an error object whose __index fails on its second read
local n = 0
error(setmetatable({}, { __index = function() n = n + 1 if n == 1 then return 0 end error('boom') end }))
