#!/bin/sh
# corpus-lua.sh: run the Lua sandbox fuzz target over its committed corpus
# (tests/fuzz/corpus/lua): readable scripts (*.lua, beginning with "--"),
# one per case that once crashed, froze or misreported, and grammar seeds
# (gram-*, bytes the target turns into scripts). Any crash, sanitizer
# report, call past its deadline or write outside results/ fails the test.
set -eu
bin="${KVSCOPE_BUILDDIR:-.}/tests/fuzz/fuzz-lua"
dir="${KVSCOPE_SRCDIR:-.}/tests/fuzz/corpus/lua"

n=$(find "$dir" -type f | wc -l)
if [ "$n" -lt 20 ]; then
	echo "corpus-lua: $dir holds $n files, expected at least 20" >&2
	exit 1
fi
find "$dir" -type f | sort | xargs "$bin"
echo "corpus-lua: $n inputs ok"
