/*
 * store.c: dialogue memory in SQLite (the store layer; store.h says what it
 * keeps and doc/store.md how).
 *
 * Durability: the database runs in WAL mode with synchronous=FULL, so a
 * transaction that COMMIT reported is on disk; foreign keys are on and
 * every writer waits busy_timeout for the lock. A recorder commits all its
 * queued turns with their token rows, memory events and snapshot reference
 * in one BEGIN IMMEDIATE ... COMMIT, so a crash leaves a turn either
 * absent or whole. A failed commit rolls back and keeps the queue.
 *
 * Opening never alters a file it refuses: the first 16 bytes are checked
 * for SQLite's header before SQLite sees the file, and the application id
 * and schema version are read before anything is written (WAL mode, the
 * migrations). Migrations are the SQL files in src/store/migrations/,
 * embedded at build time (scripts/embed-sql.sh); migration i sets
 * PRAGMA user_version = i, each in its own transaction.
 *
 * Snapshots: the K/V rows of the cached tokens, their ids and positions,
 * the last logits and the attention accumulators, written to a temporary
 * file, fsynced, renamed to SHA256.kvs in PATH-kv/ and the directory
 * fsynced, all before the transaction that refers to them. The file's
 * name is its content hash, so a damaged file is recognised on load and
 * resume recomputes instead. Files no row refers to (an old snapshot whose
 * unlink a crash prevented) go at the next vacuum.
 */
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>

#define STORE_APP_ID 0x6b767363 /* "kvsc" in PRAGMA application_id */
#define SNAP_MAGIC "KVSSNAP1"

struct store_migration {
	const char *name;
	const char *sql;
};

static const struct store_migration store_migrations[] = {
#include "src/store/migrations.inc" /* generated in the build tree */
};

struct store {
	sqlite3 *db;
	char *path;
	char *snapdir;  /* PATH-kv */
	int version;
	bool ro;
};

/* A copied memory event waiting for its commit. */
struct rec_event {
	enum kv_event_kind kind;
	uint32_t turn;           /* turn index during which it happened */
	uint32_t epoch;
	double at;
	enum kv_evict_cause cause;
	char *policy;
	char *fallback;
	uint32_t n_incoming;
	uint32_t n;
	struct kv_tok *toks;     /* (n): evicted, or the pinned token */
};

struct rec_turn {
	struct store_turn t;     /* strings owned */
	uint32_t epoch;
	int32_t end_pos;         /* next_pos when it was queued */
};

struct store_rec {
	struct store *s;
	int64_t id;
	struct kv_cache *kv;
	bool snapshots;
	uint32_t n_turns;        /* committed */
	uint32_t epoch;          /* current */
	uint32_t committed_epoch;
	int32_t committed_pos;   /* tokens below it (committed_epoch) have rows */
	uint64_t seen_mark;      /* n_seen last observed: a drop means the cache was cleared */
	struct rec_event *ev;
	size_t n_ev, cap_ev;
	struct rec_turn *turns;
	size_t n_pending, cap_turns;
	char snap_sha[65];       /* the snapshot the database refers to ("" none) */
	struct kv_tok *last;     /* (n_last) the cache as of the last commit: rows that */
	uint32_t n_last;         /* still match it need no update */
};

bool store_available(void)
{
	return true;
}

char *store_default_path(void)
{
	return file_xdg_path("XDG_DATA_HOME", ".local/share", "kvscope/memory.db");
}

int store_schema_latest(void)
{
	return (int)KVS_ARRAY_LEN(store_migrations);
}

int store_schema_version(const struct store *s)
{
	return s->version;
}

const char *store_path(const struct store *s)
{
	return s->path;
}

void store_set_busy_timeout(struct store *s, int ms)
{
	sqlite3_busy_timeout(s->db, ms);
}

static double store_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Fill e from SQLite's last error on the store, naming what was being done. */
static int store_fail(struct store *s, int rc, const char *what, struct err *e)
{
	int ext = sqlite3_extended_errcode(s->db);
	const char *msg = sqlite3_errmsg(s->db);
	(void)rc;
	switch (ext & 0xff) {
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return err_set(e, KVS_EIO,
		               "%s: %s: the database is locked by another kvscope writer (waited for it; "
		               "try again when it is done)",
		               s->path, what);
	case SQLITE_FULL:
		return err_set(e, KVS_EIO, "%s: %s: the disk is full", s->path, what);
	case SQLITE_IOERR:
		return err_set(e, KVS_EIO, "%s: %s: I/O error (%s)", s->path, what, msg);
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return err_set(e, KVS_EFORMAT, "%s: %s: the database is damaged (%s)", s->path, what,
		               msg);
	case SQLITE_READONLY:
		return err_set(e, KVS_EIO, "%s: %s: the database is read-only (%s)", s->path, what, msg);
	default:
		return err_set(e, KVS_EIO, "%s: %s: %s", s->path, what, msg);
	}
}

/* Run SQL without results. */
static int store_exec(struct store *s, const char *sql, const char *what, struct err *e)
{
	int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
	return rc == SQLITE_OK ? KVS_OK : store_fail(s, rc, what, e);
}

static int store_prepare(struct store *s, const char *sql, sqlite3_stmt **st, struct err *e)
{
	int rc = sqlite3_prepare_v2(s->db, sql, -1, st, NULL);
	return rc == SQLITE_OK ? KVS_OK : store_fail(s, rc, "preparing a statement", e);
}

/* One integer from a query without parameters (pragmas). */
static int store_int(struct store *s, const char *sql, int64_t *out, struct err *e)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, sql, &st, e);
	if (rc != KVS_OK)
		return rc;
	int r = sqlite3_step(st);
	*out = r == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	sqlite3_finalize(st);
	if (r != SQLITE_ROW && r != SQLITE_DONE)
		return store_fail(s, r, "reading the database header", e);
	return KVS_OK;
}

/* ---------------------------------------------------------------- opening */

/* Refuse a non-empty file that does not start with SQLite's header. */
static int store_check_header(const char *path, bool *exists, struct err *e)
{
	static const char magic[16] = "SQLite format 3";
	uint8_t head[100];
	struct stat sb;
	*exists = false;
	if (stat(path, &sb) != 0) {
		if (errno == ENOENT)
			return KVS_OK;
		return err_set(e, KVS_EIO, "%s: cannot stat: %s", path, strerror(errno));
	}
	if (!S_ISREG(sb.st_mode))
		return err_set(e, KVS_EFORMAT, "%s: not a regular file; expected a kvscope database",
		               path);
	if (sb.st_size == 0)
		return KVS_OK; /* SQLite treats an empty file as a new database */
	*exists = true;
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return err_set(e, KVS_EIO, "%s: cannot open: %s", path, strerror(errno));
	ssize_t got = read(fd, head, sizeof head);
	close(fd);
	if (got < 16 || memcmp(head, magic, sizeof magic) != 0)
		return err_set(e, KVS_EFORMAT,
		               "%s: not a SQLite database (no 'SQLite format 3' header); expected a "
		               "kvscope database; the file was left as it is",
		               path);
	/* the header's page size and page count against the file's size */
	uint32_t page = got == 100 ? (uint32_t)head[16] << 8 | head[17] : 0;
	if (page == 1)
		page = 65536;
	uint32_t npages = (uint32_t)head[28] << 24 | (uint32_t)head[29] << 16 |
	                  (uint32_t)head[30] << 8 | head[31];
	bool count_valid = memcmp(head + 24, head + 92, 4) == 0 && npages > 0;
	if (page < 512 || (page & (page - 1)) != 0 || sb.st_size % page != 0 ||
	    (count_valid && (uint64_t)sb.st_size < (uint64_t)npages * page))
		return err_set(e, KVS_EFORMAT,
		               "%s: truncated SQLite database (%lld bytes; its header expects %llu); "
		               "the file was left as it is",
		               path, (long long)sb.st_size,
		               count_valid ? (unsigned long long)npages * page : 0ull);
	return KVS_OK;
}

/* Whether the database has any table (a foreign one when it lacks our id). */
static int store_n_tables(struct store *s, int64_t *n, struct err *e)
{
	return store_int(s, "SELECT count(*) FROM sqlite_schema WHERE type = 'table'", n, e);
}

/* Apply the migrations after the current version, one transaction each. */
static int store_migrate(struct store *s, struct err *e)
{
	for (int v = s->version; v < store_schema_latest(); v++) {
		char set[96];
		int rc = store_exec(s, "BEGIN IMMEDIATE", "starting a migration", e);
		if (rc == KVS_OK)
			rc = store_exec(s, store_migrations[v].sql, store_migrations[v].name, e);
		snprintf(set, sizeof set, "PRAGMA user_version = %d; PRAGMA application_id = %d", v + 1,
		         STORE_APP_ID);
		if (rc == KVS_OK)
			rc = store_exec(s, set, "setting the schema version", e);
		if (rc == KVS_OK)
			rc = store_exec(s, "COMMIT", "committing a migration", e);
		if (rc != KVS_OK) {
			sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
			return rc;
		}
		s->version = v + 1;
	}
	return KVS_OK;
}

