/*
 * kv_zip.c: KVzip's query-agnostic scores (Kim et al., 2025, arXiv
 * 2505.23416) within a token budget.
 *
 * Query-aware policies (SnapKV) keep what the question being asked needs;
 * the next question, asked of the same cache, finds the rest gone. KVzip
 * asks instead which cached entries the model needs to reconstruct the
 * whole context: it feeds, after the cache, a "repeat the previous
 * context" prompt followed by the context itself (teacher-forced), and
 * scores each cached (token, layer, KV head) entry by the maximum
 * attention any of those queries (and any query head of the KV head's
 * group) gives it. The entries with the lowest scores go, per (layer, KV
 * head) with uniform head budgets (kv_heads.c).
 *
 * Here the budget is never exceeded, so the context is re-read as it
 * comes, not once in full: a re-read reads the cached tokens not yet
 * scored (those that came since the last one; they score +inf, kept first,
 * until then), in chunks as the paper's code does for long contexts: each
 * chunk is the prompt and the next `chunk` of those tokens (fewer when
 * fewer slots are free), a scratch forward in free engine slots right
 * after the cache (positions as a feed would give them), attending to the
 * whole cache and itself; the engine reports the per-KV-head max over the
 * chunk's queries (engine_batch.attn_kv_max). Every cached entry keeps the
 * most attention any re-read gave it (the paper scores every entry against
 * every chunk of the context at once; here against the chunks read while
 * it was cached, its own among them). The slots are then emptied: the
 * cache is exactly as before. A head scores only what it keeps (the
 * re-read sees the cache as each head has it).
 *
 * Cost: each token is re-read once, with ceil(u / chunk) prompts for u new
 * tokens: about one more prefill of everything fed, so a turn costs about
 * twice its prefill. A re-read runs at the eviction that begins a turn
 * (once per turn: the last turn's prompt and reply) and at any other
 * eviction that finds more than half of what it keeps not yet scored (a
 * long prompt: every other prefill chunk; a long reply).
 *
 * Over many turns the max rule scores every token by its own re-read
 * (where the copy it reproduces attends to it), so old and new tokens
 * tie and the older lose. carry > 0 sums instead: each re-read adds the
 * most attention its chunks gave every cached entry to the old score
 * times carry, so what later re-reads still attend to (the context a
 * reproduction of the dialogue leans on) gains over what they ignore.
 */
#include "kv/kv-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The re-read's request, as the paper's prompt asks it. */
static const char zip_request[] = "Repeat the previous context exactly.";

void kv_zip_prompt(struct kv_cache *c)
{
	free(c->zip_ids);
	c->zip_ids = NULL;
	c->n_zip_ids = 0;
	const struct model *m = engine_model(c->eng);
	struct chat_template t;
	struct err e;
	int32_t *ids = NULL;
	size_t n = 0, cap = 0;
	int rc = chat_template_init(&t, m->chat_template, NULL, m->vocab, &e);
	if (rc == KVS_OK) {
		struct chat_prompt p = { 0 };
		chat_message(&t, "user", zip_request, &p);
		chat_generation_prompt(&t, &p);
		rc = chat_tokenize(m->vocab, &p, &ids, &n, &cap, &e);
		chat_prompt_free(&p);
		chat_template_free(&t);
	}
	if (rc != KVS_OK) {
		/* a model without a chat layout: the request as plain text */
		n = 0;
		char text[64];
		int len = snprintf(text, sizeof text, "\n\n%s\n", zip_request);
		rc = vocab_tokenize(m->vocab, text, (size_t)len, false, false, &ids, &n, &cap, &e);
	}
	if (rc != KVS_OK || n == 0) {
		free(ids);
		return; /* the re-read then runs the context alone */
	}
	c->zip_ids = ids;
	c->n_zip_ids = (uint32_t)n;
}

int kv_zip_score(struct kv_cache *c, uint32_t target, struct err *e)
{
	uint32_t n = c->n, np = c->n_zip_ids, nu = 0;
	uint32_t *un = c->order; /* (nu) cache indices of the tokens not yet scored */
	for (uint32_t i = 0; i < n; i++)
		if (isinf(c->toks[i].score) && c->toks[i].score > 0)
			un[nu++] = i;
	if (nu == 0 || 2 * nu <= target || NEVER(c->acc == NULL))
		return KVS_OK;
	uint32_t chunk = kv_policy_reread(&c->cfg.policy);
	uint32_t room = kv_store_room(c); /* free slots (and the per-head store's rows) */
	if (room <= np)
		return KVS_OK; /* no room to re-read: the last scores stand */
	chunk = KVS_MIN(chunk, room - np);
	bool compact = kv_def(c)->pos_mode(c->cfg.policy.p) == KV_POS_COMPACT;
	float carry = kv_policy_carry(&c->cfg.policy);
	int32_t *ids = xmallocarray(np + chunk, sizeof *ids); /* (n_prompt + chunk) */
	/* with carry, this re-read's own max first, (n, n_layer, n_head_kv) */
	float *fresh = carry > 0 ? xcalloc((size_t)n * c->acc_stride, sizeof *fresh) : NULL;
	if (np > 0)
		memcpy(ids, c->zip_ids, np * sizeof *ids);
	int rc = KVS_OK;
	for (uint32_t j0 = 0; j0 < nu && rc == KVS_OK; j0 += chunk) {
		uint32_t mc = KVS_MIN(chunk, nu - j0), m = np + mc;
		for (uint32_t i = 0; i < mc; i++)
			ids[np + i] = c->toks[un[j0 + i]].token;
		for (uint32_t i = 0; i < m; i++) {
			c->bslot[i] = c->free_slots[c->n_free - 1 - i];
			c->bpos[i] = (compact ? (int32_t)n : c->next_pos) + (int32_t)i;
		}
		struct engine_batch b = kv_batch_after_cache(c, ids, m);
		b.logits = ENGINE_LOGITS_NONE;
		b.want_attn_kv = true;
		b.attn_kv_max = true;
		struct engine_out o;
		rc = engine_forward(c->eng, &b, &o, e);
		/* the scratch slots go back empty, whatever happened */
		for (uint32_t i = 0; i < m; i++)
			(void)ALWAYS(engine_kv_set_pos(c->eng, c->bslot[i], -1, NULL) == KVS_OK);
		if (rc != KVS_OK)
			break;
		c->n_zip_tokens += m;
		/* every cached entry keeps the most attention any re-read gave it
		 * (with carry: the most this re-read's chunks gave it) */
		float *dst = fresh ? fresh : c->acc;
		for (uint32_t r = 0; r < c->acc_stride; r++) {
			const float *a = o.attn_kv + (size_t)r * o.n_visible; /* cache columns first */
			for (uint32_t j = 0; j < n; j++) {
				float *d = &dst[(size_t)j * c->acc_stride + r];
				*d = a[j] > *d ? a[j] : *d;
			}
		}
	}
	/* carry: the re-reads add up, the old scores times carry */
	for (size_t k = 0; rc == KVS_OK && fresh != NULL && k < (size_t)n * c->acc_stride; k++)
		c->acc[k] = carry * c->acc[k] + fresh[k];
	free(fresh);
	if (rc == KVS_OK) {
		/* a token's own score: the max over its heads (one keep-set, views) */
		for (uint32_t j = 0; j < n; j++) {
			const float *r = c->acc + (size_t)j * c->acc_stride;
			float mx = 0;
			for (uint32_t k = 0; k < c->acc_stride; k++)
				mx = r[k] > mx ? r[k] : mx;
			c->toks[j].score = mx;
		}
		c->n_zip_reads++;
	}
	free(ids);
	return rc;
}
