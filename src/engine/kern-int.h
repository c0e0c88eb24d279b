/*
 * kern-int.h: the insides of the CPU kernels, shared by kern.c (layouts,
 * packing, dispatch) and the level files kern-scalar.c, kern-avx2.c and
 * kern-avx512.c; nothing outside these four includes it.
 *
 * It holds the packed types' geometry as one constant table, defined here
 * (static) rather than in kern.c so that every level sees it as a
 * compile-time constant: the SIMD levels specialise their tiles on
 * &kern_ptypes[i] for each i, and the compiler folds the geometry into the
 * code. The order of kern_ptypes is the order of every per-type table
 * beside it (kern.c's decoders, the levels' tile tables). The byte layouts
 * are in kern.c's header.
 *
 * Each level file owns its row of the dispatch table (kern_scalar_ops,
 * kern_avx2_ops, kern_avx512_ops); kern.c picks one at run time. The SIMD
 * files compile their functions with per-function target attributes, so
 * the whole engine builds without -march and runs on any x86-64; no SIMD
 * function may be reached unless kern_cpu_level() allowed its level.
 */
#ifndef KVS_KERN_INT_H
#define KVS_KERN_INT_H

#include "engine/kern.h"

#include "model/model.h"

#include <string.h>

#define INLINE static inline __attribute__((always_inline))

/* Geometry of the packed types. */
struct kern_ptype {
	uint32_t type;
	uint32_t src_bytes; /* original bytes per source block */
	uint32_t src_elems; /* elements per source block (32, or 256 for k-quants) */
	uint32_t src_qs;    /* copied types: offset of the quants in the block */
	uint32_t hdr;       /* packed header bytes (scales, mins) */
	uint32_t pk_bytes;  /* packed bytes per block of 16 rows */
	bool bits8;         /* byte quants (else 4-bit nibbles) */
	int hbits;          /* bits above the nibble, in planes (5-bit: 1, Q6_K: 2) */
	bool flip;          /* bytes stored as q + 128 (Q8_0) */
	bool f32;           /* f32 header (else f16) */
	bool min;           /* has M */
	bool halves;        /* a second scale D1 for elements 16..31 (Q6_K) */
	bool ks;            /* k-quant scales: bytes per block, d (dmin) per 256-block */
	uint32_t sh;        /* ks: bytes of a 256-block's header (d, dmin for 16 rows) */
	int32_t off;        /* the integer offset k */
};

/* type, src bytes, src elems, src qs, hdr, packed bytes (per block), bits8,
 * hbits, flip, f32, min, halves, ks, sh, offset */
static const struct kern_ptype kern_ptypes[] = {
	{ DT_Q4_0, 18, 32, 2, 32, 288, false, 0, false, false, false, false, false, 0, 8 },
	{ DT_Q4_1, 20, 32, 4, 64, 320, false, 0, false, false, true, false, false, 0, 0 },
	{ DT_Q8_0, 34, 32, 2, 32, 544, true, 0, true, false, false, false, false, 0, 128 },
	{ DT_Q4_K, 144, 256, 0, 32, 288, false, 0, false, false, true, false, true, 128, 0 },
	{ DT_Q5_0, 22, 32, 0, 64, 384, false, 1, false, true, false, false, false, 0, 16 },
	{ DT_Q5_1, 24, 32, 0, 128, 448, false, 1, false, true, true, false, false, 0, 0 },
	{ DT_Q5_K, 176, 256, 0, 32, 352, false, 1, false, false, true, false, true, 128, 0 },
	{ DT_Q6_K, 210, 256, 0, 32, 416, false, 2, false, false, false, true, true, 64, 32 },
};
#define KERN_N_PTYPES ((int)KVS_ARRAY_LEN(kern_ptypes))

/* Index of a type's packed geometry, or -1. */
static inline int kern_ptype_index(uint32_t type)
{
	for (int i = 0; i < KERN_N_PTYPES; i++)
		if (kern_ptypes[i].type == type)
			return i;
	return -1;
}

/* The packed geometry of a type, or NULL. */
static inline const struct kern_ptype *kern_ptype(uint32_t type)
{
	int i = kern_ptype_index(type);
	return i < 0 ? NULL : &kern_ptypes[i];
}

/* Read a little-endian f16 as float. */
static inline float kern_rdh(const uint8_t *p)
{
	return dtype_f16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
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

/* The levels' dispatch rows, each defined in its level's file. */
extern const struct kern_ops kern_scalar_ops;
extern const struct kern_ops kern_avx2_ops;
extern const struct kern_ops kern_avx512_ops;

/* Scalar kernels the SIMD levels reuse as the fallback for shapes their
 * vector code does not take (never as a table entry); contracts as in
 * kern_ops. */
void kern_scalar_att_scores_rows(const float *q, int nq, int hd, const void *base, int64_t stride,
                                 bool half, const uint32_t *rows, int64_t m, float scale, float *s,
                                 int64_t lds);
void kern_scalar_att_pv_rows(const float *p, int nq, int64_t lds, const void *base, int64_t stride,
                             bool half, const uint32_t *rows, int64_t m, int hd, float *out);
void kern_scalar_kv_rows_f32(const void *base, int64_t stride, bool half, const uint32_t *rows,
                             int64_t m, int hd, bool transpose, float *dst, int64_t ldd);
void kern_scalar_rope(float *x, const float *cs, int n_rot, bool neox);

/* AVX2 kernels the AVX-512 level reuses (every AVX-512 CPU has AVX2): the
 * tile loader and the max, whose cost is in memory and the transposing
 * shuffles rather than in vector width; contracts as in kern_ops. */
void kern_avx2_kv_rows_f32(const void *base, int64_t stride, bool half, const uint32_t *rows,
                           int64_t m, int hd, bool transpose, float *dst, int64_t ldd);
float kern_avx2_max_f32(const float *x, int64_t n);

/* The AVX2 attention entries of kern_avx2_ops (kern-avx2-attn.c). */
void kern_avx2_att_scores(const float *q, int nq, int hd, const float *kt, int64_t ldk, int64_t m,
                          float scale, float *s, int64_t lds);
void kern_avx2_att_pv(const float *p, int nq, int64_t lds, const float *v, int64_t m, int hd,
                      float *out);
void kern_avx2_att_scores_rows(const float *q, int nq, int hd, const void *base, int64_t stride,
                               bool half, const uint32_t *rows, int64_t m, float scale, float *s,
                               int64_t lds);
void kern_avx2_att_pv_rows(const float *p, int nq, int64_t lds, const void *base, int64_t stride,
                           bool half, const uint32_t *rows, int64_t m, int hd, float *out);

#endif
