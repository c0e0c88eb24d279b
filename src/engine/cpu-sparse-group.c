/*
 * cpu-sparse-group.c: the CPU backend's content groups (sparse-group.c)
 * for Quest and HiP: a region of candidate keys at one position is
 * selected by groups of alike keys instead of positional pages.
 *
 * A decode step that bounds pages (Quest; a HiP refresh) first looks for
 * the region: the longest run of the sorted candidates (between the sinks
 * and the recent window) with one position, taken when it holds at least
 * CPU_GROUP_MIN_PAGES pages' worth of keys (a smaller run is left to the
 * positional pages, and with no region nothing changes). Its keys then
 * leave the positional pages' candidates (a page of region keys only is
 * not bounded; a page at the region's edge keeps its bound over all its
 * slots, a valid upper bound for its other keys). Each (layer, KV head)
 * is grouped, when stale, by the thread that chooses for it, after the
 * step's keys were re-rotated.
 *
 * Ranking groups and pages together by Quest's bound does not work: the
 * bounds are loose by tens of logits (unscaled; 36 on groups, 49 on pages
 * at 8k with --cap 2048) where the keys' logits differ by a few, so the
 * looser kind wins the budget whatever it holds (the first version chose
 * almost no group: mass 0.829 against the pages' 0.930 there). Each kind
 * is therefore ranked among its own and exact logits decide between them.
 * The groups are ranked by their box's centre, q.(min + max) / 2, not its
 * bound: over alike keys the centre is near each key's logit, and the
 * bound's slack (sum_d |q_d| (max_d - min_d) / 2) only reorders them (at
 * 32k the best 124 groups by bound held 0.69 of the region's mass, by
 * centre 0.89, by their exact best key 0.95). The keys outside the region
 * are shortlisted CPU_GROUP_OUTSIDE budgets' worth: Quest's best pages,
 * by their centres too (0.908 of the mass at 32k against 0.881 by bound);
 * HiP's search as without a region (its blocks by position, ranked by
 * page bound, its last round by exact logit). The region adds a budget's
 * worth of groups. Of the shortlist the budget's worth of keys with the
 * largest exact logit (the max over the KV head's query heads) is kept:
 * 3 budgets of keys scored, each step for Quest, on refresh steps for
 * HiP, whose steps between reuse the choice (no re-rank: its candidates
 * are positional blocks). A budget covering the cache keeps every key,
 * in the dense order.
 */
#include "engine/cpu-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A region smaller than this many pages stays with the positional pages. */
#define CPU_GROUP_MIN_PAGES 4
/* The keys outside the region a shortlist takes, in budgets (measured at
 * 32k: 1 left a third of their mass behind, 2 reached the oracle's 0.96
 * with hip; see doc/EVALS.md, session 12). */
#define CPU_GROUP_OUTSIDE 2
/* The grouping's stack of ranges: 4 + 4 log2(n) entries for n < 2^31. */
#define CPU_GROUP_STACK 128

