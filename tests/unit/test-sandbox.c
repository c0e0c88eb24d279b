/*
 * test-sandbox.c: the sandbox's guarded library functions against the Lua
 * library's own, and their deadlines.
 *
 *   - the bounded pattern matcher (sandbox-match.c): string.find, match,
 *     gmatch and gsub give the library's results, error messages included,
 *     on 40000 random patterns (every pattern item: classes, sets, ranges,
 *     quantifiers, anchors, captures, position captures, back references,
 *     %b, %f, malformed ones) over random subjects, and on a fixed list of
 *     edge cases (init positions, plain find, empty matches, replacement
 *     strings, tables and functions);
 *   - the guarded table functions (sandbox-lib.c): insert, remove, move,
 *     concat, unpack and sort give the library's results and errors on
 *     random arrays and arguments (sort: the same multiset, in order);
 *     string.rep the same strings;
 *   - under a deadline already past, each guarded function that would
 *     loop (string.rep of "" 2^63 times, table.move of 2^40 elements, a
 *     backtracking pattern, table.insert under a __len of 2^40, a handler
 *     that loops in xpcall, a loop in a __close of a coroutine that died
 *     of the deadline) stops with the budget error instead of running on;
 *   - setmetatable refuses a __gc field;
 *   - a plugin whose call comes back far past its deadline (here through a
 *     C function of the test's that sleeps, which no check can stop) is
 *     disabled at once and never called again.
 *
 * The states here are plain ones with the sandbox's guards installed over
 * the full library (the originals stay reachable as lib.*), and a plugin
 * record whose deadline the test sets.
 */
#include "script/script-int.h"
#include "tests/unit/test.h"

#include <time.h>

static struct script_plugin test_p;

/* A state with the full library as `lib` and the guarded one as globals. */
static lua_State *test_state(void)
{
	lua_State *L = luaL_newstate();
	*(struct script_plugin **)lua_getextraspace(L) = &test_p;
	test_p.mem_cap = (size_t)1 << 40;
	luaL_openlibs(L);
	/* lib: copies of the library tables, before the guards replace entries */
	lua_newtable(L);
	static const char *const libs[] = { "string", "table", "coroutine" };
	for (size_t i = 0; i < KVS_ARRAY_LEN(libs); i++) {
		lua_newtable(L);
		lua_getglobal(L, libs[i]);
		lua_pushnil(L);
		while (lua_next(L, -2) != 0) {
			lua_pushvalue(L, -2);
			lua_insert(L, -2);
			lua_settable(L, -5);
		}
		lua_pop(L, 1);
		lua_setfield(L, -2, libs[i]);
	}
	lua_getglobal(L, "xpcall");
	lua_setfield(L, -2, "xpcall");
	lua_getglobal(L, "setmetatable");
	lua_setfield(L, -2, "setmetatable");
	lua_setglobal(L, "lib");
	lua_pushglobaltable(L);
	sandbox_lib_guard(L, lua_gettop(L));
	lua_pop(L, 1);
	sandbox_rearm(L);
	return L;
}

/* Run code in L; its error message, or NULL. */
static const char *test_run(lua_State *L, const char *code)
{
	if (luaL_loadstring(L, code) != LUA_OK || lua_pcall(L, 0, 0, 0) != LUA_OK)
		return lua_tostring(L, -1);
	return NULL;
}

/* The differential checks, in Lua: each mismatch is printed and counted in
 * the global `bad`; `n` counts the cases. */
