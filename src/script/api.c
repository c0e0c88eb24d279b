/*
 * api.c: the machinery of the Lua API: every function is a row (struct
 * api_fn: name, tier, arguments, doc line) in the table of the file that
 * binds it, and api_libs below names those tables, in the order of the
 * reference. The module, the userdata methods, doc/lua-api.md and
 * `:help lua` all come from the rows; no file lists another's functions.
 *
 * Tiers (as neovim's api-fast): "fast" functions may be called anywhere,
 * hooks of per-token events included; "deferred" ones change state
 * (sessions, views, commands, files) and may only run on the main loop: a
 * fast hook that calls one gets an error naming the function and telling it
 * to use kvscope.schedule. Every C function is bound through api_call, which
 * checks the tier from the row before calling it.
 *
 * The files: api-loop.c (hooks, the main loop, timers), api-view.c
 * (commands, status items, views, plugins, output), api-policy.c
 * (retention policies), api-session.c (sessions and the store) and
 * api-token.c (event data lent as userdata; types, no rows).
 */
#include "script/script-int.h"

#include <string.h>

/* The API, file by file, in the reference's order. */
static const struct api_lib *const api_libs[] = {
	&api_loop_lib,         &api_view_lib,  &api_policy_lib, &api_session_lib,
	&api_session_read_lib, &api_store_lib, &api_token_lib,
};

/* ---------------------------------------------------------------- helpers */

struct script_rt *api_rt(lua_State *L)
{
	return script_plugin_of(L)->rt;
}

int api_raise_exit(lua_State *L, int status)
{
	lua_createtable(L, 0, 1);
	lua_pushinteger(L, status);
	lua_setfield(L, -2, "kvscope_exit");
	return lua_error(L);
}

/* Every bound C function: check the tier, note the running thread, call.
 * When Lua the call ran (a timer in kvscope.sleep, a hook during
 * session:chat) ended the script with kvscope.exit, the caller unwinds too. */
static int api_call(lua_State *L)
{
	const struct api_fn *f = lua_touserdata(L, lua_upvalueindex(1));
	struct script_plugin *P = script_plugin_of(L);
	/* a finalizer run by lua_close: what it made would outlive the state
	 * (a session, a hook pointing at the freed plugin) */
	if (P->closing)
		return script_error(L, "kvscope.%s: the plugin is being unloaded", f->name);
	if (f->tier == API_DEFERRED && P->fast > 0)
		return script_error(L,
		                    "kvscope.%s is deferred: it cannot run inside a fast hook (%s); "
		                    "call it through kvscope.schedule(fn)",
		                    f->name, P->fast_what ? P->fast_what : "?");
	P->active = L;
	int n = f->fn(L);
	if (P->exit_status >= 0)
		return api_raise_exit(L, P->exit_status);
	return n;
}

void api_setnum(lua_State *L, const char *k, double v)
{
	lua_pushnumber(L, v);
	lua_setfield(L, -2, k);
}

void api_setint(lua_State *L, const char *k, lua_Integer v)
{
	lua_pushinteger(L, v);
	lua_setfield(L, -2, k);
}

void api_setstr(lua_State *L, const char *k, const char *v)
{
	lua_pushstring(L, v);
	lua_setfield(L, -2, k);
}

/* __newindex of every userdata type. */
static int api_readonly(lua_State *L)
{
	return script_error(L, "%s is read-only", luaL_typename(L, 1));
}

/* ------------------------------------------------------------- the module */

/* The events kvscope.on takes, for the reference (names as script_event_names). */
static const struct {
	const char *name, *args, *doc;
} api_events[SEV_COUNT] = {
	[SEV_TOKEN] = { "token", "(tok)",
	                "fast: each reply token; tok.id, text, position, pos, surprisal, entropy, "
	                "role, "
	                "turn, eog (read-only, valid during the call)" },
	[SEV_TURN_START] = { "turn_start", "(index, text)", "fast: an exchange begins" },
	[SEV_TURN_END] = { "turn_end", "(turn)",
	                   "main loop: an exchange ended; turn.user, reply, stop (eos, length-target, "
	                   "forced, max-tokens, stop-string, user, context), n_prompt, n_reply, "
	                   "n_words (Ruler's word count), prefill_ms, decode_ms" },
	[SEV_EVICT] = { "evict", "(ev)",
	                "fast: tokens left the cache; ev.tokens (list), n, policy, cause, incoming, "
	                "fallback, why, kept" },
	[SEV_ATTENTION] = { "attention", "(attn)",
	                    "fast: a forward's last query (capture on); #attn layers, attn[l][h][i], "
	                    "attn:get(l, h, i), attn:summary(l, h), attn:position(i), n_cached, step, "
	                    "query (its position), rows (whether rows were captured)" },
	[SEV_MODEL_LOADED] = { "model_loaded", "(info)",
	                       "main loop: a model was loaded; info as session:info()" },
	[SEV_KEY] = { "key", "(name)",
	              "main loop: a key the front end did not use; return true to "
	              "consume it" },
	[SEV_UNLOAD] = { "unload", "()", "main loop: the plugin is being unloaded" },
	[SEV_RECALL] = { "recall", "(ev)",
	                 "fast: tokens came back from the cold tier for this turn; ev.tokens (list, "
	                 "original order, at their new positions), n, policy, kept" },
	[SEV_COMPARE] = { "compare", "(cmp)",
	                  "main loop (workbench): :compare sent its state; cmp.state (replaying, "
	                  "following, stopped), done, total, policy, budget (the shadow's), "
	                  "kept_a, kept_b, overlap, exchanges, part_exchange, part_token (1-based, "
	                  "nil when the replies agree), kv_bytes, msg" },
};

