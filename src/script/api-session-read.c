/*
 * api-session-read.c: the session:* methods that read a session without
 * driving it: next-token log-probabilities and top candidates, tokenizing,
 * the policy, length target and statistics in use, the cached tokens, and
 * the exchanges so far. None of them changes the session, so the fast ones
 * may run inside hooks; the deferred ones read the KV cache, which a
 * driving call may be changing.
 */
#include "script/script-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The first token of a candidate: an id, or the first token of a string. */
static int32_t api_first_token(lua_State *L, struct gen *g, int idx)
{
	if (lua_type(L, idx) == LUA_TNUMBER)
		return (int32_t)script_int(L, idx, "logprobs: token id", 0,
		                           (lua_Integer)gen_n_vocab(g) - 1);
	size_t len;
	const char *s = lua_tolstring(L, idx, &len);
	if (s == NULL || len == 0)
		script_error(L, "expected a token id or a non-empty string");
	int32_t *ids = NULL;
	size_t n = 0, cap = 0;
	struct err e;
	if (vocab_tokenize(gen_vocab(g), s, len, false, false, &ids, &n, &cap, &e) != KVS_OK ||
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
	const float *lg = gen_logits(g);
	luaL_checktype(L, 2, LUA_TTABLE);
	if (lg == NULL)
		return script_error(L, "logprobs: nothing fed yet (feed or prompt first)");
	double lz = api_logz(lg, gen_n_vocab(g));
	lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
	lua_createtable(L, (int)n, 0);
	for (lua_Integer i = 1; i <= n; i++) {
		lua_rawgeti(L, 2, i);
		int32_t id = api_first_token(L, g, -1);
		lua_pop(L, 1);
		lua_pushnumber(L, (double)lg[id] - lz);
		lua_rawseti(L, -2, i);
	}
	return 1;
}

static int api_s_top(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	struct gen *g = session_gen(as->s);
	lua_Integer k = script_optint(L, 2, "top: k", 10, 1, 1000);
	uint32_t nv = gen_n_vocab(g);
	const float *lg = gen_logits(g);
	if (lg == NULL)
		return script_error(L, "top: nothing fed yet (feed or prompt first)");
	if ((uint32_t)k > nv)
		k = nv;
	double lz = api_logz(lg, nv);
	int32_t *best = xmallocarray((size_t)k, sizeof *best);
	lua_Integer have = 0;
	for (uint32_t i = 0; i < nv; i++) {
		float x = lg[i];
		if (have == k && x <= lg[best[k - 1]])
			continue;
		lua_Integer j = have < k ? have++ : k - 1;
		while (j > 0 && lg[best[j - 1]] < x) {
			best[j] = best[j - 1];
			j--;
		}
		best[j] = (int32_t)i;
	}
	lua_createtable(L, (int)k, 0);
	for (lua_Integer j = 0; j < have; j++) {
		char buf[256];
		size_t n = vocab_piece(gen_vocab(g), best[j], true, buf, sizeof buf);
		lua_createtable(L, 0, 3);
		api_setint(L, "id", best[j]);
		lua_pushlstring(L, buf, KVS_MIN(n, sizeof buf));
		lua_setfield(L, -2, "text");
		api_setnum(L, "logprob", (double)lg[best[j]] - lz);
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
	if (vocab_tokenize(gen_vocab(session_gen(as->s)), s, len, false, special, &ids, &n, &cap, &e) !=
	    KVS_OK) {
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
	const struct vocab *v = gen_vocab(session_gen(as->s));
	luaL_checktype(L, 2, LUA_TTABLE);
	luaL_Buffer b;
	luaL_buffinit(L, &b);
	lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
	for (lua_Integer i = 1; i <= n; i++) {
		lua_rawgeti(L, 2, i);
		lua_Integer id = script_int(L, -1, "detokenize: id", 0, (lua_Integer)vocab_n_tokens(v) - 1);
		lua_pop(L, 1);
		char buf[256];
		size_t k = vocab_piece(v, (int32_t)id, true, buf, sizeof buf);
		luaL_addlstring(&b, buf, KVS_MIN(k, sizeof buf));
	}
	luaL_pushresult(&b);
	return 1;
}

static int api_s_policy(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	char buf[256];
	if (as->policy != NULL)
		lua_pushstring(L, as->policy->name);
	else
		lua_pushstring(
		        L, kv_policy_format(kv_cache_policy(gen_kv(session_gen(as->s))), buf, sizeof buf));
	return 1;
}

/* k = v in the table on top when v is a number (NaN: left nil). */
static void api_setfin(lua_State *L, const char *k, double v)
{
	if (!isnan(v))
		api_setnum(L, k, v);
}

/* The sparsity figures (kv_sparse_stats) as a table: what the workbench's
 * sparsity pane shows, nil where not measured yet. */
static void api_push_sparsity(lua_State *L, const struct kv_sparse_stats *sp)
{
	lua_createtable(L, 0, 14);
	api_setint(L, "step", (lua_Integer)sp->step);
	api_setint(L, "bytes_read", (lua_Integer)sp->bytes_read);
	api_setint(L, "bytes_dense", (lua_Integer)sp->bytes_dense);
	api_setfin(L, "overlap", sp->overlap);
	api_setint(L, "shadow_step", (lua_Integer)sp->shadow_step);
	api_setint(L, "shadow_every", sp->shadow_every);
	api_setfin(L, "mass_mean", sp->mass_mean);
	api_setfin(L, "mass_min", sp->mass_min);
	api_setfin(L, "mass_p10", sp->mass_p10);
	api_setfin(L, "tight", sp->tight);
	api_setfin(L, "attn_ms", sp->attn_ms);
	api_setfin(L, "select_ms", sp->select_ms);
	api_setfin(L, "shadow_ms", sp->shadow_ms);
	lua_setfield(L, -2, "sparsity");
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
	api_setint(L, "n_recalled", st.n_recalled);
	api_setint(L, "n_seen", (lua_Integer)st.n_seen);
	api_setint(L, "n_evicted", (lua_Integer)st.n_evicted);
	api_setint(L, "n_evictions", st.n_evictions);
	api_setint(L, "n_fallbacks", st.n_fallbacks);
	api_setint(L, "bytes", (lua_Integer)st.bytes);
	api_setint(L, "bytes_peak", (lua_Integer)st.bytes_peak);
	api_setint(L, "bytes_entries", (lua_Integer)st.bytes_entries);
	api_setint(L, "bytes_allocated", (lua_Integer)st.bytes_allocated);
	api_setint(L, "bytes_per_token", (lua_Integer)st.bytes_per_token);
	api_setint(L, "keys_read", (lua_Integer)st.keys_read);
	api_setint(L, "keys_dense", (lua_Integer)st.keys_dense);
	api_setstr(L, "sparse", engine_sparse_format(kv_cache_sparse(kv), buf, sizeof buf));
	if (st.sp.step > 0)
		api_push_sparsity(L, &st.sp);
	api_setstr(L, "policy", kv_policy_format(kv_cache_policy(kv), buf, sizeof buf));
}

static int api_s_stats(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	api_push_stats(L, gen_kv(session_gen(as->s)));
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
	api_push_toks(L, kv_cache_toks(gen_kv(g)), kv_cache_n(gen_kv(g)), gen_vocab(g));
	lua_pushvalue(L, 1);
	lua_setiuservalue(L, -2, 1);
	return 1;
}

static int api_s_find(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	lua_Integer pos = script_int(L, 2, "find: position", INT32_MIN, INT32_MAX);
	int32_t i = kv_cache_find(gen_kv(session_gen(as->s)), (int32_t)pos);
	if (i < 0)
		lua_pushnil(L);
	else
		lua_pushinteger(L, i + 1);
	return 1;
}

/* session:heads(position): which (layer, KV head) pairs keep the token. */
static int api_s_heads(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	lua_Integer pos = script_int(L, 2, "heads: position", INT32_MIN, INT32_MAX);
	struct gen *g = session_gen(as->s);
	int32_t i = kv_cache_find(gen_kv(g), (int32_t)pos);
	if (i < 0) {
		lua_pushnil(L);
		return 1;
	}
	const struct hparams *hp = &gen_model(g)->hp;
	uint8_t *m = xmallocarray((size_t)hp->n_layer * hp->n_head_kv, 1); /* (n_layer, n_head_kv) */
	uint32_t kept = kv_cache_token_heads(gen_kv(g), (uint32_t)i, m);
	/* m[layer][head], both 1-based: true where that pair keeps the token */
	lua_createtable(L, (int)hp->n_layer, 0);
	for (uint32_t l = 0; l < hp->n_layer; l++) {
		lua_createtable(L, (int)hp->n_head_kv, 0);
		for (uint32_t h = 0; h < hp->n_head_kv; h++) {
			lua_pushboolean(L, m[(size_t)l * hp->n_head_kv + h]);
			lua_rawseti(L, -2, (lua_Integer)h + 1);
		}
		lua_rawseti(L, -2, (lua_Integer)l + 1);
	}
	free(m);
	lua_pushinteger(L, kept);
	return 2;
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
	lua_Integer i = script_int(L, 2, "turn: index", LUA_MININTEGER, LUA_MAXINTEGER);
	const struct session_turn *t = NULL;
	if (i >= 1 && i <= (lua_Integer)session_n_turns(as->s))
		t = session_turn_at(as->s, (uint32_t)(i - 1));
	if (t == NULL)
		lua_pushnil(L);
	else
		api_push_turn(L, t);
	return 1;
}

static int api_s_length(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	const struct len_target *t = &gen_turn(session_gen(as->s))->len;
	char buf[128];
	if (t->unit == LEN_NONE)
		lua_pushnil(L);
	else
		lua_pushstring(L, len_target_format(t, buf, sizeof buf));
	return 1;
}

static int api_s_info(lua_State *L)
{
	struct api_session *as = api_checksession(L, 1);
	return api_push_model(L, session_gen(as->s));
}

static const struct api_fn api_session_read_fns[] = {
	{ "session:logprobs", API_DEFERRED, API_C, "(candidates) -> list",
	  "log-probability of each candidate's first token (ids or strings) as the next token",
	  api_s_logprobs },
	{ "session:top", API_DEFERRED, API_C, "([k]) -> list",
	  "the k most likely next tokens: {id, text, logprob}", api_s_top },
	{ "session:tokenize", API_FAST, API_C, "(text [, special]) -> ids", "token ids of text",
	  api_s_tokenize },
	{ "session:detokenize", API_FAST, API_C, "(ids) -> text", "the text of token ids",
	  api_s_detokenize },
	{ "session:policy", API_FAST, API_C, "() -> string", "the policy in use", api_s_policy },
	{ "session:stats", API_DEFERRED, API_C, "() -> table",
	  "KV statistics: n_cached, budget, n_sink, n_key, n_recent, n_pinned, n_recalled, n_evicted, "
	  "n_evictions, n_fallbacks, bytes (held), bytes_entries (kept (token, layer, KV head) "
	  "entries), bytes_allocated, keys_read / keys_dense (the last decode step's "
	  "attention), sparse, sparsity (with a sparse mode and capture on: bytes_read, "
	  "bytes_dense, overlap, mass_mean, mass_min, mass_p10, tight, shadow_step, attn_ms, "
	  "select_ms, shadow_ms), policy (and base, for a Lua policy), ...",
	  api_s_stats },
	{ "session:tokens", API_DEFERRED, API_C, "() -> tokens",
	  "the cached tokens (read-only, valid until the session changes)", api_s_tokens },
	{ "session:find", API_DEFERRED, API_C, "(position) -> index | nil",
	  "cache index of the token at an original position, nil when evicted", api_s_find },
	{ "session:heads", API_DEFERRED, API_C, "(position) -> map, n | nil",
	  "which (layer, KV head) pairs keep the token at an original position: map[layer][head] "
	  "(1-based) is true where that pair keeps it, n how many do; with one keep-set every pair "
	  "does; nil when evicted",
	  api_s_heads },
	{ "session:turns", API_DEFERRED, API_C, "() -> n", "number of exchanges", api_s_turns },
	{ "session:turn", API_DEFERRED, API_C, "(i) -> table",
	  "exchange i: index, user, reply, stop, first_pos, n_prompt, n_reply, prefill_ms, decode_ms",
	  api_s_turn },
	{ "session:length", API_FAST, API_C, "() -> string | nil",
	  "the length target in use (\"150 words (130, 170]\"), nil when none", api_s_length },
	{ "session:info", API_FAST, API_C, "() -> table",
	  "name, n_layer, n_head, n_head_kv, n_ctx, n_vocab, backend, default_system (the "
	  "template's, when it has one)",
	  api_s_info },
};

const struct api_lib api_session_read_lib = API_LIB_FNS(api_session_read_fns);
