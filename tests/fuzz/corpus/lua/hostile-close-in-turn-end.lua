-- s:close() inside the session's own turn_end hook (a use-after-free once)
local kvscope = require 'kvscope'
local s = kvscope.session{ max_tokens = 2, temp = 0 }
kvscope.on('turn_end', function() pcall(s.close, s) pcall(s.reset, s) pcall(s.chat, s, 'again') end)
for i = 1, 18 do s:chat('turn ' .. i) end
