/*
 * gen-corpus-gguf.c: writes the seed corpus of fuzz-gguf into a directory.
 *
 *   tests/fuzz/gen-corpus-gguf tests/fuzz/corpus/gguf
 *
 * The seeds are what engine.md 1.7 asks for, all derived from tiny models
 * (tests/util/tinymodel.c) and a small generic file:
 *   valid-*    tiny valid llama / qwen2 models (GPT-2 and SentencePiece
 *              vocabularies, F32 / F16 / Q8_0 / Q4_0 / Q4_1 weights);
 *   trunc-*    the base model cut at every record boundary of its header
 *              and at each tensor's data;
 *   field-*    one count / length / dim / type / offset field of the base
 *              model changed to a hostile value (files cut after the
 *              header: the field is rejected before the data matters);
 *   gen-*      the same for a small generic file (every value type);
 *   shape-*    the historic attack shapes: zero dim, dim 2^42+1, n_dims 5,
 *              alignment 0 and 3, string length 2^64-1, nested array,
 *              u8-typed scores, special ids >= n_vocab, a <0x-1> token,
 *              and bad hyper-parameters.
 * Output is deterministic. Files the fuzzer found (crash-*, found-*) are
 * added to the directory by hand and are not touched here.
 */
#include "model/model.h"
#include "tests/util/ggufw.h"
#include "tests/util/tinymodel.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *out_dir;
static unsigned n_written;
static uint64_t bytes_written;

/* Write buf[0..n) as out_dir/name. */
static void emit(const char *name, const uint8_t *buf, size_t n)
{
	char *path = xasprintf("%s/%s", out_dir, name);
	FILE *fp = fopen(path, "wb");

	if (fp == NULL || fwrite(buf, 1, n, fp) != n || fclose(fp) != 0) {
		fprintf(stderr, "gen-corpus-gguf: %s: %s\n", path, strerror(errno));
		exit(1);
	}
	n_written++;
	bytes_written += n;
	free(path);
}

/* Serialise w and write it (cut to max bytes when max != 0). */
static void emit_w(const char *name, struct ggufw *w, size_t max)
{
	uint8_t *buf;
	size_t n;

	ggufw_write_mem(w, &buf, &n);
	emit(name, buf, max && max < n ? max : n);
	free(buf);
}

/* A model from spec plus an optional extra record, written as name. */
static void emit_model(const char *name, const struct tinymodel_spec *s,
                       void (*extra)(struct ggufw *))
{
	struct ggufw *w = ggufw_new();
	tinymodel_add(w, s);
	if (extra != NULL)
		extra(w);
	emit_w(name, w, 0);
	ggufw_free(w);
}

/* The base model the truncations and field changes start from. */
static void base_spec(struct tinymodel_spec *s)
{
	tinymodel_defaults(s, "llama");
	s->wtype = DT_Q4_1;
	s->embd_type = DT_Q8_0;
	s->n_ff = 32;
}

static void gen_valid(void)
{
	struct tinymodel_spec s;

	base_spec(&s);
	s.n_ff = 64;
	emit_model("valid-llama-gpt2-q4_1.gguf", &s, NULL);
	tinymodel_defaults(&s, "qwen2");
	s.wtype = DT_Q8_0;
	s.embd_type = DT_Q8_0;
	s.tied = false;
	s.head_dim = 16;
	s.n_head_kv = 1;
	emit_model("valid-qwen2-gpt2-q8_0-untied.gguf", &s, NULL);
	tinymodel_defaults(&s, "llama");
	s.vocab = TINY_VOCAB_SPM;
	s.wtype = DT_Q4_0;
	s.embd_type = DT_Q4_0;
	emit_model("valid-llama-spm-q4_0.gguf", &s, NULL);
	tinymodel_defaults(&s, "llama");
	s.n_layer = 1;
	s.wtype = DT_F16;
	s.embd_type = DT_F16;
	s.chat_template = false;
	emit_model("valid-llama-gpt2-f16.gguf", &s, NULL);
}

