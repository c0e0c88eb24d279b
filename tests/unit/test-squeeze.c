/*
 * test-squeeze.c: Squeezed Attention (engine_sparse squeezed, squeeze.c,
 * cpu-squeeze.c) and the pinned document it clusters: the spec's squeezed
 * parameters; k-means on a hand-made 2-D case with known clusters, and its
 * invariants on random points (every point in one cluster, centres the
 * means of their members, the objective never rising, the same seed the
 * same clusters); the index's order (a permutation grouped by cluster,
 * lookup centroids the means of the raw keys); the quantiles against hand
 * values; on a tiny model, a threshold that keeps every cluster giving the
 * dense logits, a real threshold reading fewer keys in whole clusters while
 * every key outside the document stays attended; the index saved and
 * loaded (identical, and refused when damaged, for another number of keys
 * or other positions); and the pinned document never evicted by any
 * policy at a small budget.
 */
#include "engine/sparse.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "tests/unit/test.h"
#include "tests/util/ggufw.h"
#include "tests/util/tinymodel.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define N_CTX 256

/* ------------------------------------------------------------ the spec */

static void test_parse(void)
{
	struct engine_sparse s;
	struct err e;
	char buf[256];
	T_EQ_INT(engine_sparse_parse("squeezed", &s, &e), KVS_OK);
	T_EQ_INT(s.mode, ENGINE_SPARSE_SQUEEZED);
	T_EQ_INT(s.clusters, 10);
	T_EQ_INT(s.quantile, 900);
	T_EQ_INT(s.coarse, 700);
	T_EQ_STR(engine_sparse_format(&s, buf, sizeof buf),
	         "squeezed sinks=4 recent=64 dense=2 clusters=10 fanout=8 quantile=0.900 coarse=0.700 "
	         "outliers=0.020 iters=10 seed=1");
	T_EQ_INT(s.outliers, 20);
	T_EQ_INT(engine_sparse_parse("squeezed:quantile=0.95,clusters=20,coarse=0", &s, &e), KVS_OK);
	T_EQ_INT(s.quantile, 950);
	T_EQ_INT(s.clusters, 20);
	T_EQ_INT(s.coarse, 0);
	/* the format parses back to the same spec */
	struct engine_sparse s2;
	T_EQ_INT(engine_sparse_parse(engine_sparse_format(&s, buf, sizeof buf), &s2, &e), KVS_OK);
	T_CHECK(memcmp(&s, &s2, sizeof s) == 0, "format then parse: a different spec");
	T_EQ_INT(engine_sparse_parse("squeezed:quantile=1.5", &s, &e), KVS_EARG);
	T_EQ_STR(e.msg, "sparse: quantile=1.5: expected a number in 0..1");
	T_EQ_INT(engine_sparse_parse("squeezed:budget=512", &s, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "unknown parameter 'budget' for squeezed") != NULL, "%s", e.msg);
	T_EQ_INT(engine_sparse_parse("squeezd", &s, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "or squeezed[:") != NULL, "%s", e.msg);
	T_EQ_INT(squeeze_n_fine(1000, 5), 50);
	T_EQ_INT(squeeze_n_fine(10, 5), 1);
	T_EQ_INT(squeeze_n_coarse(50, 8), 7);
	T_EQ_INT(squeeze_n_coarse(1, 8), 1);
}

/* ------------------------------------------------------------ k-means */