static const char test_diff[] =
        "bad, n = 0, 0\n"
        "local function show(v) return type(v) == 'string' and string.format('%q', v) or "
        "tostring(v) end\n"
        "local function pack(ok, ...) return { ok = ok, n = select('#', ...), ... } end\n"
        "local function same(what, a, b)\n"
        "  n = n + 1\n"
        "  local eq = a.ok == b.ok and a.n == b.n\n"
        "  for i = 1, math.max(a.n, b.n) do eq = eq and a[i] == b[i] end\n"
        "  if not eq then\n"
        "    bad = bad + 1\n"
        "    if bad <= 20 then\n"
        "      local function str(r) local t = {} for i = 1, r.n do t[i] = show(r[i]) end\n"
        "        return tostring(r.ok) .. ': ' .. table.concat(t, ', ') end\n"
        "      print('MISMATCH ' .. what .. '\\n  lib:     ' .. str(a) .. '\\n  sandbox: ' .. "
        "str(b))\n"
        "    end\n"
        "  end\n"
        "end\n"
        "local L, G = lib.string, string\n"
        "local function gm(f, s, p, init) local out = {} for a, b in f(s, p, init) do out[#out + "
        "1] = tostring(a) .. '|' .. tostring(b) end return table.concat(out, ',') end\n"
        "local function check(s, p, init)\n"
        "  local q = string.format('(%q, %q, %s)', s, p, tostring(init))\n"
        "  same('find' .. q, pack(pcall(L.find, s, p, init)), pack(pcall(G.find, s, p, init)))\n"
        "  same('find plain' .. q, pack(pcall(L.find, s, p, init, true)), pack(pcall(G.find, s, p, "
        "init, true)))\n"
        "  same('match' .. q, pack(pcall(L.match, s, p, init)), pack(pcall(G.match, s, p, init)))\n"
        "  same('gmatch' .. q, pack(pcall(gm, L.gmatch, s, p, init)), pack(pcall(gm, G.gmatch, s, "
        "p, init)))\n"
        "  for _, r in ipairs{ '<%0>', '%1%%', '%2', 'x', '%', '%x' } do\n"
        "    same('gsub ' .. r .. q, pack(pcall(L.gsub, s, p, r)), pack(pcall(G.gsub, s, p, r)))\n"
        "  end\n"
        "  same('gsub n' .. q, pack(pcall(L.gsub, s, p, '-', init)), pack(pcall(G.gsub, s, p, '-', "
        "init)))\n"
        "  local t = { a = 'A', b = false, ['()'] = 7, [1] = 'one' }\n"
        "  same('gsub table' .. q, pack(pcall(L.gsub, s, p, t)), pack(pcall(G.gsub, s, p, t)))\n"
        "  local f = function(a, b) if a == 'c' then return nil end if b == 2 then return {} end "
        "return (a or '') .. '.' end\n"
        "  same('gsub fn' .. q, pack(pcall(L.gsub, s, p, f)), pack(pcall(G.gsub, s, p, f)))\n"
        "end\n"
        "-- fixed cases\n"
        "for _, c in ipairs{\n"
        "  { 'hello world', 'o', 1 }, { 'hello world', 'o', -3 }, { 'hello', 'l+', 10 }, { "
        "'hello', '', 6 },\n"
        "  { 'hello', '', 7 }, { '', '', 1 }, { 'abc', '^b', 2 }, { 'a.b', '.', 1 }, { 'a+b', '+', "
        "1 },\n"
        "  { ' trim me  ', '^%s*(.-)%s*$', 1 }, { 'key = value', '(%w+)%s*=%s*(%w+)', 1 },\n"
        "  { 'f(a(b)c)d', '%b()', 1 }, { 'THE (quick) fox', '%f[%a]%a+', 1 }, { 'abab', '(ab)%1', "
        "1 },\n"
        "  { 'x', '()', 1 }, { 'abc', '()b()', 1 }, { 'abc', '[%]', 1 }, { 'abc', '[a', 1 },\n"
        "  { 'abc', '%', 1 }, { 'abc', '%b', 1 }, { 'abc', '%ba', 1 }, { 'abc', '%f', 1 },\n"
        "  { 'abc', '(', 1 }, { 'abc', ')', 1 }, { 'abc', '%1', 1 }, { 'abc', '(a)%2', 1 },\n"
        "  { 'abc', 'x(', 1 }, { 'a]b', '[]]', 1 }, { 'a^b', '[^^]', 1 }, { 'a-b', '[a-]', 1 },\n"
        "  { 'a\\0b', '%z', 1 }, { 'a\\0b', '\\0', 1 }, { 'a\\0b', '[\\0]', 1 }, { 'aaa', 'a-$', 1 "
        "},\n"
        "  { 'aaa', 'a*', 1 }, { 'aaa', 'a?a?a?a', 1 }, { 'a$b', '$b', 1 }, { 'ab', 'b$', 1 },\n"
        "  { string.rep('(', 40), string.rep('(', 33), 1 }, { 'abc', '^', 1 }, { 'abc', '^$', 1 "
        "},\n"
        "} do check(c[1], c[2], c[3]) end\n"
        "-- random cases\n"
        "local items = { 'a', 'b', 'c', '.', '%a', '%d', '%s', '%W', '%p', '[ab]', '[^a]', "
        "'[a-c]',\n"
        "  '[%a_]', '[]]', '(', ')', '()', '*', '+', '-', '?', '^', '$', '%b()', '%f[%a]', "
        "'%f[%A]',\n"
        "  '%1', '%2', '%', '[', '%%', '%.', 'x', ' ', '1' }\n"
        "local chars = { 'a', 'a', 'b', 'c', '(', ')', ' ', '1', '_', '.', '%', 'x', '[', ']' }\n"
        "math.randomseed(15)\n"
        "for _ = 1, 40000 do\n"
        "  local p = {}\n"
        "  for i = 1, math.random(0, 7) do p[i] = items[math.random(#items)] end\n"
        "  local s = {}\n"
        "  for i = 1, math.random(0, 12) do s[i] = chars[math.random(#chars)] end\n"
        "  check(table.concat(s), table.concat(p), math.random(-3, 14))\n"
        "end\n";

