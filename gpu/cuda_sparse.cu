/*
 * cuda_sparse.cu: the host side of the CUDA backend's sparse decode
 * (engine_sparse quest and hip; gpu-int.h describes the state).
 *
 * A one-token batch with a sparse spec runs the dense step's kernels with,
 * in each layer from dense_layers on, the choice (cuda_skern.cu) between
 * the q/k/v product and attention, and attention over each KV head's list.
 * Before the launches the host plans the step as the CPU does
 * (gpusparse.h): the visible entries sorted by position and the keys the
 * query sees, sinks and window, the units of the budget; Quest's page
 * tracker (which pages' bounds the device recomputes) and candidate pages,
 * on every Quest step and on HiP's refresh steps (its search ranks halves
 * by the bounds); HiP's refresh. It uploads only what changed since the last step (a decode
 * step: one slot's fold, one entry of the order) into buffers the captured
 * decode graph reads, so a sparse step replays a graph as a dense one does.
 *
 * What stays on the CPU: squeezed (refused here with one line), HiP's
 * block-sparse prefill (a CUDA prefill is dense: prefill_read stays 0), the
 * per-head keep-sets (the backend has no ENGINE_CAP_HEAD_KEEP), the bounds'
 * tightness (tight stays NaN), the selection's wall-clock split
 * (select_ms, attn_ms stay 0: the device runs the step as one graph), and
 * the content groups over a run of keys at one position
 * (cpu-sparse-group.c: Quest and HiP choose such a region by groups of
 * alike keys on the CPU; here it stays in positional pages and blocks, as
 * before, and the help and kvscope.1 say "CUDA: by position").
 */
#include "gpu/gpu-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Free a device pointer and clear it. */
static void sp_dfree(void *p)
{
	void **pp = (void **)p;
	if (*pp != NULL)
		cudaFree(*pp);
	*pp = NULL;
}

/* A device buffer of n bytes, zeroed. */
static int sp_dalloc(void *p, uint64_t n, struct err *e)
{
	void **pp = (void **)p;
	*pp = NULL;
	CU_TRY(cudaMalloc(pp, n ? n : 1), "cudaMalloc (sparse)");
	CU_TRY(cudaMemset(*pp, 0, n ? n : 1), "cudaMemset (sparse)");
	return KVS_OK;
}

static void sp_graph_destroy(void *arg, void *exec)
{
	(void)arg;
	cudaGraphExecDestroy((cudaGraphExec_t)exec);
}

void cu_sp_init(struct cu *c)
{
	struct cu_sp *sp = &c->sp;
	uint32_t ctx = c->plan.n_ctx;
	sp->rot_pos = (int32_t *)xmallocarray(ctx, sizeof(int32_t));
	for (uint32_t s = 0; s < ctx; s++)
		sp->rot_pos[s] = -1;
}

/* The page-sized device buffers. */
static void sp_free_pages(struct cu_sp *sp)
{
	sp_dfree(&sp->bounds);
	sp_dfree(&sp->d_reb);
	sp_dfree(&sp->d_plist);
	sp_dfree(&sp->ubc);
	sp_dfree(&sp->csel);
	sp_dfree(&sp->ubp);
	sp_dfree(&sp->psel);
	free(sp->cand);
	free(sp->plist);
	free(sp->sh_plist);
	sp->cand = NULL;
	sp->plist = sp->sh_plist = NULL;
	sp->page_dev = 0;
	sp->n_pages_cap = 0;
	sp->n_plist_sent = 0;
}

