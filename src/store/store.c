/*
 * store.c: dialogue memory in SQLite (the store layer; store.h says what it
 * keeps and doc/store.md how). This file owns the database handle: opening,
 * migrations, sessions, and the SQLite machinery the other store files share
 * through store-int.h. The KV snapshots are in store-snap.c, the recorder
 * (turns, token rows, memory events) in store-rec.c, export in
 * store-export.c.
 *
 * Durability: the database runs in WAL mode with synchronous=FULL, so a
 * transaction that COMMIT reported is on disk; foreign keys are on and
 * every writer waits busy_timeout for the lock.
 *
 * Opening never alters a file it refuses: the first 16 bytes are checked
 * for SQLite's header before SQLite sees the file, and the application id
 * and schema version are read before anything is written (WAL mode, the
 * migrations). Migrations are the SQL files in src/store/migrations/,
 * embedded at build time (scripts/embed-sql.sh); migration i sets
 * PRAGMA user_version = i, each in its own transaction.
 *
 * Opening is safe against the outside world (doc/store.md lists the
 * guarantees): SQLite gets a file: URI of the path, so no name is taken
 * for a temporary or in-memory database; processes creating one database
 * at once serialise on the WAL switch and on BEGIN IMMEDIATE, inside which
 * each migration rereads the version; readers on read-only media open it
 * immutable; a writer there is refused with one line. Session titles are
 * checked on the way in and keys are never empty (store-text.c).
 */
#include "store/store-int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STORE_BUSY_MS 5000      /* how long a writer waits for another's lock */

struct store_migration {
	const char *name;
	const char *sql;
};

static const struct store_migration store_migrations[] = {
#include "src/store/migrations.inc" /* generated in the build tree */
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

/* ------------------------------------- machinery shared through store-int.h */

/* Wall-clock time in seconds since the epoch. */
double store_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Fill e from SQLite's last error on the store, naming what was being done. */
int store_fail(struct store *s, int rc, const char *what, struct err *e)
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
	case SQLITE_FULL: return err_set(e, KVS_EIO, "%s: %s: the disk is full", s->path, what);
	case SQLITE_IOERR: return err_set(e, KVS_EIO, "%s: %s: I/O error (%s)", s->path, what, msg);
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return err_set(e, KVS_EFORMAT, "%s: %s: the database is damaged (%s)", s->path, what, msg);
	case SQLITE_READONLY:
		return err_set(e, KVS_EIO, "%s: %s: the database is read-only (%s)", s->path, what, msg);
	default: return err_set(e, KVS_EIO, "%s: %s: %s", s->path, what, msg);
	}
}

/* Run SQL without results. */
int store_exec(struct store *s, const char *sql, const char *what, struct err *e)
{
	int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
	return rc == SQLITE_OK ? KVS_OK : store_fail(s, rc, what, e);
}

/* Prepare one statement. */
int store_prepare(struct store *s, const char *sql, sqlite3_stmt **st, struct err *e)
{
	int rc = sqlite3_prepare_v2(s->db, sql, -1, st, NULL);
	return rc == SQLITE_OK ? KVS_OK : store_fail(s, rc, "preparing a statement", e);
}

/* One integer from a query without parameters (pragmas). */
int store_int(struct store *s, const char *sql, int64_t *out, struct err *e)
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

/* Column i of the current row as an allocated string (NULL for NULL). */
char *store_col_str(sqlite3_stmt *st, int i)
{
	const unsigned char *t = sqlite3_column_text(st, i);
	return t ? xstrdup((const char *)t) : NULL;
}

/* Prepare sql, bind session id to its ?1 and step to its row: KVS_OK with
 * *out on the row, else the error (no such session, or SQLite's), with
 * nothing left to finalize. */
