/*
 * engine-int.h: the engine's insides that engine.c shares with
 * engine-ring.c (never another layer; tests may include it): the host ring
 * that batched raw K/V saves land in.
 *
 * The ring (engine_kv_save_batch, engine.h) holds batches of slots' raw
 * rows, in the order they were started, in one host buffer: a batch takes
 * n * row contiguous bytes after the newest one, or at the start of the
 * buffer when the end is short and the oldest has moved past (a batch
 * never wraps). A copy runs through the io table: start may return before
 * the bytes landed (the CUDA backend's gather on its copy stream) and poll
 * says when they did, so the bytes of a batch are read only after poll
 * said done (engine_ring_collect), and a batch's bytes are reused only
 * after the caller released it, oldest first. Invariants: the held batches
 * are ent[first], ent[first + 1], ... (count of them, ring order) with
 * offsets rising but for at most one wrap to 0; used bytes never overlap;
 * with nothing held, head = tail = 0. A batch larger than the buffer grows
 * it, but only when nothing is held (memory a copy may still write is
 * never freed); otherwise the caller collects and releases the oldest and
 * asks again (engine_ring_room).
 */
#ifndef KVS_ENGINE_INT_H
#define KVS_ENGINE_INT_H

#include "base/base.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* How the ring copies: a backend's batched raw access or the engine's
 * slot-by-slot fallback (or a test's fake). */
struct engine_ring_io {
	void *ud;
	/* n bytes of host memory the copies may land in (pinned on CUDA);
	 * NULL on failure with e set. free gives it back (no copy runs). */
	void *(*alloc)(void *ud, size_t bytes, struct err *e);
	void (*free)(void *ud, void *p);
	/* Start copying the raw rows of slots (n) into dst (n, row bytes);
	 * *job names the copy for poll. */
	int (*start)(void *ud, const uint32_t *slots, uint32_t n, void *dst, uint64_t *job,
	             struct err *e);
	/* Whether job's bytes landed (*done; wait: block until they have);
	 * the copy's error if it failed (then *done is meaningless). */
	int (*poll)(void *ud, uint64_t job, bool wait, bool *done, struct err *e);
};

enum engine_ring_state { ENGINE_RING_RUN, ENGINE_RING_DONE, ENGINE_RING_FAIL };

struct engine_ring_ent {
	size_t off, bytes; /* where in buf */
	uint32_t n;        /* slots */
	uint64_t job;
	enum engine_ring_state state;
	struct err err; /* ENGINE_RING_FAIL: why */
};

struct engine_ring {
	struct engine_ring_io io;
	size_t row;                  /* bytes per slot */
	uint8_t *buf;                /* (cap) from io.alloc */
	size_t cap;                  /* bytes */
	size_t head;                 /* the byte after the newest batch */
	size_t tail;                 /* the oldest batch's first byte */
	bool wrapped;                /* the newest batches sit before the oldest (from 0 to head) */
	struct engine_ring_ent *ent; /* (ent_cap) circular, count held from first */
	uint32_t ent_cap, first, count;
	uint64_t started, failed; /* batches, over the ring's life */
};

/* A ring of cap bytes at first (grown on demand) over io, for rows of row
 * bytes (caller owns; engine_ring_free). */
struct engine_ring *engine_ring_new(const struct engine_ring_io *io, size_t row, size_t cap);
/* Wait for every copy still running, then give the buffer back. */
void engine_ring_free(struct engine_ring *r);
/* Whether a batch of n slots can start now (nothing held: always). */
bool engine_ring_room(const struct engine_ring *r, uint32_t n);
/* Start a batch (KVS_ESTATE without room: engine_ring_room first); on an
 * error from io.start nothing is held. */
int engine_ring_start(struct engine_ring *r, const uint32_t *slots, uint32_t n, struct err *e);
/* The oldest held batch: *ready when its bytes landed (wait: block until
 * they have); then *rows (n, row) lent until engine_ring_release and *n.
 * KVS_ESTATE when nothing is held; a failed copy's error, every time it
 * is asked, until released. */
int engine_ring_collect(struct engine_ring *r, bool wait, bool *ready, const void **rows,
                        uint32_t *n, struct err *e);
/* Drop the oldest batch (waiting for its copy if it still runs). */
void engine_ring_release(struct engine_ring *r);

/* ---- the per-head store's row map (engine-rows.c) ---- */

struct backend_ops;
struct engine_batch;
struct engine_config;
struct hparams;

/* The row map of a per-head store of n_rows rows (every entry
 * ENGINE_ROW_NONE) and its check's scratch *mark, (n_rows); NULL (and no
 * scratch) for the slot store (n_rows 0). */
uint32_t *engine_rows_alloc(const struct hparams *hp, uint32_t n_ctx, uint32_t n_rows,
                            uint32_t **mark);
/* A backend for the per-head store: *ops when it has one; the CPU's under
 * the auto backend; else KVS_EUNSUPPORTED in one line. */
int engine_rows_backend(const struct engine_config *c, const struct backend_ops **ops,
                        struct err *e);
/* A forward's batch b against the map (vis, its visible list): every
 * visible slot a head keeps in a row of that head's own, distinct from
 * the others', every written slot in a row of every head, no sparse
 * attention; KVS_EARG / KVS_EUNSUPPORTED in one line naming what is
 * wrong. */
int engine_rows_check(const uint32_t *map, uint32_t *mark, const struct hparams *hp,
                      const struct engine_config *cfg, const struct engine_batch *b,
                      const uint32_t *vis, struct err *e);

#endif