void cu_sp_free(struct cu *c)
{
	struct cu_sp *sp = &c->sp;
	sp_free_pages(sp);
	void *dev[] = { &sp->sst,    &sp->d_ord, &sp->d_sum_pos, &sp->d_seen, &sp->list,
		            &sp->list_n, &sp->sel,   &sp->kept,      &sp->hscr };
	for (size_t i = 0; i < KVS_ARRAY_LEN(dev); i++)
		sp_dfree(dev[i]);
	if (sp->h_sst != NULL)
		cudaFreeHost(sp->h_sst);
	if (sp->h_up != NULL)
		cudaFreeHost(sp->h_up);
	if (sp->h_listn != NULL)
		cudaFreeHost(sp->h_listn);
	gsp_pages_free(&sp->pages);
	gsp_hip_free(&sp->hip);
	free(sp->rot_pos);
	free(sp->ord);
	free(sp->sh_ord);
	free(sp->cslot);
	free(sp->cpos);
	memset(sp, 0, sizeof *sp);
}

/* The page-independent buffers, once. */
static int sp_ensure_dev(struct cu *c, struct err *e)
{
	struct cu_sp *sp = &c->sp;
	if (sp->dev)
		return KVS_OK;
	const struct hparams *hp = &c->hp;
	uint64_t ctx = c->plan.n_ctx, lh = (uint64_t)hp->n_layer * hp->n_head_kv;
	/* HiP's scratch holds the search for block 1, the most blocks: start,
	 * size (kcap), halves (2 kcap each), scores (2 kcap), block bounds
	 * (kcap), kept halves and chosen blocks (bytes) */
	sp->kcap = (uint32_t)ctx + 2;
	sp->hscr_words = (39 * (uint64_t)sp->kcap + 3) / 4 + 1;
	int rc;
	if ((rc = sp_dalloc(&sp->sst, CK_SST_INTS * 4, e)) ||
	    (rc = sp_dalloc(&sp->d_ord, ctx * 4, e)) || (rc = sp_dalloc(&sp->d_sum_pos, ctx * 4, e)) ||
	    (rc = sp_dalloc(&sp->d_seen, ctx * 4, e)) ||
	    (rc = sp_dalloc(&sp->list, hp->n_head_kv * ctx * 4, e)) ||
	    (rc = sp_dalloc(&sp->list_n, lh * 4, e)) || (rc = sp_dalloc(&sp->sel, lh * ctx, e)) ||
	    (rc = sp_dalloc(&sp->kept, lh * ctx, e)) ||
	    (rc = sp_dalloc(&sp->hscr, hp->n_head_kv * sp->hscr_words * 4, e)))
		return rc;
	CU_TRY(cudaMemset(sp->d_sum_pos, 0xff, ctx * 4), "cudaMemset (sparse)");
	CU_TRY(cudaMemset(sp->d_seen, 0xff, ctx * 4), "cudaMemset (sparse)");
	CU_TRY(cudaMallocHost((void **)&sp->h_sst, CK_SST_INTS * 4), "cudaMallocHost (sparse)");
	CU_TRY(cudaMallocHost((void **)&sp->h_listn, lh * 4), "cudaMallocHost (sparse)");
	/* a step uploads at most the order, the folded slots and the seen
	 * positions (n_ctx each) and two page lists (n_ctx pages at most) */
	CU_TRY(cudaMallocHost((void **)&sp->h_up, 5 * ctx * 4), "cudaMallocHost (sparse)");
	sp->ord = (uint32_t *)xmallocarray(ctx, sizeof(uint32_t));
	sp->sh_ord = (uint32_t *)xcalloc(ctx, sizeof(uint32_t));
	sp->cslot = (uint32_t *)xmallocarray(ctx, sizeof(uint32_t));
	sp->cpos = (int32_t *)xmallocarray(ctx, sizeof(int32_t));
	sp->n_ord_sent = 0;
	sp->dev = true;
	/* graphs captured before read no sparse buffers; nothing to drop */
	return KVS_OK;
}

/* The buffers of page size `page` (remade when it changes: the graphs
 * that read the old ones are dropped). */
