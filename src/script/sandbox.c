/*
 * sandbox.c: the security boundary around plugin code. What it guarantees,
 * for every lua_State the runtime makes (one per plugin, script or copy):
 *
 *   - Reach: the globals are a fresh table built from a whitelist, and the
 *     state's registry globals are that table, so load's default
 *     environment is the sandbox too. It holds: the base functions assert,
 *     error, getmetatable, ipairs, next, pairs, pcall, rawequal, rawget,
 *     rawlen, rawset, select, setmetatable, tonumber, tostring, type,
 *     xpcall, _VERSION; print (to the plugin's log); load for text chunks
 *     only and without a caller-chosen environment; require for "kvscope"
 *     only; collectgarbage for collect, count and step; the libraries
 *     table, math, utf8, coroutine and string, the last without dump
 *     (removed from the library table itself, which is also the strings'
 *     metatable's __index; that metatable is hidden); os.clock, time, date
 *     and difftime. io, debug, package, dofile, loadfile and the rest of os
 *     are not reachable: nothing left in the environment holds them.
 *   - Memory: the state's allocator counts its bytes and refuses growth
 *     past the plugin's cap, less what the host holds for the plugin
 *     (P->host: views, commands, hooks, sessions' turns, ...; see
 *     script_charge), which Lua raises as a memory error; string.rep
 *     refuses a result larger than the memory left.
 *   - Time: a count hook checks the current call's wall-clock deadline
 *     every SCRIPT_HOOK_COUNT instructions and raises an error past it, and
 *     from then on checks at every instruction of that thread until the
 *     call returns, so code catching the error with pcall cannot keep
 *     running. The hook sees Lua instructions only, and Lua turns it off
 *     in finalizers and in message handlers of the hook's own errors:
 *     sandbox-lib.c refuses __gc, runs xpcall's handlers and coroutine
 *     bodies so that the hook stays on, and replaces the C functions whose
 *     time is not bounded by their output (string.rep, table.*, the
 *     pattern functions of sandbox-match.c) by ones that check the deadline
 *     themselves; load parses a chunk SANDBOX_LOAD_PIECE bytes at a time,
 *     checking it between pieces.
 *
 * Files are written only through kvscope.write (api-view.c), under the
 * results directory. tests/lua/sandbox.lua tries the escapes.
 */
#include "script/script-int.h"

#include <stdlib.h>
#include <string.h>

/* The allocator: counts the state's bytes and refuses growth past the cap. */
static void *sandbox_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	struct script_plugin *P = ud;
	size_t old = ptr != NULL ? osize : 0;

	if (nsize == 0) {
		free(ptr);
		P->mem -= old;
		return NULL;
	}
	if (nsize > old && P->mem + P->host + (nsize - old) > P->mem_cap)
		return NULL;
	void *q = realloc(ptr, nsize);
	if (q == NULL)
		return NULL;
	P->mem = P->mem - old + nsize;
	return q;
}

static void sandbox_hook(lua_State *L, lua_Debug *ar);

int sandbox_overrun(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	P->overrun = true;
	lua_sethook(L, sandbox_hook, LUA_MASKCOUNT, 1);
	return script_error(L, "stopped: over its %.0f ms time budget", P->budget_ms);
}

void sandbox_check(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	if (P->deadline > 0 && clock_now_ms() > P->deadline)
		sandbox_overrun(L);
}

/* The count hook: past the deadline, raise an error (and keep raising). */
static void sandbox_hook(lua_State *L, lua_Debug *ar)
{
	(void)ar;
	sandbox_check(L);
}

void sandbox_rearm(lua_State *L)
{
	lua_sethook(L, sandbox_hook, LUA_MASKCOUNT, SCRIPT_HOOK_COUNT);
}

