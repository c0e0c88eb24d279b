/*
 * gpu-int.h: the CUDA backend's state, shared by its host files
 * (cuda_backend.cu: weights, buffers, the dense paths, slots;
 * cuda_sparse.cu: the sparse decode's host side; cuda_cold.cu: the cold
 * tier's batched copies). Internal to gpu/.
 *
 * Sparse decode (struct cu_sp): the host keeps what the CPU backend keeps
 * for a sparse step and sends the device only what changed: rot_pos, the
 * position each slot's key was last made current at (the CPU's kr_pos:
 * set for the visible slots every forward, copied with a slot, -1 after a
 * raw load), the page tracker (gpusparse.h) whose folded slots and rebuild
 * list the device's bounds follow, the visible entries sorted by position,
 * Quest's candidate pages and HiP's refresh. Device buffers that depend on
 * the page size are remade when it changes; the decode graphs that read
 * them are dropped then.
 */
#ifndef KVS_GPU_INT_H
#define KVS_GPU_INT_H

extern "C" {
#include "engine/engine.h"
}
#include "gpu/cuda_kern.h"
#include "gpu/gpu.h"
#include "gpu/gpuplan.h"
#include "gpu/gpusparse.h"

#include <cuda_runtime.h>

struct cu_sp {
	/* host */
	int32_t *rot_pos;       /* (n_ctx) the CPU's kr_pos, mirrored */
	struct gsp_pages pages; /* Quest's folded slots and rebuilds */
	struct gsp_hip hip;     /* HiP's refresh and seen positions */
	uint32_t *ord;          /* (n_ctx) this step's visible entries by position */
	uint32_t *sh_ord;       /* (n_ctx) what the device's ord holds */
	uint32_t n_ord_sent;    /* entries of sh_ord that are valid */
	uint8_t *cand;          /* (n_pages_cap) scratch */
	uint32_t *plist;        /* (n_pages_cap) Quest's candidate pages */
	uint32_t *sh_plist;     /* (n_pages_cap) what the device's plist holds */
	uint32_t n_plist_sent;
	uint32_t *cslot;       /* (n_ctx) HiP's candidates' slots */
	int32_t *cpos;         /* (n_ctx) and positions */
	struct gsp_step gs;    /* this step's keys, sinks, window, units */
	int mode;              /* this step: enum engine_sparse_mode (OFF: dense) */
	uint32_t dense_layers; /* this step's */
	bool search;           /* hip: this step searches */
	bool want_sel;         /* report sel (and quest's bounds by page) */
	bool want_ub;
	uint32_t ssplits; /* attention splits of the sparse layers */
	/* pinned host */
	int32_t *h_sst;   /* (CK_SST_INTS) */
	uint32_t *h_up;   /* (5 n_ctx) upload staging */
	int32_t *h_listn; /* (n_layer, n_kv) keys each sparse layer's heads read */
	/* device */
	bool dev;          /* the page-independent buffers exist */
	uint32_t page_dev; /* the page size of the page buffers (0: none) */
	uint32_t n_pages_cap;
	int32_t *sst;       /* (CK_SST_INTS) */
	uint32_t *d_ord;    /* (n_ctx) */
	int32_t *d_sum_pos; /* (n_ctx) */
	int32_t *d_seen;    /* (n_ctx) */
	uint32_t *list;     /* (n_kv, n_ctx) */
	int32_t *list_n;    /* (n_layer, n_kv) */
	uint8_t *sel;       /* (n_layer, n_kv, n_ctx) */
	uint8_t *kept;      /* (n_layer, n_kv, n_ctx) */
	uint32_t *hscr;     /* (n_kv, hscr_words) */
	uint64_t hscr_words;
	uint32_t kcap;
	__half *bounds;    /* (n_layer, n_pages, n_kv, 2, hd) */
	uint32_t *d_reb;   /* (n_pages) */
	uint32_t *d_plist; /* (n_pages) */
	float *ubc;        /* (n_kv, n_pages) */
	uint8_t *csel;     /* (n_kv, n_pages) */
	float *ubp;        /* (n_layer, n_kv, n_pages) */
	uint8_t *psel;     /* (n_kv, n_pages) */
};

/* The cold tier's batched copies (cuda_cold.cu). */
#define CU_COLD_JOBS 64 /* job events kept; an older job has completed */

