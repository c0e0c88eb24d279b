/*
 * test-store-cold-kv.c: the cold blocks' K/V rows in a file of their own
 * (store-cold-kv.c, migration 006).
 *
 *   - layout: written blocks keep nothing in cold_blocks.kv; PATH-cold holds
 *     one row per block, byte for byte the rows the test evicted; the cap's
 *     drops take the rows with them; the store counts their bytes;
 *   - schema 5 (K/V in the block rows, no file) migrates: the writer's
 *     attach moves every old block's rows to the file (a move cut by a
 *     crash between its two commits is finished by the next attach), every
 *     block reads back its own rows, the summary ranking is the same ids
 *     with the same scores bit for bit, new blocks go to the file;
 *   - refusals: another program's PATH-cold, a file that is not SQLite and
 *     a symbolic link get one line each and are left byte for byte;
 *   - repair after a crash between the two files' commits: a block whose
 *     K/V rows are missing is dropped with its summary, sketch and text
 *     index rows, K/V rows of no block (or of a deleted session) go;
 *   - deleting a session deletes its rows in the file, not another's.
 */
#include "store/store-int.h"
#include "store/store.h"
#include "tests/unit/test.h"
#include "tests/util/sqlq.h"
#include "tests/util/tinymodel.h"

#include <math.h>
#include <sqlite3.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#define BLOCK 8

static char tmpdir[256];
static uint64_t rng = 0x9e3779b97f4a7c15ull;

/* xorshift64*: a number in [0, 1). */
static double unit(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return (double)((rng * 0x2545f4914f6cdd1dull) >> 11) / 9007199254740992.0;
}

struct fix {
	struct model *m;
	uint8_t *buf;
	struct engine *eng;
	struct kv_cache *kv;
	size_t row;     /* bytes of a token's K/V rows */
	float *written; /* (cap_tok, row / 4): every evicted token's rows, by position */
	int32_t cap_tok;
};

static void fix_open(struct fix *f)
{
	struct tinymodel_spec s;
	tinymodel_defaults(&s, "llama");
	s.n_layer = 4;
	s.n_embd = 64;
	s.n_ff = 128;
	tinymodel_load(&s, &f->m, &f->buf);
	struct engine_config c;
	struct kv_config kc;
	struct err e;
	engine_config_default(&c);
	c.backend = ENGINE_BACKEND_CPU;
	c.n_threads = 1;
	c.n_ctx = 64;
	c.kv_type = ENGINE_KV_F32;
	kv_config_default(&kc);
	kv_policy_parse("streaming", &kc.policy, NULL);
	kc.budget = 32;
	if (engine_create(&f->eng, f->m, &c, &e) != KVS_OK ||
	    kv_cache_create(&f->kv, f->eng, &kc, &e) != KVS_OK) {
		fprintf(stderr, "engine: %s\n", e.msg);
		exit(99);
	}
	f->row = engine_kv_bytes_per_slot(f->eng);
	f->cap_tok = 64 * BLOCK;
	f->written = xcalloc((size_t)f->cap_tok * f->row, 1);
}

static void fix_close(struct fix *f)
{
	kv_cache_free(f->kv);
	engine_free(f->eng);
	model_free(f->m);
	free(f->buf);
	free(f->written);
}

/* A session in the database at path, its cold tier attached (capped at max
 * tokens when max > 0); KVS_OK or the attach's status with its message. */
static int open_session(struct fix *f, const char *path, uint64_t max, struct store **s,
                        struct store_cold **cold, int64_t *id, struct err *e)
{
	T_CHECK(store_open(s, path, STORE_RW, e) == KVS_OK, "%s", e->msg);
	struct store_session in = { .title = (char *)"kv",
		                        .model_path = (char *)"tiny.gguf",
		                        .model_sha256 = (char *)"ab",
		                        .arch = (char *)"llama",
		                        .policy = (char *)"streaming",
		                        .sampler = (char *)"temp=0" };
	if (*id == 0)
		T_EQ_INT(store_session_create(*s, &in, id, e), KVS_OK);
	struct store_cold_config cc = { .block = BLOCK, .max_tokens = max, .group = 4 };
	store_cold_open(cold, f->kv, f->m->vocab, &cc);
	return store_cold_attach(*cold, *s, *id, "", e);
}

