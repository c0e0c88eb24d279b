/*
 * test-sparse-view.c: what a watcher of sparse attention is told, on a
 * tiny generated model. The engine's report beside a Quest step (want_sel:
 * the choice without the dense shadow; the page bounds, of which the
 * chosen pages must be the top by the same bounds; NaN in dense layers,
 * -inf where a page has no candidate; the tightness at most 1 on a shadow
 * step); and the KV cache's figures over decode steps (kv_sparse.c): keys
 * touched against a hand count (page 1: every sparse (layer, KV head)
 * reads exactly the budget), the bytes, the shadow's cadence (attention
 * rows only every `shadow` steps), the mass a covering budget captures
 * (all of it), and the overlap of consecutive choices against the count
 * of candidates that entered between them.
 */
#include "app/app.h"
#include "engine/sparse.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "tests/unit/test.h"
#include "tests/util/tinymodel.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_CTX 256

/* A llama model of 4 layers, head_dim 16, GQA 2 (as test-sparse.c's). */

/* Prefill n tokens into slots 0..n-1, then one decode step at n with sp,
 * want_sel and (attn) the shadow; the output in *o. */
static void step(struct engine *eng, uint32_t n, const struct engine_sparse *sp, bool attn,
                 struct engine_out *o)
{
	int32_t tok[N_CTX], pos[N_CTX];
	uint32_t slot[N_CTX];
	struct err e;
	for (uint32_t i = 0; i <= n; i++) {
		tok[i] = (int32_t)(3 + (i * 37) % 250);
		pos[i] = (int32_t)i;
		slot[i] = i;
	}
	struct engine_batch b = { .n_tokens = n, .tokens = tok, .pos = pos, .slot = slot };
	b.n_visible = n;
	b.logits = ENGINE_LOGITS_NONE;
	if (engine_forward(eng, &b, o, &e) != KVS_OK) {
		fprintf(stderr, "prefill: %s\n", e.msg);
		exit(99);
	}
	struct engine_batch d = { .n_tokens = 1, .tokens = tok + n, .pos = pos + n, .slot = slot + n };
	d.n_visible = n + 1;
	d.logits = ENGINE_LOGITS_LAST;
	d.sparse = sp;
	d.want_sel = true;
	d.want_attn = attn;
	if (engine_forward(eng, &d, o, &e) != KVS_OK) {
		fprintf(stderr, "decode: %s\n", e.msg);
		exit(99);
	}
}

/* The engine's report: sel without the shadow, the bounds the choice
 * ranked by, the tightness with the shadow. */
static void test_engine_report(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t n = 200, nkv = hp->n_head_kv, page = 8, sinks = 4, recent = 8;
	uint32_t np = (N_CTX + page - 1) / page, k_pages = (48 - sinks - recent + page - 1) / page;
	struct engine_sparse s;
	struct err e;
	T_EQ_INT(engine_sparse_parse("quest:budget=48,page=8,dense=1,sinks=4,recent=8", &s, &e),
	         KVS_OK);
	for (int attn = 0; attn <= 1; attn++) {
		struct engine *eng = tinymodel_engine(m, N_CTX, 2, false);
		struct engine_out o;
		step(eng, n, &s, attn, &o);
		T_CHECK(o.sel != NULL && o.page_ub != NULL, "attn %d: sel and bounds given", attn);
		T_CHECK((o.attn != NULL) == attn, "the dense rows only with the shadow");
		T_CHECK((o.tight != NULL) == attn, "the tightness only with the shadow");
		T_EQ_INT(o.n_pages, np);
		if (o.sel == NULL || o.page_ub == NULL) {
			engine_free(eng);
			continue;
		}
		uint64_t read = 0;
		for (size_t i = 0; i < (size_t)hp->n_layer * nkv * (n + 1); i++)
			read += o.sel[i];
		T_EQ_INT(read, o.keys_read);
		for (uint32_t h = 0; h < nkv; h++)
			T_CHECK(isnan(o.page_ub[h * np]), "layer 0 is dense: no bound");
		for (uint32_t l = 1; l < hp->n_layer; l++)
			for (uint32_t h = 0; h < nkv; h++) {
				const float *ub = o.page_ub + ((size_t)l * nkv + h) * np;
				const uint8_t *sel = o.sel + ((size_t)l * nkv + h) * (n + 1);
				/* pages of candidates (slots [4, 193)): 0..24; none past */
				T_CHECK(isinf(ub[30]) && ub[30] < 0, "page 30 holds no key: -inf");
				T_CHECK(isfinite(ub[5]), "page 5 holds candidates: a bound");
				/* the top k_pages by these bounds (ties: the lower page) */
				uint8_t want[N_CTX / 8] = { 0 };
				for (uint32_t k = 0; k < k_pages; k++) {
					int best = -1;
					for (uint32_t p = 0; p < np; p++)
						if (!want[p] && isfinite(ub[p]) && (best < 0 || ub[p] > ub[best]))
							best = (int)p;
					if (best >= 0)
						want[best] = 1;
				}
				for (uint32_t k = sinks; k < n + 1 - recent; k++)
					T_CHECK(sel[k] == want[k / page], "layer %u head %u key %u: chosen %d, top %d",
					        l, h, k, sel[k], want[k / page]);
				if (attn) {
					float t = o.tight[(size_t)l * nkv + h];
					T_CHECK(isnan(t) || t <= 1.0f + 1e-3f, "layer %u head %u: tightness %g", l, h,
					        (double)t);
					if (l == 1 && h == 0)
						printf("quest tightness, layer 1 head 0: %.3f\n", (double)t);
				}
			}
		if (attn)
			T_CHECK(isnan(o.tight[0]), "layer 0 is dense: no tightness");
		engine_free(eng);
	}
}

