/*
 * gpu-check-cold.c: `gpu-check cold` (the cold tier's batched copies on
 * the device) and `gpu-check launches` (a decode step's graph against the
 * host's count), and the goals table.
 *
 * cold: on the backend under test, engine_kv_save_batch must give the
 * bytes engine_kv_save gives slot by slot; the gather must read the slots
 * before the decode overwrites them (a batch started, then decode steps
 * that write into its slots, then the batch collected: the old bytes);
 * several batches in flight come back oldest first; a full ring refuses a
 * start until the oldest is released; engine_kv_load_batch gives the
 * bytes and the logits that per-slot loads give. Timings: a 64-slot save
 * batched against slot by slot, and decode with a 512-slot copy in flight
 * against without (the copy should hide behind the decode).
 *
 * launches: for dense, unfused, Quest, HiP searching and reusing, and
 * want_attn steps, the node count of the captured decode graph
 * (gpu_graph_nodes) must equal gpuplan_launches for the same shape.
 */
#include "gpu-check.h"

#include "base/base.h"
#include "gpu/gpuplan.h"
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ goals */

static char g_goals[16][160];
static int g_n_goals;

void goal_note(const char *name, double got, double target, const char *unit)
{
	if (g_n_goals >= 16)
		return;
	snprintf(g_goals[g_n_goals++], sizeof g_goals[0], "GOAL %-6s %-40s %10.1f %s (target >= %.1f)",
	         got >= target ? "met" : "MISSED", name, got, unit, target);
}

void goals_print(void)
{
	if (g_n_goals == 0)
		return;
	printf("\n== the issue's goals (benchmarks, not checks)\n");
	for (int i = 0; i < g_n_goals; i++)
		printf("%s\n", g_goals[i]);
}

/* ------------------------------------------------------------ cold copies */

/* Collect the oldest batch (waiting) and compare it with want (n rows). */
static bool cold_take(struct engine *eng, const uint8_t *want, uint32_t n, uint64_t row, char *why,
                      size_t why_n)
{
	bool ready = false;
	const void *rows = NULL;
	uint32_t got_n = 0;
	struct err e = { 0 };
	if (engine_kv_collect(eng, true, &ready, &rows, &got_n, &e) != KVS_OK) {
		snprintf(why, why_n, "%s", e.msg);
		return false;
	}
	if (!ready || got_n != n) {
		snprintf(why, why_n, "ready %d, %u slots, expected %u", ready, got_n, n);
		return false;
	}
	bool same = memcmp(rows, want, (size_t)n * row) == 0;
	snprintf(why, why_n, "%s", same ? "every byte as engine_kv_save's" : "the bytes differ");
	engine_kv_release(eng);
	return same;
}