static int sp_ensure_pages(struct cu *c, uint32_t page, struct err *e)
{
	struct cu_sp *sp = &c->sp;
	const struct hparams *hp = &c->hp;
	uint32_t ctx = c->plan.n_ctx;
	if (sp->page_dev == page && sp->bounds != NULL)
		return KVS_OK;
	gpugraph_clear(&c->graphs, sp_graph_destroy, NULL);
	sp_free_pages(sp);
	uint64_t np = (ctx + page - 1) / page, kh = (uint64_t)hp->n_head_kv * np;
	int rc;
	if ((rc = sp_dalloc(&sp->bounds,
	                    (uint64_t)hp->n_layer * np * hp->n_head_kv * 2 * hp->head_dim * 2, e)) ||
	    (rc = sp_dalloc(&sp->d_reb, np * 4, e)) || (rc = sp_dalloc(&sp->d_plist, np * 4, e)) ||
	    (rc = sp_dalloc(&sp->ubc, kh * 4, e)) || (rc = sp_dalloc(&sp->csel, kh, e)) ||
	    (rc = sp_dalloc(&sp->ubp, (uint64_t)hp->n_layer * kh * 4, e)) ||
	    (rc = sp_dalloc(&sp->psel, kh, e)))
		return rc;
	sp->cand = (uint8_t *)xmallocarray(np, 1);
	sp->plist = (uint32_t *)xmallocarray(np, sizeof(uint32_t));
	sp->sh_plist = (uint32_t *)xcalloc(np, sizeof(uint32_t));
	sp->n_pages_cap = (uint32_t)np;
	sp->page_dev = page;
	/* the tracker restarts with the device's bounds: every page dirty */
	gsp_pages_free(&sp->pages);
	gsp_pages_ensure(&sp->pages, page, ctx);
	return KVS_OK;
}

/* Upload a[lo, hi) of n-element arrays (4-byte entries) through the
 * staging area at *at (words), advancing it. */
static int sp_put(struct cu *c, void *dev, const void *host, uint32_t lo, uint32_t hi, uint64_t *at,
                  struct err *e)
{
	if (lo >= hi)
		return KVS_OK;
	uint32_t *stage = c->sp.h_up + *at;
	memcpy(stage, (const uint32_t *)host + lo, (size_t)(hi - lo) * 4);
	*at += hi - lo;
	CU_TRY(cudaMemcpyAsync((uint32_t *)dev + lo, stage, (size_t)(hi - lo) * 4,
	                       cudaMemcpyHostToDevice, c->st),
	       "upload (sparse)");
	return KVS_OK;
}

/* The part of arr (n) that differs from its shadow sh (of n_sent valid
 * entries), uploaded and copied into the shadow. */
static int sp_put_diff(struct cu *c, void *dev, const uint32_t *arr, uint32_t *sh, uint32_t n,
                       uint32_t *n_sent, uint64_t *at, struct err *e)
{
	uint32_t lo = 0, hi = 0, same = KVS_MIN(n, *n_sent);
	gpuplan_diff_range(sh, arr, same, &lo, &hi);
	if (lo >= hi)
		lo = same;
	hi = n > same ? n : hi;
	if (lo >= hi) {
		*n_sent = KVS_MAX(*n_sent, n);
		return KVS_OK;
	}
	memcpy(sh + lo, arr + lo, (size_t)(hi - lo) * 4);
	*n_sent = KVS_MAX(*n_sent, hi);
	return sp_put(c, dev, arr, lo, hi, at, e);
}

int cu_sp_begin(struct cu *c, const struct engine_batch *b, const struct backend_out *bo,
                struct err *e)
{
	struct cu_sp *sp = &c->sp;
	const int32_t *spos = c->slot_pos;
	/* every forward: the batch rewrites its slots' keys, and the visible
	 * keys are made current (the CPU's refresh of its rotated keys) */
	for (uint32_t i = 0; i < b->n_tokens; i++)
		gsp_pages_forget(&sp->pages, b->slot[i]);
	for (uint32_t j = 0; j < b->n_visible; j++) {
		uint32_t s = b->visible[j];
		if (spos[s] >= 0)
			sp->rot_pos[s] = spos[s];
	}
	sp->mode = ENGINE_SPARSE_OFF;
	const struct engine_sparse *s = b->sparse;
	if (s == NULL || s->mode == ENGINE_SPARSE_OFF || b->n_tokens != 1)
		return KVS_OK; /* a hip prefill runs dense on the device */
	if (s->mode != ENGINE_SPARSE_QUEST && s->mode != ENGINE_SPARSE_HIP)
		return err_set(e, KVS_EUNSUPPORTED,
		               "sparse squeezed: the CUDA backend runs quest and hip; squeezed runs on the "
		               "cpu backend (--backend cpu)");
	int rc = sp_ensure_dev(c, e);
	if (rc != KVS_OK)
		return rc;
	bool quest = s->mode == ENGINE_SPARSE_QUEST;
	if ((rc = sp_ensure_pages(c, s->page, e)) != KVS_OK) /* hip ranks by the bounds too */
		return rc;

