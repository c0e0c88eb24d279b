/*
 * ggufw.c: the tests' GGUF writer (see ggufw.h).
 *
 * Each metadata record is kept as its serialised value bytes plus the
 * positions of its inner fields relative to the value's start; tensors keep
 * their raw header values and data. ggufw_write_mem lays everything out in
 * one pass, turning the relative field positions into absolute ones, so
 * tests can find any field of the file they just wrote. Nothing is
 * validated: the writer exists to write both good and hostile files.
 */
#include "tests/util/ggufw.h"

#include "model/model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A growable byte buffer. */
struct gw_buf {
	uint8_t *p;
	size_t n, cap;
};

struct gw_kv {
	char *key;
	uint32_t type;
	struct gw_buf val;
	struct ggufw_field *fields; /* pos relative to the value's start */
	size_t n_fields;
};

struct gw_tensor {
	char *name;
	uint32_t type, n_dims;
	int64_t *ne;
	uint8_t *data;
	size_t nbytes;
};

struct ggufw {
	uint32_t version;
	uint32_t layout_align;
	struct gw_kv *kv;
	size_t n_kv;
	struct gw_tensor *t;
	size_t n_t;
	struct ggufw_field *fields; /* of the last write */
	size_t n_fields, cap_fields;
};

static void gw_put(struct gw_buf *b, const void *p, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2 + 64;
		b->p = xrealloc(b->p, b->cap);
	}
	if (n)
		memcpy(b->p + b->n, p, n);
	b->n += n;
}

static void gw_u32(struct gw_buf *b, uint32_t v)
{
	gw_put(b, &v, 4);
}

static void gw_u64(struct gw_buf *b, uint64_t v)
{
	gw_put(b, &v, 8);
}

static void gw_zeros(struct gw_buf *b, size_t n)
{
	static const uint8_t z[64];
	while (n > 0) {
		size_t k = n < sizeof z ? n : sizeof z;
		gw_put(b, z, k);
		n -= k;
	}
}

struct ggufw *ggufw_new(void)
{
	struct ggufw *w = xcalloc(1, sizeof *w);
	w->version = 3;
	w->layout_align = 32;
	return w;
}

void ggufw_free(struct ggufw *w)
{
	if (w == NULL)
		return;
	for (size_t i = 0; i < w->n_kv; i++) {
		free(w->kv[i].key);
		free(w->kv[i].val.p);
		free(w->kv[i].fields);
	}
	for (size_t i = 0; i < w->n_t; i++) {
		free(w->t[i].name);
		free(w->t[i].ne);
		free(w->t[i].data);
	}
	free(w->kv);
	free(w->t);
	free(w->fields);
	free(w);
}

void ggufw_set_version(struct ggufw *w, uint32_t version)
{
	w->version = version;
}

/* Start a record; its value bytes follow via the returned kv. */
static struct gw_kv *gw_new_kv(struct ggufw *w, const char *key, uint32_t type)
{
	struct gw_kv *kv;

	w->kv = xreallocarray(w->kv, w->n_kv + 1, sizeof *w->kv);
	kv = &w->kv[w->n_kv++];
	memset(kv, 0, sizeof *kv);
	kv->key = xstrdup(key);
	kv->type = type;
	return kv;
}

/* Note a field at the current end of kv's value. */
static void gw_kv_field(struct gw_kv *kv, enum ggufw_kind kind, uint32_t sub, uint32_t size)
{
	kv->fields = xreallocarray(kv->fields, kv->n_fields + 1, sizeof *kv->fields);
	kv->fields[kv->n_fields++] =
	        (struct ggufw_field){ .kind = kind, .sub = sub, .pos = kv->val.n, .size = size };
}

void ggufw_set_alignment(struct ggufw *w, uint32_t alignment)
{
	ggufw_add_u32(w, "general.alignment", alignment);
	if (alignment != 0 && (alignment & (alignment - 1)) == 0 && alignment <= (1u << 16))
		w->layout_align = alignment;
}

/* A scalar record of size bytes. */
static void gw_scalar(struct ggufw *w, const char *key, uint32_t type, const void *v, size_t size)
{
	struct gw_kv *kv = gw_new_kv(w, key, type);
	gw_kv_field(kv, GW_VALUE, 0, (uint32_t)size);
	gw_put(&kv->val, v, size);
}

