/*
 * test-dtype.c: the type table, row sizes, half/bfloat conversion,
 * dequantisation and the reference quantisers.
 *
 * Independent references: the engine.md type table (typed in here again),
 * gguf-py's dequantize/quantize outputs committed under tests/fixtures/dtype
 * (make-fixtures.py says how), real blocks from the default model with
 * gguf-py's values, an ldexp-from-fields decoding of every half, exact
 * midpoints between neighbouring halves, and one hand-computed block per type.
 * Float comparisons against fixtures are bitwise.
 */
#include "base/base.h"
#include "model/model.h"
#include "test.h"

#include <stdint.h>

/* ------------------------------------------------------------ helpers */

static uint32_t bits_of(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof u);
	return u;
}

static float float_of(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof f);
	return f;
}

/* Read tests/fixtures/dtype/name from the source tree; NULL (and a failed
 * check) if missing: fixtures are part of the tree, never optional. */
static uint8_t *fixture(const char *name, size_t *len)
{
	const char *roots[] = { getenv("KVSCOPE_SRCDIR"), ".", ".." };
	char path[4096];
	struct err e = { 0 };
	char *buf = NULL;

	for (size_t i = 0; i < KVS_ARRAY_LEN(roots); i++) {
		if (roots[i] == NULL)
			continue;
		snprintf(path, sizeof path, "%s/tests/fixtures/dtype/%s", roots[i], name);
		if (file_read_all(path, &buf, len, &e) == KVS_OK)
			return (uint8_t *)buf;
	}
	T_CHECK(0, "fixture %s not found (set KVSCOPE_SRCDIR): %s", name, e.msg);
	return NULL;
}

/* Count elements whose bits differ; print the first few. */
static int diff_floats(const char *what, const float *got, const float *want, size_t n)
{
	int bad = 0;

	for (size_t i = 0; i < n; i++) {
		if (bits_of(got[i]) != bits_of(want[i])) {
			if (bad < 3)
				fprintf(stderr, "  %s[%zu]: got %.9g (0x%08x), want %.9g (0x%08x)\n", what, i,
				        got[i], bits_of(got[i]), want[i], bits_of(want[i]));
			bad++;
		}
	}
	return bad;
}

/* ------------------------------------------------------------- table */

static void test_table(void)
{
	/* engine.md 1.5, typed in independently of dtype.c */
	static const struct {
		uint32_t id;
		const char *name;
		uint32_t elems, bytes;
		bool weight_ok;
	} want[] = {
		{ 0, "F32", 1, 4, true },          { 1, "F16", 1, 2, true },
		{ 2, "Q4_0", 32, 18, true },       { 3, "Q4_1", 32, 20, true },
		{ 6, "Q5_0", 32, 22, true },       { 7, "Q5_1", 32, 24, true },
		{ 8, "Q8_0", 32, 34, true },       { 9, "Q8_1", 32, 36, false },
		{ 10, "Q2_K", 256, 84, false },    { 11, "Q3_K", 256, 110, false },
		{ 12, "Q4_K", 256, 144, true },    { 13, "Q5_K", 256, 176, true },
		{ 14, "Q6_K", 256, 210, true },    { 15, "Q8_K", 256, 292, false },
		{ 16, "IQ2_XXS", 256, 66, false }, { 17, "IQ2_XS", 256, 74, false },
		{ 18, "IQ3_XXS", 256, 98, false }, { 19, "IQ1_S", 256, 50, false },
		{ 20, "IQ4_NL", 32, 18, false },   { 21, "IQ3_S", 256, 110, false },
		{ 22, "IQ2_S", 256, 82, false },   { 23, "IQ4_XS", 256, 136, false },
		{ 24, "I8", 1, 1, false },         { 25, "I16", 1, 2, false },
		{ 26, "I32", 1, 4, false },        { 27, "I64", 1, 8, false },
		{ 28, "F64", 1, 8, false },        { 29, "IQ1_M", 256, 56, false },
		{ 30, "BF16", 1, 2, true },        { 34, "TQ1_0", 256, 54, false },
		{ 35, "TQ2_0", 256, 66, false },   { 39, "MXFP4", 32, 17, false },
	};
	static const uint32_t removed[] = { 4, 5, 31, 32, 33, 36, 37, 38, 40, 41, 1000, UINT32_MAX };
	int n_known = 0;

	for (size_t i = 0; i < KVS_ARRAY_LEN(want); i++) {
		const struct dtype_info *ti = dtype_info(want[i].id);
		T_CHECK(ti != NULL, "type %u unknown", want[i].id);
		if (ti == NULL)
			continue;
		T_EQ_STR(ti->name, want[i].name);
		T_EQ_STR(dtype_name(want[i].id), want[i].name);
		T_EQ_INT(ti->block_elems, want[i].elems);
		T_EQ_INT(ti->block_bytes, want[i].bytes);
		T_CHECK(ti->weight_ok == want[i].weight_ok, "%s weight_ok", want[i].name);
	}
	for (size_t i = 0; i < KVS_ARRAY_LEN(removed); i++) {
		T_CHECK(dtype_info(removed[i]) == NULL, "type %u should be unknown", removed[i]);
		char name[32];
		snprintf(name, sizeof name, "type#%u", removed[i]);
		T_EQ_STR(dtype_name(removed[i]), name);
	}
	for (uint32_t id = 0; id < 64; id++)
		n_known += dtype_info(id) != NULL;
	T_EQ_INT(n_known, (int)KVS_ARRAY_LEN(want));
	T_EQ_INT(DT_COUNT_, 40);
}

