/*
 * test-sampler.c: the sampling chain against hand-computed cases and the
 * C++ standard's published MT19937 check value.
 */
#include "engine/sampler.h"
#include "test.h"

#include <math.h>

/* Sample n times and count how often each of the 8 first ids came up. */
static void histogram(const struct sampler_params *p, const float *logits, uint32_t n_vocab, int n,
                      int *counts)
{
	struct sampler *s = sampler_create(p, n_vocab);
	for (uint32_t i = 0; i < n_vocab; i++)
		counts[i] = 0;
	for (int i = 0; i < n; i++)
		counts[sampler_sample(s, logits)]++;
	sampler_free(s);
}

static void plain(struct sampler_params *p)
{
	sampler_params_default(p);
	p->temp = 1.0f;
	p->top_k = 0;
	p->top_p = 1.0f;
	p->min_p = 0.0f;
	p->seed = 1234;
}

int main(void)
{
	struct mt19937 r;
	struct sampler_params p;
	struct err e;
	uint32_t v = 0;
	int counts[8];

	/* ISO C++ [rand.predef]: the 10000th output of a default-constructed
	 * mt19937 (seed 5489) is 4123659995. */
	mt19937_seed(&r, 5489);
	for (int i = 0; i < 10000; i++)
		v = mt19937_next(&r);
	T_EQ_INT(v, 4123659995u);
	mt19937_seed(&r, 1);
	for (int i = 0; i < 1000; i++) {
		double u = mt19937_canonical(&r);
		T_CHECK(u >= 0.0 && u < 1.0, "canonical %g outside [0,1)", u);
	}

	/* defaults are llama.cpp's */
	sampler_params_default(&p);
	T_NEAR(p.temp, 0.8, 1e-7);
	T_EQ_INT(p.top_k, 40);
	T_NEAR(p.top_p, 0.95, 1e-7);
	T_NEAR(p.min_p, 0.05, 1e-7);
	T_NEAR(p.repeat_penalty, 1.0, 0);
	T_EQ_INT(p.repeat_last_n, 64);
	T_EQ_INT(sampler_params_check(&p, &e), KVS_OK);
	p.top_p = 1.5f;
	T_EQ_INT(sampler_params_check(&p, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "top-p") != NULL, "message names top-p: %s", e.msg);

	/* greedy: temp 0 returns the first maximum whatever the seed */
	{
		float l[6] = { 0.1f, 2.0f, -1.0f, 3.5f, 3.5f, 0.0f };
		sampler_params_default(&p);
		p.temp = 0.0f;
		histogram(&p, l, 6, 50, counts);
		T_EQ_INT(counts[3], 50);
	}

	/* plain sampling follows the softmax: p = 0.5, 0.3, 0.2 */
	{
		float l[3] = { logf(0.5f), logf(0.3f), logf(0.2f) };
		plain(&p);
		histogram(&p, l, 3, 200000, counts);
		T_NEAR(counts[0] / 200000.0, 0.5, 0.005);
		T_NEAR(counts[1] / 200000.0, 0.3, 0.005);
		T_NEAR(counts[2] / 200000.0, 0.2, 0.005);
		/* temperature 2 flattens: p ∝ sqrt(0.5, 0.3, 0.2) */
		p.temp = 2.0f;
		histogram(&p, l, 3, 200000, counts);
		double z = sqrt(0.5) + sqrt(0.3) + sqrt(0.2);
		T_NEAR(counts[0] / 200000.0, sqrt(0.5) / z, 0.005);
		T_NEAR(counts[2] / 200000.0, sqrt(0.2) / z, 0.005);
	}

	/* top-k 2 keeps the two best, renormalised: 0.5/0.8, 0.3/0.8 */
	{
		float l[4] = { logf(0.3f), logf(0.5f), logf(0.15f), logf(0.05f) };
		plain(&p);
		p.top_k = 2;
		histogram(&p, l, 4, 100000, counts);
		T_EQ_INT(counts[2] + counts[3], 0);
		T_NEAR(counts[1] / 100000.0, 0.625, 0.006);
	}

	/* top-p 0.75: cumulative 0.5, 0.8 -> the two best survive */
	{
		float l[4] = { logf(0.15f), logf(0.5f), logf(0.3f), logf(0.05f) };
		plain(&p);
		p.top_p = 0.75f;
		histogram(&p, l, 4, 100000, counts);
		T_EQ_INT(counts[0] + counts[3], 0);
		T_NEAR(counts[1] / 100000.0, 0.625, 0.006);
		/* top-p 0.85 also keeps the third (0.5 + 0.3 < 0.85) */
		p.top_p = 0.85f;
		histogram(&p, l, 4, 100000, counts);
		T_CHECK(counts[0] > 0, "third token sampled with top-p 0.85");
		T_EQ_INT(counts[3], 0);
	}

	/* min-p 0.08 keeps p >= 0.08 * 0.6 = 0.048: drops only the 0.04 */
	{
		float l[4] = { logf(0.6f), logf(0.3f), logf(0.06f), logf(0.04f) };
		plain(&p);
		p.min_p = 0.08f;
		histogram(&p, l, 4, 100000, counts);
		T_EQ_INT(counts[3], 0);
		T_CHECK(counts[2] > 0, "0.06 survives min-p 0.08");
	}

	/* penalties: logit 2 seen twice with repeat 2, freq 0.5, presence 1:
	 * 2/2 - 2*0.5 - 1 = -1; logit -1 seen once: -1*2 - 0.5 - 1 = -3.5 */
	{
		float l[3] = { 2.0f, -1.0f, -2.0f };
		struct sampler *s;
		sampler_params_default(&p);
		p.temp = 0.0f;
		p.repeat_penalty = 2.0f;
		p.freq_penalty = 0.5f;
		p.presence_penalty = 1.0f;
		s = sampler_create(&p, 3);
		T_EQ_INT(sampler_sample(s, l), 0);
		sampler_accept(s, 0);
		sampler_accept(s, 0);
		sampler_accept(s, 1);
		/* now: id0 -> -1, id1 -> -3.5, id2 -> -2: greedy picks id0 */
		T_EQ_INT(sampler_sample(s, l), 0);
		sampler_accept(s, 0); /* id0 seen 3x: 1 - 1.5 - 1 = -1.5; still best */
		T_EQ_INT(sampler_sample(s, l), 0);
		sampler_accept(s, 0); /* 4x: 1 - 2 - 1 = -2 ties id2 (-2): first max */
		T_EQ_INT(sampler_sample(s, l), 0);
		sampler_accept(s, 0); /* 5x: 1 - 2.5 - 1 = -2.5 < -2: id2 wins */
		T_EQ_INT(sampler_sample(s, l), 2);
		sampler_free(s);
	}

	/* the penalty window forgets: last_n = 2 */
	{
		float l[2] = { 1.0f, 0.9f };
		struct sampler *s;
		sampler_params_default(&p);
		p.temp = 0.0f;
		p.repeat_last_n = 2;
		p.presence_penalty = 1.0f;
		s = sampler_create(&p, 2);
		sampler_accept(s, 0);
		T_EQ_INT(sampler_sample(s, l), 1); /* 1-1 = 0 < 0.9 */
		sampler_accept(s, 1);
		sampler_accept(s, 1); /* window is {1,1}: id0 free again */
		T_EQ_INT(sampler_sample(s, l), 0);
		sampler_free(s);
	}

	/* same seed, same choices */
	{
		float l[5] = { 0.1f, 0.2f, 0.3f, 0.4f, 0.5f };
		struct sampler *a, *b;
		plain(&p);
		a = sampler_create(&p, 5);
		b = sampler_create(&p, 5);
		int same = 1;
		for (int i = 0; i < 100; i++)
			same &= sampler_sample(a, l) == sampler_sample(b, l);
		T_CHECK(same, "two samplers with one seed agree");
		sampler_free(a);
		sampler_free(b);
	}
	return t_done("test-sampler");
}
