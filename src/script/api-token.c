/*
 * api-token.c: event data handed to Lua: a token, a list of cached tokens,
 * one cached token and the attention of a step, as read-only userdata;
 * model information and finished turns, as fresh tables.
 *
 * Event data is lent, not copied: the userdata point into the engine's own
 * memory and are stamped with the state's epoch; the runtime bumps the
 * epoch when the data may change (the event is over, the session fed more
 * tokens, a policy call returned), and a stale handle raises an error
 * instead of reading freed memory. The token event reuses one userdata per
 * state, and so does the attention event, so a hook that only reads fields
 * allocates nothing. The types have no rows of their own: their metatables
 * answer fields through __index (api_token_types).
 */
#include "script/script-int.h"

#include <math.h>
#include <string.h>

#define API_TOKEN "kvscope.token"
#define API_TOKS "kvscope.toks"
#define API_TOK "kvscope.tok"
#define API_ATTN "kvscope.attn"

const char *const api_role_names[] = { "none", "system", "user", "assistant", NULL };

/* A handle's data is still valid (the event or the cache state it lent). */
static void api_check_epoch(lua_State *L, uint64_t epoch, const char *what)
{
	if (epoch != script_plugin_of(L)->epoch)
		script_error(L,
		             "%s is no longer valid: event data is lent for the duration of the call "
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

/* ------------------------------------------------------------- token data */

struct api_tokref {
	const struct kv_tok *t; /* may be NULL (no cache entry) */
	const char *text;       /* the event's text (token events), or NULL */
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
	else if (strcmp(k, "recalled") == 0)
		lua_pushboolean(L, (t->flags & KV_FLAG_RECALLED) != 0);
	else if (strcmp(k, "eog") == 0)
		lua_pushboolean(L, r->eog);
	else
		lua_pushnil(L);
	return 1;
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
	lua_Integer i = script_int(L, 2, "token list index", LUA_MININTEGER, LUA_MAXINTEGER);
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

/* -------------------------------------------------------------- attention */

struct api_attn {
	const float *w;                      /* (n_layer, n_head, n_cached) or NULL */
	const struct kv_head_summary *heads; /* (n_layer, n_head) */
	const struct kv_tok *cols;           /* the cached tokens (columns), or NULL */
	uint32_t n_layer, n_head, n_cached;
	int level; /* 0 all, 1 one layer, 2 one row */
	uint32_t layer, head;
	uint64_t step;
	float next_entropy;
	int32_t query_pos; /* original position of the query token, -1 unknown */
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
		script_error(L,
		             "attention rows were not captured (open the session with capture = \"full\")");
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
	lua_Integer l = script_int(L, 2, "attention:get: layer", 1, a->n_layer);
	lua_Integer h = script_int(L, 3, "attention:get: head", 1, a->n_head);
	lua_Integer i = script_int(L, 4, "attention:get: column", 1, a->n_cached);
	const float *row = api_attn_row(L, a, l, h);
	lua_pushnumber(L, row[i - 1]);
	return 1;
}

/* a:summary(layer, head): entropy, sink mass, top-k mass, k90. */
static int api_attn_summary(lua_State *L)
{
	struct api_attn *a = luaL_checkudata(L, 1, API_ATTN);
	api_check_epoch(L, a->epoch, "the attention");
	lua_Integer l = script_int(L, 2, "attention:summary: layer", 1, a->n_layer);
	lua_Integer h = script_int(L, 3, "attention:summary: head", 1, a->n_head);
	if (a->heads == NULL)
		return script_error(L, "attention summary: no head summaries in this event");
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
	lua_Integer i = script_int(L, 2, "attention:position: column", LUA_MININTEGER, LUA_MAXINTEGER);
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
			{ "get", api_attn_get },
			{ "summary", api_attn_summary },
			{ "position", api_attn_position },
			{ NULL, NULL },
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
	lua_Integer i = script_int(L, 2, "attention index", LUA_MININTEGER, LUA_MAXINTEGER);
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

/* ------------------------------------------------------------------ turns */

int api_push_model(lua_State *L, const struct gen *g)
{
	const struct model *m = gen_model(g);
	struct err e;
	const struct chat_template *chat = gen_chat(g, &e);

	lua_createtable(L, 0, 8);
	api_setstr(L, "name", m->name);
	api_setint(L, "n_layer", m->hp.n_layer);
	api_setint(L, "n_head", m->hp.n_head);
	api_setint(L, "n_head_kv", m->hp.n_head_kv);
	api_setint(L, "n_ctx", gen_n_ctx(g));
	api_setint(L, "n_vocab", gen_n_vocab(g));
	api_setstr(L, "backend", engine_backend_name(gen_engine(g)));
	if (chat != NULL && chat->default_system != NULL)
		api_setstr(L, "default_system", chat->default_system);
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

static const struct api_type api_token_types[] = {
	{ API_TOKEN, NULL, api_token_index, NULL, NULL },
	{ API_TOK, NULL, api_tok_index, NULL, NULL },
	{ API_TOKS, NULL, api_toks_index, api_toks_len, NULL },
	{ API_ATTN, NULL, api_attn_index, api_attn_len, NULL },
};

const struct api_lib api_token_lib = { NULL, 0, api_token_types, KVS_ARRAY_LEN(api_token_types) };