	/* the keys the query sees, sorted; sinks, window and units */
	uint32_t nv = b->n_visible, ctx = c->plan.n_ctx;
	uint32_t m = gsp_order(c->nv_pos, nv, b->pos[0], sp->ord);
	/* global keys beyond the cap are attended as sinks (gsp_capped_globals) */
	uint32_t sinks = gsp_capped_globals(c->nv_pos, sp->ord, m, b->pos[0], b->n_global, b->dist_cap);
	sinks = KVS_MAX(sinks, s->sinks);
	gsp_step_make(&sp->gs, m, sinks, s->recent, s->budget, quest ? s->page : s->block, !quest);
	uint64_t at = 0;
	if ((rc = sp_put_diff(c, sp->d_ord, sp->ord, sp->sh_ord, nv, &sp->n_ord_sent, &at, e)))
		return rc;
	int32_t *h = sp->h_sst;
	h[CK_SST_M] = (int32_t)m;
	h[CK_SST_SINKS] = (int32_t)sp->gs.sinks;
	h[CK_SST_RECENT] = (int32_t)sp->gs.recent;
	h[CK_SST_K] = (int32_t)sp->gs.k_units;
	h[CK_SST_UNIT] = (int32_t)(quest ? s->page : s->block);
	h[CK_SST_PAGE] = (int32_t)s->page;
	h[CK_SST_NREB] = 0;
	h[CK_SST_NPAGES] = 0;
	h[CK_SST_BEAM] = (int32_t)(sp->gs.k_units * s->beam);
	uint32_t k0 = sp->gs.sinks, k1 = m - sp->gs.recent;
	if (quest) {
		sp->search = true;
	} else {
		/* rerank (the CPU's re-rank of the refresh's candidates on the steps
		 * between, default 1) is not mirrored here: the device's HiP reuses
		 * the refresh's choice unchanged, as rerank=0 does on the CPU; the
		 * help and kvscope.1 say so */
		struct gsp_hip_spec hs = { s->budget,       s->block,   s->sinks, s->recent,
			                       s->dense_layers, s->refresh, s->page,  s->beam };
		for (uint32_t k = k0; k < k1; k++) {
			sp->cslot[k - k0] = b->visible[sp->ord[k]];
			sp->cpos[k - k0] = c->nv_pos[sp->ord[k]];
		}
		gsp_hip_prepare(&sp->hip, ctx, &hs, b->pos[0], sp->cslot, sp->cpos, k1 - k0);
		if ((rc = sp_put(c, sp->d_seen, sp->hip.seen_pos, sp->hip.lo, sp->hip.hi, &at, e)))
			return rc;
		h[CK_SST_NUNITS] = (int32_t)sp->gs.n_units;
		sp->search = sp->hip.refresh;
	}
	if (sp->search) {
		/* Quest, and HiP's refresh (its halves are ranked by the bounds, as
		 * the CPU syncs them on refresh steps only): fold what became
		 * current, list what to recompute, and the candidate pages */
		gsp_pages_scan(&sp->pages, spos, sp->rot_pos, b->slot, b->n_tokens);
		if ((rc = sp_put(c, sp->d_sum_pos, sp->pages.sum_pos, sp->pages.lo, sp->pages.hi, &at,
		                 e)) ||
		    (rc = sp_put(c, sp->d_reb, sp->pages.list, 0, sp->pages.n_list, &at, e)))
			return rc;
		gsp_pages_sent(&sp->pages);
		h[CK_SST_NREB] = (int32_t)sp->pages.n_list;
		uint32_t np = gsp_quest_pages(&sp->gs, b->visible, sp->ord, s->page, sp->n_pages_cap,
		                              sp->cand, sp->plist);
		if ((rc = sp_put_diff(c, sp->d_plist, sp->plist, sp->sh_plist, np, &sp->n_plist_sent, &at,
		                      e)))
			return rc;
		h[CK_SST_NPAGES] = (int32_t)np;
		if (quest)
			h[CK_SST_NUNITS] = (int32_t)np;
	}
	CU_TRY(cudaMemcpyAsync(sp->sst, h, CK_SST_INTS * 4, cudaMemcpyHostToDevice, c->st),
	       "upload (sparse step)");
	sp->mode = s->mode;
	sp->dense_layers = KVS_MIN(s->dense_layers, c->hp.n_layer);
	sp->want_sel = bo->sel != NULL;
	sp->want_ub = quest && bo->page_ub != NULL;
	/* splits for the lists: about the budget's keys (HiP's reuse steps add
	 * up to max(budget / 4, refresh) unscored ones) */
	uint32_t most =
	        quest ? s->budget + s->page : s->budget + KVS_MAX(s->budget / 4, s->refresh) + s->block;
	sp->ssplits = gpuplan_attn_splits(KVS_MIN(most, nv), c->hp.n_head_kv, 1, (uint32_t)c->n_sm,
	                                  c->plan.part_rows);
	return KVS_OK;
}

