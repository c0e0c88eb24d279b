/*
 * test-store.c: the store layer (src/store) against independent facts.
 *
 *   - a new database has the latest schema, WAL, synchronous=FULL and
 *     foreign keys on (read back through SQLite itself);
 *   - a garbage file, a truncated database, another program's database and
 *     one from a newer kvscope are refused with a message naming the
 *     problem, and their bytes are unchanged;
 *   - recording a dialogue on a tiny model: every token that entered the
 *     cache has a row, the kept ones equal the cache's tokens, the evicted
 *     ones number the cache's count and carry their eviction event; turns
 *     and memory events are all there;
 *   - resume from the snapshot gives the closed session's next-token
 *     logits bit for bit; with the snapshot missing or damaged, the
 *     recompute path gives the same token ids and logits within 1e-3 (no
 *     eviction: the recomputed keys saw the same context);
 *   - I/O errors (an SQLite VFS shim failing writes, SQLITE_FULL): the
 *     commit fails with a clear message, the turn stays queued, what was
 *     committed is intact, and the next commit writes both turns;
 *   - a second writer holding the lock: the commit waits, then fails with a
 *     clear message; readers are fine; afterwards the commit goes through;
 *     a second kvscope that saved turns to the same session first makes the
 *     other's commit fail clearly instead of mixing the conversations;
 *   - a snapshot that cannot be written costs only the snapshot;
 *   - names read from a database never become paths unless they are a
 *     SHA-256 (a crafted "../victim" is neither unlinked on delete, commit
 *     or vacuum nor read on resume), and a snapshot folder that is a
 *     symbolic link is neither written nor swept;
 *   - processes that open a new database at once each find it created once
 *     (forked children started together, many rounds);
 *   - a database in a folder that is not writable is read (list, export)
 *     and refused for writing with "read-only (folder not writable)" (in a
 *     child that drops root, where that is possible);
 *   - session keys: empty and blank are errors, ids are digits only,
 *     titles match exactly; titles that are blank, invalid UTF-8 or hold a
 *     control character are refused on the way in; store_text_escape
 *     against hand-written expectations;
 *   - export of a crafted database (control bytes, invalid UTF-8, quotes,
 *     backslashes, infinite times, a detail that is not JSON): the JSON is
 *     valid (a real parser, python3, when present, and byte checks) and the
 *     Markdown holds no control character and only valid UTF-8.
 */
#include "engine/engine.h"
#include "model/model.h"
#include "store/store.h"
#include "tests/unit/test.h"
#include "tests/util/ggufw.h"
#include "tests/util/sqlq.h"
#include "tests/util/tinymodel.h"

#include <sqlite3.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[256];

/* ------------------------------------------------------------- helpers */

/* Hex SHA-256 of data[0, n) (tests/unit/test-sha256.c checks the hash). */
static void hex_of(const void *data, size_t n, char out[65])
{
	struct sha256 s;
	uint8_t d[32];
	sha256_init(&s);
	sha256_update(&s, data, n);
	sha256_final(&s, d);
	sha256_hex(d, out);
}

static char *tpath(const char *name)
{
	return xasprintf("%s/%s", tmpdir, name);
}

static void write_file(const char *path, const void *p, size_t n)
{
	FILE *fp = fopen(path, "wb");
	fwrite(p, 1, n, fp);
	fclose(fp);
}

static char *read_file(const char *path, size_t *n)
{
	char *buf;
	struct err e;
	if (file_read_all(path, &buf, n, &e) != KVS_OK)
		return NULL;
	return buf;
}

/* ------------------------------------------------------------- opening */

static void test_open_new(void)
{
	char *p = tpath("new/dir/memory.db");
	struct store *s;
	struct err e;
	T_EQ_INT(store_open(&s, p, STORE_RW, &e), KVS_OK);
	T_EQ_INT(store_schema_version(s), store_schema_latest());
	T_CHECK(store_schema_latest() >= 1, "no migrations embedded");
	store_close(s);
	T_EQ_INT(sqlq_int(p, "PRAGMA user_version"), store_schema_latest());
	T_EQ_INT(sqlq_int(p, "PRAGMA application_id"), 0x6b767363);
	char *jm = sqlq_text(p, "PRAGMA journal_mode");
	T_EQ_STR(jm, "wal");
	free(jm);
	T_EQ_INT(sqlq_int(p,
	                  "SELECT count(*) FROM sqlite_schema WHERE name IN ('sessions', 'turns', "
	                  "'tokens', 'memory_events', 'snapshots')"),
	         5);
	/* the pragmas that are per connection, as the store sets them */
	T_EQ_INT(store_open(&s, p, STORE_RW, &e), KVS_OK);
	store_close(s);
	/* read-only open of a missing file: not found, nothing created */
	char *q = tpath("missing.db");
	T_EQ_INT(store_open(&s, q, STORE_RO, &e), KVS_ENOTFOUND);
	T_CHECK(access(q, F_OK) != 0, "read-only open created %s", q);
	free(q);
	free(p);
}

/* Open path read-write; expect code, a message containing word, and the
 * file's bytes unchanged. */
static void expect_refused(const char *path, int code, const char *word)
{
	size_t n0, n1;
	char *before = read_file(path, &n0), *after;
	struct store *s;
	struct err e;
	T_EQ_INT(store_open(&s, path, STORE_RW, &e), code);
	T_CHECK(strstr(e.msg, word) != NULL, "message '%s' lacks '%s'", e.msg, word);
	after = read_file(path, &n1);
	T_CHECK(before && after && n0 == n1 && memcmp(before, after, n0) == 0,
	        "%s was modified (%zu -> %zu bytes)", path, n0, n1);
	char *wal = xasprintf("%s-wal", path);
	T_CHECK(access(wal, F_OK) != 0, "a WAL file was created for %s", path);
	free(wal);
	free(before);
	free(after);
}

static void test_refusals(void)
{
	char *p = tpath("garbage.db");
	char junk[4096];
	for (size_t i = 0; i < sizeof junk; i++)
		junk[i] = (char)(i * 7 + 3);
	write_file(p, junk, sizeof junk);
	expect_refused(p, KVS_EFORMAT, "not a SQLite database");
	free(p);

	/* a real kvscope database, then cut short */
	char *good = tpath("good.db");
	struct store *s;
	struct err e;
	T_EQ_INT(store_open(&s, good, STORE_RW, &e), KVS_OK);
	store_close(s);
	size_t n;
	char *bytes = read_file(good, &n);
	T_CHECK(n > 8192, "database only %zu bytes", n);
	p = tpath("truncated.db");
	write_file(p, bytes, 300);
	expect_refused(p, KVS_EFORMAT, "truncated");
	write_file(p, bytes, 5000);
	expect_refused(p, KVS_EFORMAT, "truncated");
	write_file(p, bytes, 8192); /* whole pages, fewer than the header says */
	expect_refused(p, KVS_EFORMAT, "truncated");
	/* garbage over the schema's records (the end of page 1) */
	memset(bytes + 2048, 0x5a, 2048);
	write_file(p, bytes, n);
	expect_refused(p, KVS_EFORMAT, "damaged");
	free(bytes);
	free(p);

	/* another program's database */
	p = tpath("foreign.db");
	sqlite3 *db;
	sqlite3_open(p, &db);
	sqlite3_exec(db, "CREATE TABLE recipes (name TEXT); INSERT INTO recipes VALUES ('soup')", NULL,
	             NULL, NULL);
	sqlite3_close(db);
	expect_refused(p, KVS_EFORMAT, "another program");
	free(p);

	/* a newer kvscope's */
	sqlite3_open(good, &db);
	sqlite3_exec(db, "PRAGMA journal_mode = DELETE; PRAGMA user_version = 999", NULL, NULL, NULL);
	sqlite3_close(db);
	expect_refused(good, KVS_EUNSUPPORTED, "newer kvscope");
	/* a negative version (a crafted file) would index before the migrations */
	sqlite3_open(good, &db);
	sqlite3_exec(db, "PRAGMA user_version = -3", NULL, NULL, NULL);
	sqlite3_close(db);
	expect_refused(good, KVS_EFORMAT, "expected 0 or more");
	free(good);
}

