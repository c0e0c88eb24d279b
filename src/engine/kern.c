/*
 * kern.c: the CPU backend's kernels, scalar, AVX2 and AVX-512 VNNI.
 *
 * The packed layout (see kern.h) of a 16-row group, for each 32-block b:
 *
 *   Q4_0  d[16] f16 | qs[4][16][4]             288 B  (= 16 x 18)
 *   Q4_1  d[16] f16 | m[16] f16 | qs[4][16][4] 320 B  (= 16 x 20)
 *   Q8_0  d[16] f16 | qs[8][16][4]             544 B  (= 16 x 34)
 *   Q5_0  D[16] f32 | qs[4][16][4] | hp[16][4]                384 B
 *   Q5_1  D[16] f32 | M[16] f32 | qs[4][16][4] | hp[16][4]    448 B
 *
 * and the k-quants keep the file's factoring: for each 256-block the 16
 * rows' d (and dmin) as f32, then its eight 32-blocks with their 6-bit
 * sub-scales as bytes:
 *
 *   Q4_K  d[16] dmin[16] f32 | 8 x ( sc[16] m[16] u8 | qs[4][16][4] )              128 + 8 x 288 B
 *   Q5_K  d[16] dmin[16] f32 | 8 x ( sc[16] m[16] u8 | qs[4][16][4] | hp[16][4] )  128 + 8 x 352 B
 *   Q6_K  d[16] f32 | 8 x ( sc0[16] sc1[16] i8 | qs[4][16][4] | hp[2][16][4] )    64 + 8 x 416 B
 *
 * (D = d * sc and M = -(dmin * m) are formed in the kernels with the
 * dequantiser's own float operations, so they are exact.)
 *
 * where qs[j][r][0..3] are row r's bytes 4j..4j+3 of the block. In the
 * 4-bit layouts a byte i holds element i (low nibble) and element i + 16
 * (high nibble), so chunk j < 4 gives elements 4j..4j+3 through its low
 * nibbles and elements 16+4j.. through its high nibbles; call these the
 * block's eight chunks c = 0..7 (c >= 4: the high nibbles). Q8_0 keeps
 * bytes instead, chunk c holding elements 4c..4c+3. The 5- and 6-bit types
 * keep their low four bits as nibbles and the rest in bit planes hp laid
 * out like one chunk: for the 5-bit types bit c of byte (r, e) is the fifth
 * bit of chunk c's element e; for Q6_K plane p's bits 2j, 2j+1 are the top
 * two bits of chunk 4p + j's. A weight is
 *
 *   w = D (q - k) + M      (Q6_K: D for elements 0..15, D1 for 16..31)
 *
 * with q the stored unsigned quant, k the type's integer offset (Q4_0 8,
 * Q8_0 128 as its bytes are stored q + 128, Q5_0 16, Q6_K 32, else 0) and M
 * the min (Q4_1, Q5_1, and -dmin*m for the k-quants). Every type multiplies
 * an unsigned weight byte by a signed activation byte, and the offset comes
 * back out through the activation block sums:
 *
 *   d_w d_a (sum(q a) - k sum(a)) + M s_a
 *
 * (AVX2 has no VNNI: its pair-wise u8 x s8 multiply saturates on q + 128, so
 * its Q8_0 path multiplies |w| by the sign-adjusted activation instead; for
 * the 5- and 6-bit types, q < 64, two chunks' pair sums fit in int16.)
 * Sums of int8 products are exact in int32, so the levels differ only in the
 * order of float additions.
 */
#include "engine/kern.h"

#include "model/model.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define T_AVX2 __attribute__((target("avx2,fma,f16c")))
#define T_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

/* One 32-block of a row, unpacked: quants and scales, as the packed layout
 * keeps them. */
struct kern_block {
	uint8_t q[KERN_QK];
	float D, D1, M;       /* 5-bit types: the block's scale (and min) */
	uint8_t s0, s1;       /* k-quants: the sub-block's scale and min (Q6_K: its two int8 scales) */
	float sd, smin;       /* k-quants: the 256-block's d and dmin (the kernels form D, M) */
};

/* Unpack 32-block b of a source row. */
typedef void (*kern_decode_fn)(const uint8_t *row, int64_t b, struct kern_block *out);

