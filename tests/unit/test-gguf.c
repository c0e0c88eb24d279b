/*
 * test-gguf.c: the GGUF reader against files built by tests/util/ggufw.c and
 * against the real default model.
 *
 * Part 1 writes a file holding every value type and checks each decoded
 * value against the value written. Part 2 corrupts one field of a valid
 * file at a time (the position comes from the writer's field map) and checks
 * the status and that the message names the field and the bad value. Part 3
 * truncates a tiny model at every byte of its header and at every record
 * boundary of its data and checks each prefix is refused with one line.
 * Part 4 reads the real SmolLM2-135M-Instruct Q4_1 file; the expected
 * numbers come from gguf-py's GGUFReader and llama.cpp's llama-gguf (see
 * the comment there), not from this reader.
 */
#include "model/model.h"
#include "tests/unit/test.h"
#include "tests/util/ggufw.h"
#include "tests/util/tinymodel.h"

#include <errno.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

/* Default model path, as cli_model_path(NULL) finds it. */
static char *model_path(void)
{
	return model_default_path(NULL);
}

/* A temp file path under $TMPDIR (created empty). */
static char *tmp_path(void)
{
	const char *dir = getenv("TMPDIR");
	char *p = xasprintf("%s/test-gguf-XXXXXX", dir && dir[0] ? dir : "/tmp");
	int fd = mkstemp(p);
	if (fd < 0) {
		fprintf(stderr, "mkstemp %s: %s\n", p, strerror(errno));
		exit(99);
	}
	close(fd);
	return p;
}

/* ---- part 1: every value type round-trips ---- */

