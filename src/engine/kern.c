/*
 * kern.c: the CPU kernels' packed layouts, weight packing and level dispatch.
 *
 * The kernels themselves live one file per level (kern-scalar.c,
 * kern-avx2.c, kern-avx512.c), each owning its kern_ops row; this file
 * packs weights into the layout below, reads them back (kern_weight_row,
 * the reference the kernels are tested against), detects the CPU and
 * hands out the row of the best level it supports. kern-int.h holds the
 * packed types' geometry the levels share.
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
#include "engine/kern-int.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

/* One 32-block of a row, unpacked: quants and scales, as the packed layout
 * keeps them. */
struct kern_block {
	uint8_t q[KERN_QK];
	float D, D1, M; /* 5-bit types: the block's scale (and min) */
	uint8_t s0, s1; /* k-quants: the sub-block's scale and min (Q6_K: its two int8 scales) */
	float sd, smin; /* k-quants: the 256-block's d and dmin (the kernels form D, M) */
};

/* Unpack 32-block b of a source row. */
typedef void (*kern_decode_fn)(const uint8_t *row, int64_t b, struct kern_block *out);

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

/* Each packed type's decoder, in the order of kern_ptypes; NULL: the
 * source bytes are copied. */
static const kern_decode_fn kern_decoders[] = {
	NULL, NULL, NULL, kern_dec_q4_k, kern_dec_q5_0, kern_dec_q5_1, kern_dec_q5_k, kern_dec_q6_k,
};
_Static_assert(KVS_ARRAY_LEN(kern_decoders) == KVS_ARRAY_LEN(kern_ptypes), "one decoder a type");

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

void kern_pack(uint32_t type, const uint8_t *src, int64_t rows, int64_t K, uint8_t *dst, int64_t g0,
               int64_t g1)
{
	int ti = kern_ptype_index(type);
	const struct kern_ptype *pt = &kern_ptypes[ti];
	kern_decode_fn decode = kern_decoders[ti];
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
			if (decode != NULL) {
				struct kern_block kb;
				for (int64_t b = 0; b < nb; b++) {
					decode(sr, b, &kb);
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
 * selection
 * ==================================================================== */

static uint16_t kern_gelu_tab[65536 + 1];
static pthread_once_t kern_gelu_once = PTHREAD_ONCE_INIT;

static void kern_gelu_build(void)
{
	for (uint32_t h = 0; h < 65536; h++) {
		float x = dtype_f16_to_f32((uint16_t)h);
		float y = 0.5f * x *
		        (1.0f +
		         tanhf(0.79788456080286535587989211986876f * x * (1.0f + 0.044715f * x * x)));
		kern_gelu_tab[h] = dtype_f32_to_f16(y);
	}
}

const uint16_t *kern_gelu_f16(void)
{
	pthread_once(&kern_gelu_once, kern_gelu_build);
	return kern_gelu_tab;
}

/* The levels' rows, indexed by enum kern_level. */
static const struct kern_ops *const kern_levels[] = { &kern_scalar_ops, &kern_avx2_ops,
	                                                  &kern_avx512_ops };

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

const struct kern_ops *kern_table(enum kern_level level)
{
	return kern_levels[level];
}

const struct kern_ops *kern_select(enum kern_level want)
{
	enum kern_level have = kern_cpu_level();
	return kern_levels[KVS_MIN(want, have)];
}

void kern_gemm_generic(const struct kern_ops *ops, const struct kern_weight *w, int64_t r0,
                       int64_t r1, const float *x, int64_t ldx, int64_t n, float *y, int64_t ldy,
                       bool acc, float *tmp)
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
