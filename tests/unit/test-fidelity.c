/*
 * test-fidelity.c: the CPU engine against llama.cpp on the default model.
 *
 * Fixtures (tests/fixtures/engine/README.md says how they were made):
 *  - logits/NAME.jsonl: llama.cpp's top-10 logits at every position of six
 *    varied texts (2,132 positions).
 *  - greedy/greedy-64.jsonl: 64 greedy steps for 10 chat prompts.
 *
 * Why the bars are conditioned on llama.cpp's top-2 gap: both engines round
 * activations to 8 bits per 32-block, and that rounding is discontinuous. A
 * difference at the level of one float rounding (we measured: scaling our
 * own quantiser's multiplier by 1 + 3e-7) flips some block's rounding in a
 * middle layer and changes the top-1 token at about 4.6 % of these positions
 * against our own unperturbed output; our exact f32 path is as far from
 * llama.cpp as our int8 path. So no independent implementation can agree with
 * llama.cpp on every near tie; what we can and do require is agreement
 * wherever the decision is not a near tie for llama.cpp itself:
 *  - top-1 agreement >= 99.5 % at positions where llama.cpp's top-2 gap is
 *    >= 0.5 (about 70 % of positions; the |Δlogit| p99 is ~0.6);
 *  - overall top-1 agreement >= 95 % and max |Δlogit| < 2 (regression guards);
 *  - greedy decoding teacher-forced on llama.cpp's 640 greedy tokens, one
 *    decode step at a time: our argmax equals llama.cpp's at every step
 *    where its gap is >= 0.5 (>= 99.5 % of such steps); free-running greedy
 *    runs must only diverge at steps where llama.cpp's gap is < 0.5.
 *
 * How far apart two faithful engines land is measured, not assumed: the
 * *-avx2 fixtures are the same llama.cpp commit built for AVX2 instead of
 * AVX-512, on the same machine. The test reads both sets and requires our
 * overall top-1 agreement with the reference to be within BUILD_MARGIN
 * points of that build's (it agrees with its AVX-512 twin on 96.8 % of
 * positions and on 0 of the 10 free-running continuations).
 * Needs the default model: it fails with a clear message when it is absent,
 * unless KVSCOPE_SKIP_MODEL_TESTS=1 (then it is reported as skipped).
 */
#include "engine/engine.h"
#include "test.h"
#include "tests/util/refdata.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TOPK REFDATA_TOPK

/* Path of a fixture under the source tree. */
static char *fixture(const char *rel)
{
	const char *src = getenv("KVSCOPE_SRCDIR");
	return xasprintf("%s/tests/fixtures/engine/%s", src ? src : ".", rel);
}

static char *model_path(void)
{
	return model_default_path(NULL);
}

#define GAP_MIN 0.5f     /* "not a near tie" for llama.cpp */
#define BUILD_MARGIN 1.5 /* points of top-1 agreement below llama.cpp's own AVX2 build */


/* Read a logits fixture (under tests/fixtures/engine) into *out; its
 * position count, or 0 (the test failed). */
static size_t load_logits(const char *name, struct ref_pos **out)
{
	char *path = fixture(name);
	struct err e;
	size_t n = refdata_read_logits(path, out, &e);
	T_CHECK(n > 0, "%s", e.msg);
	free(path);
	return n;
}

/* The largest |difference| between two top-10 lists over the ids in both. */
static double top_diff(const struct ref_pos *a, const struct ref_pos *b)
{
	double mx = 0.0;
	for (int i = 0; i < TOPK; i++)
		for (int j = 0; j < TOPK; j++)
			if (a->top_id[i] == b->top_id[j] && fabs(a->top_logit[i] - b->top_logit[j]) > mx)
				mx = fabs(a->top_logit[i] - b->top_logit[j]);
	return mx;
}

/* llama.cpp's AVX2 build against its AVX-512 build, fixture NAME (logits/ and
 * logits-avx2/): adds to the position and agreement counts. */