uint64_t cu_sp_graph_key(const struct cu *c, uint64_t key)
{
	const struct cu_sp *sp = &c->sp;
	if (sp->mode == ENGINE_SPARSE_OFF)
		return key;
	return gpugraph_key_sparse(key, (unsigned)sp->mode, sp->search, sp->want_sel || sp->want_ub,
	                           sp->ssplits, sp->dense_layers);
}

void cu_sp_enqueue_start(struct cu *c)
{
	struct cu_sp *sp = &c->sp;
	const struct hparams *hp = &c->hp;
	if (sp->mode == ENGINE_SPARSE_OFF || !sp->search)
		return; /* HiP's reuse steps read no bounds */
	ck_sp_bounds_args B;
	memset(&B, 0, sizeof B);
	B.kc = c->kc;
	B.bounds = sp->bounds;
	B.sum_pos = sp->d_sum_pos;
	B.reb = sp->d_reb;
	B.sst = sp->sst;
	B.n_ctx = c->plan.n_ctx;
	B.n_pages = sp->n_pages_cap;
	B.n_kv = (int)hp->n_head_kv;
	B.hd = (int)hp->head_dim;
	B.n_rot = (int)hp->n_rot;
	B.neox = hp->rope == ROPE_NEOX;
	B.theta_scale = powf(hp->rope_base, -2.0f / (float)hp->n_rot);
	B.freq_scale = hp->rope_freq_scale;
	ck_sp_bounds(c->st, &B, hp->n_layer);
}