struct cu_cold {
	bool ok;                        /* the stream and events exist */
	cudaStream_t cst;               /* the copy stream */
	cudaEvent_t main;               /* on the compute stream: where a gather may start */
	cudaEvent_t gathered;           /* on cst: the last gather read the cache */
	cudaEvent_t up;                 /* on cst: the last slot list was uploaded */
	cudaEvent_t loaded;             /* on the compute stream: the last load's upload ran */
	cudaEvent_t done[CU_COLD_JOBS]; /* job j: done[j % CU_COLD_JOBS] */
	uint64_t next_job;
	bool gather_pending; /* the compute stream must wait for `gathered` */
	uint8_t *h_ring;     /* (ring_bytes) the engine's ring, pinned */
	uint8_t *d_ring;     /* (ring_bytes) its device staging, same offsets */
	size_t ring_bytes;
	uint32_t *h_slots, *d_slots;   /* (n_ctx) a gather's slots, pinned and device */
	uint32_t *h_lslots, *d_lslots; /* (n_ctx) a load's slots */
	uint8_t *h_load, *d_load;      /* (load_bytes) a load's rows, pinned and device */
	uint64_t load_bytes;
};

#define CU_MAX_ALLOCS 64

struct cu_layer {
	const float *attn_norm, *ffn_norm; /* (n_embd) */
	const float *bq, *bk, *bv;         /* biases or NULL */
	ck_mat wq, wk, wv, wo, gate, up, down;
	__half *hq, *hk, *hv, *ho, *hgate, *hup, *hdown; /* resident F16 copies or NULL */
};

struct cu {
	const struct model *m;
	struct hparams hp;
	struct engine_config cfg;
	const int32_t *slot_pos; /* (n_ctx), the engine's */
	struct gpuplan plan;
	struct gpu_info gi;
	int n_sm;
	char isa[300];
	cudaStream_t st;
	cudaEvent_t ev0, ev1;
	bool use_graphs;
	bool fuse; /* residual add + next norm in one launch */
	struct gpugraph_cache graphs;
	char failed[200]; /* a kv_copy error for the next forward */

	void *allocs[CU_MAX_ALLOCS];
	int n_allocs;
	uint8_t *warena; /* every weight, norm and bias */
	uint64_t warena_used;
	uint8_t *harena; /* resident F16 copies */
	uint64_t harena_used;

	struct cu_layer *L; /* (n_layer) */
	ck_mat embd, out;
	__half *hout; /* resident F16 LM head or NULL */
	const float *out_norm;

	/* device state */
	__half *kc, *vc;            /* (n_layer, n_ctx, n_kv * hd) */
	float *slot_cs;             /* (n_ctx, n_rot) */
	int32_t *cs_pos;            /* (n_ctx) position slot_cs was made for */
	uint32_t *vis;              /* (n_ctx) visible list */
	int32_t *vpos;              /* (n_ctx) its positions */
	uint32_t *mv_dst, *mv_src;  /* (n_ctx) slot moves */
	__half *kv_tmp;             /* (2, n_ctx, n_kv * hd) */
	int32_t *step;              /* CK_STEP_INTS(ubatch) */
	int32_t *targets;           /* (ubatch) next token per row, -1 none */
	float *x, *xb, *q, *ao, *g; /* (ubatch, n_embd / nq / nq / n_ff) */
	__half *xh, *aoh, *gh;      /* (ubatch, kmax / nq / n_ff) */
	int8_t *aq;                 /* (kmax) one quantised row */
	float *ad, *as;             /* (kmax / 32) */
	int32_t *ai;                /* (kmax / 32) */
	float *part;                /* (part_rows, n_head, hd + 2) */
	float *raw;                 /* (n_layer, n_head, n_ctx) */
	float *ml;                  /* (n_layer, n_head, 2) the raw query's max, sum */
	float *mlq;                 /* (ubatch, n_head, 2) every query's max, sum */
	float *akv;                 /* (n_layer, n_kv, n_ctx) attention per KV head */
	float *logits;              /* (ubatch, n_vocab) */
	float *sur, *ent;           /* (ubatch) */
	__half *wscr;               /* (largest matrix) F16 scratch, when not resident */
	unsigned *counter;          /* last-block counter of the fused kernels, 0 between */
	unsigned *acounters;        /* (n_kv) the fused attention's last-split counters, 0 between */