/* Size the per-thread scratch for the region and the pages. */
static void cpu_group_scratch(struct cpu *c)
{
	size_t nt = (size_t)pool_size(c->pool);
	uint32_t n = c->grp.n_keys, hd = c->hp.head_dim;
	/* the pages as sparse_pages_ensure makes them for this page size (the
	 * region is found before they are) */
	uint32_t units = (c->cfg.n_ctx + c->grp.page - 1) / c->grp.page + c->grp.n_groups;
	if (c->grp_x_cap < n) {
		free(c->grp_x);
		free(c->grp_xs);
		c->grp_x_cap = n;
		c->grp_x = xmallocarray(nt * n * hd, sizeof(float));
		c->grp_xs = xmallocarray(nt * n, sizeof(float));
	}
	if (c->grp_stack == NULL)
		c->grp_stack = xmallocarray(nt * CPU_GROUP_STACK, sizeof(uint32_t));
	if (c->grp_u_cap < units) {
		free(c->grp_ub);
		free(c->grp_scr);
		free(c->grp_sel);
		free(c->grp_iota);
		c->grp_u_cap = units;
		c->grp_ub = xmallocarray(nt * units, sizeof(float));
		c->grp_scr = xmallocarray(nt * units, sizeof(float));
		c->grp_sel = xmallocarray(nt * units, 1);
		c->grp_iota = xmallocarray(units, sizeof(uint32_t));
		for (uint32_t i = 0; i < units; i++)
			c->grp_iota[i] = i;
	}
	if (c->grp_ord_cap < c->sp_vis_cap) {
		free(c->grp_ord);
		free(c->grp_unit);
		free(c->grp_lg);
		free(c->grp_lscr);
		free(c->grp_keep);
		c->grp_ord_cap = c->sp_vis_cap;
		c->grp_ord = xmallocarray(nt * c->grp_ord_cap, sizeof(uint32_t));
		c->grp_unit = xmallocarray(nt * c->grp_ord_cap, sizeof(uint32_t));
		c->grp_lg = xmallocarray(nt * c->grp_ord_cap, sizeof(float));
		c->grp_lscr = xmallocarray(nt * c->grp_ord_cap, sizeof(float));
		c->grp_keep = xmallocarray(nt * c->grp_ord_cap, 1);
	}
}

void cpu_group_region(struct cpu *c)
{
	const struct engine_sparse *s = c->sparse;
	uint32_t k0 = c->sp_sinks, k1 = c->sp_m - c->sp_recent, r0 = 0, rn = 0;
	c->grp_r0 = c->grp_r1 = 0;
	/* a page of one key is exact already; the per-head store's keys are
	 * not laid out by slot */
	if (s->page <= 1 || c->rows != NULL)
		return;
	for (uint32_t k = k0; k < k1;) {
		uint32_t e = k + 1;
		while (e < k1 && c->vpos[e] == c->vpos[k])
			e++;
		if (e - k > rn) {
			r0 = k;
			rn = e - k;
		}
		k = e;
	}
	if (rn < CPU_GROUP_MIN_PAGES * s->page)
		return;
	sparse_groups_ensure(&c->grp, s->page, c->cfg.n_ctx, c->hp.n_layer, c->hp.n_head_kv,
	                     c->hp.head_dim, c->kv_es);
	sparse_groups_match(&c->grp, c->vslot + r0, rn, c->vpos[r0]);
	c->grp_r0 = r0;
	c->grp_r1 = r0 + rn;
	cpu_group_scratch(c);
}

/* Group layer l, KV head h of the region if it is stale (thread ith). */
static void cpu_group_ready(struct cpu *c, uint32_t l, uint32_t h, int ith)
{
	struct sparse_groups *g = &c->grp;
	if (!g->stale[(size_t)l * g->n_head_kv + h])
		return;
	struct sparse_keys k = { c->kr, c->kv_row, c->kr_pos, c->slot_pos, c->ops, NULL, 0 };
	sparse_groups_build(g, &k, l, h, c->grp_x + (size_t)ith * c->grp_x_cap * c->hp.head_dim,
	                    c->grp_xs + (size_t)ith * c->grp_x_cap,
	                    c->grp_stack + (size_t)ith * CPU_GROUP_STACK);
}

/* The centre logit (q.(min + max) / 2, the max over KV head h's query
 * heads), times scale, of the groups list (n) of layer l into out (n). */
static void cpu_group_centres(struct cpu *c, uint32_t l, uint32_t h, int ith, float scale,
                              const uint32_t *list, uint32_t n, float *out)
{
	cpu_bound_rows(c, h, ith, scale, 0.0f, sparse_groups_at(&c->grp, l, h, 0),
	               (int64_t)2 * c->hp.head_dim, list, n, out);
}

/* The exact logit (unscaled q.k, the max over KV head h's query heads) of
 * the n keys slots (layer l) into out (n). */
