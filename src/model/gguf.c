/*
 * gguf.c: a validated, read-only view of a GGUF file.
 *
 * The file is hostile until proven otherwise. Everything is read through a
 * bounded cursor over the mapped bytes (struct gguf_cur): a read that would
 * pass the end of the file fails with the name of the field it was reading.
 * Counts are bounded by what the rest of the file could possibly hold before
 * anything is allocated from them; every size is computed with checked
 * arithmetic; string lengths are capped; nested arrays, duplicate or empty
 * keys, duplicate tensor names, unknown value and tensor type ids, bad
 * alignment, tensors outside the data section and overlapping tensors are
 * all rejected (engine.md 1.6 lists the rules and 1.7 the attacks behind
 * them). After gguf_open succeeds, every pointer in struct gguf_file is
 * inside the map and every tensor's bytes are inside the data section, so
 * later layers never re-check file structure, only meaning (shapes against
 * hyper-parameters, in arch.c).
 *
 * Each failure is one line that says where (header field, metadata record
 * with its key, tensor with its name), the value found and what was
 * expected. Names from the file are escaped before they are printed, so a
 * hostile name cannot break the one-line rule.
 *
 * Lookups by key and tensor name go through two open-addressing hash tables
 * (FNV-1a, power-of-two size, at most half full), which also find the
 * duplicates while parsing.
 */
#include "model/model.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC "GGUF"
#define GGUF_HEADER_BYTES 24
#define GGUF_MAX_KV (1u << 20)
#define GGUF_MAX_TENSORS (1u << 20)
#define GGUF_MAX_KEY_BYTES (64u << 10) /* keys */
#define GGUF_MAX_STR_BYTES (16u << 20) /* string values and array elements */
#define GGUF_MAX_ARR_ELEMS (1ull << 30)
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MIN_ALIGNMENT 8
#define GGUF_MAX_ALIGNMENT (1u << 16)
/* Smallest possible records: key (8-byte length + 1 byte) + type + 1-byte
 * value; name (8 + 1) + n_dims + one dim + type + offset. */
#define GGUF_MIN_KV_BYTES (8 + 1 + 4 + 1)
#define GGUF_MIN_TENSOR_BYTES (8 + 1 + 4 + 8 + 4 + 8)

/* Value classes, for the typed getters' conversions. */
enum gguf_class { GC_UINT, GC_SINT, GC_FLOAT, GC_BOOL, GC_STRING, GC_ARRAY };

/* One row per value type id: its name, payload size (0 = variable), class. */
static const struct {
	const char *name;
	uint8_t size;
	uint8_t cls;
} gguf_vtypes[GGUF_VTYPE_COUNT_] = {
	[GGUF_U8] = { "u8", 1, GC_UINT },           [GGUF_I8] = { "i8", 1, GC_SINT },
	[GGUF_U16] = { "u16", 2, GC_UINT },         [GGUF_I16] = { "i16", 2, GC_SINT },
	[GGUF_U32] = { "u32", 4, GC_UINT },         [GGUF_I32] = { "i32", 4, GC_SINT },
	[GGUF_F32] = { "f32", 4, GC_FLOAT },        [GGUF_BOOL] = { "bool", 1, GC_BOOL },
	[GGUF_STRING] = { "string", 0, GC_STRING }, [GGUF_ARRAY] = { "array", 0, GC_ARRAY },
	[GGUF_U64] = { "u64", 8, GC_UINT },         [GGUF_I64] = { "i64", 8, GC_SINT },
	[GGUF_F64] = { "f64", 8, GC_FLOAT },
};

/* The lookup tables behind f->index_: slot values are index + 1, 0 = empty. */
struct gguf_index {
	uint32_t kv_mask;
	uint32_t *kv_slots;
	uint32_t t_mask;
	uint32_t *t_slots;
};

/* The bounded cursor and the parser's "where am I" text for messages. */
struct gguf_cur {
	const uint8_t *p;
	uint64_t size;
	uint64_t pos;
	char where[160]; /* "metadata record 3 ('general.name')" */
	struct err *e;
};

const char *gguf_vtype_name(uint32_t type)
{
	return type < GGUF_VTYPE_COUNT_ ? gguf_vtypes[type].name : "unknown type";
}

/* Copy p[0..n) into out (cap bytes) as printable text: non-printable bytes
 * become \xNN, quotes and backslashes are escaped, long names end in "...". */
static void gguf_escape(const char *p, uint64_t n, char *out, size_t cap)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	for (uint64_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (o + 8 >= cap) {
			memcpy(out + o, "...", 3);
			o += 3;
			break;
		}
		if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
			out[o++] = (char)c;
		} else {
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	out[o] = '\0';
}

