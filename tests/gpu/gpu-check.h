/*
 * gpu-check.h: what gpu-check.c lends the other parts of the GPU check
 * (gpu-check-sparse.c): the results, random models, engines, forwards and
 * comparisons. Every function exits the program on a failure it cannot
 * report as a check.
 */
#ifndef KVS_GPU_CHECK_H
#define KVS_GPU_CHECK_H

#include "engine/engine.h"
#include "gpu/gpu.h"

extern int g_fail;                           /* failed checks so far */
extern enum engine_backend g_b;              /* the backend under test */
extern bool g_quick;                         /* fewer repetitions */
extern const struct engine_sparse *g_sparse; /* the next forwards' sparse spec (NULL: dense) */
extern bool g_want_sel;                      /* the next forwards report a sparse choice */

/* Record one check: a PASS/FAIL line (a FAIL counts in g_fail). */
void check(bool ok, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Add a row to the final table ("| ..." rows are timings). */
void table_row(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

struct rmodel {
	struct model m;
	void *blobs[1024];
	int n_blobs;
	char name[96];
};

struct rspec {
	const char *arch;
	uint32_t n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab;
	uint32_t wtype, etype; /* matrices; embedding (tied LM head) */
	bool bias;
	enum rope_kind rope;
	float rope_base;
};

extern const struct rspec smol_spec; /* SmolLM2-135M's shape and the Q4_1 file's types */
struct rmodel *rm_build(const struct rspec *sp, uint64_t seed);
void rm_free(struct rmodel *rm);
uint32_t rnd_u32(uint32_t n);
int32_t *rand_tokens(uint32_t n, uint32_t n_vocab);

/* An engine on backend be with n_ctx slots (reference: the CPU's float path). */
struct engine *mk_engine(const struct model *m, enum engine_backend be, bool reference,
                         uint32_t n_ctx);
/* Forward n tokens at positions pos0.. into slots slot0.. (visible: the
 * list, or NULL for slots 0 .. n_vis-1), with g_sparse and g_want_sel. */
void fwd(struct engine *eng, const int32_t *toks, uint32_t n, int32_t pos0, uint32_t slot0,
         const uint32_t *vis, uint32_t n_vis, enum engine_logits lm, bool attn, bool sur,
         struct engine_out *o);
float *dup_f(const float *p, size_t n);
uint32_t argmax(const float *x, uint32_t n);

/* Differences of rows b against reference rows a. */
struct cmp {
	double max_abs, max_ref;
	uint64_t rows, top1_same, ties, bad;
};
void cmp_rows(struct cmp *c, const float *a, const float *b, uint32_t n_rows, uint32_t n);
double cmp_rel(const struct cmp *c);
/* Report a logits comparison against tolerance tol (relative). */
void cmp_check(const char *name, const struct cmp *c, double tol);
double median(double *v, int n);
/* Decode after depth cached tokens (g_sparse applies): median wall, GPU
 * (events) ms per step and host argmax us. */
void bench_decode(const struct model *m, uint32_t depth, bool graphs, double *wall_ms,
                  double *gpu_ms, double *sample_us);

/* gpu-check-sparse.c: `gpu-check sparse` (bench: the timings too). */
int cmd_sparse(const char *model_path, bool bench);

/* gpu-check-cold.c: `gpu-check cold` (batched cold-tier copies) and
 * `gpu-check launches` (graph nodes against gpuplan_launches); the goals
 * table: goal_note records a measurement against the target,
 * goals_print prints them last. */
int cmd_cold(const char *model_path);
int cmd_launches(const char *model_path);
void goal_note(const char *name, double got, double target, const char *unit);
void goals_print(void);

#endif