/* -------------------------------------------------------- a tiny model */

struct tiny {
	struct model *m;
	uint8_t *buf;
	char sha[65];
};

static void tiny_open(struct tiny *t)
{
	struct tinymodel_spec s;
	struct ggufw *w = ggufw_new();
	struct gguf_file *f;
	struct err e;
	size_t n;
	tinymodel_defaults(&s, "llama");
	s.n_embd = 64;
	s.n_ff = 128;
	s.scale = 0.5f;
	tinymodel_add(w, &s);
	ggufw_write_mem(w, &t->buf, &n);
	ggufw_free(w);
	if (gguf_open_memory(&f, t->buf, n, &e) != KVS_OK || model_load_gguf(&t->m, f, &e) != KVS_OK) {
		fprintf(stderr, "tiny model: %s\n", e.msg);
		exit(99);
	}
	hex_of(t->buf, n, t->sha);
}

struct run {
	struct engine *eng;
	struct kv_cache *kv;
	struct store_rec *rec;
};

static void run_events(const struct kv_event *ev, void *ud)
{
	struct run *r = ud;
	if (r->rec)
		store_rec_event(r->rec, ev);
}

static void run_open(struct run *r, const struct model *m, const char *policy, uint32_t budget)
{
	struct engine_config c;
	struct kv_config kc;
	struct err e;
	engine_config_default(&c);
	c.backend = ENGINE_BACKEND_CPU;
	c.n_threads = 1;
	c.n_ctx = 128;
	c.kv_type = ENGINE_KV_F32;
	kv_config_default(&kc);
	kv_policy_parse(policy, &kc.policy, NULL);
	kc.budget = budget;
	kc.n_batch = 16;
	kc.token_stats = KV_TOKSTATS_ON;
	if (engine_create(&r->eng, m, &c, &e) != KVS_OK || kv_cache_create(&r->kv, r->eng, &kc, &e)) {
		fprintf(stderr, "engine: %s\n", e.msg);
		exit(99);
	}
	r->rec = NULL;
	kv_cache_set_events(r->kv, run_events, r);
}

static void run_close(struct run *r)
{
	store_rec_free(r->rec);
	kv_cache_free(r->kv);
	engine_free(r->eng);
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static int32_t rnd_tok(uint32_t nv)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return 3 + (int32_t)((rng >> 11) % (nv - 3));
}

/* One turn: m user tokens, then k "reply" tokens one at a time; queued. */
static void run_turn(struct run *r, uint32_t nv, uint32_t m, uint32_t k, const char *text)
{
	int32_t ids[64];
	struct err e;
	for (uint32_t i = 0; i < m; i++)
		ids[i] = rnd_tok(nv);
	T_EQ_INT(kv_cache_begin_turn(r->kv, KV_ROLE_USER, m, &e), KVS_OK);
	T_EQ_INT(kv_cache_feed(r->kv, ids, m, &e), KVS_OK);
	kv_cache_set_role(r->kv, KV_ROLE_ASSISTANT);
	for (uint32_t i = 0; i < k; i++) {
		int32_t id = rnd_tok(nv);
		T_EQ_INT(kv_cache_feed(r->kv, &id, 1, &e), KVS_OK);
	}
	struct store_turn t = { .user = text,
		                    .reply = "a reply",
		                    .stop = "max-tokens",
		                    .complete = true,
		                    .n_prompt = m,
		                    .n_reply = k,
		                    .started = 1.0 };
	store_rec_turn(r->rec, &t);
}

static int64_t new_session(struct store *s, const char *sha, const char *title)
{
	struct store_session in = { .title = (char *)title,
		                        .model_path = (char *)"tiny.gguf",
		                        .model_sha256 = (char *)sha,
		                        .arch = (char *)"llama",
		                        .policy = (char *)"streaming",
		                        .sampler = (char *)"temp=0" };
	int64_t id = 0;
	struct err e;
	T_EQ_INT(store_session_create(s, &in, &id, &e), KVS_OK);
	return id;
}

/* Max |difference| of the next-token logits of a and b over probe tokens. */
static double probe(struct kv_cache *a, struct kv_cache *b, uint32_t nv)
{
	double mx = 0;
	struct err e;
	for (int i = 0; i < 3; i++) {
		int32_t id = rnd_tok(nv);
		T_EQ_INT(kv_cache_feed(a, &id, 1, &e), KVS_OK);
		T_EQ_INT(kv_cache_feed(b, &id, 1, &e), KVS_OK);
		for (uint32_t v = 0; v < nv; v++)
			mx = fmax(mx, fabs((double)kv_cache_logits(a)[v] - kv_cache_logits(b)[v]));
	}
	return mx;
}