static void check_builds_file(const char *name, uint64_t *n_pos, uint64_t *n_agree,
                              double *max_diff)
{
	char *rel_a = xasprintf("logits/%s", name), *rel_b = xasprintf("logits-avx2/%s", name);
	struct ref_pos *a, *b;
	size_t na = load_logits(rel_a, &a), nb = load_logits(rel_b, &b);
	T_CHECK(na > 0 && na == nb, "%s: %zu positions against %zu in the AVX2 build's", name, na, nb);
	for (size_t i = 0; na == nb && i < na; i++) {
		T_CHECK(a[i].token == b[i].token, "%s: token %zu differs between builds", name, i);
		*n_agree += a[i].top_id[0] == b[i].top_id[0];
		double d = top_diff(&a[i], &b[i]);
		*max_diff = d > *max_diff ? d : *max_diff;
	}
	*n_pos += na == nb ? na : 0;
	free(a);
	free(b);
	free(rel_a);
	free(rel_b);
}

/* Run the engine over every position of one fixture file. */
static void check_logits_file(struct engine *eng, const char *name, struct ref_tally *t)
{
	char *rel = xasprintf("logits/%s", name);
	struct ref_pos *ref;
	size_t n = load_logits(rel, &ref);
	struct err e;
	double file_max;
	uint64_t agree;

	free(rel);
	if (n == 0)
		return;
	T_CHECK(refdata_score(eng, ref, n, GAP_MIN, t, &file_max, &agree, &e) == KVS_OK,
	        "%s: forward failed: %s", name, e.msg);
	printf("  %-22s %4zu positions, top-1 agreement %5.1f %%, max |dlogit| %.4f\n", name, n,
	       100.0 * agree / (double)n, file_max);
	free(ref);
}

/* llama.cpp's AVX2 build against its AVX-512 build on the 10 greedy runs:
 * the continuations it keeps identical, and where the others part. */
static int check_builds_greedy(void)
{
	char *pa = fixture("greedy/greedy-64.jsonl"), *pb = fixture("greedy/greedy-64-avx2.jsonl");
	char *ta = NULL, *tb = NULL, *sa, *sb;
	size_t len;
	struct err e;
	int n = 0, same = 0;

	T_CHECK(file_read_all(pa, &ta, &len, &e) == KVS_OK, "%s", e.msg);
	T_CHECK(ta == NULL || file_read_all(pb, &tb, &len, &e) == KVS_OK, "%s", e.msg);
	char *la = ta && tb ? strtok_r(ta, "\n", &sa) : NULL, *lb = la ? strtok_r(tb, "\n", &sb) : NULL;
	for (; la && lb; la = strtok_r(NULL, "\n", &sa), lb = strtok_r(NULL, "\n", &sb)) {
		int32_t pra[512], prb[512], ga[64], gb[64];
		float gap[64];
		size_t npa = refdata_ints(la, "\"prompt\"", pra, 512);
		size_t npb = refdata_ints(lb, "\"prompt\"", prb, 512);
		T_CHECK(npa > 0 && npa == npb && memcmp(pra, prb, npa * sizeof *pra) == 0,
		        "greedy run %d: the builds' prompts differ", n + 1);
		T_CHECK(refdata_ints(la, "\"greedy\"", ga, 64) == 64 &&
		                refdata_ints(lb, "\"greedy\"", gb, 64) == 64 &&
		                refdata_floats(la, "\"gap\"", gap, 64) == 64,
		        "bad greedy fixture line");
		n++;
		int s = 0;
		while (s < 64 && ga[s] == gb[s])
			s++;
		if (s == 64)
			same++;
		else
			printf("  llama.cpp AVX2 build, prompt %d: diverges at step %d (AVX-512 build's "
			       "top-2 gap %.4f)\n",
			       n, s, gap[s]);
	}
	T_EQ_INT(n, 10);
	free(ta);
	free(tb);
	free(pa);
	free(pb);
	return same;
}

