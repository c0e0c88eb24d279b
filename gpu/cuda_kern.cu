/*
 * cuda_kern.cu: the CUDA backend's kernels (see cuda_kern.h).
 *
 * Numerics follow the CPU backend wherever the order of operations allows,
 * so that the two agree to rounding:
 *   - Q4_0, Q4_1 and Q8_0 products take activations quantised exactly as
 *     the CPU's packed kernels do (d = max|x|/127 kept as f16, q =
 *     round-half-even(x * 127/max|x|), s = f16(d * sum q)); the integer
 *     part of each 32-block is exact (dp4a), the float part is
 *     (dot - k sum q) * (d_w d_a) (+ m_w s_a), as on the CPU.
 *   - Every other weight type is dequantised in the kernel with the CPU's
 *     formulas (products as separate roundings: __fmul_rn keeps nvcc from
 *     fusing them into an FMA) and dotted with f32 activations.
 *   - RMSNorm sums squares in double; RoPE angles use the CPU's repeated
 *     multiplication of the frequency; softmax subtracts the maximum.
 * Only the order of float additions differs (and prefill, which runs the
 * products on tensor cores in f16 with f32 accumulation).
 *
 * Layout conventions: every device buffer starts 256-byte aligned; weight
 * rows have an even number of bytes and every field in a block sits at an
 * even offset, so 16-bit loads are always aligned (32-bit words are read as
 * two halves).
 */
#include "gpu/cuda_dq.h"
#include "gpu/cuda_kern.h"
#include "gpu/gpuplan.h"

#include <math.h>
#include <mma.h>

using namespace nvcuda;

#define CK_FULL 0xffffffffu
#define ATT_T GPUPLAN_ATT_TILE

/* ------------------------------------------------------------ helpers */

static __device__ __forceinline__ float ck_warp_sum(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(CK_FULL, v, o);
	return v;
}

static __device__ __forceinline__ int ck_warp_sum_i(int v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(CK_FULL, v, o);
	return v;
}

static __device__ __forceinline__ float ck_warp_max(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(CK_FULL, v, o));
	return v;
}

static __device__ __forceinline__ double ck_warp_sum_d(double v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(CK_FULL, v, o);
	return v;
}

/* Sum of v over the block (blockDim a multiple of 32, <= 1024); every
 * thread gets it. sh holds 32 doubles. */
static __device__ double ck_block_sum_d(double v, double *sh)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
	v = ck_warp_sum_d(v);
	__syncthreads();
	if (lane == 0)
		sh[warp] = v;
	__syncthreads();
	v = lane < nw ? sh[lane] : 0.0;
	return ck_warp_sum_d(v);
}

static __device__ float ck_block_max(float v, float *sh)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
	v = ck_warp_max(v);
	__syncthreads();
	if (lane == 0)
		sh[warp] = v;
	__syncthreads();
	v = lane < nw ? sh[lane] : -INFINITY;
	return ck_warp_max(v);
}

/* Quantise the warp's 32 values (one per lane) into q8 block b, as the
 * CPU's quant_row does. */
static __device__ void ck_quant_block(float v, int lane, const ck_q8out &q, uint32_t b)
{
	float amax = ck_warp_max(fabsf(v));
	float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
	int qi = __float2int_rn(v * id);
	int sum = ck_warp_sum_i(qi);
	q.q[b * 32 + lane] = (int8_t)qi;
	if (lane == 0) {
		q.d[b] = ck_f16_round(d);
		q.s[b] = ck_f16_round(d * (float)sum);
		q.isum[b] = sum;
	}
}

/* ---------------------------------------------------------- row dots */

/* True for the types that take q8 activations. */
static __device__ __forceinline__ bool ck_q8_type(uint32_t type)
{
	return type == DT_Q4_0 || type == DT_Q4_1 || type == DT_Q8_0;
}

/* Row r of w dotted with the q8 activations; every lane of the warp gets
 * the sum. A lane takes one quant word of a block at a time (ck_q8_unit);
 * the lanes of a block add their integer parts exactly before the block's
 * float step. */
static __device__ float ck_dot_q8(const ck_mat &w, uint32_t r, const ck_act &a, int lane)
{
	const uint8_t *row = w.d + (size_t)r * w.row_bytes;
	uint32_t wpb, bb, qoff;
	ck_q8_geom(w.type, &wpb, &bb, &qoff);
	uint32_t units = w.cols / 32 * wpb;
	const int *aq = (const int *)a.q;
	float acc = 0.0f;
	for (uint32_t base = 0; base < units; base += 32) {
		uint32_t u = base + (uint32_t)lane;
		int part = u < units ? ck_q8_unit(w.type, row, aq, u) : 0;
		part += __shfl_xor_sync(CK_FULL, part, 1);
		part += __shfl_xor_sync(CK_FULL, part, 2);
		if (wpb == 8)
			part += __shfl_xor_sync(CK_FULL, part, 4);
		if (u < units && u % wpb == 0) {
			uint32_t b = u / wpb;
			acc = ck_q8_block(w.type, row, b, part, a.d[b], a.s[b], a.isum[b], acc);
		}
	}
	return ck_warp_sum(acc);
}

