#!/bin/sh
# sparse.sh: sparse decode attention end to end on the default model: a
# budget covering the cache gives dense's greedy text (quest and hip), a small budget under
# a bounded policy reads fewer keys (trace), chat switches it between turns,
# bad values fail with one line and exit 2, and `eval sparse` runs at small
# sizes and ends with a JSON line.
set -u
. "${KVSCOPE_SRCDIR:?}/tests/e2e/lib.sh"

need_model

p="Tell me a long story about a dragon and a knight."
# a budget covering the cache: the same greedy text as dense
"$bin" generate --prompt "$p" --temp 0 -n 24 >"$tmp/dense" 2>/dev/null || fail "generate dense"
"$bin" generate --prompt "$p" --temp 0 -n 24 --sparse quest:budget=100000 >"$tmp/full" \
	2>"$tmp/full.err" || fail "generate sparse, covering budget: $(cat "$tmp/full.err")"
cmp -s "$tmp/dense" "$tmp/full" || fail "covering budget: text differs from dense"
"$bin" generate --prompt "$p" --temp 0 -n 24 --sparse hip:budget=100000,refresh=4 \
	>"$tmp/hfull" 2>"$tmp/hfull.err" || fail "generate hip, covering budget: $(cat "$tmp/hfull.err")"
cmp -s "$tmp/dense" "$tmp/hfull" || fail "hip, covering budget: text differs from dense"

# composed with a retention policy: fewer keys read at each decode step
"$bin" generate --prompt "$p" --temp 0 -n 40 --policy sirllm --kv-budget 48 \
	--sparse quest:budget=32,page=8,recent=8,dense=2 --trace "$tmp/t.jsonl" >"$tmp/g" \
	2>"$tmp/g.err" || fail "generate sirllm + quest: $(cat "$tmp/g.err")"
[ -s "$tmp/g" ] || fail "sirllm + quest wrote nothing"
grep -q '"event":"evict"' "$tmp/t.jsonl" || fail "no eviction in the trace"
last=$(grep '"event":"step"' "$tmp/t.jsonl" | tail -n 1)
kr=$(echo "$last" | sed -n 's/.*"keys_read":\([0-9]*\).*/\1/p')
kd=$(echo "$last" | sed -n 's/.*"keys_dense":\([0-9]*\).*/\1/p')
[ -n "$kr" ] && [ -n "$kd" ] || fail "step events lack keys_read/keys_dense: $last"
[ "${kr:-0}" -gt 0 ] && [ "${kr:-0}" -lt "${kd:-0}" ] ||
	fail "sparse step read $kr of $kd keys, expected fewer than dense"

# chat: /sparse between turns, /kv shows what the last step read
printf 'Hello there.\n/sparse quest:budget=16,recent=4\nTell me more.\n/kv\n/sparse\n/sparse qwest\n' |
	"$bin" chat --temp 0 --max-tokens 12 >"$tmp/c" 2>"$tmp/c.err" || fail "chat: $(cat "$tmp/c.err")"
grep -q "sparse quest budget=16 page=16 sinks=4 recent=4 dense=2 shadow=16: the last decode step read" \
	"$tmp/c.err" || fail "chat /kv lacks the sparse line: $(cat "$tmp/c.err")"
grep -q "^sparse: quest budget=16" "$tmp/c.err" || fail "chat /sparse does not show the mode"
grep -q "sparse mode 'qwest': expected off, quest\[" "$tmp/c.err" || fail "chat /sparse qwest"
grep -q "sparse steps chose their keys, [0-9]* reused a choice" "$tmp/c.err" ||
	fail "chat /kv lacks the chose / reused counts"

# bad values: one line, exit 2
expect_bad 2 "--sparse: sparse mode 'qwest': expected off, quest" \
	"$bin" generate --prompt hi --sparse qwest
expect_bad 2 "budget=0: expected an integer in 1.." "$bin" generate --prompt hi --sparse quest:budget=0
expect_bad 2 "unknown parameter 'pages'" "$bin" generate --prompt hi --sparse quest:pages=4
expect_bad 2 "unknown parameter 'quantile' for hip: expected budget, page, block, sinks, recent, dense, refresh, prefill, tail, shadow, beam or rerank" \
	"$bin" generate --prompt hi --sparse hip:quantile=0.5