static void cpu_group_logits(struct cpu *c, uint32_t l, uint32_t h, int ith, const uint32_t *slots,
                             uint32_t n, float *out)
{
	uint32_t hd = c->hp.head_dim, grp = c->hp.n_head / c->hp.n_head_kv, vc = c->vis_cap;
	float *sc = c->scores + (size_t)ith * c->q_rows * vc; /* (KERN_ATT_Q, vis_cap) */
	uint64_t head_off = (uint64_t)h * hd * c->kv_es;
	for (uint32_t i = 0; i < n; i++)
		out[i] = -INFINITY;
	for (uint32_t r0 = 0; r0 < grp && n > 0; r0 += KERN_ATT_Q) {
		uint32_t nq = KVS_MIN((uint32_t)KERN_ATT_Q, grp - r0);
		c->ops->att_scores_rows(c->q + (size_t)(h * grp + r0) * hd, (int)nq, (int)hd,
		                        c->kr[l] + head_off, (int64_t)c->kv_row, c->kv_es == 2, slots, n,
		                        1.0f, sc, vc);
		for (uint32_t r = 0; r < nq; r++)
			for (uint32_t i = 0; i < n; i++)
				out[i] = sc[(size_t)r * vc + i] > out[i] ? sc[(size_t)r * vc + i] : out[i];
	}
}

void cpu_group_quest(struct cpu_job *jb, uint32_t l, uint32_t h, int ith, uint32_t k_units,
                     uint8_t *mask)
{
	struct cpu *c = jb->c;
	const struct sparse_groups *g = &c->grp;
	uint32_t np = c->sp.n_pages, ng = g->n_groups, pc = c->sp_pages_cap;
	uint32_t k0 = c->sp_sinks, k1 = c->sp_m - c->sp_recent, r0 = c->grp_r0, r1 = c->grp_r1;
	size_t tu = (size_t)ith * c->grp_u_cap, tv = (size_t)ith * c->grp_ord_cap;
	float *ub = c->grp_ub + tu; /* (np + ng) pages, then groups */
	uint8_t *sel = c->grp_sel + tu;
	cpu_group_ready(c, l, h, ith);
	/* the pages with candidates ranked by their centres too (sp_ub keeps
	 * their bounds, for the note): at 32k 0.908 of the mass against 0.881
	 * by bound */
	float *got = c->grp_lg + tv; /* (sp_np), free until the exact scores */
	int64_t pstride = (int64_t)c->hp.n_head_kv * 2 * c->hp.head_dim;
	cpu_bound_rows(c, h, ith, 1.0f, 0.0f, sparse_pages_at(&c->sp, l, 0, h), pstride, c->sp_plist,
	               c->sp_np, got);
	for (uint32_t p = 0; p < np; p++)
		ub[p] = -INFINITY;
	for (uint32_t i = 0; i < c->sp_np; i++)
		ub[c->sp_plist[i]] = got[i];
	cpu_group_centres(c, l, h, ith, 1.0f, c->grp_iota, ng, ub + np);
	/* the shortlist: the best pages and the best groups by their centres,
	 * each kind ranked among its own */
	sparse_top(ub, np, k_units * CPU_GROUP_OUTSIDE, c->grp_scr + tu, sel);
	sparse_top(ub + np, ng, k_units, c->grp_scr + tu, sel + np);
	memcpy(c->sp_psel + (size_t)h * pc, sel, np); /* the pages' part, for the note */
	const uint8_t *gsel = sel + np;
	const uint32_t *gid = g->gid + ((size_t)l * g->n_head_kv + h) * g->cap;
	uint32_t *slot = c->grp_ord + tv, *at = c->grp_unit + tv, n = 0;
	for (uint32_t k = k0; k < k1; k++) {
		bool on = k >= r0 && k < r1 ? gsel[gid[k - r0]] : sel[c->sp_kpage[k]];
		mask[k] = 0;
		slot[n] = c->vslot[k];
		at[n] = k;
		n += on;
	}
	/* their keys scored exactly: the best k_units x page of them */
	float *lg = c->grp_lg + tv;
	uint8_t *keep = c->grp_keep + tv;
	cpu_group_logits(c, l, h, ith, slot, n, lg);
	sparse_top(lg, n, k_units * c->sparse->page, c->grp_lscr + tv, keep);
	for (uint32_t i = 0; i < n; i++)
		mask[at[i]] = keep[i];
}