/* The step events a kv cache emits, as the test keeps them. */
struct seen {
	uint32_t n_steps, n_rows, n_views;
	uint64_t shadow_steps[16];
	uint32_t n_shadow;
	struct kv_sparse_stats last;
	uint32_t last_cached; /* the last view's columns */
	float mass_min;       /* over every shadow's sparse (layer, KV head) */
	bool rows_without_view;
};

static void on_event(const struct kv_event *ev, void *ud)
{
	struct seen *s = ud;
	if (ev->kind != KV_EVENT_STEP)
		return;
	s->n_steps++;
	s->n_rows += ev->attn != NULL || ev->heads != NULL;
	if (ev->sparse == NULL)
		return;
	s->n_views++;
	s->last = ev->stats.sp;
	s->last_cached = ev->sparse->n_cached;
	if (ev->sparse->shadow) {
		if (s->n_shadow < 16)
			s->shadow_steps[s->n_shadow++] = ev->step;
		for (uint32_t i = ev->sparse->dense_layers * ev->sparse->n_head_kv;
		     i < ev->sparse->n_layer * ev->sparse->n_head_kv; i++)
			s->mass_min = fminf(s->mass_min, ev->sparse->mass[i]);
		/* the worker's deep copy holds the same */
		struct kv_event cp;
		worker_kv_copy(&cp, ev);
		T_CHECK(cp.sparse != NULL && cp.sparse != ev->sparse &&
		                memcmp(cp.sparse->sel, ev->sparse->sel,
		                       (size_t)ev->sparse->n_layer * ev->sparse->n_head_kv *
		                               ev->sparse->n_cached) == 0,
		        "a deep copy of the view");
		worker_kv_free(&cp);
	} else {
		s->rows_without_view |= ev->attn != NULL;
	}
}

/* A kv cache with quest, capture on: spec, prompt of n_prompt, steps. */
static struct kv_cache *mk_cache(struct engine *eng, const char *spec, struct seen *s)
{
	struct kv_config kc;
	struct kv_cache *kv;
	struct err e;
	kv_config_default(&kc);
	kc.capture = KV_CAPTURE_SUMMARY;
	T_EQ_INT(engine_sparse_parse(spec, &kc.sparse, &e), KVS_OK);
	if (kv_cache_create(&kv, eng, &kc, &e) != KVS_OK) {
		fprintf(stderr, "kv: %s\n", e.msg);
		exit(99);
	}
	memset(s, 0, sizeof *s);
	s->mass_min = INFINITY;
	kv_cache_set_events(kv, on_event, s);
	return kv;
}

