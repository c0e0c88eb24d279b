#!/bin/sh
# lua.sh: the Lua runtime end to end on a tiny generated model
# (tests/util/mktiny): the Lua test suite (tests/lua/*.lua: API, sandbox,
# policies, bundled plugins), the bundled session scripts (rps.lua gives
# the same counts as `kvscope eval rps` for the same settings),
# doc/lua-api.md equal to `kvscope run --api-doc`, and bad input to
# `kvscope run` failing with one line and the right exit code.
set -u
. "${KVSCOPE_SRCDIR:?}/tests/e2e/lib.sh"
src=${KVSCOPE_SRCDIR:?}
build=${KVSCOPE_BUILDDIR:?}

# built without Lua (configure --without-lua): kvscope run must say so, exit 2
if "$bin" run --api-doc 2>&1 | grep -q 'Lua support was not built'; then
	"$bin" run "$src/sessions/rps.lua" >"$tmp/o" 2>"$tmp/e"
	rc=$?
	[ "$rc" -eq 2 ] && [ "$(wc -l <"$tmp/e")" -eq 1 ] && grep -q 'Lua support was not built' "$tmp/e" ||
		{ echo "FAIL: without Lua, kvscope run: exit $rc, $(cat "$tmp/e")" >&2; exit 1; }
	echo "lua.sh: built without Lua; kvscope run says so (the Lua suite needs Lua)"
	exit 0
fi

model=$tmp/tiny.gguf
"$build/tests/util/mktiny" "$model" || { echo "lua.sh: cannot write the tiny model" >&2; exit 1; }
run() { "$bin" run --model "$model" -t 1 --results "$tmp/results" "$@"; }

