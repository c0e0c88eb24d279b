/*
 * cuda_skern.cu: the sparse decode kernels (Quest, HiP) of the CUDA
 * backend (cuda_kern.h, "sparse decode").
 *
 * They make, on the device, the choices the CPU backend makes in
 * cpu-sparse.c, by the rules of gpusparse.h (tested on the host against
 * the CPU's functions):
 *   - k_sp_bounds recomputes the Quest bounds of the pages the host's
 *     tracker listed: per (layer, page, KV head) the min and max per
 *     channel of the folded slots' keys rotated to their positions, stored
 *     in F16 (rounding is monotonic, so the F16 of the min is the min of the
 *     F16 keys: the CPU's bounds over its F16 rotated keys);
 *   - k_sp_quest_score bounds each candidate page for each KV head (the max
 *     over its query heads of sum_d max(q_d mx_d, q_d mn_d), q rotated, no
 *     scale: engine_out.page_ub's units);
 *   - k_sp_hip_search runs HiP's tree search for one KV head (a block per
 *     head): halves ranked by the largest page bound over their blocks
 *     while a range holds several, by their block's true max scaled logit
 *     in the last round (the CPU's rule, sparse.c);
 *   - k_sp_pick chooses (Quest: the top pages by gsp_top's rule) and lists
 *     each KV head's keys in position order: the sinks, the chosen ones,
 *     the recent window; HiP: the search's blocks and every key it did not
 *     score. The attention kernels then read only the listed entries.
 * Everything a step varies (keys seen, sinks, window, units, candidates)
 * is read from the device's sparse step array, so the decode graph replays.
 */
#include "gpu/cuda_dq.h"
#include "gpu/cuda_kern.h"
#include "gpu/gpuplan.h"
#include "gpu/gpusparse.h"

#include <math.h>

#define SK_FULL 0xffffffffu

/* ------------------------------------------------------------ block helpers */

/* The sum of v over the block (every thread gets it); cell: one shared word. */
static __device__ uint32_t sk_sum(uint32_t v, uint32_t *cell)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(SK_FULL, v, o);
	__syncthreads();
	if (threadIdx.x == 0)
		*cell = 0;
	__syncthreads();
	if ((threadIdx.x & 31) == 0 && v)
		atomicAdd(cell, v);
	__syncthreads();
	return *cell;
}

/* The exclusive prefix sum of v over the block in thread order; *total the
 * sum. sh: 32 shared words; blockDim.x a multiple of 32. */
static __device__ uint32_t sk_scan(uint32_t v, uint32_t *sh, uint32_t *total)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
	uint32_t x = v;
	for (int o = 1; o < 32; o <<= 1) {
		uint32_t y = __shfl_up_sync(SK_FULL, x, o);
		if (lane >= o)
			x += y;
	}
	__syncthreads();
	if (lane == 31)
		sh[warp] = x;
	__syncthreads();
	if (warp == 0) {
		uint32_t w = lane < nw ? sh[lane] : 0;
		for (int o = 1; o < 32; o <<= 1) {
			uint32_t y = __shfl_up_sync(SK_FULL, w, o);
			if (lane >= o)
				w += y;
		}
		sh[lane] = w;
	}
	__syncthreads();
	*total = sh[nw - 1];
	return (warp > 0 ? sh[warp - 1] : 0) + x - v;
}

/* gsp_top over v (n) on the block: out[i] = 1 for the k best, ties to the
 * lower index, -INFINITY never. sh: 33 shared words. */
