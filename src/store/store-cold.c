/*
 * store-cold.c: the cold tier: evicted tokens kept in the session's
 * database, in blocks, and brought back by full-text recall.
 *
 * Blocks: the cache's cold listener hands each eviction's tokens (cache
 * order) with their raw K/V rows. A block is a run of consecutive original
 * positions of one epoch, at most cfg.block tokens: a run the listener
 * delivers together is split only when longer than that, and a run that
 * continues the last queued block (a decode step evicting one token at a
 * time) extends it. Tokens already recalled once (KV_FLAG_RECALLED) are in
 * a block already and are skipped, so a token has at most one cold row.
 *
 * A block row holds its tokens (orig_pos, id, turn, role, surprisal,
 * entropy), the raw rows exactly as engine_kv_save gave them (pre-RoPE
 * keys in the cache's element type, so a recall places them at any
 * position exactly), the per-(layer, KV head, channel) key minimum and
 * maximum (the bounds a Quest-style scorer needs) and its text, indexed by
 * FTS5 through triggers (migration 002-cold.sql). The bounds live in the
 * summary index (cold_sums and cold_groups, store-cold-index.c, migration
 * 003-cold-index.sql), apart from the K/V blob; the block row's own kmin
 * and kmax columns stay empty. Each block also gets its 8-bit sketch on a
 * few layers (cold_sketch, store-cold-sketch.c, migration 005), the first
 * stage of a summary recall.
 *
 * Writing: blocks queue in memory and a flush writes them in one
 * transaction between turns, then drops the oldest blocks beyond the cap,
 * each drop a memory event. A failed flush (disk full, I/O error, lock)
 * rolls back and drops the queue; the caller stops cold writes with one
 * message and the chat goes on (recall keeps reading what is there).
 *
 * Epochs: a cleared cache restarts original positions, so blocks carry the
 * epoch and recall reads the current one only. The epoch follows the
 * recorder's rule (store-rec.c): the session's stored epoch, one more when
 * the cache does not continue it, one more at every clear (n_seen drops).
 *
 * Recall ranks the blocks of the current epoch one of three ways (the
 * caller's enum store_cold_rank). FTS: the turn's words become an FTS5
 * query in which every term is quoted (store_cold_fts_query), so user text
 * is never FTS syntax, ranked by BM25. SUMMARY: every block's key bounds
 * against the turn's probe queries (store_cold_summary_score, Quest's
 * bound; both sides before RoPE, so the bound is of the position-free
 * logit, exact for what it states), the best k found by the index's exact
 * top-k search (k: four times the blocks the budget holds, 16 to 64). BOTH: the two interleaved, FTS first
 * (store-cold-rank.c). A custom scorer sees every block with both scores
 * and its text. The best blocks
 * are taken while they fit the budget, each with the
 * block that follows it when that fits too (a fact runs on past the words
 * that match: "my code word is" / "TIGER-42"), skipping any with a token
 * cached now, then sorted by position and placed back.
 */
#include "store/store-int.h"

#include "model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define COLD_TOK_FIELDS 6 /* orig_pos, token, turn, role, surprisal, entropy */
#define COLD_TOK_BYTES (COLD_TOK_FIELDS * 4)
#define COLD_CANDIDATES 64 /* blocks one recall takes at most */

/* A block waiting for its flush. */
struct cold_block {
	uint32_t epoch, n;
	struct kv_tok *toks; /* (cap) the first n live */
	uint8_t *raw;        /* (cap, row) */
	uint32_t cap;
};

struct store_cold {
	struct kv_cache *kv;
	const struct vocab *v;
	struct store_cold_config cfg;
	const struct hparams *hp;
	uint64_t row; /* bytes of one token's K/V rows */
	enum engine_kv_type kv_type;
	struct store *s; /* NULL until attached */
	int64_t id;
	uint32_t epoch;
	uint64_t seen_mark; /* the cache's n_seen last seen: a drop is a clear */
	struct cold_block *q;
	size_t n_q, cap_q;
	uint64_t n_pending;
	bool stopped, warned_raw;
	struct cold_index_w iw;             /* the index group a flush fills */
	struct store_cold_rank_stats stats; /* what the last ranking read */
	struct cold_mem *mem;               /* the summary recall's memory stage */
	/* the last recall's choice, until placed */
	struct kv_tok *sel_toks; /* (n_sel) orig_pos ascending */
	uint8_t *sel_raw;        /* (n_sel, row) */
	uint32_t n_sel;
};

void store_cold_open(struct store_cold **out, struct kv_cache *kv, const struct vocab *v,
                     const struct store_cold_config *cfg)
{
	struct store_cold *c = xcalloc(1, sizeof *c);
	struct engine *eng = kv_cache_engine(kv);
	c->kv = kv;
	c->v = v;
	c->cfg = *cfg;
	if (c->cfg.block == 0)
		c->cfg.block = 64;
	if (c->cfg.group == 0)
		c->cfg.group = 32;
	c->hp = &engine_model(eng)->hp;
	c->row = engine_kv_bytes_per_slot(eng);
	c->kv_type = engine_kv_type(eng);
	struct kv_stats ks;
	kv_cache_stats(kv, &ks);
	c->seen_mark = ks.n_seen;
	c->mem = cold_mem_new();
	*out = c;
}

