/*
 * test-gpu-host.c: the CUDA backend's host-side logic (gpu/gpuplan.h) and
 * what a machine without a usable GPU does with --backend cuda.
 *
 * Expected numbers are worked out by hand in the comments from the formats
 * (engine.md section 2) and SmolLM2-135M's shapes (section 4): the memory
 * plan of the Q4_1 file, the split rule, the graph cache's eviction order.
 * Slot moves are checked against a direct simulation of the ordered copies
 * on random lists. The command-line check runs the real program: with no
 * device it must exit 2 with one line naming why; with one, it must run.
 */
#include "engine/engine.h"
#include "gpu/gpu.h"
#include "gpu/gpuplan.h"
#include "tests/util/tinymodel.h"

#include "test.h"

#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

static const uint8_t dummy_data[16];

/* A tensor of (rows, cols) in type; data points at a dummy (never read). */
static struct tensor fake_tensor(const char *name, uint32_t type, int64_t cols, int64_t rows)
{
	struct tensor t;
	memset(&t, 0, sizeof(t));
	t.name = name;
	t.type = type;
	t.ne[0] = cols;
	t.ne[1] = rows;
	t.ne[2] = t.ne[3] = 1;
	t.data = dummy_data;
	return t;
}

/* SmolLM2-135M's hyper-parameters (engine.md 4.1). */
static void smol_hparams(struct hparams *hp)
{
	memset(hp, 0, sizeof(*hp));
	snprintf(hp->arch, sizeof(hp->arch), "llama");
	hp->n_layer = 30;
	hp->n_ctx_train = 8192;
	hp->n_embd = 576;
	hp->n_ff = 1536;
	hp->n_head = 9;
	hp->n_head_kv = 3;
	hp->head_dim = 64;
	hp->n_rot = 64;
	hp->n_vocab = 49152;
	hp->rms_eps = 1e-5f;
	hp->rope_base = 100000.0f;
	hp->rope_freq_scale = 1.0f;
	hp->attn_scale = 0.125f;
	hp->tied_output = true;
}

/* The Q4_1 file's layout (engine.md 4.4): Q4_1 matrices, F32 norms, a tied
 * Q8_0 embedding. */
static void smol_model(struct model *m, struct layer_weights *layers)
{
	memset(m, 0, sizeof(*m));
	smol_hparams(&m->hp);
	m->tok_embd = fake_tensor("token_embd.weight", DT_Q8_0, 576, 49152);
	m->output = m->tok_embd;
	m->out_norm = fake_tensor("output_norm.weight", DT_F32, 576, 1);
	for (int l = 0; l < 30; l++) {
		struct layer_weights *lw = &layers[l];
		memset(lw, 0, sizeof(*lw));
		lw->attn_norm = fake_tensor("attn_norm", DT_F32, 576, 1);
		lw->ffn_norm = fake_tensor("ffn_norm", DT_F32, 576, 1);
		lw->wq = fake_tensor("attn_q", DT_Q4_1, 576, 576);
		lw->wk = fake_tensor("attn_k", DT_Q4_1, 576, 192);
		lw->wv = fake_tensor("attn_v", DT_Q4_1, 576, 192);
		lw->wo = fake_tensor("attn_output", DT_Q4_1, 576, 576);
		lw->w_gate = fake_tensor("ffn_gate", DT_Q4_1, 576, 1536);
		lw->w_up = fake_tensor("ffn_up", DT_Q4_1, 576, 1536);
		lw->w_down = fake_tensor("ffn_down", DT_Q4_1, 1536, 576);
	}
	m->layers = layers;
}

