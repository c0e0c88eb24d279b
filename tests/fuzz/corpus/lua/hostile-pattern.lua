-- backtracking patterns
string.find(('a'):rep(3000), ('a*'):rep(12) .. 'b')
