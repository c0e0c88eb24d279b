/*
 * gpu-check-sparse.c: `gpu-check sparse`, the sparse decode (quest, hip)
 * of the backend under test against the CPU backend's, and its rates.
 *
 * Both engines hold the same cache (the same prompt prefilled densely,
 * then the same tokens decoded sparsely, teacher-forced), so each step
 * must make the same choice. The choice is compared per (layer, KV head)
 * through engine_out.sel:
 *   - quest: the chosen pages must be the CPU's, except pages whose CPU
 *     bound lies within the bounds' rounding (2e-3 of the largest bound,
 *     plus the largest bound difference seen) of the cut (the k-th best
 *     bound): a near tie that the float order of a sum may flip. The page
 *     bounds themselves (engine_out.page_ub) must agree to that rounding,
 *     with the same pages empty (-inf).
 *   - hip: the search scores blocks by logits of keys rotated in f32 on the
 *     device and rounded to F16 first on the CPU, so a near tie may go the
 *     other way; at most 2 % of the rows may differ.
 * Logits of the steps whose choice agreed everywhere must agree as dense
 * decode does (5e-3 of the largest logit). A budget that covers the whole
 * cache must give the dense step's logits on the device itself (1e-4) and
 * read every key. After slot copies that reorder positions, the page
 * bounds (engine_kv_page_bounds) must still be the CPU's and the choice
 * must still agree. Timings: decode at 128 and 32k cached tokens (4k with
 * --quick), dense against quest (budget 2048) and hip, graphs on.
 */
#include "tests/gpu/gpu-check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Agreement of the choices over a run of steps. */
struct agree {
	uint64_t rows, same, ties, bad; /* (step, sparse layer, KV head) rows */
	uint64_t steps, steps_same;
	double ub_max, ub_diff; /* largest |bound| and largest CPU-device difference */
	bool ninf_same;         /* the same pages without candidates */
	uint64_t keys_mismatch; /* same-choice steps whose keys_read differ */
	struct cmp lg;          /* logits of the same-choice steps */
};

/* The order of the visible entries by position (vpos (n_vis), insertion,
 * stable) into ord; returns how many sit at or before qpos. */
static uint32_t sorted_prefix(const int32_t *vpos, uint32_t n_vis, int32_t qpos, uint32_t *ord)
{
	uint32_t n = 0;
	for (uint32_t j = 0; j < n_vis; j++) {
		uint32_t at = n++;
		while (at > 0 && vpos[ord[at - 1]] > vpos[j]) {
			ord[at] = ord[at - 1];
			at--;
		}
		ord[at] = j;
	}
	uint32_t m = 0;
	while (m < n && vpos[ord[m]] <= qpos)
		m++;
	return m;
}

/* The pages of a row's chosen candidates (sel by entry) into pg (n_pages). */
static void row_pages(const uint8_t *sel, const uint32_t *vis, const uint32_t *ord, uint32_t k0,
                      uint32_t k1, uint32_t page, uint8_t *pg, uint32_t n_pages)
{
	memset(pg, 0, n_pages);
	for (uint32_t k = k0; k < k1; k++)
		if (sel[ord[k]])
			pg[vis[ord[k]] / page] = 1;
}

/* The k-th largest finite value of ub (n), -inf when fewer. */
static float kth_best(const float *ub, uint32_t n, uint32_t k)
{
	float *v = xmallocarray(n ? n : 1, sizeof(float));
	uint32_t nf = 0;
	for (uint32_t i = 0; i < n; i++)
		if (isfinite(ub[i]))
			v[nf++] = ub[i];
	float r = -INFINITY;
	if (k > 0 && k <= nf) {
		/* partial selection sort: k is small */
		for (uint32_t i = 0; i < k; i++)
			for (uint32_t j = i + 1; j < nf; j++)
				if (v[j] > v[i]) {
					float t = v[i];
					v[i] = v[j];
					v[j] = t;
				}
		r = v[k - 1];
	}
	free(v);
	return r;
}

/* One decode step on both engines (vis (n_vis) with positions vpos; the
 * new token's slot and position are the list's last), compared. */