static void cold_queue_clear(struct store_cold *c)
{
	for (size_t i = 0; i < c->n_q; i++) {
		free(c->q[i].toks);
		free(c->q[i].raw);
	}
	c->n_q = 0;
	c->n_pending = 0;
}

void store_cold_free(struct store_cold *c)
{
	if (c == NULL)
		return;
	cold_queue_clear(c);
	free(c->q);
	cold_index_w_free(&c->iw);
	cold_mem_free(c->mem);
	free(c->sel_toks);
	free(c->sel_raw);
	free(c);
}

bool store_cold_attached(const struct store_cold *c)
{
	return c->s != NULL;
}

uint64_t store_cold_pending(const struct store_cold *c)
{
	return c->n_pending;
}

void store_cold_stop(struct store_cold *c)
{
	c->stopped = true;
	cold_queue_clear(c);
}

bool store_cold_stopped(const struct store_cold *c)
{
	return c->stopped;
}

/* Notice a cleared cache (its n_seen went back): a new epoch begins. */
static void cold_sync(struct store_cold *c)
{
	struct kv_stats ks;
	kv_cache_stats(c->kv, &ks);
	if (ks.n_seen < c->seen_mark)
		c->epoch++;
	c->seen_mark = ks.n_seen;
}

int store_cold_attach(struct store_cold *c, struct store *s, int64_t id, const char *model_sha,
                      struct err *e)
{
	sqlite3_stmt *st;
	int rc =
	        store_session_row(s,
	                          "SELECT s.epoch, s.next_pos, m.model_sha256, m.n_layer, m.n_head_kv, "
	                          "m.head_dim, m.kv_type, m.bytes_per_token FROM sessions s LEFT JOIN "
	                          "cold_meta m ON m.session_id = s.id WHERE s.id = ?1",
	                          id, &st, e);
	if (rc != KVS_OK)
		return rc;
	uint32_t epoch = (uint32_t)sqlite3_column_int64(st, 0);
	int32_t next_pos = (int32_t)sqlite3_column_int64(st, 1);
	bool have = sqlite3_column_type(st, 2) != SQLITE_NULL;
	if (have) {
		const char *sha = (const char *)sqlite3_column_text(st, 2);
		int64_t nl = sqlite3_column_int64(st, 3), nh = sqlite3_column_int64(st, 4),
		        hd = sqlite3_column_int64(st, 5), kt = sqlite3_column_int64(st, 6),
		        bp = sqlite3_column_int64(st, 7);
		if (sha == NULL || strcmp(sha, model_sha) != 0 || nl != c->hp->n_layer ||
		    nh != c->hp->n_head_kv || hd != c->hp->head_dim || kt != (int64_t)c->kv_type ||
		    bp != (int64_t)c->row) {
			char shown[16];
			snprintf(shown, sizeof shown, "%.12s", sha ? sha : "");
			char *esc = store_text_escape(shown, 0);
			rc = err_set(e, KVS_EFORMAT,
			             "%s: session %lld's cold tier was written by another model or KV "
			             "layout (model %s..., %lld layers x %lld KV heads x %lld, KV type %lld; "
			             "this one: %.12s..., %u x %u x %u, %d); not used, left as it is",
			             s->path, (long long)id, esc, (long long)nl, (long long)nh, (long long)hd,
			             (long long)kt, model_sha, c->hp->n_layer, c->hp->n_head_kv,
			             c->hp->head_dim, (int)c->kv_type);
			free(esc);
		}
	}
	sqlite3_finalize(st);
	if (rc != KVS_OK)
		return rc;
	if (!have) {
		char sql[400];
		snprintf(sql, sizeof sql,
		         "INSERT INTO cold_meta (session_id, model_sha256, n_layer, n_head_kv, head_dim, "
		         "kv_type, bytes_per_token) VALUES (%lld, '%.64s', %u, %u, %u, %d, %llu)",
		         (long long)id, store_is_sha256(model_sha) ? model_sha : "", c->hp->n_layer,
		         c->hp->n_head_kv, c->hp->head_dim, (int)c->kv_type, (unsigned long long)c->row);
		rc = store_exec(s, sql, "recording the cold tier's model", e);
		if (rc != KVS_OK)
			return rc;
	}
	/* the epoch as the recorder counts it (store_rec_open) */
	struct kv_stats ks;
	kv_cache_stats(c->kv, &ks);
	c->seen_mark = ks.n_seen;
	if (c->n_q == 0) {
		c->epoch = epoch;
		if ((int32_t)ks.n_seen < next_pos || kv_cache_next_pos(c->kv) < next_pos)
			c->epoch++;
	}
	/* the K/V file: created by a writer, read if there by a reader; a
	 * writer brings it in step with the database (a crash between their
	 * commits) */
	struct err ke;
	rc = cold_kv_attach(s, !s->ro, &ke);
	if (rc != KVS_OK && !(s->ro && rc == KVS_ENOTFOUND)) {
		*e = ke;
		return rc;
	}
	uint32_t lost = 0;
	if (!s->ro && cold_kv_repair(s, id, &lost, e) != KVS_OK)
		return e->code;
	if (lost > 0)
		log_warn("cold tier: %u cold blocks of session %lld had no K/V rows in %s-cold (a "
		         "crash between the two files' commits); dropped",
		         lost, (long long)id, s->path);
	/* blocks older than the K/V file move into it; where that fails they
	 * stay readable where they are, so failing costs only the layout */
	uint32_t moved = 0;
	struct err me;
	if (!s->ro && cold_kv_move(s, id, &moved, &me) != KVS_OK)
		log_warn("cold tier: %s", me.msg);
	if (moved > 0)
		log_info("cold tier: %u cold blocks of session %lld moved their K/V rows to %s-cold", moved,
		         (long long)id, s->path);
	c->s = s;
	c->id = id;
	cold_index_w_reset(&c->iw);
	/* rows older than the index (migration 003) get their groups now; a
	 * recall scores ungrouped rows one by one, so failing here costs time */
	if (!s->ro) {
		struct err ie;
		size_t nb = (size_t)c->hp->n_layer * c->hp->n_head_kv * c->hp->head_dim;
		if (cold_index_build(s, id, nb, c->cfg.group, &ie) != KVS_OK)
			log_warn("cold tier: %s", ie.msg);
		/* and their sketches (migration 005); without them an epoch is
		 * searched exactly, so failing here too costs only time */
		else if (cold_sketch_build(s, id, c->hp, &ie) != KVS_OK)
			log_warn("cold tier: %s", ie.msg);
	}
	return KVS_OK;
}