int store_open(struct store **out, const char *path, enum store_mode mode, struct err *e)
{
	bool exists;
	*out = NULL;
	int rc = store_check_header(path, &exists, e);
	if (rc != KVS_OK)
		return rc;
	if (!exists && mode == STORE_RO)
		return err_set(e, KVS_ENOTFOUND, "%s: no such database (kvscope chat --db creates it)",
		               path);
	if (!exists) {
		/* the directory, for the default path */
		char *dir = xstrdup(path), *slash = strrchr(dir, '/');
		if (slash != NULL && slash != dir) {
			*slash = '\0';
			(void)file_mkdirs(dir, 0777); /* sqlite3_open says what failed */
		}
		free(dir);
	}
	struct store *s = xcalloc(1, sizeof *s);
	s->path = xstrdup(path);
	s->snapdir = xasprintf("%s-kv", path);
	s->ro = mode == STORE_RO;
	int flags = s->ro ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
	int r = sqlite3_open_v2(path, &s->db, flags | SQLITE_OPEN_NOMUTEX, NULL);
	if (r != SQLITE_OK) {
		rc = err_set(e, KVS_EIO, "%s: cannot open the database: %s", path,
		             s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(r));
		store_close(s);
		return rc;
	}
	sqlite3_extended_result_codes(s->db, 1);
	sqlite3_busy_timeout(s->db, 5000);
	/* read-only checks first: nothing is written to a file we refuse */
	int64_t app = 0, ver = 0, ntab = 0;
	rc = store_int(s, "PRAGMA application_id", &app, e);
	if (rc == KVS_OK)
		rc = store_int(s, "PRAGMA user_version", &ver, e);
	if (rc == KVS_OK)
		rc = store_n_tables(s, &ntab, e);
	if (rc == KVS_OK && app != STORE_APP_ID && ntab > 0)
		rc = err_set(e, KVS_EFORMAT,
		             "%s: a SQLite database of another program (application id %lld, %lld "
		             "tables); expected a kvscope database; the file was left as it is",
		             path, (long long)app, (long long)ntab);
	if (rc == KVS_OK && ver > store_schema_latest())
		rc = err_set(e, KVS_EUNSUPPORTED,
		             "%s: schema version %lld was written by a newer kvscope (this one knows up "
		             "to %d); the file was left as it is",
		             path, (long long)ver, store_schema_latest());
	if (rc == KVS_OK && exists && app == STORE_APP_ID) {
		int64_t ok = 0;
		sqlite3_stmt *st;
		rc = store_prepare(s, "PRAGMA quick_check", &st, e);
		if (rc == KVS_OK) {
			int sr = sqlite3_step(st);
			const unsigned char *t = sr == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
			ok = t != NULL && strcmp((const char *)t, "ok") == 0;
			if (!ok)
				rc = err_set(e, KVS_EFORMAT,
				             "%s: the database is damaged (%s); the file was left as it is", path,
				             t ? (const char *)t : sqlite3_errmsg(s->db));
			sqlite3_finalize(st);
		}
	}
	s->version = (int)ver;
	if (rc == KVS_OK && s->ro && ver < store_schema_latest())
		rc = err_set(e, KVS_EUNSUPPORTED,
		             "%s: schema version %lld is older than this kvscope's %d; open it once "
		             "read-write (kvscope chat --db) to migrate it",
		             path, (long long)ver, store_schema_latest());
	if (rc == KVS_OK && !s->ro) {
		rc = store_exec(s, "PRAGMA journal_mode = WAL", "switching to WAL mode", e);
		if (rc == KVS_OK)
			rc = store_migrate(s, e);
	}
	if (rc == KVS_OK)
		rc = store_exec(s, "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON",
		                "setting durability", e);
	if (rc != KVS_OK) {
		store_close(s);
		return rc;
	}
	*out = s;
	return KVS_OK;
}

void store_close(struct store *s)
{
	if (s == NULL)
		return;
	sqlite3_close(s->db);
	free(s->path);
	free(s->snapdir);
	free(s);
}

/* ---------------------------------------------------------------- sessions */

static char *col_str(sqlite3_stmt *st, int i)
{
	const unsigned char *t = sqlite3_column_text(st, i);
	return t ? xstrdup((const char *)t) : NULL;
}

void store_session_free(struct store_session *s)
{
	free(s->title);
	free(s->model_path);
	free(s->model_sha256);
	free(s->arch);
	free(s->policy);
	free(s->sampler);
	free(s->system);
	memset(s, 0, sizeof *s);
}

int store_session_create(struct store *s, const struct store_session *in, int64_t *id,
                         struct err *e)
{
	sqlite3_stmt *st;
	double now = store_now();
	int rc = store_prepare(s,
	                       "INSERT INTO sessions (title, model_path, model_sha256, arch, policy, "
	                       "budget, n_ctx, sampler, system, created, updated) VALUES "
	                       "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
	                       &st, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_bind_text(st, 1, in->title ? in->title : "", -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 2, in->model_path ? in->model_path : "", -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 3, in->model_sha256 ? in->model_sha256 : "", -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 4, in->arch ? in->arch : "", -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 5, in->policy ? in->policy : "", -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 6, in->budget);
	sqlite3_bind_int64(st, 7, in->n_ctx);
	sqlite3_bind_text(st, 8, in->sampler ? in->sampler : "", -1, SQLITE_TRANSIENT);
	if (in->system && in->system[0])
		sqlite3_bind_text(st, 9, in->system, -1, SQLITE_TRANSIENT);
	sqlite3_bind_double(st, 10, now);
	sqlite3_bind_double(st, 11, now);
	int r = sqlite3_step(st);
	sqlite3_finalize(st);
	if (r != SQLITE_DONE)
		return store_fail(s, r, "creating a session", e);
	*id = sqlite3_last_insert_rowid(s->db);
	if (in->title == NULL || in->title[0] == '\0') {
		char q[96];
		snprintf(q, sizeof q, "UPDATE sessions SET title = 'session %lld' WHERE id = %lld",
		         (long long)*id, (long long)*id);
		return store_exec(s, q, "naming a session", e);
	}
	return KVS_OK;
}

#define SESSION_COLS                                                                            \
	"s.id, s.title, s.model_path, s.model_sha256, s.arch, s.policy, s.budget, s.n_ctx, "       \
	"s.sampler, s.system, s.created, s.updated, "                                               \
	"(SELECT count(*) FROM turns t WHERE t.session_id = s.id), "                                \
	"(SELECT count(*) FROM turns t WHERE t.session_id = s.id AND NOT t.complete), "             \
	"(SELECT count(*) FROM tokens k WHERE k.session_id = s.id), "                               \
	"(SELECT count(*) FROM tokens k WHERE k.session_id = s.id AND k.epoch = s.epoch AND k.kept)"

static void session_row(sqlite3_stmt *st, struct store_session *o)
{
	memset(o, 0, sizeof *o);
	o->id = sqlite3_column_int64(st, 0);
	o->title = col_str(st, 1);
	o->model_path = col_str(st, 2);
	o->model_sha256 = col_str(st, 3);
	o->arch = col_str(st, 4);
	o->policy = col_str(st, 5);
	o->budget = (uint32_t)sqlite3_column_int64(st, 6);
	o->n_ctx = (uint32_t)sqlite3_column_int64(st, 7);
	o->sampler = col_str(st, 8);
	o->system = col_str(st, 9);
	o->created = sqlite3_column_double(st, 10);
	o->updated = sqlite3_column_double(st, 11);
	o->n_turns = (uint32_t)sqlite3_column_int64(st, 12);
	o->n_incomplete = (uint32_t)sqlite3_column_int64(st, 13);
	o->n_tokens = (uint32_t)sqlite3_column_int64(st, 14);
	o->n_kept = (uint32_t)sqlite3_column_int64(st, 15);
}

int store_session_get(struct store *s, int64_t id, struct store_session *out, struct err *e)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, "SELECT " SESSION_COLS " FROM sessions s WHERE s.id = ?", &st, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_bind_int64(st, 1, id);
	int r = sqlite3_step(st);
	if (r == SQLITE_ROW)
		session_row(st, out);
	else if (r == SQLITE_DONE)
		rc = err_set(e, KVS_ENOTFOUND, "%s: no session with id %lld", s->path, (long long)id);
	else
		rc = store_fail(s, r, "reading a session", e);
	sqlite3_finalize(st);
	return rc;
}

int store_session_list(struct store *s, struct store_session **out, size_t *n, struct err *e)
{
	sqlite3_stmt *st;
	size_t cap = 0;
	*out = NULL;
	*n = 0;
	int rc = store_prepare(s, "SELECT " SESSION_COLS " FROM sessions s ORDER BY s.updated DESC, "
	                          "s.id DESC",
	                       &st, e);
	if (rc != KVS_OK)
		return rc;
	int r;
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		if (*n == cap) {
			cap = cap ? 2 * cap : 16;
			*out = xreallocarray(*out, cap, sizeof **out);
		}
		session_row(st, &(*out)[(*n)++]);
	}
	if (r != SQLITE_DONE)
		rc = store_fail(s, r, "listing sessions", e);
	sqlite3_finalize(st);
	return rc;
}

