/*
 * cpu-sparse.c: the CPU backend's sparse decode attention (engine_sparse,
 * Quest): the page bounds over the rotated keys kept up to date, the
 * choice of keys per (layer, KV head), and the split decode attention over
 * the chosen keys only.
 *
 * A sparse step adds, to a dense decode step: the sync of the bounds (every
 * thread, after the keys are refreshed: thread 0 folds new keys into clean
 * pages and lists the dirty ones, all threads recompute those), and per
 * sparse layer one phase between the q/k/v products and attention: each
 * thread takes whole KV heads, bounds their pages, chooses the best
 * (sparse_top) and lists their keys in position order, with the sinks and
 * the recent window; after a barrier the attention reads only the listed
 * keys, split across the threads as a dense step's are. The list keeps
 * the sorted order and the thread shares of the dense split, so a choice of
 * every key gives the dense step's result bit for bit.
 *
 * HiP (engine_sparse hip) runs a tree search over blocks of keys
 * consecutive by position (sparse_hip_tree) on a refresh step only: the
 * choice is kept per (layer, KV head) and slot in c->hip and reused, with
 * every key the search did not score, until the next refresh. Its rounds
 * rank halves of several blocks by the largest page bound over their keys
 * (Quest's bounds, synced on refresh steps only, scored once per refresh
 * and head) and the last round the candidate blocks by their true max
 * logit (the attention-score kernel over their keys). The attention after
 * the choice is the same split as Quest's. With rerank the refresh also
 * keeps, per (layer, KV head), its last round's best blocks as candidates
 * (their keys' slots and pages, in c->hip), and a step between bounds
 * only those pages with its query and re-marks the K best blocks' keys in
 * the kept choice; the list is then built as on any reuse step.
 *
 * Where whole score rows are needed (want_attn, per-key sums, Λ-masks, the
 * reference path) cpu_attend scores every key and masks the ones not
 * chosen (sp_mask), so the result is the same function; with want_attn it
 * reports the dense weights of the same query and the mask in bo->sel.
 */
#include "engine/cpu-int.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* The rotated keys as sparse.c sees them; skip: the batch's own slots. */
static struct sparse_keys cpu_sparse_keys(const struct cpu *c, const uint32_t *skip,
                                          uint32_t n_skip)
{
	struct sparse_keys k = { c->kr, c->kv_row, c->kr_pos, c->slot_pos, c->ops, skip, n_skip };
	return k;
}

/* Whether the choice kept in h was made under spec s. */
static bool cpu_hip_same(const struct sparse_hip *h, const struct engine_sparse *s)
{
	return h->valid && h->spec.budget == s->budget && h->spec.block == s->block &&
	        h->spec.page == s->page && h->spec.sinks == s->sinks && h->spec.recent == s->recent &&
	        h->spec.dense_layers == s->dense_layers && h->spec.refresh == s->refresh &&
	        h->spec.beam == s->beam && h->spec.rerank == s->rerank;
}

/* The best blocks of a search's last round a refresh keeps as candidates
 * for the steps until the next to re-rank: rerank thousandths of the
 * k_blocks it chooses, at least those (the block after each chosen one
 * is a candidate besides). */
static uint32_t cpu_hip_n_cand(const struct engine_sparse *s, uint32_t k_blocks)
{
	uint64_t n = ((uint64_t)s->rerank * k_blocks + 999) / 1000;
	return (uint32_t)KVS_MAX(n, (uint64_t)k_blocks);
}

/* Size the candidates' arrays for spec s (rerank on): the most keys a
 * (layer, KV head)'s candidate blocks hold at this budget. */
static void cpu_hip_cand_alloc(struct sparse_hip *h, const struct engine_sparse *s)
{
	uint32_t k_max = (s->budget + s->block - 1) / s->block;
	/* the best, and a next block for each chosen one */
	uint64_t cap = ((uint64_t)cpu_hip_n_cand(s, k_max) + k_max) * s->block;
	if (h->cand_slot != NULL && h->cand_cap == cap)
		return;
	free(h->cand_slot);
	free(h->cand_first);
	free(h->cand_page);
	free(h->cand_bp);
	free(h->cand_bpf);
	free(h->cand_on);
	size_t lh = (size_t)h->n_layer * h->n_head_kv;
	h->cand_cap = (uint32_t)cap;
	h->cand_slot = xmallocarray(lh * cap, sizeof(uint32_t));
	h->cand_first = xmallocarray(lh * (cap + 1), sizeof(uint32_t));
	h->cand_page = xmallocarray(lh * cap, sizeof(uint32_t));
	h->cand_bp = xmallocarray(lh * cap, sizeof(uint32_t));
	h->cand_bpf = xmallocarray(lh * (cap + 1), sizeof(uint32_t));
	h->cand_on = xmallocarray(lh * cap, 1);
	if (h->cand_nb == NULL) {
		h->cand_nb = xcalloc(lh, sizeof(uint32_t));
		h->cand_np = xcalloc(lh, sizeof(uint32_t));
	}
}

/* Size the refresh's lists for spec s: a choice holds at most the
 * budget's keys (groups), or its blocks' (budget - sinks - window rounded
 * up to a block); a larger one is not listed, and its steps scan. */
static void cpu_hip_ref_alloc(struct sparse_hip *h, const struct engine_sparse *s)
{
	uint32_t cap = KVS_MIN(h->n_ctx, s->budget + s->block);
	size_t lh = (size_t)h->n_layer * h->n_head_kv;
	if (h->ref_vslot == NULL) {
		h->ref_vslot = xmallocarray(h->n_ctx, sizeof(uint32_t));
		h->ref_n = xmallocarray(lh, sizeof(uint32_t));
	}
	if (h->ref_list == NULL || h->ref_cap != cap) {
		free(h->ref_list);
		h->ref_cap = cap;
		h->ref_list = xmallocarray(lh * cap, sizeof(uint32_t));
	}
}