static void test_record_resume(const struct tiny *t, const char *policy, bool evicts)
{
	char name[64];
	snprintf(name, sizeof name, "rec-%s.db", policy);
	char *p = tpath(name);
	uint32_t nv = t->m->hp.n_vocab;
	struct store *s;
	struct err e;
	struct run a;
	T_EQ_INT(store_open(&s, p, STORE_RW, &e), KVS_OK);
	int64_t id = new_session(s, t->sha, policy);
	run_open(&a, t->m, policy, evicts ? 48 : 120);
	T_EQ_INT(store_rec_open(&a.rec, s, id, a.kv, true, &e), KVS_OK);
	uint32_t turns = evicts ? 6 : 3;
	for (uint32_t i = 0; i < turns; i++) {
		run_turn(&a, nv, 12, 8, "hello");
		T_EQ_INT(store_rec_commit(a.rec, &e), KVS_OK);
	}
	T_EQ_INT(store_rec_pending(a.rec), 0);
	struct kv_stats st;
	kv_cache_stats(a.kv, &st);
	T_CHECK(evicts == (st.n_evicted > 0), "%s: %llu evicted", policy,
	        (unsigned long long)st.n_evicted);
	char sql[256];
	snprintf(sql, sizeof sql, "SELECT count(*) FROM turns WHERE session_id = %lld", (long long)id);
	T_EQ_INT(sqlq_int(p, sql), turns);
	snprintf(sql, sizeof sql, "SELECT count(*) FROM tokens WHERE session_id = %lld", (long long)id);
	T_EQ_INT(sqlq_int(p, sql), st.n_seen);
	snprintf(sql, sizeof sql, "SELECT count(*) FROM tokens WHERE session_id = %lld AND kept",
	         (long long)id);
	T_EQ_INT(sqlq_int(p, sql), kv_cache_n(a.kv));
	snprintf(sql, sizeof sql,
	         "SELECT count(*) FROM tokens WHERE session_id = %lld AND NOT kept "
	         "AND evicted_event IS NOT NULL",
	         (long long)id);
	T_EQ_INT(sqlq_int(p, sql), st.n_evicted);
	snprintf(sql, sizeof sql, "SELECT count(*) FROM memory_events WHERE kind = 'evict'");
	T_EQ_INT(sqlq_int(p, sql), st.n_evictions);
	snprintf(sql, sizeof sql,
	         "SELECT coalesce(sum(n_tokens), 0) FROM memory_events WHERE kind = 'evict'");
	T_EQ_INT(sqlq_int(p, sql), st.n_evicted);
	/* every token of the stream has exactly one row, positions 0 .. n_seen-1 */
	snprintf(sql, sizeof sql, "SELECT max(orig_pos) - min(orig_pos) + 1 FROM tokens");
	T_EQ_INT(sqlq_int(p, sql), st.n_seen);
	/* the kept rows are the cache's tokens */
	sqlite3 *db;
	sqlite3_stmt *q;
	sqlite3_open_v2(p, &db, SQLITE_OPEN_READONLY, NULL);
	sqlite3_prepare_v2(db,
	                   "SELECT token, orig_pos, pos, flags FROM tokens WHERE kept ORDER BY "
	                   "orig_pos",
	                   -1, &q, NULL);
	const struct kv_tok *toks = kv_cache_toks(a.kv);
	uint32_t i = 0, bad = 0;
	while (sqlite3_step(q) == SQLITE_ROW && i < kv_cache_n(a.kv)) {
		bad += sqlite3_column_int(q, 0) != toks[i].token ||
		        sqlite3_column_int(q, 1) != toks[i].orig_pos ||
		        sqlite3_column_int(q, 2) != toks[i].pos ||
		        sqlite3_column_int(q, 3) != toks[i].flags;
		i++;
	}
	sqlite3_finalize(q);
	sqlite3_close(db);
	T_EQ_INT(bad, 0);
	T_EQ_INT(i, kv_cache_n(a.kv));
	T_EQ_INT(sqlq_int(p, "SELECT count(*) FROM snapshots"), 1);
	char *pol = sqlq_text(p, "SELECT policy FROM sessions");
	T_CHECK(pol && strncmp(pol, policy, strlen(policy)) == 0, "session policy %s", pol);
	free(pol);

	/* resume from the snapshot: bit for bit */
	struct run b;
	struct store_resume_info info;
	run_open(&b, t->m, policy, evicts ? 48 : 120);
	T_EQ_INT(store_resume(s, id, b.kv, t->sha, &info, &e), KVS_OK);
	T_CHECK(info.from_snapshot, "%s: not from the snapshot: %s", policy, info.why);
	T_EQ_INT(info.n_tokens, kv_cache_n(a.kv));
	T_EQ_INT(kv_cache_next_pos(b.kv), kv_cache_next_pos(a.kv));
	double d = probe(a.kv, b.kv, nv);
	T_CHECK(d <= 1e-4, "%s: snapshot resume differs by %g", policy, d);
	T_CHECK(d == 0, "%s: snapshot resume differs by %g (expected bit for bit)", policy, d);
	run_close(&b);

	/* a wrong model is refused */
	run_open(&b, t->m, policy, evicts ? 48 : 120);
	char other[65];
	memset(other, 'f', 64);
	other[64] = '\0';
	T_EQ_INT(store_resume(s, id, b.kv, other, &info, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "same model") != NULL, "message: %s", e.msg);
	run_close(&b);

	/* damaged, then missing snapshot: recompute */
	char *sha = sqlq_text(p, "SELECT sha256 FROM snapshots");
	char *sp = xasprintf("%s-kv/%s.kvs", p, sha);
	size_t n;
	char *bytes = read_file(sp, &n);
	bytes[n / 2] ^= 1;
	write_file(sp, bytes, n);
	free(bytes);
	for (int round = 0; round < 2; round++) {
		if (round == 1)
			unlink(sp);
		/* a fresh copy of the original state to compare with */
		run_open(&b, t->m, policy, evicts ? 48 : 120);
		T_EQ_INT(store_resume(s, id, b.kv, t->sha, &info, &e), KVS_OK);
		T_CHECK(!info.from_snapshot, "%s: a %s snapshot was used", policy,
		        round ? "missing" : "damaged");
		T_CHECK(strstr(info.why, round ? "unreadable" : "damaged") != NULL, "why: %s", info.why);
		/* token ids exact */
		uint32_t nb = kv_cache_n(b.kv);
		const struct kv_tok *tb = kv_cache_toks(b.kv);
		struct run c;
		run_open(&c, t->m, policy, evicts ? 48 : 120);
		T_EQ_INT(store_resume(s, id, c.kv, t->sha, &info, &e), KVS_OK);
		bad = 0;
		for (uint32_t k = 0; k < nb; k++)
			bad += tb[k].token != kv_cache_toks(c.kv)[k].token;
		T_EQ_INT(bad, 0);
		T_CHECK(kv_cache_logits(b.kv) != NULL, "no logits after a recompute");
		run_close(&c);
		run_close(&b);
	}
	free(sp);
	free(sha);
	store_close(s);
	run_close(&a);
	free(p);
}

/* The re-prefill path against the session as it was before closing: the
 * same next-token logits within 1e-3 (no eviction). */
static void test_recompute_logits(const struct tiny *t)
{
	char *p = tpath("recompute.db");
	uint32_t nv = t->m->hp.n_vocab;
	struct store *s;
	struct err e;
	struct run a, b;
	T_EQ_INT(store_open(&s, p, STORE_RW, &e), KVS_OK);
	int64_t id = new_session(s, t->sha, "recompute");
	run_open(&a, t->m, "full", 120);
	T_EQ_INT(store_rec_open(&a.rec, s, id, a.kv, false, &e), KVS_OK);
	for (int i = 0; i < 3; i++) {
		run_turn(&a, nv, 10, 6, "q");
		T_EQ_INT(store_rec_commit(a.rec, &e), KVS_OK);
	}
	T_EQ_INT(sqlq_int(p, "SELECT count(*) FROM snapshots"), 0);
	run_open(&b, t->m, "full", 120);
	struct store_resume_info info;
	T_EQ_INT(store_resume(s, id, b.kv, t->sha, &info, &e), KVS_OK);
	T_CHECK(!info.from_snapshot, "a snapshot without snapshots");
	T_EQ_INT(kv_cache_n(b.kv), kv_cache_n(a.kv));
	for (uint32_t i = 0; i < kv_cache_n(a.kv); i++)
		T_EQ_INT(kv_cache_toks(b.kv)[i].token, kv_cache_toks(a.kv)[i].token);
	double d = 0;
	for (uint32_t v = 0; v < nv; v++)
		d = fmax(d, fabs((double)kv_cache_logits(a.kv)[v] - kv_cache_logits(b.kv)[v]));
	T_CHECK(d <= 1e-3, "recomputed logits differ by %g", d);
	d = probe(a.kv, b.kv, nv);
	T_CHECK(d <= 1e-3, "after recompute the next logits differ by %g", d);
	run_close(&a);
	run_close(&b);
	store_close(s);
	free(p);
}

