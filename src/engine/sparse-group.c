/*
 * sparse-group.c: content groups over a region of keys that share one
 * position, the finer unit Quest and HiP select there.
 *
 * Beyond the training window LM-Infinite's cap moves every key farther
 * than n_ctx_train back to one position (kvscope eval sparse: 24k of 32k
 * keys). Those keys are rotated alike and differ by content only, and the
 * keys a query wants among them lie scattered, one or two in a positional
 * page: a page's min/max bounds then cover sixteen unrelated keys, are
 * loose, and 128 pages cannot hold the heavy keys (session 11: Quest
 * captured 0.51 of dense attention at 32k against an oracle of 0.998, and
 * 0.998 with pages of one key, at twice dense attention's time). Position
 * says nothing inside such a region, so any partition of it into groups of
 * `page` keys is as valid a unit as a page, and one whose members are
 * alike has tight bounds: a group's bound is then close to its best key's
 * logit and ranks the group where that key belongs.
 *
 * The grouping is a kd-tree's leaves: split the region's keys at a
 * multiple of `page` near the median of the channel with the widest spread
 * (max - min), and each side again, until groups of `page` keys (the last
 * group holds the remainder). The box bound Quest computes, sum_d
 * max(q_d max_d, q_d min_d), loosens with each channel's width, so cutting
 * the widest channel first is what shrinks it most for an unknown query;
 * the spread is measured on a sample of each node's keys (64 rows), so
 * the grouping costs O(n log(n / page)) for the cuts plus O(n d) per level
 * of nodes of 64 keys or fewer, per (layer, KV head), once per grouping.
 * (A principal-direction split would cut along a mixed direction that
 * per-channel boxes cannot follow.)
 *
 * Slots cannot be reordered (one slot order serves every layer and head),
 * so each (layer, KV head) keeps a permutation of the region's sorted
 * indices (perm, groups as runs of `page`) and the group of each index
 * (gid). The bounds are computed once per grouping, in the cache's element
 * type, min and max of f16 keys being exact in f16. The grouping stands
 * while the region is the same run of slots at the same position and none
 * of its keys was rewritten (sparse_groups_forget, called wherever the
 * backend forgets a page's slot); anything else regroups every (layer, KV
 * head) at its next use.
 */
#include "engine/sparse.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void sparse_groups_free(struct sparse_groups *g)
{
	free(g->slot);
	free(g->gpos);
	free(g->perm);
	free(g->gid);
	free(g->b);
	free(g->stale);
	memset(g, 0, sizeof *g);
}

/* Arrays for a region of n keys (kept when they are large enough). */
static void sparse_groups_size(struct sparse_groups *g, uint32_t n)
{
	size_t lh = (size_t)g->n_layer * g->n_head_kv;
	uint32_t ng = (n + g->page - 1) / g->page;
	if (g->cap < n) {
		free(g->slot);
		free(g->perm);
		free(g->gid);
		g->cap = n;
		g->slot = xmallocarray(n, sizeof(uint32_t));
		g->perm = xmallocarray(lh * n, sizeof(uint32_t));
		g->gid = xmallocarray(lh * n, sizeof(uint32_t));
	}
	if (g->groups_cap < ng) {
		free(g->b);
		g->groups_cap = ng;
		g->b = xmallocarray(lh * ng * 2 * g->head_dim, g->es);
	}
}

void sparse_groups_ensure(struct sparse_groups *g, uint32_t page, uint32_t n_ctx, uint32_t n_layer,
                          uint32_t n_head_kv, uint32_t head_dim, size_t es)
{
	if (g->gpos != NULL && g->page == page && g->n_ctx == n_ctx)
		return;
	sparse_groups_free(g);
	g->page = page;
	g->n_ctx = n_ctx;
	g->n_layer = n_layer;
	g->n_head_kv = n_head_kv;
	g->head_dim = head_dim;
	g->es = es;
	g->gpos = xmallocarray(n_ctx, sizeof(int32_t));
	for (uint32_t s = 0; s < n_ctx; s++)
		g->gpos[s] = -1;
	g->stale = xmallocarray((size_t)n_layer * n_head_kv, 1);
}

void sparse_groups_forget(struct sparse_groups *g, uint32_t s)
{
	if (g->gpos != NULL && s < g->n_ctx)
		g->gpos[s] = -1;
}

bool sparse_groups_match(struct sparse_groups *g, const uint32_t *slots, uint32_t n, int32_t pos)
{
	bool same = g->n_keys == n && g->pos == pos;
	for (uint32_t i = 0; same && i < n; i++)
		same = g->slot[i] == slots[i] && g->gpos[slots[i]] == pos;
	if (same)
		return true;
	for (uint32_t i = 0; i < g->n_keys; i++)
		g->gpos[g->slot[i]] = -1;
	sparse_groups_size(g, n);
	memcpy(g->slot, slots, n * sizeof(uint32_t));
	for (uint32_t i = 0; i < n; i++)
		g->gpos[slots[i]] = pos;
	g->n_keys = n;
	g->pos = pos;
	g->n_groups = (n + g->page - 1) / g->page;
	memset(g->stale, 1, (size_t)g->n_layer * g->n_head_kv);
	return false;
}

/* Reorder perm[0, n) so that the k smallest of v (n, parallel to perm)
 * come first (quickselect; v is reordered along). */
