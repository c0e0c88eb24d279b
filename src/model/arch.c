/*
 * arch.c: architectures, hyper-parameters and the loaded model.
 *
 * An architecture is one row of arch_table (its name, RoPE kind, whether
 * Q/K/V carry biases, whether Q and K are normalised per head) plus the
 * tensor tables below, which list every tensor
 * a model of the family has: its name, its role (norm and bias vectors must
 * be F32; matrices may be any type we can dequantise), its exact shape in
 * terms of the hyper-parameters, and whether it is required. model_load reads
 * the hyper-parameters from "{arch}.*" keys (a scalar, or a per-layer array
 * whose entries are all equal), applies the defaults, checks them against
 * each other (engine.md 1.6 item 13), then checks every tensor of the tables
 * against them (item 12): a shape is never taken from the file without being
 * compared with what the hyper-parameters say it must be, so the engine can
 * use n_embd, n_ff, ... as loop bounds over the mapped bytes. A tensor in the
 * file that no table row claims is an error too: it means a variant we do
 * not implement (a fused QKV bias, an output bias, ...), and running
 * without it would give wrong answers quietly. Fused projections (a layer's
 * attn_qkv, phi3's gate/up in one ffn_up) are checked whole, then cut into
 * row views, so the engine sees separate matrices either way.
 *
 * Gemma 2 and 3 add, per the table: the embedding row scaled by
 * sqrt(n_embd), GeGLU, RMS norms after attention and after the FFN (the
 * converter stores every Gemma norm weight as 1 + w, so they are plain
 * norms here), soft-capped scores and logits, and interleaved local
 * (sliding-window) and global layers. RoPE scaling, the divisor tables and
 * Gemma's keys are read in arch-rope.c.
 *
 * The model owns the gguf_file; tensors point into its map.
 */
#include "model/model-int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARCH_MAX_LAYERS 512
#define ARCH_MAX_EMBD (1u << 16)
#define ARCH_MAX_FF (1u << 20)
#define ARCH_MAX_HEADS 1024
#define ARCH_MAX_HEAD_DIM 1024

/* One row per architecture (struct arch_desc in model-int.h). */
/* clang-format off */
static const struct arch_desc arch_table[] = {
	{ "llama",  ROPE_NORM, false, false, false, false, 0, 0,    0,     0,     0,       0 },
	{ "qwen2",  ROPE_NEOX, true,  false, false, false, 0, 0,    0,     0,     0,       0 },
	{ "qwen3",  ROPE_NEOX, false, true,  false, false, 0, 0,    0,     0,     0,       0 },
	{ "phi3",   ROPE_NEOX, false, false, true,  false, 0, 0,    0,     0,     0,       0 },
	{ "gemma2", ROPE_NEOX, false, false, false, true,  2, 4096, 50.0f, 30.0f, 0,       46 },
	{ "gemma3", ROPE_NEOX, false, true,  false, true,  6, 0,    0,     0,     10000.0f, 62 },
};
/* clang-format on */

/* Symbolic extents, resolved against the hyper-parameters. */
enum arch_dim {
	AD_NONE = 0,
	AD_EMBD,
	AD_Q,
	AD_KV,
	AD_FF,
	AD_VOCAB,
	AD_HEAD,
	AD_ROT2,
	AD_QKV, /* n_q + 2 n_kv: a fused QKV projection */
	AD_FF2, /* 2 n_ff: a fused gate/up projection */
};
/* NORM and BIAS are F32 vectors; MATRIX may be any weight_ok type. */
enum arch_role { AR_NORM, AR_BIAS, AR_MATRIX };
enum arch_need {
	AN_REQUIRED,
	AN_OPTIONAL,
	AN_BIAS,   /* required iff has_qkv_bias */
	AN_QKNORM, /* required iff the architecture has qk_norm; left unclaimed otherwise */
	AN_SEPQKV, /* required unless the layer has a fused attn_qkv */
	AN_FUSQKV, /* the fused attn_qkv, when the layer has one */
	AN_SEPFFN, /* required unless the architecture fuses gate and up */
	AN_FUSFFN, /* the fused gate/up, when the architecture has one */
	AN_POST,   /* required iff the architecture has post-norms (gemma) */
};

struct arch_tensor {
	const char *name; /* full name, or the part after "blk.N." */
	size_t off;       /* offset of the struct tensor in model / layer_weights */
	uint8_t role, need;
	uint8_t dims[2]; /* ne[0], ne[1]; AD_NONE = 1 */
};

#define MT(field) offsetof(struct model, field)
#define LT(field) offsetof(struct layer_weights, field)

