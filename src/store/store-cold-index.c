/*
 * store-cold-index.c: the cold tier's summary index, and the exact top-k
 * search that a summary recall runs over it (store-cold-rank.c ranks with
 * what it finds; store-cold.c writes it).
 *
 * Two levels (migration 003-cold-index.sql). cold_sums holds every block's
 * key bounds (n_layer, n_head_kv, head_dim) apart from its K/V blob, so
 * that reading them no longer walks a 1.4 MiB blob's overflow pages.
 * cold_groups holds, per run of up to `group` consecutive blocks of one
 * epoch, bounds that hold every member's (channel-wise min of the kmin,
 * max of the kmax). A bounds blob is F16 when every value in it is an F16
 * value exactly, float32 otherwise (cold_floats_bind): an f16 cache's
 * bounds are its own key elements, so they take half the pages, with the
 * same values.
 *
 * The score (store_cold_summary_score) is, per layer, the best over KV
 * heads and probe queries of sum_d max(q_d kmin_d, q_d kmax_d), summed over
 * layers and scaled. It only grows when a box grows, so a group's bounds
 * give a bound on every member's score. A second, cheaper bound replaces
 * the queries of a (layer, KV head) by their channel-wise envelope: for
 * each channel the largest of q_d kmax_d (positive parts) plus the largest
 * of q_d kmin_d (negative parts) over the queries, a bound on every
 * query's sum at the cost of one (head_dim) pass instead of one per query
 * (the probe has up to 64 tokens x 3 query heads per KV head).
 *
 * The search (cold_index_top), exact: the best k blocks by (score
 * descending, pos0 ascending), the order the scan gives.
 *   1. every group's envelope bound; ungrouped blocks (rows older than the
 *      index) are read first, as if their group's bound were infinite;
 *   2. groups in falling bound order; stop at the first whose bound is
 *      below the k-th best score found (every member's score is at most
 *      that bound, so none could enter);
 *   3. in a group, a member whose own envelope bound is below the k-th best
 *      is skipped; the rest are scored exactly, layer by layer, and
 *      dropped as soon as the layers scored plus the envelope of the rest
 *      fall below the k-th best.
 * "Below" keeps a margin of 1e-9 relative: a bound and a score are sums of
 * the same products in the same order, so rounding keeps the order, and
 * the margin only covers a compiler fusing a multiply-add in one of them.
 * Ties at the k-th place are never pruned (a bound equal to the k-th best
 * is visited), so the result equals the scan's first k.
 *
 * Dropped blocks (--cold-max) leave their group's bounds as they were:
 * still bounds, only looser; a group left without members is deleted.
 */
#include "store/store-int.h"

#include "model/model.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------- the probe */

void cold_probe_init(struct cold_probe *p, const struct hparams *hp, const float *q, uint32_t n_q)
{
	uint32_t grp = hp->n_head / hp->n_head_kv, hd = hp->head_dim;
	p->n_layer = hp->n_layer;
	p->n_head_kv = hp->n_head_kv;
	p->head_dim = hd;
	p->per = n_q * grp;
	size_t n = (size_t)hp->n_layer * hp->n_head_kv * p->per * hd,
	       ne = (size_t)hp->n_layer * hp->n_head_kv * hd;
	/* with AVX2 and whole groups of four queries the queries go straight
	 * to the four-at-a-time layout, and qp, qn are not kept */
	size_t n4 = p->per / 4;
	bool v4 = n4 > 0 && p->per % 4 == 0 && __builtin_cpu_supports("avx2");
	p->qp = v4 ? NULL : xmallocarray(n, sizeof *p->qp);
	p->qn = v4 ? NULL : xmallocarray(n, sizeof *p->qn);
	p->qp4 = v4 ? xmallocarray(n, sizeof *p->qp4) : NULL;
	p->qn4 = v4 ? xmallocarray(n, sizeof *p->qn4) : NULL;
	p->pmax = xmallocarray(ne, sizeof *p->pmax);
	p->pmin = xmallocarray(ne, sizeof *p->pmin);
	p->nmax = xmallocarray(ne, sizeof *p->nmax);
	p->nmin = xmallocarray(ne, sizeof *p->nmin);
	for (size_t i = 0; i < ne; i++) {
		p->pmax[i] = p->nmax[i] = -INFINITY;
		p->pmin[i] = p->nmin[i] = INFINITY;
	}
	for (uint32_t l = 0; l < hp->n_layer; l++)
		for (uint32_t t = 0; t < n_q; t++)
			for (uint32_t h = 0; h < hp->n_head; h++) {
				const float *src = q + (((size_t)t * hp->n_layer + l) * hp->n_head + h) * hd;
				uint32_t g = h / grp, j = t * grp + h % grp;
				size_t o = (((size_t)l * hp->n_head_kv + g) * p->per + j) * hd,
				       eo = ((size_t)l * hp->n_head_kv + g) * hd;
				for (uint32_t d = 0; d < hd; d++) {
					double a = src[d] > 0 ? src[d] : 0, b = src[d] > 0 ? 0 : src[d];
					if (v4) {
						size_t o4 = ((((size_t)l * hp->n_head_kv + g) * n4 + j / 4) * hd + d) * 4 +
						        j % 4;
						p->qp4[o4] = a;
						p->qn4[o4] = b;
					} else {
						p->qp[o + d] = a;
						p->qn[o + d] = b;
					}
					p->pmax[eo + d] = fmax(p->pmax[eo + d], a);
					p->pmin[eo + d] = fmin(p->pmin[eo + d], a);
					p->nmax[eo + d] = fmax(p->nmax[eo + d], b);
					p->nmin[eo + d] = fmin(p->nmin[eo + d], b);
				}
			}
	if (p->per == 0)
		for (size_t i = 0; i < ne; i++)
			p->pmax[i] = p->pmin[i] = p->nmax[i] = p->nmin[i] = 0;
}

