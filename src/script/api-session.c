/*
 * api-session.c: sessions a plugin opens or borrows (kvscope.session,
 * kvscope.current, the session:* methods), kvscope.send to the front end's
 * own session, and the saved sessions of the store (kvscope.store_*).
 *
 * Sessions opened by a plugin are synchronous and run on the main thread,
 * inside the call that drives them (session:chat returns when the exchange
 * ended); their events go to every plugin through the runtime's dispatch,
 * and a Lua policy they use runs in its plugin's own state on that same
 * thread (api_score). A session runs from the moment a call drives it
 * (chat, prompt, feed, end_reply, generate) until that call returns, its
 * turn_end hooks included: every method that would change it under the
 * call (the driving ones, set_policy, set_budget, set_length, reset,
 * close) is refused with an error naming the hook, so a hook can neither
 * free the session nor move its turns under the call. A driving call holds
 * its plugin's deadline: the cache stops a prefill past it between chunks
 * (kv_cache_set_deadline), the token hook cancels a reply past it, and the
 * call then raises the budget error. Every
 * session is listed in the runtime (api_session) so that a policy going
 * away can be taken out of the sessions that use it; the plugin's session
 * userdata closes an owned session when collected. The methods that only
 * read a session are in api-session-read.c; the store's, in api-store.c.
 * A session opened with cold = true saves its turns to a temporary
 * database (removed when it closes) and keeps a cold tier there; its
 * recall scorer may be a Lua one (kvscope.recall.register), which runs in
 * its plugin's own state on this thread (api_recall_score).
 */
#include "script/script-int.h"
#include "store/store.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define API_SEND_MAX ((size_t)1 << 20) /* bytes of kvscope.send's argument, at most */

/* --------------------------------------------------------------- sessions */

struct api_session *api_checksession(lua_State *L, int i)
{
	struct api_session **u = luaL_checkudata(L, i, API_SESSION);
	if (*u == NULL || (*u)->s == NULL)
		script_error(L, "the session is closed");
	return *u;
}

/* Count what the host holds for an owned session in its plugin's cap: the
 * record and the turns' texts (the engine's memory is bounded instead by
 * SCRIPT_SESSIONS_MAX and the ctx option's range). Counted after the fact:
 * past the cap, the plugin's next allocation or exchange is refused. */
static void api_session_account(struct api_session *as)
{
	if (!as->owned || as->s == NULL)
		return;
	struct session_doc_info di;
	size_t now = sizeof *as + as->system_len;
	if (session_doc(as->s, &di))
		now += di.n_bytes + 1;
	for (uint32_t i = 0; i < session_n_turns(as->s); i++) {
		const struct session_turn *t = session_turn_at(as->s, i);
		now += sizeof *t + (t->user ? strlen(t->user) + 1 : 0) +
		        (t->reply ? strlen(t->reply) + 1 : 0);
	}
	script_uncharge(as->p, as->charged);
	as->p->host += now;
	as->charged = now;
}

static void api_hook_turn_start(void *ud, uint32_t index, const char *user)
{
	struct api_session *as = ud;
	script_on_turn_start(as->p->rt, index, user);
}

/* Each reply token: past the driving call's deadline, cancel the reply
 * (the call raises when it returns); then the token hooks. */
static void api_hook_token(void *ud, const struct gen_token *t)
{
	struct api_session *as = ud;
	struct script_plugin *P = as->p;
	if (P->deadline > 0 && !as->cut && clock_now_ms() > P->deadline) {
		as->cut = true;
		session_cancel(as->s);
	}
	script_on_token(P->rt, t);
}

static void api_hook_kv(void *ud, const struct kv_event *ev)
{
	struct api_session *as = ud;
	struct script_rt *rt = as->p->rt;
	struct kv_cache *kv = gen_kv(session_gen(as->s));
	rt->vocab = gen_vocab(session_gen(as->s)); /* renders the event's token text */
	rt->step_toks = kv_cache_toks(kv);
	rt->step_n = kv_cache_n(kv);
	script_on_kv_event(rt, ev);
	rt->step_toks = NULL;
	rt->step_n = 0;
}

enum api_opt_type { API_OPT_U32 = 0, API_OPT_I32, API_OPT_INT, API_OPT_F32 };

/* The numeric session options: name, range, type and field. */
struct api_num_opt {
	const char *key;
	double lo, hi;
	enum api_opt_type type;
	size_t off;
};