int store_session_find(struct store *s, const char *key, int64_t *id, struct err *e)
{
	sqlite3_stmt *st;
	char *end;
	bool numeric = false;
	long long v = 0;
	if (key != NULL && key[0] != '\0') {
		errno = 0;
		v = strtoll(key, &end, 10);
		numeric = *end == '\0' && errno == 0 && v > 0;
	}
	const char *sql = numeric ? "SELECT id FROM sessions WHERE id = ?1 UNION ALL "
	                            "SELECT id FROM sessions WHERE title = ?2"
	                  : key && key[0] ? "SELECT id FROM sessions WHERE title = ?2 ORDER BY "
	                                    "updated DESC, id DESC"
	                                  : "SELECT id FROM sessions ORDER BY updated DESC, id DESC";
	int rc = store_prepare(s, sql, &st, e);
	if (rc != KVS_OK)
		return rc;
	if (numeric)
		sqlite3_bind_int64(st, 1, v);
	if (key && key[0])
		sqlite3_bind_text(st, 2, key, -1, SQLITE_TRANSIENT);
	int r = sqlite3_step(st);
	if (r == SQLITE_ROW)
		*id = sqlite3_column_int64(st, 0);
	else if (r == SQLITE_DONE && key && key[0])
		rc = err_set(e, KVS_ENOTFOUND,
		             "%s: no session with id or title '%s' (kvscope sessions list shows them)",
		             s->path, key);
	else if (r == SQLITE_DONE)
		rc = err_set(e, KVS_ENOTFOUND, "%s: no sessions saved yet", s->path);
	else
		rc = store_fail(s, r, "finding a session", e);
	sqlite3_finalize(st);
	return rc;
}

int store_session_set_title(struct store *s, int64_t id, const char *title, struct err *e)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, "UPDATE sessions SET title = ? WHERE id = ?", &st, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_bind_text(st, 1, title, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, id);
	int r = sqlite3_step(st);
	sqlite3_finalize(st);
	return r == SQLITE_DONE ? KVS_OK : store_fail(s, r, "renaming a session", e);
}

/* Path of snapshot sha in s's snapshot directory (allocated). */
static char *snap_path(const struct store *s, const char *sha)
{
	return xasprintf("%s/%s.kvs", s->snapdir, sha);
}

/* Remove a snapshot file unless a row still refers to it. */
static void snap_unlink_unused(struct store *s, const char *sha)
{
	sqlite3_stmt *st;
	struct err e;
	if (store_prepare(s, "SELECT 1 FROM snapshots WHERE sha256 = ?", &st, &e) != KVS_OK)
		return;
	sqlite3_bind_text(st, 1, sha, -1, SQLITE_TRANSIENT);
	bool used = sqlite3_step(st) == SQLITE_ROW;
	sqlite3_finalize(st);
	if (!used) {
		char *p = snap_path(s, sha);
		unlink(p);
		free(p);
	}
}

int store_session_delete(struct store *s, int64_t id, struct err *e)
{
	sqlite3_stmt *st;
	char **shas = NULL;
	size_t n = 0;
	int rc = store_prepare(s, "SELECT sha256 FROM snapshots WHERE session_id = ?", &st, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_bind_int64(st, 1, id);
	while (sqlite3_step(st) == SQLITE_ROW) {
		shas = xreallocarray(shas, n + 1, sizeof *shas);
		shas[n++] = col_str(st, 0);
	}
	sqlite3_finalize(st);
	rc = store_prepare(s, "DELETE FROM sessions WHERE id = ?", &st, e);
	if (rc == KVS_OK) {
		sqlite3_bind_int64(st, 1, id);
		int r = sqlite3_step(st);
		if (r != SQLITE_DONE)
			rc = store_fail(s, r, "deleting a session", e);
		else if (sqlite3_changes(s->db) == 0)
			rc = err_set(e, KVS_ENOTFOUND, "%s: no session with id %lld", s->path,
			             (long long)id);
		sqlite3_finalize(st);
	}
	for (size_t i = 0; i < n; i++) {
		if (rc == KVS_OK)
			snap_unlink_unused(s, shas[i]);
		free(shas[i]);
	}
	free(shas);
	return rc;
}

int store_check(struct store *s, struct err *e)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, "PRAGMA integrity_check", &st, e);
	if (rc != KVS_OK)
		return rc;
	int r = sqlite3_step(st);
	const unsigned char *t = r == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
	if (r != SQLITE_ROW)
		rc = store_fail(s, r, "checking integrity", e);
	else if (t == NULL || strcmp((const char *)t, "ok") != 0)
		rc = err_set(e, KVS_EFORMAT, "%s: integrity check failed: %s", s->path,
		             t ? (const char *)t : "?");
	sqlite3_finalize(st);
	return rc;
}

int store_vacuum(struct store *s, struct err *e)
{
	int rc = store_exec(s, "VACUUM", "vacuuming", e);
	if (rc != KVS_OK)
		return rc;
	DIR *d = opendir(s->snapdir);
	if (d == NULL)
		return KVS_OK;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);
		if (strncmp(de->d_name, ".tmp-", 5) == 0) {
			char *p = xasprintf("%s/%s", s->snapdir, de->d_name);
			unlink(p);
			free(p);
		} else if (len == 68 && strcmp(de->d_name + 64, ".kvs") == 0) {
			char sha[65];
			memcpy(sha, de->d_name, 64);
			sha[64] = '\0';
			snap_unlink_unused(s, sha);
		}
	}
	closedir(d);
	return KVS_OK;
}

int store_model_sha256(struct store *s, const char *path, char out[65], struct err *e)
{
	struct stat sb;
	sqlite3_stmt *st;
	if (stat(path, &sb) != 0)
		return err_set(e, KVS_EIO, "%s: cannot stat: %s", path, strerror(errno));
	int64_t mtime = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
	int rc = store_prepare(s, "SELECT sha256 FROM model_files WHERE path = ? AND size = ? AND "
	                          "mtime_ns = ?",
	                       &st, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_bind_text(st, 1, path, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, (int64_t)sb.st_size);
	sqlite3_bind_int64(st, 3, mtime);
	bool hit = false;
	if (sqlite3_step(st) == SQLITE_ROW) {
		const unsigned char *t = sqlite3_column_text(st, 0);
		if (t && strlen((const char *)t) == 64) {
			memcpy(out, t, 65);
			hit = true;
		}
	}
	sqlite3_finalize(st);
	if (hit)
		return KVS_OK;
	rc = file_sha256(path, out, e);
	if (rc != KVS_OK || s->ro)
		return rc;
	if (store_prepare(s, "INSERT OR REPLACE INTO model_files VALUES (?, ?, ?, ?)", &st, e) ==
	    KVS_OK) {
		sqlite3_bind_text(st, 1, path, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(st, 2, (int64_t)sb.st_size);
		sqlite3_bind_int64(st, 3, mtime);
		sqlite3_bind_text(st, 4, out, -1, SQLITE_TRANSIENT);
		sqlite3_step(st); /* a cache: failing to write it costs a rehash next time */
		sqlite3_finalize(st);
	}
	return KVS_OK;
}

/* -------------------------------------------------------------- snapshots */

/* The fixed part of a snapshot file (native byte order; the magic's
 * version changes when this does). */
struct snap_head {
	char magic[8];           /* SNAP_MAGIC */
	uint32_t kv_type;        /* enum engine_kv_type */
	uint32_t n;              /* tokens */
	uint64_t bytes_per_slot;
	uint32_t n_vocab;        /* logits that follow, 0: none */
	uint32_t acc_stride;     /* accumulators per token that follow, 0: none */
	char model_sha256[64];
};

/* Write all of buf to fd and into the running hash. */
static int snap_write(int fd, struct sha256 *h, const void *buf, size_t n, const char *path,
                      struct err *e)
{
	const uint8_t *p = buf;
	sha256_update(h, buf, n);
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return err_set(e, KVS_EIO, "%s: write failed: %s", path, strerror(errno));
		p += w;
		n -= (size_t)w;
	}
	return KVS_OK;
}

/* fsync a directory so a rename in it is durable. */
static int snap_sync_dir(const char *dir, struct err *e)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY);
	if (fd < 0)
		return err_set(e, KVS_EIO, "%s: cannot open the directory: %s", dir, strerror(errno));
	int r = fsync(fd);
	int saved = errno;
	close(fd);
	return r == 0 ? KVS_OK
	              : err_set(e, KVS_EIO, "%s: fsync failed: %s", dir, strerror(saved));
}

