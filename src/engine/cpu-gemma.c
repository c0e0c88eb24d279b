/*
 * cpu-gemma.c: the CPU backend's element steps of Gemma 2 and 3 that the
 * forward pass (cpu.c) calls where the other families do something else:
 * the post-norms that normalise a block's output before it joins the
 * residual, and the soft-cap of the logits (GeGLU is a kernel: kern.h's
 * geglu). Each is
 * computed the way llama.cpp's CPU path does, float step by float step, so
 * the fidelity fixtures (tests/fixtures/archs) can hold them to it.
 */
#include "engine/cpu-int.h"

#include <math.h>

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
