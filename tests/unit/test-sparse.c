/*
 * test-sparse.c: sparse decode attention (engine_sparse, Quest and HiP)
 * on a tiny generated model: the spec parser and its messages, the bound
 * and the top-k against hand-computed values, HiP's hierarchical search on
 * hand-made block scores (where it finds the top-k and where its
 * representatives mislead it), logits equal to dense when the budget
 * covers the cache (split and whole-row paths; for HiP on refresh and
 * reuse steps), the dense shadow and the mask a sparse step reports, HiP's
 * refresh cadence and what a reuse step attends, and the page bounds after
 * eviction, compaction and slot copies against a recomputation from the
 * keys.
 */
#include "engine/sparse.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "tests/unit/test.h"
#include "tests/util/ggufw.h"
#include "tests/util/tinymodel.h"

#include <math.h>
#include <stdint.h>

#define N_CTX 256

struct tiny {
	struct model *m;
	uint8_t *buf;
};

/* A llama model of 4 layers, head_dim 16, GQA 2. */
static void tiny_open(struct tiny *t)
{
	tinymodel_load_attn(&t->m, &t->buf);
}

/* ------------------------------------------------------------ the spec */

static void test_parse(void)
{
	struct engine_sparse s;
	struct err e;
	char buf[128];
	T_EQ_INT(engine_sparse_parse("off", &s, &e), KVS_OK);
	T_EQ_INT(s.mode, ENGINE_SPARSE_OFF);
	T_EQ_INT(engine_sparse_parse("quest", &s, &e), KVS_OK);
	T_EQ_INT(s.mode, ENGINE_SPARSE_QUEST);
	T_EQ_INT(s.budget, 1024);
	T_EQ_INT(s.page, 16);
	T_EQ_INT(s.dense_layers, 2);
	T_EQ_INT(engine_sparse_parse("quest:budget=256,page=8,dense=0", &s, &e), KVS_OK);
	T_EQ_STR(engine_sparse_format(&s, buf, sizeof buf),
	         "quest budget=256 page=8 sinks=4 recent=64 dense=0 shadow=16");
	T_EQ_INT(engine_sparse_parse("quest budget=64 recent=8", &s, &e), KVS_OK);
	T_EQ_INT(s.budget, 64);
	T_EQ_INT(s.recent, 8);
	T_EQ_INT(engine_sparse_parse("qwest", &s, &e), KVS_EARG);
	T_EQ_STR(e.msg,
	         "sparse mode 'qwest': expected off, quest[:budget=N,page=N,sinks=N,recent=N,"
	         "dense=N,shadow=N], hip[:budget=N,page=N,block=N,sinks=N,recent=N,dense=N,refresh=N,"
	         "prefill=N,tail=N,shadow=N,beam=N,rerank=Q] or "
	         "squeezed[:sinks=N,recent=N,dense=N,clusters=N,fanout=N,"
	         "quantile=Q,coarse=Q,outliers=Q,iters=N,seed=N]");
	T_EQ_INT(engine_sparse_parse("quest:budget=0", &s, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "budget=0: expected an integer in 1..") != NULL, "%s", e.msg);
	T_EQ_INT(engine_sparse_parse("quest:budget=1x", &s, &e), KVS_EARG);
	T_EQ_INT(engine_sparse_parse("quest:pages=4", &s, &e), KVS_EARG);
	T_EQ_STR(e.msg,
	         "sparse: unknown parameter 'pages' for quest: expected budget, page, sinks, "
	         "recent, dense or shadow");
	T_EQ_INT(engine_sparse_parse("quest:budget", &s, &e), KVS_EARG);
	T_EQ_INT(engine_sparse_parse("off:budget=4", &s, &e), KVS_EARG);
	/* hip: its own parameters, and only those */
	T_EQ_INT(engine_sparse_parse("hip", &s, &e), KVS_OK);
	T_EQ_INT(s.mode, ENGINE_SPARSE_HIP);
	T_EQ_STR(engine_sparse_format(&s, buf, sizeof buf),
	         "hip budget=1024 page=16 block=8 sinks=4 recent=64 dense=2 refresh=8 prefill=2048 "
	         "tail=64 shadow=16 beam=2 rerank=1.000");
	T_EQ_INT(engine_sparse_parse("hip:budget=256,block=4,refresh=1", &s, &e), KVS_OK);
	T_EQ_INT(s.budget, 256);
	T_EQ_INT(s.block, 4);
	T_EQ_INT(s.refresh, 1);
	T_EQ_INT(engine_sparse_parse("hip:page=8", &s, &e), KVS_OK);
	T_EQ_INT(s.page, 8);
	T_EQ_INT(engine_sparse_parse("hip:quantile=0.5", &s, &e), KVS_EARG);
	T_EQ_STR(e.msg,
	         "sparse: unknown parameter 'quantile' for hip: expected budget, page, block, sinks, "
	         "recent, dense, refresh, prefill, tail, shadow, beam or rerank");
	T_EQ_INT(engine_sparse_parse("quest:refresh=2", &s, &e), KVS_EARG);
	T_EQ_INT(engine_sparse_parse("hip:refresh=0", &s, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "refresh=0: expected an integer in 1..65536") != NULL, "%s", e.msg);
	T_EQ_INT(engine_sparse_parse("hip:block=0", &s, &e), KVS_EARG);
	/* rerank: a multiple of the final blocks, in thousandths; hip's only */
	T_EQ_INT(engine_sparse_parse("hip:rerank=1.5", &s, &e), KVS_OK);
	T_EQ_INT(s.rerank, 1500);
	T_EQ_INT(engine_sparse_parse("hip:rerank=9", &s, &e), KVS_EARG);
	T_EQ_STR(e.msg, "sparse: rerank=9: expected a number in 0..8");
	T_EQ_INT(engine_sparse_parse("quest:rerank=2", &s, &e), KVS_EARG);
}

/* ------------------------------------------------------------ the pure steps */

