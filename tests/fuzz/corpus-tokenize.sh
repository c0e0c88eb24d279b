#!/bin/sh
# corpus-tokenize.sh: run the tokenizer fuzz target over its committed corpus
# (tests/fuzz/corpus/tokenize). Each file is one byte choosing the
# vocabulary and flags (see fuzz-tokenize.c) followed by a string of
# tests/fixtures/vocab/strings.txt; file sNNN holds string NNN with selector
# byte (NNN % 7) | ((NNN / 7) % 8) << 4. Any crash or sanitizer report fails.
set -eu
bin="${KVSCOPE_BUILDDIR:-.}/tests/fuzz/fuzz-tokenize"
dir="${KVSCOPE_SRCDIR:-.}/tests/fuzz/corpus/tokenize"

n=$(find "$dir" -type f | wc -l)
if [ "$n" -lt 100 ]; then
	echo "corpus-tokenize: $dir holds $n files, expected at least 100" >&2
	exit 1
fi
find "$dir" -type f | sort | xargs "$bin"
echo "corpus-tokenize: $n inputs ok"