/* Two tight groups on the unit circle, around (1, 0) and (0, 1). */
static void test_kmeans_2d(void)
{
	float x[12] = { 1, 0, 0.98f, 0.2f, 0.98f, -0.2f, 0, 1, 0.2f, 0.98f, -0.2f, 0.98f };
	uint32_t lab[6], lab2[6];
	float c[4], c2[4];
	double obj[11];
	squeeze_normalise(x, 6, 2);
	T_NEAR(x[2] * x[2] + x[3] * x[3], 1.0, 1e-6);
	uint32_t it = squeeze_kmeans(x, 6, 2, 2, 10, 7, lab, c, obj);
	T_CHECK(it >= 1 && it <= 10, "rounds %u", it);
	T_EQ_INT(lab[0], lab[1]);
	T_EQ_INT(lab[0], lab[2]);
	T_EQ_INT(lab[3], lab[4]);
	T_EQ_INT(lab[3], lab[5]);
	T_CHECK(lab[0] != lab[3], "the two groups share a cluster");
	/* by hand: (1 + 2 * 0.98 / sqrt(1.0004)) / 3 = 0.98653, and 0 */
	const float *ca = c + 2 * lab[0], *cb = c + 2 * lab[3];
	T_NEAR(ca[0], 0.98653, 1e-4);
	T_NEAR(ca[1], 0.0, 1e-6);
	T_NEAR(cb[0], 0.0, 1e-6);
	T_NEAR(cb[1], 0.98653, 1e-4);
	/* objective: each outer point 0.2 / 1.0002 off the axis, and its
	 * x-distance to the mean: 2 * ((0.0133)^2 + 0.19996^2) + 0.01347^2, twice */
	double dx = 0.98653 - 0.97980, dy = 0.19996, d0 = 1 - 0.98653;
	T_NEAR(obj[it], 2 * (2 * (dx * dx + dy * dy) + d0 * d0), 1e-4);
	/* the same seed, the same clusters */
	squeeze_kmeans(x, 6, 2, 2, 10, 7, lab2, c2, NULL);
	T_CHECK(memcmp(lab, lab2, sizeof lab) == 0 && memcmp(c, c2, sizeof c) == 0,
	        "seed 7 twice: different clusters");
}

/* A xorshift for test data. */
static float rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return (float)((*s >> 11) * (1.0 / 9007199254740992.0)) * 2 - 1;
}

static void test_kmeans_invariants(void)
{
	enum { N = 300, D = 8, K = 12, IT = 40 };
	float *x = malloc(sizeof(float) * N * D), c[K * D];
	uint32_t lab[N], cnt[K] = { 0 };
	double obj[IT + 1], mean[K * D] = { 0 };
	uint64_t s = 99;
	for (int i = 0; i < N * D; i++)
		x[i] = rnd(&s) + (float)((i / D) % 3); /* three loose blobs */
	squeeze_normalise(x, N, D);
	uint32_t it = squeeze_kmeans(x, N, D, K, IT, 3, lab, c, obj);
	for (uint32_t r = 1; r <= it; r++)
		T_CHECK(obj[r] <= obj[r - 1] * (1 + 1e-6), "objective rose in round %u: %g -> %g", r,
		        obj[r - 1], obj[r]);
	T_CHECK(obj[it] < obj[0], "no improvement over the start: %g", obj[0]);
	for (int i = 0; i < N; i++) {
		T_CHECK(lab[i] < K, "point %d has label %u", i, lab[i]);
		cnt[lab[i]]++;
		for (int j = 0; j < D; j++)
			mean[lab[i] * D + j] += x[i * D + j];
	}
	double worst = 0;
	for (int k = 0; k < K; k++)
		for (int j = 0; cnt[k] > 0 && j < D; j++)
			worst = fmax(worst, fabs(mean[k * D + j] / cnt[k] - c[k * D + j]));
	printf("k-means %d points into %d: %u rounds, objective %.4f -> %.4f, centre error %.2g\n", N,
	       K, it, obj[0], obj[it], worst);
	T_CHECK(worst < 1e-5, "centres are not their members' means: %g", worst);
	if (it < IT) /* converged: every point at its nearest centre */
		for (int i = 0; i < N; i++) {
			double best = INFINITY, mine = 0;
			for (int k = 0; k < K; k++) {
				double d2 = 0;
				for (int j = 0; j < D; j++)
					d2 += (x[i * D + j] - c[k * D + j]) * (x[i * D + j] - c[k * D + j]);
				best = fmin(best, d2);
				if ((uint32_t)k == lab[i])
					mine = d2;
			}
			T_CHECK(mine <= best + 1e-6, "point %d: %g to its centre, %g to the nearest", i, mine,
			        best);
		}
	free(x);
}

