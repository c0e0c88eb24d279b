/*
 * gpusparse.c: the host half of the CUDA backend's sparse decode (see
 * gpusparse.h): the top-k rule as the device computes it, the page tracker
 * that says which pages' bounds the device recomputes, the keys' order by
 * position and Quest's candidate pages, HiP's refresh and its search as
 * the device runs it. Plain C, built in every configuration, tested
 * against the CPU's functions in tests/unit/test-gpu-sparse.c.
 */
#include "gpu/gpusparse.h"

#include "base/base.h"

#include <stdlib.h>

/* ------------------------------------------------------------ top-k */

uint32_t gsp_top(const float *ub, uint32_t n, uint32_t k, uint8_t *sel)
{
	memset(sel, 0, n);
	if (k == 0)
		return 0;
	/* T: the largest key with at least k candidates at or above it (stays
	 * 0 when there are fewer than k: then every candidate is above) */
	uint32_t T = 0;
	for (int b = 31; b >= 0; b--) {
		uint32_t want = T | (1u << b), n_ge = 0;
		for (uint32_t i = 0; i < n; i++) {
			uint32_t key = gsp_fkey(ub[i]);
			n_ge += key != GSP_KEY_NINF && key >= want;
		}
		T = gsp_top_step(T, 1u << b, n_ge, k);
	}
	uint32_t got = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t key = gsp_fkey(ub[i]);
		if (key != GSP_KEY_NINF && key > T) {
			sel[i] = 1;
			got++;
		}
	}
	for (uint32_t i = 0; i < n && got < k; i++)
		if (gsp_fkey(ub[i]) == T && T != GSP_KEY_NINF) {
			sel[i] = 1;
			got++;
		}
	return got;
}

/* ------------------------------------------------------------ page tracker */

void gsp_pages_free(struct gsp_pages *sp)
{
	free(sp->sum_pos);
	free(sp->page_n);
	free(sp->dirty);
	free(sp->list);
	memset(sp, 0, sizeof *sp);
}

bool gsp_pages_ensure(struct gsp_pages *sp, uint32_t page, uint32_t n_ctx)
{
	if (sp->sum_pos != NULL && sp->page == page && sp->n_ctx == n_ctx)
		return false;
	gsp_pages_free(sp);
	sp->page = page;
	sp->n_ctx = n_ctx;
	sp->n_pages = (n_ctx + page - 1) / page;
	sp->sum_pos = xmallocarray(n_ctx, sizeof(int32_t));
	sp->page_n = xcalloc(sp->n_pages, sizeof(uint32_t));
	sp->dirty = xmallocarray(sp->n_pages, 1);
	sp->list = xmallocarray(sp->n_pages, sizeof(uint32_t));
	for (uint32_t s = 0; s < n_ctx; s++)
		sp->sum_pos[s] = -1;
	memset(sp->dirty, 1, sp->n_pages);
	sp->lo = 0;
	sp->hi = n_ctx;
	return true;
}

void gsp_pages_sent(struct gsp_pages *sp)
{
	sp->lo = sp->n_ctx;
	sp->hi = 0;
}

void gsp_pages_forget(struct gsp_pages *sp, uint32_t s)
{
	if (sp->sum_pos == NULL || s >= sp->n_ctx)
		return;
	if (sp->sum_pos[s] >= 0)
		sp->dirty[s / sp->page] = 1;
	sp->sum_pos[s] = -1;
	sp->lo = KVS_MIN(sp->lo, s);
	sp->hi = KVS_MAX(sp->hi, s + 1);
}

/* Whether slot s's rotated key is current (as sparse.c's sparse_current);
 * the skip list is searched only for a page that holds one of its slots
 * (a decode step's scan then costs two compares per slot). */
static inline bool gsp_current(const int32_t *slot_pos, const int32_t *rot_pos,
                               const uint32_t *skip, uint32_t n_skip, uint32_t s)
{
	if (slot_pos[s] < 0 || rot_pos[s] != slot_pos[s])
		return false;
	for (uint32_t i = 0; i < n_skip; i++)
		if (skip[i] == s)
			return false;
	return true;
}

/* Set sum_pos[s] = v, widening the changed range. */
static void gsp_set(struct gsp_pages *sp, uint32_t s, int32_t v)
{
	if (sp->sum_pos[s] == v)
		return;
	sp->sum_pos[s] = v;
	sp->lo = KVS_MIN(sp->lo, s);
	sp->hi = KVS_MAX(sp->hi, s + 1);
}

