/*
 * cuda_backend.cu: the engine's CUDA backend (the struct backend_ops that
 * gpu_backend_ops returns).
 *
 * Same contract as the CPU backend (engine.h): a KV cache of n_ctx slots
 * holding F16 keys before RoPE and values, slot positions owned by the
 * engine, a visible-slot list per batch, attention causal by position.
 * Everything stays on the device: weights in their GGUF block layout (types
 * without a kernel are dequantised to F32 once, gpuplan.h), the caches, a
 * per-slot RoPE table refreshed for slots whose position moved, and every
 * activation. The host sends a few integers per token and reads back the
 * logits (sampling stays on the host), and only when asked the attention
 * probabilities and per-token statistics.
 *
 * Two paths share the kernels (cuda_kern.h):
 *   - decode (one token): mat-vec kernels with q8 or f32 activations;
 *     per layer QKV (+ cache write), split attention (+ the merge of the
 *     splits + quantise: the last split block of each KV head merges),
 *     the output product (+ residual + RMSNorm + quantise: the last block
 *     to finish normalises), gate/up (+ SwiGLU + quantise), down (+
 *     residual + the next RMSNorm): 5 launches (KVSCOPE_CUDA_FUSE=0:
 *     separate merges and norms, 8; gpuplan_launches), the whole step captured
 *     once per shape into a CUDA graph and replayed (the token, position,
 *     slot and visible count live in device memory, the "step" array);
 *   - prefill (more tokens): steps of GPUPLAN_UBATCH tokens, products as
 *     tensor-core GEMMs on F16 weights (resident copies, or dequantised into
 *     a scratch per use when memory is short), attention over the same split
 *     kernel with one block per query.
 *
 * Sparse decode (quest, hip) adds a choice per layer and attention over
 * per-KV-head lists of keys; its host side is cuda_sparse.cu.
 *
 * The visible list and its positions are mirrored on the device; each
 * forward uploads only the range that changed since the last one (usually
 * one new slot). Slot copies run on the device as simultaneous moves
 * resolved on the host (gpuplan_kv_moves), staged per layer when a move
 * reads a slot another one writes.
 *
 * Errors: a CUDA failure during a forward returns KVS_EIO naming the call;
 * one in kv_copy (which cannot report) is kept and returned by the next
 * forward.
 */
#include "gpu/gpu-int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Process-wide measurements (gpu.h). */
static bool cu_timing_on;
static double cu_last_ms = -1.0;
static uint64_t cu_captures, cu_hits;
static uint64_t cu_nodes; /* of the decode graph captured last */

/* ------------------------------------------------------------- helpers */

/* A device buffer of n bytes (at least 1), zeroed, freed with the backend. */
static int cu_alloc(struct cu *c, void **p, uint64_t n, struct err *e)
{
	*p = NULL;
	if (c->n_allocs == CU_MAX_ALLOCS)
		return err_set(e, KVS_ESTATE, "CUDA backend: more than %d device buffers", CU_MAX_ALLOCS);
	CU_TRY(cudaMalloc(p, n ? n : 1), "cudaMalloc");
	c->allocs[c->n_allocs++] = *p;
	CU_TRY(cudaMemset(*p, 0, n ? n : 1), "cudaMemset");
	return KVS_OK;
}

/* Pinned host memory of n bytes. */
static int cu_pinned(void **p, uint64_t n, struct err *e)
{
	*p = NULL;
	CU_TRY(cudaMallocHost(p, n ? n : 1), "cudaMallocHost");
	memset(*p, 0, n ? n : 1);
	return KVS_OK;
}

/* Take n bytes (256-aligned) from an arena of cap bytes. */
static uint8_t *cu_take(uint8_t *arena, uint64_t *used, uint64_t cap, uint64_t n)
{
	uint64_t at = *used;
	uint64_t nn = (n + 255) & ~(uint64_t)255;
	if (arena == NULL || at + nn > cap)
		return NULL;
	*used = at + nn;
	return arena + at;
}

/* Upload an F32 vector (norm, bias) into the weight arena; NULL data stays NULL. */
static int cu_upload_vec(struct cu *c, const struct tensor *t, const float **out, struct err *e)
{
	*out = NULL;
	if (t->data == NULL)
		return KVS_OK;
	uint64_t n = (uint64_t)t->ne[0] * 4;
	uint8_t *d = cu_take(c->warena, &c->warena_used, c->plan.weights, n);
	if (d == NULL)
		return err_set(e, KVS_ESTATE, "CUDA backend: weight arena too small at %s", t->name);
	CU_TRY(cudaMemcpy(d, t->data, n, cudaMemcpyHostToDevice), "upload of a vector");
	*out = (const float *)d;
	return KVS_OK;
}

/* Upload a matrix into the weight arena: as stored, or dequantised to F32
 * for types without a kernel. */
static int cu_upload_mat(struct cu *c, const struct tensor *t, ck_mat *w, struct err *e)
{
	memset(w, 0, sizeof(*w));
	uint32_t dtype = gpuplan_device_type(t->type);
	uint64_t rows = (uint64_t)t->ne[1], cols = (uint64_t)t->ne[0];
	uint64_t nb = gpuplan_weight_bytes(t->type, rows, cols), row_bytes = 0;
	if (nb == 0 || !dtype_row_bytes(dtype, cols, &row_bytes) || cols % 32 != 0)
		return err_set(e, KVS_EUNSUPPORTED, "tensor %s: type %s, %llu columns: no CUDA kernel",
		               t->name ? t->name : "?", dtype_name(t->type), (unsigned long long)cols);
	uint8_t *d = cu_take(c->warena, &c->warena_used, c->plan.weights, nb);
	if (d == NULL)
		return err_set(e, KVS_ESTATE, "CUDA backend: weight arena too small at %s", t->name);
	if (dtype == t->type) {
		CU_TRY(cudaMemcpy(d, t->data, nb, cudaMemcpyHostToDevice), "upload of a weight");
	} else {
		float *f = (float *)xmallocarray(rows * cols, sizeof(float));
		dtype_dequant(t->type, t->data, f, (int64_t)(rows * cols));
		int rc = cu_check(cudaMemcpy(d, f, nb, cudaMemcpyHostToDevice), "upload of a weight", e);
		free(f);
		if (rc != KVS_OK)
			return rc;
	}
	w->d = d;
	w->type = dtype;
	w->rows = (uint32_t)rows;
	w->cols = (uint32_t)cols;
	w->row_bytes = (uint32_t)row_bytes;
	return KVS_OK;
}