static __device__ void sk_top(const float *v, uint32_t n, uint32_t k, uint8_t *out, uint32_t *sh)
{
	uint32_t T = 0;
	for (int b = 31; k > 0 && b >= 0; b--) {
		uint32_t want = T | (1u << b), c = 0;
		for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
			uint32_t key = gsp_fkey(v[i]);
			c += key != GSP_KEY_NINF && key >= want;
		}
		T = gsp_top_step(T, 1u << b, sk_sum(c, sh + 32), k);
	}
	uint32_t c = 0;
	for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
		uint32_t key = gsp_fkey(v[i]);
		c += k > 0 && key != GSP_KEY_NINF && key > T;
	}
	uint32_t above = sk_sum(c, sh + 32), need = k > above ? k - above : 0, run = 0;
	for (uint32_t base = 0; base < n; base += blockDim.x) {
		uint32_t i = base + threadIdx.x, tot;
		uint32_t key = i < n ? gsp_fkey(v[i]) : GSP_KEY_NINF;
		bool eq = i < n && k > 0 && key == T && T != GSP_KEY_NINF;
		uint32_t before = sk_scan(eq, sh, &tot);
		if (i < n)
			out[i] = (k > 0 && key != GSP_KEY_NINF && key > T) || (eq && run + before < need);
		run += tot;
	}
	__syncthreads();
}

/* The query heads of KV head g rotated to position pos into s_q (grp, hd). */
static __device__ void sk_rot_q(const ck_sp_args &A, int g, int32_t pos, float *s_q)
{
	int grp = A.n_head / A.n_kv, hd = A.hd, half = A.n_rot / 2, np = hd / 2;
	const float *qg = A.q + (size_t)g * grp * hd;
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
	__syncthreads();
}

/* ------------------------------------------------------------ bounds */

/* Pages reb[i] (i < sst.n_rebuild, a block per page and layer blockIdx.y):
 * min and max per channel of the folded slots' keys rotated to sum_pos. */
static __global__ void k_sp_bounds(ck_sp_bounds_args B)
{
	uint32_t l = blockIdx.y, n_reb = (uint32_t)B.sst[CK_SST_NREB],
	         page = (uint32_t)B.sst[CK_SST_PAGE];
	int hd = B.hd, np = hd / 2, half = B.n_rot / 2;
	uint64_t row = (uint64_t)B.n_kv * hd;
	const __half *kc = B.kc + (uint64_t)l * B.n_ctx * row;
	for (uint32_t i = blockIdx.x; i < n_reb; i += gridDim.x) {
		uint32_t p = B.reb[i], s0 = p * page, s1 = min(s0 + page, B.n_ctx);
		__half *bp = B.bounds + ((uint64_t)l * B.n_pages + p) * B.n_kv * 2 * hd;
		for (int t = threadIdx.x; t < B.n_kv * np; t += blockDim.x) {
			int g = t / np, pp = t % np, da, db;
			ck_pair(pp, B.n_rot, B.neox, &da, &db);
			float mna = INFINITY, mnb = INFINITY, mxa = -INFINITY, mxb = -INFINITY;
			for (uint32_t s = s0; s < s1; s++) {
				int32_t pos = B.sum_pos[s];
				if (pos < 0)
					continue;
				const __half *kp = kc + s * row + (uint64_t)g * hd;
				float a = __half2float(kp[da]), b = __half2float(kp[db]);
				if (pp < half) {
					float sn, cn;
					sincosf(ck_theta(pos, pp, B.theta_scale, B.freq_scale), &sn, &cn);
					ck_rot(&a, &b, cn, sn);
				}
				mna = fminf(mna, a);
				mnb = fminf(mnb, b);
				mxa = fmaxf(mxa, a);
				mxb = fmaxf(mxb, b);
			}
			__half *bg = bp + (uint64_t)g * 2 * hd;
			bg[da] = __float2half_rn(mna);
			bg[db] = __float2half_rn(mnb);
			bg[hd + da] = __float2half_rn(mxa);
			bg[hd + db] = __float2half_rn(mxb);
		}
	}
}

/* ------------------------------------------------------------ Quest */

/* Candidate page i (< sst.n_pages) of KV head blockIdx.y: its bound, into
 * ubc by candidate (Quest) or by page (by_page: HiP's blocks look it up). */