/* Write kv's snapshot (model_sha identifies the model); sha gets its name. */
static int snap_save(struct store *s, struct kv_cache *kv, const char *model_sha, char sha[65],
                     uint64_t *bytes, struct err *e)
{
	struct engine *eng = kv_cache_engine(kv);
	const struct hparams *hp = &engine_model(eng)->hp;
	uint32_t n = kv_cache_n(kv);
	const struct kv_tok *toks = kv_cache_toks(kv);
	const float *logits = kv_cache_logits(kv), *acc = kv_cache_acc(kv);
	struct snap_head h;
	struct sha256 hs;
	uint8_t d[32];
	if (mkdir(s->snapdir, 0777) != 0 && errno != EEXIST)
		return err_set(e, KVS_EIO, "%s: cannot create the snapshot directory: %s", s->snapdir,
		               strerror(errno));
	char *tmp = xasprintf("%s/.tmp-XXXXXX", s->snapdir);
	int fd = mkstemp(tmp);
	if (fd < 0) {
		int rc = err_set(e, KVS_EIO, "%s: cannot create a snapshot: %s", s->snapdir,
		                 strerror(errno));
		free(tmp);
		return rc;
	}
	memset(&h, 0, sizeof h);
	memcpy(h.magic, SNAP_MAGIC, 8);
	h.kv_type = (uint32_t)engine_kv_type(eng);
	h.n = n;
	h.bytes_per_slot = engine_kv_bytes_per_slot(eng);
	h.n_vocab = logits ? hp->n_vocab : 0;
	h.acc_stride = acc ? hp->n_layer * hp->n_head_kv : 0;
	memcpy(h.model_sha256, model_sha, 64);
	sha256_init(&hs);
	int rc = snap_write(fd, &hs, &h, sizeof h, tmp, e);
	for (uint32_t i = 0; i < n && rc == KVS_OK; i++) {
		int32_t v[3] = { toks[i].token, toks[i].pos, toks[i].orig_pos };
		rc = snap_write(fd, &hs, v, sizeof v, tmp, e);
	}
	uint8_t *row = xmalloc(h.bytes_per_slot);
	for (uint32_t i = 0; i < n && rc == KVS_OK; i++) {
		rc = engine_kv_save(eng, toks[i].slot, row, e);
		if (rc == KVS_OK)
			rc = snap_write(fd, &hs, row, h.bytes_per_slot, tmp, e);
	}
	free(row);
	if (rc == KVS_OK && logits)
		rc = snap_write(fd, &hs, logits, h.n_vocab * sizeof(float), tmp, e);
	if (rc == KVS_OK && acc)
		rc = snap_write(fd, &hs, acc, (size_t)n * h.acc_stride * sizeof(float), tmp, e);
	if (rc == KVS_OK && fsync(fd) != 0)
		rc = err_set(e, KVS_EIO, "%s: fsync failed: %s", tmp, strerror(errno));
	if (close(fd) != 0 && rc == KVS_OK)
		rc = err_set(e, KVS_EIO, "%s: close failed: %s", tmp, strerror(errno));
	if (rc == KVS_OK) {
		sha256_final(&hs, d);
		sha256_hex(d, sha);
		char *dst = snap_path(s, sha);
		if (rename(tmp, dst) != 0)
			rc = err_set(e, KVS_EIO, "%s: rename failed: %s", dst, strerror(errno));
		free(dst);
	}
	if (rc == KVS_OK)
		rc = snap_sync_dir(s->snapdir, e);
	if (rc != KVS_OK)
		unlink(tmp);
	*bytes = sizeof h + (uint64_t)n * (12 + h.bytes_per_slot) + h.n_vocab * 4ull +
	         (uint64_t)n * h.acc_stride * 4;
	free(tmp);
	return rc;
}

/* Load snapshot sha into kv, already restored from toks (n): KVS_OK when it
 * matched and was loaded; otherwise why (in why) and nothing changed but
 * possibly some slots' K/V, which a recompute overwrites. */
static int snap_load(struct store *s, const char *sha, const char *model_sha,
                     const struct kv_tok *toks, uint32_t n, struct kv_restore *r,
                     struct kv_cache *kv, char *why, size_t why_cap)
{
	struct engine *eng = kv_cache_engine(kv);
	const struct hparams *hp = &engine_model(eng)->hp;
	char *path = snap_path(s, sha), *buf = NULL;
	size_t len = 0;
	struct err e;
	uint8_t d[32];
	char hex[65];
	struct sha256 hs;
	int rc = file_read_all(path, &buf, &len, &e);
	free(path);
	if (rc != KVS_OK) {
		snprintf(why, why_cap, "snapshot unreadable (%.150s)", e.msg);
		return KVS_ENOTFOUND;
	}
	sha256_init(&hs);
	sha256_update(&hs, buf, len);
	sha256_final(&hs, d);
	sha256_hex(d, hex);
	struct snap_head h;
	rc = KVS_EFORMAT;
	if (strcmp(hex, sha) != 0) {
		snprintf(why, why_cap, "snapshot %.12s is damaged (its content hash differs)", sha);
		goto out;
	}
	if (len < sizeof h) {
		snprintf(why, why_cap, "snapshot %.12s is truncated", sha);
		goto out;
	}
	memcpy(&h, buf, sizeof h);
	uint64_t need = sizeof h + (uint64_t)h.n * (12 + h.bytes_per_slot) + h.n_vocab * 4ull +
	                (uint64_t)h.n * h.acc_stride * 4;
	if (memcmp(h.magic, SNAP_MAGIC, 8) != 0 || need != len) {
		snprintf(why, why_cap, "snapshot %.12s has an unknown format", sha);
		goto out;
	}
	if (memcmp(h.model_sha256, model_sha, 64) != 0) {
		snprintf(why, why_cap, "snapshot was taken with another model file");
		goto out;
	}
	if (h.kv_type != (uint32_t)engine_kv_type(eng) ||
	    h.bytes_per_slot != engine_kv_bytes_per_slot(eng)) {
		snprintf(why, why_cap, "snapshot has another KV cache type");
		goto out;
	}
	if (h.n != n || (h.n_vocab != 0 && h.n_vocab != hp->n_vocab) ||
	    (h.acc_stride != 0 && h.acc_stride != hp->n_layer * hp->n_head_kv)) {
		snprintf(why, why_cap, "snapshot holds %u tokens, the session %u", h.n, n);
		goto out;
	}
	const uint8_t *p = (const uint8_t *)buf + sizeof h;
	for (uint32_t i = 0; i < n; i++, p += 12) {
		int32_t v[3];
		memcpy(v, p, sizeof v);
		if (v[0] != toks[i].token || v[1] != toks[i].pos || v[2] != toks[i].orig_pos) {
			snprintf(why, why_cap,
			         "snapshot differs from the saved tokens at cache index %u (older than the "
			         "last commit)",
			         i);
			goto out;
		}
	}
	const uint8_t *rows = p;
	p += (size_t)n * h.bytes_per_slot;
	r->logits = h.n_vocab ? (const float *)p : NULL; /* buf is malloc-aligned; floats at 4k */
	p += h.n_vocab * 4ull;
	r->acc = h.acc_stride ? (const float *)p : NULL;
	rc = kv_cache_restore(kv, r, &e);
	for (uint32_t i = 0; i < n && rc == KVS_OK; i++)
		rc = engine_kv_load(eng, i, toks[i].pos, rows + (size_t)i * h.bytes_per_slot, &e);
	if (rc != KVS_OK)
		snprintf(why, why_cap, "%.150s", e.msg);
out:
	r->logits = NULL;
	r->acc = NULL;
	free(buf);
	return rc;
}

/* ---------------------------------------------------------------- recording */

/* Bind session id to ?1 of st and step to its row: KVS_OK on the row, else
 * the error (no such session, or SQLite's), with st finalized. */
static int store_step_session(struct store *s, sqlite3_stmt *st, int64_t id, struct err *e)
{
	sqlite3_bind_int64(st, 1, id);
	int r = sqlite3_step(st);
	if (r == SQLITE_ROW)
		return KVS_OK;
	int rc = r == SQLITE_DONE ? err_set(e, KVS_ENOTFOUND, "%s: no session with id %lld", s->path,
	                                    (long long)id)
	                          : store_fail(s, r, "reading a session", e);
	sqlite3_finalize(st);
	return rc;
}

int store_rec_open(struct store_rec **out, struct store *s, int64_t id, struct kv_cache *kv,
                   bool snapshots, struct err *e)
{
	sqlite3_stmt *st;
	*out = NULL;
	if (s->ro)
		return err_set(e, KVS_ESTATE, "%s: opened read-only; cannot record", s->path);
	int rc = store_prepare(s,
	                       "SELECT epoch, next_pos, (SELECT count(*) FROM turns WHERE session_id "
	                       "= ?1), (SELECT sha256 FROM snapshots WHERE session_id = ?1 ORDER BY "
	                       "turn DESC LIMIT 1) FROM sessions WHERE id = ?1",
	                       &st, e);
	if (rc != KVS_OK)
		return rc;
	rc = store_step_session(s, st, id, e);
	if (rc != KVS_OK)
		return rc;
	struct store_rec *rec = xcalloc(1, sizeof *rec);
	rec->s = s;
	rec->id = id;
	rec->kv = kv;
	rec->snapshots = snapshots;
	rec->epoch = rec->committed_epoch = (uint32_t)sqlite3_column_int64(st, 0);
	rec->committed_pos = (int32_t)sqlite3_column_int64(st, 1);
	rec->n_turns = (uint32_t)sqlite3_column_int64(st, 2);
	const unsigned char *sha = sqlite3_column_text(st, 3);
	if (sha != NULL)
		snprintf(rec->snap_sha, sizeof rec->snap_sha, "%s", (const char *)sha);
	sqlite3_finalize(st);
	struct kv_stats ks;
	kv_cache_stats(kv, &ks);
	rec->seen_mark = ks.n_seen;
	/* a cache that does not continue the session (a fresh one for an old
	 * session that was not resumed) starts a new epoch */
	if ((int32_t)ks.n_seen < rec->committed_pos || kv_cache_next_pos(kv) < rec->committed_pos) {
		rec->epoch++;
		rec->committed_pos = 0;
	}
	*out = rec;
	return KVS_OK;
}

static void rec_event_free(struct rec_event *ev)
{
	free(ev->policy);
	free(ev->fallback);
	free(ev->toks);
}

static void rec_turn_free(struct rec_turn *t)
{
	free((char *)t->t.user);
	free((char *)t->t.reply);
	free((char *)t->t.stop);
}

void store_rec_free(struct store_rec *r)
{
	if (r == NULL)
		return;
	for (size_t i = 0; i < r->n_ev; i++)
		rec_event_free(&r->ev[i]);
	for (size_t i = 0; i < r->n_pending; i++)
		rec_turn_free(&r->turns[i]);
	free(r->ev);
	free(r->turns);
	free(r->last);
	free(r);
}

