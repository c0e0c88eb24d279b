/*
 * test-engine.c: the engine's forward pass against an independent float64
 * reference written here.
 *
 * Random-weight models (2 layers, small vocab) are built in memory, llama
 * (adjacent-pair RoPE, GQA 3) and qwen2 (rotate-half RoPE, q/k/v biases, no
 * GQA), with F32 weights or weights quantised by the model layer's
 * reference quantisers. The reference keeps its own KV cache as a list of
 * (pre-RoPE key, value, position) entries per layer and does every step in
 * double with angles from pow(); compaction is modelled by editing that list.
 * Each check prints the max |difference| it saw when it fails.
 */
#include "engine/engine.h"
#include "engine/kern.h"

#include "test.h"
#include "tests/util/ggufw.h"
#include "tests/util/tinymodel.h"

#include <stdint.h>

/* ------------------------------------------------------------ random model */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

/* Uniform in [-1, 1). */
static double rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (double)(rng_state >> 11) / (double)(1ull << 52) - 1.0;
}

struct tmodel {
	struct model m;
	void *blobs[64];
	int n_blobs;
};

/* Little-endian f16 at p as a float. */
static float rd16(const uint8_t *p)
{
	return dtype_f16_to_f32((uint16_t)(p[0] | p[1] << 8));
}

/* Rows of K weights of a type in orig (rb bytes each): the reference
 * quantisers of f where there are some, else random quants and scale fields
 * that keep the weights within about +-scale (k-quant scales and mins, the
 * 5-bit types' high bits and Q6_K's signed scales all random). */
static void fill_rows(uint32_t type, const float *f, int64_t rows, int64_t K, uint8_t *orig,
                      uint64_t rb, double scale)
{
	for (int64_t r = 0; r < rows; r++) {
		uint8_t *o = orig + r * rb;
		switch (type) {
		case DT_Q4_0: dtype_quant_q4_0(f + r * K, o, K); continue;
		case DT_Q4_1: dtype_quant_q4_1(f + r * K, o, K); continue;
		case DT_Q8_0: dtype_quant_q8_0(f + r * K, o, K); continue;
		default: break;
		}
		uint64_t state = (uint64_t)(rnd() * 4e18) | 1;
		tinymodel_random_blocks(type, o, rb, (float)scale, &state);
	}
}

/* A tensor of (rows, cols) random values times scale (plus bias), in type. */
static struct tensor tm_tensor(struct tmodel *tm, uint32_t type, int64_t cols, int64_t rows,
                               double scale, double bias)
{
	float *f = malloc((size_t)(cols * rows) * sizeof(float));
	for (int64_t i = 0; i < cols * rows; i++)
		f[i] = (float)(bias + scale * rnd());
	struct tensor t = { 0 };
	t.type = type;
	t.ne[0] = cols;
	t.ne[1] = rows;
	t.ne[2] = t.ne[3] = 1;
	t.name = "test";
	uint64_t rb = 0;
	dtype_row_bytes(type, (uint64_t)cols, &rb);
	t.nbytes = rb * (uint64_t)rows;
	uint8_t *data = malloc(t.nbytes);
	if (type == DT_F32 || type == DT_F16 || type == DT_BF16) {
		for (int64_t i = 0; i < cols * rows; i++) {
			if (type == DT_F32)
				memcpy(data + 4 * i, &f[i], 4);
			else {
				uint16_t h = type == DT_F16 ? dtype_f32_to_f16(f[i]) : dtype_f32_to_bf16(f[i]);
				memcpy(data + 2 * i, &h, 2);
			}
		}
	} else {
		/* random k-quant blocks center on 0: a bias needs a real quantiser */
		if (bias != 0 && type != DT_Q8_0 && type != DT_Q4_0 && type != DT_Q4_1)
			abort();
		fill_rows(type, f, rows, cols, data, rb, scale);
	}
	free(f);
	t.data = data;
	tm->blobs[tm->n_blobs++] = data;
	return t;
}

struct tspec {
	const char *arch;
	uint32_t n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab;
	float rope_base;
	enum rope_kind rope;
	bool bias;
	uint32_t wtype; /* matrices */
	uint32_t etype; /* embedding (tied output) */
};

static struct tmodel *tm_build(const struct tspec *sp, uint64_t seed)
{
	rng_state = seed;
	struct tmodel *tm = calloc(1, sizeof(*tm));
	struct hparams *hp = &tm->m.hp;
	snprintf(hp->arch, sizeof(hp->arch), "%s", sp->arch);
	hp->n_layer = 2;
	hp->n_ctx_train = 2048;
	hp->n_embd = sp->n_embd;
	hp->n_ff = sp->n_ff;
	hp->n_head = sp->n_head;
	hp->n_head_kv = sp->n_head_kv;
	hp->head_dim = sp->head_dim;
	hp->n_rot = sp->head_dim;
	hp->n_vocab = sp->n_vocab;
	hp->rms_eps = 1e-5f;
	hp->rope_base = sp->rope_base;
	hp->rope_freq_scale = 1.0f;
	hp->rope = sp->rope;
	hp->attn_scale = 1.0f / sqrtf((float)sp->head_dim);
	hp->has_qkv_bias = sp->bias;
	hp->tied_output = true;
	uint32_t E = sp->n_embd, nq = sp->n_head * sp->head_dim, nkv = sp->n_head_kv * sp->head_dim;
	double se = 1.0 / sqrt(E), sq = 1.0 / sqrt(nq), sf = 1.0 / sqrt(sp->n_ff);
	tm->m.layers = calloc(2, sizeof(struct layer_weights));
	tm->m.tok_embd = tm_tensor(tm, sp->etype, E, sp->n_vocab, 1.0, 0);
	tm->m.out_norm = tm_tensor(tm, DT_F32, E, 1, 0.2, 1.0);
	tm->m.output = tm->m.tok_embd;
	for (int l = 0; l < 2; l++) {
		struct layer_weights *L = &tm->m.layers[l];
		L->attn_norm = tm_tensor(tm, DT_F32, E, 1, 0.2, 1.0);
		L->wq = tm_tensor(tm, sp->wtype, E, nq, 2.0 * se, 0);
		L->wk = tm_tensor(tm, sp->wtype, E, nkv, 2.0 * se, 0);
		L->wv = tm_tensor(tm, sp->wtype, E, nkv, 1.5 * se, 0);
		if (sp->bias) {
			L->bq = tm_tensor(tm, DT_F32, nq, 1, 0.3, 0);
			L->bk = tm_tensor(tm, DT_F32, nkv, 1, 0.3, 0);
			L->bv = tm_tensor(tm, DT_F32, nkv, 1, 0.3, 0);
		}
		L->wo = tm_tensor(tm, sp->wtype, nq, E, 1.5 * sq, 0);
		L->ffn_norm = tm_tensor(tm, DT_F32, E, 1, 0.2, 1.0);
		L->w_gate = tm_tensor(tm, sp->wtype, E, sp->n_ff, 2.0 * se, 0);
		L->w_up = tm_tensor(tm, sp->wtype, E, sp->n_ff, 2.0 * se, 0);
		L->w_down = tm_tensor(tm, sp->wtype, sp->n_ff, E, 1.5 * sf, 0);
	}
	return tm;
}

static void tm_free(struct tmodel *tm)
{
	for (int i = 0; i < tm->n_blobs; i++)
		free(tm->blobs[i]);
	free(tm->m.layers);
	free(tm);
}

/* -------------------------------------------------------- f64 reference */

/* A tensor as doubles (rows, cols). */
static double *ref_mat(const struct tensor *t)
{
	int64_t n = t->ne[0] * t->ne[1];
	float *f = malloc((size_t)n * sizeof(float));
	T_CHECK(dtype_dequant(t->type, t->data, f, n), "dequant of type %u", t->type);
	double *d = malloc((size_t)n * sizeof(double));
	for (int64_t i = 0; i < n; i++)
		d[i] = f[i];
	free(f);
	return d;
}

struct rlayer {
	double *an, *wq, *wk, *wv, *bq, *bk, *bv, *wo, *fn, *wg, *wu, *wd;
};

struct rmodel {
	struct hparams hp;
	double *embd, *onorm;
	struct rlayer L[2];
};

#define RMAX 1024 /* reference cache entries */

/* The reference's KV cache: entries with pre-RoPE keys and positions. */
struct rcache {
	int n;
	int pos[RMAX];
	double *k[2][RMAX]; /* (n_head_kv * head_dim) pre-RoPE */
	double *v[2][RMAX];
};

static struct rmodel *ref_build(const struct model *m)
{
	struct rmodel *r = calloc(1, sizeof(*r));
	r->hp = m->hp;
	r->embd = ref_mat(&m->tok_embd);
	r->onorm = ref_mat(&m->out_norm);
	for (int l = 0; l < 2; l++) {
		const struct layer_weights *L = &m->layers[l];
		struct rlayer *R = &r->L[l];
		R->an = ref_mat(&L->attn_norm);
		R->wq = ref_mat(&L->wq);
		R->wk = ref_mat(&L->wk);
		R->wv = ref_mat(&L->wv);
		R->bq = L->bq.data ? ref_mat(&L->bq) : NULL;
		R->bk = L->bk.data ? ref_mat(&L->bk) : NULL;
		R->bv = L->bv.data ? ref_mat(&L->bv) : NULL;
		R->wo = ref_mat(&L->wo);
		R->fn = ref_mat(&L->ffn_norm);
		R->wg = ref_mat(&L->w_gate);
		R->wu = ref_mat(&L->w_up);
		R->wd = ref_mat(&L->w_down);
	}
	return r;
}

static void ref_free(struct rmodel *r)
{
	free(r->embd);
	free(r->onorm);
	for (int l = 0; l < 2; l++) {
		struct rlayer *R = &r->L[l];
		double *all[] = { R->an, R->wq, R->wk, R->wv, R->bq, R->bk,
			              R->bv, R->wo, R->fn, R->wg, R->wu, R->wd };
		for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
			free(all[i]);
	}
	free(r);
}

static void rc_clear(struct rcache *c)
{
	for (int i = 0; i < c->n; i++)
		for (int l = 0; l < 2; l++) {
			free(c->k[l][i]);
			free(c->v[l][i]);
		}
	c->n = 0;
}

/* Drop entry i, shifting the later ones down. */
static void rc_drop(struct rcache *c, int i)
{
	for (int l = 0; l < 2; l++) {
		free(c->k[l][i]);
		free(c->v[l][i]);
	}
	for (int j = i; j + 1 < c->n; j++) {
		c->pos[j] = c->pos[j + 1];
		for (int l = 0; l < 2; l++) {
			c->k[l][j] = c->k[l][j + 1];
			c->v[l][j] = c->v[l][j + 1];
		}
	}
	c->n--;
}

static void ref_rmsnorm(const double *x, const double *w, double *out, int n, double eps)
{
	double ss = 0;
	for (int i = 0; i < n; i++)
		ss += x[i] * x[i];
	double s = 1.0 / sqrt(ss / n + eps);
	for (int i = 0; i < n; i++)
		out[i] = x[i] * s * w[i];
}

