/*
 * engine.h: the engine layer's one public header.
 *
 * An engine runs one loaded model (struct model, weights still in the GGUF
 * map) on one backend (the CPU here, CUDA in gpu/) and owns its KV cache.
 *
 * The KV cache is a fixed array of n_ctx slots. Each slot holds, per layer,
 * one key and one value vector per KV head, and the position the slot's
 * token sits at (or -1 when the slot is empty). Keys are stored BEFORE RoPE:
 * the backend rotates every visible key to its slot's position when it
 * attends. So re-positioning a token (compaction, retention) is just an
 * update of the slot's position, moving a token is a plain slot copy, and a
 * moved key equals the original pre-RoPE key rotated directly to its new
 * position, exactly.
 *
 * One call, engine_forward, runs a batch of tokens: token i goes to
 * position pos[i] (strictly increasing within a batch), writes its K/V into
 * slot slot[i], and its query attends to every slot in the batch's visible
 * set whose position is <= pos[i] (causal by position; the batch's own slots
 * count once written, so a prefill batch lists its own slots as visible;
 * empty slots in the set are ignored). The engine checks the batch, records
 * the slots' positions and calls the backend; results land in engine-owned
 * buffers that stay valid until the next forward or free. Results do not
 * depend on the thread count or on how a batch is cut internally.
 *
 * Retention lives above this header, in the kv layer (src/kv/: per-token
 * metadata, policies, eviction), which drives the engine through the
 * visible set and the slot operations; the engine includes nothing of it.
 * (A backend sorts the visible set by position and attends to the prefix at
 * or before each query; Λ-shaped masks and distance caps fit there as
 * ranges of that order.)
 *
 * Numerics of the CPU backend: Q4_0/Q4_1/Q8_0 products quantise activations
 * to int8 per 32-block exactly as llama.cpp's CPU backend does; other types
 * and the reference path compute in f32 from dequantised rows. RMSNorm sums
 * squares in double; RoPE angles are built as llama.cpp builds them.
 */
#ifndef KVS_ENGINE_H
#define KVS_ENGINE_H

#include "base/base.h"
#include "model/model.h"

#include <stdio.h>

/* ---- configuration ---- */

enum engine_backend {
	ENGINE_BACKEND_AUTO = 0, /* CUDA when a usable GPU and the backend exist, else CPU */
	ENGINE_BACKEND_CPU,
	ENGINE_BACKEND_CUDA, /* an error (one line saying why) when unavailable */
};

enum engine_kv_type { ENGINE_KV_F16 = 0, ENGINE_KV_F32 = 1 };

/* Kernel level for the CPU backend (AUTO: the best this CPU supports). */
enum engine_isa {
	ENGINE_ISA_AUTO = 0,
	ENGINE_ISA_SCALAR,
	ENGINE_ISA_AVX2,
	ENGINE_ISA_AVX512, /* AVX-512 F/BW/VL, VNNI where present */
};

struct engine_config {
	enum engine_backend backend;
	int n_threads;  /* CPU threads; 0 = number of cores (one-token
	                            * batches may run on fewer when that is faster,
	                            * e.g. on a busy machine) */
	uint32_t n_ctx; /* KV cache slots; 0 = min(n_ctx_train, 4096) */
	/* 0: a row per slot (the slot store); N > 0 (ENGINE_CAP_HEAD_ROWS):
	 * the per-head store, min(N, n_ctx) rows per layer, whose n_head_kv
	 * cells each its KV heads share, each head keeping its entries in
	 * cells of its own as the map (engine_kv_row_map) says */
	uint32_t n_rows;
	enum engine_kv_type kv_type;
	enum engine_isa isa; /* CPU kernels; AUTO unless testing */
	bool reference;      /* CPU: plain scalar f32 path (tests, debugging) */
};

/* Defaults: auto backend, all cores, n_ctx 0 (see above), F16 cache. */
void engine_config_default(struct engine_config *cfg);
/* Parse "auto"/"cpu"/"cuda" and "f16"/"f32"; KVS_EARG naming the value. */
int engine_backend_parse(const char *s, enum engine_backend *out, struct err *e);
int engine_kv_type_parse(const char *s, enum engine_kv_type *out, struct err *e);
/* "auto", "avx512", "avx2" or "scalar" (a level above what the CPU has
 * falls back to the best it has; engine_isa_name says which runs). */
int engine_isa_parse(const char *s, enum engine_isa *out, struct err *e);

/* ---- sparse attention (sparse.c) ---- */

