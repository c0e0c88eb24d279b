#!/bin/sh
# sessions.sh: saved sessions end to end on the default model.
#   - a resume recaps the last exchanges on stderr (stdout keeps replies only);
#   - a resumed dialogue continues exactly: a chat saved after two turns and
#     resumed from its KV snapshot gives, at temperature 0, the same third
#     reply as the same three turns in one process; resumed by recompute
#     (snapshot deleted) it still recalls the fact whose tokens were kept;
#   - sessions list/show/export/delete/vacuum work and export names what was
#     evicted and why (JSON that parses);
#   - a garbage, a truncated and a foreign database each get one clear line
#     and stay byte for byte as they were; resuming with another model is
#     refused;
#   - built without SQLite, every sessions command says so in one line.
set -u
. "${KVSCOPE_SRCDIR:?}/tests/e2e/lib.sh"

# Built without SQLite: the one-line message, nothing else to test.
"$bin" sessions list --db "$tmp/x.db" >"$tmp/o" 2>"$tmp/e"
if grep -q "built without SQLite" "$tmp/e"; then
	[ "$(grep -c . "$tmp/e")" -eq 1 ] || fail "stub: more than one line: $(cat "$tmp/e")"
	printf 'hi\n' | "$bin" chat --db "$tmp/x.db" -n 4 >/dev/null 2>"$tmp/e"
	grep -q "built without SQLite" "$tmp/e" || fail "chat --db without SQLite: $(cat "$tmp/e")"
	[ "$fails" -eq 0 ] && echo "sessions.sh: built without SQLite; the stub says so" && exit 0
	exit 1
fi

need_model

db=$tmp/m.db
opts="--temp 0 -n 20 --policy streaming --kv-budget 256"
t1='Remember the code word: Zorblax.'
t2='Tell me a short fact about the moon.'
t3='What is the code word?'

# one process, three turns
printf '%s\n%s\n%s\n' "$t1" "$t2" "$t3" | "$bin" chat $opts >"$tmp/whole" 2>"$tmp/whole.err" ||
	fail "chat: $(cat "$tmp/whole.err")"
# two turns saved, then resumed from the snapshot for the third
printf '%s\n%s\n' "$t1" "$t2" | "$bin" chat $opts --db "$db" --title recall >"$tmp/a" 2>"$tmp/a.err" ||
	fail "chat --db: $(cat "$tmp/a.err")"
printf '%s\n' "$t3" | "$bin" chat --temp 0 -n 20 --db "$db" --resume recall >"$tmp/b" 2>"$tmp/b.err" ||
	fail "chat --resume: $(cat "$tmp/b.err")"
grep -q "from the KV snapshot" "$tmp/b.err" || fail "resume did not use the snapshot: $(cat "$tmp/b.err")"
[ "$(sed -n 3p "$tmp/whole")" = "$(cat "$tmp/b")" ] ||
	fail "resumed reply '$(cat "$tmp/b")' differs from the uninterrupted '$(sed -n 3p "$tmp/whole")'"
grep -q Zorblax "$tmp/b" || fail "resumed dialogue does not recall the code word: $(cat "$tmp/b")"
# the recap on stderr: both saved turns as said, each reply as printed
# then, and the separator with the count the resume line gives
grep -qxF "you> $t1" "$tmp/b.err" || fail "recap lacks the first turn: $(cat "$tmp/b.err")"
grep -qxF "you> $t2" "$tmp/b.err" || fail "recap lacks the second turn: $(cat "$tmp/b.err")"
grep -qxF "model> $(sed -n 2p "$tmp/a")" "$tmp/b.err" ||
	fail "recap lacks the reply '$(sed -n 2p "$tmp/a")': $(cat "$tmp/b.err")"
n=$(sed -n 's/^kvscope: resumed session 1: \([0-9]*\) tokens.*/\1/p' "$tmp/b.err")
grep -qx -- "-- resumed 'recall' (2 turns, $n tokens retained) --" "$tmp/b.err" ||
	fail "recap separator: $(cat "$tmp/b.err")"

# the recompute path: no snapshot files
rm -rf "$db-kv"
printf '%s\n' "$t3" | "$bin" chat --temp 0 -n 20 --db "$db" --resume 1 >"$tmp/c" 2>"$tmp/c.err" ||
	fail "chat --resume (recompute): $(cat "$tmp/c.err")"
grep -q "recomputed" "$tmp/c.err" || fail "resume without a snapshot: $(cat "$tmp/c.err")"
grep -q Zorblax "$tmp/c" || fail "recomputed dialogue does not recall the code word: $(cat "$tmp/c")"

# sessions commands
"$bin" sessions list --db "$db" >"$tmp/l" 2>"$tmp/l.err" || fail "sessions list: $(cat "$tmp/l.err")"
grep -q "recall" "$tmp/l" || fail "sessions list lacks the session: $(cat "$tmp/l")"
[ "$(awk 'NR == 2 { print $4 }' "$tmp/l")" = 4 ] || fail "sessions list: expected 4 turns: $(cat "$tmp/l")"
# a resume with nothing to say: the recap of the last 3 of 4 turns, and
# nothing on stdout
"$bin" chat --db "$db" --resume recall </dev/null >"$tmp/d" 2>"$tmp/d.err" ||
	fail "chat --resume, no input: $(cat "$tmp/d.err")"
