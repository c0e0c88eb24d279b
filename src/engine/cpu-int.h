/*
 * cpu-int.h: what cpu.c (setup, the forward pass) and cpu-attn.c
 * (attention) share: the backend's state, one ubatch's job, and the steps
 * each calls in the other. Only src/engine includes it.
 */
#ifndef KVS_CPU_INT_H
#define KVS_CPU_INT_H

#include "engine/engine.h"
#include "engine/kern.h"
#include "engine/sparse.h"

#include <stdatomic.h>

#define CPU_UBATCH 512     /* tokens per pool_run */
#define CPU_LM_CHUNK 32    /* rows per LM-head chunk when only statistics are kept */
#define CPU_PROBE_EVERY 32 /* decode steps between tries of the other thread count */
#define CPU_PROBE_FIRST 8  /* first decode steps, alternating one thread and all */
#define CPU_FA_TILE 64     /* keys per tile of the tiled prefill attention */
#define CPU_DEC_RUN 256    /* keys per run of the split decode attention */
#define CPU_FA_ROWS \
	96 /* query rows (tokens x heads) per block, at least: the
                              * tile conversion is ~4 % of the block's work at 96 */

struct cpu_layer {
	const float *attn_norm, *ffn_norm; /* (n_embd) */
	const float *bq, *bk, *bv;         /* biases or NULL */
	const float *q_norm, *k_norm;      /* (head_dim) per-head norm weights or NULL */
	const float *attn_post_norm;       /* (n_embd) norm of the attention output, or NULL */
	const float *ffn_post_norm;        /* (n_embd) norm of the FFN output, or NULL */
	uint32_t window;                   /* sliding window in positions; 0: a global layer */
	struct kern_weight wq, wk, wv, wo, gate, up, down;
};

struct cpu {
	const struct model *m;
	struct hparams hp;     /* the model's, with the RoPE of a global layer at this
	                        * context (model_rope_params: LongRoPE's table) */
	struct hparams hp_swa; /* the same with the RoPE of a local layer */
	bool two_ropes;        /* local layers rotate otherwise than global ones */
	struct engine_config cfg;
	const int32_t *slot_pos; /* (n_ctx), the engine's */
	const struct kern_ops *ops;
	bool ref;
	struct pool *pool;
	struct cpu_layer *L;              /* (n_layer) */
	struct kern_weight out;           /* LM head */
	struct kern_weight embd;          /* token embeddings, never packed */
	const struct kern_weight *lookup; /* rows for the embedding lookup: embd, or the
	                               * packed LM head when it is the same tensor */
	void *arena;                      /* all packed weights (mmap'ed) */
	bool shared;                      /* weights and pool borrowed (engine_create_shared) */
	uint64_t arena_bytes;

	/* KV cache */
	size_t kv_es;       /* bytes per element: 2 or 4 */
	uint64_t kv_row;    /* elements per slot per layer: n_head_kv * head_dim */
	uint8_t **kc, **vc; /* (n_layer) -> (n_ctx, n_head_kv, head_dim) */
	uint8_t **kr;       /* (n_layer) -> (n_ctx, n_head_kv, head_dim) rotated keys */
	int32_t *kr_pos;    /* (n_ctx) position kr holds each slot rotated to, or -1 */
	/* the per-head store (cpu-rows.c): kc, vc and kr hold n_rows rows, and
	 * a (layer, KV head)'s entry of slot s sits in cell rows[(l, h, s)] of
	 * the layer (row x n_head_kv + column: the layer's heads share them) */
	const uint32_t *rows; /* (n_layer, n_head_kv, n_ctx) the engine's map, or NULL: row = slot */
	uint32_t n_rows;      /* rows per layer: n_ctx without a map */
	uint32_t *vrow;       /* (n_layer, n_head_kv, vis_cap) each head's cell of each sorted
	                       * visible slot (vslot), or NULL without a map */
	float *rcs;           /* (n_threads, 2, n_rot) angles for re-rotation: global, local */

