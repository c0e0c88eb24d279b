/*
 * kern-avx2.c: the AVX2 kernels (with FMA and F16C, no VNNI).
 *
 * Eight rows per register, so a 16-row packed group is taken as two
 * halves. The packed product is specialised per packed type (one tile
 * function per entry of kern_ptypes, in its order, so the geometry folds
 * into the code) and per token count (1 to 4 tokens per tile, the
 * accumulators held in registers). Without VNNI, the u8 x s8 pair-wise
 * multiply saturates on Q8_0's q + 128, so that path multiplies |w| by the
 * sign-adjusted activation instead (see kern.c's header).
 *
 * Every other entry has its vector form too (no scalar kernel in the
 * table): attention on f32 tiles with the keys transposed (up to 6 queries
 * against 16 keys, 12 sums in registers) and P V (3 rows by 32 columns);
 * the in-place decode attention, which reads each KV row once for all the
 * query heads of its KV head (scores of 2 keys at a time, 8 keys' sums
 * out of one transposing reduction; P V in runs of 64 keys); the tile
 * loader (8 x 8 blocks converted and transposed in registers); the max; a
 * vectorised exp (Cody-Waite reduction, degree-7 polynomial) for the
 * softmax and SwiGLU; RMSNorm with its sum of squares in double; RoPE in
 * both pair layouts. Shapes the vector code does not take (a head or
 * rotation not a multiple of 8) go through the scalar kernel.
 *
 * Every function carries the target attribute T_AVX2, so this file builds
 * without -march; kern.c hands out kern_avx2_ops only to CPUs with AVX2
 * and FMA.
 */
#include "engine/kern-int.h"

#include <immintrin.h>
#include <math.h>

#define T_AVX2 __attribute__((target("avx2,fma,f16c")))

T_AVX2 static inline float av2_hsum(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

T_AVX2 static void av2_quant_row(const float *x, const struct kern_act *a, int64_t i)
{
	int64_t nb = a->K / KERN_QK;
	int8_t *q = a->q + i * a->K;
	const __m256 sign = _mm256_set1_ps(-0.0f);
	for (int64_t b = 0; b < nb; b++) {
		const float *xb = x + b * KERN_QK;
		__m256 v[4], m = _mm256_setzero_ps();
		for (int k = 0; k < 4; k++) {
			v[k] = _mm256_loadu_ps(xb + 8 * k);
			m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[k]));
		}
		__m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
		h = _mm_max_ps(h, _mm_movehl_ps(h, h));
		h = _mm_max_ss(h, _mm_movehdup_ps(h));
		float amax = _mm_cvtss_f32(h);
		float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
		__m256 vid = _mm256_set1_ps(id);
		__m256i qi[4], vsum = _mm256_setzero_si256();
		for (int k = 0; k < 4; k++) {
			qi[k] = _mm256_cvtps_epi32(_mm256_round_ps(
			        _mm256_mul_ps(v[k], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
			vsum = _mm256_add_epi32(vsum, qi[k]);
		}
		/* pack 32 int32 -> 32 int8 in order */
		__m256i p01 = _mm256_packs_epi32(qi[0], qi[1]);
		__m256i p23 = _mm256_packs_epi32(qi[2], qi[3]);
		__m256i p = _mm256_packs_epi16(p01, p23);
		p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
		_mm256_storeu_si256((__m256i *)(q + b * KERN_QK), p);
		__m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(vsum), _mm256_extracti128_si256(vsum, 1));
		s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
		s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
		int sum = _mm_cvtsi128_si32(s4);
		a->d[i * nb + b] = _cvtsh_ss(_cvtss_sh(d, 0));
		a->s[i * nb + b] = _cvtsh_ss(_cvtss_sh(d * (float)sum, 0));
		a->isum[i * nb + b] = sum;
		if (a->isum16 != NULL) {
			__m256i h0 = _mm256_add_epi32(qi[0], qi[1]);
			__m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(h0), _mm256_extracti128_si256(h0, 1));
			t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4e));
			t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xb1));
			int half0 = _mm_cvtsi128_si32(t4);
			a->isum16[2 * (i * nb + b)] = half0;
			a->isum16[2 * (i * nb + b) + 1] = sum - half0;
		}
	}
}

/* The bits above the nibbles of the eight chunks W (see the layout at the
 * top) from the plane(s) at hp, into bit 4 (and 5). */
INLINE T_AVX2 void av2_add_planes(__m256i W[8], const uint8_t *hp, int hbits)
{
	const __m256i mask = _mm256_set1_epi8(hbits == 1 ? 0x10 : 0x30);
	__m256i P0 = _mm256_loadu_si256((const __m256i *)hp), P1 = P0;
	if (hbits == 2)
		P1 = _mm256_loadu_si256((const __m256i *)(hp + 64));
#pragma GCC unroll 8
	for (int c = 0; c < 8; c++) {
		int from = hbits == 1 ? c : 2 * (c % 4); /* the bit that goes to bit 4 */
		__m256i P = c < 4 ? P0 : P1;
		__m256i v = from <= 4 ? _mm256_sll_epi16(P, _mm_cvtsi32_si128(4 - from))
		                      : _mm256_srl_epi16(P, _mm_cvtsi32_si128(from - 4));
		W[c] = _mm256_or_si256(W[c], _mm256_and_si256(v, mask));
	}
}

