/*
 * dtype.c: ggml tensor element types.
 *
 * One constant table indexed by the ggml type id (0..DT_COUNT_-1) gives each
 * type's name, block geometry and, for the types we can turn into floats, the
 * routine that dequantises a run of whole blocks. Ids that ggml once used and
 * removed (4, 5, 31-33, 36-38) have no entry: dtype_info returns NULL for
 * them exactly as for ids past the table, so an attacker-chosen type id never
 * indexes anything but this table after a bounds check.
 *
 * The block layouts and formulas are the ones ggml stores (see the research
 * notes, engine.md section 2). Each dequantiser evaluates its products in the
 * same order as gguf-py's numpy reference ((d*sc)*q - dmin*mn and so on), and
 * the unit test checks bit-identical results against its output. Order hardly
 * matters in fact: d is an f16 (11 significant bits) and scales and quants
 * are small integers, so every product but Q6_K's last is exact in f32 and
 * each result is the exact value rounded once; an FMA would give the same.
 * The pragma keeps clang from contracting anyway.
 *
 * Block bytes are read with explicit little-endian loads, never by casting
 * the (often only 2-byte aligned) block pointer to a struct.
 *
 * The quantisers reproduce the reference (non-imatrix) quantisers that
 * llama-quantize uses for Q8_0, Q4_0 and Q4_1, byte for byte; we use them to
 * build test models.
 */
#include "model/model.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#define QK 32    /* elements per legacy block */
#define QK_K 256 /* elements per k-quant super-block */

typedef void (*dequant_fn)(const uint8_t *src, float *dst, int64_t n_blocks);

static void dq_f32(const uint8_t *src, float *dst, int64_t n_blocks);
static void dq_f16(const uint8_t *src, float *dst, int64_t n_blocks);
static void dq_bf16(const uint8_t *src, float *dst, int64_t n_blocks);
static void dq_q4_0(const uint8_t *src, float *dst, int64_t n_blocks);
static void dq_q4_1(const uint8_t *src, float *dst, int64_t n_blocks);
static void dq_q5_0(const uint8_t *src, float *dst, int64_t n_blocks);
static void dq_q5_1(const uint8_t *src, float *dst, int64_t n_blocks);
static void dq_q8_0(const uint8_t *src, float *dst, int64_t n_blocks);
static void dq_q4_k(const uint8_t *src, float *dst, int64_t n_blocks);
static void dq_q5_k(const uint8_t *src, float *dst, int64_t n_blocks);
static void dq_q6_k(const uint8_t *src, float *dst, int64_t n_blocks);

struct dtype_entry {
	struct dtype_info info;
	dequant_fn dequant; /* NULL unless info.weight_ok */
};

/* name, elements per block, bytes per block, weight_ok; dequantiser */
static const struct dtype_entry dtype_table[DT_COUNT_] = {
	[0] = { { "F32", 1, 4, true }, dq_f32 },
	[1] = { { "F16", 1, 2, true }, dq_f16 },
	[2] = { { "Q4_0", QK, 2 + 16, true }, dq_q4_0 },
	[3] = { { "Q4_1", QK, 2 + 2 + 16, true }, dq_q4_1 },
	/* 4, 5: Q4_2, Q4_3, removed */
	[6] = { { "Q5_0", QK, 2 + 4 + 16, true }, dq_q5_0 },
	[7] = { { "Q5_1", QK, 2 + 2 + 4 + 16, true }, dq_q5_1 },
	[8] = { { "Q8_0", QK, 2 + 32, true }, dq_q8_0 },
	[9] = { { "Q8_1", QK, 2 + 2 + 32, false }, NULL },
	[10] = { { "Q2_K", QK_K, 84, false }, NULL },
	[11] = { { "Q3_K", QK_K, 110, false }, NULL },
	[12] = { { "Q4_K", QK_K, 2 + 2 + 12 + 128, true }, dq_q4_k },
	[13] = { { "Q5_K", QK_K, 2 + 2 + 12 + 32 + 128, true }, dq_q5_k },
	[14] = { { "Q6_K", QK_K, 128 + 64 + 16 + 2, true }, dq_q6_k },
	[15] = { { "Q8_K", QK_K, 4 + 256 + 32, false }, NULL },
	[16] = { { "IQ2_XXS", QK_K, 66, false }, NULL },
	[17] = { { "IQ2_XS", QK_K, 74, false }, NULL },
	[18] = { { "IQ3_XXS", QK_K, 98, false }, NULL },
	[19] = { { "IQ1_S", QK_K, 50, false }, NULL },
	[20] = { { "IQ4_NL", QK, 18, false }, NULL },
	[21] = { { "IQ3_S", QK_K, 110, false }, NULL },
	[22] = { { "IQ2_S", QK_K, 82, false }, NULL },
	[23] = { { "IQ4_XS", QK_K, 136, false }, NULL },
	[24] = { { "I8", 1, 1, false }, NULL },
	[25] = { { "I16", 1, 2, false }, NULL },
	[26] = { { "I32", 1, 4, false }, NULL },
	[27] = { { "I64", 1, 8, false }, NULL },
	[28] = { { "F64", 1, 8, false }, NULL },
	[29] = { { "IQ1_M", QK_K, 56, false }, NULL },
	[30] = { { "BF16", 1, 2, true }, dq_bf16 },
	/* 31-33: Q4_0_4_4, Q4_0_4_8, Q4_0_8_8, removed */
	[34] = { { "TQ1_0", QK_K, 54, false }, NULL },
	[35] = { { "TQ2_0", QK_K, 66, false }, NULL },
	/* 36-38: IQ4_NL_4_4, IQ4_NL_4_8, IQ4_NL_8_8, removed */
	[39] = { { "MXFP4", QK, 17, false }, NULL },
};

