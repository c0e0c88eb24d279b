/*
 * store-cold-sketch.c: the first stage of a summary recall. Every cold
 * block has a sketch of its key bounds, 4 bits a channel on every other
 * layer (migration 005, table cold_sketch); a recall scores all sketches in
 * one pass and hands the best candidates to the exact scorer
 * (cold_index_top_of, store-cold-index.c), which ranks them by the exact
 * summary score. Recalled blocks therefore always carry the exact score.
 *
 * Why: the exact score (store_cold_summary_score) reads a block's bounds on
 * every layer, KV head and channel (46 KiB a block for the default model)
 * and costs n_layer x n_head_kv x queries x head_dim products. On the
 * model's own keys no bound prunes (every block's box is about as wide;
 * doc/BENCHMARKS.md), so the exact top k at 1M cold tokens, 15,625 blocks,
 * takes seconds. The sketch:
 *
 *   box     [kmin, kmax] is centre c +- radius r (c = (kmin + kmax) / 2,
 *           r = (kmax - kmin) / 2 >= 0);
 *   sketch  per probe layer and KV head: the scale of c (max |c| / 7) and
 *           of r (max r / 15) as float32 LE, then one byte a channel, c in
 *           its high 4 bits (-7..7) and r in its low 4 (0..15): 8 +
 *           head_dim bytes. Probe layers: every other layer (the middle of
 *           each of (n_layer + 1) / 2 equal slices), at most
 *           COLD_SKETCH_LAYERS. The default model (30 layers, 3 KV heads of
 *           64): 15 x 3 x 72 = 3,240 bytes a block of 64 tokens, 49.4 KiB
 *           per 1k tokens (the bounds are 720 KiB per 1k, the K/V rows 22
 *           MiB);
 *   stage 1 per block, over the probe layers, the sum of the best KV head's
 *           term: with pmax and nmin the largest and the most negative of
 *           the head's queries per channel, pmax (c + r) + nmin (c - r),
 *           which bounds every query over a box that holds 0 (most real
 *           boxes do), as two int16 dot products with the 4-bit codes
 *           (cold_sk_probe_init says why). With one query it is that
 *           query's exact term up to rounding;
 *   stage 2 the best `cands` blocks of stage 1 (score descending, first
 *           position ascending) go to the exact search over their cold_sums
 *           bounds.
 *
 * Stage 1 is an estimate: a block outside the candidates is never scored
 * exactly, so the result is the exact top k only where the exact top k are
 * among the candidates. How often they are on the model's own keys is
 * measured: tests/unit/test-store-cold-sketch.c holds a floor on the top-k
 * overlap, bench-cold prints it at each size. (Measured there before this
 * layout: 4 layers at 8 bits held 0.62 of the exact top 16 in 64
 * candidates of 400, 15 layers at 4 bits 0.99: the ranking rests on many
 * layers a little more than on a few layers precisely.)
 *
 * A sketch's size follows from the shape that cold_meta pins, so a blob of
 * another size is a missing sketch. An epoch in which some block has no
 * sketch (rows older than migration 005 that no writer has attached to
 * since; the writer builds them from cold_sums when it attaches) is
 * searched exactly.
 *
 * The memory stage (struct cold_mem, one per store_cold): at 1M cold tokens
 * reading every sketch is 50 MB through SQLite a recall, so the cold tier
 * keeps each block's sketch on COLD_MEM_LAYERS of its probe layers (the
 * middles of equal slices: 5, 15 and 25 of the default model's, 648
 * bytes) in memory, scores those first, and stage 1 reads only the best 8
 * x its candidates by id. It holds one epoch, in id order, and is brought
 * in step with the database at each search (cold_mem_sync: the cap drops
 * the lowest ids, flushes add higher ones, anything else rereads); with
 * no more blocks than it would pass on it steps aside, so small tiers rank
 * exactly as before.
 *
 * The scoring loop widens 16 codes at a time to int16 and sums their
 * products with the weights in int32 (AVX2 where the CPU has it, plain C
 * otherwise, the same integers either way). An earlier form dequantised
 * the codes to float and took the envelope's per-channel maxima: the same
 * top-k share on the test's keys at several times the cost.
 */
#include "store/store-int.h"

#include "model/model.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ the layout */

uint32_t cold_sketch_layers(uint32_t n_layer, uint32_t *layers)
{
	uint32_t n = KVS_MIN((n_layer + 1) / 2, (uint32_t)COLD_SKETCH_LAYERS);
	for (uint32_t i = 0; i < n; i++)
		layers[i] = (uint32_t)(((uint64_t)2 * i + 1) * n_layer / (2 * n));
	return n;
}

