-- an __index that loops on an error value
error(setmetatable({}, { __index = function() while true do end end, __tostring = function() while true do end end }))