void ggufw_add_u8(struct ggufw *w, const char *key, uint8_t v)
{
	gw_scalar(w, key, GGUF_U8, &v, 1);
}
void ggufw_add_i8(struct ggufw *w, const char *key, int8_t v)
{
	gw_scalar(w, key, GGUF_I8, &v, 1);
}
void ggufw_add_u16(struct ggufw *w, const char *key, uint16_t v)
{
	gw_scalar(w, key, GGUF_U16, &v, 2);
}
void ggufw_add_i16(struct ggufw *w, const char *key, int16_t v)
{
	gw_scalar(w, key, GGUF_I16, &v, 2);
}
void ggufw_add_u32(struct ggufw *w, const char *key, uint32_t v)
{
	gw_scalar(w, key, GGUF_U32, &v, 4);
}
void ggufw_add_i32(struct ggufw *w, const char *key, int32_t v)
{
	gw_scalar(w, key, GGUF_I32, &v, 4);
}
void ggufw_add_u64(struct ggufw *w, const char *key, uint64_t v)
{
	gw_scalar(w, key, GGUF_U64, &v, 8);
}
void ggufw_add_i64(struct ggufw *w, const char *key, int64_t v)
{
	gw_scalar(w, key, GGUF_I64, &v, 8);
}
void ggufw_add_f32(struct ggufw *w, const char *key, float v)
{
	gw_scalar(w, key, GGUF_F32, &v, 4);
}
void ggufw_add_f64(struct ggufw *w, const char *key, double v)
{
	gw_scalar(w, key, GGUF_F64, &v, 8);
}

void ggufw_add_bool(struct ggufw *w, const char *key, int v)
{
	uint8_t b = v != 0;
	gw_scalar(w, key, GGUF_BOOL, &b, 1);
}

void ggufw_add_strn(struct ggufw *w, const char *key, const char *v, size_t n)
{
	struct gw_kv *kv = gw_new_kv(w, key, GGUF_STRING);
	gw_kv_field(kv, GW_STR_LEN, 0, 8);
	gw_u64(&kv->val, n);
	gw_put(&kv->val, v, n);
}

void ggufw_add_str(struct ggufw *w, const char *key, const char *v)
{
	ggufw_add_strn(w, key, v, strlen(v));
}

/* Start an array record: element type and count. */
static struct gw_kv *gw_arr_head(struct ggufw *w, const char *key, uint32_t elem_type, size_t n)
{
	struct gw_kv *kv = gw_new_kv(w, key, GGUF_ARRAY);
	gw_kv_field(kv, GW_ARR_TYPE, 0, 4);
	gw_u32(&kv->val, elem_type);
	gw_kv_field(kv, GW_ARR_N, 0, 8);
	gw_u64(&kv->val, n);
	return kv;
}

void ggufw_add_arr_raw(struct ggufw *w, const char *key, uint32_t elem_type, const void *v,
                       size_t n, size_t elem_size)
{
	struct gw_kv *kv = gw_arr_head(w, key, elem_type, n);
	gw_kv_field(kv, GW_VALUE, 0, (uint32_t)elem_size);
	gw_put(&kv->val, v, n * elem_size);
}

void ggufw_add_arr_i32(struct ggufw *w, const char *key, const int32_t *v, size_t n)
{
	ggufw_add_arr_raw(w, key, GGUF_I32, v, n, 4);
}

void ggufw_add_arr_u32(struct ggufw *w, const char *key, const uint32_t *v, size_t n)
{
	ggufw_add_arr_raw(w, key, GGUF_U32, v, n, 4);
}

void ggufw_add_arr_f32(struct ggufw *w, const char *key, const float *v, size_t n)
{
	ggufw_add_arr_raw(w, key, GGUF_F32, v, n, 4);
}

void ggufw_add_arr_u8(struct ggufw *w, const char *key, const uint8_t *v, size_t n)
{
	ggufw_add_arr_raw(w, key, GGUF_U8, v, n, 1);
}

void ggufw_add_arr_str(struct ggufw *w, const char *key, const char *const *v, size_t n)
{
	struct gw_kv *kv = gw_arr_head(w, key, GGUF_STRING, n);
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(v[i]);
		gw_kv_field(kv, GW_ARR_STR_LEN, (uint32_t)i, 8);
		gw_u64(&kv->val, len);
		gw_put(&kv->val, v[i], len);
	}
}

void ggufw_add_raw(struct ggufw *w, const char *key, uint32_t type, const void *payload, size_t n)
{
	struct gw_kv *kv = gw_new_kv(w, key, type);
	gw_put(&kv->val, payload, n);
}

void ggufw_add_tensor(struct ggufw *w, const char *name, uint32_t type, uint32_t n_dims,
                      const int64_t *ne, const void *data, size_t nbytes)
{
	struct gw_tensor *t;

	w->t = xreallocarray(w->t, w->n_t + 1, sizeof *w->t);
	t = &w->t[w->n_t++];
	t->name = xstrdup(name);
	t->type = type;
	t->n_dims = n_dims;
	t->ne = xmallocarray(n_dims ? n_dims : 1, sizeof *t->ne);
	memcpy(t->ne, ne, n_dims * sizeof *t->ne);
	t->data = xcalloc(nbytes ? nbytes : 1, 1);
	if (data != NULL)
		memcpy(t->data, data, nbytes);
	t->nbytes = nbytes;
}

void ggufw_add_tensor_f32(struct ggufw *w, const char *name, uint32_t n_dims, const int64_t *ne,
                          const float *data)
{
	size_t n = 1;
	for (uint32_t d = 0; d < n_dims; d++)
		n *= (size_t)ne[d];
	ggufw_add_tensor(w, name, DT_F32, n_dims, ne, data, n * sizeof(float));
}

