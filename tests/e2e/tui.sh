#!/bin/sh
# tui.sh: the workbench end to end, driven inside tmux on the default model:
# start, ask a question and see the reply stream in (Enter during it keeps
# the next message), move the attention view's layer and head, a bad
# command (one status line), a policy and a budget change (the eviction
# summary), token selection (Esc lets go, Shift-PgDn, :find), the plugins'
# pane at 200x50, completion and help (scrolled at 80x24), resize to 80x24
# (tabs) and back to 200x50 (all panes), quit with Ctrl-C twice
# leaving the terminal as it was (stty settings compared before and after);
# then monochrome with ASCII glyphs, SIGTERM and SIGABRT (the terminal is
# restored on both) and truecolour on a direct-colour terminal; a saved
# session resumed (:load and --resume) shows its transcript; length targets
# given at start show in the gauge; --kv-budget 0 and :budget 0; a missing
# default model; saving (--db from the first exchange, :save after
# exchanges, the questions before :quit and Ctrl-C), exports parsed as JSON,
# resume restoring policy and budget, the wheel and :yank, Ctrl-R's Enter
# sending. Synchronisation polls the
# screen for the expected text (never a bare sleep). With
# KVSCOPE_SAVE_SCREENS=DIR the main views are saved there as text
# (doc/screens/ holds the committed copies).
set -u
bin=${KVSCOPE_BIN:?}
tmp=$(mktemp -d)
sock=kvscope-e2e-$$
fails=0
T() { tmux -L "$sock" -f /dev/null "$@"; }
stage="set-up"
# a run that ends early says where (a silent exit 1 was seen once under
# load; this names its section next time)
cleanup() {
	rc=$?
	[ "$rc" -ne 0 ] && echo "tui.sh: exit $rc during section '$stage'" >&2
	T kill-server 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }

if ! command -v tmux >/dev/null 2>&1; then
	echo "tui.sh: tmux is not installed (scripts/setup.sh installs it)" >&2
	exit 1
fi
if [ -z "${KVSCOPE_MODEL:-}" ]; then
	model=${XDG_DATA_HOME:-$HOME/.local/share}/kvscope/models/SmolLM2-135M-Instruct.Q4_1.gguf
else
	model=$KVSCOPE_MODEL
fi
if [ ! -f "$model" ]; then
	echo "tui.sh: the default model is not at $model (run make model)" >&2
	[ "${KVSCOPE_SKIP_MODEL_TESTS:-0}" = 1 ] && exit 77
	exit 1
fi
if ! "$bin" help | grep -q "^  tui "; then
	echo "tui.sh: this kvscope has no tui command" >&2
	exit 1
fi
if "$bin" tui --help-probe-not-an-option 2>&1 | grep -q "workbench was not built"; then
	echo "tui.sh: built --without-tui: nothing to drive (the one-line message was checked)" >&2
	exit 0
fi

. "$KVSCOPE_SRCDIR/tests/e2e/tmux-lib.sh"

mkdir -p "$tmp/state"
cat >"$tmp/run.sh" <<EOS
stty -a >"$tmp/stty.before"
XDG_STATE_HOME="$tmp/state" TERM=xterm-256color "$bin" --temp 0 --seed 1 -n 48 --db "$tmp/mem.db" \
	2>"$tmp/stderr"
echo "\$?" >"$tmp/rc"
stty -a >"$tmp/stty.after"
echo "SHELL-BACK"
sleep 600
EOS
# a second session keeps the server up while the test replaces "kv"
T new-session -d -s keep "sleep 600"
T new-session -d -s kv -x 200 -y 50 "sh $tmp/run.sh"

# 1. all panes at 200x50, the system prompt shown
stage="1"
wait_for "Retention" 60
wait_for "KV memory"
wait_for "system> You are a helpful AI assistant named SmolLM"
wait_for "plugins [0-9]+"

# 2. a question, the reply streams in and ends with its stop reason
stage="2"
T send-keys -t kv -l "What is the capital of France?"
T send-keys -t kv Enter
wait_for "you> What is the capital of France\\?"
wait_for "model> [A-Za-z]"
wait_for "\\[(eos|max-tokens)\\]" 90
wait_for "stop: (eos|max-tokens)"
wait_for "query #[0-9]+"
wait_for "decode [1-9][0-9]* tok/s"
save tui-200x50-reply

# 2a. with --db the conversation is saved from its first exchange (as
stage="2a"
# session 1, untitled); :save TITLE names it rather than starting another
T send-keys -t kv -l ":save e2e chat"
T send-keys -t kv Enter
wait_for "saving to .*mem.db as session 1, now titled 'e2e chat'"

# 2a'. Ctrl-R searches the history (libedit's incremental search reads its
# pattern key by key): the question comes back into the input line; Ctrl-G
# leaves the search with the line as it was (empty)
if grep -q "define HAVE_LIBEDIT 1" "${KVSCOPE_BUILDDIR:-$(dirname "$bin")}/config.h" 2>/dev/null; then
	T send-keys -t kv C-r
	T send-keys -t kv -l "capi"
	wait_for "bck:capi"
	wait_for "^> What is the capital of France\\?"
	T send-keys -t kv C-g
	wait_for "^> *$"
