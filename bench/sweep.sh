#!/bin/sh
# sweep.sh: kvscope against llama.cpp (and optionally ik_llama.cpp) over
# prompt lengths and decode depths, per kernel level, on the same GGUF, same
# machine, same threads, in one run, alternating the tools within each round
# so that drift and the load of other processes hit all of them alike.
#
#   LLAMA_BENCH=/path/to/llama-bench [LLAMA_BATCHED_BENCH=...] \
#   [IK_LLAMA_BENCH=...] [LLAMA_BENCH_AVX512=...] [IK_LLAMA_BENCH_AVX512=...] \
#   sh bench/sweep.sh [MODEL] [THREADS] [ROUNDS]
#
# Tests: prefill of 512, 2048 and 8192 tokens into an empty cache (ppN) and
# decode of 128 tokens with 0, 2048 and 8192 tokens already cached
# (tg128@dD); PP="..." and DEPTHS="..." override the lists. Each level the
# CPU has runs (avx2, and avx512 where the CPU has AVX-512 VNNI; LEVELS="..."
# overrides): kvscope with --isa LEVEL against the peers built for that level
# (LLAMA_BENCH for avx2, LLAMA_BENCH_AVX512 for avx512; a level without a
# peer binary shows kvscope alone). The peers are not part of this
# repository: build them out of tree.
#
# How each number is taken:
#  - kvscope: `kvscope bench` (median of REPS runs after a warm-up; -d D for
#    a depth, the depth prefilled once, untimed).
#  - llama.cpp: llama-bench -p N / -n 128 (avg_ts over REPS runs). Its older
#    releases have no depth option; for tg128@dD the sweep takes S_TG from
#    LLAMA_BATCHED_BENCH (llama-batched-bench -npp D -ntg 128 -npl 1: the
#    decode time after a D-token prefill, one run per round) when it is set,
#    else derives it from llama-bench -pg D,128 as 128 / (t(pp D + tg 128) -
#    t(pp D)), with t(pp D) from the ppD test of the same round (noisier).
#  - ik_llama.cpp: llama-bench -p N / -n 128 / -gp D,128 (its tg at depth).
# Every cell is the median over ROUNDS rounds; the ratio is kvscope / peer.
# PEER_ARGS="..." passes extra options to every llama-bench (e.g. -fa 1).
# KVSCOPE_BASE=/path/to/an/older/kvscope adds a "before" column measured in
# the same rounds (tests of at most BASE_MAX tokens, default 2176: an old
# build may take hours over 8k tokens).
# The load average before and after is printed: on a shared machine quote
# medians and say what else was running.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
build=${KVSCOPE_BUILD:-$top/build}
kv=$build/kvscope
model=${1:-${KVSCOPE_MODEL:-${XDG_DATA_HOME:-$HOME/.local/share}/kvscope/models/SmolLM2-135M-Instruct.Q4_1.gguf}}
threads=${2:-$(nproc)}
rounds=${3:-3}
reps=${REPS:-3}
long_reps=${LONG_REPS:-1}   # runs of the tests that feed 8192 tokens or more
pps=${PP:-512 2048 8192}
depths=${DEPTHS:-0 2048 8192}
peer_args=${PEER_ARGS:-}
base=${KVSCOPE_BASE:-}
base_max=${BASE_MAX:-2176}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

[ -x "$kv" ] || { echo "sweep: $kv not built" >&2; exit 1; }
[ -f "$model" ] || { echo "sweep: no model $model" >&2; exit 1; }
cc -O2 -I"$top/src" -o "$tmp/membw" "$here/membw.c" "$top/src/base/xmalloc.c" "$top/src/base/clock.c" -lpthread

flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { case " $flags " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if [ -z "${LEVELS:-}" ]; then
	LEVELS=""
	has avx2 && has fma && LEVELS="avx2"
	has avx512f && has avx512bw && has avx512vl && has avx512_vnni && LEVELS="$LEVELS avx512"
fi

median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
nreps() { if [ "$1" -ge 8192 ]; then echo "$long_reps"; else echo "$reps"; fi; }
# llama-bench csv on stdin: avg_ts of the row with n_prompt $1, n_gen $2.
# Data rows quote every field and some fields hold commas (ik_llama.cpp's
# "-1,0"), so a row is split on '","', not on every comma.
lb_ts() {
	awk -v p="$1" -v g="$2" 'NR==1 {n=split($0, h, ","); for (i=1;i<=n;i++) {gsub(/"/,"",h[i]); c[h[i]]=i}}
	     NR>1 {r=$0; sub(/^"/,"",r); sub(/"$/,"",r); split(r, f, /","/)
	           if (f[c["n_prompt"]]==p && f[c["n_gen"]]==g) print f[c["avg_ts"]]}'
}
# append a number (or nan) to a result file
put() { echo "${2:-nan}" >>"$tmp/$1"; }

# kvscope: one test, tokens/s on stdout
kv_run() { # binary level pp n depth
	out=$("$1" bench --model "$model" -t "$threads" --isa "$2" -p "$3" -n "$4" -d "$5" \
		-r "$(nreps $(( $3 + $4 + $5 )))" --json 2>/dev/null) || { echo nan; return; }
	echo "$out" | sed 's/.*"tps_median":\([0-9.]*\).*/\1/'
}

# llama.cpp's llama-bench (csv on stdout)
lb_run() { # binary args...
	b=$1
	shift
	# shellcheck disable=SC2086
	"$b" -m "$model" -t "$threads" $peer_args "$@" -o csv 2>/dev/null || true
}

echo "sweep: $(date -u '+%Y-%m-%d %H:%M UTC'); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$rounds"); do
	for lv in $LEVELS; do
		case $lv in
		avx512) lb=${LLAMA_BENCH_AVX512:-}; ik=${IK_LLAMA_BENCH_AVX512:-}; bb=${LLAMA_BATCHED_BENCH_AVX512:-} ;;
		*) lb=${LLAMA_BENCH:-}; ik=${IK_LLAMA_BENCH:-}; bb=${LLAMA_BATCHED_BENCH:-} ;;
		esac
		for p in $pps; do
			put "$lv.kv.pp$p" "$(kv_run "$kv" "$lv" "$p" 0 0)"
			[ -n "$base" ] && [ "$p" -le "$base_max" ] && put "$lv.base.pp$p" "$(kv_run "$base" "$lv" "$p" 0 0)"
			[ -n "$lb" ] && put "$lv.lb.pp$p" "$(lb_run "$lb" -p "$p" -n 0 -r "$(nreps "$p")" | lb_ts "$p" 0)"
			[ -n "$ik" ] && put "$lv.ik.pp$p" "$(lb_run "$ik" -p "$p" -n 0 -r "$(nreps "$p")" | lb_ts "$p" 0)"
		done
		for d in $depths; do
			put "$lv.kv.tg$d" "$(kv_run "$kv" "$lv" 0 128 "$d")"
			[ -n "$base" ] && [ $((d + 128)) -le "$base_max" ] && put "$lv.base.tg$d" "$(kv_run "$base" "$lv" 0 128 "$d")"
			if [ -n "$lb" ]; then
				if [ "$d" = 0 ]; then
					put "$lv.lb.tg$d" "$(lb_run "$lb" -p 0 -n 128 -r "$reps" | lb_ts 0 128)"
				elif [ -n "$bb" ]; then
					v=$("$bb" -m "$model" -t "$threads" -c $((d + 128)) -b 2048 -ub 512 \
						-npp "$d" -ntg 128 -npl 1 --output-format jsonl 2>/dev/null |
						sed -n 's/.*"speed_tg": *\([0-9.]*\).*/\1/p' | head -1)
					put "$lv.lb.tg$d" "$v"
				else
					pg=$(lb_run "$lb" -pg "$d,128" -r "$(nreps "$d")" | lb_ts "$d" 128)
					ppd=$(tail -1 "$tmp/$lv.lb.pp$d" 2>/dev/null || echo nan)
					v=$(awk -v pg="$pg" -v pp="$ppd" -v d="$d" 'BEGIN {
						if (pg == "" || pp == "" || pg == "nan" || pp == "nan") { print "nan"; exit }
						t = (d + 128) / pg - d / pp; print (t > 0 ? 128 / t : "nan") }')
					put "$lv.lb.tg$d" "$v"
				fi
			fi
			if [ -n "$ik" ]; then
				if [ "$d" = 0 ]; then
					put "$lv.ik.tg$d" "$(lb_run "$ik" -p 0 -n 128 -r "$reps" | lb_ts 0 128)"
				else
					put "$lv.ik.tg$d" "$(lb_run "$ik" -p 0 -n 0 -gp "$d,128" -r "$(nreps "$d")" | lb_ts "$d" 128)"
				fi
			fi
		done
	done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

