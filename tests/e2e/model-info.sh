#!/bin/sh
# model-info.sh: `kvscope model info` on the default model and on bad files.
#
# The good case checks facts of SmolLM2-135M-Instruct Q4_1 that come from
# outside kvscope (gguf-py's GGUFReader and llama.cpp's llama-gguf: 272
# tensors, 210 Q4_1 + 1 Q8_0 + 61 F32, 30 layers, n_embd 576). Each bad file
# must exit 2 with exactly one line on stderr that starts with
# "kvscope: PATH: " and nothing on stdout.
set -u
bin="${KVSCOPE_BIN:-./kvscope}"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/model-info.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
fail=0
skipped=0

if [ -n "${KVSCOPE_MODEL:-}" ]; then
	model=$KVSCOPE_MODEL
elif [ -n "${XDG_DATA_HOME:-}" ]; then
	model=$XDG_DATA_HOME/kvscope/models/SmolLM2-135M-Instruct.Q4_1.gguf
else
	model=$HOME/.local/share/kvscope/models/SmolLM2-135M-Instruct.Q4_1.gguf
fi

# expect_bad FILE WHAT: exit 2, one stderr line naming FILE, empty stdout.
expect_bad() {
	"$bin" model info --model "$1" >"$tmp/out" 2>"$tmp/err"
	rc=$?
	lines=$(wc -l <"$tmp/err")
	if [ "$rc" -ne 2 ] || [ "$lines" -ne 1 ] || [ -s "$tmp/out" ] ||
	    ! grep -q "^kvscope: $1: " "$tmp/err"; then
		echo "FAIL: $2: exit $rc, $lines stderr lines:" >&2
		cat "$tmp/err" >&2
		fail=1
	else
		echo "ok: $2: $(cat "$tmp/err")"
	fi
}

# check_out PATTERN WHAT: the good run's stdout has a line matching PATTERN.
check_out() {
	if ! grep -Eq "$1" "$tmp/good"; then
		echo "FAIL: model info output lacks /$1/ ($2)" >&2
		fail=1
	fi
}

if [ -f "$model" ]; then
	if ! "$bin" model info >"$tmp/good" 2>"$tmp/good.err"; then
		echo "FAIL: model info on $model:" >&2
		cat "$tmp/good.err" >&2
		fail=1
	fi
	check_out '^architecture +llama$' "architecture"
	check_out '^  layers +30$' "30 layers"
	check_out '^  embedding +576$' "n_embd"
	check_out '^  heads +9 \(kv heads 3' "heads"
	check_out '^  feed-forward +1536$' "n_ff"
	check_out '^  tokens +49152$' "vocab"
	check_out "^  bos +1 '<\|im_start\|>'$" "bos"
	check_out "^  eos +2 '<\|im_end\|>'$" "eos"
	check_out '^  gqa +used +grouped-query' "feature gqa (9 query heads over 3)"
	check_out '^  qk-norm +not used ' "feature qk-norm"
	check_out '^  rope-yarn +not used ' "feature rope-yarn"
	check_out '^  tied-output +used ' "feature tied-output"
	check_out '^  layout +chatml$' "the template's layout"
	check_out '^  Q4_1 +210 +66,355,200 ' "Q4_1 totals"
	check_out '^  Q8_0 +1 +30,081,024 ' "Q8_0 totals"
	check_out '^  F32 +61 +140,544 ' "F32 totals"
	check_out '^  all +272 +96,576,768 +92.10 +134,515,008$' "all totals (llama-bench: 134,515,008 params)"
	check_out '^  token_embd.weight +Q8_0 +576 x 49152 +30,081,024$' "embedding row"
	check_out '^backend +(cpu \(CUDA: .+\)|cuda \(.+\))$' "backend line"
	n=$(grep -c '^  blk\.' "$tmp/good")
	[ "$n" -eq 270 ] || { echo "FAIL: $n blk.* tensor rows, expected 270" >&2; fail=1; }
elif [ "${KVSCOPE_SKIP_MODEL_TESTS:-}" = 1 ]; then
	echo "SKIP: $model absent (KVSCOPE_SKIP_MODEL_TESTS=1); bad-file cases only"
	skipped=1
else
	echo "FAIL: default model $model is missing (make model, or KVSCOPE_SKIP_MODEL_TESTS=1)" >&2
	fail=1
fi

# A generated gemma3 model (tests/fixtures/archs/README.md): its sliding
# window, which layers are local, and the Gemma features.
gemma="${KVSCOPE_SRCDIR:-.}/tests/fixtures/archs/gemma3/tiny-gemma3.gguf"
if "$bin" model info --model "$gemma" >"$tmp/good" 2>"$tmp/good.err"; then
	check_out '^architecture +gemma3$' "gemma3 architecture"
	check_out '^  sliding window +16 positions in 5 of 6 layers \(local: 0,1,2,3,4\); rope base 10000 there$' \
		"gemma3 window line"
	check_out '^  sliding-window +used ' "feature sliding-window"
	check_out '^  rope-local-base +used ' "feature rope-local-base"
	check_out '^  geglu +used ' "feature geglu"
	check_out '^  post-norm +used ' "feature post-norm"
	check_out '^  softcap-attn +not used ' "feature softcap-attn (gemma2 only)"
	check_out '^  layout +gemma$' "the gemma template"
else
	echo "FAIL: model info on $gemma:" >&2
	cat "$tmp/good.err" >&2
	fail=1
fi

# Bad files.
printf 'GGU' >"$tmp/short.gguf"
expect_bad "$tmp/short.gguf" "3-byte file"
printf 'NOTAGGUFFILE0123456789012345678901234567890' >"$tmp/magic.gguf"
expect_bad "$tmp/magic.gguf" "wrong magic"
# Header: magic, version 3, n_tensors = 2^63, n_kv = 0.
printf 'GGUF\003\000\000\000\000\000\000\000\000\000\000\200\000\000\000\000\000\000\000\000' \
	>"$tmp/huge.gguf"
expect_bad "$tmp/huge.gguf" "n_tensors 2^63"
# Header: n_tensors = 0, n_kv = 1000 with no records.
printf 'GGUF\003\000\000\000\000\000\000\000\000\000\000\000\350\003\000\000\000\000\000\000' \
	>"$tmp/kv.gguf"
expect_bad "$tmp/kv.gguf" "n_kv beyond the file"
# Big-endian version.
printf 'GGUF\000\000\000\003\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000' \
	>"$tmp/be.gguf"
expect_bad "$tmp/be.gguf" "big-endian"
# A valid, empty GGUF is not a model.
printf 'GGUF\003\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000\000' \
	>"$tmp/empty.gguf"
expect_bad "$tmp/empty.gguf" "no architecture"
if [ -f "$model" ]; then
	head -c 1000000 "$model" >"$tmp/trunc.gguf"
	expect_bad "$tmp/trunc.gguf" "truncated model"
fi
expect_bad "$tmp/does-not-exist.gguf" "missing file"

# Usage errors exit 2 too.
"$bin" model info --bogus >/dev/null 2>&1
rc=$?
[ "$rc" -eq 2 ] || { echo "FAIL: unknown option gave exit $rc, expected 2" >&2; fail=1; }

# A run without the model reports SKIP (77) unless something failed.
[ "$fail" -eq 0 ] && [ "$skipped" -eq 1 ] && exit 77
exit $fail