/* Fail with "WHERE: MESSAGE" (KVS_EFORMAT unless code says otherwise). */
__attribute__((format(printf, 3, 4))) static int gguf_fail(struct gguf_cur *c, int code,
                                                           const char *fmt, ...)
{
	char msg[ERR_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (c->where[0] != '\0')
		return err_set(c->e, code, "%s: %s", c->where, msg);
	return err_set(c->e, code, "%s", msg);
}

static uint64_t gguf_left(const struct gguf_cur *c)
{
	return c->size - c->pos;
}

/* Make sure n more bytes exist for the field named what. */
static int gguf_need(struct gguf_cur *c, uint64_t n, const char *what)
{
	if (n > gguf_left(c))
		return gguf_fail(c, KVS_EFORMAT,
		                 "truncated: %s at byte %llu needs %llu bytes, the file has %llu left",
		                 what, (unsigned long long)c->pos, (unsigned long long)n,
		                 (unsigned long long)gguf_left(c));
	return KVS_OK;
}

/* Little-endian loads from unaligned bytes (the host is little-endian:
 * configure refuses big-endian hosts). */
static uint64_t gguf_load(const uint8_t *p, unsigned size)
{
	uint64_t v = 0;
	memcpy(&v, p, size);
	return v;
}

static int gguf_read_u32(struct gguf_cur *c, uint32_t *out, const char *what)
{
	int rc = gguf_need(c, 4, what);
	if (rc != KVS_OK)
		return rc;
	*out = (uint32_t)gguf_load(c->p + c->pos, 4);
	c->pos += 4;
	return KVS_OK;
}

static int gguf_read_u64(struct gguf_cur *c, uint64_t *out, const char *what)
{
	int rc = gguf_need(c, 8, what);
	if (rc != KVS_OK)
		return rc;
	*out = gguf_load(c->p + c->pos, 8);
	c->pos += 8;
	return KVS_OK;
}

/* Read a string (u64 length + bytes), at most cap bytes long. */
static int gguf_read_str(struct gguf_cur *c, struct gguf_str *s, uint64_t cap, const char *what)
{
	char lenwhat[64];
	uint64_t n;
	int rc;

	snprintf(lenwhat, sizeof lenwhat, "length of %s", what);
	if ((rc = gguf_read_u64(c, &n, lenwhat)) != KVS_OK)
		return rc;
	if (n > cap)
		return gguf_fail(c, KVS_EFORMAT, "%s length = %llu, expected <= %llu", what,
		                 (unsigned long long)n, (unsigned long long)cap);
	if ((rc = gguf_need(c, n, what)) != KVS_OK)
		return rc;
	s->p = (const char *)(c->p + c->pos);
	s->n = n;
	c->pos += n;
	return KVS_OK;
}

/* ---- hash index ---- */

static uint64_t gguf_hash(const char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)p[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

/* Table size for n entries: a power of two at least 2n (n <= 2^20). */
static uint32_t gguf_table_size(uint64_t n)
{
	uint32_t size = 16;
	while (size < 2 * n)
		size *= 2;
	return size;
}

/* Name of entry i of table kind (keys or tensor names). */
static const char *gguf_entry_name(const struct gguf_file *f, bool tensors, uint32_t i)
{
	return tensors ? f->tensors[i].name : f->kv[i].key;
}

/* Find name[0..n) in a table; returns the slot (empty or matching). */
static uint32_t gguf_slot(const struct gguf_file *f, bool tensors, const char *name, size_t n)
{
	const struct gguf_index *ix = f->index_;
	const uint32_t *slots = tensors ? ix->t_slots : ix->kv_slots;
	uint32_t mask = tensors ? ix->t_mask : ix->kv_mask;
	uint32_t s = (uint32_t)gguf_hash(name, n) & mask;

	while (slots[s] != 0) {
		const char *other = gguf_entry_name(f, tensors, slots[s] - 1);
		if (strncmp(other, name, n) == 0 && other[n] == '\0')
			break;
		s = (s + 1) & mask;
	}
	return s;
}

const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key)
{
	const struct gguf_index *ix = f->index_;
	uint32_t s = gguf_slot(f, false, key, strlen(key));
	return ix->kv_slots[s] ? &f->kv[ix->kv_slots[s] - 1] : NULL;
}

const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name)
{
	const struct gguf_index *ix = f->index_;
	uint32_t s = gguf_slot(f, true, name, strlen(name));
	return ix->t_slots[s] ? &f->tensors[ix->t_slots[s] - 1] : NULL;
}

/* ---- metadata ---- */

