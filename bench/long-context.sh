#!/bin/sh
# long-context.sh: prefill and decode speed with a long prompt already in the
# cache, kvscope against llama.cpp's llama-cli, same GGUF, same threads, in
# one run, alternating the two.
#
#   LLAMA_CLI=/path/to/llama-cli sh bench/long-context.sh [BYTES] [THREADS] [ROUNDS]
#
# The prompt is the first BYTES bytes (default 6000, about 1,440 tokens) of
# tests/fixtures/text/genesis-1-11.txt, fed raw; each tool then generates 128
# tokens greedily (this text's continuation does not reach end of text;
# llama-cli is told to ignore it). llama-cli's own timing lines and
# kvscope generate's stats line give the tokens/s; the table shows the median
# over rounds and the ratio. llama.cpp is not part of this repository: build
# it yourself, out of tree.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
kv=${KVSCOPE_BUILD:-$top/build}/kvscope
model=${KVSCOPE_MODEL:-${XDG_DATA_HOME:-$HOME/.local/share}/kvscope/models/SmolLM2-135M-Instruct.Q4_1.gguf}
bytes=${1:-6000}
threads=${2:-$(nproc)}
rounds=${3:-3}
cli=${LLAMA_CLI:?set LLAMA_CLI to a llama-cli binary}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
head -c "$bytes" "$top/tests/fixtures/text/genesis-1-11.txt" >"$tmp/prompt.txt"

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

for r in $(seq "$rounds"); do
	"$kv" generate --model "$model" --raw --prompt-file "$tmp/prompt.txt" -n 128 --temp 0 \
		-c 4096 -t "$threads" 2>"$tmp/kv.err" >/dev/null
	grep -q 'generated 128 tokens' "$tmp/kv.err" || { echo "long-context: kvscope stopped early" >&2; cat "$tmp/kv.err" >&2; exit 1; }
	sed -n 's/.*prompt \([0-9]*\) tokens in [0-9]* ms (\([0-9.]*\) tok\/s); generated [0-9]* tokens in [0-9]* ms (\([0-9.]*\) tok\/s).*/\1 \2 \3/p' \
		"$tmp/kv.err" >"$tmp/kv.one"
	read -r ntok pp tg <"$tmp/kv.one"
	echo "$pp" >>"$tmp/kv.pp"
	echo "$tg" >>"$tmp/kv.tg"
	"$cli" -m "$model" -f "$tmp/prompt.txt" -n 128 --temp 0 -c 4096 -t "$threads" \
		--ignore-eos -no-cnv </dev/null >/dev/null 2>"$tmp/lc.err"
	sed -n 's/.*prompt eval time.*, *\([0-9.]*\) tokens per second.*/\1/p' "$tmp/lc.err" >>"$tmp/lc.pp"
	sed -n 's/.* eval time.*runs.*, *\([0-9.]*\) tokens per second.*/\1/p' "$tmp/lc.err" >>"$tmp/lc.tg"
done

kpp=$(median <"$tmp/kv.pp")
ktg=$(median <"$tmp/kv.tg")
lpp=$(median <"$tmp/lc.pp")
ltg=$(median <"$tmp/lc.tg")
echo "command: sh bench/long-context.sh $bytes $threads $rounds"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cpus; $threads thread(s)"
echo "prompt: $ntok tokens; medians of $rounds rounds"
echo "| | kvscope | llama.cpp | ratio |"
echo "|---|---|---|---|"
awk -v a="$kpp" -v b="$lpp" 'BEGIN {printf "| prefill %s tokens, tok/s | %.1f | %.1f | %.2fx |\n", "'"$ntok"'", a, b, a / b}'
awk -v a="$ktg" -v b="$ltg" 'BEGIN {printf "| decode 128 after them, tok/s | %.1f | %.1f | %.2fx |\n", a, b, a / b}'
