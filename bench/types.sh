#!/bin/sh
# types.sh: kvscope against llama.cpp for every weight type the CPU backend
# reads, on generated random-weight models of one shape (the weights do not
# change the work; the file does not need to exist anywhere), same machine,
# same threads, the two tools alternating within each round.
#
#   LLAMA_BENCH=/path/to/llama-bench sh bench/types.sh [THREADS] [ROUNDS] [TYPES]
#
# TYPES defaults to "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K F16 BF16 F32".
# The shape (16 layers, n_embd 1024, n_ff 2816, 16 heads, 4 KV heads, a
# vocabulary of ~270 tokens; about 180 M weights in the layers) has rows of
# whole k-quant blocks; token_embd is Q8_0. Each round runs pp128 and tg32
# (3 repetitions) in each tool; the table shows the medians over rounds and
# the ratio kvscope / llama.cpp. llama-bench is not part of this repository:
# build llama.cpp yourself, out of tree. Models go to $TMPDIR and are removed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
build=${KVSCOPE_BUILD:-$top/build}
kv=$build/kvscope
mk=$build/tests/util/mktiny
threads=${1:-$(nproc)}
rounds=${2:-3}
types=${3:-"Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K F16 BF16 F32"}
lb=${LLAMA_BENCH:?set LLAMA_BENCH to a llama-bench binary}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

[ -x "$kv" ] || { echo "types: $kv not built" >&2; exit 1; }
[ -x "$mk" ] || (cd "$build" && make tests/util/mktiny >/dev/null) || { echo "types: cannot build mktiny" >&2; exit 1; }

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; threads $threads; rounds $rounds"
echo "kvscope: $("$kv" --version) ($(cd "$top" && git rev-parse --short HEAD 2>/dev/null || echo '?')); llama.cpp: $lb"
echo
printf '| type | file MiB | kvscope pp128 | llama.cpp pp128 | ratio | kvscope tg32 | llama.cpp tg32 | ratio |\n'
printf '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n'
for t in $types; do
	model=$tmp/$t.gguf
	"$mk" "$model" --type "$t" --layers 16 --embd 1024 --ff 2816 --heads 16 --kv-heads 4 \
		--embd-type Q8_0 || { echo "types: cannot write a $t model" >&2; exit 1; }
	rm -f "$tmp"/kv.pp "$tmp"/kv.tg "$tmp"/lb.pp "$tmp"/lb.tg
	for r in $(seq "$rounds"); do
		"$kv" bench --model "$model" -t "$threads" -p 128 -n 32 -r 3 --json >"$tmp/kv.json"
		sed 's/.*"pp128","tps_median":\([0-9.]*\).*/\1/' "$tmp/kv.json" >>"$tmp/kv.pp"
		sed 's/.*"tg32","tps_median":\([0-9.]*\).*/\1/' "$tmp/kv.json" >>"$tmp/kv.tg"
		"$lb" -m "$model" -t "$threads" -p 128 -n 32 -r 3 -o csv >"$tmp/lb.csv" 2>/dev/null
		awk -F, 'NR==1 {for (i=1;i<=NF;i++) {gsub(/"/,"",$i); c[$i]=i}} NR>1 {gsub(/"/,""); if ($c["n_prompt"]>0) print $c["avg_ts"] >> "'"$tmp"'/lb.pp"; else print $c["avg_ts"] >> "'"$tmp"'/lb.tg"}' "$tmp/lb.csv"
	done
	kpp=$(median <"$tmp/kv.pp"); ktg=$(median <"$tmp/kv.tg")
	lpp=$(median <"$tmp/lb.pp"); ltg=$(median <"$tmp/lb.tg")
	mib=$(echo "$(stat -c %s "$model") / 1048576" | bc -l)
	printf '| %s | %.0f | %.1f | %.1f | %.2fx | %.1f | %.1f | %.2fx |\n' "$t" "$mib" "$kpp" "$lpp" \
		"$(echo "$kpp / $lpp" | bc -l)" "$ktg" "$ltg" "$(echo "$ktg / $ltg" | bc -l)"
	rm -f "$model"
done
