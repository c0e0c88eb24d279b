/*
 * vocab.c: the tokenizer. Text to token ids and back, equal to llama.cpp's
 * (commit c392e50) for the vocabularies we accept.
 *
 * Loading reads the tokenizer.ggml.* keys, checks every count, type, id and
 * merge, and builds two hash tables: token text -> id, and for byte-level
 * BPE (id of left part, id of right part) -> (merge rank, id of the result).
 * Token texts stay in the mapped file; nothing is copied per token.
 *
 * Tokenizing runs in three steps, as llama.cpp does:
 *  1. Special-token partitioning: every CONTROL, USER_DEFINED and UNKNOWN
 *     token, longest text first, splits the remaining raw text at each of
 *     its occurrences (CONTROL and UNKNOWN only when parse_special).
 *  2. Each raw fragment goes through the model's algorithm:
 *     - byte-level BPE ("gpt2"): decode code points (bad bytes become
 *       U+FFFD), split into words (pretok.c), spell each word's UTF-8 bytes
 *       in GPT-2's printable byte alphabet, then repeatedly merge the
 *       adjacent pair with the lowest merge rank (leftmost on ties), using a
 *       heap of candidate pairs with lazy invalidation;
 *     - SentencePiece ("llama"): a leading space when the fragment starts
 *       the text or follows a special token, spaces spelled U+2581, then
 *       repeatedly merge the adjacent pair whose concatenation is the token
 *       with the highest score; pieces that are no token fall back to
 *       <0xNN> byte tokens.
 *  3. BOS/EOS around the result when add_special and the vocab says so.
 *
 * A symbol's staleness check in the heap compares lengths only: a symbol's
 * text starts at a fixed offset and only grows, so equal lengths mean equal
 * text (the string comparison llama.cpp does).
 *
 * Detokenising maps tokens back to bytes and holds back an incomplete UTF-8
 * sequence at a token edge, so a stream never shows half a character.
 */
#include "model/model-int.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Attribute bits (llama.cpp's token attributes, plus our EOG mark). */
enum {
	A_UNKNOWN = 1 << 0,
	A_UNUSED = 1 << 1,
	A_NORMAL = 1 << 2,
	A_CONTROL = 1 << 3,
	A_USER = 1 << 4,
	A_BYTE = 1 << 5,
	A_LSTRIP = 1 << 7,
	A_RSTRIP = 1 << 8,
	A_EOG = 1 << 10,
};

#define A_SPECIAL (A_UNKNOWN | A_CONTROL) /* hidden unless render_special */

/* Most tokens or merges we accept (real vocabularies hold < 300,000); keeps
 * every hash table size a 32-bit power of two. */
#define VOCAB_MAX_ENTRIES (1u << 24)

/* tokenizer.ggml.token_type values and the attribute each gives. */
static const struct {
	int32_t type;
	uint16_t attr;
	enum token_attr pub;
} vocab_types[] = {
	{ TOKEN_NORMAL, A_NORMAL, TOKEN_NORMAL },
	{ TOKEN_UNKNOWN, A_UNKNOWN, TOKEN_UNKNOWN },
	{ TOKEN_CONTROL, A_CONTROL, TOKEN_CONTROL },
	{ TOKEN_USER_DEFINED, A_USER, TOKEN_USER_DEFINED },
	{ TOKEN_UNUSED, A_UNUSED, TOKEN_UNUSED },
	{ TOKEN_BYTE, A_BYTE, TOKEN_BYTE },
};

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
	struct gguf_str *text;  /* (n_tokens) token text (the map, or own_text) */
	float *score;           /* (n_tokens) SPM scores, 0 without the key */
	uint16_t *attr;         /* (n_tokens) A_* bits */
	char *own_text;         /* "[EMPTY_i]" texts for empty tokens */

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

	int32_t *special;       /* partitioning tokens, longest text first */
	size_t n_special;

	int32_t bos, eos, eot, eom, unk, sep, pad;
	int32_t fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep;
	bool add_bos, add_eos, add_space_prefix, ignore_merges;
};

/* ------------------------------------------------------------------ hashing */

/* A fast 64-bit hash of a short byte string. */
static uint64_t vocab_hash(const char *p, size_t n)
{
	uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xC2B2AE3D27D4EB4Full), w;

	while (n >= 8) {
		memcpy(&w, p, 8);
		h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
		h ^= h >> 31;
		p += 8;
		n -= 8;
	}
	w = 0;
	memcpy(&w, p, n);
	h = (h ^ w) * 0x94D049BB133111EBull;
	h ^= h >> 29;
	h *= 0xBF58476D1CE4E5B9ull;
	return h ^ (h >> 32);
}

/* Hash of a merge key (two ids). */
static uint64_t vocab_hash_pair(uint64_t key)
{
	key *= 0x9E3779B97F4A7C15ull;
	return key ^ (key >> 29);
}

/* Smallest power of two >= 2 * n (and >= 16). */
static uint32_t vocab_table_size(uint64_t n)
{
	uint32_t s = 16;

	while (s < 2 * n)
		s <<= 1;
	return s;
}

/* Id of the token whose text is text[0, len), or -1. */
int32_t vocab_lookup(const struct vocab *v, const char *text, size_t len)
{
	uint64_t h = vocab_hash(text, len);
	uint32_t i = (uint32_t)h & v->tok_mask;
	const struct tok_slot *s;

	for (;; i = (i + 1) & v->tok_mask) {
		s = &v->tok_slots[i];
		if (s->id < 0)
			return -1;
		if (s->hash == (uint32_t)(h >> 32) && v->text[s->id].n == len &&
		    memcmp(v->text[s->id].p, text, len) == 0)
			return s->id;
	}
}

/* Insert id under its text; returns the id already there, or -1. */
static int32_t vocab_index_add(struct vocab *v, int32_t id)
{
	const struct gguf_str *t = &v->text[id];
	uint64_t h = vocab_hash(t->p, t->n);
	uint32_t i = (uint32_t)h & v->tok_mask;
	struct tok_slot *s;

	for (;; i = (i + 1) & v->tok_mask) {
		s = &v->tok_slots[i];
		if (s->id < 0) {
			s->id = id;
			s->hash = (uint32_t)(h >> 32);
			return -1;
		}
		if (s->hash == (uint32_t)(h >> 32) && v->text[s->id].n == t->n &&
		    memcmp(v->text[s->id].p, t->p, t->n) == 0)
			return s->id;
	}
}

/* The merge slot of (left, right): a filled one or the empty one it would take. */
static struct merge_slot *vocab_merge_slot(const struct vocab *v, int32_t left, int32_t right)
{
	uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
	uint32_t i = (uint32_t)vocab_hash_pair(key) & v->merge_mask;

	for (;; i = (i + 1) & v->merge_mask) {
		struct merge_slot *s = &v->merge_slots[i];
		if (s->rank < 0 || s->key == key)
			return s;
	}
}

/* --------------------------------------------------------------- loading */

/* Read an optional special-token id key into *id (kept when absent). */
static int vocab_get_id(const struct gguf_file *f, const char *key, uint32_t n_tokens,
                        int32_t *id, struct err *e)
{
	const struct gguf_kv *kv = gguf_find_kv(f, key);
	int64_t val;

	if (kv == NULL)
		return KVS_OK;
	switch (kv->type) {
	case GGUF_U8: case GGUF_U16: case GGUF_U32: case GGUF_U64:
		val = kv->v.u > INT64_MAX ? INT64_MAX : (int64_t)kv->v.u;
		break;
	case GGUF_I8: case GGUF_I16: case GGUF_I32: case GGUF_I64:
		val = kv->v.i;
		break;
	default:
		return err_set(e, KVS_EFORMAT, "%s: type %s, expected an integer token id", key,
		               gguf_vtype_name(kv->type));
	}
	if (val < 0) { /* some converters write -1 for "none" */
		*id = -1;
		return KVS_OK;
	}
	if (val >= n_tokens)
		return err_set(e, KVS_EFORMAT, "%s: token id %lld, expected < %u (the vocabulary size)",
		               key, (long long)val, n_tokens);
	*id = (int32_t)val;
	return KVS_OK;
}