/* Append tokens [0, n) of one run to the queue, extending the last block
 * when the run continues it. */
static void cold_queue_run(struct store_cold *c, const struct kv_tok *toks, const uint8_t *raw,
                           uint32_t n)
{
	for (uint32_t i = 0; i < n;) {
		struct cold_block *b = c->n_q ? &c->q[c->n_q - 1] : NULL;
		if (b == NULL || b->epoch != c->epoch || b->n == c->cfg.block ||
		    b->toks[b->n - 1].orig_pos + 1 != toks[i].orig_pos) {
			if (c->n_q == c->cap_q) {
				c->cap_q = c->cap_q ? 2 * c->cap_q : 16;
				c->q = xreallocarray(c->q, c->cap_q, sizeof *c->q);
			}
			b = &c->q[c->n_q++];
			memset(b, 0, sizeof *b);
			b->epoch = c->epoch;
		}
		uint32_t take = KVS_MIN(n - i, c->cfg.block - b->n);
		if (b->n + take > b->cap) {
			b->cap = KVS_MIN(c->cfg.block, KVS_MAX(b->n + take, 2 * b->cap));
			b->toks = xreallocarray(b->toks, b->cap, sizeof *b->toks);
			b->raw = xreallocarray(b->raw, b->cap, c->row);
		}
		memcpy(b->toks + b->n, toks + i, take * sizeof *toks);
		memcpy(b->raw + (size_t)b->n * c->row, raw + (size_t)i * c->row, take * c->row);
		b->n += take;
		c->n_pending += take;
		i += take;
	}
}

void store_cold_evicted(void *ud, const struct kv_tok *toks, uint32_t n, const void *raw,
                        uint64_t bytes_per_tok)
{
	struct store_cold *c = ud;
	if (c->stopped)
		return;
	if (raw == NULL || bytes_per_tok != c->row) {
		if (!c->warned_raw)
			log_warn("cold tier: the backend gave no K/V rows; evicted tokens are not kept");
		c->warned_raw = true;
		return;
	}
	cold_sync(c);
	const uint8_t *rows = raw;
	/* runs of consecutive positions, recalled tokens left out */
	for (uint32_t i = 0; i < n;) {
		if (toks[i].flags & KV_FLAG_RECALLED) {
			i++;
			continue;
		}
		uint32_t j = i + 1;
		while (j < n && !(toks[j].flags & KV_FLAG_RECALLED) &&
		       toks[j].orig_pos == toks[j - 1].orig_pos + 1)
			j++;
		cold_queue_run(c, toks + i, rows + (size_t)i * bytes_per_tok, j - i);
		i = j;
	}
}

/* ------------------------------------------------------------------ writing */

/* Little-endian 32-bit stores (the blobs' byte order on every host). */
static void cold_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16),
	p[3] = (uint8_t)(v >> 24);
}


static void cold_putf(uint8_t *p, float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	cold_put32(p, u);
}


/* Key element k of a raw row (f16 or f32). */
static float cold_elem(const struct store_cold *c, const uint8_t *row, size_t k)
{
	if (c->kv_type == ENGINE_KV_F16) {
		uint16_t h;
		memcpy(&h, row + 2 * k, 2);
		return dtype_f16_to_f32(h);
	}
	float f;
	memcpy(&f, row + 4 * k, 4);
	return f;
}