size_t cold_sketch_bytes(const struct hparams *hp)
{
	uint32_t layers[COLD_SKETCH_LAYERS];
	return (size_t)cold_sketch_layers(hp->n_layer, layers) * hp->n_head_kv *
	        (8 + (size_t)hp->head_dim);
}

/* Store f as 4 little-endian bytes at p. */
static void cold_sk_putf(uint8_t *p, float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	p[0] = (uint8_t)u, p[1] = (uint8_t)(u >> 8), p[2] = (uint8_t)(u >> 16),
	p[3] = (uint8_t)(u >> 24);
}

/* A finite value or 0 (a bound of inf or nan says nothing a sketch keeps). */
static float cold_sk_finite(float x)
{
	return isfinite(x) ? x : 0.0f;
}

void cold_sketch_make(const struct hparams *hp, const float *kmin, const float *kmax, uint8_t *sk)
{
	uint32_t layers[COLD_SKETCH_LAYERS], hd = hp->head_dim;
	uint32_t n_pl = cold_sketch_layers(hp->n_layer, layers);
	uint8_t *o = sk;
	for (uint32_t i = 0; i < n_pl; i++)
		for (uint32_t g = 0; g < hp->n_head_kv; g++) {
			size_t b = ((size_t)layers[i] * hp->n_head_kv + g) * hd;
			float cmax = 0, rmax = 0;
			for (uint32_t d = 0; d < hd; d++) {
				float lo = cold_sk_finite(kmin[b + d]), hi = cold_sk_finite(kmax[b + d]);
				cmax = fmaxf(cmax, fabsf(0.5f * (lo + hi)));
				rmax = fmaxf(rmax, 0.5f * (hi - lo));
			}
			float sc = cmax / 7.0f, sr = rmax / 15.0f;
			cold_sk_putf(o, sc);
			cold_sk_putf(o + 4, sr);
			for (uint32_t d = 0; d < hd; d++) {
				float lo = cold_sk_finite(kmin[b + d]), hi = cold_sk_finite(kmax[b + d]);
				long c = sc > 0 ? lrintf(0.5f * (lo + hi) / sc) : 0,
				     r = sr > 0 ? lrintf(0.5f * (hi - lo) / sr) : 0;
				c = KVS_MAX(KVS_MIN(c, 7L), -7L);
				r = KVS_MAX(KVS_MIN(r, 15L), 0L);
				o[8 + d] = (uint8_t)(((unsigned long)c & 15u) << 4 | (unsigned long)r);
			}
			o += 8 + (size_t)hd;
		}
}

/* ------------------------------------------------------------ the probe */

/* The probe as stage 1 reads it: per (probe layer, KV head) two weight
 * vectors, for the centres and for the radii, in int16 with one scale
 * each (see cold_sk_probe_init). */
struct cold_sk_probe {
	uint32_t n_pl, n_head_kv, head_dim;
	int16_t *w; /* (n_pl, n_head_kv, 2, head_dim): centre weights, then radius weights */
	float *wsc; /* (n_pl, n_head_kv, 2): their scales */
	bool avx2;
};

/* The weights of the probe q (n_q, n_layer, n_head, head_dim) on the probe
 * layers. Per channel the envelope of the head's queries, the largest
 * positive part pmax and the most negative part nmin (cold_probe's), bounds
 * every query's product with a box that holds 0, [c - r, c + r] with
 * c - r <= 0 <= c + r: pmax (c + r) + nmin (c - r) = (pmax + nmin) c +
 * (pmax - nmin) r. Real keys' boxes are wide, so most hold 0, and the term
 * becomes two dot products with the sketch's codes: the centre weights
 * pmax + nmin, the radius weights pmax - nmin (>= 0). Where a box misses 0
 * this is an estimate (below the envelope on the side that misses it),
 * which is all stage 1 needs. */
