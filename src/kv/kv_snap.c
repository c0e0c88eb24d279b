/*
 * kv_snap.c: going back to an earlier state of the KV cache without
 * recomputing it (kv_cache_snap, kv_cache_back): what lets an eval decode
 * several times from one prompt's prefill (eval passkey's sparse modes).
 *
 * A snapshot copies the cache's metadata (tokens, accumulators, per-head
 * keep-sets, free-slot stack, logits, turn state and statistics), not the
 * engine's K/V rows. Going back is exact only while those rows are
 * untouched: the tokens fed since went into free slots and nothing was
 * evicted, compacted, recalled or re-positioned, and the cache was not
 * cleared (and fed again), so every token of the snapshot still sits in its
 * slot at its position, in cache order, ahead of the tokens added since.
 * kv_cache_back checks that (the clear and eviction counts, and each
 * snapshot token's slot, original position and position), empties
 * the slots of the tokens added since (a slot that leaves makes its sparse
 * page dirty, so the page bounds are recomputed from the keys that stay)
 * and installs the metadata. Otherwise it refuses (KVS_ESTATE) and changes
 * nothing: the caller feeds the prompt again. The configuration (policy,
 * budget, sparse mode, capture, scorer, listeners) is not part of a
 * snapshot: it stays as set, so a caller may switch the sparse mode
 * between going back and decoding.
 */
#include "kv/kv-int.h"

#include <stdlib.h>
#include <string.h>

struct kv_snap {
	struct kv_cache c;             /* the scalar state, by value (its pointers are not used) */
	struct kv_tok *toks;           /* (n) cache order */
	float *acc;                    /* (n, acc_stride) or NULL */
	int32_t *acc_tok;              /* (n) or NULL */
	uint32_t *free_slots;          /* (n_free) the free-slot stack */
	float *logits;                 /* (n_vocab) or NULL */
	uint8_t *hkeep;                /* (n_layer, n_head_kv, n_ctx) or NULL */
	struct kv_head_summary *heads; /* (n_layer, n_head) */
};

/* A copy of n elements of size sz at p, or NULL for none. */
static void *snap_dup(const void *p, size_t n, size_t sz)
{
	if (p == NULL || n == 0)
		return NULL;
	void *q = xmallocarray(n, sz);
	memcpy(q, p, n * sz);
	return q;
}

struct kv_snap *kv_cache_snap(const struct kv_cache *c)
{
	struct kv_snap *s = xcalloc(1, sizeof *s);
	s->c = *c;
	s->toks = snap_dup(c->toks, c->n, sizeof *c->toks);
	s->acc = snap_dup(c->acc, (size_t)c->n * c->acc_stride, sizeof(float));
	s->acc_tok = snap_dup(c->acc_tok, c->n, sizeof(int32_t));
	s->free_slots = snap_dup(c->free_slots, c->n_free, sizeof(uint32_t));
	s->logits = c->have_logits ? snap_dup(c->logits, c->n_vocab, sizeof(float)) : NULL;
	s->hkeep = snap_dup(c->hkeep, (size_t)c->hp->n_layer * c->hp->n_head_kv * c->n_ctx, 1);
	s->heads = snap_dup(c->heads, (size_t)c->hp->n_layer * c->hp->n_head, sizeof *c->heads);
	return s;
}

void kv_snap_free(struct kv_snap *s)
{
	if (s == NULL)
		return;
	free(s->toks);
	free(s->acc);
	free(s->acc_tok);
	free(s->free_slots);
	free(s->logits);
	free(s->hkeep);
	free(s->heads);
	free(s);
}

/* Why the cache cannot go back to s (NULL: it can). */
static const char *snap_why_not(const struct kv_cache *c, const struct kv_snap *s)
{
	const struct kv_cache *o = &s->c;
	if (c->n_ctx != o->n_ctx || c->acc_stride != o->acc_stride ||
	    (c->acc == NULL) != (s->acc == NULL) || (c->hkeep == NULL) != (s->hkeep == NULL))
		return "the cache was reconfigured";
	if (c->n_clears != o->n_clears)
		return "the cache was cleared";
	if (c->n_evictions != o->n_evictions || c->n_evicted != o->n_evicted)
		return "tokens were evicted";
	if (c->n < o->n || c->next_pos < o->next_pos)
		return "tokens were removed";
	for (uint32_t i = 0; i < o->n; i++) {
		const struct kv_tok *a = &c->toks[i], *b = &s->toks[i];
		if (a->slot != b->slot || a->orig_pos != b->orig_pos || a->pos != b->pos)
			return "tokens moved";
	}
	return NULL;
}

int kv_cache_back(struct kv_cache *c, const struct kv_snap *s, struct err *e)
{
	const char *why = snap_why_not(c, s);
	if (why != NULL)
		return err_set(e, KVS_ESTATE,
		               "KV cache: cannot go back to the snapshot of %u tokens: %s since; "
		               "expected only tokens added",
		               s->c.n, why);
	const struct kv_cache *o = &s->c;
	/* the tokens added since leave their slots (their pages turn dirty) */
	for (uint32_t i = o->n; i < c->n; i++) {
		int rc = engine_kv_set_pos(c->eng, c->toks[i].slot, -1, e);
		if (rc != KVS_OK)
			return rc;
	}
	memcpy(c->toks, s->toks, (size_t)o->n * sizeof *c->toks);
	if (s->acc != NULL)
		memcpy(c->acc, s->acc, (size_t)o->n * o->acc_stride * sizeof(float));
	if (s->acc_tok != NULL)
		memcpy(c->acc_tok, s->acc_tok, (size_t)o->n * sizeof(int32_t));
	memcpy(c->free_slots, s->free_slots, (size_t)o->n_free * sizeof(uint32_t));
	if (s->logits != NULL)
		memcpy(c->logits, s->logits, (size_t)c->n_vocab * sizeof(float));
	if (s->hkeep != NULL)
		memcpy(c->hkeep, s->hkeep, (size_t)c->hp->n_layer * c->hp->n_head_kv * c->n_ctx);
	if (s->heads != NULL)
		memcpy(c->heads, s->heads, (size_t)c->hp->n_layer * c->hp->n_head * sizeof *c->heads);
	c->n = o->n;
	c->n_free = o->n_free;
	c->next_pos = o->next_pos;
	c->turn = o->turn;
	c->role = o->role;
	c->feed_flags = o->feed_flags;
	c->have_logits = s->logits != NULL;
	c->have_lse = o->have_lse;
	c->logits_lse = o->logits_lse;
	c->logits_ent = o->logits_ent;
	c->turn_first = o->turn_first;
	c->turn_max = o->turn_max;
	c->prev_self = o->prev_self;
	c->pending_room = o->pending_room;
	c->heads_over = o->heads_over;
	c->n_zip_reads = o->n_zip_reads;
	c->n_zip_tokens = o->n_zip_tokens;
	c->recall_turn = o->recall_turn;
	c->recall_pos0 = o->recall_pos0;
	c->n_seen = o->n_seen;
	c->n_evicted = o->n_evicted;
	c->step = o->step;
	c->bytes_peak = o->bytes_peak;
	c->n_evictions = o->n_evictions;
	c->n_fallbacks = o->n_fallbacks;
	c->last_capture_ms = o->last_capture_ms;
	c->capture_next = o->capture_next;
	c->keys_read = o->keys_read;
	c->keys_dense = o->keys_dense;
	c->sp_stats = o->sp_stats;
	return KVS_OK;
}
