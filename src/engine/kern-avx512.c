/*
 * kern-avx512.c: the AVX-512 kernels with VNNI (F, BW, VL, DQ, VNNI).
 *
 * Sixteen rows per register: one 64-byte load of a packed block holds 4
 * quants of each of a group's 16 rows, and vpdpbusd advances the 16 dot
 * products by 4 elements with no horizontal sums. The packed product is
 * specialised per packed type (one tile function per entry of kern_ptypes,
 * in its order) and per token count (1 to 8 tokens a tile). Every kernel
 * has a vector version here, attention included (scores of up to
 * KERN_ATT_Q queries against 16 keys at a time, a vectorised exp); the
 * shapes the vector code does not take (head sizes not a multiple of 64
 * for the in-place attention, rotations not a multiple of 16) fall back
 * on the scalar kernels.
 *
 * Every function carries the target attribute T_AVX512, so this file
 * builds without -march; kern.c hands out kern_avx512_ops only to CPUs
 * with all the extensions named above and FMA.
 */
#include "engine/kern-int.h"

#include <immintrin.h>
#include <math.h>

#define T_AVX512 \
	__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

T_AVX512 static void a512_quant_row(const float *x, const struct kern_act *a, int64_t i)
{
	int64_t nb = a->K / KERN_QK;
	int8_t *q = a->q + i * a->K;
	for (int64_t b = 0; b < nb; b++) {
		const float *xb = x + b * KERN_QK;
		__m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
		__m512 m = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1));
		float amax = _mm512_reduce_max_ps(m);
		float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
		__m512 vid = _mm512_set1_ps(id);
		__m512i q0 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v0, vid),
		                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
		__m512i q1 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v1, vid),
		                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
		_mm_storeu_si128((__m128i *)(q + b * KERN_QK), _mm512_cvtsepi32_epi8(q0));
		_mm_storeu_si128((__m128i *)(q + b * KERN_QK + 16), _mm512_cvtsepi32_epi8(q1));
		int h0 = _mm512_reduce_add_epi32(q0), h1 = _mm512_reduce_add_epi32(q1), sum = h0 + h1;
		a->d[i * nb + b] = _cvtsh_ss(_cvtss_sh(d, 0));
		a->s[i * nb + b] = _cvtsh_ss(_cvtss_sh(d * (float)sum, 0));
		a->isum[i * nb + b] = sum;
		if (a->isum16 != NULL) {
			a->isum16[2 * (i * nb + b)] = h0;
			a->isum16[2 * (i * nb + b) + 1] = h1;
		}
	}
}

/* The bits above the nibbles of the eight chunks W from the plane(s) at hp
 * (av2_add_planes for 16 rows). */
INLINE T_AVX512 void a512_add_planes(__m512i W[8], const uint8_t *hp, int hbits)
{
	const __m512i mask = _mm512_set1_epi8(hbits == 1 ? 0x10 : 0x30);
	__m512i P0 = _mm512_loadu_si512(hp), P1 = P0;
	if (hbits == 2)
		P1 = _mm512_loadu_si512(hp + 64);
#pragma GCC unroll 8
	for (int c = 0; c < 8; c++) {
		int from = hbits == 1 ? c : 2 * (c % 4);
		__m512i P = c < 4 ? P0 : P1;
		__m512i v = from <= 4 ? _mm512_sll_epi16(P, _mm_cvtsi32_si128(4 - from))
		                      : _mm512_srl_epi16(P, _mm_cvtsi32_si128(from - 4));
		W[c] = _mm512_or_si512(W[c], _mm512_and_si512(v, mask));
	}
}

