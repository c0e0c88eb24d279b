#!/bin/sh
# tui-cold.sh: the workbench's cold tier end to end, driven inside tmux on
# the default model. The workbench starts with --cold on and no --db, under
# streaming at a 64-token budget: the status line says the cold tier is a
# temporary database. Turn 1 states a fact ("My secret code word is
# TIGER-42."); a plugin written here then sends FILLER unrelated turns, one
# after each reply (kvscope.send from the turn_end hook), and then the
# question. By then the fact was evicted long ago (64 tokens hold about two
# exchanges); the question recalls it: the KV pane counts a "recalled"
# region, and :find TIGER-42 selects the fact's first token in the
# retention strip, whose details say "recalled from turn T, summary score
# S, BM25 B" with T the fact's turn (or the one before, when the block
# began there) and B > 0 (its words matched). At exit the temporary
# database is gone. Last, a warning said while the screen is up shows in
# the chat, nothing is written over the panes, and stderr has it after exit.
#
# FILLER is KVSCOPE_TUI_COLD_TURNS (default 12, what the suite's time
# allows on two shared cores); the issue's long run is
# KVSCOPE_TUI_COLD_TURNS=300 (about 300 exchanges: many minutes on the
# default model). With KVSCOPE_TUI_COLD_MODEL=tiny the model is a tiny
# random-weight one written here (tests/util/mktiny): its replies are
# noise, but the fact still has to come back by the question's words and
# probe, with its marking; byte-level tokens make the fact longer, so the
# budgets are larger (256, blocks of 32, recall 96). tui-cold-300.sh runs
# it at 300 filler turns in make check.
set -u
. "${KVSCOPE_SRCDIR:?}/tests/e2e/lib.sh"
sizes="--kv-budget 64 --cold-block 16 --recall-budget 32"
if [ "${KVSCOPE_TUI_COLD_MODEL:-}" = tiny ]; then
	model=$tmp/tiny.gguf
	"${KVSCOPE_BUILDDIR:?}/tests/util/mktiny" "$model" ||
		{ echo "tui-cold.sh: cannot write the tiny model" >&2; exit 1; }
	sizes="--kv-budget 256 --cold-block 32 --recall-budget 96"
else
	need_model
fi
sock=kvscope-cold-$$
T() { tmux -L "$sock" -f /dev/null "$@"; }
trap 'T kill-server 2>/dev/null; rm -rf "$tmp"' EXIT

if ! command -v tmux >/dev/null 2>&1; then
	echo "tui-cold.sh: tmux is not installed (scripts/setup.sh installs it)" >&2
	exit 1
fi
if "$bin" tui --help-probe-not-an-option 2>&1 | grep -q "workbench was not built"; then
	echo "tui-cold.sh: built --without-tui: nothing to drive" >&2
	exit 0
fi
"$bin" sessions list --db "$tmp/x.db" >/dev/null 2>"$tmp/e"
if grep -q "built without SQLite" "$tmp/e"; then
	echo "tui-cold.sh: built without SQLite; nothing to test"
	exit 0
fi

filler=${KVSCOPE_TUI_COLD_TURNS:-12}
WAIT_LIMIT=$((120 + filler * 6))
. "$KVSCOPE_SRCDIR/tests/e2e/tmux-lib.sh"

cmd() {
	T send-keys -t kv -l "$1"
	T send-keys -t kv Enter
}

