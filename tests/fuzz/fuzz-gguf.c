/*
 * fuzz-gguf.c: libFuzzer target for the GGUF reader, the model loader and
 * the vocabulary loader (doc/FUZZING.md).
 *
 * One input is one file image. It is opened from memory (the buffer
 * libFuzzer hands us is exactly the input's size, so ASan sees any read past
 * the end); on success every key is read through every typed getter, every
 * array element is decoded, every tensor is looked up by name and its first
 * and last data byte touched; then the file goes through model_load_gguf,
 * which runs the architecture checks and vocab_load, and a loaded model's
 * tokenizer is run once over a fixed text. Whatever the input, the only
 * acceptable outcomes are success or a status with a message: a crash, a
 * sanitizer report or a leak is a bug.
 *
 * Without --enable-fuzzing, tests/fuzz/replay.c supplies main() and runs
 * the committed corpus through this function in make check.
 */
#include "model/model.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Results go here so the reads cannot be optimised away. */
static volatile uint64_t fuzz_sink;

/* Read key kv->key through every getter and decode its array elements. */
static void fuzz_kv(const struct gguf_file *f, const struct gguf_kv *kv)
{
	struct err e;
	uint32_t u32;
	uint64_t u64;
	int32_t i32;
	float f32;
	bool b;
	struct gguf_str s;
	const struct gguf_kv *arr;

	if (gguf_get_u32(f, kv->key, &u32, &e) == KVS_OK)
		fuzz_sink += u32;
	if (gguf_get_u64(f, kv->key, &u64, &e) == KVS_OK)
		fuzz_sink += u64;
	if (gguf_get_i32(f, kv->key, &i32, &e) == KVS_OK)
		fuzz_sink += (uint64_t)i32;
	if (gguf_get_f32(f, kv->key, &f32, &e) == KVS_OK)
		fuzz_sink += f32 > 0;
	if (gguf_get_bool(f, kv->key, &b, &e) == KVS_OK)
		fuzz_sink += b;
	if (gguf_get_str(f, kv->key, &s, &e) == KVS_OK && s.n > 0)
		fuzz_sink += (unsigned char)s.p[0] + (unsigned char)s.p[s.n - 1];
	if (gguf_get_arr(f, kv->key, GGUF_VTYPE_COUNT_, &arr, &e) != KVS_OK)
		return;
	for (uint64_t i = 0; i < arr->arr_n; i++) {
		if (arr->arr_type == GGUF_STRING) {
			s = gguf_arr_str(arr, i);
			if (s.n > 0)
				fuzz_sink += (unsigned char)s.p[s.n - 1];
		} else {
			fuzz_sink += (uint64_t)gguf_arr_i64(arr, i);
			fuzz_sink += gguf_arr_f64(arr, i) > 0;
		}
	}
}

/* Run the tokenizer and detokenizer of a loaded model once. */
static void fuzz_vocab(const struct vocab *v)
{
	static const char text[] = "Hello world! <|im_start|>user\n 12345 \xc3\xa9\xe2\x82\xac\xff";
	int32_t *ids = NULL;
	size_t n = 0, cap = 0, out_n = 0, out_cap = 0;
	char *out = NULL, piece[64];
	struct detok d;
	struct err e;

	fuzz_sink += vocab_n_tokens(v) + (uint64_t)vocab_bos(v) + (uint64_t)vocab_eos(v);
	if (vocab_tokenize(v, text, sizeof text - 1, true, true, &ids, &n, &cap, &e) == KVS_OK) {
		detok_init(&d, v, true);
		for (size_t i = 0; i < n; i++) {
			fuzz_sink += vocab_piece(v, ids[i], true, piece, sizeof piece);
			detok_push(&d, ids[i], &out, &out_n, &out_cap);
		}
		detok_flush(&d, &out, &out_n, &out_cap);
	}
	free(ids);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct gguf_file *f;
	struct model *m;
	struct err e;

	log_set_level(LOG_QUIET); /* loaders warn about odd but valid files */
	if (gguf_open_memory(&f, data, size, &e) != KVS_OK)
		return 0;
	for (uint64_t i = 0; i < f->n_kv; i++)
		fuzz_kv(f, &f->kv[i]);
	for (uint64_t i = 0; i < f->n_tensors; i++) {
		const struct gguf_tensor *t = gguf_find_tensor(f, f->tensors[i].name);
		const uint8_t *p = t->data;
		fuzz_sink += p[0] + p[t->nbytes - 1];
	}
	if (model_load_gguf(&m, f, &e) != KVS_OK)
		return 0;
	fuzz_vocab(m->vocab);
	model_free(m);
	return 0;
}