static void test_row_bytes(void)
{
	uint64_t b = 12345;

	T_CHECK(dtype_row_bytes(DT_Q4_1, 576, &b) && b == 360, "Q4_1 576 -> %llu",
	        (unsigned long long)b);
	T_CHECK(dtype_row_bytes(DT_Q8_0, 576, &b) && b == 612, "Q8_0 576 -> %llu",
	        (unsigned long long)b);
	T_CHECK(dtype_row_bytes(DT_Q4_K, 1536, &b) && b == 6 * 144, "Q4_K 1536");
	T_CHECK(dtype_row_bytes(DT_F16, 7, &b) && b == 14, "F16 7");
	T_CHECK(dtype_row_bytes(DT_F32, 0, &b) && b == 0, "F32 0");
	T_CHECK(dtype_row_bytes(DT_Q6_K, 0, &b) && b == 0, "Q6_K 0");
	/* ragged rows */
	T_CHECK(!dtype_row_bytes(DT_Q4_0, 33, &b), "Q4_0 33 is ragged");
	T_CHECK(!dtype_row_bytes(DT_Q4_K, 576, &b), "Q4_K 576 is ragged");
	T_CHECK(!dtype_row_bytes(DT_Q8_0, 31, &b), "Q8_0 31 is ragged");
	/* unknown types */
	T_CHECK(!dtype_row_bytes(4, 32, &b), "type 4");
	T_CHECK(!dtype_row_bytes(DT_COUNT_, 32, &b), "type 40");
	T_CHECK(!dtype_row_bytes(UINT32_MAX, 32, &b), "type UINT32_MAX");
	/* overflow: 2^62 F32 elements are 2^64 bytes */
	T_CHECK(!dtype_row_bytes(DT_F32, UINT64_C(1) << 62, &b), "F32 2^62 overflows");
	T_CHECK(dtype_row_bytes(DT_F32, (UINT64_C(1) << 62) - 1, &b) && b == UINT64_MAX - 3,
	        "F32 2^62-1 -> %llu", (unsigned long long)b);
	T_CHECK(!dtype_row_bytes(DT_F64, UINT64_MAX, &b), "F64 UINT64_MAX overflows");
	/* 2^63 Q8_0 elements: n*34 overflows but n/32*34 = 34*2^58 does not */
	T_CHECK(dtype_row_bytes(DT_Q8_0, UINT64_C(1) << 63, &b) && b == (UINT64_C(34) << 58),
	        "Q8_0 2^63 -> %llu, want 34*2^58", (unsigned long long)b);
	/* largest whole-block count: (2^59-1) blocks * 34 bytes overflows, * 18 does not */
	T_CHECK(!dtype_row_bytes(DT_Q8_0, UINT64_MAX - 31, &b), "Q8_0 huge overflows");
	T_CHECK(dtype_row_bytes(DT_Q4_0, UINT64_MAX - 31, &b) && b == ((UINT64_C(1) << 59) - 1) * 18,
	        "Q4_0 huge -> %llu", (unsigned long long)b);
}

/* --------------------------------------------------- half and bfloat */

/* Value of a half from its fields, with ldexp (independent of dtype.c). */
static double half_ref(uint16_t h)
{
	int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
	double v;

	if (exp == 31)
		v = man ? NAN : INFINITY;
	else if (exp == 0)
		v = ldexp(man, -24);
	else
		v = ldexp(man + 1024, exp - 25);
	return sign ? -v : v;
}