/* A 16-row group for T tokens from t0. */
INLINE T_AVX512 void a512_tile(const struct kern_ptype *pt, const uint8_t *gd, int64_t nb,
                               const struct kern_act *a, int64_t t0, int T, float *y, int64_t ldy,
                               int nr, bool acc)
{
	__m512 accf[8];
#pragma GCC unroll 8
	for (int t = 0; t < T; t++)
		accf[t] = _mm512_setzero_ps();
	const __m512i m4 = _mm512_set1_epi8(0x0F);
	const int8_t *aq0 = a->q + t0 * a->K;
	const float *ad = a->d + t0 * nb, *as = a->s + t0 * nb;
	const int32_t *ai = a->isum + t0 * nb;
	for (int64_t b = 0; b < nb; b++) {
		const uint8_t *pb = kern_block_at(pt, gd, b);
		__m512 dw, mo = _mm512_setzero_ps(), dw1 = _mm512_setzero_ps();
		if (pt->ks) {
			/* d * sc and -(dmin * m) per row, as the file's dequantiser */
			const uint8_t *sup = kern_super_at(pt, gd, b);
			__m512 d = _mm512_loadu_ps(sup);
			__m128i s0 = _mm_loadu_si128((const __m128i *)pb);
			__m128i s1 = _mm_loadu_si128((const __m128i *)(pb + 16));
			if (pt->halves) {
				dw = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(s0)));
				dw1 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(s1)));
			} else {
				dw = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(s0)));
				__m512 dmin = _mm512_loadu_ps(sup + 64);
				mo = _mm512_sub_ps(
				        _mm512_setzero_ps(),
				        _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(s1))));
			}
		} else if (pt->f32) {
			dw = _mm512_loadu_ps(pb);
			if (pt->min)
				mo = _mm512_loadu_ps(pb + 64);
			if (pt->halves)
				dw1 = _mm512_loadu_ps(pb + 64);
		} else {
			dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)pb));
			if (pt->min)
				mo = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pb + 32)));
		}
		const uint8_t *qs = pb + pt->hdr;
		__m512i W[8];
		if (pt->bits8) {
#pragma GCC unroll 8
			for (int j = 0; j < 8; j++)
				W[j] = _mm512_loadu_si512(qs + 64 * j);
		} else {
#pragma GCC unroll 8
			for (int j = 0; j < 4; j++) {
				__m512i raw = _mm512_loadu_si512(qs + 64 * j);
				W[j] = _mm512_and_si512(raw, m4);
				W[j + 4] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
			}
			if (pt->hbits > 0)
				a512_add_planes(W, qs + 256, pt->hbits);
		}
#pragma GCC unroll 8
		for (int t = 0; t < T; t++) {
			const int8_t *aq = aq0 + t * a->K + b * KERN_QK;
			__m512i i0 = _mm512_setzero_si512(), i1 = _mm512_setzero_si512();
/* two chains; with two scales, one per half block */
#pragma GCC unroll 8
			for (int j = 0; j < 8; j += 2) {
				int32_t a0, a1;
				int k0 = pt->halves ? j / 2 : j, k1 = pt->halves ? 4 + j / 2 : j + 1;
				memcpy(&a0, aq + 4 * k0, 4);
				memcpy(&a1, aq + 4 * k1, 4);
				i0 = _mm512_dpbusd_epi32(i0, W[k0], _mm512_set1_epi32(a0));
				i1 = _mm512_dpbusd_epi32(i1, W[k1], _mm512_set1_epi32(a1));
			}
			__m512 vda = _mm512_set1_ps(ad[t * nb + b]);
			if (pt->halves) {
				const int32_t *h16 = a->isum16 + 2 * ((t0 + t) * nb + b);
				i0 = _mm512_sub_epi32(i0, _mm512_set1_epi32(pt->off * h16[0]));
				i1 = _mm512_sub_epi32(i1, _mm512_set1_epi32(pt->off * h16[1]));
				accf[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0), _mm512_mul_ps(dw, vda), accf[t]);
				accf[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), _mm512_mul_ps(dw1, vda), accf[t]);
				continue;
			}
			__m512i it = _mm512_add_epi32(i0, i1);
			if (pt->off != 0)
				it = _mm512_sub_epi32(it, _mm512_set1_epi32(pt->off * ai[t * nb + b]));
			accf[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(it), _mm512_mul_ps(dw, vda), accf[t]);
			if (pt->min)
				accf[t] = _mm512_fmadd_ps(mo, _mm512_set1_ps(as[t * nb + b]), accf[t]);
		}
	}
	__mmask16 mask = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
#pragma GCC unroll 8
	for (int t = 0; t < T; t++) {
		float *yt = y + (t0 + t) * ldy;
		__m512 v = accf[t];
		if (acc)
			v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, yt), v);
		_mm512_mask_storeu_ps(yt, mask, v);
	}
}