/* The block's key bounds, kmin and kmax (n_layer, n_head_kv, head_dim). */
static void cold_bounds(const struct store_cold *c, const struct cold_block *b, float *kmin,
                        float *kmax)
{
	const struct hparams *hp = c->hp;
	size_t per_head = hp->head_dim, per_layer = 2 * (size_t)hp->n_head_kv * per_head;
	for (uint32_t l = 0; l < hp->n_layer; l++)
		for (uint32_t h = 0; h < hp->n_head_kv; h++)
			for (uint32_t d = 0; d < hp->head_dim; d++) {
				size_t k = l * per_layer + h * per_head + d; /* the key comes first in a layer */
				float lo = INFINITY, hi = -INFINITY;
				for (uint32_t i = 0; i < b->n; i++) {
					float x = cold_elem(c, b->raw + (size_t)i * c->row, k);
					lo = fminf(lo, x);
					hi = fmaxf(hi, x);
				}
				size_t o = ((size_t)l * hp->n_head_kv + h) * hp->head_dim + d;
				kmin[o] = lo;
				kmax[o] = hi;
			}
}

/* The block's tokens as text (allocated). */
static char *cold_text(const struct store_cold *c, const struct cold_block *b)
{
	struct detok d;
	char *out = NULL;
	size_t n = 0, cap = 0;
	detok_init(&d, c->v, false);
	for (uint32_t i = 0; i < b->n; i++)
		detok_push(&d, b->toks[i].token, &out, &n, &cap);
	detok_flush(&d, &out, &n, &cap);
	if (out == NULL)
		return xstrdup("");
	out = xrealloc(out, n + 1);
	out[n] = '\0';
	return out;
}

/* Insert block b with the prepared statements st (its row) and kst (its
 * K/V rows in the cold file). */
static int cold_insert(struct store_cold *c, sqlite3_stmt *st, sqlite3_stmt *kst,
                       const struct cold_block *b, double now, struct err *e)
{
	size_t nb = (size_t)c->hp->n_layer * c->hp->n_head_kv * c->hp->head_dim;
	uint8_t *toks = xmalloc((size_t)b->n * COLD_TOK_BYTES);
	float *kmin = xmallocarray(nb, sizeof *kmin), *kmax = xmallocarray(nb, sizeof *kmax);
	for (uint32_t i = 0; i < b->n; i++) {
		const struct kv_tok *t = &b->toks[i];
		uint8_t *p = toks + (size_t)i * COLD_TOK_BYTES;
		cold_put32(p, (uint32_t)t->orig_pos);
		cold_put32(p + 4, (uint32_t)t->token);
		cold_put32(p + 8, t->turn);
		cold_put32(p + 12, t->role);
		cold_putf(p + 16, t->surprisal);
		cold_putf(p + 20, t->entropy);
	}
	cold_bounds(c, b, kmin, kmax);
	char *text = cold_text(c, b);
	sqlite3_bind_int64(st, 1, c->id);
	sqlite3_bind_int64(st, 2, b->epoch);
	sqlite3_bind_int64(st, 3, b->toks[0].turn);
	sqlite3_bind_int64(st, 4, b->toks[0].orig_pos);
	sqlite3_bind_int64(st, 5, b->toks[b->n - 1].orig_pos);
	sqlite3_bind_int64(st, 6, b->n);
	sqlite3_bind_double(st, 7, now);
	sqlite3_bind_text(st, 8, text, -1, SQLITE_TRANSIENT);
	sqlite3_bind_blob(st, 9, toks, (int)((size_t)b->n * COLD_TOK_BYTES), SQLITE_TRANSIENT);
	sqlite3_bind_zeroblob(st, 11, 0); /* the bounds go to the index */
	sqlite3_bind_zeroblob(st, 12, 0);
	int r = sqlite3_step(st);
	sqlite3_reset(st);
	int rc = r == SQLITE_DONE ? KVS_OK : store_fail(c->s, r, "writing a cold block", e);
	int64_t block_id = sqlite3_last_insert_rowid(c->s->db);
	if (rc == KVS_OK) {
		sqlite3_bind_int64(kst, 1, block_id);
		sqlite3_bind_int64(kst, 2, c->id);
		sqlite3_bind_blob64(kst, 3, b->raw, (sqlite3_uint64)b->n * c->row, SQLITE_STATIC);
		r = sqlite3_step(kst);
		sqlite3_reset(kst);
		if (r != SQLITE_DONE)
			rc = store_fail(c->s, r, "writing a cold block's K/V rows", e);
	}
	if (rc == KVS_OK)
		rc = cold_index_add(c->s, &c->iw, c->id, b->epoch, block_id, b->toks[0].orig_pos, kmin,
		                    kmax, nb, c->cfg.group, e);
	if (rc == KVS_OK)
		rc = cold_sketch_add(c->s, c->hp, c->id, b->epoch, block_id, b->toks[0].orig_pos, kmin,
		                     kmax, e);
	free(text);
	free(toks);
	free(kmin);
	free(kmax);
	return rc;
}

