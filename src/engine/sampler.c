/*
 * sampler.c: the sampling chain, in llama.cpp's default order:
 *
 *   penalties -> top-k -> top-p -> min-p -> temperature -> draw
 *
 * Temperature comes after the truncation samplers, so top-p and min-p see
 * untempered probabilities; temp <= 0 keeps only the argmax (greedy). The
 * candidates live in one array reused across calls, so sampling allocates
 * nothing after sampler_create. The draw uses MT19937 and the same mapping
 * from random bits to a cumulative-probability search as llama.cpp's
 * discrete distribution, so a fixed seed reproduces its choices whenever the
 * logits agree.
 */
#include "engine/sampler.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct cand {
	int32_t id;
	float logit;
	float p;
};

struct sampler {
	struct sampler_params p;
	uint32_t seed;
	uint32_t n_vocab;
	struct mt19937 rng;
	struct cand *cand; /* (n_vocab) */
	double *cum;       /* (n_vocab) cumulative probabilities for the draw */
	int32_t *history;  /* ring of the last repeat_last_n ids */
	uint32_t n_hist, hist_head, hist_cap;
	uint16_t *count; /* (n_vocab) occurrences inside the ring */
};

/* ---- MT19937 (Matsumoto & Nishimura 1998; constants from the paper) ---- */

void mt19937_seed(struct mt19937 *r, uint32_t seed)
{
	r->mt[0] = seed;
	for (uint32_t i = 1; i < 624; i++)
		r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + i;
	r->idx = 624;
}

/* Regenerate the whole state block. */
static void mt19937_twist(struct mt19937 *r)
{
	for (uint32_t i = 0; i < 624; i++) {
		uint32_t y = (r->mt[i] & 0x80000000u) | (r->mt[(i + 1) % 624] & 0x7fffffffu);
		uint32_t v = r->mt[(i + 397) % 624] ^ (y >> 1);
		if (y & 1)
			v ^= 0x9908b0dfu;
		r->mt[i] = v;
	}
	r->idx = 0;
}

uint32_t mt19937_next(struct mt19937 *r)
{
	uint32_t y;

	if (r->idx >= 624)
		mt19937_twist(r);
	y = r->mt[r->idx++];
	y ^= y >> 11;
	y ^= (y << 7) & 0x9d2c5680u;
	y ^= (y << 15) & 0xefc60000u;
	y ^= y >> 18;
	return y;
}

double mt19937_canonical(struct mt19937 *r)
{
	/* Two 32-bit draws, low word first, scaled by 2^-64; never returns 1. */
	double lo = (double)mt19937_next(r);
	double hi = (double)mt19937_next(r);
	double v = (lo + hi * 4294967296.0) / 18446744073709551616.0;
	return v >= 1.0 ? nextafter(1.0, 0.0) : v;
}

/* ---- parameters ---- */

void sampler_params_default(struct sampler_params *p)
{
	p->temp = 0.8f;
	p->top_k = 40;
	p->top_p = 0.95f;
	p->min_p = 0.05f;
	p->repeat_penalty = 1.0f;
	p->repeat_last_n = 64;
	p->freq_penalty = 0.0f;
	p->presence_penalty = 0.0f;
	p->seed = SAMPLER_SEED_RANDOM;
}

int sampler_params_check(const struct sampler_params *p, struct err *e)
{
	if (!isfinite(p->temp) || p->temp > 100.0f)
		return err_set(e, KVS_EARG, "temperature %g is out of range: expected 0..100", p->temp);
	if (!isfinite(p->top_p) || p->top_p < 0.0f || p->top_p > 1.0f)
		return err_set(e, KVS_EARG, "top-p %g is out of range: expected 0..1", p->top_p);
	if (!isfinite(p->min_p) || p->min_p < 0.0f || p->min_p > 1.0f)
		return err_set(e, KVS_EARG, "min-p %g is out of range: expected 0..1", p->min_p);
	if (!isfinite(p->repeat_penalty) || p->repeat_penalty <= 0.0f)
		return err_set(e, KVS_EARG, "repeat penalty %g is out of range: expected > 0",
		               p->repeat_penalty);
	if (p->repeat_last_n < 0 || p->repeat_last_n > 65535)
		return err_set(e, KVS_EARG, "repeat-last-n %d is out of range: expected 0..65535",
		               p->repeat_last_n);
	if (!isfinite(p->freq_penalty) || !isfinite(p->presence_penalty))
		return err_set(e, KVS_EARG, "frequency/presence penalties must be finite numbers");
	return KVS_OK;
}

/* A seed from the clock and pid when the caller asked for a random one. */
static uint32_t sampler_random_seed(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint32_t)(ts.tv_nsec ^ (ts.tv_sec * 2654435761u) ^ ((uint32_t)getpid() << 16));
}

struct sampler *sampler_create(const struct sampler_params *p, uint32_t n_vocab)
{
	struct sampler *s = xcalloc(1, sizeof *s);

	s->p = *p;
	s->n_vocab = n_vocab;
	s->seed = p->seed == SAMPLER_SEED_RANDOM ? sampler_random_seed() : p->seed;
	mt19937_seed(&s->rng, s->seed);
	s->cand = xmallocarray(n_vocab, sizeof *s->cand);
	s->cum = xmallocarray(n_vocab, sizeof *s->cum);
	s->hist_cap = p->repeat_last_n > 0 ? (uint32_t)p->repeat_last_n : 1;
	s->history = xmallocarray(s->hist_cap, sizeof *s->history);
	s->count = xcalloc(n_vocab, sizeof *s->count);
	return s;
}

void sampler_rng_get(const struct sampler *s, struct mt19937 *out)
{
	*out = s->rng;
}

