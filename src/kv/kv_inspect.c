/*
 * kv_inspect.c: looking at the KV cache without changing it: its statistics
 * (kv_cache_stats), the invariant check (kv_cache_check, run after every
 * change in debug builds) and the per-head attention summaries of the
 * capture step (top-k mass, how many keys hold 90 % of it).
 */
#include "kv/kv-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* --------------------------------------------------------------- checking */

int kv_cache_check(const struct kv_cache *c, struct err *e)
{
	uint32_t n_ctx = c->n_ctx;
	/* per-head keep-sets bound each head by the budget, the union by the slots */
	if (c->cfg.budget > n_ctx || (c->n > c->cfg.budget && !kv_heads_on(c)))
		return err_set(e, KVS_ESTATE,
		               "KV cache check: %u tokens cached, budget %u, %u slots: expected "
		               "cached <= budget <= slots",
		               c->n, c->cfg.budget, n_ctx);
	int hrc = kv_heads_check(c, e);
	if (hrc == KVS_OK)
		hrc = kv_store_check(c, e);
	if (hrc != KVS_OK)
		return hrc;
	if (c->n_free > n_ctx || c->n + c->n_free != n_ctx)
		return err_set(e, KVS_ESTATE,
		               "KV cache check: %u tokens cached and %u free slots: expected them to "
		               "add up to the %u slots",
		               c->n, c->n_free, n_ctx);
	if (KV_SCORE_HAS_ACC(kv_def(c)->score) && c->acc == NULL)
		return err_set(e, KVS_ESTATE,
		               "KV cache check: policy %s scores by attention but the cache has no "
		               "accumulators",
		               kv_def(c)->name);
	/* owner[s]: 0 unseen, 1 held by a cached token, 2 on the free stack */
	uint8_t *owner = xcalloc(n_ctx ? n_ctx : 1, 1);
	int rc = KVS_OK;
	for (uint32_t i = 0; i < c->n && rc == KVS_OK; i++) {
		const struct kv_tok *t = &c->toks[i];
		int32_t prev = i > 0 ? c->toks[i - 1].orig_pos : -1;
		if (t->orig_pos <= prev || t->orig_pos >= c->next_pos)
			rc = err_set(e, KVS_ESTATE,
			             "KV cache check: token %u at original position %d after %d: expected "
			             "cache order (original positions rising, below the next %d)",
			             i, t->orig_pos, prev, c->next_pos);
		else if (t->slot >= n_ctx)
			rc = err_set(e, KVS_ESTATE, "KV cache check: token %u holds slot %u, expected 0..%u", i,
			             t->slot, n_ctx - 1);
		else if (owner[t->slot] != 0)
			rc = err_set(e, KVS_ESTATE,
			             "KV cache check: token %u holds slot %u, already held by an earlier token",
			             i, t->slot);
		else if (t->pos < 0 || engine_kv_pos(c->eng, t->slot) != t->pos)
			rc = err_set(e, KVS_ESTATE,
			             "KV cache check: token %u at position %d, its slot %u at %d in the "
			             "engine: expected the same position >= 0",
			             i, t->pos, t->slot, engine_kv_pos(c->eng, t->slot));
		else if (c->acc != NULL && c->acc_tok[i] != t->orig_pos)
			rc = err_set(e, KVS_ESTATE,
			             "KV cache check: accumulator row %u belongs to the token at original "
			             "position %d, cache index %u holds %d: expected rows in step with the "
			             "tokens",
			             i, c->acc_tok[i], i, t->orig_pos);
		else
			owner[t->slot] = 1;
	}
	for (uint32_t k = 0; k < c->n_free && rc == KVS_OK; k++) {
		uint32_t sl = c->free_slots[k];
		if (sl >= n_ctx)
			rc = err_set(e, KVS_ESTATE,
			             "KV cache check: free-slot stack entry %u is slot %u, "
			             "expected 0..%u",
			             k, sl, n_ctx - 1);
		else if (owner[sl] != 0)
			rc = err_set(e, KVS_ESTATE,
			             "KV cache check: free-slot stack entry %u is slot %u, which is %s", k, sl,
			             owner[sl] == 1 ? "held by a cached token" : "already on the stack");
		else if (engine_kv_pos(c->eng, sl) != -1)
			rc = err_set(e, KVS_ESTATE,
			             "KV cache check: free slot %u has position %d in the engine, expected "
			             "-1 (empty)",
			             sl, engine_kv_pos(c->eng, sl));
		else
			owner[sl] = 2;
	}
	free(owner);
	return rc;
}