/* Read an optional bool key into *out (kept when absent). */
static int vocab_get_flag(const struct gguf_file *f, const char *key, bool *out, struct err *e)
{
	int rc = gguf_get_bool(f, key, out, e);

	return rc == KVS_ENOTFOUND ? KVS_OK : rc;
}

/* Fetch an optional array key checking element type and count. */
static int vocab_get_table(const struct gguf_file *f, const char *key, uint32_t type,
                           uint32_t n_tokens, const struct gguf_kv **out, struct err *e)
{
	int rc = gguf_get_arr(f, key, type, out, e);

	if (rc == KVS_ENOTFOUND) {
		*out = NULL;
		return KVS_OK;
	}
	if (rc != KVS_OK)
		return rc;
	if ((*out)->arr_n != n_tokens)
		return err_set(e, KVS_EFORMAT, "%s: %llu entries, expected %u (one per token)", key,
		               (unsigned long long)(*out)->arr_n, n_tokens);
	return KVS_OK;
}

/* Value of a hex digit, -1 if c is none. */
static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* The byte of an SPM byte token "<0xNN>", or -1 if t is not one. */
static int vocab_byte_of(struct gguf_str t)
{
	if (t.n != 6 || memcmp(t.p, "<0x", 3) != 0 || t.p[5] != '>' || hexval(t.p[3]) < 0 ||
	    hexval(t.p[4]) < 0)
		return -1;
	return hexval(t.p[3]) * 16 + hexval(t.p[4]);
}

/* Build GPT-2's byte alphabet: printable bytes stand for themselves, the
 * other 68 take U+0100.. in byte order. */
static void vocab_byte_alphabet(struct vocab *v)
{
	uint32_t next = 0x100, cp;
	int b;
	char tmp[4];

	for (b = 0; b < 0x144; b++)
		v->unbyte[b] = -1;
	for (b = 0; b < 256; b++) {
		bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
		cp = printable ? (uint32_t)b : next++;
		v->byte_len[b] = (uint8_t)ucp_encode(cp, tmp);
		memcpy(v->byte_utf8[b], tmp, v->byte_len[b]);
		v->unbyte[cp] = (int16_t)b;
	}
}

/* Parse and index tokenizer.ggml.merges. */
static int vocab_load_merges(struct vocab *v, const struct gguf_file *f, struct err *e)
{
	const struct gguf_kv *kv;
	size_t cap_text = 0, cap_buf = 0;
	char *buf = NULL;
	uint64_t i;
	int rc;

	rc = gguf_get_arr(f, "tokenizer.ggml.merges", GGUF_STRING, &kv, e);
	if (rc == KVS_ENOTFOUND)
		return err_set(e, KVS_EFORMAT, "tokenizer.ggml.merges: missing, expected the merge "
		               "list of a gpt2 (byte-level BPE) tokenizer");
	if (rc != KVS_OK)
		return rc;
	if (kv->arr_n > VOCAB_MAX_ENTRIES)
		return err_set(e, KVS_EFORMAT, "tokenizer.ggml.merges: %llu entries, expected at most %u",
		               (unsigned long long)kv->arr_n, VOCAB_MAX_ENTRIES);
	v->merge_mask = vocab_table_size(kv->arr_n) - 1;
	v->merge_slots = xmallocarray((size_t)v->merge_mask + 1, sizeof(*v->merge_slots));
	memset(v->merge_slots, 0xFF, ((size_t)v->merge_mask + 1) * sizeof(*v->merge_slots));
	for (i = 0; i < kv->arr_n; i++) {
		struct gguf_str m = gguf_arr_str(kv, i), l, r;
		const char *sp = m.n > 1 ? memchr(m.p + 1, ' ', m.n - 1) : NULL;
		int32_t li, ri;
		struct merge_slot *s;

		if (sp == NULL || sp + 1 == m.p + m.n) {
			free(buf);
			return err_set(e, KVS_EFORMAT, "tokenizer.ggml.merges[%llu]: \"%.*s\", expected two "
			               "non-empty parts separated by a space", (unsigned long long)i,
			               (int)KVS_MIN(m.n, 64), m.p);
		}
		l.p = m.p;
		l.n = (uint64_t)(sp - m.p);
		r.p = sp + 1;
		r.n = m.n - l.n - 1;
		li = vocab_lookup(v, l.p, l.n);
		ri = vocab_lookup(v, r.p, r.n);
		if (li < 0 || ri < 0) {
			if (v->n_text_merges == cap_text) {
				cap_text = cap_text ? cap_text * 2 : 16;
				v->text_merges = xreallocarray(v->text_merges, cap_text,
				                               sizeof(*v->text_merges));
			}
			v->text_merges[v->n_text_merges].left = l;
			v->text_merges[v->n_text_merges].right = r;
			v->text_merges[v->n_text_merges++].rank = (int32_t)i;
			continue;
		}
		s = vocab_merge_slot(v, li, ri);
		if (s->rank >= 0)
			continue; /* a repeated pair keeps its first rank */
		s->key = ((uint64_t)(uint32_t)li << 32) | (uint32_t)ri;
		s->rank = (int32_t)i;
		if (l.n + r.n > cap_buf) {
			cap_buf = l.n + r.n + 256;
			buf = xrealloc(buf, cap_buf);
		}
		memcpy(buf, l.p, l.n);
		memcpy(buf + l.n, r.p, r.n);
		s->merged = vocab_lookup(v, buf, l.n + r.n);
	}
	free(buf);
	return KVS_OK;
}

/* Pick the token named by the first text of names present in the vocab
 * (lowest id among several), mark it CONTROL, store it in *id if unset. */
static void vocab_detect(struct vocab *v, int32_t *id, const char *const *names)
{
	int32_t best = -1, t;

	if (*id >= 0)
		return;
	for (; *names != NULL; names++) {
		t = vocab_lookup(v, *names, strlen(*names));
		if (t >= 0 && (best < 0 || t < best))
			best = t;
	}
	if (best >= 0) {
		*id = best;
		v->attr[best] |= A_CONTROL;
	}
}

static const char *const eot_names[] = { "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
	"<|endoftext|>", "<EOT>", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
	NULL };
static const char *const eom_names[] = { "<|eom_id|>", NULL };
static const char *const fim_pre_names[] = { "<|fim_prefix|>", "<fim-prefix>",
	"<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>", "<PRE>", NULL };
static const char *const fim_suf_names[] = { "<|fim_suffix|>", "<fim-suffix>",
	"<\xef\xbd\x9c" "fim\xe2\x96\x81hole\xef\xbd\x9c>", "<SUF>", NULL };
static const char *const fim_mid_names[] = { "<|fim_middle|>", "<fim-middle>",
	"<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>", "<MID>", NULL };
static const char *const fim_pad_names[] = { "<|fim_pad|>", "<fim-pad>", "<PAD>", NULL };
static const char *const fim_rep_names[] = { "<|fim_repo|>", "<|repo_name|>", "<fim-repo>",
	"<REPO>", NULL };
static const char *const fim_sep_names[] = { "<|file_sep|>", NULL };
/* Texts that end generation whatever their id (llama.cpp's list). */
static const char *const eog_names[] = { "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
	"<|endoftext|>", "<|eom_id|>", "<EOT>", NULL };