/* Geometry of the packed types. */
struct kern_ptype {
	uint32_t type;
	uint32_t src_bytes;   /* original bytes per source block */
	uint32_t src_elems;   /* elements per source block (32, or 256 for k-quants) */
	uint32_t src_qs;      /* copied types: offset of the quants in the block */
	uint32_t hdr;         /* packed header bytes (scales, mins) */
	uint32_t pk_bytes;    /* packed bytes per block of 16 rows */
	bool bits8;           /* byte quants (else 4-bit nibbles) */
	int hbits;            /* bits above the nibble, in planes (5-bit: 1, Q6_K: 2) */
	bool flip;            /* bytes stored as q + 128 (Q8_0) */
	bool f32;             /* f32 header (else f16) */
	bool min;             /* has M */
	bool halves;          /* a second scale D1 for elements 16..31 (Q6_K) */
	bool ks;              /* k-quant scales: bytes per block, d (dmin) per 256-block */
	uint32_t sh;          /* ks: bytes of a 256-block's header (d, dmin for 16 rows) */
	int32_t off;          /* the integer offset k */
	kern_decode_fn decode; /* NULL: the source bytes are copied */
};

/* Read a little-endian f16 as float. */
static inline float kern_rdh(const uint8_t *p)
{
	return dtype_f16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
}

/* Q4_K: 256-blocks of d, dmin, scales[12], qs[128]; sub-block j reads
 * qs[32(j/2) ..] low nibbles (even j) or high (odd j); w = d sc q - dmin m. */
static void kern_dec_q4_k(const uint8_t *row, int64_t b, struct kern_block *o)
{
	const uint8_t *sb = row + (b / 8) * 144, *qs = sb + 16 + 32 * ((b % 8) / 2);
	int j = (int)(b % 8), shift = (j & 1) * 4;
	uint8_t sc[8], mn[8];
	dtype_kq_scales_mins(sb + 4, sc, mn);
	for (int l = 0; l < KERN_QK; l++)
		o->q[l] = (uint8_t)((qs[l] >> shift) & 15);
	o->sd = kern_rdh(sb);
	o->smin = kern_rdh(sb + 2);
	o->s0 = sc[j];
	o->s1 = mn[j];
}

/* Q5_K: as Q4_K with a fifth bit, qh[l] bit j (qh[32] after the scales). */
static void kern_dec_q5_k(const uint8_t *row, int64_t b, struct kern_block *o)
{
	const uint8_t *sb = row + (b / 8) * 176, *qh = sb + 16, *qs = sb + 48 + 32 * ((b % 8) / 2);
	int j = (int)(b % 8), shift = (j & 1) * 4;
	uint8_t sc[8], mn[8];
	dtype_kq_scales_mins(sb + 4, sc, mn);
	for (int l = 0; l < KERN_QK; l++)
		o->q[l] = (uint8_t)(((qs[l] >> shift) & 15) | (((qh[l] >> j) & 1) << 4));
	o->sd = kern_rdh(sb);
	o->smin = kern_rdh(sb + 2);
	o->s0 = sc[j];
	o->s1 = mn[j];
}

/* Q6_K: 256-blocks of ql[128], qh[64], scales[16] (int8), d. Half h = j/4
 * of the block, group g = j%4: element l of the group is the low or high
 * nibble of ql[64h + l (+32)] with two bits of qh[32h + l]; scale index
 * 8h + 2g (+1 for l >= 16); w = d sc (q - 32). */
static void kern_dec_q6_k(const uint8_t *row, int64_t b, struct kern_block *o)
{
	const uint8_t *sb = row + (b / 8) * 210;
	int j = (int)(b % 8), h = j / 4, g = j % 4;
	const uint8_t *ql = sb + 64 * h + (g & 1) * 32, *qh = sb + 128 + 32 * h;
	const int8_t *sc = (const int8_t *)(sb + 192);
	int lshift = (g / 2) * 4, hshift = 2 * g;
	for (int l = 0; l < KERN_QK; l++)
		o->q[l] = (uint8_t)(((ql[l] >> lshift) & 15) | (((qh[l] >> hshift) & 3) << 4));
	o->sd = kern_rdh(sb + 208);
	o->smin = 0;
	o->s0 = (uint8_t)sc[8 * h + 2 * g];
	o->s1 = (uint8_t)sc[8 * h + 2 * g + 1];
}

/* Q5_0 (d, qh u32, qs[16]) and Q5_1 (d, m, qh, qs[16]): element l's fifth
 * bit is qh bit l; w = d (q - 16), or d q + m. */
static void kern_dec_q5(const uint8_t *blk, const uint8_t *qhp, struct kern_block *o)
{
	uint32_t qh = (uint32_t)qhp[0] | (uint32_t)qhp[1] << 8 | (uint32_t)qhp[2] << 16 |
	              (uint32_t)qhp[3] << 24;
	for (int l = 0; l < 16; l++) {
		o->q[l] = (uint8_t)((blk[l] & 15) | ((qh >> l) & 1) << 4);
		o->q[l + 16] = (uint8_t)((blk[l] >> 4) | ((qh >> (l + 16)) & 1) << 4);
	}
}

