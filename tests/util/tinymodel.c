/*
 * tinymodel.c: tiny, valid llama / qwen2 / qwen3 GGUF models for tests.
 *
 * The keys follow engine.md 3.1 and 4.2, the tensors 3.2 and 3.6. The GPT-2
 * vocabulary has the 256 byte symbols of the byte-level alphabet (bytes
 * 33..126, 161..172 and 174..255 stand for themselves; the other 68 bytes
 * map to U+0100 + n in byte order) plus a few merges, so any text can be
 * tokenized; the SentencePiece one has the 256 <0xNN> byte-fallback tokens
 * plus a few scored pieces.
 */
#include "tests/util/tinymodel.h"

#include "engine/engine.h"
#include "model/model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* GPT-2 merges (left, right); each result is also a token. */
static const char *const tiny_merges[][2] = {
	{ "\xc4\xa0", "t" }, { "h", "e" }, { "\xc4\xa0t", "he" }, { "i", "n" },
	{ "\xc4\xa0", "a" }, { "e", "r" }, { "o", "n" },          { "\xc4\xa0", "s" },
};

/* SentencePiece pieces and their scores. */
static const struct {
	const char *text;
	float score;
} tiny_pieces[] = {
	{ "\xe2\x96\x81", -1.0f },
	{ "\xe2\x96\x81t", -2.0f },
	{ "he", -3.0f },
	{ "\xe2\x96\x81the", -4.0f },
	{ "in", -5.0f },
	{ "er", -6.0f },
	{ "\xe2\x96\x81"
	  "a",
	  -7.0f },
	{ "on", -8.0f },
};

#define TINY_N_SPECIAL 3
#define TINY_MAX_PAIRS 512 /* head_dim / 2 at most (the loader's limit is 1024) */

float tinymodel_rand(uint64_t *state)
{
	uint64_t x = *state ? *state : 0x9e3779b97f4a7c15ull;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return (float)((x * 0x2545f4914f6cdd1dull) >> 40) / (float)(1u << 23) - 1.0f;
}

void tinymodel_defaults(struct tinymodel_spec *s, const char *arch)
{
	bool qwen = strncmp(arch, "qwen", 4) == 0;

	memset(s, 0, sizeof *s);
	s->arch = arch;
	s->name = qwen ? (strcmp(arch, "qwen3") == 0 ? "tiny-qwen3" : "tiny-qwen2") : "tiny-llama";
	s->n_layer = 2;
	s->n_embd = 32;
	s->n_head = 4;
	s->n_head_kv = 2;
	s->n_ff = 64;
	s->n_ctx = 256;
	s->wtype = DT_F32;
	s->embd_type = DT_F32;
	s->tied = true;
	s->qkv_bias = strcmp(arch, "qwen2") == 0;
	s->qk_norm = strcmp(arch, "qwen3") == 0;
	s->fused_qkv = strcmp(arch, "phi3") == 0;
	s->post_norm = strncmp(arch, "gemma", 5) == 0;
	s->qk_norm = s->qk_norm || strcmp(arch, "gemma3") == 0;
	s->vocab = TINY_VOCAB_GPT2;
	s->rope_base = qwen ? 1000000.0f : 10000.0f;
	s->rms_eps = qwen ? 1e-6f : 1e-5f;
	s->scale = 0.5f;
	s->seed = 1;
	s->chat_template = true;
}

uint32_t tinymodel_n_vocab(const struct tinymodel_spec *s)
{
	if (s->vocab == TINY_VOCAB_SPM)
		return TINY_N_SPECIAL + 256 + (uint32_t)KVS_ARRAY_LEN(tiny_pieces);
	return TINY_N_SPECIAL + 256 + (uint32_t)KVS_ARRAY_LEN(tiny_merges) + s->n_extra_tokens;
}

/* The byte-level symbol for byte b as UTF-8 into out (>= 3 bytes + NUL). */
static void tiny_byte_symbol(unsigned b, char *out)
{
	unsigned cp, n = 0;

	if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
		cp = b;
	} else {
		for (unsigned k = 0; k < b; k++)
			if (!((k >= 33 && k <= 126) || (k >= 161 && k <= 172) || (k >= 174 && k <= 255)))
				n++;
		cp = 256 + n;
	}
	out[utf8_encode(cp, out)] = '\0';
}

