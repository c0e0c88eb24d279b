#!/bin/sh
# cold.sh: the cold tier end to end on the default model (chat --cold on).
#   - a fact of turn 1, evicted under --policy streaming --kv-budget 64, is
#     written to the cold tier, recalled at the question (the trace names
#     the block of turn 1 with its BM25 score and the tokens placed back at
#     their positions) and answered (temperature 0);
#   - sessions show counts the cold blocks and tokens, and the recalls (memory
#     events of kind recall);
#   - --cold-max caps the tokens per session, one cold-drop memory event
#     per block dropped;
#   - without --db the cold tier lives in a temporary database that is
#     said once and gone at exit;
#   - a cold tier written by another model is refused with one line and
#     left as it is; the chat goes on;
#   - the default scorer (both) probes: the question's recall gives each
#     block a summary score;
#   - eval recall --cold on at a small size: the fact evicted without the
#     cold tier is held again at the question with it;
#   - bad option values get one line.
set -u
. "${KVSCOPE_SRCDIR:?}/tests/e2e/lib.sh"

"$bin" sessions list --db "$tmp/x.db" >/dev/null 2>"$tmp/e"
if grep -q "built without SQLite" "$tmp/e"; then
	echo "cold.sh: built without SQLite; nothing to test"
	exit 77
fi
need_model
command -v python3 >/dev/null 2>&1 || { echo "cold.sh: needs python3" >&2; exit 77; }

opts="--temp 0 -n 40 --policy streaming --kv-budget 64 --cold on --cold-block 16 --recall-budget 32"
dialogue() {
	printf '%s\n' 'My secret code word is TIGER-42. Please remember it.' \
		'Tell me about the weather on Mars.' 'Write a short poem about the sea.' \
		'What is my secret code word?'
}
db=$tmp/c.db
dialogue | "$bin" chat --db "$db" $opts --trace "$tmp/t.jsonl" >"$tmp/out" 2>"$tmp/err" ||
	fail "chat --cold on: exit $? ($(cat "$tmp/err"))"
python3 - "$db" "$tmp/t.jsonl" "$tmp/out" <<'PY' || fail "the recall of turn 1 (see above)"
import json, sqlite3, sys
db, trace, out = sys.argv[1:4]
ev = [json.loads(l) for l in open(trace)]
writes = [e for e in ev if e["event"] == "cold-write"]
recalls = [e for e in ev if e["event"] == "cold-recall"]
placed = [e for e in ev if e["event"] == "recall"]
c = sqlite3.connect(db)
blocks = c.execute("SELECT id, turn, pos0, pos1, text FROM cold_blocks").fetchall()
ok = True
def need(cond, msg):
    global ok
    if not cond:
        print("cold.sh:", msg, file=sys.stderr)
        ok = False
need(sum(w["tokens"] for w in writes) == c.execute("SELECT sum(n_tokens) FROM cold_blocks").fetchone()[0],
     "cold-write tokens differ from the rows")
fact = [b for b in blocks if "TIGER" in b[4]]
need(len(fact) >= 1, "no cold block holds TIGER: %r" % [b[4] for b in blocks])
last = [r for r in recalls if r["index"] == 3]
need(len(last) == 1, "no recall at the question: %r" % recalls)
if fact and last:
    ids = [b["id"] for b in last[0]["blocks"]]
    need(fact[0][0] in ids, "the question did not recall the TIGER block %d: %r" % (fact[0][0], last[0]))
    hit = [b for b in last[0]["blocks"] if b["id"] == fact[0][0]]
    need(hit and hit[0]["turn"] == 1 and hit[0]["bm25"] > 0, "the block of turn 1 with a BM25 score: %r" % last[0])
    need(last[0].get("scorer") == "both" and all(b["summary"] is not None for b in last[0]["blocks"]),
         "the default scorer gives every block a summary score: %r" % last[0])
    # the tokens placed back: the block's positions, flagged, in original order
    toks = [t for p in placed if p["turn"] == 4 for t in p["recalled"]]
    pos = [t["orig_pos"] for t in toks]
    need(all(p in pos for p in range(fact[0][2], fact[0][3] + 1)),
         "recalled positions %r lack the block %d..%d" % (pos, fact[0][2], fact[0][3]))
    need(pos == sorted(pos), "recalled tokens out of order: %r" % pos)
