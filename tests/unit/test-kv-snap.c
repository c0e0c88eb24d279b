/*
 * test-kv-snap.c: going back to a snapshot of the KV cache (kv_snap.c:
 * kv_cache_snap, kv_cache_back), what eval passkey's modes share a
 * prefill through, on a tiny random llama (2 layers, 4 query heads, 2 KV
 * heads, head_dim 16) with an F32 cache.
 *
 *   - after a prompt, a snapshot, and steps fed, going back gives the
 *     prompt's cache again (its count, positions, logits, kv_cache_check)
 *     and the same steps fed again give, bit for bit, the logits of the
 *     first time (policy full, and h2o, whose accumulators grow with every
 *     step and must come back too);
 *   - under sparse quest and hip, a decode after going back (fewer steps
 *     than were fed before, so some emptied slots are never rewritten and
 *     their pages must shed them) gives bit for bit what the same mode
 *     gives on a cache that was cleared and fed the prompt afresh;
 *   - an eviction since the snapshot, or a clear and the same prompt fed
 *     again, is refused with KVS_ESTATE and a line saying why, and the
 *     cache is left as it was.
 */
#include "kv/kv-int.h"
#include "model/model.h"
#include "tests/unit/test.h"
#include "tests/util/tinymodel.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#define N_PROMPT 100
#define N_STEPS 20

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static void rnd_tokens(int32_t *ids, uint32_t n, uint32_t n_vocab)
{
	for (uint32_t i = 0; i < n; i++) {
		rng ^= rng << 13;
		rng ^= rng >> 7;
		rng ^= rng << 17;
		ids[i] = 3 + (int32_t)((rng >> 11) % (n_vocab - 3));
	}
}

static struct kv_cache *mk_cache(struct engine *eng, const char *policy, uint32_t budget)
{
	struct kv_config c;
	struct kv_cache *kv;
	struct err e;
	kv_config_default(&c);
	if (kv_policy_parse(policy, &c.policy, &e) != KVS_OK) {
		fprintf(stderr, "policy %s: %s\n", policy, e.msg);
		exit(99);
	}
	c.budget = budget;
	c.n_batch = 32;
	if (kv_cache_create(&kv, eng, &c, &e) != KVS_OK) {
		fprintf(stderr, "cache %s: %s\n", policy, e.msg);
		exit(99);
	}
	return kv;
}

static void set_sparse(struct kv_cache *kv, const char *spec)
{
	struct engine_sparse s;
	struct err e;
	if (engine_sparse_parse(spec, &s, &e) != KVS_OK || kv_cache_set_sparse(kv, &s, &e) != KVS_OK) {
		fprintf(stderr, "sparse %s: %s\n", spec, e.msg);
		exit(99);
	}
}

/* Feed the prompt as one turn. */
static int feed_prompt(struct kv_cache *kv, const int32_t *ids, uint32_t n)
{
	struct err e;
	int rc = kv_cache_begin_turn(kv, KV_ROLE_USER, n, &e);
	if (rc == KVS_OK)
		rc = kv_cache_feed(kv, ids, n, &e);
	if (rc != KVS_OK)
		fprintf(stderr, "feed: %s\n", e.msg);
	return rc;
}

/* Feed ids (n) one at a time; logits after each into out (n, n_vocab). */
static int feed_steps(struct kv_cache *kv, const int32_t *ids, uint32_t n, uint32_t n_vocab,
                      float *out)
{
	struct err e;
	for (uint32_t i = 0; i < n; i++) {
		if (kv_cache_feed(kv, ids + i, 1, &e) != KVS_OK) {
			fprintf(stderr, "step %u: %s\n", i, e.msg);
			return KVS_EARG;
		}
		memcpy(out + (size_t)i * n_vocab, kv_cache_logits(kv), n_vocab * sizeof(float));
	}
	return KVS_OK;
}