static __global__ void k_sp_quest_score(ck_sp_args A, int by_page)
{
	extern __shared__ float s_q[]; /* (grp, hd) */
	int g = blockIdx.y, grp = A.n_head / A.n_kv, hd = A.hd;
	sk_rot_q(A, g, A.step[CK_STEP_POS(0)], s_q);
	uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= (uint32_t)A.sst[CK_SST_NPAGES])
		return;
	uint32_t p = A.plist[i];
	const __half *b = A.bounds + ((uint64_t)p * A.n_kv + g) * 2 * hd;
	float best = -INFINITY;
	for (int h = 0; h < grp; h++) {
		const float *q = s_q + h * hd;
		float sum = 0.0f;
		for (int d = 0; d < hd; d++) {
			float a = q[d] * __half2float(b[hd + d]), c = q[d] * __half2float(b[d]);
			sum += a > c ? a : c;
		}
		best = fmaxf(best, sum);
	}
	A.ubc[(uint64_t)g * A.n_pages + (by_page ? p : i)] = best;
}

/* ------------------------------------------------------------ HiP */

/* The score of block blk of the candidates (sorted keys [k0, k1)): the max
 * over its keys and the group's query heads s_q of the scaled q.k. */
static __device__ float sk_hip_block(const ck_sp_args &A, int g, uint32_t blk, uint32_t k0,
                                     uint32_t k1, uint32_t bk, const float *s_q)
{
	int grp = A.n_head / A.n_kv, hd = A.hd, half = A.n_rot / 2, np = hd / 2;
	float best = -INFINITY;
	uint32_t a = k0 + blk * bk, e = min(a + bk, k1);
	for (uint32_t k = a; k < e; k++) {
		uint32_t j = A.ord[k], s = A.vis[j];
		int32_t pos = A.vpos[j];
		const __half *kp = A.kc + ((uint64_t)s * A.n_kv + g) * hd;
		float sc[GPUPLAN_ATT_MAXG];
		for (int h = 0; h < grp; h++)
			sc[h] = 0.0f;
		for (int pp = 0; pp < np; pp++) {
			int da, db;
			ck_pair(pp, A.n_rot, A.neox, &da, &db);
			float ka = __half2float(kp[da]), kb = __half2float(kp[db]);
			if (pp < half) {
				float sn, cn;
				sincosf(ck_theta(pos, pp, A.theta_scale, A.freq_scale), &sn, &cn);
				ck_rot(&ka, &kb, cn, sn);
			}
			for (int h = 0; h < grp; h++)
				sc[h] += s_q[h * hd + da] * ka + s_q[h * hd + db] * kb;
		}
		for (int h = 0; h < grp; h++)
			best = fmaxf(best, sc[h] * A.scale);
	}
	return best;
}

/* HiP's search for KV head blockIdx.x (gsp_hip_tree's steps): every
 * block's page bound (the largest scaled Quest bound over its keys' pages,
 * from k_sp_quest_score by page), then the rounds: halves ranked by their
 * blocks' bounds while a range holds more than two blocks, by their
 * block's true max scaled logit in the last; the chosen blocks marked,
 * then kept (by slot) set for every candidate. */