/* A resident F16 copy of w, made now (or NULL when not resident). */
static int cu_make_f16(struct cu *c, const ck_mat *w, __half **out, struct err *e)
{
	*out = NULL;
	if (!c->plan.f16_resident)
		return KVS_OK;
	uint64_t n = (uint64_t)w->rows * w->cols * 2;
	uint8_t *d = cu_take(c->harena, &c->harena_used, c->plan.f16, n);
	if (d == NULL)
		return err_set(e, KVS_ESTATE, "CUDA backend: F16 arena too small");
	ck_dequant_f16(c->st, w, (__half *)d);
	CU_TRY(cudaGetLastError(), "F16 copy of a weight");
	*out = (__half *)d;
	return KVS_OK;
}

/* F16 rows of w for a GEMM: the resident copy, or w dequantised into the
 * scratch (stream order keeps the previous user of the scratch safe). */
static const __half *cu_f16(struct cu *c, const ck_mat *w, const __half *resident)
{
	if (resident != NULL)
		return resident;
	ck_dequant_f16(c->st, w, c->wscr);
	return c->wscr;
}

/* -------------------------------------------------------------- create */

static void cu_free(void *state);

/* Bring up the weights. */
static int cu_weights(struct cu *c, struct err *e)
{
	const struct model *m = c->m;
	int rc;
	if ((rc = cu_alloc(c, (void **)&c->warena, c->plan.weights, e)))
		return rc;
	if (c->plan.f16_resident && (rc = cu_alloc(c, (void **)&c->harena, c->plan.f16, e)))
		return rc;
	c->L = (struct cu_layer *)xcalloc(c->hp.n_layer, sizeof(*c->L));
	for (uint32_t l = 0; l < c->hp.n_layer; l++) {
		const struct layer_weights *lw = &m->layers[l];
		struct cu_layer *L = &c->L[l];
		if ((rc = cu_upload_vec(c, &lw->attn_norm, &L->attn_norm, e)) ||
		    (rc = cu_upload_vec(c, &lw->ffn_norm, &L->ffn_norm, e)) ||
		    (rc = cu_upload_vec(c, &lw->bq, &L->bq, e)) ||
		    (rc = cu_upload_vec(c, &lw->bk, &L->bk, e)) ||
		    (rc = cu_upload_vec(c, &lw->bv, &L->bv, e)) ||
		    (rc = cu_upload_mat(c, &lw->wq, &L->wq, e)) ||
		    (rc = cu_upload_mat(c, &lw->wk, &L->wk, e)) ||
		    (rc = cu_upload_mat(c, &lw->wv, &L->wv, e)) ||
		    (rc = cu_upload_mat(c, &lw->wo, &L->wo, e)) ||
		    (rc = cu_upload_mat(c, &lw->w_gate, &L->gate, e)) ||
		    (rc = cu_upload_mat(c, &lw->w_up, &L->up, e)) ||
		    (rc = cu_upload_mat(c, &lw->w_down, &L->down, e)))
			return rc;
		if ((rc = cu_make_f16(c, &L->wq, &L->hq, e)) || (rc = cu_make_f16(c, &L->wk, &L->hk, e)) ||
		    (rc = cu_make_f16(c, &L->wv, &L->hv, e)) || (rc = cu_make_f16(c, &L->wo, &L->ho, e)) ||
		    (rc = cu_make_f16(c, &L->gate, &L->hgate, e)) ||
		    (rc = cu_make_f16(c, &L->up, &L->hup, e)) ||
		    (rc = cu_make_f16(c, &L->down, &L->hdown, e)))
			return rc;
	}
	const struct tensor *out = m->output.data ? &m->output : &m->tok_embd;
	if ((rc = cu_upload_mat(c, out, &c->out, e)) || (rc = cu_make_f16(c, &c->out, &c->hout, e)))
		return rc;
	if (m->tok_embd.data == out->data)
		c->embd = c->out;
	else if ((rc = cu_upload_mat(c, &m->tok_embd, &c->embd, e)))
		return rc;
	return cu_upload_vec(c, &m->out_norm, &c->out_norm, e);
}

