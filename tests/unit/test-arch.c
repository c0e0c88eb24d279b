/*
 * test-arch.c: model_load against tiny models from tests/util/tinymodel.c
 * (whose shapes follow engine.md 3.2 / 3.6, written independently of
 * arch.c's tables) and against the real default model.
 *
 * Each bad case changes one thing of a valid model (one key, one tensor's
 * presence, one tensor's type) and checks the status and that the message
 * names the key or tensor and what was expected.
 */
#include "model/model.h"
#include "tests/unit/test.h"
#include "tests/util/ggufw.h"
#include "tests/util/tinymodel.h"

#include <errno.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

static char *model_path(void)
{
	return model_default_path(NULL);
}

/* Serialise w and load it as a model from memory; buf must outlive m. */
static int load(struct ggufw *w, struct model **m, uint8_t **buf, struct err *e)
{
	struct gguf_file *f;
	size_t n;
	int rc;

	ggufw_write_mem(w, buf, &n);
	err_clear(e);
	rc = gguf_open_memory(&f, *buf, n, e);
	if (rc != KVS_OK) {
		*m = NULL;
		return rc;
	}
	return model_load_gguf(m, f, e);
}

/* Load spec (plus whatever extra() adds) and expect code and two substrings. */
static void expect(const char *what, const struct tinymodel_spec *s, void (*extra)(struct ggufw *),
                   int code, const char *want1, const char *want2)
{
	struct ggufw *w = ggufw_new();
	struct model *m;
	uint8_t *buf;
	struct err e;
	int rc;

	tinymodel_add(w, s);
	if (extra != NULL)
		extra(w);
	rc = load(w, &m, &buf, &e);
	T_CHECK(rc == code, "%s: status %d ('%s'), expected %d", what, rc, e.msg, code);
	if (code != KVS_OK) {
		T_CHECK(m == NULL, "%s: model returned on failure", what);
		T_CHECK(want1 == NULL || strstr(e.msg, want1), "%s: '%s' lacks '%s'", what, e.msg, want1);
		T_CHECK(want2 == NULL || strstr(e.msg, want2), "%s: '%s' lacks '%s'", what, e.msg, want2);
	}
	model_free(m);
	free(buf);
	ggufw_free(w);
}

static void test_tiny_llama(void)
{
	struct tinymodel_spec s;
	struct ggufw *w = ggufw_new();
	struct model *m;
	uint8_t *buf;
	struct err e;

	tinymodel_defaults(&s, "llama");
	tinymodel_add(w, &s);
	T_EQ_INT(load(w, &m, &buf, &e), KVS_OK);
	if (m == NULL) {
		fprintf(stderr, "tiny llama: %s\n", e.msg);
		goto out;
	}
	T_EQ_STR(m->hp.arch, "llama");
	T_EQ_INT(m->hp.n_layer, 2);
	T_EQ_INT(m->hp.n_ctx_train, 256);
	T_EQ_INT(m->hp.n_embd, 32);
	T_EQ_INT(m->hp.n_ff, 64);
	T_EQ_INT(m->hp.n_head, 4);
	T_EQ_INT(m->hp.n_head_kv, 2);
	T_EQ_INT(m->hp.head_dim, 8);
	T_EQ_INT(m->hp.n_rot, 8);
	T_EQ_INT(m->hp.n_vocab, 3 + 256 + 8);
	T_NEAR(m->hp.rms_eps, 1e-5, 1e-12);
	T_NEAR(m->hp.rope_base, 10000, 0);
	T_NEAR(m->hp.rope_freq_scale, 1, 0);
	T_NEAR(m->hp.attn_scale, 0.35355339, 1e-7); /* 1/sqrt(8) */
	T_EQ_INT(m->hp.rope, ROPE_NORM);
	T_EQ_INT(m->hp.tied_output, 1);
	T_EQ_INT(m->hp.has_qkv_bias, 0);
	T_CHECK(m->output.data == m->tok_embd.data, "tied output shares token_embd");
	T_EQ_STR(m->name, "tiny-llama");
	T_CHECK(m->chat_template && strncmp(m->chat_template, "{% for message", 14) == 0,
	        "chat template");
	T_CHECK(m->vocab != NULL, "vocab loaded");
	T_EQ_INT(m->tok_embd.ne[0], 32);
	T_EQ_INT(m->tok_embd.ne[1], 267);
	for (uint32_t l = 0; l < 2; l++) {
		const struct layer_weights *L = &m->layers[l];
		char name[64];
		snprintf(name, sizeof name, "blk.%u.ffn_down.weight", l);
		T_CHECK(L->w_down.data == gguf_find_tensor(m->gguf, name)->data, "%s data", name);
		T_EQ_STR(L->w_down.name, name);
		T_EQ_INT(L->w_down.ne[0], 64);
		T_EQ_INT(L->w_down.ne[1], 32);
		T_EQ_INT(L->wk.ne[1], 16);
		T_EQ_INT(L->wo.ne[0], 32);
		T_CHECK(L->bq.data == NULL, "no bias");
		T_EQ_INT(L->attn_norm.type, DT_F32);
		T_EQ_INT(L->attn_norm.nbytes, 128);
	}
	model_free(m);
out:
	free(buf);
	ggufw_free(w);
}