# the Lua test suite, every tests/lua/NAME.lua: each prints "NAME: all
# checks passed" at its end. plugins.lua runs with the bundled plugins
# loaded (bare names: found through the data folder); store.lua needs a
# database with turns in it, so it runs below, where there is one.
plugins="--plugin entropy-alarm --plugin recency-entropy.lua --plugin $src/plugins/token-stats.lua"
# paths.lua finds these in the results directory, each leading outside it;
# files.lua gets a FIFO named like a plugin
mkdir -p "$tmp/results" "$tmp/outside"
echo original >"$tmp/outside/victim"
ln -s "$tmp/outside/victim" "$tmp/results/link-file"
ln -s "$tmp/outside" "$tmp/results/link-dir"
ln "$tmp/outside/victim" "$tmp/results/hard-link"
mkfifo "$tmp/results/fifo" "$tmp/fifo.lua"
n_suite=0
for f in "$src"/tests/lua/*.lua; do
	t=$(basename "$f" .lua)
	extra= args=
	case $t in
	store) continue ;;
	plugins) extra=$plugins ;;
	files) args=$tmp/fifo.lua ;;
	memcap) extra="--mem-cap 16" ;;
	doc)
		printf 'Field notes.\nThe secret code of the vault is 4721.\nThe river is wide.\n' >"$tmp/doc.txt"
		extra="--doc $tmp/doc.txt" args=$tmp/doc.txt
		;;
	esac
	n_suite=$((n_suite + 1))
	# shellcheck disable=SC2086
	run $extra "$f" $args >"$tmp/$t.out" 2>"$tmp/$t.err"
	rc=$?
	if [ "$rc" -ne 0 ] || ! grep -q "^$t: all checks passed" "$tmp/$t.out"; then
		fail "tests/lua/$t.lua: exit $rc"
		grep -v '^ok' "$tmp/$t.out" >&2
		tail -20 "$tmp/$t.err" >&2
	fi
done
[ "$n_suite" -ge 4 ] || fail "tests/lua/: $n_suite suite files run, expected api, plugins, policy, sandbox at least"
# nothing written through the links: the file outside is as it was, and alone
[ "$(cat "$tmp/outside/victim")" = original ] && [ "$(ls "$tmp/outside")" = victim ] ||
	fail "kvscope.write reached outside the results directory: $(ls -l "$tmp/outside"; cat "$tmp/outside/victim")"
# the results directory is never empty or the root
printf 'print(1)\n' >"$tmp/one.lua"
expect_bad 2 "--results: empty file name; expected a path" "$bin" run --model "$model" --results '' "$tmp/one.lua"
expect_bad 2 "^kvscope: --results: the results directory / is the root folder" "$bin" run --model "$model" --results / "$tmp/one.lua"
expect_bad 2 "the results directory //\. is the root folder" "$bin" run --model "$model" --results //. "$tmp/one.lua"

# past turns from the store (a build with SQLite): what `chat --db` saved
if "$bin" sessions list --db "$tmp/probe.db" 2>&1 | grep -q "built without SQLite"; then
	:
else
	printf 'first line\nsecond line\n' | "$bin" chat --model "$model" -t 1 --temp 0 -n 8 \
		--db "$tmp/mem.db" --title lua-store >"$tmp/chat.out" 2>"$tmp/chat.err" ||
		fail "chat --db: $(cat "$tmp/chat.err")"
	r1=$(sed -n 1p "$tmp/chat.out")
	r2=$(sed -n 2p "$tmp/chat.out")
	run --db "$tmp/mem.db" "$src/tests/lua/store.lua" "$r1" "$r2" >"$tmp/store.out" 2>"$tmp/store.err"
	if [ $? -ne 0 ] || ! grep -q "^store: all checks passed" "$tmp/store.out"; then
		fail "tests/lua/store.lua"
		grep -v '^ok' "$tmp/store.out" >&2
		tail -5 "$tmp/store.err" >&2
	fi
fi

# the API reference is generated from the C table
"$bin" run --api-doc >"$tmp/api.md" || fail "run --api-doc: exit $?"
cmp -s "$tmp/api.md" "$src/doc/lua-api.md" ||
	fail "doc/lua-api.md differs from 'kvscope run --api-doc' (regenerate it): $(diff "$src/doc/lua-api.md" "$tmp/api.md" | head -5)"

# rps.lua and kvscope eval rps: for the same settings the same user moves,
# model moves, outcome and bracketed moves held (at the end and on average
# over the rounds). Each setting is "policy budget seed dominant rounds";
# budget - is each one's default (256). At 256 the tiny model's cache
# evicts from the third round on. h2o and sirllm agree only where their
# scores do not decide a close call (at 1024 here): rps.lua's header says
# why they may differ.
for setting in "streaming 1024 5 rock 30" "h2o 1024 5 rock 30" "streaming - 2 paper 20" \
	"window 256 3 scissors 20" "lminfinite 256 2 paper 20"; do
	# shellcheck disable=SC2086
	set -- $setting
	pol=$1 seed=$3 dom=$4 rounds=$5
	lb= cb=
	[ "$2" = - ] || { lb="--budget $2"; cb="--kv-budget $2"; }
	# shellcheck disable=SC2086
	run "$src/sessions/rps.lua" --rounds "$rounds" --policy "$pol" $lb --seed "$seed" --dominant "$dom" \
		--json >"$tmp/rps-lua" 2>"$tmp/rps-lua.err" ||
		fail "rps.lua $setting: exit $? ($(tail -3 "$tmp/rps-lua.err"))"
	# shellcheck disable=SC2086
	"$bin" eval rps --model "$model" -t 1 --rounds "$rounds" --policy "$pol" $cb --seed "$seed" \
		--dominant "$dom" --json >"$tmp/rps-c" 2>/dev/null || fail "eval rps $setting: exit $?"
	for key in budget win tie lose moves_held_end; do
		a=$(tail -1 "$tmp/rps-lua" | grep -o "\"$key\":[0-9]*")
		b=$(tail -1 "$tmp/rps-c" | grep -o "\"$key\":[0-9]*")
		[ -n "$a" ] && [ "$a" = "$b" ] || fail "rps $setting: lua $a, C $b"
	done
	for key in model_moves user_moves; do
		a=$(tail -1 "$tmp/rps-lua" | grep -o "\"$key\":{[^}]*}" | tr -d '"' | tr ',' '\n' | sed 's/.*{//; s/}//' | sort | tr '\n' ' ')
		b=$(tail -1 "$tmp/rps-c" | grep -o "\"$key\":{[^}]*}" | tr -d '"' | tr ',' '\n' | sed 's/.*{//; s/}//' | sort | tr '\n' ' ')
		[ -n "$a" ] && [ "$a" = "$b" ] || fail "rps $setting $key: lua '$a', C '$b'"
	done
	# "held: H of R at the end; P % on average" against the C JSON's share
	# (printed to 4 places: within 0.06 percentage points of rps.lua's 1)
	a=$(sed -n 's/^bracketed moves held: [0-9]* of \([0-9]*\) at the end; \([0-9.]*\) % on average.*/\1 \2/p' "$tmp/rps-lua")
	b=$(tail -1 "$tmp/rps-c" | sed 's/.*"moves_revealed_end":\([0-9]*\),"moves_held_mean_share":\([0-9.]*\).*/\1 \2/')
	echo "$a $b" | awk 'NF == 4 && $1 == $3 && ($2 - 100 * $4) ^ 2 < 0.0036 { ok = 1 } END { exit !ok }' ||
		fail "rps $setting: moves revealed and held on average: lua '$a', C '$b' (C: share of 1)"
