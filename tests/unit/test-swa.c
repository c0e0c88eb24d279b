/*
 * test-swa.c: Gemma's sliding-window layers and soft-caps, and LongRoPE's
 * choice of table, in the CPU engine, held to invariants that need no
 * reference run (test-fidelity-arch holds the same models' arithmetic to
 * llama.cpp's):
 *  - receptive field: with every layer local (window W, L layers), the last
 *    token's logits cannot depend on tokens more than L (W - 1) positions
 *    back: they are equal bit for bit when those tokens change, in a tiled
 *    prefill, a decode step, the whole-row path and the gathered path; one
 *    token nearer changes them, and so does a far one once a layer is global
 *    (so the test can fail);
 *  - attention weights: a local layer gives the keys outside its window
 *    exactly 0 and the ones inside sum to 1; a global layer gives the far
 *    keys weight;
 *  - soft-caps: logits under a final cap c are c tanh(x / c) of the logits
 *    under a cap so large that it is the identity; under an attention cap
 *    of 1e-4 every key a query sees has weight 1/m;
 *  - LongRoPE: an engine whose context exceeds the original context rotates
 *    keys with the long divisors, any other with the short ones (a rotated
 *    key read back against the pre-RoPE key rotated by hand).
 */
#include "engine/engine.h"
#include "test.h"
#include "tests/util/refdata.h"
#include "tests/util/tinymodel.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define WIN 4
#define NTOK 20
#define NCTX 64

/* Write w into memory and load it (the buffer goes to *buf). */
static struct model *load(struct ggufw *w, uint8_t **buf)
{
	struct gguf_file *f;
	struct model *m = NULL;
	struct err e;
	size_t n;

	ggufw_write_mem(w, buf, &n);
	err_clear(&e);
	if (gguf_open_memory(&f, *buf, n, &e) != KVS_OK || model_load_gguf(&m, f, &e) != KVS_OK) {
		T_CHECK(0, "load: %s", e.msg);
		return NULL;
	}
	return m;
}

/* A 2-layer gemma3 (head size 16) with window WIN; local[l] says which layers
 * are local (written as attention.sliding_window_pattern, one flag per layer). */
static struct model *gemma3(const uint8_t local[2], uint8_t **buf)
{
	struct tinymodel_spec s;
	struct ggufw *w = ggufw_new();
	tinymodel_defaults(&s, "gemma3");
	s.head_dim = 16;
	tinymodel_add(w, &s);
	ggufw_add_u32(w, "gemma3.attention.sliding_window", WIN);
	ggufw_add_arr_raw(w, "gemma3.attention.sliding_window_pattern", GGUF_BOOL, local, 2, 1);
	struct model *m = load(w, buf);
	ggufw_free(w);
	return m;
}

/* A 2-layer gemma2 (layer 0 local with window WIN, layer 1 global) with the
 * given soft-caps. */
static struct model *gemma2(float attn_cap, float final_cap, uint8_t **buf)
{
	struct tinymodel_spec s;
	struct ggufw *w = ggufw_new();
	tinymodel_defaults(&s, "gemma2");
	s.head_dim = 16;
	tinymodel_add(w, &s);
	ggufw_add_u32(w, "gemma2.attention.sliding_window", WIN);
	ggufw_add_f32(w, "gemma2.attn_logit_softcapping", attn_cap);
	ggufw_add_f32(w, "gemma2.final_logit_softcapping", final_cap);
	struct model *m = load(w, buf);
	ggufw_free(w);
	return m;
}

static struct engine *mk_engine(const struct model *m, uint32_t n_ctx)
{
	struct engine_config cfg;
	struct engine *eng = NULL;
	struct err e;
	engine_config_default(&cfg);
	cfg.backend = ENGINE_BACKEND_CPU;
	cfg.n_ctx = n_ctx;
	cfg.n_threads = 2;
	T_CHECK(engine_create(&eng, m, &cfg, &e) == KVS_OK, "engine_create: %s", e.msg);
	return eng;
}