static void test_weight_kinds(void)
{
	/* the CPU's packed types take q8 activations, the rest f32 */
	T_EQ_INT(gpuplan_weight_kind(DT_Q4_0), GPUPLAN_W_Q8ACT);
	T_EQ_INT(gpuplan_weight_kind(DT_Q4_1), GPUPLAN_W_Q8ACT);
	T_EQ_INT(gpuplan_weight_kind(DT_Q8_0), GPUPLAN_W_Q8ACT);
	static const uint32_t f32act[] = { DT_F32,  DT_F16,  DT_BF16, DT_Q5_0,
		                               DT_Q5_1, DT_Q4_K, DT_Q5_K, DT_Q6_K };
	for (size_t i = 0; i < KVS_ARRAY_LEN(f32act); i++)
		T_EQ_INT(gpuplan_weight_kind(f32act[i]), GPUPLAN_W_F32ACT);
	/* every type the model layer accepts as a weight runs somehow; the
	 * others never */
	for (uint32_t t = 0; t < DT_COUNT_ + 4; t++) {
		const struct dtype_info *di = dtype_info(t);
		bool ok = di != NULL && di->weight_ok;
		enum gpuplan_wkind k = gpuplan_weight_kind(t);
		T_CHECK((k != GPUPLAN_W_NONE) == ok, "type %u (%s): kind %d, weight_ok %d", t,
		        dtype_name(t), (int)k, (int)ok);
		if (k == GPUPLAN_W_HOSTF32)
			T_EQ_INT(gpuplan_device_type(t), DT_F32);
		else if (k != GPUPLAN_W_NONE)
			T_EQ_INT(gpuplan_device_type(t), t);
	}
	/* 576 / 32 = 18 blocks of 20 bytes = 360 bytes a row, 576 rows */
	T_EQ_INT(gpuplan_weight_bytes(DT_Q4_1, 576, 576), 207360);
	/* 1536 / 256 = 6 super-blocks of 210 bytes, 576 rows */
	T_EQ_INT(gpuplan_weight_bytes(DT_Q6_K, 576, 1536), 576 * 6 * 210);
	/* k-quants need whole 256-element rows */
	T_EQ_INT(gpuplan_weight_bytes(DT_Q4_K, 576, 576), 0);
	T_EQ_INT(gpuplan_weight_bytes(DT_Q8_1, 4, 32), 0);
}

static void test_check_model(void)
{
	struct hparams hp;
	struct err e;
	smol_hparams(&hp);
	T_EQ_INT(gpuplan_check_model(&hp, &e), KVS_OK);
	hp.head_dim = 80;
	hp.n_rot = 80;
	T_EQ_INT(gpuplan_check_model(&hp, &e), KVS_EUNSUPPORTED);
	T_CHECK(strstr(e.msg, "head_dim 80") != NULL, "message: %s", e.msg);
	smol_hparams(&hp);
	hp.n_head = 96; /* 32 query heads per KV head */
	T_EQ_INT(gpuplan_check_model(&hp, &e), KVS_EUNSUPPORTED);
	T_CHECK(strstr(e.msg, "32 query heads") != NULL, "message: %s", e.msg);
	smol_hparams(&hp);
	hp.n_ff = 1000;
	T_EQ_INT(gpuplan_check_model(&hp, &e), KVS_EUNSUPPORTED);
	T_CHECK(strstr(e.msg, "n_ff 1000") != NULL, "message: %s", e.msg);
	smol_hparams(&hp);
	hp.n_rot = 63;
	T_EQ_INT(gpuplan_check_model(&hp, &e), KVS_EUNSUPPORTED);
	/* qwen2-0.5B: 14 heads over 2, 64 dims */
	smol_hparams(&hp);
	hp.n_head = 14;
	hp.n_head_kv = 2;
	hp.n_embd = 896;
	hp.n_ff = 4864;
	T_EQ_INT(gpuplan_check_model(&hp, &e), KVS_OK);
}

