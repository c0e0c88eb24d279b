/*
 * kv_store.c: the per-head store's rows (store=heads): which row of each
 * (layer, KV head) holds that head's entry of each cached token.
 *
 * With the slot store a token some head keeps costs every head's bytes,
 * so per-head keep-sets that differ (spread 2) cost up to spread x the
 * budget's memory. In the per-head store the engine holds n_rows rows per
 * (layer, KV head), the budget plus the policy's fixed scratch (a vote's
 * window, a re-read's chunk and prompt), and a map by (layer, KV head,
 * slot) that this file keeps (the engine's, engine_kv_row_map): a head
 * takes a row for each token that arrives (every head keeps it) and gives
 * it back when it drops the token or the token leaves the cache. Each head
 * keeps at most budget tokens (kv_heads.c), so the bytes held never pass
 * budget x bytes_per_token and the bytes allocated are n_rows x
 * bytes_per_token, whatever spread lets the union hold.
 *
 * The rows follow hkeep lazily: kv_store_sync, before every forward (the
 * batches all come from kv_batch_after_cache, and kv_cache_recompute), and
 * before raw rows are loaded (kv_cache_load_rows, a recall), frees every
 * row whose slot is no longer held or whose head dropped it, then gives a
 * row to every held slot a head keeps and has none. Between an eviction
 * and the next sync the dropped entries keep their rows (so the cold tier
 * can still save them). A row that changes hands is written whole by its
 * new token before any query reads it.
 *
 * Raw rows (engine_kv_save: snapshots, the cold tier) hold zeros for a
 * head without a row; kv_store_marks reads those zeros back as "this head
 * dropped the token", so a snapshot restored or a token recalled keeps the
 * heads' own sets instead of giving every head every token (a real key
 * and value are never all zero bits in practice).
 *
 * Invariants (kv_store_check): per head, the rows in use and the free ones
 * are each row exactly once; no two held slots share a row.
 */
#include "kv/kv-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Rows of hkeep and of the map: n_layer * n_head_kv. */
static uint32_t store_heads(const struct kv_cache *c)
{
	return c->hp->n_layer * c->hp->n_head_kv;
}

bool kv_store_on(const struct kv_cache *c)
{
	return engine_kv_row_map(c->eng) != NULL;
}

/* Allocate the free-row stacks on first use: every row free, as the
 * engine's map starts with every entry ENGINE_ROW_NONE. */
static void store_init(struct kv_cache *c)
{
	if (c->rfree != NULL)
		return;
	uint32_t nh = store_heads(c), nr = engine_kv_rows(c->eng);
	c->rfree = xmallocarray((size_t)nh * nr, sizeof *c->rfree);
	c->n_rfree = xmallocarray(nh, sizeof *c->n_rfree);
	c->sheld = xmallocarray(c->n_ctx, 1);
	for (uint32_t r = 0; r < nh; r++) {
		for (uint32_t i = 0; i < nr; i++)
			c->rfree[(size_t)r * nr + i] = nr - 1 - i; /* row 0 on top */
		c->n_rfree[r] = nr;
	}
}

void kv_store_free(struct kv_cache *c)
{
	free(c->rfree);
	free(c->n_rfree);
	free(c->sheld);
}

void kv_store_sync(struct kv_cache *c, const uint32_t *extra, uint32_t m)
{
	if (!kv_store_on(c))
		return;
	store_init(c);
	uint32_t *map = engine_kv_row_map(c->eng), nh = store_heads(c), nr = engine_kv_rows(c->eng);
	memset(c->sheld, 0, c->n_ctx);
	for (uint32_t i = 0; i < c->n; i++)
		c->sheld[c->toks[i].slot] = 1;
	for (uint32_t i = 0; i < m; i++)
		c->sheld[extra[i]] = 1;
	for (uint32_t r = 0; r < nh; r++) {
		uint32_t *mr = map + (size_t)r * c->n_ctx, *fr = c->rfree + (size_t)r * nr;
		const uint8_t *keep = c->hkeep ? c->hkeep + (size_t)r * c->n_ctx : NULL;
		/* first give back what is no longer this head's, then hand out */
		for (uint32_t s = 0; s < c->n_ctx; s++)
			if (mr[s] != ENGINE_ROW_NONE && (!c->sheld[s] || (keep != NULL && !keep[s]))) {
				fr[c->n_rfree[r]++] = mr[s];
				mr[s] = ENGINE_ROW_NONE;
			}
		for (uint32_t s = 0; s < c->n_ctx; s++)
			if (c->sheld[s] && mr[s] == ENGINE_ROW_NONE && (keep == NULL || keep[s]) &&
			    c->n_rfree[r] > 0)
				mr[s] = fr[--c->n_rfree[r]];
		/* none left: the entry stays without a row, and the engine
		 * refuses the forward naming it (kv_store_room keeps this away) */
	}
}

uint32_t kv_store_room(const struct kv_cache *c)
{
	if (!kv_store_on(c))
		return c->n_free;
	uint32_t nr = engine_kv_rows(c->eng), load = kv_heads_on(c) ? kv_heads_load(c) : c->n;
	return KVS_MIN(c->n_free, nr > load ? nr - load : 0);
}