static void test_bound_top(void)
{
	/* q = (1, -2), (0.5, 0.5); min (-1, 0), max (3, 1):
	 * head 0: max(3, -1) + max(-2, 0) = 3; head 1: 1.5 + 0.5 = 2 */
	const float q[4] = { 1, -2, 0.5f, 0.5f }, mnmx[4] = { -1, 0, 3, 1 };
	T_NEAR(sparse_bound(q, 1, 2, mnmx), 3.0, 0);
	T_NEAR(sparse_bound(q + 2, 1, 2, mnmx), 2.0, 0);
	T_NEAR(sparse_bound(q, 2, 2, mnmx), 3.0, 0);

	/* the split-query dot gives the same bound */
	float qs[4];
	sparse_split_q(q, 2, qs);
	T_NEAR(qs[0] * mnmx[0] + qs[1] * mnmx[1] + qs[2] * mnmx[2] + qs[3] * mnmx[3], 3.0, 0);
	sparse_split_q(q + 2, 2, qs);
	T_NEAR(qs[0] * mnmx[0] + qs[1] * mnmx[1] + qs[2] * mnmx[2] + qs[3] * mnmx[3], 2.0, 0);

	const float ub[7] = { 3, -INFINITY, 5, 1, 5, 2, 5 };
	float scr[7];
	uint8_t sel[7];
	T_EQ_INT(sparse_top(ub, 7, 2, scr, sel), 2); /* ties: the lower index */
	T_CHECK(!sel[0] && sel[2] && sel[4] && !sel[6], "%d%d%d%d", sel[0], sel[2], sel[4], sel[6]);
	T_EQ_INT(sparse_top(ub, 7, 4, scr, sel), 4);
	T_CHECK(sel[0] && sel[2] && sel[4] && sel[6] && !sel[3] && !sel[5], "4 of 7");
	T_EQ_INT(sparse_top(ub, 7, 100, scr, sel), 6);
	T_CHECK(!sel[1], "a page without candidates is never chosen");
	T_EQ_INT(sparse_top(ub, 7, 0, scr, sel), 0);
}

/* The oracle's mass: by hand, and the best of every subset by brute force. */
static void test_oracle(void)
{
	/* sums 0.5 0.7 0.3 0.3 0.2: k 2 takes keys 1 and 0, k 3 adds key 2 (the
	 * tie with key 3 goes to the lower index) */
	const float w[10] = { 0.5f, 0.1f, 0.2f, 0.1f, 0.1f, 0.0f, 0.6f, 0.1f, 0.2f, 0.1f };
	float scr[5], sum[5], mass[2];
	uint8_t sel[5];
	engine_sparse_oracle(w, 2, 5, 2, scr, sum, sel, mass);
	T_CHECK(sel[0] && sel[1] && !sel[2] && !sel[3] && !sel[4], "k 2: %d%d%d%d%d", sel[0], sel[1],
	        sel[2], sel[3], sel[4]);
	T_NEAR(mass[0], 0.6, 1e-6);
	T_NEAR(mass[1], 0.6, 1e-6);
	engine_sparse_oracle(w, 2, 5, 3, scr, sum, sel, mass);
	T_CHECK(sel[0] && sel[1] && sel[2] && !sel[3] && !sel[4], "k 3: %d%d%d%d%d", sel[0], sel[1],
	        sel[2], sel[3], sel[4]);
	T_NEAR(mass[0], 0.8, 1e-6);
	T_NEAR(mass[1], 0.7, 1e-6);
	engine_sparse_oracle(w, 2, 5, 9, scr, sum, sel, mass); /* more than n: every key */
	T_NEAR(mass[0], 1.0, 1e-6);
	T_NEAR(mass[1], 1.0, 1e-6);

	/* random rows of 3 heads over 9 keys: no subset of k keys has a larger
	 * mean mass than the oracle's (every subset tried) */
	uint32_t rng = 12345;
	for (int trial = 0; trial < 50; trial++) {
		float r[27], rs[9], rscr[9], rm[3];
		uint8_t rsel[9];
		for (int i = 0; i < 27; i++) {
			rng = rng * 1664525u + 1013904223u;
			r[i] = (float)(rng >> 8) / 16777216.0f;
		}
		uint32_t k = 1 + (uint32_t)trial % 8;
		engine_sparse_oracle(r, 3, 9, k, rscr, rs, rsel, rm);
		double got = (rm[0] + rm[1] + rm[2]) / 3, best = 0;
		for (uint32_t set = 0; set < 512; set++) {
			if ((uint32_t)__builtin_popcount(set) != k)
				continue;
			double v = 0;
			for (uint32_t j = 0; j < 9; j++)
				if (set >> j & 1)
					v += (r[j] + r[9 + j] + r[18 + j]) / 3;
			best = v > best ? v : best;
		}
		T_NEAR(got, best, 1e-5);
	}
}

/* ------------------------------------------------------------ HiP's search */

/* Block scores from a table; counts the calls and the blocks asked. A
 * half scores its first block's value, or with `max` the largest over
 * its blocks (what the decode's page bounds give: no value in the half is
 * above it). */
struct tab {
	const float *score;
	uint32_t calls, asked;
	bool max;
};

static void tab_score(void *ctx, const uint32_t *start, const uint32_t *size, uint32_t n,
                      float *out)
{
	struct tab *t = ctx;
	t->calls++;
	t->asked += n;
	for (uint32_t i = 0; i < n; i++) {
		T_CHECK(size[i] >= 1, "half %u: %u blocks", i, size[i]);
		out[i] = t->score[start[i]];
		for (uint32_t b = start[i]; t->max && b < start[i] + size[i]; b++)
			out[i] = t->score[b] > out[i] ? t->score[b] : out[i];
	}
}

/* Run the search; the chosen blocks as a string of indices ("5 13"). */
static const char *tree_run_by(const float *score, uint32_t n, uint32_t k, bool max,
                               uint32_t *rounds, uint32_t *asked)
{
	static char out[128];
	struct sparse_tree t = { 0 };
	struct tab tb = { score, 0, 0, max };
	uint8_t chosen[64];
	uint64_t scored = 0;
	sparse_tree_ensure(&t, n);
	*rounds = sparse_hip_tree(&t, n, k, tab_score, &tb, chosen, &scored);
	T_EQ_INT(*rounds, tb.calls);
	T_EQ_INT(scored, tb.asked);
	*asked = tb.asked;
	size_t o = 0;
	out[0] = '\0';
	for (uint32_t i = 0; i < n; i++)
		if (chosen[i])
			o += (size_t)snprintf(out + o, sizeof out - o, "%s%u", o ? " " : "", i);
	sparse_tree_free(&t);
	return out;
}

static const char *tree_run(const float *score, uint32_t n, uint32_t k, uint32_t *rounds,
                            uint32_t *asked)
{
	return tree_run_by(score, n, k, false, rounds, asked);
}

