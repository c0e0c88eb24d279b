#!/bin/sh
# prompt-cache.sh: `eval sparse --prompt-cache DIR` on the default model:
# the first run writes the prefilled prompt (the file's size is the layout's:
# header, token ids, one K/V row per slot) and decodes over it as loaded
# back, a second run loads it instead of prefilling, and both give the same
# figures (every selection figure is a function of the K/V, so a wrong row
# shows), close to a run without the cache (a loaded key is rotated again
# from its stored pre-RoPE value, which rounds differently);
# a damaged, truncated or foreign file is a miss that is prefilled and
# written again, never an error; a folder that cannot be made is one line.
set -u
. "${KVSCOPE_SRCDIR:?}/tests/e2e/lib.sh"

need_model

len=384
args="eval sparse --lengths $len -n 6 --reps 1 --sparse quest:budget=96,page=8,recent=16 --json -t 1"
pc="$tmp/pc"
file="$pc/sparse-$len-seed1.kvc"
# the figures that depend on the K/V (not the timings)
figures() {
	tail -n 1 "$1" | python3 -c '
import json, sys
o = json.loads(sys.stdin.read())
r = o["rows"][0]
print(" ".join(str(r[k]) for k in ("keys_pct", "mass_median", "mass_p10", "oracle_median",
                                    "recall10", "argmax_agree")))'
}
hit() { grep -q "the prompt's K/V loaded from $file" "$1"; }

# shellcheck disable=SC2086
"$bin" $args >"$tmp/plain" 2>"$tmp/plain.err" || fail "eval sparse: $(cat "$tmp/plain.err")"
# shellcheck disable=SC2086
KVSCOPE_LOG=info "$bin" $args --prompt-cache "$pc" >"$tmp/first" 2>"$tmp/first.err" ||
	fail "eval sparse, first cached run: $(cat "$tmp/first.err")"
[ -f "$file" ] || fail "no cache file $file"
hit "$tmp/first.err" && fail "the first run says it loaded a cache"
# 88 bytes of header, 4 a token id, 30 layers x 2 x 3 KV heads x 64 x 2 bytes (f16) a slot
want=$((88 + 4 * len + len * 30 * 2 * 3 * 64 * 2))
size=$(wc -c <"$file")
[ "$size" -eq "$want" ] || fail "cache file of $size bytes, expected $want"
cp "$file" "$tmp/orig"
# shellcheck disable=SC2086
KVSCOPE_LOG=info "$bin" $args --prompt-cache "$pc" >"$tmp/second" 2>"$tmp/second.err" ||
	fail "eval sparse, second cached run: $(cat "$tmp/second.err")"
hit "$tmp/second.err" || fail "the second run did not load the cache: $(cat "$tmp/second.err")"
if command -v python3 >/dev/null 2>&1; then
	p=$(figures "$tmp/first")
	[ -n "$p" ] || fail "no figures in the first cached run's JSON"
	f=$(figures "$tmp/second")
	[ "$f" = "$p" ] || fail "second cached run: figures '$f', expected the first's '$p'"
	# the plain run: the keys read within a point, the masses within 0.05
	python3 - "$(figures "$tmp/plain")" "$p" <<'PY' || fail "cached and plain runs differ by more than rounding: $p"
import sys
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
tol = [1.0, 0.05, 0.05, 0.05, 0.05, 0.34]
sys.exit(0 if all(abs(x - y) <= t for x, y, t in zip(a, b, tol)) else 1)
PY
fi

# a damaged token id: a miss, prefilled and written again (the same bytes)
printf '\377\377\377\177' | dd of="$file" bs=1 seek=100 conv=notrunc 2>/dev/null
# shellcheck disable=SC2086
KVSCOPE_LOG=info "$bin" $args --prompt-cache "$pc" >"$tmp/dmg" 2>"$tmp/dmg.err" ||
	fail "eval sparse over a damaged cache: $(cat "$tmp/dmg.err")"
hit "$tmp/dmg.err" && fail "a damaged cache file was loaded"
cmp -s "$file" "$tmp/orig" || fail "the damaged file was not written again as the original"
# a truncated file: the same
head -c 500000 "$tmp/orig" >"$file"
# shellcheck disable=SC2086
KVSCOPE_LOG=info "$bin" $args --prompt-cache "$pc" >"$tmp/cut" 2>"$tmp/cut.err" ||
	fail "eval sparse over a truncated cache: $(cat "$tmp/cut.err")"
hit "$tmp/cut.err" && fail "a truncated cache file was loaded"
cmp -s "$file" "$tmp/orig" || fail "the truncated file was not written again as the original"
command -v python3 >/dev/null 2>&1 &&
	{ [ "$(figures "$tmp/cut")" = "$(figures "$tmp/first")" ] || fail "truncated cache: figures differ"; }
# another KV type: a miss (the header names the type)
# shellcheck disable=SC2086
KVSCOPE_LOG=info "$bin" $args --kv-type f32 --prompt-cache "$pc" >"$tmp/f32" 2>"$tmp/f32.err" ||
	fail "eval sparse, f32 cache: $(cat "$tmp/f32.err")"
hit "$tmp/f32.err" && fail "an f16 cache file was loaded into an f32 cache"
ls "$pc" | grep -q tmp && fail "a temporary file was left in the cache folder"

# a folder that cannot be made: one line, exit 1
: >"$tmp/plainfile"
expect_bad 1 "--prompt-cache $tmp/plainfile/x: cannot make the folder" \
	"$bin" eval sparse --lengths 64 -n 2 --reps 1 --prompt-cache "$tmp/plainfile/x"

[ "$fails" -eq 0 ] || exit 1
echo "prompt-cache.sh: all checks passed"
