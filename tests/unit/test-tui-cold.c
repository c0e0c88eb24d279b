/*
 * test-tui-cold.c: the workbench's view of the cold tier (src/tui/cold.c,
 * view.c, chrome.c), headless on the fake renderer:
 *   - twelve tokens cached, 4..7 evicted, then two blocks recalled (a cold
 *     RECALL event with hand-set scores, then the cache's KV recall event
 *     for 4..5): the regions count 2 recalled, 2 still evicted;
 *   - the KV pane shows "recalled 2" and the cold tier's line (tokens
 *     written, recalled, the temporary database);
 *   - the retention strip's details of token 4 say "recalled from turn 1,
 *     summary score 0.91, BM25 7.2"; of a token of a block recalled with no
 *     summary score, "summary score -";
 *   - the status line says the cold tier is a temporary database, and
 *     nothing about a cold tier when it is off;
 *   - a stop event puts the reason on the status line, in the error colour.
 */
#include "store/store.h"
#include "tests/unit/test.h"
#include "tui/tui-int.h"

#include <locale.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static struct kv_tok mk_tok(int32_t pos, uint32_t turn, uint8_t flags)
{
	struct kv_tok k = { 0 };
	k.token = 100 + pos;
	k.orig_pos = pos;
	k.pos = pos;
	k.turn = turn;
	k.role = KV_ROLE_USER;
	k.flags = flags;
	k.surprisal = k.entropy = k.score = NAN;
	return k;
}

/* The screen drawn at w x h has needle. */
static bool dump_has(struct tui *t, int w, int h, const char *needle)
{
	struct tui_grid g = { 0 };
	int cx, cy;
	tui_grid_resize(&g, w, h);
	g.ascii = true;
	tui_draw(t, &g, "", 0, &cx, &cy);
	char *d = tui_grid_dump(&g);
	bool has = strstr(d, needle) != NULL;
	if (!has && getenv("TEST_TUI_VERBOSE"))
		fprintf(stderr, "%s\n", d);
	free(d);
	tui_grid_free(&g);
	return has;
}