	/* scratch for one ubatch */
	uint32_t cap;        /* tokens */
	float *x;            /* (cap, n_embd) residual stream */
	float *xb;           /* (cap, n_embd) normed input of a block */
	float *q;            /* (cap, n_head * head_dim) */
	float *k, *v;        /* (cap, n_head_kv * head_dim) */
	float *ao;           /* (cap, n_head * head_dim) attention output */
	float *g, *u;        /* (cap, n_ff) gate and up, then silu(g) * u in g */
	float *tok_cs;       /* (cap, n_rot) the ubatch's own angles */
	float *tok_cs_swa;   /* (cap, n_rot) the same in local layers (two_ropes) */
	struct kern_act act; /* (cap, kmax) quantised activations */
	uint32_t vis_cap;
	float *krot;           /* (n_head_kv, head_dim, vis_cap) rotated keys */
	float *vf;             /* (n_head_kv, vis_cap, head_dim) values */
	int32_t *vpos;         /* (vis_cap) positions of the visible slots, sorted */
	uint32_t *vorder;      /* (vis_cap) index into the batch's visible list, by position */
	uint32_t *vslot;       /* (vis_cap) slot of each, by position */
	uint32_t n_valid;      /* visible slots that hold a token (a prefix of vorder) */
	float *scores;         /* (n_threads, q_rows, vis_cap) */
	float *tmp;            /* (n_threads, kmax) generic-path rows */
	float *txb;            /* (n_threads, kmax) a thread's own normed row (one-token batches) */
	struct kern_act *tact; /* (n_threads) a thread's own quantised row */
	uint64_t kmax;         /* longest product input: max(n_embd, n_ff, n_head*head_dim) */
	float *lm;             /* (CPU_LM_CHUNK, n_vocab) statistics-only logits */
	double step_ms[2];     /* decode step time, moving average: [0] one thread,
	                               * [1] all threads; 0 = not measured yet */
	uint64_t n_steps;      /* decode steps so far */
	/* want_attn_kv: per-thread sums, reduced after the batch */
	float *akv;       /* (n_threads, n_layer, n_head_kv, akv_cap) */
	uint32_t akv_cap; /* visible slots akv holds */
	/* dist_cap: per thread, the angles of the last capped position */
	float *cap_cs;    /* (n_threads, n_rot) */
	int32_t *cap_pos; /* (n_threads) position cap_cs is for, or -1 */
	float *cap_k;     /* (n_threads, head_dim) a global key, rotated */
	uint32_t q_rows;  /* max(KERN_ATT_Q, n_head): query rows per thread below */
	float *qh;        /* (n_threads, q_rows * head_dim) queries rounded to f16 */
	/* tiled prefill attention (cpu_flash): per thread one block of query
	 * rows (fa_rows = tokens x the query heads of one KV head) and one tile
	 * of CPU_FA_TILE keys, laid out as cpu_flash_carve says */
	uint32_t fa_tokens;   /* tokens per query block */
	uint32_t fa_rows;     /* fa_tokens * (n_head / n_head_kv) */
	size_t fa_stride;     /* floats per thread */
	float *fa;            /* (n_threads, fa_stride) */
	atomic_uint *fa_next; /* (n_layer) next work item of the layer */
	/* Λ-mask (n_local): per thread, which scores of a row group are masked,
	 * and the middle keys' scores at the insert distance */
	uint32_t lam_cap;  /* visible slots the buffers below hold */
	uint8_t *lam_mk;   /* (n_threads, KERN_ATT_Q, lam_cap) 1 = masked */
	float *lam_sc;     /* (n_threads, KERN_ATT_Q, lam_cap) middle scores */
	uint32_t *lam_idx; /* (n_threads, lam_cap) sorted indices of middle keys */
	float *ins_cs;     /* (n_threads, n_rot) angles of p - middle_insert_at */
	int32_t *ins_pos;  /* (n_threads) position ins_cs is for, or -1 */
	/* decode with the keys split across threads: per thread and query head
	 * the partial max, sum of exp and unnormalised output */
	float *dpart; /* (pool threads, n_head, head_dim + 2) */
	/* sparse decode (cpu-sparse.c): the page bounds over kr, and one
	 * step's choice per KV head */
	struct sparse_pages sp;
	const struct engine_sparse *sparse; /* this forward's, or NULL: dense */
	uint32_t sp_m;                      /* keys the decode query sees (sorted prefix) */
	uint32_t sp_sinks;                  /* of them, the first sp_sinks and the last */
	uint32_t sp_recent;                 /* sp_recent are always attended */
	uint32_t sp_pages_cap;              /* pages the buffers below hold */
	uint32_t sp_vis_cap;                /* visible slots the buffers below hold */
	uint32_t *sp_cand;                  /* (sp_pages_cap) candidate keys per page */
	uint32_t *sp_plist;                 /* (sp_pages_cap) the pages with candidates, ascending */
	uint32_t sp_np;                     /* how many */
	float *sp_ub;                       /* (n_head_kv, sp_pages_cap) this layer's page bounds */
	uint8_t *sp_psel;                   /* (n_head_kv, sp_pages_cap) chosen pages */
	float *sp_scr;                      /* (n_threads, sp_pages_cap) selection scratch */
	float *sp_qs;                       /* (n_threads, n_head, 2, head_dim) split queries */
	uint32_t *sp_list;                  /* (n_head_kv, sp_vis_cap) chosen slots, by position */
	uint8_t *sp_mask;                   /* (n_head_kv, sp_vis_cap) 1 = chosen, by sorted index */
	uint32_t *sp_kpage;                 /* (sp_vis_cap) page of each sorted key */
	uint32_t *sp_n;                     /* (n_head_kv) chosen keys */
	uint64_t sp_read;                   /* keys read this forward, all layers and KV heads */
	double sp_t0;                       /* thread 0: when this layer's attention began */
	/* content groups (cpu-sparse-group.c): this step's region, the sorted
	 * candidates [grp_r0, grp_r1) at one position (grp_r1 == grp_r0: none),
	 * its groupings, and per-thread scratch for grouping and ranking */
	struct sparse_groups grp;
	uint32_t grp_r0, grp_r1;
	uint32_t grp_x_cap;  /* region keys grp_x, grp_xs hold per thread */
	float *grp_x;        /* (n_threads, grp_x_cap, head_dim) a head's region keys */
	float *grp_xs;       /* (n_threads, grp_x_cap) the split's values */
	uint32_t *grp_stack; /* (n_threads, 128) the split's ranges */
	uint32_t grp_u_cap;  /* units (pages + groups) the arrays below hold per thread */
	float *grp_ub;       /* (n_threads, grp_u_cap) bounds: pages, then groups */
	float *grp_scr;      /* (n_threads, grp_u_cap) sparse_top's scratch */
	uint8_t *grp_sel;    /* (n_threads, grp_u_cap) the units chosen */
	uint32_t *grp_ord;   /* (n_threads, grp_ord_cap) quest: the shortlist's slots; hip: the
	                       * candidates outside the region */
	uint32_t *grp_unit;  /* (n_threads, grp_ord_cap) quest: the shortlist's sorted indices */
	uint32_t grp_ord_cap;
	float *grp_lg;      /* (n_threads, grp_ord_cap) quest: the shortlist's exact logits */
	float *grp_lscr;    /* (n_threads, grp_ord_cap) their sparse_top scratch */
	uint8_t *grp_keep;  /* (n_threads, grp_ord_cap) the keys kept of them */
	uint32_t *grp_iota; /* (grp_u_cap) 0, 1, 2, ...: every group's row */
	/* hip (cpu-sparse.c): the choice kept between refreshes, and per
	 * thread the search's scratch */
	struct sparse_hip hip;
	struct sparse_tree *hip_tree; /* (n_threads) */
	uint8_t *hip_blk;             /* (n_threads, sp_vis_cap) chosen blocks */
	uint8_t *hip_cblk;            /* (n_threads, sp_vis_cap) rerank: candidate blocks */
	uint32_t *hip_pidx;           /* (n_threads, sp_pages_cap) rerank: page's list index + 1 */
	uint32_t *hip_keys;           /* (n_threads, sp_vis_cap) slots being scored */
	uint32_t *hip_kn;             /* (n_threads, sp_vis_cap + 1) keys per scored block */
	float *hip_bub;               /* (n_threads, sp_vis_cap) per block its largest page bound */
	uint32_t *hip_list;           /* (n_threads, sp_vis_cap) a prefill block's keys, by slot */
	float *hip_q;                 /* (n_threads, fa_rows, head_dim) a prefill block's scorers */
	double *hip_pf;               /* (n_threads, 4) prefill: keys read, dense, mass, rows */
	/* squeezed (cpu-squeeze.c): this step's index, which document key
	 * each slot and each sorted key is, the calibration, per-thread scratch */
	const struct engine_squeeze *sq;      /* NULL: dense */
	const struct engine_squeeze *sq_made; /* the index sq_doc was made for */
	uint64_t sq_made_id;                  /* and its id */
	uint32_t *sq_doc;                     /* (n_ctx) document key of each slot, or UINT32_MAX */
	uint32_t *sq_kd;                      /* (sq_kd_cap) key of each sorted key, if choosable */
	uint32_t sq_kd_cap;
	uint8_t *sq_ok;       /* (sq_keys_cap) 1: visible, current, choosable */
	uint32_t sq_keys_cap; /* keys sq_ok holds */
	uint32_t *sq_pslot;   /* (n_layer, n_head_kv, n_keys) slots by cluster, each cluster's
	                       * run its inliers then its outliers */
	uint32_t *sq_pdoc;    /* (n_layer, n_head_kv, n_keys) the document key of each */
	uint32_t *sq_fe;      /* (n_layer, n_head_kv, n_fine) where each run's outliers start */
	uint32_t *sq_olist;   /* (n_layer, n_head_kv, n_keys) each head's outliers' slots */
	uint32_t *sq_nout;    /* (n_layer, n_head_kv) how many */
	uint8_t *sq_isout;    /* (n_layer, n_head_kv, n_keys) 1: key d is an outlier */
	uint32_t *sq_ipos;    /* (n_layer, n_head_kv, n_keys) where key d sits: its index in
	                       * sq_pslot (an inlier) or in sq_olist (an outlier) */
	uint32_t *sq_exc;     /* (sq_keys_cap) this step's document keys no choice may drop */
	uint32_t sq_n_exc;    /* how many (the fast list path takes up to SQ_EXC_MAX) */
	uint32_t *sq_rm;      /* (n_threads, SQ_EXC_MAX) list positions to take out */
	uint32_t *sq_off;     /* (n_threads, sq_p_cap) each kept fine cluster's list offset */
	uint32_t sq_out_pm;   /* the outliers share they were made for, thousandths */
	uint32_t *sq_other;   /* (sq_kd_cap) the sorted keys no choice drops, by slot */
	uint32_t sq_n_other;
	bool sq_all_ok;    /* every document key choosable: a kept run is copied whole */
	bool sq_fast;      /* or at most SQ_EXC_MAX not: copied whole, those taken out */
	uint32_t *sq_iota; /* (sq_iota_n) 0, 1, 2, ... */
	uint32_t sq_iota_n;
	struct squeeze_hist sq_hist[2]; /* past steps: coarse, fine */
	struct squeeze_hist *sq_th;     /* (n_threads, 2) this step's, per thread */
	float sq_tau[2];                /* this step's thresholds: coarse, fine */
	bool sq_first;                  /* no past step: each head calibrates on itself */
	float *sq_p;                    /* (n_threads, 2, sq_p_cap) estimates: coarse, fine */
	uint32_t *sq_w;                 /* (n_threads, 2, sq_p_cap) weights; then sort scratch */
	uint32_t *sq_fl;                /* (n_threads, sq_p_cap) fine clusters scored */
	uint8_t *sq_keep;               /* (n_threads, sq_p_cap) fine clusters kept */
	uint32_t sq_p_cap;
	uint64_t sq_steps; /* squeezed decode steps under sq_made */
};

