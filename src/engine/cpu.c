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
 * KV cache: per layer K and V as (n_ctx, n_head_kv, head_dim), F16 or F32.
 * Keys are stored twice: before RoPE (the exact source, for re-positioning
 * and engine_kv_read) and rotated to the slot's current position (what
 * attention reads, rounded to the cache type as llama.cpp's cache is). A
 * forward first re-rotates, from the pre-RoPE keys, the visible slots whose
 * position moved since their rotated keys were made (compaction), so a
 * rotated key is always the pre-RoPE key rotated directly to its position.
 * Each forward sorts the visible slots by position (empty slots last); a
 * query at position p attends to the prefix of that order with positions
 * <= p. A one-token batch (decode) reads keys and values in place, row by
 * row, each row once for all the query heads of its KV head. A larger batch
 * goes tile by tile (cpu_flash): a block of queries (tokens x the heads of
 * one KV head) against CPU_FA_TILE keys at a time, the tile converted to
 * f32 once (keys transposed, so scores against 16 keys are 16-wide FMAs)
 * for the whole block, with an online softmax, so a long prefill never
 * streams all the keys once per query. The features that need a query's
 * whole row of scores (Λ-masks, per-key attention sums, the reference
 * path) gather the keys per layer into f32 scratch (transposed keys
 * (n_head_kv, head_dim, n_vis), values (n_head_kv, n_vis, head_dim)) and
 * take one query at a time (cpu_attend).
 *
 * Attention rule: query i at position p sees visible slot s when
 * 0 <= pos(s) <= p. A query that sees nothing gets a zero output.
 */
#include "engine/engine.h"
#include "engine/kern.h"
#include "engine/packcache.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CPU_UBATCH 512     /* tokens per pool_run */
#define CPU_LM_CHUNK 32    /* rows per LM-head chunk when only statistics are kept */
#define CPU_PROBE_EVERY 32 /* decode steps between tries of the other thread count */
#define CPU_FA_TILE 64     /* keys per tile of the tiled prefill attention */
#define CPU_DEC_RUN 256    /* keys per run of the split decode attention */
#define CPU_FA_ROWS \
	96 /* query rows (tokens x heads) per block, at least: the
                              * tile conversion is ~4 % of the block's work at 96 */

struct cpu_layer {
	const float *attn_norm, *ffn_norm; /* (n_embd) */
	const float *bq, *bk, *bv;         /* biases or NULL */
	struct kern_weight wq, wk, wv, wo, gate, up, down;
};

struct cpu {
	const struct model *m;
	struct hparams hp;
	struct engine_config cfg;
	const int32_t *slot_pos; /* (n_ctx), the engine's */
	const struct kern_ops *ops;
	bool ref;
	struct pool *pool;
	struct cpu_layer *L;              /* (n_layer) */
	struct kern_weight out;           /* LM head */
	struct kern_weight embd;          /* token embeddings, never packed */
	const struct kern_weight *lookup; /* rows for the embedding lookup: embd, or the
	                               * packed LM head when it is the same tensor */
	void *arena;                      /* all packed weights (mmap'ed) */
	uint64_t arena_bytes;

	/* KV cache */
	size_t kv_es;       /* bytes per element: 2 or 4 */
	uint64_t kv_row;    /* elements per slot per layer: n_head_kv * head_dim */
	uint8_t **kc, **vc; /* (n_layer) -> (n_ctx, n_head_kv, head_dim) */
	uint8_t **kr;       /* (n_layer) -> (n_ctx, n_head_kv, head_dim) rotated keys */
	int32_t *kr_pos;    /* (n_ctx) position kr holds each slot rotated to, or -1 */
	float *rcs;         /* (n_threads, n_rot) angles for re-rotation */

	/* scratch for one ubatch */
	uint32_t cap;        /* tokens */
	float *x;            /* (cap, n_embd) residual stream */
	float *xb;           /* (cap, n_embd) normed input of a block */
	float *q;            /* (cap, n_head * head_dim) */
	float *k, *v;        /* (cap, n_head_kv * head_dim) */
	float *ao;           /* (cap, n_head * head_dim) attention output */
	float *g, *u;        /* (cap, n_ff) gate and up, then silu(g) * u in g */
	float *tok_cs;       /* (cap, n_rot) the ubatch's own angles */
	struct kern_act act; /* (cap, kmax) quantised activations */
	uint32_t vis_cap;
	float *krot;           /* (n_head_kv, head_dim, vis_cap) rotated keys */
	float *vf;             /* (n_head_kv, vis_cap, head_dim) values */
	int32_t *vpos;         /* (vis_cap) positions of the visible slots, sorted */
	uint32_t *vorder;      /* (vis_cap) index into the batch's visible list, by position */
	uint32_t *vslot;       /* (vis_cap) slot of each, by position */
	uint32_t n_valid;      /* visible slots that hold a token (a prefix of vorder) */
	float *scores;         /* (n_threads, q_rows, vis_cap) */
	float *tmp;            /* (n_threads, kmax) generic-path rows */
	float *txb;            /* (n_threads, kmax) a thread's own normed row (one-token batches) */
	struct kern_act *tact; /* (n_threads) a thread's own quantised row */
	uint64_t kmax;         /* longest product input: max(n_embd, n_ff, n_head*head_dim) */
	float *lm;             /* (CPU_LM_CHUNK, n_vocab) statistics-only logits */
	double step_ms[2];     /* decode step time, moving average: [0] one thread,
	                               * [1] all threads; 0 = not measured yet */
	uint64_t n_steps;      /* decode steps so far */
	/* want_attn_kv: per-thread sums, reduced after the batch */
	float *akv;       /* (n_threads, n_layer, n_head_kv, akv_cap) */
	uint32_t akv_cap; /* visible slots akv holds */
	/* dist_cap: per thread, the angles of the last capped position */
	float *cap_cs;    /* (n_threads, n_rot) */
	int32_t *cap_pos; /* (n_threads) position cap_cs is for, or -1 */
	float *cap_k;     /* (n_threads, head_dim) a global key, rotated */
	uint32_t q_rows;  /* max(KERN_ATT_Q, n_head): query rows per thread below */
	float *qh;        /* (n_threads, q_rows * head_dim) queries rounded to f16 */
	/* tiled prefill attention (cpu_flash): per thread one block of query
	 * rows (fa_rows = tokens x the query heads of one KV head) and one tile
	 * of CPU_FA_TILE keys, laid out as cpu_flash_carve says */
	uint32_t fa_tokens;   /* tokens per query block */
	uint32_t fa_rows;     /* fa_tokens * (n_head / n_head_kv) */
	size_t fa_stride;     /* floats per thread */
	float *fa;            /* (n_threads, fa_stride) */
	atomic_uint *fa_next; /* (n_layer) next work item of the layer */
	/* Λ-mask (n_local): per thread, which scores of a row group are masked,
	 * and the middle keys' scores at the insert distance */
	uint32_t lam_cap;  /* visible slots the buffers below hold */
	uint8_t *lam_mk;   /* (n_threads, KERN_ATT_Q, lam_cap) 1 = masked */
	float *lam_sc;     /* (n_threads, KERN_ATT_Q, lam_cap) middle scores */
	uint32_t *lam_idx; /* (n_threads, lam_cap) sorted indices of middle keys */
	float *ins_cs;     /* (n_threads, n_rot) angles of p - middle_insert_at */
	int32_t *ins_pos;  /* (n_threads) position ins_cs is for, or -1 */
	/* decode with the keys split across threads: per thread and query head
	 * the partial max, sum of exp and unnormalised output */
	float *dpart; /* (n_threads, n_head, head_dim + 2) */
};

