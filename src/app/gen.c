/*
 * gen.c: a generation context over one engine.
 *
 * The cache is used linearly here: the token at position p lives in slot p,
 * and every query sees slots 0..p (visible = the prefix). Prompts go in
 * chunks of n_batch tokens; only the last chunk asks for logits. A reply
 * samples from the last logits, feeds the token back, and streams text
 * through a detokeniser that never splits a UTF-8 sequence. The end-of-turn
 * token is fed too, so the cache holds the closed turn, ready for the next.
 */
#include "app/app.h"

#include <stdlib.h>
#include <string.h>

void gen_config_default(struct gen_config *c)
{
	memset(c, 0, sizeof *c);
	engine_config_default(&c->engine);
	sampler_params_default(&c->sampler);
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
	rc = engine_create(&g->engine, g->model, &c->engine, e);
	if (rc != KVS_OK) {
		model_free(g->model);
		free(g);
		return rc;
	}
	g->load_ms = clock_now_ms() - t0;
	g->sampler = sampler_create(&c->sampler, g->model->hp.n_vocab);
	g->has_chat = chat_template_init(&g->chat, g->model->chat_template, g->model->vocab,
	                                 &g->chat_err) == KVS_OK;
	g->n_batch = c->n_batch ? c->n_batch : 512;
	g->hist = xmallocarray(engine_n_ctx(g->engine), sizeof *g->hist);
	g->last_logits = xmallocarray(g->model->hp.n_vocab, sizeof *g->last_logits);
	*out = g;
	return KVS_OK;
}

void gen_close(struct gen *g)
{
	if (g == NULL)
		return;
	chat_template_free(&g->chat);
	sampler_free(g->sampler);
	engine_free(g->engine);
	model_free(g->model);
	free(g->hist);
	free(g->last_logits);
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

void gen_reset(struct gen *g)
{
	engine_kv_clear(g->engine);
	sampler_reset(g->sampler);
	g->n_past = 0;
	g->have_logits = false;
}

int gen_feed(struct gen *g, const int32_t *ids, size_t n, struct err *e)
{
	uint32_t n_ctx = engine_n_ctx(g->engine);
	int32_t *pos;
	uint32_t *slot;
	size_t done = 0;
	int rc = KVS_OK;

	if (n == 0)
		return KVS_OK;
	if (n > n_ctx - g->n_past)
		return err_set(e, KVS_ERANGE,
		               "context overflow: %u tokens cached + %zu new exceeds the context of %u "
		               "tokens (raise --ctx)",
		               g->n_past, n, n_ctx);
	for (size_t i = 0; i < n; i++) {
		if (ids[i] < 0 || (uint32_t)ids[i] >= g->model->hp.n_vocab)
			return err_set(e, KVS_EARG, "token id %d at index %zu is outside the vocabulary (0..%u)",
			               ids[i], i, g->model->hp.n_vocab - 1);
	}
	pos = xmallocarray(g->n_batch, sizeof *pos);
	slot = xmallocarray(g->n_batch, sizeof *slot);
	while (done < n) {
		uint32_t m = (uint32_t)KVS_MIN((size_t)g->n_batch, n - done);
		struct engine_batch b = { 0 };
		struct engine_out o;
		double t0 = clock_now_ms();

		for (uint32_t i = 0; i < m; i++) {
			pos[i] = (int32_t)(g->n_past + i);
			slot[i] = g->n_past + i;
		}
		b.n_tokens = m;
		b.tokens = ids + done;
		b.pos = pos;
		b.slot = slot;
		b.n_visible = g->n_past + m;
		b.visible = NULL;
		b.logits = done + m == n ? ENGINE_LOGITS_LAST : ENGINE_LOGITS_NONE;
		rc = engine_forward(g->engine, &b, &o, e);
		if (rc != KVS_OK)
			break;
		memcpy(g->hist + g->n_past, ids + done, m * sizeof *ids);
		g->n_past += m;
		done += m;
		if (b.logits == ENGINE_LOGITS_LAST) {
			memcpy(g->last_logits, o.logits, g->model->hp.n_vocab * sizeof(float));
			g->have_logits = true;
		}
		if (m > 1) {
			g->prefill_ms += clock_now_ms() - t0;
			g->n_prefilled += m;
		} else {
			g->decode_ms += clock_now_ms() - t0;
			g->n_decoded += m;
		}
	}
	free(pos);
	free(slot);
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
	static const char *const names[] = { "eos", "max-tokens", "context", "user" };
	return (unsigned)s < KVS_ARRAY_LEN(names) ? names[s] : "?";
}

int gen_reply(struct gen *g, uint32_t max_tokens, gen_text_fn fn, void *ud, enum gen_stop *stop,
              uint32_t *n_out, struct err *e)
{
	struct detok d;
	char *buf = NULL;
	size_t n = 0, cap = 0;
	int rc = KVS_OK;

	*stop = GEN_STOP_MAX_TOKENS;
	*n_out = 0;
	if (!g->have_logits)
		return err_set(e, KVS_ESTATE, "nothing to continue: feed a prompt first");
	detok_init(&d, g->model->vocab, false);
	while (*n_out < max_tokens) {
		int32_t id = gen_sample(g);
		bool eog = vocab_is_eog(g->model->vocab, id);

		sampler_accept(g->sampler, id);
		(*n_out)++;
		if (g->n_past >= gen_n_ctx(g)) {
			*stop = GEN_STOP_CONTEXT;
			break;
		}
		rc = gen_feed(g, &id, 1, e);
		if (rc != KVS_OK)
			break;
		if (eog) {
			*stop = GEN_STOP_EOS;
			break;
		}
		n = 0;
		detok_push(&d, id, &buf, &n, &cap);
		if (n > 0 && fn != NULL)
			fn(buf, n, ud);
	}
	n = 0;
	detok_flush(&d, &buf, &n, &cap);
	if (n > 0 && fn != NULL)
		fn(buf, n, ud);
	free(buf);
	return rc;
}
