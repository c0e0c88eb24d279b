/*
 * engine.c: the backend-independent half of the engine.
 *
 * It owns what every backend shares: the configuration, the slot positions of
 * the KV cache, the checks on a batch (so a backend only ever sees a valid
 * one), the output buffers handed back to the caller, and small numeric
 * helpers (RoPE angles, surprisal/entropy of a logits row). The backend owns
 * the weights, the cache contents and the arithmetic; a shared engine
 * (engine_create_shared, a shadow session's) borrows another's weights and
 * owns only its cache.
 *
 * Invariants: slot_pos[s] is the position of the token in slot s or -1; a
 * forward that fails leaves slot_pos as it was; output buffers only grow.
 */
#include "engine/engine.h"
#include "engine/engine-int.h"
#include "engine/kern.h"
#include "engine/sparse.h"

#include "gpu/gpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ENGINE_N_CTX_DEFAULT 4096
#define ENGINE_N_CTX_MAX (1u << 24)
#define ENGINE_POS_MAX (1 << 30) /* keeps pos + n arithmetic far from overflow */

struct engine {
	const struct model *m;
	struct engine_config cfg; /* resolved: n_threads, n_ctx set */
	const struct backend_ops *ops;
	void *state;         /* the backend's */
	int32_t *slot_pos;   /* (n_ctx) position per slot, -1 empty */
	uint32_t *all_slots; /* (n_ctx) 0, 1, ... for visible == NULL */
	uint32_t *mark;      /* (n_ctx) stamp per slot for duplicate checks */
	uint32_t stamp;
	int32_t *saved_pos;         /* (batch cap) positions before the batch */
	float *logits;              /* (rows cap, n_vocab) */
	size_t logits_cap;          /* floats */
	float *attn;                /* (n_layer, n_head, visible cap) */
	size_t attn_cap;            /* floats */
	float *attn_kv;             /* (n_layer, n_head_kv, visible cap) */
	size_t attn_kv_cap;         /* floats */
	uint8_t *sel;               /* (n_layer, n_head_kv, visible cap) */
	size_t sel_cap;             /* bytes */
	float *page_ub;             /* (n_layer, n_head_kv, n_pages) quest's bounds, want_sel */
	size_t page_ub_cap;         /* floats */
	float *tight;               /* (n_layer, n_head_kv) quest's tightness, want_attn */
	size_t tight_cap;           /* floats */
	float *q;                   /* (batch, n_layer, n_head, head_dim) want_q */
	size_t q_cap;               /* floats */
	float *surprisal, *entropy; /* (batch cap) */
	size_t tok_cap;             /* tokens */
	uint64_t sp_steps[2];       /* sparse decode steps: reused, chosen (engine_sparse_steps) */
	struct engine_squeeze *sq;  /* squeezed's index (squeeze.c), or NULL */
	uint64_t sq_serial;         /* indexes installed so far (engine_squeeze.id) */
	uint32_t *rows;             /* (n_layer, n_head_kv, n_ctx) the per-head store's map, or NULL */
	uint32_t *row_mark;         /* (n_rows) engine_rows_check's scratch */
	struct engine_ring *ring;   /* batched raw saves (engine-ring.c), made on first use */
	struct engine_defer *defer; /* engine_kv_defer's copies in flight (tests), or NULL */
};

/* A test's stand-in for a copy behind the decode (engine_kv_defer): the
 * rows are read when the copy starts (as a gather would) and land in the
 * ring after `polls` polls that do not wait, or at a waiting one. */
struct engine_defer_job {
	uint8_t *rows; /* (bytes) read at start */
	void *dst;
	size_t bytes;
	uint32_t polls; /* left before it lands */
	bool fail;
	bool landed;
};

struct engine_defer {
	uint32_t polls;                /* for each new copy */
	int64_t fail_job;              /* the job that fails, or -1 */
	struct engine_defer_job *jobs; /* (n_jobs) by job id */
	uint64_t n_jobs;
};

/* Names of the configuration enums, indexed by value. */
static const char *const engine_backend_names[] = { "auto", "cpu", "cuda" };
static const char *const engine_kv_names[] = { "f16", "f32" };
static const char *const engine_isa_names[] = { "auto", "scalar", "avx2", "avx512" };

void engine_config_default(struct engine_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->backend = ENGINE_BACKEND_AUTO;
	cfg->kv_type = ENGINE_KV_F16;
	cfg->isa = ENGINE_ISA_AUTO;
}

/* Index of s in names[0..n), or -1. */
static int engine_name_index(const char *const *names, size_t n, const char *s)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(names[i], s) == 0)
			return (int)i;
	return -1;
}

int engine_backend_parse(const char *s, enum engine_backend *out, struct err *e)
{
	int i = engine_name_index(engine_backend_names, KVS_ARRAY_LEN(engine_backend_names), s);
	if (i < 0)
		return err_set(e, KVS_EARG, "backend '%s': expected auto, cpu or cuda", s);
	*out = (enum engine_backend)i;
	return KVS_OK;
}

int engine_isa_parse(const char *s, enum engine_isa *out, struct err *e)
{
	int i = engine_name_index(engine_isa_names, KVS_ARRAY_LEN(engine_isa_names), s);
	if (i < 0)
		return err_set(e, KVS_EARG, "kernel level '%s': expected auto, avx512, avx2 or scalar", s);
	*out = (enum engine_isa)i;
	return KVS_OK;
}

int engine_kv_type_parse(const char *s, enum engine_kv_type *out, struct err *e)
{
	int i = engine_name_index(engine_kv_names, KVS_ARRAY_LEN(engine_kv_names), s);
	if (i < 0)
		return err_set(e, KVS_EARG, "KV cache type '%s': expected f16 or f32", s);
	*out = (enum engine_kv_type)i;
	return KVS_OK;
}

