/*
 * store-cold-rank.c: how a recall ranks the cold tier's blocks (the
 * choosing, reading and placing are store-cold.c's).
 *
 * Three rankings, and a custom one:
 *   FTS      the turn's words as an FTS5 query, every term quoted
 *            (store_cold_fts_query), best BM25 first, at most
 *            COLD_CANDIDATES blocks;
 *   SUMMARY  the blocks of the epoch scored by their per-channel key bounds
 *            against the turn's probe queries (store_cold_summary_score):
 *            the best top_k (at most COLD_CANDIDATES), in two stages: every
 *            block's 8-bit sketch on a few layers picks candidates
 *            (store-cold-sketch.c), the exact score ranks them (the index's
 *            search, store-cold-index.c);
 *   BOTH     the two interleaved, FTS first: FTS's best, summary's best,
 *            FTS's second, summary's second, ... (a block in both takes
 *            its earlier place): where the words match, the best match
 *            leads (a fact is usually named by its words), and the probe
 *            still gets every other place, so a turn whose words match
 *            nothing, or match the wrong blocks, recalls by its queries;
 *   SCORES   a caller's scorer (a Lua hook) given every block with its
 *            BM25, summary score (a scan of the index's block bounds) and
 *            text; when it fails, BOTH.
 *
 * Positions: keys are kept before RoPE and the probe's queries are taken
 * before RoPE too, so the summary bounds the position-free logit q.k (the
 * logit of a key at distance 0, where the rotation is the identity). That
 * is what a block's content offers the query wherever it is placed; the
 * bound is exact for it (never below the best key's, equal for a block of
 * one token), and makes no claim about the rotated logit at a distance.
 */
#include "store/store-int.h"

#include "model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define COLD_CANDIDATES 64 /* blocks the FTS ranking reads, best first */

double store_cold_summary_score(const float *q, uint32_t n_q, uint32_t n_layer, uint32_t n_head,
                                uint32_t n_head_kv, uint32_t head_dim, const float *kmin,
                                const float *kmax)
{
	uint32_t grp = n_head_kv ? n_head / n_head_kv : 1;
	double total = 0;
	for (uint32_t l = 0; l < n_layer; l++) {
		double best = -INFINITY;
		for (uint32_t p = 0; p < n_q; p++)
			for (uint32_t h = 0; h < n_head; h++) {
				const float *qh = q + (((size_t)p * n_layer + l) * n_head + h) * head_dim;
				size_t o = ((size_t)l * n_head_kv + h / grp) * head_dim;
				double ub = 0;
				/* the channel's largest product: at its max when q_d > 0, its min when not */
				for (uint32_t d = 0; d < head_dim; d++)
					ub += qh[d] > 0 ? (double)qh[d] * kmax[o + d] : (double)qh[d] * kmin[o + d];
				best = ub > best ? ub : best;
			}
		total += best;
	}
	return n_layer ? total / n_layer / sqrt((double)head_dim) : 0;
}

static int cold_cand_cmp(const void *a, const void *b)
{
	const struct cold_cand *x = a, *y = b;
	if (x->key != y->key)
		return x->key < y->key ? 1 : -1;
	return (x->hit.pos0 > y->hit.pos0) - (x->hit.pos0 < y->hit.pos0);
}

/* Append a candidate read from st's columns id, epoch, turn, pos0, pos1,
 * n_tokens (0..5); false when its shape is not a block's. */
static bool cold_cand_row(const struct cold_scope *c, sqlite3_stmt *st, struct cold_cand *k)
{
	memset(k, 0, sizeof *k);
	k->hit.id = sqlite3_column_int64(st, 0);
	k->hit.epoch = (uint32_t)sqlite3_column_int64(st, 1);
	k->hit.turn = (uint32_t)sqlite3_column_int64(st, 2);
	k->hit.pos0 = (int32_t)sqlite3_column_int64(st, 3);
	k->hit.pos1 = (int32_t)sqlite3_column_int64(st, 4);
	int64_t nt = sqlite3_column_int64(st, 5);
	k->hit.summary = NAN;
	if (nt <= 0 || nt > (int64_t)c->max_block)
		return false;
	k->hit.n_tokens = (uint32_t)nt;
	return true;
}

/* The FTS ranking: up to COLD_CANDIDATES blocks of this epoch that text
 * matches, best first, into *fts. */
