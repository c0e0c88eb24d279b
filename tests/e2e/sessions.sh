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
#   - crafted databases: a snapshot name "../victim" deletes nothing outside
#     the snapshot folder; a FIFO model path is refused, never hangs; titles
#     with escape sequences and invalid UTF-8 print escaped and export as
#     valid JSON (python3 -m json.tool); empty and blank ids are errors;
#   - several processes creating one database at once all succeed;
#   - read-only media: list, show and export work, writes say why;
#   - list, show and export to a full disk exit 1 with one line;
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

# ---- crafted databases and odd files (nothing outside the database's
# place is written or deleted; what it holds cannot drive the terminal)
if command -v python3 >/dev/null && python3 -c 'import sqlite3' 2>/dev/null; then
	# sql DB STATEMENT [ARGS...]: run one statement with python's sqlite3;
	# an argument 0xHEX is bytes stored as TEXT (invalid UTF-8 included)
	sql() {
		python3 - "$@" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
args = [bytes.fromhex(a[2:]) if a.startswith("0x") else a for a in sys.argv[3:]]
db.execute(sys.argv[2], args)
db.commit()
PY
	}
	cdb=$tmp/crafted.db
	printf 'Hi!\n' | "$bin" chat --temp 0 -n 4 --db "$cdb" --title craft >/dev/null 2>&1 ||
		fail "chat for the crafted database"
	# a snapshot name that climbs out of the snapshot folder
	printf precious >"$tmp/victim.kvs"
	sql "$cdb" "UPDATE snapshots SET sha256 = ?" "../victim"
	"$bin" sessions delete craft --db "$cdb" 2>"$tmp/e" || fail "delete a crafted session: $(cat "$tmp/e")"
	[ -f "$tmp/victim.kvs" ] || fail "sessions delete removed a file outside the snapshot folder"
	"$bin" sessions vacuum --db "$cdb" 2>"$tmp/e" || fail "vacuum: $(cat "$tmp/e")"
	[ -f "$tmp/victim.kvs" ] || fail "sessions vacuum removed a file outside the snapshot folder"

	# a model path that is a FIFO: export and resume say so, never hang
	printf 'Hi!\n' | "$bin" chat --temp 0 -n 4 --db "$cdb" --title fifo >/dev/null 2>&1
	fid=$("$bin" sessions list --db "$cdb" | awk '$NF == "fifo" { print $1 }')
	mkfifo "$tmp/model.fifo"
	sql "$cdb" "UPDATE sessions SET model_path = ? WHERE title = 'fifo'" "$tmp/model.fifo"
	timeout 20 "$bin" sessions export fifo --db "$cdb" >"$tmp/o" 2>"$tmp/e" ||
		fail "export with a FIFO model path: exit $? ($(cat "$tmp/e"))"
	grep -q "is a FIFO" "$tmp/e" && [ "$(grep -c . "$tmp/e")" -eq 1 ] && grep -q "^# fifo" "$tmp/o" ||
		fail "export with a FIFO model path: $(cat "$tmp/e")"
	expect_bad 2 "is a FIFO" timeout 20 "$bin" chat --db "$cdb" --resume fifo
	rm -f "$tmp/model.fifo"

	# titles with escape sequences, quotes, backslashes, newlines and bytes
	# that are not UTF-8: printed escaped, exported as valid JSON
	evil=22205c200a1b5d303b70776e64071b5b324a07c29bfffe09656e64
	sql "$cdb" "UPDATE sessions SET title = CAST(? AS TEXT), sampler = CAST(? AS TEXT) WHERE title = 'fifo'" \
		"0x$evil" "0x$evil"
	sql "$cdb" "UPDATE turns SET user_text = CAST(? AS TEXT), reply = CAST(? AS TEXT)" "0x$evil" "0x$evil"
	clean() { # FILE [ALLOWED]: no control byte (C1 too) but newlines and ALLOWED, valid UTF-8
		python3 - "$1" "${2:-}" <<'PY'
import sys
t = open(sys.argv[1], "rb").read().decode("utf-8")
ok = "\n" + sys.argv[2].replace("TAB", "\t")
bad = [c for c in t if (ord(c) < 32 and c not in ok) or 0x7f <= ord(c) <= 0x9f]
sys.exit(1 if bad else 0)
PY
	}
	"$bin" sessions list --db "$cdb" >"$tmp/l" 2>&1 || fail "list a crafted database"
	clean "$tmp/l" && grep -qF '\x1b]0;pwnd\x07' "$tmp/l" || fail "sessions list printed raw control bytes: $(od -c "$tmp/l" | head)"
	"$bin" sessions show "$fid" --db "$cdb" >"$tmp/s" 2>&1 || fail "show a crafted session"
	clean "$tmp/s" && grep -qF '\xff\xfe' "$tmp/s" || fail "sessions show printed raw control bytes: $(od -c "$tmp/s" | head)"
	"$bin" sessions export "$fid" --db "$cdb" >"$tmp/x.md" 2>/dev/null || fail "export md of a crafted session"
	clean "$tmp/x.md" TAB || fail "export md has raw control bytes: $(od -c "$tmp/x.md" | head)"
	"$bin" sessions export "$fid" --format json --db "$cdb" >"$tmp/x.json" 2>/dev/null || fail "export json of a crafted session"
	python3 -m json.tool "$tmp/x.json" >/dev/null || fail "export json of a crafted session does not parse: $(head -c 300 "$tmp/x.json")"
	python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d["title"] == "\" \\ \n\x1b]0;pwnd\x07\x1b[2J\x07\x9b\ufffd\ufffd\tend", d["title"]' "$tmp/x.json" ||
		fail "export json: the title did not come back as stored (bad bytes as U+FFFD)"
	# a crafted detail, infinite times
	sql "$cdb" "INSERT INTO memory_events (session_id, turn, at, kind, n_tokens, detail) VALUES (?, 0, 1e999, 'evict', 1, ?)" "$fid" '{"not json'
	sql "$cdb" "UPDATE sessions SET created = 1e999"
	"$bin" sessions export "$fid" --format json --db "$cdb" >"$tmp/x.json" 2>/dev/null || fail "export json with a crafted detail"
	python3 -m json.tool "$tmp/x.json" >/dev/null || fail "export json with a crafted detail does not parse: $(head -c 300 "$tmp/x.json")"
	# the title in the resume recap too
	printf '' | "$bin" chat --db "$cdb" --resume "$fid" >/dev/null 2>"$tmp/e"
	clean "$tmp/e" || fail "the resume recap printed raw control bytes: $(od -c "$tmp/e" | head)"
	# titles from the command line: one line of UTF-8 text
	expect_bad 2 "--title: session title has a control character" "$bin" chat --db "$cdb" --title "$(printf 'a\033[2Jb')"
	expect_bad 2 "--title: session title is not valid UTF-8" "$bin" chat --db "$cdb" --title "$(printf 'a\377b')"
	expect_bad 2 "--title: empty session title" "$bin" chat --db "$cdb" --title ""
