-- a turn driven by hand
local kvscope = require 'kvscope'
local s = kvscope.session{ max_tokens = 4, temp = 0 }
s:prompt('hello')
local text = s:generate(3)
s:end_reply()
s:feed('more', 'user')
local top = s:top(3)
local lp = s:logprobs({ 1, 2, 'a' })
s:set_budget(64) s:set_policy('streaming') s:reset() s:close()