void gsp_pages_scan(struct gsp_pages *sp, const int32_t *slot_pos, const int32_t *rot_pos,
                    const uint32_t *skip, uint32_t n_skip)
{
	sp->n_list = 0;
	for (uint32_t p = 0, all_skip = n_skip; p < sp->n_pages; p++) {
		uint32_t s0 = p * sp->page, s1 = KVS_MIN(s0 + sp->page, sp->n_ctx);
		bool changed = sp->dirty[p];
		n_skip = 0; /* the skip list matters only on a page that holds one */
		for (uint32_t i = 0; i < all_skip && n_skip == 0; i++)
			n_skip = skip[i] >= s0 && skip[i] < s1 ? all_skip : 0;
		/* a folded slot that moved or left: the page is recomputed */
		for (uint32_t s = s0; !changed && s < s1; s++)
			if (sp->sum_pos[s] >= 0 &&
			    (!gsp_current(slot_pos, rot_pos, skip, n_skip, s) || slot_pos[s] != sp->sum_pos[s]))
				changed = true;
		if (changed) {
			/* recompute from every current slot */
			sp->page_n[p] = 0;
			for (uint32_t s = s0; s < s1; s++) {
				bool cur = gsp_current(slot_pos, rot_pos, skip, n_skip, s);
				gsp_set(sp, s, cur ? slot_pos[s] : -1);
				sp->page_n[p] += cur;
			}
			sp->dirty[p] = 0;
			sp->list[sp->n_list++] = p;
			continue;
		}
		/* a clean page: fold what became current (the device recomputes
		 * the page: min and max over the folded slots are the same) */
		bool grew = false;
		for (uint32_t s = s0; s < s1; s++)
			if (sp->sum_pos[s] < 0 && gsp_current(slot_pos, rot_pos, skip, n_skip, s)) {
				gsp_set(sp, s, slot_pos[s]);
				sp->page_n[p]++;
				grew = true;
			}
		if (grew)
			sp->list[sp->n_list++] = p;
	}
}

/* ------------------------------------------------------------ a step's plan */

uint32_t gsp_order(const int32_t *vpos, uint32_t n_vis, int32_t qpos, uint32_t *ord)
{
	uint32_t k = 0, m = 0;
	int32_t last = -1;
	bool sorted = true;
	for (uint32_t j = 0; j < n_vis; j++) {
		sorted = sorted && vpos[j] >= 0 && vpos[j] >= last;
		last = vpos[j];
	}
	if (sorted) {
		for (uint32_t j = 0; j < n_vis; j++)
			ord[j] = j;
		k = n_vis;
	} else {
		/* insertion by position, stable (the set is mostly sorted), then
		 * the empty entries in their order */
		for (uint32_t j = 0; j < n_vis; j++) {
			if (vpos[j] < 0)
				continue;
			uint32_t at = k++;
			while (at > 0 && vpos[ord[at - 1]] > vpos[j]) {
				ord[at] = ord[at - 1];
				at--;
			}
			ord[at] = j;
		}
		for (uint32_t j = 0, e = k; j < n_vis; j++)
			if (vpos[j] < 0)
				ord[e++] = j;
	}
	/* the prefix at positions <= qpos */
	uint32_t lo = 0, hi = k;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (vpos[ord[mid]] <= qpos)
			lo = mid + 1;
		else
			hi = mid;
	}
	m = lo;
	return m;
}

uint32_t gsp_capped_globals(const int32_t *vpos, const uint32_t *ord, uint32_t m, int32_t qpos,
                            uint32_t n_global, int32_t dist_cap)
{
	uint32_t g = 0;
	while (dist_cap > 0 && g < m && ord[g] < n_global && (int64_t)qpos - vpos[ord[g]] > dist_cap)
		g++;
	return g;
}

void gsp_step_make(struct gsp_step *st, uint32_t m, uint32_t sinks, uint32_t recent,
                   uint32_t budget, uint32_t unit, bool hip)
{
	st->m = m;
	st->sinks = KVS_MIN(sinks, m);
	st->recent = KVS_MIN(KVS_MAX(recent, 1u), m - st->sinks);
	st->k_units = gsp_units(budget, st->sinks + st->recent, unit);
	uint32_t n_cand = m - st->sinks - st->recent;
	st->n_units = hip ? (n_cand + unit - 1) / unit : 0;
}

uint32_t gsp_quest_pages(const struct gsp_step *st, const uint32_t *vis, const uint32_t *ord,
                         uint32_t page, uint32_t n_pages, uint8_t *cand, uint32_t *plist)
{
	memset(cand, 0, n_pages);
	for (uint32_t k = st->sinks; k < st->m - st->recent; k++)
		cand[vis[ord[k]] / page] = 1;
	uint32_t np = 0;
	for (uint32_t p = 0; p < n_pages; p++)
		if (cand[p])
			plist[np++] = p;
	return np;
}

/* ------------------------------------------------------------ HiP */

void gsp_hip_free(struct gsp_hip *h)
{
	free(h->seen_pos);
	memset(h, 0, sizeof *h);
}

