/*
 * test-tui-sparsity.c: the sparsity pane and the attention view's marks
 * through the fake renderer, from step events as the worker sends them
 * (deep copies with a sparse view). Pinned: the pane appears (registered
 * at the first sparse step) and draws its figures at 80x24 and 160x48,
 * keys touched from the stats (25.0 %, hand-computed), every layer's row
 * of the map at 160x48 and layers grouped at 80x24, the sink and recent
 * columns lettered, a dense layer '~'; an unattended key with no dense
 * weight drawn as a cross (not a blank like an attended key with none); a
 * step between shadows (no rows) updates the pane and leaves the attention
 * history alone; sparse off says so. The document's clustering shows its
 * progress in the status line ("clustering document: 40 %"), then the
 * notice that ends it.
 */
#include "app/app.h"
#include "tui/tui-int.h"
#include "tests/unit/test.h"

#include <locale.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NL 4  /* layers */
#define NH 4  /* query heads */
#define NKV 2 /* KV heads */
#define NC 40 /* keys */

/* The grid of t drawn at w x h (ascii glyphs) as text (caller owns). */
static char *draw(struct tui *t, int w, int h)
{
	struct tui_grid g = { 0 };
	int cx, cy;
	tui_grid_resize(&g, w, h);
	g.ascii = true;
	tui_draw(t, &g, "", 0, &cx, &cy);
	char *d = tui_grid_dump(&g);
	tui_grid_free(&g);
	if (getenv("TEST_TUI_VERBOSE"))
		fprintf(stderr, "%s\n", d);
	return d;
}

static bool has(struct tui *t, int w, int h, const char *needle)
{
	char *d = draw(t, w, h);
	bool ok = strstr(d, needle) != NULL;
	free(d);
	return ok;
}

/* The row of the dump that holds needle (caller owns), or NULL. */
static char *row_with(struct tui *t, int w, int h, const char *needle)
{
	char *d = draw(t, w, h), *p = strstr(d, needle), *r = NULL;
	if (p != NULL) {
		char *b = p, *e = strchr(p, '\n');
		while (b > d && b[-1] != '\n')
			b--;
		size_t n = e ? (size_t)(e - b) : strlen(b);
		r = xmalloc(n + 1);
		memcpy(r, b, n);
		r[n] = '\0';
	}
	free(d);
	return r;
}

/* A sparse step event at step, with rows (a shadow) or not: layer 0
 * dense, keys 0-1 sinks, 36-39 recent; in layers 1-3 KV head 0 attends
 * keys 10-19 and head 1 keys 10-14; key 25 gets no dense weight. */
