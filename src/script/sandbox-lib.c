/*
 * sandbox-lib.c: the guarded library functions of the sandbox: the
 * whitelisted functions whose running time the count hook cannot bound,
 * replaced by ones that hold the current call's deadline.
 *
 * The count hook (sandbox.c) sees Lua instructions only, and Lua turns it
 * off in two places: in a message handler of an error the hook itself
 * raised, and in finalizers (__gc). Everything else a plugin can reach
 * either runs Lua code (hooked) or is a C function; a C function that can
 * loop longer than its output takes to build must check the deadline
 * itself. So:
 *
 *   - string.rep: "" when nothing is repeated (an empty string repeated
 *     2^63 times would loop that often), else built by doubling copies
 *     with a deadline check between them; the result's size is checked
 *     against the memory left first;
 *   - table.move, insert, remove, concat, unpack and sort: the library's
 *     semantics (metamethods included), with a deadline check every
 *     SANDBOX_STEPS elements; their loop counts come from arguments and
 *     __len, not from the memory the table holds. sort is a heap sort
 *     (n log n comparisons whatever the input, no recursion);
 *   - xpcall: the message handler runs in a thread of its own, where the
 *     hook is on (the thread inherits it), so a handler that loops stops
 *     at the deadline;
 *   - coroutine.create and wrap: the body runs inside a protected call in
 *     the coroutine, so a coroutine that dies of an error (the hook's
 *     included) dies with hooks on, and its to-be-closed variables run
 *     hooked (Lua leaves hooks off in a coroutine the hook's error killed,
 *     and coroutine.close or wrap would then run __close unhooked);
 *   - setmetatable: a metatable with a __gc field is refused, because Lua
 *     runs finalizers with hooks off and at any allocation (or at unload),
 *     where no deadline could stop them.
 *
 * The pattern functions (string.find, match, gmatch, gsub) have their own
 * file, sandbox-match.c; load's reader checks the deadline (sandbox.c).
 */
#include "script/script-int.h"

#include <limits.h>
#include <string.h>

/* ---------------------------------------------------------------- strings */

/* string.rep(s, n [, sep]) with the result's size checked against the
 * memory left, built by doubling copies between deadline checks. */
static int sandbox_string_rep(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	size_t l, lsep;
	const char *s = luaL_checklstring(L, 1, &l);
	lua_Integer n = script_int(L, 2, "string.rep: count", LUA_MININTEGER, LUA_MAXINTEGER);
	const char *sep = luaL_optlstring(L, 3, "", &lsep);
	if (n <= 0 || l + lsep == 0) {
		lua_pushliteral(L, "");
		return 1;
	}
	double total = (double)l * (double)n + (double)lsep * (double)(n - 1);
	double left = (double)(P->mem_cap - KVS_MIN(P->mem + P->host, P->mem_cap));
	if (total > left)
		return script_error(L,
		                    "string.rep: a result of %.0f bytes exceeds the plugin's memory "
		                    "left (%.0f of its %zu KiB cap)",
		                    total, left, P->mem_cap >> 10);
	size_t size = (size_t)total, unit = l + lsep;
	luaL_Buffer b;
	char *out = luaL_buffinitsize(L, &b, size); /* (size) the result */
	memcpy(out, s, KVS_MIN(l, size));
	if (size > l)
		memcpy(out + l, sep, KVS_MIN(lsep, size - l));
	/* out is periodic with period unit: copying a prefix of whole units doubles it */
	for (size_t done = KVS_MIN(unit, size); done < size;) {
		size_t m = KVS_MIN(done, size - done);
		memcpy(out + done, out, m);
		done += m;
		sandbox_check(L);
	}
	luaL_pushresultsize(&b, size);
	return 1;
}

/* ----------------------------------------------------------------- tables */

enum { TAB_R = 1, TAB_W = 2, TAB_L = 4 };

/* Argument arg is a table, or a value whose metatable has the metamethods
 * the operation needs (the table library's rule). */
