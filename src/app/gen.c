/*
 * gen.c: a generation context over one engine.
 *
 * Every token goes through the KV cache (engine/kv_cache.h), which chunks
 * prompts, keeps per-token memory and evicts as its retention policy says;
 * with nothing evicted it places token p in slot p at position p, as a
 * linear context would. A turn begins with gen_begin_turn (eviction between
 * turns, memory decay). A reply samples from the last logits, feeds the
 * token back, and streams text through a detokeniser that never splits a
 * UTF-8 sequence. The end-of-turn token is fed too, so the cache holds the
 * closed turn, ready for the next.
 *
 * The turn options (lenctl.c) add a length target, stop strings and a
 * cancel flag (g->cancel). With a target the controller biases a copy of the logits;
 * without one the sampler reads the model's logits untouched, so a reply
 * is the same token for token as with no controller at all. Either way the
 * reply's surprisal is taken from the model's own logits.
 */
#include "app/app-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int gen_run_linear(struct engine *eng, const int32_t *toks, uint32_t start, uint32_t m,
                   enum engine_logits logits, struct engine_out *out, struct err *e)
{
	int32_t *pos = xmallocarray(m ? m : 1, sizeof *pos);
	uint32_t *slot = xmallocarray(m ? m : 1, sizeof *slot);
	struct engine_batch b = { 0 };
	int rc;

	for (uint32_t i = 0; i < m; i++) {
		pos[i] = (int32_t)(start + i);
		slot[i] = start + i;
	}
	b.n_tokens = m;
	b.tokens = toks;
	b.pos = pos;
	b.slot = slot;
	b.n_visible = start + m;
	b.logits = logits;
	rc = engine_forward(eng, &b, out, e);
	free(pos);
	free(slot);
	return rc;
}

void gen_config_default(struct gen_config *c)
{
	memset(c, 0, sizeof *c);
	engine_config_default(&c->engine);
	sampler_params_default(&c->sampler);
	kv_config_default(&c->kv);
	c->n_batch = 512;
}

int gen_open(struct gen **out, const struct gen_config *c, struct err *e)
{
	struct gen *g;
	double t0 = clock_now_ms();
	int rc;

	*out = NULL;
	rc = sampler_params_check(&c->sampler, e);
	if (rc != KVS_OK)
		return rc;
	g = xcalloc(1, sizeof *g);
	rc = model_load(&g->model, c->model_path, e);
	if (rc != KVS_OK) {
		free(g);
		return rc;
	}
	struct engine_config ec = c->engine;
	if (ec.n_ctx == 0 && c->kv.budget > 0) /* the budget and the policy's scratch */
		ec.n_ctx = c->kv.budget + kv_policy_scratch(&c->kv.policy, c->kv.budget);
	if (ec.n_rows == 0 && c->kv.budget > 0) /* store=heads: rows of its own per head */
		ec.n_rows = kv_policy_rows(&c->kv.policy, c->kv.budget);
	rc = engine_create(&g->engine, g->model, &ec, e);
	if (rc != KVS_OK) {
		model_free(g->model);
		free(g);
		return rc;
	}
	struct kv_config kc = c->kv;
	kc.n_batch = c->n_batch ? c->n_batch : 512;
	rc = kv_cache_create(&g->kv, g->engine, &kc, e);
	if (rc != KVS_OK) {
		engine_free(g->engine);
		model_free(g->model);
		free(g);
		return rc;
	}
	g->load_ms = clock_now_ms() - t0;
	g->sampler = sampler_create(&c->sampler, g->model->hp.n_vocab);
	g->has_chat = chat_template_init(&g->chat, g->model->chat_template, c->chat_template,
	                                 g->model->vocab, &g->chat_err) == KVS_OK;
	if (g->has_chat && g->chat.note[0] != '\0')
		log_warn("%s", g->chat.note);
	g->chat.no_think = c->no_think;
	if (!g->has_chat && c->chat_template != NULL) {
		/* a layout asked for by name that cannot be had is the user's error */
		rc = err_set(e, g->chat_err.code, "%s", g->chat_err.msg);
		gen_close(g);
		return rc;
	}
	g->n_batch = c->n_batch ? c->n_batch : 512;
	gen_turn_opts_default(&g->turn);
	*out = g;
	return KVS_OK;
}