void cold_probe_free(struct cold_probe *p)
{
	free(p->qp);
	free(p->qn);
	free(p->pmax);
	free(p->pmin);
	free(p->nmax);
	free(p->nmin);
	free(p->qp4);
	free(p->qn4);
}

/* The best of queries [0, 4 n4) of one (layer, KV head) over the box (mn,
 * mx), four at a time in AVX2 lanes: each lane adds a[d] x + b[d] y in
 * channel order with a multiply and an add apart (no fused multiply-add),
 * the operations of the scalar loop below, so the sums are the same bit
 * for bit. Two groups a step keep two chains of additions in flight. */
__attribute__((target("avx2"))) static double cold_probe_best4(const double *a4, const double *b4,
                                                               size_t n4, uint32_t hd,
                                                               const float *mn, const float *mx,
                                                               double best)
{
	size_t b = 0;
	for (; b + 2 <= n4; b += 2) {
		const double *a = a4 + b * hd * 4, *c = b4 + b * hd * 4;
		const double *a2 = a + hd * 4, *c2 = c + hd * 4;
		__m256d u = _mm256_setzero_pd(), v = _mm256_setzero_pd();
		for (uint32_t d = 0; d < hd; d++) {
			__m256d x = _mm256_set1_pd(mx[d]), y = _mm256_set1_pd(mn[d]);
			__m256d t = _mm256_add_pd(_mm256_mul_pd(_mm256_loadu_pd(a + 4 * d), x),
			                          _mm256_mul_pd(_mm256_loadu_pd(c + 4 * d), y));
			__m256d w = _mm256_add_pd(_mm256_mul_pd(_mm256_loadu_pd(a2 + 4 * d), x),
			                          _mm256_mul_pd(_mm256_loadu_pd(c2 + 4 * d), y));
			u = _mm256_add_pd(u, t);
			v = _mm256_add_pd(v, w);
		}
		double s[8];
		_mm256_storeu_pd(s, u);
		_mm256_storeu_pd(s + 4, v);
		for (int k = 0; k < 8; k++)
			best = s[k] > best ? s[k] : best;
	}
	for (; b < n4; b++) {
		const double *a = a4 + b * hd * 4, *c = b4 + b * hd * 4;
		__m256d u = _mm256_setzero_pd();
		for (uint32_t d = 0; d < hd; d++) {
			__m256d x = _mm256_set1_pd(mx[d]), y = _mm256_set1_pd(mn[d]);
			u = _mm256_add_pd(u,
			                  _mm256_add_pd(_mm256_mul_pd(_mm256_loadu_pd(a + 4 * d), x),
			                                _mm256_mul_pd(_mm256_loadu_pd(c + 4 * d), y)));
		}
		double s[4];
		_mm256_storeu_pd(s, u);
		for (int k = 0; k < 4; k++)
			best = s[k] > best ? s[k] : best;
	}
	return best;
}

/* Layer l's term of the score: the best query's bound over the box. */
static double cold_probe_layer(const struct cold_probe *p, uint32_t l, const float *kmin,
                               const float *kmax)
{
	uint32_t hd = p->head_dim;
	double best = -INFINITY;
	for (uint32_t g = 0; g < p->n_head_kv; g++) {
		size_t ko = ((size_t)l * p->n_head_kv + g) * hd;
		const float *mn = kmin + ko, *mx = kmax + ko;
		if (p->qp4 != NULL) { /* the same sums in AVX2, every query */
			size_t n4 = p->per / 4, o4 = ((size_t)l * p->n_head_kv + g) * n4 * hd * 4;
			best = cold_probe_best4(p->qp4 + o4, p->qn4 + o4, n4, hd, mn, mx, best);
			continue;
		}
		const double *q0 = p->qp + ((size_t)l * p->n_head_kv + g) * p->per * hd,
		             *n0 = p->qn + ((size_t)l * p->n_head_kv + g) * p->per * hd;
		uint32_t j = 0;
		/* four queries at a time: four independent sums, each in the order
		 * of the one-query loop below (the same values, bit for bit) */
		for (; j + 4 <= p->per; j += 4) {
			const double *a0 = q0 + (size_t)j * hd, *a1 = a0 + hd, *a2 = a1 + hd, *a3 = a2 + hd;
			const double *b0 = n0 + (size_t)j * hd, *b1 = b0 + hd, *b2 = b1 + hd, *b3 = b2 + hd;
			double u0 = 0, u1 = 0, u2 = 0, u3 = 0;
			for (uint32_t d = 0; d < hd; d++) {
				double x = mx[d], y = mn[d];
				u0 += a0[d] * x + b0[d] * y;
				u1 += a1[d] * x + b1[d] * y;
				u2 += a2[d] * x + b2[d] * y;
				u3 += a3[d] * x + b3[d] * y;
			}
			best = u0 > best ? u0 : best;
			best = u1 > best ? u1 : best;
			best = u2 > best ? u2 : best;
			best = u3 > best ? u3 : best;
		}
		for (; j < p->per; j++) {
			const double *a = q0 + (size_t)j * hd, *b = n0 + (size_t)j * hd;
			double ub = 0;
			for (uint32_t d = 0; d < hd; d++)
				ub += a[d] * mx[d] + b[d] * mn[d];
			best = ub > best ? ub : best;
		}
	}
	return best;
}