static int cold_rank_fts(const struct cold_scope *c, const char *text, struct cold_cand **fts,
                         size_t *n_fts, struct err *e)
{
	*fts = NULL;
	*n_fts = 0;
	char *q = text ? store_cold_fts_query(text) : NULL;
	if (q == NULL)
		return KVS_OK;
	sqlite3_stmt *sel = NULL;
	int rc = store_prepare(c->s,
	                       "SELECT b.id, b.epoch, b.turn, b.pos0, b.pos1, b.n_tokens, "
	                       "bm25(cold_fts) FROM cold_fts JOIN cold_blocks b ON b.id = "
	                       "cold_fts.rowid WHERE cold_fts MATCH ?1 AND b.session_id = ?2 AND "
	                       "b.epoch = ?3 ORDER BY bm25(cold_fts) LIMIT ?4",
	                       &sel, e);
	if (rc == KVS_OK) {
		*fts = xcalloc(COLD_CANDIDATES, sizeof **fts);
		sqlite3_bind_text(sel, 1, q, -1, SQLITE_STATIC);
		sqlite3_bind_int64(sel, 2, c->id);
		sqlite3_bind_int64(sel, 3, c->epoch);
		sqlite3_bind_int(sel, 4, COLD_CANDIDATES);
		int r;
		while ((r = sqlite3_step(sel)) == SQLITE_ROW && *n_fts < COLD_CANDIDATES) {
			struct cold_cand *k = &(*fts)[*n_fts];
			if (!cold_cand_row(c, sel, k))
				continue;
			k->hit.bm25 = -sqlite3_column_double(sel, 6);
			k->rank_fts = (uint32_t)++ * n_fts;
		}
		if (r != SQLITE_ROW && r != SQLITE_DONE)
			rc = store_fail(c->s, r, "searching the cold tier", e);
	}
	sqlite3_finalize(sel);
	free(q);
	return rc;
}

/* The summary ranking, best first, into *sum (text too when want_text):
 * with want_text (a custom scorer sees every block) every block of the
 * epoch, from a scan of the summaries; else the best top_k, from the
 * sketches' candidates ranked exactly (store-cold-sketch.c). */
static int cold_rank_summary(const struct cold_scope *c, const float *q, uint32_t n_q,
                             bool want_text, struct cold_cand **sum, size_t *n_sum, struct err *e)
{
	struct cold_scored *sc = NULL;
	size_t n_sc = 0;
	*sum = NULL;
	*n_sum = 0;
	int rc = want_text
	        ? cold_index_scan(c, q, n_q, &sc, &n_sc, e)
	        : cold_summary_top(c, q, n_q, c->top_k ? c->top_k : COLD_CANDIDATES, &sc, &n_sc, e);
	sqlite3_stmt *st = NULL;
	if (rc == KVS_OK && n_sc > 0)
		rc = store_prepare(c->s,
		                   "SELECT id, epoch, turn, pos0, pos1, n_tokens, text FROM cold_blocks "
		                   "WHERE id = ?1",
		                   &st, e);
	if (rc == KVS_OK && n_sc > 0) {
		*sum = xcalloc(n_sc, sizeof **sum);
		for (size_t i = 0; i < n_sc; i++) {
			sqlite3_bind_int64(st, 1, sc[i].id);
			int r = sqlite3_step(st);
			struct cold_cand *k = &(*sum)[*n_sum];
			if (r == SQLITE_ROW && cold_cand_row(c, st, k)) {
				k->hit.summary = sc[i].score;
				k->rank_sum = (uint32_t)(*n_sum + 1);
				if (want_text)
					k->text = xstrdup((const char *)sqlite3_column_text(st, 6));
				(*n_sum)++;
			} else if (r != SQLITE_ROW && r != SQLITE_DONE) {
				rc = store_fail(c->s, r, "reading the cold tier", e);
				sqlite3_reset(st);
				break;
			}
			sqlite3_reset(st);
		}
	}
	sqlite3_finalize(st);
	free(sc);
	return rc;
}

/* Every block of the epoch with its text, for a custom scorer without a
 * probe (no summary scores). */
static int cold_rank_all(const struct cold_scope *c, struct cold_cand **all, size_t *n_all,
                         struct err *e)
{
	size_t cap = 0;
	*all = NULL;
	*n_all = 0;
	sqlite3_stmt *st = NULL;
	int rc = store_prepare(c->s,
	                       "SELECT id, epoch, turn, pos0, pos1, n_tokens, text FROM cold_blocks "
	                       "WHERE session_id = ?1 AND epoch = ?2 ORDER BY pos0",
	                       &st, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_bind_int64(st, 1, c->id);
	sqlite3_bind_int64(st, 2, c->epoch);
	int r;
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		if (*n_all == cap) {
			cap = cap ? 2 * cap : 64;
			*all = xreallocarray(*all, cap, sizeof **all);
		}
		if (cold_cand_row(c, st, &(*all)[*n_all])) {
			(*all)[*n_all].text = xstrdup((const char *)sqlite3_column_text(st, 6));
			(*n_all)++;
		}
	}
	if (r != SQLITE_DONE)
		rc = store_fail(c->s, r, "reading the cold tier", e);
	sqlite3_finalize(st);
	return rc;
}

