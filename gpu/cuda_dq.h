/*
 * cuda_dq.h: the parts of the CUDA kernels that are plain arithmetic on one
 * thread's data (block dequantisation, the integer step of the q8 dot
 * product, RoPE pair indices), compiled for the device by cuda_kern.cu and
 * for the host by tests/unit/test-cuda-dq.cu, which checks them against the
 * model layer's dequantisers and the CPU backend's kernels on a machine
 * without a GPU.
 *
 * Weight rows are read with 16-bit loads only (every field of every block
 * sits at an even offset, and rows start 256-byte aligned on the device).
 */
#ifndef KVS_CUDA_DQ_H
#define KVS_CUDA_DQ_H

extern "C" {
#include "model/model.h"
}

#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define CK_HD static __host__ __device__ __forceinline__

/* Product rounded on its own: nvcc would otherwise fuse a * b + c into an
 * FMA, which the CPU's dequantisers do not do. */
CK_HD float ck_mul(float a, float b)
{
#ifdef __CUDA_ARCH__
	return __fmul_rn(a, b);
#else
	return a * b;
#endif
}

/* The float with bit pattern u. */
CK_HD float ck_bits_f32(uint32_t u)
{
#ifdef __CUDA_ARCH__
	return __uint_as_float(u);
#else
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
#endif
}

/* c + the dot product of the four signed bytes of a and b. */
CK_HD int ck_dp4a(int a, int b, int c)
{
#ifdef __CUDA_ARCH__
	return __dp4a(a, b, c);
#else
	for (int k = 0; k < 4; k++)
		c += (int)(int8_t)(uint8_t)((uint32_t)a >> (8 * k)) *
		        (int)(int8_t)(uint8_t)((uint32_t)b >> (8 * k));
	return c;
#endif
}

CK_HD float ck_h2f(uint16_t h)
{
	return __half2float(__ushort_as_half(h));
}

/* Little-endian u16 / u32 at a 2-byte aligned address. */
CK_HD uint16_t ck_ld16(const uint8_t *p)
{
	return *(const uint16_t *)p;
}

CK_HD uint32_t ck_ld32(const uint8_t *p)
{
	const uint16_t *q = (const uint16_t *)p;
	return (uint32_t)q[0] | ((uint32_t)q[1] << 16);
}

CK_HD float ck_ldh(const uint8_t *p)
{
	return ck_h2f(ck_ld16(p));
}

/* x rounded to f16 and back (round to nearest even, as dtype_f32_to_f16). */
CK_HD float ck_f16_round(float x)
{
	return __half2float(__float2half_rn(x));
}

/* ------------------------------------------------------ dequantisation */

/* The 6-bit scale and min of sub-block j of a k-quant's scales[12]. */
CK_HD void ck_kq_scale(const uint8_t *s, int j, int *sc, int *mn)
{
	if (j < 4) {
		*sc = s[j] & 63;
		*mn = s[j + 4] & 63;
	} else {
		*sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
		*mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
	}
}