static __global__ void k_sp_hip_search(ck_sp_args A)
{
	extern __shared__ float s_q[]; /* (grp, hd) */
	__shared__ uint32_t sh[33];
	int g = blockIdx.x;
	uint32_t m = (uint32_t)A.sst[CK_SST_M], k0 = (uint32_t)A.sst[CK_SST_SINKS];
	uint32_t k1 = m - (uint32_t)A.sst[CK_SST_RECENT], K = (uint32_t)A.sst[CK_SST_K];
	uint32_t nb = (uint32_t)A.sst[CK_SST_NUNITS], bk = (uint32_t)A.sst[CK_SST_UNIT];
	uint32_t page = (uint32_t)A.sst[CK_SST_PAGE];
	/* scratch of this head: start, size (K), hs, hn, score (2K), block
	 * bounds (nb), kept halves (2K bytes), chosen (nb bytes) */
	uint32_t *start = A.hscr + (uint64_t)g * A.hscr_words, *size = start + A.kcap;
	uint32_t *hs = size + A.kcap, *hn = hs + 2 * A.kcap;
	float *score = (float *)(hn + 2 * A.kcap), *bub = score + 2 * A.kcap;
	uint8_t *sel = (uint8_t *)(bub + A.kcap), *chosen = sel + 2 * A.kcap;
	const float *ub = A.ubc + (uint64_t)g * A.n_pages; /* (n_pages) by page, unscaled */
	sk_rot_q(A, g, A.step[CK_STEP_POS(0)], s_q);
	for (uint32_t b = threadIdx.x; b < nb; b += blockDim.x) {
		chosen[b] = K >= nb;
		/* the CPU scales each head's bound; the scale is positive, so the
		 * scaled max is the max of the scaled */
		bub[b] = gsp_hip_block_ub(ub, A.vis, A.ord, k0, k1, page, bk, b) * A.scale;
	}
	__syncthreads();
	if (K > 0 && K < nb) {
		uint32_t big = 0;
		for (uint32_t i = threadIdx.x; i < K; i += blockDim.x) {
			gsp_hip_range(i, nb, K, &start[i], &size[i]);
			big = max(big, size[i]);
		}
		/* big only matters as > 1 (another round) and > 2 (ranked by bounds) */
		int more = __syncthreads_or(big > 1), wide = __syncthreads_or(big > 2);
		while (more) {
			bool by_ub = gsp_hip_by_bounds(wide ? 3u : 2u);
			for (uint32_t j = threadIdx.x; j < 2 * K; j += blockDim.x) {
				gsp_hip_half(start[j / 2], size[j / 2], j % 2, &hs[j], &hn[j]);
				if (hn[j] == 0)
					score[j] = -INFINITY;
				else
					score[j] = by_ub ? gsp_hip_half_ub(bub, hs[j], hn[j])
					                 : sk_hip_block(A, g, hs[j], k0, k1, bk, s_q);
			}
			__syncthreads();
			sk_top(score, 2 * K, K, sel, sh);
			/* the kept halves, in order, become the ranges */
			uint32_t run = 0, m1 = 0, m2 = 0;
			for (uint32_t base = 0; base < 2 * K; base += blockDim.x) {
				uint32_t j = base + threadIdx.x, tot;
				bool on = j < 2 * K && sel[j];
				uint32_t at = run + sk_scan(on, sh, &tot);
				uint32_t s_ = on ? hs[j] : 0, n_ = on ? hn[j] : 0;
				__syncthreads();
				if (on) {
					start[at] = s_;
					size[at] = n_;
					m1 |= n_ > 1;
					m2 |= n_ > 2;
				}
				run += tot;
			}
			more = __syncthreads_or(m1);
			wide = __syncthreads_or(m2);
		}
		for (uint32_t i = threadIdx.x; i < K; i += blockDim.x)
			chosen[start[i]] = 1;
		__syncthreads();
	}
	for (uint32_t k = k0 + threadIdx.x; k < k1; k += blockDim.x)
		A.kept[(uint64_t)g * A.n_ctx + A.vis[A.ord[k]]] = chosen[(k - k0) / bk];
}

/* ------------------------------------------------------------ the lists */

/* KV head blockIdx.x: Quest chooses its pages (gsp_top over the candidate
 * pages' bounds) and reports them by page; then either mode lists the keys
 * it attends, sorted by position, with the sinks and the window. */
