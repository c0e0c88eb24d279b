/*
 * gpuplan.c: the CUDA backend's host-side decisions (see gpuplan.h).
 *
 * Plain C with no CUDA in sight, built in every configuration: the unit test
 * pins these rules on machines without a GPU, and the backend calls them on
 * machines with one. Sizes are bytes unless a name says otherwise.
 */
#include "gpu/gpuplan.h"

#include "engine/engine.h"

#include <string.h>

/* ---------------------------------------------------------- weight types */

/* The weight types with kernels of their own. Q4_0, Q4_1 and Q8_0 take q8
 * activations exactly as the CPU backend's packed kernels do, every other
 * type f32 activations as the CPU's generic path does, so the two backends
 * round alike. */
static const struct {
	uint32_t type;
	enum gpuplan_wkind kind;
} gpuplan_wtypes[] = {
	{ DT_F32, GPUPLAN_W_F32ACT },  { DT_F16, GPUPLAN_W_F32ACT },  { DT_BF16, GPUPLAN_W_F32ACT },
	{ DT_Q4_0, GPUPLAN_W_Q8ACT },  { DT_Q4_1, GPUPLAN_W_Q8ACT },  { DT_Q8_0, GPUPLAN_W_Q8ACT },
	{ DT_Q5_0, GPUPLAN_W_F32ACT }, { DT_Q5_1, GPUPLAN_W_F32ACT }, { DT_Q4_K, GPUPLAN_W_F32ACT },
	{ DT_Q5_K, GPUPLAN_W_F32ACT }, { DT_Q6_K, GPUPLAN_W_F32ACT },
};

enum gpuplan_wkind gpuplan_weight_kind(uint32_t type)
{
	for (size_t i = 0; i < KVS_ARRAY_LEN(gpuplan_wtypes); i++)
		if (gpuplan_wtypes[i].type == type)
			return gpuplan_wtypes[i].kind;
	const struct dtype_info *di = dtype_info(type);
	return di != NULL && di->weight_ok ? GPUPLAN_W_HOSTF32 : GPUPLAN_W_NONE;
}

uint32_t gpuplan_device_type(uint32_t type)
{
	return gpuplan_weight_kind(type) == GPUPLAN_W_HOSTF32 ? (uint32_t)DT_F32 : type;
}

uint64_t gpuplan_weight_bytes(uint32_t type, uint64_t rows, uint64_t cols)
{
	uint64_t row = 0, n = 0;
	if (gpuplan_weight_kind(type) == GPUPLAN_W_NONE)
		return 0;
	if (!dtype_row_bytes(gpuplan_device_type(type), cols, &row) || !ck_mul_u64(row, rows, &n))
		return 0;
	return n;
}

/* ---------------------------------------------------------------- model */

int gpuplan_check_model(const struct hparams *hp, struct err *e)
{
	if (hp->n_head_kv == 0 || hp->n_head % hp->n_head_kv != 0)
		return err_set(e, KVS_EUNSUPPORTED,
		               "heads %u:%u: the CUDA kernels need n_head a multiple of n_head_kv",
		               hp->n_head, hp->n_head_kv);
	uint32_t grp = hp->n_head / hp->n_head_kv;
	if (hp->head_dim == 0 || hp->head_dim % 32 != 0 || hp->head_dim > 256)
		return err_set(e, KVS_EUNSUPPORTED,
		               "head_dim %u: the CUDA kernels need a multiple of 32 up to 256",
		               hp->head_dim);
	if (hp->n_rot % 2 != 0 || hp->n_rot > hp->head_dim)
		return err_set(e, KVS_EUNSUPPORTED,
		               "n_rot %u: the CUDA kernels need an even n_rot <= head_dim %u", hp->n_rot,
		               hp->head_dim);
	if (grp > GPUPLAN_ATT_MAXG || (uint64_t)grp * hp->head_dim > GPUPLAN_ATT_MAXQ)
		return err_set(e, KVS_EUNSUPPORTED,
		               "%u query heads per KV head of %u dims: the CUDA attention handles at most "
		               "%u heads and %u floats per group",
		               grp, hp->head_dim, GPUPLAN_ATT_MAXG, GPUPLAN_ATT_MAXQ);
	if (hp->has_qk_norm)
		return err_set(e, KVS_EUNSUPPORTED,
		               "%s: the CUDA kernels have no per-head Q/K norm; use --backend cpu",
		               hp->arch);
	/* Gemma's and LongRoPE's features, each named: the kernels have none */
	const char *gemma = hp->n_swa > 0                       ? "sliding-window layers"
	        : hp->attn_softcap > 0 || hp->final_softcap > 0 ? "soft-capping"
	        : hp->ffn_act != FFN_SILU                       ? "GeGLU"
	        : hp->has_post_norm                             ? "post-norms"
	        : hp->embd_scale > 0 && hp->embd_scale != 1.0f  ? "embedding scaling"
	        : hp->rope_factors_long != NULL                 ? "LongRoPE factors"
	                                                        : NULL;
	if (gemma != NULL)
		return err_set(e, KVS_EUNSUPPORTED, "%s: the CUDA kernels have no %s; use --backend cpu",
		               hp->arch, gemma);
	if (hp->rope_factors != NULL || hp->rope_ext_factor != 0.0f ||
	    (hp->rope_attn_factor != 0.0f && hp->rope_attn_factor != 1.0f))
		return err_set(e, KVS_EUNSUPPORTED, "%s: the CUDA kernels have no %s; use --backend cpu",
		               hp->arch,
		               hp->rope_factors != NULL ? "per-frequency RoPE factors (rope_freqs)"
		                       : hp->rope_ext_factor != 0.0f ? "YaRN RoPE scaling"
		                                                     : "RoPE attention factor");
	if (hp->n_embd == 0 || hp->n_embd % 32 != 0 || hp->n_ff == 0 || hp->n_ff % 32 != 0)
		return err_set(e, KVS_EUNSUPPORTED,
		               "n_embd %u / n_ff %u: the CUDA kernels need multiples of 32", hp->n_embd,
		               hp->n_ff);
	return KVS_OK;
}