done

# compare-policies.lua: one row per (policy, budget) in CSV (token by token,
# span=off, so that each keeps exactly its budget)
run "$src/sessions/compare-policies.lua" --policies window:span=off,streaming:span=off,h2o:span=off \
	--budgets 96,160 --max-tokens 4 --csv \
	>"$tmp/cmp.csv" 2>"$tmp/cmp.err" || fail "compare-policies.lua: exit $? ($(tail -3 "$tmp/cmp.err"))"
[ "$(head -1 "$tmp/cmp.csv")" = "policy,budget,kept,evicted,evictions,restarts,facts_cached,recalled,answers,fallbacks" ] ||
	fail "compare-policies.lua: header $(head -1 "$tmp/cmp.csv")"
[ "$(grep -c '^window,96,96,\|^streaming,96,96,\|^h2o,96,96,\|^window,160,160,\|^streaming,160,160,\|^h2o,160,160,' "$tmp/cmp.csv")" -eq 6 ] ||
	fail "compare-policies.lua: expected 6 rows keeping exactly the budget: $(cat "$tmp/cmp.csv")"

# attention-dump.lua: every step's row of one head sums to 1; layers,
# heads and columns count from 0 as in the workbench
run "$src/sessions/attention-dump.lua" --layers 0,1 --heads 1 --max-tokens 3 --out att/a.csv >"$tmp/att.out" 2>&1 ||
	fail "attention-dump.lua: exit $? ($(cat "$tmp/att.out"))"
[ -f "$tmp/results/att/a.csv" ] || fail "attention-dump.lua wrote no $tmp/results/att/a.csv"
bad=$(awk -F, 'NR > 1 { s[$1 "," $3 "," $4] += $7 } END { for (k in s) if (s[k] < 0.999 || s[k] > 1.001) print k, s[k] }' \
	"$tmp/results/att/a.csv")
[ -z "$bad" ] || fail "attention-dump.lua: rows not summing to 1: $bad"
steps=$(awk -F, 'NR > 1 { print $1 }' "$tmp/results/att/a.csv" | sort -u | wc -l)
[ "$steps" -ge 4 ] || fail "attention-dump.lua: $steps steps, expected the prompt and 3 tokens at least"
[ "$(awk -F, 'NR > 1 { print $3 "/" $4 }' "$tmp/results/att/a.csv" | sort -u | tr '\n' ' ')" = "0/1 1/1 " ] &&
	[ "$(awk -F, 'NR == 2 { print $5 }' "$tmp/results/att/a.csv")" = 0 ] ||
	fail "attention-dump.lua: layers/heads $(awk -F, 'NR > 1 { print $3 "/" $4 }' "$tmp/results/att/a.csv" | sort -u | tr '\n' ' '), expected 0/1 1/1 and columns from 0"

# a script's own exit status and usage (kvscope.exit, kvscope.getopt)
run "$src/sessions/compare-policies.lua" --help >"$tmp/o" 2>"$tmp/e"
[ $? -eq 0 ] && grep -q '^usage: kvscope run compare-policies.lua' "$tmp/o" && grep -q '^  --budgets N1,N2,\.\.\. ' "$tmp/o" &&
	[ ! -s "$tmp/e" ] || fail "compare-policies.lua --help: $(cat "$tmp/o" "$tmp/e")"
run "$src/sessions/rps.lua" --rounds 3 --bogus >"$tmp/o" 2>"$tmp/e"
[ $? -eq 2 ] && [ "$(wc -l <"$tmp/e")" -eq 1 ] && grep -q "^rps.lua: unknown argument '--bogus'" "$tmp/e" ||
	fail "rps.lua --bogus: $(cat "$tmp/e")"