/* ------------------------------------------- I/O errors: a failing VFS */

static sqlite3_vfs *base_vfs;
static sqlite3_vfs shim_vfs;
static volatile int shim_fail; /* 1: writes fail with SQLITE_FULL, 2: with SQLITE_IOERR */

struct shim_file {
	sqlite3_file base;
	sqlite3_file *real;
};

static int shim_close(sqlite3_file *f)
{
	struct shim_file *s = (struct shim_file *)f;
	int rc = s->real->pMethods->xClose(s->real);
	sqlite3_free(s->real);
	return rc;
}
static int shim_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o)
{
	struct shim_file *s = (struct shim_file *)f;
	return s->real->pMethods->xRead(s->real, b, n, o);
}
static int shim_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o)
{
	struct shim_file *s = (struct shim_file *)f;
	if (shim_fail)
		return shim_fail == 1 ? SQLITE_FULL : SQLITE_IOERR_WRITE;
	return s->real->pMethods->xWrite(s->real, b, n, o);
}
static int shim_truncate(sqlite3_file *f, sqlite3_int64 n)
{
	struct shim_file *s = (struct shim_file *)f;
	return s->real->pMethods->xTruncate(s->real, n);
}
static int shim_sync(sqlite3_file *f, int flags)
{
	struct shim_file *s = (struct shim_file *)f;
	return s->real->pMethods->xSync(s->real, flags);
}
static int shim_size(sqlite3_file *f, sqlite3_int64 *n)
{
	struct shim_file *s = (struct shim_file *)f;
	return s->real->pMethods->xFileSize(s->real, n);
}
static int shim_lock(sqlite3_file *f, int l)
{
	struct shim_file *s = (struct shim_file *)f;
	return s->real->pMethods->xLock(s->real, l);
}
static int shim_unlock(sqlite3_file *f, int l)
{
	struct shim_file *s = (struct shim_file *)f;
	return s->real->pMethods->xUnlock(s->real, l);
}
static int shim_check(sqlite3_file *f, int *out)
{
	struct shim_file *s = (struct shim_file *)f;
	return s->real->pMethods->xCheckReservedLock(s->real, out);
}
static int shim_fcntl(sqlite3_file *f, int op, void *arg)
{
	struct shim_file *s = (struct shim_file *)f;
	return s->real->pMethods->xFileControl(s->real, op, arg);
}
static int shim_sector(sqlite3_file *f)
{
	struct shim_file *s = (struct shim_file *)f;
	return s->real->pMethods->xSectorSize(s->real);
}
static int shim_devchar(sqlite3_file *f)
{
	struct shim_file *s = (struct shim_file *)f;
	return s->real->pMethods->xDeviceCharacteristics(s->real);
}
static int shim_shmmap(sqlite3_file *f, int pg, int sz, int ext, void volatile **pp)
{
	struct shim_file *s = (struct shim_file *)f;
	return s->real->pMethods->xShmMap(s->real, pg, sz, ext, pp);
}
static int shim_shmlock(sqlite3_file *f, int off, int n, int flags)
{
	struct shim_file *s = (struct shim_file *)f;
	return s->real->pMethods->xShmLock(s->real, off, n, flags);
}
static void shim_shmbarrier(sqlite3_file *f)
{
	struct shim_file *s = (struct shim_file *)f;
	s->real->pMethods->xShmBarrier(s->real);
}
static int shim_shmunmap(sqlite3_file *f, int del)
{
	struct shim_file *s = (struct shim_file *)f;
	return s->real->pMethods->xShmUnmap(s->real, del);
}

static const sqlite3_io_methods shim_io = {
	2,
	shim_close,
	shim_read,
	shim_write,
	shim_truncate,
	shim_sync,
	shim_size,
	shim_lock,
	shim_unlock,
	shim_check,
	shim_fcntl,
	shim_sector,
	shim_devchar,
	shim_shmmap,
	shim_shmlock,
	shim_shmbarrier,
	shim_shmunmap,
	NULL,
	NULL,
};

static int shim_open(sqlite3_vfs *v, const char *name, sqlite3_file *f, int flags, int *out)
{
	struct shim_file *s = (struct shim_file *)f;
	(void)v;
	s->real = sqlite3_malloc(base_vfs->szOsFile);
	memset(s->real, 0, (size_t)base_vfs->szOsFile);
	int rc = base_vfs->xOpen(base_vfs, name, s->real, flags, out);
	if (rc != SQLITE_OK) {
		sqlite3_free(s->real);
		s->base.pMethods = NULL;
		return rc;
	}
	s->base.pMethods = &shim_io;
	return SQLITE_OK;
}

static int shim_delete(sqlite3_vfs *v, const char *n, int sync)
{
	(void)v;
	return base_vfs->xDelete(base_vfs, n, sync);
}
static int shim_access(sqlite3_vfs *v, const char *n, int flags, int *out)
{
	(void)v;
	return base_vfs->xAccess(base_vfs, n, flags, out);
}
static int shim_fullpath(sqlite3_vfs *v, const char *n, int len, char *out)
{
	(void)v;
	return base_vfs->xFullPathname(base_vfs, n, len, out);
}
static int shim_random(sqlite3_vfs *v, int n, char *out)
{
	(void)v;
	return base_vfs->xRandomness(base_vfs, n, out);
}
static int shim_sleep(sqlite3_vfs *v, int us)
{
	(void)v;
	return base_vfs->xSleep(base_vfs, us);
}
static int shim_time(sqlite3_vfs *v, double *out)
{
	(void)v;
	return base_vfs->xCurrentTime(base_vfs, out);
}

static void shim_install(void)
{
	base_vfs = sqlite3_vfs_find(NULL);
	memset(&shim_vfs, 0, sizeof shim_vfs);
	shim_vfs.iVersion = 1;
	shim_vfs.szOsFile = (int)sizeof(struct shim_file);
	shim_vfs.mxPathname = base_vfs->mxPathname;
	shim_vfs.zName = "failshim";
	shim_vfs.xOpen = shim_open;
	shim_vfs.xDelete = shim_delete;
	shim_vfs.xAccess = shim_access;
	shim_vfs.xFullPathname = shim_fullpath;
	shim_vfs.xRandomness = shim_random;
	shim_vfs.xSleep = shim_sleep;
	shim_vfs.xCurrentTime = shim_time;
	sqlite3_vfs_register(&shim_vfs, 1); /* the default: the store opens through it */
}

