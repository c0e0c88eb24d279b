/*
 * test-vocab.c: the tokenizer against llama.cpp and against hand-computed
 * cases.
 *
 * Part 1 (fidelity): every string of tests/fixtures/vocab/strings.txt is
 * tokenized with and without special-token parsing and compared with the
 * ids llama.cpp's llama-tokenize gave (make-fixtures.sh there), for the
 * SmolLM2 vocabulary with its own pre-tokenizer (smollm) and with five
 * others swapped in (gpt-2, llama-bpe, qwen2, default, falcon), and for the
 * SentencePiece vocabulary ggml-vocab-llama-spm.gguf. The same strings,
 * where they are valid UTF-8, must come back unchanged from the streaming
 * detokeniser.
 * Part 2: tiny BPE and SentencePiece vocabularies built with the test GGUF
 * writer, whose results are worked out by hand in the comments.
 * Part 3: metadata the loader must refuse, each with its message.
 * Part 4: code point classes, lenient decoding, pre-tokenizer words, the
 * detokeniser's UTF-8 assembly, and SmolLM2's special ids.
 */
#include "model/model-int.h"
#include "tests/unit/test.h"
#include "tests/util/ggufw.h"

#include <sys/stat.h>

/* ------------------------------------------------------------ utilities */

static char *model_path(void)
{
	return model_default_path(NULL);
}

static char *fixture_path(const char *name)
{
	const char *src = getenv("KVSCOPE_SRCDIR");

	return xasprintf("%s/tests/fixtures/vocab/%s", src ? src : ".", name);
}

/* Tokenize into a fresh array; returns the count (ids freed by caller). */
static size_t tok(const struct vocab *v, const char *s, size_t len, bool add, bool special,
                  int32_t **ids)
{
	size_t n = 0, cap = 0;
	struct err e;

	*ids = NULL;
	if (vocab_tokenize(v, s, len, add, special, ids, &n, &cap, &e) != KVS_OK) {
		fprintf(stderr, "tokenize failed: %s\n", e.msg);
		t_failures++;
	}
	return n;
}

/* Check that tokenizing s gives exactly want[0..n_want). */
#define T_TOKENS(v, s, add, special, ...)                                                \
	do {                                                                                 \
		const int32_t want_[] = { __VA_ARGS__ };                                         \
		check_tokens(v, s, sizeof(s) - 1, add, special, want_, KVS_ARRAY_LEN(want_) - 1, \
		             __LINE__);                                                          \
	} while (0)

static void print_ids(const char *label, const int32_t *ids, size_t n)
{
	size_t i;

	fprintf(stderr, "  %s:", label);
	for (i = 0; i < n; i++)
		fprintf(stderr, " %d", ids[i]);
	fputc('\n', stderr);
}

static void check_tokens(const struct vocab *v, const char *s, size_t len, bool add, bool special,
                         const int32_t *want, size_t n_want, int line)
{
	int32_t *ids;
	size_t n = tok(v, s, len, add, special, &ids);
	bool same = n == n_want && (n == 0 || memcmp(ids, want, n * sizeof(*ids)) == 0);

	t_checks++;
	if (!same) {
		t_failures++;
		fprintf(stderr, "%s:%d: FAIL: tokens of \"%.*s\"\n", __FILE__, line, (int)len, s);
		print_ids("got ", ids, n);
		print_ids("want", want, n_want);
	}
	free(ids);
}

/* Detokenise ids with a streaming detokeniser (one push per id). */
static char *detok_all(const struct vocab *v, const int32_t *ids, size_t n, size_t *len)
{
	struct detok d;
	char *out = NULL;
	size_t cap = 0, i;

	*len = 0;
	detok_init(&d, v, false);
	for (i = 0; i < n; i++)
		detok_push(&d, ids[i], &out, len, &cap);
	detok_flush(&d, &out, len, &cap);
	return out;
}

/* ------------------------------------------------- part 1: fidelity */

struct strings {
	char **s;
	size_t *len;
	size_t n;
};