/* Greedy steps, teacher-forced on llama.cpp's tokens and free-running. */
static void check_greedy(struct engine *eng)
{
	char *path = fixture("greedy/greedy-64.jsonl"), *text;
	size_t len;
	struct err e;
	int n_prompts = 0, n_same = 0, n_steps = 0, n_steps_clear = 0, n_agree_clear = 0;
	uint32_t n_vocab = engine_model(eng)->hp.n_vocab;

	if (file_read_all(path, &text, &len, &e) != KVS_OK) {
		T_CHECK(0, "%s", e.msg);
		free(path);
		return;
	}
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		int32_t prompt[512], want[64], pos[512];
		uint32_t slot[512];
		float gap[64];
		size_t np = refdata_ints(line, "\"prompt\"", prompt, 512);
		size_t ng = refdata_ints(line, "\"greedy\"", want, 64);
		size_t nq = refdata_floats(line, "\"gap\"", gap, 64);
		T_CHECK(np > 0 && ng == 64 && nq == 64, "bad greedy fixture line");
		for (size_t i = 0; i < np; i++) {
			pos[i] = (int32_t)i;
			slot[i] = (uint32_t)i;
		}
		n_prompts++;
		/* Pass 1: teacher-forced on llama.cpp's tokens. */
		for (int pass = 0; pass < 2; pass++) {
			struct engine_batch b = { .n_tokens = (uint32_t)np,
				                      .tokens = prompt,
				                      .pos = pos,
				                      .slot = slot,
				                      .n_visible = (uint32_t)np,
				                      .logits = ENGINE_LOGITS_LAST };
			struct engine_out out;
			const float *row;
			int diverged = -1;

			engine_kv_clear(eng);
			row = engine_forward(eng, &b, &out, &e) == KVS_OK ? out.logits : NULL;
			for (size_t s = 0; row != NULL && s < ng; s++) {
				int32_t best = refdata_argmax(row, n_vocab);
				if (pass == 0) {
					n_steps++;
					if (gap[s] >= GAP_MIN) {
						n_steps_clear++;
						n_agree_clear += best == want[s];
					}
					best = want[s]; /* follow llama.cpp */
				} else if (best != want[s]) {
					diverged = (int)s;
					break;
				}
				row = refdata_decode_one(eng, best, (int32_t)(np + s), &e);
			}
			T_CHECK(row != NULL, "greedy forward failed: %s", e.msg);
			if (pass == 1 && diverged < 0)
				n_same++;
			if (pass == 1 && diverged >= 0) {
				printf("  prompt %d: free-running greedy diverges at step %d (llama.cpp top-2 gap "
				       "%.4f)\n",
				       n_prompts, diverged, gap[diverged]);
				T_CHECK(gap[diverged] < GAP_MIN,
				        "prompt %d diverges at step %d where llama.cpp's top-2 gap is %.4f (>= "
				        "%.1f)",
				        n_prompts, diverged, gap[diverged], GAP_MIN);
			}
		}
	}
	double clear = 100.0 * n_agree_clear / (n_steps_clear ? n_steps_clear : 1);
	printf("  greedy, teacher-forced: %d steps, %d with llama.cpp gap >= %.1f, argmax agreement "
	       "there %.2f %%\n",
	       n_steps, n_steps_clear, GAP_MIN, clear);
	printf("  greedy, free-running: %d of %d continuations identical for 64 tokens\n", n_same,
	       n_prompts);
	T_EQ_INT(n_prompts, 10);
	T_EQ_INT(n_steps, 640);
	T_CHECK(clear >= 99.5, "teacher-forced greedy agreement %.2f %% < 99.5 %%", clear);
	free(text);
	free(path);
}