static void test_io_errors(const struct tiny *t)
{
	char *p = tpath("ioerr.db");
	uint32_t nv = t->m->hp.n_vocab;
	struct store *s;
	struct err e;
	struct run a;
	T_EQ_INT(store_open(&s, p, STORE_RW, &e), KVS_OK);
	int64_t id = new_session(s, t->sha, "io");
	run_open(&a, t->m, "streaming", 48);
	T_EQ_INT(store_rec_open(&a.rec, s, id, a.kv, false, &e), KVS_OK);
	run_turn(&a, nv, 12, 6, "first");
	T_EQ_INT(store_rec_commit(a.rec, &e), KVS_OK);
	for (int mode = 1; mode <= 2; mode++) {
		run_turn(&a, nv, 12, 6, mode == 1 ? "second" : "third");
		shim_fail = mode;
		int rc = store_rec_commit(a.rec, &e);
		shim_fail = 0;
		T_EQ_INT(rc, KVS_EIO);
		T_CHECK(strstr(e.msg, mode == 1 ? "disk is full" : "I/O error") != NULL &&
		                strstr(e.msg, "kept in memory") != NULL,
		        "message: %s", e.msg);
		T_EQ_INT(store_rec_pending(a.rec), mode);
		/* what was committed is intact (another connection sees it) */
		T_EQ_INT(sqlq_int(p, "SELECT count(*) FROM turns"), 1);
		T_EQ_INT(sqlq_int(p, "SELECT count(*) FROM turns WHERE user_text = 'first'"), 1);
	}
	/* the next successful commit writes all the queued turns */
	run_turn(&a, nv, 12, 6, "fourth");
	T_EQ_INT(store_rec_commit(a.rec, &e), KVS_OK);
	T_EQ_INT(store_rec_pending(a.rec), 0);
	T_EQ_INT(sqlq_int(p, "SELECT count(*) FROM turns"), 4);
	T_EQ_INT(sqlq_int(p, "SELECT idx FROM turns WHERE user_text = 'fourth'"), 3);
	struct kv_stats st;
	kv_cache_stats(a.kv, &st);
	T_EQ_INT(sqlq_int(p, "SELECT count(*) FROM tokens"), st.n_seen);
	T_EQ_INT(sqlq_int(p, "SELECT count(*) FROM tokens WHERE NOT kept"), st.n_evicted);
	char *ic = sqlq_text(p, "PRAGMA integrity_check");
	T_EQ_STR(ic, "ok");
	free(ic);
	run_close(&a);
	store_close(s);
	free(p);
}

/* ------------------------------------------------ a second writer, readers */

static void test_second_writer(const struct tiny *t)
{
	char *p = tpath("lock.db");
	uint32_t nv = t->m->hp.n_vocab;
	struct store *s, *reader;
	struct err e;
	struct run a;
	T_EQ_INT(store_open(&s, p, STORE_RW, &e), KVS_OK);
	int64_t id = new_session(s, t->sha, "locked");
	run_open(&a, t->m, "streaming", 48);
	T_EQ_INT(store_rec_open(&a.rec, s, id, a.kv, false, &e), KVS_OK);
	run_turn(&a, nv, 8, 4, "one");
	T_EQ_INT(store_rec_commit(a.rec, &e), KVS_OK);
	/* another writer holds the write lock */
	sqlite3 *other;
	sqlite3_open(p, &other);
	T_EQ_INT(sqlite3_exec(other, "BEGIN IMMEDIATE; UPDATE sessions SET title = 'x' WHERE 0", NULL,
	                      NULL, NULL),
	         SQLITE_OK);
	store_set_busy_timeout(s, 200);
	run_turn(&a, nv, 8, 4, "two");
	double t0 = clock_now_ms();
	T_EQ_INT(store_rec_commit(a.rec, &e), KVS_EIO);
	T_CHECK(clock_now_ms() - t0 >= 150, "did not wait for the lock (%.0f ms)", clock_now_ms() - t0);
	T_CHECK(strstr(e.msg, "locked by another kvscope writer") != NULL, "message: %s", e.msg);
	/* readers are fine meanwhile */
	T_EQ_INT(store_open(&reader, p, STORE_RO, &e), KVS_OK);
	struct store_session *list;
	size_t n;
	T_EQ_INT(store_session_list(reader, &list, &n, &e), KVS_OK);
	T_EQ_INT(n, 1);
	T_EQ_INT(n ? list[0].n_turns : 0, 1);
	for (size_t i = 0; i < n; i++)
		store_session_free(&list[i]);
	free(list);
	store_close(reader);
	sqlite3_exec(other, "COMMIT", NULL, NULL, NULL);
	sqlite3_close(other);
	T_EQ_INT(store_rec_commit(a.rec, &e), KVS_OK);
	T_EQ_INT(sqlq_int(p, "SELECT count(*) FROM turns"), 2);
	/* a second kvscope resumed the same session and saved first: the
	 * first one's next commit refuses to mix the conversations */
	struct store *s2;
	struct run b;
	T_EQ_INT(store_open(&s2, p, STORE_RW, &e), KVS_OK);
	run_open(&b, t->m, "streaming", 48);
	T_EQ_INT(store_rec_open(&b.rec, s2, id, b.kv, false, &e), KVS_OK);
	run_turn(&b, nv, 8, 4, "from the second");
	T_EQ_INT(store_rec_commit(b.rec, &e), KVS_OK);
	run_turn(&a, nv, 8, 4, "three");
	T_EQ_INT(store_rec_commit(a.rec, &e), KVS_ESTATE);
	T_CHECK(strstr(e.msg, "another kvscope") != NULL, "message: %s", e.msg);
	T_EQ_INT(sqlq_int(p, "SELECT count(*) FROM turns"), 3);
	T_EQ_INT(sqlq_int(p, "SELECT count(*) FROM turns WHERE user_text = 'three'"), 0);
	run_close(&b);
	store_close(s2);
	run_close(&a);
	store_close(s);
	free(p);
}

/* A snapshot that cannot be written (its directory is a file) costs only
 * the snapshot; export names what was evicted. */
static void test_snapshot_blocked_export(const struct tiny *t)
{
	char *p = tpath("blocked.db"), *kvdir = tpath("blocked.db-kv");
	uint32_t nv = t->m->hp.n_vocab;
	struct store *s;
	struct err e;
	struct run a;
	write_file(kvdir, "x", 1);
	T_EQ_INT(store_open(&s, p, STORE_RW, &e), KVS_OK);
	int64_t id = new_session(s, t->sha, "blocked");
	run_open(&a, t->m, "streaming", 48);
	T_EQ_INT(store_rec_open(&a.rec, s, id, a.kv, true, &e), KVS_OK);
	log_set_level(LOG_ERROR); /* the snapshot warning is expected */
	for (int i = 0; i < 4; i++) {
		run_turn(&a, nv, 12, 8, "a question with \"quotes\"\nand a second line");
		T_EQ_INT(store_rec_commit(a.rec, &e), KVS_OK);
	}
	log_set_level(LOG_WARN);
	T_EQ_INT(sqlq_int(p, "SELECT count(*) FROM snapshots"), 0);
	T_EQ_INT(sqlq_int(p, "SELECT count(*) FROM turns"), 4);
	char *out = tpath("export.md");
	FILE *fp = fopen(out, "w");
	T_EQ_INT(store_export(s, id, STORE_FMT_MD, NULL, fp, &e), KVS_OK);
	fclose(fp);
	size_t n;
	char *md = read_file(out, &n);
	T_CHECK(md && strstr(md, "evicted") && strstr(md, "cause: ") && strstr(md, "policy streaming"),
	        "export lacks the evictions:\n%s", md ? md : "");
	free(md);
	free(out);
	T_EQ_INT(store_session_delete(s, id, &e), KVS_OK);
	T_EQ_INT(sqlq_int(p, "SELECT count(*) FROM tokens"), 0);
	T_EQ_INT(sqlq_int(p, "SELECT count(*) FROM memory_events"), 0);
	T_EQ_INT(store_session_delete(s, id, &e), KVS_ENOTFOUND);
	run_close(&a);
	store_close(s);
	free(p);
	free(kvdir);
}