static bool tiny_skip_key(const struct tinymodel_spec *s, const char *key)
{
	return s->skip_key != NULL && strcmp(s->skip_key, key) == 0;
}

/* Add "{arch}.suffix" = v unless skipped. */
static void tiny_arch_u32(struct ggufw *w, const struct tinymodel_spec *s, const char *suffix,
                          uint32_t v)
{
	char key[96];
	snprintf(key, sizeof key, "%s.%s", s->arch, suffix);
	if (!tiny_skip_key(s, key))
		ggufw_add_u32(w, key, v);
}

static void tiny_arch_f32(struct ggufw *w, const struct tinymodel_spec *s, const char *suffix,
                          float v)
{
	char key[96];
	snprintf(key, sizeof key, "%s.%s", s->arch, suffix);
	if (!tiny_skip_key(s, key))
		ggufw_add_f32(w, key, v);
}

/* The tokenizer keys. */
static void tiny_vocab(struct ggufw *w, const struct tinymodel_spec *s)
{
	uint32_t n = tinymodel_n_vocab(s);
	char **tok = xcalloc(n, sizeof *tok);
	int32_t *type = xcalloc(n, sizeof *type);
	float *score = xcalloc(n, sizeof *score);
	bool spm = s->vocab == TINY_VOCAB_SPM;
	static const char *const gpt2_special[] = { "<|endoftext|>", "<|im_start|>", "<|im_end|>" };
	static const char *const spm_special[] = { "<unk>", "<s>", "</s>" };
	uint32_t i = 0;

	for (; i < TINY_N_SPECIAL; i++) {
		tok[i] = xstrdup(spm ? spm_special[i] : gpt2_special[i]);
		type[i] = (spm && i == 0) ? TOKEN_UNKNOWN : TOKEN_CONTROL;
	}
	for (unsigned b = 0; b < 256; b++, i++) {
		char sym[16];
		if (spm)
			snprintf(sym, sizeof sym, "<0x%02X>", b);
		else
			tiny_byte_symbol(b, sym);
		tok[i] = xstrdup(sym);
		type[i] = spm ? TOKEN_BYTE : TOKEN_NORMAL;
	}
	if (spm) {
		for (size_t k = 0; k < KVS_ARRAY_LEN(tiny_pieces); k++, i++) {
			tok[i] = xstrdup(tiny_pieces[k].text);
			type[i] = TOKEN_NORMAL;
			score[i] = tiny_pieces[k].score;
		}
	} else {
		for (size_t k = 0; k < KVS_ARRAY_LEN(tiny_merges); k++, i++) {
			tok[i] = xasprintf("%s%s", tiny_merges[k][0], tiny_merges[k][1]);
			type[i] = TOKEN_NORMAL;
		}
		for (uint32_t k = 0; k < s->n_extra_tokens; k++, i++) {
			tok[i] = xstrdup(s->extra_tokens[k]);
			type[i] = TOKEN_CONTROL;
		}
	}
	if (!tiny_skip_key(s, "tokenizer.ggml.model"))
		ggufw_add_str(w, "tokenizer.ggml.model", spm ? "llama" : "gpt2");
	if (!tiny_skip_key(s, "tokenizer.ggml.pre"))
		ggufw_add_str(w, "tokenizer.ggml.pre",
		              spm                                        ? "default"
		                      : strncmp(s->arch, "qwen", 4) == 0 ? "qwen2"
		                                                         : "smollm");
	if (!tiny_skip_key(s, "tokenizer.ggml.tokens"))
		ggufw_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok, n);
	if (spm && !tiny_skip_key(s, "tokenizer.ggml.scores"))
		ggufw_add_arr_f32(w, "tokenizer.ggml.scores", score, n);
	if (!tiny_skip_key(s, "tokenizer.ggml.token_type"))
		ggufw_add_arr_i32(w, "tokenizer.ggml.token_type", type, n);
	if (!spm && !tiny_skip_key(s, "tokenizer.ggml.merges")) {
		char *merges[KVS_ARRAY_LEN(tiny_merges)];
		for (size_t k = 0; k < KVS_ARRAY_LEN(tiny_merges); k++)
			merges[k] = xasprintf("%s %s", tiny_merges[k][0], tiny_merges[k][1]);
		ggufw_add_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges,
		                  KVS_ARRAY_LEN(tiny_merges));
		for (size_t k = 0; k < KVS_ARRAY_LEN(tiny_merges); k++)
			free(merges[k]);
	}
	if (!tiny_skip_key(s, "tokenizer.ggml.bos_token_id"))
		ggufw_add_u32(w, "tokenizer.ggml.bos_token_id", 1);
	if (!tiny_skip_key(s, "tokenizer.ggml.eos_token_id"))
		ggufw_add_u32(w, "tokenizer.ggml.eos_token_id", 2);
	if (!tiny_skip_key(s, "tokenizer.ggml.unknown_token_id") && spm)
		ggufw_add_u32(w, "tokenizer.ggml.unknown_token_id", 0);
	if (!tiny_skip_key(s, "tokenizer.ggml.add_bos_token"))
		ggufw_add_bool(w, "tokenizer.ggml.add_bos_token", spm);
	if (s->chat_template && !tiny_skip_key(s, "tokenizer.chat_template"))
		ggufw_add_str(w, "tokenizer.chat_template",
		              s->template_src
		                      ? s->template_src
		                      : "{% for message in messages %}{{'<|im_start|>' + message['role'] + "
		                        "'\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}\n"
		                        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
		                        "{% endif %}");
	for (uint32_t k = 0; k < n; k++)
		free(tok[k]);
	free(tok);
	free(type);
	free(score);
}

