/*
 * test-tui.c: the workbench's view models through the fake renderer (the
 * text grid): heatmap binning on a log scale, surprisal tint levels,
 * region counts after snapshots and evictions, the one eviction summary
 * line per exchange (before the reply), the layout at several sizes (and
 * every size from 1x1 up without writing out of bounds; the plugins' pane
 * at 160x40 too), the ':' commands (bad input changes nothing and says so
 * in one status line), unsaved exchanges asked about before :quit, :new
 * and :load, the help (full width, scrolled, every command reachable at
 * 80x24), the retention strip's selection (by token, page, turn, text;
 * let go), the mouse wheel and :yank's OSC 52 (RFC 4648 vectors), the
 * status line and the gauge at 80 columns, completion from the command
 * table, the worker's deep copy of KV events, the attention pane's top
 * keys named by their own step, a resumed session's transcript replacing
 * the chat, the chat's scrolling over many messages, and :compare (its
 * errors, the pane side by side and stacked), the map of the (layer, KV
 * head) pairs that keep a selected token. Expected values
 * are computed by hand or by a second, simpler implementation in the test.
 */
#include "store/store.h"
#include "tui/tui-int.h"
#include "tests/unit/test.h"

#include <locale.h>
#include <sys/stat.h>
#include <unistd.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void test_heat_bin(void)
{
	/* floor 1e-4: level = 1 + floor(f * 7), f = (ln w - ln 1e-4) / (-ln 1e-4) */
	float w[4] = { 1.0f, 1e-2f, 1e-5f, 0.5f };
	uint8_t lv[4];
	tui_heat_bin(w, 4, 4, 1e-4f, lv);
	T_EQ_INT(lv[0], 7); /* f = 1 -> 8, clipped */
	T_EQ_INT(lv[1], 4); /* f = 0.5 -> 1 + 3 */
	T_EQ_INT(lv[2], 0); /* below the floor */
	T_EQ_INT(lv[3], 7); /* f = 0.9247 -> 1 + 6 */
	/* 8 keys in 2 bins: each bin shows its largest weight */
	float w8[8] = { 1e-3f, 1e-5f, 1e-5f, 1e-5f, 1e-5f, 1e-5f, 1e-5f, 1e-2f };
	uint8_t l2[2];
	tui_heat_bin(w8, 8, 2, 1e-4f, l2);
	T_EQ_INT(l2[0], 1 + (int)(0.25f * 7)); /* 1e-3: f = 1/4 */
	T_EQ_INT(l2[1], 4);
	/* 3 keys in 2 bins: keys [0,1) and [1,3) */
	float w3[3] = { 1e-5f, 1e-5f, 1.0f };
	tui_heat_bin(w3, 3, 2, 1e-4f, l2);
	T_EQ_INT(l2[0], 0);
	T_EQ_INT(l2[1], 7);
}

static void test_levels(void)
{
	T_EQ_INT(tui_surp_level(NAN), 0);
	T_EQ_INT(tui_surp_level(0.2f), 0);
	T_EQ_INT(tui_surp_level(1.0f), 1);
	T_EQ_INT(tui_surp_level(3.0f), 2);
	T_EQ_INT(tui_surp_level(5.9f), 3);
	T_EQ_INT(tui_surp_level(12.0f), 4);
	T_EQ_INT(tui_count_words(""), 0);
	T_EQ_INT(tui_count_words("  one two\nthree\t four "), 4);
}

static struct kv_tok mk_tok(int32_t pos, uint32_t turn, uint8_t role, uint8_t flags)
{
	struct kv_tok k = { 0 };
	k.token = 100 + pos;
	k.orig_pos = pos;
	k.pos = pos;
	k.turn = turn;
	k.role = role;
	k.flags = flags;
	k.surprisal = k.entropy = k.score = NAN;
	return k;
}

/* A tui with 12 tokens: 2 sinks, 3 key, 1 pinned, 6 recent; then tokens
 * 2..4 evicted. */
static void fill_model(struct tui *t)
{
	struct worker_event ev = { 0 };
	struct kv_tok toks[12];
	for (int i = 0; i < 12; i++) {
		uint8_t f = i < 2           ? KV_FLAG_SINK
		        : (i >= 5 && i < 8) ? KV_FLAG_KEY
		        : i == 8            ? KV_FLAG_PINNED
		                            : 0;
		toks[i] = mk_tok(i, i < 4 ? 0 : i < 8 ? 1 : 2, i < 3 ? KV_ROLE_SYSTEM : KV_ROLE_USER, f);
	}
	ev.kind = WORKER_EV_SNAPSHOT;
	ev.toks = toks;
	ev.n_toks = 12;
	ev.next_pos = 12;
	ev.stats.n_cached = 12;
	ev.stats.budget = 16;
	ev.stats.n_ctx = 64;
	snprintf(ev.policy, sizeof ev.policy, "sirllm");
	tui_apply(t, &ev, 0);
}

static void test_regions_and_banner(void)
{
	struct tui t;
	struct tui_regions r;
	struct kv_tok ev_toks[3];
	struct worker_event ev = { 0 };

	tui_init(&t);
	fill_model(&t);
	tui_regions(&t, &r);
	T_EQ_INT(r.sink, 2);
	T_EQ_INT(r.key, 3);
	T_EQ_INT(r.pinned, 1);
	T_EQ_INT(r.recent, 6);
	T_EQ_INT(r.evicted, 0);
	/* evict 2, 3 (turn 0) and 4 (turn 1): not a system token among 3, 4 but 2 is */
	for (int i = 0; i < 3; i++)
		ev_toks[i] = mk_tok(2 + i, i < 2 ? 0 : 1, 2 + i < 3 ? KV_ROLE_SYSTEM : KV_ROLE_USER, 0);
	ev.kind = WORKER_EV_KV;
	ev.kv.kind = KV_EVENT_EVICT;
	ev.kv.policy = "sirllm";
	ev.kv.stats.budget = 8;
	ev.kv.n_evicted = 3;
	ev.kv.evicted = ev_toks;
	tui_apply(&t, &ev, 0);
	tui_regions(&t, &r);
	T_EQ_INT(r.evicted, 3);
	T_EQ_INT(r.recent, 3); /* 9, 10, 11 */
	T_EQ_INT(r.sink, 2);
	T_CHECK(t.n_msgs == 1 && t.msgs[0].kind == MSG_BANNER, "n_msgs %u", t.n_msgs);
	T_EQ_STR(t.msgs[0].spans[0].text,
	         "evicted 3 tokens from turns 0-1 in 1 round (sirllm, budget 8); system prompt partly "
	         "evicted");
	/* a later snapshot that lacks token 9 marks it evicted too */
	{
		struct worker_event s2 = { 0 };
		struct kv_tok keep[8];
		int k = 0;
		for (int i = 0; i < 12; i++)
			if (i < 2 || (i >= 5 && i != 9))
				keep[k++] = t.toks[i].t;
		s2.kind = WORKER_EV_SNAPSHOT;
		s2.toks = keep;
		s2.n_toks = (uint32_t)k;
		s2.next_pos = 12;
		tui_apply(&t, &s2, 0);
		tui_regions(&t, &r);
		T_EQ_INT(r.evicted, 4);
		T_EQ_INT(r.recent, 2);
	}
	/* a snapshot whose next position went back: a new conversation */
	{
		struct worker_event s3 = { 0 };
		s3.kind = WORKER_EV_SNAPSHOT;
		s3.next_pos = 0;
		tui_apply(&t, &s3, 0);
		tui_regions(&t, &r);
		T_EQ_INT(r.evicted + r.recent + r.sink + r.key + r.pinned, 0);
	}
	tui_free(&t);
}

static bool dump_has(struct tui *t, int w, int h, bool ascii, const char *needle);

/* An eviction event of n tokens of turn (positions from pos on). */
static void evict(struct tui *t, int32_t pos, uint32_t n, uint32_t turn)
{
	struct worker_event ev = { 0 };
	struct kv_tok toks[8];

	for (uint32_t i = 0; i < n && i < 8; i++)
		toks[i] = mk_tok(pos + (int32_t)i, turn, KV_ROLE_USER, 0);
	ev.kind = WORKER_EV_KV;
	ev.kv.kind = KV_EVENT_EVICT;
	ev.kv.policy = "sirllm";
	ev.kv.stats.budget = 8;
	ev.kv.n_evicted = n;
	ev.kv.evicted = toks;
	tui_apply(t, &ev, 0);
}

/* Evictions during an exchange make one summary line, updated in place and
 * placed between the user's message and the reply (prefill and decode
 * rounds alike); evictions between exchanges get one line of their own,
 * after the reply, which later rounds update while nothing came after it. */
static void test_evict_summary(void)
{
	struct tui t;
	struct worker_event ev = { 0 };

	tui_init(&t);
	ev.kind = WORKER_EV_TURN_START;
	ev.user = (char *)"a question";
	tui_apply(&t, &ev, 0);
	evict(&t, 2, 2, 0); /* prefill */
	memset(&ev, 0, sizeof ev);
	ev.kind = WORKER_EV_TOKEN;
	ev.token.text = "Hi";
	ev.token.len = 2;
	tui_apply(&t, &ev, 0);
	evict(&t, 4, 1, 1); /* decode, one token a step */
	evict(&t, 5, 1, 1);
	memset(&ev, 0, sizeof ev);
	ev.kind = WORKER_EV_TOKEN;
	ev.token.text = " there";
	ev.token.len = 6;
	tui_apply(&t, &ev, 0);
	T_EQ_INT(t.n_msgs, 3);
	T_CHECK(t.msgs[0].kind == MSG_USER && t.msgs[1].kind == MSG_BANNER &&
	                t.msgs[2].kind == MSG_ASSISTANT,
	        "user, summary, reply: %d %d %d", t.msgs[0].kind, t.msgs[1].kind, t.msgs[2].kind);
	T_EQ_STR(t.msgs[1].spans[0].text,
	         "evicted 4 tokens from turns 0-1 in 3 rounds (sirllm, budget 8); system prompt kept");
	T_CHECK(t.msgs[2].n_spans == 2, "the reply kept streaming into its message: %u spans",
	        t.msgs[2].n_spans);
	memset(&ev, 0, sizeof ev);
	ev.kind = WORKER_EV_TURN_END;
	ev.turn.reply = (char *)"Hi there";
	tui_apply(&t, &ev, 0);
	/* the reply is the last row of the pane, the summary above it */
	T_CHECK(dump_has(&t, 200, 50, false, "evicted 4 tokens from turns 0-1 in 3 rounds"), "drawn");
	T_CHECK(dump_has(&t, 200, 50, false, "model> Hi there [eos]"), "the reply");
	/* a budget change between exchanges: a line after the reply, one only */
	evict(&t, 6, 1, 1);
	T_EQ_INT(t.n_msgs, 4);
	T_EQ_STR(t.msgs[3].spans[0].text,
	         "evicted 1 token from turn 1 in 1 round (sirllm, budget 8); system prompt kept");
	evict(&t, 7, 2, 1);
	T_EQ_INT(t.n_msgs, 4);
	T_EQ_STR(t.msgs[3].spans[0].text,
	         "evicted 3 tokens from turn 1 in 2 rounds (sirllm, budget 8); system prompt kept");
	/* once something else was said, the next round starts a new line */
	tui_msg_add(&t, MSG_INFO, "new conversation");
	evict(&t, 9, 1, 2);
	T_EQ_INT(t.n_msgs, 6);
	T_CHECK(t.msgs[5].kind == MSG_BANNER, "a new line");
	tui_free(&t);
}