/* ------------------------------------------------ text in and out, keys */

static void test_text_rules(void)
{
	struct err e;
	/* control characters (C0, DEL, C1: U+009B is a CSI) and bad bytes as \xHH;
	 * a backslash and valid UTF-8 stay */
	char *t = store_text_escape("a\x1b[2Jb\tc\nd\x7f"
	                            "\xc2\x9b"
	                            "\xff"
	                            "\xc3\xa9\\",
	                            0);
	T_EQ_STR(t, "a\\x1b[2Jb\\x09c\\x0ad\\x7f\\xc2\\x9b\\xff\xc3\xa9\\");
	free(t);
	t = store_text_escape("l1\nl2\tx\r", STORE_TEXT_KEEP_NL | STORE_TEXT_KEEP_TAB);
	T_EQ_STR(t, "l1\nl2\tx\\x0d");
	free(t);
	t = store_text_escape("cut \xe2\x82", 0); /* a truncated sequence: each byte */
	T_EQ_STR(t, "cut \\xe2\\x82");
	free(t);
	t = store_text_escape(NULL, 0);
	T_EQ_STR(t, "");
	free(t);

	static const char *const good[] = { "notes", "caf\xc3\xa9 \xe2\x98\x95", " 1", "a\\b" };
	for (size_t i = 0; i < KVS_ARRAY_LEN(good); i++)
		T_CHECK(store_title_check(good[i], &e) == KVS_OK, "title '%s' refused: %s", good[i], e.msg);
	static const char *const bad[] = { "",          "  ",         "\t",          "a\xff",
		                               "a\x1b[31m", "two\nlines", "c1 \xc2\x9b", "\xc0\xaf",
		                               "tab\there" };
	for (size_t i = 0; i < KVS_ARRAY_LEN(bad); i++)
		T_EQ_INT(store_title_check(bad[i], &e), KVS_EARG);
	T_EQ_INT(store_key_check(NULL, &e), KVS_EARG);
	T_EQ_INT(store_key_check("", &e), KVS_EARG);
	T_EQ_INT(store_key_check(" \t ", &e), KVS_EARG);
	T_EQ_INT(store_key_check("1", &e), KVS_OK);
	T_EQ_INT(store_key_check(" 1", &e), KVS_OK);
}

/* Session keys and titles against a database with three sessions. */
static void test_keys_titles(void)
{
	char *p = tpath("keys.db");
	struct store *s;
	struct err e;
	int64_t id = 0;
	T_EQ_INT(store_open(&s, p, STORE_RW, &e), KVS_OK);
	int64_t a = new_session(s, "00", "alpha"), b = new_session(s, "00", " 1"),
	        c = new_session(s, "00", NULL);
	T_EQ_INT(a, 1);
	/* NULL: the latest; empty and blank keys are errors, not the latest */
	T_EQ_INT(store_session_find(s, NULL, &id, &e), KVS_OK);
	T_EQ_INT(id, c);
	static const char *const blank[] = { "", " ", "\t", "  \t " };
	for (size_t i = 0; i < KVS_ARRAY_LEN(blank); i++) {
		id = -1;
		T_EQ_INT(store_session_find(s, blank[i], &id, &e), KVS_EARG);
		T_EQ_INT(id, -1);
		T_CHECK(strstr(e.msg, "empty session id or title") != NULL, "message: %s", e.msg);
	}
	/* ids are digits only: " 1" is the title of b, "+1" and "1 " nothing */
	T_EQ_INT(store_session_find(s, "1", &id, &e), KVS_OK);
	T_EQ_INT(id, a);
	T_EQ_INT(store_session_find(s, " 1", &id, &e), KVS_OK);
	T_EQ_INT(id, b);
	T_EQ_INT(store_session_find(s, "+1", &id, &e), KVS_ENOTFOUND);
	T_EQ_INT(store_session_find(s, "1 ", &id, &e), KVS_ENOTFOUND);
	T_EQ_INT(store_session_find(s, "Alpha", &id, &e), KVS_ENOTFOUND); /* exact */
	T_EQ_INT(store_session_find(s, "alpha", &id, &e), KVS_OK);
	T_EQ_INT(id, a);
	/* a key that is not found is quoted without its control characters */
	T_EQ_INT(store_session_find(s, "x\x1b[2J", &id, &e), KVS_ENOTFOUND);
	T_CHECK(strchr(e.msg, 0x1b) == NULL && strstr(e.msg, "x\\x1b[2J"), "message: %s", e.msg);
	/* titles: the default name, and bad ones refused on the way in */
	char *def = xasprintf("session %lld", (long long)c);
	struct store_session ss;
	T_EQ_INT(store_session_get(s, c, &ss, &e), KVS_OK);
	T_EQ_STR(ss.title, def);
	store_session_free(&ss);
	free(def);
	struct store_session in = { .title = (char *)"bad \xff title",
		                        .model_path = (char *)"m",
		                        .model_sha256 = (char *)"00",
		                        .arch = (char *)"llama",
		                        .policy = (char *)"full",
		                        .sampler = (char *)"" };
	T_EQ_INT(store_session_create(s, &in, &id, &e), KVS_EARG);
	in.title = (char *)"\x1b]0;pwned\x07";
	T_EQ_INT(store_session_create(s, &in, &id, &e), KVS_EARG);
	in.title = (char *)"   ";
	T_EQ_INT(store_session_create(s, &in, &id, &e), KVS_EARG);
	T_EQ_INT(sqlq_int(p, "SELECT count(*) FROM sessions"), 3);
	T_EQ_INT(store_session_set_title(s, a, "two\nlines", &e), KVS_EARG);
	T_EQ_INT(store_session_set_title(s, a, "", &e), KVS_EARG);
	T_EQ_INT(store_session_set_title(s, a, "beta", &e), KVS_OK);
	char *tt = sqlq_text(p, "SELECT title FROM sessions WHERE id = 1");
	T_EQ_STR(tt, "beta");
	free(tt);
	/* an empty or blank path names no database */
	struct store *z = NULL;
	T_EQ_INT(store_open(&z, "", STORE_RW, &e), KVS_EARG);
	T_EQ_INT(store_open(&z, " ", STORE_RO, &e), KVS_EARG);
	T_CHECK(z == NULL && access("-kv", F_OK) != 0 && access(" -kv", F_OK) != 0,
	        "an empty path opened something");
	store_close(s);
	free(p);
}

/* -------------------------------------------- crafted names, symlinks */

/* Entries in directory dir, "." and ".." left out. */
static int count_entries(const char *dir)
{
	char *cmd = xasprintf("ls -A '%s' | wc -l", dir);
	FILE *fp = popen(cmd, "r");
	int n = -1;
	if (fp == NULL || fscanf(fp, "%d", &n) != 1)
		n = -1;
	if (fp)
		pclose(fp);
	free(cmd);
	return n;
}