/* y (rows) = W (rows, cols) x (+ b) */
static void ref_matvec(const double *W, const double *b, const double *x, double *y, int rows,
                       int cols)
{
	for (int r = 0; r < rows; r++) {
		double s = b ? b[r] : 0;
		for (int k = 0; k < cols; k++)
			s += W[(size_t)r * cols + k] * x[k];
		y[r] = s;
	}
}

/* Rotate one head vector to position pos (pow()-based angles). */
static void ref_rope(const struct hparams *hp, double *x, int pos)
{
	int half = (int)hp->n_rot / 2;
	for (int i = 0; i < half; i++) {
		double th = pos * pow((double)hp->rope_base, -2.0 * i / hp->n_rot);
		double c = cos(th), s = sin(th);
		int a = hp->rope == ROPE_NEOX ? i : 2 * i;
		int b = hp->rope == ROPE_NEOX ? i + half : 2 * i + 1;
		double x0 = x[a], x1 = x[b];
		x[a] = x0 * c - x1 * s;
		x[b] = x0 * s + x1 * c;
	}
}

/*
 * One token at pos: append its (pre-RoPE k, v, pos) to the cache, attend over
 * every entry with position <= pos, write the logits (n_vocab) and, when
 * attn is given, the probabilities (n_layer, n_head, cache entries).
 */
static void ref_step(const struct rmodel *r, struct rcache *c, int token, int pos, double *logits,
                     double *attn)
{
	const struct hparams *hp = &r->hp;
	int E = hp->n_embd, hd = hp->head_dim, H = hp->n_head, KV = hp->n_head_kv, F = hp->n_ff;
	int nq = H * hd, nkv = KV * hd;
	double *x = malloc(E * sizeof(double)), *xb = malloc(E * sizeof(double));
	double *q = malloc(nq * sizeof(double)), *o = malloc(nq * sizeof(double));
	double *t = malloc((size_t)KVS_MAX(E, F) * sizeof(double));
	double *g = malloc(F * sizeof(double)), *u = malloc(F * sizeof(double));
	double *sc = malloc(RMAX * sizeof(double)), *kr = malloc(hd * sizeof(double));
	memcpy(x, r->embd + (size_t)token * E, E * sizeof(double));
	int me = c->n++;
	c->pos[me] = pos;
	for (int l = 0; l < 2; l++) {
		const struct rlayer *R = &r->L[l];
		ref_rmsnorm(x, R->an, xb, E, hp->rms_eps);
		ref_matvec(R->wq, R->bq, xb, q, nq, E);
		c->k[l][me] = malloc(nkv * sizeof(double));
		c->v[l][me] = malloc(nkv * sizeof(double));
		ref_matvec(R->wk, R->bk, xb, c->k[l][me], nkv, E);
		ref_matvec(R->wv, R->bv, xb, c->v[l][me], nkv, E);
		for (int h = 0; h < H; h++) {
			double *qh = q + h * hd;
			int kvh = h / (H / KV);
			ref_rope(hp, qh, pos);
			double mx = -INFINITY;
			for (int j = 0; j < c->n; j++) {
				sc[j] = -INFINITY;
				if (c->pos[j] > pos)
					continue;
				memcpy(kr, c->k[l][j] + kvh * hd, hd * sizeof(double));
				ref_rope(hp, kr, c->pos[j]);
				double s = 0;
				for (int d = 0; d < hd; d++)
					s += qh[d] * kr[d];
				sc[j] = s / sqrt((double)hd);
				mx = fmax(mx, sc[j]);
			}
			double z = 0;
			for (int j = 0; j < c->n; j++) {
				sc[j] = sc[j] == -INFINITY ? 0 : exp(sc[j] - mx);
				z += sc[j];
			}
			for (int d = 0; d < hd; d++)
				o[h * hd + d] = 0;
			for (int j = 0; j < c->n; j++) {
				double p = sc[j] / z;
				if (attn)
					attn[((size_t)l * H + h) * c->n + j] = p;
				for (int d = 0; d < hd; d++)
					o[h * hd + d] += p * c->v[l][j][kvh * hd + d];
			}
		}
		ref_matvec(R->wo, NULL, o, t, E, nq);
		for (int i = 0; i < E; i++)
			x[i] += t[i];
		ref_rmsnorm(x, R->fn, xb, E, hp->rms_eps);
		ref_matvec(R->wg, NULL, xb, g, F, E);
		ref_matvec(R->wu, NULL, xb, u, F, E);
		for (int i = 0; i < F; i++)
			g[i] = g[i] / (1 + exp(-g[i])) * u[i];
		ref_matvec(R->wd, NULL, g, t, E, F);
		for (int i = 0; i < E; i++)
			x[i] += t[i];
	}
	ref_rmsnorm(x, r->onorm, xb, E, hp->rms_eps);
	ref_matvec(r->embd, NULL, xb, logits, hp->n_vocab, E);
	free(x);
	free(xb);
	free(q);
	free(o);
	free(t);
	free(g);
	free(u);
	free(sc);
	free(kr);
}

/* ------------------------------------------------------------ helpers */

static struct engine *mk_engine(const struct model *m, bool ref, enum engine_isa isa,
                                enum engine_kv_type kv, int threads, uint32_t n_ctx)
{
	struct engine_config cfg;
	engine_config_default(&cfg);
	cfg.backend = ENGINE_BACKEND_CPU;
	cfg.reference = ref;
	cfg.isa = isa;
	cfg.kv_type = kv;
	cfg.n_threads = threads;
	cfg.n_ctx = n_ctx;
	struct engine *eng = NULL;
	struct err e;
	err_clear(&e);
	int rc = engine_create(&eng, m, &cfg, &e);
	T_CHECK(rc == KVS_OK, "engine_create: %s", e.msg);
	return eng;
}

/* max |a - b| over n, and the largest |b| (for relative tolerances). */
static double maxdiff(const float *a, const double *b, size_t n, double *bmax)
{
	double md = 0, bm = 0;
	for (size_t i = 0; i < n; i++) {
		md = fmax(md, fabs((double)a[i] - b[i]));
		bm = fmax(bm, fabs(b[i]));
	}
	if (bmax)
		*bmax = bm;
	return md;
}

#define SEQ 13

static const int32_t seq_tokens[SEQ] = { 5, 17, 3, 60, 41, 41, 9, 0, 77, 23, 50, 2, 88 };

/* Reference logits (SEQ, n_vocab) for seq_tokens at positions p0 + i. */
static double *ref_run(const struct rmodel *r, int p0)
{
	struct rcache *c = calloc(1, sizeof(*c));
	double *lg = malloc((size_t)SEQ * r->hp.n_vocab * sizeof(double));
	for (int i = 0; i < SEQ; i++)
		ref_step(r, c, seq_tokens[i], p0 + i, lg + (size_t)i * r->hp.n_vocab, NULL);
	rc_clear(c);
	free(c);
	return lg;
}

/* Prefill seq_tokens in one batch (slots = positions = i) with all logits. */
static int run_prefill(struct engine *eng, struct engine_out *out, bool attn, bool surprisal)
{
	int32_t pos[SEQ];
	uint32_t slot[SEQ];
	for (int i = 0; i < SEQ; i++) {
		pos[i] = i;
		slot[i] = (uint32_t)i;
	}
	struct engine_batch b = { .n_tokens = SEQ,
		                      .tokens = seq_tokens,
		                      .pos = pos,
		                      .slot = slot,
		                      .n_visible = SEQ,
		                      .visible = NULL,
		                      .logits = ENGINE_LOGITS_ALL,
		                      .want_attn = attn,
		                      .want_surprisal = surprisal };
	struct err e;
	err_clear(&e);
	int rc = engine_forward(eng, &b, out, &e);
	T_CHECK(rc == KVS_OK, "engine_forward: %s", e.msg);
	return rc;
}

/* ---------------------------------------------------------------- tests */

static const struct tspec spec_llama_f32 = { "llama", 96,       6,         2,     16,     160,
	                                         128,     10000.0f, ROPE_NORM, false, DT_F32, DT_F32 };
static const struct tspec spec_qwen_f32 = { "qwen2", 128,        4,         4,    32,     256,
	                                        100,     1000000.0f, ROPE_NEOX, true, DT_F32, DT_F32 };
static const struct tspec spec_llama_q41 = {
	"llama", 96, 6, 2, 16, 160, 128, 10000.0f, ROPE_NORM, false, DT_Q4_1, DT_Q8_0
};
static const struct tspec spec_llama_q40 = {
	"llama", 128, 6, 2, 16, 192, 100, 10000.0f, ROPE_NORM, false, DT_Q4_0, DT_Q8_0
};
static const struct tspec spec_qwen_q80 = {
	"qwen2", 128, 4, 4, 32, 256, 100, 1000000.0f, ROPE_NEOX, true, DT_Q8_0, DT_Q4_1
};

/* Every other packed type and the 16-bit floats (k-quants need rows of 256). */
static const struct tspec spec_llama_q4k = {
	"llama", 256, 4, 2, 64, 512, 128, 10000.0f, ROPE_NORM, false, DT_Q4_K, DT_Q6_K
};
static const struct tspec spec_llama_q5k = {
	"llama", 256, 4, 2, 64, 512, 128, 10000.0f, ROPE_NORM, false, DT_Q5_K, DT_Q5_0
};
static const struct tspec spec_qwen_q51 = { "qwen2", 128,        4,         4,    32,      256,
	                                        100,     1000000.0f, ROPE_NEOX, true, DT_Q5_1, DT_F16 };
static const struct tspec spec_llama_bf16 = {
	"llama", 96, 6, 2, 16, 160, 128, 10000.0f, ROPE_NORM, false, DT_BF16, DT_F16
};

/* Logits of a prefill against the reference, for one engine setting. */
static void check_logits(const char *what, const struct tspec *sp, bool ref, enum engine_isa isa,
                         enum engine_kv_type kv, int threads, double tol_rel)
{
	struct tmodel *tm = tm_build(sp, 42);
	struct rmodel *rm = ref_build(&tm->m);
	double *want = ref_run(rm, 0);
	struct engine *eng = mk_engine(&tm->m, ref, isa, kv, threads, 64);
	if (eng) {
		struct engine_out out;
		if (run_prefill(eng, &out, false, false) == KVS_OK) {
			double bmax;
			double md = maxdiff(out.logits, want, (size_t)SEQ * sp->n_vocab, &bmax);
			printf("  %-44s %-11s max|d| %.3g (max|logit| %.3g)\n", what, engine_isa_name(eng), md,
			       bmax);
			T_CHECK(md <= tol_rel * bmax, "%s: max |logit diff| %.3g > %.3g", what, md,
			        tol_rel * bmax);
		}
		engine_free(eng);
	}
	free(want);
	ref_free(rm);
	tm_free(tm);
}