static const struct arch_tensor arch_globals[] = {
	{ "token_embd.weight", MT(tok_embd), AR_MATRIX, AN_REQUIRED, { AD_EMBD, AD_VOCAB } },
	{ "output_norm.weight", MT(out_norm), AR_NORM, AN_REQUIRED, { AD_EMBD, AD_NONE } },
	{ "output.weight", MT(output), AR_MATRIX, AN_OPTIONAL, { AD_EMBD, AD_VOCAB } },
	{ "rope_freqs.weight", MT(rope_freqs), AR_NORM, AN_OPTIONAL, { AD_ROT2, AD_NONE } },
	{ "rope_factors_long.weight", MT(rope_long), AR_NORM, AN_OPTIONAL, { AD_ROT2, AD_NONE } },
	{ "rope_factors_short.weight", MT(rope_short), AR_NORM, AN_OPTIONAL, { AD_ROT2, AD_NONE } },
};

static const struct arch_tensor arch_layer[] = {
	{ "attn_norm.weight", LT(attn_norm), AR_NORM, AN_REQUIRED, { AD_EMBD, AD_NONE } },
	{ "attn_q.weight", LT(wq), AR_MATRIX, AN_SEPQKV, { AD_EMBD, AD_Q } },
	{ "attn_k.weight", LT(wk), AR_MATRIX, AN_SEPQKV, { AD_EMBD, AD_KV } },
	{ "attn_v.weight", LT(wv), AR_MATRIX, AN_SEPQKV, { AD_EMBD, AD_KV } },
	{ "attn_qkv.weight", LT(wqkv), AR_MATRIX, AN_FUSQKV, { AD_EMBD, AD_QKV } },
	{ "attn_q.bias", LT(bq), AR_BIAS, AN_BIAS, { AD_Q, AD_NONE } },
	{ "attn_k.bias", LT(bk), AR_BIAS, AN_BIAS, { AD_KV, AD_NONE } },
	{ "attn_v.bias", LT(bv), AR_BIAS, AN_BIAS, { AD_KV, AD_NONE } },
	{ "attn_q_norm.weight", LT(q_norm), AR_NORM, AN_QKNORM, { AD_HEAD, AD_NONE } },
	{ "attn_k_norm.weight", LT(k_norm), AR_NORM, AN_QKNORM, { AD_HEAD, AD_NONE } },
	{ "attn_output.weight", LT(wo), AR_MATRIX, AN_REQUIRED, { AD_Q, AD_EMBD } },
	{ "ffn_norm.weight", LT(ffn_norm), AR_NORM, AN_REQUIRED, { AD_EMBD, AD_NONE } },
	{ "ffn_gate.weight", LT(w_gate), AR_MATRIX, AN_SEPFFN, { AD_EMBD, AD_FF } },
	{ "ffn_up.weight", LT(w_up), AR_MATRIX, AN_SEPFFN, { AD_EMBD, AD_FF } },
	{ "ffn_up.weight", LT(w_gate_up), AR_MATRIX, AN_FUSFFN, { AD_EMBD, AD_FF2 } },
	{ "ffn_down.weight", LT(w_down), AR_MATRIX, AN_REQUIRED, { AD_FF, AD_EMBD } },
	{ "post_attention_norm.weight", LT(attn_post_norm), AR_NORM, AN_POST, { AD_EMBD, AD_NONE } },
	{ "post_ffw_norm.weight", LT(ffn_post_norm), AR_NORM, AN_POST, { AD_EMBD, AD_NONE } },
};

/* Tensors we recognise but do not implement, with the reason. */
static const struct {
	const char *name;
	const char *why;
} arch_unsupported[] = {
	{ "attn_qkv.bias", "a fused QKV bias" },
	{ "attn_output.bias", "an attention output bias" },
	{ "attn_q_norm.weight", "per-head Q normalisation, which only qwen3 and gemma3 have here" },
	{ "attn_k_norm.weight", "per-head K normalisation, which only qwen3 and gemma3 have here" },
	{ "post_attention_norm.weight", "a post-attention norm, which only gemma2/3 have here" },
	{ "post_ffw_norm.weight", "a post-FFN norm, which only gemma2/3 have here" },
};


/* "{arch}.{suffix}" into buf. */
const char *arch_key(const struct arch_load *L, const char *suffix, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s.%s", L->arch->name, suffix);
	return buf;
}

/*
 * Read a u32 hyper-parameter: a scalar integer, or an array with one integer
 * per layer, all equal. *found says whether the key exists; absent keys leave
 * *out alone. Per-layer arrays need n_layer (0 while reading block_count).
 */
