#!/bin/sh
# tests/gpu/check.sh: the one-shot GPU check of the CUDA backend.
#
#   tests/gpu/check.sh [kvscope-VERSION.tar.gz]
#
# Builds kvscope with CUDA in a fresh directory under $TMPDIR (from the
# tarball when one is given or lies at the top of the tree, else from this
# source tree, which then needs a generated ./configure or autoreconf),
# without the front-end libraries (ncurses, Lua, SQLite, libedit), then:
#   1. the unit tests of the GPU code (host logic: plans, launch counts,
#      sparse choices, the cold tier's ring; kernel arithmetic; and
#      kvscope generate --backend cuda on a tiny model);
#   2. tests/gpu/gpu-check all: device info; parity against the CPU backend
#      (logits, top-1, greedy continuations, attention probabilities, slot
#      compaction, visible subsets, surprisal, raw slot round trips) on a
#      SmolLM2-shaped random model, the model file when there is one, and
#      a model per weight type; timings (decode at 128, 4k, 32k cached
#      tokens with and without CUDA graphs, unfused, prefill of 512 and
#      8k); launches (the captured decode graph's nodes against
#      gpuplan_launches: dense, unfused, want_attn, quest, hip searching
#      and reusing); cold (batched saves = per-slot saves, the gather
#      before the decode's overwrite, batches in order, a full ring,
#      batched loads = per-slot loads in bytes and logits, and the copy's
#      cost beside a decode); sparse decode (quest and hip: the choices,
#      page bounds and logits against the CPU's, a budget over the cache =
#      dense, the same after slot copies; decode at 128 and 32k dense
#      against quest and hip); a table and the issue's goals last.
# Every mismatch prints FAIL; nothing is skipped (a missing tool asked for
# is a FAIL). Exit status: 0 all passed, 1 a check failed, 2 could not
# build or run. About 5-9 minutes on an H100.
#
# Environment: KVSCOPE_MODEL (a GGUF model for parity and timings as well;
# default: the default model when it exists; without one, random-weight
# models only, said loudly), GPU_CHECK_ARGS (extra gpu-check options, e.g.
# "--quick"), GPU_CHECK_SANITIZE=1 (also run the per-type, the sparse and
# the cold-tier checks under compute-sanitizer), TMPDIR.
set -u

die() {
	echo "check.sh: $*" >&2
	exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
work=${TMPDIR:-/tmp}/kvscope-gpucheck.$$
mkdir -p "$work" || die "cannot create $work"
started=$(date +%s)

tarball=
if [ $# -ge 1 ]; then
	[ -f "$1" ] || die "$1: no such tarball"
	tarball=$1
elif [ ! -x "$src/configure" ]; then
	tarball=$(ls "$src"/kvscope-*.tar.gz 2>/dev/null | head -n 1)
fi
if [ -n "$tarball" ]; then
	tar -xzf "$tarball" -C "$work" || die "cannot unpack $tarball"
	src=$(ls -d "$work"/kvscope-*/ | head -n 1)
	src=${src%/}
	[ -x "$src/configure" ] || die "$tarball has no configure script"
elif [ ! -x "$src/configure" ]; then
	command -v autoreconf >/dev/null 2>&1 ||
		die "no configure in $src and no autoreconf here: carry a 'make dist' tarball and pass it"
	(cd "$src" && autoreconf -fi) || die "autoreconf failed"
fi
PATH=$PATH:/usr/local/cuda/bin
command -v nvcc >/dev/null 2>&1 || die "nvcc is not on PATH nor in /usr/local/cuda/bin"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

build=$work/build
mkdir -p "$build" && cd "$build" || die "cannot enter $build"
echo "== build: $src -> $build"
"$src/configure" --with-cuda --without-tui --without-lua --without-sqlite --without-libedit \
	>configure.log 2>&1 || { tail -n 20 configure.log; die "configure failed (log: $build/configure.log)"; }
jobs=$(nproc 2>/dev/null || echo 4)
make -j"$jobs" kvscope tests/gpu/gpu-check tests/unit/test-gpu-host tests/unit/test-gpu-sparse \
	tests/unit/test-gpu-ring tests/unit/test-cuda-dq \
	>make.log 2>&1 || { tail -n 40 make.log; die "build failed (log: $build/make.log)"; }
if grep -i 'warning' make.log >/dev/null; then
	grep -i -A3 'warning' make.log | head -n 40
	echo "(build warnings above)"
fi
echo "   built in $(($(date +%s) - started)) s"

fail=0
echo "== unit tests of the GPU code"
for t in test-gpu-host test-gpu-sparse test-gpu-ring test-cuda-dq; do
	KVSCOPE_BIN=$build/kvscope KVSCOPE_SRCDIR=$src KVSCOPE_BUILDDIR=$build ./tests/unit/$t ||
		{ echo "FAIL $t"; fail=1; }
done

model=${KVSCOPE_MODEL:-${XDG_DATA_HOME:-$HOME/.local/share}/kvscope/models/SmolLM2-135M-Instruct.Q4_1.gguf}
model_arg=
if [ -f "$model" ]; then
	model_arg="--model $model"
	echo "== model file: $model"
	./kvscope generate --backend cuda --model "$model" --prompt "Name three colours." \
		--max-tokens 32 --temp 0 || { echo "FAIL kvscope generate --backend cuda"; fail=1; }
else
	echo "== NOTE: no model file ($model): parity and timings on random-weight models only"
fi

if [ "${GPU_CHECK_SANITIZE:-0}" = 1 ] && ! command -v compute-sanitizer >/dev/null 2>&1; then
	echo "FAIL GPU_CHECK_SANITIZE=1 but no compute-sanitizer on PATH"
	fail=1
elif [ "${GPU_CHECK_SANITIZE:-0}" = 1 ]; then
	echo "== compute-sanitizer: per-type parity"
	compute-sanitizer --tool memcheck --error-exitcode 9 ./tests/gpu/gpu-check types \
		--prompts 1 --gen 4 >sanitizer.log 2>&1 || { tail -n 40 sanitizer.log; echo "FAIL compute-sanitizer"; fail=1; }
	echo "== compute-sanitizer: sparse decode parity"
	compute-sanitizer --tool memcheck --error-exitcode 9 ./tests/gpu/gpu-check sparse-parity \
		--quick >sanitizer-sparse.log 2>&1 ||
		{ tail -n 40 sanitizer-sparse.log; echo "FAIL compute-sanitizer (sparse)"; fail=1; }
	echo "== compute-sanitizer: cold-tier copies (memcheck, then racecheck of the streams)"
	compute-sanitizer --tool memcheck --error-exitcode 9 ./tests/gpu/gpu-check cold \
		>sanitizer-cold.log 2>&1 || { tail -n 40 sanitizer-cold.log; echo "FAIL compute-sanitizer (cold)"; fail=1; }
	compute-sanitizer --tool racecheck --error-exitcode 9 ./tests/gpu/gpu-check launches \
		>sanitizer-race.log 2>&1 || { tail -n 40 sanitizer-race.log; echo "FAIL compute-sanitizer racecheck (fused attention)"; fail=1; }
fi

echo "== gpu-check all"
# shellcheck disable=SC2086
./tests/gpu/gpu-check all $model_arg ${GPU_CHECK_ARGS:-}
rc=$?
[ $rc -eq 0 ] || fail=1
echo "== done in $(($(date +%s) - started)) s: $([ $fail -eq 0 ] && echo 'all passed' || echo 'FAILURES above')"
[ $rc -ge 2 ] && exit 2
exit $fail