/* One half (8 rows) of a group for T tokens from t0. */
INLINE T_AVX2 void av2_tile(const struct kern_ptype *pt, const uint8_t *gd, int64_t nb, int h,
                            const struct kern_act *a, int64_t t0, int T, float *y, int64_t ldy,
                            int nr, bool acc)
{
	__m256 accf[4];
#pragma GCC unroll 8
	for (int t = 0; t < T; t++)
		accf[t] = _mm256_setzero_ps();
	const __m256i m4 = _mm256_set1_epi8(0x0F);
	const __m256i ones = _mm256_set1_epi16(1);
	const __m256i x80 = _mm256_set1_epi8((char)0x80);
	for (int64_t b = 0; b < nb; b++) {
		const uint8_t *pb = kern_block_at(pt, gd, b);
		__m256 dw, mo = _mm256_setzero_ps(), dw1 = _mm256_setzero_ps();
		if (pt->ks) {
			/* d * sc and -(dmin * m) per row, as the file's dequantiser */
			const uint8_t *sup = kern_super_at(pt, gd, b);
			__m256 d = _mm256_loadu_ps((const float *)(sup + 32 * h));
			__m128i s0 = _mm_loadl_epi64((const __m128i *)(pb + 8 * h));
			__m128i s1 = _mm_loadl_epi64((const __m128i *)(pb + 16 + 8 * h));
			if (pt->halves) {
				dw = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(s0)));
				dw1 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(s1)));
			} else {
				dw = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(s0)));
				__m256 dmin = _mm256_loadu_ps((const float *)(sup + 64 + 32 * h));
				mo = _mm256_sub_ps(
				        _mm256_setzero_ps(),
				        _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(s1))));
			}
		} else if (pt->f32) {
			dw = _mm256_loadu_ps((const float *)(pb + 32 * h));
			if (pt->min)
				mo = _mm256_loadu_ps((const float *)(pb + 64 + 32 * h));
			if (pt->halves)
				dw1 = _mm256_loadu_ps((const float *)(pb + 64 + 32 * h));
		} else {
			dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pb + 16 * h)));
			if (pt->min)
				mo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pb + 32 + 16 * h)));
		}
		const int32_t *isum = a->isum + t0 * nb + b;
		const uint8_t *qs = pb + pt->hdr + 32 * h;
		__m256i W[8];
		if (pt->bits8) {
#pragma GCC unroll 8
			for (int j = 0; j < 8; j++) {
				W[j] = _mm256_loadu_si256((const __m256i *)(qs + 64 * j));
				if (pt->flip) /* back to signed; |w| against sign-adjusted a avoids saturation */
					W[j] = _mm256_xor_si256(W[j], x80);
			}
		} else {
#pragma GCC unroll 8
			for (int j = 0; j < 4; j++) {
				__m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 64 * j));
				W[j] = _mm256_and_si256(raw, m4);
				W[j + 4] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
			}
			if (pt->hbits > 0)
				av2_add_planes(W, qs + 256, pt->hbits);
		}
#pragma GCC unroll 8
		for (int t = 0; t < T; t++) {
			const int8_t *aq = a->q + (t0 + t) * a->K + b * KERN_QK;
			__m256i it, it1 = _mm256_setzero_si256();
			if (pt->flip) {
				it = _mm256_setzero_si256();
#pragma GCC unroll 8
				for (int j = 0; j < 8; j++) {
					int32_t a4;
					memcpy(&a4, aq + 4 * j, 4);
					__m256i av = _mm256_sign_epi8(_mm256_set1_epi32(a4), W[j]);
					__m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(W[j], W[j]), av);
					it = _mm256_add_epi32(it, _mm256_madd_epi16(p, ones));
				}
			} else if (pt->bits8 || pt->hbits > 0) {
				/* quants < 64: two chunks' pair sums fit in int16 (2 x 2 x 63 x 127) */
				it = _mm256_setzero_si256();
#pragma GCC unroll 8
				for (int j = 0; j < 8; j += 2) {
					int32_t a0, a1;
					memcpy(&a0, aq + 4 * j, 4);
					memcpy(&a1, aq + 4 * j + 4, 4);
					__m256i s16 =
					        _mm256_add_epi16(_mm256_maddubs_epi16(W[j], _mm256_set1_epi32(a0)),
					                         _mm256_maddubs_epi16(W[j + 1], _mm256_set1_epi32(a1)));
					if (pt->halves && j >= 4)
						it1 = _mm256_add_epi32(it1, _mm256_madd_epi16(s16, ones));
					else
						it = _mm256_add_epi32(it, _mm256_madd_epi16(s16, ones));
				}
			} else {
				/* 8 x 2 x 15 x 127 < 32768: the int16 sums cannot overflow */
				__m256i s16 = _mm256_setzero_si256();
#pragma GCC unroll 8
				for (int j = 0; j < 8; j++) {
					int32_t a4;
					memcpy(&a4, aq + 4 * j, 4);
					s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(W[j], _mm256_set1_epi32(a4)));
				}
				it = _mm256_madd_epi16(s16, ones);
			}
			if (pt->halves) {
				const int32_t *h16 = a->isum16 + 2 * ((t0 + t) * nb + b);
				it = _mm256_sub_epi32(it, _mm256_set1_epi32(pt->off * h16[0]));
				it1 = _mm256_sub_epi32(it1, _mm256_set1_epi32(pt->off * h16[1]));
			} else if (pt->off != 0 && !pt->flip) {
				it = _mm256_sub_epi32(it, _mm256_set1_epi32(pt->off * isum[t * nb]));
			}
			float da = a->d[(t0 + t) * nb + b], sa = a->s[(t0 + t) * nb + b];
			__m256 vda = _mm256_set1_ps(da);
			accf[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(it), _mm256_mul_ps(dw, vda), accf[t]);
			if (pt->halves)
				accf[t] =
				        _mm256_fmadd_ps(_mm256_cvtepi32_ps(it1), _mm256_mul_ps(dw1, vda), accf[t]);
			if (pt->min)
				accf[t] = _mm256_fmadd_ps(mo, _mm256_set1_ps(sa), accf[t]);
		}
	}
	int nh = nr - 8 * h;
#pragma GCC unroll 8
	for (int t = 0; t < T; t++) {
		float *yt = y + (t0 + t) * ldy + 8 * h;
		if (nh >= 8) {
			__m256 v = acc ? _mm256_add_ps(_mm256_loadu_ps(yt), accf[t]) : accf[t];
			_mm256_storeu_ps(yt, v);
		} else {
			float tmp[8];
			_mm256_storeu_ps(tmp, accf[t]);
			for (int r = 0; r < nh; r++)
				yt[r] = acc ? yt[r] + tmp[r] : tmp[r];
		}
	}
}

