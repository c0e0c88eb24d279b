/*
 * api-policy.c: retention policies written in Lua: kvscope.policies,
 * kvscope.policy.register, and api_score, the score provider that calls a
 * policy's function; and recall scorers written in Lua, the same way:
 * kvscope.recall.register, kvscope.recall.scorers and api_recall_score,
 * the cold tier's custom scorer (store_cold_scorer_fn) that calls one.
 *
 * A policy is a slot in its runtime (script_policy: name, plugin, function
 * reference, base policy, budget); slots live until the runtime is freed,
 * because score providers point at them, and a slot whose plugin went away
 * has p NULL and fails every call (the cache then falls back to the base
 * policy). api_score runs the function in its plugin's own state, so it is
 * called only on the runtime's thread: by the sessions plugins open, and by
 * a copy's owner on the copy's runtime (policy.c). The token list it lends
 * is stale when the call returns (the epoch moves).
 */
#include "script/script-int.h"

#include <limits.h>
#include <math.h>
#include <string.h>

static int api_policies(lua_State *L)
{
	struct script_rt *rt = api_rt(L);
	lua_newtable(L);
	lua_Integer k = 1;
	for (size_t i = 0; i < kv_policy_count(); i++) {
		lua_pushstring(L, kv_policy_name_at(i));
		lua_rawseti(L, -2, k++);
	}
	for (size_t i = 0; i < script_policy_count(rt); i++) {
		lua_pushstring(L, script_policy_name_at(rt, i));
		lua_rawseti(L, -2, k++);
	}
	return 1;
}

static int api_policy_register(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	struct script_rt *rt = P->rt;
	const char *name = luaL_checkstring(L, 1);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	struct err e;
	struct kv_policy base;
	double budget = P->rt->cfg.hook_ms;
	const char *bspec = "window";
	if (!lua_isnoneornil(L, 3)) {
		luaL_checktype(L, 3, LUA_TTABLE);
		if (lua_getfield(L, 3, "base") == LUA_TSTRING)
			bspec = lua_tostring(L, -1);
		lua_pop(L, 1);
		if (lua_getfield(L, 3, "budget_ms") != LUA_TNIL)
			budget = luaL_checknumber(L, -1);
		lua_pop(L, 1);
	}
	if (!(budget > 0) || budget > 10000)
		return script_error(L, "policy.register: budget_ms %f (expected 0 < ms <= 10000)", budget);
	struct kv_policy probe;
	if (kv_policy_parse(name, &probe, NULL) == KVS_OK)
		return script_error(L, "policy.register: '%s' is a built-in policy's name", name);
	if (kv_policy_parse(bspec, &base, &e) != KVS_OK)
		return script_error(L, "policy.register: base: %s", e.msg);
	if (!kv_policy_evicts(&base))
		return script_error(L,
		                    "policy.register: base '%s' never evicts (expected window, "
		                    "streaming, sirllm, lminfinite, h2o or snapkv)",
		                    bspec);
	struct script_policy *pol = NULL;
	for (size_t i = 0; i < rt->n_policies; i++)
		if (strcmp(rt->policies[i]->name, name) == 0) {
			if (rt->policies[i]->p != NULL && rt->policies[i]->p != P)
				return script_error(L, "policy.register: %s belongs to plugin %s", name,
				                    rt->policies[i]->p->name);
			pol = rt->policies[i];
		}
	if (pol == NULL) {
		/* the slot outlives the plugin (providers point at it): counted while it lives */
		script_charge(L, sizeof *pol + sizeof *rt->policies + strlen(name) + 1,
		              "kvscope.policy.register");
		pol = xcalloc(1, sizeof *pol);
		pol->rt = rt;
		pol->name = xstrdup(name);
		rt->policies = xreallocarray(rt->policies, rt->n_policies + 1, sizeof *rt->policies);
		rt->policies[rt->n_policies++] = pol;
	} else if (pol->p == P) {
		luaL_unref(L, LUA_REGISTRYINDEX, pol->ref);
	}
	lua_pushvalue(L, 2);
	pol->ref = luaL_ref(L, LUA_REGISTRYINDEX);
	pol->p = P;
	pol->base = base;
	pol->budget_ms = budget;
	return 0;
}

/* A score call's arguments, pushed inside its protected call. */
struct api_score_args {
	const struct kv_tok *toks;
	uint32_t n, n_keep;
	const struct vocab *vocab;
};

static int api_score_push(lua_State *L, void *ud)
{
	const struct api_score_args *a = ud;
	api_push_toks(L, a->toks, a->n, a->vocab);
	lua_pushinteger(L, a->n_keep);
	return 2;
}