/* Record a field of the file being written. */
static void gw_field(struct ggufw *w, enum ggufw_kind kind, uint32_t rec, uint32_t sub,
                     uint64_t pos, uint32_t size)
{
	if (w->n_fields == w->cap_fields) {
		w->cap_fields = w->cap_fields * 2 + 64;
		w->fields = xreallocarray(w->fields, w->cap_fields, sizeof *w->fields);
	}
	w->fields[w->n_fields++] =
	        (struct ggufw_field){ .kind = kind, .rec = rec, .sub = sub, .pos = pos, .size = size };
}

static size_t gw_align(size_t n, size_t a)
{
	return (n + a - 1) / a * a;
}

void ggufw_write_mem(struct ggufw *w, uint8_t **buf, size_t *size)
{
	struct gw_buf b = { 0 };
	size_t a = w->layout_align, off = 0;

	w->n_fields = 0;
	gw_field(w, GW_MAGIC, 0, 0, b.n, 4);
	gw_put(&b, "GGUF", 4);
	gw_field(w, GW_VERSION, 0, 0, b.n, 4);
	gw_u32(&b, w->version);
	gw_field(w, GW_N_TENSORS, 0, 0, b.n, 8);
	gw_u64(&b, w->n_t);
	gw_field(w, GW_N_KV, 0, 0, b.n, 8);
	gw_u64(&b, w->n_kv);
	for (size_t i = 0; i < w->n_kv; i++) {
		const struct gw_kv *kv = &w->kv[i];
		size_t klen = strlen(kv->key), base;
		gw_field(w, GW_KEY_LEN, (uint32_t)i, 0, b.n, 8);
		gw_u64(&b, klen);
		gw_put(&b, kv->key, klen);
		gw_field(w, GW_KV_TYPE, (uint32_t)i, 0, b.n, 4);
		gw_u32(&b, kv->type);
		base = b.n;
		for (size_t k = 0; k < kv->n_fields; k++)
			gw_field(w, kv->fields[k].kind, (uint32_t)i, kv->fields[k].sub,
			         base + kv->fields[k].pos, kv->fields[k].size);
		gw_put(&b, kv->val.p, kv->val.n);
		gw_field(w, GW_KV_END, (uint32_t)i, 0, b.n, 0);
	}
	for (size_t i = 0; i < w->n_t; i++) {
		const struct gw_tensor *t = &w->t[i];
		size_t nlen = strlen(t->name);
		gw_field(w, GW_T_NAME_LEN, (uint32_t)i, 0, b.n, 8);
		gw_u64(&b, nlen);
		gw_put(&b, t->name, nlen);
		gw_field(w, GW_T_NDIMS, (uint32_t)i, 0, b.n, 4);
		gw_u32(&b, t->n_dims);
		for (uint32_t d = 0; d < t->n_dims; d++) {
			gw_field(w, GW_T_NE, (uint32_t)i, d, b.n, 8);
			gw_u64(&b, (uint64_t)t->ne[d]);
		}
		gw_field(w, GW_T_TYPE, (uint32_t)i, 0, b.n, 4);
		gw_u32(&b, t->type);
		off = gw_align(off, a);
		gw_field(w, GW_T_OFFSET, (uint32_t)i, 0, b.n, 8);
		gw_u64(&b, off);
		off += t->nbytes;
		gw_field(w, GW_T_END, (uint32_t)i, 0, b.n, 0);
	}
	gw_zeros(&b, gw_align(b.n, a) - b.n);
	gw_field(w, GW_DATA, 0, 0, b.n, 0);
	for (size_t i = 0; i < w->n_t; i++) {
		gw_put(&b, w->t[i].data, w->t[i].nbytes);
		gw_zeros(&b, gw_align(w->t[i].nbytes, a) - w->t[i].nbytes);
	}
	*buf = b.p;
	*size = b.n;
}

int ggufw_write_file(struct ggufw *w, const char *path)
{
	uint8_t *buf;
	size_t n;
	FILE *fp;
	int ok;

	ggufw_write_mem(w, &buf, &n);
	fp = fopen(path, "wb");
	if (fp == NULL) {
		free(buf);
		return -1;
	}
	ok = fwrite(buf, 1, n, fp) == n;
	ok = (fclose(fp) == 0) && ok;
	free(buf);
	if (!ok && errno == 0)
		errno = EIO;
	return ok ? 0 : -1;
}

const struct ggufw_field *ggufw_field(const struct ggufw *w, enum ggufw_kind kind, uint32_t rec,
                                      uint32_t sub)
{
	for (size_t i = 0; i < w->n_fields; i++)
		if (w->fields[i].kind == kind && w->fields[i].rec == rec && w->fields[i].sub == sub)
			return &w->fields[i];
	return NULL;
}

const struct ggufw_field *ggufw_fields(const struct ggufw *w, size_t *n)
{
	*n = w->n_fields;
	return w->fields;
}
