#!/bin/sh
# crash-loop.sh: kill -9 a saving chat at random moments, reopen, repeat.
#
# Each round pipes a scripted three-turn dialogue into `kvscope chat --db`
# (resuming the session once it exists) with KVSCOPE_LOG=info, so stderr
# says "turn N saved" for every turn whose transaction committed, and kills
# it with SIGKILL after a random delay (during loading, prefill, decode,
# the snapshot or the commit). After every round:
#   - SQLite's integrity check says ok (kvscope sessions check);
#   - every turn ever reported saved is in the database, with the text sent;
#   - turn indices run 0..n-1 without gaps, and every turn marked complete
#     has its token rows (a turn is never half-written);
#   - the cold tier (--cold on: what the policy evicts is written after each
#     commit, in its own transaction) holds only whole blocks, each with
#     its K/V rows and full-text row, and some were written by the end.
# CRASH_ROUNDS sets the number of rounds (default 50).
set -u
. "${KVSCOPE_SRCDIR:?}/tests/e2e/lib.sh"
rounds=${CRASH_ROUNDS:-50}

"$bin" sessions list --db "$tmp/probe.db" >/dev/null 2>"$tmp/e"
if grep -q "built without SQLite" "$tmp/e"; then
	echo "crash-loop.sh: built without SQLite; nothing to crash (sessions.sh checks the stub)"
	exit 0
fi
need_model
command -v python3 >/dev/null || { echo "crash-loop.sh: python3 is needed to read the export" >&2; exit 1; }

db=$tmp/crash.db
: >"$tmp/saved"   # "N TEXT" per turn reported saved, over all rounds
# (exec: the background job's pid is kvscope's own, so kill -9 hits it)
chat() {
	KVSCOPE_LOG=info exec "$bin" chat --db "$1" $2 --temp 0 -n 8 --policy streaming --kv-budget 128 \
		--cold on --cold-block 16 \
		<"$tmp/in" >"$tmp/out" 2>"$tmp/err"
}
# How long one uninterrupted round takes (on a scratch database), so the
# kills spread over it: delays uniform in 0.3..1.1 times that (loading the
# model is the first third or so; the rest is prefill, decode and commits).
# At least a quarter of the rounds must be cut short, or the test says so.
printf 'say hi\nname a fruit\ncount to three\n' >"$tmp/in"
(chat "$tmp/timing.db" "--title timing") || { echo "crash-loop.sh: chat failed: $(cat "$tmp/err")" >&2; exit 1; }
t0=$(date +%s%N)
(chat "$tmp/timing.db" "--resume timing") || { echo "crash-loop.sh: chat failed: $(cat "$tmp/err")" >&2; exit 1; }
t1=$(date +%s%N)
span_ms=$(( (t1 - t0) / 1000000 * 11 / 10 + 1 ))
# The span adapts as the rounds go (a busy machine is slower): a round that
# finished before its kill shortens it, one that saved nothing lengthens it.
fracs=$(od -An -N$((rounds * 2)) -tu2 /dev/urandom | tr -s ' ' '\n' | grep . |
	awk '{ printf "%d\n", 300 + $1 % 800 }')
r=0
killed_mid=0
for f in $fracs; do
	r=$((r + 1))
	d=$(awk -v s="$span_ms" -v f="$f" 'BEGIN { printf "%.3f", s * f / 1000000 }')
	if "$bin" sessions show crash --db "$db" >/dev/null 2>&1; then
		how="--resume crash"
	else
		how="--title crash"
	fi
	printf 'round %d turn one: say hi\nround %d turn two: name a fruit\nround %d turn three: count to three\n' \
		"$r" "$r" "$r" >"$tmp/in"
	chat "$db" "$how" &
	pid=$!
	sleep "$d"
	kill -9 "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	# the turns this round reported saved: match them to their input lines in order
	n_saved=$(grep -c "turn [0-9]* saved" "$tmp/err")
	grep -o "turn [0-9]* saved" "$tmp/err" | awk '{ print $2 }' >"$tmp/idx"
	head -n "$n_saved" "$tmp/in" | paste -d ' ' "$tmp/idx" - >>"$tmp/saved"
	if [ "$n_saved" -lt 3 ]; then killed_mid=$((killed_mid + 1)); else span_ms=$((span_ms * 3 / 4)); fi
	[ "$n_saved" -eq 0 ] && span_ms=$((span_ms * 9 / 8))

	check=$("$bin" sessions check --db "$db" 2>&1)
	if [ -s "$db" ] || [ "$n_saved" -gt 0 ]; then
		[ "$check" = ok ] || fail "round $r: integrity: $check"
	fi
	[ -s "$tmp/saved" ] || continue
	python3 - "$db" <<'PY' || fail "round $r: cold tier check failed"