/* Drop the oldest blocks while the session holds more than the cap. */
static int cold_trim(struct store_cold *c, uint32_t turn, struct store_cold_flush_info *info,
                     struct err *e)
{
	struct store *s = c->s;
	char sql[256];
	int64_t total = 0;
	snprintf(sql, sizeof sql,
	         "SELECT coalesce(sum(n_tokens), 0) FROM cold_blocks WHERE session_id = %lld",
	         (long long)c->id);
	int rc = store_int(s, sql, &total, e);
	sqlite3_stmt *old = NULL, *ev = NULL;
	if (rc == KVS_OK && (uint64_t)total > c->cfg.max_tokens)
		rc = store_prepare(s,
		                   "SELECT id, n_tokens, turn, pos0, pos1, epoch FROM cold_blocks WHERE "
		                   "session_id = ?1 ORDER BY id LIMIT 1",
		                   &old, e);
	if (rc == KVS_OK && old != NULL)
		rc = store_prepare(s,
		                   "INSERT INTO memory_events (session_id, turn, at, kind, cause, policy, "
		                   "n_tokens, n_incoming, fallback, detail) VALUES (?1, ?2, ?3, "
		                   "'cold-drop', NULL, NULL, ?4, NULL, NULL, ?5)",
		                   &ev, e);
	while (rc == KVS_OK && old != NULL && (uint64_t)total > c->cfg.max_tokens) {
		sqlite3_bind_int64(old, 1, c->id);
		int r = sqlite3_step(old);
		if (r != SQLITE_ROW) {
			rc = r == SQLITE_DONE ? KVS_OK : store_fail(s, r, "finding the oldest cold block", e);
			break;
		}
		int64_t id = sqlite3_column_int64(old, 0), n = sqlite3_column_int64(old, 1);
		char detail[160];
		snprintf(detail, sizeof detail,
		         "{\"block\":%lld,\"turn\":%lld,\"pos0\":%lld,\"pos1\":%lld,\"epoch\":%lld}",
		         (long long)id, (long long)sqlite3_column_int64(old, 2),
		         (long long)sqlite3_column_int64(old, 3), (long long)sqlite3_column_int64(old, 4),
		         (long long)sqlite3_column_int64(old, 5));
		sqlite3_reset(old);
		snprintf(sql, sizeof sql, "DELETE FROM cold_blocks WHERE id = %lld", (long long)id);
		rc = store_exec(s, sql, "dropping a cold block", e);
		snprintf(sql, sizeof sql, "DELETE FROM cold.cold_kv WHERE id = %lld", (long long)id);
		if (rc == KVS_OK && s->cold_kv)
			rc = store_exec(s, sql, "dropping a cold block's K/V rows", e);
		if (rc != KVS_OK)
			break;
		sqlite3_bind_int64(ev, 1, c->id);
		sqlite3_bind_int64(ev, 2, turn);
		sqlite3_bind_double(ev, 3, store_now());
		sqlite3_bind_int64(ev, 4, n);
		sqlite3_bind_text(ev, 5, detail, -1, SQLITE_TRANSIENT);
		int r2 = sqlite3_step(ev);
		sqlite3_reset(ev);
		if (r2 != SQLITE_DONE) {
			rc = store_fail(s, r2, "recording a cold drop", e);
			break;
		}
		total -= n;
		info->dropped_blocks++;
		info->dropped_tokens += (uint64_t)n;
	}
	sqlite3_finalize(old);
	sqlite3_finalize(ev);
	return rc;
}

int store_cold_flush(struct store_cold *c, uint32_t turn, struct store_cold_flush_info *info,
                     struct err *e)
{
	memset(info, 0, sizeof *info);
	if (c->s == NULL || c->stopped || c->n_q == 0)
		return KVS_OK;
	struct store *s = c->s;
	sqlite3_stmt *st = NULL;
	int rc =
	        store_prepare(s,
	                      "INSERT INTO cold_blocks (session_id, epoch, turn, pos0, pos1, n_tokens, "
	                      "created, text, toks, kv, kmin, kmax, kv_at) VALUES (?1, ?2, ?3, ?4, "
	                      "?5, ?6, ?7, ?8, ?9, x'', ?11, ?12, 1)",
	                      &st, e);
	sqlite3_stmt *kst = NULL;
	if (rc == KVS_OK && !s->cold_kv)
		rc = err_set(e, KVS_EIO, "%s: the cold K/V file is not open", s->path);
	if (rc == KVS_OK)
		rc = store_prepare(s, "INSERT INTO cold.cold_kv (id, session_id, kv) VALUES (?1, ?2, ?3)",
		                   &kst, e);
	if (rc == KVS_OK)
		rc = store_exec(s, "BEGIN IMMEDIATE", "writing the cold tier", e);
	if (rc == KVS_OK) {
		double now = store_now();
		for (size_t i = 0; i < c->n_q && rc == KVS_OK; i++) {
			rc = cold_insert(c, st, kst, &c->q[i], now, e);
			info->blocks++;
			info->tokens += c->q[i].n;
		}
		if (rc == KVS_OK)
			rc = cold_index_finish(s, &c->iw, e);
		if (rc == KVS_OK && c->cfg.max_tokens > 0)
			rc = cold_trim(c, turn, info, e);
		if (rc == KVS_OK && info->dropped_blocks > 0)
			rc = cold_index_prune(s, c->id, e);
		if (rc == KVS_OK)
			rc = store_exec(s, "COMMIT", "writing the cold tier", e);
		if (rc != KVS_OK)
			sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	}
	sqlite3_finalize(st);
	sqlite3_finalize(kst);
	cold_index_w_reset(&c->iw);
	cold_queue_clear(c);
	if (rc != KVS_OK) {
		memset(info, 0, sizeof *info);
		err_prefix(e, "cold tier not written");
	}
	return rc;
}

