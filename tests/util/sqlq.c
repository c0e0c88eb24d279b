/* sqlq.c: one-statement reads and writes of a database file (see sqlq.h). */
#include "tests/util/sqlq.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Opens path read-only and prepares sql; false (message printed) on failure. */
static int sqlq_prepare(const char *path, const char *sql, sqlite3 **db, sqlite3_stmt **st)
{
	if (sqlite3_open_v2(path, db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
	    sqlite3_prepare_v2(*db, sql, -1, st, NULL) == SQLITE_OK)
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

	if (sqlite3_open(path, &db) != SQLITE_OK ||
	    sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
		fprintf(stderr, "exec %s: %s\n", sql,
		        msg          ? msg
		                : db ? sqlite3_errmsg(db)
		                     : "out of memory");
	sqlite3_free(msg);
	sqlite3_close(db);
}