/* Pick the backend the configuration asks for, or say in one line why not:
 * auto takes CUDA when this build has it and the probe finds a device, unless
 * the configuration asks for CPU-only things (reference mode, a kernel level). */
static int engine_pick_backend(const struct engine_config *cfg, const struct backend_ops **ops,
                               struct err *e)
{
	struct gpu_info gi;
	struct err ge;
	err_clear(&ge);
	switch (cfg->backend) {
	case ENGINE_BACKEND_AUTO:
		*ops = &backend_cpu;
		if (!cfg->reference && cfg->isa == ENGINE_ISA_AUTO && gpu_backend_ops() != NULL &&
		    gpu_probe(&gi, &ge) == KVS_OK)
			*ops = gpu_backend_ops();
		return KVS_OK;
	case ENGINE_BACKEND_CPU: *ops = &backend_cpu; return KVS_OK;
	case ENGINE_BACKEND_CUDA:
		if (gpu_probe(&gi, &ge) != KVS_OK)
			return err_set(e, KVS_EUNSUPPORTED, "backend cuda: %s", ge.msg);
		if ((*ops = gpu_backend_ops()) == NULL)
			return err_set(e, KVS_EUNSUPPORTED, "backend cuda: this build has no CUDA backend");
		return KVS_OK;
	}
	return err_set(e, KVS_EARG, "backend %d: expected auto, cpu or cuda", (int)cfg->backend);
}

/* A new engine for m with config c on ops, its slot tables sized from the
 * context (every slot empty); the backend's state is the caller's to make.
 * The context is the user's choice: a refused allocation is an error. */
static int engine_alloc(const struct model *m, const struct engine_config *c,
                        const struct backend_ops *ops, struct engine **out, struct err *e)
{
	struct engine *eng = xcalloc(1, sizeof(*eng));
	eng->m = m;
	eng->cfg = *c;
	eng->ops = ops;
	eng->slot_pos = malloc((size_t)c->n_ctx * sizeof(int32_t));
	eng->all_slots = malloc((size_t)c->n_ctx * sizeof(uint32_t));
	eng->mark = calloc(c->n_ctx, sizeof(uint32_t));
	if (eng->slot_pos == NULL || eng->all_slots == NULL || eng->mark == NULL) {
		eng->ops = NULL;
		engine_free(eng);
		return engine_nomem(e, c->n_ctx, (double)c->n_ctx * 12);
	}
	for (uint32_t s = 0; s < c->n_ctx; s++) {
		eng->slot_pos[s] = -1;
		eng->all_slots[s] = s;
	}
	eng->rows = engine_rows_alloc(&m->hp, c->n_ctx, c->n_rows, &eng->row_mark);
	*out = eng;
	return KVS_OK;
}

int engine_create(struct engine **out, const struct model *m, const struct engine_config *cfg,
                  struct err *e)
{
	*out = NULL;
	const struct hparams *hp = &m->hp;
	struct engine_config c = *cfg;
	if (c.n_threads < 0 || c.n_threads > 256)
		return err_set(e, KVS_EARG, "threads %d: expected 0 (all cores) to 256", c.n_threads);
	if (c.n_threads == 0)
		c.n_threads = pool_n_cores();
	if (c.n_ctx == 0)
		c.n_ctx = KVS_MIN(hp->n_ctx_train ? hp->n_ctx_train : ENGINE_N_CTX_DEFAULT,
		                  (uint32_t)ENGINE_N_CTX_DEFAULT);
	if (c.n_ctx > ENGINE_N_CTX_MAX)
		return err_set(e, KVS_EARG, "context %u slots: expected at most %u", c.n_ctx,
		               ENGINE_N_CTX_MAX);
	if ((unsigned)c.kv_type > ENGINE_KV_F32)
		return err_set(e, KVS_EARG, "KV cache type %d: expected f16 or f32", (int)c.kv_type);
	if (c.n_rows > c.n_ctx)
		c.n_rows = c.n_ctx;
	if ((unsigned)c.isa > ENGINE_ISA_AVX512)
		return err_set(e, KVS_EARG, "kernel level %d: expected auto, scalar, avx2 or avx512",
		               (int)c.isa);
	const struct backend_ops *ops;
	int rc = engine_pick_backend(&c, &ops, e);
	if (rc != KVS_OK)
		return rc;

	if (c.n_rows > 0 && (rc = engine_rows_backend(&c, &ops, e)) != KVS_OK)
		return rc;
	struct engine *eng;
	rc = engine_alloc(m, &c, ops, &eng, e);
	if (rc != KVS_OK)
		return rc;
	struct backend_ctx ctx = { .m = m, .cfg = c, .slot_pos = eng->slot_pos, .rows = eng->rows };
	rc = ops->create(&ctx, &eng->state, e);
	if (rc != KVS_OK && c.backend == ENGINE_BACKEND_AUTO && ops != &backend_cpu) {
		/* auto: a GPU that cannot take this model (memory, a shape, a
		 * type) leaves the model to the CPU */
		log_warn("backend %s: %s; running on the CPU", ops->name, e ? e->msg : "failed");
		err_clear(e);
		eng->ops = ops = &backend_cpu;
		rc = ops->create(&ctx, &eng->state, e);
	}
	if (rc != KVS_OK) {
		err_prefix(e, "backend %s", ops->name);
		eng->ops = NULL;
		engine_free(eng);
		return rc;
	}
	*out = eng;
	return KVS_OK;
}

