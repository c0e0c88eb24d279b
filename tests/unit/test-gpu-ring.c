/*
 * test-gpu-ring.c: the host side of the device <-> cold tier copies, on
 * any machine.
 *
 *   - The ring (src/engine/engine-ring.c) over a fake io whose copies land
 *     when the test says: bytes are handed out only after their copy
 *     landed, oldest first whatever order the copies land in; placement,
 *     the wrap to 0, a full ring (no room until the oldest is released),
 *     growth only while nothing is held, a failed copy (its error every
 *     time it is asked, until released), a failed start (nothing held),
 *     and every copy waited for before the buffer is given back.
 *   - The CPU engine's engine_kv_save_batch gives exactly the bytes of
 *     engine_kv_save slot by slot; the batch layout (gpuplan_raw_off, what
 *     the CUDA gather and scatter kernels index with) against
 *     engine_kv_read; engine_kv_load_batch against engine_kv_load, and its
 *     one-line refusals (nothing loaded then).
 *   - kv_cold.c's deferred hand-off over engine_kv_defer (copies that land
 *     later, as the CUDA backend's do): evictions reach the listener in
 *     eviction order, each with the rows its tokens had, only once their
 *     copy landed; a full ring waits for the oldest; a failed copy hands
 *     its tokens over without rows; kv_cache_cold_sync and a listener
 *     change hand over everything.
 */
#include "engine/engine-int.h"
#include "engine/engine.h"
#include "gpu/gpuplan.h"
#include "kv/kv-int.h"
#include "model/model.h"

#include "test.h"
#include "tests/util/tinymodel.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ a fake io */

struct fake_job {
	uint32_t slots[64];
	uint32_t n;
	uint8_t *dst;
	bool landed, fail;
};

struct fake {
	struct fake_job jobs[64];
	uint32_t n_jobs;
	uint32_t row;
	int allocs, frees;
	size_t last_alloc;
	bool fail_start;  /* the next start fails */
	int64_t fail_job; /* this job's copy fails */
	uint32_t polls_waited;
};

/* The byte a copy writes at offset k of slot s's row. */
static uint8_t fake_byte(uint32_t slot, uint32_t k)
{
	return (uint8_t)(slot * 7 + k + 1);
}

static void fake_land(struct fake *f, uint32_t j)
{
	struct fake_job *x = &f->jobs[j];
	if (x->landed)
		return;
	x->landed = true;
	if (x->fail)
		return;
	for (uint32_t i = 0; i < x->n; i++)
		for (uint32_t k = 0; k < f->row; k++)
			x->dst[i * f->row + k] = fake_byte(x->slots[i], k);
}

static void *fake_alloc(void *ud, size_t bytes, struct err *e)
{
	struct fake *f = ud;
	(void)e;
	f->allocs++;
	f->last_alloc = bytes;
	uint8_t *p = xmalloc(bytes);
	memset(p, 0xEE, bytes); /* what a copy has not written */
	return p;
}

static void fake_free(void *ud, void *p)
{
	struct fake *f = ud;
	/* never while a copy may still write */
	for (uint32_t j = 0; j < f->n_jobs; j++)
		T_CHECK(f->jobs[j].landed, "ring freed while copy %u runs", j);
	f->frees++;
	free(p);
}

static int fake_start(void *ud, const uint32_t *slots, uint32_t n, void *dst, uint64_t *job,
                      struct err *e)
{
	struct fake *f = ud;
	if (f->fail_start) {
		f->fail_start = false;
		return err_set(e, KVS_EIO, "fake start refused");
	}
	struct fake_job *x = &f->jobs[f->n_jobs];
	memcpy(x->slots, slots, n * sizeof *slots);
	x->n = n;
	x->dst = dst;
	x->landed = false;
	x->fail = (int64_t)f->n_jobs == f->fail_job;
	*job = f->n_jobs++;
	return KVS_OK;
}

