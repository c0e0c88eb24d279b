/*
 * gpu-check.c: the CUDA backend against the CPU backend, and its speed
 * (tests/gpu/check.sh runs it; built on request: make tests/gpu/gpu-check).
 *
 *   gpu-check info                      the device, or why there is none
 *   gpu-check parity [--model PATH]     SmolLM2-shaped model (and PATH)
 *   gpu-check types                     one small model per weight type
 *   gpu-check bench [--model PATH]      decode / prefill rates, graphs on/off
 *   gpu-check sparse [--model PATH]     quest and hip decode against the CPU's
 *                                       choices, and their rates (gpu-check-sparse.c;
 *                                       sparse-parity: without the rates)
 *   gpu-check all [--model PATH]        all of the above, then one table
 *   common: --b cuda|cpu (the backend under test; cpu runs the harness
 *           against the CPU backend, for machines without a GPU),
 *           --prompts N, --gen N (greedy runs), --depths 128,4096,32768
 *           (decode timings), --prefill 512,8192, --quick (fewer repetitions)
 *
 * Models are random-weight models built in memory (no file, no vocab): the
 * SmolLM2-135M shape with the Q4_1 file's types (engine.md 4.4), and small
 * llama/qwen2 models of every weight type the kernels handle. Random blocks
 * of the types without a reference quantiser get scale fields chosen so the
 * weights stay within about +-scale.
 *
 * How parity is judged. The CPU backend is the reference; its own distance
 * to its plain-float path (reference mode: no int8 activations) measures
 * how much rounding this model amplifies, and the CUDA backend must stay
 * within max(floor, 3 x that) of the CPU, relative to the largest logit
 * (floors: 2e-2 for prefill, whose products run in f16 on tensor cores;
 * 5e-3 for decode, whose int8 products mirror the CPU's). A top-1
 * disagreement passes only where the CPU's top-2 gap is within twice the
 * row's largest logit difference (a near tie that rounding may flip); a
 * greedy continuation that leaves the CPU's passes only at such a tie.
 * Slot moves must copy cached keys and values bit for bit.
 *
 * Timings: wall clock around engine_forward (what a caller sees, host
 * sampling included) and CUDA events around the device work (gpu_timing).
 * Every failed check prints FAIL and the exit status is 1.
 */
#include "tests/gpu/gpu-check.h"

#include "tests/util/tinymodel.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------- results */

int g_fail;
static char g_table[64][160];
static int g_rows;
enum engine_backend g_b = ENGINE_BACKEND_CUDA;
static int g_prompts = 10, g_gen = 64;
bool g_quick;
static uint32_t g_depths[8] = { 128, 4096, 32768 }, g_pre[8] = { 512, 8192 };
static int g_n_depths = 3, g_n_pre = 2;

