/*
 * test-gpu-sparse.c: the CUDA backend's sparse decisions (gpu/gpusparse.h)
 * against the CPU's own (src/engine/sparse.h), on any machine.
 *
 * The device kernels choose with the GSP_HD helpers and the rule gsp_top
 * implements (a threshold found bit by bit, ties to the lower index); the
 * CPU chooses with sparse_top (quickselect) and sparse_hip_tree. Here both
 * run on the same inputs: hand-made ones whose answers are worked out in
 * the comments, and random ones drawn from a few values so that ties are
 * common. The page tracker runs beside the CPU's sparse_pages on a random
 * history of writes, moves, evictions, copies and re-positionings; after
 * every sync the folded slots must be the same and the bounds the device
 * would recompute (min and max over the folded slots of the listed pages)
 * must equal the CPU's bounds exactly, every page.
 */
#include "engine/sparse.h"
#include "gpu/gpuplan.h"
#include "gpu/gpusparse.h"

#include "test.h"

#include <stdint.h>

static uint64_t rng = 0x243F6A8885A308D3ull;

static uint32_t rnd(uint32_t n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 11) % n;
}

/* ------------------------------------------------------------ top-k */

static void check_top(const float *ub, uint32_t n, uint32_t k, const char *what)
{
	uint8_t a[256], b[256];
	float scr[256];
	uint32_t na = gsp_top(ub, n, k, a);
	uint32_t nb = sparse_top(ub, n, k, scr, b);
	T_CHECK(na == nb && memcmp(a, b, n) == 0, "%s: n %u k %u: gsp_top chose %u, sparse_top %u",
	        what, n, k, na, nb);
}

static void test_top_hand(void)
{
	/* ties go to the lower index: of the three 2s, k = 2 takes 0 and 3 */
	const float ub[] = { 2, 1, -INFINITY, 2, 2, 0.5f };
	uint8_t sel[6];
	T_EQ_INT(gsp_top(ub, 6, 2, sel), 2);
	T_CHECK(sel[0] && !sel[1] && !sel[2] && sel[3] && !sel[4] && !sel[5], "ties to lower index");
	/* k past the candidates: every finite entry, never the -inf */
	T_EQ_INT(gsp_top(ub, 6, 10, sel), 5);
	T_CHECK(!sel[2], "-inf never chosen");
	T_EQ_INT(gsp_top(ub, 6, 0, sel), 0);
	/* negative values and zero signs order as floats: -0 == 0 ties */
	const float neg[] = { -3, -0.0f, 0.0f, -1e-30f, 7 };
	T_EQ_INT(gsp_top(neg, 5, 2, sel), 2);
	T_CHECK(sel[4] && sel[1] && !sel[2], "-0 and 0 tie: the lower index wins");
	for (uint32_t k = 0; k <= 6; k++) {
		check_top(ub, 6, k, "hand");
		check_top(neg, 5, k, "hand negative");
	}
	const float ninf[] = { -INFINITY, -INFINITY };
	check_top(ninf, 2, 1, "all -inf");
	T_EQ_INT(gsp_top(ninf, 2, 1, sel), 0);
	/* the ordered key: larger floats, larger keys */
	T_CHECK(gsp_fkey(-INFINITY) == GSP_KEY_NINF, "-inf key");
	T_CHECK(gsp_fkey(-0.0f) == gsp_fkey(0.0f), "-0 and 0: one key");
	T_CHECK(gsp_fkey(-1.0f) < gsp_fkey(-0.5f) && gsp_fkey(-0.5f) < gsp_fkey(0.0f) &&
	                gsp_fkey(0.0f) < gsp_fkey(1e-38f) && gsp_fkey(1.0f) < gsp_fkey(INFINITY),
	        "key order");
}

static void test_top_random(void)
{
	float ub[256];
	const float alpha[] = { -INFINITY, -2.5f, -1, 0, 0.25f, 1, 3, 1e6f };
	for (int it = 0; it < 3000; it++) {
		uint32_t n = 1 + rnd(200), k = rnd(n + 3);
		bool few = it % 2 == 0; /* few distinct values: many ties */
		for (uint32_t i = 0; i < n; i++)
			ub[i] = few ? alpha[rnd(8)] : (float)((int)rnd(2001) - 1000) / 7.0f;
		check_top(ub, n, k, few ? "random ties" : "random");
	}
}