static void test_logits(void)
{
	/* f32 weights, f32 cache, reference path: only float rounding differs */
	check_logits("llama f32 ref f32-kv", &spec_llama_f32, true, ENGINE_ISA_AUTO, ENGINE_KV_F32, 1,
	             2e-5);
	check_logits("qwen2 f32 ref f32-kv", &spec_qwen_f32, true, ENGINE_ISA_AUTO, ENGINE_KV_F32, 2,
	             2e-5);
	/* fast path on f32 weights (generic kernels) */
	check_logits("llama f32 fast f32-kv", &spec_llama_f32, false, ENGINE_ISA_AUTO, ENGINE_KV_F32, 2,
	             2e-5);
	check_logits("qwen2 f32 fast f16-kv", &spec_qwen_f32, false, ENGINE_ISA_AUTO, ENGINE_KV_F16, 3,
	             3e-3);
	/* quantised weights, reference path: the same dequantised weights */
	check_logits("llama q4_1/q8_0 ref f32-kv", &spec_llama_q41, true, ENGINE_ISA_AUTO,
	             ENGINE_KV_F32, 2, 2e-5);
	check_logits("qwen2 q8_0/q4_1 ref f32-kv", &spec_qwen_q80, true, ENGINE_ISA_AUTO, ENGINE_KV_F32,
	             2, 2e-5);
	check_logits("llama q4_0/q8_0 ref f32-kv", &spec_llama_q40, true, ENGINE_ISA_AUTO,
	             ENGINE_KV_F32, 2, 2e-5);
	/* int8 activations at every kernel level */
	static const enum engine_isa isas[] = { ENGINE_ISA_SCALAR, ENGINE_ISA_AVX2, ENGINE_ISA_AVX512 };
	for (size_t i = 0; i < sizeof(isas) / sizeof(isas[0]); i++) {
		check_logits("llama q4_1/q8_0 int8 f16-kv", &spec_llama_q41, false, isas[i], ENGINE_KV_F16,
		             2, 2e-2);
		check_logits("llama q4_0/q8_0 int8 f16-kv", &spec_llama_q40, false, isas[i], ENGINE_KV_F16,
		             3, 2e-2);
		check_logits("qwen2 q8_0/q4_1 int8 f32-kv", &spec_qwen_q80, false, isas[i], ENGINE_KV_F32,
		             1, 2e-2);
		check_logits("llama q4_k/q6_k int8 f16-kv", &spec_llama_q4k, false, isas[i], ENGINE_KV_F16,
		             2, 2e-2);
		check_logits("llama q5_k/q5_0 int8 f32-kv", &spec_llama_q5k, false, isas[i], ENGINE_KV_F32,
		             3, 2e-2);
		check_logits("qwen2 q5_1/f16 int8 f16-kv", &spec_qwen_q51, false, isas[i], ENGINE_KV_F16, 2,
		             2e-2);
		check_logits("llama bf16/f16 fast f32-kv", &spec_llama_bf16, false, isas[i], ENGINE_KV_F32,
		             2, 2e-5);
	}
	/* the reference path reads the same weights */
	check_logits("llama q4_k/q6_k ref f32-kv", &spec_llama_q4k, true, ENGINE_ISA_AUTO,
	             ENGINE_KV_F32, 2, 2e-5);
}

/* Token-by-token decode equals the one-batch prefill. */
static void test_decode_vs_prefill(const struct tspec *sp, bool ref)
{
	struct tmodel *tm = tm_build(sp, 7);
	/* the decoder runs one-token batches on 3 threads (its own code path) */
	struct engine *a = mk_engine(&tm->m, ref, ENGINE_ISA_AUTO, ENGINE_KV_F32, 1, 64);
	struct engine *b = mk_engine(&tm->m, ref, ENGINE_ISA_AUTO, ENGINE_KV_F32, 3, 64);
	struct engine_out pa, pb;
	struct err e;
	if (a && b && run_prefill(a, &pa, false, false) == KVS_OK) {
		double md = 0;
		for (int i = 0; i < SEQ; i++) {
			int32_t pos = i;
			uint32_t slot = (uint32_t)i;
			struct engine_batch bt = { .n_tokens = 1,
				                       .tokens = &seq_tokens[i],
				                       .pos = &pos,
				                       .slot = &slot,
				                       .n_visible = (uint32_t)i + 1 };
			err_clear(&e);
			if (engine_forward(b, &bt, &pb, &e) != KVS_OK) {
				T_CHECK(0, "decode step %d: %s", i, e.msg);
				break;
			}
			for (uint32_t v = 0; v < sp->n_vocab; v++)
				md = fmax(md, fabs(pb.logits[v] - pa.logits[(size_t)i * sp->n_vocab + v]));
		}
		printf("  decode vs prefill (%s, %s): max|d| %.3g\n", sp->arch, ref ? "ref" : "fast", md);
		T_CHECK(md <= 1e-4, "decode vs prefill max |d| %.3g", md);
	}
	engine_free(a);
	engine_free(b);
	tm_free(tm);
}

/* Attention probabilities of the last token sum to 1 and match the reference;
 * surprisal and entropy match the reference logits. */
static void test_attn_and_stats(void)
{
	const struct tspec *sp = &spec_llama_f32;
	struct tmodel *tm = tm_build(sp, 11);
	struct rmodel *rm = ref_build(&tm->m);
	struct rcache *rc = calloc(1, sizeof(*rc));
	uint32_t H = sp->n_head, V = sp->n_vocab;
	double *lg = malloc((size_t)SEQ * V * sizeof(double));
	double *attn = malloc((size_t)2 * H * SEQ * sizeof(double));
	for (int i = 0; i < SEQ; i++)
		ref_step(rm, rc, seq_tokens[i], i, lg + (size_t)i * V, i == SEQ - 1 ? attn : NULL);
	struct engine *eng = mk_engine(&tm->m, false, ENGINE_ISA_AUTO, ENGINE_KV_F32, 2, 64);
	struct engine_out out;
	if (eng && run_prefill(eng, &out, true, true) == KVS_OK) {
		T_EQ_INT(out.n_visible, SEQ);
		double md = maxdiff(out.attn, attn, (size_t)2 * H * SEQ, NULL);
		double worst_sum = 0;
		for (uint32_t lh = 0; lh < 2 * H; lh++) {
			double s = 0;
			for (int j = 0; j < SEQ; j++)
				s += out.attn[lh * SEQ + j];
			worst_sum = fmax(worst_sum, fabs(s - 1));
		}
		printf("  attention: max|d| %.3g, worst |sum-1| %.3g\n", md, worst_sum);
		T_CHECK(md <= 1e-5, "attention probabilities max |d| %.3g", md);
		T_CHECK(worst_sum <= 1e-5, "attention sums off by %.3g", worst_sum);
		double ms = 0, mh = 0;
		for (int i = 0; i < SEQ; i++) {
			const double *row = lg + (size_t)i * V;
			double mx = row[0];
			for (uint32_t v = 1; v < V; v++)
				mx = fmax(mx, row[v]);
			double z = 0, h = 0;
			for (uint32_t v = 0; v < V; v++)
				z += exp(row[v] - mx);
			for (uint32_t v = 0; v < V; v++) {
				double p = exp(row[v] - mx) / z;
				h -= p > 0 ? p * log(p) : 0;
			}
			mh = fmax(mh, fabs(out.entropy[i] - h));
			if (i + 1 < SEQ) {
				double s = -(row[seq_tokens[i + 1]] - mx - log(z));
				ms = fmax(ms, fabs(out.surprisal[i] - s));
			} else {
				T_CHECK(isnan(out.surprisal[i]), "last surprisal %g, expected NaN",
				        out.surprisal[i]);
			}
		}
		printf("  surprisal max|d| %.3g, entropy max|d| %.3g\n", ms, mh);
		T_CHECK(ms <= 1e-4 && mh <= 1e-4, "surprisal %.3g / entropy %.3g off", ms, mh);
	}
	/* statistics with only the last row's logits kept */
	engine_free(eng);
	eng = mk_engine(&tm->m, false, ENGINE_ISA_AUTO, ENGINE_KV_F32, 2, 64);
	if (eng) {
		int32_t pos[SEQ];
		uint32_t slot[SEQ];
		for (int i = 0; i < SEQ; i++) {
			pos[i] = i;
			slot[i] = (uint32_t)i;
		}
		struct engine_batch b = { .n_tokens = SEQ,
			                      .tokens = seq_tokens,
			                      .pos = pos,
			                      .slot = slot,
			                      .n_visible = SEQ,
			                      .logits = ENGINE_LOGITS_LAST,
			                      .want_surprisal = true };
		struct err e;
		err_clear(&e);
		T_CHECK(engine_forward(eng, &b, &out, &e) == KVS_OK, "%s", e.msg);
		T_EQ_INT(out.n_rows, 1);
		double md = maxdiff(out.logits, lg + (size_t)(SEQ - 1) * V, V, NULL);
		T_CHECK(md <= 1e-4, "LAST logits with statistics: max |d| %.3g", md);
		T_CHECK(out.surprisal && isfinite(out.surprisal[0]), "surprisal missing");
	}
	engine_free(eng);
	rc_clear(rc);
	free(rc);
	free(lg);
	free(attn);
	ref_free(rm);
	tm_free(tm);
}

/*
 * Compaction: prefill 8 tokens, evict two (slots 2 and 5), move the later
 * ones down and renumber positions 0..5, then decode one more token at
 * position 6. The reference drops the same entries from its list and
 * renumbers. Keys read back rotated must equal the pre-RoPE key rotated
 * directly to the new position.
 */