/* Row r of w dequantised and dotted with f32 activations x (cols). */
static __device__ float ck_dot_f32(const ck_mat &w, uint32_t r, const float *x, int lane)
{
	const uint8_t *row = w.d + (size_t)r * w.row_bytes;
	uint32_t units = w.cols / 8;
	float acc = 0.0f;
	for (uint32_t u = (uint32_t)lane; u < units; u += 32) {
		float v[8];
		ck_dq8(w.type, row, u * 8, v);
		const float4 *xp = (const float4 *)(x + (size_t)u * 8);
		float4 x0 = xp[0], x1 = xp[1];
		acc += v[0] * x0.x + v[1] * x0.y + v[2] * x0.z + v[3] * x0.w;
		acc += v[4] * x1.x + v[5] * x1.y + v[6] * x1.z + v[7] * x1.w;
	}
	return ck_warp_sum(acc);
}

static __device__ __forceinline__ float ck_row_dot(const ck_mat &w, uint32_t r, const ck_act &a,
                                                   int lane)
{
	return ck_q8_type(w.type) ? ck_dot_q8(w, r, a, lane) : ck_dot_f32(w, r, a.xf, lane);
}

/* ------------------------------------------------------------ kernels */

#define MV_WARPS 4

static __global__ void k_embed(ck_mat w, const int32_t *step, float *x)
{
	uint32_t i = blockIdx.x;
	int32_t tok = step[CK_STEP_TOK(i)];
	const uint8_t *row = w.d + (size_t)tok * w.row_bytes;
	float *xr = x + (size_t)i * w.cols;
	for (uint32_t u = threadIdx.x; u < w.cols / 8; u += blockDim.x) {
		float v[8];
		ck_dq8(w.type, row, u * 8, v);
		for (int j = 0; j < 8; j++)
			xr[u * 8 + j] = v[j];
	}
}

static __global__ void k_rmsnorm(const float *x, const float *w, uint32_t n, float eps, float *xb,
                                 __half *xh, ck_q8out q8)
{
	__shared__ double sh[32];
	size_t row = blockIdx.x;
	const float *xr = x + row * n;
	double ss = 0.0;
	for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
		ss += (double)xr[i] * xr[i];
	ss = ck_block_sum_d(ss, sh);
	float scale = 1.0f / sqrtf((float)(ss / (double)n) + eps);
	for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
		float v = __fmul_rn(xr[i], scale) * w[i];
		if (xb)
			xb[row * n + i] = v;
		if (xh)
			xh[row * n + i] = __float2half_rn(v);
	}
	if (q8.q != NULL && xb != NULL) {
		__syncthreads();
		int lane = threadIdx.x & 31;
		for (uint32_t b = threadIdx.x >> 5; b < n / 32; b += blockDim.x >> 5)
			ck_quant_block(xb[row * n + b * 32 + lane], lane, q8, b);
	}
}

static __global__ void k_mv(ck_mat w, ck_act a, float *y, const float *bias, int acc)
{
	int lane = threadIdx.x & 31;
	uint32_t r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
	if (r >= w.rows)
		return;
	float v = ck_row_dot(w, r, a, lane);
	if (lane == 0) {
		if (bias)
			v += bias[r];
		y[r] = acc ? y[r] + v : v;
	}
}

/*
 * y (rows) += W a, then the block that finishes last normalises the whole of
 * y (RMSNorm with weight nw into xb, quantised into q8): the residual add and
 * the next norm in one launch. The last block is found with a counter
 * (threadfence, atomicAdd, as in CUDA's threadFenceReduction sample) that it
 * resets for the next launch; it reads y through L2 (__ldcg), where the
 * other blocks' writes are.
 */
static __global__ void k_mv_add_norm(ck_mat w, ck_act a, float *y, const float *nw, float eps,
                                     float *xb, ck_q8out q8, unsigned *counter)
{
	__shared__ double sh[32];
	__shared__ bool last;
	int lane = threadIdx.x & 31;
	uint32_t r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
	if (r < w.rows) {
		float v = ck_row_dot(w, r, a, lane);
		if (lane == 0)
			y[r] += v;
	}
	__threadfence();
	__syncthreads();
	if (threadIdx.x == 0)
		last = atomicAdd(counter, 1u) == gridDim.x - 1;
	__syncthreads();
	if (!last)
		return;
	uint32_t n = w.rows;
	double ss = 0.0;
	for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
		float x = __ldcg(&y[i]);
		ss += (double)x * x;
	}
	ss = ck_block_sum_d(ss, sh);
	float scale = 1.0f / sqrtf((float)(ss / (double)n) + eps);
	for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
		xb[i] = __fmul_rn(__ldcg(&y[i]), scale) * nw[i];
	__syncthreads();
	for (uint32_t b = threadIdx.x >> 5; b < n / 32; b += blockDim.x >> 5)
		ck_quant_block(xb[b * 32 + lane], lane, q8, b);
	if (threadIdx.x == 0)
		*counter = 0;
}