static void test_crafted_names(const struct tiny *t)
{
	char *p = tpath("crafted.db"), *victim = tpath("victim.kvs");
	uint32_t nv = t->m->hp.n_vocab;
	struct store *s;
	struct err e;
	struct run a, b;
	write_file(victim, "precious", 8);
	T_EQ_INT(store_open(&s, p, STORE_RW, &e), KVS_OK);
	int64_t id = new_session(s, t->sha, "crafted");
	run_open(&a, t->m, "full", 120);
	T_EQ_INT(store_rec_open(&a.rec, s, id, a.kv, true, &e), KVS_OK);
	run_turn(&a, nv, 10, 6, "one");
	T_EQ_INT(store_rec_commit(a.rec, &e), KVS_OK);
	store_rec_free(a.rec);
	a.rec = NULL;
	/* the snapshot's name now points outside the snapshot folder */
	sqlq_exec(p, "UPDATE snapshots SET sha256 = '../victim'");
	/* resume: not read (recomputed, saying why) */
	run_open(&b, t->m, "full", 120);
	struct store_resume_info info;
	T_EQ_INT(store_resume(s, id, b.kv, t->sha, &info, &e), KVS_OK);
	T_CHECK(!info.from_snapshot && strstr(info.why, "not a SHA-256") != NULL, "why: %s", info.why);
	run_close(&b);
	/* a recorder continuing the session replaces the snapshot: the crafted
	 * name is not unlinked as "the previous one" */
	T_EQ_INT(store_rec_open(&a.rec, s, id, a.kv, true, &e), KVS_OK);
	run_turn(&a, nv, 8, 4, "two");
	T_EQ_INT(store_rec_commit(a.rec, &e), KVS_OK);
	T_CHECK(access(victim, F_OK) == 0, "a commit removed %s", victim);
	/* delete, with crafted names in every row */
	sqlq_exec(p,
	          "INSERT INTO snapshots VALUES (1, 7, '../victim', 0, 0, 0); "
	          "INSERT INTO snapshots VALUES (1, 8, '/etc/../../victim', 0, 0, 0); "
	          "INSERT INTO snapshots VALUES (1, 9, "
	          "'../aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 0, 0, 0); "
	          "UPDATE snapshots SET sha256 = '../victim' WHERE turn = 1");
	T_EQ_INT(store_session_delete(s, id, &e), KVS_OK);
	T_CHECK(access(victim, F_OK) == 0, "sessions delete removed %s", victim);
	/* vacuum removes only the files it should: the real snapshot, now unreferenced */
	T_EQ_INT(store_vacuum(s, &e), KVS_OK);
	char *kvdir = tpath("crafted.db-kv");
	T_EQ_INT(count_entries(kvdir), 0);
	T_CHECK(access(victim, F_OK) == 0, "vacuum removed %s", victim);
	free(kvdir);
	run_close(&a);
	store_close(s);

	/* a snapshot folder that is a symbolic link is neither written nor swept */
	char *link_db = tpath("linked.db"), *kvlink = tpath("linked.db-kv"), *other = tpath("other");
	char *keep1 = tpath("other/.tmp-keep"), *hexname = xasprintf("%s/%064d.kvs", other, 0);
	T_CHECK(mkdir(other, 0755) == 0, "mkdir %s", other);
	write_file(keep1, "k", 1);
	write_file(hexname, "k", 1);
	T_CHECK(symlink("other", kvlink) == 0, "symlink %s", kvlink);
	T_EQ_INT(store_open(&s, link_db, STORE_RW, &e), KVS_OK);
	id = new_session(s, t->sha, "linked");
	run_open(&a, t->m, "full", 120);
	T_EQ_INT(store_rec_open(&a.rec, s, id, a.kv, true, &e), KVS_OK);
	log_set_level(LOG_ERROR); /* the snapshot warning is expected */
	run_turn(&a, nv, 10, 6, "one");
	T_EQ_INT(store_rec_commit(a.rec, &e), KVS_OK); /* the snapshot only is lost */
	log_set_level(LOG_WARN);
	T_EQ_INT(sqlq_int(link_db, "SELECT count(*) FROM snapshots"), 0);
	T_EQ_INT(count_entries(other), 2);
	T_EQ_INT(store_vacuum(s, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "symbolic link") != NULL, "message: %s", e.msg);
	T_EQ_INT(count_entries(other), 2);
	T_EQ_INT(store_session_delete(s, id, &e), KVS_OK);
	T_EQ_INT(count_entries(other), 2);
	run_close(&a);
	store_close(s);
	free(link_db);
	free(kvlink);
	free(other);
	free(keep1);
	free(hexname);
	free(victim);
	free(p);
}

/* ------------------------------------------- concurrent first opens */

/* Processes that open one new database at once: each must succeed, and
 * the schema must be there once (two used to run 001-init.sql both). */
static void test_concurrent_open(void)
{
	enum { ROUNDS = 25, KIDS = 4 };
	int all_ok = 0;
	for (int round = 0; round < ROUNDS; round++) {
		char name[32];
		snprintf(name, sizeof name, "race%d/m.db", round);
		char *p = tpath(name);
		int go[2];
		pid_t kids[KIDS];
		if (pipe(go) != 0) {
			perror("pipe");
			exit(99);
		}
		for (int k = 0; k < KIDS; k++) {
			kids[k] = fork();
			if (kids[k] == 0) {
				char c;
				struct store *s;
				struct err e;
				close(go[1]);
				if (read(go[0], &c, 1) < 0) /* 0 when the parent closes: all go */
					_exit(2);
				int rc = store_open(&s, p, STORE_RW, &e);
				if (rc != KVS_OK)
					fprintf(stderr, "child %d: %s\n", k, e.msg);
				store_close(s);
				_exit(rc == KVS_OK ? 0 : 1);
			}
		}
		close(go[0]);
		close(go[1]);
		int ok = 0;
		for (int k = 0; k < KIDS; k++) {
			int st;
			if (kids[k] > 0 && waitpid(kids[k], &st, 0) == kids[k] && WIFEXITED(st) &&
			    WEXITSTATUS(st) == 0)
				ok++;
		}
		all_ok += ok == KIDS;
		T_EQ_INT(sqlq_int(p, "PRAGMA user_version"), store_schema_latest());
		T_EQ_INT(sqlq_int(p, "SELECT count(*) FROM sqlite_schema WHERE name = 'sessions'"), 1);
		free(p);
	}
	T_EQ_INT(all_ok, ROUNDS);
}

/* ------------------------------------------------- read-only media */

/* A database in a folder nobody may write: readers work (the WAL index
 * cannot be created, so the store opens it immutable), writers get one
 * clear line. Run in a child without root's rights (root writes anyway);
 * skipped where that cannot be arranged. */