static void kern_dec_q5_0(const uint8_t *row, int64_t b, struct kern_block *o)
{
	const uint8_t *blk = row + b * 22;
	kern_dec_q5(blk + 6, blk + 2, o);
	o->D = kern_rdh(blk);
	o->D1 = o->M = 0;
}

static void kern_dec_q5_1(const uint8_t *row, int64_t b, struct kern_block *o)
{
	const uint8_t *blk = row + b * 24;
	kern_dec_q5(blk + 8, blk + 4, o);
	o->D = kern_rdh(blk);
	o->M = kern_rdh(blk + 2);
	o->D1 = 0;
}

/* type, src bytes, src elems, src qs, hdr, packed bytes (per block), bits8,
 * hbits, flip, f32, min, halves, ks, sh, offset, decoder */
static const struct kern_ptype kern_ptypes[] = {
	{ DT_Q4_0, 18, 32, 2, 32, 288, false, 0, false, false, false, false, false, 0, 8, NULL },
	{ DT_Q4_1, 20, 32, 4, 64, 320, false, 0, false, false, true, false, false, 0, 0, NULL },
	{ DT_Q8_0, 34, 32, 2, 32, 544, true, 0, true, false, false, false, false, 0, 128, NULL },
	{ DT_Q4_K, 144, 256, 0, 32, 288, false, 0, false, false, true, false, true, 128, 0,
	  kern_dec_q4_k },
	{ DT_Q5_0, 22, 32, 0, 64, 384, false, 1, false, true, false, false, false, 0, 16,
	  kern_dec_q5_0 },
	{ DT_Q5_1, 24, 32, 0, 128, 448, false, 1, false, true, true, false, false, 0, 0,
	  kern_dec_q5_1 },
	{ DT_Q5_K, 176, 256, 0, 32, 352, false, 1, false, false, true, false, true, 128, 0,
	  kern_dec_q5_k },
	{ DT_Q6_K, 210, 256, 0, 32, 416, false, 2, false, false, false, true, true, 64, 32,
	  kern_dec_q6_k },
};
#define KERN_N_PTYPES ((int)KVS_ARRAY_LEN(kern_ptypes))

/* Index of a type's packed geometry, or -1. */
static int kern_ptype_index(uint32_t type)
{
	for (int i = 0; i < KERN_N_PTYPES; i++)
		if (kern_ptypes[i].type == type)
			return i;
	return -1;
}

/* The packed geometry of a type, or NULL. */
static const struct kern_ptype *kern_ptype(uint32_t type)
{
	int i = kern_ptype_index(type);
	return i < 0 ? NULL : &kern_ptypes[i];
}

bool kern_type_packed(uint32_t type)
{
	return kern_ptype(type) != NULL;
}

/* Bytes of one 16-row group of nb blocks (k-quants: per 256-block, its
 * header then its 8 blocks). */
static uint64_t kern_group_span(const struct kern_ptype *pt, int64_t nb)
{
	if (pt->ks)
		return (uint64_t)(nb / 8) * (pt->sh + 8ull * pt->pk_bytes);
	return (uint64_t)nb * pt->pk_bytes;
}

/* Block b of the group at gd. */
static inline const uint8_t *kern_block_at(const struct kern_ptype *pt, const uint8_t *gd,
                                           int64_t b)
{
	if (pt->ks)
		return gd + (uint64_t)(b / 8) * (pt->sh + 8ull * pt->pk_bytes) + pt->sh +
		       (uint64_t)(b % 8) * pt->pk_bytes;
	return gd + (uint64_t)b * pt->pk_bytes;
}

/* The header of block b's 256-block (k-quants). */
static inline const uint8_t *kern_super_at(const struct kern_ptype *pt, const uint8_t *gd,
                                           int64_t b)
{
	return gd + (uint64_t)(b / 8) * (pt->sh + 8ull * pt->pk_bytes);
}

uint64_t kern_packed_bytes(uint32_t type, int64_t rows, int64_t K)
{
	const struct kern_ptype *pt = kern_ptype(type);
	if (pt == NULL)
		return 0;
	uint64_t groups = (uint64_t)(rows + KERN_GROUP - 1) / KERN_GROUP;
	return groups * kern_group_span(pt, K / KERN_QK);
}