else
	echo "sessions.sh: no python3 with sqlite3: crafted databases not tested"
fi

# an empty or blank id or title is an error (an unset shell variable must
# not pick the latest session); ids are digits only, titles match exactly
for cmd in show export delete; do
	expect_bad 2 "empty session id or title" "$bin" sessions $cmd "" --db "$db"
	expect_bad 2 "empty session id or title" "$bin" sessions $cmd " " --db "$db"
done
expect_bad 2 "no session with id or title ' 1'" "$bin" sessions show " 1" --db "$db"
expect_bad 2 "--resume: empty session id or title" "$bin" chat --db "$db" --resume ""
"$bin" sessions show 1 --db "$db" >/dev/null 2>&1 || fail "an empty id deleted a session"
expect_bad 2 "--db: empty file name" "$bin" sessions list --db ""

# new databases opened by several processes at once: each succeeds, the
# schema is created once (two used to fail "table sessions already exists")
i=0
while [ $i -lt 30 ]; do
	rm -f "$tmp/race.db" "$tmp/race.db-wal" "$tmp/race.db-shm"
	"$bin" sessions vacuum --db "$tmp/race.db" 2>"$tmp/r1" &
	"$bin" sessions vacuum --db "$tmp/race.db" 2>"$tmp/r2" &
	"$bin" sessions vacuum --db "$tmp/race.db" 2>"$tmp/r3" &
	wait
	[ -s "$tmp/r1" ] || [ -s "$tmp/r2" ] || [ -s "$tmp/r3" ] &&
		fail "concurrent first opens: $(cat "$tmp/r1" "$tmp/r2" "$tmp/r3")"
	i=$((i + 1))