int engine_create_shared(struct engine **out, struct engine *base, uint32_t n_ctx, struct err *e)
{
	*out = NULL;
	if (!(base->ops->caps & ENGINE_CAP_SHARE))
		return err_set(e, KVS_EUNSUPPORTED,
		               "backend %s cannot share its weights with a second KV cache: "
		               "expected the cpu backend",
		               base->ops->name);
	struct engine_config c = base->cfg;
	c.n_ctx = n_ctx ? n_ctx : base->cfg.n_ctx;
	c.n_rows = 0; /* a shadow keeps the slot store */
	if (c.n_ctx > ENGINE_N_CTX_MAX)
		return err_set(e, KVS_EARG, "context %u slots: expected at most %u", c.n_ctx,
		               ENGINE_N_CTX_MAX);
	struct engine *eng;
	int rc = engine_alloc(base->m, &c, base->ops, &eng, e);
	if (rc != KVS_OK)
		return rc;
	struct backend_ctx ctx = {
		.m = eng->m, .cfg = c, .slot_pos = eng->slot_pos, .share = base->state
	};
	rc = eng->ops->create(&ctx, &eng->state, e);
	if (rc != KVS_OK) {
		err_prefix(e, "backend %s", eng->ops->name);
		eng->ops = NULL;
		engine_free(eng);
		return rc;
	}
	*out = eng;
	return KVS_OK;
}

void engine_free(struct engine *eng)
{
	if (eng == NULL)
		return;
	engine_ring_free(eng->ring); /* its copies and pinned bytes are the backend's */
	for (uint64_t j = 0; eng->defer != NULL && j < eng->defer->n_jobs; j++)
		free(eng->defer->jobs[j].rows);
	if (eng->defer != NULL)
		free(eng->defer->jobs);
	free(eng->defer);
	if (eng->ops && eng->state)
		eng->ops->free(eng->state);
	squeeze_free(eng->sq);
	free(eng->slot_pos);
	free(eng->rows);
	free(eng->row_mark);
	free(eng->all_slots);
	free(eng->mark);
	free(eng->saved_pos);
	free(eng->logits);
	free(eng->attn);
	free(eng->attn_kv);
	free(eng->sel);
	free(eng->page_ub);
	free(eng->tight);
	free(eng->q);
	free(eng->surprisal);
	free(eng->entropy);
	free(eng);
}

/* A fresh stamp for duplicate detection over slots (wraps by clearing). */
static uint32_t engine_new_stamp(struct engine *eng)
{
	if (++eng->stamp == 0) {
		memset(eng->mark, 0, eng->cfg.n_ctx * sizeof(uint32_t));
		eng->stamp = 1;
	}
	return eng->stamp;
}

/* Check every field of a batch against the model and the cache. */
static int engine_check_batch(struct engine *eng, const struct engine_batch *b, struct err *e)
{
	const struct hparams *hp = &eng->m->hp;
	uint32_t n_ctx = eng->cfg.n_ctx;
	if (b->n_tokens == 0)
		return err_set(e, KVS_EARG, "batch: n_tokens is 0, expected at least one token");
	if (b->n_tokens > n_ctx)
		return err_set(e, KVS_EARG, "batch: n_tokens %u exceeds the cache's %u slots", b->n_tokens,
		               n_ctx);
	if (b->tokens == NULL || b->pos == NULL || b->slot == NULL)
		return err_set(e, KVS_EARG, "batch: tokens, pos and slot must all be given");
	if ((unsigned)b->logits > ENGINE_LOGITS_NONE)
		return err_set(e, KVS_EARG, "batch: logits mode %d: expected last, all or none",
		               (int)b->logits);
	uint32_t stamp = engine_new_stamp(eng);
	for (uint32_t i = 0; i < b->n_tokens; i++) {
		if (b->tokens[i] < 0 || (uint32_t)b->tokens[i] >= hp->n_vocab)
			return err_set(e, KVS_EARG, "batch: token %u is id %d, expected 0..%u", i, b->tokens[i],
			               hp->n_vocab - 1);
		if (b->pos[i] < 0 || b->pos[i] > ENGINE_POS_MAX)
			return err_set(e, KVS_EARG, "batch: token %u has position %d, expected 0..%d", i,
			               b->pos[i], ENGINE_POS_MAX);
		if (i > 0 && b->pos[i] <= b->pos[i - 1])
			return err_set(
			        e, KVS_EARG,
			        "batch: token %u has position %d after %d, expected increasing positions", i,
			        b->pos[i], b->pos[i - 1]);
		if (b->slot[i] >= n_ctx)
			return err_set(e, KVS_EARG, "batch: token %u writes slot %u, expected 0..%u", i,
			               b->slot[i], n_ctx - 1);
		if (eng->mark[b->slot[i]] == stamp)
			return err_set(e, KVS_EARG,
			               "batch: token %u writes slot %u, already written by an earlier token", i,
			               b->slot[i]);
		eng->mark[b->slot[i]] = stamp;
	}
	if (b->n_visible > n_ctx)
		return err_set(e, KVS_EARG, "batch: n_visible %u exceeds the cache's %u slots",
		               b->n_visible, n_ctx);
	if (b->visible != NULL) {
		stamp = engine_new_stamp(eng);
		for (uint32_t i = 0; i < b->n_visible; i++) {
			uint32_t s = b->visible[i];
			if (s >= n_ctx)
				return err_set(e, KVS_EARG, "batch: visible[%u] is slot %u, expected 0..%u", i, s,
				               n_ctx - 1);
			if (eng->mark[s] == stamp)
				return err_set(e, KVS_EARG, "batch: visible[%u] repeats slot %u", i, s);
			eng->mark[s] = stamp;
		}
	}
	if (b->dist_cap < 0)
		return err_set(e, KVS_EARG, "batch: dist_cap %d, expected 0 (off) or a positive distance",
		               b->dist_cap);
	if (b->n_global > b->n_visible)
		return err_set(e, KVS_EARG, "batch: n_global %u exceeds n_visible %u", b->n_global,
		               b->n_visible);
	if (b->dist_cap > 0 && !engine_supports(eng, ENGINE_CAP_DIST_CAP))
		return err_set(e, KVS_EUNSUPPORTED, "batch: backend %s has no distance cap (dist_cap)",
		               eng->ops->name);
	if (b->n_local < 0 || b->middle_insert_at < 0)
		return err_set(e, KVS_EARG,
		               "batch: n_local %d, middle_insert_at %d: expected 0 (off) or positive",
		               b->n_local, b->middle_insert_at);
	if (b->n_local > 0 && !engine_supports(eng, ENGINE_CAP_LAMBDA))
		return err_set(e, KVS_EUNSUPPORTED, "batch: backend %s has no Lambda mask (n_local)",
		               eng->ops->name);
	if (b->want_q && !engine_supports(eng, ENGINE_CAP_QUERY))
		return err_set(e, KVS_EUNSUPPORTED, "batch: backend %s does not give queries (want_q)",
		               eng->ops->name);
	if ((b->head_keep != NULL || b->attn_kv_max) && !engine_supports(eng, ENGINE_CAP_HEAD_KEEP))
		return err_set(e, KVS_EUNSUPPORTED,
		               "batch: backend %s has no per-head keep-sets (head_keep, attn_kv_max)",
		               eng->ops->name);
	if (b->want_attn_kv && !engine_supports(eng, ENGINE_CAP_ATTN_KV))
		return err_set(e, KVS_EUNSUPPORTED,
		               "batch: backend %s cannot sum attention per KV head (want_attn_kv)",
		               eng->ops->name);
	if (b->sparse != NULL && b->sparse->mode != ENGINE_SPARSE_OFF) {
		const struct engine_sparse *sp = b->sparse;
		if ((unsigned)sp->mode > ENGINE_SPARSE_SQUEEZED)
			return err_set(e, KVS_EARG,
			               "batch: sparse mode %d, expected off, quest, hip or squeezed",
			               (int)sp->mode);
		if (sp->page == 0 || sp->block == 0 || sp->budget == 0 || sp->refresh == 0)
			return err_set(e, KVS_EARG,
			               "batch: sparse page %u, block %u, budget %u, refresh %u: expected "
			               "each at least 1",
			               sp->page, sp->block, sp->budget, sp->refresh);
		if (!engine_supports(eng, ENGINE_CAP_SPARSE))
			return err_set(
			        e, KVS_EUNSUPPORTED,
			        "batch: backend %s has no sparse attention (sparse); use the cpu backend",
			        eng->ops->name);
		if (sp->mode == ENGINE_SPARSE_SQUEEZED && !engine_supports(eng, ENGINE_CAP_SQUEEZED))
			return err_set(e, KVS_EUNSUPPORTED,
			               "batch: backend %s runs sparse quest and hip, not squeezed; use the "
			               "cpu backend",
			               eng->ops->name);
	}
	return KVS_OK;
}