void check(bool ok, const char *name, const char *fmt, ...)
{
	va_list ap;
	printf("%s %-34s ", ok ? "PASS" : "FAIL", name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	if (!ok)
		g_fail++;
}

void table_row(const char *fmt, ...)
{
	if (g_rows >= (int)KVS_ARRAY_LEN(g_table))
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(g_table[g_rows++], sizeof(g_table[0]), fmt, ap);
	va_end(ap);
}

/* ------------------------------------------------------- random models */

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

/* Uniform in [-1, 1). */
static double rnd(void)
{
	g_rng ^= g_rng << 13;
	g_rng ^= g_rng >> 7;
	g_rng ^= g_rng << 17;
	return (double)(g_rng >> 11) / (double)(1ull << 52) - 1.0;
}

uint32_t rnd_u32(uint32_t n)
{
	return (uint32_t)((rnd() + 1.0) * 0.5 * n) % n;
}


/* A (rows, cols) tensor of random values times scale plus bias, in type. */
static struct tensor rm_tensor(struct rmodel *rm, const char *name, uint32_t type, int64_t cols,
                               int64_t rows, double scale, double bias)
{
	struct tensor t;
	memset(&t, 0, sizeof(t));
	t.name = name;
	t.type = type;
	t.ne[0] = cols;
	t.ne[1] = rows;
	t.ne[2] = t.ne[3] = 1;
	uint64_t rb = 0;
	if (!dtype_row_bytes(type, (uint64_t)cols, &rb)) {
		fprintf(stderr, "gpu-check: %s: %s rows of %lld are not whole blocks\n", name,
		        dtype_name(type), (long long)cols);
		exit(2);
	}
	t.nbytes = rb * (uint64_t)rows;
	uint8_t *data = xmalloc(t.nbytes);
	if (type == DT_Q5_0 || type == DT_Q5_1 || type == DT_Q4_K || type == DT_Q5_K ||
	    type == DT_Q6_K) {
		uint64_t state = g_rng | 1;
		tinymodel_random_blocks(type, data, t.nbytes, (float)scale, &state);
		g_rng = state;
	} else {
		float *f = xmallocarray((size_t)cols, sizeof(float));
		for (int64_t r = 0; r < rows; r++) {
			uint8_t *dst = data + (uint64_t)r * rb;
			for (int64_t i = 0; i < cols; i++)
				f[i] = (float)(bias + scale * rnd());
			switch (type) {
			case DT_F32: memcpy(dst, f, (size_t)cols * 4); break;
			case DT_F16:
				for (int64_t i = 0; i < cols; i++)
					((uint16_t *)dst)[i] = dtype_f32_to_f16(f[i]);
				break;
			case DT_BF16:
				for (int64_t i = 0; i < cols; i++)
					((uint16_t *)dst)[i] = dtype_f32_to_bf16(f[i]);
				break;
			case DT_Q8_0: dtype_quant_q8_0(f, dst, cols); break;
			case DT_Q4_0: dtype_quant_q4_0(f, dst, cols); break;
			case DT_Q4_1: dtype_quant_q4_1(f, dst, cols); break;
			default: abort();
			}
		}
		free(f);
	}
	t.data = data;
	rm->blobs[rm->n_blobs++] = data;
	return t;
}

struct rmodel *rm_build(const struct rspec *sp, uint64_t seed)
{
	g_rng = seed;
	struct rmodel *rm = xcalloc(1, sizeof(*rm));
	struct hparams *hp = &rm->m.hp;
	snprintf(hp->arch, sizeof(hp->arch), "%s", sp->arch);
	uint32_t hd = sp->n_embd / sp->n_head;
	hp->n_layer = sp->n_layer;
	hp->n_ctx_train = 8192;
	hp->n_embd = sp->n_embd;
	hp->n_ff = sp->n_ff;
	hp->n_head = sp->n_head;
	hp->n_head_kv = sp->n_head_kv;
	hp->head_dim = hd;
	hp->n_rot = hd;
	hp->n_vocab = sp->n_vocab;
	hp->rms_eps = 1e-5f;
	hp->rope_base = sp->rope_base;
	hp->rope_freq_scale = 1.0f;
	hp->rope = sp->rope;
	hp->attn_scale = 1.0f / sqrtf((float)hd);
	hp->has_qkv_bias = sp->bias;
	hp->tied_output = true;
	snprintf(rm->name, sizeof(rm->name), "random %s %s/%s %ux%u", sp->arch, dtype_name(sp->wtype),
	         dtype_name(sp->etype), sp->n_layer, sp->n_embd);
	rm->m.name = rm->name;
	uint32_t E = sp->n_embd, nq = sp->n_head * hd, nkv = sp->n_head_kv * hd;
	double se = 1.0 / sqrt(E), sq = 1.0 / sqrt(nq), sf = 1.0 / sqrt(sp->n_ff);
	/* deep random nets amplify rounding (chaos); shrink the residual
	 * branches with depth, as trained models effectively do */
	double br = fmin(1.0, sqrt(2.0 / sp->n_layer));
	rm->m.layers = xcalloc(sp->n_layer, sizeof(struct layer_weights));
	rm->m.tok_embd = rm_tensor(rm, "token_embd.weight", sp->etype, E, sp->n_vocab, 1.0, 0);
	rm->m.out_norm = rm_tensor(rm, "output_norm.weight", DT_F32, E, 1, 0.2, 1.0);
	rm->m.output = rm->m.tok_embd;
	for (uint32_t l = 0; l < sp->n_layer; l++) {
		struct layer_weights *L = &rm->m.layers[l];
		L->attn_norm = rm_tensor(rm, "attn_norm", DT_F32, E, 1, 0.2, 1.0);
		L->wq = rm_tensor(rm, "attn_q", sp->wtype, E, nq, 2.0 * se, 0);
		L->wk = rm_tensor(rm, "attn_k", sp->wtype, E, nkv, 2.0 * se, 0);
		L->wv = rm_tensor(rm, "attn_v", sp->wtype, E, nkv, 1.5 * se, 0);
		if (sp->bias) {
			L->bq = rm_tensor(rm, "attn_q.bias", DT_F32, nq, 1, 0.3, 0);
			L->bk = rm_tensor(rm, "attn_k.bias", DT_F32, nkv, 1, 0.3, 0);
			L->bv = rm_tensor(rm, "attn_v.bias", DT_F32, nkv, 1, 0.3, 0);
		}
		L->wo = rm_tensor(rm, "attn_output", sp->wtype, nq, E, 1.5 * br * sq, 0);
		L->ffn_norm = rm_tensor(rm, "ffn_norm", DT_F32, E, 1, 0.2, 1.0);
		L->w_gate = rm_tensor(rm, "ffn_gate", sp->wtype, E, sp->n_ff, 2.0 * se, 0);
		L->w_up = rm_tensor(rm, "ffn_up", sp->wtype, E, sp->n_ff, 2.0 * se, 0);
		L->w_down = rm_tensor(rm, "ffn_down", sp->wtype, sp->n_ff, E, 1.5 * br * sf, 0);
	}
	return rm;
}

void rm_free(struct rmodel *rm)
{
	if (rm == NULL)
		return;
	for (int i = 0; i < rm->n_blobs; i++)
		free(rm->blobs[i]);
	free(rm->m.layers);
	free(rm);
}

/* SmolLM2-135M's shape with the Q4_1 file's types. */
const struct rspec smol_spec = {
	"llama", 30, 576, 9, 3, 1536, 49152, DT_Q4_1, DT_Q8_0, false, ROPE_NORM, 100000.0f,
};

/* -------------------------------------------------------------- engines */

/* An engine on backend be (reference: the CPU's plain-float path); exits on
 * failure since nothing else can run. */
struct engine *mk_engine(const struct model *m, enum engine_backend be, bool reference,
                         uint32_t n_ctx)
{
	struct engine_config cfg;
	struct err e;
	struct engine *eng = NULL;
	engine_config_default(&cfg);
	cfg.backend = be;
	cfg.reference = reference;
	cfg.n_ctx = n_ctx;
	if (engine_create(&eng, m, &cfg, &e) != KVS_OK) {
		fprintf(stderr, "gpu-check: engine (%s): %s\n",
		        be == ENGINE_BACKEND_CUDA ? "cuda"
		                : reference       ? "cpu reference"
		                                  : "cpu",
		        e.msg);
		exit(1);
	}
	return eng;
}

/* Retention features of the next forwards (engine_batch). */
static bool g_attn_kv;
static uint32_t g_n_global;
static int32_t g_dist_cap;
const struct engine_sparse *g_sparse;
bool g_want_sel;

/* Forward n tokens at positions pos0.. into slots slot0..; visible: the
 * list, or NULL for slots 0 .. n_vis-1. Exits on failure. */
void fwd(struct engine *eng, const int32_t *toks, uint32_t n, int32_t pos0, uint32_t slot0,
         const uint32_t *vis, uint32_t n_vis, enum engine_logits lm, bool attn, bool sur,
         struct engine_out *o)
{
	int32_t *pos = xmallocarray(n, sizeof(int32_t));
	uint32_t *slot = xmallocarray(n, sizeof(uint32_t));
	for (uint32_t i = 0; i < n; i++) {
		pos[i] = pos0 + (int32_t)i;
		slot[i] = slot0 + i;
	}
	struct engine_batch b;
	memset(&b, 0, sizeof(b));
	b.n_tokens = n;
	b.tokens = toks;
	b.pos = pos;
	b.slot = slot;
	b.n_visible = n_vis;
	b.visible = vis;
	b.logits = lm;
	b.want_attn = attn;
	b.want_surprisal = sur;
	b.want_attn_kv = g_attn_kv;
	b.n_global = KVS_MIN(g_n_global, n_vis);
	b.dist_cap = g_dist_cap;
	b.sparse = g_sparse;
	b.want_sel = g_want_sel;
	struct err e;
	if (engine_forward(eng, &b, o, &e) != KVS_OK) {
		fprintf(stderr, "gpu-check: forward of %u tokens on %s: %s\n", n, engine_backend_name(eng),
		        e.msg);
		exit(1);
	}
	free(pos);
	free(slot);
}

/* A copy of n floats. */
float *dup_f(const float *p, size_t n)
{
	float *q = xmallocarray(n ? n : 1, sizeof(float));
	memcpy(q, p, n * sizeof(float));
	return q;
}

uint32_t argmax(const float *x, uint32_t n)
{
	uint32_t best = 0;
	float bv = x[0];
	for (uint32_t i = 1; i < n; i++)
		if (x[i] > bv) {
			bv = x[i];
			best = i;
		}
	return best;
}

/* Top-1 minus top-2 of a row. */
static double top_gap(const float *x, uint32_t n)
{
	double a = -INFINITY, b = -INFINITY;
	for (uint32_t i = 0; i < n; i++) {
		if (x[i] > a) {
			b = a;
			a = x[i];
		} else if (x[i] > b) {
			b = x[i];
		}
	}
	return a - b;
}


void cmp_rows(struct cmp *c, const float *a, const float *b, uint32_t n_rows, uint32_t n)
{
	for (uint32_t r = 0; r < n_rows; r++) {
		const float *x = a + (size_t)r * n, *y = b + (size_t)r * n;
		double row_max = 0;
		for (uint32_t i = 0; i < n; i++) {
			double d = fabs((double)x[i] - y[i]);
			if (!(d <= row_max)) /* NaN counts as worst */
				row_max = isnan(d) ? INFINITY : d;
			c->max_ref = fmax(c->max_ref, fabs((double)x[i]));
		}
		c->max_abs = fmax(c->max_abs, row_max);
		c->rows++;
		if (argmax(x, n) == argmax(y, n))
			c->top1_same++;
		else if (top_gap(x, n) <= 2 * row_max)
			c->ties++;
		else
			c->bad++;
	}
}

double cmp_rel(const struct cmp *c)
{
	return c->max_abs / fmax(c->max_ref, 1e-6);
}

void cmp_check(const char *name, const struct cmp *c, double tol)
{
	check(cmp_rel(c) <= tol && c->bad == 0, name,
	      "max|d| %.3g (rel %.2e, tol %.1e), top-1 %llu/%llu same, %llu near ties, %llu real "
	      "disagreements",
	      c->max_abs, cmp_rel(c), tol, (unsigned long long)c->top1_same,
	      (unsigned long long)c->rows, (unsigned long long)c->ties, (unsigned long long)c->bad);
}

/* Max |a - b| over n values (NaN: infinity). */
static double max_abs_diff(const float *a, const float *b, size_t n)
{
	double m = 0;
	for (size_t i = 0; i < n; i++) {
		double d = fabs((double)a[i] - b[i]);
		if (!(d <= m))
			m = isnan(d) ? INFINITY : d;
	}
	return m;
}

/* Random token ids. */
int32_t *rand_tokens(uint32_t n, uint32_t n_vocab)
{
	int32_t *t = xmallocarray(n, sizeof(int32_t));
	for (uint32_t i = 0; i < n; i++)
		t[i] = (int32_t)rnd_u32(n_vocab);
	return t;
}

/* -------------------------------------------------------------- parity */

struct noise {
	double prefill, decode, attn; /* CPU vs its reference path */
};

/* Decode toks[0..n) one at a time into an empty cache (the decode path
 * only); rows (n, n_vocab) of logits and the last step's attention. */
static void decode_run(struct engine *eng, const int32_t *toks, uint32_t n, float *rows,
                       float *attn, size_t n_attn)
{
	struct engine_out o;
	uint32_t nv = engine_model(eng)->hp.n_vocab;
	engine_kv_clear(eng);
	for (uint32_t t = 0; t < n; t++) {
		bool last = t + 1 == n;
		fwd(eng, toks + t, 1, (int32_t)t, t, NULL, t + 1, ENGINE_LOGITS_LAST, last, false, &o);
		memcpy(rows + (size_t)t * nv, o.logits, nv * sizeof(float));
		if (last)
			memcpy(attn, o.attn, n_attn * sizeof(float));
	}
}

/* Calibrate and compare on short inputs: a prefill (all rows) and a run of
 * decode steps from an empty cache (the decode kernels alone, last step
 * with attention probabilities), on the CPU, the CPU's float path and the
 * backend under test. */
static void parity_basic(const struct model *m, const char *tag, struct engine *cpu,
                         struct engine *dut, struct noise *nzp, bool calibrate)
{
	const struct hparams *hp = &m->hp;
	uint32_t nv = hp->n_vocab, P = 96, D = 24;
	struct noise nz = *nzp;
	int32_t *toks = rand_tokens(P, nv);
	struct engine_out o;
	char name[96];
	size_t na = (size_t)hp->n_layer * hp->n_head * D;

	engine_kv_clear(cpu);
	engine_kv_clear(dut);
	fwd(cpu, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_ALL, false, false, &o);
	float *lc = dup_f(o.logits, (size_t)P * nv);
	fwd(dut, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_ALL, false, false, &o);
	float *ld = dup_f(o.logits, (size_t)P * nv);
	float *dc = xmallocarray((size_t)D * nv, sizeof(float)),
	      *dd = xmallocarray((size_t)D * nv, sizeof(float));
	float *ac = xmallocarray(na, sizeof(float)), *ad = xmallocarray(na, sizeof(float));
	decode_run(cpu, toks, D, dc, ac, na);
	decode_run(dut, toks, D, dd, ad, na);

	if (calibrate) {
		struct engine *ref = mk_engine(m, ENGINE_BACKEND_CPU, true, 1024);
		struct cmp c = { 0 };
		fwd(ref, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_ALL, false, false, &o);
		cmp_rows(&c, o.logits, lc, P, nv);
		nz.prefill = cmp_rel(&c);
		float *dr = xmallocarray((size_t)D * nv, sizeof(float)),
		      *ar = xmallocarray(na, sizeof(float));
		decode_run(ref, toks, D, dr, ar, na);
		memset(&c, 0, sizeof(c));
		cmp_rows(&c, dr, dc, D, nv);
		nz.decode = cmp_rel(&c);
		nz.attn = max_abs_diff(ar, ac, na);
		free(dr);
		free(ar);
		engine_free(ref);
		printf("     %s: the CPU's own rounding (int8 vs float path): prefill rel %.2e, decode rel "
		       "%.2e, attention %.2e\n",
		       tag, nz.prefill, nz.decode, nz.attn);
	}
	struct cmp c = { 0 };
	cmp_rows(&c, lc, ld, P, nv);
	snprintf(name, sizeof(name), "%s prefill logits", tag);
	cmp_check(name, &c, fmax(2e-2, 3 * nz.prefill));
	memset(&c, 0, sizeof(c));
	cmp_rows(&c, dc, dd, D, nv);
	snprintf(name, sizeof(name), "%s decode logits", tag);
	cmp_check(name, &c, fmax(5e-3, 3 * nz.decode));
	double da = max_abs_diff(ac, ad, na);
	double worst_sum = 0;
	for (size_t r = 0; r < (size_t)hp->n_layer * hp->n_head; r++) {
		double sum = 0;
		for (uint32_t j = 0; j < D; j++)
			sum += ad[r * D + j];
		worst_sum = fmax(worst_sum, fabs(sum - 1.0));
	}
	snprintf(name, sizeof(name), "%s attention probabilities", tag);
	check(da <= fmax(1e-2, 3 * nz.attn) && worst_sum < 1e-3, name,
	      "max|d| %.3g (tol %.1e), rows sum to 1 within %.1e", da, fmax(1e-2, 3 * nz.attn),
	      worst_sum);
	free(toks);
	free(lc);
	free(ld);
	free(dc);
	free(dd);
	free(ac);
	free(ad);
	*nzp = nz;
}

/* A long prompt (several prefill steps) with all rows and statistics. */
static void parity_long(const struct model *m, struct engine *cpu, struct engine *dut,
                        const struct noise *nz)
{
	uint32_t nv = m->hp.n_vocab, P = 700;
	int32_t *toks = rand_tokens(P, nv);
	struct engine_out o;
	engine_kv_clear(cpu);
	engine_kv_clear(dut);
	fwd(cpu, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_ALL, false, true, &o);
	float *lc = dup_f(o.logits, (size_t)P * nv), *sc = dup_f(o.surprisal, P),
	      *ec = dup_f(o.entropy, P);
	fwd(dut, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_ALL, false, true, &o);
	struct cmp c = { 0 };
	cmp_rows(&c, lc, o.logits, P, nv);
	cmp_check("700-token prefill logits", &c, fmax(2e-2, 3 * nz->prefill));
	/* a logit error d moves log-softmax by at most 2d */
	double ds = 0, de = 0;
	bool nan_ok = isnan(sc[P - 1]) && isnan(o.surprisal[P - 1]);
	for (uint32_t i = 0; i + 1 < P; i++)
		ds = fmax(ds, fabs((double)sc[i] - o.surprisal[i]));
	for (uint32_t i = 0; i < P; i++)
		de = fmax(de, fabs((double)ec[i] - o.entropy[i]));
	check(ds <= 2 * c.max_abs + 1e-3 && de <= 2 * c.max_abs + 1e-3 && nan_ok,
	      "700-token surprisal and entropy", "max|d| %.3g / %.3g nats (bound %.3g), last NaN %s",
	      ds, de, 2 * c.max_abs + 1e-3, nan_ok ? "yes" : "no");
	free(toks);
	free(lc);
	free(sc);
	free(ec);
}

/* Greedy continuations in lockstep: both engines take their own argmax. */
static void parity_greedy(const struct model *m, struct engine *cpu, struct engine *dut,
                          const struct noise *nz, int n_prompts, int n_gen)
{
	uint32_t nv = m->hp.n_vocab;
	int identical = 0, ties = 0, bad = 0;
	struct cmp all = { 0 };
	for (int p = 0; p < n_prompts; p++) {
		uint32_t P = 8 + rnd_u32(57);
		int32_t *toks = rand_tokens(P, nv);
		struct engine_out o;
		engine_kv_clear(cpu);
		engine_kv_clear(dut);
		fwd(cpu, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_LAST, false, false, &o);
		float *lc = dup_f(o.logits, nv);
		fwd(dut, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_LAST, false, false, &o);
		int outcome = 0; /* 0 identical, 1 tie, 2 bad */
		for (int t = 0; t < n_gen; t++) {
			int32_t tc = (int32_t)argmax(lc, nv), td = (int32_t)argmax(o.logits, nv);
			struct cmp c = { 0 };
			cmp_rows(&c, lc, o.logits, 1, nv);
			all.max_abs = fmax(all.max_abs, c.max_abs);
			all.max_ref = fmax(all.max_ref, c.max_ref);
			all.rows++;
			if (tc != td) {
				outcome = c.ties ? 1 : 2;
				printf("     prompt %d: step %d: CPU %d, %s %d (CPU top-2 gap %.3g, row max|d| "
				       "%.3g)\n",
				       p, t, tc, engine_backend_name(dut), td, top_gap(lc, nv), c.max_abs);
				break;
			}
			uint32_t at = P + (uint32_t)t;
			fwd(cpu, &tc, 1, (int32_t)at, at, NULL, at + 1, ENGINE_LOGITS_LAST, false, false, &o);
			memcpy(lc, o.logits, nv * sizeof(float));
			fwd(dut, &td, 1, (int32_t)at, at, NULL, at + 1, ENGINE_LOGITS_LAST, false, false, &o);
		}
		identical += outcome == 0;
		ties += outcome == 1;
		bad += outcome == 2;
		free(toks);
		free(lc);
	}
	check(bad == 0, "greedy continuations",
	      "%d of %d prompts x %d tokens identical, %d left at a near tie, %d diverged", identical,
	      n_prompts, n_gen, ties, bad);
	check(cmp_rel(&all) <= fmax(2e-2, 3 * nz->prefill), "greedy decode logits",
	      "max|d| %.3g over %llu steps (rel %.2e)", all.max_abs, (unsigned long long)all.rows,
	      cmp_rel(&all));
}

/* A decode step over a shuffled subset of the cache (sinks, a random half
 * of the middle, the recent window) with attention probabilities. */
static void parity_subset(const struct model *m, struct engine *cpu, struct engine *dut,
                          const struct noise *nz)
{
	const struct hparams *hp = &m->hp;
	uint32_t nv = hp->n_vocab, P = 300;
	int32_t *toks = rand_tokens(P + 1, nv);
	uint32_t *vis = xmallocarray(P + 1, sizeof(uint32_t)), n = 0;
	for (uint32_t s = 0; s < P; s++)
		if (s < 4 || s >= P - 32 || rnd() > 0)
			vis[n++] = s;
	vis[n++] = P;
	for (uint32_t i = n - 1; i > 0; i--) {
		uint32_t j = rnd_u32(i + 1), t = vis[i];
		vis[i] = vis[j];
		vis[j] = t;
	}
	struct engine_out o;
	engine_kv_clear(cpu);
	engine_kv_clear(dut);
	fwd(cpu, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_NONE, false, false, &o);
	fwd(dut, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_NONE, false, false, &o);
	fwd(cpu, toks + P, 1, P, P, vis, n, ENGINE_LOGITS_LAST, true, false, &o);
	size_t na = (size_t)hp->n_layer * hp->n_head * n;
	float *lc = dup_f(o.logits, nv), *ac = dup_f(o.attn, na);
	fwd(dut, toks + P, 1, P, P, vis, n, ENGINE_LOGITS_LAST, true, false, &o);
	struct cmp c = { 0 };
	cmp_rows(&c, lc, o.logits, 1, nv);
	cmp_check("visible subset: logits", &c, fmax(2e-2, 3 * nz->prefill));
	double da = max_abs_diff(ac, o.attn, na);
	check(da <= fmax(1e-2, 3 * nz->attn), "visible subset: attention",
	      "%u of %u slots, shuffled: max|d| %.3g", n, P + 1, da);
	free(toks);
	free(vis);
	free(lc);
	free(ac);
}

/* Retention features: LM-Infinite's distance cap (4 globals, cap 64) and
 * attention summed per KV head, over a prefill (many queries) and a decode
 * step over a shuffled visible list. */
static void parity_retention(const struct model *m, struct engine *cpu, struct engine *dut,
                             const struct noise *nz)
{
	const struct hparams *hp = &m->hp;
	uint32_t nv = hp->n_vocab, P = 300;
	int32_t *toks = rand_tokens(P + 1, nv);
	size_t nk = (size_t)hp->n_layer * hp->n_head_kv;
	struct engine_out o;
	g_attn_kv = true;
	g_n_global = 4;
	g_dist_cap = 64;
	engine_kv_clear(cpu);
	engine_kv_clear(dut);
	fwd(cpu, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_ALL, false, false, &o);
	float *lc = dup_f(o.logits, (size_t)P * nv), *kc = dup_f(o.attn_kv, nk * P);
	fwd(dut, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_ALL, false, false, &o);
	struct cmp c = { 0 };
	cmp_rows(&c, lc, o.logits, P, nv);
	cmp_check("distance cap: prefill logits", &c, fmax(2e-2, 3 * nz->prefill));
	struct cmp ck = { 0 };
	cmp_rows(&ck, kc, o.attn_kv, (uint32_t)nk, P);
	check(cmp_rel(&ck) <= fmax(1e-2, 3 * nz->attn), "attention per KV head: prefill",
	      "sums over %u queries: max|d| %.3g (rel %.2e)", P, ck.max_abs, cmp_rel(&ck));
	/* one decode step over a shuffled list whose first 4 entries are the globals */
	uint32_t *vis = xmallocarray(P + 1, sizeof(uint32_t)), n = 0;
	for (uint32_t s = 0; s <= P; s++)
		vis[n++] = s;
	for (uint32_t i = n - 1; i > 4; i--) {
		uint32_t j = 4 + rnd_u32(i - 3), t = vis[i];
		vis[i] = vis[j];
		vis[j] = t;
	}
	fwd(cpu, toks + P, 1, P, P, vis, n, ENGINE_LOGITS_LAST, true, false, &o);
	float *dc = dup_f(o.logits, nv), *ac = dup_f(o.attn, (size_t)hp->n_layer * hp->n_head * n);
	float *kd = dup_f(o.attn_kv, nk * n);
	fwd(dut, toks + P, 1, P, P, vis, n, ENGINE_LOGITS_LAST, true, false, &o);
	memset(&c, 0, sizeof(c));
	cmp_rows(&c, dc, o.logits, 1, nv);
	cmp_check("distance cap: decode logits", &c, fmax(2e-2, 3 * nz->prefill));
	double da = max_abs_diff(ac, o.attn, (size_t)hp->n_layer * hp->n_head * n);
	double dk = max_abs_diff(kd, o.attn_kv, nk * n);
	check(da <= fmax(1e-2, 3 * nz->attn) && dk <= 16 * fmax(1e-2, 3 * nz->attn),
	      "distance cap: decode attention", "probabilities max|d| %.3g, per KV head %.3g", da, dk);
	g_attn_kv = false;
	g_n_global = 0;
	g_dist_cap = 0;
	free(toks);
	free(lc);
	free(kc);
	free(vis);
	free(dc);
	free(ac);
	free(kd);
}

/* Compaction: copy every slot but those with s % 3 == 1 (s >= 4) down,
 * renumber positions, then decode; cached vectors must move bit for bit. */
static void parity_compact(const struct model *m, struct engine *cpu, struct engine *dut,
                           const struct noise *nz)
{
	const struct hparams *hp = &m->hp;
	uint32_t nv = hp->n_vocab, P = 300, hd = hp->head_dim;
	int32_t *toks = rand_tokens(P + 8, nv);
	struct engine *engs[2] = { cpu, dut };
	uint32_t *dst = xmallocarray(P, sizeof(uint32_t)), *src = xmallocarray(P, sizeof(uint32_t));
	uint32_t k = 0;
	for (uint32_t s = 0; s < P; s++)
		if (s < 4 || s % 3 != 1) {
			src[k] = s;
			dst[k] = k;
			k++;
		}
	struct engine_out o;
	float *lc = NULL;
	struct cmp c = { 0 };
	uint64_t moved_bad = 0, moved = 0;
	struct err e;
	for (int w = 0; w < 2; w++) {
		struct engine *eng = engs[w];
		engine_kv_clear(eng);
		fwd(eng, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_NONE, false, false, &o);
		/* snapshot some vectors before the move */
		uint32_t probe[4] = { src[4], src[k / 2], src[k - 1], src[k - 2] };
		float before[4][2][256], after[256];
		uint32_t layer = hp->n_layer - 1, head = hp->n_head_kv - 1;
		for (int i = 0; i < 4; i++)
			for (int v = 0; v < 2; v++)
				engine_kv_read(eng, layer, probe[i], head, v == 1, false, before[i][v], &e);
		if (engine_kv_copy(eng, dst, src, k, &e) != KVS_OK) {
			fprintf(stderr, "gpu-check: kv_copy: %s\n", e.msg);
			exit(1);
		}
		for (uint32_t s = 0; s < P; s++)
			engine_kv_set_pos(eng, s, s < k ? (int32_t)s : -1, &e);
		uint32_t probe_dst[4] = { 4, k / 2, k - 1, k - 2 };
		for (int i = 0; i < 4; i++)
			for (int v = 0; v < 2; v++) {
				engine_kv_read(eng, layer, probe_dst[i], head, v == 1, false, after, &e);
				moved++;
				moved_bad += memcmp(after, before[i][v], hd * sizeof(float)) != 0;
			}
		/* decode a few tokens over the compacted cache */
		for (uint32_t t = 0; t < 8; t++) {
			uint32_t at = k + t;
			fwd(eng, toks + P + t, 1, (int32_t)at, at, NULL, at + 1, ENGINE_LOGITS_LAST, false,
			    false, &o);
			if (w == 0) {
				lc = lc ? lc : xmallocarray((size_t)8 * nv, sizeof(float));
				memcpy(lc + (size_t)t * nv, o.logits, nv * sizeof(float));
			} else {
				cmp_rows(&c, lc + (size_t)t * nv, o.logits, 1, nv);
			}
		}
	}
	check(moved_bad == 0, "compaction: moved K/V bit-exact", "%llu of %llu vectors differ",
	      (unsigned long long)moved_bad, (unsigned long long)moved);
	cmp_check("compaction: decode logits", &c, fmax(2e-2, 3 * nz->prefill));
	free(toks);
	free(dst);
	free(src);
	free(lc);
}

/* Saved slots: the raw K/V of a prefilled cache moves from one backend to
 * the other (engine_kv_save, engine_kv_load, as a session snapshot does),
 * comes back out bit for bit, and decoding over it matches decoding over the
 * cache it came from. Both directions. */
static void parity_snapshot(const struct model *m, struct engine *cpu, struct engine *dut,
                            const struct noise *nz)
{
	uint32_t nv = m->hp.n_vocab, P = 200, T = 6;
	uint64_t bps = engine_kv_bytes_per_slot(cpu);
	check(bps == engine_kv_bytes_per_slot(dut), "snapshot: slot sizes agree",
	      "%llu bytes per slot on the CPU, %llu on the device", (unsigned long long)bps,
	      (unsigned long long)engine_kv_bytes_per_slot(dut));
	if (bps != engine_kv_bytes_per_slot(dut))
		return;
	int32_t *toks = rand_tokens(P + T, nv);
	uint8_t *raw = xmalloc((size_t)P * bps), *back = xmalloc((size_t)P * bps);
	float *ref = xmallocarray((size_t)T * nv, sizeof(float));
	struct engine *from[2] = { cpu, dut }, *to[2] = { dut, cpu };
	static const char *const names[2][2] = {
		{ "snapshot: CPU slots round-trip through the device",
		  "snapshot: CPU slots decoded on the device" },
		{ "snapshot: device slots round-trip through the CPU",
		  "snapshot: device slots decoded on the CPU" },
	};
	struct engine_out o;
	struct err e = { 0 };
	for (int w = 0; w < 2; w++) {
		engine_kv_clear(from[w]);
		engine_kv_clear(to[w]);
		fwd(from[w], toks, P, 0, 0, NULL, P, ENGINE_LOGITS_NONE, false, false, &o);
		bool ok = true;
		for (uint32_t s = 0; ok && s < P; s++)
			ok = engine_kv_save(from[w], s, raw + (size_t)s * bps, &e) == KVS_OK &&
			        engine_kv_load(to[w], s, (int32_t)s, raw + (size_t)s * bps, &e) == KVS_OK &&
			        engine_kv_save(to[w], s, back + (size_t)s * bps, &e) == KVS_OK;
		bool same = ok && memcmp(raw, back, (size_t)P * bps) == 0;
		check(same, names[w][0], "%s",
		      !ok            ? e.msg
		              : same ? "every byte read back unchanged"
		                     : "the bytes read back differ");
		if (!ok)
			continue;
		struct cmp c = { 0 };
		for (uint32_t t = 0; t < T; t++) {
			fwd(from[w], toks + P + t, 1, (int32_t)(P + t), P + t, NULL, P + t + 1,
			    ENGINE_LOGITS_LAST, false, false, &o);
			memcpy(ref + (size_t)t * nv, o.logits, nv * sizeof(float));
		}
		for (uint32_t t = 0; t < T; t++) {
			fwd(to[w], toks + P + t, 1, (int32_t)(P + t), P + t, NULL, P + t + 1,
			    ENGINE_LOGITS_LAST, false, false, &o);
			cmp_rows(&c, ref + (size_t)t * nv, o.logits, 1, nv);
		}
		cmp_check(names[w][1], &c, fmax(2e-2, 3 * nz->prefill));
	}
	free(toks);
	free(raw);
	free(back);
	free(ref);
}

/* Every parity check on model m. */
static void parity_model(const struct model *m, const char *tag, bool full)
{
	printf("== parity: %s (%s)\n", tag, m->name ? m->name : "?");
	struct engine *cpu = mk_engine(m, ENGINE_BACKEND_CPU, false, 1024);
	struct engine *dut = mk_engine(m, g_b, false, 1024);
	printf("     CPU %s; under test %s %s\n", engine_isa_name(cpu), engine_backend_name(dut),
	       engine_isa_name(dut));
	struct noise nz = { 0, 0, 0 };
	parity_basic(m, tag, cpu, dut, &nz, true);
	if (full) {
		parity_long(m, cpu, dut, &nz);
		parity_subset(m, cpu, dut, &nz);
		parity_retention(m, cpu, dut, &nz);
		parity_compact(m, cpu, dut, &nz);
		parity_snapshot(m, cpu, dut, &nz);
		parity_greedy(m, cpu, dut, &nz, g_prompts, g_gen);
		if (g_b == ENGINE_BACKEND_CUDA) {
			/* the plain decode path: separate norms, direct launches */
			setenv("KVSCOPE_CUDA_FUSE", "0", 1);
			setenv("KVSCOPE_CUDA_GRAPHS", "0", 1);
			struct engine *plain = mk_engine(m, g_b, false, 1024);
			char t2[96];
			snprintf(t2, sizeof(t2), "%s unfused, no graphs", tag);
			parity_basic(m, t2, cpu, plain, &nz, false);
			engine_free(plain);
			unsetenv("KVSCOPE_CUDA_FUSE");
			unsetenv("KVSCOPE_CUDA_GRAPHS");
		}
	} else {
		parity_compact(m, cpu, dut, &nz);
		parity_greedy(m, cpu, dut, &nz, 2, 16);
	}
	engine_free(cpu);
	engine_free(dut);
}

static int cmd_parity(const char *model_path)
{
	if (model_path != NULL) {
		struct model *m = NULL;
		struct err e;
		if (model_load(&m, model_path, &e) != KVS_OK) {
			fprintf(stderr, "gpu-check: %s\n", e.msg);
			return 2;
		}
		parity_model(m, "model file", true);
		model_free(m);
	}
	struct rmodel *rm = rm_build(&smol_spec, 11);
	parity_model(&rm->m, "smollm2-shape", true);
	rm_free(rm);
	table_row("parity (see PASS/FAIL lines): %d failures", g_fail);
	return 0;
}

/* One small model per weight type, plus qwen2-style and wide-head ones. */
static int cmd_types(void)
{
	static const uint32_t types[] = { DT_F32,  DT_F16,  DT_BF16, DT_Q4_0, DT_Q4_1, DT_Q5_0,
		                              DT_Q5_1, DT_Q8_0, DT_Q4_K, DT_Q5_K, DT_Q6_K };
	int before = g_fail;
	for (size_t i = 0; i < KVS_ARRAY_LEN(types); i++) {
		/* 768 = 3 x 256 and 1536 = 6 x 256 suit the k-quants; GQA 3 */
		struct rspec sp = { "llama", 2,        768,      12,    4,         1536,
			                2048,    types[i], types[i], false, ROPE_NORM, 10000.0f };
		struct rmodel *rm = rm_build(&sp, 100 + i);
		char tag[48];
		snprintf(tag, sizeof(tag), "type %s", dtype_name(types[i]));
		parity_model(&rm->m, tag, false);
		rm_free(rm);
	}
	/* qwen2: rotate-half RoPE, q/k/v biases, 7 query heads per KV head */
	struct rspec qw = { "qwen2", 2,       896,     14,   2,         1024,
		                4096,    DT_Q8_0, DT_Q8_0, true, ROPE_NEOX, 1000000.0f };
	struct rmodel *rm = rm_build(&qw, 300);
	parity_model(&rm->m, "qwen2-style Q8_0", false);
	rm_free(rm);
	/* 128-dim heads, 4 per KV head, F16 */
	struct rspec wide = { "llama", 2,      512,     4,     1,         1024,
		                  2048,    DT_F16, DT_Q4_0, false, ROPE_NORM, 500000.0f };
	rm = rm_build(&wide, 301);
	parity_model(&rm->m, "128-dim heads F16", false);
	rm_free(rm);
	table_row("types (11 weight types, qwen2-style, 128-dim heads): %d failures", g_fail - before);
	return 0;
}

/* ---------------------------------------------------------------- bench */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(double), cmp_double);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Decode n_steps tokens after depth cached ones: median wall and GPU ms. */
void bench_decode(const struct model *m, uint32_t depth, bool graphs, double *wall_ms,
                  double *gpu_ms, double *sample_us)
{
	setenv("KVSCOPE_CUDA_GRAPHS", graphs ? "1" : "0", 1);
	uint32_t steps = g_quick ? 32 : 128, nv = m->hp.n_vocab;
	struct engine *eng = mk_engine(m, g_b, false, depth + steps + 8);
	int32_t *toks = rand_tokens(depth, nv);
	struct engine_out o;
	fwd(eng, toks, depth, 0, 0, NULL, depth, ENGINE_LOGITS_NONE, false, false, &o);
	double *w = xmallocarray(steps, sizeof(double)), *g = xmallocarray(steps, sizeof(double));
	double *s = xmallocarray(steps, sizeof(double));
	int32_t tok = toks[depth - 1];
	gpu_timing(true);
	for (uint32_t t = 0; t < steps; t++) {
		uint32_t at = depth + t;
		double t0 = clock_now_ms();
		fwd(eng, &tok, 1, (int32_t)at, at, NULL, at + 1, ENGINE_LOGITS_LAST, false, false, &o);
		double t1 = clock_now_ms();
		tok = (int32_t)argmax(o.logits, nv); /* host sampling: greedy */
		double t2 = clock_now_ms();
		w[t] = t2 - t0;
		s[t] = (t2 - t1) * 1000.0;
		g[t] = gpu_last_ms();
	}
	gpu_timing(false);
	/* the first steps capture graphs: leave out the first eighth */
	int skip = (int)steps / 8;
	*wall_ms = median(w + skip, (int)steps - skip);
	*gpu_ms = median(g + skip, (int)steps - skip);
	*sample_us = median(s + skip, (int)steps - skip);
	free(w);
	free(g);
	free(s);
	free(toks);
	engine_free(eng);
	unsetenv("KVSCOPE_CUDA_GRAPHS");
}

