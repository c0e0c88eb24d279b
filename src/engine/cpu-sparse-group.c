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
 * Quest ranks pages and groups together by the same bound (a group holds
 * `page` keys, a page's worth of budget) and attends the chosen units'
 * keys in position order, so a budget covering the cache still lists
 * every key in the dense order. HiP runs its search over the candidates
 * in an order where the region's keys follow their groups (its blocks of
 * `block` keys are then halves of groups, and its halving tree a tree over
 * content, the grouping being a kd-tree's leaves), a half ranked by the
 * largest page or group bound over its keys; its re-rank keeps each
 * candidate block's units (pages, or n_pages + group) and bounds both.
 */
#include "engine/cpu-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A region smaller than this many pages stays with the positional pages. */
#define CPU_GROUP_MIN_PAGES 4
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
		free(c->grp_pidx);
		free(c->grp_iota);
		c->grp_u_cap = units;
		c->grp_ub = xmallocarray(nt * units, sizeof(float));
		c->grp_scr = xmallocarray(nt * units, sizeof(float));
		c->grp_sel = xmallocarray(nt * units, 1);
		c->grp_pidx = xmallocarray(nt * units, sizeof(uint32_t));
		c->grp_iota = xmallocarray(units, sizeof(uint32_t));
		for (uint32_t i = 0; i < units; i++)
			c->grp_iota[i] = i;
	}
	if (c->grp_ord_cap < c->sp_vis_cap) {
		free(c->grp_ord);
		free(c->grp_unit);
		c->grp_ord_cap = c->sp_vis_cap;
		c->grp_ord = xmallocarray(nt * c->grp_ord_cap, sizeof(uint32_t));
		c->grp_unit = xmallocarray(nt * c->grp_ord_cap, sizeof(uint32_t));
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

/* The bound, times scale, of the groups list (n) of layer l, KV head h
 * into out (n). */
static void cpu_group_bounds(struct cpu *c, uint32_t l, uint32_t h, int ith, float scale,
                             const uint32_t *list, uint32_t n, float *out)
{
	cpu_bound_rows(c, h, ith, scale, sparse_groups_at(&c->grp, l, h, 0),
	               (int64_t)2 * c->hp.head_dim, list, n, out);
}

void cpu_group_quest(struct cpu_job *jb, uint32_t l, uint32_t h, int ith, uint32_t k_units,
                     uint8_t *mask)
{
	struct cpu *c = jb->c;
	const struct sparse_groups *g = &c->grp;
	uint32_t np = c->sp.n_pages, ng = g->n_groups, pc = c->sp_pages_cap;
	uint32_t k0 = c->sp_sinks, k1 = c->sp_m - c->sp_recent, r0 = c->grp_r0, r1 = c->grp_r1;
	float *ub = c->grp_ub + (size_t)ith * c->grp_u_cap; /* (np + ng) pages, then groups */
	uint8_t *sel = c->grp_sel + (size_t)ith * c->grp_u_cap;
	cpu_group_ready(c, l, h, ith);
	memcpy(ub, c->sp_ub + (size_t)h * pc, np * sizeof(float));
	cpu_group_bounds(c, l, h, ith, 1.0f, c->grp_iota, ng, ub + np);
	sparse_top(ub, np + ng, k_units, c->grp_scr + (size_t)ith * c->grp_u_cap, sel);
	uint8_t *psel = c->sp_psel + (size_t)h * pc; /* the pages' part, for the note */
	memcpy(psel, sel, np);
	const uint8_t *gsel = sel + np;
	const uint32_t *gid = g->gid + ((size_t)l * g->n_head_kv + h) * g->cap;
	for (uint32_t k = k0; k < r0; k++)
		mask[k] = psel[c->sp_kpage[k]];
	for (uint32_t k = r0; k < r1; k++)
		mask[k] = gsel[gid[k - r0]];
	for (uint32_t k = r1; k < k1; k++)
		mask[k] = psel[c->sp_kpage[k]];
}

void cpu_group_hip_order(struct cpu *c, uint32_t l, uint32_t h, int ith, const float *ubh,
                         float scale, uint32_t *ord, uint32_t *unit, float *bub)
{
	const struct sparse_groups *g = &c->grp;
	uint32_t np = c->sp.n_pages, ng = g->n_groups, bk = c->sparse->block;
	uint32_t k0 = c->sp_sinks, k1 = c->sp_m - c->sp_recent, r0 = c->grp_r0, r1 = c->grp_r1;
	float *gub = c->grp_ub + (size_t)ith * c->grp_u_cap; /* (ng) */
	const uint32_t *perm = g->perm + ((size_t)l * g->n_head_kv + h) * g->cap;
	cpu_group_ready(c, l, h, ith);
	cpu_group_bounds(c, l, h, ith, scale, c->grp_iota, ng, gub);
	uint32_t i = 0;
	for (uint32_t k = k0; k < r0; k++, i++) {
		ord[i] = c->vslot[k];
		unit[i] = c->sp_kpage[k];
	}
	for (uint32_t j = 0; j < r1 - r0; j++, i++) {
		ord[i] = g->slot[perm[j]];
		unit[i] = np + j / g->page;
	}
	for (uint32_t k = r1; k < k1; k++, i++) {
		ord[i] = c->vslot[k];
		unit[i] = c->sp_kpage[k];
	}
	for (uint32_t b = 0; b < (k1 - k0 + bk - 1) / bk; b++)
		bub[b] = -INFINITY;
	for (i = 0; i < k1 - k0; i++) {
		float u = unit[i] < np ? ubh[unit[i]] : gub[unit[i] - np];
		float *d = &bub[i / bk];
		*d = u > *d ? u : *d;
	}
}

void cpu_group_bound_units(struct cpu *c, uint32_t l, uint32_t h, int ith, const uint32_t *units,
                           uint32_t n, float *out)
{
	uint32_t np = c->sp.n_pages, ng = c->grp.n_groups;
	/* a re-rank step runs no search: the search's buffers hold the lists */
	uint32_t *pl = c->grp_pidx + (size_t)ith * c->grp_u_cap;      /* (n) page ids */
	uint32_t *pat = c->grp_ord + (size_t)ith * c->grp_ord_cap;    /* (n) their index in units */
	uint32_t *gl = c->hip_keys + (size_t)ith * c->sp_vis_cap;     /* (n) group ids */
	uint32_t *gat = c->hip_list + (size_t)ith * c->sp_vis_cap;    /* (n) their index */
	float *pout = c->grp_ub + (size_t)ith * c->grp_u_cap;
	float *gout = c->grp_scr + (size_t)ith * c->grp_u_cap;
	uint32_t n_p = 0, n_g = 0;
	for (uint32_t i = 0; i < n; i++)
		if (units[i] < np) {
			pl[n_p] = units[i];
			pat[n_p++] = i;
		} else if (ALWAYS(units[i] - np < ng)) { /* the refresh's grouping stands */
			gl[n_g] = units[i] - np;
			gat[n_g++] = i;
		} else {
			out[i] = INFINITY; /* never dropped for a bound it cannot have */
		}
	cpu_bound_rows(c, h, ith, 1.0f, sparse_pages_at(&c->sp, l, 0, h),
	               (int64_t)c->hp.n_head_kv * 2 * c->hp.head_dim, pl, n_p, pout);
	cpu_group_bounds(c, l, h, ith, 1.0f, gl, n_g, gout);
	for (uint32_t j = 0; j < n_p; j++)
		out[pat[j]] = pout[j];
	for (uint32_t j = 0; j < n_g; j++)
		out[gat[j]] = gout[j];
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
	free(c->grp_pidx);
	free(c->grp_iota);
	free(c->grp_ord);
	free(c->grp_unit);
}