enum run_mode {
	RUN_PREFILL, /* one batch, tiled attention */
	RUN_DECODE,  /* n - 1 in a batch, the last one alone (split decode) */
	RUN_ATTN,    /* one batch, the last token's weights asked for (whole row) */
	RUN_GATHER,  /* one batch with per-key sums (every token on gathered keys) */
	RUN_N_
};

/* The last token's logits (copied into out, n_vocab) of toks[0..n) at
 * positions 0.. in mode; *attn (n_layer, n_head, n) gets the last token's
 * weights in RUN_ATTN when not NULL. */
static void run(struct engine *eng, const int32_t *toks, uint32_t n, enum run_mode mode, float *out,
                float *attn)
{
	const struct model *m = engine_model(eng);
	uint32_t nv = m->hp.n_vocab, nb = mode == RUN_DECODE ? n - 1 : n;
	int32_t pos[NTOK];
	uint32_t slot[NTOK];
	struct engine_out o;
	struct err e;
	for (uint32_t i = 0; i < n; i++) {
		pos[i] = (int32_t)i;
		slot[i] = i;
	}
	engine_kv_clear(eng);
	struct engine_batch b = { .n_tokens = nb,
		                      .tokens = toks,
		                      .pos = pos,
		                      .slot = slot,
		                      .n_visible = nb,
		                      .logits = ENGINE_LOGITS_LAST,
		                      .want_attn = mode == RUN_ATTN,
		                      .want_attn_kv = mode == RUN_GATHER };
	int rc = engine_forward(eng, &b, &o, &e);
	T_CHECK(rc == KVS_OK, "forward: %s", e.msg);
	const float *row = rc == KVS_OK ? o.logits : NULL;
	if (rc == KVS_OK && mode == RUN_DECODE)
		row = refdata_decode_one(eng, toks[n - 1], (int32_t)n - 1, &e);
	T_CHECK(row != NULL, "decode: %s", e.msg);
	if (row == NULL)
		return;
	memcpy(out, row, nv * sizeof(float));
	if (attn != NULL && mode == RUN_ATTN)
		memcpy(attn, o.attn, (size_t)m->hp.n_layer * m->hp.n_head * n * sizeof(float));
}

/* Tokens 3, 4, ... with the first n_change of them replaced. */
static void tokens(int32_t *t, uint32_t n_change, int32_t with)
{
	for (uint32_t i = 0; i < NTOK; i++)
		t[i] = (int32_t)(3 + (i * 37) % 200);
	for (uint32_t i = 0; i < n_change; i++)
		t[i] = with + (int32_t)i;
}

