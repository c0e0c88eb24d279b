/*
 * vocab.c: the vocabulary: loading it from a GGUF file, and looking tokens
 * up by text and by id. vocab-tokenize.c turns text into ids with it and
 * detok.c ids back into text; model-int.h holds the struct the three share.
 * Equal to llama.cpp's (commit c392e50) for the vocabularies we accept.
 *
 * Loading reads the tokenizer.ggml.* keys, checks every count, type, id and
 * merge, and builds two hash tables: token text -> id, and for byte-level
 * BPE (id of left part, id of right part) -> (merge rank, id of the result).
 * Token texts stay in the mapped file; nothing is copied per token. The
 * special tokens are found by their keys or, as llama.cpp does, by their
 * text; the partitioning list (longest text first) is built here too.
 */
#include "model/model-int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Most tokens or merges we accept (real vocabularies hold < 300,000); keeps
 * every hash table size a 32-bit power of two. */
#define VOCAB_MAX_ENTRIES (1u << 24)

/* tokenizer.ggml.token_type values and the attribute each gives. */
static const struct {
	int32_t type;
	uint16_t attr;
	enum token_attr pub;
} vocab_types[] = {
	{ TOKEN_NORMAL, VOCAB_A_NORMAL, TOKEN_NORMAL },
	{ TOKEN_UNKNOWN, VOCAB_A_UNKNOWN, TOKEN_UNKNOWN },
	{ TOKEN_CONTROL, VOCAB_A_CONTROL, TOKEN_CONTROL },
	{ TOKEN_USER_DEFINED, VOCAB_A_USER, TOKEN_USER_DEFINED },
	{ TOKEN_UNUSED, VOCAB_A_UNUSED, TOKEN_UNUSED },
	{ TOKEN_BYTE, VOCAB_A_BYTE, TOKEN_BYTE },
};

/* ------------------------------------------------------------------ hashing */

/* A fast 64-bit hash of a short byte string. */
uint64_t vocab_hash(const char *p, size_t n)
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
struct merge_slot *vocab_merge_slot(const struct vocab *v, int32_t left, int32_t right)
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
static int vocab_get_id(const struct gguf_file *f, const char *key, uint32_t n_tokens, int32_t *id,
                        struct err *e)
{
	const struct gguf_kv *kv = gguf_find_kv(f, key);
	int64_t val;

