/*
 * test-sparse-group.c: content groups over a region of keys that share
 * one position (sparse-group.c, cpu-sparse-group.c). The pure steps: the
 * grouping of a hand-made case, its invariants on random keys (every key
 * in one group, groups of `page`, bounds the min and max of their
 * members), the region's match, and a constructed case where the heavy
 * keys lie one to a positional page, on which Quest's ranking over the
 * groups captures at least the mass the pages do. Then the engine on a
 * tiny model with a capped region: a budget covering the cache gives
 * dense's logits (quest and hip), a small budget chooses region keys by
 * shortlist (a positional page of the region partly chosen), and a region
 * key rewritten or moved is regrouped (the logits equal those of an engine
 * that never saw the old keys).
 */
#include "engine/engine.h"
#include "engine/sparse.h"
#include "model/model.h"
#include "tests/unit/test.h"
#include "tests/util/tinymodel.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define N_CTX 256

/* ------------------------------------------------------------ the pure steps */

/* Eight keys, two channels, channel 0 the only one that varies: groups of
 * two are the pairs of consecutive values, 0 1 | 2 3 | 4 5 | 6 7, whose
 * keys are 4 1 | 6 3 | 7 0 | 5 2 (the lower value first in each group is
 * not promised: compared as sets). */
static void test_order_hand(void)
{
	const float v[8] = { 5, 1, 7, 3, 0, 6, 2, 4 };
	float x[16], scratch[8];
	uint32_t perm[8], stack[64];
	for (int i = 0; i < 8; i++) {
		x[2 * i] = v[i];
		x[2 * i + 1] = 0.5f;
	}
	sparse_group_order(x, 8, 2, 2, perm, scratch, stack);
	const uint32_t want[4][2] = { { 4, 1 }, { 6, 3 }, { 7, 0 }, { 5, 2 } };
	for (int g = 0; g < 4; g++) {
		bool ok = (perm[2 * g] == want[g][0] && perm[2 * g + 1] == want[g][1]) ||
		        (perm[2 * g] == want[g][1] && perm[2 * g + 1] == want[g][0]);
		T_CHECK(ok, "group %d holds keys %u %u, expected %u %u", g, perm[2 * g], perm[2 * g + 1],
		        want[g][0], want[g][1]);
	}
	/* a spread in channel 1 wider than channel 0's: the first cut is on it */
	for (int i = 0; i < 8; i++)
		x[2 * i + 1] = i < 4 ? -100.0f : 100.0f;
	sparse_group_order(x, 8, 2, 4, perm, scratch, stack);
	for (int i = 0; i < 4; i++)
		T_CHECK(perm[i] < 4, "the first group of 4 holds key %u, expected keys 0..3", perm[i]);
}

/* The split query with a reach: 1 is Quest's split, 0 the box's centre.
 * q = (2, -1), box [1, 3] x [-2, 4]: bound max(2, 6) + max(2, -4) = 8,
 * centre 2 x 2 + (-1) x 1 = 3, reach 0.5: 3 + 0.5 x (2 x 1 + 1 x 3) = 5.5. */
static void test_reach(void)
{
	const float q[2] = { 2, -1 }, mnmx[4] = { 1, -2, 3, 4 };
	float qs[4], qq[4];
	const float reach[3] = { 1.0f, 0.0f, 0.5f }, want[3] = { 8.0f, 3.0f, 5.5f };
	for (int i = 0; i < 3; i++) {
		sparse_split_q_reach(q, 2, reach[i], qs);
		float dot = qs[0] * mnmx[0] + qs[1] * mnmx[1] + qs[2] * mnmx[2] + qs[3] * mnmx[3];
		T_CHECK(dot == want[i], "reach %g: %g, expected %g", reach[i], dot, want[i]);
	}
	sparse_split_q(q, 2, qq);
	sparse_split_q_reach(q, 2, 1.0f, qs);
	T_CHECK(memcmp(qs, qq, sizeof qs) == 0, "reach 1 differs from Quest's split");
	T_CHECK(sparse_bound(q, 1, 2, mnmx) == 8.0f, "sparse_bound %g, expected 8",
	        sparse_bound(q, 1, 2, mnmx));
}

