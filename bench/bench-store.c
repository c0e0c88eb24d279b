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
 * median and the range of each, the median CPU time of the committing
 * thread, and the snapshot size. The database lives
 * in dir (default: a fresh directory under /tmp), so the numbers are those
 * of that file system's fsync; the floor it sets (write 4 KiB, fsync, the
 * same count of repetitions) is printed too, and the load average, since a
 * shared machine moves both.
 */
#include "app/app.h"
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>

static int bench_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* This thread's CPU time in ms (the work, without waiting for the disk or
 * for a core on a busy machine). */
static double bench_cpu_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static void bench_events(const struct kv_event *ev, void *ud)
{
	store_rec_event(ud, ev);
}

/* Median and range of reps timed commits; snapshots on or off. */
static int bench_run(struct gen *g, struct store *st, const char *sha, bool snapshots, int reps,
                     double *ms, double *cpu)
{
	struct err e;
	int64_t id;
	struct store_rec *rec;
	struct store_session in = { .title = (char *)"bench",
		                        .model_path = (char *)"model",
		                        .model_sha256 = (char *)sha,
		                        .arch = (char *)"llama",
		                        .policy = (char *)"streaming",
		                        .sampler = (char *)"" };
	gen_reset(g);
	if (store_session_create(st, &in, &id, &e) != KVS_OK ||
	    store_rec_open(&rec, st, id, gen_kv(g), snapshots, &e) != KVS_OK) {
		fprintf(stderr, "bench-store: %s\n", e.msg);
		return 1;
	}
	kv_cache_set_events(gen_kv(g), bench_events, rec);
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
		struct store_turn t = { .user = "a 500-token turn",
			                    .reply = "",
			                    .stop = "eos",
			                    .complete = true,
			                    .n_prompt = 500 };
		store_rec_turn(rec, &t);
		double t0 = clock_now_ms(), c0 = bench_cpu_ms();
		if (store_rec_commit(rec, &e) != KVS_OK) {
			fprintf(stderr, "bench-store: %s\n", e.msg);
			return 1;
		}
		if (r >= 2) { /* the first two fill the cache */
			ms[r - 2] = clock_now_ms() - t0;
			cpu[r - 2] = bench_cpu_ms() - c0;
		}
	}
	kv_cache_set_events(gen_kv(g), NULL, NULL);
	store_rec_free(rec);
	qsort(ms, (size_t)reps, sizeof *ms, bench_cmp);
	qsort(cpu, (size_t)reps, sizeof *cpu, bench_cmp);
	return 0;
}

/* Median ms of writing 4 KiB to a file in dir and fsyncing it. */
static double bench_fsync_floor(const char *dir, int reps, double *ms)
{
	char *p = xasprintf("%s/fsync-probe", dir);
	char buf[4096];
	memset(buf, 'x', sizeof buf);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	for (int r = 0; r < reps && fd >= 0; r++) {
		double t0 = clock_now_ms();
		if (pwrite(fd, buf, sizeof buf, (off_t)r * 4096) < 0 || fsync(fd) != 0)
			break;
		ms[r] = clock_now_ms() - t0;
	}
	if (fd >= 0)
		close(fd);
	unlink(p);
	free(p);
	qsort(ms, (size_t)reps, sizeof *ms, bench_cmp);
	return ms[reps / 2];
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
	double *rows_cpu = xmallocarray((size_t)reps, sizeof *rows_cpu);
	double *snap_cpu = xmallocarray((size_t)reps, sizeof *snap_cpu);
	if (bench_run(g, st, sha, false, reps, rows, rows_cpu) ||
	    bench_run(g, st, sha, true, reps, snap, snap_cpu))
		return 1;
	char host[64] = "?";
	gethostname(host, sizeof host);
	double *fs = xcalloc((size_t)reps, sizeof *fs);
	double floor_ms = bench_fsync_floor(dir, reps, fs);
	double load[3] = { 0 };
	if (getloadavg(load, 3) < 0)
		load[0] = -1;
	printf("bench-store: %d commits of a 500-token turn (cache 1024, streaming), %s, db in %s\n",
	       reps, host, dir);
	printf("  token rows only:        median %7.2f ms  (min %.2f, max %.2f); CPU median %.2f ms\n",
	       rows[reps / 2], rows[0], rows[reps - 1], rows_cpu[reps / 2]);
	printf("  with the KV snapshot:   median %7.2f ms  (min %.2f, max %.2f); CPU median %.2f ms; "
	       "%.1f MiB per file\n",
	       snap[reps / 2], snap[0], snap[reps - 1], snap_cpu[reps / 2],
	       (double)kv_cache_n(gen_kv(g)) * (double)engine_kv_bytes_per_slot(gen_engine(g)) /
	               1048576.0);
	printf("  fsync floor (4 KiB):    median %7.2f ms  (min %.2f, max %.2f); load average %.2f\n",
	       floor_ms, fs[0], fs[reps - 1], load[0]);
	free(fs);
	free(rows);
	free(snap);
	free(rows_cpu);
	free(snap_cpu);
	free(db);
	free(mp);
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
