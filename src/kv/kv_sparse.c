/*
 * kv_sparse.c: sparse attention as a watcher sees it. While a sparse mode
 * is on and the cache's capture is (a view, a trace or a Lua hook
 * watches), every decode step asks the engine for its choice (want_sel:
 * which keys each (layer, KV head) attended, and quest's page bounds),
 * which costs a copy and no attention; every `shadow` decode steps one
 * step also asks for the dense weights of the same query (want_attn: the
 * dense shadow), from which the mass the choice captured and quest's
 * bound tightness are taken. The shadow's attention time is kept apart
 * (kv_sparse_stats.shadow_ms), so the plain steps' figures are the speed.
 *
 * Under sparse attention a captured step that is not a shadow has no
 * attention rows: dense rows are what the shadow costs, and the views
 * keep showing the last shadow's.
 *
 * The overlap of consecutive choices is taken by original position, so
 * an eviction or a compaction between two steps (keys leave, positions
 * move) does not count as churn: a key is the same key wherever it sits.
 *
 * Memory while watching: (n_layer, n_head_kv, n_ctx) bytes for the choice
 * and as many for the previous one, n_layer x n_ctx floats of bounds.
 */
#include "kv/kv-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct kv_sparse {
	struct kv_sparse_view v; /* the last watched step's, over the arrays below */
	bool fresh;              /* v describes the forward just done */
	uint32_t cap;            /* n_ctx: columns the arrays hold */
	uint8_t *sel;            /* (n_layer, n_head_kv, cap) */
	uint8_t *mark;           /* (cap) */
	float *bound;            /* (n_layer, cap) */
	float *mass, *tight;     /* (n_layer, n_head_kv) the last shadow's */
	uint8_t *prev;           /* (n_layer, n_head_kv, cap) the previous step's candidates' choice */
	int32_t *prev_pos;       /* (cap) their original positions, ascending */
	uint32_t n_prev;         /* 0: no previous step */
	uint64_t prev_step;      /* its step (a clear restarts the count) */
	uint64_t n_watched;      /* watched decode steps: the shadow's cadence */
	bool shadow;             /* the step being run is a shadow */
	float *scratch;          /* (n_layer * n_head_kv) sorting */
};

/* The state, made at the first watched step. */
static struct kv_sparse *kv_sparse_state(struct kv_cache *c)
{
	if (c->sps != NULL)
		return c->sps;
	const struct hparams *hp = c->hp;
	size_t lh = (size_t)hp->n_layer * hp->n_head_kv;
	struct kv_sparse *s = xcalloc(1, sizeof *s);
	s->cap = c->n_ctx;
	s->sel = xmallocarray(lh, s->cap);
	s->prev = xmallocarray(lh, s->cap);
	s->mark = xmalloc(s->cap);
	s->bound = xmallocarray((size_t)hp->n_layer * s->cap, sizeof(float));
	s->prev_pos = xmallocarray(s->cap, sizeof(int32_t));
	s->mass = xmallocarray(lh, sizeof(float));
	s->tight = xmallocarray(lh, sizeof(float));
	s->scratch = xmallocarray(lh, sizeof(float));
	for (size_t i = 0; i < lh; i++)
		s->mass[i] = s->tight[i] = NAN;
	struct kv_sparse_stats *st = &c->sp_stats;
	st->overlap = st->mass_mean = st->mass_min = st->mass_p10 = st->tight = NAN;
	st->attn_ms = st->select_ms = st->shadow_ms = NAN;
	c->sps = s;
	return s;
}

void kv_sparse_free(struct kv_cache *c)
{
	struct kv_sparse *s = c->sps;
	if (s == NULL)
		return;
	free(s->sel);
	free(s->prev);
	free(s->mark);
	free(s->bound);
	free(s->prev_pos);
	free(s->mass);
	free(s->tight);
	free(s->scratch);
	free(s);
	c->sps = NULL;
}

bool kv_sparse_prepare(struct kv_cache *c, struct engine_batch *b, uint32_t m, bool capture)
{
	const struct engine_sparse *sp = &c->cfg.sparse;
	if (c->sps != NULL)
		c->sps->fresh = false;
	c->sp_stats.mode = sp->mode;
	if (sp->mode == ENGINE_SPARSE_OFF)
		return capture;
	b->sparse = sp;
	if (m != 1 || c->cfg.capture == KV_CAPTURE_OFF)
		return capture;
	struct kv_sparse *s = kv_sparse_state(c);
	/* a policy that reads the rows (an attention score without the
	 * engine's per-KV-head sums) keeps them every step */
	bool policy_rows = kv_def(c)->score == KV_SCORE_ATTN && !c->has_scorer && !b->want_attn_kv;
	s->shadow = sp->shadow == 0 ? capture : s->n_watched % sp->shadow == 0;
	s->n_watched++;
	b->want_sel = true;
	b->want_attn = policy_rows || s->shadow;
	return capture || s->shadow;
}

