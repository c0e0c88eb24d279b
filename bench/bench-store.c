/*
 * bench-store.c: the cost of saving a turn (src/store) on the default model.
 *
 *   make bench/bench-store && bench/bench-store [reps] [dir]
 *
 * Each repetition feeds a 500-token turn into a KV cache (policy streaming,
 * budget 1024: after the first two turns every commit writes 500 new token
 * rows, updates the ~500 retained ones and marks the evicted ones, with
 * their eviction events) and times store_rec_commit alone, wall clock:
 * first with token rows only, then with the KV snapshot file as well
 * (written, fsynced and renamed before the transaction). It prints the
 * median and the range of each, and the database and snapshot sizes. The
 * database lives in dir (default: a fresh directory under /tmp), so the
 * numbers are those of that file system's fsync.
 */
#include "app/app.h"
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int bench_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void bench_events(const struct kv_event *ev, void *ud)
{
	store_rec_event(ud, ev);
}

/* Median and range of reps timed commits; snapshots on or off. */
static int bench_run(struct gen *g, struct store *st, const char *sha, bool snapshots, int reps,
                     double *ms)
{
	struct err e;
	int64_t id;
	struct store_rec *rec;
	struct store_session in = { .title = (char *)"bench", .model_path = (char *)"model",
		                    .model_sha256 = (char *)sha, .arch = (char *)"llama",
		                    .policy = (char *)"streaming", .sampler = (char *)"" };
	gen_reset(g);
	if (store_session_create(st, &in, &id, &e) != KVS_OK ||
	    store_rec_open(&rec, st, id, g->kv, snapshots, &e) != KVS_OK) {
		fprintf(stderr, "bench-store: %s\n", e.msg);
		return 1;
	}
	kv_cache_set_events(g->kv, bench_events, rec);
	int32_t ids[500];
	uint64_t x = 12345;
	for (int r = 0; r < reps + 2; r++) {
		for (int i = 0; i < 500; i++) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			ids[i] = 100 + (int32_t)((x >> 33) % 20000);
		}
		if (gen_begin_turn(g, KV_ROLE_USER, 500, &e) != KVS_OK ||
		    gen_feed(g, ids, 500, &e) != KVS_OK) {
			fprintf(stderr, "bench-store: %s\n", e.msg);
			return 1;
		}
		struct store_turn t = { .user = "a 500-token turn", .reply = "", .stop = "eos",
			                .complete = true, .n_prompt = 500 };
		store_rec_turn(rec, &t);
		double t0 = clock_now_ms();
		if (store_rec_commit(rec, &e) != KVS_OK) {
			fprintf(stderr, "bench-store: %s\n", e.msg);
			return 1;
		}
		if (r >= 2) /* the first two fill the cache */
			ms[r - 2] = clock_now_ms() - t0;
	}
	kv_cache_set_events(g->kv, NULL, NULL);
	store_rec_free(rec);
	qsort(ms, (size_t)reps, sizeof *ms, bench_cmp);
	return 0;
}

int main(int argc, char **argv)
{
	int reps = argc > 1 ? atoi(argv[1]) : 15;
	char dir[256];
	struct gen_config c;
	struct gen *g;
	struct store *st;
	struct err e;
	if (reps < 1 || reps > 1000) {
		fprintf(stderr, "usage: bench-store [reps 1..1000] [dir]\n");
		return 2;
	}
	if (argc > 2)
		snprintf(dir, sizeof dir, "%s", argv[2]);
	else if (mkdtemp(strcpy(dir, "/tmp/bench-store-XXXXXX")) == NULL)
		return perror("mkdtemp"), 1;
	gen_config_default(&c);
	char *mp = model_default_path(NULL);
	c.model_path = mp;
	kv_policy_parse("streaming", &c.kv.policy, NULL);
	c.kv.budget = 1024;
	c.engine.n_ctx = 1024;
	c.n_batch = 512;
	if (gen_open(&g, &c, &e) != KVS_OK) {
		fprintf(stderr, "bench-store: %s\n", e.msg);
		return 1;
	}
	char *db = xasprintf("%s/bench.db", dir);
	char sha[65];
	memset(sha, 'a', 64);
	sha[64] = '\0';
	if (store_open(&st, db, STORE_RW, &e) != KVS_OK) {
		fprintf(stderr, "bench-store: %s\n", e.msg);
		return 1;
	}
	double *rows = xmallocarray((size_t)reps, sizeof *rows);
	double *snap = xmallocarray((size_t)reps, sizeof *snap);
	if (bench_run(g, st, sha, false, reps, rows) || bench_run(g, st, sha, true, reps, snap))
		return 1;
	char host[64] = "?";
	gethostname(host, sizeof host);
	printf("bench-store: %d commits of a 500-token turn (cache 1024, streaming), %s, db in %s\n",
	       reps, host, dir);
	printf("  token rows only:        median %7.2f ms  (min %.2f, max %.2f)\n", rows[reps / 2],
	       rows[0], rows[reps - 1]);
	printf("  with the KV snapshot:   median %7.2f ms  (min %.2f, max %.2f; %.1f MiB per file)\n",
	       snap[reps / 2], snap[0], snap[reps - 1],
	       (double)kv_cache_n(g->kv) * (double)engine_kv_bytes_per_slot(g->engine) / 1048576.0);
	store_close(st);
	gen_close(g);
	if (argc <= 2) {
		char *cmd = xasprintf("rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "bench-store: could not remove %s\n", dir);
		free(cmd);
	}
	return 0;
}