bw=$("$tmp/membw" 256 "$threads" 5 | sed 's/.*: \([0-9.]*\) GB\/s.*/\1/')
wbytes=$("$kv" model info --model "$model" | awk '$1 == "all" { gsub(",", "", $3); print $3 }')

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
isa="scalar"
has avx2 && isa="AVX2"
has avx512f && isa="$isa, AVX-512"
has avx512_vnni && isa="$isa VNNI"
echo "machine: $cpu, $(nproc) cores ($isa); threads $threads; rounds $rounds; reps $reps (8k: $long_reps)"
echo "model: $model ($wbytes bytes)"
echo "kvscope: $("$kv" --version) ($(cd "$top" && git rev-parse --short HEAD 2>/dev/null || echo '?'))"
[ -n "$base" ] && echo "kvscope before: $base ($("$base" --version))"
echo "llama.cpp: ${LLAMA_BENCH:-none}${LLAMA_BATCHED_BENCH:+ (depth: $LLAMA_BATCHED_BENCH)}; ik_llama.cpp: ${IK_LLAMA_BENCH:-none}"
[ -n "$peer_args" ] && echo "peer options: $peer_args"
echo "load average after: $load_after"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b == 0) print "-"; else printf "%.2fx", a / b }'; }
cell() { if [ -f "$tmp/$1" ]; then median <"$tmp/$1"; else echo nan; fi; }
fmt() { awk -v a="$1" 'BEGIN { if (a == "nan") print "-"; else printf "%.1f", a }'; }
for lv in $LEVELS; do
	echo
	echo "level $lv (medians over $rounds rounds):"
	printf '| test | kvscope t/s | before t/s | llama.cpp t/s | ratio | ik_llama.cpp t/s | ratio |\n'
	printf '| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n'
	for t in $(for p in $pps; do echo "pp$p"; done) $(for d in $depths; do echo "tg$d"; done); do
		k=$(cell "$lv.kv.$t"); l=$(cell "$lv.lb.$t"); i=$(cell "$lv.ik.$t"); o=$(cell "$lv.base.$t")
		name=$t
		case $t in tg0) name="tg128" ;; tg*) name="tg128@d${t#tg}" ;; esac
		printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$(fmt "$k")" "$(fmt "$o")" "$(fmt "$l")" \
			"$(ratio "$k" "$l")" "$(fmt "$i")" "$(ratio "$k" "$i")"
	done
	k0=$(cell "$lv.kv.tg0")
	if [ "$k0" != nan ]; then
		echo
		echo "memory read bandwidth: $bw GB/s; decode reads the $wbytes-byte file per token, a bound of"
		echo "  about $(echo "$bw * 1000000000 / $wbytes" | bc) tok/s; kvscope's tg128 ($lv) is" \
			"$(echo "100 * $k0 * $wbytes / ($bw * 1000000000)" | bc -l | cut -c1-5) % of it"
	fi
done
