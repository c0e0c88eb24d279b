/*
 * kv_cold.c: the KV cache's side of the cold tier: handing evicted tokens
 * with their raw K/V rows to a listener (the store keeps them), and taking
 * recalled tokens back (kv_cache_recall).
 *
 * Capture: with a listener set, kv_evict reads each victim's raw rows
 * (engine_kv_save: every layer's pre-RoPE key and value, the cache's
 * element type) while its slot still holds them, and hands the batch over
 * after the gather. With no listener nothing is read or allocated.
 *
 * Recall: recalled tokens go back by original position, so cache order
 * (orig_pos ascending, the invariant kv-int.h states) holds, and the
 * policy's position mode places them like any cached token. Their raw rows
 * are loaded into free slots first; a load that fails undoes the others
 * and leaves the cache as it was. They carry KV_FLAG_RECALLED, and
 * kv_protected keeps them through the turn they came back for
 * (recall_turn): the retention policy sees them as candidates again from
 * the next turn on, so a recalled block costs the hot budget for one turn
 * unless the policy chooses to keep it.
 *
 * Probe: kv_cache_probe runs a few tokens (the end of a prompt not fed
 * yet) over the cached tokens in free slots, as the next feed would place
 * them, and returns their queries before RoPE; the slots are emptied again,
 * so the cache is as it was (a recall scorer ranks cold blocks by them).
 */
#include "kv/kv-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void kv_cache_set_cold(struct kv_cache *c, kv_cold_fn fn, void *ud)
{
	c->cold_fn = fn;
	c->cold_ud = ud;
}

/* Whether eviction must keep t now: pinned, or recalled for this turn. */
bool kv_protected(const struct kv_cache *c, const struct kv_tok *t)
{
	if (t->flags & KV_FLAG_PINNED)
		return true;
	return (t->flags & KV_FLAG_RECALLED) && c->recall_turn != 0 && c->recall_turn == c->turn;
}

/* Make room for n tokens' raw rows before an eviction's gather (the
 * victims the target implies; kv_cold_save grows it when there are more). */
void kv_cold_begin(struct kv_cache *c, uint32_t n)
{
	c->cold_raw_ok = c->cold_fn != NULL;
	if (c->cold_fn == NULL)
		return;
	size_t need = (size_t)n * c->bytes_per_token;
	if (need > c->cold_cap) {
		c->cold_raw = xrealloc(c->cold_raw, need);
		c->cold_cap = need;
	}
}

/* Read the i-th victim's rows from slot while the slot still holds them. */
void kv_cold_save(struct kv_cache *c, uint32_t i, uint32_t slot)
{
	if (!c->cold_raw_ok)
		return;
	/* a selection may keep fewer than its target: grow past the estimate */
	size_t need = (size_t)(i + 1) * c->bytes_per_token;
	if (need > c->cold_cap) {
		c->cold_cap = KVS_MAX(need, 2 * c->cold_cap);
		c->cold_raw = xrealloc(c->cold_raw, c->cold_cap);
	}
	if (engine_kv_save(c->eng, slot, c->cold_raw + (size_t)i * c->bytes_per_token, NULL) != KVS_OK)
		c->cold_raw_ok = false; /* a backend without raw access: tokens go without rows */
}

/* Hand the n evicted tokens and their rows to the listener. */
void kv_cold_emit(struct kv_cache *c, uint32_t n)
{
	if (c->cold_fn == NULL || n == 0)
		return;
	c->cold_fn(c->cold_ud, c->evicted, n, c->cold_raw_ok ? c->cold_raw : NULL, c->bytes_per_token);
}

/* The retention score a token starts from under the active policy. */
static float kv_cold_score(const struct kv_cache *c, const struct kv_tok *t)
{
	enum kv_score_kind k = kv_def(c)->score;
	if (k == KV_SCORE_NONE || c->has_scorer)
		return NAN;
	if (k == KV_SCORE_SURPRISAL)
		return isnan(t->surprisal) ? 0.0f : t->surprisal;
	return 0.0f;
}

