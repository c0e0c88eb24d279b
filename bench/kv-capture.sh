#!/bin/sh
# bench/kv-capture.sh: what KV-cache introspection costs at decode time.
#
#   sh bench/kv-capture.sh KVSCOPE [RUNS] [TOKENS]
#
# Generates TOKENS tokens greedily from the same prompt RUNS times in each
# mode, alternating the modes run by run, and prints the median decode
# tokens/s of each and its ratio to "off": policy full without capture (the
# plain engine path through the KV cache), the same with a trace of per-head
# summaries at every step (--trace) and at most every 33 ms (the workbench's
# capture budget), with full attention rows at every step (--trace-attn) and
# every 33 ms, and SirLLM (per-token surprisal and entropy for its scores)
# without capture. One thread: the ratios are what matter on a noisy machine.
set -eu
bin=${1:?usage: kv-capture.sh KVSCOPE [RUNS] [TOKENS]}
runs=${2:-5}
n=${3:-256}
tmp=${TMPDIR:-/tmp}/kvscope-capture.$$
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
prompt="Write a long story about a lighthouse keeper who finds a message in a bottle."
echo "command: sh bench/kv-capture.sh $bin $runs $n"
echo "machine: $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cpus"

# decode tok/s of one run of mode $1
one() {
	case $1 in
	off) set -- ;;
	summary) set -- --trace "$tmp/t.jsonl" ;;
	summary33) set -- --trace "$tmp/t.jsonl" --trace-every 33 ;;
	attn) set -- --trace "$tmp/t.jsonl" --trace-attn ;;
	attn33) set -- --trace "$tmp/t.jsonl" --trace-attn --trace-every 33 ;;
	sirllm) set -- --policy sirllm ;;
	esac
	"$bin" generate --temp 0 -n "$n" --ctx 1024 -t 1 -p "$prompt" "$@" 2>&1 >/dev/null |
		sed -n 's/.*generated [0-9]* tokens in [0-9]* ms (\([0-9.]*\) tok\/s).*/\1/p'
}

for r in $(seq "$runs"); do
	for m in off summary summary33 attn attn33 sirllm; do
		one $m >>"$tmp/$m"
	done
done
base=$(sort -n "$tmp/off" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
for m in off summary summary33 attn attn33 sirllm; do
	med=$(sort -n "$tmp/$m" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
	printf '%-9s decode %6.1f tok/s, %.3f of off (median of %s: %s)\n' "$m" "$med" \
		"$(echo "$med $base" | awk '{print $1 / $2}')" "$runs" "$(tr '\n' ' ' <"$tmp/$m")"
done
