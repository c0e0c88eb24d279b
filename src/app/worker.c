/*
 * worker.c: a chat session on its own thread.
 *
 * The front end's main thread owns the screen and every Lua state; the
 * session (model, engine, KV cache) belongs to the worker thread from
 * worker_start to worker_stop. They talk through two queues under one
 * mutex: commands go in (worker_send), events come out (worker_poll).
 * Commands run one after another in the order sent, so a policy change
 * sent during a reply applies between turns; only worker_cancel reaches
 * into a running exchange (session_cancel is the session's one thread-safe
 * entry).
 *
 * Events are deep copies of what the session hooks deliver (struct
 * gen_token with its kv_tok and text, struct kv_event with its arrays,
 * struct session_turn with its strings), so consumers on the main thread
 * read the same types the hooks do, after the worker has moved on. The
 * event rate is bounded where it matters: attention rows only come with
 * step events, which the cache emits at most once per capture_interval_ms,
 * and a step event is dropped while the previous one still waits in the
 * queue, so a busy main thread never makes the worker copy rows it would
 * not show. A load that resumed a session sends its transcript (the
 * texts of its last turns, as many as the command asks) before the result.
 * A pipe is readable while events are queued, so the main thread can
 * sleep in poll() on the terminal and the worker at once.
 *
 * :compare (compare.c) runs here too: WORKER_COMPARE opens a shadow
 * session and replays the exchanges so far, one WORKER_EV_COMPARE event
 * per exchange; after that every exchange is followed by the shadow's
 * (another event) before its result. A cancel while the shadow decodes
 * stops the shadow's reply and ends the comparison (worker_cancel,
 * worker_compare_stop); :new and :load end it; worker_stop closes it
 * before the session it borrows.
 */
#include "app/app-int.h"
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct worker_cmd_node {
	struct worker_cmd cmd;
	uint64_t id;
	bool cancelled; /* worker_cancel came before it started */
	struct worker_cmd_node *next;
};

struct worker {
	struct session *s;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct worker_cmd_node *cmd_head, *cmd_tail;
	struct worker_event *ev_head, *ev_tail;
	uint64_t next_id;
	uint64_t running; /* id of the command running, 0 none */
	bool chatting;    /* that command is an exchange */
	bool quit;
	bool sent_snapshot;    /* this exchange's prompt tokens were sent */
	bool saving;           /* a :save or :load gave the session a store */
	uint32_t steps_queued; /* step events not yet polled */
	int pipe_rd, pipe_wr;
	char *db_path, *model_path; /* worker_set_store */
	char *sampler;              /* the sampler settings saved sessions record */
	struct store *st;           /* opened by the first :save or :load */
	/* :compare (compare.c): the comparison, made, run and closed on this
	 * thread; cmp_busy (under mu) while it replays or follows, so that a
	 * cancel from the main thread reaches its shadow reply; cmp_cancel
	 * (under mu) stops it at the next exchange */
	struct compare *cmp;
	bool cmp_busy, cmp_cancel;
};

/* Queue ev for the main thread and make the pipe readable. */
void worker_push(struct worker *w, struct worker_event *ev)
{
	char b = 1;
	ssize_t r;

	pthread_mutex_lock(&w->mu);
	ev->cmd_id = w->running;
	ev->next = NULL;
	if (w->ev_tail != NULL)
		w->ev_tail->next = ev;
	else
		w->ev_head = ev;
	w->ev_tail = ev;
	r = write(w->pipe_wr, &b, 1); /* EAGAIN: already readable */
	(void)r;
	pthread_mutex_unlock(&w->mu);
}

static char *worker_strdup(const char *s)
{
	return s != NULL ? xstrdup(s) : NULL;
}

/* A copy of n bytes at p (caller owns). */
static void *worker_dup(const void *p, size_t n)
{
	void *d = xmalloc(n ? n : 1);
	memcpy(d, p, n);
	return d;
}

/* A deep copy of a sparse step's view (caller owns; worker_sparse_free). */
static struct kv_sparse_view *worker_sparse_copy(const struct kv_sparse_view *src)
{
	struct kv_sparse_view *v = xmalloc(sizeof *v);
	size_t lh = (size_t)src->n_layer * src->n_head_kv, nc = src->n_cached;
	*v = *src;
	v->sel = worker_dup(src->sel, lh * nc);
	v->mark = worker_dup(src->mark, nc);
	v->bound =
	        src->bound ? worker_dup(src->bound, (size_t)src->n_layer * nc * sizeof(float)) : NULL;
	v->mass = worker_dup(src->mass, lh * sizeof(float));
	v->tight = worker_dup(src->tight, lh * sizeof(float));
	return v;
}