static void test_hip_tree(void)
{
	uint32_t rounds, asked;
	/* 16 blocks, k = 2: ranges [0,8) [8,16); round 1 scores the halves'
	 * first blocks 0, 4, 8, 12 (1, 5, 2, 4): keeps [4,8) [12,16); round 2
	 * blocks 4, 6, 12, 14 (5, 0, 4, 0): keeps [4,6) [12,14); round 3
	 * blocks 4, 5, 12, 13 (5, 9, 4, 8): keeps 5 and 13, the true top 2 */
	float a[16] = { 0 };
	a[0] = 1, a[4] = 5, a[5] = 9, a[8] = 2, a[12] = 4, a[13] = 8;
	T_EQ_STR(tree_run(a, 16, 2, &rounds, &asked), "5 13");
	T_EQ_INT(rounds, 3);
	T_EQ_INT(asked, 12);
	/* the same but block 4 low: its range [4,8) loses to [8,12) in round
	 * 1 (0 < 2), and block 5's 9 is never seen: 12 and 13 are chosen */
	a[4] = 0;
	T_EQ_STR(tree_run(a, 16, 2, &rounds, &asked), "12 13");
	/* ranked by the largest value in each half (the decode's bounds):
	 * round 1 halves [0,4) [4,8) [8,12) [12,16) score 1, 9, 2, 8 and keep
	 * [4,8) [12,16); round 2: [4,6) 9, [6,8) 0, [12,14) 8, [14,16) 0;
	 * round 3: blocks 4, 5, 12, 13 (0, 9, 4, 8): the hidden 9 is found */
	T_EQ_STR(tree_run_by(a, 16, 2, true, &rounds, &asked), "5 13");
	T_EQ_INT(rounds, 3);
	T_EQ_INT(asked, 12);
	/* and with it every block above all others is found when the k best
	 * lie in different ranges: 64 blocks, k = 4, peaks at each quarter's
	 * last block, which first-block scores never see before the end */
	float p[64];
	for (uint32_t i = 0; i < 64; i++)
		p[i] = (float)(i % 5) * 0.1f;
	p[15] = 7, p[31] = 6, p[47] = 9, p[63] = 8;
	T_EQ_STR(tree_run_by(p, 64, 4, true, &rounds, &asked), "15 31 47 63");
	T_CHECK(strcmp(tree_run(p, 64, 4, &rounds, &asked), "15 31 47 63") != 0,
	        "first-block scores found the hidden peaks too: the case tests nothing");
	/* uneven ranges: 5 blocks, k = 2: [0,2) [2,5); halves [0,1) [1,2)
	 * [2,3) [3,5) scored by blocks 0..3 (1, 7, 3, 2): 1 and 2 kept, each
	 * one block: one round, block 4 (6) unseen */
	const float b[5] = { 1, 7, 3, 2, 6 };
	T_EQ_STR(tree_run(b, 5, 2, &rounds, &asked), "1 2");
	T_EQ_INT(rounds, 1);
	/* an empty half is never scored: 3 blocks, k = 2: [0,1) [1,3);
	 * halves (empty) [0,1) [1,2) [2,3): three blocks asked */
	const float c3[3] = { 5, 1, 9 };
	T_EQ_STR(tree_run(c3, 3, 2, &rounds, &asked), "0 2");
	T_EQ_INT(asked, 3);
	/* k covering every block: all, no round; k = 0: none */
	T_EQ_STR(tree_run(b, 5, 5, &rounds, &asked), "0 1 2 3 4");
	T_EQ_INT(rounds, 0);
	T_EQ_STR(tree_run(b, 5, 0, &rounds, &asked), "");
	/* 64 blocks, k = 4, one peak per quarter at each range's start: found
	 * in log2(64 / 4) = 4 rounds of 8 halves */
	float d[64];
	for (uint32_t i = 0; i < 64; i++)
		d[i] = (float)(i % 7) * 0.1f;
	d[0] = d[16] = d[32] = d[48] = 10;
	T_EQ_STR(tree_run(d, 64, 4, &rounds, &asked), "0 16 32 48");
	T_EQ_INT(rounds, 4);
	T_EQ_INT(asked, 32);
}

/* Loose bounds (ub) for halves of several blocks, the true value (val)
 * when every half is one block: the decode's scoring. */
struct tab2 {
	const float *ub, *val;
	uint32_t calls;
};

