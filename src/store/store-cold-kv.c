/*
 * store-cold-kv.c: the cold blocks' K/V rows, in a file of their own.
 *
 * A cold block of the default model is 1.4 MiB of K/V rows (64 tokens x
 * 23 KiB) and about 50 KiB of everything a recall ranks it by (text,
 * tokens, the summary index's bounds, the sketch, the full-text index).
 * In one file the two interleave page by page, so at a million cold tokens
 * the pages a recall reads are scattered over a 23 GB file that the page
 * cache cannot hold, and every open's quick_check reads all of it. Since
 * migration 006 a block's K/V rows go to PATH-cold, a second SQLite
 * database attached as `cold` (table cold_kv: the block's id, its session,
 * the rows), and the database keeps the rest: a recall reads the
 * database's compact pages (which stay cached) and, from PATH-cold, only
 * the rows of the blocks it brings back. Blocks written before kept their
 * rows in cold_blocks.kv (kv_at 0); a writer's attach moves them into the
 * file (cold_kv_move: copy, then mark, so a crash between loses nothing),
 * and until then they are read from there.
 *
 * Invariants: a block with kv_at 1 has one cold_kv row of its id, written
 * in the transaction that writes the block and deleted in the one that
 * deletes it (cap drops, session deletion). SQLite commits the two files
 * of one transaction one after the other in WAL mode (each atomically, not
 * both together), so a crash between them can leave K/V rows of no block
 * or blocks without their rows: a writer's attach repairs both
 * (cold_kv_repair), and until then a recall skips a block whose rows are
 * missing. The file carries its own application id (COLD_KV_APP_ID), so
 * neither file is taken for the other; another program's file, a
 * symbolic link or a damaged header is refused with one line and left as
 * it is (the chat goes on without a cold tier).
 */
#include "store/store-int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Run sql on the attached file, waiting like a writer when another
 * connection holds it (a journal-mode switch answers SQLITE_BUSY at once). */
static int cold_kv_exec_wait(struct store *s, const char *sql, const char *what, struct err *e)
{
	for (int waited = 0;; waited += 10) {
		int r = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
		if (r == SQLITE_OK)
			return KVS_OK;
		if ((r & 0xff) != SQLITE_BUSY || waited >= 5000)
			return store_fail(s, r, what, e);
		sqlite3_sleep(10);
	}
}

/* Detach `cold` after a refusal (the refusal's message stays in e). */
static int cold_kv_detach(struct store *s, int rc)
{
	sqlite3_exec(s->db, "DETACH DATABASE cold", NULL, NULL, NULL);
	s->cold_kv = false;
	return rc;
}

int cold_kv_attach(struct store *s, bool create, struct err *e)
{
	if (s->cold_kv)
		return KVS_OK;
	char *path = xasprintf("%s-cold", s->path);
	struct stat sb;
	bool exists = false;
	int rc = KVS_OK;
	if (lstat(path, &sb) == 0 && S_ISLNK(sb.st_mode))
		rc = err_set(e, KVS_EFORMAT,
		             "%s: a symbolic link; expected the cold tier's K/V file; left as it is", path);
	if (rc == KVS_OK)
		rc = store_check_header(path, &exists, e);
	if (rc == KVS_OK && !exists && (!create || s->ro))
		rc = err_set(e, KVS_ENOTFOUND, "%s: no cold K/V file", path);
	if (rc != KVS_OK) {
		free(path);
		return rc;
	}
	char *uri = store_uri(path, s->ro ? "?mode=ro" : "");
	char *sql = sqlite3_mprintf("ATTACH DATABASE %Q AS cold", uri);
	free(uri);
	int r = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
	sqlite3_free(sql);
	if (r != SQLITE_OK) {
		rc = err_set(e, KVS_EIO, "%s: cannot open the cold K/V file: %s", path,
		             sqlite3_errmsg(s->db));
		free(path);
		return rc;
	}
	s->cold_kv = true;
	int64_t app = 0, ntab = 0, have = 0;
	rc = store_int(s, "PRAGMA cold.application_id", &app, e);
	if (rc == KVS_OK)
		rc = store_int(s, "SELECT count(*) FROM cold.sqlite_schema WHERE type = 'table'", &ntab, e);
	if (rc == KVS_OK)
		rc = store_int(s, "SELECT count(*) FROM cold.sqlite_schema WHERE name = 'cold_kv'", &have,
		               e);
	if (rc == KVS_OK && ntab > 0 && (app != COLD_KV_APP_ID || have != 1))
		rc = err_set(e, KVS_EFORMAT,
		             "%s: a SQLite database of another program (application id %lld, %lld "
		             "tables); expected the cold tier's K/V file; left as it is",
		             path, (long long)app, (long long)ntab);
	if (rc == KVS_OK && ntab == 0 && s->ro)
		rc = err_set(e, KVS_ENOTFOUND, "%s: no cold K/V file", path);
	if (rc == KVS_OK && ntab == 0)
		rc = cold_kv_exec_wait(s, "PRAGMA cold.journal_mode = WAL",
		                       "switching the cold K/V file to WAL mode", e);
	if (rc == KVS_OK && ntab == 0) {
		char init[512];
		snprintf(init, sizeof init,
		         "BEGIN IMMEDIATE; "
		         "CREATE TABLE IF NOT EXISTS cold.cold_kv (id INTEGER PRIMARY KEY, "
		         "session_id INTEGER NOT NULL, kv BLOB NOT NULL); "
		         "CREATE INDEX IF NOT EXISTS cold.cold_kv_session ON cold_kv(session_id); "
		         "PRAGMA cold.application_id = %d; COMMIT",
		         COLD_KV_APP_ID);
		rc = store_exec(s, init, "creating the cold K/V file", e);
		if (rc != KVS_OK)
			sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	}
	if (rc == KVS_OK && !s->ro)
		rc = store_exec(s, "PRAGMA cold.synchronous = FULL", "setting durability", e);
	free(path);
	return rc == KVS_OK ? KVS_OK : cold_kv_detach(s, rc);
}