struct sampler *sampler_replica(const struct sampler *s, const struct mt19937 *rng)
{
	struct sampler_params p = s->p;
	p.seed = s->seed; /* the seed resolved, when the params asked for a random one */
	struct sampler *r = sampler_create(&p, s->n_vocab);
	if (rng != NULL)
		r->rng = *rng;
	return r;
}

void sampler_free(struct sampler *s)
{
	if (s == NULL)
		return;
	free(s->cand);
	free(s->cum);
	free(s->history);
	free(s->count);
	free(s);
}

uint32_t sampler_seed(const struct sampler *s)
{
	return s->seed;
}

void sampler_reset(struct sampler *s)
{
	s->n_hist = 0;
	s->hist_head = 0;
	memset(s->count, 0, s->n_vocab * sizeof *s->count);
}

void sampler_accept(struct sampler *s, int32_t id)
{
	if (id < 0 || (uint32_t)id >= s->n_vocab || s->p.repeat_last_n <= 0)
		return;
	if (s->n_hist == s->hist_cap) {
		int32_t old = s->history[s->hist_head];
		s->count[old]--;
	} else {
		s->n_hist++;
	}
	s->history[s->hist_head] = id;
	s->hist_head = (s->hist_head + 1) % s->hist_cap;
	s->count[id]++;
}

/* ---- the chain ---- */

/* Descending by logit; ties by id so results never depend on sort order. */
static int cand_cmp(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;
	if (x->logit != y->logit)
		return x->logit > y->logit ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

/* Sift-down for a min-heap of candidates keyed by (logit, -id). */
static bool cand_less(const struct cand *x, const struct cand *y)
{
	return cand_cmp(x, y) > 0; /* x ranks after y */
}

static void heap_sift(struct cand *h, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < n && cand_less(&h[l], &h[m]))
			m = l;
		if (r < n && cand_less(&h[r], &h[m]))
			m = r;
		if (m == i)
			return;
		struct cand t = h[i];
		h[i] = h[m];
		h[m] = t;
		i = m;
	}
}

/* Keep the k best candidates, sorted descending; O(n log k). */
static size_t sampler_top_k(struct cand *c, size_t n, size_t k)
{
	if (k < n) {
		for (size_t i = k / 2; i-- > 0;)
			heap_sift(c, k, i);
		for (size_t i = k; i < n; i++) {
			if (cand_less(&c[0], &c[i])) {
				c[0] = c[i];
				heap_sift(c, k, 0);
			}
		}
		n = k;
	}
	qsort(c, n, sizeof *c, cand_cmp);
	return n;
}

/* Softmax over sorted candidates (max first) into c[i].p, in float as the
 * reference does, so cut-offs agree. */
static void sampler_softmax(struct cand *c, size_t n)
{
	float max = c[0].logit, sum = 0.0f;
	for (size_t i = 0; i < n; i++) {
		c[i].p = expf(c[i].logit - max);
		sum += c[i].p;
	}
	for (size_t i = 0; i < n; i++)
		c[i].p /= sum;
}

int32_t sampler_sample(struct sampler *s, const float *logits)
{
	const struct sampler_params *p = &s->p;
	struct cand *c = s->cand;
	size_t n = s->n_vocab;

	for (size_t i = 0; i < n; i++) {
		c[i].id = (int32_t)i;
		c[i].logit = logits[i];
	}
	if (p->repeat_last_n > 0 &&
	    (p->repeat_penalty != 1.0f || p->freq_penalty != 0.0f || p->presence_penalty != 0.0f)) {
		for (size_t i = 0; i < n; i++) {
			uint32_t cnt = s->count[i];
			if (cnt == 0)
				continue;
			if (c[i].logit <= 0.0f)
				c[i].logit *= p->repeat_penalty;
			else
				c[i].logit /= p->repeat_penalty;
			c[i].logit -= (float)cnt * p->freq_penalty + p->presence_penalty;
		}
	}
	if (p->temp <= 0.0f) {
		/* Greedy: the first maximum wins. */
		size_t best = 0;
		for (size_t i = 1; i < n; i++)
			if (c[i].logit > c[best].logit)
				best = i;
		return c[best].id;
	}
	/* top-k (also sorts descending; k <= 0 keeps everything) */
	n = sampler_top_k(c, n, p->top_k > 0 ? KVS_MIN((size_t)p->top_k, n) : n);
	/* top-p: smallest prefix whose mass reaches p */
	if (p->top_p < 1.0f) {
		float cum = 0.0f;
		sampler_softmax(c, n);
		for (size_t i = 0; i < n; i++) {
			cum += c[i].p;
			if (cum >= p->top_p) {
				n = i + 1;
				break;
			}
		}
	}
	/* min-p: keep p_i >= min_p * p_max, i.e. logit >= max + ln(min_p) */
	if (p->min_p > 0.0f) {
		float floor_logit = c[0].logit + logf(p->min_p);
		size_t i = 1;
		while (i < n && c[i].logit >= floor_logit)
			i++;
		n = i;
	}
	for (size_t i = 0; i < n; i++)
		c[i].logit /= p->temp;
	sampler_softmax(c, n);
	/* Draw: cumulative sums in double over the normalised probabilities. */
	double total = 0.0, acc = 0.0;
	for (size_t i = 0; i < n; i++)
		total += c[i].p;
	for (size_t i = 0; i < n; i++) {
		acc += c[i].p / total;
		s->cum[i] = acc;
	}
	s->cum[n - 1] = 1.0;
	double u = mt19937_canonical(&s->rng);
	size_t lo = 0, hi = n - 1; /* first index with cum >= u */
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (s->cum[mid] < u)
			lo = mid + 1;
		else
			hi = mid;
	}
	return c[lo].id;
}