/* Rectangles inside the screen and not overlapping each other. */
static void check_layout(const struct tui *t, int w, int h)
{
	struct tui_layout l;
	struct tui_rect all[20];
	int n = 0;

	tui_layout(t, w, h, 1, &l);
	for (size_t i = 0; i < 16; i++)
		if (l.pane[i].w > 0 && l.pane[i].h > 0)
			all[n++] = l.pane[i];
	if (l.input.w > 0)
		all[n++] = l.input;
	if (l.gauge.w > 0)
		all[n++] = l.gauge;
	if (l.tabbar.w > 0 && l.tabbar.h > 0)
		all[n++] = l.tabbar;
	all[n++] = l.status;
	for (int i = 0; i < n; i++) {
		T_CHECK(all[i].x >= 0 && all[i].y >= 0 && all[i].x + all[i].w <= w &&
		                all[i].y + all[i].h <= h,
		        "%dx%d: rect %d (%d,%d %dx%d) outside", w, h, i, all[i].x, all[i].y, all[i].w,
		        all[i].h);
		for (int j = i + 1; j < n; j++) {
			bool apart = all[i].x + all[i].w <= all[j].x || all[j].x + all[j].w <= all[i].x ||
			        all[i].y + all[i].h <= all[j].y || all[j].y + all[j].h <= all[i].y;
			T_CHECK(apart, "%dx%d: rects %d and %d overlap", w, h, i, j);
		}
	}
}

static bool dump_has(struct tui *t, int w, int h, bool ascii, const char *needle)
{
	struct tui_grid g = { 0 };
	char *d;
	int cx, cy;
	bool has;

	tui_grid_resize(&g, w, h);
	g.ascii = ascii;
	tui_draw(t, &g, "", 0, &cx, &cy);
	d = tui_grid_dump(&g);
	has = strstr(d, needle) != NULL;
	if (!has && getenv("TEST_TUI_VERBOSE"))
		fprintf(stderr, "%s\n", d);
	free(d);
	tui_grid_free(&g);
	return has;
}

static void add_step_w(struct tui *t, uint32_t n_layer, uint32_t n_head, uint32_t n, bool ramp);

static void add_step(struct tui *t, uint32_t n_layer, uint32_t n_head, uint32_t n)
{
	add_step_w(t, n_layer, n_head, n, false);
}

/* A step event: uniform weights, or with ramp w[k] = (k + 1) / sum. */
static void add_step_w(struct tui *t, uint32_t n_layer, uint32_t n_head, uint32_t n, bool ramp)
{
	struct worker_event ev = { 0 };
	struct kv_tok q = mk_tok((int32_t)n - 1, 2, KV_ROLE_ASSISTANT, 0);
	float *attn = xmallocarray((size_t)n_layer * n_head * n, sizeof *attn);
	struct kv_head_summary *hs = xcalloc((size_t)n_layer * n_head, sizeof *hs);
	int32_t *kp = xmallocarray(n, sizeof *kp), *kt = xmallocarray(n, sizeof *kt);

	for (size_t i = 0; i < (size_t)n_layer * n_head; i++)
		for (uint32_t k = 0; k < n; k++)
			attn[i * n + k] = ramp ? (float)(k + 1) / (float)(n * (n + 1) / 2) : 1.0f / (float)n;
	ev.kind = WORKER_EV_KV;
	ev.kv.kind = KV_EVENT_STEP;
	ev.kv.tok = &q;
	ev.kv.n_layer = n_layer;
	ev.kv.n_head = n_head;
	ev.kv.n_cached = n;
	ev.kv.attn = attn; /* tui_apply takes ownership */
	ev.kv.heads = hs;
	/* the keys as the worker names them: the cache at this step holds the
	 * tokens at positions 0 .. n-1 (token ids 100 + position, as mk_tok) */
	for (uint32_t k = 0; k < n; k++) {
		kp[k] = (int32_t)k;
		kt[k] = 100 + (int32_t)k;
	}
	ev.key_pos = kp;
	ev.key_tok = kt;
	tui_apply(t, &ev, 0);
	T_CHECK(ev.kv.attn == NULL && ev.kv.heads == NULL && ev.key_pos == NULL,
	        "the arrays moved into the ring");
}

static void test_layout_and_draw(void)
{
	struct tui t;
	struct tui_layout l;

	tui_init(&t);
	t.n_layer = 4;
	t.n_head = 3;
	fill_model(&t);
	add_step(&t, 4, 3, 12);
	tui_msg_add(&t, MSG_USER, "hello there");
	tui_layout(&t, 80, 24, 1, &l);
	T_CHECK(l.tabs, "80x24 uses tabs");
	T_CHECK(l.pane[0].w == 80 && l.pane[1].w == 0, "one pane at a time");
	tui_layout(&t, 200, 50, 1, &l);
	T_CHECK(!l.tabs, "200x50 shows every pane");
	for (int i = 0; i < 4; i++)
		T_CHECK(l.pane[i].w > 10 && l.pane[i].h > 4, "pane %d is %dx%d", i, l.pane[i].w,
		        l.pane[i].h);
	/* the plugins' pane at every size: at 160x40 and more it takes the
	 * right column (attention and KV memory) until F2-F5 bring those back */
	{
		struct tui_ctx c = { 0 };
		int pl = tui_pane_find("plugins");
		c.t = &t;
		T_CHECK(pl >= 4, "plugins is a pane beyond the four built-ins");
		T_EQ_INT(tui_cmd_run(&c, "pane plugins"), KVS_OK);
		for (int w = 160; w <= 220; w += 60) {
			tui_layout(&t, w, w == 160 ? 40 : 60, 1, &l);
			T_CHECK(!l.tabs && l.pane[pl].w > 20 && l.pane[pl].h > 10, "%d: plugins %dx%d", w,
			        l.pane[pl].w, l.pane[pl].h);
			T_CHECK(l.pane[0].w > 0 && l.pane[3].w > 0, "chat and retention stay");
			T_CHECK(l.pane[1].w == 0 && l.pane[2].w == 0, "attention and memory make room");
			check_layout(&t, w, w == 160 ? 40 : 60);
		}
		T_CHECK(dump_has(&t, 160, 40, false, "Plugins"), "drawn at 160x40");
		T_CHECK(dump_has(&t, 160, 40, false, "Lua plugins are not available"), "its body");
		t.tab = 1; /* F3 */
		tui_layout(&t, 160, 40, 1, &l);
		T_CHECK(l.pane[1].w > 0 && l.pane[2].w > 0 && l.pane[pl].w == 0, "F3: attention back");
		t.tab = 0;
	}
	check_layout(&t, 80, 24);
	check_layout(&t, 200, 50);
	check_layout(&t, 160, 40);
	check_layout(&t, 159, 40);
	check_layout(&t, 20, 5);
	check_layout(&t, 3, 2);
	check_layout(&t, 1, 1);
	/* drawing at every size: clipping keeps every write inside (ASan
	 * checks the grid), nothing crashes */
	for (int w = 1; w <= 210; w += 7)
		for (int h = 1; h <= 55; h += 3) {
			struct tui_grid g = { 0 };
			int cx, cy;
			tui_grid_resize(&g, w, h);
			g.ascii = (w + h) % 2;
			tui_draw(&t, &g, ":multi\nline input", 5, &cx, &cy);
			T_CHECK(cx >= 0 && cx < w && cy >= 0 && cy < h, "%dx%d: cursor %d,%d", w, h, cx, cy);
			tui_grid_free(&g);
		}
	T_CHECK(dump_has(&t, 200, 50, false, "Attention"), "200x50 shows attention");
	T_CHECK(dump_has(&t, 200, 50, false, "KV memory"), "200x50 shows memory");
	T_CHECK(dump_has(&t, 200, 50, false, "you> hello there"), "chat text");
	/* the chat wraps between words: at 80 columns "you> " and ten 7-cell
	 * words fill 75 cells, so a character wrap would cut word10 at 78 */
	char words[400] = "", wd[16];
	for (int i = 0; i < 30; i++) {
		snprintf(wd, sizeof wd, "%sword%02d", i ? " " : "", i);
		strcat(words, wd);
	}
	tui_msg_add(&t, MSG_USER, words);
	for (int i = 0; i < 30; i++) {
		snprintf(wd, sizeof wd, "word%02d", i);
		T_CHECK(dump_has(&t, 80, 24, false, wd), "80x24: '%s' is cut by the wrap", wd);
	}
	T_CHECK(dump_has(&t, 200, 50, false, "regions sink 0 key 0"), "stats from the snapshot");
	T_CHECK(dump_has(&t, 200, 50, false, "12 keys  entropy"), "sparsity line");
	T_CHECK(dump_has(&t, 80, 24, false, "F2 Chat"), "80x24 tab bar");
	T_CHECK(!dump_has(&t, 80, 24, false, "Retention ─"), "retention hidden at 80x24");
	T_CHECK(dump_has(&t, 80, 24, true, "+- Chat"), "ASCII boxes");
	/* uniform attention over 12 keys: entropy ln 12 in the summary line
	 * is computed by kv_head_summarize for mean aggregation */
	t.agg = AGG_MEAN;
	T_CHECK(dump_has(&t, 200, 50, false, "entropy 2.48 nats"), "ln 12 = 2.4849");
	/* weights (k + 1) / 78: the top keys, largest first (12/78 = 0.154, 11/78 = 0.141 ...) */
	add_step_w(&t, 4, 3, 12, true);
	t.agg = AGG_HEAD;
	T_CHECK(dump_has(&t, 200, 50, false,
	                 "top keys:  #11 '#111' 0.15  #10 '#110' 0.14  #9 '#109' 0.13  #8 '#108' 0.12"),
	        "top keys in order");
	/* the cache changes after the step but keeps its size (11 evicted, 12
	 * came): the step's keys are still named as they were at that step,
	 * never a token later than the step's query (#11) */
	{
		struct worker_event s2 = { 0 };
		struct kv_tok keep[12];
		for (int i = 0; i < 11; i++)
			keep[i] = t.toks[i].t;
		keep[11] = mk_tok(12, 2, KV_ROLE_ASSISTANT, 0);
		s2.kind = WORKER_EV_SNAPSHOT;
		s2.toks = keep;
		s2.n_toks = 12;
		s2.next_pos = 13;
		tui_apply(&t, &s2, 0);
	}
	T_CHECK(dump_has(&t, 200, 50, false, "top keys:  #11 '#111' 0.15  #10 '#110' 0.14"),
	        "the step's own labels after the cache changed");
	T_CHECK(!dump_has(&t, 200, 50, false, "#12 '#112'"), "a key later than its query");
	/* a past step (Shift-Up) names its keys too */
	add_step(&t, 4, 3, 12);
	t.step_back = 1;
	T_CHECK(dump_has(&t, 200, 50, false, "top keys:  #11 '#111' 0.15"), "past step's keys");
	t.step_back = 0;
	tui_free(&t);
}

/* Per-head keep-sets: the KV view counts the sets and the fullest; the
 * retention details say by how many (layer, KV head) pairs the selected
 * token is kept; with one keep-set neither line appears. */
static void test_per_head(void)
{
	struct tui t;
	struct worker_event ev = { 0 };
	struct kv_tok toks[12];
	tui_init(&t);
	for (int i = 0; i < 12; i++) {
		toks[i] = mk_tok(i, 0, KV_ROLE_USER, i == 6 ? KV_FLAG_KEY : 0);
		toks[i].n_heads = (uint16_t)(i == 6 ? 37 : 90);
	}
	ev.kind = WORKER_EV_SNAPSHOT;
	ev.toks = toks;
	ev.n_toks = 12;
	ev.next_pos = 12;
	ev.stats.n_cached = 12;
	ev.stats.budget = 10;
	ev.stats.n_ctx = 64;
	ev.stats.n_head_sets = 90;
	ev.stats.heads_load = 10;
	ev.stats.n_zip_reads = 2;
	ev.stats.n_zip_tokens = 57;
	snprintf(ev.policy, sizeof ev.policy, "kvzip");
	tui_apply(&t, &ev, 0);
	T_CHECK(dump_has(&t, 200, 50, false,
	                 "per-head keep-sets: 90 (layer, KV head) sets, the fullest "
	                 "keeps 10 (budget 10)"),
	        "KV view: per-head line");
	T_CHECK(dump_has(&t, 200, 50, false, "kvzip: 2 re-reads, 57 tokens"), "KV view: re-reads");
	t.sel_tok = 6;
	T_CHECK(dump_has(&t, 200, 50, false, "kept: key token (score -), by 37/90 heads"),
	        "retention details: heads");
	ev.stats.n_head_sets = 0;
	ev.stats.n_zip_reads = 0;
	tui_apply(&t, &ev, 0);
	T_CHECK(!dump_has(&t, 200, 50, false, "/90 heads"), "one keep-set: no heads count");
	T_CHECK(!dump_has(&t, 200, 50, false, "per-head keep-sets"), "one keep-set: no per-head line");
	tui_free(&t);
}