/* Decide whether this hip step (query at pos) chooses anew: the first
 * step, a changed spec, every refresh-th step, a step back in position
 * (a new pass over the same slots), or more unscored candidates than a
 * quarter of the budget (a prefill or a compaction since); on a refresh,
 * note which slots are scored, at which positions. */
static void cpu_hip_prepare(struct cpu *c, int32_t pos)
{
	struct sparse_hip *h = &c->hip;
	const struct engine_sparse *s = c->sparse;
	if (h->chosen == NULL) {
		h->n_ctx = c->cfg.n_ctx;
		h->n_layer = c->hp.n_layer;
		h->n_head_kv = c->hp.n_head_kv;
		h->chosen = xcalloc((size_t)h->n_layer * h->n_head_kv * h->n_ctx, 1);
		h->seen_pos = xmallocarray(h->n_ctx, sizeof(int32_t));
		for (uint32_t i = 0; i < h->n_ctx; i++)
			h->seen_pos[i] = -1;
	}
	uint32_t k0 = c->sp_sinks, k1 = c->sp_m - c->sp_recent, unseen = 0, moved = 0;
	/* the refresh's candidates counted apart: one of them unscored now
	 * (moved, rewritten) means they are not in place */
	uint32_t kr = h->valid ? KVS_MIN(h->ref_k1, k1) : k0, k = k0;
	for (; k < kr; k++)
		moved += h->seen_pos[c->vslot[k]] != c->vpos[k];
	for (unseen = moved; k < k1; k++)
		unseen += h->seen_pos[c->vslot[k]] != c->vpos[k];
	h->refresh = !cpu_hip_same(h, s) || h->age + 1 >= s->refresh || pos <= h->last_pos ||
	        unseen > KVS_MAX(s->budget / 4, s->refresh);
	h->last_pos = pos;
	if (!h->refresh) {
		h->age++;
		h->in_place = moved == 0 && k0 == h->ref_k0 && k1 >= h->ref_k1 &&
		        memcmp(c->vslot, h->ref_vslot, (size_t)h->ref_k1 * sizeof(uint32_t)) == 0;
		return;
	}
	h->age = 0;
	h->valid = true;
	h->spec = *s;
	h->in_place = false;
	if (s->rerank > 0)
		cpu_hip_cand_alloc(h, s);
	cpu_hip_ref_alloc(h, s);
	for (uint32_t i = 0; i < h->n_ctx; i++)
		h->seen_pos[i] = -1;
	for (k = k0; k < k1; k++)
		h->seen_pos[c->vslot[k]] = c->vpos[k];
	memcpy(h->ref_vslot, c->vslot, (size_t)k1 * sizeof(uint32_t));
	h->ref_k0 = k0;
	h->ref_k1 = k1;
	for (size_t i = 0; i < (size_t)h->n_layer * h->n_head_kv; i++)
		h->ref_n[i] = UINT32_MAX; /* until the refresh lists its choice */
}

/* Size the per-visible-slot and per-thread buffers of a sparse forward. */
static void cpu_sparse_buffers(struct cpu *c)
{
	uint32_t nkv = c->hp.n_head_kv;
	size_t nt = (size_t)pool_size(c->pool);
	if (c->sp_vis_cap < c->vis_cap) {
		free(c->sp_list);
		free(c->sp_mask);
		free(c->sp_kpage);
		free(c->hip_blk);
		free(c->hip_cblk);
		free(c->hip_keys);
		free(c->hip_kn);
		free(c->hip_bub);
		free(c->hip_list);
		c->sp_vis_cap = c->vis_cap;
		c->sp_kpage = xmallocarray(c->sp_vis_cap, sizeof(uint32_t));
		c->sp_list = xmallocarray((size_t)nkv * c->sp_vis_cap, sizeof(uint32_t));
		c->sp_mask = xmallocarray((size_t)nkv * c->sp_vis_cap, 1);
		c->hip_blk = xmallocarray(nt * c->sp_vis_cap, 1);
		c->hip_cblk = xmallocarray(nt * c->sp_vis_cap, 1);
		c->hip_keys = xmallocarray(nt * c->sp_vis_cap, sizeof(uint32_t));
		c->hip_kn = xmallocarray(nt * (c->sp_vis_cap + 1), sizeof(uint32_t));
		c->hip_bub = xmallocarray(nt * c->sp_vis_cap, sizeof(float));
		c->hip_list = xmallocarray(nt * c->sp_vis_cap, sizeof(uint32_t));
	}
	if (c->sp_n == NULL)
		c->sp_n = xmallocarray(nkv, sizeof(uint32_t));
	if (c->hip_tree == NULL) {
		c->hip_tree = xcalloc(nt, sizeof(struct sparse_tree));
		c->hip_q = xmallocarray(nt * c->fa_rows * c->hp.head_dim, sizeof(float));
		c->hip_pf = xcalloc(nt * 4, sizeof(double));
	}
}

/* Size the page bounds and their buffers for the spec's page, and list
 * the pages that hold candidates (the sorted keys between the sinks and
 * the recent window of the decode query). */