int arch_get_u32(struct arch_load *L, const char *suffix, uint32_t n_layer, uint32_t *out,
                 bool *found)
{
	char key[96];
	const struct gguf_kv *kv;

	arch_key(L, suffix, key, sizeof key);
	*found = false;
	kv = gguf_find_kv(L->f, key);
	if (kv == NULL)
		return KVS_OK;
	*found = true;
	if (kv->type != GGUF_ARRAY)
		return gguf_get_u32(L->f, key, out, L->e);
	if (n_layer == 0)
		return err_set(L->e, KVS_EFORMAT, "key '%s' is an array, expected a u32", key);
	if (kv->arr_type > GGUF_I64 || kv->arr_type == GGUF_F32 || kv->arr_type == GGUF_BOOL ||
	    kv->arr_type == GGUF_STRING)
		return err_set(L->e, KVS_EFORMAT, "key '%s' is an array of %s, expected integers", key,
		               gguf_vtype_name(kv->arr_type));
	if (kv->arr_n != n_layer)
		return err_set(L->e, KVS_EFORMAT, "key '%s' has %llu entries, expected %u (one per layer)",
		               key, (unsigned long long)kv->arr_n, n_layer);
	int64_t first = gguf_arr_i64(kv, 0);
	for (uint64_t i = 1; i < kv->arr_n; i++) {
		int64_t v = gguf_arr_i64(kv, i);
		if (v != first)
			return err_set(L->e, KVS_EUNSUPPORTED,
			               "key '%s' differs per layer (layer 0: %lld, layer %llu: %lld), "
			               "expected one value for every layer",
			               key, (long long)first, (unsigned long long)i, (long long)v);
	}
	if (first < 0 || first > (int64_t)UINT32_MAX)
		return err_set(L->e, KVS_EFORMAT, "key '%s' = %lld, expected an integer in 0..%u", key,
		               (long long)first, UINT32_MAX);
	*out = (uint32_t)first;
	return KVS_OK;
}

/* A required u32 hyper-parameter in [lo, hi]. */
static int arch_need_u32(struct arch_load *L, const char *suffix, uint32_t n_layer, uint32_t lo,
                         uint32_t hi, uint32_t *out)
{
	char key[96];
	bool found;
	int rc = arch_get_u32(L, suffix, n_layer, out, &found);

	if (rc != KVS_OK)
		return rc;
	arch_key(L, suffix, key, sizeof key);
	if (!found)
		return err_set(L->e, KVS_ENOTFOUND, "key '%s' is missing, expected a u32 in %u..%u", key,
		               lo, hi);
	if (*out < lo || *out > hi)
		return err_set(L->e, KVS_EFORMAT, "key '%s' = %u, expected %u..%u", key, *out, lo, hi);
	return KVS_OK;
}

/* An optional u32 hyper-parameter in [lo, hi]; def when absent. */
int arch_opt_u32(struct arch_load *L, const char *suffix, uint32_t n_layer, uint32_t def,
                 uint32_t lo, uint32_t hi, uint32_t *out)
{
	char key[96];
	bool found;
	int rc = arch_get_u32(L, suffix, n_layer, out, &found);

	if (rc != KVS_OK)
		return rc;
	if (!found) {
		*out = def;
		return KVS_OK;
	}
	if (*out < lo || *out > hi)
		return err_set(L->e, KVS_EFORMAT, "key '%s' = %u, expected %u..%u",
		               arch_key(L, suffix, key, sizeof key), *out, lo, hi);
	return KVS_OK;
}

/* An optional float hyper-parameter, finite and in (lo, hi); def when absent. */
int arch_opt_f32(struct arch_load *L, const char *suffix, bool required, float def, double lo,
                 double hi, float *out)
{
	char key[96];
	int rc = gguf_get_f32(L->f, arch_key(L, suffix, key, sizeof key), out, L->e);

	if (rc == KVS_ENOTFOUND && !required) {
		*out = def;
		return KVS_OK;
	}
	if (rc == KVS_ENOTFOUND)
		return err_set(L->e, KVS_ENOTFOUND, "key '%s' is missing, expected an f32", key);
	if (rc != KVS_OK)
		return rc;
	if (!isfinite(*out) || *out <= lo || *out >= hi)
		return err_set(L->e, KVS_EFORMAT, "key '%s' = %g, expected a finite value in (%g, %g)", key,
		               (double)*out, lo, hi);
	return KVS_OK;
}

