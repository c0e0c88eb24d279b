/*
 * test-worker.c: the session on its worker thread (src/app/worker.c), on a
 * tiny random-weight model. The events arrive in the order the session
 * produced them (turn start, the prompt's snapshot, tokens, turn end, the
 * command's result), carry the id of their command, and are deep copies:
 * the tokens' texts put together equal the turn's reply, and the attention
 * rows copied from step events still sum to 1 long after the worker has
 * moved on. A bad command gives a failed result naming the bad value; a
 * budget change shows in the next snapshot; a cancel stops the reply with
 * stop reason "user". A load of a saved session sends its transcript (the
 * texts said, its last n turns) before the snapshot and the result.
 * A Lua retention policy runs on the worker (WORKER_SCORER, as the TUI's
 * :policy sends it) while this thread keeps calling into the same plugin
 * (its command and token hook): every eviction is the Lua policy's, none
 * falls back, the kept tokens are the most recent (what its scores ask
 * for), and the plugin's own state saw every call made here.
 */
#include "app/app.h"
#include "script/script.h"
#include "store/store.h"
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
	uint64_t id =
	        worker_send(w, &(struct worker_cmd){ .kind = WORKER_CHAT, .text = "hello there" });
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
				T_CHECK(ev->n_toks > 2 && ev->next_pos == (int32_t)ev->n_toks, "n_toks %u",
				        ev->n_toks);
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
		case WORKER_EV_TRANSCRIPT: T_CHECK(false, "an exchange sent a transcript"); break;
		case WORKER_EV_SAVED: T_CHECK(false, "an exchange not saved sent a saved event"); break;
		case WORKER_EV_COMPARE: T_CHECK(false, "an exchange without :compare sent one"); break;
		case WORKER_EV_COLD:
			T_CHECK(false, "an exchange without a cold tier sent a cold event");
			break;
		case WORKER_EV_PROGRESS: T_CHECK(false, "an exchange without a document clustered"); break;
		case WORKER_EV_NOTICE:
			T_CHECK(false, "an exchange without a document: '%s'", ev->msg);
			break;
		}
		worker_event_free(ev);
	}
	T_CHECK(n_steps > 0, "step events with attention rows");
	for (uint32_t i = 0; i < n_steps; i++) {
		const struct kv_event *k = &steps[i]->kv;
		/* the columns' tokens came along: cache order (rising positions),
		 * the query itself the last */
		const int32_t *kp = steps[i]->key_pos;
		T_CHECK(kp != NULL && steps[i]->key_tok != NULL, "step %u: no key labels", i);
		for (uint32_t c = 1; kp != NULL && c < k->n_cached; c++)
			T_CHECK(kp[c] > kp[c - 1], "step %u: keys %d then %d", i, kp[c - 1], kp[c]);
		if (kp != NULL && k->n_cached > 0) {
			T_EQ_INT(kp[k->n_cached - 1], k->tok->orig_pos);
			T_EQ_INT(steps[i]->key_tok[k->n_cached - 1], k->tok->token);
		}
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
	T_CHECK(snap != NULL && snap->n_toks <= 16 && snap->stats.budget == 16,
	        "snapshot after budget");
	T_CHECK(snap != NULL && strncmp(snap->policy, "streaming", 9) == 0, "%s",
	        snap ? snap->policy : "");
	worker_event_free(res);
	worker_event_free(snap);
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_BUDGET, .n = -1 });
	res = until_result(w, id, NULL);
	T_CHECK(res->status != KVS_OK, "negative budget");
	worker_event_free(res);
	/* 0: every slot of the context (256 here), as --kv-budget 0 */
	snap = NULL;
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_BUDGET, .n = 0 });
	res = until_result(w, id, &snap);
	T_CHECK(res->status == KVS_OK && strstr(res->msg, "budget 256 tokens") != NULL, "%s", res->msg);
	T_CHECK(snap != NULL && snap->stats.budget == 256, "budget %u", snap ? snap->stats.budget : 0);
	worker_event_free(res);
	worker_event_free(snap);
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

