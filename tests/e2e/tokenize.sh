#!/bin/sh
# tokenize.sh: `kvscope tokenize` against ids from llama.cpp's llama-tokenize.
#
# Expected ids were produced by llama-tokenize (c392e50) on the same model
# and input (--ids --log-disable, --no-escape for files); bad invocations
# must exit 2 with one line on stderr and nothing on stdout.
set -u
bin="${KVSCOPE_BIN:-./kvscope}"
src="${KVSCOPE_SRCDIR:-.}"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tokenize.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
fail=0

if [ -n "${KVSCOPE_MODEL:-}" ]; then
	model=$KVSCOPE_MODEL
elif [ -n "${XDG_DATA_HOME:-}" ]; then
	model=$XDG_DATA_HOME/kvscope/models/SmolLM2-135M-Instruct.Q4_1.gguf
else
	model=$HOME/.local/share/kvscope/models/SmolLM2-135M-Instruct.Q4_1.gguf
fi
if [ ! -f "$model" ]; then
	if [ "${KVSCOPE_SKIP_MODEL_TESTS:-}" = 1 ]; then
		echo "SKIP: $model absent and KVSCOPE_SKIP_MODEL_TESTS=1"
		exit 77
	fi
	echo "FAIL: default model $model is missing (run make model)" >&2
	exit 1
fi

# expect WHAT WANT ARGS...: stdout of kvscope tokenize ARGS is exactly WANT.
expect() {
	what=$1 want=$2
	shift 2
	got=$("$bin" tokenize "$@" 2>"$tmp/err")
	rc=$?
	if [ "$rc" -ne 0 ] || [ "$got" != "$want" ]; then
		echo "FAIL: $what: exit $rc, got '$got', expected '$want'" >&2
		cat "$tmp/err" >&2
		fail=1
	else
		echo "ok: $what"
	fi
}

# expect_bad WHAT ARGS...: exit 2, one stderr line, empty stdout.
expect_bad() {
	what=$1
	shift
	"$bin" tokenize "$@" >"$tmp/out" 2>"$tmp/err"
	rc=$?
	if [ "$rc" -ne 2 ] || [ -s "$tmp/out" ] || [ "$(grep -c '^kvscope' "$tmp/err")" -ne 1 ]; then
		echo "FAIL: $what: exit $rc" >&2
		cat "$tmp/err" >&2
		fail=1
	else
		echo "ok: $what: $(head -n1 "$tmp/err")"
	fi
}

expect "special text parsed" "19556 905 2" --model "$model" "Hello world<|im_end|>"
expect "--no-special" "19556 905 44 108 306 79 486 108 46" --model "$model" --no-special \
	"Hello world<|im_end|>"
printf 'line one\r\n\tx = 12;\n\377\376 end\n' >"$tmp/in"
expect "--file keeps bytes" "1311 582 2738 197 104 446 216 33 34 43 198 24211 24211 1112 198" \
	--model "$model" --file "$tmp/in"
expect "--file - reads stdin" "19556 905 198" --model "$model" --file - <<EOT_IN
Hello world
EOT_IN
expect "empty text" "" --model "$model" ""
expect "--pieces" "$(printf '19556\tHello\n905\t world\n2\t<|im_end|>')" --model "$model" --pieces \
	"Hello world<|im_end|>"
expect "SentencePiece vocab adds BOS" "1 15043 3186" \
	--model "$src/tests/fixtures/vocab/ggml-vocab-llama-spm.gguf" "Hello world"

expect_bad "no text" --model "$model"
expect_bad "text and --file" --model "$model" --file "$tmp/in" "text"
expect_bad "unknown option" --model "$model" --bogus "x"
expect_bad "two texts" --model "$model" "a" "b"
printf 'GGUF\003\000\000\000' >"$tmp/bad.gguf"
expect_bad "truncated model" --model "$tmp/bad.gguf" "x"
exit $fail