static void test_plan(void)
{
	static struct layer_weights layers[30];
	struct model m;
	struct gpuplan p;
	struct err e;
	smol_model(&m, layers);
	T_EQ_INT(gpuplan_make(&p, &m, 4096, 80ull << 30, &e), KVS_OK);
	/* per layer: q, o 207360; k, v 192 * 360 = 69120; gate, up, down
	 * 1536 * 360 = 552960; two norms of 2304 (all multiples of 256):
	 * 2216448; x 30 = 66493440. LM head (tied Q8_0): 49152 * 18 * 34 =
	 * 30081024; output norm 2304. */
	T_EQ_INT(p.weights, 66493440ull + 30081024ull + 2304ull);
	/* F16: per layer 2 * 576 * (576 * 2 + 192 * 2 + 1536 * 3) = 7077888,
	 * x 30 = 212336640; LM head 49152 * 576 * 2 = 56623104 */
	T_EQ_INT(p.f16_all, 212336640ull + 56623104ull);
	T_EQ_INT(p.f16_max, 56623104ull);
	/* 23040 bytes a slot (engine.md 4.1) */
	T_EQ_INT(p.kv, 23040ull * 4096);
	T_EQ_INT(p.kv_tmp, 2ull * 4096 * 192 * 2);
	T_EQ_INT(p.kmax, 1536);
	T_EQ_INT(p.ubatch, GPUPLAN_UBATCH);
	/* logits of one step: 512 rows of 49152 floats */
	T_EQ_INT(p.logits, 512ull * 49152 * 4);
	T_CHECK(p.f16_resident, "80 GiB: F16 copies should stay resident");
	T_EQ_INT(p.total,
	         p.weights + p.f16_all + p.kv + p.kv_tmp + p.rope + p.vis + p.act + p.attn + p.logits);

	/* just enough memory for everything but resident copies: dequantise
	 * per use into a scratch of the largest matrix */
	uint64_t base = p.total - p.f16_all;
	uint64_t tight = base + p.f16_max + (300ull << 20);
	T_EQ_INT(gpuplan_make(&p, &m, 4096, tight, &e), KVS_OK);
	T_CHECK(!p.f16_resident, "tight memory: F16 copies should not be resident");
	T_EQ_INT(p.f16, 56623104ull);

	/* too little: one line naming what is needed and what is free */
	T_EQ_INT(gpuplan_make(&p, &m, 4096, 64ull << 20, &e), KVS_EUNSUPPORTED);
	T_CHECK(strstr(e.msg, "MiB of GPU memory") != NULL && strstr(e.msg, "64 MiB free") != NULL,
	        "message: %s", e.msg);

	/* a k-quant on a 576-wide row has no whole blocks: named */
	m.layers[3].wq.type = DT_Q4_K;
	T_EQ_INT(gpuplan_make(&p, &m, 4096, 80ull << 30, &e), KVS_EUNSUPPORTED);
	T_CHECK(strstr(e.msg, "attn_q") != NULL && strstr(e.msg, "Q4_K") != NULL, "message: %s", e.msg);
}

static void test_splits(void)
{
	/* 128 keys: fewer than two splits' worth */
	T_EQ_INT(gpuplan_attn_splits(128, 3, 1, 132, 512), 1);
	/* 4096 keys: 2 * 132 / 3 = 88 blocks wanted, 4096 / 256 = 16 by size */
	T_EQ_INT(gpuplan_attn_splits(4096, 3, 1, 132, 512), 16);
	/* 32768 keys: 128 by size, 88 wanted -> the power of two below, 64 */
	T_EQ_INT(gpuplan_attn_splits(32768, 3, 1, 132, 512), 64);
	/* a prefill step already fills the device */
	T_EQ_INT(gpuplan_attn_splits(512, 3, 512, 132, 512), 1);
	/* 4 queries over 32768 keys: 264 / 12 = 22 -> 16 */
	T_EQ_INT(gpuplan_attn_splits(32768, 3, 4, 132, 512), 16);
	/* the partial buffer bounds queries x splits: 512 / 8 = 64 */
	T_EQ_INT(gpuplan_attn_splits(1u << 20, 3, 8, 10000, 512), 64);
	/* never more than GPUPLAN_MAX_SPLITS */
	T_EQ_INT(gpuplan_attn_splits(1u << 24, 1, 1, 100000, 1u << 20), GPUPLAN_MAX_SPLITS);
	/* empty list, degenerate counts: one split */
	T_EQ_INT(gpuplan_attn_splits(0, 3, 1, 132, 512), 1);
	T_EQ_INT(gpuplan_attn_splits(100, 0, 1, 132, 512), 1);
	/* a power of two everywhere */
	for (uint32_t nv = 1; nv < 70000; nv = nv * 3 + 1) {
		uint32_t s = gpuplan_attn_splits(nv, 3, 1, 132, 512);
		T_CHECK(s >= 1 && (s & (s - 1)) == 0, "n_vis %u: %u splits", nv, s);
	}
}