static __global__ void k_mv_qkv(ck_mat wq, ck_mat wk, ck_mat wv, const float *bq, const float *bk,
                                const float *bv, ck_act a, float *q, __half *kc, __half *vc,
                                const int32_t *step)
{
	int lane = threadIdx.x & 31;
	uint32_t r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
	uint32_t nq = wq.rows, nkv = wk.rows;
	if (r >= nq + 2 * nkv)
		return;
	uint32_t slot = (uint32_t)step[CK_STEP_SLOT(0)];
	if (r < nq) {
		float v = ck_row_dot(wq, r, a, lane);
		if (lane == 0)
			q[r] = bq ? v + bq[r] : v;
	} else if (r < nq + nkv) {
		r -= nq;
		float v = ck_row_dot(wk, r, a, lane);
		if (lane == 0)
			kc[(size_t)slot * nkv + r] = __float2half_rn(bk ? v + bk[r] : v);
	} else {
		r -= nq + nkv;
		float v = ck_row_dot(wv, r, a, lane);
		if (lane == 0)
			vc[(size_t)slot * nkv + r] = __float2half_rn(bv ? v + bv[r] : v);
	}
}

/* 32 rows per block (8 warps x 4), so the block can quantise its rows. */
static __global__ void k_mv_swiglu(ck_mat gate, ck_mat up, ck_act a, float *g, ck_q8out q8)
{
	__shared__ float sh[32];
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	uint32_t r0 = blockIdx.x * 32;
	for (int t = 0; t < 4; t++) {
		uint32_t r = r0 + (uint32_t)(warp * 4 + t);
		float gv = ck_row_dot(gate, r, a, lane);
		float uv = ck_row_dot(up, r, a, lane);
		float v = gv / (1.0f + expf(-gv)) * uv;
		if (lane == 0) {
			sh[warp * 4 + t] = v;
			g[r] = v;
		}
	}
	__syncthreads();
	if (warp == 0)
		ck_quant_block(sh[lane], lane, q8, r0 / 32);
}

static __global__ void k_angles(const uint32_t *vis, const int32_t *vpos, const int32_t *step,
                                float *slot_cs, int32_t *cs_pos, int n_rot, float ts, float fs)
{
	uint32_t j = blockIdx.x * blockDim.x + threadIdx.x;
	if (j >= (uint32_t)step[CK_STEP_NVIS])
		return;
	int32_t p = vpos[j];
	uint32_t s = vis[j];
	if (p < 0 || cs_pos[s] == p)
		return;
	float *cs = slot_cs + (size_t)s * n_rot;
	int half = n_rot / 2;
	float theta = (float)p;
	for (int i = 0; i < half; i++) {
		float sn, cn;
		sincosf(fs * theta, &sn, &cn);
		cs[i] = cn;
		cs[half + i] = sn;
		theta *= ts;
	}
	cs_pos[s] = p;
}

/*
 * The attention kernels' common steps. ck_attn_setup: the group's queries
 * rotated to the query's position (s_q), and for LM-Infinite's distance cap
 * the angles of position pos - dist_cap (s_cap); returns that position (keys
 * before it among the globals are capped), INT32_MIN when there is no cap.
 * ck_key_scores: visible entry j scored against every query head of KV head
 * g (sc[h], scaled); false when the key is not visible to this query.
 */
static __device__ int32_t ck_attn_setup(const ck_attn_args &A, int g, int i, int32_t pos,
                                        float *s_q, float *s_cap)
{
	int grp = A.n_head / A.n_kv, hd = A.hd, half = A.n_rot / 2, np = hd / 2;
	const float *qg = A.q + ((size_t)i * A.n_head + (size_t)g * grp) * hd;
	for (int t = threadIdx.x; t < grp * np; t += blockDim.x) {
		int h = t / np, p = t % np, da, db;
		ck_pair(p, A.n_rot, A.neox, &da, &db);
		float a = qg[h * hd + da], b = qg[h * hd + db];
		if (p < half) {
			float sn, cn;
			sincosf(ck_theta(pos, p, A.theta_scale, A.freq_scale), &sn, &cn);
			ck_rot(&a, &b, cn, sn);
		}
		s_q[h * hd + da] = a;
		s_q[h * hd + db] = b;
	}
	int32_t cap = A.step[CK_STEP_DCAP];
	if (cap <= 0 || pos - cap <= 0)
		return INT32_MIN;
	int32_t at = pos - cap;
	for (int t = threadIdx.x; t < half; t += blockDim.x) {
		float sn, cn;
		sincosf(ck_theta(at, t, A.theta_scale, A.freq_scale), &sn, &cn);
		s_cap[t] = cn;
		s_cap[half + t] = sn;
	}
	return at;
}