/* Specialise the tile on the type and the token count. */
#define AV2_TILES(NAME, IDX)                                                                \
	T_AVX2 static void NAME(const uint8_t *gd, int64_t nb, int h, const struct kern_act *a, \
	                        int64_t t0, int T, float *y, int64_t ldy, int nr, bool acc)     \
	{                                                                                       \
		const struct kern_ptype *pt = &kern_ptypes[IDX];                                    \
		switch (T) {                                                                        \
		case 1: av2_tile(pt, gd, nb, h, a, t0, 1, y, ldy, nr, acc); break;                  \
		case 2: av2_tile(pt, gd, nb, h, a, t0, 2, y, ldy, nr, acc); break;                  \
		case 3: av2_tile(pt, gd, nb, h, a, t0, 3, y, ldy, nr, acc); break;                  \
		default: av2_tile(pt, gd, nb, h, a, t0, 4, y, ldy, nr, acc); break;                 \
		}                                                                                   \
	}
AV2_TILES(av2_tiles_0, 0)
AV2_TILES(av2_tiles_1, 1)
AV2_TILES(av2_tiles_2, 2)
AV2_TILES(av2_tiles_3, 3)
AV2_TILES(av2_tiles_4, 4)
AV2_TILES(av2_tiles_5, 5)
AV2_TILES(av2_tiles_6, 6)
AV2_TILES(av2_tiles_7, 7)

typedef void (*av2_tiles_fn)(const uint8_t *, int64_t, int, const struct kern_act *, int64_t, int,
                             float *, int64_t, int, bool);

/* In the order of kern_ptypes. */
static const av2_tiles_fn av2_tiles[] = { av2_tiles_0, av2_tiles_1, av2_tiles_2, av2_tiles_3,
	                                      av2_tiles_4, av2_tiles_5, av2_tiles_6, av2_tiles_7 };

T_AVX2 static void av2_gemm_packed(const struct kern_weight *w, int64_t g0, int64_t g1,
                                   const struct kern_act *a, int64_t n, float *y, int64_t ldy,
                                   bool acc)
{
	av2_tiles_fn fn = av2_tiles[kern_ptype_index(w->type)];
	int64_t nb = w->cols / KERN_QK;
	for (int64_t g = g0; g < g1; g++) {
		const uint8_t *gd = w->data + (uint64_t)g * w->group_bytes;
		int nr = (int)KVS_MIN((int64_t)KERN_GROUP, w->rows - g * KERN_GROUP);
		float *yg = y + g * KERN_GROUP;
		for (int h = 0; h < 2 && 8 * h < nr; h++)
			for (int64_t t0 = 0; t0 < n; t0 += 4)
				fn(gd, nb, h, a, t0, (int)KVS_MIN((int64_t)4, n - t0), yg, ldy, nr, acc);
	}
}

T_AVX2 static float av2_dot_f32(const float *a, const float *b, int64_t n)
{
	__m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
	int64_t i = 0;
	for (; i + 16 <= n; i += 16) {
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
		s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
	}
	float s = av2_hsum(_mm256_add_ps(s0, s1));
	for (; i < n; i++)
		s += a[i] * b[i];
	return s;
}

T_AVX2 static float av2_dot_f16(const uint16_t *w, const float *x, int64_t n)
{
	__m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
	int64_t i = 0;
	for (; i + 16 <= n; i += 16) {
		s0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i))),
		                     _mm256_loadu_ps(x + i), s0);
		s1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i + 8))),
		                     _mm256_loadu_ps(x + i + 8), s1);
	}
	float s = av2_hsum(_mm256_add_ps(s0, s1));
	for (; i < n; i++)
		s += dtype_f16_to_f32(w[i]) * x[i];
	return s;
}

/* NR rows by NT tokens (compile-time counts); K's tail in scalar. */
INLINE T_AVX2 void av2_rows_tile(const float *w, int64_t ldw, const float *x, int64_t ldx,
                                 int64_t K, float *y, int64_t ldy, bool acc, const int NR,
                                 const int NT)
{
	int64_t K8 = K & ~(int64_t)7;
	__m256 s[4][2];
#pragma GCC unroll 4
	for (int i = 0; i < NR; i++)
#pragma GCC unroll 2
		for (int t = 0; t < NT; t++)
			s[i][t] = _mm256_setzero_ps();
	for (int64_t k = 0; k < K8; k += 8) {
		__m256 a[2];
#pragma GCC unroll 2
		for (int t = 0; t < NT; t++)
			a[t] = _mm256_loadu_ps(x + t * ldx + k);
#pragma GCC unroll 4
		for (int i = 0; i < NR; i++) {
			__m256 v = _mm256_loadu_ps(w + i * ldw + k);
#pragma GCC unroll 2
			for (int t = 0; t < NT; t++)
				s[i][t] = _mm256_fmadd_ps(v, a[t], s[i][t]);
		}
	}
#pragma GCC unroll 2
	for (int t = 0; t < NT; t++)
#pragma GCC unroll 4
		for (int i = 0; i < NR; i++) {
			float v = av2_hsum(s[i][t]);
			for (int64_t k = K8; k < K; k++)
				v += w[i * ldw + k] * x[t * ldx + k];
			float *o = y + t * ldy + i;
			*o = acc ? *o + v : v;
		}
}

#define AV2_ROWS(NR)                                            \
	if (nt == 1)                                                \
		av2_rows_tile(w, ldw, xt, ldx, K, yt, ldy, acc, NR, 1); \
	else                                                        \
		av2_rows_tile(w, ldw, xt, ldx, K, yt, ldy, acc, NR, 2);