/* Keys of one layer and KV head as a sparse_keys view: f32, slot i row i. */
struct keyset {
	float *x;
	uint8_t *kr[1];
	struct sparse_keys k;
};

static void keyset_init(struct keyset *ks, float *x, uint32_t hd)
{
	ks->x = x;
	ks->kr[0] = (uint8_t *)x;
	memset(&ks->k, 0, sizeof ks->k);
	ks->k.kr = ks->kr;
	ks->k.kv_row = hd;
}

/* Check g's grouping of layer 0, head 0 against the keys x (row slot):
 * perm a permutation, gid consistent with it, the bounds the exact min
 * and max over each group's members. */
static void check_groups(const struct sparse_groups *g, const float *x, uint32_t hd)
{
	uint32_t n = g->n_keys, page = g->page;
	uint8_t *seen = calloc(n, 1);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t p = g->perm[i];
		T_CHECK(p < n && !seen[p], "perm[%u] = %u: not a permutation of 0..%u", i, p, n - 1);
		if (p >= n)
			continue;
		seen[p] = 1;
		T_CHECK(g->gid[p] == i / page, "key %u: group %u, perm puts it in %u", p, g->gid[p],
		        i / page);
	}
	T_EQ_INT(g->n_groups, (n + page - 1) / page);
	for (uint32_t j = 0; j < g->n_groups; j++) {
		const float *b = (const float *)sparse_groups_at(g, 0, 0, j);
		for (uint32_t d = 0; d < hd; d++) {
			float mn = INFINITY, mx = -INFINITY;
			for (uint32_t i = j * page; i < n && i < (j + 1) * page; i++) {
				float v = x[(size_t)g->slot[g->perm[i]] * hd + d];
				mn = v < mn ? v : mn;
				mx = v > mx ? v : mx;
			}
			T_CHECK(b[d] == mn && b[hd + d] == mx,
			        "group %u channel %u: bounds %g..%g, members %g..%g", j, d, b[d], b[hd + d], mn,
			        mx);
		}
	}
	free(seen);
}

/* Random keys, 203 of them in groups of 8 (the last of 3): the invariants;
 * then the region's match: the same run stands, a rewritten key, a moved
 * key or another run regroups, and the regrouped bounds are the new keys'. */
static void test_groups_random(void)
{
	uint32_t n = 203, hd = 16, page = 8, n_ctx = 260;
	float *x = malloc((size_t)n_ctx * hd * sizeof(float));
	uint32_t slots[203], stack[128];
	float *xs = malloc((size_t)n * hd * sizeof(float)), *scr = malloc(n * sizeof(float));
	uint64_t rng = 7;
	for (uint32_t i = 0; i < n_ctx * hd; i++)
		x[i] = tinymodel_rand(&rng) * (1 + i % hd);
	for (uint32_t i = 0; i < n; i++)
		slots[i] = 40 + i;
	struct keyset ks;
	keyset_init(&ks, x, hd);
	struct sparse_groups g = { 0 };
	sparse_groups_ensure(&g, page, n_ctx, 1, 1, hd, sizeof(float));
	T_CHECK(!sparse_groups_match(&g, slots, n, 100), "a new region matched");
	T_EQ_INT(g.stale[0], 1);
	sparse_groups_build(&g, &ks.k, 0, 0, xs, scr, stack);
	T_EQ_INT(g.stale[0], 0);
	check_groups(&g, x, hd);
	uint32_t full = 0;
	for (uint32_t j = 0; j < g.n_groups; j++)
		full += j * page + page <= n;
	T_EQ_INT(full, n / page);
	T_CHECK(sparse_groups_match(&g, slots, n, 100), "the same region did not match");
	/* a key rewritten (the backend forgets it): regrouped over the new key */
	sparse_groups_forget(&g, 77);
	for (uint32_t d = 0; d < hd; d++)
		x[77 * hd + d] = 50.0f + (float)d;
	T_CHECK(!sparse_groups_match(&g, slots, n, 100), "a rewritten key left the grouping standing");
	T_EQ_INT(g.stale[0], 1);
	sparse_groups_build(&g, &ks.k, 0, 0, xs, scr, stack);
	check_groups(&g, x, hd);
	/* the same run at another position (the cap moved on), and a shorter run */
	T_CHECK(!sparse_groups_match(&g, slots, n, 101), "a moved region matched");
	sparse_groups_build(&g, &ks.k, 0, 0, xs, scr, stack);
	T_CHECK(!sparse_groups_match(&g, slots + 1, n - 1, 101), "another run matched");
	sparse_groups_build(&g, &ks.k, 0, 0, xs, scr, stack);
	check_groups(&g, x, hd);
	T_EQ_INT(g.builds, 4);
	sparse_groups_free(&g);
	free(x);
	free(xs);
	free(scr);
}