	/* host state (pinned where the device reads or writes it) */
	int32_t *h_step;    /* (n_chunks, CK_STEP_INTS(ubatch)) pinned */
	int32_t *h_targets; /* (n_ctx) pinned */
	uint32_t *h_vis;    /* (n_ctx) pinned staging of the visible list */
	int32_t *h_vpos;    /* (n_ctx) pinned */
	uint32_t *h_mv;     /* (2, n_ctx) pinned moves */
	float *h_logits;    /* (n_vocab) pinned */
	uint32_t *sh_vis;   /* (n_ctx) what the device's vis holds */
	int32_t *sh_vpos;   /* (n_ctx) what the device's vpos holds */
	int32_t *nv_pos;    /* (n_ctx) positions of this batch's visible list */
	int64_t *origin;    /* (n_ctx) gpuplan_kv_moves scratch, all -1 */

	struct cu_sp sp;     /* sparse decode (cuda_sparse.cu) */
	struct cu_cold cold; /* batched raw copies (cuda_cold.cu) */
};

/* KVS_EIO naming the failed call, or KVS_OK. */
static inline int cu_check(cudaError_t st, const char *what, struct err *e)
{
	if (st == cudaSuccess)
		return KVS_OK;
	return err_set(e, KVS_EIO, "CUDA %s: %s", what, cudaGetErrorString(st));
}

#define CU_TRY(call, what)                     \
	do {                                       \
		int rc_ = cu_check((call), (what), e); \
		if (rc_ != KVS_OK)                     \
			return rc_;                        \
	} while (0)

/* ---- cuda_sparse.cu ---- */

/* Host state of the sparse decode for n_ctx slots (at create). */
void cu_sp_init(struct cu *c);
void cu_sp_free(struct cu *c);
/* Before a forward (the visible list uploaded, c->nv_pos its positions):
 * the slots the batch writes are forgotten, the visible keys are current,
 * and a sparse one-token step is planned and its inputs uploaded. KVS_EUNSUPPORTED
 * (one line) for a mode the device does not run. */
int cu_sp_begin(struct cu *c, const struct engine_batch *b, const struct backend_out *bo,
                struct err *e);
/* The graph key of this step's decode given the dense key. */
uint64_t cu_sp_graph_key(const struct cu *c, uint64_t key);
/* In a decode's enqueue: before the layers (Quest's bounds), and per layer
 * the choice, the lists and the attention arguments aa gets. */
void cu_sp_enqueue_start(struct cu *c);
bool cu_sp_layer(struct cu *c, uint32_t l, ck_attn_args *aa);
/* Enqueue the copies of the reports (before the forward's sync), then fill
 * the rest once it synchronised. */
int cu_sp_outputs(struct cu *c, const struct engine_batch *b, struct backend_out *bo,
                  struct err *e);
void cu_sp_finish(struct cu *c, const struct engine_batch *b, struct backend_out *bo);
/* Slot copies and raw loads: the keys' currency follows. */
void cu_sp_copied(struct cu *c, const uint32_t *dst, const uint32_t *src, uint32_t n);
void cu_sp_loaded(struct cu *c, uint32_t slot);
/* engine_kv_page_bounds. */
int cu_sp_page_bounds(void *state, uint32_t page_size, uint32_t layer, uint32_t kv_head,
                      uint32_t page, float *mn, float *mx, uint32_t *n_keys, struct err *e);

/* ---- cuda_cold.cu ---- */

/* The copy stream, its events and slot lists (at create); cu_cold_free
 * waits for the copies still running. */
int cu_cold_init(struct cu *c, struct err *e);
void cu_cold_free(struct cu *c);
/* Before the compute stream writes the cache: wait (on the device) for
 * the last gather to have read it. */
void cu_cold_fence(struct cu *c);
/* backend_ops' ring_alloc, ring_free, kv_gather, kv_job, kv_scatter. */
void *cu_ring_alloc(void *state, size_t bytes, struct err *e);
void cu_ring_free(void *state, void *p);
int cu_kv_gather(void *state, const uint32_t *slots, uint32_t n, void *dst, uint64_t *job,
                 struct err *e);
int cu_kv_job(void *state, uint64_t job, bool wait, bool *done, struct err *e);
int cu_kv_scatter(void *state, const uint32_t *slots, uint32_t n, const void *rows, struct err *e);

#endif