static int fake_poll(void *ud, uint64_t job, bool wait, bool *done, struct err *e)
{
	struct fake *f = ud;
	if (wait) {
		fake_land(f, (uint32_t)job);
		f->polls_waited++;
	}
	*done = f->jobs[job].landed;
	if (f->jobs[job].landed && f->jobs[job].fail)
		return err_set(e, KVS_EIO, "fake copy %u failed", (unsigned)job);
	return KVS_OK;
}

/* The bytes of batch rows (n slots) are the fake's for those slots. */
static bool fake_rows_ok(const struct fake *f, const uint8_t *rows, const uint32_t *slots,
                         uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		for (uint32_t k = 0; k < f->row; k++)
			if (rows[i * f->row + k] != fake_byte(slots[i], k))
				return false;
	return true;
}

static void test_ring(void)
{
	struct fake *f = xcalloc(1, sizeof *f);
	f->row = 8;
	f->fail_job = -1;
	struct engine_ring_io io = { f, fake_alloc, fake_free, fake_start, fake_poll };
	struct engine_ring *r = engine_ring_new(&io, 8, 10 * 8); /* 10 slots */
	struct err e;
	bool ready;
	const void *rows;
	uint32_t n;
	T_EQ_INT(engine_ring_collect(r, false, &ready, &rows, &n, &e), KVS_ESTATE);
	T_CHECK(strstr(e.msg, "no batch held") != NULL, "empty collect: %s", e.msg);
	T_CHECK(engine_ring_room(r, 1000), "an empty ring has room for anything");

	/* three batches of 3, 4, 2 slots: offsets 0, 24, 56 */
	const uint32_t a[3] = { 5, 1, 9 }, b[4] = { 2, 3, 4, 0 }, c[2] = { 7, 8 };
	T_EQ_INT(engine_ring_start(r, a, 3, &e), KVS_OK);
	T_EQ_INT(f->allocs, 1);
	T_EQ_INT(f->last_alloc, 80);
	T_EQ_INT(engine_ring_start(r, b, 4, &e), KVS_OK);
	T_CHECK(engine_ring_room(r, 3) && !engine_ring_room(r, 4), "3 slots left of 10");
	T_EQ_INT(engine_ring_start(r, c, 2, &e), KVS_OK);
	T_EQ_INT(r->count, 3);
	T_CHECK(f->jobs[1].dst == r->buf + 24 && f->jobs[2].dst == r->buf + 56, "batch offsets");
	/* not landed: not handed out, and the ring bytes still untouched */
	T_EQ_INT(engine_ring_collect(r, false, &ready, &rows, &n, &e), KVS_OK);
	T_CHECK(!ready && rows == NULL, "a running copy's bytes were handed out");
	T_CHECK(r->buf[0] == 0xEE, "fake wrote early");
	/* the second lands first: still the oldest is asked for */
	fake_land(f, 1);
	T_EQ_INT(engine_ring_collect(r, false, &ready, &rows, &n, &e), KVS_OK);
	T_CHECK(!ready, "the second batch overtook the first");
	fake_land(f, 0);
	T_EQ_INT(engine_ring_collect(r, false, &ready, &rows, &n, &e), KVS_OK);
	T_CHECK(ready && n == 3 && rows == r->buf && fake_rows_ok(f, rows, a, 3), "first batch");
	engine_ring_release(r);
	T_EQ_INT(engine_ring_collect(r, false, &ready, &rows, &n, &e), KVS_OK);
	T_CHECK(ready && n == 4 && fake_rows_ok(f, rows, b, 4), "second batch");

	/* full: 9 used of 10 (tail 24 .. head 72); 3 slots wrap to 0 */
	T_CHECK(engine_ring_room(r, 3) && !engine_ring_room(r, 4), "wrap room: 3 before the oldest");
	const uint32_t d3[3] = { 6, 6, 1 };
	T_EQ_INT(engine_ring_start(r, d3, 3, &e), KVS_OK);
	T_CHECK(f->jobs[3].dst == r->buf && r->wrapped, "wrapped to 0");
	T_CHECK(!engine_ring_room(r, 1), "nothing between head 24 and tail 24");
	T_EQ_INT(engine_ring_start(r, d3, 1, &e), KVS_ESTATE);
	T_CHECK(strstr(e.msg, "no room") != NULL, "%s", e.msg);
	/* a batch bigger than the ring cannot start while one is held */
	T_CHECK(!engine_ring_room(r, 11), "grew under held batches");
	engine_ring_release(r); /* the 4-slot batch: the oldest is now at 56 */
	T_CHECK(r->wrapped && engine_ring_room(r, 4) && !engine_ring_room(r, 5), "room after release");
	engine_ring_release(r); /* the 2-slot batch at 56: the oldest is the wrapped one at 0 */
	T_CHECK(!r->wrapped && r->tail == 0 && r->head == 24, "unwrapped");
	T_CHECK(engine_ring_room(r, 7) && !engine_ring_room(r, 8), "7 after head 24");
	/* release waits for a running copy */
	uint32_t w0 = f->polls_waited;
	engine_ring_release(r);
	T_CHECK(f->polls_waited == w0 + 1 && f->jobs[3].landed, "release waited for its copy");
	T_EQ_INT(r->count, 0);

	/* empty again: a big batch grows the buffer (the old one given back) */
	uint32_t big[12];
	for (uint32_t i = 0; i < 12; i++)
		big[i] = i;
	T_EQ_INT(engine_ring_start(r, big, 12, &e), KVS_OK);
	T_EQ_INT(f->allocs, 2);
	T_EQ_INT(f->frees, 1);
	T_EQ_INT(f->last_alloc, 160); /* twice the old size: more than 12 slots */
	T_EQ_INT(engine_ring_collect(r, true, &ready, &rows, &n, &e), KVS_OK);
	T_CHECK(ready && n == 12 && fake_rows_ok(f, rows, big, 12), "big batch");
	engine_ring_release(r);

	/* a failed copy: its error every time, until released */
	f->fail_job = f->n_jobs;
	T_EQ_INT(engine_ring_start(r, a, 3, &e), KVS_OK);
	T_EQ_INT(engine_ring_start(r, c, 2, &e), KVS_OK);
	fake_land(f, f->n_jobs - 2);
	T_EQ_INT(engine_ring_collect(r, false, &ready, &rows, &n, &e), KVS_EIO);
	T_CHECK(strstr(e.msg, "failed") != NULL && !ready, "failed copy: %s", e.msg);
	T_EQ_INT(engine_ring_collect(r, true, &ready, &rows, &n, &e), KVS_EIO);
	T_EQ_INT(r->failed, 1);
	engine_ring_release(r);
	T_EQ_INT(engine_ring_collect(r, true, &ready, &rows, &n, &e), KVS_OK);
	T_CHECK(ready && fake_rows_ok(f, rows, c, 2), "the batch after a failed one");
	engine_ring_release(r);

	/* a failed start holds nothing */
	f->fail_start = true;
	uint64_t started = r->started;
	T_EQ_INT(engine_ring_start(r, a, 3, &e), KVS_EIO);
	T_CHECK(r->count == 0 && r->started == started, "a failed start is held");

	/* free waits for every copy still running (fake_free checks) */
	T_EQ_INT(engine_ring_start(r, a, 3, &e), KVS_OK);
	T_EQ_INT(engine_ring_start(r, b, 4, &e), KVS_OK);
	engine_ring_free(r);
	T_EQ_INT(f->frees, 2);
	free(f);
}