#define SC(f) offsetof(struct session_config, f)
static const struct api_num_opt api_num_opts[] = {
	{ "budget", 8, 1 << 24, API_OPT_U32, SC(gen.kv.budget) },
	{ "ctx", 16, 1 << 20, API_OPT_U32, SC(gen.engine.n_ctx) },
	{ "max_tokens", 1, 1 << 24, API_OPT_U32, SC(max_tokens) },
	{ "temp", 0, 100, API_OPT_F32, SC(gen.sampler.temp) },
	{ "top_k", 0, 1 << 30, API_OPT_I32, SC(gen.sampler.top_k) },
	{ "top_p", 0, 1, API_OPT_F32, SC(gen.sampler.top_p) },
	{ "min_p", 0, 1, API_OPT_F32, SC(gen.sampler.min_p) },
	{ "seed", 0, 4294967294.0, API_OPT_U32, SC(gen.sampler.seed) },
	{ "threads", 0, 1024, API_OPT_INT, SC(gen.engine.n_threads) },
	{ "repeat_penalty", 0.01, 100, API_OPT_F32, SC(gen.sampler.repeat_penalty) },
};
#undef SC

/* Read opts' session settings into c; a Lua error for a bad one. */
static void api_session_opts(lua_State *L, int t, struct session_config *c, const char **policy)
{
	static const char *const words[] = { "model",       "system", "policy", "capture",
		                                 "token_stats", "cold",   "recall", "recall_budget",
		                                 "cold_block",  "sparse", "doc" };
	lua_pushnil(L);
	while (lua_next(L, t) != 0) {
		bool known = false;
		const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
		for (size_t i = 0; k && i < KVS_ARRAY_LEN(words); i++)
			known |= strcmp(k, words[i]) == 0;
		for (size_t i = 0; k && i < KVS_ARRAY_LEN(api_num_opts); i++)
			known |= strcmp(k, api_num_opts[i].key) == 0;
		if (!known)
			script_error(L,
			             "kvscope.session: unknown option '%s' (expected model, policy, budget, "
			             "ctx, system, max_tokens, temp, top_k, top_p, min_p, seed, threads, "
			             "repeat_penalty, capture, token_stats, cold, recall, recall_budget, "
			             "cold_block, sparse, doc)",
			             k ? k : luaL_typename(L, -2));
		lua_pop(L, 1);
	}
	if (lua_getfield(L, t, "model") == LUA_TSTRING)
		c->gen.model_path = lua_tostring(L, -1);
	lua_pop(L, 1);
	if (lua_getfield(L, t, "system") == LUA_TSTRING)
		c->system = lua_tostring(L, -1);
	lua_pop(L, 1);
	if (lua_getfield(L, t, "policy") == LUA_TSTRING)
		*policy = lua_tostring(L, -1);
	lua_pop(L, 1);
	for (size_t i = 0; i < KVS_ARRAY_LEN(api_num_opts); i++) {
		const struct api_num_opt *o = &api_num_opts[i];
		if (lua_getfield(L, t, o->key) != LUA_TNIL) {
			void *f = (char *)c + o->off;
			if (o->type != API_OPT_F32) {
				char what[64];
				snprintf(what, sizeof what, "kvscope.session: %s", o->key);
				lua_Integer v = script_int(L, -1, what, (lua_Integer)o->lo, (lua_Integer)o->hi);
				if (o->type == API_OPT_U32)
					*(uint32_t *)f = (uint32_t)v;
				else if (o->type == API_OPT_I32)
					*(int32_t *)f = (int32_t)v;
				else
					*(int *)f = (int)v;
				lua_pop(L, 1);
				continue;
			}
			int isnum;
			double x = lua_tonumberx(L, -1, &isnum);
			if (!isnum || !(x >= o->lo && x <= o->hi))
				script_error(L, "kvscope.session: %s = %s (expected a number in [%g, %g])", o->key,
				             luaL_tolstring(L, -1, NULL), o->lo, o->hi);
			*(float *)f = (float)x;
		}
		lua_pop(L, 1);
	}
	if (lua_getfield(L, t, "capture") == LUA_TSTRING) {
		const char *s = lua_tostring(L, -1);
		static const char *const caps[] = { "off", "summary", "full" };
		int k = -1;
		for (int i = 0; i < 3; i++)
			if (strcmp(s, caps[i]) == 0)
				k = i;
		if (k < 0)
			script_error(L, "kvscope.session: capture = '%s' (expected off, summary or full)", s);
		c->gen.kv.capture = (enum kv_capture)k;
	}
	lua_pop(L, 1);
	if (lua_getfield(L, t, "token_stats") != LUA_TNIL)
		c->gen.kv.token_stats = lua_toboolean(L, -1) ? KV_TOKSTATS_ON : KV_TOKSTATS_OFF;
	lua_pop(L, 1);
	if (lua_getfield(L, t, "sparse") == LUA_TSTRING) {
		struct err e;
		if (engine_sparse_parse(lua_tostring(L, -1), &c->gen.kv.sparse, &e) != KVS_OK)
			script_error(L, "kvscope.session: %s", e.msg);
	}
	lua_pop(L, 1);
}

/* Install spec on as: a Lua policy name (scorer over its base) or a built-in
 * spec. The session runs on this thread, so the policy runs in its plugin's
 * own state (api_score), not in a copy. */
