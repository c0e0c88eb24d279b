-- string.rep of nothing, 2^63 times
local s = string.rep('', math.maxinteger) .. string.rep('', math.maxinteger, '')
while true do end