/* Cuts of the base model at every record boundary. */
static void gen_truncations(void)
{
	struct tinymodel_spec s;
	struct ggufw *w = ggufw_new();
	const struct ggufw_field *fd;
	size_t n_fields;
	uint8_t *buf;
	size_t n;
	char name[64];

	base_spec(&s);
	tinymodel_add(w, &s);
	ggufw_write_mem(w, &buf, &n);
	fd = ggufw_fields(w, &n_fields);
	for (size_t i = 0; i < n_fields; i++) {
		uint64_t off;
		switch (fd[i].kind) {
		case GW_N_KV: emit("trunc-header.gguf", buf, (size_t)fd[i].pos + 4); break;
		case GW_KV_END:
			snprintf(name, sizeof name, "trunc-kv%02u-end.gguf", fd[i].rec);
			emit(name, buf, (size_t)fd[i].pos - 1);
			break;
		case GW_KV_TYPE:
			snprintf(name, sizeof name, "trunc-kv%02u-key.gguf", fd[i].rec);
			emit(name, buf, (size_t)fd[i].pos);
			break;
		case GW_T_END:
			snprintf(name, sizeof name, "trunc-t%02u-end.gguf", fd[i].rec);
			emit(name, buf, (size_t)fd[i].pos - 1);
			break;
		case GW_T_OFFSET:
			/* Cut one byte into this tensor's data. */
			memcpy(&off, buf + fd[i].pos, 8);
			if (fd[i].rec % 8 == 0) {
				size_t cut = (size_t)(ggufw_field(w, GW_DATA, 0, 0)->pos + off + 1);
				snprintf(name, sizeof name, "trunc-t%02u-data.gguf", fd[i].rec);
				emit(name, buf, cut);
			}
			break;
		default: break;
		}
	}
	emit("trunc-last-byte.gguf", buf, n - 1);
	free(buf);
	ggufw_free(w);
}

/* Hostile values per field size, cycled through field by field. */
static const uint64_t evil_u64[] = {
	0, UINT64_MAX, 1ull << 63, (1ull << 42) + 1, 1ull << 32, 0x7fffffffffffffffull, 1000000, 3,
};
static const uint32_t evil_u32[] = { 0, UINT32_MAX, 13, 9, 5, 4, 0x03000000, 40, 31, 1 };

/* For each field of w's last write that is a count, length, dim, type or
 * offset, write buf with that field changed (cut to cut bytes if nonzero). */
static void gen_fields(const char *prefix, struct ggufw *w, const uint8_t *buf, size_t n,
                       size_t cut)
{
	static const char *const kind_name[GW_KIND_COUNT_] = {
		[GW_MAGIC] = "magic",
		[GW_VERSION] = "version",
		[GW_N_TENSORS] = "ntensors",
		[GW_N_KV] = "nkv",
		[GW_KEY_LEN] = "keylen",
		[GW_KV_TYPE] = "type",
		[GW_STR_LEN] = "strlen",
		[GW_ARR_TYPE] = "arrtype",
		[GW_ARR_N] = "arrn",
		[GW_ARR_STR_LEN] = "elemlen",
		[GW_T_NAME_LEN] = "namelen",
		[GW_T_NDIMS] = "ndims",
		[GW_T_NE] = "ne",
		[GW_T_TYPE] = "ttype",
		[GW_T_OFFSET] = "offset",
	};
	const struct ggufw_field *fd;
	size_t n_fields, k64 = 0, k32 = 0;
	uint8_t *copy = xmalloc(n);
	char name[96];

	fd = ggufw_fields(w, &n_fields);
	for (size_t i = 0; i < n_fields; i++) {
		const struct ggufw_field *f = &fd[i];
		if (f->kind >= GW_KIND_COUNT_ || kind_name[f->kind] == NULL || f->size == 0)
			continue;
		/* Tensor infos: the first four and the last one only. */
		if (f->kind >= GW_T_NAME_LEN && f->kind <= GW_T_OFFSET && f->rec > 3 &&
		    ggufw_field(w, GW_T_NAME_LEN, f->rec + 1, 0) != NULL)
			continue;
		/* String arrays: only the first and last element lengths. */
		if (f->kind == GW_ARR_STR_LEN && f->sub != 0 &&
		    !(i + 1 < n_fields && fd[i + 1].kind != GW_ARR_STR_LEN))
			continue;
		memcpy(copy, buf, n);
		if (f->kind == GW_MAGIC) {
			memcpy(copy + f->pos, "GGUG", 4);
		} else if (f->size == 8) {
			uint64_t v = evil_u64[k64++ % KVS_ARRAY_LEN(evil_u64)];
			memcpy(copy + f->pos, &v, 8);
		} else {
			uint32_t v = evil_u32[k32++ % KVS_ARRAY_LEN(evil_u32)];
			memcpy(copy + f->pos, &v, 4);
		}
		snprintf(name, sizeof name, "%s-r%02u-%s%u.gguf", prefix, f->rec, kind_name[f->kind],
		         f->sub);
		emit(name, copy, cut && cut < n ? cut : n);
	}
	free(copy);
}

