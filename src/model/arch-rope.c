/*
 * arch-rope.c: the hyper-parameters that shape RoPE and the layer pattern:
 * RoPE scaling (linear, YaRN, LongRoPE's factor tables and attention
 * factor), per-frequency divisors (rope_freqs.weight), and Gemma's keys
 * (soft-caps, the sliding window, which layers are local, their own RoPE
 * base). model_load calls these through model-int.h; the engine asks
 * model_rope_params for the RoPE of one layer at its context size.
 *
 * RoPE scaling follows the keys as llama.cpp reads them: "linear" divides
 * every angle by the factor; "yarn" divides only the low-frequency pairs,
 * ramps between the two over the pairs arch_yarn_corr names, and scales the
 * rotation by 1 + 0.1 ln(factor). The per-frequency divisors of Llama 3.1
 * (rope_freqs.weight) apply on top of either. LongRoPE (Phi-3.5, Phi-4-mini)
 * has two divisor tables, rope_factors_long and rope_factors_short: a
 * context longer than rope.scaling.original_context_length takes the long
 * one, any other the short one, and rope.scaling.attn_factor scales the
 * rotation; the choice depends on the engine's context, so the model keeps
 * both and model_rope_params picks.
 *
 * Gemma 2 and 3 interleave local (sliding-window) and global layers: the
 * pattern is a period (every period-th layer global, the others local; the
 * key attention.sliding_window_pattern may give another period or one flag
 * per layer), the window comes from attention.sliding_window, and Gemma 3's
 * local layers rotate with their own RoPE base (rope.freq_base_swa, 10000
 * by default) and no frequency scaling. The defaults are llama.cpp's.
 */
#include "model/model-int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One named RoPE scaling type ({arch}.rope.scaling.type). */
static const struct {
	const char *name;
	enum rope_scaling kind;
} arch_scalings[] = {
	{ "none", ROPE_SCALING_NONE },
	{ "linear", ROPE_SCALING_LINEAR },
	{ "yarn", ROPE_SCALING_YARN },
	{ "longrope", ROPE_SCALING_NONE }, /* its divisor tables do the scaling */
};

/* YaRN's pair index where the rotation of beta turns per original context
 * falls (llama.cpp's corr_dim, in float as it computes it). */
static float arch_yarn_dim(uint32_t n_rot, uint32_t n_ctx_orig, float beta, float base)
{
	return (float)n_rot * logf((float)n_ctx_orig / (beta * 2 * (float)M_PI)) / (2 * logf(base));
}

/* YaRN's ramp (beta_fast 32, beta_slow 1) and attention factor. */
static int arch_yarn(struct arch_load *L, struct hparams *hp)
{
	uint32_t ctx;
	float factor;
	int rc = arch_opt_u32(L, "rope.scaling.original_context_length", hp->n_layer, hp->n_ctx_train,
	                      1, UINT32_MAX, &ctx);

	if (rc != KVS_OK)
		return rc;
	float lo = floorf(arch_yarn_dim(hp->n_rot, ctx, 32.0f, hp->rope_base));
	float hi = ceilf(arch_yarn_dim(hp->n_rot, ctx, 1.0f, hp->rope_base));
	hp->rope_ctx_orig = ctx;
	hp->rope_ext_factor = 1.0f;
	hp->rope_yarn_corr[0] = lo > 0 ? lo : 0;
	hp->rope_yarn_corr[1] = hi < (float)(hp->n_rot - 1) ? hi : (float)(hp->n_rot - 1);
	/* llama.cpp takes the magnitude 1 + 0.1 ln(factor), with the factor
	 * recovered from the frequency scale, and divides the same back out
	 * before its rope multiplies it in again; the float roundings of that
	 * round trip are kept so the angles match to the bit. */
	factor = 1.0f / hp->rope_freq_scale;
	float y = factor <= 1.0f ? 1.0f : 0.1f * logf(factor) + 1.0f;
	y *= 1.0f / (1.0f + 0.1f * logf(factor));
	hp->rope_attn_factor = y * hp->rope_attn_factor;
	return KVS_OK;
}

/* RoPE scaling: none, linear, YaRN or LongRoPE (whose tables
 * arch_rope_factors reads), the factor and the attention factor. */
