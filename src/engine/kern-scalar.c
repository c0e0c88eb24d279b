/*
 * kern-scalar.c: the scalar kernels, the reference level.
 *
 * Plain C for every kern_ops entry: the level a CPU without AVX2 (or
 * `--isa scalar`) runs, the reference path's kernels, and the arithmetic
 * the SIMD levels are tested against. The packed product reads each weight
 * through kern_wq and kern_hdr (kern-int.h), the same accessors the
 * dequantiser kern_weight_row uses, so it adds the integer sums in the
 * order the layout comment in kern.c states. The in-place attention, the
 * tile loader and RoPE are exported (kern_scalar_*): the SIMD levels fall
 * back on them for the shapes their vector code does not take (never for a
 * whole entry: test-engine checks that no SIMD table holds a scalar
 * kernel). Helpers here are static (sc_*).
 */
#include "engine/kern-int.h"

#include <math.h>

static void sc_quant_row(const float *x, const struct kern_act *a, int64_t i)
{
	int64_t nb = a->K / KERN_QK;
	int8_t *q = a->q + i * a->K;
	for (int64_t b = 0; b < nb; b++) {
		const float *xb = x + b * KERN_QK;
		float amax = 0;
		for (int k = 0; k < KERN_QK; k++)
			amax = fmaxf(amax, fabsf(xb[k]));
		float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
		int half[2] = { 0, 0 };
		for (int k = 0; k < KERN_QK; k++) {
			int v = (int)nearbyintf(xb[k] * id);
			q[b * KERN_QK + k] = (int8_t)v;
			half[k / 16] += v;
		}
		int sum = half[0] + half[1];
		a->d[i * nb + b] = dtype_f16_to_f32(dtype_f32_to_f16(d));
		a->s[i * nb + b] = dtype_f16_to_f32(dtype_f32_to_f16(d * (float)sum));
		a->isum[i * nb + b] = sum;
		if (a->isum16 != NULL) {
			a->isum16[2 * (i * nb + b)] = half[0];
			a->isum16[2 * (i * nb + b) + 1] = half[1];
		}
	}
}

static void sc_gemm_packed(const struct kern_weight *w, int64_t g0, int64_t g1,
                           const struct kern_act *a, int64_t n, float *y, int64_t ldy, bool acc)
{
	const struct kern_ptype *pt = kern_ptype(w->type);
	int64_t nb = w->cols / KERN_QK;
	for (int64_t g = g0; g < g1; g++) {
		const uint8_t *gd = w->data + (uint64_t)g * w->group_bytes;
		int nr = (int)KVS_MIN((int64_t)KERN_GROUP, w->rows - g * KERN_GROUP);
		for (int64_t t = 0; t < n; t++) {
			float sum[KERN_GROUP] = { 0 };
			const int8_t *aq = a->q + t * a->K;
			for (int64_t b = 0; b < nb; b++) {
				const uint8_t *pb = kern_block_at(pt, gd, b), *sup = kern_super_at(pt, gd, b);
				float da = a->d[t * nb + b], sa = a->s[t * nb + b];
				const int32_t *h16 = pt->halves ? a->isum16 + 2 * (t * nb + b) : NULL;
				int32_t corr = pt->off * a->isum[t * nb + b];
				for (int r = 0; r < nr; r++) {
					int32_t dot[2] = { 0, 0 };
					for (int i = 0; i < KERN_QK; i++)
						dot[i / 16] += kern_wq(pt, pb + pt->hdr, r, i) * aq[b * KERN_QK + i];
					float d = kern_hdr(pt, sup, pb, 0, r);
					if (pt->halves) {
						sum[r] += (float)(dot[0] - pt->off * h16[0]) * (d * da);
						sum[r] += (float)(dot[1] - pt->off * h16[1]) *
						        (kern_hdr(pt, sup, pb, 1, r) * da);
						continue;
					}
					sum[r] += (float)(dot[0] + dot[1] - corr) * (d * da);
					if (pt->min)
						sum[r] += kern_hdr(pt, sup, pb, 1, r) * sa;
				}
			}
			float *yt = y + t * ldy + g * KERN_GROUP;
			for (int r = 0; r < nr; r++)
				yt[r] = acc ? yt[r] + sum[r] : sum[r];
		}
	}
}