void worker_sparse_free(const struct kv_sparse_view *v)
{
	if (v == NULL)
		return;
	free((void *)v->sel);
	free((void *)v->mark);
	free((void *)v->bound);
	free((void *)v->mass);
	free((void *)v->tight);
	free((void *)v);
}

void worker_kv_copy(struct kv_event *dst, const struct kv_event *src)
{
	*dst = *src;
	dst->policy = worker_strdup(src->policy);
	dst->fallback_why = worker_strdup(src->fallback_why);
	if (src->tok != NULL) {
		struct kv_tok *t = xmalloc(sizeof *t);
		*t = *src->tok;
		dst->tok = t;
	}
	if (src->attn != NULL) {
		size_t n = (size_t)src->n_layer * src->n_head * src->n_cached;
		float *a = xmallocarray(n ? n : 1, sizeof *a);
		memcpy(a, src->attn, n * sizeof *a);
		dst->attn = a;
	}
	if (src->heads != NULL) {
		size_t n = (size_t)src->n_layer * src->n_head;
		struct kv_head_summary *h = xmallocarray(n ? n : 1, sizeof *h);
		memcpy(h, src->heads, n * sizeof *h);
		dst->heads = h;
	}
	if (src->sparse != NULL)
		dst->sparse = worker_sparse_copy(src->sparse);
	if (src->evicted != NULL) {
		struct kv_tok *t = xmallocarray(src->n_evicted ? src->n_evicted : 1, sizeof *t);
		memcpy(t, src->evicted, src->n_evicted * sizeof *t);
		dst->evicted = t;
	}
	if (src->recalled != NULL) {
		struct kv_tok *t = xmallocarray(src->n_recalled ? src->n_recalled : 1, sizeof *t);
		memcpy(t, src->recalled, src->n_recalled * sizeof *t);
		dst->recalled = t;
	}
}

void worker_kv_free(struct kv_event *ev)
{
	free((void *)ev->policy);
	free((void *)ev->fallback_why);
	free((void *)ev->tok);
	free((void *)ev->attn);
	free((void *)ev->heads);
	worker_sparse_free(ev->sparse);
	free((void *)ev->evicted);
	free((void *)ev->recalled);
	memset(ev, 0, sizeof *ev);
}

void worker_event_free(struct worker_event *ev)
{
	if (ev == NULL)
		return;
	free(ev->user);
	free((void *)ev->token.text);
	free(ev->turn.user);
	free(ev->turn.reply);
	worker_kv_free(&ev->kv);
	free(ev->toks);
	free(ev->head_keep);
	free(ev->key_pos);
	free(ev->key_tok);
	session_recap_free(&ev->recap);
	compare_view_free(ev->cmp);
	free((void *)ev->cold.hits);
	free(ev);
}

/* A new event of this kind, every other field zero. */
struct worker_event *worker_event_new(enum worker_event_kind kind)
{
	struct worker_event *ev = xcalloc(1, sizeof *ev);
	ev->kind = kind;
	return ev;
}

/* The cache's tokens, statistics and policy as an event. */
static void worker_snapshot(struct worker *w)
{
	struct gen *g = session_gen(w->s);
	struct worker_event *ev = worker_event_new(WORKER_EV_SNAPSHOT);
	uint32_t n = kv_cache_n(g->kv);

	ev->n_toks = n;
	ev->toks = xmallocarray(n ? n : 1, sizeof *ev->toks);
	memcpy(ev->toks, kv_cache_toks(g->kv), n * sizeof *ev->toks);
	ev->head_keep = kv_cache_head_map(g->kv, &ev->hk_layer, &ev->hk_head_kv);
	ev->next_pos = kv_cache_next_pos(g->kv);
	kv_cache_stats(g->kv, &ev->stats);
	kv_policy_format(kv_cache_policy(g->kv), ev->policy, sizeof ev->policy);
	ev->n_unsaved = session_n_unsaved(w->s);
	ev->saving = w->saving;
	worker_push(w, ev);
}

static void worker_hook_turn_start(void *ud, uint32_t index, const char *user)
{
	struct worker *w = ud;
	struct worker_event *ev = worker_event_new(WORKER_EV_TURN_START);

	ev->index = index;
	ev->user = worker_strdup(user);
	w->sent_snapshot = false;
	worker_push(w, ev);
}

static void worker_hook_token(void *ud, const struct gen_token *t)
{
	struct worker *w = ud;
	struct worker_event *ev;
	char *text;

	if (!w->sent_snapshot) {
		/* the prompt is in the cache now: its tokens, before the reply's */
		w->sent_snapshot = true;
		worker_snapshot(w);
	}
	ev = worker_event_new(WORKER_EV_TOKEN);
	ev->token = *t;
	if (t->meta != NULL)
		ev->meta = *t->meta;
	else
		ev->meta.surprisal = ev->meta.entropy = ev->meta.score = NAN;
	ev->token.meta = &ev->meta;
	text = xmalloc(t->len + 1);
	memcpy(text, t->text, t->len);
	text[t->len] = '\0';
	ev->token.text = text;
	worker_push(w, ev);
}

