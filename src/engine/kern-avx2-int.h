/*
 * kern-avx2-int.h: what the two AVX2 files (kern-avx2.c, kern-avx2-attn.c)
 * share: the target attribute every function carries, so the files build
 * without -march, and the lane mask of partial vectors.
 */
#ifndef KVS_KERN_AVX2_INT_H
#define KVS_KERN_AVX2_INT_H

#include "engine/kern-int.h"

#include <immintrin.h>

#define T_AVX2 __attribute__((target("avx2,fma,f16c")))

/* Lane masks for the first n (0..8) of 8 floats. */
INLINE T_AVX2 __m256i av2_mask(int64_t n)
{
	const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
	return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)KVS_MIN(n, (int64_t)8)), idx);
}

#endif