#define A512_TILES(NAME, IDX)                                                                      \
	T_AVX512 static void NAME(const uint8_t *gd, int64_t nb, const struct kern_act *a, int64_t t0, \
	                          int T, float *y, int64_t ldy, int nr, bool acc)                      \
	{                                                                                              \
		const struct kern_ptype *pt = &kern_ptypes[IDX];                                           \
		switch (T) {                                                                               \
		case 1: a512_tile(pt, gd, nb, a, t0, 1, y, ldy, nr, acc); break;                           \
		case 2: a512_tile(pt, gd, nb, a, t0, 2, y, ldy, nr, acc); break;                           \
		case 3: a512_tile(pt, gd, nb, a, t0, 3, y, ldy, nr, acc); break;                           \
		case 4: a512_tile(pt, gd, nb, a, t0, 4, y, ldy, nr, acc); break;                           \
		case 5: a512_tile(pt, gd, nb, a, t0, 5, y, ldy, nr, acc); break;                           \
		case 6: a512_tile(pt, gd, nb, a, t0, 6, y, ldy, nr, acc); break;                           \
		case 7: a512_tile(pt, gd, nb, a, t0, 7, y, ldy, nr, acc); break;                           \
		default: a512_tile(pt, gd, nb, a, t0, 8, y, ldy, nr, acc); break;                          \
		}                                                                                          \
	}
A512_TILES(a512_tiles_0, 0)
A512_TILES(a512_tiles_1, 1)
A512_TILES(a512_tiles_2, 2)
A512_TILES(a512_tiles_3, 3)
A512_TILES(a512_tiles_4, 4)
A512_TILES(a512_tiles_5, 5)
A512_TILES(a512_tiles_6, 6)
A512_TILES(a512_tiles_7, 7)

typedef void (*a512_tiles_fn)(const uint8_t *, int64_t, const struct kern_act *, int64_t, int,
                              float *, int64_t, int, bool);

/* In the order of kern_ptypes. */
static const a512_tiles_fn a512_tiles[] = {
	a512_tiles_0, a512_tiles_1, a512_tiles_2, a512_tiles_3,
	a512_tiles_4, a512_tiles_5, a512_tiles_6, a512_tiles_7
};

T_AVX512 static void a512_gemm_packed(const struct kern_weight *w, int64_t g0, int64_t g1,
                                      const struct kern_act *a, int64_t n, float *y, int64_t ldy,
                                      bool acc)
{
	a512_tiles_fn fn = a512_tiles[kern_ptype_index(w->type)];
	int64_t nb = w->cols / KERN_QK;
	for (int64_t g = g0; g < g1; g++) {
		const uint8_t *gd = w->data + (uint64_t)g * w->group_bytes;
		int nr = (int)KVS_MIN((int64_t)KERN_GROUP, w->rows - g * KERN_GROUP);
		for (int64_t t0 = 0; t0 < n; t0 += 8)
			fn(gd, nb, a, t0, (int)KVS_MIN((int64_t)8, n - t0), y + g * KERN_GROUP, ldy, nr, acc);
	}
}

/* NR rows by NT tokens (compile-time counts: the accumulators stay in
 * registers); K's tail through masked loads. */
INLINE T_AVX512 void a512_rows_tile(const float *w, int64_t ldw, const float *x, int64_t ldx,
                                    int64_t K, float *y, int64_t ldy, bool acc, const int NR,
                                    const int NT)
{
	__m512 s[4][4];
#pragma GCC unroll 4
	for (int i = 0; i < NR; i++)
#pragma GCC unroll 4
		for (int t = 0; t < NT; t++)
			s[i][t] = _mm512_setzero_ps();
	int64_t k = 0;
	for (; k + 16 <= K; k += 16) {
		__m512 a[4];
#pragma GCC unroll 4
		for (int t = 0; t < NT; t++)
			a[t] = _mm512_loadu_ps(x + t * ldx + k);
#pragma GCC unroll 4
		for (int i = 0; i < NR; i++) {
			__m512 v = _mm512_loadu_ps(w + i * ldw + k);
#pragma GCC unroll 4
			for (int t = 0; t < NT; t++)
				s[i][t] = _mm512_fmadd_ps(v, a[t], s[i][t]);
		}
	}
	if (k < K) {
		__mmask16 m = (__mmask16)((1u << (K - k)) - 1);
#pragma GCC unroll 4
		for (int i = 0; i < NR; i++) {
			__m512 v = _mm512_maskz_loadu_ps(m, w + i * ldw + k);
#pragma GCC unroll 4
			for (int t = 0; t < NT; t++)
				s[i][t] = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m, x + t * ldx + k), s[i][t]);
		}
	}
#pragma GCC unroll 4
	for (int t = 0; t < NT; t++)
#pragma GCC unroll 4
		for (int i = 0; i < NR; i++) {
			float v = _mm512_reduce_add_ps(s[i][t]);
			float *o = y + t * ldy + i;
			*o = acc ? *o + v : v;
		}
}