/* The receptive field of every mode, and the weights of RUN_ATTN. */
static void test_window(void)
{
	static const uint8_t all_local[2] = { 1, 1 }, one_global[2] = { 1, 0 };
	uint8_t *buf = NULL, *buf2 = NULL;
	struct model *m = gemma3(all_local, &buf), *mg = gemma3(one_global, &buf2);
	if (m == NULL || mg == NULL)
		goto out;
	T_EQ_INT(model_layer_window(&m->hp, 0), WIN);
	T_EQ_INT(model_layer_window(&m->hp, 1), WIN);
	T_EQ_INT(model_layer_window(&mg->hp, 1), 0);
	struct engine *eng = mk_engine(m, NCTX), *engg = mk_engine(mg, NCTX);
	uint32_t nv = m->hp.n_vocab, reach = 2 * (WIN - 1); /* L (W - 1) */
	float *a = xmallocarray(nv, sizeof(float)), *b = xmallocarray(nv, sizeof(float));
	float *attn = xmallocarray((size_t)2 * m->hp.n_head * NTOK, sizeof(float));
	int32_t t0[NTOK], far[NTOK], near[NTOK];
	tokens(t0, 0, 0);
	tokens(far, NTOK - 1 - reach, 210); /* every token beyond the reach */
	tokens(near, NTOK - reach, 210);    /* and the first one within it */
	for (int mode = 0; eng && engg && mode < RUN_N_; mode++) {
		run(eng, t0, NTOK, mode, a, NULL);
		run(eng, far, NTOK, mode, b, NULL);
		T_CHECK(memcmp(a, b, nv * sizeof(float)) == 0,
		        "mode %d: tokens beyond the window's reach changed the logits", mode);
		run(eng, near, NTOK, mode, b, NULL);
		T_CHECK(memcmp(a, b, nv * sizeof(float)) != 0,
		        "mode %d: a token within the reach left the logits alone", mode);
		run(engg, t0, NTOK, mode, a, NULL);
		run(engg, far, NTOK, mode, b, NULL);
		T_CHECK(memcmp(a, b, nv * sizeof(float)) != 0,
		        "mode %d: with a global layer, far tokens left the logits alone", mode);
	}
	/* the last token's weights: local layer 0 sees positions > NTOK-1-WIN */
	if (eng && engg) {
		run(engg, t0, NTOK, RUN_ATTN, a, attn);
		for (uint32_t l = 0; l < 2; l++)
			for (uint32_t h = 0; h < m->hp.n_head; h++) {
				const float *w = attn + ((size_t)l * m->hp.n_head + h) * NTOK;
				double in = 0, outw = 0;
				for (uint32_t k = 0; k < NTOK; k++) {
					if (k + WIN > NTOK - 1)
						in += w[k];
					else
						outw += w[k];
				}
				if (l == 0) {
					T_CHECK(outw == 0, "layer 0 head %u: %g weight outside the window", h, outw);
					T_NEAR(in, 1.0, 1e-5);
				} else {
					T_CHECK(outw > 0, "global layer head %u: no weight on far keys", h);
					T_NEAR(in + outw, 1.0, 1e-5);
				}
			}
	}
	free(a);
	free(b);
	free(attn);
	engine_free(eng);
	engine_free(engg);
out:
	model_free(m);
	model_free(mg);
	free(buf);
	free(buf2);
}

/* Soft-caps: the final one against tanh by hand, the attention one by its
 * limit (a cap near 0 flattens every row of weights). */
static void test_softcap(void)
{
	uint8_t *b1 = NULL, *b2 = NULL, *b3 = NULL;
	struct model *wide = gemma2(1e5f, 1e5f, &b1), *capped = gemma2(1e5f, 2.0f, &b2);
	struct model *flat = gemma2(1e-4f, 1e5f, &b3);
	if (wide == NULL || capped == NULL || flat == NULL)
		goto out;
	T_NEAR(capped->hp.final_softcap, 2.0, 0);
	T_NEAR(wide->hp.embd_scale, sqrtf(32.0f), 0);
	T_EQ_INT(wide->hp.ffn_act, FFN_GELU);
	T_EQ_INT(model_layer_window(&wide->hp, 0), WIN);
	T_EQ_INT(model_layer_window(&wide->hp, 1), 0);
	uint32_t nv = wide->hp.n_vocab, nh = wide->hp.n_head;
	struct engine *e1 = mk_engine(wide, NCTX), *e2 = mk_engine(capped, NCTX);
	struct engine *e3 = mk_engine(flat, NCTX);
	float *x = xmallocarray(nv, sizeof(float)), *y = xmallocarray(nv, sizeof(float));
	float *attn = xmallocarray((size_t)2 * nh * NTOK, sizeof(float));
	int32_t t[NTOK];
	tokens(t, 0, 0);
	for (int mode = 0; e1 && e2 && mode < RUN_N_; mode++) {
		run(e1, t, NTOK, mode, x, NULL);
		run(e2, t, NTOK, mode, y, NULL);
		double worst = 0, big = 0;
		for (uint32_t j = 0; j < nv; j++) {
			worst = fmax(worst, fabs(y[j] - 2.0 * tanh(x[j] / 2.0)));
			big = fmax(big, fabs(x[j]));
		}
		T_CHECK(worst < 1e-5, "mode %d: capped logits off 2 tanh(x / 2) by %g", mode, worst);
		T_CHECK(big > 1.0, "mode %d: logits too small (%g) for the cap to bend them", mode, big);
	}
	if (e3 != NULL) {
		run(e3, t, NTOK, RUN_ATTN, x, attn);
		for (uint32_t l = 0; l < 2; l++)
			for (uint32_t h = 0; h < nh; h++) {
				const float *w = attn + ((size_t)l * nh + h) * NTOK;
				uint32_t m = l == 0 ? WIN : NTOK; /* keys the last query sees */
				for (uint32_t k = NTOK - m; k < NTOK; k++)
					T_CHECK(fabs(w[k] * m - 1.0) < 1e-3,
					        "layer %u head %u key %u: weight %g, "
					        "expected 1/%u",
					        l, h, k, w[k], m);
			}
	}
	free(x);
	free(y);
	free(attn);
	engine_free(e1);
	engine_free(e2);
	engine_free(e3);
out:
	model_free(wide);
	model_free(capped);
	model_free(flat);
	free(b1);
	free(b2);
	free(b3);
}