/* ------------------------------------------------------------------- recall */

/* A candidate block read back: its tokens and rows. */
struct cold_got {
	struct store_cold_hit hit;
	struct kv_tok *toks; /* (n_tokens) */
	uint8_t *raw;        /* (n_tokens, row); NULL until cold_load */
	uint32_t n_all;      /* the block's tokens before cold_clash left any out */
};

/* Read block id's tokens into g (false: a row that does not hold what its
 * shape says, skipped). Its K/V rows are read only once it is taken
 * (cold_load): a block the cache holds costs no K/V read. */
static bool cold_read(struct store_cold *c, sqlite3_stmt *rd, struct cold_got *g)
{
	sqlite3_bind_int64(rd, 1, g->hit.id);
	bool ok = sqlite3_step(rd) == SQLITE_ROW;
	uint32_t n = g->hit.n_tokens;
	g->n_all = n;
	if (ok)
		ok = n > 0 && n <= c->cfg.block * 16 &&
		        sqlite3_column_bytes(rd, 0) == (int)(n * COLD_TOK_BYTES);
	if (ok) {
		const uint8_t *p = sqlite3_column_blob(rd, 0);
		g->toks = xcalloc(n, sizeof *g->toks);
		for (uint32_t i = 0; i < n; i++, p += COLD_TOK_BYTES) {
			struct kv_tok *t = &g->toks[i];
			t->orig_pos = (int32_t)cold_get32(p);
			t->token = (int32_t)cold_get32(p + 4);
			t->turn = cold_get32(p + 8);
			t->role = (uint8_t)KVS_MIN(cold_get32(p + 12), 255u);
			t->surprisal = cold_getf(p + 16);
			t->entropy = cold_getf(p + 20);
			ok = ok && t->orig_pos == g->hit.pos0 + (int32_t)i;
		}
	}
	sqlite3_reset(rd);
	return ok;
}

/* Read the K/V rows of g's tokens left by cold_clash (the block's tokens
 * are consecutive positions from pos0, so token orig_pos is row orig_pos -
 * pos0): false when the rows are missing or not n_all rows. */
static bool cold_load(struct store_cold *c, struct cold_got *g)
{
	uint8_t *all;
	uint64_t bytes;
	if (!cold_kv_read(c->s, g->hit.id, &all, &bytes))
		return false;
	bool ok = bytes == (uint64_t)g->n_all * c->row;
	if (ok) {
		g->raw = xmalloc((size_t)g->hit.n_tokens * c->row);
		for (uint32_t w = 0; w < g->hit.n_tokens; w++)
			memcpy(g->raw + (size_t)w * c->row,
			       all + (size_t)(g->toks[w].orig_pos - g->hit.pos0) * c->row, c->row);
	}
	free(all);
	return ok;
}

static int cold_got_cmp(const void *a, const void *b)
{
	const struct cold_got *x = a, *y = b;
	return (x->hit.pos0 > y->hit.pos0) - (x->hit.pos0 < y->hit.pos0);
}

/* Leave out of g the tokens the cache holds (a block recalled before and
 * partly evicted again: its evicted part is what can come back, and
 * skipping the block would lose it for good), then whether nothing is
 * left or its positions overlap a block already taken (got[0..n)). */
static bool cold_clash(const struct store_cold *c, struct cold_got *g, const struct cold_got *got,
                       size_t n)
{
	uint32_t w = 0;
	for (uint32_t i = 0; i < g->hit.n_tokens; i++) {
		if (kv_cache_find(c->kv, g->toks[i].orig_pos) >= 0)
			continue;
		g->toks[w++] = g->toks[i];
	}
	g->hit.n_tokens = w;
	if (w == 0)
		return true;
	for (size_t k = 0; k < n; k++)
		if (g->hit.pos0 <= got[k].hit.pos1 && got[k].hit.pos0 <= g->hit.pos1)
			return true;
	return false;
}

/* Forget a choice not placed. */
static void cold_sel_clear(struct store_cold *c)
{
	free(c->sel_toks);
	free(c->sel_raw);
	c->sel_toks = NULL;
	c->sel_raw = NULL;
	c->n_sel = 0;
}

