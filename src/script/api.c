/*
 * api.c: the Lua API, one table (api_table) that lists every function with
 * its tier, arguments and doc line; the bindings, doc/lua-api.md and
 * `:help lua` all come from it.
 *
 * Tiers (as neovim's api-fast): "fast" functions may be called anywhere,
 * hooks of per-token events included; "deferred" ones change state
 * (sessions, views, commands, files) and may only run on the main loop: a
 * fast hook that calls one gets an error naming the function and telling it
 * to use kvscope.schedule. Every C function is bound through api_call, which
 * checks the tier from the table row before calling it.
 *
 * Event data is lent, not copied: token, cached-token lists and attention
 * are read-only userdata over the engine's own memory, stamped with the
 * state's epoch; the runtime bumps the epoch when the data may change (the
 * event is over, the session fed more tokens), and a stale handle raises an
 * error instead of reading freed memory. The token event reuses one
 * userdata per plugin, so a token hook allocates nothing.
 *
 * The binding of row "NAME" is api_NAME (api_s_NAME for "session:NAME",
 * api_view_NAME for "view:NAME"); the row's doc line says what it does.
 *
 * Sessions opened by a plugin are synchronous and run on the main thread;
 * their events go to every plugin through the runtime's dispatch.
 */
#include "script/script-int.h"
#include "store/store.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum api_tier { API_FAST = 0, API_DEFERRED };
enum api_kind { API_C = 0, API_LUA, API_FIELD };

struct api_fn {
	const char *name;   /* "on", "policy.register", "session:chat" */
	enum api_tier tier;
	enum api_kind kind;
	const char *args;   /* synopsis after the name */
	const char *doc;
	lua_CFunction fn;
};

static const struct api_fn api_table[];
static const size_t api_table_len;

#define API_SESSION "kvscope.session"
#define API_TOKEN "kvscope.token"
#define API_TOKS "kvscope.toks"
#define API_TOK "kvscope.tok"
#define API_ATTN "kvscope.attn"
#define API_TIMER "kvscope.timer"
#define API_VIEW "kvscope.view"

/* ------------------------------------------------------------ helpers */

static struct script_rt *api_rt(lua_State *L)
{
	return script_plugin_of(L)->rt;
}

/* Raise kvscope.exit's request for status, ending the script. */
static int api_raise_exit(lua_State *L, int status)
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
	if (f->tier == API_DEFERRED && P->fast > 0)
		return script_error(L, "kvscope.%s is deferred: it cannot run inside a fast hook (%s); "
		                     "call it through kvscope.schedule(fn)",
		                  f->name, P->fast_what ? P->fast_what : "?");
	P->active = L;
	int n = f->fn(L);
	if (P->exit_status >= 0)
		return api_raise_exit(L, P->exit_status);
	return n;
}

static void api_setnum(lua_State *L, const char *k, double v)
{
	lua_pushnumber(L, v);
	lua_setfield(L, -2, k);
}

static void api_setint(lua_State *L, const char *k, lua_Integer v)
{
	lua_pushinteger(L, v);
	lua_setfield(L, -2, k);
}

static void api_setstr(lua_State *L, const char *k, const char *v)
{
	lua_pushstring(L, v);
	lua_setfield(L, -2, k);
}

/* A handle's data is still valid (the event or the cache state it lent). */
static void api_check_epoch(lua_State *L, uint64_t epoch, const char *what)
{
	if (epoch != script_plugin_of(L)->epoch)
		script_error(L, "%s is no longer valid: event data is lent for the duration of the call "
		              "(copy what you keep)",
		           what);
}

/* A float that may be NaN: nil when unknown. */
static void api_pushf(lua_State *L, float v)
{
	if (isnan(v))
		lua_pushnil(L);
	else
		lua_pushnumber(L, v);
}

static const char *const api_role_names[] = { "none", "system", "user", "assistant", NULL };

/* --------------------------------------------------------- token data */

struct api_tokref {
	const struct kv_tok *t;   /* may be NULL (no cache entry) */
	const char *text;         /* the event's text (token events), or NULL */
	size_t len;
	int32_t id;
	bool eog;
	uint64_t epoch;
	const struct vocab *v;
};

/* Read field k of a token. */
static int api_tok_field(lua_State *L, const struct api_tokref *r, const char *k)
{
	const struct kv_tok *t = r->t;
	if (strcmp(k, "id") == 0)
		lua_pushinteger(L, t ? t->token : r->id);
	else if (strcmp(k, "text") == 0) {
		if (r->text != NULL)
			lua_pushlstring(L, r->text, r->len);
		else if (r->v != NULL && t != NULL) {
			char buf[256];
			size_t n = vocab_piece(r->v, t->token, true, buf, sizeof buf);
			lua_pushlstring(L, buf, KVS_MIN(n, sizeof buf));
		} else
			lua_pushnil(L);
	} else if (t == NULL) {
		if (strcmp(k, "eog") == 0)
			lua_pushboolean(L, r->eog);
		else
			lua_pushnil(L);
	} else if (strcmp(k, "position") == 0)
		lua_pushinteger(L, t->orig_pos);
	else if (strcmp(k, "pos") == 0)
		lua_pushinteger(L, t->pos);
	else if (strcmp(k, "surprisal") == 0)
		api_pushf(L, t->surprisal);
	else if (strcmp(k, "entropy") == 0)
		api_pushf(L, t->entropy);
	else if (strcmp(k, "score") == 0)
		api_pushf(L, t->score);
	else if (strcmp(k, "turn") == 0)
		lua_pushinteger(L, t->turn);
	else if (strcmp(k, "role") == 0)
		lua_pushstring(L, api_role_names[t->role < 4 ? t->role : 0]);
	else if (strcmp(k, "slot") == 0)
		lua_pushinteger(L, t->slot);
	else if (strcmp(k, "sink") == 0)
		lua_pushboolean(L, (t->flags & KV_FLAG_SINK) != 0);
	else if (strcmp(k, "key") == 0)
		lua_pushboolean(L, (t->flags & KV_FLAG_KEY) != 0);
	else if (strcmp(k, "pinned") == 0)
		lua_pushboolean(L, (t->flags & KV_FLAG_PINNED) != 0);
	else if (strcmp(k, "eog") == 0)
		lua_pushboolean(L, r->eog);
	else
		lua_pushnil(L);
	return 1;
}

static int api_readonly(lua_State *L)
{
	return script_error(L, "%s is read-only", luaL_typename(L, 1));
}

static int api_token_index(lua_State *L)
{
	struct api_tokref *r = luaL_checkudata(L, 1, API_TOKEN);
	api_check_epoch(L, r->epoch, "the token");
	return api_tok_field(L, r, luaL_checkstring(L, 2));
}

static int api_tok_index(lua_State *L)
{
	struct api_tokref *r = luaL_checkudata(L, 1, API_TOK);
	api_check_epoch(L, r->epoch, "the cached token");
	return api_tok_field(L, r, luaL_checkstring(L, 2));
}

void api_push_token(lua_State *L, const struct gen_token *t)
{
	/* one userdata per state, refilled for each token */
	if (lua_getfield(L, LUA_REGISTRYINDEX, "kvscope.token1") != LUA_TUSERDATA) {
		lua_pop(L, 1);
		lua_newuserdatauv(L, sizeof(struct api_tokref), 0);
		luaL_setmetatable(L, API_TOKEN);
		lua_pushvalue(L, -1);
		lua_setfield(L, LUA_REGISTRYINDEX, "kvscope.token1");
	}
	struct api_tokref *r = lua_touserdata(L, -1);
	r->t = t->meta;
	r->text = t->text;
	r->len = t->len;
	r->id = t->id;
	r->eog = t->eog;
	r->v = NULL;
	r->epoch = script_plugin_of(L)->epoch;
}

struct api_toks {
	const struct kv_tok *t;
	uint32_t n;
	uint64_t epoch;
	const struct vocab *v;
};

void api_push_toks(lua_State *L, const struct kv_tok *toks, uint32_t n, const struct vocab *v)
{
	/* user value 1: the session whose cache it lends (kept alive with it) */
	struct api_toks *a = lua_newuserdatauv(L, sizeof *a, 1);
	a->t = toks;
	a->n = n;
	a->epoch = script_plugin_of(L)->epoch;
	a->v = v;
	luaL_setmetatable(L, API_TOKS);
}

static int api_toks_len(lua_State *L)
{
	struct api_toks *a = luaL_checkudata(L, 1, API_TOKS);
	lua_pushinteger(L, a->n);
	return 1;
}

/* toks[i]: the i-th cached token (1-based, cache order). */
static int api_toks_index(lua_State *L)
{
	struct api_toks *a = luaL_checkudata(L, 1, API_TOKS);
	api_check_epoch(L, a->epoch, "the token list");
	if (!lua_isinteger(L, 2))
		return script_error(L, "token lists are indexed by integers 1..#list");
	lua_Integer i = lua_tointeger(L, 2);
	if (i < 1 || i > (lua_Integer)a->n) {
		lua_pushnil(L);
		return 1;
	}
	struct api_tokref *r = lua_newuserdatauv(L, sizeof *r, 0);
	memset(r, 0, sizeof *r);
	r->t = &a->t[i - 1];
	r->id = r->t->token;
	r->epoch = a->epoch;
	r->v = a->v;
	luaL_setmetatable(L, API_TOK);
	return 1;
}

/* ---------------------------------------------------------- attention */

struct api_attn {
	const float *w;                       /* (n_layer, n_head, n_cached) or NULL */
	const struct kv_head_summary *heads;  /* (n_layer, n_head) */
	const struct kv_tok *cols;            /* the cached tokens (columns), or NULL */
	uint32_t n_layer, n_head, n_cached;
	int level;                            /* 0 all, 1 one layer, 2 one row */
	uint32_t layer, head;
	uint64_t step;
	float next_entropy;
	int32_t query_pos;                    /* original position of the query token, -1 unknown */
	uint64_t epoch;
};