/* What one pool_run works on. */
struct cpu_job {
	struct cpu *c;
	const struct engine_batch *b;
	struct backend_out *bo;
	uint32_t t0, n; /* this ubatch: batch tokens [t0, t0 + n) */
	bool last;      /* the batch's last ubatch */
	bool whole;     /* every token through cpu_attend's whole score
	                               * rows: Λ-masks, per-key attention sums, or
	                               * the reference path */
	int rc;
};

/* The cell, one head_dim vector of layer l's (n_rows, n_head_kv,
 * head_dim) arrays, that holds KV head h's entry of slot s: s x n_head_kv +
 * h in the slot store; the map's cell in the per-head store, or cell 0
 * where the head keeps none (read only with weight exactly 0: a dropped
 * key). */
static inline uint32_t cpu_cell(const struct cpu *c, uint32_t l, uint32_t h, uint32_t s)
{
	if (c->rows == NULL)
		return s * c->hp.n_head_kv + h;
	uint32_t r = c->rows[((size_t)l * c->hp.n_head_kv + h) * c->cfg.n_ctx + s];
	return r < c->n_rows * c->hp.n_head_kv ? r : 0;
}

/* Byte offset of that entry in kc[l], vc[l] or kr[l]. */
static inline uint64_t cpu_cell_off(const struct cpu *c, uint32_t l, uint32_t h, uint32_t s)
{
	return (uint64_t)cpu_cell(c, l, h, s) * c->hp.head_dim * c->kv_es;
}

