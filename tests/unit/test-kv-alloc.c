/*
 * test-kv-alloc.c: head budgets of different sizes (alloc=adaptive,
 * kv_alloc.c) and the per-head store's shared cells they need.
 *
 *   - by hand: one layer, three KV heads, ten candidates, uniform targets
 *     of 4: a head whose scores sit on one token, one whose scores are
 *     spread and one in between get 1, 9 and 2 (floor 0.25: each keeps its
 *     own top 1 first, the other 9 go by one ranking of the layer's
 *     entries); with sinks 2 they get 3, 5 and 4; with floor 1, 4 each; a
 *     head that keeps only 2 candidates gets at most 2 and its share goes
 *     to the others;
 *   - random dialogues on a tiny random llama (2 layers, 2 KV heads) with
 *     the slot store and the per-head store (snapkv and kvzip, spans on
 *     and off): at every turn, recounted from the masks, each layer's heads
 *     keep at most budget x n_head_kv entries together, the bytes held by
 *     the per-head store (its entries) never pass budget x bytes_per_token,
 *     the store's cells are each in use or free exactly once
 *     (kv_cache_check, which also checks every head's selection for a
 *     split span at each eviction), and the heads do keep different
 *     numbers: some head keeps more than the budget (uniform budgets never
 *     let one), so a layer's shared cells are what holds it, and with a
 *     small scratch a head holds more entries than the store's rows per
 *     layer; the stats' fullest head (the KV view's line) is the fullest
 *     recounted.
 *
 * test-kv-store.c runs the same policies under the slot store and the
 * per-head store in lockstep (the same logits and sets, bit for bit) and
 * keeping everything (bit-identical to full); test-kv-span.c checks that
 * no adaptive head splits TIGER-42.
 */
#include "kv/kv-int.h"
#include "model/model.h"
#include "tests/unit/test.h"
#include "tests/util/ggufw.h"
#include "tests/util/tinymodel.h"

#include <math.h>
#include <stdint.h>

/* ------------------------------------------------------------- by hand */

enum { HAND_N = 10, HAND_HEADS = 3 };

/* The scores of the hand case, (HAND_N, 1 layer, HAND_HEADS) as acc holds
 * them: head 0 looks at token 2 only, head 1 spreads over all, head 2
 * mostly at 5 and 6. */
static void hand_scores(float *acc)
{
	for (uint32_t i = 0; i < HAND_N; i++) {
		acc[i * HAND_HEADS + 0] = i == 2 ? 0.9f : 0.01f;
		acc[i * HAND_HEADS + 1] = 0.5f - 0.05f * (float)i;
		acc[i * HAND_HEADS + 2] = i == 5 ? 0.6f : i == 6 ? 0.32f : 0.02f;
	}
}

/* kv_alloc_targets on a hand-made cache of one layer: spec's policy,
 * uniform targets of 4, head 0 keeping only the candidates in keep0 (NULL:
 * all); out gets the three targets. */
static void hand_alloc(const char *spec, const uint8_t *keep0, uint32_t *out)
{
	struct hparams hp = { 0 };
	hp.n_layer = 1;
	hp.n_head_kv = HAND_HEADS;
	struct kv_cache c;
	memset(&c, 0, sizeof c);
	struct err e;
	T_EQ_INT(kv_policy_parse(spec, &c.cfg.policy, &e), KVS_OK);
	c.hp = &hp;
	c.n = c.n_ctx = HAND_N;
	struct kv_tok toks[HAND_N];
	uint8_t hkeep[HAND_HEADS * HAND_N];
	uint32_t cand[HAND_N], unif[HAND_HEADS] = { 4, 4, 4 };
	float acc[HAND_N * HAND_HEADS];
	memset(toks, 0, sizeof toks);
	memset(hkeep, 1, sizeof hkeep);
	for (uint32_t i = 0; i < HAND_N; i++) {
		toks[i].slot = i;
		toks[i].score = 1; /* scored: not +inf */
		cand[i] = i;
		if (keep0 != NULL)
			hkeep[i] = keep0[i];
	}
	hand_scores(acc);
	c.toks = toks;
	c.hkeep = hkeep;
	struct kv_select s = { 0 };
	s.toks = toks;
	s.cand = cand;
	s.n = HAND_N;
	s.acc = acc;
	s.acc_stride = HAND_HEADS;
	kv_alloc_targets(&c, &s, kv_policy_floor(&c.cfg.policy), unif, out);
}

