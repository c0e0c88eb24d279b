/*
 * bench-policy.c: what each retention policy costs a turn, per 1k cached
 * tokens.
 *
 *   make bench/bench-policy && bench/bench-policy [MODEL] [TURNS] [BUDGETS...]
 *   BENCH_POLICIES="kvzip snapkv:heads=1" bench/bench-policy ...  (window and those only)
 *
 * For each budget (default 1024 and 4096 tokens) and each evicting policy
 * (spans on, the default), the cache is filled to the budget with text
 * (untimed), then TURNS user turns of 64 tokens are fed (default 6), each
 * of which must evict 64 tokens. A turn's cost is the process CPU time of
 * gen_begin_turn + gen_feed, one thread, so a busy machine slows the run
 * but barely the differences. "window" (drop the oldest: no scores, no
 * statistics) is the baseline: what a policy costs is its median turn
 * minus window's, and that per 1k cached tokens; it includes what the
 * policy makes the forward pass do (token statistics for sirllm,
 * attention sums for h2o, the vote's extra forward for snapkv, the
 * re-read of the turn, or with reread=all of the whole cache, for kvzip,
 * and with heads=1 the per-head
 * selections and masks). "full"
 * feeds the same turns into a budget that never evicts, for reference (its
 * cache grows by the turns and its prefill is not chunked to a quarter of
 * the budget, so it is not the baseline).
 */
#include "app/app.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TURN_TOKENS 64
#define MAX_TURNS 64

static const char *const policies[] = {
	"window",
	"streaming",
	"lminfinite",
	"sirllm",
	"h2o",
	"h2o:heads=1",
	"snapkv",
	"snapkv:heads=1",
	"snapkv:rank=max,carry=1,pos=compact",
	"snapkv:heads=1,spread=3,store=heads",
	"snapkv:heads=1,alloc=adaptive,spread=3,store=heads",
	"kvzip",
	"kvzip:heads=1",
	"kvzip:heads=1,spread=3,store=heads",
	"kvzip:heads=1,alloc=adaptive,spread=3,store=heads",
	"kvzip:reread=all",
	"full",
};
#define N_POLICIES (sizeof policies / sizeof policies[0])

/* Whether policy p is to run: every one, or with BENCH_POLICIES set (names
 * separated by spaces) window and the ones it names. */
static bool wanted(size_t p)
{
	const char *only = getenv("BENCH_POLICIES");
	size_t len = strlen(policies[p]);
	if (p == 0 || only == NULL || *only == '\0')
		return true;
	for (const char *s = only; (s = strstr(s, policies[p])) != NULL; s += len)
		if ((s == only || s[-1] == ' ') && (s[len] == ' ' || s[len] == '\0'))
			return true;
	return false;
}

static double cpu_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Text of at least n tokens: numbered sentences with names and numbers, so
 * that spans and scores vary as in a dialogue. */
static int32_t *filler(struct gen *g, uint32_t n, struct err *e)
{
	static const char *const who[] = { "Mara", "Teodor", "the keeper", "Ines", "the pilot" };
	static const char *const did[] = { "counted", "painted", "carried", "mended", "sold" };
	size_t len = 0, bytes = (size_t)n * 12 + 256;
	char *text = xmalloc(bytes);
	int32_t *ids = NULL;
	size_t n_ids = 0, ids_cap = 0;
	for (uint32_t i = 0; len + 96 < bytes; i++)
		len += (size_t)snprintf(text + len, bytes - len, "On day %u %s %s %u boxes near pier %u. ",
		                        i + 1, who[i % 5], did[(i / 5) % 5], (i * 37) % 1000, i % 17);
	int rc = vocab_tokenize(gen_vocab(g), text, len, false, false, &ids, &n_ids, &ids_cap, e);
	free(text);
	if (rc != KVS_OK || n_ids < n) {
		if (rc == KVS_OK)
			err_set(e, KVS_ERANGE, "filler gave %zu tokens, wanted %u", n_ids, n);
		free(ids);
		return NULL;
	}
	return ids;
}