static void test_f16(void)
{
	int bad_value = 0, bad_trip = 0, bad_mid = 0;

	for (uint32_t h = 0; h < 65536; h++) {
		float f = dtype_f16_to_f32((uint16_t)h);
		double r = half_ref((uint16_t)h);
		uint16_t back = dtype_f32_to_f16(f);
		if (isnan(r)) {
			/* NaN: sign and payload kept on the way up; quiet on the way down */
			uint32_t want = ((h & 0x8000u) << 16) | 0x7f800000u | ((h & 0x3ffu) << 13);
			bad_value += bits_of(f) != want;
			bad_trip += back != (uint16_t)(h | 0x200);
		} else {
			bad_value += (double)f != r || (signbit(f) != 0) != ((h >> 15) != 0);
			bad_trip += back != h;
		}
	}
	T_EQ_INT(bad_value, 0);
	T_EQ_INT(bad_trip, 0);

	/* Exact midpoints between neighbouring positive halves tie to the even
	 * one; one float ulp either side goes to the nearer. 0x7bff..inf too. */
	for (uint32_t h = 0; h < 0x7c00; h++) {
		double lo = half_ref((uint16_t)h);
		double hi = h == 0x7bff ? 65536.0 : half_ref((uint16_t)(h + 1)); /* inf as 2^16 */
		float mid = (float)((lo + hi) / 2); /* 12 significant bits: exact */
		uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
		bad_mid += dtype_f32_to_f16(mid) != even;
		bad_mid += dtype_f32_to_f16(-mid) != (even | 0x8000);
		bad_mid += dtype_f32_to_f16(nextafterf(mid, INFINITY)) != h + 1;
		bad_mid += dtype_f32_to_f16(nextafterf(mid, 0.0f)) != h;
	}
	T_EQ_INT(bad_mid, 0);

	/* hand-picked */
	T_EQ_INT(dtype_f32_to_f16(1.0f), 0x3c00);
	T_EQ_INT(dtype_f32_to_f16(-2.0f), 0xc000);
	T_EQ_INT(dtype_f32_to_f16(65504.0f), 0x7bff);
	T_EQ_INT(dtype_f32_to_f16(65520.0f), 0x7c00); /* tie with inf: to even */
	T_EQ_INT(dtype_f32_to_f16(1e30f), 0x7c00);
	T_EQ_INT(dtype_f32_to_f16(-INFINITY), 0xfc00);
	T_EQ_INT(dtype_f32_to_f16(0x1p-24f), 0x0001);
	T_EQ_INT(dtype_f32_to_f16(0x1p-25f), 0x0000); /* tie: to even (zero) */
	T_EQ_INT(dtype_f32_to_f16(0x1.000002p-25f), 0x0001);
	T_EQ_INT(dtype_f32_to_f16(0x1.8p-24f), 0x0002);      /* 1.5 units: to even 2 */
	T_EQ_INT(dtype_f32_to_f16(0x1.ff8p-15f), 0x03ff);    /* largest subnormal */
	T_EQ_INT(dtype_f32_to_f16(0x1.ffbffep-15f), 0x03ff); /* just below the tie */
	T_EQ_INT(dtype_f32_to_f16(0x1.ffcp-15f), 0x0400);    /* tie: up into the normals */
	T_EQ_INT(dtype_f32_to_f16(-0.0f), 0x8000);
	T_EQ_INT(dtype_f32_to_f16(1e-30f), 0x0000);
	T_EQ_INT(dtype_f32_to_f16(float_of(0x7fc00000)), 0x7e00);
	T_EQ_INT(dtype_f32_to_f16(float_of(0xff800001)) & 0xfe00, 0xfe00); /* sNaN -> quiet */
	T_EQ_INT(bits_of(dtype_f16_to_f32(0x0001)), bits_of(0x1p-24f));
	T_EQ_INT(bits_of(dtype_f16_to_f32(0x8000)), 0x80000000);

	/* numpy's float32 -> float16 on 4,096 varied floats (no NaNs) */
	size_t n_in = 0, n_out = 0;
	uint8_t *in = fixture("f16-in.f32", &n_in), *out = fixture("f16-out.f16", &n_out);
	uint8_t *outb = fixture("bf16-out.bf16", &n_out);
	if (in && out && outb) {
		size_t n = n_in / 4;
		int bad16 = 0, badb = 0;
		T_EQ_INT(n_out, n * 2);
		for (size_t i = 0; i < n; i++) {
			float f;
			uint16_t w16, wb;
			memcpy(&f, in + 4 * i, 4);
			memcpy(&w16, out + 2 * i, 2);
			memcpy(&wb, outb + 2 * i, 2);
			if (dtype_f32_to_f16(f) != w16 && bad16++ < 3)
				fprintf(stderr, "  f16(%a) = 0x%04x, numpy 0x%04x\n", (double)f,
				        dtype_f32_to_f16(f), w16);
			if (dtype_f32_to_bf16(f) != wb && badb++ < 3)
				fprintf(stderr, "  bf16(%a) = 0x%04x, gguf-py 0x%04x\n", (double)f,
				        dtype_f32_to_bf16(f), wb);
		}
		T_CHECK(n >= 4096, "f16 fixture has %zu values", n);
		T_EQ_INT(bad16, 0);
		T_EQ_INT(badb, 0);
	}
	free(in);
	free(out);
	free(outb);
}

