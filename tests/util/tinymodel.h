/*
 * tinymodel.h: tiny, valid llama / qwen2 / qwen3 / phi3 / gemma2 / gemma3 models
 * for tests (libtestutil.a).
 *
 *   struct tinymodel_spec s;
 *   tinymodel_defaults(&s, "llama");      // 2 layers, n_embd 32, vocab ~270
 *   s.wtype = DT_Q4_1;                    // matrices; norms stay F32
 *   struct ggufw *w = ggufw_new();
 *   tinymodel_add(w, &s);                 // every key, the vocab, every tensor
 *   ggufw_write_file(w, path);
 *
 * Weights are uniform in [-s.scale, s.scale] from a fixed-seed generator
 * (tinymodel_rand), quantised with the reference quantisers in dtype.c;
 * types without one (Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) get random quants with
 * scale fields keeping them within about +-s.scale. The same spec always
 * gives the same bytes. Norm weights are 1 + small
 * noise. skip_key / skip_tensor leave one key or tensor out, for tests of
 * what the loader says about missing pieces.
 */
#ifndef KVS_TINYMODEL_H
#define KVS_TINYMODEL_H

#include "tests/util/ggufw.h"

#include <stdbool.h>

enum tinymodel_vocab {
	TINY_VOCAB_GPT2 = 0, /* byte-level BPE: 3 specials, 256 byte symbols, merges */
	TINY_VOCAB_SPM = 1,  /* SentencePiece: <unk> <s> </s>, 256 <0xNN>, pieces */
};

struct tinymodel_spec {
	const char *arch; /* "llama", "qwen2", "qwen3", "phi3", "gemma2" or "gemma3" */
	const char *name; /* general.name */
	uint32_t n_layer, n_embd, n_head, n_head_kv, n_ff, n_ctx;
	uint32_t head_dim;  /* 0: n_embd / n_head (no key_length key written) */
	uint32_t wtype;     /* type of the layer matrices (enum dtype) */
	uint32_t embd_type; /* type of token_embd (and output when untied) */
	bool tied;          /* no output.weight */
	bool qkv_bias;      /* write attn_{q,k,v}.bias (forced for qwen2) */
	bool qk_norm;       /* write attn_{q,k}_norm.weight (set for qwen3) */
	bool rope_freqs;    /* write rope_freqs.weight: divisors 1, 2, 3, ... per pair */
	bool fused_qkv;     /* one attn_qkv.weight instead of attn_{q,k,v} (set for phi3) */
	bool post_norm;     /* write post_attention_norm and post_ffw_norm (set for gemma) */
	bool longrope;      /* write rope_factors_long (1, 2, 3, ... per pair) and
	                     * rope_factors_short (1, 1.5, 2, ...) */
	/* phi3 writes ffn_up.weight of 2 n_ff rows (gate rows first) and no ffn_gate;
	 * fused or not, the values come in the same order from the generator */
	enum tinymodel_vocab vocab;
	float rope_base, rms_eps, scale;
	uint64_t seed;
	const char *skip_key;     /* leave this key out (NULL: none) */
	const char *skip_tensor;  /* leave this tensor out (NULL: none) */
	bool chat_template;       /* write a tokenizer.chat_template (template_src, else ChatML) */
	const char *template_src; /* the template written (NULL: the ChatML one) */
	const char *const *extra_tokens; /* GPT-2 vocab: CONTROL tokens appended at the end */
	uint32_t n_extra_tokens;
};

/* Fill s with a small valid model of arch (see tinymodel_spec.arch). */
void tinymodel_defaults(struct tinymodel_spec *s, const char *arch);
/* Add the model's keys and tensors to w. */
void tinymodel_add(struct ggufw *w, const struct tinymodel_spec *s);
struct model;
/* Write the model of s into memory (*buf, the caller frees it after
 * model_free) and load it into *m; exits 99 (a hard error of the test
 * harness) when that fails. */
void tinymodel_load(const struct tinymodel_spec *s, struct model **m, uint8_t **buf);
/* Number of tokens the spec's vocabulary has. */
uint32_t tinymodel_n_vocab(const struct tinymodel_spec *s);
/* Write the llama-arch model the app-level tests share (n_embd 64, so
 * head_dim 16 as the CPU attention wants; n_ff 128; weights scaled 0.5)
 * to a fresh file under $TMPDIR named after tag; returns its path
 * (caller owns). Exits with 99, the harness's "hard error", when it cannot. */
char *tinymodel_write_temp(const char *tag);
/* nbytes of blocks of a type without a reference quantiser (Q5_0, Q5_1,
 * Q4_K, Q5_K, Q6_K): random quants (and k-quant sub-scales, fifth bits,
 * Q6_K's signed scales) from *rng, the scale fields set so that the weights
 * stay within about +-scale. */
void tinymodel_random_blocks(uint32_t type, uint8_t *q, size_t nbytes, float scale, uint64_t *rng);
/* Deterministic uniform float in [-1, 1) from *state (xorshift64*). */
float tinymodel_rand(uint64_t *state);

/* The attention tests' model: llama, 4 layers, n_embd 64 (head_dim 16,
 * GQA 2), n_ff 128, weights scaled by 0.5. */
void tinymodel_load_attn(struct model **m, uint8_t **buf);

struct engine;
struct engine_out;
struct engine_sparse;
/* A CPU engine of n_ctx slots and threads threads (f32 KV cache when
 * kv_f32, else the default f16); exits 99 with the error when it cannot be
 * made (a test set-up failure, not a check). */
struct engine *tinymodel_engine(const struct model *m, uint32_t n_ctx, int threads, bool kv_f32);
/* A sparse mode from its spec; exits 99 naming a bad one. */
struct engine_sparse tinymodel_spec(const char *text);
/* The tests' prompt of n tokens: ids 3 + 37 i mod 250 into tok, slots
 * 0..n-1 into slot, positions 0..n-1 into pos. */
void tinymodel_prompt(int32_t *tok, int32_t *pos, uint32_t *slot, uint32_t n);
/* Prefill that prompt, no logits; exits 99 on an engine error. */
void tinymodel_prefill(struct engine *eng, uint32_t n);
/* Decode token 42 at position n (slot n) seeing slots 0..n, under sp (NULL:
 * dense) and asking for the attention weights when attn; the logits (n_vocab)
 * copied into out, the engine's output in *o; exits 99 on an engine error. */
void tinymodel_decode(struct engine *eng, uint32_t n, const struct engine_sparse *sp, bool attn,
                      float *out, struct engine_out *o);
/* The same under LM-Infinite's cap: the first n_global keys are global,
 * dist_cap the cap (0: off). */
void tinymodel_decode_capped(struct engine *eng, uint32_t n, const struct engine_sparse *sp,
                             bool attn, uint32_t n_global, int32_t dist_cap, float *out,
                             struct engine_out *o);
/* max |a[i] - b[i]| over n values, in double. */
double tinymodel_max_diff(const float *a, const float *b, size_t n);

#endif
