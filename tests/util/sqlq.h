/*
 * sqlq.h: reading and crafting a session database behind the store's back,
 * for tests (libtestutil.a, built where SQLite is).
 *
 * Each call opens the file, runs one statement and closes it again, so a test
 * sees exactly what another process would see on disk. A failed query prints
 * the statement and SQLite's message on stderr and returns the "nothing"
 * value (-1, NULL), which the test's own assertion then reports.
 */
#ifndef KVS_SQLQ_H
#define KVS_SQLQ_H

#include <stdint.h>

/* The first column of the first row as an integer; -1 without a row. */
int64_t sqlq_int(const char *path, const char *sql);
/* The first column of the first row as a new string (free it); NULL without one. */
char *sqlq_text(const char *path, const char *sql);
/* Runs SQL read-write (crafting a database); failures are printed, not returned. */
void sqlq_exec(const char *path, const char *sql);

#endif