/* Store f16(x) at p. */
static void tiny_put_f16(uint8_t *p, double x)
{
	uint16_t h = dtype_f32_to_f16((float)x);
	p[0] = (uint8_t)(h & 0xff);
	p[1] = (uint8_t)(h >> 8);
}

void tinymodel_random_blocks(uint32_t type, uint8_t *q, size_t nbytes, float scale, uint64_t *rng)
{
	const struct dtype_info *di = dtype_info(type);
	for (size_t i = 0; i < nbytes; i++)
		q[i] = (uint8_t)(128.0f + 127.99f * tinymodel_rand(rng));
	for (uint8_t *b = q; b < q + nbytes; b += di->block_bytes)
		switch (type) {
		case DT_Q5_0: tiny_put_f16(b, scale / 16.0); break;
		case DT_Q5_1:
			tiny_put_f16(b, 2.0 * scale / 31);
			tiny_put_f16(b + 2, -scale);
			break;
		case DT_Q4_K:
			tiny_put_f16(b, 2.0 * scale / (63 * 15));
			tiny_put_f16(b + 2, scale / 63.0);
			break;
		case DT_Q5_K:
			tiny_put_f16(b, 2.0 * scale / (63 * 31));
			tiny_put_f16(b + 2, scale / 63.0);
			break;
		default: tiny_put_f16(b + 208, scale / (128.0 * 32)); break; /* Q6_K */
		}
}