int store_cold_place(struct store_cold *c, struct err *e)
{
	int rc = KVS_OK;
	if (c->n_sel > 0)
		rc = kv_cache_recall(c->kv, c->sel_toks, c->n_sel, c->sel_raw, e);
	cold_sel_clear(c);
	if (rc != KVS_OK)
		err_prefix(e, "cold tier: recall refused");
	return rc;
}

/* The block that starts right after hit (same epoch) into g: false when
 * there is none or its row does not hold what its shape says. */
static bool cold_next(struct store_cold *c, sqlite3_stmt *nx, sqlite3_stmt *rd,
                      const struct store_cold_hit *hit, struct cold_got *g)
{
	memset(g, 0, sizeof *g);
	sqlite3_bind_int64(nx, 1, c->id);
	sqlite3_bind_int64(nx, 2, hit->epoch);
	sqlite3_bind_int64(nx, 3, (int64_t)hit->pos1 + 1);
	bool ok = sqlite3_step(nx) == SQLITE_ROW;
	if (ok) {
		g->hit.id = sqlite3_column_int64(nx, 0);
		g->hit.epoch = hit->epoch;
		g->hit.turn = (uint32_t)sqlite3_column_int64(nx, 1);
		g->hit.pos0 = (int32_t)sqlite3_column_int64(nx, 2);
		g->hit.pos1 = (int32_t)sqlite3_column_int64(nx, 3);
		int64_t nt = sqlite3_column_int64(nx, 4);
		ok = nt > 0 && nt <= (int64_t)c->cfg.block * 16;
		g->hit.n_tokens = ok ? (uint32_t)nt : 0;
		g->hit.summary = NAN;
	}
	sqlite3_reset(nx);
	return ok && cold_read(c, rd, g);
}

bool store_cold_has_blocks(struct store_cold *c)
{
	if (c->s == NULL)
		return false;
	cold_sync(c);
	char sql[200];
	int64_t n = 0;
	struct err e;
	snprintf(sql, sizeof sql,
	         "SELECT count(*) FROM (SELECT 1 FROM cold_blocks WHERE session_id = %lld AND "
	         "epoch = %u LIMIT 1)",
	         (long long)c->id, c->epoch);
	return store_int(c->s, sql, &n, &e) == KVS_OK && n > 0;
}

int store_cold_recall(struct store_cold *c, const char *text, uint32_t budget,
                      struct store_cold_hit **hits, size_t *n_hits, struct err *e)
{
	struct store_cold_query query = { .text = text, .rank = STORE_COLD_FTS };
	return store_cold_recall_by(c, &query, budget, hits, n_hits, e);
}