bool cu_sp_layer(struct cu *c, uint32_t l, ck_attn_args *aa)
{
	struct cu_sp *sp = &c->sp;
	const struct hparams *hp = &c->hp;
	if (sp->mode == ENGINE_SPARSE_OFF || l < sp->dense_layers)
		return false;
	uint64_t ctx = c->plan.n_ctx, kvh = hp->n_head_kv;
	uint64_t np = sp->n_pages_cap;
	ck_sp_args A;
	memset(&A, 0, sizeof A);
	A.q = c->q;
	A.kc = aa->kc;
	A.vis = c->vis;
	A.vpos = c->vpos;
	A.step = c->step;
	A.sst = sp->sst;
	A.ord = sp->d_ord;
	A.plist = sp->d_plist;
	A.bounds = sp->bounds ? sp->bounds + (uint64_t)l * np * kvh * 2 * hp->head_dim : NULL;
	A.ubc = sp->ubc;
	A.csel = sp->csel;
	A.ubp = sp->want_ub ? sp->ubp + (uint64_t)l * kvh * np : NULL;
	A.psel = sp->psel;
	A.kept = sp->kept + (uint64_t)l * kvh * ctx;
	A.seen = sp->d_seen;
	A.hscr = sp->hscr;
	A.hscr_words = sp->hscr_words;
	A.kcap = sp->kcap;
	A.list = sp->list;
	A.list_n = sp->list_n + (uint64_t)l * kvh;
	A.sel = sp->want_sel ? sp->sel + (uint64_t)l * kvh * ctx : NULL;
	A.n_ctx = (uint32_t)ctx;
	A.n_pages = (uint32_t)np;
	A.n_head = (int)hp->n_head;
	A.n_kv = (int)kvh;
	A.hd = (int)hp->head_dim;
	A.n_rot = (int)hp->n_rot;
	A.neox = hp->rope == ROPE_NEOX;
	A.scale = hp->attn_scale;
	A.theta_scale = powf(hp->rope_base, -2.0f / (float)hp->n_rot);
	A.freq_scale = hp->rope_freq_scale;
	if (sp->mode == ENGINE_SPARSE_QUEST)
		ck_sp_quest(c->st, &A, (uint32_t)np);
	else
		ck_sp_hip(c->st, &A, sp->search, (uint32_t)np);
	aa->list = sp->list;
	aa->list_n = A.list_n;
	aa->list_cap = (uint32_t)ctx;
	aa->raw = NULL;
	return true;
}

int cu_sp_outputs(struct cu *c, const struct engine_batch *b, struct backend_out *bo, struct err *e)
{
	struct cu_sp *sp = &c->sp;
	const struct hparams *hp = &c->hp;
	if (sp->mode == ENGINE_SPARSE_OFF)
		return KVS_OK;
	uint64_t kvh = hp->n_head_kv, ctx = c->plan.n_ctx, nv = b->n_visible, L = hp->n_layer;
	uint64_t dl = sp->dense_layers;
	CU_TRY(cudaMemcpyAsync(sp->h_listn, sp->list_n, L * kvh * 4, cudaMemcpyDeviceToHost, c->st),
	       "copy of the key counts");
	if (sp->want_sel && nv > 0 && dl < L)
		CU_TRY(cudaMemcpy2DAsync(bo->sel + dl * kvh * nv, nv, sp->sel + dl * kvh * ctx, ctx, nv,
		                         (L - dl) * kvh, cudaMemcpyDeviceToHost, c->st),
		       "copy of the choice");
	if (sp->want_ub && dl < L) {
		uint64_t np = sp->n_pages_cap;
		if (NEVER(np != bo->n_pages))
			return err_set(e, KVS_ESTATE, "CUDA sparse: %llu pages, the engine expects %u",
			               (unsigned long long)np, bo->n_pages);
		CU_TRY(cudaMemcpyAsync(bo->page_ub + dl * kvh * np, sp->ubp + dl * kvh * np,
		                       (L - dl) * kvh * np * 4, cudaMemcpyDeviceToHost, c->st),
		       "copy of the page bounds");
	}
	return KVS_OK;
}

