#!/bin/sh
# corpus-gguf.sh: run the GGUF fuzz target over the committed corpus
# (tests/fuzz/corpus/gguf). Both builds take a list of files: the replay
# build (tests/fuzz/replay.c) runs each once; a libFuzzer build
# (--enable-fuzzing) does the same when given files instead of a directory.
# Any crash or sanitizer report fails the test.
set -eu
bin="${KVSCOPE_BUILDDIR:-.}/tests/fuzz/fuzz-gguf"
dir="${KVSCOPE_SRCDIR:-.}/tests/fuzz/corpus/gguf"

n=$(find "$dir" -type f | wc -l)
if [ "$n" -lt 100 ]; then
	echo "corpus-gguf: $dir holds $n files, expected at least 100" >&2
	exit 1
fi
# A valid model must be among them, or the loader paths go unexercised.
ls "$dir"/valid-* >/dev/null 2>&1 || {
	echo "corpus-gguf: no valid-* model in $dir" >&2
	exit 1
}
find "$dir" -type f | sort | xargs "$bin"
echo "corpus-gguf: $n inputs ok"