int arch_rope_scaling(struct arch_load *L, struct hparams *hp)
{
	char key[96];
	struct gguf_str type = { "linear", 6 };
	float factor = 0, attn = 1.0f;
	size_t i;
	int rc;

	rc = gguf_get_str(L->f, arch_key(L, "rope.scaling.type", key, sizeof key), &type, L->e);
	if (rc != KVS_OK && rc != KVS_ENOTFOUND)
		return rc;
	if (rc == KVS_ENOTFOUND)
		type = (struct gguf_str){ "linear", 6 };
	for (i = 0; i < KVS_ARRAY_LEN(arch_scalings); i++)
		if (strlen(arch_scalings[i].name) == type.n &&
		    memcmp(arch_scalings[i].name, type.p, type.n) == 0)
			break;
	if (i == KVS_ARRAY_LEN(arch_scalings)) {
		char esc[40];
		size_t n = type.n < 24 ? (size_t)type.n : 24;
		for (size_t j = 0; j < n; j++)
			esc[j] = (type.p[j] >= 0x20 && type.p[j] < 0x7f) ? type.p[j] : '?';
		esc[n] = '\0';
		return err_set(L->e, KVS_EUNSUPPORTED,
		               "key '%s' = '%s%s', expected 'none', 'linear', 'yarn' or 'longrope'", key,
		               esc, type.n > 24 ? "..." : "");
	}
	hp->rope_scaling = arch_scalings[i].kind;
	hp->rope_freq_scale = 1.0f;
	hp->rope_ext_factor = 0.0f;
	if ((rc = arch_opt_f32(L, "rope.scaling.attn_factor", false, 1.0f, 0, 1e6, &attn)))
		return rc;
	hp->rope_attn_factor = attn;
	if (hp->rope_scaling == ROPE_SCALING_NONE)
		return KVS_OK;
	/* The factor may come under either spelling; 0 or absent = none. */
	rc = arch_opt_f32(L, "rope.scaling.factor", false, 0, -1, 1e6, &factor);
	if (rc != KVS_OK)
		return rc;
	if (factor == 0) {
		rc = arch_opt_f32(L, "rope.scale_linear", false, 0, -1, 1e6, &factor);
		if (rc != KVS_OK)
			return rc;
	}
	if (factor < 0)
		return err_set(L->e, KVS_EFORMAT, "RoPE scaling factor = %g, expected > 0", (double)factor);
	if (factor > 0)
		hp->rope_freq_scale = 1.0f / factor;
	if (hp->rope_scaling == ROPE_SCALING_YARN)
		return arch_yarn(L, hp);
	return KVS_OK;
}

/* The local/global layer pattern: attention.sliding_window_pattern as a
 * period (u32) or one flag per layer, else the family's period. */
static int arch_swa_pattern(struct arch_load *L, struct hparams *hp)
{
	char key[96];
	const struct gguf_kv *kv =
	        gguf_find_kv(L->f, arch_key(L, "attention.sliding_window_pattern", key, sizeof key));
	uint32_t period = L->arch->swa_period;
	uint8_t *flags = xcalloc(hp->n_layer, 1);
	int rc;

	L->m->swa_layer = flags;
	hp->swa_layer = flags;
	if (kv != NULL && kv->type == GGUF_ARRAY) {
		if (kv->arr_type > GGUF_I64 || kv->arr_type == GGUF_F32 || kv->arr_type == GGUF_STRING)
			return err_set(L->e, KVS_EFORMAT,
			               "key '%s' is an array of %s, expected one bool per layer", key,
			               gguf_vtype_name(kv->arr_type));
		if (kv->arr_n != hp->n_layer)
			return err_set(L->e, KVS_EFORMAT,
			               "key '%s' has %llu entries, expected %u (one per layer)", key,
			               (unsigned long long)kv->arr_n, hp->n_layer);
		for (uint32_t l = 0; l < hp->n_layer; l++)
			flags[l] = gguf_arr_i64(kv, l) != 0;
		return KVS_OK;
	}
	if (kv != NULL && (rc = gguf_get_u32(L->f, key, &period, L->e)))
		return rc;
	/* llama.cpp's rule: period 0 makes every layer local */
	for (uint32_t l = 0; l < hp->n_layer; l++)
		flags[l] = period == 0 || l % period < period - 1;
	return KVS_OK;
}

/* Gemma's keys: the soft-caps, the sliding window and its layer pattern,
 * the local layers' RoPE base, and the 27B model's query scale. */