static void send_step(struct tui *t, uint64_t step, bool rows)
{
	static uint8_t sel[NL * NKV * NC], mark[NC];
	static float bound[NL * NC], mass[NL * NKV], tight[NL * NKV], attn[NL * NH * NC];
	static struct kv_head_summary hs[NL * NH];
	struct kv_sparse_view v = { 0 };
	struct kv_event ev = { 0 };
	struct kv_tok q = { 0 };
	for (uint32_t l = 0; l < NL; l++)
		for (uint32_t h = 0; h < NKV; h++)
			for (uint32_t k = 0; k < NC; k++)
				sel[(l * NKV + h) * NC + k] =
				        l == 0 || k < 2 || k >= 36 || (k >= 10 && k < (h == 0 ? 20u : 15u));
	for (uint32_t k = 0; k < NC; k++) {
		mark[k] = k < 2 ? KV_SPMARK_SINK : k >= 36 ? KV_SPMARK_RECENT : KV_SPMARK_NONE;
		for (uint32_t l = 0; l < NL; l++)
			bound[l * NC + k] = l == 0 ? NAN : (float)k;
	}
	for (uint32_t i = 0; i < NL * NKV; i++) {
		mass[i] = i < NKV ? 1.0f : 0.9f;
		tight[i] = i < NKV ? NAN : 0.5f;
	}
	for (uint32_t i = 0; i < NL * NH; i++)
		for (uint32_t k = 0; k < NC; k++)
			attn[i * NC + k] = k == 25 ? 0.0f : 1.0f / (NC - 1);
	v.mode = ENGINE_SPARSE_QUEST;
	v.n_layer = NL;
	v.n_head_kv = NKV;
	v.n_cached = NC;
	v.dense_layers = 1;
	v.page = 16;
	v.sel = sel;
	v.mark = mark;
	v.bound = bound;
	v.mass = mass;
	v.tight = tight;
	v.shadow = rows;
	q.orig_pos = NC - 1;
	q.pos = NC - 1;
	ev.kind = KV_EVENT_STEP;
	ev.step = step;
	ev.tok = &q;
	ev.n_layer = NL;
	ev.n_head = NH;
	ev.n_cached = rows ? NC : 0;
	ev.attn = rows ? attn : NULL;
	ev.heads = rows ? hs : NULL;
	ev.sparse = &v;
	ev.stats.n_cached = NC;
	/* the figures as the kv layer would give them: 40 of 160 key-heads is
	 * 25.0 %, 1.25 of 5 MB */
	ev.stats.keys_read = 40;
	ev.stats.keys_dense = 160;
	ev.stats.sp.mode = ENGINE_SPARSE_QUEST;
	ev.stats.sp.step = step;
	ev.stats.sp.bytes_read = 1250000;
	ev.stats.sp.bytes_dense = 5000000;
	ev.stats.sp.overlap = 0.875f;
	ev.stats.sp.shadow_step = rows ? step : 0;
	ev.stats.sp.shadow_every = 4;
	ev.stats.sp.mass_mean = 0.9f;
	ev.stats.sp.mass_min = 0.9f;
	ev.stats.sp.mass_p10 = 0.9f;
	ev.stats.sp.tight = 0.5f;
	ev.stats.sp.attn_ms = 1.5;
	ev.stats.sp.select_ms = 0.25;
	ev.stats.sp.shadow_ms = 4.0;
	struct worker_event we = { 0 };
	we.kind = WORKER_EV_KV;
	worker_kv_copy(&we.kv, &ev);
	if (rows) {
		we.key_pos = xmallocarray(NC, sizeof(int32_t));
		we.key_tok = xmallocarray(NC, sizeof(int32_t));
		for (uint32_t k = 0; k < NC; k++) {
			we.key_pos[k] = (int32_t)k;
			we.key_tok[k] = 100 + (int32_t)k;
		}
	}
	tui_apply(t, &we, 0);
	T_CHECK(we.kv.sparse == NULL, "the view moved into the model");
	worker_kv_free(&we.kv);
	free(we.key_pos);
	free(we.key_tok);
}