/* Mark id as end-of-generation (ignoring -1). */
static void vocab_mark_eog(struct vocab *v, int32_t id)
{
	if (id >= 0)
		v->attr[id] |= A_EOG;
}

/* Special ids from the keys, the ones found by text, and the EOG set. */
static int vocab_load_specials(struct vocab *v, const struct gguf_file *f, struct err *e)
{
	const struct {
		const char *key;
		int32_t *id;
	} keys[] = {
		{ "tokenizer.ggml.bos_token_id", &v->bos },
		{ "tokenizer.ggml.eos_token_id", &v->eos },
		{ "tokenizer.ggml.eot_token_id", &v->eot },
		{ "tokenizer.ggml.eom_token_id", &v->eom },
		{ "tokenizer.ggml.unknown_token_id", &v->unk },
		{ "tokenizer.ggml.seperator_token_id", &v->sep },
		{ "tokenizer.ggml.padding_token_id", &v->pad },
		{ "tokenizer.ggml.fim_pre_token_id", &v->fim_pre },
		{ "tokenizer.ggml.fim_suf_token_id", &v->fim_suf },
		{ "tokenizer.ggml.fim_mid_token_id", &v->fim_mid },
		{ "tokenizer.ggml.fim_pad_token_id", &v->fim_pad },
		{ "tokenizer.ggml.fim_rep_token_id", &v->fim_rep },
		{ "tokenizer.ggml.fim_sep_token_id", &v->fim_sep },
		{ "tokenizer.ggml.prefix_token_id", &v->fim_pre },
		{ "tokenizer.ggml.suffix_token_id", &v->fim_suf },
		{ "tokenizer.ggml.middle_token_id", &v->fim_mid },
	};
	size_t i;
	int32_t t;
	int rc;

	for (i = 0; i < KVS_ARRAY_LEN(keys); i++)
		if ((rc = vocab_get_id(f, keys[i].key, v->n_tokens, keys[i].id, e)) != KVS_OK)
			return rc;
	if ((rc = vocab_get_flag(f, "tokenizer.ggml.add_bos_token", &v->add_bos, e)) != KVS_OK ||
	    (rc = vocab_get_flag(f, "tokenizer.ggml.add_eos_token", &v->add_eos, e)) != KVS_OK)
		return rc;
	if (v->add_bos && v->bos < 0)
		return err_set(e, KVS_EFORMAT, "tokenizer.ggml.add_bos_token: true, but the vocabulary "
		               "has no BOS token (expected tokenizer.ggml.bos_token_id)");
	if (v->add_eos && v->eos < 0)
		return err_set(e, KVS_EFORMAT, "tokenizer.ggml.add_eos_token: true, but the vocabulary "
		               "has no EOS token (expected tokenizer.ggml.eos_token_id)");

	/* llama.cpp finds these by their text when no key names them (and
	 * makes such a token a CONTROL token); where several texts match it
	 * takes whichever its hash map lists first, we take the lowest id. */
	vocab_detect(v, &v->eot, eot_names);
	vocab_detect(v, &v->eom, eom_names);
	vocab_detect(v, &v->fim_pre, fim_pre_names);
	vocab_detect(v, &v->fim_suf, fim_suf_names);
	vocab_detect(v, &v->fim_mid, fim_mid_names);
	vocab_detect(v, &v->fim_pad, fim_pad_names);
	vocab_detect(v, &v->fim_rep, fim_rep_names);
	vocab_detect(v, &v->fim_sep, fim_sep_names);

	vocab_mark_eog(v, v->fim_pad);
	vocab_mark_eog(v, v->fim_rep);
	vocab_mark_eog(v, v->fim_sep);
	for (i = 0; eog_names[i] != NULL; i++) {
		t = vocab_lookup(v, eog_names[i], strlen(eog_names[i]));
		if (t >= 0) {
			vocab_mark_eog(v, t);
			v->attr[t] |= A_CONTROL;
		}
	}
	vocab_mark_eog(v, v->eos);
	vocab_mark_eog(v, v->eot);
	vocab_mark_eog(v, v->eom);
	return KVS_OK;
}

struct special_key {
	uint64_t len;
	int32_t id;
};

/* qsort order for the partitioning list: longer text first, then lower id. */
static int vocab_special_cmp(const void *a, const void *b)
{
	const struct special_key *x = a, *y = b;

	if (x->len != y->len)
		return x->len > y->len ? -1 : 1;
	return x->id < y->id ? -1 : 1;
}

/* True if s contains any of the needles. */
static bool vocab_contains_any(const char *s, size_t n, const char *const *needles)
{
	for (; *needles != NULL; needles++)
		if (memmem(s, n, *needles, strlen(*needles)) != NULL)
			return true;
	return false;
}

/* Set or clear attribute bits on the token with text t (if present). */
static void vocab_set_attr(struct vocab *v, const char *t, uint16_t bits, bool on)
{
	int32_t id = vocab_lookup(v, t, strlen(t));

	if (id >= 0)
		v->attr[id] = (uint16_t)(on ? v->attr[id] | bits : v->attr[id] & ~bits);
}

/* The partitioning list, and the per-model strip attributes llama.cpp sets
 * by name (general.name, tokenizer.ggml.pre). */
static void vocab_build_specials(struct vocab *v, const struct gguf_file *f, struct gguf_str pre)
{
	static const char *const jina[] = { "jina-v2-de", "jina-v2-es", "jina-v2-code", NULL };
	static const char *const phi3[] = { "phi-3", "phi3", NULL };
	struct gguf_str name = { "", 0 };
	char lower[256];
	uint32_t i;
	size_t k;

	struct special_key *keys = xmallocarray(v->n_tokens, sizeof(*keys));

	for (i = 0; i < v->n_tokens; i++) {
		if (v->attr[i] & (A_CONTROL | A_USER | A_UNKNOWN)) {
			keys[v->n_special].len = v->text[i].n;
			keys[v->n_special++].id = (int32_t)i;
		}
	}
	qsort(keys, v->n_special, sizeof(*keys), vocab_special_cmp);
	v->special = xmallocarray(v->n_special + 1, sizeof(*v->special));
	for (k = 0; k < v->n_special; k++)
		v->special[k] = keys[k].id;
	free(keys);

	if (gguf_get_str(f, "general.name", &name, NULL) != KVS_OK)
		name.n = 0;
	for (k = 0; k < name.n && k < sizeof(lower); k++)
		lower[k] = (char)tolower((unsigned char)name.p[k]);
	if (vocab_contains_any(pre.p, pre.n, jina)) {
		vocab_set_attr(v, "<mask>", A_LSTRIP, true);
	} else if (vocab_contains_any(lower, k, phi3)) {
		for (k = 0; k < v->n_special; k++)
			v->attr[v->special[k]] |= A_RSTRIP;
		vocab_set_attr(v, "</s>", A_RSTRIP, true);
		vocab_set_attr(v, "<unk>", A_RSTRIP, false);
		vocab_set_attr(v, "<s>", A_RSTRIP, false);
		vocab_set_attr(v, "<|endoftext|>", A_RSTRIP, false);
	}
}