int sandbox_call_fresh(lua_State *L, int nargs)
{
	int nres = 0;
	if (!lua_checkstack(L, 2)) {
		lua_pop(L, nargs + 1);
		lua_pushliteral(L, "stack overflow");
		return LUA_ERRRUN;
	}
	lua_State *co = lua_newthread(L); /* inherits L's hook: the hook runs in it */
	lua_insert(L, -(nargs + 2));
	lua_xmove(L, co, nargs + 1);
	int st = lua_resume(co, L, nargs, &nres);
	if (st == LUA_OK && nres > 0) {
		lua_pop(co, nres - 1);
		lua_xmove(co, L, 1);
	} else if (st == LUA_OK) {
		lua_pushnil(L);
	} else if (st == LUA_YIELD) {
		st = LUA_ERRRUN;
		lua_pushliteral(L, "attempt to yield from a message handler or metamethod run by kvscope");
	} else {
		lua_xmove(co, L, 1); /* the error */
	}
	lua_remove(L, -2); /* the thread: collected */
	return st;
}

/* An unprotected error: nothing to save, say what happened. */
static int sandbox_panic(lua_State *L)
{
	const char *msg = lua_tostring(L, -1);
	fprintf(stderr, "kvscope: unprotected Lua error: %s\n", msg ? msg : "(not a string)");
	return 0;
}

lua_State *sandbox_new(struct script_plugin *P)
{
	lua_State *L = lua_newstate(sandbox_alloc, P);
	if (L == NULL)
		return NULL;
	*(struct script_plugin **)lua_getextraspace(L) = P;
	lua_atpanic(L, sandbox_panic);
	sandbox_rearm(L);
	return L;
}

/* print: the script's stdout under kvscope run; a plugin's log (and stderr
 * under kvscope run). */
static int sandbox_print(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	size_t len;

	script_concat_args(L, '\t');
	const char *s = lua_tolstring(L, -1, &len);
	if (P->is_script && P->rt->cfg.headless) {
		fwrite(s, 1, len, stdout);
		fputc('\n', stdout);
		/* output lost (a full disk, a closed pipe): stop the script at
		 * the first buffer that fails, not after all its work */
		if (ferror(stdout))
			return script_error(L, "print: cannot write to standard output");
	} else {
		script_log(P, "%s", s);
		if (P->rt->cfg.headless)
			script_notify(P->rt, P, "%s", s);
	}
	return 0;
}

/* A chunk load reads, a piece at a time. */
struct sandbox_chunk {
	const char *s;
	size_t left;
};

/* load's reader: the next piece of the chunk, after a deadline check (the
 * parser runs in C, so a long chunk is parsed a piece at a time). */
static const char *sandbox_read(lua_State *L, void *ud, size_t *size)
{
	struct sandbox_chunk *c = ud;
	sandbox_check(L);
	*size = KVS_MIN(c->left, (size_t)SANDBOX_LOAD_PIECE);
	const char *p = c->s;
	c->s += *size;
	c->left -= *size;
	return *size > 0 ? p : NULL;
}

/* load(chunk [, name [, mode]]): text chunks only, in the plugin's environment. */
static int sandbox_load(lua_State *L)
{
	size_t len;
	const char *s = lua_tolstring(L, 1, &len);
	const char *name = luaL_optstring(L, 2, "=(load)");
	const char *mode = luaL_optstring(L, 3, "t");

	if (s == NULL)
		return script_error(L, "load: expected a string chunk, got %s", luaL_typename(L, 1));
	if (strcmp(mode, "t") != 0)
		return script_error(
		        L, "load: mode '%s' refused: plugins load text chunks only (mode \"t\")", mode);
	if (!lua_isnoneornil(L, 4))
		return script_error(L,
		                    "load: an environment argument is refused: chunks run in the "
		                    "plugin's own environment");
	struct sandbox_chunk c = { s, len };
	if (lua_load(L, sandbox_read, &c, name, "t") != LUA_OK) {
		lua_pushnil(L);
		lua_insert(L, -2);
		return 2;
	}
	return 1;
}