/* ------------------------------------------------------------ the CPU engine */

static void test_engine_batch(const struct model *m, bool f32)
{
	const struct hparams *hp = &m->hp;
	struct engine *eng = tinymodel_engine(m, 64, 1, f32);
	tinymodel_prefill(eng, 40);
	struct err e;
	uint64_t row = engine_kv_bytes_per_slot(eng);
	const uint32_t slots[6] = { 3, 17, 0, 39, 17, 22 }; /* a repeat saves twice */
	T_EQ_INT(engine_kv_save_batch(eng, slots, 6, &e), KVS_OK);
	T_EQ_INT(engine_kv_held(eng), 1);
	bool ready;
	const void *rows;
	uint32_t n;
	T_EQ_INT(engine_kv_collect(eng, false, &ready, &rows, &n, &e), KVS_OK);
	T_CHECK(ready && n == 6, "the CPU's copy lands before save returns");
	uint8_t *one = xmalloc(row), *batch = xmalloc(6 * row);
	memcpy(batch, rows, 6 * row);
	for (uint32_t i = 0; i < 6; i++) {
		T_EQ_INT(engine_kv_save(eng, slots[i], one, &e), KVS_OK);
		T_CHECK(memcmp(one, batch + i * row, row) == 0, "slot %u: batch bytes differ", slots[i]);
	}
	/* the layout the CUDA kernels index with, against engine_kv_read */
	size_t es = f32 ? 4 : 2, rb = (size_t)hp->n_head_kv * hp->head_dim * es;
	float *want = xmalloc(hp->head_dim * sizeof(float));
	uint32_t bad = 0;
	for (uint32_t i = 0; i < 6; i++)
		for (uint32_t l = 0; l < hp->n_layer; l++)
			for (uint32_t v = 0; v < 2; v++)
				for (uint32_t h = 0; h < hp->n_head_kv; h++) {
					T_EQ_INT(engine_kv_read(eng, l, slots[i], h, v, false, want, &e), KVS_OK);
					const uint8_t *p = batch + gpuplan_raw_off(i, l, v, hp->n_layer, (uint32_t)rb) +
					        (size_t)h * hp->head_dim * es;
					for (uint32_t d = 0; d < hp->head_dim; d++) {
						float got;
						if (f32) {
							memcpy(&got, p + d * 4, 4);
						} else {
							uint16_t u;
							memcpy(&u, p + d * 2, 2);
							got = dtype_f16_to_f32(u);
						}
						bad += got != want[d];
					}
				}
	T_EQ_INT(bad, 0);
	T_EQ_INT(gpuplan_raw_off(2, 1, 1, 30, 100), ((2 * 30 + 1) * 2 + 1) * 100);
	engine_kv_release(eng);
	T_EQ_INT(engine_kv_held(eng), 0);
	T_EQ_INT(engine_kv_collect(eng, false, &ready, &rows, &n, &e), KVS_ESTATE);

	/* load back into other slots at other positions = engine_kv_load */
	const uint32_t to[3] = { 50, 45, 60 };
	const int32_t pos[3] = { 7, 100, 3 };
	T_EQ_INT(engine_kv_load_batch(eng, to, pos, 3, batch, &e), KVS_OK);
	for (uint32_t i = 0; i < 3; i++) {
		T_EQ_INT(engine_kv_save(eng, to[i], one, &e), KVS_OK);
		T_CHECK(memcmp(one, batch + i * row, row) == 0, "loaded slot %u differs", to[i]);
		T_EQ_INT(engine_kv_pos(eng, to[i]), pos[i]);
	}
	/* refusals: one line each, nothing loaded */
	const uint32_t dup[2] = { 51, 51 }, out[2] = { 52, 64 };
	const int32_t bad_pos[2] = { 1, -5 };
	T_EQ_INT(engine_kv_load_batch(eng, dup, pos, 2, batch, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "slot 51 twice") != NULL, "%s", e.msg);
	T_EQ_INT(engine_kv_load_batch(eng, out, pos, 2, batch, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "slot 64") != NULL && strstr(e.msg, "expected 0..63") != NULL, "%s",
	        e.msg);
	T_EQ_INT(engine_kv_load_batch(eng, to, bad_pos, 2, batch, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "position -5") != NULL, "%s", e.msg);
	T_CHECK(engine_kv_pos(eng, 51) < 0 && engine_kv_pos(eng, 52) < 0, "a refused load loaded");
	T_EQ_INT(engine_kv_save_batch(eng, out, 2, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "slot 64 (entry 1)") != NULL, "%s", e.msg);
	T_EQ_INT(engine_kv_held(eng), 0);
	free(want);
	free(one);
	free(batch);
	engine_free(eng);
}