/* Read, default and cross-check every hyper-parameter except n_vocab. */
static int arch_hparams(struct arch_load *L, struct hparams *hp)
{
	char key[96];
	uint32_t key_len, val_len;
	uint64_t q_dim;
	int rc;

	snprintf(hp->arch, sizeof hp->arch, "%s", L->arch->name);
	hp->rope = L->arch->rope;
	if ((rc = arch_need_u32(L, "block_count", 0, 1, ARCH_MAX_LAYERS, &hp->n_layer)) ||
	    (rc = arch_need_u32(L, "context_length", hp->n_layer, 1, UINT32_MAX, &hp->n_ctx_train)) ||
	    (rc = arch_need_u32(L, "embedding_length", hp->n_layer, 1, ARCH_MAX_EMBD, &hp->n_embd)) ||
	    (rc = arch_need_u32(L, "feed_forward_length", hp->n_layer, 1, ARCH_MAX_FF, &hp->n_ff)) ||
	    (rc = arch_need_u32(L, "attention.head_count", hp->n_layer, 1, ARCH_MAX_HEADS,
	                        &hp->n_head)) ||
	    (rc = arch_opt_u32(L, "attention.head_count_kv", hp->n_layer, hp->n_head, 1, hp->n_head,
	                       &hp->n_head_kv)))
		return rc;
	if (hp->n_head % hp->n_head_kv != 0)
		return err_set(L->e, KVS_EFORMAT,
		               "%s.attention.head_count = %u is not a multiple of head_count_kv = %u",
		               hp->arch, hp->n_head, hp->n_head_kv);
	if (hp->n_embd % hp->n_head != 0 &&
	    gguf_find_kv(L->f, arch_key(L, "attention.key_length", key, sizeof key)) == NULL)
		return err_set(L->e, KVS_EFORMAT,
		               "%s.embedding_length = %u is not a multiple of head_count = %u "
		               "and %s.attention.key_length is absent",
		               hp->arch, hp->n_embd, hp->n_head, hp->arch);
	if ((rc = arch_opt_u32(L, "attention.key_length", hp->n_layer, hp->n_embd / hp->n_head, 1,
	                       ARCH_MAX_HEAD_DIM, &key_len)) ||
	    (rc = arch_opt_u32(L, "attention.value_length", hp->n_layer, key_len, 1, ARCH_MAX_HEAD_DIM,
	                       &val_len)))
		return rc;
	if (key_len != val_len)
		return err_set(L->e, KVS_EUNSUPPORTED,
		               "%s.attention.key_length = %u differs from value_length = %u, "
		               "expected equal head sizes",
		               hp->arch, key_len, val_len);
	hp->head_dim = key_len;
	q_dim = (uint64_t)hp->n_head * hp->head_dim;
	if (q_dim > ARCH_MAX_EMBD * 4u)
		return err_set(L->e, KVS_EFORMAT, "head_count %u x head size %u = %llu, expected <= %u",
		               hp->n_head, hp->head_dim, (unsigned long long)q_dim, ARCH_MAX_EMBD * 4u);
	if ((rc = arch_opt_u32(L, "rope.dimension_count", hp->n_layer, hp->head_dim, 2, hp->head_dim,
	                       &hp->n_rot)))
		return rc;
	if (hp->n_rot % 2 != 0)
		return err_set(L->e, KVS_EFORMAT, "%s.rope.dimension_count = %u, expected an even number",
		               hp->arch, hp->n_rot);
	if ((rc = arch_opt_f32(L, "attention.layer_norm_rms_epsilon", true, 0, 0, 1, &hp->rms_eps)) ||
	    (rc = arch_opt_f32(L, "rope.freq_base", false, 10000.0f, 0, 1e12, &hp->rope_base)) ||
	    (rc = arch_opt_f32(L, "attention.scale", false, 1.0f / sqrtf((float)hp->head_dim), 0, 1e6,
	                       &hp->attn_scale)))
		return rc;
	if ((rc = arch_rope_scaling(L, hp)))
		return rc;
	return arch_gemma(L, hp);
}

/* Resolve a symbolic extent. */
static int64_t arch_dim_value(const struct hparams *hp, uint8_t d)
{
	switch (d) {
	case AD_EMBD: return hp->n_embd;
	case AD_Q: return (int64_t)hp->n_head * hp->head_dim;
	case AD_KV: return (int64_t)hp->n_head_kv * hp->head_dim;
	case AD_FF: return hp->n_ff;
	case AD_VOCAB: return hp->n_vocab;
	case AD_HEAD: return hp->head_dim;
	case AD_ROT2: return hp->n_rot / 2;
	case AD_QKV: return (int64_t)(hp->n_head + 2 * hp->n_head_kv) * hp->head_dim;
	case AD_FF2: return 2 * (int64_t)hp->n_ff;
	default: return 1;
	}
}

