/*
 * test-kv-store.c: the per-head store (store=heads; kv_store.c and the
 * CPU backend's row maps, cpu-rows.c) on a tiny random llama (2 layers, 4
 * query heads, 2 KV heads, head_dim 16), F32 and F16 caches.
 *
 *   - the same random dialogue under the slot store and the per-head store
 *     (the same policy, spread 1 to 3) gives, turn by turn, bit for bit the
 *     same logits and the same per-head keep-sets (the slot store's own
 *     equality with a masked plain engine is test-kv-heads.c's): every
 *     attention path reads the rows, the writes land in them; the prefill
 *     tiles and the split decode are both on the way;
 *   - through it the store's bytes: the bytes held never pass the budget's,
 *     the allocation is the budget plus the policy's fixed scratch (rows),
 *     never spread x the budget, while the union does pass the budget (the
 *     heads keep different tokens: the test can fail), every row is in use
 *     or free exactly once (kv_cache_check) and the rows in use never pass
 *     the rows;
 *   - a per-head policy on the store that never evicts is bit-identical to
 *     policy full on a plain engine;
 *   - a snapshot round trip (the raw rows of every cached token, saved as
 *     engine_kv_save gives them, then kv_cache_restore and
 *     kv_cache_load_rows into a fresh store): the heads' sets come back as
 *     they were (from the zero rows of the heads that dropped a token), and
 *     the next turns give bit for bit the logits the original cache gives;
 *   - the same with adaptive head budgets (alloc=adaptive), where a head
 *     holds more entries than the budget, in cells of its layer's shared
 *     pool (any head takes any free cell of its layer);
 *   - one line for what cannot run: store=heads on an engine made with a
 *     row per slot, a budget over the store's rows, sparse attention over
 *     the store, a bad row map handed to the engine.
 */
#include "kv/kv-int.h"
#include "model/model.h"
#include "tests/unit/test.h"
#include "tests/util/ggufw.h"
#include "tests/util/tinymodel.h"

#include <math.h>
#include <stdint.h>

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint32_t rnd_u32(uint32_t n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)((rng >> 11) % n);
}

/* An engine of n_ctx slots and n_rows rows per head (0: the slot store). */
static struct engine *mk_engine(const struct model *m, uint32_t n_ctx, uint32_t n_rows, bool f32)
{
	struct engine_config c;
	struct engine *eng;
	struct err e;
	engine_config_default(&c);
	c.backend = ENGINE_BACKEND_CPU;
	c.n_threads = 2;
	c.n_ctx = n_ctx;
	c.n_rows = n_rows;
	c.kv_type = f32 ? ENGINE_KV_F32 : ENGINE_KV_F16;
	if (engine_create(&eng, m, &c, &e) != KVS_OK) {
		fprintf(stderr, "engine: %s\n", e.msg);
		exit(99);
	}
	return eng;
}

/* A cache for spec at budget on an engine sized as gen.c sizes it. */
static struct kv_cache *mk_cache(const struct model *m, const char *spec, uint32_t budget, bool f32,
                                 struct engine **eng)
{
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
	*eng = mk_engine(m, budget + kv_policy_scratch(&c.policy, budget),
	                 kv_policy_rows(&c.policy, budget), f32);
	if (kv_cache_create(&kv, *eng, &c, &e) != KVS_OK) {
		fprintf(stderr, "cache %s: %s\n", spec, e.msg);
		exit(99);
	}
	return kv;
}

/* One turn of a random dialogue (its tokens drawn from *seed, so that two
 * caches get the same): a prompt of 4..23 tokens and a reply of 1..6 fed
 * one at a time. */