fi

# 2b. Ctrl-C stops a long reply (stop reason "user"); the program goes on
stage="2b"
T send-keys -t kv -l ":max 4000"
T send-keys -t kv Enter
wait_for "at most 4000 tokens per reply"
T send-keys -t kv -l "Write a very long story about a dragon."
T send-keys -t kv Enter
wait_for "generating \\(Ctrl-C stops\\)" 30
# Enter during the reply keeps the message in the input line
T send-keys -t kv -l "the next question"
T send-keys -t kv Enter
wait_for "a reply is in progress: Enter sends this when it ends"
wait_for "^> the next question"
# resizing while tokens stream in: every size redraws whole
T resize-window -t kv -x 80 -y 24
wait_for "F2 Chat"
T resize-window -t kv -x 120 -y 40
T resize-window -t kv -x 30 -y 8
T resize-window -t kv -x 200 -y 50
wait_for "Retention"
T send-keys -t kv C-c
wait_for "\\[user\\]" 30
wait_for "stop: user"
wait_for "^> the next question"
T send-keys -t kv C-u
wait_for "^> *$"

# 2b'. the saved session: listed, exported, resumed
T send-keys -t kv -l ":sessions"
T send-keys -t kv Enter
wait_for "1 saved session: 1 'e2e chat' \\(2 turns\\)"
T send-keys -t kv -l ":export 1 $tmp/export.md"
T send-keys -t kv Enter
wait_for "session 1 exported to"
grep -q "dragon" "$tmp/export.md" 2>/dev/null || fail ":export: $tmp/export.md lacks the saved turn"
T send-keys -t kv -l ":load e2e chat"
T send-keys -t kv Enter
wait_for "resumed session 1: [0-9]+ tokens"
# the chat now shows the saved transcript (both turns, the first said
# before :save too) and the separator
wait_for "(──|--) resumed 'e2e chat' \\(2 turns, [0-9]+ tokens retained\\) (──|--)"
wait_for "you> Write a very long story about a dragon\\."
wait_for "you> What is the capital of France\\?"
T send-keys -t kv -l ":load nosuch"
T send-keys -t kv Enter
wait_for "nosuch"

# 2b''. a length target: the worker takes it, the gauge shows it
T send-keys -t kv -l ":len 20w"
T send-keys -t kv Enter
wait_for "length target: 20 words"
# the last reply is judged by its own target (none); the new one is next
wait_for "length [0-9]+ words? \\(no target\\) .*next replies: target 20 words"
T send-keys -t kv -l ":len off"
T send-keys -t kv Enter
wait_for "length target: (off|none)"

# 2c. select tokens in the retention strip: the details line explains one
stage="2c"
T send-keys -t kv S-Right
T send-keys -t kv S-Right
wait_for "#1 id [0-9]+ .* original pos 1, cache index 1"
wait_for "kept: (attention sink|in the recent window|key token)"
save tui-200x50-selected
# Esc lets go (the strip's legend is back); Shift-PgDn jumps to the next
# turn's first token; :find searches the tokens' texts
T send-keys -t kv Escape
wait_for "[0-9]+ tokens: kept evicted sink key pinned"
T send-keys -t kv S-Right
wait_for "#0 id [0-9]+ '<\\|im_start\\|>' turn [0-9]+ system"
T send-keys -t kv S-NPage
wait_for "#[1-9][0-9]* id [0-9]+ '.*' turn [0-9]+ (user|assistant)"
T send-keys -t kv -l ":find dragon"
T send-keys -t kv Enter
wait_for "'dragon' at token #[0-9]+"
wait_for "#[0-9]+ id [0-9]+ ' dragon' turn"
T send-keys -t kv Escape
wait_for "[0-9]+ tokens: kept evicted sink key pinned"

# 3. layer and head: keys and commands
stage="3"
T send-keys -t kv F7
T send-keys -t kv F7
wait_for "layer 2 \\[0..29\\]  heads: max of 9  \\[max\\]"
T send-keys -t kv F9
wait_for "layer 2 \\[0..29\\]  head 1 \\[0..8\\]"
T send-keys -t kv -l ":layer 5"
T send-keys -t kv Enter
T send-keys -t kv -l ":head 3"
T send-keys -t kv Enter
wait_for "layer 5 \\[0..29\\]  head 3 \\[0..8\\]"
T send-keys -t kv -l ":layer 99"
T send-keys -t kv Enter
wait_for "layer: expected a layer number 0 .. 29"
wait_for "layer 5 \\[0..29\\]  head 3 \\[0..8\\]"