static __global__ void k_sp_pick(ck_sp_args A, int quest)
{
	__shared__ uint32_t sh[33];
	int g = blockIdx.x;
	uint32_t m = (uint32_t)A.sst[CK_SST_M], k0 = (uint32_t)A.sst[CK_SST_SINKS];
	uint32_t k1 = m - (uint32_t)A.sst[CK_SST_RECENT], unit = (uint32_t)A.sst[CK_SST_UNIT];
	uint8_t *psel = A.psel + (uint64_t)g * A.n_pages;
	if (quest) {
		uint32_t np = (uint32_t)A.sst[CK_SST_NUNITS], K = (uint32_t)A.sst[CK_SST_K];
		const float *ubc = A.ubc + (uint64_t)g * A.n_pages;
		uint8_t *csel = A.csel + (uint64_t)g * A.n_pages;
		sk_top(ubc, np, K, csel, sh);
		for (uint32_t p = threadIdx.x; p < A.n_pages; p += blockDim.x) {
			psel[p] = 0;
			if (A.ubp != NULL)
				A.ubp[(uint64_t)g * A.n_pages + p] = -INFINITY;
		}
		__syncthreads();
		for (uint32_t i = threadIdx.x; i < np; i += blockDim.x) {
			psel[A.plist[i]] = csel[i];
			if (A.ubp != NULL)
				A.ubp[(uint64_t)g * A.n_pages + A.plist[i]] = ubc[i];
		}
		__syncthreads();
	}
	if (A.sel != NULL) /* entries the query does not see stay 0 */
		for (uint32_t j = threadIdx.x; j < (uint32_t)A.step[CK_STEP_NVIS]; j += blockDim.x)
			A.sel[(uint64_t)g * A.n_ctx + j] = 0;
	__syncthreads();
	const uint8_t *kept = A.kept + (uint64_t)g * A.n_ctx;
	uint32_t *list = A.list + (uint64_t)g * A.n_ctx, run = 0;
	for (uint32_t base = 0; base < m; base += blockDim.x) {
		uint32_t k = base + threadIdx.x, tot, j = 0;
		bool on = false;
		if (k < m) {
			j = A.ord[k];
			uint32_t s = A.vis[j];
			bool mid = k >= k0 && k < k1;
			on = !mid || (quest ? psel[s / unit] != 0 : (A.seen[s] != A.vpos[j] || kept[s] != 0));
		}
		uint32_t at = run + sk_scan(on, sh, &tot);
		if (on)
			list[at] = j;
		if (k < m && A.sel != NULL)
			A.sel[(uint64_t)g * A.n_ctx + j] = on;
		run += tot;
		__syncthreads();
	}
	if (threadIdx.x == 0)
		A.list_n[g] = (int32_t)run;
}

/* ------------------------------------------------------------ launchers */

void ck_sp_bounds(cudaStream_t st, const ck_sp_bounds_args *b, uint32_t n_layer)
{
	dim3 grid(64, n_layer);
	k_sp_bounds<<<grid, 128, 0, st>>>(*b);
}

void ck_sp_quest(cudaStream_t st, const ck_sp_args *a, uint32_t max_pages)
{
	size_t shq = (size_t)a->n_head / a->n_kv * a->hd * sizeof(float);
	dim3 grid((max_pages + 127) / 128, (unsigned)a->n_kv);
	k_sp_quest_score<<<grid, 128, shq, st>>>(*a, 0);
	k_sp_pick<<<(unsigned)a->n_kv, 1024, 0, st>>>(*a, 1);
}

void ck_sp_hip(cudaStream_t st, const ck_sp_args *a, bool search, uint32_t max_pages)
{
	size_t shq = (size_t)a->n_head / a->n_kv * a->hd * sizeof(float);
	if (search) {
		dim3 grid((max_pages + 127) / 128, (unsigned)a->n_kv);
		k_sp_quest_score<<<grid, 128, shq, st>>>(*a, 1);
		k_sp_hip_search<<<(unsigned)a->n_kv, 256, shq, st>>>(*a);
	}
	k_sp_pick<<<(unsigned)a->n_kv, 1024, 0, st>>>(*a, 0);
}