static void test_recalled(void)
{
	struct tui t;
	tui_init(&t);
	t.cold_on = true;
	t.cold_temp = true;
	/* twelve tokens, turns 0 (0..3), 1 (4..7), 2 (8..11) */
	struct kv_tok toks[12];
	for (int i = 0; i < 12; i++)
		toks[i] = mk_tok(i, i < 4 ? 0 : i < 8 ? 1 : 2, i < 2 ? KV_FLAG_SINK : 0);
	struct worker_event ev = { 0 };
	ev.kind = WORKER_EV_SNAPSHOT;
	ev.toks = toks;
	ev.n_toks = 12;
	ev.next_pos = 12;
	ev.stats.n_cached = 12;
	ev.stats.budget = 16;
	ev.stats.n_ctx = 64;
	snprintf(ev.policy, sizeof ev.policy, "streaming");
	tui_apply(&t, &ev, 0);
	/* 4..7 evicted, written to the cold tier */
	struct worker_event ek = { 0 };
	ek.kind = WORKER_EV_KV;
	ek.kv.kind = KV_EVENT_EVICT;
	ek.kv.policy = "streaming";
	ek.kv.n_evicted = 4;
	ek.kv.evicted = toks + 4;
	tui_apply(&t, &ek, 0);
	struct worker_event ew = { 0 };
	ew.kind = WORKER_EV_COLD;
	ew.cold.kind = SESSION_COLD_WRITE;
	ew.cold.tokens = 4;
	tui_apply(&t, &ew, 0);
	/* the next turn recalls [4, 5] (matched) and, for the test, [10, 11]
	 * unscored (cached anyway: its details say so only once it is flagged) */
	struct store_cold_hit hits[2] = {
		{ .id = 1, .turn = 1, .n_tokens = 2, .pos0 = 4, .pos1 = 5, .bm25 = 7.2, .summary = 0.91 },
		{ .id = 2, .turn = 2, .n_tokens = 2, .pos0 = 10, .pos1 = 11, .bm25 = 0, .summary = NAN },
	};
	struct worker_event ec = { 0 };
	ec.kind = WORKER_EV_COLD;
	ec.cold.kind = SESSION_COLD_RECALL;
	ec.cold.hits = hits;
	ec.cold.n_hits = 2;
	ec.cold.scorer = "both";
	tui_apply(&t, &ec, 0);
	struct kv_tok back[3] = { mk_tok(4, 1, KV_FLAG_RECALLED), mk_tok(5, 1, KV_FLAG_RECALLED),
		                      mk_tok(11, 2, KV_FLAG_RECALLED) };
	struct worker_event er = { 0 };
	er.kind = WORKER_EV_KV;
	er.kv.kind = KV_EVENT_RECALL;
	er.kv.n_recalled = 3;
	er.kv.recalled = back;
	tui_apply(&t, &er, 0);
	struct tui_regions r;
	tui_regions(&t, &r);
	T_EQ_INT(r.recalled, 3);
	T_EQ_INT(r.evicted, 2); /* 6, 7 */
	T_EQ_INT(r.sink, 2);
	T_EQ_INT(t.cold_written, 4);
	T_EQ_INT(t.cold_recalled, 4);
	T_EQ_INT(t.n_recalls, 2);
	const struct tui_recall *rc = tui_cold_recall_of(&t, 5);
	T_CHECK(rc != NULL && rc->pos0 == 4 && rc->turn == 1, "block of 5");
	T_CHECK(tui_cold_recall_of(&t, 6) == NULL, "6 was not recalled");
	/* the KV pane and the status line */
	T_CHECK(dump_has(&t, 200, 50, "recalled 3"), "the KV pane's recalled region");
	T_CHECK(dump_has(&t, 200, 50,
	                 "cold tier (temporary database): 4 tokens written, 4 recalled in 2 blocks"),
	        "the KV pane's cold tier line");
	T_CHECK(dump_has(&t, 200, 50, "cold tier: temporary database, deleted at exit, 4 recalled"),
	        "the status line");
	/* the strip's details */
	t.sel_tok = 4;
	T_CHECK(dump_has(&t, 220, 50, "recalled from turn 1, summary score 0.91, BM25 7.2"),
	        "token 4's details");
	t.sel_tok = 11;
	T_CHECK(dump_has(&t, 220, 50, "recalled from turn 2, summary score -, BM25 0.0"),
	        "token 11's details");
	t.sel_tok = 6;
	T_CHECK(dump_has(&t, 220, 50, "evicted by streaming"), "token 6 is still evicted");
	/* writes stop: said on the status line, as an error */
	struct worker_event es = { 0 };
	es.kind = WORKER_EV_COLD;
	es.cold.kind = SESSION_COLD_STOP;
	es.cold.msg = "disk full";
	tui_apply(&t, &es, 0);
	T_CHECK(t.status_err && strstr(t.status, "disk full") != NULL, "status '%s'", t.status);
	T_CHECK(t.cold_stopped, "stopped");
	/* off: no cold tier item, no recalled region */
	struct tui t2;
	tui_init(&t2);
	t2.sel_tok = -1;
	tui_apply(&t2, &ev, 0);
	T_CHECK(!dump_has(&t2, 200, 50, "cold tier"), "a cold tier item while it is off");
	T_CHECK(!dump_has(&t2, 200, 50, "recalled"), "a recalled region while the cold tier is off");
	tui_free(&t2);
	tui_free(&t);
}

int main(void)
{
	if (setlocale(LC_ALL, "C.UTF-8") == NULL) {
		fprintf(stderr, "test-tui-cold: the C.UTF-8 locale is missing\n");
		return 99;
	}
	test_recalled();
	return t_done("test-tui-cold");
}