/*
 * Sparse decode attention: a one-token batch's query attends, in layers
 * >= dense_layers, per KV head only to the sinks (the first `sinks` visible
 * keys by position), the recent window (the last `recent`) and a chosen
 * part of the keys between; softmax is exact over the chosen keys.
 *
 * quest: the pages of `page` slots whose Quest bound (sum over channels of
 * max(q_d max_d, q_d min_d), the max over the KV head's query heads) ranks
 * among the best, as many pages as (budget - sinks - recent) / page rounded
 * up. Pages are ranges of engine slots [page * i, page * i + page); their
 * per-channel key bounds are kept by the backend and brought up to date
 * before a sparse step (engine_kv_page_bounds shows them).
 *
 * hip: HiP's hierarchical top-k over blocks of `block` keys consecutive by
 * position (sparse.h, sparse_hip_tree): K = (budget - sinks - recent) /
 * block rounded up blocks are found by halving K even ranges round by
 * round, keeping the K best halves: on the CPU a round with halves of
 * several blocks ranks them by the largest Quest bound over their keys
 * (pages of `page` slots) and the last round by the blocks' max logit (the
 * block-sparse prefill, and the CUDA backend, by each half's first block's
 * max logit). The
 * choice is made on one step and reused for the next refresh - 1 steps;
 * keys it did not score (new ones, moved ones) are attended on the reuse
 * steps, so a reuse step never misses a key the last choice could not see.
 * With rerank > 0 (thousandths) the refresh also keeps its last round's
 * best rerank x K blocks as candidates (at least its K chosen), and each
 * step between ranks them anew by the largest page bound over their keys
 * with its own query and attends the K best; the block after each chosen
 * one is a candidate too (a head copying a run of keys moves one a step).
 * Default 1 (the chosen blocks and the next ones). The CUDA backend runs
 * rerank as 0 (its HiP reuses the refresh's choice unchanged).
 * hip also prefills block-sparsely (HiP's prefill, O(T log T)) a batch of
 * more than one token that sees at least `prefill` keys: each block of
 * the tiled prefill's queries (32 tokens with GQA 3) and KV head attends
 * to the sinks, the keys from `recent` before its first query on, and the
 * blocks the same search finds for it (scored by every fourth of its
 * tokens); a query block that sees no more than the budget is dense.
 *
 * squeezed: Squeezed Attention (Hooper et al., ACL 2025) over a fixed
 * context, the pinned document: engine_squeeze_build clusters its keys once
 * (k-means on the L2-normalised rotated keys per (layer, KV head), `clusters`
 * % of the document's keys as fine clusters, coarse ones over those, about
 * `fanout` fine per coarse) and keeps them grouped by cluster. A decode step
 * estimates each cluster's softmax weight from its centroid (exp(q.C_c) /
 * sum over clusters of N_c exp(q.C_c), the max over the KV head's query
 * heads), keeps the coarse clusters at or over the threshold of the
 * `coarse` quantile and, under them, the fine clusters at or over the
 * `quantile` one; the thresholds are calibrated as those quantiles of the
 * past decode steps' estimates (pooled over layers, heads and keys, each
 * key weighted once; the first step calibrates on itself). Every key that
 * is not a document key (the conversation), the sinks and the recent
 * window are attended; a document key whose position moved since it was
 * clustered is attended too; so are, per (layer, KV head), the `outliers`
 * share of the document's keys farthest from their cluster's centroid (a
 * centroid's estimate is a mean: a key unlike the rest of its cluster,
 * such as a fact stated once among repeated text, is what it misjudges
 * most). Without an index (no document) it is dense.
 *
 * Otherwise a prefill (more than one token) is dense.
 */
struct engine;
struct engine_squeeze; /* squeezed's index (sparse.h) */

enum engine_sparse_mode {
	ENGINE_SPARSE_OFF = 0,
	ENGINE_SPARSE_QUEST,
	ENGINE_SPARSE_HIP,
	ENGINE_SPARSE_SQUEEZED,
};