template <int G>
static __device__ bool ck_key_scores(const ck_attn_args &A, int g, uint32_t j, int32_t pos,
                                     int32_t cap_at, const float *s_q, const float *s_cap,
                                     int *slot, float *sc)
{
	int32_t p = A.vpos[j];
	uint32_t s = A.vis[j];
	if (p < 0 || p > pos)
		return false;
	int grp = A.n_head / A.n_kv, hd = A.hd, half = A.n_rot / 2, np = hd / 2;
	bool capped = p < cap_at && j < (uint32_t)A.step[CK_STEP_NGLOB];
	const __half *kp = A.kc + ((size_t)s * A.n_kv + g) * hd;
	const float *cs = capped ? s_cap : A.slot_cs + (size_t)s * A.n_rot;
#pragma unroll
	for (int h = 0; h < G; h++)
		sc[h] = 0.0f;
	for (int pp = 0; pp < np; pp++) {
		int da, db;
		ck_pair(pp, A.n_rot, A.neox, &da, &db);
		float ka = __half2float(kp[da]), kb = __half2float(kp[db]);
		if (pp < half)
			ck_rot(&ka, &kb, cs[pp], cs[half + pp]);
#pragma unroll
		for (int h = 0; h < G; h++)
			if (h < grp)
				sc[h] += s_q[h * hd + da] * ka + s_q[h * hd + db] * kb;
	}
#pragma unroll
	for (int h = 0; h < G; h++)
		sc[h] *= A.scale;
	*slot = (int)s;
	return true;
}

/* Shared-memory floats of a group's rotated queries for G. */
#define ATT_SQ(G) ((G)*256 < GPUPLAN_ATT_MAXQ ? (G)*256 : GPUPLAN_ATT_MAXQ)

/*
 * Attention of one query (blockIdx.z) with the query heads of one KV head
 * (blockIdx.x) over one range of the visible list (blockIdx.y), in tiles of
 * ATT_T keys. Phase A: a thread per key rotates it to its slot's position
 * and scores it against every query head of the group. Phase B: a warp per
 * head updates the running max and sum (online softmax). Phase C: a thread
 * per (head, dim) output accumulates p * v. G bounds the group size.
 */
template <int G>
static __global__ void __launch_bounds__(ATT_T) k_attn(ck_attn_args A, int splits, ck_attn_fuse F)
{
	const int ACC = ATT_SQ(G) / ATT_T;
	__shared__ float s_q[ATT_SQ(G)];
	__shared__ float s_cap[256];
	__shared__ float s_p[G][ATT_T];
	__shared__ int s_slot[ATT_T];
	__shared__ float s_m[G], s_l[G], s_c[G];
	int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	int g = blockIdx.x, c = blockIdx.y, i = blockIdx.z;
	int grp = A.n_head / A.n_kv, hd = A.hd, nout = grp * hd;
	int32_t pos = A.step[CK_STEP_POS(i)];
	/* dense: the visible entries; sparse: this KV head's list of them */
	uint32_t n_vis = A.list ? (uint32_t)A.list_n[g] : (uint32_t)A.step[CK_STEP_NVIS];
	uint32_t chunk = (n_vis + (uint32_t)splits - 1) / (uint32_t)splits;
	uint32_t j0 = min(n_vis, (uint32_t)c * chunk), j1 = min(n_vis, j0 + chunk);

	int32_t cap_at = ck_attn_setup(A, g, i, pos, s_q, s_cap);
	if (tid < grp) {
		s_m[tid] = -INFINITY;
		s_l[tid] = 0.0f;
	}
	float acc[ACC];
#pragma unroll
	for (int r = 0; r < ACC; r++)
		acc[r] = 0.0f;
	bool want_raw = A.raw != NULL && i == A.raw_q;
	__syncthreads();

	for (uint32_t t0 = j0; t0 < j1; t0 += ATT_T) {
		/* A: scores */
		uint32_t j = t0 + (uint32_t)tid;
		int slot = -1;
		float sc[G];
		uint32_t e = A.list && j < j1 ? A.list[(size_t)g * A.list_cap + j] : j;
		bool vis = j < j1 && ck_key_scores<G>(A, g, e, pos, cap_at, s_q, s_cap, &slot, sc);
		s_slot[tid] = vis ? slot : -1;
#pragma unroll
		for (int h = 0; h < G; h++) {
			if (h < grp) {
				float v = vis ? sc[h] : -INFINITY;
				s_p[h][tid] = v;
				if (want_raw && j < j1)
					A.raw[(size_t)(g * grp + h) * A.n_ctx + j] = v;
			}
		}
		__syncthreads();

		/* B: running max and sum per head */
		for (int h = warp; h < grp; h += ATT_T / 32) {
			float v[ATT_T / 32], mx = -INFINITY;
#pragma unroll
			for (int k = 0; k < ATT_T / 32; k++) {
				v[k] = s_p[h][lane + 32 * k];
				mx = fmaxf(mx, v[k]);
			}
			mx = ck_warp_max(mx);
			float m_old = s_m[h], m_new = fmaxf(m_old, mx), corr = 1.0f, sum = 0.0f;
#pragma unroll
			for (int k = 0; k < ATT_T / 32; k++) {
				v[k] = m_new == -INFINITY ? 0.0f : expf(v[k] - m_new);
				sum += v[k];
			}
			if (m_new != -INFINITY)
				corr = expf(m_old - m_new);
			sum = ck_warp_sum(sum);
#pragma unroll
			for (int k = 0; k < ATT_T / 32; k++)
				s_p[h][lane + 32 * k] = v[k];
			if (lane == 0) {
				s_l[h] = s_l[h] * corr + sum;
				s_m[h] = m_new;
				s_c[h] = corr;
			}
		}
		__syncthreads();

		/* C: p v */
#pragma unroll
		for (int r = 0; r < ACC; r++) {
			int o = tid + r * ATT_T;
			if (o < nout)
				acc[r] *= s_c[o / hd];
		}
		uint32_t nt = min((uint32_t)ATT_T, j1 - t0);
		for (uint32_t t = 0; t < nt; t++) {
			int sl = s_slot[t];
			if (sl < 0)
				continue;
			const __half *vp = A.vc + ((size_t)sl * A.n_kv + g) * hd;
#pragma unroll
			for (int r = 0; r < ACC; r++) {
				int o = tid + r * ATT_T;
				if (o < nout)
					acc[r] += s_p[o / hd][t] * __half2float(vp[o % hd]);
			}
		}
		__syncthreads();
	}

	/* partials of this split */
	size_t stride = (size_t)hd + 2;
	float *part = A.part + (((size_t)i * A.n_head + (size_t)g * grp) * splits + c) * stride;
#pragma unroll
	for (int r = 0; r < ACC; r++) {
		int o = tid + r * ATT_T;
		if (o < nout)
			part[(size_t)(o / hd) * splits * stride + (o % hd)] = acc[r];
	}
	if (tid < grp) {
		part[(size_t)tid * splits * stride + hd] = s_m[tid];
		part[(size_t)tid * splits * stride + hd + 1] = s_l[tid];
	}
	if (F.counters == NULL)
		return;
	/* fused merge: the last split of this KV head merges its heads */
	__shared__ bool last;
	__threadfence();
	__syncthreads();
	if (tid == 0)
		last = atomicAdd(&F.counters[g], 1u) == (unsigned)splits - 1;
	__syncthreads();
	if (!last)
		return;
	/* o runs over (head, dim) of the group: a warp holds 32 dims of one
	 * head (hd is a multiple of 32), as k_combine's quantisation needs */
	for (int o = tid; o < nout; o += ATT_T) {
		int h = g * grp + o / hd, d = o % hd;
		const float *p = A.part + (size_t)h * splits * stride;
		float M, L, v = ck_merge(p, splits, hd, d, &M, &L);
		F.ao[(size_t)h * hd + d] = v;
		if (F.q8.q != NULL)
			ck_quant_block(v, lane, F.q8, (uint32_t)(h * hd + d) / 32);
		if (d == 0 && F.ml != NULL) {
			F.ml[2 * h] = M;
			F.ml[2 * h + 1] = L;
		}
		if (d == 0 && F.mlq != NULL) {
			F.mlq[2 * h] = M;
			F.mlq[2 * h + 1] = L;
		}
	}
	if (tid == 0)
		F.counters[g] = 0;
}

