/*
 * gpuplan.h: the CUDA backend's host-side decisions, in plain C.
 *
 * Everything the CUDA backend decides without a device lives here, so that
 * it is compiled in every build and unit-tested on machines with no GPU
 * (tests/unit/test-gpu-host.c):
 *
 *   - which kernel family each weight type gets (int8 dot products against
 *     q8-quantised activations, dequantise-in-kernel against f32
 *     activations, or a host-side dequantisation to F32 as a fallback);
 *   - whether a model's shapes fit the kernels, and the memory plan: the
 *     bytes of every device buffer, whether F16 copies of the weights stay
 *     resident for the prefill GEMMs, and whether it all fits;
 *   - how many key-range splits decode attention uses (a power of two, so
 *     that few CUDA graphs cover every context length);
 *   - the cache of captured decode graphs, keyed by what changes the
 *     graph's shape;
 *   - the part of the visible-slot list that changed since the last upload;
 *   - an ordered list of KV slot copies resolved into simultaneous moves;
 *   - the layout of a batch of raw rows the cold tier's copies use;
 *   - the launches of one decode step (gpuplan_launches).
 *
 * The backend itself is gpu/cuda_backend.cu; the kernels gpu/cuda_kern.cu.
 */
#ifndef KVS_GPUPLAN_H
#define KVS_GPUPLAN_H

#include "base/base.h"
#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- limits of the kernels ---- */

#define GPUPLAN_UBATCH 512         /* tokens per prefill step */
#define GPUPLAN_ATT_TILE 128       /* keys per attention tile (= threads per block) */
#define GPUPLAN_ATT_MAXG 16        /* query heads per KV head at most */
#define GPUPLAN_ATT_MAXQ 2048      /* group heads x head_dim at most */
#define GPUPLAN_MAX_SPLITS 128     /* key-range splits of one query at most */
#define GPUPLAN_MIN_SPLIT_KEYS 256 /* keys per split at least */

/* ---- weight types ---- */

enum gpuplan_wkind {
	GPUPLAN_W_Q8ACT = 0, /* int8 dot products with q8 activations, as the CPU's packed types */
	GPUPLAN_W_F32ACT,    /* dequantised in the kernel, dotted with f32 activations */
	GPUPLAN_W_HOSTF32,   /* no kernel: dequantised to F32 on the host when uploaded */
	GPUPLAN_W_NONE,      /* not a weight type */
};

/* The kernel family of a weight type (enum dtype). */
enum gpuplan_wkind gpuplan_weight_kind(uint32_t type);
/* The type a weight of this type has on the device (F32 for HOSTF32). */
uint32_t gpuplan_device_type(uint32_t type);
/* Bytes of a (rows, cols) weight of this type on the device; 0 if unusable. */
uint64_t gpuplan_weight_bytes(uint32_t type, uint64_t rows, uint64_t cols);

/* ---- the model and the memory plan ---- */

/* KVS_OK if the kernels handle this model's shapes; else one line naming the
 * hyper-parameter, its value and what the kernels need. */
int gpuplan_check_model(const struct hparams *hp, struct err *e);

struct gpuplan {
	uint32_t n_ctx;
	uint32_t ubatch;    /* tokens per prefill step */
	uint32_t part_rows; /* (query, split) pairs the attention partials hold */
	uint32_t kmax;      /* longest product input: max(n_embd, n_ff, n_head*head_dim) */
	uint64_t weights;   /* device copies of every matrix, norm and bias */
	uint64_t f16_all;   /* F16 copies of every matrix */
	uint64_t f16_max;   /* F16 copy of the largest matrix */
	bool f16_resident;  /* keep f16_all; otherwise dequantise into a scratch per use */
	uint64_t f16;       /* bytes actually planned for F16 weights */
	uint64_t kv;        /* K and V caches, F16 */
	uint64_t kv_tmp;    /* one layer's K and V of every slot (slot moves) */
	uint64_t rope;      /* per-slot cos/sin table and its positions */
	uint64_t vis;       /* visible list and positions */
	uint64_t act;       /* activations of one prefill step */
	uint64_t attn;      /* attention partials, raw scores, their max and sum,
	                             * per-KV-head sums */
	uint64_t logits;    /* (ubatch, n_vocab) logits */
	uint64_t total;
};

/* Plan the device memory of model m with n_ctx slots, given mem_free bytes
 * free on the device. KVS_EUNSUPPORTED (one line: what is needed, what is
 * free) when it does not fit. */
int gpuplan_make(struct gpuplan *p, const struct model *m, uint32_t n_ctx, uint64_t mem_free,
                 struct err *e);

/* Key-range splits of attention for n_query queries over n_vis keys with
 * n_kv KV heads on n_sm multiprocessors: enough blocks to fill the device,
 * at least GPUPLAN_MIN_SPLIT_KEYS keys per split, n_query * splits <=
 * part_rows; a power of two, >= 1. */
uint32_t gpuplan_attn_splits(uint32_t n_vis, uint32_t n_kv, uint32_t n_query, uint32_t n_sm,
                             uint32_t part_rows);

