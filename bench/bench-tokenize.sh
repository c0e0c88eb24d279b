#!/bin/sh
# bench-tokenize.sh: tokenizer throughput, kvscope against llama.cpp's
# llama-tokenize, on the same text and the same vocabulary.
#
#   sh bench/bench-tokenize.sh [KVSCOPE_BIN]
#
# Environment: LLAMA_TOKENIZE (default /opt/llama.cpp/build/bin/llama-tokenize),
# MODEL (default: the installed SmolLM2 model), RUNS (default 5).
#
# Inputs, built from files in this repository:
#   unique  tests/fixtures/text/genesis-1-11.txt (English prose), every C file
#           under src/ (code) and tests/fixtures/vocab/strings.txt (many
#           scripts, emoji), concatenated once;
#   1 MiB   the same repeated and cut to exactly 1,048,576 bytes. Repetition
#           favours kvscope, whose word cache lives for one call; "unique" is
#           the fairer of the two.
#
# Method: both programs run as command-line tools that load the vocabulary,
# tokenize the file and print the ids to /dev/null. The same command on an
# empty file (start-up and loading) is subtracted, so what is left is
# tokenizing plus printing the ids. Each figure is the median of RUNS runs
# of user+system CPU seconds of the child (getrusage via python3; the
# machine is shared, and CPU time is steadier than wall time). The two outputs are checked to be the same ids first.
# MB/s counts 10^6 bytes.
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
	"$top/tests/fixtures/vocab/strings.txt" > "$work/unique"
: > "$work/in"
while [ "$(wc -c < "$work/in")" -lt 1048576 ]; do
	cat "$work/unique" >> "$work/in"
done
head -c 1048576 "$work/in" > "$work/1mib"
: > "$work/empty"

ours() { "$kvs" tokenize --model "$model" --file "$1"; }
theirs() { "$tok" -m "$model" -f "$1" --ids --log-disable --no-escape 2>/dev/null; }

# median CPU seconds (user+sys) of RUNS runs of "$@"
median() {
	i=0
	: > "$work/t"
	while [ $i -lt "$runs" ]; do
		python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("%.4f" % (r.ru_utime + r.ru_stime))' "$@" >> "$work/t"
		i=$((i + 1))
	done
	sort -n "$work/t" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}

echo "command: sh bench/bench-tokenize.sh  (runs=$runs, median CPU time, load subtracted)"
echo "machine: $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cpus"
o_empty=$(median "$kvs" tokenize --model "$model" --file "$work/empty")
t_empty=$(median "$tok" -m "$model" -f "$work/empty" --ids --log-disable --no-escape)
echo "load (empty input): kvscope $o_empty s, llama-tokenize $t_empty s"
for input in unique 1mib; do
	ours "$work/$input" > "$work/a"
	theirs "$work/$input" | tr -d '[],' > "$work/b"
	if ! cmp -s "$work/a" "$work/b"; then
		echo "bench-tokenize: kvscope and llama-tokenize disagree on $input" >&2
		exit 1
	fi
	bytes=$(wc -c < "$work/$input")
	n_tok=$(wc -w < "$work/a")
	o=$(median "$kvs" tokenize --model "$model" --file "$work/$input")
	t=$(median "$tok" -m "$model" -f "$work/$input" --ids --log-disable --no-escape)
	awk -v name="$input" -v b="$bytes" -v nt="$n_tok" -v of="$o" -v oe="$o_empty" \
	    -v tf="$t" -v te="$t_empty" 'BEGIN {
		o = of - oe; t = tf - te
		if (o < 0.0001) o = 0.0001
		printf "%-6s %8d bytes %7d tokens (same ids): kvscope %.4f s %6.1f MB/s | llama-tokenize %.4f s %6.1f MB/s | %.1fx\n",
		    name, b, nt, o, b / o / 1e6, t, b / t / 1e6, t / o
	}'
done
