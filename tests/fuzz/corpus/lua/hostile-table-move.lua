-- table.move of 2^40 elements
table.move({}, 1, 2^40, 1, {})