/* ------------------------------------------------------------ Quest's arithmetic */

static void test_bound(void)
{
	/* q = (1, -2), mn = (-1, 0), mx = (3, 4): max(3, -1) + max(-8, 0) = 3 */
	const float q[] = { 1, -2 }, mm[] = { -1, 0, 3, 4 };
	T_NEAR(gsp_bound1(q, mm, mm + 2, 2), 3.0, 0);
	T_NEAR(sparse_bound(q, 1, 2, mm), 3.0, 0);
	/* random: equal to the CPU's bound bit for bit, head by head */
	float qq[4 * 64], b[2 * 64];
	for (int it = 0; it < 500; it++) {
		uint32_t hd = 32 + 32 * rnd(2), nq = 1 + rnd(4);
		for (uint32_t i = 0; i < nq * hd; i++)
			qq[i] = (float)((int)rnd(201) - 100) / 37.0f;
		for (uint32_t d = 0; d < hd; d++) {
			float x = (float)((int)rnd(201) - 100) / 11.0f,
			      y = (float)((int)rnd(201) - 100) / 11.0f;
			b[d] = x < y ? x : y;
			b[hd + d] = x < y ? y : x;
		}
		float best = -INFINITY;
		for (uint32_t r = 0; r < nq; r++) {
			float v = gsp_bound1(qq + r * hd, b, b + hd, hd);
			best = v > best ? v : best;
		}
		float cpu = sparse_bound(qq, nq, hd, b);
		T_CHECK(best == cpu, "bound %.9g, CPU %.9g", best, cpu);
	}
	/* the budget's units: 1024 - (4 + 64) = 956 keys, 60 pages of 16 */
	T_EQ_INT(gsp_units(1024, 68, 16), 60);
	T_EQ_INT(gsp_units(68, 68, 16), 0);
	T_EQ_INT(gsp_units(69, 68, 8), 1);
}

/* ------------------------------------------------------------ a step's plan */

static void test_order_and_pages(void)
{
	/* positions 5, -1, 2, 9, 2 ordered: 2 (entry 2), 2 (entry 4), 5, 9, then
	 * the empty entry 1; a query at 5 sees the first three */
	const int32_t vpos[] = { 5, -1, 2, 9, 2 };
	uint32_t ord[5];
	T_EQ_INT(gsp_order(vpos, 5, 5, ord), 3);
	T_CHECK(ord[0] == 2 && ord[1] == 4 && ord[2] == 0 && ord[3] == 3 && ord[4] == 1,
	        "order %u %u %u %u %u", ord[0], ord[1], ord[2], ord[3], ord[4]);
	const int32_t sorted[] = { 0, 1, 2, 3 };
	T_EQ_INT(gsp_order(sorted, 4, 100, ord), 4);
	T_EQ_INT(gsp_order(sorted, 4, -1, ord), 0);

	/* the capped global keys lead the order (sorted: entries 2, 4, 0, 3 at
	 * 2, 2, 5, 9): a query at 9 with a cap of 3 caps positions below 6,
	 * one at 7 those below 4; entry 4 not global (n_global 3) ends the
	 * run; no cap, none */
	T_EQ_INT(gsp_order(vpos, 5, 9, ord), 4);
	T_EQ_INT(gsp_capped_globals(vpos, ord, 4, 9, 5, 3), 3);
	T_EQ_INT(gsp_capped_globals(vpos, ord, 4, 7, 5, 3), 2);
	T_EQ_INT(gsp_capped_globals(vpos, ord, 4, 9, 3, 3), 1);
	T_EQ_INT(gsp_capped_globals(vpos, ord, 4, 9, 5, 0), 0);

	/* 40 keys, sinks 4, recent 8: candidates sorted keys [4, 32) */
	struct gsp_step st;
	gsp_step_make(&st, 40, 4, 8, 64, 16, false);
	T_EQ_INT(st.sinks, 4);
	T_EQ_INT(st.recent, 8);
	T_EQ_INT(st.k_units, 4); /* (64 - 12) / 16 rounded up */
	/* recent at least 1 (the query's own key), no more than what is left */
	gsp_step_make(&st, 3, 4, 0, 64, 8, true);
	T_EQ_INT(st.sinks, 3);
	T_EQ_INT(st.recent, 0);
	gsp_step_make(&st, 10, 2, 0, 64, 4, true);
	T_EQ_INT(st.recent, 1);
	T_EQ_INT(st.n_units, 2); /* 7 candidates in blocks of 4 */

	/* visible slots 0..39 in order: candidates are slots 4..31, pages of 16:
	 * pages 0 and 1 */
	uint32_t vis[40], ord2[40], plist[4];
	int32_t pos2[40];
	uint8_t cand[4];
	for (uint32_t i = 0; i < 40; i++) {
		vis[i] = i;
		pos2[i] = (int32_t)i;
	}
	T_EQ_INT(gsp_order(pos2, 40, 39, ord2), 40);
	gsp_step_make(&st, 40, 4, 8, 64, 16, false);
	T_EQ_INT(gsp_quest_pages(&st, vis, ord2, 16, 3, cand, plist), 2);
	T_CHECK(plist[0] == 0 && plist[1] == 1, "pages %u %u", plist[0], plist[1]);
}

