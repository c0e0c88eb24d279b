-- the usual plugin API
local kvscope = require 'kvscope'
local n = 0
kvscope.on('token', function(t) n = n + 1 kvscope.status('tok ' .. t.text) end)
kvscope.on('key', function(k) return k == 'C-x' end)
kvscope.command('count', function(a) kvscope.log(n, a) kvscope.view('v'):text(a) end, 'help',
  function(p) return { 'one', 'two' } end)
kvscope.timer(0, function() kvscope.schedule(function() n = 0 end) end)
kvscope.policy.register('lp', function(t, k) local o = {} for i = 1, #t do o[i] = -i end return o end)
local s = kvscope.session{ max_tokens = 4, budget = 32, ctx = 256, policy = 'lp' }
for i = 1, 5 do s:chat('some words to fill the cache ' .. i) end
kvscope.write('out/n.txt', tostring(n))
