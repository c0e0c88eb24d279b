/*
 * cpu-rows.c: the CPU backend's per-head store (engine_config.n_rows >
 * 0): each (layer, KV head) holds its K/V entries in cells of its own.
 *
 * The slot store gives every slot a row of every head, so a token some
 * head dropped still costs all of its heads' bytes. In the per-head store
 * kc, vc and kr hold n_rows rows per layer in the (n_rows, n_head_kv,
 * head_dim) layout, read as n_rows x n_head_kv cells (a cell: one head_dim
 * vector) that the layer's KV heads share, and the engine's map, by
 * (layer, KV head, slot), says which cell holds a head's entry of a slot
 * (ENGINE_ROW_NONE: the head keeps none). Sharing a layer's cells lets its
 * heads hold different numbers of entries (alloc=adaptive, kv_alloc.c)
 * within the rows allocated. The kv layer fills the map (a head takes a
 * cell for each token that arrives and gives it back when it drops the
 * token); the engine checks it at every forward.
 *
 * Attention reads keys and values through per-head cell lists: after the
 * visible slots are sorted by position, vrow holds, per (layer, KV head),
 * the cell of each sorted slot (a slot the head dropped maps to cell 0,
 * read only with weight exactly 0), and every path that took the sorted
 * slot list (the split decode, cpu_attend's rows, the tiled prefill) takes
 * its head's cell list instead, with the layer's start as base and a cell
 * as stride (cpu_vbase, cpu_vstride): the same keys in the same order, so
 * the results are bit for bit those of the slot store with the same kept
 * sets. The rotated keys' position stays per slot (kr_pos): a refresh
 * re-rotates only the cells of the heads that keep the slot, and a cell
 * that changes hands is written whole (K, V and the rotated K) by its new
 * token.
 */
#include "engine/cpu-int.h"

#include <string.h>

void cpu_rows_build(struct cpu *c, uint32_t nv)
{
	const struct hparams *hp = &c->hp;
	uint32_t nh = hp->n_layer * hp->n_head_kv, n_cells = c->n_rows * hp->n_head_kv;
	for (uint32_t r = 0; r < nh; r++) {
		const uint32_t *map = c->rows + (size_t)r * c->cfg.n_ctx;
		uint32_t *out = c->vrow + (size_t)r * c->vis_cap;
		for (uint32_t k = 0; k < nv; k++) {
			uint32_t cell = map[c->vslot[k]];
			out[k] = cell < n_cells ? cell : 0;
		}
	}
}

int cpu_rows_raw(struct cpu *c, uint32_t slot, uint8_t *buf, bool load)
{
	const struct hparams *hp = &c->hp;
	size_t hb = (size_t)hp->head_dim * c->kv_es; /* bytes of one head's vector: a cell */
	size_t row = c->kv_row * c->kv_es;
	uint32_t n_cells = c->n_rows * hp->n_head_kv;
	for (uint32_t l = 0; l < hp->n_layer; l++, buf += 2 * row)
		for (uint32_t h = 0; h < hp->n_head_kv; h++) {
			uint32_t cell = c->rows[((size_t)l * hp->n_head_kv + h) * c->cfg.n_ctx + slot];
			uint8_t *kb = buf + h * hb, *vb = buf + row + h * hb;
			if (cell >= n_cells) {
				/* the head keeps no entry: a save gives zeros, a load skips it */
				if (!load) {
					memset(kb, 0, hb);
					memset(vb, 0, hb);
				}
				continue;
			}
			uint8_t *k = c->kc[l] + (size_t)cell * hb;
			uint8_t *v = c->vc[l] + (size_t)cell * hb;
			if (load) {
				memcpy(k, kb, hb);
				memcpy(v, vb, hb);
			} else {
				memcpy(kb, k, hb);
				memcpy(vb, v, hb);
			}
		}
	return KVS_OK;
}

void cpu_rows_copy(struct cpu *c, uint32_t dst, uint32_t src)
{
	const struct hparams *hp = &c->hp;
	size_t hb = (size_t)hp->head_dim * c->kv_es;
	uint32_t n_cells = c->n_rows * hp->n_head_kv;
	for (uint32_t l = 0; l < hp->n_layer; l++)
		for (uint32_t h = 0; h < hp->n_head_kv; h++) {
			const uint32_t *map = c->rows + ((size_t)l * hp->n_head_kv + h) * c->cfg.n_ctx;
			if (map[src] >= n_cells || map[dst] >= n_cells)
				continue;
			size_t from = map[src] * hb, to = map[dst] * hb;
			memcpy(c->kc[l] + to, c->kc[l] + from, hb);
			memcpy(c->vc[l] + to, c->vc[l] + from, hb);
			memcpy(c->kr[l] + to, c->kr[l] + from, hb);
		}
}
