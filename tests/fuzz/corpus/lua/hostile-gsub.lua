-- backtracking in gsub and gmatch
local kvscope = require 'kvscope'
kvscope.command('g', function() string.gsub(('a'):rep(3000), ('a?'):rep(40) .. ('a'):rep(40), '') end)
for w in (('a'):rep(3000)):gmatch(('a*'):rep(10) .. 'b') do end