static void test_pane(void)
{
	struct tui t;
	tui_init(&t);
	t.n_layer = NL;
	t.n_head = NH;
	T_CHECK(tui_pane_find("sparsity") < 0, "no pane before sparse attention");
	send_step(&t, 5, true);
	int pane = tui_pane_find("sparsity");
	T_CHECK(pane >= 0, "registered at the first sparse step");
	T_EQ_INT(t.n_steps, 1);
	t.tab = pane;
	T_CHECK(has(&t, 80, 24, "quest  step 5  40 keys  3 of 4 layers sparse"), "the heading");
	T_CHECK(has(&t, 80, 24, "keys touched 25.0 % (40 of 160 key-heads), K+V 1.25 of 5.00 MB"),
	        "keys touched");
	T_CHECK(has(&t, 80, 24, "attention 1.50 ms a step (select 0.25), shadow 4.00 ms every 4"),
	        "times");
	T_CHECK(has(&t, 80, 24,
	            "mass (step 5) mean 0.900 min 0.900 p10 0.900  tight 0.50  overlap 0.875"),
	        "mass");
	T_CHECK(has(&t, 80, 24, "overlap 0.875"), "overlap");
	/* 160x48: the right column, one row per layer: dense '=', sinks S,
	 * recent R, chosen '#'-ish blocks and not-chosen dots */
	t.tab = pane;
	char *r0 = row_with(&t, 160, 48, "L0 ");
	char *r1 = row_with(&t, 160, 48, "L1 ");
	T_CHECK(r0 != NULL && r1 != NULL, "layer rows at 160x48");
	if (r0 != NULL && r1 != NULL) {
		T_CHECK(strstr(r0, "SS~~~~") != NULL, "layer 0 dense after the sinks: %s", r0);
		T_CHECK(strstr(r1, "SS........") != NULL && strstr(r1, "RRRR") != NULL,
		        "layer 1: sinks, unchosen keys 2-9, recent: %s", r1);
		char *c = strstr(r1, "SS........");
		T_CHECK(c != NULL && c[10] != '.' && c[10] != ' ', "key 10 chosen: %s", r1);
	}
	free(r0);
	free(r1);
	T_CHECK(has(&t, 160, 48, "L3 "), "every layer");
	/* 80x24: the same pane, tabbed */
	T_CHECK(has(&t, 80, 24, "L0 "), "the map at 80x24");
	/* the attention view: key 25 (no weight, not attended) is a cross,
	 * key 12 (attended by head 0) a heat cell */
	t.tab = 1;
	t.layer = 1;
	t.agg = AGG_HEAD;
	t.head = 0;
	T_CHECK(has(&t, 160, 48, "x=not attended"), "the legend");
	char *g = row_with(&t, 160, 48, "#39   '");
	T_CHECK(g != NULL && strchr(g, 'x') != NULL, "a cross in the shown row: %s", g ? g : "");
	free(g);
	/* between shadows: the pane moves on, the history does not */
	send_step(&t, 6, false);
	T_EQ_INT(t.n_steps, 1);
	t.tab = pane;
	T_CHECK(has(&t, 80, 24, "quest  step 6"), "the pane follows");
	T_CHECK(has(&t, 80, 24, "mass: no dense shadow yet"), "no shadow in these stats");
	/* switched off (a snapshot's stats): the pane says so */
	t.stats.sp.mode = ENGINE_SPARSE_OFF;
	T_CHECK(has(&t, 80, 24, "sparse attention is off"), "off");
	tui_free(&t);
}

/* The document's clustering in the status line: its progress events
 * (done of total (layer, KV head) pairs: 36 of 90 is 40 %), then the
 * notice that ends it in place of the last percentage. */
static void test_progress(void)
{
	struct tui t;
	tui_init(&t);
	struct worker_event ev = { 0 };
	ev.kind = WORKER_EV_PROGRESS;
	ev.done = 36;
	ev.total = 90;
	tui_apply(&t, &ev, 0);
	T_CHECK(has(&t, 80, 24, "clustering document: 40 %"), "status: %s", t.status);
	ev.done = 89;
	tui_apply(&t, &ev, 0);
	T_CHECK(has(&t, 80, 24, "clustering document: 98 %"), "status: %s", t.status);
	ev.done = 90; /* the end leaves the status to the notice */
	tui_apply(&t, &ev, 0);
	T_CHECK(strstr(t.status, "98 %") != NULL, "status: %s", t.status);
	struct worker_event nt = { 0 };
	nt.kind = WORKER_EV_NOTICE;
	snprintf(nt.msg, sizeof nt.msg, "document clustered: 809 keys into 40 fine clusters");
	tui_apply(&t, &nt, 0);
	T_CHECK(has(&t, 80, 24, "document clustered: 809 keys") && !t.status_err, "status: %s",
	        t.status);
	tui_free(&t);
}

int main(void)
{
	setlocale(LC_ALL, "C.UTF-8");
	test_pane();
	test_progress();
	return t_done("test-tui-sparsity");
}
