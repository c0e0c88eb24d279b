/*
 * cpu-gemma.c: the CPU backend's element steps of Gemma 2 and 3 that the
 * forward pass (cpu.c) calls where the other families do something else:
 * GeGLU in place of SwiGLU, the post-norms that normalise a block's output
 * before it joins the residual, and the soft-cap of the logits. Each is
 * computed the way llama.cpp's CPU path does, float step by float step, so
 * the fidelity fixtures (tests/fixtures/archs) can hold them to it.
 */
#include "engine/cpu-int.h"

#include <math.h>

/* GeGLU as llama.cpp's CPU path computes it, into g: the gate rounded to
 * f16, its tanh-GELU rounded to f16 again (ggml's lookup table holds those
 * values), times up; 0 at or below -10, the gate itself at or above 10. */
void cpu_geglu(float *g, const float *u, int64_t n)
{
	for (int64_t i = 0; i < n; i++) {
		float x = g[i];
		if (x <= -10.0f) {
			g[i] = 0.0f;
		} else if (x >= 10.0f) {
			g[i] = x * u[i];
		} else {
			float h = dtype_f16_to_f32(dtype_f32_to_f16(x));
			float y = 0.5f * h *
			        (1.0f +
			         tanhf(0.79788456080286535587989211986876f * h * (1.0f + 0.044715f * h * h)));
			g[i] = dtype_f16_to_f32(dtype_f32_to_f16(y)) * u[i];
		}
	}
}

/* Gemma's post-norm: x += norm(xb) with weight w, rows [lo, hi) (the
 * block's output, written to xb by its last product). */
void cpu_post_norm(struct cpu *c, const float *w, uint32_t lo, uint32_t hi)
{
	uint32_t ne = c->hp.n_embd;
	for (uint32_t i = lo; i < hi; i++) {
		float *o = c->xb + (size_t)i * ne, *x = c->x + (size_t)i * ne;
		c->ops->rmsnorm(o, w, o, ne, c->hp.rms_eps);
		for (uint32_t d = 0; d < ne; d++)
			x[d] += o[d];
	}
}

/* Soft-cap rows [0, nr) of logits y (stride n_vocab) in place, this
 * thread's share: x becomes c tanh(x / c), in llama.cpp's float steps
 * (times 1/c, tanh, times c). */
void cpu_softcap_logits(const struct cpu *c, float *y, uint32_t nr, int ith, int nth)
{
	float cap = c->hp.final_softcap, inv = 1.0f / cap;
	int64_t lo, hi;
	pool_split((int64_t)nr * c->hp.n_vocab, ith, nth, &lo, &hi);
	for (int64_t i = lo; i < hi; i++)
		y[i] = tanhf(y[i] * inv) * cap;
}