/* qsort order of floats. */
static int kv_sparse_cmp(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return x < y ? -1 : x > y;
}

/* The dense mass of the shadow o that the choice captured, per (layer, KV
 * head): the mean over its query heads of the weights on attended keys. */
static void kv_sparse_mass(struct kv_cache *c, struct kv_sparse *s, const struct engine_out *o,
                           uint32_t nv)
{
	const struct hparams *hp = c->hp;
	uint32_t nkv = hp->n_head_kv, grp = hp->n_head / nkv;
	for (uint32_t l = 0; l < hp->n_layer; l++)
		for (uint32_t h = 0; h < nkv; h++) {
			const uint8_t *sel = o->sel + ((size_t)l * nkv + h) * nv;
			double got = 0;
			for (uint32_t r = h * grp; r < (h + 1) * grp; r++) {
				const float *w = o->attn + ((size_t)l * hp->n_head + r) * nv;
				for (uint32_t i = 0; i < nv; i++)
					got += sel[i] ? w[i] : 0;
			}
			s->mass[(size_t)l * nkv + h] = (float)(got / grp);
			s->tight[(size_t)l * nkv + h] = o->tight ? o->tight[(size_t)l * nkv + h] : NAN;
		}
	/* the summary over the sparse layers */
	uint32_t n = 0;
	double sum = 0, tsum = 0;
	uint32_t tn = 0;
	for (uint32_t l = KVS_MIN(s->v.dense_layers, hp->n_layer); l < hp->n_layer; l++)
		for (uint32_t h = 0; h < nkv; h++) {
			float v = s->mass[(size_t)l * nkv + h], t = s->tight[(size_t)l * nkv + h];
			s->scratch[n++] = v;
			sum += v;
			if (!isnan(t)) {
				tsum += t;
				tn++;
			}
		}
	struct kv_sparse_stats *st = &c->sp_stats;
	st->mass_mean = st->mass_min = st->mass_p10 = NAN;
	if (n > 0) {
		qsort(s->scratch, n, sizeof(float), kv_sparse_cmp);
		st->mass_mean = (float)(sum / n);
		st->mass_min = s->scratch[0];
		st->mass_p10 = s->scratch[n / 10];
	}
	st->tight = tn ? (float)(tsum / tn) : NAN;
}

/* The overlap of this step's chosen candidates [k0, k1) (cache indices)
 * with the previous step's, by original position; then this step becomes
 * the previous. */
static void kv_sparse_overlap(struct kv_cache *c, struct kv_sparse *s, uint32_t nv, uint32_t k0,
                              uint32_t k1, uint64_t step)
{
	const struct hparams *hp = c->hp;
	uint32_t nkv = hp->n_head_kv, cap = s->cap;
	uint64_t both = 0, either = 0;
	bool have = s->n_prev > 0 && s->prev_step < step;
	for (uint32_t l = s->v.dense_layers; have && l < hp->n_layer; l++)
		for (uint32_t h = 0; h < nkv; h++) {
			const uint8_t *a = s->sel + ((size_t)l * nkv + h) * nv;
			const uint8_t *b = s->prev + ((size_t)l * nkv + h) * cap;
			uint32_t i = k0, j = 0;
			while (i < k1 || j < s->n_prev) {
				int32_t pa = i < k1 ? c->toks[i].orig_pos : INT32_MAX;
				int32_t pb = j < s->n_prev ? s->prev_pos[j] : INT32_MAX;
				bool in_a = pa <= pb && a[i], in_b = pb <= pa && b[j];
				both += in_a && in_b;
				either += in_a || in_b;
				i += pa <= pb;
				j += pb <= pa;
			}
		}
	c->sp_stats.overlap = have && either > 0 ? (float)((double)both / (double)either)
	        : have                           ? 1.0f
	                                         : NAN;
	/* this step's candidates for the next */
	s->n_prev = k1 - k0;
	s->prev_step = step;
	for (uint32_t i = k0; i < k1; i++)
		s->prev_pos[i - k0] = c->toks[i].orig_pos;
	for (uint32_t lh = 0; lh < hp->n_layer * nkv; lh++)
		memcpy(s->prev + (size_t)lh * cap, s->sel + (size_t)lh * nv + k0, k1 - k0);
}