/* Read strings.txt: one "..." per line with \n \t \r \\ \" \xNN escapes. */
static bool strings_load(struct strings *ss)
{
	char *path = fixture_path("strings.txt"), *buf, *line, *next, *end;
	size_t len, cap = 0;
	struct err e;

	memset(ss, 0, sizeof(*ss));
	if (file_read_all(path, &buf, &len, &e) != KVS_OK) {
		T_CHECK(false, "%s", e.msg);
		free(path);
		return false;
	}
	for (line = buf; line < buf + len; line = next) {
		char *o, *p;
		end = memchr(line, '\n', (size_t)(buf + len - line));
		if (end == NULL)
			end = buf + len;
		next = end + 1;
		if (end == line || line[0] == '#')
			continue;
		if (line[0] != '"' || end[-1] != '"' || end - line < 2) {
			T_CHECK(false, "strings.txt: bad line \"%.*s\"", (int)(end - line), line);
			continue;
		}
		if (ss->n == cap) {
			cap = cap ? cap * 2 : 256;
			ss->s = xreallocarray(ss->s, cap, sizeof(*ss->s));
			ss->len = xreallocarray(ss->len, cap, sizeof(*ss->len));
		}
		o = ss->s[ss->n] = xmalloc((size_t)(end - line));
		for (p = line + 1; p < end - 1;) {
			if (*p != '\\') {
				*o++ = *p++;
				continue;
			}
			switch (p[1]) {
			case 'n': *o++ = '\n'; break;
			case 't': *o++ = '\t'; break;
			case 'r': *o++ = '\r'; break;
			case 'x':
				*o++ = (char)strtol((char[]){ p[2], p[3], 0 }, NULL, 16);
				p += 2;
				break;
			default: *o++ = p[1]; break;
			}
			p += 2;
		}
		ss->len[ss->n] = (size_t)(o - ss->s[ss->n]);
		ss->n++;
	}
	free(buf);
	free(path);
	return true;
}

static void strings_free(struct strings *ss)
{
	size_t i;

	for (i = 0; i < ss->n; i++)
		free(ss->s[i]);
	free(ss->s);
	free(ss->len);
}

/* Parse "1 2 3" into ids; returns the count. */
static size_t parse_ids(const char *p, const char *end, int32_t *ids, size_t cap)
{
	size_t n = 0;
	char *q;

	while (p < end) {
		long x = strtol(p, &q, 10);
		if (q == p)
			break;
		if (n < cap)
			ids[n] = (int32_t)x;
		n++;
		p = q;
	}
	return n;
}

/* Does every byte of s have a token of its own? (SmolLM2 has none for
 * 0x1D, so such text cannot come back.) BPE spells byte b as the code point
 * b when printable, else U+0100 + its rank among the others (GPT-2). */
