#!/bin/sh
# compare.sh: kvscope against llama.cpp on the same GGUF, same machine, same
# threads, in one run, alternating the two so drift hits both alike.
#
#   LLAMA_BENCH=/path/to/llama-bench sh bench/compare.sh [MODEL] [THREADS] [ROUNDS]
#
# llama-bench is not part of this repository: build llama.cpp yourself, out of
# tree, and point LLAMA_BENCH at its llama-bench. Each round runs both tools
# once (pp512 and tg128, 5 repetitions each); the table shows the median over
# rounds of each tool's median, the ratio kvscope / llama.cpp, and the peak
# RSS of each process (GNU time). It also measures memory bandwidth (membw)
# and states decode as a fraction of the bandwidth bound.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
build=${KVSCOPE_BUILD:-$top/build}
kv=$build/kvscope
model=${1:-${KVSCOPE_MODEL:-${XDG_DATA_HOME:-$HOME/.local/share}/kvscope/models/SmolLM2-135M-Instruct.Q4_1.gguf}}
threads=${2:-$(nproc)}
rounds=${3:-3}
lb=${LLAMA_BENCH:?set LLAMA_BENCH to a llama-bench binary}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

[ -x "$kv" ] || { echo "compare: $kv not built" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "compare: needs GNU time (apt-get install time)" >&2; exit 1; }
cc -O2 -I"$top/src" -o "$tmp/membw" "$here/membw.c" "$top/src/base/xmalloc.c" "$top/src/base/clock.c" -lpthread

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

for r in $(seq "$rounds"); do
	/usr/bin/time -f '%M' -o "$tmp/kv.rss" "$kv" bench --model "$model" -t "$threads" -p 512 -n 128 -r 5 --json >"$tmp/kv.json"
	sed 's/.*"pp512","tps_median":\([0-9.]*\).*/\1/' "$tmp/kv.json" >>"$tmp/kv.pp"
	sed 's/.*"tg128","tps_median":\([0-9.]*\).*/\1/' "$tmp/kv.json" >>"$tmp/kv.tg"
	sed 's/.*"load_ms":\([0-9.]*\).*/\1/' "$tmp/kv.json" >>"$tmp/kv.load"
	cat "$tmp/kv.rss" >>"$tmp/kv.rssall"
	/usr/bin/time -f '%M' -o "$tmp/lb.rss" "$lb" -m "$model" -t "$threads" -p 512 -n 128 -r 5 -o csv >"$tmp/lb.csv" 2>/dev/null
	# llama-bench csv: avg_ts is the mean over its repetitions
	awk -F, 'NR==1 {for (i=1;i<=NF;i++) {gsub(/"/,"",$i); c[$i]=i}} NR>1 {gsub(/"/,""); if ($c["n_prompt"]>0) print $c["avg_ts"] > "'"$tmp"'/lb.pp.one"; else print $c["avg_ts"] > "'"$tmp"'/lb.tg.one"}' "$tmp/lb.csv"
	cat "$tmp/lb.pp.one" >>"$tmp/lb.pp"
	cat "$tmp/lb.tg.one" >>"$tmp/lb.tg"
	cat "$tmp/lb.rss" >>"$tmp/lb.rssall"
done

kpp=$(median <"$tmp/kv.pp"); ktg=$(median <"$tmp/kv.tg")
lpp=$(median <"$tmp/lb.pp"); ltg=$(median <"$tmp/lb.tg")
krss=$(median <"$tmp/kv.rssall"); lrss=$(median <"$tmp/lb.rssall")
kload=$(median <"$tmp/kv.load")
bw=$("$tmp/membw" 256 "$threads" 5 | sed 's/.*: \([0-9.]*\) GB\/s.*/\1/')
# bytes of weights read per token: the tensor total from `kvscope model info`
wbytes=$("$kv" model info --model "$model" | awk '$1 == "all" { gsub(",", "", $3); print $3 }')

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; threads $threads; rounds $rounds"
echo "model: $model ($wbytes bytes)"
echo "kvscope: $("$kv" --version) ($(cd "$top" && git rev-parse --short HEAD 2>/dev/null || echo '?')); llama.cpp: $lb"
echo
printf '| test | kvscope t/s | llama.cpp t/s | ratio |\n| --- | ---: | ---: | ---: |\n'
printf '| pp512 | %.1f | %.1f | %.2fx |\n' "$kpp" "$lpp" "$(echo "$kpp / $lpp" | bc -l)"
printf '| tg128 | %.1f | %.1f | %.2fx |\n' "$ktg" "$ltg" "$(echo "$ktg / $ltg" | bc -l)"
printf '| peak RSS | %.1f MiB | %.1f MiB | %.2fx |\n' "$(echo "$krss / 1024" | bc -l)" "$(echo "$lrss / 1024" | bc -l)" "$(echo "$krss / $lrss" | bc -l)"
echo
echo "kvscope model load (mmap + validation + engine set-up): median $kload ms"
echo "memory read bandwidth: $bw GB/s; the file is $wbytes bytes, so decode is bounded by"
echo "  about $(echo "$bw * 1000000000 / $wbytes" | bc) tok/s; kvscope's tg128 is $(echo "100 * $ktg * $wbytes / ($bw * 1000000000)" | bc -l | cut -c1-5) % of that bound"