/* The index of one (layer, KV head) from hand-made labels. */
static void test_order(void)
{
	enum { N = 7, HD = 2 };
	struct engine_squeeze *sq = squeeze_alloc(1, 1, HD, N, 3, 2);
	float k[N * HD] = { 1, 0, 2, 0, 0, 1, 0, 3, 5, 5, 1, 1, 4, 0 };
	uint32_t lab[N] = { 0, 0, 2, 2, 1, 1, 0 }; /* raw fine labels */
	uint32_t flab[3] = { 1, 0, 1 };            /* raw fine 1 under coarse 0, 0 and 2 under 1 */
	squeeze_order(sq, 0, 0, k, lab, flab);
	/* ordered fine: coarse 0 holds raw 1 (new 0); coarse 1 raw 0, raw 2 (new 1, 2) */
	T_EQ_INT(sq->cstart[0], 0);
	T_EQ_INT(sq->cstart[1], 1);
	T_EQ_INT(sq->cstart[2], 3);
	T_EQ_INT(sq->fstart[0], 0);
	T_EQ_INT(sq->fstart[1], 2); /* keys 4, 5 */
	T_EQ_INT(sq->fstart[2], 5); /* keys 0, 1, 6 */
	T_EQ_INT(sq->fstart[3], 7); /* keys 2, 3 */
	static const uint32_t want[N] = { 4, 5, 0, 1, 6, 2, 3 };
	for (int i = 0; i < N; i++) {
		T_EQ_INT(sq->perm[i], want[i]);
		T_EQ_INT(sq->label[i], i == 4 || i == 5 ? 0 : i == 2 || i == 3 ? 2 : 1);
	}
	/* lookup centroids: the raw keys' means */
	T_NEAR(sq->fine[0], 3, 0);
	T_NEAR(sq->fine[1], 3, 0);
	T_NEAR(sq->fine[2], 7.0 / 3, 1e-6);
	T_NEAR(sq->fine[3], 0, 0);
	T_NEAR(sq->fine[4], 0, 0);
	T_NEAR(sq->fine[5], 2, 0);
	T_NEAR(sq->coarse[0], 3, 0);
	T_NEAR(sq->coarse[2], 7.0 / 5, 1e-6);
	T_NEAR(sq->coarse[3], 4.0 / 5, 1e-6);
	squeeze_free(sq);
}

static void test_quantile(void)
{
	float p[4] = { 0.1f, 0.4f, 0.2f, 0.3f };
	uint32_t w[4] = { 1, 1, 1, 1 }, scr[4];
	T_NEAR(squeeze_quantile(p, w, 4, 500, scr), 0.2, 1e-7);
	T_NEAR(squeeze_quantile(p, w, 4, 750, scr), 0.3, 1e-7);
	T_NEAR(squeeze_quantile(p, w, 4, 0, scr), 0, 0);
	uint32_t w2[4] = { 10, 1, 1, 1 }; /* 0.1 holds 10 of 13 keys */
	T_NEAR(squeeze_quantile(p, w2, 4, 700, scr), 0.1, 1e-7);
	T_NEAR(squeeze_quantile(p, w2, 4, 800, scr), 0.2, 1e-7);
	struct squeeze_hist h;
	memset(&h, 0, sizeof h);
	squeeze_hist_add(&h, p, w, 4);
	T_NEAR(h.total, 4, 0);
	float q = squeeze_hist_quantile(&h, 500);
	/* the lower edge of 0.2's bin: at most 0.2, within one bin (2^0.1875) */
	T_CHECK(q <= 0.2f && q > 0.2f / 1.14f, "histogram median %g", q);
	T_NEAR(squeeze_hist_quantile(&h, 0), 0, 0);
}