int cold_kv_repair(struct store *s, int64_t sid, uint32_t *lost, struct err *e)
{
	*lost = 0;
	if (!s->cold_kv || s->ro)
		return KVS_OK;
	char sql[512];
	int64_t n = 0;
	int rc = store_exec(s, "BEGIN IMMEDIATE", "repairing the cold tier", e);
	/* blocks whose rows never reached the K/V file (the first part of a
	 * commit that a crash cut) */
	snprintf(sql, sizeof sql,
	         "SELECT count(*) FROM main.cold_blocks WHERE session_id = %lld AND kv_at = 1 AND id "
	         "NOT IN (SELECT id FROM cold.cold_kv WHERE session_id = %lld)",
	         (long long)sid, (long long)sid);
	if (rc == KVS_OK)
		rc = store_int(s, sql, &n, e);
	if (rc == KVS_OK && n > 0) {
		snprintf(sql, sizeof sql,
		         "DELETE FROM main.cold_blocks WHERE session_id = %lld AND kv_at = 1 AND id NOT "
		         "IN (SELECT id FROM cold.cold_kv WHERE session_id = %lld)",
		         (long long)sid, (long long)sid);
		rc = store_exec(s, sql, "dropping cold blocks without their K/V rows", e);
		if (rc == KVS_OK)
			rc = cold_index_prune(s, sid, e);
	}
	/* rows of no block: this session's, and those of deleted sessions */
	snprintf(sql, sizeof sql,
	         "DELETE FROM cold.cold_kv WHERE session_id = %lld AND id NOT IN (SELECT id FROM "
	         "main.cold_blocks WHERE session_id = %lld); DELETE FROM cold.cold_kv WHERE "
	         "session_id NOT IN (SELECT id FROM main.sessions)",
	         (long long)sid, (long long)sid);
	if (rc == KVS_OK)
		rc = store_exec(s, sql, "dropping K/V rows of no cold block", e);
	if (rc == KVS_OK)
		rc = store_exec(s, "COMMIT", "repairing the cold tier", e);
	if (rc != KVS_OK) {
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
		return rc;
	}
	*lost = (uint32_t)n;
	return KVS_OK;
}

/* Session sid's oldest blocks still holding their rows in cold_blocks.kv,
 * up to COLD_KV_MOVE of them: the highest id among them in *hi, 0 if none. */
#define COLD_KV_MOVE 32 /* blocks per move: 45 MiB of the default model's rows */
static int cold_kv_next_batch(struct store *s, int64_t sid, int64_t *hi, struct err *e)
{
	char sql[256];
	snprintf(sql, sizeof sql,
	         "SELECT coalesce(max(id), 0) FROM (SELECT id FROM main.cold_blocks WHERE "
	         "session_id = %lld AND kv_at = 0 ORDER BY id LIMIT %d)",
	         (long long)sid, COLD_KV_MOVE);
	return store_int(s, sql, hi, e);
}

/* How many of session sid's blocks up to id hi still hold their rows in
 * cold_blocks.kv, into *n. */
static int cold_kv_unmoved(struct store *s, int64_t sid, int64_t hi, int64_t *n, struct err *e)
{
	char sql[256];
	snprintf(sql, sizeof sql,
	         "SELECT count(*) FROM main.cold_blocks WHERE session_id = %lld AND kv_at = 0 AND "
	         "id <= %lld",
	         (long long)sid, (long long)hi);
	return store_int(s, sql, n, e);
}

