#!/bin/sh
# doc.sh: the pinned document and squeezed attention end to end on the
# default model: bad documents fail with one line (missing, binary, not
# UTF-8, empty, too long for the context); chat pins a document, clusters
# its keys once under --sparse squeezed (progress and a line on stderr)
# and keeps the clusters with the saved session, so that --resume restores
# them without clustering and with the same counts; clusters from another
# model are refused with one line and made again; --resume restores the
# session's --sparse spec, and an explicit --sparse overrides it with a
# line saying so; :doc loads and shows a document between turns.
set -u
. "${KVSCOPE_SRCDIR:?}/tests/e2e/lib.sh"

need_model

# a document: sentences, a needle in the middle
i=0
: >"$tmp/doc.txt"
while [ $i -lt 40 ]; do
	echo "Line $i of the report: the river was calm and the market was busy today." >>"$tmp/doc.txt"
	[ $i -eq 20 ] && echo "The secret code of the vault is 4721." >>"$tmp/doc.txt"
	i=$((i + 1))
done

# bad documents: one line each
expect_bad 1 "no-such.txt" "$bin" chat --doc "$tmp/no-such.txt"
printf 'abc\000def' >"$tmp/bin.dat"
expect_bad 2 "binary (a NUL byte at offset 3)" "$bin" chat --doc "$tmp/bin.dat"
printf 'caf\351\n' >"$tmp/latin1.txt"
expect_bad 2 "not UTF-8 text" "$bin" chat --doc "$tmp/latin1.txt"
printf ' \n\n' >"$tmp/blank.txt"
expect_bad 2 "empty; expected a text file" "$bin" chat --doc "$tmp/blank.txt"
expect_bad 2 "do not fit a KV budget of 512 tokens" "$bin" chat --ctx 512 --doc "$tmp/doc.txt"
expect_bad 2 "doc pins a document in a conversation" "$bin" generate --prompt hi --doc "$tmp/doc.txt"

# chat with the document, squeezed, saved: clustered once
db="$tmp/m.db"
printf 'What is the secret code of the vault?\n:doc\n' |
	"$bin" chat --db "$db" --save --title docs --doc "$tmp/doc.txt" --sparse squeezed:dense=2 \
		--temp 0 -n 12 >"$tmp/c1" 2>"$tmp/c1.err" || fail "chat --doc: $(cat "$tmp/c1.err")"
grep -q "clustering the document's keys: 90/90" "$tmp/c1.err" ||
	fail "no clustering progress: $(cat "$tmp/c1.err")"
line1=$(grep "document clustered:" "$tmp/c1.err")
[ -n "$line1" ] || fail "no 'document clustered' line: $(cat "$tmp/c1.err")"
grep -q "doc: $tmp/doc.txt, [0-9]* tokens, [0-9]* cached (pinned), clustered" "$tmp/c1.err" ||
	fail ":doc does not show the clustered document: $(cat "$tmp/c1.err")"
[ -s "$tmp/c1" ] || fail "chat --doc replied nothing"
keys1=$(echo "$line1" | sed -n 's/.*clustered: \([0-9]*\) keys into \([0-9]*\) fine and \([0-9]*\) coarse.*/\1 \2 \3/p')
[ -n "$keys1" ] || fail "cannot read the counts from: $line1"
if command -v sqlite3 >/dev/null; then
	[ "$(sqlite3 "$db" 'SELECT count(*) FROM squeeze')" = 1 ] || fail "no squeeze row in the store"
	sp=$(sqlite3 "$db" 'SELECT sparse FROM sessions')
	[ "$sp" = "squeezed sinks=4 recent=64 dense=2 clusters=10 fanout=8 quantile=0.900 coarse=0.700 outliers=0.020 iters=10 seed=1" ] ||
		fail "sessions.sparse: $sp"
fi

# resume: the clusters come from the store, the same counts, no clustering
printf ':sparse\nAnd the code again?\n' |
	"$bin" chat --db "$db" --resume docs --temp 0 -n 8 >"$tmp/c2" 2>"$tmp/c2.err" ||
	fail "resume: $(cat "$tmp/c2.err")"
grep -q "clustering the document" "$tmp/c2.err" && fail "resume clustered again: $(cat "$tmp/c2.err")"
line2=$(grep "document clusters restored from the store" "$tmp/c2.err")
[ -n "$line2" ] || fail "resume did not restore the clusters: $(cat "$tmp/c2.err")"
keys2=$(echo "$line2" | sed -n 's/.*store: \([0-9]*\) keys, \([0-9]*\) fine and \([0-9]*\) coarse.*/\1 \2 \3/p')
[ "$keys1" = "$keys2" ] || fail "counts differ: clustered '$keys1', restored '$keys2'"
grep -q "^sparse: squeezed sinks=4 recent=64 dense=2 clusters=10" "$tmp/c2.err" ||
	fail "resume did not restore --sparse: $(cat "$tmp/c2.err")"

# an explicit --sparse overrides the saved one, and says so
printf ':sparse\n' | "$bin" chat --db "$db" --resume docs --sparse quest:budget=256 \
	>/dev/null 2>"$tmp/c3.err" || fail "resume --sparse: $(cat "$tmp/c3.err")"
grep -q "^kvscope: --sparse quest budget=256 .* overrides the session's sparse squeezed " \
	"$tmp/c3.err" || fail "no override line: $(cat "$tmp/c3.err")"
grep -q "^sparse: quest budget=256" "$tmp/c3.err" || fail "override not applied: $(cat "$tmp/c3.err")"

# clusters of another model: refused with one line, clustered again
if command -v sqlite3 >/dev/null; then
	sqlite3 "$db" "UPDATE squeeze SET model_sha256 = '0123456789abcdef'"
	printf ':kv\n' | "$bin" chat --db "$db" --resume docs >/dev/null 2>"$tmp/c4.err" ||
		fail "resume, foreign clusters: $(cat "$tmp/c4.err")"
	[ "$(grep -c "made by model 0123456789ab, this model is .*: refused; clustering again" "$tmp/c4.err")" = 1 ] ||
		fail "foreign clusters not refused with one line: $(cat "$tmp/c4.err")"
	grep -q "document clustered:" "$tmp/c4.err" || fail "not clustered again: $(cat "$tmp/c4.err")"
fi

# :doc between turns starts a new conversation with it; :doc off drops it
printf 'hello\n:doc %s\n:doc\n:doc off\n' "$tmp/doc.txt" |
	"$bin" chat --temp 0 -n 4 >/dev/null 2>"$tmp/c5.err" || fail ":doc: $(cat "$tmp/c5.err")"
grep -q "pinned at the start of a new conversation" "$tmp/c5.err" ||
	fail ":doc did not start a new conversation: $(cat "$tmp/c5.err")"
grep -q "doc: none from the next conversation on" "$tmp/c5.err" || fail ":doc off: $(cat "$tmp/c5.err")"
printf ':doc %s\n' "$tmp/bin.dat" | "$bin" chat >/dev/null 2>"$tmp/c6.err"
grep -q "^kvscope: :doc: document .*bin.dat: binary" "$tmp/c6.err" || fail ":doc binary: $(cat "$tmp/c6.err")"

[ "$fails" -eq 0 ] || exit 1