static void test_compaction(const struct tspec *sp)
{
	struct tmodel *tm = tm_build(sp, 99);
	struct rmodel *rm = ref_build(&tm->m);
	struct rcache *rc = calloc(1, sizeof(*rc));
	uint32_t V = sp->n_vocab, hd = sp->head_dim;
	double *lg = malloc(V * sizeof(double));
	struct engine *eng = mk_engine(&tm->m, false, ENGINE_ISA_AUTO, ENGINE_KV_F32, 2, 32);
	struct err e;
	struct engine_out out;
	if (eng == NULL)
		goto done;
	int32_t pos[8];
	uint32_t slot[8];
	for (int i = 0; i < 8; i++) {
		pos[i] = i;
		slot[i] = (uint32_t)i;
		ref_step(rm, rc, seq_tokens[i], i, lg, NULL);
	}
	struct engine_batch b = { .n_tokens = 8,
		                      .tokens = seq_tokens,
		                      .pos = pos,
		                      .slot = slot,
		                      .n_visible = 8,
		                      .logits = ENGINE_LOGITS_NONE };
	err_clear(&e);
	T_CHECK(engine_forward(eng, &b, &out, &e) == KVS_OK, "%s", e.msg);

	/* pre-RoPE key of slot 7, layer 1, head 0, before the move */
	float before[256], after[256];
	engine_kv_read(eng, 1, 7, 0, false, false, before, &e);
	/* keep 0 1 3 4 6 7 -> slots 0..5, positions 0..5 */
	uint32_t src[] = { 3, 4, 6, 7 }, dst[] = { 2, 3, 4, 5 };
	T_CHECK(engine_kv_copy(eng, dst, src, 4, &e) == KVS_OK, "%s", e.msg);
	for (uint32_t s = 0; s < 6; s++)
		engine_kv_set_pos(eng, s, (int32_t)s, &e);
	engine_kv_set_pos(eng, 6, -1, &e);
	engine_kv_set_pos(eng, 7, -1, &e);
	rc_drop(rc, 5);
	rc_drop(rc, 2);
	for (int j = 0; j < rc->n; j++)
		rc->pos[j] = j;

	T_CHECK(engine_kv_read(eng, 1, 5, 0, false, true, after, &e) == KVS_OK, "%s", e.msg);
	double want[256], worst = 0, norm = 0;
	for (uint32_t d = 0; d < hd; d++)
		want[d] = before[d];
	ref_rope(&tm->m.hp, want, 5);
	for (uint32_t d = 0; d < hd; d++) {
		worst = fmax(worst, fabs(after[d] - want[d]));
		norm = fmax(norm, fabs(want[d]));
	}
	printf("  compaction (%s): rotated key rel err %.3g\n", sp->arch, worst / norm);
	T_CHECK(worst <= 1e-5 * norm, "moved key vs direct rotation: %.3g", worst / norm);

	/* decode token 8 at position 6 into slot 6, seeing slots 0..6 */
	int32_t p6 = 6;
	uint32_t s6 = 6;
	struct engine_batch d = {
		.n_tokens = 1, .tokens = &seq_tokens[8], .pos = &p6, .slot = &s6, .n_visible = 7
	};
	err_clear(&e);
	T_CHECK(engine_forward(eng, &d, &out, &e) == KVS_OK, "%s", e.msg);
	ref_step(rm, rc, seq_tokens[8], 6, lg, NULL);
	double bmax, md = maxdiff(out.logits, lg, V, &bmax);
	printf("  compaction (%s): logits after compaction max|d| %.3g\n", sp->arch, md);
	T_CHECK(md <= 1e-4 * KVS_MAX(bmax, 1.0), "compacted decode max |d| %.3g", md);

	/* a visible subset: the same query seeing slots {0, 2, 4, 6} only */
	uint32_t vis[] = { 0, 2, 4, 6 };
	p6 = 6;
	struct engine_batch d2 = { .n_tokens = 1,
		                       .tokens = &seq_tokens[8],
		                       .pos = &p6,
		                       .slot = &s6,
		                       .n_visible = 4,
		                       .visible = vis,
		                       .want_attn = true };
	err_clear(&e);
	T_CHECK(engine_forward(eng, &d2, &out, &e) == KVS_OK, "%s", e.msg);
	rc_drop(rc, rc->n - 1);
	rc_drop(rc, 5);
	rc_drop(rc, 3);
	rc_drop(rc, 1);
	double *attn = malloc((size_t)2 * sp->n_head * 4 * sizeof(double));
	ref_step(rm, rc, seq_tokens[8], 6, lg, attn);
	md = maxdiff(out.logits, lg, V, &bmax);
	double ma = maxdiff(out.attn, attn, (size_t)2 * sp->n_head * 4, NULL);
	printf("  visible subset (%s): logits max|d| %.3g, attention max|d| %.3g\n", sp->arch, md, ma);
	T_CHECK(md <= 1e-4 * KVS_MAX(bmax, 1.0) && ma <= 1e-5, "subset: logits %.3g attention %.3g", md,
	        ma);
	/* asking for the weights must not change the arithmetic: the same step
	 * without them gives the same logits, bit for bit (the workbench watches
	 * every decode; chat does not) */
	float *with = malloc(V * sizeof(float));
	memcpy(with, out.logits, V * sizeof(float));
	struct engine_batch d2b = d2;
	d2b.want_attn = false;
	err_clear(&e);
	T_CHECK(engine_forward(eng, &d2b, &out, &e) == KVS_OK, "%s", e.msg);
	T_CHECK(memcmp(with, out.logits, V * sizeof(float)) == 0,
	        "decode logits differ with and without the attention weights asked for");
	free(with);

	/* the same set listed out of order, with an empty slot among them: the
	 * attention comes back in the list's order, 0 for the empty slot */
	uint32_t vis2[] = { 4, 11, 0, 6, 2 };
	static const int back[] = { 2, -1, 0, 3, 1 }; /* vis2[i] is vis[back[i]] */
	struct engine_batch d3 = d2;
	d3.visible = vis2;
	d3.n_visible = 5;
	err_clear(&e);
	T_CHECK(engine_forward(eng, &d3, &out, &e) == KVS_OK, "%s", e.msg);
	double md3 = maxdiff(out.logits, lg, V, NULL), ma3 = 0;
	for (uint32_t lh = 0; lh < 2 * sp->n_head; lh++)
		for (int i = 0; i < 5; i++) {
			double want_p = back[i] < 0 ? 0.0 : attn[lh * 4 + (uint32_t)back[i]];
			ma3 = fmax(ma3, fabs(out.attn[lh * 5 + (uint32_t)i] - want_p));
		}
	printf("  unordered visible list (%s): logits max|d| %.3g, attention max|d| %.3g\n", sp->arch,
	       md3, ma3);
	T_CHECK(md3 <= 1e-4 * KVS_MAX(bmax, 1.0) && ma3 <= 1e-5,
	        "unordered: logits %.3g attention %.3g", md3, ma3);
	free(attn);
done:
	engine_free(eng);
	rc_clear(rc);
	free(rc);
	free(lg);
	ref_free(rm);
	tm_free(tm);
}

/* F16 and F32 caches give close logits; ubatch splitting (> 512 tokens)
 * matches the reference. */
static void test_long_and_kv_types(void)
{
	const struct tspec *sp = &spec_llama_q41;
	struct tmodel *tm = tm_build(sp, 5);
	struct rmodel *rm = ref_build(&tm->m);
	enum { N = 600 };
	int32_t *tok = malloc(N * sizeof(int32_t)), *pos = malloc(N * sizeof(int32_t));
	uint32_t *slot = malloc(N * sizeof(uint32_t));
	for (int i = 0; i < N; i++) {
		tok[i] = (int32_t)((i * 37 + 11) % sp->n_vocab);
		pos[i] = i;
		slot[i] = (uint32_t)i;
	}
	struct rcache *rc = calloc(1, sizeof(*rc));
	double *lg = malloc(sp->n_vocab * sizeof(double));
	double *want_s = malloc(N * sizeof(double));
	for (int i = 0; i < N; i++) {
		ref_step(rm, rc, tok[i], i, lg, NULL);
		double mx = lg[0], z = 0;
		for (uint32_t v = 1; v < sp->n_vocab; v++)
			mx = fmax(mx, lg[v]);
		for (uint32_t v = 0; v < sp->n_vocab; v++)
			z += exp(lg[v] - mx);
		want_s[i] = i + 1 < N ? log(z) - (lg[tok[i + 1]] - mx) : NAN;
	}
	float *l32 = malloc(sp->n_vocab * sizeof(float));
	for (int kv = 0; kv < 2; kv++) {
		struct engine *eng = mk_engine(&tm->m, kv == 1, ENGINE_ISA_AUTO,
		                               kv == 0 ? ENGINE_KV_F16 : ENGINE_KV_F32, 2, 1024);
		if (eng == NULL)
			continue;
		/* the reference run also asks for surprisal: rows on both sides of
		 * the 512-token cut inside the engine */
		struct engine_batch b = { .n_tokens = N,
			                      .tokens = tok,
			                      .pos = pos,
			                      .slot = slot,
			                      .n_visible = N,
			                      .want_surprisal = kv == 1 };
		struct engine_out out;
		struct err e;
		err_clear(&e);
		T_CHECK(engine_forward(eng, &b, &out, &e) == KVS_OK, "%s", e.msg);
		double bmax, md = maxdiff(out.logits, lg, sp->n_vocab, &bmax);
		printf("  600-token prefill, %s: max|d| %.3g (max|logit| %.3g)\n",
		       kv == 0 ? "int8, f16 cache" : "reference, f32 cache", md, bmax);
		T_CHECK(md <= (kv == 0 ? 3e-2 : 1e-4) * bmax, "600-token prefill max |d| %.3g", md);
		if (kv == 0)
			memcpy(l32, out.logits, sp->n_vocab * sizeof(float));
		if (kv == 1 && out.surprisal) {
			double ms = 0;
			for (int i = 0; i + 1 < N; i++)
				ms = fmax(ms, fabs(out.surprisal[i] - want_s[i]));
			printf("  600-token surprisal (reference path): max|d| %.3g\n", ms);
			T_CHECK(ms <= 1e-3, "600-token surprisal max |d| %.3g", ms);
			T_CHECK(isnan(out.surprisal[N - 1]), "last surprisal %g", out.surprisal[N - 1]);
		}
		engine_free(eng);
	}
	free(l32);
	free(want_s);
	rc_clear(rc);
	free(rc);
	free(lg);
	free(tok);
	free(pos);
	free(slot);
	ref_free(rm);
	tm_free(tm);
}

/* Heads of 64 (the vector kernels' own shape), GQA 3, f32 weights. */
static const struct tspec spec_llama_h64 = { "llama", 192,      3,         1,     64,     128,
	                                         64,      10000.0f, ROPE_NORM, false, DT_F32, DT_F32 };

/* A decode step's result does not depend on how many threads ran it: the
 * engine tries one thread on its second step (and every CPU_PROBE_EVERY
 * steps after), so the same step taken twice, first on every thread of a
 * three-thread pool and then on one, gives bit-identical logits. (Before
 * the split decode attention kept its parts per pool thread, a seeded run
 * changed with the machine's load.) */
static double maxdiff_ff(const float *a, const float *b, uint32_t n)
{
	double m = 0;
	for (uint32_t i = 0; i < n; i++)
		m = fmax(m, fabs((double)a[i] - b[i]));
	return m;
}

static void test_decode_thread_count(void)
{
	const struct tspec *sp = &spec_llama_h64;
	struct tmodel *tm = tm_build(sp, 5);
	enum { N = 300 };
	int32_t tok[N + 1], pos[N + 1];
	uint32_t slot[N + 1];
	for (int i = 0; i <= N; i++) {
		tok[i] = (int32_t)((i * 37 + 11) % sp->n_vocab);
		pos[i] = i;
		slot[i] = (uint32_t)i;
	}
	for (int kv = 0; kv < 2; kv++) {
		struct engine *eng = mk_engine(&tm->m, false, ENGINE_ISA_AUTO,
		                               kv ? ENGINE_KV_F16 : ENGINE_KV_F32, 3, N + 1);
		if (eng == NULL)
			continue;
		struct err e;
		struct engine_out out;
		struct engine_batch b = { .n_tokens = N,
			                      .tokens = tok,
			                      .pos = pos,
			                      .slot = slot,
			                      .n_visible = N,
			                      .logits = ENGINE_LOGITS_NONE };
		err_clear(&e);
		T_CHECK(engine_forward(eng, &b, &out, &e) == KVS_OK, "%s", e.msg);
		struct engine_batch d = {
			.n_tokens = 1, .tokens = &tok[N], .pos = &pos[N], .slot = &slot[N], .n_visible = N + 1
		};
		float *first = malloc(sp->n_vocab * sizeof(float));
		T_CHECK(engine_forward(eng, &d, &out, &e) == KVS_OK, "%s", e.msg);
		memcpy(first, out.logits, sp->n_vocab * sizeof(float));
		T_CHECK(engine_forward(eng, &d, &out, &e) == KVS_OK, "%s", e.msg);
		T_CHECK(memcmp(first, out.logits, sp->n_vocab * sizeof(float)) == 0,
		        "kv %s: the same decode step on 3 threads and on 1 differs (max |d| %.3g)",
		        kv ? "f16" : "f32", maxdiff_ff(first, out.logits, sp->n_vocab));
		free(first);
		engine_free(eng);
	}
	tm_free(tm);
}