static float sc_dot_f32(const float *a, const float *b, int64_t n)
{
	float s[4] = { 0 };
	int64_t i = 0;
	for (; i + 4 <= n; i += 4)
		for (int k = 0; k < 4; k++)
			s[k] += a[i + k] * b[i + k];
	for (; i < n; i++)
		s[0] += a[i] * b[i];
	return (s[0] + s[1]) + (s[2] + s[3]);
}

static float sc_dot_f16(const uint16_t *w, const float *x, int64_t n)
{
	float s[4] = { 0 };
	int64_t i = 0;
	for (; i + 4 <= n; i += 4)
		for (int k = 0; k < 4; k++)
			s[k] += dtype_f16_to_f32(w[i + k]) * x[i + k];
	for (; i < n; i++)
		s[0] += dtype_f16_to_f32(w[i]) * x[i];
	return (s[0] + s[1]) + (s[2] + s[3]);
}

static float sc_dot_bf16(const uint16_t *w, const float *x, int64_t n)
{
	float s[4] = { 0 };
	int64_t i = 0;
	for (; i + 4 <= n; i += 4)
		for (int k = 0; k < 4; k++)
			s[k] += dtype_bf16_to_f32(w[i + k]) * x[i + k];
	for (; i < n; i++)
		s[0] += dtype_bf16_to_f32(w[i]) * x[i];
	return (s[0] + s[1]) + (s[2] + s[3]);
}

static void sc_gemm_rows_f32(const float *w, int64_t ldw, int nr, const float *x, int64_t ldx,
                             int64_t n, int64_t K, float *y, int64_t ldy, bool acc)
{
	for (int64_t t = 0; t < n; t++)
		for (int i = 0; i < nr; i++) {
			float v = sc_dot_f32(w + i * ldw, x + t * ldx, K);
			y[t * ldy + i] = acc ? y[t * ldy + i] + v : v;
		}
}

static void sc_bf16_to_f32(const uint16_t *src, float *dst, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		dst[i] = dtype_bf16_to_f32(src[i]);
}

static void sc_axpy_f32(float *y, const float *x, float alpha, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		y[i] += alpha * x[i];
}

static void sc_f16_to_f32(const uint16_t *src, float *dst, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		dst[i] = dtype_f16_to_f32(src[i]);
}

static void sc_f32_to_f16(const float *src, uint16_t *dst, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		dst[i] = dtype_f32_to_f16(src[i]);
}

static void sc_att_scores(const float *q, int nq, int hd, const float *kt, int64_t ldk, int64_t m,
                          float scale, float *s, int64_t lds)
{
	for (int r = 0; r < nq; r++) {
		float *sr = s + r * lds;
		for (int64_t k = 0; k < m; k++)
			sr[k] = 0;
		for (int d = 0; d < hd; d++) {
			float qd = q[r * hd + d];
			const float *kd = kt + d * ldk;
			for (int64_t k = 0; k < m; k++)
				sr[k] += qd * kd[k];
		}
		for (int64_t k = 0; k < m; k++)
			sr[k] *= scale;
	}
}

static void sc_att_pv(const float *p, int nq, int64_t lds, const float *v, int64_t m, int hd,
                      float *out)
{
	for (int r = 0; r < nq; r++) {
		float *o = out + r * hd;
		for (int d = 0; d < hd; d++)
			o[d] = 0;
		for (int64_t k = 0; k < m; k++) {
			float pk = p[r * lds + k];
			for (int d = 0; d < hd; d++)
				o[d] += pk * v[k * hd + d];
		}
	}
}

static float sc_exp_sum(float *x, int64_t n, float mx)
{
	float sum = 0;
	for (int64_t i = 0; i < n; i++) {
		x[i] = expf(x[i] - mx);
		sum += x[i];
	}
	return sum;
}

