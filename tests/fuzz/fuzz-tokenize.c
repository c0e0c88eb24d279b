/*
 * fuzz-tokenize.c: libFuzzer target for the tokenizer and detokeniser
 * (doc/FUZZING.md).
 *
 * The vocabularies are built once, in memory, with the test GGUF writer:
 * a byte-level BPE vocabulary holding a token for every byte, some merges,
 * a CONTROL and a USER_DEFINED token, loaded under each pre-tokenizer we
 * support; and a SentencePiece vocabulary with all 256 byte tokens. The
 * first input byte picks the vocabulary and the flags, the rest is the
 * text. Besides "no crash, no sanitizer report", every id must be in range,
 * and where the text is valid UTF-8 and special parsing is off, decoding
 * the ids must give the text back exactly (abort otherwise).
 */
#include "model/model-int.h"
#include "tests/util/ggufw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const fuzz_pres[] = { "smollm", "gpt-2",   "llama-bpe",
	                                     "qwen2",  "default", "falcon" };
#define N_VOCABS (KVS_ARRAY_LEN(fuzz_pres) + 1)

static struct vocab *fuzz_vocabs[N_VOCABS];
static uint8_t *fuzz_bufs[2];
static struct gguf_file *fuzz_files[2];

/* The GPT-2 byte alphabet letter of byte b, UTF-8 in out; returns bytes. */
static size_t fuzz_byte_letter(int b, char *out)
{
	int c, rank = 0;

	if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)
		return utf8_encode_any((uint32_t)b, out);
	for (c = 0; c < b; c++)
		rank += !((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE);
	return utf8_encode_any(0x100 + (uint32_t)rank, out);
}

/* Build the vocabularies (once). */
static void fuzz_init(void)
{
	static const char *const words[] = { "th", "the", "in", "Ġt",  "Ġthe", "er",    "12", "Ġ1",
		                                 "ĠĠ", "ĊĊ",  "an", "and", "Ġa",   "<|c|>", "<u>" };
	static const char *const merges[] = { "t h", "th e", "i n", "Ġ t", "Ġt he", "e r", "1 2",
		                                  "Ġ 1", "Ġ Ġ",  "Ċ Ċ", "a n", "an d",  "Ġ a", "Ġt h" };
	const char *toks[256 + KVS_ARRAY_LEN(words)];
	char letters[256][4], spm_bytes[256][8];
	int32_t types[256 + KVS_ARRAY_LEN(words)];
	float scores[256 + 8];
	const char *spm[256 + 8];
	int32_t spm_types[256 + 8];
	size_t i, n, size;
	struct ggufw *w;
	struct err e;

	for (i = 0; i < 256; i++) {
		n = fuzz_byte_letter((int)i, letters[i]);
		letters[i][n] = '\0';
		toks[i] = letters[i];
		types[i] = TOKEN_NORMAL;
	}
	for (i = 0; i < KVS_ARRAY_LEN(words); i++) {
		toks[256 + i] = words[i];
		types[256 + i] = TOKEN_NORMAL;
	}
	types[256 + 13] = TOKEN_CONTROL;
	types[256 + 14] = TOKEN_USER_DEFINED;
	w = ggufw_new();
	ggufw_add_str(w, "tokenizer.ggml.model", "gpt2");
	ggufw_add_arr_str(w, "tokenizer.ggml.tokens", toks, KVS_ARRAY_LEN(toks));
	ggufw_add_arr_i32(w, "tokenizer.ggml.token_type", types, KVS_ARRAY_LEN(types));
	ggufw_add_arr_str(w, "tokenizer.ggml.merges", merges, KVS_ARRAY_LEN(merges));
	ggufw_add_bool(w, "tokenizer.ggml.add_bos_token", 0);
	ggufw_write_mem(w, &fuzz_bufs[0], &size);
	ggufw_free(w);
	if (gguf_open_memory(&fuzz_files[0], fuzz_bufs[0], size, &e) != KVS_OK)
		abort();
	for (i = 0; i < KVS_ARRAY_LEN(fuzz_pres); i++) {
		struct vocab_opts o = { fuzz_pres[i] };
		if (vocab_load_opts(&fuzz_vocabs[i], fuzz_files[0], &o, &e) != KVS_OK)
			abort();
	}

	spm[0] = "<unk>";
	spm[1] = "<s>";
	spm[2] = "</s>";
	spm_types[0] = TOKEN_UNKNOWN;
	spm_types[1] = spm_types[2] = TOKEN_CONTROL;
	for (i = 0; i < 256; i++) {
		snprintf(spm_bytes[i], sizeof(spm_bytes[i]), "<0x%02X>", (unsigned)i);
		spm[3 + i] = spm_bytes[i];
		spm_types[3 + i] = TOKEN_BYTE;
	}
	spm[259] = "\xe2\x96\x81";
	spm[260] = "\xe2\x96\x81the";
	spm[261] = "the";
	spm[262] = "he";
	spm[263] = "\xe2\x96\x81t";
	for (i = 259; i < 264; i++)
		spm_types[i] = TOKEN_NORMAL;
	for (i = 0; i < 264; i++)
		scores[i] = -(float)(i % 7);
	w = ggufw_new();
	ggufw_add_str(w, "tokenizer.ggml.model", "llama");
	ggufw_add_arr_str(w, "tokenizer.ggml.tokens", spm, 264);
	ggufw_add_arr_i32(w, "tokenizer.ggml.token_type", spm_types, 264);
	ggufw_add_arr_f32(w, "tokenizer.ggml.scores", scores, 264);
	ggufw_write_mem(w, &fuzz_bufs[1], &size);
	ggufw_free(w);
	if (gguf_open_memory(&fuzz_files[1], fuzz_bufs[1], size, &e) != KVS_OK ||
	    vocab_load(&fuzz_vocabs[N_VOCABS - 1], fuzz_files[1], &e) != KVS_OK)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct vocab *v;
	bool add, special;
	const char *text;
	size_t len, n = 0, cap = 0, out_n = 0, out_cap = 0, i;
	int32_t *ids = NULL;
	char *out = NULL;
	struct detok d;
	struct err e;

	if (fuzz_vocabs[0] == NULL)
		fuzz_init();
	if (size == 0)
		return 0;
	v = fuzz_vocabs[data[0] % N_VOCABS];
	add = (data[0] >> 4) & 1;
	special = (data[0] >> 5) & 1;
	text = (const char *)data + 1;
	len = size - 1;
	if (vocab_tokenize(v, text, len, add, special, &ids, &n, &cap, &e) != KVS_OK)
		abort();
	detok_init(&d, v, (data[0] >> 6) & 1);
	for (i = 0; i < n; i++) {
		if (ids[i] < 0 || (uint32_t)ids[i] >= vocab_n_tokens(v))
			abort();
		detok_push(&d, ids[i], &out, &out_n, &out_cap);
	}
	detok_flush(&d, &out, &out_n, &out_cap);
	/* streams are always whole UTF-8 */
	if (!utf8_valid((const uint8_t *)out, out_n))
		abort();
	/* U+2581 reads back as a space in SentencePiece */
	if (!add && !special && utf8_valid(data + 1, len) &&
	    !(vocab_kind(v) == VOCAB_SPM && memmem(text, len, "\xe2\x96\x81", 3) != NULL) &&
	    (out_n != len || (len > 0 && memcmp(out, text, len) != 0)))
		abort();
	free(ids);
	free(out);
	return 0;
}