/*
 * The tiled prefill attention and the decode attention at every level
 * against the float64 reference, every position's logits: 592 tokens in
 * one batch (two ubatches; tiles of keys with the causal edge inside them;
 * query blocks of several tokens), then 8 decode steps over them (on 3 and
 * 2 threads, so the keys are split across the threads when the engine
 * decodes on all of them), on heads of 64, f32 weights so that the
 * attention's float sums are the only difference, f32 and f16 caches.
 */
static void test_tiled_prefill(void)
{
	const struct tspec *sp = &spec_llama_h64;
	struct tmodel *tm = tm_build(sp, 11);
	struct rmodel *rm = ref_build(&tm->m);
	enum { N = 600 };
	int32_t *tok = malloc(N * sizeof(int32_t)), *pos = malloc(N * sizeof(int32_t));
	uint32_t *slot = malloc(N * sizeof(uint32_t));
	double *want = malloc((size_t)N * sp->n_vocab * sizeof(double));
	struct rcache *rc = calloc(1, sizeof(*rc));
	for (int i = 0; i < N; i++) {
		tok[i] = (int32_t)((i * 29 + 7) % sp->n_vocab);
		pos[i] = i;
		slot[i] = (uint32_t)i;
		ref_step(rm, rc, tok[i], i, want + (size_t)i * sp->n_vocab, NULL);
	}
	for (int lv = KERN_SCALAR; lv <= (int)kern_cpu_level(); lv++)
		for (int kv = 0; kv < 2; kv++) {
			enum engine_isa isa = lv == KERN_SCALAR ? ENGINE_ISA_SCALAR
			        : lv == KERN_AVX2               ? ENGINE_ISA_AVX2
			                                        : ENGINE_ISA_AVX512;
			struct engine *eng =
			        mk_engine(&tm->m, false, isa, kv ? ENGINE_KV_F16 : ENGINE_KV_F32, 3 - kv, N);
			if (eng == NULL)
				continue;
			struct engine_batch b = { .n_tokens = N - 8,
				                      .tokens = tok,
				                      .pos = pos,
				                      .slot = slot,
				                      .n_visible = N - 8,
				                      .logits = ENGINE_LOGITS_ALL };
			struct engine_out out;
			struct err e;
			err_clear(&e);
			T_CHECK(engine_forward(eng, &b, &out, &e) == KVS_OK, "%s", e.msg);
			double bmax, md = maxdiff(out.logits, want, (size_t)(N - 8) * sp->n_vocab, &bmax);
			for (int i = N - 8; i < N; i++) {
				struct engine_batch d = { .n_tokens = 1,
					                      .tokens = tok + i,
					                      .pos = pos + i,
					                      .slot = slot + i,
					                      .n_visible = (uint32_t)i + 1 };
				err_clear(&e);
				T_CHECK(engine_forward(eng, &d, &out, &e) == KVS_OK, "%s", e.msg);
				md = fmax(md,
				          maxdiff(out.logits, want + (size_t)i * sp->n_vocab, sp->n_vocab, NULL));
			}
			printf("  592-token prefill + 8 decodes, %-11s %s cache: max|d| %.3g (max|logit| "
			       "%.3g)\n",
			       engine_isa_name(eng), kv ? "f16" : "f32", md, bmax);
			T_CHECK(md <= (kv ? 3e-3 : 1e-5) * bmax, "%s %s: 592 + 8 tokens max |d| %.3g",
			        engine_isa_name(eng), kv ? "f16" : "f32", md);
			engine_free(eng);
		}
	rc_clear(rc);
	free(rc);
	free(want);
	free(tok);
	free(pos);
	free(slot);
	ref_free(rm);
	tm_free(tm);
}

/* Bad batches are refused with a message naming the field; the cache is
 * unchanged. */
static void test_bad_batches(void)
{
	struct tmodel *tm = tm_build(&spec_llama_f32, 3);
	struct engine *eng = mk_engine(&tm->m, false, ENGINE_ISA_AUTO, ENGINE_KV_F16, 1, 16);
	if (eng == NULL) {
		tm_free(tm);
		return;
	}
	struct engine_out out;
	struct err e;
	int32_t tok[3] = { 1, 2, 3 }, pos[3] = { 0, 1, 2 };
	uint32_t slot[3] = { 0, 1, 2 };
	struct engine_batch b = {
		.n_tokens = 3, .tokens = tok, .pos = pos, .slot = slot, .n_visible = 3
	};
	struct {
		const char *what;
		int32_t tok2, pos2;
		uint32_t slot2, n_visible;
		const char *needle;
	} cases[] = {
		{ "token out of range", 128, 2, 2, 3, "token 2 is id 128" },
		{ "negative token", -1, 2, 2, 3, "token 2 is id -1" },
		{ "position not increasing", 3, 1, 2, 3, "increasing" },
		{ "slot out of range", 3, 2, 16, 3, "slot 16" },
		{ "slot repeated", 3, 2, 1, 3, "already written" },
		{ "too many visible", 3, 2, 2, 17, "n_visible 17" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		tok[2] = cases[i].tok2;
		pos[2] = cases[i].pos2;
		slot[2] = cases[i].slot2;
		b.n_visible = cases[i].n_visible;
		err_clear(&e);
		int rc = engine_forward(eng, &b, &out, &e);
		T_CHECK(rc == KVS_EARG && strstr(e.msg, cases[i].needle) != NULL,
		        "%s: rc %d msg '%s', expected '%s'", cases[i].what, rc, e.msg, cases[i].needle);
		T_EQ_INT(engine_kv_pos(eng, 0), -1);
	}
	b.n_tokens = 0;
	T_EQ_INT(engine_forward(eng, &b, &out, &e), KVS_EARG);
	uint32_t dup[2] = { 1, 1 };
	tok[2] = 3;
	pos[2] = 2;
	slot[2] = 2;
	b.n_tokens = 3;
	b.visible = dup;
	b.n_visible = 2;
	T_EQ_INT(engine_forward(eng, &b, &out, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "repeats slot 1") != NULL, "msg '%s'", e.msg);
	/* config parsing */
	enum engine_backend be;
	enum engine_kv_type kt;
	T_EQ_INT(engine_backend_parse("cpu", &be, &e), KVS_OK);
	T_EQ_INT(be, ENGINE_BACKEND_CPU);
	T_EQ_INT(engine_backend_parse("tpu", &be, &e), KVS_EARG);
	T_EQ_INT(engine_kv_type_parse("f32", &kt, &e), KVS_OK);
	T_EQ_INT(kt, ENGINE_KV_F32);
	T_EQ_INT(engine_kv_type_parse("q8", &kt, &e), KVS_EARG);
	engine_free(eng);
	tm_free(tm);
}

/* The min M of 32-block b of a source row (w = D (q - k) + M), read here
 * from the formats' fields: Q4_1's and Q5_1's m, the k-quants' -dmin*m_j;
 * 0 for the others. */
static double block_min(uint32_t type, const uint8_t *row, int64_t b)
{
	switch (type) {
	case DT_Q4_1: return rd16(row + b * 20 + 2);
	case DT_Q5_1: return rd16(row + b * 24 + 2);
	case DT_Q4_K:
	case DT_Q5_K: {
		const uint8_t *sb = row + (b / 8) * (type == DT_Q4_K ? 144 : 176);
		/* the 6-bit min of sub-block j (scales[12] layout of the k-quants) */
		int j = (int)(b % 8);
		const uint8_t *s = sb + 4;
		int m = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
		return -(double)(rd16(sb + 2) * (float)m);
	}
	default: return 0.0;
	}
}

/*
 * The packed products at every kernel level against the same arithmetic
 * done here in double: the dequantised weight times the dequantised int8
 * activation (q * d for each block, exactly what the kernels multiply), with
 * a block's min entering through the rounded activation sum s as the
 * kernels (and llama.cpp) take it, for every packed type, row counts that
 * leave a partial 16-row group and 1..11 tokens.
 */
static void test_kernels(void)
{
	static const uint32_t types[] = { DT_Q4_0, DT_Q4_1, DT_Q8_0, DT_Q4_K,
		                              DT_Q5_0, DT_Q5_1, DT_Q5_K, DT_Q6_K };
	const int64_t rows = 37, KMAX = 512;
	float *f = malloc(rows * KMAX * sizeof(float)), *x = malloc(11 * KMAX * sizeof(float));
	for (int64_t i = 0; i < rows * KMAX; i++)
		f[i] = (float)rnd();
	for (int64_t i = 0; i < 11 * KMAX; i++)
		x[i] = (float)(rnd() * (i % 7 == 0 ? 20 : 1));
	for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
		uint32_t type = types[ti];
		int64_t K = dtype_info(type)->block_elems == 256 ? KMAX : 96, nb = K / 32;
		uint64_t rb = 0;
		T_CHECK(kern_type_packed(type), "%s is not packed", dtype_name(type));
		dtype_row_bytes(type, K, &rb);
		uint8_t *orig = malloc(rb * rows);
		fill_rows(type, f, rows, K, orig, rb, 1.0);
		float *wd = malloc(rows * K * sizeof(float));
		T_CHECK(dtype_dequant(type, orig, wd, rows * K), "dequant");
		uint64_t pb = kern_packed_bytes(type, rows, K);
		struct kern_weight w = { .type = type,
			                     .packed = true,
			                     .rows = rows,
			                     .cols = K,
			                     .row_bytes = rb,
			                     .group_bytes = pb / 3 };
		uint8_t *packed = xmalloc_aligned(pb);
		kern_pack(type, orig, rows, K, packed, 0, 3);
		w.data = packed;
		/* the packed rows read back exactly as the file's dequantiser gives them */
		float row[512];
		double rd = 0, wmax = 0;
		for (int64_t r = 0; r < rows; r++) {
			kern_weight_row(&w, r, row);
			for (int64_t k = 0; k < K; k++) {
				rd = fmax(rd, fabs(row[k] - wd[r * K + k]));
				wmax = fmax(wmax, fabs(wd[r * K + k]));
			}
		}
		T_CHECK(rd == 0, "%s packed row read-back differs by %g", dtype_name(type), rd);
		T_CHECK(wmax > 0.1 && wmax < 10, "%s test weights out of range: max %g", dtype_name(type),
		        wmax);
		for (int lv = KERN_SCALAR; lv <= (int)kern_cpu_level(); lv++) {
			const struct kern_ops *ops = kern_select((enum kern_level)lv);
			for (int64_t n = 1; n <= 11; n += 5) {
				struct kern_act a = { K,
					                  xmalloc_aligned(n * K),
					                  xmalloc_aligned(n * nb * 4),
					                  xmalloc_aligned(n * nb * 4),
					                  xmalloc_aligned(n * nb * 4),
					                  xmalloc_aligned(n * nb * 8) };
				for (int64_t t = 0; t < n; t++)
					ops->quant_row(x + t * K, &a, t);
				float *y = malloc(n * 40 * sizeof(float));
				for (int64_t i = 0; i < n * 40; i++)
					y[i] = 1.0f; /* rows past 37 must stay untouched */
				ops->gemm_packed(&w, 0, 3, &a, n, y, 40, false);
				double md = 0, mx = 0;
				bool pad_ok = true;
				for (int64_t t = 0; t < n; t++) {
					for (int64_t r = 0; r < rows; r++) {
						double want = 0;
						for (int64_t k = 0; k < K; k++) {
							double m = block_min(type, orig + r * rb, k / 32);
							if (k % 32 == 0)
								want += m * a.s[t * nb + k / 32];
							want += ((double)wd[r * K + k] - m) * a.q[t * K + k] *
							        a.d[t * nb + k / 32];
						}
						md = fmax(md, fabs(y[t * 40 + r] - want));
						mx = fmax(mx, fabs(want));
					}
					for (int64_t r = rows; r < 40; r++)
						pad_ok = pad_ok && y[t * 40 + r] == 1.0f;
				}
				T_CHECK(md <= 2e-5 * mx, "%s %s n=%lld: max |d| %.3g (max %.3g)", ops->name,
				        dtype_name(type), (long long)n, md, mx);
				T_CHECK(pad_ok, "%s %s: wrote past the last row", ops->name, dtype_name(type));
				/* quantisation as specified: d = f16(max|x| / 127), |q| <= 127 */
				for (int64_t t = 0; t < n; t++)
					for (int b = 0; b < nb; b++) {
						float amax = 0;
						int sum = 0, half0 = 0;
						for (int k = 0; k < 32; k++) {
							amax = fmaxf(amax, fabsf(x[t * K + b * 32 + k]));
							sum += a.q[t * K + b * 32 + k];
							half0 += k < 16 ? a.q[t * K + b * 32 + k] : 0;
						}
						float d = dtype_f16_to_f32(dtype_f32_to_f16(amax / 127.0f));
						float sd = dtype_f16_to_f32(dtype_f32_to_f16(amax / 127.0f * (float)sum));
						T_CHECK(a.s[t * nb + b] == sd, "%s block sum %g, want %g", ops->name,
						        a.s[t * nb + b], sd);
						T_CHECK(a.d[t * nb + b] == d && a.isum[t * nb + b] == sum,
						        "%s activation block %lld/%d: d %g (want %g), sum %d (want %d)",
						        ops->name, (long long)t, b, a.d[t * nb + b], d, a.isum[t * nb + b],
						        sum);
						T_CHECK(a.isum16[2 * (t * nb + b)] == half0 &&
						                a.isum16[2 * (t * nb + b) + 1] == sum - half0,
						        "%s activation block %lld/%d: half sums %d, %d (want %d, %d)",
						        ops->name, (long long)t, b, a.isum16[2 * (t * nb + b)],
						        a.isum16[2 * (t * nb + b) + 1], half0, sum - half0);
					}
				free(y);
				xfree_aligned(a.q);
				xfree_aligned(a.d);
				xfree_aligned(a.s);
				xfree_aligned(a.isum);
				xfree_aligned(a.isum16);
			}
		}
		xfree_aligned(packed);
		free(wd);
		free(orig);
	}
	free(f);
	free(x);
}

