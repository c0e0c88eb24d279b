/*
 * test-compare.c: a second policy on the same dialogue (src/app/compare.c).
 *
 *   - compare_diverge on hand-written token lists: equal, parting in the
 *     middle, one a prefix of the other, empty;
 *   - compare_place and compare_overlap on hand-made sides whose replies
 *     differ in length (places are exchange and offset, not positions),
 *     and a side whose cache restarted (only its last epoch is placed);
 *   - on a tiny model, sampling at temperature 0.8: a shadow under the
 *     session's own policy and budget replays every exchange to the same
 *     reply token for token and keeps the same tokens, even after an
 *     earlier conversation moved the sampler's generator on; a shadow
 *     under another budget keeps at most its budget; what cannot be
 *     compared is refused with one line (no exchange yet, a bad policy);
 *   - on the worker: one event per replayed exchange, a new exchange
 *     followed, a second :compare refused, off, and a stop ending it.
 */
#include "app/app.h"
#include "tests/unit/test.h"
#include "tests/util/tinymodel.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *model_path;

static void test_diverge(void)
{
	const int32_t a[] = { 5, 6, 7, 8 }, b[] = { 5, 6, 9, 8 }, c[] = { 5, 6 };

	T_EQ_INT(compare_diverge(a, 4, a, 4), -1);
	T_EQ_INT(compare_diverge(a, 4, b, 4), 2);
	T_EQ_INT(compare_diverge(a, 4, c, 2), 2); /* c ends where a goes on */
	T_EQ_INT(compare_diverge(c, 2, a, 4), 2);
	T_EQ_INT(compare_diverge(a, 0, b, 0), -1);
	T_EQ_INT(compare_diverge(a, 0, b, 1), 0);
}

/* A kept token at orig_pos with id token. */
static struct kv_tok kt(int32_t orig_pos, int32_t token)
{
	struct kv_tok t;
	memset(&t, 0, sizeof t);
	t.orig_pos = orig_pos;
	t.token = token;
	return t;
}

static void test_overlap(void)
{
	/* A: exchange 0 at 0..9, 1 at 10..24, 2 from 25. B: exchange 1's
	 * reply is five tokens longer, so exchange 2 starts at 30. */
	struct compare_turn ta[3] = { { .first_pos = 0 }, { .first_pos = 10 }, { .first_pos = 25 } };
	struct compare_turn tb[3] = { { .first_pos = 0 }, { .first_pos = 10 }, { .first_pos = 30 } };
	struct kv_tok ka[] = { kt(0, 100),  kt(1, 101),  kt(2, 102),  kt(10, 110),
		                   kt(11, 111), kt(25, 125), kt(26, 126), kt(27, 127) };
	/* B keeps 0 and 1 (same), 11 with another token, 12, exchange 2's
	 * first two tokens (same tokens at offsets 0, 1) and 35 (offset 5) */
	struct kv_tok kb[] = { kt(0, 100),  kt(1, 101),  kt(11, 999), kt(12, 112),
		                   kt(30, 125), kt(31, 126), kt(35, 130) };
	struct compare_side a = { .turns = ta, .n_turns = 3, .kept = ka, .n_kept = 8 };
	struct compare_side b = { .turns = tb, .n_turns = 3, .kept = kb, .n_kept = 7 };
	uint32_t turn = 9, off = 9;

	T_CHECK(compare_place(&b, 31, &turn, &off), "placed in B");
	T_EQ_INT(turn, 2);
	T_EQ_INT(off, 1);
	T_CHECK(compare_place(&a, 24, &turn, &off), "placed in A");
	T_EQ_INT(turn, 1);
	T_EQ_INT(off, 14);
	T_CHECK(compare_place(&a, 0, &turn, &off), "the first token");
	T_EQ_INT(turn, 0);
	T_EQ_INT(off, 0);
	/* both: (0,0) (0,1) (2,0) (2,1); (1,1) holds other tokens */
	T_EQ_INT(compare_overlap(&a, &b), 4);
	T_EQ_INT(compare_overlap(&b, &a), 4);
	T_EQ_INT(compare_overlap(&a, &a), 8);

	/* a restart at exchange 2: positions start over, only that epoch is placed */
	struct compare_turn tr[3] = { { .first_pos = 0 },
		                          { .first_pos = 12 },
		                          { .first_pos = 0, .restarted = true } };
	struct compare_side r = { .turns = tr, .n_turns = 3 };
	T_CHECK(compare_place(&r, 3, &turn, &off), "after the restart");
	T_EQ_INT(turn, 2);
	T_EQ_INT(off, 3);
	T_CHECK(compare_place(&r, 14, &turn, &off), "after the restart");
	T_EQ_INT(turn, 2);
	T_EQ_INT(off, 14);
	T_CHECK(!compare_place(&r, -1, &turn, &off), "no negative place");
	struct compare_side none = { 0 };
	T_CHECK(!compare_place(&none, 0, &turn, &off), "no exchanges");

	/* the summary: kept counts, overlap, the first parting reply token */
	int32_t ra[] = { 1, 2, 3 }, rb[] = { 1, 2, 4, 5 };
	ta[1].ids = ra;
	ta[1].n_reply = 3;
	tb[1].ids = rb;
	tb[1].n_reply = 4;
	struct compare_side both[2] = { a, b };
	struct compare_sum sum;
	compare_summarize(both, &sum);
	T_EQ_INT(sum.kept[0], 8);
	T_EQ_INT(sum.kept[1], 7);
	T_EQ_INT(sum.overlap, 4);
	T_EQ_INT(sum.turns, 3);
	T_EQ_INT(sum.div_turn, 1);
	T_EQ_INT(sum.div_tok, 2);
}