static void step_both(struct engine *cpu, struct engine *dut, const struct engine_sparse *sp,
                      int32_t tok, const uint32_t *vis, const int32_t *vpos, uint32_t n_vis,
                      struct agree *ag)
{
	const struct hparams *hp = &engine_model(cpu)->hp;
	uint32_t nkv = hp->n_head_kv, nl = hp->n_layer, nvoc = hp->n_vocab;
	uint32_t slot = vis[n_vis - 1];
	int32_t pos = vpos[n_vis - 1];
	struct engine_out oc, od;
	g_sparse = sp;
	g_want_sel = true;
	fwd(cpu, &tok, 1, pos, slot, vis, n_vis, ENGINE_LOGITS_LAST, false, false, &oc);
	float *lc = dup_f(oc.logits, nvoc);
	uint8_t *sc = xmalloc((size_t)nl * nkv * n_vis);
	memcpy(sc, oc.sel, (size_t)nl * nkv * n_vis);
	uint32_t np = oc.n_pages;
	float *uc = oc.page_ub ? dup_f(oc.page_ub, (size_t)nl * nkv * np) : NULL;
	uint64_t kc = oc.keys_read;
	fwd(dut, &tok, 1, pos, slot, vis, n_vis, ENGINE_LOGITS_LAST, false, false, &od);
	g_sparse = NULL;
	g_want_sel = false;

	uint32_t *ord = xmallocarray(n_vis, sizeof(uint32_t));
	uint32_t m = sorted_prefix(vpos, n_vis, pos, ord);
	uint32_t k0 = KVS_MIN(sp->sinks, m);
	uint32_t k1 = m - KVS_MIN(KVS_MAX(sp->recent, 1u), m - k0);
	bool quest = sp->mode == ENGINE_SPARSE_QUEST;
	uint32_t units = quest && sp->budget > m - k1 + k0
	        ? (sp->budget - (m - k1 + k0) + sp->page - 1) / sp->page
	        : 0;
	if (quest && uc != NULL && od.page_ub != NULL && od.n_pages == np) {
		for (size_t i = (size_t)sp->dense_layers * nkv * np; i < (size_t)nl * nkv * np; i++) {
			float a = uc[i], b = od.page_ub[i];
			if (isinf(a) || isinf(b)) {
				ag->ninf_same = ag->ninf_same && a == b;
				continue;
			}
			ag->ub_max = fmax(ag->ub_max, fabs(a));
			double d = fabs((double)a - b);
			ag->ub_diff = isnan(d) ? INFINITY : fmax(ag->ub_diff, d);
		}
	} else if (quest) {
		ag->ninf_same = false; /* the bounds must be reported */
	}
	uint8_t *pc = xmalloc(np ? np : 1), *pd = xmalloc(np ? np : 1);
	bool all_same = true;
	for (uint32_t l = sp->dense_layers; l < nl; l++)
		for (uint32_t h = 0; h < nkv; h++) {
			size_t r = (size_t)l * nkv + h;
			const uint8_t *a = sc + r * n_vis, *b = od.sel + r * n_vis;
			ag->rows++;
			if (memcmp(a, b, n_vis) == 0) {
				ag->same++;
				continue;
			}
			all_same = false;
			if (!quest || uc == NULL) {
				ag->bad++;
				continue;
			}
			/* quest: every page chosen on one side only is a near tie */
			row_pages(a, vis, ord, k0, k1, sp->page, pc, np);
			row_pages(b, vis, ord, k0, k1, sp->page, pd, np);
			const float *ub = uc + r * np;
			float thr = kth_best(ub, np, units);
			double tol = 2e-3 * ag->ub_max + ag->ub_diff;
			bool tie = true;
			for (uint32_t p = 0; p < np; p++)
				if (pc[p] != pd[p])
					tie = tie && fabs((double)ub[p] - thr) <= tol;
			if (tie)
				ag->ties++;
			else
				ag->bad++;
		}
	ag->steps++;
	if (all_same) {
		ag->steps_same++;
		cmp_rows(&ag->lg, lc, od.logits, 1, nvoc);
		ag->keys_mismatch += kc != od.keys_read;
	}
	free(pc);
	free(pd);
	free(ord);
	free(lc);
	free(sc);
	free(uc);
}