# 3b. Lua: a chunk, the plugin list, the plugins' pane (F12)
stage="3b"
T send-keys -t kv -l ":lua print(6 * 7)"
T send-keys -t kv Enter
wait_for "lua: 42"
T send-keys -t kv -l ":lua error('boom')"
T send-keys -t kv Enter
wait_for ":lua: .*boom"
T send-keys -t kv -l ":plugin list"
T send-keys -t kv Enter
wait_for "[0-9]+ plugins"
T send-keys -t kv -l ":plugin load no-such-plugin"
T send-keys -t kv Enter
wait_for ":plugin load: .*no-such-plugin"
# the plugins' pane at 200x50 too: F12 puts it in the right column, F3
# brings the attention pane back
T send-keys -t kv F12
wait_for "(─|-) Plugins (─|-)"
screen | grep -Eq "(─|-) Attention (─|-)" && fail "F12: the attention pane is still shown"
T send-keys -t kv F3
wait_for "(─|-) Attention (─|-)"

# 4. a bad command: one status line, nothing else changes
stage="4"
T send-keys -t kv -l ":frobnicate now"
T send-keys -t kv Enter
wait_for "unknown command ':frobnicate'"

# 5. policy and budget: the memory pane follows, eviction shows a banner
stage="5"
T send-keys -t kv -l ":policy sirllm"
T send-keys -t kv Enter
wait_for "policy sirllm"
T send-keys -t kv -l ":budget 24"
T send-keys -t kv Enter
wait_for "evicted [0-9]+ tokens from turn"
wait_for "/24 tokens"
T send-keys -t kv -l ":policy nosuch"
T send-keys -t kv Enter
wait_for "nosuch"
save tui-200x50-evicted
# a retention policy written in Lua (the bundled recency-entropy plugin)
T send-keys -t kv -l ":policy recency-entropy"
T send-keys -t kv Enter
wait_for "policy recency-entropy on streaming"
T send-keys -t kv -l ":plugin unload recency-entropy"
T send-keys -t kv Enter
wait_for "policy streaming"
T send-keys -t kv -l ":plugin load recency-entropy"
T send-keys -t kv Enter
wait_for "plugin recency-entropy: load done"

# 6. completion from the command table
stage="6"
T send-keys -t kv -l ":pol"
T send-keys -t kv Tab
wait_for "^: :policy $|^:  ?:policy|: :policy"
T send-keys -t kv C-u
T send-keys -t kv F1
wait_for "Help 1-[0-9]+ of [0-9]+ \\(Up/Down/PgUp/PgDn scroll; /TEXT searches; Esc or F1 closes\\)"
wait_for "F12, Alt-= +the plugins' pane"
save tui-200x50-help
T send-keys -t kv F1

# 7. 80x24: tabs; each pane on its own; back to 200x50
stage="7"
T resize-window -t kv -x 80 -y 24
wait_for "F2 Chat"
wait_for "F3 Attention"
T send-keys -t kv F2
wait_for "(─|-) Chat (─|-)"
save tui-80x24-chat
T send-keys -t kv F3
wait_for "layer 5 \\[0..29\\]"
save tui-80x24-attention
T send-keys -t kv F4
wait_for "budget"
save tui-80x24-memory
T send-keys -t kv F5
wait_for "tokens: kept|#[0-9]+ id"
T send-keys -t kv F2
# the help at 80x24: every command reachable by scrolling, :quit included
T send-keys -t kv F1
wait_for "Help 1-"
screen | grep -q ":quit " && fail "80x24: the help's first page shows :quit"
# (PgDn: tmux sends End as \E[4~, which xterm-256color's terminfo does not know)
# (page by page: the glossary follows the commands)
for i in 1 2 3 4 5 6 7 8 9 10 11 12; do
	screen | grep -q ":quit " && break
	T send-keys -t kv NPage
	wait_stable
done
wait_for ":quit "
save tui-80x24-help
T send-keys -t kv Escape
wait_for "F2 Chat"
T resize-window -t kv -x 200 -y 50
wait_for "KV memory"
wait_for "Retention"
wait_for "Attention"

# 7b. the input line: argument completion, a multi-line message (Ctrl-J), Ctrl-C clears a non-empty line
stage="7b"
T send-keys -t kv -l ":theme l"
T send-keys -t kv Tab
wait_for "^: :theme light"
T send-keys -t kv Enter
wait_for "theme light"
T send-keys -t kv -l "first line"
T send-keys -t kv C-j
T send-keys -t kv -l "second line"
wait_for "^> first line"
wait_for "^\\. second line"
save tui-200x50-multiline
T send-keys -t kv C-c
wait_for "^>$"