static void cpu_sparse_candidates(struct cpu *c)
{
	const struct hparams *hp = &c->hp;
	const struct engine_sparse *s = c->sparse;
	uint32_t nkv = hp->n_head_kv, m = c->sp_m;
	sparse_pages_ensure(&c->sp, s->page, c->cfg.n_ctx, hp->n_layer, hp->n_head_kv, hp->head_dim,
	                    c->kv_es);
	uint32_t np = c->sp.n_pages;
	if (c->sp_pages_cap < np) {
		free(c->sp_cand);
		free(c->sp_plist);
		free(c->sp_ub);
		free(c->sp_psel);
		free(c->sp_scr);
		free(c->hip_pidx);
		c->sp_pages_cap = np;
		c->sp_cand = xmallocarray(np, sizeof(uint32_t));
		c->sp_plist = xmallocarray(np, sizeof(uint32_t));
		c->sp_ub = xmallocarray((size_t)nkv * np, sizeof(float));
		c->sp_psel = xmallocarray((size_t)nkv * np, 1);
		c->sp_scr = xmallocarray((size_t)pool_size(c->pool) * np, sizeof(float));
		c->hip_pidx = xmallocarray((size_t)pool_size(c->pool) * np, sizeof(uint32_t));
		if (c->sp_qs == NULL)
			c->sp_qs = xmallocarray((size_t)pool_size(c->pool) * hp->n_head * 2 * hp->head_dim,
			                        sizeof(float));
	}
	memset(c->sp_cand, 0, np * sizeof(uint32_t));
	for (uint32_t k = 0; k < m; k++)
		c->sp_kpage[k] = c->vslot[k] / s->page;
	/* a region's keys are chosen by their groups, not their pages */
	for (uint32_t k = c->sp_sinks; k < m - c->sp_recent; k++)
		c->sp_cand[c->sp_kpage[k]] += k < c->grp_r0 || k >= c->grp_r1;
	c->sp_np = 0;
	for (uint32_t p = 0; p < np; p++)
		if (c->sp_cand[p] > 0)
			c->sp_plist[c->sp_np++] = p;
}

/* Under LM-Infinite's cap (dist_cap, n_global), the leading sorted keys
 * that cpu_lambda scores rotated to p - dist_cap: global and farther than
 * dist_cap from the decode query. The bounds and HiP's scores see every
 * key as rotated at its own position, so they would rank these at the
 * wrong relative rotation; they are attended as sinks instead (at most
 * n_global keys, read whatever the selection says). The kv cache's global
 * keys are its leading sinks, at the smallest positions, so the capped ones
 * lead the sorted order; a global key after a non-global one stays a
 * candidate. 0 without a cap. */
static uint32_t cpu_capped_globals(const struct cpu *c, const struct engine_batch *b)
{
	uint32_t g = 0;
	while (b->dist_cap > 0 && g < c->sp_m && c->vorder[g] < b->n_global &&
	       (int64_t)b->pos[0] - c->vpos[g] > b->dist_cap)
		g++;
	return g;
}

void cpu_sparse_prepare(struct cpu *c, const struct engine_batch *b)
{
	/* the batch overwrites its slots' keys */
	for (uint32_t i = 0; i < b->n_tokens; i++)
		cpu_sparse_forget(c, b->slot[i]);
	c->sparse = b->sparse;
	if (b->n_tokens != 1 && (b->sparse == NULL || b->sparse->mode != ENGINE_SPARSE_HIP))
		c->sparse = NULL; /* only hip prefills sparsely */
	c->sp_read = 0;
	if (b->n_tokens != 1) {
		if (c->sparse != NULL) {
			cpu_sparse_buffers(c);
			memset(c->hip_pf, 0, (size_t)pool_size(c->pool) * 4 * sizeof(double));
		}
		return;
	}
	/* keys the decode query sees: a prefix of the sorted visible set */
	uint32_t lo = 0, hi = c->n_valid;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (c->vpos[mid] <= b->pos[0])
			lo = mid + 1;
		else
			hi = mid;
	}
	c->sp_m = lo;
	if (c->sparse == NULL)
		return;
	const struct engine_sparse *s = c->sparse;
	cpu_sparse_buffers(c);
	/* sinks and the recent window (the query's own key at least) */
	uint32_t m = c->sp_m;
	c->sp_sinks = KVS_MIN(KVS_MAX(s->sinks, cpu_capped_globals(c, b)), m);
	c->sp_recent = KVS_MIN(KVS_MAX(s->recent, 1u), m - c->sp_sinks);
	c->grp_r0 = c->grp_r1 = 0;
	if (s->mode == ENGINE_SPARSE_HIP) {
		cpu_hip_prepare(c, b->pos[0]);
		if (c->hip.refresh) { /* the search ranks halves by the page bounds */
			cpu_group_region(c);
			cpu_sparse_candidates(c);
		}
		return;
	}
	if (s->mode == ENGINE_SPARSE_SQUEEZED) {
		if (!cpu_squeeze_prepare(c, b))
			c->sparse = NULL; /* no document clustered: dense */
		return;
	}
	cpu_group_region(c);
	cpu_sparse_candidates(c);
}

void cpu_sparse_sync(struct cpu_job *jb, int ith, int nth)
{
	struct cpu *c = jb->c;
	if (c->sparse->mode == ENGINE_SPARSE_SQUEEZED || jb->b->n_tokens != 1 ||
	    (c->sparse->mode == ENGINE_SPARSE_HIP && !c->hip.refresh))
		return; /* no bounds read: squeezed reads its centroids, hip's prefill
		         * and reuse steps no bounds */
	struct sparse_keys k = cpu_sparse_keys(c, jb->b->slot, jb->b->n_tokens);
	if (ith == 0)
		sparse_pages_scan(&c->sp, &k);
	pool_barrier(c->pool);
	uint32_t lo, hi;
	cpu_share(c->sp.n_dirty, ith, nth, &lo, &hi);
	sparse_pages_rebuild(&c->sp, &k, lo, hi);
	pool_barrier(c->pool);
}