static void test_tiny_qwen2(void)
{
	struct tinymodel_spec s;
	struct ggufw *w = ggufw_new();
	struct model *m;
	uint8_t *buf;
	struct err e;

	tinymodel_defaults(&s, "qwen2");
	s.wtype = DT_Q4_1;
	s.embd_type = DT_Q8_0;
	s.tied = false;
	s.head_dim = 16; /* key_length given: q dim 64 != n_embd */
	s.n_head_kv = 1;
	tinymodel_add(w, &s);
	T_EQ_INT(load(w, &m, &buf, &e), KVS_OK);
	if (m == NULL) {
		fprintf(stderr, "tiny qwen2: %s\n", e.msg);
		goto out;
	}
	T_EQ_STR(m->hp.arch, "qwen2");
	T_EQ_INT(m->hp.rope, ROPE_NEOX);
	T_EQ_INT(m->hp.has_qkv_bias, 1);
	T_EQ_INT(m->hp.tied_output, 0);
	T_EQ_INT(m->hp.head_dim, 16);
	T_EQ_INT(m->hp.n_head_kv, 1);
	T_NEAR(m->hp.rope_base, 1e6, 0);
	T_NEAR(m->hp.attn_scale, 0.25, 1e-7);
	T_CHECK(m->output.data != m->tok_embd.data && m->output.type == DT_Q8_0, "untied output");
	T_EQ_INT(m->layers[1].wq.type, DT_Q4_1);
	T_EQ_INT(m->layers[1].wq.ne[1], 64);
	T_EQ_INT(m->layers[1].wo.ne[0], 64);
	T_EQ_INT(m->layers[1].bq.ne[0], 64);
	T_EQ_INT(m->layers[1].bk.ne[0], 16);
	T_CHECK(m->layers[1].bv.data != NULL && m->layers[1].bv.type == DT_F32, "bv");
	T_EQ_INT(m->layers[0].wq.nbytes, 64 * 20); /* 64 rows of one Q4_1 block */
	model_free(m);
out:
	free(buf);
	ggufw_free(w);
}

/* Extra records for the bad cases. */
static void add_ff96(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.feed_forward_length", 96);
}
static void add_layers0(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.block_count", 0);
}
static void add_layers3(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.block_count", 3);
}
static void add_kv3(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.attention.head_count_kv", 3);
}
static void add_kv0(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.attention.head_count_kv", 0);
}
static void add_rot7(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.rope.dimension_count", 7);
}
static void add_rot16(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.rope.dimension_count", 16);
}
static void add_ntk(struct ggufw *w)
{
	ggufw_add_str(w, "llama.rope.scaling.type", "ntk");
}
static void add_vocab300(struct ggufw *w)
{
	ggufw_add_u32(w, "llama.vocab_size", 300);
}
static void add_mamba(struct ggufw *w)
{
	ggufw_add_str(w, "general.architecture", "mamba");
}
static void add_eps_nan(struct ggufw *w)
{
	ggufw_add_f32(w, "llama.attention.layer_norm_rms_epsilon", NAN);
}
static void add_heads_equal(struct ggufw *w)
{
	static const uint32_t h[] = { 4, 4 };
	ggufw_add_arr_u32(w, "llama.attention.head_count", h, 2);
}
static void add_heads_differ(struct ggufw *w)
{
	static const uint32_t h[] = { 4, 8 };
	ggufw_add_arr_u32(w, "llama.attention.head_count", h, 2);
}
static void add_heads_short(struct ggufw *w)
{
	static const uint32_t h[] = { 4 };
	ggufw_add_arr_u32(w, "llama.attention.head_count", h, 1);
}
static void add_rope_freqs3(struct ggufw *w)
{
	ggufw_add_tensor_f32(w, "rope_freqs.weight", 1, (int64_t[]){ 3 }, (float[3]){ 1, 1, 1 });
}
static void add_rope_freqs_neg(struct ggufw *w)
{
	ggufw_add_tensor_f32(w, "rope_freqs.weight", 1, (int64_t[]){ 4 }, (float[4]){ 1, 2, -1, 1 });
}
static void add_q_norm(struct ggufw *w)
{
	static const float ones[8] = { 1, 1, 1, 1, 1, 1, 1, 1 };
	ggufw_add_tensor_f32(w, "blk.0.attn_q_norm.weight", 1, (int64_t[]){ 8 }, ones);
}
static void add_stray(struct ggufw *w)
{
	ggufw_add_tensor_f32(w, "blk.0.ffn_extra.weight", 1, (int64_t[]){ 4 },
	                     (float[4]){ 1, 1, 1, 1 });
}
static void add_blk2(struct ggufw *w)
{
	static const float zeros[32];
	ggufw_add_tensor_f32(w, "blk.2.attn_norm.weight", 1, (int64_t[]){ 32 }, zeros);
}
static void add_tpl_int(struct ggufw *w)
{
	ggufw_add_u32(w, "tokenizer.chat_template", 1);
}