static int api_session_policy(struct script_rt *rt, struct api_session *as, const char *spec,
                              struct err *e)
{
	struct kv_cache *kv = gen_kv(session_gen(as->s));
	struct script_policy *pol = policy_find(rt, spec);
	struct kv_policy p;
	int rc;
	if (pol != NULL) {
		struct kv_scorer sc = {
			.name = pol->name, .fn = api_score, .ud = pol, .budget_ms = pol->budget_ms
		};
		rc = kv_cache_set_policy(kv, &pol->base, e);
		if (rc != KVS_OK)
			return rc;
		kv_cache_set_scorer(kv, &sc);
		as->policy = pol;
		return KVS_OK;
	}
	rc = kv_policy_parse(spec, &p, e);
	if (rc != KVS_OK) {
		err_prefix(e, "not a Lua policy either");
		return rc;
	}
	kv_cache_set_scorer(kv, NULL);
	as->policy = NULL;
	return kv_cache_set_policy(kv, &p, e);
}

/* Read opts' cold tier settings (cold, recall, recall_budget, cold_block)
 * into c; c->on false when cold is not true. A Lua error for a bad one. */
static void api_session_cold_opts(lua_State *L, int t, struct script_rt *rt,
                                  struct session_cold_config *c)
{
	memset(c, 0, sizeof *c);
	c->recall = SESSION_RECALL_BOTH;
	if (lua_getfield(L, t, "cold") != LUA_TNIL)
		c->on = lua_toboolean(L, -1);
	lua_pop(L, 1);
	if (lua_getfield(L, t, "recall_budget") != LUA_TNIL)
		c->recall_budget =
		        (uint32_t)script_int(L, -1, "kvscope.session: recall_budget", 1, 1 << 24);
	lua_pop(L, 1);
	if (lua_getfield(L, t, "cold_block") != LUA_TNIL)
		c->block = (uint32_t)script_int(L, -1, "kvscope.session: cold_block", 1, 4096);
	lua_pop(L, 1);
	if (lua_getfield(L, t, "recall") != LUA_TNIL) {
		const char *name = luaL_checkstring(L, -1);
		struct script_policy *r = recall_find(rt, name);
		if (r != NULL) {
			/* a Lua scorer, with both's probe and its fallback */
			c->scorer = api_recall_score;
			c->scorer_ud = r;
			c->scorer_name = r->name;
		} else if (session_recall_parse(name, &c->recall, NULL) != KVS_OK) {
			script_error(L,
			             "kvscope.session: recall = '%s' (expected both, summary, fts, off or a "
			             "scorer kvscope.recall.register registered)",
			             name);
		}
	}
	lua_pop(L, 1);
}

/* cold = true: a temporary database for the session's turns and its cold
 * tier, removed when the session closes. */
static int api_session_cold(struct api_session *as, const struct session_config *c,
                            const struct session_cold_config *cc, struct err *e)
{
	as->cold_dir = file_mkdtemp("kvscope-lua-cold", "cold", e);
	if (as->cold_dir == NULL)
		return KVS_EIO;
	char *path = xasprintf("%s/cold.db", as->cold_dir);
	int rc = store_open(&as->cold_st, path, STORE_RW, e);
	free(path);
	struct session_store ss = { .st = as->cold_st,
		                        .title = "kvscope.session",
		                        .model_path = c->gen.model_path,
		                        .model_sha256 = "",
		                        .sampler = "" };
	if (rc == KVS_OK)
		rc = session_set_store(as->s, &ss, e);
	if (rc == KVS_OK)
		session_set_cold(as->s, cc);
	return rc;
}

/* Close a cold session's temporary database and remove its folder. */
static void api_session_cold_close(struct api_session *as)
{
	store_close(as->cold_st);
	as->cold_st = NULL;
	if (as->cold_dir == NULL)
		return;
	static const char *const parts[] = { "cold.db",          "cold.db-wal",
		                                 "cold.db-shm",      "cold.db-journal",
		                                 "cold.db-cold",     "cold.db-cold-wal",
		                                 "cold.db-cold-shm", "cold.db-cold-journal" };
	for (size_t i = 0; i < KVS_ARRAY_LEN(parts); i++) {
		char *p = xasprintf("%s/%s", as->cold_dir, parts[i]);
		unlink(p);
		free(p);
	}
	char *kv = xasprintf("%s/cold.db-kv", as->cold_dir);
	rmdir(kv);
	free(kv);
	rmdir(as->cold_dir);
	free(as->cold_dir);
	as->cold_dir = NULL;
}

/* Pin the document at path (NULL: none) in as, its bytes charged to the
 * plugin first (refused when they do not fit); *restarted when a
 * conversation had begun. A Lua error prefixed with who on failure. */
static bool api_session_doc(lua_State *L, struct api_session *as, const char *path, const char *who)
{
	struct stat st;
	struct err e;
	bool restarted = false;
	size_t more = 0;
	if (path != NULL && as->owned && stat(path, &st) == 0 && S_ISREG(st.st_mode))
		more = (size_t)st.st_size + 1;
	if (more > 0)
		script_charge(L, more, who); /* raises when it does not fit */
	int rc = session_set_doc(as->s, path, &restarted, &e);
	if (more > 0)
		script_uncharge(as->p, more); /* api_session_account counts it exactly */
	api_session_account(as);
	if (rc != KVS_OK)
		script_error(L, "%s: %s", who, e.msg);
	return restarted;
}