/* Report a run's agreement under name. */
static void agree_report(const char *tag, const struct engine_sparse *sp, const char *what,
                         const struct agree *ag)
{
	char name[96];
	bool quest = sp->mode == ENGINE_SPARSE_QUEST;
	const char *mode = quest ? "quest" : "hip";
	snprintf(name, sizeof name, "%s %s choice%s", tag, mode, what);
	bool ok = quest ? ag->bad == 0 : ag->bad * 50 <= ag->rows;
	check(ok && ag->rows > 0, name,
	      "%llu/%llu (layer, KV head) rows the same, %llu near ties, %llu differ (%s)",
	      (unsigned long long)ag->same, (unsigned long long)ag->rows, (unsigned long long)ag->ties,
	      (unsigned long long)ag->bad, quest ? "none may" : "2 % may");
	if (quest) {
		snprintf(name, sizeof name, "%s quest page bounds%s", tag, what);
		check(ag->ninf_same && ag->ub_diff <= 2e-3 * fmax(ag->ub_max, 1e-6), name,
		      "max|d| %.3g of max|bound| %.3g, empty pages %s", ag->ub_diff, ag->ub_max,
		      ag->ninf_same ? "the same" : "DIFFER (or not reported)");
	}
	snprintf(name, sizeof name, "%s %s logits%s", tag, mode, what);
	cmp_check(name, &ag->lg, 5e-3);
	snprintf(name, sizeof name, "%s %s keys read%s", tag, mode, what);
	check(ag->keys_mismatch == 0 && ag->steps_same > 0, name,
	      "%llu of %llu same-choice steps read a different number of keys",
	      (unsigned long long)ag->keys_mismatch, (unsigned long long)ag->steps_same);
}

/* Decode D steps after a dense prompt of P tokens on both engines; then,
 * after slot copies that reorder positions, the bounds and D more steps. */
static void sparse_parity(const struct model *m, const char *tag, const struct engine_sparse *sp)
{
	const struct hparams *hp = &m->hp;
	uint32_t P = 1500, D = g_quick ? 8 : 24, ctx = 2048, nvoc = hp->n_vocab;
	struct engine *cpu = mk_engine(m, ENGINE_BACKEND_CPU, false, ctx);
	struct engine *dut = mk_engine(m, g_b, false, ctx);
	int32_t *toks = rand_tokens(P + 2 * D, nvoc);
	uint32_t *vis = xmallocarray(ctx, sizeof(uint32_t));
	int32_t *vpos = xmallocarray(ctx, sizeof(int32_t));
	struct engine_out o;
	fwd(cpu, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_NONE, false, false, &o);
	fwd(dut, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_NONE, false, false, &o);
	struct agree ag;
	memset(&ag, 0, sizeof ag);
	ag.ninf_same = true;
	uint32_t nv = 0;
	for (uint32_t s = 0; s < P; s++) {
		vis[nv] = s;
		vpos[nv++] = (int32_t)s;
	}
	for (uint32_t t = 0; t < D; t++) {
		vis[nv] = P + t;
		vpos[nv] = (int32_t)(P + t);
		nv++;
		step_both(cpu, dut, sp, toks[P + t], vis, vpos, nv, &ag);
	}
	agree_report(tag, sp, "", &ag);

	/* slot copies: slots 100..299 take the keys (and positions) of 400..599,
	 * which leave the visible set; positions are no longer in slot order */
	uint32_t dst[200], src[200];
	for (uint32_t i = 0; i < 200; i++) {
		dst[i] = 100 + i;
		src[i] = 400 + i;
	}
	struct err e;
	if (engine_kv_copy(cpu, dst, src, 200, &e) != KVS_OK ||
	    engine_kv_copy(dut, dst, src, 200, &e) != KVS_OK) {
		check(false, "sparse slot copy", "%s", e.msg);
		goto out;
	}
	nv = 0;
	for (uint32_t s = 0; s < P + D; s++) {
		if (s >= 400 && s < 600)
			continue;
		vis[nv] = s;
		vpos[nv++] = engine_kv_pos(cpu, s);
	}
	if (sp->mode == ENGINE_SPARSE_QUEST) {
		/* the bounds after the copies, every layer, sampled pages */
		double worst = 0;
		uint32_t n_cmp = 0, keys_bad = 0, hd = hp->head_dim;
		float mn[256], mx[256], mn2[256], mx2[256];
		uint32_t pages = (ctx + sp->page - 1) / sp->page;
		for (uint32_t l = 0; l < hp->n_layer; l++)
			for (uint32_t h = 0; h < hp->n_head_kv; h++)
				for (uint32_t p = l % 3; p < pages; p += 5) {
					uint32_t na = 0, nb = 0;
					if (engine_kv_page_bounds(cpu, sp->page, l, h, p, mn, mx, &na, &e) != KVS_OK ||
					    engine_kv_page_bounds(dut, sp->page, l, h, p, mn2, mx2, &nb, &e) !=
					            KVS_OK) {
						check(false, "sparse page bounds", "%s", e.msg);
						goto out;
					}
					keys_bad += na != nb;
					for (uint32_t d = 0; na > 0 && d < hd; d++) {
						worst = fmax(worst, fabs(mn[d] - mn2[d]) / fmax(1.0, fabs(mn[d])));
						worst = fmax(worst, fabs(mx[d] - mx2[d]) / fmax(1.0, fabs(mx[d])));
					}
					n_cmp++;
				}
		char name[96];
		snprintf(name, sizeof name, "%s page bounds after copies", tag);
		check(worst <= 2e-3 && keys_bad == 0, name,
		      "%u pages: max rel |d| %.2e (tol 2e-3, one F16 step), %u with other key counts",
		      n_cmp, worst, keys_bad);
	}
	memset(&ag, 0, sizeof ag);
	ag.ninf_same = true;
	for (uint32_t t = 0; t < D; t++) {
		vis[nv] = P + D + t;
		vpos[nv] = (int32_t)(P + D + t);
		nv++;
		step_both(cpu, dut, sp, toks[P + D + t], vis, vpos, nv, &ag);
	}
	agree_report(tag, sp, " after copies", &ag);
out:
	free(toks);
	free(vis);
	free(vpos);
	engine_free(cpu);
	engine_free(dut);
}

