/*
 * test-hip-rerank.c: HiP's re-rank between refreshes (engine_sparse hip,
 * rerank=Q). The pure steps on hand-made cases: which blocks a search
 * leaves as candidates (its last round's best), and which of them a
 * step's page bounds pick. Then the engine on a tiny generated model: on
 * refresh steps rerank gives rerank=0's logits and masks bit for bit (the
 * choice of rerank=0 itself, today's, is pinned by test-sparse's cadence
 * test), a budget covering the cache gives the dense logits with rerank
 * on, and with a small budget a step between refreshes attends whole
 * blocks, as many as the refresh chose, from the candidates only.
 */
#include "engine/sparse.h"
#include "model/model.h"
#include "tests/unit/test.h"
#include "tests/util/tinymodel.h"

#include <math.h>
#include <stdint.h>

#define N_CTX 256

/* ------------------------------------------------------------ the pure steps */

/* Bounds (ub) for halves of several blocks, the true value (val) when
 * every half is one block: the decode's scoring. */
struct tab2 {
	const float *ub, *val;
};

static void tab2_score(void *ctx, const uint32_t *start, const uint32_t *size, uint32_t n,
                       float *out)
{
	const struct tab2 *t = ctx;
	bool ones = true;
	for (uint32_t i = 0; i < n; i++)
		ones = ones && size[i] == 1;
	for (uint32_t i = 0; i < n; i++) {
		out[i] = -INFINITY;
		for (uint32_t b = start[i]; b < start[i] + size[i]; b++) {
			float v = ones ? t->val[b] : t->ub[b];
			out[i] = v > out[i] ? v : out[i];
		}
	}
}

/* The marked entries of sel (n) as "i j ...". */
static const char *marked(const uint8_t *sel, uint32_t n)
{
	static char out[256];
	size_t o = 0;
	out[0] = '\0';
	for (uint32_t i = 0; i < n; i++)
		if (sel[i])
			o += (size_t)snprintf(out + o, sizeof out - o, "%s%u", o ? " " : "", i);
	return out;
}

/* Search n blocks for k with beam, then mark n_cand candidates. */
static const char *candidates(const float *ub, const float *val, uint32_t n, uint32_t k,
                              uint32_t beam, uint32_t n_cand)
{
	struct sparse_tree t = { 0 };
	struct tab2 tb = { ub, val };
	uint8_t chosen[64], cand[64];
	uint64_t scored = 0;
	sparse_tree_ensure(&t, n);
	sparse_hip_tree_beam(&t, n, k, beam, tab2_score, &tb, chosen, &scored);
	uint32_t got = sparse_hip_candidates(&t, chosen, n, n_cand, cand);
	uint32_t cnt = 0;
	for (uint32_t i = 0; i < n; i++) {
		cnt += cand[i];
		T_CHECK(!chosen[i] || cand[i], "block %u chosen but not a candidate", i);
	}
	T_EQ_INT(got, cnt);
	sparse_tree_free(&t);
	return marked(cand, n);
}

static void test_candidates(void)
{
	/* test-sparse's beam case: 16 blocks, k = 2, beam 2; the last round
	 * scores blocks 2 3 4 5 8 9 12 13 by value 1 0 0 9 0 1 0 8 and chooses
	 * 5 and 13; the blocks after those, 6 and 14, are candidates always */
	float ub[16], val[16] = { 0 };
	val[5] = 9, val[13] = 8, val[2] = 1, val[9] = 1;
	for (uint32_t i = 0; i < 16; i++)
		ub[i] = val[i] + 0.5f;
	ub[2] = ub[9] = 10;
	/* two of the round's best: the chosen ones */
	T_EQ_STR(candidates(ub, val, 16, 2, 4, 2), "5 6 13 14");
	/* four: then the two 1s (blocks 2 and 9) */
	T_EQ_STR(candidates(ub, val, 16, 2, 4, 4), "2 5 6 9 13 14");
	/* three: the tie of 1 goes to the earlier half, block 2 */
	T_EQ_STR(candidates(ub, val, 16, 2, 4, 3), "2 5 6 13 14");
	/* more than the round scored: its every (non-empty) half */
	T_EQ_STR(candidates(ub, val, 16, 2, 4, 100), "2 3 4 5 6 8 9 12 13 14");
	/* fewer than chosen: the chosen ones still */
	T_EQ_STR(candidates(ub, val, 16, 2, 4, 1), "5 6 13 14");
	/* no round (k covers every block): the chosen ones, all */
	const float v6[6] = { 3, 1, 7, 2, 6, 0 };
	T_EQ_STR(candidates(v6, v6, 6, 6, 12, 12), "0 1 2 3 4 5");
	/* 3 blocks, k = 2: [0,1) [1,3), halves (empty) [0,1) [1,2) [2,3);
	 * 0 and 2 chosen, the round's best two are those: block 1 comes in
	 * after block 0, the last block has none after it */
	const float c3[3] = { 5, 1, 9 };
	T_EQ_STR(candidates(c3, c3, 3, 2, 2, 2), "0 1 2");
	const float c3b[3] = { 1, 5, 9 }; /* 1 and 2 chosen: nothing after 2 */
	T_EQ_STR(candidates(c3b, c3b, 3, 2, 2, 2), "1 2");
}