/* Elements k0 .. k0+7 (k0 a multiple of 8) of a weight row, as floats. */
CK_HD void ck_dq8(uint32_t type, const uint8_t *row, uint32_t k0, float *o)
{
	switch (type) {
	case DT_F32: {
		const float *f = (const float *)row + k0;
		for (int j = 0; j < 8; j++)
			o[j] = f[j];
		break;
	}
	case DT_F16: {
		const uint16_t *h = (const uint16_t *)row + k0;
		for (int j = 0; j < 8; j++)
			o[j] = ck_h2f(h[j]);
		break;
	}
	case DT_BF16: {
		const uint16_t *h = (const uint16_t *)row + k0;
		for (int j = 0; j < 8; j++)
			o[j] = ck_bits_f32((uint32_t)h[j] << 16);
		break;
	}
	case DT_Q4_0: {
		const uint8_t *b = row + (k0 >> 5) * 18, *qs = b + 2;
		float d = ck_ldh(b);
		int i0 = k0 & 31;
		for (int j = 0; j < 8; j++) {
			int i = i0 + j, q = i < 16 ? (qs[i] & 15) : (qs[i - 16] >> 4);
			o[j] = ck_mul(d, (float)(q - 8));
		}
		break;
	}
	case DT_Q4_1: {
		const uint8_t *b = row + (k0 >> 5) * 20, *qs = b + 4;
		float d = ck_ldh(b), m = ck_ldh(b + 2);
		int i0 = k0 & 31;
		for (int j = 0; j < 8; j++) {
			int i = i0 + j, q = i < 16 ? (qs[i] & 15) : (qs[i - 16] >> 4);
			o[j] = ck_mul(d, (float)q) + m;
		}
		break;
	}
	case DT_Q5_0: {
		const uint8_t *b = row + (k0 >> 5) * 22, *qs = b + 6;
		float d = ck_ldh(b);
		uint32_t qh = ck_ld32(b + 2);
		int i0 = k0 & 31;
		for (int j = 0; j < 8; j++) {
			int i = i0 + j, q = i < 16 ? (qs[i] & 15) : (qs[i - 16] >> 4);
			q |= (int)((qh >> i) & 1) << 4;
			o[j] = ck_mul(d, (float)(q - 16));
		}
		break;
	}
	case DT_Q5_1: {
		const uint8_t *b = row + (k0 >> 5) * 24, *qs = b + 8;
		float d = ck_ldh(b), m = ck_ldh(b + 2);
		uint32_t qh = ck_ld32(b + 4);
		int i0 = k0 & 31;
		for (int j = 0; j < 8; j++) {
			int i = i0 + j, q = i < 16 ? (qs[i] & 15) : (qs[i - 16] >> 4);
			q |= (int)((qh >> i) & 1) << 4;
			o[j] = ck_mul(d, (float)q) + m;
		}
		break;
	}
	case DT_Q8_0: {
		const uint8_t *b = row + (k0 >> 5) * 34;
		const int8_t *qs = (const int8_t *)(b + 2);
		float d = ck_ldh(b);
		int i0 = k0 & 31;
		for (int j = 0; j < 8; j++)
			o[j] = ck_mul(d, (float)qs[i0 + j]);
		break;
	}
	case DT_Q4_K:
	case DT_Q5_K: {
		bool five = type == DT_Q5_K;
		const uint8_t *b = row + (k0 >> 8) * (five ? 176 : 144);
		const uint8_t *qh = b + 16, *qs = b + (five ? 48 : 16);
		int e = k0 & 255, c = e >> 6, l = e & 63, hi = l >= 32, l0 = l & 31;
		int sc, mn;
		ck_kq_scale(b + 4, 2 * c + hi, &sc, &mn);
		float d1 = ck_mul(ck_ldh(b), (float)sc), m1 = ck_mul(ck_ldh(b + 2), (float)mn);
		for (int j = 0; j < 8; j++) {
			int byte = qs[32 * c + l0 + j];
			int q = hi ? byte >> 4 : byte & 15;
			if (five)
				q |= ((qh[l0 + j] >> (2 * c + hi)) & 1) << 4;
			o[j] = ck_mul(d1, (float)q) - m1;
		}
		break;
	}
	case DT_Q6_K: {
		const uint8_t *b = row + (k0 >> 8) * 210;
		const uint8_t *ql = b, *qh = b + 128;
		const int8_t *scales = (const int8_t *)(b + 192);
		float d = ck_ldh(b + 208);
		int e = k0 & 255, h = e >> 7, r = e & 127, k = r >> 5, l0 = r & 31;
		float ds = ck_mul(d, (float)scales[8 * h + l0 / 16 + 2 * k]);
		for (int j = 0; j < 8; j++) {
			int l = l0 + j;
			int lo4 = ql[64 * h + l + 32 * (k & 1)];
			lo4 = k < 2 ? lo4 & 15 : lo4 >> 4;
			int q = lo4 | (((qh[32 * h + l] >> (2 * k)) & 3) << 4);
			o[j] = ck_mul(ds, (float)(q - 32));
		}
		break;
	}
	default:
		for (int j = 0; j < 8; j++)
			o[j] = 0.0f;
		break;
	}
}

/* ------------------------------------------------------ q8 products */

/* The q8 types' geometry: quant words per block, block bytes, quants offset. */
CK_HD void ck_q8_geom(uint32_t type, uint32_t *wpb, uint32_t *bb, uint32_t *qoff)
{
	*wpb = type == DT_Q8_0 ? 8 : 4;
	*bb = type == DT_Q4_0 ? 18 : type == DT_Q4_1 ? 20 : 34;
	*qoff = type == DT_Q4_1 ? 4 : 2;
}

/* The integer part of unit u of a row (block u / wpb, quant word u % wpb)
 * against the activation words aq: Q8_0 words hold 4 int8 quants; a Q4
 * word holds elements 4w..4w+3 in its low nibbles and 16+4w.. in its high. */