/* Grow a float buffer to hold n floats. */
static float *engine_grow(float *p, size_t *cap, size_t n)
{
	if (n <= *cap)
		return p;
	free(p);
	/* at least doubling: the attention buffers grow by one column per
	 * decode step, and a fresh large allocation each step costs page faults */
	*cap = KVS_MAX(n, *cap * 2);
	return xmallocarray(*cap, sizeof(float));
}

/* Quest's reports beside the choice: the page bounds (NaN until a sparse
 * layer writes them), and with the shadow the bounds' tightness. */
static void engine_sparse_outs(struct engine *eng, const struct engine_batch *b,
                               struct backend_out *bo)
{
	const struct hparams *hp = &eng->m->hp;
	size_t nlh = (size_t)hp->n_layer * hp->n_head_kv;
	bo->n_pages = (engine_n_ctx(eng) + b->sparse->page - 1) / b->sparse->page;
	eng->page_ub = engine_grow(eng->page_ub, &eng->page_ub_cap, nlh * bo->n_pages);
	for (size_t i = 0; i < nlh * bo->n_pages; i++)
		eng->page_ub[i] = NAN;
	bo->page_ub = eng->page_ub;
	if (!b->want_attn)
		return;
	eng->tight = engine_grow(eng->tight, &eng->tight_cap, nlh);
	for (size_t i = 0; i < nlh; i++)
		eng->tight[i] = NAN;
	bo->tight = eng->tight;
}

int engine_forward(struct engine *eng, const struct engine_batch *b, struct engine_out *out,
                   struct err *e)
{
	memset(out, 0, sizeof(*out));
	int rc = engine_check_batch(eng, b, e);
	if (rc == KVS_OK && eng->rows != NULL)
		rc = engine_rows_check(eng->rows, eng->row_mark, &eng->m->hp, &eng->cfg, b,
		                       b->visible ? b->visible : eng->all_slots, e);
	if (rc != KVS_OK)
		return rc;
	const struct hparams *hp = &eng->m->hp;
	struct engine_batch cb = *b;
	if (cb.visible == NULL)
		cb.visible = eng->all_slots;