/* Notice a cleared cache (its n_seen went back): a new epoch begins. */
static void rec_check_reset(struct store_rec *r, uint64_t n_seen)
{
	if (n_seen < r->seen_mark) {
		r->epoch++;
		struct rec_event ev = { .kind = KV_EVENT_TURN }; /* TURN marks a reset here */
		ev.turn = r->n_turns + (uint32_t)r->n_pending;
		ev.epoch = r->epoch;
		ev.at = store_now();
		if (r->n_ev == r->cap_ev) {
			r->cap_ev = r->cap_ev ? 2 * r->cap_ev : 16;
			r->ev = xreallocarray(r->ev, r->cap_ev, sizeof *r->ev);
		}
		r->ev[r->n_ev++] = ev;
	}
	r->seen_mark = n_seen;
}

void store_rec_event(struct store_rec *r, const struct kv_event *ev)
{
	rec_check_reset(r, ev->stats.n_seen);
	bool pin = ev->kind == KV_EVENT_PIN && ev->tok != NULL;
	if (ev->kind != KV_EVENT_EVICT && ev->kind != KV_EVENT_POLICY && !pin)
		return;
	if (r->n_ev == r->cap_ev) {
		r->cap_ev = r->cap_ev ? 2 * r->cap_ev : 16;
		r->ev = xreallocarray(r->ev, r->cap_ev, sizeof *r->ev);
	}
	struct rec_event *c = &r->ev[r->n_ev++];
	memset(c, 0, sizeof *c);
	c->kind = ev->kind;
	c->turn = r->n_turns + (uint32_t)r->n_pending;
	c->epoch = r->epoch;
	c->at = store_now();
	c->cause = ev->cause;
	c->policy = ev->policy ? xstrdup(ev->policy) : NULL;
	if (ev->kind == KV_EVENT_POLICY) {
		char buf[256];
		free(c->policy);
		c->policy = xstrdup(kv_policy_format(kv_cache_policy(r->kv), buf, sizeof buf));
		c->n_incoming = ev->stats.budget;
	}
	c->fallback = ev->fallback && ev->fallback_why ? xstrdup(ev->fallback_why) : NULL;
	c->n_incoming = ev->kind == KV_EVENT_EVICT ? ev->n_incoming : c->n_incoming;
	if (ev->kind == KV_EVENT_EVICT && ev->n_evicted > 0) {
		c->n = ev->n_evicted;
		c->toks = xmallocarray(c->n, sizeof *c->toks);
		memcpy(c->toks, ev->evicted, c->n * sizeof *c->toks);
	} else if (pin) {
		c->n = 1;
		c->toks = xmalloc(sizeof *c->toks);
		*c->toks = *ev->tok;
	}
}

void store_rec_turn(struct store_rec *r, const struct store_turn *t)
{
	struct kv_stats ks;
	kv_cache_stats(r->kv, &ks);
	rec_check_reset(r, ks.n_seen);
	if (r->n_pending == r->cap_turns) {
		r->cap_turns = r->cap_turns ? 2 * r->cap_turns : 4;
		r->turns = xreallocarray(r->turns, r->cap_turns, sizeof *r->turns);
	}
	struct rec_turn *q = &r->turns[r->n_pending++];
	q->t = *t;
	q->t.user = xstrdup(t->user ? t->user : "");
	q->t.reply = xstrdup(t->reply ? t->reply : "");
	q->t.stop = xstrdup(t->stop ? t->stop : "");
	q->epoch = r->epoch;
	q->end_pos = kv_cache_next_pos(r->kv);
}

uint32_t store_rec_pending(const struct store_rec *r)
{
	return (uint32_t)r->n_pending;
}

uint32_t store_rec_n_turns(const struct store_rec *r)
{
	return r->n_turns + (uint32_t)r->n_pending;
}

/* The pending turn that brought in the token at orig_pos of epoch. */
static uint32_t rec_token_turn(const struct store_rec *r, uint32_t epoch, int32_t orig_pos)
{
	for (size_t i = 0; i < r->n_pending; i++)
		if (r->turns[i].epoch > epoch || (r->turns[i].epoch == epoch && orig_pos < r->turns[i].end_pos))
			return r->n_turns + (uint32_t)i;
	return r->n_turns + (uint32_t)(r->n_pending ? r->n_pending - 1 : 0);
}

static void bind_float(sqlite3_stmt *st, int i, float v)
{
	if (isnan(v) || isinf(v))
		sqlite3_bind_null(st, i);
	else
		sqlite3_bind_double(st, i, v);
}

/* JSON list of [orig_pos, token, score] for an event's tokens (allocated). */
static char *rec_detail(const struct rec_event *ev)
{
	size_t cap = 32 + (size_t)ev->n * 48, n = 0;
	char *buf = xmalloc(cap);
	if (ev->kind == KV_EVENT_POLICY) {
		snprintf(buf, cap, "{\"policy\":\"%s\",\"budget\":%u}", ev->policy ? ev->policy : "",
		         ev->n_incoming);
		return buf;
	}
	buf[n++] = '[';
	for (uint32_t i = 0; i < ev->n; i++) {
		const struct kv_tok *t = &ev->toks[i];
		if (isnan(t->score) || isinf(t->score))
			n += (size_t)snprintf(buf + n, cap - n, "%s[%d,%d,null]", i ? "," : "", t->orig_pos,
			                      t->token);
		else
			n += (size_t)snprintf(buf + n, cap - n, "%s[%d,%d,%.6g]", i ? "," : "", t->orig_pos,
			                      t->token, (double)t->score);
	}
	snprintf(buf + n, cap - n, "]");
	return buf;
}

static const char *rec_kind_name(const struct rec_event *ev)
{
	switch (ev->kind) {
	case KV_EVENT_EVICT:
		return "evict";
	case KV_EVENT_POLICY:
		return "policy";
	case KV_EVENT_PIN:
		return ev->n && (ev->toks[0].flags & KV_FLAG_PINNED) ? "pin" : "unpin";
	default:
		return "reset";
	}
}

enum { SQ_TURN, SQ_TOK, SQ_EVICT, SQ_EVENT, SQ_RESET, SQ_SNAP, SQ_SESSION, SQ_PIN, SQ_N };

static const char *const rec_sql[SQ_N] = {
	[SQ_TURN] = "INSERT INTO turns (session_id, idx, user_text, reply, n_prompt, n_reply, "
	            "prefill_ms, decode_ms, stop, complete, started, committed) "
	            "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
	/* a token in the cache now: new row, or its latest position, flags and score */
	[SQ_TOK] = "INSERT INTO tokens (session_id, epoch, orig_pos, turn, kv_turn, token, role, pos, "
	           "flags, pinned, surprisal, entropy, score, kept) "
	           "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 1) "
	           "ON CONFLICT (session_id, epoch, orig_pos) DO UPDATE SET pos = excluded.pos, "
	           "flags = excluded.flags, pinned = excluded.pinned, score = excluded.score, kept = 1",
	/* an evicted token: new row, or the row marked evicted with its final score */
	[SQ_EVICT] = "INSERT INTO tokens (session_id, epoch, orig_pos, turn, kv_turn, token, role, "
	             "pos, flags, pinned, surprisal, entropy, score, kept, evicted_turn, "
	             "evicted_event) "
	             "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 0, ?14, ?15) "
	             "ON CONFLICT (session_id, epoch, orig_pos) DO UPDATE SET flags = excluded.flags, "
	             "pinned = excluded.pinned, score = excluded.score, kept = 0, "
	             "evicted_turn = excluded.evicted_turn, evicted_event = excluded.evicted_event",
	[SQ_EVENT] = "INSERT INTO memory_events (session_id, turn, at, kind, cause, policy, n_tokens, "
	             "n_incoming, fallback, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
	[SQ_RESET] = "UPDATE tokens SET kept = 0, evicted_turn = ?3, evicted_event = ?4 "
	             "WHERE session_id = ?1 AND epoch < ?2 AND kept",
	[SQ_SNAP] = "INSERT OR REPLACE INTO snapshots (session_id, turn, sha256, n_tokens, bytes, "
	            "created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
	[SQ_SESSION] = "UPDATE sessions SET updated = ?2, epoch = ?3, next_pos = ?4, kv_turn = ?5, "
	               "n_seen = ?6, n_evicted = ?7, n_evictions = ?8, policy = ?9, budget = ?10 "
	               "WHERE id = ?1",
	[SQ_PIN] = "UPDATE tokens SET pinned = ?4, flags = ?5 WHERE session_id = ?1 AND epoch = ?2 "
	           "AND orig_pos = ?3",
};

/* Step a prepared statement to completion and reset it. */
static int rec_step(struct store *s, sqlite3_stmt *st, const char *what, struct err *e)
{
	int r = sqlite3_step(st);
	sqlite3_reset(st);
	return r == SQLITE_DONE ? KVS_OK : store_fail(s, r, what, e);
}