static void test_bad_models(void)
{
	struct tinymodel_spec s;

	tinymodel_defaults(&s, "llama");
	s.skip_tensor = "blk.1.ffn_up.weight";
	expect("missing tensor", &s, NULL, KVS_ENOTFOUND, "tensor 'blk.1.ffn_up.weight' is missing",
	       "llama");

	tinymodel_defaults(&s, "llama");
	s.skip_tensor = "output_norm.weight";
	expect("missing output_norm", &s, NULL, KVS_ENOTFOUND, "'output_norm.weight' is missing", NULL);

	tinymodel_defaults(&s, "qwen2");
	s.qkv_bias = false;
	expect("qwen2 without biases", &s, NULL, KVS_ENOTFOUND, "'blk.0.attn_q.bias' is missing", NULL);

	tinymodel_defaults(&s, "qwen3");
	s.skip_tensor = "blk.1.attn_k_norm.weight";
	expect("qwen3 without a K norm", &s, NULL, KVS_ENOTFOUND,
	       "'blk.1.attn_k_norm.weight' is missing", "qwen3");

	tinymodel_defaults(&s, "llama");
	s.skip_key = "llama.feed_forward_length";
	expect("n_ff disagrees with shapes", &s, add_ff96, KVS_EFORMAT,
	       "tensor 'blk.0.ffn_gate.weight': shape [32, 64, 1, 1]", "expected [32, 96]");
	expect("n_ff missing", &s, NULL, KVS_ENOTFOUND, "llama.feed_forward_length' is missing", NULL);

	tinymodel_defaults(&s, "llama");
	s.skip_key = "llama.block_count";
	expect("block_count 0", &s, add_layers0, KVS_EFORMAT, "'llama.block_count' = 0",
	       "expected 1..512");
	expect("block_count 3", &s, add_layers3, KVS_ENOTFOUND, "'blk.2.attn_norm.weight' is missing",
	       NULL);
	expect("block_count missing", &s, NULL, KVS_ENOTFOUND, "'llama.block_count' is missing", NULL);

	tinymodel_defaults(&s, "llama");
	expect("layer beyond block_count", &s, add_blk2, KVS_EUNSUPPORTED, "'blk.2.attn_norm.weight'",
	       "2 layers");

	tinymodel_defaults(&s, "llama");
	s.skip_key = "llama.attention.head_count_kv";
	expect("kv heads 3 of 4", &s, add_kv3, KVS_EFORMAT,
	       "head_count = 4 is not a multiple of head_count_kv = 3", NULL);
	expect("kv heads 0", &s, add_kv0, KVS_EFORMAT, "'llama.attention.head_count_kv' = 0",
	       "expected 1..4");

	tinymodel_defaults(&s, "llama");
	s.skip_key = "llama.rope.dimension_count";
	expect("odd n_rot", &s, add_rot7, KVS_EFORMAT, "rope.dimension_count = 7", "even");
	expect("n_rot > head_dim", &s, add_rot16, KVS_EFORMAT, "rope.dimension_count' = 16",
	       "expected 2..8");

	tinymodel_defaults(&s, "llama");
	s.skip_key = "llama.attention.layer_norm_rms_epsilon";
	expect("eps missing", &s, NULL, KVS_ENOTFOUND, "layer_norm_rms_epsilon' is missing", NULL);
	expect("eps NaN", &s, add_eps_nan, KVS_EFORMAT, "layer_norm_rms_epsilon' = nan", "finite");

	tinymodel_defaults(&s, "llama");
	expect("ntk scaling", &s, add_ntk, KVS_EUNSUPPORTED, "'llama.rope.scaling.type' = 'ntk'",
	       "expected 'none', 'linear', 'yarn' or 'longrope'");

	tinymodel_defaults(&s, "llama");
	s.skip_key = "llama.vocab_size";
	expect("vocab_size mismatch", &s, add_vocab300, KVS_EFORMAT, "llama.vocab_size = 300",
	       "expected 267");

	tinymodel_defaults(&s, "llama");
	s.skip_key = "general.architecture";
	expect("mamba", &s, add_mamba, KVS_EUNSUPPORTED, "'mamba'",
	       "expected one of: llama, qwen2, qwen3, phi3, gemma2, gemma3");
	expect("no architecture", &s, NULL, KVS_ENOTFOUND, "general.architecture", NULL);

	tinymodel_defaults(&s, "llama");
	s.skip_key = "llama.attention.head_count";
	expect("per-layer heads, equal", &s, add_heads_equal, KVS_OK, NULL, NULL);
	expect("per-layer heads, differ", &s, add_heads_differ, KVS_EUNSUPPORTED, "differs per layer",
	       "layer 1: 8");
	expect("per-layer heads, short", &s, add_heads_short, KVS_EFORMAT, "has 1 entries, expected 2",
	       NULL);

	tinymodel_defaults(&s, "llama");
	expect("rope_freqs of 3 pairs", &s, add_rope_freqs3, KVS_EFORMAT, "'rope_freqs.weight'",
	       "expected [4]");
	expect("rope_freqs with a negative divisor", &s, add_rope_freqs_neg, KVS_EFORMAT,
	       "'rope_freqs.weight': entry 2 = -1", "> 0");
	expect("q norm on llama", &s, add_q_norm, KVS_EUNSUPPORTED, "'blk.0.attn_q_norm.weight'",
	       "only qwen3 and gemma3");
	expect("stray tensor", &s, add_stray, KVS_EUNSUPPORTED, "'blk.0.ffn_extra.weight' is not part",
	       NULL);

	tinymodel_defaults(&s, "llama");
	s.skip_key = "tokenizer.chat_template";
	expect("template not a string", &s, add_tpl_int, KVS_EFORMAT, "tokenizer.chat_template",
	       "expected string");
	s.skip_key = "general.name";
	expect("no name", &s, NULL, KVS_OK, NULL, NULL);

	/* qwen2 is never tied by force, and a llama with biases is accepted. */
	tinymodel_defaults(&s, "llama");
	s.qkv_bias = true;
	expect("llama with biases", &s, NULL, KVS_OK, NULL, NULL);
	s.skip_tensor = "blk.1.attn_v.bias";
	expect("llama with a missing bias", &s, NULL, KVS_ENOTFOUND, "'blk.1.attn_v.bias' is missing",
	       NULL);
}