static int destroyed[16], n_destroyed;

static void record_destroy(void *arg, void *exec)
{
	(void)arg;
	destroyed[n_destroyed++] = (int)(intptr_t)exec;
}

static void test_graph_cache(void)
{
	struct gpugraph_cache gc;
	gpugraph_init(&gc);
	/* keys differ in each component */
	uint64_t keys[] = {
		gpugraph_key(16, 0, 0),
		gpugraph_key(32, 0, 0),
		gpugraph_key(16, 2, 0),
		gpugraph_key(16, 0, GPUGRAPH_ATTN),
		gpugraph_key(16, 0, GPUGRAPH_ATTN_KV),
		gpugraph_key(16, 0, GPUGRAPH_ATTN | GPUGRAPH_ATTN_KV),
		gpugraph_key(1, 2, 3),
		gpugraph_key(128, 1, GPUGRAPH_ATTN),
	};
	for (size_t i = 0; i < KVS_ARRAY_LEN(keys); i++)
		for (size_t j = 0; j < i; j++)
			T_CHECK(keys[i] != keys[j], "graph keys %zu and %zu collide", i, j);
	T_CHECK(gpugraph_find(&gc, 1) == NULL, "empty cache");
	/* fill: graphs are the integers 1..8 */
	for (int i = 1; i <= GPUGRAPH_SLOTS; i++)
		T_CHECK(gpugraph_insert(&gc, (uint64_t)i * 100, (void *)(intptr_t)i) == NULL,
		        "free slot for %d", i);
	/* use all but key 300, the least recent is now 300 */
	for (int i = 1; i <= GPUGRAPH_SLOTS; i++)
		if (i != 3)
			T_EQ_INT((intptr_t)gpugraph_find(&gc, (uint64_t)i * 100), i);
	T_EQ_INT(gc.hits, GPUGRAPH_SLOTS - 1);
	T_EQ_INT((intptr_t)gpugraph_insert(&gc, 900, (void *)(intptr_t)9), 3);
	T_CHECK(gpugraph_find(&gc, 300) == NULL, "evicted key 300 still found");
	T_EQ_INT((intptr_t)gpugraph_find(&gc, 900), 9);
	/* then 100 is the least recent */
	T_EQ_INT((intptr_t)gpugraph_insert(&gc, 1000, (void *)(intptr_t)10), 1);
	T_EQ_INT(gc.captures, GPUGRAPH_SLOTS + 2);
	gpugraph_clear(&gc, record_destroy, NULL);
	T_EQ_INT(n_destroyed, GPUGRAPH_SLOTS);
	int sum = 0;
	for (int i = 0; i < n_destroyed; i++)
		sum += destroyed[i];
	T_EQ_INT(sum, 2 + 4 + 5 + 6 + 7 + 8 + 9 + 10);
	T_CHECK(gpugraph_find(&gc, 900) == NULL, "cleared cache still finds 900");
}

static void test_diff_range(void)
{
	uint32_t a[6] = { 1, 2, 3, 4, 5, 6 }, b[6] = { 1, 2, 3, 4, 5, 6 }, lo, hi;
	gpuplan_diff_range(a, b, 6, &lo, &hi);
	T_CHECK(lo == hi, "equal arrays: [%u, %u)", lo, hi);
	b[5] = 60; /* a decode step: one new slot at the end */
	gpuplan_diff_range(a, b, 6, &lo, &hi);
	T_CHECK(lo == 5 && hi == 6, "[%u, %u), expected [5, 6)", lo, hi);
	b[1] = 20;
	gpuplan_diff_range(a, b, 6, &lo, &hi);
	T_CHECK(lo == 1 && hi == 6, "[%u, %u), expected [1, 6)", lo, hi);
	b[5] = 6;
	gpuplan_diff_range(a, b, 6, &lo, &hi);
	T_CHECK(lo == 1 && hi == 2, "[%u, %u), expected [1, 2)", lo, hi);
	gpuplan_diff_range(a, b, 0, &lo, &hi);
	T_CHECK(lo == hi, "n = 0: [%u, %u)", lo, hi);
}