int cold_kv_move(struct store *s, int64_t sid, uint32_t *moved, struct err *e)
{
	*moved = 0;
	if (!s->cold_kv || s->ro)
		return KVS_OK;
	char sql[512];
	for (;;) {
		int64_t hi = 0, n = 0;
		int rc = cold_kv_next_batch(s, sid, &hi, e);
		if (rc != KVS_OK || hi == 0)
			return rc;
		/* first the copy, committed in the K/V file; OR REPLACE: a copy a
		 * crash left before its block was marked is made again */
		snprintf(sql, sizeof sql,
		         "BEGIN IMMEDIATE; INSERT OR REPLACE INTO cold.cold_kv (id, session_id, kv) "
		         "SELECT id, session_id, kv FROM main.cold_blocks WHERE session_id = %lld AND "
		         "kv_at = 0 AND id <= %lld; COMMIT",
		         (long long)sid, (long long)hi);
		rc = store_exec(s, sql, "copying old cold blocks' K/V rows to the K/V file", e);
		/* then the blocks point there and let their copy in the database go */
		if (rc == KVS_OK)
			rc = cold_kv_unmoved(s, sid, hi, &n, e);
		if (rc == KVS_OK) {
			snprintf(sql, sizeof sql,
			         "BEGIN IMMEDIATE; UPDATE main.cold_blocks SET kv = x'', kv_at = 1 WHERE "
			         "session_id = %lld AND kv_at = 0 AND id <= %lld AND id IN (SELECT id FROM "
			         "cold.cold_kv WHERE session_id = %lld); COMMIT",
			         (long long)sid, (long long)hi, (long long)sid);
			rc = store_exec(s, sql, "moving old cold blocks' K/V rows to the K/V file", e);
		}
		if (rc != KVS_OK) {
			sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
			return rc;
		}
		/* every block of the step moved, or the next step would be this one */
		int64_t left = 0;
		rc = cold_kv_unmoved(s, sid, hi, &left, e);
		if (rc == KVS_OK && left > 0)
			rc = err_set(e, KVS_ESTATE,
			             "%s: %lld of session %lld's old cold blocks up to id %lld did not reach "
			             "the K/V file: expected each copied; they stay where they are",
			             s->path, (long long)left, (long long)sid, (long long)hi);
		if (rc != KVS_OK)
			return rc;
		*moved += (uint32_t)(n - left);
	}
}

bool cold_kv_read(struct store *s, int64_t id, uint8_t **buf, uint64_t *bytes)
{
	sqlite3_stmt *st = NULL;
	*buf = NULL;
	*bytes = 0;
	if (sqlite3_prepare_v2(s->db, "SELECT kv_at FROM main.cold_blocks WHERE id = ?1", -1, &st,
	                       NULL) != SQLITE_OK)
		return false;
	sqlite3_bind_int64(st, 1, id);
	int64_t at = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
	sqlite3_finalize(st);
	st = NULL;
	const char *sql = at == 0       ? "SELECT kv FROM main.cold_blocks WHERE id = ?1"
	        : at == 1 && s->cold_kv ? "SELECT kv FROM cold.cold_kv WHERE id = ?1"
	                                : NULL;
	if (sql == NULL || sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
		return false;
	sqlite3_bind_int64(st, 1, id);
	bool ok = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_BLOB;
	if (ok) {
		*bytes = (uint64_t)sqlite3_column_bytes(st, 0);
		*buf = xmalloc(*bytes ? *bytes : 1);
		memcpy(*buf, sqlite3_column_blob(st, 0), *bytes);
	}
	sqlite3_finalize(st);
	return ok;
}

int cold_kv_bytes(struct store *s, int64_t sid, uint64_t *bytes, struct err *e)
{
	char sql[200];
	int64_t a = 0, b = 0;
	*bytes = 0;
	snprintf(sql, sizeof sql,
	         "SELECT coalesce(sum(length(kv)), 0) FROM main.cold_blocks WHERE session_id = %lld",
	         (long long)sid);
	int rc = store_int(s, sql, &a, e);
	if (rc != KVS_OK)
		return rc;
	struct err ae;
	if (cold_kv_attach(s, false, &ae) == KVS_OK) {
		snprintf(sql, sizeof sql,
		         "SELECT coalesce(sum(length(kv)), 0) FROM cold.cold_kv WHERE session_id = %lld",
		         (long long)sid);
		rc = store_int(s, sql, &b, e);
	}
	*bytes = (uint64_t)(a + b);
	return rc;
}