/* The list of layer l, KV head h's entries of the sorted visible slots,
 * (vis_cap), for the row kernels, which read entry k at base +
 * list[k] x cpu_vstride elements: vslot itself in the slot store (base at
 * the head's column, stride a row), the cells in the per-head store (base
 * at the layer's start, stride a cell). */
static inline const uint32_t *cpu_vrows(const struct cpu *c, uint32_t l, uint32_t h)
{
	return c->rows ? c->vrow + ((size_t)l * c->hp.n_head_kv + h) * c->vis_cap : c->vslot;
}

/* Elements between consecutive list entries of cpu_vrows. */
static inline int64_t cpu_vstride(const struct cpu *c)
{
	return c->rows ? (int64_t)c->hp.head_dim : (int64_t)c->kv_row;
}

/* Byte offset of KV head h's base for the row kernels. */
static inline uint64_t cpu_vbase(const struct cpu *c, uint32_t h)
{
	return c->rows ? 0 : (uint64_t)h * c->hp.head_dim * c->kv_es;
}

/* cpu-rows.c: fill vrow from vslot (after cpu_sort_visible) */
void cpu_rows_build(struct cpu *c, uint32_t nv);
/* cpu-rows.c: a slot's K/V of every layer and head through the row map */
int cpu_rows_raw(struct cpu *c, uint32_t slot, uint8_t *buf, bool load);
/* cpu-rows.c: copy each head's entry of slot src into its row of slot dst
 * (every layer; a head without a row at either end is left alone) */