/* Which heads keep the selected token: the snapshot's map (4 layers x 3 KV
 * heads here) drawn above the details, a row per KV head and a column per
 * layer, and the minority named in the header; the pairs are set by hand. */
static void test_head_map(void)
{
	struct tui t;
	struct worker_event ev = { 0 };
	struct kv_tok toks[8];
	uint8_t map[8 * 12];
	tui_init(&t);
	memset(map, 1, sizeof map);
	/* token 6: kept by L0 h0, L0 h2, L2 h1, L3 h0, L3 h1 (5 of 12) */
	memset(map + 6 * 12, 0, 12);
	map[6 * 12 + 0 * 3 + 0] = map[6 * 12 + 0 * 3 + 2] = map[6 * 12 + 2 * 3 + 1] = 1;
	map[6 * 12 + 3 * 3 + 0] = map[6 * 12 + 3 * 3 + 1] = 1;
	/* token 4: dropped by L1 h2 alone */
	map[4 * 12 + 1 * 3 + 2] = 0;
	for (int i = 0; i < 8; i++) {
		toks[i] = mk_tok(i, 0, KV_ROLE_USER, 0);
		toks[i].n_heads = 12;
	}
	toks[6].n_heads = 5;
	toks[4].n_heads = 11;
	ev.kind = WORKER_EV_SNAPSHOT;
	ev.toks = toks;
	ev.n_toks = 8;
	ev.next_pos = 8;
	ev.stats.n_cached = 8;
	ev.stats.budget = 6;
	ev.stats.n_ctx = 64;
	ev.stats.n_head_sets = 12;
	ev.head_keep = map;
	ev.hk_layer = 4;
	ev.hk_head_kv = 3;
	snprintf(ev.policy, sizeof ev.policy, "kvzip");
	tui_apply(&t, &ev, 0);
	T_CHECK(tui_heads_of(&t, 6) != NULL && tui_heads_of(&t, 9) == NULL, "map rows by position");
	t.sel_tok = 6;
	T_CHECK(dump_has(&t, 200, 50, true,
	                 "#6 kept by 5/12 (layer, KV head) pairs; kept by L0 h0 h2, L2 h1, L3 h0 h1"),
	        "header names the pairs that keep it");
	/* the default layout's strip is short: a digit per layer, its KV heads keeping it */
	T_CHECK(dump_has(&t, 200, 50, true, "KV heads keeping it, layers 0-3: 2012"), "folded map");
	{
		/* the whole map where there are rows for it: a row per KV head */
		struct tui_grid g = { 0 };
		tui_grid_resize(&g, 60, 6);
		g.ascii = true;
		struct tui_rect r = { 0, 0, 60, 6 };
		T_EQ_INT(tui_heads_rows(&t, 6, 6), 4);
		T_EQ_INT(tui_heads_rows(&t, 6, 3), 2);
		T_EQ_INT(tui_heads_rows(&t, 6, 1), 1);
		T_EQ_INT(tui_heads_rows(&t, 9, 6), 0);
		tui_heads_draw(&t, &g, r, 1, 4, 6);
		char *row[4];
		for (int i = 0; i < 4; i++)
			row[i] = tui_grid_row(&g, 1 + i);
		T_CHECK(strncmp(row[0], "#6 kept by 5/12 (layer, KV head) pairs; kept by L0", 50) == 0,
		        "%s", row[0]);
		T_EQ_STR(row[1], "kv0  #..# <- layers 0-3");
		T_EQ_STR(row[2], "kv1  ..##");
		T_EQ_STR(row[3], "kv2  #...");
		for (int i = 0; i < 4; i++)
			free(row[i]);
		tui_grid_free(&g);
	}
	T_CHECK(dump_has(&t, 200, 50, true, "by 5/12 heads"), "the details keep the count");
	t.sel_tok = 4;
	T_CHECK(dump_has(&t, 200, 50, true,
	                 "#4 kept by 11/12 (layer, KV head) pairs; dropped by L1 h2"),
	        "header names the one pair that dropped it");
	t.sel_tok = 3;
	T_CHECK(dump_has(&t, 200, 50, true, "#3 kept by 12/12 (layer, KV head) pairs"),
	        "a token every pair keeps");
	/* cut: a name list longer than the buffer ends in "..." */
	char small[12];
	size_t n = tui_heads_list(map + 6 * 12, 4, 3, true, small, sizeof small);
	T_EQ_STR(small, "L0 h0 h2...");
	T_EQ_INT(n, sizeof small - 1);
	/* a token fed after the snapshot (not in the map): no map */
	struct worker_event tk = { 0 };
	struct kv_tok nt = mk_tok(8, 0, KV_ROLE_ASSISTANT, 0);
	tk.kind = WORKER_EV_TOKEN;
	tk.token.meta = &nt;
	tk.token.text = "x";
	tk.token.len = 1;
	tui_apply(&t, &tk, 0);
	t.sel_tok = 8;
	T_CHECK(!dump_has(&t, 200, 50, true, "(layer, KV head) pairs"), "no map for a token it lacks");
	/* one keep-set: no map at all */
	ev.head_keep = NULL;
	ev.stats.n_head_sets = 0;
	tui_apply(&t, &ev, 0);
	t.sel_tok = 6;
	T_CHECK(t.n_hk == 0 && !dump_has(&t, 200, 50, true, "(layer, KV head) pairs"),
	        "one keep-set: no map");
	tui_free(&t);
}

/* The retention strip maps screen cells back to tokens (mouse selection). */
static void test_hit(void)
{
	struct tui t;
	struct tui_grid g = { 0 };
	int cx, cy, found = 0;

	tui_init(&t);
	fill_model(&t);
	tui_grid_resize(&g, 200, 50);
	g.ascii = true; /* one byte per cell, so byte offsets are columns */
	tui_draw(&t, &g, "", 0, &cx, &cy);
	/* every token's text ("#100", "#101", ...) is where the hit map says */
	for (int32_t p = 0; p < 12; p++) {
		char want[16];
		snprintf(want, sizeof want, "#%d", 100 + p);
		for (int y = 0; y < g.h; y++) {
			char *row = tui_grid_row(&g, y);
			char *at = strstr(row, want);
			/* the grid is ASCII here: byte offset = column */
			while (at != NULL && (at[strlen(want)] >= '0' && at[strlen(want)] <= '9'))
				at = strstr(at + 1, want);
			if (at != NULL && tui_hit_token(&t, &g, (int)(at - row), y) == p)
				found++;
			free(row);
		}
	}
	T_EQ_INT(found, 12);
	T_EQ_INT(tui_hit_token(&t, &g, 0, 0), -1);
	tui_grid_free(&g);
	tui_free(&t);
}

/* The retention strip's selection moves by token, page and turn, is let
 * go (Esc, :sel off, a click beside the tokens or on the selected one)
 * so the strip follows the live tail again, and :find searches the
 * tokens' texts. fill_model's turns: 0 (tokens 0-3), 1 (4-7), 2 (8-11). */
static void test_select(void)
{
	struct tui t;
	struct tui_ctx c = { 0 };
	struct tui_grid g = { 0 };
	int cx, cy;

	tui_init(&t);
	c.t = &t;
	fill_model(&t);
	tui_select(&t, SEL_NEXT);
	T_EQ_INT(t.sel_tok, 0);
	tui_select(&t, SEL_TURN_NEXT);
	T_EQ_INT(t.sel_tok, 4);
	tui_select(&t, SEL_TURN_NEXT);
	T_EQ_INT(t.sel_tok, 8);
	tui_select(&t, SEL_NEXT);
	T_EQ_INT(t.sel_tok, 9);
	tui_select(&t, SEL_TURN_PREV);
	T_EQ_INT(t.sel_tok, 8); /* inside a turn: its first token */
	tui_select(&t, SEL_TURN_PREV);
	T_EQ_INT(t.sel_tok, 4); /* at a turn's first token: the turn before */
	tui_select(&t, SEL_TURN_NEXT);
	tui_select(&t, SEL_TURN_NEXT);
	T_EQ_INT(t.sel_tok, -1); /* past the last turn: the live tail */
	tui_select(&t, SEL_PREV);
	T_EQ_INT(t.sel_tok, 11); /* from nothing, Left starts at the end */
	t.strip_page = 5;
	tui_select(&t, SEL_PAGE_UP);
	T_EQ_INT(t.sel_tok, 6);
	tui_select(&t, SEL_PAGE_UP);
	T_EQ_INT(t.sel_tok, 1);
	tui_select(&t, SEL_PAGE_UP);
	T_EQ_INT(t.sel_tok, 0); /* stops at the first */
	tui_select(&t, SEL_PAGE_DOWN);
	T_EQ_INT(t.sel_tok, 5);
	tui_select(&t, SEL_OFF);
	T_EQ_INT(t.sel_tok, -1);
	/* :sel and :find */
	T_EQ_INT(tui_cmd_run(&c, "sel 7"), KVS_OK);
	T_EQ_INT(t.sel_tok, 7);
	T_EQ_INT(tui_cmd_run(&c, "sel turn 2"), KVS_OK);
	T_EQ_INT(t.sel_tok, 8);
	T_CHECK(tui_cmd_run(&c, "sel 99") != KVS_OK && t.sel_tok == 8, "out of range");
	T_CHECK(tui_cmd_run(&c, "sel turn 9") != KVS_OK && t.sel_tok == 8, "no such turn");
	T_EQ_INT(tui_cmd_run(&c, "sel first"), KVS_OK);
	T_EQ_INT(t.sel_tok, 0);
	T_EQ_INT(tui_cmd_run(&c, "sel last"), KVS_OK);
	T_EQ_INT(t.sel_tok, 11);
	T_EQ_INT(tui_cmd_run(&c, "sel off"), KVS_OK);
	T_EQ_INT(t.sel_tok, -1);
	/* the texts are "#100" .. "#111": "#10" begins at 0, 1, ..., 9; then round */
	T_EQ_INT(tui_cmd_run(&c, "find #10"), KVS_OK);
	T_EQ_INT(t.sel_tok, 0);
	T_EQ_INT(tui_cmd_run(&c, "find"), KVS_OK);
	T_EQ_INT(t.sel_tok, 1);
	T_EQ_INT(tui_cmd_run(&c, "find 10#11"), KVS_OK); /* across two: "#110#111", in 10 */
	T_EQ_INT(t.sel_tok, 10);
	T_EQ_INT(tui_cmd_run(&c, "find 0#"), KVS_OK); /* "#100#1": begins inside token 0 */
	T_EQ_INT(t.sel_tok, 0);
	T_CHECK(tui_cmd_run(&c, "find zebra") != KVS_OK && t.sel_tok == 0, "not found");
	/* clicks: a token selects it, again lets go; beside the tokens lets go */
	tui_grid_resize(&g, 200, 50);
	g.ascii = true;
	tui_draw(&t, &g, "", 0, &cx, &cy);
	T_CHECK(t.n_hits == 12 && t.strip.w > 0, "%u tokens drawn", t.n_hits);
	tui_click(&t, &g, t.hits[3].x, t.hits[3].y);
	T_EQ_INT(t.sel_tok, t.hits[3].pos);
	tui_click(&t, &g, t.hits[3].x, t.hits[3].y);
	T_EQ_INT(t.sel_tok, -1);
	tui_click(&t, &g, t.hits[5].x, t.hits[5].y);
	T_EQ_INT(t.sel_tok, t.hits[5].pos);
	tui_click(&t, &g, t.strip.x + t.strip.w - 1, t.strip.y + 1); /* an empty row of the strip */
	T_EQ_INT(t.sel_tok, -1);
	tui_click(&t, &g, t.hits[5].x, t.hits[5].y);
	tui_click(&t, &g, 1, 2); /* the chat: nothing changes */
	T_EQ_INT(t.sel_tok, t.hits[5].pos);
	T_CHECK(t.strip_page == 12, "the strip shows %u tokens at once", t.strip_page);
	tui_grid_free(&g);
	tui_free(&t);
}

