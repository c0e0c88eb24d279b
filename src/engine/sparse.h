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
/* The same for an estimate between the box's centre and Quest's bound:
 * the dot of qs and mnmx is q.mid + reach x sum_d |q_d| (max_d - min_d) / 2
 * (mid the box's centre): reach 1 is Quest's bound (sparse_split_q), 0 the
 * centre's logit. */
void sparse_split_q_reach(const float *q, uint32_t head_dim, float reach, float *qs);
/* Mark in sel (n) the k entries of ub (n) with the highest values (ties:
 * the lower index); entries -INFINITY are never chosen. scratch (n).
 * Returns how many were marked. */
uint32_t sparse_top(const float *ub, uint32_t n, uint32_t k, float *scratch, uint8_t *sel);

/* ------------------------------------------------------------ content groups */

/*
 * Content groups over a region (sparse-group.c): a run of candidate keys
 * that share one position (LM-Infinite's cap), grouped per (layer, KV
 * head) by content into groups of `page` keys with Quest's min/max bounds
 * each. Region index i is the i-th key of the run in sorted order (slot
 * slot[i]); group j of (l, h) holds the indices perm[j * page, ...) and
 * index i lies in group gid[i]. The grouping of (l, h) is current when
 * its stale flag is 0; sparse_groups_match makes every (l, h) stale when
 * the region changed (another run, another position, a key rewritten).
 */
struct sparse_groups {
	uint32_t page, n_ctx, n_layer, n_head_kv, head_dim;
	size_t es;           /* bytes per element, as the cache's */
	uint32_t n_keys;     /* keys in the region (0: none) */
	int32_t pos;         /* their one position */
	uint32_t n_groups;   /* ceil(n_keys / page) */
	uint32_t cap;        /* region keys the arrays hold */
	uint32_t groups_cap; /* groups the bounds hold */
	uint32_t *slot;      /* (cap) the region's slots, in sorted order */
	int32_t *gpos;       /* (n_ctx) the position a slot was taken into the region at, -1:
	                     * none (or its key was rewritten since) */
	uint32_t *perm;      /* (n_layer, n_head_kv, cap) region indices, group by group */
	uint32_t *gid;       /* (n_layer, n_head_kv, cap) group of each region index */
	uint8_t *b;          /* (n_layer, n_head_kv, groups_cap, 2, head_dim) min then max */
	uint8_t *stale;      /* (n_layer, n_head_kv) 1: group anew before use */
	uint64_t builds;     /* (layer, KV head) groupings made so far */
};

/* (Re)allocate g for this page size and cache (every grouping dropped). */
void sparse_groups_ensure(struct sparse_groups *g, uint32_t page, uint32_t n_ctx, uint32_t n_layer,
                          uint32_t n_head_kv, uint32_t head_dim, size_t es);
void sparse_groups_free(struct sparse_groups *g);
/* Slot s's key is about to change: a region holding it is regrouped. */
void sparse_groups_forget(struct sparse_groups *g, uint32_t s);
/* Make the region the n keys slots (n), all at pos: true when it already
 * was (its groupings stand); otherwise every (layer, KV head) goes stale. */
bool sparse_groups_match(struct sparse_groups *g, const uint32_t *slots, uint32_t n, int32_t pos);
/* Order n rows of x (n, d) into groups of page: perm (n) the rows, group
 * j being perm[j * page, ...), each side of every split a multiple of page
 * (the last group holds the rest), splits at the median of the channel of
 * widest spread. scratch (n) floats, stack (4 + 4 log2(n)) entries. */
void sparse_group_order(const float *x, uint32_t n, uint32_t d, uint32_t page, uint32_t *perm,
                        float *scratch, uint32_t *stack);
/* Group layer l, KV head h of the region from its rotated keys: perm, gid
 * and the bounds; x (n_keys, head_dim) and scratch (n_keys) floats, stack
 * as sparse_group_order's. */