static void cold_copies(const struct model *m)
{
	uint32_t ctx = 1024, P = 300, nv = m->hp.n_vocab;
	struct engine *eng = mk_engine(m, g_b, false, ctx), *two = mk_engine(m, g_b, false, ctx);
	uint64_t row = engine_kv_bytes_per_slot(eng);
	int32_t *toks = rand_tokens(P + 16, nv);
	struct engine_out o;
	struct err e = { 0 };
	fwd(eng, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_NONE, false, false, &o);
	/* a: 64 slots, every third; b: 40 slots from 200 */
	uint32_t a[64], b[40];
	for (uint32_t i = 0; i < 64; i++)
		a[i] = 3 * i;
	for (uint32_t i = 0; i < 40; i++)
		b[i] = 200 + i;
	uint8_t *ra = xmalloc(64 * row), *rb = xmalloc(40 * row);
	bool ok = true;
	for (uint32_t i = 0; ok && i < 64; i++)
		ok = engine_kv_save(eng, a[i], ra + i * row, &e) == KVS_OK;
	for (uint32_t i = 0; ok && i < 40; i++)
		ok = engine_kv_save(eng, b[i], rb + i * row, &e) == KVS_OK;
	check(ok, "cold: per-slot saves", "%s", ok ? "read" : e.msg);
	if (!ok)
		goto out;
	/* batch a, then decode steps that overwrite four of its slots */
	ok = engine_kv_save_batch(eng, a, 64, &e) == KVS_OK;
	check(ok, "cold: batched save starts", "%s", ok ? "started" : e.msg);
	if (!ok)
		goto out;
	for (uint32_t t = 0; t < 4; t++) /* slot a[t] gets token P + t at position P + t */
		fwd(eng, toks + P + t, 1, (int32_t)(P + t), a[t], NULL, P, ENGINE_LOGITS_LAST, false, false,
		    &o);
	ok = engine_kv_save_batch(eng, b, 40, &e) == KVS_OK;
	check(ok && engine_kv_held(eng) == 2, "cold: two batches in flight", "%s, %u held",
	      ok ? "started" : e.msg, engine_kv_held(eng));
	char why[600];
	check(cold_take(eng, ra, 64, row, why, sizeof why),
	      "cold: the gather read the slots before the decode overwrote them", "%s", why);
	check(ok && cold_take(eng, rb, 40, row, why, sizeof why), "cold: the second batch after it",
	      "%s", why);
	/* a full ring: starts until one is refused, then the oldest frees room */
	uint32_t started = 0, n_full = ctx / 2;
	uint32_t *big = xmallocarray(n_full, sizeof *big);
	for (uint32_t i = 0; i < n_full; i++)
		big[i] = i % P;
	while (started < 64 && engine_kv_ring_room(eng, n_full) &&
	       engine_kv_save_batch(eng, big, n_full, &e) == KVS_OK)
		started++;
	bool refused = !engine_kv_ring_room(eng, n_full) &&
	        engine_kv_save_batch(eng, big, n_full, &e) == KVS_ESTATE;
	bool ready;
	const void *rows;
	uint32_t n;
	if (started > 0) {
		(void)engine_kv_collect(eng, true, &ready, &rows, &n, &e);
		engine_kv_release(eng);
	}
	bool room = engine_kv_ring_room(eng, n_full);
	check(started > 0 && refused && room, "cold: a full ring refuses, the oldest frees it",
	      "%u batches of %u slots held, then %s; after a release %s", started, n_full,
	      refused ? "refused" : "not refused", room ? "room" : "no room");
	while (engine_kv_held(eng) > 0) {
		(void)engine_kv_collect(eng, true, &ready, &rows, &n, &e);
		engine_kv_release(eng);
	}
	free(big);
	/* loads: batched into slots 600.. of one engine, one by one into the
	 * other's; bytes and the next logits agree */
	uint32_t to[64];
	int32_t pos[64];
	for (uint32_t i = 0; i < 64; i++) {
		to[i] = 600 + i;
		pos[i] = (int32_t)a[i];
	}
	fwd(two, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_NONE, false, false, &o);
	ok = engine_kv_load_batch(eng, to, pos, 64, ra, &e) == KVS_OK;
	for (uint32_t i = 0; ok && i < 64; i++)
		ok = engine_kv_load(two, to[i], pos[i], ra + i * row, &e) == KVS_OK;
	uint8_t *back = xmalloc(row);
	uint32_t differ = 0;
	for (uint32_t i = 0; ok && i < 64; i++) {
		ok = engine_kv_save(eng, to[i], back, &e) == KVS_OK;
		differ += ok && memcmp(back, ra + i * row, row) != 0;
	}
	check(ok && differ == 0, "cold: a batched load writes the rows", "%s, %u slots differ",
	      ok ? "loaded" : e.msg, differ);
	if (ok) {
		/* the visible list: the loaded copies and the prefix after the
		 * four overwritten slots' tokens are gone from both */
		uint32_t *vis = xmallocarray(64 + P, sizeof *vis), nvis = 0;
		for (uint32_t i = 0; i < 64; i++)
			vis[nvis++] = to[i];
		for (uint32_t s = 200; s < P; s++)
			vis[nvis++] = s;
		struct cmp c;
		memset(&c, 0, sizeof c);
		fwd(two, toks + P + 8, 1, (int32_t)P, P, vis, nvis, ENGINE_LOGITS_LAST, false, false, &o);
		float *l2 = dup_f(o.logits, nv);
		fwd(eng, toks + P + 8, 1, (int32_t)P, P, vis, nvis, ENGINE_LOGITS_LAST, false, false, &o);
		cmp_rows(&c, l2, o.logits, 1, nv);
		check(c.max_abs == 0.0, "cold: logits after a batched load = after per-slot loads",
		      "max|d| %.3g (expected 0: the same kernels over the same bytes)", c.max_abs);
		free(l2);
		free(vis);
	}
	free(back);
	/* timings: 64 slots batched against slot by slot; decode with a copy in flight */
	if (g_b == ENGINE_BACKEND_CUDA) {
		double t0 = clock_now_ms();
		for (int r = 0; r < 10; r++) {
			(void)engine_kv_save_batch(eng, a, 64, &e);
			(void)engine_kv_collect(eng, true, &ready, &rows, &n, &e);
			engine_kv_release(eng);
		}
		double batched = (clock_now_ms() - t0) / 10;
		t0 = clock_now_ms();
		for (int r = 0; r < 10; r++)
			for (uint32_t i = 0; i < 64; i++)
				(void)engine_kv_save(eng, a[i], ra + i * row, &e);
		double single = (clock_now_ms() - t0) / 10;
		printf("     cold save of 64 slots: batched %.3f ms, slot by slot %.3f ms (x%.1f)\n",
		       batched, single, batched > 0 ? single / batched : 0.0);
		table_row("cold save of 64 slots: batched %.3f ms, slot by slot %.3f ms", batched, single);
		uint32_t nb = KVS_MIN(512u, P);
		uint32_t *s512 = xmallocarray(nb, sizeof *s512);
		for (uint32_t i = 0; i < nb; i++)
			s512[i] = i;
		double w[2];
		for (int with = 0; with < 2; with++) {
			t0 = clock_now_ms();
			for (uint32_t t = 0; t < 20; t++) {
				if (with)
					(void)engine_kv_save_batch(eng, s512, nb, &e);
				fwd(eng, toks + P + 8, 1, (int32_t)(P + 8), P + 8, NULL, P, ENGINE_LOGITS_LAST,
				    false, false, &o);
				if (with) {
					(void)engine_kv_collect(eng, true, &ready, &rows, &n, &e);
					engine_kv_release(eng);
				}
			}
			w[with] = (clock_now_ms() - t0) / 20;
		}
		printf("     decode step %.3f ms, with a %u-slot cold copy in flight %.3f ms\n", w[0], nb,
		       w[1]);
		table_row("decode step %.3f ms; with a %u-slot cold copy in flight %.3f ms", w[0], nb,
		          w[1]);
		free(s512);
	}
out:
	free(ra);
	free(rb);
	free(toks);
	engine_free(eng);
	engine_free(two);
}