static void test_values(void)
{
	struct ggufw *w = ggufw_new();
	static const char *const strs[] = { "alpha", "", "gamma\xc4\xa0" };
	static const int32_t i32s[] = { -5, 0, 7 };
	static const float f32s[] = { 0.5f, -2.25f };
	static const uint8_t u8s[] = { 1, 2, 255 };
	float data[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	struct gguf_file *f;
	struct err e = { 0 };
	const struct gguf_kv *kv;
	const struct gguf_tensor *t;
	struct gguf_str s;
	uint32_t u32;
	uint64_t u64;
	int32_t i32;
	float f32;
	bool b;
	uint8_t *buf;
	size_t n;
	int rc;

	ggufw_add_u8(w, "t.u8", 200);
	ggufw_add_i8(w, "t.i8", -100);
	ggufw_add_u16(w, "t.u16", 60000);
	ggufw_add_i16(w, "t.i16", -30000);
	ggufw_add_u32(w, "t.u32", 4000000000u);
	ggufw_add_i32(w, "t.i32", -2000000000);
	ggufw_add_f32(w, "t.f32", 1.5f);
	ggufw_add_bool(w, "t.bool", 1);
	ggufw_add_str(w, "t.str", "hello");
	ggufw_add_u64(w, "t.u64", 0xfedcba9876543210ull);
	ggufw_add_i64(w, "t.i64", -1234567890123ll);
	ggufw_add_f64(w, "t.f64", -0.125);
	ggufw_add_arr_str(w, "t.astr", strs, 3);
	ggufw_add_arr_i32(w, "t.ai32", i32s, 3);
	ggufw_add_arr_f32(w, "t.af32", f32s, 2);
	ggufw_add_arr_u8(w, "t.au8", u8s, 3);
	ggufw_add_tensor_f32(w, "a", 2, (int64_t[]){ 4, 2 }, data);
	ggufw_add_tensor_f32(w, "b.weight", 1, (int64_t[]){ 3 }, data);
	ggufw_write_mem(w, &buf, &n);

	rc = gguf_open_memory(&f, buf, n, &e);
	T_CHECK(rc == KVS_OK, "open: %s", e.msg);
	if (rc != KVS_OK)
		goto out;
	T_EQ_INT(f->version, 3);
	T_EQ_INT(f->n_kv, 16);
	T_EQ_INT(f->n_tensors, 2);
	T_EQ_INT(f->alignment, 32);
	T_EQ_INT(f->data_offset % 32, 0);
	T_EQ_INT(f->data_offset, ggufw_field(w, GW_DATA, 0, 0)->pos);

	T_EQ_INT(gguf_get_u32(f, "t.u8", &u32, &e), KVS_OK);
	T_EQ_INT(u32, 200);
	T_EQ_INT(gguf_get_i32(f, "t.i8", &i32, &e), KVS_OK);
	T_EQ_INT(i32, -100);
	T_EQ_INT(gguf_get_u32(f, "t.u16", &u32, &e), KVS_OK);
	T_EQ_INT(u32, 60000);
	T_EQ_INT(gguf_get_i32(f, "t.i16", &i32, &e), KVS_OK);
	T_EQ_INT(i32, -30000);
	T_EQ_INT(gguf_get_u32(f, "t.u32", &u32, &e), KVS_OK);
	T_EQ_INT(u32, 4000000000u);
	T_EQ_INT(gguf_get_i32(f, "t.i32", &i32, &e), KVS_OK);
	T_EQ_INT(i32, -2000000000);
	T_EQ_INT(gguf_get_f32(f, "t.f32", &f32, &e), KVS_OK);
	T_NEAR(f32, 1.5, 0);
	T_EQ_INT(gguf_get_bool(f, "t.bool", &b, &e), KVS_OK);
	T_EQ_INT(b, 1);
	T_EQ_INT(gguf_get_str(f, "t.str", &s, &e), KVS_OK);
	T_CHECK(s.n == 5 && memcmp(s.p, "hello", 5) == 0, "t.str = '%.*s'", (int)s.n, s.p);
	T_EQ_INT(gguf_get_u64(f, "t.u64", &u64, &e), KVS_OK);
	T_CHECK(u64 == 0xfedcba9876543210ull, "t.u64 = %llx", (unsigned long long)u64);
	kv = gguf_find_kv(f, "t.i64");
	T_CHECK(kv != NULL && kv->type == GGUF_I64 && kv->v.i == -1234567890123ll, "t.i64");
	T_EQ_INT(gguf_get_f32(f, "t.f64", &f32, &e), KVS_OK);
	T_NEAR(f32, -0.125, 0);

	/* Conversions the getters must refuse, with the key and both types named. */
	T_EQ_INT(gguf_get_u32(f, "t.i8", &u32, &e), KVS_EFORMAT);
	T_CHECK(strstr(e.msg, "t.i8") && strstr(e.msg, "-100"), "msg: %s", e.msg);
	T_EQ_INT(gguf_get_u32(f, "t.u64", &u32, &e), KVS_EFORMAT);
	T_EQ_INT(gguf_get_i32(f, "t.u32", &i32, &e), KVS_EFORMAT);
	T_EQ_INT(gguf_get_u32(f, "t.str", &u32, &e), KVS_EFORMAT);
	T_CHECK(strstr(e.msg, "'t.str' has type string"), "msg: %s", e.msg);
	T_EQ_INT(gguf_get_str(f, "t.u8", &s, &e), KVS_EFORMAT);
	T_CHECK(strstr(e.msg, "type u8, expected string"), "msg: %s", e.msg);
	T_EQ_INT(gguf_get_bool(f, "t.u8", &b, &e), KVS_EFORMAT);
	T_EQ_INT(gguf_get_f32(f, "t.u32", &f32, &e), KVS_EFORMAT);
	T_EQ_INT(gguf_get_u32(f, "no.such.key", &u32, &e), KVS_ENOTFOUND);
	T_CHECK(strstr(e.msg, "no.such.key"), "msg: %s", e.msg);

	T_EQ_INT(gguf_get_arr(f, "t.astr", GGUF_STRING, &kv, &e), KVS_OK);
	if (kv != NULL) {
		T_EQ_INT(kv->arr_n, 3);
		for (int i = 0; i < 3; i++) {
			s = gguf_arr_str(kv, (uint64_t)i);
			T_CHECK(s.n == strlen(strs[i]) && memcmp(s.p, strs[i], s.n) == 0, "astr[%d] = '%.*s'",
			        i, (int)s.n, s.p);
		}
	}
	T_EQ_INT(gguf_get_arr(f, "t.ai32", GGUF_I32, &kv, &e), KVS_OK);
	if (kv != NULL) {
		T_EQ_INT(gguf_arr_i64(kv, 0), -5);
		T_EQ_INT(gguf_arr_i64(kv, 2), 7);
		T_NEAR(gguf_arr_f64(kv, 0), -5, 0);
	}
	T_EQ_INT(gguf_get_arr(f, "t.af32", GGUF_F32, &kv, &e), KVS_OK);
	if (kv != NULL)
		T_NEAR(gguf_arr_f64(kv, 1), -2.25, 0);
	/* The typed-array confusion of llama.cpp #24888: u8 array asked as f32. */
	T_EQ_INT(gguf_get_arr(f, "t.au8", GGUF_F32, &kv, &e), KVS_EFORMAT);
	T_CHECK(strstr(e.msg, "array of u8, expected an array of f32"), "msg: %s", e.msg);
	T_EQ_INT(gguf_get_arr(f, "t.au8", GGUF_VTYPE_COUNT_, &kv, &e), KVS_OK);
	if (kv != NULL)
		T_EQ_INT(gguf_arr_i64(kv, 2), 255);
	T_EQ_INT(gguf_get_arr(f, "t.u8", GGUF_U8, &kv, &e), KVS_EFORMAT);

	t = gguf_find_tensor(f, "a");
	T_CHECK(t != NULL, "tensor a");
	if (t != NULL) {
		T_EQ_INT(t->n_dims, 2);
		T_EQ_INT(t->ne[0], 4);
		T_EQ_INT(t->ne[1], 2);
		T_EQ_INT(t->ne[2], 1);
		T_EQ_INT(t->type, DT_F32);
		T_EQ_INT(t->nbytes, 32);
		T_EQ_INT(t->offset, 0);
		T_CHECK(t->data != NULL && memcmp(t->data, data, 32) == 0, "tensor a data");
	}
	t = gguf_find_tensor(f, "b.weight");
	T_CHECK(t != NULL && t->offset == 32 && t->nbytes == 12 && memcmp(t->data, data, 12) == 0,
	        "tensor b.weight");
	T_CHECK(gguf_find_tensor(f, "b") == NULL, "prefix of a name must not match");
	T_CHECK(gguf_find_kv(f, "t.u") == NULL, "prefix of a key must not match");
	gguf_close(f);

	/* Version 2 is structurally identical and accepted. */
	buf[4] = 2;
	T_EQ_INT(gguf_open_memory(&f, buf, n, &e), KVS_OK);
	if (f != NULL)
		T_EQ_INT(f->version, 2);
	gguf_close(f);
out:
	free(buf);
	ggufw_free(w);
}

/* ---- part 2: one corrupted field at a time ---- */

/* A valid base file whose fields the corruption cases patch. Records:
 * kv 0 general.architecture (string), kv 1 t.count (u32), kv 2 t.list
 * (string array), kv 3 t.nums (i32 array); tensors 0 'blk.0.attn_q.weight'
 * Q4_1 [64, 2], 1 'norm' F32 [64], 2 'last' F32 [8, 4]. */
static struct ggufw *base_file(void)
{
	struct ggufw *w = ggufw_new();
	static const char *const list[] = { "x", "yy" };
	static const int32_t nums[] = { 1, 2, 3 };

	ggufw_add_str(w, "general.architecture", "llama");
	ggufw_add_u32(w, "t.count", 7);
	ggufw_add_arr_str(w, "t.list", list, 2);
	ggufw_add_arr_i32(w, "t.nums", nums, 3);
	ggufw_add_tensor(w, "blk.0.attn_q.weight", DT_Q4_1, 2, (int64_t[]){ 64, 2 }, NULL, 80);
	ggufw_add_tensor(w, "norm", DT_F32, 1, (int64_t[]){ 64 }, NULL, 256);
	ggufw_add_tensor(w, "last", DT_F32, 2, (int64_t[]){ 8, 4 }, NULL, 128);
	return w;
}

struct corruption {
	const char *what;
	enum ggufw_kind kind;
	uint32_t rec, sub;
	uint64_t value; /* patched in with the field's size */
	int code;
	const char *want1, *want2; /* substrings of the message */
};

static const struct corruption corruptions[] = {
	{ "bad magic", GW_MAGIC, 0, 0, 0x46554747 ^ 0x20, KVS_EFORMAT, "magic", "expected 'GGUF'" },
	{ "version 1", GW_VERSION, 0, 0, 1, KVS_EUNSUPPORTED, "version = 1", "expected 2 or 3" },
	{ "version 4", GW_VERSION, 0, 0, 4, KVS_EUNSUPPORTED, "version = 4", "expected 2 or 3" },
	{ "big-endian", GW_VERSION, 0, 0, 0x03000000, KVS_EUNSUPPORTED, "big-endian", "0x03000000" },
	{ "n_tensors 2^63", GW_N_TENSORS, 0, 0, 1ull << 63, KVS_EFORMAT,
	  "n_tensors = 9223372036854775808", "expected <=" },
	{ "n_tensors -1", GW_N_TENSORS, 0, 0, UINT64_MAX, KVS_EFORMAT,
	  "n_tensors = 18446744073709551615", NULL },
	{ "n_kv 2^63", GW_N_KV, 0, 0, 1ull << 63, KVS_EFORMAT, "n_kv = 9223372036854775808", NULL },
	{ "n_kv beyond file", GW_N_KV, 0, 0, 100000, KVS_EFORMAT, "n_kv = 100000", "truncated" },
	{ "n_tensors beyond file", GW_N_TENSORS, 0, 0, 1000, KVS_EFORMAT, "n_tensors = 1000",
	  "truncated" },
	{ "key length 2^64-1", GW_KEY_LEN, 1, 0, UINT64_MAX, KVS_EFORMAT, "metadata record 1",
	  "key length = 18446744073709551615" },
	{ "key length 0", GW_KEY_LEN, 0, 0, 0, KVS_EFORMAT, "metadata record 0", "key is empty" },
	{ "key length past end", GW_KEY_LEN, 1, 0, 60000, KVS_EFORMAT, "metadata record 1",
	  "truncated" },
	{ "value type 13", GW_KV_TYPE, 1, 0, 13, KVS_EFORMAT, "'t.count'",
	  "value type = 13, expected 0..12" },
	{ "value type 2^32-1", GW_KV_TYPE, 1, 0, UINT32_MAX, KVS_EFORMAT, "'t.count'",
	  "value type = 4294967295" },
	{ "string length 2^64-1", GW_STR_LEN, 0, 0, UINT64_MAX, KVS_EFORMAT, "'general.architecture'",
	  "string value length = 18446744073709551615" },
	{ "string length past end", GW_STR_LEN, 0, 0, 1u << 20, KVS_EFORMAT, "'general.architecture'",
	  "truncated" },
	{ "nested array", GW_ARR_TYPE, 3, 0, GGUF_ARRAY, KVS_EFORMAT, "'t.nums'", "nested arrays" },
	{ "array type 13", GW_ARR_TYPE, 3, 0, 13, KVS_EFORMAT, "'t.nums'", "array element type = 13" },
	{ "array count 2^62", GW_ARR_N, 3, 0, 1ull << 62, KVS_EFORMAT, "'t.nums'",
	  "array length = 4611686018427387904" },
	{ "array count past end", GW_ARR_N, 3, 0, 1u << 28, KVS_EFORMAT, "'t.nums'", "truncated" },
	{ "string array count past end", GW_ARR_N, 2, 0, 1u << 28, KVS_EFORMAT, "'t.list'", "strings" },
	{ "string element 2^64-1", GW_ARR_STR_LEN, 2, 1, UINT64_MAX, KVS_EFORMAT, "'t.list'",
	  "array element 1 length" },
	{ "tensor name length 64", GW_T_NAME_LEN, 1, 0, 64, KVS_EFORMAT, "tensor info 1",
	  "expected < 64" },
	{ "tensor name length 0", GW_T_NAME_LEN, 1, 0, 0, KVS_EFORMAT, "tensor info 1",
	  "tensor name is empty" },
	{ "tensor name length 2^64-1", GW_T_NAME_LEN, 0, 0, UINT64_MAX, KVS_EFORMAT, "tensor info 0",
	  "length = 18446744073709551615" },
	{ "n_dims 5", GW_T_NDIMS, 0, 0, 5, KVS_EFORMAT, "tensor 'blk.0.attn_q.weight'",
	  "n_dims = 5, expected 1..4" },
	{ "n_dims 0", GW_T_NDIMS, 1, 0, 0, KVS_EFORMAT, "tensor 'norm'", "n_dims = 0" },
	{ "zero dim", GW_T_NE, 0, 1, 0, KVS_EFORMAT, "tensor 'blk.0.attn_q.weight'",
	  "ne[1] = 0, expected 1.." },
	{ "negative dim", GW_T_NE, 0, 1, UINT64_MAX, KVS_EFORMAT, "tensor 'blk.0.attn_q.weight'",
	  "ne[1] = 18446744073709551615" },
	{ "dim 2^42+1", GW_T_NE, 0, 1, (1ull << 42) + 1, KVS_EFORMAT, "tensor 'blk.0.attn_q.weight'",
	  "ends past the data section" },
	{ "dim 2^62 (size overflow)", GW_T_NE, 0, 1, 1ull << 62, KVS_EFORMAT,
	  "tensor 'blk.0.attn_q.weight'", "overflow" },
	{ "ne0 not whole blocks", GW_T_NE, 0, 0, 48, KVS_EFORMAT, "ne[0] = 48", "multiple of 32" },
	{ "removed type 4", GW_T_TYPE, 0, 0, 4, KVS_EFORMAT, "tensor 'blk.0.attn_q.weight'",
	  "type = 4" },
	{ "type 2^32-1", GW_T_TYPE, 1, 0, UINT32_MAX, KVS_EFORMAT, "tensor 'norm'",
	  "type = 4294967295" },
	{ "misaligned offset", GW_T_OFFSET, 1, 0, 96 + 1, KVS_EFORMAT, "tensor 'norm'",
	  "expected a multiple of 32" },
	{ "offset past end", GW_T_OFFSET, 2, 0, 1u << 20, KVS_EFORMAT, "tensor 'last'",
	  "ends past the data section" },
	{ "offset 2^64-32", GW_T_OFFSET, 2, 0, UINT64_MAX - 31, KVS_EFORMAT, "tensor 'last'",
	  "ends past" },
	{ "overlap", GW_T_OFFSET, 1, 0, 64, KVS_EFORMAT, "overlaps", "'norm'" },
};

/* Patch value (little-endian, the field's size) into buf at fd. */
static void patch(uint8_t *buf, const struct ggufw_field *fd, uint64_t value)
{
	memcpy(buf + fd->pos, &value, fd->size < 8 ? fd->size : 8);
}

static void test_corruptions(void)
{
	struct ggufw *w = base_file();
	uint8_t *buf, *copy;
	size_t n;
	struct gguf_file *f;
	struct err e;

	ggufw_write_mem(w, &buf, &n);
	T_EQ_INT(gguf_open_memory(&f, buf, n, &e), KVS_OK);
	gguf_close(f);
	copy = xmalloc(n);
	for (size_t i = 0; i < KVS_ARRAY_LEN(corruptions); i++) {
		const struct corruption *c = &corruptions[i];
		const struct ggufw_field *fd = ggufw_field(w, c->kind, c->rec, c->sub);
		int rc;
		T_CHECK(fd != NULL, "%s: field not found", c->what);
		if (fd == NULL)
			continue;
		memcpy(copy, buf, n);
		patch(copy, fd, c->value);
		err_clear(&e);
		rc = gguf_open_memory(&f, copy, n, &e);
		T_CHECK(rc == c->code, "%s: status %d (%s), expected %d", c->what, rc, e.msg, c->code);
		T_CHECK(f == NULL, "%s: file returned on failure", c->what);
		T_CHECK(strstr(e.msg, c->want1) != NULL, "%s: message '%s' lacks '%s'", c->what, e.msg,
		        c->want1);
		T_CHECK(c->want2 == NULL || strstr(e.msg, c->want2) != NULL, "%s: message '%s' lacks '%s'",
		        c->what, e.msg, c->want2);
		T_CHECK(strchr(e.msg, '\n') == NULL, "%s: message has a newline", c->what);
		gguf_close(f);
	}
	free(copy);
	free(buf);
	ggufw_free(w);
}

/* Files the field patches cannot express. */
static void test_hostile_records(void)
{
	struct gguf_file *f;
	struct err e;
	uint8_t *buf;
	size_t n;
	struct ggufw *w;
	char name[80];
	static const uint8_t nested[] = { 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0 };

	/* Duplicate key. */
	w = ggufw_new();
	ggufw_add_u32(w, "a.b", 1);
	ggufw_add_u32(w, "a.c", 1);
	ggufw_add_u32(w, "a.b", 2);
	ggufw_write_mem(w, &buf, &n);
	T_EQ_INT(gguf_open_memory(&f, buf, n, &e), KVS_EFORMAT);
	T_CHECK(strstr(e.msg, "metadata record 2 ('a.b'): duplicate key"), "msg: %s", e.msg);
	free(buf);
	ggufw_free(w);

	/* Duplicate tensor name. */
	w = ggufw_new();
	ggufw_add_tensor(w, "x", DT_F32, 1, (int64_t[]){ 8 }, NULL, 32);
	ggufw_add_tensor(w, "x", DT_F32, 1, (int64_t[]){ 8 }, NULL, 32);
	ggufw_write_mem(w, &buf, &n);
	T_EQ_INT(gguf_open_memory(&f, buf, n, &e), KVS_EFORMAT);
	T_CHECK(strstr(e.msg, "tensor 'x': duplicate tensor name"), "msg: %s", e.msg);
	free(buf);
	ggufw_free(w);

	/* A nested array written verbatim (array of arrays). */
	w = ggufw_new();
	ggufw_add_raw(w, "t.nested", GGUF_ARRAY, nested, sizeof nested);
	ggufw_write_mem(w, &buf, &n);
	T_EQ_INT(gguf_open_memory(&f, buf, n, &e), KVS_EFORMAT);
	T_CHECK(strstr(e.msg, "'t.nested'") && strstr(e.msg, "nested"), "msg: %s", e.msg);
	free(buf);
	ggufw_free(w);

	/* n_dims 5 with five dims present (the original ne[] overflow). */
	w = ggufw_new();
	ggufw_add_tensor(w, "five", DT_F32, 5, (int64_t[]){ 1, 1, 1, 1, 1 }, NULL, 32);
	ggufw_write_mem(w, &buf, &n);
	T_EQ_INT(gguf_open_memory(&f, buf, n, &e), KVS_EFORMAT);
	T_CHECK(strstr(e.msg, "tensor 'five': n_dims = 5"), "msg: %s", e.msg);
	free(buf);
	ggufw_free(w);

	/* Alignment: 0, 3, 2^17 and a wrong type are refused; 64 is used. */
	static const uint32_t bad_align[] = { 0, 3, 4, 1u << 17 };
	for (size_t i = 0; i < KVS_ARRAY_LEN(bad_align); i++) {
		w = ggufw_new();
		ggufw_set_alignment(w, bad_align[i]);
		ggufw_write_mem(w, &buf, &n);
		T_EQ_INT(gguf_open_memory(&f, buf, n, &e), KVS_EFORMAT);
		snprintf(name, sizeof name, "value = %u", bad_align[i]);
		T_CHECK(strstr(e.msg, "general.alignment") && strstr(e.msg, name), "align %u: %s",
		        bad_align[i], e.msg);
		free(buf);
		ggufw_free(w);
	}
	w = ggufw_new();
	ggufw_add_u8(w, "general.alignment", 32);
	ggufw_write_mem(w, &buf, &n);
	T_EQ_INT(gguf_open_memory(&f, buf, n, &e), KVS_EFORMAT);
	T_CHECK(strstr(e.msg, "general.alignment") && strstr(e.msg, "type is u8, expected u32"),
	        "msg: %s", e.msg);
	free(buf);
	ggufw_free(w);
	w = ggufw_new();
	ggufw_set_alignment(w, 64);
	ggufw_add_tensor(w, "a", DT_F32, 1, (int64_t[]){ 4 }, NULL, 16);
	ggufw_add_tensor(w, "b", DT_F32, 1, (int64_t[]){ 4 }, NULL, 16);
	ggufw_write_mem(w, &buf, &n);
	T_EQ_INT(gguf_open_memory(&f, buf, n, &e), KVS_OK);
	if (f != NULL) {
		T_EQ_INT(f->alignment, 64);
		T_EQ_INT(f->data_offset % 64, 0);
		T_EQ_INT(gguf_find_tensor(f, "b")->offset, 64);
	}
	gguf_close(f);
	free(buf);
	ggufw_free(w);

	/* A key with a newline and a control byte is printed escaped. */
	w = ggufw_new();
	ggufw_add_u32(w, "bad\nkey\x01", 1);
	ggufw_add_u32(w, "bad\nkey\x01", 1);
	ggufw_write_mem(w, &buf, &n);
	T_EQ_INT(gguf_open_memory(&f, buf, n, &e), KVS_EFORMAT);
	T_CHECK(strchr(e.msg, '\n') == NULL && strstr(e.msg, "bad\\x0akey\\x01"), "msg: %s", e.msg);
	free(buf);
	ggufw_free(w);

	/* A key holding a NUL byte would make lookups ambiguous. */
	w = ggufw_new();
	ggufw_add_raw(w, "placeholder", GGUF_U8, "\1", 1);
	ggufw_write_mem(w, &buf, &n);
	memcpy(buf + ggufw_field(w, GW_KEY_LEN, 0, 0)->pos + 8 + 3, "\0", 1);
	T_EQ_INT(gguf_open_memory(&f, buf, n, &e), KVS_EFORMAT);
	T_CHECK(strstr(e.msg, "NUL"), "msg: %s", e.msg);
	free(buf);
	ggufw_free(w);

	/* Smallest file: header only. */
	w = ggufw_new();
	ggufw_write_mem(w, &buf, &n);
	T_EQ_INT(n, 32); /* 24-byte header padded to 32 */
	T_EQ_INT(gguf_open_memory(&f, buf, 24, &e), KVS_OK);
	gguf_close(f);
	T_EQ_INT(gguf_open_memory(&f, buf, 23, &e), KVS_EFORMAT);
	T_CHECK(strstr(e.msg, "file is 23 bytes, expected at least 24"), "msg: %s", e.msg);
	T_EQ_INT(gguf_open_memory(&f, buf, 0, &e), KVS_EFORMAT);
	free(buf);
	ggufw_free(w);
}

/* ---- part 3: truncation ---- */

static void test_truncation(void)
{
	struct tinymodel_spec s;
	struct ggufw *w = ggufw_new();
	const struct ggufw_field *fields;
	struct gguf_file *f;
	struct err e;
	uint8_t *buf;
	size_t n, n_fields, data, bad = 0;

	tinymodel_defaults(&s, "llama");
	s.wtype = DT_Q4_1;
	s.embd_type = DT_Q8_0;
	tinymodel_add(w, &s);
	ggufw_write_mem(w, &buf, &n);
	T_EQ_INT(gguf_open_memory(&f, buf, n, &e), KVS_OK);
	gguf_close(f);
	fields = ggufw_fields(w, &n_fields);
	data = ggufw_field(w, GW_DATA, 0, 0)->pos;
	/* Every prefix that ends inside the header. */
	for (size_t len = 0; len < data; len++) {
		uint8_t *copy = xmalloc(len ? len : 1); /* exact size: ASan sees over-reads */
		memcpy(copy, buf, len);
		int rc = gguf_open_memory(&f, copy, len, &e);
		if (rc != KVS_EFORMAT || f != NULL || strchr(e.msg, '\n') != NULL ||
		    (!strstr(e.msg, "truncated") && !strstr(e.msg, "expected at least 24"))) {
			if (bad++ < 5)
				T_CHECK(0, "prefix of %zu bytes: status %d, '%s'", len, rc, e.msg);
		}
		free(copy);
	}
	T_EQ_INT(bad, 0);
	/* Cuts at each tensor's data start (as laid out in the data section). */
	for (size_t i = 0; i < n_fields; i++) {
		if (fields[i].kind != GW_T_OFFSET)
			continue;
		uint64_t off;
		memcpy(&off, buf + fields[i].pos, 8);
		size_t len = (size_t)(data + off + 1);
		if (len >= n)
			continue;
		T_EQ_INT(gguf_open_memory(&f, buf, len, &e), KVS_EFORMAT);
		T_CHECK(strstr(e.msg, "ends past the data section"), "cut at %zu: %s", len, e.msg);
	}
	/* The last byte of the last tensor's padding is not needed; its data is. */
	free(buf);
	ggufw_free(w);
}

/* Files on disk: errors name the path. */
static void test_open_errors(void)
{
	struct gguf_file *f;
	struct err e;
	char *p = tmp_path();
	FILE *fp;

	T_EQ_INT(gguf_open(&f, "/nonexistent/x.gguf", &e), KVS_ENOTFOUND);
	T_CHECK(strstr(e.msg, "/nonexistent/x.gguf"), "msg: %s", e.msg);
	T_EQ_INT(gguf_open(&f, "/", &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "not a regular file"), "msg: %s", e.msg);
	T_EQ_INT(gguf_open(&f, p, &e), KVS_EFORMAT); /* empty */
	T_CHECK(strstr(e.msg, p) && strstr(e.msg, "0 bytes"), "msg: %s", e.msg);
	fp = fopen(p, "wb");
	fputs("this is not a gguf file at all", fp);
	fclose(fp);
	T_EQ_INT(gguf_open(&f, p, &e), KVS_EFORMAT);
	T_CHECK(strncmp(e.msg, p, strlen(p)) == 0 && strstr(e.msg, "magic = 'this'"), "msg: %s", e.msg);
	/* A valid file round-trips through the disk path too. */
	struct ggufw *w = base_file();
	T_EQ_INT(ggufw_write_file(w, p), 0);
	T_EQ_INT(gguf_open(&f, p, &e), KVS_OK);
	if (f != NULL) {
		T_EQ_STR(f->path, p);
		T_EQ_INT(f->n_tensors, 3);
	}
	gguf_close(f);
	ggufw_free(w);
	unlink(p);
	free(p);
}

/* ---- part 4: the real model ---- */

static void test_real_model(const char *path)
{
	struct gguf_file *f;
	struct err e;
	uint32_t u32, count[DT_COUNT_] = { 0 };
	uint64_t bytes[DT_COUNT_] = { 0 }, total = 0;
	float f32;
	struct gguf_str s;
	const struct gguf_kv *kv;
	const struct gguf_tensor *t;

	T_EQ_INT(gguf_open(&f, path, &e), KVS_OK);
	if (f == NULL) {
		fprintf(stderr, "%s\n", e.msg);
		return;
	}
	/*
	 * Expected values: gguf-py 0.x GGUFReader on this file (tensor types
	 * counted with collections.Counter over reader.tensors, n_bytes summed
	 * per type) and `llama-gguf FILE r n` from llama.cpp c392e50 (version 3,
	 * alignment 32, data offset 1785664, n_kv 33, n_tensors 272, tensor 0
	 * token_embd.weight size 30081024 at offset 0). Hyper-parameters match
	 * the HF config of SmolLM2-135M-Instruct (engine.md 4.1).
	 */
	T_EQ_INT(f->version, 3);
	T_EQ_INT(f->alignment, 32);
	T_EQ_INT(f->data_offset, 1785664);
	T_EQ_INT(f->n_kv, 33);
	T_EQ_INT(f->n_tensors, 272);
	for (uint64_t i = 0; i < f->n_tensors; i++) {
		t = &f->tensors[i];
		if (t->type < DT_COUNT_) {
			count[t->type]++;
			bytes[t->type] += t->nbytes;
		}
		total += t->nbytes;
	}
	T_EQ_INT(count[DT_Q4_1], 210);
	T_EQ_INT(count[DT_Q8_0], 1);
	T_EQ_INT(count[DT_F32], 61);
	T_EQ_INT(bytes[DT_Q4_1], 66355200);
	T_EQ_INT(bytes[DT_Q8_0], 30081024);
	T_EQ_INT(bytes[DT_F32], 140544);
	T_EQ_INT(total, 96576768);
	t = gguf_find_tensor(f, "token_embd.weight");
	T_CHECK(t != NULL && t->type == DT_Q8_0 && t->ne[0] == 576 && t->ne[1] == 49152 &&
	                t->nbytes == 30081024 && t->offset == 0,
	        "token_embd.weight");
	t = gguf_find_tensor(f, "blk.0.ffn_down.weight");
	T_CHECK(t != NULL && t->type == DT_Q4_1 && t->ne[0] == 1536 && t->ne[1] == 576 &&
	                t->nbytes == 552960 && t->offset == 30083328,
	        "blk.0.ffn_down.weight");
	t = gguf_find_tensor(f, "output_norm.weight");
	T_CHECK(t != NULL && t->type == DT_F32 && t->n_dims == 1 && t->ne[0] == 576, "output_norm");
	if (t != NULL) {
		float first;
		memcpy(&first, t->data, 4);
		T_NEAR(first, 1.7578125, 0); /* gguf-py: tensor.data[0] */
	}
	T_CHECK(gguf_find_tensor(f, "output.weight") == NULL, "tied model has no output.weight");

	T_EQ_INT(gguf_get_str(f, "general.architecture", &s, &e), KVS_OK);
	T_CHECK(s.n == 5 && memcmp(s.p, "llama", 5) == 0, "architecture");
	T_EQ_INT(gguf_get_u32(f, "llama.block_count", &u32, &e), KVS_OK);
	T_EQ_INT(u32, 30);
	T_EQ_INT(gguf_get_u32(f, "llama.embedding_length", &u32, &e), KVS_OK);
	T_EQ_INT(u32, 576);
	T_EQ_INT(gguf_get_u32(f, "llama.attention.head_count", &u32, &e), KVS_OK);
	T_EQ_INT(u32, 9);
	T_EQ_INT(gguf_get_u32(f, "llama.attention.head_count_kv", &u32, &e), KVS_OK);
	T_EQ_INT(u32, 3);
	T_EQ_INT(gguf_get_u32(f, "llama.feed_forward_length", &u32, &e), KVS_OK);
	T_EQ_INT(u32, 1536);
	T_EQ_INT(gguf_get_u32(f, "llama.vocab_size", &u32, &e), KVS_OK);
	T_EQ_INT(u32, 49152);
	T_EQ_INT(gguf_get_f32(f, "llama.rope.freq_base", &f32, &e), KVS_OK);
	T_NEAR(f32, 100000, 0);
	T_EQ_INT(gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_STRING, &kv, &e), KVS_OK);
	if (kv != NULL) {
		T_EQ_INT(kv->arr_n, 49152);
		s = gguf_arr_str(kv, 1);
		T_CHECK(s.n == 12 && memcmp(s.p, "<|im_start|>", 12) == 0, "token 1");
	}
	T_EQ_INT(gguf_get_arr(f, "tokenizer.ggml.merges", GGUF_STRING, &kv, &e), KVS_OK);
	if (kv != NULL) {
		T_EQ_INT(kv->arr_n, 48900);
		s = gguf_arr_str(kv, 0);
		T_CHECK(s.n == 4 && memcmp(s.p, "\xc4\xa0 t", 4) == 0, "merge 0");
	}
	T_EQ_INT(gguf_get_arr(f, "tokenizer.ggml.token_type", GGUF_I32, &kv, &e), KVS_OK);
	gguf_close(f);
}

int main(void)
{
	char *path = model_path();
	struct stat st;

	test_values();
	test_corruptions();
	test_hostile_records();
	test_truncation();
	test_open_errors();
	if (stat(path, &st) == 0) {
		test_real_model(path);
	} else if (getenv("KVSCOPE_SKIP_MODEL_TESTS") &&
	           strcmp(getenv("KVSCOPE_SKIP_MODEL_TESTS"), "1") == 0) {
		printf("test-gguf: SKIP: %s absent and KVSCOPE_SKIP_MODEL_TESTS=1\n", path);
		free(path);
		return t_done("test-gguf") ? 1 : 77;
	} else {
		fprintf(stderr,
		        "test-gguf: FAIL: default model %s is missing (run `make model`, set "
		        "KVSCOPE_MODEL, or KVSCOPE_SKIP_MODEL_TESTS=1 to skip)\n",
		        path);
		t_failures++;
	}
	free(path);
	return t_done("test-gguf");
}