int store_session_row(struct store *s, const char *sql, int64_t id, sqlite3_stmt **out,
                      struct err *e)
{
	int rc = store_prepare(s, sql, out, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_stmt *st = *out;
	sqlite3_bind_int64(st, 1, id);
	int r = sqlite3_step(st);
	if (r == SQLITE_ROW)
		return KVS_OK;
	rc = r == SQLITE_DONE
	        ? err_set(e, KVS_ENOTFOUND, "%s: no session with id %lld", s->path, (long long)id)
	        : store_fail(s, r, "reading a session", e);
	sqlite3_finalize(st);
	*out = NULL;
	return rc;
}

/* ---------------------------------------------------------------- opening */

/* One look at the header (check_header says why it may need two). */
static int store_check_header_once(const char *path, bool *exists, bool *short_file, struct err *e)
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
		return err_set(e, KVS_EFORMAT, "%s: not a regular file; expected a kvscope database", path);
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
	*short_file = page >= 512 && count_valid && (uint64_t)sb.st_size < (uint64_t)npages * page;
	if (page < 512 || (page & (page - 1)) != 0 || sb.st_size % page != 0 ||
	    (count_valid && (uint64_t)sb.st_size < (uint64_t)npages * page))
		return err_set(e, KVS_EFORMAT,
		               "%s: truncated SQLite database (%lld bytes; its header expects %llu); "
		               "the file was left as it is",
		               path, (long long)sb.st_size,
		               count_valid ? (unsigned long long)npages * page : 0ull);
	return KVS_OK;
}

/* Whether PATH-wal exists with something in it. */
static bool store_wal_nonempty(const char *path)
{
	char *wal = xasprintf("%s-wal", path);
	struct stat sb;
	bool yes = stat(wal, &sb) == 0 && sb.st_size > 0;
	free(wal);
	return yes;
}

/* Refuse a non-empty file that does not start with SQLite's header, or one
 * shorter than its header says. Except when a WAL with frames sits beside
 * it: a checkpoint writes page 1 (with the new page count) before the pages
 * that extend the file, so another process's checkpoint in flight, or one
 * killed half-way (crash-loop.sh hit it under load), leaves the file short
 * while the WAL still holds every committed page. SQLite reads those pages
 * from the WAL and finishes the checkpoint itself, so such a file is
 * handed to it, whose own checks judge it. */
int store_check_header(const char *path, bool *exists, struct err *e)
{
	bool short_file = false;
	int rc = store_check_header_once(path, exists, &short_file, e);
	if (rc != KVS_OK && short_file && store_wal_nonempty(path))
		return KVS_OK;
	return rc;
}

/* The application id, the schema version and the number of tables (a
 * foreign database has tables without our id), read in one statement: one
 * snapshot, so another process's migration is seen whole or not at all. */
static int store_identity(struct store *s, int64_t *app, int64_t *ver, int64_t *ntab, struct err *e)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s,
	                       "SELECT (SELECT application_id FROM pragma_application_id), "
	                       "(SELECT user_version FROM pragma_user_version), "
	                       "(SELECT count(*) FROM sqlite_schema WHERE type = 'table')",
	                       &st, e);
	if (rc != KVS_OK)
		return rc;
	int r = sqlite3_step(st);
	if (r == SQLITE_ROW) {
		*app = sqlite3_column_int64(st, 0);
		*ver = sqlite3_column_int64(st, 1);
		*ntab = sqlite3_column_int64(st, 2);
	}
	sqlite3_finalize(st);
	return r == SQLITE_ROW ? KVS_OK : store_fail(s, r, "reading the database header", e);
}

/* Apply the migrations after the current version, one transaction each.
 * The version is read again inside each BEGIN IMMEDIATE: two processes that
 * create the database at once both get here with version 0, and the second
 * must find the first one's tables instead of creating them again. */
static int store_migrate(struct store *s, struct err *e)
{
	while (s->version < store_schema_latest()) {
		char set[96];
		int64_t v = 0;
		int rc = store_exec(s, "BEGIN IMMEDIATE", "starting a migration", e);
		if (rc == KVS_OK)
			rc = store_int(s, "PRAGMA user_version", &v, e);
		if (rc == KVS_OK && v < 0)
			rc = err_set(e, KVS_EFORMAT, "%s: schema version %lld; expected 0 or more", s->path,
			             (long long)v);
		if (rc == KVS_OK && v > store_schema_latest())
			rc = err_set(e, KVS_EUNSUPPORTED,
			             "%s: schema version %lld was written by a newer kvscope (this one "
			             "knows up to %d)",
			             s->path, (long long)v, store_schema_latest());
		if (rc == KVS_OK && v >= store_schema_latest()) {
			rc = store_exec(s, "COMMIT", "committing a migration", e);
		} else if (rc == KVS_OK) {
			rc = store_exec(s, store_migrations[v].sql, store_migrations[v].name, e);
			snprintf(set, sizeof set, "PRAGMA user_version = %d; PRAGMA application_id = %d",
			         (int)v + 1, STORE_APP_ID);
			if (rc == KVS_OK)
				rc = store_exec(s, set, "setting the schema version", e);
			if (rc == KVS_OK)
				rc = store_exec(s, "COMMIT", "committing a migration", e);
			v++;
		}
		if (rc != KVS_OK) {
			sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
			return rc;
		}
		s->version = (int)v;
	}
	return KVS_OK;
}