/* In a debug build, abort with kv_cache_check's message when the cache
 * breaks an invariant (after evictions, repositioning, restores, feeds). */
void kv_debug_check(const struct kv_cache *c)
{
#ifdef KVS_DEBUG
	struct err e;
	if (kv_cache_check(c, &e) != KVS_OK)
		err_invariant(e.msg, __FILE__, __LINE__);
#else
	(void)c;
#endif
}

/* ------------------------------------------------------------ introspection */

/* Three-way partition of x[lo, hi) around pivot: afterwards [lo, *a) holds
 * the values above it, [*a, *b) those equal to it, [*b, hi) those below. */
static void kv_partition3(float *x, uint32_t lo, uint32_t hi, float pivot, uint32_t *a_out,
                          uint32_t *b_out)
{
	uint32_t a = lo, i = lo, b = hi;

	while (i < b) {
		if (x[i] > pivot) {
			float t = x[a];
			x[a] = x[i];
			x[i] = t;
			a++, i++;
		} else if (x[i] < pivot) {
			b--;
			float t = x[b];
			x[b] = x[i];
			x[i] = t;
		} else {
			i++;
		}
	}
	*a_out = a;
	*b_out = b;
}

/* Sum of the k largest of x[0..n) (x is reordered). Quickselect. */
static float kv_top_sum(float *x, uint32_t n, uint32_t k)
{
	if (k >= n) {
		double s = 0;
		for (uint32_t i = 0; i < n; i++)
			s += x[i];
		return (float)s;
	}
	uint32_t lo = 0, hi = n; /* the answer's boundary lies in [lo, hi) */
	double acc = 0;          /* sum of x[0..lo), all among the top */
	while (hi - lo > 1 && lo < k) {
		float pivot = x[lo + (hi - lo) / 2];
		uint32_t a, b;
		kv_partition3(x, lo, hi, pivot, &a, &b);
		if (k <= a) {
			hi = a;
		} else if (k <= b) {
			for (uint32_t j = lo; j < a; j++)
				acc += x[j];
			acc += (double)pivot * (k - a);
			return (float)acc;
		} else {
			for (uint32_t j = lo; j < b; j++)
				acc += x[j];
			lo = b;
		}
	}
	for (uint32_t j = lo; j < k; j++)
		acc += x[j];
	return (float)acc;
}

/* Fewest of x[0..n) whose sum reaches target (x is reordered). */
static uint32_t kv_count_mass(float *x, uint32_t n, double target)
{
	uint32_t lo = 0, hi = n, count = 0;
	double acc = 0;
	while (lo < hi) {
		float pivot = x[lo + (hi - lo) / 2];
		uint32_t a, b;
		kv_partition3(x, lo, hi, pivot, &a, &b);
		double s_hi = 0;
		for (uint32_t j = lo; j < a; j++)
			s_hi += x[j];
		if (acc + s_hi >= target) {
			hi = a; /* the answer is inside the larger part */
			continue;
		}
		acc += s_hi;
		count += a - lo;
		/* the pivots, one at a time */
		for (uint32_t j = a; j < b; j++) {
			acc += pivot;
			count++;
			if (acc >= target)
				return count;
		}
		lo = b;
	}
	return count ? count : (n ? 1 : 0);
}

#define KV_TOPK_FAST 32 /* top-k kept in a small sorted buffer up to this k */

