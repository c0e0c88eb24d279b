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
 * table): attention (kern-avx2-attn.c) on f32 tiles with the keys transposed (up to 6 queries
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
#include "engine/kern-avx2-int.h"

#include <math.h>

/* How far ahead (bytes) a one-token tile asks for its weights: decode
 * streams every weight once per token, and on Zen 3 the first touch of each
 * block stalled the tile (perf: the block header's load held a third of
 * its samples). 2.5 KiB is about a microsecond of one core's stream at the
 * ~15 GB/s a core gets here; tg128 rose ~7 % (BENCHMARKS.md). */
enum { AV2_PREFETCH = 2560 };

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
		if (h == 0 && T == 1) /* the second half reads the same lines from L1 */
			for (uint32_t o = 0; o < pt->pk_bytes; o += 64)
				_mm_prefetch((const char *)pb + AV2_PREFETCH + o, _MM_HINT_T0);
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

T_AVX2 static void av2_f32_to_f16(const float *src, uint16_t *dst, int64_t n)
{
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm_storeu_si128((__m128i *)(dst + i),
		                 _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
	for (; i < n; i++)
		dst[i] = dtype_f32_to_f16(src[i]);
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

/* The gate to f16 (F16C rounds to nearest even, as dtype_f32_to_f16),
 * eight 32-bit gathers at 2-byte steps of the table, the low halves packed
 * back to f16 and widened; the two clamps blended in. */
T_AVX2 static void av2_geglu(float *g, const float *u, int64_t n)
{
	const int *tab = (const int *)(const void *)kern_gelu_f16();
	const __m256 lo = _mm256_set1_ps(-10.0f), hi = _mm256_set1_ps(10.0f);
	const __m256i low16 = _mm256_set1_epi32(0xFFFF);
	for (int64_t i = 0; i < n; i += 8) {
		__m256i mk = av2_mask(n - i);
		__m256 x = _mm256_maskload_ps(g + i, mk);
		__m256i h = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
		__m256i t = _mm256_and_si256(_mm256_i32gather_epi32(tab, h, 2), low16);
		t = _mm256_permute4x64_epi64(_mm256_packus_epi32(t, t), 0x08);
		__m256 y = _mm256_cvtph_ps(_mm256_castsi256_si128(t));
		y = _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, hi, _CMP_GE_OQ));
		y = _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LE_OQ), y);
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
	.att_scores = kern_avx2_att_scores,
	.att_pv = kern_avx2_att_pv,
	.att_scores_rows = kern_avx2_att_scores_rows,
	.att_pv_rows = kern_avx2_att_pv_rows,
	.kv_rows_f32 = kern_avx2_kv_rows_f32,
	.max_f32 = kern_avx2_max_f32,
	.exp_sum = av2_exp_sum,
	.swiglu = av2_swiglu,
	.geglu = av2_geglu,
	.rmsnorm = av2_rmsnorm,
	.rope = av2_rope,
};
