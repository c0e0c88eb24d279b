#!/bin/sh
# gemma.sh: kvscope against llama.cpp on ~1B-shaped random-weight models of
# the sliding-window architectures, same machine, same threads, the two
# tools one after the other for each model.
#
#   LCPP_PYTHON=/path/to/python sh bench/gemma.sh [THREADS] [ARCHS] [SIZES]
#
# ARCHS defaults to "gemma3 gemma2", SIZES to "512 2048". The shape is
# Gemma-3-1B's layers (26 layers, n_embd 1152, n_ff 6912, 4 query heads over
# 1 KV head of 256, Q4_0 matrices, a Q8_0 embedding) with the test
# generator's ~270-token vocabulary instead of 262,144 (so the LM head, 0.3 G
# of Gemma-3-1B's 1 G weights, is left out of both tools' work alike); gemma3
# gets a window of 512 (every 6th layer global), gemma2 the same shape with
# its default pattern (every 2nd layer global) and window 4096. For each size
# N: pp N (one batch of N tokens) and tg32@dN (32 one-token steps after N).
# llama.cpp runs through llama-cpp-python (bench/lcpp-time.py): the
# llama-bench at hand predates gemma3, and one harness for both keeps them
# comparable. A 64-token warm-up runs before either tool's timings (kvscope
# bench's own warm-up repetition). Models go to $TMPDIR and are removed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
build=${KVSCOPE_BUILD:-$top/build}
kv=$build/kvscope
mk=$build/tests/util/mktiny
threads=${1:-$(nproc)}
archs=${2:-"gemma3 gemma2"}
sizes=${3:-"512 2048"}
py=${LCPP_PYTHON:?set LCPP_PYTHON to a python with llama_cpp}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

[ -x "$kv" ] || { echo "gemma: $kv not built" >&2; exit 1; }
[ -x "$mk" ] || (cd "$build" && make tests/util/mktiny >/dev/null) || { echo "gemma: cannot build mktiny" >&2; exit 1; }

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; threads $threads; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "kvscope: $("$kv" --version) ($(cd "$top" && git rev-parse --short HEAD 2>/dev/null || echo '?')); llama.cpp: llama-cpp-python $("$py" -c 'import llama_cpp; print(llama_cpp.__version__)')"
echo
printf '| arch | test | kvscope t/s | llama.cpp t/s | ratio |\n'
printf '| --- | --- | ---: | ---: | ---: |\n'
for a in $archs; do
	model=$tmp/$a.gguf
	win=512
	[ "$a" = gemma2 ] && win=4096
	"$mk" "$model" --arch "$a" --type Q4_0 --embd-type Q8_0 --layers 26 --embd 1152 --ff 6912 \
		--heads 4 --kv-heads 1 --head-dim 256 --window "$win" ||
		{ echo "gemma: cannot write a $a model" >&2; exit 1; }
	: >"$tmp/kv.txt"
	for n in $sizes; do
		"$kv" bench --model "$model" -t "$threads" -p "$n" -n 0 -r 1 --json |
			sed 's/.*"test":"\([^"]*\)","tps_median":\([0-9.]*\).*/\1 \2/' >>"$tmp/kv.txt"
		"$kv" bench --model "$model" -t "$threads" -p 0 -n 32 -d "$n" -r 1 --json |
			sed 's/.*"test":"\([^"]*\)","tps_median":\([0-9.]*\).*/\1 \2/' >>"$tmp/kv.txt"
	done
	# shellcheck disable=SC2086
	"$py" "$here/lcpp-time.py" "$model" "$threads" $sizes |
		sed 's/.*"test": "\([^"]*\)", "tps": \([0-9.]*\).*/\1 \2/' >"$tmp/lc.txt"
	while read -r test lc; do
		k=$(awk -v t="$test" '$1 == t {print $2}' "$tmp/kv.txt")
		printf '| %s | %s | %s | %s | %s |\n' "$a" "$test" "${k:-?}" "$lc" \
			"$(awk -v a="${k:-0}" -v b="$lc" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')"
	done <"$tmp/lc.txt"
done
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
