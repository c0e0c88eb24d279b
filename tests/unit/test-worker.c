/*
 * test-worker.c: the session on its worker thread (src/app/worker.c), on a
 * tiny random-weight model. The events arrive in the order the session
 * produced them (turn start, the prompt's snapshot, tokens, turn end, the
 * command's result), carry the id of their command, and are deep copies:
 * the tokens' texts put together equal the turn's reply, and the attention
 * rows copied from step events still sum to 1 long after the worker has
 * moved on. A bad command gives a failed result naming the bad value; a
 * budget change shows in the next snapshot; a cancel stops the reply with
 * stop reason "user".
 */
#include "app/app.h"
#include "tests/unit/test.h"
#include "tests/util/tinymodel.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *model_path;

/* The next event, waiting for it (a hang fails after a minute, it is not
 * a timing assertion). */
static struct worker_event *next_event(struct worker *w)
{
	double end = clock_now_ms() + 60000;
	struct worker_event *ev;

	while ((ev = worker_poll(w)) == NULL) {
		if (clock_now_ms() > end) {
			fprintf(stderr, "test-worker: no event within a minute\n");
			exit(1);
		}
		usleep(1000);
	}
	return ev;
}

static void test_chat(struct worker *w)
{
	uint64_t id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_CHAT, .text = "hello there" });
	char text[8192] = "";
	size_t len = 0;
	uint32_t n_tok = 0, n_steps = 0, stage = 0; /* 0 start, 1 snapshot, 2 tokens, 3 end */
	struct worker_event *steps[64];
	struct worker_event *ev;
	bool done = false;

	while (!done) {
		ev = next_event(w);
		T_EQ_INT(ev->cmd_id, id);
		switch (ev->kind) {
		case WORKER_EV_TURN_START:
			T_EQ_INT(stage, 0);
			T_EQ_STR(ev->user, "hello there");
			stage = 1;
			break;
		case WORKER_EV_SNAPSHOT:
			if (stage == 1) {
				/* the prompt is cached before the first reply token */
				T_CHECK(ev->n_toks > 2 && ev->next_pos == (int32_t)ev->n_toks, "n_toks %u", ev->n_toks);
				stage = 2;
			}
			break;
		case WORKER_EV_TOKEN:
			T_CHECK(stage == 2, "token before the prompt's snapshot");
			T_CHECK(ev->token.meta == &ev->meta, "meta points into the event");
			if (len + ev->token.len < sizeof text) {
				memcpy(text + len, ev->token.text, ev->token.len);
				len += ev->token.len;
				text[len] = '\0';
			}
			n_tok++;
			break;
		case WORKER_EV_KV:
			if (ev->kv.kind == KV_EVENT_STEP && ev->kv.attn != NULL && n_steps < 64) {
				steps[n_steps++] = ev;
				ev = NULL; /* kept, checked after the worker moved on */
			}
			break;
		case WORKER_EV_TURN_END:
			T_EQ_INT(stage, 2);
			stage = 3;
			/* the tokens' texts are the reply, but for a tail the detokeniser
			 * flushes at the end (an incomplete UTF-8 sequence, at most 4 bytes) */
			T_CHECK(strncmp(ev->turn.reply, text, len) == 0 && strlen(ev->turn.reply) - len <= 4,
			        "reply '%s', tokens '%s'", ev->turn.reply, text);
			T_EQ_INT(ev->turn.n_reply, n_tok);
			break;
		case WORKER_EV_RESULT:
			T_EQ_INT(stage, 3);
			T_EQ_INT(ev->status, KVS_OK);
			T_EQ_INT(ev->cmd, WORKER_CHAT);
			done = true;
			break;
		}
		worker_event_free(ev);
	}
	T_CHECK(n_steps > 0, "step events with attention rows");
	for (uint32_t i = 0; i < n_steps; i++) {
		const struct kv_event *k = &steps[i]->kv;
		for (uint32_t lh = 0; lh < k->n_layer * k->n_head; lh++) {
			double sum = 0;
			for (uint32_t c = 0; c < k->n_cached; c++)
				sum += k->attn[(size_t)lh * k->n_cached + c];
			T_NEAR(sum, 1.0, 1e-3);
		}
		worker_event_free(steps[i]);
	}
}

/* Events of one command until its result; returns the result (caller frees). */
static struct worker_event *until_result(struct worker *w, uint64_t id, struct worker_event **snap)
{
	for (;;) {
		struct worker_event *ev = next_event(w);
		T_EQ_INT(ev->cmd_id, id);
		if (ev->kind == WORKER_EV_RESULT)
			return ev;
		if (ev->kind == WORKER_EV_SNAPSHOT && snap != NULL) {
			worker_event_free(*snap);
			*snap = ev;
			continue;
		}
		worker_event_free(ev);
	}
}