/* Decode a fixed-size scalar of type t at p into kv->v. */
static void gguf_decode_scalar(struct gguf_kv *kv, uint32_t t, const uint8_t *p)
{
	uint64_t raw = gguf_load(p, gguf_vtypes[t].size);
	float f32;

	switch (gguf_vtypes[t].cls) {
	case GC_UINT: kv->v.u = raw; break;
	case GC_BOOL: kv->v.u = raw != 0; break;
	case GC_SINT:
		switch (t) {
		case GGUF_I8: kv->v.i = (int8_t)raw; break;
		case GGUF_I16: kv->v.i = (int16_t)raw; break;
		case GGUF_I32: kv->v.i = (int32_t)raw; break;
		default: kv->v.i = (int64_t)raw; break;
		}
		break;
	case GC_FLOAT:
		if (t == GGUF_F32) {
			memcpy(&f32, p, 4);
			kv->v.f = f32;
		} else {
			memcpy(&kv->v.f, p, 8);
		}
		break;
	}
}

/* Read an array value: element type, count, then the elements (bounded). */
static int gguf_read_array(struct gguf_cur *c, struct gguf_kv *kv)
{
	uint32_t et;
	uint64_t n, bytes;
	int rc;

	if ((rc = gguf_read_u32(c, &et, "array element type")) != KVS_OK)
		return rc;
	if (et == GGUF_ARRAY)
		return gguf_fail(c, KVS_EFORMAT,
		                 "array element type = 9 (array), expected a scalar or string type "
		                 "(nested arrays are not supported)");
	if (et >= GGUF_VTYPE_COUNT_)
		return gguf_fail(c, KVS_EFORMAT, "array element type = %u, expected 0..12", et);
	if ((rc = gguf_read_u64(c, &n, "array length")) != KVS_OK)
		return rc;
	if (n > GGUF_MAX_ARR_ELEMS)
		return gguf_fail(c, KVS_EFORMAT, "array length = %llu, expected <= %llu",
		                 (unsigned long long)n, (unsigned long long)GGUF_MAX_ARR_ELEMS);
	kv->arr_type = et;
	kv->arr_n = n;
	kv->arr_data = c->p + c->pos;
	if (et != GGUF_STRING) {
		if (!ck_mul_u64(n, gguf_vtypes[et].size, &bytes) || bytes > gguf_left(c))
			return gguf_fail(
			        c, KVS_EFORMAT,
			        "truncated: array of %llu %s at byte %llu needs %llu bytes, "
			        "the file has %llu left",
			        (unsigned long long)n, gguf_vtypes[et].name, (unsigned long long)c->pos,
			        (unsigned long long)n * gguf_vtypes[et].size, (unsigned long long)gguf_left(c));
		c->pos += bytes;
		return KVS_OK;
	}
	/* Each string needs at least its 8-byte length: bound n before allocating. */
	if (n > gguf_left(c) / 8)
		return gguf_fail(c, KVS_EFORMAT,
		                 "truncated: array of %llu strings at byte %llu needs at least %llu "
		                 "bytes, the file has %llu left",
		                 (unsigned long long)n, (unsigned long long)c->pos,
		                 (unsigned long long)n * 8, (unsigned long long)gguf_left(c));
	kv->arr_str_off = xmallocarray(n ? n : 1, sizeof *kv->arr_str_off);
	for (uint64_t i = 0; i < n; i++) {
		struct gguf_str s;
		char what[48];
		kv->arr_str_off[i] = (uint64_t)(c->p + c->pos - kv->arr_data);
		snprintf(what, sizeof what, "array element %llu", (unsigned long long)i);
		if ((rc = gguf_read_str(c, &s, GGUF_MAX_STR_BYTES, what)) != KVS_OK)
			return rc;
	}
	return KVS_OK;
}

/* Read metadata record i into f->kv[i] and enter its key in the index. */
static int gguf_read_kv(struct gguf_cur *c, struct gguf_file *f, uint64_t i)
{
	struct gguf_kv *kv = &f->kv[i];
	struct gguf_index *ix = f->index_;
	struct gguf_str key;
	char esc[80];
	uint32_t t, s;
	int rc;

	snprintf(c->where, sizeof c->where, "metadata record %llu", (unsigned long long)i);
	if ((rc = gguf_read_str(c, &key, GGUF_MAX_KEY_BYTES, "key")) != KVS_OK)
		return rc;
	if (key.n == 0)
		return gguf_fail(c, KVS_EFORMAT, "key is empty, expected a name");
	if (memchr(key.p, '\0', key.n) != NULL) {
		gguf_escape(key.p, key.n, esc, sizeof esc);
		return gguf_fail(c, KVS_EFORMAT, "key '%s' contains a NUL byte", esc);
	}
	gguf_escape(key.p, key.n, esc, sizeof esc);
	snprintf(c->where, sizeof c->where, "metadata record %llu ('%s')", (unsigned long long)i, esc);
	/* The key must be stored before it can be compared in the table. */
	kv->key = xstrndup(key.p, key.n);
	s = gguf_slot(f, false, key.p, key.n);
	if (ix->kv_slots[s] != 0)
		return gguf_fail(c, KVS_EFORMAT, "duplicate key (first seen in record %u)",
		                 ix->kv_slots[s] - 1);
	ix->kv_slots[s] = (uint32_t)i + 1;

	if ((rc = gguf_read_u32(c, &t, "value type")) != KVS_OK)
		return rc;
	if (t >= GGUF_VTYPE_COUNT_)
		return gguf_fail(c, KVS_EFORMAT, "value type = %u, expected 0..12", t);
	kv->type = t;
	if (t == GGUF_STRING)
		return gguf_read_str(c, &kv->v.s, GGUF_MAX_STR_BYTES, "string value");
	if (t == GGUF_ARRAY)
		return gguf_read_array(c, kv);
	if ((rc = gguf_need(c, gguf_vtypes[t].size, gguf_vtypes[t].name)) != KVS_OK)
		return rc;
	gguf_decode_scalar(kv, t, c->p + c->pos);
	c->pos += gguf_vtypes[t].size;
	return KVS_OK;
}