void kv_head_summarize(const float *w, uint32_t n, uint32_t topk, float *scratch,
                       struct kv_head_summary *out)
{
	double h = 0, sink = 0, total = 0;
	/* The largest k weights, ascending, in a small buffer: attention rows
	 * are peaked, so after the first few keys almost nothing gets in. */
	float top[KV_TOPK_FAST];
	uint32_t k = KVS_MIN(topk, n), nt = 0;
	bool fast = k <= KV_TOPK_FAST;
	for (uint32_t j = 0; j < n; j++) {
		float p = w[j];
		if (p > 0)
			h -= (double)(p * logf(p));
		if (j < KV_SINK_PROBE)
			sink += p;
		total += p;
		if (fast && nt < k) {
			/* grow: sift p down into place */
			uint32_t at = nt++;
			for (; at > 0 && top[at - 1] > p; at--)
				top[at] = top[at - 1];
			top[at] = p;
		} else if (fast && p > top[0]) {
			/* full: drop the smallest, sift p up into place */
			uint32_t at = 0;
			for (; at + 1 < nt && top[at + 1] < p; at++)
				top[at] = top[at + 1];
			top[at] = p;
		}
	}
	out->entropy = (float)h;
	out->sink_mass = (float)sink;
	double target = 0.9 * total;
	if (fast) {
		double tk = 0;
		for (uint32_t i = 0; i < nt; i++)
			tk += top[i];
		out->topk_mass = (float)tk;
		if (tk >= target) {
			/* the 90 % are inside the top k: count them from the largest */
			double acc = 0;
			uint32_t c = 0;
			for (uint32_t i = nt; i-- > 0;) {
				acc += top[i];
				c++;
				if (acc >= target)
					break;
			}
			out->k90 = c;
			return;
		}
	}
	memcpy(scratch, w, n * sizeof *w);
	if (!fast)
		out->topk_mass = kv_top_sum(scratch, n, topk);
	out->k90 = kv_count_mass(scratch, n, target);
}

/* Emit the step event of the forward just done (its last token). */
void kv_capture_step(struct kv_cache *c, const struct engine_out *o)
{
	const struct hparams *hp = c->hp;
	uint32_t nh = hp->n_layer * hp->n_head, nv = o->n_visible;
	if (o->attn != NULL)
		for (uint32_t h = 0; h < nh; h++)
			kv_head_summarize(o->attn + (size_t)h * nv, nv, c->cfg.summary_topk, c->fscratch,
			                  &c->heads[h]);
	struct kv_event ev = { .kind = KV_EVENT_STEP };
	if (NEVER(c->n == 0)) /* a forward just cached its tokens */
		return;
	ev.step = c->step;
	ev.tok = &c->toks[c->n - 1];
	ev.next_entropy = NAN;
	if (c->have_lse)
		ev.next_entropy = c->logits_ent;
	ev.n_layer = hp->n_layer;
	ev.n_head = hp->n_head;
	ev.n_cached = nv;
	ev.attn = c->cfg.capture == KV_CAPTURE_FULL ? o->attn : NULL;
	ev.heads = o->attn ? c->heads : NULL;
	ev.sparse = kv_sparse_view_of(c);
	kv_emit(c, &ev);
}

void kv_cache_stats(const struct kv_cache *c, struct kv_stats *s)
{
	memset(s, 0, sizeof *s);
	s->n_cached = c->n;
	s->budget = c->cfg.budget;
	s->n_ctx = c->n_ctx;
	s->keys_read = c->keys_read;
	s->keys_dense = c->keys_dense;
	s->sp = c->sp_stats;
	s->sp.mode = c->cfg.sparse.mode; /* switched since the last step: say so */
	for (uint32_t i = 0; i < c->n; i++) {
		uint8_t f = c->toks[i].flags;
		if (f & KV_FLAG_SINK)
			s->n_sink++;
		else if (f & KV_FLAG_KEY)
			s->n_key++;
		else
			s->n_recent++;
		if (f & KV_FLAG_PINNED)
			s->n_pinned++;
		if (f & KV_FLAG_RECALLED)
			s->n_recalled++;
		s->n_doc += (f & KV_FLAG_DOC) != 0;
	}
	s->n_seen = c->n_seen;
	s->n_evicted = c->n_evicted;
	s->n_evictions = c->n_evictions;
	s->n_fallbacks = c->n_fallbacks;
	s->bytes_per_token = c->bytes_per_token;
	kv_heads_stats(c, s); /* bytes, and the per-head keep-sets' */
	s->bytes_per_layer = s->bytes / (c->hp->n_layer ? c->hp->n_layer : 1);
	s->bytes_peak = c->bytes_peak;
	s->bytes_allocated = (uint64_t)engine_kv_rows(c->eng) * c->bytes_per_token;
}
