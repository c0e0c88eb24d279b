/*
 * kern.h: the CPU backend's compute kernels (internal to the engine layer).
 *
 * Matrix products y = x W^T, W (rows, K) a weight, x (n, K) activations:
 *
 *  - Quantised weights are repacked once into groups of 16 rows: for each
 *    32-element block, the 16 rows' scales, then their quants laid out so
 *    that one 64-byte load holds 4 consecutive quants of each of the 16
 *    rows. One int8 multiply-accumulate instruction (VNNI vpdpbusd) then
 *    advances 16 rows' dot products by 4 elements with no horizontal sums,
 *    and activations enter as 4-byte broadcasts. Q4_0, Q4_1 and Q8_0 keep
 *    their own bytes (a group takes exactly its 16 rows' bytes). The
 *    k-quants and the 5-bit types are unpacked one 32-block at a time into
 *    unsigned quants (4-bit nibbles, plus one or two bit planes for Q5_0,
 *    Q5_1, Q5_K and Q6_K) with their scales: f32 for the 5-bit types, and
 *    for the k-quants the file's own factoring (6-bit sub-scales as bytes,
 *    d and dmin per 256-block), so that every weight reads back exactly as
 *    the file's dequantiser computes it (Q6_K's two 16-element scales per
 *    block are kept apart). kern.c's header has the byte layouts.
 *  - Activations are quantised per 32-block to int8 (the Q8 scheme: scale
 *    d = max|x|/127), keeping d, sum(q) and s = d * sum(q) per block. All
 *    the packed types reduce to one integer form: sum(u8 w' * s8 a) per block,
 *    where w' is the stored unsigned quant (the int8 quant + 128 for Q8_0);
 *    an integer offset k comes back out as k times sum(a) (Q4_0 8, Q8_0 128,
 *    Q5_0 16, Q6_K 32 per half block), a min M as M times s.
 *  - F16, BF16 and F32 weights go through a generic path: rows widened to f32
 *    (4 at a time) and multiplied by the f32 activations in a kernel blocked
 *    over rows and tokens, or dotted in one pass for a single token.
 *
 * Attention, SwiGLU, RMSNorm and RoPE have kernels here too: scores of up to
 * KERN_ATT_Q queries against 16 keys at a time (keys stored transposed),
 * probabilities times values, and a vectorised exp.
 *
 * Each kernel has a scalar, an AVX2 (with FMA and F16C) and an AVX-512
 * VNNI version, and no level above scalar hands out a scalar kernel (a
 * vector kernel may still take a shape it has no vector code for, such as
 * an odd head size, through the scalar one); the backend takes one table
 * (struct kern_ops) at run time, the best the CPU supports or the level a
 * test forces. The scalar table is also the reference path's.
 */
#ifndef KVS_KERN_H
#define KVS_KERN_H

#include "base/base.h"

#define KERN_QK 32    /* elements per quant block */
#define KERN_GROUP 16 /* rows per repacked group */

enum kern_level { KERN_SCALAR = 0, KERN_AVX2, KERN_AVX512 };

/* A weight matrix ready for the kernels. */
struct kern_weight {
	uint32_t type;        /* enum dtype of the original tensor */
	bool packed;          /* repacked groups (Q4_0, Q4_1, Q8_0) */
	int64_t rows;         /* output rows */
	int64_t cols;         /* K, a multiple of the type's block size */
	const uint8_t *data;  /* original rows, or packed groups */
	uint64_t row_bytes;   /* original bytes per row */
	uint64_t group_bytes; /* packed: bytes per 16-row group */
	void *owned;          /* a packed buffer its maker frees (the CPU backend
	                         * packs into one arena instead and leaves it NULL) */
};

/* Quantised activations: n rows of K, quantised as llama.cpp's CPU backend
 * does (so the two round alike): d = max|x| / 127 kept as f16, q =
 * round(x * 127 / max|x|), s = f16(d * sum(q)) with the unrounded d. */
