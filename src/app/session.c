/*
 * session.c: a chat session over one generation context.
 *
 * A session is a conversation: an optional system prompt, then exchanges of
 * a user turn and a reply. The KV cache holds the conversation as the
 * retention policy leaves it, so each exchange feeds only its own tokens:
 * the system turn (first exchange of a conversation only), the user's
 * message and the reply header, then the sampled reply, then the turn's
 * closing markers. Eviction between turns happens once per exchange, sized
 * for the whole user part (SirLLM's semantics, kv_cache_begin_turn).
 *
 * The history keeps every exchange's text, stop reason, positions and
 * timings; the KV cache keeps what the model still remembers of them. When
 * a cache that never evicts is full, the exchange starts over in an empty
 * cache and says so (session_turn.restarted; the history keeps the earlier
 * turns, the model no longer sees them); any other failure clears the cache
 * so the next exchange starts clean instead of continuing from a
 * half-fed turn.
 *
 * Saving (session_set_store): the KV events go to a store recorder as they
 * happen and every finished exchange is queued and committed in one
 * transaction (store.h); a commit that fails leaves the exchange queued for
 * the next and says why through the saved hook. Saving that starts in the
 * middle of a conversation commits its exchanges so far at once, so a
 * saved session always holds the transcript from its first turn (the
 * cache's tokens as they are then; earlier evictions were not recorded). session_resume restores a
 * saved conversation's retained cache and continues it; session_recap_read
 * reads the texts of its last turns back for the front ends to replay (the
 * cache holds what the model remembers, the store what was said).
 *
 * The cold tier (session_set_cold, session-cold.c) keeps what the policy
 * evicts in the saved session's database and recalls blocks into the
 * cache at each user turn, before its eviction, so one eviction makes room
 * for the turn and its recalled blocks together.
 *
 * Everything runs on the caller's thread, hooks included. Only
 * session_cancel may be called from elsewhere: it asks through the flag
 * gen_reply polls between tokens, and says whether it reached a reply: one
 * that arrives after a reply ended reaches nothing (gen_reply seals the
 * flag), one during an exchange's prefill stops its reply before the first
 * token, and session_cancel_next stops the next exchange's.
 */
#include "app/app-int.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct session {
	struct gen *gen;
	char *system;
	uint32_t max_tokens;
	struct session_hooks hooks;
	bool fresh;        /* no exchange in the cache yet */
	bool restart_next; /* the cache is full: start the next exchange over */
	atomic_int cancel; /* enum gen_cancel */
	struct session_turn *turns; /* (n_turns) */
	uint32_t n_turns, cap_turns;
	struct gen_text reply;      /* the reply being streamed */
	struct session_store store; /* st == NULL: not saving (strings owned) */
	struct store_rec *rec;
	struct session_cold *cold; /* the cold tier (session-cold.c), or NULL */
	struct mt19937 rng0;       /* the sampler's generator when this conversation began */
	char *doc, *doc_path;      /* the pinned document's text and file, or NULL */
	uint32_t doc_tokens;       /* its message's tokens */
	uint64_t sq_saved;         /* squeezed's index kept in the store: its build_ms bits */
};

#define SESSION_DOC_ROOM 256 /* tokens a conversation needs beside the document */

void session_config_default(struct session_config *c)
{
	memset(c, 0, sizeof *c);
	gen_config_default(&c->gen);
	c->max_tokens = 512;
}

static void session_kv_event(const struct kv_event *ev, void *ud)
{
	struct session *s = ud;
	if (s->rec != NULL)
		store_rec_event(s->rec, ev);
	if (s->hooks.kv != NULL)
		s->hooks.kv(s->hooks.ud, ev);
}

static void session_on_token(const struct gen_token *t, void *ud)
{
	struct session *s = ud;
	if (s->hooks.token != NULL)
		s->hooks.token(s->hooks.ud, t);
}

int session_open(struct session **out, const struct session_config *c, struct err *e)
{
	struct session *s;
	int rc;

	*out = NULL;
	s = xcalloc(1, sizeof *s);
	rc = gen_open(&s->gen, &c->gen, e);
	if (rc != KVS_OK) {
		free(s);
		return rc;
	}
	if (!s->gen->has_chat) {
		rc = err_set(e, s->gen->chat_err.code, "%s", s->gen->chat_err.msg);
		gen_close(s->gen);
		free(s);
		return rc;
	}
	s->max_tokens = c->max_tokens ? c->max_tokens : 512;
	s->fresh = true;
	s->restart_next = false;
	session_set_system(s, c->system);
	atomic_init(&s->cancel, GEN_CANCEL_NONE);
	s->gen->cancel = &s->cancel;
	s->gen->on_token = session_on_token;
	s->gen->on_token_ud = s;
	kv_cache_set_events(s->gen->kv, session_kv_event, s);
	sampler_rng_get(s->gen->sampler, &s->rng0);
	*out = s;
	return KVS_OK;
}