struct engine_sparse {
	enum engine_sparse_mode mode;
	uint32_t budget;       /* keys per (layer, KV head), sinks and recent included */
	uint32_t page;         /* quest: slots per page */
	uint32_t block;        /* hip: keys per final block */
	uint32_t sinks;        /* first keys by position, always attended */
	uint32_t recent;       /* last keys by position, always attended */
	uint32_t dense_layers; /* layers [0, dense_layers) attend densely */
	uint32_t beam;         /* hip: a decode search keeps beam x the final blocks per round
	                        * but the last (1: HiP's own search) */
	uint32_t refresh;      /* hip: decode steps one choice serves */
	uint32_t rerank;       /* hip: thousandths of the final blocks a step between refreshes
	                        * re-ranks (the refresh's best; 0: off) */
	uint32_t prefill;      /* hip: batches seeing this many keys prefill sparsely (0: never) */
	uint32_t tail;         /* hip: a sparse prefill batch whose logits are wanted attends its
	                        * last `tail` queries densely (the prompt's end) */
	/* Decode steps between the dense shadow passes a watcher's statistics
	 * take (the KV cache's, when its capture is on: the dense weights of
	 * the same query beside the choice); 0: every captured step. The
	 * engine itself ignores it. */
	uint32_t shadow;
	uint32_t clusters; /* squeezed: fine clusters, % of the document's keys (>= 1 each) */
	uint32_t fanout;   /* squeezed: fine clusters per coarse one, about */
	uint32_t quantile; /* squeezed: fine threshold's quantile, in thousandths */
	uint32_t coarse;   /* squeezed: coarse threshold's quantile, in thousandths */
	uint32_t outliers; /* squeezed: thousandths of the document's keys per (layer, KV head),
	                    * those farthest from their cluster's centroid, always attended */
	uint32_t iters;    /* squeezed: k-means iterations at most */
	uint32_t seed;     /* squeezed: k-means++'s seed */
};

/* off; budget 1024, page 16, block 8, sinks 4, recent 64, dense 2, refresh 8,
 * prefill 2048, tail 64, shadow 16, beam 2, rerank 1, clusters 10, fanout 8, quantile 0.9,
 * coarse 0.7, outliers 0.02, iters 10, seed 1. */
void engine_sparse_default(struct engine_sparse *s);
/* Parse "off", "quest", "hip" or "MODE:budget=N,page=N,..." (also "quest
 * budget=N ..."); parameters not named keep their defaults; a parameter of
 * another mode is refused. KVS_EARG naming the mode, parameter or value and
 * what was expected. */
int engine_sparse_parse(const char *spec, struct engine_sparse *out, struct err *e);
/* "quest budget=1024 page=16 sinks=4 recent=64 dense=2", "hip budget=1024
 * block=8 sinks=4 recent=64 dense=2 refresh=8 prefill=2048" or "off";
 * returns buf. */
char *engine_sparse_format(const struct engine_sparse *s, char *buf, size_t cap);
/* Help text: each mode, then its parameters with their defaults. */
void engine_sparse_help(FILE *fp);
/* Bytes of page bounds a backend keeps for n_ctx slots at this page size
 * (n_layer x pages x n_head_kv x 2 x head_dim in the cache's type). */
uint64_t engine_sparse_bytes(const struct engine *eng, uint32_t page);
/* Sparse decode steps since the engine was made: those that chose their
 * keys (every quest step, a hip refresh) and those that reused a choice. */
void engine_sparse_steps(const struct engine *eng, uint64_t *chosen, uint64_t *reused);

/* The oracle of a selection of k keys for one KV head: the k keys with the
 * largest summed dense weight over its grp query heads (w: (grp, n) rows
 * of softmax weights; ties: the lower index), marked in sel (n), and each
 * query head's dense mass on them into mass (grp). No choice of k keys
 * shared by the group captures more mean mass. sum: (n) the summed
 * weights; scratch (n). */
void engine_sparse_oracle(const float *w, uint32_t grp, uint32_t n, uint32_t k, float *scratch,
                          float *sum, uint8_t *sel, float *mass);

/* ---- Squeezed Attention's index (squeeze.c) ---- */

/* Progress of a clustering: done of total (layer, KV head) pairs. */
typedef void (*engine_progress_fn)(void *ud, uint32_t done, uint32_t total);

/* What an index holds, for the front ends. */
struct engine_squeeze_info {
	uint32_t n_keys;           /* document keys clustered */
	uint32_t n_fine, n_coarse; /* clusters per (layer, KV head) */
	uint64_t bytes;            /* centroids, permutation and labels */
	double build_ms;           /* the clustering's time (0: loaded) */
	double objective;          /* mean k-means objective per key at the end */
};

/* Cluster the keys of slots (n, in cache order: the document) for
 * squeezed decode with spec's clusters, fanout, iters and seed, replacing
 * any index; fn (or NULL) hears the progress. Deterministic for a seed.
 * KVS_EARG for no slots, an empty or repeated slot. */
int engine_squeeze_build(struct engine *eng, const uint32_t *slots, uint32_t n,
                         const struct engine_sparse *spec, engine_progress_fn fn, void *ud,
                         struct err *e);
