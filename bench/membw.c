/*
 * membw.c: this machine's memory read bandwidth, the bound on decode speed.
 *
 * Each thread sums its share of a buffer much larger than the caches
 * (default 1 GiB) with wide loads; the best of several passes is reported in
 * GB/s (1e9 bytes/s). Decode reads every weight once per token, so
 * bandwidth / bytes-of-weights is the tokens/s ceiling that a decode speed
 * is quoted against.
 *   usage: membw [MiB] [threads] [passes]
 */
#include "base/base.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct membw_job {
	const uint8_t *p;
	size_t n;
	uint64_t sum;
};

/* Sum the job's bytes 128 at a time (four independent AVX2 streams, so
 * enough loads are in flight to saturate the memory system). */
__attribute__((target("avx2"))) static void *membw_read(void *arg)
{
	struct membw_job *j = arg;
	__m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
	const __m256i *v = (const __m256i *)j->p;
	size_t n = j->n / 128;

	for (size_t i = 0; i < n; i++) {
		a0 = _mm256_add_epi64(a0, _mm256_load_si256(v + 4 * i));
		a1 = _mm256_add_epi64(a1, _mm256_load_si256(v + 4 * i + 1));
		a2 = _mm256_add_epi64(a2, _mm256_load_si256(v + 4 * i + 2));
		a3 = _mm256_add_epi64(a3, _mm256_load_si256(v + 4 * i + 3));
	}
	a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
	j->sum = (uint64_t)_mm256_extract_epi64(a0, 0) + (uint64_t)_mm256_extract_epi64(a0, 3);
	return NULL;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
	int nth = argc > 2 ? atoi(argv[2]) : 2, passes = argc > 3 ? atoi(argv[3]) : 5;
	size_t n = mib << 20;
	uint8_t *buf;
	pthread_t th[64];
	struct membw_job jobs[64];
	double best = 0.0;
	uint64_t sink = 0;

	if (nth < 1 || nth > 64 || n == 0 || passes < 1) {
		fprintf(stderr, "usage: membw [MiB] [threads 1..64] [passes]\n");
		return 2;
	}
	/* Huge pages where the kernel allows them, as the engine's weight arena
	 * uses: with 4 KiB pages the page walks, not DRAM, would be measured. */
	buf = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		perror("membw: mmap");
		return 1;
	}
	(void)madvise(buf, n, MADV_HUGEPAGE);
	memset(buf, 1, n);
	for (int p = 0; p < passes; p++) {
		double t0 = clock_now_s();
		for (int i = 0; i < nth; i++) {
			jobs[i].p = buf + (n / nth) * i;
			jobs[i].n = (n / nth) & ~(size_t)127;
			pthread_create(&th[i], NULL, membw_read, &jobs[i]);
		}
		for (int i = 0; i < nth; i++) {
			pthread_join(th[i], NULL);
			sink += jobs[i].sum;
		}
		double gbs = (double)n / (clock_now_s() - t0) / 1e9;
		if (gbs > best)
			best = gbs;
	}
	printf("membw: %zu MiB, %d threads, best of %d passes: %.2f GB/s (checksum %llu)\n", mib, nth,
	       passes, best, (unsigned long long)(sink & 0xff));
	munmap(buf, n);
	return 0;
}