static void test_rerank_pure(void)
{
	/* three candidate blocks over four pages (bounds ub): block 0 in page
	 * 0, block 1 in pages 1 and 2, block 2 in page 3 */
	const uint32_t pg[4] = { 0, 1, 2, 3 }, first[4] = { 0, 1, 3, 4 };
	float score[3], scr[3];
	uint8_t sel[3];
	/* bounds 1, 5, 2, 3: blocks score 1, max(5, 2) = 5, 3 */
	const float ub[4] = { 1, 5, 2, 3 };
	T_EQ_INT(sparse_hip_rerank(pg, first, 3, ub, 1, score, scr, sel), 1);
	T_EQ_STR(marked(sel, 3), "1");
	T_CHECK(score[0] == 1 && score[1] == 5 && score[2] == 3, "scores %g %g %g", score[0], score[1],
	        score[2]);
	T_EQ_INT(sparse_hip_rerank(pg, first, 3, ub, 2, score, scr, sel), 2);
	T_EQ_STR(marked(sel, 3), "1 2");
	/* the block's best page decides: page 2 (block 1's second) at 6 */
	const float ub2[4] = { 4, 0, 6, 5 };
	T_EQ_INT(sparse_hip_rerank(pg, first, 3, ub2, 1, score, scr, sel), 1);
	T_EQ_STR(marked(sel, 3), "1");
	/* ties: the earlier block */
	const float ub3[4] = { 3, 0, 3, 3 };
	sparse_hip_rerank(pg, first, 3, ub3, 2, score, scr, sel);
	T_EQ_STR(marked(sel, 3), "0 1");
	/* two blocks sharing a page score alike: blocks 0 and 1 in page 1 */
	const uint32_t pg2[3] = { 1, 1, 0 }, first2[4] = { 0, 1, 2, 3 };
	sparse_hip_rerank(pg2, first2, 3, ub, 2, score, scr, sel);
	T_EQ_STR(marked(sel, 3), "0 1");
	/* k covering the candidates: all of them */
	T_EQ_INT(sparse_hip_rerank(pg, first, 3, ub, 5, score, scr, sel), 3);
	T_EQ_STR(marked(sel, 3), "0 1 2");
}

/* ------------------------------------------------------------ the engine */

/* With a refresh on every step the re-rank never runs: keeping the
 * candidates leaves the choice alone, so rerank=2 gives rerank=0's logits
 * (split path; with weights, the whole-row path and the masks) bit for bit. */
static void test_rerank_refresh_steps(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t nv = hp->n_vocab, n = 200, nl = hp->n_layer, nkv = hp->n_head_kv;
	struct engine_sparse off =
	        tinymodel_spec("hip:budget=48,block=8,dense=1,sinks=4,recent=8,refresh=1,rerank=0");
	struct engine_sparse two =
	        tinymodel_spec("hip:budget=48,block=8,dense=1,sinks=4,recent=8,refresh=1,"
	                       "rerank=2");
	T_EQ_INT(off.rerank, 0);
	T_EQ_INT(two.rerank, 2000);
	float *a = malloc(nv * sizeof(float)), *b = malloc(nv * sizeof(float));
	uint8_t *sel = malloc((size_t)nl * nkv * (n + 6));
	for (int attn = 0; attn <= 1; attn++) {
		struct engine *e0 = tinymodel_engine(m, N_CTX, 2, false);
		struct engine *e1 = tinymodel_engine(m, N_CTX, 2, false);
		struct engine_out o0, o1;
		tinymodel_prefill(e0, n);
		tinymodel_prefill(e1, n);
		uint32_t same = 0;
		for (uint32_t i = 0; i < 6; i++) {
			tinymodel_decode(e0, n + i, &off, attn, a, &o0);
			size_t ns = (size_t)nl * nkv * (n + i + 1);
			if (attn)
				memcpy(sel, o0.sel, ns);
			tinymodel_decode(e1, n + i, &two, attn, b, &o1);
			bool eq = memcmp(a, b, nv * sizeof(float)) == 0;
			T_CHECK(eq, "attn %d step %u: rerank=2's logits differ from rerank=0's", attn, i);
			T_EQ_INT(o1.sparse_chose, 1);
			T_EQ_INT(o0.keys_read, o1.keys_read);
			if (attn)
				T_CHECK(memcmp(sel, o1.sel, ns) == 0, "step %u: masks differ", i);
			same += eq;
		}
		printf("refresh=1, rerank=2 against 0, weights %d: %u of 6 steps' logits bit-identical\n",
		       attn, same);
		engine_free(e0);
		engine_free(e1);
	}
	free(a);
	free(b);
	free(sel);
}

/* A budget covering the cache with rerank on: the dense logits on the
 * refresh and the reuse steps (split path). */