T_AVX2 static void av2_gemm_rows_f32(const float *w, int64_t ldw, int nr, const float *x,
                                     int64_t ldx, int64_t n, int64_t K, float *y, int64_t ldy,
                                     bool acc)
{
	for (int64_t t0 = 0; t0 < n; t0 += 2) {
		int nt = (int)KVS_MIN((int64_t)2, n - t0);
		const float *xt = x + t0 * ldx;
		float *yt = y + t0 * ldy;
		switch (nr) {
		case 1: AV2_ROWS(1) break;
		case 2: AV2_ROWS(2) break;
		case 3: AV2_ROWS(3) break;
		default: AV2_ROWS(4) break;
		}
	}
}

/* 8 bf16 values at p as floats. */
INLINE T_AVX2 __m256 av2_bf16x8(const uint16_t *p)
{
	__m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
	return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

T_AVX2 static float av2_dot_bf16(const uint16_t *w, const float *x, int64_t n)
{
	__m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
	int64_t i = 0;
	for (; i + 16 <= n; i += 16) {
		s0 = _mm256_fmadd_ps(av2_bf16x8(w + i), _mm256_loadu_ps(x + i), s0);
		s1 = _mm256_fmadd_ps(av2_bf16x8(w + i + 8), _mm256_loadu_ps(x + i + 8), s1);
	}
	float s = av2_hsum(_mm256_add_ps(s0, s1));
	for (; i < n; i++)
		s += dtype_bf16_to_f32(w[i]) * x[i];
	return s;
}

T_AVX2 static void av2_bf16_to_f32(const uint16_t *src, float *dst, int64_t n)
{
	int64_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
		_mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
	}
	for (; i < n; i++)
		dst[i] = dtype_bf16_to_f32(src[i]);
}

T_AVX2 static void av2_axpy_f32(float *y, const float *x, float alpha, int64_t n)
{
	__m256 va = _mm256_set1_ps(alpha);
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i,
		                 _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
	for (; i < n; i++)
		y[i] += alpha * x[i];
}

T_AVX2 static void av2_f16_to_f32(const uint16_t *src, float *dst, int64_t n)
{
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
	for (; i < n; i++)
		dst[i] = dtype_f16_to_f32(src[i]);
}

/* 8 values of a KV row from element d. */
INLINE T_AVX2 __m256 av2_kv8(const void *row, bool half, int d)
{
	if (half)
		return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + d)));
	return _mm256_loadu_ps((const float *)row + d);
}

T_AVX2 static void av2_f32_to_f16(const float *src, uint16_t *dst, int64_t n)
{
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm_storeu_si128((__m128i *)(dst + i),
		                 _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
	for (; i < n; i++)
		dst[i] = dtype_f32_to_f16(src[i]);
}

/* ------------------------------------------------------------ attention */

/* Lane masks for the first n (0..8) of 8 floats. */
INLINE T_AVX2 __m256i av2_mask(int64_t n)
{
	const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
	return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)KVS_MIN(n, (int64_t)8)), idx);
}

/* Scores of NR (1..6) queries against the keys [k0, k0 + 16) of a
 * transposed tile; with TAIL only the first n of them exist. */
INLINE T_AVX2 void av2_scores_blk(const float *q, const int NR, int hd, const float *kt,
                                  int64_t ldk, int64_t k0, float scale, float *s, int64_t lds,
                                  const bool TAIL, int64_t n)
{
	__m256 acc[6][2];
	__m256i m0 = _mm256_set1_epi32(-1), m1 = m0;
	if (TAIL) {
		m0 = av2_mask(n);
		m1 = av2_mask(n - 8);
	}
#pragma GCC unroll 6
	for (int r = 0; r < NR; r++)
		acc[r][0] = acc[r][1] = _mm256_setzero_ps();
	for (int d = 0; d < hd; d++) {
		const float *kd = kt + d * ldk + k0;
		__m256 k0v = TAIL ? _mm256_maskload_ps(kd, m0) : _mm256_loadu_ps(kd);
		__m256 k1v = TAIL ? _mm256_maskload_ps(kd + 8, m1) : _mm256_loadu_ps(kd + 8);
#pragma GCC unroll 6
		for (int r = 0; r < NR; r++) {
			__m256 qv = _mm256_broadcast_ss(q + r * hd + d);
			acc[r][0] = _mm256_fmadd_ps(qv, k0v, acc[r][0]);
			acc[r][1] = _mm256_fmadd_ps(qv, k1v, acc[r][1]);
		}
	}
	__m256 vs = _mm256_set1_ps(scale);
#pragma GCC unroll 6
	for (int r = 0; r < NR; r++) {
		float *sr = s + r * lds + k0;
		if (TAIL) {
			_mm256_maskstore_ps(sr, m0, _mm256_mul_ps(acc[r][0], vs));
			_mm256_maskstore_ps(sr + 8, m1, _mm256_mul_ps(acc[r][1], vs));
		} else {
			_mm256_storeu_ps(sr, _mm256_mul_ps(acc[r][0], vs));
			_mm256_storeu_ps(sr + 8, _mm256_mul_ps(acc[r][1], vs));
		}
	}
}

/* All m keys for NR queries: 16 keys a step, the tail masked. */
INLINE T_AVX2 void av2_scores_nr(const float *q, const int NR, int hd, const float *kt, int64_t ldk,
                                 int64_t m, float scale, float *s, int64_t lds)
{
	int64_t k0 = 0;
	for (; k0 + 16 <= m; k0 += 16)
		av2_scores_blk(q, NR, hd, kt, ldk, k0, scale, s, lds, false, 16);
	if (k0 < m)
		av2_scores_blk(q, NR, hd, kt, ldk, k0, scale, s, lds, true, m - k0);
}

/* Scores on transposed keys: queries in runs of up to 6 (12 accumulators,
 * two key vectors and a broadcast fill the 16 registers). */