# 8. quit with Ctrl-C twice on an empty line (the first only asks): exit
stage="8"
# 0, the terminal as before
T send-keys -t kv C-c
wait_for "Ctrl-C again quits"
screen | grep -q "SHELL-BACK" && fail "one Ctrl-C on an empty line quit"
T send-keys -t kv C-c
wait_for "SHELL-BACK" 30
rc=$(cat "$tmp/rc" 2>/dev/null)
[ "$rc" = 0 ] || fail "kvscope exited with '$rc': $(cat "$tmp/stderr")"
cmp -s "$tmp/stty.before" "$tmp/stty.after" || fail "terminal settings differ after quitting: $(diff "$tmp/stty.before" "$tmp/stty.after")"
if grep -q "define HAVE_LIBEDIT 1" "${KVSCOPE_BUILDDIR:-$(dirname "$bin")}/config.h" 2>/dev/null; then
	[ -s "$tmp/state/kvscope/history" ] || fail "no history file in \$XDG_STATE_HOME/kvscope/history"
	# libedit writes history lines vis(3)-encoded (a space is \040)
	grep -q "capital" "$tmp/state/kvscope/history" 2>/dev/null ||
		fail "the history file lacks the question"
else
	echo "tui.sh: built without libedit: the input line keeps no history file (not checked)"
fi

# 9. monochrome (NO_COLOR) with ASCII glyphs, then SIGTERM: a clean exit;
stage="9"
# then SIGABRT: the fatal-signal path still restores the terminal
for sig in TERM ABRT; do
	rm -f "$tmp/rc" "$tmp/pid"
	cat >"$tmp/run2.sh" <<EOS
stty -a >"$tmp/stty.before"
NO_COLOR=1 XDG_STATE_HOME="$tmp/state" TERM=xterm-256color sh -c 'echo \$\$ >"$tmp/pid"; exec "$bin" --ascii -n 8' 2>"$tmp/stderr"
echo "\$?" >"$tmp/rc"
stty -a >"$tmp/stty.after"
echo "SHELL-BACK"
sleep 600
EOS
	T kill-session -t kv
	T new-session -d -s kv -x 100 -y 30 "sh $tmp/run2.sh"
	wait_for "\\+- Chat -" 60
	wait_for "ctx [0-9]+/[0-9]+"
	if T capture-pane -e -p -t kv | grep -q "$(printf '\033')\\[[0-9;]*38;5;"; then
		fail "NO_COLOR: the screen still has 256-colour escapes"
	fi
	[ $sig = TERM ] && save tui-100x30-ascii-nocolor
	kill -$sig "$(cat "$tmp/pid")"
	wait_for "SHELL-BACK" 30
	rc=$(cat "$tmp/rc" 2>/dev/null)
	if [ $sig = TERM ]; then
		[ "$rc" = 0 ] || fail "SIGTERM: exit '$rc', expected 0: $(cat "$tmp/stderr")"
	else
		[ "$rc" = 134 ] || fail "SIGABRT: exit '$rc', expected 134 (killed by SIGABRT)"
	fi
	cmp -s "$tmp/stty.before" "$tmp/stty.after" ||
		fail "SIG$sig: terminal settings differ afterwards: $(diff "$tmp/stty.before" "$tmp/stty.after")"
done

# 10. truecolour on a direct-colour terminal: 24-bit escapes (the dark
stage="10"
# theme's border, colour 240, is RGB 88,88,88)
if ! infocmp xterm-direct >/dev/null 2>&1; then
	fail "no xterm-direct terminfo entry (Debian package ncurses-term; scripts/setup.sh installs it)"
else
	T kill-session -t kv
	T new-session -d -s kv -x 120 -y 30 "XDG_STATE_HOME='$tmp/state' TERM=xterm-direct '$bin' --color truecolor -n 8; sleep 600"
	wait_for "ctx [0-9]+/[0-9]+" 60
	T capture-pane -e -p -t kv | grep -q "38;2;88;88;88m" ||
		fail "truecolor: no 24-bit colour escapes on the screen"
fi

# 10b. `kvscope --resume TITLE` on a terminal: the workbench resumes the
stage="10b"
# session saved above (as :load does) and shows its transcript; a length
# target given at start shows in the gauge
if grep -q "define HAVE_SQLITE 1" "${KVSCOPE_BUILDDIR:-$(dirname "$bin")}/config.h" 2>/dev/null; then
	T kill-session -t kv
	T new-session -d -s kv -x 200 -y 50 "XDG_STATE_HOME='$tmp/state' TERM=xterm-256color '$bin' --db '$tmp/mem.db' --resume 'e2e chat' --target-words 150 -n 8; sleep 600"
	wait_for "resumed session 1: [0-9]+ tokens" 60
	wait_for "you> Write a very long story about a dragon\\."
	wait_for "(──|--) resumed 'e2e chat' \\(2 turns, [0-9]+ tokens retained\\) (──|--)"
	wait_for "length 0 words of target 150 words \\(130, 170\\]"
fi

# 10c. --plugin FILE loads a plugin into the workbench (its status item
stage="10c"
# shows); --length takes a Ruler level by name, as :len does
printf 'local kvscope = require "kvscope"\nkvscope.status("hello-from-plugin")\n' >"$tmp/hello.lua"
T kill-session -t kv
T new-session -d -s kv -x 200 -y 50 "XDG_STATE_HOME='$tmp/state' TERM=xterm-256color '$bin' --plugin '$tmp/hello.lua' --length '>800' -n 8 --ctx 1024 --kv-budget 0; sleep 600"
wait_for "hello-from-plugin" 60
wait_for "of target more than 800 words \\(800, inf\\)"
# --kv-budget 0 and :budget 0: every slot of the context
wait_for "ctx 0/1024"
T send-keys -t kv -l ":budget 64"
T send-keys -t kv Enter
wait_for "ctx 0/64"
T send-keys -t kv -l ":budget 0"
T send-keys -t kv Enter
wait_for "budget 1024 tokens"
wait_for "ctx 0/1024"

