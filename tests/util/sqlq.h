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

#include <sqlite3.h>
#include <stdint.h>

/* Opens path read-only (rw: read-write) as the calls below do: with the
 * cold K/V file PATH-cold attached as `cold` when it is there, and, read-
 * only, a temporary view cold_blocks_kv (id, session_id, epoch, pos0, pos1,
 * n_tokens, text, toks, kv) whose kv is each block's K/V rows wherever they
 * are (cold_blocks.kv before schema 6, else the cold file). */
int sqlq_open(const char *path, int rw, sqlite3 **db);
/* The first column of the first row as an integer; -1 without a row. */
int64_t sqlq_int(const char *path, const char *sql);
/* The first column of the first row as a new string (free it); NULL without one. */
char *sqlq_text(const char *path, const char *sql);
/* Runs SQL read-write (crafting a database); failures are printed, not returned. */
void sqlq_exec(const char *path, const char *sql);
/* Crafts the cold tier's layout before schema 6: every block's K/V rows
 * copied back into cold_blocks.kv, the kv_at column dropped and the cold
 * K/V file (PATH-cold, its WAL and index) removed; user_version set to
 * version. */
void sqlq_cold_kv_back(const char *path, int version);

#endif