/* require(name): only "kvscope". */
static int sandbox_require(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);
	if (strcmp(name, "kvscope") != 0)
		return script_error(
		        L, "require: module '%s' is not available to plugins (only \"kvscope\")", name);
	lua_getfield(L, LUA_REGISTRYINDEX, "kvscope.module");
	return 1;
}

/* collectgarbage: "collect", "count" and "step" only. */
static int sandbox_collectgarbage(lua_State *L)
{
	const char *opt = luaL_optstring(L, 1, "collect");
	if (strcmp(opt, "count") == 0) {
		lua_pushnumber(L, (double)lua_gc(L, LUA_GCCOUNT) + lua_gc(L, LUA_GCCOUNTB) / 1024.0);
		return 1;
	}
	if (strcmp(opt, "collect") == 0 || strcmp(opt, "step") == 0) {
		lua_gc(L, strcmp(opt, "collect") == 0 ? LUA_GCCOLLECT : LUA_GCSTEP, 0);
		lua_pushinteger(L, 0);
		return 1;
	}
	return script_error(L, "collectgarbage: option '%s' refused (collect, count or step)", opt);
}

static const char *const sandbox_base_names[] = {
	"assert",       "error",    "getmetatable", "ipairs", "next",   "pairs",
	"pcall",        "rawequal", "rawget",       "rawlen", "rawset", "select",
	"setmetatable", "tonumber", "tostring",     "type",   "xpcall", "_VERSION",
};

static const char *const sandbox_lib_names[] = { "table", "math", "utf8", "coroutine", "string" };
static const char *const sandbox_os_names[] = { "clock", "time", "date", "difftime" };

void sandbox_open(lua_State *L)
{
	luaL_openlibs(L);
	lua_pushglobaltable(L); /* G: every library */
	int G = lua_gettop(L);
	/* string: no dump; strings' metatable hidden; the unbounded functions guarded */
	lua_getfield(L, G, "string");
	lua_pushnil(L);
	lua_setfield(L, -2, "dump");
	lua_pop(L, 1);
	sandbox_lib_guard(L, G);
	lua_pushliteral(L, "");
	if (lua_getmetatable(L, -1)) {
		lua_pushboolean(L, 0);
		lua_setfield(L, -2, "__metatable");
		lua_pop(L, 1);
	}
	lua_pop(L, 1);

	lua_newtable(L); /* E */
	int E = lua_gettop(L);
	for (size_t i = 0; i < KVS_ARRAY_LEN(sandbox_base_names); i++) {
		lua_getfield(L, G, sandbox_base_names[i]);
		lua_setfield(L, E, sandbox_base_names[i]);
	}
	for (size_t i = 0; i < KVS_ARRAY_LEN(sandbox_lib_names); i++) {
		lua_getfield(L, G, sandbox_lib_names[i]);
		lua_setfield(L, E, sandbox_lib_names[i]);
	}
	lua_newtable(L);
	lua_getfield(L, G, "os");
	for (size_t i = 0; i < KVS_ARRAY_LEN(sandbox_os_names); i++) {
		lua_getfield(L, -1, sandbox_os_names[i]);
		lua_setfield(L, -3, sandbox_os_names[i]);
	}
	lua_pop(L, 1);
	lua_setfield(L, E, "os");
	static const luaL_Reg own[] = {
		{ "print", sandbox_print },
		{ "load", sandbox_load },
		{ "require", sandbox_require },
		{ "collectgarbage", sandbox_collectgarbage },
		{ NULL, NULL },
	};
	lua_pushvalue(L, E);
	luaL_setfuncs(L, own, 0);
	lua_pop(L, 1);
	lua_pushvalue(L, E);
	lua_setfield(L, E, "_G");
	lua_pushvalue(L, E);
	lua_rawseti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
	lua_settop(L, G - 1);
}