static void cold_sk_probe_init(struct cold_sk_probe *p, const struct hparams *hp, const float *q,
                               uint32_t n_q, const uint32_t *sel, uint32_t n_sel)
{
	uint32_t layers[COLD_SKETCH_LAYERS], hd = hp->head_dim, grp = hp->n_head / hp->n_head_kv;
	p->n_pl = cold_sketch_layers(hp->n_layer, layers);
	if (sel != NULL) { /* a few of the probe layers, in the order given */
		uint32_t all[COLD_SKETCH_LAYERS];
		memcpy(all, layers, sizeof all);
		for (uint32_t i = 0; i < n_sel; i++)
			layers[i] = all[sel[i]];
		p->n_pl = n_sel;
	}
	p->n_head_kv = hp->n_head_kv;
	p->head_dim = hd;
	p->avx2 = __builtin_cpu_supports("avx2");
	size_t n_heads = (size_t)p->n_pl * hp->n_head_kv;
	p->w = xcalloc(n_heads * 2 * hd, sizeof *p->w);
	p->wsc = xcalloc(n_heads * 2, sizeof *p->wsc);
	float *fw = xmallocarray(2 * (size_t)hd, sizeof *fw); /* (2, head_dim) */
	for (uint32_t i = 0; i < p->n_pl; i++)
		for (uint32_t g = 0; g < hp->n_head_kv; g++) {
			float amax[2] = { 0, 0 };
			for (uint32_t d = 0; d < hd; d++) {
				float pmx = 0, nmn = 0;
				for (uint32_t j = 0; j < n_q * grp; j++) {
					uint32_t t = j / grp, h = g * grp + j % grp;
					float v = q[(((size_t)t * hp->n_layer + layers[i]) * hp->n_head + h) * hd + d];
					pmx = fmaxf(pmx, v);
					nmn = fminf(nmn, v);
				}
				fw[d] = pmx + nmn;
				fw[hd + d] = pmx - nmn;
				amax[0] = fmaxf(amax[0], fabsf(fw[d]));
				amax[1] = fmaxf(amax[1], fw[hd + d]);
			}
			size_t o = (size_t)i * hp->n_head_kv + g;
			for (int k = 0; k < 2; k++) {
				float sc = amax[k] / 32767.0f;
				p->wsc[2 * o + k] = sc;
				for (uint32_t d = 0; d < hd; d++) {
					float v = isfinite(fw[k * hd + d]) && sc > 0 ? fw[k * hd + d] / sc : 0;
					p->w[(2 * o + k) * hd + d] =
					        (int16_t)lrintf(fmaxf(fminf(v, 32767.0f), -32767.0f));
				}
			}
		}
	free(fw);
}

static void cold_sk_probe_free(struct cold_sk_probe *p)
{
	free(p->w);
	free(p->wsc);
}

/* One head's two dot products: the centre codes (high 4 bits, signed)
 * with wc and the radius codes (low 4 bits) with wr, over hd channels. */
static void cold_sk_head_plain(const uint8_t *code, const int16_t *wc, const int16_t *wr,
                               uint32_t hd, int32_t *ic, int32_t *ir)
{
	int32_t a = 0, b = 0;
	for (uint32_t d = 0; d < hd; d++) {
		a += (int32_t)((int8_t)code[d] >> 4) * wc[d];
		b += (int32_t)(code[d] & 15u) * wr[d];
	}
	*ic = a;
	*ir = b;
}

/* cold_sk_head_plain with AVX2 (hd a multiple of 16): 16 channels a step,
 * the codes widened to int16, pairs summed into int32 (7 x 32767 x 64 and
 * 15 x 32767 x 64 stay far below 2^31). */
__attribute__((target("avx2"))) static void cold_sk_head_avx2(const uint8_t *code,
                                                              const int16_t *wc, const int16_t *wr,
                                                              uint32_t hd, int32_t *ic, int32_t *ir)
{
	__m256i sa = _mm256_setzero_si256(), sb = sa;
	const __m256i lo4 = _mm256_set1_epi16(15);
	for (uint32_t d = 0; d < hd; d += 16) {
		__m256i x = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(code + d)));
		__m256i c = _mm256_srai_epi16(x, 4), r = _mm256_and_si256(x, lo4);
		sa = _mm256_add_epi32(sa,
		                      _mm256_madd_epi16(c, _mm256_loadu_si256((const __m256i *)(wc + d))));
		sb = _mm256_add_epi32(sb,
		                      _mm256_madd_epi16(r, _mm256_loadu_si256((const __m256i *)(wr + d))));
	}
	int32_t va[8], vb[8];
	_mm256_storeu_si256((__m256i *)va, sa);
	_mm256_storeu_si256((__m256i *)vb, sb);
	*ic = va[0] + va[1] + va[2] + va[3] + va[4] + va[5] + va[6] + va[7];
	*ir = vb[0] + vb[1] + vb[2] + vb[3] + vb[4] + vb[5] + vb[6] + vb[7];
}

/* Stage 1's score of a sketch (cold_sketch_bytes of them). */
static float cold_sk_score(const struct cold_sk_probe *p, const uint8_t *sk)
{
	uint32_t hd = p->head_dim;
	bool avx2 = p->avx2 && hd % 16 == 0;
	float total = 0;
	const int16_t *w = p->w;
	const float *wsc = p->wsc;
	for (uint32_t i = 0; i < p->n_pl; i++) {
		float best = -INFINITY;
		for (uint32_t g = 0; g < p->n_head_kv; g++, sk += 8 + hd, w += 2 * (size_t)hd, wsc += 2) {
			int32_t ic, ir;
			if (avx2)
				cold_sk_head_avx2(sk + 8, w, w + hd, hd, &ic, &ir);
			else
				cold_sk_head_plain(sk + 8, w, w + hd, hd, &ic, &ir);
			float s = cold_getf(sk) * wsc[0] * (float)ic + cold_getf(sk + 4) * wsc[1] * (float)ir;
			best = fmaxf(best, s);
		}
		total += best;
	}
	return total;
}

