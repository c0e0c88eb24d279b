/*
 * pretok.c: pre-tokenizers, the first step of byte-level BPE.
 *
 * Each tokenizer family splits text into words with a list of regular
 * expressions applied in turn: every pass refines the words of the previous
 * one, and both the matches and the text between matches become words.
 * llama.cpp runs two of these patterns (GPT-2's and llama-3's) through
 * hand-written matchers and the rest through std::regex over a "collapsed"
 * copy of the text. We hand-write every pass: each is a short loop over code
 * points that mirrors its pattern's ordered alternation (first alternative
 * that matches wins, quantifiers greedy), using the class flags of
 * unicode.c. Every pass works inside one word of the previous pass and
 * never looks across its edges, which is what keeps "\s+(?!\S)" from seeing
 * past a digit that an earlier pass split off.
 *
 * Words are kept as a list of end offsets (in code points); two arrays in a
 * caller-owned scratch buffer hold the input and output of a pass.
 */
#include "model/model-int.h"

#include <stdlib.h>
#include <string.h>

#define PASSES(...)             \
	{                           \
		__VA_ARGS__, PRETOK_END \
	}

/* Every name llama.cpp (c392e50) accepts for byte-level BPE that we can
 * split exactly; the defaults follow its vocabulary loader. */
static const struct pretok_info pretok_table[] = {
	/* name            passes                                              ign    bos    nobos */
	{ "default", PASSES(PRETOK_PUNCT_RUNS, PRETOK_GPT2, PRETOK_NUM_RUNS, PRETOK_DIGITS3), false,
	  false, false },
	{ "llama3", PASSES(PRETOK_LLAMA3), true, true, false },
	{ "llama-v3", PASSES(PRETOK_LLAMA3), true, true, false },
	{ "llama-bpe", PASSES(PRETOK_LLAMA3), true, true, false },
	{ "falcon3", PASSES(PRETOK_LLAMA3), true, true, false },
	{ "dbrx", PASSES(PRETOK_LLAMA3), false, false, false },
	{ "smaug-bpe", PASSES(PRETOK_LLAMA3), false, false, false },
	{ "chatglm-bpe", PASSES(PRETOK_LLAMA3), false, false, true },
	{ "falcon", PASSES(PRETOK_PUNCT_RUNS_BT, PRETOK_GPT2, PRETOK_DIGITS3), false, false, false },
	{ "gpt-2", PASSES(PRETOK_GPT2), false, false, false },
	{ "phi-2", PASSES(PRETOK_GPT2), false, false, false },
	{ "jina-es", PASSES(PRETOK_GPT2), false, false, false },
	{ "jina-de", PASSES(PRETOK_GPT2), false, false, false },
	{ "gigachat", PASSES(PRETOK_GPT2), false, false, false },
	{ "jina-v1-en", PASSES(PRETOK_GPT2), false, false, false },
	{ "jina-v2-es", PASSES(PRETOK_GPT2), false, false, false },
	{ "jina-v2-de", PASSES(PRETOK_GPT2), false, false, false },
	{ "jina-v2-code", PASSES(PRETOK_GPT2), false, false, false },
	{ "roberta-bpe", PASSES(PRETOK_GPT2), false, false, false },
	{ "mpt", PASSES(PRETOK_GPT2), false, false, false },
	{ "olmo", PASSES(PRETOK_GPT2), false, false, false },
	{ "jais", PASSES(PRETOK_GPT2), false, false, false },
	{ "smollm", PASSES(PRETOK_NUM_EACH, PRETOK_GPT2), false, false, false },
	{ "starcoder", PASSES(PRETOK_NUM_EACH, PRETOK_GPT2), false, false, false },
	{ "refact", PASSES(PRETOK_NUM_EACH, PRETOK_GPT2), false, false, false },
	{ "command-r", PASSES(PRETOK_NUM_EACH, PRETOK_GPT2), false, false, false },
	{ "codeshell", PASSES(PRETOK_NUM_EACH, PRETOK_GPT2), false, false, false },
	{ "exaone", PASSES(PRETOK_NUM_EACH, PRETOK_GPT2), false, false, false },
	{ "minerva-7b", PASSES(PRETOK_NUM_EACH, PRETOK_GPT2), false, false, false },
	{ "qwen2", PASSES(PRETOK_QWEN2), false, false, false },
	{ "deepseek-r1-qwen", PASSES(PRETOK_QWEN2), false, false, false },
	{ "stablelm2", PASSES(PRETOK_QWEN2), false, false, false },
	{ "megrez", PASSES(PRETOK_QWEN2), false, false, false },
};