static void sandbox_tab_check(lua_State *L, int arg, int need)
{
	static const struct {
		int bit;
		const char *field;
	} fields[] = { { TAB_R, "__index" }, { TAB_W, "__newindex" }, { TAB_L, "__len" } };
	if (lua_type(L, arg) == LUA_TTABLE)
		return;
	if (lua_getmetatable(L, arg)) {
		bool ok = true;
		for (size_t i = 0; i < KVS_ARRAY_LEN(fields); i++)
			if (need & fields[i].bit) {
				lua_pushstring(L, fields[i].field);
				ok &= lua_rawget(L, -2) != LUA_TNIL;
				lua_pop(L, 1);
			}
		lua_pop(L, 1);
		if (ok)
			return;
	}
	luaL_checktype(L, arg, LUA_TTABLE);
}

/* #t (through __len) of the table at arg, checked as the library does. */
static lua_Integer sandbox_tab_len(lua_State *L, int arg, int need)
{
	sandbox_tab_check(L, arg, need | TAB_L);
	return luaL_len(L, arg);
}

/* One step of a loop over elements: a deadline check every SANDBOX_STEPS. */
static void sandbox_step(lua_State *L, unsigned *steps)
{
	if ((++*steps & (SANDBOX_STEPS - 1)) == 0)
		sandbox_check(L);
}

static int sandbox_table_insert(lua_State *L)
{
	lua_Integer e = sandbox_tab_len(L, 1, TAB_R | TAB_W) + 1; /* first empty slot */
	unsigned steps = 0;
	lua_Integer pos;
	switch (lua_gettop(L)) {
	case 2: pos = e; break;
	case 3:
		pos = luaL_checkinteger(L, 2);
		luaL_argcheck(L, (lua_Unsigned)pos - 1u < (lua_Unsigned)e, 2, "position out of bounds");
		for (lua_Integer i = e; i > pos; i--) {
			lua_geti(L, 1, i - 1);
			lua_seti(L, 1, i);
			sandbox_step(L, &steps);
		}
		break;
	default: return luaL_error(L, "wrong number of arguments to 'insert'");
	}
	lua_seti(L, 1, pos);
	return 0;
}

static int sandbox_table_remove(lua_State *L)
{
	lua_Integer size = sandbox_tab_len(L, 1, TAB_R | TAB_W);
	lua_Integer pos = luaL_optinteger(L, 2, size);
	unsigned steps = 0;
	if (pos != size)
		luaL_argcheck(L, (lua_Unsigned)pos - 1u <= (lua_Unsigned)size, 2, "position out of bounds");
	lua_geti(L, 1, pos);
	for (; pos < size; pos++) {
		lua_geti(L, 1, pos + 1);
		lua_seti(L, 1, pos);
		sandbox_step(L, &steps);
	}
	lua_pushnil(L);
	lua_seti(L, 1, pos);
	return 1;
}

static int sandbox_table_move(lua_State *L)
{
	lua_Integer f = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
	lua_Integer t = luaL_checkinteger(L, 4);
	int tt = !lua_isnoneornil(L, 5) ? 5 : 1; /* the destination table */
	unsigned steps = 0;
	sandbox_tab_check(L, 1, TAB_R);
	sandbox_tab_check(L, tt, TAB_W);
	if (e >= f) {
		luaL_argcheck(L, f > 0 || e < LUA_MAXINTEGER + f, 3, "too many elements to move");
		lua_Integer n = e - f;
		luaL_argcheck(L, t <= LUA_MAXINTEGER - n, 4, "destination wrap around");
		if (t > e || t <= f || (tt != 1 && !lua_compare(L, 1, tt, LUA_OPEQ))) {
			for (lua_Integer i = 0; i <= n; i++) {
				lua_geti(L, 1, f + i);
				lua_seti(L, tt, t + i);
				sandbox_step(L, &steps);
			}
		} else {
			for (lua_Integer i = n; i >= 0; i--) {
				lua_geti(L, 1, f + i);
				lua_seti(L, tt, t + i);
				sandbox_step(L, &steps);
			}
		}
	}
	lua_pushvalue(L, tt);
	return 1;
}