double cold_sketch_estimate(const struct hparams *hp, const float *q, uint32_t n_q,
                            const uint8_t *sk)
{
	if (n_q == 0)
		return 0;
	struct cold_sk_probe p;
	cold_sk_probe_init(&p, hp, q, n_q, NULL, 0);
	double s = cold_sk_score(&p, sk);
	cold_sk_probe_free(&p);
	return s;
}

/* -------------------------------------------------------- the writer */

int cold_sketch_add(struct store *s, const struct hparams *hp, int64_t sid, uint32_t epoch,
                    int64_t block_id, int32_t pos0, const float *kmin, const float *kmax,
                    struct err *e)
{
	size_t nb = cold_sketch_bytes(hp);
	uint8_t *sk = xmalloc(KVS_MAX(nb, (size_t)1));
	cold_sketch_make(hp, kmin, kmax, sk);
	sqlite3_stmt *st = NULL;
	int rc = store_prepare(s,
	                       "INSERT OR REPLACE INTO cold_sketch (id, session_id, epoch, pos0, sk) "
	                       "VALUES (?1, ?2, ?3, ?4, ?5)",
	                       &st, e);
	if (rc == KVS_OK) {
		sqlite3_bind_int64(st, 1, block_id);
		sqlite3_bind_int64(st, 2, sid);
		sqlite3_bind_int64(st, 3, epoch);
		sqlite3_bind_int64(st, 4, pos0);
		sqlite3_bind_blob64(st, 5, sk, nb, SQLITE_TRANSIENT);
		int r = sqlite3_step(st);
		if (r != SQLITE_DONE)
			rc = store_fail(s, r, "writing a block's sketch", e);
	}
	sqlite3_finalize(st);
	free(sk);
	return rc;
}

int cold_sketch_build(struct store *s, int64_t sid, const struct hparams *hp, struct err *e)
{
	char sql[300];
	int64_t n = 0;
	snprintf(sql, sizeof sql,
	         "SELECT count(*) FROM cold_sums s WHERE s.session_id = %lld AND NOT EXISTS (SELECT "
	         "1 FROM cold_sketch k WHERE k.id = s.id)",
	         (long long)sid);
	int rc = store_int(s, sql, &n, e);
	if (rc != KVS_OK || n == 0)
		return rc;
	rc = store_exec(s, "BEGIN IMMEDIATE", "sketching the cold tier", e);
	if (rc != KVS_OK)
		return rc;
	/* the ids first: the inserts go to the table the query reads */
	int64_t *ids = xmallocarray((size_t)n, sizeof *ids);
	size_t n_ids = 0;
	sqlite3_stmt *ls = NULL, *rd = NULL;
	rc = store_prepare(s,
	                   "SELECT s.id FROM cold_sums s WHERE s.session_id = ?1 AND NOT EXISTS "
	                   "(SELECT 1 FROM cold_sketch k WHERE k.id = s.id) ORDER BY s.id",
	                   &ls, e);
	if (rc == KVS_OK) {
		sqlite3_bind_int64(ls, 1, sid);
		int r;
		while ((r = sqlite3_step(ls)) == SQLITE_ROW && n_ids < (size_t)n)
			ids[n_ids++] = sqlite3_column_int64(ls, 0);
		if (r != SQLITE_ROW && r != SQLITE_DONE)
			rc = store_fail(s, r, "reading the cold tier's summaries", e);
	}
	sqlite3_finalize(ls);
	if (rc == KVS_OK)
		rc = store_prepare(s, "SELECT epoch, pos0, kmin, kmax FROM cold_sums WHERE id = ?1", &rd,
		                   e);
	size_t nb = (size_t)hp->n_layer * hp->n_head_kv * hp->head_dim;
	float *mn = xmallocarray(KVS_MAX(nb, (size_t)1), sizeof *mn),
	      *mx = xmallocarray(KVS_MAX(nb, (size_t)1), sizeof *mx);
	for (size_t i = 0; i < n_ids && rc == KVS_OK; i++) {
		sqlite3_bind_int64(rd, 1, ids[i]);
		int r = sqlite3_step(rd);
		if (r == SQLITE_ROW && cold_floats_read(rd, 2, nb, mn) && cold_floats_read(rd, 3, nb, mx))
			rc = cold_sketch_add(s, hp, sid, (uint32_t)sqlite3_column_int64(rd, 0), ids[i],
			                     (int32_t)sqlite3_column_int64(rd, 1), mn, mx, e);
		else if (r != SQLITE_ROW && r != SQLITE_DONE)
			rc = store_fail(s, r, "reading the cold tier's summaries", e);
		/* bounds of another shape get no sketch: their epoch is searched exactly */
		sqlite3_reset(rd);
	}
	sqlite3_finalize(rd);
	if (rc == KVS_OK)
		rc = store_exec(s, "COMMIT", "sketching the cold tier", e);
	if (rc != KVS_OK)
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	free(ids);
	free(mn);
	free(mx);
	return rc;
}

