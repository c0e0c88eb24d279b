/*
 * test-hip-prefill.c: HiP's block-sparse prefill's dense tail (engine_sparse
 * hip, tail=N), on a tiny generated model. A prompt's last N queries
 * attend every key they see when the batch's logits are wanted, so:
 * - a tail as long as the batch is the dense prefill bit for bit (every
 *   query block takes cpu_flash's path), its keys read all counted;
 * - in the first sparse layer a tail query's inputs are dense's (the
 *   layers below are dense), so its attention output, and with it the
 *   next layer's query of that token, is dense's exactly, while the token
 *   just before the tail attends a few blocks and its next query differs;
 * - a batch that wants no logits (not a prompt's end) has no tail;
 * - the tail adds to the keys read exactly what its queries see beyond
 *   their sparse lists, never to the dense count.
 * Each check fails on a tail that is ignored, shifted by one token or
 * applied to every batch. And the search's tiled scorer chooses as the
 * per-key one it replaced (the captured mass to 6 digits), and fails when
 * it scores fewer rows or keys shifted by one.
 */
#include "engine/engine.h"
#include "model/model.h"
#include "tests/unit/test.h"
#include "tests/util/tinymodel.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define N_CTX 256

/* One prefill of n tokens in one batch under sp (NULL: dense), asking for
 * logits (every row's, or none) and every token's queries; the logits
 * (n, n_vocab) into lg when wanted, the queries (n, n_layer, n_head,
 * head_dim) into q, the engine's output in *o. */
static void prefill(struct engine *eng, uint32_t n, const struct engine_sparse *sp,
                    enum engine_logits want, float *lg, float *q, struct engine_out *o)
{
	const struct hparams *hp = &engine_model(eng)->hp;
	int32_t tok[N_CTX], pos[N_CTX];
	uint32_t slot[N_CTX];
	tinymodel_prompt(tok, pos, slot, n);
	struct engine_batch b = { .n_tokens = n, .tokens = tok, .pos = pos, .slot = slot };
	b.n_visible = n;
	b.logits = want;
	b.sparse = sp;
	b.want_q = true;
	struct err e;
	engine_kv_clear(eng);
	if (engine_forward(eng, &b, o, &e) != KVS_OK) {
		fprintf(stderr, "prefill: %s\n", e.msg);
		exit(99);
	}
	if (want == ENGINE_LOGITS_ALL)
		memcpy(lg, o->logits, (size_t)n * hp->n_vocab * sizeof(float));
	memcpy(q, o->q, (size_t)n * hp->n_layer * hp->n_head * hp->head_dim * sizeof(float));
}

/* max |a - b| over token t's queries of layer l (n_head x head_dim). */
static double q_diff(const struct hparams *hp, const float *a, const float *b, uint32_t t,
                     uint32_t l)
{
	size_t row = (size_t)hp->n_head * hp->head_dim;
	size_t off = ((size_t)t * hp->n_layer + l) * row;
	return tinymodel_max_diff(a + off, b + off, row);
}

/* A tail covering the batch is the dense prefill, bit for bit. */
static void test_tail_whole(const struct model *m, int threads)
{
	const struct hparams *hp = &m->hp;
	uint32_t n = 200, nv = hp->n_vocab;
	size_t nq = (size_t)n * hp->n_layer * hp->n_head * hp->head_dim;
	float *dl = malloc((size_t)n * nv * sizeof(float)),
	      *sl = malloc((size_t)n * nv * sizeof(float));
	float *dq = malloc(nq * sizeof(float)), *sq = malloc(nq * sizeof(float));
	struct engine *eng = tinymodel_engine(m, N_CTX, threads, false);
	struct engine_sparse s;
	struct engine_out o;
	struct err e;
	prefill(eng, n, NULL, ENGINE_LOGITS_ALL, dl, dq, &o);
	T_EQ_INT(engine_sparse_parse("hip:budget=48,block=8,sinks=4,recent=8,dense=1,prefill=64,"
	                             "tail=200",
	                             &s, &e),
	         KVS_OK);
	prefill(eng, n, &s, ENGINE_LOGITS_ALL, sl, sq, &o);
	double d = tinymodel_max_diff(dl, sl, (size_t)n * nv);
	printf("tail = batch, %d thread(s): max |logit diff| %.3g\n", threads, d);
	T_CHECK(d == 0, "a tail of the whole batch is dense: max diff %g", d);
	/* every sparse layer's query read its whole prefix */
	T_EQ_INT(o.prefill_dense, (uint64_t)(hp->n_layer - 1) * hp->n_head * (n * (n + 1) / 2));
	T_EQ_INT(o.prefill_read, o.prefill_dense);
	engine_free(eng);
	free(dl);
	free(sl);
	free(dq);
	free(sq);
}

/* A tail of 40: the first sparse layer's tail queries are dense's, the
 * token before the tail's is not; their next layer's queries show it. */