static void test_rerank_full_budget(const struct model *m)
{
	uint32_t nv = m->hp.n_vocab, n = 120;
	struct engine_sparse s =
	        tinymodel_spec("hip:budget=4096,block=4,dense=0,sinks=2,recent=4,refresh=3,rerank=2");
	float *dense = malloc(nv * sizeof(float)), *sp = malloc(nv * sizeof(float));
	struct engine *eng = tinymodel_engine(m, N_CTX, 2, false);
	struct engine_out o;
	double worst = 0;
	tinymodel_prefill(eng, n);
	for (uint32_t i = 0; i < 7; i++) {
		tinymodel_decode(eng, n + i, NULL, false, dense, &o);
		tinymodel_decode(eng, n + i, &s, false, sp, &o); /* the same step again */
		worst = fmax(worst, tinymodel_max_diff(dense, sp, nv));
		T_EQ_INT(o.keys_read, o.keys_dense);
	}
	printf("rerank=2, full budget: max |logit diff| %.3g against dense over 7 steps\n", worst);
	T_CHECK(worst <= 1e-5, "max diff %g", worst);
	engine_free(eng);
	free(dense);
	free(sp);
}

/* A small budget with rerank=2: 189 candidates in 24 blocks of 8 (the
 * last of 5 keys), K = ceil(36 / 8) = 5 blocks chosen; candidates: the
 * round's best 10 and the block after each chosen one, 15 at most. On
 * every step the scored keys attended are 5 blocks' worth (37..40 keys);
 * between refreshes the union of those over the steps since the refresh
 * holds at most the 15 candidate blocks (120 keys); the re-rank moves the
 * choice somewhere (it would not, were it a no-op). */
static void test_rerank_small(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t nv = hp->n_vocab, n = 200, nkv = hp->n_head_kv, nl = hp->n_layer;
	struct engine_sparse s =
	        tinymodel_spec("hip:budget=48,block=8,dense=1,sinks=4,recent=8,refresh=4,rerank=2");
	float *lg = malloc(nv * sizeof(float));
	uint8_t *uni = calloc((size_t)nl * nkv, n + 1); /* (n_layer, n_head_kv, n + 1) */
	uint8_t *sel0 = calloc((size_t)nl * nkv, n + 1);
	struct engine *eng = tinymodel_engine(m, N_CTX, 2, false);
	struct engine_out o;
	uint32_t moved = 0;
	tinymodel_prefill(eng, n);
	for (uint32_t i = 0; i < 4; i++) {
		tinymodel_decode(eng, n + i, &s, true, lg, &o);
		T_EQ_INT(o.sparse_chose, i == 0);
		uint32_t mv = n + i + 1;
		for (uint32_t l = 1; l < nl; l++)
			for (uint32_t h = 0; h < nkv; h++) {
				const uint8_t *row = o.sel + ((size_t)l * nkv + h) * mv;
				uint8_t *u = uni + ((size_t)l * nkv + h) * (n + 1);
				uint8_t *r0 = sel0 + ((size_t)l * nkv + h) * (n + 1);
				uint32_t cnt = 0, diff = 0;
				/* the keys step 0 scored: after the sinks, before its window */
				for (uint32_t j = 4; j < n + 1 - 8; j++) {
					cnt += row[j];
					u[j] |= row[j];
					if (i == 0)
						r0[j] = row[j];
					diff += row[j] != r0[j];
				}
				T_CHECK(row[0] && row[3] && row[mv - 1] && row[mv - 8], "sinks and recent");
				for (uint32_t j = n + 1 - 8; j < mv; j++) /* unscored or recent: attended */
					T_CHECK(row[j], "step %u layer %u head %u: key %u not attended", i, l, h, j);
				T_CHECK(cnt >= 4 * 8 + 5 && cnt <= 5 * 8, "step %u layer %u head %u: %u keys", i, l,
				        h, cnt);
				moved += diff > 0;
			}
	}
	for (uint32_t l = 1; l < nl; l++)
		for (uint32_t h = 0; h < nkv; h++) {
			const uint8_t *u = uni + ((size_t)l * nkv + h) * (n + 1);
			uint32_t cnt = 0;
			for (uint32_t j = 4; j < n + 1 - 8; j++)
				cnt += u[j];
			T_CHECK(cnt <= 15 * 8, "layer %u head %u: %u keys attended since the refresh", l, h,
			        cnt);
		}
	printf("rerank=2, budget 48: the choice moved on %u of %u (step, layer, KV head)\n", moved,
	       3 * (nl - 1) * nkv);
	T_CHECK(moved > 0, "the re-rank never moved a choice: the case tests nothing");
	engine_free(eng);
	free(lg);
	free(uni);
	free(sel0);
}

int main(void)
{
	struct model *m;
	uint8_t *buf;
	test_candidates();
	test_rerank_pure();
	tinymodel_load_attn(&m, &buf);
	test_rerank_refresh_steps(m);
	test_rerank_full_budget(m);
	test_rerank_small(m);
	model_free(m);
	free(buf);
	return t_done("test-hip-rerank");
}