/* The parts session_open and session_open_shadow share, over gen g. */
static struct session *session_over(struct gen *g, uint32_t max_tokens, const char *system)
{
	struct session *s = xcalloc(1, sizeof *s);
	s->gen = g;
	s->max_tokens = max_tokens ? max_tokens : 512;
	s->fresh = true;
	session_set_system(s, system);
	atomic_init(&s->cancel, GEN_CANCEL_NONE);
	g->cancel = &s->cancel;
	g->on_token = session_on_token;
	g->on_token_ud = s;
	kv_cache_set_events(g->kv, session_kv_event, s);
	sampler_rng_get(g->sampler, &s->rng0);
	return s;
}

int session_open_shadow(struct session **out, struct session *base, const struct kv_config *kv,
                        struct err *e)
{
	struct gen *g;
	int rc;

	*out = NULL;
	rc = gen_open_shadow(&g, base->gen, kv, &base->rng0, e);
	if (rc != KVS_OK)
		return rc;
	if (!g->has_chat) {
		rc = err_set(e, g->chat_err.code, "%s", g->chat_err.msg);
		gen_close(g);
		return rc;
	}
	*out = session_over(g, base->max_tokens, base->system);
	return KVS_OK;
}

static void session_forget_turns(struct session *s)
{
	for (uint32_t i = 0; i < s->n_turns; i++) {
		free(s->turns[i].user);
		free(s->turns[i].reply);
		free(s->turns[i].ids);
	}
	s->n_turns = 0;
}

void session_close(struct session *s)
{
	if (s == NULL)
		return;
	session_forget_turns(s);
	session_set_store(s, NULL, NULL);
	scold_free(s->cold);
	free(s->turns);
	free(s->reply.s);
	free(s->system);
	free(s->doc);
	free(s->doc_path);
	gen_close(s->gen);
	free(s);
}

void session_set_hooks(struct session *s, const struct session_hooks *h)
{
	if (h != NULL)
		s->hooks = *h;
	else
		memset(&s->hooks, 0, sizeof s->hooks);
}

bool session_cancel(struct session *s)
{
	return gen_cancel_ask(&s->cancel);
}

void session_cancel_clear(struct session *s)
{
	atomic_store(&s->cancel, GEN_CANCEL_NONE);
}

void session_cancel_next(struct session *s)
{
	atomic_store(&s->cancel, GEN_CANCEL_ASKED);
}

void session_reset(struct session *s)
{
	gen_reset(s->gen);
	session_forget_turns(s);
	s->fresh = true;
	s->restart_next = false;
}

void session_set_system(struct session *s, const char *system)
{
	const char *def = s->gen->chat.default_system;
	free(s->system);
	s->system = xstrdup(system ? system : def ? def : "");
}

const char *session_system(const struct session *s)
{
	return s->system;
}

void session_set_max_tokens(struct session *s, uint32_t n)
{
	s->max_tokens = n ? n : 512;
}

uint32_t session_n_turns(const struct session *s)
{
	return s->n_turns;
}

const struct session_turn *session_turn_at(const struct session *s, uint32_t i)
{
	return i < s->n_turns ? &s->turns[i] : NULL;
}

struct gen *session_gen(const struct session *s)
{
	return s->gen;
}

/* ------------------------------------------------------------ the document */

/* Check the document file's bytes: text, UTF-8, something in it. */
static int session_doc_check(const char *path, const char *text, size_t len, struct err *e)
{
	const char *nul = memchr(text, '\0', len);
	if (len == 0 || strspn(text, " \t\r\n") == len)
		return err_set(e, KVS_EARG, "document %s: empty; expected a text file", path);
	if (nul != NULL)
		return err_set(e, KVS_EARG,
		               "document %s: binary (a NUL byte at offset %zu); expected a text file", path,
		               (size_t)(nul - text));
	if (!utf8_valid((const uint8_t *)text, len))
		return err_set(e, KVS_EARG, "document %s: not UTF-8 text; expected a UTF-8 text file",
		               path);
	return KVS_OK;
}