/* The probabilities of one query (blockIdx.z) for one tile of the visible
 * list (blockIdx.y), summed over the query heads of KV head blockIdx.x, added
 * to akv: the keys scored again, normalised with the merged max and sum. */
template <int G>
static __global__ void __launch_bounds__(ATT_T)
        k_attn_acc(ck_attn_args A, const float *mlq, float *akv)
{
	__shared__ float s_q[ATT_SQ(G)];
	__shared__ float s_cap[256];
	int g = blockIdx.x, i = blockIdx.z;
	int grp = A.n_head / A.n_kv;
	int32_t pos = A.step[CK_STEP_POS(i)];
	uint32_t n_vis = A.list ? (uint32_t)A.list_n[g] : (uint32_t)A.step[CK_STEP_NVIS];
	uint32_t j = blockIdx.y * ATT_T + threadIdx.x;
	if (blockIdx.y * ATT_T >= n_vis)
		return;
	int32_t cap_at = ck_attn_setup(A, g, i, pos, s_q, s_cap);
	__syncthreads();
	float sc[G];
	int slot;
	uint32_t e = A.list && j < n_vis ? A.list[(size_t)g * A.list_cap + j] : j;
	if (j >= n_vis || !ck_key_scores<G>(A, g, e, pos, cap_at, s_q, s_cap, &slot, sc))
		return;
	float sum = 0.0f;
	const float *ml = mlq + ((size_t)i * A.n_head + (size_t)g * grp) * 2;
#pragma unroll
	for (int h = 0; h < G; h++)
		if (h < grp && ml[2 * h + 1] > 0.0f)
			sum += expf(sc[h] - ml[2 * h]) * (1.0f / ml[2 * h + 1]);
	atomicAdd(&akv[(size_t)g * A.n_ctx + e], sum);
}