/* An F16 cache changes the logits only by the rounding of K and V (on the
 * f32 path: int8 activations would turn the tiny differences into flips of
 * rounding, as they do between any two implementations). */
static void test_kv_f16_vs_f32(void)
{
	struct tmodel *tm = tm_build(&spec_llama_q41, 21);
	struct engine *a = mk_engine(&tm->m, true, ENGINE_ISA_AUTO, ENGINE_KV_F16, 2, 64);
	struct engine *b = mk_engine(&tm->m, true, ENGINE_ISA_AUTO, ENGINE_KV_F32, 2, 64);
	struct engine_out oa, ob;
	if (a && b && run_prefill(a, &oa, false, false) == KVS_OK) {
		float *keep = malloc((size_t)SEQ * spec_llama_q41.n_vocab * sizeof(float));
		memcpy(keep, oa.logits, (size_t)SEQ * spec_llama_q41.n_vocab * sizeof(float));
		if (run_prefill(b, &ob, false, false) == KVS_OK) {
			double md = 0, mx = 0;
			for (size_t i = 0; i < (size_t)SEQ * spec_llama_q41.n_vocab; i++) {
				md = fmax(md, fabs(keep[i] - ob.logits[i]));
				mx = fmax(mx, fabs(ob.logits[i]));
			}
			printf("  f16 vs f32 cache: max|d| %.3g (max|logit| %.3g)\n", md, mx);
			T_CHECK(md > 0 && md <= 5e-3 * mx, "f16 vs f32 cache max |d| %.3g", md);
		}
		free(keep);
	}
	engine_free(a);
	engine_free(b);
	tm_free(tm);
}

/* Asking for CUDA where there is none is one clear error, not a crash. */
static void test_backend_choice(void)
{
	struct tmodel *tm = tm_build(&spec_llama_f32, 4);
	struct engine_config cfg;
	engine_config_default(&cfg);
	cfg.backend = ENGINE_BACKEND_CUDA;
	cfg.n_ctx = 16;
	struct engine *eng = NULL;
	struct err e;
	err_clear(&e);
	int rc = engine_create(&eng, &tm->m, &cfg, &e);
	T_CHECK(rc != KVS_OK && eng == NULL && strstr(e.msg, "backend cuda") != NULL &&
	                strchr(e.msg, '\n') == NULL,
	        "cuda without a CUDA engine: rc %d, '%s'", rc, e.msg);
	cfg.backend = ENGINE_BACKEND_AUTO;
	err_clear(&e);
	T_CHECK(engine_create(&eng, &tm->m, &cfg, &e) == KVS_OK, "auto: %s", e.msg);
	if (eng) {
		T_EQ_STR(engine_backend_name(eng), "cpu");
		T_CHECK(engine_n_threads(eng) >= 1, "threads %d", engine_n_threads(eng));
		T_EQ_INT(engine_kv_bytes_per_slot(eng), 2 * 2 * 2 * 16 * 2);
	}
	engine_free(eng);
	cfg.n_threads = -1;
	T_EQ_INT(engine_create(&eng, &tm->m, &cfg, &e), KVS_EARG);
	tm_free(tm);
}

/* The in-place decode attention kernels against a double-precision
 * reference, for every level, f16 and f32 tables, heads of 64 (the blocked
 * path) and 48 (the fallback), 1 to 8 query heads, 257 keys and 5 (short
 * of one 8-key run), rows out of order. */
static void test_row_kernels(void)
{
	enum { N_ROWS = 300, STRIDE = 200, M = 257 };
	float *tab = malloc((size_t)N_ROWS * STRIDE * sizeof(float));
	uint16_t *tab16 = malloc((size_t)N_ROWS * STRIDE * sizeof(uint16_t));
	float q[8 * 64], p[8 * M], s[8 * M], out[8 * 64];
	uint32_t rows[M];
	for (int i = 0; i < N_ROWS * STRIDE; i++) {
		tab16[i] = dtype_f32_to_f16((float)rnd());
		tab[i] = dtype_f16_to_f32(tab16[i]); /* the same values in both tables */
	}
	for (int i = 0; i < 8 * 64; i++)
		q[i] = (float)rnd();
	for (int i = 0; i < 8 * M; i++)
		p[i] = 0.5f + 0.5f * (float)rnd();
	for (int k = 0; k < M; k++)
		rows[k] = (uint32_t)((k * 7919u + 13u) % N_ROWS);
	static const int hds[] = { 64, 48 };
	for (int lv = KERN_SCALAR; lv <= (int)kern_cpu_level(); lv++) {
		const struct kern_ops *ops = kern_select((enum kern_level)lv);
		for (int hi = 0; hi < 2; hi++)
			for (int half = 0; half < 2; half++)
				for (int it = 0; it < 16; it++) {
					int hd = hds[hi], m = it < 8 ? M : 5, nq = it % 8 + 1;
					const void *base = half ? (const void *)(tab16 + 32) : (const void *)(tab + 32);
					ops->att_scores_rows(q, nq, hd, base, STRIDE, half, rows, m, 0.125f, s, M);
					ops->att_pv_rows(p, nq, M, base, STRIDE, half, rows, m, hd, out);
					double ds = 0, dp = 0;
					for (int r = 0; r < nq; r++) {
						for (int k = 0; k < m; k++) {
							const float *row = tab + 32 + (size_t)rows[k] * STRIDE;
							double want = 0;
							for (int d = 0; d < hd; d++)
								want += (double)q[r * hd + d] * row[d];
							ds = fmax(ds, fabs(s[r * M + k] - 0.125 * want));
						}
						for (int d = 0; d < hd; d++) {
							double want = 0;
							for (int k = 0; k < m; k++)
								want += (double)p[r * M + k] *
								        tab[32 + (size_t)rows[k] * STRIDE + d];
							dp = fmax(dp, fabs(out[r * hd + d] - want));
						}
					}
					T_CHECK(ds < 1e-5 && dp < 1e-3,
					        "%s hd %d %s nq %d m %d: scores off by %g, pv by %g", ops->name, hd,
					        half ? "f16" : "f32", nq, m, ds, dp);
				}
	}
	/* the tile loader: exact (f16 to f32 is), every tail, both layouts */
	float dst[80 * 24];
	for (int lv = KERN_SCALAR; lv <= (int)kern_cpu_level(); lv++) {
		const struct kern_ops *ops = kern_select((enum kern_level)lv);
		static const int hds2[] = { 64, 40, 36 };
		int bad = 0;
		for (int hi = 0; hi < 3; hi++)
			for (int m = 1; m <= 19; m++)
				for (int tr = 0; tr < 4; tr++) {
					int hd = hds2[hi], half = tr & 1;
					bool t = tr >= 2;
					const void *base = half ? (const void *)(tab16 + 32) : (const void *)(tab + 32);
					for (int i = 0; i < 80 * 24; i++)
						dst[i] = -9.0f;
					ops->kv_rows_f32(base, STRIDE, half, rows, m, hd, t, dst, t ? 24 : 80);
					for (int k = 0; k < 24; k++)
						for (int d = 0; d < 80; d++) {
							float got = t ? (d < hd && k < 24 ? dst[d * 24 + k] : -9.0f)
							              : (k < 24 ? dst[k * 80 + d] : -9.0f);
							float want = k < m && d < hd ? tab[32 + (size_t)rows[k] * STRIDE + d]
							                             : -9.0f;
							if (t && d >= hd)
								continue;
							bad += got != want;
						}
				}
		T_CHECK(bad == 0, "%s kv_rows_f32: %d values wrong", ops->name, bad);
		/* max: every length to 20, the maximum at every place */
		float xs[20];
		bool max_ok = true;
		for (int n = 1; n <= 20; n++)
			for (int at = 0; at < n; at++) {
				for (int i = 0; i < 20; i++)
					xs[i] = i < n ? -100.0f - i : 1e9f; /* past n: never the max */
				xs[at] = -3.5f;
				max_ok = max_ok && ops->max_f32(xs, n) == -3.5f;
			}
		T_CHECK(max_ok, "%s max_f32", ops->name);
	}
	free(tab);
	free(tab16);
}