void cpu_rows_copy(struct cpu *c, uint32_t dst, uint32_t src);

/* The keep row (by slot) of layer l, KV head h under the batch's
 * per-head keep-sets, or NULL: that head keeps every slot. */
static inline const uint8_t *cpu_head_keep(const struct cpu_job *jb, uint32_t l, uint32_t h)
{
	const uint8_t *k = jb->b->head_keep;
	return k ? k + ((size_t)l * jb->c->hp.n_head_kv + h) * jb->c->cfg.n_ctx : NULL;
}

/* One thread's buffers of the tiled prefill attention (cpu_flash). */
struct cpu_fa {
	float *q;      /* (fa_rows, head_dim) the block's queries */
	float *o;      /* (fa_rows, head_dim) unnormalised outputs */
	float *pv;     /* (fa_rows, head_dim) one tile's P V */
	float *s;      /* (fa_rows, CPU_FA_TILE) one tile's scores, then weights */
	float *kt;     /* (head_dim, CPU_FA_TILE) the tile's keys, transposed */
	float *v;      /* (CPU_FA_TILE, head_dim) the tile's values */
	float *mx, *l; /* (fa_rows) running max of the scores, sum of the weights */
	float *alpha;  /* (fa_rows) this tile's rescale of the earlier sums */
};