/* Write one unpacked block as row r of packed block pr (k-quants: and its
 * 256-block's scales into the header sup). */
static void kern_put_block(const struct kern_ptype *pt, const struct kern_block *kb, int r,
                           uint8_t *pr, uint8_t *sup)
{
	if (pt->ks) {
		pr[r] = kb->s0;
		pr[16 + r] = kb->s1;
		memcpy(sup + 4 * r, &kb->sd, 4);
		if (pt->min)
			memcpy(sup + 64 + 4 * r, &kb->smin, 4);
	} else {
		memcpy(pr + 4 * r, &kb->D, 4);
		if (pt->min)
			memcpy(pr + 64 + 4 * r, &kb->M, 4);
		if (pt->halves)
			memcpy(pr + 64 + 4 * r, &kb->D1, 4);
	}
	uint8_t *qd = pr + pt->hdr + 4 * r;
	if (pt->bits8) {
		for (int i = 0; i < KERN_QK; i++)
			qd[64 * (i / 4) + i % 4] = kb->q[i];
		return;
	}
	for (int i = 0; i < KERN_QK / 2; i++)
		qd[64 * (i / 4) + i % 4] = (uint8_t)((kb->q[i] & 15) | (kb->q[i + 16] & 15) << 4);
	/* element i is entry e = i % 4 of chunk c = i / 4 (both nibble halves) */
	uint8_t *hp = qd + 256;
	if (pt->hbits == 1) {
		for (int e = 0; e < 4; e++) {
			unsigned v = 0;
			for (int c = 0; c < 8; c++)
				v |= (unsigned)(kb->q[4 * c + e] >> 4) << c;
			hp[e] = (uint8_t)v;
		}
	} else if (pt->hbits == 2) {
		for (int p = 0; p < 2; p++)
			for (int e = 0; e < 4; e++) {
				unsigned v = 0;
				for (int j = 0; j < 4; j++)
					v |= (unsigned)(kb->q[16 * p + 4 * j + e] >> 4) << (2 * j);
				hp[64 * p + e] = (uint8_t)v;
			}
	}
}

void kern_pack(uint32_t type, const uint8_t *src, int64_t rows, int64_t K, uint8_t *dst,
               int64_t g0, int64_t g1)
{
	const struct kern_ptype *pt = kern_ptype(type);
	int64_t nb = K / KERN_QK;
	uint64_t row_bytes = (uint64_t)(K / pt->src_elems) * pt->src_bytes;
	uint32_t n_chunks = pt->bits8 ? 8 : 4;
	uint32_t flip = pt->flip ? 0x80808080u : 0;
	uint64_t span = kern_group_span(pt, nb);
	for (int64_t g = g0; g < g1; g++) {
		uint8_t *gd = dst + (uint64_t)g * span;
		int nr = (int)KVS_MIN((int64_t)KERN_GROUP, rows - g * KERN_GROUP);
		if (nr < KERN_GROUP)
			memset(gd, 0, span); /* zero scales: padding rows give 0 */
		for (int r = 0; r < nr; r++) {
			const uint8_t *sr = src + (uint64_t)(g * KERN_GROUP + r) * row_bytes;
			uint8_t *pr = gd;
			if (pt->decode != NULL) {
				struct kern_block kb;
				for (int64_t b = 0; b < nb; b++) {
					pt->decode(sr, b, &kb);
					kern_put_block(pt, &kb, r, (uint8_t *)kern_block_at(pt, gd, b),
					               (uint8_t *)kern_super_at(pt, gd, b));
				}
				continue;
			}
			for (int64_t b = 0; b < nb; b++, sr += pt->src_bytes, pr += pt->pk_bytes) {
				memcpy(pr + 2 * r, sr, 2); /* d */
				if (pt->min)
					memcpy(pr + 32 + 2 * r, sr + 2, 2); /* m */
				for (uint32_t j = 0; j < n_chunks; j++) {
					uint32_t v;
					memcpy(&v, sr + pt->src_qs + 4 * j, 4);
					v ^= flip;
					memcpy(pr + pt->hdr + 64 * j + 4 * r, &v, 4);
				}
			}
		}
	}
}

/* Header value i (0: D, 1: M or D1) of row r in packed block pb, whose
 * 256-block header is sup (k-quants: computed as the file's dequantiser
 * does, d * sc and -(dmin * m)). */
