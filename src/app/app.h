/*
 * app.h: the application layer's one public header.
 *
 * gen.c   a generation context: one model, one engine, one sampler and the
 *         KV cache with its retention policy (kv_cache.h). It feeds turns,
 *         samples, and streams text. The command-line tools (generate, chat,
 *         logits, perplexity, bench, eval) and, later, the chat session sit
 *         on it.
 * session.c a chat session over one gen: the system prompt, the turns (user
 *         text in, reply out, stop reason, timings) and their history, with
 *         hooks for each turn, reply token and KV-cache event. Synchronous:
 *         the front ends run it on a worker thread (TUI) or directly (the
 *         line-mode chat, Lua scripts); the only thread-safe entry is
 *         session_cancel.
 * trace.c KV-cache events as JSON lines (kvscope generate --trace).
 */
#ifndef KVS_APP_H
#define KVS_APP_H

#include "base/base.h"
#include "engine/engine.h"
#include "engine/kv_cache.h"
#include "engine/sampler.h"
#include "model/model.h"
#include "store/store.h"

#include <stdatomic.h>
#include <stdio.h>

struct gen_config {
	const char *model_path;
	struct engine_config engine;
	struct sampler_params sampler;
	uint32_t n_batch;        /* prefill chunk in tokens (default 512) */
	struct kv_config kv;     /* retention policy, budget (0: every slot), capture */
};

void gen_config_default(struct gen_config *c);

/* A reply token as gen_reply produces it (after it was fed to the cache). */
struct gen_token {
	int32_t id;
	const struct kv_tok *meta; /* its cache entry (surprisal, entropy when token stats are on) */
	const char *text;          /* text this token completed (may be empty; whole UTF-8) */
	size_t len;
	bool eog;                  /* the end-of-generation token (fed, no text) */
};

/* Observes every reply token; set on struct gen (NULL: none). */
typedef void (*gen_token_fn)(const struct gen_token *t, void *ud);

struct gen {
	struct model *model;
	struct engine *engine;
	struct sampler *sampler;
	struct chat_template chat;
	bool has_chat;           /* chat template recognised */
	struct err chat_err;     /* why not, when !has_chat */
	struct kv_cache *kv;     /* the KV cache and its retention policy */
	uint32_t n_past;         /* tokens in the cache now (kv_cache_n) */
	uint32_t n_batch;
	const float *last_logits; /* (n_vocab) logits after the last fed token, or NULL */
	bool have_logits;
	double load_ms;          /* model_load + engine_create */
	double prefill_ms, decode_ms; /* accumulated */
	uint64_t n_prefilled, n_decoded;
	gen_token_fn on_token;   /* reply-token observer, or NULL */
	void *on_token_ud;
	/* Set from any thread to stop the reply in progress (GEN_STOP_USER);
	 * gen_reply clears it when it returns. NULL: no cancellation. */
	atomic_bool *cancel;
};

/* Run toks[0..m) at positions and slots start .. start+m-1 with slots
 * 0 .. start+m-1 visible: the plain linear cache that the measuring tools
 * (logits, perplexity, bench) use, bypassing retention. */
int gen_run_linear(struct engine *eng, const int32_t *toks, uint32_t start, uint32_t m,
                   enum engine_logits logits, struct engine_out *out, struct err *e);

/* Load the model, create the engine and the sampler. */
int gen_open(struct gen **out, const struct gen_config *c, struct err *e);
void gen_close(struct gen *g);
uint32_t gen_n_ctx(const struct gen *g);
uint32_t gen_n_vocab(const struct gen *g);
/* Append tokens to the cache in n_batch chunks, evicting as the policy says;
 * afterwards last_logits holds the next-token logits. KVS_ERANGE when they
 * would not fit (policy full). */
int gen_feed(struct gen *g, const int32_t *ids, size_t n, struct err *e);
/* Begin a turn of role with about m incoming tokens (eviction between
 * turns and the policy's memory decay happen here). */
int gen_begin_turn(struct gen *g, enum kv_role role, size_t m, struct err *e);
/* Role of the tokens fed next. */
void gen_set_role(struct gen *g, enum kv_role role);
/* Tokenize and feed a rendered prompt as role. */
int gen_feed_prompt(struct gen *g, const struct chat_prompt *p, enum kv_role role, struct err *e);
/* Sample the next token from last_logits (does not feed it). */
int32_t gen_sample(struct gen *g);
/* Forget the conversation (cache and penalty history). */
void gen_reset(struct gen *g);
/* Tokenize a chat prompt (markers as exact tokens, text without special parsing). */
int gen_tokenize_prompt(struct gen *g, const struct chat_prompt *p, int32_t **ids, size_t *n,
                        struct err *e);

/* Why a reply stopped. */
enum gen_stop { GEN_STOP_EOS = 0, GEN_STOP_MAX_TOKENS, GEN_STOP_CONTEXT, GEN_STOP_USER };
const char *gen_stop_name(enum gen_stop s);

/* Called with each piece of complete UTF-8 text as it is produced. */
typedef void (*gen_text_fn)(const char *text, size_t len, void *ud);