/* Prefill n tokens into an empty cache: median wall and GPU ms of reps. */
static void bench_prefill(const struct model *m, uint32_t n, double *wall_ms, double *gpu_ms)
{
	struct engine *eng = mk_engine(m, g_b, false, n + 8);
	int32_t *toks = rand_tokens(n, m->hp.n_vocab);
	struct engine_out o;
	int reps = g_quick ? 2 : 4;
	double w[8], g[8];
	fwd(eng, toks, n, 0, 0, NULL, n, ENGINE_LOGITS_LAST, false, false, &o); /* warm up */
	gpu_timing(true);
	for (int r = 0; r < reps; r++) {
		engine_kv_clear(eng);
		double t0 = clock_now_ms();
		fwd(eng, toks, n, 0, 0, NULL, n, ENGINE_LOGITS_LAST, false, false, &o);
		w[r] = clock_now_ms() - t0;
		g[r] = gpu_last_ms();
	}
	gpu_timing(false);
	*wall_ms = median(w, reps);
	*gpu_ms = median(g, reps);
	free(toks);
	engine_free(eng);
}

static int cmd_bench(const char *model_path)
{
	struct model *mf = NULL;
	struct rmodel *rm = NULL;
	const struct model *m;
	if (model_path != NULL) {
		struct err e;
		if (model_load(&mf, model_path, &e) != KVS_OK) {
			fprintf(stderr, "gpu-check: %s\n", e.msg);
			return 2;
		}
		m = mf;
	} else {
		rm = rm_build(&smol_spec, 12);
		m = &rm->m;
	}
	printf("== bench: %s, batch 1\n", m->name ? m->name : "?");
	if (g_b == ENGINE_BACKEND_CUDA) {
		/* the unfused kernels (separate norms), graphs on */
		double w, g, s;
		setenv("KVSCOPE_CUDA_FUSE", "0", 1);
		bench_decode(m, g_depths[0], true, &w, &g, &s);
		unsetenv("KVSCOPE_CUDA_FUSE");
		printf("     decode @%-6u unfused, graphs on %8.1f tok/s wall (%.3f ms), %8.1f tok/s GPU "
		       "(%.3f ms)\n",
		       g_depths[0], 1000.0 / w, w, g > 0 ? 1000.0 / g : 0.0, g);
		table_row("| decode, %5u, unfused | %-6s | %10.1f | %18.1f |", g_depths[0], "on",
		          1000.0 / w, g > 0 ? 1000.0 / g : 0.0);
	}
	for (int i = 0; i < g_n_depths; i++) {
		for (int gr = 1; gr >= 0; gr--) {
			double w, g, s;
			bench_decode(m, g_depths[i], gr == 1, &w, &g, &s);
			printf("     decode @%-6u graphs %-3s  %8.1f tok/s wall (%.3f ms), %8.1f tok/s GPU "
			       "(%.3f ms), host argmax %.1f us\n",
			       g_depths[i], gr ? "on" : "off", 1000.0 / w, w, g > 0 ? 1000.0 / g : 0.0, g, s);
			table_row("| decode, %5u cached | %-6s | %10.1f | %18.1f |", g_depths[i],
			          gr ? "on" : "off", 1000.0 / w, g > 0 ? 1000.0 / g : 0.0);
			if (gr && g_depths[i] == 128)
				goal_note("decode at 128 cached tokens (wall)", 1000.0 / w, 5000, "tok/s");
			if (gr && g_depths[i] == 32768)
				goal_note("decode at 32k cached tokens, dense (wall)", 1000.0 / w, 1000, "tok/s");
		}
	}
	for (int i = 0; i < g_n_pre; i++) {
		double w, g;
		bench_prefill(m, g_pre[i], &w, &g);
		printf("     prefill %-6u                %8.1f tok/s wall (%.1f ms), %8.1f tok/s GPU (%.1f "
		       "ms)\n",
		       g_pre[i], g_pre[i] * 1000.0 / w, w, g > 0 ? g_pre[i] * 1000.0 / g : 0.0, g);
		table_row("| prefill %5u        | -      | %10.1f | %18.1f |", g_pre[i],
		          g_pre[i] * 1000.0 / w, g > 0 ? g_pre[i] * 1000.0 / g : 0.0);
		if (g_pre[i] == 512)
			goal_note("prefill of 512 tokens (wall)", g_pre[i] * 1000.0 / w, 50000, "tok/s");
	}
	uint64_t cap = 0, hits = 0;
	gpu_graph_counts(&cap, &hits);
	printf("     decode graphs: %llu captured, %llu replays\n", (unsigned long long)cap,
	       (unsigned long long)hits);
	rm_free(rm);
	model_free(mf);
	return 0;
}