/* Text for the list of types a matrix may have ("F32, F16, Q4_0, ..."). */
static void arch_weight_types(char *buf, size_t cap)
{
	size_t n = 0;

	buf[0] = '\0';
	for (uint32_t t = 0; t < DT_COUNT_; t++) {
		const struct dtype_info *di = dtype_info(t);
		if (di == NULL || !di->weight_ok)
			continue;
		n += (size_t)snprintf(buf + n, n < cap ? cap - n : 0, "%s%s", n ? ", " : "", di->name);
		if (n >= cap)
			break;
	}
}

/* Check the tensor row r (named name) and store it at dst; absent optional
 * tensors leave dst zeroed. */
static int arch_take(struct arch_load *L, const struct arch_tensor *r, const char *name,
                     struct tensor *dst)
{
	const struct hparams *hp = &L->m->hp;
	const struct gguf_tensor *t = gguf_find_tensor(L->f, name);
	int64_t want[GGUF_MAX_DIMS] = { 1, 1, 1, 1 };
	const struct dtype_info *di;
	bool needed = r->need != AN_OPTIONAL && (r->need != AN_BIAS || hp->has_qkv_bias);

	if (t == NULL) {
		if (needed)
			return err_set(L->e, KVS_ENOTFOUND, "tensor '%s' is missing, expected it in a %s model",
			               name, hp->arch);
		return KVS_OK;
	}
	if (!needed && r->need == AN_BIAS)
		return err_set(L->e, KVS_EFORMAT,
		               "tensor '%s' is present but blk.0 has no Q/K/V biases, expected "
		               "biases in every layer or none",
		               name);
	L->used[t - L->f->tensors] = true;
	want[0] = arch_dim_value(hp, r->dims[0]);
	want[1] = arch_dim_value(hp, r->dims[1]);
	for (int d = 0; d < GGUF_MAX_DIMS; d++) {
		if (t->ne[d] != want[d]) {
			if (r->dims[1] == AD_NONE)
				return err_set(L->e, KVS_EFORMAT,
				               "tensor '%s': shape [%lld, %lld, %lld, %lld], expected [%lld]", name,
				               (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
				               (long long)t->ne[3], (long long)want[0]);
			return err_set(L->e, KVS_EFORMAT,
			               "tensor '%s': shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]",
			               name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
			               (long long)t->ne[3], (long long)want[0], (long long)want[1]);
		}
	}
	di = dtype_info(t->type);
	if (r->role != AR_MATRIX && t->type != DT_F32)
		return err_set(L->e, KVS_EUNSUPPORTED, "tensor '%s': type %s, expected F32", name,
		               dtype_name(t->type));
	if (r->role == AR_MATRIX && (di == NULL || !di->weight_ok)) {
		char types[256];
		arch_weight_types(types, sizeof types);
		return err_set(L->e, KVS_EUNSUPPORTED, "tensor '%s': type %s, expected one of %s", name,
		               dtype_name(t->type), types);
	}
	dst->name = t->name;
	dst->type = t->type;
	memcpy(dst->ne, t->ne, sizeof dst->ne);
	dst->data = t->data;
	dst->nbytes = t->nbytes;
	return KVS_OK;
}

/* Rows [r0, r0 + n) of matrix t as a tensor of its own (a view into the
 * same bytes: rows are whole blocks, so a row range is a byte range). */
static struct tensor arch_rows(const struct tensor *t, int64_t r0, int64_t n)
{
	struct tensor v = *t;
	uint64_t rb = 0;