/* The dense mass softmax(q.k) puts on the keys sel marks (n). */
static double mass_of(const float *q, const float *x, uint32_t n, uint32_t hd, const uint8_t *sel)
{
	double z = 0, got = 0;
	for (uint32_t i = 0; i < n; i++) {
		double s = 0;
		for (uint32_t d = 0; d < hd; d++)
			s += (double)q[d] * x[(size_t)i * hd + d];
		z += exp(s);
		got += sel[i] ? exp(s) : 0;
	}
	return got / z;
}

/* 512 keys at one position, 32 of them heavy (q.k about 8, the others
 * within 1 of 0), one in each of the 32 positional pages of 16; a budget
 * of 8 units of 16 keys. Ranked by the positional pages' bounds Quest
 * takes 8 pages and 8 heavy keys; ranked by the content groups' bounds it
 * takes the two groups the heavy keys fill and captures nearly all the
 * mass. */
static void test_scattered(void)
{
	uint32_t n = 512, hd = 16, page = 16, k_units = 8;
	float *x = malloc((size_t)n * hd * sizeof(float)), q[16] = { 0 };
	float *xs = malloc((size_t)n * hd * sizeof(float)), *scr = malloc(n * sizeof(float));
	uint32_t *slots = malloc(n * sizeof(uint32_t)), stack[128];
	uint64_t rng = 11;
	q[0] = 2.0f;
	for (uint32_t i = 0; i < n; i++) {
		slots[i] = i;
		for (uint32_t d = 0; d < hd; d++)
			x[(size_t)i * hd + d] = 0.5f * tinymodel_rand(&rng);
		if (i % 16 == 5) /* heavy: one in every page */
			x[(size_t)i * hd] = 4.0f + 0.1f * tinymodel_rand(&rng);
	}
	uint32_t n_pages = n / page;
	float ub[64], sscr[64];
	uint8_t psel[64], gsel[64], kp[512], kg[512];
	/* positional pages */
	for (uint32_t p = 0; p < n_pages; p++) {
		float mnmx[32];
		for (uint32_t d = 0; d < hd; d++) {
			mnmx[d] = INFINITY;
			mnmx[hd + d] = -INFINITY;
		}
		for (uint32_t i = p * page; i < (p + 1) * page; i++)
			for (uint32_t d = 0; d < hd; d++) {
				float v = x[(size_t)i * hd + d];
				mnmx[d] = v < mnmx[d] ? v : mnmx[d];
				mnmx[hd + d] = v > mnmx[hd + d] ? v : mnmx[hd + d];
			}
		ub[p] = sparse_bound(q, 1, hd, mnmx);
	}
	sparse_top(ub, n_pages, k_units, sscr, psel);
	for (uint32_t i = 0; i < n; i++)
		kp[i] = psel[i / page];
	/* content groups */
	struct keyset ks;
	keyset_init(&ks, x, hd);
	struct sparse_groups g = { 0 };
	sparse_groups_ensure(&g, page, n, 1, 1, hd, sizeof(float));
	sparse_groups_match(&g, slots, n, 0);
	sparse_groups_build(&g, &ks.k, 0, 0, xs, scr, stack);
	for (uint32_t j = 0; j < g.n_groups; j++) {
		float mnmx[32];
		memcpy(mnmx, sparse_groups_at(&g, 0, 0, j), sizeof mnmx);
		ub[j] = sparse_bound(q, 1, hd, mnmx);
		/* a bound: no member's logit above it */
		for (uint32_t i = j * page; i < (j + 1) * page; i++) {
			double s = 0;
			for (uint32_t d = 0; d < hd; d++)
				s += (double)q[d] * x[(size_t)g.perm[i] * hd + d];
			T_CHECK(s <= ub[j] + 1e-4, "group %u: key %u's logit %g over the bound %g", j,
			        g.perm[i], s, ub[j]);
		}
	}
	sparse_top(ub, g.n_groups, k_units, sscr, gsel);
	for (uint32_t i = 0; i < n; i++)
		kg[i] = gsel[g.gid[i]];
	double mp = mass_of(q, x, n, hd, kp), mg = mass_of(q, x, n, hd, kg);
	uint32_t hp = 0, hg = 0;
	for (uint32_t i = 0; i < n; i++) {
		bool heavy = i % 16 == 5;
		hp += heavy && kp[i];
		hg += heavy && kg[i];
	}
	printf("scattered heavy keys, 8 units of 16: pages capture %.3f (%u of 32 heavy keys), "
	       "content groups %.3f (%u)\n",
	       mp, hp, mg, hg);
	T_CHECK(mg >= mp, "groups capture %.3f, less than the pages' %.3f", mg, mp);
	T_EQ_INT(hg, 32);
	T_CHECK(mg > 0.95, "groups capture %.3f of the mass, expected nearly all", mg);
	sparse_groups_free(&g);
	free(x);
	free(xs);
	free(scr);
	free(slots);
}