static void gen_field_changes(void)
{
	struct tinymodel_spec s;
	struct ggufw *w = ggufw_new();
	static const char *const list[] = { "x", "yy", "" };
	static const int32_t nums[] = { 1, -2, 3 };
	uint8_t *buf;
	size_t n;

	base_spec(&s);
	tinymodel_add(w, &s);
	ggufw_write_mem(w, &buf, &n);
	gen_fields("field", w, buf, n, (size_t)ggufw_field(w, GW_DATA, 0, 0)->pos + 64);
	free(buf);
	ggufw_free(w);

	/* A small file with every value type and three tensors, kept whole. */
	w = ggufw_new();
	ggufw_add_str(w, "general.architecture", "llama");
	ggufw_add_u8(w, "g.u8", 1);
	ggufw_add_i8(w, "g.i8", -1);
	ggufw_add_u16(w, "g.u16", 2);
	ggufw_add_i16(w, "g.i16", -2);
	ggufw_add_u32(w, "g.u32", 3);
	ggufw_add_i32(w, "g.i32", -3);
	ggufw_add_f32(w, "g.f32", 0.5f);
	ggufw_add_bool(w, "g.bool", 1);
	ggufw_add_u64(w, "g.u64", 4);
	ggufw_add_i64(w, "g.i64", -4);
	ggufw_add_f64(w, "g.f64", 0.25);
	ggufw_add_arr_str(w, "g.astr", list, 3);
	ggufw_add_arr_i32(w, "g.ai32", nums, 3);
	ggufw_add_tensor(w, "blk.0.attn_q.weight", DT_Q4_1, 2, (int64_t[]){ 64, 2 }, NULL, 80);
	ggufw_add_tensor(w, "norm.weight", DT_F32, 1, (int64_t[]){ 16 }, NULL, 64);
	ggufw_add_tensor(w, "t3", DT_Q8_0, 3, (int64_t[]){ 32, 2, 2 }, NULL, 136);
	ggufw_write_mem(w, &buf, &n);
	emit("valid-generic.gguf", buf, n);
	gen_fields("gen", w, buf, n, 0);
	free(buf);
	ggufw_free(w);
}

/* ---- the historic shapes ---- */

/* A one-tensor file with the given dims. */
static void emit_dims(const char *name, uint32_t n_dims, const int64_t *ne, uint32_t type,
                      size_t nbytes)
{
	struct ggufw *w = ggufw_new();
	ggufw_add_str(w, "general.architecture", "llama");
	ggufw_add_tensor(w, "blk.0.attn_q.weight", type, n_dims, ne, NULL, nbytes);
	emit_w(name, w, 0);
	ggufw_free(w);
}