/* Apply general.alignment (if present): u32, a power of two in 8..65536. */
static int gguf_read_alignment(struct gguf_cur *c, struct gguf_file *f)
{
	const struct gguf_kv *kv = gguf_find_kv(f, "general.alignment");

	f->alignment = GGUF_DEFAULT_ALIGNMENT;
	if (kv == NULL)
		return KVS_OK;
	snprintf(c->where, sizeof c->where, "key 'general.alignment'");
	if (kv->type != GGUF_U32)
		return gguf_fail(c, KVS_EFORMAT, "type is %s, expected u32", gguf_vtype_name(kv->type));
	if (kv->v.u < GGUF_MIN_ALIGNMENT || kv->v.u > GGUF_MAX_ALIGNMENT ||
	    (kv->v.u & (kv->v.u - 1)) != 0)
		return gguf_fail(c, KVS_EFORMAT, "value = %llu, expected a power of two in %u..%u",
		                 (unsigned long long)kv->v.u, GGUF_MIN_ALIGNMENT, GGUF_MAX_ALIGNMENT);
	f->alignment = (uint32_t)kv->v.u;
	return KVS_OK;
}

/* ---- tensor infos ---- */

/* Read tensor-info record i: name, dims, type, offset; compute its size. */
static int gguf_read_tensor(struct gguf_cur *c, struct gguf_file *f, uint64_t i)
{
	struct gguf_tensor *t = &f->tensors[i];
	struct gguf_index *ix = f->index_;
	const struct dtype_info *di;
	struct gguf_str name;
	char esc[80], what[16];
	uint64_t nelem = 1, row_bytes, nbytes, ne;
	uint32_t s;
	int rc;

	snprintf(c->where, sizeof c->where, "tensor info %llu", (unsigned long long)i);
	if ((rc = gguf_read_str(c, &name, GGUF_MAX_KEY_BYTES, "tensor name")) != KVS_OK)
		return rc;
	gguf_escape(name.p, name.n, esc, sizeof esc);
	if (name.n == 0)
		return gguf_fail(c, KVS_EFORMAT, "tensor name is empty, expected a name");
	if (name.n >= GGUF_NAME_MAX)
		return gguf_fail(c, KVS_EFORMAT, "tensor name '%s' is %llu bytes, expected < %d", esc,
		                 (unsigned long long)name.n, GGUF_NAME_MAX);
	if (memchr(name.p, '\0', name.n) != NULL)
		return gguf_fail(c, KVS_EFORMAT, "tensor name '%s' contains a NUL byte", esc);
	memcpy(t->name, name.p, name.n);
	t->name[name.n] = '\0';
	snprintf(c->where, sizeof c->where, "tensor '%s'", esc);
	s = gguf_slot(f, true, name.p, name.n);
	if (ix->t_slots[s] != 0)
		return gguf_fail(c, KVS_EFORMAT, "duplicate tensor name (first seen as tensor %u)",
		                 ix->t_slots[s] - 1);
	ix->t_slots[s] = (uint32_t)i + 1;

	if ((rc = gguf_read_u32(c, &t->n_dims, "n_dims")) != KVS_OK)
		return rc;
	if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
		return gguf_fail(c, KVS_EFORMAT, "n_dims = %u, expected 1..%d", t->n_dims, GGUF_MAX_DIMS);
	for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
		t->ne[d] = 1;
	for (uint32_t d = 0; d < t->n_dims; d++) {
		snprintf(what, sizeof what, "ne[%u]", d);
		if ((rc = gguf_read_u64(c, &ne, what)) != KVS_OK)
			return rc;
		if (ne < 1 || ne > (uint64_t)INT64_MAX)
			return gguf_fail(c, KVS_EFORMAT, "ne[%u] = %llu, expected 1..%lld", d,
			                 (unsigned long long)ne, (long long)INT64_MAX);
		if (!ck_mul_u64(nelem, ne, &nelem) || nelem > (uint64_t)INT64_MAX)
			return gguf_fail(c, KVS_EFORMAT,
			                 "ne[%u] = %llu makes the element count overflow 63 bits", d,
			                 (unsigned long long)ne);
		t->ne[d] = (int64_t)ne;
	}
	if ((rc = gguf_read_u32(c, &t->type, "type")) != KVS_OK)
		return rc;
	di = dtype_info(t->type);
	if (di == NULL)
		return gguf_fail(c, KVS_EFORMAT,
		                 "type = %u, expected a known ggml type id (0..%d, except the "
		                 "removed 4, 5, 31-33 and 36-38)",
		                 t->type, DT_COUNT_ - 1);
	if ((uint64_t)t->ne[0] % di->block_elems != 0)
		return gguf_fail(c, KVS_EFORMAT,
		                 "ne[0] = %lld is not a multiple of %u, the block size of %s",
		                 (long long)t->ne[0], di->block_elems, di->name);
	/* Divide first, then multiply, each step checked (engine.md 1.7). */
	if (!dtype_row_bytes(t->type, (uint64_t)t->ne[0], &row_bytes) ||
	    !ck_mul_u64(row_bytes, (uint64_t)t->ne[1], &nbytes) ||
	    !ck_mul_u64(nbytes, (uint64_t)t->ne[2], &nbytes) ||
	    !ck_mul_u64(nbytes, (uint64_t)t->ne[3], &nbytes) || nbytes > (uint64_t)INT64_MAX)
		return gguf_fail(c, KVS_EFORMAT, "size of [%lld, %lld, %lld, %lld] %s overflows 63 bits",
		                 (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
		                 (long long)t->ne[3], di->name);
	t->nbytes = nbytes;
	return gguf_read_u64(c, &t->offset, "data offset");
}

/* Order tensors by offset (for the overlap check). */
static int gguf_cmp_offset(const void *a, const void *b)
{
	const struct gguf_tensor *x = *(const struct gguf_tensor *const *)a;
	const struct gguf_tensor *y = *(const struct gguf_tensor *const *)b;
	return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Place the data section and check each tensor lies inside it, aligned,
 * without overlapping another. */
static int gguf_place_tensors(struct gguf_cur *c, struct gguf_file *f)
{
	uint64_t data_size, end;
	const struct gguf_tensor **order;
	int rc = KVS_OK;

	c->where[0] = '\0';
	if (!ck_align_u64(c->pos, f->alignment, &f->data_offset))
		return gguf_fail(c, KVS_EFORMAT, "data section offset overflows");
	if (f->data_offset > f->size) {
		if (f->n_tensors > 0)
			return gguf_fail(c, KVS_EFORMAT,
			                 "truncated: the data section starts at byte %llu, the file "
			                 "has %llu bytes",
			                 (unsigned long long)f->data_offset, (unsigned long long)f->size);
		f->data_offset = f->size; /* no tensors: nothing follows the header */
	}
	data_size = f->size - f->data_offset;
	for (uint64_t i = 0; i < f->n_tensors; i++) {
		struct gguf_tensor *t = &f->tensors[i];
		char esc[80];
		gguf_escape(t->name, strlen(t->name), esc, sizeof esc);
		snprintf(c->where, sizeof c->where, "tensor '%s'", esc);
		if (t->offset % f->alignment != 0)
			return gguf_fail(c, KVS_EFORMAT, "offset = %llu, expected a multiple of %u",
			                 (unsigned long long)t->offset, f->alignment);
		if (!ck_add_u64(t->offset, t->nbytes, &end) || end > data_size)
			return gguf_fail(c, KVS_EFORMAT,
			                 "offset = %llu with %llu bytes of data ends past the data "
			                 "section (%llu bytes)",
			                 (unsigned long long)t->offset, (unsigned long long)t->nbytes,
			                 (unsigned long long)data_size);
		t->data = f->map + f->data_offset + t->offset;
	}
	if (f->n_tensors < 2)
		return KVS_OK;
	order = xmallocarray(f->n_tensors, sizeof *order);
	for (uint64_t i = 0; i < f->n_tensors; i++)
		order[i] = &f->tensors[i];
	qsort(order, f->n_tensors, sizeof *order, gguf_cmp_offset);
	for (uint64_t i = 1; i < f->n_tensors; i++) {
		if (order[i - 1]->offset + order[i - 1]->nbytes > order[i]->offset) {
			char a[80], b[80];
			gguf_escape(order[i - 1]->name, strlen(order[i - 1]->name), a, sizeof a);
			gguf_escape(order[i]->name, strlen(order[i]->name), b, sizeof b);
			c->where[0] = '\0';
			rc = gguf_fail(c, KVS_EFORMAT,
			               "tensor '%s' (offset %llu, %llu bytes) overlaps tensor '%s' "
			               "(offset %llu), expected disjoint data",
			               a, (unsigned long long)order[i - 1]->offset,
			               (unsigned long long)order[i - 1]->nbytes, b,
			               (unsigned long long)order[i]->offset);
			break;
		}
	}
	free(order);
	return rc;
}

/* ---- header and the whole file ---- */

/* Check magic and version; read and bound the two counts. */
static int gguf_read_header(struct gguf_cur *c, struct gguf_file *f)
{
	uint64_t left;
	uint32_t v, swapped;
	char esc[40];

	if (c->size < GGUF_HEADER_BYTES)
		return gguf_fail(c, KVS_EFORMAT, "file is %llu bytes, expected at least %d (a GGUF header)",
		                 (unsigned long long)c->size, GGUF_HEADER_BYTES);
	if (memcmp(c->p, GGUF_MAGIC, 4) != 0) {
		gguf_escape((const char *)c->p, 4, esc, sizeof esc);
		return gguf_fail(c, KVS_EFORMAT, "magic = '%s', expected 'GGUF' (not a GGUF file)", esc);
	}
	c->pos = 4;
	gguf_read_u32(c, &v, "version");
	swapped = __builtin_bswap32(v);
	if (v != 2 && v != 3) {
		if (v == 1)
			return gguf_fail(c, KVS_EUNSUPPORTED,
			                 "version = 1, expected 2 or 3 (GGUF v1 is obsolete)");
		if (swapped >= 1 && swapped <= 3)
			return gguf_fail(c, KVS_EUNSUPPORTED,
			                 "version = 0x%08x, a big-endian GGUF (v%u), expected a "
			                 "little-endian file",
			                 v, swapped);
		return gguf_fail(c, KVS_EUNSUPPORTED, "version = %u, expected 2 or 3", v);
	}
	f->version = v;
	gguf_read_u64(c, &f->n_tensors, "n_tensors");
	gguf_read_u64(c, &f->n_kv, "n_kv");
	if (f->n_tensors > GGUF_MAX_TENSORS)
		return gguf_fail(c, KVS_EFORMAT, "n_tensors = %llu, expected <= %u",
		                 (unsigned long long)f->n_tensors, GGUF_MAX_TENSORS);
	if (f->n_kv > GGUF_MAX_KV)
		return gguf_fail(c, KVS_EFORMAT, "n_kv = %llu, expected <= %u", (unsigned long long)f->n_kv,
		                 GGUF_MAX_KV);
	left = gguf_left(c);
	if (f->n_kv * GGUF_MIN_KV_BYTES + f->n_tensors * GGUF_MIN_TENSOR_BYTES > left)
		return gguf_fail(c, KVS_EFORMAT,
		                 "truncated: n_kv = %llu and n_tensors = %llu need at least %llu "
		                 "bytes of records, the file has %llu left",
		                 (unsigned long long)f->n_kv, (unsigned long long)f->n_tensors,
		                 (unsigned long long)(f->n_kv * GGUF_MIN_KV_BYTES +
		                                      f->n_tensors * GGUF_MIN_TENSOR_BYTES),
		                 (unsigned long long)left);
	return KVS_OK;
}

/* Parse and validate f->map[0..f->size); f->path is set by the caller. */
static int gguf_parse(struct gguf_file *f, struct err *e)
{
	struct gguf_cur c = { .p = f->map, .size = f->size, .e = e };
	struct gguf_index *ix;
	int rc;

	if ((rc = gguf_read_header(&c, f)) != KVS_OK)
		return rc;
	ix = xcalloc(1, sizeof *ix);
	f->index_ = ix;
	ix->kv_mask = gguf_table_size(f->n_kv) - 1;
	ix->kv_slots = xcalloc((size_t)ix->kv_mask + 1, sizeof *ix->kv_slots);
	ix->t_mask = gguf_table_size(f->n_tensors) - 1;
	ix->t_slots = xcalloc((size_t)ix->t_mask + 1, sizeof *ix->t_slots);
	f->kv = xcalloc(f->n_kv ? f->n_kv : 1, sizeof *f->kv);
	f->tensors = xcalloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);

	for (uint64_t i = 0; i < f->n_kv; i++)
		if ((rc = gguf_read_kv(&c, f, i)) != KVS_OK)
			return rc;
	if ((rc = gguf_read_alignment(&c, f)) != KVS_OK)
		return rc;
	for (uint64_t i = 0; i < f->n_tensors; i++)
		if ((rc = gguf_read_tensor(&c, f, i)) != KVS_OK)
			return rc;
	return gguf_place_tensors(&c, f);
}

void gguf_close(struct gguf_file *f)
{
	struct gguf_index *ix;

	if (f == NULL)
		return;
	if (f->kv != NULL) {
		for (uint64_t i = 0; i < f->n_kv; i++) {
			free(f->kv[i].key);
			free(f->kv[i].arr_str_off);
		}
		free(f->kv);
	}
	free(f->tensors);
	ix = f->index_;
	if (ix != NULL) {
		free(ix->kv_slots);
		free(ix->t_slots);
		free(ix);
	}
	if (f->owns_map && f->map != NULL)
		munmap((void *)f->map, f->size);
	free(f->path);
	free(f);
}

int gguf_open_memory(struct gguf_file **out, const void *buf, uint64_t size, struct err *e)
{
	struct gguf_file *f = xcalloc(1, sizeof *f);
	int rc;

	*out = NULL;
	f->map = buf;
	f->size = size;
	rc = gguf_parse(f, e);
	if (rc != KVS_OK) {
		gguf_close(f);
		return rc;
	}
	*out = f;
	return KVS_OK;
}

int gguf_open(struct gguf_file **out, const char *path, struct err *e)
{
	struct gguf_file *f;
	uint64_t size;
	void *map;
	int fd, rc;

	*out = NULL;
	rc = file_open_regular(path, "a GGUF file", &fd, &size, e);
	if (rc != KVS_OK)
		return rc;
	if (size < GGUF_HEADER_BYTES) {
		close(fd);
		return err_set(e, KVS_EFORMAT,
		               "%s: file is %llu bytes, expected at least %d (a GGUF header)", path,
		               (unsigned long long)size, GGUF_HEADER_BYTES);
	}
	map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (map == MAP_FAILED)
		return err_set(e, KVS_EIO, "%s: mmap: %s", path, strerror(errno));
	f = xcalloc(1, sizeof *f);
	f->path = xstrdup(path);
	f->map = map;
	f->size = size;
	f->owns_map = true;
	rc = gguf_parse(f, e);
	if (rc != KVS_OK) {
		err_prefix(e, "%s", path);
		gguf_close(f);
		return rc;
	}
	*out = f;
	return KVS_OK;
}

/* ---- typed getters ---- */

/* Find key; KVS_ENOTFOUND (with a message) if absent. */
static int gguf_get(const struct gguf_file *f, const char *key, const struct gguf_kv **kv,
                    struct err *e)
{
	*kv = gguf_find_kv(f, key);
	if (*kv == NULL)
		return err_set(e, KVS_ENOTFOUND, "key '%s' is missing", key);
	return KVS_OK;
}

/* Read an integer key whose value must lie in [lo, hi]. */
static int gguf_get_int(const struct gguf_file *f, const char *key, int64_t lo, uint64_t hi,
                        const char *want, int64_t *si, uint64_t *ui, struct err *e)
{
	const struct gguf_kv *kv;
	int rc = gguf_get(f, key, &kv, e);

	if (rc != KVS_OK)
		return rc;
	if (kv->type >= GGUF_VTYPE_COUNT_ ||
	    (gguf_vtypes[kv->type].cls != GC_UINT && gguf_vtypes[kv->type].cls != GC_SINT))
		return err_set(e, KVS_EFORMAT, "key '%s' has type %s, expected %s", key,
		               gguf_vtype_name(kv->type), want);
	if (gguf_vtypes[kv->type].cls == GC_UINT) {
		if (kv->v.u > hi)
			return err_set(e, KVS_EFORMAT, "key '%s' = %llu, expected %s", key,
			               (unsigned long long)kv->v.u, want);
		*ui = kv->v.u;
		*si = (int64_t)kv->v.u; /* only used when hi <= INT64_MAX */
		return KVS_OK;
	}
	if (kv->v.i < lo || (kv->v.i >= 0 && (uint64_t)kv->v.i > hi))
		return err_set(e, KVS_EFORMAT, "key '%s' = %lld, expected %s", key, (long long)kv->v.i,
		               want);
	*si = kv->v.i;
	*ui = (uint64_t)kv->v.i;
	return KVS_OK;
}

int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out, struct err *e)
{
	int64_t si;
	uint64_t ui;
	int rc = gguf_get_int(f, key, 0, UINT32_MAX, "an integer in 0..4294967295", &si, &ui, e);
	if (rc == KVS_OK)
		*out = (uint32_t)ui;
	return rc;
}