	uint32_t n_rows = b->logits == ENGINE_LOGITS_ALL ? b->n_tokens
	        : b->logits == ENGINE_LOGITS_LAST        ? 1
	                                                 : 0;
	struct backend_out bo = { 0 };
	bo.sparse_chose = -1;
	if (n_rows) {
		eng->logits = engine_grow(eng->logits, &eng->logits_cap, (size_t)n_rows * hp->n_vocab);
		bo.logits = eng->logits;
	}
	if (b->want_attn_kv) {
		size_t n = (size_t)hp->n_layer * hp->n_head_kv * KVS_MAX(cb.n_visible, 1u);
		eng->attn_kv = engine_grow(eng->attn_kv, &eng->attn_kv_cap, n);
		bo.attn_kv = eng->attn_kv;
	}
	if (b->want_q) {
		size_t n = (size_t)b->n_tokens * hp->n_layer * hp->n_head * hp->head_dim;
		eng->q = engine_grow(eng->q, &eng->q_cap, n);
		bo.q = eng->q;
	}
	if (b->want_attn) {
		size_t n = (size_t)hp->n_layer * hp->n_head * KVS_MAX(cb.n_visible, 1u);
		eng->attn = engine_grow(eng->attn, &eng->attn_cap, n);
		bo.attn = eng->attn;
	}
	bool sparse = b->sparse != NULL && b->sparse->mode != ENGINE_SPARSE_OFF && b->n_tokens == 1;
	if ((b->want_attn || b->want_sel) && sparse) {
		size_t n = (size_t)hp->n_layer * hp->n_head_kv * KVS_MAX(cb.n_visible, 1u);
		if (n > eng->sel_cap) {
			free(eng->sel);
			eng->sel_cap = KVS_MAX(n, eng->sel_cap * 2);
			eng->sel = xmalloc(eng->sel_cap);
		}
		bo.sel = eng->sel;
		if (b->sparse->mode == ENGINE_SPARSE_QUEST)
			engine_sparse_outs(eng, b, &bo);
	}
	/* a prefill passes the spec on only to a hip prefill */
	bool sparse_pf = b->sparse != NULL && b->sparse->mode == ENGINE_SPARSE_HIP && b->n_tokens > 1 &&
	        b->sparse->prefill > 0 && cb.n_visible >= b->sparse->prefill;
	if (!sparse && !sparse_pf)
		cb.sparse = NULL;
	cb.squeeze = eng->sq;
	if (b->n_tokens > eng->tok_cap) {
		free(eng->saved_pos);
		free(eng->surprisal);
		free(eng->entropy);
		eng->tok_cap = b->n_tokens;
		eng->saved_pos = xmallocarray(b->n_tokens, sizeof(int32_t));
		eng->surprisal = xmallocarray(b->n_tokens, sizeof(float));
		eng->entropy = xmallocarray(b->n_tokens, sizeof(float));
	}
	if (b->want_surprisal) {
		bo.surprisal = eng->surprisal;
		bo.entropy = eng->entropy;
	}

	for (uint32_t i = 0; i < b->n_tokens; i++) {
		eng->saved_pos[i] = eng->slot_pos[b->slot[i]];
		eng->slot_pos[b->slot[i]] = b->pos[i];
	}
	rc = eng->ops->forward(eng->state, &cb, &bo, e);
	if (rc != KVS_OK) {
		for (uint32_t i = b->n_tokens; i-- > 0;)
			eng->slot_pos[b->slot[i]] = eng->saved_pos[i];
		return rc;
	}
	out->logits = bo.logits;
	out->n_rows = n_rows;
	out->attn = bo.attn;
	out->attn_kv = bo.attn_kv;
	out->n_visible = b->want_attn || b->want_attn_kv ? cb.n_visible : 0;
	out->surprisal = bo.surprisal;
	out->entropy = bo.entropy;
	out->sel = bo.sel;
	out->page_ub = bo.page_ub;
	out->n_pages = bo.page_ub ? bo.n_pages : 0;
	out->tight = bo.tight;
	out->q = bo.q;
	out->keys_read = bo.keys_read;
	out->keys_dense = bo.keys_dense;
	out->attn_ms = bo.attn_ms;
	out->select_ms = bo.select_ms;
	out->sparse_chose = sparse ? bo.sparse_chose : -1;
	out->prefill_read = bo.prefill_read;
	out->prefill_dense = bo.prefill_dense;
	out->prefill_rows = bo.prefill_rows;
	out->prefill_mass = bo.prefill_rows ? bo.prefill_mass / (double)bo.prefill_rows : 0;
	if (out->sparse_chose >= 0)
		eng->sp_steps[out->sparse_chose]++;
	return KVS_OK;
}

void engine_sparse_steps(const struct engine *eng, uint64_t *chosen, uint64_t *reused)
{
	*chosen = eng->sp_steps[1];
	*reused = eng->sp_steps[0];
}

int engine_kv_page_bounds(struct engine *eng, uint32_t page_size, uint32_t layer, uint32_t kv_head,
                          uint32_t page, float *mn, float *mx, uint32_t *n_keys, struct err *e)
{
	const struct hparams *hp = &eng->m->hp;
	if (eng->ops->page_bounds == NULL || !engine_supports(eng, ENGINE_CAP_SPARSE))
		return err_set(e, KVS_EUNSUPPORTED, "backend %s keeps no sparse page bounds",
		               eng->ops->name);
	if (page_size == 0 || page_size > eng->cfg.n_ctx)
		return err_set(e, KVS_EARG, "page size %u, expected 1..%u", page_size, eng->cfg.n_ctx);
	uint32_t n_pages = (eng->cfg.n_ctx + page_size - 1) / page_size;
	if (layer >= hp->n_layer || kv_head >= hp->n_head_kv || page >= n_pages)
		return err_set(e, KVS_EARG, "layer %u, KV head %u, page %u: expected below %u, %u and %u",
		               layer, kv_head, page, hp->n_layer, hp->n_head_kv, n_pages);
	return eng->ops->page_bounds(eng->state, page_size, layer, kv_head, page, mn, mx, n_keys, e);
}

bool engine_supports(const struct engine *eng, unsigned caps)
{
	unsigned have = eng->ops->caps;
	/* the sparse kernels take no attention soft-cap (Gemma 2): dense only */
	if (eng->m->hp.attn_softcap > 0)
		have &= ~(unsigned)(ENGINE_CAP_SPARSE | ENGINE_CAP_SQUEEZED);
	return (have & caps) == caps;
}

uint32_t engine_n_ctx(const struct engine *eng)
{
	return eng->cfg.n_ctx;
}

int32_t engine_kv_pos(const struct engine *eng, uint32_t slot)
{
	return slot < eng->cfg.n_ctx ? eng->slot_pos[slot] : -1;
}

const int32_t *engine_kv_positions(const struct engine *eng)
{
	return eng->slot_pos;
}