static void sparse_group_select(float *v, uint32_t *perm, uint32_t n, uint32_t k)
{
	uint32_t lo = 0, hi = n;
	while (hi - lo > 1) {
		float piv = v[lo + (hi - lo) / 2];
		/* [lo, a) < piv, [a, i) == piv, [b, hi) > piv */
		uint32_t a = lo, i = lo, b = hi;
		while (i < b) {
			uint32_t j = v[i] < piv ? a++ : v[i] > piv ? --b : i;
			if (j != i) {
				float tv = v[i];
				uint32_t tp = perm[i];
				v[i] = v[j], perm[i] = perm[j];
				v[j] = tv, perm[j] = tp;
			}
			/* a smaller value moved left past it, an equal one stays: step
			 * on; a larger one was swapped with an unseen one: look again */
			i += j <= i;
		}
		if (k < a)
			hi = a;
		else if (k <= b)
			return;
		else
			lo = b;
	}
}

/* The channel of x (rows perm[0, n), d wide) with the widest spread,
 * measured on at most about SPARSE_GROUP_SAMPLE rows spread evenly over
 * the range: the cut is a heuristic, and a scan of every row of every
 * node was two thirds of the grouping's time. */
#define SPARSE_GROUP_SAMPLE 64
static uint32_t sparse_group_widest(const float *x, const uint32_t *perm, uint32_t n, uint32_t d)
{
	float mn[KERN_ROW_MAX], mx[KERN_ROW_MAX];
	for (uint32_t c = 0; c < d; c++) {
		mn[c] = INFINITY;
		mx[c] = -INFINITY;
	}
	uint32_t step = n > SPARSE_GROUP_SAMPLE ? n / SPARSE_GROUP_SAMPLE : 1;
	for (uint32_t i = 0; i < n; i += step) {
		const float *r = x + (size_t)perm[i] * d;
		for (uint32_t c = 0; c < d; c++) {
			mn[c] = r[c] < mn[c] ? r[c] : mn[c];
			mx[c] = r[c] > mx[c] ? r[c] : mx[c];
		}
	}
	uint32_t best = 0;
	for (uint32_t c = 1; c < d; c++)
		if (mx[c] - mn[c] > mx[best] - mn[best])
			best = c;
	return best;
}

void sparse_group_order(const float *x, uint32_t n, uint32_t d, uint32_t page, uint32_t *perm,
                        float *scratch, uint32_t *stack)
{
	for (uint32_t i = 0; i < n; i++)
		perm[i] = i;
	if (n <= page || page == 0)
		return;
	/* ranges still to split, as (start, size) pairs: a depth-first walk
	 * keeps at most about two per level of the tree */
	uint32_t top = 0;
	stack[top++] = 0;
	stack[top++] = n;
	while (top > 0) {
		uint32_t sz = stack[--top], a = stack[--top];
		if (sz <= page)
			continue;
		uint32_t left = page * (((sz + page - 1) / page) / 2);
		uint32_t c = sparse_group_widest(x, perm + a, sz, d);
		for (uint32_t i = 0; i < sz; i++)
			scratch[i] = x[(size_t)perm[a + i] * d + c];
		sparse_group_select(scratch, perm + a, sz, left);
		stack[top++] = a + left;
		stack[top++] = sz - left;
		stack[top++] = a;
		stack[top++] = left;
	}
}

void sparse_groups_build(struct sparse_groups *g, const struct sparse_keys *k, uint32_t l,
                         uint32_t h, float *x, float *scratch, uint32_t *stack)
{
	uint32_t n = g->n_keys, hd = g->head_dim, page = g->page;
	size_t lh = (size_t)l * g->n_head_kv + h;
	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *src =
		        k->kr[l] + ((uint64_t)g->slot[i] * k->kv_row + (uint64_t)h * hd) * g->es;
		if (g->es == 2)
			k->ops->f16_to_f32((const uint16_t *)src, x + (size_t)i * hd, hd);
		else
			memcpy(x + (size_t)i * hd, src, hd * sizeof(float));
	}
	uint32_t *perm = g->perm + lh * g->cap, *gid = g->gid + lh * g->cap;
	sparse_group_order(x, n, hd, page, perm, scratch, stack);
	float b[2 * KERN_ROW_MAX];
	for (uint32_t grp = 0; grp < g->n_groups; grp++) {
		for (uint32_t d = 0; d < hd; d++) {
			b[d] = INFINITY;
			b[hd + d] = -INFINITY;
		}
		for (uint32_t i = grp * page; i < KVS_MIN((grp + 1) * page, n); i++) {
			const float *r = x + (size_t)perm[i] * hd;
			gid[perm[i]] = grp;
			for (uint32_t d = 0; d < hd; d++) {
				b[d] = r[d] < b[d] ? r[d] : b[d];
				b[hd + d] = r[d] > b[hd + d] ? r[d] : b[hd + d];
			}
		}
		uint8_t *dst = (uint8_t *)sparse_groups_at(g, l, h, grp);
		if (g->es == 2)
			k->ops->f32_to_f16(b, (uint16_t *)dst, 2 * hd);
		else
			memcpy(dst, b, 2 * hd * sizeof(float));
	}
	g->stale[lh] = 0;
	g->builds++;
}