void cpu_group_hip(struct cpu_job *jb, uint32_t l, uint32_t h, int ith, uint32_t k_blocks,
                   uint8_t *kept)
{
	struct cpu *c = jb->c;
	const struct engine_sparse *s = c->sparse;
	const struct sparse_groups *g = &c->grp;
	uint32_t bk = s->block, page = s->page, ng = g->n_groups, vc = c->sp_vis_cap;
	uint32_t k0 = c->sp_sinks, k1 = c->sp_m - c->sp_recent, r0 = c->grp_r0, r1 = c->grp_r1;
	uint32_t grp = c->hp.n_head / c->hp.n_head_kv;
	size_t tu = (size_t)ith * c->grp_u_cap, tv = (size_t)ith * c->grp_ord_cap;
	/* the candidates outside the region, in position order, blocks of bk
	 * ranked by their largest page bound (sp_ub, scaled) as HiP's are */
	uint32_t *ord = c->grp_ord + tv, na = 0;
	for (uint32_t k = k0; k < k1; k++)
		if (k < r0 || k >= r1)
			ord[na++] = c->vslot[k];
	uint32_t nb = (na + bk - 1) / bk;
	const float *ubh = c->sp_ub + (size_t)h * c->sp_pages_cap;
	float *bub = c->hip_bub + (size_t)ith * vc;
	for (uint32_t b = 0; b < nb; b++)
		bub[b] = -INFINITY;
	for (uint32_t i = 0; i < na; i++)
		bub[i / bk] = ubh[ord[i] / page] > bub[i / bk] ? ubh[ord[i] / page] : bub[i / bk];
	struct cpu_hip_ctx x = { c,   l,   h,  0, na, ith, c->q + (size_t)h * grp * c->hp.head_dim,
		                     grp, bub, ord };
	uint8_t *blk = c->hip_blk + (size_t)ith * vc;
	struct sparse_tree *t = &c->hip_tree[ith];
	uint64_t scored = 0;
	sparse_tree_ensure(t, nb);
	uint32_t ko = k_blocks * CPU_GROUP_OUTSIDE;
	sparse_hip_tree_beam(t, nb, ko, ko * s->beam, cpu_hip_score, &x, blk, &scored);
	/* the region's shortlist: as many keys' worth of groups, best centre first */
	cpu_group_ready(c, l, h, ith);
	cpu_group_centres(c, l, h, ith, 1.0f, c->grp_iota, ng, c->grp_ub + tu);
	uint8_t *gsel = c->grp_sel + tu;
	sparse_top(c->grp_ub + tu, ng, (k_blocks * bk + page - 1) / page, c->grp_scr + tu, gsel);
	/* both sets' keys scored exactly: the best k_blocks x block are kept */
	const uint32_t *gid = g->gid + ((size_t)l * g->n_head_kv + h) * g->cap;
	uint32_t *cand = c->hip_list + (size_t)ith * vc, n = 0;
	for (uint32_t i = 0; i < na; i++) {
		kept[ord[i]] = 0;
		cand[n] = ord[i];
		n += blk[i / bk];
	}
	for (uint32_t k = r0; k < r1; k++) {
		kept[c->vslot[k]] = 0;
		cand[n] = c->vslot[k];
		n += gsel[gid[k - r0]];
	}
	float *lg = c->grp_lg + tv;
	uint8_t *keep = c->grp_keep + tv;
	cpu_group_logits(c, l, h, ith, cand, n, lg);
	sparse_top(lg, n, k_blocks * bk, c->grp_lscr + tv, keep);
	for (uint32_t i = 0; i < n; i++)
		kept[cand[i]] = keep[i];
}

void cpu_group_free(struct cpu *c)
{
	sparse_groups_free(&c->grp);
	free(c->grp_x);
	free(c->grp_xs);
	free(c->grp_stack);
	free(c->grp_ub);
	free(c->grp_scr);
	free(c->grp_sel);
	free(c->grp_iota);
	free(c->grp_ord);
	free(c->grp_unit);
	free(c->grp_lg);
	free(c->grp_lscr);
	free(c->grp_keep);
}
