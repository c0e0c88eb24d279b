/*
 * ggufw.h: a small GGUF writer for tests (libtestutil.a, check-only).
 *
 * Build a file in memory, then write it to a path or a buffer:
 *
 *   struct ggufw *w = ggufw_new();
 *   ggufw_add_str(w, "general.architecture", "llama");
 *   ggufw_add_u32(w, "llama.block_count", 2);
 *   ggufw_add_arr_str(w, "tokenizer.ggml.tokens", toks, n_toks);
 *   ggufw_add_tensor(w, "output_norm.weight", DT_F32, 1, (int64_t[]){ 64 }, data, 256);
 *   ggufw_write_file(w, path);   // or ggufw_write_mem(w, &buf, &size)
 *   ggufw_free(w);
 *
 * The writer checks nothing on purpose: it writes whatever it is given
 * (unknown types, zero dims, 5 dims, wrong byte counts), so tests can build
 * hostile files. Records are written in the order they were added. Tensor
 * data is laid out densely in that order, each start aligned to the
 * alignment (32 unless ggufw_set_alignment says otherwise).
 *
 * After a write, ggufw_field() says where each header field landed, so a
 * test can patch exactly one field (a count, a length, a dim, a type, an
 * offset) of an otherwise valid file.
 */
#ifndef KVS_GGUFW_H
#define KVS_GGUFW_H

#include <stddef.h>
#include <stdint.h>

struct ggufw;

struct ggufw *ggufw_new(void);
void ggufw_free(struct ggufw *w);

/* The version written in the header (default 3). */
void ggufw_set_version(struct ggufw *w, uint32_t version);
/* Add the general.alignment key (u32) and lay tensor data out with it.
 * A value that is not a power of two in 1..65536 is written as the key only
 * (the layout then uses 32), so hostile alignments can be expressed too. */
void ggufw_set_alignment(struct ggufw *w, uint32_t alignment);

/* Scalars. */
void ggufw_add_u8(struct ggufw *w, const char *key, uint8_t v);
void ggufw_add_i8(struct ggufw *w, const char *key, int8_t v);
void ggufw_add_u16(struct ggufw *w, const char *key, uint16_t v);
void ggufw_add_i16(struct ggufw *w, const char *key, int16_t v);
void ggufw_add_u32(struct ggufw *w, const char *key, uint32_t v);
void ggufw_add_i32(struct ggufw *w, const char *key, int32_t v);
void ggufw_add_u64(struct ggufw *w, const char *key, uint64_t v);
void ggufw_add_i64(struct ggufw *w, const char *key, int64_t v);
void ggufw_add_f32(struct ggufw *w, const char *key, float v);
void ggufw_add_f64(struct ggufw *w, const char *key, double v);
void ggufw_add_bool(struct ggufw *w, const char *key, int v);
void ggufw_add_str(struct ggufw *w, const char *key, const char *v);
/* A string of n bytes (may hold NULs). */
void ggufw_add_strn(struct ggufw *w, const char *key, const char *v, size_t n);

/* Arrays. */
void ggufw_add_arr_str(struct ggufw *w, const char *key, const char *const *v, size_t n);
void ggufw_add_arr_i32(struct ggufw *w, const char *key, const int32_t *v, size_t n);
void ggufw_add_arr_u32(struct ggufw *w, const char *key, const uint32_t *v, size_t n);
void ggufw_add_arr_f32(struct ggufw *w, const char *key, const float *v, size_t n);
void ggufw_add_arr_u8(struct ggufw *w, const char *key, const uint8_t *v, size_t n);
/* Any array of fixed-size elements: elem_type (enum gguf_vtype), n elements
 * of elem_size bytes each, copied from v. */
void ggufw_add_arr_raw(struct ggufw *w, const char *key, uint32_t elem_type, const void *v,
                       size_t n, size_t elem_size);

/* Any record: the key, then type as given, then payload[0..n) verbatim
 * (for nested arrays, bad type ids, lying lengths). */
void ggufw_add_raw(struct ggufw *w, const char *key, uint32_t type, const void *payload, size_t n);

/*
 * A tensor: name, ggml type id, n_dims extents ne[0..n_dims) (ggml order,
 * ne[0] innermost; n_dims may exceed 4 for hostile files) and nbytes of data
 * copied from data (zeros when data is NULL). The header records nbytes'
 * aligned position as the offset.
 */
void ggufw_add_tensor(struct ggufw *w, const char *name, uint32_t type, uint32_t n_dims,
                      const int64_t *ne, const void *data, size_t nbytes);
/* An F32 tensor of prod(ne) floats. */
void ggufw_add_tensor_f32(struct ggufw *w, const char *name, uint32_t n_dims, const int64_t *ne,
                          const float *data);

/* Serialise into a malloc'ed buffer (free with free()). */
void ggufw_write_mem(struct ggufw *w, uint8_t **buf, size_t *size);
/* Write to path; 0 on success, -1 with errno set. */
int ggufw_write_file(struct ggufw *w, const char *path);

/* Header fields that ggufw_field can locate after a write. */
enum ggufw_kind {
	GW_MAGIC,       /* 4 bytes */
	GW_VERSION,     /* u32 */
	GW_N_TENSORS,   /* u64 */
	GW_N_KV,        /* u64 */
	GW_KEY_LEN,     /* u64, record rec */
	GW_KV_TYPE,     /* u32 */
	GW_STR_LEN,     /* u64: a string value's length */
	GW_ARR_TYPE,    /* u32 */
	GW_ARR_N,       /* u64 */
	GW_ARR_STR_LEN, /* u64: string element sub of an array */
	GW_VALUE,       /* scalar value bytes, or first array element */
	GW_T_NAME_LEN,  /* u64, tensor rec */
	GW_T_NDIMS,     /* u32 */
	GW_T_NE,        /* u64, dim sub */
	GW_T_TYPE,      /* u32 */
	GW_T_OFFSET,    /* u64 */
	GW_T_END,       /* end of tensor-info record rec (size 0) */
	GW_KV_END,      /* end of metadata record rec (size 0) */
	GW_DATA,        /* start of the data section (size 0) */
	GW_KIND_COUNT_
};

struct ggufw_field {
	enum ggufw_kind kind;
	uint32_t rec;  /* metadata record or tensor index */
	uint32_t sub;  /* dim or array element */
	uint64_t pos;  /* byte offset in the written file */
	uint32_t size; /* bytes */
};

/* Where field (kind, rec, sub) landed in the last write; NULL if none. */
const struct ggufw_field *ggufw_field(const struct ggufw *w, enum ggufw_kind kind, uint32_t rec,
                                      uint32_t sub);
/* All fields of the last write, in file order. */
const struct ggufw_field *ggufw_fields(const struct ggufw *w, size_t *n);

#endif