int gguf_get_u64(const struct gguf_file *f, const char *key, uint64_t *out, struct err *e)
{
	int64_t si;
	uint64_t ui;
	int rc = gguf_get_int(f, key, 0, UINT64_MAX, "a non-negative integer", &si, &ui, e);
	if (rc == KVS_OK)
		*out = ui;
	return rc;
}

int gguf_get_i32(const struct gguf_file *f, const char *key, int32_t *out, struct err *e)
{
	int64_t si;
	uint64_t ui;
	int rc = gguf_get_int(f, key, INT32_MIN, INT32_MAX, "an integer in -2147483648..2147483647",
	                      &si, &ui, e);
	if (rc == KVS_OK)
		*out = (int32_t)si;
	return rc;
}

int gguf_get_f32(const struct gguf_file *f, const char *key, float *out, struct err *e)
{
	const struct gguf_kv *kv;
	int rc = gguf_get(f, key, &kv, e);

	if (rc != KVS_OK)
		return rc;
	if (kv->type != GGUF_F32 && kv->type != GGUF_F64)
		return err_set(e, KVS_EFORMAT, "key '%s' has type %s, expected f32", key,
		               gguf_vtype_name(kv->type));
	*out = (float)kv->v.f;
	return KVS_OK;
}

int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out, struct err *e)
{
	const struct gguf_kv *kv;
	int rc = gguf_get(f, key, &kv, e);

	if (rc != KVS_OK)
		return rc;
	if (kv->type != GGUF_BOOL)
		return err_set(e, KVS_EFORMAT, "key '%s' has type %s, expected bool", key,
		               gguf_vtype_name(kv->type));
	*out = kv->v.u != 0;
	return KVS_OK;
}