/* Allocate the caches and the work buffers. */
static int cu_buffers(struct cu *c, struct err *e)
{
	const struct hparams *hp = &c->hp;
	const struct gpuplan *p = &c->plan;
	uint64_t ctx = p->n_ctx, u = p->ubatch, hd = hp->head_dim;
	uint64_t nq = (uint64_t)hp->n_head * hd;
	uint64_t ne = hp->n_embd, nff = hp->n_ff, km = p->kmax;
	uint64_t n_chunks = (ctx + u - 1) / u;
	int rc;
	struct {
		void **p;
		uint64_t n;
	} dev[] = {
		{ (void **)&c->kc, p->kv / 2 },
		{ (void **)&c->vc, p->kv / 2 },
		{ (void **)&c->slot_cs, ctx * KVS_MAX(hp->n_rot, 2u) * 4 },
		{ (void **)&c->cs_pos, ctx * 4 },
		{ (void **)&c->vis, ctx * 4 },
		{ (void **)&c->vpos, ctx * 4 },
		{ (void **)&c->mv_dst, ctx * 4 },
		{ (void **)&c->mv_src, ctx * 4 },
		{ (void **)&c->kv_tmp, p->kv_tmp },
		{ (void **)&c->step, CK_STEP_INTS(u) * 4 },
		{ (void **)&c->targets, u * 4 },
		{ (void **)&c->x, u * ne * 4 },
		{ (void **)&c->xb, u * ne * 4 },
		{ (void **)&c->q, u * nq * 4 },
		{ (void **)&c->ao, u * nq * 4 },
		{ (void **)&c->g, u * nff * 4 },
		{ (void **)&c->xh, u * km * 2 },
		{ (void **)&c->aoh, u * nq * 2 },
		{ (void **)&c->gh, u * nff * 2 },
		{ (void **)&c->aq, km },
		{ (void **)&c->ad, km / 32 * 4 },
		{ (void **)&c->as, km / 32 * 4 },
		{ (void **)&c->ai, km / 32 * 4 },
		{ (void **)&c->part, (uint64_t)p->part_rows * hp->n_head * (hd + 2) * 4 },
		{ (void **)&c->raw, (uint64_t)hp->n_layer * hp->n_head * ctx * 4 },
		{ (void **)&c->ml, (uint64_t)hp->n_layer * hp->n_head * 2 * 4 },
		{ (void **)&c->mlq, u * hp->n_head * 2 * 4 },
		{ (void **)&c->akv, (uint64_t)hp->n_layer * hp->n_head_kv * ctx * 4 },
		{ (void **)&c->logits, p->logits },
		{ (void **)&c->sur, u * 4 },
		{ (void **)&c->ent, u * 4 },
		{ (void **)&c->counter, 4 },
		{ (void **)&c->acounters, (uint64_t)hp->n_head_kv * 4 },
	};
	for (size_t i = 0; i < KVS_ARRAY_LEN(dev); i++)
		if ((rc = cu_alloc(c, dev[i].p, dev[i].n, e)))
			return rc;
	if (!p->f16_resident && (rc = cu_alloc(c, (void **)&c->wscr, p->f16_max, e)))
		return rc;
	/* empty markers: positions -1 */
	CU_TRY(cudaMemset(c->cs_pos, 0xff, ctx * 4), "cudaMemset");
	CU_TRY(cudaMemset(c->vpos, 0xff, ctx * 4), "cudaMemset");

	struct {
		void **p;
		uint64_t n;
	} host[] = {
		{ (void **)&c->h_step, n_chunks * CK_STEP_INTS(u) * 4 },
		{ (void **)&c->h_targets, ctx * 4 },
		{ (void **)&c->h_vis, ctx * 4 },
		{ (void **)&c->h_vpos, ctx * 4 },
		{ (void **)&c->h_mv, 2 * ctx * 4 },
		{ (void **)&c->h_logits, (uint64_t)hp->n_vocab * 4 },
	};
	for (size_t i = 0; i < KVS_ARRAY_LEN(host); i++)
		if ((rc = cu_pinned(host[i].p, host[i].n, e)))
			return rc;
	c->sh_vis = (uint32_t *)xcalloc(ctx, sizeof(uint32_t));
	c->sh_vpos = (int32_t *)xmallocarray(ctx, sizeof(int32_t));
	c->nv_pos = (int32_t *)xmallocarray(ctx, sizeof(int32_t));
	c->origin = (int64_t *)xmallocarray(ctx, sizeof(int64_t));
	for (uint64_t s = 0; s < ctx; s++) {
		c->sh_vpos[s] = -1;
		c->origin[s] = -1;
	}
	return KVS_OK;
}

static int cu_create(const struct backend_ctx *ctx, void **state, struct err *e)
{
	const struct model *m = ctx->m;
	int rc = gpuplan_check_model(&m->hp, e);
	if (rc != KVS_OK)
		return rc;
	if (ctx->cfg.kv_type != ENGINE_KV_F16)
		return err_set(e, KVS_EUNSUPPORTED,
		               "KV cache type f32: the CUDA backend keeps an F16 cache; use f16");
	struct gpu_info gi;
	if ((rc = gpu_probe(&gi, e)) != KVS_OK)
		return rc;
	if (gi.cc_major < 8)
		return err_set(e, KVS_EUNSUPPORTED,
		               "%s has compute capability %d.%d; this build has kernels for 8.0 and newer",
		               gi.name, gi.cc_major, gi.cc_minor);

	struct cu *c = (struct cu *)xcalloc(1, sizeof(*c));
	c->m = m;
	c->hp = m->hp;
	c->cfg = ctx->cfg;
	c->slot_pos = ctx->slot_pos;
	c->gi = gi;
	gpugraph_init(&c->graphs);
	const char *env = getenv("KVSCOPE_CUDA_GRAPHS");
	c->use_graphs = env == NULL || strcmp(env, "0") != 0;
	env = getenv("KVSCOPE_CUDA_FUSE");
	c->fuse = env == NULL || strcmp(env, "0") != 0;
	*state = c;

	size_t mem_free = 0, mem_total = 0;
	cudaDeviceProp prop;
	if ((rc = cu_check(cudaSetDevice(gi.device), "cudaSetDevice", e)) ||
	    (rc = cu_check(cudaGetDeviceProperties(&prop, gi.device), "cudaGetDeviceProperties", e)) ||
	    (rc = cu_check(cudaMemGetInfo(&mem_free, &mem_total), "cudaMemGetInfo", e)))
		goto fail;
	c->n_sm = prop.multiProcessorCount;
	snprintf(c->isa, sizeof(c->isa), "sm_%d%d %s", gi.cc_major, gi.cc_minor, gi.name);
	if ((rc = gpuplan_make(&c->plan, m, ctx->cfg.n_ctx, mem_free, e)) != KVS_OK) {
		err_prefix(e, "%s", gi.name);
		goto fail;
	}
	if ((rc = cu_check(cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking), "cudaStreamCreate",
	                   e)) ||
	    (rc = cu_check(cudaEventCreate(&c->ev0), "cudaEventCreate", e)) ||
	    (rc = cu_check(cudaEventCreate(&c->ev1), "cudaEventCreate", e)))
		goto fail;
	if ((rc = cu_weights(c, e)) || (rc = cu_buffers(c, e)))
		goto fail;
	cu_sp_init(c);
	if ((rc = cu_cold_init(c, e)) != KVS_OK)
		goto fail;
	if ((rc = cu_check(cudaStreamSynchronize(c->st), "weight upload", e)) ||
	    (rc = cu_check(cudaDeviceSynchronize(), "setup", e)))
		goto fail;
	return KVS_OK;
fail:
	cu_free(c);
	*state = NULL;
	return rc;
}

/* ------------------------------------------------------------- forward */

/* The q8 activation row (input of the q8 kernels) as an output. */
static ck_q8out cu_q8(struct cu *c)
{
	ck_q8out q = { c->aq, c->ad, c->as, c->ai };
	return q;
}

/* An activation row: f32 xf plus the shared q8 row. */
static ck_act cu_act(struct cu *c, const float *xf)
{
	ck_act a = { xf, c->aq, c->ad, c->as, c->ai };
	return a;
}