/* Apply moves simultaneously to contents and compare with the ordered copies. */
static void test_kv_moves(void)
{
	enum { N_CTX = 12 };
	int64_t origin[N_CTX];
	uint32_t od[N_CTX], os[N_CTX];
	bool ov;
	for (int s = 0; s < N_CTX; s++)
		origin[s] = -1;

	/* compaction by one: 1->0, 2->1, 3->2: each later move reads what an
	 * earlier one writes, so the moves overlap */
	uint32_t d1[] = { 0, 1, 2 }, s1[] = { 1, 2, 3 };
	T_EQ_INT(gpuplan_kv_moves(d1, s1, 3, origin, od, os, &ov), 3);
	T_CHECK(ov, "compaction by one should overlap");
	T_CHECK(od[0] == 0 && os[0] == 1 && od[2] == 2 && os[2] == 3, "moves %u<-%u .. %u<-%u", od[0],
	        os[0], od[2], os[2]);
	/* disjoint: no staging needed */
	uint32_t d2[] = { 0, 1 }, s2[] = { 5, 7 };
	T_EQ_INT(gpuplan_kv_moves(d2, s2, 2, origin, od, os, &ov), 2);
	T_CHECK(!ov, "disjoint moves should not overlap");
	/* onto itself: nothing */
	uint32_t d3[] = { 3 }, s3[] = { 3 };
	T_EQ_INT(gpuplan_kv_moves(d3, s3, 1, origin, od, os, &ov), 0);
	/* 0->1 then 1->0: slot 0 gets back its own contents, only 1 <- 0 moves */
	uint32_t d4[] = { 1, 0 }, s4[] = { 0, 1 };
	T_EQ_INT(gpuplan_kv_moves(d4, s4, 2, origin, od, os, &ov), 1);
	T_CHECK(od[0] == 1 && os[0] == 0 && !ov, "move %u<-%u, overlap %d", od[0], os[0], ov);

	/* random lists against a simulation */
	uint64_t rng = 7;
	for (int trial = 0; trial < 2000; trial++) {
		uint32_t n = 1 + (uint32_t)((tinymodel_rand(&rng) + 1.0f) * 8) % 20, dst[20], src[20];
		int ordered[N_CTX], moved[N_CTX];
		for (int s = 0; s < N_CTX; s++)
			ordered[s] = moved[s] = 100 + s;
		for (uint32_t i = 0; i < n; i++) {
			dst[i] = (uint32_t)((tinymodel_rand(&rng) + 1.0f) * N_CTX / 2) % N_CTX;
			src[i] = (uint32_t)((tinymodel_rand(&rng) + 1.0f) * N_CTX / 2) % N_CTX;
			ordered[dst[i]] = ordered[src[i]];
		}
		uint32_t k = gpuplan_kv_moves(dst, src, n, origin, od, os, &ov);
		bool want_ov = false;
		int snapshot[N_CTX];
		memcpy(snapshot, moved, sizeof(moved));
		for (uint32_t i = 0; i < k; i++) {
			moved[od[i]] = snapshot[os[i]];
			for (uint32_t j = 0; j < k; j++)
				want_ov = want_ov || os[i] == od[j];
			T_CHECK(od[i] != os[i], "trial %d: move onto itself", trial);
			for (uint32_t j = 0; j < i; j++)
				T_CHECK(od[i] != od[j], "trial %d: slot %u written twice", trial, od[i]);
		}
		T_CHECK(memcmp(ordered, moved, sizeof(moved)) == 0, "trial %d: moves differ from copies",
		        trial);
		T_CHECK(ov == want_ov, "trial %d: overlap %d, expected %d", trial, ov, want_ov);
		for (int s = 0; s < N_CTX; s++)
			T_CHECK(origin[s] == -1, "trial %d: scratch slot %d left at %lld", trial, s,
			        (long long)origin[s]);
	}
}