/* Bind a token's columns 1..13 for SQ_TOK / SQ_EVICT. */
static void rec_bind_tok(sqlite3_stmt *st, const struct store_rec *r, uint32_t epoch,
                         const struct kv_tok *t)
{
	sqlite3_bind_int64(st, 1, r->id);
	sqlite3_bind_int64(st, 2, epoch);
	sqlite3_bind_int64(st, 3, t->orig_pos);
	sqlite3_bind_int64(st, 4, rec_token_turn(r, epoch, t->orig_pos));
	sqlite3_bind_int64(st, 5, t->turn);
	sqlite3_bind_int64(st, 6, t->token);
	sqlite3_bind_int64(st, 7, t->role);
	sqlite3_bind_int64(st, 8, t->pos);
	sqlite3_bind_int64(st, 9, t->flags);
	sqlite3_bind_int64(st, 10, (t->flags & KV_FLAG_PINNED) != 0);
	bind_float(st, 11, t->surprisal);
	bind_float(st, 12, t->entropy);
	bind_float(st, 13, t->score);
}

/* Everything pending, inside the open transaction. */
static int rec_write(struct store_rec *r, sqlite3_stmt **q, const char *snap_sha,
                     uint64_t snap_bytes, struct err *e)
{
	struct store *s = r->s;
	double now = store_now();
	char sql[160];
	int64_t have = 0;
	/* another kvscope may have resumed the same session and saved turns:
	 * never interleave two conversations in one session */
	snprintf(sql, sizeof sql, "SELECT count(*) FROM turns WHERE session_id = %lld",
	         (long long)r->id);
	int rc = store_int(s, sql, &have, e);
	if (rc == KVS_OK && have != (int64_t)r->n_turns)
		rc = err_set(e, KVS_ESTATE,
		             "%s: session %lld was saved meanwhile by another kvscope (%lld turns, "
		             "this one expected %u); not mixing the two conversations",
		             s->path, (long long)r->id, (long long)have, r->n_turns);
	for (size_t i = 0; i < r->n_pending && rc == KVS_OK; i++) {
		const struct store_turn *t = &r->turns[i].t;
		sqlite3_stmt *st = q[SQ_TURN];
		sqlite3_bind_int64(st, 1, r->id);
		sqlite3_bind_int64(st, 2, r->n_turns + (int64_t)i);
		sqlite3_bind_text(st, 3, t->user, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 4, t->reply, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 5, t->n_prompt);
		sqlite3_bind_int64(st, 6, t->n_reply);
		sqlite3_bind_double(st, 7, t->prefill_ms);
		sqlite3_bind_double(st, 8, t->decode_ms);
		sqlite3_bind_text(st, 9, t->stop, -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 10, t->complete);
		sqlite3_bind_double(st, 11, t->started);
		sqlite3_bind_double(st, 12, now);
		rc = rec_step(s, st, "saving a turn", e);
	}
	/* memory events in order, with the tokens they evicted */
	for (size_t i = 0; i < r->n_ev && rc == KVS_OK; i++) {
		struct rec_event *ev = &r->ev[i];
		sqlite3_stmt *st = q[SQ_EVENT];
		char *detail = rec_detail(ev);
		sqlite3_bind_int64(st, 1, r->id);
		sqlite3_bind_int64(st, 2, ev->turn);
		sqlite3_bind_double(st, 3, ev->at);
		sqlite3_bind_text(st, 4, rec_kind_name(ev), -1, SQLITE_STATIC);
		if (ev->kind == KV_EVENT_EVICT)
			sqlite3_bind_text(st, 5, kv_evict_cause_name(ev->cause), -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(st, 5);
		if (ev->policy)
			sqlite3_bind_text(st, 6, ev->policy, -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(st, 6);
		sqlite3_bind_int64(st, 7, ev->n);
		if (ev->kind == KV_EVENT_EVICT || ev->kind == KV_EVENT_POLICY)
			sqlite3_bind_int64(st, 8, ev->n_incoming);
		else
			sqlite3_bind_null(st, 8);
		if (ev->fallback)
			sqlite3_bind_text(st, 9, ev->fallback, -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(st, 9);
		sqlite3_bind_text(st, 10, detail, -1, SQLITE_TRANSIENT);
		free(detail);
		rc = rec_step(s, st, "saving a memory event", e);
		int64_t evid = sqlite3_last_insert_rowid(s->db);
		if (rc == KVS_OK && ev->kind == KV_EVENT_TURN) {
			st = q[SQ_RESET];
			sqlite3_bind_int64(st, 1, r->id);
			sqlite3_bind_int64(st, 2, ev->epoch);
			sqlite3_bind_int64(st, 3, ev->turn);
			sqlite3_bind_int64(st, 4, evid);
			rc = rec_step(s, st, "marking a cleared cache", e);
		}
		for (uint32_t k = 0; k < ev->n && rc == KVS_OK && ev->kind == KV_EVENT_EVICT; k++) {
			st = q[SQ_EVICT];
			rec_bind_tok(st, r, ev->epoch, &ev->toks[k]);
			sqlite3_bind_int64(st, 14, ev->turn);
			sqlite3_bind_int64(st, 15, evid);
			rc = rec_step(s, st, "saving an evicted token", e);
		}
		if (rc == KVS_OK && ev->kind == KV_EVENT_PIN) {
			st = q[SQ_PIN];
			sqlite3_bind_int64(st, 1, r->id);
			sqlite3_bind_int64(st, 2, ev->epoch);
			sqlite3_bind_int64(st, 3, ev->toks[0].orig_pos);
			sqlite3_bind_int64(st, 4, (ev->toks[0].flags & KV_FLAG_PINNED) != 0);
			sqlite3_bind_int64(st, 5, ev->toks[0].flags);
			rc = rec_step(s, st, "saving a pin", e);
		}
	}
	/* the cache as it is now: new tokens, and committed ones that changed */
	uint32_t n = kv_cache_n(r->kv), j = 0;
	const struct kv_tok *toks = kv_cache_toks(r->kv);
	bool same_epoch = r->epoch == r->committed_epoch;
	for (uint32_t i = 0; i < n && rc == KVS_OK; i++) {
		const struct kv_tok *t = &toks[i];
		if (same_epoch && t->orig_pos < r->committed_pos) {
			while (j < r->n_last && r->last[j].orig_pos < t->orig_pos)
				j++;
			const struct kv_tok *o = j < r->n_last ? &r->last[j] : NULL;
			if (o && o->orig_pos == t->orig_pos && o->pos == t->pos && o->flags == t->flags &&
			    (memcmp(&o->score, &t->score, sizeof t->score) == 0 ||
			     (isnan(o->score) && isnan(t->score))))
				continue;
		}
		rec_bind_tok(q[SQ_TOK], r, r->epoch, t);
		rc = rec_step(s, q[SQ_TOK], "saving a token", e);
	}
	uint32_t last = r->n_turns + (uint32_t)r->n_pending - 1;
	if (rc == KVS_OK && snap_sha != NULL) {
		sqlite3_stmt *st = q[SQ_SNAP];
		sqlite3_bind_int64(st, 1, r->id);
		sqlite3_bind_int64(st, 2, last);
		sqlite3_bind_text(st, 3, snap_sha, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 4, n);
		sqlite3_bind_int64(st, 5, (int64_t)snap_bytes);
		sqlite3_bind_double(st, 6, now);
		rc = rec_step(s, st, "saving a snapshot reference", e);
	}
	if (rc == KVS_OK) {
		/* one snapshot per session: the newest (or none when it failed) */
		snprintf(sql, sizeof sql, "DELETE FROM snapshots WHERE session_id = %lld AND turn <> %u",
		         (long long)r->id, snap_sha ? last : UINT32_MAX);
		rc = store_exec(s, sql, "dropping an old snapshot reference", e);
	}
	if (rc == KVS_OK) {
		struct kv_stats ks;
		kv_cache_stats(r->kv, &ks);
		sqlite3_stmt *st = q[SQ_SESSION];
		sqlite3_bind_int64(st, 1, r->id);
		sqlite3_bind_double(st, 2, now);
		sqlite3_bind_int64(st, 3, r->epoch);
		sqlite3_bind_int64(st, 4, kv_cache_next_pos(r->kv));
		sqlite3_bind_int64(st, 5, kv_cache_turn(r->kv));
		sqlite3_bind_int64(st, 6, (int64_t)ks.n_seen);
		sqlite3_bind_int64(st, 7, (int64_t)ks.n_evicted);
		sqlite3_bind_int64(st, 8, ks.n_evictions);
		char pol[256]; /* a /policy or /budget change applies on resume too */
		sqlite3_bind_text(st, 9, kv_policy_format(kv_cache_policy(r->kv), pol, sizeof pol), -1,
		                  SQLITE_TRANSIENT);
		sqlite3_bind_int64(st, 10, kv_cache_budget(r->kv));
		rc = rec_step(s, st, "updating the session", e);
	}
	return rc;
}

int store_rec_commit(struct store_rec *r, struct err *e)
{
	struct store *s = r->s;
	char sha[65] = "";
	uint64_t bytes = 0;
	bool snap = false;
	if (r->n_pending == 0)
		return KVS_OK;
	if (r->snapshots && kv_cache_n(r->kv) > 0) {
		char model_sha[65];
		struct err se;
		sqlite3_stmt *st;
		model_sha[0] = '\0';
		if (store_prepare(s, "SELECT model_sha256 FROM sessions WHERE id = ?", &st, &se) ==
		    KVS_OK) {
			sqlite3_bind_int64(st, 1, r->id);
			if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
				snprintf(model_sha, sizeof model_sha, "%s",
				         (const char *)sqlite3_column_text(st, 0));
			sqlite3_finalize(st);
		}
		if (strlen(model_sha) != 64)
			memset(model_sha, '0', 64), model_sha[64] = '\0';
		int src = snap_save(s, r->kv, model_sha, sha, &bytes, &se);
		snap = src == KVS_OK;
		if (!snap && src != KVS_EUNSUPPORTED)
			log_warn("KV snapshot not written (%s); resuming will recompute the cache", se.msg);
	}
	sqlite3_stmt *q[SQ_N] = { 0 };
	int rc = KVS_OK;
	for (int i = 0; i < SQ_N && rc == KVS_OK; i++)
		rc = store_prepare(s, rec_sql[i], &q[i], e);
	if (rc == KVS_OK)
		rc = store_exec(s, "BEGIN IMMEDIATE", "saving the turn", e);
	if (rc == KVS_OK) {
		rc = rec_write(r, q, snap ? sha : NULL, bytes, e);
		if (rc == KVS_OK)
			rc = store_exec(s, "COMMIT", "saving the turn", e);
		if (rc != KVS_OK)
			sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	}
	for (int i = 0; i < SQ_N; i++)
		sqlite3_finalize(q[i]);
	if (rc != KVS_OK) {
		if (snap && strcmp(sha, r->snap_sha) != 0)
			snap_unlink_unused(s, sha);
		err_prefix(e, "turn not saved (kept in memory; the next turn retries)");
		return rc;
	}
	char old[65];
	memcpy(old, r->snap_sha, sizeof old);
	memcpy(r->snap_sha, snap ? sha : "", snap ? 65 : 1);
	if (old[0] && strcmp(old, r->snap_sha) != 0)
		snap_unlink_unused(s, old);
	r->n_turns += (uint32_t)r->n_pending;
	for (size_t i = 0; i < r->n_pending; i++)
		rec_turn_free(&r->turns[i]);
	r->n_pending = 0;
	for (size_t i = 0; i < r->n_ev; i++)
		rec_event_free(&r->ev[i]);
	r->n_ev = 0;
	r->committed_epoch = r->epoch;
	r->committed_pos = kv_cache_next_pos(r->kv);
	r->n_last = kv_cache_n(r->kv);
	r->last = xreallocarray(r->last, r->n_last ? r->n_last : 1, sizeof *r->last);
	memcpy(r->last, kv_cache_toks(r->kv), r->n_last * sizeof *r->last);
	return KVS_OK;
}

/* ---------------------------------------------------------------- resuming */

int store_resume(struct store *s, int64_t id, struct kv_cache *kv, const char *model_sha256,
                 struct store_resume_info *info, struct err *e)
{
	sqlite3_stmt *st;
	memset(info, 0, sizeof *info);
	int rc = store_prepare(s,
	                       "SELECT epoch, next_pos, kv_turn, n_seen, n_evicted, n_evictions, "
	                       "model_sha256, (SELECT sha256 FROM snapshots WHERE session_id = ?1 "
	                       "ORDER BY turn DESC LIMIT 1) FROM sessions WHERE id = ?1",
	                       &st, e);
	if (rc != KVS_OK)
		return rc;
	rc = store_step_session(s, st, id, e);
	if (rc != KVS_OK)
		return rc;
	int64_t epoch = sqlite3_column_int64(st, 0);
	struct kv_restore kr = { 0 };
	kr.next_pos = (int32_t)sqlite3_column_int64(st, 1);
	kr.turn = (uint32_t)sqlite3_column_int64(st, 2);
	kr.n_seen = (uint64_t)sqlite3_column_int64(st, 3);
	kr.n_evicted = (uint64_t)sqlite3_column_int64(st, 4);
	kr.n_evictions = (uint32_t)sqlite3_column_int64(st, 5);
	char *sess_sha = col_str(st, 6), *snap_sha = col_str(st, 7);
	sqlite3_finalize(st);
	if (sess_sha == NULL || model_sha256 == NULL || strcmp(sess_sha, model_sha256) != 0) {
		rc = err_set(e, KVS_EARG,
		             "session %lld was recorded with model sha256 %.16s..., the model loaded "
		             "now has %.16s...; resume it with the same model file (--model)",
		             (long long)id, sess_sha ? sess_sha : "?", model_sha256 ? model_sha256 : "?");
		free(sess_sha);
		free(snap_sha);
		return rc;
	}
	free(sess_sha);
	/* the retained tokens */
	struct kv_tok *toks = NULL;
	size_t n = 0, cap = 0;
	rc = store_prepare(s,
	                   "SELECT token, orig_pos, pos, kv_turn, role, flags, surprisal, entropy, "
	                   "score FROM tokens WHERE session_id = ? AND epoch = ? AND kept "
	                   "ORDER BY orig_pos",
	                   &st, e);
	if (rc == KVS_OK) {
		sqlite3_bind_int64(st, 1, id);
		sqlite3_bind_int64(st, 2, epoch);
		int r;
		while ((r = sqlite3_step(st)) == SQLITE_ROW) {
			if (n == cap) {
				cap = cap ? 2 * cap : 256;
				toks = xreallocarray(toks, cap, sizeof *toks);
			}
			struct kv_tok *t = &toks[n++];
			memset(t, 0, sizeof *t);
			t->token = (int32_t)sqlite3_column_int64(st, 0);
			t->orig_pos = (int32_t)sqlite3_column_int64(st, 1);
			t->pos = (int32_t)sqlite3_column_int64(st, 2);
			t->turn = (uint32_t)sqlite3_column_int64(st, 3);
			t->role = (uint8_t)sqlite3_column_int64(st, 4);
			t->flags = (uint8_t)sqlite3_column_int64(st, 5);
			t->surprisal = sqlite3_column_type(st, 6) == SQLITE_NULL
			                   ? NAN : (float)sqlite3_column_double(st, 6);
			t->entropy = sqlite3_column_type(st, 7) == SQLITE_NULL
			                 ? NAN : (float)sqlite3_column_double(st, 7);
			t->score = sqlite3_column_type(st, 8) == SQLITE_NULL
			               ? NAN : (float)sqlite3_column_double(st, 8);
		}
		if (r != SQLITE_DONE)
			rc = store_fail(s, r, "reading the retained tokens", e);
		sqlite3_finalize(st);
	}
	kr.toks = toks;
	kr.n = (uint32_t)n;
	if (rc == KVS_OK) {
		info->n_tokens = (uint32_t)n;
		int sr = KVS_ENOTFOUND;
		if (snap_sha == NULL)
			snprintf(info->why, sizeof info->why, "no snapshot was saved");
		else
			sr = snap_load(s, snap_sha, model_sha256, toks, (uint32_t)n, &kr, kv, info->why,
			               sizeof info->why);
		info->from_snapshot = sr == KVS_OK;
		if (sr != KVS_OK) {
			rc = kv_cache_restore(kv, &kr, e);
			if (rc == KVS_OK)
				rc = kv_cache_recompute(kv, e);
			if (rc != KVS_OK)
				err_prefix(e, "session %lld", (long long)id);
		}
	}
	free(toks);
	free(snap_sha);
	return rc;
}

int store_turn_text(struct store *s, int64_t id, uint32_t i, char **user, char **reply,
                    struct err *e)
{
	sqlite3_stmt *st;
	*user = *reply = NULL;
	int rc = store_prepare(s, "SELECT user_text, reply FROM turns WHERE session_id = ? AND idx = ?",
	                       &st, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_int64(st, 2, i);
	int r = sqlite3_step(st);
	if (r == SQLITE_ROW) {
		*user = col_str(st, 0);
		*reply = col_str(st, 1);
	} else {
		rc = r == SQLITE_DONE ? err_set(e, KVS_ENOTFOUND, "session %lld has no turn %u",
		                                (long long)id, i)
		                      : store_fail(s, r, "reading a turn", e);
	}
	sqlite3_finalize(st);
	return rc;
}

/* ------------------------------------------------------------------ export */

static const char *const store_format_names[] = { "md", "json" };

int store_format_parse(const char *name, enum store_format *out, struct err *e)
{
	for (size_t i = 0; i < KVS_ARRAY_LEN(store_format_names); i++)
		if (strcmp(name, store_format_names[i]) == 0) {
			*out = (enum store_format)i;
			return KVS_OK;
		}
	return err_set(e, KVS_EARG, "export format '%s': expected md or json", name);
}

/* A JSON string (quotes included). */
static void json_str(FILE *fp, const char *s)
{
	fputc('"', fp);
	for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(fp, "\\%c", *p);
		else if (*p == '\n')
			fputs("\\n", fp);
		else if (*p == '\t')
			fputs("\\t", fp);
		else if (*p < 0x20)
			fprintf(fp, "\\u%04x", *p);
		else
			fputc(*p, fp);
	}
	fputc('"', fp);
}

/* Text for a Markdown quote block: every line prefixed with "> ". */
static void md_quote(FILE *fp, const char *s)
{
	fputs("> ", fp);
	for (const char *p = s ? s : ""; *p; p++) {
		fputc(*p, fp);
		if (*p == '\n')
			fputs("> ", fp);
	}
	fputc('\n', fp);
}

/* Print one column value as JSON (number, string or null). */
static void json_col(FILE *fp, sqlite3_stmt *st, int i)
{
	switch (sqlite3_column_type(st, i)) {
	case SQLITE_INTEGER:
		fprintf(fp, "%lld", (long long)sqlite3_column_int64(st, i));
		break;
	case SQLITE_FLOAT:
		fprintf(fp, "%.9g", sqlite3_column_double(st, i));
		break;
	case SQLITE_NULL:
		fputs("null", fp);
		break;
	default:
		json_str(fp, (const char *)sqlite3_column_text(st, i));
	}
}

/* The text of the tokens in an event's detail ("[[pos, id, score], ...]"),
 * as one JSON string or a Markdown code span. */
static void export_token_text(FILE *fp, const char *detail, const struct vocab *v, bool json)
{
	char piece[256], *buf = NULL;
	size_t n = 0, cap = 0;
	const char *p = detail;
	int pos, id;
	while ((p = strstr(p, "[")) != NULL) {
		if (sscanf(p, "[%d,%d,", &pos, &id) == 2) {
			size_t k = vocab_piece(v, id, true, piece, sizeof piece);
			k = KVS_MIN(k, sizeof piece);
			if (n + k + 1 > cap) {
				cap = KVS_MAX(2 * cap, n + k + 1);
				buf = xrealloc(buf, cap);
			}
			memcpy(buf + n, piece, k);
			n += k;
		}
		p++;
	}
	if (buf == NULL)
		buf = xstrdup("");
	buf[n] = '\0';
	/* a cut UTF-8 sequence or a control byte must not break the output */
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)buf[i] < 0x20 || buf[i] == '`')
			buf[i] = ' ';
	if (!utf8_valid((const uint8_t *)buf, n))
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)buf[i] >= 0x80)
				buf[i] = '?';
	if (json)
		json_str(fp, buf);
	else
		fprintf(fp, "`%s`", buf);
	free(buf);
}