/* Attention arguments of layer l; raw scores of query raw_q when raw. */
static ck_attn_args cu_attn_args(struct cu *c, uint32_t l, bool raw, int raw_q)
{
	const struct hparams *hp = &c->hp;
	uint64_t layer = (uint64_t)c->plan.n_ctx * hp->n_head_kv * hp->head_dim;
	ck_attn_args a;
	memset(&a, 0, sizeof(a));
	a.q = c->q;
	a.kc = c->kc + l * layer;
	a.vc = c->vc + l * layer;
	a.slot_cs = c->slot_cs;
	a.vis = c->vis;
	a.vpos = c->vpos;
	a.step = c->step;
	a.part = c->part;
	a.raw = raw ? c->raw + (uint64_t)l * hp->n_head * c->plan.n_ctx : NULL;
	a.raw_q = raw_q;
	a.n_ctx = c->plan.n_ctx;
	a.n_head = (int)hp->n_head;
	a.n_kv = (int)hp->n_head_kv;
	a.hd = (int)hp->head_dim;
	a.n_rot = (int)hp->n_rot;
	a.neox = hp->rope == ROPE_NEOX;
	a.scale = hp->attn_scale;
	a.theta_scale = powf(hp->rope_base, -2.0f / (float)hp->n_rot);
	a.freq_scale = hp->rope_freq_scale;
	return a;
}

/* Layer l's per-KV-head attention sums (n_kv, n_ctx). */
static float *cu_akv(struct cu *c, uint32_t l)
{
	return c->akv + (uint64_t)l * c->hp.n_head_kv * c->plan.n_ctx;
}

/* The RoPE table refresh that starts every forward. */
static void cu_enqueue_angles(struct cu *c)
{
	const struct hparams *hp = &c->hp;
	ck_angles(c->st, c->vis, c->vpos, c->step, c->plan.n_ctx, c->slot_cs, c->cs_pos, (int)hp->n_rot,
	          powf(hp->rope_base, -2.0f / (float)hp->n_rot), hp->rope_freq_scale);
}

/* A decode's attention and the merge of its splits into ao (q8, ml, mlq
 * as ck_combine's): one launch when c->fuse (the last split block of each
 * KV head merges), two otherwise. */
static void cu_attend(struct cu *c, const ck_attn_args *aa, uint32_t splits, float *ao, ck_q8out q8,
                      float *ml, float *mlq)
{
	const struct hparams *hp = &c->hp;
	if (c->fuse) {
		ck_attn_fuse f = { ao, q8, ml, mlq, c->acounters };
		ck_attention(c->st, aa, 1, splits, &f);
		return;
	}
	ck_attention(c->st, aa, 1, splits, NULL);
	ck_combine(c->st, c->part, 1, (int)hp->n_head, (int)hp->head_dim, splits, ao, NULL, q8, ml, 0,
	           mlq);
}

/* One decode step (the graph's body): token in step, logits into
 * c->logits row 0 when lm, raw attention probabilities when attn. Each
 * layer ends with the next norm (the next layer's, or the output norm),
 * fused into the residual-adding product when c->fuse, and merges its
 * attention splits inside the attention launch then. gpuplan_launches
 * counts what this enqueues (the GPU check compares it with the captured
 * graph's nodes). */
static void cu_enqueue_decode(struct cu *c, uint32_t splits, bool lm, bool attn, bool akv)
{
	const struct hparams *hp = &c->hp;
	uint32_t ne = hp->n_embd, nh = hp->n_head;
	uint64_t layer = (uint64_t)c->plan.n_ctx * hp->n_head_kv * hp->head_dim;
	ck_q8out q8 = cu_q8(c);
	ck_act a = cu_act(c, c->xb), ao = cu_act(c, c->ao), ga = cu_act(c, c->g);
	ck_q8out none = { NULL, NULL, NULL, NULL };
	cu_enqueue_angles(c);
	cu_sp_enqueue_start(c);
	if (akv)
		cudaMemsetAsync(c->akv, 0, (size_t)hp->n_layer * hp->n_head_kv * c->plan.n_ctx * 4, c->st);
	ck_embed(c->st, &c->embd, c->step, 1, c->x);
	ck_rmsnorm(c->st, c->x, c->L[0].attn_norm, 1, ne, hp->rms_eps, c->xb, NULL, q8);
	for (uint32_t l = 0; l < hp->n_layer; l++) {
		const struct cu_layer *L = &c->L[l];
		ck_mv_qkv(c->st, &L->wq, &L->wk, &L->wv, L->bq, L->bk, L->bv, &a, c->q, c->kc + l * layer,
		          c->vc + l * layer, c->step);
		ck_attn_args aa = cu_attn_args(c, l, attn, 0);
		uint32_t n_tiles = (c->plan.n_ctx + GPUPLAN_ATT_TILE - 1) / GPUPLAN_ATT_TILE;
		ck_attn_args sa = aa;
		sa.raw = NULL;
		if (cu_sp_layer(c, l, &sa)) {
			/* sparse: with attn, a dense shadow gives the raw weights and
			 * their softmax (into a spare row of ao); then the lists */
			if (attn)
				cu_attend(c, &aa, splits, c->ao + (uint64_t)nh * hp->head_dim, none,
				          c->ml + (uint64_t)l * nh * 2, NULL);
			cu_attend(c, &sa, c->sp.ssplits, c->ao, q8, NULL, akv ? c->mlq : NULL);
			if (akv)
				ck_attn_acc(c->st, &sa, 1, n_tiles, c->mlq, cu_akv(c, l));
		} else {
			cu_attend(c, &aa, splits, c->ao, q8, attn ? c->ml + (uint64_t)l * nh * 2 : NULL,
			          akv ? c->mlq : NULL);
			if (akv)
				ck_attn_acc(c->st, &aa, 1, n_tiles, c->mlq, cu_akv(c, l));
		}
		if (c->fuse) {
			ck_mv_add_norm(c->st, &L->wo, &ao, c->x, L->ffn_norm, hp->rms_eps, c->xb, q8,
			               c->counter);
		} else {
			ck_mv(c->st, &L->wo, &ao, c->x, NULL, true);
			ck_rmsnorm(c->st, c->x, L->ffn_norm, 1, ne, hp->rms_eps, c->xb, NULL, q8);
		}
		ck_mv_swiglu(c->st, &L->gate, &L->up, &a, c->g, q8);
		const float *next = l + 1 < hp->n_layer ? c->L[l + 1].attn_norm : lm ? c->out_norm : NULL;
		if (c->fuse && next != NULL) {
			ck_mv_add_norm(c->st, &L->down, &ga, c->x, next, hp->rms_eps, c->xb, q8, c->counter);
		} else {
			ck_mv(c->st, &L->down, &ga, c->x, NULL, true);
			if (next != NULL)
				ck_rmsnorm(c->st, c->x, next, 1, ne, hp->rms_eps, c->xb, NULL, q8);
		}
	}
	if (lm)
		ck_mv(c->st, &c->out, &a, c->logits, NULL, false);
	if (attn)
		ck_attn_norm(c->st, c->raw, c->ml, hp->n_layer * nh, c->plan.n_ctx, c->step);
}