/* ------------------------------------------------------------ the search */

/* A stage-1 candidate: a before b (score descending, pos0 ascending). */
static bool cold_sk_better(const struct cold_scored *a, const struct cold_scored *b)
{
	return a->score > b->score || (a->score == b->score && a->pos0 < b->pos0);
}

/* Keep x among the best k of h (n so far): a heap whose root is the worst. */
static void cold_sk_keep(struct cold_scored *h, size_t *n, size_t k, const struct cold_scored *x)
{
	size_t i;
	if (*n < k) {
		i = (*n)++;
		while (i > 0 && cold_sk_better(&h[(i - 1) / 2], x)) {
			h[i] = h[(i - 1) / 2];
			i = (i - 1) / 2;
		}
		h[i] = *x;
		return;
	}
	if (k == 0 || !cold_sk_better(x, &h[0]))
		return;
	for (i = 0;;) {
		size_t c = 2 * i + 1;
		if (c >= *n)
			break;
		if (c + 1 < *n && cold_sk_better(&h[c], &h[c + 1]))
			c++;
		if (!cold_sk_better(x, &h[c]))
			break;
		h[i] = h[c];
		i = c;
	}
	h[i] = *x;
}

static int cold_sk_cmp(const void *a, const void *b)
{
	const struct cold_scored *x = a, *y = b;
	return cold_sk_better(x, y) ? -1 : cold_sk_better(y, x) ? 1 : 0;
}

