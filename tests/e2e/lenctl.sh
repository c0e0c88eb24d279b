#!/bin/sh
# lenctl.sh: length control end to end on the default model: generate with
# --target-words lands in Ruler's window with a length-target stop and
# counts words as the \w+ rule does (a count written here in awk), the same
# command without a target is byte-identical to plain generate, the chat's
# /len works from a pipe and so does a chat started with --target-words, `eval tlg` runs a small sample and ends with a JSON
# line, and bad input (unknown level, bad --target-words, a broken prompt
# file) fails with one line and exit 2.
set -u
. "${KVSCOPE_SRCDIR:?}/tests/e2e/lib.sh"


# bad input first: it needs no model
expect_bad 2 "unknown level '90'" "$bin" eval tlg --levels 10,90 --samples 1
expect_bad 2 "not a whole number of words" "$bin" generate --target-words 12x -p hi
expect_bad 2 "not a whole number of words" "$bin" generate --target-words 0 -p hi
expect_bad 2 "expected a number of words" "$bin" chat --length 5q
expect_bad 2 "not a whole number of words in 1..100000 nor a level" "$bin" chat --target-words 0
expect_bad 2 "not a whole number of words" "$bin" chat --target-words '>900'
printf '10\texplain\tSay hi.\n90\tlist\tList things.\n' >"$tmp/p.tsv"
expect_bad 2 "p.tsv:2: unknown level '90'" "$bin" eval tlg --prompts "$tmp/p.tsv" --samples 1
printf '10\texplain\n' >"$tmp/q.tsv"
expect_bad 2 "q.tsv:1: expected LEVEL<TAB>FORM<TAB>INSTRUCTION" "$bin" eval tlg \
	--prompts "$tmp/q.tsv" --samples 1

need_model

# \w+ words the way Ruler counts them, for ASCII text (the replies here are)
words() { LC_ALL=C awk '{ n += gsub(/[A-Za-z0-9_]+/, "") } END { print n + 0 }' "$1"; }

p="Explain how bees make honey."
"$bin" generate -p "$p" --temp 0 -n 400 --target-words 50 >"$tmp/g50" 2>"$tmp/g50.err" ||
	fail "generate --target-words 50: $(cat "$tmp/g50.err")"
grep -q "length target 50 words (40, 60\]: .* stop: length-target" "$tmp/g50.err" ||
	fail "generate --target-words 50: $(grep 'length target' "$tmp/g50.err")"
w=$(words "$tmp/g50")
[ "$w" -gt 40 ] && [ "$w" -le 60 ] || fail "--target-words 50 gave $w words"
grep -q "length target 50 words (40, 60\]: $w words" "$tmp/g50.err" ||
	fail "the reported count differs from $w: $(grep 'length target' "$tmp/g50.err")"

# no target: the very same bytes as before the controller existed, i.e. as
# plain generate (the unit test checks the tokens against a reference loop)
"$bin" generate -p "$p" --temp 0 -n 60 >"$tmp/a" 2>/dev/null || fail "plain generate"
"$bin" generate -p "$p" --temp 0 -n 60 --length off >"$tmp/b" 2>/dev/null ||
	fail "generate --length off"
cmp -s "$tmp/a" "$tmp/b" || fail "--length off changed the output"
"$bin" generate -p "$p" --seed 5 -n 60 >"$tmp/a" 2>/dev/null || fail "seeded generate"
"$bin" generate -p "$p" --seed 5 -n 60 --length off --no-repeat 0 >"$tmp/b" 2>/dev/null ||
	fail "seeded generate --length off"
cmp -s "$tmp/a" "$tmp/b" || fail "--length off changed the seeded output"

# a token target stops inside its window
"$bin" generate -p "$p" --temp 0 -n 400 --length 60t >"$tmp/t" 2>"$tmp/t.err" ||
	fail "generate --length 60t: $(cat "$tmp/t.err")"