/* ------------------------------------------------------------ kv_cold's hand-off */

struct cold_log {
	struct kv_tok toks[512];
	uint8_t *raw;       /* (n, row) */
	uint32_t calls[64]; /* tokens per call */
	bool null_rows[64];
	uint32_t n, n_calls;
	uint64_t row;
};

static void cold_listen(void *ud, const struct kv_tok *toks, uint32_t n, const void *raw,
                        uint64_t row)
{
	struct cold_log *l = ud;
	T_EQ_INT(row, l->row);
	if (l->n_calls < 64) {
		l->calls[l->n_calls] = n;
		l->null_rows[l->n_calls] = raw == NULL;
	}
	l->n_calls++;
	for (uint32_t i = 0; i < n && l->n < 512; i++) {
		l->toks[l->n] = toks[i];
		if (raw != NULL)
			memcpy(l->raw + l->n * row, (const uint8_t *)raw + i * row, row);
		else
			memset(l->raw + l->n * row, 0, row);
		l->n++;
	}
}

static struct kv_cache *mk_stream(struct engine *eng, uint32_t budget)
{
	struct kv_config c;
	struct kv_cache *kv;
	struct err e;
	kv_config_default(&c);
	T_CHECK(kv_policy_parse("streaming,sinks=4,span=off", &c.policy, &e) == KVS_OK, "%s", e.msg);
	c.budget = budget;
	c.n_batch = 8;
	if (kv_cache_create(&kv, eng, &c, &e) != KVS_OK) {
		fprintf(stderr, "cache: %s\n", e.msg);
		exit(99);
	}
	return kv;
}