expect_bad 2 "off takes no parameters" "$bin" generate --prompt hi --sparse off:budget=4
# a model that soft-caps its attention scores (Gemma 2) is dense only
expect_bad 2 "this model soft-caps its attention scores" "$bin" generate \
	--model "$KVSCOPE_SRCDIR/tests/fixtures/archs/gemma2/tiny-gemma2.gguf" --prompt hi -n 2 \
	--sparse quest
expect_bad 2 "expected a sparse mode" "$bin" eval sparse --sparse off --lengths 256
"$bin" help sparse | grep -q "budget  1024" || fail "help sparse lacks the budget row"
"$bin" help sparse | grep -q "refresh 8 " || fail "help sparse lacks hip's refresh row"

# the eval at small sizes
"$bin" eval sparse --lengths 256,512 -n 8 --reps 1 --sparse quest:budget=128 --json \
	>"$tmp/e" 2>"$tmp/e.err" || fail "eval sparse: $(cat "$tmp/e.err")"
grep -q '^| 512 |' "$tmp/e" || fail "eval sparse table lacks the 512 row: $(cat "$tmp/e")"
tail -n 1 "$tmp/e" | grep -q '^{"eval":"sparse",.*"rows":\[' || fail "eval sparse: no JSON last"
if command -v python3 >/dev/null 2>&1; then
	tail -n 1 "$tmp/e" | python3 -c '
import json, sys
r = json.load(sys.stdin)["rows"]
assert [x["length"] for x in r] == [256, 512], r
for x in r:
    assert 0 < x["keys_pct"] < 100, x
    assert 0 < x["mass_p10"] <= x["mass_median"] <= 1.0001, x
    # the best choice of as many keys: at least what quest captured
    assert 0 < x["oracle_p10"] <= x["oracle_median"] <= 1.0001, x
    assert x["oracle_median"] >= x["mass_median"] - 1e-4, x
    assert 0 <= x["recall10"] <= 1 and 0 <= x["argmax_agree"] <= 1, x
    assert x["select_ms"] >= 0 and min(x["attn_ms"] + x["step_ms"]) > 0, x
assert r[1]["keys_pct"] < r[0]["keys_pct"], r
' || fail "eval sparse JSON: $(tail -n 1 "$tmp/e")"
fi

# hip: a refresh every 4 of 8 steps, and the 512-token prompt prefilled
# block-sparsely (prefill=256) against dense
"$bin" eval sparse --lengths 256,512 -n 8 --reps 1 --sparse hip:budget=128,refresh=4,prefill=256 \
	--json >"$tmp/h" 2>"$tmp/h.err" || fail "eval sparse hip: $(cat "$tmp/h.err")"
tail -n 1 "$tmp/h" | grep -q '"steps_chose":2,"steps_reused":6,"prefill":{' ||
	fail "eval sparse hip: expected 2 steps chose, 6 reused, a prefill: $(tail -n 1 "$tmp/h")"
grep -q '^eval sparse: hip budget=128 page=16 block=8 sinks=4 recent=64 dense=2 refresh=4 prefill=256 tail=64 shadow=16 ' \
	"$tmp/h" || fail "eval sparse hip: no heading: $(head -n 1 "$tmp/h")"
grep -q '^| 512 | [0-9.]* % | [0-9.]* | ' "$tmp/h" || fail "eval sparse hip: no prefill row"
if command -v python3 >/dev/null 2>&1; then
	tail -n 1 "$tmp/h" | python3 -c '
import json, sys
x = json.load(sys.stdin)["rows"][-1]
p = x["prefill"]
assert 0 < p["keys_pct"] < 100 and 0 < p["mass"] <= 1.0001, p
assert min(p["ms"] + p["cpu_ms"]) > 0 and 0 < x["keys_pct"] < 100, x
assert 0 < x["mass_median_chose"] <= 1.0001 and 0 < x["mass_median_reused"] <= 1.0001, x
assert x["capped"] is False, x
' || fail "eval sparse hip JSON: $(tail -n 1 "$tmp/h")"
fi

# several modes in one run: one dense prefill and decode per length, and
# each mode's rows what its run alone gave (the same keys, mass, recall,
# agreement, steps; hip's own block-sparse prefill too); off adds no row
"$bin" eval sparse --lengths 256,512 -n 8 --reps 1 --sparse off --sparse quest:budget=128 \
	--sparse hip:budget=128,refresh=4,prefill=256 --json >"$tmp/m" 2>"$tmp/m.err" ||
	fail "eval sparse, two modes: $(cat "$tmp/m.err")"