/* The median CPU ms of a turn under policy at budget (full: no eviction). */
static double run(const char *model, const char *policy, uint32_t budget, uint32_t turns)
{
	struct gen_config c;
	struct gen *g = NULL;
	struct err e;
	double t[MAX_TURNS];
	bool full = strcmp(policy, "full") == 0;
	uint32_t total = budget + turns * TURN_TOKENS;

	gen_config_default(&c);
	c.model_path = model;
	c.engine.n_threads = 1;
	c.engine.backend = ENGINE_BACKEND_CPU;
	if (kv_policy_parse(policy, &c.kv.policy, &e) != KVS_OK)
		goto fail;
	/* the slots gen_open would give: the policy's scratch (a vote's window,
	 * a re-read, the per-head keep-sets' union) beyond what is fed */
	c.engine.n_ctx = total + 64 + kv_policy_scratch(&c.kv.policy, budget);
	c.kv.budget = full ? total + 64 : budget;
	if (gen_open(&g, &c, &e) != KVS_OK)
		goto fail;
	int32_t *ids = filler(g, total, &e);
	if (ids == NULL || gen_begin_turn(g, KV_ROLE_USER, budget, &e) != KVS_OK ||
	    gen_feed(g, ids, budget, &e) != KVS_OK)
		goto fail;
	for (uint32_t i = 0; i < turns; i++) {
		const int32_t *turn = ids + budget + (size_t)i * TURN_TOKENS;
		double t0 = cpu_ms();
		if (gen_begin_turn(g, KV_ROLE_USER, TURN_TOKENS, &e) != KVS_OK ||
		    gen_feed(g, turn, TURN_TOKENS, &e) != KVS_OK)
			goto fail;
		t[i] = cpu_ms() - t0;
	}
	struct kv_stats st;
	kv_cache_stats(gen_kv(g), &st);
	/* per-head keep-sets: the kept entries within the budget's (a head may
	 * keep more with alloc=adaptive, the union more at spread > 1) */
	uint32_t kept =
	        st.n_head_sets ? (uint32_t)(st.bytes_entries / st.bytes_per_token) : st.n_cached;
	if (!full && (kept > budget || st.bytes > (uint64_t)budget * st.bytes_per_token)) {
		err_set(&e, KVS_ESTATE, "%s kept %u tokens over its budget of %u", policy, kept, budget);
		goto fail;
	}
	free(ids);
	gen_close(g);
	qsort(t, turns, sizeof(double), cmp_double);
	return t[turns / 2];
fail:
	fprintf(stderr, "bench-policy: %s at budget %u: %s\n", policy, budget, e.msg);
	exit(1);
}

int main(int argc, char **argv)
{
	char *model = model_default_path(argc > 1 ? argv[1] : NULL);
	uint32_t turns = argc > 2 ? (uint32_t)atoi(argv[2]) : 6;
	uint32_t budgets[8] = { 1024, 4096 }, n_budgets = 2;

	if (argc > 3) {
		n_budgets = 0;
		for (int i = 3; i < argc && n_budgets < 8; i++)
			budgets[n_budgets++] = (uint32_t)atoi(argv[i]);
	}
	if (model == NULL || turns == 0 || turns > MAX_TURNS) {
		fprintf(stderr, "usage: bench-policy [MODEL] [TURNS 1..%d] [BUDGET...]\n", MAX_TURNS);
		return 2;
	}
	for (uint32_t i = 0; i < n_budgets; i++)
		if (budgets[i] < 256) {
			fprintf(stderr, "bench-policy: budget %u: expected at least 256 tokens\n", budgets[i]);
			return 2;
		}
	printf("bench-policy: %u turns of %d tokens after filling the budget, 1 thread, median turn "
	       "(process CPU ms)\n",
	       turns, TURN_TOKENS);
	printf("| budget | policy | ms/turn | over window | over window per 1k cached |\n"
	       "|---:|---|---:|---:|---:|\n");
	for (uint32_t b = 0; b < n_budgets; b++) {
		double base = 0;
		for (size_t p = 0; p < N_POLICIES; p++) {
			if (!wanted(p))
				continue;
			double ms = run(model, policies[p], budgets[b], turns);
			if (p == 0)
				base = ms;
			printf("| %u | %s | %.1f | %+.1f | %+.2f |\n", budgets[b], policies[p], ms, ms - base,
			       (ms - base) * 1000.0 / budgets[b]);
			fflush(stdout);
		}
	}
	free(model);
	return 0;
}