int gen_open_shadow(struct gen **out, struct gen *base, const struct kv_config *kv,
                    const struct mt19937 *rng, struct err *e)
{
	struct gen *g;
	int rc;

	*out = NULL;
	/* the budget and the policy's scratch (a vote's window, a re-read, the
	 * per-head keep-sets' union) */
	uint32_t n_ctx = kv->budget ? kv->budget + kv_policy_scratch(&kv->policy, kv->budget) : 0;
	g = xcalloc(1, sizeof *g);
	g->shadow = true;
	g->model = base->model;
	rc = engine_create_shared(&g->engine, base->engine, n_ctx, e);
	if (rc != KVS_OK) {
		free(g);
		return rc;
	}
	struct kv_config kc = *kv;
	kc.n_batch = base->n_batch;
	rc = kv_cache_create(&g->kv, g->engine, &kc, e);
	if (rc != KVS_OK) {
		engine_free(g->engine);
		free(g);
		return rc;
	}
	g->sampler = sampler_replica(base->sampler, rng);
	g->has_chat = base->has_chat &&
	        chat_template_init(&g->chat, g->model->chat_template, base->chat.name, g->model->vocab,
	                           &g->chat_err) == KVS_OK;
	g->chat.no_think = base->chat.no_think;
	g->n_batch = base->n_batch;
	g->turn = base->turn;
	*out = g;
	return KVS_OK;
}

void gen_close(struct gen *g)
{
	if (g == NULL)
		return;
	chat_template_free(&g->chat);
	len_vocab_free(&g->lv);
	free(g->biased);
	free(g->reply.ids);
	free(g->reply.surprisal);
	sampler_free(g->sampler);
	kv_cache_free(g->kv);
	engine_free(g->engine);
	if (!g->shadow)
		model_free(g->model);
	free(g);
}

uint32_t gen_n_ctx(const struct gen *g)
{
	return engine_n_ctx(g->engine);
}

uint32_t gen_n_vocab(const struct gen *g)
{
	return g->model->hp.n_vocab;
}

uint32_t gen_n_batch(const struct gen *g)
{
	return g->n_batch;
}

const struct model *gen_model(const struct gen *g)
{
	return g->model;
}

const struct vocab *gen_vocab(const struct gen *g)
{
	return g->model->vocab;
}

struct engine *gen_engine(const struct gen *g)
{
	return g->engine;
}

struct sampler *gen_sampler(const struct gen *g)
{
	return g->sampler;
}

struct kv_cache *gen_kv(const struct gen *g)
{
	return g->kv;
}

void gen_kv_changed(struct gen *g)
{
	g->n_past = kv_cache_n(g->kv);
}

const struct chat_template *gen_chat(const struct gen *g, struct err *e)
{
	if (!g->has_chat) {
		err_set(e, g->chat_err.code, "%s", g->chat_err.msg);
		return NULL;
	}
	return &g->chat;
}

const float *gen_logits(const struct gen *g)
{
	return g->have_logits ? g->last_logits : NULL;
}

const struct gen_reply_info *gen_last_reply(const struct gen *g)
{
	return &g->reply;
}

const struct gen_turn_opts *gen_turn(const struct gen *g)
{
	return &g->turn;
}

void gen_timings(const struct gen *g, struct gen_timing *t)
{
	t->load_ms = g->load_ms;
	t->prefill_ms = g->prefill_ms;
	t->decode_ms = g->decode_ms;
	t->n_prefilled = g->n_prefilled;
	t->n_decoded = g->n_decoded;
}

void gen_reset(struct gen *g)
{
	kv_cache_clear(g->kv);
	sampler_reset(g->sampler);
	g->n_past = 0;
	g->last_logits = NULL;
	g->have_logits = false;
}

int gen_back(struct gen *g, const struct kv_snap *s, struct err *e)
{
	int rc = kv_cache_back(g->kv, s, e);
	if (rc != KVS_OK)
		return rc;
	sampler_reset(g->sampler);
	g->n_past = kv_cache_n(g->kv);
	g->last_logits = kv_cache_logits(g->kv);
	g->have_logits = g->last_logits != NULL;
	return KVS_OK;
}