/* Destroy a graph held by the cache. */
static void cu_graph_destroy(void *arg, void *exec)
{
	(void)arg;
	cudaGraphExecDestroy((cudaGraphExec_t)exec);
}

/* Run the decode step: replay its graph (capturing it on first use), or
 * launch the kernels directly when graphs are off or capture fails. */
static int cu_run_decode(struct cu *c, uint32_t splits, bool lm, bool attn, bool akv, struct err *e)
{
	if (c->use_graphs) {
		uint64_t key = gpugraph_key(splits, lm ? ENGINE_LOGITS_LAST : ENGINE_LOGITS_NONE,
		                            (attn ? GPUGRAPH_ATTN : 0u) | (akv ? GPUGRAPH_ATTN_KV : 0u));
		key = cu_sp_graph_key(c, key);
		cudaGraphExec_t exec = (cudaGraphExec_t)gpugraph_find(&c->graphs, key);
		if (exec == NULL) {
			cudaGraph_t graph = NULL;
			cudaError_t st = cudaStreamBeginCapture(c->st, cudaStreamCaptureModeThreadLocal);
			if (st == cudaSuccess) {
				cu_enqueue_decode(c, splits, lm, attn, akv);
				st = cudaStreamEndCapture(c->st, &graph);
			}
			size_t n_nodes = 0;
			if (st == cudaSuccess && cudaGraphGetNodes(graph, NULL, &n_nodes) == cudaSuccess)
				cu_nodes = n_nodes;
			if (st == cudaSuccess)
				st = cudaGraphInstantiate(&exec, graph, 0);
			if (graph != NULL)
				cudaGraphDestroy(graph);
			if (st != cudaSuccess) {
				/* fall back to plain launches for the rest of this engine */
				(void)cudaGetLastError();
				log_warn("CUDA graph capture failed (%s); launching kernels directly",
				         cudaGetErrorString(st));
				c->use_graphs = false;
				exec = NULL;
			} else {
				void *old = gpugraph_insert(&c->graphs, key, (void *)exec);
				if (old != NULL)
					cu_graph_destroy(NULL, old);
				cu_captures++;
			}
		} else {
			cu_hits++;
		}
		if (exec != NULL) {
			CU_TRY(cudaGraphLaunch(exec, c->st), "cudaGraphLaunch");
			return KVS_OK;
		}
	}
	cu_enqueue_decode(c, splits, lm, attn, akv);
	CU_TRY(cudaGetLastError(), "decode launch");
	return KVS_OK;
}

/* One prefill step of nu tokens (batch tokens t0 ..), last: the batch's
 * final step. Logits rows go to bo as the batch asks. */