/* The slot of the token at orig_pos in the reference cache. */
static uint32_t ref_slot(const struct kv_cache *kr, int32_t orig_pos)
{
	for (uint32_t i = 0; i < kv_cache_n(kr); i++)
		if (kv_cache_toks(kr)[i].orig_pos == orig_pos)
			return kv_cache_toks(kr)[i].slot;
	T_CHECK(false, "token at %d not in the reference", orig_pos);
	return 0;
}

/* Every token's rows as a cache of the same tokens that never evicted
 * holds them (keys pre-RoPE, so where a token sits does not change them):
 * exact for tokens fed before the first eviction. */
static void check_rows(const struct cold_log *l, const struct kv_cache *kr, struct engine *ref,
                       uint32_t exact_below, const char *what)
{
	uint8_t *want = xmalloc(l->row);
	struct err e;
	for (uint32_t i = 0; i < l->n; i++) {
		const struct kv_tok *t = &l->toks[i];
		T_EQ_INT(engine_kv_save(ref, ref_slot(kr, t->orig_pos), want, &e), KVS_OK);
		if ((uint32_t)t->orig_pos < exact_below)
			T_CHECK(memcmp(l->raw + i * l->row, want, l->row) == 0, "%s: token at %d: rows", what,
			        t->orig_pos);
	}
	free(want);
}