static int turn(struct kv_cache *kv, uint64_t *seed, uint32_t n_vocab, struct err *e)
{
	uint64_t keep = rng;
	rng = *seed;
	int32_t ids[24];
	uint32_t len = 4 + rnd_u32(20), reply = 1 + rnd_u32(6);
	for (uint32_t i = 0; i < len; i++)
		ids[i] = 3 + (int32_t)rnd_u32(n_vocab - 3);
	int32_t out[6];
	for (uint32_t i = 0; i < reply; i++)
		out[i] = 3 + (int32_t)rnd_u32(n_vocab - 3);
	*seed = rng;
	rng = keep;
	int rc = kv_cache_begin_turn(kv, KV_ROLE_USER, len, e);
	if (rc == KVS_OK)
		rc = kv_cache_feed(kv, ids, len, e);
	for (uint32_t r = 0; r < reply && rc == KVS_OK; r++)
		rc = kv_cache_feed(kv, &out[r], 1, e);
	return rc;
}

/* Whether a and b hold the same tokens at the same positions, each kept
 * by the same heads. */
static bool same_sets(const struct kv_cache *a, const struct kv_cache *b)
{
	uint32_t nl, nkv, n = kv_cache_n(a);
	if (n != kv_cache_n(b))
		return false;
	uint8_t *ma = kv_cache_head_map(a, &nl, &nkv), *mb = kv_cache_head_map(b, &nl, &nkv);
	bool same = (ma == NULL) == (mb == NULL) &&
	        (ma == NULL || memcmp(ma, mb, (size_t)n * nl * nkv) == 0);
	for (uint32_t i = 0; i < n && same; i++)
		same = kv_cache_toks(a)[i].orig_pos == kv_cache_toks(b)[i].orig_pos &&
		        kv_cache_toks(a)[i].pos == kv_cache_toks(b)[i].pos;
	free(ma);
	free(mb);
	return same;
}

/* The slot store and the per-head store in lockstep over a random
 * dialogue: the same logits and sets every turn; the store's bytes. */
static void test_same(const struct model *m, const char *spec, uint32_t turns, bool f32)
{
	const struct hparams *hp = &m->hp;
	uint32_t budget = 40, nh = hp->n_layer * hp->n_head_kv;
	char heads[160];
	snprintf(heads, sizeof heads, "%s,store=heads", spec);
	struct engine *ea, *eb;
	struct kv_cache *a = mk_cache(m, spec, budget, f32, &ea);
	struct kv_cache *b = mk_cache(m, heads, budget, f32, &eb);
	struct kv_policy pol;
	struct err e;
	T_EQ_INT(kv_policy_parse(spec, &pol, &e), KVS_OK);
	uint32_t spread = (uint32_t)kv_policy_get(&pol, "spread");
	uint32_t rows = kv_policy_rows(&b->cfg.policy, budget);
	/* the rows: the budget and the fixed scratch, whatever the spread */
	T_EQ_INT(rows, budget + kv_policy_scratch(&pol, budget) - (spread - 1) * budget);
	T_EQ_INT(engine_kv_rows(eb), rows);
	T_EQ_INT(engine_kv_rows(ea), engine_n_ctx(ea));
	uint64_t seed_a = 0x1234567ull + turns, seed_b = seed_a;
	uint32_t bad = 0, most_union = 0, diff_turn = UINT32_MAX;
	for (uint32_t t = 0; t < turns && bad < 3; t++) {
		int ra = turn(a, &seed_a, hp->n_vocab, &e);
		int rb = ra == KVS_OK ? turn(b, &seed_b, hp->n_vocab, &e) : ra;
		if (rb == KVS_OK)
			rb = kv_cache_check(b, &e);
		if (rb != KVS_OK) {
			bad++;
			T_CHECK(false, "%s turn %u: %s", heads, t, e.msg);
			continue;
		}
		const float *la = kv_cache_logits(a), *lb = kv_cache_logits(b);
		if (diff_turn == UINT32_MAX &&
		    (la == NULL || lb == NULL || memcmp(la, lb, hp->n_vocab * sizeof(float)) != 0 ||
		     !same_sets(a, b)))
			diff_turn = t;
		struct kv_stats sa, sb;
		kv_cache_stats(a, &sa);
		kv_cache_stats(b, &sb);
		uint64_t bpt = sb.bytes_per_token;
		/* held: the kept entries, within the budget's; allocated: the rows */
		if (sb.bytes != sb.bytes_entries || sb.bytes > (uint64_t)budget * bpt ||
		    sb.bytes_allocated != (uint64_t)rows * bpt ||
		    kv_store_entries(b) > (uint64_t)nh * rows || sb.bytes_entries != sa.bytes_entries) {
			bad++;
			T_CHECK(false,
			        "%s turn %u: %llu bytes held, %llu kept, %llu allocated, budget %u x %llu, "
			        "%llu rows in use",
			        heads, t, (unsigned long long)sb.bytes, (unsigned long long)sb.bytes_entries,
			        (unsigned long long)sb.bytes_allocated, budget, (unsigned long long)bpt,
			        (unsigned long long)kv_store_entries(b));
		}
		most_union = KVS_MAX(most_union, kv_cache_n(b));
	}
	T_CHECK(diff_turn == UINT32_MAX, "%s: turn %u gave other logits or sets than the slot store",
	        heads, diff_turn);
	struct kv_stats sa, sb;
	kv_cache_stats(a, &sa);
	kv_cache_stats(b, &sb);
	T_CHECK(sb.bytes_peak <= (uint64_t)budget * sb.bytes_per_token,
	        "%s: peak %llu bytes held, over the budget's", heads,
	        (unsigned long long)sb.bytes_peak);
	if (spread > 1) {
		/* the heads kept different tokens, at the budget's memory */
		T_CHECK(most_union > budget, "%s: the union never passed the budget", heads);
		T_CHECK(sb.bytes_allocated < sa.bytes_allocated,
		        "%s: %llu bytes allocated, the slot store %llu", heads,
		        (unsigned long long)sb.bytes_allocated, (unsigned long long)sa.bytes_allocated);
	}
	kv_cache_free(a);
	kv_cache_free(b);
	engine_free(ea);
	engine_free(eb);
}