static bool bytes_covered(const struct vocab *v, const char *s, size_t len)
{
	size_t i;

	if (vocab_kind(v) != VOCAB_BPE)
		return true;
	for (i = 0; i < len; i++) {
		int b = (uint8_t)s[i], c, rank = 0;
		uint32_t cp = (uint32_t)b;
		char u[4];
		bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;

		if (!printable) {
			for (c = 0; c < b; c++)
				rank += !((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE);
			cp = 0x100 + (uint32_t)rank;
		}
		if (vocab_lookup(v, u, utf8_encode_any(cp, u)) < 0)
			return false;
	}
	return true;
}

/* Compare one vocabulary with its .ids file; round-trip the valid strings. */
static void fidelity(const struct vocab *v, const char *name, const struct strings *ss)
{
	char *path, *buf, *line, *end, *bar;
	size_t len, i = 0, k, n_bad = 0, n_rt = 0, n_rt_bad = 0;
	struct err e;
	int32_t want[4096];
	char fname[64];

	snprintf(fname, sizeof(fname), "%s.ids", name);
	path = fixture_path(fname);
	if (file_read_all(path, &buf, &len, &e) != KVS_OK) {
		T_CHECK(false, "%s", e.msg);
		free(path);
		return;
	}
	for (line = buf; line < buf + len && i < ss->n; line = end + 1, i++) {
		end = memchr(line, '\n', (size_t)(buf + len - line));
		if (end == NULL)
			end = buf + len;
		bar = memchr(line, '|', (size_t)(end - line));
		if (bar == NULL) {
			T_CHECK(false, "%s line %zu: no '|'", fname, i + 1);
			continue;
		}
		for (k = 0; k < 2; k++) {
			const char *a = k == 0 ? line : bar + 1, *b = k == 0 ? bar : end;
			size_t nw = parse_ids(a, b, want, KVS_ARRAY_LEN(want)), n;
			int32_t *ids;

			n = tok(v, ss->s[i], ss->len[i], true, k == 0, &ids);
			t_checks++;
			if (nw > KVS_ARRAY_LEN(want) || n != nw ||
			    (n > 0 && memcmp(ids, want, n * sizeof(*ids)) != 0)) {
				t_failures++;
				if (n_bad++ < 5) {
					fprintf(stderr, "FAIL: %s string %zu (parse_special=%d) \"%.*s\"\n", name,
					        i + 1, k == 0, (int)KVS_MIN(ss->len[i], 80), ss->s[i]);
					print_ids("got ", ids, n);
					print_ids("want", want, KVS_MIN(nw, KVS_ARRAY_LEN(want)));
				}
			}
			free(ids);
		}
		/* round trip: valid UTF-8, no special parsing, no BOS/EOS */
		if (utf8_valid((const uint8_t *)ss->s[i], ss->len[i]) &&
		    bytes_covered(v, ss->s[i], ss->len[i])) {
			int32_t *ids;
			size_t n = tok(v, ss->s[i], ss->len[i], false, false, &ids), dl;
			char *d = detok_all(v, ids, n, &dl);

			n_rt++;
			t_checks++;
			if (dl != ss->len[i] || (dl > 0 && memcmp(d, ss->s[i], dl) != 0)) {
				t_failures++;
				if (n_rt_bad++ < 5)
					fprintf(stderr, "FAIL: %s round trip of string %zu: \"%.*s\" -> \"%.*s\"\n",
					        name, i + 1, (int)KVS_MIN(ss->len[i], 80), ss->s[i],
					        (int)KVS_MIN(dl, 80), d);
			}
			free(d);
			free(ids);
		}
	}
	T_CHECK(i == ss->n, "%s: %zu lines for %zu strings (rerun make-fixtures.sh)", fname, i, ss->n);
	printf("  %s: %zu strings x 2 modes, %zu mismatches; %zu round trips, %zu failed\n", name, i,
	       n_bad, n_rt, n_rt_bad);
	free(buf);
	free(path);
}

static void test_fidelity_smollm(const char *model, const struct strings *ss)
{
	static const char *const pres[] = { NULL, "gpt-2", "llama-bpe", "qwen2", "default", "falcon" };
	struct gguf_file *f;
	struct vocab *v;
	struct err e;
	size_t i;

	if (gguf_open(&f, model, &e) != KVS_OK) {
		T_CHECK(false, "%s", e.msg);
		return;
	}
	for (i = 0; i < KVS_ARRAY_LEN(pres); i++) {
		struct vocab_opts o = { pres[i] };
		if (vocab_load_opts(&v, f, &o, &e) != KVS_OK) {
			T_CHECK(false, "%s: %s", pres[i] ? pres[i] : "smollm", e.msg);
			continue;
		}
		fidelity(v, pres[i] ? pres[i] : "smollm", ss);
		vocab_free(v);
	}
	gguf_close(f);
}

static void test_fidelity_spm(const struct strings *ss)
{
	char *path = fixture_path("ggml-vocab-llama-spm.gguf");
	struct gguf_file *f;
	struct vocab *v;
	struct err e;

	if (gguf_open(&f, path, &e) != KVS_OK || vocab_load(&v, f, &e) != KVS_OK) {
		T_CHECK(false, "%s", e.msg);
		free(path);
		return;
	}
	T_EQ_INT(vocab_kind(v), VOCAB_SPM);
	T_EQ_INT(vocab_n_tokens(v), 32000);
	T_CHECK(vocab_add_bos(v), "llama-spm adds BOS");
	fidelity(v, "llama-spm", ss);
	vocab_free(v);
	gguf_close(f);
	free(path);
}

/* ------------------------------------------- part 2: tiny vocabularies */

/* The expected ids below were worked out by hand, then confirmed with
 * llama-tokenize on the same vocabularies written by gguf-py (except the
 * UNK fallbacks, where llama.cpp aborts). */

/* Open a vocabulary from a writer (the buffer must outlive the file). */
static int open_vocab(struct ggufw *w, uint8_t **buf, struct gguf_file **f, struct vocab **v,
                      const char *pre_override, struct err *e)
{
	size_t size;
	struct vocab_opts o = { pre_override };
	int rc;

	*v = NULL;
	*f = NULL;
	ggufw_write_mem(w, buf, &size);
	rc = gguf_open_memory(f, *buf, size, e);
	if (rc == KVS_OK)
		rc = vocab_load_opts(v, *f, &o, e);
	return rc;
}

#define G_SPACE "\xc4\xa0"   /* U+0120: the byte alphabet's space */
#define G_NEWLINE "\xc4\x8a" /* U+010A: its newline */

/* A tiny byte-level BPE vocabulary. */
static struct ggufw *tiny_bpe(const char *pre)
{
	static const char *const toks[] = {
		"<|endoftext|>", "a",  "b",  "c",       G_SPACE,  "ab",  "abc",
		G_SPACE "a",     "bc", "aa", G_NEWLINE, "<user>", "cab", "xa",
	};
	static const int32_t types[] = { 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 1, 1 };
	/* "x a": 'x' is no token, so this merge is found by text */
	static const char *const merges[] = { "a b", "ab c", G_SPACE " a", "b c", "a a", "x a" };
	struct ggufw *w = ggufw_new();

	ggufw_add_str(w, "general.architecture", "llama");
	ggufw_add_str(w, "tokenizer.ggml.model", "gpt2");
	ggufw_add_str(w, "tokenizer.ggml.pre", pre);
	ggufw_add_arr_str(w, "tokenizer.ggml.tokens", toks, KVS_ARRAY_LEN(toks));
	ggufw_add_arr_i32(w, "tokenizer.ggml.token_type", types, KVS_ARRAY_LEN(types));
	ggufw_add_arr_str(w, "tokenizer.ggml.merges", merges, KVS_ARRAY_LEN(merges));
	return w;
}

static void test_tiny_bpe(void)
{
	struct ggufw *w = tiny_bpe("gpt-2");
	uint8_t *buf;
	struct gguf_file *f;
	struct vocab *v;
	struct err e;
	int32_t *ids;
	size_t n;

	if (open_vocab(w, &buf, &f, &v, NULL, &e) != KVS_OK) {
		T_CHECK(false, "tiny bpe: %s", e.msg);
		goto out;
	}
	T_EQ_STR(vocab_pre_name(v), "gpt-2");
	T_TOKENS(v, "ab", false, true, 5, -1);
	/* a b c: "a b" (rank 0) first, then "ab c" (rank 1) */
	T_TOKENS(v, "abc", false, true, 6, -1);
	/* Ġ a b c: "a b" (0) beats "Ġ a" (2); then "ab c" (1); "Ġ abc" is no merge */
	T_TOKENS(v, " abc", false, true, 4, 6, -1);
	/* a a a: both pairs have rank 4, the leftmost merges: aa a */
	T_TOKENS(v, "aaa", false, true, 9, 1, -1);
	/* c a b: only "a b" */
	T_TOKENS(v, "cab", false, true, 3, 5, -1);
	/* words "a" and " b"; "Ġ b" is no merge */
	T_TOKENS(v, "a b", false, true, 1, 4, 2, -1);
	T_TOKENS(v, "a\n", false, true, 1, 10, -1);
	/* 'y' has no token: dropped, as llama.cpp does */
	T_TOKENS(v, "ya", false, true, 1, -1);
	/* a merge whose left half is no token still applies */
	T_TOKENS(v, "xa", false, true, 13, -1);
	/* CONTROL only with parse_special; USER_DEFINED always */
	T_TOKENS(v, "<|endoftext|>ab", false, true, 0, 5, -1);
	T_TOKENS(v, "a<user>b", false, false, 1, 11, 2, -1);
	T_TOKENS(v, "", true, true, -1);
	/* no BOS for gpt-2 unless the file says so */
	T_TOKENS(v, "ab", true, true, 5, -1);
	T_CHECK(!vocab_add_bos(v), "gpt-2 default add_bos is false");
	T_EQ_INT(vocab_bos(v), 11); /* llama.cpp's BPE default id */
	T_CHECK(vocab_is_eog(v, 0), "<|endoftext|> ends generation");
	T_EQ_INT(vocab_eot(v), 0);
	n = tok(v, " abc", 4, false, true, &ids);
	{
		size_t dl;
		char *d = detok_all(v, ids, n, &dl);
		T_CHECK(dl == 4 && memcmp(d, " abc", 4) == 0, "detok \" abc\": \"%.*s\"", (int)dl, d);
		free(d);
	}
	free(ids);
	vocab_free(v);
	gguf_close(f);
	free(buf);

	/* llama-bpe: a word that is a whole token skips the merges, and BOS is
	 * added by default (llama.cpp's default BPE BOS id is 11) */
	if (open_vocab(w, &buf, &f, &v, "llama-bpe", &e) != KVS_OK) {
		T_CHECK(false, "tiny bpe llama-bpe: %s", e.msg);
		goto out;
	}
	T_TOKENS(v, "cab", false, true, 12, -1);
	T_TOKENS(v, "cab", true, true, 11, 12, -1);
	vocab_free(v);
	gguf_close(f);
	free(buf);
out:
	ggufw_free(w);
}

#define S_SP "\xe2\x96\x81" /* U+2581 */

static struct ggufw *tiny_spm(void)
{
	static const char *const toks[] = {
		"<unk>",   "<s>",    "</s>",   S_SP,     "a",      "b", S_SP "a", "ab",
		S_SP "ab", "<0xE4>", "<0xB8>", "<0xAD>", "<0x0A>", "c", "bc",
	};
	static const int32_t types[] = { 2, 3, 3, 1, 1, 1, 1, 1, 1, 6, 6, 6, 6, 1, 1 };
	static const float scores[] = {
		0, 0, 0, -1, -2, -2, -0.5f, -0.3f, -0.1f, 0, 0, 0, 0, -3, -0.2f
	};
	struct ggufw *w = ggufw_new();

	ggufw_add_str(w, "general.architecture", "llama");
	ggufw_add_str(w, "tokenizer.ggml.model", "llama");
	ggufw_add_arr_str(w, "tokenizer.ggml.tokens", toks, KVS_ARRAY_LEN(toks));
	ggufw_add_arr_i32(w, "tokenizer.ggml.token_type", types, KVS_ARRAY_LEN(types));
	ggufw_add_arr_f32(w, "tokenizer.ggml.scores", scores, KVS_ARRAY_LEN(scores));
	return w;
}

static void test_tiny_spm(void)
{
	struct ggufw *w = tiny_spm();
	uint8_t *buf;
	struct gguf_file *f;
	struct vocab *v;
	struct err e;
	struct detok d;
	char *out = NULL;
	size_t n = 0, cap = 0;

	if (open_vocab(w, &buf, &f, &v, NULL, &e) != KVS_OK) {
		T_CHECK(false, "tiny spm: %s", e.msg);
		ggufw_free(w);
		return;
	}
	/* ▁ a b: "ab" (-0.3) beats "▁a" (-0.5); then "▁ab" (-0.1) */
	T_TOKENS(v, "ab", false, true, 8, -1);
	/* ▁ a b c: "bc" (-0.2) first; then "▁a" (-0.5); "▁abc" is no token */
	T_TOKENS(v, "abc", false, true, 6, 14, -1);
	/* 中 has no token: its three bytes */
	T_TOKENS(v, "\xe4\xb8\xad", false, true, 3, 9, 10, 11, -1);
	T_TOKENS(v, "\n", false, true, 3, 12, -1);
	/* 'd' has neither a token nor a byte token: UNK */
	T_TOKENS(v, "d", false, true, 3, 0, -1);
	/* BOS by default; the space prefix follows a special token too */
	T_TOKENS(v, "a", true, true, 1, 6, -1);
	T_TOKENS(v, "<s>a", false, true, 1, 6, -1);
	T_TOKENS(v, "<s>a", false, false, 3, 0, 0, 0, 4, -1);
	T_TOKENS(v, "", true, true, 1, -1);

	/* streaming: the space prefix is dropped, 中 waits for its last byte */
	detok_init(&d, v, false);
	T_EQ_INT(detok_push(&d, 3, &out, &n, &cap), 0);
	T_EQ_INT(detok_push(&d, 9, &out, &n, &cap), 0);
	T_EQ_INT(detok_push(&d, 10, &out, &n, &cap), 0);
	T_EQ_INT(detok_push(&d, 11, &out, &n, &cap), 3);
	T_CHECK(n == 3 && memcmp(out, "\xe4\xb8\xad", 3) == 0, "detok 中");
	/* a broken sequence becomes U+FFFD and the next byte stands */
	T_EQ_INT(detok_push(&d, 9, &out, &n, &cap), 0);
	T_EQ_INT(detok_push(&d, 4, &out, &n, &cap), 4);
	T_CHECK(n == 7 &&
	                memcmp(out + 3,
	                       "\xef\xbf\xbd"
	                       "a",
	                       4) == 0,
	        "detok E4 'a'");
	T_EQ_INT(detok_push(&d, 9, &out, &n, &cap), 0);
	T_EQ_INT(detok_flush(&d, &out, &n, &cap), 3);
	T_CHECK(n == 10 && memcmp(out + 7, "\xef\xbf\xbd", 3) == 0, "detok flush");
	/* control tokens only when asked */
	{
		char p[16];
		T_EQ_INT(vocab_piece(v, 1, false, p, sizeof(p)), 0);
		T_EQ_INT(vocab_piece(v, 1, true, p, sizeof(p)), 3);
		T_EQ_INT(vocab_piece(v, 8, false, p, sizeof(p)), 3);
		T_CHECK(memcmp(p, " ab", 3) == 0, "piece ▁ab");
		T_EQ_INT(vocab_piece(v, 8, false, p, 1), 3); /* too small: size only */
	}
	free(out);
	vocab_free(v);
	gguf_close(f);
	free(buf);
	ggufw_free(w);
}

/* ---------------------------------------------- part 3: bad metadata */

struct bad_case {
	const char *what;
	int code;
	const char *msg; /* a substring of the message */
};

/* Build a vocab whose one part is broken as case k of test_bad_metadata says. */
static struct ggufw *bad_vocab(int k)
{
	static const char *const toks[] = { "a", "b", "ab", "<0x-1>" };
	static const char *const dup[] = { "a", "b", "a" };
	static const int32_t types[] = { 1, 1, 1, 6 };
	static const int32_t normal[] = { 1, 1, 1, 1 };
	static const uint8_t u8s[] = { 1, 2, 3, 4 };
	const char *merges[] = { k == 0 ? "ab" : k == 1 ? "a " : "a b" };
	struct ggufw *w = ggufw_new();

	ggufw_add_str(w, "general.architecture", "llama");
	ggufw_add_str(w, "tokenizer.ggml.model", k == 5 ? "bert" : k == 6 || k == 9 ? "llama" : "gpt2");
	ggufw_add_str(w, "tokenizer.ggml.pre", k == 7 ? "tekken" : k == 10 ? "chatglm-bpe" : "gpt-2");
	if (k == 8)
		ggufw_add_arr_str(w, "tokenizer.ggml.tokens", dup, 3);
	else if (k != 11)
		ggufw_add_arr_str(w, "tokenizer.ggml.tokens", toks, 4);
	ggufw_add_arr_i32(w, "tokenizer.ggml.token_type", k == 9 ? normal : types,
	                  k == 2 || k == 8 ? 3 : 4);
	if (k == 3)
		ggufw_add_arr_u8(w, "tokenizer.ggml.scores", u8s, 4);
	ggufw_add_arr_str(w, "tokenizer.ggml.merges", merges, 1);
	if (k == 4)
		ggufw_add_u32(w, "tokenizer.ggml.bos_token_id", 4);
	if (k == 10)
		ggufw_add_bool(w, "tokenizer.ggml.add_bos_token", 1);
	if (k == 12)
		ggufw_add_str(w, "tokenizer.ggml.eos_token_id", "2");
	return w;
}

static void test_bad_metadata(void)
{
	static const struct bad_case cases[] = {
		{ "merge without space", KVS_EFORMAT, "tokenizer.ggml.merges[0]" },
		{ "merge with empty right", KVS_EFORMAT, "two non-empty parts" },
		{ "token_type count", KVS_EFORMAT, "tokenizer.ggml.token_type: 3 entries, expected 4" },
		{ "scores type", KVS_EFORMAT, "tokenizer.ggml.scores" },
		{ "bos id out of range", KVS_EFORMAT, "bos_token_id: token id 4, expected < 4" },
		{ "unknown model", KVS_EUNSUPPORTED, "\"bert\" is not supported" },
		{ "bad byte token", KVS_EFORMAT, "<0x-1>" },
		{ "unknown pre", KVS_EUNSUPPORTED,
		  "\"tekken\" is not supported, expected one of: default" },
		{ "duplicate token", KVS_EFORMAT, "repeats token 0" },
		{ "spm default ids", KVS_OK, NULL },
		{ "add_bos without bos", KVS_EFORMAT, "no BOS token" },
		{ "no tokens", KVS_EFORMAT, "tokenizer.ggml.tokens: missing" },
		{ "id of type string", KVS_EFORMAT, "eos_token_id: type" },
	};
	size_t k;

	for (k = 0; k < KVS_ARRAY_LEN(cases); k++) {
		struct ggufw *w = bad_vocab((int)k);
		uint8_t *buf;
		struct gguf_file *f;
		struct vocab *v;
		struct err e;
		int rc;

		err_clear(&e);
		rc = open_vocab(w, &buf, &f, &v, NULL, &e);
		T_CHECK(rc == cases[k].code, "%s: rc %d (%s), expected %d", cases[k].what, rc, e.msg,
		        cases[k].code);
		if (cases[k].msg != NULL)
			T_CHECK(strstr(e.msg, cases[k].msg) != NULL, "%s: message \"%s\" lacks \"%s\"",
			        cases[k].what, e.msg, cases[k].msg);
		T_CHECK(rc != KVS_OK || v != NULL, "%s: no vocab", cases[k].what);
		vocab_free(v);
		gguf_close(f);
		free(buf);
		ggufw_free(w);
	}
}

/* ------------------------------------------------- part 4: internals */

static void test_unicode(void)
{
	static const struct {
		uint32_t cp;
		uint16_t flags;
	} cases[] = {
		{ 'A', UCP_LETTER },
		{ 'z', UCP_LETTER },
		{ '0', UCP_NUMBER },
		{ ' ', UCP_SEP | UCP_SPACE },
		{ '\t', UCP_CONTROL | UCP_SPACE },
		{ '\n', UCP_CONTROL | UCP_SPACE },
		{ 0x1C, UCP_CONTROL },
		{ '!', UCP_PUNCT },
		{ '$', UCP_SYMBOL },
		{ '_', UCP_PUNCT },
		{ '`', UCP_SYMBOL },
		{ 0x85, UCP_CONTROL | UCP_SPACE },
		{ 0xA0, UCP_SEP | UCP_SPACE },
		{ 0xAD, UCP_CONTROL },
		{ 0xB2, UCP_NUMBER },
		{ 0xBD, UCP_NUMBER },
		{ 0xE9, UCP_LETTER },
		{ 0x301, UCP_MARK },
		{ 0x378, UCP_UNDEF },
		{ 0x661, UCP_NUMBER },
		{ 0x200B, UCP_CONTROL },
		{ 0x2003, UCP_SEP | UCP_SPACE },
		{ 0x2028, UCP_SEP | UCP_SPACE },
		{ 0x3000, UCP_SEP | UCP_SPACE },
		{ 0x4E2D, UCP_LETTER },
		{ 0xD800, UCP_CONTROL },
		{ 0xE000, UCP_CONTROL },
		{ 0xFFFD, UCP_SYMBOL },
		{ 0x1F600, UCP_SYMBOL },
		{ 0x1F3FD, UCP_SYMBOL },
		{ 0x31350, UCP_LETTER }, /* CJK extension H, Unicode 15.0 */
		{ 0x2EBF0, UCP_LETTER }, /* CJK extension I, Unicode 15.1 */
		{ 0x1CC00, UCP_UNDEF },  /* assigned only in Unicode 16.0 */
		{ 0x10FFFD, UCP_CONTROL },
		{ 0x110000, UCP_UNDEF },
	};
	static const struct {
		const char *s;
		size_t n, len;
		uint32_t cp;
	} dec[] = {
		{ "a", 1, 1, 'a' },
		{ "\xc3\xa9", 2, 2, 0xE9 },
		{ "\xc0\x80", 2, 2, 0 },
		{ "\xed\xa0\x80", 3, 3, 0xD800 },
		{ "\xf0\x9f\x98\x80", 4, 4, 0x1F600 },
		{ "\xf4\x90\x80\x80", 4, 1, 0xFFFD },
		{ "\x80", 1, 1, 0xFFFD },
		{ "\xe2\x82", 2, 1, 0xFFFD },
		{ "\xe2\x82"
		  "a",
		  3, 1, 0xFFFD },
		{ "\xff", 1, 1, 0xFFFD },
		{ "\xf8\x88\x80\x80\x80", 5, 1, 0xFFFD },
	};
	size_t i;

	for (i = 0; i < KVS_ARRAY_LEN(cases); i++)
		T_CHECK(ucp_flags(cases[i].cp) == cases[i].flags,
		        "flags of U+%04X = 0x%03x, expected 0x%03x", cases[i].cp, ucp_flags(cases[i].cp),
		        cases[i].flags);
	for (i = 0; i < KVS_ARRAY_LEN(dec); i++) {
		uint32_t cp = 0;
		size_t len = ucp_decode_lax((const uint8_t *)dec[i].s, dec[i].n, &cp);
		T_CHECK(len == dec[i].len && cp == dec[i].cp, "decode case %zu: len %zu cp U+%04X", i, len,
		        cp);
	}
}

/* Split s (UTF-8) with the pre-tokenizer pre; compare with the words in
 * want, separated by '|'. */
static void check_words(const char *pre, const char *s, const char *want, int line)
{
	const struct pretok_info *info = pretok_find(pre, strlen(pre));
	struct pretok_buf pb = { 0 };
	uint32_t cps[256];
	const uint32_t *ends;
	size_t n = 0, pos = 0, len = strlen(s), nw, w, start = 0, o = 0;
	char got[1024];

	while (pos < len)
		pos += ucp_decode_lax((const uint8_t *)s + pos, len - pos, &cps[n++]);
	nw = pretok_split(info, cps, n, &pb, &ends);
	for (w = 0; w < nw; start = ends[w++]) {
		size_t i;
		if (w > 0)
			got[o++] = '|';
		for (i = start; i < ends[w]; i++)
			o += utf8_encode_any(cps[i], got + o);
	}
	got[o] = '\0';
	t_checks++;
	if (strcmp(got, want) != 0) {
		t_failures++;
		fprintf(stderr, "%s:%d: FAIL: %s words of \"%s\": \"%s\", expected \"%s\"\n", __FILE__,
		        line, pre, s, got, want);
	}
	pretok_buf_free(&pb);
}

#define T_WORDS(pre, s, want) check_words(pre, s, want, __LINE__)

static void test_pretok(void)
{
	/* \s+(?!\S): a space run gives its last space to the next word */
	T_WORDS("gpt-2", "Hello  world", "Hello| | world");
	T_WORDS("gpt-2", "a   ", "a|   ");
	T_WORDS("gpt-2", "it's we'LL", "it|'s| we|'|LL");
	T_WORDS("gpt-2", "x 123 !!", "x| 123| !!");
	T_WORDS("gpt-2", "a\n\nb", "a|\n|\n|b");
	/* smollm: digits one by one, before the GPT-2 pattern */
	T_WORDS("smollm", "ab 123", "ab| |1|2|3");
	T_WORDS("smollm", "a1b", "a|1|b");
	/* llama-3: digit groups of three, case-folded contractions, newlines */
	T_WORDS("llama-bpe", "12345 x", "123|45| x");
	T_WORDS("llama-bpe", "WE'LL", "WE|'LL");
	T_WORDS("llama-bpe", "a\n\nb", "a|\n\n|b");
	T_WORDS("llama-bpe", "a  \n b", "a|  \n| b");
	T_WORDS("llama-bpe", "!!\n\nx", "!!\n\n|x");
	T_WORDS("llama-bpe", "(hi", "(hi");
	T_WORDS("qwen2", "12345", "1|2|3|4|5");
	/* default: punctuation runs, then GPT-2, then numbers, then triples */
	T_WORDS("default", "a+=b 12345", "a|+=|b| |123|45");
	T_WORDS("falcon", "a`b 12345", "a|`|b| |123|45");
	T_WORDS("falcon", "x1234", "x|123|4");
}

static void test_smollm_ids(const char *model)
{
	struct gguf_file *f;
	struct vocab *v;
	struct err e;
	struct gguf_str t;

	if (gguf_open(&f, model, &e) != KVS_OK || vocab_load(&v, f, &e) != KVS_OK) {
		T_CHECK(false, "%s", e.msg);
		gguf_close(f);
		return;
	}
	/* facts from llama.cpp's load log for this file (engine.md 4.2) */
	T_EQ_INT(vocab_n_tokens(v), 49152);
	T_EQ_INT(vocab_kind(v), VOCAB_BPE);
	T_EQ_STR(vocab_pre_name(v), "smollm");
	T_EQ_INT(vocab_bos(v), 1);
	T_EQ_INT(vocab_eos(v), 2);
	T_EQ_INT(vocab_eot(v), 0);
	T_CHECK(!vocab_add_bos(v), "SmolLM2 adds no BOS");
	T_CHECK(vocab_is_eog(v, 0) && vocab_is_eog(v, 2), "EOG 0 and 2");
	T_CHECK(!vocab_is_eog(v, 1) && !vocab_is_eog(v, 4) && !vocab_is_eog(v, 198), "not EOG");
	T_EQ_INT(vocab_token_attr(v, 16), TOKEN_CONTROL);
	T_EQ_INT(vocab_token_attr(v, 17), TOKEN_NORMAL);
	T_EQ_INT(vocab_lookup(v, G_NEWLINE, 2), 198);
	t = vocab_token_text(v, 1);
	T_CHECK(t.n == 12 && memcmp(t.p, "<|im_start|>", 12) == 0, "token 1 text");
	/* above U+10FFFF llama.cpp aborts; we read each byte as U+FFFD */
	{
		int32_t *a, *b;
		size_t na = tok(v,
		                "a\xf4\x90\x80\x80"
		                "b",
		                6, false, true, &a);
		size_t nb = tok(v,
		                "a\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
		                "b",
		                14, false, true, &b);
		T_CHECK(na == nb && memcmp(a, b, na * sizeof(*a)) == 0, "F4 90 80 80 as four U+FFFD");
		free(a);
		free(b);
	}
	vocab_free(v);
	gguf_close(f);
}

int main(void)
{
	struct strings ss;
	char *model = model_path();
	struct stat st;
	bool have_model = stat(model, &st) == 0;
	const char *skip = getenv("KVSCOPE_SKIP_MODEL_TESTS");

	test_unicode();
	test_pretok();
	test_tiny_bpe();
	test_tiny_spm();
	test_bad_metadata();
	if (strings_load(&ss)) {
		T_CHECK(ss.n >= 150, "strings.txt has %zu strings, expected >= 150", ss.n);
		test_fidelity_spm(&ss);
		if (have_model)
			test_fidelity_smollm(model, &ss);
		strings_free(&ss);
	}
	if (have_model) {
		test_smollm_ids(model);
	} else if (skip != NULL && strcmp(skip, "1") == 0) {
		printf("test-vocab: SKIP SmolLM2 parts: %s absent and KVSCOPE_SKIP_MODEL_TESTS=1\n", model);
		free(model);
		return t_done("test-vocab") ? 1 : 77;
	} else {
		fprintf(stderr,
		        "test-vocab: FAIL: default model %s is missing (run `make model`, set "
		        "KVSCOPE_MODEL, or KVSCOPE_SKIP_MODEL_TESTS=1 to skip)\n",
		        model);
		t_failures++;
	}
	free(model);
	return t_done("test-vocab");
}