/* Table functions and string.rep against the library's. */
static const char test_tables[] =
        "bad, n = 0, 0\n"
        "local function pack(ok, ...) return { ok = ok, n = select('#', ...), ... } end\n"
        "local function dump(t) local o = {} for k, v in pairs(t) do o[#o + 1] = tostring(k) .. "
        "'=' .. tostring(v) end table.sort(o) return table.concat(o, ' ') end\n"
        "local function norm(r)\n"
        "  if not r.ok then\n"
        "    r[1] = tostring(r[1]):gsub(\"bad argument #%d+ to '[^']*'\", 'bad argument')\n"
        "    r[1] = r[1]:gsub('attempt to compare %a+ with %a+', 'attempt to compare') -- the "
        "first pair the sort compares\n"
        "  end\n"
        "  return r\n"
        "end\n"
        "local function same(what, a, b)\n"
        "  n = n + 1\n"
        "  a, b = norm(a), norm(b)\n"
        "  local eq = a.ok == b.ok and a.n == b.n\n"
        "  for i = 1, math.max(a.n, b.n) do\n"
        "    local x, y = a[i], b[i]\n"
        "    if type(x) == 'table' and type(y) == 'table' then eq = eq and dump(x) == dump(y) else "
        "eq = eq and x == y end\n"
        "  end\n"
        "  if not eq then bad = bad + 1 if bad <= 20 then print('MISMATCH ' .. what, a.ok, a[1], "
        "b.ok, b[1]) end end\n"
        "end\n"
        "local T = lib.table\n"
        "math.randomseed(7)\n"
        "local function arr() local t = {} for i = 1, math.random(0, 9) do t[i] = math.random(1, "
        "5) end return t end\n"
        "local function copy(t) local c = {} for k, v in pairs(t) do c[k] = v end return c end\n"
        "for _ = 1, 3000 do\n"
        "  local t, a, b, c = arr(), math.random(-2, 11), math.random(-2, 11), math.random(-2, "
        "11)\n"
        "  local x, y = copy(t), copy(t)\n"
        "  same('insert', pack(pcall(T.insert, x, a, 'v')), pack(pcall(table.insert, y, a, 'v')))\n"
        "  same('insert t', pack(true, x), pack(true, y))\n"
        "  x, y = copy(t), copy(t)\n"
        "  same('insert2', pack(pcall(T.insert, x, 'v')), pack(pcall(table.insert, y, 'v')))\n"
        "  same('insert4', pack(pcall(T.insert, x, 1, 2, 3)), pack(pcall(table.insert, y, 1, 2, "
        "3)))\n"
        "  x, y = copy(t), copy(t)\n"
        "  same('remove', pack(pcall(T.remove, x, a)), pack(pcall(table.remove, y, a)))\n"
        "  same('remove t', pack(true, x), pack(true, y))\n"
        "  x, y = copy(t), copy(t)\n"
        "  same('remove0', pack(pcall(T.remove, x)), pack(pcall(table.remove, y)))\n"
        "  x, y = copy(t), copy(t)\n"
        "  same('move', pack(pcall(T.move, x, a, b, c)), pack(pcall(table.move, y, a, b, c)))\n"
        "  local x2, y2 = copy(t), copy(t)\n"
        "  same('move2', pack(pcall(T.move, x, a, b, c, x2)), pack(pcall(table.move, y, a, b, c, "
        "y2)))\n"
        "  same('concat', pack(pcall(T.concat, t, ',', a, b)), pack(pcall(table.concat, t, ',', a, "
        "b)))\n"
        "  same('concat bad', pack(pcall(T.concat, { 1, {}, 3 })), pack(pcall(table.concat, { 1, "
        "{}, 3 })))\n"
        "  same('unpack', pack(pcall(T.unpack, t, a, b)), pack(pcall(table.unpack, t, a, b)))\n"
        "  x, y = copy(t), copy(t)\n"
        "  T.sort(x) table.sort(y)\n"
        "  same('sort', pack(true, x), pack(true, y))\n"
        "  x, y = copy(t), copy(t)\n"
        "  local gt = function(p, q) return p > q end\n"
        "  T.sort(x, gt) table.sort(y, gt)\n"
        "  same('sort desc', pack(true, x), pack(true, y))\n"
        "  same('rep', pack(pcall(lib.string.rep, 'ab', a, c > 5 and ',' or nil)), "
        "pack(pcall(string.rep, 'ab', a, c > 5 and ',' or nil)))\n"
        "end\n"
        "same('sort mixed', pack(pcall(T.sort, { 1, 'x' })), pack(pcall(table.sort, { 1, 'x' })))\n"
        "same('unpack big', pack(pcall(T.unpack, {}, 1, 1e8)), pack(pcall(table.unpack, {}, 1, "
        "1e8)))\n"
        "same('move wrap', pack(pcall(T.move, {}, 1, math.maxinteger, 2)), pack(pcall(table.move, "
        "{}, 1, math.maxinteger, 2)))\n"
        "same('insert pos', pack(pcall(T.insert, {}, 5, 1)), pack(pcall(table.insert, {}, 5, 1)))\n"
        "same('not a table', pack(pcall(T.insert, 5, 1)), pack(pcall(table.insert, 5, 1)))\n"
        "local big = {} for i = 1, 5000 do big[i] = (i * 7919) % 5003 end\n"
        "local b1, b2 = copy(big), copy(big) T.sort(b1) table.sort(b2)\n"
        "same('sort 5000', pack(true, b1), pack(true, b2))\n";