/* Add the device bytes of weight t (if it has data) to *w and its F16 copy to
 * *f16, tracking the largest F16 copy; false if t's type is unusable. */
static bool gpuplan_add_weight(const struct tensor *t, uint64_t *w, uint64_t *f16,
                               uint64_t *f16_max)
{
	if (t->data == NULL)
		return true;
	uint64_t rows = (uint64_t)t->ne[1], cols = (uint64_t)t->ne[0];
	uint64_t b = gpuplan_weight_bytes(t->type, rows, cols);
	if (b == 0)
		return false;
	*w += (b + 255) & ~(uint64_t)255;
	uint64_t h = rows * cols * 2;
	*f16 += (h + 255) & ~(uint64_t)255;
	*f16_max = KVS_MAX(*f16_max, h);
	return true;
}

/* Add an F32 vector's bytes (norms, biases) if it has data. */
static void gpuplan_add_vec(const struct tensor *t, uint64_t *w)
{
	if (t->data != NULL)
		*w += ((uint64_t)t->ne[0] * 4 + 255) & ~(uint64_t)255;
}

int gpuplan_make(struct gpuplan *p, const struct model *m, uint32_t n_ctx, uint64_t mem_free,
                 struct err *e)
{
	const struct hparams *hp = &m->hp;
	memset(p, 0, sizeof(*p));
	int rc = gpuplan_check_model(hp, e);
	if (rc != KVS_OK)
		return rc;
	uint64_t ne = hp->n_embd, nff = hp->n_ff, hd = hp->head_dim;
	uint64_t nq = (uint64_t)hp->n_head * hd, nkv = (uint64_t)hp->n_head_kv * hd;
	uint64_t u = GPUPLAN_UBATCH, ctx = n_ctx, nl = hp->n_layer;
	p->n_ctx = n_ctx;
	p->ubatch = GPUPLAN_UBATCH;
	p->part_rows = KVS_MAX((uint32_t)GPUPLAN_UBATCH, (uint32_t)GPUPLAN_MAX_SPLITS);
	p->kmax = (uint32_t)KVS_MAX(KVS_MAX(ne, nff), nq);

	const struct tensor *bad = NULL;
	for (uint32_t l = 0; l < hp->n_layer && bad == NULL; l++) {
		const struct layer_weights *lw = &m->layers[l];
		const struct tensor *mats[] = { &lw->wq,     &lw->wk,   &lw->wv,    &lw->wo,
			                            &lw->w_gate, &lw->w_up, &lw->w_down };
		for (size_t i = 0; i < KVS_ARRAY_LEN(mats) && bad == NULL; i++)
			if (!gpuplan_add_weight(mats[i], &p->weights, &p->f16_all, &p->f16_max))
				bad = mats[i];
		const struct tensor *vecs[] = { &lw->attn_norm, &lw->ffn_norm, &lw->bq, &lw->bk, &lw->bv };
		for (size_t i = 0; i < KVS_ARRAY_LEN(vecs); i++)
			gpuplan_add_vec(vecs[i], &p->weights);
	}
	/* the LM head: the embedding table itself when tied */
	const struct tensor *out = m->output.data ? &m->output : &m->tok_embd;
	if (bad == NULL && !gpuplan_add_weight(out, &p->weights, &p->f16_all, &p->f16_max))
		bad = out;
	if (bad == NULL && m->tok_embd.data != out->data) {
		uint64_t ignore = 0, ignore_max = 0;
		if (!gpuplan_add_weight(&m->tok_embd, &p->weights, &ignore, &ignore_max))
			bad = &m->tok_embd;
	}
	if (bad != NULL)
		return err_set(e, KVS_EUNSUPPORTED, "tensor %s: type %s has no CUDA kernel",
		               bad->name ? bad->name : "?", dtype_name(bad->type));
	gpuplan_add_vec(&m->out_norm, &p->weights);