run "$src/sessions/attention-dump.lua" --layers 99 >"$tmp/o" 2>"$tmp/e"
[ $? -eq 2 ] && [ "$(wc -l <"$tmp/e")" -eq 1 ] && grep -q "layer 99, expected 0 \.\. [0-9]" "$tmp/e" ||
	fail "attention-dump.lua --layers 99: $(cat "$tmp/e")"
cat >"$tmp/exit.lua" <<'LUA'
local kvscope = require "kvscope"
print("before")
kvscope.timer(5, function() kvscope.exit(3, "stopped by a timer") end)
kvscope.sleep(2000)
print("after")
LUA
run "$tmp/exit.lua" >"$tmp/o" 2>"$tmp/e"
[ $? -eq 3 ] && [ "$(cat "$tmp/o")" = before ] && [ "$(cat "$tmp/e")" = "stopped by a timer" ] ||
	fail "kvscope.exit from a timer: exit $?, stdout $(cat "$tmp/o"), stderr $(cat "$tmp/e")"
printf 'print(1)\nrequire("kvscope").exit()\nprint(2)\n' >"$tmp/exit0.lua"
run "$tmp/exit0.lua" >"$tmp/o" 2>"$tmp/e"
[ $? -eq 0 ] && [ "$(cat "$tmp/o")" = 1 ] && [ ! -s "$tmp/e" ] || fail "kvscope.exit(): $(cat "$tmp/o" "$tmp/e")"
printf 'require("kvscope").exit(126)\n' >"$tmp/exit126.lua"
run "$tmp/exit126.lua" >"$tmp/o" 2>"$tmp/e"
[ $? -eq 1 ] && grep -q 'status: 126: expected an integer in 0..125' "$tmp/e" || fail "kvscope.exit(126): $(cat "$tmp/e")"
# in a plugin kvscope.exit raises its message as an error: that plugin fails
# to load, so the run refuses to start (exit 2) and the script never runs
printf 'require("kvscope").exit(1, "plugin says no")\n' >"$tmp/pexit.lua"
printf 'print("script ran")\n' >"$tmp/after.lua"
run --plugin "$tmp/pexit.lua" "$tmp/after.lua" >"$tmp/o" 2>"$tmp/e"
[ $? -eq 2 ] && grep -q 'plugin says no' "$tmp/e" && [ ! -s "$tmp/o" ] ||
	fail "kvscope.exit in a plugin: $(cat "$tmp/o" "$tmp/e")"

