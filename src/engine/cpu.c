/*
 * cpu.c: the CPU backend: weights, KV cache and the forward pass.
 *
 * The forward pass reads top to bottom in cpu_fwd_layer. A batch is cut into
 * ubatches of at most CPU_UBATCH tokens; one ubatch is one pool_run in which
 * every thread walks the same steps and takes its share of each (tokens for
 * norms and quantisation, 16-row groups for matrix products, a block of
 * tokens and the query heads of one KV head for attention), with a pool_barrier between
 * dependent steps. One-token batches (decode) avoid four of those barriers
 * per layer (see cpu_fwd_layer).
 *
 * Weights: Q4_0, Q4_1 and Q8_0 matrices are repacked (kern.h) into one arena
 * of the same size (huge pages where the kernel gives them); each thread
 * drops the file pages of its share as soon as it has packed it, so the
 * process never holds a weight twice; the packed arena is saved to, and
 * later loads map it from, the packed-weights cache (packcache.c). A tied
 * embedding is read back from the packed LM head. Other types are read in
 * place from the map. In reference mode nothing is repacked and every
 * product dequantises a weight row and takes plain f32 dot products.
 *
 * Gemma's extras sit in the same steps: the embedding row scaled, GeGLU in
 * place of SwiGLU, the attention and FFN outputs written to xb, normalised
 * there and only then added to the residual (post-norms), and the logits
 * soft-capped (the element steps in cpu-gemma.c). A local layer's window
 * and the attention soft-cap live in cpu-attn.c.
 *
 * The KV cache and attention live in cpu-attn.c; the structures both files
 * share, in cpu-int.h.
 */
#include "engine/cpu-int.h"
#include "engine/packcache.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---------------------------------------------------------------- setup */

/* Describe a model tensor as a kernel weight (not packed yet). */
static int cpu_weight(struct kern_weight *w, const struct tensor *t, struct err *e)
{
	memset(w, 0, sizeof(*w));
	const struct dtype_info *di = dtype_info(t->type);
	if (di == NULL || !di->weight_ok)
		return err_set(e, KVS_EUNSUPPORTED, "tensor %s: type %s cannot be used as a weight",
		               t->name ? t->name : "?", dtype_name(t->type));
	if (t->ne[0] % KERN_QK != 0)
		return err_set(e, KVS_EUNSUPPORTED, "tensor %s: row length %lld is not a multiple of %d",
		               t->name ? t->name : "?", (long long)t->ne[0], KERN_QK);
	w->type = t->type;
	w->cols = t->ne[0];
	w->rows = t->ne[1];
	w->data = t->data;
	if (!dtype_row_bytes(t->type, (uint64_t)t->ne[0], &w->row_bytes))
		return err_set(e, KVS_EFORMAT, "tensor %s: bad row length %lld for %s",
		               t->name ? t->name : "?", (long long)t->ne[0], dtype_name(t->type));
	return KVS_OK;
}

/* Every weight matrix of the model, for loops over all of them. */
static size_t cpu_all_weights(struct cpu *c, struct kern_weight **ws, size_t cap)
{
	size_t n = 0;
	for (uint32_t l = 0; l < c->hp.n_layer; l++) {
		struct cpu_layer *L = &c->L[l];
		struct kern_weight *list[] = { &L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down };
		for (size_t i = 0; i < KVS_ARRAY_LEN(list) && n < cap; i++)
			ws[n++] = list[i];
	}
	if (n < cap)
		ws[n++] = &c->out;
	return n;
}

struct cpu_pack_job {
	struct kern_weight **ws;
	size_t n;
	const uint8_t **src; /* (n) original data of each */
	bool drop;           /* drop the source pages once packed */
};

/* Drop the file pages under [p, p + n) from this process (whole pages only);
 * they stay in the page cache and fault back in if read again. */
static void cpu_drop_pages(const void *p, uint64_t n)
{
	uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1);
	uintptr_t hi = ((uintptr_t)p + n) & ~(page - 1);
	if (hi > lo)
		(void)madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* Pack every weight, each thread taking a share of each weight's groups and
 * letting go of the source pages of its share at once, so that the process
 * never holds a weight twice. */
static void cpu_pack_thread(void *arg, int ith, int nth)
{
	struct cpu_pack_job *pj = arg;
	for (size_t i = 0; i < pj->n; i++) {
		struct kern_weight *w = pj->ws[i];
		if (!w->packed)
			continue;
		int64_t groups = (w->rows + KERN_GROUP - 1) / KERN_GROUP, g0, g1;
		pool_split(groups, ith, nth, &g0, &g1);
		kern_pack(w->type, pj->src[i], w->rows, w->cols, (uint8_t *)w->data, g0, g1);
		if (pj->drop && g1 > g0) {
			uint64_t r0 = (uint64_t)g0 * KERN_GROUP;
			uint64_t r1 = KVS_MIN((uint64_t)g1 * KERN_GROUP, (uint64_t)w->rows);
			cpu_drop_pages(pj->src[i] + r0 * w->row_bytes, (r1 - r0) * w->row_bytes);
		}
	}
}

/* Repack the weights that have packed kernels (not in reference mode) into
 * one arena (huge pages where the kernel gives them), or map the arena
 * packed by an earlier load from the cache. */