/* Each must stop with the budget error under a deadline already past. */
static const char *const test_loops[] = {
	"string.rep('x', 1 << 24, '')", /* finite, but the deadline is past */
	"table.move({}, 1, 2^40, 1, {})",
	"string.find(('a'):rep(3000), ('a*'):rep(12) .. 'b')",
	"string.match(('a'):rep(3000), ('a-'):rep(12) .. 'b')",
	"string.gsub(('a'):rep(3000), ('a?'):rep(30) .. ('a'):rep(30), '')",
	"for _ in string.gmatch(('a'):rep(3000), ('(a*)'):rep(8) .. 'b') do end",
	"table.insert(setmetatable({}, { __len = function() return 2^40 end }), 1, 0)",
	"table.remove(setmetatable({}, { __len = function() return 2^40 end }), 1)",
	"table.concat(setmetatable({}, { __len = function() return 2^40 end, __index = tostring }))",
	"table.unpack(setmetatable({}, { __index = tostring }), 1, 500000)",
	"table.sort(setmetatable({}, { __len = function() return 2^30 end, __index = function() return "
	"1 end }))",
	"xpcall(function() while true do end end, function() while true do end end)",
	"coroutine.wrap(function() local x <close> = setmetatable({}, { __close = function() while "
	"true do end end }) while true do end end)()",
};

/* A C function no deadline check reaches: sleeps 2.2 s. */
static int test_slow(lua_State *L)
{
	struct timespec ts = { 2, 200000000 };
	(void)L;
	nanosleep(&ts, NULL);
	return 0;
}