static void worker_hook_turn_end(void *ud, const struct session_turn *t)
{
	struct worker *w = ud;
	struct worker_event *ev = worker_event_new(WORKER_EV_TURN_END);

	ev->turn = *t;
	ev->turn.ids = NULL; /* the session's, lent only until it forgets the turn */
	ev->turn.user = worker_strdup(t->user);
	ev->turn.reply = worker_strdup(t->reply);
	worker_push(w, ev);
}

static void worker_hook_kv(void *ud, const struct kv_event *kev)
{
	struct worker *w = ud;
	struct worker_event *ev;

	if (kev->kind == KV_EVENT_STEP) {
		/* back-pressure: while the main thread has not taken the last step
		 * event, a newer one is dropped rather than copied (attention rows
		 * are big at long contexts and the copy costs the decoder) */
		bool skip;
		pthread_mutex_lock(&w->mu);
		skip = w->steps_queued > 0;
		if (!skip)
			w->steps_queued++;
		pthread_mutex_unlock(&w->mu);
		if (skip)
			return;
	}
	ev = worker_event_new(WORKER_EV_KV);

	worker_kv_copy(&ev->kv, kev);
	if (kev->kind == KV_EVENT_STEP && kev->n_cached > 0) {
		/* the columns' tokens now: the cache may change before the main
		 * thread reads the rows, so their labels travel with them */
		const struct kv_cache *kv = gen_kv(session_gen(w->s));
		const struct kv_tok *toks = kv_cache_toks(kv);
		if (kv_cache_n(kv) == kev->n_cached) {
			ev->key_pos = xmallocarray(kev->n_cached, sizeof *ev->key_pos);
			ev->key_tok = xmallocarray(kev->n_cached, sizeof *ev->key_tok);
			for (uint32_t i = 0; i < kev->n_cached; i++) {
				ev->key_pos[i] = toks[i].orig_pos;
				ev->key_tok[i] = toks[i].token;
			}
		}
	}
	worker_push(w, ev);
}

static void worker_hook_saved(void *ud, int64_t id, uint32_t index, int status, const char *msg)
{
	struct worker *w = ud;
	struct worker_event *ev = worker_event_new(WORKER_EV_SAVED);

	ev->saved_id = id;
	ev->index = index;
	ev->status = status;
	snprintf(ev->msg, sizeof ev->msg, "%.*s", (int)sizeof ev->msg - 1, msg ? msg : "");
	worker_push(w, ev);
}

/* A cold-tier event: copied, hits and texts included. */
static void worker_hook_cold(void *ud, const struct session_cold_event *c)
{
	struct worker *w = ud;
	struct worker_event *ev = worker_event_new(WORKER_EV_COLD);

	ev->cold = *c;
	if (c->n_hits > 0) {
		struct store_cold_hit *h = xmallocarray(c->n_hits, sizeof *h);
		memcpy(h, c->hits, c->n_hits * sizeof *h);
		ev->cold.hits = h;
	} else {
		ev->cold.hits = NULL;
	}
	snprintf(ev->msg, sizeof ev->msg, "%.*s", (int)sizeof ev->msg - 1, c->msg ? c->msg : "");
	snprintf(ev->cold_scorer, sizeof ev->cold_scorer, "%s", c->scorer ? c->scorer : "");
	ev->cold.msg = ev->msg;
	ev->cold.scorer = ev->cold_scorer;
	worker_push(w, ev);
}

/* The saved-session settings of this worker's session (st opened on demand). */
static int worker_store(struct worker *w, struct session_store *ss, char sha[65], struct err *e)
{
	int rc = KVS_OK;

	if (w->st == NULL) {
		char *path = w->db_path ? xstrdup(w->db_path) : store_default_path();
		rc = store_open(&w->st, path, STORE_RW, e);
		free(path);
		if (rc != KVS_OK)
			return rc;
	}
	rc = store_model_sha256(w->st, w->model_path ? w->model_path : "", sha, e);
	memset(ss, 0, sizeof *ss);
	ss->st = w->st;
	ss->model_path = w->model_path;
	ss->model_sha256 = sha;
	ss->sampler = w->sampler ? w->sampler : "";
	ss->snapshots = true;
	return rc;
}

/* Before a load: the cache empty, then the policy and budget session id
 * was saved with, so that its tokens come back under the rules that kept
 * them; what could not be restored is said in what (the cache keeps this
 * one's then). */