static int api_session_open(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	struct script_rt *rt = P->rt;
	struct session_config c;
	const char *policy = NULL;
	struct err e;

	/* loading a model is not interruptible: not past the deadline */
	if (P->deadline > 0 && clock_now_ms() > P->deadline)
		return sandbox_overrun(L);
	session_config_default(&c);
	c.gen = rt->cfg.gen;
	c.system = rt->cfg.system;
	c.max_tokens = rt->cfg.max_tokens;
	struct session_cold_config cold = { 0 };
	if (!lua_isnoneornil(L, 1)) {
		luaL_checktype(L, 1, LUA_TTABLE);
		api_session_opts(L, 1, &c, &policy);
		api_session_cold_opts(L, 1, rt, &cold);
	}
	/* a built-in policy given here goes in the config (budget checks at open) */
	bool lua_policy = false;
	if (policy != NULL) {
		struct script_policy *pol = policy_find(rt, policy);
		lua_policy = pol != NULL;
		if (!lua_policy && kv_policy_parse(policy, &c.gen.kv.policy, &e) != KVS_OK)
			return script_error(L, "kvscope.session: policy: %s", e.msg);
		if (lua_policy) {
			c.gen.kv.policy = pol->base;
			/* Lua policies read surprisal and entropy: on unless said otherwise */
			if (c.gen.kv.token_stats == KV_TOKSTATS_AUTO)
				c.gen.kv.token_stats = KV_TOKSTATS_ON;
		}
	}
	if (c.gen.model_path == NULL)
		return script_error(L, "kvscope.session: no model (give model = PATH)");
	if (P->n_sessions >= SCRIPT_SESSIONS_MAX)
		lua_gc(L, LUA_GCCOLLECT); /* sessions no longer referenced close now */
	if (P->n_sessions >= SCRIPT_SESSIONS_MAX)
		return script_error(L,
		                    "kvscope.session: the plugin has %u sessions open, the most it "
		                    "may (close one with session:close())",
		                    P->n_sessions);
	script_charge(L, sizeof(struct api_session), "kvscope.session");
	script_uncharge(P, sizeof(struct api_session)); /* api_session_account counts it */
	struct api_session **u = lua_newuserdatauv(L, sizeof *u, 0);
	*u = NULL;
	luaL_setmetatable(L, API_SESSION);
	struct api_session *as = xcalloc(1, sizeof *as);
	as->p = P;
	as->owned = true;
	if (session_open(&as->s, &c, &e) != KVS_OK) {
		free(as);
		return script_error(L, "kvscope.session: %s", e.msg);
	}
	*u = as;
	as->next = rt->sessions;
	rt->sessions = as;
	P->n_sessions++;
	as->system_len = c.system != NULL ? strlen(c.system) + 1 : 0;
	api_session_account(as);
	struct session_hooks h = {
		.turn_start = api_hook_turn_start,
		.token = api_hook_token,
		.kv = api_hook_kv,
		.ud = as,
	};
	session_set_hooks(as->s, &h);
	if (lua_policy && api_session_policy(rt, as, policy, &e) != KVS_OK)
		return script_error(L, "kvscope.session: %s", e.msg);
	if (cold.on && api_session_cold(as, &c, &cold, &e) != KVS_OK)
		return script_error(L, "kvscope.session: cold: %s", e.msg);
	/* the document: opts.doc (false: none), else kvscope run's --doc */
	const char *doc = rt->cfg.doc;
	if (!lua_isnoneornil(L, 1)) {
		int ty = lua_getfield(L, 1, "doc");
		if (ty == LUA_TSTRING)
			doc = lua_tostring(L, -1);
		else if (ty == LUA_TBOOLEAN && !lua_toboolean(L, -1))
			doc = NULL;
		else if (ty != LUA_TNIL)
			return script_error(L, "kvscope.session: doc = %s (expected a file path or false)",
			                    luaL_typename(L, -1));
		lua_pop(L, 1); /* the string stays alive in opts; the session is the result */
	}
	if (doc != NULL)
		api_session_doc(L, as, doc, "kvscope.session");
	script_on_model_loaded(rt, session_gen(as->s));
	rt->vocab = gen_vocab(session_gen(as->s));
	return 1;
}

/* Unlink as from the runtime's list and close its session when owned. */
static void api_session_drop(struct script_rt *rt, struct api_session *as, bool bump)
{
	for (struct api_session **pp = &rt->sessions; *pp; pp = &(*pp)->next)
		if (*pp == as) {
			*pp = as->next;
			break;
		}
	if (as->s != NULL && rt->vocab == gen_vocab(session_gen(as->s)))
		rt->vocab = rt->current ? gen_vocab(session_gen(rt->current)) : NULL;
	if (as->owned && as->s != NULL) {
		session_close(as->s);
		as->p->n_sessions--;
		script_uncharge(as->p, as->charged);
		as->charged = 0;
	}
	api_session_cold_close(as);
	as->s = NULL;
	if (bump)
		script_stale(rt);
}