	p->kv = 2 * nl * ctx * nkv * 2;
	p->kv_tmp = 2 * ctx * nkv * 2;
	p->rope = ctx * (uint64_t)KVS_MAX(hp->n_rot, 2u) * 4 + ctx * 4;
	p->vis = ctx * 8;
	/* x, xb, q, ao, g (f32); xh, aoh, gh (f16); one q8 row; step, targets,
	 * surprisal and entropy */
	p->act = u * (2 * ne + 2 * nq + nff) * 4 + u * (p->kmax + nq + nff) * 2 +
	        (p->kmax + 3 * (p->kmax / 32) * 4) + (4 + 3 * u) * 4 + u * 12;
	/* partials; raw scores and the last query's max and sum per layer;
	 * every query's max and sum; sums per KV head */
	p->attn = (uint64_t)p->part_rows * hp->n_head * (hd + 2) * 4 + nl * hp->n_head * ctx * 4 +
	        nl * hp->n_head * 2 * 4 + u * hp->n_head * 2 * 4 + nl * hp->n_head_kv * ctx * 4;
	p->logits = u * hp->n_vocab * 4;

	uint64_t base =
	        p->weights + p->kv + p->kv_tmp + p->rope + p->vis + p->act + p->attn + p->logits;
	/* Resident F16 copies save a dequantisation per matrix per prefill step;
	 * keep them when they take at most a quarter of what is left. */
	uint64_t left = mem_free > base ? mem_free - base : 0;
	p->f16_resident = p->f16_all <= left / 4;
	p->f16 = p->f16_resident ? p->f16_all : p->f16_max;
	p->total = base + p->f16;
	/* leave headroom for the CUDA context's own allocations and graphs */
	uint64_t headroom = 256ull << 20;
	if (p->total + headroom > mem_free)
		return err_set(e, KVS_EUNSUPPORTED,
		               "needs %llu MiB of GPU memory (weights %llu, KV cache %llu for %u slots, "
		               "work %llu), %llu MiB free",
		               (unsigned long long)((p->total + headroom) >> 20),
		               (unsigned long long)(p->weights >> 20), (unsigned long long)(p->kv >> 20),
		               n_ctx, (unsigned long long)((p->total - p->weights - p->kv) >> 20),
		               (unsigned long long)(mem_free >> 20));
	return KVS_OK;
}

/* Largest power of two <= x (x >= 1). */
static uint32_t gpuplan_pow2_floor(uint32_t x)
{
	uint32_t r = 1;
	while (r <= x / 2)
		r *= 2;
	return r;
}

uint32_t gpuplan_attn_splits(uint32_t n_vis, uint32_t n_kv, uint32_t n_query, uint32_t n_sm,
                             uint32_t part_rows)
{
	if (n_kv == 0 || n_query == 0)
		return 1;
	/* two blocks per multiprocessor */
	uint64_t want =
	        ((uint64_t)2 * n_sm + (uint64_t)n_kv * n_query - 1) / ((uint64_t)n_kv * n_query);
	uint64_t by_size = ((uint64_t)n_vis + GPUPLAN_MIN_SPLIT_KEYS - 1) / GPUPLAN_MIN_SPLIT_KEYS;
	uint64_t s = KVS_MIN(want, by_size);
	s = KVS_MIN(s, (uint64_t)GPUPLAN_MAX_SPLITS);
	s = KVS_MIN(s, (uint64_t)(part_rows / n_query));
	return gpuplan_pow2_floor((uint32_t)KVS_MAX(s, (uint64_t)1));
}

/* ---------------------------------------------------------------- graphs */

uint64_t gpugraph_key(uint32_t splits, int logits_mode, unsigned flags)
{
	return (uint64_t)splits << 8 | (uint64_t)(logits_mode & 0xf) << 4 | (flags & 0xf);
}

uint64_t gpugraph_key_sparse(uint64_t key, unsigned mode, bool search, bool report,
                             uint32_t ssplits, uint32_t dense_layers)
{
	/* gpugraph_key fills bits 0-15 (splits <= GPUPLAN_MAX_SPLITS) */
	return key | (uint64_t)(ssplits & 0xff) << 16 | (uint64_t)(mode & 3) << 24 |
	        (uint64_t)search << 26 | (uint64_t)report << 27 |
	        (uint64_t)(dense_layers & 0xffff) << 28;
}

