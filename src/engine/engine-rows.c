/*
 * engine-rows.c: the engine's side of the per-head store
 * (engine_config.n_rows > 0): the slot-to-cell map it owns and lends to the
 * kv layer (engine_kv_row_map), which backend may hold it, and the check
 * every forward runs against it before the backend reads through it
 * (cpu-rows.c). A cell is one head's K (and V) vector in a layer's
 * (n_rows, n_head_kv, head_dim) arrays, row x n_head_kv + column: a
 * layer's KV heads share its n_rows x n_head_kv cells, so heads may hold
 * different numbers of entries (alloc=adaptive). Invariant the check
 * keeps: a backend never reads a kept key from a cell another visible
 * entry of the same layer occupies, and never writes a token into a cell
 * it has not been given.
 */
#include "engine/engine-int.h"
#include "engine/engine.h"

#include <stdlib.h>
#include <string.h>

uint32_t *engine_rows_alloc(const struct hparams *hp, uint32_t n_ctx, uint32_t n_rows,
                            uint32_t **mark)
{
	*mark = NULL;
	if (n_rows == 0)
		return NULL;
	size_t n = (size_t)hp->n_layer * hp->n_head_kv * n_ctx;
	uint32_t *map = xmallocarray(n, sizeof *map);
	memset(map, 0xff, n * sizeof *map); /* ENGINE_ROW_NONE */
	*mark = xcalloc((size_t)n_rows * hp->n_head_kv, sizeof **mark);
	return map;
}

int engine_rows_backend(const struct engine_config *c, const struct backend_ops **ops,
                        struct err *e)
{
	if ((*ops)->caps & ENGINE_CAP_HEAD_ROWS)
		return KVS_OK;
	if (c->backend != ENGINE_BACKEND_AUTO)
		return err_set(e, KVS_EUNSUPPORTED,
		               "backend %s has no per-head store (%u rows for %u slots): expected the "
		               "cpu backend",
		               (*ops)->name, c->n_rows, c->n_ctx);
	*ops = &backend_cpu; /* auto: the per-head store is the CPU's */
	return KVS_OK;
}

int engine_rows_check(const uint32_t *map, uint32_t *mark, const struct hparams *hp,
                      const struct engine_config *cfg, const struct engine_batch *b,
                      const uint32_t *vis, struct err *e)
{
	uint32_t n_ctx = cfg->n_ctx, n_rows = cfg->n_rows, nh = hp->n_head_kv;
	uint32_t n_cells = n_rows * nh; /* a layer's cells, its heads' together */
	if (b->sparse != NULL && b->sparse->mode != ENGINE_SPARSE_OFF)
		return err_set(e, KVS_EUNSUPPORTED,
		               "batch: sparse attention over the per-head store (%u rows for %u "
		               "slots) is not built: expected sparse off, or the slot store",
		               n_rows, n_ctx);
	memset(mark, 0, n_cells * sizeof *mark);
	for (uint32_t r = 0; r < hp->n_layer * nh; r++) {
		const uint32_t *mr = map + (size_t)r * n_ctx;
		const uint8_t *keep = b->head_keep ? b->head_keep + (size_t)r * n_ctx : NULL;
		/* mark[cell] = layer + 1: taken in this layer, by whichever head */
		uint32_t lay = r / nh + 1;
		for (uint32_t j = 0; j < b->n_visible; j++) {
			uint32_t s = vis[j], cell = mr[s];
			if (keep != NULL && !keep[s])
				continue;
			if (cell >= n_cells || mark[cell] == lay)
				return err_set(e, KVS_EARG,
				               "batch: layer %u KV head %u keeps visible slot %u in cell %u: "
				               "expected a cell of its own below %u",
				               r / nh, r % nh, s, cell, n_cells);
			mark[cell] = lay;
		}
		/* a batch's token is written in every head: each needs its cell */
		for (uint32_t i = 0; i < b->n_tokens; i++)
			if (mr[b->slot[i]] >= n_cells)
				return err_set(e, KVS_EARG,
				               "batch: token %u writes slot %u, which layer %u KV head %u "
				               "holds in no cell (expected a cell below %u)",
				               i, b->slot[i], r / nh, r % nh, n_cells);
	}
	return KVS_OK;
}