static int api_session_gc(lua_State *L)
{
	struct api_session **u = luaL_checkudata(L, 1, API_SESSION);
	if (*u != NULL) {
		/* nothing lent from it is reachable (token lists keep their session
		 * alive), so the epoch stays: other handles remain valid */
		api_session_drop(script_plugin_of(L)->rt, *u, false);
		free(*u);
		*u = NULL;
	}
	return 0;
}

void api_sessions_gone(struct script_rt *rt, struct script_plugin *P)
{
	for (struct api_session *as = rt->sessions, *next; as; as = next) {
		next = as->next;
		if (as->p == P) {
			api_session_drop(rt, as, false);
			free(as);
		}
	}
}

void api_policy_gone(struct script_rt *rt, struct script_policy *pol)
{
	for (struct api_session *as = rt->sessions; as; as = as->next)
		if (as->policy == pol && as->s != NULL) {
			kv_cache_set_scorer(gen_kv(session_gen(as->s)), NULL);
			as->policy = NULL;
			script_notify(rt, as->p,
			              "Lua policy %s was unloaded: the session uses its base "
			              "policy %s now",
			              pol->name, kv_policy_name(&pol->base));
		}
}

static int api_current(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	struct script_rt *rt = P->rt;
	if (rt->current == NULL) {
		lua_pushnil(L);
		return 1;
	}
	/* one borrowed handle per plugin and session */
	if (lua_getfield(L, LUA_REGISTRYINDEX, "kvscope.current") == LUA_TUSERDATA) {
		struct api_session **u = lua_touserdata(L, -1);
		if (*u != NULL && (*u)->s == rt->current)
			return 1;
	}
	lua_pop(L, 1);
	struct api_session **u = lua_newuserdatauv(L, sizeof *u, 0);
	*u = NULL;
	luaL_setmetatable(L, API_SESSION);
	struct api_session *as = xcalloc(1, sizeof *as);
	as->p = P;
	as->s = rt->current;
	as->owned = false;
	as->next = rt->sessions;
	rt->sessions = as;
	*u = as;
	lua_pushvalue(L, -1);
	lua_setfield(L, LUA_REGISTRYINDEX, "kvscope.current");
	return 1;
}

static int api_send(lua_State *L)
{
	struct script_rt *rt = api_rt(L);
	const char *cmd = luaL_checkstring(L, 1);
	size_t len = 0;
	const char *arg = luaL_optlstring(L, 2, "", &len);
	static const char *const cmds[] = { "chat",  "policy",     "budget", "reset", "pin",
		                                "unpin", "max_tokens", "sparse", "doc" };
	bool known = false;
	struct err e;
	for (size_t i = 0; i < KVS_ARRAY_LEN(cmds); i++)
		known |= strcmp(cmd, cmds[i]) == 0;
	if (!known)
		return script_error(L,
		                    "kvscope.send: '%s' (expected chat, policy, budget, reset, pin, "
		                    "unpin, max_tokens, sparse or doc)",
		                    cmd);
	if (len > API_SEND_MAX)
		return script_error(L, "kvscope.send %s: %zu bytes of argument, expected at most %zu", cmd,
		                    len, API_SEND_MAX);
	if (rt->cfg.send == NULL)
		return script_error(L,
		                    "kvscope.send: no front-end session here (kvscope run: open one "
		                    "with kvscope.session)");
	if (rt->cfg.send(rt->cfg.send_ud, cmd, arg, &e) != KVS_OK)
		return script_error(L, "kvscope.send %s: %s", cmd, e.msg);
	return 0;
}

/* -------------------------------------------------------------- session:* */

/* Refuse method what while the session runs a call (from a hook of it). */
static void api_session_idle(lua_State *L, struct api_session *as, const char *what)
{
	if (as->running != NULL)
		script_error(L,
		             "session:%s() inside this session's %s: not allowed while the session "
		             "is running a turn (session:%s)",
		             what, as->phase, as->running);
}

/* Begin driving call what, which keeps text_len bytes of new text: refused
 * while another runs, past the deadline, or when the text would not fit in
 * the plugin's cap; the cache stops a prefill at the deadline. Nothing may
 * raise between this and api_session_leave. */
static void api_session_enter(lua_State *L, struct api_session *as, const char *what,
                              size_t text_len)
{
	struct script_plugin *P = as->p;
	api_session_idle(L, as, what);
	if (as->owned) {
		script_charge(L, text_len + 1, "session: the text");
		script_uncharge(P, text_len + 1); /* api_session_done counts what it keeps */
	}
	if (P->deadline > 0 && clock_now_ms() > P->deadline)
		sandbox_overrun(L);
	as->running = what;
	as->phase = "hooks";
	as->cut = false;
	kv_cache_set_deadline(gen_kv(session_gen(as->s)), P->deadline);
}

