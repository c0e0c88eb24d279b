/*
 * kv_heads.c: per-(layer, KV head) keep-sets, and the attention that
 * per-head scores are made of (H2O's accumulators).
 *
 * A retention head is not a local head: one (layer, KV head) reads a fact
 * from far back while its neighbour only looks at the last words, and one
 * keep-set for both makes them share a budget neither wants. So the cache
 * may keep a keep-set per (layer, KV head) (snapkv and h2o with heads=1,
 * kvzip with heads=1). The design:
 *
 *   - The token set stays shared: the cached tokens (toks, the slots) are
 *     the union of what the heads keep. hkeep, (n_layer, n_head_kv, n_ctx)
 *     by slot, says which heads keep each slot's token; the engine gets it
 *     with every forward (engine_batch.head_keep), and each attention path
 *     gives a key its head dropped exactly zero weight, as if that head had
 *     evicted it (cpu-attn.c, cpu-sparse.c).
 *   - The budget bounds each head: a (layer, KV head) keeps at most budget
 *     tokens, and an eviction makes room for m incoming tokens by cutting
 *     each head to budget - m (less the pinned tokens it keeps). Tokens that
 *     arrive are kept by every head; a head never gets back a token it
 *     dropped (its selection runs over the candidates it still keeps).
 *     With alloc=adaptive (kv_alloc.c) the budget bounds each layer
 *     instead: its heads keep at most budget x n_head_kv entries together,
 *     shared by their scores, so one head may keep more than the budget;
 *     the load that decides an eviction (kv_heads_load) is then the
 *     fullest layer's mean head.
 *   - Bytes are what the engine holds: it stores K/V per slot for every
 *     head, so the cached tokens (the union) cost bytes_per_token each,
 *     kv_stats.bytes, and the union is at most kv_slot_cap = spread x
 *     budget tokens. With spread 1, the default, the held bytes never pass
 *     budget x bytes_per_token, and the engine is given budget slots plus
 *     the policy's fixed scratch (a vote's window, a re-read's chunk). The
 *     kept (token, layer, KV head) entries, bytes_per_token / (n_layer x
 *     n_head_kv) each, are kv_stats.bytes_entries: what the per-head
 *     store (store=heads, kv_store.c: per (layer, KV head) rows behind a
 *     slot-to-row map) holds, so there spread > 1 lets the heads keep
 *     more different tokens at no more memory; with the slot store (the
 *     default) at spread x the memory.
 *   - A slot is freed when no head keeps its token; when the union would
 *     pass its cap, the tokens the fewest heads keep go first, whole spans
 *     (the older first on ties). With spread 1 the cap is what one head
 *     may keep, so each head then keeps every token of the union it kept
 *     before: the heads nominate, the union keeps what most of them chose,
 *     and the sets stay one set (different sets cost spread x the memory
 *     until a per-head store exists).
 *   - Spans apply per head: a head's selection cuts its own candidates
 *     into spans (kv_span_find over the tokens it keeps), so every head
 *     keeps or drops a word whole; the union of whole spans is whole too,
 *     and the cut of the union drops whole spans of all the candidates.
 *
 * The selection itself is the policy's (kv_policy.c), run once per head
 * with kv_select.head1 set: it scores a candidate by that head's own row of
 * acc (the votes, the accumulated attention, KVzip's max). A score
 * provider (a Lua policy) scores tokens, not heads: it replaces the
 * per-head sets with one while it is installed.
 */
#include "kv/kv-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Rows of hkeep: n_layer * n_head_kv. */
static uint32_t heads_n(const struct kv_cache *c)
{
	return c->hp->n_layer * c->hp->n_head_kv;
}

bool kv_heads_on(const struct kv_cache *c)
{
	return c->hkeep != NULL && kv_policy_per_head(&c->cfg.policy) && !c->has_scorer;
}

void kv_heads_reset(struct kv_cache *c)
{
	bool want = kv_policy_per_head(&c->cfg.policy) && !c->has_scorer;
	c->heads_over = false;
	if (!want) {
		free(c->hkeep);
		c->hkeep = NULL;
		for (uint32_t i = 0; i < c->n; i++)
			c->toks[i].n_heads = 0;
		return;
	}
	if (c->hkeep == NULL)
		c->hkeep = xcalloc((size_t)heads_n(c) * c->n_ctx, 1);
	else
		memset(c->hkeep, 0, (size_t)heads_n(c) * c->n_ctx);
	for (uint32_t i = 0; i < c->n; i++)
		kv_heads_take(c, &c->toks[i].slot, 1);
	kv_heads_count(c);
	c->heads_over = kv_heads_load(c) > c->cfg.budget;
}

