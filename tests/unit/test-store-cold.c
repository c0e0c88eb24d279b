/*
 * test-store-cold.c: the cold tier (src/store/store-cold.c) against
 * independent facts, on a tiny model whose byte-level vocabulary spells any
 * text:
 *   - the FTS5 query of a turn's words quotes every word, so FTS syntax in
 *     user text (quotes, OR, NEAR, *, -, parentheses) is only words;
 *   - a streaming cache (4 sinks) evicting under a 32-token budget: the
 *     blocks hold exactly the evicted tokens (consecutive positions within
 *     a block, at most the block size each), their text concatenated is
 *     the text of those tokens in order, the key bounds hold every stored
 *     key;
 *   - recall by a word of the first turn brings back the block that holds
 *     it, at its original positions, flagged, with the rows it left with;
 *     the same recall again finds its tokens cached and takes nothing;
 *   - --cold-max: the oldest blocks go first, one memory event each;
 *   - a cold tier written by another model is refused with one line and its
 *     rows are left; deleting the session deletes its blocks and their
 *     full-text rows;
 *   - a flush that cannot write (another writer holds the lock) fails with
 *     one message, drops its queue and commits nothing.
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
#include <unistd.h>

static char tmpdir[256];

/* ------------------------------------------------------------- the query */

static void test_fts_query(void)
{
	const struct {
		const char *in, *want;
	} cases[] = {
		{ "What is the code word?", "\"What\" OR \"is\" OR \"the\" OR \"code\" OR \"word\"" },
		{ "zebra\" OR NEAR(x* -y) ^z",
		  "\"zebra\" OR \"OR\" OR \"NEAR\" OR \"x\" OR \"y\" OR \"z\"" },
		{ "TIGER-42", "\"TIGER\" OR \"42\"" },
		{ "caf\xc3\xa9!", "\"caf\xc3\xa9\"" },
	};
	for (size_t i = 0; i < KVS_ARRAY_LEN(cases); i++) {
		char *q = store_cold_fts_query(cases[i].in);
		T_EQ_STR(q, cases[i].want);
		free(q);
	}
	T_CHECK(store_cold_fts_query("?! \"\" -- ()") == NULL, "a query without words");
	T_CHECK(store_cold_fts_query("") == NULL, "an empty query");
	/* at most 64 terms */
	char many[1024] = "";
	for (int i = 0; i < 100; i++)
		strcat(many, "w ");
	char *q = store_cold_fts_query(many);
	size_t quotes = 0;
	for (const char *p = q; *p; p++)
		quotes += *p == '"';
	T_EQ_INT(quotes, 128);
	free(q);
}

/* --------------------------------------------------------------- a dialogue */

struct tiny {
	struct model *m;
	uint8_t *buf;
};

static void tiny_open(struct tiny *t)
{
	struct tinymodel_spec s;
	tinymodel_defaults(&s, "llama");
	s.n_embd = 64;
	s.n_ff = 128;
	s.scale = 0.5f;
	tinymodel_load(&s, &t->m, &t->buf);
}

struct run {
	struct engine *eng;
	struct kv_cache *kv;
	struct store_cold *cold;
	int32_t ids[4096]; /* every token fed, by original position */
	uint32_t n_ids;
};

static void run_open(struct run *r, const struct model *m, uint32_t block, uint64_t max)
{
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
	kc.n_batch = 8;
	if (engine_create(&r->eng, m, &c, &e) != KVS_OK || kv_cache_create(&r->kv, r->eng, &kc, &e)) {
		fprintf(stderr, "engine: %s\n", e.msg);
		exit(99);
	}
	struct store_cold_config cc = { .block = block, .max_tokens = max };
	store_cold_open(&r->cold, r->kv, m->vocab, &cc);
	kv_cache_set_cold(r->kv, store_cold_evicted, r->cold);
	r->n_ids = 0;
}

static void run_close(struct run *r)
{
	store_cold_free(r->cold);
	kv_cache_free(r->kv);
	engine_free(r->eng);
}

/* Tokenize text. */
static size_t tokens_of(const struct model *m, const char *text, int32_t **ids)
{
	size_t n = 0, cap = 0;
	struct err e;
	*ids = NULL;
	T_EQ_INT(vocab_tokenize(m->vocab, text, strlen(text), false, false, ids, &n, &cap, &e), KVS_OK);
	return n;
}