/* A block per (query, head), a thread per dim. */
static __global__ void k_combine(const float *part, int n_head, int hd, int splits, float *ao,
                                 __half *aoh, ck_q8out q8, float *ml, int raw_q, float *mlq)
{
	int i = blockIdx.x, h = blockIdx.y, d = threadIdx.x, lane = d & 31;
	size_t stride = (size_t)hd + 2;
	const float *p = part + ((size_t)i * n_head + h) * splits * stride;
	float M, L, v = ck_merge(p, splits, hd, d, &M, &L);
	size_t at = ((size_t)i * n_head + h) * hd + d;
	ao[at] = v;
	if (aoh)
		aoh[at] = __float2half_rn(v);
	if (q8.q != NULL)
		ck_quant_block(v, lane, q8, (uint32_t)(h * hd + d) / 32);
	if (ml != NULL && i == raw_q && d == 0) {
		ml[2 * h] = M;
		ml[2 * h + 1] = L;
	}
	if (mlq != NULL && d == 0) {
		mlq[((size_t)i * n_head + h) * 2] = M;
		mlq[((size_t)i * n_head + h) * 2 + 1] = L;
	}
}

static __global__ void k_attn_norm(float *raw, const float *ml, uint32_t n_ctx, const int32_t *step)
{
	size_t row = blockIdx.y;
	uint32_t j = blockIdx.x * blockDim.x + threadIdx.x;
	if (j >= (uint32_t)step[CK_STEP_NVIS])
		return;
	float M = ml[2 * row], L = ml[2 * row + 1], s = raw[row * n_ctx + j];
	raw[row * n_ctx + j] = (s == -INFINITY || !(L > 0.0f)) ? 0.0f : expf(s - M) * (1.0f / L);
}

static __global__ void k_dequant_f16(ck_mat w, __half *out)
{
	uint32_t upr = w.cols / 8;
	size_t units = (size_t)w.rows * upr;
	for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < units;
	     idx += (size_t)gridDim.x * blockDim.x) {
		uint32_t r = (uint32_t)(idx / upr), u = (uint32_t)(idx % upr);
		float v[8];
		ck_dq8(w.type, w.d + (size_t)r * w.row_bytes, u * 8, v);
		__half2 h[4];
		for (int j = 0; j < 4; j++)
			h[j] = __floats2half2_rn(v[2 * j], v[2 * j + 1]);
		*(uint4 *)(out + (size_t)r * w.cols + (size_t)u * 8) = *(const uint4 *)h;
	}
}

#define GB_M 64
#define GB_N 64
#define GB_K 32
#define GB_LDS (GB_K + 8)
#define GB_LDC (GB_N + 4)

/* 64 x 64 tiles of c, 4 warps of 32 x 32, 16 x 16 x 16 f16 fragments. */
static __global__ void __launch_bounds__(128)
        k_gemm(const __half *A, uint32_t M, uint32_t K, const __half *B, uint32_t N, ck_gemm_out o)
{
	__shared__ __align__(32) __half sa[GB_M * GB_LDS];
	__shared__ __align__(32) __half sb[GB_N * GB_LDS];
	__shared__ __align__(32) float sc[GB_M * GB_LDC];
	int tid = threadIdx.x, warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
	uint32_t m0 = blockIdx.y * GB_M, n0 = blockIdx.x * GB_N;
	wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
	for (int x = 0; x < 2; x++)
		for (int y = 0; y < 2; y++)
			wmma::fill_fragment(acc[x][y], 0.0f);
	for (uint32_t k0 = 0; k0 < K; k0 += GB_K) {
		for (int t = tid; t < GB_M * GB_K / 8; t += 128) {
			int r = t / (GB_K / 8), c8 = (t % (GB_K / 8)) * 8;
			uint4 va = make_uint4(0, 0, 0, 0), vb = make_uint4(0, 0, 0, 0);
			if (m0 + r < M)
				va = *(const uint4 *)(A + (size_t)(m0 + r) * K + k0 + c8);
			if (n0 + r < N)
				vb = *(const uint4 *)(B + (size_t)(n0 + r) * K + k0 + c8);
			*(uint4 *)(sa + r * GB_LDS + c8) = va;
			*(uint4 *)(sb + r * GB_LDS + c8) = vb;
		}
		__syncthreads();
		for (int kk = 0; kk < GB_K; kk += 16) {
			wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
			wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb[2];
			for (int x = 0; x < 2; x++)
				wmma::load_matrix_sync(fa[x], sa + (wm * 32 + 16 * x) * GB_LDS + kk, GB_LDS);
			for (int y = 0; y < 2; y++)
				wmma::load_matrix_sync(fb[y], sb + (wn * 32 + 16 * y) * GB_LDS + kk, GB_LDS);
			for (int x = 0; x < 2; x++)
				for (int y = 0; y < 2; y++)
					wmma::mma_sync(acc[x][y], fa[x], fb[y], acc[x][y]);
		}
		__syncthreads();
	}
	for (int x = 0; x < 2; x++)
		for (int y = 0; y < 2; y++)
			wmma::store_matrix_sync(sc + (wm * 32 + 16 * x) * GB_LDC + wn * 32 + 16 * y, acc[x][y],
			                        GB_LDC, wmma::mem_row_major);
	__syncthreads();
	for (int t = tid; t < GB_M * GB_N; t += 128) {
		int r = t / GB_N, cc = t % GB_N;
		uint32_t m = m0 + (uint32_t)r, n = n0 + (uint32_t)cc;
		if (m >= M || n >= N)
			continue;
		float v = sc[r * GB_LDC + cc];
		size_t at = (size_t)m * o.ldy + n;
		switch (o.epi) {
		case CK_EPI_STORE: o.y[at] = o.bias ? v + o.bias[n] : v; break;
		case CK_EPI_ADD: o.y[at] += v; break;
		case CK_EPI_KV: {
			uint32_t slot = (uint32_t)o.step[CK_STEP_SLOT(m)];
			o.kv[(size_t)slot * o.ldy + n] = __float2half_rn(o.bias ? v + o.bias[n] : v);
			break;
		}
		case CK_EPI_SWIGLU: {
			float gt = o.gate[at];
			o.yh[at] = __float2half_rn(gt / (1.0f + expf(-gt)) * v);
			break;
		}
		}
	}
}