/* One exchange; its reply from the turn-end event (allocated). */
static char *chat_reply(struct worker *w, const char *text)
{
	uint64_t id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_CHAT, .text = text });
	char *reply = NULL;

	for (;;) {
		struct worker_event *ev = next_event(w);
		bool end = ev->kind == WORKER_EV_RESULT;
		T_EQ_INT(ev->cmd_id, id);
		if (ev->kind == WORKER_EV_TURN_END) {
			free(reply);
			reply = xstrdup(ev->turn.reply ? ev->turn.reply : "");
		}
		if (end)
			T_EQ_INT(ev->status, KVS_OK);
		worker_event_free(ev);
		if (end)
			break;
	}
	return reply ? reply : xstrdup("");
}

/* A load: the transcript event (NULL when none came), the last snapshot
 * and the result, in the order the worker sent them. */
static struct worker_event *load(struct worker *w, const char *what, int64_t n,
                                 struct worker_event **snap, struct worker_event **res)
{
	uint64_t id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_LOAD, .text = what, .n = n });
	struct worker_event *tr = NULL;

	*snap = NULL;
	for (;;) {
		struct worker_event *ev = next_event(w);
		T_EQ_INT(ev->cmd_id, id);
		if (ev->kind == WORKER_EV_RESULT) {
			*res = ev;
			return tr;
		}
		if (ev->kind == WORKER_EV_TRANSCRIPT) {
			T_CHECK(tr == NULL, "one transcript per load");
			T_CHECK(*snap == NULL, "the transcript comes before the snapshot");
			worker_event_free(tr);
			tr = ev;
		} else if (ev->kind == WORKER_EV_SNAPSHOT) {
			worker_event_free(*snap);
			*snap = ev;
		} else {
			worker_event_free(ev);
		}
	}
}

/* Save three exchanges, start over, load them back: the transcript event
 * carries the last n turns' texts as they were said, oldest first, and
 * the tokens the snapshot after it shows. */
static void test_load(struct worker *w, const char *dir)
{
	static const char *const said[] = { "alpha one", "beta two", "gamma three" };
	char *replies[3];
	struct worker_event *tr, *snap, *res;
	char *db = xasprintf("%s/mem.db", dir);
	uint64_t id;

	worker_set_store(w, db, model_path, "temp=0");
	/* a new conversation: :save would take the exchanges so far along */
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_RESET });
	worker_event_free(until_result(w, id, NULL));
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_SAVE, .text = "recap test" });
	res = until_result(w, id, NULL);
	if (!store_available()) {
		/* built without SQLite: the command says so, nothing else to check */
		T_CHECK(res->status != KVS_OK && strstr(res->msg, "SQLite") != NULL, "%s", res->msg);
		worker_event_free(res);
		free(db);
		return;
	}
	T_EQ_INT(res->status, KVS_OK);
	worker_event_free(res);
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_RESET });
	worker_event_free(until_result(w, id, NULL));
	for (int i = 0; i < 3; i++)
		replies[i] = chat_reply(w, said[i]);
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_RESET });
	worker_event_free(until_result(w, id, NULL));
	/* another policy and budget now: the load brings the saved ones back */
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_POLICY, .text = "window" });
	worker_event_free(until_result(w, id, NULL));
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_BUDGET, .n = 200 });
	worker_event_free(until_result(w, id, NULL));

	tr = load(w, "recap test", 2, &snap, &res);
	T_EQ_INT(res->status, KVS_OK);
	T_CHECK(strstr(res->msg, "policy streaming sinks=2 and budget 256 as saved") != NULL, "%s",
	        res->msg);
	T_CHECK(snap != NULL && strcmp(snap->policy, "streaming sinks=2") == 0 &&
	                snap->stats.budget == 256,
	        "after the load: policy '%s', budget %u", snap ? snap->policy : "",
	        snap ? snap->stats.budget : 0);
	T_CHECK(tr != NULL, "a load that resumed sends a transcript");
	if (tr != NULL) {
		T_EQ_INT(tr->status, KVS_OK);
		T_EQ_STR(tr->recap.title, "recap test");
		T_EQ_STR(tr->recap.system ? tr->recap.system : "(none)", "be brief");
		T_EQ_INT(tr->recap.n_turns, 3);
		T_EQ_INT(tr->recap.first, 1);
		T_EQ_INT(tr->recap.n, 2);
		for (uint32_t i = 0; i < tr->recap.n && i < 2; i++) {
			T_EQ_STR(tr->recap.turns[i].user, said[i + 1]);
			T_EQ_STR(tr->recap.turns[i].reply, replies[i + 1]);
		}
		T_CHECK(snap != NULL && tr->recap.n_tokens == snap->n_toks && snap->n_toks > 0,
		        "recap says %u tokens, the snapshot holds %u", tr->recap.n_tokens,
		        snap ? snap->n_toks : 0);
		char line[200], want[200];
		snprintf(want, sizeof want, "resumed 'recap test' (3 turns, %u tokens retained)",
		         snap ? snap->n_toks : 0);
		T_EQ_STR(session_recap_line(&tr->recap, line, sizeof line), want);
	}
	worker_event_free(tr);
	worker_event_free(snap);
	worker_event_free(res);

	/* n = 0: the counts, no texts; more than there are: all of them */
	tr = load(w, "recap test", 0, &snap, &res);
	T_CHECK(tr != NULL && tr->recap.n == 0 && tr->recap.first == 3 && tr->recap.n_turns == 3,
	        "n = 0: %u turns from %u", tr ? tr->recap.n : 0, tr ? tr->recap.first : 0);
	worker_event_free(tr);
	worker_event_free(snap);
	worker_event_free(res);
	tr = load(w, "recap test", 1000, &snap, &res);
	T_CHECK(tr != NULL && tr->recap.n == 3 && tr->recap.first == 0, "n = 1000: %u turns",
	        tr ? tr->recap.n : 0);
	if (tr != NULL && tr->recap.n == 3)
		T_EQ_STR(tr->recap.turns[0].user, said[0]);
	worker_event_free(tr);
	worker_event_free(snap);
	worker_event_free(res);

	/* a load that fails sends no transcript */
	tr = load(w, "no such session", 10, &snap, &res);
	T_CHECK(tr == NULL, "a failed load sent a transcript");
	T_CHECK(res->status != KVS_OK && strstr(res->msg, "no such session") != NULL, "%s", res->msg);
	worker_event_free(tr);
	worker_event_free(snap);
	worker_event_free(res);
	for (int i = 0; i < 3; i++)
		free(replies[i]);
	free(db);
}