static void test_bf16(void)
{
	int bad = 0;

	/* every bfloat: value from its fields (sign, 8-bit exponent, 7-bit mantissa) */
	for (uint32_t h = 0; h < 65536; h++) {
		int sign = h >> 15, exp = (h >> 7) & 255, man = h & 127;
		float f = dtype_bf16_to_f32((uint16_t)h);
		double r;
		if (exp == 255) {
			bad += man ? !isnan(f) || bits_of(f) != h << 16 : !isinf(f);
			bad += (signbit(f) != 0) != (sign != 0);
			continue;
		}
		r = exp == 0 ? ldexp(man, -133) : ldexp(man + 128, exp - 134);
		if (sign)
			r = -r;
		bad += (double)f != r || (signbit(f) != 0) != (sign != 0);
		bad += dtype_f32_to_bf16(f) != h; /* exact values survive the trip */
	}
	T_EQ_INT(bad, 0);
	T_EQ_INT(dtype_f32_to_bf16(1.0f), 0x3f80);
	T_EQ_INT(dtype_f32_to_bf16(float_of(0x3f808000)), 0x3f80); /* tie: to even */
	T_EQ_INT(dtype_f32_to_bf16(float_of(0x3f818000)), 0x3f82); /* tie: to even */
	T_EQ_INT(dtype_f32_to_bf16(float_of(0x3f808001)), 0x3f81);
	T_EQ_INT(dtype_f32_to_bf16(float_of(0x7f7fffff)), 0x7f80); /* FLT_MAX -> inf */
	T_EQ_INT(dtype_f32_to_bf16(float_of(0x7f800001)), 0x7fc0); /* sNaN -> quiet NaN */
	T_EQ_INT(dtype_f32_to_bf16(float_of(0xffffffff)), 0xffff); /* NaN stays NaN */
	T_EQ_INT(dtype_f32_to_bf16(-INFINITY), 0xff80);
}

/* -------------------------------------------------------- dequant */

static void test_dequant_fixtures(void)
{
	static const struct {
		const char *file;
		uint32_t type;
		int min_blocks;
	} cases[] = {
		{ "f32", DT_F32, 128 },       { "f16", DT_F16, 128 }, { "bf16", DT_BF16, 128 },
		{ "q4_0", DT_Q4_0, 8 },       { "q4_1", DT_Q4_1, 8 }, { "q5_0", DT_Q5_0, 8 },
		{ "q5_1", DT_Q5_1, 8 },       { "q8_0", DT_Q8_0, 8 }, { "q4_k", DT_Q4_K, 8 },
		{ "q5_k", DT_Q5_K, 8 },       { "q6_k", DT_Q6_K, 8 }, { "real-q4_1", DT_Q4_1, 18 },
		{ "real-q8_0", DT_Q8_0, 18 },
	};
	bool covered[DT_COUNT_] = { 0 };

	for (size_t c = 0; c < KVS_ARRAY_LEN(cases); c++) {
		char name[64];
		size_t n_src = 0, n_ref = 0;
		const struct dtype_info *ti = dtype_info(cases[c].type);
		snprintf(name, sizeof name, "%s.bin", cases[c].file);
		uint8_t *src = fixture(name, &n_src);
		snprintf(name, sizeof name, "%s.f32", cases[c].file);
		float *ref = (float *)fixture(name, &n_ref);
		if (src && ref && ti) {
			size_t n_blocks = n_src / ti->block_bytes;
			size_t n = n_blocks * ti->block_elems;
			T_CHECK(n_src % ti->block_bytes == 0 && n_blocks >= (size_t)cases[c].min_blocks,
			        "%s: %zu bytes", cases[c].file, n_src);
			T_EQ_INT(n_ref, n * sizeof(float));
			if (n_ref == n * sizeof(float)) {
				float *got = xmallocarray(n, sizeof *got);
				T_CHECK(dtype_dequant(cases[c].type, src, got, (int64_t)n), "%s dequant refused",
				        cases[c].file);
				int bad = diff_floats(cases[c].file, got, ref, n);
				T_CHECK(bad == 0, "%s: %d of %zu values differ from gguf-py", cases[c].file, bad,
				        n);
				covered[cases[c].type] = true;
				free(got);
			}
		}
		free(src);
		free(ref);
	}
	/* every dequantisable type is covered by a fixture */
	for (uint32_t t = 0; t < DT_COUNT_; t++)
		if (dtype_info(t) && dtype_info(t)->weight_ok)
			T_CHECK(covered[t], "no fixture for %s", dtype_name(t));
}