/* Tokens, types, scores, and the text index. */
static int vocab_load_tokens(struct vocab *v, const struct gguf_file *f, struct err *e)
{
	const struct gguf_kv *toks, *types, *scores;
	size_t own_len = 0, own_cap = 0;
	uint32_t i, j;
	int32_t dup;
	int rc;

	rc = gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_STRING, &toks, e);
	if (rc == KVS_ENOTFOUND)
		return err_set(e, KVS_EFORMAT, "tokenizer.ggml.tokens: missing, expected the token list");
	if (rc != KVS_OK)
		return rc;
	if (toks->arr_n == 0 || toks->arr_n > VOCAB_MAX_ENTRIES)
		return err_set(e, KVS_EFORMAT, "tokenizer.ggml.tokens: %llu entries, expected 1..%u",
		               (unsigned long long)toks->arr_n, VOCAB_MAX_ENTRIES);
	v->n_tokens = (uint32_t)toks->arr_n;
	if ((rc = vocab_get_table(f, "tokenizer.ggml.token_type", GGUF_I32, v->n_tokens, &types, e)) ||
	    (rc = vocab_get_table(f, "tokenizer.ggml.scores", GGUF_F32, v->n_tokens, &scores, e)))
		return rc;

	v->text = xmallocarray(v->n_tokens, sizeof(*v->text));
	v->attr = xmallocarray(v->n_tokens, sizeof(*v->attr));
	v->score = xmallocarray(v->n_tokens, sizeof(*v->score));
	for (i = 0; i < v->n_tokens; i++) {
		v->text[i] = gguf_arr_str(toks, i);
		v->score[i] = scores ? (float)gguf_arr_f64(scores, i) : 0.0f;
		v->attr[i] = types ? 0 : A_NORMAL; /* unknown types: no attribute */
		if (types) {
			int64_t t = gguf_arr_i64(types, i);
			for (j = 0; j < KVS_ARRAY_LEN(vocab_types); j++)
				if (vocab_types[j].type == t)
					v->attr[i] = vocab_types[j].attr;
		}
		if (v->text[i].n == 0) /* llama.cpp renames empty tokens */
			own_len += 32;
	}
	if (own_len > 0) {
		own_cap = own_len;
		v->own_text = xmalloc(own_cap);
		own_len = 0;
		for (i = 0; i < v->n_tokens; i++) {
			if (v->text[i].n != 0)
				continue;
			v->text[i].p = v->own_text + own_len;
			v->text[i].n = (uint64_t)snprintf(v->own_text + own_len, 32, "[EMPTY_%u]", i);
			own_len += 32;
		}
	}

	v->tok_mask = vocab_table_size(v->n_tokens) - 1;
	v->tok_slots = xmallocarray((size_t)v->tok_mask + 1, sizeof(*v->tok_slots));
	memset(v->tok_slots, 0xFF, ((size_t)v->tok_mask + 1) * sizeof(*v->tok_slots));
	for (i = 0; i < v->n_tokens; i++) {
		dup = vocab_index_add(v, (int32_t)i);
		if (dup >= 0)
			return err_set(e, KVS_EFORMAT, "tokenizer.ggml.tokens[%u]: \"%.*s\" repeats token "
			               "%d, expected distinct token texts", i,
			               (int)KVS_MIN(v->text[i].n, 64), v->text[i].p, dup);
	}
	return KVS_OK;
}

/* Byte tokens of an SPM vocabulary: "<0xNN>" (checked), else the byte itself. */
static int vocab_spm_bytes(struct vocab *v, struct err *e)
{
	static const char hex[] = "0123456789ABCDEF";
	char name[7];
	uint32_t i;
	int b;

	for (i = 0; i < v->n_tokens; i++)
		if ((v->attr[i] & A_BYTE) && vocab_byte_of(v->text[i]) < 0)
			return err_set(e, KVS_EFORMAT, "tokenizer.ggml.tokens[%u]: \"%.*s\" has type BYTE, "
			               "expected the form <0xNN> with two hex digits", i,
			               (int)KVS_MIN(v->text[i].n, 64), v->text[i].p);
	for (b = 0; b < 256; b++) {
		char c = (char)b;
		name[0] = '<';
		name[1] = '0';
		name[2] = 'x';
		name[3] = hex[b >> 4];
		name[4] = hex[b & 15];
		name[5] = '>';
		v->byte_tok[b] = vocab_lookup(v, name, 6);
		if (v->byte_tok[b] < 0)
			v->byte_tok[b] = vocab_lookup(v, &c, 1);
	}
	return KVS_OK;
}

/* Load and check the vocabulary of f; opts may override the pre-tokenizer. */
int vocab_load_opts(struct vocab **out, const struct gguf_file *f, const struct vocab_opts *opts,
                    struct err *e)
{
	struct gguf_str model, pre = { "", 0 };
	struct vocab *v;
	int b, rc;
	char names[1024];

	*out = NULL;
	rc = gguf_get_str(f, "tokenizer.ggml.model", &model, e);
	if (rc == KVS_ENOTFOUND)
		return err_set(e, KVS_EFORMAT, "tokenizer.ggml.model: missing, expected \"gpt2\" or "
		               "\"llama\"");
	if (rc != KVS_OK)
		return rc;
	v = xcalloc(1, sizeof(*v));
	v->bos = v->eos = v->eot = v->eom = v->unk = v->sep = v->pad = -1;
	v->fim_pre = v->fim_suf = v->fim_mid = v->fim_pad = v->fim_rep = v->fim_sep = -1;

	if (model.n == 4 && memcmp(model.p, "gpt2", 4) == 0) {
		v->kind = VOCAB_BPE;
		if (opts != NULL && opts->pre != NULL) {
			pre.p = opts->pre;
			pre.n = strlen(opts->pre);
		} else if ((rc = gguf_get_str(f, "tokenizer.ggml.pre", &pre, e)) != KVS_OK) {
			if (rc != KVS_ENOTFOUND)
				goto fail;
			pre.p = "default"; /* llama.cpp warns and uses the default split */
			pre.n = 7;
			log_warn("tokenizer.ggml.pre missing: using the \"default\" pre-tokenizer");
		}
		v->pre = pretok_find(pre.p, pre.n);
		if (v->pre == NULL) {
			pretok_names(names, sizeof(names));
			rc = err_set(e, KVS_EUNSUPPORTED, "tokenizer.ggml.pre: \"%.*s\" is not supported, "
			             "expected one of: %s", (int)KVS_MIN(pre.n, 64), pre.p, names);
			goto fail;
		}
		v->ignore_merges = v->pre->ignore_merges;
		v->add_bos = v->pre->add_bos;
	} else if (model.n == 5 && memcmp(model.p, "llama", 5) == 0) {
		v->kind = VOCAB_SPM;
		v->add_bos = true;
		v->add_space_prefix = true;
	} else {
		rc = err_set(e, KVS_EUNSUPPORTED, "tokenizer.ggml.model: \"%.*s\" is not supported, "
		             "expected \"gpt2\" (byte-level BPE) or \"llama\" (SentencePiece)",
		             (int)KVS_MIN(model.n, 64), model.p);
		goto fail;
	}
	if ((rc = vocab_get_flag(f, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix, e)))
		goto fail;
	if ((rc = vocab_load_tokens(v, f, e)) != KVS_OK)
		goto fail;

	/* default ids (llama.cpp's), where the vocabulary is big enough */
	if (v->kind == VOCAB_SPM) {
		v->bos = 1;
		v->eos = 2;
		v->unk = 0;
	} else {
		v->bos = v->pre->no_bos ? -1 : 11;
		v->eos = 11;
	}
	if (v->bos >= (int32_t)v->n_tokens)
		v->bos = -1;
	if (v->eos >= (int32_t)v->n_tokens)
		v->eos = -1;

	if (v->kind == VOCAB_BPE) {
		vocab_byte_alphabet(v);
		for (b = 0; b < 256; b++)
			v->byte_tok[b] = vocab_lookup(v, v->byte_utf8[b], v->byte_len[b]);
		if ((rc = vocab_load_merges(v, f, e)) != KVS_OK)
			goto fail;
	} else if ((rc = vocab_spm_bytes(v, e)) != KVS_OK) {
		goto fail;
	}
	if ((rc = vocab_load_specials(v, f, e)) != KVS_OK)
		goto fail;
	vocab_build_specials(v, f, v->kind == VOCAB_BPE ? pre : (struct gguf_str){ "", 0 });
	*out = v;
	return KVS_OK;
fail:
	vocab_free(v);
	return rc;
}