/* engine_create on a tiny model: cuda without a device fails with the
 * probe's reason; auto falls back to the CPU. With a device both run CUDA. */
static void test_engine_pick(const struct model *m)
{
	struct gpu_info gi;
	struct err pe, e;
	err_clear(&pe);
	bool have_gpu = gpu_probe(&gi, &pe) == KVS_OK;
	struct engine_config cfg;
	engine_config_default(&cfg);
	cfg.n_threads = 1;
	cfg.n_ctx = 64;
	struct engine *eng = NULL;

	cfg.backend = ENGINE_BACKEND_CUDA;
	int rc = engine_create(&eng, m, &cfg, &e);
	if (have_gpu) {
		T_EQ_INT(rc, KVS_OK);
		if (eng)
			T_EQ_STR(engine_backend_name(eng), "cuda");
	} else {
		T_EQ_INT(rc, KVS_EUNSUPPORTED);
		T_CHECK(strstr(e.msg, "backend cuda") != NULL && strstr(e.msg, pe.msg) != NULL,
		        "message '%s' should name the backend and the probe's '%s'", e.msg, pe.msg);
		T_CHECK(strchr(e.msg, '\n') == NULL, "one line: %s", e.msg);
		T_CHECK(gpu_backend_ops() == NULL || gpu_compiled(), "backend without CUDA");
	}
	engine_free(eng);
	eng = NULL;
	cfg.backend = ENGINE_BACKEND_AUTO;
	T_EQ_INT(engine_create(&eng, m, &cfg, &e), KVS_OK);
	if (eng)
		T_EQ_STR(engine_backend_name(eng), have_gpu ? "cuda" : "cpu");
	engine_free(eng);
}

