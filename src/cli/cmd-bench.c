/*
 * cmd-bench.c: `kvscope bench`, prefill and decode speed the way llama-bench
 * measures them, so the two can be run side by side: "pp N" feeds N random
 * tokens as one batch into an empty cache; "tg N" decodes N random tokens one
 * at a time from an empty cache. With -d D the cache first takes D tokens
 * (prefilled once per test in --batch chunks, not timed) and every run of
 * the test goes on top of them, as llama-bench's -d: "tg128@d2048" is
 * decode with 2048 tokens cached. Each test runs --reps times after one
 * warm-up and reports the median (and the spread) in tokens per second,
 * plus the model load time and the peak resident memory of the process.
 */
#include "cli/opts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static enum cli_exit cmd_bench_exec(struct cli_opts *o);

const struct cli_cmd cmd_bench = {
	.name = "bench",
	.usage = "[--model PATH] [-p 512] [-n 128] [-d 0] [-r 5] [-t N] [--json]",
	.help = "prefill (pp) and decode (tg) tokens per second, median of repetitions, as "
	        "llama-bench",
	.exec = cmd_bench_exec,
	.options = OPTG_MODEL | OPTG_ENGINE | OPTG_BENCH,
};

static int bench_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Feed toks[from, to) at their own positions in chunks of batch tokens. */
static int bench_feed(struct gen *g, const int32_t *toks, uint32_t from, uint32_t to,
                      uint32_t batch, struct err *e)
{
	struct engine *eng = gen_engine(g);
	int rc = KVS_OK;

	for (uint32_t done = from; done < to && rc == KVS_OK;) {
		uint32_t m = KVS_MIN(batch, to - done);
		struct engine_out out;
		rc = gen_run_linear(eng, toks + done, done, m, ENGINE_LOGITS_LAST, &out, e);
		done += m;
	}
	return rc;
}

/* One timed run: n tokens in batches of batch (1 = decode) at positions
 * depth.., in seconds. Slots are positions and a batch sees the slots below
 * its end, so a run over the depth tokens of an earlier one sees exactly
 * those: only an empty depth needs a clear. */
static int bench_run(struct gen *g, const int32_t *toks, uint32_t depth, uint32_t n, uint32_t batch,
                     double *secs, struct err *e)
{
	if (depth == 0)
		engine_kv_clear(gen_engine(g));
	double t0 = clock_now_s();
	int rc = bench_feed(g, toks, depth, depth + n, batch, e);
	*secs = clock_now_s() - t0;
	return rc;
}

struct bench_result {
	char test[48]; /* "pp512", or "tg128@d2048" with a depth */
	double median_tps, min_tps, max_tps;
};

/* Run one test reps times (after a warm-up) and summarise it. */
static int bench_test(struct gen *g, const char *name, const int32_t *toks, uint32_t depth,
                      uint32_t depth_batch, uint32_t n, uint32_t batch, uint32_t reps,
                      struct bench_result *r, struct err *e)
{
	double *tps = xmallocarray(reps, sizeof *tps), secs;
	/* the depth once (untimed), then the warm-up */
	engine_kv_clear(gen_engine(g));
	int rc = bench_feed(g, toks, 0, depth, depth_batch, e);
	if (rc == KVS_OK)
		rc = bench_run(g, toks, depth, n, batch, &secs, e);

	for (uint32_t i = 0; i < reps && rc == KVS_OK; i++) {
		rc = bench_run(g, toks, depth, n, batch, &secs, e);
		tps[i] = n / secs;
	}
	if (rc == KVS_OK) {
		qsort(tps, reps, sizeof *tps, bench_cmp);
		if (depth > 0)
			snprintf(r->test, sizeof r->test, "%s%u@d%u", name, n, depth);
		else
			snprintf(r->test, sizeof r->test, "%s%u", name, n);
		r->median_tps = reps % 2 ? tps[reps / 2] : 0.5 * (tps[reps / 2 - 1] + tps[reps / 2]);
		r->min_tps = tps[0];
		r->max_tps = tps[reps - 1];
	}
	free(tps);
	return rc;
}