/* What one pool_run works on. */
struct cpu_job {
	struct cpu *c;
	const struct engine_batch *b;
	struct backend_out *bo;
	uint32_t t0, n; /* this ubatch: batch tokens [t0, t0 + n) */
	bool last;      /* the batch's last ubatch */
	bool whole;     /* every token through cpu_attend's whole score
	                               * rows: Λ-masks, per-key attention sums, or
	                               * the reference path */
	int rc;
};

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

/* One thread's buffers of the tiled prefill attention (cpu_flash). */
struct cpu_fa {
	float *q;      /* (fa_rows, head_dim) the block's queries */
	float *o;      /* (fa_rows, head_dim) unnormalised outputs */
	float *pv;     /* (fa_rows, head_dim) one tile's P V */
	float *s;      /* (fa_rows, CPU_FA_TILE) one tile's scores, then weights */
	float *kt;     /* (head_dim, CPU_FA_TILE) the tile's keys, transposed */
	float *v;      /* (CPU_FA_TILE, head_dim) the tile's values */
	float *mx, *l; /* (fa_rows) running max of the scores, sum of the weights */
	float *alpha;  /* (fa_rows) this tile's rescale of the earlier sums */
};

/* Carve thread ith's cpu_fa out of c->fa (with f NULL: only count); the
 * floats a thread takes, each buffer 64-byte aligned. */
static size_t cpu_flash_carve(const struct cpu *c, int ith, struct cpu_fa *f)
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

/* Grow the per-ubatch scratch to n tokens. */
static void cpu_reserve(struct cpu *c, uint32_t n)
{
	if (n <= c->cap)
		return;
	const struct hparams *hp = &c->hp;
	uint64_t nq = (uint64_t)hp->n_head * hp->head_dim, nkv = (uint64_t)hp->n_head_kv * hp->head_dim;
	uint64_t kmax = KVS_MAX(KVS_MAX((uint64_t)hp->n_embd, (uint64_t)hp->n_ff), nq);
	xfree_aligned(c->x);
	xfree_aligned(c->xb);
	xfree_aligned(c->q);
	xfree_aligned(c->k);
	xfree_aligned(c->v);
	xfree_aligned(c->ao);
	xfree_aligned(c->g);
	xfree_aligned(c->u);
	xfree_aligned(c->tok_cs);
	xfree_aligned(c->act.q);
	xfree_aligned(c->act.d);
	xfree_aligned(c->act.s);
	xfree_aligned(c->act.isum);
	xfree_aligned(c->act.isum16);
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
	xfree_aligned(c->krot);
	xfree_aligned(c->vf);
	xfree_aligned(c->vpos);
	xfree_aligned(c->vorder);
	xfree_aligned(c->vslot);
	xfree_aligned(c->scores);
	c->vis_cap = n;
	size_t kv = (size_t)hp->n_head_kv * hp->head_dim * n;
	c->krot = xmalloc_aligned(kv * sizeof(float));
	c->vf = xmalloc_aligned(kv * sizeof(float));
	c->vpos = xmalloc_aligned((size_t)n * sizeof(int32_t));
	c->vorder = xmalloc_aligned((size_t)n * sizeof(uint32_t));
	c->vslot = xmalloc_aligned((size_t)n * sizeof(uint32_t));
	c->scores = xmalloc_aligned((size_t)pool_size(c->pool) * c->q_rows * n * sizeof(float));
}

