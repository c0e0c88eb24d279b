-- kvscope.sleep(NaN) and sleep in a plugin
local kvscope = require 'kvscope'
pcall(kvscope.sleep, 0/0)
kvscope.sleep(8000)