int session_set_doc(struct session *s, const char *path, bool *restarted, struct err *e)
{
	struct gen *g = s->gen;
	char *text = NULL;
	size_t len = 0, n = 0, cap = 0;
	int32_t *ids = NULL;
	struct chat_prompt ps = { 0 }, pd = { 0 };
	*restarted = false;
	if (path != NULL && strcmp(path, "-") == 0)
		return err_set(e, KVS_EARG,
		               "document -: expected a file (standard input carries the chat)");
	if (path != NULL) {
		int rc = file_read_max(path, 64u << 20, &text, &len, e);
		if (rc != KVS_OK)
			return rc;
		rc = session_doc_check(path, text, len, e);
		if (rc == KVS_OK) {
			chat_first_user(&g->chat, s->system, text, &ps, &pd);
			rc = chat_tokenize(g->model->vocab, &ps, &ids, &n, &cap, e);
		}
		size_t before = n;
		if (rc == KVS_OK)
			rc = chat_tokenize(g->model->vocab, &pd, &ids, &n, &cap, e);
		uint32_t budget = kv_cache_budget(g->kv);
		if (rc == KVS_OK && n + 1 + SESSION_DOC_ROOM > budget)
			rc = err_set(e, KVS_EARG,
			             "document %s: %zu tokens do not fit a KV budget of %u tokens beside "
			             "the system prompt (%zu) and a conversation (%u); expected a shorter "
			             "document or a larger --ctx / --kv-budget",
			             path, n - before, budget, before, SESSION_DOC_ROOM);
		free(ids);
		chat_prompt_free(&ps);
		chat_prompt_free(&pd);
		if (rc != KVS_OK) {
			free(text);
			return rc;
		}
		n -= before;
	}
	free(s->doc);
	free(s->doc_path);
	s->doc = text;
	s->doc_path = path ? xstrdup(path) : NULL;
	s->doc_tokens = (uint32_t)n;
	if (!s->fresh) {
		session_reset(s);
		*restarted = true;
	}
	return KVS_OK;
}

bool session_doc(const struct session *s, struct session_doc_info *info)
{
	struct kv_stats st;
	kv_cache_stats(s->gen->kv, &st);
	if (info != NULL) {
		memset(info, 0, sizeof *info);
		info->path = s->doc_path;
		info->n_tokens = s->doc_tokens;
		info->n_bytes = s->doc != NULL ? strlen(s->doc) : 0;
		info->n_cached = st.n_doc;
		info->clustered = engine_squeeze_info(s->gen->engine, &info->sq);
	}
	return s->doc != NULL || st.n_doc > 0;
}

/* The clustering's progress, to the hook. */
static void session_sq_progress(void *ud, uint32_t done, uint32_t total)
{
	struct session *s = ud;
	if (s->hooks.progress != NULL)
		s->hooks.progress(s->hooks.ud, done, total);
}