/* The metatable of type t: methods from every lib's "obj:" rows, or t's index. */
static void api_methods(lua_State *L, const struct api_type *t)
{
	luaL_newmetatable(L, t->tname);
	if (t->index != NULL) {
		lua_pushcfunction(L, t->index);
		lua_setfield(L, -2, "__index");
	} else {
		lua_newtable(L);
		size_t ol = strlen(t->obj);
		for (size_t k = 0; k < KVS_ARRAY_LEN(api_libs); k++)
			for (size_t i = 0; i < api_libs[k]->n_fns; i++) {
				const struct api_fn *f = &api_libs[k]->fns[i];
				if (strncmp(f->name, t->obj, ol) != 0 || f->name[ol] != ':')
					continue;
				lua_pushlightuserdata(L, (void *)f);
				lua_pushcclosure(L, api_call, 1);
				lua_setfield(L, -2, f->name + ol + 1);
			}
		lua_setfield(L, -2, "__index");
	}
	lua_pushcfunction(L, api_readonly);
	lua_setfield(L, -2, "__newindex");
	if (t->len != NULL) {
		lua_pushcfunction(L, t->len);
		lua_setfield(L, -2, "__len");
	}
	if (t->gc != NULL) {
		lua_pushcfunction(L, t->gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_pop(L, 1);
}

/* Bind row f into module M: "a.b" goes in the sub-table M.a. */
static void api_bind(lua_State *L, int M, const struct api_fn *f)
{
	const char *dot = strchr(f->name, '.');
	int t = M;
	if (dot != NULL) {
		lua_pushlstring(L, f->name, (size_t)(dot - f->name));
		if (lua_rawget(L, M) != LUA_TTABLE) {
			lua_pop(L, 1);
			lua_newtable(L);
			lua_pushlstring(L, f->name, (size_t)(dot - f->name));
			lua_pushvalue(L, -2);
			lua_rawset(L, M);
		}
		t = lua_gettop(L);
	}
	lua_pushlightuserdata(L, (void *)f);
	lua_pushcclosure(L, api_call, 1);
	lua_setfield(L, t, dot ? dot + 1 : f->name);
	if (dot != NULL)
		lua_pop(L, 1);
}

int api_open(lua_State *L)
{
	for (size_t k = 0; k < KVS_ARRAY_LEN(api_libs); k++)
		for (size_t i = 0; i < api_libs[k]->n_types; i++)
			api_methods(L, &api_libs[k]->types[i]);
	lua_newtable(L);
	int M = lua_gettop(L);
	for (size_t k = 0; k < KVS_ARRAY_LEN(api_libs); k++)
		for (size_t i = 0; i < api_libs[k]->n_fns; i++) {
			const struct api_fn *f = &api_libs[k]->fns[i];
			if (f->kind == API_C && strchr(f->name, ':') == NULL)
				api_bind(L, M, f);
		}
	/* the Lua side must define exactly the rows marked API_LUA: it checks this list */
	lua_newtable(L);
	for (size_t k = 0; k < KVS_ARRAY_LEN(api_libs); k++)
		for (size_t i = 0; i < api_libs[k]->n_fns; i++)
			if (api_libs[k]->fns[i].kind == API_LUA) {
				lua_pushboolean(L, 1);
				lua_setfield(L, -2, api_libs[k]->fns[i].name);
			}
	lua_setfield(L, M, "_lua_side");
	return 1;
}

/* ---------------------------------------------------------------- the doc */

/* Write s into a Markdown table cell ('|' escaped). */
static void api_doc_cell(FILE *fp, const char *s)
{
	for (; *s; s++) {
		if (*s == '|')
			fputc('\\', fp);
		fputc(*s, fp);
	}
}

int api_doc(FILE *fp, struct err *e)
{
	(void)e;
	fprintf(fp, "# kvscope Lua API (version %d)\n\n", SCRIPT_API_VERSION);
	fprintf(fp,
	        "Generated from the API table in src/script/api.c by `kvscope run --api-doc`; "
	        "do not edit.\nThe user guide is doc/lua.md.\n\n");
	fprintf(fp,
	        "Tiers: **fast** functions may be called anywhere, fast hooks included; "
	        "**deferred** ones change state and run only on the main loop (from a fast hook, "
	        "wrap the call in `kvscope.schedule(fn)`).\n\n");
	fprintf(fp, "## Events (`kvscope.on(event, fn [, priority])`)\n\n");
	fprintf(fp, "| event | arguments | when |\n|---|---|---|\n");
	for (int i = 0; i < SEV_COUNT; i++) {
		fprintf(fp, "| `%s` | `", api_events[i].name);
		api_doc_cell(fp, api_events[i].args);
		fprintf(fp, "` | ");
		api_doc_cell(fp, api_events[i].doc);
		fprintf(fp, " |\n");
	}
	fprintf(fp, "\n## Functions (`local kvscope = require \"kvscope\"`)\n\n");
	fprintf(fp, "| function | tier | description |\n|---|---|---|\n");
	for (size_t k = 0; k < KVS_ARRAY_LEN(api_libs); k++)
		for (size_t i = 0; i < api_libs[k]->n_fns; i++) {
			const struct api_fn *f = &api_libs[k]->fns[i];
			fprintf(fp, "| `%s%s", strchr(f->name, ':') ? "" : "kvscope.", f->name);
			api_doc_cell(fp, f->args);
			fprintf(fp, "` | %s | ", f->tier == API_FAST ? "fast" : "deferred");
			api_doc_cell(fp, f->doc);
			fprintf(fp, "%s |\n", f->kind == API_LUA ? " (lua/kvscope.lua)" : "");
		}
	fprintf(fp, "\nFields: `kvscope.args` (a script's arguments; `args[0]` is its path).\n");
	return KVS_OK;
}