/* Patch one tensor's type in a valid F32 model. */
static void test_bad_types(void)
{
	static const struct {
		const char *tensor;
		uint32_t type;
		const char *want;
	} cases[] = {
		{ "blk.0.attn_norm.weight", DT_I32, "'blk.0.attn_norm.weight': type I32, expected F32" },
		{ "blk.1.attn_q.weight", DT_I32,
		  "'blk.1.attn_q.weight': type I32, expected one of F32, F16" },
		{ "token_embd.weight", DT_I32, "'token_embd.weight': type I32, expected one of" },
	};
	for (size_t c = 0; c < KVS_ARRAY_LEN(cases); c++) {
		struct tinymodel_spec s;
		struct ggufw *w = ggufw_new();
		struct gguf_file *f;
		struct model *m = NULL;
		uint8_t *buf;
		size_t n, n_fields;
		const struct ggufw_field *fields;
		struct err e;
		uint32_t rec = UINT32_MAX;

		tinymodel_defaults(&s, "llama");
		tinymodel_add(w, &s);
		ggufw_write_mem(w, &buf, &n);
		/* Find the tensor's record by its name. */
		fields = ggufw_fields(w, &n_fields);
		for (size_t i = 0; i < n_fields; i++) {
			uint64_t len;
			if (fields[i].kind != GW_T_NAME_LEN)
				continue;
			memcpy(&len, buf + fields[i].pos, 8);
			if (len == strlen(cases[c].tensor) &&
			    memcmp(buf + fields[i].pos + 8, cases[c].tensor, len) == 0)
				rec = fields[i].rec;
		}
		T_CHECK(rec != UINT32_MAX, "%s not found", cases[c].tensor);
		if (rec != UINT32_MAX)
			memcpy(buf + ggufw_field(w, GW_T_TYPE, rec, 0)->pos, &cases[c].type, 4);
		T_EQ_INT(gguf_open_memory(&f, buf, n, &e), KVS_OK);
		if (f != NULL) {
			T_EQ_INT(model_load_gguf(&m, f, &e), KVS_EUNSUPPORTED);
			T_CHECK(strstr(e.msg, cases[c].want), "'%s' lacks '%s'", e.msg, cases[c].want);
		}
		model_free(m);
		free(buf);
		ggufw_free(w);
	}
}

/* Linear RoPE scaling: factor 4 gives freq_scale 0.25; either spelling. */
static void add_linear4(struct ggufw *w)
{
	ggufw_add_str(w, "llama.rope.scaling.type", "linear");
	ggufw_add_f32(w, "llama.rope.scaling.factor", 4.0f);
}
static void add_scale_linear2(struct ggufw *w)
{
	ggufw_add_f32(w, "llama.rope.scale_linear", 2.0f);
}

/* YaRN, factor 4 over an original context of 64 (tiny llama: n_rot 8,
 * base 10000). By hand: the pair where beta turns fit the original
 * context is 8 ln(64 / (2 pi beta)) / (2 ln 10000): -0.497 for beta 32
 * (floor, clamped to 0) and 1.008 for beta 1 (ceil: 2). The magnitude is
 * 1 + 0.1 ln 4 = 1.1386294; the attention factor kept in hparams is 1 up to
 * llama.cpp's float round trip. */
static void add_yarn4(struct ggufw *w)
{
	ggufw_add_str(w, "llama.rope.scaling.type", "yarn");
	ggufw_add_f32(w, "llama.rope.scaling.factor", 4.0f);
	ggufw_add_u32(w, "llama.rope.scaling.original_context_length", 64);
}
static void add_attn_factor(struct ggufw *w)
{
	ggufw_add_str(w, "llama.rope.scaling.type", "none");
	ggufw_add_f32(w, "llama.rope.scaling.attn_factor", 0.5f);
}