static void test_read_only_folder(void)
{
	char *dir = tpath("ro"), *p = tpath("ro/m.db");
	struct store *s;
	struct err e;
	T_CHECK(mkdir(dir, 0755) == 0, "mkdir %s", dir);
	T_EQ_INT(store_open(&s, p, STORE_RW, &e), KVS_OK);
	new_session(s, "00", "kept");
	store_close(s);
	T_CHECK(access(p, F_OK) == 0, "no database");
	chmod(tmpdir, 0755); /* mkdtemp's 0700 would keep the child out */
	chmod(dir, 0555);
	pid_t pid = fork();
	if (pid == 0) {
		int bad = 0;
		if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
			_exit(77);
		if (access(dir, W_OK) == 0 || access(p, R_OK) != 0)
			_exit(77); /* writable after all, or not readable: nothing to test */
		struct store_session *l = NULL;
		size_t n = 0;
		if (store_open(&s, p, STORE_RO, &e) != KVS_OK) {
			fprintf(stderr, "read-only open: %s\n", e.msg);
			_exit(1);
		}
		if (store_session_list(s, &l, &n, &e) != KVS_OK || n != 1 ||
		    strcmp(l[0].title, "kept") != 0)
			bad++, fprintf(stderr, "list on read-only media: %s\n", e.msg);
		char *buf = NULL;
		size_t len = 0;
		FILE *fp = open_memstream(&buf, &len);
		if (store_export(s, 1, STORE_FMT_JSON, NULL, fp, &e) != KVS_OK)
			bad++, fprintf(stderr, "export on read-only media: %s\n", e.msg);
		fclose(fp);
		if (buf == NULL || strstr(buf, "\"title\":\"kept\"") == NULL)
			bad++, fprintf(stderr, "export: %s\n", buf ? buf : "");
		store_close(s);
		if (store_open(&s, p, STORE_RW, &e) != KVS_EIO ||
		    strstr(e.msg, "read-only (folder not writable); cannot save") == NULL)
			bad++, fprintf(stderr, "read-write open: %s\n", e.msg);
		_exit(bad);
	}
	int st = 0;
	waitpid(pid, &st, 0);
	chmod(dir, 0755);
	if (WIFEXITED(st) && WEXITSTATUS(st) == 77)
		printf("test-store: read-only folder: skipped (cannot drop write access here)\n");
	else
		T_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "read-only child: status %d", st);
	T_CHECK(access(p, F_OK) == 0, "database gone");
	free(dir);
	free(p);
}

/* --------------------------------------- export of a crafted database */

/* Whether buf is valid UTF-8 without control bytes but those in allow. */
static bool clean_text(const char *buf, size_t n, const char *allow)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)buf[i];
		if ((c < 0x20 || c == 0x7f) && strchr(allow, c) == NULL)
			return false;
	}
	/* C1 controls are U+0080..U+009F: encoded C2 80 .. C2 9F */
	for (size_t i = 0; i + 1 < n; i++)
		if ((unsigned char)buf[i] == 0xc2 && (unsigned char)buf[i + 1] <= 0x9f)
			return false;
	return utf8_valid((const uint8_t *)buf, n);
}

static void test_export_crafted(void)
{
	char *p = tpath("crafted-export.db");
	struct store *s;
	struct err e;
	T_EQ_INT(store_open(&s, p, STORE_RW, &e), KVS_OK);
	int64_t id = new_session(s, "00", "plain");
	store_close(s);
	/* text with quotes, backslashes, newlines, ESC, BEL, DEL, a C1 CSI, bad
	 * UTF-8, then infinite times and details that are not JSON */
	static const char evil[] = "x'22' || ' \\ ' || x'0a1b5d303b70776e6407' || ' ' || "
	                           "x'1b5b324a7fc29bfffec0' || ' end'";
	char *sql = xasprintf(
	        "UPDATE sessions SET title = CAST(%s AS TEXT), model_path = CAST(%s AS TEXT), "
	        "policy = CAST(%s AS TEXT), sampler = CAST(%s AS TEXT), system = CAST(%s AS TEXT), "
	        "created = 1e999, updated = -1e999; "
	        "INSERT INTO turns VALUES (1, 0, 'user', CAST(%s AS TEXT), CAST(%s AS TEXT), 1, 2, "
	        "1e999, 3.5, CAST(%s AS TEXT), 1, 0, 0); "
	        "INSERT INTO memory_events (session_id, turn, at, kind, cause, policy, n_tokens, "
	        "detail) VALUES (1, 0, 1e999, CAST(%s AS TEXT), CAST(%s AS TEXT), 'p', 1, "
	        "'{\"bad'), (1, 0, 1, 'evict', 'budget', CAST(%s AS TEXT), 2, "
	        "CAST(%s AS TEXT)), (1, 0, 2, 'pin', NULL, NULL, 1, '[[1,2,0.5]]'), "
	        "(1, 0, 3, 'policy', NULL, NULL, 0, '{\"policy\":\"a\"b\",\"budget\":1}')",
	        evil, evil, evil, evil, evil, evil, evil, evil, evil, evil, evil, evil);
	sqlq_exec(p, sql);
	free(sql);
	T_EQ_INT(sqlq_int(p, "SELECT count(*) FROM memory_events"), 4);
	T_EQ_INT(store_open(&s, p, STORE_RO, &e), KVS_OK);
	for (int f = 0; f < 2; f++) {
		char *out = tpath(f ? "crafted.json" : "crafted.md");
		FILE *fp = fopen(out, "w");
		T_EQ_INT(store_export(s, id, f ? STORE_FMT_JSON : STORE_FMT_MD, NULL, fp, &e), KVS_OK);
		fclose(fp);
		size_t n;
		char *buf = read_file(out, &n);
		T_CHECK(buf != NULL && n > 0, "nothing exported");
		if (f) {
			/* JSON: one line, no control byte, valid UTF-8, U+FFFD for the bad bytes */
			T_CHECK(buf && clean_text(buf, n - 1, "") && buf[n - 1] == '\n',
			        "JSON with control bytes or bad UTF-8:\n%s", buf ? buf : "");
			T_CHECK(buf && strstr(buf, "\\u001b") && strstr(buf, "\xef\xbf\xbd") &&
			                strstr(buf, "\"created\":null") && strstr(buf, "\"at\":null") &&
			                strstr(buf, "\"detail\":\"{\\\"bad\"") &&
			                strstr(buf, "\"detail\":[[1,2,0.5]]"),
			        "JSON export:\n%s", buf ? buf : "");
			if (system("command -v python3 >/dev/null 2>&1") == 0) {
				char *cmd = xasprintf("python3 -m json.tool '%s' >/dev/null", out);
				T_CHECK(system(cmd) == 0, "python3 -m json.tool refuses %s", out);
				free(cmd);
			}
		} else {
			/* Markdown: no control byte but newlines, valid UTF-8, escapes shown */
			T_CHECK(buf && clean_text(buf, n, "\n"), "Markdown with control bytes:\n%s",
			        buf ? buf : "");
			T_CHECK(buf && strstr(buf, "# \" \\ \\x0a\\x1b]0;pwnd\\x07 \\x1b[2J\\x7f\\xc2\\x9b") &&
			                strstr(buf, "\n> \" \\ \n> \\x1b]0;pwnd"),
			        "Markdown export:\n%s", buf ? buf : "");
		}
		free(buf);
		free(out);
	}
	store_close(s);
	free(p);
}

int main(void)
{
	struct tiny t;
	snprintf(tmpdir, sizeof tmpdir, "%s/kvs-store-XXXXXX",
	         getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 99;
	}
	shim_install();
	test_open_new();
	test_refusals();
	test_text_rules();
	test_keys_titles();
	test_concurrent_open();
	test_read_only_folder();
	test_export_crafted();
	tiny_open(&t);
	test_record_resume(&t, "streaming", true);
	test_record_resume(&t, "h2o", true);
	test_record_resume(&t, "full", false);
	test_recompute_logits(&t);
	test_io_errors(&t);
	test_second_writer(&t);
	test_snapshot_blocked_export(&t);
	test_crafted_names(&t);
	model_free(t.m);
	free(t.buf);
	char *cmd = xasprintf("rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
	free(cmd);
	return t_done("test-store");
}