/* Every entry of a kernel table, named, as a generic function pointer
 * (compared, never called). */
struct op_entry {
	const char *name;
	void (*fn)(void);
};

#define OP_ENTRY(o, f)             \
	{                              \
#f, (void (*)(void))(o)->f \
	}
static int op_entries(const struct kern_ops *o, struct op_entry *e)
{
	const struct op_entry all[] = {
		OP_ENTRY(o, quant_row),       OP_ENTRY(o, gemm_packed), OP_ENTRY(o, dot_f32),
		OP_ENTRY(o, dot_f16),         OP_ENTRY(o, dot_bf16),    OP_ENTRY(o, gemm_rows_f32),
		OP_ENTRY(o, bf16_to_f32),     OP_ENTRY(o, axpy_f32),    OP_ENTRY(o, f16_to_f32),
		OP_ENTRY(o, f32_to_f16),      OP_ENTRY(o, att_scores),  OP_ENTRY(o, att_pv),
		OP_ENTRY(o, att_scores_rows), OP_ENTRY(o, att_pv_rows), OP_ENTRY(o, kv_rows_f32),
		OP_ENTRY(o, max_f32),         OP_ENTRY(o, exp_sum),     OP_ENTRY(o, swiglu),
		OP_ENTRY(o, geglu),           OP_ENTRY(o, rmsnorm),     OP_ENTRY(o, rope),
	};
	memcpy(e, all, sizeof(all));
	return (int)(sizeof(all) / sizeof(all[0]));
}

/* No level but scalar hands out a scalar kernel for any operation (the
 * tables themselves, whatever this CPU runs), and every entry is set. */
static void test_tables_complete(void)
{
	struct op_entry sc[32], lv[32];
	int n = op_entries(kern_table(KERN_SCALAR), sc);
	T_EQ_INT(sizeof(struct kern_ops), offsetof(struct kern_ops, rope) + sizeof(void (*)(void)));
	for (int l = KERN_SCALAR; l <= KERN_AVX512; l++) {
		const struct kern_ops *o = kern_table((enum kern_level)l);
		T_EQ_INT(o->level, l);
		op_entries(o, lv);
		for (int i = 0; i < n; i++) {
			T_CHECK(lv[i].fn != NULL, "%s: no %s", o->name, lv[i].name);
			if (l != KERN_SCALAR)
				T_CHECK(lv[i].fn != sc[i].fn, "%s uses the scalar %s", o->name, lv[i].name);
		}
	}
}

/* The float-sum error bound for n terms of absolute sum a: (n + 2) u a,
 * u = 2^-24 (each addition and the product round once; hand-checkable). */
static double sum_tol(int64_t n, double a)
{
	return (double)(n + 2) * 0x1p-24 * a + 1e-30;
}

/*
 * The attention kernels on f32 tiles (keys transposed, as the tiled prefill
 * uses them) at every level against float64: 1 to 8 queries, heads of 64
 * and 40, key counts that leave every tail (1, 7, 16, 37, 64), each score
 * and output within the float-sum bound of its terms.
 */
static void test_tile_kernels(void)
{
	enum { MAXM = 64, MAXD = 64, LDS = 70 };
	float q[8 * MAXD], kt[MAXD * MAXM], v[MAXM * MAXD], p[8 * LDS], s[8 * LDS], out[8 * MAXD];
	for (int i = 0; i < 8 * MAXD; i++)
		q[i] = (float)rnd();
	for (int i = 0; i < MAXD * MAXM; i++) {
		kt[i] = (float)rnd();
		v[i] = (float)rnd();
	}
	for (int i = 0; i < 8 * LDS; i++)
		p[i] = 0.5f + 0.5f * (float)rnd();
	static const int hds[] = { 64, 40 }, ms[] = { 1, 7, 16, 37, 64 };
	for (int lv = KERN_SCALAR; lv <= (int)kern_cpu_level(); lv++) {
		const struct kern_ops *ops = kern_select((enum kern_level)lv);
		double worst_s = 0, worst_p = 0; /* error / bound */
		for (int hi = 0; hi < 2; hi++)
			for (int mi = 0; mi < 5; mi++)
				for (int nq = 1; nq <= 8; nq++) {
					int hd = hds[hi], m = ms[mi];
					for (int i = 0; i < 8 * LDS; i++)
						s[i] = -7.0f; /* past m must stay */
					/* keys of a tile with row stride 64, m of them used */
					ops->att_scores(q, nq, hd, kt, MAXM, m, 0.125f, s, LDS);
					ops->att_pv(p, nq, LDS, v, m, hd, out);
					bool kept = true;
					for (int r = 0; r < nq; r++) {
						for (int k = 0; k < m; k++) {
							double want = 0, a = 0;
							for (int d = 0; d < hd; d++) {
								want += (double)q[r * hd + d] * kt[d * MAXM + k];
								a += fabs((double)q[r * hd + d] * kt[d * MAXM + k]);
							}
							worst_s = fmax(worst_s,
							               fabs(s[r * LDS + k] - 0.125 * want) /
							                       sum_tol(hd, 0.125 * a));
						}
						for (int k = m; k < LDS; k++)
							kept = kept && s[r * LDS + k] == -7.0f;
						for (int d = 0; d < hd; d++) {
							double want = 0, a = 0;
							for (int k = 0; k < m; k++) {
								want += (double)p[r * LDS + k] * v[k * hd + d];
								a += fabs((double)p[r * LDS + k] * v[k * hd + d]);
							}
							worst_p = fmax(worst_p, fabs(out[r * hd + d] - want) / sum_tol(m, a));
						}
					}
					T_CHECK(kept, "%s hd %d m %d nq %d: scores written past m", ops->name, hd, m,
					        nq);
				}
		printf("  %-11s tile scores, pv: worst error %.2f, %.2f of the float-sum bound\n",
		       ops->name, worst_s, worst_p);
		T_CHECK(worst_s <= 1 && worst_p <= 1, "%s: tile scores %.3g, pv %.3g of the bound",
		        ops->name, worst_s, worst_p);
	}
}

/*
 * exp_sum, swiglu, rmsnorm and rope at every level against float64.
 *  - exp_sum: inputs on a 2^-10 grid, so x - max is exact in float and the
 *    only errors are the exp's: |x - max| log2(e) 2^-24 ln 2 (= |x - max|
 *    6e-8, rounding x log2(e), the AVX-512 form) plus 1e-6 for the
 *    polynomial and its roundings, relative; the sum adds its own float-sum
 *    bound.
 *  - swiglu: g / (1 + exp(-g)) u: the exp's error as above plus 4 roundings.
 *  - rmsnorm: the sum of squares in double, then 4 float roundings: 5 u
 *    relative.
 *  - rope: a c - b s and a s + b c with |c|, |s| <= 1: 3 u (|a| + |b|).
 */
static void test_elementwise_kernels(void)
{
	enum { N = 203 }; /* odd: every tail */
	float x[N], y[N], g[N], u[N], rx[576], rw[576], ro[576], cs[64], hv[80], hv0[80];
	for (int i = 0; i < N; i++) {
		x[i] = (float)floor(rnd() * 40 * 1024) / 1024; /* [-40, 40) on a 2^-10 grid */
		g[i] = (float)(rnd() * 20);
		u[i] = (float)rnd();
	}
	for (int i = 0; i < 576; i++) {
		rx[i] = (float)(3 * rnd());
		rw[i] = (float)(1 + rnd());
	}
	for (int i = 0; i < 32; i++) {
		double th = (i + 1) * 0.37;
		cs[i] = (float)cos(th);
		cs[32 + i] = (float)sin(th);
	}
	for (int i = 0; i < 80; i++)
		hv0[i] = (float)(4 * rnd());
	for (int lv = KERN_SCALAR; lv <= (int)kern_cpu_level(); lv++) {
		const struct kern_ops *ops = kern_select((enum kern_level)lv);
		/* exp_sum over n = 1 .. N (every tail length up to a few vectors) */
		double we = 0, wsum = 0;
		static const int ns[] = { 1, 5, 8, 13, 16, 31, 203 };
		for (int ni = 0; ni < 7; ni++) {
			int n = ns[ni];
			float mx = -1e30f;
			for (int i = 0; i < n; i++)
				mx = fmaxf(mx, x[i]);
			memcpy(y, x, sizeof(x));
			float sum = ops->exp_sum(y, n, mx);
			double want_sum = 0, a = 0;
			for (int i = 0; i < n; i++) {
				double d = (double)x[i] - mx, e = exp(d);
				want_sum += e;
				we = fmax(we, fabs(y[i] - e) / ((1e-6 + 6e-8 * fabs(d)) * e));
				a += e * (1 + 1e-6 + 6e-8 * fabs(d));
			}
			for (int i = n; i < N; i++)
				T_CHECK(y[i] == x[i], "%s exp_sum n %d wrote past n", ops->name, n);
			wsum = fmax(wsum, fabs(sum - want_sum) / (sum_tol(n, a) + (a - want_sum)));
		}
		/* swiglu */
		double wg = 0;
		memcpy(y, g, sizeof(g));
		ops->swiglu(y, u, N);
		for (int i = 0; i < N; i++) {
			double want = g[i] / (1 + exp(-(double)g[i])) * u[i];
			double tol = (1e-6 + 6e-8 * fabs(g[i]) + 4 * 0x1p-24) * fabs(want) + 1e-30;
			wg = fmax(wg, fabs(y[i] - want) / tol);
		}
		/* rmsnorm, lengths with and without a tail */
		double wr = 0;
		static const int rn[] = { 576, 203, 7 };
		for (int ni = 0; ni < 3; ni++) {
			int n = rn[ni];
			double ss = 0;
			for (int i = 0; i < n; i++)
				ss += (double)rx[i] * rx[i];
			double sc = 1 / sqrt(ss / n + 1e-5);
			ops->rmsnorm(rx, rw, ro, n, 1e-5f);
			for (int i = 0; i < n; i++) {
				double want = rx[i] * sc * rw[i];
				wr = fmax(wr, fabs(ro[i] - want) / (5 * 0x1p-24 * fabs(want) + 1e-30));
			}
		}
		/* rope: head of 80, n_rot 64 (vectorised) and 24 (tails), both forms */
		double wp = 0;
		for (int neox = 0; neox < 2; neox++)
			for (int nr = 64; nr >= 24; nr -= 40) {
				float cs2[64];
				for (int i = 0; i < nr / 2; i++) {
					cs2[i] = cs[i];
					cs2[nr / 2 + i] = cs[32 + i];
				}
				memcpy(hv, hv0, sizeof(hv));
				ops->rope(hv, cs2, nr, neox);
				for (int i = 0; i < nr / 2; i++) {
					int ia = neox ? i : 2 * i, ib = neox ? i + nr / 2 : 2 * i + 1;
					double a = hv0[ia], b = hv0[ib], c = cs2[i], sn = cs2[nr / 2 + i];
					double tol = 3 * 0x1p-24 * (fabs(a) + fabs(b));
					wp = fmax(wp, fabs(hv[ia] - (a * c - b * sn)) / tol);
					wp = fmax(wp, fabs(hv[ib] - (a * sn + b * c)) / tol);
				}
				for (int i = nr; i < 80; i++)
					T_CHECK(hv[i] == hv0[i], "%s rope n_rot %d changed x[%d]", ops->name, nr, i);
			}
		printf("  %-11s exp %.2f, sum %.2f, swiglu %.2f, rmsnorm %.2f, rope %.2f of their bounds\n",
		       ops->name, we, wsum, wg, wr, wp);
		T_CHECK(we <= 1 && wsum <= 1 && wg <= 1 && wr <= 1 && wp <= 1,
		        "%s: exp %.3g, sum %.3g, swiglu %.3g, rmsnorm %.3g, rope %.3g of the bounds",
		        ops->name, we, wsum, wg, wr, wp);
	}
}