static int worker_saved_policy(struct worker *w, int64_t id, char *what, size_t cap, struct err *e)
{
	struct gen *g = session_gen(w->s);
	struct store_session sv;
	struct kv_policy p;
	struct err pe;
	char now[160];
	int rc = store_session_get(w->st, id, &sv, e);

	if (rc != KVS_OK)
		return rc;
	gen_reset(g);
	kv_policy_format(kv_cache_policy(g->kv), now, sizeof now);
	if (kv_policy_parse(sv.policy ? sv.policy : "", &p, &pe) != KVS_OK ||
	    kv_cache_set_policy(g->kv, &p, &pe) != KVS_OK) {
		snprintf(what, cap, "its policy '%.60s' is not available here (%.60s): %.60s kept",
		         sv.policy ? sv.policy : "", pe.msg, now);
	} else {
		kv_cache_set_scorer(g->kv, NULL); /* a built-in policy scores itself */
		snprintf(what, cap, "policy %.80s",
		         kv_policy_format(kv_cache_policy(g->kv), now, sizeof now));
	}
	size_t k = strlen(what);
	uint32_t budget = sv.budget ? sv.budget : gen_n_ctx(g);
	if (budget > gen_n_ctx(g))
		snprintf(what + k, cap - k,
		         "; its budget %u exceeds this context's %u slots: "
		         "budget %u kept",
		         budget, gen_n_ctx(g), kv_cache_budget(g->kv));
	else if (kv_cache_set_budget(g->kv, budget, &pe) != KVS_OK)
		snprintf(what + k, cap - k, "; its budget %u: %.60s", budget, pe.msg);
	else
		snprintf(what + k, cap - k, " and budget %u as saved", budget);
	store_session_free(&sv);
	return KVS_OK;
}

/* After a load: the resumed session's last max_turns turns as a
 * transcript event (read here, off the main thread: a long session's
 * texts take a while). A transcript that cannot be read costs only the
 * replay: the event then says why, the session is resumed anyway. */
static void worker_transcript(struct worker *w, int64_t id, int64_t max_turns, uint32_t n_tokens)
{
	struct worker_event *ev = worker_event_new(WORKER_EV_TRANSCRIPT);
	struct err e;
	uint32_t max = max_turns <= 0 ? 0 : max_turns > UINT32_MAX ? UINT32_MAX : (uint32_t)max_turns;

	ev->status = session_recap_read(w->st, id, max, &ev->recap, &e);
	if (ev->status != KVS_OK)
		snprintf(ev->msg, sizeof ev->msg, "%.*s", (int)sizeof ev->msg - 1, e.msg);
	ev->recap.n_tokens = n_tokens;
	worker_push(w, ev);
}

/* The comparison now as an event (state; msg: why it stopped). */
static void worker_compare_push(struct worker *w, enum compare_state state, uint32_t total,
                                const char *msg)
{
	struct worker_event *ev = worker_event_new(WORKER_EV_COMPARE);
	ev->cmp = compare_view_make(w->cmp, w->s, state, total);
	snprintf(ev->cmp->msg, sizeof ev->cmp->msg, "%s", msg ? msg : "");
	worker_push(w, ev);
}

/* Close the comparison after a last event saying why (msg). */
static void worker_compare_end(struct worker *w, const char *msg)
{
	if (w->cmp == NULL)
		return;
	worker_compare_push(w, COMPARE_STOPPED, 0, msg);
	struct compare *c = w->cmp;
	pthread_mutex_lock(&w->mu);
	w->cmp = NULL; /* a cancel from now on no longer reaches it */
	pthread_mutex_unlock(&w->mu);
	compare_close(c);
}

/* Bring the shadow up to the session's exchanges, one event per exchange;
 * a cancel or a failure ends the comparison (KVS_OK: it follows on). */
static int worker_compare_run(struct worker *w, struct err *e)
{
	uint32_t total = session_n_turns(w->s);
	int rc = KVS_OK;
	bool stop = false;

	while (w->cmp != NULL && compare_pending(w->cmp, w->s) > 0) {
		pthread_mutex_lock(&w->mu);
		stop = w->cmp_cancel;
		w->cmp_busy = !stop;
		pthread_mutex_unlock(&w->mu);
		if (stop)
			break;
		rc = compare_step(w->cmp, w->s, e);
		pthread_mutex_lock(&w->mu);
		w->cmp_busy = false;
		stop = w->cmp_cancel || compare_stopped(w->cmp);
		pthread_mutex_unlock(&w->mu);
		if (rc != KVS_OK || stop)
			break;
		worker_compare_push(w,
		                    compare_pending(w->cmp, w->s) ? COMPARE_REPLAYING : COMPARE_FOLLOWING,
		                    total, NULL);
	}
	if (rc == KVS_OK && w->cmp != NULL) {
		/* a stop that came after the last exchange still ends it: the
		 * caller was told it reached the comparison */
		pthread_mutex_lock(&w->mu);
		stop = stop || w->cmp_cancel;
		pthread_mutex_unlock(&w->mu);
	}
	if (rc != KVS_OK) {
		char msg[256];
		snprintf(msg, sizeof msg, "comparison stopped: %.220s", e->msg);
		worker_compare_end(w, msg);
		return rc;
	}
	if (stop) {
		char msg[160];
		uint32_t done = session_n_turns(compare_shadow(w->cmp));
		snprintf(msg, sizeof msg,
		         "comparison stopped at exchange %u of %u (cancelled): :compare again to "
		         "restart",
		         done, total);
		worker_compare_end(w, msg);
		return err_set(e, KVS_ESTATE, "%s", msg);
	}
	return KVS_OK;
}