/* ------------------------------------------------------------ HiP */

struct tab {
	const float *score; /* (n_blocks) */
	uint64_t calls;
};

static void tab_score(void *ctx, const uint32_t *blocks, uint32_t n, float *score)
{
	struct tab *t = ctx;
	for (uint32_t i = 0; i < n; i++)
		score[i] = t->score[blocks[i]];
	t->calls++;
}

/* The same scores through sparse_hip_tree's callback: a half by its first
 * block (HiP's prefill; the device's first-block rule, bub NULL). */
static void tab_score_half(void *ctx, const uint32_t *start, const uint32_t *size, uint32_t n,
                           float *score)
{
	(void)size;
	tab_score(ctx, start, n, score);
}

/* The CPU decode's ranking, as cpu_hip_score (src/engine/cpu-sparse.c)
 * does it: while some half holds several blocks, every half by the
 * largest of its blocks' page bounds; else (every half one block) by the
 * block's true max logit. */
struct cpu_rank {
	const float *bub; /* (n_blocks) each block's largest page bound */
	const float *tm;  /* (n_blocks) each block's true max logit */
};

static void cpu_rank_score(void *ctx, const uint32_t *start, const uint32_t *size, uint32_t n,
                           float *score)
{
	const struct cpu_rank *x = ctx;
	bool ones = true;
	for (uint32_t i = 0; i < n; i++)
		ones = ones && size[i] == 1;
	for (uint32_t i = 0; i < n; i++) {
		score[i] = -INFINITY;
		if (ones) {
			score[i] = x->tm[start[i]];
			continue;
		}
		for (uint32_t b = start[i]; b < start[i] + size[i]; b++)
			score[i] = x->bub[b] > score[i] ? x->bub[b] : score[i];
	}
}

/* The CPU decode's block bounds, as cpu_hip_choose makes them: the
 * candidates k in [k0, k1) of the sorted visible slots vslot, block (k -
 * k0) / bk takes the bound of the page vslot[k] / page. */
static void cpu_block_ubs(const float *ubh, const uint32_t *vslot, uint32_t k0, uint32_t k1,
                          uint32_t page, uint32_t bk, float *bub)
{
	for (uint32_t b = 0; b < (k1 - k0 + bk - 1) / bk; b++)
		bub[b] = -INFINITY;
	for (uint32_t k = k0; k < k1; k++) {
		float u = ubh[vslot[k] / page], *d = &bub[(k - k0) / bk];
		*d = u > *d ? u : *d;
	}
}

