/*
 * model-int.h: the model layer's internal header (not for other layers).
 *
 * The tokenizer is split over five files that share what is declared here:
 *   unicode.c        code point classes (from the generated unicode-data.c)
 *                    and the lenient UTF-8 decoding llama.cpp's tokenizer uses
 *   pretok.c         pre-tokenizers: hand-written matchers that split text
 *                    into words the way each tokenizer family's regex does
 *   vocab.c          the vocabulary: loading, lookups by text and by id
 *   vocab-tokenize.c text to ids: BPE and SentencePiece
 *   detok.c          ids to text: token pieces, streaming detokenisation
 *
 * The model loader is split over arch.c (architectures, tensors, the
 * loaded model) and arch-rope.c (RoPE scaling, divisor tables, Gemma's
 * sliding-window keys), which share the loader state and key readers
 * declared at the end.
 */
#ifndef KVS_MODEL_INT_H
#define KVS_MODEL_INT_H

#include "model/model.h"

/* ---- unicode.c: code point classes ---- */

enum ucp_flag {
	UCP_UNDEF = 0x001,   /* unassigned (Cn) */
	UCP_NUMBER = 0x002,  /* \p{N} */
	UCP_LETTER = 0x004,  /* \p{L} */
	UCP_SEP = 0x008,     /* \p{Z} */
	UCP_MARK = 0x010,    /* \p{M} */
	UCP_PUNCT = 0x020,   /* \p{P} */
	UCP_SYMBOL = 0x040,  /* \p{S} */
	UCP_CONTROL = 0x080, /* \p{C} other than Cn */
	UCP_SPACE = 0x100,   /* \s (Unicode White_Space) */
};

/* One run of code points sharing their flags, up to the next run's first. */
struct ucp_range {
	uint32_t first;
	uint16_t flags;
};

extern const struct ucp_range ucp_ranges[]; /* generated: unicode-data.c */
extern const size_t ucp_n_ranges;
extern const uint16_t ucp_block[];  /* (0x1100) range index of cp = b << 8 */
extern const uint16_t ucp_latin1[]; /* (256) flags of U+0000..U+00FF */

/* UCP_* flags of cp; UCP_UNDEF beyond U+10FFFF. */
uint16_t ucp_flags(uint32_t cp);

/*
 * Decode one code point from s[0..n) (n >= 1) the way llama.cpp does: the
 * lead byte's high bits give the length and the continuation bytes are
 * checked, but overlong forms and surrogates are accepted. A byte that does
 * not start such a sequence decodes to U+FFFD and consumes 1 byte. Returns
 * the bytes consumed.
 */
size_t ucp_decode_lax(const uint8_t *s, size_t n, uint32_t *cp);

/* ---- pretok.c: pre-tokenizers ---- */

/* One splitting pass of a pre-tokenizer (each refines the previous words). */
enum pretok_pass {
	PRETOK_END = 0,
	PRETOK_GPT2,          /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
	                     *  ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
	PRETOK_LLAMA3,        /* llama-3 pattern, numbers in groups of up to 3 */
	PRETOK_QWEN2,         /* llama-3 pattern, numbers one by one */
	PRETOK_NUM_EACH,      /* \p{N}: every number its own word */
	PRETOK_NUM_RUNS,      /* \p{N}+ */
	PRETOK_DIGITS3,       /* [0-9][0-9][0-9] */
	PRETOK_PUNCT_RUNS,    /* [\p{P}\$\+<=>\^~\|]+ */
	PRETOK_PUNCT_RUNS_BT, /* [\p{P}\$\+<=>\^~\|`]+ (falcon) */
};

#define PRETOK_MAX_PASSES 4

/* A name tokenizer.ggml.pre may hold: its passes and the vocabulary
 * defaults llama.cpp attaches to it. */