/* Drop the index (squeezed decode is then dense). */
void engine_squeeze_clear(struct engine *eng);
/* Whether an index is installed, and what it holds (info may be NULL). */
bool engine_squeeze_info(const struct engine *eng, struct engine_squeeze_info *info);
/* The index as bytes for a store (caller owns *buf); KVS_ESTATE without one. */
int engine_squeeze_save(const struct engine *eng, void **buf, size_t *len, struct err *e);
/* Install an index saved by engine_squeeze_save over the document now at
 * slots (n, cache order): KVS_EFORMAT (one line) when the bytes are damaged,
 * were made for another model shape, another number of keys or other
 * positions than the slots hold. */
int engine_squeeze_load(struct engine *eng, const void *buf, size_t len, const uint32_t *slots,
                        uint32_t n, struct err *e);

/* ---- one forward step ---- */

enum engine_logits {
	ENGINE_LOGITS_LAST = 0, /* one row: the batch's last token */
	ENGINE_LOGITS_ALL,      /* n_tokens rows */
	ENGINE_LOGITS_NONE,     /* fill the cache only */
};

struct engine_batch {
	uint32_t n_tokens;
	const int32_t *tokens; /* (n_tokens) token ids < n_vocab */
	const int32_t *pos;    /* (n_tokens) positions >= 0 */
	const uint32_t *slot;  /* (n_tokens) KV slot each token writes; distinct */
	/* The slots queries may attend to (each still filtered by position <=
	 * the query's). visible == NULL means slots 0 .. n_visible-1. The list
	 * must include the batch's own slots for a token to see itself. */
	uint32_t n_visible;
	const uint32_t *visible; /* (n_visible) distinct slots, or NULL */
	enum engine_logits logits;
	bool want_attn;      /* last token's attention probabilities */
	bool want_surprisal; /* per-token surprisal and entropy */
	/* Attention of every query, summed over each KV head's query heads
	 * (ENGINE_CAP_ATTN_KV; H2O's accumulators, GQA-aware). */
	bool want_attn_kv;
	/* LM-Infinite's distance cap (ENGINE_CAP_DIST_CAP; off when dist_cap
	 * is 0): the first n_global entries of the visible list are global, and
	 * a query at position p scores a global key at position s < p - dist_cap
	 * as if it sat at p - dist_cap (its logit uses the pre-RoPE key rotated
	 * to p - dist_cap). Visibility is unchanged (still position <= p). */
	uint32_t n_global;
	int32_t dist_cap;
	/* LM-Infinite's Λ-mask (ENGINE_CAP_LAMBDA; off when n_local is 0): a
	 * key that is not global and sits n_local or more positions before its
	 * query is "middle" and masked, except that the batch's last query, in
	 * layers >= middle_from_layer, attends to the middle_topk middle keys
	 * each of its query heads scores highest when the keys are placed
	 * middle_insert_at positions before it (and attends them there). */
	int32_t n_local;
	uint32_t middle_topk;
	uint32_t middle_from_layer;
	int32_t middle_insert_at;
	/* Sparse decode (ENGINE_CAP_SPARSE; NULL or mode off: dense). Applies
	 * to one-token batches only. */
	const struct engine_sparse *sparse;
	/* Squeezed's index: set by engine_forward from engine_squeeze_build's
	 * (callers leave it NULL). */
	const struct engine_squeeze *squeeze;
	/* Every token's queries before RoPE (ENGINE_CAP_QUERY): a probe of
	 * what a prompt asks, e.g. to score keys kept elsewhere. */
	bool want_q;
	/* A sparse one-token batch: report the choice (out.sel, and quest's
	 * page bounds out.page_ub) without the dense shadow want_attn costs;
	 * the attention itself stays sparse. */
	bool want_sel;
	/* Per-(layer, KV head) keep-sets (ENGINE_CAP_HEAD_KEEP; NULL: every
	 * head sees every visible slot): (n_layer, n_head_kv, n_ctx) by slot,
	 * 0 where that layer's KV head has dropped the slot. A dropped key gets
	 * exactly zero weight from every query head of its group, in every
	 * attention path (decode, prefill, sparse), as if it were not visible
	 * to that head; a query that sees no key kept gets a zero output. With
	 * nothing dropped the results are bit for bit those without the mask. */
	const uint8_t *head_keep;
	/* want_attn_kv: the max over the batch's queries and each KV head's
	 * query heads instead of the sum (KVzip's score). */
	bool attn_kv_max;
};