done
for r in 1 2 3; do
	rm -f "$tmp/race.db" "$tmp/race.db-wal" "$tmp/race.db-shm"
	printf 'Hi!\n' | "$bin" chat --temp 0 -n 2 --db "$tmp/race.db" --title a >/dev/null 2>"$tmp/r1" &
	p1=$!
	printf 'Hi!\n' | "$bin" chat --temp 0 -n 2 --db "$tmp/race.db" --title b >/dev/null 2>"$tmp/r2" &
	p2=$!
	wait $p1 || fail "concurrent chat a: $(cat "$tmp/r1")"
	wait $p2 || fail "concurrent chat b: $(cat "$tmp/r2")"
	[ -s "$tmp/r1" ] || [ -s "$tmp/r2" ] && fail "concurrent chats: $(cat "$tmp/r1" "$tmp/r2")"
	n=$("$bin" sessions list --db "$tmp/race.db" | grep -c ' [ab]$')
	[ "$n" -eq 2 ] || fail "concurrent chats saved $n sessions, expected 2"
done

# read-only media: a database in a folder that is not writable is read
# (list, show, export), and writing says why in one line. Root writes
# anyway, so as root the commands run as nobody (setpriv).
ro=$tmp/ro
mkdir "$ro" && cp "$db" "$ro/m.db" && chmod 555 "$ro"
as=
if [ "$(id -u)" -eq 0 ]; then
	command -v setpriv >/dev/null && chmod 755 "$tmp" && as="setpriv --reuid=65534 --regid=65534 --clear-groups"
fi
if [ "$(id -u)" -ne 0 ] || [ -n "$as" ]; then
	$as "$bin" sessions list --db "$ro/m.db" >"$tmp/l" 2>"$tmp/e" || fail "list on read-only media: $(cat "$tmp/e")"
	grep -q " recall$" "$tmp/l" || fail "list on read-only media: $(cat "$tmp/l")"
	$as "$bin" sessions show recall --db "$ro/m.db" >/dev/null 2>"$tmp/e" || fail "show on read-only media: $(cat "$tmp/e")"
	$as "$bin" sessions export recall --format json --db "$ro/m.db" >"$tmp/ro.json" 2>/dev/null ||
		fail "export on read-only media"
	grep -q '"title":"recall"' "$tmp/ro.json" || fail "export on read-only media: $(head -c 200 "$tmp/ro.json")"
	expect_bad 1 "read-only (folder not writable); cannot save" $as "$bin" sessions delete recall --db "$ro/m.db"
	printf 'Hi!\n' | $as "$bin" chat -n 2 --db "$ro/m.db" >/dev/null 2>"$tmp/e" && fail "chat saved to read-only media"
	[ "$(grep -c . "$tmp/e")" -eq 1 ] && grep -q "read-only (folder not writable); cannot save" "$tmp/e" ||
		fail "chat on read-only media: $(cat "$tmp/e")"
	[ "$(ls -A "$ro")" = m.db ] || fail "read-only media got files: $(ls -A "$ro")"
else
	echo "sessions.sh: root without setpriv: read-only media not tested"
fi
chmod 755 "$ro"

# output errors: list and export to a full disk exit 1 with one line
for c in "list" "export recall" "export recall --format json" "show recall"; do
	"$bin" sessions $c --db "$db" >/dev/full 2>"$tmp/e"
	rc=$?
	[ "$rc" -eq 1 ] && [ "$(grep -c . "$tmp/e")" -eq 1 ] &&
		grep -q "^kvscope: write error: No space left on device$" "$tmp/e" ||
		fail "sessions $c > /dev/full: exit $rc, $(cat "$tmp/e")"
done

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