int store_cold_recall_by(struct store_cold *c, const struct store_cold_query *query,
                         uint32_t budget, struct store_cold_hit **hits, size_t *n_hits,
                         struct err *e)
{
	*hits = NULL;
	*n_hits = 0;
	cold_sel_clear(c);
	if (c->s == NULL || budget == 0)
		return KVS_OK;
	cold_sync(c);
	struct store *s = c->s;
	memset(&c->stats, 0, sizeof c->stats);
	/* the summary ranking's k: four times the blocks the budget holds (each
	 * hit brings the block after it; blocks too long or cached are skipped),
	 * 16 to 64; the smaller it is, the more of the index the search skips */
	uint32_t k = query->top_k;
	if (k == 0)
		k = KVS_MIN(KVS_MAX(4 * ((budget + c->cfg.block - 1) / c->cfg.block), 16u),
		            (uint32_t)COLD_CANDIDATES);
	struct cold_scope scope = { s,         c->id, c->epoch,     c->hp,  c->cfg.block * 16,
		                        &c->stats, k,     query->cands, c->mem, query->mem_cands };
	struct cold_cand *cands = NULL;
	size_t n_cands = 0;
	int rc = cold_rank(&scope, query, &cands, &n_cands, e);
	sqlite3_stmt *rd = NULL, *nx = NULL;
	if (rc == KVS_OK && n_cands > 0)
		rc = store_prepare(s, "SELECT toks FROM cold_blocks WHERE id = ?1", &rd, e);
	if (rc == KVS_OK && n_cands > 0)
		rc = store_prepare(s,
		                   "SELECT id, turn, pos0, pos1, n_tokens FROM cold_blocks WHERE "
		                   "session_id = ?1 AND epoch = ?2 AND pos0 = ?3 LIMIT 1",
		                   &nx, e);
	struct cold_got *got = NULL;
	size_t n_got = 0;
	uint32_t used = 0;
	if (rc == KVS_OK && n_cands > 0) {
		got = xcalloc(COLD_CANDIDATES, sizeof *got);
		for (size_t i = 0; i < n_cands && n_got < COLD_CANDIDATES && used < budget; i++) {
			struct cold_got g = { 0 };
			g.hit = cands[i].hit;
			if (!cold_read(c, rd, &g) || cold_clash(c, &g, got, n_got) ||
			    g.hit.n_tokens > budget - used || !cold_load(c, &g)) {
				free(g.toks);
				free(g.raw);
				continue;
			}
			got[n_got++] = g;
			used += g.hit.n_tokens;
			/* a fact runs on past the words that match it: the block right
			 * after a hit comes too when it fits (BM25 0: not matched) */
			struct cold_got n2 = { 0 };
			if (n_got < COLD_CANDIDATES && cold_next(c, nx, rd, &got[n_got - 1].hit, &n2) &&
			    !cold_clash(c, &n2, got, n_got) && n2.hit.n_tokens <= budget - used &&
			    cold_load(c, &n2)) {
				n2.hit.summary = NAN;
				for (size_t j = 0; j < n_cands; j++)
					if (cands[j].hit.id == n2.hit.id) {
						n2.hit.summary = cands[j].hit.summary;
						n2.hit.bm25 = cands[j].hit.bm25;
					}
				got[n_got++] = n2;
				used += n2.hit.n_tokens;
			} else {
				free(n2.toks);
				free(n2.raw);
			}
		}
	}
	sqlite3_finalize(rd);
	sqlite3_finalize(nx);
	for (size_t i = 0; i < n_cands; i++)
		free(cands[i].text);
	free(cands);
	if (rc == KVS_OK && n_got > 0) {
		*hits = xmallocarray(n_got, sizeof **hits);
		for (size_t i = 0; i < n_got; i++)
			(*hits)[i] = got[i].hit; /* best first */
		*n_hits = n_got;
		/* kept in their original order, as one list, for store_cold_place */
		qsort(got, n_got, sizeof *got, cold_got_cmp);
		c->sel_toks = xmallocarray(used, sizeof *c->sel_toks);
		c->sel_raw = xmallocarray(used, c->row);
		for (size_t i = 0; i < n_got; i++) {
			memcpy(c->sel_toks + c->n_sel, got[i].toks, got[i].hit.n_tokens * sizeof *c->sel_toks);
			memcpy(c->sel_raw + (size_t)c->n_sel * c->row, got[i].raw,
			       (size_t)got[i].hit.n_tokens * c->row);
			c->n_sel += got[i].hit.n_tokens;
		}
	}
	for (size_t i = 0; i < n_got; i++) {
		free(got[i].toks);
		free(got[i].raw);
	}
	free(got);
	return rc;
}

int store_cold_summary_top(struct store_cold *c, const float *q, uint32_t n_q, uint32_t k,
                           uint32_t cands, uint32_t mem_cands, int64_t *ids, double *scores,
                           size_t *n, struct err *e)
{
	*n = 0;
	if (c->s == NULL || q == NULL || n_q == 0 || k == 0)
		return KVS_OK;
	cold_sync(c);
	memset(&c->stats, 0, sizeof c->stats);
	struct cold_scope scope = { c->s,      c->id, c->epoch, c->hp,  c->cfg.block * 16,
		                        &c->stats, k,     cands,    c->mem, mem_cands };
	struct cold_scored *sc = NULL;
	int rc = cold_summary_top(&scope, q, n_q, k, &sc, n, e);
	for (size_t i = 0; rc == KVS_OK && i < *n; i++) {
		ids[i] = sc[i].id;
		scores[i] = sc[i].score;
	}
	free(sc);
	return rc;
}

void store_cold_rank_stats(const struct store_cold *c, struct store_cold_rank_stats *out)
{
	*out = c->stats;
}

size_t store_cold_mem_bytes(const struct store_cold *c)
{
	return cold_mem_size(c->mem);
}

int store_recall_count(struct store *s, int64_t id, uint32_t *events, uint64_t *tokens,
                       struct err *e)
{
	sqlite3_stmt *st;
	*events = 0;
	*tokens = 0;
	int rc = store_session_row(s,
	                           "SELECT count(*), coalesce(sum(n_tokens), 0) FROM memory_events "
	                           "WHERE session_id = ?1 AND kind = 'recall'",
	                           id, &st, e);
	if (rc != KVS_OK)
		return rc;
	*events = (uint32_t)sqlite3_column_int64(st, 0);
	*tokens = (uint64_t)sqlite3_column_int64(st, 1);
	sqlite3_finalize(st);
	return KVS_OK;
}

int store_cold_count(struct store *s, int64_t id, uint32_t *blocks, uint64_t *tokens,
                     uint64_t *bytes, struct err *e)
{
	sqlite3_stmt *st;
	*blocks = 0;
	*tokens = *bytes = 0;
	int rc = store_session_row(s,
	                           "SELECT count(*), coalesce(sum(n_tokens), 0) FROM cold_blocks WHERE "
	                           "session_id = ?1",
	                           id, &st, e);
	if (rc != KVS_OK)
		return rc;
	*blocks = (uint32_t)sqlite3_column_int64(st, 0);
	*tokens = (uint64_t)sqlite3_column_int64(st, 1);
	sqlite3_finalize(st);
	return cold_kv_bytes(s, id, bytes, e);
}