static void test_commands(struct worker *w)
{
	struct worker_event *res, *snap = NULL;
	uint64_t id;

	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_POLICY, .text = "bogus" });
	res = until_result(w, id, NULL);
	T_CHECK(res->status != KVS_OK && strstr(res->msg, "bogus") != NULL, "%s", res->msg);
	worker_event_free(res);
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_POLICY, .text = "streaming sinks=2" });
	res = until_result(w, id, NULL);
	T_EQ_INT(res->status, KVS_OK);
	worker_event_free(res);
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_BUDGET, .n = 16 });
	/* the snapshot comes before the result */
	for (;;) {
		struct worker_event *ev = next_event(w);
		if (ev->kind == WORKER_EV_SNAPSHOT) {
			worker_event_free(snap);
			snap = ev;
			continue;
		}
		if (ev->kind == WORKER_EV_RESULT) {
			res = ev;
			break;
		}
		worker_event_free(ev);
	}
	T_EQ_INT(res->status, KVS_OK);
	T_CHECK(snap != NULL && snap->n_toks <= 16 && snap->stats.budget == 16, "snapshot after budget");
	T_CHECK(snap != NULL && strncmp(snap->policy, "streaming", 9) == 0, "%s", snap ? snap->policy : "");
	worker_event_free(res);
	worker_event_free(snap);
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_BUDGET, .n = -1 });
	res = until_result(w, id, NULL);
	T_CHECK(res->status != KVS_OK, "negative budget");
	worker_event_free(res);
	T_CHECK(!worker_busy(w), "idle");
}

/* One exchange; cancel it as soon as worker_cancel finds it (running or
 * queued). Returns whether the cancel found it; its stop reason in *stop. */
static bool cancel_one(struct worker *w, enum gen_stop *stop)
{
	uint64_t id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_CHAT, .text = "go on" });
	bool hit = worker_cancel(w), done = false;

	while (!done) {
		struct worker_event *ev = next_event(w);
		if (ev->kind == WORKER_EV_TURN_END)
			*stop = ev->turn.stop;
		if (ev->kind == WORKER_EV_RESULT) {
			T_EQ_INT(ev->cmd_id, id);
			T_EQ_INT(ev->status, KVS_OK);
			done = true;
		}
		worker_event_free(ev);
	}
	return hit;
}

static void test_cancel(struct worker *w)
{
	uint64_t id;
	enum gen_stop stop = GEN_STOP_EOS;
	int hits = 0;

	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_MAX_TOKENS, .n = 100000 });
	worker_event_free(until_result(w, id, NULL));
	/* a cancel that found its exchange stops it with "user"; one that came
	 * too late (the exchange had ended) returns false and stops nothing */
	for (int i = 0; i < 10; i++) {
		if (cancel_one(w, &stop)) {
			T_CHECK(stop == GEN_STOP_USER, "stop %s, expected user", gen_stop_name(stop));
			hits++;
		}
	}
	T_CHECK(hits > 0, "worker_cancel found none of 10 exchanges");
	/* a cancel with nothing to stop reaches no later exchange */
	T_CHECK(!worker_cancel(w), "nothing to cancel");
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_MAX_TOKENS, .n = 8 });
	worker_event_free(until_result(w, id, NULL));
	stop = GEN_STOP_USER;
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_CHAT, .text = "and now" });
	for (;;) {
		struct worker_event *ev = next_event(w);
		bool end = ev->kind == WORKER_EV_RESULT;
		if (ev->kind == WORKER_EV_TURN_END)
			stop = ev->turn.stop;
		worker_event_free(ev);
		if (end)
			break;
	}
	T_CHECK(stop != GEN_STOP_USER, "a stale cancel stopped a later exchange");
}

int main(void)
{
	struct session_config c;
	struct session *s;
	struct worker *w;
	struct err e;

	model_path = tinymodel_write_temp("worker");
	session_config_default(&c);
	c.gen.model_path = model_path;
	c.gen.engine.backend = ENGINE_BACKEND_CPU;
	c.gen.engine.n_threads = 1;
	c.gen.engine.n_ctx = 256;
	c.gen.sampler.temp = 0;
	c.gen.kv.capture = KV_CAPTURE_FULL;
	c.gen.kv.capture_interval_ms = 0;
	c.gen.kv.token_stats = KV_TOKSTATS_ON;
	c.max_tokens = 24;
	c.system = "be brief";
	if (session_open(&s, &c, &e) != KVS_OK) {
		fprintf(stderr, "session_open: %s\n", e.msg);
		unlink(model_path);
		return 99;
	}
	if (worker_start(&w, s, &e) != KVS_OK) {
		fprintf(stderr, "worker_start: %s\n", e.msg);
		return 99;
	}
	test_chat(w);
	test_commands(w);
	test_cancel(w);
	worker_stop(w);
	session_close(s);
	unlink(model_path);
	free(model_path);
	return t_done("test-worker");
}
