# lib.sh: what every end-to-end script shares; sourced as
#   . "${KVSCOPE_SRCDIR:?}/tests/e2e/lib.sh"
# It sets bin (the kvscope under test), tmp (a scratch directory removed on
# exit) and fails (the count of failures), and defines fail, expect_bad and
# need_model.

bin=${KVSCOPE_BIN:?}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
e2e_name=$(basename "$0")

# fail MESSAGE...: count a failure and say what it was.
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }

# expect_bad CODE PATTERN CMD...: exit code CODE, exactly one stderr line
# matching PATTERN, nothing on stdout.
expect_bad() {
	code=$1 pat=$2
	shift 2
	"$@" >"$tmp/out" 2>"$tmp/err"
	rc=$?
	[ "$rc" -eq "$code" ] || fail "$*: exit $rc, expected $code ($(cat "$tmp/err"))"
	n=$(grep -c . "$tmp/err")
	[ "$n" -eq 1 ] || fail "$*: $n stderr lines, expected 1: $(cat "$tmp/err")"
	grep -q -- "$pat" "$tmp/err" || fail "$*: stderr '$(cat "$tmp/err")' lacks '$pat'"
	[ ! -s "$tmp/out" ] || fail "$*: wrote to stdout: $(head -c 200 "$tmp/out")"
}

# need_model: set model to the default model ($KVSCOPE_MODEL or the installed
# one) or stop: exit 1, or 77 (skip) when KVSCOPE_SKIP_MODEL_TESTS=1.
need_model() {
	model=${KVSCOPE_MODEL:-${XDG_DATA_HOME:-$HOME/.local/share}/kvscope/models/SmolLM2-135M-Instruct.Q4_1.gguf}
	if [ ! -f "$model" ]; then
		echo "$e2e_name: the default model is not at $model (run make model)" >&2
		[ "${KVSCOPE_SKIP_MODEL_TESTS:-0}" = 1 ] && exit 77
		exit 1
	fi
}