/* ------------------------------------------------------------ the engine */

/* The capped region: slots [0, n - cap) at position n - cap, as eval
 * sparse's --cap puts them. */
static void cap_region(struct engine *eng, uint32_t n, uint32_t cap)
{
	struct err e;
	for (uint32_t s = 0; s < n - cap; s++)
		if (engine_kv_set_pos(eng, s, (int32_t)(n - cap), &e) != KVS_OK) {
			fprintf(stderr, "set_pos: %s\n", e.msg);
			exit(99);
		}
}

/* A budget covering the cache with a region of 156 candidates (page 8):
 * dense's logits, every key read, quest and hip. */
static void test_full_budget(const struct model *m)
{
	uint32_t nv = m->hp.n_vocab, n = 200;
	const char *specs[] = { "quest:budget=4096,page=8,dense=0,sinks=4,recent=8",
		                    "hip:budget=4096,page=8,block=4,dense=0,sinks=4,recent=8,refresh=2,"
		                    "prefill=0" };
	float *dense = malloc(nv * sizeof(float)), *sp = malloc(nv * sizeof(float));
	for (int i = 0; i < 2; i++) {
		struct engine_sparse s = tinymodel_spec(specs[i]);
		struct engine *eng = tinymodel_engine(m, N_CTX, 2, false);
		struct engine_out o;
		double worst = 0;
		tinymodel_prefill(eng, n);
		cap_region(eng, n, 40);
		for (uint32_t k = 0; k < 4; k++) {
			tinymodel_decode(eng, n + k, NULL, false, dense, &o);
			tinymodel_decode(eng, n + k, &s, false, sp, &o);
			worst = fmax(worst, tinymodel_max_diff(dense, sp, nv));
			T_EQ_INT(o.keys_read, o.keys_dense);
		}
		printf("%s over a region: max |logit diff| %.3g against dense over 4 steps\n", specs[i],
		       worst);
		T_CHECK(worst <= 1e-5, "%s: max diff %g", specs[i], worst);
		engine_free(eng);
	}
	free(dense);
	free(sp);
}

/* With a small budget the region's keys are chosen key by key (the
 * shortlisted groups' keys by exact score): some positional unit inside
 * the region (quest's page, hip's block) is chosen in part, where a
 * positional choice (no region found) takes it all or nothing. The group a key
 * belongs to is checked by test_groups_random, not here: the exact
 * scores would hide a wrong one. */