/* ---- captured decode graphs ---- */

/* What changes a decode step's graph: the attention splits and the outputs
 * (GPUGRAPH_ATTN, GPUGRAPH_ATTN_KV bits). */
#define GPUGRAPH_ATTN 1u
#define GPUGRAPH_ATTN_KV 2u
uint64_t gpugraph_key(uint32_t splits, int logits_mode, unsigned flags);
/* The key of a sparse step's graph: key (gpugraph_key's) with the mode
 * (engine_sparse_mode, 1..3), whether HiP searches, whether the choice is
 * reported, the sparse layers' splits and the dense layers (< 65536). */
uint64_t gpugraph_key_sparse(uint64_t key, unsigned mode, bool search, bool report,
                             uint32_t ssplits, uint32_t dense_layers);

#define GPUGRAPH_SLOTS 8

struct gpugraph_cache {
	struct {
		uint64_t key;
		void *exec;    /* the backend's graph; NULL: free entry */
		uint64_t used; /* clock of the last use */
	} e[GPUGRAPH_SLOTS];
	uint64_t clock;
	uint64_t hits, captures;
};

void gpugraph_init(struct gpugraph_cache *gc);
/* The graph stored under key (counted as a hit), or NULL. */
void *gpugraph_find(struct gpugraph_cache *gc, uint64_t key);
/* Store exec under key (a new capture). Returns the graph it evicted (the
 * least recently used, for the caller to destroy) or NULL. */
void *gpugraph_insert(struct gpugraph_cache *gc, uint64_t key, void *exec);
/* Remove every graph, handing each to destroy(arg, exec). */
void gpugraph_clear(struct gpugraph_cache *gc, void (*destroy)(void *arg, void *exec), void *arg);

/* ---- uploads and slot moves ---- */

/* The smallest range [*lo, *hi) outside which a[0..n) and b[0..n) agree
 * (*lo == *hi when they agree everywhere). */
void gpuplan_diff_range(const uint32_t *a, const uint32_t *b, uint32_t n, uint32_t *lo,
                        uint32_t *hi);

/*
 * Resolve the ordered copies src[i] -> dst[i] (i = 0, 1, ...; slots < n_ctx)
 * into moves out_src[k] -> out_dst[k] that, all reading the contents before
 * the call, give the same result: every dst appears once, no move copies a
 * slot onto itself. origin is scratch of n_ctx entries, all -1 on entry and
 * on return. Returns the number of moves (<= n); *overlap tells whether
 * some move reads a slot another move writes (then the moves need a staging
 * copy).
 */
uint32_t gpuplan_kv_moves(const uint32_t *dst, const uint32_t *src, uint32_t n, int64_t *origin,
                          uint32_t *out_dst, uint32_t *out_src, bool *overlap);

/* ---- launches of one decode step ---- */

/* What sets a decode step's launches (the graph key's fields). */
struct gpuplan_step_shape {
	uint32_t n_layer;
	bool fuse;    /* KVSCOPE_CUDA_FUSE (on by default) */
	bool lm;      /* logits wanted */
	bool attn;    /* want_attn: raw probabilities (a dense shadow in sparse layers) */
	bool attn_kv; /* want_attn_kv */
	int sparse;   /* enum engine_sparse_mode: off, quest or hip (squeezed is refused) */
	bool search;  /* hip: a refresh step (Quest always searches) */
	uint32_t dense_layers;
};

/* Kernel launches and memsets (graph nodes) of one decode step as
 * cuda_backend.cu enqueues it: a RoPE-table refresh, Quest's bounds (a
 * sparse step that searches), the per-KV-head sums' memset (attn_kv), the
 * embedding and the first norm; per layer the q/k/v product, attention
 * (+ its merge when fused; sparse layers add the choice: Quest's bound and
 * pick, HiP's bound, search and pick on a refresh or its pick, and with
 * attn a dense shadow), the per-KV-head sums (attn_kv), the output
 * product (+ norm when fused), gate/up, down (+ the next norm when fused);
 * then the LM head (lm) and the probabilities' normalisation (attn). */
uint32_t gpuplan_launches(const struct gpuplan_step_shape *s);

/* ---- batched raw copies (gpu/cuda_cold.cu) ---- */

#ifdef __CUDACC__
#define GPUPLAN_HD static __host__ __device__ __forceinline__
#else
#define GPUPLAN_HD static inline
#endif

/* Where entry j's layer l K row (v = 0) or V row (v = 1) starts in a batch
 * of raw rows, in units of one row (row: any unit per row, e.g. bytes or
 * 16-byte words): engine_kv_save's layout, (n, n_layer, 2, row), slot
 * after slot. The gather and scatter kernels index with it; the host test
 * checks it against the CPU engine's engine_kv_save_batch. */
GPUPLAN_HD uint64_t gpuplan_raw_off(uint32_t j, uint32_t l, uint32_t v, uint32_t n_layer,
                                    uint32_t row)
{
	return (((uint64_t)j * n_layer + l) * 2 + v) * row;
}

#ifdef __cplusplus
}
#endif

#endif