static inline float kern_hdr(const struct kern_ptype *pt, const uint8_t *sup, const uint8_t *pb,
                             int i, int r)
{
	if (pt->ks) {
		float d;
		memcpy(&d, sup + (i == 1 && pt->min ? 64 : 0) + 4 * r, 4);
		if (pt->halves)
			return d * (float)(int8_t)pb[16 * i + r];
		return i == 0 ? d * (float)pb[r] : -(d * (float)pb[16 + r]);
	}
	if (pt->f32) {
		float v;
		memcpy(&v, pb + 64 * i + 4 * r, 4);
		return v;
	}
	return kern_rdh(pb + 32 * i + 2 * r);
}

/* Element i (0..31) of row r's block as an unsigned stored quant. */
static inline int kern_wq(const struct kern_ptype *pt, const uint8_t *qs, int r, int i)
{
	if (pt->bits8)
		return qs[64 * (i / 4) + 4 * r + (i % 4)];
	int lo = i < 16, e = lo ? i : i - 16;
	uint8_t v = qs[64 * (e / 4) + 4 * r + (e % 4)];
	int q = lo ? (v & 15) : (v >> 4);
	if (pt->hbits == 0)
		return q;
	int c = lo ? i / 4 : 4 + (i - 16) / 4;
	const uint8_t *hp = qs + 256 + 4 * r + (i % 4);
	int hi = pt->hbits == 1 ? (hp[0] >> c) & 1 : (hp[64 * (c / 4)] >> (2 * (c % 4))) & 3;
	return q | hi << 4;
}

void kern_weight_row(const struct kern_weight *w, int64_t r, float *out)
{
	if (!w->packed) {
		dtype_dequant(w->type, w->data + (uint64_t)r * w->row_bytes, out, w->cols);
		return;
	}
	const struct kern_ptype *pt = kern_ptype(w->type);
	int64_t nb = w->cols / KERN_QK, g = r / KERN_GROUP;
	int rr = (int)(r % KERN_GROUP);
	const uint8_t *gd = w->data + (uint64_t)g * w->group_bytes;
	for (int64_t b = 0; b < nb; b++) {
		const uint8_t *pb = kern_block_at(pt, gd, b), *sup = kern_super_at(pt, gd, b);
		float d = kern_hdr(pt, sup, pb, 0, rr);
		float d1 = pt->halves ? kern_hdr(pt, sup, pb, 1, rr) : d;
		float m = pt->min ? kern_hdr(pt, sup, pb, 1, rr) : 0.0f;
		for (int i = 0; i < KERN_QK; i++) {
			float v = (i < 16 ? d : d1) * (float)(kern_wq(pt, pb + pt->hdr, rr, i) - pt->off);
			out[b * KERN_QK + i] = pt->min ? v + m : v;
		}
	}
}

/* ====================================================================
 * scalar
 * ==================================================================== */

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

static void sc_rope(float *x, const float *cs, int n_rot, bool neox)
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