/* The tile for nr rows and nt tokens (1..4 each). */
#define A512_ROWS(NR)                                                        \
	switch (nt) {                                                            \
	case 1: a512_rows_tile(w, ldw, xt, ldx, K, yt, ldy, acc, NR, 1); break;  \
	case 2: a512_rows_tile(w, ldw, xt, ldx, K, yt, ldy, acc, NR, 2); break;  \
	case 3: a512_rows_tile(w, ldw, xt, ldx, K, yt, ldy, acc, NR, 3); break;  \
	default: a512_rows_tile(w, ldw, xt, ldx, K, yt, ldy, acc, NR, 4); break; \
	}

T_AVX512 static void a512_gemm_rows_f32(const float *w, int64_t ldw, int nr, const float *x,
                                        int64_t ldx, int64_t n, int64_t K, float *y, int64_t ldy,
                                        bool acc)
{
	for (int64_t t0 = 0; t0 < n; t0 += 4) {
		int nt = (int)KVS_MIN((int64_t)4, n - t0);
		const float *xt = x + t0 * ldx;
		float *yt = y + t0 * ldy;
		switch (nr) {
		case 1: A512_ROWS(1) break;
		case 2: A512_ROWS(2) break;
		case 3: A512_ROWS(3) break;
		default: A512_ROWS(4) break;
		}
	}
}

/* 16 bf16 values at p as floats. */
INLINE T_AVX512 __m512 a512_bf16x16(const uint16_t *p)
{
	__m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
	return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

T_AVX512 static float a512_dot_bf16(const uint16_t *w, const float *x, int64_t n)
{
	__m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
	int64_t i = 0;
	for (; i + 32 <= n; i += 32) {
		s0 = _mm512_fmadd_ps(a512_bf16x16(w + i), _mm512_loadu_ps(x + i), s0);
		s1 = _mm512_fmadd_ps(a512_bf16x16(w + i + 16), _mm512_loadu_ps(x + i + 16), s1);
	}
	float s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
	for (; i < n; i++)
		s += dtype_bf16_to_f32(w[i]) * x[i];
	return s;
}

T_AVX512 static void a512_bf16_to_f32(const uint16_t *src, float *dst, int64_t n)
{
	int64_t i = 0;
	for (; i + 16 <= n; i += 16) {
		__m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i)));
		_mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
	}
	for (; i < n; i++)
		dst[i] = dtype_bf16_to_f32(src[i]);
}

T_AVX512 static float a512_dot_f16(const uint16_t *w, const float *x, int64_t n)
{
	__m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
	int64_t i = 0;
	for (; i + 32 <= n; i += 32) {
		s0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + i))),
		                     _mm512_loadu_ps(x + i), s0);
		s1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + i + 16))),
		                     _mm512_loadu_ps(x + i + 16), s1);
	}
	float s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
	for (; i < n; i++)
		s += dtype_f16_to_f32(w[i]) * x[i];
	return s;
}

T_AVX512 static float a512_dot_f32(const float *a, const float *b, int64_t n)
{
	__m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
	int64_t i = 0;
	for (; i + 32 <= n; i += 32) {
		s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
		s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
	}
	if (i + 16 <= n) {
		s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
		i += 16;
	}
	if (i < n) {
		__mmask16 m = (__mmask16)((1u << (n - i)) - 1);
		s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
	}
	return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

T_AVX512 static void a512_axpy_f32(float *y, const float *x, float alpha, int64_t n)
{
	__m512 va = _mm512_set1_ps(alpha);
	int64_t i = 0;
	for (; i + 16 <= n; i += 16)
		_mm512_storeu_ps(y + i,
		                 _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
	if (i < n) {
		__mmask16 m = (__mmask16)((1u << (n - i)) - 1);
		_mm512_mask_storeu_ps(y + i, m,
		                      _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i),
		                                      _mm512_maskz_loadu_ps(m, y + i)));
	}
}

T_AVX512 static void a512_f16_to_f32(const uint16_t *src, float *dst, int64_t n)
{
	int64_t i = 0;
	for (; i + 16 <= n; i += 16)
		_mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
	for (; i < n; i++)
		dst[i] = dtype_f16_to_f32(src[i]);
}