void sparse_groups_build(struct sparse_groups *g, const struct sparse_keys *k, uint32_t l,
                         uint32_t h, float *x, float *scratch, uint32_t *stack);
/* Group j's bounds of layer l, KV head h: min then max, (2, head_dim). */
static inline const uint8_t *sparse_groups_at(const struct sparse_groups *g, uint32_t l, uint32_t h,
                                              uint32_t j)
{
	return g->b + ((((size_t)l * g->n_head_kv + h) * g->groups_cap + j) * 2 * g->head_dim) * g->es;
}

/* ------------------------------------------------------------ HiP */

/* Score n halves, half i the blocks [start[i], start[i] + size[i]) (size
 * >= 1), into score (n): one representative value per half that the
 * search ranks (the decode's: the largest page bound over the half's keys,
 * or, when every half is one block, the block's true max logit; the
 * prefill's: its first block's max logit). */
typedef void (*sparse_score_fn)(void *ctx, const uint32_t *start, const uint32_t *size, uint32_t n,
                                float *score);

/* The search's scratch, for up to cap blocks. */
struct sparse_tree {
	uint32_t cap;
	uint32_t *start, *size; /* (cap) the kept ranges of blocks */
	uint32_t *cs, *cn;      /* (2 * cap) their halves: first block, blocks */
	uint32_t *blk, *bn;     /* (2 * cap) the non-empty halves' first blocks, sizes */
	float *score, *scr;     /* (2 * cap) each half's score; sparse_top's scratch */
	float *got;             /* (2 * cap) scores of blk, from the callback */
	uint8_t *sel;           /* (2 * cap) the halves kept */
	uint32_t n_last;        /* halves the last search's last round scored, in cs, cn and
	                         * score (-inf: empty); 0: no round ran */
};

void sparse_tree_ensure(struct sparse_tree *t, uint32_t cap);
void sparse_tree_free(struct sparse_tree *t);
/* HiP's hierarchical top-k over n_blocks blocks (n_blocks <= t->cap):
 * split [0, n_blocks) into k_blocks ranges (range i starts at floor(i *
 * n_blocks / k_blocks)); then, while a range holds more than one block,
 * halve every range (the right half starts at start + floor(size / 2)),
 * score the non-empty halves (one callback per round) and keep the
 * k_blocks best halves (ties: the earlier). Marks the k_blocks blocks left in chosen
 * (n_blocks); all of them when n_blocks <= k_blocks. Returns the rounds
 * (callback calls) run; *scored adds the blocks scored. */
uint32_t sparse_hip_tree(struct sparse_tree *t, uint32_t n_blocks, uint32_t k_blocks,
                         sparse_score_fn fn, void *ctx, uint8_t *chosen, uint64_t *scored);
/* The same search with a wider beam: beam ranges (at most n_blocks / 2,
 * at least k_blocks) are split and beam halves kept in every round but the
 * last, whose halves are single blocks and which keeps k_blocks of them. A
 * beam of k_blocks is sparse_hip_tree. */
uint32_t sparse_hip_tree_beam(struct sparse_tree *t, uint32_t n_blocks, uint32_t k_blocks,
                              uint32_t beam, sparse_score_fn fn, void *ctx, uint8_t *chosen,
                              uint64_t *scored);

/* Mark in cand (n_blocks) the blocks a re-rank chooses among until the
 * next refresh: the chosen ones, the n_cand best halves of the last
 * search's last round by their score (sparse_top's order; every half is
 * one block there) and the block after each chosen one (where a head that
 * copies a run of keys, one a step, goes next); when no round ran (every
 * block chosen, or none), the chosen ones only. Overwrites t's last-round
 * selection. Returns the blocks marked (at most n_cand + 2 k_blocks). */
uint32_t sparse_hip_candidates(struct sparse_tree *t, const uint8_t *chosen, uint32_t n_blocks,
                               uint32_t n_cand, uint8_t *cand);
