/*
 * kern-avx2-attn.c: the AVX2 attention kernels: scores of up to 6 queries
 * against 16 transposed keys at a time (12 sums in registers) and P V (3
 * rows by 32 columns) on f32 tiles; the in-place decode attention, which
 * reads each KV row once for all the query heads of its KV head (scores of
 * 2 keys at a time, 8 keys' sums out of one transposing reduction; P V in
 * runs of 64 keys); the tile loader (8 x 8 blocks converted and transposed
 * in registers) and the max. Contracts as in kern_ops (kern.h); the table
 * that hands them out is kern-avx2.c's.
 */
#include "engine/kern-avx2-int.h"

#include <math.h>

/* 8 values of a KV row from element d. */
INLINE T_AVX2 __m256 av2_kv8(const void *row, bool half, int d)
{
	if (half)
		return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + d)));
	return _mm256_loadu_ps((const float *)row + d);
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
T_AVX2 void kern_avx2_att_scores(const float *q, int nq, int hd, const float *kt, int64_t ldk,
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

T_AVX2 void kern_avx2_att_pv(const float *p, int nq, int64_t lds, const float *v, int64_t m, int hd,
                             float *out)
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
T_AVX2 void kern_avx2_att_scores_rows(const float *q, int nq, int hd, const void *base,
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
T_AVX2 void kern_avx2_att_pv_rows(const float *p, int nq, int64_t lds, const void *base,
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