int gen_feed(struct gen *g, const int32_t *ids, size_t n, struct err *e)
{
	double t0 = clock_now_ms();
	int rc;

	if (n == 0)
		return KVS_OK;
	if (n > UINT32_MAX / 2)
		return err_set(e, KVS_ERANGE, "%zu tokens in one feed: expected fewer than %u", n,
		               UINT32_MAX / 2);
	rc = kv_cache_feed(g->kv, ids, (uint32_t)n, e);
	g->n_past = kv_cache_n(g->kv);
	g->last_logits = kv_cache_logits(g->kv);
	g->have_logits = g->last_logits != NULL;
	if (rc != KVS_OK)
		return rc;
	if (n > 1) {
		g->prefill_ms += clock_now_ms() - t0;
		g->n_prefilled += n;
	} else {
		g->decode_ms += clock_now_ms() - t0;
		g->n_decoded += n;
	}
	return KVS_OK;
}

int gen_begin_turn(struct gen *g, enum kv_role role, size_t m, struct err *e)
{
	int rc = kv_cache_begin_turn(g->kv, role, (uint32_t)KVS_MIN(m, (size_t)UINT32_MAX), e);
	g->n_past = kv_cache_n(g->kv);
	return rc;
}

void gen_set_role(struct gen *g, enum kv_role role)
{
	kv_cache_set_role(g->kv, role);
}

int gen_feed_prompt(struct gen *g, const struct chat_prompt *p, enum kv_role role, struct err *e)
{
	int32_t *ids = NULL;
	size_t n = 0;
	int rc = gen_tokenize_prompt(g, p, &ids, &n, e);

	kv_cache_set_role(g->kv, role);
	if (rc == KVS_OK)
		rc = gen_feed(g, ids, n, e);
	free(ids);
	return rc;
}

int32_t gen_sample(struct gen *g)
{
	return sampler_sample(g->sampler, g->last_logits);
}

int gen_tokenize_prompt(struct gen *g, const struct chat_prompt *p, int32_t **ids, size_t *n,
                        struct err *e)
{
	size_t cap = 0;

	*ids = NULL;
	*n = 0;
	return chat_tokenize(g->model->vocab, p, ids, n, &cap, e);
}

const char *gen_stop_name(enum gen_stop s)
{
	static const char *const names[] = { "eos",         "length-target", "forced", "max-tokens",
		                                 "stop-string", "user",          "context" };
	return (unsigned)s < KVS_ARRAY_LEN(names) ? names[s] : "?";
}

bool gen_stop_ended(enum gen_stop s)
{
	return s == GEN_STOP_EOS || s == GEN_STOP_LENGTH || s == GEN_STOP_FORCED;
}

void gen_set_turn(struct gen *g, const struct gen_turn_opts *o)
{
	if (o == NULL)
		gen_turn_opts_default(&g->turn);
	else
		g->turn = *o;
}

void gen_set_length_target(struct gen *g, const struct len_target *t)
{
	if (t == NULL) {
		memset(&g->turn.len, 0, sizeof g->turn.len);
		g->turn.len.level = -1;
		g->turn.len.instruct = true;
	} else {
		g->turn.len = *t;
	}
}

bool gen_cancel_ask(atomic_int *flag)
{
	int st = atomic_load(flag);
	while (st != GEN_CANCEL_SEALED)
		if (atomic_compare_exchange_weak(flag, &st, GEN_CANCEL_ASKED))
			return true;
	return false;
}

void gen_cancel_open(atomic_int *flag)
{
	int sealed = GEN_CANCEL_SEALED;
	atomic_compare_exchange_strong(flag, &sealed, GEN_CANCEL_NONE);
}

void gen_set_cancel(struct gen *g, atomic_int *flag)
{
	g->cancel = flag;
}

void gen_text_collect(const char *text, size_t len, void *ud)
{
	struct gen_text *b = ud;
	if (b->n + len + 1 > b->cap) {
		b->cap = KVS_MAX(b->cap * 2, b->n + len + 1);
		b->s = xrealloc(b->s, b->cap);
	}
	memcpy(b->s + b->n, text, len);
	b->n += len;
	b->s[b->n] = '\0';
}

/* -ln softmax(logits)[id]: the model's surprisal at its own token. */
static double gen_surprisal(const float *logits, uint32_t n, int32_t id)
{
	float s;
	engine_row_stats(logits, n, id, &s, NULL);
	return s;
}

/* Record one sampled token in g->reply. */
static void gen_record(struct gen *g, int32_t id, double s)
{
	struct gen_reply_info *r = &g->reply;
	if (r->n_tokens >= r->cap) {
		r->cap = r->cap ? r->cap * 2 : 256;
		r->ids = xreallocarray(r->ids, r->cap, sizeof *r->ids);
		r->surprisal = xreallocarray(r->surprisal, r->cap, sizeof *r->surprisal);
	}
	r->ids[r->n_tokens] = id;
	r->surprisal[r->n_tokens] = (float)s;
	r->n_tokens++;
	r->surprisal_sum += s;
}

