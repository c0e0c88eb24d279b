/*
 * engine-ring.c: the host ring of batched raw K/V saves (engine-int.h
 * states its invariants). It places batches, starts their copies through
 * an io table and hands their bytes out, oldest first, once the copy said
 * they landed. It knows nothing of devices: the CPU engine's io copies
 * before start returns, the CUDA backend's later, a test's when the test
 * says so.
 */
#include "engine/engine-int.h"

#include <stdlib.h>
#include <string.h>

struct engine_ring *engine_ring_new(const struct engine_ring_io *io, size_t row, size_t cap)
{
	struct engine_ring *r = xcalloc(1, sizeof *r);
	r->io = *io;
	r->row = row;
	r->cap = cap; /* allocated by the first start */
	return r;
}

/* The held entry i (0: the oldest). */
static struct engine_ring_ent *ring_at(const struct engine_ring *r, uint32_t i)
{
	return &r->ent[(r->first + i) % r->ent_cap];
}

/* Wait for entry x's copy when it runs (its error kept). */
static void ring_settle(struct engine_ring *r, struct engine_ring_ent *x, bool wait)
{
	if (x->state != ENGINE_RING_RUN)
		return;
	bool done = false;
	int rc = r->io.poll(r->io.ud, x->job, wait, &done, &x->err);
	if (rc != KVS_OK) {
		x->state = ENGINE_RING_FAIL;
		x->err.code = rc;
		r->failed++;
	} else if (done) {
		x->state = ENGINE_RING_DONE;
	}
}

void engine_ring_free(struct engine_ring *r)
{
	if (r == NULL)
		return;
	/* a copy may still write into buf: let every one finish first */
	for (uint32_t i = 0; i < r->count; i++)
		ring_settle(r, ring_at(r, i), true);
	if (r->buf != NULL)
		r->io.free(r->io.ud, r->buf);
	free(r->ent);
	free(r);
}

/* Where a batch of bytes would go now, or SIZE_MAX; *wrap: at 0 after
 * the end (the ring wraps). */
static size_t ring_place(const struct engine_ring *r, size_t bytes, bool *wrap)
{
	*wrap = false;
	if (r->count == 0)
		return bytes <= r->cap || r->buf == NULL ? 0 : SIZE_MAX;
	if (r->wrapped) /* free: [head, tail) */
		return r->tail - r->head >= bytes ? r->head : SIZE_MAX;
	if (r->cap - r->head >= bytes) /* free: [head, cap) and [0, tail) */
		return r->head;
	if (r->tail >= bytes) {
		*wrap = true;
		return 0;
	}
	return SIZE_MAX;
}

bool engine_ring_room(const struct engine_ring *r, uint32_t n)
{
	bool wrap;
	return r->count == 0 || ring_place(r, (size_t)n * r->row, &wrap) != SIZE_MAX;
}

int engine_ring_start(struct engine_ring *r, const uint32_t *slots, uint32_t n, struct err *e)
{
	size_t bytes = (size_t)n * r->row;
	if (r->count == 0) {
		r->head = r->tail = 0;
		r->wrapped = false;
		if (r->buf == NULL || bytes > r->cap) {
			/* nothing held: the buffer can be (re)made at the size asked */
			size_t cap = KVS_MAX(bytes, r->buf == NULL ? r->cap : 2 * r->cap);
			if (r->buf != NULL)
				r->io.free(r->io.ud, r->buf);
			r->buf = NULL;
			uint8_t *buf = r->io.alloc(r->io.ud, KVS_MAX(cap, (size_t)1), e);
			if (buf == NULL)
				return e != NULL && e->code != KVS_OK ? e->code : KVS_ENOMEM;
			r->buf = buf;
			r->cap = cap;
		}
	}
	bool wrap;
	size_t off = ring_place(r, bytes, &wrap);
	if (off == SIZE_MAX)
		return err_set(e, KVS_ESTATE,
		               "KV ring: no room for %u slots (%zu bytes, %u batches held in %zu): "
		               "expected the oldest released first",
		               n, bytes, r->count, r->cap);
	if (r->count == r->ent_cap) {
		/* grow the entry table, oldest first at 0 */
		uint32_t cap = r->ent_cap ? 2 * r->ent_cap : 16;
		struct engine_ring_ent *ent = xmallocarray(cap, sizeof *ent);
		for (uint32_t i = 0; i < r->count; i++)
			ent[i] = *ring_at(r, i);
		free(r->ent);
		r->ent = ent;
		r->ent_cap = cap;
		r->first = 0;
	}
	struct engine_ring_ent x = { .off = off, .bytes = bytes, .n = n, .state = ENGINE_RING_RUN };
	int rc = r->io.start(r->io.ud, slots, n, r->buf + off, &x.job, e);
	if (rc != KVS_OK)
		return rc; /* nothing held: the ring is as it was */
	*ring_at(r, r->count) = x;
	r->count++;
	r->started++;
	if (r->count == 1)
		r->tail = off;
	r->head = off + bytes;
	r->wrapped = r->wrapped || wrap;
	return KVS_OK;
}

int engine_ring_collect(struct engine_ring *r, bool wait, bool *ready, const void **rows,
                        uint32_t *n, struct err *e)
{
	*ready = false;
	*rows = NULL;
	*n = 0;
	if (r->count == 0)
		return err_set(e, KVS_ESTATE, "KV ring: no batch held: expected one started");
	struct engine_ring_ent *x = ring_at(r, 0);
	ring_settle(r, x, wait);
	if (x->state == ENGINE_RING_FAIL) {
		if (e != NULL)
			*e = x->err;
		return x->err.code;
	}
	if (x->state == ENGINE_RING_DONE) {
		*ready = true;
		*rows = r->buf + x->off;
		*n = x->n;
	}
	return KVS_OK;
}

void engine_ring_release(struct engine_ring *r)
{
	if (r->count == 0)
		return;
	struct engine_ring_ent *x = ring_at(r, 0);
	ring_settle(r, x, true); /* its bytes may be written until the copy ends */
	r->first = (r->first + 1) % r->ent_cap;
	r->count--;
	if (r->count == 0) {
		r->head = r->tail = 0;
		r->wrapped = false;
		return;
	}
	size_t tail = ring_at(r, 0)->off;
	if (tail < r->tail)
		r->wrapped = false; /* the oldest is the first batch after the wrap */
	r->tail = tail;
}