static void test_hip_tree(void)
{
	float score[600], bub[600];
	uint8_t a[600], b[600];
	struct sparse_tree t = { 0 };
	for (int it = 0; it < 400; it++) {
		uint32_t nb = 1 + rnd(500), k = rnd(nb + 4);
		bool ties = it % 3 == 0;
		for (uint32_t i = 0; i < nb; i++) {
			score[i] = ties ? (float)rnd(4) : (float)((int)rnd(100001) - 50000) / 13.0f;
			/* a bound is at least the block's true max (ties: often equal) */
			bub[i] = score[i] + (ties ? (float)rnd(3) : (float)rnd(1000) / 7.0f);
		}
		/* the first-block rule (bub NULL) */
		struct tab ta = { score, 0 }, tb = { score, 0 };
		uint32_t beam = 1 + (uint32_t)it % 3; /* 1: HiP's own search; 2 the CPU's default */
		void *scr = xmalloc(gsp_hip_scratch(gsp_hip_width(nb, k, k * beam)) + 1);
		uint32_t ra = gsp_hip_tree(nb, k, k, NULL, tab_score, &ta, a, scr);
		uint64_t scored = 0;
		sparse_tree_ensure(&t, nb);
		uint32_t rb = sparse_hip_tree(&t, nb, k, tab_score_half, &tb, b, &scored);
		T_CHECK(ra == rb && memcmp(a, b, nb) == 0, "%u blocks, k %u: rounds %u vs %u, choice %s",
		        nb, k, ra, rb, memcmp(a, b, nb) ? "differs" : "same");
		uint32_t n_chosen = 0;
		for (uint32_t i = 0; i < nb; i++)
			n_chosen += a[i];
		T_EQ_INT(n_chosen, k < nb ? k : nb);
		/* the decode's rule: bounds while halves span blocks, true max last */
		struct tab tc = { score, 0 };
		struct cpu_rank cr = { bub, score };
		ra = gsp_hip_tree(nb, k, k * beam, bub, tab_score, &tc, a, scr);
		rb = sparse_hip_tree_beam(&t, nb, k, k * beam, cpu_rank_score, &cr, b, &scored);
		T_CHECK(ra == rb && memcmp(a, b, nb) == 0,
		        "bounds: %u blocks, k %u, beam %u: rounds %u vs %u, choice %s", nb, k, beam, ra, rb,
		        memcmp(a, b, nb) ? "differs" : "same");
		n_chosen = 0;
		for (uint32_t i = 0; i < nb; i++)
			n_chosen += a[i];
		T_EQ_INT(n_chosen, k < nb ? k : nb);
		/* the true max is asked for once at most (the last round) */
		T_CHECK(tc.calls <= 1, "bounds: %u blocks, k %u: %llu true-max rounds", nb, k,
		        (unsigned long long)tc.calls);
		free(scr);
	}
	sparse_tree_free(&t);
	/* by hand: 8 blocks, k 2; ranges [0,4) [4,8); round 1 halves start at
	 * 0, 2, 4, 6 scoring 1, 5, 2, 0: keep [2,4) and [4,6); round 2 halves
	 * 2, 3, 4, 5 scoring 5, 9, 2, 7: keep 3 and 5 */
	const float hs[8] = { 1, 0, 5, 9, 2, 7, 0, 0 };
	struct tab th = { hs, 0 };
	void *scr = xmalloc(gsp_hip_scratch(2));
	T_EQ_INT(gsp_hip_tree(8, 2, 2, NULL, tab_score, &th, a, scr), 2);
	T_CHECK(a[3] && a[5] && a[0] + a[1] + a[2] + a[4] + a[6] + a[7] == 0, "hand HiP choice");
	/* where the rules differ, by hand: true maxima tm, block bounds ub.
	 * First blocks: round 1 halves 0, 2, 4, 6 score 4, 6, 5, 2: keep [2,4)
	 * [4,6); round 2 blocks 2, 3, 4, 5 score 6, 0, 5, 0: keep 2 and 4.
	 * Bounds: round 1 (ranges of 4 blocks) ranks [0,2) by max(1, 9) = 9,
	 * [2,4) 6, [4,6) 5, [6,8) 8: keep [0,2) [6,8); round 2 (halves of one
	 * block) by true max: blocks 0, 1, 6, 7 score 4, 1, 2, 7: keep 0 and 7 */
	const float tm[8] = { 4, 1, 6, 0, 5, 0, 2, 7 }, ub[8] = { 1, 9, 6, 6, 5, 5, 3, 8 };
	struct tab t1 = { tm, 0 }, t2 = { tm, 0 };
	T_EQ_INT(gsp_hip_tree(8, 2, 2, NULL, tab_score, &t1, a, scr), 2);
	T_CHECK(a[2] && a[4] && a[0] + a[1] + a[3] + a[5] + a[6] + a[7] == 0, "first-block choice");
	T_EQ_INT(gsp_hip_tree(8, 2, 2, ub, tab_score, &t2, a, scr), 2);
	T_CHECK(a[0] && a[7] && a[1] + a[2] + a[3] + a[4] + a[5] + a[6] == 0, "page-bound choice");
	T_EQ_INT(t2.calls, 1); /* the true max in the last round only */
	struct cpu_rank cr = { ub, tm };
	uint64_t scored = 0;
	sparse_tree_ensure(&t, 8);
	sparse_hip_tree(&t, 8, 2, cpu_rank_score, &cr, b, &scored);
	T_CHECK(memcmp(a, b, 8) == 0, "page-bound choice equals the CPU's");
	/* the beam by hand: 8 blocks, k 2, beam 4 (4 ranges of 2 blocks, so
	 * one round, the last, keeps 2 of the 8 single blocks by true max):
	 * blocks 7 (7) and 2 (6), where beam 1 kept 0 and 7 above */
	struct tab t3 = { tm, 0 };
	free(scr);
	scr = xmalloc(gsp_hip_scratch(gsp_hip_width(8, 2, 8)));
	T_EQ_INT(gsp_hip_width(8, 2, 8), 4);
	T_EQ_INT(gsp_hip_tree(8, 2, 8, ub, tab_score, &t3, a, scr), 1);
	T_CHECK(a[2] && a[7] && a[0] + a[1] + a[3] + a[4] + a[5] + a[6] == 0, "beam 4 choice");
	sparse_tree_ensure(&t, 8);
	sparse_hip_tree_beam(&t, 8, 2, 8, cpu_rank_score, &cr, b, &scored);
	T_CHECK(memcmp(a, b, 8) == 0, "beam 4 choice equals the CPU's");
	sparse_tree_free(&t);
	free(scr);
}