/* Evict n_blocks blocks of random rows from position *pos on (kept in
 * f->written), one flush. */
static void fill(struct fix *f, struct store_cold *cold, uint32_t n_blocks, int32_t *pos)
{
	struct kv_tok toks[BLOCK];
	size_t nf = f->row / sizeof(float);
	struct err e;
	for (uint32_t b = 0; b < n_blocks; b++) {
		memset(toks, 0, sizeof toks);
		T_CHECK(*pos + BLOCK <= f->cap_tok, "test too long");
		float *raw = f->written + (size_t)*pos * nf;
		for (uint32_t i = 0; i < BLOCK; i++) {
			toks[i].token = 40 + (int32_t)(unit() * 26);
			toks[i].orig_pos = *pos + (int32_t)i;
			toks[i].role = KV_ROLE_USER;
			for (size_t k = 0; k < nf; k++)
				raw[i * nf + k] = (float)(2 * unit() - 1);
		}
		store_cold_evicted(cold, toks, BLOCK, raw, f->row);
		*pos += BLOCK;
	}
	struct store_cold_flush_info fi;
	T_CHECK(store_cold_flush(cold, 0, &fi, &e) == KVS_OK, "%s", e.msg);
}

/* Every block of the database: its K/V rows as the store reads them back
 * (cold_kv_read) equal the rows the test evicted at its positions. */