/* End the driving call (raises nothing); whether it ran past the deadline
 * (its reply cut, or its prefill stopped). */
static bool api_session_done(struct api_session *as)
{
	struct script_plugin *P = as->p;
	kv_cache_set_deadline(gen_kv(session_gen(as->s)), 0);
	session_cancel_clear(as->s);
	as->running = NULL;
	api_session_account(as);
	script_stale(P->rt);
	return as->cut || (P->deadline > 0 && clock_now_ms() > P->deadline);
}

/* api_session_done, then the budget error when the call overran. */
static void api_session_leave(lua_State *L, struct api_session *as)
{
	if (api_session_done(as))
		sandbox_overrun(L);
}

static int api_s_chat(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	size_t len;
	const char *text = luaL_checklstring(L, 2, &len);
	struct script_rt *rt = as->p->rt;
	struct err e;
	lua_Integer max = 0;
	if (lua_istable(L, 3)) {
		if (lua_getfield(L, 3, "max_tokens") != LUA_TNIL) {
			max = script_int(L, -1, "chat: max_tokens", 1, 1 << 24);
		}
		lua_pop(L, 1);
	}
	api_session_enter(L, as, "chat", len);
	if (max > 0)
		session_set_max_tokens(as->s, (uint32_t)max);
	int rc = session_chat(as->s, text, &e);
	if (max > 0)
		session_set_max_tokens(as->s, rt->cfg.max_tokens);
	uint32_t index = session_n_turns(as->s) - 1;
	if (rc == KVS_OK) {
		/* turn_end hooks run now, on the main loop, after the exchange; the
		 * session still runs: they cannot change its turns */
		as->phase = "turn_end hook";
		script_on_turn_end(rt, session_turn_at(as->s, index));
	}
	api_session_leave(L, as);
	if (rc != KVS_OK)
		return script_error(L, "chat: %s", e.msg);
	const struct session_turn *t = session_turn_at(as->s, index);
	lua_pushstring(L, t->reply);
	api_push_turn(L, t);
	struct kv_stats st;
	kv_cache_stats(gen_kv(session_gen(as->s)), &st);
	api_setint(L, "kept", st.n_cached);
	api_setint(L, "evicted", (lua_Integer)st.n_evicted);
	return 2;
}

static enum kv_role api_role(lua_State *L, int i, enum kv_role def)
{
	const char *r = luaL_optstring(L, i, NULL);
	if (r == NULL)
		return def;
	for (int k = 1; k < 4; k++)
		if (strcmp(r, api_role_names[k]) == 0)
			return (enum kv_role)k;
	script_error(L, "role '%s' (expected system, user or assistant)", r);
	return def;
}

static int api_s_prompt(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	size_t len;
	const char *text = luaL_checklstring(L, 2, &len);
	lua_Integer extra = script_optint(L, 3, "prompt: extra", 0, 0, 1 << 24);
	struct err e;
	int32_t before = kv_cache_next_pos(gen_kv(session_gen(as->s)));
	api_session_enter(L, as, "prompt", len);
	int rc = session_prompt(as->s, text, (uint32_t)extra, &e);
	api_session_leave(L, as);
	if (rc != KVS_OK)
		return script_error(L, "prompt: %s", e.msg);
	lua_pushinteger(L, before);
	lua_pushinteger(L, kv_cache_next_pos(gen_kv(session_gen(as->s))) - before);
	return 2;
}

static int api_s_feed(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	size_t len;
	const char *text = luaL_checklstring(L, 2, &len);
	enum kv_role role = api_role(L, 3, KV_ROLE_USER);
	struct err e;
	int32_t before = kv_cache_next_pos(gen_kv(session_gen(as->s)));
	api_session_enter(L, as, "feed", len);
	int rc = session_feed_text(as->s, text, role, &e);
	api_session_leave(L, as);
	if (rc != KVS_OK)
		return script_error(L, "feed: %s", e.msg);
	lua_pushinteger(L, before);
	lua_pushinteger(L, kv_cache_next_pos(gen_kv(session_gen(as->s))) - before);
	return 2;
}

static int api_s_end_reply(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	bool eot = lua_toboolean(L, 2);
	struct err e;
	api_session_enter(L, as, "end_reply", 0);
	int rc = session_end_reply(as->s, eot, &e);
	api_session_leave(L, as);
	if (rc != KVS_OK)
		return script_error(L, "end_reply: %s", e.msg);
	return 0;
}

/* The text a generate call produced so far (a C buffer: nothing may raise
 * inside gen_reply). */
struct api_gen_out {
	char *s;
	size_t n, cap;
};

static int api_push_owned_k(lua_State *L)
{
	const struct api_gen_out *o = lua_touserdata(L, 1);
	lua_pushlstring(L, o->s ? o->s : "", o->n);
	return 1;
}