static void x_bos_big(struct ggufw *w)
{
	ggufw_add_u32(w, "tokenizer.ggml.bos_token_id", 267);
}
static void x_eos_max(struct ggufw *w)
{
	ggufw_add_u32(w, "tokenizer.ggml.eos_token_id", UINT32_MAX);
}
static void x_eos_neg(struct ggufw *w)
{
	ggufw_add_i32(w, "tokenizer.ggml.eos_token_id", -1);
}
static void x_eot_big(struct ggufw *w)
{
	ggufw_add_u32(w, "tokenizer.ggml.eot_token_id", 100000);
}
static void x_pad_big(struct ggufw *w)
{
	ggufw_add_u32(w, "tokenizer.ggml.padding_token_id", 267);
}
static void x_scores_u8(struct ggufw *w)
{
	static uint8_t sc[267];
	ggufw_add_arr_u8(w, "tokenizer.ggml.scores", sc, sizeof sc);
}
static void x_scores_short(struct ggufw *w)
{
	static float sc[10];
	ggufw_add_arr_f32(w, "tokenizer.ggml.scores", sc, 10);
}
static void x_types_u8(struct ggufw *w)
{
	static uint8_t ty[267];
	memset(ty, 1, sizeof ty);
	ggufw_add_arr_u8(w, "tokenizer.ggml.token_type", ty, sizeof ty);
}
static void x_types_short(struct ggufw *w)
{
	static int32_t ty[5] = { 3, 3, 3, 1, 1 };
	ggufw_add_arr_i32(w, "tokenizer.ggml.token_type", ty, 5);
}
static void x_types_bad(struct ggufw *w)
{
	static int32_t ty[267];
	for (int i = 0; i < 267; i++)
		ty[i] = i % 2 ? -7 : 99;
	ggufw_add_arr_i32(w, "tokenizer.ggml.token_type", ty, 267);
}
static void x_merges_nospace(struct ggufw *w)
{
	static const char *const m[] = { "\xc4\xa0t", "h e", " ", "a ", " b", "x  y" };
	ggufw_add_arr_str(w, "tokenizer.ggml.merges", m, KVS_ARRAY_LEN(m));
}
static void x_merges_unknown(struct ggufw *w)
{
	static const char *const m[] = { "zz qq", "h e" };
	ggufw_add_arr_str(w, "tokenizer.ggml.merges", m, 2);
}
static void x_tokens_nested(struct ggufw *w)
{
	static const uint8_t nested[] = { 9, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0,
		                              0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 };
	ggufw_add_raw(w, "tokenizer.ggml.tokens", GGUF_ARRAY, nested, sizeof nested);
}
static void x_tokens_u32(struct ggufw *w)
{
	static uint32_t t[267];
	ggufw_add_arr_u32(w, "tokenizer.ggml.tokens", t, 267);
}
static void x_model_bert(struct ggufw *w)
{
	ggufw_add_str(w, "tokenizer.ggml.model", "bert");
}
static void x_pre_unknown(struct ggufw *w)
{
	ggufw_add_str(w, "tokenizer.ggml.pre", "nonesuch");
}
static void x_layers0(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.block_count", 0);
}
static void x_layers_huge(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.block_count", 100000);
}
static void x_heads0(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.attention.head_count", 0);
}
static void x_heads_arr(struct ggufw *w)
{
	static const uint32_t h[] = { 4, 8 };
	ggufw_add_arr_u32(w, "llama.attention.head_count", h, 2);
}
static void x_kv3(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.attention.head_count_kv", 3);
}
static void x_embd33(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.embedding_length", 33);
}
static void x_rot7(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.rope.dimension_count", 7);
}
static void x_eps_nan(struct ggufw *w)
{
	ggufw_add_f32(w, "llama.attention.layer_norm_rms_epsilon", NAN);
}
static void x_eps_u32(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.attention.layer_norm_rms_epsilon", 1);
}
static void x_ctx0(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.context_length", 0);
}
static void x_vocab_size(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.vocab_size", 268);
}
static void x_yarn(struct ggufw *w)
{
	ggufw_add_str(w, "llama.rope.scaling.type", "yarn");
}
static void x_keylen(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.attention.key_length", 1024);
}
static void x_arch_gemma(struct ggufw *w)
{
	ggufw_add_str(w, "general.architecture", "gemma3");
}

