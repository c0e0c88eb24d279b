/*
 * app.h: the application layer's one public header.
 *
 * gen.c   a generation context: one model, one engine, one sampler and the
 *         KV cache with its retention policy (kv_cache.h). It feeds turns,
 *         samples, and streams text. The command-line tools (generate, chat,
 *         logits, perplexity, bench, eval) and, later, the chat session sit
 *         on it.
 * trace.c KV-cache events as JSON lines (kvscope generate --trace).
 */
#ifndef KVS_APP_H
#define KVS_APP_H

#include "base/base.h"
#include "engine/engine.h"
#include "engine/kv_cache.h"
#include "engine/sampler.h"
#include "model/model.h"

#include <stdio.h>

struct gen_config {
	const char *model_path;
	struct engine_config engine;
	struct sampler_params sampler;
	uint32_t n_batch;        /* prefill chunk in tokens (default 512) */
	struct kv_config kv;     /* retention policy, budget (0: every slot), capture */
};

void gen_config_default(struct gen_config *c);

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

/* trace.c: write one KV-cache event as a JSON line to fp (attention rows
 * only when the event carries them); v renders token text. */
void trace_write_event(FILE *fp, const struct kv_event *ev, const struct vocab *v);

#endif