static void sc_att_scores_rows(const float *q, int nq, int hd, const void *base, int64_t stride,
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

static void sc_att_pv_rows(const float *p, int nq, int64_t lds, const void *base, int64_t stride,
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

/* ====================================================================
 * AVX2 (8 rows per register: a 16-row group is two halves)
 * ==================================================================== */

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
			qi[k] = _mm256_cvtps_epi32(
			    _mm256_round_ps(_mm256_mul_ps(v[k], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
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
				mo = _mm256_sub_ps(_mm256_setzero_ps(),
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
					__m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(W[j], _mm256_set1_epi32(a0)),
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
				accf[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(it1), _mm256_mul_ps(dw1, vda), accf[t]);
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
#define AV2_TILES(NAME, IDX)                                                                      \
	T_AVX2 static void NAME(const uint8_t *gd, int64_t nb, int h, const struct kern_act *a,  \
	                        int64_t t0, int T, float *y, int64_t ldy, int nr, bool acc)     \
	{                                                                                         \
		const struct kern_ptype *pt = &kern_ptypes[IDX];                                  \
		switch (T) {                                                                      \
		case 1: av2_tile(pt, gd, nb, h, a, t0, 1, y, ldy, nr, acc); break;               \
		case 2: av2_tile(pt, gd, nb, h, a, t0, 2, y, ldy, nr, acc); break;               \
		case 3: av2_tile(pt, gd, nb, h, a, t0, 3, y, ldy, nr, acc); break;               \
		default: av2_tile(pt, gd, nb, h, a, t0, 4, y, ldy, nr, acc); break;              \
		}                                                                                 \
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

#define AV2_ROWS(NR)                                                                             \
	if (nt == 1)                                                                             \
		av2_rows_tile(w, ldw, xt, ldx, K, yt, ldy, acc, NR, 1);                          \
	else                                                                                     \
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
		_mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
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

T_AVX2 static void av2_att_scores_rows(const float *q, int nq, int hd, const void *base,
                                       int64_t stride, bool half, const uint32_t *rows, int64_t m,
                                       float scale, float *s, int64_t lds)
{
	size_t es = half ? 2 : 4;
	for (int64_t k = 0; k < m; k++) {
		const uint8_t *row = (const uint8_t *)base + (size_t)rows[k] * stride * es;
		if (k + 1 < m)
			_mm_prefetch((const char *)base + (size_t)rows[k + 1] * stride * es, _MM_HINT_T0);
		__m256 acc[KERN_ATT_Q];
		for (int r = 0; r < nq; r++)
			acc[r] = _mm256_setzero_ps();
		for (int d = 0; d < hd; d += 8) {
			__m256 kv = av2_kv8(row, half, d);
			for (int r = 0; r < nq; r++)
				acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(q + r * hd + d), kv, acc[r]);
		}
		for (int r = 0; r < nq; r++)
			s[r * lds + k] = scale * av2_hsum(acc[r]);
	}
}

T_AVX2 static void av2_att_pv_rows(const float *p, int nq, int64_t lds, const void *base,
                                   int64_t stride, bool half, const uint32_t *rows, int64_t m,
                                   int hd, float *out)
{
	size_t es = half ? 2 : 4;
	for (int d = 0; d < hd; d += 8) {
		__m256 acc[KERN_ATT_Q];
		for (int r = 0; r < nq; r++)
			acc[r] = _mm256_setzero_ps();
		for (int64_t k = 0; k < m; k++) {
			__m256 v = av2_kv8((const uint8_t *)base + (size_t)rows[k] * stride * es, half, d);
			for (int r = 0; r < nq; r++)
				acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(p[r * lds + k]), v, acc[r]);
		}
		for (int r = 0; r < nq; r++)
			_mm256_storeu_ps(out + r * hd + d, acc[r]);
	}
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

/* ====================================================================
 * AVX-512 with VNNI (16 rows per register)
 * ==================================================================== */

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
                               const struct kern_act *a, int64_t t0, int T, float *y,
                               int64_t ldy, int nr, bool acc)
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
				mo = _mm512_sub_ps(_mm512_setzero_ps(),
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

#define A512_TILES(NAME, IDX)                                                                   \
	T_AVX512 static void NAME(const uint8_t *gd, int64_t nb, const struct kern_act *a,     \
	                          int64_t t0, int T, float *y, int64_t ldy, int nr, bool acc)  \
	{                                                                                       \
		const struct kern_ptype *pt = &kern_ptypes[IDX];                                \
		switch (T) {                                                                    \
		case 1: a512_tile(pt, gd, nb, a, t0, 1, y, ldy, nr, acc); break;               \
		case 2: a512_tile(pt, gd, nb, a, t0, 2, y, ldy, nr, acc); break;               \
		case 3: a512_tile(pt, gd, nb, a, t0, 3, y, ldy, nr, acc); break;               \
		case 4: a512_tile(pt, gd, nb, a, t0, 4, y, ldy, nr, acc); break;               \
		case 5: a512_tile(pt, gd, nb, a, t0, 5, y, ldy, nr, acc); break;               \
		case 6: a512_tile(pt, gd, nb, a, t0, 6, y, ldy, nr, acc); break;               \
		case 7: a512_tile(pt, gd, nb, a, t0, 7, y, ldy, nr, acc); break;               \
		default: a512_tile(pt, gd, nb, a, t0, 8, y, ldy, nr, acc); break;              \
		}                                                                               \
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
static const a512_tiles_fn a512_tiles[] = { a512_tiles_0, a512_tiles_1, a512_tiles_2,
	                                    a512_tiles_3, a512_tiles_4, a512_tiles_5,
	                                    a512_tiles_6, a512_tiles_7 };

T_AVX512 static void a512_gemm_packed(const struct kern_weight *w, int64_t g0, int64_t g1,
                                      const struct kern_act *a, int64_t n, float *y,
                                      int64_t ldy, bool acc)
{
	a512_tiles_fn fn = a512_tiles[kern_ptype_index(w->type)];
	int64_t nb = w->cols / KERN_QK;
	for (int64_t g = g0; g < g1; g++) {
		const uint8_t *gd = w->data + (uint64_t)g * w->group_bytes;
		int nr = (int)KVS_MIN((int64_t)KERN_GROUP, w->rows - g * KERN_GROUP);
		for (int64_t t0 = 0; t0 < n; t0 += 8)
			fn(gd, nb, a, t0, (int)KVS_MIN((int64_t)8, n - t0), y + g * KERN_GROUP, ldy, nr,
			   acc);
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
#define A512_ROWS(NR)                                                                            \
	switch (nt) {                                                                            \
	case 1: a512_rows_tile(w, ldw, xt, ldx, K, yt, ldy, acc, NR, 1); break;                 \
	case 2: a512_rows_tile(w, ldw, xt, ldx, K, yt, ldy, acc, NR, 2); break;                 \
	case 3: a512_rows_tile(w, ldw, xt, ldx, K, yt, ldy, acc, NR, 3); break;                 \
	default: a512_rows_tile(w, ldw, xt, ldx, K, yt, ldy, acc, NR, 4); break;                \
	}

T_AVX512 static void a512_gemm_rows_f32(const float *w, int64_t ldw, int nr, const float *x,
                                        int64_t ldx, int64_t n, int64_t K, float *y,
                                        int64_t ldy, bool acc)
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
		_mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
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

/* out rows r < NQ, columns [d0, d0 + 16 C) of p v. */
INLINE T_AVX512 void a512_pv_nq(const float *p, const int NQ, int64_t lds, const float *v,
                                int64_t m, int hd, int d0, const int C, float *out)
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
			vv[c] = _mm512_loadu_ps(v + k * hd + d0 + 16 * c);
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
			_mm512_storeu_ps(out + r * hd + d0 + 16 * c, acc[r][c]);
}

T_AVX512 static void a512_att_pv(const float *p, int nq, int64_t lds, const float *v, int64_t m,
                                 int hd, float *out)
{
	for (int r0 = 0; r0 < nq; r0 += 4) {
		int nr = KVS_MIN(4, nq - r0);
		for (int d0 = 0; d0 < hd; d0 += 64) {
			int c = KVS_MIN(4, (hd - d0) / 16);
			const float *pr = p + r0 * lds;
			float *o = out + r0 * hd;
#define A512_PV(NR)                                                                    \
	do {                                                                           \
		if (c == 4)                                                            \
			a512_pv_nq(pr, NR, lds, v, m, hd, d0, 4, o);                   \
		else if (c == 3)                                                       \
			a512_pv_nq(pr, NR, lds, v, m, hd, d0, 3, o);                   \
		else if (c == 2)                                                       \
			a512_pv_nq(pr, NR, lds, v, m, hd, d0, 2, o);                   \
		else                                                                   \
			a512_pv_nq(pr, NR, lds, v, m, hd, d0, 1, o);                   \
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

INLINE T_AVX512 void a512_pv_blk(const float *p, int64_t lds, const uint8_t *base,
                                 size_t row_bytes, bool half, const uint32_t *rows, int64_t m,
                                 int d0, int hd, float *out, int NR)
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
		sc_att_scores_rows(q, nq, hd, base, stride, half, rows, m, scale, s, lds);
		return;
	}
	for (int r0 = 0; r0 < nq; r0 += 4)
		for (int d0 = 0; d0 < hd; d0 += 64) {
			const float *qr = q + r0 * hd;
			float *sr = s + r0 * lds;
			bool first = d0 == 0;
			switch (KVS_MIN(4, nq - r0)) {
			case 1: a512_scores_blk(qr, hd, d0, base, rb, half, rows, m, scale, sr, lds, 1, first); break;
			case 2: a512_scores_blk(qr, hd, d0, base, rb, half, rows, m, scale, sr, lds, 2, first); break;
			case 3: a512_scores_blk(qr, hd, d0, base, rb, half, rows, m, scale, sr, lds, 3, first); break;
			default: a512_scores_blk(qr, hd, d0, base, rb, half, rows, m, scale, sr, lds, 4, first); break;
			}
		}
}

T_AVX512 static void a512_att_pv_rows(const float *p, int nq, int64_t lds, const void *base,
                                      int64_t stride, bool half, const uint32_t *rows, int64_t m,
                                      int hd, float *out)
{
	size_t rb = (size_t)stride * (half ? 2 : 4);
	if (hd % 64 != 0) {
		sc_att_pv_rows(p, nq, lds, base, stride, half, rows, m, hd, out);
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

T_AVX512 static void a512_rmsnorm(const float *x, const float *w, float *out, int64_t n, float eps)
{
	__m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
	int64_t i = 0;
	for (; i + 16 <= n; i += 16) {
		__m512 v = _mm512_loadu_ps(x + i);
		__m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
		__m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
		s0 = _mm512_fmadd_pd(lo, lo, s0);
		s1 = _mm512_fmadd_pd(hi, hi, s1);
	}
	double ss = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
	for (; i < n; i++)
		ss += (double)x[i] * x[i];
	__m512 sc = _mm512_set1_ps(1.0f / sqrtf((float)(ss / (double)n) + eps));
	for (i = 0; i + 16 <= n; i += 16)
		_mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), sc),
		                                        _mm512_loadu_ps(w + i)));
	float scale = _mm512_cvtss_f32(sc);
	for (; i < n; i++)
		out[i] = x[i] * scale * w[i];
}

T_AVX512 static void a512_rope(float *x, const float *cs, int n_rot, bool neox)
{
	int half = n_rot / 2;
	const float *cv = cs, *sv = cs + half;
	if (neox ? half % 16 != 0 : n_rot % 16 != 0) {
		sc_rope(x, cs, n_rot, neox);
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

/* ====================================================================
 * selection
 * ==================================================================== */

static const struct kern_ops kern_levels[] = {
	{ KERN_SCALAR, "scalar", sc_quant_row, sc_gemm_packed, sc_dot_f32, sc_dot_f16, sc_dot_bf16,
	  sc_gemm_rows_f32, sc_bf16_to_f32, sc_axpy_f32,
	  sc_f16_to_f32, sc_f32_to_f16, sc_att_scores, sc_att_pv, sc_att_scores_rows,
	  sc_att_pv_rows, sc_exp_sum, sc_swiglu, sc_rmsnorm, sc_rope },
	{ KERN_AVX2, "avx2", av2_quant_row, av2_gemm_packed, av2_dot_f32, av2_dot_f16, av2_dot_bf16,
	  av2_gemm_rows_f32, av2_bf16_to_f32, av2_axpy_f32,
	  av2_f16_to_f32, av2_f32_to_f16, sc_att_scores, sc_att_pv, av2_att_scores_rows,
	  av2_att_pv_rows, sc_exp_sum, sc_swiglu, sc_rmsnorm, sc_rope },
	{ KERN_AVX512, "avx512-vnni", a512_quant_row, a512_gemm_packed, a512_dot_f32,
	  a512_dot_f16, a512_dot_bf16, a512_gemm_rows_f32, a512_bf16_to_f32, a512_axpy_f32, a512_f16_to_f32, a512_f32_to_f16, a512_att_scores, a512_att_pv,
	  a512_att_scores_rows, a512_att_pv_rows, a512_exp_sum, a512_swiglu, a512_rmsnorm,
	  a512_rope },
};

enum kern_level kern_cpu_level(void)
{
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
	    __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
	    __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("fma"))
		return KERN_AVX512;
	/* F16C predates AVX2 in every x86 line (and some compilers cannot ask) */
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		return KERN_AVX2;
	return KERN_SCALAR;
}

const struct kern_ops *kern_select(enum kern_level want)
{
	enum kern_level have = kern_cpu_level();
	return &kern_levels[KVS_MIN(want, have)];
}

void kern_gemm_generic(const struct kern_ops *ops, const struct kern_weight *w, int64_t r0,
                       int64_t r1, const float *x, int64_t ldx, int64_t n, float *y,
                       int64_t ldy, bool acc, float *tmp)
{
	int64_t K = w->cols;
	for (int64_t r = r0; r < r1; r += KERN_GENERIC_ROWS) {
		int nr = (int)KVS_MIN((int64_t)KERN_GENERIC_ROWS, r1 - r);
		const uint8_t *src = w->data + (uint64_t)r * w->row_bytes;
		const float *rows = tmp;
		if ((w->type == DT_F16 || w->type == DT_BF16) && n == 1) { /* one pass a row */
			for (int i = 0; i < nr; i++) {
				const uint16_t *h = (const uint16_t *)(src + i * w->row_bytes);
				float v = w->type == DT_F16 ? ops->dot_f16(h, x, K) : ops->dot_bf16(h, x, K);
				y[r + i] = acc ? y[r + i] + v : v;
			}
			continue;
		}
		if (w->type == DT_F32) {
			rows = (const float *)src;
		} else {
			for (int i = 0; i < nr; i++) {
				const uint8_t *s = src + i * w->row_bytes;
				if (w->type == DT_F16)
					ops->f16_to_f32((const uint16_t *)s, tmp + i * K, K);
				else if (w->type == DT_BF16)
					ops->bf16_to_f32((const uint16_t *)s, tmp + i * K, K);
				else
					dtype_dequant(w->type, s, tmp + i * K, K);
			}
		}
		ops->gemm_rows_f32(rows, K, nr, x, ldx, n, K, y + r, ldy, acc);
	}
}