static int test_notices;

static void test_notify(void *ud, const char *plugin, const char *msg)
{
	(void)ud;
	(void)plugin;
	if (strstr(msg, "past its 50 ms deadline") != NULL)
		test_notices++;
}

/* A plugin that held the host 2 s past its deadline is disabled at once. */
static void test_abandon(void)
{
	struct script_config c;
	struct script_rt *rt;
	struct err e;
	script_config_default(&c);
	c.notify = test_notify;
	T_EQ_INT(script_rt_new(&rt, &c, &e), KVS_OK);
	T_CHECK(script_load_text(rt, "slowpoke",
	                         "local k = require 'kvscope'\n"
	                         "k.command('slow', function() slow() end)\n"
	                         "k.command('quick', function() end)\n",
	                         &e) == KVS_OK,
	        "%s", e.msg);
	struct script_plugin *P = rt->plugins[0];
	lua_pushcfunction(P->L, test_slow);
	lua_setglobal(P->L, "slow");
	T_EQ_INT(script_command_run(rt, "quick", "", &e), KVS_OK);
	script_command_run(rt, "slow", "", &e);
	struct script_plugin_info info;
	script_plugin_at(rt, 0, &info);
	T_CHECK(!info.enabled && info.disabled_why != NULL &&
	                strstr(info.disabled_why, "command :slow returned") != NULL,
	        "disabled: %s", info.disabled_why ? info.disabled_why : "(enabled)");
	T_EQ_INT(test_notices, 1);
	T_CHECK(script_command_run(rt, "quick", "", &e) != KVS_OK && strstr(e.msg, "disabled"),
	        "a disabled plugin is not called: %s", e.msg);
	script_rt_free(rt);
}

int main(void)
{
	lua_State *L = test_state();
	const char *err = test_run(L, test_diff);
	T_CHECK(err == NULL, "pattern differential test: %s", err ? err : "");
	lua_getglobal(L, "n");
	lua_getglobal(L, "bad");
	T_CHECK(lua_tointeger(L, -2) > 40000 * 10, "%lld pattern cases run",
	        (long long)lua_tointeger(L, -2));
	T_EQ_INT(lua_tointeger(L, -1), 0);
	lua_pop(L, 2);

	err = test_run(L, test_tables);
	T_CHECK(err == NULL, "table differential test: %s", err ? err : "");
	lua_getglobal(L, "n");
	lua_getglobal(L, "bad");
	T_CHECK(lua_tointeger(L, -2) > 3000 * 10, "%lld table cases run",
	        (long long)lua_tointeger(L, -2));
	T_EQ_INT(lua_tointeger(L, -1), 0);
	lua_pop(L, 2);

	/* a deadline 1 ms in the past: every guarded loop stops at once */
	for (size_t i = 0; i < KVS_ARRAY_LEN(test_loops); i++) {
		test_p.deadline = clock_now_ms() - 1;
		test_p.budget_ms = 7;
		test_p.overrun = false;
		err = test_run(L, test_loops[i]);
		T_CHECK(err != NULL && strstr(err, "over its 7 ms time budget") != NULL, "%s: %s",
		        test_loops[i], err ? err : "no error");
		T_CHECK(test_p.overrun, "%s: overrun not marked", test_loops[i]);
		test_p.deadline = 0;
		sandbox_rearm(L);
	}

	/* nothing repeated: no work, whatever the count */
	test_p.deadline = clock_now_ms() - 1;
	err = test_run(L,
	               "assert(string.rep('', math.maxinteger) == '' and string.rep('', 3, '') == '')");
	T_CHECK(err == NULL, "string.rep of nothing: %s", err ? err : "");
	test_p.deadline = 0;

	err = test_run(L, "setmetatable({}, { __gc = function() end })");
	T_CHECK(err != NULL && strstr(err, "__gc finalizers are not available") != NULL, "__gc: %s",
	        err ? err : "accepted");
	err = test_run(L, "local t = setmetatable({}, { __index = { x = 1 } }) assert(t.x == 1)");
	T_CHECK(err == NULL, "setmetatable without __gc: %s", err ? err : "");
	lua_close(L);
	test_abandon();
	return t_done("test-sandbox");
}