static void test_dequant_refuses(void)
{
	uint8_t src[512] = { 0 };
	float dst[256];

	dst[0] = 42.0f;
	T_CHECK(!dtype_dequant(DT_Q2_K, src, dst, 256), "Q2_K is not a weight type here");
	T_CHECK(!dtype_dequant(DT_Q8_1, src, dst, 32), "Q8_1");
	T_CHECK(!dtype_dequant(DT_I32, src, dst, 4), "I32");
	T_CHECK(!dtype_dequant(4, src, dst, 32), "removed id 4");
	T_CHECK(!dtype_dequant(UINT32_MAX, src, dst, 32), "id UINT32_MAX");
	T_CHECK(!dtype_dequant(DT_Q4_0, src, dst, 31), "ragged Q4_0");
	T_CHECK(!dtype_dequant(DT_Q6_K, src, dst, 128), "ragged Q6_K");
	T_CHECK(!dtype_dequant(DT_F32, src, dst, -1), "negative n");
	T_CHECK(dst[0] == 42.0f, "dst touched by a refused call");
	T_CHECK(dtype_dequant(DT_Q4_0, src, dst, 0), "n = 0 is fine");
}

/* Dequantise one block of type t and compare chosen elements with hand values. */
static void check_block(const char *what, uint32_t t, const uint8_t *blk, const int *idx,
                        const float *want, int n_want, float rest, int rest_from)
{
	float y[256];
	int n = (int)dtype_info(t)->block_elems;

	T_CHECK(dtype_dequant(t, blk, y, n), "%s refused", what);
	for (int i = 0; i < n_want; i++)
		T_CHECK(y[idx[i]] == want[i], "%s[%d] = %.9g, want %.9g", what, idx[i], y[idx[i]], want[i]);
	/* elements not listed (from rest_from on) all equal rest */
	for (int i = rest_from; i < n; i++) {
		bool listed = false;
		for (int k = 0; k < n_want; k++)
			listed |= idx[k] == i;
		if (!listed)
			T_CHECK(y[i] == rest, "%s[%d] = %.9g, want %.9g", what, i, y[i], rest);
	}
}