T_AVX512 static void a512_f32_to_f16(const float *src, uint16_t *dst, int64_t n)
{
	int64_t i = 0;
	for (; i + 16 <= n; i += 16)
		_mm256_storeu_si256((__m256i *)(dst + i),
		                    _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
	for (; i < n; i++)
		dst[i] = dtype_f32_to_f16(src[i]);
}

/* exp(x) for 16 lanes: 2^(x log2 e) split into 2^n (scalef) and 2^f, |f| <=
 * 1/2, with 2^f = e^(f ln 2) by its Taylor series to degree 7 (relative
 * error below 1e-8 before rounding); inputs below -87.3 give 0. */
INLINE T_AVX512 __m512 a512_exp(__m512 x)
{
	x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
	__m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
	__m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m512 y = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.693147180559945309f));
	__m512 p = _mm512_set1_ps(1.0f / 5040);
	p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 720));
	p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 120));
	p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 24));
	p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 6));
	p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(0.5f));
	p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f));
	p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f));
	return _mm512_scalef_ps(p, n);
}

/* Scores of NQ queries against 16-key blocks, keys transposed. */
INLINE T_AVX512 void a512_scores_nq(const float *q, const int NQ, int hd, const float *kt,
                                    int64_t ldk, int64_t m, float scale, float *s, int64_t lds)
{
	__m512 vs = _mm512_set1_ps(scale);
	for (int64_t k0 = 0; k0 < m; k0 += 16) {
		__mmask16 mk = m - k0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (m - k0)) - 1);
		__m512 acc[KERN_ATT_Q];
#pragma GCC unroll 8
		for (int r = 0; r < NQ; r++)
			acc[r] = _mm512_setzero_ps();
		for (int d = 0; d < hd; d++) {
			__m512 kv = _mm512_maskz_loadu_ps(mk, kt + d * ldk + k0);
#pragma GCC unroll 8
			for (int r = 0; r < NQ; r++)
				acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * hd + d]), kv, acc[r]);
		}
#pragma GCC unroll 8
		for (int r = 0; r < NQ; r++)
			_mm512_mask_storeu_ps(s + r * lds + k0, mk, _mm512_mul_ps(acc[r], vs));
	}
}

T_AVX512 static void a512_att_scores(const float *q, int nq, int hd, const float *kt, int64_t ldk,
                                     int64_t m, float scale, float *s, int64_t lds)
{
	switch (nq) {
	case 1: a512_scores_nq(q, 1, hd, kt, ldk, m, scale, s, lds); break;
	case 2: a512_scores_nq(q, 2, hd, kt, ldk, m, scale, s, lds); break;
	case 3: a512_scores_nq(q, 3, hd, kt, ldk, m, scale, s, lds); break;
	case 4: a512_scores_nq(q, 4, hd, kt, ldk, m, scale, s, lds); break;
	case 5: a512_scores_nq(q, 5, hd, kt, ldk, m, scale, s, lds); break;
	case 6: a512_scores_nq(q, 6, hd, kt, ldk, m, scale, s, lds); break;
	case 7: a512_scores_nq(q, 7, hd, kt, ldk, m, scale, s, lds); break;
	default: a512_scores_nq(q, 8, hd, kt, ldk, m, scale, s, lds); break;
	}
}

/* out rows r < NQ, columns [d0, d0 + 16 C) of p v, the last 16 masked by
 * last (a head size that is not a multiple of 16 ends part-way). */
INLINE T_AVX512 void a512_pv_nq(const float *p, const int NQ, int64_t lds, const float *v,
                                int64_t m, int hd, int d0, const int C, __mmask16 last, float *out)
{
	__m512 acc[4][4];
#pragma GCC unroll 4
	for (int r = 0; r < NQ; r++)
#pragma GCC unroll 4
		for (int c = 0; c < C; c++)
			acc[r][c] = _mm512_setzero_ps();
	for (int64_t k = 0; k < m; k++) {
		__m512 vv[4];
#pragma GCC unroll 4
		for (int c = 0; c < C; c++)
			vv[c] = _mm512_maskz_loadu_ps(c == C - 1 ? last : 0xffff, v + k * hd + d0 + 16 * c);
#pragma GCC unroll 4
		for (int r = 0; r < NQ; r++) {
			__m512 pk = _mm512_set1_ps(p[r * lds + k]);
#pragma GCC unroll 4
			for (int c = 0; c < C; c++)
				acc[r][c] = _mm512_fmadd_ps(pk, vv[c], acc[r][c]);
		}
	}
#pragma GCC unroll 4
	for (int r = 0; r < NQ; r++)
#pragma GCC unroll 4
		for (int c = 0; c < C; c++)
			_mm512_mask_storeu_ps(out + r * hd + d0 + 16 * c, c == C - 1 ? last : 0xffff,
			                      acc[r][c]);
}