T_AVX2 static void av2_att_scores(const float *q, int nq, int hd, const float *kt, int64_t ldk,
                                  int64_t m, float scale, float *s, int64_t lds)
{
	for (int r0 = 0; r0 < nq;) {
		int nr = nq - r0 > 6 ? (nq - r0 == 8 ? 4 : 6) : nq - r0;
		const float *qr = q + r0 * hd;
		float *sr = s + r0 * lds;
		switch (nr) {
		case 1: av2_scores_nr(qr, 1, hd, kt, ldk, m, scale, sr, lds); break;
		case 2: av2_scores_nr(qr, 2, hd, kt, ldk, m, scale, sr, lds); break;
		case 3: av2_scores_nr(qr, 3, hd, kt, ldk, m, scale, sr, lds); break;
		case 4: av2_scores_nr(qr, 4, hd, kt, ldk, m, scale, sr, lds); break;
		case 5: av2_scores_nr(qr, 5, hd, kt, ldk, m, scale, sr, lds); break;
		default: av2_scores_nr(qr, 6, hd, kt, ldk, m, scale, sr, lds); break;
		}
		r0 += nr;
	}
}

/* out rows r < NR, columns [d0, d0 + 8 C) of p v (NR <= 3, C <= 4: up to
 * 12 accumulators, the C value vectors and a broadcast). */
INLINE T_AVX2 void av2_pv_blk(const float *p, const int NR, int64_t lds, const float *v, int64_t m,
                              int hd, int d0, const int C, float *out)
{
	__m256 acc[3][4];
#pragma GCC unroll 3
	for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
		for (int c = 0; c < C; c++)
			acc[r][c] = _mm256_setzero_ps();
	for (int64_t k = 0; k < m; k++) {
		__m256 vv[4];
#pragma GCC unroll 4
		for (int c = 0; c < C; c++)
			vv[c] = _mm256_loadu_ps(v + k * hd + d0 + 8 * c);
#pragma GCC unroll 3
		for (int r = 0; r < NR; r++) {
			__m256 pk = _mm256_broadcast_ss(p + r * lds + k);
#pragma GCC unroll 4
			for (int c = 0; c < C; c++)
				acc[r][c] = _mm256_fmadd_ps(pk, vv[c], acc[r][c]);
		}
	}
#pragma GCC unroll 3
	for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
		for (int c = 0; c < C; c++)
			_mm256_storeu_ps(out + r * hd + d0 + 8 * c, acc[r][c]);
}

/* The columns of NR output rows: 32 at a time, then 8s, then one by one. */
INLINE T_AVX2 void av2_pv_nr(const float *p, const int NR, int64_t lds, const float *v, int64_t m,
                             int hd, float *out)
{
	int d0 = 0;
	for (; d0 + 32 <= hd; d0 += 32)
		av2_pv_blk(p, NR, lds, v, m, hd, d0, 4, out);
	switch ((hd - d0) / 8) {
	case 3: av2_pv_blk(p, NR, lds, v, m, hd, d0, 3, out); break;
	case 2: av2_pv_blk(p, NR, lds, v, m, hd, d0, 2, out); break;
	case 1: av2_pv_blk(p, NR, lds, v, m, hd, d0, 1, out); break;
	default: break;
	}
	for (d0 += (hd - d0) / 8 * 8; d0 < hd; d0++)
		for (int r = 0; r < NR; r++) {
			float a = 0;
			for (int64_t k = 0; k < m; k++)
				a += p[r * lds + k] * v[k * hd + d0];
			out[r * hd + d0] = a;
		}
}

T_AVX2 static void av2_att_pv(const float *p, int nq, int64_t lds, const float *v, int64_t m,
                              int hd, float *out)
{
	for (int r0 = 0; r0 < nq; r0 += 3) {
		const float *pr = p + r0 * lds;
		float *o = out + r0 * hd;
		switch (KVS_MIN(3, nq - r0)) {
		case 1: av2_pv_nr(pr, 1, lds, v, m, hd, o); break;
		case 2: av2_pv_nr(pr, 2, lds, v, m, hd, o); break;
		default: av2_pv_nr(pr, 3, lds, v, m, hd, o); break;
		}
	}
}

