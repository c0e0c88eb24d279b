/*
 * api-store.c: the saved sessions of the store (kvscope.store_sessions,
 * kvscope.store_turns). The store is opened read-only for each call and
 * closed before it returns, so a script never holds the database open
 * between calls and never writes to it.
 */
#include "script/script-int.h"
#include "store/store.h"

#include <stdlib.h>
#include <string.h>

/* Open the session database scripts may read (read-only): the front end's
 * --db, else the default; raises a Lua error when it cannot. */
static struct store *api_store_open(lua_State *L)
{
	struct script_rt *rt = api_rt(L);
	char *def = NULL;
	const char *path = rt->cfg.db_path;
	struct store *st;
	struct err e;
	if (path == NULL)
		path = def = file_xdg_path("XDG_DATA_HOME", ".local/share", "kvscope/memory.db");
	int rc = store_open(&st, path, STORE_RO, &e);
	free(def);
	if (rc != KVS_OK) {
		script_error(L, "store: %s", e.msg);
		return NULL;
	}
	return st;
}

static int api_store_sessions(lua_State *L)
{
	struct store *st = api_store_open(L);
	struct store_session *list = NULL;
	size_t n = 0;
	struct err e;
	if (store_session_list(st, &list, &n, &e) != KVS_OK) {
		store_close(st);
		return script_error(L, "store_sessions: %s", e.msg);
	}
	lua_createtable(L, (int)n, 0);
	for (size_t i = 0; i < n; i++) {
		const struct store_session *ss = &list[i];
		lua_createtable(L, 0, 10);
		api_setint(L, "id", (lua_Integer)ss->id);
		api_setstr(L, "title", ss->title ? ss->title : "");
		api_setstr(L, "model", ss->model_path ? ss->model_path : "");
		api_setstr(L, "policy", ss->policy ? ss->policy : "");
		api_setint(L, "budget", ss->budget);
		api_setint(L, "n_turns", ss->n_turns);
		api_setint(L, "n_incomplete", ss->n_incomplete);
		api_setint(L, "n_kept", ss->n_kept);
		api_setnum(L, "created", ss->created);
		api_setnum(L, "updated", ss->updated);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
		store_session_free(&list[i]);
	}
	free(list);
	store_close(st);
	return 1;
}

static int api_store_turns(lua_State *L)
{
	const char *which = luaL_checkstring(L, 1);
	struct store *st = api_store_open(L);
	struct store_session ss;
	int64_t id;
	struct err e;
	if (store_session_find(st, which, &id, &e) != KVS_OK ||
	    store_session_get(st, id, &ss, &e) != KVS_OK) {
		store_close(st);
		return script_error(L, "store_turns: %s", e.msg);
	}
	lua_createtable(L, (int)ss.n_turns, 0);
	for (uint32_t i = 0; i < ss.n_turns; i++) {
		char *user = NULL, *reply = NULL;
		if (store_turn_text(st, id, i, &user, &reply, &e) != KVS_OK) {
			store_session_free(&ss);
			store_close(st);
			return script_error(L, "store_turns: %s", e.msg);
		}
		lua_createtable(L, 0, 2);
		api_setstr(L, "user", user ? user : "");
		api_setstr(L, "reply", reply ? reply : "");
		lua_rawseti(L, -2, (lua_Integer)i + 1);
		free(user);
		free(reply);
	}
	store_session_free(&ss);
	store_close(st);
	return 1;
}

static const struct api_fn api_store_fns[] = {
	{ "store_sessions", API_DEFERRED, API_C, "() -> list",
	  "the saved sessions of the database (--db, else the default; read-only): {id, title, "
	  "model, policy, budget, n_turns, n_incomplete, n_kept, created, updated}",
	  api_store_sessions },
	{ "store_turns", API_DEFERRED, API_C, "(id_or_title) -> list",
	  "a saved session's exchanges, oldest first: {user, reply}", api_store_turns },
};

const struct api_lib api_store_lib = API_LIB_FNS(api_store_fns);