/* Layer l's envelope bound over the box (at least cold_probe_layer). */
static double cold_probe_env(const struct cold_probe *p, uint32_t l, const float *kmin,
                             const float *kmax)
{
	uint32_t hd = p->head_dim;
	double best = -INFINITY;
	for (uint32_t g = 0; g < p->n_head_kv; g++) {
		size_t o = ((size_t)l * p->n_head_kv + g) * hd;
		const float *mn = kmin + o, *mx = kmax + o;
		const double *pmax = p->pmax + o, *pmin = p->pmin + o, *nmax = p->nmax + o,
		             *nmin = p->nmin + o;
		double ub = 0;
		for (uint32_t d = 0; d < hd; d++)
			ub += (mx[d] >= 0 ? pmax[d] * mx[d] : pmin[d] * mx[d]) +
			        (mn[d] >= 0 ? nmax[d] * mn[d] : nmin[d] * mn[d]);
		best = ub > best ? ub : best;
	}
	return best;
}

/* The score's scale: a layer sum becomes a mean logit. */
static double cold_probe_scale(const struct cold_probe *p)
{
	return p->n_layer ? 1.0 / p->n_layer / sqrt((double)p->head_dim) : 0;
}

double cold_probe_score(const struct cold_probe *p, const float *kmin, const float *kmax)
{
	double total = 0;
	for (uint32_t l = 0; l < p->n_layer; l++)
		total += cold_probe_layer(p, l, kmin, kmax);
	return p->n_layer ? total / p->n_layer / sqrt((double)p->head_dim) : 0;
}

/* ------------------------------------------------------------ the blobs */

/* Whether this host stores floats little-endian (the blobs' order). */
static bool cold_le(void)
{
	const uint32_t one = 1;
	uint8_t b;
	memcpy(&b, &one, 1);
	return b == 1;
}

bool cold_floats_read(sqlite3_stmt *st, int col, size_t nb, float *f)
{
	size_t bytes = (size_t)sqlite3_column_bytes(st, col);
	const uint8_t *p = sqlite3_column_blob(st, col);
	if (bytes == nb * 2 && nb > 0) { /* F16: every value one exactly (cold_floats_bind) */
		for (size_t i = 0; i < nb; i++)
			f[i] = dtype_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
		return true;
	}
	if (bytes != nb * 4)
		return false;
	if (cold_le()) {
		memcpy(f, p, nb * 4);
		return true;
	}
	for (size_t i = 0; i < nb; i++)
		f[i] = cold_getf(p + 4 * i);
	return true;
}

/* Whether every one of f's nb values is an F16 value exactly (bit for bit
 * back, so a zero keeps its sign and a NaN is never one). */
static bool cold_f16_exact(const float *f, size_t nb)
{
	for (size_t i = 0; i < nb; i++) {
		float back = dtype_f16_to_f32(dtype_f32_to_f16(f[i]));
		if (memcmp(&back, &f[i], sizeof back) != 0)
			return false;
	}
	return true;
}

/* Bind bounds f (nb floats) to column col of st as a little-endian blob:
 * F16 when every value is one exactly, float32 otherwise; the reader tells
 * them apart by their size. An f16 cache's bounds are its own key elements,
 * so they always go as F16: half the pages a recall reads for them, the
 * same values and so the same scores bit for bit (an f32 cache's bounds
 * stay float32: rounding them, even outward, would move its scores). */
static void cold_floats_bind(sqlite3_stmt *st, int col, const float *f, size_t nb)
{
	if (nb > 0 && cold_f16_exact(f, nb)) {
		uint8_t *h = xmalloc(nb * 2);
		for (size_t i = 0; i < nb; i++) {
			uint16_t v = dtype_f32_to_f16(f[i]);
			h[2 * i] = (uint8_t)v, h[2 * i + 1] = (uint8_t)(v >> 8);
		}
		sqlite3_bind_blob64(st, col, h, nb * 2, SQLITE_TRANSIENT);
		free(h);
		return;
	}
	if (cold_le()) {
		sqlite3_bind_blob64(st, col, f, nb * 4, SQLITE_TRANSIENT);
		return;
	}
	uint8_t *b = xmalloc(nb * 4);
	for (size_t i = 0; i < nb; i++) {
		uint32_t u;
		memcpy(&u, &f[i], 4);
		b[4 * i] = (uint8_t)u, b[4 * i + 1] = (uint8_t)(u >> 8), b[4 * i + 2] = (uint8_t)(u >> 16),
		      b[4 * i + 3] = (uint8_t)(u >> 24);
	}
	sqlite3_bind_blob64(st, col, b, nb * 4, SQLITE_TRANSIENT);
	free(b);
}