/* Quest's bound of each key (the max over the KV heads of its page's). */
static void kv_sparse_bounds(struct kv_cache *c, struct kv_sparse *s, const struct engine_out *o,
                             uint32_t nv)
{
	const struct hparams *hp = c->hp;
	uint32_t nkv = hp->n_head_kv, page = c->cfg.sparse.page;
	for (uint32_t l = 0; l < hp->n_layer; l++) {
		float *row = s->bound + (size_t)l * nv;
		for (uint32_t i = 0; i < nv; i++) {
			uint32_t slot = c->visible[i], p = slot / page;
			float b = NAN;
			for (uint32_t h = 0; p < o->n_pages && h < nkv; h++) {
				float u = o->page_ub[((size_t)l * nkv + h) * o->n_pages + p];
				b = isnan(b) || u > b ? u : b;
			}
			row[i] = b;
		}
	}
}

void kv_sparse_after(struct kv_cache *c, const struct engine_out *o, uint32_t m)
{
	if (m != 1)
		return;
	c->keys_read = o->keys_read;
	c->keys_dense = o->keys_dense;
	struct kv_sparse *s = c->sps;
	if (s == NULL || o->sel == NULL || c->cfg.sparse.mode == ENGINE_SPARSE_OFF)
		return;
	const struct hparams *hp = c->hp;
	const struct engine_sparse *sp = &c->cfg.sparse;
	uint32_t nv = c->n + m, nkv = hp->n_head_kv;
	uint64_t step = c->step + 1; /* the step event's number */
	if (NEVER(nv > s->cap))
		return;
	struct kv_sparse_stats *st = &c->sp_stats;
	if (s->prev_step >= step) { /* the cache was cleared since */
		s->n_prev = 0;
		st->shadow_step = 0;
	}
	struct kv_sparse_view *v = &s->v;
	v->mode = sp->mode;
	v->n_layer = hp->n_layer;
	v->n_head_kv = nkv;
	v->n_cached = nv;
	v->dense_layers = KVS_MIN(sp->dense_layers, hp->n_layer);
	v->page = sp->mode == ENGINE_SPARSE_QUEST ? sp->page : sp->block;
	v->shadow = s->shadow && o->attn != NULL;
	memcpy(s->sel, o->sel, (size_t)hp->n_layer * nkv * nv);
	v->sel = s->sel;
	/* the engine's sinks and recent window: the first and last keys */
	uint32_t k0 = KVS_MIN(sp->sinks, nv);
	uint32_t k1 = nv - KVS_MIN(KVS_MAX(sp->recent, 1u), nv - k0);
	for (uint32_t i = 0; i < nv; i++)
		s->mark[i] = i < k0 ? KV_SPMARK_SINK : i >= k1 ? KV_SPMARK_RECENT : KV_SPMARK_NONE;
	/* the pinned document's region (--doc) is marked KV_SPMARK_DOC here
	 * once the cache has one */
	v->mark = s->mark;
	v->bound = NULL;
	if (o->page_ub != NULL) {
		kv_sparse_bounds(c, s, o, nv);
		v->bound = s->bound;
	}
	uint64_t bpk = c->bytes_per_token / ((uint64_t)hp->n_layer * nkv); /* K+V of one key-head */
	st->step = step;
	st->bytes_read = o->keys_read * bpk;
	st->bytes_dense = o->keys_dense * bpk;
	st->shadow_every = sp->shadow;
	if (v->shadow) {
		kv_sparse_mass(c, s, o, nv);
		st->shadow_step = step;
		st->shadow_ms = o->attn_ms;
	} else {
		st->attn_ms = o->attn_ms;
		st->select_ms = o->select_ms;
	}
	if (st->shadow_step == 0) {
		st->mass_mean = st->mass_min = st->mass_p10 = st->tight = NAN;
		for (size_t i = 0; i < (size_t)hp->n_layer * nkv; i++)
			s->mass[i] = s->tight[i] = NAN;
	}
	v->mass = s->mass;
	v->tight = s->tight;
	kv_sparse_overlap(c, s, nv, k0, k1, step);
	s->fresh = true;
}

const struct kv_sparse_view *kv_sparse_view_of(const struct kv_cache *c)
{
	return c->sps != NULL && c->sps->fresh ? &c->sps->v : NULL;
}
