/*
 * vocab-tokenize.c: text to token ids (vocab_tokenize), equal to llama.cpp's
 * (commit c392e50) for the vocabularies vocab.c accepts.
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
 */
#include "model/model-int.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

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
	int64_t prio; /* lower first: BPE rank, SPM inverted score */
	int32_t left, right;
	uint32_t size; /* bytes of both texts when pushed */
	int32_t id;    /* token of the concatenation, -1 if none */
};

/* A word already tokenized in this call: its byte-alphabet text and ids. */
struct wc_slot {
	uint32_t hash;             /* high half of the text's hash */
	uint32_t key_off, key_len; /* in wc_keys; key_len 0: empty slot */
	uint32_t ids_off, n_ids;   /* in wc_ids */
};

#define WC_MAX_WORD 64 /* longer words are not cached */
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
	uint32_t *cps; /* code points of a fragment */
	size_t cap_cps;
	struct pretok_buf pre;
	char *word; /* a word in the byte alphabet / SPM text */
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

		if (!parse_special && (a & (VOCAB_A_CONTROL | VOCAB_A_UNKNOWN)))
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
			while (f.len > 0 && (m = memmem(text + f.off, f.len, tt.p, tt.n)) != NULL) {
				size_t at = (size_t)(m - text), left = at - f.off;
				size_t r_off = at + tt.n, r_len = f.off + f.len - r_off;

				if (a & VOCAB_A_LSTRIP)
					while (left > 0 && isspace((unsigned char)text[f.off + left - 1]))
						left--;
				if (left > 0)
					frag_add(c, &n2, -1, f.off, left);
				frag_add(c, &n2, id, 0, 0);
				if (a & VOCAB_A_RSTRIP)
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

/* Merge the best pair off the heap until none is left: the symbols it
 * joins become one, and try_pair pushes the new pairs with each neighbour
 * (BPE by merge rank, SentencePiece by score). A pair whose sides changed
 * since it was pushed is stale and skipped. */
static void tok_merge(struct tok_ctx *c, void (*try_pair)(struct tok_ctx *c, int32_t l, int32_t r))
{
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
		try_pair(c, a->prev, g.left);
		try_pair(c, g.left, a->next);
	}
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
	tok_merge(c, bpe_try_pair);
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
			size_t nb = utf8_encode_any(c->cps[i], u);
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
 * (llama.cpp's rule: continuation bytes count as 1). Deliberately not the
 * strict utf8_lead_len: 0xC0, 0xC1 and 0xF5..0xFF lead here too. */
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
	tok_merge(c, spm_try_pair);
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
		return err_set(e, KVS_ERANGE,
		               "text of %zu bytes is too long to tokenize at once, "
		               "expected at most %d",
		               len, INT32_MAX / 8);
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