/* Run cmd; the exit status, and stderr into err (cap bytes). */
static int run_cmd(const char *cmd, char *err, size_t cap)
{
	const char *tmp = getenv("TMPDIR");
	char tpath[512];
	snprintf(tpath, sizeof(tpath), "%s/kvs-gpuhost-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	int fd = mkstemp(tpath);
	if (fd < 0)
		return -1;
	close(fd);
	char full[2048];
	snprintf(full, sizeof(full), "%s >/dev/null 2>'%s'", cmd, tpath);
	int st = system(full);
	FILE *f = fopen(tpath, "rb");
	size_t n = f ? fread(err, 1, cap - 1, f) : 0;
	err[n] = '\0';
	if (f)
		fclose(f);
	unlink(tpath);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* kvscope generate --backend cuda on a tiny model file. */
static void test_cli(void)
{
	const char *bin = getenv("KVSCOPE_BIN");
	T_CHECK(bin != NULL && access(bin, X_OK) == 0,
	        "KVSCOPE_BIN (%s) is not an executable; run under make check", bin ? bin : "unset");
	if (bin == NULL || access(bin, X_OK) != 0)
		return;
	const char *tmp = getenv("TMPDIR");
	char model[512];
	snprintf(model, sizeof(model), "%s/kvs-gpuhost-model-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	int fd = mkstemp(model);
	T_CHECK(fd >= 0, "mkstemp %s", model);
	if (fd < 0)
		return;
	close(fd);
	struct tinymodel_spec spec;
	tinymodel_defaults(&spec, "llama");
	spec.n_embd = 64;
	spec.n_head = 2;
	spec.n_head_kv = 1;
	spec.n_ff = 64;
	struct ggufw *w = ggufw_new();
	tinymodel_add(w, &spec);
	T_EQ_INT(ggufw_write_file(w, model), 0);
	ggufw_free(w);

	struct gpu_info gi;
	struct err pe;
	err_clear(&pe);
	bool have_gpu = gpu_probe(&gi, &pe) == KVS_OK;
	char cmd[1400], err[4096];
	snprintf(cmd, sizeof(cmd),
	         "'%s' generate --backend cuda --model '%s' --prompt hi --max-tokens 2", bin, model);
	int rc = run_cmd(cmd, err, sizeof(err));
	if (have_gpu) {
		T_CHECK(rc == 0, "with a GPU, exit %d: %s", rc, err);
	} else {
		T_CHECK(rc == 2, "without a GPU, exit %d, expected 2: %s", rc, err);
		size_t len = strlen(err);
		T_CHECK(len > 0 && err[len - 1] == '\n' && strchr(err, '\n') == err + len - 1,
		        "expected exactly one line on stderr: '%s'", err);
		T_CHECK(strstr(err, "cuda") != NULL && strstr(err, pe.msg) != NULL,
		        "stderr '%s' should name the backend and the probe's '%s'", err, pe.msg);
	}
	/* auto runs anyway */
	snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --prompt hi --max-tokens 2", bin, model);
	rc = run_cmd(cmd, err, sizeof(err));
	T_CHECK(rc == 0, "--backend auto: exit %d: %s", rc, err);

	struct model *m = NULL;
	struct err e;
	T_EQ_INT(model_load(&m, model, &e), KVS_OK);
	if (m != NULL)
		test_engine_pick(m);
	model_free(m);
	unlink(model);
}

/* A decode step's launches, counted by hand from cuda_backend.cu's
 * enqueue for the default model's 30 layers. */
static void test_launches(void)
{
	struct gpuplan_step_shape s = { .n_layer = 30, .fuse = true, .lm = true };
	/* angles, embedding, norm; per layer q/k/v, attention + merge, output
	 * + norm, gate/up, down + norm; LM head: 3 + 30 * 5 + 1 */
	T_EQ_INT(gpuplan_launches(&s), 154);
	/* session 8's fusion (merge in its own launch): 6 per layer */
	s.fuse = false;
	/* unfused: q/k/v, attention, merge, output, norm, gate/up, down, norm */
	T_EQ_INT(gpuplan_launches(&s), 3 + 30 * 8 + 1);
	s.lm = false; /* the last down needs no next norm */
	T_EQ_INT(gpuplan_launches(&s), 3 + 30 * 8 - 1);
	s.fuse = true;
	T_EQ_INT(gpuplan_launches(&s), 3 + 30 * 5);
	/* Quest, 2 dense layers: bounds once, bound + pick in 28 layers */
	s.lm = true;
	s.sparse = ENGINE_SPARSE_QUEST;
	s.dense_layers = 2;
	T_EQ_INT(gpuplan_launches(&s), 154 + 1 + 28 * 2);
	/* HiP reusing: a pick per sparse layer; searching: bounds, and bound +
	 * search + pick */
	s.sparse = ENGINE_SPARSE_HIP;
	T_EQ_INT(gpuplan_launches(&s), 154 + 28);
	s.search = true;
	T_EQ_INT(gpuplan_launches(&s), 154 + 1 + 28 * 3);
	/* want_attn: a shadow attention in each sparse layer, the
	 * normalisation; want_attn_kv: a memset and a pass per layer */
	s.attn = true;
	T_EQ_INT(gpuplan_launches(&s), 154 + 1 + 28 * 3 + 28 + 1);
	s.attn_kv = true;
	T_EQ_INT(gpuplan_launches(&s), 154 + 1 + 28 * 3 + 28 + 1 + 1 + 30);
	/* squeezed never reaches the device: counted dense */
	struct gpuplan_step_shape q = {
		.n_layer = 30, .fuse = true, .lm = true, .sparse = ENGINE_SPARSE_SQUEEZED, .dense_layers = 2
	};
	T_EQ_INT(gpuplan_launches(&q), 154);
}

int main(void)
{
	test_launches();
	test_weight_kinds();
	test_check_model();
	test_plan();
	test_splits();
	test_graph_cache();
	test_diff_range();
	test_kv_moves();
	test_cli();
	return t_done("test-gpu-host");
}