struct pretok_info {
	const char *name;                               /* "smollm", "llama-bpe", ... */
	enum pretok_pass passes[PRETOK_MAX_PASSES + 1]; /* PRETOK_END-terminated */
	bool ignore_merges;                             /* a word that is a whole token skips merging */
	bool add_bos;                                   /* default for tokenizer.ggml.add_bos_token */
	bool no_bos;                                    /* no default BOS id (chatglm) */
};

/* The family named pre (any alias), or NULL. */
const struct pretok_info *pretok_find(const char *pre, size_t len);
/* Write the names we accept, comma-separated, into buf (for messages). */
void pretok_names(char *buf, size_t cap);

/* Scratch space for pretok_split, reused across calls (no per-call mallocs
 * once grown). */
struct pretok_buf {
	uint32_t *ends_a, *ends_b; /* word end offsets (code points) */
	uint16_t *flags;           /* UCP_* flags of each code point */
	size_t cap;                /* entries in each array */
};

/*
 * Split the code points cps[0..n) into words with the passes of info.
 * Returns the number of words; (*ends)[i] is the end (exclusive, in code
 * points) of word i, and words are contiguous from 0. The array lives in buf.
 */
size_t pretok_split(const struct pretok_info *info, const uint32_t *cps, size_t n,
                    struct pretok_buf *buf, const uint32_t **ends);
void pretok_buf_free(struct pretok_buf *buf);

/* ---- vocab.c: the vocabulary, shared with vocab-tokenize.c and detok.c ---- */

/* Attribute bits (llama.cpp's token attributes, plus our EOG mark). */
enum {
	VOCAB_A_UNKNOWN = 1 << 0,
	VOCAB_A_UNUSED = 1 << 1,
	VOCAB_A_NORMAL = 1 << 2,
	VOCAB_A_CONTROL = 1 << 3,
	VOCAB_A_USER = 1 << 4,
	VOCAB_A_BYTE = 1 << 5,
	VOCAB_A_LSTRIP = 1 << 7,
	VOCAB_A_RSTRIP = 1 << 8,
	VOCAB_A_EOG = 1 << 10,
};

#define VOCAB_A_SPECIAL (VOCAB_A_UNKNOWN | VOCAB_A_CONTROL) /* hidden unless render_special */

struct tok_slot {
	uint32_t hash; /* low bits of the text's hash */
	int32_t id;    /* -1: empty */
};

struct merge_slot {
	uint64_t key;   /* (left id << 32) | right id */
	int32_t rank;   /* -1: empty */
	int32_t merged; /* id of the concatenation, -1 if no token */
};

/* A merge whose halves are not both tokens (never in sane vocabularies,
 * but llama.cpp honours them, keyed by text). */
struct text_merge {
	struct gguf_str left, right;
	int32_t rank;
};

struct vocab {
	enum vocab_kind kind;
	const struct pretok_info *pre; /* BPE */
	uint32_t n_tokens;
	struct gguf_str *text; /* (n_tokens) token text (the map, or own_text) */
	float *score;          /* (n_tokens) SPM scores, 0 without the key */
	uint16_t *attr;        /* (n_tokens) VOCAB_A_* bits */
	char *own_text;        /* "[EMPTY_i]" texts for empty tokens */

	struct tok_slot *tok_slots; /* text -> id, open addressing */
	uint32_t tok_mask;

	struct merge_slot *merge_slots; /* BPE (id, id) -> rank */
	uint32_t merge_mask;
	struct text_merge *text_merges; /* BPE merges with non-token halves */
	size_t n_text_merges;

	/* BPE: GPT-2 byte alphabet. byte_utf8[b] spells byte b (1-2 bytes);
	 * unbyte[cp] is the byte of an alphabet code point (< 0x144), or -1. */
	char byte_utf8[256][2];
	uint8_t byte_len[256];
	int16_t unbyte[0x144];
	/* token of each byte: BPE its alphabet letter, SPM <0xNN> or the byte */
	int32_t byte_tok[256];

	int32_t *special; /* partitioning tokens, longest text first */
	size_t n_special;