static void config(struct session_config *c)
{
	session_config_default(c);
	c->gen.model_path = model_path;
	c->gen.engine.backend = ENGINE_BACKEND_CPU;
	c->gen.engine.n_threads = 1;
	c->gen.engine.n_ctx = 256;
	c->gen.sampler.temp = 0.8f; /* sampled: the generator's state matters */
	c->gen.sampler.seed = 7;
	c->max_tokens = 12;
	c->system = "be brief";
}

static const char *const questions[] = { "hello there", "what is the sea", "tell me more",
	                                     "and the sky" };

/* Run the comparison until it has replayed every exchange. */
static struct compare_view *replay(struct compare *c, struct session *s)
{
	struct err e;
	while (compare_pending(c, s) > 0)
		if (compare_step(c, s, &e) != KVS_OK) {
			fprintf(stderr, "compare_step: %s\n", e.msg);
			return NULL;
		}
	return compare_view_make(c, s, COMPARE_FOLLOWING, session_n_turns(s));
}

static void test_shadow(void)
{
	struct session_config cfg;
	struct session *s;
	struct compare *c;
	struct err e;

	config(&cfg);
	cfg.gen.kv.budget = 96;
	T_CHECK(kv_policy_parse("window", &cfg.gen.kv.policy, &e) == KVS_OK, "policy");
	if (session_open(&s, &cfg, &e) != KVS_OK) {
		fprintf(stderr, "session_open: %s\n", e.msg);
		T_CHECK(0, "session opens");
		return;
	}
	/* nothing to replay yet */
	T_EQ_INT(compare_open(&c, s, "window", -1, &e), KVS_ESTATE);
	T_CHECK(strstr(e.msg, "no conversation yet") != NULL, "%s", e.msg);
	/* a conversation that moves the generator on, then a new one */
	T_EQ_INT(session_chat(s, "a first talk", &e), KVS_OK);
	session_reset(s);
	for (size_t i = 0; i < KVS_ARRAY_LEN(questions); i++)
		T_EQ_INT(session_chat(s, questions[i], &e), KVS_OK);
	struct kv_stats ks;
	kv_cache_stats(gen_kv(session_gen(s)), &ks);
	T_CHECK(ks.n_evicted > 0, "it evicted"); /* the budget was reached */

	T_EQ_INT(compare_open(&c, s, "nosuchpolicy", -1, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "nosuchpolicy") != NULL, "%s", e.msg);

	/* the same policy and budget: the same replies and the same cache */
	T_EQ_INT(compare_open(&c, s, "window", -1, &e), KVS_OK);
	T_EQ_INT(compare_pending(c, s), 4);
	struct compare_view *v = replay(c, s);
	T_CHECK(v != NULL, "the replay ran");
	if (v != NULL) {
		T_EQ_INT(v->side[1].n_turns, 4);
		T_EQ_INT(v->sum.div_turn, -1);
		T_EQ_INT(v->sum.div_tok, -1);
		T_EQ_INT(v->sum.kept[0], v->sum.kept[1]);
		T_EQ_INT(v->sum.overlap, v->sum.kept[0]);
		for (uint32_t i = 0; i < 4; i++)
			T_EQ_STR(v->side[1].turns[i].reply, session_turn_at(s, i)->reply);
		T_EQ_INT(v->side[1].budget, 96);
		T_CHECK(v->kv_bytes == 96 * engine_kv_bytes_per_slot(gen_engine(session_gen(s))),
		        "the shadow's KV bytes");
	}
	compare_view_free(v);
	/* a new exchange: the shadow follows it */
	T_EQ_INT(session_chat(s, "one more thing", &e), KVS_OK);
	T_EQ_INT(compare_pending(c, s), 1);
	v = replay(c, s);
	T_CHECK(v != NULL && v->side[1].n_turns == 5 && v->sum.div_turn == -1, "it followed");
	compare_view_free(v);
	compare_close(c);

	/* a smaller budget: at most that many kept, the same user turns */
	T_EQ_INT(compare_open(&c, s, "window", 64, &e), KVS_OK);
	v = replay(c, s);
	T_CHECK(v != NULL, "the replay ran");
	if (v != NULL) {
		T_CHECK(v->sum.kept[1] <= 64, "within its budget");
		T_EQ_INT(v->side[1].budget, 64);
		T_CHECK(v->sum.overlap <= v->sum.kept[1], "overlap within the kept");
		T_EQ_INT(v->side[1].turns[0].n_prompt, v->side[0].turns[0].n_prompt);
	}
	compare_view_free(v);
	compare_close(c);
	session_close(s);
}