bool cpu_sparse_layer(const struct cpu_job *jb, uint32_t l)
{
	const struct cpu *c = jb->c;
	/* a local layer attends densely within its window, which is already short */
	return c->sparse != NULL && jb->b->n_tokens == 1 && l >= c->sparse->dense_layers &&
	        c->L[l].window == 0;
}

/* With want_attn, the mask of layer l, KV head h into the batch's sel row. */
void cpu_sparse_report(struct cpu_job *jb, uint32_t l, uint32_t h, const uint8_t *mask)
{
	struct cpu *c = jb->c;
	uint32_t nv = jb->b->n_visible;
	if (jb->bo->sel == NULL)
		return;
	uint8_t *row = jb->bo->sel + ((size_t)l * c->hp.n_head_kv + h) * nv;
	memset(row, 0, nv);
	for (uint32_t k = 0; k < c->sp_m; k++)
		row[c->vorder[k]] = mask[k];
}

void cpu_bound_rows(struct cpu *c, uint32_t h, int ith, float scale, float reach,
                    const uint8_t *base, int64_t stride, const uint32_t *list, uint32_t n,
                    float *out)
{
	const struct hparams *hp = &c->hp;
	uint32_t nkv = hp->n_head_kv, hd = hp->head_dim, grp = hp->n_head / nkv;
	float *qs = c->sp_qs + (size_t)ith * hp->n_head * 2 * hd;
	for (uint32_t r = h * grp; r < (h + 1) * grp; r++)
		if (reach == 1.0f)
			sparse_split_q(c->q + (size_t)r * hd, hd, qs + (size_t)r * 2 * hd);
		else
			sparse_split_q_reach(c->q + (size_t)r * hd, hd, reach, qs + (size_t)r * 2 * hd);
	float *sc = c->scores + (size_t)ith * c->q_rows * c->vis_cap; /* (grp, vis_cap) */
	for (uint32_t i = 0; i < n; i++)
		out[i] = -INFINITY;
	for (uint32_t r0 = 0; r0 < grp && n > 0; r0 += KERN_ATT_Q) {
		uint32_t nq = KVS_MIN((uint32_t)KERN_ATT_Q, grp - r0);
		c->ops->att_scores_rows(qs + (size_t)(h * grp + r0) * 2 * hd, (int)nq, (int)(2 * hd), base,
		                        stride, c->kv_es == 2, list, n, scale, sc, c->vis_cap);
		for (uint32_t r = 0; r < nq; r++)
			for (uint32_t i = 0; i < n; i++) {
				float v = sc[(size_t)r * c->vis_cap + i];
				out[i] = v > out[i] ? v : out[i];
			}
	}
}

/* Quest's bound, times scale, of the np pages plist for KV head h of
 * layer l into out (np): the bounds read as rows of 2 x head_dim, a page
 * apart. */
static void cpu_bound_pages(struct cpu *c, uint32_t l, uint32_t h, int ith, float scale,
                            const uint32_t *plist, uint32_t np, float *out)
{
	int64_t stride = (int64_t)c->hp.n_head_kv * 2 * c->hp.head_dim; /* one page to the next */
	cpu_bound_rows(c, h, ith, scale, 1.0f, sparse_pages_at(&c->sp, l, 0, h), stride, plist, np,
	               out);
}

/* Quest's bound of every page with candidates for KV head h of layer l,
 * times scale, into its row of c->sp_ub (-inf for the other pages). */
static void cpu_page_bounds(struct cpu *c, uint32_t l, uint32_t h, int ith, float scale)
{
	float *ubh = c->sp_ub + (size_t)h * c->sp_pages_cap;
	float *got = c->sp_scr + (size_t)ith * c->sp_pages_cap; /* (sp_np) */
	cpu_bound_pages(c, l, h, ith, scale, c->sp_plist, c->sp_np, got);
	for (uint32_t p = 0; p < c->sp.n_pages; p++)
		ubh[p] = -INFINITY;
	for (uint32_t i = 0; i < c->sp_np; i++)
		ubh[c->sp_plist[i]] = got[i];
}

/* Quest: bound every page with candidates, keep the best, list their keys. */
static void cpu_quest_choose(struct cpu_job *jb, uint32_t l, int ith, int nth)
{
	struct cpu *c = jb->c;
	const struct hparams *hp = &c->hp;
	const struct engine_sparse *s = c->sparse;
	uint32_t nkv = hp->n_head_kv, np = c->sp.n_pages, pc = c->sp_pages_cap;
	uint32_t m = c->sp_m, vc = c->sp_vis_cap;
	uint32_t lo, hi;
	uint32_t always = c->sp_sinks + c->sp_recent;
	uint32_t k_pages = s->budget > always ? (s->budget - always + s->page - 1) / s->page : 0;
	/* whole KV heads per thread: one barrier after the choice, not one
	 * between bounding and choosing (a barrier costs a time slice on a
	 * busy machine; three KV heads on two threads cost a third more) */
	cpu_share(nkv, ith, nth, &lo, &hi);
	for (uint32_t h = lo; h < hi; h++) {
		cpu_page_bounds(c, l, h, ith, 1.0f);
		/* its pages, then its keys in position order */
		uint8_t *psel = c->sp_psel + (size_t)h * pc, *mask = c->sp_mask + (size_t)h * vc;
		uint32_t *list = c->sp_list + (size_t)h * vc, n = 0;
		/* the sinks, the chosen pages' (and groups') keys, the recent window */
		uint32_t k = 0, k1 = m - c->sp_recent;
		if (cpu_group_on(c)) {
			cpu_group_quest(jb, l, h, ith, k_pages, mask);
		} else {
			sparse_top(c->sp_ub + (size_t)h * pc, np, k_pages, c->sp_scr + (size_t)ith * pc, psel);
			for (k = c->sp_sinks; k < k1; k++)
				mask[k] = psel[c->sp_kpage[k]];
		}
		for (k = 0; k < c->sp_sinks; k++)
			mask[k] = 1;
		for (k = k1; k < m; k++)
			mask[k] = 1;
		const uint8_t *hk = cpu_head_keep(jb, l, h); /* what the head dropped stays out */
		for (k = 0; k < m; k++) {
			mask[k] = mask[k] && (hk == NULL || hk[c->vslot[k]]);
			list[n] = c->vslot[k];
			n += mask[k];
		}
		c->sp_n[h] = n;
		cpu_sparse_report(jb, l, h, mask);
		cpu_quest_note(jb, l, h, ith);
	}
}