static int cu_run_prefill(struct cu *c, const struct engine_batch *b, struct backend_out *bo,
                          uint32_t t0, uint32_t nu, bool last, struct err *e)
{
	const struct hparams *hp = &c->hp;
	uint32_t ne = hp->n_embd, nh = hp->n_head, hd = hp->head_dim, nff = hp->n_ff;
	uint32_t nq = nh * hd, nkv = hp->n_head_kv * hd, nvoc = hp->n_vocab;
	uint64_t layer = (uint64_t)c->plan.n_ctx * nkv;
	ck_q8out q8 = cu_q8(c), none = { NULL, NULL, NULL, NULL };
	bool attn = b->want_attn && last;
	int raw_q = attn ? (int)nu - 1 : -1;
	uint32_t splits = gpuplan_attn_splits(b->n_visible, hp->n_head_kv, nu, (uint32_t)c->n_sm,
	                                      c->plan.part_rows);

	ck_embed(c->st, &c->embd, c->step, nu, c->x);
	for (uint32_t l = 0; l < hp->n_layer; l++) {
		const struct cu_layer *L = &c->L[l];
		ck_gemm_out o;
		memset(&o, 0, sizeof(o));
		ck_rmsnorm(c->st, c->x, L->attn_norm, nu, ne, hp->rms_eps, NULL, c->xh, none);
		o.epi = CK_EPI_STORE;
		o.y = c->q;
		o.bias = L->bq;
		o.ldy = nq;
		ck_gemm(c->st, c->xh, nu, ne, cu_f16(c, &L->wq, L->hq), nq, &o);
		o.epi = CK_EPI_KV;
		o.step = c->step;
		o.ldy = nkv;
		o.kv = c->kc + l * layer;
		o.bias = L->bk;
		ck_gemm(c->st, c->xh, nu, ne, cu_f16(c, &L->wk, L->hk), nkv, &o);
		o.kv = c->vc + l * layer;
		o.bias = L->bv;
		ck_gemm(c->st, c->xh, nu, ne, cu_f16(c, &L->wv, L->hv), nkv, &o);

		ck_attn_args aa = cu_attn_args(c, l, attn, raw_q);
		ck_attention(c->st, &aa, nu, splits, NULL);
		ck_combine(c->st, c->part, nu, (int)nh, (int)hd, splits, c->ao, c->aoh, none,
		           attn ? c->ml + (uint64_t)l * nh * 2 : NULL, raw_q,
		           b->want_attn_kv ? c->mlq : NULL);
		if (b->want_attn_kv)
			ck_attn_acc(c->st, &aa, nu, (b->n_visible + GPUPLAN_ATT_TILE - 1) / GPUPLAN_ATT_TILE,
			            c->mlq, cu_akv(c, l));

		memset(&o, 0, sizeof(o));
		o.epi = CK_EPI_ADD;
		o.y = c->x;
		o.ldy = ne;
		ck_gemm(c->st, c->aoh, nu, nq, cu_f16(c, &L->wo, L->ho), ne, &o);
		ck_rmsnorm(c->st, c->x, L->ffn_norm, nu, ne, hp->rms_eps, NULL, c->xh, none);
		o.epi = CK_EPI_STORE;
		o.y = c->g;
		o.ldy = nff;
		ck_gemm(c->st, c->xh, nu, ne, cu_f16(c, &L->gate, L->hgate), nff, &o);
		o.epi = CK_EPI_SWIGLU;
		o.gate = c->g;
		o.yh = c->gh;
		ck_gemm(c->st, c->xh, nu, ne, cu_f16(c, &L->up, L->hup), nff, &o);
		memset(&o, 0, sizeof(o));
		o.epi = CK_EPI_ADD;
		o.y = c->x;
		o.ldy = ne;
		ck_gemm(c->st, c->gh, nu, nff, cu_f16(c, &L->down, L->hdown), ne, &o);
	}
	if (attn)
		ck_attn_norm(c->st, c->raw, c->ml, hp->n_layer * nh, c->plan.n_ctx, c->step);

	bool all_rows = b->logits == ENGINE_LOGITS_ALL || b->want_surprisal;
	bool last_row = last && b->logits == ENGINE_LOGITS_LAST;
	if (all_rows) {
		ck_gemm_out o;
		memset(&o, 0, sizeof(o));
		ck_rmsnorm(c->st, c->x, c->out_norm, nu, ne, hp->rms_eps, NULL, c->xh, none);
		o.epi = CK_EPI_STORE;
		o.y = c->logits;
		o.ldy = nvoc;
		ck_gemm(c->st, c->xh, nu, ne, cu_f16(c, &c->out, c->hout), nvoc, &o);
		if (b->want_surprisal) {
			ck_row_stats(c->st, c->logits, nu, nvoc, c->targets, c->sur, c->ent);
			CU_TRY(cudaMemcpyAsync(bo->surprisal + t0, c->sur, nu * 4, cudaMemcpyDeviceToHost,
			                       c->st),
			       "copy of surprisal");
			CU_TRY(cudaMemcpyAsync(bo->entropy + t0, c->ent, nu * 4, cudaMemcpyDeviceToHost, c->st),
			       "copy of entropy");
		}
		if (b->logits == ENGINE_LOGITS_ALL)
			CU_TRY(cudaMemcpyAsync(bo->logits + (uint64_t)t0 * nvoc, c->logits,
			                       (uint64_t)nu * nvoc * 4, cudaMemcpyDeviceToHost, c->st),
			       "copy of logits");
		else if (last_row)
			CU_TRY(cudaMemcpyAsync(bo->logits, c->logits + (uint64_t)(nu - 1) * nvoc,
			                       (uint64_t)nvoc * 4, cudaMemcpyDeviceToHost, c->st),
			       "copy of logits");
	} else if (last_row) {
		/* the last row alone, on the decode path's kernels (as the CPU does) */
		ck_rmsnorm(c->st, c->x + (uint64_t)(nu - 1) * ne, c->out_norm, 1, ne, hp->rms_eps, c->xb,
		           NULL, q8);
		ck_act a = cu_act(c, c->xb);
		ck_mv(c->st, &c->out, &a, c->logits, NULL, false);
		CU_TRY(cudaMemcpyAsync(bo->logits, c->logits, (uint64_t)nvoc * 4, cudaMemcpyDeviceToHost,
		                       c->st),
		       "copy of logits");
	}
	CU_TRY(cudaGetLastError(), "prefill launch");
	return KVS_OK;
}

/* Upload the part of the visible list (and its positions) that changed. */
static int cu_upload_visible(struct cu *c, const struct engine_batch *b, struct err *e)
{
	uint32_t nv = b->n_visible, lo, hi, plo, phi;
	for (uint32_t j = 0; j < nv; j++)
		c->nv_pos[j] = c->slot_pos[b->visible[j]];
	gpuplan_diff_range(c->sh_vis, b->visible, nv, &lo, &hi);
	gpuplan_diff_range((const uint32_t *)c->sh_vpos, (const uint32_t *)c->nv_pos, nv, &plo, &phi);
	if (plo < phi) {
		lo = lo < hi ? KVS_MIN(lo, plo) : plo;
		hi = KVS_MAX(hi, phi);
	}
	if (lo >= hi)
		return KVS_OK;
	uint32_t n = hi - lo;
	memcpy(c->h_vis + lo, b->visible + lo, n * sizeof(uint32_t));
	memcpy(c->h_vpos + lo, c->nv_pos + lo, n * sizeof(int32_t));
	memcpy(c->sh_vis + lo, b->visible + lo, n * sizeof(uint32_t));
	memcpy(c->sh_vpos + lo, c->nv_pos + lo, n * sizeof(int32_t));
	CU_TRY(cudaMemcpyAsync(c->vis + lo, c->h_vis + lo, n * 4, cudaMemcpyHostToDevice, c->st),
	       "upload of the visible list");
	CU_TRY(cudaMemcpyAsync(c->vpos + lo, c->h_vpos + lo, n * 4, cudaMemcpyHostToDevice, c->st),
	       "upload of the visible list");
	return KVS_OK;
}

/* Upload the step array of batch tokens [t0, t0 + nu) from pinned region k. */
static int cu_upload_step(struct cu *c, const struct engine_batch *b, uint32_t t0, uint32_t nu,
                          uint32_t k, struct err *e)
{
	int32_t *h = c->h_step + (uint64_t)k * CK_STEP_INTS(c->plan.ubatch);
	h[CK_STEP_NVIS] = (int32_t)b->n_visible;
	h[CK_STEP_NTOK] = (int32_t)nu;
	h[CK_STEP_NGLOB] = (int32_t)b->n_global;
	h[CK_STEP_DCAP] = b->dist_cap;
	for (uint32_t i = 0; i < nu; i++) {
		h[CK_STEP_TOK(i)] = b->tokens[t0 + i];
		h[CK_STEP_POS(i)] = b->pos[t0 + i];
		h[CK_STEP_SLOT(i)] = (int32_t)b->slot[t0 + i];
	}
	CU_TRY(cudaMemcpyAsync(c->step, h, CK_STEP_INTS(nu) * 4, cudaMemcpyHostToDevice, c->st),
	       "upload of the step");
	if (b->want_surprisal) {
		for (uint32_t i = 0; i < nu; i++) {
			uint32_t t = t0 + i;
			c->h_targets[t] = t + 1 < b->n_tokens ? b->tokens[t + 1] : -1;
		}
		CU_TRY(cudaMemcpyAsync(c->targets, c->h_targets + t0, nu * 4, cudaMemcpyHostToDevice,
		                       c->st),
		       "upload of the targets");
	}
	return KVS_OK;
}