/* One tensor of ne0 x ne1 random values (around 1 for norms) in type. */
static void tiny_tensor(struct ggufw *w, const struct tinymodel_spec *s, uint64_t *rng,
                        const char *name, uint32_t type, int64_t ne0, int64_t ne1, bool norm)
{
	int64_t n = ne0 * ne1, ne[2] = { ne0, ne1 };
	float *x;
	void *q;
	size_t nbytes;
	uint64_t row;

	if (s->skip_tensor != NULL && strcmp(s->skip_tensor, name) == 0)
		return;
	x = xmallocarray((size_t)n, sizeof *x);
	for (int64_t i = 0; i < n; i++)
		x[i] = norm ? 1.0f + 0.1f * tinymodel_rand(rng) : s->scale * tinymodel_rand(rng);
	if (!dtype_row_bytes(type, (uint64_t)ne0, &row)) {
		fprintf(stderr, "tinymodel: %s: %s rows of %lld are not whole blocks\n", name,
		        dtype_name(type), (long long)ne0);
		abort();
	}
	nbytes = (size_t)row * (size_t)ne1;
	q = xmalloc(nbytes);
	switch (type) {
	case DT_F32: memcpy(q, x, nbytes); break;
	case DT_F16:
		for (int64_t i = 0; i < n; i++)
			((uint16_t *)q)[i] = dtype_f32_to_f16(x[i]);
		break;
	case DT_BF16:
		for (int64_t i = 0; i < n; i++)
			((uint16_t *)q)[i] = dtype_f32_to_bf16(x[i]);
		break;
	case DT_Q8_0: dtype_quant_q8_0(x, q, n); break;
	case DT_Q4_0: dtype_quant_q4_0(x, q, n); break;
	case DT_Q4_1: dtype_quant_q4_1(x, q, n); break;
	case DT_Q5_0:
	case DT_Q5_1:
	case DT_Q4_K:
	case DT_Q5_K:
	case DT_Q6_K: tinymodel_random_blocks(type, q, nbytes, s->scale, rng); break;
	default:
		fprintf(stderr, "tinymodel: %s: no quantiser for %s\n", name, dtype_name(type));
		abort();
	}
	ggufw_add_tensor(w, name, type, ne1 == 1 ? 1 : 2, ne, q, nbytes);
	free(q);
	free(x);
}