static void test_yarn(void)
{
	struct tinymodel_spec s;
	struct ggufw *w = ggufw_new();
	struct model *m;
	uint8_t *buf;
	struct err e;

	tinymodel_defaults(&s, "llama");
	tinymodel_add(w, &s);
	add_yarn4(w);
	T_EQ_INT(load(w, &m, &buf, &e), KVS_OK);
	if (m != NULL) {
		T_EQ_INT(m->hp.rope_scaling, ROPE_SCALING_YARN);
		T_NEAR(m->hp.rope_freq_scale, 0.25, 0);
		T_NEAR(m->hp.rope_ext_factor, 1, 0);
		T_NEAR(m->hp.rope_yarn_corr[0], 0, 0);
		T_NEAR(m->hp.rope_yarn_corr[1], 2, 0);
		T_EQ_INT(m->hp.rope_ctx_orig, 64);
		T_NEAR(m->hp.rope_attn_factor, 1, 1e-6);
		T_CHECK(m->hp.rope_factors == NULL, "no rope_freqs");
	}
	model_free(m);
	free(buf);
	ggufw_free(w);

	w = ggufw_new();
	tinymodel_add(w, &s);
	add_attn_factor(w);
	T_EQ_INT(load(w, &m, &buf, &e), KVS_OK);
	if (m != NULL) {
		T_EQ_INT(m->hp.rope_scaling, ROPE_SCALING_NONE);
		T_NEAR(m->hp.rope_attn_factor, 0.5, 0);
		T_NEAR(m->hp.rope_ext_factor, 0, 0);
	}
	model_free(m);
	free(buf);
	ggufw_free(w);
}

/* qwen3 (per-head Q/K norms) and llama with rope_freqs load; the feature
 * list says which is used. */
static void test_tiny_qwen3(void)
{
	struct tinymodel_spec s;
	struct ggufw *w = ggufw_new();
	struct model_feature f[MODEL_N_FEATURES];
	struct model *m;
	uint8_t *buf;
	struct err e;

	tinymodel_defaults(&s, "qwen3");
	s.head_dim = 16; /* 4 heads of 16 over an embedding of 32 */
	tinymodel_add(w, &s);
	T_EQ_INT(load(w, &m, &buf, &e), KVS_OK);
	if (m != NULL) {
		T_EQ_STR(m->hp.arch, "qwen3");
		T_EQ_INT(m->hp.rope, ROPE_NEOX);
		T_EQ_INT(m->hp.has_qk_norm, 1);
		T_EQ_INT(m->hp.has_qkv_bias, 0);
		T_EQ_INT(m->hp.head_dim, 16);
		T_EQ_INT(m->layers[1].q_norm.ne[0], 16);
		T_CHECK(m->layers[1].k_norm.data != NULL && m->layers[1].k_norm.type == DT_F32, "k_norm");
		model_features(m, f);
		for (size_t i = 0; i < MODEL_N_FEATURES; i++) {
			bool want = strcmp(f[i].name, "qk-norm") == 0 || strcmp(f[i].name, "gqa") == 0 ||
			        strcmp(f[i].name, "rope-neox") == 0 || strcmp(f[i].name, "tied-output") == 0;
			T_CHECK(f[i].used == want, "qwen3 feature %s: used %d", f[i].name, f[i].used);
		}
	} else {
		fprintf(stderr, "tiny qwen3: %s\n", e.msg);
	}
	model_free(m);
	free(buf);
	ggufw_free(w);

	w = ggufw_new();
	tinymodel_defaults(&s, "llama");
	s.rope_freqs = true;
	tinymodel_add(w, &s);
	T_EQ_INT(load(w, &m, &buf, &e), KVS_OK);
	if (m != NULL) {
		T_CHECK(m->hp.rope_factors != NULL && m->hp.rope_factors[3] == 4.0f, "rope factors");
		T_EQ_INT(m->hp.has_qk_norm, 0);
		model_features(m, f);
		for (size_t i = 0; i < MODEL_N_FEATURES; i++)
			if (strcmp(f[i].name, "rope-freqs") == 0 || strcmp(f[i].name, "qk-norm") == 0)
				T_CHECK(f[i].used == (f[i].name[5] == 'f'), "llama feature %s: used %d", f[i].name,
				        f[i].used);
	}
	model_free(m);
	free(buf);
	ggufw_free(w);
}

/* phi3: a fused attn_qkv and a fused gate/up are cut into row views of
 * the same bytes, in the order the converter writes them (Q, K, V; gate,
 * up). Q4_1 rows of 32 are 20 bytes. */
