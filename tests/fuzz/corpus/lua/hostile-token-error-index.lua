-- the same from a token hook
local kvscope = require 'kvscope'
kvscope.on('token', function() error(setmetatable({}, { __index = function() error('boom') end })) end)
kvscope.command('go', function() kvscope.session{ max_tokens = 3 }:chat('hi') end)