/* Switch the database to WAL mode. SQLite answers a switch that meets
 * another connection's lock with SQLITE_BUSY at once, without its busy
 * handler (two processes creating the database together do), so wait here
 * as a writer waits for a lock: up to STORE_BUSY_MS, a try every 10 ms. */
static int store_wal(struct store *s, struct err *e)
{
	for (int waited = 0;; waited += 10) {
		int r = sqlite3_exec(s->db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL);
		if (r == SQLITE_OK)
			return KVS_OK;
		if ((r & 0xff) != SQLITE_BUSY || waited >= STORE_BUSY_MS)
			return store_fail(s, r, "switching to WAL mode", e);
		sqlite3_sleep(10);
	}
}

/* 0 when the folder that holds path lets us create files (the WAL, its
 * index, the snapshot folder), else why not (an errno). */
static int store_dir_access(const char *path)
{
	char *dir = xstrdup(path), *slash = strrchr(dir, '/');
	int err;
	if (slash == NULL)
		strcpy(dir, ".");
	else if (slash == dir)
		dir[1] = '\0';
	else
		*slash = '\0';
	err = access(dir, W_OK) == 0 ? 0 : errno;
	free(dir);
	return err;
}

/* Whether path-wal holds log records (a write not yet checkpointed). */
static bool store_wal_has_data(const char *path)
{
	struct stat sb;
	char *wal = xasprintf("%s-wal", path);
	bool has = stat(wal, &sb) == 0 && sb.st_size > 0;
	free(wal);
	return has;
}

/* The SQLite URI of path: bytes other than unreserved ones and '/'
 * percent-encoded and a relative path led by "./", so that no name (":memory:",
 * "file:x?mode=memory", one with '?' or '#') means anything to SQLite but
 * that file; query is "" or a query string ("?immutable=1", "?mode=ro"). */
char *store_uri(const char *path, const char *query)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = strlen(path);
	char *u = xmalloc(3 * n + strlen(query) + 16), *o = u;
	o += sprintf(o, path[0] == '/' ? "file://" : "file:./");
	for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		    strchr("-._~/", *p) != NULL) {
			*o++ = (char)*p;
		} else {
			*o++ = '%';
			*o++ = hex[*p >> 4];
			*o++ = hex[*p & 15];
		}
	}
	strcpy(o, query);
	return u;
}

/* Open s->db on the file (read-only: immutable when the folder cannot hold
 * the WAL index and no log is waiting), extended codes and busy timeout on. */
static int store_connect(struct store *s, struct err *e)
{
	bool immutable = s->ro && store_dir_access(s->path) != 0 && !store_wal_has_data(s->path);
	int flags = s->ro ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
	char *uri = store_uri(s->path, immutable ? "?immutable=1" : "");
	int r = sqlite3_open_v2(uri, &s->db, flags | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI, NULL);
	free(uri);
	if (r != SQLITE_OK)
		return err_set(e, KVS_EIO, "%s: cannot open the database: %s", s->path,
		               s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(r));
	sqlite3_extended_result_codes(s->db, 1);
	sqlite3_busy_timeout(s->db, STORE_BUSY_MS);
	return KVS_OK;
}

