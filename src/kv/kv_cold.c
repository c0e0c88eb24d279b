/*
 * kv_cold.c: the KV cache's side of the cold tier: handing evicted tokens
 * with their raw K/V rows to a listener (the store keeps them), and taking
 * recalled tokens back (kv_cache_recall).
 *
 * Capture: with a listener set, kv_evict notes each victim's slot
 * (kv_cold_save) and, once the victims left the cache, kv_cold_emit starts
 * one batched save of their raw rows (engine_kv_save_batch: every layer's
 * pre-RoPE key and value, the cache's element type) and queues the
 * tokens. A queued eviction is handed to the listener only once its copy
 * landed (engine_kv_collect), and evictions are handed over in the order
 * they happened: on the CPU the copy lands before the save returns, so the
 * hand-off happens inside the eviction as it always did; on the CUDA
 * backend the copy runs behind the decode and the hand-off is deferred to
 * the next eviction (kv_cold_begin polls, without waiting), to
 * kv_cache_cold_sync (the session calls it at a turn's end, before the
 * store writes the turn: it waits) or to a listener change. When the
 * engine's ring has no room for a batch, the oldest queued evictions are
 * waited for and handed over first (ring full = wait for the oldest). A
 * copy that fails, or a backend without raw access, hands the tokens over
 * without rows (the listener then keeps nothing, as before). With no
 * listener nothing is read or allocated.
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

/* An eviction whose rows are being copied: its tokens, in cache order. */
struct kv_cold_batch {
	struct kv_tok *toks; /* (n) copies */
	uint32_t n;
};

/* The evictions waiting for their copies, oldest first (allocated while
 * one waits; freed when none does). Each holds the engine ring's batch of
 * the same rank: the ring and this queue are both FIFO. */
struct kv_cold_q {
	struct kv_cold_batch *b; /* (cap) circular */
	uint32_t cap, first, count;
};

/* Hand the oldest queued eviction to the listener (wait: for its copy);
 * false when its copy has not landed yet. */
static bool kv_cold_hand(struct kv_cache *c, bool wait)
{
	struct kv_cold_q *q = c->cold_q;
	struct kv_cold_batch *x = &q->b[q->first];
	bool ready = false;
	const void *rows = NULL;
	uint32_t n = 0;
	struct err e;
	int rc = engine_kv_collect(c->eng, wait, &ready, &rows, &n, &e);
	if (rc == KVS_OK && !ready)
		return false;
	if (rc != KVS_OK) /* a failed copy: the tokens go without rows */
		log_warn("cold tier: %s", e.msg);
	else if (NEVER(n != x->n))
		rows = NULL;
	if (c->cold_fn != NULL)
		c->cold_fn(c->cold_ud, x->toks, x->n, rc == KVS_OK ? rows : NULL, c->bytes_per_token);
	engine_kv_release(c->eng);
	free(x->toks);
	q->first = (q->first + 1) % q->cap;
	if (--q->count == 0) {
		free(q->b);
		free(q);
		c->cold_q = NULL;
	}
	return true;
}

/* Hand over every queued eviction whose copy landed, oldest first (wait:
 * all of them, waiting for each). */
static void kv_cold_poll(struct kv_cache *c, bool wait)
{
	while (c->cold_q != NULL && kv_cold_hand(c, wait))
		;
}

void kv_cache_cold_sync(struct kv_cache *c)
{
	kv_cold_poll(c, true);
}

void kv_cold_end(struct kv_cache *c)
{
	kv_cold_poll(c, true);
}

