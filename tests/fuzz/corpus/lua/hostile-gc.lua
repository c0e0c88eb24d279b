-- a __gc that loops at state close
setmetatable({}, { __gc = function() while true do end end })