/* Keys touched, bytes and the shadow's cadence against hand counts. */
static void test_kv_figures(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	struct engine *eng = tinymodel_engine(m, N_CTX, 2, false);
	struct seen s;
	struct err e;
	uint32_t L = hp->n_layer, H = hp->n_head_kv, D = 1, B = 40;
	struct kv_cache *kv =
	        mk_cache(eng, "quest:budget=40,page=1,sinks=2,recent=4,dense=1,shadow=4", &s);
	int32_t ids[200];
	for (uint32_t i = 0; i < 200; i++)
		ids[i] = (int32_t)(5 + (i * 13) % 240);
	T_EQ_INT(kv_cache_feed(kv, ids, 120, &e), KVS_OK);
	uint32_t prefill_events = s.n_steps;
	for (uint32_t i = 120; i < 130; i++)
		T_EQ_INT(kv_cache_feed(kv, ids + i, 1, &e), KVS_OK);
	struct kv_stats st;
	kv_cache_stats(kv, &st);
	/* the last step saw m = 130 keys: dense layers read m, sparse ones B */
	uint64_t m_keys = 130;
	T_EQ_INT(s.last_cached, m_keys);
	T_EQ_INT(st.keys_dense, (uint64_t)L * H * m_keys);
	T_EQ_INT(st.keys_read, (uint64_t)H * (D * m_keys + (L - D) * B));
	uint64_t bpk = st.bytes_per_token / ((uint64_t)L * H);
	T_EQ_INT(st.sp.bytes_read, st.keys_read * bpk);
	T_EQ_INT(st.sp.bytes_dense, st.keys_dense * bpk);
	T_EQ_INT(st.sp.mode, ENGINE_SPARSE_QUEST);
	T_EQ_INT(s.n_views, 10);
	/* shadows at the 1st, 5th and 9th watched decode step: steps 2, 6, 10
	 * after the prefill's forward (one chunk of 120: step 1) */
	T_EQ_INT(prefill_events, 1);
	T_EQ_INT(s.n_shadow, 3);
	T_EQ_INT(s.shadow_steps[0], 2);
	T_EQ_INT(s.shadow_steps[1], 6);
	T_EQ_INT(s.shadow_steps[2], 10);
	T_EQ_INT(st.sp.shadow_step, 10);
	T_EQ_INT(s.n_rows, 1 + 3); /* the prefill's, the shadows' */
	T_CHECK(!s.rows_without_view, "no dense rows between shadows");
	T_CHECK(st.sp.mass_min >= 0 && st.sp.mass_min <= st.sp.mass_mean && st.sp.mass_mean <= 1.0001f,
	        "mass min %g mean %g", (double)st.sp.mass_min, (double)st.sp.mass_mean);
	T_CHECK(st.sp.tight <= 1.001f, "tightness %g", (double)st.sp.tight);
	T_CHECK(st.sp.overlap >= 0 && st.sp.overlap <= 1, "overlap %g", (double)st.sp.overlap);
	kv_cache_free(kv);

	/* a budget covering the cache: every mass 1; the overlap of two steps
	 * is (c - 1) / c, c the candidates now (one key left the recent window
	 * into them since the step before) */
	engine_kv_clear(eng);
	kv = mk_cache(eng, "quest:budget=4096,page=8,sinks=2,recent=4,dense=1,shadow=1", &s);
	T_EQ_INT(kv_cache_feed(kv, ids, 100, &e), KVS_OK);
	for (uint32_t i = 100; i < 104; i++)
		T_EQ_INT(kv_cache_feed(kv, ids + i, 1, &e), KVS_OK);
	kv_cache_stats(kv, &st);
	T_EQ_INT(st.keys_read, st.keys_dense);
	T_NEAR(s.mass_min, 1.0, 1e-4);
	double c = 104 - 2 - 4;
	T_NEAR(st.sp.overlap, (c - 1) / c, 1e-6);
	printf("covering budget: mass min %.6f, overlap %.6f (want %.6f)\n", (double)s.mass_min,
	       (double)st.sp.overlap, (c - 1) / c);
	/* switched off: the stats say so, no view */
	struct engine_sparse off;
	engine_sparse_default(&off);
	T_EQ_INT(kv_cache_set_sparse(kv, &off, &e), KVS_OK);
	uint32_t views = s.n_views;
	T_EQ_INT(kv_cache_feed(kv, ids + 104, 1, &e), KVS_OK);
	kv_cache_stats(kv, &st);
	T_EQ_INT(st.sp.mode, ENGINE_SPARSE_OFF);
	T_EQ_INT(s.n_views, views);
	T_EQ_INT(st.keys_read, st.keys_dense);
	kv_cache_free(kv);
	engine_free(eng);
}

int main(void)
{
	struct model *m;
	uint8_t *buf;
	tinymodel_load_attn(&m, &buf);
	test_engine_report(m);
	test_kv_figures(m);
	model_free(m);
	free(buf);
	return t_done("test-sparse-view");
}