/* The table row named pre[0, len), or NULL. */
const struct pretok_info *pretok_find(const char *pre, size_t len)
{
	size_t i;

	for (i = 0; i < KVS_ARRAY_LEN(pretok_table); i++)
		if (strlen(pretok_table[i].name) == len && memcmp(pretok_table[i].name, pre, len) == 0)
			return &pretok_table[i];
	return NULL;
}

/* Every accepted name, comma-separated, truncated to cap. */
void pretok_names(char *buf, size_t cap)
{
	size_t i, n = 0, k;

	if (cap == 0)
		return;
	buf[0] = '\0';
	for (i = 0; i < KVS_ARRAY_LEN(pretok_table); i++) {
		k = strlen(pretok_table[i].name) + (i ? 2 : 0);
		if (n + k + 1 > cap)
			break;
		memcpy(buf + n, i ? ", " : "", i ? 2 : 0);
		memcpy(buf + n + (i ? 2 : 0), pretok_table[i].name, strlen(pretok_table[i].name) + 1);
		n += k;
	}
}

/* ---- one pass over one word ---- */

/* The word being split (code points [ini, end)) and where words go. */
struct span {
	const uint32_t *cp;
	const uint16_t *fl;
	size_t ini, end;
	uint32_t *out; /* word ends, appended */
	size_t n_out;
	size_t last; /* end of the last word emitted */
};

#define NOT_CP 0xFFFFFFFFu /* "code point" past the edge of the word */

/* Flags of position i, 0 outside the word (matches no class). */
static inline uint16_t span_fl(const struct span *s, size_t i)
{
	return i < s->end ? s->fl[i] : 0;
}

/* Code point at i, NOT_CP outside the word. */
static inline uint32_t span_cp(const struct span *s, size_t i)
{
	return i < s->end ? s->cp[i] : NOT_CP;
}

/* End a word at end (nothing if it would be empty). */
static inline void span_emit(struct span *s, size_t end)
{
	if (end > s->last) {
		s->out[s->n_out++] = (uint32_t)end;
		s->last = end;
	}
}

/* ASCII lower case (no other code point folds to the letters we test;
 * scripts/gen-unicode.py checks that). */