static void test_tiny_phi3(void)
{
	struct tinymodel_spec s;
	struct ggufw *w = ggufw_new();
	struct model *m;
	uint8_t *buf;
	struct err e;

	tinymodel_defaults(&s, "phi3");
	s.wtype = DT_Q4_1;
	tinymodel_add(w, &s);
	T_EQ_INT(load(w, &m, &buf, &e), KVS_OK);
	if (m != NULL) {
		const struct layer_weights *lw = &m->layers[1];
		const uint8_t *qkv = lw->wqkv.data, *gu = lw->w_gate_up.data;
		T_EQ_INT(m->hp.rope, ROPE_NEOX);
		T_EQ_INT(lw->wqkv.ne[1], 32 + 2 * 16);
		T_CHECK(lw->wq.data == qkv && lw->wq.ne[1] == 32 && lw->wq.nbytes == 32 * 20, "wq view");
		T_CHECK((const uint8_t *)lw->wk.data == qkv + 32 * 20 && lw->wk.ne[1] == 16, "wk view");
		T_CHECK((const uint8_t *)lw->wv.data == qkv + 48 * 20 && lw->wv.nbytes == 16 * 20,
		        "wv view");
		T_EQ_INT(lw->w_gate_up.ne[1], 128);
		T_CHECK(lw->w_gate.data == gu && lw->w_gate.ne[1] == 64, "gate view");
		T_CHECK((const uint8_t *)lw->w_up.data == gu + 64 * 20 && lw->w_up.ne[1] == 64, "up view");
	} else {
		fprintf(stderr, "tiny phi3: %s\n", e.msg);
	}
	model_free(m);
	free(buf);
	ggufw_free(w);

	tinymodel_defaults(&s, "phi3");
	s.skip_tensor = "blk.1.ffn_up.weight";
	expect("phi3 without ffn_up", &s, NULL, KVS_ENOTFOUND, "'blk.1.ffn_up.weight' is missing",
	       "phi3");
	tinymodel_defaults(&s, "phi3");
	s.skip_tensor = "blk.0.attn_qkv.weight";
	expect("phi3 without attn_qkv", &s, NULL, KVS_ENOTFOUND, "'blk.0.attn_q.weight' is missing",
	       NULL);
}

static void test_rope_scaling(void)
{
	struct tinymodel_spec s;
	void (*extra[])(struct ggufw *) = { add_linear4, add_scale_linear2 };
	const float want[] = { 0.25f, 0.5f };

	tinymodel_defaults(&s, "llama");
	for (size_t i = 0; i < 2; i++) {
		struct ggufw *w = ggufw_new();
		struct model *m;
		uint8_t *buf;
		struct err e;
		tinymodel_add(w, &s);
		extra[i](w);
		T_EQ_INT(load(w, &m, &buf, &e), KVS_OK);
		if (m != NULL)
			T_NEAR(m->hp.rope_freq_scale, want[i], 0);
		model_free(m);
		free(buf);
		ggufw_free(w);
	}
}

/* model_load from a path prefixes errors with it. */
static void test_path_errors(void)
{
	const char *dir = getenv("TMPDIR");
	char *p = xasprintf("%s/test-arch-XXXXXX", dir && dir[0] ? dir : "/tmp");
	struct tinymodel_spec s;
	struct ggufw *w = ggufw_new();
	struct model *m;
	struct err e;
	int fd = mkstemp(p);

	if (fd < 0) {
		fprintf(stderr, "mkstemp: %s\n", strerror(errno));
		exit(99);
	}
	close(fd);
	tinymodel_defaults(&s, "llama");
	s.skip_tensor = "blk.0.attn_k.weight";
	tinymodel_add(w, &s);
	T_EQ_INT(ggufw_write_file(w, p), 0);
	T_EQ_INT(model_load(&m, p, &e), KVS_ENOTFOUND);
	T_CHECK(strncmp(e.msg, p, strlen(p)) == 0 && strstr(e.msg, ": tensor 'blk.0.attn_k.weight'"),
	        "msg: %s", e.msg);
	T_EQ_INT(model_load(&m, "/nonexistent.gguf", &e), KVS_ENOTFOUND);
	unlink(p);
	free(p);
	ggufw_free(w);
}

static void test_real_model(const char *path)
{
	struct model *m;
	struct err e;

	T_EQ_INT(model_load(&m, path, &e), KVS_OK);
	if (m == NULL) {
		fprintf(stderr, "%s\n", e.msg);
		return;
	}
	/* Expected: HF config of SmolLM2-135M-Instruct (engine.md 4.1) and the
	 * file's keys as gguf-py's GGUFReader lists them. */
	T_EQ_STR(m->hp.arch, "llama");
	T_EQ_INT(m->hp.n_layer, 30);
	T_EQ_INT(m->hp.n_embd, 576);
	T_EQ_INT(m->hp.n_head, 9);
	T_EQ_INT(m->hp.n_head_kv, 3);
	T_EQ_INT(m->hp.head_dim, 64);
	T_EQ_INT(m->hp.n_rot, 64);
	T_EQ_INT(m->hp.n_ff, 1536);
	T_EQ_INT(m->hp.n_vocab, 49152);
	T_EQ_INT(m->hp.n_ctx_train, 8192);
	T_NEAR(m->hp.rope_base, 100000, 0);
	T_NEAR(m->hp.rms_eps, 1e-5, 1e-11);
	T_NEAR(m->hp.rope_freq_scale, 1, 0);
	T_NEAR(m->hp.attn_scale, 0.125, 1e-7);
	T_EQ_INT(m->hp.rope, ROPE_NORM);
	T_EQ_INT(m->hp.tied_output, 1);
	T_EQ_INT(m->hp.has_qkv_bias, 0);
	T_EQ_STR(m->name, "Smollm2 135M 8k Lc100K Mix1 Ep2");
	T_CHECK(m->chat_template && strlen(m->chat_template) == 368 &&
	                strncmp(m->chat_template, "{% for message in messages %}", 29) == 0,
	        "chat template");
	T_EQ_INT(m->tok_embd.type, DT_Q8_0);
	T_EQ_INT(m->output.type, DT_Q8_0);
	T_EQ_INT(m->layers[29].w_down.type, DT_Q4_1);
	T_EQ_INT(m->layers[29].w_down.ne[0], 1536);
	T_EQ_INT(m->layers[0].wk.ne[1], 192);
	T_EQ_INT(m->out_norm.type, DT_F32);
	model_free(m);
}