int main(void)
{
	static const char *const files[] = {
		"01-prose.jsonl",   "02-code.jsonl",      "03-chat.jsonl",
		"04-numbers.jsonl", "05-languages.jsonl", "06-list.jsonl"
	};
	char *path = model_path();
	struct model *m = NULL;
	struct engine *eng = NULL;
	struct engine_config cfg;
	struct err e;
	struct ref_tally t = { 0, 0, 0, 0, 0.0 };

	if (access(path, R_OK) != 0) {
		const char *skip = getenv("KVSCOPE_SKIP_MODEL_TESTS");
		fprintf(stderr, "test-fidelity: the default model is not at %s (run `make model`)\n", path);
		free(path);
		return skip && strcmp(skip, "1") == 0 ? 77 : 1;
	}
	T_CHECK(model_load(&m, path, &e) == KVS_OK, "model_load: %s", e.msg);
	free(path);
	if (m == NULL)
		return t_done("test-fidelity");
	engine_config_default(&cfg);
	cfg.n_ctx = 1024;
	if (getenv("KVSCOPE_TEST_REFERENCE") != NULL)
		cfg.reference = true; /* compare the scalar reference path instead */
	T_CHECK(engine_create(&eng, m, &cfg, &e) == KVS_OK, "engine_create: %s", e.msg);
	if (eng == NULL)
		return t_done("test-fidelity");
	printf("test-fidelity: engine %s/%s, %d threads\n", engine_backend_name(eng),
	       engine_isa_name(eng), engine_n_threads(eng));
	uint64_t b_pos = 0, b_agree = 0;
	double b_max = 0.0;
	for (size_t i = 0; i < KVS_ARRAY_LEN(files); i++)
		check_builds_file(files[i], &b_pos, &b_agree, &b_max);
	double builds = 100.0 * (double)b_agree / (double)(b_pos ? b_pos : 1);
	printf("  llama.cpp's AVX2 build against its AVX-512 build: %llu positions, top-1 agreement "
	       "%.2f %%, max |dlogit| %.4f\n",
	       (unsigned long long)b_pos, builds, b_max);
	for (size_t i = 0; i < KVS_ARRAY_LEN(files); i++)
		check_logits_file(eng, files[i], &t);
	double agree = 100.0 * (double)t.n_agree / (double)(t.n_pos ? t.n_pos : 1);
	printf("  all: %llu positions, top-1 agreement %.2f %%, max |dlogit| %.4f\n",
	       (unsigned long long)t.n_pos, agree, t.max_diff);
	T_CHECK(agree >= builds - BUILD_MARGIN,
	        "top-1 agreement %.2f %% is more than %.1f points below llama.cpp's own AVX2 build's "
	        "(%.2f %%)",
	        agree, BUILD_MARGIN, builds);
	T_CHECK(t.n_pos >= 2000, "only %llu positions in the fixtures", (unsigned long long)t.n_pos);
	double clear = 100.0 * (double)t.n_clear_agree / (double)(t.n_clear ? t.n_clear : 1);
	printf("  positions where llama.cpp's top-2 gap >= %.1f: %llu, top-1 agreement %.2f %%\n",
	       GAP_MIN, (unsigned long long)t.n_clear, clear);
	T_CHECK(clear >= 99.5, "top-1 agreement %.2f %% < 99.5 %% where llama.cpp's gap >= %.1f", clear,
	        GAP_MIN);
	T_CHECK(agree >= 95.0, "overall top-1 agreement %.2f %% < 95 %%", agree);
	/* On these logits (|l| ~ 10-30) a difference of 2 would mean a defect.
	 * Observed: 1.42 with keys rounded to f16 before RoPE; 2.13 with them
	 * rounded after it (as llama.cpp's cache does); 1.49 with the query
	 * rounded to f16 as well (as llama.cpp's f16 product does). */
	T_CHECK(t.max_diff < 2.0, "max |dlogit| %.4f >= 2.0", t.max_diff);
	check_greedy(eng);
	printf("  greedy, llama.cpp's AVX2 build against its AVX-512 build: %d of 10 continuations "
	       "identical\n",
	       check_builds_greedy());
	engine_free(eng);
	model_free(m);
	return t_done("test-fidelity");
}
