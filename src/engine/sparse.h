/*
 * sparse.h: the engine's insides for sparse attention, shared by sparse.c
 * and the CPU backend (never by another layer): the page bounds a backend
 * keeps over its rotated keys, and the pure steps of a Quest selection.
 *
 * The bounds (struct sparse_pages) cover pages of `page` engine slots. A
 * slot is folded into its page's bounds when its rotated key is current
 * (kr_pos == slot position >= 0); sum_pos records the position it was
 * folded at (-1: not folded). Between two syncs a page can only go stale
 * in ways the sync sees or the backend reports: a folded slot emptied or
 * moved (its position no longer sum_pos: the sync marks the page dirty), or
 * a slot's key overwritten (a forward's write, a copy, a raw load: the
 * backend calls sparse_pages_forget). After sparse_pages_sync every page's
 * bounds are exactly the min and max over its folded slots, in the cache's
 * element type (f16 keys give f16 bounds, exactly).
 */
#ifndef KVS_ENGINE_SPARSE_H
#define KVS_ENGINE_SPARSE_H

#include "engine/engine.h"
#include "engine/kern.h"

struct sparse_pages {
	uint32_t page;    /* slots per page */
	uint32_t n_pages; /* ceil(n_ctx / page) */
	uint32_t n_ctx, n_layer, n_head_kv, head_dim;
	size_t es;            /* bytes per element: 2 (f16) or 4 (f32) */
	uint8_t *b;           /* (n_layer, n_pages, n_head_kv, 2, head_dim) min then max */
	int32_t *sum_pos;     /* (n_ctx) position a slot was folded at, or -1 */
	uint32_t *page_n;     /* (n_pages) folded slots per page */
	uint8_t *dirty;       /* (n_pages) 1: recompute from the slots */
	uint32_t *dirty_list; /* (n_pages) the pages sparse_pages_scan found dirty */
	uint32_t n_dirty;
};

/* Where the rotated keys are: per layer (n_ctx, n_head_kv, head_dim) in
 * the cache type, with the position each slot is rotated to. */
struct sparse_keys {
	uint8_t *const *kr;      /* (n_layer) */
	uint64_t kv_row;         /* elements per slot: n_head_kv * head_dim */
	const int32_t *kr_pos;   /* (n_ctx) */
	const int32_t *slot_pos; /* (n_ctx) the engine's */
	const struct kern_ops *ops;
	const uint32_t *skip; /* (n_skip) slots being written: not current */
	uint32_t n_skip;
};

/* (Re)allocate sp for this page size when it differs (every page dirty
 * then); sizes from the other arguments. */
void sparse_pages_ensure(struct sparse_pages *sp, uint32_t page, uint32_t n_ctx, uint32_t n_layer,
                         uint32_t n_head_kv, uint32_t head_dim, size_t es);
void sparse_pages_free(struct sparse_pages *sp);
/* Slot s's key is about to change: its page is recomputed at the next sync. */
void sparse_pages_forget(struct sparse_pages *sp, uint32_t s);
/* The serial half of a sync: fold the slots whose rotated key became
 * current since (when their page is clean), and list the dirty pages. */
void sparse_pages_scan(struct sparse_pages *sp, const struct sparse_keys *k);
/* The parallel half: recompute dirty_list[lo, hi) from their slots. */
void sparse_pages_rebuild(struct sparse_pages *sp, const struct sparse_keys *k, uint32_t lo,
                          uint32_t hi);
/* A page's bounds of layer l, KV head h: min then max, (2, head_dim) cache type. */
static inline const uint8_t *sparse_pages_at(const struct sparse_pages *sp, uint32_t l, uint32_t p,
                                             uint32_t h)
{
	return sp->b +
	        ((((size_t)l * sp->n_pages + p) * sp->n_head_kv + h) * 2 * sp->head_dim) * sp->es;
}

/* Quest's bound of nq query heads q, (nq, head_dim), over one page's
 * bounds mnmx (2, head_dim) as floats: the max over the heads of sum_d
 * max(q_d * max_d, q_d * min_d). */
float sparse_bound(const float *q, uint32_t nq, uint32_t head_dim, const float *mnmx);
/* Quest's bound as a dot product: q split into qs (2, head_dim), min(q_d,
 * 0) then max(q_d, 0), so that the bound of one head over mnmx (2,
 * head_dim) is the dot of qs and mnmx (one vector kernel, f16 bounds read
 * in place). */
void sparse_split_q(const float *q, uint32_t head_dim, float *qs);
/* Mark in sel (n) the k entries of ub (n) with the highest values (ties:
 * the lower index); entries -INFINITY are never chosen. scratch (n).
 * Returns how many were marked. */
uint32_t sparse_top(const float *ub, uint32_t n, uint32_t k, float *scratch, uint8_t *sel);

#endif