	dtype_row_bytes(t->type, (uint64_t)t->ne[0], &rb); /* checked by arch_take */
	v.data = (const uint8_t *)t->data + (uint64_t)r0 * rb;
	v.ne[1] = n;
	v.nbytes = (uint64_t)n * rb;
	return v;
}

/* Whether table row r applies to layer l (fused or separate projections). */
static bool arch_row_applies(const struct arch_load *L, const struct arch_tensor *r, uint32_t l)
{
	char name[GGUF_NAME_MAX + 16];
	bool fused_qkv;

	snprintf(name, sizeof name, "blk.%u.attn_qkv.weight", l);
	fused_qkv = gguf_find_tensor(L->f, name) != NULL;
	switch (r->need) {
	case AN_QKNORM: return L->arch->qk_norm; /* otherwise refused below by name */
	case AN_SEPQKV: return !fused_qkv;
	case AN_FUSQKV: return fused_qkv;
	case AN_SEPFFN: return !L->arch->ffn_fused;
	case AN_FUSFFN: return L->arch->ffn_fused;
	case AN_POST: return L->arch->gemma; /* otherwise refused below by name */
	default: return true;
	}
}

/* Split layer l's fused projections into the views the engine reads. */
static void arch_split_fused(struct model *m, uint32_t l)
{
	struct layer_weights *lw = &m->layers[l];
	int64_t nq = (int64_t)m->hp.n_head * m->hp.head_dim;
	int64_t nkv = (int64_t)m->hp.n_head_kv * m->hp.head_dim;

	if (lw->wqkv.data != NULL) {
		lw->wq = arch_rows(&lw->wqkv, 0, nq);
		lw->wk = arch_rows(&lw->wqkv, nq, nkv);
		lw->wv = arch_rows(&lw->wqkv, nq + nkv, nkv);
	}
	if (lw->w_gate_up.data != NULL) {
		lw->w_gate = arch_rows(&lw->w_gate_up, 0, m->hp.n_ff);
		lw->w_up = arch_rows(&lw->w_gate_up, m->hp.n_ff, m->hp.n_ff);
	}
}

/* Check and bind every tensor of the tables; refuse unclaimed ones. */
static int arch_tensors(struct arch_load *L)
{
	struct model *m = L->m;
	char name[GGUF_NAME_MAX + 16];
	int rc;

	for (size_t i = 0; i < KVS_ARRAY_LEN(arch_globals); i++) {
		const struct arch_tensor *r = &arch_globals[i];
		if ((rc = arch_take(L, r, r->name, (struct tensor *)((char *)m + r->off))))
			return rc;
	}
	m->hp.tied_output = m->output.data == NULL;
	if (m->hp.tied_output)
		m->output = m->tok_embd;
	if ((rc = arch_rope_factors(L)))
		return rc;
	m->layers = xcalloc(m->hp.n_layer, sizeof *m->layers);
	for (uint32_t l = 0; l < m->hp.n_layer; l++) {
		for (size_t i = 0; i < KVS_ARRAY_LEN(arch_layer); i++) {
			const struct arch_tensor *r = &arch_layer[i];
			if (!arch_row_applies(L, r, l))
				continue;
			snprintf(name, sizeof name, "blk.%u.%s", l, r->name);
			if ((rc = arch_take(L, r, name, (struct tensor *)((char *)&m->layers[l] + r->off))))
				return rc;
		}
		arch_split_fused(m, l);
	}
	for (uint64_t i = 0; i < L->f->n_tensors; i++) {
		const char *tn = L->f->tensors[i].name, *base = tn;
		if (L->used[i])
			continue;
		/* Strip "blk.N." to find the per-layer name. */
		if (strncmp(tn, "blk.", 4) == 0 && strchr(tn + 4, '.') != NULL)
			base = strchr(tn + 4, '.') + 1;
		for (size_t k = 0; k < KVS_ARRAY_LEN(arch_unsupported); k++)
			if (strcmp(base, arch_unsupported[k].name) == 0)
				return err_set(L->e, KVS_EUNSUPPORTED, "tensor '%s' (%s) is not supported", tn,
				               arch_unsupported[k].why);
		return err_set(L->e, KVS_EUNSUPPORTED,
		               "tensor '%s' is not part of a %s model with %u layers, expected only "
		               "the tensors the architecture defines",
		               tn, m->hp.arch, m->hp.n_layer);
	}
	return KVS_OK;
}

/* Find general.architecture in arch_table. */
static int arch_find(struct arch_load *L)
{
	struct gguf_str name;
	char esc[40], list[128];
	size_t n = 0;
	int rc = gguf_get_str(L->f, "general.architecture", &name, L->e);

	if (rc != KVS_OK)
		return rc;
	for (size_t i = 0; i < KVS_ARRAY_LEN(arch_table); i++) {
		if (strlen(arch_table[i].name) == name.n &&
		    memcmp(arch_table[i].name, name.p, name.n) == 0) {
			L->arch = &arch_table[i];
			return KVS_OK;
		}
		n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "", arch_table[i].name);
	}
	n = name.n < 24 ? (size_t)name.n : 24;
	for (size_t i = 0; i < n; i++)
		esc[i] = (name.p[i] >= 0x20 && name.p[i] < 0x7f) ? name.p[i] : '?';
	esc[n] = '\0';
	return err_set(L->e, KVS_EUNSUPPORTED, "general.architecture = '%s%s', expected one of: %s",
	               esc, name.n > 24 ? "..." : "", list);
}

