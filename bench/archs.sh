#!/bin/sh
# archs.sh: kvscope against llama.cpp on ~1B-shaped random-weight models of
# the newer architectures, same machine, same threads, the two tools one
# after the other for each model.
#
#   LCPP_PYTHON=/path/to/python sh bench/archs.sh [THREADS] [ARCHS] [SIZES]
#
# ARCHS defaults to "gemma3 gemma2 llama qwen3 phi3", SIZES to "512 2048".
# Every model has Q4_0 matrices, a Q8_0 embedding and the test generator's
# ~270-token vocabulary instead of the real one (so the LM head is left out
# of both tools' work alike). Shapes: gemma3 and gemma2 Gemma-3-1B's layers
# (26 layers, n_embd 1152, n_ff 6912, 4 query heads over 1 KV head of 256),
# gemma3 with a window of 512 (every 6th layer global), gemma2 with its
# default pattern (every 2nd layer global) and window 4096; llama
# Llama-3.2-1B's (16 layers, 2048, 8192, 32 heads over 8 of 64); qwen3
# Qwen3-0.6B's (28 layers, 1024, 3072, 16 heads over 8 of 128, Q/K norms);
# phi3 8 of Phi-4-mini's 32 layers (3072, 8192, 24 heads over 8 of 128,
# fused QKV and gate/up: ~0.9 G weights). For each size
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
archs=${2:-"gemma3 gemma2 llama qwen3 phi3"}
sizes=${3:-"512 2048"}
py=${LCPP_PYTHON:?set LCPP_PYTHON to a python with llama_cpp}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

[ -x "$kv" ] || { echo "archs: $kv not built" >&2; exit 1; }
[ -x "$mk" ] || (cd "$build" && make tests/util/mktiny >/dev/null) || { echo "archs: cannot build mktiny" >&2; exit 1; }

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; threads $threads; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "kvscope: $("$kv" --version) ($(cd "$top" && git rev-parse --short HEAD 2>/dev/null || echo '?')); llama.cpp: llama-cpp-python $("$py" -c 'import llama_cpp; print(llama_cpp.__version__)')"
echo
printf '| arch | test | kvscope t/s | llama.cpp t/s | ratio |\n'
printf '| --- | --- | ---: | ---: | ---: |\n'
for a in $archs; do
	model=$tmp/$a.gguf
	case $a in
	gemma3) shape="--layers 26 --embd 1152 --ff 6912 --heads 4 --kv-heads 1 --head-dim 256 --window 512" ;;
	gemma2) shape="--layers 26 --embd 1152 --ff 6912 --heads 4 --kv-heads 1 --head-dim 256 --window 4096" ;;
	llama) shape="--layers 16 --embd 2048 --ff 8192 --heads 32 --kv-heads 8 --head-dim 64" ;;
	qwen3) shape="--layers 28 --embd 1024 --ff 3072 --heads 16 --kv-heads 8 --head-dim 128" ;;
	phi3) shape="--layers 8 --embd 3072 --ff 8192 --heads 24 --kv-heads 8 --head-dim 128" ;;
	*) echo "archs: no shape for $a (gemma3, gemma2, llama, qwen3, phi3)" >&2; exit 1 ;;
	esac
	# shellcheck disable=SC2086
	"$mk" "$model" --arch "$a" --type Q4_0 --embd-type Q8_0 $shape ||
		{ echo "archs: cannot write a $a model" >&2; exit 1; }
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