/* The mouse wheel scrolls what is under it; :mouse off leaves the mouse to
 * the terminal; :yank puts the last reply (or the chat) on the clipboard
 * as OSC 52, base64 checked against RFC 4648's test vectors. */
static void test_mouse_yank(void)
{
	struct tui t;
	struct tui_ctx c = { 0 };
	struct tui_grid g = { 0 };
	int cx, cy;
	char *seq;
	static const char *const vec[][2] = {
		{ "", "" },
		{ "f", "Zg==" },
		{ "fo", "Zm8=" },
		{ "foo", "Zm9v" },
		{ "foob", "Zm9vYg==" },
		{ "fooba", "Zm9vYmE=" },
		{ "foobar", "Zm9vYmFy" },
	};

	for (size_t i = 0; i < KVS_ARRAY_LEN(vec); i++) {
		char want[64];
		snprintf(want, sizeof want, "\033]52;c;%s\a", vec[i][1]);
		seq = tui_osc52(vec[i][0]);
		T_EQ_STR(seq, want);
		free(seq);
	}
	tui_init(&t);
	c.t = &t;
	fill_model(&t);
	for (int i = 0; i < 60; i++)
		tui_msg_add(&t, MSG_INFO, "a line");
	T_CHECK(tui_cmd_run(&c, "yank") != KVS_OK && t.yank == NULL, "no reply yet: %s", t.status);
	{
		/* an exchange, its reply in two tokens */
		static const char *const parts[] = { "first part", " and the rest" };
		struct worker_event ev = { 0 };
		ev.kind = WORKER_EV_TURN_START;
		ev.user = (char *)"q";
		tui_apply(&t, &ev, 0);
		for (int i = 0; i < 2; i++) {
			memset(&ev, 0, sizeof ev);
			ev.kind = WORKER_EV_TOKEN;
			ev.token.text = parts[i];
			ev.token.len = strlen(parts[i]);
			tui_apply(&t, &ev, 0);
		}
		memset(&ev, 0, sizeof ev);
		ev.kind = WORKER_EV_TURN_END;
		ev.turn.reply = (char *)"first part and the rest";
		tui_apply(&t, &ev, 0);
	}
	T_EQ_INT(tui_cmd_run(&c, "yank"), KVS_OK);
	T_EQ_STR(t.yank, "first part and the rest");
	T_EQ_INT(tui_cmd_run(&c, "yank all"), KVS_OK);
	T_CHECK(t.yank != NULL && strstr(t.yank, "you> q\nmodel> first part and the rest\n") != NULL,
	        "the chat: %s", t.yank ? t.yank : "(null)");
	T_CHECK(tui_cmd_run(&c, "yank nonsense") != KVS_OK, "a bad argument");
	T_EQ_INT(tui_cmd_run(&c, "mouse off"), KVS_OK);
	T_CHECK(t.mouse_off, ":mouse off");
	T_EQ_INT(tui_cmd_run(&c, "mouse on"), KVS_OK);
	T_CHECK(!t.mouse_off, ":mouse on");
	/* the wheel: over the chat it scrolls it, over the strip it moves the
	 * selection, in the help it scrolls the help */
	tui_grid_resize(&g, 200, 50);
	tui_draw(&t, &g, "", 0, &cx, &cy);
	tui_wheel(&t, 5, 5, 1);
	tui_wheel(&t, 5, 5, 1);
	T_EQ_INT(t.chat_scroll, 6);
	tui_wheel(&t, 5, 5, -1);
	T_EQ_INT(t.chat_scroll, 3);
	tui_wheel(&t, t.strip.x + 1, t.strip.y, 1);
	T_EQ_INT(t.sel_tok, 9); /* from nothing: three back from the end */
	T_EQ_INT(t.chat_scroll, 3);
	t.help = true;
	t.help_scroll = 10;
	tui_wheel(&t, 5, 5, -1);
	T_EQ_INT(t.help_scroll, 13);
	tui_wheel(&t, 5, 5, 1);
	tui_wheel(&t, 5, 5, 1);
	T_EQ_INT(t.help_scroll, 7);
	tui_grid_free(&g);
	tui_free(&t);
}

/* Smaller things from issue 20: plurals, the head aggregation in the
 * attention header, sparklines that start over with the conversation. */
static void test_small(void)
{
	struct tui t;
	struct worker_event ev = { 0 };

	tui_init(&t);
	fill_model(&t);
	add_step(&t, 4, 3, 12);
	t.stats.n_evicted = 1;
	t.stats.n_evictions = 1;
	T_CHECK(dump_has(&t, 200, 50, false, "evicted 1 in 1 round"), "one round");
	T_CHECK(!dump_has(&t, 200, 50, false, "1 rounds"), "no '1 rounds'");
	T_CHECK(dump_has(&t, 200, 50, false, "length 0 words (no target)"), "0 words");
	t.turn_words = 1;
	T_CHECK(dump_has(&t, 200, 50, false, "length 1 word (no target)"), "1 word");
	T_CHECK(dump_has(&t, 200, 50, false, "layer 0 [0..3]  head 0 [0..2]  [head]"), "one head");
	t.agg = AGG_MEAN;
	T_CHECK(dump_has(&t, 200, 50, false, "layer 0 [0..3]  heads: mean of 3  [mean]"),
	        "mean of heads");
	T_CHECK(!dump_has(&t, 200, 50, false, "head 0 ["), "no head number under [mean]");
	t.agg = AGG_HEAD;
	/* the status line at 80 columns: a 32-column model name and a long
	 * message push out the model and the backend, never the context and
	 * the policy; the message is cut with "..." */
	snprintf(t.model, sizeof t.model, "Smollm2 135M 8k Lc100K Mix1 Ep2x");
	snprintf(t.backend, sizeof t.backend, "CPU avx2");
	tui_status(&t, false, "switching to policy sirllm mode=paper sinks=4 recent=0 lambda=1 ...");
	{
		struct tui_grid g = { 0 };
		int cx, cy;
		tui_grid_resize(&g, 80, 24);
		tui_draw(&t, &g, "", 0, &cx, &cy);
		char *row = tui_grid_row(&g, 23);
		T_CHECK(strstr(row, "ctx 0/0 | sirllm") != NULL, "80 columns: '%s'", row);
		T_CHECK(strstr(row, " switching to policy") == row && strstr(row, "... ") != NULL,
		        "the message first, cut: '%s'", row);
		free(row);
		tui_grid_free(&g);
	}
	T_CHECK(dump_has(&t, 200, 50, false, "Smollm2 135M 8k Lc100K Mix1 Ep2x | CPU avx2"),
	        "200 columns: everything");
	/* the gauge at 80 columns keeps the stop reason whole (it read
	 * "stop: length-targe"); a reply is judged by the target it was made
	 * under, not one set after it (:len 40w re-judged it) */
	{
		struct tui_ctx c = { 0 };
		struct worker_event te = { 0 };
		c.t = &t;
		tui_status(&t, false, "%s", "");
		T_EQ_INT(tui_cmd_run(&c, "len 20w"), KVS_OK);
		te.kind = WORKER_EV_TURN_START;
		te.user = (char *)"q";
		tui_apply(&t, &te, 0);
		memset(&te, 0, sizeof te);
		te.kind = WORKER_EV_TURN_END;
		te.turn.reply = (char *)"one two three four five six seven eight nine ten eleven twelve "
		                        "thirteen fourteen fifteen sixteen seventeen eighteen";
		te.turn.stop = GEN_STOP_LENGTH;
		tui_apply(&t, &te, 0);
		T_CHECK(dump_has(&t, 80, 24, false, "stop: length-target "), "80: the stop reason whole");
		T_CHECK(dump_has(&t, 200, 50, false,
		                 "length 18 words of target 20 words (10, 30]  in the "
		                 "window  stop: length-target"),
		        "200: the long form");
		T_EQ_INT(tui_cmd_run(&c, "len 40w"), KVS_OK);
		T_CHECK(dump_has(&t, 200, 50, false, "of target 20 words (10, 30]  in the window"),
		        "still judged by its own target");
		T_CHECK(dump_has(&t, 200, 50, false, "next replies: target 40 words"), "the next target");
		T_EQ_INT(tui_cmd_run(&c, "len off"), KVS_OK);
	}
	/* the KV pane's bytes line, in two lines rather than cut at 80 */
	t.tab = 2;
	T_CHECK(dump_has(&t, 80, 24, false, "KiB/token"), "80: the bytes line whole");
	t.tab = 0;
	/* :new: the snapshot of an empty cache; the sparklines start over */
	T_CHECK(t.n_spark > 0, "a sample per step");
	ev.kind = WORKER_EV_SNAPSHOT;
	ev.next_pos = 0;
	tui_apply(&t, &ev, 0);
	T_EQ_INT(t.n_spark, 0);
	tui_free(&t);
}

static void test_commands(void)
{
	struct tui t;
	struct tui_ctx c = { 0 };

	tui_init(&t);
	t.n_layer = 30;
	t.n_head = 9;
	c.t = &t;
	T_CHECK(tui_cmd_run(&c, "frobnicate") != KVS_OK, "unknown command fails");
	T_CHECK(t.status_err && strstr(t.status, "unknown command ':frobnicate'") != NULL, "%s",
	        t.status);
	T_CHECK(!c.have_last && t.n_msgs == 0, "nothing else changed");
	T_EQ_INT(tui_cmd_run(&c, "layer 3"), KVS_OK);
	T_EQ_INT(t.layer, 3);
	T_CHECK(tui_cmd_run(&c, "layer 30") != KVS_OK, "layer out of range");
	T_CHECK(tui_cmd_run(&c, "layer 2x") != KVS_OK, "not a number");
	T_EQ_INT(t.layer, 3);
	T_CHECK(strstr(t.status, "0 .. 29") != NULL, "%s", t.status);
	T_EQ_INT(tui_cmd_run(&c, "head 8"), KVS_OK);
	T_EQ_INT(t.head, 8);
	T_CHECK(tui_cmd_run(&c, "policy nosuch") != KVS_OK, "bad policy");
	T_CHECK(!c.have_last, "a bad policy is not sent");
	T_EQ_INT(tui_cmd_run(&c, "policy sirllm sinks=2"), KVS_OK);
	T_CHECK(c.have_last && c.last.kind == WORKER_POLICY, "policy sent");
	c.have_last = false;
	T_CHECK(tui_cmd_run(&c, "budget -5") != KVS_OK && !c.have_last, "negative budget");
	T_EQ_INT(tui_cmd_run(&c, "budget 512"), KVS_OK);
	T_CHECK(c.last.kind == WORKER_BUDGET && c.last.n == 512, "budget sent");
	/* length control: the target goes to the worker and to the gauge */
	T_EQ_INT(tui_cmd_run(&c, "len 100w"), KVS_OK);
	T_CHECK(c.last.kind == WORKER_LEN && strcmp(c.last.text, "100w") == 0, "len sent");
	T_CHECK(t.len.unit == LEN_WORDS && t.len.n == 100, "target kept for the gauge");
	T_CHECK(dump_has(&t, 200, 50, false, "length 0 words of target 100 words"), "gauge");
	c.have_last = false;
	T_CHECK(tui_cmd_run(&c, "len lots") != KVS_OK && !c.have_last, "bad target");
	T_CHECK(t.len.unit == LEN_WORDS && t.len.n == 100, "a bad target changes nothing");
	T_EQ_INT(tui_cmd_run(&c, "len off"), KVS_OK);
	T_EQ_INT(t.len.unit, LEN_NONE);
	T_EQ_INT(tui_cmd_run(&c, "max 50"), KVS_OK);
	T_CHECK(c.last.kind == WORKER_MAX_TOKENS && c.last.n == 50, "token cap sent");
	T_CHECK(tui_cmd_run(&c, "max 0") != KVS_OK, "a zero cap");
	T_CHECK(tui_cmd_run(&c, "pin") != KVS_OK, "nothing selected");
	t.sel_tok = 7;
	T_EQ_INT(tui_cmd_run(&c, "pin"), KVS_OK);
	T_CHECK(c.last.kind == WORKER_PIN && c.last.n == 7, "pin the selection");
	/* the store: bad arguments say what was expected, nothing is sent */
	c.have_last = false;
	T_CHECK(tui_cmd_run(&c, "sessions now") != KVS_OK && strstr(t.status, "no arguments") != NULL,
	        "%s", t.status);
	T_CHECK(tui_cmd_run(&c, "load") != KVS_OK && strstr(t.status, "id or title") != NULL, "%s",
	        t.status);
	T_CHECK(tui_cmd_run(&c, "export 1") != KVS_OK && strstr(t.status, "FILE") != NULL, "%s",
	        t.status);
	T_CHECK(!c.have_last, "nothing sent");
	if (store_available()) {
		T_EQ_INT(tui_cmd_run(&c, "load 3"), KVS_OK);
		T_CHECK(c.last.kind == WORKER_LOAD && strcmp(c.last.text, "3") == 0, "load sent");
		T_EQ_INT(tui_cmd_run(&c, "save my chat"), KVS_OK);
		T_CHECK(c.last.kind == WORKER_SAVE && strcmp(c.last.text, "my chat") == 0, "save sent");
	}
	T_CHECK(tui_cmd_run(&c, "theme purple") != KVS_OK, "unknown theme");
	T_EQ_INT(tui_cmd_run(&c, "theme light"), KVS_OK);
	T_EQ_STR(t.theme->name, "light");
	T_EQ_INT(tui_cmd_run(&c, "quit"), KVS_OK);
	T_CHECK(t.quit, "quit");
	tui_free(&t);
}