/* Block bounds from page bounds: the device's per-block lookup against the
 * CPU's pass over the keys, on random sorted orders, pages and blocks; and
 * one by hand. */
static void test_hip_block_ubs(void)
{
	/* by hand: slots 0..11 in pages of 4 (bounds 3, 1, 2); candidates are
	 * the sorted keys 1..10 of vis (slots 11, 0, 5, 6, 2, 9, 10, 3, 7, 4,
	 * 8, 1 by ord = identity), blocks of 3: keys 1-3 slots 0 5 6 -> pages
	 * 0 1 1 -> 3; keys 4-6 slots 2 9 10 -> 0 2 2 -> 3; keys 7-9 slots 3 7
	 * 4 -> 0 1 1 -> 3; key 10 slot 8 -> page 2 -> 2 */
	const uint32_t vis[12] = { 11, 0, 5, 6, 2, 9, 10, 3, 7, 4, 8, 1 };
	uint32_t ord[600];
	for (uint32_t i = 0; i < 600; i++)
		ord[i] = i;
	const float ubp[3] = { 3, 1, 2 };
	float bub[600], want[600];
	gsp_hip_block_ubs(ubp, vis, ord, 1, 11, 4, 3, bub);
	T_CHECK(bub[0] == 3 && bub[1] == 3 && bub[2] == 3 && bub[3] == 2,
	        "hand block bounds %g %g %g %g", bub[0], bub[1], bub[2], bub[3]);
	const uint32_t vis2[6] = { 4, 5, 6, 7, 8, 9 }; /* pages 1 1 1 1 2 2 */
	gsp_hip_block_ubs(ubp, vis2, ord, 0, 6, 4, 4, bub);
	T_CHECK(bub[0] == 1 && bub[1] == 2, "hand block bounds %g %g", bub[0], bub[1]);
	for (int it = 0; it < 200; it++) {
		uint32_t n_ctx = 8 + rnd(500), page = 1 + rnd(32), bk = 1 + rnd(16);
		uint32_t np = (n_ctx + page - 1) / page, n = 1 + rnd(n_ctx);
		float ub[600];
		uint32_t vs[600], vslot[600], perm[600];
		for (uint32_t p = 0; p < np; p++)
			ub[p] = (float)rnd(50) - 25.0f;
		for (uint32_t s = 0; s < n_ctx; s++)
			perm[s] = s;
		for (uint32_t s = n_ctx - 1; s > 0; s--) {
			uint32_t j = rnd(s + 1), tmp = perm[s];
			perm[s] = perm[j];
			perm[j] = tmp;
		}
		/* a visible list in random order and its order by position */
		for (uint32_t i = 0; i < n; i++) {
			vs[i] = perm[i];
			ord[i] = n - 1 - i; /* sorted = the list reversed */
		}
		for (uint32_t k = 0; k < n; k++)
			vslot[k] = vs[ord[k]];
		uint32_t k0 = rnd(n), k1 = k0 + rnd(n - k0 + 1);
		if (k1 == k0)
			continue;
		gsp_hip_block_ubs(ub, vs, ord, k0, k1, page, bk, bub);
		cpu_block_ubs(ub, vslot, k0, k1, page, bk, want);
		T_CHECK(memcmp(bub, want, (k1 - k0 + bk - 1) / bk * sizeof(float)) == 0,
		        "block bounds: %u keys [%u, %u), page %u, block %u", n, k0, k1, page, bk);
	}
	for (uint32_t i = 0; i < 600; i++)
		ord[i] = i;
}