struct kern_act {
	int64_t K;
	int8_t *q;       /* (n, K) */
	float *d;        /* (n, K/32) block scales (f16 values) */
	float *s;        /* (n, K/32) f16(d * sum(q)), for the mins */
	int32_t *isum;   /* (n, K/32) sum(q), for the integer offsets */
	int32_t *isum16; /* (n, K/16) sums of each half block (Q6_K's offsets) */
};

/* One level's kernels. */
struct kern_ops {
	enum kern_level level;
	const char *name; /* "scalar", "avx2", "avx512-vnni" */
	/* Quantise one row x (K floats, K % 32 == 0) into act row i. */
	void (*quant_row)(const float *x, const struct kern_act *a, int64_t i);
	/* y[t, r] (+)= sum_k x[t, k] W[r, k] for tokens t in [0, n) and the rows
	 * of the packed groups [g0, g1) (rows past w->rows are not written); y
	 * has row stride ldy floats; acc adds into y instead of storing. */
	void (*gemm_packed)(const struct kern_weight *w, int64_t g0, int64_t g1,
	                    const struct kern_act *a, int64_t n, float *y, int64_t ldy, bool acc);
	/* f32 dot product of length n. */
	float (*dot_f32)(const float *a, const float *b, int64_t n);
	/* Dot product of n f16 (bf16) values, a weight row, with n floats. */
	float (*dot_f16)(const uint16_t *w, const float *x, int64_t n);
	float (*dot_bf16)(const uint16_t *w, const float *x, int64_t n);
	/* y[t * ldy + i] (+)= w_i . x_t for nr <= 4 f32 rows w_i = w + i * ldw
	 * and tokens t < n (x_t = x + t * ldx), rows of K: the unpacked weights'
	 * product, register-blocked over rows and tokens. */
	void (*gemm_rows_f32)(const float *w, int64_t ldw, int nr, const float *x, int64_t ldx,
	                      int64_t n, int64_t K, float *y, int64_t ldy, bool acc);
	/* bf16 -> f32 of n values (the top half of the float). */
	void (*bf16_to_f32)(const uint16_t *src, float *dst, int64_t n);
	/* y[i] += alpha * x[i]. */
	void (*axpy_f32)(float *y, const float *x, float alpha, int64_t n);
	/* f16 <-> f32 of n values (round to nearest even on the way down). */
	void (*f16_to_f32)(const uint16_t *src, float *dst, int64_t n);
	void (*f32_to_f16)(const float *src, uint16_t *dst, int64_t n);
	/* Attention scores of nq (<= KERN_ATT_Q) queries q (nq, hd) against m
	 * keys stored transposed, kt (hd, ldk): s[r * lds + k] = scale * q_r . k_k. */
	void (*att_scores)(const float *q, int nq, int hd, const float *kt, int64_t ldk, int64_t m,
	                   float scale, float *s, int64_t lds);
	/* out (nq, hd) = p (nq, m; row stride lds) times v (m, hd). */
	void (*att_pv)(const float *p, int nq, int64_t lds, const float *v, int64_t m, int hd,
	               float *out);
	/* The same two steps reading keys and values in place from a KV table:
	 * key or value k is the row rows[k], at base + rows[k] * stride
	 * elements (f16 when half, else f32; hd % 16 == 0, hd <= KERN_ROW_MAX). */
	void (*att_scores_rows)(const float *q, int nq, int hd, const void *base, int64_t stride,
	                        bool half, const uint32_t *rows, int64_t m, float scale, float *s,
	                        int64_t lds);
	void (*att_pv_rows)(const float *p, int nq, int64_t lds, const void *base, int64_t stride,
	                    bool half, const uint32_t *rows, int64_t m, int hd, float *out);
	/* Rows rows[0..m) of a KV table (as the *_rows kernels read them) as
	 * f32: into dst (m, hd) with row stride ldd or, transposed, into dst
	 * (hd, ldd) (a tile of keys for att_scores). */
	void (*kv_rows_f32)(const void *base, int64_t stride, bool half, const uint32_t *rows,
	                    int64_t m, int hd, bool transpose, float *dst, int64_t ldd);
	/* max(x[0..n)), n >= 1. */
	float (*max_f32)(const float *x, int64_t n);
	/* x[i] = exp(x[i] - mx) for i < n; returns their sum. */
	float (*exp_sum)(float *x, int64_t n, float mx);
	/* g[i] = silu(g[i]) * u[i] = g[i] / (1 + exp(-g[i])) * u[i]. */
	void (*swiglu)(float *g, const float *u, int64_t n);
	/* g[i] = gelu(g[i]) * u[i], GELU by tanh as llama.cpp's CPU path takes
	 * it: 0 at or below -10, g itself at or above 10, else the gate rounded
	 * to f16 and looked up in kern_gelu_f16() (so every level gives the same
	 * bits). */
	void (*geglu)(float *g, const float *u, int64_t n);
	/* out[i] = x[i] * scale * w[i], scale = 1 / sqrt(mean(x^2) + eps), the
	 * sum of squares accumulated in double (as llama.cpp does). */
	void (*rmsnorm)(const float *x, const float *w, float *out, int64_t n, float eps);
	/* Rotate one head vector x by the angles cs (n_rot/2 cosines, then
	 * n_rot/2 sines): pairs (x[2i], x[2i+1]) or, neox, (x[i], x[i + n_rot/2]);
	 * x[n_rot..] is left alone. */
	void (*rope)(float *x, const float *cs, int n_rot, bool neox);
};