static int cu_forward(void *state, const struct engine_batch *b, struct backend_out *out,
                      struct err *e)
{
	struct cu *c = (struct cu *)state;
	const struct hparams *hp = &c->hp;
	int rc;
	if (c->failed[0] != '\0') {
		err_set(e, KVS_EIO, "%s", c->failed);
		c->failed[0] = '\0';
		return KVS_EIO;
	}
	cu_cold_fence(c); /* the batch writes keys a gather may still read */
	if (cu_timing_on)
		CU_TRY(cudaEventRecord(c->ev0, c->st), "cudaEventRecord");
	if ((rc = cu_upload_visible(c, b, e)) || (rc = cu_sp_begin(c, b, out, e)))
		return rc;
	uint32_t u = c->plan.ubatch;
	if (b->n_tokens == 1) {
		bool lm = b->logits != ENGINE_LOGITS_NONE || b->want_surprisal;
		uint32_t splits = gpuplan_attn_splits(b->n_visible, hp->n_head_kv, 1, (uint32_t)c->n_sm,
		                                      c->plan.part_rows);
		if ((rc = cu_upload_step(c, b, 0, 1, 0, e)) ||
		    (rc = cu_run_decode(c, splits, lm, b->want_attn, b->want_attn_kv, e)))
			return rc;
		if (b->want_surprisal) {
			ck_row_stats(c->st, c->logits, 1, hp->n_vocab, c->targets, c->sur, c->ent);
			CU_TRY(cudaMemcpyAsync(out->surprisal, c->sur, 4, cudaMemcpyDeviceToHost, c->st),
			       "copy of surprisal");
			CU_TRY(cudaMemcpyAsync(out->entropy, c->ent, 4, cudaMemcpyDeviceToHost, c->st),
			       "copy of entropy");
		}
		if (out->logits != NULL)
			CU_TRY(cudaMemcpyAsync(c->h_logits, c->logits, (uint64_t)hp->n_vocab * 4,
			                       cudaMemcpyDeviceToHost, c->st),
			       "copy of logits");
	} else {
		/* steps of u tokens, each with its own pinned step region (the
		 * host fills the next while the device runs this one) */
		for (uint32_t t0 = 0, k = 0; t0 < b->n_tokens; t0 += u, k++) {
			uint32_t nu = KVS_MIN(u, b->n_tokens - t0);
			bool last = t0 + nu == b->n_tokens;
			if ((rc = cu_upload_step(c, b, t0, nu, k, e)))
				return rc;
			if (k == 0) {
				cu_enqueue_angles(c); /* reads step[0], the visible count */
				if (b->want_attn_kv)
					CU_TRY(cudaMemsetAsync(c->akv, 0,
					                       (size_t)hp->n_layer * hp->n_head_kv * c->plan.n_ctx * 4,
					                       c->st),
					       "cudaMemsetAsync");
			}
			if ((rc = cu_run_prefill(c, b, out, t0, nu, last, e)))
				return rc;
		}
	}
	if (b->want_attn) {
		uint32_t nv = b->n_visible, rows = hp->n_layer * hp->n_head;
		if (nv > 0)
			CU_TRY(cudaMemcpy2DAsync(out->attn, (size_t)nv * 4, c->raw, (size_t)c->plan.n_ctx * 4,
			                         (size_t)nv * 4, rows, cudaMemcpyDeviceToHost, c->st),
			       "copy of attention");
	}
	if (b->want_attn_kv && b->n_visible > 0)
		CU_TRY(cudaMemcpy2DAsync(out->attn_kv, (size_t)b->n_visible * 4, c->akv,
		                         (size_t)c->plan.n_ctx * 4, (size_t)b->n_visible * 4,
		                         hp->n_layer * hp->n_head_kv, cudaMemcpyDeviceToHost, c->st),
		       "copy of attention per KV head");
	if ((rc = cu_sp_outputs(c, b, out, e)))
		return rc;
	if (cu_timing_on)
		CU_TRY(cudaEventRecord(c->ev1, c->st), "cudaEventRecord");
	CU_TRY(cudaStreamSynchronize(c->st), "forward");
	CU_TRY(cudaGetLastError(), "forward");
	cu_sp_finish(c, b, out);
	if (b->n_tokens == 1 && out->logits != NULL)
		memcpy(out->logits, c->h_logits, (size_t)hp->n_vocab * 4);
	if (cu_timing_on) {
		float ms = 0;
		if (cudaEventElapsedTime(&ms, c->ev0, c->ev1) == cudaSuccess)
			cu_last_ms = ms;
	}
	return KVS_OK;
}

/* ------------------------------------------------------------ KV slots */