/* ------------------------------------------------------------ the engine */

struct tiny {
	struct model *m;
	uint8_t *buf;
};

/* A llama model of 4 layers, head_dim 16, GQA 2. */
static void tiny_open(struct tiny *t)
{
	tinymodel_load_attn(&t->m, &t->buf);
}

#define DOC 120 /* the document: slots 0..DOC-1 */

/* Cluster slots [0, DOC) under spec s. */
static void build(struct engine *eng, const struct engine_sparse *s)
{
	uint32_t slots[DOC];
	struct err e;
	for (uint32_t i = 0; i < DOC; i++)
		slots[i] = i;
	T_EQ_INT(engine_squeeze_build(eng, slots, DOC, s, NULL, NULL, &e), KVS_OK);
}

/* Thresholds of 0 keep every cluster: the dense logits, every key read. */
static void test_keep_all(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t nv = hp->n_vocab, n = 150;
	float *dense = malloc(nv * sizeof(float)), *sp = malloc(nv * sizeof(float));
	struct engine_sparse s;
	struct err e;
	T_EQ_INT(engine_sparse_parse(
	                 "squeezed:quantile=0,coarse=0,dense=0,sinks=2,recent=4,clusters=20", &s, &e),
	         KVS_OK);
	for (int threads = 1; threads <= 2; threads++)
		for (int attn = 0; attn <= 1; attn++) {
			struct engine *eng = tinymodel_engine(m, N_CTX, threads, false);
			struct engine_out o;
			tinymodel_prefill(eng, n);
			build(eng, &s);
			tinymodel_decode(eng, n, NULL, attn, dense, &o);
			tinymodel_decode(eng, n, &s, attn, sp, &o);
			double d = tinymodel_max_diff(dense, sp, nv);
			printf("squeezed, every cluster, %d thread(s), weights %d: max |logit diff| %.3g\n",
			       threads, attn, d);
			/* the same keys, summed in cluster order: within the tolerance
			 * Quest's covering budget is held to (test-sparse: 1e-5) */
			T_CHECK(d <= 1e-5, "threads %d attn %d: max diff %g", threads, attn, d);
			T_EQ_INT(o.keys_read, o.keys_dense);
			T_EQ_INT(o.sparse_chose, 1);
			engine_free(eng);
		}
	free(dense);
	free(sp);
}

/* A real threshold: fewer keys, whole clusters, every other key attended. */
static void test_threshold(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t nv = hp->n_vocab, n = 150, nkv = hp->n_head_kv;
	float *lg = malloc(nv * sizeof(float));
	struct engine_sparse s;
	struct err e;
	T_EQ_INT(engine_sparse_parse("squeezed:quantile=0.8,coarse=0.3,dense=1,sinks=2,recent=4,"
	                             "clusters=20,fanout=3,outliers=0",
	                             &s, &e),
	         KVS_OK);
	struct engine *eng = tinymodel_engine(m, N_CTX, 2, false);
	struct engine_out o;
	tinymodel_prefill(eng, n);
	build(eng, &s);
	const struct engine_squeeze *sq = engine_squeeze_get(eng);
	T_EQ_INT(sq->n_fine, 24);
	T_EQ_INT(sq->n_coarse, 8);
	uint64_t read = 0, dense = 0;
	for (int step = 0; step < 4; step++) {
		tinymodel_decode(eng, n + (uint32_t)step, &s, true, lg, &o);
		read += o.keys_read;
		dense += o.keys_dense;
		uint32_t m_vis = n + (uint32_t)step + 1;
		for (uint32_t l = 0; l < hp->n_layer; l++)
			for (uint32_t h = 0; h < nkv; h++) {
				const uint8_t *sel = o.sel + ((size_t)l * nkv + h) * m_vis;
				/* outside the document (and the sinks, the recent window): all */
				for (uint32_t k = 0; k < m_vis; k++)
					if (k >= DOC || k < 2 || k + 4 >= m_vis || l < 1)
						T_CHECK(sel[k] == 1, "layer %u head %u key %u not attended", l, h, k);
				if (l < 1)
					continue;
				/* inside: whole clusters (the sinks and recent apart) */
				const uint32_t *lab = sq->label + ((size_t)l * nkv + h) * DOC;
				int8_t cl[64];
				memset(cl, -1, sizeof cl);
				for (uint32_t k = 2; k < DOC; k++) {
					if (cl[lab[k]] < 0)
						cl[lab[k]] = (int8_t)sel[k];
					T_CHECK(cl[lab[k]] == sel[k], "layer %u head %u: cluster %u split at key %u", l,
					        h, lab[k], k);
				}
			}
	}
	printf("squeezed, quantile 0.8: %llu of %llu keys read (%.1f %%)\n", (unsigned long long)read,
	       (unsigned long long)dense, 100.0 * (double)read / (double)dense);
	T_CHECK(read < dense, "no key dropped");
	T_CHECK(read > (uint64_t)(n - DOC) * nkv * hp->n_layer,
	        "fewer keys than the non-document ones");
	engine_free(eng);
	free(lg);
}