/* ----------------------------------------------------------- the writer */

void cold_index_w_reset(struct cold_index_w *w)
{
	w->loaded = w->dirty = false;
	w->id = 0;
	w->n = 0;
}

void cold_index_w_free(struct cold_index_w *w)
{
	free(w->kmin);
	free(w->kmax);
	memset(w, 0, sizeof *w);
}

/* Write the open group's bounds and count back (nothing when clean). */
static int cold_index_w_store(struct store *s, struct cold_index_w *w, struct err *e)
{
	if (!w->dirty)
		return KVS_OK;
	sqlite3_stmt *st = NULL;
	int rc = store_prepare(
	        s, "UPDATE cold_groups SET n_blocks = ?1, kmin = ?2, kmax = ?3 WHERE id = ?4", &st, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_bind_int64(st, 1, w->n);
	cold_floats_bind(st, 2, w->kmin, w->nb);
	cold_floats_bind(st, 3, w->kmax, w->nb);
	sqlite3_bind_int64(st, 4, w->id);
	int r = sqlite3_step(st);
	sqlite3_finalize(st);
	if (r != SQLITE_DONE)
		return store_fail(s, r, "writing a cold index group", e);
	w->dirty = false;
	return KVS_OK;
}

/* Make w the group that the next block of (sid, epoch) joins: with
 * reload, the session's last one of the epoch when it has room; else (or
 * when it has none) a new row. */
static int cold_index_w_open(struct store *s, struct cold_index_w *w, int64_t sid, uint32_t epoch,
                             uint32_t group, bool reload, struct err *e)
{
	int rc = cold_index_w_store(s, w, e);
	if (rc != KVS_OK)
		return rc;
	bool fresh = true;
	if (reload) {
		sqlite3_stmt *st = NULL;
		rc = store_prepare(s,
		                   "SELECT id, n_blocks, kmin, kmax FROM cold_groups WHERE session_id = ?1 "
		                   "AND epoch = ?2 ORDER BY id DESC LIMIT 1",
		                   &st, e);
		if (rc != KVS_OK)
			return rc;
		sqlite3_bind_int64(st, 1, sid);
		sqlite3_bind_int64(st, 2, epoch);
		int r = sqlite3_step(st);
		if (r == SQLITE_ROW && sqlite3_column_int64(st, 1) < (int64_t)group &&
		    cold_floats_read(st, 2, w->nb, w->kmin) && cold_floats_read(st, 3, w->nb, w->kmax)) {
			w->id = sqlite3_column_int64(st, 0);
			w->n = (uint32_t)sqlite3_column_int64(st, 1);
			fresh = false;
		} else if (r != SQLITE_ROW && r != SQLITE_DONE) {
			rc = store_fail(s, r, "reading the cold index", e);
		}
		sqlite3_finalize(st);
		if (rc != KVS_OK)
			return rc;
	}
	w->loaded = true;
	w->sid = sid;
	w->epoch = epoch;
	if (!fresh)
		return KVS_OK;
	/* a new group: empty bounds, its row made now for its id */
	for (size_t i = 0; i < w->nb; i++) {
		w->kmin[i] = INFINITY;
		w->kmax[i] = -INFINITY;
	}
	w->n = 0;
	char sql[200];
	snprintf(sql, sizeof sql,
	         "INSERT INTO cold_groups (session_id, epoch, n_blocks, kmin, kmax) VALUES (%lld, %u, "
	         "0, X'', X'')",
	         (long long)sid, epoch);
	rc = store_exec(s, sql, "adding a cold index group", e);
	if (rc == KVS_OK) {
		w->id = sqlite3_last_insert_rowid(s->db);
		w->dirty = true;
	}
	return rc;
}

int cold_index_add(struct store *s, struct cold_index_w *w, int64_t sid, uint32_t epoch,
                   int64_t block_id, int32_t pos0, const float *kmin, const float *kmax, size_t nb,
                   uint32_t group, struct err *e)
{
	if (w->nb != nb) {
		cold_index_w_free(w);
		w->nb = nb;
		w->kmin = xmallocarray(nb, sizeof *w->kmin);
		w->kmax = xmallocarray(nb, sizeof *w->kmax);
	}
	int rc = KVS_OK;
	if (!w->loaded || w->sid != sid || w->epoch != epoch)
		rc = cold_index_w_open(s, w, sid, epoch, group, true, e);
	else if (w->n >= group)
		rc = cold_index_w_open(s, w, sid, epoch, group, false, e);
	if (rc != KVS_OK)
		return rc;
	for (size_t i = 0; i < nb; i++) {
		w->kmin[i] = fminf(w->kmin[i], kmin[i]);
		w->kmax[i] = fmaxf(w->kmax[i], kmax[i]);
	}
	w->n++;
	w->dirty = true;
	sqlite3_stmt *st = NULL;
	rc = store_prepare(
	        s,
	        "INSERT INTO cold_sums (id, session_id, epoch, pos0, grp, kmin, kmax) VALUES "
	        "(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
	        &st, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_bind_int64(st, 1, block_id);
	sqlite3_bind_int64(st, 2, sid);
	sqlite3_bind_int64(st, 3, epoch);
	sqlite3_bind_int64(st, 4, pos0);
	sqlite3_bind_int64(st, 5, w->id);
	cold_floats_bind(st, 6, kmin, nb);
	cold_floats_bind(st, 7, kmax, nb);
	int r = sqlite3_step(st);
	sqlite3_finalize(st);
	return r == SQLITE_DONE ? KVS_OK : store_fail(s, r, "writing a block's summary", e);
}

int cold_index_finish(struct store *s, struct cold_index_w *w, struct err *e)
{
	int rc = cold_index_w_store(s, w, e);
	cold_index_w_reset(w);
	return rc;
}

int cold_index_prune(struct store *s, int64_t sid, struct err *e)
{
	char sql[300];
	snprintf(sql, sizeof sql,
	         "DELETE FROM cold_groups WHERE session_id = %lld AND NOT EXISTS (SELECT 1 FROM "
	         "cold_sums WHERE cold_sums.session_id = %lld AND cold_sums.epoch = cold_groups.epoch "
	         "AND cold_sums.grp = cold_groups.id)",
	         (long long)sid, (long long)sid);
	return store_exec(s, sql, "dropping empty cold index groups", e);
}

int cold_index_build(struct store *s, int64_t sid, size_t nb, uint32_t group, struct err *e)
{
	char sql[200];
	int64_t n = 0;
	snprintf(sql, sizeof sql,
	         "SELECT count(*) FROM cold_sums WHERE session_id = %lld AND grp IS NULL",
	         (long long)sid);
	int rc = store_int(s, sql, &n, e);
	if (rc != KVS_OK || n == 0)
		return rc;
	rc = store_exec(s, "BEGIN IMMEDIATE", "indexing the cold tier", e);
	if (rc != KVS_OK)
		return rc;
	/* the rows first (updating grp under a scan of it would move them) */
	struct {
		int64_t id;
		uint32_t epoch;
	} *rows = NULL;
	size_t n_rows = 0, cap = 0;
	sqlite3_stmt *ls = NULL, *rd = NULL, *up = NULL;
	rc = store_prepare(s,
	                   "SELECT id, epoch FROM cold_sums WHERE session_id = ?1 AND grp IS NULL "
	                   "ORDER BY epoch, id",
	                   &ls, e);
	if (rc == KVS_OK) {
		sqlite3_bind_int64(ls, 1, sid);
		int r;
		while ((r = sqlite3_step(ls)) == SQLITE_ROW) {
			if (n_rows == cap) {
				cap = cap ? 2 * cap : 256;
				rows = xreallocarray(rows, cap, sizeof *rows);
			}
			rows[n_rows].id = sqlite3_column_int64(ls, 0);
			rows[n_rows++].epoch = (uint32_t)sqlite3_column_int64(ls, 1);
		}
		if (r != SQLITE_DONE)
			rc = store_fail(s, r, "reading the cold tier's summaries", e);
	}
	sqlite3_finalize(ls);
	if (rc == KVS_OK)
		rc = store_prepare(s, "SELECT kmin, kmax FROM cold_sums WHERE id = ?1", &rd, e);
	if (rc == KVS_OK)
		rc = store_prepare(s, "UPDATE cold_sums SET grp = ?1 WHERE id = ?2", &up, e);
	struct cold_index_w w = { 0 };
	w.nb = nb;
	w.kmin = xmallocarray(nb, sizeof *w.kmin);
	w.kmax = xmallocarray(nb, sizeof *w.kmax);
	float *mn = xmallocarray(nb, sizeof *mn), *mx = xmallocarray(nb, sizeof *mx);
	for (size_t i = 0; i < n_rows && rc == KVS_OK; i++) {
		sqlite3_bind_int64(rd, 1, rows[i].id);
		int r = sqlite3_step(rd);
		bool ok = r == SQLITE_ROW && cold_floats_read(rd, 0, nb, mn) &&
		        cold_floats_read(rd, 1, nb, mx);
		sqlite3_reset(rd);
		if (r != SQLITE_ROW && r != SQLITE_DONE) {
			rc = store_fail(s, r, "reading the cold tier's summaries", e);
			break;
		}
		if (!ok)
			continue; /* a row of another shape stays ungrouped: scored alone */
		if (!w.loaded || w.epoch != rows[i].epoch || w.n >= group) {
			/* a new group: old rows never join a newer writer's */
			rc = cold_index_w_store(s, &w, e);
			w.loaded = true;
			w.sid = sid;
			w.epoch = rows[i].epoch;
			w.n = 0;
			for (size_t k = 0; k < nb; k++) {
				w.kmin[k] = INFINITY;
				w.kmax[k] = -INFINITY;
			}
			snprintf(sql, sizeof sql,
			         "INSERT INTO cold_groups (session_id, epoch, n_blocks, kmin, kmax) VALUES "
			         "(%lld, %u, 0, X'', X'')",
			         (long long)sid, w.epoch);
			if (rc == KVS_OK)
				rc = store_exec(s, sql, "adding a cold index group", e);
			w.id = sqlite3_last_insert_rowid(s->db);
			if (rc != KVS_OK)
				break;
		}
		for (size_t k = 0; k < nb; k++) {
			w.kmin[k] = fminf(w.kmin[k], mn[k]);
			w.kmax[k] = fmaxf(w.kmax[k], mx[k]);
		}
		w.n++;
		w.dirty = true;
		sqlite3_bind_int64(up, 1, w.id);
		sqlite3_bind_int64(up, 2, rows[i].id);
		int r2 = sqlite3_step(up);
		sqlite3_reset(up);
		if (r2 != SQLITE_DONE)
			rc = store_fail(s, r2, "grouping a cold block", e);
	}
	if (rc == KVS_OK)
		rc = cold_index_w_store(s, &w, e);
	sqlite3_finalize(rd);
	sqlite3_finalize(up);
	if (rc == KVS_OK)
		rc = store_exec(s, "COMMIT", "indexing the cold tier", e);
	if (rc != KVS_OK)
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	cold_index_w_free(&w);
	free(rows);
	free(mn);
	free(mx);
	return rc;
}

/* ------------------------------------------------------------ the search */

/* (score descending, pos0 ascending): a before b. */
static bool cold_better(const struct cold_scored *a, const struct cold_scored *b)
{
	return a->score > b->score || (a->score == b->score && a->pos0 < b->pos0);
}

static int cold_scored_cmp(const void *a, const void *b)
{
	const struct cold_scored *x = a, *y = b;
	return cold_better(x, y) ? -1 : cold_better(y, x) ? 1 : 0;
}

/* The best k so far: a heap whose root is the worst of them. */
struct cold_heap {
	struct cold_scored *h; /* (k) */
	size_t n, k;
};

static void cold_heap_push(struct cold_heap *hp, const struct cold_scored *x)
{
	struct cold_scored *h = hp->h;
	size_t i;
	if (hp->n < hp->k) {
		i = hp->n++;
		while (i > 0 && cold_better(&h[(i - 1) / 2], x)) {
			h[i] = h[(i - 1) / 2];
			i = (i - 1) / 2;
		}
		h[i] = *x;
		return;
	}
	if (hp->k == 0 || !cold_better(x, &h[0]))
		return;
	i = 0; /* x replaces the root and sinks below every worse child */
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= hp->n)
			break;
		if (c + 1 < hp->n && cold_better(&h[c], &h[c + 1]))
			c++;
		if (!cold_better(x, &h[c]))
			break;
		h[i] = h[c];
		i = c;
	}
	h[i] = *x;
}