/* :compare SPEC (a replay, then following) or :compare off. */
static int worker_compare_cmd(struct worker *w, const struct worker_cmd *c, char *msg, size_t cap,
                              struct err *e)
{
	char pol[160];
	int rc;

	if (c->text == NULL || strcmp(c->text, "off") == 0) {
		if (w->cmp == NULL) {
			snprintf(msg, cap, "no comparison is on");
			return KVS_OK;
		}
		worker_compare_end(w, "comparison off");
		snprintf(msg, cap, "comparison off: the shadow session's cache is freed");
		return KVS_OK;
	}
	if (w->cmp != NULL) {
		const struct gen *g = session_gen(compare_shadow(w->cmp));
		return err_set(e, KVS_ESTATE,
		               "a comparison with %.60s (budget %u) is on: expected :compare off first",
		               kv_policy_format(kv_cache_policy(gen_kv(g)), pol, sizeof pol),
		               kv_cache_budget(gen_kv(g)));
	}
	struct compare *cmp = NULL;
	rc = compare_open(&cmp, w->s, c->text, c->n, e);
	if (rc != KVS_OK)
		return rc;
	pthread_mutex_lock(&w->mu);
	w->cmp = cmp;
	pthread_mutex_unlock(&w->mu);
	/* the first event says what runs before its first exchange is done */
	worker_compare_push(w, COMPARE_REPLAYING, session_n_turns(w->s), NULL);
	rc = worker_compare_run(w, e);
	if (rc == KVS_OK) {
		const struct gen *g = session_gen(compare_shadow(w->cmp));
		snprintf(msg, cap, "comparing with %.60s (budget %u): %u exchange%s replayed; following",
		         kv_policy_format(kv_cache_policy(gen_kv(g)), pol, sizeof pol),
		         kv_cache_budget(gen_kv(g)), session_n_turns(w->s),
		         session_n_turns(w->s) == 1 ? "" : "s");
	}
	return rc;
}