static inline uint32_t ascii_lower(uint32_t c)
{
	return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* Where a run of k spaces at pos ends its word: \s+(?!\S) leaves the last
 * space for the next word unless the run ends the text; no space: one
 * character. */
static size_t span_past_space(const struct span *s, size_t pos, size_t k)
{
	if (k > 1 && pos + k < s->end)
		return pos + k - 1;
	return pos + (k > 0 ? k : 1);
}

/* Length of a contraction at pos ('s 't 're 've 'm 'll 'd), 0 if none;
 * fold: case-insensitive (llama-3). */
static size_t contraction_len(const struct span *s, size_t pos, bool fold)
{
	uint32_t c1, c2;

	if (s->cp[pos] != '\'' || pos + 1 >= s->end)
		return 0;
	c1 = fold ? ascii_lower(s->cp[pos + 1]) : s->cp[pos + 1];
	if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')
		return 2;
	if (pos + 2 >= s->end)
		return 0;
	c2 = fold ? ascii_lower(s->cp[pos + 2]) : s->cp[pos + 2];
	if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
		return 3;
	return 0;
}

#define SLN (UCP_SPACE | UCP_LETTER | UCP_NUMBER)

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static void pass_gpt2(struct span *s)
{
	size_t pos = s->ini, k;

	while (pos < s->end) {
		uint32_t c = s->cp[pos];
		uint16_t f;

		if ((k = contraction_len(s, pos, false)) != 0) {
			pos += k;
			span_emit(s, pos);
			continue;
		}
		/* the class that decides: of c, or of what follows a leading space */
		f = c == ' ' ? span_fl(s, pos + 1) : s->fl[pos];
		if (f & (UCP_LETTER | UCP_NUMBER)) {
			uint16_t cls = f & UCP_LETTER ? UCP_LETTER : UCP_NUMBER;
			pos += c == ' ';
			while (span_fl(s, pos) & cls)
				pos++;
			span_emit(s, pos);
			continue;
		}
		if (f != 0 && !(f & SLN)) {
			pos += c == ' ';
			while ((f = span_fl(s, pos)) != 0 && !(f & SLN))
				pos++;
			span_emit(s, pos);
			continue;
		}
		for (k = 0; span_fl(s, pos + k) & UCP_SPACE; k++)
			;
		pos = span_past_space(s, pos, k);
		span_emit(s, pos);
	}
}

/*
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,G}|
 *  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * with G = 3 (llama-3) or 1 (qwen2, where the pattern says \p{N}).
 */
static void pass_llama3(struct span *s, size_t group)
{
	size_t pos = s->ini, k, last_nl;

	while (pos < s->end) {
		uint32_t c = s->cp[pos];
		uint16_t f = s->fl[pos], f2;

		if ((k = contraction_len(s, pos, true)) != 0) {
			pos += k;
			span_emit(s, pos);
			continue;
		}
		if (c != '\r' && c != '\n' && !(f & UCP_NUMBER) &&
		    ((f & UCP_LETTER) || (span_fl(s, pos + 1) & UCP_LETTER))) {
			pos++; /* the optional lead, or the first letter */
			while (span_fl(s, pos) & UCP_LETTER)
				pos++;
			span_emit(s, pos);
			continue;
		}
		if (f & UCP_NUMBER) {
			size_t start = pos;
			while (span_fl(s, pos) & UCP_NUMBER) {
				pos++;
				if (pos - start >= group) {
					span_emit(s, pos);
					start = pos;
				}
			}
			span_emit(s, pos);
			continue;
		}
		f2 = c == ' ' ? span_fl(s, pos + 1) : f;
		if (!(f2 & SLN)) {
			pos += c == ' ';
			while ((f2 = span_fl(s, pos)) != 0 && !(f2 & SLN))
				pos++;
			while (span_cp(s, pos) == '\r' || span_cp(s, pos) == '\n')
				pos++;
			span_emit(s, pos);
			continue;
		}
		last_nl = 0;
		for (k = 0; span_fl(s, pos + k) & UCP_SPACE; k++)
			if (s->cp[pos + k] == '\r' || s->cp[pos + k] == '\n')
				last_nl = pos + k + 1;
		if (last_nl > 0) /* \s*[\r\n]+ */
			pos = last_nl;
		else
			pos = span_past_space(s, pos, k);
		span_emit(s, pos);
	}
}

/* Does c belong to [\p{P}\$\+<=>\^~\|] (with_bt: and the backtick)? */
static inline bool punct_class(uint32_t c, uint16_t f, bool with_bt)
{
	if (c < 0x80)
		return (f & UCP_PUNCT) || c == '$' || c == '+' || c == '<' || c == '=' || c == '>' ||
		        c == '^' || c == '~' || c == '|' || (with_bt && c == '`');
	return (f & (UCP_PUNCT | UCP_SPACE)) == UCP_PUNCT;
}

/* Runs of one class become words, as does the text between them;
 * max_run 1 makes every member its own word. */
static void pass_runs(struct span *s, enum pretok_pass kind)
{
	size_t pos = s->ini;

	while (pos < s->end) {
		size_t start = pos;
		bool in;

		switch (kind) {
		case PRETOK_NUM_EACH:
			in = s->fl[pos] & UCP_NUMBER;
			pos += in;
			break;
		case PRETOK_NUM_RUNS:
			while (pos < s->end && (s->fl[pos] & UCP_NUMBER))
				pos++;
			in = pos > start;
			break;
		default: /* the punctuation classes */
			while (pos < s->end &&
			       punct_class(s->cp[pos], s->fl[pos], kind == PRETOK_PUNCT_RUNS_BT))
				pos++;
			in = pos > start;
			break;
		}
		if (in) {
			span_emit(s, start); /* the text before the match */
			span_emit(s, pos);
		} else {
			pos++;
		}
	}
	span_emit(s, s->end);
}

/* [0-9][0-9][0-9]: leftmost non-overlapping triples of ASCII digits. */
static void pass_digits3(struct span *s)
{
	size_t pos = s->ini;

	while (pos + 3 <= s->end) {
		if (s->cp[pos] - '0' < 10 && s->cp[pos + 1] - '0' < 10 && s->cp[pos + 2] - '0' < 10) {
			span_emit(s, pos);
			pos += 3;
			span_emit(s, pos);
		} else {
			pos++;
		}
	}
	span_emit(s, s->end);
}

/* Grow the scratch arrays to hold n entries. */
static void pretok_reserve(struct pretok_buf *b, size_t n)
{
	size_t cap;

	if (n <= b->cap)
		return;
	cap = KVS_MAX(n, b->cap * 2);
	b->ends_a = xreallocarray(b->ends_a, cap, sizeof(*b->ends_a));
	b->ends_b = xreallocarray(b->ends_b, cap, sizeof(*b->ends_b));
	b->flags = xreallocarray(b->flags, cap, sizeof(*b->flags));
	b->cap = cap;
}

/* Run the passes of info over cps; word ends go to *ends. */
size_t pretok_split(const struct pretok_info *info, const uint32_t *cps, size_t n,
                    struct pretok_buf *buf, const uint32_t **ends)
{
	uint32_t *in, *out, *t;
	size_t n_in, i, w;
	const enum pretok_pass *p;
	struct span s;

	*ends = NULL;
	if (n == 0)
		return 0;
	pretok_reserve(buf, n);
	for (i = 0; i < n; i++)
		buf->flags[i] = cps[i] < 0x80 ? ucp_flags(cps[i]) : ucp_flags(cps[i]);
	in = buf->ends_a;
	out = buf->ends_b;
	in[0] = (uint32_t)n;
	n_in = 1;
	for (p = info->passes; *p != PRETOK_END; p++) {
		s.cp = cps;
		s.fl = buf->flags;
		s.out = out;
		s.n_out = 0;
		s.last = 0;
		for (w = 0; w < n_in; w++) {
			s.ini = w ? in[w - 1] : 0;
			s.end = in[w];
			switch (*p) {
			case PRETOK_GPT2: pass_gpt2(&s); break;
			case PRETOK_LLAMA3: pass_llama3(&s, 3); break;
			case PRETOK_QWEN2: pass_llama3(&s, 1); break;
			case PRETOK_DIGITS3: pass_digits3(&s); break;
			default: pass_runs(&s, *p); break;
			}
			span_emit(&s, s.end); /* defensive: words stay contiguous */
		}
		t = in;
		in = out;
		out = t;
		n_in = s.n_out;
	}
	*ends = in;
	return n_in;
}

/* Release the scratch arrays. */
void pretok_buf_free(struct pretok_buf *buf)
{
	free(buf->ends_a);
	free(buf->ends_b);
	free(buf->flags);
	memset(buf, 0, sizeof(*buf));
}
