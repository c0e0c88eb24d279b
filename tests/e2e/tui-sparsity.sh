#!/bin/sh
# tui-sparsity.sh: the sparsity pane end to end, the workbench driven inside
# tmux on the default model under --sparse quest with page 1 (every sparse
# layer and KV head then reads exactly the budget once the candidates
# outnumber it). Alt-s opens the pane before any step (it says none yet);
# after a reply it shows the last step, and its keys-touched figure is
# checked against a hand count from the step's cache length M: dense reads
# 30 layers x 3 KV heads x M key-heads, quest 3 x (2 dense layers x M + 28
# x min(M, 64)). The shadow (every 4 steps) has run: the captured mass is
# a number in [0, 1]. The attention pane marks keys not attended; the pane
# draws at 80x24 and 160x48; :sparse off says so in the pane. With
# KVSCOPE_SAVE_SCREENS=DIR the two views are saved there as text
# (doc/screens/tui-160x48-sparsity.txt and tui-80x24-sparsity.txt).
set -u
. "${KVSCOPE_SRCDIR:?}/tests/e2e/lib.sh"
need_model
sock=kvscope-sp-$$
T() { tmux -L "$sock" -f /dev/null "$@"; }
trap 'T kill-server 2>/dev/null; rm -rf "$tmp"' EXIT

if ! command -v tmux >/dev/null 2>&1; then
	echo "tui-sparsity.sh: tmux is not installed (scripts/setup.sh installs it)" >&2
	exit 1
fi
if "$bin" tui --help-probe-not-an-option 2>&1 | grep -q "workbench was not built"; then
	echo "tui-sparsity.sh: built --without-tui: nothing to drive" >&2
	exit 0
fi

WAIT_LIMIT=90
. "$KVSCOPE_SRCDIR/tests/e2e/tmux-lib.sh"

cmd() {
	T send-keys -t kv -l "$1"
	T send-keys -t kv Enter
}

mkdir -p "$tmp/state"
T new-session -d -s keep "sleep 600"
T new-session -d -s kv -x 160 -y 48 \
	"XDG_STATE_HOME='$tmp/state' TERM=xterm-256color '$bin' --temp 0 --seed 1 -n 32 --sparse quest:budget=64,page=1,sinks=4,recent=8,dense=2,shadow=4 2>'$tmp/stderr'; sleep 600"
wait_for "Retention" 60

# Alt-s: the pane, before any decode step
T send-keys -t kv M-s
wait_for "quest: no sparse decode step yet"

cmd "Tell me about lighthouses and the people who kept them, in a few sentences."
wait_for "\\[(eos|max-tokens)\\]" 180
wait_for "keys touched [0-9.]+ % \\([0-9]+ of [0-9]+ key-heads\\)"
wait_stable

# the hand count against the pane's figures (one step: its M and its keys)
line=$(screen | grep -E "quest  step [0-9]+  [0-9]+ keys  28 of 30 layers sparse" | head -1)
m=$(echo "$line" | sed -n 's/.*step [0-9]*  \([0-9]*\) keys.*/\1/p')
kt=$(screen | grep -E "keys touched" | head -1)
read_=$(echo "$kt" | sed -n 's/.*(\([0-9]*\) of [0-9]* key-heads).*/\1/p')
dense=$(echo "$kt" | sed -n 's/.*([0-9]* of \([0-9]*\) key-heads).*/\1/p')
if [ -z "$m" ] || [ -z "$read_" ] || [ -z "$dense" ]; then
	fail "the pane lacks its heading or keys line: '$line' / '$kt'"
else
	cap=$m
	[ "$cap" -gt 64 ] && cap=64
	want_dense=$((30 * 3 * m))
	want_read=$((3 * (2 * m + 28 * cap)))
	[ "$dense" -eq "$want_dense" ] || fail "dense key-heads $dense, by hand 30 x 3 x $m = $want_dense"
	[ "$read_" -eq "$want_read" ] ||
		fail "quest read $read_ key-heads, by hand 3 x (2 x $m + 28 x $cap) = $want_read"
	pct=$(echo "$kt" | sed -n 's/.*keys touched \([0-9.]*\) %.*/\1/p')
	want_pct=$(awk -v r="$want_read" -v d="$want_dense" 'BEGIN { printf "%.1f", 100 * r / d }')
	[ "$pct" = "$want_pct" ] || fail "keys touched $pct %, by hand $want_pct %"
fi
# the shadow ran (every 4 steps): a captured mass in [0, 1]
mass=$(screen | sed -n 's/.*mass (step [0-9]*) mean \([0-9.]*\) .*/\1/p' | head -1)
[ -n "$mass" ] && awk -v x="$mass" 'BEGIN { exit !(x >= 0 && x <= 1) }' ||
	fail "no captured mass in [0, 1] on the pane: '$mass'"
screen | grep -Eq "(│|\|)L29 " || fail "160x48: no row for layer 29"
save tui-160x48-sparsity

# the attention pane marks keys left out
T send-keys -t kv M-3
wait_for "×=not attended"

# 80x24: tabbed, the same pane
T resize-window -t kv -x 80 -y 24
T send-keys -t kv M-s
wait_for "keys touched [0-9.]+ %"
wait_for "L0"
save tui-80x24-sparsity
T resize-window -t kv -x 160 -y 48

# off: the pane says so
cmd ":sparse off"
wait_for "sparse attention is off"

[ "$fails" -eq 0 ] || exit 1
