#!/bin/sh
# tui-resume.sh: how long the workbench takes to resume a long saved session
# and show its transcript. One exchange is saved with `kvscope chat`, then
# the database gets copies of it until the session has TURNS turns (the
# sqlite3 shell adds them: user text ~80 bytes, a ~2 KB reply, as long
# chats have), beside the one-turn original. The workbench runs in a
# detached 160x45 tmux pane; each run types `:load TITLE` and times Enter
# to the moment the separator line ("resumed 'TITLE' (N turns") is on the
# screen, polling as fast as tmux answers (a few ms). The long and the
# one-turn session alternate, so that load on a shared machine hits both
# alike; medians are printed, and their difference is what the transcript
# costs.
#
# usage: bench/tui-resume.sh [KVSCOPE_BIN] [REPS] [TURNS]
set -u
bin=${1:-${KVSCOPE_BIN:-./kvscope}}
reps=${2:-5}
turns=${3:-2000}
tmp=$(mktemp -d)
sock=kvscope-bench-$$
T() { tmux -L "$sock" -f /dev/null "$@"; }
trap 'T kill-server 2>/dev/null; rm -rf "$tmp"' EXIT

command -v sqlite3 >/dev/null || { echo "tui-resume.sh: needs the sqlite3 shell" >&2; exit 1; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
now() { date +%s.%N; }

echo "command: $0 $bin $reps $turns"
echo "machine: $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "commit:  $(git -C "$(dirname "$0")/.." rev-parse --short HEAD 2>/dev/null || echo '?')"

# session 1 'short': one exchange; session 2 'long': the same, then copies
printf 'Tell me a short fact about the moon.\n' |
	"$bin" chat --temp 0 -n 20 --db "$tmp/m.db" --title short >/dev/null 2>"$tmp/err" ||
	{ cat "$tmp/err" >&2; exit 1; }
printf 'Tell me a short fact about the moon.\n' |
	"$bin" chat --temp 0 -n 20 --db "$tmp/m.db" --title long >/dev/null 2>"$tmp/err" ||
	{ cat "$tmp/err" >&2; exit 1; }
sqlite3 "$tmp/m.db" "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $turns - 1)
	INSERT INTO turns SELECT 2, i, 'user', 'Question ' || i || ': tell me something about the number '
	|| i || ', in a few sentences.', 'Reply ' || i || '. ' || replace(hex(zeroblob(40)), '00',
	'The number is interesting because it has digits. '), 10, 60, 1.0, 1.0, 'eos', 1, 0, 0 FROM n;"
echo "sessions: short 1 turn; long $(sqlite3 "$tmp/m.db" "SELECT count(*) FROM turns WHERE session_id = 2") turns, $(sqlite3 "$tmp/m.db" "SELECT sum(length(user_text) + length(reply)) FROM turns WHERE session_id = 2") bytes of text"

# load TITLE N: seconds from Enter on ':load TITLE' to the separator
load() {
	T send-keys -t kv -l ":load $1"
	t0=$(now)
	T send-keys -t kv Enter
	n=0
	until T capture-pane -p -t kv | grep -q "resumed '$1' ($2 turn" || [ $n -gt 5000 ]; do
		n=$((n + 1))
	done
	t1=$(now)
	[ $n -gt 5000 ] && { echo "tui-resume.sh: '$1' never showed" >&2; exit 1; }
	echo "$t1 - $t0" | bc
}

T new-session -d -s kv -x 160 -y 45 "TERM=xterm-256color '$bin' --db '$tmp/m.db' -n 8 2>'$tmp/tui.err'; sleep 600"
n=0
until T capture-pane -p -t kv | grep -q "ctx [0-9]" || [ $n -gt 600 ]; do sleep 0.1; n=$((n + 1)); done
i=0
while [ $i -lt "$reps" ]; do
	load short 1 >>"$tmp/short"
	load long "$turns" >>"$tmp/long"
	i=$((i + 1))
done
s=$(median <"$tmp/short")
l=$(median <"$tmp/long")
echo "short (1 turn)       load-to-shown s: $(tr '\n' ' ' <"$tmp/short")-> median $s"
echo "long ($turns turns) load-to-shown s: $(tr '\n' ' ' <"$tmp/long")-> median $l"
awk -v s="$s" -v l="$l" 'BEGIN { printf "long - short = %.3f s (the transcript), long / short = %.2f\n", l - s, l / s }'