grep -q '^eval sparse: 2 modes against dense, one dense prefill and dense decode per length' \
	"$tmp/m" || fail "eval sparse, two modes: no heading: $(head -n 1 "$tmp/m")"
grep -q '^| hip budget=128 page=16 block=8 sinks=4 recent=64 dense=2 refresh=4 prefill=256 tail=64 shadow=16 beam=2 rerank=1.000 | 512 | ' \
	"$tmp/m" || fail "eval sparse, two modes: no hip row with its mode: $(cat "$tmp/m")"
if command -v python3 >/dev/null 2>&1; then
	python3 - "$tmp/e" "$tmp/h" "$tmp/m" <<'PY' || fail "eval sparse, two modes: rows differ from the runs alone"
import json, sys
last = lambda f: json.loads(open(f).read().strip().split("\n")[-1])
q, h, m = last(sys.argv[1]), last(sys.argv[2]), last(sys.argv[3])
assert m["modes"] == [q["mode"], h["mode"]] and q["modes"] == [q["mode"]], (m["modes"], q)
assert [(x["mode"], x["length"]) for x in m["rows"]] == \
    [(q["mode"], 256), (q["mode"], 512), (h["mode"], 256), (h["mode"], 512)], m["rows"]
keys = ["keys_pct", "mass_median", "mass_p10", "oracle_median", "oracle_p10", "recall10", "argmax_agree", "steps_chose",
        "steps_reused", "capped", "mass_median_chose", "mass_median_reused"]
for alone, both in zip(q["rows"] + h["rows"], m["rows"]):
    for k in keys:
        assert alone[k] == both[k], (k, alone, both)
    assert ("prefill" in alone) == ("prefill" in both), (alone, both)
    if "prefill" in alone:
        for k in ["keys_pct", "mass"]:
            assert alone["prefill"][k] == both["prefill"][k], (k, alone, both)
PY
fi

# eval passkey, four modes over the same prompts: the answers of each are
# the ones its run alone gives; off, quest and hip:prefill=0 share one
# prefill per prompt, hip:prefill=256 feeds its own
pk="--lengths 300 --depths 10,50,90 --samples 1 --policy full --json"
modes="off quest:budget=64,recent=16 hip:budget=64,recent=16,refresh=4,prefill=256 hip:budget=64,recent=16,refresh=4,prefill=0"
all=""
for md in $modes; do
	all="$all --sparse $md"
	# shellcheck disable=SC2086
	KVSCOPE_LOG=info "$bin" eval passkey $pk --sparse "$md" >"$tmp/pk1" 2>"$tmp/pk1.err" ||
		fail "eval passkey --sparse $md: $(tail -n 2 "$tmp/pk1.err")"
	sed -n "s/.*\(passkey length .*\): [0-9]* tokens, key \([0-9]*\), \(answer '.*' ([a-z]*)\), needle kept \([0-9.]*\).*/\1 \2 \3 \4/p" \
		"$tmp/pk1.err" >>"$tmp/pk-alone"
done
# shellcheck disable=SC2086
KVSCOPE_LOG=info "$bin" eval passkey $pk $all >"$tmp/pk" 2>"$tmp/pk.err" ||
	fail "eval passkey, four modes: $(tail -n 2 "$tmp/pk.err")"
n_shared=$(grep -c 'prefill shared' "$tmp/pk.err")
[ "$n_shared" -eq 6 ] || fail "eval passkey, four modes: $n_shared answers from a shared prefill, expected 6 (3 prompts x 2 modes)"
# the same answers, mode by mode (the combined log names each mode as its
# "sparse mode N:" line spells it, N in the order given)
sed -n 's/^kvscope eval passkey: sparse mode [0-9]*: \(.*\) (\(its own\|the shared\).*/\1/p' \
	"$tmp/pk.err" >"$tmp/pk-names"