void gsp_hip_prepare(struct gsp_hip *h, uint32_t n_ctx, const struct gsp_hip_spec *spec,
                     int32_t qpos, const uint32_t *cand_slot, const int32_t *cand_pos,
                     uint32_t n_cand)
{
	if (h->seen_pos == NULL || h->n_ctx != n_ctx) {
		free(h->seen_pos);
		h->n_ctx = n_ctx;
		h->seen_pos = xmallocarray(n_ctx, sizeof(int32_t));
		for (uint32_t i = 0; i < n_ctx; i++)
			h->seen_pos[i] = -1;
		h->valid = false;
		h->lo = 0;
		h->hi = n_ctx;
	} else {
		h->lo = h->hi = 0;
	}
	uint32_t unseen = 0;
	for (uint32_t k = 0; k < n_cand; k++)
		unseen += h->seen_pos[cand_slot[k]] != cand_pos[k];
	bool same = h->valid && memcmp(&h->spec, spec, sizeof *spec) == 0;
	h->refresh = !same || h->age + 1 >= spec->refresh || qpos <= h->last_pos ||
	        unseen > KVS_MAX(spec->budget / 4, spec->refresh);
	h->last_pos = qpos;
	if (!h->refresh) {
		h->age++;
		return;
	}
	h->age = 0;
	h->valid = true;
	h->spec = *spec;
	for (uint32_t i = 0; i < n_ctx; i++)
		h->seen_pos[i] = -1;
	for (uint32_t k = 0; k < n_cand; k++)
		h->seen_pos[cand_slot[k]] = cand_pos[k];
	h->lo = 0;
	h->hi = n_ctx;
}

size_t gsp_hip_scratch(uint32_t w)
{
	return (8 * (size_t)w + 2) * sizeof(uint32_t) + 4 * (size_t)w * sizeof(float) + 2 * (size_t)w;
}

void gsp_hip_block_ubs(const float *ub, const uint32_t *vis, const uint32_t *ord, uint32_t k0,
                       uint32_t k1, uint32_t page, uint32_t bk, float *bub)
{
	uint32_t nb = k1 > k0 ? (k1 - k0 + bk - 1) / bk : 0;
	for (uint32_t b = 0; b < nb; b++)
		bub[b] = gsp_hip_block_ub(ub, vis, ord, k0, k1, page, bk, b);
}

uint32_t gsp_hip_tree(uint32_t n_blocks, uint32_t k_blocks, uint32_t beam, const float *bub,
                      gsp_score_fn fn, void *ctx, uint8_t *chosen, void *scratch)
{
	memset(chosen, 0, n_blocks);
	if (k_blocks >= n_blocks) {
		memset(chosen, 1, n_blocks);
		return 0;
	}
	if (k_blocks == 0)
		return 0;
	uint32_t K = k_blocks, W = gsp_hip_width(n_blocks, K, beam), w = W;
	uint32_t *start = scratch, *size = start + W; /* (W) the kept ranges */
	uint32_t *hs = size + W, *hn = hs + 2 * W;    /* (2W) their halves */
	uint32_t *blk = hn + 2 * W;                   /* (2W + 2) the non-empty halves' first blocks */
	float *score = (float *)(blk + 2), *got = score + 2 * W; /* (2W) each */
	uint8_t *sel = (uint8_t *)(got + 2 * W);                 /* (2W) */
	uint32_t big = 0, rounds = 0;
	for (uint32_t i = 0; i < w; i++) {
		gsp_hip_range(i, n_blocks, w, &start[i], &size[i]);
		big = KVS_MAX(big, size[i]);
	}
	/* a beam round may keep only single blocks: one more round (each
	 * range's block scored as a half) then keeps K of them */
	while (big > 1 || w > K) {
		uint32_t nb = 0;
		bool by_ub = bub != NULL && gsp_hip_by_bounds(big);
		for (uint32_t j = 0; j < 2 * w; j++) {
			gsp_hip_half(start[j / 2], size[j / 2], j % 2, &hs[j], &hn[j]);
			if (hn[j] > 0)
				blk[nb++] = hs[j];
		}
		if (!by_ub)
			fn(ctx, blk, nb, got);
		rounds++;
		for (uint32_t j = 0, g = 0; j < 2 * w; j++) {
			if (hn[j] == 0)
				score[j] = -INFINITY;
			else
				score[j] = by_ub ? gsp_hip_half_ub(bub, hs[j], hn[j]) : got[g++];
		}
		/* the last round (every half one block) keeps K, the others the beam */
		uint32_t keep = big <= 2 ? K : w;
		gsp_top(score, 2 * w, keep, sel);
		big = 0;
		for (uint32_t j = 0, i = 0; j < 2 * w; j++)
			if (sel[j]) {
				start[i] = hs[j];
				size[i] = hn[j];
				big = KVS_MAX(big, hn[j]);
				i++;
			}
		w = keep;
	}
	for (uint32_t i = 0; i < w; i++)
		chosen[start[i]] = 1;
	return rounds;
}