static void add_swa0(struct ggufw *w)
{
	ggufw_add_u32(w, "gemma2.attention.sliding_window", 0);
}
static void add_pattern3(struct ggufw *w)
{
	static const uint8_t flags[3] = { 1, 0, 1 };
	ggufw_add_arr_raw(w, "gemma2.attention.sliding_window_pattern", GGUF_BOOL, flags, 3, 1);
}
static void add_final_cap_neg(struct ggufw *w)
{
	ggufw_add_f32(w, "gemma2.final_logit_softcapping", -1.0f);
}
static void add_orig32(struct ggufw *w)
{
	ggufw_add_u32(w, "phi3.rope.scaling.original_context_length", 32);
}

/* Load s plus extra(w) and return the model (NULL on failure, reported). */
static struct model *load_spec(const struct tinymodel_spec *s, void (*extra)(struct ggufw *),
                               uint8_t **buf)
{
	struct ggufw *w = ggufw_new();
	struct model *m;
	struct err e;

	tinymodel_add(w, s);
	if (extra != NULL)
		extra(w);
	T_CHECK(load(w, &m, buf, &e) == KVS_OK, "load %s: %s", s->arch, e.msg);
	ggufw_free(w);
	return m;
}

/* Gemma 2 and 3: the family defaults (llama.cpp's), the keys that change
 * them, the post-norm tensors, and the refusals. */
static void test_gemma(void)
{
	struct tinymodel_spec s;
	struct model_feature f[MODEL_N_FEATURES];
	struct hparams rh;
	uint8_t *buf = NULL;
	struct model *m;

	tinymodel_defaults(&s, "gemma2");
	s.head_dim = 16;
	s.n_layer = 3;
	m = load_spec(&s, NULL, &buf);
	if (m != NULL) {
		T_EQ_INT(m->hp.rope, ROPE_NEOX);
		T_NEAR(m->hp.embd_scale, sqrtf(32.0f), 0);
		T_EQ_INT(m->hp.ffn_act, FFN_GELU);
		T_EQ_INT(m->hp.has_post_norm, 1);
		T_EQ_INT(m->hp.has_qk_norm, 0);
		T_NEAR(m->hp.attn_softcap, 50, 0); /* llama.cpp's defaults */
		T_NEAR(m->hp.final_softcap, 30, 0);
		T_EQ_INT(m->hp.n_swa, 4096);
		/* every 2nd layer global: 0 local, 1 global, 2 local */
		T_EQ_INT(model_layer_window(&m->hp, 0), 4096);
		T_EQ_INT(model_layer_window(&m->hp, 1), 0);
		T_EQ_INT(model_layer_window(&m->hp, 2), 4096);
		T_NEAR(m->hp.attn_scale, 0.25, 0); /* 1/sqrt(16) */
		T_CHECK(m->layers[2].attn_post_norm.data != NULL && m->layers[2].ffn_post_norm.ne[0] == 32,
		        "post norms bound");
		/* gemma2's local layers rotate as the global ones */
		model_rope_params(&m->hp, true, 256, &rh);
		T_NEAR(rh.rope_base, m->hp.rope_base, 0);
		model_features(m, f);
		for (size_t i = 0; i < MODEL_N_FEATURES; i++) {
			static const char *const used[] = { "gqa",          "rope-neox",     "tied-output",
				                                "embd-scale",   "geglu",         "post-norm",
				                                "softcap-attn", "softcap-final", "sliding-window" };
			bool want = false;
			for (size_t k = 0; k < KVS_ARRAY_LEN(used); k++)
				want = want || strcmp(f[i].name, used[k]) == 0;
			T_CHECK(f[i].used == want, "gemma2 feature %s: used %d", f[i].name, f[i].used);
		}
	}
	model_free(m);
	free(buf);

	/* gemma3: no sliding window without the key; with it, every 6th layer
	 * global and the local ones on base 10000 */
	tinymodel_defaults(&s, "gemma3");
	s.head_dim = 16;
	s.n_layer = 7;
	s.rope_base = 1000000.0f;
	m = load_spec(&s, NULL, &buf);
	if (m != NULL) {
		T_EQ_INT(m->hp.n_swa, 0);
		T_EQ_INT(m->hp.has_qk_norm, 1);
		T_NEAR(m->hp.attn_softcap, 0, 0);
		T_NEAR(m->hp.final_softcap, 0, 0);
		T_EQ_INT(model_layer_window(&m->hp, 0), 0);
	}
	model_free(m);
	free(buf);
	struct ggufw *w = ggufw_new();
	struct err e;
	tinymodel_add(w, &s);
	ggufw_add_u32(w, "gemma3.attention.sliding_window", 512);
	ggufw_add_f32(w, "gemma3.final_logit_softcapping", 20.0f);
	T_EQ_INT(load(w, &m, &buf, &e), KVS_OK);
	ggufw_free(w);
	if (m != NULL) {
		for (uint32_t l = 0; l < 7; l++)
			T_EQ_INT(model_layer_window(&m->hp, l), l == 5 ? 0 : 512);
		T_NEAR(m->hp.final_softcap, 20, 0);
		model_rope_params(&m->hp, true, 256, &rh);
		T_NEAR(rh.rope_base, 10000, 0);
		T_NEAR(rh.rope_freq_scale, 1, 0);
		model_rope_params(&m->hp, false, 256, &rh);
		T_NEAR(rh.rope_base, 1000000, 0);
	}
	model_free(m);
	free(buf);

	tinymodel_defaults(&s, "gemma2");
	s.head_dim = 16;
	expect("gemma2 window 0", &s, add_swa0, KVS_EFORMAT, "'gemma2.attention.sliding_window' = 0",
	       "expected a window of 1 or more");
	expect("gemma2 pattern of 3 layers", &s, add_pattern3, KVS_EFORMAT,
	       "'gemma2.attention.sliding_window_pattern' has 3 entries", "expected 2");
	expect("gemma2 negative final cap", &s, add_final_cap_neg, KVS_EFORMAT,
	       "'gemma2.final_logit_softcapping' = -1", "expected a finite value in (0, ");
	s.skip_tensor = "blk.1.post_ffw_norm.weight";
	expect("gemma2 without a post-FFN norm", &s, NULL, KVS_ENOTFOUND,
	       "'blk.1.post_ffw_norm.weight' is missing", "gemma2");
	tinymodel_defaults(&s, "llama");
	s.post_norm = true;
	expect("post norm on llama", &s, NULL, KVS_EUNSUPPORTED, "'blk.0.post_attention_norm.weight'",
	       "only gemma2/3");
}