static void sc_swiglu(float *g, const float *u, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void sc_geglu(float *g, const float *u, int64_t n)
{
	const uint16_t *tab = kern_gelu_f16();
	for (int64_t i = 0; i < n; i++) {
		float x = g[i];
		float y = x <= -10.0f ? 0.0f : x >= 10.0f ? x : dtype_f16_to_f32(tab[dtype_f32_to_f16(x)]);
		g[i] = y * u[i];
	}
}

void kern_scalar_rope(float *x, const float *cs, int n_rot, bool neox)
{
	int half = n_rot / 2;
	const float *cv = cs, *sv = cs + half;
	for (int i = 0; i < half; i++) {
		float *a = neox ? &x[i] : &x[2 * i], *b = neox ? &x[i + half] : &x[2 * i + 1];
		float a0 = *a, b0 = *b;
		*a = a0 * cv[i] - b0 * sv[i];
		*b = a0 * sv[i] + b0 * cv[i];
	}
}

static void sc_rmsnorm(const float *x, const float *w, float *out, int64_t n, float eps)
{
	double ss = 0;
	for (int64_t i = 0; i < n; i++)
		ss += (double)x[i] * x[i];
	float scale = 1.0f / sqrtf((float)(ss / (double)n) + eps);
	for (int64_t i = 0; i < n; i++)
		out[i] = x[i] * scale * w[i];
}

/* Row k of a KV table as f32 (into buf when it must be converted). */
static const float *sc_kv_row(const void *base, int64_t stride, bool half, uint32_t row, int hd,
                              float *buf)
{
	if (!half)
		return (const float *)base + (int64_t)row * stride;
	sc_f16_to_f32((const uint16_t *)base + (int64_t)row * stride, buf, hd);
	return buf;
}

void kern_scalar_att_scores_rows(const float *q, int nq, int hd, const void *base, int64_t stride,
                                 bool half, const uint32_t *rows, int64_t m, float scale, float *s,
                                 int64_t lds)
{
	float buf[KERN_ROW_MAX];
	for (int64_t k = 0; k < m; k++) {
		const float *kr = sc_kv_row(base, stride, half, rows[k], hd, buf);
		for (int r = 0; r < nq; r++) {
			float acc = 0;
			for (int d = 0; d < hd; d++)
				acc += q[r * hd + d] * kr[d];
			s[r * lds + k] = scale * acc;
		}
	}
}

void kern_scalar_att_pv_rows(const float *p, int nq, int64_t lds, const void *base, int64_t stride,
                             bool half, const uint32_t *rows, int64_t m, int hd, float *out)
{
	float buf[KERN_ROW_MAX];
	for (int i = 0; i < nq * hd; i++)
		out[i] = 0;
	for (int64_t k = 0; k < m; k++) {
		const float *vr = sc_kv_row(base, stride, half, rows[k], hd, buf);
		for (int r = 0; r < nq; r++) {
			float pk = p[r * lds + k];
			for (int d = 0; d < hd; d++)
				out[r * hd + d] += pk * vr[d];
		}
	}
}

void kern_scalar_kv_rows_f32(const void *base, int64_t stride, bool half, const uint32_t *rows,
                             int64_t m, int hd, bool transpose, float *dst, int64_t ldd)
{
	float buf[KERN_ROW_MAX];
	for (int64_t k = 0; k < m; k++) {
		const float *r = sc_kv_row(base, stride, half, rows[k], hd, buf);
		for (int d = 0; d < hd; d++) {
			if (transpose)
				dst[d * ldd + k] = r[d];
			else
				dst[k * ldd + d] = r[d];
		}
	}
}

static float sc_max_f32(const float *x, int64_t n)
{
	float m = x[0];
	for (int64_t i = 1; i < n; i++)
		m = x[i] > m ? x[i] : m;
	return m;
}

const struct kern_ops kern_scalar_ops = {
	.level = KERN_SCALAR,
	.name = "scalar",
	.quant_row = sc_quant_row,
	.gemm_packed = sc_gemm_packed,
	.dot_f32 = sc_dot_f32,
	.dot_f16 = sc_dot_f16,
	.dot_bf16 = sc_dot_bf16,
	.gemm_rows_f32 = sc_gemm_rows_f32,
	.bf16_to_f32 = sc_bf16_to_f32,
	.axpy_f32 = sc_axpy_f32,
	.f16_to_f32 = sc_f16_to_f32,
	.f32_to_f16 = sc_f32_to_f16,
	.att_scores = sc_att_scores,
	.att_pv = sc_att_pv,
	.att_scores_rows = kern_scalar_att_scores_rows,
	.att_pv_rows = kern_scalar_att_pv_rows,
	.kv_rows_f32 = kern_scalar_kv_rows_f32,
	.max_f32 = sc_max_f32,
	.exp_sum = sc_exp_sum,
	.swiglu = sc_swiglu,
	.geglu = sc_geglu,
	.rmsnorm = sc_rmsnorm,
	.rope = kern_scalar_rope,
};