int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out, struct err *e)
{
	const struct gguf_kv *kv;
	int rc = gguf_get(f, key, &kv, e);

	if (rc != KVS_OK)
		return rc;
	if (kv->type != GGUF_STRING)
		return err_set(e, KVS_EFORMAT, "key '%s' has type %s, expected string", key,
		               gguf_vtype_name(kv->type));
	*out = kv->v.s;
	return KVS_OK;
}

int gguf_get_arr(const struct gguf_file *f, const char *key, uint32_t elem_type,
                 const struct gguf_kv **out, struct err *e)
{
	const struct gguf_kv *kv;
	int rc = gguf_get(f, key, &kv, e);

	*out = NULL;
	if (rc != KVS_OK)
		return rc;
	if (kv->type != GGUF_ARRAY)
		return err_set(e, KVS_EFORMAT, "key '%s' has type %s, expected an array%s%s", key,
		               gguf_vtype_name(kv->type), elem_type < GGUF_VTYPE_COUNT_ ? " of " : "",
		               elem_type < GGUF_VTYPE_COUNT_ ? gguf_vtype_name(elem_type) : "");
	if (elem_type < GGUF_VTYPE_COUNT_ && kv->arr_type != elem_type)
		return err_set(e, KVS_EFORMAT, "key '%s' is an array of %s, expected an array of %s", key,
		               gguf_vtype_name(kv->arr_type), gguf_vtype_name(elem_type));
	*out = kv;
	return KVS_OK;
}