/* The hyper-parameters layer l's RoPE uses (c->hp or c->hp_swa). */
static inline const struct hparams *cpu_rope_hp(const struct cpu *c, uint32_t l)
{
	return c->two_ropes && c->L[l].window > 0 ? &c->hp_swa : &c->hp;
}

/* ---- in cpu.c */

/* Carve thread ith's cpu_fa out of c->fa (with f NULL: only count); the
 * floats a thread takes, each buffer 64-byte aligned. */
size_t cpu_flash_carve(const struct cpu *c, int ith, struct cpu_fa *f);
/* This thread's share [lo, hi) of n items. */
void cpu_share(uint32_t n, int ith, int nth, uint32_t *lo, uint32_t *hi);

/* ---- in cpu-attn.c */

/* Keys a query at position p sees: the length of the sorted visible
 * prefix (c->vpos) at positions <= p. */
uint32_t cpu_prefix(const struct cpu *c, int32_t p);

/* Attention items [i0, i1) of the ubatch; an item is a token and up to
 * KERN_ATT_Q query heads sharing one KV head. */
void cpu_attend_items(struct cpu_job *jb, uint32_t l, uint32_t i0, uint32_t i1, int ith);
/*
 * Decode attention (one token, every thread) with the visible keys split
 * in as many parts as the pool has threads, whatever number of them runs
 * this step (the decode tries one thread now and then: CPU_PROBE_EVERY),
 * so that a step's result never depends on it and a seeded run repeats
 * bit for bit. Thread ith takes parts ith, ith + nth, ...: shares of the
 * sorted prefix,
 * reading each key and value once for all the query heads of its KV head,
 * and leaves per query head its max, sum of weights and unnormalised output
 * in c->dpart. After a barrier each thread merges the threads' parts itself
 * (cpu_split_merge) into its own output row, so the merge costs no second
 * barrier. The share goes in runs of CPU_DEC_RUN keys, each run through
 * every KV head before the next: a slot's keys (and values) of all the KV
 * heads are adjacent in the cache, so a run reads them as one stream, where
 * a pass per KV head would read a third of each stretch and leave the
 * prefetcher fetching the rest for nothing (2.7 against 7.4 GB/s measured).
 */
void cpu_attend_split(struct cpu_job *jb, uint32_t l, int ith, int nth);
/* One work item of a tiled attention: ubatch tokens [i0, i0 + nt) with the
 * query heads of KV head kvh, layer l, into c->ao (cpu_flash: dense;
 * cpu_hip_flash: HiP's block-sparse prefill). */
typedef void (*cpu_flash_fn)(struct cpu_job *jb, uint32_t l, uint32_t kvh, uint32_t i0, uint32_t nt,
                             int ith);
void cpu_flash(struct cpu_job *jb, uint32_t l, uint32_t kvh, uint32_t i0, uint32_t nt, int ith);
/* The tiled attention of the ubatch's first n tokens, layer l: work items
 * (query block, KV head) through fn, handed out through an atomic counter,
 * so a thread that lost its core to another process does not hold the
 * others up; a short batch takes smaller blocks, so that there are items
 * for every thread (4 each at least, while a block keeps a token). */
void cpu_flash_items(struct cpu_job *jb, uint32_t l, uint32_t n, int ith, int nth, cpu_flash_fn fn);
/* Gather the visible rotated keys (transposed) and values of layer l, KV
 * heads [h0, h1), in position order, as f32. */
void cpu_gather_kv(struct cpu *c, uint32_t l, uint32_t h0, uint32_t h1, int ith, int nth);
/* Bias, cache the pre-RoPE k and the v, rotate q: ubatch token i. */
void cpu_qkv_finish(struct cpu_job *jb, uint32_t l, uint32_t i);
/* Re-rotate, every layer, the keys of the visible slots whose position
 * moved since their rotated keys were made, from the pre-RoPE keys. */