/* The same steps after going back give the same logits, bit for bit. */
static void test_back_dense(const struct model *m, const char *policy, uint32_t budget)
{
	uint32_t nv = m->hp.n_vocab;
	struct engine *eng = tinymodel_engine(m, 256, 2, true);
	struct kv_cache *kv = mk_cache(eng, policy, budget);
	int32_t prompt[N_PROMPT], steps[N_STEPS];
	rnd_tokens(prompt, N_PROMPT, nv);
	rnd_tokens(steps, N_STEPS, nv);
	float *a = xmallocarray((size_t)N_STEPS * nv, sizeof(float));
	float *b = xmallocarray((size_t)N_STEPS * nv, sizeof(float));
	float *l0 = xmallocarray(nv, sizeof(float));
	T_CHECK(feed_prompt(kv, prompt, N_PROMPT) == KVS_OK,
	        "feed_prompt(kv, prompt, N_PROMPT) == KVS_OK");
	memcpy(l0, kv_cache_logits(kv), nv * sizeof(float));
	struct kv_snap *s = kv_cache_snap(kv);
	T_CHECK(feed_steps(kv, steps, N_STEPS, nv, a) == KVS_OK,
	        "feed_steps(kv, steps, N_STEPS, nv, a) == KVS_OK");
	float *acc1 = NULL;
	if (kv_cache_acc(kv) != NULL) {
		size_t na = (size_t)kv_cache_n(kv) * m->hp.n_layer * m->hp.n_head_kv;
		acc1 = xmallocarray(na, sizeof(float));
		memcpy(acc1, kv_cache_acc(kv), na * sizeof(float));
	}
	struct err e;
	T_EQ_INT(kv_cache_back(kv, s, &e), KVS_OK);
	T_EQ_INT(kv_cache_n(kv), N_PROMPT);
	T_EQ_INT(kv_cache_next_pos(kv), N_PROMPT);
	T_CHECK(memcmp(kv_cache_logits(kv), l0, nv * sizeof(float)) == 0,
	        "memcmp(kv_cache_logits(kv), l0, nv * sizeof(float)) == 0");
	T_EQ_INT(kv_cache_check(kv, &e), KVS_OK);
	for (uint32_t i = 0; i < N_PROMPT; i++)
		T_EQ_INT(engine_kv_pos(eng, kv_cache_toks(kv)[i].slot), i);
	T_CHECK(feed_steps(kv, steps, N_STEPS, nv, b) == KVS_OK,
	        "feed_steps(kv, steps, N_STEPS, nv, b) == KVS_OK");
	T_CHECK(memcmp(a, b, (size_t)N_STEPS * nv * sizeof(float)) == 0,
	        "memcmp(a, b, (size_t)N_STEPS * nv * sizeof(float)) == 0");
	if (acc1 != NULL) {
		size_t na = (size_t)kv_cache_n(kv) * m->hp.n_layer * m->hp.n_head_kv;
		T_CHECK(memcmp(acc1, kv_cache_acc(kv), na * sizeof(float)) == 0,
		        "memcmp(acc1, kv_cache_acc(kv), na * sizeof(float)) == 0");
	}
	/* twice from the same snapshot */
	T_EQ_INT(kv_cache_back(kv, s, &e), KVS_OK);
	T_CHECK(feed_steps(kv, steps, N_STEPS, nv, b) == KVS_OK,
	        "feed_steps(kv, steps, N_STEPS, nv, b) == KVS_OK");
	T_CHECK(memcmp(a, b, (size_t)N_STEPS * nv * sizeof(float)) == 0,
	        "memcmp(a, b, (size_t)N_STEPS * nv * sizeof(float)) == 0");
	kv_snap_free(s);
	free(acc1);
	free(l0);
	free(a);
	free(b);
	kv_cache_free(kv);
	engine_free(eng);
}

/* A sparse decode after going back equals one on a cache fed afresh. */
static void test_back_sparse(const struct model *m, const char *spec)
{
	uint32_t nv = m->hp.n_vocab, n_short = N_STEPS / 2;
	struct engine *eng = tinymodel_engine(m, 256, 2, true);
	struct kv_cache *kv = mk_cache(eng, "full", 0);
	int32_t prompt[N_PROMPT], steps[N_STEPS];
	rnd_tokens(prompt, N_PROMPT, nv);
	rnd_tokens(steps, N_STEPS, nv);
	float *a = xmallocarray((size_t)N_STEPS * nv, sizeof(float));
	float *b = xmallocarray((size_t)N_STEPS * nv, sizeof(float));
	/* the reference: a fresh prompt, then the sparse steps */
	T_CHECK(feed_prompt(kv, prompt, N_PROMPT) == KVS_OK,
	        "feed_prompt(kv, prompt, N_PROMPT) == KVS_OK");
	set_sparse(kv, spec);
	T_CHECK(feed_steps(kv, steps, n_short, nv, a) == KVS_OK,
	        "feed_steps(kv, steps, n_short, nv, a) == KVS_OK");
	/* dense steps after the snapshot (more of them), back, the sparse ones */
	kv_cache_clear(kv);
	set_sparse(kv, "off");
	T_CHECK(feed_prompt(kv, prompt, N_PROMPT) == KVS_OK,
	        "feed_prompt(kv, prompt, N_PROMPT) == KVS_OK");
	struct kv_snap *s = kv_cache_snap(kv);
	T_CHECK(feed_steps(kv, steps, N_STEPS, nv, b) == KVS_OK,
	        "feed_steps(kv, steps, N_STEPS, nv, b) == KVS_OK");
	/* the sparse mode must differ from dense here, or the test proves nothing */
	T_CHECK(memcmp(a, b, (size_t)n_short * nv * sizeof(float)) != 0,
	        "memcmp(a, b, (size_t)n_short * nv * sizeof(float)) != 0");
	struct err e;
	T_EQ_INT(kv_cache_back(kv, s, &e), KVS_OK);
	set_sparse(kv, spec);
	T_CHECK(feed_steps(kv, steps, n_short, nv, b) == KVS_OK,
	        "feed_steps(kv, steps, n_short, nv, b) == KVS_OK");
	float md = 0;
	for (size_t i = 0; i < (size_t)n_short * nv; i++)
		md = fmaxf(md, fabsf(a[i] - b[i]));
	printf("%s after going back: max |diff| %g against a fresh prefill\n", spec, md);
	T_CHECK(memcmp(a, b, (size_t)n_short * nv * sizeof(float)) == 0,
	        "memcmp(a, b, (size_t)n_short * nv * sizeof(float)) == 0");
	T_EQ_INT(kv_cache_check(kv, &e), KVS_OK);
	kv_snap_free(s);
	free(a);
	free(b);
	kv_cache_free(kv);
	engine_free(eng);
}