struct gguf_str gguf_arr_str(const struct gguf_kv *kv, uint64_t i)
{
	const uint8_t *p = kv->arr_data + kv->arr_str_off[i];
	struct gguf_str s = { (const char *)p + 8, gguf_load(p, 8) };
	return s;
}

/* Element i of a numeric array decoded as a scalar record. */
static struct gguf_kv gguf_arr_elem(const struct gguf_kv *kv, uint64_t i)
{
	struct gguf_kv tmp = { .type = kv->arr_type };
	uint8_t size = gguf_vtypes[kv->arr_type].size;
	gguf_decode_scalar(&tmp, kv->arr_type, kv->arr_data + i * size);
	return tmp;
}

double gguf_arr_f64(const struct gguf_kv *kv, uint64_t i)
{
	struct gguf_kv x;

	if (kv->arr_type >= GGUF_VTYPE_COUNT_ || gguf_vtypes[kv->arr_type].size == 0)
		return 0;
	x = gguf_arr_elem(kv, i);
	switch (gguf_vtypes[kv->arr_type].cls) {
	case GC_FLOAT: return x.v.f;
	case GC_SINT: return (double)x.v.i;
	default: return (double)x.v.u;
	}
}

int64_t gguf_arr_i64(const struct gguf_kv *kv, uint64_t i)
{
	struct gguf_kv x;

	if (kv->arr_type >= GGUF_VTYPE_COUNT_ || gguf_vtypes[kv->arr_type].size == 0)
		return 0;
	x = gguf_arr_elem(kv, i);
	switch (gguf_vtypes[kv->arr_type].cls) {
	case GC_FLOAT:
		/* Saturate: converting NaN or an out-of-range float is undefined. */
		if (isnan(x.v.f))
			return 0;
		if (x.v.f >= 9.2233720368547758e18)
			return INT64_MAX;
		if (x.v.f <= -9.2233720368547758e18)
			return INT64_MIN;
		return (int64_t)x.v.f;
	case GC_SINT: return x.v.i;
	default: return x.v.u > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)x.v.u;
	}
}