static void test_dequant_hand(void)
{
	uint8_t b[256];

	/* Q4_0: d = 0.5 (f16 0x3800); qs[0] = 0x1f -> e0 = (15-8)*.5 = 3.5,
	 * e16 = (1-8)*.5 = -3.5; qs[1] = 0x80 -> e1 = -4, e17 = 0; others 0x88 -> 0 */
	memset(b, 0x88, 18);
	b[0] = 0x00, b[1] = 0x38, b[2] = 0x1f, b[3] = 0x80;
	check_block("Q4_0", DT_Q4_0, b, (const int[]){ 0, 16, 1, 17 },
	            (const float[]){ 3.5f, -3.5f, -4.0f, 0.0f }, 4, 0.0f, 0);

	/* Q4_1: d = 0.25 (0x3400), m = -1 (0xbc00); qs[0] = 0xa3 -> e0 = 3*.25-1 = -0.25,
	 * e16 = 10*.25-1 = 1.5; qs[15] = 0xf0 -> e15 = -1, e31 = 15*.25-1 = 2.75; others -1 */
	memset(b, 0, 20);
	b[1] = 0x34, b[3] = 0xbc, b[4] = 0xa3, b[19] = 0xf0;
	check_block("Q4_1", DT_Q4_1, b, (const int[]){ 0, 16, 31 },
	            (const float[]){ -0.25f, 1.5f, 2.75f }, 3, -1.0f, 0);

	/* Q5_0: d = 1 (0x3c00), qh = 0x80010001 (5th bit of e0, e16, e31);
	 * qs[0] = 0x21 -> e0 = (1|16)-16 = 1, e16 = (2|16)-16 = 2;
	 * qs[15] = 0xf0 -> e15 = 0-16 = -16, e31 = (15|16)-16 = 15; others -16 */
	memset(b, 0, 22);
	b[1] = 0x3c, b[2] = 0x01, b[4] = 0x01, b[5] = 0x80, b[6] = 0x21, b[21] = 0xf0;
	check_block("Q5_0", DT_Q5_0, b, (const int[]){ 0, 16, 31 },
	            (const float[]){ 1.0f, 2.0f, 15.0f }, 3, -16.0f, 0);

	/* Q5_1: d = 0.5 (0x3800), m = 2 (0x4000), qh bits 0 and 31;
	 * qs[0] = 0x0f -> e0 = (15|16)*.5+2 = 17.5, e16 = 2;
	 * qs[15] = 0xf0 -> e31 = 31*.5+2 = 17.5; others 2 */
	memset(b, 0, 24);
	b[1] = 0x38, b[3] = 0x40, b[4] = 0x01, b[7] = 0x80, b[8] = 0x0f, b[23] = 0xf0;
	check_block("Q5_1", DT_Q5_1, b, (const int[]){ 0, 31 }, (const float[]){ 17.5f, 17.5f }, 2,
	            2.0f, 0);

	/* Q8_0: d = 0.125 (0x3000); qs = -128, 127, 1 -> -16, 15.875, 0.125; others 0 */
	memset(b, 0, 34);
	b[1] = 0x30, b[2] = 0x80, b[3] = 0x7f, b[4] = 0x01;
	check_block("Q8_0", DT_Q8_0, b, (const int[]){ 0, 1, 2 },
	            (const float[]){ -16.0f, 15.875f, 0.125f }, 3, 0.0f, 0);

	/*
	 * Q4_K: d = 1 (0x3c00), dmin = 0.5 (0x3800).
	 * scales[0] = 1 -> sc0 = 1; scales[4] = 2 -> mn0 = 2;
	 * scales[1] = 0xc3 -> sc1 = 3 and the top bits of sc5 = 3;
	 * scales[5] = 0x41 -> mn1 = 1 and the top bits of mn5 = 1;
	 * scales[9] = 0x52 -> sc5 = 2 | 3<<4 = 50, mn5 = 5 | 1<<4 = 21.
	 * qs[0] = 0x74: e0 (sub-block 0) = 1*1*4 - .5*2 = 3, e32 (sub-block 1) = 3*7 - .5*1 = 20.5
	 * qs[64] = 0x90: e128 (sub-block 4: sc4 = mn4 = 0) = 0, e160 (sub-block 5) = 50*9 - .5*21 = 439.5
	 * other elements: e1 = -1 (sub-block 0), e33 = -0.5 (sub-block 1), e161 = -10.5
	 */
	memset(b, 0, 144);
	b[1] = 0x3c, b[3] = 0x38;
	b[4 + 0] = 1, b[4 + 4] = 2, b[4 + 1] = 0xc3, b[4 + 5] = 0x41, b[4 + 9] = 0x52;
	b[16 + 0] = 0x74, b[16 + 64] = 0x90;
	check_block("Q4_K", DT_Q4_K, b, (const int[]){ 0, 32, 128, 160, 1, 33, 161, 255 },
	            (const float[]){ 3.0f, 20.5f, 0.0f, 439.5f, -1.0f, -0.5f, -10.5f, 0.0f }, 8, 0.0f,
	            192);

	/*
	 * Q5_K: d = 1, dmin = 1; scales[0..2] = 1, scales[3] = 2 -> sc0..2 = 1, sc3 = 2;
	 * scales[7] = 3 -> mn3 = 3; scales[8..11] = 1 -> sc4..7 = 1, mn4..7 = 0.
	 * qh[0] = 0x05: bit 0 -> e0 +16, bit 2 -> e64 +16.
	 * qs[0] = 0x3f: e0 = 15+16 = 31, e32 = 3.
	 * qs[32] = 0x21: e64 = 1+16 = 17, e96 (sub-block 3) = 2*2 - 3 = 1.
	 * qh[31] = 0x80 (bit 7: chunk 3 high), qs[127] = 0xf0: e255 = 15+16 = 31, e223 = 0.
	 * e97 = 0*2 - 3 = -3; chunk 2..3 others 0.
	 */
	memset(b, 0, 176);
	b[1] = 0x3c, b[3] = 0x3c;
	b[4] = 1, b[5] = 1, b[6] = 1, b[7] = 2, b[11] = 3;
	b[12] = b[13] = b[14] = b[15] = 1;
	b[16 + 0] = 0x05, b[16 + 31] = 0x80;
	b[48 + 0] = 0x3f, b[48 + 32] = 0x21, b[48 + 127] = 0xf0;
	check_block("Q5_K", DT_Q5_K, b, (const int[]){ 0, 32, 64, 96, 97, 127, 255, 223 },
	            (const float[]){ 31.0f, 3.0f, 17.0f, 1.0f, -3.0f, -3.0f, 31.0f, 0.0f }, 8, 0.0f,
	            128);

	/*
	 * Q6_K: d = 0.5 (0x3800, last two bytes); scales[0] = 2, [1] = 3, [2] = -1, [4] = 1,
	 * [6] = 1, [8] = 4.
	 * ql[0] = 0x21, ql[32] = 0x00, qh[0] = 0xe4 (2-bit fields 0,1,2,3):
	 *   e0  = .5*2  * ((1 | 0<<4) - 32)  = -31
	 *   e32 = .5*-1 * ((0 | 1<<4) - 32)  = 8
	 *   e64 = .5*1  * ((2 | 2<<4) - 32)  = 1
	 *   e96 = .5*1  * ((0 | 3<<4) - 32)  = 8
	 * ql[16] = 0x05, qh[16] = 0: e16 = .5*3 * (5 - 32) = -40.5
	 * ql[64] = 0x0f, qh[32] = 0x03: e128 = .5*4 * ((15 | 3<<4) - 32) = 62
	 * e129 = .5*4 * -32 = -64; upper 128 other than sub-block 8 use zero scales.
	 */
	memset(b, 0, 210);
	b[208] = 0x00, b[209] = 0x38;
	b[192 + 0] = 2, b[192 + 1] = 3, b[192 + 2] = 0xff, b[192 + 4] = 1, b[192 + 6] = 1,
	        b[192 + 8] = 4;
	b[0] = 0x21, b[16] = 0x05, b[64] = 0x0f;
	b[128 + 0] = 0xe4, b[128 + 32] = 0x03;
	check_block("Q6_K", DT_Q6_K, b, (const int[]){ 0, 32, 64, 96, 16, 128, 129, 1 },
	            (const float[]){ -31.0f, 8.0f, 1.0f, 8.0f, -40.5f, 62.0f, -64.0f, -32.0f }, 8, 0.0f,
	            144);

	/* scalars: F16 0x3c00 = 1, 0xc000 = -2, 0x0001 = 2^-24, 0x7bff = 65504 (LE bytes) */
	static const uint8_t h[] = { 0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00, 0xff, 0x7b };
	float y[4];
	T_CHECK(dtype_dequant(DT_F16, h, y, 4), "F16");
	T_CHECK(y[0] == 1.0f && y[1] == -2.0f && y[2] == 0x1p-24f && y[3] == 65504.0f,
	        "F16 hand values %g %g %g %g", y[0], y[1], y[2], y[3]);
	/* BF16 0x3f80 = 1, 0xc049 = -3.140625 */
	static const uint8_t bf[] = { 0x80, 0x3f, 0x49, 0xc0 };
	T_CHECK(dtype_dequant(DT_BF16, bf, y, 2), "BF16");
	T_CHECK(y[0] == 1.0f && y[1] == -3.140625f, "BF16 hand values %g %g", y[0], y[1]);
	/* F32 1.5 = 0x3fc00000 at an odd address */
	static const uint8_t f[] = { 0xee, 0x00, 0x00, 0xc0, 0x3f };
	T_CHECK(dtype_dequant(DT_F32, f + 1, y, 1) && y[0] == 1.5f, "F32 unaligned %g", y[0]);
}

