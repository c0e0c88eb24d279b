/*
 * app-int.h: the application layer's insides, for the files of src/app/
 * and the unit tests that check them (tests/unit/test-lenctl.c): the
 * fields of struct gen, the length controller's token classes and its
 * per-turn state. Front ends include app.h and reach a gen through its
 * accessors.
 */
#ifndef KVS_APP_INT_H
#define KVS_APP_INT_H

#include "app/app.h"

/* ---- worker.c, worker-note.c: the worker's events ---- */

/* A new event of this kind, every other field zero (the caller owns it
 * until worker_push). */
struct worker_event *worker_event_new(enum worker_event_kind kind);
/* Queue ev for the main thread (takes it) and make the pipe readable. */
void worker_push(struct worker *w, struct worker_event *ev);
/* The session's clustering progress and notices, as events (hooks). */
void worker_hook_progress(void *ud, uint32_t done, uint32_t total);
void worker_hook_notice(void *ud, const char *msg);

/* ---- lenctl.c: the controller ---- */

/* Token classes the controller needs, one byte per vocabulary entry. */
enum {
	LTOK_END = 1,    /* ends the turn (vocab_is_eog) */
	LTOK_SENT = 2,   /* ends with sentence-final punctuation */
	LTOK_BLANK = 4,  /* white space only, with a newline */
	LTOK_WSTART = 8, /* begins with a word character */
};
struct len_vocab {
	uint32_t n;
	uint8_t *cls;  /* (n) LTOK_* */
	uint8_t *runs; /* (n) \w runs in the piece (capped at 255) */
};
/* Classify every token of v (the pieces as raw bytes). */
void len_vocab_build(struct len_vocab *lv, const struct vocab *v);
/* Classify from given pieces (tests); end marks the end tokens. */
void len_vocab_from_pieces(struct len_vocab *lv, const char *const *pieces, uint32_t n,
                           const bool *end);
void len_vocab_free(struct len_vocab *lv);

/* One turn under control: the length controller plus the other stop rules.
 * Drive it per token: turnctl_bias (only when turnctl_active), sample,
 * turnctl_token. gen_reply does this; tests do it with scripted logits. */
struct turnctl {
	struct gen_turn_opts o;
	atomic_int *cancel; /* stop (user) when ASKED; consumed (gen_reply passes g->cancel) */
	const struct len_vocab *lv;
	uint32_t max_tokens, n_tokens;
	struct wordcount wc;
	char tail[96]; /* the last bytes of the text, for sentence ends */
	size_t n_tail;
	uint32_t at_ceiling; /* tokens sampled with no room for another unit */
	bool forcing;        /* the last bias left only end tokens */
	char *held;          /* text not yet emitted (a stop string may begin there) */
	size_t n_held, cap_held;
	int32_t *hist; /* the reply's tokens (for no_repeat) */
	size_t n_hist, cap_hist;
	struct {
		int32_t id;
		float logit;
	} * ban; /* what the guard banned this step */
	size_t cap_ban;
	char *out; /* what turnctl_token emits (valid until the next call) */
	size_t cap_out;
};
void turnctl_begin(struct turnctl *t, const struct gen_turn_opts *o, const struct len_vocab *lv,
                   uint32_t max_tokens);
void turnctl_end(struct turnctl *t);
/* Whether the logits need biasing (a length target is set). */
bool turnctl_active(const struct turnctl *t);
/* Units (words or tokens) counted so far. */
uint32_t turnctl_count(const struct turnctl *t);
/* Before a step: a stop that needs no token (user, max-tokens), or -1.
 * The cancel flag is cleared when it is seen. */
int turnctl_precheck(struct turnctl *t);
/* Bias logits (n_vocab) for the next token. */
void turnctl_bias(struct turnctl *t, float *logits);
/* After sampling id (is_end: an end token) whose text is text[0..n): the
 * stop reason, or -1 to go on. *emit / *n_emit: text now safe to show. */
int turnctl_token(struct turnctl *t, int32_t id, bool is_end, const char *text, size_t n,
                  const char **emit, size_t *n_emit);
/* What is still held back (call at the end unless the stop was a stop string). */
void turnctl_flush(struct turnctl *t, const char **emit, size_t *n_emit);

/* ---- gen.c ---- */

/* Observes every reply token (the session's hook; NULL: none). */
typedef void (*gen_token_fn)(const struct gen_token *t, void *ud);

struct gen {
	struct model *model;
	struct engine *engine;
	struct sampler *sampler;
	struct chat_template chat;
	bool has_chat;       /* chat template recognised */
	struct err chat_err; /* why not, when !has_chat */
	struct kv_cache *kv; /* the KV cache and its retention policy */
	uint32_t n_past;     /* tokens in the cache now (kv_cache_n) */
	uint32_t n_batch;
	const float *last_logits; /* (n_vocab) logits after the last fed token, or NULL */
	bool have_logits;
	double load_ms;               /* model_load + engine_create */
	double prefill_ms, decode_ms; /* accumulated */
	uint64_t n_prefilled, n_decoded;
	gen_token_fn on_token; /* reply-token observer, or NULL */
	void *on_token_ud;
	/* Asked from any thread to stop the reply in progress (GEN_STOP_USER;
	 * enum gen_cancel); gen_reply seals it when it returns. NULL: none. */
	atomic_int *cancel;
	struct gen_turn_opts turn;   /* length target, controller knobs, stop strings (gen_set_*) */
	struct gen_reply_info reply; /* what the last gen_reply produced */
	float *biased;               /* (n_vocab) scratch for the controller's logits */
	struct len_vocab lv;         /* token classes, built on the first controlled reply */
	bool shadow;                 /* gen_open_shadow: the model and the weights are borrowed */
};

#endif
