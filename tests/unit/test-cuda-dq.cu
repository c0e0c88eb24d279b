/*
 * test-cuda-dq.cu: the CUDA kernels' per-thread arithmetic (gpu/cuda_dq.h),
 * compiled for the host, against the CPU code it must agree with. Runs in
 * make check of CUDA builds on any machine, GPU or not.
 *
 *   - ck_dq8 (8 elements of any weight type) against the model layer's
 *     dtype_dequant on random blocks: bit-exact, every type with a kernel;
 *   - the q8 product's integer units and per-block float step, summed in
 *     block order, against the CPU's scalar packed kernel on the same
 *     quantised activations: bit-exact (same per-block formula and order);
 *   - RoPE pair indices and rotation against engine_rope_apply, NORM and
 *     NEOX, full and partial rotary: bit-exact; every dim in one pair.
 */
#include "gpu/cuda_dq.h"

extern "C" {
#include "engine/engine.h"
#include "engine/kern.h"
#include "gpu/gpuplan.h"
}

#include "test.h"

static uint64_t rng = 0x2545F4914F6CDD1Dull;

/* Uniform in [-1, 1). */
static float rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((double)(rng >> 11) / (double)(1ull << 52) - 1.0);
}

/* Where a type's f16 scale fields sit in its block (random bytes there
 * could be NaN; the other bytes may be anything). */
static const struct {
	uint32_t type;
	int offs[2];
	int n_offs;
} dq_fields[] = {
	{ DT_Q4_0, { 0 }, 1 },    { DT_Q4_1, { 0, 2 }, 2 }, { DT_Q5_0, { 0 }, 1 },
	{ DT_Q5_1, { 0, 2 }, 2 }, { DT_Q8_0, { 0 }, 1 },    { DT_Q4_K, { 0, 2 }, 2 },
	{ DT_Q5_K, { 0, 2 }, 2 }, { DT_Q6_K, { 208 }, 1 },
};

/* A random row of n elements of type into buf (row bytes returned). */
static uint64_t random_row(uint32_t type, uint32_t n, uint8_t *buf)
{
	const struct dtype_info *di = dtype_info(type);
	uint64_t nb = n / di->block_elems * di->block_bytes;
	for (uint64_t i = 0; i < nb; i++) {
		rnd();
		buf[i] = (uint8_t)(rng >> 17);
	}
	if (type == DT_F32) {
		for (uint32_t i = 0; i < n; i++) {
			float f = rnd() * 3.0f;
			memcpy(buf + 4 * i, &f, 4);
		}
	} else if (type == DT_F16 || type == DT_BF16) {
		for (uint32_t i = 0; i < n; i++) {
			uint16_t h = type == DT_F16 ? dtype_f32_to_f16(rnd()) : dtype_f32_to_bf16(rnd());
			memcpy(buf + 2 * i, &h, 2);
		}
	}
	for (size_t t = 0; t < KVS_ARRAY_LEN(dq_fields); t++) {
		if (dq_fields[t].type != type)
			continue;
		for (uint64_t b = 0; b < nb / di->block_bytes; b++)
			for (int k = 0; k < dq_fields[t].n_offs; k++) {
				uint16_t h = dtype_f32_to_f16(rnd() * 0.1f);
				memcpy(buf + b * di->block_bytes + dq_fields[t].offs[k], &h, 2);
			}
	}
	return nb;
}

static void test_dequant(void)
{
	enum { N = 512 };
	static uint8_t row[N * 4];
	float want[N], got[N];
	int n_types = 0;
	for (uint32_t type = 0; type < DT_COUNT_; type++) {
		enum gpuplan_wkind k = gpuplan_weight_kind(type);
		if (k != GPUPLAN_W_Q8ACT && k != GPUPLAN_W_F32ACT)
			continue;
		n_types++;
		for (int trial = 0; trial < 20; trial++) {
			random_row(type, N, row);
			T_CHECK(dtype_dequant(type, row, want, N), "dtype_dequant %s", dtype_name(type));
			for (uint32_t k0 = 0; k0 < N; k0 += 8)
				ck_dq8(type, row, k0, got + k0);
			int bad = -1;
			for (int i = 0; i < N && bad < 0; i++)
				if (memcmp(&want[i], &got[i], 4) != 0)
					bad = i;
			T_CHECK(bad < 0, "%s trial %d: element %d is %.9g, dtype_dequant says %.9g",
			        dtype_name(type), trial, bad, bad < 0 ? 0.0 : (double)got[bad],
			        bad < 0 ? 0.0 : (double)want[bad]);
		}
	}
	/* F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K */
	T_EQ_INT(n_types, 11);
}