/* A budget over the whole cache: the device's sparse step is its dense one. */
static void sparse_full(const struct model *m, const char *tag, const struct engine_sparse *sp0)
{
	const struct hparams *hp = &m->hp;
	uint32_t P = 600, D = 8, ctx = 1024, nvoc = hp->n_vocab;
	struct engine_sparse sp = *sp0;
	sp.budget = 4 * ctx;
	struct engine *dense = mk_engine(m, g_b, false, ctx), *sparse = mk_engine(m, g_b, false, ctx);
	int32_t *toks = rand_tokens(P + D, nvoc);
	struct engine_out o;
	fwd(dense, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_NONE, false, false, &o);
	fwd(sparse, toks, P, 0, 0, NULL, P, ENGINE_LOGITS_NONE, false, false, &o);
	struct cmp c;
	memset(&c, 0, sizeof c);
	uint64_t short_reads = 0;
	for (uint32_t t = 0; t < D; t++) {
		uint32_t at = P + t;
		fwd(dense, toks + at, 1, (int32_t)at, at, NULL, at + 1, ENGINE_LOGITS_LAST, false, false,
		    &o);
		float *ld = dup_f(o.logits, nvoc);
		g_sparse = &sp;
		fwd(sparse, toks + at, 1, (int32_t)at, at, NULL, at + 1, ENGINE_LOGITS_LAST, false, false,
		    &o);
		g_sparse = NULL;
		short_reads += o.keys_read != o.keys_dense;
		cmp_rows(&c, ld, o.logits, 1, nvoc);
		free(ld);
	}
	char name[96];
	snprintf(name, sizeof name, "%s %s budget over the cache = dense", tag,
	         sp.mode == ENGINE_SPARSE_QUEST ? "quest" : "hip");
	check(cmp_rel(&c) <= 1e-4 && c.bad == 0 && short_reads == 0, name,
	      "max|d| %.3g (rel %.2e, tol 1e-4), %llu steps read fewer keys than dense", c.max_abs,
	      cmp_rel(&c), (unsigned long long)short_reads);
	free(toks);
	engine_free(dense);
	engine_free(sparse);
}