/* The search's callback: block b is the candidates [k0 + b * block, ...).
 * With page bounds (a decode refresh), a round that still has a half of
 * several blocks ranks every half by the largest bound over its blocks;
 * otherwise (the last round; the prefill: every round) a half scores its
 * first block's max over the queries (a decode step: the KV head's query
 * heads) and its keys of the scaled q.k, by the attention-score kernel. */
void cpu_hip_score(void *ctx, const uint32_t *start, const uint32_t *size, uint32_t n, float *score)
{
	const struct cpu_hip_ctx *x = ctx;
	struct cpu *c = x->c;
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, vc = c->vis_cap, nrow = x->nq;
	uint32_t bk = c->sparse->block;
	bool ones = true;
	for (uint32_t i = 0; i < n; i++)
		ones = ones && size[i] == 1;
	if (x->bub != NULL && !ones) {
		for (uint32_t i = 0; i < n; i++) {
			score[i] = -INFINITY;
			for (uint32_t b = start[i]; b < start[i] + size[i]; b++)
				score[i] = x->bub[b] > score[i] ? x->bub[b] : score[i];
		}
		return;
	}
	uint32_t *keys = c->hip_keys + (size_t)x->ith * c->sp_vis_cap;   /* (keys scored) */
	uint32_t *kn = c->hip_kn + (size_t)x->ith * (c->sp_vis_cap + 1); /* (n) */
	uint32_t nk = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t a = x->k0 + start[i] * bk, e = KVS_MIN(a + bk, x->k1);
		kn[i] = e - a;
		for (uint32_t k = a; k < e; k++)
			keys[nk++] = x->ord != NULL ? x->ord[k - x->k0] : c->vslot[k];
		score[i] = -INFINITY;
	}
	float *sc = c->scores + (size_t)x->ith * c->q_rows * vc; /* (KERN_ATT_Q, vis_cap) */
	uint64_t head_off = (uint64_t)x->h * hd * c->kv_es;
	for (uint32_t r0 = 0; r0 < nrow; r0 += KERN_ATT_Q) {
		uint32_t nq = KVS_MIN((uint32_t)KERN_ATT_Q, nrow - r0);
		c->ops->att_scores_rows(x->q + (size_t)r0 * hd, (int)nq, (int)hd, c->kr[x->l] + head_off,
		                        (int64_t)c->kv_row, c->kv_es == 2, keys, nk, hp->attn_scale, sc,
		                        vc);
		for (uint32_t r = 0; r < nq; r++) {
			const float *sr = sc + (size_t)r * vc;
			for (uint32_t i = 0, off = 0; i < n; off += kn[i], i++)
				for (uint32_t j = 0; j < kn[i]; j++)
					score[i] = sr[off + j] > score[i] ? sr[off + j] : score[i];
		}
	}
}

/* With rerank, keep for layer l, KV head h the candidate blocks the steps
 * until the next refresh re-rank (sparse_hip_candidates over the search
 * t, which chose blk), their keys' slots block by block, the
 * distinct pages those lie in, and per block the pages it lies in (as
 * indices into that list, so that a re-rank looks no slot up). None when
 * the search ran no round. */
static void cpu_hip_keep_candidates(struct cpu *c, uint32_t l, uint32_t h, int ith,
                                    struct sparse_tree *t, const uint8_t *blk, uint32_t n_blocks,
                                    uint32_t k_blocks)
{
	struct sparse_hip *hs = &c->hip;
	const struct engine_sparse *s = c->sparse;
	uint32_t bk = s->block, cap = hs->cand_cap, k0 = c->sp_sinks, k1 = c->sp_m - c->sp_recent;
	size_t lh = (size_t)l * c->hp.n_head_kv + h;
	uint8_t *cand = c->hip_cblk + (size_t)ith * c->sp_vis_cap; /* (n_blocks) */
	uint32_t n_cand = KVS_MIN(cpu_hip_n_cand(s, k_blocks), cap / bk - k_blocks);
	hs->cand_nb[lh] = 0;
	if (t->n_last == 0)
		return; /* every block chosen (or none): nothing to re-rank */
	sparse_hip_candidates(t, blk, n_blocks, n_cand, cand);
	uint32_t *slot = hs->cand_slot + lh * cap, *first = hs->cand_first + lh * (cap + 1);
	uint32_t *pages = hs->cand_page + lh * cap, *bp = hs->cand_bp + lh * cap;
	uint32_t *bpf = hs->cand_bpf + lh * (cap + 1);
	uint8_t *on = hs->cand_on + lh * cap;
	/* per page of the cache its index in pages + 1 (0: not listed yet) */
	uint32_t *idx = c->hip_pidx + (size_t)ith * c->sp_pages_cap;
	uint32_t n = 0, nb = 0, np = 0, nbp = 0;
	memset(idx, 0, c->sp.n_pages * sizeof(uint32_t));
	for (uint32_t i = 0; i < n_blocks; i++) {
		if (!cand[i])
			continue;
		first[nb] = n;
		on[nb] = blk[i];
		bpf[nb++] = nbp;
		for (uint32_t k = k0 + i * bk; k < KVS_MIN(k0 + (i + 1) * bk, k1); k++) {
			uint32_t sl = c->vslot[k], p = sl / s->page;
			slot[n++] = sl;
			if (idx[p] == 0) {
				pages[np++] = p;
				idx[p] = np;
			}
			/* a block's keys run in position order, so its pages mostly repeat */
			bool have = false;
			for (uint32_t j = bpf[nb - 1]; j < nbp && !have; j++)
				have = bp[j] == idx[p] - 1;
			if (!have)
				bp[nbp++] = idx[p] - 1;
		}
	}
	first[nb] = n;
	bpf[nb] = nbp;
	hs->cand_nb[lh] = nb;
	hs->cand_np[lh] = np;
}