static void test_hand(void)
{
	uint32_t t[HAND_HEADS];
	/* floors 1 each (head 0: 0.9, head 1: 0.5, head 2: 0.6); the other 9 by
	 * score: head 1's 0.45 0.4 0.35, head 2's 0.32, head 1's 0.3 0.25 0.2
	 * 0.15 0.1 */
	hand_alloc("snapkv:heads=1,alloc=adaptive,floor=0.25,sinks=0", NULL, t);
	T_EQ_INT(t[0], 1);
	T_EQ_INT(t[1], 9);
	T_EQ_INT(t[2], 2);
	/* sinks 2: each head's first two candidates rank first; floors: token 0;
	 * the 9: the three token 1s, then 0.9 (h0), 0.6 (h2), 0.4 0.35 (h1),
	 * 0.32 (h2), 0.3 (h1) */
	hand_alloc("kvzip:heads=1,alloc=adaptive,floor=0.25,sinks=2", NULL, t);
	T_EQ_INT(t[0], 3);
	T_EQ_INT(t[1], 5);
	T_EQ_INT(t[2], 4);
	/* floor 1: the uniform budgets */
	hand_alloc("snapkv:heads=1,alloc=adaptive,floor=1,sinks=0", NULL, t);
	T_EQ_INT(t[0], 4);
	T_EQ_INT(t[1], 4);
	T_EQ_INT(t[2], 4);
	/* head 0 keeps only tokens 2 and 7: its floor is 2 at most, and the
	 * rest of the layer's 12 goes to the others: floor 0.5 gives head 0
	 * both (0.9, 0.01), heads 1 and 2 two each (0.5 0.45; 0.6 0.32), the 6
	 * left: head 1's 0.4 0.35 0.3 0.25 0.2 0.15 */
	uint8_t keep0[HAND_N] = { 0, 0, 1, 0, 0, 0, 0, 1, 0, 0 };
	hand_alloc("snapkv:heads=1,alloc=adaptive,floor=0.5,sinks=0", keep0, t);
	T_EQ_INT(t[0], 2);
	T_EQ_INT(t[1], 8);
	T_EQ_INT(t[2], 2);
	/* the option: only with per-head sets, named in one line */
	struct kv_policy p;
	struct err e;
	T_EQ_INT(kv_policy_parse("snapkv:alloc=adaptive", &p, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "alloc=adaptive") && strstr(e.msg, "heads=1"), "%s", e.msg);
	T_EQ_INT(kv_policy_parse("kvzip:heads=1,alloc=sometimes", &p, &e), KVS_EARG);
	T_EQ_INT(kv_policy_parse("snapkv:heads=1,rank=max", &p, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "rank=max") && strstr(e.msg, "heads=0"), "%s", e.msg);
	T_EQ_INT(kv_policy_parse("kvzip:heads=1", &p, &e), KVS_OK);
	T_CHECK(kv_policy_floor(&p) < 0, "uniform by default");
}

/* ------------------------------------------------------------ dialogues */

static uint64_t rng = 0x51AB5EEDull;

static uint32_t rnd_u32(uint32_t n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)((rng >> 11) % n);
}

/* A cache for spec at budget on an engine sized as gen.c sizes it (rows
 * for store=heads). */
static struct kv_cache *mk_cache(const struct model *m, const char *spec, uint32_t budget,
                                 struct engine **eng)
{
	struct engine_config ec;
	struct kv_config c;
	struct kv_cache *kv;
	struct err e;
	kv_config_default(&c);
	if (kv_policy_parse(spec, &c.policy, &e) != KVS_OK) {
		fprintf(stderr, "policy %s: %s\n", spec, e.msg);
		exit(99);
	}
	c.budget = budget;
	c.n_batch = 16;
	engine_config_default(&ec);
	ec.backend = ENGINE_BACKEND_CPU;
	ec.n_threads = 1;
	ec.n_ctx = budget + kv_policy_scratch(&c.policy, budget);
	ec.n_rows = kv_policy_rows(&c.policy, budget);
	ec.kv_type = ENGINE_KV_F32;
	if (engine_create(eng, m, &ec, &e) != KVS_OK || kv_cache_create(&kv, *eng, &c, &e) != KVS_OK) {
		fprintf(stderr, "cache %s: %s\n", spec, e.msg);
		exit(99);
	}
	return kv;
}

/* Random turns: a prompt of 4..23 tokens and a reply of 1..6 fed one at a
 * time; the checks above at every turn. Returns the most entries one head
 * held over the per-head store's rows per layer (0 when never, or on the
 * slot store). */