/* HiP's re-rank on a step between refreshes: n candidate blocks, block i
 * lying in the pages pg[first[i], first[i + 1]) (indices into ub, the
 * bounds of the step's query), each scored by the largest bound of its
 * pages; marks in sel (n) the k best (sparse_top: ties the earlier block).
 * score and scratch (n). Returns the blocks marked. */
uint32_t sparse_hip_rerank(const uint32_t *pg, const uint32_t *first, uint32_t n, const float *ub,
                           uint32_t k, float *score, float *scratch, uint8_t *sel);

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
	/* With rerank: per (layer, KV head) the candidate blocks the last
	 * refresh kept, which each step between re-ranks (cand_nb 0: none,
	 * the refresh's choice stands) */
	uint32_t cand_cap;    /* keys a (layer, KV head)'s candidates hold at most */
	uint32_t *cand_slot;  /* (n_layer, n_head_kv, cand_cap) their keys' slots, block by block */
	uint32_t *cand_first; /* (n_layer, n_head_kv, cand_cap + 1) block i: [first[i], first[i+1]) */
	uint32_t *cand_nb;    /* (n_layer, n_head_kv) candidate blocks */
	uint32_t *cand_page;  /* (n_layer, n_head_kv, cand_cap) the distinct pages of their keys */
	uint32_t *cand_np;    /* (n_layer, n_head_kv) how many */
	uint32_t *cand_bp;    /* (n_layer, n_head_kv, cand_cap) per block the indices into
	                       * cand_page of its keys' pages, block by block */
	uint32_t *cand_bpf;   /* (n_layer, n_head_kv, cand_cap + 1) block i: [bpf[i], bpf[i+1]) */
	uint8_t *cand_on;     /* (n_layer, n_head_kv, cand_cap) 1: block i's keys are marked kept */
	/* The reuse list in O(budget): the refresh's visible slots up to its
	 * last candidate, and per (layer, KV head) the chosen keys' slots in
	 * visible order. A step between whose visible slots begin with the
	 * same ones, every candidate unmoved (in_place), attends the sinks,
	 * those chosen keys and every key from ref_k1 on (never scored, or the
	 * window), the keys the full scan would list, without scanning. */
	uint32_t *ref_vslot; /* (n_ctx) vslot[0, ref_k1) at the refresh */
	uint32_t ref_k0, ref_k1;
	uint32_t ref_cap;   /* chosen keys a (layer, KV head) may keep listed */
	uint32_t *ref_list; /* (n_layer, n_head_kv, ref_cap) */
	uint32_t *ref_n;    /* (n_layer, n_head_kv) how many; UINT32_MAX: not listed */
	bool in_place;      /* this step between: the refresh's candidates are where they were */
};

/* ------------------------------------------------------------ squeezed */

/*
 * Squeezed Attention's index (squeeze.c) over the document's n_keys keys,
 * key d the d-th document token in cache order. Per (layer, KV head) the
 * fine clusters are numbered so that those under coarse cluster g are
 * [cstart[g], cstart[g + 1]) and the keys of fine cluster c are perm[
 * fstart[c], fstart[c + 1]): reading the chosen clusters reads runs of
 * perm. Centroids for the lookup are the means of the member keys as
 * rotated (the paper's: q.C_c is then the mean logit of the cluster).
 */
struct engine_squeeze {
	uint32_t n_layer, n_head_kv, head_dim;
	uint32_t n_keys, n_fine, n_coarse;
	uint32_t *slot;   /* (n_keys) engine slot of each key (not saved: the cache's) */
	int32_t *pos;     /* (n_keys) the position its key was rotated to */
	float *fine;      /* (n_layer, n_head_kv, n_fine, head_dim) */
	float *coarse;    /* (n_layer, n_head_kv, n_coarse, head_dim) */
	uint32_t *perm;   /* (n_layer, n_head_kv, n_keys) keys grouped by fine cluster */
	uint32_t *fstart; /* (n_layer, n_head_kv, n_fine + 1) */
	uint32_t *cstart; /* (n_layer, n_head_kv, n_coarse + 1) */
	uint32_t *label;  /* (n_layer, n_head_kv, n_keys) fine cluster of each key (derived) */
	double build_ms, objective;
	uint64_t id; /* set when installed: a backend's state made for it knows it by this */
};

