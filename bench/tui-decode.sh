#!/bin/sh
# tui-decode.sh: what the workbench costs the decoder. The same prompt,
# greedy, N tokens, decoded three ways:
#   generate        `kvscope generate` (no UI, no capture, no token statistics)
#   generate+stats  the same with --token-stats on: the per-token surprisal
#                   and entropy the workbench asks the engine for (its tint)
#   tui             the workbench in a detached tmux pane (attention capture
#                   FULL at the UI's 33 ms interval, token statistics, the
#                   redraws) with --bench-exit, which prints the reply's
#                   decode tok/s after the terminal is restored
# Runs alternate so that load on a shared machine hits all alike; medians
# and ratios are printed: tui / generate is the whole cost, tui /
# generate+stats the part that is the UI itself (capture, events, drawing).
#
# usage: bench/tui-decode.sh [KVSCOPE_BIN] [REPS] [TOKENS] [THREADS]
# (THREADS: -t for all three; default: kvscope's, all cores)
set -u
bin=${1:-${KVSCOPE_BIN:-./kvscope}}
reps=${2:-7}
ntok=${3:-128}
thr=${4:+-t $4}
prompt="Write a long story about a dragon who learns to read."
tmp=$(mktemp -d)
sock=kvscope-bench-$$
trap 'tmux -L "$sock" kill-server 2>/dev/null; rm -rf "$tmp"' EXIT

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "command: $0 $bin $reps $ntok ${4:-}"
echo "machine: $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "commit:  $(git -C "$(dirname "$0")/.." rev-parse --short HEAD 2>/dev/null || echo '?')"
i=0
while [ $i -lt "$reps" ]; do
	# shellcheck disable=SC2086
	"$bin" generate --prompt "$prompt" --temp 0 -n "$ntok" --policy full $thr 2>"$tmp/gen.err" >/dev/null
	sed -n 's/.*generated [0-9]* tokens in [0-9.]* ms (\([0-9.]*\) tok\/s).*/\1/p' "$tmp/gen.err" >>"$tmp/gen"
	# shellcheck disable=SC2086
	"$bin" generate --prompt "$prompt" --temp 0 -n "$ntok" --policy full $thr --token-stats on \
		2>"$tmp/gen.err" >/dev/null
	sed -n 's/.*generated [0-9]* tokens in [0-9.]* ms (\([0-9.]*\) tok\/s).*/\1/p' "$tmp/gen.err" >>"$tmp/stats"
	rm -f "$tmp/tui.out"
	tmux -L "$sock" -f /dev/null new-session -d -x 200 -y 50 \
		"TERM=xterm-256color '$bin' tui --prompt '$prompt' --temp 0 -n $ntok --policy full $thr --bench-exit >'$tmp/tui.part' 2>&1; mv '$tmp/tui.part' '$tmp/tui.out'"
	t=0
	while [ ! -f "$tmp/tui.out" ] && [ $t -lt 1200 ]; do
		sleep 0.1
		t=$((t + 1))
	done
	sed -n 's/^decode \([0-9.]*\) tok\/s.*/\1/p' "$tmp/tui.out" >>"$tmp/tui"
	sed -n 's/^ui: \([0-9]*\) frames, \([0-9.]*\) ms drawing.*/\1 \2/p' "$tmp/tui.out" >>"$tmp/ui"
	i=$((i + 1))
done
g=$(median <"$tmp/gen")
st=$(median <"$tmp/stats")
u=$(median <"$tmp/tui")
echo "generate       decode tok/s: $(tr '\n' ' ' <"$tmp/gen")-> median $g"
echo "generate+stats decode tok/s: $(tr '\n' ' ' <"$tmp/stats")-> median $st"
echo "tui            decode tok/s: $(tr '\n' ' ' <"$tmp/tui")-> median $u"
awk '{ f += $1; ms += $2 } END { if (NR) printf "tui frames per run %.1f, drawing %.1f ms per run\n", f / NR, ms / NR }' "$tmp/ui"
awk -v g="$g" -v s="$st" -v u="$u" 'BEGIN {
	printf "tui / generate       = %.3f (whole cost %.1f %%)\n", u / g, (1 - u / g) * 100
	printf "stats / generate     = %.3f (token statistics %.1f %%)\n", s / g, (1 - s / g) * 100
	printf "tui / generate+stats = %.3f (UI itself %.1f %%)\n", u / s, (1 - u / s) * 100 }'