/* ------------------------------------------------------- quantisers */

static void test_quantisers(void)
{
	static const struct {
		const char *file;
		uint32_t type;
		void (*quant)(const float *, void *, int64_t);
	} cases[] = {
		{ "quant-q8_0.bin", DT_Q8_0, dtype_quant_q8_0 },
		{ "quant-q4_0.bin", DT_Q4_0, dtype_quant_q4_0 },
		{ "quant-q4_1.bin", DT_Q4_1, dtype_quant_q4_1 },
	};
	size_t n_in = 0;
	float *in = (float *)fixture("quant-in.f32", &n_in);

	if (in == NULL)
		return;
	int64_t n = (int64_t)(n_in / sizeof(float));
	T_CHECK(n >= 24 * 32 && n % 32 == 0, "quant-in has %lld floats", (long long)n);
	for (size_t c = 0; c < KVS_ARRAY_LEN(cases); c++) {
		size_t n_ref = 0;
		uint8_t *ref = fixture(cases[c].file, &n_ref);
		uint64_t bytes = 0;
		T_CHECK(dtype_row_bytes(cases[c].type, (uint64_t)n, &bytes), "row bytes");
		if (ref && n_ref == bytes) {
			uint8_t *got = xmalloc(bytes);
			cases[c].quant(in, got, n);
			size_t bad = 0, first = SIZE_MAX;
			for (size_t i = 0; i < bytes; i++)
				if (got[i] != ref[i]) {
					bad++;
					first = KVS_MIN(first, i);
				}
			T_CHECK(bad == 0, "%s: %zu of %llu bytes differ (first at %zu: 0x%02x, want 0x%02x)",
			        cases[c].file, bad, (unsigned long long)bytes, first, bad ? got[first] : 0,
			        bad ? ref[first] : 0);
			free(got);
		} else {
			T_CHECK(0, "%s: %zu bytes, expected %llu", cases[c].file, n_ref,
			        (unsigned long long)bytes);
		}
		free(ref);
	}

	/* Hand case, Q8_0 rounding ties away from zero: amax 127 gives d = 1, so
	 * 2.5 -> 3, -2.5 -> -3, 0.5 -> 1, -126.5 -> -127 (round-half-even gives 2, -2, 0, -126). */
	float x[32] = { 127.0f, 2.5f, -2.5f, 0.5f, -126.5f };
	uint8_t q[34];
	dtype_quant_q8_0(x, q, 32);
	T_CHECK(q[0] == 0x00 && q[1] == 0x3c, "Q8_0 d = 1.0: %02x%02x", q[1], q[0]);
	T_CHECK((int8_t)q[2] == 127 && (int8_t)q[3] == 3 && (int8_t)q[4] == -3 && (int8_t)q[5] == 1 &&
	                (int8_t)q[6] == -127 && q[7] == 0,
	        "Q8_0 ties: %d %d %d %d %d", (int8_t)q[2], (int8_t)q[3], (int8_t)q[4], (int8_t)q[5],
	        (int8_t)q[6]);

	/* Hand case, Q4_0: max magnitude -8 (negative) gives d = 1, id = 1;
	 * x -> trunc(x + 8.5): -8 -> 0, 7 -> 15, 7.4 -> 15, 0 -> 8, -0.6 -> 7;
	 * e16 = 7.9 -> min(15, 16) = 15 */
	float x0[32] = { -8.0f, 7.0f, 7.4f, 0.0f, -0.6f };
	x0[16] = 7.9f;
	uint8_t q0[18];
	dtype_quant_q4_0(x0, q0, 32);
	T_CHECK(q0[0] == 0x00 && q0[1] == 0x3c, "Q4_0 d = 1.0: %02x%02x", q0[1], q0[0]);
	T_CHECK(q0[2] == (0x00 | 0xf0) && q0[3] == 0x8f && q0[4] == 0x8f && q0[5] == 0x88 &&
	                q0[6] == 0x87,
	        "Q4_0 nibbles %02x %02x %02x %02x %02x", q0[2], q0[3], q0[4], q0[5], q0[6]);

	/* Hand case, Q4_1: min -1, max 14 -> d = 1, m = -1; q = trunc(x + 1 + .5) */
	float x1[32];
	for (int i = 0; i < 32; i++)
		x1[i] = -1.0f;
	x1[0] = 14.0f, x1[1] = 0.4f, x1[16] = 0.5f; /* 15, 1, trunc(2.0) = 2 */
	uint8_t q1[20];
	dtype_quant_q4_1(x1, q1, 32);
	T_CHECK(q1[0] == 0x00 && q1[1] == 0x3c && q1[2] == 0x00 && q1[3] == 0xbc,
	        "Q4_1 d, m: %02x%02x %02x%02x", q1[1], q1[0], q1[3], q1[2]);
	T_CHECK(q1[4] == 0x2f && q1[5] == 0x01 && q1[6] == 0x00, "Q4_1 nibbles %02x %02x %02x", q1[4],
	        q1[5], q1[6]);

	/* Round trip: dequantising our quantisation stays within half a step (+ f16 error). */
	for (size_t c = 0; c < KVS_ARRAY_LEN(cases); c++) {
		uint64_t bytes = 0;
		dtype_row_bytes(cases[c].type, (uint64_t)n, &bytes);
		uint8_t *qq = xmalloc(bytes);
		float *back = xmallocarray((size_t)n, sizeof *back);
		cases[c].quant(in, qq, n);
		dtype_dequant(cases[c].type, qq, back, n);
		int bad = 0;
		for (int64_t blk = 0; blk < n / 32; blk++) {
			float lo = in[blk * 32], hi = in[blk * 32];
			for (int i = 0; i < 32; i++) {
				lo = KVS_MIN(lo, in[blk * 32 + i]);
				hi = KVS_MAX(hi, in[blk * 32 + i]);
			}
			/* half a step, or a whole one where Q4_0 clips the side opposite
			 * its max at +7; plus what storing d (times the largest q) and m
			 * in f16 costs: 2^-11 relative, 2^-25 absolute near zero */
			double amax = KVS_MAX(fabs(lo), fabs(hi)), tol;
			if (cases[c].type == DT_Q8_0)
				tol = amax / 127 / 2 + 127 * KVS_MAX(amax / 127 * 0x1p-11, 0x1p-25);
			else if (cases[c].type == DT_Q4_0)
				tol = amax / 8 + 8 * KVS_MAX(amax / 8 * 0x1p-11, 0x1p-25);
			else
				tol = (hi - lo) / 15 / 2 + 15 * KVS_MAX((hi - lo) / 15 * 0x1p-11, 0x1p-25) +
				        KVS_MAX(amax * 0x1p-11, 0x1p-25);
			for (int i = 0; i < 32; i++)
				if (fabs((double)back[blk * 32 + i] - in[blk * 32 + i]) > tol * 1.0001 && bad++ < 3)
					fprintf(stderr, "  %s block %lld [%d]: %g -> %g (tol %g)\n", cases[c].file,
					        (long long)blk, i, in[blk * 32 + i], back[blk * 32 + i], tol);
		}
		T_CHECK(bad == 0, "%s round trip: %d values off by more than the step", cases[c].file, bad);
		free(qq);
		free(back);
	}
	free(in);
}

int main(void)
{
	test_table();
	test_row_bytes();
	test_f16();
	test_bf16();
	test_dequant_fixtures();
	test_dequant_refuses();
	test_dequant_hand();
	test_quantisers();
	return t_done("test-dtype");
}