/* Fine clusters for n keys at pct % (at least 1, at most n), and coarse
 * ones over n_fine fine clusters at fanout (at least 1). */
uint32_t squeeze_n_fine(uint32_t n, uint32_t pct);
uint32_t squeeze_n_coarse(uint32_t n_fine, uint32_t fanout);
/*
 * Lloyd's k-means of n points x (n, d) into k <= n clusters, seeded
 * k-means++ start (the first centre drawn uniformly, each next with
 * probability proportional to the squared distance to the nearest centre
 * so far, from a xorshift generator seeded by seed), then at most iters
 * rounds of assignment to the nearest centre (ties: the lower index) and
 * centres moved to their members' means (an empty cluster keeps its
 * centre), stopping early when no label changes. label (n), cent (k, d);
 * obj (iters + 1) or NULL: the objective (sum of squared distances to the
 * assigned centre) after the start and after each round. Returns the
 * rounds run. Never increases the objective (a test checks it).
 */
uint32_t squeeze_kmeans(const float *x, uint32_t n, uint32_t d, uint32_t k, uint32_t iters,
                        uint64_t seed, uint32_t *label, float *cent, double *obj);
/* L2-normalise the n rows of x (n, d) in place (a zero row stays zero). */
void squeeze_normalise(float *x, uint32_t n, uint32_t d);
/* Order one (layer, KV head) of sq: from the fine labels lab (n_keys) and
 * the coarse label of each fine cluster flab (n_fine), renumber the fine
 * clusters grouped by coarse, fill perm, fstart, cstart and label, and the
 * lookup centroids from the keys k (n_keys, head_dim) as rotated. */
void squeeze_order(struct engine_squeeze *sq, uint32_t l, uint32_t h, const float *k,
                   const uint32_t *lab, const uint32_t *flab);
/* A fresh index's arrays for these sizes (every field set but the data). */
struct engine_squeeze *squeeze_alloc(uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim,
                                     uint32_t n_keys, uint32_t n_fine, uint32_t n_coarse);
void squeeze_free(struct engine_squeeze *sq);

/* The threshold calibration: a histogram of log2 estimates, pooled over
 * the steps, layers, heads and keys it is fed (each key counted once per
 * step, an unscored one in the lowest bin). */
#define SQUEEZE_BINS 256
#define SQUEEZE_LOG2_MIN (-48.0)
struct squeeze_hist {
	double w[SQUEEZE_BINS]; /* keys per bin, bin i: log2 in [MIN + i * step, + step) */
	double total;
};
/* Add n estimates p (n) with weights wt (n) (keys in each cluster). */
void squeeze_hist_add(struct squeeze_hist *hst, const float *p, const uint32_t *wt, uint32_t n);
/* The estimate below which quantile (thousandths) of the weight lies: the
 * lower edge of the bin where it is reached (0 for quantile 0: keep all). */
float squeeze_hist_quantile(const struct squeeze_hist *hst, uint32_t quantile);
/* The same over one step's estimates only (p, wt: n; scratch (n)), exact:
 * the smallest p whose lower-or-equal weight reaches the quantile. */
float squeeze_quantile(const float *p, const uint32_t *wt, uint32_t n, uint32_t quantile,
                       uint32_t *scratch);
/* The engine's index (engine.c): install sq (the engine owns it; frees the
 * one before), or read it (NULL: none). */
void engine_squeeze_put(struct engine *eng, struct engine_squeeze *sq);
const struct engine_squeeze *engine_squeeze_get(const struct engine *eng);

#endif