static enum cli_exit cmd_bench_exec(struct cli_opts *o)
{
	struct gen *g = NULL;
	struct err e;
	struct bench_result res[2];
	int n_res = 0;
	enum cli_exit rc;
	int32_t *toks = NULL;
	struct rusage ru;

	uint32_t depth = o->n_depth, need = depth + KVS_MAX(o->n_prompt, o->n_gen);
	if (!cli_opts_given(o, "ctx"))
		o->gen.engine.n_ctx = KVS_MAX(need, 16u);
	uint32_t depth_batch = o->gen.n_batch; /* the depth goes in as a prompt would */
	if (o->gen.n_batch < o->n_prompt && o->gen.n_batch == 512)
		o->gen.n_batch = o->n_prompt; /* pp N is one batch, as in llama-bench */
	rc = cli_gen_open(o, &g);
	if (rc != CLI_OK)
		goto out;
	if (need > gen_n_ctx(g)) {
		err_set(&e, KVS_ERANGE, "-d/-p/-n of %u tokens exceed --ctx %u", need, gen_n_ctx(g));
		rc = cli_fail(&e);
		goto out;
	}
	/* Random token ids (fixed seed), as llama-bench uses. */
	{
		struct mt19937 r;
		mt19937_seed(&r, 42);
		toks = xmallocarray(need ? need : 1, sizeof *toks);
		for (uint32_t i = 0; i < need; i++)
			toks[i] = (int32_t)(mt19937_next(&r) % gen_n_vocab(g));
	}
	if (o->n_prompt > 0) {
		if (bench_test(g, "pp", toks, depth, depth_batch, o->n_prompt, o->gen.n_batch, o->reps,
		               &res[n_res], &e) != KVS_OK) {
			rc = cli_fail(&e);
			goto out;
		}
		n_res++;
	}
	if (o->n_gen > 0) {
		if (bench_test(g, "tg", toks, depth, depth_batch, o->n_gen, 1, o->reps, &res[n_res], &e) !=
		    KVS_OK) {
			rc = cli_fail(&e);
			goto out;
		}
		n_res++;
	}
	getrusage(RUSAGE_SELF, &ru);
	const struct model *m = gen_model(g);
	struct engine *eng = gen_engine(g);
	struct gen_timing tm;
	gen_timings(g, &tm);
	double size_mib = (double)m->gguf->size / (1024.0 * 1024.0);
	if (o->json) {
		printf("{\"model\":\"%s\",\"file_mib\":%.2f,\"backend\":\"%s\",\"isa\":\"%s\","
		       "\"threads\":%d,\"load_ms\":%.1f,\"peak_rss_mib\":%.1f,\"reps\":%u,\"tests\":[",
		       m->name, size_mib, engine_backend_name(eng), engine_isa_name(eng),
		       engine_n_threads(eng), tm.load_ms, ru.ru_maxrss / 1024.0, o->reps);
		for (int i = 0; i < n_res; i++)
			printf("%s{\"test\":\"%s\",\"tps_median\":%.2f,\"tps_min\":%.2f,\"tps_max\":%.2f}",
			       i ? "," : "", res[i].test, res[i].median_tps, res[i].min_tps, res[i].max_tps);
		printf("]}\n");
	} else {
		printf("| model | size | backend | threads | test | t/s (median of %u) | min | max |\n",
		       o->reps);
		printf("| --- | ---: | --- | ---: | --- | ---: | ---: | ---: |\n");
		for (int i = 0; i < n_res; i++)
			printf("| %s | %.2f MiB | %s/%s | %d | %s | %.2f | %.2f | %.2f |\n", m->name, size_mib,
			       engine_backend_name(eng), engine_isa_name(eng), engine_n_threads(eng),
			       res[i].test, res[i].median_tps, res[i].min_tps, res[i].max_tps);
		printf("\nload %.1f ms, peak RSS %.1f MiB\n", tm.load_ms, ru.ru_maxrss / 1024.0);
	}
	rc = fflush(stdout) == 0 ? CLI_OK : CLI_FAIL;
out:
	free(toks);
	gen_close(g);
	return rc;
}