/* A step between refreshes with rerank: bound layer l, KV head h's
 * candidate pages with this step's query, and mark in kept (by slot) the
 * keys of the k_blocks candidate blocks that rank best, the other
 * candidates' keys unmarked. */
static void cpu_hip_rerank(struct cpu *c, uint32_t l, uint32_t h, int ith, uint32_t k_blocks,
                           uint8_t *kept)
{
	struct sparse_hip *hs = &c->hip;
	size_t lh = (size_t)l * c->hp.n_head_kv + h;
	uint32_t cap = hs->cand_cap, nb = hs->cand_nb[lh];
	const uint32_t *slot = hs->cand_slot + lh * cap, *first = hs->cand_first + lh * (cap + 1);
	float *ub = c->sp_scr + (size_t)ith * c->sp_pages_cap; /* (cand_np) */
	struct sparse_tree *t = &c->hip_tree[ith];
	cpu_bound_pages(c, l, h, ith, 1.0f, hs->cand_page + lh * cap, hs->cand_np[lh], ub);
	sparse_tree_ensure(t, nb);
	sparse_hip_rerank(hs->cand_bp + lh * cap, hs->cand_bpf + lh * (cap + 1), nb, ub, k_blocks,
	                  t->score, t->scr, t->sel);
	uint8_t *on = hs->cand_on + lh * cap;
	for (uint32_t i = 0; i < nb; i++) {
		if (t->sel[i] == on[i])
			continue; /* most blocks keep their mark: rewrite the others only */
		on[i] = t->sel[i];
		for (uint32_t j = first[i]; j < first[i + 1]; j++)
			kept[slot[j]] = t->sel[i];
	}
}

/* HiP: on a refresh step search each KV head's blocks and keep the
 * choice; on a reuse step attend what was chosen (with rerank: what this
 * step's re-rank of the refresh's candidates chose) and what was not
 * scored. */
/* The split path's list of KV head h, layer l (it reads no mask): the
 * sinks, the chosen or unscored candidates, the window; its length. A
 * refresh lists its choice for the steps between; such a step, its
 * candidates in place and its choice not re-ranked since, copies that
 * list instead of scanning every candidate (O(budget), not O(cache)). */
static uint32_t cpu_hip_list(struct cpu *c, uint32_t l, uint32_t h, const uint8_t *kept,
                             uint32_t *list)
{
	struct sparse_hip *hs = &c->hip;
	const uint32_t *vs = c->vslot;
	uint32_t m = c->sp_m, k0 = c->sp_sinks, k1 = m - c->sp_recent, n = k0;
	size_t lh = (size_t)l * hs->n_head_kv + h;
	uint32_t *ref = hs->ref_list + lh * hs->ref_cap;
	bool reranked = c->sparse->rerank > 0 && hs->cand_nb[lh] > 0;
	memcpy(list, vs, k0 * sizeof(uint32_t));
	if (!hs->refresh && hs->in_place && hs->ref_n[lh] != UINT32_MAX && !reranked) {
		memcpy(list + n, ref, hs->ref_n[lh] * sizeof(uint32_t));
		n += hs->ref_n[lh];
		memcpy(list + n, vs + hs->ref_k1, (m - hs->ref_k1) * sizeof(uint32_t));
		return n + (m - hs->ref_k1);
	}
	for (uint32_t k = k0; k < k1; k++) {
		uint32_t sl = vs[k];
		list[n] = sl;
		n += (hs->seen_pos[sl] != c->vpos[k]) | kept[sl];
	}
	if (hs->refresh && n - k0 <= hs->ref_cap) {
		memcpy(ref, list + k0, (n - k0) * sizeof(uint32_t));
		hs->ref_n[lh] = n - k0;
	}
	memcpy(list + n, vs + k1, (m - k1) * sizeof(uint32_t));
	return n + (m - k1);
}