static void test_hip_refresh(void)
{
	struct gsp_hip h = { 0 };
	struct gsp_hip_spec sp = { 64, 8, 4, 8, 2, 4, 16, 2 };
	uint32_t slots[3] = { 10, 11, 12 };
	int32_t pos[3] = { 10, 11, 12 };
	/* the first step searches and notes the candidates */
	gsp_hip_prepare(&h, 32, &sp, 20, slots, pos, 3);
	T_CHECK(h.refresh && h.seen_pos[11] == 11 && h.seen_pos[0] == -1, "first step refreshes");
	/* then refresh - 1 = 3 reuse steps, the 4th searches */
	for (int i = 1; i <= 3; i++) {
		gsp_hip_prepare(&h, 32, &sp, 20 + i, slots, pos, 3);
		T_CHECK(!h.refresh, "step %d reuses", i);
	}
	gsp_hip_prepare(&h, 32, &sp, 24, slots, pos, 3);
	T_CHECK(h.refresh, "the refresh-th step searches");
	/* a step back in position searches */
	gsp_hip_prepare(&h, 32, &sp, 24, slots, pos, 3);
	T_CHECK(h.refresh, "a step back searches");
	/* a changed spec searches */
	gsp_hip_prepare(&h, 32, &sp, 25, slots, pos, 3);
	T_CHECK(!h.refresh, "reuse");
	sp.budget = 128;
	gsp_hip_prepare(&h, 32, &sp, 26, slots, pos, 3);
	T_CHECK(h.refresh, "a changed budget searches");
	/* more unseen candidates than max(budget / 4, refresh) = 32 searches
	 * (after the resize, the first 3 are seen) */
	uint32_t many[40];
	int32_t mp[40];
	for (uint32_t i = 0; i < 40; i++) {
		many[i] = i;
		mp[i] = (int32_t)(100 + i);
	}
	gsp_hip_prepare(&h, 64, &sp, 200, many, mp, 3); /* resized: searches */
	T_CHECK(h.refresh, "a new context searches");
	gsp_hip_prepare(&h, 64, &sp, 201, many, mp, 35);
	T_CHECK(!h.refresh, "32 unseen candidates reuse");
	gsp_hip_prepare(&h, 64, &sp, 202, many, mp, 36);
	T_CHECK(h.refresh, "33 unseen candidates search");
	gsp_hip_prepare(&h, 64, &sp, 203, many, mp, 36);
	T_CHECK(!h.refresh, "all seen: reuse");
	gsp_hip_free(&h);
}

/* ------------------------------------------------------------ page tracker */

#define PT_CTX 70
#define PT_LAYER 2
#define PT_KV 2
#define PT_HD 4
#define PT_ROW (PT_KV * PT_HD)