static void check_rows(struct fix *f, struct store *s, const char *path, const char *what)
{
	sqlite3 *db;
	sqlite3_stmt *st;
	T_CHECK(sqlq_open(path, 0, &db), "%s: open", what);
	sqlite3_prepare_v2(db, "SELECT id, pos0, n_tokens FROM cold_blocks ORDER BY id", -1, &st, NULL);
	int n = 0, same = 0;
	while (sqlite3_step(st) == SQLITE_ROW) {
		uint8_t *buf;
		uint64_t bytes;
		int64_t id = sqlite3_column_int64(st, 0);
		int32_t pos0 = sqlite3_column_int(st, 1), nt = sqlite3_column_int(st, 2);
		n++;
		if (cold_kv_read(s, id, &buf, &bytes)) {
			same += bytes == (uint64_t)nt * f->row &&
			        memcmp(buf, (uint8_t *)f->written + (size_t)pos0 * f->row, bytes) == 0;
			free(buf);
		}
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	T_CHECK(n > 0 && same == n, "%s: %d of %d blocks read back their own rows", what, same, n);
}

static int64_t file_size(const char *path)
{
	struct stat sb;
	return stat(path, &sb) == 0 ? (int64_t)sb.st_size : -1;
}

static void test_layout(struct fix *f)
{
	char *path = xasprintf("%s/layout.db", tmpdir), *kvp = xasprintf("%s-cold", path);
	struct store *s;
	struct store_cold *cold;
	int64_t id = 0;
	struct err e;
	T_CHECK(open_session(f, path, 30 * BLOCK, &s, &cold, &id, &e) == KVS_OK, "%s", e.msg);
	T_CHECK(file_size(kvp) > 0, "%s not created", kvp);
	int32_t pos = 0;
	fill(f, cold, 20, &pos);
	fill(f, cold, 20, &pos); /* over the cap of 30 blocks: the oldest 10 go */
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_blocks"), 30);
	T_EQ_INT(sqlq_int(path, "SELECT min(pos0) FROM cold_blocks"), 10 * BLOCK);
	/* nothing of the K/V in the database; one row per block in the file */
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_blocks WHERE kv_at <> 1 OR length(kv)"), 0);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold.cold_kv"), 30);
	T_EQ_INT(sqlq_int(path,
	                  "SELECT count(*) FROM cold_blocks b JOIN cold.cold_kv k ON k.id = b.id "
	                  "AND k.session_id = b.session_id"),
	         30);
	T_EQ_INT(sqlq_int(kvp, "PRAGMA application_id"), COLD_KV_APP_ID);
	check_rows(f, s, path, "layout");
	uint32_t blocks;
	uint64_t toks, bytes;
	T_EQ_INT(store_cold_count(s, id, &blocks, &toks, &bytes, &e), KVS_OK);
	T_EQ_INT(blocks, 30);
	T_EQ_INT(bytes, (uint64_t)30 * BLOCK * f->row);
	T_CHECK(store_check(s, &e) == KVS_OK, "%s", e.msg);
	store_cold_free(cold);
	store_close(s);
	/* a reader sees the same rows and bytes */
	T_CHECK(store_open(&s, path, STORE_RO, &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(store_cold_count(s, id, &blocks, &toks, &bytes, &e), KVS_OK);
	T_EQ_INT(bytes, (uint64_t)30 * BLOCK * f->row);
	store_close(s);
	free(kvp);
	free(path);
}

/* Schema 5 to 6: the old blocks stay where they are and read back, the
 * ranking does not move, new blocks go to the file. */
static void test_migrate5(struct fix *f)
{
	char *path = xasprintf("%s/v5.db", tmpdir), *kvp = xasprintf("%s-cold", path);
	struct store *s;
	struct store_cold *cold;
	int64_t id = 0;
	struct err e;
	T_CHECK(open_session(f, path, 0, &s, &cold, &id, &e) == KVS_OK, "%s", e.msg);
	int32_t pos = 0;
	fill(f, cold, 24, &pos);
	const struct hparams *hp = &f->m->hp;
	size_t nq = (size_t)2 * hp->n_layer * hp->n_head * hp->head_dim;
	float *q = xmallocarray(nq, sizeof *q);
	for (size_t k = 0; k < nq; k++)
		q[k] = (float)(2 * unit() - 1);
	int64_t ids0[8], ids1[8];
	double sc0[8], sc1[8];
	size_t n0 = 0, n1 = 0;
	T_CHECK(store_cold_summary_top(cold, q, 2, 8, 0, 0, ids0, sc0, &n0, &e) == KVS_OK, "%s", e.msg);
	store_cold_free(cold);
	store_close(s);
	sqlq_cold_kv_back(path, 5);
	T_EQ_INT(sqlq_int(path,
	                  "SELECT count(*) FROM pragma_table_info('cold_blocks') WHERE name = "
	                  "'kv_at'"),
	         0);
	T_CHECK(access(kvp, F_OK) != 0, "%s still there", kvp);
	T_EQ_INT(sqlq_int(path, "PRAGMA user_version"), 5);
	/* opened by this kvscope: migrated (the rows stay where they are),
	 * then the writer's attach moves every old block's rows to the file */
	T_CHECK(open_session(f, path, 0, &s, &cold, &id, &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(sqlq_int(path, "PRAGMA user_version"), store_schema_latest());
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_blocks WHERE kv_at = 1 AND length(kv) = 0"),
	         24);
	T_EQ_INT(sqlq_int(path,
	                  "SELECT count(*) FROM cold.cold_kv k JOIN cold_blocks b ON b.id = k.id AND "
	                  "b.session_id = k.session_id WHERE length(k.kv) = b.n_tokens * (SELECT "
	                  "bytes_per_token FROM cold_meta)"),
	         24);
	check_rows(f, s, path, "migrated and moved");
	/* a crash after a move's copy, before its blocks were marked: three
	 * blocks back at kv_at 0 with their rows in both places; the next
	 * attach finishes the move, each row once */
	store_cold_free(cold);
	store_close(s);
	sqlq_exec(path,
	          "UPDATE cold_blocks SET kv = (SELECT k.kv FROM cold.cold_kv k WHERE k.id = "
	          "cold_blocks.id), kv_at = 0 WHERE id IN (SELECT id FROM cold_blocks ORDER "
	          "BY id LIMIT 3)");
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_blocks WHERE kv_at = 0"), 3);
	T_CHECK(open_session(f, path, 0, &s, &cold, &id, &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_blocks WHERE kv_at = 1 AND length(kv) = 0"),
	         24);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold.cold_kv"), 24);
	check_rows(f, s, path, "a move cut by a crash, finished");
	T_CHECK(store_cold_summary_top(cold, q, 2, 8, 0, 0, ids1, sc1, &n1, &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(n1, n0);
	for (size_t i = 0; i < n0 && i < n1; i++)
		T_CHECK(ids0[i] == ids1[i] && sc0[i] == sc1[i],
		        "rank %zu: block %lld score %.17g before, %lld %.17g after", i, (long long)ids0[i],
		        sc0[i], (long long)ids1[i], sc1[i]);
	fill(f, cold, 6, &pos);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_blocks WHERE kv_at = 1 AND length(kv) = 0"),
	         30);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold.cold_kv"), 30);
	check_rows(f, s, path, "migrated, then written");
	uint32_t blocks;
	uint64_t toks, bytes;
	T_EQ_INT(store_cold_count(s, id, &blocks, &toks, &bytes, &e), KVS_OK);
	T_EQ_INT(bytes, (uint64_t)30 * BLOCK * f->row);
	char *ok = sqlq_text(path, "PRAGMA integrity_check");
	T_EQ_STR(ok, "ok");
	free(ok);
	free(q);
	store_cold_free(cold);
	store_close(s);
	free(kvp);
	free(path);
}

/* The bytes of a file (NULL when unreadable); *n its size. */
static char *slurp(const char *path, size_t *n)
{
	FILE *fp = fopen(path, "rb");
	if (fp == NULL)
		return NULL;
	char *b = xmalloc(1 << 20);
	*n = fread(b, 1, 1 << 20, fp);
	fclose(fp);
	return b;
}

/* PATH-cold as prepared by make: refused with a message holding want, and
 * left byte for byte. */
static void check_refused(struct fix *f, const char *name, void (*make)(const char *kvp),
                          const char *want)
{
	char *path = xasprintf("%s/%s.db", tmpdir, name), *kvp = xasprintf("%s-cold", path);
	make(kvp);
	size_t n0 = 0, n1 = 0;
	char *b0 = slurp(kvp, &n0);
	struct store *s;
	struct store_cold *cold;
	int64_t id = 0;
	struct err e;
	int rc = open_session(f, path, 0, &s, &cold, &id, &e);
	T_CHECK(rc != KVS_OK, "%s: attached", name);
	T_CHECK(strstr(e.msg, want) != NULL && strchr(e.msg, '\n') == NULL, "%s: message: %s", name,
	        e.msg);
	T_CHECK(!store_cold_attached(cold), "%s: attached anyway", name);
	char *b1 = slurp(kvp, &n1);
	T_CHECK(b0 != NULL && b1 != NULL && n0 == n1 && memcmp(b0, b1, n0) == 0, "%s: file changed",
	        name);
	free(b0);
	free(b1);
	store_cold_free(cold);
	store_close(s);
	free(kvp);
	free(path);
}

static void make_foreign(const char *kvp)
{
	sqlq_exec(kvp, "CREATE TABLE notes (x); INSERT INTO notes VALUES ('mine')");
}

static void make_garbage(const char *kvp)
{
	FILE *fp = fopen(kvp, "wb");
	T_CHECK(fp != NULL, "%s", kvp);
	for (int i = 0; i < 8192; i++)
		fputc('a' + i % 26, fp);
	fclose(fp);
}

static void make_link(const char *kvp)
{
	char *target = xasprintf("%s/elsewhere", tmpdir);
	make_garbage(target);
	T_EQ_INT(symlink(target, kvp), 0);
	free(target);
}

static void test_refusals(struct fix *f)
{
	check_refused(f, "foreign", make_foreign, "another program");
	check_refused(f, "garbage", make_garbage, "not a SQLite database");
	check_refused(f, "link", make_link, "symbolic link");
}

static void test_repair(struct fix *f)
{
	char *path = xasprintf("%s/repair.db", tmpdir);
	struct store *s;
	struct store_cold *cold;
	int64_t id = 0;
	struct err e;
	T_CHECK(open_session(f, path, 0, &s, &cold, &id, &e) == KVS_OK, "%s", e.msg);
	int32_t pos = 0;
	fill(f, cold, 10, &pos);
	store_cold_free(cold);
	store_close(s);
	int64_t last = sqlq_int(path, "SELECT max(id) FROM cold_blocks");
	char sql[400];
	/* the last block's rows never committed; rows of no block, of this
	 * session and of a session that is gone */
	snprintf(sql, sizeof sql,
	         "DELETE FROM cold.cold_kv WHERE id = %lld; INSERT INTO cold.cold_kv VALUES (%lld, "
	         "%lld, x'00'); INSERT INTO cold.cold_kv VALUES (%lld, 77, x'00')",
	         (long long)last, (long long)last + 100, (long long)id, (long long)last + 101);
	sqlq_exec(path, sql);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold.cold_kv"), 11);
	T_CHECK(open_session(f, path, 0, &s, &cold, &id, &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_blocks"), 9);
	snprintf(sql, sizeof sql,
	         "SELECT (SELECT count(*) FROM cold_blocks WHERE id = %lld) + (SELECT count(*) FROM "
	         "cold_sums WHERE id = %lld) + (SELECT count(*) FROM cold_sketch WHERE id = %lld)",
	         (long long)last, (long long)last, (long long)last);
	T_EQ_INT(sqlq_int(path, sql), 0);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_fts_docsize"), 9);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold.cold_kv"), 9);
	T_EQ_INT(sqlq_int(path,
	                  "SELECT count(*) FROM cold.cold_kv WHERE id NOT IN (SELECT id FROM "
	                  "cold_blocks)"),
	         0);
	check_rows(f, s, path, "repaired");
	/* and writing goes on */
	fill(f, cold, 2, &pos);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold.cold_kv"), 11);
	char *ok = sqlq_text(path, "PRAGMA integrity_check");
	T_EQ_STR(ok, "ok");
	free(ok);
	store_cold_free(cold);
	store_close(s);
	free(path);
}

static void test_delete(struct fix *f)
{
	char *path = xasprintf("%s/delete.db", tmpdir);
	struct store *s;
	struct store_cold *cold;
	int64_t a = 0, b = 0;
	struct err e;
	T_CHECK(open_session(f, path, 0, &s, &cold, &a, &e) == KVS_OK, "%s", e.msg);
	int32_t pos = 0;
	fill(f, cold, 5, &pos);
	store_cold_free(cold);
	store_close(s);
	T_CHECK(open_session(f, path, 0, &s, &cold, &b, &e) == KVS_OK, "%s", e.msg);
	fill(f, cold, 7, &pos);
	store_cold_free(cold);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold.cold_kv"), 12);
	T_EQ_INT(store_session_delete(s, a, &e), KVS_OK);
	char sql[96];
	snprintf(sql, sizeof sql, "SELECT count(*) FROM cold.cold_kv WHERE session_id = %lld",
	         (long long)b);
	T_EQ_INT(sqlq_int(path, sql), 7);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold.cold_kv"), 7);
	T_EQ_INT(store_vacuum(s, &e), KVS_OK);
	T_CHECK(store_check(s, &e) == KVS_OK, "%s", e.msg);
	check_rows(f, s, path, "after a deletion");
	store_close(s);
	free(path);
}

int main(void)
{
	const char *t = getenv("TMPDIR");
	snprintf(tmpdir, sizeof tmpdir, "%s/kvs-ckv-XXXXXX", t && t[0] ? t : "/tmp");
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 99;
	}
	struct fix f;
	fix_open(&f);
	test_layout(&f);
	test_migrate5(&f);
	test_refusals(&f);
	test_repair(&f);
	test_delete(&f);
	fix_close(&f);
	char *cmd = xasprintf("rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
	free(cmd);
	return t_done("test-store-cold-kv");
}