/* Check the tokens to recall: ids, order, positions, roles, room. */
static int kv_recall_check(const struct kv_cache *c, const struct kv_tok *toks, uint32_t n,
                           const void *raw, struct err *e)
{
	if (raw == NULL)
		return err_set(e, KVS_EARG, "recall: %u tokens without their K/V rows", n);
	/* per-head keep-sets: every head keeps a recalled token */
	uint32_t load = kv_heads_load(c), cap = kv_slot_cap(c);
	if (kv_over(c, n) || n > c->n_free)
		return err_set(
		        e, KVS_EARG,
		        "recall: %u tokens do not fit (%u cached, budget %u): expected at most %u", n, load,
		        c->cfg.budget,
		        KVS_MIN(c->cfg.budget - KVS_MIN(load, c->cfg.budget), cap - KVS_MIN(c->n, cap)));
	for (uint32_t i = 0; i < n; i++) {
		const struct kv_tok *t = &toks[i];
		if (t->token < 0 || (uint32_t)t->token >= c->n_vocab)
			return err_set(e, KVS_EARG, "recall: token %u has id %d, expected 0..%u", i, t->token,
			               c->n_vocab - 1);
		if (t->orig_pos < 0 || t->orig_pos >= c->next_pos ||
		    (i > 0 && t->orig_pos <= toks[i - 1].orig_pos))
			return err_set(e, KVS_EARG,
			               "recall: token %u at original position %d: expected positions "
			               "rising from 0 and below the next position %d",
			               i, t->orig_pos, c->next_pos);
		if (kv_cache_find(c, t->orig_pos) >= 0)
			return err_set(e, KVS_EARG, "recall: the token at original position %d is cached",
			               t->orig_pos);
		if (t->role > KV_ROLE_ASSISTANT || t->turn > c->turn)
			return err_set(e, KVS_EARG,
			               "recall: token %u has role %u, turn %u: expected a role 0..%d and a "
			               "turn up to %u",
			               i, t->role, t->turn, KV_ROLE_ASSISTANT, c->turn);
	}
	return KVS_OK;
}