struct engine_out {
	/* (n_rows, n_vocab): row i is token i (ALL) or the last token (LAST). */
	const float *logits;
	uint32_t n_rows;
	/* want_attn: (n_layer, n_head, n_visible) softmax weights of the last
	 * token's query over the visible list, in its order; 0 for masked slots. */
	const float *attn;
	uint32_t n_visible;
	/* want_surprisal: (n_tokens) in nats. surprisal[i] = -log p(tokens[i+1])
	 * from row i (NaN for the last token, whose successor is not in the
	 * batch); entropy[i] = predictive entropy of row i. Computed from full
	 * logits rows without keeping them. */
	const float *surprisal;
	const float *entropy;
	/* want_attn_kv: (n_layer, n_head_kv, n_visible): for each KV head, the
	 * attention weights its query heads gave each visible slot, summed over
	 * those heads and over every query of the batch (attn_kv_max: their
	 * max). */
	const float *attn_kv;
	/* One-token batches: keys read by attention and keys dense attention
	 * would have read, summed over layers and KV heads (equal when dense),
	 * and the time spent choosing keys (select_ms) and attending (attn_ms,
	 * selection included), wall-clock on the calling thread. */
	uint64_t keys_read, keys_dense;
	double attn_ms, select_ms;
	/* A sparse step: 1 when it chose its keys (quest: always; hip: a
	 * refresh), 0 when it reused the last choice (hip); -1 dense. */
	int32_t sparse_chose;
	/* A hip prefill: keys its queries attended and dense would have, over
	 * layers, query heads and tokens; with want_attn also the dense mass
	 * its choice captured for each query block's last token (per query
	 * head of the sparse layers: prefill_mass is the mean over
	 * prefill_rows such rows, a dense shadow not in the timing). */
	uint64_t prefill_read, prefill_dense;
	double prefill_mass;
	uint64_t prefill_rows;
	/* want_attn with sparse: (n_layer, n_head_kv, n_visible) 1 where the
	 * key was attended, 0 where not; attn then holds the dense weights of
	 * the same queries (a shadow: what dense attention would have given),
	 * so the mass a selection captured is the sum of attn over sel. */
	const uint8_t *sel;
	/* want_sel or want_attn with quest: (n_layer, n_head_kv, n_pages) each
	 * page's bound (unscaled q.k units: sum over channels of max(q_d max_d,
	 * q_d min_d), the max over the KV head's query heads), -INFINITY for a
	 * page without candidates, NaN in the dense layers; n_pages =
	 * ceil(n_ctx / page), page p the slots [p * page, p * page + page).
	 * With want_attn also tight: (n_layer, n_head_kv) the mean over the
	 * chosen pages whose bound is positive of the true max logit (q.k over
	 * the page's keys and the query heads) / the bound: 1 is a tight bound
	 * (NaN: none such, a dense layer). */
	const float *page_ub;
	uint32_t n_pages;
	const float *tight;
	/* want_q: (n_tokens, n_layer, n_head, head_dim) each token's queries
	 * after their bias and norm, before RoPE. */
	const float *q;
};

/* Optional features a backend may lack (engine_supports). */
enum engine_cap {
	ENGINE_CAP_ATTN_KV = 1u << 0,   /* want_attn_kv */
	ENGINE_CAP_DIST_CAP = 1u << 1,  /* n_global / dist_cap */
	ENGINE_CAP_LAMBDA = 1u << 2,    /* n_local / middle_topk (the Λ-mask) */
	ENGINE_CAP_SPARSE = 1u << 3,    /* sparse (Quest and HiP decode) */
	ENGINE_CAP_SHARE = 1u << 4,     /* engine_create_shared */
	ENGINE_CAP_QUERY = 1u << 5,     /* want_q */
	ENGINE_CAP_HEAD_KEEP = 1u << 6, /* head_keep, attn_kv_max */
	ENGINE_CAP_SQUEEZED = 1u << 7,  /* sparse mode squeezed (besides quest and hip) */
	ENGINE_CAP_HEAD_ROWS = 1u << 8, /* engine_config.n_rows > 0 (a per-head store) */
};

struct engine;

/* Create an engine for m (borrows m until engine_free): choose the backend, bring
 * the weights up, allocate the KV cache (all slots empty). */
int engine_create(struct engine **out, const struct model *m, const struct engine_config *cfg,
                  struct err *e);
void engine_free(struct engine *eng);
/* Create a second engine over base's model that borrows base's weights (and
 * its compute threads) until engine_free of the new one, with a KV cache of
 * its own of n_ctx slots (0: as many as base's): a shadow session costs its
 * cache and scratch, not a second copy of the weights. Both are driven from
 * one thread, one forward at a time. KVS_EUNSUPPORTED (one line) when
 * base's backend cannot share (ENGINE_CAP_SHARE). */
int engine_create_shared(struct engine **out, struct engine *base, uint32_t n_ctx, struct err *e);

/* Run one batch. KVS_EARG (naming the field, the index and the value) for a
 * bad batch; the cache is unchanged then. */