/* A per-head policy on the store that never evicts computes what full
 * computes on a plain engine, bit for bit. */
static void test_keep_all(const struct model *m, const char *spec)
{
	const struct hparams *hp = &m->hp;
	struct engine *ea, *eb;
	struct kv_cache *a = mk_cache(m, "full", 200, true, &ea);
	struct kv_cache *b = mk_cache(m, spec, 200, true, &eb);
	struct err e;
	T_CHECK(engine_kv_row_map(eb) != NULL, "%s: a per-head store", spec);
	uint64_t sa = 77, sb = 77;
	bool same = true;
	for (int t = 0; t < 5; t++) {
		T_CHECK(turn(a, &sa, hp->n_vocab, &e) == KVS_OK, "%s", e.msg);
		T_CHECK(turn(b, &sb, hp->n_vocab, &e) == KVS_OK, "%s", e.msg);
		const float *la = kv_cache_logits(a), *lb = kv_cache_logits(b);
		same = same && la && lb && memcmp(la, lb, hp->n_vocab * sizeof(float)) == 0;
	}
	T_CHECK(same, "%s keeping everything: logits differ from full", spec);
	kv_cache_free(a);
	kv_cache_free(b);
	engine_free(ea);
	engine_free(eb);
}

/* A snapshot of a (its tokens, accumulators, logits, raw rows) restored
 * into a fresh cache on the same kind of store: the same sets, then the
 * same logits turn by turn. */