/* The help: the whole screen wide, descriptions wrapped rather than cut,
 * every key (F12, Ctrl-L included) and command reachable by scrolling at
 * 80x24, the scroll clamped at the end. */
static void test_help(void)
{
	struct tui t;
	struct tui_ctx c = { 0 };

	tui_init(&t);
	c.t = &t;
	T_EQ_INT(tui_cmd_run(&c, "help"), KVS_OK);
	T_CHECK(t.help && t.help_scroll == 0, "open at the top");
	T_CHECK(dump_has(&t, 80, 24, false, "Help"), "the box");
	T_CHECK(dump_has(&t, 80, 24, false, "F12"), "F12 listed");
	T_CHECK(dump_has(&t, 80, 24, false, "the plugins' pane"), "F12 described");
	T_CHECK(!dump_has(&t, 80, 24, false, ":quit"), "80x24: :quit is below the fold");
	t.help_scroll = 100000;
	T_CHECK(dump_has(&t, 80, 24, false, "one forward pass"), "scrolled to the end: the glossary");
	T_CHECK(t.help_scroll < 100000 && t.help_scroll > 0, "the scroll is clamped: %d",
	        t.help_scroll);
	/* every line reachable: each command's name shows at some scroll */
	for (size_t i = 0; i < tui_cmd_count(); i++) {
		char want[40];
		bool seen = false;
		snprintf(want, sizeof want, ":%s ", tui_cmd_at(i)->name);
		for (int sc = 0; sc < 200 && !seen; sc += 5) {
			t.help_scroll = sc;
			seen = dump_has(&t, 80, 24, false, want);
		}
		T_CHECK(seen, "80x24: '%s' never shows", want);
	}
	/* descriptions are whole at 80 columns (wrapped, not cut) */
	bool whole = false, ctrl_l = false;
	for (int sc = 0; sc < 200; sc += 5) {
		t.help_scroll = sc;
		whole |= dump_has(&t, 80, 24, false, "its transcript)");
		ctrl_l |= dump_has(&t, 80, 24, false, "Ctrl-L");
	}
	T_CHECK(whole, ":load's help is cut");
	T_CHECK(ctrl_l, "Ctrl-L listed");
	/* searchable: :help TEXT (not a command) and /TEXT open it at the line,
	 * the same text again goes on to the next line holding it */
	t.help = false;
	T_EQ_INT(tui_cmd_run(&c, "help k90"), KVS_OK);
	T_CHECK(t.help && dump_has(&t, 80, 24, false, "k90"), "a k90 line (scroll %d)", t.help_scroll);
	int first = t.help_scroll;
	bool gloss = false;
	for (int k = 0; k < 6 && !gloss; k++) {
		T_EQ_INT(tui_cmd_run(&c, "help k90"), KVS_OK);
		T_CHECK(t.help_scroll > first, "on to the next k90 line: %d", t.help_scroll);
		gloss = dump_has(&t, 80, 24, false, "  k90                     the fewest keys");
	}
	T_CHECK(gloss, "the glossary's k90 line");
	T_CHECK(tui_search_line(&t, "/paper"), "a search while the help is open");
	T_CHECK(dump_has(&t, 80, 24, false, "paper / compat"), "glossary: paper / compat");
	T_CHECK(tui_search_line(&t, "/Alt-h/l"), "letter keys listed");
	T_CHECK(dump_has(&t, 80, 24, false, "Shift-Left/Right, Alt-h/l, click"), "Alt-h/l");
	T_EQ_INT(tui_cmd_run(&c, "help zzqx"), KVS_EARG);
	T_CHECK(!t.help && strstr(t.status, "does not mention it") != NULL, "%s", t.status);
	/* every F-key binding has its Alt-key twin in the help */
	{
		char **lines;
		size_t n = tui_help_lines(NULL, 200, &lines);
		static const char *const want[] = { "F1, Alt-1",
			                                "F2-F5, Alt-2..Alt-5",
			                                "F12, Alt-=",
			                                "F6/F7, Alt-6/Alt-7",
			                                "F8/F9, Alt-8/Alt-9",
			                                "F10, Alt-0",
			                                "F11, Alt--",
			                                "Shift-Up/Down, Alt-k/j",
			                                "Shift-PgUp/PgDn, Alt-p/n",
			                                "Shift-Home/End, Alt-g/G",
			                                "Glossary" };
		for (size_t k = 0; k < KVS_ARRAY_LEN(want); k++) {
			bool seen = false;
			for (size_t i = 0; i < n; i++)
				seen |= strstr(lines[i], want[k]) != NULL;
			T_CHECK(seen, "help lacks '%s'", want[k]);
		}
		tui_help_free(lines, n);
	}
	/* at 200 columns the box is the screen's width, not 80 */
	t.help_scroll = 0;
	{
		struct tui_grid g = { 0 };
		int cx, cy;
		tui_grid_resize(&g, 200, 50);
		tui_draw(&t, &g, "", 0, &cx, &cy);
		char *row = tui_grid_row(&g, 0);
		T_CHECK(tui_text_width(row, strlen(row)) >= 196, "help box %d columns wide at 200",
		        tui_text_width(row, strlen(row)));
		free(row);
		tui_grid_free(&g);
	}
	tui_free(&t);
}

/* An unsaved conversation is never dropped without a word: :quit, :new and
 * :load ask first and go ahead when sent again as the very next command. */
static void test_unsaved(void)
{
	struct tui t;
	struct tui_ctx c = { 0 };
	struct worker_event ev = { 0 };

	tui_init(&t);
	c.t = &t;
	ev.kind = WORKER_EV_SNAPSHOT;
	ev.n_unsaved = 2;
	tui_apply(&t, &ev, 0);
	T_EQ_INT(tui_cmd_run(&c, "quit"), KVS_OK);
	T_CHECK(!t.quit && t.status_err, "the first :quit asks");
	T_EQ_STR(t.status,
	         "2 exchanges are not saved: :save [TITLE] keeps them; :quit again leaves "
	         "without saving");
	T_EQ_INT(tui_cmd_run(&c, "layer 0"), KVS_OK);
	T_EQ_INT(tui_cmd_run(&c, "quit"), KVS_OK);
	T_CHECK(!t.quit, "another command in between: it asks again");
	c.have_last = false;
	T_EQ_INT(tui_cmd_run(&c, "new"), KVS_OK);
	T_CHECK(!c.have_last && strstr(t.status, ":new again starts a new conversation") != NULL, "%s",
	        t.status);
	T_EQ_INT(tui_cmd_run(&c, "new"), KVS_OK);
	T_CHECK(c.have_last && c.last.kind == WORKER_RESET, ":new again: sent");
	T_EQ_INT(tui_cmd_run(&c, "quit"), KVS_OK);
	T_EQ_INT(tui_cmd_run(&c, "quit"), KVS_OK);
	T_CHECK(t.quit, "the second :quit in a row leaves");
	t.quit = false;
	T_EQ_INT(tui_cmd_run(&c, "quit!"), KVS_OK);
	T_CHECK(t.quit, ":quit! leaves at once");
	/* saved: nothing to ask (one exchange is singular) */
	t.quit = false;
	ev.n_unsaved = 1;
	tui_apply(&t, &ev, 0);
	T_EQ_INT(tui_cmd_run(&c, "quit"), KVS_OK);
	T_EQ_STR(t.status,
	         "1 exchange is not saved: :save [TITLE] keeps it; :quit again leaves "
	         "without saving");
	ev.n_unsaved = 0;
	ev.saving = true;
	tui_apply(&t, &ev, 0);
	T_EQ_INT(tui_cmd_run(&c, "quit"), KVS_OK);
	T_CHECK(t.quit && t.saving, "saved: :quit leaves at once");
	tui_free(&t);
}

static void test_complete(void)
{
	char ext[64], names[512];
	int n, want = 0;

	n = tui_cmd_complete(NULL, ":pol", ext, sizeof ext, names, sizeof names);
	T_EQ_INT(n, 1);
	T_EQ_STR(ext, "icy ");
	n = tui_cmd_complete(NULL, ":p", ext, sizeof ext, names, sizeof names);
	/* a second count of the table: names starting with "p" */
	want = 0;
	for (size_t i = 0; i < tui_cmd_count(); i++)
		want += tui_cmd_at(i)->name[0] == 'p';
	T_EQ_INT(n, want);
	/* policy arguments: the policy table */
	want = 0;
	for (size_t i = 0; i < kv_policy_count(); i++)
		want += kv_policy_name_at(i)[0] == 's';
	n = tui_cmd_complete(NULL, ":policy s", ext, sizeof ext, names, sizeof names);
	T_EQ_INT(n, want);
	n = tui_cmd_complete(NULL, ":theme l", ext, sizeof ext, names, sizeof names);
	T_EQ_INT(n, 1);
	T_EQ_STR(ext, "ight ");
	T_EQ_INT(tui_cmd_complete(NULL, "hello", ext, sizeof ext, names, sizeof names), 0);
	T_EQ_INT(tui_cmd_complete(NULL, ":zz", ext, sizeof ext, names, sizeof names), 0);
}

static void test_kv_copy(void)
{
	struct kv_tok q = mk_tok(5, 1, KV_ROLE_USER, 0),
	              ev_t[2] = { mk_tok(1, 0, 1, 0), mk_tok(2, 0, 1, 0) };
	float attn[2 * 3 * 4];
	struct kv_head_summary hs[6] = { { 1, 0.5f, 0.25f, 3 } };
	struct kv_event src = { 0 }, dst;

	for (int i = 0; i < 24; i++)
		attn[i] = (float)i;
	src.kind = KV_EVENT_STEP;
	src.policy = "h2o";
	src.tok = &q;
	src.n_layer = 2;
	src.n_head = 3;
	src.n_cached = 4;
	src.attn = attn;
	src.heads = hs;
	src.n_evicted = 2;
	src.evicted = ev_t;
	worker_kv_copy(&dst, &src);
	attn[23] = -1;
	hs[0].k90 = 99;
	ev_t[1].orig_pos = 77;
	q.orig_pos = 66;
	T_CHECK(dst.attn != attn && dst.attn[23] == 23.0f, "attn copied");
	T_EQ_INT(dst.heads[0].k90, 3);
	T_EQ_INT(dst.evicted[1].orig_pos, 2);
	T_EQ_INT(dst.tok->orig_pos, 5);
	T_EQ_STR(dst.policy, "h2o");
	worker_kv_free(&dst);
	T_CHECK(dst.attn == NULL, "freed");
}