# 10d. a bad length target at start: one line, exit 2, before any terminal work
stage="10d"
for bad in "--target-words 12x" "--length 5q" "--target-words 0"; do
	# shellcheck disable=SC2086
	"$bin" tui $bad >"$tmp/bad.out" 2>"$tmp/bad.err"
	rc=$?
	[ "$rc" = 2 ] || fail "tui $bad: exit $rc, expected 2"
	[ "$(grep -c . "$tmp/bad.err")" = 1 ] || fail "tui $bad: expected one line: $(cat "$tmp/bad.err")"
	grep -Eq "(not a whole number of words|expected a number of words)" "$tmp/bad.err" ||
		fail "tui $bad: $(cat "$tmp/bad.err")"
	[ ! -s "$tmp/bad.out" ] || fail "tui $bad wrote to stdout"
done

# 12. saving never loses a conversation (store built only)
stage="12"
if grep -q "define HAVE_SQLITE 1" "${KVSCOPE_BUILDDIR:-$(dirname "$bin")}/config.h" 2>/dev/null; then
	# 12a. no --db: :sessions before any save says so (no other tool named);
	# :quit and Ctrl-C with an unsaved exchange ask first; :save keeps the
	# exchange said before it; then :quit leaves at once
	mkdir -p "$tmp/data"
	T kill-session -t kv
	T new-session -d -s kv -x 160 -y 48 "XDG_DATA_HOME='$tmp/data' XDG_STATE_HOME='$tmp/state' TERM=xterm-256color '$bin' --model '$model' --temp 0 -n 8; echo SHELL-BACK; sleep 600"
	wait_for "ctx [0-9]+/[0-9]+" 60
	T send-keys -t kv -l ":sessions"
	T send-keys -t kv Enter
	wait_for "no saved sessions yet in .*memory.db: :save \\[TITLE\\] saves this conversation there"
	screen | grep -q "kvscope chat" && fail ":sessions sent the user to another tool"
	if grep -q "define HAVE_LIBEDIT 1" "${KVSCOPE_BUILDDIR:-$(dirname "$bin")}/config.h" 2>/dev/null; then
		# Enter in a Ctrl-R search sends the line found (it only ended the search)
		T send-keys -t kv C-r
		T send-keys -t kv -l "capi"
		wait_for "bck:capi"
		T send-keys -t kv Enter
		wait_for "you> What is the capital of France\\?"
	else
		T send-keys -t kv -l "Say hi."
		T send-keys -t kv Enter
	fi
	wait_for "\\[(eos|max-tokens)\\]" 90
	# the mouse wheel over the retention strip (an SGR report: button 64
	# is wheel-up, at column 10, row 41 of 48) selects a token; :yank puts
	# the reply on the clipboard (OSC 52; this tmux keeps it as a buffer)
	T set-option -s set-clipboard on
	T send-keys -t kv -l "$(printf '\033[<64;10;41M')"
	wait_for "#[0-9]+ id [0-9]+ .* turn [0-9]+ "
	T send-keys -t kv Escape
	wait_for "[0-9]+ tokens: kept evicted"
	T send-keys -t kv -l ":yank"
	T send-keys -t kv Enter
	wait_for "copied [0-9]+ bytes to the clipboard"
	n=0
	while [ $n -lt 100 ] && [ -z "$(T show-buffer 2>/dev/null)" ]; do sleep 0.1; n=$((n + 1)); done
	yanked=$(T show-buffer 2>/dev/null | head -n 1 | cut -c1-12)
	[ -n "$yanked" ] && screen | grep -qF "model> $yanked" ||
		fail ":yank: the clipboard has '$(T show-buffer 2>/dev/null)'"
	T send-keys -t kv -l ":mouse off"
	T send-keys -t kv Enter
	wait_for "mouse off: the terminal selects text"
	T send-keys -t kv -l ":quit"
	T send-keys -t kv Enter
	wait_for "1 exchange is not saved: :save \\[TITLE\\] keeps it; :quit again leaves without saving"
	T send-keys -t kv C-c
	wait_for "Ctrl-C again quits; 1 exchange is not saved"
	T send-keys -t kv -l ":save late title"
	T send-keys -t kv Enter
	wait_for "saved 1 exchange to .*memory.db as session 1; the next ones are added"
	T send-keys -t kv -l ":quit"
	T send-keys -t kv Enter
	wait_for "SHELL-BACK" 30
	XDG_DATA_HOME="$tmp/data" "$bin" sessions list >"$tmp/list" 2>&1 || fail "sessions list: $(cat "$tmp/list")"
	grep -Eq "^1 .* 1 .*late title" "$tmp/list" || fail ":save after an exchange: $(cat "$tmp/list")"

	# 12b. --db F saves every exchange from the first: :quit leaves at once
	# and the database holds both turns. A policy change with a long
	# specification (its event was cut at 31 bytes), a title and a message
	# with quotes, backslashes and a newline: both exports parse as JSON,
	# no field is cut, the sampler is recorded
	T kill-session -t kv
	T new-session -d -s kv -x 160 -y 48 "XDG_STATE_HOME='$tmp/state' TERM=xterm-256color '$bin' --db '$tmp/auto.db' --temp 0 -n 8; echo SHELL-BACK; sleep 600"
	wait_for "ctx [0-9]+/[0-9]+" 60
	T send-keys -t kv -l "Say hi."
	T send-keys -t kv Enter
	wait_count "\\[(eos|max-tokens)\\]" 1 90
	T send-keys -t kv -l ":policy h2o heavy=0.25 pos=compact"
	T send-keys -t kv Enter
	wait_for "policy h2o heavy=0.25 pos=compact"
	T send-keys -t kv -l 'Say "bye" \o/'
	T send-keys -t kv C-j
	T send-keys -t kv -l 'twice.'
	T send-keys -t kv Enter
	wait_count "\\[(eos|max-tokens)\\]" 2 90
	T send-keys -t kv -l ':save a "quoted" \ title'
	T send-keys -t kv Enter
	wait_for "now titled 'a \"quoted\" \\\\ title'"
	T send-keys -t kv -l ":export 1 $tmp/tui-export.json json"
	T send-keys -t kv Enter
	wait_for "session 1 exported to"
	T send-keys -t kv -l ":quit"
	T send-keys -t kv Enter
	wait_for "SHELL-BACK" 30
	"$bin" sessions show 1 --db "$tmp/auto.db" >"$tmp/show" 2>&1 || fail "sessions show: $(cat "$tmp/show")"
	grep -q "^turns    2 " "$tmp/show" || fail "--db: the workbench did not save both turns: $(cat "$tmp/show")"
	"$bin" sessions export 1 --format json --db "$tmp/auto.db" >"$tmp/cli-export.json" 2>"$tmp/export.err" ||
		fail "sessions export: $(cat "$tmp/export.err")"
	"$bin" sessions export 1 --format md --db "$tmp/auto.db" >"$tmp/cli-export.md" 2>>"$tmp/export.err" ||
		fail "sessions export md: $(cat "$tmp/export.err")"
	grep -q 'policy changed: {"policy":"h2o heavy=0.25 pos=compact","budget":[0-9]*}' "$tmp/cli-export.md" ||
		fail "the Markdown export's policy change is cut: $(grep "policy changed" "$tmp/cli-export.md")"
	if command -v python3 >/dev/null 2>&1; then
		for f in "$tmp/tui-export.json" "$tmp/cli-export.json"; do
			python3 - "$f" <<'EOP' || fail "$f: not the JSON expected"