static void test_resume(const struct model *m, const char *spec, uint32_t turns)
{
	const struct hparams *hp = &m->hp;
	uint32_t budget = 40;
	struct engine *ea, *eb;
	/* F32: a restored key is re-rotated from its stored pre-RoPE key, which
	 * with F16 is rounded before the rotation (the slot store's too) */
	struct kv_cache *a = mk_cache(m, spec, budget, true, &ea);
	struct kv_cache *b = mk_cache(m, spec, budget, true, &eb);
	struct err e;
	uint64_t seed = 4242;
	uint32_t part = 0, nh = hp->n_layer * hp->n_head_kv;
	for (uint32_t t = 0; t < turns; t++)
		T_CHECK(turn(a, &seed, hp->n_vocab, &e) == KVS_OK, "%s", e.msg);
	for (uint32_t i = 0; i < kv_cache_n(a); i++)
		part += kv_cache_toks(a)[i].n_heads < nh;
	T_CHECK(part > 0, "%s: no token is kept by only some heads: nothing to restore", spec);
	uint32_t n = kv_cache_n(a);
	uint64_t bpt = engine_kv_bytes_per_slot(ea);
	uint8_t *rows = xmallocarray((size_t)n * bpt, 1); /* (n, bytes_per_slot) */
	for (uint32_t i = 0; i < n; i++)
		T_CHECK(engine_kv_save(ea, kv_cache_toks(a)[i].slot, rows + i * bpt, &e) == KVS_OK, "%s",
		        e.msg);
	struct kv_restore r = { 0 };
	r.toks = kv_cache_toks(a);
	r.n = n;
	r.next_pos = a->next_pos;
	r.turn = kv_cache_turn(a);
	r.logits = kv_cache_logits(a);
	r.acc = kv_cache_acc(a);
	int rc = kv_cache_restore(b, &r, &e);
	if (rc == KVS_OK)
		rc = kv_cache_load_rows(b, rows, &e);
	if (rc == KVS_OK)
		rc = kv_cache_check(b, &e);
	T_CHECK(rc == KVS_OK, "%s restore: %s", spec, e.msg);
	T_CHECK(same_sets(a, b), "%s: the restored heads keep other sets than the saved ones", spec);
	uint32_t diff = UINT32_MAX;
	uint64_t sa = seed, sb = seed;
	for (uint32_t t = 0; t < 30 && rc == KVS_OK; t++) {
		rc = turn(a, &sa, hp->n_vocab, &e);
		if (rc == KVS_OK)
			rc = turn(b, &sb, hp->n_vocab, &e);
		const float *la = kv_cache_logits(a), *lb = kv_cache_logits(b);
		if (diff == UINT32_MAX &&
		    (rc != KVS_OK || la == NULL || lb == NULL ||
		     memcmp(la, lb, hp->n_vocab * sizeof(float)) != 0))
			diff = t;
	}
	T_CHECK(rc == KVS_OK && diff == UINT32_MAX, "%s: after the restore turn %u differs (%s)", spec,
	        diff, rc == KVS_OK ? "logits" : e.msg);
	free(rows);
	kv_cache_free(a);
	kv_cache_free(b);
	engine_free(ea);
	engine_free(eb);
}