T_AVX512 static void a512_att_pv(const float *p, int nq, int64_t lds, const float *v, int64_t m,
                                 int hd, float *out)
{
	for (int r0 = 0; r0 < nq; r0 += 4) {
		int nr = KVS_MIN(4, nq - r0);
		for (int d0 = 0; d0 < hd; d0 += 64) {
			int c = KVS_MIN(4, (hd - d0 + 15) / 16);
			int tail = KVS_MIN(16, hd - d0 - 16 * (c - 1)); /* 1..16 */
			__mmask16 last = (__mmask16)((1u << tail) - 1);
			const float *pr = p + r0 * lds;
			float *o = out + r0 * hd;
#define A512_PV(NR)                                            \
	do {                                                       \
		if (c == 4)                                            \
			a512_pv_nq(pr, NR, lds, v, m, hd, d0, 4, last, o); \
		else if (c == 3)                                       \
			a512_pv_nq(pr, NR, lds, v, m, hd, d0, 3, last, o); \
		else if (c == 2)                                       \
			a512_pv_nq(pr, NR, lds, v, m, hd, d0, 2, last, o); \
		else                                                   \
			a512_pv_nq(pr, NR, lds, v, m, hd, d0, 1, last, o); \
	} while (0)
			switch (nr) {
			case 1: A512_PV(1); break;
			case 2: A512_PV(2); break;
			case 3: A512_PV(3); break;
			default: A512_PV(4); break;
			}
#undef A512_PV
		}
	}
}

/* 16 values of a KV row from element d. */
INLINE T_AVX512 __m512 a512_kv16(const void *row, bool half, int d)
{
	if (half)
		return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + d)));
	return _mm512_loadu_ps((const float *)row + d);
}

/*
 * Decode attention straight from the KV table. Rows are visited once each
 * (a second pass over a long context would miss the caches again), in
 * blocks of 64 head elements with up to 4 query heads at a time, so that
 * the queries or the accumulators of a block stay in registers: NR is a
 * compile-time count after the switch in the callers.
 */
#define A512_PF 8 /* rows to prefetch ahead */

INLINE T_AVX512 void a512_scores_blk(const float *q, int hd, int d0, const uint8_t *base,
                                     size_t row_bytes, bool half, const uint32_t *rows, int64_t m,
                                     float scale, float *s, int64_t lds, int NR, bool first)
{
	__m512 qv[4][4];
	for (int r = 0; r < NR; r++)
		for (int c = 0; c < 4; c++)
			qv[r][c] = _mm512_loadu_ps(q + r * hd + d0 + 16 * c);
	for (int64_t k = 0; k < m; k++) {
		const uint8_t *row = base + (size_t)rows[k] * row_bytes;
		if (k + A512_PF < m)
			_mm_prefetch((const char *)base + (size_t)rows[k + A512_PF] * row_bytes, _MM_HINT_T0);
		__m512 kv[4];
		for (int c = 0; c < 4; c++)
			kv[c] = a512_kv16(row, half, d0 + 16 * c);
		for (int r = 0; r < NR; r++) {
			__m512 acc = _mm512_mul_ps(qv[r][0], kv[0]);
			for (int c = 1; c < 4; c++)
				acc = _mm512_fmadd_ps(qv[r][c], kv[c], acc);
			float v = scale * _mm512_reduce_add_ps(acc);
			s[r * lds + k] = first ? v : s[r * lds + k] + v;
		}
	}
}

INLINE T_AVX512 void a512_pv_blk(const float *p, int64_t lds, const uint8_t *base, size_t row_bytes,
                                 bool half, const uint32_t *rows, int64_t m, int d0, int hd,
                                 float *out, int NR)
{
	__m512 acc[4][4];
	for (int r = 0; r < NR; r++)
		for (int c = 0; c < 4; c++)
			acc[r][c] = _mm512_setzero_ps();
	for (int64_t k = 0; k < m; k++) {
		const uint8_t *row = base + (size_t)rows[k] * row_bytes;
		if (k + A512_PF < m)
			_mm_prefetch((const char *)base + (size_t)rows[k + A512_PF] * row_bytes, _MM_HINT_T0);
		__m512 v[4];
		for (int c = 0; c < 4; c++)
			v[c] = a512_kv16(row, half, d0 + 16 * c);
		for (int r = 0; r < NR; r++) {
			__m512 pk = _mm512_set1_ps(p[r * lds + k]);
			for (int c = 0; c < 4; c++)
				acc[r][c] = _mm512_fmadd_ps(pk, v[c], acc[r][c]);
		}
	}
	for (int r = 0; r < NR; r++)
		for (int c = 0; c < 4; c++)
			_mm512_storeu_ps(out + r * hd + d0 + 16 * c, acc[r][c]);
}