import json, sys
d = json.load(open(sys.argv[1], encoding="utf-8"))
assert d["title"] == 'a "quoted" \\ title', d["title"]
assert d["sampler"].startswith("temp=0 "), d["sampler"]
users = [t["user"] for t in d["turns"]]
assert users == ["Say hi.", 'Say "bye" \\o/\ntwice.'], users
pol = [e for t in d["turns"] for e in t["memory_events"] if e["kind"] == "policy"]
assert any(e["detail"]["policy"] == "h2o heavy=0.25 pos=compact" for e in pol), pol
EOP
		done
	else
		echo "tui.sh: no python3: the exports' JSON was not parsed (the Markdown was checked)"
	fi

	# 12c. resuming brings back the policy and budget the session was saved
	# with (h2o since its second turn), and says so; --kv-budget given too
	# applies after it
	T kill-session -t kv
	T new-session -d -s kv -x 220 -y 50 "XDG_STATE_HOME='$tmp/state' TERM=xterm-256color '$bin' --db '$tmp/auto.db' --resume 1 --ctx 4096 --kv-budget 2048 -n 8; echo SHELL-BACK; sleep 600"
	wait_for "-- resumed session 1: [0-9]+ tokens .*; policy h2o heavy=0.25 pos=compact and budget 4096 as saved" 60
	wait_for "ctx [0-9]+/2048 \\| h2o heavy=0.25 pos=compact"
fi

# 10e. no default model: one line saying how to get it (not just ENOENT)
stage="10e"
T kill-session -t kv
T new-session -d -s kv -x 120 -y 30 "XDG_DATA_HOME='$tmp/nodata' XDG_STATE_HOME='$tmp/state' TERM=xterm-256color '$bin' 2>'$tmp/nomodel.err'; echo \$? >'$tmp/nomodel.rc'; sleep 600"
end=$(($(date +%s) + 60))
while [ ! -s "$tmp/nomodel.rc" ] && [ "$(date +%s)" -le "$end" ]; do sleep 0.1; done
[ "$(cat "$tmp/nomodel.rc" 2>/dev/null)" = 1 ] || fail "no model: exit '$(cat "$tmp/nomodel.rc" 2>/dev/null)', expected 1"
grep -q "the default model is not installed .*'make model'" "$tmp/nomodel.err" ||
	fail "no model: $(cat "$tmp/nomodel.err")"