void kv_cache_set_cold(struct kv_cache *c, kv_cold_fn fn, void *ud)
{
	kv_cold_poll(c, true); /* what was evicted goes to the listener it was evicted under */
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

void kv_cache_set_recall_near(struct kv_cache *c, bool near)
{
	c->recall_near = near;
}

/* Whether t came before the recall turn's own tokens and was recalled. */
static bool kv_pos_recalled(const struct kv_cache *c, const struct kv_tok *t)
{
	return (t->flags & KV_FLAG_RECALLED) && t->orig_pos < c->recall_pos0;
}

void kv_pos_walk_init(const struct kv_cache *c, struct kv_pos_walk *w)
{
	memset(w, 0, sizeof *w);
	w->near = c->recall_near && c->recall_turn != 0 && c->recall_turn == c->turn;
	for (uint32_t i = 0; w->near && i < c->n && c->toks[i].orig_pos < c->recall_pos0; i++)
		w->n_older += !kv_pos_recalled(c, &c->toks[i]);
}

int32_t kv_pos_walk_next(const struct kv_cache *c, struct kv_pos_walk *w, uint32_t i)
{
	const struct kv_tok *t = &c->toks[i];
	if (!w->near || t->orig_pos >= c->recall_pos0)
		return (int32_t)i; /* every earlier token is placed below: the index is free */
	if (kv_pos_recalled(c, t))
		return (int32_t)(w->n_older + w->recalled++);
	return (int32_t)w->older++;
}

/* Before an eviction's gather: hand over the earlier evictions whose
 * copies landed, and make room for n victims' slots (the victims the
 * target implies; kv_cold_save grows it when there are more). */
void kv_cold_begin(struct kv_cache *c, uint32_t n)
{
	kv_cold_poll(c, false);
	c->cold_raw_ok = c->cold_fn != NULL;
	if (c->cold_fn == NULL)
		return;
	if (n > c->cold_cap) {
		c->cold_slots = xreallocarray(c->cold_slots, n, sizeof *c->cold_slots);
		c->cold_cap = n;
	}
}

/* Note the i-th victim's slot (its rows are read after the gather, before
 * any freed slot is written again). */
void kv_cold_save(struct kv_cache *c, uint32_t i, uint32_t slot)
{
	if (!c->cold_raw_ok)
		return;
	/* a selection may keep fewer than its target: grow past the estimate */
	if (i >= c->cold_cap) {
		c->cold_cap = KVS_MAX(i + 1, 2 * c->cold_cap);
		c->cold_slots = xreallocarray(c->cold_slots, c->cold_cap, sizeof *c->cold_slots);
	}
	c->cold_slots[i] = slot;
}

/* Queue the n evicted tokens (c->evicted), start the batched save of their
 * rows, and hand over whatever landed. */
void kv_cold_emit(struct kv_cache *c, uint32_t n)
{
	if (c->cold_fn == NULL || n == 0)
		return;
	/* ring full: wait for the oldest and hand it over */
	while (c->cold_q != NULL && !engine_kv_ring_room(c->eng, n))
		(void)kv_cold_hand(c, true);
	struct err e;
	int rc = c->cold_raw_ok ? engine_kv_save_batch(c->eng, c->cold_slots, n, &e) : KVS_EUNSUPPORTED;
	if (rc != KVS_OK) {
		/* no rows (a backend without raw access, a failed start): after
		 * the earlier evictions, in order */
		if (rc != KVS_EUNSUPPORTED)
			log_warn("cold tier: %s", e.msg);
		kv_cold_poll(c, true);
		c->cold_fn(c->cold_ud, c->evicted, n, NULL, c->bytes_per_token);
		return;
	}
	struct kv_cold_q *q = c->cold_q;
	if (q == NULL)
		q = c->cold_q = xcalloc(1, sizeof *q);
	if (q->count == q->cap) {
		uint32_t cap = q->cap ? 2 * q->cap : 4;
		struct kv_cold_batch *b = xmallocarray(cap, sizeof *b);
		for (uint32_t i = 0; i < q->count; i++)
			b[i] = q->b[(q->first + i) % q->cap];
		free(q->b);
		q->b = b;
		q->cap = cap;
		q->first = 0;
	}
	struct kv_cold_batch *x = &q->b[(q->first + q->count) % q->cap];
	x->toks = xmallocarray(n, sizeof *x->toks);
	memcpy(x->toks, c->evicted, (size_t)n * sizeof *x->toks);
	x->n = n;
	q->count++;
	kv_cold_poll(c, false);
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
	/* load every row first, in one batch: a failure leaves the cache as it was */
	kv_store_recall(c, n, raw); /* the per-head store: the rows' heads, and rows for them */
	uint32_t *slots = xmallocarray(n, sizeof *slots);
	int32_t *pos = xmallocarray(n, sizeof *pos);
	for (uint32_t j = 0; j < n; j++) {
		slots[j] = c->free_slots[c->n_free - 1 - j];
		pos[j] = toks[j].orig_pos;
	}
	rc = engine_kv_load_batch(c->eng, slots, pos, n, raw, e);
	if (rc != KVS_OK)
		for (uint32_t k = 0; k < n; k++)
			(void)engine_kv_set_pos(c->eng, slots[k], -1, NULL);
	free(slots);
	free(pos);
	if (rc != KVS_OK)
		return rc;
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
	c->recall_pos0 = c->next_pos;
	for (uint32_t k = 0; c->hkeep != NULL && !kv_store_on(c) && k < n; k++)
		kv_heads_take(c, &c->free_slots[c->n_free + k], 1);
	kv_heads_count(c);
	uint64_t bytes = kv_bytes(c);
	if (bytes > c->bytes_peak)
		c->bytes_peak = bytes;
	/* positions as the policy's mode says (COMPACT moves the later tokens
	 * up; near: the recalled ones after every other) */
	rc = kv_reposition(c, e);
	if (rc != KVS_OK)
		return rc;
	for (uint32_t k = 0; k < c->n && nr < n; k++)
		if (c->toks[k].orig_pos == toks[nr].orig_pos)
			c->evicted[nr++] = c->toks[k]; /* the event's copy, at its new position */
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