T_AVX512 static void a512_att_scores_rows(const float *q, int nq, int hd, const void *base,
                                          int64_t stride, bool half, const uint32_t *rows,
                                          int64_t m, float scale, float *s, int64_t lds)
{
	size_t rb = (size_t)stride * (half ? 2 : 4);
	if (hd % 64 != 0) {
		kern_scalar_att_scores_rows(q, nq, hd, base, stride, half, rows, m, scale, s, lds);
		return;
	}
	for (int r0 = 0; r0 < nq; r0 += 4)
		for (int d0 = 0; d0 < hd; d0 += 64) {
			const float *qr = q + r0 * hd;
			float *sr = s + r0 * lds;
			bool first = d0 == 0;
			switch (KVS_MIN(4, nq - r0)) {
			case 1:
				a512_scores_blk(qr, hd, d0, base, rb, half, rows, m, scale, sr, lds, 1, first);
				break;
			case 2:
				a512_scores_blk(qr, hd, d0, base, rb, half, rows, m, scale, sr, lds, 2, first);
				break;
			case 3:
				a512_scores_blk(qr, hd, d0, base, rb, half, rows, m, scale, sr, lds, 3, first);
				break;
			default:
				a512_scores_blk(qr, hd, d0, base, rb, half, rows, m, scale, sr, lds, 4, first);
				break;
			}
		}
}

T_AVX512 static void a512_att_pv_rows(const float *p, int nq, int64_t lds, const void *base,
                                      int64_t stride, bool half, const uint32_t *rows, int64_t m,
                                      int hd, float *out)
{
	size_t rb = (size_t)stride * (half ? 2 : 4);
	if (hd % 64 != 0) {
		kern_scalar_att_pv_rows(p, nq, lds, base, stride, half, rows, m, hd, out);
		return;
	}
	for (int r0 = 0; r0 < nq; r0 += 4)
		for (int d0 = 0; d0 < hd; d0 += 64) {
			const float *pr = p + r0 * lds;
			float *o = out + r0 * hd;
			switch (KVS_MIN(4, nq - r0)) {
			case 1: a512_pv_blk(pr, lds, base, rb, half, rows, m, d0, hd, o, 1); break;
			case 2: a512_pv_blk(pr, lds, base, rb, half, rows, m, d0, hd, o, 2); break;
			case 3: a512_pv_blk(pr, lds, base, rb, half, rows, m, d0, hd, o, 3); break;
			default: a512_pv_blk(pr, lds, base, rb, half, rows, m, d0, hd, o, 4); break;
			}
		}
}

T_AVX512 static float a512_exp_sum(float *x, int64_t n, float mx)
{
	__m512 vm = _mm512_set1_ps(mx), sum = _mm512_setzero_ps();
	for (int64_t i = 0; i < n; i += 16) {
		__mmask16 mk = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
		__m512 e = a512_exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + i), vm));
		e = _mm512_maskz_mov_ps(mk, e);
		_mm512_mask_storeu_ps(x + i, mk, e);
		sum = _mm512_add_ps(sum, e);
	}
	return _mm512_reduce_add_ps(sum);
}

T_AVX512 static void a512_swiglu(float *g, const float *u, int64_t n)
{
	const __m512 one = _mm512_set1_ps(1.0f);
	for (int64_t i = 0; i < n; i += 16) {
		__mmask16 mk = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
		__m512 x = _mm512_maskz_loadu_ps(mk, g + i);
		__m512 e = a512_exp(_mm512_sub_ps(_mm512_setzero_ps(), x));
		__m512 y = _mm512_div_ps(x, _mm512_add_ps(one, e));
		_mm512_mask_storeu_ps(g + i, mk, _mm512_mul_ps(y, _mm512_maskz_loadu_ps(mk, u + i)));
	}
}

