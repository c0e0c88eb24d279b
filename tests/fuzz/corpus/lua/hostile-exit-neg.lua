-- forged exit requests
kvscope = require 'kvscope'
kvscope.command('a', function() error({ kvscope_exit = -7 }) end)
kvscope.command('b', function() error({ kvscope_exit = 300 }) end)
error({ kvscope_exit = 2.5 })