/* A session on the tiny model and its worker (the one main uses, or a
 * second for a test that needs a session never saved). */
static int open_worker(struct session **s, struct worker **w)
{
	struct session_config c;
	struct err e;

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
	if (session_open(s, &c, &e) != KVS_OK) {
		fprintf(stderr, "session_open: %s\n", e.msg);
		return KVS_EIO;
	}
	if (worker_start(w, *s, &e) != KVS_OK) {
		fprintf(stderr, "worker_start: %s\n", e.msg);
		session_close(*s);
		return KVS_EIO;
	}
	return KVS_OK;
}

/* The result of command id, the last snapshot before it in *snap, and the
 * saved events' statuses counted (ok, failed). */
static struct worker_event *result_counting(struct worker *w, uint64_t id,
                                            struct worker_event **snap, int *ok, int *failed)
{
	*snap = NULL;
	for (;;) {
		struct worker_event *ev = next_event(w);
		T_EQ_INT(ev->cmd_id, id);
		if (ev->kind == WORKER_EV_RESULT)
			return ev;
		if (ev->kind == WORKER_EV_SAVED) {
			*ok += ev->status == KVS_OK;
			*failed += ev->status != KVS_OK;
		}
		if (ev->kind == WORKER_EV_SNAPSHOT) {
			worker_event_free(*snap);
			*snap = ev;
			continue;
		}
		worker_event_free(ev);
	}
}

/* :save in the middle of a conversation keeps it whole: the exchanges said
 * before it are committed at once, the later ones added, and a resume
 * reads all of them back in order. Snapshots count the exchanges not yet
 * saved (what the workbench asks about before quitting). A second :save
 * with a title renames the saved session instead of starting another. */