/* The next event, waiting for it (a hang fails after a minute; not a
 * timing assertion). */
static struct worker_event *next_event(struct worker *w)
{
	double end = clock_now_ms() + 60000;
	struct worker_event *ev;

	while ((ev = worker_poll(w)) == NULL) {
		if (clock_now_ms() > end) {
			fprintf(stderr, "test-compare: no event within a minute\n");
			exit(1);
		}
		usleep(1000);
	}
	return ev;
}

/* Run command c to its result; *n_cmp counts the comparison events on the
 * way and *last keeps the last one (the caller frees it). */
static struct worker_event *run_cmd(struct worker *w, const struct worker_cmd *c, uint32_t *n_cmp,
                                    struct worker_event **last)
{
	uint64_t id = worker_send(w, c);
	for (;;) {
		struct worker_event *ev = next_event(w);
		if (ev->kind == WORKER_EV_COMPARE) {
			(*n_cmp)++;
			worker_event_free(*last);
			*last = ev;
			continue;
		}
		if (ev->kind == WORKER_EV_RESULT && ev->cmd_id == id)
			return ev;
		worker_event_free(ev);
	}
}

/* On the worker: the replay sends one event per exchange and a result;
 * a chat is followed; a second :compare is refused while one is on; off
 * ends it with a last event; a stop that reached the comparison ends it
 * as cancelled, one that came too late leaves it running. */
static void test_worker(void)
{
	struct session_config cfg;
	struct session *s;
	struct worker *w;
	struct worker_event *res, *last = NULL;
	struct err e;
	uint32_t n = 0;

	config(&cfg);
	T_CHECK(kv_policy_parse("window", &cfg.gen.kv.policy, &e) == KVS_OK, "policy");
	cfg.gen.kv.budget = 96;
	if (session_open(&s, &cfg, &e) != KVS_OK || worker_start(&w, s, &e) != KVS_OK) {
		T_CHECK(0, "%s", e.msg);
		return;
	}
	res = run_cmd(w, &(struct worker_cmd){ .kind = WORKER_COMPARE, .text = "window", .n = -1 }, &n,
	              &last);
	T_CHECK(res->status != KVS_OK && strstr(res->msg, "no conversation yet"), "%s", res->msg);
	worker_event_free(res);
	for (int i = 0; i < 2; i++) {
		res = run_cmd(w, &(struct worker_cmd){ .kind = WORKER_CHAT, .text = questions[i] }, &n,
		              &last);
		T_EQ_INT(res->status, KVS_OK);
		worker_event_free(res);
	}
	T_EQ_INT(n, 0);
	res = run_cmd(w, &(struct worker_cmd){ .kind = WORKER_COMPARE, .text = "window", .n = 64 }, &n,
	              &last);
	T_CHECK(res->status == KVS_OK && strstr(res->msg, "2 exchanges replayed"), "%s", res->msg);
	worker_event_free(res);
	T_EQ_INT(n, 3); /* the start, then one per exchange */
	T_CHECK(last != NULL && last->cmp->state == COMPARE_FOLLOWING && last->cmp->done == 2 &&
	                last->cmp->side[1].budget == 64,
	        "following");
	n = 0;
	res = run_cmd(w, &(struct worker_cmd){ .kind = WORKER_CHAT, .text = questions[2] }, &n, &last);
	worker_event_free(res);
	T_CHECK(n == 1 && last->cmp->done == 3 && last->cmp->side[1].n_turns == 3, "followed");
	res = run_cmd(w, &(struct worker_cmd){ .kind = WORKER_COMPARE, .text = "h2o", .n = -1 }, &n,
	              &last);
	T_CHECK(res->status != KVS_OK && strstr(res->msg, "expected :compare off first"), "%s",
	        res->msg);
	worker_event_free(res);
	n = 0;
	res = run_cmd(w, &(struct worker_cmd){ .kind = WORKER_COMPARE, .text = "off" }, &n, &last);
	T_CHECK(n == 1 && last->cmp->state == COMPARE_STOPPED, "a last event");
	T_CHECK(res->status == KVS_OK && strstr(res->msg, "comparison off"), "%s", res->msg);
	worker_event_free(res);
	/* a stop: it reached the comparison (queued or running) or came late */
	uint64_t id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_COMPARE, .text = "window" });
	bool hit = worker_compare_stop(w);
	for (res = NULL; res == NULL;) {
		struct worker_event *ev = next_event(w);
		if (ev->kind == WORKER_EV_RESULT && ev->cmd_id == id)
			res = ev;
		else
			worker_event_free(ev);
	}
	if (hit)
		T_CHECK(res->status != KVS_OK && strstr(res->msg, "cancelled"), "%s", res->msg);
	else
		T_CHECK(res->status == KVS_OK, "%s", res->msg);
	worker_event_free(res);
	worker_event_free(last);
	worker_stop(w); /* closes a comparison still on before the session */
	session_close(s);
}

int main(void)
{
	model_path = tinymodel_write_temp("compare");
	test_diverge();
	test_overlap();
	test_shadow();
	test_worker();
	unlink(model_path);
	free(model_path);
	return t_done("test-compare");
}