void api_push_attention(lua_State *L, const struct kv_event *ev)
{
	struct script_rt *rt = api_rt(L);
	if (lua_getfield(L, LUA_REGISTRYINDEX, "kvscope.attn1") != LUA_TUSERDATA) {
		lua_pop(L, 1);
		lua_newuserdatauv(L, sizeof(struct api_attn), 0);
		luaL_setmetatable(L, API_ATTN);
		lua_pushvalue(L, -1);
		lua_setfield(L, LUA_REGISTRYINDEX, "kvscope.attn1");
	}
	struct api_attn *a = lua_touserdata(L, -1);
	a->w = ev->attn;
	a->heads = ev->heads;
	a->cols = rt->step_toks != NULL && rt->step_n == ev->n_cached ? rt->step_toks : NULL;
	a->n_layer = ev->n_layer;
	a->n_head = ev->n_head;
	a->n_cached = ev->n_cached;
	a->level = 0;
	a->layer = a->head = 0;
	a->step = ev->step;
	a->next_entropy = ev->next_entropy;
	a->query_pos = ev->tok ? ev->tok->orig_pos : -1;
	a->epoch = script_plugin_of(L)->epoch;
}

/* Check (layer, head, column) 1-based against a's shape. */
static const float *api_attn_row(lua_State *L, struct api_attn *a, lua_Integer l, lua_Integer h)
{
	if (a->w == NULL)
		script_error(L, "attention rows were not captured (open the session with capture = \"full\")");
	if (l < 1 || l > (lua_Integer)a->n_layer || h < 1 || h > (lua_Integer)a->n_head)
		script_error(L, "attention: layer %d, head %d out of range (1..%d, 1..%d)", (int)l, (int)h,
		           (int)a->n_layer, (int)a->n_head);
	return a->w + ((size_t)(l - 1) * a->n_head + (size_t)(h - 1)) * a->n_cached;
}

static int api_attn_len(lua_State *L)
{
	struct api_attn *a = luaL_checkudata(L, 1, API_ATTN);
	lua_pushinteger(L, a->level == 0 ? a->n_layer : a->level == 1 ? a->n_head : a->n_cached);
	return 1;
}

/* a:get(layer, head, i): one weight, no allocation. */
static int api_attn_get(lua_State *L)
{
	struct api_attn *a = luaL_checkudata(L, 1, API_ATTN);
	api_check_epoch(L, a->epoch, "the attention");
	lua_Integer l = luaL_checkinteger(L, 2), h = luaL_checkinteger(L, 3);
	lua_Integer i = luaL_checkinteger(L, 4);
	const float *row = api_attn_row(L, a, l, h);
	if (i < 1 || i > (lua_Integer)a->n_cached)
		return script_error(L, "attention: column %d out of range (1..%d)", (int)i, (int)a->n_cached);
	lua_pushnumber(L, row[i - 1]);
	return 1;
}

/* a:summary(layer, head): entropy, sink mass, top-k mass, k90. */
static int api_attn_summary(lua_State *L)
{
	struct api_attn *a = luaL_checkudata(L, 1, API_ATTN);
	api_check_epoch(L, a->epoch, "the attention");
	lua_Integer l = luaL_checkinteger(L, 2), h = luaL_checkinteger(L, 3);
	if (a->heads == NULL || l < 1 || l > (lua_Integer)a->n_layer || h < 1 ||
	    h > (lua_Integer)a->n_head)
		return script_error(L, "attention summary: layer %d, head %d out of range (1..%d, 1..%d)",
		                  (int)l, (int)h, (int)a->n_layer, (int)a->n_head);
	const struct kv_head_summary *s = &a->heads[(size_t)(l - 1) * a->n_head + (size_t)(h - 1)];
	lua_pushnumber(L, s->entropy);
	lua_pushnumber(L, s->sink_mass);
	lua_pushnumber(L, s->topk_mass);
	lua_pushinteger(L, s->k90);
	return 4;
}

/* a:position(i): original position of column i (nil when not known). */
static int api_attn_position(lua_State *L)
{
	struct api_attn *a = luaL_checkudata(L, 1, API_ATTN);
	api_check_epoch(L, a->epoch, "the attention");
	lua_Integer i = luaL_checkinteger(L, 2);
	if (a->cols == NULL || i < 1 || i > (lua_Integer)a->n_cached)
		lua_pushnil(L);
	else
		lua_pushinteger(L, a->cols[i - 1].orig_pos);
	return 1;
}

static int api_attn_index(lua_State *L)
{
	struct api_attn *a = luaL_checkudata(L, 1, API_ATTN);
	api_check_epoch(L, a->epoch, "the attention");
	if (lua_type(L, 2) == LUA_TSTRING) {
		const char *k = lua_tostring(L, 2);
		static const luaL_Reg methods[] = {
			{ "get", api_attn_get }, { "summary", api_attn_summary },
			{ "position", api_attn_position }, { NULL, NULL },
		};
		for (const luaL_Reg *m = methods; m->name; m++)
			if (a->level == 0 && strcmp(k, m->name) == 0) {
				lua_pushcfunction(L, m->func);
				return 1;
			}
		if (strcmp(k, "n_layer") == 0)
			lua_pushinteger(L, a->n_layer);
		else if (strcmp(k, "n_head") == 0)
			lua_pushinteger(L, a->n_head);
		else if (strcmp(k, "n_cached") == 0)
			lua_pushinteger(L, a->n_cached);
		else if (strcmp(k, "step") == 0)
			lua_pushinteger(L, (lua_Integer)a->step);
		else if (strcmp(k, "next_entropy") == 0)
			api_pushf(L, a->next_entropy);
		else if (strcmp(k, "rows") == 0)
			lua_pushboolean(L, a->w != NULL);
		else if (strcmp(k, "query") == 0 && a->query_pos >= 0)
			lua_pushinteger(L, a->query_pos);
		else
			lua_pushnil(L);
		return 1;
	}
	lua_Integer i = luaL_checkinteger(L, 2);
	if (a->level == 2) {
		if (i < 1 || i > (lua_Integer)a->n_cached)
			lua_pushnil(L);
		else
			lua_pushnumber(L, api_attn_row(L, a, a->layer, a->head)[i - 1]);
		return 1;
	}
	uint32_t lim = a->level == 0 ? a->n_layer : a->n_head;
	if (i < 1 || i > (lua_Integer)lim) {
		lua_pushnil(L);
		return 1;
	}
	struct api_attn *sub = lua_newuserdatauv(L, sizeof *sub, 0);
	*sub = *a;
	if (a->level == 0)
		sub->layer = (uint32_t)i;
	else
		sub->head = (uint32_t)i;
	sub->level = a->level + 1;
	if (sub->level == 2)
		api_attn_row(L, sub, sub->layer, sub->head); /* rows must exist */
	luaL_setmetatable(L, API_ATTN);
	return 1;
}

/* -------------------------------------------------------------- turns */

int api_push_model(lua_State *L, const struct gen *g)
{
	lua_createtable(L, 0, 8);
	api_setstr(L, "name", g->model->name);
	api_setint(L, "n_layer", g->model->hp.n_layer);
	api_setint(L, "n_head", g->model->hp.n_head);
	api_setint(L, "n_head_kv", g->model->hp.n_head_kv);
	api_setint(L, "n_ctx", gen_n_ctx(g));
	api_setint(L, "n_vocab", gen_n_vocab(g));
	api_setstr(L, "backend", engine_backend_name(g->engine));
	if (g->chat.default_system != NULL)
		api_setstr(L, "default_system", g->chat.default_system);
	return 1;
}

void api_push_turn(lua_State *L, const struct session_turn *t)
{
	lua_createtable(L, 0, 11);
	api_setint(L, "index", (lua_Integer)t->index + 1);
	api_setstr(L, "user", t->user ? t->user : "");
	api_setstr(L, "reply", t->reply ? t->reply : "");
	api_setstr(L, "stop", gen_stop_name(t->stop));
	api_setint(L, "first_pos", t->first_pos);
	api_setint(L, "n_prompt", t->n_prompt);
	api_setint(L, "n_reply", t->n_reply);
	api_setint(L, "n_words", t->n_words);
	api_setnum(L, "prefill_ms", t->prefill_ms);
	api_setnum(L, "decode_ms", t->decode_ms);
	lua_pushboolean(L, t->restarted);
	lua_setfield(L, -2, "restarted");
}

/* ----------------------------------------------------- kvscope.* core */

static int api_on(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	struct script_rt *rt = P->rt;
	const char *ev = luaL_checkstring(L, 1);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	lua_Integer prio = luaL_optinteger(L, 3, 0);
	int k;
	for (k = 0; k < SEV_COUNT; k++)
		if (strcmp(ev, script_event_names[k]) == 0)
			break;
	if (k == SEV_COUNT) {
		luaL_Buffer b;
		luaL_buffinit(L, &b);
		for (int i = 0; i < SEV_COUNT; i++) {
			luaL_addstring(&b, i ? ", " : "");
			luaL_addstring(&b, script_event_names[i]);
		}
		luaL_pushresult(&b);
		return script_error(L, "kvscope.on: unknown event '%s' (expected one of %s)", ev,
		                  lua_tostring(L, -1));
	}
	if (rt->n_hooks == rt->cap_hooks) {
		rt->cap_hooks = rt->cap_hooks ? rt->cap_hooks * 2 : 16;
		rt->hooks = xreallocarray(rt->hooks, rt->cap_hooks, sizeof *rt->hooks);
	}
	lua_pushvalue(L, 2);
	struct script_hook h = {
		.ev = (enum script_event)k, .priority = (int)prio, .p = P,
		.ref = luaL_ref(L, LUA_REGISTRYINDEX), .id = rt->next_id++, .seq = ++rt->seq,
	};
	rt->hooks[rt->n_hooks++] = h;
	if (rt->dispatching == 0) {
		/* keep the order now; during a dispatch it is restored at its end */
		for (size_t i = rt->n_hooks - 1; i > 0; i--) {
			struct script_hook *a = &rt->hooks[i - 1], *b = &rt->hooks[i];
			if (a->priority >= b->priority)
				break;
			struct script_hook t = *a;
			*a = *b;
			*b = t;
		}
	}
	lua_pushinteger(L, (lua_Integer)h.id);
	return 1;
}