static void test_grid(void)
{
	struct tui_grid g = { 0 };
	struct tui_rect r = { 2, 1, 5, 1 };
	char *row;

	tui_grid_resize(&g, 10, 3);
	/* clipped to 5 columns; a wide character takes two */
	tui_grid_text(&g, r, 2, 1, R_NORMAL,
	              "ab\xe4\xb8\xad"
	              "cdef",
	              9);
	row = tui_grid_row(&g, 1);
	T_EQ_STR(row,
	         "  ab\xe4\xb8\xad"
	         "c");
	free(row);
	/* outside the rectangle's row: nothing */
	T_EQ_INT(tui_grid_text(&g, r, 2, 2, R_NORMAL, "zz", 2), 0);
	T_EQ_INT(tui_text_width("a\xe4\xb8\xad", 4), 3);
	T_EQ_INT(tui_glyph_braille(0, 0), 0x2800);
	T_EQ_INT(tui_glyph_braille(4, 4), 0x28ff);
	tui_grid_free(&g);
}

static void extra_draw(struct tui *t, struct tui_grid *g, struct tui_rect r)
{
	(void)t;
	tui_grid_printf(g, r, r.x, r.y, R_NORMAL, "EXTRA PANE BODY");
}

static void extra_status(const struct tui *t, char *buf, size_t cap)
{
	snprintf(buf, cap, "extra item %u", t->n_layer);
}

/* A pane and a status item added at run time (as a plugin would). */
static void test_registries(void)
{
	struct tui t;
	struct tui_ctx c = { 0 };
	size_t n0 = tui_pane_count();

	tui_init(&t);
	t.n_layer = 7;
	c.t = &t;
	T_EQ_INT(tui_pane_register(&(struct tui_pane){ "extra", "Extra", extra_draw, false }), KVS_OK);
	T_EQ_INT(tui_pane_count(), n0 + 1);
	T_CHECK(tui_pane_register(&(struct tui_pane){ "extra", "Extra", extra_draw, false }) != KVS_OK,
	        "a second pane of the same name");
	T_EQ_INT(tui_status_register(&(struct tui_status_item){ "extra", extra_status }), KVS_OK);
	T_CHECK(dump_has(&t, 80, 24, false, "Plugins   Extra"), "its tab");
	T_CHECK(dump_has(&t, 200, 50, false, "extra item 7"), "its status item");
	T_CHECK(!dump_has(&t, 80, 24, false, "EXTRA PANE BODY"), "not shown yet");
	T_EQ_INT(tui_cmd_run(&c, "pane extra"), KVS_OK);
	T_CHECK(dump_has(&t, 80, 24, false, "EXTRA PANE BODY"), "shown by :pane");
	T_CHECK(tui_cmd_run(&c, "pane nosuch") != KVS_OK && strstr(t.status, "extra") != NULL, "%s",
	        t.status);
	tui_free(&t);
}

/* With a Lua runtime: :lua, :plugin, a plugin's command and its completion. */
static void test_lua(void)
{
	struct script_config sc;
	struct script_rt *rt;
	struct tui t;
	struct tui_ctx c = { 0 };
	struct err e;
	char ext[64], names[256], path[] = "/tmp/kvs-tui-plugin-XXXXXX";
	char file[64];
	FILE *fp;
	int fd;

	tui_init(&t);
	c.t = &t;
	T_CHECK(tui_cmd_run(&c, "lua print(1)") != KVS_OK && strstr(t.status, "not available") != NULL,
	        "no runtime: %s", t.status);
	if (!script_available()) {
		printf("test-tui: built without Lua: the :lua checks ran without a runtime\n");
		tui_free(&t);
		return;
	}
	script_config_default(&sc);
	T_EQ_INT(script_rt_new(&rt, &sc, &e), KVS_OK);
	t.rt = rt;
	T_EQ_INT(tui_cmd_run(&c, "lua print(6 * 7)"), KVS_OK);
	T_EQ_STR(t.status, "lua: 42");
	/* kvscope is there without a require */
	T_EQ_INT(tui_cmd_run(&c, "lua print(type(kvscope.status))"), KVS_OK);
	T_EQ_STR(t.status, "lua: function");
	/* a plugin's bar shows its value, not value/max (a histogram's longest
	 * bar read "346/346") */
	T_EQ_INT(tui_cmd_run(&c, "lua kvscope.view('hist'):bar('tokens', 346, 346)"), KVS_OK);
	T_EQ_INT(tui_cmd_run(&c, "pane plugins"), KVS_OK);
	T_CHECK(dump_has(&t, 80, 24, false, " 346") && !dump_has(&t, 80, 24, false, "346/346"),
	        "the bar's value");
	t.tab = 0;
	T_CHECK(tui_cmd_run(&c, "lua error('boom')") != KVS_OK && strstr(t.status, "boom") != NULL,
	        "%s", t.status);
	/* a plugin file with a command */
	fd = mkstemp(path);
	T_CHECK(fd >= 0, "mkstemp");
	close(fd);
	unlink(path);
	T_CHECK(mkdir(path, 0700) == 0, "mkdir");
	snprintf(file, sizeof file, "%s/greet.lua", path);
	fp = fopen(file, "w");
	fprintf(fp,
	        "local kvscope = require 'kvscope'\n"
	        "kvscope.command('hello', function(args) kvscope.status('hi ' .. args) end, 'say hi')\n"
	        "kvscope.command('shout', function(args) print(args:upper() .. '!') end, 'shout')\n");
	fclose(fp);
	{
		char cmd[128];
		snprintf(cmd, sizeof cmd, "plugin load %s", file);
		T_EQ_INT(tui_cmd_run(&c, cmd), KVS_OK);
	}
	T_EQ_INT(tui_cmd_complete(rt, ":hel", ext, sizeof ext, names, sizeof names),
	         2); /* help, hello */
	T_EQ_INT(tui_cmd_complete(rt, ":hell", ext, sizeof ext, names, sizeof names), 1);
	T_EQ_STR(ext, "o ");
	/* plugin commands: in the help, and :help NAME knows them */
	T_EQ_INT(tui_cmd_run(&c, "help hello"), KVS_OK);
	T_CHECK(!t.status_err && strstr(t.status, ":hello") != NULL && strstr(t.status, "say hi"),
	        ":help hello: %s", t.status);
	T_EQ_INT(tui_cmd_run(&c, "help"), KVS_OK);
	{
		bool listed = false;
		for (int off = 0; off < 200 && !listed; off += 5) {
			t.help_scroll = off;
			listed = dump_has(&t, 80, 24, false, ":hello") && dump_has(&t, 80, 24, false, "say hi");
		}
		T_CHECK(listed, "the help lists the plugin's command");
	}
	t.help = false;
	T_EQ_INT(tui_cmd_run(&c, "hello world"), KVS_OK);
	T_EQ_STR(t.status, ":hello done"); /* feedback even from a silent command */
	T_EQ_INT(tui_cmd_run(&c, "shout loud"), KVS_OK);
	T_EQ_STR(t.status, ":shout: LOUD!"); /* what it printed */
	T_CHECK(script_status_count(rt) == 1 && strcmp(script_status_at(rt, 0, NULL), "hi world") == 0,
	        "the plugin's status item");
	T_CHECK(dump_has(&t, 200, 50, false, "plugins 1 | greet: hi world"),
	        "status line: plugins (lua failed, greet) and its item, named by its plugin");
	T_EQ_INT(tui_cmd_run(&c, "plugin unload greet"), KVS_OK);
	T_CHECK(tui_cmd_run(&c, "hello again") != KVS_OK && strstr(t.status, "unknown command") != NULL,
	        "%s", t.status);
	T_CHECK(tui_cmd_run(&c, "plugin frob") != KVS_OK, "bad subcommand");
	unlink(file);
	rmdir(path);
	script_rt_free(rt);
	t.rt = NULL;
	tui_free(&t);
}

/* A transcript event over the given turns (texts not owned). */
static void replay(struct tui *t, const char *title, const char *system, uint32_t n_turns,
                   uint32_t first, struct session_recap_turn *turns, uint32_t n, uint32_t n_tokens,
                   int status, const char *msg)
{
	struct worker_event ev = { 0 };

	ev.kind = WORKER_EV_TRANSCRIPT;
	ev.recap.id = 7;
	ev.recap.title = (char *)title;
	ev.recap.system = (char *)system;
	ev.recap.n_turns = n_turns;
	ev.recap.first = first;
	ev.recap.n = n;
	ev.recap.turns = turns;
	ev.recap.n_tokens = n_tokens;
	ev.status = status;
	snprintf(ev.msg, sizeof ev.msg, "%s", msg ? msg : "");
	tui_apply(t, &ev, 0);
}

/* Resuming replaces the chat with the saved transcript and a separator;
 * nothing streams into a replayed reply; a second load replaces it all. */
static void test_replay(void)
{
	struct tui t;
	struct session_recap_turn turns[2] = {
		{ (char *)"first saved question", (char *)"first saved answer" },
		{ (char *)"second saved question", (char *)"second saved answer" },
	};
	static const enum tui_msg_kind kinds[] = { MSG_SYSTEM, MSG_INFO,      MSG_USER, MSG_ASSISTANT,
		                                       MSG_USER,   MSG_ASSISTANT, MSG_RULE };

	tui_init(&t);
	tui_msg_add(&t, MSG_USER, "a live question before the load");
	tui_msg_add(&t, MSG_INFO, "loading a saved session ...");
	replay(&t, "notes", "be brief", 5, 3, turns, 2, 42, KVS_OK, NULL);
	T_EQ_INT(t.n_msgs, KVS_ARRAY_LEN(kinds));
	for (uint32_t i = 0; i < t.n_msgs && i < KVS_ARRAY_LEN(kinds); i++)
		T_CHECK(t.msgs[i].kind == kinds[i], "message %u is kind %d, expected %d", i,
		        (int)t.msgs[i].kind, (int)kinds[i]);
	T_CHECK(dump_has(&t, 200, 50, false, "system> be brief"), "the saved system prompt");
	T_CHECK(dump_has(&t, 200, 50, false, "3 earlier turns not shown ('kvscope sessions export 7'"),
	        "what was left out, and where to read it");
	T_CHECK(dump_has(&t, 200, 50, false, "you> first saved question"), "user turn");
	T_CHECK(dump_has(&t, 200, 50, false, "model> first saved answer"), "reply");
	T_CHECK(dump_has(&t, 200, 50, false, "model> second saved answer"), "last reply");
	T_CHECK(!dump_has(&t, 200, 50, false, "second saved answer ["), "no stop reason on replays");
	T_CHECK(dump_has(&t, 200, 50, false,
	                 "\xe2\x94\x80\xe2\x94\x80 resumed 'notes' (5 turns, 42 tokens retained) "
	                 "\xe2\x94\x80\xe2\x94\x80"),
	        "the separator");
	T_CHECK(dump_has(&t, 200, 50, true, "-- resumed 'notes' (5 turns, 42 tokens retained) --"),
	        "the separator in ASCII");
	T_CHECK(!dump_has(&t, 200, 50, false, "a live question"), "the chat before the load is gone");
	T_CHECK(!dump_has(&t, 200, 50, false, "loading a saved session"), "the loading note is gone");

	/* a chat that fails before its turn starts marks no replayed reply */
	struct worker_event ev = { 0 };
	ev.kind = WORKER_EV_RESULT;
	ev.cmd = WORKER_CHAT;
	ev.status = KVS_EARG;
	snprintf(ev.msg, sizeof ev.msg, "empty message");
	tui_apply(&t, &ev, 0);
	T_EQ_STR(t.msgs[5].stop, "");
	/* a new exchange goes after the separator; its tokens into its reply */
	memset(&ev, 0, sizeof ev);
	ev.kind = WORKER_EV_TURN_START;
	ev.user = (char *)"a new question";
	tui_apply(&t, &ev, 0);
	memset(&ev, 0, sizeof ev);
	ev.kind = WORKER_EV_TOKEN;
	ev.token.text = "Hi";
	ev.token.len = 2;
	tui_apply(&t, &ev, 0);
	/* the failure's note, then the exchange */
	T_EQ_INT(t.n_msgs, KVS_ARRAY_LEN(kinds) + 3);
	T_EQ_INT(t.msgs[5].n_spans, 1);
	T_CHECK(t.n_msgs == 10 && t.msgs[9].n_spans == 1 && strcmp(t.msgs[9].spans[0].text, "Hi") == 0,
	        "the token went to the new reply");
	t.busy = false;

	/* a second load replaces everything; singular counts; no system prompt */
	struct session_recap_turn other = { (char *)"other question", (char *)"other answer" };
	replay(&t, "other", NULL, 1, 0, &other, 1, 1, KVS_OK, NULL);
	T_EQ_INT(t.n_msgs, 3);
	T_CHECK(dump_has(&t, 200, 50, false, "resumed 'other' (1 turn, 1 token retained)"), "counts");
	T_CHECK(dump_has(&t, 200, 50, false, "you> other question"), "the second transcript");
	T_CHECK(!dump_has(&t, 200, 50, false, "first saved question"), "the first transcript is gone");
	T_CHECK(!dump_has(&t, 200, 50, false, "a new question"), "the exchange after it is gone");
	T_CHECK(!dump_has(&t, 200, 50, false, "earlier turn"), "nothing left out");

	/* texts that could not be read: the resume still shows its separator */
	replay(&t, "broken", NULL, 4, 0, NULL, 0, 9, KVS_EIO, "disk on fire");
	T_CHECK(dump_has(&t, 200, 50, false, "the transcript could not be read: disk on fire"), "why");
	T_CHECK(dump_has(&t, 200, 50, false, "resumed 'broken' (4 turns, 9 tokens retained)"), "line");
	tui_free(&t);
}