int engine_forward(struct engine *eng, const struct engine_batch *b, struct engine_out *out,
                   struct err *e);

/* Whether the backend offers every feature in caps (enum engine_cap). */
bool engine_supports(const struct engine *eng, unsigned caps);

/* ---- KV cache slots ---- */

uint32_t engine_n_ctx(const struct engine *eng);
/* Position of a slot's token, -1 when empty. */
int32_t engine_kv_pos(const struct engine *eng, uint32_t slot);
/* All slot positions, (n_ctx), a read-only view. */
const int32_t *engine_kv_positions(const struct engine *eng);
/* Re-position a slot's token (pos >= 0) or empty it (pos = -1). Keys are
 * pre-RoPE, so this is exact and costs nothing. */
int engine_kv_set_pos(struct engine *eng, uint32_t slot, int32_t pos, struct err *e);
/* Copy n slots src[i] -> dst[i] (K, V in every layer, and the position), in
 * order i = 0, 1, ...; so compaction towards lower slots may overlap. */
int engine_kv_copy(struct engine *eng, const uint32_t *dst, const uint32_t *src, uint32_t n,
                   struct err *e);
/* Empty every slot. */
void engine_kv_clear(struct engine *eng);
/* Read one cached key (pre-RoPE, or rotated to the slot's position when
 * rotated) or value as floats into out, (head_dim). For tests and views. */
int engine_kv_read(const struct engine *eng, uint32_t layer, uint32_t slot, uint32_t kv_head,
                   bool value, bool rotated, float *out, struct err *e);
/* ---- the per-head store (engine_config.n_rows > 0) ----
 *
 * Each layer holds its K/V in n_rows rows of n_head_kv cells (a cell: one
 * head's head_dim vector, row x n_head_kv + column), which its KV heads
 * share: a head may hold more entries than n_rows where another holds
 * fewer. A map by (layer, KV head, slot) says which cell of the layer holds
 * that head's entry of the slot's token: ENGINE_ROW_NONE where the head
 * keeps no entry (it dropped the token, or the slot is empty). A forward
 * checks that every visible slot a head keeps (engine_batch.head_keep;
 * NULL: every head keeps every slot) has a cell of its own, distinct from
 * every other visible entry's cell in the layer; a key the head dropped is
 * never read for its value (its weight is exactly 0). Writes of a batch's K/V, engine_kv_read, _save and _load
 * go through the map: a save gives zeros for a head without a row, a load
 * skips it. Sparse attention (quest, hip, squeezed) is refused over a row
 * map: its page bounds and lists are by slot. */
#define ENGINE_ROW_NONE UINT32_MAX
/* K/V rows per (layer, KV head): n_ctx for the slot store. */
uint32_t engine_kv_rows(const struct engine *eng);
/* The slot-to-cell map, (n_layer, n_head_kv, n_ctx) by slot, every entry
 * ENGINE_ROW_NONE at creation: the caller (the kv layer) keeps it; lent
 * until engine_free. NULL for the slot store (row = slot). */
uint32_t *engine_kv_row_map(const struct engine *eng);

/* Bytes of KV cache per slot (all layers, K and V). */
uint64_t engine_kv_bytes_per_slot(const struct engine *eng);
/* The error of a context of n_ctx slots whose buffers, need_bytes in all,
 * the system refused: KVS_ENOMEM and one line naming the size (the front
 * ends put their option's name in front: "--ctx N: ", "ctx = N"). Buffers
 * sized from the context are allocated with it instead of xmalloc's fatal
 * exit. */
int engine_nomem(struct err *e, uint32_t n_ctx, double need_bytes);
/* Raw K/V of one slot, buf (n_layer, 2, n_head_kv, head_dim) in the cache's
 * own type (enum engine_kv_type; K then V in each layer, in all
 * engine_kv_bytes_per_slot bytes): what a snapshot saves. Load writes them back into slot and gives it position pos. Both
 * KVS_EUNSUPPORTED on a backend without raw slot access (resume then
 * recomputes the cache). */
