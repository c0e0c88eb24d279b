-- s:chat() from turn_end past the turns array's growth (turn 17)
local kvscope = require 'kvscope'
local s = kvscope.session{ max_tokens = 1, temp = 0 }
kvscope.on('turn_end', function() s:chat('nested') end)
for i = 1, 18 do s:chat('x') end
