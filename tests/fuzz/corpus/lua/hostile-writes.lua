-- writes outside results/
local kvscope = require 'kvscope'
for _, p in ipairs{ '../escape.txt', '/tmp/escape.txt', 'a/../../b', '', '.', 'ok/fine.txt' } do
  pcall(kvscope.write, p, 'x')
end