static void tab2_score(void *ctx, const uint32_t *start, const uint32_t *size, uint32_t n,
                       float *out)
{
	struct tab2 *t = ctx;
	bool ones = true;
	t->calls++;
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

static const char *tree_run_beam(const float *ub, const float *val, uint32_t n, uint32_t k,
                                 uint32_t beam, uint32_t *rounds)
{
	static char out[128];
	struct sparse_tree t = { 0 };
	struct tab2 tb = { ub, val, 0 };
	uint8_t chosen[64];
	uint64_t scored = 0;
	sparse_tree_ensure(&t, n);
	*rounds = sparse_hip_tree_beam(&t, n, k, beam, tab2_score, &tb, chosen, &scored);
	T_EQ_INT(*rounds, tb.calls);
	size_t o = 0, n_chosen = 0;
	out[0] = '\0';
	for (uint32_t i = 0; i < n; i++)
		if (chosen[i]) {
			n_chosen++;
			o += (size_t)snprintf(out + o, sizeof out - o, "%s%u", o ? " " : "", i);
		}
	T_EQ_INT(n_chosen, KVS_MIN(k, n));
	sparse_tree_free(&t);
	return out;
}

static void test_hip_beam(void)
{
	uint32_t rounds;
	/* 16 blocks, k = 2; true values 9 at block 5, 8 at 13, bounds 0.5
	 * over each value but loose at blocks 2 and 9 (10 over a value of 1).
	 * beam 1: ranges [0,8) [8,16); round 1's halves bound 10, 9.5, 10,
	 * 8.5: [0,4) [8,12) kept, 5 and 13 lost; the last round picks 2 and 9
	 * (value 1 each). beam 2: ranges [0,4) [4,8) [8,12) [12,16); halves
	 * [0,2) .5, [2,4) 10, [4,6) 9.5, [6,8) .5, [8,10) 10, [10,12) .5,
	 * [12,14) 8.5, [14,16) .5: four kept, [2,4) [4,6) [8,10) [12,14);
	 * the last round scores blocks 2 3 4 5 8 9 12 13 by value (1 0 0 9 0 1
	 * 0 8) and keeps 5 and 13 */
	float ub[16], val[16] = { 0 };
	val[5] = 9, val[13] = 8, val[2] = 1, val[9] = 1;
	for (uint32_t i = 0; i < 16; i++)
		ub[i] = val[i] + 0.5f;
	ub[2] = ub[9] = 10;
	T_EQ_STR(tree_run_beam(ub, val, 16, 2, 2, &rounds), "2 9");
	T_EQ_INT(rounds, 3);
	T_EQ_STR(tree_run_beam(ub, val, 16, 2, 4, &rounds), "5 13");
	T_EQ_INT(rounds, 2);
	/* a beam of k is HiP's search: the same blocks as sparse_hip_tree */
	uint32_t asked;
	T_EQ_STR(tree_run_beam(val, val, 16, 2, 2, &rounds),
	         tree_run_by(val, 16, 2, true, &rounds, &asked));
	/* a beam past n_blocks / 2 starts from pairs: 6 blocks, k = 2, beam
	 * 8: 3 ranges of 2, one round over the 6 blocks by value */
	const float v6[6] = { 3, 1, 7, 2, 6, 0 };
	T_EQ_STR(tree_run_beam(v6, v6, 6, 2, 8, &rounds), "2 4");
	T_EQ_INT(rounds, 1);
	/* a beam round that keeps single blocks only: 9 blocks, k = 1, beam
	 * 3: ranges [0,3) [3,6) [6,9), halves [0,1) [1,3) [3,4) [4,6) [6,7)
	 * [7,9) bound 9 1 8 1 7 1: blocks 0, 3 and 6 kept, every range one
	 * block but three of them; one more round by value (2 5 3) keeps 3 */
	const float ub9[9] = { 9, 1, 1, 8, 1, 1, 7, 1, 1 }, v9[9] = { 2, 0, 0, 5, 0, 0, 3, 0, 0 };
	T_EQ_STR(tree_run_beam(ub9, v9, 9, 1, 3, &rounds), "3");
	T_EQ_INT(rounds, 2);
	/* k covering every block: all, no round */
	T_EQ_STR(tree_run_beam(v6, v6, 6, 6, 12, &rounds), "0 1 2 3 4 5");
	T_EQ_INT(rounds, 0);
}

/* ------------------------------------------------------------ the engine */

/* A budget covering the cache gives the dense logits: split path (no
 * weights asked) and whole-row path (weights asked), one and two threads. */
static void test_full_budget(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t nv = hp->n_vocab, n = 150;
	float *dense = malloc(nv * sizeof(float)), *sp = malloc(nv * sizeof(float));
	struct engine_sparse s;
	struct err e;
	T_EQ_INT(engine_sparse_parse("quest:budget=4096,page=8,dense=0,sinks=2,recent=4", &s, &e),
	         KVS_OK);
	for (int threads = 1; threads <= 2; threads++)
		for (int attn = 0; attn <= 1; attn++) {
			struct engine *eng = tinymodel_engine(m, N_CTX, threads, false);
			struct engine_out o;
			tinymodel_prefill(eng, n);
			tinymodel_decode(eng, n, NULL, attn, dense, &o);
			T_EQ_INT(o.keys_read, o.keys_dense);
			T_EQ_INT(o.keys_dense, (uint64_t)(n + 1) * hp->n_layer * hp->n_head_kv);
			tinymodel_decode(eng, n, &s, attn, sp, &o); /* the same step again, sparse */
			double d = tinymodel_max_diff(dense, sp, nv);
			printf("full budget, %d thread(s), weights %d: max |logit diff| %.3g\n", threads, attn,
			       d);
			T_CHECK(d <= 1e-5, "threads %d attn %d: max diff %g", threads, attn, d);
			T_EQ_INT(o.keys_read, o.keys_dense);
			engine_free(eng);
		}
	free(dense);
	free(sp);
}

/* HiP with a budget covering the cache, on every step, the refresh steps
 * and the reuse steps between (where the keys added since the refresh
 * were never scored): the dense logits on the split path; on the
 * whole-row path (weights asked) Quest's logits bit for bit (both mask
 * nothing; that path's masked softmax sums in another order than dense's,
 * which over these steps moves a logit by up to 2.3e-4 for either mode). */
static void test_hip_full_budget(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t nv = hp->n_vocab, n = 120;
	float *dense = malloc(nv * sizeof(float)), *sp = malloc(nv * sizeof(float));
	float *qu = malloc(nv * sizeof(float));
	struct engine_sparse s, q;
	struct err e;
	T_EQ_INT(engine_sparse_parse("hip:budget=4096,block=4,dense=0,sinks=2,recent=4,refresh=3", &s,
	                             &e),
	         KVS_OK);
	T_EQ_INT(engine_sparse_parse("quest:budget=4096,page=8,dense=0,sinks=2,recent=4", &q, &e),
	         KVS_OK);
	for (int threads = 1; threads <= 2; threads++)
		for (int attn = 0; attn <= 1; attn++) {
			struct engine *eng = tinymodel_engine(m, N_CTX, threads, false);
			struct engine_out o;
			double worst = 0, vs_quest = 0;
			uint32_t chose = 0, reused = 0;
			tinymodel_prefill(eng, n);
			for (uint32_t i = 0; i < 7; i++) {
				tinymodel_decode(eng, n + i, NULL, attn, dense, &o);
				T_EQ_INT(o.sparse_chose, -1);
				if (attn)
					tinymodel_decode(eng, n + i, &q, attn, qu, &o);
				tinymodel_decode(eng, n + i, &s, attn, sp, &o); /* the same step again, hip */
				chose += o.sparse_chose == 1;
				reused += o.sparse_chose == 0;
				worst = fmax(worst, tinymodel_max_diff(dense, sp, nv));
				if (attn)
					vs_quest = fmax(vs_quest, tinymodel_max_diff(qu, sp, nv));
				T_EQ_INT(o.keys_read, o.keys_dense);
			}
			printf("hip full budget, %d thread(s), weights %d: max |logit diff| %.3g against "
			       "dense, %.3g against quest over 7 steps (%u chose, %u reused)\n",
			       threads, attn, worst, vs_quest, chose, reused);
			T_CHECK(worst <= (attn ? 1e-3 : 1e-5), "threads %d attn %d: max diff %g", threads, attn,
			        worst);
			T_CHECK(vs_quest == 0, "threads %d attn %d: against quest %g", threads, attn, vs_quest);
			T_EQ_INT(chose, 3); /* steps 0, 3, 6 */
			T_EQ_INT(reused, 4);
			uint64_t c1, r1;
			engine_sparse_steps(eng, &c1, &r1);
			T_EQ_INT(c1, 3 + (attn ? 7 : 0)); /* quest chooses on every step */
			T_EQ_INT(r1, 4);
			engine_free(eng);
		}
	free(dense);
	free(sp);
	free(qu);
}

/* HiP with a small budget: a refresh every 4 steps; a refresh step
 * attends the sinks, the window and whole blocks up to the budget; a reuse
 * step attends what the refresh chose plus the keys it did not score; a
 * step back in position or a changed spec chooses anew. */
static void test_hip_cadence(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t nv = hp->n_vocab, n = 200, nkv = hp->n_head_kv, nl = hp->n_layer;
	float *lg = malloc(nv * sizeof(float));
	struct engine_sparse s;
	struct err e;
	T_EQ_INT(engine_sparse_parse(
	                 "hip:budget=48,block=8,dense=1,sinks=4,recent=8,refresh=4,rerank=0", &s, &e),
	         KVS_OK);
	struct engine *eng = tinymodel_engine(m, N_CTX, 2, false);
	struct engine_out o;
	tinymodel_prefill(eng, n);
	/* (n_layer, n_head_kv, n + 1) the refresh step's mask */
	uint8_t *sel0 = malloc((size_t)nl * nkv * (n + 1));
	int want[10] = { 1, 0, 0, 0, 1, 0, 0, 0, 1, 0 }, got[10];
	for (uint32_t i = 0; i < 10; i++) {
		tinymodel_decode(eng, n + i, &s, true, lg, &o);
		got[i] = o.sparse_chose;
		uint32_t mv = n + i + 1; /* keys seen: slots = positions 0..n+i */
		T_CHECK(o.keys_read < o.keys_dense, "step %u: read %llu of %llu", i,
		        (unsigned long long)o.keys_read, (unsigned long long)o.keys_dense);
		for (uint32_t l = 1; l < nl; l++)
			for (uint32_t h = 0; h < nkv; h++) {
				const uint8_t *row = o.sel + ((size_t)l * nkv + h) * mv;
				uint32_t cnt = 0;
				for (uint32_t j = 0; j < mv; j++)
					cnt += row[j];
				T_CHECK(row[0] && row[3] && row[mv - 1] && row[mv - 8], "sinks and recent");
				if (i == 0) {
					/* 189 candidates in 24 blocks (the last of 5 keys),
					 * ceil(36 / 8) = 5 chosen: 4 + 8 + 37..40 keys */
					T_CHECK(cnt >= 4 + 8 + 37 && cnt <= 4 + 8 + 40, "layer %u head %u: %u keys", l,
					        h, cnt);
					memcpy(sel0 + ((size_t)l * nkv + h) * (n + 1), row, n + 1);
				} else if (i < 4) {
					/* a candidate scored at step 0 keeps its choice; one
					 * not scored then (in step 0's window, or new) is attended */
					const uint8_t *r0 = sel0 + ((size_t)l * nkv + h) * (n + 1);
					bool same = true;
					for (uint32_t j = 4; j < mv - 8; j++)
						same &= row[j] == (j < n + 1 - 8 ? r0[j] : 1);
					T_CHECK(same, "step %u layer %u head %u: reuse mask differs", i, l, h);
				}
			}
	}
	for (uint32_t i = 0; i < 10; i++)
		T_CHECK(got[i] == want[i], "step %u: chose %d, expected %d", i, got[i], want[i]);
	/* a step back (a new pass over the same slots) chooses anew */
	tinymodel_decode(eng, n + 2, &s, false, lg, &o);
	T_EQ_INT(o.sparse_chose, 1);
	tinymodel_decode(eng, n + 3, &s, false, lg, &o);
	T_EQ_INT(o.sparse_chose, 0);
	/* so does another spec; refresh=1 chooses on every step */
	s.refresh = 1;
	for (uint32_t i = 4; i < 7; i++) {
		tinymodel_decode(eng, n + i, &s, false, lg, &o);
		T_EQ_INT(o.sparse_chose, 1);
	}
	/* quest chooses on every step */
	struct engine_sparse q;
	T_EQ_INT(engine_sparse_parse("quest:budget=48,page=8,dense=1,recent=8", &q, &e), KVS_OK);
	tinymodel_decode(eng, n + 7, &q, false, lg, &o);
	T_EQ_INT(o.sparse_chose, 1);
	engine_free(eng);
	free(sel0);
	free(lg);
}

/* HiP's steps between refreshes copy the refresh's list when its
 * candidates are in place (cpu_hip_list): two engines with the same
 * history, one decoding each step between through the list (no weights
 * asked), the other through the mask (want_attn: every candidate
 * scanned), must read the same keys; after a candidate key moves (its
 * slot and the visible order unchanged) the moved key is unscored and
 * read on both. A list that drops or keeps the wrong keys reads another
 * count. */
static void test_hip_in_place(const struct model *m)
{
	uint32_t nv = m->hp.n_vocab, n = 200;
	float *lg = malloc(nv * sizeof(float));
	struct engine_sparse s;
	struct err e;
	T_EQ_INT(engine_sparse_parse(
	                 "hip:budget=48,block=8,dense=1,sinks=4,recent=8,refresh=8,rerank=0", &s, &e),
	         KVS_OK);
	struct engine *a = tinymodel_engine(m, N_CTX, 1, false);
	struct engine *b = tinymodel_engine(m, N_CTX, 1, false);
	struct engine_out oa, ob;
	tinymodel_prefill(a, n);
	tinymodel_prefill(b, n);
	uint32_t reused = 0;
	for (uint32_t i = 0; i < 6; i++) {
		if (i == 3) {
			/* a candidate the refresh scored moves back one position */
			T_EQ_INT(engine_kv_set_pos(a, 100, 99, &e), KVS_OK);
			T_EQ_INT(engine_kv_set_pos(b, 100, 99, &e), KVS_OK);
		}
		tinymodel_decode(a, n + i, &s, false, lg, &oa);
		tinymodel_decode(b, n + i, &s, i > 0, lg, &ob);
		T_EQ_INT(oa.sparse_chose, ob.sparse_chose);
		T_CHECK(oa.keys_read == ob.keys_read, "step %u: the list read %llu keys, the mask %llu", i,
		        (unsigned long long)oa.keys_read, (unsigned long long)ob.keys_read);
		reused += oa.sparse_chose == 0;
	}
	T_CHECK(reused == 5, "%u of 5 steps reused the refresh's choice", reused);
	engine_free(a);
	engine_free(b);
	free(lg);
}

/* Prefill n tokens in one batch with sp (NULL: dense), every row's logits
 * into out (n, n_vocab); the engine's output in *o. */
static void prefill_all(struct engine *eng, uint32_t n, const struct engine_sparse *sp, bool attn,
                        float *out, struct engine_out *o)
{
	int32_t tok[N_CTX], pos[N_CTX];
	uint32_t slot[N_CTX];
	tinymodel_prompt(tok, pos, slot, n);
	struct engine_batch b = { .n_tokens = n, .tokens = tok, .pos = pos, .slot = slot };
	b.n_visible = n;
	b.logits = ENGINE_LOGITS_ALL;
	b.sparse = sp;
	b.want_attn = attn;
	struct err e;
	engine_kv_clear(eng);
	if (engine_forward(eng, &b, o, &e) != KVS_OK) {
		fprintf(stderr, "prefill: %s\n", e.msg);
		exit(99);
	}
	memcpy(out, o->logits, (size_t)n * engine_model(eng)->hp.n_vocab * sizeof(float));
}

/* HiP's block-sparse prefill: a budget covering every query block gives
 * the dense logits on every row; a small one reads fewer keys (dense: the
 * hand-counted sum of the prefixes over the sparse layers), captures part
 * of the dense mass, and gives finite logits; prefill=0 and a prompt under
 * the threshold stay dense. */
static void test_hip_prefill(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t nv = hp->n_vocab, n = 200;
	float *dense = malloc((size_t)n * nv * sizeof(float)),
	      *sp = malloc((size_t)n * nv * sizeof(float));
	struct engine_sparse s;
	struct engine_out o;
	struct err e;
	for (int threads = 1; threads <= 2; threads++) {
		struct engine *eng = tinymodel_engine(m, N_CTX, threads, false);
		prefill_all(eng, n, NULL, false, dense, &o);
		T_EQ_INT(o.prefill_dense, 0);
		T_EQ_INT(engine_sparse_parse("hip:budget=4096,dense=0,prefill=1", &s, &e), KVS_OK);
		prefill_all(eng, n, &s, false, sp, &o);
		double d = tinymodel_max_diff(dense, sp, n * nv);
		printf("hip prefill, full budget, %d thread(s): max |logit diff| %.3g over %u rows\n",
		       threads, d, n);
		T_CHECK(d <= 1e-5, "full-budget prefill: max diff %g", d);
		T_EQ_INT(o.prefill_read, o.prefill_dense);
		T_EQ_INT(o.prefill_dense, (uint64_t)hp->n_layer * hp->n_head * (n * (n + 1) / 2));
		/* a small budget from layer 1 on (no dense tail: test-hip-prefill's) */
		T_EQ_INT(engine_sparse_parse("hip:budget=48,block=8,sinks=4,recent=8,dense=1,prefill=64,"
		                             "tail=0",
		                             &s, &e),
		         KVS_OK);
		prefill_all(eng, n, &s, true, sp, &o);
		printf("hip prefill, budget 48, %d thread(s): read %llu of %llu keys, mass %.3f over "
		       "%llu rows\n",
		       threads, (unsigned long long)o.prefill_read, (unsigned long long)o.prefill_dense,
		       o.prefill_mass, (unsigned long long)o.prefill_rows);
		/* the last token (its weights asked for) goes the dense way */
		T_EQ_INT(o.prefill_dense, (uint64_t)(hp->n_layer - 1) * hp->n_head * (n * (n - 1) / 2));
		T_CHECK(o.prefill_read < o.prefill_dense / 2, "read %llu of %llu",
		        (unsigned long long)o.prefill_read, (unsigned long long)o.prefill_dense);
		T_CHECK(o.prefill_rows > 0 && o.prefill_mass > 0 && o.prefill_mass <= 1 + 1e-6,
		        "mass %g over %llu rows", o.prefill_mass, (unsigned long long)o.prefill_rows);
		bool finite = true;
		for (size_t i = 0; i < (size_t)n * nv; i++)
			finite &= isfinite(sp[i]) != 0;
		T_CHECK(finite, "sparse prefill logits finite");
		/* layer 0 is dense and the first rows see fewer keys than the
		 * budget: row 0's logits are dense's */
		T_CHECK(tinymodel_max_diff(dense, sp, nv) <= 1e-5, "row 0 as dense");
		/* prefill=0, and a prompt under the threshold: dense */
		s.prefill = 0;
		prefill_all(eng, n, &s, false, sp, &o);
		T_EQ_INT(o.prefill_dense, 0);
		T_CHECK(tinymodel_max_diff(dense, sp, n * nv) == 0, "prefill=0 is dense");
		s.prefill = n + 1;
		prefill_all(eng, n, &s, false, sp, &o);
		T_EQ_INT(o.prefill_dense, 0);
		engine_free(eng);
	}
	free(dense);
	free(sp);
}

/* A small budget: fewer keys, the sinks and the recent window in the
 * mask, at most budget + page - 1 keys per sparse layer and KV head, and
 * the dense shadow of layer 0 (same query in both runs) equal to the dense
 * weights. */
static void test_small_budget(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t nv = hp->n_vocab, n = 200, nkv = hp->n_head_kv;
	float *lg = malloc(nv * sizeof(float));
	struct engine_sparse s;
	struct err e;
	T_EQ_INT(engine_sparse_parse("quest:budget=48,page=8,dense=1,sinks=4,recent=8", &s, &e),
	         KVS_OK);
	struct engine *eng = tinymodel_engine(m, N_CTX, 2, false);
	struct engine_out o;
	tinymodel_prefill(eng, n);
	tinymodel_decode(eng, n, NULL, true, lg, &o);
	size_t na = (size_t)hp->n_layer * hp->n_head * (n + 1);
	float *dattn = malloc(na * sizeof(float));
	memcpy(dattn, o.attn, na * sizeof(float));
	tinymodel_decode(eng, n, &s, true, lg, &o);
	T_CHECK(o.sel != NULL, "sel given with want_attn");
	T_CHECK(o.keys_read < o.keys_dense, "read %llu of %llu", (unsigned long long)o.keys_read,
	        (unsigned long long)o.keys_dense);
	uint64_t want_read = 0;
	for (uint32_t l = 0; l < hp->n_layer; l++)
		for (uint32_t h = 0; h < nkv; h++) {
			const uint8_t *row = o.sel + ((size_t)l * nkv + h) * (n + 1);
			uint32_t cnt = 0;
			for (uint32_t j = 0; j <= n; j++)
				cnt += row[j];
			want_read += cnt;
			if (l == 0) {
				T_EQ_INT(cnt, n + 1);
				continue;
			}
			/* 4 sinks + 8 recent + ceil(36 / 8) = 5 pages of 8 */
			T_CHECK(cnt <= 4 + 8 + 5 * 8 && cnt >= 4 + 8 + 8, "layer %u head %u: %u keys", l, h,
			        cnt);
			T_CHECK(row[0] && row[3] && row[n] && row[n - 7], "sinks and recent chosen");
		}
	T_EQ_INT(o.keys_read, want_read);
	/* the layer-0 and layer-1 queries are the same as dense (layer 0 dense) */
	double d = 0;
	for (size_t i = 0; i < (size_t)2 * hp->n_head * (n + 1); i++)
		d = fmax(d, fabs((double)o.attn[i] - dattn[i]));
	T_CHECK(d < 1e-5, "dense shadow of layers 0-1: max diff %g", d);
	for (uint32_t i = 0; i < nv; i++)
		T_CHECK(isfinite(lg[i]), "logit %u finite", i);
	/* the split path gives what the whole-row path gives (the two sum in
	 * different orders, so a near-tie between two pages' bounds in a later
	 * layer may flip: a loose tolerance) */
	float *lg2 = malloc(nv * sizeof(float));
	tinymodel_decode(eng, n, &s, false, lg2, &o);
	d = tinymodel_max_diff(lg, lg2, nv);
	printf("small budget: split vs masked whole rows: max |logit diff| %.3g\n", d);
	T_CHECK(d < 1e-2, "split vs masked whole rows: max diff %g", d);
	T_CHECK(o.sel == NULL, "no sel without want_attn");
	engine_free(eng);
	free(lg);
	free(lg2);
	free(dattn);
}

/* The (sparse layer, KV head) rows of o.sel (n + 1 keys) that leave out
 * one of the first g keys. */
static uint32_t rows_missing(const struct engine_out *o, const struct hparams *hp, uint32_t dense,
                             uint32_t n, uint32_t g)
{
	uint32_t miss = 0;
	for (uint32_t l = dense; l < hp->n_layer; l++)
		for (uint32_t h = 0; h < hp->n_head_kv; h++) {
			const uint8_t *row = o->sel + ((size_t)l * hp->n_head_kv + h) * (n + 1);
			bool all = true;
			for (uint32_t k = 0; k < g; k++)
				all = all && row[k];
			miss += !all;
		}
	return miss;
}

/* Under a distance cap the selection scores keys rotated at their own
 * positions, but the attention scores a global key farther than dist_cap
 * rotated to p - dist_cap: such keys are attended as sinks. With a small
 * budget every sparse row holds all of them (the rule before, sinks=2,
 * left some out: the check fails on it); with a budget covering the cache
 * the logits are dense's under the same cap; with the cap off (n_global
 * given, dist_cap 0) the step is bit for bit the one without n_global. */
static void test_capped_globals(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t nv = hp->n_vocab, n = 150, g = 6;
	int32_t cap = 40;
	float *dense = malloc(nv * sizeof(float)), *lg = malloc(nv * sizeof(float));
	float *lg0 = malloc(nv * sizeof(float));
	const char *specs[] = {
		"quest:budget=24,page=8,dense=1,sinks=2,recent=4",
		"hip:budget=24,block=4,page=8,dense=1,sinks=2,recent=4,prefill=0,refresh=1",
	};
	struct err e;
	for (size_t i = 0; i < KVS_ARRAY_LEN(specs); i++) {
		struct engine_sparse s;
		T_EQ_INT(engine_sparse_parse(specs[i], &s, &e), KVS_OK);
		struct engine *eng = tinymodel_engine(m, N_CTX, 2, false);
		struct engine_out o;
		tinymodel_prefill(eng, n);
		tinymodel_decode_capped(eng, n, &s, true, g, cap, lg, &o);
		uint32_t miss = rows_missing(&o, hp, 1, n, g);
		printf("capped globals, %s: %u rows leave one out\n", specs[i], miss);
		T_EQ_INT(miss, 0);
		/* the cap off: as without n_global, bit for bit, choice and logits */
		size_t ns = (size_t)hp->n_layer * hp->n_head_kv * (n + 1);
		uint8_t *sel0 = malloc(ns);
		tinymodel_decode_capped(eng, n, &s, true, 0, 0, lg0, &o);
		memcpy(sel0, o.sel, ns);
		tinymodel_decode_capped(eng, n, &s, true, g, 0, lg, &o);
		T_CHECK(memcmp(lg, lg0, nv * sizeof(float)) == 0, "%s: no cap, logits bit for bit",
		        specs[i]);
		T_CHECK(memcmp(o.sel, sel0, ns) == 0, "%s: no cap, the same choice", specs[i]);
		free(sel0);
		engine_free(eng);
	}
	/* a budget covering the cache: dense's capped logits */
	struct engine_sparse s;
	T_EQ_INT(engine_sparse_parse("quest:budget=4096,page=8,dense=0,sinks=2,recent=4", &s, &e),
	         KVS_OK);
	struct engine *eng = tinymodel_engine(m, N_CTX, 2, false);
	struct engine_out o;
	tinymodel_prefill(eng, n);
	tinymodel_decode_capped(eng, n, NULL, true, g, cap, dense, &o);
	tinymodel_decode_capped(eng, n, NULL, true, g, 0, lg0, &o);
	double moved = tinymodel_max_diff(dense, lg0, nv);
	tinymodel_decode_capped(eng, n, &s, true, g, cap, lg, &o);
	double d = tinymodel_max_diff(dense, lg, nv);
	printf("capped globals, full budget: max |logit diff| %.3g (the cap moves them %.3g)\n", d,
	       moved);
	T_CHECK(moved > 1e-3, "the cap changes the logits: %g", moved);
	T_CHECK(d <= 1e-5, "full budget under the cap: max diff %g", d);
	engine_free(eng);
	free(dense);
	free(lg);
	free(lg0);
}

/* Compare every page's bounds with the keys of its held slots, read back
 * rotated and rounded to the cache's f16; returns the pages checked. */
static uint32_t check_bounds(struct engine *eng, uint32_t page)
{
	const struct hparams *hp = &engine_model(eng)->hp;
	uint32_t hd = hp->head_dim, np = (N_CTX + page - 1) / page, checked = 0;
	float mn[64], mx[64], k[64], rmn[64], rmx[64];
	struct err e;
	for (uint32_t l = 0; l < hp->n_layer; l++)
		for (uint32_t h = 0; h < hp->n_head_kv; h++)
			for (uint32_t p = 0; p < np; p++) {
				uint32_t nk, want = 0;
				if (engine_kv_page_bounds(eng, page, l, h, p, mn, mx, &nk, &e) != KVS_OK) {
					T_CHECK(0, "page bounds: %s", e.msg);
					return checked;
				}
				for (uint32_t d = 0; d < hd; d++) {
					rmn[d] = INFINITY;
					rmx[d] = -INFINITY;
				}
				for (uint32_t s = p * page; s < (p + 1) * page && s < N_CTX; s++) {
					if (engine_kv_pos(eng, s) < 0)
						continue;
					want++;
					engine_kv_read(eng, l, s, h, false, true, k, &e);
					for (uint32_t d = 0; d < hd; d++) {
						float r = dtype_f16_to_f32(dtype_f32_to_f16(k[d]));
						rmn[d] = fminf(rmn[d], r);
						rmx[d] = fmaxf(rmx[d], r);
					}
				}
				T_EQ_INT(nk, want);
				for (uint32_t d = 0; d < hd && want > 0; d++) {
					/* one f16 step: the backend rotates with its own kernel */
					double tol = ldexp(fmax(fabs(rmn[d]), fabs(rmx[d])), -10) + 1e-6;
					T_NEAR(mn[d], rmn[d], tol);
					T_NEAR(mx[d], rmx[d], tol);
				}
				checked++;
			}
	return checked;
}

/* Evict and compact (StreamingLLM through the kv layer, sparse on), copy
 * slots by hand, and compare the bounds with a recomputation each time. */
static void test_bounds_invariant(const struct model *m)
{
	struct engine *eng = tinymodel_engine(m, N_CTX, 2, false);
	struct kv_config kc;
	struct err e;
	kv_config_default(&kc);
	T_EQ_INT(kv_policy_parse("streaming:sinks=4", &kc.policy, &e), KVS_OK);
	kc.budget = 96;
	kc.n_batch = 24;
	T_EQ_INT(engine_sparse_parse("quest:budget=32,page=8,dense=1,recent=8", &kc.sparse, &e),
	         KVS_OK);
	struct kv_cache *kv;
	if (kv_cache_create(&kv, eng, &kc, &e) != KVS_OK) {
		fprintf(stderr, "kv: %s\n", e.msg);
		exit(99);
	}
	int32_t ids[160];
	for (uint32_t i = 0; i < 160; i++)
		ids[i] = (int32_t)(5 + (i * 11) % 240);
	T_EQ_INT(kv_cache_feed(kv, ids, 90, &e), KVS_OK);
	for (uint32_t i = 90; i < 130; i++) /* decode steps: evictions, compaction */
		T_EQ_INT(kv_cache_feed(kv, ids + i, 1, &e), KVS_OK);
	struct kv_stats st;
	kv_cache_stats(kv, &st);
	T_CHECK(st.n_evicted > 0, "evicted %llu", (unsigned long long)st.n_evicted);
	T_CHECK(st.keys_read < st.keys_dense, "sparse: read %llu of %llu",
	        (unsigned long long)st.keys_read, (unsigned long long)st.keys_dense);
	T_CHECK(check_bounds(eng, 8) > 0, "pages checked");
	/* more: a prefill chunk that evicts, then decode steps */
	T_EQ_INT(kv_cache_feed(kv, ids + 130, 20, &e), KVS_OK);
	for (uint32_t i = 150; i < 160; i++)
		T_EQ_INT(kv_cache_feed(kv, ids + i, 1, &e), KVS_OK);
	check_bounds(eng, 8);
	/* raw slot moves: copy the cached tokens' slots onto free ones */
	const struct kv_tok *t = kv_cache_toks(kv);
	uint32_t src[4] = { t[10].slot, t[20].slot, t[30].slot, t[40].slot }, dst[4], nd = 0;
	for (uint32_t s = 0; s < N_CTX && nd < 4; s++)
		if (engine_kv_pos(eng, s) < 0)
			dst[nd++] = s;
	T_EQ_INT(engine_kv_copy(eng, dst, src, nd, &e), KVS_OK);
	check_bounds(eng, 8);
	for (uint32_t i = 0; i < nd; i++)
		T_EQ_INT(engine_kv_set_pos(eng, dst[i], -1, &e), KVS_OK);
	check_bounds(eng, 8);
	/* another page size rebuilds from scratch */
	check_bounds(eng, 16);
	printf("bounds: %u pages checked at page 16\n", check_bounds(eng, 16));
	printf("bounds memory: %llu bytes at page 16, K+V %llu bytes\n",
	       (unsigned long long)engine_sparse_bytes(eng, 16),
	       (unsigned long long)(engine_kv_bytes_per_slot(eng) * N_CTX));
	T_EQ_INT(engine_sparse_bytes(eng, 16) * 16, engine_kv_bytes_per_slot(eng) * N_CTX);
	kv_cache_free(kv);
	engine_free(eng);
}

int main(void)
{
	struct tiny t;
	test_parse();
	test_bound_top();
	test_oracle();
	test_hip_tree();
	test_hip_beam();
	tiny_open(&t);
	test_full_budget(t.m);
	test_small_budget(t.m);
	test_hip_full_budget(t.m);
	test_hip_cadence(t.m);
	test_hip_in_place(t.m);
	test_hip_prefill(t.m);
	test_bounds_invariant(t.m);
	test_capped_globals(t.m);
	model_free(t.m);
	free(t.buf);
	return t_done("test-sparse");
}