/* Push s[0, n) and free s, whatever happens (a memory error included). */
static void api_push_owned(lua_State *L, char *s, size_t n)
{
	struct api_gen_out o = { s, n, n };
	lua_pushcfunction(L, api_push_owned_k);
	lua_pushlightuserdata(L, &o);
	int st = lua_pcall(L, 1, 1, 0);
	free(s);
	if (st != LUA_OK)
		lua_error(L);
}

static void api_gen_text(const char *text, size_t len, void *ud)
{
	struct api_gen_out *o = ud;
	if (o->n + len + 1 > o->cap) {
		o->cap = KVS_MAX(o->cap * 2, o->n + len + 1);
		o->s = xrealloc(o->s, o->cap);
	}
	memcpy(o->s + o->n, text, len);
	o->n += len;
}

static int api_s_generate(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	lua_Integer n = script_int(L, 2, "generate: tokens", 1, 1 << 24);
	struct gen *g = session_gen(as->s);
	struct api_gen_out out = { 0 };
	struct err e;
	enum gen_stop stop;
	uint32_t n_out;
	api_session_idle(L, as, "generate");
	if (gen_logits(g) == NULL)
		return script_error(L, "generate: nothing fed yet (feed or prompt first)");
	api_session_enter(L, as, "generate", 0);
	int rc = gen_reply(g, (uint32_t)n, api_gen_text, &out, &stop, &n_out, &e);
	bool over = api_session_done(as);
	api_push_owned(L, out.s, out.n);
	if (over)
		return sandbox_overrun(L);
	if (rc != KVS_OK)
		return script_error(L, "generate: %s", e.msg);
	lua_pushstring(L, gen_stop_name(stop));
	lua_pushinteger(L, n_out);
	return 3;
}

static int api_s_set_policy(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	const char *spec = luaL_checkstring(L, 2);
	struct err e;
	api_session_idle(L, as, "set_policy");
	if (api_session_policy(as->p->rt, as, spec, &e) != KVS_OK)
		return script_error(L, "set_policy: %s", e.msg);
	script_stale(as->p->rt);
	gen_kv_changed(session_gen(as->s));
	return 0;
}

static int api_s_set_budget(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	lua_Integer n = script_int(L, 2, "set_budget: tokens", 8, 1 << 24);
	struct err e;
	api_session_idle(L, as, "set_budget");
	if (kv_cache_set_budget(gen_kv(session_gen(as->s)), (uint32_t)n, &e) != KVS_OK)
		return script_error(L, "set_budget: %s", e.msg);
	script_stale(as->p->rt);
	gen_kv_changed(session_gen(as->s));
	return 0;
}

static int api_s_pin(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	lua_Integer pos = script_int(L, 2, "pin: position", INT32_MIN, INT32_MAX);
	bool on = lua_isnone(L, 3) ? true : lua_toboolean(L, 3);
	struct err e;
	if (kv_cache_pin(gen_kv(session_gen(as->s)), (int32_t)pos, on, &e) != KVS_OK)
		return script_error(L, "pin: %s", e.msg);
	return 0;
}

static int api_s_set_length(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	const char *spec = luaL_checkstring(L, 2);
	struct len_target t;
	struct err e;
	api_session_idle(L, as, "set_length");
	if (len_target_parse(spec, &t, &e) != KVS_OK)
		return script_error(L, "set_length: %s", e.msg);
	if (lua_isboolean(L, 3))
		t.instruct = lua_toboolean(L, 3);
	gen_set_length_target(session_gen(as->s), t.unit == LEN_NONE ? NULL : &t);
	return 0;
}

static int api_s_reset(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	api_session_idle(L, as, "reset");
	session_reset(as->s);
	api_session_account(as);
	script_stale(as->p->rt);
	return 0;
}

static int api_s_close(lua_State *L)
{
	struct api_session **u = luaL_checkudata(L, 1, API_SESSION);
	if (*u != NULL)
		api_session_idle(L, *u, "close");
	if (*u != NULL && !(*u)->owned)
		return script_error(L, "close: the front end's session is not the plugin's to close");
	if (*u != NULL) {
		api_session_drop(script_plugin_of(L)->rt, *u, true);
		free(*u);
		*u = NULL;
	}
	return 0;
}

static int api_s_set_system(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	const char *text = luaL_checkstring(L, 2);
	size_t len = strlen(text) + 1, more = len > as->system_len ? len - as->system_len : 0;
	if (as->owned)
		script_charge(L, more, "session:set_system"); /* refused when it does not fit */
	session_set_system(as->s, text);
	if (as->owned) {
		script_uncharge(as->p, more); /* api_session_account counts it exactly */
		as->system_len = len;
		api_session_account(as);
	}
	return 0;
}

/* session:doc([path | false]) -> info, restarted: pin a document (or
 * none) from the next conversation on; what the session's document is. */