# bad input: one line, exit 2 (usage, files) or 1 (the script failed)
"$bin" run >"$tmp/o" 2>"$tmp/e"
[ $? -eq 2 ] && [ "$(wc -l <"$tmp/e")" -eq 1 ] && grep -q 'expected a script' "$tmp/e" || fail "run without a script: $(cat "$tmp/e")"
"$bin" run "$tmp/none.lua" >"$tmp/o" 2>"$tmp/e"
[ $? -eq 2 ] && grep -q 'none.lua' "$tmp/e" || fail "run of a missing file: $(cat "$tmp/e")"
printf 'local x = = 1\n' >"$tmp/syntax.lua"
"$bin" run "$tmp/syntax.lua" >"$tmp/o" 2>"$tmp/e"
[ $? -ne 0 ] && [ "$(wc -l <"$tmp/e")" -eq 1 ] && grep -q "syntax.lua:1:" "$tmp/e" || fail "syntax error: $(cat "$tmp/e")"
printf 'error("boom")\n' >"$tmp/boom.lua"
"$bin" run "$tmp/boom.lua" >"$tmp/o" 2>"$tmp/e"
[ $? -eq 1 ] && grep -q 'boom' "$tmp/e" || fail "failing script: $(cat "$tmp/e")"
# a plugin or script file: regular, not blocking, at most 4 MiB (a quarter of --mem-cap when less)
expect_bad 2 "$tmp/fifo.lua: is a FIFO" "$bin" run --plugin "$tmp/fifo.lua" "$tmp/boom.lua"
expect_bad 2 "/dev/zero: is a character device" "$bin" run --plugin /dev/zero "$tmp/boom.lua"
head -c 4194305 /dev/zero | tr '\0' ' ' >"$tmp/big.lua"
expect_bad 2 "big.lua: 4194305 bytes, expected at most 4194304" "$bin" run "$tmp/big.lua"
head -c 300000 /dev/zero | tr '\0' ' ' >"$tmp/mid.lua"
expect_bad 2 "mid.lua: 300000 bytes, expected at most 262144" "$bin" run --mem-cap 1 "$tmp/mid.lua"
printf 'x = "SECRETWORD\n' >"$tmp/secret.lua"
expect_bad 2 "secret.lua:1: unfinished string$" "$bin" run "$tmp/secret.lua"
"$bin" run --plugin "$tmp/none.lua" "$tmp/boom.lua" >"$tmp/o" 2>"$tmp/e"
[ $? -eq 2 ] && [ "$(wc -l <"$tmp/e")" -eq 1 ] || fail "missing plugin: $(cat "$tmp/e")"
printf 'print(1)\n' >"$tmp/bad name.lua"
"$bin" run "$tmp/bad name.lua" >"$tmp/o" 2>"$tmp/e"
[ $? -eq 2 ] && grep -q 'letters, digits' "$tmp/e" || fail "bad script name: $(cat "$tmp/e")"
"$bin" run --hook-ms 0 "$tmp/boom.lua" >"$tmp/o" 2>"$tmp/e"
[ $? -eq 2 ] && [ "$(wc -l <"$tmp/e")" -eq 1 ] || fail "--hook-ms 0: $(cat "$tmp/e")"
# a session's context larger than the memory the system gives: a Lua error
# naming the size, not xmalloc's abort (the tiny model's 1048576 slots need
# 388 MiB; a 300 MB address space runs its default context). A build whose
# runtime cannot start under the limit (ASan) skips this.
printf 'local s = require("kvscope").session{ctx = %s}\nprint(s:info().n_ctx)\n' 2048 >"$tmp/ctx-small.lua"
printf 'local s = require("kvscope").session{ctx = %s}\nprint(s:info().n_ctx)\n' 1048576 >"$tmp/ctx-big.lua"
if (ulimit -v 300000 && run "$tmp/ctx-small.lua" >/dev/null 2>&1); then
	(ulimit -v 300000 && run "$tmp/ctx-big.lua") >"$tmp/o" 2>"$tmp/e"
	rc=$?
	[ "$rc" -eq 1 ] && grep -q 'kvscope.session: .*the KV cache needs [0-9.]* MiB for 1048576 slots' "$tmp/e" ||
		fail "session{ctx = 1048576} under ulimit -v: exit $rc, $(cat "$tmp/e")"
else
	echo "lua.sh: a session does not run under ulimit -v 300000 here (ASan?): ctx check skipped"
fi
# a script that loops forever stops at --timeout: exit 1, one line
printf 'while true do end\n' >"$tmp/loop.lua"
"$bin" run --timeout 0.2 "$tmp/loop.lua" >"$tmp/o" 2>"$tmp/e"
[ $? -eq 1 ] && [ "$(wc -l <"$tmp/e")" -eq 1 ] && grep -q 'loop.lua: stopped at its --timeout of 0.2 s' "$tmp/e" ||
	fail "--timeout: $(cat "$tmp/e")"