const struct dtype_info *dtype_info(uint32_t type)
{
	if (type >= DT_COUNT_ || dtype_table[type].info.name == NULL)
		return NULL;
	return &dtype_table[type].info;
}

const char *dtype_name(uint32_t type)
{
	static _Thread_local char buf[24];
	const struct dtype_info *ti = dtype_info(type);

	if (ti != NULL)
		return ti->name;
	snprintf(buf, sizeof buf, "type#%u", (unsigned)type);
	return buf;
}

bool dtype_row_bytes(uint32_t type, uint64_t n, uint64_t *bytes)
{
	const struct dtype_info *ti = dtype_info(type);

	if (ti == NULL || n % ti->block_elems != 0)
		return false;
	/* Divide first: n * block_bytes could overflow where the answer does not. */
	return ck_mul_u64(n / ti->block_elems, ti->block_bytes, bytes);
}

/* ------------------------------------------------------------ scalars */

/* Float with the given bit pattern. */
static inline float f32_from_bits(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof f);
	return f;
}

/* Bit pattern of a float. */
static inline uint32_t f32_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof u);
	return u;
}

float dtype_f16_to_f32(uint16_t h)
{
	/* Three candidate encodings picked with selects, not branches, so loops
	 * over halves vectorise. */
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = h & 0x7c00;
	uint32_t em = (uint32_t)(h & 0x7fff) << 13;             /* exponent and mantissa in place */
	uint32_t normal = em + (112u << 23);                    /* rebias 15 -> 127 */
	uint32_t special = em | 0x7f800000;                     /* inf, or NaN with its payload */
	uint32_t sub = f32_bits((float)(h & 0x3ff) * 0x1p-24f); /* zero, subnormal: exact */
	uint32_t r = exp == 0x7c00 ? special : exp == 0 ? sub : normal;

	return f32_from_bits(sign | r);
}

uint16_t dtype_f32_to_f16(float f)
{
	uint32_t x = f32_bits(f);
	uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
	uint32_t exp, man, h, rem, half;

	x &= 0x7fffffff;
	if (x > 0x7f800000) /* NaN: keep the top payload bits, force quiet */
		return (uint16_t)(sign | 0x7e00 | ((x & 0x7fffff) >> 13));
	if (x >= 0x477ff000) /* >= 65520 rounds (ties to even) past 65504 */
		return (uint16_t)(sign | 0x7c00);
	exp = x >> 23;
	man = x & 0x7fffff;
	if (exp >= 113) { /* normal half: drop 13 mantissa bits, round to even */
		h = ((exp - 112) << 10) | (man >> 13);
		rem = man & 0x1fff;
		if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
			h++; /* a carry into the exponent is the right answer */
		return (uint16_t)(sign | h);
	}
	if (x <= 0x33000000) /* <= 2^-25: half of the smallest subnormal, ties to 0 */
		return sign;
	/* subnormal half: value / 2^-24 = (man | 1<<23) >> (126 - exp), rounded */
	man |= 0x800000;
	uint32_t shift = 126 - exp; /* 14..24 since 102 < exp < 113 */
	h = man >> shift;
	rem = man & ((1u << shift) - 1);
	half = 1u << (shift - 1);
	if (rem > half || (rem == half && (h & 1)))
		h++;
	return (uint16_t)(sign | h);
}