static void test_q8_dot(void)
{
	enum { K = 576, ROWS = 16 };
	const struct kern_ops *ops = kern_select(KERN_SCALAR);
	static float x[K], wf[ROWS * K], y_cpu[ROWS];
	static int8_t aq[K];
	static float ad[K / 32], as[K / 32];
	static int32_t ai[K / 32];
	static uint8_t w[ROWS * (K / 32) * 34];
	struct kern_act a = { K, aq, ad, as, ai };
	static const uint32_t types[] = { DT_Q4_0, DT_Q4_1, DT_Q8_0 };
	for (size_t ti = 0; ti < KVS_ARRAY_LEN(types); ti++) {
		uint32_t type = types[ti];
		for (int trial = 0; trial < 10; trial++) {
			for (int i = 0; i < K; i++)
				x[i] = rnd() * (i % 7 == 0 ? 4.0f : 1.0f);
			for (int i = 0; i < ROWS * K; i++)
				wf[i] = rnd() * 0.5f;
			ops->quant_row(x, &a, 0);
			uint64_t rb = 0;
			dtype_row_bytes(type, K, &rb);
			for (int r = 0; r < ROWS; r++) {
				if (type == DT_Q4_0)
					dtype_quant_q4_0(wf + r * K, w + r * rb, K);
				else if (type == DT_Q4_1)
					dtype_quant_q4_1(wf + r * K, w + r * rb, K);
				else
					dtype_quant_q8_0(wf + r * K, w + r * rb, K);
			}
			/* the CPU: packed weights, scalar kernel */
			struct kern_weight kw;
			memset(&kw, 0, sizeof(kw));
			kw.type = type;
			kw.rows = ROWS;
			kw.cols = K;
			kw.row_bytes = rb;
			kw.packed = true;
			uint64_t pb = kern_packed_bytes(type, ROWS, K);
			uint8_t *packed = (uint8_t *)xmalloc_aligned(pb);
			kern_pack(type, w, ROWS, K, packed, 0, 1);
			kw.data = packed;
			kw.group_bytes = pb;
			ops->gemm_packed(&kw, 0, 1, &a, 1, y_cpu, ROWS, false);
			xfree_aligned(packed);
			/* the GPU's steps in block order */
			uint32_t wpb, bb, qoff;
			ck_q8_geom(type, &wpb, &bb, &qoff);
			for (int r = 0; r < ROWS; r++) {
				float acc = 0.0f;
				for (uint32_t b = 0; b < K / 32; b++) {
					int dot = 0;
					for (uint32_t wd = 0; wd < wpb; wd++)
						dot += ck_q8_unit(type, w + r * rb, (const int *)aq, b * wpb + wd);
					acc = ck_q8_block(type, w + r * rb, b, dot, ad[b], as[b], ai[b], acc);
				}
				T_CHECK(memcmp(&acc, &y_cpu[r], 4) == 0, "%s trial %d row %d: %.9g, CPU %.9g",
				        dtype_name(type), trial, r, (double)acc, (double)y_cpu[r]);
			}
		}
	}
}

static void test_rope(void)
{
	static const struct {
		enum rope_kind kind;
		uint32_t hd, n_rot;
	} cases[] = {
		{ ROPE_NORM, 64, 64 },  { ROPE_NEOX, 64, 64 },   { ROPE_NORM, 128, 64 },
		{ ROPE_NEOX, 128, 32 }, { ROPE_NEOX, 256, 256 },
	};
	for (size_t ci = 0; ci < KVS_ARRAY_LEN(cases); ci++) {
		struct hparams hp;
		memset(&hp, 0, sizeof(hp));
		hp.head_dim = cases[ci].hd;
		hp.n_rot = cases[ci].n_rot;
		hp.rope = cases[ci].kind;
		hp.rope_base = 100000.0f;
		hp.rope_freq_scale = ci == 2 ? 0.25f : 1.0f;
		float ts = powf(hp.rope_base, -2.0f / (float)hp.n_rot);
		int32_t positions[] = { 0, 1, 17, 4095, 32767 };
		for (size_t pi = 0; pi < KVS_ARRAY_LEN(positions); pi++) {
			int32_t pos = positions[pi];
			float x[256], want[256], got[256], cs[256];
			for (uint32_t d = 0; d < hp.head_dim; d++)
				x[d] = want[d] = rnd();
			engine_rope_cos_sin(&hp, pos, cs, cs + hp.n_rot / 2);
			engine_rope_apply(&hp, want, cs, cs + hp.n_rot / 2);
			int seen[256] = { 0 };
			for (int p = 0; p < (int)hp.head_dim / 2; p++) {
				int da, db;
				ck_pair(p, (int)hp.n_rot, hp.rope == ROPE_NEOX, &da, &db);
				seen[da]++;
				seen[db]++;
				float a = x[da], b = x[db];
				if (p < (int)hp.n_rot / 2) {
					float t = ck_theta(pos, p, ts, hp.rope_freq_scale);
					T_CHECK(cosf(t) == cs[p] && sinf(t) == cs[hp.n_rot / 2 + p],
					        "case %zu pos %d pair %d: angle differs", ci, pos, p);
					ck_rot(&a, &b, cs[p], cs[hp.n_rot / 2 + p]);
				}
				got[da] = a;
				got[db] = b;
			}
			for (uint32_t d = 0; d < hp.head_dim; d++) {
				T_CHECK(seen[d] == 1, "case %zu: dim %u in %d pairs", ci, d, seen[d]);
				T_CHECK(got[d] == want[d], "case %zu pos %d dim %u: %.9g, CPU %.9g", ci, pos, d,
				        (double)got[d], (double)want[d]);
			}
		}
	}
}