/* Run one command on the worker thread; fills the result event. */
static void worker_run(struct worker *w, const struct worker_cmd *c, struct worker_event *res)
{
	struct gen *g = session_gen(w->s);
	struct err e = { 0 };
	char buf[160];
	int rc = KVS_OK;

	switch (c->kind) {
	case WORKER_CHAT:
		rc = session_chat(w->s, c->text ? c->text : "", &e);
		if (rc == KVS_OK)
			snprintf(res->msg, sizeof res->msg, "turn done");
		if (rc == KVS_OK && w->cmp != NULL && worker_compare_run(w, &e) != KVS_OK)
			snprintf(res->msg, sizeof res->msg, "turn done; %.200s", e.msg);
		break;
	case WORKER_COMPARE: rc = worker_compare_cmd(w, c, res->msg, sizeof res->msg, &e); break;
	case WORKER_POLICY: {
		struct kv_policy p;
		rc = kv_policy_parse(c->text ? c->text : "", &p, &e);
		if (rc == KVS_OK)
			rc = kv_cache_set_policy(g->kv, &p, &e);
		if (rc == KVS_OK)
			kv_cache_set_scorer(g->kv, NULL); /* a built-in policy scores itself */
		if (rc == KVS_OK)
			snprintf(res->msg, sizeof res->msg, "policy %s",
			         kv_policy_format(kv_cache_policy(g->kv), buf, sizeof buf));
		break;
	}
	case WORKER_BUDGET:
		if (c->n < 0 || c->n > (int64_t)UINT32_MAX)
			rc = err_set(&e, KVS_EARG, "budget %lld: expected 0 .. %u tokens", (long long)c->n,
			             UINT32_MAX);
		else /* 0: every slot of the context */
			rc = kv_cache_set_budget(g->kv, c->n ? (uint32_t)c->n : gen_n_ctx(g), &e);
		if (rc == KVS_OK)
			snprintf(res->msg, sizeof res->msg, "budget %u tokens", kv_cache_budget(g->kv));
		break;
	case WORKER_SPARSE: {
		struct engine_sparse sp;
		rc = engine_sparse_parse(c->text ? c->text : "", &sp, &e);
		if (rc == KVS_OK)
			rc = kv_cache_set_sparse(g->kv, &sp, &e);
		if (rc == KVS_OK)
			rc = session_squeeze(w->s, &e); /* squeezed: cluster the document now */
		if (rc == KVS_OK)
			snprintf(res->msg, sizeof res->msg, "sparse %s%s",
			         engine_sparse_format(kv_cache_sparse(g->kv), buf, sizeof buf),
			         sp.mode == ENGINE_SPARSE_SQUEEZED && !session_doc(w->s, NULL)
			                 ? " (no document: dense until :doc FILE)"
			                 : "");
		break;
	}
	case WORKER_DOC: {
		bool restarted;
		struct session_doc_info di;
		const char *path = c->text && strcmp(c->text, "off") != 0 ? c->text : NULL;
		if (session_n_turns(w->s) > 0) /* a loaded document starts a new conversation */
			worker_compare_end(w, "comparison off: a new conversation");
		rc = session_set_doc(w->s, path, &restarted, &e);
		session_doc(w->s, &di);
		if (rc == KVS_OK && path != NULL)
			snprintf(res->msg, sizeof res->msg,
			         "document %s: %u tokens, pinned at the start of %s conversation", path,
			         di.n_tokens, restarted ? "a new" : "the");
		else if (rc == KVS_OK)
			snprintf(res->msg, sizeof res->msg, "no document from the next conversation on");
		break;
	}
	case WORKER_PIN:
	case WORKER_UNPIN:
		rc = kv_cache_pin(g->kv, (int32_t)c->n, c->kind == WORKER_PIN, &e);
		if (rc == KVS_OK)
			snprintf(res->msg, sizeof res->msg, "%s token at position %lld",
			         c->kind == WORKER_PIN ? "pinned" : "unpinned", (long long)c->n);
		break;
	case WORKER_RESET:
		worker_compare_end(w, "comparison off: a new conversation");
		session_reset(w->s);
		snprintf(res->msg, sizeof res->msg, "new conversation");
		break;
	case WORKER_MAX_TOKENS:
		if (c->n <= 0 || c->n > 1000000)
			rc = err_set(&e, KVS_EARG, "max tokens %lld: expected 1 .. 1000000", (long long)c->n);
		else
			session_set_max_tokens(w->s, (uint32_t)c->n);
		if (rc == KVS_OK)
			snprintf(res->msg, sizeof res->msg, "at most %lld tokens per reply", (long long)c->n);
		break;
	case WORKER_SNAPSHOT: break;
	case WORKER_LEN: {
		struct len_target lt = g->turn.len;
		bool instruct = lt.instruct; /* --no-length-prompt outlives a new target */
		rc = len_target_parse(c->text ? c->text : "", &lt, &e);
		if (rc == KVS_OK) {
			lt.instruct = instruct;
			gen_set_length_target(g, &lt);
			snprintf(res->msg, sizeof res->msg, "length target: %s",
			         len_target_format(&lt, buf, sizeof buf));
		}
		break;
	}
	case WORKER_SAVE: {
		struct session_store ss;
		char sha[65];
		int64_t id = session_store_id(w->s);
		if (id != 0) {
			/* saving already: a title renames the saved session, never forks it */
			if (c->text != NULL)
				rc = store_session_set_title(w->st, id, c->text, &e);
			if (rc == KVS_OK && c->text != NULL)
				snprintf(res->msg, sizeof res->msg,
				         "saving to %s as session %lld, now titled '%.120s'", store_path(w->st),
				         (long long)id, c->text);
			else if (rc == KVS_OK)
				snprintf(res->msg, sizeof res->msg, "already saving to %s as session %lld",
				         store_path(w->st), (long long)id);
			break;
		}
		rc = worker_store(w, &ss, sha, &e);
		uint32_t n = session_n_turns(w->s);
		if (rc == KVS_OK) {
			ss.title = c->text;
			rc = session_set_store(w->s, &ss, &e);
			w->saving = session_store_id(w->s) != 0 || rc == KVS_OK;
		}
		if (rc == KVS_OK && n > 0)
			snprintf(res->msg, sizeof res->msg,
			         "saved %u exchange%s to %s as session %lld; the next ones are added", n,
			         n == 1 ? "" : "s", store_path(w->st), (long long)session_store_id(w->s));
		else if (rc == KVS_OK)
			snprintf(res->msg, sizeof res->msg,
			         "saving to %s from the first exchange on (with what the cache retains)",
			         store_path(w->st));
		break;
	}
	case WORKER_LOAD: {
		struct session_store ss;
		struct store_resume_info info;
		char sha[65], kept[200] = "";
		rc = worker_store(w, &ss, sha, &e);
		if (rc == KVS_OK)
			rc = store_session_find(w->st, c->text, &ss.id, &e);
		if (rc == KVS_OK)
			worker_compare_end(w, "comparison off: another conversation was loaded");
		if (rc == KVS_OK)
			rc = worker_saved_policy(w, ss.id, kept, sizeof kept, &e);
		if (rc == KVS_OK)
			rc = session_resume(w->s, &ss, &info, &e);
		if (rc == KVS_OK)
			w->saving = true;
		if (rc == KVS_OK)
			worker_transcript(w, ss.id, c->n, info.n_tokens);
		if (rc == KVS_OK)
			snprintf(res->msg, sizeof res->msg, "resumed session %lld: %u tokens %s%s%s; %s",
			         (long long)ss.id, info.n_tokens,
			         info.from_snapshot ? "from its KV snapshot" : "recomputed",
			         info.from_snapshot ? "" : ": ", info.from_snapshot ? "" : info.why, kept);
		break;
	}
	case WORKER_SCORER:
		rc = kv_cache_set_policy(g->kv, &c->policy, &e);
		if (rc == KVS_OK) {
			kv_cache_set_scorer(g->kv, &c->scorer);
			snprintf(res->msg, sizeof res->msg, "policy %s on %s",
			         c->scorer.name ? c->scorer.name : "?",
			         kv_policy_format(kv_cache_policy(g->kv), buf, sizeof buf));
		}
		break;
	}
	g->n_past = kv_cache_n(g->kv);
	res->cmd = c->kind;
	res->status = rc;
	if (rc != KVS_OK)
		snprintf(res->msg, sizeof res->msg, "%.*s", (int)sizeof res->msg - 1, e.msg);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	for (;;) {
		struct worker_cmd_node *node;
		struct worker_event *res;

		pthread_mutex_lock(&w->mu);
		while (w->cmd_head == NULL && !w->quit)
			pthread_cond_wait(&w->cv, &w->mu);
		if (w->quit) {
			pthread_mutex_unlock(&w->mu);
			break;
		}
		node = w->cmd_head;
		w->cmd_head = node->next;
		if (w->cmd_head == NULL)
			w->cmd_tail = NULL;
		w->running = node->id;
		w->chatting = node->cmd.kind == WORKER_CHAT;
		if (node->cmd.kind == WORKER_COMPARE || node->cmd.kind == WORKER_CHAT)
			w->cmp_cancel = node->cancelled && node->cmd.kind == WORKER_COMPARE;
		if (w->chatting) {
			/* a cancel that came after the previous exchange had ended
			 * must not stop this one; one meant for this one must */
			if (node->cancelled)
				session_cancel_next(w->s);
			else
				session_cancel_clear(w->s);
		}
		pthread_mutex_unlock(&w->mu);

		res = worker_event_new(WORKER_EV_RESULT);
		worker_run(w, &node->cmd, res);
		/* the cache after every command: tokens, regions, policy */
		worker_snapshot(w);
		worker_push(w, res);
		free((void *)node->cmd.text);
		free(node);
		pthread_mutex_lock(&w->mu);
		w->running = 0;
		w->chatting = false;
		pthread_mutex_unlock(&w->mu);
	}
	return NULL;
}