/* As av2_geglu, sixteen lanes. */
T_AVX512 static void a512_geglu(float *g, const float *u, int64_t n)
{
	const void *tab = kern_gelu_f16();
	const __m512 lo = _mm512_set1_ps(-10.0f), hi = _mm512_set1_ps(10.0f);
	const __m512i low16 = _mm512_set1_epi32(0xFFFF);
	for (int64_t i = 0; i < n; i += 16) {
		__mmask16 mk = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
		__m512 x = _mm512_maskz_loadu_ps(mk, g + i);
		__m512i h = _mm512_cvtepu16_epi32(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
		__m512i t = _mm512_and_si512(_mm512_i32gather_epi32(h, tab, 2), low16);
		__m512 y = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(t));
		y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, hi, _CMP_GE_OQ), x);
		y = _mm512_maskz_mov_ps(~_mm512_cmp_ps_mask(x, lo, _CMP_LE_OQ), y);
		_mm512_mask_storeu_ps(g + i, mk, _mm512_mul_ps(y, _mm512_maskz_loadu_ps(mk, u + i)));
	}
}

T_AVX512 static void a512_rmsnorm(const float *x, const float *w, float *out, int64_t n, float eps)
{
	__m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
	int64_t i = 0;
	for (; i + 16 <= n; i += 16) {
		__m512 v = _mm512_loadu_ps(x + i);
		__m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
		__m512d hi =
		        _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
		s0 = _mm512_fmadd_pd(lo, lo, s0);
		s1 = _mm512_fmadd_pd(hi, hi, s1);
	}
	double ss = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
	for (; i < n; i++)
		ss += (double)x[i] * x[i];
	__m512 sc = _mm512_set1_ps(1.0f / sqrtf((float)(ss / (double)n) + eps));
	for (i = 0; i + 16 <= n; i += 16)
		_mm512_storeu_ps(
		        out + i,
		        _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), sc), _mm512_loadu_ps(w + i)));
	float scale = _mm512_cvtss_f32(sc);
	for (; i < n; i++)
		out[i] = x[i] * scale * w[i];
}

T_AVX512 static void a512_rope(float *x, const float *cs, int n_rot, bool neox)
{
	int half = n_rot / 2;
	const float *cv = cs, *sv = cs + half;
	if (neox ? half % 16 != 0 : n_rot % 16 != 0) {
		kern_scalar_rope(x, cs, n_rot, neox);
		return;
	}
	if (neox) {
		for (int i = 0; i < half; i += 16) {
			__m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + half + i);
			__m512 c = _mm512_loadu_ps(cv + i), s = _mm512_loadu_ps(sv + i);
			_mm512_storeu_ps(x + i, _mm512_fmsub_ps(a, c, _mm512_mul_ps(b, s)));
			_mm512_storeu_ps(x + half + i, _mm512_fmadd_ps(a, s, _mm512_mul_ps(b, c)));
		}
		return;
	}
	/* adjacent pairs: even lanes a c - b s, odd lanes b c + a s */
	const __m512i dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
	for (int i = 0; i < n_rot; i += 16) {
		__m512 v = _mm512_loadu_ps(x + i);
		__m512 c = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(cv + i / 2)));
		__m512 s = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(sv + i / 2)));
		__m512 sw = _mm512_permute_ps(v, 0xB1); /* (b, a) in each pair */
		_mm512_storeu_ps(x + i, _mm512_fmaddsub_ps(v, c, _mm512_mul_ps(sw, s)));
	}
}

const struct kern_ops kern_avx512_ops = {
	.level = KERN_AVX512,
	.name = "avx512-vnni",
	.quant_row = a512_quant_row,
	.gemm_packed = a512_gemm_packed,
	.dot_f32 = a512_dot_f32,
	.dot_f16 = a512_dot_f16,
	.dot_bf16 = a512_dot_bf16,
	.gemm_rows_f32 = a512_gemm_rows_f32,
	.bf16_to_f32 = a512_bf16_to_f32,
	.axpy_f32 = a512_axpy_f32,
	.f16_to_f32 = a512_f16_to_f32,
	.f32_to_f16 = a512_f32_to_f16,
	.att_scores = a512_att_scores,
	.att_pv = a512_att_pv,
	.att_scores_rows = a512_att_scores_rows,
	.att_pv_rows = a512_att_pv_rows,
	.kv_rows_f32 = kern_avx2_kv_rows_f32,
	.max_f32 = kern_avx2_max_f32,
	.exp_sum = a512_exp_sum,
	.swiglu = a512_swiglu,
	.geglu = a512_geglu,
	.rmsnorm = a512_rmsnorm,
	.rope = a512_rope,
};