/* Sample and feed (as the assistant) up to max_tokens tokens (stopping at end-of-generation,
 * which is fed too so the turn is closed in the cache), streaming text to fn.
 * Returns the status; *stop says why it ended; *n_out counts sampled tokens. */
int gen_reply(struct gen *g, uint32_t max_tokens, gen_text_fn fn, void *ud, enum gen_stop *stop,
              uint32_t *n_out, struct err *e);

/* ---- session.c ---- */

struct session_config {
	struct gen_config gen;
	const char *system;      /* system prompt (NULL or "": none); copied */
	uint32_t max_tokens;     /* per reply (default 512) */
};

void session_config_default(struct session_config *c);

/* One finished exchange: the user's text and the reply. */
struct session_turn {
	uint32_t index;          /* 0-based, in this conversation */
	uint32_t kv_turn;        /* the KV cache's turn id of the user part (kv_tok.turn) */
	char *user;              /* the user's text */
	char *reply;             /* the reply as streamed */
	enum gen_stop stop;
	int32_t first_pos;       /* original position of the turn's first token */
	uint32_t n_prompt;       /* tokens fed for the user part (system, markers included) */
	uint32_t n_reply;        /* tokens sampled */
	double prefill_ms, decode_ms;
	double started_unix;     /* wall-clock seconds since the epoch */
	bool restarted;          /* the cache was full: this turn started in an empty cache */
};

struct session_hooks {
	void (*turn_start)(void *ud, uint32_t index, const char *user);
	void (*token)(void *ud, const struct gen_token *t);
	void (*turn_end)(void *ud, const struct session_turn *t);
	void (*kv)(void *ud, const struct kv_event *ev);
	/* after an exchange was committed to the store (status KVS_OK) as turn
	 * index of saved session id, or not (status and msg say why; the
	 * exchange stays queued for the next commit) */
	void (*saved)(void *ud, int64_t id, uint32_t index, int status, const char *msg);
	void *ud;
};

/* Where a session saves its exchanges (store.h). */
struct session_store {
	struct store *st;        /* open read-write; outlives the session */
	int64_t id;              /* the saved session; 0: created at the first exchange */
	const char *title;       /* for a new one (NULL: "session N") */
	const char *model_path;  /* the model file and its sha256, recorded with it */
	const char *model_sha256;
	const char *sampler;     /* the sampler settings, as text */
	bool snapshots;          /* write a KV snapshot with each commit */
};

struct session;

/* Load the model and start an empty conversation. */
int session_open(struct session **out, const struct session_config *c, struct err *e);
void session_close(struct session *s);
/* Hooks are called on the session's thread during session_chat (copied). */
void session_set_hooks(struct session *s, const struct session_hooks *h);
/* One exchange: feed text as a user turn (the system prompt first in a new
 * conversation), stream the reply and close the turn in the cache. On
 * success the turn is session_turn_at(s, session_n_turns(s) - 1). On a
 * failure the conversation starts over (the cache is cleared). */
int session_chat(struct session *s, const char *text, struct err *e);
/* Feed the user part of an exchange (the system turn first in a new
 * conversation, the message, the reply header) without replying; extra
 * counts the tokens the caller feeds after it in the same turn, so that
 * eviction makes room once. Not recorded in the history. */
int session_prompt(struct session *s, const char *text, uint32_t extra, struct err *e);
/* Feed text (plain tokenization, no control tokens) as role. */
int session_feed_text(struct session *s, const char *text, enum kv_role role, struct err *e);
/* Close a reply fed by hand: what follows the end-of-turn token when it was
 * fed (eot_fed), else the closing marker and what follows it. */
int session_end_reply(struct session *s, bool eot_fed, struct err *e);
/* Stop the reply in progress (any thread; the turn ends with stop "user"). */
void session_cancel(struct session *s);
/* Forget the conversation: empty cache, no turns. */
void session_reset(struct session *s);
/* Replace the system prompt (takes effect in the next new conversation). */
void session_set_system(struct session *s, const char *system);
const char *session_system(const struct session *s);
void session_set_max_tokens(struct session *s, uint32_t n);
uint32_t session_n_turns(const struct session *s);
const struct session_turn *session_turn_at(const struct session *s, uint32_t i);
/* The generation context (model, engine, KV cache) for reading and for
 * policy or budget changes between turns. */
struct gen *session_gen(const struct session *s);
/* Save every finished exchange to a store (NULL: stop saving): each
 * commits in one transaction with its tokens, memory events and a KV
 * snapshot; an interrupted reply (stop "user") is saved as incomplete. */
int session_set_store(struct session *s, const struct session_store *ss, struct err *e);
/* Continue saved session ss->id: restore its retained KV cache (snapshot,
 * else recompute; info says which) and save the next exchanges to it. */
int session_resume(struct session *s, const struct session_store *ss,
                   struct store_resume_info *info, struct err *e);
/* The saved session's id (0: none yet). */
int64_t session_store_id(const struct session *s);

/* trace.c: write one KV-cache event as a JSON line to fp (attention rows
 * only when the event carries them); v renders token text. */
void trace_write_event(FILE *fp, const struct kv_event *ev, const struct vocab *v);

#endif