void kv_heads_take(struct kv_cache *c, const uint32_t *slots, uint32_t m)
{
	if (c->hkeep == NULL)
		return;
	uint32_t h = heads_n(c);
	for (uint32_t r = 0; r < h; r++) {
		uint8_t *row = c->hkeep + (size_t)r * c->n_ctx;
		for (uint32_t i = 0; i < m; i++)
			row[slots[i]] = 1;
	}
}

/* The tokens head r keeps. */
static uint32_t heads_kept(const struct kv_cache *c, uint32_t r)
{
	const uint8_t *row = c->hkeep + (size_t)r * c->n_ctx;
	uint32_t k = 0;
	for (uint32_t i = 0; i < c->n; i++)
		k += row[c->toks[i].slot];
	return k;
}

uint32_t kv_heads_load(const struct kv_cache *c)
{
	if (!kv_heads_on(c))
		return c->n;
	uint32_t h = heads_n(c), nh = c->hp->n_head_kv, most = 0;
	bool adaptive = kv_policy_floor(&c->cfg.policy) >= 0;
	/* adaptive budgets: a layer's heads share its budget, so what counts is
	 * the layer's mean head, rounded up */
	for (uint32_t r = 0; r < h; r += adaptive ? nh : 1) {
		uint32_t k = heads_kept(c, r);
		if (adaptive) {
			for (uint32_t g = 1; g < nh; g++)
				k += heads_kept(c, r + g);
			k = (k + nh - 1) / nh;
		}
		most = KVS_MAX(most, k);
	}
	return most;
}

uint32_t kv_slot_cap(const struct kv_cache *c)
{
	uint32_t budget = c->cfg.budget;
	if (!kv_heads_on(c))
		return budget;
	float spread = kv_policy_get(&c->cfg.policy, "spread");
	uint64_t want = (uint64_t)budget * (isnan(spread) || spread < 1 ? 1 : (uint32_t)spread);
	/* the policy's own scratch (a vote's window, a re-read) stays free */
	uint32_t scratch = kv_policy_scratch(&c->cfg.policy, budget) - (uint32_t)(want - budget);
	uint32_t room = c->n_ctx > budget + scratch ? c->n_ctx - scratch : budget;
	return (uint32_t)KVS_MIN(want, (uint64_t)room);
}

bool kv_over(const struct kv_cache *c, uint32_t m)
{
	if (!kv_heads_on(c))
		return c->n + m > c->cfg.budget;
	return c->heads_over || kv_heads_load(c) + m > c->cfg.budget || c->n + m > kv_slot_cap(c);
}

uint64_t kv_heads_count(struct kv_cache *c)
{
	if (!kv_heads_on(c))
		return (uint64_t)c->n * heads_n(c);
	uint32_t h = heads_n(c);
	uint64_t total = 0;
	for (uint32_t i = 0; i < c->n; i++) {
		uint32_t s = c->toks[i].slot, k = 0;
		for (uint32_t r = 0; r < h; r++)
			k += c->hkeep[(size_t)r * c->n_ctx + s];
		c->toks[i].n_heads = (uint16_t)k;
		total += k;
	}
	return total;
}

uint64_t kv_bytes(const struct kv_cache *c)
{
	/* the per-head store holds each head's kept entries only */
	if (kv_store_on(c) && kv_heads_on(c))
		return kv_bytes_entries(c);
	return (uint64_t)c->n * c->bytes_per_token;
}

uint64_t kv_bytes_entries(const struct kv_cache *c)
{
	if (!kv_heads_on(c))
		return kv_bytes(c);
	uint64_t entries = 0;
	for (uint32_t i = 0; i < c->n; i++)
		entries += c->toks[i].n_heads;
	return entries * c->bytes_per_token / heads_n(c);
}

void kv_heads_stats(const struct kv_cache *c, struct kv_stats *s)
{
	s->bytes = kv_bytes(c);
	s->bytes_entries = kv_bytes_entries(c);
	/* the fullest head itself (with adaptive budgets it may pass the
	 * budget; kv_heads_load is then a layer's mean) */
	uint32_t most = 0;
	for (uint32_t r = 0; kv_heads_on(c) && r < heads_n(c); r++)
		most = KVS_MAX(most, heads_kept(c, r));
	s->heads_load = kv_heads_on(c) ? most : c->n;
	s->n_head_sets = kv_heads_on(c) ? heads_n(c) : 0;
	s->n_zip_reads = c->n_zip_reads;
	s->n_zip_tokens = c->n_zip_tokens;
}