/* A block's place when the rankings interleave, FTS first: FTS's rank r
 * sits at 2r - 1, summary's at 2r, and a block in both takes the earlier;
 * as a key, higher first. */
static double cold_interleave(const struct cold_cand *k)
{
	double f = k->rank_fts ? 2.0 * k->rank_fts - 1 : INFINITY;
	double m = k->rank_sum ? 2.0 * k->rank_sum : INFINITY;
	return -(f < m ? f : m);
}

/* Order cands (n) by the query's ranking, best first; a block no ranking
 * scored is dropped (n shrinks). */
static void cold_order(const struct store_cold_query *query, struct cold_cand *cands, size_t *n,
                       bool have_sum)
{
	enum store_cold_rank rank = query->rank;
	if (rank == STORE_COLD_SCORES) {
		struct store_cold_cand *v = xcalloc(KVS_MAX(*n, 1), sizeof *v);
		double *s = xcalloc(KVS_MAX(*n, 1), sizeof *s);
		for (size_t i = 0; i < *n; i++) {
			v[i].hit = &cands[i].hit;
			v[i].text = cands[i].text ? cands[i].text : "";
		}
		bool ok = query->scorer != NULL && query->scorer(query->scorer_ud, v, *n, s);
		for (size_t i = 0; ok && i < *n; i++)
			cands[i].key = isnan(s[i]) ? -INFINITY : s[i];
		free(v);
		free(s);
		if (!ok)
			rank = STORE_COLD_BOTH;
	}
	if (rank == STORE_COLD_SUMMARY && !have_sum)
		rank = STORE_COLD_FTS;
	size_t w = 0;
	for (size_t i = 0; i < *n; i++) {
		struct cold_cand *k = &cands[i];
		if (rank == STORE_COLD_FTS)
			k->key = k->rank_fts ? k->hit.bm25 : -INFINITY;
		else if (rank == STORE_COLD_SUMMARY)
			k->key = k->rank_sum ? k->hit.summary : -INFINITY;
		else if (rank == STORE_COLD_BOTH)
			k->key = k->rank_fts || k->rank_sum ? cold_interleave(k) : -INFINITY;
		if (k->key == -INFINITY) {
			free(k->text);
			continue;
		}
		cands[w++] = *k;
	}
	*n = w;
	qsort(cands, *n, sizeof *cands, cold_cand_cmp);
}

int cold_rank(const struct cold_scope *scope, const struct store_cold_query *query,
              struct cold_cand **out, size_t *n, struct err *e)
{
	enum store_cold_rank rank = query->rank;
	bool probe = query->q != NULL && query->n_q > 0;
	bool custom = rank == STORE_COLD_SCORES;
	struct cold_cand *fts = NULL, *cands = NULL;
	size_t n_fts = 0, n_cands = 0;
	int rc = KVS_OK;
	*out = NULL;
	*n = 0;
	if (rank != STORE_COLD_SUMMARY || !probe)
		rc = cold_rank_fts(scope, query->text, &fts, &n_fts, e);
	if (rc == KVS_OK && probe && rank != STORE_COLD_FTS)
		rc = cold_rank_summary(scope, query->q, query->n_q, custom, &cands, &n_cands, e);
	else if (rc == KVS_OK && custom)
		rc = cold_rank_all(scope, &cands, &n_cands, e);
	bool have_sum = probe && rank != STORE_COLD_FTS;
	if (cands != NULL) {
		/* one list: every block, with its FTS rank and BM25 where it
		 * matched; a block the words match that the summary ranking did not
		 * return (it returns its best top_k) joins with its FTS rank alone */
		size_t n_sum = n_cands;
		for (size_t j = 0; j < n_fts; j++) {
			size_t i = 0;
			while (i < n_sum && fts[j].hit.id != cands[i].hit.id)
				i++;
			if (i < n_sum) {
				cands[i].rank_fts = fts[j].rank_fts;
				cands[i].hit.bm25 = fts[j].hit.bm25;
			} else {
				cands = xreallocarray(cands, n_cands + 1, sizeof *cands);
				cands[n_cands++] = fts[j];
			}
		}
		free(fts);
	} else {
		cands = fts;
		n_cands = n_fts;
	}
	if (rc != KVS_OK) {
		for (size_t i = 0; i < n_cands; i++)
			free(cands[i].text);
		free(cands);
		return rc;
	}
	cold_order(query, cands, &n_cands, have_sum);
	*out = cands;
	*n = n_cands;
	return KVS_OK;
}