static int sandbox_table_concat(lua_State *L)
{
	size_t lsep;
	lua_Integer last = sandbox_tab_len(L, 1, TAB_R);
	const char *sep = luaL_optlstring(L, 2, "", &lsep);
	lua_Integer i = luaL_optinteger(L, 3, 1);
	last = luaL_optinteger(L, 4, last);
	unsigned steps = 0;
	luaL_Buffer b;
	luaL_buffinit(L, &b);
	for (; i <= last; i++) {
		lua_geti(L, 1, i);
		if (!lua_isstring(L, -1))
			return luaL_error(L, "invalid value (%s) at index %I in table for 'concat'",
			                  luaL_typename(L, -1), (LUAI_UACINT)i);
		luaL_addvalue(&b);
		if (i < last)
			luaL_addlstring(&b, sep, lsep);
		sandbox_step(L, &steps);
		if (i == LUA_MAXINTEGER)
			break;
	}
	luaL_pushresult(&b);
	return 1;
}

static int sandbox_table_unpack(lua_State *L)
{
	lua_Integer i = luaL_optinteger(L, 2, 1);
	lua_Integer e = lua_isnoneornil(L, 3) ? luaL_len(L, 1) : luaL_checkinteger(L, 3);
	unsigned steps = 0;
	if (i > e)
		return 0;
	lua_Unsigned n = (lua_Unsigned)e - (lua_Unsigned)i;
	if (n >= (unsigned)INT_MAX || !lua_checkstack(L, (int)(++n)))
		return luaL_error(L, "too many results to unpack");
	for (; i < e; i++) {
		lua_geti(L, 1, i);
		sandbox_step(L, &steps);
	}
	lua_geti(L, 1, e);
	return (int)n;
}

/* Whether the value at a sorts before the one at b (the order function
 * at index 2, or <). */
static bool sandbox_sort_less(lua_State *L, int a, int b)
{
	a = lua_absindex(L, a);
	b = lua_absindex(L, b);
	if (lua_isnil(L, 2))
		return lua_compare(L, a, b, LUA_OPLT);
	lua_pushvalue(L, 2);
	lua_pushvalue(L, a);
	lua_pushvalue(L, b);
	lua_call(L, 2, 1);
	bool r = lua_toboolean(L, -1);
	lua_pop(L, 1);
	return r;
}

/* Move t[i] down the heap t[1..n] until both children sort before it. */
static void sandbox_sort_sift(lua_State *L, lua_Integer i, lua_Integer n, unsigned *steps)
{
	while (2 * i <= n) {
		lua_Integer c = 2 * i;
		lua_geti(L, 1, c);
		if (c < n) {
			lua_geti(L, 1, c + 1);
			if (sandbox_sort_less(L, -2, -1)) {
				c++;
				lua_remove(L, -2);
			} else {
				lua_pop(L, 1);
			}
		}
		lua_geti(L, 1, i); /* child, parent */
		if (!sandbox_sort_less(L, -1, -2)) {
			lua_pop(L, 2);
			return;
		}
		lua_seti(L, 1, c);
		lua_seti(L, 1, i);
		i = c;
		sandbox_step(L, steps);
	}
}

static int sandbox_table_sort(lua_State *L)
{
	lua_Integer n = sandbox_tab_len(L, 1, TAB_R | TAB_W);
	unsigned steps = 0;
	if (n <= 1)
		return 0;
	luaL_argcheck(L, n < INT_MAX, 1, "array too big");
	if (!lua_isnoneornil(L, 2))
		luaL_checktype(L, 2, LUA_TFUNCTION);
	lua_settop(L, 2);
	luaL_checkstack(L, 8, "table.sort");
	for (lua_Integer i = n / 2; i >= 1; i--) {
		sandbox_sort_sift(L, i, n, &steps);
		sandbox_step(L, &steps);
	}
	for (lua_Integer end = n; end > 1; end--) {
		sandbox_step(L, &steps);
		lua_geti(L, 1, 1);
		lua_geti(L, 1, end);
		lua_seti(L, 1, 1);
		lua_seti(L, 1, end);
		sandbox_sort_sift(L, 1, end - 1, &steps);
	}
	return 0;
}

/* ------------------------------------------------------- handlers, threads */

/* xpcall's message handler: the plugin's handler (upvalue 1) in a thread
 * of its own, where the hook is on; its error becomes the result. */