float dtype_bf16_to_f32(uint16_t h)
{
	return f32_from_bits((uint32_t)h << 16);
}

uint16_t dtype_f32_to_bf16(float f)
{
	uint32_t x = f32_bits(f);

	if ((x & 0x7fffffff) > 0x7f800000) /* NaN: keep sign and payload top, force quiet */
		return (uint16_t)((x >> 16) | 0x40);
	return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

/* ----------------------------------------------------- dequantisation */

/* Little-endian u16 / u32 at p (any alignment). */
static inline uint16_t rd16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* f16 at p (any alignment) as a float. */
static inline float rdh(const uint8_t *p)
{
	return dtype_f16_to_f32(rd16(p));
}

static void dq_f32(const uint8_t *src, float *dst, int64_t n_blocks)
{
	for (int64_t i = 0; i < n_blocks; i++)
		dst[i] = f32_from_bits(rd32(src + 4 * i));
}

static void dq_f16(const uint8_t *src, float *dst, int64_t n_blocks)
{
	for (int64_t i = 0; i < n_blocks; i++)
		dst[i] = rdh(src + 2 * i);
}

static void dq_bf16(const uint8_t *src, float *dst, int64_t n_blocks)
{
	for (int64_t i = 0; i < n_blocks; i++)
		dst[i] = dtype_bf16_to_f32(rd16(src + 2 * i));
}

/* Q4_0 (18 B): d, qs[16]; x = d * (nibble - 8); low nibbles 0..15, high 16..31. */
static void dq_q4_0(const uint8_t *src, float *dst, int64_t n_blocks)
{
	for (int64_t b = 0; b < n_blocks; b++, src += 18, dst += QK) {
		float d = rdh(src);
		const uint8_t *qs = src + 2;
		for (int j = 0; j < QK / 2; j++) {
			dst[j] = d * (float)((qs[j] & 15) - 8);
			dst[j + QK / 2] = d * (float)((qs[j] >> 4) - 8);
		}
	}
}

/* Q4_1 (20 B): d, m, qs[16]; x = d * nibble + m. */
static void dq_q4_1(const uint8_t *src, float *dst, int64_t n_blocks)
{
	for (int64_t b = 0; b < n_blocks; b++, src += 20, dst += QK) {
		float d = rdh(src), m = rdh(src + 2);
		const uint8_t *qs = src + 4;
		for (int j = 0; j < QK / 2; j++) {
			dst[j] = d * (float)(qs[j] & 15) + m;
			dst[j + QK / 2] = d * (float)(qs[j] >> 4) + m;
		}
	}
}

/* Q5_0 (22 B): d, qh (u32, bit i = 5th bit of element i), qs[16]; x = d * (q - 16). */
static void dq_q5_0(const uint8_t *src, float *dst, int64_t n_blocks)
{
	for (int64_t b = 0; b < n_blocks; b++, src += 22, dst += QK) {
		float d = rdh(src);
		uint32_t qh = rd32(src + 2);
		const uint8_t *qs = src + 6;
		for (int j = 0; j < QK / 2; j++) {
			int lo = (qs[j] & 15) | (int)(((qh >> j) & 1) << 4);
			int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
			dst[j] = d * (float)(lo - 16);
			dst[j + QK / 2] = d * (float)(hi - 16);
		}
	}
}

/* Q5_1 (24 B): d, m, qh (u32), qs[16]; x = d * q + m. */
static void dq_q5_1(const uint8_t *src, float *dst, int64_t n_blocks)
{
	for (int64_t b = 0; b < n_blocks; b++, src += 24, dst += QK) {
		float d = rdh(src), m = rdh(src + 2);
		uint32_t qh = rd32(src + 4);
		const uint8_t *qs = src + 8;
		for (int j = 0; j < QK / 2; j++) {
			int lo = (qs[j] & 15) | (int)(((qh >> j) & 1) << 4);
			int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
			dst[j] = d * (float)lo + m;
			dst[j + QK / 2] = d * (float)hi + m;
		}
	}
}

/* Q8_0 (34 B): d, qs[32] (int8); x = d * q. */
static void dq_q8_0(const uint8_t *src, float *dst, int64_t n_blocks)
{
	for (int64_t b = 0; b < n_blocks; b++, src += 34, dst += QK) {
		float d = rdh(src);
		const int8_t *qs = (const int8_t *)(src + 2);
		for (int j = 0; j < QK; j++)
			dst[j] = d * (float)qs[j];
	}
}

void dtype_kq_scales_mins(const uint8_t *s, uint8_t sc[8], uint8_t mn[8])
{
	for (int j = 0; j < 4; j++) {
		sc[j] = s[j] & 63;
		mn[j] = s[j + 4] & 63;
		sc[j + 4] = (uint8_t)((s[j + 8] & 15) | ((s[j] >> 6) << 4));
		mn[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
	}
}

/*
 * Q4_K (144 B): d, dmin, scales[12], qs[128]. Four chunks of 64 elements;
 * chunk c reads qs[32c..32c+31], low nibbles with sub-block 2c, high with
 * 2c+1; x = (d*sc)*q - dmin*mn.
 */
static void dq_q4_k(const uint8_t *src, float *dst, int64_t n_blocks)
{
	for (int64_t b = 0; b < n_blocks; b++, src += 144, dst += QK_K) {
		float d = rdh(src), dmin = rdh(src + 2);
		uint8_t sc[8], mn[8];
		dtype_kq_scales_mins(src + 4, sc, mn);
		const uint8_t *qs = src + 16;
		for (int c = 0; c < 4; c++) {
			float d1 = d * (float)sc[2 * c], m1 = dmin * (float)mn[2 * c];
			float d2 = d * (float)sc[2 * c + 1], m2 = dmin * (float)mn[2 * c + 1];
			float *y = dst + 64 * c;
			for (int l = 0; l < 32; l++) {
				y[l] = d1 * (float)(qs[32 * c + l] & 15) - m1;
				y[l + 32] = d2 * (float)(qs[32 * c + l] >> 4) - m2;
			}
		}
	}
}

/* Q5_K (176 B): d, dmin, scales[12], qh[32], qs[128]; as Q4_K, and bit 2c
 * (2c+1) of qh[l] adds 16 to element 64c+l (64c+32+l). */
static void dq_q5_k(const uint8_t *src, float *dst, int64_t n_blocks)
{
	for (int64_t b = 0; b < n_blocks; b++, src += 176, dst += QK_K) {
		float d = rdh(src), dmin = rdh(src + 2);
		uint8_t sc[8], mn[8];
		dtype_kq_scales_mins(src + 4, sc, mn);
		const uint8_t *qh = src + 16, *qs = src + 48;
		for (int c = 0; c < 4; c++) {
			float d1 = d * (float)sc[2 * c], m1 = dmin * (float)mn[2 * c];
			float d2 = d * (float)sc[2 * c + 1], m2 = dmin * (float)mn[2 * c + 1];
			float *y = dst + 64 * c;
			for (int l = 0; l < 32; l++) {
				int lo = (qs[32 * c + l] & 15) | (((qh[l] >> (2 * c)) & 1) << 4);
				int hi = (qs[32 * c + l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
				y[l] = d1 * (float)lo - m1;
				y[l + 32] = d2 * (float)hi - m2;
			}
		}
	}
}

/*
 * Q6_K (210 B): ql[128], qh[64], scales[16] (int8), d (last). Two halves of
 * 128; in half h, element 128h + 32k + l (k = 0..3, l = 0..31) has low four
 * bits from ql[64h + l + 32(k&1)] (low nibble for k < 2, high otherwise), top
 * two bits from bits 2k..2k+1 of qh[32h + l], and scale scales[8h + l/16 + 2k];
 * x = (d*scale) * (q - 32).
 */
static void dq_q6_k(const uint8_t *src, float *dst, int64_t n_blocks)
{
	for (int64_t b = 0; b < n_blocks; b++, src += 210, dst += QK_K) {
		const uint8_t *ql = src, *qh = src + 128;
		const int8_t *scales = (const int8_t *)(src + 192);
		float d = rdh(src + 208);
		for (int h = 0; h < 2; h++) {
			float ds[8];
			for (int s = 0; s < 8; s++)
				ds[s] = d * (float)scales[8 * h + s];
			const uint8_t *l4 = ql + 64 * h, *h2 = qh + 32 * h;
			float *y = dst + 128 * h;
			for (int l = 0; l < 32; l++) {
				int s = l / 16;
				int q0 = (l4[l] & 15) | ((h2[l] & 3) << 4);
				int q1 = (l4[l + 32] & 15) | (((h2[l] >> 2) & 3) << 4);
				int q2 = (l4[l] >> 4) | (((h2[l] >> 4) & 3) << 4);
				int q3 = (l4[l + 32] >> 4) | (((h2[l] >> 6) & 3) << 4);
				y[l] = ds[s] * (float)(q0 - 32);
				y[l + 32] = ds[s + 2] * (float)(q1 - 32);
				y[l + 64] = ds[s + 4] * (float)(q2 - 32);
				y[l + 96] = ds[s + 6] * (float)(q3 - 32);
			}
		}
	}
}

bool dtype_dequant(uint32_t type, const void *src, float *dst, int64_t n)
{
	const struct dtype_info *ti = dtype_info(type);

	if (ti == NULL || !ti->weight_ok || n < 0 || n % ti->block_elems != 0)
		return false;
	dtype_table[type].dequant(src, dst, n / ti->block_elems);
	return true;
}

/* --------------------------------------------------------- quantisers */

/* Q8_0: d = max|x| / 127, q = roundf(x / d) (ties away from zero). */
void dtype_quant_q8_0(const float *src, void *dst, int64_t n)
{
	uint8_t *y = dst;

	for (int64_t b = 0; b < n / QK; b++, src += QK, y += 34) {
		float amax = 0.0f;
		for (int j = 0; j < QK; j++)
			amax = KVS_MAX(amax, fabsf(src[j]));
		float d = amax / 127.0f;
		float id = d != 0.0f ? 1.0f / d : 0.0f;
		uint16_t dh = dtype_f32_to_f16(d);
		y[0] = (uint8_t)(dh & 0xff);
		y[1] = (uint8_t)(dh >> 8);
		for (int j = 0; j < QK; j++)
			y[2 + j] = (uint8_t)(int8_t)roundf(src[j] * id);
	}
}

/* Q4_0: m = the element of largest magnitude (first one, sign kept),
 * d = m / -8, q = min(15, trunc(x/d + 8.5)). */
void dtype_quant_q4_0(const float *src, void *dst, int64_t n)
{
	uint8_t *y = dst;

	for (int64_t b = 0; b < n / QK; b++, src += QK, y += 18) {
		float amax = 0.0f, max = 0.0f;
		for (int j = 0; j < QK; j++) {
			if (amax < fabsf(src[j])) {
				amax = fabsf(src[j]);
				max = src[j];
			}
		}
		float d = max / -8.0f;
		float id = d != 0.0f ? 1.0f / d : 0.0f;
		uint16_t dh = dtype_f32_to_f16(d);
		y[0] = (uint8_t)(dh & 0xff);
		y[1] = (uint8_t)(dh >> 8);
		for (int j = 0; j < QK / 2; j++) {
			int q0 = (int8_t)(src[j] * id + 8.5f);
			int q1 = (int8_t)(src[j + QK / 2] * id + 8.5f);
			q0 = KVS_MIN(15, q0);
			q1 = KVS_MIN(15, q1);
			y[2 + j] = (uint8_t)(q0 | (q1 << 4));
		}
	}
}

/* Q4_1: d = (max - min) / 15, m = min, q = min(15, trunc((x - min)/d + 0.5)). */
void dtype_quant_q4_1(const float *src, void *dst, int64_t n)
{
	uint8_t *y = dst;

	for (int64_t b = 0; b < n / QK; b++, src += QK, y += 20) {
		float min = FLT_MAX, max = -FLT_MAX;
		for (int j = 0; j < QK; j++) {
			min = src[j] < min ? src[j] : min;
			max = src[j] > max ? src[j] : max;
		}
		float d = (max - min) / 15.0f;
		float id = d != 0.0f ? 1.0f / d : 0.0f;
		uint16_t dh = dtype_f32_to_f16(d), mh = dtype_f32_to_f16(min);
		y[0] = (uint8_t)(dh & 0xff);
		y[1] = (uint8_t)(dh >> 8);
		y[2] = (uint8_t)(mh & 0xff);
		y[3] = (uint8_t)(mh >> 8);
		for (int j = 0; j < QK / 2; j++) {
			int q0 = (int8_t)((src[j] - min) * id + 0.5f);
			int q1 = (int8_t)((src[j + QK / 2] - min) * id + 0.5f);
			q0 = KVS_MIN(15, q0);
			q1 = KVS_MIN(15, q1);
			y[4 + j] = (uint8_t)(q0 | (q1 << 4));
		}
	}
}