int engine_kv_set_pos(struct engine *eng, uint32_t slot, int32_t pos, struct err *e)
{
	if (slot >= eng->cfg.n_ctx)
		return err_set(e, KVS_EARG, "KV slot %u: expected 0..%u", slot, eng->cfg.n_ctx - 1);
	if (pos < -1 || pos > ENGINE_POS_MAX)
		return err_set(e, KVS_EARG, "KV slot %u position %d: expected -1 (empty) or 0..%d", slot,
		               pos, ENGINE_POS_MAX);
	eng->slot_pos[slot] = pos;
	return KVS_OK;
}

int engine_kv_copy(struct engine *eng, const uint32_t *dst, const uint32_t *src, uint32_t n,
                   struct err *e)
{
	for (uint32_t i = 0; i < n; i++)
		if (dst[i] >= eng->cfg.n_ctx || src[i] >= eng->cfg.n_ctx)
			return err_set(e, KVS_EARG, "KV copy %u: slot %u -> %u, expected slots 0..%u", i,
			               src[i], dst[i], eng->cfg.n_ctx - 1);
	eng->ops->kv_copy(eng->state, dst, src, n);
	for (uint32_t i = 0; i < n; i++)
		eng->slot_pos[dst[i]] = eng->slot_pos[src[i]];
	return KVS_OK;
}

void engine_kv_clear(struct engine *eng)
{
	for (uint32_t s = 0; s < eng->cfg.n_ctx; s++)
		eng->slot_pos[s] = -1;
	engine_squeeze_clear(eng); /* its keys are gone */
}

void engine_squeeze_put(struct engine *eng, struct engine_squeeze *sq)
{
	squeeze_free(eng->sq);
	eng->sq = sq;
	if (sq != NULL)
		sq->id = ++eng->sq_serial;
}

const struct engine_squeeze *engine_squeeze_get(const struct engine *eng)
{
	return eng->sq;
}

void engine_squeeze_clear(struct engine *eng)
{
	engine_squeeze_put(eng, NULL);
}

int engine_kv_read(const struct engine *eng, uint32_t layer, uint32_t slot, uint32_t kv_head,
                   bool value, bool rotated, float *out, struct err *e)
{
	const struct hparams *hp = &eng->m->hp;
	if (layer >= hp->n_layer || slot >= eng->cfg.n_ctx || kv_head >= hp->n_head_kv)
		return err_set(
		        e, KVS_EARG,
		        "KV read layer %u slot %u head %u: expected layer < %u, slot < %u, head < %u",
		        layer, slot, kv_head, hp->n_layer, eng->cfg.n_ctx, hp->n_head_kv);
	eng->ops->kv_read(eng->state, layer, slot, kv_head, value, out);
	if (!value && rotated) {
		if (eng->slot_pos[slot] < 0)
			return err_set(e, KVS_ESTATE, "KV read slot %u: empty, it has no position to rotate to",
			               slot);
		/* the layer's own RoPE: a local layer's base, LongRoPE's table */
		struct hparams rh;
		model_rope_params(hp, model_layer_window(hp, layer) > 0, eng->cfg.n_ctx, &rh);
		float *cs = xmallocarray(hp->n_rot, sizeof(float));
		engine_rope_cos_sin(&rh, eng->slot_pos[slot], cs, cs + hp->n_rot / 2);
		engine_rope_apply(&rh, out, cs, cs + hp->n_rot / 2);
		free(cs);
	}
	return KVS_OK;
}

int engine_nomem(struct err *e, uint32_t n_ctx, double need_bytes)
{
	double gib = need_bytes / (1024.0 * 1024 * 1024);
	return err_set(e, KVS_ENOMEM,
	               "the KV cache needs %.*f %s for %u slots; the system refused "
	               "that much memory (a smaller context fits)",
	               gib >= 1 ? 1 : 0, gib >= 1 ? gib : gib * 1024, gib >= 1 ? "GiB" : "MiB", n_ctx);
}

uint32_t engine_kv_rows(const struct engine *eng)
{
	return eng->rows ? eng->cfg.n_rows : eng->cfg.n_ctx;
}

uint32_t *engine_kv_row_map(const struct engine *eng)
{
	return eng->rows;
}

uint64_t engine_kv_bytes_per_slot(const struct engine *eng)
{
	const struct hparams *hp = &eng->m->hp;
	uint64_t elem = eng->cfg.kv_type == ENGINE_KV_F32 ? 4 : 2;
	return 2ull * hp->n_layer * hp->n_head_kv * hp->head_dim * elem;
}

int engine_kv_save(const struct engine *eng, uint32_t slot, void *buf, struct err *e)
{
	if (slot >= eng->cfg.n_ctx)
		return err_set(e, KVS_EARG, "KV save slot %u: expected 0..%u", slot, eng->cfg.n_ctx - 1);
	if (eng->ops->kv_raw == NULL)
		return err_set(e, KVS_EUNSUPPORTED, "backend %s cannot read raw KV slots", eng->ops->name);
	return eng->ops->kv_raw(eng->state, slot, buf, false, e);
}

int engine_kv_load(struct engine *eng, uint32_t slot, int32_t pos, const void *buf, struct err *e)
{
	if (slot >= eng->cfg.n_ctx)
		return err_set(e, KVS_EARG, "KV load slot %u: expected 0..%u", slot, eng->cfg.n_ctx - 1);
	if (pos < 0 || pos > ENGINE_POS_MAX)
		return err_set(e, KVS_EARG, "KV load slot %u position %d: expected 0..%d", slot, pos,
		               ENGINE_POS_MAX);
	if (eng->ops->kv_raw == NULL)
		return err_set(e, KVS_EUNSUPPORTED, "backend %s cannot write raw KV slots", eng->ops->name);
	int rc = eng->ops->kv_raw(eng->state, slot, (void *)buf, true, e);
	if (rc == KVS_OK)
		eng->slot_pos[slot] = pos;
	return rc;
}

/* ---- batched raw copies: the engine's io for its ring ---- */