int cmd_cold(const char *model_path)
{
	struct model *mf = NULL;
	struct err e;
	if (model_path != NULL && model_load(&mf, model_path, &e) != KVS_OK) {
		fprintf(stderr, "gpu-check: %s\n", e.msg);
		return 2;
	}
	struct rmodel *rm = rm_build(&smol_spec, 14);
	printf("== cold: %s\n", mf ? "model file" : "smollm2-shape");
	cold_copies(mf ? mf : &rm->m);
	rm_free(rm);
	model_free(mf);
	return 0;
}

/* ------------------------------------------------------------ launches */

/* One decode step of shape s after P tokens on a fresh engine; the nodes
 * of the graph it captured against gpuplan_launches. */
static void launch_case(const struct model *m, const char *name, struct gpuplan_step_shape s,
                        const struct engine_sparse *sp, bool second)
{
	uint32_t P = 600, ctx = 1024, nv = m->hp.n_vocab;
	if (!s.fuse)
		setenv("KVSCOPE_CUDA_FUSE", "0", 1);
	struct engine *eng = mk_engine(m, g_b, false, ctx);
	unsetenv("KVSCOPE_CUDA_FUSE");
	int32_t *toks = rand_tokens(P + 2, nv);
	struct engine_out o;
	fwd(eng, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_NONE, false, false, &o);
	g_sparse = sp;
	for (uint32_t t = 0; t < (second ? 2u : 1u); t++)
		fwd(eng, toks + P + t, 1, (int32_t)(P + t), P + t, NULL, P + t + 1,
		    s.lm ? ENGINE_LOGITS_LAST : ENGINE_LOGITS_NONE, s.attn, false, &o);
	g_sparse = NULL;
	uint64_t got = gpu_graph_nodes();
	uint32_t want = gpuplan_launches(&s);
	check(got == want, name, "%llu graph nodes, gpuplan_launches %u", (unsigned long long)got,
	      want);
	table_row("launches per decode step, %s: %llu", name, (unsigned long long)got);
	free(toks);
	engine_free(eng);
}

int cmd_launches(const char *model_path)
{
	struct model *mf = NULL;
	struct err e;
	if (model_path != NULL && model_load(&mf, model_path, &e) != KVS_OK) {
		fprintf(stderr, "gpu-check: %s\n", e.msg);
		return 2;
	}
	struct rmodel *rm = rm_build(&smol_spec, 15);
	const struct model *m = mf ? mf : &rm->m;
	printf("== launches: %s\n", mf ? "model file" : "smollm2-shape");
	struct engine_sparse q, h;
	if (engine_sparse_parse("quest:budget=256,dense=2", &q, &e) != KVS_OK ||
	    engine_sparse_parse("hip:budget=256,dense=2,refresh=8,beam=1", &h, &e) != KVS_OK) {
		fprintf(stderr, "gpu-check: %s\n", e.msg);
		return 2;
	}
	struct gpuplan_step_shape s = { .n_layer = m->hp.n_layer, .fuse = true, .lm = true };
	launch_case(m, "launches: dense", s, NULL, false);
	struct gpuplan_step_shape u = s;
	u.fuse = false;
	launch_case(m, "launches: dense, KVSCOPE_CUDA_FUSE=0", u, NULL, false);
	struct gpuplan_step_shape a = s;
	a.attn = true;
	launch_case(m, "launches: dense, want_attn", a, NULL, false);
	struct gpuplan_step_shape qs = s;
	qs.sparse = ENGINE_SPARSE_QUEST;
	qs.dense_layers = 2;
	launch_case(m, "launches: quest", qs, &q, false);
	struct gpuplan_step_shape hs = qs;
	hs.sparse = ENGINE_SPARSE_HIP;
	hs.search = true;
	launch_case(m, "launches: hip, searching", hs, &h, false);
	hs.search = false;
	launch_case(m, "launches: hip, reusing", hs, &h, true);
	rm_free(rm);
	model_free(mf);
	return 0;
}