void cu_sp_finish(struct cu *c, const struct engine_batch *b, struct backend_out *bo)
{
	struct cu_sp *sp = &c->sp;
	const struct hparams *hp = &c->hp;
	/* after the forward the batch's keys are current (the CPU's kr_pos) */
	for (uint32_t i = 0; i < b->n_tokens; i++)
		sp->rot_pos[b->slot[i]] = b->pos[i];
	if (sp->mode == ENGINE_SPARSE_OFF)
		return;
	uint32_t kvh = hp->n_head_kv, nv = b->n_visible, m = sp->gs.m;
	bo->keys_dense = (uint64_t)hp->n_layer * kvh * m;
	bo->keys_read = (uint64_t)sp->dense_layers * kvh * m;
	for (uint32_t l = sp->dense_layers; l < hp->n_layer; l++)
		for (uint32_t h = 0; h < kvh; h++)
			bo->keys_read += (uint64_t)sp->h_listn[l * kvh + h];
	/* the dense layers read every key the query sees */
	for (uint32_t l = 0; sp->want_sel && l < sp->dense_layers; l++)
		for (uint32_t h = 0; h < kvh; h++) {
			uint8_t *row = bo->sel + ((size_t)l * kvh + h) * nv;
			memset(row, 0, nv);
			for (uint32_t k = 0; k < m; k++)
				row[sp->ord[k]] = 1;
		}
	bo->sparse_chose = sp->mode == ENGINE_SPARSE_QUEST || sp->search ? 1 : 0;
	bo->attn_ms = 0;
	bo->select_ms = 0;
}

void cu_sp_copied(struct cu *c, const uint32_t *dst, const uint32_t *src, uint32_t n)
{
	struct cu_sp *sp = &c->sp;
	for (uint32_t i = 0; i < n; i++) {
		sp->rot_pos[dst[i]] = sp->rot_pos[src[i]];
		gsp_pages_forget(&sp->pages, dst[i]);
	}
}

void cu_sp_loaded(struct cu *c, uint32_t slot)
{
	c->sp.rot_pos[slot] = -1;
	gsp_pages_forget(&c->sp.pages, slot);
}

int cu_sp_page_bounds(void *state, uint32_t page_size, uint32_t layer, uint32_t kv_head,
                      uint32_t page, float *mn, float *mx, uint32_t *n_keys, struct err *e)
{
	struct cu *c = (struct cu *)state;
	struct cu_sp *sp = &c->sp;
	const struct hparams *hp = &c->hp;
	int rc;
	if ((rc = sp_ensure_dev(c, e)) || (rc = sp_ensure_pages(c, page_size, e)))
		return rc;
	gsp_pages_scan(&sp->pages, c->slot_pos, sp->rot_pos, NULL, 0);
	uint64_t at = 0;
	if ((rc = sp_put(c, sp->d_sum_pos, sp->pages.sum_pos, sp->pages.lo, sp->pages.hi, &at, e)) ||
	    (rc = sp_put(c, sp->d_reb, sp->pages.list, 0, sp->pages.n_list, &at, e)))
		return rc;
	gsp_pages_sent(&sp->pages);
	memset(sp->h_sst, 0, CK_SST_INTS * 4);
	sp->h_sst[CK_SST_NREB] = (int32_t)sp->pages.n_list;
	sp->h_sst[CK_SST_UNIT] = (int32_t)page_size;
	sp->h_sst[CK_SST_PAGE] = (int32_t)page_size;
	CU_TRY(cudaMemcpyAsync(sp->sst, sp->h_sst, CK_SST_INTS * 4, cudaMemcpyHostToDevice, c->st),
	       "upload (sparse step)");
	int mode = sp->mode;
	bool search = sp->search;
	sp->mode = ENGINE_SPARSE_QUEST;
	sp->search = true;
	cu_sp_enqueue_start(c);
	sp->mode = mode;
	sp->search = search;
	uint32_t hd = hp->head_dim;
	uint16_t buf[2 * 256];
	uint64_t off = (((uint64_t)layer * sp->n_pages_cap + page) * hp->n_head_kv + kv_head) * 2 * hd;
	CU_TRY(cudaGetLastError(), "page bounds");
	CU_TRY(cudaMemcpyAsync(buf, sp->bounds + off, 2 * hd * 2, cudaMemcpyDeviceToHost, c->st),
	       "copy of page bounds");
	CU_TRY(cudaStreamSynchronize(c->st), "page bounds");
	for (uint32_t d = 0; d < hd; d++) {
		mn[d] = dtype_f16_to_f32(buf[d]);
		mx[d] = dtype_f16_to_f32(buf[hd + d]);
	}
	*n_keys = sp->pages.page_n[page];
	return KVS_OK;
}