static void cu_kv_copy(void *state, const uint32_t *dst, const uint32_t *src, uint32_t n)
{
	struct cu *c = (struct cu *)state;
	const struct hparams *hp = &c->hp;
	uint32_t ctx = c->plan.n_ctx;
	bool overlap = false;
	uint32_t *md = c->h_mv, *ms = c->h_mv + ctx;
	cu_sp_copied(c, dst, src, n);
	cu_cold_fence(c);
	uint32_t nm = gpuplan_kv_moves(dst, src, n, c->origin, md, ms, &overlap);
	if (nm == 0)
		return;
	uint32_t row = hp->n_head_kv * hp->head_dim;
	uint64_t layer = (uint64_t)ctx * row;
	cudaError_t st = cudaMemcpyAsync(c->mv_dst, md, nm * 4, cudaMemcpyHostToDevice, c->st);
	if (st == cudaSuccess)
		st = cudaMemcpyAsync(c->mv_src, ms, nm * 4, cudaMemcpyHostToDevice, c->st);
	if (st == cudaSuccess) {
		if (!overlap) {
			ck_kv_move(c->st, CK_MOVE_DIRECT, c->kc, c->vc, layer, row, 0, hp->n_layer, c->mv_dst,
			           c->mv_src, nm, NULL);
		} else {
			for (uint32_t l = 0; l < hp->n_layer; l++) {
				ck_kv_move(c->st, CK_MOVE_GATHER, c->kc, c->vc, layer, row, l, l + 1, c->mv_dst,
				           c->mv_src, nm, c->kv_tmp);
				ck_kv_move(c->st, CK_MOVE_SCATTER, c->kc, c->vc, layer, row, l, l + 1, c->mv_dst,
				           c->mv_src, nm, c->kv_tmp);
			}
		}
		st = cudaGetLastError();
	}
	if (st == cudaSuccess)
		st = cudaStreamSynchronize(c->st);
	if (st != cudaSuccess && c->failed[0] == '\0')
		snprintf(c->failed, sizeof(c->failed), "CUDA KV slot copy: %s", cudaGetErrorString(st));
}

static void cu_kv_read(void *state, uint32_t layer, uint32_t slot, uint32_t kv_head, bool value,
                       float *out)
{
	struct cu *c = (struct cu *)state;
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim;
	uint64_t at =
	        ((uint64_t)layer * c->plan.n_ctx + slot) * hp->n_head_kv * hd + (uint64_t)kv_head * hd;
	uint16_t buf[256];
	cudaError_t st = cudaMemcpyAsync(buf, (value ? c->vc : c->kc) + at, hd * 2,
	                                 cudaMemcpyDeviceToHost, c->st);
	if (st == cudaSuccess)
		st = cudaStreamSynchronize(c->st);
	if (st != cudaSuccess) {
		for (uint32_t d = 0; d < hd; d++)
			out[d] = NAN;
		if (c->failed[0] == '\0')
			snprintf(c->failed, sizeof(c->failed), "CUDA KV read: %s", cudaGetErrorString(st));
		return;
	}
	for (uint32_t d = 0; d < hd; d++)
		out[d] = dtype_f16_to_f32(buf[d]);
}

/* Raw slot access for saved sessions: the slot's pre-RoPE keys and values,
 * per layer the K row then the V row (f16), the CPU backend's layout. One
 * strided copy per direction and tensor: the layers of a slot are n_ctx
 * rows apart on the device. */
static int cu_kv_raw(void *state, uint32_t slot, void *buf, bool load, struct err *e)
{
	struct cu *c = (struct cu *)state;
	const struct hparams *hp = &c->hp;
	size_t row = (size_t)hp->n_head_kv * hp->head_dim * sizeof(__half);
	size_t dev_pitch = (size_t)c->plan.n_ctx * row, host_pitch = 2 * row;
	cudaError_t st = cudaSuccess;
	if (load) {
		cu_sp_loaded(c, slot);
		cu_cold_fence(c);
	}
	for (int v = 0; v < 2 && st == cudaSuccess; v++) {
		uint8_t *dev = (uint8_t *)(v ? c->vc : c->kc) + (size_t)slot * row;
		uint8_t *host = (uint8_t *)buf + (size_t)v * row;
		if (load)
			st = cudaMemcpy2DAsync(dev, dev_pitch, host, host_pitch, row, hp->n_layer,
			                       cudaMemcpyHostToDevice, c->st);
		else
			st = cudaMemcpy2DAsync(host, host_pitch, dev, dev_pitch, row, hp->n_layer,
			                       cudaMemcpyDeviceToHost, c->st);
	}
	if (st == cudaSuccess)
		st = cudaStreamSynchronize(c->st);
	if (st != cudaSuccess)
		return err_set(e, KVS_EIO, "CUDA KV slot %u %s: %s", slot, load ? "load" : "save",
		               cudaGetErrorString(st));
	return KVS_OK;
}

static const char *cu_isa_name(void *state)
{
	return ((struct cu *)state)->isa;
}

static void cu_free(void *state)
{
	struct cu *c = (struct cu *)state;
	if (c == NULL)
		return;
	gpugraph_clear(&c->graphs, cu_graph_destroy, NULL);
	cu_cold_free(c); /* waits for the copies still reading the cache */
	cu_sp_free(c);
	for (int i = 0; i < c->n_allocs; i++)
		cudaFree(c->allocs[i]);
	void *pinned[] = { c->h_step, c->h_targets, c->h_vis, c->h_vpos, c->h_mv, c->h_logits };
	for (size_t i = 0; i < KVS_ARRAY_LEN(pinned); i++)
		if (pinned[i] != NULL)
			cudaFreeHost(pinned[i]);
	if (c->st)
		cudaStreamDestroy(c->st);
	if (c->ev0)
		cudaEventDestroy(c->ev0);
	if (c->ev1)
		cudaEventDestroy(c->ev1);
	free(c->L);
	free(c->sh_vis);
	free(c->sh_vpos);
	free(c->nv_pos);
	free(c->origin);
	free(c);
}

static const struct backend_ops cu_ops = {
	"cuda",        cu_create,
	cu_forward,    cu_kv_copy,
	cu_kv_read,    cu_isa_name,
	cu_free,       ENGINE_CAP_ATTN_KV | ENGINE_CAP_DIST_CAP | ENGINE_CAP_SPARSE,
	cu_kv_raw,     cu_sp_page_bounds,
	cu_ring_alloc, cu_ring_free,
	cu_kv_gather,  cu_kv_job,
	cu_kv_scatter,
};

/* ------------------------------------------------------------- gpu.h */

extern "C" const struct backend_ops *gpu_backend_ops(void)
{
	return &cu_ops;
}

extern "C" void gpu_timing(bool on)
{
	cu_timing_on = on;
	cu_last_ms = -1.0;
}

extern "C" double gpu_last_ms(void)
{
	return cu_last_ms;
}

extern "C" void gpu_graph_counts(uint64_t *captures, uint64_t *hits)
{
	*captures = cu_captures;
	*hits = cu_hits;
}

extern "C" uint64_t gpu_graph_nodes(void)
{
	return cu_nodes;
}
