/*
 * bench-capture.c: what KV-cache introspection costs a decode step, without
 * any writer in the way (bench/kv-capture.sh measures the JSON trace).
 *
 *   make bench/bench-capture && bench/bench-capture [MODEL] [TOKENS] [REPS]
 *
 * Decodes TOKENS tokens greedily after a fixed prompt on one thread, REPS
 * times in each mode, the modes alternated run by run, and prints the
 * median process CPU time per token of each mode and its ratio to "off"
 * (CPU time, so a busy machine slows the run but barely the ratios). A
 * consumer copies every step event's arrays, as the workbench's worker
 * queue does. Modes: off (policy full, no capture, no token statistics);
 * stats (per-token surprisal and entropy only); summary and full capture
 * at every step and at most every 33 ms (the workbench's budget); sirllm
 * (its scores need the token statistics).
 */
#include "app/app.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct mode {
	const char *name;
	const char *policy;
	enum kv_capture capture;
	double every_ms;
	enum kv_stats_mode stats;
};

static const struct mode modes[] = {
	{ "off", "full", KV_CAPTURE_OFF, 0, KV_TOKSTATS_OFF },
	{ "stats", "full", KV_CAPTURE_OFF, 0, KV_TOKSTATS_ON },
	{ "summary", "full", KV_CAPTURE_SUMMARY, 0, KV_TOKSTATS_AUTO },
	{ "summary33", "full", KV_CAPTURE_SUMMARY, 33, KV_TOKSTATS_AUTO },
	{ "full", "full", KV_CAPTURE_FULL, 0, KV_TOKSTATS_AUTO },
	{ "full33", "full", KV_CAPTURE_FULL, 33, KV_TOKSTATS_AUTO },
	{ "sirllm", "sirllm", KV_CAPTURE_OFF, 0, KV_TOKSTATS_AUTO },
};
#define N_MODES (sizeof modes / sizeof modes[0])

/* The consumer: a deep copy of what a step event points to. */
struct sink {
	float *buf;
	size_t cap;
	uint64_t n_events;
};

static void sink_event(const struct kv_event *ev, void *ud)
{
	struct sink *s = ud;
	if (ev->kind != KV_EVENT_STEP)
		return;
	size_t nh = (size_t)ev->n_layer * ev->n_head;
	size_t need = nh * (sizeof(struct kv_head_summary) / sizeof(float)) +
	        (ev->attn ? nh * ev->n_cached : 0);
	if (need > s->cap) {
		free(s->buf);
		s->cap = need * 2;
		s->buf = xmallocarray(s->cap, sizeof(float));
	}
	memcpy(s->buf, ev->heads, nh * sizeof(struct kv_head_summary));
	if (ev->attn)
		memcpy(s->buf + nh * (sizeof(struct kv_head_summary) / sizeof(float)), ev->attn,
		       nh * ev->n_cached * sizeof(float));
	s->n_events++;
}

static double cpu_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* One run: ms of CPU per decoded token; *events counts step events. */
static double run(const char *model, const struct mode *md, uint32_t n_tok, uint64_t *events)
{
	static const char prompt[] =
	        "The lighthouse keeper climbed the stairs every evening, counting the steps "
	        "and listening to the sea. One night he found a bottle on the rocks below.";
	struct gen_config c;
	struct gen *g;
	struct err e;
	struct sink s = { 0 };

	gen_config_default(&c);
	c.model_path = model;
	c.engine.n_threads = 1;
	c.engine.backend = ENGINE_BACKEND_CPU;
	c.engine.n_ctx = 1024;
	c.sampler.temp = 0;
	if (kv_policy_parse(md->policy, &c.kv.policy, &e) != KVS_OK)
		goto fail;
	c.kv.capture = md->capture;
	c.kv.capture_interval_ms = md->every_ms;
	c.kv.token_stats = md->stats;
	if (gen_open(&g, &c, &e) != KVS_OK)
		goto fail;
	kv_cache_set_events(gen_kv(g), sink_event, &s);
	int32_t *ids = NULL;
	size_t n = 0, cap = 0;
	if (vocab_tokenize(gen_vocab(g), prompt, strlen(prompt), false, false, &ids, &n, &cap, &e) !=
	            KVS_OK ||
	    gen_feed(g, ids, n, &e) != KVS_OK)
		goto fail;
	free(ids);
	double t0 = cpu_s();
	for (uint32_t i = 0; i < n_tok; i++) {
		int32_t id = gen_sample(g);
		if (gen_feed(g, &id, 1, &e) != KVS_OK)
			goto fail;
	}
	double ms = (cpu_s() - t0) * 1e3 / n_tok;
	*events = s.n_events;
	free(s.buf);
	gen_close(g);
	return ms;
fail:
	fprintf(stderr, "bench-capture: %s\n", e.msg);
	exit(1);
}

int main(int argc, char **argv)
{
	char *model = model_default_path(argc > 1 ? argv[1] : NULL);
	uint32_t n_tok = argc > 2 ? (uint32_t)atoi(argv[2]) : 256;
	int reps = argc > 3 ? atoi(argv[3]) : 5;
	double t[N_MODES][64];
	uint64_t ev[N_MODES] = { 0 };

	if (model == NULL || n_tok == 0 || reps < 1 || reps > 64) {
		fprintf(stderr, "usage: bench-capture [MODEL] [TOKENS > 0] [REPS 1..64]\n");
		return 2;
	}
	for (int r = 0; r < reps; r++)
		for (size_t m = 0; m < N_MODES; m++)
			t[m][r] = run(model, &modes[m], n_tok, &ev[m]);
	printf("bench-capture: %u tokens after a 33-token prompt, 1 thread, median of %d runs "
	       "(process CPU ms per token)\n",
	       n_tok, reps);
	printf("| mode | ms/token | tok/s | vs off | step events per run |\n|---|---|---|---|---|\n");
	double base = 0;
	for (size_t m = 0; m < N_MODES; m++) {
		qsort(t[m], (size_t)reps, sizeof(double), cmp_double);
		double med = t[m][reps / 2];
		if (m == 0)
			base = med;
		printf("| %s | %.3f | %.1f | %.3f | %llu |\n", modes[m].name, med, 1e3 / med, med / base,
		       (unsigned long long)ev[m]);
	}
	free(model);
	return 0;
}