void kv_store_marks(struct kv_cache *c, uint32_t slot, const uint8_t *raw)
{
	if (!kv_store_on(c) || c->hkeep == NULL)
		return;
	const struct hparams *hp = c->hp;
	size_t hb = (size_t)c->bytes_per_token / (2u * hp->n_layer * hp->n_head_kv);
	size_t row = hb * hp->n_head_kv; /* one layer's K (or V), every head */
	uint32_t kept = 0;
	for (uint32_t l = 0; l < hp->n_layer; l++)
		for (uint32_t h = 0; h < hp->n_head_kv; h++) {
			const uint8_t *k = raw + 2 * row * l + h * hb, *v = k + row;
			bool any = false;
			for (size_t b = 0; b < hb && !any; b++)
				any = k[b] != 0 || v[b] != 0;
			c->hkeep[((size_t)l * hp->n_head_kv + h) * c->n_ctx + slot] = any;
			kept += any;
		}
	if (kept == 0) /* all zero everywhere: not a mark, keep it for every head */
		kv_heads_take(c, &slot, 1);
}

uint64_t kv_store_entries(const struct kv_cache *c)
{
	if (!kv_store_on(c) || c->rfree == NULL)
		return 0;
	uint32_t nh = store_heads(c), nr = engine_kv_rows(c->eng);
	uint64_t used = 0;
	for (uint32_t r = 0; r < nh; r++)
		used += nr - c->n_rfree[r];
	return used;
}

int kv_store_check(const struct kv_cache *c, struct err *e)
{
	if (!kv_store_on(c) || c->rfree == NULL)
		return KVS_OK;
	const uint32_t *map = engine_kv_row_map(c->eng);
	uint32_t nh = store_heads(c), nr = engine_kv_rows(c->eng);
	uint32_t *seen = xmallocarray(nr, sizeof *seen); /* (n_rows) times each row is accounted for */
	int rc = KVS_OK;
	for (uint32_t r = 0; r < nh && rc == KVS_OK; r++) {
		memset(seen, 0, nr * sizeof *seen);
		const uint32_t *mr = map + (size_t)r * c->n_ctx, *fr = c->rfree + (size_t)r * nr;
		uint32_t bad = UINT32_MAX;
		for (uint32_t i = 0; i < c->n_rfree[r]; i++)
			if (fr[i] < nr)
				seen[fr[i]]++;
			else
				bad = fr[i];
		for (uint32_t s = 0; s < c->n_ctx; s++)
			if (mr[s] != ENGINE_ROW_NONE && mr[s] < nr)
				seen[mr[s]]++;
			else if (mr[s] != ENGINE_ROW_NONE)
				bad = mr[s];
		for (uint32_t i = 0; i < nr && bad == UINT32_MAX; i++)
			if (seen[i] != 1)
				bad = i;
		if (bad != UINT32_MAX)
			rc = err_set(e, KVS_ESTATE,
			             "KV cache check: layer %u KV head %u's row %u is in use or free %u "
			             "times: expected each of its %u rows exactly once",
			             r / c->hp->n_head_kv, r % c->hp->n_head_kv, bad, bad < nr ? seen[bad] : 0,
			             nr);
	}
	free(seen);
	return rc;
}

int kv_store_refuse(struct engine *eng, const struct kv_policy *p, uint32_t budget, struct err *e)
{
	bool want = kv_policy_rows(p, 8) > 0;
	if (budget == 0)
		budget = engine_n_ctx(eng);
	if (want && engine_kv_row_map(eng) == NULL)
		return err_set(e, KVS_EUNSUPPORTED,
		               "policy %s store=heads: the engine holds a row per slot (expected "
		               "store=heads from the start, when the engine is made)",
		               kv_policy_name(p));
	if (engine_kv_row_map(eng) == NULL)
		return KVS_OK;
	float spread = kv_policy_get(p, "spread");
	uint32_t extra = kv_policy_per_head(p) && !isnan(spread) && spread > 1
	        ? (uint32_t)(spread - 1) * budget
	        : 0;
	uint64_t need = (uint64_t)budget + kv_policy_scratch(p, budget) - extra;
	if (need > engine_kv_rows(eng))
		return err_set(e, KVS_EARG,
		               "KV budget %u with policy %s needs %llu rows per (layer, KV head): the "
		               "per-head store holds %u (expected a smaller budget or policy scratch)",
		               budget, kv_policy_name(p), (unsigned long long)need, engine_kv_rows(eng));
	return KVS_OK;
}

void kv_store_recall(struct kv_cache *c, uint32_t n, const uint8_t *raw)
{
	if (!kv_store_on(c))
		return;
	uint32_t *slots = c->bslot; /* (n) the slots the recalled tokens take */
	for (uint32_t j = 0; j < n; j++) {
		slots[j] = c->free_slots[c->n_free - 1 - j];
		kv_heads_take(c, &slots[j], 1);
		kv_store_marks(c, slots[j], raw + (size_t)j * c->bytes_per_token);
	}
	kv_store_sync(c, slots, n);
}