int worker_start(struct worker **out, struct session *s, struct err *e)
{
	struct worker *w = xcalloc(1, sizeof *w);
	int fds[2];

	*out = NULL;
	if (pipe(fds) != 0) {
		free(w);
		return err_set(e, KVS_EIO, "worker: pipe: %s", strerror(errno));
	}
	fcntl(fds[0], F_SETFL, O_NONBLOCK);
	fcntl(fds[1], F_SETFL, O_NONBLOCK);
	fcntl(fds[0], F_SETFD, FD_CLOEXEC);
	fcntl(fds[1], F_SETFD, FD_CLOEXEC);
	w->pipe_rd = fds[0];
	w->pipe_wr = fds[1];
	w->s = s;
	w->next_id = 1;
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	session_set_hooks(s,
	                  &(struct session_hooks){
	                          .turn_start = worker_hook_turn_start,
	                          .token = worker_hook_token,
	                          .turn_end = worker_hook_turn_end,
	                          .kv = worker_hook_kv,
	                          .saved = worker_hook_saved,
	                          .cold = worker_hook_cold,
	                          .progress = worker_hook_progress,
	                          .notice = worker_hook_notice,
	                          .ud = w,
	                  });
	if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
		session_set_hooks(s, NULL);
		close(fds[0]);
		close(fds[1]);
		pthread_mutex_destroy(&w->mu);
		pthread_cond_destroy(&w->cv);
		free(w);
		return err_set(e, KVS_EIO, "worker: cannot start a thread");
	}
	*out = w;
	return KVS_OK;
}