/* The chat pane lays out from the newest message back; scrolling reaches
 * the oldest and stops there. 300 one-row messages: the pane shows rows
 * (pane height - 2 borders - 1 legend) of them. */
/* The first-start hint, and '/' searching the chat: the hit is scrolled
 * to its first row and its text marked; '/' again goes older, '?' newer;
 * "//..." is a message. */
static void test_chat_search(void)
{
	struct tui t;

	tui_init(&t);
	T_EQ_STR(t.status, TUI_HINT);
	T_CHECK(dump_has(&t, 80, 24, false, "F1 help, : commands, Tab completes, / searches the chat"),
	        "the hint shows whole at 80 columns");
	for (int i = 0; i < 60; i++) {
		char buf[64];
		snprintf(buf, sizeof buf, "message %d%s", i, i == 5 || i == 20 ? " about Zebras" : "");
		tui_msg_add(&t, i % 2 ? MSG_ASSISTANT : MSG_USER, buf);
	}
	T_CHECK(!tui_search_line(&t, "//etc"), "//etc is a message");
	T_CHECK(!tui_search_line(&t, "hello"), "a message");
	T_CHECK(!tui_search_line(&t, "?"), "'?' before any search is a message");
	T_CHECK(tui_search_line(&t, "/zebra"), "a search");
	T_EQ_INT(t.chat_hit, 20);
	T_CHECK(dump_has(&t, 80, 24, false, "message 20 about Zebras"), "the newer hit shows");
	T_CHECK(t.chat_scroll > 0 && !t.chat_jump, "scrolled up to it: %d", t.chat_scroll);
	T_CHECK(strstr(t.status, "message 21 of 60") != NULL, "%s", t.status);
	T_CHECK(tui_search_line(&t, "/"), "again");
	T_EQ_INT(t.chat_hit, 5);
	T_CHECK(dump_has(&t, 80, 24, false, "message 5 about Zebras"), "the older hit shows");
	T_CHECK(tui_search_line(&t, "/") && t.chat_hit == 5 && t.status_err, "no older: %s", t.status);
	T_CHECK(tui_search_line(&t, "?") && t.chat_hit == 20, "newer again: %d", t.chat_hit);
	{
		/* the hit's text is marked */
		struct tui_grid g = { 0 };
		int cx, cy;
		bool marked = false;
		tui_grid_resize(&g, 80, 24);
		tui_draw(&t, &g, "", 0, &cx, &cy);
		for (int i = 0; i < g.w * g.h; i++)
			marked |= g.c[i].role == R_SELECTED && g.c[i].cp == 'Z';
		T_CHECK(marked, "'Zebras' marked");
		tui_grid_free(&g);
	}
	T_CHECK(tui_search_line(&t, "/nowhere") && t.status_err, "%s", t.status);
	tui_free(&t);
}

static void test_chat_scroll(void)
{
	struct tui t;
	struct tui_layout l;
	char line[32];

	tui_init(&t);
	for (int i = 0; i < 300; i++) {
		snprintf(line, sizeof line, "line %03d", i);
		tui_msg_add(&t, MSG_INFO, line);
	}
	tui_layout(&t, 200, 50, 1, &l);
	int view_h = l.pane[0].h - 3;
	T_CHECK(view_h > 10 && view_h < 300, "view %d rows", view_h);
	T_CHECK(dump_has(&t, 200, 50, false, "-- line 299"), "the newest at the bottom");
	snprintf(line, sizeof line, "-- line %03d", 300 - view_h);
	T_CHECK(dump_has(&t, 200, 50, false, line), "the top row: %s", line);
	snprintf(line, sizeof line, "-- line %03d", 299 - view_h);
	T_CHECK(!dump_has(&t, 200, 50, false, line), "one row above the view: %s", line);
	t.chat_scroll = 7;
	snprintf(line, sizeof line, "-- line %03d", 299 - 7);
	T_CHECK(dump_has(&t, 200, 50, false, line), "7 rows up: %s", line);
	T_CHECK(!dump_has(&t, 200, 50, false, "-- line 299"), "7 rows up: the newest is below");
	t.chat_scroll = 100000;
	T_CHECK(dump_has(&t, 200, 50, false, "-- line 000"), "the oldest at the top");
	T_EQ_INT(t.chat_scroll, 300 - view_h);
	tui_free(&t);
}

/* The attention grid: one row per step (query), one column per key by
 * original position over all of them; the cursor is the shown step and the
 * selected token, and names both with the weight (hand-computed: uniform
 * 1/3 over keys 0..2, then the ramp (k + 1) / 10 over keys 0..3). */
static void test_attn_grid(void)
{
	struct tui t;
	struct tui_ctx c = { 0 };

	tui_init(&t);
	c.t = &t;
	t.tab = 1;
	add_step(&t, 2, 1, 3); /* query #2, keys 0..2 */
	T_CHECK(dump_has(&t, 80, 24, false, "1 query x 3 keys:"), "one query (not '1 queries')");
	add_step_w(&t, 2, 1, 4, true); /* query #3, keys 0..3 */
	T_CHECK(dump_has(&t, 80, 24, false, "#2    '#102'"), "the first query's row label");
	T_CHECK(dump_has(&t, 80, 24, false, "#3    '#103'"), "the second's");
	T_CHECK(dump_has(&t, 80, 24, false, "queries/keys  |0"), "the key axis");
	T_CHECK(dump_has(&t, 80, 24, false, "2 queries x 4 keys: Shift-Left/Right or a strip click"),
	        "no key picked");
	t.sel_tok = 3;
	T_CHECK(dump_has(&t, 80, 24, false, "query #3 '#103' -> key #3 '#103': 0.4000"),
	        "the cursor: the latest query, key 3");
	t.step_back = 1;
	T_CHECK(dump_has(&t, 80, 24, false,
	                 "query #2 '#102' -> key #3 '#103': not in the cache at this step"),
	        "key 3 came after query 2");
	t.sel_tok = 0;
	T_CHECK(dump_has(&t, 80, 24, false, "query #2 '#102' -> key #0 '#100': 0.3333"),
	        "the earlier query, key 0");
	{
		/* the cursor cell is marked on the shown query's row, in key 0's column */
		struct tui_grid g = { 0 };
		int cx, cy, n_sel = 0;
		tui_grid_resize(&g, 80, 24);
		tui_draw(&t, &g, "", 0, &cx, &cy);
		for (int y = 0; y < g.h; y++) {
			char *row = tui_grid_row(&g, y);
			if (strncmp(row, "\xe2\x94\x82#2 ", 6) == 0)
				T_CHECK(g.c[y * g.w + 1 + 14].role == R_SELECTED, "the cursor cell");
			for (int x = 15; x < g.w; x++)
				n_sel += g.c[y * g.w + x].role == R_SELECTED && g.c[y * g.w + x].cp != '^';
			free(row);
		}
		T_EQ_INT(n_sel, 1);
		tui_grid_free(&g);
	}
	{
		/* a click on a cell: key 2's column on the latest query's row */
		struct tui_grid g = { 0 };
		int cx, cy;
		tui_grid_resize(&g, 80, 24);
		tui_draw(&t, &g, "", 0, &cx, &cy);
		T_CHECK(t.grid.cells.w == 4 && t.grid.cells.h == 2, "grid %dx%d", t.grid.cells.w,
		        t.grid.cells.h);
		tui_click(&t, &g, t.grid.cells.x + 2, t.grid.cells.y + 1);
		T_EQ_INT(t.sel_tok, 2);
		T_EQ_INT(t.step_back, 0);
		tui_click(&t, &g, t.grid.cells.x + 1, t.grid.cells.y);
		T_EQ_INT(t.sel_tok, 1);
		T_EQ_INT(t.step_back, 1);
		T_CHECK(dump_has(&t, 80, 24, false, "query #2 '#102' -> key #1 '#101': 0.3333"),
		        "the clicked cell named");
		tui_grid_free(&g);
	}
	T_EQ_INT(tui_cmd_run(&c, "attn row"), KVS_OK);
	T_CHECK(dump_has(&t, 80, 24, false, "keys 0..2, 1.0 per cell") &&
	                !dump_has(&t, 80, 24, false, "queries/keys"),
	        "the shown row alone");
	T_EQ_INT(tui_cmd_run(&c, "attn cube"), KVS_EARG);
	tui_free(&t);
}

/* A file's whole text (allocated). */
static char *slurp(const char *path)
{
	FILE *fp = fopen(path, "rb");
	char *buf = xcalloc(1 << 16, 1);
	if (fp != NULL) {
		size_t n = fread(buf, 1, (1 << 16) - 1, fp);
		buf[n] = '\0';
		fclose(fp);
	}
	return buf;
}

/* :export-view: the attention steps as one key axis (a key missing from a
 * step weighs 0), the strip's tokens; texts escaped for JSON and CSV, bytes
 * that are not UTF-8 as U+FFFD; a bad view or format makes no file. */
