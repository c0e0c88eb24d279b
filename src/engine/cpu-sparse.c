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
 * Where whole score rows are needed (want_attn, per-key sums, Λ-masks, the
 * reference path) cpu_attend scores every key and masks the ones not
 * chosen (sp_mask), so the result is the same function; with want_attn it
 * reports the dense weights of the same query and the mask in bo->sel.
 */
#include "engine/cpu-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The rotated keys as sparse.c sees them; skip: the batch's own slots. */
static struct sparse_keys cpu_sparse_keys(const struct cpu *c, const uint32_t *skip,
                                          uint32_t n_skip)
{
	struct sparse_keys k = { c->kr, c->kv_row, c->kr_pos, c->slot_pos, c->ops, skip, n_skip };
	return k;
}

void cpu_sparse_prepare(struct cpu *c, const struct engine_batch *b)
{
	const struct hparams *hp = &c->hp;
	/* the batch overwrites its slots' keys */
	for (uint32_t i = 0; i < b->n_tokens; i++)
		sparse_pages_forget(&c->sp, b->slot[i]);
	c->sparse = b->n_tokens == 1 ? b->sparse : NULL;
	c->sp_read = 0;
	if (b->n_tokens != 1)
		return;
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
	sparse_pages_ensure(&c->sp, s->page, c->cfg.n_ctx, hp->n_layer, hp->n_head_kv, hp->head_dim,
	                    c->kv_es);
	uint32_t np = c->sp.n_pages, nkv = hp->n_head_kv;
	if (c->sp_pages_cap < np) {
		free(c->sp_cand);
		free(c->sp_plist);
		free(c->sp_ub);
		free(c->sp_psel);
		free(c->sp_scr);
		c->sp_pages_cap = np;
		c->sp_cand = xmallocarray(np, sizeof(uint32_t));
		c->sp_plist = xmallocarray(np, sizeof(uint32_t));
		c->sp_ub = xmallocarray((size_t)nkv * np, sizeof(float));
		c->sp_psel = xmallocarray((size_t)nkv * np, 1);
		c->sp_scr = xmallocarray((size_t)pool_size(c->pool) * np, sizeof(float));
		if (c->sp_qs == NULL)
			c->sp_qs = xmallocarray((size_t)pool_size(c->pool) * hp->n_head * 2 * hp->head_dim,
			                        sizeof(float));
	}
	if (c->sp_vis_cap < c->vis_cap) {
		free(c->sp_list);
		free(c->sp_mask);
		free(c->sp_kpage);
		c->sp_vis_cap = c->vis_cap;
		c->sp_kpage = xmallocarray(c->sp_vis_cap, sizeof(uint32_t));
		c->sp_list = xmallocarray((size_t)nkv * c->sp_vis_cap, sizeof(uint32_t));
		c->sp_mask = xmallocarray((size_t)nkv * c->sp_vis_cap, 1);
	}
	if (c->sp_n == NULL)
		c->sp_n = xmallocarray(nkv, sizeof(uint32_t));
	/* sinks and the recent window (the query's own key at least) */
	uint32_t m = c->sp_m;
	c->sp_sinks = KVS_MIN(s->sinks, m);
	c->sp_recent = KVS_MIN(KVS_MAX(s->recent, 1u), m - c->sp_sinks);
	memset(c->sp_cand, 0, np * sizeof(uint32_t));
	for (uint32_t k = 0; k < m; k++)
		c->sp_kpage[k] = c->vslot[k] / s->page;
	for (uint32_t k = c->sp_sinks; k < m - c->sp_recent; k++)
		c->sp_cand[c->sp_kpage[k]]++;
	c->sp_np = 0;
	for (uint32_t p = 0; p < np; p++)
		if (c->sp_cand[p] > 0)
			c->sp_plist[c->sp_np++] = p;
}

void cpu_sparse_sync(struct cpu_job *jb, int ith, int nth)
{
	struct cpu *c = jb->c;
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
	return c->sparse != NULL && jb->n == 1 && l >= c->sparse->dense_layers && c->L[l].window == 0;
}