int store_open(struct store **out, const char *path, enum store_mode mode, struct err *e)
{
	bool exists;
	*out = NULL;
	if (path == NULL || path[strspn(path, " \t")] == '\0')
		return err_set(e, KVS_EARG, "empty database path; expected a file name (--db PATH)");
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
	int why = mode == STORE_RW ? store_dir_access(path) : 0;
	if (why == EACCES || why == EROFS || why == EPERM)
		return err_set(e, KVS_EIO, "%s: read-only (folder not writable); cannot save", path);
	struct store *s = xcalloc(1, sizeof *s);
	s->path = xstrdup(path);
	s->snapdir = xasprintf("%s-kv", path);
	s->ro = mode == STORE_RO;
	rc = store_connect(s, e);
	if (rc == KVS_OK && !s->ro && sqlite3_db_readonly(s->db, "main") == 1)
		rc = err_set(e, KVS_EIO, "%s: read-only (file not writable); cannot save", path);
	if (rc != KVS_OK) {
		store_close(s);
		return rc;
	}
	/* read-only checks first: nothing is written to a file we refuse */
	int64_t app = 0, ver = 0, ntab = 0;
	rc = store_identity(s, &app, &ver, &ntab, e);
	if (rc != KVS_OK && s->ro && store_wal_has_data(path) && store_dir_access(path) != 0)
		rc = err_set(e, KVS_EIO,
		             "%s: read-only folder, and a write-ahead log (%s-wal) not yet merged into "
		             "the database; open it once where the folder is writable",
		             path, path);
	if (rc == KVS_OK && app != STORE_APP_ID && ntab > 0)
		rc = err_set(e, KVS_EFORMAT,
		             "%s: a SQLite database of another program (application id %lld, %lld "
		             "tables); expected a kvscope database; the file was left as it is",
		             path, (long long)app, (long long)ntab);
	if (rc == KVS_OK && ver < 0)
		rc = err_set(e, KVS_EFORMAT,
		             "%s: schema version %lld; expected 0 or more (a kvscope database); the "
		             "file was left as it is",
		             path, (long long)ver);
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
		rc = store_wal(s, e);
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

void store_session_free(struct store_session *s)
{
	free(s->title);
	free(s->model_path);
	free(s->model_sha256);
	free(s->arch);
	free(s->policy);
	free(s->sampler);
	free(s->system);
	free(s->sparse);
	memset(s, 0, sizeof *s);
}

int store_session_create(struct store *s, const struct store_session *in, int64_t *id,
                         struct err *e)
{
	sqlite3_stmt *st;
	double now = store_now();
	if (in->title != NULL && in->title[0] != '\0' && store_title_check(in->title, e) != KVS_OK)
		return KVS_EARG;
	int rc = store_prepare(s,
	                       "INSERT INTO sessions (title, model_path, model_sha256, arch, policy, "
	                       "budget, n_ctx, sampler, system, created, updated, sparse) VALUES "
	                       "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
	if (in->sparse && in->sparse[0])
		sqlite3_bind_text(st, 12, in->sparse, -1, SQLITE_TRANSIENT);
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

#define SESSION_COLS                                                                               \
	"s.id, s.title, s.model_path, s.model_sha256, s.arch, s.policy, s.budget, s.n_ctx, "           \
	"s.sampler, s.system, s.created, s.updated, "                                                  \
	"(SELECT count(*) FROM turns t WHERE t.session_id = s.id), "                                   \
	"(SELECT count(*) FROM turns t WHERE t.session_id = s.id AND NOT t.complete), "                \
	"(SELECT count(*) FROM tokens k WHERE k.session_id = s.id), "                                  \
	"(SELECT count(*) FROM tokens k WHERE k.session_id = s.id AND k.epoch = s.epoch AND k.kept), " \
	"s.sparse"

static void session_row(sqlite3_stmt *st, struct store_session *o)
{
	memset(o, 0, sizeof *o);
	o->id = sqlite3_column_int64(st, 0);
	o->title = store_col_str(st, 1);
	o->model_path = store_col_str(st, 2);
	o->model_sha256 = store_col_str(st, 3);
	o->arch = store_col_str(st, 4);
	o->policy = store_col_str(st, 5);
	o->budget = (uint32_t)sqlite3_column_int64(st, 6);
	o->n_ctx = (uint32_t)sqlite3_column_int64(st, 7);
	o->sampler = store_col_str(st, 8);
	o->system = store_col_str(st, 9);
	o->created = sqlite3_column_double(st, 10);
	o->updated = sqlite3_column_double(st, 11);
	o->n_turns = (uint32_t)sqlite3_column_int64(st, 12);
	o->n_incomplete = (uint32_t)sqlite3_column_int64(st, 13);
	o->n_tokens = (uint32_t)sqlite3_column_int64(st, 14);
	o->n_kept = (uint32_t)sqlite3_column_int64(st, 15);
	o->sparse = store_col_str(st, 16);
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
	int rc = store_prepare(s,
	                       "SELECT " SESSION_COLS " FROM sessions s ORDER BY s.updated DESC, "
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
	bool numeric;
	long long v = 0;
	if (key != NULL && store_key_check(key, e) != KVS_OK)
		return KVS_EARG;
	/* an id is digits only: " 1" or "+1" is a title */
	numeric = key != NULL && strspn(key, "0123456789") == strlen(key);
	if (numeric) {
		errno = 0;
		v = strtoll(key, &end, 10);
		numeric = errno == 0 && v > 0;
	}
	const char *sql = numeric ? "SELECT id FROM sessions WHERE id = ?1 UNION ALL "
	                            "SELECT id FROM sessions WHERE title = ?2"
	        : key             ? "SELECT id FROM sessions WHERE title = ?2 ORDER BY "
	                            "updated DESC, id DESC"
	                          : "SELECT id FROM sessions ORDER BY updated DESC, id DESC";
	int rc = store_prepare(s, sql, &st, e);
	if (rc != KVS_OK)
		return rc;
	if (numeric)
		sqlite3_bind_int64(st, 1, v);
	if (key)
		sqlite3_bind_text(st, 2, key, -1, SQLITE_TRANSIENT);
	int r = sqlite3_step(st);
	if (r == SQLITE_ROW) {
		*id = sqlite3_column_int64(st, 0);
	} else if (r == SQLITE_DONE && key) {
		char *k = store_text_escape(key, 0);
		rc = err_set(e, KVS_ENOTFOUND,
		             "%s: no session with id or title '%s' (kvscope sessions list shows them)",
		             s->path, k);
		free(k);
	} else if (r == SQLITE_DONE) {
		rc = err_set(e, KVS_ENOTFOUND, "%s: no sessions saved yet", s->path);
	} else {
		rc = store_fail(s, r, "finding a session", e);
	}
	sqlite3_finalize(st);
	return rc;
}

int store_session_set_title(struct store *s, int64_t id, const char *title, struct err *e)
{
	sqlite3_stmt *st;
	if (store_title_check(title, e) != KVS_OK)
		return KVS_EARG;
	int rc = store_prepare(s, "UPDATE sessions SET title = ? WHERE id = ?", &st, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_bind_text(st, 1, title, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, id);
	int r = sqlite3_step(st);
	sqlite3_finalize(st);
	return r == SQLITE_DONE ? KVS_OK : store_fail(s, r, "renaming a session", e);
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
		shas[n++] = store_col_str(st, 0);
	}
	sqlite3_finalize(st);
	/* its cold blocks' K/V rows go in the same transaction (a crash between
	 * the two files' commits leaves rows that the next writer deletes) */
	struct err ke;
	bool kv = cold_kv_attach(s, false, &ke) == KVS_OK;
	rc = store_exec(s, "BEGIN IMMEDIATE", "deleting a session", e);
	if (rc == KVS_OK)
		rc = store_prepare(s, "DELETE FROM sessions WHERE id = ?", &st, e);
	if (rc == KVS_OK) {
		sqlite3_bind_int64(st, 1, id);
		int r = sqlite3_step(st);
		if (r != SQLITE_DONE)
			rc = store_fail(s, r, "deleting a session", e);
		else if (sqlite3_changes(s->db) == 0)
			rc = err_set(e, KVS_ENOTFOUND, "%s: no session with id %lld", s->path, (long long)id);
		sqlite3_finalize(st);
	}
	if (rc == KVS_OK && kv) {
		char sql[96];
		snprintf(sql, sizeof sql, "DELETE FROM cold.cold_kv WHERE session_id = %lld",
		         (long long)id);
		rc = store_exec(s, sql, "deleting a session's cold K/V rows", e);
	}
	if (rc == KVS_OK)
		rc = store_exec(s, "COMMIT", "deleting a session", e);
	else
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	for (size_t i = 0; i < n; i++) {
		if (rc == KVS_OK)
			store_snap_unlink_unused(s, shas[i]);
		free(shas[i]);
	}
	free(shas);
	return rc;
}

int store_check(struct store *s, struct err *e)
{
	sqlite3_stmt *st;
	struct err ke;
	(void)cold_kv_attach(s, false, &ke); /* checked too when it is there */
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
	struct err ke;
	int rc = store_exec(s, "VACUUM", "vacuuming", e);
	if (rc == KVS_OK && cold_kv_attach(s, false, &ke) == KVS_OK)
		rc = store_exec(s, "VACUUM cold", "vacuuming the cold K/V file", e);
	return rc == KVS_OK ? store_snap_sweep(s, e) : rc;
}

int store_model_sha256(struct store *s, const char *path, char out[65], struct err *e)
{
	struct stat sb;
	sqlite3_stmt *st;
	if (stat(path, &sb) != 0)
		return err_set(e, KVS_EIO, "%s: cannot stat: %s", path, strerror(errno));
	int64_t mtime = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
	int rc = store_prepare(s,
	                       "SELECT sha256 FROM model_files WHERE path = ? AND size = ? AND "
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
		if (store_is_sha256((const char *)t)) { /* a SHA-256, whatever the file holds */
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