	if (kv == NULL)
		return KVS_OK;
	switch (kv->type) {
	case GGUF_U8:
	case GGUF_U16:
	case GGUF_U32:
	case GGUF_U64: val = kv->v.u > INT64_MAX ? INT64_MAX : (int64_t)kv->v.u; break;
	case GGUF_I8:
	case GGUF_I16:
	case GGUF_I32:
	case GGUF_I64: val = kv->v.i; break;
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
int vocab_byte_of(struct gguf_str t)
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
		v->byte_len[b] = (uint8_t)utf8_encode_any(cp, tmp);
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
		return err_set(e, KVS_EFORMAT,
		               "tokenizer.ggml.merges: missing, expected the merge "
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
			return err_set(e, KVS_EFORMAT,
			               "tokenizer.ggml.merges[%llu]: \"%.*s\", expected two "
			               "non-empty parts separated by a space",
			               (unsigned long long)i, (int)KVS_MIN(m.n, 64), m.p);
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
				v->text_merges = xreallocarray(v->text_merges, cap_text, sizeof(*v->text_merges));
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
		v->attr[best] |= VOCAB_A_CONTROL;
	}
}

static const char *const eot_names[] = { "<|eot_id|>",
	                                     "<|im_end|>",
	                                     "<|end|>",
	                                     "<end_of_turn>",
	                                     "<|endoftext|>",
	                                     "<EOT>",
	                                     "<\xef\xbd\x9c"
	                                     "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
	                                     NULL };
static const char *const eom_names[] = { "<|eom_id|>", NULL };
static const char *const fim_pre_names[] = { "<|fim_prefix|>", "<fim-prefix>",
	                                         "<\xef\xbd\x9c"
	                                         "fim\xe2\x96\x81"
	                                         "begin\xef\xbd\x9c>",
	                                         "<PRE>", NULL };
static const char *const fim_suf_names[] = { "<|fim_suffix|>", "<fim-suffix>",
	                                         "<\xef\xbd\x9c"
	                                         "fim\xe2\x96\x81hole\xef\xbd\x9c>",
	                                         "<SUF>", NULL };
static const char *const fim_mid_names[] = { "<|fim_middle|>", "<fim-middle>",
	                                         "<\xef\xbd\x9c"
	                                         "fim\xe2\x96\x81"
	                                         "end\xef\xbd\x9c>",
	                                         "<MID>", NULL };
static const char *const fim_pad_names[] = { "<|fim_pad|>", "<fim-pad>", "<PAD>", NULL };
static const char *const fim_rep_names[] = { "<|fim_repo|>", "<|repo_name|>", "<fim-repo>",
	                                         "<REPO>", NULL };
static const char *const fim_sep_names[] = { "<|file_sep|>", NULL };
/* Texts that end generation whatever their id (llama.cpp's list). */
static const char *const eog_names[] = { "<|eot_id|>",    "<|im_end|>", "<|end|>", "<end_of_turn>",
	                                     "<|endoftext|>", "<|eom_id|>", "<EOT>",   NULL };

/* Mark id as end-of-generation (ignoring -1). */
static void vocab_mark_eog(struct vocab *v, int32_t id)
{
	if (id >= 0)
		v->attr[id] |= VOCAB_A_EOG;
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
		return err_set(e, KVS_EFORMAT,
		               "tokenizer.ggml.add_bos_token: true, but the vocabulary "
		               "has no BOS token (expected tokenizer.ggml.bos_token_id)");
	if (v->add_eos && v->eos < 0)
		return err_set(e, KVS_EFORMAT,
		               "tokenizer.ggml.add_eos_token: true, but the vocabulary "
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
			v->attr[t] |= VOCAB_A_CONTROL;
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
		if (v->attr[i] & (VOCAB_A_CONTROL | VOCAB_A_USER | VOCAB_A_UNKNOWN)) {
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
		vocab_set_attr(v, "<mask>", VOCAB_A_LSTRIP, true);
	} else if (vocab_contains_any(lower, k, phi3)) {
		for (k = 0; k < v->n_special; k++)
			v->attr[v->special[k]] |= VOCAB_A_RSTRIP;
		vocab_set_attr(v, "</s>", VOCAB_A_RSTRIP, true);
		vocab_set_attr(v, "<unk>", VOCAB_A_RSTRIP, false);
		vocab_set_attr(v, "<s>", VOCAB_A_RSTRIP, false);
		vocab_set_attr(v, "<|endoftext|>", VOCAB_A_RSTRIP, false);
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
		v->attr[i] = types ? 0 : VOCAB_A_NORMAL; /* unknown types: no attribute */
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
			return err_set(e, KVS_EFORMAT,
			               "tokenizer.ggml.tokens[%u]: \"%.*s\" repeats token "
			               "%d, expected distinct token texts",
			               i, (int)KVS_MIN(v->text[i].n, 64), v->text[i].p, dup);
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
		if ((v->attr[i] & VOCAB_A_BYTE) && vocab_byte_of(v->text[i]) < 0)
			return err_set(e, KVS_EFORMAT,
			               "tokenizer.ggml.tokens[%u]: \"%.*s\" has type BYTE, "
			               "expected the form <0xNN> with two hex digits",
			               i, (int)KVS_MIN(v->text[i].n, 64), v->text[i].p);
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
		return err_set(e, KVS_EFORMAT,
		               "tokenizer.ggml.model: missing, expected \"gpt2\" or "
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
			rc = err_set(e, KVS_EUNSUPPORTED,
			             "tokenizer.ggml.pre: \"%.*s\" is not supported, "
			             "expected one of: %s",
			             (int)KVS_MIN(pre.n, 64), pre.p, names);
			goto fail;
		}
		v->ignore_merges = v->pre->ignore_merges;
		v->add_bos = v->pre->add_bos;
	} else if (model.n == 5 && memcmp(model.p, "llama", 5) == 0) {
		v->kind = VOCAB_SPM;
		v->add_bos = true;
		v->add_space_prefix = true;
	} else {
		rc = err_set(e, KVS_EUNSUPPORTED,
		             "tokenizer.ggml.model: \"%.*s\" is not supported, "
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
	return id >= 0 && (uint32_t)id < v->n_tokens && (v->attr[id] & VOCAB_A_EOG);
}

/* The token type of id as enum token_attr (0 if none or out of range). */
int vocab_token_attr(const struct vocab *v, int32_t id)
{
	size_t j;

	if (id < 0 || (uint32_t)id >= v->n_tokens)
		return 0;
	/* an auto-detected control token may also carry its file type's bit:
	 * report CONTROL first, as llama.cpp's partitioning sees it */
	if (v->attr[id] & VOCAB_A_CONTROL)
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
