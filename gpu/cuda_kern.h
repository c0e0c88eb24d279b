/*
 * cuda_kern.h: the CUDA backend's kernels, as host functions that launch
 * them on a stream (C++, nvcc only; internal to gpu/).
 *
 * No function here synchronises or checks errors: the backend enqueues a
 * whole step (or captures it into a graph) and checks once. Every pointer is
 * device memory. Shapes are in the comments; a "row" of a weight is one
 * output feature (cols = K inputs, in the GGUF's block layout).
 *
 * Per-token inputs come through a small "step" array in device memory, so
 * that a captured decode graph replays with new tokens, positions and
 * visible counts without being captured again:
 *   step[0] = number of visible slots, step[1] = number of tokens,
 *   step[2] = n_global, step[3] = dist_cap (engine_batch; 0: no cap),
 *   step[4 + 3i], step[5 + 3i], step[6 + 3i] = token i's id, position, slot.
 */
#ifndef KVS_CUDA_KERN_H
#define KVS_CUDA_KERN_H

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#define CK_STEP_NVIS 0
#define CK_STEP_NTOK 1
#define CK_STEP_NGLOB 2
#define CK_STEP_DCAP 3
#define CK_STEP_TOK(i) (4 + 3 * (i))
#define CK_STEP_POS(i) (5 + 3 * (i))
#define CK_STEP_SLOT(i) (6 + 3 * (i))
#define CK_STEP_INTS(n) (4 + 3 * (n))

/* A weight matrix on the device. */
struct ck_mat {
	const uint8_t *d; /* rows x row_bytes, GGUF block layout */
	uint32_t type;    /* enum dtype (a type gpuplan gives a kernel) */
	uint32_t rows, cols;
	uint32_t row_bytes;
};

/* One activation row of K inputs: f32, and quantised for the q8 kernels. */
struct ck_act {
	const float *xf;     /* (K) */
	const int8_t *q;     /* (K) */
	const float *d, *s;  /* (K/32) block scale (f16 value), f16(d * sum(q)) */
	const int32_t *isum; /* (K/32) sum(q) */
};

/* Where a kernel writes a quantised row (q == NULL: nowhere). */
struct ck_q8out {
	int8_t *q;
	float *d, *s;
	int32_t *isum;
};

/* x (n_tok, cols) = rows step.tok(i) of w, dequantised. */
void ck_embed(cudaStream_t st, const struct ck_mat *w, const int32_t *step, uint32_t n_tok,
              float *x);

/* For each of n_rows rows of x (n floats each): out = x / rms(x) * w into xb
 * (f32) and/or xh (f16); q8 (one row only) quantises the result too. */
void ck_rmsnorm(cudaStream_t st, const float *x, const float *w, uint32_t n_rows, uint32_t n,
                float eps, float *xb, __half *xh, struct ck_q8out q8);

/* y (rows) (+)= W a (+ bias): one activation row. */
void ck_mv(cudaStream_t st, const struct ck_mat *w, const struct ck_act *a, float *y,
           const float *bias, bool acc);

/* y (rows) += W a, then xb = RMSNorm(y) * nw and its q8 row, in one launch
 * (the last block to finish normalises; counter is a device word that is 0
 * between launches). */
void ck_mv_add_norm(cudaStream_t st, const struct ck_mat *w, const struct ck_act *a, float *y,
                    const float *nw, float eps, float *xb, struct ck_q8out q8, unsigned *counter);

/* q = Wq a + bq (n_head*hd f32); K and V rows (+ biases) go to the caches of
 * this layer (n_ctx, n_kv*hd) as F16 at step.slot(0). Biases may be NULL. */
void ck_mv_qkv(cudaStream_t st, const struct ck_mat *wq, const struct ck_mat *wk,
               const struct ck_mat *wv, const float *bq, const float *bk, const float *bv,
               const struct ck_act *a, float *q, __half *kc, __half *vc, const int32_t *step);

/* g = silu(W_gate a) * (W_up a) (n_ff f32) and quantised into q8. */
void ck_mv_swiglu(cudaStream_t st, const struct ck_mat *gate, const struct ck_mat *up,
                  const struct ck_act *a, float *g, struct ck_q8out q8);

/* Bring the per-slot RoPE table (n_ctx, n_rot: cosines then sines) up to
 * date for the visible slots whose position changed. */
void ck_angles(cudaStream_t st, const uint32_t *vis, const int32_t *vpos, const int32_t *step,
               uint32_t n_ctx, float *slot_cs, int32_t *cs_pos, int n_rot, float theta_scale,
               float freq_scale);

