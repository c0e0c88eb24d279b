#!/bin/sh
# check.sh: the whole test suite, as CI runs it (after scripts/setup.sh).
#
# 1. `make check` in build/, the normal build (unit, fuzz-corpus replay, end-to-end);
# 2. the same suite again in build-asan/, a debug build with -Werror,
#    AddressSanitizer and UndefinedBehaviorSanitizer;
# 3. build-min/, configured without every optional part (--without-tui
#    --without-lua --without-sqlite --without-libedit --without-cuda): the
#    GPU machine's configuration, less the CUDA backend that 1 and 2 compile
#    where nvcc is. The stubs standing in for the missing parts (notui.c,
#    noscript.c, nostore.c, nocuda.c, lineedit.c without libedit) compile
#    with -Werror, the unit tests built there run (the engine's, the KV
#    cache's, the model's ...) and the end-to-end scripts that check what
#    a stub says. Its other end-to-end scripts drive the same engine code
#    as 1 does, so they are left out to keep the suite fast.
# A skipped test counts as a failure here: CI has the model and every
# dependency, so a skip means something is missing. The last line is the
# summary "N passed, N failed".
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
jobs=$(nproc 2>/dev/null || echo 2)
pass=0
fail=0

# Add one make-check run's results (its .trs files) to the totals; a run that
# produced no results at all (a build failure) counts as one failure.
tally() {
	dir=$1
	res=$(find "$dir/tests" -name '*.trs' -exec grep -h '^:test-result:' {} + 2>/dev/null || true)
	if [ -z "$res" ]; then
		echo "no test results under $dir (did the build fail?)" >&2
		fail=$((fail + 1))
		return
	fi
	p=$(printf '%s\n' "$res" | grep -c ': PASS' || true)
	f=$(printf '%s\n' "$res" | grep -vc ': PASS' || true)
	pass=$((pass + p))
	fail=$((fail + f))
	find "$dir/tests" -name '*.trs' -exec grep -l -E '^:test-result: (FAIL|ERROR|XPASS|SKIP)' {} + 2>/dev/null |
		sed 's/\.trs$//; s/^/not passed: /' >&2 || true
}

echo "== make check (build/)" >&2
find build/tests -name '*.trs' -delete 2>/dev/null || true
make -C build -s -j"$jobs" check >/dev/null 2>&1 || true
tally "$top/build"

echo "== make check (ASan + UBSan + -Werror: build-asan/)" >&2
mkdir -p build-asan
(
	cd build-asan &&
	{ [ -f Makefile ] && [ ! ../configure -nt config.status ] ||
	  ../configure -q --enable-debug --enable-asan; } &&
	find tests -name '*.trs' -delete 2>/dev/null; make -s -j"$jobs" >/dev/null &&
	ASAN_OPTIONS=detect_leaks=1 make -s -j"$jobs" check >/dev/null 2>&1
) || true
tally "$top/build-asan"

echo "== make check (without the optional parts: build-min/)" >&2
mkdir -p build-min
(
	cd build-min &&
	{ [ -f Makefile ] && [ ! ../configure -nt config.status ] ||
	  ../configure -q --without-tui --without-lua --without-sqlite --without-libedit --without-cuda; } &&
	find tests -name '*.trs' -delete 2>/dev/null; make -s -j"$jobs" CFLAGS=-Werror >/dev/null &&
	make -s -j"$jobs" CFLAGS=-Werror check >/dev/null 2>&1 \
		TESTS='$(UNIT_TESTS) tests/e2e/crash-loop.sh tests/e2e/lua.sh tests/e2e/sessions.sh tests/e2e/tui.sh'
) || true
tally "$top/build-min"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