/* Load the vocabulary of f as its metadata says. */
int vocab_load(struct vocab **out, const struct gguf_file *f, struct err *e)
{
	return vocab_load_opts(out, f, NULL, e);
}

/* Release v and everything it owns (the map stays with the file). */
void vocab_free(struct vocab *v)
{
	if (v == NULL)
		return;
	free(v->text);
	free(v->score);
	free(v->attr);
	free(v->own_text);
	free(v->tok_slots);
	free(v->merge_slots);
	free(v->text_merges);
	free(v->special);
	free(v);
}

/* ------------------------------------------------------------- accessors */

/* Accessors: see model.h. */
uint32_t vocab_n_tokens(const struct vocab *v)
{
	return v->n_tokens;
}

enum vocab_kind vocab_kind(const struct vocab *v)
{
	return v->kind;
}

const char *vocab_pre_name(const struct vocab *v)
{
	return v->kind == VOCAB_BPE ? v->pre->name : "default";
}

int32_t vocab_bos(const struct vocab *v)
{
	return v->bos;
}

int32_t vocab_eos(const struct vocab *v)
{
	return v->eos;
}

int32_t vocab_eot(const struct vocab *v)
{
	return v->eot;
}

bool vocab_add_bos(const struct vocab *v)
{
	return v->add_bos;
}

/* True if id ends generation (eos, eot, eom, and the texts llama.cpp lists). */
bool vocab_is_eog(const struct vocab *v, int32_t id)
{
	return id >= 0 && (uint32_t)id < v->n_tokens && (v->attr[id] & A_EOG);
}

/* The token type of id as enum token_attr (0 if none or out of range). */
int vocab_token_attr(const struct vocab *v, int32_t id)
{
	size_t j;

	if (id < 0 || (uint32_t)id >= v->n_tokens)
		return 0;
	/* an auto-detected control token may also carry its file type's bit:
	 * report CONTROL first, as llama.cpp's partitioning sees it */
	if (v->attr[id] & A_CONTROL)
		return TOKEN_CONTROL;
	for (j = 0; j < KVS_ARRAY_LEN(vocab_types); j++)
		if (v->attr[id] & vocab_types[j].attr)
			return vocab_types[j].pub;
	return 0;
}

/* Stored text of id (empty for ids out of range). */
struct gguf_str vocab_token_text(const struct vocab *v, int32_t id)
{
	struct gguf_str none = { "", 0 };

	if (id < 0 || (uint32_t)id >= v->n_tokens)
		return none;
	return v->text[id];
}

/* ------------------------------------------------------------ tokenizing */

/* A piece of the input: raw text to tokenize, or one special token. */
struct frag {
	int32_t token; /* -1: raw text */
	size_t off, len;
};

/* A symbol of the merge loop: text[off, off+n) of the word buffer. */
struct sym {
	int32_t prev, next;
	uint32_t off, n; /* n == 0: merged away */
	int32_t id;      /* token of the text, -1 if none */
};

/* A candidate merge of symbols left and right (adjacent when pushed). */
struct bigram {
	int64_t prio;   /* lower first: BPE rank, SPM inverted score */
	int32_t left, right;
	uint32_t size;  /* bytes of both texts when pushed */
	int32_t id;     /* token of the concatenation, -1 if none */
};

/* A word already tokenized in this call: its byte-alphabet text and ids. */
struct wc_slot {
	uint32_t hash;             /* high half of the text's hash */
	uint32_t key_off, key_len; /* in wc_keys; key_len 0: empty slot */
	uint32_t ids_off, n_ids;   /* in wc_ids */
};

#define WC_MAX_WORD 64    /* longer words are not cached */
#define WC_MIN_SLOTS 256
#define WC_MAX_SLOTS 65536

/* Everything one vocab_tokenize call grows and reuses (freed at the end). */
struct tok_ctx {
	const struct vocab *v;
	size_t text_len;
	int32_t **ids;
	size_t *n_ids, *cap_ids;
	struct frag *frags, *frags2; /* current list, next list */
	size_t n_frags, cap_frags, cap_frags2;
	uint32_t *cps;          /* code points of a fragment */
	size_t cap_cps;
	struct pretok_buf pre;
	char *word;             /* a word in the byte alphabet / SPM text */
	size_t cap_word;
	struct sym *syms;
	size_t cap_syms;
	struct bigram *heap;
	size_t n_heap, cap_heap;
	/* word cache (BPE): natural text repeats its words a lot */
	struct wc_slot *wc;
	uint32_t wc_mask;
	size_t wc_count;
	char *wc_keys;
	size_t n_wc_keys, cap_wc_keys;
	int32_t *wc_ids;
	size_t n_wc_ids, cap_wc_ids;
};

/* Append one id to the caller's array. */
static void ctx_emit(struct tok_ctx *c, int32_t id)
{
	if (*c->n_ids == *c->cap_ids) {
		*c->cap_ids = *c->cap_ids ? *c->cap_ids * 2 : 64;
		*c->ids = xreallocarray(*c->ids, *c->cap_ids, sizeof(**c->ids));
	}
	(*c->ids)[(*c->n_ids)++] = id;
}

/* Grow *p (of elem-byte entries, capacity *cap) to hold n. */
static void grow(void **p, size_t *cap, size_t n, size_t elem)
{
	if (n <= *cap)
		return;
	*cap = KVS_MAX(n, *cap * 2);
	*p = xreallocarray(*p, *cap, elem);
}

/* Heap order: lower priority value first, then the leftmost pair. */
static inline bool bigram_before(const struct bigram *a, const struct bigram *b)
{
	return a->prio < b->prio || (a->prio == b->prio && a->left < b->left);
}