static int api_off(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	struct script_rt *rt = P->rt;
	lua_Integer id = luaL_checkinteger(L, 1);
	for (size_t i = 0; i < rt->n_hooks; i++)
		if ((lua_Integer)rt->hooks[i].id == id && rt->hooks[i].p == P && !rt->hooks[i].dead) {
			rt->hooks[i].dead = true;
			if (rt->dispatching == 0) {
				luaL_unref(L, LUA_REGISTRYINDEX, rt->hooks[i].ref);
				memmove(rt->hooks + i, rt->hooks + i + 1,
				        (rt->n_hooks - i - 1) * sizeof *rt->hooks);
				rt->n_hooks--;
			}
			lua_pushboolean(L, 1);
			return 1;
		}
	lua_pushboolean(L, 0);
	return 1;
}

static int api_schedule(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	struct script_rt *rt = P->rt;
	luaL_checktype(L, 1, LUA_TFUNCTION);
	if (rt->n_sched == rt->cap_sched) {
		rt->cap_sched = rt->cap_sched ? rt->cap_sched * 2 : 16;
		rt->sched = xreallocarray(rt->sched, rt->cap_sched, sizeof *rt->sched);
	}
	lua_pushvalue(L, 1);
	rt->sched[rt->n_sched].p = P;
	rt->sched[rt->n_sched].ref = luaL_ref(L, LUA_REGISTRYINDEX);
	rt->n_sched++;
	return 0;
}

static int api_in_fast(lua_State *L)
{
	lua_pushboolean(L, script_plugin_of(L)->fast > 0);
	return 1;
}

static int api_log(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	script_concat_args(L, ' ');
	script_log(P, "%s", lua_tostring(L, -1));
	if (P->rt->cfg.headless)
		script_notify(P->rt, P, "%s", lua_tostring(L, -1));
	return 0;
}

static int api_clock(lua_State *L)
{
	lua_pushnumber(L, clock_now_ms());
	return 1;
}

static int api_status(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	size_t len = 0;
	const char *s = luaL_optlstring(L, 1, NULL, &len);
	free(P->status);
	/* at most 200 bytes, cut at a character boundary */
	P->status = s ? xstrndup(s, utf8_complete_prefix((const uint8_t *)s, KVS_MIN(len, 200))) : NULL;
	return 0;
}