int api_score(void *ud, const struct kv_tok *toks, uint32_t n, uint32_t n_keep, float *scores,
              double deadline_ms, struct err *e)
{
	struct script_policy *pol = ud;
	struct script_plugin *P = pol->p;
	char what[96];
	int rc = KVS_OK;

	if (P == NULL)
		return err_set(e, KVS_ENOTFOUND, "Lua policy %s was unloaded", pol->name);
	if (!pthread_equal(pthread_self(), pol->rt->thread))
		return err_set(e, KVS_ESTATE,
		               "Lua policy %s called on a thread that does not own its "
		               "plugin's state (script_policy_scorer gives one for that)",
		               pol->name);
	if (P->disabled)
		return err_set(e, KVS_ESTATE, "plugin %s is disabled", P->name);
	snprintf(what, sizeof what, "policy %s", pol->name);
	lua_State *L = script_thread(P);
	struct api_score_args args = { toks, n, n_keep, pol->rt->vocab };
	lua_rawgeti(L, LUA_REGISTRYINDEX, pol->ref);
	double budget = deadline_ms - clock_now_ms();
	if (budget < 0.001)
		budget = 0.001;
	/* a call that returns garbage is a strike as an error is: a successful
	 * pcall must not clear the strikes before its result is checked */
	uint32_t strikes = P->consecutive;
	if (!script_call(P, L, api_score_push, &args, 1, true, what, budget, e)) {
		rc = e->code;
	} else {
		if (!lua_istable(L, -1))
			rc = err_set(e, KVS_EFORMAT, "policy %s returned %s (expected a table of %u scores)",
			             pol->name, luaL_typename(L, -1), n);
		for (uint32_t i = 0; rc == KVS_OK && i < n; i++) {
			lua_rawgeti(L, -1, (lua_Integer)i + 1);
			int isnum;
			double x = lua_tonumberx(L, -1, &isnum);
			lua_pop(L, 1);
			if (!isnum)
				rc = err_set(e, KVS_EFORMAT,
				             "policy %s: score %u is not a number (expected a "
				             "table of %u numbers)",
				             pol->name, i + 1, n);
			else
				scores[i] = (float)x;
		}
		lua_pop(L, 1);
		if (rc != KVS_OK) {
			char msg[ERR_MSG_MAX];
			snprintf(msg, sizeof msg, "%s", e->msg);
			P->consecutive = strikes;
			script_failed(P, what, msg, e);
		}
	}
	P->epoch++; /* the token list it was lent */
	return rc;
}

/* ------------------------------------------------------- recall scorers */

struct script_policy *recall_find(const struct script_rt *rt, const char *name)
{
	for (size_t i = 0; i < rt->n_recalls; i++)
		if (rt->recalls[i]->p != NULL && strcmp(rt->recalls[i]->name, name) == 0)
			return rt->recalls[i];
	return NULL;
}

static int api_recall_scorers(lua_State *L)
{
	struct script_rt *rt = api_rt(L);
	lua_newtable(L);
	lua_Integer k = 1;
	static const char *const builtin[] = { "both", "summary", "fts" };
	for (size_t i = 0; i < KVS_ARRAY_LEN(builtin); i++) {
		lua_pushstring(L, builtin[i]);
		lua_rawseti(L, -2, k++);
	}
	for (size_t i = 0; i < rt->n_recalls; i++)
		if (rt->recalls[i]->p != NULL) {
			lua_pushstring(L, rt->recalls[i]->name);
			lua_rawseti(L, -2, k++);
		}
	return 1;
}

static int api_recall_register(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	struct script_rt *rt = P->rt;
	const char *name = luaL_checkstring(L, 1);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	double budget = rt->cfg.hook_ms;
	if (!lua_isnoneornil(L, 3)) {
		luaL_checktype(L, 3, LUA_TTABLE);
		if (lua_getfield(L, 3, "budget_ms") != LUA_TNIL)
			budget = luaL_checknumber(L, -1);
		lua_pop(L, 1);
	}
	if (!(budget > 0) || budget > 10000)
		return script_error(L, "recall.register: budget_ms %f (expected 0 < ms <= 10000)", budget);
	enum session_recall builtin;
	if (session_recall_parse(name, &builtin, NULL) == KVS_OK)
		return script_error(L, "recall.register: '%s' is a built-in scorer's name", name);
	struct script_policy *r = NULL;
	for (size_t i = 0; i < rt->n_recalls; i++)
		if (strcmp(rt->recalls[i]->name, name) == 0) {
			if (rt->recalls[i]->p != NULL && rt->recalls[i]->p != P)
				return script_error(L, "recall.register: %s belongs to plugin %s", name,
				                    rt->recalls[i]->p->name);
			r = rt->recalls[i];
		}
	if (r == NULL) {
		/* the slot outlives the plugin (sessions point at it) */
		script_charge(L, sizeof *r + sizeof *rt->recalls + strlen(name) + 1,
		              "kvscope.recall.register");
		r = xcalloc(1, sizeof *r);
		r->rt = rt;
		r->name = xstrdup(name);
		rt->recalls = xreallocarray(rt->recalls, rt->n_recalls + 1, sizeof *rt->recalls);
		rt->recalls[rt->n_recalls++] = r;
	} else if (r->p == P) {
		luaL_unref(L, LUA_REGISTRYINDEX, r->ref);
	}
	lua_pushvalue(L, 2);
	r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
	r->p = P;
	r->budget_ms = budget;
	return 0;
}