[ "$(wc -l <"$tmp/pk-names")" -eq 4 ] || fail "eval passkey, four modes: mode lines: $(cat "$tmp/pk.err")"
while IFS= read -r spec; do
	grep -F "sparse $spec:" "$tmp/pk.err" | sed -n "s/.*\(passkey length [0-9]* depth [0-9]* sample [0-9]*\), sparse .*: [0-9]* tokens, key \([0-9]*\), \(answer '.*' ([a-z]*)\), needle kept \([0-9.]*\).*/\1 \2 \3 \4/p" >>"$tmp/pk-both"
done <"$tmp/pk-names"
[ -s "$tmp/pk-alone" ] && [ "$(wc -l <"$tmp/pk-alone")" -eq 12 ] ||
	fail "eval passkey: expected 12 answers alone: $(cat "$tmp/pk-alone")"
cmp -s "$tmp/pk-alone" "$tmp/pk-both" ||
	fail "eval passkey, four modes: answers differ from the runs alone: $(diff "$tmp/pk-alone" "$tmp/pk-both")"
grep -q '^| length | off | quest budget=64 ' "$tmp/pk" || fail "eval passkey: no matrix: $(cat "$tmp/pk")"
tail -n 1 "$tmp/pk" | grep -q '"modes":\[{"sparse":"off","n":3,' ||
	fail "eval passkey, four modes: JSON modes: $(tail -n 1 "$tmp/pk")"
expect_bad 2 "expected one sparse mode with a cold tier" "$bin" eval passkey --lengths 300 \
	--sparse off --sparse quest --cold on

# beyond the training window: a tiny model trained on 256 positions, a
# 512-key cache, positions capped; with a budget covering the cache quest is
# dense's function exactly (every mass 1, every argmax dense's), which it
# would not be if the cap reached one mode and not the other
build=${KVSCOPE_BUILDDIR:?}
if [ -x "$build/tests/util/mktiny" ] && "$build/tests/util/mktiny" "$tmp/tiny.gguf" --ctx 256; then
	"$bin" eval sparse --model "$tmp/tiny.gguf" --lengths 512 -n 6 --reps 1 \
		--sparse quest:budget=100000,dense=0 --json >"$tmp/cap" 2>"$tmp/cap.err" ||
		fail "eval sparse beyond the window: $(cat "$tmp/cap.err")"
	grep -q '^(cap): beyond the training window of 256 positions' "$tmp/cap" ||
		fail "eval sparse: no cap note: $(head -n 3 "$tmp/cap")"
	grep -q '^| 512 (cap) | 100.0 % | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 100 % |' "$tmp/cap" ||
		fail "eval sparse capped, covering budget: not dense's function: $(grep '^| 512' "$tmp/cap")"
	tail -n 1 "$tmp/cap" | grep -q '"capped":true' || fail "eval sparse JSON lacks capped:true"
	# --cap 64: 444 of the 512 keys' candidates share one position, and quest
	# and hip choose among them by content groups (cpu-sparse-group.c); with
	# a budget covering the cache both are still dense's function exactly,
	# and a small budget reads fewer keys than dense
	"$bin" eval sparse --model "$tmp/tiny.gguf" --lengths 512 --cap 64 -n 6 --reps 1 \
		--sparse quest:budget=100000,dense=0 --sparse hip:budget=100000,dense=0,prefill=0 \
		--sparse quest:budget=96,page=8,dense=0 >"$tmp/cap64" 2>"$tmp/cap64.err" ||
		fail "eval sparse --cap 64: $(cat "$tmp/cap64.err")"
	grep -q '^(cap): beyond the training window of 256 positions the keys more than 64 ' \
		"$tmp/cap64" || fail "eval sparse --cap 64: no cap note: $(head -n 3 "$tmp/cap64")"
	n=$(grep -c '^| [a-z][^|]*budget=100000[^|]* | 512 (cap) | 100.0 % | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 100 % |' \
		"$tmp/cap64")
	[ "$n" -eq 2 ] || fail "eval sparse --cap 64, covering budget: not dense's function: $(grep '512 (cap)' "$tmp/cap64")"
	grep '^| quest budget=96 ' "$tmp/cap64" | grep -q '| 512 (cap) | [0-9][0-9]\.[0-9] % |' ||
		fail "eval sparse --cap 64, budget 96: not under 100 % of the keys: $(grep '512 (cap)' "$tmp/cap64")"
else
	fail "cannot make the tiny model (tests/util/mktiny)"
fi

[ "$fails" -eq 0 ] || exit 1
echo "sparse.sh: all checks passed"