/* Evicted or cleared since: refused, the cache as it was. */
static void test_refused(const struct model *m)
{
	uint32_t nv = m->hp.n_vocab;
	struct engine *eng = tinymodel_engine(m, 256, 2, true);
	struct kv_cache *kv = mk_cache(eng, "streaming", 64);
	int32_t prompt[N_PROMPT], steps[N_STEPS];
	rnd_tokens(prompt, N_PROMPT, nv);
	rnd_tokens(steps, N_STEPS, nv);
	float *a = xmallocarray((size_t)N_STEPS * nv, sizeof(float));
	T_CHECK(feed_prompt(kv, prompt, 60) == KVS_OK, "feed_prompt(kv, prompt, 60) == KVS_OK");
	struct kv_snap *s = kv_cache_snap(kv);
	T_CHECK(feed_steps(kv, steps, N_STEPS, nv, a) == KVS_OK,
	        "feed_steps(kv, steps, N_STEPS, nv, a) == KVS_OK");
	struct kv_stats st;
	kv_cache_stats(kv, &st);
	T_CHECK(st.n_evicted > 0, "st.n_evicted > 0");
	uint32_t n = kv_cache_n(kv);
	int32_t next = kv_cache_next_pos(kv);
	struct err e;
	T_EQ_INT(kv_cache_back(kv, s, &e), KVS_ESTATE);
	T_CHECK(strstr(e.msg, "cannot go back to the snapshot of 60 tokens: tokens were evicted") !=
	                NULL,
	        "strstr(e.msg, \"cannot go back to the snapshot of 60 tokens: tokens were evicted\") "
	        "!= NULL");
	T_EQ_INT(kv_cache_n(kv), n);
	T_EQ_INT(kv_cache_next_pos(kv), next);
	T_EQ_INT(kv_cache_check(kv, &e), KVS_OK);
	kv_snap_free(s);
	/* the same prompt fed again after a clear: its slots hold other K/V */
	kv_cache_clear(kv);
	T_CHECK(feed_prompt(kv, prompt, 60) == KVS_OK, "feed_prompt(kv, prompt, 60) == KVS_OK");
	s = kv_cache_snap(kv);
	kv_cache_clear(kv);
	T_CHECK(feed_prompt(kv, prompt, 60) == KVS_OK, "feed_prompt(kv, prompt, 60) == KVS_OK");
	T_EQ_INT(kv_cache_back(kv, s, &e), KVS_ESTATE);
	T_CHECK(strstr(e.msg, "the cache was cleared") != NULL,
	        "strstr(e.msg, \"the cache was cleared\") != NULL");
	kv_snap_free(s);
	free(a);
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
	test_back_dense(m, "full", 0);
	test_back_dense(m, "h2o:span=off", 200); /* no eviction */
	test_back_sparse(m, "quest:budget=32,page=8,sinks=2,recent=8,dense=0");
	test_back_sparse(m,
	                 "hip:budget=32,page=8,block=4,sinks=2,recent=8,dense=0,refresh=4,prefill=0");
	test_refused(m);
	model_free(m);
	free(buf);
	return t_done("test-kv-snap");
}