reply = open(out).read().splitlines()[-1]  # the last reply (a reply may span lines)
print("cold.sh: the answer with the cold tier: %s" % reply)
need("TIGER-42" in reply, "the answer lacks TIGER-42: %r" % reply)
sys.exit(0 if ok else 1)
PY
"$bin" sessions show 1 --db "$db" >"$tmp/show" 2>&1 || fail "sessions show: $(cat "$tmp/show")"
n=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT sum(n_tokens) FROM cold_blocks').fetchone()[0])" "$db")
grep -q "^cold .* blocks, $n tokens" "$tmp/show" || fail "sessions show lacks the cold row ($n tokens): $(cat "$tmp/show")"
# the recalls are memory events of kind recall: sessions show counts them
r=$(python3 -c "import sqlite3,sys; print('%d, %d' % sqlite3.connect(sys.argv[1]).execute(\"SELECT count(*), coalesce(sum(n_tokens), 0) FROM memory_events WHERE kind = 'recall'\").fetchone())" "$db")
case $r in 0,*) fail "no recall memory event" ;; esac
grep -q "^recalls  $r tokens back" "$tmp/show" || fail "sessions show lacks the recalls row ($r): $(cat "$tmp/show")"
"$bin" sessions check --db "$db" >/dev/null 2>&1 || fail "sessions check after the cold writes"

# --cold-max: at most 40 tokens stay, a memory event per block dropped
dialogue | "$bin" chat --db "$tmp/m.db" $opts --cold-max 40 >/dev/null 2>"$tmp/err" ||
	fail "chat --cold-max: $(cat "$tmp/err")"
python3 - "$tmp/m.db" <<'PY' || fail "--cold-max 40"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
kept = c.execute("SELECT coalesce(sum(n_tokens), 0) FROM cold_blocks").fetchone()[0]
drops = c.execute("SELECT count(*), coalesce(sum(n_tokens), 0) FROM memory_events WHERE kind = 'cold-drop'").fetchone()
assert kept <= 40, "%d cold tokens kept, over 40" % kept
assert drops[0] > 0 and drops[1] > 0, "no cold-drop events: %r" % (drops,)
PY

# without --db: a temporary database, said once, gone at exit
mkdir "$tmp/tmpd"
dialogue | TMPDIR=$tmp/tmpd "$bin" chat $opts >/dev/null 2>"$tmp/err" || fail "chat --cold on without --db: $(cat "$tmp/err")"
[ "$(grep -c 'temporary database' "$tmp/err")" -eq 1 ] || fail "the temporary database not said once: $(cat "$tmp/err")"
[ -z "$(ls -A "$tmp/tmpd")" ] || fail "left behind: $(ls -A "$tmp/tmpd")"

# another model's cold tier: one line, rows unchanged, the chat goes on
python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE cold_meta SET model_sha256 = '$(printf 'f%.0s' $(seq 64))'\"); c.commit()" "$db"
before=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT count(*), sum(n_tokens) FROM cold_blocks').fetchone())" "$db")
printf 'Hello again.\n' | "$bin" chat --db "$db" --resume $opts >"$tmp/out" 2>"$tmp/err" || fail "resume with a foreign cold tier: $(cat "$tmp/err")"
[ "$(grep -c 'another model' "$tmp/err")" -eq 1 ] || fail "foreign cold tier: $(cat "$tmp/err")"
[ -s "$tmp/out" ] || fail "no reply after the refusal"
after=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT count(*), sum(n_tokens) FROM cold_blocks').fetchone())" "$db")
[ "$before" = "$after" ] || fail "the foreign cold tier changed: $before -> $after"

# eval recall at a small size: the fact is evicted without the cold tier
# and held again at the question with it
ev="--policy streaming --kv-budget 96 --turns 5 --facts code --samples 1 --json"
"$bin" eval recall $ev >"$tmp/e0" 2>"$tmp/err" || fail "eval recall: $(cat "$tmp/err")"
"$bin" eval recall $ev --cold on --cold-block 16 --recall-budget 48 >"$tmp/e1" 2>"$tmp/err" ||
	fail "eval recall --cold on: $(cat "$tmp/err")"
python3 - "$tmp/e0" "$tmp/e1" <<'PY' || fail "eval recall --cold on"
import json, sys
def cell(path):
    lines = open(path).read().splitlines()
    return [c for c in json.loads(lines[-1])["cells"] if c["kind"] == "code"][0], lines
off, _ = cell(sys.argv[1])
on, lines = cell(sys.argv[2])
assert off["held_none"] == 1, "without the cold tier the fact was not evicted: %r" % off
assert on["held_all"] == 1, "with the cold tier the fact is not held at the question: %r" % on
rec = [l for l in lines if l.startswith("cold tier: ")]
assert rec and int(rec[0].split()[2]) > 0, "no recall reported: %r" % rec
print("cold.sh: eval recall, code at 5 turns: without %s, with the cold tier %s" % (
    "right" if off["right"] else "wrong", "right" if on["right"] else "wrong"))
PY
expect_bad 2 "never evicts" "$bin" eval recall --policy full --cold on --turns 1 --samples 1

# option values
expect_bad 2 "expected on or off" "$bin" chat --cold maybe
expect_bad 2 "expected one of off|fts|summary|both" "$bin" chat --recall bm25
expect_bad 2 "cold-block" "$bin" chat --cold-block 0

[ "$fails" -eq 0 ] && echo "cold.sh: ok"
[ "$fails" -eq 0 ]
