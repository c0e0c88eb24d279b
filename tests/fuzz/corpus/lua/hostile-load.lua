-- a long chunk for load
local f, err = load(string.rep('-', 3e6))
while true do end