/* A recall call's argument, pushed inside its protected call: the blocks
 * as {id, turn, positions = {first, last}, n, text, bm25, summary}. */
struct api_recall_args {
	const struct store_cold_cand *c;
	size_t n;
};

static int api_recall_push(lua_State *L, void *ud)
{
	const struct api_recall_args *a = ud;
	lua_createtable(L, (int)KVS_MIN(a->n, (size_t)INT_MAX), 0);
	for (size_t i = 0; i < a->n; i++) {
		const struct store_cold_hit *h = a->c[i].hit;
		lua_createtable(L, 0, 7);
		lua_pushinteger(L, h->id);
		lua_setfield(L, -2, "id");
		lua_pushinteger(L, h->turn);
		lua_setfield(L, -2, "turn");
		lua_createtable(L, 2, 0);
		lua_pushinteger(L, h->pos0);
		lua_rawseti(L, -2, 1);
		lua_pushinteger(L, h->pos1);
		lua_rawseti(L, -2, 2);
		lua_setfield(L, -2, "positions");
		lua_pushinteger(L, h->n_tokens);
		lua_setfield(L, -2, "n");
		lua_pushstring(L, a->c[i].text ? a->c[i].text : "");
		lua_setfield(L, -2, "text");
		lua_pushnumber(L, h->bm25);
		lua_setfield(L, -2, "bm25");
		if (!isnan(h->summary)) {
			lua_pushnumber(L, h->summary);
			lua_setfield(L, -2, "summary");
		}
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	return 1;
}

bool api_recall_score(void *ud, const struct store_cold_cand *c, size_t n, double *scores)
{
	struct script_policy *r = ud;
	struct script_plugin *P = r->p;
	struct err e;
	char what[96];
	if (P == NULL || P->disabled || !pthread_equal(pthread_self(), r->rt->thread))
		return false; /* unloaded, disabled, or not this thread's: both ranks */
	snprintf(what, sizeof what, "recall scorer %s", r->name);
	lua_State *L = script_thread(P);
	struct api_recall_args args = { c, n };
	lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
	uint32_t strikes = P->consecutive;
	if (!script_call(P, L, api_recall_push, &args, 1, true, what, r->budget_ms, &e))
		return false;
	int rc = KVS_OK;
	if (!lua_istable(L, -1))
		rc = err_set(&e, KVS_EFORMAT,
		             "recall scorer %s returned %s (expected a table of %zu scores)", r->name,
		             luaL_typename(L, -1), n);
	for (size_t i = 0; rc == KVS_OK && i < n; i++) {
		/* nil: never recall this block */
		int t = lua_rawgeti(L, -1, (lua_Integer)i + 1);
		int isnum;
		double x = lua_tonumberx(L, -1, &isnum);
		lua_pop(L, 1);
		if (t == LUA_TNIL)
			scores[i] = NAN;
		else if (!isnum)
			rc = err_set(&e, KVS_EFORMAT,
			             "recall scorer %s: score %zu is a %s (expected a number or nil)", r->name,
			             i + 1, lua_typename(L, t));
		else
			scores[i] = x;
	}
	lua_pop(L, 1);
	if (rc != KVS_OK) {
		char msg[ERR_MSG_MAX];
		snprintf(msg, sizeof msg, "%s", e.msg);
		P->consecutive = strikes;
		script_failed(P, what, msg, &e);
		return false;
	}
	return true;
}

static const struct api_fn api_policy_fns[] = {
	{ "policies", API_FAST, API_C, "() -> list", "built-in and Lua retention policy names",
	  api_policies },
	{ "policy.register", API_DEFERRED, API_C, "(name, fn [, {base=, budget_ms=}])",
	  "a retention policy: fn(tokens, n_keep) returns one score per cached token; the cache keeps "
	  "pinned tokens and the n_keep highest; base (default window) gives positions and the "
	  "fallback",
	  api_policy_register },
	{ "recall.scorers", API_FAST, API_C, "() -> list",
	  "the cold tier's recall scorers: built-in (both, summary, fts) and Lua ones",
	  api_recall_scorers },
	{ "recall.register", API_DEFERRED, API_C, "(name, fn [, {budget_ms=}])",
	  "a recall scorer for the cold tier: fn(blocks) gets every cold block as {id, turn, "
	  "positions = {first, last}, n, text, bm25, summary} and returns one score per block "
	  "(higher first; nil: never); a session with cold = true and recall = name uses it, and "
	  "falls back to both when it fails",
	  api_recall_register },
};

const struct api_lib api_policy_lib = API_LIB_FNS(api_policy_fns);