[ ! -s "$tmp/d" ] || fail "chat --resume wrote to stdout: $(cat "$tmp/d")"
grep -qxF "(1 earlier turn: kvscope sessions export 1)" "$tmp/d.err" ||
	fail "recap of 4 turns: $(cat "$tmp/d.err")"
[ "$(grep -c '^you> ' "$tmp/d.err")" = 3 ] || fail "recap: expected 3 turns: $(cat "$tmp/d.err")"
grep -qxF "you> $t1" "$tmp/d.err" && fail "recap shows the turn it says it left out"
grep -q "^-- resumed 'recall' (4 turns, [0-9]* tokens retained) --$" "$tmp/d.err" ||
	fail "recap separator (4 turns): $(cat "$tmp/d.err")"
"$bin" sessions show recall --db "$db" >"$tmp/s" || fail "sessions show"
grep -q "streaming" "$tmp/s" || fail "sessions show lacks the policy: $(cat "$tmp/s")"
"$bin" sessions export recall --db "$db" >"$tmp/x.md" || fail "sessions export md"
grep -q "Zorblax" "$tmp/x.md" || fail "export lacks the transcript"
"$bin" sessions export 1 --format json --db "$db" >"$tmp/x.json" || fail "sessions export json"
if command -v python3 >/dev/null; then
	python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert len(d["turns"]) == 4' "$tmp/x.json" ||
		fail "export json does not parse or lacks turns"
fi
# a small budget evicts: the export says what and why
printf 'one two three four five six seven\nAnd now count backwards.\nAnd forwards again.\n' |
	"$bin" chat --temp 0 -n 24 --policy sirllm --kv-budget 32 --db "$db" --title small >/dev/null 2>&1
"$bin" sessions export small --db "$db" >"$tmp/small.md" || fail "export small"
grep -q "evicted .* tokens (cause: " "$tmp/small.md" || fail "export lacks evictions: $(cat "$tmp/small.md")"
grep -q "policy sirllm" "$tmp/small.md" || fail "export lacks the policy of its evictions"
"$bin" sessions delete small --db "$db" 2>/dev/null || fail "sessions delete"
"$bin" sessions show small --db "$db" >/dev/null 2>"$tmp/e" && fail "deleted session still shown"
grep -q "no session with id or title 'small'" "$tmp/e" || fail "show deleted: $(cat "$tmp/e")"
"$bin" sessions vacuum --db "$db" || fail "sessions vacuum"
"$bin" sessions export 1 --format yaml --db "$db" >/dev/null 2>"$tmp/e" && fail "export yaml accepted"
grep -q "expected md or json" "$tmp/e" || fail "export yaml: $(cat "$tmp/e")"

# resuming with another model file is refused (the tiny model would not fit anyway)
cp "$model" "$tmp/other.gguf" && printf 'x' >>"$tmp/other.gguf"
printf 'hi\n' | "$bin" chat --model "$tmp/other.gguf" --db "$db" --resume 1 >/dev/null 2>"$tmp/e" &&
	fail "resume with another model accepted"
grep -q "same model file" "$tmp/e" || fail "resume with another model: $(cat "$tmp/e")"
rm -f "$tmp/other.gguf"

# bad databases: one line, file unchanged
check_refused() {
	f=$1 pat=$2
	cp "$f" "$tmp/before"
	"$bin" sessions list --db "$f" >"$tmp/o" 2>"$tmp/e" && fail "$f accepted"
	[ "$(grep -c . "$tmp/e")" -eq 1 ] || fail "$f: expected one line: $(cat "$tmp/e")"
	grep -q "$pat" "$tmp/e" || fail "$f: '$(cat "$tmp/e")' lacks '$pat'"
	printf 'hi\n' | "$bin" chat -n 2 --db "$f" >/dev/null 2>"$tmp/e" && fail "chat on $f accepted"
	grep -q "$pat" "$tmp/e" || fail "chat on $f: '$(cat "$tmp/e")' lacks '$pat'"
	cmp -s "$f" "$tmp/before" || fail "$f was modified"
	[ ! -e "$f-wal" ] || fail "$f got a WAL file"
}
head -c 10000 /dev/urandom >"$tmp/garbage.db"
check_refused "$tmp/garbage.db" "not a SQLite database"
head -c 3000 "$db" >"$tmp/trunc.db"
check_refused "$tmp/trunc.db" "truncated"
if command -v sqlite3 >/dev/null; then
	sqlite3 "$tmp/foreign.db" "CREATE TABLE t (x); INSERT INTO t VALUES (1);"
	check_refused "$tmp/foreign.db" "another program"
fi

[ "$fails" -eq 0 ] && echo "sessions.sh: ok"
[ "$fails" -eq 0 ]