# 10f. the line chat on a terminal: ':' commands as in the workbench ('/'
stage="10f"
# still works), :save mid-way, and Ctrl-D leaves the shell's next line on
# a line of its own (it was "> SHELL-BACK")
T kill-session -t kv
T new-session -d -s kv -x 120 -y 30 "XDG_DATA_HOME='$tmp/chatdata' XDG_STATE_HOME='$tmp/state' TERM=xterm-256color '$bin' chat --model '$model' --temp 0 -n 6; echo SHELL-BACK; sleep 600"
wait_for ":help for commands" 60
T send-keys -t kv -l ":help"
T send-keys -t kv Enter
wait_for "^  :save \\[TITLE\\]  save this conversation"
T send-keys -t kv -l "/kv"
T send-keys -t kv Enter
wait_for "^KV streaming"
T send-keys -t kv -l "Say hi."
T send-keys -t kv Enter
wait_for "^\\[[0-9]+ tokens?, " 60
if grep -q "define HAVE_SQLITE 1" "${KVSCOPE_BUILDDIR:-$(dirname "$bin")}/config.h" 2>/dev/null; then
	T send-keys -t kv -l ":save line chat"
	T send-keys -t kv Enter
	wait_for "saved 1 exchange to .*chatdata/kvscope/memory.db as session 1"
fi
T send-keys -t kv C-d
wait_for "^SHELL-BACK"

# 13. a newcomer's tools, at 160x48 (every pane) and 80x24 (tabs):
stage="13"
# exporting what is shown (parsed by python's json and csv modules)
T kill-session -t kv
# (a system prompt of 24 short lines: at 80x24 the chat scrolls)
for i in $(seq 1 24); do echo "rule $i"; done >"$tmp/rules"
cat >"$tmp/exportview.lua" <<'LUA'
local kvscope = require "kvscope"
kvscope.command("lua-export", function(args)
  print(kvscope.export_view("attention", "lua/att.json"))
end, "export the attention view from Lua")
LUA
T new-session -d -s kv -x 160 -y 48 "cd '$tmp' && XDG_STATE_HOME='$tmp/state' TERM=xterm-256color '$bin' --temp 0 -n 6 --no-plugins --plugin '$tmp/exportview.lua' --system \"\$(cat '$tmp/rules')\"; sleep 600"
wait_for "Retention" 60
# the first-start hint on the status line
wait_for "F1 help, : commands, Tab completes, / searches the chat"
T send-keys -t kv -l "Name a colour."
T send-keys -t kv Enter
wait_for "\\[(eos|max-tokens)\\]" 90
T send-keys -t kv -l "Name a fruit."
T send-keys -t kv Enter
wait_count "\\[(eos|max-tokens)\\]" 2 90
# every F-key and Shift-key has an Alt-key twin: Alt-1 help, Alt-7 layer +,
# Alt-9 head +, Alt-0 mean over heads, Alt-h selects a token, Alt-g the first
T send-keys -t kv M-1
wait_for "Help 1-"
T send-keys -t kv Escape
wait_for "Retention"
T send-keys -t kv M-7
wait_for "layer 1 \\[0..29\\]"
T send-keys -t kv M-9
wait_for "layer 1 \\[0..29\\]  head 1 \\[0..8\\]"
T send-keys -t kv M-0
wait_for "heads: mean of 9"
T send-keys -t kv M-g
wait_for "#0 id [0-9]+ '<\\|im_start\\|>'"
T send-keys -t kv M-l
wait_for "#1 id [0-9]+ "
T send-keys -t kv M-G
wait_for "tokens: kept"
# '/' searches the chat: the older question is found, Esc goes back down
T send-keys -t kv -l "/colour"
T send-keys -t kv Enter
wait_for "'colour' in message [0-9]+ of [0-9]+"
T send-keys -t kv Escape
wait_stable # (Esc and a key within the escape delay read as Alt and the key)
# :help TEXT searches the help (the glossary)
T send-keys -t kv -l ":help k90"
T send-keys -t kv Enter
wait_for "help: 'k90'"
T send-keys -t kv Escape
wait_stable
T send-keys -t kv -l ":export-view attention $tmp/att.json"
T send-keys -t kv Enter
wait_for "attention view written to"
T send-keys -t kv -l ":export-view retention $tmp/ret.csv"
T send-keys -t kv Enter
wait_for "retention view written to .*ret.csv"
T send-keys -t kv -l ":export-view retention $tmp/ret.json json"
T send-keys -t kv Enter
wait_for "retention view written to .*ret.json"
T send-keys -t kv -l ":export-view heads $tmp/x.json"
T send-keys -t kv Enter
wait_for "export-view: unknown view 'heads': expected attention or retention"
[ ! -e "$tmp/x.json" ] || fail ":export-view with a bad view made a file"
T send-keys -t kv -l ":lua-export"
T send-keys -t kv Enter
wait_for ":lua-export: results/lua/att.json"
if command -v python3 >/dev/null 2>&1; then
	python3 - "$tmp" <<'PY' || fail "the exported views do not parse or do not add up (above)"
