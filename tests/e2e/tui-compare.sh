#!/bin/sh
# tui-compare.sh: :compare end to end, the workbench driven inside tmux on
# the default model. Before any exchange :compare says there is nothing to
# replay; after two exchanges under window 96, :compare streaming 64
# replays them in a shadow session and the pane shows, side by side at
# 160x48 and stacked at 80x24, what each side kept and the replies. What
# the screen shows is checked against an independent run: kvscope run of
# a script that chats the same two messages in its own session under
# streaming 64 (the same sampler) must give the same kept count and the
# same reply text; so must :compare under the session's own policy and
# budget, also after it followed a new exchange. Bad input gets one status
# line, a second :compare is refused while one is on, :compare off ends it. With
# KVSCOPE_SAVE_SCREENS=DIR the two views are saved there as text
# (doc/screens/tui-160x48-compare.txt and tui-80x24-compare.txt).
set -u
. "${KVSCOPE_SRCDIR:?}/tests/e2e/lib.sh"
need_model
sock=kvscope-cmp-$$
T() { tmux -L "$sock" -f /dev/null "$@"; }
trap 'T kill-server 2>/dev/null; rm -rf "$tmp"' EXIT

if ! command -v tmux >/dev/null 2>&1; then
	echo "tui-compare.sh: tmux is not installed (scripts/setup.sh installs it)" >&2
	exit 1
fi
if "$bin" tui --help-probe-not-an-option 2>&1 | grep -q "workbench was not built"; then
	echo "tui-compare.sh: built --without-tui: nothing to drive" >&2
	exit 0
fi

WAIT_LIMIT=90
. "$KVSCOPE_SRCDIR/tests/e2e/tmux-lib.sh"

# cmd TEXT: type a line and send it.
cmd() {
	T send-keys -t kv -l "$1"
	T send-keys -t kv Enter
}

q1="My name is Marguerite and I keep a lighthouse."
q2="What is my name?"
mkdir -p "$tmp/state"
T new-session -d -s keep "sleep 600"
T new-session -d -s kv -x 160 -y 48 \
	"XDG_STATE_HOME='$tmp/state' TERM=xterm-256color '$bin' --temp 0 --seed 1 -n 24 --policy window --kv-budget 96 2>'$tmp/stderr'; sleep 600"
wait_for "Retention" 60

# nothing to replay yet
cmd ":compare streaming 64"
wait_for "no conversation yet: expected at least one exchange"

cmd "$q1"
wait_for "\\[(eos|max-tokens)\\]" 120
cmd "$q2"
wait_for "you> What is my name\\?"
end=$(($(date +%s) + 120))
while [ "$(screen | grep -Ec '\[(eos|max-tokens)\]')" -lt 2 ] && [ "$(date +%s)" -le "$end" ]; do
	sleep 0.2
done

# bad input: one status line each, nothing starts
cmd ":compare nosuchpolicy"
wait_for "nosuchpolicy"
cmd ":compare streaming 12x"
wait_for "budget '12x': expected a whole number of tokens"

# ref POLICY BUDGET MSG...: the independent run, its own session (no
# shadow, no workbench) under POLICY and BUDGET chatting MSG... with the
# workbench's sampler; writes "kept N" and "reply I TEXT" lines to
# $tmp/ref.out
ref() {
	pol=$1 bud=$2
	shift 2
	{
		echo 'local kvscope = require "kvscope"'
		echo "local s = kvscope.session{ policy = \"$pol\", budget = $bud, temp = 0, seed = 1, max_tokens = 24 }"
		echo "local r = {}"
		for m in "$@"; do echo "r[#r + 1] = s:chat(\"$m\")"; done
		echo 'print("kept " .. s:stats().n_cached)'
		printf '%s\n' 'for i, t in ipairs(r) do print("reply " .. i .. " " .. t:gsub("\n", " ")) end'
	} >"$tmp/ref.lua"
	"$bin" run "$tmp/ref.lua" >"$tmp/ref.out" 2>"$tmp/ref.err" || fail "kvscope run: $(cat "$tmp/ref.err")"
}

# check_b POLICY BUDGET: side B on the screen against ref's run: the same
# kept count, and the reply the pane shows has the reference's text
check_b() {
	kept_b=$(screen | sed -n "s/.*B $1.*budget $2: kept \([0-9]*\) (shadow).*/\1/p" | head -1)
	shown=$(screen | sed -n 's/.*reply \([0-9]*\) ([0-9]* tokens.*/\1/p' | tail -1)
	ref_kept=$(sed -n 's/^kept //p' "$tmp/ref.out")
	[ -n "$kept_b" ] && [ "$kept_b" = "$ref_kept" ] ||
		fail "B $1 $2 keeps '$kept_b' tokens, its own session under $1 $2 keeps '$ref_kept'"
	if [ -n "$shown" ]; then
		# the reply's first words (one row of the column), the parting mark removed
		want=$(sed -n "s/^reply $shown //p" "$tmp/ref.out" | cut -c1-24)
		[ -n "$want" ] || fail "no reference reply $shown: $(cat "$tmp/ref.out")"
		mark=$(printf '\342\226\214')
		screen | sed "s/$mark//g" | grep -F -- "$want" >/dev/null ||
			fail "$1 $2, reply $shown: the screen lacks the reference text '$want'"
	else
		fail "$1 $2: no reply shown in the pane"
	fi
}

# the comparison, side by side at 160x48
cmd ":compare streaming 64"
wait_for "replies (part at exchange [0-9]+, token [0-9]+|identical over 2 exchanges)" 180
wait_for "B streaming.*budget 64: kept [0-9]+ \\(shadow\\)"
screen | grep -E "A window.*\\(this session\\).*B streaming" >/dev/null ||
	fail "160x48: the two sides are not side by side"
save tui-160x48-compare
ref streaming 64 "$q1" "$q2"
check_b streaming 64

# a second one while it is on
cmd ":compare h2o"
wait_for "is on: expected :compare off first"

# stacked at 80x24
T resize-window -t kv -x 80 -y 24
wait_for "B streaming"
screen | grep -E "A window.*B streaming" >/dev/null && fail "80x24: the sides are not stacked"
wait_for "kept A [0-9]+ \\| B $kept_b"
save tui-80x24-compare
T resize-window -t kv -x 160 -y 48

# off; then the session's own policy and budget (B against its own run:
# the workbench's session captures attention for its panes, which may
# round differently, so A is not the reference); a new exchange is followed
cmd ":compare off"
wait_for "comparison off"
cmd ":compare window 96"
wait_for "B window.*budget 96: kept"
wait_for "replies (part at exchange [0-9]+, token [0-9]+|identical over 2 exchanges)" 180
ref window 96 "$q1" "$q2"
check_b window 96
cmd "Thank you."
wait_for "^│  3 " 180
ref window 96 "$q1" "$q2" "Thank you."
check_b window 96
cmd ":compare off"
wait_for "comparison off"

[ "$fails" -eq 0 ] || exit 1