import os, sqlite3, sys
c = sqlite3.connect(sys.argv[1])
# the K/V rows live in PATH-cold (schema 6); a kill between the two files'
# commits may leave the last flush's blocks without them (the next writer
# drops those): allowed only above every K/V row the session has
if os.path.exists(sys.argv[1] + "-cold"):
    c.execute("ATTACH DATABASE ? AS cold", (sys.argv[1] + "-cold",))
    kv = "(SELECT k.kv FROM cold.cold_kv k WHERE k.id = b.id)"
    cut = c.execute("SELECT count(*) FROM cold_blocks b WHERE kv_at = 1 AND %s IS NULL AND id < "
                    "(SELECT coalesce(max(id), 0) FROM cold.cold_kv k WHERE k.session_id = b.session_id)" % kv).fetchone()[0]
else:
    kv, cut = "NULL", 0
bad = c.execute("SELECT count(*) FROM cold_blocks b WHERE n_tokens < 1 OR n_tokens > 16 "
                "OR pos1 - pos0 + 1 <> n_tokens OR length(toks) <> 24 * n_tokens OR "
                "coalesce(length(%s), n_tokens * (SELECT bytes_per_token FROM cold_meta m WHERE m.session_id = b.session_id)) <> "
                "n_tokens * (SELECT bytes_per_token FROM cold_meta m WHERE m.session_id = b.session_id) OR "
                "(kv_at = 0 AND length(kv) <> n_tokens * (SELECT bytes_per_token FROM cold_meta m WHERE m.session_id = b.session_id))" % kv).fetchone()[0]
n = c.execute("SELECT count(*) FROM cold_blocks").fetchone()[0]
fts = c.execute("SELECT count(*) FROM cold_fts_docsize").fetchone()[0]
if bad or cut or fts != n:
    print("cold blocks: %d malformed, %d without K/V rows below the last, %d blocks but %d full-text rows" % (bad, cut, n, fts)); sys.exit(1)
PY
	"$bin" sessions export crash --format json --db "$db" >"$tmp/x.json" 2>"$tmp/x.err" ||
		{ fail "round $r: export: $(cat "$tmp/x.err")"; continue; }
	python3 - "$tmp/x.json" "$tmp/saved" "$r" <<'PY' || fail "round $r: database check failed"
import json, sys
d = json.load(open(sys.argv[1]))
turns = {t["index"]: t for t in d["turns"]}
ok = True
if sorted(turns) != list(range(len(turns))):
    print("turn indices have gaps: %s" % sorted(turns)); ok = False
for line in open(sys.argv[2]):
    idx, text = line.rstrip("\n").split(" ", 1)
    t = turns.get(int(idx))
    if t is None or t["user"] != text:
        print("reported saved turn %s (%r) is %s" % (idx, text, "missing" if t is None else "different: %r" % t["user"])); ok = False
for t in d["turns"]:
    if t["complete"] and t["tokens"] == 0:
        print("turn %d is complete but has no token rows" % t["index"]); ok = False
sys.exit(0 if ok else 1)
PY
done
n_turns=$(wc -l <"$tmp/saved")
echo "crash-loop.sh: $r rounds (kill span at the end ${span_ms} ms), $killed_mid killed before their last turn was saved, $n_turns turns reported saved and all present"
[ "$r" -ge "$rounds" ] || fail "only $r rounds ran"
[ "$killed_mid" -ge $((rounds / 4)) ] || fail "only $killed_mid of $r rounds were killed mid-run (delays too long?)"
[ "$n_turns" -gt 0 ] || fail "no turn was ever saved (delays too short?)"
n_cold=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM cold_blocks').fetchone()[0])" "$db")
echo "crash-loop.sh: $n_cold cold blocks at the end"
[ "$n_cold" -gt 0 ] || fail "no cold block was ever written"
[ "$fails" -eq 0 ]
