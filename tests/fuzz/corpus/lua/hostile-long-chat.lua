-- a reply that would run for 40 s
local kvscope = require 'kvscope'
local s = kvscope.session{ max_tokens = 100000, budget = 64, policy = 'window', temp = 0 }
s:set_length('50000t')
s:chat('go on')