int arch_gemma(struct arch_load *L, struct hparams *hp)
{
	const struct arch_desc *a = L->arch;
	char key[96];
	uint32_t win;
	bool found;
	int rc;

	hp->rope_base_swa = hp->rope_base;
	hp->rope_freq_scale_swa = hp->rope_freq_scale;
	if (!a->gemma)
		return KVS_OK;
	hp->embd_scale = sqrtf((float)hp->n_embd);
	hp->ffn_act = FFN_GELU;
	hp->has_post_norm = true;
	if (a->attn_softcap > 0 &&
	    (rc = arch_opt_f32(L, "attn_logit_softcapping", false, a->attn_softcap, 0, 1e6,
	                       &hp->attn_softcap)))
		return rc;
	if ((rc = arch_opt_f32(L, "final_logit_softcapping", false, a->final_softcap, 0, 1e6,
	                       &hp->final_softcap)))
		return rc;
	if ((rc = arch_get_u32(L, "attention.sliding_window", hp->n_layer, &win, &found)))
		return rc;
	if (!found)
		win = a->swa_default;
	else if (win == 0 && a->swa_default > 0)
		return err_set(L->e, KVS_EFORMAT, "key '%s' = 0, expected a window of 1 or more",
		               arch_key(L, "attention.sliding_window", key, sizeof key));
	hp->n_swa = win;
	if (win > 0 && (rc = arch_swa_pattern(L, hp)))
		return rc;
	if (a->rope_base_swa > 0) {
		hp->rope_base_swa = a->rope_base_swa;
		hp->rope_freq_scale_swa = 1.0f;
	}
	if ((rc = arch_opt_f32(L, "rope.freq_base_swa", false, hp->rope_base_swa, 0, 1e12,
	                       &hp->rope_base_swa)))
		return rc;
	if (hp->n_layer == a->big_n_layer &&
	    gguf_find_kv(L->f, arch_key(L, "attention.scale", key, sizeof key)) == NULL)
		hp->attn_scale = 1.0f / sqrtf((float)(hp->n_embd / hp->n_head));
	return KVS_OK;
}

/* One per-frequency divisor table, when present: every entry finite and
 * positive. */
static int arch_check_factors(struct arch_load *L, const struct tensor *t, const char *name)
{
	const float *f = t->data;

	if (f == NULL)
		return KVS_OK;
	for (uint32_t i = 0; i < L->m->hp.n_rot / 2; i++) {
		float v;
		memcpy(&v, &f[i], sizeof v);
		if (!isfinite(v) || v <= 0)
			return err_set(L->e, KVS_EFORMAT,
			               "tensor '%s': entry %u = %g, expected a finite divisor > 0", name, i,
			               (double)v);
	}
	return KVS_OK;
}

int arch_rope_factors(struct arch_load *L)
{
	struct model *m = L->m;
	struct hparams *hp = &m->hp;
	int rc;

	if ((rc = arch_check_factors(L, &m->rope_freqs, "rope_freqs.weight")) ||
	    (rc = arch_check_factors(L, &m->rope_long, "rope_factors_long.weight")) ||
	    (rc = arch_check_factors(L, &m->rope_short, "rope_factors_short.weight")))
		return rc;
	hp->rope_factors = m->rope_freqs.data;
	hp->rope_factors_long = m->rope_long.data;
	hp->rope_factors_short = m->rope_short.data;
	if ((hp->rope_factors_long != NULL) != (hp->rope_factors_short != NULL))
		return err_set(L->e, KVS_EFORMAT,
		               "tensor 'rope_factors_%s.weight' is present without "
		               "'rope_factors_%s.weight', expected both LongRoPE tables or neither",
		               hp->rope_factors_long ? "long" : "short",
		               hp->rope_factors_long ? "short" : "long");
	if (hp->rope_factors_long == NULL || hp->rope_scaling == ROPE_SCALING_YARN)
		return KVS_OK;
	/* LongRoPE picks its table by the context against this one */
	return arch_opt_u32(L, "rope.scaling.original_context_length", hp->n_layer, hp->n_ctx_train, 1,
	                    UINT32_MAX, &hp->rope_ctx_orig);
}

uint32_t model_layer_window(const struct hparams *hp, uint32_t l)
{
	return hp->swa_layer != NULL && l < hp->n_layer && hp->swa_layer[l] ? hp->n_swa : 0;
}

void model_rope_params(const struct hparams *hp, bool local, uint32_t n_ctx, struct hparams *out)
{
	*out = *hp;
	/* llama.cpp: rope_freqs wins; else LongRoPE's long table past the
	 * original context, its short one within it */
	if (hp->rope_factors == NULL && hp->rope_factors_long != NULL)
		out->rope_factors =
		        n_ctx > hp->rope_ctx_orig ? hp->rope_factors_long : hp->rope_factors_short;
	if (!local)
		return;
	out->rope_base = hp->rope_base_swa > 0 ? hp->rope_base_swa : hp->rope_base;
	out->rope_freq_scale = hp->rope_freq_scale_swa > 0 ? hp->rope_freq_scale_swa : 1.0f;
}
