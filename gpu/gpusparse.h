/*
 * gpusparse.h: the CUDA backend's sparse decode (Quest, HiP) decisions, in
 * plain C that the kernels share.
 *
 * The CPU backend decides a sparse step in src/engine/sparse.c and
 * cpu-sparse.c; the CUDA backend must decide the same step the same way,
 * on the device. Everything here is either host logic the backend runs
 * before it launches (which pages' bounds to recompute, the keys' order by
 * position, the candidate pages, HiP's refresh) or a GSP_HD helper that
 * the kernels (gpu/cuda_skern.cu) and the host both compile: the ordered
 * key of a float, the top-k rule with its tie-break, Quest's bound, the
 * budget cut, HiP's ranges and halves. tests/unit/test-gpu-sparse.c runs
 * the host versions against the CPU's own functions on hand-made and
 * random inputs, so the device's choices are proven equal to the CPU's up
 * to the float rounding of the scores themselves.
 *
 * Invariants of the page tracker (struct gsp_pages), the CPU's
 * sparse_pages (sparse.h) without the bounds themselves: a slot is folded
 * (sum_pos >= 0) exactly when its rotated key was current at the last scan
 * (rot_pos == its position >= 0, not a slot the batch writes); a page is
 * listed for a rebuild when its folded set changed since the last scan or
 * one of its slots' keys was rewritten. The device recomputes a listed
 * page from its folded slots (min and max per channel of the keys rotated
 * to sum_pos), so after the rebuild every page's bounds are those of the
 * CPU's sparse_pages over the same slots.
 */
#ifndef KVS_GPUSPARSE_H
#define KVS_GPUSPARSE_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifdef __CUDACC__
#define GSP_HD static __host__ __device__ __forceinline__
#else
#define GSP_HD static inline
#endif

/* ---- helpers shared by the kernels and the host ---- */

/* An order-preserving key of a float: a > b (floats, no NaN) exactly when
 * gsp_fkey(a) > gsp_fkey(b); -INFINITY maps to GSP_KEY_NINF. */