/* Outliers: per (layer, KV head) the share of the document's keys
 * farthest from their fine centroid (computed here from the keys as the
 * engine reads them back) are attended whatever their cluster's estimate;
 * every other document key follows its cluster. A threshold that keeps
 * nothing (quantile 1: only the largest estimate passes) leaves them. */
static void test_outliers(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t nv = hp->n_vocab, n = 150, nkv = hp->n_head_kv, hd = hp->head_dim;
	float *lg = malloc(nv * sizeof(float));
	struct engine_sparse s;
	struct err e;
	T_EQ_INT(engine_sparse_parse("squeezed:quantile=0.8,coarse=0.3,dense=1,sinks=2,recent=4,"
	                             "clusters=20,fanout=3,outliers=0.1",
	                             &s, &e),
	         KVS_OK);
	struct engine *eng = tinymodel_engine(m, N_CTX, 2, false);
	struct engine_out o;
	tinymodel_prefill(eng, n);
	build(eng, &s);
	const struct engine_squeeze *sq = engine_squeeze_get(eng);
	tinymodel_decode(eng, n, &s, true, lg, &o);
	uint32_t m_vis = n + 1, n_out = DOC / 10, rescued = 0;
	for (uint32_t l = 1; l < hp->n_layer; l++)
		for (uint32_t h = 0; h < nkv; h++) {
			size_t lh = (size_t)l * nkv + h;
			const uint8_t *sel = o.sel + lh * m_vis;
			const uint32_t *lab = sq->label + lh * DOC;
			float dist[DOC], k[64];
			uint8_t out[DOC] = { 0 };
			for (uint32_t d = 0; d < DOC; d++) {
				T_EQ_INT(engine_kv_read(eng, l, d, h, false, true, k, &e), KVS_OK);
				const float *c = sq->fine + (lh * sq->n_fine + lab[d]) * hd;
				dist[d] = 0;
				for (uint32_t i = 0; i < hd; i++)
					dist[d] += (k[i] - c[i]) * (k[i] - c[i]);
			}
			for (uint32_t j = 0; j < n_out; j++) { /* the n_out farthest */
				uint32_t best = DOC;
				for (uint32_t d = 0; d < DOC; d++)
					if (!out[d] && (best == DOC || dist[d] > dist[best]))
						best = d;
				out[best] = 1;
			}
			/* an outlier is attended; the rest of a cluster goes together */
			int8_t cl[64];
			memset(cl, -1, sizeof cl);
			for (uint32_t d = 2; d < DOC; d++) {
				if (out[d]) {
					T_CHECK(sel[d] == 1, "layer %u head %u: outlier %u not attended", l, h, d);
					continue;
				}
				if (cl[lab[d]] < 0)
					cl[lab[d]] = (int8_t)sel[d];
				T_CHECK(cl[lab[d]] == sel[d], "layer %u head %u: cluster %u split at key %u", l, h,
				        lab[d], d);
			}
			for (uint32_t d = 2; d < DOC; d++) /* attended though its cluster is not */
				rescued += out[d] && cl[lab[d]] == 0;
		}
	printf("squeezed, outliers 0.1 (%u a head): %u attended whose cluster was not; %llu of %llu "
	       "keys read\n",
	       n_out, rescued, (unsigned long long)o.keys_read, (unsigned long long)o.keys_dense);
	T_CHECK(rescued > 0, "no outlier outside a kept cluster: the case tests nothing");
	engine_free(eng);
	free(lg);
}