/* Model variants: one key left out of the base and the extra put in. */
static const struct {
	const char *name;
	bool spm;
	const char *skip;
	void (*extra)(struct ggufw *);
} model_shapes[] = {
	{ "shape-bos-ge-nvocab.gguf", false, "tokenizer.ggml.bos_token_id", x_bos_big },
	{ "shape-eos-u32max.gguf", false, "tokenizer.ggml.eos_token_id", x_eos_max },
	{ "shape-eos-negative.gguf", false, "tokenizer.ggml.eos_token_id", x_eos_neg },
	{ "shape-eot-ge-nvocab.gguf", false, NULL, x_eot_big },
	{ "shape-pad-ge-nvocab.gguf", false, NULL, x_pad_big },
	{ "shape-spm-scores-u8.gguf", true, "tokenizer.ggml.scores", x_scores_u8 },
	{ "shape-spm-scores-short.gguf", true, "tokenizer.ggml.scores", x_scores_short },
	{ "shape-token-type-u8.gguf", false, "tokenizer.ggml.token_type", x_types_u8 },
	{ "shape-token-type-short.gguf", false, "tokenizer.ggml.token_type", x_types_short },
	{ "shape-token-type-bad.gguf", false, "tokenizer.ggml.token_type", x_types_bad },
	{ "shape-merges-no-space.gguf", false, "tokenizer.ggml.merges", x_merges_nospace },
	{ "shape-merges-unknown.gguf", false, "tokenizer.ggml.merges", x_merges_unknown },
	{ "shape-tokens-nested.gguf", false, "tokenizer.ggml.tokens", x_tokens_nested },
	{ "shape-tokens-u32.gguf", false, "tokenizer.ggml.tokens", x_tokens_u32 },
	{ "shape-tokenizer-bert.gguf", false, "tokenizer.ggml.model", x_model_bert },
	{ "shape-pre-unknown.gguf", false, "tokenizer.ggml.pre", x_pre_unknown },
	{ "shape-no-tokens.gguf", false, "tokenizer.ggml.tokens", NULL },
	{ "shape-block-count-0.gguf", false, "llama.block_count", x_layers0 },
	{ "shape-block-count-huge.gguf", false, "llama.block_count", x_layers_huge },
	{ "shape-head-count-0.gguf", false, "llama.attention.head_count", x_heads0 },
	{ "shape-head-count-per-layer.gguf", false, "llama.attention.head_count", x_heads_arr },
	{ "shape-head-count-kv-3.gguf", false, "llama.attention.head_count_kv", x_kv3 },
	{ "shape-embd-33.gguf", false, "llama.embedding_length", x_embd33 },
	{ "shape-rope-dims-7.gguf", false, "llama.rope.dimension_count", x_rot7 },
	{ "shape-eps-nan.gguf", false, "llama.attention.layer_norm_rms_epsilon", x_eps_nan },
	{ "shape-eps-u32.gguf", false, "llama.attention.layer_norm_rms_epsilon", x_eps_u32 },
	{ "shape-context-0.gguf", false, "llama.context_length", x_ctx0 },
	{ "shape-vocab-size-mismatch.gguf", false, "llama.vocab_size", x_vocab_size },
	{ "shape-rope-yarn.gguf", false, NULL, x_yarn },
	{ "shape-key-length-1024.gguf", false, NULL, x_keylen },
	{ "shape-arch-gemma3.gguf", false, "general.architecture", x_arch_gemma },
	{ "shape-missing-tensor.gguf", false, NULL, NULL },
};

/* Replace the first occurrence of from with to (same length) in buf. */
static bool patch_bytes(uint8_t *buf, size_t n, const char *from, const char *to)
{
	size_t k = strlen(from);
	for (size_t i = 0; i + k <= n; i++) {
		if (memcmp(buf + i, from, k) == 0) {
			memcpy(buf + i, to, k);
			return true;
		}
	}
	return false;
}