/* A turn's memory events: Markdown list lines or a JSON array. */
static int export_events(struct store *s, int64_t id, int64_t turn, enum store_format fmt,
                         const struct vocab *v, FILE *fp, struct err *e)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s,
	                       "SELECT kind, cause, policy, n_tokens, n_incoming, fallback, detail, at "
	                       "FROM memory_events WHERE session_id = ? AND turn = ? ORDER BY id",
	                       &st, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_int64(st, 2, turn);
	static const char *const names[] = { "kind", "cause", "policy", "n_tokens", "n_incoming",
		                             "fallback", "detail", "at" };
	int r, k = 0;
	if (fmt == STORE_FMT_JSON)
		fputc('[', fp);
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		const char *kind = (const char *)sqlite3_column_text(st, 0);
		if (fmt == STORE_FMT_JSON) {
			fputs(k++ ? ",{" : "{", fp);
			for (int c = 0; c < 8; c++) {
				fprintf(fp, "%s\"%s\":", c ? "," : "", names[c]);
				if (c == 6)
					fputs((const char *)sqlite3_column_text(st, c), fp); /* already JSON */
				else
					json_col(fp, st, c);
			}
			if (v != NULL && strcmp(kind, "policy") != 0) {
				fputs(",\"text\":", fp);
				export_token_text(fp, (const char *)sqlite3_column_text(st, 6), v, true);
			}
			fputc('}', fp);
			continue;
		}
		if (k++ == 0)
			fputs("\nMemory events:\n\n", fp);
		const char *policy = (const char *)sqlite3_column_text(st, 2);
		if (strcmp(kind, "evict") == 0) {
			const char *fb = (const char *)sqlite3_column_text(st, 5);
			fprintf(fp,
			        "- evicted %lld tokens (cause: %s, making room for %lld; policy %s%s%s)",
			        (long long)sqlite3_column_int64(st, 3), sqlite3_column_text(st, 1),
			        (long long)sqlite3_column_int64(st, 4), policy ? policy : "?",
			        fb ? "; fallback: " : "", fb ? fb : "");
			if (v != NULL) {
				fputs(": ", fp);
				export_token_text(fp, (const char *)sqlite3_column_text(st, 6), v, false);
			}
			fprintf(fp, "; [position, token id, final score]: %s\n", sqlite3_column_text(st, 6));
		} else if (strcmp(kind, "policy") == 0) {
			fprintf(fp, "- policy changed: %s\n", sqlite3_column_text(st, 6));
		} else if (strcmp(kind, "reset") == 0) {
			fprintf(fp, "- the cache was cleared (a new conversation began)\n");
		} else {
			fprintf(fp, "- %s", kind);
			if (v != NULL) {
				fputs(" ", fp);
				export_token_text(fp, (const char *)sqlite3_column_text(st, 6), v, false);
			}
			fprintf(fp, ": [position, token id, score] %s\n", sqlite3_column_text(st, 6));
		}
	}
	if (fmt == STORE_FMT_JSON)
		fputc(']', fp);
	rc = r == SQLITE_DONE ? KVS_OK : store_fail(s, r, "reading memory events", e);
	sqlite3_finalize(st);
	return rc;
}

