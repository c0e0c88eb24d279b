/* sqlq.c: one-statement reads and writes of a database file (see sqlq.h). */
#include "tests/util/sqlq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int sqlq_open(const char *path, int rw, sqlite3 **db)
{
	int flags = rw ? SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE : SQLITE_OPEN_READONLY;
	if (sqlite3_open_v2(path, db, flags, NULL) != SQLITE_OK)
		return 0;
	size_t n = strlen(path) + 8;
	char *kv = malloc(n);
	int cold = 0;
	if (kv != NULL) {
		snprintf(kv, n, "%s-cold", path);
		if (access(kv, F_OK) == 0) {
			char *sql = sqlite3_mprintf("ATTACH DATABASE %Q AS cold", kv);
			cold = sqlite3_exec(*db, sql, NULL, NULL, NULL) == SQLITE_OK;
			sqlite3_free(sql);
		}
		free(kv);
	}
	if (rw)
		return 1; /* crafting: no view to stand in the way of an ALTER TABLE */
	static const char view[] = "CREATE TEMP VIEW cold_blocks_kv AS SELECT b.id, b.session_id, "
	                           "b.epoch, b.pos0, b.pos1, b.n_tokens, b.text, b.toks, %s AS kv "
	                           "FROM main.cold_blocks b";
	char sql[512];
	snprintf(sql, sizeof sql, view,
	         cold ? "CASE b.kv_at WHEN 1 THEN (SELECT k.kv FROM cold.cold_kv k WHERE k.id = b.id) "
	                "ELSE b.kv END"
	              : "CASE b.kv_at WHEN 1 THEN NULL ELSE b.kv END");
	if (sqlite3_exec(*db, sql, NULL, NULL, NULL) != SQLITE_OK) {
		snprintf(sql, sizeof sql, view, "b.kv"); /* before schema 6 (or no cold tier) */
		sqlite3_exec(*db, sql, NULL, NULL, NULL);
	}
	return 1;
}

/* Opens path read-only and prepares sql; false (message printed) on failure. */
static int sqlq_prepare(const char *path, const char *sql, sqlite3 **db, sqlite3_stmt **st)
{
	if (sqlq_open(path, 0, db) && sqlite3_prepare_v2(*db, sql, -1, st, NULL) == SQLITE_OK)
		return 1;
	fprintf(stderr, "query %s: %s\n", sql, *db ? sqlite3_errmsg(*db) : "out of memory");
	sqlite3_close(*db);
	return 0;
}

int64_t sqlq_int(const char *path, const char *sql)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st;
	int64_t v = -1;

	if (!sqlq_prepare(path, sql, &db, &st))
		return v;
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

char *sqlq_text(const char *path, const char *sql)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st;
	char *v = NULL;

	if (!sqlq_prepare(path, sql, &db, &st))
		return v;
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0)) {
		const char *t = (const char *)sqlite3_column_text(st, 0);
		size_t n = strlen(t) + 1;
		v = malloc(n);
		if (v != NULL)
			memcpy(v, t, n);
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

void sqlq_exec(const char *path, const char *sql)
{
	sqlite3 *db = NULL;
	char *msg = NULL;

	if (!sqlq_open(path, 1, &db) || sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
		fprintf(stderr, "exec %s: %s\n", sql,
		        msg          ? msg
		                : db ? sqlite3_errmsg(db)
		                     : "out of memory");
	sqlite3_free(msg);
	sqlite3_close(db);
}

void sqlq_cold_kv_back(const char *path, int version)
{
	char sql[320];
	snprintf(sql, sizeof sql,
	         "UPDATE cold_blocks SET kv = (SELECT k.kv FROM cold.cold_kv k WHERE k.id = "
	         "cold_blocks.id) WHERE kv_at = 1; ALTER TABLE cold_blocks DROP COLUMN kv_at; "
	         "PRAGMA user_version = %d",
	         version);
	sqlq_exec(path, sql);
	static const char *const sfx[] = { "-cold", "-cold-wal", "-cold-shm", "-cold-journal" };
	for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
		size_t n = strlen(path) + 16;
		char *f = malloc(n);
		if (f == NULL)
			continue;
		snprintf(f, n, "%s%s", path, sfx[i]);
		unlink(f);
		free(f);
	}
}