static void gen_shapes(void)
{
	struct tinymodel_spec s;
	struct ggufw *w;
	uint8_t *buf;
	size_t n;

	/* Tensor shapes (engine.md 1.7). */
	emit_dims("shape-zero-dim.gguf", 2, (int64_t[]){ 32, 0 }, DT_Q4_1, 32);
	emit_dims("shape-dim-2p42.gguf", 2, (int64_t[]){ 32, (1ll << 42) + 1 }, DT_Q4_1, 64);
	emit_dims("shape-dim-2p62-wrap.gguf", 2, (int64_t[]){ 256, 1ll << 62 }, DT_Q4_K, 64);
	emit_dims("shape-ndims-5.gguf", 5, (int64_t[]){ 32, 1, 1, 1, 1 }, DT_F32, 128);
	emit_dims("shape-ndims-0.gguf", 0, (int64_t[]){ 32 }, DT_F32, 128);
	emit_dims("shape-type-4.gguf", 1, (int64_t[]){ 32 }, 4, 32);
	emit_dims("shape-type-neg.gguf", 1, (int64_t[]){ 32 }, UINT32_MAX, 32);
	emit_dims("shape-ne0-not-block.gguf", 2, (int64_t[]){ 33, 2 }, DT_Q8_0, 68);
	emit_dims("shape-neg-dim.gguf", 1, (int64_t[]){ -1 }, DT_F32, 4);

	static const uint32_t aligns[] = { 0, 3, 1u << 31 };
	for (size_t i = 0; i < KVS_ARRAY_LEN(aligns); i++) {
		char name[64];
		w = ggufw_new();
		ggufw_set_alignment(w, aligns[i]);
		ggufw_add_tensor(w, "a", DT_F32, 1, (int64_t[]){ 8 }, NULL, 32);
		snprintf(name, sizeof name, "shape-alignment-%u.gguf", aligns[i]);
		emit_w(name, w, 0);
		ggufw_free(w);
	}
	w = ggufw_new();
	ggufw_add_str(w, "general.name", "x");
	ggufw_write_mem(w, &buf, &n);
	memset(buf + ggufw_field(w, GW_STR_LEN, 0, 0)->pos, 0xff, 8);
	emit("shape-strlen-2p64-1.gguf", buf, n);
	free(buf);
	ggufw_free(w);
	w = ggufw_new();
	ggufw_add_raw(w, "g.nested", GGUF_ARRAY,
	              (const uint8_t[]){ 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 4, 0,
	                                 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0 },
	              28);
	emit_w("shape-nested-array.gguf", w, 0);
	ggufw_free(w);
	w = ggufw_new();
	ggufw_add_u32(w, "a", 1);
	ggufw_add_u32(w, "a", 2);
	emit_w("shape-duplicate-key.gguf", w, 0);
	ggufw_free(w);
	w = ggufw_new();
	ggufw_add_raw(w, "", GGUF_U8, "\1", 1);
	emit_w("shape-empty-key.gguf", w, 0);
	ggufw_free(w);
	w = ggufw_new();
	ggufw_add_tensor(w, "t", DT_F32, 1, (int64_t[]){ 8 }, NULL, 32);
	ggufw_add_tensor(w, "t", DT_F32, 1, (int64_t[]){ 8 }, NULL, 32);
	emit_w("shape-duplicate-tensor.gguf", w, 0);
	ggufw_free(w);

	/* Model-level shapes, on a one-layer model to keep the corpus small. */
	for (size_t i = 0; i < KVS_ARRAY_LEN(model_shapes); i++) {
		base_spec(&s);
		s.n_layer = 1;
		if (model_shapes[i].spm)
			s.vocab = TINY_VOCAB_SPM;
		s.skip_key = model_shapes[i].skip;
		if (model_shapes[i].extra == NULL && model_shapes[i].skip == NULL)
			s.skip_tensor = "blk.0.attn_v.weight";
		emit_model(model_shapes[i].name, &s, model_shapes[i].extra);
	}
	/* A <0x-1> byte token and a token with a NUL in the SPM vocab. */
	base_spec(&s);
	s.n_layer = 1;
	s.vocab = TINY_VOCAB_SPM;
	w = ggufw_new();
	tinymodel_add(w, &s);
	ggufw_write_mem(w, &buf, &n);
	if (patch_bytes(buf, n, "<0x00>", "<0x-1>"))
		emit("shape-spm-byte-token-0x-1.gguf", buf, n);
	patch_bytes(buf, n, "<0x-1>", "<0x00>");
	if (patch_bytes(buf, n, "<0x41>", "<0xZZ>"))
		emit("shape-spm-byte-token-0xZZ.gguf", buf, n);
	free(buf);
	ggufw_free(w);
	base_spec(&s);
	s.n_layer = 1;
	w = ggufw_new();
	tinymodel_add(w, &s);
	ggufw_write_mem(w, &buf, &n);
	if (patch_bytes(buf, n, "<|im_end|>", "<|im\0end|>"))
		emit("shape-token-with-nul.gguf", buf, n);
	free(buf);
	ggufw_free(w);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: gen-corpus-gguf DIR\n");
		return 2;
	}
	out_dir = argv[1];
	gen_valid();
	gen_truncations();
	gen_field_changes();
	gen_shapes();
	printf("gen-corpus-gguf: wrote %u files, %llu bytes, to %s\n", n_written,
	       (unsigned long long)bytes_written, out_dir);
	return 0;
}