void cpu_refresh_keys(struct cpu *c, const struct engine_batch *b, int ith, int nth);
/* Order the visible slots by position, empty slots last, so that the keys a
 * query at position p may see are a prefix of the order. */
void cpu_sort_visible(struct cpu *c, const struct engine_batch *b);
/* The first index of the sorted visible set a query at position p sees in
 * layer l: 0 in a global layer, the first key within the window in a local
 * one (keys at positions <= p - window get no weight). */
uint32_t cpu_window_start(const struct cpu *c, uint32_t l, int32_t p);
/* ---- in cpu-gemma.c */

/* Gemma's post-norm: x += norm(xb) with weight w, rows [lo, hi). */
void cpu_post_norm(struct cpu *c, const float *w, uint32_t lo, uint32_t hi);
/* Soft-cap rows [0, nr) of logits y in place, this thread's share. */
void cpu_softcap_logits(const struct cpu *c, float *y, uint32_t nr, int ith, int nth);

/* ---- in cpu-sparse.c */

/* Get the page bounds ready for a sparse decode step (every thread, after
 * the keys are refreshed): thread 0 scans, all rebuild the dirty pages. */
void cpu_sparse_sync(struct cpu_job *jb, int ith, int nth);
/* Whether layer l of this forward attends sparsely. */
bool cpu_sparse_layer(const struct cpu_job *jb, uint32_t l);
/* Choose layer l's keys per KV head (every thread; one barrier inside). */
void cpu_sparse_choose(struct cpu_job *jb, uint32_t l, int ith, int nth);
/* cpu_attend_split over the chosen keys of each KV head. */
void cpu_sparse_split(struct cpu_job *jb, uint32_t l, int ith, int nth);
/* Count layer l's keys and its time (thread 0, after its attention). */
void cpu_sparse_account(struct cpu_job *jb, uint32_t l, bool sparse);
/* Size the sparse buffers for this forward (serial, before the run). */
void cpu_sparse_prepare(struct cpu *c, const struct engine_batch *b);
/* backend_ops.page_bounds */
int cpu_sparse_bounds(void *state, uint32_t page_size, uint32_t layer, uint32_t kv_head,
                      uint32_t page, float *mn, float *mx, uint32_t *n_keys, struct err *e);
/* What a HiP search needs to score blocks of one (layer, KV head). */
struct cpu_hip_ctx {
	struct cpu *c;
	uint32_t l, h;
	uint32_t k0, k1; /* the candidates: sorted visible keys [k0, k1) */
	int ith;
	const float *q; /* (nq, head_dim) the queries that score */
	uint32_t nq;
	const float *bub; /* (n_blocks) each block's largest page bound; NULL: first blocks */
	const uint32_t *ord; /* (k1 - k0) the candidates' slots in the search's order (with a
	                      * region, those outside it); NULL: vslot[k0, k1) */
};

/* HiP's scoring callback (sparse_score_fn) over a struct cpu_hip_ctx:
 * a half of several blocks by its largest page bound (bub), else its
 * first block's max q.k over the queries. */
void cpu_hip_score(void *ctx, const uint32_t *start, const uint32_t *size, uint32_t n,
                   float *score);

/* Quest's bound, times scale, for KV head h's query heads over n rows of
 * bounds (2, head_dim each) at base + list[i] x stride elements, into out
 * (n): the max over the heads of a dot with the split query. */
void cpu_bound_rows(struct cpu *c, uint32_t h, int ith, float scale, float reach,
                    const uint8_t *base, int64_t stride, const uint32_t *list, uint32_t n,
                    float *out);

/* ---- in cpu-sparse-group.c */

/* Find this decode step's region (the longest run of candidates at one
 * position, if long enough) into grp_r0, grp_r1 and make it the groups'
 * (every grouping stale when it changed). Needs sp_m, sp_sinks, sp_recent. */