/* Add a candidate merge to the heap. */
static void heap_push(struct tok_ctx *c, const struct bigram *g)
{
	size_t i;

	grow((void **)&c->heap, &c->cap_heap, c->n_heap + 1, sizeof(*c->heap));
	i = c->n_heap++;
	while (i > 0 && bigram_before(g, &c->heap[(i - 1) / 2])) {
		c->heap[i] = c->heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	c->heap[i] = *g;
}

/* Remove and return the best candidate merge. */
static struct bigram heap_pop(struct tok_ctx *c)
{
	struct bigram top = c->heap[0], last = c->heap[--c->n_heap];
	size_t i = 0, k;

	for (;;) {
		k = 2 * i + 1;
		if (k >= c->n_heap)
			break;
		if (k + 1 < c->n_heap && bigram_before(&c->heap[k + 1], &c->heap[k]))
			k++;
		if (!bigram_before(&c->heap[k], &last))
			break;
		c->heap[i] = c->heap[k];
		i = k;
	}
	if (c->n_heap > 0)
		c->heap[i] = last;
	return top;
}

/* ---- special-token partitioning ---- */

/* Add a fragment to frags2. */
static void frag_add(struct tok_ctx *c, size_t *n, int32_t token, size_t off, size_t len)
{
	grow((void **)&c->frags2, &c->cap_frags2, *n + 1, sizeof(*c->frags2));
	c->frags2[*n].token = token;
	c->frags2[*n].off = off;
	c->frags2[*n].len = len;
	(*n)++;
}

/* Split the raw fragments at every occurrence of each special token. */
static void vocab_partition(struct tok_ctx *c, const char *text, size_t len, bool parse_special)
{
	const struct vocab *v = c->v;
	size_t s, i, n2, k;
	struct frag *t;

	c->n_frags = 0;
	if (len == 0)
		return;
	grow((void **)&c->frags, &c->cap_frags, 1, sizeof(*c->frags));
	c->frags[0].token = -1;
	c->frags[0].off = 0;
	c->frags[0].len = len;
	c->n_frags = 1;

	for (s = 0; s < v->n_special; s++) {
		int32_t id = v->special[s];
		struct gguf_str tt = v->text[id];
		uint16_t a = v->attr[id];
		bool any = false;

		if (!parse_special && (a & (A_CONTROL | A_UNKNOWN)))
			continue;
		for (i = 0; i < c->n_frags && !any; i++)
			any = c->frags[i].token < 0 && c->frags[i].len >= tt.n &&
			      memmem(text + c->frags[i].off, c->frags[i].len, tt.p, tt.n) != NULL;
		if (!any)
			continue;
		n2 = 0;
		for (i = 0; i < c->n_frags; i++) {
			struct frag f = c->frags[i];
			const char *m;

			if (f.token >= 0) {
				frag_add(c, &n2, f.token, 0, 0);
				continue;
			}
			while (f.len > 0 &&
			       (m = memmem(text + f.off, f.len, tt.p, tt.n)) != NULL) {
				size_t at = (size_t)(m - text), left = at - f.off;
				size_t r_off = at + tt.n, r_len = f.off + f.len - r_off;

				if (a & A_LSTRIP)
					while (left > 0 && isspace((unsigned char)text[f.off + left - 1]))
						left--;
				if (left > 0)
					frag_add(c, &n2, -1, f.off, left);
				frag_add(c, &n2, id, 0, 0);
				if (a & A_RSTRIP)
					while (r_len > 0 && isspace((unsigned char)text[r_off])) {
						r_off++;
						r_len--;
					}
				f.off = r_off;
				f.len = r_len;
			}
			if (f.len > 0)
				frag_add(c, &n2, -1, f.off, f.len);
		}
		t = c->frags;
		c->frags = c->frags2;
		c->frags2 = t;
		k = c->cap_frags;
		c->cap_frags = c->cap_frags2;
		c->cap_frags2 = k;
		c->n_frags = n2;
	}
}

/* ---- byte-level BPE ---- */

/* Rank and result of merging symbols a and b, via the text merges. */
static int32_t bpe_text_rank(struct tok_ctx *c, const struct sym *a, const struct sym *b,
                             int32_t *merged)
{
	const struct vocab *v = c->v;
	size_t i;

	for (i = 0; i < v->n_text_merges; i++) {
		const struct text_merge *m = &v->text_merges[i];
		if (m->left.n == a->n && m->right.n == b->n &&
		    memcmp(m->left.p, c->word + a->off, a->n) == 0 &&
		    memcmp(m->right.p, c->word + b->off, b->n) == 0) {
			*merged = vocab_lookup(v, c->word + a->off, a->n + b->n);
			return m->rank;
		}
	}
	return -1;
}

/* Push the merge of symbols l and r if the merge list has it. */
static void bpe_try_pair(struct tok_ctx *c, int32_t l, int32_t r)
{
	const struct vocab *v = c->v;
	const struct sym *a, *b;
	struct bigram g;
	int32_t rank = -1, merged = -1;

	if (l < 0 || r < 0)
		return;
	a = &c->syms[l];
	b = &c->syms[r];
	if (a->id >= 0 && b->id >= 0) {
		const struct merge_slot *s = vocab_merge_slot(v, a->id, b->id);
		if (s->rank >= 0) {
			rank = s->rank;
			merged = s->merged;
		}
	}
	if (rank < 0 && v->n_text_merges > 0)
		rank = bpe_text_rank(c, a, b, &merged);
	if (rank < 0)
		return;
	g.prio = rank;
	g.left = l;
	g.right = r;
	g.size = a->n + b->n;
	g.id = merged;
	heap_push(c, &g);
}

/* Tokenize one pre-token word, already spelled in the byte alphabet in
 * c->word[0, n) with one symbol per input byte in c->syms[0, n_sym). */
static void bpe_word(struct tok_ctx *c, size_t n, size_t n_sym)
{
	const struct vocab *v = c->v;
	int32_t i, id;
	size_t k;

	if (v->ignore_merges && (id = vocab_lookup(v, c->word, n)) >= 0) {
		ctx_emit(c, id);
		return;
	}
	c->n_heap = 0;
	for (k = 1; k < n_sym; k++)
		bpe_try_pair(c, (int32_t)k - 1, (int32_t)k);
	while (c->n_heap > 0) {
		struct bigram g = heap_pop(c);
		struct sym *a = &c->syms[g.left], *b = &c->syms[g.right];

		if (a->n == 0 || b->n == 0 || a->n + b->n != g.size)
			continue; /* stale: one side changed since the push */
		a->n += b->n;
		a->id = g.id;
		b->n = 0;
		a->next = b->next;
		if (b->next >= 0)
			c->syms[b->next].prev = g.left;
		bpe_try_pair(c, a->prev, g.left);
		bpe_try_pair(c, g.left, a->next);
	}
	for (i = 0; i >= 0; i = c->syms[i].next) {
		const struct sym *s = &c->syms[i];
		if (s->id >= 0) {
			ctx_emit(c, s->id);
			continue;
		}
		/* not a token: llama.cpp tries each byte of its text alone */
		for (k = 0; k < s->n; k++)
			if ((id = vocab_lookup(v, c->word + s->off + k, 1)) >= 0)
				ctx_emit(c, id);
	}
}

/* The cache slot of word[0, n) with hash h: its entry, or the empty slot
 * where it would go. */
static struct wc_slot *wc_find(struct tok_ctx *c, uint64_t h, const char *word, size_t n)
{
	uint32_t i = (uint32_t)h & c->wc_mask;

	for (;; i = (i + 1) & c->wc_mask) {
		struct wc_slot *s = &c->wc[i];
		if (s->key_len == 0 ||
		    (s->hash == (uint32_t)(h >> 32) && s->key_len == n &&
		     memcmp(c->wc_keys + s->key_off, word, n) == 0))
			return s;
	}
}

/* Remember that word[0, n) gave ids[first, *n_ids) in slot s. */
static void wc_store(struct tok_ctx *c, struct wc_slot *s, uint64_t h, const char *word, size_t n,
                     size_t first)
{
	size_t k = *c->n_ids - first;

	if (c->wc_count >= (c->wc_mask + 1) / 2)
		return; /* full enough: stop caching */
	grow((void **)&c->wc_keys, &c->cap_wc_keys, c->n_wc_keys + n, 1);
	grow((void **)&c->wc_ids, &c->cap_wc_ids, c->n_wc_ids + k, sizeof(*c->wc_ids));
	memcpy(c->wc_keys + c->n_wc_keys, word, n);
	memcpy(c->wc_ids + c->n_wc_ids, *c->ids + first, k * sizeof(*c->wc_ids));
	s->hash = (uint32_t)(h >> 32);
	s->key_off = (uint32_t)c->n_wc_keys;
	s->key_len = (uint32_t)n;
	s->ids_off = (uint32_t)c->n_wc_ids;
	s->n_ids = (uint32_t)k;
	c->n_wc_keys += n;
	c->n_wc_ids += k;
	c->wc_count++;
}

/* Tokenize one raw fragment with byte-level BPE. */
static void bpe_fragment(struct tok_ctx *c, const uint8_t *s, size_t len)
{
	const struct vocab *v = c->v;
	const uint32_t *ends;
	size_t n_cp = 0, pos, n_words, w, start, i, k, n, n_sym, max_word = 0;
	char u[4];

	grow((void **)&c->cps, &c->cap_cps, len, sizeof(*c->cps));
	for (pos = 0; pos < len;)
		pos += ucp_decode_lax(s + pos, len - pos, &c->cps[n_cp++]);
	n_words = pretok_split(v->pre, c->cps, n_cp, &c->pre, &ends);
	for (w = 0, start = 0; w < n_words; start = ends[w++])
		max_word = KVS_MAX(max_word, ends[w] - start);
	/* a code point is at most 4 bytes, each spelled in at most 2 */
	grow((void **)&c->word, &c->cap_word, 8 * max_word, 1);
	grow((void **)&c->syms, &c->cap_syms, 4 * max_word, sizeof(*c->syms));
	if (c->wc == NULL) {
		size_t slots = WC_MIN_SLOTS;
		while (slots < WC_MAX_SLOTS && slots < c->text_len / 2)
			slots <<= 1;
		c->wc = xcalloc(slots, sizeof(*c->wc));
		c->wc_mask = (uint32_t)slots - 1;
	}

	for (w = 0, start = 0; w < n_words; start = ends[w++]) {
		n = 0;
		n_sym = 0;
		for (i = start; i < ends[w]; i++) {
			size_t nb = ucp_encode(c->cps[i], u);
			for (k = 0; k < nb; k++) {
				uint8_t b = (uint8_t)u[k];
				struct sym *y = &c->syms[n_sym];
				y->prev = (int32_t)n_sym - 1;
				y->next = (int32_t)n_sym + 1;
				y->off = (uint32_t)n;
				y->n = v->byte_len[b];
				y->id = v->byte_tok[b];
				memcpy(c->word + n, v->byte_utf8[b], v->byte_len[b]);
				n += v->byte_len[b];
				n_sym++;
			}
		}
		c->syms[n_sym - 1].next = -1;
		if (n <= WC_MAX_WORD) {
			uint64_t h = vocab_hash(c->word, n);
			struct wc_slot *slot = wc_find(c, h, c->word, n);
			size_t first = *c->n_ids;

			if (slot->key_len != 0) {
				for (k = 0; k < slot->n_ids; k++)
					ctx_emit(c, c->wc_ids[slot->ids_off + k]);
				continue;
			}
			bpe_word(c, n, n_sym);
			wc_store(c, slot, h, c->word, n, first);
			continue;
		}
		bpe_word(c, n, n_sym);
	}
}

/* ---- SentencePiece ---- */

/* Key making higher scores come first in the min-heap (-0 == +0). */
static int64_t spm_prio(float score)
{
	uint32_t u;

	if (score == 0.0f)
		score = 0.0f;
	memcpy(&u, &score, 4);
	u = (u & 0x80000000u) ? ~u : (u | 0x80000000u); /* order-preserving */
	return -(int64_t)u;
}

/* Push the merge of symbols l and r if their concatenation is a token. */
static void spm_try_pair(struct tok_ctx *c, int32_t l, int32_t r)
{
	const struct sym *a, *b;
	struct bigram g;
	int32_t id;

	if (l < 0 || r < 0)
		return;
	a = &c->syms[l];
	b = &c->syms[r];
	id = vocab_lookup(c->v, c->word + a->off, a->n + b->n); /* adjacent texts */
	if (id < 0)
		return;
	g.prio = spm_prio(c->v->score[id]);
	g.left = l;
	g.right = r;
	g.size = a->n + b->n;
	g.id = id;
	heap_push(c, &g);
}

/* Length of the UTF-8 sequence a lead byte announces, by its high nibble
 * (llama.cpp's rule: continuation bytes count as 1). */
static size_t spm_char_len(uint8_t b)
{
	static const uint8_t len[16] = { 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4 };

	return len[b >> 4];
}

/* Tokenize one raw fragment with SentencePiece; space_prefix: prepend " ". */
static void spm_fragment(struct tok_ctx *c, const char *s, size_t len, bool space_prefix)
{
	const struct vocab *v = c->v;
	size_t n = 0, i, n_sym = 0, k;
	int32_t j, id;

	/* spaces become U+2581 (3 bytes) */
	grow((void **)&c->word, &c->cap_word, 3 * (len + 1), 1);
	if (space_prefix) {
		memcpy(c->word, "\xe2\x96\x81", 3);
		n = 3;
	}
	for (i = 0; i < len; i++) {
		if (s[i] == ' ') {
			memcpy(c->word + n, "\xe2\x96\x81", 3);
			n += 3;
		} else {
			c->word[n++] = s[i];
		}
	}
	if (n == 0)
		return;
	grow((void **)&c->syms, &c->cap_syms, n, sizeof(*c->syms));
	for (i = 0; i < n; n_sym++) {
		struct sym *y = &c->syms[n_sym];
		size_t cl = KVS_MIN(spm_char_len((uint8_t)c->word[i]), n - i);
		y->prev = (int32_t)n_sym - 1;
		y->next = i + cl < n ? (int32_t)n_sym + 1 : -1;
		y->off = (uint32_t)i;
		y->n = (uint32_t)cl;
		y->id = -2; /* looked up at the end if never merged */
		i += cl;
	}
	c->n_heap = 0;
	for (k = 1; k < n_sym; k++)
		spm_try_pair(c, (int32_t)k - 1, (int32_t)k);
	while (c->n_heap > 0) {
		struct bigram g = heap_pop(c);
		struct sym *a = &c->syms[g.left], *b = &c->syms[g.right];

		if (a->n == 0 || b->n == 0 || a->n + b->n != g.size)
			continue;
		a->n += b->n;
		a->id = g.id;
		b->n = 0;
		a->next = b->next;
		if (b->next >= 0)
			c->syms[b->next].prev = g.left;
		spm_try_pair(c, a->prev, g.left);
		spm_try_pair(c, g.left, a->next);
	}
	for (j = 0; j >= 0; j = c->syms[j].next) {
		const struct sym *y = &c->syms[j];
		id = y->id >= 0 ? y->id : vocab_lookup(v, c->word + y->off, y->n);
		if (id >= 0) {
			ctx_emit(c, id);
			continue;
		}
		/* byte fallback; llama.cpp aborts when a byte has no token, we
		 * emit UNK (or nothing without one) */
		for (k = 0; k < y->n; k++) {
			id = v->byte_tok[(uint8_t)c->word[y->off + k]];
			if (id < 0)
				id = v->unk;
			if (id >= 0)
				ctx_emit(c, id);
		}
	}
}

/* Tokenize text: partition, then each fragment by the model, BOS/EOS around. */
int vocab_tokenize(const struct vocab *v, const char *text, size_t len, bool add_special,
                   bool parse_special, int32_t **ids, size_t *n, size_t *cap, struct err *e)
{
	struct tok_ctx c;
	bool prev_special = true;
	size_t i;

	if (len > (size_t)INT32_MAX / 8)
		return err_set(e, KVS_ERANGE, "text of %zu bytes is too long to tokenize at once, "
		               "expected at most %d", len, INT32_MAX / 8);
	memset(&c, 0, sizeof(c));
	c.v = v;
	c.text_len = len;
	c.ids = ids;
	c.n_ids = n;
	c.cap_ids = cap;
	if (add_special && v->add_bos)
		ctx_emit(&c, v->bos);
	vocab_partition(&c, text, len, parse_special);
	for (i = 0; i < c.n_frags; i++) {
		const struct frag *f = &c.frags[i];
		if (f->token >= 0) {
			ctx_emit(&c, f->token);
			prev_special = true;
		} else if (v->kind == VOCAB_BPE) {
			bpe_fragment(&c, (const uint8_t *)text + f->off, f->len);
		} else {
			spm_fragment(&c, text + f->off, f->len, v->add_space_prefix && prev_special);
			prev_special = false;
		}
	}
	if (add_special && v->add_eos)
		ctx_emit(&c, v->eos);
	free(c.frags);
	free(c.frags2);
	free(c.cps);
	pretok_buf_free(&c.pre);
	free(c.word);
	free(c.syms);
	free(c.heap);
	free(c.wc);
	free(c.wc_keys);
	free(c.wc_ids);
	return KVS_OK;
}

/* ---------------------------------------------------------- detokenizing */

/* Copy src[0, n) to buf if it fits; return n. */
static size_t piece_copy(char *buf, size_t cap, const char *src, size_t n)
{
	if (n <= cap)
		memcpy(buf, src, n);
	return n;
}

/* BPE: map the byte-alphabet text of a token back to bytes. */
static size_t piece_bpe(const struct vocab *v, struct gguf_str t, char *buf, size_t cap)
{
	size_t pos = 0, n = 0, k, nb;
	uint32_t cp;
	char u[4], hex[4];

	while (pos < t.n) {
		pos += ucp_decode_lax((const uint8_t *)t.p + pos, t.n - pos, &cp);
		if (cp < 0x144 && v->unbyte[cp] >= 0) {
			if (n < cap)
				buf[n] = (char)v->unbyte[cp];
			n++;
			continue;
		}
		/* not in the alphabet: llama.cpp writes a marker, and so do we */
		n += piece_copy(buf + KVS_MIN(n, cap), n < cap ? cap - n : 0, "[UNK_BYTE_0x", 12);
		nb = ucp_encode(cp, u);
		for (k = 0; k < nb; k++) {
			snprintf(hex, sizeof(hex), "%02x", (uint8_t)u[k]);
			n += piece_copy(buf + KVS_MIN(n, cap), n < cap ? cap - n : 0, hex, 2);
		}
		n += piece_copy(buf + KVS_MIN(n, cap), n < cap ? cap - n : 0, t.p, t.n);
		n += piece_copy(buf + KVS_MIN(n, cap), n < cap ? cap - n : 0, "]", 1);
	}
	return n;
}

/* SPM: U+2581 back to spaces. */
static size_t piece_spm(struct gguf_str t, char *buf, size_t cap)
{
	size_t pos = 0, n = 0;

	while (pos < t.n) {
		if (t.n - pos >= 3 && memcmp(t.p + pos, "\xe2\x96\x81", 3) == 0) {
			if (n < cap)
				buf[n] = ' ';
			pos += 3;
		} else {
			if (n < cap)
				buf[n] = t.p[pos];
			pos++;
		}
		n++;
	}
	return n;
}

/* Bytes of one token as llama.cpp renders it; returns the full length. */
size_t vocab_piece(const struct vocab *v, int32_t id, bool render_special, char *buf, size_t cap)
{
	struct gguf_str t;
	uint16_t a;
	char b;

	if (id < 0 || (uint32_t)id >= v->n_tokens)
		return 0;
	a = v->attr[id];
	t = v->text[id];
	if (a & A_SPECIAL)
		return render_special ? piece_copy(buf, cap, t.p, t.n) : 0;
	if (a & A_USER)
		return piece_copy(buf, cap, t.p, t.n);
	if (a & A_NORMAL)
		return v->kind == VOCAB_BPE ? piece_bpe(v, t, buf, cap) : piece_spm(t, buf, cap);
	if ((a & A_BYTE) && v->kind == VOCAB_SPM) {
		b = (char)vocab_byte_of(t);
		return piece_copy(buf, cap, &b, 1);
	}
	return 0; /* unused / undefined: nothing, as llama.cpp */
}

/* Start a stream; SPM vocabularies drop the first text token's space. */
void detok_init(struct detok *d, const struct vocab *v, bool render_special)
{
	memset(d, 0, sizeof(*d));
	d->v = v;
	d->render_special = render_special;
	d->first = v->add_space_prefix;
}

/* Append n bytes to the output buffer. */
static void detok_out(char **out, size_t *n, size_t *cap, const char *p, size_t k)
{
	if (k == 0)
		return;
	if (*n + k > *cap) {
		*cap = KVS_MAX(*n + k, *cap * 2 + 64);
		*out = xrealloc(*out, *cap);
	}
	memcpy(*out + *n, p, k);
	*n += k;
}

/* Bytes a lead byte announces (0 if it cannot lead a valid sequence). */
static size_t detok_need(uint8_t b)
{
	if (b >= 0xC2 && b <= 0xDF)
		return 2;
	if (b >= 0xE0 && b <= 0xEF)
		return 3;
	if (b >= 0xF0 && b <= 0xF4)
		return 4;
	return 0;
}

/* May byte b follow pending[0..k) in a valid sequence? */
static bool detok_cont_ok(const char *pending, size_t k, uint8_t b)
{
	uint8_t lead = (uint8_t)pending[0], lo = 0x80, hi = 0xBF;

	if (k == 1) {
		if (lead == 0xE0)
			lo = 0xA0;
		else if (lead == 0xED)
			hi = 0x9F;
		else if (lead == 0xF0)
			lo = 0x90;
		else if (lead == 0xF4)
			hi = 0x8F;
	}
	return b >= lo && b <= hi;
}

static const char detok_fffd[] = "\xef\xbf\xbd";

/* Feed bytes through the UTF-8 assembler, writing whole characters. */
static void detok_feed(struct detok *d, const char *p, size_t k, char **out, size_t *n,
                       size_t *cap)
{
	size_t i, run = 0;

	for (i = 0; i < k; i++) {
		uint8_t b = (uint8_t)p[i];

		if (d->n_pending == 0) {
			if (b < 0x80) {
				run++; /* ASCII runs are copied in one go */
				continue;
			}
			detok_out(out, n, cap, p + i - run, run);
			run = 0;
			if (detok_need(b) == 0) {
				detok_out(out, n, cap, detok_fffd, 3);
				continue;
			}
			d->pending[d->n_pending++] = (char)b;
			continue;
		}
		if (detok_cont_ok(d->pending, d->n_pending, b)) {
			d->pending[d->n_pending++] = (char)b;
			if (d->n_pending == detok_need((uint8_t)d->pending[0])) {
				detok_out(out, n, cap, d->pending, d->n_pending);
				d->n_pending = 0;
			}
			continue;
		}
		/* the held sequence is broken: one U+FFFD, then b starts afresh */
		detok_out(out, n, cap, detok_fffd, 3);
		d->n_pending = 0;
		i--;
	}
	detok_out(out, n, cap, p + k - run, run);
}

/* Append the whole characters that id completes to out. */
size_t detok_push(struct detok *d, int32_t id, char **out, size_t *n, size_t *cap)
{
	char small[256], *buf = small;
	size_t len, before = *n, skip = 0;
	int attr = vocab_token_attr(d->v, id);

	len = vocab_piece(d->v, id, d->render_special, small, sizeof(small));
	if (len > sizeof(small)) {
		buf = xmalloc(len);
		vocab_piece(d->v, id, d->render_special, buf, len);
	}
	/* SPM: the space the tokenizer put before the text is not the text's */
	if (d->first && attr != TOKEN_CONTROL && attr != TOKEN_UNKNOWN) {
		if (len > 0 && buf[0] == ' ')
			skip = 1;
		d->first = false;
	}
	detok_feed(d, buf + skip, len - skip, out, n, cap);
	if (buf != small)
		free(buf);
	return *n - before;
}

/* End the stream: a held incomplete sequence becomes U+FFFD. */
size_t detok_flush(struct detok *d, char **out, size_t *n, size_t *cap)
{
	size_t before = *n;

	if (d->n_pending > 0) {
		detok_out(out, n, cap, detok_fffd, 3);
		d->n_pending = 0;
	}
	return *n - before;
}