static void test_export_view(void)
{
	struct tui t;
	struct tui_ctx c = { 0 };
	struct worker_event ev = { 0 };
	struct kv_tok ev_toks[1];
	char path[64], *d;
	struct err e;

	tui_init(&t);
	c.t = &t;
	fill_model(&t);
	T_CHECK(tui_export_view(&t, "attention", "/tmp/x.json", NULL, &e) == KVS_ESTATE,
	        "no steps yet: %s", e.msg);
	add_step(&t, 2, 1, 3);         /* keys 0 1 2, each 1/3 */
	add_step_w(&t, 2, 1, 4, true); /* keys 0..3: 1/10 2/10 3/10 4/10 */
	snprintf(t.policy, sizeof t.policy, "h2o \"q\"\n\x01\xff");
	ev_toks[0] = mk_tok(9, 2, KV_ROLE_USER, 0);
	ev.kind = WORKER_EV_KV;
	ev.kv.kind = KV_EVENT_EVICT;
	ev.kv.policy = "a,\"b\"";
	ev.kv.n_evicted = 1;
	ev.kv.evicted = ev_toks;
	tui_apply(&t, &ev, 0);
	snprintf(path, sizeof path, "/tmp/test-tui-export-%d.json", (int)getpid());
	T_EQ_INT(tui_cmd_run(&c, "export-view attention"), KVS_EARG);
	T_CHECK(tui_export_view(&t, "attention", path, NULL, &e) == KVS_OK, "%s", e.msg);
	d = slurp(path);
	T_CHECK(strstr(d, "\"tokens\":[\"#100\",\"#101\",\"#102\",\"#103\"],\"positions\":[0,1,2,3]") !=
	                NULL,
	        "%s", d);
	/* attention[layer][head][query][key]: the first step had no key 3 */
	T_CHECK(strstr(d,
	               "\"attention\":[[[[0.333333,0.333333,0.333333,0],[0.1,0.2,0.3,0.4]]],"
	               "[[[0.333333,0.333333,0.333333,0],[0.1,0.2,0.3,0.4]]]]}") != NULL,
	        "%s", d);
	T_CHECK(strstr(d, "{\"step\":0,\"position\":2,\"index\":2,\"token\":\"#102\"}") != NULL, "%s",
	        d);
	free(d);
	T_CHECK(tui_export_view(&t, "retention", path, "json", &e) == KVS_OK, "%s", e.msg);
	d = slurp(path);
	T_CHECK(strstr(d, "\"policy\":\"h2o \\\"q\\\"\\n\\u0001\xef\xbf\xbd\"") != NULL, "%s", d);
	T_CHECK(strstr(d,
	               "{\"position\":9,\"id\":109,\"text\":\"#109\",\"turn\":2,\"role\":\"user\","
	               "\"cached\":false,\"evicted\":true,\"sink\":false,\"key\":false,"
	               "\"pinned\":false,\"surprisal\":null,\"score\":null,\"evicted_by\":"
	               "\"a,\\\"b\\\"\"") != NULL,
	        "%s", d);
	free(d);
	T_CHECK(tui_export_view(&t, "retention", path, "csv", &e) == KVS_OK, "%s", e.msg);
	d = slurp(path);
	T_CHECK(strncmp(d,
	                "position,id,text,turn,role,cached,evicted,sink,key,pinned,surprisal,"
	                "score,evicted_by,cause\n0,100,#100,0,system,1,0,1,0,0,,,,\n",
	                80) == 0,
	        "%s", d);
	T_CHECK(strstr(d, "\n9,109,#109,2,user,0,1,0,0,0,,,\"a,\"\"b\"\"\",") != NULL, "%s", d);
	free(d);
	remove(path);
	T_CHECK(tui_export_view(&t, "heads", path, NULL, &e) == KVS_EARG &&
	                strstr(e.msg, "expected attention or retention") != NULL,
	        "%s", e.msg);
	T_CHECK(tui_export_view(&t, "retention", path, "xml", &e) == KVS_EARG, "%s", e.msg);
	T_CHECK(access(path, F_OK) != 0, "a refused export made no file");
	tui_free(&t);
}

/* A hand-made comparison: exchange 2's replies part at their third token
 * ("one two three" against "one two four five", 8 bytes before it). */
static struct compare_view *mk_compare(void)
{
	struct compare_view *v = xcalloc(1, sizeof *v);
	static const int32_t ra[2][3] = { { 1, 2, 3 }, { 7, 8, 9 } };
	static const int32_t rb[2][4] = { { 1, 2, 3, 0 }, { 7, 8, 5, 6 } };
	static const char *const texts[2][2] = { { "a b c", "one two three" },
		                                     { "a b c", "one two four five" } };

	v->state = COMPARE_FOLLOWING;
	v->done = v->total = 2;
	for (int k = 0; k < 2; k++) {
		struct compare_side *s = &v->side[k];
		snprintf(s->policy, sizeof s->policy, "%s", k ? "streaming sinks=2" : "window");
		s->budget = k ? 64 : 96;
		s->n_turns = 2;
		s->turns = xcalloc(2, sizeof *s->turns);
		for (int i = 0; i < 2; i++) {
			struct compare_turn *t = &s->turns[i];
			t->first_pos = i ? 10 : 0;
			t->n_prompt = i ? 4 : 5;
			t->n_reply = k && i ? 4 : 3;
			t->reply = xstrdup(texts[k][i]);
			t->ids = xmallocarray(4, sizeof *t->ids);
			memcpy(t->ids, k ? rb[i] : ra[i], t->n_reply * sizeof *t->ids);
		}
		s->next_pos = k ? 22 : 20;
		s->n_kept = k ? 7 : 8;
		s->kept = xcalloc(s->n_kept, sizeof *s->kept);
		for (uint32_t i = 0; i < s->n_kept; i++)
			s->kept[i] = mk_tok(i < 4 ? (int32_t)i : 6 + (int32_t)i, 0, KV_ROLE_USER, 0);
	}
	v->sum = (struct compare_sum){ { 8, 7 }, 6, 2, 1, 2 };
	v->div_byte[0] = v->div_byte[1] = 8;
	v->kv_bytes = 64 * 23040;
	return v;
}

/* The row of the grid at w x h holding both a and b, or false. */
static bool dump_row_has(struct tui *t, int w, int h, const char *a, const char *b)
{
	struct tui_grid g = { 0 };
	int cx, cy;
	bool has = false;

	tui_grid_resize(&g, w, h);
	tui_draw(t, &g, "", 0, &cx, &cy);
	for (int y = 0; y < h && !has; y++) {
		char *row = tui_grid_row(&g, y);
		has = strstr(row, a) != NULL && strstr(row, b) != NULL;
		free(row);
	}
	tui_grid_free(&g);
	return has;
}

/* :compare: bad input says what was expected in one line and sends
 * nothing; a good one is sent once and a second is refused while it is
 * on; the pane draws a comparison side by side at 160x48 and stacked at
 * 80x24: the summary's numbers, each reply split at the first parting
 * token, the mark in the parting exchange's retention row; off is sent. */
static void test_compare(void)
{
	struct tui t;
	struct tui_ctx c = { 0 };
	struct worker_event ev = { 0 };
	struct tui_msg *m;

	tui_init(&t);
	c.t = &t;
	T_CHECK(tui_cmd_run(&c, "compare") != KVS_OK && strstr(t.status, "expected a policy"), "%s",
	        t.status);
	T_CHECK(tui_cmd_run(&c, "compare nosuch") != KVS_OK && strstr(t.status, "nosuch"), "%s",
	        t.status);
	T_CHECK(tui_cmd_run(&c, "compare h2o 12x") != KVS_OK && strstr(t.status, "budget '12x'"), "%s",
	        t.status);
	T_CHECK(tui_cmd_run(&c, "compare h2o -3") != KVS_OK && strstr(t.status, "whole number"), "%s",
	        t.status);
	T_CHECK(tui_cmd_run(&c, "compare h2o 1 2") != KVS_OK && strstr(t.status, "expected POLICY"),
	        "%s", t.status);
	T_CHECK(tui_cmd_run(&c, "compare h2o") != KVS_OK && strstr(t.status, "no conversation yet"),
	        "%s", t.status);
	T_CHECK(tui_cmd_run(&c, "compare off") != KVS_OK && strstr(t.status, "no comparison is on"),
	        "%s", t.status);
	T_CHECK(!c.have_last, "nothing sent");

	tui_msg_add(&t, MSG_USER, "hi");
	m = tui_msg_add(&t, MSG_ASSISTANT, "hello");
	snprintf(m->stop, sizeof m->stop, "eos");
	T_EQ_INT(tui_cmd_run(&c, "compare streaming:sinks=2 64"), KVS_OK);
	T_CHECK(c.have_last && c.last.kind == WORKER_COMPARE && c.last.n == 64 &&
	                strcmp(c.last.text, "streaming:sinks=2") == 0,
	        "sent");
	T_EQ_INT(t.tab, tui_pane_find("compare"));
	c.have_last = false;
	T_CHECK(tui_cmd_run(&c, "compare h2o") != KVS_OK &&
	                strstr(t.status, "expected :compare off first"),
	        "%s", t.status);
	T_CHECK(!c.have_last, "a second one is not sent");
	T_CHECK(dump_has(&t, 80, 24, false, "starting the shadow session"), "pending");

	ev.kind = WORKER_EV_COMPARE;
	ev.cmp = mk_compare();
	tui_apply(&t, &ev, 0);
	T_CHECK(ev.cmp == NULL && t.cmp != NULL, "the model took it");
	T_CHECK(dump_has(&t, 160, 48, false,
	                 "kept A 8 | B 7, overlap 6; replies part at exchange 2, token 3"),
	        "summary");
	T_CHECK(dump_row_has(&t, 160, 48, "A window, budget 96: kept 8 (this session)",
	                     "B streaming sinks=2, budget 64: kept 7 (shadow)"),
	        "side by side at 160");
	T_CHECK(!dump_row_has(&t, 80, 24, "A window", "B streaming"), "stacked at 80");
	T_CHECK(dump_has(&t, 80, 24, false, "B streaming sinks=2, budget 64"), "B at 80x24");
	T_CHECK(dump_has(&t, 160, 48, false, "one two \xe2\x96\x8cthree"), "A's reply marked");
	T_CHECK(dump_has(&t, 160, 48, false,
	                 "one two \xe2\x96\x8c"
	                 "four five"),
	        "B's reply marked");
	T_CHECK(dump_has(&t, 80, 24, true, "one two |four five"), "ASCII mark at 80x24");
	/* exchange 2's row: prompt places 0..3 kept, the mark at place 4 + 2 */
	T_CHECK(dump_has(
	                &t, 160, 48, false,
	                "  2 \xe2\x96\x88\xe2\x96\x88\xe2\x96\x88\xe2\x96\x88\xc2\xb7\xc2\xb7\xc3\x97"),
	        "the strip's mark");
	T_CHECK(dump_has(&t, 200, 50, false, "compare streaming sinks=2 64"), "status item");
	if (script_available()) {
		/* plugins hear it as the "compare" event */
		struct script_config sc;
		struct script_rt *rt;
		struct err e;
		script_config_default(&sc);
		T_EQ_INT(script_rt_new(&rt, &sc, &e), KVS_OK);
		t.rt = rt;
		T_EQ_INT(tui_cmd_run(&c,
		                     "lua kvscope.on('compare', function(v) print(v.state .. ' ' .. "
		                     "v.kept_b .. ' ' .. v.overlap .. ' ' .. v.part_exchange .. ':' "
		                     ".. v.part_token .. ' ' .. v.policy) end)"),
		         KVS_OK);
		script_on_compare(rt, t.cmp);
		size_t n_log = script_log_count(rt, "lua");
		T_CHECK(n_log > 0, "the hook ran");
		if (n_log > 0)
			T_EQ_STR(script_log_line(rt, "lua", n_log - 1), "following 7 6 2:3 streaming sinks=2");
		t.rt = NULL;
		script_rt_free(rt);
	}

	T_EQ_INT(tui_cmd_run(&c, "compare off"), KVS_OK);
	T_CHECK(c.have_last && c.last.kind == WORKER_COMPARE && strcmp(c.last.text, "off") == 0,
	        "off sent");
	ev.cmp = mk_compare();
	ev.cmp->state = COMPARE_STOPPED;
	snprintf(ev.cmp->msg, sizeof ev.cmp->msg, "comparison off");
	tui_apply(&t, &ev, 0);
	T_CHECK(!t.status_err && strstr(t.status, "comparison off"), "%s", t.status);
	T_CHECK(!dump_has(&t, 200, 50, false, "compare streaming"), "no status item when off");
	T_CHECK(tui_cmd_run(&c, "compare off") != KVS_OK, "off again: none is on");
	tui_free(&t);
}

int main(void)
{
	/* character widths come from the locale, as in the program */
	if (setlocale(LC_ALL, "C.UTF-8") == NULL) {
		fprintf(stderr, "test-tui: the C.UTF-8 locale is missing\n");
		return 99;
	}
	test_heat_bin();
	test_levels();
	test_regions_and_banner();
	test_evict_summary();
	test_layout_and_draw();
	test_replay();
	test_chat_scroll();
	test_chat_search();
	test_commands();
	test_unsaved();
	test_help();
	test_per_head();
	test_head_map();
	test_hit();
	test_select();
	test_mouse_yank();
	test_small();
	test_complete();
	test_kv_copy();
	test_grid();
	test_lua();
	test_export_view();
	test_attn_grid();
	test_registries(); /* last: it adds to the tables */
	test_compare();    /* after it: the first :compare adds its pane and status item */
	return t_done("test-tui");
}