static void test_cold_defer(const struct model *m)
{
	uint32_t nv = m->hp.n_vocab;
	struct err e;
	int32_t ids[200];
	uint64_t rng = 0x9E3779B97F4A7C15ull;
	for (uint32_t i = 0; i < 200; i++) {
		rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
		ids[i] = (int32_t)(rng % nv);
	}
	/* the reference: every token in its own slot, never evicted */
	struct engine *ref = tinymodel_engine(m, 256, 1, true);
	struct kv_cache *kr = mk_stream(ref, 256);
	T_CHECK(kv_cache_feed(kr, ids, 200, &e) == KVS_OK, "%s", e.msg);

	/* sync copies (the CPU): the hand-off happens in the eviction */
	struct engine *es = tinymodel_engine(m, 64, 1, true);
	struct kv_cache *ks = mk_stream(es, 32);
	struct cold_log *ls = xcalloc(1, sizeof *ls);
	ls->row = engine_kv_bytes_per_slot(es);
	ls->raw = xmalloc(512 * ls->row);
	kv_cache_set_cold(ks, cold_listen, ls);
	T_CHECK(kv_cache_feed(ks, ids, 40, &e) == KVS_OK, "%s", e.msg);
	uint32_t ev_sync = ks->n_evictions;
	T_CHECK(ev_sync > 0 && ls->n_calls > 0 && ks->cold_q == NULL && engine_kv_held(es) == 0,
	        "sync: %u evictions, %u hand-offs, some queued", ev_sync, ls->n_calls);

	/* deferred copies: each lands after 3 polls that do not wait */
	struct engine *ed = tinymodel_engine(m, 64, 1, true);
	engine_kv_defer(ed, 3, -1);
	struct kv_cache *kd = mk_stream(ed, 32);
	struct cold_log *ld = xcalloc(1, sizeof *ld);
	ld->row = ls->row;
	ld->raw = xmalloc(512 * ld->row);
	kv_cache_set_cold(kd, cold_listen, ld);
	T_CHECK(kv_cache_feed(kd, ids, 40, &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(kd->n_evictions, ev_sync);
	T_CHECK(ld->n_calls < kd->n_evictions && kd->cold_q != NULL,
	        "deferred: %u hand-offs of %u evictions before any copy could land", ld->n_calls,
	        kd->n_evictions);
	T_EQ_INT(engine_kv_held(ed) + ld->n_calls, ls->n_calls);
	kv_cache_cold_sync(kd);
	T_CHECK(kd->cold_q == NULL && engine_kv_held(ed) == 0, "sync left batches queued");
	T_EQ_INT(ld->n_calls, ls->n_calls);
	/* the same tokens in the same order, with the same rows */
	T_EQ_INT(ld->n, ls->n);
	for (uint32_t i = 0; i < ld->n && i < ls->n; i++)
		T_CHECK(ld->toks[i].orig_pos == ls->toks[i].orig_pos &&
		                memcmp(ld->raw + i * ld->row, ls->raw + i * ls->row, ld->row) == 0,
		        "deferred hand-off %u: token at %d, sync %d", i, ld->toks[i].orig_pos,
		        ls->toks[i].orig_pos);
	check_rows(ld, kr, ref, 32, "deferred");
	/* more feeding: each eviction polls, so older batches land on the way */
	uint32_t before = ld->n_calls;
	T_CHECK(kv_cache_feed(kd, ids + 40, 60, &e) == KVS_OK, "%s", e.msg);
	T_CHECK(ld->n_calls > before, "no hand-off while feeding 60 tokens");
	/* a listener change hands over what was evicted under the old one */
	kv_cache_set_cold(kd, NULL, NULL);
	T_CHECK(kd->cold_q == NULL && engine_kv_held(ed) == 0, "listener change left batches");
	T_EQ_INT(ld->n + kv_cache_n(kd), 100);
	for (uint32_t i = 1; i < ld->n; i++)
		T_CHECK(ld->toks[i].orig_pos > ld->toks[i - 1].orig_pos || ld->toks[i].orig_pos < 4,
		        "hand-off order: %d after %d", ld->toks[i].orig_pos, ld->toks[i - 1].orig_pos);

	/* never landing without a wait, and batches that grow: the ring fills
	 * and each eviction waits for the oldest first; the third copy fails */
	struct engine *ef = tinymodel_engine(m, 128, 1, true);
	engine_kv_defer(ef, 1000000, 2);
	struct kv_cache *kf = mk_stream(ef, 64);
	struct cold_log *lf = xcalloc(1, sizeof *lf);
	lf->row = ls->row;
	lf->raw = xmalloc(512 * lf->row);
	kv_cache_set_cold(kf, cold_listen, lf);
	for (uint32_t off = 0, n = 70; off + n <= 200; off += n, n = n == 70 ? 8 : n * 2) {
		T_CHECK(kv_cache_begin_turn(kf, KV_ROLE_USER, n, &e) == KVS_OK, "%s", e.msg);
		T_CHECK(kv_cache_feed(kf, ids + off, n, &e) == KVS_OK, "%s", e.msg);
	}
	T_CHECK(lf->n_calls > 0, "a full ring did not wait for the oldest");
	kv_cache_cold_sync(kf);
	T_CHECK(kf->cold_q == NULL && engine_kv_held(ef) == 0, "sync left batches queued");
	uint32_t n_null = 0, at = 0, null_from = 0, null_n = 0;
	for (uint32_t i = 0; i < lf->n_calls && i < 64; i++) {
		if (lf->null_rows[i]) {
			n_null++;
			null_from = at;
			null_n = lf->calls[i];
		}
		at += lf->calls[i];
	}
	T_CHECK(n_null == 1 && lf->n_calls > 2 && lf->null_rows[2], "the failed copy: %u without rows",
	        n_null);
	/* the others' rows are right; the failed one's tokens came, in order */
	struct cold_log *lx = lf;
	for (uint32_t i = 0; i < lx->n; i++)
		if (i < null_from || i >= null_from + null_n) {
			uint8_t *want = xmalloc(lx->row);
			T_EQ_INT(engine_kv_save(ref, ref_slot(kr, lx->toks[i].orig_pos), want, &e), KVS_OK);
			size_t l0 = 2 * (size_t)m->hp.n_head_kv * m->hp.head_dim * 4; /* layer 0, f32 */
			T_CHECK(memcmp(lx->raw + i * lx->row, want, l0) == 0, "token at %d: layer 0 rows",
			        lx->toks[i].orig_pos);
			free(want);
		}
	kv_cache_free(kf); /* nothing queued: the listener had everything */
	engine_free(ef);
	free(lf->raw);
	free(lf);

	/* freeing a cache with queued evictions hands them over first */
	struct engine *eq = tinymodel_engine(m, 64, 1, true);
	engine_kv_defer(eq, 1000000, -1);
	struct kv_cache *kq = mk_stream(eq, 32);
	struct cold_log *lq = xcalloc(1, sizeof *lq);
	lq->row = ls->row;
	lq->raw = xmalloc(512 * lq->row);
	kv_cache_set_cold(kq, cold_listen, lq);
	T_CHECK(kv_cache_feed(kq, ids, 40, &e) == KVS_OK, "%s", e.msg);
	uint32_t heldq = engine_kv_held(eq);
	T_CHECK(lq->n_calls == 0 && heldq > 0, "landed without a wait");
	kv_cache_free(kq);
	T_EQ_INT(lq->n_calls, heldq);
	T_EQ_INT(engine_kv_held(eq), 0);
	engine_free(eq);
	free(lq->raw);
	free(lq);

	kv_cache_free(kd);
	engine_free(ed);
	kv_cache_free(ks);
	engine_free(es);
	kv_cache_free(kr);
	engine_free(ref);
	free(ld->raw);
	free(ld);
	free(ls->raw);
	free(ls);
}

int main(void)
{
	test_ring();
	struct tinymodel_spec s;
	struct model *m;
	uint8_t *buf;
	tinymodel_defaults(&s, "llama");
	s.n_embd = 64;
	s.n_ff = 128;
	s.scale = 0.5f;
	tinymodel_load(&s, &m, &buf);
	test_engine_batch(m, true);
	test_engine_batch(m, false);
	test_cold_defer(m);
	model_free(m);
	free(buf);
	return t_done("test-gpu-ring");
}