uint32_t kv_cache_token_heads(const struct kv_cache *c, uint32_t i, uint8_t *out)
{
	uint32_t h = heads_n(c);
	if (!kv_heads_on(c) || i >= c->n) {
		memset(out, i < c->n, h);
		return i < c->n ? h : 0;
	}
	uint32_t s = c->toks[i].slot, k = 0;
	for (uint32_t r = 0; r < h; r++) {
		out[r] = c->hkeep[(size_t)r * c->n_ctx + s] != 0;
		k += out[r];
	}
	return k;
}

uint8_t *kv_cache_head_map(const struct kv_cache *c, uint32_t *n_layer, uint32_t *n_head_kv)
{
	*n_layer = c->hp->n_layer;
	*n_head_kv = c->hp->n_head_kv;
	if (!kv_heads_on(c))
		return NULL;
	uint32_t h = heads_n(c);
	uint8_t *m = xmallocarray(c->n ? (size_t)c->n * h : 1, 1); /* (n, n_layer, n_head_kv) */
	for (uint32_t i = 0; i < c->n; i++)
		kv_cache_token_heads(c, i, m + (size_t)i * h);
	return m;
}

int kv_heads_refuse(struct engine *eng, const struct kv_policy *p, uint32_t budget, struct err *e)
{
	if (kv_policy_per_head(p) && !engine_supports(eng, ENGINE_CAP_HEAD_KEEP))
		return err_set(e, KVS_EUNSUPPORTED,
		               "policy %s heads=1: backend %s has no per-head keep-sets (expected "
		               "heads=0, or --backend cpu)",
		               kv_policy_name(p), engine_backend_name(eng));
	if (kv_policy_reread(p) > 0 && !engine_supports(eng, ENGINE_CAP_HEAD_KEEP | ENGINE_CAP_ATTN_KV))
		return err_set(e, KVS_EUNSUPPORTED,
		               "policy %s: backend %s cannot give the per-KV-head max attention its "
		               "re-read scores by (expected --backend cpu)",
		               kv_policy_name(p), engine_backend_name(eng));
	return kv_store_refuse(eng, p, budget, e);
}

/* ------------------------------------------------------------- selection */

struct heads_rank {
	uint32_t n_heads; /* the most heads keeping a token of the span */
	uint32_t b;       /* its first candidate */
};

/* Fewest heads first; ties: the older. */
static int heads_cmp(const void *a, const void *b)
{
	const struct heads_rank *x = a, *y = b;
	if (x->n_heads != y->n_heads)
		return x->n_heads < y->n_heads ? -1 : 1;
	return x->b < y->b ? -1 : x->b > y->b;
}

/* Cut the union s->keep (kept candidates, plus kept_pinned protected
 * tokens) to cap, dropping for every head the spans of s the fewest heads
 * keep. */
static void heads_cut(struct kv_cache *c, struct kv_select *s, uint32_t kept_pinned, uint32_t cap)
{
	uint32_t h = heads_n(c), kept = kept_pinned, nr = 0;
	for (uint32_t i = 0; i < s->n; i++)
		kept += (s->keep[i] & KV_KEEP) != 0;
	if (kept <= cap)
		return;
	struct heads_rank *r = xmallocarray(s->n ? s->n : 1, sizeof *r);
	for (uint32_t b = 0; b < s->n;) {
		uint32_t e = s->send ? s->send[b] : b + 1, most = 0;
		bool any = false;
		for (uint32_t i = b; i < e; i++) {
			uint32_t sl = c->toks[s->cand[i]].slot, k = 0;
			for (uint32_t row = 0; row < h; row++)
				k += c->hkeep[(size_t)row * c->n_ctx + sl];
			most = KVS_MAX(most, k);
			any |= (s->keep[i] & KV_KEEP) != 0;
		}
		if (any)
			r[nr++] = (struct heads_rank){ most, b };
		b = e;
	}
	qsort(r, nr, sizeof *r, heads_cmp);
	for (uint32_t j = 0; j < nr && kept > cap; j++) {
		uint32_t e = s->send ? s->send[r[j].b] : r[j].b + 1;
		for (uint32_t i = r[j].b; i < e; i++) {
			if (s->keep[i] & KV_KEEP)
				kept--;
			s->keep[i] = 0;
			uint32_t sl = c->toks[s->cand[i]].slot;
			for (uint32_t row = 0; row < h; row++)
				c->hkeep[(size_t)row * c->n_ctx + sl] = 0;
		}
	}
	free(r);
}