static uint32_t test_dialogue(const struct model *m, const char *spec, uint32_t turns)
{
	const struct hparams *hp = &m->hp;
	uint32_t budget = 40, nkv = hp->n_head_kv, most = 0, bad = 0;
	struct engine *eng;
	struct kv_cache *kv = mk_cache(m, spec, budget, &eng);
	bool store = engine_kv_row_map(eng) != NULL;
	struct err e;
	for (uint32_t t = 0; t < turns && bad < 3; t++) {
		int32_t ids[24];
		uint32_t len = 4 + rnd_u32(20), reply = 1 + rnd_u32(6);
		for (uint32_t i = 0; i < len; i++)
			ids[i] = 3 + (int32_t)rnd_u32(hp->n_vocab - 3);
		int rc = kv_cache_begin_turn(kv, KV_ROLE_USER, len, &e);
		if (rc == KVS_OK)
			rc = kv_cache_feed(kv, ids, len, &e);
		for (uint32_t r = 0; r < reply && rc == KVS_OK; r++) {
			int32_t tok = 3 + (int32_t)rnd_u32(hp->n_vocab - 3);
			rc = kv_cache_feed(kv, &tok, 1, &e);
		}
		if (rc == KVS_OK)
			rc = kv_cache_check(kv, &e);
		if (rc != KVS_OK) {
			bad++;
			T_CHECK(false, "%s turn %u: %s", spec, t, e.msg);
			continue;
		}
		/* recount from the masks: each layer's entries, each head's */
		uint64_t worst = 0;
		uint32_t fullest = 0;
		for (uint32_t l = 0; l < hp->n_layer; l++) {
			uint64_t layer = 0;
			for (uint32_t g = 0; g < nkv; g++) {
				const uint8_t *row = kv->hkeep + (size_t)(l * nkv + g) * kv->n_ctx;
				uint32_t k = 0;
				for (uint32_t i = 0; i < kv->n; i++)
					k += row[kv->toks[i].slot];
				fullest = KVS_MAX(fullest, k);
				layer += k;
			}
			worst = KVS_MAX(worst, layer);
		}
		most = KVS_MAX(most, fullest);
		struct kv_stats st;
		kv_cache_stats(kv, &st);
		/* the KV view's "the fullest keeps": the fullest head itself */
		if (st.heads_load != fullest) {
			bad++;
			T_CHECK(false, "%s turn %u: stats say the fullest head keeps %u, the masks %u", spec, t,
			        st.heads_load, fullest);
		}
		uint64_t cap = (uint64_t)budget * st.bytes_per_token;
		if (worst > (uint64_t)budget * nkv || st.bytes_entries > cap || (store && st.bytes > cap)) {
			bad++;
			T_CHECK(false,
			        "%s turn %u: a layer keeps %llu entries (budget %u x %u heads); %llu bytes "
			        "held, %llu kept, budget's %llu",
			        spec, t, (unsigned long long)worst, budget, nkv, (unsigned long long)st.bytes,
			        (unsigned long long)st.bytes_entries, (unsigned long long)cap);
		}
	}
	T_CHECK(most > budget, "%s: no head ever kept more than the budget %u (most %u)", spec, budget,
	        most);
	uint32_t rows = store ? engine_kv_rows(eng) : 0;
	kv_cache_free(kv);
	engine_free(eng);
	return store && most > rows ? most - rows : 0;
}

int main(void)
{
	struct tinymodel_spec s;
	struct model *m;
	uint8_t *buf;
	test_hand();
	tinymodel_defaults(&s, "llama");
	s.n_embd = 64; /* head_dim 16: the CPU backend's attention wants multiples of 16 */
	s.n_ff = 128;
	s.scale = 0.5f;
	tinymodel_load(&s, &m, &buf);
	test_dialogue(m, "snapkv:heads=1,alloc=adaptive,spread=3,store=heads", 200);
	test_dialogue(m, "snapkv:heads=1,alloc=adaptive,spread=2", 200);
	test_dialogue(m, "kvzip:heads=1,alloc=adaptive,spread=3,store=heads", 200);
	test_dialogue(m, "kvzip:heads=1,alloc=adaptive,floor=0,spread=2,store=heads,span=off", 200);
	test_dialogue(m, "kvzip:heads=1,alloc=adaptive,reread=all,chunk=16,spread=2,store=heads", 150);
	/* a small scratch (8 rows): a head holds more entries than the rows of
	 * a layer, in cells its layer's other head left */
	T_CHECK(test_dialogue(m, "snapkv:heads=1,alloc=adaptive,window=8,spread=3,store=heads", 200) >
	                0,
	        "no head ever held more entries than the per-head store's rows");
	model_free(m);
	free(buf);
	return t_done("test-kv-alloc");
}