/* Eight vectors' horizontal sums as one vector: lane j is sum(v[j]). */
INLINE T_AVX2 __m256 av2_hsum8(const __m256 v[8])
{
	__m256 a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
	__m256 b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
	/* a holds the sums of v0..v3 over each 128-bit half; b those of v4..v7 */
	return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

#define AV2_PF 8 /* rows to prefetch ahead in the decode kernels */

/*
 * Scores of NR (1..4) queries against the 8 keys [k0, k0 + 8) (n <= 8 of
 * them real; the others repeat the last and are not stored) read in place.
 * Two keys at a time, so each query chunk loaded serves two keys and 2 NR
 * independent sums hide the FMA latency (2 NR + 3 registers); HD and HALF
 * are compile-time in the common shapes so the head loop unrolls. Each
 * key's 8 partial sums go to part and the 8 keys' totals come out of one
 * transposing reduction (av2_hsum8).
 */
INLINE T_AVX2 void av2_scores_rows8(const float *q, const int NR, const int HD, const bool HALF,
                                    const uint8_t *base, size_t rb, const uint32_t *rows,
                                    int64_t k0, int64_t m, float scale, float *s, int64_t lds)
{
	__m256 part[4][8];
	int n = (int)KVS_MIN((int64_t)8, m - k0);
#pragma GCC unroll 4
	for (int j = 0; j < 8; j += 2) {
		const uint8_t *r0 = base + (size_t)rows[k0 + KVS_MIN(j, n - 1)] * rb;
		const uint8_t *r1 = base + (size_t)rows[k0 + KVS_MIN(j + 1, n - 1)] * rb;
		if (k0 + j + AV2_PF < m) {
			const char *pf = (const char *)base + (size_t)rows[k0 + j + AV2_PF] * rb;
			_mm_prefetch(pf, _MM_HINT_T0);
			_mm_prefetch(pf + 64, _MM_HINT_T0);
			if (k0 + j + 1 + AV2_PF < m) {
				pf = (const char *)base + (size_t)rows[k0 + j + 1 + AV2_PF] * rb;
				_mm_prefetch(pf, _MM_HINT_T0);
				_mm_prefetch(pf + 64, _MM_HINT_T0);
			}
		}
		__m256 a0[4], a1[4];
#pragma GCC unroll 4
		for (int r = 0; r < NR; r++)
			a0[r] = a1[r] = _mm256_setzero_ps();
#pragma GCC unroll 32
		for (int d = 0; d < HD; d += 8) {
			__m256 k0v = av2_kv8(r0, HALF, d), k1v = av2_kv8(r1, HALF, d);
#pragma GCC unroll 4
			for (int r = 0; r < NR; r++) {
				__m256 qv = _mm256_loadu_ps(q + r * HD + d);
				a0[r] = _mm256_fmadd_ps(qv, k0v, a0[r]);
				a1[r] = _mm256_fmadd_ps(qv, k1v, a1[r]);
			}
		}
#pragma GCC unroll 4
		for (int r = 0; r < NR; r++) {
			part[r][j] = a0[r];
			part[r][j + 1] = a1[r];
		}
	}
	__m256 vs = _mm256_set1_ps(scale);
#pragma GCC unroll 4
	for (int r = 0; r < NR; r++) {
		__m256 v = _mm256_mul_ps(av2_hsum8(part[r]), vs);
		if (n == 8)
			_mm256_storeu_ps(s + r * lds + k0, v);
		else
			_mm256_maskstore_ps(s + r * lds + k0, av2_mask(n), v);
	}
}

/* All keys for queries in runs of up to 4, for a compile-time head size
 * and element type. */
INLINE T_AVX2 void av2_scores_rows_hd(const float *q, int nq, const int HD, const bool HALF,
                                      const uint8_t *b, size_t rb, const uint32_t *rows, int64_t m,
                                      float scale, float *s, int64_t lds)
{
	for (int64_t k0 = 0; k0 < m; k0 += 8)
		for (int r0 = 0; r0 < nq; r0 += 4) {
			const float *qr = q + r0 * HD;
			float *sr = s + r0 * lds;
			switch (KVS_MIN(4, nq - r0)) {
			case 1: av2_scores_rows8(qr, 1, HD, HALF, b, rb, rows, k0, m, scale, sr, lds); break;
			case 2: av2_scores_rows8(qr, 2, HD, HALF, b, rb, rows, k0, m, scale, sr, lds); break;
			case 3: av2_scores_rows8(qr, 3, HD, HALF, b, rb, rows, k0, m, scale, sr, lds); break;
			default: av2_scores_rows8(qr, 4, HD, HALF, b, rb, rows, k0, m, scale, sr, lds); break;
			}
		}
}

/*
 * Decode scores straight from the KV table, keys in runs of 8 and up to 4
 * query heads (all the heads of a KV head in the usual GQA shapes) per
 * pass, so each row is read once per KV head for all its query heads.
 * Heads of 64 and 128 get their own unrolled code.
 */
T_AVX2 static void av2_att_scores_rows(const float *q, int nq, int hd, const void *base,
                                       int64_t stride, bool half, const uint32_t *rows, int64_t m,
                                       float scale, float *s, int64_t lds)
{
	size_t rb = (size_t)stride * (half ? 2 : 4);
	const uint8_t *b = base;
	if (hd == 64 && half)
		av2_scores_rows_hd(q, nq, 64, true, b, rb, rows, m, scale, s, lds);
	else if (hd == 64)
		av2_scores_rows_hd(q, nq, 64, false, b, rb, rows, m, scale, s, lds);
	else if (hd == 128 && half)
		av2_scores_rows_hd(q, nq, 128, true, b, rb, rows, m, scale, s, lds);
	else if (hd == 128)
		av2_scores_rows_hd(q, nq, 128, false, b, rb, rows, m, scale, s, lds);
	else if (half)
		av2_scores_rows_hd(q, nq, hd, true, b, rb, rows, m, scale, s, lds);
	else
		av2_scores_rows_hd(q, nq, hd, false, b, rb, rows, m, scale, s, lds);
}

/* out rows r < NR (<= 3), columns [d0, d0 + 16) of p V over keys [k0, k1)
 * read in place, added to what out holds when add: 6 sums, 2 value
 * vectors and NR broadcasts stay in registers. */
INLINE T_AVX2 void av2_pv_rows_blk(const float *p, const int NR, int64_t lds, const uint8_t *base,
                                   size_t rb, const bool HALF, const uint32_t *rows, int64_t k0,
                                   int64_t k1, int64_t m, int d0, int hd, float *out, bool add)
{
	__m256 acc[3][2];
#pragma GCC unroll 3
	for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
		for (int c = 0; c < 2; c++)
			acc[r][c] = add ? _mm256_loadu_ps(out + r * hd + d0 + 8 * c) : _mm256_setzero_ps();
	for (int64_t k = k0; k < k1; k++) {
		const uint8_t *row = base + (size_t)rows[k] * rb;
		if (d0 == 0 && k + AV2_PF < m) {
			const char *pf = (const char *)base + (size_t)rows[k + AV2_PF] * rb;
			_mm_prefetch(pf, _MM_HINT_T0);
			_mm_prefetch(pf + 64, _MM_HINT_T0);
		}
		__m256 v0 = av2_kv8(row, HALF, d0), v1 = av2_kv8(row, HALF, d0 + 8);
#pragma GCC unroll 3
		for (int r = 0; r < NR; r++) {
			__m256 pk = _mm256_broadcast_ss(p + r * lds + k);
			acc[r][0] = _mm256_fmadd_ps(pk, v0, acc[r][0]);
			acc[r][1] = _mm256_fmadd_ps(pk, v1, acc[r][1]);
		}
	}
#pragma GCC unroll 3
	for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
		for (int c = 0; c < 2; c++)
			_mm256_storeu_ps(out + r * hd + d0 + 8 * c, acc[r][c]);
}

#define AV2_PV_RUN 64 /* keys per run: the run's rows stay in L1 across column blocks */

/* The runs of keys for one element type (compile-time HALF). */
INLINE T_AVX2 void av2_pv_rows_t(const float *p, int nq, int64_t lds, const uint8_t *b, size_t rb,
                                 const bool HALF, const uint32_t *rows, int64_t m, int hd,
                                 float *out)
{
	for (int64_t k0 = 0; k0 < m; k0 += AV2_PV_RUN) {
		int64_t k1 = KVS_MIN(m, k0 + AV2_PV_RUN);
		bool add = k0 > 0;
		for (int r0 = 0; r0 < nq; r0 += 3) {
			const float *pr = p + r0 * lds;
			float *o = out + r0 * hd;
			for (int d0 = 0; d0 < hd; d0 += 16) {
				switch (KVS_MIN(3, nq - r0)) {
				case 1:
					av2_pv_rows_blk(pr, 1, lds, b, rb, HALF, rows, k0, k1, m, d0, hd, o, add);
					break;
				case 2:
					av2_pv_rows_blk(pr, 2, lds, b, rb, HALF, rows, k0, k1, m, d0, hd, o, add);
					break;
				default:
					av2_pv_rows_blk(pr, 3, lds, b, rb, HALF, rows, k0, k1, m, d0, hd, o, add);
					break;
				}
			}
		}
	}
}

/*
 * Decode P V straight from the KV table: runs of 64 keys, and within a run
 * up to 3 query heads by 16 columns at a time, so a row's columns are read
 * from memory once and from L1 for the other blocks (hd % 16 == 0).
 */
T_AVX2 static void av2_att_pv_rows(const float *p, int nq, int64_t lds, const void *base,
                                   int64_t stride, bool half, const uint32_t *rows, int64_t m,
                                   int hd, float *out)
{
	size_t rb = (size_t)stride * (half ? 2 : 4);
	if (m == 0) {
		memset(out, 0, (size_t)nq * hd * sizeof(float));
		return;
	}
	if (half)
		av2_pv_rows_t(p, nq, lds, base, rb, true, rows, m, hd, out);
	else
		av2_pv_rows_t(p, nq, lds, base, rb, false, rows, m, hd, out);
}

/* The 8 x 8 block r (8 vectors of 8) transposed in place. */
INLINE T_AVX2 void av2_transpose8(__m256 r[8])
{
	__m256 t[8], u[8];
#pragma GCC unroll 4
	for (int i = 0; i < 4; i++) {
		t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
		t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
	}
#pragma GCC unroll 2
	for (int i = 0; i < 2; i++) {
		u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
		u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
		u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
		u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
	}
#pragma GCC unroll 4
	for (int i = 0; i < 4; i++) {
		r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
		r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
	}
}

/*
 * KV rows to f32. Transposed: 8 rows at a time, each 8 x 8 block converted
 * into registers and transposed there (a run short of 8 rows repeats its
 * last row and stores only the real columns). Without hd % 8 == 0, scalar.
 */
T_AVX2 void kern_avx2_kv_rows_f32(const void *base, int64_t stride, bool half, const uint32_t *rows,
                                  int64_t m, int hd, bool transpose, float *dst, int64_t ldd)
{
	size_t rb = (size_t)stride * (half ? 2 : 4);
	const uint8_t *b = base;
	if (hd % 8 != 0) {
		kern_scalar_kv_rows_f32(base, stride, half, rows, m, hd, transpose, dst, ldd);
		return;
	}
	if (!transpose) {
		for (int64_t k = 0; k < m; k++)
			for (int d = 0; d < hd; d += 8)
				_mm256_storeu_ps(dst + k * ldd + d, av2_kv8(b + (size_t)rows[k] * rb, half, d));
		return;
	}
	for (int64_t k0 = 0; k0 < m; k0 += 8) {
		int n = (int)KVS_MIN((int64_t)8, m - k0);
		const uint8_t *r8[8];
		for (int j = 0; j < 8; j++)
			r8[j] = b + (size_t)rows[k0 + (j < n ? j : n - 1)] * rb;
		__m256i mk = av2_mask(n);
		for (int d = 0; d < hd; d += 8) {
			__m256 r[8];
#pragma GCC unroll 8
			for (int j = 0; j < 8; j++)
				r[j] = av2_kv8(r8[j], half, d);
			av2_transpose8(r);
#pragma GCC unroll 8
			for (int i = 0; i < 8; i++) {
				if (n == 8)
					_mm256_storeu_ps(dst + (d + i) * ldd + k0, r[i]);
				else
					_mm256_maskstore_ps(dst + (d + i) * ldd + k0, mk, r[i]);
			}
		}
	}
}

T_AVX2 float kern_avx2_max_f32(const float *x, int64_t n)
{
	__m256 m = _mm256_set1_ps(-INFINITY);
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
	if (i < n) {
		__m256i mk = av2_mask(n - i);
		m = _mm256_max_ps(
		        m, _mm256_blendv_ps(m, _mm256_maskload_ps(x + i, mk), _mm256_castsi256_ps(mk)));
	}
	__m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
	h = _mm_max_ps(h, _mm_movehl_ps(h, h));
	h = _mm_max_ss(h, _mm_movehdup_ps(h));
	return _mm_cvtss_f32(h);
}

/* ---------------------------------------------------- element-wise kernels */

/*
 * exp(x) for 8 lanes: x = n ln 2 + y with n = round(x log2 e) and y taken
 * off in two parts of ln 2 (Cody and Waite: the first part has 9 bits, so
 * n times it is exact), |y| <= ln 2 / 2; e^y by its Taylor series to degree
 * 7 (truncation below 6e-9 relative), 2^n built in the exponent field.
 * Inputs are clamped to [-87.3, 88.3], so that 2^n stays a normal float:
 * below, the result is ~1e-38 instead of a denormal or 0; above, ~2e38
 * instead of up to 3.4e38 or inf.
 */
INLINE T_AVX2 __m256 av2_exp(__m256 x)
{
	x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
	__m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
	                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m256 y = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
	y = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), y);
	__m256 p = _mm256_set1_ps(1.0f / 5040);
	p = _mm256_fmadd_ps(p, y, _mm256_set1_ps(1.0f / 720));
	p = _mm256_fmadd_ps(p, y, _mm256_set1_ps(1.0f / 120));
	p = _mm256_fmadd_ps(p, y, _mm256_set1_ps(1.0f / 24));
	p = _mm256_fmadd_ps(p, y, _mm256_set1_ps(1.0f / 6));
	p = _mm256_fmadd_ps(p, y, _mm256_set1_ps(0.5f));
	p = _mm256_fmadd_ps(p, y, _mm256_set1_ps(1.0f));
	p = _mm256_fmadd_ps(p, y, _mm256_set1_ps(1.0f));
	__m256i e =
	        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
	return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* Two vectors a step (two sums), so two exp chains overlap. */
