/*
 * test-sparse.c: sparse decode attention (engine_sparse, Quest) on a tiny
 * generated model: the spec parser and its messages, the bound and the
 * top-k against hand-computed values, logits equal to dense when the
 * budget covers the cache (split and whole-row paths), the dense shadow
 * and the mask a sparse step reports, and the page bounds after eviction,
 * compaction and slot copies against a recomputation from the keys.
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
	struct tinymodel_spec s;
	tinymodel_defaults(&s, "llama");
	s.n_layer = 4;
	s.n_embd = 64;
	s.n_ff = 128;
	s.scale = 0.5f;
	tinymodel_load(&s, &t->m, &t->buf);
}

static struct engine *mk_engine(const struct model *m, int threads)
{
	struct engine_config c;
	struct engine *eng;
	struct err e;
	engine_config_default(&c);
	c.backend = ENGINE_BACKEND_CPU;
	c.n_threads = threads;
	c.n_ctx = N_CTX;
	if (engine_create(&eng, m, &c, &e) != KVS_OK) {
		fprintf(stderr, "engine: %s\n", e.msg);
		exit(99);
	}
	return eng;
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
	         "quest budget=256 page=8 sinks=4 recent=64 dense=0");
	T_EQ_INT(engine_sparse_parse("quest budget=64 recent=8", &s, &e), KVS_OK);
	T_EQ_INT(s.budget, 64);
	T_EQ_INT(s.recent, 8);
	T_EQ_INT(engine_sparse_parse("qwest", &s, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "expected off or quest") != NULL, "%s", e.msg);
	T_EQ_INT(engine_sparse_parse("quest:budget=0", &s, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "budget=0: expected an integer in 1..") != NULL, "%s", e.msg);
	T_EQ_INT(engine_sparse_parse("quest:budget=1x", &s, &e), KVS_EARG);
	T_EQ_INT(engine_sparse_parse("quest:pages=4", &s, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "unknown parameter 'pages'") != NULL, "%s", e.msg);
	T_EQ_INT(engine_sparse_parse("quest:budget", &s, &e), KVS_EARG);
	T_EQ_INT(engine_sparse_parse("off:budget=4", &s, &e), KVS_EARG);
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

/* ------------------------------------------------------------ the engine */

/* Prefill n tokens into slots 0..n-1 at positions 0..n-1. */
static void prefill(struct engine *eng, uint32_t n)
{
	int32_t tok[N_CTX], pos[N_CTX];
	uint32_t slot[N_CTX];
	for (uint32_t i = 0; i < n; i++) {
		tok[i] = (int32_t)(3 + (i * 37) % 250);
		pos[i] = (int32_t)i;
		slot[i] = i;
	}
	struct engine_batch b = { .n_tokens = n, .tokens = tok, .pos = pos, .slot = slot };
	b.n_visible = n;
	b.logits = ENGINE_LOGITS_NONE;
	struct engine_out o;
	struct err e;
	if (engine_forward(eng, &b, &o, &e) != KVS_OK) {
		fprintf(stderr, "prefill: %s\n", e.msg);
		exit(99);
	}
}

/* Decode one token at position n (slot n), seeing slots 0..n; copy the
 * logits (n_vocab) into out; the engine's output in *o. */
static void decode(struct engine *eng, uint32_t n, const struct engine_sparse *sp, bool attn,
                   float *out, struct engine_out *o)
{
	int32_t tok = 42, pos = (int32_t)n;
	uint32_t slot = n;
	struct engine_batch b = { .n_tokens = 1, .tokens = &tok, .pos = &pos, .slot = &slot };
	b.n_visible = n + 1;
	b.logits = ENGINE_LOGITS_LAST;
	b.want_attn = attn;
	b.sparse = sp;
	struct err e;
	if (engine_forward(eng, &b, o, &e) != KVS_OK) {
		fprintf(stderr, "decode: %s\n", e.msg);
		exit(99);
	}
	memcpy(out, o->logits, engine_model(eng)->hp.n_vocab * sizeof(float));
}

static double max_diff(const float *a, const float *b, uint32_t n)
{
	double d = 0;
	for (uint32_t i = 0; i < n; i++)
		d = fmax(d, fabs((double)a[i] - b[i]));
	return d;
}

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
			struct engine *eng = mk_engine(m, threads);
			struct engine_out o;
			prefill(eng, n);
			decode(eng, n, NULL, attn, dense, &o);
			T_EQ_INT(o.keys_read, o.keys_dense);
			T_EQ_INT(o.keys_dense, (uint64_t)(n + 1) * hp->n_layer * hp->n_head_kv);
			decode(eng, n, &s, attn, sp, &o); /* the same step again, sparse */
			double d = max_diff(dense, sp, nv);
			printf("full budget, %d thread(s), weights %d: max |logit diff| %.3g\n", threads, attn,
			       d);
			T_CHECK(d <= 1e-5, "threads %d attn %d: max diff %g", threads, attn, d);
			T_EQ_INT(o.keys_read, o.keys_dense);
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
	struct engine *eng = mk_engine(m, 2);
	struct engine_out o;
	prefill(eng, n);
	decode(eng, n, NULL, true, lg, &o);
	size_t na = (size_t)hp->n_layer * hp->n_head * (n + 1);
	float *dattn = malloc(na * sizeof(float));
	memcpy(dattn, o.attn, na * sizeof(float));
	decode(eng, n, &s, true, lg, &o);
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
	decode(eng, n, &s, false, lg2, &o);
	d = max_diff(lg, lg2, nv);
	printf("small budget: split vs masked whole rows: max |logit diff| %.3g\n", d);
	T_CHECK(d < 1e-2, "split vs masked whole rows: max diff %g", d);
	T_CHECK(o.sel == NULL, "no sel without want_attn");
	engine_free(eng);
	free(lg);
	free(lg2);
	free(dattn);
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
	struct engine *eng = mk_engine(m, 2);
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
	tiny_open(&t);
	test_full_budget(t.m);
	test_small_budget(t.m);
	test_bounds_invariant(t.m);
	model_free(t.m);
	free(t.buf);
	return t_done("test-sparse");
}