static void test_save_late(const char *dir)
{
	static const char *const said[] = { "first before", "second before", "third after" };
	struct session *s;
	struct worker *w;
	struct worker_event *res, *snap, *tr;
	char *replies[3], *db = xasprintf("%s/late.db", dir);
	int ok = 0, failed = 0;
	uint64_t id;

	if (!store_available()) {
		free(db);
		return;
	}
	if (open_worker(&s, &w) != KVS_OK) {
		T_CHECK(false, "a second worker");
		free(db);
		return;
	}
	worker_set_store(w, db, model_path, "temp=0 seed=1");
	for (int i = 0; i < 2; i++)
		replies[i] = chat_reply(w, said[i]);
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_SNAPSHOT });
	res = result_counting(w, id, &snap, &ok, &failed);
	T_CHECK(snap != NULL && snap->n_unsaved == 2 && !snap->saving, "before: %u unsaved",
	        snap ? snap->n_unsaved : 99);
	worker_event_free(res);
	worker_event_free(snap);
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_SAVE, .text = "late save" });
	res = result_counting(w, id, &snap, &ok, &failed);
	T_CHECK(res->status == KVS_OK && strstr(res->msg, "saved 2 exchanges") != NULL, "%s", res->msg);
	T_CHECK(snap != NULL && snap->n_unsaved == 0 && snap->saving, "after :save: %u unsaved",
	        snap ? snap->n_unsaved : 99);
	worker_event_free(res);
	worker_event_free(snap);
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_CHAT, .text = said[2] });
	replies[2] = NULL;
	for (;;) {
		struct worker_event *ev = next_event(w);
		bool end = ev->kind == WORKER_EV_RESULT;
		if (ev->kind == WORKER_EV_TURN_END)
			replies[2] = xstrdup(ev->turn.reply ? ev->turn.reply : "");
		if (ev->kind == WORKER_EV_SAVED) {
			T_EQ_INT(ev->status, KVS_OK);
			T_EQ_INT(ev->index, 2);
			ok++;
		}
		worker_event_free(ev);
		if (end)
			break;
	}
	T_EQ_INT(ok, 1);
	T_EQ_INT(failed, 0);
	/* a title for the session being saved renames it */
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_SAVE, .text = "late save renamed" });
	res = result_counting(w, id, &snap, &ok, &failed);
	T_CHECK(res->status == KVS_OK && strstr(res->msg, "now titled 'late save renamed'") != NULL,
	        "%s", res->msg);
	worker_event_free(res);
	worker_event_free(snap);
	id = worker_send(w, &(struct worker_cmd){ .kind = WORKER_RESET });
	worker_event_free(until_result(w, id, NULL));
	tr = load(w, "late save renamed", 10, &snap, &res);
	T_CHECK(res->status == KVS_OK, "%s", res->msg);
	T_CHECK(tr != NULL && tr->recap.n_turns == 3 && tr->recap.n == 3, "%u turns saved",
	        tr ? tr->recap.n_turns : 0);
	for (uint32_t i = 0; tr != NULL && i < tr->recap.n && i < 3; i++) {
		T_EQ_STR(tr->recap.turns[i].user, said[i]);
		T_EQ_STR(tr->recap.turns[i].reply, replies[i] ? replies[i] : "?");
	}
	worker_event_free(tr);
	worker_event_free(snap);
	worker_event_free(res);
	/* the sampler settings went with it */
	{
		struct store *st;
		struct store_session ss;
		struct err e;
		int64_t sid;
		T_EQ_INT(store_open(&st, db, STORE_RO, &e), KVS_OK);
		T_EQ_INT(store_session_find(st, "late save renamed", &sid, &e), KVS_OK);
		T_EQ_INT(store_session_get(st, sid, &ss, &e), KVS_OK);
		T_EQ_STR(ss.sampler, "temp=0 seed=1");
		store_session_free(&ss);
		store_close(st);
	}
	for (int i = 0; i < 3; i++)
		free(replies[i]);
	worker_stop(w);
	session_close(s);
	free(db);
}

/* Keeps the most recent tokens: score = original position. */
static const char recent_src[] =
        "local kvscope = require 'kvscope'\n"
        "local k, seen = 0, 0\n"
        "kvscope.on('token', function() seen = seen + 1 kvscope.status(k .. ' ' .. seen) end)\n"
        "kvscope.command('k', function(a) k = tonumber(a) end)\n"
        "kvscope.policy.register('lua-recent', function(toks)\n"
        "  local s = {} for i = 1, #toks do s[i] = toks[i].position + 0 * k end return s end,\n"
        "  { base = 'window', budget_ms = 2000 })\n";

