/*
 * app.h: the application layer's one public header.
 *
 * gen.c   a generation context: one model, one engine, one sampler and the
 *         token history in the KV cache. It feeds prompts in batches,
 *         samples, and streams text. The command-line tools (generate, chat,
 *         logits, perplexity, bench) and, later, the chat session sit on it.
 */
#ifndef KVS_APP_H
#define KVS_APP_H

#include "base/base.h"
#include "engine/engine.h"
#include "engine/sampler.h"
#include "model/model.h"

struct gen_config {
	const char *model_path;
	struct engine_config engine;
	struct sampler_params sampler;
	uint32_t n_batch;        /* prefill chunk in tokens (default 512) */
};

void gen_config_default(struct gen_config *c);

struct gen {
	struct model *model;
	struct engine *engine;
	struct sampler *sampler;
	struct chat_template chat;
	bool has_chat;           /* chat template recognised */
	struct err chat_err;     /* why not, when !has_chat */
	uint32_t n_past;         /* tokens in the cache (slots 0..n_past-1) */
	int32_t *hist;           /* (n_ctx) token id per slot */
	uint32_t n_batch;
	float *last_logits;      /* (n_vocab) logits of the last fed token */
	bool have_logits;
	double load_ms;          /* model_load + engine_create */
	double prefill_ms, decode_ms; /* accumulated */
	uint64_t n_prefilled, n_decoded;
};

/* Load the model, create the engine and the sampler. */
int gen_open(struct gen **out, const struct gen_config *c, struct err *e);
void gen_close(struct gen *g);
uint32_t gen_n_ctx(const struct gen *g);
uint32_t gen_n_vocab(const struct gen *g);
/* Append tokens to the cache in n_batch chunks; afterwards last_logits
 * holds the next-token logits. KVS_ERANGE when they would not fit. */
int gen_feed(struct gen *g, const int32_t *ids, size_t n, struct err *e);
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

/* Sample and feed up to max_tokens tokens (stopping at end-of-generation,
 * which is fed too so the turn is closed in the cache), streaming text to fn.
 * Returns the status; *stop says why it ended; *n_out counts sampled tokens. */
int gen_reply(struct gen *g, uint32_t max_tokens, gen_text_fn fn, void *ud, enum gen_stop *stop,
              uint32_t *n_out, struct err *e);

#endif