T_AVX2 static float av2_exp_sum(float *x, int64_t n, float mx)
{
	__m256 vm = _mm256_set1_ps(mx), sum = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps();
	int64_t i = 0;
	for (; i + 16 <= n; i += 16) {
		__m256 e0 = av2_exp(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
		__m256 e1 = av2_exp(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm));
		_mm256_storeu_ps(x + i, e0);
		_mm256_storeu_ps(x + i + 8, e1);
		sum = _mm256_add_ps(sum, e0);
		sum1 = _mm256_add_ps(sum1, e1);
	}
	sum = _mm256_add_ps(sum, sum1);
	for (; i + 8 <= n; i += 8) {
		__m256 e = av2_exp(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
		_mm256_storeu_ps(x + i, e);
		sum = _mm256_add_ps(sum, e);
	}
	if (i < n) {
		__m256i mk = av2_mask(n - i);
		__m256 e = av2_exp(_mm256_sub_ps(_mm256_maskload_ps(x + i, mk), vm));
		e = _mm256_and_ps(e, _mm256_castsi256_ps(mk));
		_mm256_maskstore_ps(x + i, mk, e);
		sum = _mm256_add_ps(sum, e);
	}
	return av2_hsum(sum);
}

T_AVX2 static void av2_swiglu(float *g, const float *u, int64_t n)
{
	const __m256 one = _mm256_set1_ps(1.0f);
	for (int64_t i = 0; i < n; i += 8) {
		__m256i mk = av2_mask(n - i);
		__m256 x = _mm256_maskload_ps(g + i, mk);
		__m256 e = av2_exp(_mm256_sub_ps(_mm256_setzero_ps(), x));
		__m256 y = _mm256_div_ps(x, _mm256_add_ps(one, e));
		_mm256_maskstore_ps(g + i, mk, _mm256_mul_ps(y, _mm256_maskload_ps(u + i, mk)));
	}
}

T_AVX2 static void av2_rmsnorm(const float *x, const float *w, float *out, int64_t n, float eps)
{
	__m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
	int64_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m256 v = _mm256_loadu_ps(x + i);
		__m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
		__m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
		s0 = _mm256_fmadd_pd(lo, lo, s0);
		s1 = _mm256_fmadd_pd(hi, hi, s1);
	}
	__m256d s = _mm256_add_pd(s0, s1);
	__m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
	double ss = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
	for (; i < n; i++)
		ss += (double)x[i] * x[i];
	float scale = 1.0f / sqrtf((float)(ss / (double)n) + eps);
	__m256 sc = _mm256_set1_ps(scale);
	for (i = 0; i + 8 <= n; i += 8)
		_mm256_storeu_ps(
		        out + i,
		        _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), sc), _mm256_loadu_ps(w + i)));
	for (; i < n; i++)
		out[i] = x[i] * scale * w[i];
}

