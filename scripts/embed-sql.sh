#!/bin/sh
# embed-sql.sh FILE.sql...: the migrations as a C array initialiser, one
# { "name", "text" } per file in the order given (store.c includes it).
for f in "$@"; do
	printf '{ "%s",\n' "$(basename "$f")"
	sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$/\\n"/' "$f"
	printf '},\n'
done