void tinymodel_add(struct ggufw *w, const struct tinymodel_spec *s)
{
	uint32_t hd = s->head_dim ? s->head_dim : s->n_embd / s->n_head;
	int64_t q = (int64_t)s->n_head * hd, kv = (int64_t)s->n_head_kv * hd;
	int64_t V = tinymodel_n_vocab(s), E = s->n_embd, F = s->n_ff;
	bool bias = s->qkv_bias;
	uint64_t rng = s->seed;
	char name[96];

	if (!tiny_skip_key(s, "general.architecture"))
		ggufw_add_str(w, "general.architecture", s->arch);
	if (!tiny_skip_key(s, "general.name"))
		ggufw_add_str(w, "general.name", s->name);
	tiny_arch_u32(w, s, "block_count", s->n_layer);
	tiny_arch_u32(w, s, "context_length", s->n_ctx);
	tiny_arch_u32(w, s, "embedding_length", s->n_embd);
	tiny_arch_u32(w, s, "feed_forward_length", s->n_ff);
	tiny_arch_u32(w, s, "attention.head_count", s->n_head);
	tiny_arch_u32(w, s, "attention.head_count_kv", s->n_head_kv);
	if (s->head_dim) {
		tiny_arch_u32(w, s, "attention.key_length", hd);
		tiny_arch_u32(w, s, "attention.value_length", hd);
	}
	tiny_arch_u32(w, s, "rope.dimension_count", hd);
	tiny_arch_f32(w, s, "rope.freq_base", s->rope_base);
	tiny_arch_f32(w, s, "attention.layer_norm_rms_epsilon", s->rms_eps);
	tiny_arch_u32(w, s, "vocab_size", (uint32_t)V);
	if (!tiny_skip_key(s, "general.file_type"))
		ggufw_add_u32(w, "general.file_type", s->wtype == DT_Q4_1 ? 3 : 0);
	tiny_vocab(w, s);

	tiny_tensor(w, s, &rng, "token_embd.weight", s->embd_type, E, V, false);
	for (uint32_t l = 0; l < s->n_layer; l++) {
#define LAYER(suffix) (snprintf(name, sizeof name, "blk.%u." suffix, l), name)
		tiny_tensor(w, s, &rng, LAYER("attn_norm.weight"), DT_F32, E, 1, true);
		if (s->fused_qkv) {
			tiny_tensor(w, s, &rng, LAYER("attn_qkv.weight"), s->wtype, E, q + 2 * kv, false);
		} else {
			tiny_tensor(w, s, &rng, LAYER("attn_q.weight"), s->wtype, E, q, false);
			tiny_tensor(w, s, &rng, LAYER("attn_k.weight"), s->wtype, E, kv, false);
			tiny_tensor(w, s, &rng, LAYER("attn_v.weight"), s->wtype, E, kv, false);
		}
		if (bias) {
			tiny_tensor(w, s, &rng, LAYER("attn_q.bias"), DT_F32, q, 1, false);
			tiny_tensor(w, s, &rng, LAYER("attn_k.bias"), DT_F32, kv, 1, false);
			tiny_tensor(w, s, &rng, LAYER("attn_v.bias"), DT_F32, kv, 1, false);
		}
		if (s->qk_norm) {
			tiny_tensor(w, s, &rng, LAYER("attn_q_norm.weight"), DT_F32, hd, 1, true);
			tiny_tensor(w, s, &rng, LAYER("attn_k_norm.weight"), DT_F32, hd, 1, true);
		}
		tiny_tensor(w, s, &rng, LAYER("attn_output.weight"), s->wtype, q, E, false);
		tiny_tensor(w, s, &rng, LAYER("ffn_norm.weight"), DT_F32, E, 1, true);
		if (strcmp(s->arch, "phi3") == 0) {
			tiny_tensor(w, s, &rng, LAYER("ffn_up.weight"), s->wtype, E, 2 * F, false);
		} else {
			tiny_tensor(w, s, &rng, LAYER("ffn_gate.weight"), s->wtype, E, F, false);
			tiny_tensor(w, s, &rng, LAYER("ffn_up.weight"), s->wtype, E, F, false);
		}
		tiny_tensor(w, s, &rng, LAYER("ffn_down.weight"), s->wtype, F, E, false);
		if (s->post_norm) {
			tiny_tensor(w, s, &rng, LAYER("post_attention_norm.weight"), DT_F32, E, 1, true);
			tiny_tensor(w, s, &rng, LAYER("post_ffw_norm.weight"), DT_F32, E, 1, true);
		}
#undef LAYER
	}
	tiny_tensor(w, s, &rng, "output_norm.weight", DT_F32, E, 1, true);
	if (!s->tied)
		tiny_tensor(w, s, &rng, "output.weight", s->embd_type, E, V, false);
	if (s->rope_freqs && (s->skip_tensor == NULL || strcmp(s->skip_tensor, "rope_freqs.weight"))) {
		float f[TINY_MAX_PAIRS];
		for (uint32_t i = 0; i < hd / 2 && i < TINY_MAX_PAIRS; i++)
			f[i] = (float)(i + 1);
		ggufw_add_tensor_f32(w, "rope_freqs.weight", 1, (int64_t[]){ hd / 2 }, f);
	}
	if (s->longrope) {
		float fl[TINY_MAX_PAIRS], fs[TINY_MAX_PAIRS];
		for (uint32_t i = 0; i < hd / 2 && i < TINY_MAX_PAIRS; i++) {
			fl[i] = (float)(i + 1);
			fs[i] = 1.0f + 0.5f * (float)i;
		}
		if (s->skip_tensor == NULL || strcmp(s->skip_tensor, "rope_factors_long.weight"))
			ggufw_add_tensor_f32(w, "rope_factors_long.weight", 1, (int64_t[]){ hd / 2 }, fl);
		if (s->skip_tensor == NULL || strcmp(s->skip_tensor, "rope_factors_short.weight"))
			ggufw_add_tensor_f32(w, "rope_factors_short.weight", 1, (int64_t[]){ hd / 2 }, fs);
	}
}

char *tinymodel_write_temp(const char *tag)
{
	const char *dir = getenv("TMPDIR");
	char *path = xasprintf("%s/kvs-%s-XXXXXX", dir && dir[0] ? dir : "/tmp", tag);
	struct tinymodel_spec s;
	struct ggufw *w;
	int fd = mkstemp(path);

	if (fd < 0) {
		fprintf(stderr, "%s: cannot create a temporary model file: %s\n", path, strerror(errno));
		exit(99);
	}
	close(fd);
	tinymodel_defaults(&s, "llama");
	s.n_embd = 64;
	s.n_ff = 128;
	s.scale = 0.5f;
	w = ggufw_new();
	tinymodel_add(w, &s);
	if (ggufw_write_file(w, path) != 0) {
		fprintf(stderr, "%s: cannot write the tiny model\n", path);
		exit(99);
	}
	ggufw_free(w);
	return path;
}