/* A search's result: on success the heap's blocks, best first, handed to
 * the caller (out, n); on failure the heap freed and rc passed on. */
static int cold_heap_take(struct cold_heap *hp, int rc, struct cold_scored **out, size_t *n)
{
	if (rc != KVS_OK) {
		free(hp->h);
		return rc;
	}
	qsort(hp->h, hp->n, sizeof *hp->h, cold_scored_cmp);
	*out = hp->h;
	*n = hp->n;
	return KVS_OK;
}

/* Whether a bound can be skipped: below the k-th best (with the margin). */
static bool cold_heap_beats(const struct cold_heap *hp, double bound)
{
	if (hp->n < hp->k)
		return false;
	double kth = hp->h[0].score;
	return bound + 1e-9 * (fabs(kth) + fabs(bound)) + 1e-300 < kth;
}

/* A group's (or block's) bound: per layer (envl) and in all, scaled. */
static double cold_env_bound(const struct cold_probe *p, const float *kmin, const float *kmax,
                             double *envl)
{
	double total = 0;
	for (uint32_t l = 0; l < p->n_layer; l++) {
		envl[l] = cold_probe_env(p, l, kmin, kmax);
		total += envl[l];
	}
	return total * cold_probe_scale(p);
}

/* Score a block into the heap unless its bounds rule it out. */
static void cold_visit(const struct cold_probe *p, struct cold_heap *hp, int64_t id, int32_t pos0,
                       const float *kmin, const float *kmax, double *envl,
                       struct store_cold_rank_stats *stats)
{
	double scale = cold_probe_scale(p);
	if (stats)
		stats->blocks_read++;
	if (cold_heap_beats(hp, cold_env_bound(p, kmin, kmax, envl)))
		return;
	/* the rest: what the layers not yet scored can add at most */
	double rest = 0, total = 0, done = 0;
	for (uint32_t l = 0; l < p->n_layer; l++)
		rest += envl[l];
	for (uint32_t l = 0; l < p->n_layer; l++) {
		double s = cold_probe_layer(p, l, kmin, kmax);
		total += s;
		done += s;
		rest -= envl[l];
		if (l + 1 < p->n_layer && cold_heap_beats(hp, (done + rest) * scale)) {
			if (stats)
				stats->blocks_cut++;
			return;
		}
	}
	if (stats)
		stats->blocks_scored++;
	struct cold_scored x = { id, pos0,
		                     p->n_layer ? total / p->n_layer / sqrt((double)p->head_dim) : 0 };
	cold_heap_push(hp, &x);
}