static void cpu_hip_choose(struct cpu_job *jb, uint32_t l, int ith, int nth)
{
	struct cpu *c = jb->c;
	struct sparse_hip *hs = &c->hip;
	const struct engine_sparse *s = c->sparse;
	uint32_t nkv = c->hp.n_head_kv, m = c->sp_m, vc = c->sp_vis_cap, bk = s->block;
	uint32_t k0 = c->sp_sinks, k1 = m - c->sp_recent, lo, hi;
	uint32_t always = c->sp_sinks + c->sp_recent;
	uint32_t k_blocks = s->budget > always ? (s->budget - always + bk - 1) / bk : 0;
	uint32_t n_blocks = (k1 - k0 + bk - 1) / bk;
	cpu_share(nkv, ith, nth, &lo, &hi);
	for (uint32_t h = lo; h < hi; h++) {
		uint8_t *mask = c->sp_mask + (size_t)h * vc;
		uint8_t *kept = hs->chosen + ((size_t)l * nkv + h) * hs->n_ctx; /* (n_ctx) by slot */
		uint32_t *list = c->sp_list + (size_t)h * vc, n = 0, k;
		if (hs->refresh && cpu_group_on(c)) {
			/* a region: the search over the other keys, its groups beside */
			cpu_page_bounds(c, l, h, ith, c->hp.attn_scale);
			cpu_group_hip(jb, l, h, ith, k_blocks, kept);
			if (s->rerank > 0)
				hs->cand_nb[(size_t)l * nkv + h] = 0; /* the steps between reuse it */
		} else if (hs->refresh) {
			uint8_t *blk = c->hip_blk + (size_t)ith * vc;
			struct sparse_tree *t = &c->hip_tree[ith];
			uint32_t grp = c->hp.n_head / nkv;
			/* each block's largest page bound: a half's is the max over its blocks */
			float *bub = c->hip_bub + (size_t)ith * vc;
			const float *ubh = c->sp_ub + (size_t)h * c->sp_pages_cap;
			cpu_page_bounds(c, l, h, ith, c->hp.attn_scale);
			for (uint32_t b = 0; b < n_blocks; b++)
				bub[b] = -INFINITY;
			for (k = k0; k < k1; k++) {
				float u = ubh[c->sp_kpage[k]];
				float *d = &bub[(k - k0) / bk];
				*d = u > *d ? u : *d;
			}
			struct cpu_hip_ctx x = {
				c, l, h, k0, k1, ith, c->q + (size_t)h * grp * c->hp.head_dim, grp, bub, NULL
			};
			uint64_t scored = 0;
			sparse_tree_ensure(t, n_blocks);
			sparse_hip_tree_beam(t, n_blocks, k_blocks, k_blocks * s->beam, cpu_hip_score, &x, blk,
			                     &scored);
			for (k = k0; k < k1; k++)
				kept[c->vslot[k]] = blk[(k - k0) / bk];
			if (s->rerank > 0)
				cpu_hip_keep_candidates(c, l, h, ith, t, blk, n_blocks, k_blocks);
		} else if (s->rerank > 0 && hs->cand_nb[(size_t)l * nkv + h] > 0) {
			cpu_hip_rerank(c, l, h, ith, k_blocks, kept);
		}
		const uint8_t *hk = cpu_head_keep(jb, l, h); /* what the head dropped stays out */
		if (hk == NULL && !jb->whole && !jb->b->want_attn) {
			c->sp_n[h] = cpu_hip_list(c, l, h, kept, list);
			continue;
		}
		for (k = 0; k < m; k++) {
			uint32_t sl = c->vslot[k];
			mask[k] = (k < k0 || k >= k1 || hs->seen_pos[sl] != c->vpos[k] || kept[sl]) &&
			        (hk == NULL || hk[sl]);
			list[n] = sl;
			n += mask[k];
		}
		c->sp_n[h] = n;
		cpu_sparse_report(jb, l, h, mask);
	}
}

/* The choosing functions, by mode. */
static void (*const cpu_sparse_choosers[])(struct cpu_job *, uint32_t, int, int) = {
	[ENGINE_SPARSE_QUEST] = cpu_quest_choose,
	[ENGINE_SPARSE_HIP] = cpu_hip_choose,
	[ENGINE_SPARSE_SQUEEZED] = cpu_squeeze_choose,
};

void cpu_sparse_choose(struct cpu_job *jb, uint32_t l, int ith, int nth)
{
	struct cpu *c = jb->c;
	cpu_sparse_choosers[c->sparse->mode](jb, l, ith, nth);
	pool_barrier(c->pool);
	if (ith == 0) {
		jb->bo->select_ms += clock_now_ms() - c->sp_t0;
		jb->bo->sparse_chose = c->sparse->mode != ENGINE_SPARSE_HIP || c->hip.refresh;
	}
}

