/*
 * kv_alloc.c: head budgets of different sizes (alloc=adaptive): how many
 * candidates each (layer, KV head) may keep at an eviction.
 *
 * With uniform budgets every head keeps budget - m, less the pinned tokens
 * it keeps. But a head whose attention sits on a few tokens needs few of
 * them, and one whose attention is spread needs many. Ada-KV (Feng et al.,
 * arXiv 2407.11550, "Ada-SnapKV") lets a layer's heads share the layer's
 * budget: every (KV head, token) score of the layer goes into one ranking,
 * the layer keeps its top entries, and each head keeps the ones of its own
 * that passed. A safeguard keeps a head from starving: each head first
 * keeps its own top floor x (its uniform budget) (floor 0.2 in Ada-KV's
 * scripts), and only the rest of the layer's budget goes by the one
 * ranking. The counts of a layer sum to what the uniform budgets sum to,
 * so the layer's entries, and the bytes, stay within its share of the
 * budget whatever the scores are.
 *
 * Per layer, not one threshold over every layer as KVzip's default
 * ("pair") has it: the per-head store gives each layer one pool of rows
 * that its KV heads share (kv_store.c), so a layer's heads can hold
 * different numbers of entries within the rows allocated, where a global
 * rule would need one pool over all layers. The scores of one layer are
 * comparable (SnapKV's votes and KVzip's max attention are attention
 * probabilities of the same queries); across layers their scale differs.
 *
 * The ranking is the policy's own: a head's score of a candidate is its own
 * row of acc (the votes, the re-read's max attention), a token not yet
 * scored (+inf) and the head's first `sinks` candidates first. The
 * allocation only counts: the policy's selection then runs per head with
 * its count as the target (kv_heads_select), whole spans, so a head keeps
 * at most its count and fewer by less than a span.
 *
 * Invariants (tests/unit/test-kv-alloc.c): per layer the counts sum to at
 * most the uniform targets' sum (exactly, when the heads have that many
 * candidates); no count passes the candidates its head keeps; each head
 * gets at least floor x its uniform target (or all its candidates); with
 * floor 1 every count is the uniform one.
 */
#include "kv/kv-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct alloc_entry {
	float score;
	uint32_t head; /* KV head within the layer */
	uint32_t i;    /* candidate index in the kv_select */
};

/* Descending score; ties: the older candidate, then the lower head. */
static int alloc_cmp(const void *a, const void *b)
{
	const struct alloc_entry *x = a, *y = b;
	if (x->score != y->score)
		return x->score > y->score ? -1 : 1;
	if (x->i != y->i)
		return x->i < y->i ? -1 : 1;
	return x->head < y->head ? -1 : x->head > y->head;
}

/* Head r's score of candidate i, the k-th candidate it keeps: what the
 * policy ranks by (NaN counts as no score). */
static float alloc_score(const struct kv_cache *c, const struct kv_select *s, uint32_t r,
                         uint32_t i, uint32_t k, uint32_t sinks)
{
	const struct kv_tok *t = &c->toks[s->cand[i]];
	if (k < sinks || isinf(t->score))
		return INFINITY;
	if (s->acc == NULL)
		return -INFINITY;
	float v = s->acc[(size_t)s->cand[i] * s->acc_stride + r];
	return isnan(v) ? -INFINITY : v;
}

/* Collect head r's entries (the candidates it keeps) into e, sorted by
 * score; returns how many. */
static uint32_t alloc_head_entries(const struct kv_cache *c, const struct kv_select *s, uint32_t r,
                                   uint32_t g, uint32_t sinks, struct alloc_entry *e)
{
	const uint8_t *row = c->hkeep + (size_t)r * c->n_ctx;
	uint32_t k = 0;
	for (uint32_t i = 0; i < s->n; i++)
		if (row[c->toks[s->cand[i]].slot]) {
			e[k] = (struct alloc_entry){ alloc_score(c, s, r, i, k, sinks), g, i };
			k++;
		}
	qsort(e, k, sizeof *e, alloc_cmp);
	return k;
}

void kv_alloc_targets(const struct kv_cache *c, const struct kv_select *s, float floor_share,
                      const uint32_t *unif, uint32_t *target)
{
	uint32_t nh = c->hp->n_head_kv, sinks = 0;
	float sk = kv_policy_get(&c->cfg.policy, "sinks");
	if (!isnan(sk) && sk > 0)
		sinks = (uint32_t)sk;
	size_t cap = (size_t)nh * (s->n ? s->n : 1);
	struct alloc_entry *ent = xmallocarray(cap, sizeof *ent);   /* (n_head_kv, n) by head */
	struct alloc_entry *rest = xmallocarray(cap, sizeof *rest); /* entries past the floors */
	uint32_t *cnt = xmallocarray(nh, sizeof *cnt);              /* (n_head_kv) entries */
	for (uint32_t l = 0; l < c->hp->n_layer; l++) {
		uint64_t pool = 0;
		uint32_t nrest = 0;
		for (uint32_t g = 0; g < nh; g++) {
			uint32_t r = l * nh + g;
			struct alloc_entry *eh = ent + (size_t)g * s->n;
			cnt[g] = alloc_head_entries(c, s, r, g, sinks, eh);
			uint32_t fl = (uint32_t)floorf(floor_share * (float)unif[r]);
			target[r] = KVS_MIN(fl, cnt[g]);
			pool += unif[r] - target[r];
			for (uint32_t k = target[r]; k < cnt[g]; k++)
				rest[nrest++] = eh[k];
		}
		/* the rest of the layer's budget: its top entries, whichever head */
		qsort(rest, nrest, sizeof *rest, alloc_cmp);
		for (uint32_t k = 0; k < nrest && k < pool; k++)
			target[l * nh + rest[k].head]++;
	}
	free(ent);
	free(rest);
	free(cnt);
}