static void test_lua_policy(struct worker *w)
{
	struct script_config sc;
	struct script_rt *rt;
	struct worker_cmd wc = { .kind = WORKER_SCORER };
	struct worker_event *res, *snap = NULL;
	struct err e;
	char buf[64];

	if (!script_available()) {
		printf("test-worker: no Lua, no Lua policy on the worker\n");
		return;
	}
	script_config_default(&sc);
	T_EQ_INT(script_rt_new(&rt, &sc, &e), KVS_OK);
	T_CHECK(script_load_text(rt, "recent", recent_src, &e) == KVS_OK, "load: %s", e.msg);
	T_EQ_INT(script_policy_scorer(rt, "lua-recent", &wc.scorer, &wc.policy, &e), KVS_OK);
	res = until_result(w, worker_send(w, &wc), NULL);
	T_CHECK(res->status == KVS_OK && strstr(res->msg, "lua-recent") != NULL, "%s", res->msg);
	worker_event_free(res);
	res = until_result(w, worker_send(w, &(struct worker_cmd){ .kind = WORKER_BUDGET, .n = 16 }),
	                   NULL);
	worker_event_free(res);

	/* a reply under the Lua policy; this thread drives the plugin meanwhile */
	uint64_t id = worker_send(
	        w, &(struct worker_cmd){ .kind = WORKER_CHAT, .text = "tell me a long story" });
	struct kv_tok meta = { .token = 1 };
	struct gen_token tok = { .id = 1, .meta = &meta, .text = "a", .len = 1 };
	uint32_t n_evict = 0, n_fallback = 0, n_other = 0;
	int n = 0, n_ok = 0;
	double end = clock_now_ms() + 60000;
	res = NULL;
	while (res == NULL && clock_now_ms() < end) {
		snprintf(buf, sizeof buf, "%d", ++n);
		n_ok += script_command_run(rt, "k", buf, &e) == KVS_OK;
		script_on_token(rt, &tok);
		struct worker_event *ev;
		while (res == NULL && (ev = worker_poll(w)) != NULL) {
			T_EQ_INT(ev->cmd_id, id);
			if (ev->kind == WORKER_EV_KV && ev->kv.kind == KV_EVENT_EVICT) {
				n_evict++;
				n_fallback += ev->kv.fallback;
				n_other += ev->kv.policy == NULL || strcmp(ev->kv.policy, "lua-recent") != 0;
			}
			if (ev->kind == WORKER_EV_SNAPSHOT) {
				worker_event_free(snap);
				snap = ev;
			} else if (ev->kind == WORKER_EV_RESULT) {
				res = ev;
			} else {
				worker_event_free(ev);
			}
		}
	}
	T_CHECK(res != NULL && res->status == KVS_OK, "chat: %s", res ? res->msg : "no result");
	T_EQ_INT(n_ok, n);
	T_CHECK(n_evict > 0, "%u evictions", n_evict);
	T_EQ_INT(n_fallback, 0);
	T_EQ_INT(n_other, 0);
	snprintf(buf, sizeof buf, "%d %d", n, n);
	T_EQ_STR(script_status_at(rt, 0, NULL), buf);
	/* the cache holds the most recent tokens, one per position up to the last */
	T_CHECK(snap != NULL && snap->n_toks > 0 && snap->n_toks <= 16, "snapshot");
	for (uint32_t i = 0; snap != NULL && i < snap->n_toks; i++)
		T_EQ_INT(snap->toks[i].orig_pos, snap->next_pos - (int32_t)snap->n_toks + (int32_t)i);
	printf("test-worker: %u evictions by the Lua policy on the worker during %d plugin calls "
	       "here\n",
	       n_evict, n);
	worker_event_free(res);
	worker_event_free(snap);
	/* the worker lets go of the policy before its runtime goes */
	res = until_result(
	        w, worker_send(w, &(struct worker_cmd){ .kind = WORKER_POLICY, .text = "window" }),
	        NULL);
	T_EQ_INT(res->status, KVS_OK);
	worker_event_free(res);
	script_rt_free(rt);
}

int main(void)
{
	struct session *s;
	struct worker *w;

	model_path = tinymodel_write_temp("worker");
	if (open_worker(&s, &w) != KVS_OK) {
		unlink(model_path);
		return 99;
	}
	test_chat(w);
	test_commands(w);
	test_cancel(w);
	char dir[256];
	snprintf(dir, sizeof dir, "%s/kvs-worker-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(dir) == NULL) {
		perror("mkdtemp");
		return 99;
	}
	test_load(w, dir);
	test_lua_policy(w);
	worker_stop(w);
	session_close(s);
	test_save_late(dir);
	char *cmd = xasprintf("rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	free(cmd);
	unlink(model_path);
	free(model_path);
	return t_done("test-worker");
}