struct pt {
	float kr[PT_LAYER][PT_CTX * PT_ROW]; /* the CPU's rotated keys */
	uint8_t *krp[PT_LAYER];
	int32_t kr_pos[PT_CTX], slot_pos[PT_CTX];
	struct sparse_pages cpu;
	struct gsp_pages gsp;
	float dev[PT_LAYER][(PT_CTX + 1) * PT_KV * 2 * PT_HD]; /* the device's bounds */
};

/* The device's rebuild of the listed pages: min and max over the folded slots. */
static void pt_rebuild(struct pt *t)
{
	uint32_t P = t->gsp.page;
	for (uint32_t i = 0; i < t->gsp.n_list; i++) {
		uint32_t p = t->gsp.list[i];
		for (uint32_t l = 0; l < PT_LAYER; l++)
			for (uint32_t h = 0; h < PT_KV; h++) {
				float *b = t->dev[l] + ((size_t)p * PT_KV + h) * 2 * PT_HD;
				for (uint32_t d = 0; d < PT_HD; d++) {
					b[d] = INFINITY;
					b[PT_HD + d] = -INFINITY;
				}
				for (uint32_t s = p * P; s < p * P + P && s < PT_CTX; s++) {
					if (t->gsp.sum_pos[s] < 0)
						continue;
					const float *k = t->kr[l] + (size_t)s * PT_ROW + h * PT_HD;
					for (uint32_t d = 0; d < PT_HD; d++) {
						b[d] = k[d] < b[d] ? k[d] : b[d];
						b[PT_HD + d] = k[d] > b[PT_HD + d] ? k[d] : b[PT_HD + d];
					}
				}
			}
	}
}

/* New rotated keys for slot s (any content: the bounds only compare). */
static void pt_newkey(struct pt *t, uint32_t s)
{
	for (uint32_t l = 0; l < PT_LAYER; l++)
		for (uint32_t i = 0; i < PT_ROW; i++)
			t->kr[l][(size_t)s * PT_ROW + i] = (float)((int)rnd(2001) - 1000) / 8.0f;
}

/* Both sides sync, with skip the batch's slots; then compare. */
static void pt_sync(struct pt *t, const uint32_t *skip, uint32_t n_skip, int step)
{
	/* the forward's refresh: visible slots whose rotated key is stale */
	for (uint32_t s = 0; s < PT_CTX; s++) {
		bool in_skip = false;
		for (uint32_t i = 0; i < n_skip; i++)
			in_skip |= skip[i] == s;
		if (!in_skip && t->slot_pos[s] >= 0 && t->kr_pos[s] != t->slot_pos[s]) {
			pt_newkey(t, s);
			t->kr_pos[s] = t->slot_pos[s];
		}
	}
	struct sparse_keys k = { t->krp, PT_ROW, t->kr_pos, t->slot_pos, NULL, skip, n_skip };
	sparse_pages_scan(&t->cpu, &k);
	sparse_pages_rebuild(&t->cpu, &k, 0, t->cpu.n_dirty);
	gsp_pages_scan(&t->gsp, t->slot_pos, t->kr_pos, skip, n_skip);
	pt_rebuild(t);
	gsp_pages_sent(&t->gsp);
	T_CHECK(memcmp(t->cpu.sum_pos, t->gsp.sum_pos, sizeof t->slot_pos) == 0,
	        "step %d: folded slots differ", step);
	bool same = true;
	for (uint32_t p = 0; p < t->gsp.n_pages; p++) {
		same = same && t->cpu.page_n[p] == t->gsp.page_n[p];
		for (uint32_t l = 0; l < PT_LAYER; l++)
			for (uint32_t h = 0; h < PT_KV; h++) {
				const float *c = (const float *)sparse_pages_at(&t->cpu, l, p, h);
				const float *g = t->dev[l] + ((size_t)p * PT_KV + h) * 2 * PT_HD;
				if (t->cpu.page_n[p] == 0)
					continue; /* an empty page: never a candidate */
				same = same && memcmp(c, g, 2 * PT_HD * sizeof(float)) == 0;
			}
	}
	T_CHECK(same, "step %d: bounds differ from the CPU's", step);
}