/* ck_merge (the split merge the combine launch and the fused attention
 * share) against a softmax computed directly in double over the same keys:
 * splits of random logits and values, some empty (max -inf, sum 0), one
 * case with no key at all (output 0, sum 0); by hand: two splits of one
 * key each with logits 0 and log 3 give weights 1/4, 3/4. */
static void test_merge(void)
{
	enum { HD = 64, MAXS = 8, MAXK = 16 };
	float part[MAXS * (HD + 2)];
	for (int it = 0; it < 200; it++) {
		int splits = 1 + (int)(rng % MAXS);
		double num[HD] = { 0 }, den = 0, mx = -INFINITY;
		float lg[MAXS][MAXK], vv[MAXS][MAXK][HD];
		int nk[MAXS];
		for (int c = 0; c < splits; c++) {
			nk[c] = it % 7 == 0 ? 0 : (int)(rng % MAXK) * (c % 3 != 1);
			for (int k = 0; k < nk[c]; k++) {
				lg[c][k] = 8.0f * rnd();
				mx = fmax(mx, lg[c][k]);
				for (int d = 0; d < HD; d++)
					vv[c][k][d] = rnd();
			}
		}
		/* each split's partials as the attention kernel leaves them */
		for (int c = 0; c < splits; c++) {
			float *p = part + c * (HD + 2), m = -INFINITY, l = 0;
			for (int k = 0; k < nk[c]; k++)
				m = fmaxf(m, lg[c][k]);
			for (int d = 0; d < HD; d++)
				p[d] = 0;
			for (int k = 0; k < nk[c]; k++) {
				float w = expf(lg[c][k] - m);
				l += w;
				for (int d = 0; d < HD; d++)
					p[d] += w * vv[c][k][d];
			}
			p[HD] = m;
			p[HD + 1] = l;
			for (int k = 0; k < nk[c]; k++) {
				double w = exp((double)lg[c][k] - mx);
				den += w;
				for (int d = 0; d < HD; d++)
					num[d] += w * vv[c][k][d];
			}
		}
		for (int d = 0; d < HD; d++) {
			float M, L, v = ck_merge(part, splits, HD, d, &M, &L);
			double want = den > 0 ? num[d] / den : 0.0;
			T_CHECK(fabs(v - want) <= 1e-5 * (1 + fabs(want)), "merge %d dim %d: %.9g, want %.9g",
			        it, d, (double)v, want);
			T_CHECK(M == (float)mx || (den == 0 && M == -INFINITY), "merge %d: max %g, want %g", it,
			        (double)M, mx);
			T_CHECK(den > 0 ? L > 0 : L == 0, "merge %d: sum %g", it, (double)L);
		}
	}
	/* by hand */
	float p2[2 * (HD + 2)] = { 0 };
	p2[0] = 1.0f; /* split 0: one key, logit 0, value 1 in dim 0 */
	p2[HD] = 0.0f;
	p2[HD + 1] = 1.0f;
	p2[HD + 2 + 0] = 2.0f; /* split 1: logit log 3, value 2 in dim 0 */
	p2[HD + 2 + HD] = logf(3.0f);
	p2[HD + 2 + HD + 1] = 1.0f;
	float M, L, v = ck_merge(p2, 2, HD, 0, &M, &L);
	T_CHECK(fabsf(v - 1.75f) < 1e-6f && fabsf(L - 4.0f / 3.0f) < 1e-6f, "hand merge %g, sum %g",
	        (double)v, (double)L);
}

int main(void)
{
	test_dequant();
	test_q8_dot();
	test_rope();
	test_merge();
	return t_done("test-cuda-dq");
}
