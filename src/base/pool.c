/*
 * pool.c: the fork-join thread pool the compute kernels run on.
 *
 * A decode step of a small model is hundreds of short parallel steps, each a
 * few microseconds of work, so waking threads through the kernel for every
 * step would cost more than the work. Instead one pool_run hands the whole
 * forward pass to all threads, and the steps inside are separated by
 * pool_barrier: a counter barrier that spins for a few tens of microseconds
 * (a few hundred nanoseconds when every thread is on a core), then sleeps on
 * a futex, so a machine with more runnable threads than cores does not
 * waste its time slices spinning for a thread that is not running. The end
 * of a run is one more barrier. Between runs, workers spin for a short
 * while (the next token usually follows at once), then sleep on a condition
 * variable so an idle program burns no CPU.
 *
 * Invariants: run_gen only grows, and is written under mu so a worker that
 * decided to sleep cannot miss it; the barrier's phase only grows, and the
 * thread that advances it wakes sleepers after the increment (both sides use
 * sequentially consistent atomics, so no wake-up is lost).
 */
#include "base.h"

#include <immintrin.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define POOL_MAX_THREADS 256
#define POOL_SPIN_IDLE 4000    /* pause loops before an idle worker sleeps (~0.1 ms) */
#define POOL_SPIN_BARRIER 2000 /* pause loops before a barrier waiter sleeps */

struct pool_worker {
	struct pool *p;
	int ith;
	pthread_t tid;
};

struct pool {
	int n;                       /* threads including the caller */
	struct pool_worker *workers; /* (n - 1) */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	_Atomic unsigned run_gen; /* bumped by each pool_run (and by free) */
	_Atomic int stop;
	pool_fn fn;
	void *arg;
	int nrun; /* threads in the current run: 1 or n */
	/* barrier */
	_Alignas(64) _Atomic int bar_count;
	_Alignas(64) _Atomic uint32_t bar_phase; /* a futex word */
	_Atomic int bar_sleepers;
};

/* Sleep while *word == val (or until woken). */
static void pool_futex_wait(_Atomic uint32_t *word, uint32_t val)
{
	syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void pool_futex_wake_all(_Atomic uint32_t *word)
{
	syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Worker main loop: wait for a new generation, run, report done. */
static void *pool_worker_main(void *argp)
{
	struct pool_worker *w = argp;
	struct pool *p = w->p;
	unsigned seen = 0;
	for (;;) {
		unsigned gen;
		int spins = 0;
		while ((gen = atomic_load_explicit(&p->run_gen, memory_order_acquire)) == seen &&
		       spins < POOL_SPIN_IDLE) {
			_mm_pause();
			spins++;
		}
		if (gen == seen) {
			pthread_mutex_lock(&p->mu);
			while ((gen = atomic_load_explicit(&p->run_gen, memory_order_acquire)) == seen)
				pthread_cond_wait(&p->cv, &p->mu);
			pthread_mutex_unlock(&p->mu);
		}
		seen = gen;
		if (atomic_load_explicit(&p->stop, memory_order_acquire))
			return NULL;
		p->fn(p->arg, w->ith, p->n);
		pool_barrier(p);
	}
}

int pool_n_cores(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1 : (int)KVS_MIN(n, POOL_MAX_THREADS);
}

struct pool *pool_create(int n_threads)
{
	struct pool *p = xcalloc(1, sizeof(*p));
	if (n_threads <= 0)
		n_threads = pool_n_cores();
	p->n = KVS_MIN(n_threads, POOL_MAX_THREADS);
	p->nrun = p->n;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	p->workers = xcalloc((size_t)p->n, sizeof(*p->workers));
	for (int i = 1; i < p->n; i++) {
		struct pool_worker *w = &p->workers[i - 1];
		w->p = p;
		w->ith = i;
		if (pthread_create(&w->tid, NULL, pool_worker_main, w) != 0) {
			/* Run with the threads we got. */
			log_warn("thread pool: could only start %d of %d threads", i, p->n);
			p->n = i;
			break;
		}
	}
	return p;
}

/* Publish a new generation and wake sleepers. */
static void pool_publish(struct pool *p)
{
	pthread_mutex_lock(&p->mu);
	atomic_fetch_add_explicit(&p->run_gen, 1, memory_order_acq_rel);
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

void pool_free(struct pool *p)
{
	if (p == NULL)
		return;
	atomic_store_explicit(&p->stop, 1, memory_order_release);
	pool_publish(p);
	for (int i = 1; i < p->n; i++)
		pthread_join(p->workers[i - 1].tid, NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p->workers);
	free(p);
}

int pool_size(const struct pool *p)
{
	return p->n;
}

void pool_run(struct pool *p, pool_fn fn, void *arg)
{
	pool_run_n(p, p->n, fn, arg);
}

void pool_run_n(struct pool *p, int nth, pool_fn fn, void *arg)
{
	if (p->n == 1 || nth == 1) {
		/* the workers are idle between runs, so nothing else reads nrun */
		p->nrun = 1;
		fn(arg, 0, 1);
		return;
	}
	p->nrun = p->n;
	p->fn = fn;
	p->arg = arg;
	pool_publish(p);
	fn(arg, 0, p->n);
	pool_barrier(p);
}


void pool_barrier(struct pool *p)
{
	if (p->nrun == 1)
		return;
	uint32_t phase = atomic_load_explicit(&p->bar_phase, memory_order_acquire);
	if (atomic_fetch_add_explicit(&p->bar_count, 1, memory_order_acq_rel) == p->n - 1) {
		atomic_store_explicit(&p->bar_count, 0, memory_order_relaxed);
		atomic_fetch_add(&p->bar_phase, 1);
		if (atomic_load(&p->bar_sleepers) > 0)
			pool_futex_wake_all(&p->bar_phase);
		return;
	}
	for (int spins = 0; spins < POOL_SPIN_BARRIER; spins++) {
		if (atomic_load_explicit(&p->bar_phase, memory_order_acquire) != phase)
			return;
		_mm_pause();
	}
	atomic_fetch_add(&p->bar_sleepers, 1);
	while (atomic_load(&p->bar_phase) == phase)
		pool_futex_wait(&p->bar_phase, phase);
	atomic_fetch_sub(&p->bar_sleepers, 1);
}

void pool_split(int64_t n, int ith, int nth, int64_t *lo, int64_t *hi)
{
	int64_t per = n / nth, rem = n % nth;
	*lo = per * ith + KVS_MIN(ith, rem);
	*hi = *lo + per + (ith < rem ? 1 : 0);
}