int engine_kv_save(const struct engine *eng, uint32_t slot, void *buf, struct err *e);
int engine_kv_load(struct engine *eng, uint32_t slot, int32_t pos, const void *buf, struct err *e);
/*
 * Batched raw copies, for the cold tier. engine_kv_save_batch starts
 * copying the raw rows of n slots (engine_kv_save's bytes, slot after
 * slot) into a host ring the engine owns and may return before they
 * landed: the CPU backend copies before it returns; the CUDA backend
 * gathers the rows on the device on a copy stream of its own and copies
 * them to pinned memory there, and its next write to the cache (a forward,
 * a slot copy, a load) waits for the gather only, never for the host copy.
 * The slots may be emptied and reused at once. Batches come back in the
 * order they were started: engine_kv_collect looks at the oldest and lends
 * its bytes once they landed, engine_kv_release drops it (its ring bytes
 * are reused). A batch needs n * bytes_per_slot contiguous ring bytes:
 * engine_kv_ring_room says whether they are free now (false only while
 * held batches fill the ring: collect and release the oldest, waiting for
 * it, then ask again; a batch larger than the ring grows it when nothing
 * is held). engine_kv_load_batch is the way back: engine_kv_load of each
 * slot, in one upload and one scatter on the CUDA backend.
 */
bool engine_kv_ring_room(const struct engine *eng, uint32_t n);
/* Start saving slots (n, each 0..n_ctx-1); KVS_ESTATE without room,
 * KVS_EUNSUPPORTED without raw slot access, KVS_EARG naming a bad slot. */
int engine_kv_save_batch(struct engine *eng, const uint32_t *slots, uint32_t n, struct err *e);
/* The oldest held batch: *ready once its bytes landed (wait: block until
 * they have), then *rows (n, bytes_per_slot) lent until engine_kv_release
 * and *n its slots. KVS_ESTATE when none is held; a failed copy's error
 * (the batch stays held: release it). */
int engine_kv_collect(struct engine *eng, bool wait, bool *ready, const void **rows, uint32_t *n,
                      struct err *e);
/* Drop the oldest held batch (waiting for its copy when it still runs). */
void engine_kv_release(struct engine *eng);
/* Batches held (started, not released). */
uint32_t engine_kv_held(const struct engine *eng);
/* engine_kv_load of slots[i] at pos[i] from rows (n, bytes_per_slot), i = 0..n-1:
 * KVS_EARG naming a bad or repeated slot or position (nothing loaded then). */
int engine_kv_load_batch(struct engine *eng, const uint32_t *slots, const int32_t *pos, uint32_t n,
                         const void *rows, struct err *e);
/* For tests: make this engine's batched saves behave as a copy behind the
 * decode (a backend without one of its own): each copy reads its rows when
 * it starts and lands after `polls` polls that do not wait, or at one that
 * does; the copy numbered fail_job (0, 1, ... in start order; -1: none)
 * fails with KVS_EIO instead. */
void engine_kv_defer(struct engine *eng, uint32_t polls, int64_t fail_job);
/* The bounds of one sparse page (engine_sparse), brought up to date
 * first: per channel min and max, mn and mx (head_dim), of the rotated keys
 * of layer and kv_head over the held slots of page (slots [page * page_size,
 * + page_size) whose rotated key is current), *n_keys of them (0: mn +inf,
 * mx -inf). KVS_EUNSUPPORTED without ENGINE_CAP_SPARSE, KVS_EARG naming a
 * bad argument. */
int engine_kv_page_bounds(struct engine *eng, uint32_t page_size, uint32_t layer, uint32_t kv_head,
                          uint32_t page, float *mn, float *mx, uint32_t *n_keys, struct err *e);
/* The KV cache's element type. */
enum engine_kv_type engine_kv_type(const struct engine *eng);

/* ---- facts ---- */

const struct model *engine_model(const struct engine *eng);
const char *engine_backend_name(const struct engine *eng); /* "cpu", "cuda" */
int engine_n_threads(const struct engine *eng);
/* Kernel level actually used: "scalar", "avx2", "avx512", "avx512-vnni", "reference". */
const char *engine_isa_name(const struct engine *eng);

/* Surprisal and entropy of one logits row, (n_vocab), in nats;
 * target < 0 gives NaN surprisal; either output may be NULL. Vector
 * exponentials, double sums across chunks. */
void engine_row_stats(const float *logits, uint32_t n_vocab, int32_t target, float *surprisal,
                      float *entropy);

/* =====================================================================
 * For backends only (cpu.c, gpu/cuda_*.cu): the interface each implements.
 * ===================================================================== */

/* What a backend is given: the model, the settled configuration, and the
 * engine's slot positions (updated for the batch before forward runs). */
struct backend_ctx {
	const struct model *m;
	struct engine_config cfg; /* n_threads and n_ctx resolved */
	const int32_t *slot_pos;  /* (n_ctx) */
	/* the per-head store's row map, (n_layer, n_head_kv, n_ctx) by slot,
	 * the engine's (cfg.n_rows > 0), or NULL: row = slot */
	const uint32_t *rows;
	/* engine_create_shared: a state of the same backend whose weights and
	 * compute pool the new state borrows until its free (NULL: its own) */
	void *share;
};