static __global__ void k_row_stats(const float *logits, uint32_t n_vocab, const int32_t *targets,
                                   float *sur, float *ent)
{
	__shared__ double shd[32];
	__shared__ float shf[32];
	size_t row = blockIdx.x;
	const float *l = logits + row * n_vocab;
	float mx = -INFINITY;
	for (uint32_t i = threadIdx.x; i < n_vocab; i += blockDim.x)
		mx = fmaxf(mx, l[i]);
	mx = ck_block_max(mx, shf);
	double z = 0.0, zl = 0.0;
	for (uint32_t i = threadIdx.x; i < n_vocab; i += blockDim.x) {
		double d = (double)l[i] - mx, p = exp(d);
		z += p;
		zl += p * d;
	}
	z = ck_block_sum_d(z, shd);
	zl = ck_block_sum_d(zl, shd);
	if (threadIdx.x == 0) {
		double lz = log(z);
		int32_t t = targets[row];
		ent[row] = (float)(lz - zl / z);
		sur[row] = t >= 0 && (uint32_t)t < n_vocab ? (float)(lz - ((double)l[t] - mx)) : NAN;
	}
}

static __global__ void k_kv_move(int mode, __half *kc, __half *vc, uint64_t layer_elems,
                                 uint32_t row_elems, uint32_t l0, const uint32_t *dst,
                                 const uint32_t *src, uint32_t n, __half *tmp)
{
	uint32_t upr = row_elems / 8;
	size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
	if (idx >= (size_t)n * upr)
		return;
	uint32_t k = (uint32_t)(idx / upr), u = (uint32_t)(idx % upr);
	size_t lo = (size_t)(l0 + blockIdx.y) * layer_elems;
	uint4 *kd = (uint4 *)(kc + lo), *vd = (uint4 *)(vc + lo), *td = (uint4 *)tmp;
	size_t ts = (size_t)n * upr; /* tmp: keys, then values */
	switch (mode) {
	case CK_MOVE_DIRECT:
		kd[(size_t)dst[k] * upr + u] = kd[(size_t)src[k] * upr + u];
		vd[(size_t)dst[k] * upr + u] = vd[(size_t)src[k] * upr + u];
		break;
	case CK_MOVE_GATHER:
		td[(size_t)k * upr + u] = kd[(size_t)src[k] * upr + u];
		td[ts + (size_t)k * upr + u] = vd[(size_t)src[k] * upr + u];
		break;
	default:
		kd[(size_t)dst[k] * upr + u] = td[(size_t)k * upr + u];
		vd[(size_t)dst[k] * upr + u] = td[ts + (size_t)k * upr + u];
		break;
	}
}

/* ----------------------------------------------------------- launchers */

static unsigned ck_blocks(uint64_t n, unsigned per)
{
	return (unsigned)((n + per - 1) / per);
}

void ck_embed(cudaStream_t st, const ck_mat *w, const int32_t *step, uint32_t n_tok, float *x)
{
	k_embed<<<n_tok, 128, 0, st>>>(*w, step, x);
}

void ck_rmsnorm(cudaStream_t st, const float *x, const float *w, uint32_t n_rows, uint32_t n,
                float eps, float *xb, __half *xh, ck_q8out q8)
{
	k_rmsnorm<<<n_rows, 256, 0, st>>>(x, w, n, eps, xb, xh, q8);
}

void ck_mv(cudaStream_t st, const ck_mat *w, const ck_act *a, float *y, const float *bias, bool acc)
{
	k_mv<<<ck_blocks(w->rows, MV_WARPS), MV_WARPS * 32, 0, st>>>(*w, *a, y, bias, acc ? 1 : 0);
}

void ck_mv_add_norm(cudaStream_t st, const ck_mat *w, const ck_act *a, float *y, const float *nw,
                    float eps, float *xb, ck_q8out q8, unsigned *counter)
{
	k_mv_add_norm<<<ck_blocks(w->rows, MV_WARPS), MV_WARPS * 32, 0, st>>>(*w, *a, y, nw, eps, xb,
	                                                                      q8, counter);
}