/* LongRoPE: the rotated key of slot 4 (position 4) against its pre-RoPE key
 * rotated by hand with the long divisors (1, 2, 3, ...: n_ctx 64 > 32) or
 * the short ones (1, 1.5, 2, ...: n_ctx 32). */
static void test_longrope(void)
{
	struct tinymodel_spec s;
	struct ggufw *w = ggufw_new();
	uint8_t *buf = NULL;
	tinymodel_defaults(&s, "phi3");
	s.head_dim = 16;
	s.longrope = true;
	tinymodel_add(w, &s);
	ggufw_add_u32(w, "phi3.rope.scaling.original_context_length", 32);
	struct model *m = load(w, &buf);
	ggufw_free(w);
	if (m == NULL)
		return;
	T_EQ_INT(m->hp.rope_ctx_orig, 32);
	uint32_t nv = m->hp.n_vocab;
	float *rows = xcalloc((size_t)2 * nv, sizeof(float));
	for (int lng = 0; lng < 2; lng++) {
		struct engine *eng = mk_engine(m, lng ? 64 : 32);
		int32_t t[5] = { 5, 6, 7, 8, 9 };
		float raw[16], rot[16];
		struct err e;
		if (eng == NULL)
			continue;
		run(eng, t, 5, RUN_PREFILL, rows + (size_t)lng * nv, NULL);
		T_EQ_INT(engine_kv_read(eng, 1, 4, 1, false, false, raw, &e), KVS_OK);
		T_EQ_INT(engine_kv_read(eng, 1, 4, 1, false, true, rot, &e), KVS_OK);
		double worst = 0;
		for (uint32_t i = 0; i < 8; i++) {
			double f = lng ? i + 1.0 : 1.0 + 0.5 * i;
			double th = 4.0 * pow(10000.0, -2.0 * i / 16) / f, c = cos(th), sn = sin(th);
			double x0 = raw[i], x1 = raw[i + 8]; /* rotate-half pairs */
			worst = fmax(worst, fabs(rot[i] - (x0 * c - x1 * sn)));
			worst = fmax(worst, fabs(rot[i + 8] - (x0 * sn + x1 * c)));
		}
		T_CHECK(worst < 1e-5, "LongRoPE %s table: rotated key off by %g", lng ? "long" : "short",
		        worst);
		engine_free(eng);
	}
	/* the engine's own attention rotates with the table too */
	T_CHECK(memcmp(rows, rows + nv, nv * sizeof(float)) != 0,
	        "the long and short tables gave the same logits");
	free(rows);
	model_free(m);
	free(buf);
}

int main(void)
{
	test_window();
	test_softcap();
	test_longrope();
	return t_done("test-swa");
}