/* Each head's target, (n_layer * n_head_kv), allocated: per_head less the
 * pinned tokens it keeps, or with alloc=adaptive a share of its layer's
 * sum of those by the heads' scores (kv_alloc.c). */
static uint32_t *heads_targets(struct kv_cache *c, const struct kv_select *s, const bool *is_cand,
                               uint32_t per_head)
{
	uint32_t h = heads_n(c);
	uint32_t *target = xmallocarray(h, sizeof *target);
	for (uint32_t r = 0; r < h; r++) {
		const uint8_t *row = c->hkeep + (size_t)r * c->n_ctx;
		uint32_t pinned = 0;
		for (uint32_t i = 0; i < c->n; i++)
			pinned += !is_cand[i] && row[c->toks[i].slot];
		target[r] = per_head > pinned ? per_head - pinned : 0;
	}
	float floor_share = kv_policy_floor(&c->cfg.policy);
	if (floor_share >= 0) {
		uint32_t *unif = xmallocarray(h, sizeof *unif);
		memcpy(unif, target, h * sizeof *unif);
		kv_alloc_targets(c, s, floor_share, unif, target);
		free(unif);
	}
	return target;
}

int kv_heads_select(struct kv_cache *c, struct kv_select *s, uint32_t kept_pinned, struct err *e)
{
	uint32_t h = heads_n(c), n = s->n;
	size_t cap = n ? n : 1;
	uint32_t *sub = xmallocarray(cap, sizeof *sub);  /* (n) a head's candidates */
	uint32_t *map = xmallocarray(cap, sizeof *map);  /* (n) their index in s */
	uint32_t *sb = xmallocarray(cap, sizeof *sb);    /* (n) their spans */
	uint32_t *se = xmallocarray(cap, sizeof *se);    /* (n) */
	uint8_t *keep = xmallocarray(cap, sizeof *keep); /* (n) a head's choices */
	bool *is_cand = xcalloc(c->n ? c->n : 1, sizeof *is_cand);
	for (uint32_t i = 0; i < n; i++)
		is_cand[s->cand[i]] = true;
	uint32_t per_head = s->budget - s->m; /* each head keeps at most this (uniform) */
	uint32_t cap_union = kv_slot_cap(c);
	uint32_t *target = heads_targets(c, s, is_cand, per_head); /* (n_layer, n_head_kv) */
	/* spread 1: the union is cut to what one head may keep, so each head
	 * keeps afterwards every token of the union it kept before (nothing it
	 * gives up would save a byte) */
	uint8_t *before = NULL; /* (n_layer, n_head_kv, n_ctx) hkeep before the selection */
	if (cap_union <= s->budget) {
		before = xmallocarray((size_t)h * c->n_ctx, 1);
		memcpy(before, c->hkeep, (size_t)h * c->n_ctx);
	}
	int rc = KVS_OK;
	for (uint32_t r = 0; r < h && rc == KVS_OK; r++) {
		uint8_t *row = c->hkeep + (size_t)r * c->n_ctx;
		uint32_t ns = 0;
		for (uint32_t i = 0; i < n; i++)
			if (row[c->toks[s->cand[i]].slot]) {
				map[ns] = i;
				sub[ns++] = s->cand[i];
			}
		struct kv_select hs = *s;
		hs.cand = sub;
		hs.n = ns;
		hs.target = target[r];
		hs.keep = keep;
		hs.head1 = r + 1;
		hs.sbeg = sb;
		hs.send = se;
		memset(keep, 0, cap);
		if (ns > target[r]) {
			kv_span_find(c->span_cls, c->n_span_cls, c->toks, sub, ns,
			             (enum kv_span_mode)c->cfg.policy.common[KV_COMMON_SPAN], sb, se);
			kv_def(c)->select(&hs);
			int64_t split = kv_span_split(&hs);
			if (NEVER(split >= 0))
				rc = err_set(e, KVS_ESTATE,
				             "KV cache: layer %u KV head %u's selection split the span of the "
				             "token at original position %d",
				             r / c->hp->n_head_kv, r % c->hp->n_head_kv,
				             c->toks[sub[split]].orig_pos);
		} else {
			memset(keep, KV_KEEP, ns);
		}
		for (uint32_t j = 0; j < ns; j++) {
			uint32_t i = map[j];
			row[c->toks[sub[j]].slot] = (keep[j] & KV_KEEP) != 0;
			if (keep[j] & KV_KEEP)
				s->keep[i] |= (uint8_t)(KV_KEEP | (keep[j] & (KV_FLAG_SINK | KV_FLAG_KEY)));
		}
	}
	if (rc == KVS_OK)
		heads_cut(c, s, kept_pinned, cap_union > s->m ? cap_union - s->m : 0);
	for (uint32_t r = 0; rc == KVS_OK && before != NULL && r < h; r++)
		for (uint32_t i = 0; i < n; i++) {
			uint32_t sl = c->toks[s->cand[i]].slot;
			if ((s->keep[i] & KV_KEEP) && before[(size_t)r * c->n_ctx + sl])
				c->hkeep[(size_t)r * c->n_ctx + sl] = 1;
		}
	free(before);
	free(target);
	c->heads_over = false;
	free(sub);
	free(map);
	free(sb);
	free(se);
	free(keep);
	free(is_cand);
	return rc;
}