static int sandbox_xpcall_msgh(lua_State *L)
{
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	sandbox_call_fresh(L, lua_gettop(L) - 1);
	return 1;
}

static int sandbox_xpcall_k(lua_State *L, int status, lua_KContext ctx)
{
	(void)status;
	(void)ctx;
	return lua_gettop(L);
}

/* xpcall(f, msgh, ...) with msgh run hooked (sandbox_xpcall_msgh). */
static int sandbox_xpcall(lua_State *L)
{
	int n = lua_gettop(L);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	lua_pushvalue(L, 2);
	lua_pushcclosure(L, sandbox_xpcall_msgh, 1);
	lua_replace(L, 2);
	lua_pushvalue(L, lua_upvalueindex(1)); /* the library's xpcall */
	lua_insert(L, 1);
	lua_callk(L, n, LUA_MULTRET, 0, sandbox_xpcall_k);
	return lua_gettop(L);
}

/* After the body's protected call: its results, or its error raised again
 * (hooks are back on: the protected call restored them). */
static int sandbox_co_body_k(lua_State *L, int status, lua_KContext ctx)
{
	(void)ctx;
	if (status != LUA_OK && status != LUA_YIELD)
		return lua_error(L);
	return lua_gettop(L);
}

/* A coroutine's body: the plugin's function (upvalue 1) in a protected call. */
static int sandbox_co_body(lua_State *L)
{
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	int st = lua_pcallk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, 0, sandbox_co_body_k);
	return sandbox_co_body_k(L, st, 0);
}

/* coroutine.create and wrap (the library's, upvalue 1) over sandbox_co_body. */
static int sandbox_co_make(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TFUNCTION);
	lua_settop(L, 1);
	lua_pushcclosure(L, sandbox_co_body, 1);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, 1, 1);
	return 1;
}

/* setmetatable(t, mt), refusing finalizers. */
static int sandbox_setmetatable(lua_State *L)
{
	if (lua_type(L, 2) == LUA_TTABLE) {
		lua_pushliteral(L, "__gc");
		if (lua_rawget(L, 2) != LUA_TNIL)
			return script_error(L,
			                    "setmetatable: __gc finalizers are not available to plugins "
			                    "(Lua runs them outside any time budget)");
		lua_pop(L, 1);
	}
	lua_settop(L, 2);
	lua_pushvalue(L, lua_upvalueindex(1)); /* the library's setmetatable */
	lua_insert(L, 1);
	lua_call(L, 2, 1);
	return 1;
}

/* ------------------------------------------------------------------ table */

/* One guarded function: lib.name = fn, fn's upvalue the library's own
 * function when keep. */
struct sandbox_guard {
	const char *lib; /* NULL: a global */
	const char *name;
	lua_CFunction fn;
	bool keep;
};

static const struct sandbox_guard sandbox_guards[] = {
	{ "string", "rep", sandbox_string_rep, false },
	{ "table", "insert", sandbox_table_insert, false },
	{ "table", "remove", sandbox_table_remove, false },
	{ "table", "move", sandbox_table_move, false },
	{ "table", "concat", sandbox_table_concat, false },
	{ "table", "unpack", sandbox_table_unpack, false },
	{ "table", "sort", sandbox_table_sort, false },
	{ "coroutine", "create", sandbox_co_make, true },
	{ "coroutine", "wrap", sandbox_co_make, true },
	{ NULL, "xpcall", sandbox_xpcall, true },
	{ NULL, "setmetatable", sandbox_setmetatable, true },
};

void sandbox_lib_guard(lua_State *L, int G)
{
	for (size_t i = 0; i < KVS_ARRAY_LEN(sandbox_guards); i++) {
		const struct sandbox_guard *g = &sandbox_guards[i];
		if (g->lib != NULL)
			lua_getfield(L, G, g->lib);
		else
			lua_pushvalue(L, G);
		if (g->keep) {
			lua_getfield(L, -1, g->name);
			lua_pushcclosure(L, g->fn, 1);
		} else {
			lua_pushcfunction(L, g->fn);
		}
		lua_setfield(L, -2, g->name);
		lua_pop(L, 1);
	}
	sandbox_match_open(L, G);
}