/* A line for the notice hook. */
static void session_notice(struct session *s, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
static void session_notice(struct session *s, const char *fmt, ...)
{
	char buf[400];
	va_list ap;
	if (s->hooks.notice == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	s->hooks.notice(s->hooks.ud, buf);
}

/* The stored index's identity: its build time's bits (a new clustering
 * differs), so that each is kept once. */
static uint64_t session_sq_mark(const struct engine_squeeze_info *in)
{
	uint64_t b;
	memcpy(&b, &in->build_ms, sizeof b);
	return b ^ ((uint64_t)in->n_keys << 32) ^ in->n_fine;
}

/* Keep a new index in the saved session's store (a failure is said, the
 * index stays in memory). */
static int session_squeeze_keep(struct session *s, struct err *e)
{
	struct engine_squeeze_info in;
	struct gen *g = s->gen;
	void *blob;
	size_t len;
	char spec[256];
	if (s->store.st == NULL || s->store.id == 0 || !engine_squeeze_info(g->engine, &in) ||
	    session_sq_mark(&in) == s->sq_saved)
		return KVS_OK;
	int rc = engine_squeeze_save(g->engine, &blob, &len, e);
	if (rc == KVS_OK)
		rc = store_squeeze_put(s->store.st, s->store.id, s->store.model_sha256,
		                       engine_sparse_format(kv_cache_sparse(g->kv), spec, sizeof spec), &in,
		                       blob, len, e);
	free(blob);
	if (rc == KVS_OK)
		s->sq_saved = session_sq_mark(&in);
	return rc;
}

int session_squeeze(struct session *s, struct err *e)
{
	struct gen *g = s->gen;
	const struct engine_sparse *sp = kv_cache_sparse(g->kv);
	struct engine_squeeze_info in;
	if (sp->mode != ENGINE_SPARSE_SQUEEZED || engine_squeeze_info(g->engine, &in))
		return KVS_OK;
	uint32_t *slots = xmallocarray(gen_n_ctx(g), sizeof(uint32_t));
	uint32_t n = kv_cache_doc_slots(g->kv, slots);
	int rc = KVS_OK;
	if (n == 0) {
		free(slots);
		return KVS_OK; /* nothing pinned: squeezed is dense */
	}
	if (s->store.st != NULL && s->store.id != 0) {
		void *blob;
		size_t len;
		struct err le;
		rc = store_squeeze_get(s->store.st, s->store.id, s->store.model_sha256, &blob, &len, &le);
		if (rc == KVS_OK)
			rc = engine_squeeze_load(g->engine, blob, len, slots, n, &le);
		free(blob);
		if (rc == KVS_OK) {
			engine_squeeze_info(g->engine, &in);
			s->sq_saved = session_sq_mark(&in);
			session_notice(s,
			               "document clusters restored from the store: %u keys, %u fine and %u "
			               "coarse clusters per layer and KV head (not clustered again)",
			               in.n_keys, in.n_fine, in.n_coarse);
			free(slots);
			return KVS_OK;
		}
		if (rc != KVS_ENOTFOUND)
			session_notice(s, "%s; clustering again", le.msg);
	}
	rc = engine_squeeze_build(g->engine, slots, n, sp, session_sq_progress, s, e);
	free(slots);
	if (rc != KVS_OK)
		return rc;
	engine_squeeze_info(g->engine, &in);
	session_notice(s,
	               "document clustered: %u keys into %u fine and %u coarse clusters per layer and "
	               "KV head in %.1f s (%.1f MiB)",
	               in.n_keys, in.n_fine, in.n_coarse, in.build_ms / 1000.0,
	               (double)in.bytes / (1024.0 * 1024.0));
	struct err ke;
	if (session_squeeze_keep(s, &ke) != KVS_OK)
		session_notice(s, "document clusters not saved: %s", ke.msg);
	return KVS_OK;
}

/* Feed the user part of an exchange: BOS and the system turn when the
 * conversation is new, the message, the reply header. *n_fed counts them. */
static int session_feed_user(struct session *s, const char *text, uint32_t extra, uint32_t *n_fed,
                             struct err *e)
{
	struct gen *g = s->gen;
	const struct vocab *v = g->model->vocab;
	struct chat_prompt ps = { 0 }, pd = { 0 }, pu = { 0 }, pa = { 0 };
	int32_t *ids = NULL;
	size_t n = 0, cap = 0;
	int rc = KVS_OK;
	uint32_t before = kv_cache_next_pos(g->kv);

	{
		/* with a length target the message asks for the length too (lenctl.c) */
		char *asked = len_instruct_text(text, &g->turn.len);
		if (s->fresh && s->doc != NULL) {
			/* the document is the conversation's first user message, after
			 * the system part (which a layout without a system role puts
			 * at the head of that message) */
			chat_first_user(&g->chat, s->system, s->doc, &ps, &pd);
			chat_message(&g->chat, "user", asked, &pu);
		} else if (s->fresh && s->system[0] != '\0') {
			chat_first_user(&g->chat, s->system, asked, &ps, &pu);
		} else {
			chat_message(&g->chat, "user", asked, &pu);
		}
		free(asked);
	}
	chat_generation_prompt(&g->chat, &pa);
	bool bos = s->fresh && vocab_add_bos(v) && vocab_bos(v) >= 0;
	/* the exchange's size, for eviction between turns */
	rc = chat_tokenize(v, &ps, &ids, &n, &cap, e);
	if (rc == KVS_OK)
		rc = chat_tokenize(v, &pd, &ids, &n, &cap, e);
	if (rc == KVS_OK)
		rc = chat_tokenize(v, &pu, &ids, &n, &cap, e);
	if (rc == KVS_OK)
		rc = chat_tokenize(v, &pa, &ids, &n, &cap, e);
	/* the cold tier's blocks for this turn: room is made for them too */
	uint32_t recalled = 0;
	if (rc == KVS_OK && s->cold != NULL)
		recalled = scold_recall(s->cold, text, ids, n, (uint32_t)(n + bos + extra), s->n_turns,
		                        &s->hooks);
	if (rc == KVS_OK)
		rc = gen_begin_turn(g, s->fresh ? KV_ROLE_SYSTEM : KV_ROLE_USER, n + bos + extra + recalled,
		                    e);
	if (rc == KVS_OK && recalled > 0)
		scold_place(s->cold, &s->hooks);
	/* a document and what comes before it are pinned: never evicted, never moved */
	kv_cache_set_feed_flags(g->kv, pd.n > 0 ? KV_FLAG_PINNED : 0);
	if (rc == KVS_OK && bos) {
		int32_t b = vocab_bos(v);
		gen_set_role(g, KV_ROLE_SYSTEM);
		rc = gen_feed(g, &b, 1, e);
	}
	if (rc == KVS_OK && ps.n > 0)
		rc = gen_feed_prompt(g, &ps, KV_ROLE_SYSTEM, e);
	kv_cache_set_feed_flags(g->kv, KV_FLAG_PINNED | KV_FLAG_DOC);
	if (rc == KVS_OK && pd.n > 0)
		rc = gen_feed_prompt(g, &pd, KV_ROLE_USER, e);
	kv_cache_set_feed_flags(g->kv, 0);
	if (rc == KVS_OK && pd.n > 0)
		rc = session_squeeze(s, e);
	if (rc == KVS_OK)
		rc = gen_feed_prompt(g, &pu, KV_ROLE_USER, e);
	if (rc == KVS_OK)
		rc = gen_feed_prompt(g, &pa, KV_ROLE_ASSISTANT, e);
	free(ids);
	chat_prompt_free(&ps);
	chat_prompt_free(&pd);
	chat_prompt_free(&pu);
	chat_prompt_free(&pa);
	*n_fed = (uint32_t)(kv_cache_next_pos(g->kv) - (int32_t)before);
	return rc;
}

/* A piece of the reply's text: kept, and passed to the text hook. */
static void session_on_text(const char *text, size_t len, void *ud)
{
	struct session *s = ud;
	gen_text_collect(text, len, &s->reply);
	if (s->hooks.text != NULL && len > 0)
		s->hooks.text(s->hooks.ud, text, len);
}

/* Sample the reply, then close the turn in the cache. */
static int session_reply(struct session *s, struct session_turn *t, struct err *e)
{
	struct gen *g = s->gen;
	struct chat_prompt p = { 0 };
	int rc;

	s->reply.n = 0;
	gen_text_collect("", 0, &s->reply);
	rc = gen_reply(g, s->max_tokens, session_on_text, s, &t->stop, &t->n_reply, e);
	if (rc != KVS_OK)
		return rc;
	if (t->stop == GEN_STOP_CONTEXT) {
		/* a cache that never evicts is full: the next exchange starts over */
		s->restart_next = true;
		return KVS_OK;
	}
	/* an end-of-turn token was fed already; otherwise close the turn */
	t->n_words = g->reply.n_words;
	if (g->reply.ended)
		chat_reply_end(&g->chat, &p);
	else
		chat_close(&g->chat, &p);
	rc = gen_feed_prompt(g, &p, KV_ROLE_ASSISTANT, e);
	chat_prompt_free(&p);
	if (rc == KVS_ERANGE) {
		/* the reply fitted, its closing markers do not */
		s->restart_next = true;
		rc = KVS_OK;
	}
	return rc;
}

/* ------------------------------------------------------------- saving */

static int session_save_past(struct session *s, struct err *e);

static void session_store_free(struct session_store *ss)
{
	free((char *)ss->title);
	free((char *)ss->model_path);
	free((char *)ss->model_sha256);
	free((char *)ss->sampler);
	memset(ss, 0, sizeof *ss);
}

int session_set_store(struct session *s, const struct session_store *ss, struct err *e)
{
	store_rec_free(s->rec);
	s->rec = NULL;
	session_store_free(&s->store);
	if (ss == NULL || ss->st == NULL)
		return KVS_OK;
	/* a bad title is refused now, not at the first exchange's commit */
	if (ss->title != NULL && store_title_check(ss->title, e) != KVS_OK)
		return KVS_EARG;
	s->store = *ss;
	s->store.title = ss->title ? xstrdup(ss->title) : NULL;
	s->store.model_path = xstrdup(ss->model_path ? ss->model_path : "");
	s->store.model_sha256 = xstrdup(ss->model_sha256 ? ss->model_sha256 : "");
	s->store.sampler = xstrdup(ss->sampler ? ss->sampler : "");
	if (ss->id == 0) {
		/* created now when there are exchanges already, else at the first */
		int rc = session_save_past(s, e);
		if (rc != KVS_OK && s->rec == NULL)
			session_store_free(&s->store);
		return rc;
	}
	int rc = store_rec_open(&s->rec, ss->st, ss->id, s->gen->kv, ss->snapshots, e);
	if (rc != KVS_OK)
		session_store_free(&s->store);
	else if (s->cold != NULL)
		scold_attach(s->cold, ss->st, ss->id, s->store.model_sha256, &s->hooks);
	return rc;
}

int64_t session_store_id(const struct session *s)
{
	return s->store.st ? s->store.id : 0;
}

void session_set_cold(struct session *s, const struct session_cold_config *c)
{
	scold_free(s->cold);
	s->cold = NULL;
	if (c == NULL || !c->on)
		return;
	scold_open(&s->cold, s->gen, c);
	if (s->rec != NULL)
		scold_attach(s->cold, s->store.st, s->store.id, s->store.model_sha256, &s->hooks);
}

int session_resume(struct session *s, const struct session_store *ss,
                   struct store_resume_info *info, struct err *e)
{
	struct gen *g = s->gen;
	int rc = store_resume(ss->st, ss->id, g->kv, ss->model_sha256, info, e);
	if (rc != KVS_OK) {
		gen_reset(g);
		return rc;
	}
	g->n_past = kv_cache_n(g->kv);
	g->last_logits = kv_cache_logits(g->kv);
	g->have_logits = g->last_logits != NULL;
	session_forget_turns(s);
	s->fresh = kv_cache_n(g->kv) == 0;
	s->restart_next = false;
	rc = session_set_store(s, ss, e);
	if (rc == KVS_OK)
		rc = session_squeeze(s, e);
	return rc;
}

int session_recap_read(struct store *st, int64_t id, uint32_t max_turns, struct session_recap *r,
                       struct err *e)
{
	struct store_session ss;
	int rc;

	memset(r, 0, sizeof *r);
	r->id = id;
	rc = store_session_get(st, id, &ss, e);
	if (rc != KVS_OK)
		return rc;
	r->title = ss.title;
	r->system = ss.system;
	ss.title = ss.system = NULL;
	r->n_turns = ss.n_turns;
	store_session_free(&ss);
	r->first = r->n_turns - KVS_MIN(r->n_turns, max_turns);
	r->turns = xcalloc(r->n_turns - r->first + 1, sizeof *r->turns);
	for (uint32_t i = r->first; i < r->n_turns; i++) {
		struct session_recap_turn *t = &r->turns[r->n];
		rc = store_turn_text(st, id, i, &t->user, &t->reply, e);
		if (rc != KVS_OK)
			return rc;
		r->n++;
	}
	return KVS_OK;
}

void session_recap_free(struct session_recap *r)
{
	for (uint32_t i = 0; i < r->n; i++) {
		free(r->turns[i].user);
		free(r->turns[i].reply);
	}
	free(r->turns);
	free(r->title);
	free(r->system);
	memset(r, 0, sizeof *r);
}

const char *session_recap_line(const struct session_recap *r, char *buf, size_t cap)
{
	char *title = store_text_escape(r->title, 0); /* from the database: no escape sequences */
	snprintf(buf, cap, "resumed '%s' (%u turn%s, %u token%s retained)", title, r->n_turns,
	         r->n_turns == 1 ? "" : "s", r->n_tokens, r->n_tokens == 1 ? "" : "s");
	free(title);
	return buf;
}

/* Create the saved session and its recorder, unless there are. */
static int session_rec_open(struct session *s, struct err *e)
{
	struct session_store *ss = &s->store;
	struct gen *g = s->gen;
	char pol[256], spb[256];
	int rc;

	if (s->rec != NULL)
		return KVS_OK;
	struct store_session in = {
		.title = (char *)ss->title,
		.model_path = (char *)ss->model_path,
		.model_sha256 = (char *)ss->model_sha256,
		.arch = g->model->hp.arch,
		.policy = kv_policy_format(kv_cache_policy(g->kv), pol, sizeof pol),
		.budget = kv_cache_budget(g->kv),
		.n_ctx = gen_n_ctx(g),
		.sampler = (char *)ss->sampler,
		.system = s->system[0] ? s->system : NULL,
		.sparse = engine_sparse_format(kv_cache_sparse(g->kv), spb, sizeof spb),
	};
	rc = store_session_create(ss->st, &in, &ss->id, e);
	if (rc == KVS_OK)
		rc = store_rec_open(&s->rec, ss->st, ss->id, g->kv, ss->snapshots, e);
	if (rc == KVS_OK && s->cold != NULL)
		scold_attach(s->cold, ss->st, ss->id, ss->model_sha256, &s->hooks);
	if (rc != KVS_OK) {
		store_rec_free(s->rec);
		s->rec = NULL;
		ss->id = 0;
	}
	return rc;
}

/* Queue exchange t for the store; end_pos as store_turn.end_pos says. */
static void session_queue(struct session *s, const struct session_turn *t, int32_t end_pos)
{
	struct store_turn st = {
		.user = t->user,
		.reply = t->reply,
		.stop = gen_stop_name(t->stop),
		.complete = t->stop != GEN_STOP_USER,
		.restarted = t->restarted,
		.n_prompt = t->n_prompt,
		.n_reply = t->n_reply,
		.prefill_ms = t->prefill_ms,
		.decode_ms = t->decode_ms,
		.started = t->started_unix,
		.end_pos = end_pos,
	};
	store_rec_turn(s->rec, &st);
}

/* Queue exchange t for the store and commit; the saved hook hears how it went. */
static void session_save(struct session *s, const struct session_turn *t)
{
	struct session_store *ss = &s->store;
	struct err e;
	int rc;
	if (ss->st == NULL)
		return;
	rc = session_rec_open(s, &e);
	if (rc == KVS_OK) {
		session_queue(s, t, 0);
		rc = store_rec_commit(s->rec, &e);
	}
	struct err ke;
	if (rc == KVS_OK && session_squeeze_keep(s, &ke) != KVS_OK)
		session_notice(s, "document clusters not saved: %s", ke.msg);
	if (s->hooks.saved != NULL)
		s->hooks.saved(s->hooks.ud, ss->id, s->rec ? store_rec_n_turns(s->rec) - 1 : 0, rc,
		               rc == KVS_OK ? "" : e.msg);
	/* the cold blocks evicted meanwhile, in their own transaction */
	if (s->rec != NULL && s->cold != NULL)
		scold_flush(s->cold, store_rec_n_turns(s->rec) - 1, &s->hooks);
}

/* Saving starts in the middle of a conversation: its exchanges so far go
 * to the new saved session in one commit, so that it holds the whole
 * transcript from turn 1. Each turn owns the cache's tokens up to the next
 * turn's first position; turns before the last restart (an earlier epoch
 * of the cache) own none. */
static int session_save_past(struct session *s, struct err *e)
{
	uint32_t from = 0;
	int rc;

	if (s->n_turns == 0)
		return KVS_OK;
	rc = session_rec_open(s, e);
	if (rc != KVS_OK)
		return rc;
	for (uint32_t i = 0; i < s->n_turns; i++)
		if (s->turns[i].restarted)
			from = i;
	for (uint32_t i = 0; i < s->n_turns; i++) {
		int32_t end = i < from ? -1 : i + 1 < s->n_turns ? s->turns[i + 1].first_pos : 0;
		if (end == 0 && i + 1 < s->n_turns)
			end = -1; /* an empty turn at position 0: own nothing rather than everything */
		session_queue(s, &s->turns[i], end);
	}
	return store_rec_commit(s->rec, e);
}

uint32_t session_n_unsaved(const struct session *s)
{
	if (s->store.st == NULL)
		return s->n_turns;
	return s->rec != NULL ? store_rec_pending(s->rec) : 0;
}

int session_chat(struct session *s, const char *text, struct err *e)
{
	struct gen *g = s->gen;
	struct session_turn t = { 0 };
	struct timespec now;
	double pre0 = g->prefill_ms + g->decode_ms, dec0;
	int rc;

	if (text == NULL || text[0] == '\0')
		return err_set(e, KVS_EARG, "empty message: expected some text");
	if (!utf8_valid((const uint8_t *)text, strlen(text)))
		return err_set(e, KVS_EARG, "message is not valid UTF-8: expected UTF-8 text");
	clock_gettime(CLOCK_REALTIME, &now);
	t.started_unix = (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
	t.index = s->n_turns;
	t.max_tokens = s->max_tokens;
	t.len = g->turn.len;
	if (s->n_turns == 0)
		sampler_rng_get(g->sampler, &s->rng0); /* where a replay of it starts */
	/* cancels reach this exchange's prefill too */
	gen_cancel_open(&s->cancel);
	if (s->hooks.turn_start != NULL)
		s->hooks.turn_start(s->hooks.ud, t.index, text);

	if (s->restart_next) {
		gen_reset(g);
		s->fresh = true;
		s->restart_next = false;
		t.restarted = true;
	}
	t.first_pos = kv_cache_next_pos(g->kv);
	rc = session_feed_user(s, text, 0, &t.n_prompt, e);
	if (rc == KVS_ERANGE && !s->fresh) {
		/* a cache that never evicts is full: start over with this exchange */
		gen_reset(g);
		s->fresh = true;
		t.restarted = true;
		t.first_pos = kv_cache_next_pos(g->kv);
		pre0 = g->prefill_ms + g->decode_ms;
		rc = session_feed_user(s, text, 0, &t.n_prompt, e);
	}
	t.kv_turn = kv_cache_n(g->kv) ? kv_cache_toks(g->kv)[kv_cache_n(g->kv) - 1].turn : 0;
	dec0 = g->prefill_ms + g->decode_ms;
	t.prefill_ms = dec0 - pre0;
	if (rc == KVS_OK) {
		s->fresh = false;
		rc = session_reply(s, &t, e);
	}
	t.decode_ms = g->prefill_ms + g->decode_ms - dec0;
	if (rc != KVS_OK) {
		/* never continue from a half-fed exchange */
		gen_reset(g);
		s->fresh = true;
		s->restart_next = false;
		return rc;
	}
	t.user = xstrdup(text);
	t.reply = xstrdup(s->reply.s ? s->reply.s : "");
	t.ids = xmallocarray(g->reply.n_tokens ? g->reply.n_tokens : 1, sizeof *t.ids);
	memcpy(t.ids, g->reply.ids, g->reply.n_tokens * sizeof *t.ids);
	if (s->n_turns == s->cap_turns) {
		s->cap_turns = s->cap_turns ? s->cap_turns * 2 : 16;
		s->turns = xreallocarray(s->turns, s->cap_turns, sizeof *s->turns);
	}
	s->turns[s->n_turns++] = t;
	session_save(s, &s->turns[s->n_turns - 1]);
	if (s->hooks.turn_end != NULL)
		s->hooks.turn_end(s->hooks.ud, &s->turns[s->n_turns - 1]);
	return KVS_OK;
}

int session_prompt(struct session *s, const char *text, uint32_t extra, struct err *e)
{
	uint32_t n_fed;
	int rc;

	if (text == NULL || !utf8_valid((const uint8_t *)text, strlen(text)))
		return err_set(e, KVS_EARG, "message is not valid UTF-8: expected UTF-8 text");
	if (s->restart_next) {
		gen_reset(s->gen);
		s->fresh = true;
		s->restart_next = false;
	}
	rc = session_feed_user(s, text, extra, &n_fed, e);
	if (rc != KVS_OK) {
		gen_reset(s->gen);
		s->fresh = true;
		return rc;
	}
	s->fresh = false;
	return KVS_OK;
}

int session_feed_text(struct session *s, const char *text, enum kv_role role, struct err *e)
{
	struct gen *g = s->gen;
	int32_t *ids = NULL;
	size_t n = 0, cap = 0;
	int rc;

	if (text == NULL || !utf8_valid((const uint8_t *)text, strlen(text)))
		return err_set(e, KVS_EARG, "text is not valid UTF-8: expected UTF-8 text");
	rc = vocab_tokenize(g->model->vocab, text, strlen(text), false, false, &ids, &n, &cap, e);
	if (rc == KVS_OK && n > 0) {
		gen_set_role(g, role);
		rc = gen_feed(g, ids, n, e);
	}
	free(ids);
	if (rc == KVS_OK)
		s->fresh = false;
	return rc;
}

int session_end_reply(struct session *s, bool eot_fed, struct err *e)
{
	struct gen *g = s->gen;
	struct chat_prompt p = { 0 };
	int rc;

	if (eot_fed)
		chat_reply_end(&g->chat, &p);
	else
		chat_close(&g->chat, &p);
	rc = gen_feed_prompt(g, &p, KV_ROLE_ASSISTANT, e);
	chat_prompt_free(&p);
	return rc;
}
