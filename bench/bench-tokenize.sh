#!/bin/sh
# bench-tokenize.sh: tokenizer throughput, kvscope against llama.cpp's
# llama-tokenize, on the same 1 MiB of text and the same vocabulary.
#
#   sh bench/bench-tokenize.sh [KVSCOPE_BIN]
#
# Environment: LLAMA_TOKENIZE (default /opt/llama.cpp/build/bin/llama-tokenize),
# MODEL (default: the installed SmolLM2 model), RUNS (default 5).
#
# Input: tests/fixtures/text/genesis-1-11.txt (English prose), every C file
# under src/ (code) and tests/fixtures/vocab/strings.txt (many scripts and
# emoji), concatenated, repeated and cut to exactly 1,048,576 bytes.
#
# Method: both programs run as command-line tools that load the vocabulary,
# tokenize the file and print the ids to /dev/null. The time of the same
# command on an empty file (loading and start-up) is subtracted, so what is
# left is tokenizing plus printing the ids. Each figure is the median of
# RUNS runs of wall-clock time. Both outputs are checked to be the same ids
# before timing. MB/s counts 10^6 bytes.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
kvs=${1:-${KVSCOPE_BIN:-$top/kvscope}}
tok=${LLAMA_TOKENIZE:-/opt/llama.cpp/build/bin/llama-tokenize}
model=${MODEL:-${XDG_DATA_HOME:-$HOME/.local/share}/kvscope/models/SmolLM2-135M-Instruct.Q4_1.gguf}
runs=${RUNS:-5}
LD_LIBRARY_PATH=$(dirname "$tok")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH

work=$(mktemp -d "${TMPDIR:-/tmp}/kvs-bench-tok.XXXXXX")
trap 'rm -rf "$work"' EXIT

cat "$top/tests/fixtures/text/genesis-1-11.txt" $(find "$top/src" -name '*.c' | LC_ALL=C sort) \
	"$top/tests/fixtures/vocab/strings.txt" > "$work/base"
: > "$work/in"
while [ "$(wc -c < "$work/in")" -lt 1048576 ]; do
	cat "$work/base" >> "$work/in"
done
head -c 1048576 "$work/in" > "$work/text"
: > "$work/empty"

ours() { "$kvs" tokenize --model "$model" --file "$1"; }
theirs() { "$tok" -m "$model" -f "$1" --ids --log-disable --no-escape 2>/dev/null; }

# same ids first
ours "$work/text" > "$work/a"
theirs "$work/text" | tr -d '[],' > "$work/b"
if ! cmp -s "$work/a" "$work/b"; then
	echo "bench-tokenize: kvscope and llama-tokenize disagree on the input" >&2
	exit 1
fi
n_tok=$(wc -w < "$work/a")

# median wall seconds of RUNS runs of "$@"
median() {
	i=0
	: > "$work/t"
	while [ $i -lt "$runs" ]; do
		s=$(date +%s.%N)
		"$@" > /dev/null
		e=$(date +%s.%N)
		echo "$s $e" | awk '{ printf "%.6f\n", $2 - $1 }' >> "$work/t"
		i=$((i + 1))
	done
	sort -n "$work/t" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}

o_full=$(median ours "$work/text")
o_empty=$(median ours "$work/empty")
t_full=$(median theirs "$work/text")
t_empty=$(median theirs "$work/empty")

echo "command: sh bench/bench-tokenize.sh  (runs=$runs, median wall time)"
echo "machine: $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cpus"
echo "input:   1048576 bytes -> $n_tok tokens (SmolLM2 vocabulary, pre smollm)"
awk -v of="$o_full" -v oe="$o_empty" -v tf="$t_full" -v te="$t_empty" 'BEGIN {
	o = of - oe; t = tf - te
	printf "kvscope tokenize: %.3f s total, %.3f s load -> %.3f s, %.1f MB/s\n", of, oe, o, 1.048576 / o
	printf "llama-tokenize:   %.3f s total, %.3f s load -> %.3f s, %.1f MB/s\n", tf, te, t, 1.048576 / t
	printf "ratio (llama time / kvscope time): %.2fx\n", t / o
}'