/* Optional string key copied to a C string; *out NULL when absent. */
static int arch_opt_str(struct gguf_file *f, const char *key, char **out, struct err *e)
{
	struct gguf_str s;
	int rc = gguf_get_str(f, key, &s, e);

	*out = NULL;
	if (rc == KVS_ENOTFOUND) {
		err_clear(e);
		return KVS_OK;
	}
	if (rc != KVS_OK)
		return rc;
	*out = xstrndup(s.p, (size_t)s.n);
	return KVS_OK;
}

/* The body of model_load_gguf; m->gguf is set, errors are not yet prefixed. */
static int arch_load_model(struct model *m, struct err *e)
{
	struct arch_load L = { .f = m->gguf, .m = m, .e = e };
	uint32_t vocab_size;
	bool found;
	int rc;

	if ((rc = arch_find(&L)) || (rc = arch_hparams(&L, &m->hp)))
		return rc;
	if ((rc = vocab_load(&m->vocab, m->gguf, e)))
		return rc;
	m->hp.n_vocab = vocab_n_tokens(m->vocab);
	if ((rc = arch_get_u32(&L, "vocab_size", 0, &vocab_size, &found)))
		return rc;
	if (found && vocab_size != m->hp.n_vocab)
		return err_set(e, KVS_EFORMAT,
		               "%s.vocab_size = %u, expected %u (the number of tokenizer tokens)",
		               m->hp.arch, vocab_size, m->hp.n_vocab);
	m->hp.has_qkv_bias = L.arch->qkv_bias || gguf_find_tensor(m->gguf, "blk.0.attn_q.bias");
	m->hp.has_qk_norm = L.arch->qk_norm;
	L.used = xcalloc(m->gguf->n_tensors ? m->gguf->n_tensors : 1, sizeof *L.used);
	rc = arch_tensors(&L);
	free(L.used);
	if (rc != KVS_OK)
		return rc;
	if ((rc = arch_opt_str(m->gguf, "tokenizer.chat_template", &m->chat_template, e)) ||
	    (rc = arch_opt_str(m->gguf, "general.name", &m->name, e)))
		return rc;
	if (m->name == NULL) {
		const char *p = m->gguf->path, *slash;
		if (p == NULL)
			p = "(memory)";
		slash = strrchr(p, '/');
		m->name = xstrdup(slash ? slash + 1 : p);
	}
	return KVS_OK;
}

int model_load_gguf(struct model **out, struct gguf_file *f, struct err *e)
{
	struct model *m = xcalloc(1, sizeof *m);
	int rc;

	*out = NULL;
	m->gguf = f;
	rc = arch_load_model(m, e);
	if (rc != KVS_OK) {
		if (f->path != NULL)
			err_prefix(e, "%s", f->path);
		model_free(m);
		return rc;
	}
	*out = m;
	return KVS_OK;
}

/* Whether a model uses one feature. */
static bool arch_uses_gqa(const struct model *m)
{
	return m->hp.n_head > m->hp.n_head_kv;
}
static bool arch_uses_qkv_bias(const struct model *m)
{
	return m->hp.has_qkv_bias;
}
static bool arch_uses_qk_norm(const struct model *m)
{
	return m->hp.has_qk_norm;
}
static bool arch_uses_neox(const struct model *m)
{
	return m->hp.rope == ROPE_NEOX;
}
static bool arch_uses_rope_freqs(const struct model *m)
{
	return m->hp.rope_factors != NULL;
}
static bool arch_uses_longrope(const struct model *m)
{
	return m->hp.rope_factors_long != NULL;
}
static bool arch_uses_linear(const struct model *m)
{
	return m->hp.rope_scaling == ROPE_SCALING_LINEAR && m->hp.rope_freq_scale != 1.0f;
}
static bool arch_uses_yarn(const struct model *m)
{
	return m->hp.rope_scaling == ROPE_SCALING_YARN;
}
static bool arch_uses_tied(const struct model *m)
{
	return m->hp.tied_output;
}
static bool arch_uses_fused_qkv(const struct model *m)
{
	return m->layers[0].wqkv.data != NULL;
}
static bool arch_uses_fused_ffn(const struct model *m)
{
	return m->layers[0].w_gate_up.data != NULL;
}
static bool arch_uses_embd_scale(const struct model *m)
{
	return m->hp.embd_scale > 0 && m->hp.embd_scale != 1.0f;
}
static bool arch_uses_geglu(const struct model *m)
{
	return m->hp.ffn_act == FFN_GELU;
}
static bool arch_uses_post_norm(const struct model *m)
{
	return m->hp.has_post_norm;
}
static bool arch_uses_attn_softcap(const struct model *m)
{
	return m->hp.attn_softcap > 0;
}
static bool arch_uses_final_softcap(const struct model *m)
{
	return m->hp.final_softcap > 0;
}
static bool arch_uses_swa(const struct model *m)
{
	for (uint32_t l = 0; l < m->hp.n_layer; l++)
		if (model_layer_window(&m->hp, l) > 0)
			return true;
	return false;
}
static bool arch_uses_rope_swa(const struct model *m)
{
	return arch_uses_swa(m) &&
	        (m->hp.rope_base_swa != m->hp.rope_base ||
	         m->hp.rope_freq_scale_swa != m->hp.rope_freq_scale);
}