void cpu_sparse_choose(struct cpu_job *jb, uint32_t l, int ith, int nth)
{
	struct cpu *c = jb->c;
	const struct hparams *hp = &c->hp;
	const struct engine_sparse *s = c->sparse;
	uint32_t nkv = hp->n_head_kv, np = c->sp.n_pages, pc = c->sp_pages_cap, hd = hp->head_dim;
	uint32_t grp = hp->n_head / nkv, m = c->sp_m, vc = c->sp_vis_cap;
	uint32_t lo, hi;
	uint32_t always = c->sp_sinks + c->sp_recent;
	uint32_t k_pages = s->budget > always ? (s->budget - always + s->page - 1) / s->page : 0;
	uint32_t nv = jb->b->n_visible;
	/* whole KV heads per thread: one barrier after the choice, not one
	 * between bounding and choosing (a barrier costs a time slice on a
	 * busy machine; three KV heads on two threads cost a third more) */
	cpu_share(nkv, ith, nth, &lo, &hi);
	float *qs = c->sp_qs + (size_t)ith * hp->n_head * 2 * hd;
	for (uint32_t h = lo; h < hi; h++) {
		/* Quest's bound of every page with candidates: the max over the
		 * KV head's query heads of a dot with the split query, the bounds
		 * read as rows of 2 x head_dim by the attention-score kernel */
		for (uint32_t r = h * grp; r < (h + 1) * grp; r++)
			sparse_split_q(c->q + (size_t)r * hd, hd, qs + (size_t)r * 2 * hd);
		float *ubh = c->sp_ub + (size_t)h * pc;
		for (uint32_t p = 0; p < np; p++)
			ubh[p] = -INFINITY;
		float *sc = c->scores + (size_t)ith * c->q_rows * c->vis_cap; /* (grp, vis_cap) */
		const uint8_t *base = sparse_pages_at(&c->sp, l, 0, h);
		int64_t stride = (int64_t)nkv * 2 * hd; /* elements from one page to the next */
		for (uint32_t r0 = 0; r0 < grp; r0 += KERN_ATT_Q) {
			uint32_t nq = KVS_MIN((uint32_t)KERN_ATT_Q, grp - r0);
			c->ops->att_scores_rows(qs + (size_t)(h * grp + r0) * 2 * hd, (int)nq, (int)(2 * hd),
			                        base, stride, c->kv_es == 2, c->sp_plist, c->sp_np, 1.0f, sc,
			                        c->vis_cap);
			for (uint32_t r = 0; r < nq; r++)
				for (uint32_t i = 0; i < c->sp_np; i++) {
					float v = sc[(size_t)r * c->vis_cap + i];
					float *u = &ubh[c->sp_plist[i]];
					*u = v > *u ? v : *u;
				}
		}
		/* its pages, then its keys in position order */
		uint8_t *psel = c->sp_psel + (size_t)h * pc, *mask = c->sp_mask + (size_t)h * vc;
		uint32_t *list = c->sp_list + (size_t)h * vc, n = 0;
		sparse_top(c->sp_ub + (size_t)h * pc, np, k_pages, c->sp_scr + (size_t)ith * pc, psel);
		/* the sinks, the chosen pages' keys, the recent window */
		uint32_t k = 0, k1 = m - c->sp_recent;
		for (; k < c->sp_sinks; k++)
			mask[k] = 1;
		for (; k < k1; k++)
			mask[k] = psel[c->sp_kpage[k]];
		for (; k < m; k++)
			mask[k] = 1;
		for (k = 0; k < m; k++) {
			list[n] = c->vslot[k];
			n += mask[k];
		}
		c->sp_n[h] = n;
		if (jb->bo->sel != NULL) {
			uint8_t *row = jb->bo->sel + ((size_t)l * nkv + h) * nv;
			memset(row, 0, nv);
			for (k = 0; k < m; k++)
				row[c->vorder[k]] = mask[k];
		}
	}
	pool_barrier(c->pool);
	if (ith == 0)
		jb->bo->select_ms += clock_now_ms() - c->sp_t0;
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
	free(c->sp_qs);
	free(c->sp_list);
	free(c->sp_mask);
	free(c->sp_kpage);
	free(c->sp_n);
}