	int32_t bos, eos, eot, eom, unk, sep, pad;
	int32_t fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep;
	bool add_bos, add_eos, add_space_prefix, ignore_merges;
};

/* A fast 64-bit hash of a short byte string (the text index, the word cache). */
uint64_t vocab_hash(const char *p, size_t n);
/* The merge slot of (left, right): a filled one or the empty one it would take. */
struct merge_slot *vocab_merge_slot(const struct vocab *v, int32_t left, int32_t right);
/* The byte of an SPM byte token "<0xNN>", or -1 if t is not one. */
int vocab_byte_of(struct gguf_str t);

/* ---- vocab.c: internals exposed to tests and tools ---- */

struct vocab_opts {
	const char *pre; /* override tokenizer.ggml.pre (tests), or NULL */
};

/* vocab_load with options (opts may be NULL). */
int vocab_load_opts(struct vocab **out, const struct gguf_file *f, const struct vocab_opts *opts,
                    struct err *e);

/* ---- arch.c and arch-rope.c: the model loader ---- */

/* One supported architecture. */
struct arch_desc {
	const char *name;
	enum rope_kind rope;
	bool qkv_bias;        /* Q/K/V biases required (otherwise allowed if present) */
	bool qk_norm;         /* attn_q_norm / attn_k_norm required (otherwise refused) */
	bool ffn_fused;       /* ffn_up holds gate and up, [n_embd, 2 n_ff], no ffn_gate (phi3) */
	bool gemma;           /* embedding x sqrt(n_embd), GeGLU, post-attention and post-FFN norms */
	uint8_t swa_period;   /* default layer pattern: layer l is global when l % period ==
	                        * period - 1, local otherwise; 0: no sliding window */
	uint32_t swa_default; /* window without attention.sliding_window (0: no local layers) */
	float attn_softcap;   /* attn_logit_softcapping default; 0: the family has none */
	float final_softcap;  /* final_logit_softcapping default (the key may set it) */
	float rope_base_swa;  /* local layers' RoPE base default; 0: the global base */
	uint32_t big_n_layer; /* the 27B model's depth: its query scale is 1/sqrt(n_embd / n_head) */
};

/* Loader state: the file, the architecture and which tensors were claimed. */
struct arch_load {
	struct gguf_file *f;
	const struct arch_desc *arch;
	struct model *m;
	bool *used; /* (n_tensors) claimed by a table row */
	struct err *e;
};

/* "{arch}.{suffix}" into buf. */
const char *arch_key(const struct arch_load *L, const char *suffix, char *buf, size_t cap);
/* A u32 hyper-parameter: a scalar, or one equal entry per layer (n_layer > 0);
 * *found says whether the key exists, absent keys leave *out alone. */
int arch_get_u32(struct arch_load *L, const char *suffix, uint32_t n_layer, uint32_t *out,
                 bool *found);
/* An optional u32 hyper-parameter in [lo, hi]; def when absent. */
int arch_opt_u32(struct arch_load *L, const char *suffix, uint32_t n_layer, uint32_t def,
                 uint32_t lo, uint32_t hi, uint32_t *out);
/* An optional (or required) float hyper-parameter, finite and in (lo, hi);
 * def when absent. */
int arch_opt_f32(struct arch_load *L, const char *suffix, bool required, float def, double lo,
                 double hi, float *out);
/* arch-rope.c: RoPE scaling (none, linear, YaRN; LongRoPE's attention
 * factor), the factor and the attention factor. */
int arch_rope_scaling(struct arch_load *L, struct hparams *hp);
/* arch-rope.c: Gemma's keys: soft-caps, sliding window and layer pattern,
 * the local RoPE base, the 27B query scale (the other families get their
 * neutral values). */
int arch_gemma(struct arch_load *L, struct hparams *hp);
/* arch-rope.c: check the divisor tables (rope_freqs, LongRoPE's long and
 * short) once bound, and put them into the hyper-parameters. */
int arch_rope_factors(struct arch_load *L);

#endif