void gpugraph_init(struct gpugraph_cache *gc)
{
	memset(gc, 0, sizeof(*gc));
}

void *gpugraph_find(struct gpugraph_cache *gc, uint64_t key)
{
	for (int i = 0; i < GPUGRAPH_SLOTS; i++)
		if (gc->e[i].exec != NULL && gc->e[i].key == key) {
			gc->e[i].used = ++gc->clock;
			gc->hits++;
			return gc->e[i].exec;
		}
	return NULL;
}

void *gpugraph_insert(struct gpugraph_cache *gc, uint64_t key, void *exec)
{
	int at = 0;
	for (int i = 0; i < GPUGRAPH_SLOTS; i++) {
		if (gc->e[i].exec == NULL) {
			at = i;
			break;
		}
		if (gc->e[i].used < gc->e[at].used)
			at = i;
	}
	void *old = gc->e[at].exec;
	gc->e[at].key = key;
	gc->e[at].exec = exec;
	gc->e[at].used = ++gc->clock;
	gc->captures++;
	return old;
}

void gpugraph_clear(struct gpugraph_cache *gc, void (*destroy)(void *arg, void *exec), void *arg)
{
	for (int i = 0; i < GPUGRAPH_SLOTS; i++) {
		if (gc->e[i].exec != NULL && destroy != NULL)
			destroy(arg, gc->e[i].exec);
		gc->e[i].exec = NULL;
	}
}

/* ------------------------------------------------------- uploads, moves */

void gpuplan_diff_range(const uint32_t *a, const uint32_t *b, uint32_t n, uint32_t *lo,
                        uint32_t *hi)
{
	uint32_t l = 0, h = n;
	while (l < n && a[l] == b[l])
		l++;
	while (h > l && a[h - 1] == b[h - 1])
		h--;
	*lo = l;
	*hi = h;
}

uint32_t gpuplan_kv_moves(const uint32_t *dst, const uint32_t *src, uint32_t n, int64_t *origin,
                          uint32_t *out_dst, uint32_t *out_src, bool *overlap)
{
	/* origin[s] >= 0: slot s was written and now holds the original
	 * contents of slot origin[s] */
	uint32_t nw = 0;
	for (uint32_t i = 0; i < n; i++) {
		int64_t o = origin[src[i]] >= 0 ? origin[src[i]] : (int64_t)src[i];
		if (origin[dst[i]] < 0)
			out_dst[nw++] = dst[i];
		origin[dst[i]] = o;
	}
	uint32_t k = 0;
	for (uint32_t i = 0; i < nw; i++) {
		uint32_t d = out_dst[i], s = (uint32_t)origin[d];
		origin[d] = -1;
		if (s != d) {
			out_dst[k] = d;
			out_src[k++] = s;
		}
	}
	/* a move reads a slot another move writes? mark the written ones */
	bool ov = false;
	for (uint32_t i = 0; i < k; i++)
		origin[out_dst[i]] = 0;
	for (uint32_t i = 0; i < k; i++)
		ov = ov || origin[out_src[i]] == 0;
	for (uint32_t i = 0; i < k; i++)
		origin[out_dst[i]] = -1;
	*overlap = ov;
	return k;
}

/* ------------------------------------------------------------ launches */

uint32_t gpuplan_launches(const struct gpuplan_step_shape *s)
{
	bool sp = s->sparse == ENGINE_SPARSE_QUEST || s->sparse == ENGINE_SPARSE_HIP;
	bool search = s->sparse == ENGINE_SPARSE_QUEST || (sp && s->search);
	uint32_t attend = s->fuse ? 1 : 2; /* attention (+ merge) */
	/* angles, embedding, first norm; bounds; memset; LM head; normalisation */
	uint32_t n = 3 + (search ? 1 : 0) + s->attn_kv + s->lm + s->attn;
	for (uint32_t l = 0; l < s->n_layer; l++) {
		n += 1 + attend + s->attn_kv; /* q/k/v, attention, per-KV-head sums */
		if (sp && l >= s->dense_layers) {
			uint32_t choose = s->sparse == ENGINE_SPARSE_QUEST ? 2 : search ? 3 : 1;
			n += choose + (s->attn ? attend : 0);
		}
		n += s->fuse ? 1 : 2; /* output product (+ norm) */
		n += 1;               /* gate/up */
		bool next = l + 1 < s->n_layer || s->lm;
		n += s->fuse || !next ? 1 : 2; /* down (+ the next norm) */
	}
	return n;
}