static void test_tail_boundary(const struct model *m, int threads)
{
	const struct hparams *hp = &m->hp;
	uint32_t n = 200, tail = 40, nv = hp->n_vocab;
	size_t nq = (size_t)n * hp->n_layer * hp->n_head * hp->head_dim;
	float *dl = malloc((size_t)n * nv * sizeof(float)),
	      *sl = malloc((size_t)n * nv * sizeof(float));
	float *dq = malloc(nq * sizeof(float)), *sq = malloc(nq * sizeof(float));
	float *nq0 = malloc(nq * sizeof(float));
	struct engine *eng = tinymodel_engine(m, N_CTX, threads, false);
	struct engine_sparse s;
	struct engine_out o, o0, on;
	struct err e;
	prefill(eng, n, NULL, ENGINE_LOGITS_ALL, dl, dq, &o);
	T_EQ_INT(engine_sparse_parse("hip:budget=48,block=8,sinks=4,recent=8,dense=1,prefill=64,"
	                             "tail=0",
	                             &s, &e),
	         KVS_OK);
	prefill(eng, n, &s, ENGINE_LOGITS_ALL, sl, nq0, &o0); /* no tail */
	uint64_t read0 = o0.prefill_read, dense0 = o0.prefill_dense;
	s.tail = tail;
	prefill(eng, n, &s, ENGINE_LOGITS_ALL, sl, sq, &o);
	/* layer 1 is the first sparse one: layer 2's queries follow its output */
	double worst_in = 0;
	for (uint32_t t = n - tail; t < n; t++) {
		double d = q_diff(hp, dq, sq, t, 2);
		worst_in = d > worst_in ? d : worst_in;
	}
	double before = q_diff(hp, dq, sq, n - tail - 1, 2);
	double before0 = q_diff(hp, dq, nq0, n - tail, 2);
	printf("tail 40, %d thread(s): layer-2 queries vs dense: tail max %.3g, the token before "
	       "%.3g, the tail's first without a tail %.3g\n",
	       threads, worst_in, before, before0);
	T_CHECK(worst_in == 0, "the tail's layer-2 queries are dense's: max diff %g", worst_in);
	T_CHECK(before > 1e-6, "the token before the tail attends sparsely: diff %g", before);
	T_CHECK(before0 > 1e-6, "without a tail the same token attends sparsely: diff %g", before0);
	/* the tail reads each of its queries' whole prefix in the sparse
	 * layers (n_layer - 1 of them), the other tokens as before */
	T_EQ_INT(o.prefill_dense, dense0);
	uint64_t tail_keys = 0;
	for (uint32_t t = n - tail; t < n; t++)
		tail_keys += (uint64_t)(t + 1) * hp->n_head * (hp->n_layer - 1);
	T_CHECK(o.prefill_read > read0 && o.prefill_read <= read0 + tail_keys &&
	                o.prefill_read < o.prefill_dense,
	        "read %llu: between %llu and %llu + the tail's %llu",
	        (unsigned long long)o.prefill_read, (unsigned long long)read0,
	        (unsigned long long)read0, (unsigned long long)tail_keys);
	/* a batch that wants no logits is not a prompt's end: no tail */
	prefill(eng, n, &s, ENGINE_LOGITS_NONE, NULL, sq, &on);
	T_EQ_INT(on.prefill_read, read0);
	T_CHECK(tinymodel_max_diff(nq0, sq, nq) == 0, "no logits wanted: the tail-less prefill");
	engine_free(eng);
	free(dl);
	free(sl);
	free(dq);
	free(sq);
	free(nq0);
}

/* The search's choice with a small budget: the prefill's captured mass
 * (each query block's last row, in the sparse layers) and keys read are
 * those of the per-key scorer the tiled one replaced (commit 78a6b16,
 * whose prefill searched with beam 1, the same model and prompt: 0.492301,
 * 79404 keys); a scorer that reads the
 * wrong keys or rows chooses other blocks and captures less (scoring one
 * row: 0.428; keys one on: 0.472). */
static void test_search_choice(const struct model *m, int threads)
{
	uint32_t n = 200;
	struct engine *eng = tinymodel_engine(m, N_CTX, threads, false);
	struct engine_sparse s;
	struct engine_out o;
	struct err e;
	T_EQ_INT(engine_sparse_parse("hip:budget=48,block=8,sinks=4,recent=8,dense=1,prefill=64,"
	                             "beam=1",
	                             &s, &e),
	         KVS_OK);
	int32_t tok[N_CTX], pos[N_CTX];
	uint32_t slot[N_CTX];
	tinymodel_prompt(tok, pos, slot, n);
	struct engine_batch b = { .n_tokens = n, .tokens = tok, .pos = pos, .slot = slot };
	b.n_visible = n;
	b.logits = ENGINE_LOGITS_NONE;
	b.sparse = &s;
	b.want_attn = true;
	engine_kv_clear(eng);
	if (engine_forward(eng, &b, &o, &e) != KVS_OK) {
		fprintf(stderr, "prefill: %s\n", e.msg);
		exit(99);
	}
	double mass = o.prefill_rows ? o.prefill_mass : 0;
	printf("search, budget 48, %d thread(s): read %llu keys, mass %.6f over %llu rows\n", threads,
	       (unsigned long long)o.prefill_read, mass, (unsigned long long)o.prefill_rows);
	T_EQ_INT(o.prefill_read, 79404);
	T_CHECK(fabs(mass - 0.492301) < 5e-6, "mass %.6f, the per-key scorer's 0.492301", mass);
	engine_free(eng);
}

int main(void)
{
	struct model *m;
	uint8_t *buf;
	tinymodel_load_attn(&m, &buf);
	for (int threads = 1; threads <= 2; threads++) {
		test_tail_whole(m, threads);
		test_tail_boundary(m, threads);
		test_search_choice(m, threads);
	}
	model_free(m);
	free(buf);
	return t_done("test-hip-prefill");
}