/* Score every member that st (bound by the caller) yields. */
static int cold_visit_rows(const struct cold_scope *c, const struct cold_probe *p, sqlite3_stmt *st,
                           struct cold_heap *hp, float *kmin, float *kmax, double *envl,
                           struct err *e)
{
	size_t nb = (size_t)p->n_layer * p->n_head_kv * p->head_dim;
	int r;
	while ((r = sqlite3_step(st)) == SQLITE_ROW)
		if (cold_floats_read(st, 2, nb, kmin) && cold_floats_read(st, 3, nb, kmax))
			cold_visit(p, hp, sqlite3_column_int64(st, 0), (int32_t)sqlite3_column_int64(st, 1),
			           kmin, kmax, envl, c->stats);
	sqlite3_reset(st);
	return r == SQLITE_DONE ? KVS_OK : store_fail(c->s, r, "scoring the cold tier", e);
}

/* A group and its bound, for the visiting order. */
struct cold_gb {
	int64_t id;
	double bound;
};

static int cold_gb_cmp(const void *a, const void *b)
{
	const struct cold_gb *x = a, *y = b;
	return (x->bound < y->bound) - (x->bound > y->bound);
}

int cold_index_top(const struct cold_scope *c, const float *q, uint32_t n_q, size_t k,
                   struct cold_scored **out, size_t *n, struct err *e)
{
	const struct hparams *hp = c->hp;
	size_t nb = (size_t)hp->n_layer * hp->n_head_kv * hp->head_dim;
	*out = NULL;
	*n = 0;
	if (k == 0)
		return KVS_OK;
	struct cold_probe p;
	cold_probe_init(&p, hp, q, n_q);
	float *kmin = xmallocarray(nb, sizeof *kmin), *kmax = xmallocarray(nb, sizeof *kmax);
	double *envl = xmallocarray(KVS_MAX(hp->n_layer, 1u), sizeof *envl);
	struct cold_heap heap = { xmallocarray(k, sizeof *heap.h), 0, k };
	struct cold_gb *gs = NULL;
	size_t n_gs = 0, cap = 0;
	sqlite3_stmt *grp = NULL, *mem = NULL, *loose = NULL;
	int rc = store_prepare(c->s,
	                       "SELECT id, 0, kmin, kmax FROM cold_groups WHERE session_id = ?1 AND "
	                       "epoch = ?2",
	                       &grp, e);
	if (rc == KVS_OK)
		rc = store_prepare(c->s,
		                   "SELECT id, pos0, kmin, kmax FROM cold_sums WHERE session_id = ?1 AND "
		                   "epoch = ?2 AND grp = ?3",
		                   &mem, e);
	if (rc == KVS_OK)
		rc = store_prepare(c->s,
		                   "SELECT id, pos0, kmin, kmax FROM cold_sums WHERE session_id = ?1 AND "
		                   "epoch = ?2 AND grp IS NULL",
		                   &loose, e);
	/* 1. the ungrouped rows, then every group's bound */
	if (rc == KVS_OK) {
		sqlite3_bind_int64(loose, 1, c->id);
		sqlite3_bind_int64(loose, 2, c->epoch);
		rc = cold_visit_rows(c, &p, loose, &heap, kmin, kmax, envl, e);
	}
	if (rc == KVS_OK) {
		sqlite3_bind_int64(grp, 1, c->id);
		sqlite3_bind_int64(grp, 2, c->epoch);
		int r;
		while ((r = sqlite3_step(grp)) == SQLITE_ROW) {
			if (n_gs == cap) {
				cap = cap ? 2 * cap : 64;
				gs = xreallocarray(gs, cap, sizeof *gs);
			}
			gs[n_gs].id = sqlite3_column_int64(grp, 0);
			/* bounds of another shape bound nothing: the members are read */
			gs[n_gs++].bound =
			        cold_floats_read(grp, 2, nb, kmin) && cold_floats_read(grp, 3, nb, kmax)
			        ? cold_env_bound(&p, kmin, kmax, envl)
			        : INFINITY;
		}
		if (r != SQLITE_DONE)
			rc = store_fail(c->s, r, "reading the cold index", e);
	}
	/* 2. groups, best bound first, until one cannot reach the k-th best */
	if (rc == KVS_OK) {
		if (n_gs > 0)
			qsort(gs, n_gs, sizeof *gs, cold_gb_cmp);
		if (c->stats)
			c->stats->groups += n_gs;
		for (size_t i = 0; i < n_gs && rc == KVS_OK; i++) {
			if (cold_heap_beats(&heap, gs[i].bound))
				break;
			if (c->stats)
				c->stats->groups_read++;
			sqlite3_bind_int64(mem, 1, c->id);
			sqlite3_bind_int64(mem, 2, c->epoch);
			sqlite3_bind_int64(mem, 3, gs[i].id);
			rc = cold_visit_rows(c, &p, mem, &heap, kmin, kmax, envl, e);
		}
	}
	sqlite3_finalize(grp);
	sqlite3_finalize(mem);
	sqlite3_finalize(loose);
	free(gs);
	free(kmin);
	free(kmax);
	free(envl);
	cold_probe_free(&p);
	return cold_heap_take(&heap, rc, out, n);
}