#define KERN_ATT_Q 8     /* queries per att_scores / att_pv call */
#define KERN_ROW_MAX 256 /* longest head for the *_rows kernels */

/* The kernels of a level, clamped to what this CPU supports (AVX-512 needs
 * F, BW, VL and VNNI; AVX2 needs FMA and F16C too). */
const struct kern_ops *kern_select(enum kern_level want);
/* Best level this CPU supports. */
enum kern_level kern_cpu_level(void);
/* A level's table as it is, whatever this CPU supports: for inspecting the
 * entries (tests), never for calling them. */
const struct kern_ops *kern_table(enum kern_level level);

/* The tanh-GELU of every f16 value, as f16 (65,536 entries and one of
 * padding, so a 32-bit gather at any entry stays inside): entry h is
 * f16(0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2)))) with x the f16
 * h, computed in float. Built on first use; never freed. */
const uint16_t *kern_gelu_f16(void);

/* True if weights of this type are repacked for the int8 kernels. */
bool kern_type_packed(uint32_t type);
/* Bytes of the packed form of a (rows, K) weight, rows padded to 16; 0 when
 * the type is not packed. */
uint64_t kern_packed_bytes(uint32_t type, int64_t rows, int64_t K);
/* Repack groups [g0, g1) of a (rows, K) tensor from src (original rows) into
 * dst (kern_packed_bytes long). Rows past the end are zero. */
void kern_pack(uint32_t type, const uint8_t *src, int64_t rows, int64_t K, uint8_t *dst, int64_t g0,
               int64_t g1);
/* Dequantise row r of a weight (packed or not) into out (K floats). */
void kern_weight_row(const struct kern_weight *w, int64_t r, float *out);

/* Rows [r0, r1) of an unpacked weight times f32 activations x (n, K) with
 * row stride ldx; same output convention as gemm_packed; tmp holds
 * KERN_GENERIC_ROWS * K floats. */
#define KERN_GENERIC_ROWS 4
void kern_gemm_generic(const struct kern_ops *ops, const struct kern_weight *w, int64_t r0,
                       int64_t r1, const float *x, int64_t ldx, int64_t n, float *y, int64_t ldy,
                       bool acc, float *tmp);

#endif