static void cpu_pack_weights(struct cpu *c)
{
	struct kern_weight *ws[8 * 1024];
	size_t n = cpu_all_weights(c, ws, KVS_ARRAY_LEN(ws));
	const uint8_t **src = xcalloc(n, sizeof(*src));
	uint64_t total = 0;
	for (size_t i = 0; i < n; i++) {
		struct kern_weight *w = ws[i];
		if (c->ref || !kern_type_packed(w->type) || (i > 0 && w == ws[i - 1]))
			continue;
		uint64_t nb = kern_packed_bytes(w->type, w->rows, w->cols);
		w->group_bytes = nb / (uint64_t)((w->rows + KERN_GROUP - 1) / KERN_GROUP);
		w->packed = true;
		src[i] = w->data;
		w->data = (const uint8_t *)(uintptr_t)total; /* offset until the arena exists */
		total += (nb + 63) & ~(uint64_t)63;
	}
	if (total > 0) {
		uint64_t huge = 2u << 20;
		struct packcache_header h;
		c->arena_bytes = (total + huge - 1) & ~(huge - 1);
		char *cache = packcache_path(c->m->gguf, c->arena_bytes, total, &h);
		void *map = cache != NULL ? packcache_load(cache, &h) : NULL;
		bool cached = map != NULL;
		if (cached) {
			c->arena = map;
		} else {
			c->arena = mmap(NULL, c->arena_bytes, PROT_READ | PROT_WRITE,
			                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (c->arena == MAP_FAILED) {
				fprintf(stderr, "kvscope: out of memory mapping %llu bytes of weights\n",
				        (unsigned long long)c->arena_bytes);
				abort();
			}
			(void)madvise(c->arena, c->arena_bytes, MADV_HUGEPAGE);
		}
		for (size_t i = 0; i < n; i++)
			if (ws[i]->packed && src[i] != NULL)
				ws[i]->data = (uint8_t *)c->arena + (uintptr_t)ws[i]->data;
		bool stored = false;
		if (!cached) {
			struct cpu_pack_job pj = { ws, n, src, c->m->gguf != NULL && c->m->gguf->owns_map };
			pool_run(c->pool, cpu_pack_thread, &pj);
			if (cache != NULL)
				stored = packcache_store(cache, &h, c->arena);
		}
		if (cached)
			log_info("packed weights mapped from the cache %s", cache);
		else if (stored)
			log_info("packed weights written to the cache %s", cache);
		free(cache);
	}
	free(src);
}

/* Carve thread ith's cpu_fa out of c->fa (with f NULL: only count); the
 * floats a thread takes, each buffer 64-byte aligned. */
size_t cpu_flash_carve(const struct cpu *c, int ith, struct cpu_fa *f)
{
	size_t rows = c->fa_rows, hd = c->hp.head_dim, at = 0;
	size_t n[9] = {
		rows * hd, rows * hd, rows * hd, rows * CPU_FA_TILE, hd * CPU_FA_TILE, CPU_FA_TILE * hd,
		rows,      rows,      rows
	};
	float **dst[9] = { NULL };
	if (f != NULL) {
		float **d[9] = { &f->q, &f->o, &f->pv, &f->s, &f->kt, &f->v, &f->mx, &f->l, &f->alpha };
		memcpy(dst, d, sizeof(d));
	}
	for (int i = 0; i < 9; i++) {
		if (f != NULL)
			*dst[i] = c->fa + (size_t)ith * c->fa_stride + at;
		at += (n[i] + 15) & ~(size_t)15;
	}
	return at;
}

/* Floats per thread of the tiled attention's buffers. */
static size_t cpu_flash_floats(const struct cpu *c)
{
	return cpu_flash_carve(c, 0, NULL);
}

/* Free the per-ubatch scratch (cpu_reserve makes it). */
static void cpu_free_ubatch(struct cpu *c)
{
	xfree_aligned(c->x);
	xfree_aligned(c->xb);
	xfree_aligned(c->q);
	xfree_aligned(c->k);
	xfree_aligned(c->v);
	xfree_aligned(c->ao);
	xfree_aligned(c->g);
	xfree_aligned(c->u);
	xfree_aligned(c->tok_cs);
	xfree_aligned(c->tok_cs_swa);
	c->tok_cs_swa = NULL;
	xfree_aligned(c->act.q);
	xfree_aligned(c->act.d);
	xfree_aligned(c->act.s);
	xfree_aligned(c->act.isum);
	xfree_aligned(c->act.isum16);
}

/* Free the per-visible-slot scratch (cpu_reserve_vis makes it). */
static void cpu_free_visible(struct cpu *c)
{
	xfree_aligned(c->krot);
	xfree_aligned(c->vf);
	xfree_aligned(c->vpos);
	xfree_aligned(c->vorder);
	xfree_aligned(c->vslot);
	xfree_aligned(c->scores);
	free(c->vrow);
}

/* Grow the per-ubatch scratch to n tokens. */
static void cpu_reserve(struct cpu *c, uint32_t n)
{
	if (n <= c->cap)
		return;
	const struct hparams *hp = &c->hp;
	uint64_t nq = (uint64_t)hp->n_head * hp->head_dim, nkv = (uint64_t)hp->n_head_kv * hp->head_dim;
	uint64_t kmax = KVS_MAX(KVS_MAX((uint64_t)hp->n_embd, (uint64_t)hp->n_ff), nq);
	cpu_free_ubatch(c);
	c->cap = n;
	c->x = xmalloc_aligned((size_t)n * hp->n_embd * sizeof(float));
	c->xb = xmalloc_aligned((size_t)n * hp->n_embd * sizeof(float));
	c->q = xmalloc_aligned((size_t)n * nq * sizeof(float));
	c->k = xmalloc_aligned((size_t)n * nkv * sizeof(float));
	c->v = xmalloc_aligned((size_t)n * nkv * sizeof(float));
	c->ao = xmalloc_aligned((size_t)n * nq * sizeof(float));
	c->g = xmalloc_aligned((size_t)n * hp->n_ff * sizeof(float));
	c->u = xmalloc_aligned((size_t)n * hp->n_ff * sizeof(float));
	c->tok_cs = xmalloc_aligned((size_t)n * hp->n_rot * sizeof(float));
	if (c->two_ropes)
		c->tok_cs_swa = xmalloc_aligned((size_t)n * hp->n_rot * sizeof(float));
	c->act.q = xmalloc_aligned((size_t)n * kmax);
	c->act.d = xmalloc_aligned((size_t)n * (kmax / KERN_QK) * sizeof(float));
	c->act.s = xmalloc_aligned((size_t)n * (kmax / KERN_QK) * sizeof(float));
	c->act.isum = xmalloc_aligned((size_t)n * (kmax / KERN_QK) * sizeof(int32_t));
	c->act.isum16 = xmalloc_aligned((size_t)n * (kmax / (KERN_QK / 2)) * sizeof(int32_t));
}

/* Grow the visible-set scratch to n slots. */
static void cpu_reserve_vis(struct cpu *c, uint32_t n)
{
	if (n <= c->vis_cap)
		return;
	const struct hparams *hp = &c->hp;
	n = KVS_MAX(n, 64u);
	n = (n + 15) & ~15u;
	cpu_free_visible(c);
	c->vis_cap = n;
	size_t kv = (size_t)hp->n_head_kv * hp->head_dim * n;
	c->krot = xmalloc_aligned(kv * sizeof(float));
	c->vf = xmalloc_aligned(kv * sizeof(float));
	c->vpos = xmalloc_aligned((size_t)n * sizeof(int32_t));
	c->vorder = xmalloc_aligned((size_t)n * sizeof(uint32_t));
	c->vslot = xmalloc_aligned((size_t)n * sizeof(uint32_t));
	c->vrow = c->rows ? xmallocarray((size_t)hp->n_layer * hp->n_head_kv * n, sizeof(uint32_t))
	                  : NULL;
	c->scores = xmalloc_aligned((size_t)pool_size(c->pool) * c->q_rows * n * sizeof(float));
}

static void cpu_free(void *state);
static int cpu_create_cache(struct cpu *c, const struct backend_ctx *ctx, void **state,
                            struct err *e);

static int cpu_create(const struct backend_ctx *ctx, void **state, struct err *e)
{
	const struct model *m = ctx->m;
	const struct hparams *hp = &m->hp;
	if (hp->head_dim % 16 != 0 || hp->head_dim > KERN_ROW_MAX || hp->n_rot > hp->head_dim ||
	    hp->n_rot % 2 != 0 || hp->n_head_kv == 0 || hp->n_head % hp->n_head_kv != 0)
		return err_set(e, KVS_EUNSUPPORTED,
		               "head_dim %u / n_rot %u / heads %u:%u: expected head_dim a multiple of 16 "
		               "up to 256, even n_rot <= head_dim, n_head a multiple of n_head_kv",
		               hp->head_dim, hp->n_rot, hp->n_head, hp->n_head_kv);
	struct cpu *c = xcalloc(1, sizeof(*c));
	c->m = m;
	model_rope_params(hp, false, ctx->cfg.n_ctx, &c->hp);
	model_rope_params(hp, true, ctx->cfg.n_ctx, &c->hp_swa);
	c->cfg = ctx->cfg;
	c->slot_pos = ctx->slot_pos;
	c->rows = ctx->rows;
	c->n_rows = ctx->rows ? ctx->cfg.n_rows : ctx->cfg.n_ctx;
	c->ref = ctx->cfg.reference;
	enum kern_level want = KERN_AVX512;
	if (c->ref || ctx->cfg.isa == ENGINE_ISA_SCALAR)
		want = KERN_SCALAR;
	else if (ctx->cfg.isa == ENGINE_ISA_AVX2)
		want = KERN_AVX2;
	c->ops = kern_select(want);
	c->L = xcalloc(hp->n_layer, sizeof(*c->L));
	const struct cpu *base = ctx->share;
	if (base != NULL) {
		/* a shadow: the base's packed weights and threads, a cache of its own */
		if (base->m != m || base->ref != c->ref) {
			free(c->L);
			free(c);
			return err_set(e, KVS_EARG, "a shared state needs the same model and mode");
		}
		c->shared = true;
		c->ops = base->ops;
		c->pool = base->pool;
		memcpy(c->L, base->L, hp->n_layer * sizeof(*c->L));
		c->embd = base->embd;
		c->out = base->out;
		c->lookup = base->lookup == &base->out ? &c->out : &c->embd;
		return cpu_create_cache(c, ctx, state, e);
	}
	c->pool = pool_create(ctx->cfg.n_threads);

	int rc = KVS_OK;
	for (uint32_t l = 0; l < hp->n_layer && rc == KVS_OK; l++) {
		const struct layer_weights *lw = &m->layers[l];
		struct cpu_layer *L = &c->L[l];
		L->attn_norm = lw->attn_norm.data;
		L->ffn_norm = lw->ffn_norm.data;
		L->bq = lw->bq.data;
		L->bk = lw->bk.data;
		L->bv = lw->bv.data;
		L->q_norm = lw->q_norm.data;
		L->k_norm = lw->k_norm.data;
		L->attn_post_norm = lw->attn_post_norm.data;
		L->ffn_post_norm = lw->ffn_post_norm.data;
		L->window = model_layer_window(hp, l);
		c->two_ropes = c->two_ropes ||
		        (L->window > 0 &&
		         (c->hp_swa.rope_base != c->hp.rope_base ||
		          c->hp_swa.rope_freq_scale != c->hp.rope_freq_scale));
		if ((rc = cpu_weight(&L->wq, &lw->wq, e)) || (rc = cpu_weight(&L->wk, &lw->wk, e)) ||
		    (rc = cpu_weight(&L->wv, &lw->wv, e)) || (rc = cpu_weight(&L->wo, &lw->wo, e)) ||
		    (rc = cpu_weight(&L->gate, &lw->w_gate, e)) ||
		    (rc = cpu_weight(&L->up, &lw->w_up, e)) || (rc = cpu_weight(&L->down, &lw->w_down, e)))
			break;
	}
	if (rc == KVS_OK)
		rc = cpu_weight(&c->embd, &m->tok_embd, e);
	if (rc == KVS_OK)
		rc = cpu_weight(&c->out, m->output.data ? &m->output : &m->tok_embd, e);
	if (rc != KVS_OK) {
		cpu_free(c);
		return rc;
	}
	cpu_pack_weights(c);
	/* A tied embedding is read from the packed copy: the file pages it came
	 * from stay dropped (random tokens would otherwise fault in much of it). */
	c->lookup = c->out.packed &&
	                m->tok_embd.data == (m->output.data ? m->output.data : m->tok_embd.data)
	        ? &c->out
	        : &c->embd;
	return cpu_create_cache(c, ctx, state, e);
}

/* The KV cache and the scratch of a state whose weights are in place. */
static int cpu_create_cache(struct cpu *c, const struct backend_ctx *ctx, void **state,
                            struct err *e)
{
	const struct hparams *hp = &c->hp;
	c->kv_es = ctx->cfg.kv_type == ENGINE_KV_F32 ? 4 : 2;
	c->kv_row = (uint64_t)hp->n_head_kv * hp->head_dim;
	c->kc = xcalloc(hp->n_layer, sizeof(*c->kc));
	c->vc = xcalloc(hp->n_layer, sizeof(*c->vc));
	c->kr = xcalloc(hp->n_layer, sizeof(*c->kr));
	bool got = true;
	for (uint32_t l = 0; l < hp->n_layer && got; l++) {
		/* calloc: untouched slots cost no memory. The size comes from the
		 * context the user chose, so a refusal is an error, not fatal. */
		c->kc[l] = calloc(c->n_rows, c->kv_row * c->kv_es);
		c->vc[l] = calloc(c->n_rows, c->kv_row * c->kv_es);
		c->kr[l] = calloc(c->n_rows, c->kv_row * c->kv_es);
		got = c->kc[l] != NULL && c->vc[l] != NULL && c->kr[l] != NULL;
	}
	c->kr_pos = got ? malloc((size_t)ctx->cfg.n_ctx * sizeof(int32_t)) : NULL;
	if (c->kr_pos == NULL) {
		cpu_free(c);
		return engine_nomem(e, ctx->cfg.n_ctx,
		                    (double)c->n_rows * 3.0 * hp->n_layer * c->kv_row * c->kv_es +
		                            (double)ctx->cfg.n_ctx * sizeof(int32_t));
	}
	for (uint32_t s = 0; s < ctx->cfg.n_ctx; s++)
		c->kr_pos[s] = -1;
	c->rcs = xmallocarray((size_t)pool_size(c->pool) * 2 * KVS_MAX(hp->n_rot, 1u), sizeof(float));
	c->q_rows = KVS_MAX((uint32_t)KERN_ATT_Q, hp->n_head);
	c->qh = xmalloc_aligned((size_t)pool_size(c->pool) * c->q_rows * hp->head_dim * sizeof(float));
	c->kmax = KVS_MAX(KVS_MAX((uint64_t)hp->n_embd, (uint64_t)hp->n_ff),
	                  (uint64_t)hp->n_head * hp->head_dim);
	int nth = pool_size(c->pool);
	c->tmp = xmalloc_aligned((size_t)nth * KERN_GENERIC_ROWS * c->kmax * sizeof(float));
	c->txb = xmalloc_aligned((size_t)nth * c->kmax * sizeof(float));
	uint32_t grp = hp->n_head / hp->n_head_kv;
	c->fa_tokens = KVS_MAX(1u, (CPU_FA_ROWS + grp - 1) / grp);
	c->fa_rows = c->fa_tokens * grp;
	c->fa_stride = cpu_flash_floats(c);
	c->fa = xmalloc_aligned((size_t)nth * c->fa_stride * sizeof(float));
	c->fa_next = xcalloc(hp->n_layer, sizeof(*c->fa_next));
	c->dpart = xmalloc_aligned((size_t)nth * hp->n_head * (hp->head_dim + 2) * sizeof(float));
	c->tact = xcalloc((size_t)nth, sizeof(*c->tact));
	for (int t = 0; t < nth; t++) {
		c->tact[t].q = xmalloc_aligned(c->kmax);
		c->tact[t].d = xmalloc_aligned(c->kmax / KERN_QK * sizeof(float));
		c->tact[t].s = xmalloc_aligned(c->kmax / KERN_QK * sizeof(float));
		c->tact[t].isum = xmalloc_aligned(c->kmax / KERN_QK * sizeof(int32_t));
		c->tact[t].isum16 = xmalloc_aligned(c->kmax / (KERN_QK / 2) * sizeof(int32_t));
	}
	cpu_reserve(c, 1);
	cpu_reserve_vis(c, 64);
	*state = c;
	return KVS_OK;
}

static void cpu_free(void *state)
{
	struct cpu *c = state;
	if (c == NULL)
		return;
	if (c->arena && !c->shared)
		munmap(c->arena, c->arena_bytes);
	for (uint32_t l = 0; c->kc && l < c->hp.n_layer; l++) {
		free(c->kc[l]);
		free(c->vc[l]);
		free(c->kr[l]);
	}
	free(c->kc);
	free(c->vc);
	free(c->kr);
	free(c->L);
	free(c->kr_pos);
	cpu_sparse_free(c);
	free(c->rcs);
	xfree_aligned(c->qh);
	cpu_free_ubatch(c);
	cpu_free_visible(c);
	free(c->akv);
	free(c->cap_cs);
	free(c->cap_pos);
	free(c->cap_k);
	free(c->lam_mk);
	free(c->lam_sc);
	free(c->lam_idx);
	free(c->ins_cs);
	free(c->ins_pos);
	xfree_aligned(c->tmp);
	xfree_aligned(c->txb);
	xfree_aligned(c->fa);
	free(c->fa_next);
	xfree_aligned(c->dpart);
	for (int t = 0; c->tact && t < pool_size(c->pool); t++) {
		xfree_aligned(c->tact[t].q);
		xfree_aligned(c->tact[t].d);
		xfree_aligned(c->tact[t].s);
		xfree_aligned(c->tact[t].isum);
		xfree_aligned(c->tact[t].isum16);
	}
	free(c->tact);
	xfree_aligned(c->lm);
	if (!c->shared)
		pool_free(c->pool);
	free(c);
}

/* ---------------------------------------------------------- small steps */

/* out = x / sqrt(mean(x^2) + eps) * w (n_embd). */
static void cpu_rmsnorm(const struct cpu *c, const float *x, const float *w, float *out)
{
	c->ops->rmsnorm(x, w, out, c->hp.n_embd, c->hp.rms_eps);
}

/* A product y (n, rows) = x W^T over units of 16 rows. */
struct cpu_mm {
	const struct kern_weight *w;
	float *y;
	int64_t ldy;
	bool acc;
};

/* A view of the quantised activations as rows of K, from row r0. */
static struct kern_act cpu_act(const struct cpu *c, int64_t K, int64_t r0)
{
	struct kern_act a = { K,
		                  c->act.q + r0 * K,
		                  c->act.d + r0 * (K / KERN_QK),
		                  c->act.s + r0 * (K / KERN_QK),
		                  c->act.isum + r0 * (K / KERN_QK),
		                  c->act.isum16 + r0 * (K / (KERN_QK / 2)) };
	return a;
}

/* Number of 16-row units of a weight. */
static int64_t cpu_units(const struct kern_weight *w)
{
	return (w->rows + KERN_GROUP - 1) / KERN_GROUP;
}

/* Units [u0, u1) of one product for n tokens: packed weights take the
 * quantised activations a, others the f32 rows x (stride K). */
static void cpu_mm_units(struct cpu *c, const struct cpu_mm *mm, int64_t u0, int64_t u1,
                         const float *x, int64_t K, const struct kern_act *a, int64_t n, int ith)
{
	if (u1 <= u0)
		return;
	const struct kern_weight *w = mm->w;
	if (w->packed)
		c->ops->gemm_packed(w, u0, u1, a, n, mm->y, mm->ldy, mm->acc);
	else
		kern_gemm_generic(c->ops, w, u0 * KERN_GROUP, KVS_MIN(u1 * KERN_GROUP, w->rows), x, K, n,
		                  mm->y, mm->ldy, mm->acc,
		                  c->tmp + (size_t)ith * KERN_GENERIC_ROWS * c->kmax);
}

/* Several products sharing one input (n rows: f32 x and quantised a), their
 * units split across threads. */
static void cpu_mm_multi(struct cpu *c, const struct cpu_mm *mms, int n_mm, const float *x,
                         int64_t K, const struct kern_act *a, int64_t n, int ith, int nth)
{
	int64_t total = 0;
	for (int i = 0; i < n_mm; i++)
		total += cpu_units(mms[i].w);
	int64_t lo, hi, base = 0;
	pool_split(total, ith, nth, &lo, &hi);
	for (int i = 0; i < n_mm; i++) {
		int64_t nu = cpu_units(mms[i].w);
		int64_t u0 = KVS_MAX(lo - base, (int64_t)0), u1 = KVS_MIN(hi - base, nu);
		cpu_mm_units(c, &mms[i], u0, u1, x, K, a, n, ith);
		base += nu;
	}
}

/* The feed-forward's first half: each thread takes the same 16-row units of
 * gate and up, so it can finish its rows with silu(gate) * up (or GeGLU)
 * into g. */
static void cpu_gate_up(struct cpu *c, const struct cpu_layer *L, const float *x,
                        const struct kern_act *a, int64_t n, int ith, int nth)
{
	uint32_t ne = c->hp.n_embd, nff = c->hp.n_ff;
	int64_t u0, u1;
	pool_split(cpu_units(&L->gate), ith, nth, &u0, &u1);
	struct cpu_mm g = { &L->gate, c->g, nff, false }, u = { &L->up, c->u, nff, false };
	cpu_mm_units(c, &g, u0, u1, x, ne, a, n, ith);
	cpu_mm_units(c, &u, u0, u1, x, ne, a, n, ith);
	int64_t r0 = u0 * KERN_GROUP, r1 = KVS_MIN(u1 * KERN_GROUP, (int64_t)nff);
	void (*act)(float *, const float *, int64_t) =
	        c->hp.ffn_act == FFN_GELU ? c->ops->geglu : c->ops->swiglu;
	for (int64_t t = 0; r1 > r0 && t < n; t++)
		act(c->g + t * nff + r0, c->u + t * nff + r0, r1 - r0);
}

/* Quantise rows [i0, i1) of src (row length K) into the activations. */
static void cpu_quant_rows(struct cpu *c, const float *src, uint32_t K, uint32_t i0, uint32_t i1)
{
	if (c->ref)
		return;
	struct kern_act a = cpu_act(c, K, 0);
	for (uint32_t i = i0; i < i1; i++)
		c->ops->quant_row(src + (size_t)i * K, &a, i);
}

/* Normalise rows [i0, i1) of x with weight w into xb and quantise them. */
static void cpu_norm_rows(struct cpu *c, const float *w, uint32_t i0, uint32_t i1)
{
	uint32_t ne = c->hp.n_embd;
	for (uint32_t i = i0; i < i1; i++)
		cpu_rmsnorm(c, c->x + (size_t)i * ne, w, c->xb + (size_t)i * ne);
	cpu_quant_rows(c, c->xb, ne, i0, i1);
}

/* This thread's share [lo, hi) of n items. */
void cpu_share(uint32_t n, int ith, int nth, uint32_t *lo, uint32_t *hi)
{
	int64_t a, b;
	pool_split(n, ith, nth, &a, &b);
	*lo = (uint32_t)a;
	*hi = (uint32_t)b;
}

/* ---------------------------------------------------------- forward pass */
/* Quantise the input of a layer's next product and return it as
 * activations: rows of K from src, or (norm not NULL) src = x normalised
 * with the weight norm into xb first (K = n_embd). Shared: this thread's rows
 * [lo, hi) into the ubatch's activations, then a barrier. Solo (a one-token
 * batch on several threads): every thread the whole row into its own
 * buffers (xb, tact[ith]), with no barrier. */
static struct kern_act cpu_fwd_input(struct cpu *c, const float *norm, const float *src, uint32_t K,
                                     float *xb, int ith, uint32_t lo, uint32_t hi, bool solo)
{
	if (!solo) {
		if (norm != NULL)
			cpu_norm_rows(c, norm, lo, hi);
		else
			cpu_quant_rows(c, src, K, lo, hi);
		pool_barrier(c->pool);
		return cpu_act(c, K, 0);
	}
	if (norm != NULL) {
		cpu_rmsnorm(c, src, norm, xb);
		src = xb;
	}
	struct kern_act a = c->tact[ith];
	a.K = K;
	if (!c->ref)
		c->ops->quant_row(src, &a, 0);
	return a;
}

/*
 * One transformer block for the ubatch, run by every thread.
 *
 * A one-token batch (decode) on several threads spends much of its time in
 * barriers, and a barrier costs a whole time slice when another process has
 * taken the core of a thread it waits for. So there each thread normalises
 * and quantises the (single) row itself into its own buffers instead of
 * sharing one, reads in place its share of the keys of every KV head, and
 * merges the threads' attention parts itself into its own row: 6 barriers
 * per layer instead of 10.
 */
static void cpu_fwd_layer(struct cpu_job *jb, uint32_t l, int ith, int nth)
{
	struct cpu *c = jb->c;
	const struct hparams *hp = &c->hp;
	const struct cpu_layer *L = &c->L[l];
	uint32_t n = jb->n, ne = hp->n_embd, hd = hp->head_dim;
	uint32_t nq = hp->n_head * hd, nff = hp->n_ff, nkv = hp->n_head_kv * hd;
	bool solo = n == 1 && nth > 1;
	uint32_t lo, hi;
	cpu_share(n, ith, nth, &lo, &hi);
	/* the input rows of the products: shared, or this thread's own */
	float *xb = solo ? c->txb + (size_t)ith * c->kmax : c->xb;

	/* attention block: xb = norm(x); q, k, v = xb W^T (+ b) */
	struct kern_act a = cpu_fwd_input(c, L->attn_norm, c->x, ne, xb, ith, lo, hi, solo);
	struct cpu_mm qkv[3] = {
		{ &L->wq, c->q, nq, false },
		{ &L->wk, c->k, nkv, false },
		{ &L->wv, c->v, nkv, false },
	};
	cpu_mm_multi(c, qkv, 3, xb, ne, &a, n, ith, nth);
	pool_barrier(c->pool);
	for (uint32_t i = lo; i < hi; i++)
		cpu_qkv_finish(jb, l, i);
	pool_barrier(c->pool);
	/* a decode step times its attention; a sparse layer chooses its keys */
	bool sparse = cpu_sparse_layer(jb, l);
	if (n == 1 && ith == 0)
		c->sp_t0 = clock_now_ms();
	if (sparse)
		cpu_sparse_choose(jb, l, ith, nth);

	/* attention: the special features need whole score rows (cpu_attend,
	 * a prefill on gathered f32 copies); otherwise a decode splits the keys
	 * across threads (reporting its weights if asked, so that watching a
	 * decode does not change its arithmetic) and a prefill goes tile by tile
	 * (cpu_flash), all but a last token whose weights are asked for. A
	 * sparse layer asked for weights reports the dense ones (a shadow) from
	 * whole rows. */
	uint32_t grp = hp->n_head / hp->n_head_kv, per_kv = (grp + KERN_ATT_Q - 1) / KERN_ATT_Q;
	uint32_t ilo, ihi, n_items = n * hp->n_head_kv * per_kv;
	bool weights = jb->b->want_attn && jb->last;
	bool split = n == 1 && !jb->whole && !(weights && sparse);
	const float *ao = c->ao; /* the products' input: shared, or this thread's own */
	if (split) {
		if (sparse)
			cpu_sparse_split(jb, l, ith, nth);
		else
			cpu_attend_split(jb, l, ith, nth);
		pool_barrier(c->pool);
		if (weights)
			cpu_split_weights(jb, l, ith, nth);
		if (solo) {
			cpu_split_merge(c, xb);
			ao = xb;
		} else {
			cpu_split_merge(c, c->ao);
		}
	} else {
		cpu_share(n_items, ith, nth, &ilo, &ihi);
		if (solo) {
			/* whole KV heads per thread, read in place (cpu_attend) */
			uint32_t g0, g1;
			cpu_share(hp->n_head_kv, ith, nth, &g0, &g1);
			ilo = g0 * per_kv;
			ihi = g1 * per_kv;
		} else if (n > 1 && jb->whole) {
			cpu_gather_kv(c, l, 0, hp->n_head_kv, ith, nth);
			pool_barrier(c->pool);
		} else if (n > 1) {
			uint32_t n_tiled = jb->b->want_attn && jb->last ? n - 1 : n;
			cpu_flash_items(jb, l, n_tiled, ith, nth,
			                cpu_sparse_prefill(jb, l) ? cpu_hip_flash : cpu_flash);
			/* the remaining token's items, if any, in place */
			uint32_t first = n_tiled * hp->n_head_kv * per_kv;
			cpu_share(n_items - first, ith, nth, &ilo, &ihi);
			ilo += first;
			ihi += first;
		}
		cpu_attend_items(jb, l, ilo, ihi, ith);
		pool_barrier(c->pool);
	}
	if (n == 1 && ith == 0)
		cpu_sparse_account(jb, l, sparse);

	/* x += attn W_o^T; with a post-norm, x += norm(attn W_o^T) (the product
	 * goes to the shared xb, which a one-token batch leaves unused) */
	a = cpu_fwd_input(c, NULL, ao, nq, xb, ith, lo, hi, solo);
	bool post = L->attn_post_norm != NULL;
	struct cpu_mm o = { &L->wo, post ? c->xb : c->x, ne, !post };
	cpu_mm_multi(c, &o, 1, ao, nq, &a, n, ith, nth);
	pool_barrier(c->pool);
	if (post) {
		cpu_post_norm(c, L->attn_post_norm, lo, hi);
		pool_barrier(c->pool);
	}

	/* feed-forward: x += (silu(xb W_gate^T) * xb W_up^T) W_down^T */
	a = cpu_fwd_input(c, L->ffn_norm, c->x, ne, xb, ith, lo, hi, solo);
	cpu_gate_up(c, L, xb, &a, n, ith, nth);
	pool_barrier(c->pool);
	a = cpu_fwd_input(c, NULL, c->g, nff, xb, ith, lo, hi, solo);
	post = L->ffn_post_norm != NULL;
	struct cpu_mm down = { &L->down, post ? c->xb : c->x, ne, !post };
	cpu_mm_multi(c, &down, 1, c->g, nff, &a, n, ith, nth);
	pool_barrier(c->pool);
	if (post) {
		cpu_post_norm(c, L->ffn_post_norm, lo, hi);
		pool_barrier(c->pool);
	}
}


/* The output stage of a ubatch: logits and statistics as asked. */
static void cpu_fwd_output(struct cpu_job *jb, int ith, int nth)
{
	struct cpu *c = jb->c;
	const struct engine_batch *b = jb->b;
	uint32_t n = jb->n, nvoc = c->hp.n_vocab, ne = c->hp.n_embd;
	const float *onorm = c->m->out_norm.data;
	bool all = b->logits == ENGINE_LOGITS_ALL;
	if (!all && !b->want_surprisal) {
		if (!jb->last || b->logits == ENGINE_LOGITS_NONE)
			return;
		/* only the last row: norm it into xb row 0 */
		if (ith == 0) {
			cpu_rmsnorm(c, c->x + (size_t)(n - 1) * ne, onorm, c->xb);
			cpu_quant_rows(c, c->xb, ne, 0, 1);
		}
		pool_barrier(c->pool);
		struct cpu_mm mm = { &c->out, jb->bo->logits, nvoc, false };
		struct kern_act a = cpu_act(c, ne, 0);
		cpu_mm_multi(c, &mm, 1, c->xb, ne, &a, 1, ith, nth);
		if (c->hp.final_softcap > 0) {
			pool_barrier(c->pool);
			cpu_softcap_logits(c, jb->bo->logits, 1, ith, nth);
		}
		return;
	}
	/* every row: norm them all, then the LM head in chunks */
	uint32_t lo, hi;
	cpu_share(n, ith, nth, &lo, &hi);
	for (uint32_t i = lo; i < hi; i++)
		cpu_rmsnorm(c, c->x + (size_t)i * ne, onorm, c->xb + (size_t)i * ne);
	cpu_quant_rows(c, c->xb, ne, lo, hi);
	pool_barrier(c->pool);
	uint32_t chunk = all ? n : CPU_LM_CHUNK;
	for (uint32_t r0 = 0; r0 < n; r0 += chunk) {
		uint32_t nr = KVS_MIN(chunk, n - r0);
		float *y = all ? jb->bo->logits + (size_t)(jb->t0 + r0) * nvoc : c->lm;
		struct cpu_mm mm = { &c->out, y, nvoc, false };
		struct kern_act a = cpu_act(c, ne, r0);
		cpu_mm_multi(c, &mm, 1, c->xb + (size_t)r0 * ne, ne, &a, nr, ith, nth);
		pool_barrier(c->pool);
		if (c->hp.final_softcap > 0) {
			cpu_softcap_logits(c, y, nr, ith, nth);
			pool_barrier(c->pool);
		}
		if (b->want_surprisal) {
			uint32_t slo, shi;
			cpu_share(nr, ith, nth, &slo, &shi);
			for (uint32_t r = slo; r < shi; r++) {
				uint32_t t = jb->t0 + r0 + r;
				int32_t next = t + 1 < b->n_tokens ? b->tokens[t + 1] : -1;
				engine_row_stats(y + (size_t)r * nvoc, nvoc, next, &jb->bo->surprisal[t],
				                 &jb->bo->entropy[t]);
			}
		}
		/* LAST with statistics: keep the last row of the last chunk */
		if (!all && b->logits == ENGINE_LOGITS_LAST && jb->last && r0 + nr == n && ith == 0)
			memcpy(jb->bo->logits, y + (size_t)(nr - 1) * nvoc, nvoc * sizeof(float));
		pool_barrier(c->pool);
	}
}

/* The whole ubatch on one thread's share. */
static void cpu_fwd_thread(void *arg, int ith, int nth)
{
	struct cpu_job *jb = arg;
	struct cpu *c = jb->c;
	const struct engine_batch *b = jb->b;
	const struct hparams *hp = &c->hp;
	uint32_t n = jb->n, ne = hp->n_embd;
	uint32_t lo, hi;
	cpu_share(n, ith, nth, &lo, &hi);
	for (uint32_t i = lo; i < hi; i++) {
		float *x = c->x + (size_t)i * ne;
		kern_weight_row(c->lookup, b->tokens[jb->t0 + i], x);
		if (hp->embd_scale > 0 && hp->embd_scale != 1.0f) /* gemma: x sqrt(n_embd) */
			for (uint32_t d = 0; d < ne; d++)
				x[d] *= hp->embd_scale;
		float *cs = c->tok_cs + (size_t)i * hp->n_rot;
		engine_rope_cos_sin(hp, b->pos[jb->t0 + i], cs, cs + hp->n_rot / 2);
		if (c->two_ropes) {
			cs = c->tok_cs_swa + (size_t)i * hp->n_rot;
			engine_rope_cos_sin(&c->hp_swa, b->pos[jb->t0 + i], cs, cs + hp->n_rot / 2);
		}
	}
	cpu_refresh_keys(c, b, ith, nth);
	pool_barrier(c->pool);
	if (c->sparse != NULL)
		cpu_sparse_sync(jb, ith, nth);
	for (uint32_t l = 0; l < hp->n_layer; l++)
		cpu_fwd_layer(jb, l, ith, nth);
	cpu_fwd_output(jb, ith, nth);
}

static int cpu_forward(void *state, const struct engine_batch *b, struct backend_out *out,
                       struct err *e)
{
	struct cpu *c = state;
	(void)e;
	cpu_reserve(c, KVS_MIN(b->n_tokens, (uint32_t)CPU_UBATCH));
	cpu_reserve_vis(c, b->n_visible);
	if (b->want_surprisal && b->logits != ENGINE_LOGITS_ALL && c->lm == NULL)
		c->lm = xmalloc_aligned((size_t)CPU_LM_CHUNK * c->hp.n_vocab * sizeof(float));
	cpu_sort_visible(c, b);
	if (c->rows != NULL)
		cpu_rows_build(c, b->n_visible);
	cpu_sparse_prepare(c, b);
	/* the batch's own rotated keys are written as its layers run */
	for (uint32_t i = 0; i < b->n_tokens; i++)
		c->kr_pos[b->slot[i]] = b->pos[i];
	int nthreads = pool_size(c->pool);
	size_t akv_per = (size_t)c->hp.n_layer * c->hp.n_head_kv;
	if (out->attn_kv != NULL) {
		if (c->akv_cap < b->n_visible) {
			free(c->akv);
			c->akv_cap = c->vis_cap;
			c->akv = xmallocarray((size_t)nthreads * akv_per * c->akv_cap, sizeof(float));
		}
		memset(c->akv, 0, (size_t)nthreads * akv_per * c->akv_cap * sizeof(float));
	}
	bool lambda = (b->dist_cap > 0 && b->n_global > 0) || b->n_local > 0;
	if (lambda && c->cap_cs == NULL) {
		c->cap_cs = xmallocarray((size_t)nthreads * c->hp.n_rot, sizeof(float));
		c->ins_cs = xmallocarray((size_t)nthreads * c->hp.n_rot, sizeof(float));
		c->cap_k = xmallocarray((size_t)nthreads * c->hp.head_dim, sizeof(float));
		c->cap_pos = xmallocarray((size_t)nthreads, sizeof(int32_t));
		c->ins_pos = xmallocarray((size_t)nthreads, sizeof(int32_t));
	}
	if (lambda && c->lam_cap < c->vis_cap) {
		free(c->lam_mk);
		free(c->lam_sc);
		free(c->lam_idx);
		c->lam_cap = c->vis_cap;
		c->lam_mk = xcalloc((size_t)nthreads * KERN_ATT_Q * c->lam_cap, 1);
		c->lam_sc = xmallocarray((size_t)nthreads * KERN_ATT_Q * c->lam_cap, sizeof(float));
		c->lam_idx = xmallocarray((size_t)nthreads * c->lam_cap, sizeof(uint32_t));
	}
	for (int t = 0; lambda && t < nthreads; t++)
		c->cap_pos[t] = c->ins_pos[t] = -1;
	/* A decode step is ~200 barriers; when the machine has no free core for
	 * every thread, waiting on descheduled peers costs more than the other
	 * threads gain. So decode steps time themselves on one thread and on
	 * all, keep a moving average of each, run the faster, and now and then
	 * try the other again (the results do not depend on the thread count).
	 * The first CPU_PROBE_FIRST steps alternate; after them a try's time
	 * replaces the other count's average instead of moving it a quarter of
	 * the way, so one slow step (a thread descheduled once) costs at most
	 * CPU_PROBE_EVERY steps on the wrong count, not the ~100 an average
	 * needed to recover. */
	int nth = pool_size(c->pool), mode = 1;
	bool one = b->n_tokens == 1 && nth > 1, tried = false;
	if (one) {
		bool faster_alone = c->step_ms[0] > 0 && c->step_ms[0] < c->step_ms[1];
		if (c->n_steps < CPU_PROBE_FIRST) {
			mode = (int)(c->n_steps % 2 == 0);
		} else {
			tried = c->n_steps % CPU_PROBE_EVERY == CPU_PROBE_EVERY - 1;
			mode = faster_alone != tried ? 0 : 1;
		}
		nth = mode ? nth : 1;
		c->n_steps++;
	}
	double t_start = clock_now_ms();
	for (uint32_t t0 = 0; t0 < b->n_tokens; t0 += CPU_UBATCH) {
		struct cpu_job jb = { .c = c, .b = b, .bo = out, .t0 = t0 };
		jb.n = KVS_MIN((uint32_t)CPU_UBATCH, b->n_tokens - t0);
		jb.last = t0 + jb.n == b->n_tokens;
		jb.whole = lambda || out->attn_kv != NULL || c->ref;
		for (uint32_t l = 0; l < c->hp.n_layer; l++)
			atomic_store_explicit(&c->fa_next[l], 0, memory_order_relaxed);
		pool_run_n(c->pool, nth, cpu_fwd_thread, &jb);
	}
	cpu_sparse_finish(c, b, out);
	if (one) {
		double ms = clock_now_ms() - t_start;
		double *avg = &c->step_ms[mode];
		*avg = *avg == 0 || tried ? ms : 0.75 * *avg + 0.25 * ms;
	}
	if (out->attn_kv != NULL) {
		/* the threads' sums (or maxima), in visible-list order */
		uint32_t nv = b->n_visible;
		for (size_t h = 0; h < akv_per; h++)
			for (uint32_t j = 0; j < nv; j++) {
				float sum = 0;
				for (int t = 0; t < nthreads; t++) {
					float v = c->akv[((size_t)t * akv_per + h) * c->akv_cap + j];
					sum = b->attn_kv_max ? (v > sum ? v : sum) : sum + v;
				}
				out->attn_kv[h * nv + j] = sum;
			}
	}
	return KVS_OK;
}

static const char *cpu_isa_name(void *state)
{
	struct cpu *c = state;
	return c->ref ? "reference" : c->ops->name;
}

const struct backend_ops backend_cpu = {
	.name = "cpu",
	.create = cpu_create,
	.forward = cpu_forward,
	.kv_copy = cpu_kv_copy,
	.kv_read = cpu_kv_read,
	.isa_name = cpu_isa_name,
	.free = cpu_free,
	.caps = ENGINE_CAP_ATTN_KV | ENGINE_CAP_DIST_CAP | ENGINE_CAP_LAMBDA | ENGINE_CAP_SPARSE |
	        ENGINE_CAP_SQUEEZED | ENGINE_CAP_SHARE | ENGINE_CAP_QUERY | ENGINE_CAP_HEAD_KEEP |
	        ENGINE_CAP_HEAD_ROWS,
	.kv_raw = cpu_kv_raw,
	.page_bounds = cpu_sparse_bounds,
};