struct ck_attn_args {
	const float *q;        /* (n_q, n_head, hd) queries before RoPE */
	const __half *kc, *vc; /* this layer's caches (n_ctx, n_kv, hd); keys before RoPE */
	const float *slot_cs;  /* (n_ctx, n_rot) */
	const uint32_t *vis;   /* (n_vis) visible slots */
	const int32_t *vpos;   /* (n_vis) their positions (-1 empty) */
	const int32_t *step;
	float *part; /* (n_q, n_head, splits, hd + 2): acc[hd], max, sum */
	float *raw;  /* this layer's (n_head, n_ctx) scaled scores of query raw_q, or NULL */
	/* sparse decode: KV head g attends only the visible entries list[g *
	 * list_cap + i], i < list_n[g] (NULL: every visible entry); raw NULL */
	const uint32_t *list;  /* (n_kv, list_cap) */
	const int32_t *list_n; /* (n_kv) */
	uint32_t list_cap;
	int raw_q;
	uint32_t n_ctx;
	int n_head, n_kv, hd, n_rot, neox;
	float scale, theta_scale, freq_scale;
};

/* The merge fused into a decode's attention (one query): the last split
 * block of each KV head to finish (a counter per KV head, as
 * ck_mv_add_norm's) merges its group's heads as ck_combine would, with the
 * same arithmetic (ck_merge): ao, q8 (or .q NULL), ml, mlq (or NULL) as
 * ck_combine's for query 0. */
struct ck_attn_fuse {
	float *ao;
	struct ck_q8out q8;
	float *ml, *mlq;
	unsigned *counters; /* (n_kv) zero between launches */
};

/* Attention partials of n_q queries, keys (or each KV head's listed keys)
 * split into `splits` ranges; with f (n_q 1), merged as well: one launch
 * instead of two.
 * Global keys (the first step.n_global visible entries) more than
 * step.dist_cap before a query are scored rotated to query - dist_cap. */
void ck_attention(cudaStream_t st, const struct ck_attn_args *a, uint32_t n_q, uint32_t splits,
                  const struct ck_attn_fuse *f);

/* Merge the splits: ao (n_q, n_head*hd) f32, aoh the same in f16 (or NULL),
 * q8 quantises query 0 (or .q NULL); ml (n_head, 2) gets query raw_q's
 * softmax max and sum (or NULL); mlq (n_q, n_head, 2) every query's (or
 * NULL). */
void ck_combine(cudaStream_t st, const float *part, uint32_t n_q, int n_head, int hd,
                uint32_t splits, float *ao, __half *aoh, struct ck_q8out q8, float *ml, int raw_q,
                float *mlq);

/* akv (n_kv, n_ctx) += for each visible entry j < step.n_vis, the attention
 * probabilities of n_q queries (softmax max and sum in mlq, from
 * ck_combine) summed over the query heads of each KV head; n_tiles tiles of
 * GPUPLAN_ATT_TILE entries cover the visible list. */
void ck_attn_acc(cudaStream_t st, const struct ck_attn_args *a, uint32_t n_q, uint32_t n_tiles,
                 const float *mlq, float *akv);

/* raw (rows, n_ctx) scaled scores -> probabilities with ml (rows, 2), for
 * the first step.n_vis entries of each row. */
void ck_attn_norm(cudaStream_t st, float *raw, const float *ml, uint32_t rows, uint32_t n_ctx,
                  const int32_t *step);

/* ---- sparse decode (cuda_skern.cu; gpusparse.h has the rules) ----
 *
 * The sparse step array (device, CK_SST_INTS ints), uploaded per step:
 * keys the query sees (m, a prefix of the sorted visible entries), the
 * sinks and recent window among them, the units (pages or blocks) the
 * budget buys, the candidate pages (quest) or blocks (hip), the unit size,
 * and the pages whose bounds to recompute. */
#define CK_SST_M 0
#define CK_SST_SINKS 1
#define CK_SST_RECENT 2
#define CK_SST_K 3
#define CK_SST_NUNITS 4
#define CK_SST_UNIT 5
#define CK_SST_NREB 6
#define CK_SST_PAGE 7   /* slots per page of the bounds */
#define CK_SST_NPAGES 8 /* candidate pages in plist (quest: = n_units) */
#define CK_SST_INTS 10

struct ck_sp_bounds_args {
	const __half *kc;       /* (n_layer, n_ctx, n_kv, hd) keys before RoPE */
	__half *bounds;         /* (n_layer, n_pages, n_kv, 2, hd) min then max */
	const int32_t *sum_pos; /* (n_ctx) position a slot is folded at, -1 not */
	const uint32_t *reb;    /* (sst.n_rebuild) pages to recompute */
	const int32_t *sst;
	uint32_t n_ctx, n_pages;
	int n_kv, hd, n_rot, neox;
	float theta_scale, freq_scale;
};