/* One user turn of text. */
static void run_turn(struct run *r, const struct model *m, const char *text)
{
	int32_t *ids;
	size_t n = tokens_of(m, text, &ids);
	struct err e;
	T_EQ_INT(kv_cache_begin_turn(r->kv, KV_ROLE_USER, (uint32_t)n, &e), KVS_OK);
	T_CHECK(kv_cache_feed(r->kv, ids, (uint32_t)n, &e) == KVS_OK, "%s", e.msg);
	memcpy(r->ids + r->n_ids, ids, n * sizeof *ids);
	r->n_ids += (uint32_t)n;
	free(ids);
}

/* The text of tokens ids[a, b). */
static char *text_of(const struct model *m, const int32_t *ids, uint32_t a, uint32_t b)
{
	struct detok d;
	char *out = NULL;
	size_t n = 0, cap = 0;
	detok_init(&d, m->vocab, false);
	for (uint32_t i = a; i < b; i++)
		detok_push(&d, ids[i], &out, &n, &cap);
	detok_flush(&d, &out, &n, &cap);
	out = xrealloc(out, n + 1);
	out[n] = '\0';
	return out;
}

static const char *const filler = " lorem ipsum dolor sit"; /* < 28 tokens: 4 sinks stay */

static void test_write_recall(const struct tiny *t)
{
	char *path = xasprintf("%s/cold.db", tmpdir);
	struct store *s;
	struct err e;
	T_CHECK(store_open(&s, path, STORE_RW, &e) == KVS_OK, "%s", e.msg);
	struct store_session in = { .title = (char *)"cold",
		                        .model_path = (char *)"tiny.gguf",
		                        .model_sha256 = (char *)"ab",
		                        .arch = (char *)"llama",
		                        .policy = (char *)"streaming",
		                        .sampler = (char *)"temp=0" };
	int64_t id = 0;
	T_EQ_INT(store_session_create(s, &in, &id, &e), KVS_OK);
	const char *sha = "1111111111111111111111111111111111111111111111111111111111111111";
	struct run r;
	run_open(&r, t->m, 16, 0);
	T_CHECK(store_cold_attach(r.cold, s, id, sha, &e) == KVS_OK, "%s", e.msg);
	run_turn(&r, t->m, "ab remember zebra quartz seven");
	for (int i = 0; i < 3; i++)
		run_turn(&r, t->m, filler);
	struct kv_stats st;
	kv_cache_stats(r.kv, &st);
	T_CHECK(st.n_evicted > 40, "only %llu evicted", (unsigned long long)st.n_evicted);
	T_EQ_INT(store_cold_pending(r.cold), st.n_evicted);
	struct store_cold_flush_info fi;
	T_CHECK(store_cold_flush(r.cold, 0, &fi, &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(fi.tokens, st.n_evicted);
	T_EQ_INT(store_cold_pending(r.cold), 0);
	/* the evicted positions: every position fed and not cached (nothing
	 * recalled yet), in order */
	int32_t gone[4096];
	uint32_t n_gone = 0;
	for (uint32_t p = 0; p < r.n_ids; p++)
		if (kv_cache_find(r.kv, (int32_t)p) < 0)
			gone[n_gone++] = r.ids[p];
	T_EQ_INT(n_gone, st.n_evicted);
	/* the rows: those positions, consecutive within a block, <= 16 a block */
	T_EQ_INT(sqlq_int(path, "SELECT sum(n_tokens) FROM cold_blocks"), st.n_evicted);
	T_EQ_INT(sqlq_int(path,
	               "SELECT count(*) FROM cold_blocks WHERE pos1 - pos0 + 1 <> n_tokens "
	               "OR n_tokens > 16 OR length(toks) <> 24 * n_tokens"),
	         0);
	T_EQ_INT(sqlq_int(path,
	               "SELECT count(*) FROM cold_blocks WHERE length(kv) <> n_tokens * "
	               "(SELECT bytes_per_token FROM cold_meta)"),
	         0);
	/* blocks never split a run more than the size asks: every block but the
	 * last of a run is full, so ceil(n / 16) blocks at most per eviction */
	uint32_t blocks;
	uint64_t toks, bytes;
	T_EQ_INT(store_cold_count(s, id, &blocks, &toks, &bytes, &e), KVS_OK);
	T_EQ_INT(toks, st.n_evicted);
	T_EQ_INT(bytes, st.n_evicted * engine_kv_bytes_per_slot(r.eng));
	/* the text, block after block, is the text of the evicted tokens */
	{
		sqlite3 *db;
		sqlite3_stmt *q;
		sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
		sqlite3_prepare_v2(db,
		                   "SELECT text, kv, kmin, kmax, n_tokens FROM cold_blocks ORDER BY pos0",
		                   -1, &q, NULL);
		size_t cap = 1 << 16, n = 0;
		char *all = xcalloc(cap, 1);
		const struct hparams *hp = &t->m->hp;
		size_t per_layer = 2 * (size_t)hp->n_head_kv * hp->head_dim;
		size_t row = engine_kv_bytes_per_slot(r.eng) / sizeof(float);
		uint32_t outside = 0;
		while (sqlite3_step(q) == SQLITE_ROW) {
			const char *tx = (const char *)sqlite3_column_text(q, 0);
			memcpy(all + n, tx, strlen(tx));
			n += strlen(tx);
			const float *kvr = sqlite3_column_blob(q, 1), *lo = sqlite3_column_blob(q, 2),
			            *hi = sqlite3_column_blob(q, 3);
			int nt = sqlite3_column_int(q, 4);
			for (int i = 0; i < nt; i++)
				for (uint32_t l = 0; l < hp->n_layer; l++)
					for (uint32_t k = 0; k < hp->n_head_kv * hp->head_dim; k++) {
						float x = kvr[(size_t)i * row + l * per_layer + k];
						size_t b = (size_t)l * hp->n_head_kv * hp->head_dim + k;
						outside += x < lo[b] || x > hi[b];
					}
		}
		sqlite3_finalize(q);
		sqlite3_close(db);
		char *want = text_of(t->m, gone, 0, n_gone);
		T_CHECK(strcmp(all, want) == 0, "block texts \"%s\", expected \"%s\"", all, want);
		T_EQ_INT(outside, 0);
		free(want);
		free(all);
	}
	/* recall by a word of the first turn */
	T_EQ_INT(kv_cache_begin_turn(r.kv, KV_ROLE_USER, 16, &e), KVS_OK);
	struct store_cold_hit *hits;
	size_t n_hits;
	T_CHECK(store_cold_recall(r.cold, "what about the zebra?", 16, &hits, &n_hits, &e) == KVS_OK,
	        "%s", e.msg);
	T_EQ_INT(n_hits, 1);
	T_EQ_INT(kv_cache_n(r.kv) <= 16, 1); /* placed only when asked */
	T_CHECK(store_cold_place(r.cold, &e) == KVS_OK, "%s", e.msg);
	if (n_hits == 1) {
		char *bt = text_of(t->m, r.ids, (uint32_t)hits[0].pos0, (uint32_t)hits[0].pos1 + 1);
		T_CHECK(strstr(bt, "zebra") != NULL, "recalled \"%s\"", bt);
		T_CHECK(hits[0].bm25 > 0, "bm25 %g", hits[0].bm25);
		free(bt);
		kv_cache_stats(r.kv, &st);
		T_EQ_INT(st.n_recalled, hits[0].n_tokens);
		for (int32_t p = hits[0].pos0; p <= hits[0].pos1; p++) {
			int32_t i = kv_cache_find(r.kv, p);
			T_CHECK(i >= 0, "position %d not recalled", p);
			if (i >= 0) {
				T_EQ_INT(kv_cache_toks(r.kv)[i].token, r.ids[p]);
				T_CHECK(kv_cache_toks(r.kv)[i].flags & KV_FLAG_RECALLED, "not flagged");
			}
		}
	}
	T_EQ_INT(kv_cache_check(r.kv, &e), KVS_OK);
	free(hits);
	/* again: its tokens are cached, nothing else matches "zebra" */
	T_EQ_INT(store_cold_recall(r.cold, "zebra", 16, &hits, &n_hits, &e), KVS_OK);
	T_EQ_INT(n_hits, 0);
	free(hits);
	/* FTS syntax in the text is only words */
	T_EQ_INT(store_cold_recall(r.cold, "\" OR NEAR( * - ^ )", 16, &hits, &n_hits, &e), KVS_OK);
	free(hits);
	T_EQ_INT(store_cold_recall(r.cold, "nothing matches xyzzy", 16, &hits, &n_hits, &e), KVS_OK);
	T_EQ_INT(n_hits, 0);
	free(hits);
	/* evicted again later, a recalled token is not written twice */
	for (int i = 0; i < 2; i++)
		run_turn(&r, t->m, filler);
	T_CHECK(store_cold_flush(r.cold, 1, &fi, &e) == KVS_OK, "%s", e.msg);
	kv_cache_stats(r.kv, &st);
	T_EQ_INT(sqlq_int(path,
	               "SELECT count(*) FROM (SELECT pos0 FROM cold_blocks GROUP BY pos0 "
	               "HAVING count(*) > 1)"),
	         0);
	run_close(&r);

	/* a cap of 40 tokens: the oldest blocks go, one memory event each */
	int64_t before = sqlq_int(path, "SELECT sum(n_tokens) FROM cold_blocks");
	run_open(&r, t->m, 16, 40);
	T_CHECK(store_cold_attach(r.cold, s, id, sha, &e) == KVS_OK, "%s", e.msg);
	for (int i = 0; i < 2; i++)
		run_turn(&r, t->m, filler);
	T_CHECK(store_cold_flush(r.cold, 2, &fi, &e) == KVS_OK, "%s", e.msg);
	T_CHECK(fi.dropped_blocks > 0, "nothing dropped (%lld before)", (long long)before);
	T_CHECK(sqlq_int(path, "SELECT sum(n_tokens) FROM cold_blocks") <= 40, "over the cap");
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM memory_events WHERE kind = 'cold-drop'"),
	         fi.dropped_blocks);
	T_EQ_INT(sqlq_int(path, "SELECT sum(n_tokens) FROM memory_events WHERE kind = 'cold-drop'"),
	         fi.dropped_tokens);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_fts WHERE cold_fts MATCH '\"zebra\"'"), 0);
	run_close(&r);

	/* a flush that cannot write: one message, the queue dropped, nothing committed */
	run_open(&r, t->m, 16, 0);
	T_CHECK(store_cold_attach(r.cold, s, id, sha, &e) == KVS_OK, "%s", e.msg);
	for (int i = 0; i < 2; i++)
		run_turn(&r, t->m, filler);
	int64_t rows = sqlq_int(path, "SELECT count(*) FROM cold_blocks");
	sqlite3 *other;
	sqlite3_open(path, &other);
	T_EQ_INT(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
	store_set_busy_timeout(s, 50);
	T_EQ_INT(store_cold_flush(r.cold, 3, &fi, &e), KVS_EIO);
	T_CHECK(strstr(e.msg, "cold tier not written") != NULL && strchr(e.msg, '\n') == NULL,
	        "message: %s", e.msg);
	T_EQ_INT(store_cold_pending(r.cold), 0);
	sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL);
	sqlite3_close(other);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_blocks"), rows);
	store_set_busy_timeout(s, 5000);
	run_close(&r);

	/* another model's cold tier: refused, one line, rows left */
	rows = sqlq_int(path, "SELECT count(*) FROM cold_blocks");
	run_open(&r, t->m, 16, 0);
	const char *sha2 = "2222222222222222222222222222222222222222222222222222222222222222";
	T_EQ_INT(store_cold_attach(r.cold, s, id, sha2, &e), KVS_EFORMAT);
	T_CHECK(strstr(e.msg, "another model") != NULL && strchr(e.msg, '\n') == NULL, "message: %s",
	        e.msg);
	T_CHECK(!store_cold_attached(r.cold), "attached after a refusal");
	run_close(&r);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_blocks"), rows);
	char *want = xasprintf("SELECT count(*) FROM cold_meta WHERE model_sha256 = '%s'", sha);
	T_EQ_INT(sqlq_int(path, want), 1);
	free(want);

	/* deleting the session deletes its blocks and their full-text rows */
	const char *any = "SELECT count(*) FROM cold_fts WHERE cold_fts MATCH '\"lorem\" OR \"ipsum\" "
	                  "OR \"dolor\" OR \"sit\"'";
	T_EQ_INT(sqlq_int(path, any) > 0, 1);
	T_EQ_INT(store_session_delete(s, id, &e), KVS_OK);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_blocks"), 0);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_meta"), 0);
	T_EQ_INT(sqlq_int(path, any), 0);
	T_EQ_INT(store_check(s, &e), KVS_OK);
	store_close(s);
	free(path);
}

int main(void)
{
	struct tiny t;
	snprintf(tmpdir, sizeof tmpdir, "%s/kvs-cold-XXXXXX",
	         getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 99;
	}
	test_fts_query();
	tiny_open(&t);
	test_write_recall(&t);
	model_free(t.m);
	free(t.buf);
	char *cmd = xasprintf("rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
	free(cmd);
	return t_done("test-store-cold");
}