/* Save, load, and what a load refuses. */
static void test_save_load(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t nv = hp->n_vocab, n = 150, slots[DOC + 1];
	float *a = malloc(nv * sizeof(float)), *b = malloc(nv * sizeof(float));
	struct engine_sparse s;
	struct err e;
	void *blob, *blob2;
	size_t len, len2;
	T_EQ_INT(engine_sparse_parse("squeezed:quantile=0.7,dense=1,clusters=10", &s, &e), KVS_OK);
	struct engine *eng = tinymodel_engine(m, N_CTX, 1, false);
	struct engine_out o;
	tinymodel_prefill(eng, n);
	T_EQ_INT(engine_squeeze_save(eng, &blob, &len, &e), KVS_ESTATE);
	build(eng, &s);
	tinymodel_decode(eng, n, &s, false, a, &o); /* the first step under this index */
	T_EQ_INT(engine_squeeze_save(eng, &blob, &len, &e), KVS_OK);
	for (uint32_t i = 0; i <= DOC; i++)
		slots[i] = i;
	engine_squeeze_clear(eng);
	T_CHECK(!engine_squeeze_info(eng, NULL), "cleared, still an index");
	T_EQ_INT(engine_squeeze_load(eng, blob, len, slots, DOC, &e), KVS_OK);
	T_EQ_INT(engine_squeeze_save(eng, &blob2, &len2, &e), KVS_OK);
	T_CHECK(len == len2 && memcmp(blob, blob2, len) == 0, "a loaded index saves differently");
	free(blob2);
	tinymodel_decode(eng, n, &s, false, b, &o); /* the first step under the loaded one */
	T_CHECK(tinymodel_max_diff(a, b, nv) == 0, "loaded index: logits differ by %g",
	        tinymodel_max_diff(a, b, nv));
	/* refusals */
	T_EQ_INT(engine_squeeze_load(eng, blob, len - 1, slots, DOC, &e), KVS_EFORMAT);
	T_CHECK(strstr(e.msg, "damaged") != NULL, "%s", e.msg);
	T_EQ_INT(engine_squeeze_load(eng, blob, len, slots, DOC - 1, &e), KVS_EFORMAT);
	T_EQ_STR(e.msg, "stored clusters: made for 120 document keys, the cache holds 119");
	T_EQ_INT(engine_squeeze_load(eng, blob, len, slots + 1, DOC, &e), KVS_EFORMAT);
	T_EQ_STR(e.msg,
	         "stored clusters: document key 0 was clustered at position 0, the cache has "
	         "it at 1");
	uint8_t *bad = malloc(len);
	memcpy(bad, blob, len);
	memcpy(bad, "KVSX", 4);
	T_EQ_INT(engine_squeeze_load(eng, bad, len, slots, DOC, &e), KVS_EFORMAT);
	/* a permutation with a key twice: the last perm entry copied over the one before */
	memcpy(bad, blob, len);
	size_t perm_end = len -
	        ((size_t)hp->n_layer * hp->n_head_kv *
	         (engine_squeeze_get(eng)->n_fine + engine_squeeze_get(eng)->n_coarse + 2) * 4);
	memcpy(bad + perm_end - 8, bad + perm_end - 4, 4);
	T_EQ_INT(engine_squeeze_load(eng, bad, len, slots, DOC, &e), KVS_EFORMAT);
	T_CHECK(engine_squeeze_info(eng, NULL), "a refused load dropped the installed index");
	free(bad);
	free(blob);
	/* clearing the cache drops the index with its keys */
	engine_kv_clear(eng);
	T_CHECK(!engine_squeeze_info(eng, NULL), "engine_kv_clear kept the index");
	engine_free(eng);
	free(a);
	free(b);
}