CK_HD int ck_q8_unit(uint32_t type, const uint8_t *row, const int *aq, uint32_t u)
{
	uint32_t wpb, bb, qoff;
	ck_q8_geom(type, &wpb, &bb, &qoff);
	uint32_t b = u / wpb, wd = u % wpb;
	uint32_t v = ck_ld32(row + (size_t)b * bb + qoff + 4 * wd);
	if (wpb == 8)
		return ck_dp4a((int)v, aq[b * 8 + wd], 0);
	int part = ck_dp4a((int)(v & 0x0F0F0F0Fu), aq[b * 8 + wd], 0);
	return ck_dp4a((int)((v >> 4) & 0x0F0F0F0Fu), aq[b * 8 + 4 + wd], part);
}

/* Add block b's float contribution (its integer dot product dot) to acc, as
 * the CPU's packed kernels do. */
CK_HD float ck_q8_block(uint32_t type, const uint8_t *row, uint32_t b, int dot, float da, float sa,
                        int isum, float acc)
{
	uint32_t wpb, bb, qoff;
	ck_q8_geom(type, &wpb, &bb, &qoff);
	const uint8_t *blk = row + (size_t)b * bb;
	float dd = ck_mul(ck_ldh(blk), da);
	if (type == DT_Q4_0)
		return acc + ck_mul((float)(dot - 8 * isum), dd);
	acc = acc + ck_mul((float)dot, dd);
	if (type == DT_Q4_1)
		acc = acc + ck_mul(ck_ldh(blk + 2), sa);
	return acc;
}

/* ---------------------------------------------------------------- RoPE */

/* The dims of rotation pair p: NEOX pairs (p, p + n_rot/2), NORM pairs
 * (2p, 2p+1); pairs past n_rot/2 are the unrotated dims, two at a time. */
CK_HD void ck_pair(int p, int n_rot, int neox, int *da, int *db)
{
	if (neox && p < n_rot / 2) {
		*da = p;
		*db = p + n_rot / 2;
	} else {
		*da = 2 * p;
		*db = 2 * p + 1;
	}
}

/* Rotate the pair (a, b) by the angle with cosine c and sine s. */
CK_HD void ck_rot(float *a, float *b, float c, float s)
{
	float a0 = *a, b0 = *b;
	*a = a0 * c - b0 * s;
	*b = a0 * s + b0 * c;
}

/* The angle of pair p at position pos: freq_scale * pos * ts^p, the power
 * built by repeated multiplication as engine_rope_cos_sin does. */
CK_HD float ck_theta(int32_t pos, int p, float ts, float freq_scale)
{
	float theta = (float)pos;
	for (int k = 0; k < p; k++)
		theta *= ts;
	return freq_scale * theta;
}

/* A float another block wrote before a threadfence: read through L2 on
 * the device (the fused attention's last block reads the other splits'
 * partials), a plain load on the host. */
CK_HD float ck_ldcg(const float *p)
{
#ifdef __CUDA_ARCH__
	return __ldcg(p);
#else
	return *p;
#endif
}

/*
 * The merge of one (query, head)'s attention splits for output dim d: p
 * (splits, hd + 2) holds each split's hd unnormalised outputs, then its
 * running max and sum. Returns the softmax-weighted output (0 when no key
 * scored), *M the merged max and *L the merged sum. The combine launch and
 * the fused attention's last block both call it, so they agree bit for
 * bit; tests/unit/test-cuda-dq.cu checks it against a direct softmax.
 */
CK_HD float ck_merge(const float *p, int splits, int hd, int d, float *M, float *L)
{
	size_t stride = (size_t)hd + 2;
	float m = -INFINITY;
	for (int c = 0; c < splits; c++)
		m = fmaxf(m, ck_ldcg(&p[c * stride + hd]));
	float l = 0.0f, o = 0.0f;
	if (m != -INFINITY) {
		for (int c = 0; c < splits; c++) {
			float mc = ck_ldcg(&p[c * stride + hd]);
			if (mc == -INFINITY)
				continue;
			float w = expf(mc - m);
			l += ck_ldcg(&p[c * stride + hd + 1]) * w;
			o += ck_ldcg(&p[c * stride + d]) * w;
		}
	}
	*M = m;
	*L = l;
	return l > 0.0f ? o * (1.0f / l) : 0.0f;
}

#endif