void ck_mv_qkv(cudaStream_t st, const ck_mat *wq, const ck_mat *wk, const ck_mat *wv,
               const float *bq, const float *bk, const float *bv, const ck_act *a, float *q,
               __half *kc, __half *vc, const int32_t *step)
{
	uint64_t rows = (uint64_t)wq->rows + wk->rows + wv->rows;
	k_mv_qkv<<<ck_blocks(rows, MV_WARPS), MV_WARPS * 32, 0, st>>>(*wq, *wk, *wv, bq, bk, bv, *a, q,
	                                                              kc, vc, step);
}

void ck_mv_swiglu(cudaStream_t st, const ck_mat *gate, const ck_mat *up, const ck_act *a, float *g,
                  ck_q8out q8)
{
	k_mv_swiglu<<<gate->rows / 32, 256, 0, st>>>(*gate, *up, *a, g, q8);
}

void ck_angles(cudaStream_t st, const uint32_t *vis, const int32_t *vpos, const int32_t *step,
               uint32_t n_ctx, float *slot_cs, int32_t *cs_pos, int n_rot, float theta_scale,
               float freq_scale)
{
	k_angles<<<ck_blocks(n_ctx, 128), 128, 0, st>>>(vis, vpos, step, slot_cs, cs_pos, n_rot,
	                                                theta_scale, freq_scale);
}

void ck_attention(cudaStream_t st, const ck_attn_args *a, uint32_t n_q, uint32_t splits,
                  const ck_attn_fuse *f)
{
	dim3 grid((unsigned)a->n_kv, splits, n_q);
	int grp = a->n_head / a->n_kv;
	ck_attn_fuse F{};
	if (f != NULL && n_q == 1)
		F = *f;
	if (grp <= 4)
		k_attn<4><<<grid, ATT_T, 0, st>>>(*a, (int)splits, F);
	else if (grp <= 8)
		k_attn<8><<<grid, ATT_T, 0, st>>>(*a, (int)splits, F);
	else
		k_attn<16><<<grid, ATT_T, 0, st>>>(*a, (int)splits, F);
}

void ck_combine(cudaStream_t st, const float *part, uint32_t n_q, int n_head, int hd,
                uint32_t splits, float *ao, __half *aoh, ck_q8out q8, float *ml, int raw_q,
                float *mlq)
{
	dim3 grid(n_q, (unsigned)n_head);
	k_combine<<<grid, (unsigned)hd, 0, st>>>(part, n_head, hd, (int)splits, ao, aoh, q8, ml, raw_q,
	                                         mlq);
}

void ck_attn_acc(cudaStream_t st, const ck_attn_args *a, uint32_t n_q, uint32_t n_tiles,
                 const float *mlq, float *akv)
{
	if (n_tiles == 0)
		return;
	dim3 grid((unsigned)a->n_kv, n_tiles, n_q);
	int grp = a->n_head / a->n_kv;
	if (grp <= 4)
		k_attn_acc<4><<<grid, ATT_T, 0, st>>>(*a, mlq, akv);
	else if (grp <= 8)
		k_attn_acc<8><<<grid, ATT_T, 0, st>>>(*a, mlq, akv);
	else
		k_attn_acc<16><<<grid, ATT_T, 0, st>>>(*a, mlq, akv);
}

void ck_attn_norm(cudaStream_t st, float *raw, const float *ml, uint32_t rows, uint32_t n_ctx,
                  const int32_t *step)
{
	dim3 grid(ck_blocks(n_ctx, 256), rows);
	k_attn_norm<<<grid, 256, 0, st>>>(raw, ml, n_ctx, step);
}

void ck_dequant_f16(cudaStream_t st, const ck_mat *w, __half *out)
{
	uint64_t units = (uint64_t)w->rows * (w->cols / 8);
	unsigned blocks = ck_blocks(units, 256);
	unsigned grid = blocks < 65536u ? blocks : 65536u;
	k_dequant_f16<<<grid, 256, 0, st>>>(*w, out);
}

void ck_gemm(cudaStream_t st, const __half *A, uint32_t M, uint32_t K, const __half *B, uint32_t N,
             const ck_gemm_out *o)
{
	dim3 grid(ck_blocks(N, GB_N), ck_blocks(M, GB_M));
	k_gemm<<<grid, 128, 0, st>>>(A, M, K, B, N, *o);
}

void ck_row_stats(cudaStream_t st, const float *logits, uint32_t n_rows, uint32_t n_vocab,
                  const int32_t *targets, float *sur, float *ent)
{
	k_row_stats<<<n_rows, 256, 0, st>>>(logits, n_vocab, targets, sur, ent);
}

void ck_kv_move(cudaStream_t st, ck_move mode, __half *kc, __half *vc, uint64_t layer_elems,
                uint32_t row_elems, uint32_t l0, uint32_t l1, const uint32_t *dst,
                const uint32_t *src, uint32_t n, __half *tmp)
{
	if (n == 0 || l1 <= l0)
		return;
	dim3 grid(ck_blocks((uint64_t)n * (row_elems / 8), 256), l1 - l0);
	k_kv_move<<<grid, 256, 0, st>>>((int)mode, kc, vc, layer_elems, row_elems, l0, dst, src, n,
	                                tmp);
}