int gen_reply(struct gen *g, uint32_t max_tokens, gen_text_fn fn, void *ud, enum gen_stop *stop,
              uint32_t *n_out, struct err *e)
{
	struct detok d;
	struct turnctl tc;
	char *buf = NULL;
	const char *emit;
	size_t n = 0, cap = 0, n_emit;
	uint32_t nv = gen_n_vocab(g);
	int rc = KVS_OK, why = -1;

	*stop = GEN_STOP_MAX_TOKENS;
	*n_out = 0;
	g->reply.n_tokens = g->reply.n_words = 0;
	g->reply.surprisal_sum = 0;
	g->reply.stop = GEN_STOP_MAX_TOKENS;
	g->reply.ended = false;
	if (!g->have_logits)
		return err_set(e, KVS_ESTATE, "nothing to continue: feed a prompt first");
	if (g->turn.len.unit != LEN_NONE && g->lv.cls == NULL) {
		len_vocab_build(&g->lv, g->model->vocab);
		g->biased = xmallocarray(nv, sizeof *g->biased);
	}
	turnctl_begin(&tc, &g->turn, &g->lv, max_tokens);
	detok_init(&d, g->model->vocab, false);
	kv_cache_set_role(g->kv, KV_ROLE_ASSISTANT);
	tc.cancel = g->cancel;
	if (g->cancel != NULL)
		gen_cancel_open(g->cancel);
	while ((why = turnctl_precheck(&tc)) < 0) {
		const float *lg = g->last_logits;
		if (turnctl_active(&tc)) {
			memcpy(g->biased, lg, nv * sizeof *lg);
			turnctl_bias(&tc, g->biased);
			lg = g->biased;
		}
		int32_t id = sampler_sample(g->sampler, lg);
		bool eog = vocab_is_eog(g->model->vocab, id);

		gen_record(g, id, gen_surprisal(g->last_logits, nv, id));
		sampler_accept(g->sampler, id);
		(*n_out)++;
		if (!kv_policy_evicts(kv_cache_policy(g->kv)) && g->n_past >= kv_cache_budget(g->kv)) {
			why = GEN_STOP_CONTEXT;
			break;
		}
		if (eog || *n_out >= max_tokens)
			kv_cache_capture_next(g->kv); /* the reply's last step */
		rc = gen_feed(g, &id, 1, e);
		if (rc != KVS_OK)
			break;
		n = 0;
		if (!eog)
			detok_push(&d, id, &buf, &n, &cap);
		if (g->on_token != NULL) {
			uint32_t nc = kv_cache_n(g->kv);
			struct gen_token t = { id, nc ? &kv_cache_toks(g->kv)[nc - 1] : NULL, buf ? buf : "", n,
				                   eog };
			g->on_token(&t, g->on_token_ud);
		}
		why = turnctl_token(&tc, id, eog, buf, n, &emit, &n_emit);
		if (n_emit > 0 && fn != NULL)
			fn(emit, n_emit, ud);
		if (why >= 0)
			break;
	}
	if (why != GEN_STOP_STRING) {
		n = 0;
		detok_flush(&d, &buf, &n, &cap);
		if (n > 0)
			wordcount_feed(&tc.wc, buf, n);
		turnctl_flush(&tc, &emit, &n_emit);
		if (n_emit > 0 && fn != NULL)
			fn(emit, n_emit, ud);
		if (n > 0 && fn != NULL)
			fn(buf, n, ud);
	}
	g->reply.ended = why >= 0 && gen_stop_ended((enum gen_stop)why);
	/* seal: a cancel asked after the last token's check was told it
	 * reached this reply, so the reply reports it (its text is whole);
	 * a full cache's stop stays, as the session restarts on it */
	if (g->cancel != NULL && atomic_exchange(g->cancel, GEN_CANCEL_SEALED) == GEN_CANCEL_ASKED &&
	    rc == KVS_OK && why != GEN_STOP_CONTEXT)
		why = GEN_STOP_USER;
	if (why >= 0)
		*stop = (enum gen_stop)why;
	g->reply.stop = (int)*stop;
	g->reply.n_words = tc.wc.words;
	turnctl_end(&tc);
	free(buf);
	return rc;
}
