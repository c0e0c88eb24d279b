/*
 * kv_store.c: the per-head store's cells (store=heads): which cell of its
 * layer holds each (layer, KV head)'s entry of each cached token.
 *
 * With the slot store a token some head keeps costs every head's bytes,
 * so per-head keep-sets that differ (spread 2) cost up to spread x the
 * budget's memory. In the per-head store the engine holds n_rows rows per
 * layer, the budget plus the policy's fixed scratch (a vote's window, a
 * re-read's chunk and prompt), each row n_head_kv cells (a cell: one
 * head's K/V vector), and a map by (layer, KV head, slot) that this file
 * keeps (the engine's, engine_kv_row_map). A layer's KV heads share its
 * n_rows x n_head_kv cells from one free stack: a head takes a cell for
 * each token that arrives (every head keeps it) and gives it back when it
 * drops the token or the token leaves the cache. Sharing is what lets the
 * heads hold different numbers of entries (alloc=adaptive): a layer's
 * heads together keep at most budget x n_head_kv entries (kv_heads.c,
 * kv_alloc.c; with uniform budgets each head at most budget), so the bytes
 * held never pass budget x bytes_per_token and the bytes allocated are
 * n_rows x bytes_per_token, whatever spread lets the union hold.
 *
 * The cells follow hkeep lazily: kv_store_sync, before every forward (the
 * batches all come from kv_batch_after_cache, and kv_cache_recompute), and
 * before raw rows are loaded (kv_cache_load_rows, a recall), frees every
 * cell whose slot is no longer held or whose head dropped it, then gives a
 * cell to every held slot a head keeps and has none. Between an eviction
 * and the next sync the dropped entries keep their cells (so the cold tier
 * can still save them). A cell that changes hands is written whole by its
 * new token before any query reads it.
 *
 * Raw rows (engine_kv_save: snapshots, the cold tier) hold zeros for a
 * head without a cell; kv_store_marks reads those zeros back as "this head
 * dropped the token", so a snapshot restored or a token recalled keeps the
 * heads' own sets instead of giving every head every token (a real key
 * and value are never all zero bits in practice).
 *
 * Invariants (kv_store_check): per layer, the cells in use and the free
 * ones are each cell exactly once; no two held entries share a cell.
 */
#include "kv/kv-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

bool kv_store_on(const struct kv_cache *c)
{
	return engine_kv_row_map(c->eng) != NULL;
}

/* Cells of one layer's pool: n_rows x n_head_kv. */
static uint32_t store_cells(const struct kv_cache *c)
{
	return engine_kv_rows(c->eng) * c->hp->n_head_kv;
}

/* Allocate the free-cell stacks on first use: every cell free, as the
 * engine's map starts with every entry ENGINE_ROW_NONE. */
static void store_init(struct kv_cache *c)
{
	if (c->rfree != NULL)
		return;
	uint32_t nl = c->hp->n_layer, nc = store_cells(c);
	c->rfree = xmallocarray((size_t)nl * nc, sizeof *c->rfree);
	c->n_rfree = xmallocarray(nl, sizeof *c->n_rfree);
	c->sheld = xmallocarray(c->n_ctx, 1);
	for (uint32_t l = 0; l < nl; l++) {
		for (uint32_t i = 0; i < nc; i++)
			c->rfree[(size_t)l * nc + i] = nc - 1 - i; /* cell 0 on top */
		c->n_rfree[l] = nc;
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
	uint32_t *map = engine_kv_row_map(c->eng), nh = c->hp->n_head_kv, nc = store_cells(c);
	memset(c->sheld, 0, c->n_ctx);
	for (uint32_t i = 0; i < c->n; i++)
		c->sheld[c->toks[i].slot] = 1;
	for (uint32_t i = 0; i < m; i++)
		c->sheld[extra[i]] = 1;
	for (uint32_t l = 0; l < c->hp->n_layer; l++) {
		uint32_t *fr = c->rfree + (size_t)l * nc, *nf = &c->n_rfree[l];
		/* first every head of the layer gives back what is no longer its
		 * own, then the cells are handed out */
		for (uint32_t g = 0; g < nh; g++) {
			uint32_t r = l * nh + g, *mr = map + (size_t)r * c->n_ctx;
			const uint8_t *keep = c->hkeep ? c->hkeep + (size_t)r * c->n_ctx : NULL;
			for (uint32_t s = 0; s < c->n_ctx; s++)
				if (mr[s] != ENGINE_ROW_NONE && (!c->sheld[s] || (keep != NULL && !keep[s]))) {
					fr[(*nf)++] = mr[s];
					mr[s] = ENGINE_ROW_NONE;
				}
		}
		for (uint32_t g = 0; g < nh; g++) {
			uint32_t r = l * nh + g, *mr = map + (size_t)r * c->n_ctx;
			const uint8_t *keep = c->hkeep ? c->hkeep + (size_t)r * c->n_ctx : NULL;
			for (uint32_t s = 0; s < c->n_ctx; s++)
				if (c->sheld[s] && mr[s] == ENGINE_ROW_NONE && (keep == NULL || keep[s]) && *nf > 0)
					mr[s] = fr[--(*nf)];
		}
		/* none left: the entry stays without a cell, and the engine
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
	uint32_t nc = store_cells(c);
	uint64_t used = 0;
	for (uint32_t l = 0; l < c->hp->n_layer; l++)
		used += nc - c->n_rfree[l];
	return used;
}

int kv_store_check(const struct kv_cache *c, struct err *e)
{
	if (!kv_store_on(c) || c->rfree == NULL)
		return KVS_OK;
	const uint32_t *map = engine_kv_row_map(c->eng);
	uint32_t nh = c->hp->n_head_kv, nc = store_cells(c);
	uint32_t *seen =
	        xmallocarray(nc, sizeof *seen); /* (n_cells) times each cell is accounted for */
	int rc = KVS_OK;
	for (uint32_t l = 0; l < c->hp->n_layer && rc == KVS_OK; l++) {
		memset(seen, 0, nc * sizeof *seen);
		const uint32_t *fr = c->rfree + (size_t)l * nc;
		uint32_t bad = UINT32_MAX;
		for (uint32_t i = 0; i < c->n_rfree[l]; i++)
			if (fr[i] < nc)
				seen[fr[i]]++;
			else
				bad = fr[i];
		for (uint32_t g = 0; g < nh; g++) {
			const uint32_t *mr = map + ((size_t)l * nh + g) * c->n_ctx;
			for (uint32_t s = 0; s < c->n_ctx; s++)
				if (mr[s] != ENGINE_ROW_NONE && mr[s] < nc)
					seen[mr[s]]++;
				else if (mr[s] != ENGINE_ROW_NONE)
					bad = mr[s];
		}
		for (uint32_t i = 0; i < nc && bad == UINT32_MAX; i++)
			if (seen[i] != 1)
				bad = i;
		if (bad != UINT32_MAX)
			rc = err_set(e, KVS_ESTATE,
			             "KV cache check: layer %u's cell %u is in use or free %u times: "
			             "expected each of its %u cells exactly once",
			             l, bad, bad < nc ? seen[bad] : 0, nc);
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