/* Decode rates at the depths: dense, quest and hip. */
static void sparse_bench(const struct model *m)
{
	uint32_t depths[2] = { 128, g_quick ? 4096u : 32768u };
	struct engine_sparse q, h;
	struct err e;
	if (engine_sparse_parse("quest:budget=2048", &q, &e) != KVS_OK ||
	    engine_sparse_parse("hip:budget=2048", &h, &e) != KVS_OK) {
		check(false, "sparse spec", "%s", e.msg);
		return;
	}
	const struct {
		const char *name;
		const struct engine_sparse *sp;
	} runs[] = { { "dense", NULL }, { "quest", &q }, { "hip", &h } };
	for (int d = 0; d < 2; d++) {
		double dense_w = 0, dense_g = 0;
		for (size_t r = 0; r < KVS_ARRAY_LEN(runs); r++) {
			double w, g, s;
			g_sparse = runs[r].sp;
			bench_decode(m, depths[d], true, &w, &g, &s);
			g_sparse = NULL;
			if (r == 0) {
				dense_w = w;
				dense_g = g;
			}
			bool ev = g > 0 && dense_g > 0;
			printf("     decode @%-6u %-5s graphs on %8.1f tok/s wall (%.3f ms), %8.1f tok/s GPU "
			       "(%.3f ms); x%.2f of dense (%s)\n",
			       depths[d], runs[r].name, 1000.0 / w, w, g > 0 ? 1000.0 / g : 0.0, g,
			       ev ? dense_g / g : dense_w / w, ev ? "GPU events" : "wall");
			table_row("| decode, %5u %-6s | %-6s | %10.1f | %18.1f |", depths[d], runs[r].name,
			          "on", 1000.0 / w, g > 0 ? 1000.0 / g : 0.0);
			if (d == 1 && depths[d] == 32768 && runs[r].sp == &q)
				goal_note("quest at 32k over dense (wall, x)", dense_w / w, 3.0, "x");
		}
	}
}

int cmd_sparse(const char *model_path, bool bench)
{
	struct engine_sparse q, h;
	struct err e;
	if (engine_sparse_parse("quest:budget=256,page=16,sinks=4,recent=32,dense=2", &q, &e) !=
	            KVS_OK ||
	    /* rerank=0: the device's HiP has no re-rank (it reuses a refresh's
	     * choice unchanged), so the CPU it is compared with must not either */
	    engine_sparse_parse("hip:budget=256,block=8,sinks=4,recent=32,dense=2,refresh=4,rerank=0",
	                        &h, &e) != KVS_OK) {
		fprintf(stderr, "gpu-check: %s\n", e.msg);
		return 2;
	}
	struct model *mf = NULL;
	if (model_path != NULL && model_load(&mf, model_path, &e) != KVS_OK) {
		fprintf(stderr, "gpu-check: %s\n", e.msg);
		return 2;
	}
	struct rmodel *rm = rm_build(&smol_spec, 13);
	const struct {
		const struct model *m;
		const char *tag;
	} ms[] = { { &rm->m, "smollm2-shape" }, { mf, "model file" } };
	for (size_t i = 0; i < KVS_ARRAY_LEN(ms); i++) {
		if (ms[i].m == NULL)
			continue;
		printf("== sparse: %s (%s)\n", ms[i].tag, ms[i].m->name ? ms[i].m->name : "?");
		sparse_parity(ms[i].m, ms[i].tag, &q);
		sparse_parity(ms[i].m, ms[i].tag, &h);
		sparse_full(ms[i].m, ms[i].tag, &q);
		sparse_full(ms[i].m, ms[i].tag, &h);
	}
	if (bench) {
		printf("== sparse bench: %s, batch 1\n", mf ? "model file" : "smollm2-shape");
		sparse_bench(mf ? mf : &rm->m);
	}
	table_row("sparse (see PASS/FAIL lines): %d failures so far", g_fail);
	rm_free(rm);
	model_free(mf);
	return 0;
}