void cpu_sparse_split(struct cpu_job *jb, uint32_t l, int ith, int nth)
{
	struct cpu *c = jb->c;
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, vc = c->vis_cap, nkv = hp->n_head_kv, grp = hp->n_head / nkv;
	float *sc = c->scores + (size_t)ith * c->q_rows * vc;
	float *tmp = c->txb + (size_t)ith * c->kmax; /* (KERN_ATT_Q, hd) */
	const float *q = c->q;
	bool half = c->kv_es == 2;
	if (half) { /* as cpu_attend: an f16 cache multiplies f16 by f16 */
		float *qr = c->qh + (size_t)ith * c->q_rows * hd;
		memcpy(qr, q, (size_t)hp->n_head * hd * sizeof(float));
		for (uint32_t i = 0; i < hp->n_head * hd; i += hd) {
			uint16_t h16[KERN_ROW_MAX];
			c->ops->f32_to_f16(qr + i, h16, hd);
			c->ops->f16_to_f32(h16, qr + i, hd);
		}
		q = qr;
	}
	/* part j always holds the same share of each KV head's keys, whichever
	 * thread computes it (as cpu_attend_split) */
	int np = pool_size(c->pool);
	for (int j = ith; j < np; j += nth) {
		float *part = c->dpart + (size_t)j * hp->n_head * (hd + 2); /* (n_head, hd + 2) */
		for (uint32_t h = 0; h < nkv; h++) {
			const uint32_t *list = c->sp_list + (size_t)h * c->sp_vis_cap;
			uint32_t k0, k1, nq;
			cpu_share(c->sp_n[h], j, np, &k0, &k1);
			uint64_t head_off = (uint64_t)h * hd * c->kv_es;
			for (uint32_t h0 = h * grp; h0 < (h + 1) * grp; h0 += nq) {
				nq = KVS_MIN((uint32_t)KERN_ATT_Q, (h + 1) * grp - h0);
				if (k1 == k0) {
					for (uint32_t r = 0; r < nq; r++) {
						part[(size_t)(h0 + r) * (hd + 2)] = -INFINITY;
						part[(size_t)(h0 + r) * (hd + 2) + 1] = 0;
					}
					continue;
				}
				for (uint32_t k = k0; k < k1; k += CPU_DEC_RUN)
					c->ops->att_scores_rows(q + (size_t)h0 * hd, (int)nq, (int)hd,
					                        c->kr[l] + head_off, (int64_t)c->kv_row, half, list + k,
					                        KVS_MIN((uint32_t)CPU_DEC_RUN, k1 - k), hp->attn_scale,
					                        sc + (size_t)h0 * vc + (k - k0), vc);
				for (uint32_t r = 0; r < nq; r++) {
					float *pr = part + (size_t)(h0 + r) * (hd + 2);
					float *sr = sc + (size_t)(h0 + r) * vc;
					pr[0] = c->ops->max_f32(sr, k1 - k0);
					pr[1] = c->ops->exp_sum(sr, k1 - k0, pr[0]);
					memset(pr + 2, 0, hd * sizeof(float));
				}
				for (uint32_t k = k0; k < k1; k += CPU_DEC_RUN) {
					c->ops->att_pv_rows(sc + (size_t)h0 * vc + (k - k0), (int)nq, vc,
					                    c->vc[l] + head_off, (int64_t)c->kv_row, half, list + k,
					                    KVS_MIN((uint32_t)CPU_DEC_RUN, k1 - k), (int)hd, tmp);
					for (uint32_t r = 0; r < nq; r++)
						c->ops->axpy_f32(part + (size_t)(h0 + r) * (hd + 2) + 2,
						                 tmp + (size_t)r * hd, 1.0f, hd);
				}
			}
		}
	}
}

void cpu_sparse_account(struct cpu_job *jb, uint32_t l, bool sparse)
{
	struct cpu *c = jb->c;
	uint32_t nkv = c->hp.n_head_kv, m = c->sp_m, nv = jb->b->n_visible;
	struct backend_out *bo = jb->bo;
	bo->keys_dense += (uint64_t)m * nkv;
	if (sparse) {
		for (uint32_t h = 0; h < nkv; h++)
			bo->keys_read += c->sp_n[h];
	} else {
		uint32_t w0 = KVS_MIN(cpu_window_start(c, l, jb->b->pos[jb->t0]), m);
		bo->keys_read += (uint64_t)(m - w0) * nkv;
		for (uint32_t h = 0; bo->sel != NULL && h < nkv; h++) {
			uint8_t *row = bo->sel + ((size_t)l * nkv + h) * nv;
			memset(row, 0, nv);
			for (uint32_t k = w0; k < m; k++)
				row[c->vorder[k]] = 1;
		}
	}
	bo->attn_ms += clock_now_ms() - c->sp_t0;
}

int cpu_sparse_bounds(void *state, uint32_t page_size, uint32_t layer, uint32_t kv_head,
                      uint32_t page, float *mn, float *mx, uint32_t *n_keys, struct err *e)
{
	struct cpu *c = state;
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim;
	(void)e;
	sparse_pages_ensure(&c->sp, page_size, c->cfg.n_ctx, hp->n_layer, hp->n_head_kv, hd, c->kv_es);
	struct sparse_keys k = cpu_sparse_keys(c, NULL, 0);
	sparse_pages_scan(&c->sp, &k);
	sparse_pages_rebuild(&c->sp, &k, 0, c->sp.n_dirty);
	const uint8_t *b = sparse_pages_at(&c->sp, layer, page, kv_head);
	float mm[2 * KERN_ROW_MAX];
	if (c->kv_es == 2)
		c->ops->f16_to_f32((const uint16_t *)b, mm, 2 * hd);
	else
		memcpy(mm, b, 2 * hd * sizeof(float));
	memcpy(mn, mm, hd * sizeof(float));
	memcpy(mx, mm + hd, hd * sizeof(float));
	*n_keys = c->sp.page_n[page];
	return KVS_OK;
}

void cpu_sparse_free(struct cpu *c)
{
	sparse_pages_free(&c->sp);
	free(c->sp_cand);
	free(c->sp_plist);
	free(c->sp_ub);
	free(c->sp_psel);
	free(c->sp_scr);
	free(c->hip_pidx);
	free(c->sp_qs);
	free(c->sp_list);
	free(c->sp_mask);
	free(c->sp_kpage);
	free(c->sp_n);
	free(c->hip.chosen);
	free(c->hip.seen_pos);
	free(c->hip.cand_slot);
	free(c->hip.cand_first);
	free(c->hip.cand_page);
	free(c->hip.cand_bp);
	free(c->hip.cand_bpf);
	free(c->hip.cand_on);
	free(c->hip.cand_nb);
	free(c->hip.cand_np);
	free(c->hip.ref_vslot);
	free(c->hip.ref_list);
	free(c->hip.ref_n);
	for (int t = 0; c->hip_tree != NULL && t < pool_size(c->pool); t++)
		sparse_tree_free(&c->hip_tree[t]);
	free(c->hip_tree);
	free(c->hip_blk);
	free(c->hip_cblk);
	free(c->hip_keys);
	free(c->hip_kn);
	free(c->hip_bub);
	free(c->hip_list);
	free(c->hip_q);
	free(c->hip_pf);
	cpu_squeeze_free(c);
	cpu_group_free(c);
}
