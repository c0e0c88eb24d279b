/*
 * bench-dequant.c: throughput of dtype_dequant for every weight type.
 *
 * For each type we can dequantise, fill a buffer of n elements with valid
 * blocks (random quants, finite normal-range f16 scales so no subnormal
 * slow paths), dequantise it repeatedly for at least 0.3 s and print input
 * MB/s, output Melem/s and the ratio to memcpy of the same output bytes (the
 * peer: the best a dequantiser that only writes floats could hope for).
 *
 * Build and run: make bench/bench-dequant && bench/bench-dequant [n_elems]
 * (not part of make check).
 */
#include "base/base.h"
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>

/* Where the f16 scales of a block sit (-1: none), for the types with blocks. */
static const struct {
	uint32_t type;
	int scale_off[2];
} bench_types[] = {
	{ DT_F32, { -1, -1 } }, { DT_F16, { -1, -1 } },   { DT_BF16, { -1, -1 } },
	{ DT_Q4_0, { 0, -1 } }, { DT_Q4_1, { 0, 2 } },    { DT_Q5_0, { 0, -1 } },
	{ DT_Q5_1, { 0, 2 } },  { DT_Q8_0, { 0, -1 } },   { DT_Q4_K, { 0, 2 } },
	{ DT_Q5_K, { 0, 2 } },  { DT_Q6_K, { 208, -1 } },
};

static uint64_t bench_rng = 0x9e3779b97f4a7c15u;

/* xorshift64*: fast, seeded, good enough for filling buffers. */
static uint64_t bench_rand(void)
{
	bench_rng ^= bench_rng >> 12;
	bench_rng ^= bench_rng << 25;
	bench_rng ^= bench_rng >> 27;
	return bench_rng * 0x2545f4914f6cdd1du;
}

/* A float in [-1, 1). */
static float bench_randf(void)
{
	return (float)(int32_t)(bench_rand() >> 32) * 0x1p-31f;
}

/* Fill buf with nb blocks of type t that decode to ordinary numbers. */
static void bench_fill(uint32_t t, const int off[2], uint8_t *buf, uint64_t n, uint64_t bytes)
{
	if (t == DT_F32 || t == DT_F16 || t == DT_BF16) {
		for (uint64_t i = 0; i < n; i++) {
			float f = bench_randf();
			uint16_t h = t == DT_F16 ? dtype_f32_to_f16(f) : dtype_f32_to_bf16(f);
			if (t == DT_F32)
				memcpy(buf + 4 * i, &f, 4);
			else
				memcpy(buf + 2 * i, &h, 2);
		}
		return;
	}
	for (uint64_t i = 0; i < bytes; i++)
		buf[i] = (uint8_t)bench_rand();
	const struct dtype_info *ti = dtype_info(t);
	for (uint64_t b = 0; b < bytes / ti->block_bytes; b++)
		for (int k = 0; k < 2; k++)
			if (off[k] >= 0) {
				uint16_t h = dtype_f32_to_f16(0.01f + 0.01f * bench_randf());
				memcpy(buf + b * ti->block_bytes + off[k], &h, 2);
			}
}

/* Seconds per dequant (or memcpy) call, repeated for at least 0.3 s. */
static double bench_time(uint32_t t, const uint8_t *src, float *dst, int64_t n, void *peer_dst,
                         bool memcpy_peer)
{
	int reps = 0;
	double t0 = clock_now_s(), t1;

	do {
		if (memcpy_peer)
			memcpy(peer_dst, dst, (size_t)n * sizeof(float));
		else
			dtype_dequant(t, src, dst, n);
		reps++;
		t1 = clock_now_s();
	} while (t1 - t0 < 0.3);
	return (t1 - t0) / reps;
}

int main(int argc, char **argv)
{
	int64_t n = argc > 1 ? strtoll(argv[1], NULL, 10) : (int64_t)1 << 22;
	struct utsname u;
	char cpu[128] = "?";
	FILE *f = fopen("/proc/cpuinfo", "r");

	if (n <= 0 || n % 256 != 0) {
		fprintf(stderr, "bench-dequant: n_elems %lld: expected a positive multiple of 256\n",
		        (long long)n);
		return 2;
	}
	if (f != NULL) {
		char line[256];
		while (fgets(line, sizeof line, f))
			if (strncmp(line, "model name", 10) == 0) {
				char *p = strchr(line, ':');
				if (p != NULL) {
					snprintf(cpu, sizeof cpu, "%s", p + 2);
					cpu[strcspn(cpu, "\n")] = 0;
				}
				break;
			}
		fclose(f);
	}
	uname(&u);
	printf("command: %s %lld\nmachine: %s %s, %s\nsingle thread, %lld elements per call\n", argv[0],
	       (long long)n, u.sysname, u.machine, cpu, (long long)n);

	float *dst = xmallocarray((size_t)n, sizeof *dst);
	float *peer = xmallocarray((size_t)n, sizeof *peer);
	memset(dst, 0, (size_t)n * sizeof *dst);
	double t_peer = bench_time(DT_F32, NULL, dst, n, peer, true);
	printf("peer: memcpy of %lld floats: %.0f MB/s\n\n", (long long)n,
	       (double)n * 4 / t_peer / 1e6);
	printf("%-6s %10s %12s %12s %10s\n", "type", "in MB", "in MB/s", "out Melem/s", "vs memcpy");
	for (size_t i = 0; i < KVS_ARRAY_LEN(bench_types); i++) {
		uint32_t t = bench_types[i].type;
		uint64_t bytes = 0;
		if (!dtype_row_bytes(t, (uint64_t)n, &bytes))
			continue;
		uint8_t *src = xmalloc(bytes);
		bench_fill(t, bench_types[i].scale_off, src, (uint64_t)n, bytes);
		double s = bench_time(t, src, dst, n, NULL, false);
		printf("%-6s %10.2f %12.0f %12.0f %9.2fx\n", dtype_name(t), (double)bytes / 1e6,
		       (double)bytes / s / 1e6, (double)n / s / 1e6, t_peer / s);
		free(src);
	}
	free(dst);
	free(peer);
	return 0;
}