int kv_cache_recall(struct kv_cache *c, const struct kv_tok *toks, uint32_t n, const void *raw,
                    struct err *e)
{
	if (n == 0)
		return KVS_OK;
	int rc = kv_recall_check(c, toks, n, raw, e);
	if (rc != KVS_OK)
		return rc;
	/* load every row first: a failure leaves the cache as it was */
	const uint8_t *rows = raw;
	kv_store_recall(c, n, rows);
	for (uint32_t j = 0; j < n; j++) {
		uint32_t slot = c->free_slots[c->n_free - 1 - j];
		rc = engine_kv_load(c->eng, slot, toks[j].orig_pos, rows + (size_t)j * c->bytes_per_token,
		                    e);
		if (rc != KVS_OK) {
			for (uint32_t k = 0; k <= j; k++)
				(void)engine_kv_set_pos(c->eng, c->free_slots[c->n_free - 1 - k], -1, NULL);
			return rc;
		}
	}
	/* merge from the back: cached tokens and recalled ones by orig_pos */
	int64_t i = (int64_t)c->n - 1, j = (int64_t)n - 1, w = (int64_t)c->n + n - 1;
	uint32_t nr = 0;
	while (j >= 0) {
		if (i >= 0 && c->toks[i].orig_pos > toks[j].orig_pos) {
			c->toks[w] = c->toks[i];
			if (c->acc != NULL) {
				memmove(c->acc + (size_t)w * c->acc_stride, c->acc + (size_t)i * c->acc_stride,
				        c->acc_stride * sizeof *c->acc);
				c->acc_tok[w] = c->acc_tok[i];
			}
			i--;
		} else {
			struct kv_tok *t = &c->toks[w];
			*t = toks[j];
			t->slot = c->free_slots[c->n_free - 1 - (uint32_t)j];
			t->pos = t->orig_pos;
			t->flags = KV_FLAG_RECALLED;
			t->n_heads = 0;
			t->score = kv_cold_score(c, t);
			if (c->acc != NULL) {
				memset(c->acc + (size_t)w * c->acc_stride, 0, c->acc_stride * sizeof *c->acc);
				c->acc_tok[w] = t->orig_pos;
			}
			j--;
		}
		w--;
	}
	c->n_free -= n;
	c->n += n;
	c->recall_turn = c->turn;
	for (uint32_t k = 0; c->hkeep != NULL && !kv_store_on(c) && k < n; k++)
		kv_heads_take(c, &c->free_slots[c->n_free + k], 1);
	kv_heads_count(c);
	uint64_t bytes = kv_bytes(c);
	if (bytes > c->bytes_peak)
		c->bytes_peak = bytes;
	/* positions as the policy's mode says (COMPACT moves the later tokens up) */
	bool compact = kv_def(c)->pos_mode(c->cfg.policy.p) == KV_POS_COMPACT;
	for (uint32_t k = 0; k < c->n; k++) {
		struct kv_tok *t = &c->toks[k];
		int32_t p = compact ? (int32_t)k : t->orig_pos;
		if (p != t->pos) {
			rc = engine_kv_set_pos(c->eng, t->slot, p, e);
			if (rc != KVS_OK)
				return rc;
			t->pos = p;
		}
		if (nr < n && t->orig_pos == toks[nr].orig_pos)
			c->evicted[nr++] = *t; /* the event's copy, at its new position */
	}
	kv_debug_check(c);
	struct kv_event ev = { .kind = KV_EVENT_RECALL };
	ev.n_recalled = nr;
	ev.recalled = c->evicted;
	kv_emit(c, &ev);
	return KVS_OK;
}

int kv_cache_probe(struct kv_cache *c, const int32_t *ids, uint32_t n, float *q, struct err *e)
{
	if (n == 0 || n > c->n_free)
		return err_set(e, KVS_ERANGE, "probe: %u tokens, %u free slots: expected 1..%u", n,
		               c->n_free, c->n_free);
	if (!engine_supports(c->eng, ENGINE_CAP_QUERY))
		return err_set(e, KVS_EUNSUPPORTED, "probe: backend %s does not give queries",
		               engine_backend_name(c->eng));
	bool compact = kv_def(c)->pos_mode(c->cfg.policy.p) == KV_POS_COMPACT;
	for (uint32_t i = 0; i < n; i++) {
		if (ids[i] < 0 || (uint32_t)ids[i] >= c->n_vocab)
			return err_set(e, KVS_EARG, "probe: token %u has id %d, expected 0..%u", i, ids[i],
			               c->n_vocab - 1);
		c->bslot[i] = c->free_slots[c->n_free - 1 - i];
		c->bpos[i] = compact ? (int32_t)(c->n + i) : c->next_pos + (int32_t)i;
	}
	/* as the next feed: each head sees what it keeps */
	struct engine_batch b = kv_batch_after_cache(c, ids, n);
	b.logits = ENGINE_LOGITS_NONE;
	b.want_q = true;
	struct engine_out o;
	int rc = engine_forward(c->eng, &b, &o, e);
	if (rc == KVS_OK) {
		const struct hparams *hp = c->hp;
		memcpy(q, o.q, (size_t)n * hp->n_layer * hp->n_head * hp->head_dim * sizeof *q);
	}
	/* the probe's slots go back to the free stack as they were: empty */
	for (uint32_t i = 0; i < n; i++)
		(void)engine_kv_set_pos(c->eng, c->bslot[i], -1, NULL);
	kv_debug_check(c);
	return rc;
}