/* LongRoPE: both tables bound, the original context read, the table picked
 * by the context; one table alone is refused. */
static void test_longrope(void)
{
	struct tinymodel_spec s;
	struct hparams rh;
	uint8_t *buf = NULL;
	struct model *m;

	tinymodel_defaults(&s, "phi3");
	s.longrope = true;
	m = load_spec(&s, add_orig32, &buf);
	if (m != NULL) {
		T_EQ_INT(m->hp.rope_ctx_orig, 32);
		T_CHECK(m->hp.rope_factors == NULL, "no rope_freqs");
		model_rope_params(&m->hp, false, 33, &rh);
		T_CHECK(rh.rope_factors == m->hp.rope_factors_long && rh.rope_factors[2] == 3.0f,
		        "33 > 32: the long table");
		model_rope_params(&m->hp, false, 32, &rh);
		T_CHECK(rh.rope_factors == m->hp.rope_factors_short && rh.rope_factors[2] == 2.0f,
		        "32: the short table");
	}
	model_free(m);
	free(buf);
	/* without the key: the training context (256) */
	m = load_spec(&s, NULL, &buf);
	if (m != NULL)
		T_EQ_INT(m->hp.rope_ctx_orig, 256);
	model_free(m);
	free(buf);
	s.skip_tensor = "rope_factors_short.weight";
	expect("LongRoPE without its short table", &s, NULL, KVS_EFORMAT,
	       "'rope_factors_long.weight' is present without 'rope_factors_short.weight'",
	       "both LongRoPE tables or neither");
}

int main(void)
{
	char *path = model_path();
	struct stat st;

	test_tiny_llama();
	test_tiny_qwen2();
	test_bad_models();
	test_bad_types();
	test_rope_scaling();
	test_yarn();
	test_tiny_qwen3();
	test_tiny_phi3();
	test_gemma();
	test_longrope();
	test_path_errors();
	if (stat(path, &st) == 0) {
		test_real_model(path);
	} else if (getenv("KVSCOPE_SKIP_MODEL_TESTS") &&
	           strcmp(getenv("KVSCOPE_SKIP_MODEL_TESTS"), "1") == 0) {
		printf("test-arch: SKIP: %s absent and KVSCOPE_SKIP_MODEL_TESTS=1\n", path);
		free(path);
		return t_done("test-arch") ? 1 : 77;
	} else {
		fprintf(stderr,
		        "test-arch: FAIL: default model %s is missing (run `make model`, set "
		        "KVSCOPE_MODEL, or KVSCOPE_SKIP_MODEL_TESTS=1 to skip)\n",
		        path);
		t_failures++;
	}
	free(path);
	return t_done("test-arch");
}