# the driver: after each reply the next filler turn, then the question
cat >"$tmp/drive.lua" <<EOF
local kvscope = require "kvscope"
local topics = { "the moon", "rivers", "bread", "trains", "owls", "copper", "tea", "snow" }
local n, total = 0, $filler
kvscope.on("turn_end", function(turn)
  n = n + 1
  if n <= total then
    kvscope.status("filler " .. n .. "/" .. total)
    kvscope.send("chat", "Say one short thing about " .. topics[(n % #topics) + 1] .. ".")
  elseif n == total + 1 then
    kvscope.status("question sent")
    kvscope.send("chat", "What is my secret code word?")
  end
end)
EOF

mkdir -p "$tmp/state" "$tmp/config" "$tmp/t"
T new-session -d -s keep "sleep 900"
T new-session -d -s kv -x 220 -y 50 \
	"TMPDIR='$tmp/t' XDG_STATE_HOME='$tmp/state' XDG_CONFIG_HOME='$tmp/config' TERM=xterm-256color '$bin' --temp 0 --seed 1 -n 8 --model '$model' --policy streaming $sizes --cold on --no-plugins --plugin '$tmp/drive.lua' --prompt 'My secret code word is TIGER-42. Please remember it.' 2>'$tmp/stderr'; echo exited; sleep 900"
wait_for "Retention" 60
wait_for "cold tier: temporary database, deleted at exit"
[ "$(find "$tmp/t" -name cold.db | wc -l)" -eq 1 ] || fail "no temporary cold.db under TMPDIR"

# the question's reply has ended: a stop mark on a line after the question
end=$(($(date +%s) + WAIT_LIMIT))
while :; do
	screen | awk '/you> What is my secret code word\?/ { q = 1 } q && /\[(eos|max-tokens|user)\]/ { ok = 1 } END { exit !ok }' && break
	if [ "$(date +%s)" -gt "$end" ]; then
		fail "the question's reply never ended within ${WAIT_LIMIT}s; the screen:"
		screen | sed 's/^/  | /' >&2
		break
	fi
	sleep 0.5
done
wait_for "recalled [1-9][0-9]* "

# the fact's first token: recalled, with its block's turn and scores
cmd ":find TIGER-42"
wait_for "'TIGER-42' at token #"
line=$(screen | grep -E "recalled from turn [0-9]+, summary score [-0-9.]+, BM25 [0-9.]+" | head -n 1)
if [ -z "$line" ]; then
	fail "the selected fact token's details do not say it was recalled; the screen:"
	screen | sed 's/^/  | /' >&2
else
	own=$(printf '%s\n' "$line" | sed -n "s/.*' turn \([0-9][0-9]*\) .*/\1/p")
	from=$(printf '%s\n' "$line" | sed -n 's/.*recalled from turn \([0-9][0-9]*\),.*/\1/p')
	bm=$(printf '%s\n' "$line" | sed -n 's/.*BM25 \([0-9.]*\).*/\1/p')
	[ -n "$own" ] && [ -n "$from" ] || fail "cannot read the turns from: $line"
	if [ -n "$own" ] && [ -n "$from" ]; then
		[ "$from" -le "$own" ] && [ "$from" -ge $((own - 1)) ] ||
			fail "the token is of turn $own but its block is said to be of turn $from"
	fi
	awk -v b="$bm" 'BEGIN { exit !(b > 0) }' || fail "BM25 $bm: the question's words matched nothing"
fi
echo "tui-cold.sh: $filler filler turns; $(printf '%s\n' "$line" | sed 's/.*\(recalled from[^)]*\)$/\1/' | cut -c1-80)"

# quit: the temporary database goes with the workbench
cmd ":quit"
wait_for "^exited" 60
[ -z "$(ls -A "$tmp/t")" ] || fail "the temporary cold tier is still there: $(ls -A "$tmp/t")"

# A warning said while the screen is up (here opening the session: the
# default recall budget, an eighth of 256, is under a block of 64) is shown
# in the chat instead of being written over the panes, where the first
# frame would erase it, and is in stderr once the screen is given back.
T kill-session -t kv
T new-session -d -s kv -x 220 -y 50 \
	"TMPDIR='$tmp/t' XDG_STATE_HOME='$tmp/state' XDG_CONFIG_HOME='$tmp/config' TERM=xterm-256color '$bin' --model '$model' --policy streaming --kv-budget 256 --cold-block 64 --cold on --no-plugins 2>'$tmp/stderr2'; echo exited; sleep 900"
wait_for "Retention" 60
wait_for "warning: cold tier: the recall budget \\(32 tokens"
[ ! -s "$tmp/stderr2" ] || fail "written to stderr while the screen was up: $(head -c 300 "$tmp/stderr2")"
cmd ":quit"
wait_for "^exited" 60
[ "$(grep -c "^kvscope: warning: cold tier: the recall budget (32 tokens" "$tmp/stderr2")" -eq 1 ] ||
	fail "the warning is not in stderr once after exit: $(head -c 300 "$tmp/stderr2")"

[ "$fails" -eq 0 ] || exit 1