/* What cannot run says so in one line. */
static void test_refuse(const struct model *m)
{
	struct kv_config c;
	struct kv_cache *kv;
	struct err e;
	kv_config_default(&c);
	T_EQ_INT(kv_policy_parse("kvzip:heads=1,store=heads,spread=2", &c.policy, &e), KVS_OK);
	c.budget = 40;
	/* an engine with a row per slot */
	struct engine *slots = mk_engine(m, 300, 0, true);
	T_EQ_INT(kv_cache_create(&kv, slots, &c, &e), KVS_EUNSUPPORTED);
	T_CHECK(strstr(e.msg, "store=heads") && strstr(e.msg, "expected"), "%s", e.msg);
	engine_free(slots);
	/* a store too small for the budget, then a budget over its rows */
	struct engine *eng = mk_engine(m, 300, 100, true);
	T_EQ_INT(kv_cache_create(&kv, eng, &c, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "rows") && strstr(e.msg, "100"), "%s", e.msg);
	engine_free(eng);
	eng = mk_engine(m, 300, kv_policy_rows(&c.policy, 40), true);
	T_EQ_INT(kv_cache_create(&kv, eng, &c, &e), KVS_OK);
	T_EQ_INT(kv_cache_set_budget(kv, 60, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "KV budget 60") && strstr(e.msg, "rows"), "%s", e.msg);
	struct engine_sparse sp;
	engine_sparse_default(&sp);
	sp.mode = ENGINE_SPARSE_QUEST;
	T_EQ_INT(kv_cache_set_sparse(kv, &sp, &e), KVS_EUNSUPPORTED);
	T_CHECK(strstr(e.msg, "per-head store"), "%s", e.msg);
	/* the engine refuses a visible slot a head keeps without a cell */
	int32_t tok = 5, pos = 0;
	uint32_t slot = 0;
	struct engine_batch b = { 0 };
	b.n_tokens = 1;
	b.tokens = &tok;
	b.pos = &pos;
	b.slot = &slot;
	b.n_visible = 1;
	b.visible = &slot;
	struct engine_out o;
	uint32_t *map = engine_kv_row_map(eng), n_ctx = engine_n_ctx(eng);
	uint32_t nh = m->hp.n_layer * m->hp.n_head_kv;
	uint32_t nkv = m->hp.n_head_kv;
	for (uint32_t r = 0; r < nh; r++)
		map[(size_t)r * n_ctx] = r % nkv; /* slot 0 in cell (row 0, its own column) */
	T_EQ_INT(engine_forward(eng, &b, &o, &e), KVS_OK);
	map[n_ctx + 0] = ENGINE_ROW_NONE; /* but layer 0, KV head 1 */
	T_EQ_INT(engine_forward(eng, &b, &o, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "layer 0 KV head 1") && strstr(e.msg, "cell of its own"), "%s", e.msg);
	/* a layer's heads share its cells: any free one will do, ... */
	map[n_ctx + 0] = 7 * nkv;
	T_EQ_INT(engine_forward(eng, &b, &o, &e), KVS_OK);
	/* ... but never one another head of the layer holds */
	map[n_ctx + 0] = 0;
	T_EQ_INT(engine_forward(eng, &b, &o, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "layer 0 KV head 1") && strstr(e.msg, "cell 0"), "%s", e.msg);
	map[n_ctx + 0] = 1;
	map[nkv * n_ctx + 0] = 0 + 5000; /* layer 1, KV head 0: past the cells */
	T_EQ_INT(engine_forward(eng, &b, &o, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "layer 1 KV head 0") && strstr(e.msg, "5000"), "%s", e.msg);
	for (uint32_t r = 0; r < nh; r++)
		map[(size_t)r * n_ctx] = ENGINE_ROW_NONE; /* as the cache left it */
	kv_cache_free(kv);
	engine_free(eng);
}

int main(void)
{
	struct tinymodel_spec s;
	struct model *m;
	uint8_t *buf;
	tinymodel_defaults(&s, "llama");
	s.n_embd = 64; /* head_dim 16: the CPU backend's attention wants multiples of 16 */
	s.n_ff = 128;
	s.scale = 0.5f;
	tinymodel_load(&s, &m, &buf);
	test_refuse(m);
	test_keep_all(m, "kvzip:heads=1,store=heads,spread=2");
	test_keep_all(m, "snapkv:heads=1,store=heads,spread=3");
	test_same(m, "snapkv:heads=1,spread=2", 150, true);
	test_same(m, "h2o:heads=1,spread=2", 150, false);
	test_same(m, "kvzip:heads=1,spread=2", 150, true);
	test_same(m, "kvzip:heads=1,spread=3,span=off", 100, false);
	test_same(m, "snapkv:heads=1", 100, false);
	test_resume(m, "kvzip:heads=1,store=heads,spread=2", 40);
	test_resume(m, "h2o:heads=1,store=heads,spread=2", 40);
	test_same(m, "kvzip:heads=1,reread=all,chunk=16,spread=2", 100, true);
	/* adaptive head budgets: a head may hold more entries than the budget */
	test_keep_all(m, "snapkv:heads=1,alloc=adaptive,store=heads,spread=2");
	test_same(m, "snapkv:heads=1,alloc=adaptive,spread=3", 150, true);
	test_same(m, "kvzip:heads=1,alloc=adaptive,spread=2,span=off", 100, false);
	test_resume(m, "kvzip:heads=1,alloc=adaptive,store=heads,spread=3", 40);
	/* a small scratch: heads hold more entries than the rows (test-kv-alloc.c) */
	test_same(m, "snapkv:heads=1,alloc=adaptive,window=8,spread=3", 150, true);
	model_free(m);
	free(buf);
	return t_done("test-kv-store");
}