int store_export(struct store *s, int64_t id, enum store_format fmt, const struct vocab *v,
                 FILE *fp, struct err *e)
{
	struct store_session ss;
	sqlite3_stmt *st;
	int rc = store_session_get(s, id, &ss, e);
	if (rc != KVS_OK)
		return rc;
	if (fmt == STORE_FMT_JSON) {
		fprintf(fp, "{\"id\":%lld,\"title\":", (long long)ss.id);
		json_str(fp, ss.title);
		fputs(",\"model\":", fp);
		json_str(fp, ss.model_path);
		fputs(",\"model_sha256\":", fp);
		json_str(fp, ss.model_sha256);
		fputs(",\"arch\":", fp);
		json_str(fp, ss.arch);
		fputs(",\"policy\":", fp);
		json_str(fp, ss.policy);
		fprintf(fp, ",\"budget\":%u,\"n_ctx\":%u,\"sampler\":", ss.budget, ss.n_ctx);
		json_str(fp, ss.sampler);
		fputs(",\"system\":", fp);
		if (ss.system)
			json_str(fp, ss.system);
		else
			fputs("null", fp);
		fprintf(fp, ",\"created\":%.3f,\"updated\":%.3f,\"tokens\":%u,\"kept\":%u,\"turns\":[",
		        ss.created, ss.updated, ss.n_tokens, ss.n_kept);
	} else {
		fprintf(fp, "# %s\n\nSession %lld, model %s (%s, sha256 %s), KV policy %s, budget %u "
		            "tokens, context %u; sampler %s.\n",
		        ss.title, (long long)ss.id, ss.model_path, ss.arch, ss.model_sha256, ss.policy,
		        ss.budget, ss.n_ctx, ss.sampler);
		fprintf(fp, "%u tokens entered the cache, %u are kept now, %u were evicted.\n",
		        ss.n_tokens, ss.n_kept, ss.n_tokens - ss.n_kept);
		if (ss.system)
			fprintf(fp, "\nSystem prompt:\n\n"), md_quote(fp, ss.system);
	}
	rc = store_prepare(s,
	                   "SELECT idx, user_text, reply, n_prompt, n_reply, prefill_ms, decode_ms, "
	                   "stop, complete, started, (SELECT count(*) FROM tokens k WHERE "
	                   "k.session_id = t.session_id AND k.turn = t.idx), (SELECT count(*) FROM "
	                   "tokens k WHERE k.session_id = t.session_id AND k.turn = t.idx AND NOT "
	                   "k.kept) FROM turns t WHERE session_id = ? ORDER BY idx",
	                   &st, e);
	if (rc == KVS_OK) {
		int r, k = 0;
		sqlite3_bind_int64(st, 1, id);
		while (rc == KVS_OK && (r = sqlite3_step(st)) == SQLITE_ROW) {
			int64_t idx = sqlite3_column_int64(st, 0);
			if (fmt == STORE_FMT_JSON) {
				static const char *const names[] = { "index", "user", "reply", "n_prompt",
					                             "n_reply", "prefill_ms", "decode_ms", "stop",
					                             "complete", "started", "tokens",
					                             "tokens_evicted" };
				fputs(k++ ? ",{" : "{", fp);
				for (int c = 0; c < 12; c++) {
					fprintf(fp, "%s\"%s\":", c ? "," : "", names[c]);
					if (c == 8)
						fputs(sqlite3_column_int(st, c) ? "true" : "false", fp);
					else
						json_col(fp, st, c);
				}
				fputs(",\"memory_events\":", fp);
				rc = export_events(s, id, idx, fmt, v, fp, e);
				fputc('}', fp);
				continue;
			}
			fprintf(fp, "\n## Turn %lld%s\n\n**User:**\n\n", (long long)idx,
			        sqlite3_column_int(st, 8) ? "" : " (incomplete)");
			md_quote(fp, (const char *)sqlite3_column_text(st, 1));
			fputs("\n**Assistant:**\n\n", fp);
			md_quote(fp, (const char *)sqlite3_column_text(st, 2));
			fprintf(fp,
			        "\n%lld prompt tokens (%.0f ms), %lld reply tokens (%.0f ms), stop: %s; "
			        "%lld of its tokens have been evicted since.\n",
			        (long long)sqlite3_column_int64(st, 3), sqlite3_column_double(st, 5),
			        (long long)sqlite3_column_int64(st, 4), sqlite3_column_double(st, 6),
			        sqlite3_column_text(st, 7), (long long)sqlite3_column_int64(st, 11));
			rc = export_events(s, id, idx, fmt, v, fp, e);
		}
		if (rc == KVS_OK && r != SQLITE_DONE)
			rc = store_fail(s, r, "reading turns", e);
		sqlite3_finalize(st);
	}
	if (fmt == STORE_FMT_JSON)
		fputs("]}\n", fp);
	store_session_free(&ss);
	if (rc == KVS_OK && ferror(fp))
		rc = err_set(e, KVS_EIO, "export: write failed");
	return rc;
}