static void cpu_free(void *state);

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
	c->hp = *hp;
	c->cfg = ctx->cfg;
	c->slot_pos = ctx->slot_pos;
	c->ref = ctx->cfg.reference;
	enum kern_level want = KERN_AVX512;
	if (c->ref || ctx->cfg.isa == ENGINE_ISA_SCALAR)
		want = KERN_SCALAR;
	else if (ctx->cfg.isa == ENGINE_ISA_AVX2)
		want = KERN_AVX2;
	c->ops = kern_select(want);
	c->pool = pool_create(ctx->cfg.n_threads);
	c->L = xcalloc(hp->n_layer, sizeof(*c->L));

	int rc = KVS_OK;
	for (uint32_t l = 0; l < hp->n_layer && rc == KVS_OK; l++) {
		const struct layer_weights *lw = &m->layers[l];
		struct cpu_layer *L = &c->L[l];
		L->attn_norm = lw->attn_norm.data;
		L->ffn_norm = lw->ffn_norm.data;
		L->bq = lw->bq.data;
		L->bk = lw->bk.data;
		L->bv = lw->bv.data;
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

	c->kv_es = ctx->cfg.kv_type == ENGINE_KV_F32 ? 4 : 2;
	c->kv_row = (uint64_t)hp->n_head_kv * hp->head_dim;
	c->kc = xcalloc(hp->n_layer, sizeof(*c->kc));
	c->vc = xcalloc(hp->n_layer, sizeof(*c->vc));
	c->kr = xcalloc(hp->n_layer, sizeof(*c->kr));
	bool got = true;
	for (uint32_t l = 0; l < hp->n_layer && got; l++) {
		/* calloc: untouched slots cost no memory. The size comes from the
		 * context the user chose, so a refusal is an error, not fatal. */
		c->kc[l] = calloc(ctx->cfg.n_ctx, c->kv_row * c->kv_es);
		c->vc[l] = calloc(ctx->cfg.n_ctx, c->kv_row * c->kv_es);
		c->kr[l] = calloc(ctx->cfg.n_ctx, c->kv_row * c->kv_es);
		got = c->kc[l] != NULL && c->vc[l] != NULL && c->kr[l] != NULL;
	}
	c->kr_pos = got ? malloc((size_t)ctx->cfg.n_ctx * sizeof(int32_t)) : NULL;
	if (c->kr_pos == NULL) {
		cpu_free(c);
		return engine_nomem(e, ctx->cfg.n_ctx,
		                    (double)ctx->cfg.n_ctx *
		                            (3.0 * hp->n_layer * c->kv_row * c->kv_es + sizeof(int32_t)));
	}
	for (uint32_t s = 0; s < ctx->cfg.n_ctx; s++)
		c->kr_pos[s] = -1;
	c->rcs = xmallocarray((size_t)pool_size(c->pool) * KVS_MAX(hp->n_rot, 1u), sizeof(float));
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
	if (c->arena)
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
	free(c->rcs);
	xfree_aligned(c->qh);
	xfree_aligned(c->x);
	xfree_aligned(c->xb);
	xfree_aligned(c->q);
	xfree_aligned(c->k);
	xfree_aligned(c->v);
	xfree_aligned(c->ao);
	xfree_aligned(c->g);
	xfree_aligned(c->u);
	xfree_aligned(c->tok_cs);
	xfree_aligned(c->act.q);
	xfree_aligned(c->act.d);
	xfree_aligned(c->act.s);
	xfree_aligned(c->act.isum);
	xfree_aligned(c->act.isum16);
	xfree_aligned(c->krot);
	xfree_aligned(c->vf);
	xfree_aligned(c->vpos);
	xfree_aligned(c->vorder);
	xfree_aligned(c->vslot);
	xfree_aligned(c->scores);
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
 * gate and up, so it can finish its rows with silu(gate) * up into g. */
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
	for (int64_t t = 0; r1 > r0 && t < n; t++)
		c->ops->swiglu(c->g + t * nff + r0, c->u + t * nff + r0, r1 - r0);
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
static void cpu_share(uint32_t n, int ith, int nth, uint32_t *lo, uint32_t *hi)
{
	int64_t a, b;
	pool_split(n, ith, nth, &a, &b);
	*lo = (uint32_t)a;
	*hi = (uint32_t)b;
}

/* -------------------------------------------------------------- attention */

/* Rotate one head vector with the table cs, (2, n_rot / 2): cos, then sin. */
static void cpu_rope(const struct cpu *c, float *x, const float *cs)
{
	c->ops->rope(x, cs, (int)c->hp.n_rot, c->hp.rope == ROPE_NEOX);
}

/* Store the f32 head vector x (head_dim) at dst, an element of the cache type. */
static void cpu_kv_put(const struct cpu *c, const float *x, uint8_t *dst)
{
	if (c->kv_es == 2)
		c->ops->f32_to_f16(x, (uint16_t *)dst, c->hp.head_dim);
	else
		memcpy(dst, x, c->hp.head_dim * sizeof(float));
}

/* Re-rotate, every layer, the keys of the visible slots whose position
 * moved since their rotated keys were made, from the pre-RoPE keys. */
static void cpu_refresh_keys(struct cpu *c, const struct engine_batch *b, int ith, int nth)
{
	const struct hparams *hp = &c->hp;
	uint32_t lo, hi, nr = hp->n_rot, hd = hp->head_dim;
	float *cs = c->rcs + (size_t)ith * nr, kb[KERN_ROW_MAX];
	if (NEVER(hd > KERN_ROW_MAX)) /* cpu_create refuses longer heads */
		return;
	cpu_share(b->n_visible, ith, nth, &lo, &hi);
	for (uint32_t j = lo; j < hi; j++) {
		uint32_t s = b->visible[j];
		int32_t p = c->slot_pos[s];
		if (p < 0 || c->kr_pos[s] == p)
			continue;
		engine_rope_cos_sin(hp, p, cs, cs + nr / 2);
		for (uint32_t l = 0; l < hp->n_layer; l++)
			for (uint32_t h = 0; h < hp->n_head_kv; h++) {
				uint64_t off = ((uint64_t)s * c->kv_row + (uint64_t)h * hd) * c->kv_es;
				if (c->kv_es == 2)
					c->ops->f16_to_f32((const uint16_t *)(c->kc[l] + off), kb, hd);
				else
					memcpy(kb, c->kc[l] + off, hd * sizeof(float));
				c->ops->rope(kb, cs, (int)nr, hp->rope == ROPE_NEOX);
				cpu_kv_put(c, kb, c->kr[l] + off);
			}
		c->kr_pos[s] = p;
	}
}

/* Order the visible slots by position, empty slots last, so that the keys a
 * query at position p may see are a prefix of the order. */
static void cpu_sort_visible(struct cpu *c, const struct engine_batch *b)
{
	uint32_t nv = b->n_visible, n_valid = 0;
	bool sorted = true;
	int32_t last = -1;
	for (uint32_t j = 0; j < nv; j++) {
		int32_t p = c->slot_pos[b->visible[j]];
		if (p < 0) {
			sorted = false;
			continue;
		}
		sorted = sorted && p >= last;
		last = p;
		n_valid++;
	}
	c->n_valid = n_valid;
	if (sorted) {
		for (uint32_t j = 0; j < nv; j++) {
			c->vorder[j] = j;
			c->vpos[j] = c->slot_pos[b->visible[j]];
			c->vslot[j] = b->visible[j];
		}
		return;
	}
	/* insertion of the valid ones by position (a merge of runs would do; the
	 * visible set is mostly sorted already), then the empty ones */
	uint32_t k = 0;
	for (uint32_t j = 0; j < nv; j++) {
		int32_t p = c->slot_pos[b->visible[j]];
		if (p < 0)
			continue;
		uint32_t at = k++;
		while (at > 0 && c->vpos[at - 1] > p) {
			c->vpos[at] = c->vpos[at - 1];
			c->vorder[at] = c->vorder[at - 1];
			at--;
		}
		c->vpos[at] = p;
		c->vorder[at] = j;
	}
	if (NEVER(k != n_valid)) /* both passes count the same slots */
		c->n_valid = k;
	for (uint32_t j = 0; j < nv; j++)
		if (c->slot_pos[b->visible[j]] < 0) {
			c->vpos[k] = -1;
			c->vorder[k++] = j;
		}
	for (uint32_t j = 0; j < nv; j++)
		c->vslot[j] = b->visible[c->vorder[j]];
}

/* Gather the visible rotated keys (transposed) and values of layer l, KV
 * heads [h0, h1), in position order, as f32. */
static void cpu_gather_kv(struct cpu *c, uint32_t l, uint32_t h0, uint32_t h1, int ith, int nth)
{
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, vc = c->vis_cap;
	uint32_t lo, hi;
	cpu_share(c->n_valid, ith, nth, &lo, &hi);
	float kbuf[KERN_ROW_MAX];
	for (uint32_t k = lo; k < hi; k++) {
		uint32_t s = c->vslot[k];
		for (uint32_t h = h0; h < h1; h++) {
			uint64_t off = ((uint64_t)s * c->kv_row + (uint64_t)h * hd) * c->kv_es;
			float *vdst = c->vf + ((size_t)h * vc + k) * hd;
			if (c->kv_es == 2) {
				c->ops->f16_to_f32((const uint16_t *)(c->kr[l] + off), kbuf, hd);
				c->ops->f16_to_f32((const uint16_t *)(c->vc[l] + off), vdst, hd);
			} else {
				memcpy(kbuf, c->kr[l] + off, hd * sizeof(float));
				memcpy(vdst, c->vc[l] + off, hd * sizeof(float));
			}
			float *kt = c->krot + (size_t)h * hd * vc + k;
			for (uint32_t d = 0; d < hd; d++)
				kt[(size_t)d * vc] = kbuf[d];
		}
	}
}

/* Load the pre-RoPE key of visible slot s, KV head kvh, layer l into kb and
 * rotate it with the angles cs. */
static void cpu_raw_key(const struct cpu *c, uint32_t l, uint32_t s, uint32_t kvh, const float *cs,
                        float *kb)
{
	uint32_t hd = c->hp.head_dim;
	uint64_t off = ((uint64_t)s * c->kv_row + (uint64_t)kvh * hd) * c->kv_es;
	if (c->kv_es == 2)
		c->ops->f16_to_f32((const uint16_t *)(c->kc[l] + off), kb, hd);
	else
		memcpy(kb, c->kc[l] + off, hd * sizeof(float));
	cpu_rope(c, kb, cs);
}

/* The angles of position at in the per-thread cache (cs, *cached). */
static const float *cpu_angles_at(const struct cpu *c, float *cs, int32_t *cached, int32_t at)
{
	if (*cached != at) {
		engine_rope_cos_sin(&c->hp, at, cs, cs + c->hp.n_rot / 2);
		*cached = at;
	}
	return cs;
}

/*
 * LM-Infinite's Λ-attention on one row group (nq query heads of KV head kvh,
 * query at p, scores sc over the sorted prefix [0, m)). Global keys (the
 * first n_global of the visible list) farther than dist_cap are re-scored
 * with the pre-RoPE key rotated to p - dist_cap. With n_local, the other
 * keys n_local or more before p are middle: masked (mk = 1), except, for the
 * batch's last query in layers >= middle_from_layer, each head's
 * middle_topk best by their score at distance middle_insert_at, which keep
 * that score. Returns whether anything was masked.
 */
static bool cpu_lambda(struct cpu_job *jb, uint32_t l, uint32_t i, int32_t p, uint32_t kvh,
                       const float *q, uint32_t nq, uint32_t m, float *sc, uint8_t *mk, int ith)
{
	struct cpu *c = jb->c;
	const struct engine_batch *b = jb->b;
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, vc = c->vis_cap, lc = c->lam_cap;
	float *kb = c->cap_k + (size_t)ith * hd;
	/* the local band: positions > p - n_local, a suffix of [0, m) */
	uint32_t loc = 0;
	if (b->n_local > 0) {
		uint32_t lo = 0, hi = m;
		while (lo < hi) {
			uint32_t mid = lo + (hi - lo) / 2;
			if ((int64_t)p - c->vpos[mid] >= b->n_local)
				lo = mid + 1;
			else
				hi = mid;
		}
		loc = lo;
	}
	bool topk = b->n_local > 0 && b->middle_topk > 0 && jb->last && i == jb->n - 1 &&
	        l >= b->middle_from_layer;
	uint32_t *mid_idx = c->lam_idx ? c->lam_idx + (size_t)ith * lc : NULL;
	float *msc = c->lam_sc ? c->lam_sc + (size_t)ith * KERN_ATT_Q * lc : NULL;
	uint32_t n_mid = 0;
	bool masked = false;
	for (uint32_t k = 0; k < m; k++) {
		bool global = c->vorder[k] < b->n_global;
		if (global) {
			if (b->dist_cap > 0 && (int64_t)p - c->vpos[k] > b->dist_cap) {
				const float *cs = cpu_angles_at(c, c->cap_cs + (size_t)ith * hp->n_rot,
				                                &c->cap_pos[ith], p - b->dist_cap);
				cpu_raw_key(c, l, b->visible[c->vorder[k]], kvh, cs, kb);
				for (uint32_t r = 0; r < nq; r++)
					sc[(size_t)r * vc + k] =
					        c->ops->dot_f32(q + (size_t)r * hd, kb, hd) * hp->attn_scale;
			}
			continue;
		}
		if (k >= loc) {
			/* the local band (true distances), or, without a Λ-mask, no
			 * global left far enough to need the cap */
			if (b->n_local > 0 || (int64_t)p - c->vpos[k] <= b->dist_cap)
				break;
			continue;
		}
		masked = true;
		for (uint32_t r = 0; r < nq; r++)
			mk[(size_t)r * lc + k] = 1;
		if (topk) {
			const float *cs = cpu_angles_at(c, c->ins_cs + (size_t)ith * hp->n_rot,
			                                &c->ins_pos[ith], p - b->middle_insert_at);
			cpu_raw_key(c, l, b->visible[c->vorder[k]], kvh, cs, kb);
			for (uint32_t r = 0; r < nq; r++)
				msc[(size_t)r * lc + n_mid] =
				        c->ops->dot_f32(q + (size_t)r * hd, kb, hd) * hp->attn_scale;
			mid_idx[n_mid++] = k;
		}
	}
	/* each head un-masks its best middle_topk (ties: the older) */
	for (uint32_t r = 0; topk && r < nq; r++) {
		float *row = msc + (size_t)r * lc;
		for (uint32_t t = 0; t < b->middle_topk && t < n_mid; t++) {
			uint32_t best = UINT32_MAX;
			for (uint32_t j = 0; j < n_mid; j++)
				if (!isnan(row[j]) && (best == UINT32_MAX || row[j] > row[best]))
					best = j;
			if (best == UINT32_MAX)
				break;
			uint32_t k = mid_idx[best];
			mk[(size_t)r * lc + k] = 0;
			sc[(size_t)r * vc + k] = row[best];
			row[best] = NAN;
		}
	}
	for (uint32_t r = 0; masked && r < nq; r++)
		for (uint32_t k = 0; k < loc; k++)
			if (mk[(size_t)r * lc + k])
				sc[(size_t)r * vc + k] = -INFINITY;
	return masked;
}

/* Round x[0..n) to the nearest f16 values, in place. */
static void cpu_round16(const struct cpu *c, float *x, uint32_t n)
{
	uint16_t h[1024];
	for (uint32_t i = 0; i < n; i += 1024) {
		uint32_t m = KVS_MIN(1024u, n - i);
		c->ops->f32_to_f16(x + i, h, m);
		c->ops->f16_to_f32(h, x + i, m);
	}
}

/* Attention of ubatch token i for query heads [h0, h0 + nq) (one KV head),
 * layer l, into c->ao. */
static void cpu_attend(struct cpu_job *jb, uint32_t l, uint32_t i, uint32_t h0, uint32_t nq,
                       int ith)
{
	struct cpu *c = jb->c;
	const struct engine_batch *b = jb->b;
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, nv = b->n_visible, vc = c->vis_cap;
	uint32_t kvh = h0 / (hp->n_head / hp->n_head_kv);
	int32_t p = b->pos[jb->t0 + i];
	/* keys with position <= p: a prefix of the sorted visible set */
	uint32_t lo = 0, hi = c->n_valid;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (c->vpos[mid] <= p)
			lo = mid + 1;
		else
			hi = mid;
	}
	uint32_t m = lo;
	const float *q = c->q + ((size_t)i * hp->n_head + h0) * hd;
	float *out = c->ao + ((size_t)i * hp->n_head + h0) * hd;
	float *sc = c->scores + (size_t)ith * c->q_rows * vc;
	float *attn = NULL;
	if (b->want_attn && jb->last && i == jb->n - 1) {
		attn = jb->bo->attn + ((size_t)l * hp->n_head + h0) * nv;
		memset(attn, 0, (size_t)nq * nv * sizeof(float));
	}
	if (m == 0) {
		memset(out, 0, (size_t)nq * hd * sizeof(float));
		return;
	}
	/* decode, or a prefill whose other tokens went through cpu_flash (no
	 * gathered copy then): keys and values in place */
	bool direct = jb->n == 1 || !jb->whole;
	bool half = c->kv_es == 2;
	if (half) {
		/* an f16 cache multiplies f16 by f16: the query is rounded too, as
		 * llama.cpp's product with an f16 cache rounds its f32 operand */
		float *qr = c->qh + (size_t)ith * c->q_rows * hd;
		memcpy(qr, q, (size_t)nq * hd * sizeof(float));
		cpu_round16(c, qr, nq * hd);
		q = qr;
	}
	uint64_t head_off = (uint64_t)kvh * hd * c->kv_es;
	if (direct)
		c->ops->att_scores_rows(q, (int)nq, (int)hd, c->kr[l] + head_off, (int64_t)c->kv_row,
		                        c->kv_es == 2, c->vslot, m, hp->attn_scale, sc, vc);
	else
		c->ops->att_scores(q, (int)nq, (int)hd, c->krot + (size_t)kvh * hd * vc, vc, m,
		                   hp->attn_scale, sc, vc);
	uint8_t *mk = NULL;
	bool masked = false;
	if ((b->dist_cap > 0 && b->n_global > 0) || b->n_local > 0) {
		mk = c->lam_mk + (size_t)ith * KERN_ATT_Q * c->lam_cap;
		for (uint32_t r = 0; b->n_local > 0 && r < nq; r++)
			memset(mk + (size_t)r * c->lam_cap, 0, m);
		masked = cpu_lambda(jb, l, i, p, kvh, q, nq, m, sc, mk, ith);
	}
	float inv[KERN_ATT_Q];
	for (uint32_t r = 0; r < nq; r++) {
		float *sr = sc + (size_t)r * vc, mx = sr[0];
		for (uint32_t k = 1; k < m; k++)
			mx = sr[k] > mx ? sr[k] : mx;
		if (masked) {
			/* masked keys carry exactly no weight (the vector exp only
			 * flushes them to ~1e-38) */
			c->ops->exp_sum(sr, m, mx);
			float sum = 0;
			for (uint32_t k = 0; k < m; k++) {
				if (k < c->lam_cap && mk[(size_t)r * c->lam_cap + k])
					sr[k] = 0;
				sum += sr[k];
			}
			inv[r] = 1.0f / sum;
		} else {
			inv[r] = 1.0f / c->ops->exp_sum(sr, m, mx);
		}
	}
	if (direct)
		c->ops->att_pv_rows(sc, (int)nq, vc, c->vc[l] + head_off, (int64_t)c->kv_row, c->kv_es == 2,
		                    c->vslot, m, (int)hd, out);
	else
		c->ops->att_pv(sc, (int)nq, vc, c->vf + (size_t)kvh * vc * hd, m, (int)hd, out);
	for (uint32_t r = 0; r < nq; r++) {
		for (uint32_t d = 0; d < hd; d++)
			out[(size_t)r * hd + d] *= inv[r];
		if (attn)
			for (uint32_t k = 0; k < m; k++)
				attn[(size_t)r * nv + c->vorder[k]] = sc[(size_t)r * vc + k] * inv[r];
	}
	if (jb->bo->attn_kv != NULL) {
		float *acc = c->akv + (((size_t)ith * hp->n_layer + l) * hp->n_head_kv + kvh) * c->akv_cap;
		for (uint32_t r = 0; r < nq; r++)
			for (uint32_t k = 0; k < m; k++)
				acc[c->vorder[k]] += sc[(size_t)r * vc + k] * inv[r];
	}
}