/* The feature list model_features fills in. */
static const struct {
	const char *name, *what;
	bool (*used)(const struct model *m);
} arch_features[] = {
	{ "gqa", "grouped-query attention: several query heads share a KV head", arch_uses_gqa },
	{ "qkv-bias", "biases on the Q, K and V projections (qwen2)", arch_uses_qkv_bias },
	{ "qk-norm", "per-head RMS norm of Q and K before RoPE (qwen3)", arch_uses_qk_norm },
	{ "rope-neox", "RoPE rotates halves (qwen); otherwise adjacent pairs (llama)", arch_uses_neox },
	{ "rope-freqs", "per-frequency RoPE divisors, rope_freqs.weight (llama 3.1+)",
	  arch_uses_rope_freqs },
	{ "rope-longrope", "LongRoPE: long or short per-frequency divisors by context (phi3.5/4)",
	  arch_uses_longrope },
	{ "rope-linear", "linear RoPE scaling: every angle divided by the factor", arch_uses_linear },
	{ "rope-yarn", "YaRN RoPE scaling: low frequencies divided, a ramp, an attention factor",
	  arch_uses_yarn },
	{ "tied-output", "the LM head is the token embedding (no output.weight)", arch_uses_tied },
	{ "fused-qkv", "Q, K and V in one matrix, attn_qkv.weight (phi3)", arch_uses_fused_qkv },
	{ "fused-gate-up", "gate and up in one matrix, ffn_up.weight of 2 n_ff rows (phi3)",
	  arch_uses_fused_ffn },
	{ "embd-scale", "the token embedding is multiplied by sqrt(n_embd) (gemma)",
	  arch_uses_embd_scale },
	{ "geglu", "GeGLU feed-forward: gelu(gate) * up, tanh approximation (gemma)", arch_uses_geglu },
	{ "post-norm", "RMS norms after attention and after the FFN, before each residual add (gemma)",
	  arch_uses_post_norm },
	{ "softcap-attn", "attention scores soft-capped, c tanh(s / c), before the softmax (gemma2)",
	  arch_uses_attn_softcap },
	{ "softcap-final", "logits soft-capped, c tanh(x / c) (gemma2)", arch_uses_final_softcap },
	{ "sliding-window", "local layers attend only to the last n_swa positions (gemma2/3)",
	  arch_uses_swa },
	{ "rope-local-base", "local layers rotate with their own RoPE base (gemma3: 10000)",
	  arch_uses_rope_swa },
};

void model_features(const struct model *m, struct model_feature out[MODEL_N_FEATURES])
{
	_Static_assert(KVS_ARRAY_LEN(arch_features) == MODEL_N_FEATURES, "MODEL_N_FEATURES");
	for (size_t i = 0; i < MODEL_N_FEATURES; i++) {
		out[i].name = arch_features[i].name;
		out[i].what = arch_features[i].what;
		out[i].used = arch_features[i].used(m);
	}
}

char *model_default_path(const char *explicit_path)
{
	const char *env = getenv("KVSCOPE_MODEL");

	if (explicit_path != NULL && explicit_path[0] != '\0')
		return xstrdup(explicit_path);
	if (env != NULL && env[0] != '\0')
		return xstrdup(env);
	return file_xdg_path("XDG_DATA_HOME", ".local/share", "kvscope/models/" MODEL_DEFAULT_FILE);
}

int model_load(struct model **out, const char *path, struct err *e)
{
	struct gguf_file *f;
	int rc = gguf_open(&f, path, e);

	*out = NULL;
	if (rc != KVS_OK)
		return rc;
	return model_load_gguf(out, f, e);
}

void model_free(struct model *m)
{
	if (m == NULL)
		return;
	vocab_free(m->vocab);
	free(m->layers);
	free(m->swa_layer);
	free(m->chat_template);
	free(m->name);
	gguf_close(m->gguf);
	free(m);
}