int cold_index_top_of(const struct cold_scope *c, const float *q, uint32_t n_q, const int64_t *ids,
                      size_t n_ids, size_t k, struct cold_scored **out, size_t *n, struct err *e)
{
	enum { CHUNK = 32 }; /* blocks' bounds held at once: 32 x 46 KiB for the default model */
	const struct hparams *hp = c->hp;
	size_t nb = (size_t)hp->n_layer * hp->n_head_kv * hp->head_dim;
	*out = NULL;
	*n = 0;
	if (k == 0 || n_ids == 0)
		return KVS_OK;
	sqlite3_stmt *st = NULL;
	int rc = store_prepare(c->s,
	                       "SELECT id, pos0, kmin, kmax FROM cold_sums WHERE id = ?1 AND "
	                       "session_id = ?2 AND epoch = ?3",
	                       &st, e);
	if (rc != KVS_OK)
		return rc;
	struct cold_probe p;
	cold_probe_init(&p, hp, q, n_q);
	size_t nbx = KVS_MAX(nb, (size_t)1);
	float *kmin = xmallocarray(CHUNK * nbx, sizeof *kmin), /* (CHUNK, nb) */
	        *kmax = xmallocarray(CHUNK * nbx, sizeof *kmax);
	struct cold_scored got[CHUNK];
	double tot[CHUNK];
	struct cold_heap heap = { xmallocarray(k, sizeof *heap.h), 0, k };
	/* a chunk of blocks' bounds read, then scored layer by layer over the
	 * chunk, so that a layer's probe queries (24 KiB a KV head) stay in
	 * cache while every block uses them; the per-layer terms and their sum
	 * are those of cold_probe_score, in the same order */
	for (size_t i0 = 0; i0 < n_ids && rc == KVS_OK; i0 += CHUNK) {
		size_t nc = 0;
		for (size_t i = i0; i < n_ids && i < i0 + CHUNK && rc == KVS_OK; i++) {
			sqlite3_bind_int64(st, 1, ids[i]);
			sqlite3_bind_int64(st, 2, c->id);
			sqlite3_bind_int64(st, 3, c->epoch);
			int r = sqlite3_step(st);
			if (r == SQLITE_ROW && cold_floats_read(st, 2, nb, kmin + nc * nbx) &&
			    cold_floats_read(st, 3, nb, kmax + nc * nbx)) {
				got[nc].id = sqlite3_column_int64(st, 0);
				got[nc].pos0 = (int32_t)sqlite3_column_int64(st, 1);
				tot[nc++] = 0;
			} else if (r != SQLITE_ROW && r != SQLITE_DONE) {
				rc = store_fail(c->s, r, "scoring the cold tier", e);
			}
			sqlite3_reset(st);
		}
		for (uint32_t l = 0; l < hp->n_layer && rc == KVS_OK; l++)
			for (size_t b = 0; b < nc; b++)
				tot[b] += cold_probe_layer(&p, l, kmin + b * nbx, kmax + b * nbx);
		for (size_t b = 0; b < nc && rc == KVS_OK; b++) {
			got[b].score = hp->n_layer ? tot[b] / hp->n_layer / sqrt((double)hp->head_dim) : 0;
			cold_heap_push(&heap, &got[b]);
			if (c->stats)
				c->stats->blocks_read++, c->stats->blocks_scored++;
		}
	}
	sqlite3_finalize(st);
	free(kmin);
	free(kmax);
	cold_probe_free(&p);
	return cold_heap_take(&heap, rc, out, n);
}

