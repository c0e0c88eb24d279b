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
 *
 * HiP's search (sparse_hip_tree) is pure too: it sees blocks only through
 * a scoring callback, so a test can give it hand-made scores; struct
 * sparse_hip is the choice a backend keeps between refreshes.
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

/* ------------------------------------------------------------ HiP */

/* Score n blocks, blocks[i] the index of each, into score (n): for HiP,
 * the max over the query heads and the block's keys of q.k. */
typedef void (*sparse_score_fn)(void *ctx, const uint32_t *blocks, uint32_t n, float *score);

/* The search's scratch, for up to cap blocks. */
struct sparse_tree {
	uint32_t cap;
	uint32_t *start, *size; /* (cap) the kept ranges of blocks */
	uint32_t *cs, *cn;      /* (2 * cap) their halves: first block, blocks */
	uint32_t *blk;          /* (2 * cap) the non-empty halves' first blocks */
	float *score, *scr;     /* (2 * cap) each half's score; sparse_top's scratch */
	float *got;             /* (2 * cap) scores of blk, from the callback */
	uint8_t *sel;           /* (2 * cap) the halves kept */
};

void sparse_tree_ensure(struct sparse_tree *t, uint32_t cap);
void sparse_tree_free(struct sparse_tree *t);
/* HiP's hierarchical top-k over n_blocks blocks (n_blocks <= t->cap):
 * split [0, n_blocks) into k_blocks ranges (range i starts at floor(i *
 * n_blocks / k_blocks)); then, while a range holds more than one block,
 * halve every range (the right half starts at start + floor(size / 2)),
 * score each non-empty half by its first block, and keep the k_blocks best
 * halves (ties: the earlier). Marks the k_blocks blocks left in chosen
 * (n_blocks); all of them when n_blocks <= k_blocks. Returns the rounds
 * (callback calls) run; *scored adds the blocks scored. */
uint32_t sparse_hip_tree(struct sparse_tree *t, uint32_t n_blocks, uint32_t k_blocks,
                         sparse_score_fn fn, void *ctx, uint8_t *chosen, uint64_t *scored);

/* The choice a backend keeps between HiP refreshes: per slot the position
 * it had when it was a candidate at the last refresh (a key scored then),
 * per (layer, KV head) whether the search chose it. On a reuse step a
 * candidate whose position differs from seen_pos (new, moved, rewritten)
 * was not scored, and is attended. */
struct sparse_hip {
	uint32_t n_ctx, n_layer, n_head_kv;
	uint8_t *chosen;   /* (n_layer, n_head_kv, n_ctx) 1: chosen at the last refresh */
	int32_t *seen_pos; /* (n_ctx) position scored at, -1: not scored */
	bool valid;        /* a choice was made under `spec` */
	struct engine_sparse spec;
	uint32_t age;     /* decode steps since the last refresh */
	int32_t last_pos; /* the last step's query position */
	bool refresh;     /* this step chooses anew */
};

#endif