n=$(sed -n 's/.*length target 60 tokens (50, 70\]: [0-9]* words, \([0-9]*\) tokens.*/\1/p' \
	"$tmp/t.err")
[ -n "$n" ] && [ "$n" -gt 50 ] && [ "$n" -le 71 ] || fail "--length 60t: $(cat "$tmp/t.err")"

# the chat: /len from a pipe, then off
printf '/len 30\nName three colours.\n/len off\n/len\n' |
	"$bin" chat --temp 0 -n 200 >"$tmp/c" 2>"$tmp/c.err" || fail "chat: $(cat "$tmp/c.err")"
grep -q "length target: 30 words (20, 40\]" "$tmp/c.err" || fail "/len 30: $(cat "$tmp/c.err")"
grep -q "words, length-target" "$tmp/c.err" || fail "chat stop reason: $(cat "$tmp/c.err")"
grep -q "length target: off" "$tmp/c.err" || fail "/len off: $(cat "$tmp/c.err")"
w=$(words "$tmp/c")
[ "$w" -gt 20 ] && [ "$w" -le 40 ] || fail "chat /len 30 gave $w words"
printf '/len 12x\n' | "$bin" chat >/dev/null 2>"$tmp/c.err"
grep -q "len: length '12x': expected" "$tmp/c.err" || fail "/len 12x: $(cat "$tmp/c.err")"
# the chat started with a target (--target-words, as generate takes it)
printf 'Name three colours.\n/len\n' |
	"$bin" chat --temp 0 -n 200 --target-words 30 >"$tmp/c" 2>"$tmp/c.err" ||
	fail "chat --target-words 30: $(cat "$tmp/c.err")"
grep -q "words, length-target" "$tmp/c.err" || fail "chat --target-words: $(cat "$tmp/c.err")"
grep -q "length target: 30 words (20, 40\]" "$tmp/c.err" || fail "/len after --target-words 30"
w=$(words "$tmp/c")
[ "$w" -gt 20 ] && [ "$w" -le 40 ] || fail "chat --target-words 30 gave $w words"
# a level by name: --target-words takes it as --length and :len do
"$bin" generate -p "Say hi." --temp 0 -n 2 --target-words '>800' >/dev/null 2>"$tmp/t.err" ||
	fail "generate --target-words '>800': $(cat "$tmp/t.err")"
grep -q "length target more than 800 words (800, inf)" "$tmp/t.err" ||
	fail "--target-words '>800': $(cat "$tmp/t.err")"

# a stop string ends the reply and is not printed
"$bin" generate -p "Count from one to ten, one number per line." --temp 0 -n 80 --stop "5" \
	>"$tmp/s" 2>"$tmp/s.err" || fail "generate --stop: $(cat "$tmp/s.err")"
grep -q "stop: stop-string" "$tmp/s.err" || fail "--stop 5: $(grep stop: "$tmp/s.err")"
! grep -q 5 "$tmp/s" || fail "--stop 5 printed the stop string: $(cat "$tmp/s")"

# eval tlg on a small sample: the table, then one JSON line
"$bin" eval tlg --levels 10,30 --samples 1 --json >"$tmp/e" 2>"$tmp/e.err" ||
	fail "eval tlg: $(cat "$tmp/e.err")"
grep -q '^controller' "$tmp/e" || fail "eval tlg: no controller table"
grep -q '^oracle-trunc' "$tmp/e" || fail "eval tlg: no oracle table"
tail -n 1 "$tmp/e" | grep -q '^{"eval":"tlg",.*"arms":{"prompt-only":\[.*\]}}$' ||
	fail "eval tlg: last line is not the JSON object: $(tail -n 1 "$tmp/e")"
grep -q "tlg \[" "$tmp/e.err" || fail "eval tlg: no progress bar"

[ "$fails" -eq 0 ] || exit 1
echo "lenctl.sh: all checks passed"