/* The ring's bytes: the backend's (pinned) or plain memory. */
static void *engine_ring_alloc(void *ud, size_t bytes, struct err *e)
{
	struct engine *eng = ud;
	if (eng->ops->ring_alloc != NULL)
		return eng->ops->ring_alloc(eng->state, bytes, e);
	return xmalloc(bytes);
}

static void engine_ring_dealloc(void *ud, void *p)
{
	struct engine *eng = ud;
	if (eng->ops->ring_alloc != NULL)
		eng->ops->ring_free(eng->state, p);
	else
		free(p);
}

/* Start a copy: the backend's gather, or kv_raw slot by slot (done now). */
static int engine_ring_copy(void *ud, const uint32_t *slots, uint32_t n, void *dst, uint64_t *job,
                            struct err *e)
{
	struct engine *eng = ud;
	if (eng->ops->kv_gather != NULL)
		return eng->ops->kv_gather(eng->state, slots, n, dst, job, e);
	uint64_t row = engine_kv_bytes_per_slot(eng);
	struct engine_defer *d = eng->defer;
	uint8_t *to = dst;
	if (d != NULL) { /* read now, land later */
		d->jobs = xreallocarray(d->jobs, d->n_jobs + 1, sizeof *d->jobs);
		struct engine_defer_job *x = &d->jobs[d->n_jobs];
		*x = (struct engine_defer_job){ .rows = xmalloc(KVS_MAX(n * row, (uint64_t)1)),
			                            .dst = dst };
		x->bytes = n * row;
		x->polls = d->polls;
		x->fail = (int64_t)d->n_jobs == d->fail_job;
		to = x->rows;
		*job = d->n_jobs++;
	} else {
		*job = 0;
	}
	for (uint32_t i = 0; i < n; i++) {
		int rc = eng->ops->kv_raw(eng->state, slots[i], to + i * row, false, e);
		if (rc != KVS_OK)
			return rc;
	}
	return KVS_OK;
}

static int engine_ring_poll(void *ud, uint64_t job, bool wait, bool *done, struct err *e)
{
	struct engine *eng = ud;
	*done = true;
	if (eng->ops->kv_job != NULL)
		return eng->ops->kv_job(eng->state, job, wait, done, e);
	struct engine_defer *d = eng->defer;
	if (d == NULL || job >= d->n_jobs)
		return KVS_OK;
	struct engine_defer_job *x = &d->jobs[job];
	if (!x->landed && !wait && x->polls > 0) {
		x->polls--;
		*done = false;
		return KVS_OK;
	}
	if (!x->landed) {
		if (!x->fail)
			memcpy(x->dst, x->rows, x->bytes);
		x->landed = true;
		free(x->rows);
		x->rows = NULL;
	}
	if (x->fail)
		return err_set(e, KVS_EIO, "KV copy %llu failed (engine_kv_defer)",
		               (unsigned long long)job);
	return KVS_OK;
}

void engine_kv_defer(struct engine *eng, uint32_t polls, int64_t fail_job)
{
	if (eng->ops->kv_gather != NULL)
		return; /* a backend's own copies */
	if (eng->defer == NULL) {
		eng->defer = xcalloc(1, sizeof *eng->defer);
	}
	eng->defer->polls = polls;
	eng->defer->fail_job = fail_job;
}

/* A backend's first ring: room for 512 slots (11.25 MiB for the default model in f16). */
#define ENGINE_RING_SLOTS 512

bool engine_kv_ring_room(const struct engine *eng, uint32_t n)
{
	return eng->ring == NULL || engine_ring_room(eng->ring, n);
}

int engine_kv_save_batch(struct engine *eng, const uint32_t *slots, uint32_t n, struct err *e)
{
	if (eng->ops->kv_raw == NULL)
		return err_set(e, KVS_EUNSUPPORTED, "backend %s cannot read raw KV slots", eng->ops->name);
	for (uint32_t i = 0; i < n; i++)
		if (slots[i] >= eng->cfg.n_ctx)
			return err_set(e, KVS_EARG, "KV save batch: slot %u (entry %u): expected 0..%u",
			               slots[i], i, eng->cfg.n_ctx - 1);
	if (eng->ring == NULL) {
		struct engine_ring_io io = { eng, engine_ring_alloc, engine_ring_dealloc, engine_ring_copy,
			                         engine_ring_poll };
		/* a backend that copies behind the decode holds several batches;
		 * the fallback copies before it returns and holds one at a time */
		uint64_t row = engine_kv_bytes_per_slot(eng);
		eng->ring = engine_ring_new(&io, row,
		                            eng->ops->kv_gather != NULL ? ENGINE_RING_SLOTS * row : 0);
	}
	return engine_ring_start(eng->ring, slots, n, e);
}

int engine_kv_collect(struct engine *eng, bool wait, bool *ready, const void **rows, uint32_t *n,
                      struct err *e)
{
	if (eng->ring == NULL) {
		*ready = false;
		*rows = NULL;
		*n = 0;
		return err_set(e, KVS_ESTATE, "KV ring: no batch held: expected one started");
	}
	return engine_ring_collect(eng->ring, wait, ready, rows, n, e);
}

void engine_kv_release(struct engine *eng)
{
	if (eng->ring != NULL)
		engine_ring_release(eng->ring);
}

uint32_t engine_kv_held(const struct engine *eng)
{
	return eng->ring != NULL ? eng->ring->count : 0;
}