/* Outputs a backend fills: buffers sized by the engine for the batch. */
struct backend_out {
	float *logits;    /* (n_rows, n_vocab) or NULL when NONE */
	float *attn;      /* (n_layer, n_head, n_visible) or NULL */
	float *surprisal; /* (n_tokens) or NULL */
	float *entropy;   /* (n_tokens) or NULL */
	float *attn_kv;   /* (n_layer, n_head_kv, n_visible) or NULL */
	uint8_t *sel;     /* (n_layer, n_head_kv, n_visible) or NULL (want_attn with sparse) */
	float *page_ub;   /* (n_layer, n_head_kv, n_pages) or NULL (quest, sel given) */
	uint32_t n_pages; /* ceil(n_ctx / page) */
	float *tight;     /* (n_layer, n_head_kv) or NULL (quest, want_attn) */
	float *q;         /* (n_tokens, n_layer, n_head, head_dim) or NULL (want_q) */
	uint64_t keys_read, keys_dense; /* one-token batches; filled by the backend */
	double attn_ms, select_ms;
	int32_t sparse_chose; /* as engine_out's; the engine sets -1 before the call */
	uint64_t prefill_read, prefill_dense, prefill_rows; /* as engine_out's */
	double prefill_mass;                                /* the sum, not the mean */
};

struct backend_ops {
	const char *name;
	/* Bring up weights and an empty cache; *state is the backend's. */
	int (*create)(const struct backend_ctx *ctx, void **state, struct err *e);
	/* Run a checked batch (visible is never NULL here). */
	int (*forward)(void *state, const struct engine_batch *b, struct backend_out *out,
	               struct err *e);
	/* Copy K/V of n slots src[i] -> dst[i] in order (positions are the engine's). */
	void (*kv_copy)(void *state, const uint32_t *dst, const uint32_t *src, uint32_t n);
	/* One cached vector, pre-RoPE for keys, as floats into out, (head_dim). */
	void (*kv_read)(void *state, uint32_t layer, uint32_t slot, uint32_t kv_head, bool value,
	                float *out);
	/* "avx512-vnni", "sm_90", ... */
	const char *(*isa_name)(void *state);
	void (*free)(void *state);
	/* enum engine_cap bits this backend implements (the engine refuses a
	 * batch asking for another) */
	unsigned caps;
	/* Raw K/V of one slot, buf (n_layer, 2, n_head_kv, head_dim) as for
	 * engine_kv_save, out of (save) or into (load) buf; NULL when the
	 * backend has no such access. */
	int (*kv_raw)(void *state, uint32_t slot, void *buf, bool load, struct err *e);
	/* engine_kv_page_bounds (arguments checked); NULL without ENGINE_CAP_SPARSE */
	int (*page_bounds)(void *state, uint32_t page_size, uint32_t layer, uint32_t kv_head,
	                   uint32_t page, float *mn, float *mx, uint32_t *n_keys, struct err *e);
	/* Batched raw copies (engine_kv_save_batch); all NULL: the engine
	 * copies slot by slot through kv_raw before it returns. ring_alloc:
	 * the host ring's bytes (pinned), ring_free gives them back (no copy
	 * runs then); kv_gather starts copying the rows of slots (n) into dst
	 * inside the ring and names the copy *job; kv_job says whether it
	 * landed (*done; wait: block until it has) or its error; kv_scatter
	 * loads slots (n) from rows (n, bytes per slot) before the next
	 * forward (the positions are the engine's). */
	void *(*ring_alloc)(void *state, size_t bytes, struct err *e);
	void (*ring_free)(void *state, void *p);
	int (*kv_gather)(void *state, const uint32_t *slots, uint32_t n, void *dst, uint64_t *job,
	                 struct err *e);
	int (*kv_job)(void *state, uint64_t job, bool wait, bool *done, struct err *e);
	int (*kv_scatter)(void *state, const uint32_t *slots, uint32_t n, const void *rows,
	                  struct err *e);
};

extern const struct backend_ops backend_cpu;

/* RoPE helpers shared by backends: the rotation angles of position pos,
 * cos_out and sin_out (n_rot / 2) for the pairs (theta_i = pos * freq_scale
 * * base^(-2i/n_rot), the frequency built by repeated multiplication as
 * llama.cpp does), and the rotation of one head vector x, (head_dim), in
 * place (its first n_rot values). */
void engine_rope_cos_sin(const struct hparams *hp, int32_t pos, float *cos_out, float *sin_out);
void engine_rope_apply(const struct hparams *hp, float *x, const float *cos_v, const float *sin_v);

#endif