void tinymodel_load(const struct tinymodel_spec *s, struct model **m, uint8_t **buf)
{
	struct ggufw *w = ggufw_new();
	struct gguf_file *f;
	struct err e;
	size_t n;
	tinymodel_add(w, s);
	ggufw_write_mem(w, buf, &n);
	ggufw_free(w);
	if (gguf_open_memory(&f, *buf, n, &e) != KVS_OK || model_load_gguf(m, f, &e) != KVS_OK) {
		fprintf(stderr, "tiny model: %s\n", e.msg);
		exit(99);
	}
}

void tinymodel_load_attn(struct model **m, uint8_t **buf)
{
	struct tinymodel_spec s;
	tinymodel_defaults(&s, "llama");
	s.n_layer = 4;
	s.n_embd = 64;
	s.n_ff = 128;
	s.scale = 0.5f;
	tinymodel_load(&s, m, buf);
}

struct engine *tinymodel_engine(const struct model *m, uint32_t n_ctx, int threads, bool kv_f32)
{
	struct engine_config c;
	struct engine *eng;
	struct err e;
	engine_config_default(&c);
	c.backend = ENGINE_BACKEND_CPU;
	c.n_threads = threads;
	c.n_ctx = n_ctx;
	if (kv_f32)
		c.kv_type = ENGINE_KV_F32;
	if (engine_create(&eng, m, &c, &e) != KVS_OK) {
		fprintf(stderr, "engine: %s\n", e.msg);
		exit(99);
	}
	return eng;
}

struct engine_sparse tinymodel_spec(const char *text)
{
	struct engine_sparse s;
	struct err e;
	if (engine_sparse_parse(text, &s, &e) != KVS_OK) {
		fprintf(stderr, "%s: %s\n", text, e.msg);
		exit(99);
	}
	return s;
}

void tinymodel_prompt(int32_t *tok, int32_t *pos, uint32_t *slot, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		tok[i] = (int32_t)(3 + (i * 37) % 250);
		pos[i] = (int32_t)i;
		slot[i] = i;
	}
}

void tinymodel_prefill(struct engine *eng, uint32_t n)
{
	int32_t *tok = xmallocarray(n, sizeof *tok), *pos = xmallocarray(n, sizeof *pos);
	uint32_t *slot = xmallocarray(n, sizeof *slot);
	tinymodel_prompt(tok, pos, slot, n);
	struct engine_batch b = { .n_tokens = n, .tokens = tok, .pos = pos, .slot = slot };
	b.n_visible = n;
	b.logits = ENGINE_LOGITS_NONE;
	struct engine_out o;
	struct err e;
	if (engine_forward(eng, &b, &o, &e) != KVS_OK) {
		fprintf(stderr, "prefill: %s\n", e.msg);
		exit(99);
	}
	free(tok);
	free(pos);
	free(slot);
}

void tinymodel_decode(struct engine *eng, uint32_t n, const struct engine_sparse *sp, bool attn,
                      float *out, struct engine_out *o)
{
	tinymodel_decode_capped(eng, n, sp, attn, 0, 0, out, o);
}

void tinymodel_decode_capped(struct engine *eng, uint32_t n, const struct engine_sparse *sp,
                             bool attn, uint32_t n_global, int32_t dist_cap, float *out,
                             struct engine_out *o)
{
	int32_t tok = 42, pos = (int32_t)n;
	uint32_t slot = n;
	struct engine_batch b = { .n_tokens = 1, .tokens = &tok, .pos = &pos, .slot = &slot };
	b.n_visible = n + 1;
	b.logits = ENGINE_LOGITS_LAST;
	b.want_attn = attn;
	b.sparse = sp;
	b.n_global = n_global;
	b.dist_cap = dist_cap;
	struct err e;
	if (engine_forward(eng, &b, o, &e) != KVS_OK) {
		fprintf(stderr, "decode: %s\n", e.msg);
		exit(99);
	}
	memcpy(out, o->logits, engine_model(eng)->hp.n_vocab * sizeof(float));
}

double tinymodel_max_diff(const float *a, const float *b, size_t n)
{
	double d = 0;
	for (size_t i = 0; i < n; i++)
		d = fmax(d, fabs((double)a[i] - b[i]));
	return d;
}
