/*
 * test-pool.c: the thread pool. Every thread runs each job exactly once,
 * barriers order the steps inside a job (no thread sees a step before all
 * threads finished the previous one), idle workers that went to sleep wake
 * up for the next job, and pool_split covers a range exactly.
 */
#include "base/base.h"

#include "test.h"

#include <stdatomic.h>
#include <time.h>

#define STEPS 40

struct job {
	struct pool *p;
	_Atomic int calls;
	_Atomic int sum;
	int marks[STEPS][8]; /* marks[step][thread] */
	_Atomic int bad;
};

/* Each step: mark, barrier, check every thread marked. */
static void job_fn(void *arg, int ith, int nth)
{
	struct job *j = arg;
	atomic_fetch_add(&j->calls, 1);
	atomic_fetch_add(&j->sum, ith + 1);
	for (int s = 0; s < STEPS; s++) {
		j->marks[s][ith] = s + 1;
		pool_barrier(j->p);
		for (int t = 0; t < nth; t++)
			if (j->marks[s][t] != s + 1)
				atomic_fetch_add(&j->bad, 1);
		pool_barrier(j->p);
	}
}

static void test_threads(int n)
{
	struct job *j = calloc(1, sizeof(*j));
	j->p = pool_create(n);
	T_EQ_INT(pool_size(j->p), n);
	for (int run = 0; run < 30; run++) {
		memset(j->marks, 0, sizeof(j->marks));
		atomic_store(&j->calls, 0);
		atomic_store(&j->sum, 0);
		if (run % 10 == 9) {
			/* long enough for idle workers to go to sleep */
			struct timespec ts = { 0, 20 * 1000 * 1000 };
			nanosleep(&ts, NULL);
		}
		pool_run(j->p, job_fn, j);
		T_EQ_INT(atomic_load(&j->calls), n);
		T_EQ_INT(atomic_load(&j->sum), n * (n + 1) / 2);
	}
	T_EQ_INT(atomic_load(&j->bad), 0);
	pool_free(j->p);
	free(j);
}

static void test_split(void)
{
	static const int64_t ns[] = { 0, 1, 7, 36, 1000 };
	for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++)
		for (int nth = 1; nth <= 5; nth++) {
			int64_t next = 0, mn = INT64_MAX, mx = 0;
			for (int t = 0; t < nth; t++) {
				int64_t lo, hi;
				pool_split(ns[i], t, nth, &lo, &hi);
				T_EQ_INT(lo, next);
				next = hi;
				mn = KVS_MIN(mn, hi - lo);
				mx = KVS_MAX(mx, hi - lo);
			}
			T_EQ_INT(next, ns[i]);
			T_CHECK(mx - mn <= 1, "split of %lld over %d: sizes %lld..%lld", (long long)ns[i], nth,
			        (long long)mn, (long long)mx);
		}
}

int main(void)
{
	test_threads(1);
	test_threads(2);
	test_threads(3);
	test_threads(8);
	test_split();
	T_CHECK(pool_n_cores() >= 1, "cores %d", pool_n_cores());
	return t_done("test-pool");
}