GSP_HD uint32_t gsp_fkey(float f)
{
	uint32_t u;
#ifdef __CUDA_ARCH__
	u = __float_as_uint(f);
#else
	memcpy(&u, &f, sizeof u);
#endif
	if (u == 0x80000000u)
		u = 0; /* -0 == 0 as floats: one key */
	return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
#define GSP_KEY_NINF 0x007fffffu

/* Units (pages, blocks) of `unit` keys that the budget leaves after the
 * `always` keys (sinks and the recent window), rounded up; 0 when none. */
GSP_HD uint32_t gsp_units(uint32_t budget, uint32_t always, uint32_t unit)
{
	return budget > always ? (budget - always + unit - 1) / unit : 0;
}

/* One step of the top-k threshold search: with T the bits decided so far
 * and n_ge the number of candidates whose key is >= T | bit, the next T. */
GSP_HD uint32_t gsp_top_step(uint32_t T, uint32_t bit, uint32_t n_ge, uint32_t k)
{
	return n_ge >= k ? (T | bit) : T;
}

/* Quest's bound of one query head q (hd) over a page's bounds mn, mx (hd):
 * sum over channels of max(q_d * mx_d, q_d * mn_d), in channel order. */
GSP_HD float gsp_bound1(const float *q, const float *mn, const float *mx, uint32_t hd)
{
	float sum = 0;
	for (uint32_t d = 0; d < hd; d++) {
		float a = q[d] * mx[d], b = q[d] * mn[d];
		sum += a > b ? a : b;
	}
	return sum;
}

/* HiP's range i of k over n_blocks blocks: [floor(i n / k), floor((i+1) n / k)). */
GSP_HD void gsp_hip_range(uint32_t i, uint32_t n_blocks, uint32_t k, uint32_t *start,
                          uint32_t *size)
{
	*start = (uint32_t)((uint64_t)i * n_blocks / k);
	*size = (uint32_t)((uint64_t)(i + 1) * n_blocks / k) - *start;
}

/* The ranges a search starts from: k blocks' worth, or a wider beam (at
 * most n_blocks / 2, so that each range holds two blocks and the last
 * round still chooses k of them), as the CPU's sparse_hip_tree_beam. */
GSP_HD uint32_t gsp_hip_width(uint32_t n_blocks, uint32_t k, uint32_t beam)
{
	uint32_t w = beam < n_blocks / 2 ? beam : n_blocks / 2;
	return w > k ? w : k;
}

/* The halves of a range (start, size): half 0 [start, start + size/2), half 1 the rest. */
GSP_HD void gsp_hip_half(uint32_t start, uint32_t size, uint32_t which, uint32_t *hs, uint32_t *hn)
{
	uint32_t half = size / 2;
	*hs = which ? start + half : start;
	*hn = which ? size - half : half;
}

/* HiP's rule for a round: while a range still holds more than two blocks
 * (big: the largest range before halving), some half holds several blocks
 * and every half is ranked by its blocks' page bounds; the last round
 * (every half one block) ranks by the blocks' true max logits. As the
 * CPU's cpu_hip_score, which looks for a half of several blocks. */
GSP_HD bool gsp_hip_by_bounds(uint32_t big)
{
	return big > 2;
}

/* The largest of bub (n_blocks) over the half's blocks [hs, hs + hn). */
GSP_HD float gsp_hip_half_ub(const float *bub, uint32_t hs, uint32_t hn)
{
	float best = -INFINITY;
	for (uint32_t b = hs; b < hs + hn; b++)
		best = bub[b] > best ? bub[b] : best;
	return best;
}

/* Block b's page bound: the largest ub (by page, n_pages) over the pages
 * of its keys, the candidates vis[ord[k]] for k in [k0 + b bk, min(k0 +
 * (b + 1) bk, k1)) (page: the page size, slots). */
GSP_HD float gsp_hip_block_ub(const float *ub, const uint32_t *vis, const uint32_t *ord,
                              uint32_t k0, uint32_t k1, uint32_t page, uint32_t bk, uint32_t b)
{
	float best = -INFINITY;
	uint32_t a = k0 + b * bk, e = a + bk < k1 ? a + bk : k1;
	for (uint32_t k = a; k < e; k++) {
		float u = ub[vis[ord[k]] / page];
		best = u > best ? u : best;
	}
	return best;
}

/* ---- host: the top-k rule ---- */

/*
 * Mark in sel (n) the k entries of ub (n) with the highest values, ties to
 * the lower index, -INFINITY never chosen; returns how many. The device's
 * way: the k-th largest key T found bit by bit (gsp_top_step) by counting
 * candidates, then every key above T and the first of those equal to T.
 * Equals sparse_top (src/engine/sparse.c) on every input without NaN.
 */
uint32_t gsp_top(const float *ub, uint32_t n, uint32_t k, uint8_t *sel);

/* ---- host: the page tracker ---- */

struct gsp_pages {
	uint32_t page;    /* slots per page (0: none yet) */
	uint32_t n_pages; /* ceil(n_ctx / page) */
	uint32_t n_ctx;
	int32_t *sum_pos; /* (n_ctx) position the slot was folded at, or -1 */
	uint32_t *page_n; /* (n_pages) folded slots per page */
	uint8_t *dirty;   /* (n_pages) a folded key was rewritten: recompute */
	uint32_t *list;   /* (n_pages) the pages the last scan listed for a rebuild */
	uint32_t n_list;
	uint32_t lo, hi; /* the range of sum_pos changed since gsp_pages_sent (lo >= hi: none) */
};

/* (Re)size for this page size when it differs or nothing is there yet
 * (every page dirty then, nothing folded); true when it did. */
bool gsp_pages_ensure(struct gsp_pages *sp, uint32_t page, uint32_t n_ctx);
void gsp_pages_free(struct gsp_pages *sp);
/* The device has sum_pos now: the changed range is empty. */
void gsp_pages_sent(struct gsp_pages *sp);
/* Slot s's key is about to change (a write, a copy onto it, a load). */
void gsp_pages_forget(struct gsp_pages *sp, uint32_t s);
/* Fold what became current, list every page whose folded set changed or
 * that is dirty. A slot is current when slot_pos[s] >= 0, rot_pos[s] ==
 * slot_pos[s] and s is not among skip (n_skip: the batch's own slots). */
void gsp_pages_scan(struct gsp_pages *sp, const int32_t *slot_pos, const int32_t *rot_pos,
                    const uint32_t *skip, uint32_t n_skip);

/* ---- host: one sparse decode step's plan ---- */

/* Sort the visible entries by position (stable, empty ones last), as the
 * CPU's cpu_sort_visible: ord (n_vis) indices into the visible list; vpos
 * (n_vis) the entries' positions. Returns the entries at positions 0..qpos
 * (the keys the decode query sees: a prefix of ord). */
uint32_t gsp_order(const int32_t *vpos, uint32_t n_vis, int32_t qpos, uint32_t *ord);

/* Under LM-Infinite's cap, the leading ord entries (of m) that the
 * attention scores rotated to qpos - dist_cap: global (visible index below
 * n_global) and at a position below qpos - dist_cap. The bounds rank keys
 * rotated at their own positions, so the step attends these as sinks (the
 * CPU's cpu_capped_globals). 0 when dist_cap is 0. */
uint32_t gsp_capped_globals(const int32_t *vpos, const uint32_t *ord, uint32_t m, int32_t qpos,
                            uint32_t n_global, int32_t dist_cap);

/* What a decode step's kernels read besides the lists (the CPU's sp_m,
 * sp_sinks, sp_recent and the units of the budget). */
struct gsp_step {
	uint32_t m;       /* keys the query sees (sorted prefix) */
	uint32_t sinks;   /* [0, sinks) always */
	uint32_t recent;  /* [m - recent, m) always */
	uint32_t k_units; /* pages (quest) or blocks (hip) the budget buys */
	uint32_t n_units; /* candidate pages (quest: listed) or blocks (hip) */
};

/* The step's sinks, window and units from the spec's fields (unit: page
 * or block size); as cpu_sparse_prepare and cpu_quest_choose / cpu_hip_choose. */
void gsp_step_make(struct gsp_step *st, uint32_t m, uint32_t sinks, uint32_t recent,
                   uint32_t budget, uint32_t unit, bool hip);

/* Quest's candidate pages: the pages of the slots vis[ord[k]] for k in
 * [sinks, m - recent), each once, in page order, into plist; cand
 * (n_pages) is scratch. Returns how many. */
uint32_t gsp_quest_pages(const struct gsp_step *st, const uint32_t *vis, const uint32_t *ord,
                         uint32_t page, uint32_t n_pages, uint8_t *cand, uint32_t *plist);

/* ---- host: HiP's refresh ---- */

/* The fields of engine_sparse that a kept HiP choice depends on. */
struct gsp_hip_spec {
	uint32_t budget, block, sinks, recent, dense_layers, refresh;
	uint32_t page; /* the bounds that rank the halves */
	uint32_t beam; /* ranges kept per round but the last, in units of the final count */
};

struct gsp_hip {
	uint32_t n_ctx;
	int32_t *seen_pos; /* (n_ctx) position scored at the last refresh, -1: not */
	bool valid;
	struct gsp_hip_spec spec;
	uint32_t age;
	int32_t last_pos;
	bool refresh;    /* this step searches */
	uint32_t lo, hi; /* the range of seen_pos this step changed (lo == hi: none) */
};

void gsp_hip_free(struct gsp_hip *h);
/* Decide whether this step (query at qpos) searches anew, as the CPU's
 * cpu_hip_prepare: the first step, a changed spec, every refresh-th step,
 * a step back in position, or more candidates unscored than max(budget/4,
 * refresh); on a refresh, note the candidates' positions in seen_pos.
 * cand_slot / cand_pos (n_cand): the candidates (sorted keys [sinks, m -
 * recent)) and their positions. */
void gsp_hip_prepare(struct gsp_hip *h, uint32_t n_ctx, const struct gsp_hip_spec *spec,
                     int32_t qpos, const uint32_t *cand_slot, const int32_t *cand_pos,
                     uint32_t n_cand);

/*
 * HiP's hierarchical top-k as the device runs it, on the host: w =
 * gsp_hip_width(n_blocks, k_blocks, beam) ranges (gsp_hip_range), halved
 * each round (gsp_hip_half), the w best halves kept in every round but the
 * last, which keeps k_blocks (gsp_top over the 2 w halves, an empty one at
 * -INFINITY; beam <= k_blocks: HiP's own search, w = k_blocks). A round with a range of more than two blocks
 * (gsp_hip_by_bounds) ranks a half by its largest block bound bub
 * (n_blocks, gsp_hip_half_ub); the others (every round when bub is NULL)
 * by its first block, scored through fn. chosen (n_blocks); scratch:
 * gsp_hip_scratch(w) bytes. Returns the rounds. Equals
 * sparse_hip_tree_beam with the CPU decode's callback (bub given) or
 * sparse_hip_tree with a first-block callback (bub NULL, beam k_blocks:
 * HiP's prefill).
 */
typedef void (*gsp_score_fn)(void *ctx, const uint32_t *blocks, uint32_t n, float *score);
size_t gsp_hip_scratch(uint32_t w);
uint32_t gsp_hip_tree(uint32_t n_blocks, uint32_t k_blocks, uint32_t beam, const float *bub,
                      gsp_score_fn fn, void *ctx, uint8_t *chosen, void *scratch);
/* Every block's bound (gsp_hip_block_ub) into bub (n_blocks). */
void gsp_hip_block_ubs(const float *ub, const uint32_t *vis, const uint32_t *ord, uint32_t k0,
                       uint32_t k1, uint32_t page, uint32_t bk, float *bub);

#ifdef __cplusplus
}
#endif

#endif