int engine_kv_load_batch(struct engine *eng, const uint32_t *slots, const int32_t *pos, uint32_t n,
                         const void *rows, struct err *e)
{
	if (eng->ops->kv_raw == NULL)
		return err_set(e, KVS_EUNSUPPORTED, "backend %s cannot write raw KV slots", eng->ops->name);
	uint32_t stamp = engine_new_stamp(eng);
	for (uint32_t i = 0; i < n; i++) {
		if (slots[i] >= eng->cfg.n_ctx)
			return err_set(e, KVS_EARG, "KV load batch: slot %u (entry %u): expected 0..%u",
			               slots[i], i, eng->cfg.n_ctx - 1);
		if (pos[i] < 0 || pos[i] > ENGINE_POS_MAX)
			return err_set(e, KVS_EARG,
			               "KV load batch: slot %u position %d (entry %u): expected 0..%d",
			               slots[i], pos[i], i, ENGINE_POS_MAX);
		if (eng->mark[slots[i]] == stamp)
			return err_set(e, KVS_EARG,
			               "KV load batch: slot %u twice (entry %u): expected distinct slots",
			               slots[i], i);
		eng->mark[slots[i]] = stamp;
	}
	uint64_t row = engine_kv_bytes_per_slot(eng);
	int rc = KVS_OK;
	if (eng->ops->kv_scatter != NULL)
		rc = eng->ops->kv_scatter(eng->state, slots, n, rows, e);
	for (uint32_t i = 0; eng->ops->kv_scatter == NULL && rc == KVS_OK && i < n; i++)
		rc = eng->ops->kv_raw(eng->state, slots[i], (uint8_t *)rows + i * row, true, e);
	if (rc != KVS_OK)
		return rc;
	for (uint32_t i = 0; i < n; i++)
		eng->slot_pos[slots[i]] = pos[i];
	return KVS_OK;
}

enum engine_kv_type engine_kv_type(const struct engine *eng)
{
	return eng->cfg.kv_type;
}

const struct model *engine_model(const struct engine *eng)
{
	return eng->m;
}

const char *engine_backend_name(const struct engine *eng)
{
	return eng->ops->name;
}

int engine_n_threads(const struct engine *eng)
{
	return eng->cfg.n_threads;
}

const char *engine_isa_name(const struct engine *eng)
{
	return eng->ops->isa_name(eng->state);
}

void engine_row_stats(const float *logits, uint32_t n_vocab, int32_t target, float *surprisal,
                      float *entropy)
{
	/* With z = sum exp(l - mx): log p_i = l_i - mx - log z, and
	 * H = -sum p_i log p_i = log z - sum p_i (l_i - mx). The exponentials
	 * are the kernels' vector exp in chunks (float terms <= 1, double sums
	 * across chunks: ~1e-6 relative). */
	const struct kern_ops *ops = kern_select(kern_cpu_level());
	float buf[2048];
	float mx = logits[0];
	for (uint32_t i = 1; i < n_vocab; i++)
		mx = logits[i] > mx ? logits[i] : mx;
	double z = 0, zl = 0;
	for (uint32_t i0 = 0; i0 < n_vocab; i0 += 2048) {
		uint32_t m = KVS_MIN(2048u, n_vocab - i0);
		memcpy(buf, logits + i0, m * sizeof(float));
		double zc = ops->exp_sum(buf, m, mx);
		z += zc;
		zl += (double)ops->dot_f32(buf, logits + i0, m) - (double)mx * zc;
	}
	double lz = log(z);
	if (entropy)
		*entropy = (float)(lz - zl / z);
	if (surprisal)
		*surprisal = target >= 0 && (uint32_t)target < n_vocab
		        ? (float)(lz - ((double)logits[target] - mx))
		        : NAN;
}

void engine_rope_cos_sin(const struct hparams *hp, int32_t pos, float *cos_out, float *sin_out)
{
	/* Float arithmetic throughout, frequency by repeated multiplication, in
	 * the order llama.cpp's rope cache takes: the angles then match its own
	 * to the last bit at ordinary positions. Per pair: divide by the
	 * rope_freqs divisor (extrapolated angle), scale by the frequency scale
	 * (interpolated angle), under YaRN mix the two by the ramp over
	 * rope_yarn_corr, and scale the rotation by the attention factor. */
	uint32_t n_pairs = hp->n_rot / 2;
	float theta_scale = powf(hp->rope_base, -2.0f / (float)hp->n_rot);
	float theta = (float)pos;
	float mscale = hp->rope_attn_factor > 0 ? hp->rope_attn_factor : 1.0f; /* 0: not set */
	float lo = hp->rope_yarn_corr[0], span = hp->rope_yarn_corr[1] - hp->rope_yarn_corr[0];
	if (hp->rope_ext_factor != 0.0f)
		mscale *= 1.0f + 0.1f * logf(1.0f / hp->rope_freq_scale);
	if (span < 0.001f)
		span = 0.001f;
	for (uint32_t i = 0; i < n_pairs; i++) {
		float extrap = hp->rope_factors ? theta / hp->rope_factors[i] : theta;
		float t = hp->rope_freq_scale * extrap;
		if (hp->rope_ext_factor != 0.0f) {
			float y = ((float)i - lo) / span;
			float mix = (1 - fminf(1, fmaxf(0, y))) * hp->rope_ext_factor;
			t = t * (1 - mix) + extrap * mix;
		}
		cos_out[i] = cosf(t) * mscale;
		sin_out[i] = sinf(t) * mscale;
		theta *= theta_scale;
	}
}

void engine_rope_apply(const struct hparams *hp, float *x, const float *cos_v, const float *sin_v)
{
	uint32_t n_pairs = hp->n_rot / 2;
	/* NORM pairs (x[2i], x[2i+1]); NEOX pairs (x[i], x[i + n_rot/2]). */
	uint32_t stride = hp->rope == ROPE_NEOX ? 1 : 2;
	uint32_t other = hp->rope == ROPE_NEOX ? n_pairs : 1;
	for (uint32_t i = 0; i < n_pairs; i++) {
		float *a = &x[i * stride], *b = a + other;
		float a0 = *a, b0 = *b;
		*a = a0 * cos_v[i] - b0 * sin_v[i];
		*b = a0 * sin_v[i] + b0 * cos_v[i];
	}
}