T_AVX2 static void av2_rope(float *x, const float *cs, int n_rot, bool neox)
{
	int half = n_rot / 2;
	const float *cv = cs, *sv = cs + half;
	if (neox ? half % 8 != 0 : n_rot % 8 != 0) {
		kern_scalar_rope(x, cs, n_rot, neox);
		return;
	}
	if (neox) {
		for (int i = 0; i < half; i += 8) {
			__m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + half + i);
			__m256 c = _mm256_loadu_ps(cv + i), s = _mm256_loadu_ps(sv + i);
			_mm256_storeu_ps(x + i, _mm256_fmsub_ps(a, c, _mm256_mul_ps(b, s)));
			_mm256_storeu_ps(x + half + i, _mm256_fmadd_ps(a, s, _mm256_mul_ps(b, c)));
		}
		return;
	}
	/* adjacent pairs: even lanes a c - b s, odd lanes b c + a s */
	const __m256i dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
	for (int i = 0; i < n_rot; i += 8) {
		__m256 v = _mm256_loadu_ps(x + i);
		__m256 c = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(cv + i / 2)), dup);
		__m256 s = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(sv + i / 2)), dup);
		__m256 sw = _mm256_permute_ps(v, 0xB1); /* (b, a) in each pair */
		_mm256_storeu_ps(x + i, _mm256_fmaddsub_ps(v, c, _mm256_mul_ps(sw, s)));
	}
}

const struct kern_ops kern_avx2_ops = {
	.level = KERN_AVX2,
	.name = "avx2",
	.quant_row = av2_quant_row,
	.gemm_packed = av2_gemm_packed,
	.dot_f32 = av2_dot_f32,
	.dot_f16 = av2_dot_f16,
	.dot_bf16 = av2_dot_bf16,
	.gemm_rows_f32 = av2_gemm_rows_f32,
	.bf16_to_f32 = av2_bf16_to_f32,
	.axpy_f32 = av2_axpy_f32,
	.f16_to_f32 = av2_f16_to_f32,
	.f32_to_f16 = av2_f32_to_f16,
	.att_scores = av2_att_scores,
	.att_pv = av2_att_pv,
	.att_scores_rows = av2_att_scores_rows,
	.att_pv_rows = av2_att_pv_rows,
	.kv_rows_f32 = kern_avx2_kv_rows_f32,
	.max_f32 = kern_avx2_max_f32,
	.exp_sum = av2_exp_sum,
	.swiglu = av2_swiglu,
	.rmsnorm = av2_rmsnorm,
	.rope = av2_rope,
};