static int api_command(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	struct script_rt *rt = P->rt;
	const char *name = luaL_checkstring(L, 1);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	const char *help = luaL_optstring(L, 3, "");
	if (!lua_isnoneornil(L, 4))
		luaL_checktype(L, 4, LUA_TFUNCTION);
	size_t n = strlen(name);
	bool ok = n > 0 && n <= 32 && name[0] >= 'a' && name[0] <= 'z';
	for (size_t i = 0; ok && i < n; i++)
		ok = (name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
		     name[i] == '-' || name[i] == '_';
	if (!ok)
		return script_error(L, "kvscope.command: bad name '%s' (expected lower-case letters, "
		                     "digits, '-' and '_', starting with a letter)",
		                  name);
	for (size_t i = 0; i < rt->n_cmds; i++)
		if (strcmp(rt->cmds[i].name, name) == 0) {
			if (rt->cmds[i].p != P)
				return script_error(L, "kvscope.command: :%s belongs to plugin %s", name,
				                  rt->cmds[i].p->name);
			luaL_unref(L, LUA_REGISTRYINDEX, rt->cmds[i].ref);
			luaL_unref(L, LUA_REGISTRYINDEX, rt->cmds[i].complete_ref);
			free(rt->cmds[i].name);
			free(rt->cmds[i].help);
			rt->cmds[i] = rt->cmds[--rt->n_cmds];
			break;
		}
	if (rt->n_cmds == rt->cap_cmds) {
		rt->cap_cmds = rt->cap_cmds ? rt->cap_cmds * 2 : 8;
		rt->cmds = xreallocarray(rt->cmds, rt->cap_cmds, sizeof *rt->cmds);
	}
	struct script_cmd *c = &rt->cmds[rt->n_cmds++];
	c->name = xstrdup(name);
	c->help = xstrdup(help);
	c->p = P;
	lua_pushvalue(L, 2);
	c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
	c->complete_ref = LUA_NOREF;
	if (!lua_isnoneornil(L, 4)) {
		lua_pushvalue(L, 4);
		c->complete_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	}
	return 0;
}

static int api_run_command(lua_State *L)
{
	struct err e;
	const char *name = luaL_checkstring(L, 1);
	const char *args = luaL_optstring(L, 2, "");
	int rc = script_command_run(api_rt(L), name, args, &e);
	lua_pushboolean(L, rc == KVS_OK);
	if (rc == KVS_OK)
		return 1;
	lua_pushstring(L, e.msg);
	return 2;
}

static int api_commands(lua_State *L)
{
	struct script_rt *rt = api_rt(L);
	lua_createtable(L, (int)rt->n_cmds, 0);
	for (size_t i = 0; i < rt->n_cmds; i++) {
		lua_createtable(L, 0, 3);
		api_setstr(L, "name", rt->cmds[i].name);
		api_setstr(L, "help", rt->cmds[i].help);
		api_setstr(L, "plugin", rt->cmds[i].p->name);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	return 1;
}

struct api_timer {
	uint64_t id;
};

static int api_timer(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	struct script_rt *rt = P->rt;
	double ms = luaL_checknumber(L, 1);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	bool periodic = lua_toboolean(L, 3);
	if (!(ms >= 0) || (periodic && ms < 1))
		return script_error(L, "kvscope.timer: %f ms (expected >= 0, >= 1 when periodic)", ms);
	if (rt->n_timers == rt->cap_timers) {
		rt->cap_timers = rt->cap_timers ? rt->cap_timers * 2 : 8;
		rt->timers = xreallocarray(rt->timers, rt->cap_timers, sizeof *rt->timers);
	}
	lua_pushvalue(L, 2);
	struct script_timer t = {
		.p = P, .ref = luaL_ref(L, LUA_REGISTRYINDEX), .id = rt->next_id++,
		.due = clock_now_ms() + ms, .interval_ms = periodic ? ms : 0,
	};
	rt->timers[rt->n_timers++] = t;
	struct api_timer *u = lua_newuserdatauv(L, sizeof *u, 0);
	u->id = t.id;
	luaL_setmetatable(L, API_TIMER);
	return 1;
}

static int api_timer_stop(lua_State *L)
{
	struct api_timer *u = luaL_checkudata(L, 1, API_TIMER);
	struct script_rt *rt = api_rt(L);
	bool found = false;
	for (size_t i = 0; i < rt->n_timers; i++)
		if (rt->timers[i].id == u->id && !rt->timers[i].dead) {
			rt->timers[i].dead = true;
			found = true;
		}
	lua_pushboolean(L, found);
	return 1;
}

static int api_exit(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	lua_Integer status = luaL_optinteger(L, 1, 0);
	const char *msg = luaL_optstring(L, 2, NULL);
	if (!P->is_script)
		return msg ? script_error(L, "%s", msg)
		           : script_error(L, "kvscope.exit ends a script (kvscope run); a plugin is "
		                             "stopped with :plugin unload");
	if (status < 0 || status > 125)
		return script_error(L, "kvscope.exit: status %lld: expected 0..125", (long long)status);
	if (msg != NULL) {
		fflush(stdout);
		fprintf(stderr, "%s\n", msg);
	}
	return api_raise_exit(L, (int)status);
}

static int api_sleep(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	double ms = luaL_checknumber(L, 1);
	if (!P->is_script || P->depth != 1)
		return script_error(L, "kvscope.sleep is for a script's main chunk (kvscope run)");
	double end = clock_now_ms() + ms;
	for (;;) {
		double next = script_tick(P->rt);
		double left = end - clock_now_ms();
		if (left <= 0)
			break;
		if (next >= 0 && next < left)
			left = next;
		struct timespec ts = { (time_t)(left / 1000), (long)(fmod(left, 1000) * 1e6) };
		nanosleep(&ts, NULL);
	}
	return 0;
}

/* ---------------------------------------------------------------- views */

struct api_view {
	struct script_viewrec *rec;
};

static int api_view(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	struct script_rt *rt = P->rt;
	const char *name = luaL_checkstring(L, 1);
	struct script_viewrec *rec = NULL;
	for (size_t i = 0; i < rt->n_views; i++)
		if (strcmp(rt->views[i]->v.name, name) == 0) {
			if (rt->views[i]->p != P)
				return script_error(L, "kvscope.view: view %s belongs to plugin %s", name,
				                  rt->views[i]->p->name);
			rec = rt->views[i];
		}
	if (rec == NULL) {
		rec = xcalloc(1, sizeof *rec);
		rec->v.name = xstrdup(name);
		rec->v.plugin = P->name;
		rec->p = P;
		rt->views = xreallocarray(rt->views, rt->n_views + 1, sizeof *rt->views);
		rt->views[rt->n_views++] = rec;
	}
	struct api_view *u = lua_newuserdatauv(L, sizeof *u, 0);
	u->rec = rec;
	luaL_setmetatable(L, API_VIEW);
	return 1;
}

static struct script_item *api_view_add(lua_State *L, enum script_item_kind kind)
{
	struct api_view *u = luaL_checkudata(L, 1, API_VIEW);
	struct script_view *v = &u->rec->v;
	if (v->n_items >= 10000)
		script_error(L, "view %s: more than 10000 items (clear it first)", v->name);
	if (v->n_items == v->cap_items) {
		v->cap_items = v->cap_items ? v->cap_items * 2 : 16;
		v->items = xreallocarray(v->items, v->cap_items, sizeof *v->items);
	}
	struct script_item *it = &v->items[v->n_items++];
	memset(it, 0, sizeof *it);
	it->kind = kind;
	v->version++;
	return it;
}

static int api_view_clear(lua_State *L)
{
	struct api_view *u = luaL_checkudata(L, 1, API_VIEW);
	struct script_view *v = &u->rec->v;
	for (size_t i = 0; i < v->n_items; i++) {
		free(v->items[i].text);
		free(v->items[i].cells);
	}
	v->n_items = 0;
	v->version++;
	return 0;
}

static int api_view_text(lua_State *L)
{
	const char *s = luaL_checkstring(L, 2);
	struct script_item *it = api_view_add(L, SCRIPT_ITEM_TEXT);
	it->text = xstrdup(s);
	return 0;
}

static int api_view_bar(lua_State *L)
{
	const char *label = luaL_checkstring(L, 2);
	double value = luaL_checknumber(L, 3), max = luaL_optnumber(L, 4, 1.0);
	if (!(max > 0))
		return script_error(L, "view:bar: max %f (expected > 0)", max);
	struct script_item *it = api_view_add(L, SCRIPT_ITEM_BAR);
	it->text = xstrdup(label);
	it->value = value < 0 ? 0 : value > max ? max : value;
	it->max = max;
	return 0;
}

/* view:heatmap(label, matrix): matrix is a table of equal-length rows of numbers. */
static int api_view_heatmap(lua_State *L)
{
	const char *label = luaL_checkstring(L, 2);
	luaL_checktype(L, 3, LUA_TTABLE);
	lua_Integer rows = (lua_Integer)lua_rawlen(L, 3), cols = -1;
	if (rows < 1 || rows > 4096)
		return script_error(L, "view:heatmap: %d rows (expected 1..4096)", (int)rows);
	float *cells = NULL;
	for (lua_Integer r = 1; r <= rows; r++) {
		if (lua_rawgeti(L, 3, r) != LUA_TTABLE) {
			free(cells);
			return script_error(L, "view:heatmap: row %d is not a table of numbers", (int)r);
		}
		lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
		if (cols < 0) {
			cols = n;
			if (cols < 1 || cols > 4096)
				return script_error(L, "view:heatmap: %d columns (expected 1..4096)", (int)cols);
			cells = xmallocarray((size_t)(rows * cols), sizeof *cells);
		} else if (n != cols) {
			free(cells);
			return script_error(L, "view:heatmap: row %d has %d values, row 1 has %d", (int)r,
			                  (int)n, (int)cols);
		}
		for (lua_Integer c = 1; c <= cols; c++) {
			lua_rawgeti(L, -1, c);
			int isnum;
			double x = lua_tonumberx(L, -1, &isnum);
			lua_pop(L, 1);
			if (!isnum) {
				free(cells);
				return script_error(L, "view:heatmap: row %d, column %d is not a number", (int)r,
				                  (int)c);
			}
			cells[(r - 1) * cols + (c - 1)] = (float)x;
		}
		lua_pop(L, 1);
	}
	struct script_item *it = api_view_add(L, SCRIPT_ITEM_HEATMAP);
	it->text = xstrdup(label);
	it->rows = (uint32_t)rows;
	it->cols = (uint32_t)cols;
	it->cells = cells;
	it->lo = it->hi = cells[0];
	for (size_t i = 1; i < (size_t)(rows * cols); i++) {
		it->lo = fminf(it->lo, cells[i]);
		it->hi = fmaxf(it->hi, cells[i]);
	}
	return 0;
}

static const char *const api_item_kinds[] = { "text", "bar", "heatmap" };

/* Push v's items as a list of tables. */
static void api_push_items(lua_State *L, const struct script_view *v)
{
	lua_createtable(L, (int)v->n_items, 0);
	for (size_t i = 0; i < v->n_items; i++) {
		struct script_item *it = &v->items[i];
		lua_createtable(L, 0, 6);
		api_setstr(L, "kind", api_item_kinds[it->kind]);
		api_setstr(L, "text", it->text);
		if (it->kind == SCRIPT_ITEM_BAR) {
			api_setnum(L, "value", it->value);
			api_setnum(L, "max", it->max);
		} else if (it->kind == SCRIPT_ITEM_HEATMAP) {
			api_setint(L, "rows", it->rows);
			api_setint(L, "cols", it->cols);
			api_setnum(L, "lo", it->lo);
			api_setnum(L, "hi", it->hi);
		}
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
}

/* view:items(): the view's items as tables (what a renderer gets). */
static int api_view_items(lua_State *L)
{
	struct api_view *u = luaL_checkudata(L, 1, API_VIEW);
	api_push_items(L, &u->rec->v);
	return 1;
}

/* kvscope.views(): every plugin's views, read-only. */
static int api_views(lua_State *L)
{
	struct script_rt *rt = api_rt(L);
	lua_createtable(L, (int)rt->n_views, 0);
	for (size_t i = 0; i < rt->n_views; i++) {
		const struct script_view *v = &rt->views[i]->v;
		lua_createtable(L, 0, 3);
		api_setstr(L, "name", v->name);
		api_setstr(L, "plugin", v->plugin);
		api_push_items(L, v);
		lua_setfield(L, -2, "items");
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	return 1;
}

/* ------------------------------------------------------------- plugins */

static int api_plugins(lua_State *L)
{
	struct script_rt *rt = api_rt(L);
	size_t n = script_plugin_count(rt);
	lua_createtable(L, (int)n, 0);
	for (size_t i = 0; i < n; i++) {
		struct script_plugin_info in;
		script_plugin_at(rt, i, &in);
		lua_createtable(L, 0, 6);
		api_setstr(L, "name", in.name);
		api_setstr(L, "path", in.path);
		lua_pushboolean(L, in.enabled);
		lua_setfield(L, -2, "enabled");
		if (in.disabled_why)
			api_setstr(L, "why", in.disabled_why);
		api_setint(L, "errors", in.n_errors);
		api_setint(L, "mem", (lua_Integer)in.mem_bytes);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	return 1;
}

static int api_plugin_log(lua_State *L)
{
	struct script_rt *rt = api_rt(L);
	const char *name = luaL_checkstring(L, 1);
	size_t n = script_log_count(rt, name);
	lua_createtable(L, (int)n, 0);
	for (size_t i = 0; i < n; i++) {
		lua_pushstring(L, script_log_line(rt, name, i));
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	return 1;
}

static int api_load_plugin(lua_State *L)
{
	struct err e;
	int rc = script_load(api_rt(L), luaL_checkstring(L, 1), &e);
	lua_pushboolean(L, rc == KVS_OK);
	if (rc == KVS_OK)
		return 1;
	lua_pushstring(L, e.msg);
	return 2;
}

static int api_unload_plugin(lua_State *L)
{
	struct err e;
	int rc = script_unload(api_rt(L), luaL_checkstring(L, 1), &e);
	lua_pushboolean(L, rc == KVS_OK);
	if (rc == KVS_OK)
		return 1;
	lua_pushstring(L, e.msg);
	return 2;
}

static int api_status_items(lua_State *L)
{
	struct script_rt *rt = api_rt(L);
	size_t n = script_status_count(rt);
	lua_createtable(L, 0, (int)n);
	for (size_t i = 0; i < n; i++) {
		const char *plugin;
		const char *s = script_status_at(rt, i, &plugin);
		lua_pushstring(L, s);
		lua_setfield(L, -2, plugin);
	}
	return 1;
}

/* ----------------------------------------------------------- files out */

/* A relative path of plain components under the results directory. */
static bool api_path_ok(const char *p)
{
	if (p[0] == '\0' || p[0] == '/' || strlen(p) > 200)
		return false;
	for (const char *s = p; *s;) {
		size_t n = strcspn(s, "/");
		if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
			return false;
		for (size_t i = 0; i < n; i++) {
			char c = s[i];
			if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			      c == '.' || c == '-' || c == '_'))
				return false;
		}
		s += n + (s[n] == '/');
	}
	return true;
}

static int api_write(lua_State *L)
{
	struct script_rt *rt = api_rt(L);
	const char *rel = luaL_checkstring(L, 1);
	size_t len;
	const char *text = luaL_checklstring(L, 2, &len);
	const char *mode = luaL_optstring(L, 3, "w");
	if (!api_path_ok(rel))
		return script_error(L, "kvscope.write: '%s' refused (expected a relative path of letters, "
		                     "digits, '.', '-', '_' under the results directory, no '..')",
		                  rel);
	if (strcmp(mode, "w") != 0 && strcmp(mode, "a") != 0)
		return script_error(L, "kvscope.write: mode '%s' (expected \"w\" or \"a\")", mode);
	char *path = xasprintf("%s/%s", rt->results_dir, rel);
	/* create the directories on the way */
	char *slash = strrchr(path, '/');
	*slash = '\0';
	if (file_mkdirs(path, 0777) != 0) {
		lua_pushfstring(L, "kvscope.write: cannot create %s: %s", path, strerror(errno));
		free(path);
		return lua_error(L);
	}
	*slash = '/';
	FILE *fp = fopen(path, mode);
	if (fp == NULL || fwrite(text, 1, len, fp) != len || fclose(fp) != 0) {
		lua_pushfstring(L, "kvscope.write: cannot write %s: %s", path, strerror(errno));
		free(path);
		return lua_error(L);
	}
	lua_pushstring(L, path);
	free(path);
	return 1;
}

static int api_progress(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	double done = luaL_checknumber(L, 1), total = luaL_checknumber(L, 2);
	const char *text = luaL_optstring(L, 3, "");
	if (!P->rt->cfg.headless || !isatty(2) || !(total > 0))
		return 0;
	int w = 30, fill = (int)(w * (done / total < 1 ? done / total : 1));
	fprintf(stderr, "\r[%.*s%*s] %.0f/%.0f %s\033[K", fill, "##############################",
	        w - fill, "", done, total, text);
	if (done >= total)
		fputc('\n', stderr);
	fflush(stderr);
	return 0;
}

/* ------------------------------------------------------------ policies */

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
		return script_error(L, "policy.register: base '%s' never evicts (expected window, "
		                     "streaming, sirllm, lminfinite or h2o)",
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

static int api_score_call(struct script_plugin *P, struct script_policy *pol,
                          const struct kv_tok *toks, uint32_t n, uint32_t n_keep, float *scores,
                          double deadline_ms, struct err *e);

int api_score(void *ud, const struct kv_tok *toks, uint32_t n, uint32_t n_keep, float *scores,
              double deadline_ms, struct err *e)
{
	struct script_policy *pol = ud;
	struct script_rt *rt = pol->rt;
	int rc;

	/* pin the plugin: an unload on another thread waits for this call */
	pthread_mutex_lock(&rt->life);
	struct script_plugin *P = pol->p;
	if (P != NULL)
		P->pins++;
	pthread_mutex_unlock(&rt->life);
	if (P == NULL)
		return err_set(e, KVS_ENOTFOUND, "Lua policy %s was unloaded", pol->name);
	rc = api_score_call(P, pol, toks, n, n_keep, scores, deadline_ms, e);
	pthread_mutex_lock(&rt->life);
	if (--P->pins == 0)
		pthread_cond_broadcast(&rt->unpinned);
	pthread_mutex_unlock(&rt->life);
	return rc;
}

/* The policy call itself, P pinned. */
static int api_score_call(struct script_plugin *P, struct script_policy *pol,
                          const struct kv_tok *toks, uint32_t n, uint32_t n_keep, float *scores,
                          double deadline_ms, struct err *e)
{
	char what[96];
	int rc = KVS_OK;

	if (P->disabled)
		return err_set(e, KVS_ESTATE, "plugin %s is disabled", P->name);
	snprintf(what, sizeof what, "policy %s", pol->name);
	pthread_mutex_lock(&P->lock);
	lua_State *L = script_thread(P);
	lua_rawgeti(L, LUA_REGISTRYINDEX, pol->ref);
	api_push_toks(L, toks, n, pol->rt->vocab);
	lua_pushinteger(L, n_keep);
	double budget = deadline_ms - clock_now_ms();
	if (budget < 0.001)
		budget = 0.001;
	if (!script_pcall(P, L, 2, 1, true, what, budget, e)) {
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
				rc = err_set(e, KVS_EFORMAT, "policy %s: score %u is not a number (expected a "
				                             "table of %u numbers)",
				             pol->name, i + 1, n);
			else
				scores[i] = (float)x;
		}
		lua_pop(L, 1);
		if (rc != KVS_OK) {
			char msg[ERR_MSG_MAX];
			snprintf(msg, sizeof msg, "%s", e->msg);
			script_failed(P, what, msg, e);
		}
	}
	P->epoch++; /* the token list it was lent */
	pthread_mutex_unlock(&P->lock);
	return rc;
}

/* ------------------------------------------------------------ sessions */

static struct api_session *api_checksession(lua_State *L, int i)
{
	struct api_session **u = luaL_checkudata(L, i, API_SESSION);
	if (*u == NULL || (*u)->s == NULL)
		script_error(L, "the session is closed");
	return *u;
}

static void api_hook_turn_start(void *ud, uint32_t index, const char *user)
{
	struct api_session *as = ud;
	script_on_turn_start(as->p->rt, index, user);
}

static void api_hook_token(void *ud, const struct gen_token *t)
{
	struct api_session *as = ud;
	script_on_token(as->p->rt, t);
}

static void api_hook_kv(void *ud, const struct kv_event *ev)
{
	struct api_session *as = ud;
	struct script_rt *rt = as->p->rt;
	struct kv_cache *kv = session_gen(as->s)->kv;
	rt->vocab = session_gen(as->s)->model->vocab; /* renders the event's token text */
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
	static const char *const words[] = { "model", "system", "policy", "capture", "token_stats" };
	lua_pushnil(L);
	while (lua_next(L, t) != 0) {
		bool known = false;
		const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
		for (size_t i = 0; k && i < KVS_ARRAY_LEN(words); i++)
			known |= strcmp(k, words[i]) == 0;
		for (size_t i = 0; k && i < KVS_ARRAY_LEN(api_num_opts); i++)
			known |= strcmp(k, api_num_opts[i].key) == 0;
		if (!known)
			script_error(L, "kvscope.session: unknown option '%s' (expected model, policy, budget, "
			                "ctx, system, max_tokens, temp, top_k, top_p, min_p, seed, threads, "
			                "repeat_penalty, capture, token_stats)",
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
			int isnum;
			double x = lua_tonumberx(L, -1, &isnum);
			if (!isnum || !(x >= o->lo && x <= o->hi))
				script_error(L, "kvscope.session: %s = %s (expected a number in [%g, %g])", o->key,
				             luaL_tolstring(L, -1, NULL), o->lo, o->hi);
			void *f = (char *)c + o->off;
			if (o->type == API_OPT_U32)
				*(uint32_t *)f = (uint32_t)x;
			else if (o->type == API_OPT_I32)
				*(int32_t *)f = (int32_t)x;
			else if (o->type == API_OPT_INT)
				*(int *)f = (int)x;
			else
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
}

/* Install spec on as: a Lua policy name (scorer over its base) or a built-in spec. */
static int api_session_policy(struct script_rt *rt, struct api_session *as, const char *spec,
                              struct err *e)
{
	struct kv_cache *kv = session_gen(as->s)->kv;
	struct kv_scorer sc;
	struct kv_policy p;
	int rc;
	for (size_t i = 0; i < rt->n_policies; i++) {
		struct script_policy *pol = rt->policies[i];
		if (pol->p == NULL || strcmp(pol->name, spec) != 0)
			continue;
		script_policy_scorer(rt, spec, &sc, &p, e);
		rc = kv_cache_set_policy(kv, &p, e);
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

static int api_session_open(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	struct script_rt *rt = P->rt;
	struct session_config c;
	const char *policy = NULL;
	struct err e;

	session_config_default(&c);
	c.gen = rt->cfg.gen;
	c.system = rt->cfg.system;
	c.max_tokens = rt->cfg.max_tokens;
	if (!lua_isnoneornil(L, 1)) {
		luaL_checktype(L, 1, LUA_TTABLE);
		api_session_opts(L, 1, &c, &policy);
	}
	/* a built-in policy given here goes in the config (budget checks at open) */
	bool lua_policy = false;
	if (policy != NULL) {
		for (size_t i = 0; i < rt->n_policies; i++)
			lua_policy |= rt->policies[i]->p != NULL && strcmp(rt->policies[i]->name, policy) == 0;
		if (!lua_policy && kv_policy_parse(policy, &c.gen.kv.policy, &e) != KVS_OK)
			return script_error(L, "kvscope.session: policy: %s", e.msg);
		if (lua_policy) {
			struct kv_scorer sc;
			script_policy_scorer(rt, policy, &sc, &c.gen.kv.policy, NULL);
			/* Lua policies read surprisal and entropy: on unless said otherwise */
			if (c.gen.kv.token_stats == KV_TOKSTATS_AUTO)
				c.gen.kv.token_stats = KV_TOKSTATS_ON;
		}
	}
	if (c.gen.model_path == NULL)
		return script_error(L, "kvscope.session: no model (give model = PATH)");
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
	struct session_hooks h = {
		.turn_start = api_hook_turn_start, .token = api_hook_token, .kv = api_hook_kv, .ud = as,
	};
	session_set_hooks(as->s, &h);
	if (lua_policy && api_session_policy(rt, as, policy, &e) != KVS_OK)
		return script_error(L, "kvscope.session: %s", e.msg);
	script_on_model_loaded(rt, session_gen(as->s));
	rt->vocab = session_gen(as->s)->model->vocab;
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
	if (as->s != NULL && rt->vocab == session_gen(as->s)->model->vocab)
		rt->vocab = rt->current ? session_gen(rt->current)->model->vocab : NULL;
	if (as->owned)
		session_close(as->s);
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

void api_policy_gone(struct script_rt *rt, struct script_policy *pol)
{
	for (struct api_session *as = rt->sessions; as; as = as->next)
		if (as->policy == pol && as->s != NULL) {
			kv_cache_set_scorer(session_gen(as->s)->kv, NULL);
			as->policy = NULL;
			script_notify(rt, as->p, "Lua policy %s was unloaded: the session uses its base "
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
	const char *arg = luaL_optstring(L, 2, "");
	static const char *const cmds[] = { "chat", "policy", "budget", "reset", "pin", "unpin",
		                            "max_tokens" };
	bool known = false;
	struct err e;
	for (size_t i = 0; i < KVS_ARRAY_LEN(cmds); i++)
		known |= strcmp(cmd, cmds[i]) == 0;
	if (!known)
		return script_error(L, "kvscope.send: '%s' (expected chat, policy, budget, reset, pin, "
		                       "unpin or max_tokens)",
		                    cmd);
	if (rt->cfg.send == NULL)
		return script_error(L, "kvscope.send: no front-end session here (kvscope run: open one "
		                       "with kvscope.session)");
	if (rt->cfg.send(rt->cfg.send_ud, cmd, arg, &e) != KVS_OK)
		return script_error(L, "kvscope.send %s: %s", cmd, e.msg);
	return 0;
}

static void api_session_enter(lua_State *L, struct api_session *as)
{
	if (as->busy)
		script_error(L, "the session is busy (an exchange is running)");
	as->busy = true;
}

static void api_session_leave(struct api_session *as)
{
	as->busy = false;
	script_stale(as->p->rt);
}

static void api_push_stats(lua_State *L, const struct kv_cache *kv)
{
	struct kv_stats st;
	char buf[256];
	kv_cache_stats(kv, &st);
	lua_createtable(L, 0, 16);
	api_setint(L, "n_cached", st.n_cached);
	api_setint(L, "budget", st.budget);
	api_setint(L, "n_ctx", st.n_ctx);
	api_setint(L, "n_sink", st.n_sink);
	api_setint(L, "n_key", st.n_key);
	api_setint(L, "n_recent", st.n_recent);
	api_setint(L, "n_pinned", st.n_pinned);
	api_setint(L, "n_seen", (lua_Integer)st.n_seen);
	api_setint(L, "n_evicted", (lua_Integer)st.n_evicted);
	api_setint(L, "n_evictions", st.n_evictions);
	api_setint(L, "n_fallbacks", st.n_fallbacks);
	api_setint(L, "bytes", (lua_Integer)st.bytes);
	api_setint(L, "bytes_peak", (lua_Integer)st.bytes_peak);
	api_setint(L, "bytes_per_token", (lua_Integer)st.bytes_per_token);
	api_setstr(L, "policy", kv_policy_format(kv_cache_policy(kv), buf, sizeof buf));
}

static int api_s_chat(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	const char *text = luaL_checkstring(L, 2);
	struct err e;
	uint32_t old_max = 0;
	if (lua_istable(L, 3)) {
		if (lua_getfield(L, 3, "max_tokens") != LUA_TNIL) {
			lua_Integer m = luaL_checkinteger(L, -1);
			if (m < 1 || m > (1 << 24))
				return script_error(L, "chat: max_tokens %d (expected 1..16777216)", (int)m);
			old_max = 1;
			session_set_max_tokens(as->s, (uint32_t)m);
		}
		lua_pop(L, 1);
	}
	api_session_enter(L, as);
	int rc = session_chat(as->s, text, &e);
	api_session_leave(as);
	if (old_max)
		session_set_max_tokens(as->s, as->p->rt->cfg.max_tokens);
	if (rc != KVS_OK)
		return script_error(L, "chat: %s", e.msg);
	const struct session_turn *t = session_turn_at(as->s, session_n_turns(as->s) - 1);
	/* turn_end hooks run now, on the main loop, after the exchange */
	script_on_turn_end(as->p->rt, t);
	lua_pushstring(L, t->reply);
	api_push_turn(L, t);
	struct kv_stats st;
	kv_cache_stats(session_gen(as->s)->kv, &st);
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
	const char *text = luaL_checkstring(L, 2);
	lua_Integer extra = luaL_optinteger(L, 3, 0);
	struct err e;
	if (extra < 0 || extra > (1 << 24))
		return script_error(L, "prompt: extra %d (expected 0..16777216)", (int)extra);
	int32_t before = kv_cache_next_pos(session_gen(as->s)->kv);
	api_session_enter(L, as);
	int rc = session_prompt(as->s, text, (uint32_t)extra, &e);
	api_session_leave(as);
	if (rc != KVS_OK)
		return script_error(L, "prompt: %s", e.msg);
	lua_pushinteger(L, before);
	lua_pushinteger(L, kv_cache_next_pos(session_gen(as->s)->kv) - before);
	return 2;
}

static int api_s_feed(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	const char *text = luaL_checkstring(L, 2);
	enum kv_role role = api_role(L, 3, KV_ROLE_USER);
	struct err e;
	int32_t before = kv_cache_next_pos(session_gen(as->s)->kv);
	api_session_enter(L, as);
	int rc = session_feed_text(as->s, text, role, &e);
	api_session_leave(as);
	if (rc != KVS_OK)
		return script_error(L, "feed: %s", e.msg);
	lua_pushinteger(L, before);
	lua_pushinteger(L, kv_cache_next_pos(session_gen(as->s)->kv) - before);
	return 2;
}

static int api_s_end_reply(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	bool eot = lua_toboolean(L, 2);
	struct err e;
	api_session_enter(L, as);
	int rc = session_end_reply(as->s, eot, &e);
	api_session_leave(as);
	if (rc != KVS_OK)
		return script_error(L, "end_reply: %s", e.msg);
	return 0;
}

static void api_gen_text(const char *text, size_t len, void *ud)
{
	luaL_addlstring(ud, text, len);
}

static int api_s_generate(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	lua_Integer n = luaL_checkinteger(L, 2);
	struct gen *g = session_gen(as->s);
	struct err e;
	enum gen_stop stop;
	uint32_t n_out;
	luaL_Buffer b;
	if (n < 1 || n > (1 << 24))
		return script_error(L, "generate: %d tokens (expected 1..16777216)", (int)n);
	if (!g->have_logits)
		return script_error(L, "generate: nothing fed yet (feed or prompt first)");
	luaL_buffinit(L, &b);
	api_session_enter(L, as);
	int rc = gen_reply(g, (uint32_t)n, api_gen_text, &b, &stop, &n_out, &e);
	api_session_leave(as);
	if (rc != KVS_OK)
		return script_error(L, "generate: %s", e.msg);
	luaL_pushresult(&b);
	lua_pushstring(L, gen_stop_name(stop));
	lua_pushinteger(L, n_out);
	return 3;
}

/* The first token of a candidate: an id, or the first token of a string. */
static int32_t api_first_token(lua_State *L, struct gen *g, int idx)
{
	if (lua_isinteger(L, idx)) {
		lua_Integer id = lua_tointeger(L, idx);
		if (id < 0 || id >= (lua_Integer)gen_n_vocab(g))
			script_error(L, "token id %d out of range (0..%d)", (int)id, (int)gen_n_vocab(g) - 1);
		return (int32_t)id;
	}
	size_t len;
	const char *s = lua_tolstring(L, idx, &len);
	if (s == NULL || len == 0)
		script_error(L, "expected a token id or a non-empty string");
	int32_t *ids = NULL;
	size_t n = 0, cap = 0;
	struct err e;
	if (vocab_tokenize(g->model->vocab, s, len, false, false, &ids, &n, &cap, &e) != KVS_OK ||
	    n == 0) {
		free(ids);
		script_error(L, "cannot tokenize '%s'", s);
	}
	int32_t id = ids[0];
	free(ids);
	return id;
}

/* log-softmax normaliser of the last logits. */
static double api_logz(const float *lg, uint32_t n)
{
	double mx = lg[0], z = 0;
	for (uint32_t i = 1; i < n; i++)
		mx = fmax(mx, lg[i]);
	for (uint32_t i = 0; i < n; i++)
		z += exp((double)lg[i] - mx);
	return mx + log(z);
}

static int api_s_logprobs(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	struct gen *g = session_gen(as->s);
	luaL_checktype(L, 2, LUA_TTABLE);
	if (!g->have_logits || g->last_logits == NULL)
		return script_error(L, "logprobs: nothing fed yet (feed or prompt first)");
	double lz = api_logz(g->last_logits, gen_n_vocab(g));
	lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
	lua_createtable(L, (int)n, 0);
	for (lua_Integer i = 1; i <= n; i++) {
		lua_rawgeti(L, 2, i);
		int32_t id = api_first_token(L, g, -1);
		lua_pop(L, 1);
		lua_pushnumber(L, (double)g->last_logits[id] - lz);
		lua_rawseti(L, -2, i);
	}
	return 1;
}

static int api_s_top(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	struct gen *g = session_gen(as->s);
	lua_Integer k = luaL_optinteger(L, 2, 10);
	uint32_t nv = gen_n_vocab(g);
	if (!g->have_logits || g->last_logits == NULL)
		return script_error(L, "top: nothing fed yet (feed or prompt first)");
	if (k < 1 || k > 1000)
		return script_error(L, "top: k = %d (expected 1..1000)", (int)k);
	if ((uint32_t)k > nv)
		k = nv;
	double lz = api_logz(g->last_logits, nv);
	int32_t *best = xmallocarray((size_t)k, sizeof *best);
	lua_Integer have = 0;
	for (uint32_t i = 0; i < nv; i++) {
		float x = g->last_logits[i];
		if (have == k && x <= g->last_logits[best[k - 1]])
			continue;
		lua_Integer j = have < k ? have++ : k - 1;
		while (j > 0 && g->last_logits[best[j - 1]] < x) {
			best[j] = best[j - 1];
			j--;
		}
		best[j] = (int32_t)i;
	}
	lua_createtable(L, (int)k, 0);
	for (lua_Integer j = 0; j < have; j++) {
		char buf[256];
		size_t n = vocab_piece(g->model->vocab, best[j], true, buf, sizeof buf);
		lua_createtable(L, 0, 3);
		api_setint(L, "id", best[j]);
		lua_pushlstring(L, buf, KVS_MIN(n, sizeof buf));
		lua_setfield(L, -2, "text");
		api_setnum(L, "logprob", (double)g->last_logits[best[j]] - lz);
		lua_rawseti(L, -2, j + 1);
	}
	free(best);
	return 1;
}

static int api_s_tokenize(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	size_t len;
	const char *s = luaL_checklstring(L, 2, &len);
	bool special = lua_toboolean(L, 3);
	int32_t *ids = NULL;
	size_t n = 0, cap = 0;
	struct err e;
	if (vocab_tokenize(session_gen(as->s)->model->vocab, s, len, false, special, &ids, &n, &cap,
	                   &e) != KVS_OK) {
		free(ids);
		return script_error(L, "tokenize: %s", e.msg);
	}
	lua_createtable(L, (int)n, 0);
	for (size_t i = 0; i < n; i++) {
		lua_pushinteger(L, ids[i]);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	free(ids);
	return 1;
}

static int api_s_detokenize(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	const struct vocab *v = session_gen(as->s)->model->vocab;
	luaL_checktype(L, 2, LUA_TTABLE);
	luaL_Buffer b;
	luaL_buffinit(L, &b);
	lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
	for (lua_Integer i = 1; i <= n; i++) {
		lua_rawgeti(L, 2, i);
		lua_Integer id = lua_tointeger(L, -1);
		lua_pop(L, 1);
		if (id < 0 || id >= (lua_Integer)vocab_n_tokens(v))
			return script_error(L, "detokenize: id %d out of range", (int)id);
		char buf[256];
		size_t k = vocab_piece(v, (int32_t)id, true, buf, sizeof buf);
		luaL_addlstring(&b, buf, KVS_MIN(k, sizeof buf));
	}
	luaL_pushresult(&b);
	return 1;
}

static int api_s_set_policy(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	const char *spec = luaL_checkstring(L, 2);
	struct err e;
	if (as->busy)
		return script_error(L, "set_policy: the session is busy");
	if (api_session_policy(as->p->rt, as, spec, &e) != KVS_OK)
		return script_error(L, "set_policy: %s", e.msg);
	script_stale(as->p->rt);
	session_gen(as->s)->n_past = kv_cache_n(session_gen(as->s)->kv);
	return 0;
}

static int api_s_set_budget(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	lua_Integer n = luaL_checkinteger(L, 2);
	struct err e;
	if (as->busy)
		return script_error(L, "set_budget: the session is busy");
	if (n < 8 || n > (1 << 24))
		return script_error(L, "set_budget: %d tokens (expected 8..16777216)", (int)n);
	if (kv_cache_set_budget(session_gen(as->s)->kv, (uint32_t)n, &e) != KVS_OK)
		return script_error(L, "set_budget: %s", e.msg);
	script_stale(as->p->rt);
	session_gen(as->s)->n_past = kv_cache_n(session_gen(as->s)->kv);
	return 0;
}

static int api_s_policy(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	char buf[256];
	if (as->policy != NULL)
		lua_pushstring(L, as->policy->name);
	else
		lua_pushstring(L, kv_policy_format(kv_cache_policy(session_gen(as->s)->kv), buf,
		                                   sizeof buf));
	return 1;
}

static int api_s_stats(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	api_push_stats(L, session_gen(as->s)->kv);
	if (as->policy != NULL) {
		/* the Lua policy; its base gives positions and the fallback */
		lua_getfield(L, -1, "policy");
		lua_setfield(L, -2, "base");
		api_setstr(L, "policy", as->policy->name);
	}
	return 1;
}

static int api_s_tokens(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	struct gen *g = session_gen(as->s);
	api_push_toks(L, kv_cache_toks(g->kv), kv_cache_n(g->kv), g->model->vocab);
	lua_pushvalue(L, 1);
	lua_setiuservalue(L, -2, 1);
	return 1;
}

static int api_s_find(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	lua_Integer pos = luaL_checkinteger(L, 2);
	int32_t i = kv_cache_find(session_gen(as->s)->kv, (int32_t)pos);
	if (i < 0)
		lua_pushnil(L);
	else
		lua_pushinteger(L, i + 1);
	return 1;
}

static int api_s_pin(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	lua_Integer pos = luaL_checkinteger(L, 2);
	bool on = lua_isnone(L, 3) ? true : lua_toboolean(L, 3);
	struct err e;
	if (kv_cache_pin(session_gen(as->s)->kv, (int32_t)pos, on, &e) != KVS_OK)
		return script_error(L, "pin: %s", e.msg);
	return 0;
}

static int api_s_turns(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	lua_pushinteger(L, session_n_turns(as->s));
	return 1;
}

static int api_s_turn(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	lua_Integer i = luaL_checkinteger(L, 2);
	const struct session_turn *t = NULL;
	if (i >= 1 && i <= (lua_Integer)session_n_turns(as->s))
		t = session_turn_at(as->s, (uint32_t)(i - 1));
	if (t == NULL)
		lua_pushnil(L);
	else
		api_push_turn(L, t);
	return 1;
}

static int api_s_set_length(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	const char *spec = luaL_checkstring(L, 2);
	struct len_target t;
	struct err e;
	if (as->busy)
		return script_error(L, "set_length: the session is busy");
	if (len_target_parse(spec, &t, &e) != KVS_OK)
		return script_error(L, "set_length: %s", e.msg);
	if (lua_isboolean(L, 3))
		t.instruct = lua_toboolean(L, 3);
	gen_set_length_target(session_gen(as->s), t.unit == LEN_NONE ? NULL : &t);
	return 0;
}

static int api_s_length(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	const struct len_target *t = &session_gen(as->s)->turn.len;
	char buf[128];
	if (t->unit == LEN_NONE)
		lua_pushnil(L);
	else
		lua_pushstring(L, len_target_format(t, buf, sizeof buf));
	return 1;
}

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
		lua_pushinteger(L, (lua_Integer)ss->id);
		lua_setfield(L, -2, "id");
		lua_pushstring(L, ss->title ? ss->title : "");
		lua_setfield(L, -2, "title");
		lua_pushstring(L, ss->model_path ? ss->model_path : "");
		lua_setfield(L, -2, "model");
		lua_pushstring(L, ss->policy ? ss->policy : "");
		lua_setfield(L, -2, "policy");
		lua_pushinteger(L, ss->budget);
		lua_setfield(L, -2, "budget");
		lua_pushinteger(L, ss->n_turns);
		lua_setfield(L, -2, "n_turns");
		lua_pushinteger(L, ss->n_incomplete);
		lua_setfield(L, -2, "n_incomplete");
		lua_pushinteger(L, ss->n_kept);
		lua_setfield(L, -2, "n_kept");
		lua_pushnumber(L, ss->created);
		lua_setfield(L, -2, "created");
		lua_pushnumber(L, ss->updated);
		lua_setfield(L, -2, "updated");
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
		lua_pushstring(L, user ? user : "");
		lua_setfield(L, -2, "user");
		lua_pushstring(L, reply ? reply : "");
		lua_setfield(L, -2, "reply");
		lua_rawseti(L, -2, (lua_Integer)i + 1);
		free(user);
		free(reply);
	}
	store_session_free(&ss);
	store_close(st);
	return 1;
}

static int api_s_reset(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	if (as->busy)
		return script_error(L, "reset: the session is busy");
	session_reset(as->s);
	script_stale(as->p->rt);
	return 0;
}

static int api_s_close(lua_State *L)
{
	struct api_session **u = luaL_checkudata(L, 1, API_SESSION);
	if (*u != NULL && (*u)->busy)
		return script_error(L, "close: the session is busy");
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
	session_set_system(as->s, luaL_checkstring(L, 2));
	return 0;
}

static int api_s_info(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	return api_push_model(L, session_gen(as->s));
}

/* ------------------------------------------------------------ the table */

static int api_version(lua_State *L)
{
	lua_pushinteger(L, SCRIPT_API_VERSION);
	return 1;
}

static const struct api_fn api_table[] = {
	/* hooks and the main loop */
	{ "on", API_FAST, API_C, "(event, fn [, priority]) -> id",
	  "call fn for every event (see Events); higher priority first; returns the hook's id", api_on },
	{ "off", API_FAST, API_C, "(id) -> bool", "remove one of the plugin's hooks (safe during dispatch)",
	  api_off },
	{ "schedule", API_FAST, API_C, "(fn)",
	  "run fn on the main loop at the next tick (the way out of a fast hook)", api_schedule },
	{ "in_fast", API_FAST, API_C, "() -> bool", "whether the caller runs in a fast hook",
	  api_in_fast },
	{ "timer", API_DEFERRED, API_C, "(ms, fn [, periodic]) -> timer",
	  "call fn after ms (every ms when periodic) on the main loop; timer:stop() cancels",
	  api_timer },
	{ "timer:stop", API_FAST, API_C, "() -> bool", "cancel the timer", api_timer_stop },
	{ "exit", API_FAST, API_C, "([status [, message]])",
	  "scripts: end now with exit status 0..125 (default 0), printing message on stderr; in a "
	  "plugin it raises message as an error", api_exit },
	{ "sleep", API_DEFERRED, API_C, "(ms)",
	  "scripts only: wait ms while running due timers and scheduled functions", api_sleep },
	{ "clock", API_FAST, API_C, "() -> ms", "a monotonic clock in milliseconds", api_clock },
	{ "log", API_FAST, API_C, "(...)",
	  "append a line to the plugin's log (:plugin log NAME; stderr under kvscope run)", api_log },
	{ "api_version", API_FAST, API_C, "() -> n", "the API's version number (1)", api_version },
	/* user interface */
	{ "command", API_DEFERRED, API_C, "(name, fn [, help [, complete]])",
	  "add :name; fn(args) runs it, complete(prefix) returns a list of completions", api_command },
	{ "run_command", API_DEFERRED, API_C, "(name [, args]) -> ok [, err]",
	  "run a plugin command as the user would", api_run_command },
	{ "commands", API_FAST, API_C, "() -> list", "the plugin commands: {name, help, plugin}",
	  api_commands },
	{ "status", API_FAST, API_C, "(text | nil)", "set or clear the plugin's status-bar item",
	  api_status },
	{ "status_items", API_FAST, API_C, "() -> table", "every status item by plugin name",
	  api_status_items },
	{ "view", API_DEFERRED, API_C, "(name) -> view",
	  "the plugin's pane of that name (created empty on first use)", api_view },
	{ "view:clear", API_DEFERRED, API_C, "()", "remove every item", api_view_clear },
	{ "view:text", API_DEFERRED, API_C, "(line)", "append a line of text", api_view_text },
	{ "view:bar", API_DEFERRED, API_C, "(label, value [, max])",
	  "append a labelled bar (value clamped to [0, max], max defaults to 1)", api_view_bar },
	{ "view:heatmap", API_DEFERRED, API_C, "(label, matrix)",
	  "append a heatmap of a table of equal-length rows of numbers", api_view_heatmap },
	{ "view:items", API_FAST, API_C, "() -> list",
	  "the items as tables {kind, text, value, max, rows, cols, lo, hi}", api_view_items },
	{ "views", API_FAST, API_C, "() -> list",
	  "every plugin's views: {name, plugin, items} (read-only)", api_views },
	/* plugins */
	{ "plugins", API_FAST, API_C, "() -> list",
	  "loaded plugins: {name, path, enabled, why, errors, mem}", api_plugins },
	{ "plugin_log", API_FAST, API_C, "(name) -> list", "a plugin's log lines", api_plugin_log },
	{ "load_plugin", API_DEFERRED, API_C, "(path) -> ok [, err]", "load a plugin file",
	  api_load_plugin },
	{ "unload_plugin", API_DEFERRED, API_C, "(name) -> ok [, err]",
	  "unload a plugin and everything it owned", api_unload_plugin },
	/* output */
	{ "write", API_DEFERRED, API_C, "(path, text [, mode]) -> fullpath",
	  "write (mode \"w\") or append (\"a\") text to a file under the results directory",
	  api_write },
	{ "progress", API_FAST, API_C, "(done, total [, text])",
	  "draw a progress bar on stderr when it is a terminal (kvscope run)", api_progress },
	{ "json", API_FAST, API_LUA, "(value) -> string",
	  "encode nil, booleans, numbers, strings and tables (arrays or string keys) as JSON", NULL },
	{ "csv", API_FAST, API_LUA, "(list) -> string",
	  "one CSV line (RFC 4180 quoting) from a list of values", NULL },
	{ "table", API_FAST, API_LUA, "(header, rows) -> string",
	  "an aligned plain-text table from a header list and a list of rows", NULL },
	{ "getopt", API_FAST, API_LUA, "(script, args, options [, about])",
	  "parse \"--name value\" arguments: options lists {\"--name\", fn} and {\"--flag\", fn, "
	  "flag = true}, each with optional value = and help = strings; --help prints the usage, "
	  "the options and about, then exits 0; an unknown or incomplete argument exits 2 with one "
	  "line naming the script",
	  NULL },
	/* retention policies */
	{ "policies", API_FAST, API_C, "() -> list", "built-in and Lua retention policy names",
	  api_policies },
	{ "policy.register", API_DEFERRED, API_C, "(name, fn [, {base=, budget_ms=}])",
	  "a retention policy: fn(tokens, n_keep) returns one score per cached token; the cache keeps "
	  "pinned tokens and the n_keep highest; base (default window) gives positions and the "
	  "fallback",
	  api_policy_register },
	/* sessions */
	{ "store_sessions", API_DEFERRED, API_C, "() -> list",
	  "the saved sessions of the database (--db, else the default; read-only): {id, title, "
	  "model, policy, budget, n_turns, n_incomplete, n_kept, created, updated}",
	  api_store_sessions },
	{ "store_turns", API_DEFERRED, API_C, "(id_or_title) -> list",
	  "a saved session's exchanges, oldest first: {user, reply}", api_store_turns },
	{ "session", API_DEFERRED, API_C, "([opts]) -> session",
	  "open a session: opts model, policy, budget, ctx, system, max_tokens, temp, top_k, top_p, "
	  "min_p, seed, threads, capture (off|summary|full), token_stats",
	  api_session_open },
	{ "current", API_FAST, API_C, "() -> session | nil",
	  "the front end's session when it runs on the main thread, borrowed; nil under kvscope "
	  "run and in the workbench (use kvscope.send)",
	  api_current },
	{ "send", API_DEFERRED, API_C, "(cmd [, arg])",
	  "ask the workbench to queue cmd on its own session: chat TEXT, policy SPEC, budget N, "
	  "reset, pin POS, unpin POS, max_tokens N",
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
	{ "session:logprobs", API_DEFERRED, API_C, "(candidates) -> list",
	  "log-probability of each candidate's first token (ids or strings) as the next token",
	  api_s_logprobs },
	{ "session:top", API_DEFERRED, API_C, "([k]) -> list",
	  "the k most likely next tokens: {id, text, logprob}", api_s_top },
	{ "session:tokenize", API_FAST, API_C, "(text [, special]) -> ids", "token ids of text",
	  api_s_tokenize },
	{ "session:detokenize", API_FAST, API_C, "(ids) -> text", "the text of token ids",
	  api_s_detokenize },
	{ "session:set_policy", API_DEFERRED, API_C, "(spec)",
	  "a built-in policy spec (\"sirllm:lambda=0.9\") or a Lua policy's name", api_s_set_policy },
	{ "session:set_budget", API_DEFERRED, API_C, "(n)", "the KV budget in tokens",
	  api_s_set_budget },
	{ "session:policy", API_FAST, API_C, "() -> string", "the policy in use", api_s_policy },
	{ "session:set_length", API_DEFERRED, API_C, "(spec [, instruct])",
	  "a length target for the next replies: \"120w\", \"200t\", a Ruler level (\"150\", "
	  "\">800\") or \"off\"; instruct=false leaves the prompt-side sentence out",
	  api_s_set_length },
	{ "session:length", API_FAST, API_C, "() -> string | nil",
	  "the length target in use (\"150 words (130, 170]\"), nil when none", api_s_length },
	{ "session:stats", API_DEFERRED, API_C, "() -> table",
	  "KV statistics: n_cached, budget, n_sink, n_key, n_recent, n_pinned, n_evicted, "
	  "n_evictions, n_fallbacks, bytes, policy (and base, for a Lua policy), ...",
	  api_s_stats },
	{ "session:tokens", API_DEFERRED, API_C, "() -> tokens",
	  "the cached tokens (read-only, valid until the session changes)", api_s_tokens },
	{ "session:find", API_DEFERRED, API_C, "(position) -> index | nil",
	  "cache index of the token at an original position, nil when evicted", api_s_find },
	{ "session:pin", API_DEFERRED, API_C, "(position [, on])", "pin or unpin a cached token",
	  api_s_pin },
	{ "session:turns", API_DEFERRED, API_C, "() -> n", "number of exchanges", api_s_turns },
	{ "session:turn", API_DEFERRED, API_C, "(i) -> table",
	  "exchange i: index, user, reply, stop, first_pos, n_prompt, n_reply, prefill_ms, decode_ms",
	  api_s_turn },
	{ "session:reset", API_DEFERRED, API_C, "()", "forget the conversation", api_s_reset },
	{ "session:set_system", API_DEFERRED, API_C, "(text)",
	  "the system prompt of the next conversation", api_s_set_system },
	{ "session:info", API_FAST, API_C, "() -> table",
	  "name, n_layer, n_head, n_head_kv, n_ctx, n_vocab, backend, default_system (the "
	  "template's, when it has one)",
	  api_s_info },
	{ "session:close", API_DEFERRED, API_C, "()", "close a session the plugin opened",
	  api_s_close },
};
static const size_t api_table_len = KVS_ARRAY_LEN(api_table);

static const struct {
	const char *name, *args, *doc;
} api_events[SEV_COUNT] = {
	[SEV_TOKEN] = { "token", "(tok)",
	                "fast: each reply token; tok.id, text, position, pos, surprisal, entropy, role, "
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
	[SEV_KEY] = { "key", "(name)", "main loop: a key the front end did not use; return true to "
	                               "consume it" },
	[SEV_UNLOAD] = { "unload", "()", "main loop: the plugin is being unloaded" },
};

/* The metatable of a userdata type with methods from the table's "obj:" rows. */
static void api_methods(lua_State *L, const char *tname, const char *obj, lua_CFunction index,
                        lua_CFunction len, lua_CFunction gc)
{
	luaL_newmetatable(L, tname);
	if (index != NULL) {
		lua_pushcfunction(L, index);
		lua_setfield(L, -2, "__index");
	} else {
		lua_newtable(L);
		size_t ol = obj ? strlen(obj) : 0;
		for (size_t i = 0; obj && i < api_table_len; i++) {
			const struct api_fn *f = &api_table[i];
			if (strncmp(f->name, obj, ol) != 0 || f->name[ol] != ':')
				continue;
			lua_pushlightuserdata(L, (void *)f);
			lua_pushcclosure(L, api_call, 1);
			lua_setfield(L, -2, f->name + ol + 1);
		}
		lua_setfield(L, -2, "__index");
	}
	lua_pushcfunction(L, api_readonly);
	lua_setfield(L, -2, "__newindex");
	if (len != NULL) {
		lua_pushcfunction(L, len);
		lua_setfield(L, -2, "__len");
	}
	if (gc != NULL) {
		lua_pushcfunction(L, gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_pop(L, 1);
}

int api_open(lua_State *L)
{
	api_methods(L, API_TOKEN, NULL, api_token_index, NULL, NULL);
	api_methods(L, API_TOK, NULL, api_tok_index, NULL, NULL);
	api_methods(L, API_TOKS, NULL, api_toks_index, api_toks_len, NULL);
	api_methods(L, API_ATTN, NULL, api_attn_index, api_attn_len, NULL);
	api_methods(L, API_SESSION, "session", NULL, NULL, api_session_gc);
	api_methods(L, API_TIMER, "timer", NULL, NULL, NULL);
	api_methods(L, API_VIEW, "view", NULL, NULL, NULL);
	lua_newtable(L);
	int M = lua_gettop(L);
	for (size_t i = 0; i < api_table_len; i++) {
		const struct api_fn *f = &api_table[i];
		if (f->kind != API_C || strchr(f->name, ':') != NULL)
			continue;
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
	/* the Lua side must define exactly the rows marked API_LUA: it checks this list */
	lua_newtable(L);
	for (size_t i = 0; i < api_table_len; i++)
		if (api_table[i].kind == API_LUA) {
			lua_pushboolean(L, 1);
			lua_setfield(L, -2, api_table[i].name);
		}
	lua_setfield(L, M, "_lua_side");
	return 1;
}

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
	fprintf(fp, "Generated from the API table in src/script/api.c by `kvscope run --api-doc`; "
	            "do not edit.\nThe user guide is doc/lua.md.\n\n");
	fprintf(fp, "Tiers: **fast** functions may be called anywhere, fast hooks included; "
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
	for (size_t i = 0; i < api_table_len; i++) {
		const struct api_fn *f = &api_table[i];
		fprintf(fp, "| `%s%s", strchr(f->name, ':') ? "" : "kvscope.", f->name);
		api_doc_cell(fp, f->args);
		fprintf(fp, "` | %s | ", f->tier == API_FAST ? "fast" : "deferred");
		api_doc_cell(fp, f->doc);
		fprintf(fp, "%s |\n", f->kind == API_LUA ? " (lua/kvscope.lua)" : "");
	}
	fprintf(fp, "\nFields: `kvscope.args` (a script's arguments; `args[0]` is its path).\n");
	return KVS_OK;
}