/* Keys of the sorted visible prefix a query at position p sees. */
static uint32_t cpu_prefix(const struct cpu *c, int32_t p)
{
	uint32_t lo = 0, hi = c->n_valid;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (c->vpos[mid] <= p)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Load the keys [k0, k0 + mt) of the sorted visible set, KV head kvh of
 * layer l, into f->kt (transposed) and their values into f->v, as f32. */
static void cpu_flash_tile(const struct cpu *c, uint32_t l, uint32_t kvh, uint32_t k0, uint32_t mt,
                           struct cpu_fa *f)
{
	uint32_t hd = c->hp.head_dim;
	uint64_t head_off = (uint64_t)kvh * hd * c->kv_es;
	bool half = c->kv_es == 2;
	c->ops->kv_rows_f32(c->kr[l] + head_off, (int64_t)c->kv_row, half, c->vslot + k0, mt, (int)hd,
	                    true, f->kt, CPU_FA_TILE);
	c->ops->kv_rows_f32(c->vc[l] + head_off, (int64_t)c->kv_row, half, c->vslot + k0, mt, (int)hd,
	                    false, f->v, hd);
}

/*
 * Tiled (flash) attention of ubatch tokens [i0, i0 + nt) with the query
 * heads of KV head kvh, layer l, into c->ao. The block's rows (token-major,
 * then head) meet the keys one tile of CPU_FA_TILE at a time: the tile is
 * converted to f32 once (keys transposed) and serves every row, and each
 * row keeps a running max mx, sum of weights l and unnormalised output o,
 * rescaled by exp(old max - new max) when a tile raises the max (online
 * softmax). Only the tiles below the block's longest prefix are visited;
 * within them a row's keys past its own prefix get weight 0. The result
 * equals cpu_attend's up to the order of float additions.
 */
static void cpu_flash(struct cpu_job *jb, uint32_t l, uint32_t kvh, uint32_t i0, uint32_t nt,
                      int ith)
{
	struct cpu *c = jb->c;
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, grp = hp->n_head / hp->n_head_kv, rows = nt * grp;
	struct cpu_fa f;
	cpu_flash_carve(c, ith, &f);
	uint32_t m[CPU_FA_ROWS], mmax = 0;
	for (uint32_t t = 0; t < nt; t++) {
		m[t] = cpu_prefix(c, jb->b->pos[jb->t0 + i0 + t]);
		mmax = KVS_MAX(mmax, m[t]);
		memcpy(f.q + (size_t)t * grp * hd, c->q + ((size_t)(i0 + t) * hp->n_head + kvh * grp) * hd,
		       (size_t)grp * hd * sizeof(float));
	}
	if (c->kv_es == 2) /* as cpu_attend: an f16 cache multiplies f16 by f16 */
		cpu_round16(c, f.q, rows * hd);
	memset(f.o, 0, (size_t)rows * hd * sizeof(float));
	for (uint32_t r = 0; r < rows; r++) {
		f.mx[r] = -INFINITY;
		f.l[r] = 0;
	}
	for (uint32_t k0 = 0; k0 < mmax; k0 += CPU_FA_TILE) {
		uint32_t mt = KVS_MIN((uint32_t)CPU_FA_TILE, mmax - k0);
		cpu_flash_tile(c, l, kvh, k0, mt, &f);
		for (uint32_t r0 = 0; r0 < rows; r0 += KERN_ATT_Q)
			c->ops->att_scores(f.q + (size_t)r0 * hd, (int)KVS_MIN((uint32_t)KERN_ATT_Q, rows - r0),
			                   (int)hd, f.kt, CPU_FA_TILE, mt, hp->attn_scale,
			                   f.s + (size_t)r0 * CPU_FA_TILE, CPU_FA_TILE);
		for (uint32_t r = 0; r < rows; r++) {
			float *sr = f.s + (size_t)r * CPU_FA_TILE;
			uint32_t lim = m[r / grp] > k0 ? KVS_MIN(mt, m[r / grp] - k0) : 0;
			f.alpha[r] = 1;
			if (lim > 0) {
				float tmax = c->ops->max_f32(sr, lim);
				float nmx = tmax > f.mx[r] ? tmax : f.mx[r];
				f.alpha[r] = expf(f.mx[r] - nmx); /* 0 on the first tile: -inf */
				f.l[r] = f.l[r] * f.alpha[r] + c->ops->exp_sum(sr, lim, nmx);
				f.mx[r] = nmx;
			}
			memset(sr + lim, 0, (mt - lim) * sizeof(float));
		}
		for (uint32_t r0 = 0; r0 < rows; r0 += KERN_ATT_Q)
			c->ops->att_pv(f.s + (size_t)r0 * CPU_FA_TILE,
			               (int)KVS_MIN((uint32_t)KERN_ATT_Q, rows - r0), CPU_FA_TILE, f.v, mt,
			               (int)hd, f.pv + (size_t)r0 * hd);
		/* o = alpha o + pv, into pv, which becomes o */
		for (uint32_t r = 0; r < rows; r++)
			if (f.alpha[r] != 0)
				c->ops->axpy_f32(f.pv + (size_t)r * hd, f.o + (size_t)r * hd, f.alpha[r], hd);
		float *t = f.o;
		f.o = f.pv;
		f.pv = t;
	}
	for (uint32_t r = 0; r < rows; r++) {
		uint32_t t = r / grp, h = kvh * grp + r % grp;
		float *out = c->ao + ((size_t)(i0 + t) * hp->n_head + h) * hd;
		float inv = f.l[r] > 0 ? 1.0f / f.l[r] : 0.0f; /* 0: the query sees nothing */
		for (uint32_t d = 0; d < hd; d++)
			out[d] = f.o[(size_t)r * hd + d] * inv;
	}
}

/* The tiled attention of the ubatch's first n tokens, layer l: work items
 * (query block, KV head) handed out through an atomic counter, so a thread
 * that lost its core to another process does not hold the others up; a
 * short batch takes smaller blocks, so that there are items for every
 * thread (4 each at least, while a block keeps a token). */
static void cpu_flash_items(struct cpu_job *jb, uint32_t l, uint32_t n, int ith, int nth)
{
	struct cpu *c = jb->c;
	uint32_t nkv = c->hp.n_head_kv, bq = c->fa_tokens;
	while (bq > 1 && nkv * ((n + bq - 1) / bq) < 4u * (uint32_t)nth)
		bq = (bq + 1) / 2;
	uint32_t nb = (n + bq - 1) / bq;
	for (;;) {
		uint32_t it = atomic_fetch_add_explicit(&c->fa_next[l], 1, memory_order_relaxed);
		if (it >= nb * nkv)
			break;
		uint32_t blk = it / nkv, kvh = it % nkv, i0 = blk * bq;
		cpu_flash(jb, l, kvh, i0, KVS_MIN(bq, n - i0), ith);
	}
}

/* One run of cpu_attend_split: the keys k.. (rm of them, sorted-prefix
 * indices) through every KV head, scores into sc (n_head, vis_cap; column
 * k - k0 for key k) or, with pv, the weights in sc times the values added
 * into the parts' outputs (tmp holds one head group's product). */
static void cpu_split_run(const struct cpu *c, uint32_t l, const float *q, uint32_t k0, uint32_t k,
                          uint32_t rm, float *sc, float *part, float *tmp, bool pv)
{
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, grp = hp->n_head / hp->n_head_kv, vc = c->vis_cap, nq;
	bool half = c->kv_es == 2;
	for (uint32_t h0 = 0; h0 < hp->n_head; h0 += nq) {
		/* query heads [h0, h0 + nq) share KV head h0 / grp */
		nq = KVS_MIN((uint32_t)KERN_ATT_Q, grp - h0 % grp);
		uint64_t head_off = (uint64_t)(h0 / grp) * hd * c->kv_es;
		float *s = sc + (size_t)h0 * vc + (k - k0);
		if (!pv) {
			c->ops->att_scores_rows(q + (size_t)h0 * hd, (int)nq, (int)hd, c->kr[l] + head_off,
			                        (int64_t)c->kv_row, half, c->vslot + k, rm, hp->attn_scale, s,
			                        vc);
			continue;
		}
		c->ops->att_pv_rows(s, (int)nq, vc, c->vc[l] + head_off, (int64_t)c->kv_row, half,
		                    c->vslot + k, rm, (int)hd, tmp);
		for (uint32_t r = 0; r < nq; r++)
			c->ops->axpy_f32(part + (size_t)(h0 + r) * (hd + 2) + 2, tmp + (size_t)r * hd, 1.0f,
			                 hd);
	}
}

/*
 * Decode attention (one token, every thread) with the visible keys split
 * across the threads: thread ith takes its share of the sorted prefix,
 * reading each key and value once for all the query heads of its KV head,
 * and leaves per query head its max, sum of weights and unnormalised output
 * in c->dpart. After a barrier each thread merges the threads' parts itself
 * (cpu_split_merge) into its own output row, so the merge costs no second
 * barrier. The share goes in runs of CPU_DEC_RUN keys, each run through
 * every KV head before the next: a slot's keys (and values) of all the KV
 * heads are adjacent in the cache, so a run reads them as one stream, where
 * a pass per KV head would read a third of each stretch and leave the
 * prefetcher fetching the rest for nothing (2.7 against 7.4 GB/s measured).
 */
static void cpu_attend_split(struct cpu_job *jb, uint32_t l, int ith, int nth)
{
	struct cpu *c = jb->c;
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, vc = c->vis_cap;
	uint32_t m = cpu_prefix(c, jb->b->pos[jb->t0]), k0, k1;
	cpu_share(m, ith, nth, &k0, &k1);
	float *part = c->dpart + (size_t)ith * hp->n_head * (hd + 2); /* (n_head, hd + 2): mx, l, o */
	float *sc = c->scores + (size_t)ith * c->q_rows * vc;
	float *tmp = c->txb + (size_t)ith * c->kmax; /* (KERN_ATT_Q, hd) */
	const float *q = c->q;
	if (k1 == k0) {
		for (uint32_t h = 0; h < hp->n_head; h++) {
			part[(size_t)h * (hd + 2)] = -INFINITY;
			part[(size_t)h * (hd + 2) + 1] = 0;
		}
		return;
	}
	if (c->kv_es == 2) { /* as cpu_attend: an f16 cache multiplies f16 by f16 */
		float *qr = c->qh + (size_t)ith * c->q_rows * hd;
		memcpy(qr, q, (size_t)hp->n_head * hd * sizeof(float));
		cpu_round16(c, qr, hp->n_head * hd);
		q = qr;
	}
	for (uint32_t k = k0; k < k1; k += CPU_DEC_RUN)
		cpu_split_run(c, l, q, k0, k, KVS_MIN((uint32_t)CPU_DEC_RUN, k1 - k), sc, part, tmp, false);
	for (uint32_t h = 0; h < hp->n_head; h++) {
		float *pr = part + (size_t)h * (hd + 2), *sr = sc + (size_t)h * vc;
		pr[0] = c->ops->max_f32(sr, k1 - k0);
		pr[1] = c->ops->exp_sum(sr, k1 - k0, pr[0]);
		memset(pr + 2, 0, hd * sizeof(float));
	}
	for (uint32_t k = k0; k < k1; k += CPU_DEC_RUN)
		cpu_split_run(c, l, q, k0, k, KVS_MIN((uint32_t)CPU_DEC_RUN, k1 - k), sc, part, tmp, true);
}

/* Merge the threads' parts of cpu_attend_split into out (n_head, head_dim). */
static void cpu_split_merge(const struct cpu *c, int nth, float *out)
{
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim;
	size_t per = (size_t)hp->n_head * (hd + 2);
	for (uint32_t h = 0; h < hp->n_head; h++) {
		float mx = -INFINITY, sum = 0, *o = out + (size_t)h * hd;
		for (int t = 0; t < nth; t++)
			mx = fmaxf(mx, c->dpart[t * per + (size_t)h * (hd + 2)]);
		memset(o, 0, hd * sizeof(float));
		if (mx == -INFINITY)
			continue; /* no keys at all */
		for (int t = 0; t < nth; t++) {
			const float *p = c->dpart + t * per + (size_t)h * (hd + 2);
			if (p[0] == -INFINITY)
				continue;
			float w = expf(p[0] - mx);
			sum += w * p[1];
			c->ops->axpy_f32(o, p + 2, w, hd);
		}
		float inv = 1.0f / sum;
		for (uint32_t d = 0; d < hd; d++)
			o[d] *= inv;
	}
}

/* ---------------------------------------------------------- forward pass */

/* Bias, cache the pre-RoPE k and the v, rotate q: ubatch token i. */
static void cpu_qkv_finish(struct cpu_job *jb, uint32_t l, uint32_t i)
{
	struct cpu *c = jb->c;
	const struct hparams *hp = &c->hp;
	const struct cpu_layer *L = &c->L[l];
	uint32_t hd = hp->head_dim, nq = hp->n_head * hd, nkv = hp->n_head_kv * hd;
	float *q = c->q + (size_t)i * nq, *k = c->k + (size_t)i * nkv, *v = c->v + (size_t)i * nkv;
	if (L->bq)
		for (uint32_t r = 0; r < nq; r++)
			q[r] += L->bq[r];
	if (L->bk)
		for (uint32_t r = 0; r < nkv; r++)
			k[r] += L->bk[r];
	if (L->bv)
		for (uint32_t r = 0; r < nkv; r++)
			v[r] += L->bv[r];
	uint32_t s = jb->b->slot[jb->t0 + i];
	uint8_t *kd = c->kc[l] + (uint64_t)s * c->kv_row * c->kv_es;
	uint8_t *vd = c->vc[l] + (uint64_t)s * c->kv_row * c->kv_es;
	if (c->kv_es == 2) {
		c->ops->f32_to_f16(k, (uint16_t *)kd, nkv);
		c->ops->f32_to_f16(v, (uint16_t *)vd, nkv);
	} else {
		memcpy(kd, k, nkv * sizeof(float));
		memcpy(vd, v, nkv * sizeof(float));
	}
	const float *cs = c->tok_cs + (size_t)i * hp->n_rot;
	uint8_t *kr = c->kr[l] + (uint64_t)s * c->kv_row * c->kv_es;
	for (uint32_t h = 0; h < hp->n_head_kv; h++) {
		/* k is scratch now: rotate it in place into the rotated cache */
		cpu_rope(c, k + (size_t)h * hd, cs);
		cpu_kv_put(c, k + (size_t)h * hd, kr + (uint64_t)h * hd * c->kv_es);
	}
	for (uint32_t h = 0; h < hp->n_head; h++)
		cpu_rope(c, q + (size_t)h * hd, cs);
}

/* Attention items [i0, i1) of the ubatch; an item is a token and up to
 * KERN_ATT_Q query heads sharing one KV head. */
static void cpu_attend_items(struct cpu_job *jb, uint32_t l, uint32_t i0, uint32_t i1, int ith)
{
	const struct hparams *hp = &jb->c->hp;
	uint32_t grp = hp->n_head / hp->n_head_kv, per_kv = (grp + KERN_ATT_Q - 1) / KERN_ATT_Q;
	for (uint32_t it = i0; it < i1; it++) {
		uint32_t i = it / (hp->n_head_kv * per_kv), rest = it % (hp->n_head_kv * per_kv);
		uint32_t g = rest / per_kv, part = rest % per_kv;
		uint32_t h0 = g * grp + part * KERN_ATT_Q;
		cpu_attend(jb, l, i, h0, KVS_MIN((uint32_t)KERN_ATT_Q, grp - part * KERN_ATT_Q), ith);
	}
}

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

	/* attention: the special features need whole score rows (cpu_attend,
	 * a prefill on gathered f32 copies); otherwise a decode splits the keys
	 * across threads and a prefill goes tile by tile (cpu_flash), all but a
	 * last token whose weights are asked for */
	uint32_t grp = hp->n_head / hp->n_head_kv, per_kv = (grp + KERN_ATT_Q - 1) / KERN_ATT_Q;
	uint32_t ilo, ihi, n_items = n * hp->n_head_kv * per_kv;
	bool split = n == 1 && !jb->whole && !jb->b->want_attn;
	const float *ao = c->ao; /* the products' input: shared, or this thread's own */
	if (split) {
		cpu_attend_split(jb, l, ith, nth);
		pool_barrier(c->pool);
		if (solo) {
			cpu_split_merge(c, nth, xb);
			ao = xb;
		} else {
			cpu_split_merge(c, nth, c->ao);
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
			cpu_flash_items(jb, l, n_tiled, ith, nth);
			/* the remaining token's items, if any, in place */
			uint32_t first = n_tiled * hp->n_head_kv * per_kv;
			cpu_share(n_items - first, ith, nth, &ilo, &ihi);
			ilo += first;
			ihi += first;
		}
		cpu_attend_items(jb, l, ilo, ihi, ith);
		pool_barrier(c->pool);
	}

	/* x += attn W_o^T */
	a = cpu_fwd_input(c, NULL, ao, nq, xb, ith, lo, hi, solo);
	struct cpu_mm o = { &L->wo, c->x, ne, true };
	cpu_mm_multi(c, &o, 1, ao, nq, &a, n, ith, nth);
	pool_barrier(c->pool);

	/* feed-forward: x += (silu(xb W_gate^T) * xb W_up^T) W_down^T */
	a = cpu_fwd_input(c, L->ffn_norm, c->x, ne, xb, ith, lo, hi, solo);
	cpu_gate_up(c, L, xb, &a, n, ith, nth);
	pool_barrier(c->pool);
	a = cpu_fwd_input(c, NULL, c->g, nff, xb, ith, lo, hi, solo);
	struct cpu_mm down = { &L->down, c->x, ne, true };
	cpu_mm_multi(c, &down, 1, c->g, nff, &a, n, ith, nth);
	pool_barrier(c->pool);
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
		kern_weight_row(c->lookup, b->tokens[jb->t0 + i], c->x + (size_t)i * ne);
		float *cs = c->tok_cs + (size_t)i * hp->n_rot;
		engine_rope_cos_sin(hp, b->pos[jb->t0 + i], cs, cs + hp->n_rot / 2);
	}
	cpu_refresh_keys(c, b, ith, nth);
	pool_barrier(c->pool);
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
	 * try the other again (the results do not depend on the thread count). */
	int nth = pool_size(c->pool), mode = 1;
	bool one = b->n_tokens == 1 && nth > 1;
	if (one) {
		bool faster_alone = c->step_ms[0] > 0 && c->step_ms[0] < c->step_ms[1];
		bool probe = c->step_ms[0] == 0 || c->step_ms[1] == 0 ||
		        c->n_steps % CPU_PROBE_EVERY == CPU_PROBE_EVERY - 1;
		mode = c->step_ms[1] == 0 ? 1 : c->step_ms[0] == 0 ? 0 : faster_alone != probe ? 0 : 1;
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
	if (one) {
		double ms = clock_now_ms() - t_start;
		c->step_ms[mode] = c->step_ms[mode] == 0 ? ms : 0.75 * c->step_ms[mode] + 0.25 * ms;
	}
	if (out->attn_kv != NULL) {
		/* the threads' sums, in visible-list order */
		uint32_t nv = b->n_visible;
		for (size_t h = 0; h < akv_per; h++)
			for (uint32_t j = 0; j < nv; j++) {
				float sum = 0;
				for (int t = 0; t < nthreads; t++)
					sum += c->akv[((size_t)t * akv_per + h) * c->akv_cap + j];
				out->attn_kv[h * nv + j] = sum;
			}
	}
	return KVS_OK;
}