static void test_small_budget(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t nv = hp->n_vocab, n = 200, nkv = hp->n_head_kv, nl = hp->n_layer, page = 8;
	const char *specs[] = { "quest:budget=48,page=8,dense=0,sinks=4,recent=8",
		                    "hip:budget=48,page=8,block=4,dense=0,sinks=4,recent=8,prefill=0" };
	float *lg = malloc(nv * sizeof(float));
	for (int i = 0; i < 2; i++) {
		struct engine_sparse s = tinymodel_spec(specs[i]);
		struct engine *eng = tinymodel_engine(m, N_CTX, 2, false);
		struct engine_out o;
		tinymodel_prefill(eng, n);
		cap_region(eng, n, 40);
		tinymodel_decode(eng, n, &s, true, lg, &o);
		uint32_t split = 0, mv = n + 1;
		for (uint32_t l = 0; l < nl; l++)
			for (uint32_t h = 0; h < nkv; h++) {
				const uint8_t *row = o.sel + ((size_t)l * nkv + h) * mv;
				/* the region's whole units of a positional choice, slots
				 * 4..159 after the 4 sinks: quest's pages of 8 from slot 0,
				 * hip's blocks of 4 from the first candidate */
				uint32_t u = i == 0 ? page : 4, off = i == 0 ? 0 : 4;
				for (uint32_t p = off ? 0 : 1; off + (p + 1) * u <= n - 40; p++) {
					uint32_t on = 0;
					for (uint32_t j = off + p * u; j < off + (p + 1) * u; j++)
						on += row[j];
					split += on > 0 && on < u;
				}
			}
		printf("%s: %u region units chosen in part over %u (layer, KV head)\n", specs[i], split,
		       nl * nkv);
		T_CHECK(split > 0, "%s: every region unit all or nothing: chosen by position", specs[i]);
		T_CHECK(o.keys_read < o.keys_dense, "%s: dense", specs[i]);
		engine_free(eng);
	}
	free(lg);
}

/* A region key rewritten (a copy of another region key, at the same
 * position) or moved after a step grouped the region: the next step
 * regroups, and gives, bit for bit, the logits of an engine that was
 * changed before its first step. */
static void test_regroup(const struct model *m)
{
	uint32_t nv = m->hp.n_vocab, n = 200;
	const char *specs[] = { "quest:budget=48,page=8,dense=0,sinks=4,recent=8",
		                    "hip:budget=48,page=8,block=4,dense=0,sinks=4,recent=8,prefill=0" };
	uint32_t dst[6] = { 10, 11, 12, 13, 14, 15 }, src[6] = { 150, 151, 152, 153, 154, 155 };
	float *a = malloc(nv * sizeof(float)), *b = malloc(nv * sizeof(float));
	float *before = malloc(nv * sizeof(float));
	struct err e;
	for (int i = 0; i < 2; i++)
		for (int moved = 0; moved <= 1; moved++) {
			struct engine_sparse s = tinymodel_spec(specs[i]);
			struct engine *fresh = tinymodel_engine(m, N_CTX, 2, false);
			struct engine *old = tinymodel_engine(m, N_CTX, 2, false);
			struct engine_out o;
			struct engine *both[2] = { fresh, old };
			for (int k = 0; k < 2; k++) {
				tinymodel_prefill(both[k], n);
				cap_region(both[k], n, 40);
			}
			tinymodel_decode(old, n, &s, false, before, &o); /* groups the old keys */
			for (int k = 0; k < 2; k++) {
				int rc = moved ? engine_kv_set_pos(both[k], 20, 170, &e)
				               : engine_kv_copy(both[k], dst, src, 6, &e);
				if (rc != KVS_OK) {
					fprintf(stderr, "change: %s\n", e.msg);
					exit(99);
				}
			}
			tinymodel_decode(fresh, n, &s, false, a, &o);
			tinymodel_decode(old, n, &s, false, b, &o);
			T_CHECK(memcmp(a, b, nv * sizeof(float)) == 0,
			        "%s, a region key %s: max diff %g against an engine that never grouped the "
			        "old keys",
			        specs[i], moved ? "moved" : "rewritten", tinymodel_max_diff(a, b, nv));
			/* the change matters, or the case tests nothing */
			T_CHECK(tinymodel_max_diff(a, before, nv) > 0, "%s: the change left the logits alone",
			        specs[i]);
			engine_free(fresh);
			engine_free(old);
		}
	free(a);
	free(b);
	free(before);
}

int main(void)
{
	struct model *m;
	uint8_t *buf;
	test_order_hand();
	test_reach();
	test_groups_random();
	test_scattered();
	tinymodel_load_attn(&m, &buf);
	test_full_budget(m);
	test_small_budget(m);
	test_regroup(m);
	model_free(m);
	free(buf);
	return t_done("test-sparse-group");
}
