/*
 * sampler.h: turning logits into the next token.
 * (Part of the engine layer's interface, included beside engine.h.)
 */
#ifndef KVS_SAMPLER_H
#define KVS_SAMPLER_H

#include "base/base.h"

/* Defaults are llama.cpp's common defaults (repeat penalty off). */
struct sampler_params {
	float temp;             /* 0.8; <= 0 is greedy */
	int32_t top_k;          /* 40; <= 0 keeps all */
	float top_p;            /* 0.95; >= 1 is off */
	float min_p;            /* 0.05; <= 0 is off */
	float repeat_penalty;   /* 1.0 (off) */
	int32_t repeat_last_n;  /* 64; 0 disables the penalties */
	float freq_penalty;     /* 0 */
	float presence_penalty; /* 0 */
	uint32_t seed;          /* 0xFFFFFFFF: random */
};

#define SAMPLER_SEED_RANDOM 0xFFFFFFFFu

struct sampler;

/* Fill p with the defaults. */
void sampler_params_default(struct sampler_params *p);
/* Check ranges; e names the first bad parameter and its allowed range. */
int sampler_params_check(const struct sampler_params *p, struct err *e);
struct sampler *sampler_create(const struct sampler_params *p, uint32_t n_vocab);
void sampler_free(struct sampler *s);
/* The seed actually in use (resolved when the params asked for a random one). */
uint32_t sampler_seed(const struct sampler *s);
/* Choose a token from logits, (n_vocab), left unchanged. */
int32_t sampler_sample(struct sampler *s, const float *logits);
/* Record that id was emitted (feeds the repetition penalties). */
void sampler_accept(struct sampler *s, int32_t id);
/* Forget the penalty history (a new conversation). */
void sampler_reset(struct sampler *s);

struct mt19937;
/* The random generator's state now (to start a replay where s started). */
void sampler_rng_get(const struct sampler *s, struct mt19937 *out);
/* A new sampler with s's parameters and seed, no penalty history, and the
 * random generator in state rng (NULL: fresh from the seed): a shadow
 * session samples as its original did from the point rng was taken. */
struct sampler *sampler_replica(const struct sampler *s, const struct mt19937 *rng);

/* The Mersenne Twister MT19937 (the RNG llama.cpp samples with), exposed for
 * tests against published reference outputs. */
struct mt19937 {
	uint32_t mt[624];
	uint32_t idx;
};
void mt19937_seed(struct mt19937 *r, uint32_t seed);
uint32_t mt19937_next(struct mt19937 *r);
/* A double in [0, 1) from two draws, as C++'s generate_canonical<double, 53>
 * does with a 32-bit engine. */
double mt19937_canonical(struct mt19937 *r);

#endif