static void cpu_kv_copy(void *state, const uint32_t *dst, const uint32_t *src, uint32_t n)
{
	struct cpu *c = state;
	size_t row = c->kv_row * c->kv_es;
	for (uint32_t i = 0; i < n; i++) {
		if (dst[i] == src[i])
			continue;
		for (uint32_t l = 0; l < c->hp.n_layer; l++) {
			memcpy(c->kc[l] + dst[i] * row, c->kc[l] + src[i] * row, row);
			memcpy(c->vc[l] + dst[i] * row, c->vc[l] + src[i] * row, row);
			memcpy(c->kr[l] + dst[i] * row, c->kr[l] + src[i] * row, row);
		}
		c->kr_pos[dst[i]] = c->kr_pos[src[i]];
	}
}

static void cpu_kv_read(void *state, uint32_t layer, uint32_t slot, uint32_t kv_head, bool value,
                        float *out)
{
	struct cpu *c = state;
	const uint8_t *base = value ? c->vc[layer] : c->kc[layer];
	const uint8_t *p =
	        base + ((uint64_t)slot * c->kv_row + (uint64_t)kv_head * c->hp.head_dim) * c->kv_es;
	if (c->kv_es == 2)
		for (uint32_t d = 0; d < c->hp.head_dim; d++)
			out[d] = dtype_f16_to_f32(((const uint16_t *)p)[d]);
	else
		memcpy(out, p, c->hp.head_dim * sizeof(float));
}

static int cpu_kv_raw(void *state, uint32_t slot, void *buf, bool load, struct err *e)
{
	struct cpu *c = state;
	size_t row = c->kv_row * c->kv_es;
	uint8_t *b = buf;
	(void)e;
	for (uint32_t l = 0; l < c->hp.n_layer; l++, b += 2 * row) {
		uint8_t *k = c->kc[l] + (size_t)slot * row, *v = c->vc[l] + (size_t)slot * row;
		if (load) {
			memcpy(k, b, row);
			memcpy(v, b + row, row);
		} else {
			memcpy(b, k, row);
			memcpy(b + row, v, row);
		}
	}
	if (load)
		c->kr_pos[slot] = -1; /* its rotated keys are remade from these */
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
	.caps = ENGINE_CAP_ATTN_KV | ENGINE_CAP_DIST_CAP | ENGINE_CAP_LAMBDA,
	.kv_raw = cpu_kv_raw,
};