struct ck_sp_args {
	const float *q;        /* (n_head, hd) the decode query before RoPE */
	const __half *kc;      /* this layer's keys (n_ctx, n_kv, hd) before RoPE */
	const uint32_t *vis;   /* (n_vis) visible slots */
	const int32_t *vpos;   /* (n_vis) their positions */
	const int32_t *step;   /* the step array (the query's position) */
	const int32_t *sst;    /* the sparse step array */
	const uint32_t *ord;   /* (n_vis) visible entries sorted by position */
	const uint32_t *plist; /* (sst.n_pages) candidate pages, ascending */
	const __half *bounds;  /* this layer's (n_pages, n_kv, 2, hd) */
	float *ubc;            /* (n_kv, n_pages) quest: bound of candidate i; hip: of page p */
	uint8_t *csel;         /* (n_kv, n_pages) quest: candidate i chosen */
	float *ubp;            /* quest: this layer's (n_kv, n_pages) bounds by page, or NULL */
	uint8_t *psel;         /* (n_kv, n_pages) quest: page chosen */
	uint8_t *kept;         /* hip: this layer's (n_kv, n_ctx) chosen, by slot */
	const int32_t *seen;   /* hip: (n_ctx) position each slot was scored at, -1 */
	uint32_t *hscr;        /* hip: (n_kv, hscr_words) the search's scratch */
	uint64_t hscr_words;
	uint32_t kcap;   /* hip: blocks the scratch holds */
	uint32_t *list;  /* (n_kv, n_ctx) the entries each KV head attends */
	int32_t *list_n; /* this layer's (n_kv) */
	uint8_t *sel;    /* this layer's (n_kv, n_ctx) 1: entry attended, or NULL */
	uint32_t n_ctx, n_pages;
	int n_head, n_kv, hd, n_rot, neox;
	float scale, theta_scale, freq_scale;
};

/* Recompute the listed pages' bounds, every layer. */
void ck_sp_bounds(cudaStream_t st, const struct ck_sp_bounds_args *b, uint32_t n_layer);
/* Quest for one layer: bound the candidate pages (at most max_pages), choose, list. */
void ck_sp_quest(cudaStream_t st, const struct ck_sp_args *a, uint32_t max_pages);
/* HiP for one layer: on a refresh step (search) bound the candidate pages
 * (at most max_pages) and search, then list. */
void ck_sp_hip(cudaStream_t st, const struct ck_sp_args *a, bool search, uint32_t max_pages);

/* out (rows, cols) f16 = the dequantised weight. */
void ck_dequant_f16(cudaStream_t st, const struct ck_mat *w, __half *out);

enum ck_epi {
	CK_EPI_STORE = 0, /* y[m, n] = c (+ bias[n]) */
	CK_EPI_ADD,       /* y[m, n] += c */
	CK_EPI_KV,        /* kv[step.slot(m), n] = f16(c (+ bias[n])) */
	CK_EPI_SWIGLU,    /* yh[m, n] = f16(silu(gate[m, n]) * c) */
};

struct ck_gemm_out {
	enum ck_epi epi;
	float *y;
	const float *bias;
	__half *kv;
	const int32_t *step;
	const float *gate;
	__half *yh;
	uint32_t ldy; /* row stride of y, kv, gate and yh in elements */
};

/* c (M, N) = A (M, K; row-major f16) times B (N, K; row-major f16)^T, f32
 * accumulation on tensor cores; K a multiple of 32. */
void ck_gemm(cudaStream_t st, const __half *A, uint32_t M, uint32_t K, const __half *B, uint32_t N,
             const struct ck_gemm_out *o);

/* Per row of logits (n_rows, n_vocab): entropy, and surprisal of targets[row]
 * (NaN when < 0), in nats, double accumulation. */
void ck_row_stats(cudaStream_t st, const float *logits, uint32_t n_rows, uint32_t n_vocab,
                  const int32_t *targets, float *sur, float *ent);

enum ck_move { CK_MOVE_DIRECT = 0, CK_MOVE_GATHER, CK_MOVE_SCATTER };

/* Slot moves src[k] -> dst[k] (k < n) in the caches (n_layer, n_ctx,
 * row_elems) of layers [l0, l1): DIRECT copies, GATHER copies the sources to
 * tmp (2, n, row_elems), SCATTER copies tmp to the destinations. */
void ck_kv_move(cudaStream_t st, enum ck_move mode, __half *kc, __half *vc, uint64_t layer_elems,
                uint32_t row_elems, uint32_t l0, uint32_t l1, const uint32_t *dst,
                const uint32_t *src, uint32_t n, __half *tmp);

#endif
