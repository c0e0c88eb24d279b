/*
 * kv_vote.c: query-aware votes (SnapKV) within a token budget.
 *
 * SnapKV reads the whole prompt, lets the last W queries (the observation
 * window, which holds the question) vote on every earlier token with their
 * attention, pools the votes with a max kernel so that a chosen token
 * brings its neighbours, and keeps the top tokens. Its prompt sits in full
 * in memory first. Here the budget is never exceeded, so the votes are
 * taken before the eviction that makes room for the prompt: a scratch
 * forward of the prompt's last W tokens, placed where they would go next
 * (after the cached tokens) in free engine slots, attends to the cache; the engine sums its
 * attention over the window's queries and each KV head's query heads
 * (ENGINE_CAP_ATTN_KV; without it, the window's last query alone), the
 * sums are max-pooled along the cache (kernel 7 by default, clipped at the
 * ends) per (layer, KV head) into acc, and a token's score is the sum of
 * its row. Then the slots are emptied: the cache is exactly as before, and
 * the window is fed again as part of the prompt (the cost: W extra tokens
 * per eviction that votes).
 *
 * Differences from the paper's code, on purpose: the window sees the
 * cache, not the part of the current prompt before it that is not yet fed
 * (a prompt longer than a prefill chunk votes once per chunk eviction, its
 * window placed right after the cache, nearer than it will be fed); and
 * the pooling
 * runs on the sum over each KV head's query heads (what the engine gives),
 * where per-query-head pooling would take the max before the sum.
 *
 * Across turns the paper's rule (carry 0) lets each vote replace the
 * last: a token scores only what the current window asks, so a fact
 * stated early loses every vote once the talk moves on; and votes are
 * taken only when the prompt must evict, so what was said before the
 * cache filled is first voted on by a window long after it. carry > 0
 * keeps the votes: every turn's prompt votes (evicting or not) and each
 * vote adds to the old ones times carry (1: a running sum, as H2O sums
 * attention; < 1: a decay per vote, as SirLLM's per turn). The cost: W
 * more tokens through the model each turn.
 *
 * rank=max (one set) scores a token by the most votes any one (layer, KV
 * head) gave it instead of their sum: the sum over 90 heads is decided by
 * what every head attends to (the template's tokens, punctuation), so a
 * fact that only the few heads that read it vote for loses to them; with
 * the max it stays if one head wants it. It is the one-set form of
 * per-head selection with one threshold over every head (KVzip's one set
 * ranks the same way, kvzip:heads=0).
 */
#include "kv/kv-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void kv_vote_pool(const float *x, uint32_t n, uint32_t kernel, float *out)
{
	uint32_t h = kernel / 2;
	for (uint32_t j = 0; j < n; j++) {
		uint32_t a = j > h ? j - h : 0, b = KVS_MIN(n, j + h + 1);
		float m = -INFINITY;
		for (uint32_t k = a; k < b; k++)
			m = x[k] > m ? x[k] : m;
		out[j] = m;
	}
}

/* rank=max: each of the first n tokens scores the most votes one (layer,
 * KV head) gave it, instead of their sum. */
static void vote_scores_max(struct kv_cache *c, uint32_t n)
{
	for (uint32_t j = 0; j < n; j++) {
		const float *r = c->acc + (size_t)j * c->acc_stride;
		float best = -INFINITY;
		for (uint32_t k = 0; k < c->acc_stride; k++)
			best = r[k] > best ? r[k] : best;
		c->toks[j].score = best;
	}
}

int kv_vote(struct kv_cache *c, const int32_t *ids, uint32_t n_win, struct err *e)
{
	const struct hparams *hp = c->hp;
	uint32_t window, kernel, n = c->n;
	kv_def(c)->vote(c->cfg.policy.p, &window, &kernel);
	uint32_t given = n_win;
	n_win = KVS_MIN(KVS_MIN(n_win, window), kv_store_room(c));
	ids += given - n_win; /* the window's end */
	if (n == 0 || n_win == 0 || NEVER(c->acc == NULL))
		return KVS_OK;
	bool compact = kv_def(c)->pos_mode(c->cfg.policy.p) == KV_POS_COMPACT;
	for (uint32_t i = 0; i < n_win; i++) {
		c->bslot[i] = c->free_slots[c->n_free - 1 - i];
		c->bpos[i] = (compact ? (int32_t)n : c->next_pos) + (int32_t)i;
	}
	struct engine_batch b = kv_batch_after_cache(c, ids, n_win);
	b.logits = ENGINE_LOGITS_NONE;
	b.want_attn_kv = engine_supports(c->eng, ENGINE_CAP_ATTN_KV);
	b.want_attn = !b.want_attn_kv;
	struct engine_out o;
	int rc = engine_forward(c->eng, &b, &o, e);
	/* the scratch slots go back empty, whatever happened */
	for (uint32_t i = 0; i < n_win; i++)
		(void)ALWAYS(engine_kv_set_pos(c->eng, c->bslot[i], -1, NULL) == KVS_OK);
	if (rc != KVS_OK)
		return rc;
	uint32_t nv = o.n_visible, grp = hp->n_head / hp->n_head_kv;
	float *sum = c->fscratch; /* (n) one (layer, KV head)'s votes */
	float *pooled = xmallocarray(n, sizeof *pooled);
	float carry = kv_policy_carry(&c->cfg.policy);
	for (uint32_t l = 0; l < hp->n_layer; l++)
		for (uint32_t g = 0; g < hp->n_head_kv; g++) {
			if (o.attn_kv != NULL) {
				memcpy(sum, o.attn_kv + ((size_t)l * hp->n_head_kv + g) * nv, n * sizeof *sum);
			} else {
				const float *a = o.attn + ((size_t)l * hp->n_head + (size_t)g * grp) * nv;
				for (uint32_t j = 0; j < n; j++) {
					float s = 0;
					for (uint32_t h = 0; h < grp; h++)
						s += a[(size_t)h * nv + j];
					sum[j] = s;
				}
			}
			kv_vote_pool(sum, n, kernel, pooled);
			for (uint32_t j = 0; j < n; j++) {
				float *d = &c->acc[(size_t)j * c->acc_stride + l * hp->n_head_kv + g];
				*d = carry > 0 ? carry * *d + pooled[j] : pooled[j];
			}
		}
	free(pooled);
	kv_acc_scores(c, n);
	if (kv_policy_get(&c->cfg.policy, "rank") >= 0.5f)
		vote_scores_max(c, n);
	return KVS_OK;
}