/* ------------------------------------------------------------------ main */

static int cmd_info(void)
{
	struct gpu_info gi;
	struct err e;
	if (gpu_probe(&gi, &e) != KVS_OK) {
		printf("no GPU: %s\n", e.msg);
		return g_b == ENGINE_BACKEND_CUDA ? 1 : 0;
	}
	printf("GPU %s, %.1f GiB, compute capability %d.%d, driver %d, runtime %d\n", gi.name,
	       (double)gi.mem_bytes / (1u << 30), gi.cc_major, gi.cc_minor, gi.driver_version,
	       gi.runtime_version);
	table_row("device: %s (cc %d.%d, driver %d, runtime %d)", gi.name, gi.cc_major, gi.cc_minor,
	          gi.driver_version, gi.runtime_version);
	return 0;
}

/* "128,4096": up to 8 positive counts. */
static int parse_list(const char *s, uint32_t *out, int *n)
{
	int k = 0;
	while (*s && k < 8) {
		char *end;
		long v = strtol(s, &end, 10);
		if (end == s || v <= 0 || v > (1L << 22))
			return -1;
		out[k++] = (uint32_t)v;
		s = *end == ',' ? end + 1 : end;
		if (*end != ',' && *end != '\0')
			return -1;
	}
	*n = k;
	return k > 0 ? 0 : -1;
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: gpu-check info|parity|types|bench|sparse|sparse-parity|cold|launches|all "
	        "[--model PATH] [--b "
	        "cuda|cpu] "
	        "[--prompts N] [--gen N] [--depths A,B] [--prefill A,B] [--quick]\n");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage();
		return 2;
	}
	const char *cmd = argv[1], *model = NULL;
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
			model = argv[++i];
		} else if (strcmp(argv[i], "--b") == 0 && i + 1 < argc) {
			struct err e;
			if (engine_backend_parse(argv[++i], &g_b, &e) != KVS_OK) {
				fprintf(stderr, "gpu-check: %s\n", e.msg);
				return 2;
			}
		} else if (strcmp(argv[i], "--prompts") == 0 && i + 1 < argc) {
			g_prompts = atoi(argv[++i]);
		} else if (strcmp(argv[i], "--gen") == 0 && i + 1 < argc) {
			g_gen = atoi(argv[++i]);
		} else if ((strcmp(argv[i], "--depths") == 0 || strcmp(argv[i], "--prefill") == 0) &&
		           i + 1 < argc) {
			bool dep = strcmp(argv[i], "--depths") == 0;
			if (parse_list(argv[++i], dep ? g_depths : g_pre, dep ? &g_n_depths : &g_n_pre) != 0) {
				fprintf(stderr, "gpu-check: %s: expected comma-separated token counts\n", argv[i]);
				return 2;
			}
		} else if (strcmp(argv[i], "--quick") == 0) {
			g_quick = true;
		} else {
			usage();
			return 2;
		}
	}
	double t0 = clock_now_s();
	int rc = 0;
	if (strcmp(cmd, "info") == 0) {
		rc = cmd_info();
	} else if (strcmp(cmd, "parity") == 0) {
		rc = cmd_parity(model);
	} else if (strcmp(cmd, "types") == 0) {
		rc = cmd_types();
	} else if (strcmp(cmd, "bench") == 0) {
		rc = cmd_bench(model);
	} else if (strcmp(cmd, "sparse") == 0 || strcmp(cmd, "sparse-parity") == 0) {
		rc = cmd_sparse(model, strcmp(cmd, "sparse") == 0);
	} else if (strcmp(cmd, "cold") == 0) {
		rc = cmd_cold(model);
	} else if (strcmp(cmd, "launches") == 0) {
		rc = cmd_launches(model);
	} else if (strcmp(cmd, "all") == 0) {
		rc = cmd_info();
		if (rc == 0)
			rc = cmd_parity(model);
		if (rc == 0)
			rc = cmd_types();
		if (rc == 0)
			rc = cmd_bench(model);
		if (rc == 0)
			rc = cmd_launches(model);
		if (rc == 0)
			rc = cmd_cold(model);
		if (rc == 0)
			rc = cmd_sparse(model, true);
	} else {
		usage();
		return 2;
	}
	if (g_rows > 0) {
		printf("\n== summary (%.0f s)\n", clock_now_s() - t0);
		for (int i = 0; i < g_rows; i++)
			if (g_table[i][0] != '|')
				printf("%s\n", g_table[i]);
		bool timings = false;
		for (int i = 0; i < g_rows; i++)
			timings = timings || g_table[i][0] == '|';
		if (timings) {
			printf("| test                 | graphs | tok/s wall | tok/s GPU (events) |\n");
			printf("|----------------------|--------|------------|--------------------|\n");
		}
		for (int i = 0; i < g_rows; i++)
			if (g_table[i][0] == '|')
				printf("%s\n", g_table[i]);
	}
	goals_print();
	if (g_fail > 0)
		printf("\n%d checks FAILED\n", g_fail);
	return rc != 0 ? rc : g_fail > 0 ? 1 : 0;
}
