/*
 * bench-engine.c: the CPU engine's matrix kernels on the default model's
 * shapes, one thread, every kernel level this CPU has.
 *
 *   make bench/bench-engine && bench/bench-engine [reps]
 *
 * For each weight type (Q4_1, Q4_0, Q8_0) and shape (rows x K as in
 * SmolLM2-135M: 576x576, 1536x576, 576x1536, 49152x576) it times the packed
 * product for n = 1 (decode) and n = 512 (prefill) tokens and prints the
 * median rate in GMAC/s (multiply-accumulates of weights by activations)
 * and, for n = 1, the weight bytes streamed per second in GB/s. Times are
 * the thread's CPU time, so a busy machine slows the run but not the rates.
 */
#include "engine/kern.h"
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* This thread's CPU time in seconds. */
static double bench_cpu_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int bench_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* A random packed weight of type (rows, K). */
static struct kern_weight bench_weight(uint32_t type, int64_t rows, int64_t K)
{
	struct kern_weight w = { 0 };
	float *f = xmallocarray((size_t)(rows * K), sizeof(float));
	srand(1);
	for (int64_t i = 0; i < rows * K; i++)
		f[i] = (float)((double)rand() / RAND_MAX - 0.5);
	uint64_t rb = 0;
	dtype_row_bytes(type, (uint64_t)K, &rb);
	uint8_t *orig = xmalloc(rb * (uint64_t)rows);
	for (int64_t r = 0; r < rows; r++) {
		if (type == DT_Q4_1)
			dtype_quant_q4_1(f + r * K, orig + r * rb, K);
		else if (type == DT_Q4_0)
			dtype_quant_q4_0(f + r * K, orig + r * rb, K);
		else
			dtype_quant_q8_0(f + r * K, orig + r * rb, K);
	}
	uint64_t nb = kern_packed_bytes(type, rows, K);
	int64_t groups = (rows + KERN_GROUP - 1) / KERN_GROUP;
	w.type = type;
	w.rows = rows;
	w.cols = K;
	w.row_bytes = rb;
	w.packed = true;
	w.owned = xmalloc_aligned(nb);
	w.group_bytes = nb / (uint64_t)groups;
	kern_pack(type, orig, rows, K, w.owned, 0, groups);
	w.data = w.owned;
	free(orig);
	free(f);
	return w;
}

int main(int argc, char **argv)
{
	int reps = argc > 1 ? atoi(argv[1]) : 5;
	static const uint32_t types[] = { DT_Q4_1, DT_Q4_0, DT_Q8_0 };
	static const int64_t shapes[][2] = {
		{ 576, 576 }, { 1536, 576 }, { 576, 1536 }, { 49152, 576 }
	};
	static const int64_t ns[] = { 1, 512 };
	enum kern_level top = kern_cpu_level();
	printf("level        type  rows x K        n    GMAC/s   GB/s (weights)\n");
	for (int lv = KERN_AVX2; lv <= (int)top; lv++) {
		const struct kern_ops *ops = kern_select((enum kern_level)lv);
		for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++)
			for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
				int64_t rows = shapes[si][0], K = shapes[si][1];
				struct kern_weight w = bench_weight(types[ti], rows, K);
				for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++) {
					int64_t n = ns[ni];
					if (n > 1 && rows > 10000)
						n = 32; /* the LM head only sees a few rows */
					float *x = xmalloc_aligned((size_t)(n * K) * sizeof(float));
					float *y = xmalloc_aligned((size_t)(n * rows) * sizeof(float));
					struct kern_act a = { K,
						                  xmalloc_aligned((size_t)(n * K)),
						                  xmalloc_aligned((size_t)(n * K / 32) * 4),
						                  xmalloc_aligned((size_t)(n * K / 32) * 4),
						                  xmalloc_aligned((size_t)(n * K / 32) * 4),
						                  xmalloc_aligned((size_t)(n * K / 16) * 4) };
					for (int64_t i = 0; i < n * K; i++)
						x[i] = (float)((double)rand() / RAND_MAX - 0.5);
					for (int64_t i = 0; i < n; i++)
						ops->quant_row(x + i * K, &a, i);
					int64_t groups = (rows + KERN_GROUP - 1) / KERN_GROUP;
					/* enough calls for ~50 ms per measurement */
					double t0 = bench_cpu_s();
					ops->gemm_packed(&w, 0, groups, &a, n, y, rows, false);
					double one = bench_cpu_s() - t0;
					int inner = (int)KVS_MAX(1.0, 0.05 / KVS_MAX(one, 1e-6));
					double med[64];
					for (int r = 0; r < reps && r < 64; r++) {
						t0 = bench_cpu_s();
						for (int i = 0; i < inner; i++)
							ops->gemm_packed(&w, 0, groups, &a, n, y, rows, false);
						med[r] = (bench_cpu_s() - t0) / inner;
					}
					qsort(med, (size_t)KVS_MIN(reps, 64), sizeof(double), bench_cmp);
					double s = med[KVS_MIN(reps, 64) / 2];
					double gmac = (double)rows * K * n / s / 1e9;
					double gbs = (double)kern_packed_bytes(w.type, rows, K) / s / 1e9;
					printf("%-12s %-5s %5lld x %-5lld %5lld %9.1f %8.1f\n", ops->name,
					       dtype_name(w.type), (long long)rows, (long long)K, (long long)n, gmac,
					       n == 1 ? gbs : 0.0);
					xfree_aligned(x);
					xfree_aligned(y);
					xfree_aligned(a.q);
					xfree_aligned(a.d);
					xfree_aligned(a.s);
					xfree_aligned(a.isum);
					xfree_aligned(a.isum16);
				}
				xfree_aligned(w.owned);
			}
	}
	return 0;
}