int kv_heads_check(const struct kv_cache *c, struct err *e)
{
	if (!kv_heads_on(c))
		return KVS_OK;
	uint32_t h = heads_n(c), cap = kv_slot_cap(c);
	if (c->n > cap)
		return err_set(e, KVS_ESTATE,
		               "KV cache check: %u tokens cached with per-head keep-sets, over the %u "
		               "slots the policy may hold",
		               c->n, cap);
	uint32_t nh = c->hp->n_head_kv;
	bool adaptive = kv_policy_floor(&c->cfg.policy) >= 0;
	for (uint32_t r = 0; r < h && !adaptive; r++) {
		uint32_t k = heads_kept(c, r);
		if (k > c->cfg.budget && !c->heads_over)
			return err_set(e, KVS_ESTATE,
			               "KV cache check: layer %u KV head %u keeps %u tokens, over the "
			               "budget of %u",
			               r / nh, r % nh, k, c->cfg.budget);
	}
	/* adaptive budgets: a layer's heads together within the layer's share */
	for (uint32_t l = 0; l < c->hp->n_layer && adaptive; l++) {
		uint64_t k = 0;
		for (uint32_t g = 0; g < nh; g++)
			k += heads_kept(c, l * nh + g);
		if (k > (uint64_t)c->cfg.budget * nh && !c->heads_over)
			return err_set(e, KVS_ESTATE,
			               "KV cache check: layer %u's KV heads keep %llu entries, over the "
			               "budget of %u x %u heads",
			               l, (unsigned long long)k, c->cfg.budget, nh);
	}
	for (uint32_t i = 0; i < c->n; i++) {
		uint32_t k = 0;
		for (uint32_t r = 0; r < h; r++)
			k += c->hkeep[(size_t)r * c->n_ctx + c->toks[i].slot];
		if (k == 0 || k != c->toks[i].n_heads)
			return err_set(e, KVS_ESTATE,
			               "KV cache check: token %u (original position %d) is kept by %u "
			               "heads, its count says %u: expected at least one, and the count",
			               i, c->toks[i].orig_pos, k, c->toks[i].n_heads);
	}
	return KVS_OK;
}

/* ------------------------------------------------------------- attention */

void kv_accumulate(struct kv_cache *c, const struct engine_out *o)
{
	const struct hparams *hp = c->hp;
	uint32_t nv = o->n_visible, grp = hp->n_head / hp->n_head_kv;
	for (uint32_t l = 0; l < hp->n_layer; l++)
		for (uint32_t g = 0; g < hp->n_head_kv; g++) {
			float *dst = c->acc + l * hp->n_head_kv + g;
			if (o->attn_kv != NULL) {
				const float *a = o->attn_kv + ((size_t)l * hp->n_head_kv + g) * nv;
				for (uint32_t j = 0; j < nv; j++)
					dst[(size_t)j * c->acc_stride] += a[j];
				continue;
			}
			const float *a = o->attn + ((size_t)l * hp->n_head + (size_t)g * grp) * nv;
			for (uint32_t j = 0; j < nv; j++) {
				float s = 0;
				for (uint32_t hh = 0; hh < grp; hh++)
					s += a[(size_t)hh * nv + j];
				dst[(size_t)j * c->acc_stride] += s;
			}
		}
	kv_acc_scores(c, nv);
}

void kv_acc_scores(struct kv_cache *c, uint32_t n)
{
	for (uint32_t j = 0; j < n; j++) {
		const float *r = c->acc + (size_t)j * c->acc_stride;
		double s = 0;
		for (uint32_t k = 0; k < c->acc_stride; k++)
			s += r[k];
		c->toks[j].score = (float)s;
	}
}