static int api_s_doc(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	bool restarted = false;
	if (!lua_isnone(L, 2)) {
		const char *path = NULL;
		if (lua_type(L, 2) == LUA_TSTRING)
			path = lua_tostring(L, 2);
		else if (lua_type(L, 2) != LUA_TBOOLEAN || lua_toboolean(L, 2))
			return script_error(L, "session:doc: %s (expected a file path, or false for none)",
			                    luaL_typename(L, 2));
		api_session_idle(L, as, "doc");
		restarted = api_session_doc(L, as, path, "session:doc");
		script_stale(as->p->rt);
	}
	struct session_doc_info di;
	bool has = session_doc(as->s, &di);
	lua_createtable(L, 0, 8);
	if (di.path != NULL) {
		lua_pushstring(L, di.path);
		lua_setfield(L, -2, "path");
	}
	lua_pushboolean(L, has);
	lua_setfield(L, -2, "on");
	lua_pushinteger(L, di.n_tokens);
	lua_setfield(L, -2, "tokens");
	lua_pushinteger(L, di.n_cached);
	lua_setfield(L, -2, "cached");
	lua_pushboolean(L, di.clustered);
	lua_setfield(L, -2, "clustered");
	if (di.clustered) {
		lua_pushinteger(L, di.sq.n_keys);
		lua_setfield(L, -2, "keys");
		lua_pushinteger(L, di.sq.n_fine);
		lua_setfield(L, -2, "fine");
		lua_pushinteger(L, di.sq.n_coarse);
		lua_setfield(L, -2, "coarse");
	}
	lua_pushboolean(L, restarted);
	return 2;
}

static const struct api_fn api_session_fns[] = {
	{ "session", API_DEFERRED, API_C, "([opts]) -> session",
	  "open a session: opts model, policy, budget, ctx, system, max_tokens, temp, top_k, top_p, "
	  "min_p, seed, threads, capture (off|summary|full), token_stats, sparse (a --sparse spec; "
	  "with capture, stats().sparsity), doc (a document to pin; kvscope run --doc sets it, "
	  "false: none)",
	  api_session_open },
	{ "current", API_FAST, API_C, "() -> session | nil",
	  "the front end's session when it runs on the main thread, borrowed; nil under kvscope "
	  "run and in the workbench (use kvscope.send)",
	  api_current },
	{ "send", API_DEFERRED, API_C, "(cmd [, arg])",
	  "ask the workbench to queue cmd on its own session: chat TEXT, policy SPEC, budget N, "
	  "reset, pin POS, unpin POS, max_tokens N, sparse SPEC, doc FILE|off",
	  api_send },
	{ "session:chat", API_DEFERRED, API_C, "(text [, {max_tokens=}]) -> reply, stats",
	  "one exchange; stats: index, stop, n_prompt, n_reply, prefill_ms, decode_ms, kept, evicted",
	  api_s_chat },
	{ "session:prompt", API_DEFERRED, API_C, "(text [, extra]) -> first_pos, n",
	  "feed a user turn and the reply header without replying (extra: tokens to follow)",
	  api_s_prompt },
	{ "session:feed", API_DEFERRED, API_C, "(text [, role]) -> first_pos, n",
	  "feed plain text as role (user by default; system, user or assistant)", api_s_feed },
	{ "session:end_reply", API_DEFERRED, API_C, "([eot_fed])",
	  "close a reply fed by hand with the template's end markers", api_s_end_reply },
	{ "session:generate", API_DEFERRED, API_C, "(n) -> text, stop, n_tokens",
	  "sample and feed up to n tokens", api_s_generate },
	{ "session:set_policy", API_DEFERRED, API_C, "(spec)",
	  "a built-in policy spec (\"sirllm:lambda=0.9\") or a Lua policy's name", api_s_set_policy },
	{ "session:set_budget", API_DEFERRED, API_C, "(n)", "the KV budget in tokens",
	  api_s_set_budget },
	{ "session:set_length", API_DEFERRED, API_C, "(spec [, instruct])",
	  "a length target for the next replies: \"120w\", \"200t\", a Ruler level (\"150\", "
	  "\">800\") or \"off\"; instruct=false leaves the prompt-side sentence out",
	  api_s_set_length },
	{ "session:pin", API_DEFERRED, API_C, "(position [, on])", "pin or unpin a cached token",
	  api_s_pin },
	{ "session:reset", API_DEFERRED, API_C, "()", "forget the conversation", api_s_reset },
	{ "session:set_system", API_DEFERRED, API_C, "(text)",
	  "the system prompt of the next conversation", api_s_set_system },
	{ "session:close", API_DEFERRED, API_C, "()", "close a session the plugin opened",
	  api_s_close },
	{ "session:doc", API_DEFERRED, API_C, "([path | false]) -> info, restarted",
	  "pin a text document at the start of the next conversation (false: none); info: path, "
	  "on, tokens, cached, clustered (squeezed's index), keys, fine, coarse",
	  api_s_doc },
};

static const struct api_type api_session_types[] = {
	{ API_SESSION, "session", NULL, NULL, api_session_gc },
};

const struct api_lib api_session_lib = API_LIB(api_session_fns, api_session_types);