static int cold_id_cmp(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

/* The scope's epoch in cold_sums: its blocks' count and lowest and highest
 * ids (0 when it has none). */
static int cold_epoch_ids(const struct cold_scope *c, int64_t *n, int64_t *lo, int64_t *hi,
                          struct err *e)
{
	sqlite3_stmt *cnt = NULL;
	*n = *lo = *hi = 0;
	int rc = store_prepare(c->s,
	                       "SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0) FROM "
	                       "cold_sums WHERE session_id = ?1 AND epoch = ?2",
	                       &cnt, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_bind_int64(cnt, 1, c->id);
	sqlite3_bind_int64(cnt, 2, c->epoch);
	int r = sqlite3_step(cnt);
	if (r == SQLITE_ROW) {
		*n = sqlite3_column_int64(cnt, 0);
		*lo = sqlite3_column_int64(cnt, 1);
		*hi = sqlite3_column_int64(cnt, 2);
	} else {
		rc = store_fail(c->s, r, "counting the cold tier", e);
	}
	sqlite3_finalize(cnt);
	return rc;
}

/* Stage 1 over scope's epoch: the best `want` blocks by sketch into cand
 * (want of them), best first; *complete false when some block of the epoch
 * has no sketch (then cand means nothing). */
static int cold_sk_stage1(const struct cold_scope *c, const float *q, uint32_t n_q, size_t want,
                          struct cold_scored *cand, size_t *n_cand, bool *complete, struct err *e)
{
	const struct hparams *hp = c->hp;
	size_t nb = cold_sketch_bytes(hp);
	*n_cand = 0;
	*complete = false;
	sqlite3_stmt *st = NULL;
	int64_t n_blocks = 0, first = 0, last = 0, n_sk = 0;
	int rc = cold_epoch_ids(c, &n_blocks, &first, &last, e);
	if (rc != KVS_OK || n_blocks == 0) {
		*complete = rc == KVS_OK;
		return rc;
	}
	/* the epoch's rows are a run of ids from its first block on: a scan by
	 * id (the unary + keeps the planner off any index on the columns) */
	rc = store_prepare(c->s,
	                   "SELECT id, pos0, sk FROM cold_sketch WHERE id >= ?3 AND +session_id = ?1 "
	                   "AND +epoch = ?2",
	                   &st, e);
	if (rc != KVS_OK)
		return rc;
	struct cold_sk_probe p;
	cold_sk_probe_init(&p, hp, q, n_q, NULL, 0);
	sqlite3_bind_int64(st, 1, c->id);
	sqlite3_bind_int64(st, 2, c->epoch);
	sqlite3_bind_int64(st, 3, first);
	int r;
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		if ((size_t)sqlite3_column_bytes(st, 2) != nb)
			continue; /* another shape: a missing sketch */
		n_sk++;
		struct cold_scored x = { sqlite3_column_int64(st, 0), (int32_t)sqlite3_column_int64(st, 1),
			                     cold_sk_score(&p, sqlite3_column_blob(st, 2)) };
		cold_sk_keep(cand, n_cand, want, &x);
	}
	if (r != SQLITE_DONE)
		rc = store_fail(c->s, r, "reading the cold tier's sketches", e);
	sqlite3_finalize(st);
	cold_sk_probe_free(&p);
	if (c->stats)
		c->stats->sketched += (uint64_t)n_sk;
	*complete = n_sk >= n_blocks;
	if (*n_cand > 0)
		qsort(cand, *n_cand, sizeof *cand, cold_sk_cmp);
	return rc;
}


/* ------------------------------------------------------- the memory stage */

/* The sketch's probe layers that the memory stage keeps (indices into
 * cold_sketch_layers' list, the middle of n_ml equal slices) into sel. */
static uint32_t cold_mem_layers(uint32_t n_pl, uint32_t *sel)
{
	uint32_t n = KVS_MIN(n_pl, (uint32_t)COLD_MEM_LAYERS);
	for (uint32_t i = 0; i < n; i++)
		sel[i] = (uint32_t)(((uint64_t)2 * i + 1) * n_pl / (2 * n));
	return n;
}

struct cold_mem {
	int64_t sid;
	uint32_t epoch;
	size_t n, cap;
	size_t rec;    /* bytes a block: n_ml x n_head_kv x (8 + head_dim) */
	int64_t *id;   /* (n) ascending */
	int32_t *pos0; /* (n) */
	uint8_t *code; /* (n, rec): the block's sketch on the memory layers */
};

struct cold_mem *cold_mem_new(void)
{
	return xcalloc(1, sizeof(struct cold_mem));
}

void cold_mem_free(struct cold_mem *m)
{
	if (m == NULL)
		return;
	free(m->id);
	free(m->pos0);
	free(m->code);
	free(m);
}

size_t cold_mem_size(const struct cold_mem *m)
{
	return m ? m->cap * (sizeof *m->id + sizeof *m->pos0 + m->rec) : 0;
}

size_t cold_mem_count(const struct cold_mem *m, const int64_t **ids)
{
	if (ids)
		*ids = m->id;
	return m->n;
}

/* The memory record of sketch sk (the heads of the memory layers) into o. */
static void cold_mem_record(const struct hparams *hp, const uint8_t *sk, uint8_t *o)
{
	uint32_t layers[COLD_SKETCH_LAYERS], sel[COLD_MEM_LAYERS];
	uint32_t n_ml = cold_mem_layers(cold_sketch_layers(hp->n_layer, layers), sel);
	size_t lay = hp->n_head_kv * (8 + (size_t)hp->head_dim);
	for (uint32_t i = 0; i < n_ml; i++)
		memcpy(o + i * lay, sk + sel[i] * lay, lay);
}

double cold_mem_estimate(const struct hparams *hp, const float *q, uint32_t n_q, const uint8_t *sk)
{
	uint32_t layers[COLD_SKETCH_LAYERS], sel[COLD_MEM_LAYERS];
	uint32_t n_ml = cold_mem_layers(cold_sketch_layers(hp->n_layer, layers), sel);
	if (n_q == 0 || n_ml == 0)
		return 0;
	uint8_t *rec = xmalloc((size_t)n_ml * hp->n_head_kv * (8 + (size_t)hp->head_dim));
	cold_mem_record(hp, sk, rec);
	struct cold_sk_probe p;
	cold_sk_probe_init(&p, hp, q, n_q, sel, n_ml);
	double s = cold_sk_score(&p, rec);
	cold_sk_probe_free(&p);
	free(rec);
	return s;
}

/* Append block (id, pos0) with its sketch sk (cold_sketch_bytes). */
static void cold_mem_push(struct cold_mem *m, const struct hparams *hp, int64_t id, int32_t pos0,
                          const uint8_t *sk)
{
	if (m->n == m->cap) {
		m->cap = m->cap ? m->cap + m->cap / 2 : 256;
		m->id = xreallocarray(m->id, m->cap, sizeof *m->id);
		m->pos0 = xreallocarray(m->pos0, m->cap, sizeof *m->pos0);
		m->code = xreallocarray(m->code, m->cap, m->rec);
	}
	cold_mem_record(hp, sk, m->code + m->n * m->rec);
	m->id[m->n] = id;
	m->pos0[m->n] = pos0;
	m->n++;
}

/* Read scope's sketches with ids above `after` into m, in id order. */
static int cold_mem_load(struct cold_mem *m, const struct cold_scope *c, int64_t after,
                         struct err *e)
{
	size_t nb = cold_sketch_bytes(c->hp);
	sqlite3_stmt *st = NULL;
	int rc = store_prepare(c->s,
	                       "SELECT id, pos0, sk FROM cold_sketch WHERE id > ?3 AND +session_id = "
	                       "?1 AND +epoch = ?2 ORDER BY id",
	                       &st, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_bind_int64(st, 1, c->id);
	sqlite3_bind_int64(st, 2, c->epoch);
	sqlite3_bind_int64(st, 3, after);
	int r;
	while ((r = sqlite3_step(st)) == SQLITE_ROW)
		if ((size_t)sqlite3_column_bytes(st, 2) == nb) /* else a missing sketch */
			cold_mem_push(m, c->hp, sqlite3_column_int64(st, 0),
			              (int32_t)sqlite3_column_int64(st, 1), sqlite3_column_blob(st, 2));
	if (r != SQLITE_DONE)
		rc = store_fail(c->s, r, "reading the cold tier's sketches", e);
	sqlite3_finalize(st);
	return rc;
}

/* Bring m in step with scope's epoch: the blocks the database lost (the
 * cap drops the oldest, the lowest ids) leave, the new ones (higher ids)
 * are read; anything else reads the epoch again. *ok: m holds exactly the
 * epoch's blocks (false when one has no sketch). */
static int cold_mem_sync(struct cold_mem *m, const struct cold_scope *c, bool *ok, struct err *e)
{
	*ok = false;
	int64_t n = 0, lo = 0, hi = 0;
	int rc = cold_epoch_ids(c, &n, &lo, &hi, e);
	if (rc != KVS_OK)
		return rc;
	uint32_t layers[COLD_SKETCH_LAYERS], sel[COLD_MEM_LAYERS];
	size_t rec = cold_mem_layers(cold_sketch_layers(c->hp->n_layer, layers), sel) *
	        c->hp->n_head_kv * (8 + (size_t)c->hp->head_dim);
	if (m->sid != c->id || m->epoch != c->epoch || m->rec != rec) {
		m->n = 0;
		m->sid = c->id;
		m->epoch = c->epoch;
		if (m->rec != rec) { /* another shape: the arrays start again */
			m->cap = 0;
			free(m->code);
			m->code = NULL;
			m->rec = rec;
		}
	}
	for (int pass = 0; pass < 2; pass++) {
		size_t k = 0; /* the oldest gone */
		while (k < m->n && m->id[k] < lo)
			k++;
		if (k > 0) {
			memmove(m->id, m->id + k, (m->n - k) * sizeof *m->id);
			memmove(m->pos0, m->pos0 + k, (m->n - k) * sizeof *m->pos0);
			memmove(m->code, m->code + k * m->rec, (m->n - k) * m->rec);
			m->n -= k;
		}
		while (m->n > 0 && m->id[m->n - 1] > hi) /* rows gone from the top */
			m->n--;
		if ((size_t)n > m->cap) { /* room for the epoch at once (a read grows by whole rows) */
			m->cap = (size_t)n;
			m->id = xreallocarray(m->id, m->cap, sizeof *m->id);
			m->pos0 = xreallocarray(m->pos0, m->cap, sizeof *m->pos0);
			m->code = xreallocarray(m->code, m->cap, m->rec);
		}
		if (n > 0 && (rc = cold_mem_load(m, c, m->n ? m->id[m->n - 1] : lo - 1, e)) != KVS_OK)
			return rc;
		if ((int64_t)m->n == n) {
			*ok = true;
			return KVS_OK;
		}
		m->n = 0; /* a hole: read the epoch again, once */
	}
	return KVS_OK;
}

/* The memory stage: the best `want` of m's blocks by their sketch on the
 * memory layers, as ids (ascending, for the reads that follow). */
static size_t cold_mem_top(const struct cold_mem *m, const struct hparams *hp, const float *q,
                           uint32_t n_q, size_t want, int64_t *ids)
{
	uint32_t layers[COLD_SKETCH_LAYERS], sel[COLD_MEM_LAYERS];
	uint32_t n_ml = cold_mem_layers(cold_sketch_layers(hp->n_layer, layers), sel);
	struct cold_sk_probe p;
	cold_sk_probe_init(&p, hp, q, n_q, sel, n_ml);
	struct cold_scored *h = xmallocarray(KVS_MAX(want, (size_t)1), sizeof *h);
	size_t n_h = 0;
	for (size_t i = 0; i < m->n; i++) {
		struct cold_scored x = { m->id[i], m->pos0[i], cold_sk_score(&p, m->code + i * m->rec) };
		cold_sk_keep(h, &n_h, want, &x);
	}
	cold_sk_probe_free(&p);
	for (size_t i = 0; i < n_h; i++)
		ids[i] = h[i].id;
	free(h);
	qsort(ids, n_h, sizeof *ids, cold_id_cmp);
	return n_h;
}

/* Stage 1 over the blocks ids (n_ids, ascending): their full sketches
 * read by id, the best `want` into cand, best first. */
static int cold_sk_stage1_of(const struct cold_scope *c, const float *q, uint32_t n_q,
                             const int64_t *ids, size_t n_ids, size_t want,
                             struct cold_scored *cand, size_t *n_cand, struct err *e)
{
	size_t nb = cold_sketch_bytes(c->hp);
	*n_cand = 0;
	sqlite3_stmt *st = NULL;
	int rc = store_prepare(c->s, "SELECT pos0, sk FROM cold_sketch WHERE id = ?1", &st, e);
	if (rc != KVS_OK)
		return rc;
	struct cold_sk_probe p;
	cold_sk_probe_init(&p, c->hp, q, n_q, NULL, 0);
	for (size_t i = 0; i < n_ids && rc == KVS_OK; i++) {
		sqlite3_bind_int64(st, 1, ids[i]);
		int r = sqlite3_step(st);
		if (r == SQLITE_ROW && (size_t)sqlite3_column_bytes(st, 1) == nb) {
			struct cold_scored x = { ids[i], (int32_t)sqlite3_column_int64(st, 0),
				                     cold_sk_score(&p, sqlite3_column_blob(st, 1)) };
			cold_sk_keep(cand, n_cand, want, &x);
		} else if (r != SQLITE_ROW && r != SQLITE_DONE) {
			rc = store_fail(c->s, r, "reading the cold tier's sketches", e);
		}
		sqlite3_reset(st);
	}
	sqlite3_finalize(st);
	cold_sk_probe_free(&p);
	if (c->stats)
		c->stats->sketched += n_ids;
	if (*n_cand > 0)
		qsort(cand, *n_cand, sizeof *cand, cold_sk_cmp);
	return rc;
}

size_t cold_sketch_cands(size_t k, uint32_t cands)
{
	return cands ? cands : 2 * k + 32;
}

size_t cold_mem_cands(size_t cands, uint32_t mem_cands)
{
	return mem_cands && mem_cands != STORE_COLD_EXACT ? mem_cands : 8 * cands;
}

int cold_summary_top(const struct cold_scope *c, const float *q, uint32_t n_q, size_t k,
                     struct cold_scored **out, size_t *n, struct err *e)
{
	*out = NULL;
	*n = 0;
	if (k == 0)
		return KVS_OK;
	if (c->cands == STORE_COLD_EXACT || n_q == 0 || c->hp->n_layer == 0)
		return cold_index_top(c, q, n_q, k, out, n, e);
	size_t want = KVS_MAX(cold_sketch_cands(k, c->cands), k);
	struct cold_scored *cand = xmallocarray(want, sizeof *cand);
	size_t n_cand = 0;
	bool complete = false;
	int rc = KVS_OK;
	/* the memory stage first, where it holds the epoch and it has more
	 * blocks than the memory stage passes on */
	size_t want0 = cold_mem_cands(want, c->mem_cands);
	if (c->mem != NULL && c->mem_cands != STORE_COLD_EXACT &&
	    (rc = cold_mem_sync(c->mem, c, &complete, e)) == KVS_OK && complete && c->mem->n > want0) {
		int64_t *ids0 = xmallocarray(want0, sizeof *ids0);
		size_t n0 = cold_mem_top(c->mem, c->hp, q, n_q, want0, ids0);
		if (c->stats)
			c->stats->mem_scored += c->mem->n;
		rc = cold_sk_stage1_of(c, q, n_q, ids0, n0, want, cand, &n_cand, e);
		free(ids0);
	} else if (rc == KVS_OK) {
		rc = cold_sk_stage1(c, q, n_q, want, cand, &n_cand, &complete, e);
	}
	if (rc == KVS_OK && !complete) {
		free(cand);
		return cold_index_top(c, q, n_q, k, out, n, e);
	}
	if (c->stats)
		c->stats->candidates += n_cand;
	int64_t *ids = xmallocarray(KVS_MAX(n_cand, (size_t)1), sizeof *ids);
	for (size_t i = 0; i < n_cand; i++)
		ids[i] = cand[i].id;
	if (rc == KVS_OK && n_cand > 0)
		rc = cold_index_top_of(c, q, n_q, ids, n_cand, k, out, n, e);
	free(ids);
	free(cand);
	return rc;
}

int store_cold_sketch_bytes(struct store *s, int64_t id, int64_t *bytes, struct err *e)
{
	sqlite3_stmt *st;
	*bytes = 0;
	int rc = store_session_row(
	        s, "SELECT coalesce(sum(length(sk)), 0) FROM cold_sketch WHERE session_id = ?1", id,
	        &st, e);
	if (rc != KVS_OK)
		return rc;
	*bytes = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return KVS_OK;
}