# hostile scripts and plugins (tests/lua/hostile.lua has the in-process
# ones): what once crashed, froze or misreported now fails cleanly, with one
# line under --timeout. Each runs under timeout(1): 124 means it froze.
hostile() { # hostile NAME EXPECTED_EXIT MAX_SECONDS GREP|"" [kvscope run options...]
	h_name=$1 h_want=$2 h_max=$3 h_grep=$4
	shift 4
	h_t0=$(date +%s)
	timeout 60 "$bin" run --model "$model" -t 1 --results "$tmp/results" "$@" "$tmp/$h_name.lua" \
		>"$tmp/$h_name.out" 2>"$tmp/$h_name.err"
	h_rc=$?
	h_dt=$(($(date +%s) - h_t0))
	[ "$h_rc" -eq "$h_want" ] && [ "$h_dt" -le "$h_max" ] && { [ -z "$h_grep" ] || grep -q -- "$h_grep" "$tmp/$h_name.err"; } ||
		fail "hostile $h_name: exit $h_rc (expected $h_want) after ${h_dt}s (at most ${h_max}s): $(head -3 "$tmp/$h_name.err")"
}
one_line() { [ "$(wc -l <"$tmp/$1.err")" -eq 1 ] || fail "hostile $1: expected one line, got: $(cat "$tmp/$1.err")"; }
printf 'local n = 0\nerror(setmetatable({}, {__index = function() n = n + 1 if n == 1 then return 0 end error("boom") end}))\n' >"$tmp/errindex.lua"
hostile errindex 1 20 'error object is a table value'
printf 'error({kvscope_exit = -7})\n' >"$tmp/exitneg.lua"
hostile exitneg 1 20 'kvscope_exit = -7}: an exit request needs an integer status in 0..125'
printf 'error({kvscope_exit = 300})\n' >"$tmp/exit300.lua"
hostile exit300 1 20 'kvscope_exit = 300}'
printf 'error({kvscope_exit = 2.5})\n' >"$tmp/exitfrac.lua"
hostile exitfrac 1 20 'kvscope_exit = 2.5}'
printf 'error({kvscope_exit = 3})\n' >"$tmp/exit3.lua"
hostile exit3 3 20 '' # a script's well-formed request still ends it with that status
printf 'require("kvscope").sleep(0/0)\n' >"$tmp/sleepnan.lua"
hostile sleepnan 1 20 'NaN'
printf 'require("kvscope").sleep(8000)\nprint("woke")\n' >"$tmp/sleep8.lua"
hostile sleep8 1 5 'sleep8.lua: stopped at its --timeout of 1 s' --timeout 1
one_line sleep8
cat >"$tmp/longchat.lua" <<'LUA'
local kvscope = require "kvscope"
local s = kvscope.session{ temp = 0, max_tokens = 100000, budget = 64, policy = "window" }
s:set_length("50000t") -- the tiny model would write 45000 tokens (about 40 s)
s:chat("go on")
print("completed")
LUA
hostile longchat 1 10 'longchat.lua: stopped at its --timeout of 1 s' --timeout 1
one_line longchat
for c in "string.rep('', math.maxinteger) while true do end" "table.move({}, 1, 2^40, 1, {})" \
	"string.find(('a'):rep(3000), ('a*'):rep(12) .. 'b')" \
	"xpcall(function() while true do end end, function() while true do end end)" \
	"local s = require('kvscope').session{ temp = 0, policy = 'window', budget = 64 } for i = 1, 1e9 do s:feed('word ') end"; do
	printf '%s\n' "$c" >"$tmp/freeze.lua"
	hostile freeze 1 10 'freeze.lua: stopped at its --timeout of 1 s' --timeout 1
	one_line freeze
done
# scheduled functions that schedule two more each: each overruns its own
# hook budget (reported), and the whole run stops at --timeout (the last line)
printf '%s\n' "local k = require('kvscope') local function f() local t = k.clock() while k.clock() - t < 20 do end k.schedule(f) k.schedule(f) end k.schedule(f)" \
	>"$tmp/sched.lua"
hostile sched 1 10 'sched.lua: stopped at its --timeout of 1 s' --timeout 1
[ "$(tail -1 "$tmp/sched.err")" = "kvscope: $tmp/sched.lua: stopped at its --timeout of 1 s" ] ||
	fail "hostile sched: last line $(tail -1 "$tmp/sched.err")"
printf 'setmetatable({}, {__gc = function() while true do end end})\n' >"$tmp/gc.lua"
hostile gc 1 20 '__gc finalizers are not available'
# a plugin whose token hook raises such an error value: the plugin is
# disabled, the script goes on and exits 0
printf 'local k = require "kvscope"\nlocal n = 0\nk.on("token", function() n = 0 error(setmetatable({}, {__index = function() n = n + 1 if n == 1 then return 0 end error("boom") end})) end)\n' \
	>"$tmp/badtok.lua"
printf 'local s = require("kvscope").session{ temp = 0, max_tokens = 8 }\nprint((s:chat("hi")))\nprint("done")\n' >"$tmp/usebad.lua"
hostile usebad 0 20 'plugin badtok disabled' --plugin "$tmp/badtok.lua"
grep -q '^done$' "$tmp/usebad.out" || fail "hostile usebad: the script did not finish: $(cat "$tmp/usebad.out")"
# an unload hook that loads another plugin at exit: the run still ends
cat >"$tmp/respawn.lua" <<LUA
local kvscope = require "kvscope"
kvscope.on("unload", function() kvscope.load_plugin("$tmp/respawn.lua") end)
LUA
printf 'print("ran")\n' >"$tmp/plain.lua"
hostile plain 0 20 '' --plugin "$tmp/respawn.lua"
grep -q '^ran$' "$tmp/plain.out" || fail "hostile respawn: $(cat "$tmp/plain.out" "$tmp/plain.err")"

[ "$fails" -eq 0 ] || exit 1
echo "lua.sh: all checks passed"