/* The pinned document is never evicted, by any policy, at a small budget. */
static void test_pinned(const struct model *m)
{
	static const char *const policies[] = { "full",       "window", "streaming", "sirllm",
		                                    "lminfinite", "h2o",    "snapkv" };
	for (size_t p = 0; p < sizeof policies / sizeof *policies; p++) {
		struct engine *eng = tinymodel_engine(m, N_CTX, 1, false);
		struct kv_config cfg;
		struct kv_cache *c;
		struct err e;
		kv_config_default(&cfg);
		T_EQ_INT(kv_policy_parse(policies[p], &cfg.policy, &e), KVS_OK);
		cfg.budget = 64;
		T_EQ_INT(kv_cache_create(&c, eng, &cfg, &e), KVS_OK);
		int32_t ids[40];
		for (int i = 0; i < 40; i++)
			ids[i] = 5 + (i * 11) % 200;
		T_EQ_INT(kv_cache_begin_turn(c, KV_ROLE_USER, 24, &e), KVS_OK);
		kv_cache_set_feed_flags(c, KV_FLAG_PINNED | KV_FLAG_DOC);
		T_EQ_INT(kv_cache_feed(c, ids, 24, &e), KVS_OK);
		kv_cache_set_feed_flags(c, 0);
		int32_t pos0[24];
		for (int i = 0; i < 24; i++)
			pos0[i] = kv_cache_toks(c)[i].pos;
		int rc = KVS_OK;
		for (int turn = 0; turn < 6 && rc == KVS_OK; turn++) {
			rc = kv_cache_begin_turn(c, KV_ROLE_USER, 30, &e);
			if (rc == KVS_OK)
				rc = kv_cache_feed(c, ids + 10, 30, &e);
		}
		/* full never evicts: it refuses the turn that does not fit */
		T_EQ_INT(rc, strcmp(policies[p], "full") == 0 ? KVS_ERANGE : KVS_OK);
		struct kv_stats st;
		kv_cache_stats(c, &st);
		T_EQ_INT(st.n_doc, 24);
		for (int i = 0; i < 24; i++) {
			int32_t at = kv_cache_find(c, i);
			T_CHECK(at >= 0, "%s: document token %d evicted", policies[p], i);
			if (at < 0)
				continue;
			const struct kv_tok *t = &kv_cache_toks(c)[at];
			T_CHECK(t->flags & KV_FLAG_DOC, "%s: token %d lost its document flag", policies[p], i);
			if (strcmp(policies[p], "lminfinite") != 0) /* capped positions move */
				T_EQ_INT(t->pos, pos0[i]);
		}
		T_EQ_INT(kv_cache_pin(c, 3, false, &e), KVS_EARG);
		printf("policy %s: %u of 64 cached after %llu evicted, the 24 document tokens kept\n",
		       policies[p], st.n_cached, (unsigned long long)st.n_evicted);
		kv_cache_free(c);
		engine_free(eng);
	}
}

int main(void)
{
	struct tiny t;
	test_parse();
	test_kmeans_2d();
	test_kmeans_invariants();
	test_order();
	test_quantile();
	tiny_open(&t);
	test_keep_all(t.m);
	test_threshold(t.m);
	test_outliers(t.m);
	test_save_load(t.m);
	test_pinned(t.m);
	model_free(t.m);
	free(t.buf);
	return t_done("test-squeeze");
}