/*
 * geglu at every level, bit for bit, against llama.cpp's rule computed here
 * in float: 0 at or below -10, the gate at or above 10, else the gate
 * rounded to f16, its tanh-GELU rounded to f16, times up. Inputs: every
 * f16 value (infinities and NaNs among them) and 4,096 floats that are not
 * f16 values (the rounding on the way in), at lengths with every tail. The
 * rule itself is held within two f16 roundings of GELU in double.
 */
static float gelu_rule(float x)
{
	if (x <= -10.0f)
		return 0.0f;
	if (x >= 10.0f)
		return x;
	float h = dtype_f16_to_f32(dtype_f32_to_f16(x));
	float y = 0.5f * h *
	        (1.0f + tanhf(0.79788456080286535587989211986876f * h * (1.0f + 0.044715f * h * h)));
	return dtype_f16_to_f32(dtype_f32_to_f16(y));
}

static void test_geglu(void)
{
	enum { NF = 65536, NR = 4096, N = NF + NR };
	float *x = xmalloc(N * sizeof(float)), *u = xmalloc(N * sizeof(float));
	float *y = xmalloc(N * sizeof(float));
	for (int i = 0; i < NF; i++)
		x[i] = dtype_f16_to_f32((uint16_t)i);
	for (int i = NF; i < N; i++)
		x[i] = (float)(rnd() * 12) + 0x1p-20f; /* [-12, 12), off the f16 grid */
	for (int i = 0; i < N; i++)
		u[i] = (float)rnd();
	double werr = 0;
	for (int i = 0; i < N; i++) {
		double d = x[i];
		if (!isfinite(d) || fabs(d) >= 10 || fabs(d) < 1e-3)
			continue;
		double g = 0.5 * d * (1 + tanh(sqrt(2 / M_PI) * (d + 0.044715 * d * d * d)));
		/* f16 in, f16 out: a gradient of at most 1.13 times 2^-11 relative, twice */
		werr = fmax(werr, fabs(gelu_rule(x[i]) - g) / (2.3 * 0x1p-11 * fabs(d) + 2 * 0x1p-24));
	}
	T_CHECK(werr <= 1, "the GeGLU rule is %.3g of two f16 roundings from GELU in double", werr);
	for (int lv = KERN_SCALAR; lv <= (int)kern_cpu_level(); lv++) {
		const struct kern_ops *ops = kern_select((enum kern_level)lv);
		static const int64_t ns[] = { N, 1, 7, 9, 15, 17 };
		int bad = 0;
		for (int ni = 0; ni < 6; ni++) {
			int64_t n = ns[ni];
			for (int64_t off = 0; off + n <= N; off += ni == 0 ? N : 3001) {
				memcpy(y, x + off, (size_t)n * sizeof(float));
				if (n < N)
					y[n] = 1234.5f;
				ops->geglu(y, u + off, n);
				for (int64_t i = 0; i < n; i++) {
					float want = gelu_rule(x[off + i]) * u[off + i];
					if (!(y[i] == want || (isnan(y[i]) && isnan(want))) && bad++ < 3)
						T_CHECK(0, "%s geglu(%a) * %a = %a, want %a", ops->name, x[off + i],
						        u[off + i], y[i], want);
				}
				if (n < N)
					T_CHECK(y[n] == 1234.5f, "%s geglu n %lld wrote past n", ops->name,
					        (long long)n);
			}
		}
		printf("  %-11s geglu: %d of %d values off the rule\n", ops->name, bad, N);
		T_EQ_INT(bad, 0);
	}
	free(x);
	free(u);
	free(y);
}

/*
 * engine_rope_cos_sin under per-frequency divisors and YaRN against the
 * formulas in double (n_rot 8, base 10000, position 7): pair i turns by
 * 7 * 10000^(-i/4) / f_i extrapolated, a quarter of that interpolated;
 * YaRN with its ramp over pairs [0, 2] mixes them with weights
 * 1, 0.5, 0, 0 on the extrapolated angle, and scales by 1 + 0.1 ln 4.
 */
static void test_rope_scaled(void)
{
	static const float factors[4] = { 1, 2, 3, 4 };
	struct hparams hp;
	float cs[8];

	memset(&hp, 0, sizeof hp);
	hp.n_rot = 8;
	hp.rope_base = 10000.0f;
	for (int c = 0; c < 3; c++) {
		hp.rope_freq_scale = c == 0 ? 1.0f : 0.25f;
		hp.rope_factors = c == 0 ? factors : NULL;
		hp.rope_ext_factor = c == 2 ? 1.0f : 0.0f;
		hp.rope_attn_factor = c == 2 ? 1.0f : 0.0f; /* 0: hand-built, counts as 1 */
		hp.rope_yarn_corr[0] = 0;
		hp.rope_yarn_corr[1] = 2;
		engine_rope_cos_sin(&hp, 7, cs, cs + 4);
		for (int i = 0; i < 4; i++) {
			double extrap = 7.0 * pow(10000.0, -i / 4.0) / (c == 0 ? factors[i] : 1.0);
			double interp = extrap * hp.rope_freq_scale;
			double mix = c == 2 ? (i == 0 ? 1.0 : i == 1 ? 0.5 : 0.0) : 0.0;
			double t = interp * (1 - mix) + extrap * mix;
			double mag = c == 2 ? 1.0 + 0.1 * log(4.0) : 1.0;
			T_CHECK(fabs(cs[i] - mag * cos(t)) < 2e-6 && fabs(cs[4 + i] - mag * sin(t)) < 2e-6,
			        "case %d pair %d: cos %g sin %g, expected %g %g", c, i, cs[i], cs[4 + i],
			        mag * cos(t), mag * sin(t));
		}
	}
}

/* Logits of 6 tokens of the tiny llama written with separate Q/K/V
 * (fused = false) or one attn_qkv (the same numbers, rows in order). */
static float *fused_logits(bool fused, uint32_t *n_vocab)
{
	struct tinymodel_spec s;
	struct ggufw *w = ggufw_new();
	struct gguf_file *f;
	struct model *m = NULL;
	struct engine *eng = NULL;
	struct engine_config cfg;
	struct err e;
	uint8_t *buf;
	size_t n;
	float *out = NULL;

	tinymodel_defaults(&s, "llama");
	s.n_embd = 64;
	s.n_ff = 128;
	s.wtype = DT_Q8_0;
	s.fused_qkv = fused;
	tinymodel_add(w, &s);
	ggufw_write_mem(w, &buf, &n);
	ggufw_free(w);
	T_EQ_INT(gguf_open_memory(&f, buf, n, &e), KVS_OK);
	T_EQ_INT(model_load_gguf(&m, f, &e), KVS_OK);
	engine_config_default(&cfg);
	cfg.backend = ENGINE_BACKEND_CPU;
	cfg.n_ctx = 16;
	cfg.n_threads = 1;
	if (m != NULL && engine_create(&eng, m, &cfg, &e) == KVS_OK) {
		int32_t toks[6] = { 5, 70, 200, 33, 260, 7 }, pos[6];
		uint32_t slot[6];
		for (int i = 0; i < 6; i++) {
			pos[i] = i;
			slot[i] = (uint32_t)i;
		}
		struct engine_batch b = { .n_tokens = 6,
			                      .tokens = toks,
			                      .pos = pos,
			                      .slot = slot,
			                      .n_visible = 6,
			                      .logits = ENGINE_LOGITS_ALL };
		struct engine_out o;
		*n_vocab = m->hp.n_vocab;
		if (engine_forward(eng, &b, &o, &e) == KVS_OK) {
			out = xmallocarray(6 * (size_t)*n_vocab, sizeof *out);
			memcpy(out, o.logits, 6 * (size_t)*n_vocab * sizeof *out);
		}
	}
	T_CHECK(out != NULL, "fused %d: %s", fused, e.msg);
	engine_free(eng);
	model_free(m);
	free(buf);
	return out;
}

/* A fused QKV projection gives the logits of the separate one, bit for bit:
 * the loader's row views are the separate matrices. */
static void test_fused_qkv(void)
{
	uint32_t nv = 0;
	float *a = fused_logits(false, &nv), *b = fused_logits(true, &nv);

	if (a != NULL && b != NULL) {
		T_CHECK(memcmp(a, b, 6 * (size_t)nv * sizeof *a) == 0, "fused QKV logits differ");
		T_CHECK(a[0] != a[1] || a[1] != a[2], "logits are not all equal");
	}
	free(a);
	free(b);
}

int main(void)
{
	test_rope_scaled();
	test_fused_qkv();
	test_tables_complete();
	test_tile_kernels();
	test_elementwise_kernels();
	test_geglu();
	test_kernels();
	test_row_kernels();
	test_kv_f16_vs_f32();
	test_backend_choice();
	test_logits();
	test_decode_vs_prefill(&spec_llama_f32, true);
	test_decode_vs_prefill(&spec_qwen_q80, false);
	/* one-token products of 16-bit float rows take their own fused path */
	test_decode_vs_prefill(&spec_llama_bf16, false);
	test_decode_vs_prefill(&spec_qwen_q51, false);
	test_attn_and_stats();
	test_compaction(&spec_llama_f32);
	test_compaction(&spec_qwen_f32);
	test_long_and_kv_types();
	test_tiled_prefill();
	test_decode_thread_count();
	test_bad_batches();
	return t_done("test-engine");
}