void cpu_group_region(struct cpu *c);
/* Whether this step has a region. */
static inline bool cpu_group_on(const struct cpu *c)
{
	return c->grp_r1 > c->grp_r0;
}
/* Quest with a region, layer l, KV head h (its page bounds in sp_ub):
 * the pages (CPU_GROUP_OUTSIDE x k_units) and the k_units groups with the
 * highest centre logits make a shortlist, and of
 * its keys the k_units x page with the largest exact logits are marked in
 * mask (sorted indices [sp_sinks, sp_m - sp_recent)); the shortlisted
 * pages in sp_psel. */
void cpu_group_quest(struct cpu_job *jb, uint32_t l, uint32_t h, int ith, uint32_t k_units,
                     uint8_t *mask);
/* A HiP refresh with a region, layer l, KV head h (its page bounds,
 * scaled, in sp_ub): HiP's search over the candidates outside the region
 * chooses CPU_GROUP_OUTSIDE x k_blocks blocks, the region's groups with
 * the highest centre logits k_blocks x block keys' worth, and of both the
 * k_blocks x block keys with the largest exact logits are marked in kept
 * (by slot; every other candidate unmarked). */
void cpu_group_hip(struct cpu_job *jb, uint32_t l, uint32_t h, int ith, uint32_t k_blocks,
                   uint8_t *kept);
void cpu_group_free(struct cpu *c);
/* Slot s's key is about to change: its page's bounds and a region's
 * groupings holding it are remade. */
static inline void cpu_sparse_forget(struct cpu *c, uint32_t s)
{
	sparse_pages_forget(&c->sp, s);
	sparse_groups_forget(&c->grp, s);
}

/* ---- in cpu-hip-prefill.c */

/* Whether layer l of this forward prefills block-sparsely (hip). */
bool cpu_sparse_prefill(const struct cpu_job *jb, uint32_t l);
/* HiP's block-sparse prefill: one work item of cpu_flash_items. */
void cpu_hip_flash(struct cpu_job *jb, uint32_t l, uint32_t kvh, uint32_t i0, uint32_t nt, int ith);
/* After the ubatches: a sparse prefill's statistics into out. */
void cpu_sparse_finish(struct cpu *c, const struct engine_batch *b, struct backend_out *out);
/* Free the sparse state. */
void cpu_sparse_free(struct cpu *c);
/* Quest's reports of layer l, KV head h after its choice (thread ith's
 * scratch): the page bounds into bo->page_ub, with the shadow the
 * tightness into bo->tight (cpu-sparse-note.c). */
void cpu_quest_note(struct cpu_job *jb, uint32_t l, uint32_t h, int ith);

/* ---- in cpu-squeeze.c */

/* Squeezed's part of cpu_sparse_prepare (the sorted keys known); false:
 * no index, the step is dense. */
bool cpu_squeeze_prepare(struct cpu *c, const struct engine_batch *b);
/* Choose layer l's keys per KV head (thread share of the KV heads). */
void cpu_squeeze_choose(struct cpu_job *jb, uint32_t l, int ith, int nth);
/* Free squeezed's state. */
void cpu_squeeze_free(struct cpu *c);
/* With want_attn, a choice's mask by sorted key into the batch's sel row. */
void cpu_sparse_report(struct cpu_job *jb, uint32_t l, uint32_t h, const uint8_t *mask);

/* The attention weights of a split decode into the batch's attn rows of
 * layer l, after the barrier that ends cpu_attend_split: each thread the
 * parts it computed, normalised by the merged maximum and sum. */
void cpu_split_weights(struct cpu_job *jb, uint32_t l, int ith, int nth);

/* Merge the parts of cpu_attend_split into out (n_head, head_dim), in
 * part order. */
void cpu_split_merge(const struct cpu *c, float *out);

/* The backend's cache-row entries (cpu-attn.c). */
void cpu_kv_copy(void *state, const uint32_t *dst, const uint32_t *src, uint32_t n);
void cpu_kv_read(void *state, uint32_t layer, uint32_t slot, uint32_t kv_head, bool value,
                 float *out);
int cpu_kv_raw(void *state, uint32_t slot, void *buf, bool load, struct err *e);

#endif