static void test_pages(uint32_t page)
{
	struct pt *t = xcalloc(1, sizeof *t);
	for (uint32_t l = 0; l < PT_LAYER; l++)
		t->krp[l] = (uint8_t *)t->kr[l];
	for (uint32_t s = 0; s < PT_CTX; s++)
		t->kr_pos[s] = t->slot_pos[s] = -1;
	sparse_pages_ensure(&t->cpu, page, PT_CTX, PT_LAYER, PT_KV, PT_HD, 4);
	T_CHECK(gsp_pages_ensure(&t->gsp, page, PT_CTX), "ensure allocates");
	T_CHECK(!gsp_pages_ensure(&t->gsp, page, PT_CTX), "same page size: kept");
	int32_t next = 0;
	for (int step = 0; step < 1500; step++) {
		uint32_t op = rnd(10), s = rnd(PT_CTX), d = rnd(PT_CTX);
		uint32_t skip[1];
		uint32_t n_skip = 0;
		if (op < 5) { /* a forward writes slot s at the next position */
			sparse_pages_forget(&t->cpu, s);
			gsp_pages_forget(&t->gsp, s);
			t->slot_pos[s] = next++;
			skip[n_skip++] = s;
		} else if (op == 5) { /* eviction */
			t->slot_pos[s] = -1;
		} else if (op == 6) { /* re-positioning (compaction re-rotates) */
			if (t->slot_pos[s] >= 0)
				t->slot_pos[s] = (int32_t)rnd((uint32_t)next + 1);
		} else if (op == 7 && s != d) { /* a slot copy d <- s */
			memcpy(&t->kr[0][(size_t)d * PT_ROW], &t->kr[0][(size_t)s * PT_ROW],
			       PT_ROW * sizeof(float));
			memcpy(&t->kr[1][(size_t)d * PT_ROW], &t->kr[1][(size_t)s * PT_ROW],
			       PT_ROW * sizeof(float));
			t->kr_pos[d] = t->kr_pos[s];
			t->slot_pos[d] = t->slot_pos[s];
			sparse_pages_forget(&t->cpu, d);
			gsp_pages_forget(&t->gsp, d);
		} else if (op == 8) { /* a raw load: keys remade */
			t->kr_pos[s] = -1;
			sparse_pages_forget(&t->cpu, s);
			gsp_pages_forget(&t->gsp, s);
			if (t->slot_pos[s] < 0)
				t->slot_pos[s] = next++;
		}
		pt_sync(t, skip, n_skip, step);
		/* after the forward the written slot's rotated key is current */
		if (n_skip) {
			pt_newkey(t, skip[0]);
			t->kr_pos[skip[0]] = t->slot_pos[skip[0]];
		}
	}
	sparse_pages_free(&t->cpu);
	gsp_pages_free(&t->gsp);
	free(t);
}

/* A sparse step's graph key differs in each of its parts and keeps the dense key's. */
static void test_graph_key(void)
{
	uint64_t base = gpugraph_key(4, 0, GPUGRAPH_ATTN);
	uint64_t k[7] = {
		gpugraph_key_sparse(base, 1, true, false, 8, 2),
		gpugraph_key_sparse(base, 2, true, false, 8, 2),
		gpugraph_key_sparse(base, 1, false, false, 8, 2),
		gpugraph_key_sparse(base, 1, true, true, 8, 2),
		gpugraph_key_sparse(base, 1, true, false, 16, 2),
		gpugraph_key_sparse(base, 1, true, false, 8, 3),
		gpugraph_key_sparse(gpugraph_key(8, 0, GPUGRAPH_ATTN), 1, true, false, 8, 2),
	};
	for (int i = 0; i < 7; i++) {
		T_CHECK(k[i] != base, "key %d equals the dense key", i);
		for (int j = i + 1; j < 7; j++)
			T_CHECK(k[i] != k[j], "keys %d and %d collide", i, j);
	}
	/* the dense key's bits survive: its graph is told apart by them */
	T_EQ_INT(k[0] & 0xffff, base & 0xffff);
}

int main(void)
{
	test_graph_key();
	test_top_hand();
	test_top_random();
	test_bound();
	test_order_and_pages();
	test_hip_tree();
	test_hip_block_ubs();
	test_hip_refresh();
	test_pages(16);
	test_pages(5);
	test_pages(1);
	return t_done("test-gpu-sparse");
}