import csv, json, math, sys
d = sys.argv[1]
a = json.load(open(d + "/att.json"))
L, H, K, Q = a["n_layer"], a["n_head"], len(a["tokens"]), len(a["queries"])
assert (L, H) == (30, 9), (L, H)
assert len(a["positions"]) == K and a["positions"] == sorted(a["positions"])
assert len(a["attention"]) == L and all(len(x) == H for x in a["attention"])
for l in range(L):
    for h in range(H):
        m = a["attention"][l][h]
        assert len(m) == Q and all(len(r) == K for r in m)
        for q, r in enumerate(m):
            assert abs(sum(r) - 1) < 1e-3, (l, h, q, sum(r))
            qp = a["queries"][q]["position"]
            # causal: no weight on a key after its query
            assert all(w == 0 for p, w in zip(a["positions"], r) if p > qp)
assert a["queries"][-1]["index"] == a["positions"].index(a["queries"][-1]["position"])
b = json.load(open(d + "/results/lua/att.json"))  # under the results directory
assert b["attention"] == a["attention"]
rows = list(csv.DictReader(open(d + "/ret.csv", newline="", encoding="utf-8")))
r = json.load(open(d + "/ret.json"))
assert [int(x["position"]) for x in rows] == list(range(len(rows))) and len(rows) > 20
assert [t["position"] for t in r["tokens"]] == list(range(len(rows)))
assert [t["text"] for t in r["tokens"]] == [x["text"] for x in rows]
assert sum(int(x["cached"]) for x in rows) == r["cached"], (r["cached"],)
assert rows[0]["text"] == "<|im_start|>" and rows[0]["role"] == "system"
print("exports: %d layers x %d heads x %d queries x %d keys, %d tokens" % (L, H, Q, K, len(rows)))
PY
fi
# the same at 80x24 (tabs): Alt-3 the attention tab, Alt-2 the chat, a
# search scrolls it up and marks the hit, Esc brings it back down
T resize-window -t kv -x 80 -y 24
wait_for "F2 Chat"
T send-keys -t kv M-3
wait_for "heads: mean of 9"
# the attention grid: queries x keys, the cursor shared with the strip
wait_for "queries/keys +\\|0"
T send-keys -t kv M-g
wait_for "query #[0-9]+ '.*' -> key #0 '<\\|im_start\\|>': 0\\.[0-9]+"
T send-keys -t kv M-k
wait_for "\\(past step\\)"
save tui-80x24-grid
T send-keys -t kv M-G
T send-keys -t kv M-j
T send-keys -t kv M-2
wait_for "you> Name a fruit\\."
screen | grep -q "system> rule 1 " && fail "80x24: the chat's first lines show before any search"
T send-keys -t kv -l "/RULE 1"
T send-keys -t kv Enter
wait_for "'RULE 1' in message 1 of 5"
wait_for "system> rule 1 "
wait_for "scrolled [0-9]+ up, Esc: bottom"
save tui-80x24-search
T send-keys -t kv Escape
wait_for "you> Name a fruit\\."
screen | grep -q "scrolled [0-9]* up" && fail "80x24: Esc left the chat scrolled"
wait_stable
T send-keys -t kv M-1
wait_for "Help 1-"
T send-keys -t kv -l "/share of a head"
T send-keys -t kv Enter
wait_for "sink mass +the share of a head's attention"
save tui-80x24-help-search
T send-keys -t kv Escape
wait_stable
T resize-window -t kv -x 160 -y 48
wait_for "Retention"

# 11. --bench-exit (bench/tui-decode.sh): standard output redirected, the
stage="11"
# screen still on the terminal; the reply's decode rate is printed at exit
T kill-session -t kv
T new-session -d -s kv -x 120 -y 30 "XDG_STATE_HOME='$tmp/state' TERM=xterm-256color '$bin' tui --prompt 'Say hi.' --temp 0 -n 6 --bench-exit >'$tmp/bench.part' 2>&1; mv '$tmp/bench.part' '$tmp/bench.out'; sleep 600"
end=$(($(date +%s) + 60))
while [ ! -f "$tmp/bench.out" ] && [ "$(date +%s)" -le "$end" ]; do sleep 0.1; done
grep -Eq "^decode [0-9.]+ tok/s \([1-9][0-9]* tokens in [0-9.]+ ms\)$" "$tmp/bench.out" 2>/dev/null ||
	fail "--bench-exit printed '$(cat "$tmp/bench.out" 2>/dev/null)'"

[ $fails -eq 0 ] || exit 1
echo "tui.sh: ok"