int cold_index_scan(const struct cold_scope *c, const float *q, uint32_t n_q,
                    struct cold_scored **out, size_t *n, struct err *e)
{
	const struct hparams *hp = c->hp;
	size_t nb = (size_t)hp->n_layer * hp->n_head_kv * hp->head_dim, cap = 0;
	*out = NULL;
	*n = 0;
	sqlite3_stmt *st = NULL;
	int rc = store_prepare(c->s,
	                       "SELECT id, pos0, kmin, kmax FROM cold_sums WHERE session_id = ?1 AND "
	                       "epoch = ?2",
	                       &st, e);
	if (rc != KVS_OK)
		return rc;
	struct cold_probe p;
	cold_probe_init(&p, hp, q, n_q);
	float *kmin = xmallocarray(nb, sizeof *kmin), *kmax = xmallocarray(nb, sizeof *kmax);
	sqlite3_bind_int64(st, 1, c->id);
	sqlite3_bind_int64(st, 2, c->epoch);
	int r;
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		if (!cold_floats_read(st, 2, nb, kmin) || !cold_floats_read(st, 3, nb, kmax))
			continue;
		if (*n == cap) {
			cap = cap ? 2 * cap : 64;
			*out = xreallocarray(*out, cap, sizeof **out);
		}
		struct cold_scored *x = &(*out)[(*n)++];
		x->id = sqlite3_column_int64(st, 0);
		x->pos0 = (int32_t)sqlite3_column_int64(st, 1);
		x->score = cold_probe_score(&p, kmin, kmax);
		if (c->stats)
			c->stats->blocks_read++, c->stats->blocks_scored++;
	}
	if (r != SQLITE_DONE)
		rc = store_fail(c->s, r, "scoring the cold tier", e);
	sqlite3_finalize(st);
	free(kmin);
	free(kmax);
	cold_probe_free(&p);
	if (*n > 0)
		qsort(*out, *n, sizeof **out, cold_scored_cmp);
	return rc;
}