void worker_stop(struct worker *w)
{
	struct worker_event *ev;

	if (w == NULL)
		return;
	pthread_mutex_lock(&w->mu);
	w->quit = true;
	while (w->cmd_head != NULL) {
		struct worker_cmd_node *n = w->cmd_head;
		w->cmd_head = n->next;
		free((void *)n->cmd.text);
		free(n);
	}
	w->cmd_tail = NULL;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	session_cancel(w->s);
	pthread_join(w->thread, NULL);
	compare_close(w->cmp); /* before the session it borrows */
	w->cmp = NULL;
	session_set_hooks(w->s, NULL);
	while ((ev = w->ev_head) != NULL) {
		w->ev_head = ev->next;
		worker_event_free(ev);
	}
	close(w->pipe_rd);
	close(w->pipe_wr);
	session_set_store(w->s, NULL, NULL); /* the recorder refers to our store */
	store_close(w->st);
	free(w->db_path);
	free(w->model_path);
	free(w->sampler);
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cv);
	free(w);
}

uint64_t worker_send(struct worker *w, const struct worker_cmd *c)
{
	struct worker_cmd_node *n = xcalloc(1, sizeof *n);
	uint64_t id;

	n->cmd = *c;
	n->cmd.text = worker_strdup(c->text);
	pthread_mutex_lock(&w->mu);
	id = n->id = w->next_id++;
	if (w->cmd_tail != NULL)
		w->cmd_tail->next = n;
	else
		w->cmd_head = n;
	w->cmd_tail = n;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	return id;
}

void worker_set_store(struct worker *w, const char *db_path, const char *model_path,
                      const char *sampler)
{
	free(w->db_path);
	free(w->model_path);
	free(w->sampler);
	w->db_path = db_path ? xstrdup(db_path) : NULL;
	w->model_path = model_path ? xstrdup(model_path) : NULL;
	w->sampler = sampler ? xstrdup(sampler) : NULL;
}

/* Under mu: stop the comparison's shadow reply and its next exchanges. */
static bool worker_compare_stop_locked(struct worker *w)
{
	bool hit = false;

	if (w->cmp_busy) {
		session_cancel(compare_shadow(w->cmp));
		w->cmp_cancel = true;
		hit = true;
	} else if (w->running != 0 && w->cmp != NULL) {
		w->cmp_cancel = true; /* between two replayed exchanges */
		hit = true;
	}
	for (struct worker_cmd_node *n = w->cmd_head; n != NULL; n = n->next)
		if (n->cmd.kind == WORKER_COMPARE && n->cmd.text != NULL &&
		    strcmp(n->cmd.text, "off") != 0 && !n->cancelled) {
			n->cancelled = true; /* not started yet: it starts stopped */
			hit = true;
		}
	return hit;
}

bool worker_compare_stop(struct worker *w)
{
	bool hit;

	pthread_mutex_lock(&w->mu);
	hit = worker_compare_stop_locked(w);
	pthread_mutex_unlock(&w->mu);
	return hit;
}

bool worker_cancel(struct worker *w)
{
	bool hit = false;

	pthread_mutex_lock(&w->mu);
	if (w->cmp_busy) {
		hit = worker_compare_stop_locked(w);
	} else if (w->chatting) {
		/* false once its reply ended (saving the turn): too late */
		hit = session_cancel(w->s);
	} else {
		/* not started yet: the first queued exchange starts cancelled */
		for (struct worker_cmd_node *n = w->cmd_head; n != NULL; n = n->next)
			if (n->cmd.kind == WORKER_CHAT) {
				n->cancelled = true;
				hit = true;
				break;
			}
	}
	pthread_mutex_unlock(&w->mu);
	return hit;
}

bool worker_busy(struct worker *w)
{
	bool busy;

	pthread_mutex_lock(&w->mu);
	busy = w->running != 0 || w->cmd_head != NULL;
	pthread_mutex_unlock(&w->mu);
	return busy;
}

size_t worker_queued(struct worker *w)
{
	size_t n = 0;

	pthread_mutex_lock(&w->mu);
	for (const struct worker_cmd_node *c = w->cmd_head; c != NULL; c = c->next)
		n++;
	pthread_mutex_unlock(&w->mu);
	return n;
}

struct worker_event *worker_poll(struct worker *w)
{
	struct worker_event *ev;

	pthread_mutex_lock(&w->mu);
	ev = w->ev_head;
	if (ev != NULL) {
		if (ev->kind == WORKER_EV_KV && ev->kv.kind == KV_EVENT_STEP && w->steps_queued > 0)
			w->steps_queued--;
		w->ev_head = ev->next;
		if (w->ev_head == NULL)
			w->ev_tail = NULL;
		ev->next = NULL;
	}
	if (w->ev_head == NULL) {
		char buf[64];
		while (read(w->pipe_rd, buf, sizeof buf) > 0)
			;
	}
	pthread_mutex_unlock(&w->mu);
	return ev;
}

int worker_fd(const struct worker *w)
{
	return w->pipe_rd;
}
