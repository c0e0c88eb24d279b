/*
 * test-store-cold.c: the cold tier (src/store/store-cold.c) against
 * independent facts, on a tiny model whose byte-level vocabulary spells any
 * text:
 *   - the FTS5 query of a turn's words quotes every word, so FTS syntax in
 *     user text (quotes, OR, NEAR, *, -, parentheses) is only words;
 *   - a streaming cache (4 sinks) evicting under a 32-token budget: the
 *     blocks hold exactly the evicted tokens (consecutive positions within
 *     a block, at most the block size each), their text concatenated is
 *     the text of those tokens in order, the key bounds (the summary
 *     index's cold_sums rows) hold every stored key;
 *   - recall by a word of the first turn brings back the block that holds
 *     it, at its original positions, flagged, with the rows it left with;
 *     the same recall again finds its tokens cached and takes nothing;
 *   - --cold-max: the oldest blocks go first, one memory event each;
 *   - a cold tier written by another model is refused with one line and its
 *     rows are left; deleting the session deletes its blocks and their
 *     full-text rows;
 *   - a flush that cannot write (another writer holds the lock) fails with
 *     one message, drops its queue and commits nothing;
 *   - the summary score: hand-computed cases, and never below the brute
 *     force best of q.k over a block's keys (equal for one key);
 *   - want_q gives the queries attention uses, before RoPE (with every
 *     token at one position, softmax(q.k / sqrt(head_dim)) over the keys
 *     before RoPE equals the engine's attention weights);
 *   - the probe leaves the cache as it was; summary recalls the block this
 *     test scores best from the stored rows; both puts the block the words
 *     alone match first and, without matching words, follows summary; a
 *     custom scorer sees every block, and one that fails falls back to both;
 *   - a full disk (SQLite's max_page_count at the current size): the cold
 *     write fails with one message and stops cold writes, the chat goes on,
 *     committed turns stay, and the exchange whose commit failed is
 *     committed with the next once there is room.
 */
#include "app/app.h"
#include "engine/engine.h"
#include "model/model.h"
#include "store/store-int.h"
#include "store/store.h"
#include "tests/unit/test.h"
#include "tests/util/ggufw.h"
#include "tests/util/sqlq.h"
#include "tests/util/tinymodel.h"

#include <math.h>
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
	                  "SELECT count(*) FROM cold_blocks_kv WHERE length(kv) IS NOT n_tokens * "
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
		sqlq_open(path, 0, &db);
		sqlite3_prepare_v2(db,
		                   "SELECT b.text, b.kv, s.kmin, s.kmax, b.n_tokens FROM cold_blocks_kv b "
		                   "JOIN cold_sums s ON s.id = b.id ORDER BY b.pos0",
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

/* ------------------------------------------------------- the summary score */

/* The position-free logit's best over a block's keys, the brute force the
 * bound must never fall under: the mean over layers of the max over probe
 * tokens, query heads and keys of q.k / sqrt(head_dim). */
static double brute_best(const float *q, uint32_t n_q, uint32_t nl, uint32_t nh, uint32_t nkv,
                         uint32_t hd, const float *keys, uint32_t n_keys)
{
	double total = 0;
	for (uint32_t l = 0; l < nl; l++) {
		double best = -1e300;
		for (uint32_t p = 0; p < n_q; p++)
			for (uint32_t h = 0; h < nh; h++)
				for (uint32_t t = 0; t < n_keys; t++) {
					const float *qh = q + (((size_t)p * nl + l) * nh + h) * hd;
					const float *k = keys + (((size_t)t * nl + l) * nkv + h / (nh / nkv)) * hd;
					double dot = 0;
					for (uint32_t d = 0; d < hd; d++)
						dot += (double)qh[d] * k[d];
					best = dot > best ? dot : best;
				}
		total += best;
	}
	return total / nl / sqrt((double)hd);
}

static void test_summary_score(void)
{
	/* by hand: one layer, two query heads on one KV head, two channels;
	 * head 0 (1, -2): max(3, -1) + max(-2, 0) = 3; head 1 (-1, 0.5):
	 * max(-3, 1) + max(0.5, 0) = 1.5; the layer's best 3, over sqrt(2) */
	const float q1[] = { 1, -2, -1, 0.5f };
	const float mn1[] = { -1, 0 }, mx1[] = { 3, 1 };
	T_NEAR(store_cold_summary_score(q1, 1, 1, 2, 1, 2, mn1, mx1), 3 / sqrt(2.0), 1e-6);
	/* a second layer, bounds min (5, -4), max (6, 1): head 0 (0, 1) gives
	 * 0 + max(1, -4) = 1, head 1 (0, -1) gives 0 + max(-1, 4) = 4; the mean
	 * of the layers' best, (3 + 4) / 2, over sqrt(2) */
	const float q2[] = { 1, -2, -1, 0.5f, 0, 1, 0, -1 };
	const float mn2[] = { -1, 0, 5, -4 }, mx2[] = { 3, 1, 6, 1 };
	T_NEAR(store_cold_summary_score(q2, 1, 2, 2, 1, 2, mn2, mx2), 3.5 / sqrt(2.0), 1e-6);
	/* random blocks against the brute force: never below it, equal for one key */
	enum { NL = 3, NH = 4, NKV = 2, HD = 8, NQ = 3, NK = 6 };
	uint64_t rng = 12345;
	uint32_t below = 0, one_off = 0;
	double worst_gap = 0;
	for (int trial = 0; trial < 200; trial++) {
		float q[NQ * NL * NH * HD], keys[NK * NL * NKV * HD], mn[NL * NKV * HD], mx[NL * NKV * HD];
		for (size_t i = 0; i < KVS_ARRAY_LEN(q); i++)
			q[i] = tinymodel_rand(&rng);
		for (size_t i = 0; i < KVS_ARRAY_LEN(keys); i++)
			keys[i] = 3 * tinymodel_rand(&rng);
		uint32_t nk = trial % 2 ? NK : 1, nq = 1 + trial % NQ;
		for (size_t i = 0; i < KVS_ARRAY_LEN(mn); i++) {
			mn[i] = mx[i] = keys[i];
			for (uint32_t t = 1; t < nk; t++) {
				float x = keys[(size_t)t * NL * NKV * HD + i];
				mn[i] = x < mn[i] ? x : mn[i];
				mx[i] = x > mx[i] ? x : mx[i];
			}
		}
		double s = store_cold_summary_score(q, nq, NL, NH, NKV, HD, mn, mx);
		double b = brute_best(q, nq, NL, NH, NKV, HD, keys, nk);
		below += s < b - 1e-9;
		if (nk == 1)
			one_off += fabs(s - b) > 1e-9 * (1 + fabs(b));
		worst_gap = s - b > worst_gap ? s - b : worst_gap;
	}
	T_EQ_INT(below, 0);
	T_EQ_INT(one_off, 0);
	T_CHECK(worst_gap > 0, "the bound was never loose (%g): the trials tested nothing", worst_gap);
}

/* The queries want_q gives are the ones attention uses, before RoPE: with
 * every token at the same position (5) the rotations cancel, so the last
 * token's attention weights are softmax_j(q . k_j / sqrt(head_dim)) over
 * the keys before RoPE as engine_kv_read gives them, recomputed here and
 * compared (a rotated query would not match). */
static void test_probe_queries(const struct tiny *t)
{
	struct engine_config c;
	struct engine *eng;
	struct err e;
	engine_config_default(&c);
	c.backend = ENGINE_BACKEND_CPU;
	c.n_threads = 1;
	c.n_ctx = 16;
	c.kv_type = ENGINE_KV_F32;
	if (engine_create(&eng, t->m, &c, &e) != KVS_OK) {
		fprintf(stderr, "engine: %s\n", e.msg);
		exit(99);
	}
	const struct hparams *hp = &t->m->hp;
	int32_t ids[5] = { 65, 66, 67, 68, 69 }, pos[5] = { 5, 5, 5, 5, 5 };
	uint32_t slots[5] = { 0, 1, 2, 3, 4 };
	struct engine_batch b = { 0 };
	struct engine_out o;
	/* one token a batch (positions rise within a batch), each seeing the
	 * ones before it */
	for (uint32_t i = 0; i < 4; i++) {
		b.n_tokens = 1;
		b.tokens = ids + i;
		b.pos = pos;
		b.slot = slots + i;
		b.n_visible = i + 1;
		b.visible = slots;
		b.logits = ENGINE_LOGITS_NONE;
		T_CHECK(engine_forward(eng, &b, &o, &e) == KVS_OK, "%s", e.msg);
	}
	b.n_tokens = 1;
	b.tokens = ids + 4;
	b.slot = slots + 4;
	b.n_visible = 5;
	b.want_attn = true;
	b.want_q = true;
	T_CHECK(engine_forward(eng, &b, &o, &e) == KVS_OK, "%s", e.msg);
	T_CHECK(o.q != NULL && o.attn != NULL && o.n_visible == 5, "want_q and want_attn answered");
	double worst = 0;
	uint32_t hd = hp->head_dim, grp = hp->n_head / hp->n_head_kv;
	float k[256];
	for (uint32_t l = 0; l < hp->n_layer && o.q != NULL; l++)
		for (uint32_t h = 0; h < hp->n_head; h++) {
			const float *q = o.q + ((size_t)l * hp->n_head + h) * hd;
			double z[5], mx = -1e300, sum = 0;
			for (uint32_t j = 0; j < 5; j++) {
				T_EQ_INT(engine_kv_read(eng, l, j, h / grp, false, false, k, &e), KVS_OK);
				z[j] = 0;
				for (uint32_t d = 0; d < hd; d++)
					z[j] += (double)q[d] * k[d];
				z[j] /= sqrt((double)hd);
				mx = z[j] > mx ? z[j] : mx;
			}
			for (uint32_t j = 0; j < 5; j++)
				sum += exp(z[j] - mx);
			for (uint32_t j = 0; j < 5; j++) {
				double w = exp(z[j] - mx) / sum;
				double got = o.attn[((size_t)l * hp->n_head + h) * 5 + j];
				worst = fabs(w - got) > worst ? fabs(w - got) : worst;
			}
		}
	printf("want_q: attention from the queries against the engine's, max difference %.3g\n", worst);
	T_CHECK(worst < 1e-4, "attention recomputed from want_q differs by %g", worst);
	engine_free(eng);
}

/* ------------------------------------------------------------ the rankings */

/* A custom scorer: the earliest block first. */
static bool score_earliest(void *ud, const struct store_cold_cand *c, size_t n, double *scores)
{
	size_t *calls = ud;
	++*calls;
	for (size_t i = 0; i < n; i++) {
		scores[i] = -(double)c[i].hit->pos0;
		if (c[i].text == NULL)
			return false;
	}
	return true;
}

static bool score_fails(void *ud, const struct store_cold_cand *c, size_t n, double *scores)
{
	(void)ud, (void)c, (void)n, (void)scores;
	return false;
}

/* Every block's summary score against q (n_q probe tokens), computed here
 * from the block's stored K rows (f32 cache): bounds taken by this test. */
static size_t all_scores(const char *path, const struct hparams *hp, size_t row_floats,
                         const float *q, uint32_t n_q, int64_t *ids, double *scores, size_t cap)
{
	sqlite3 *db;
	sqlite3_stmt *st;
	size_t n = 0, nb = (size_t)hp->n_layer * hp->n_head_kv * hp->head_dim;
	size_t per_layer = 2 * (size_t)hp->n_head_kv * hp->head_dim;
	float *mn = xcalloc(nb, sizeof *mn), *mx = xcalloc(nb, sizeof *mx);
	sqlq_open(path, 0, &db);
	sqlite3_prepare_v2(db, "SELECT id, kv, n_tokens FROM cold_blocks_kv", -1, &st, NULL);
	while (sqlite3_step(st) == SQLITE_ROW && n < cap) {
		const float *kv = sqlite3_column_blob(st, 1);
		int nt = sqlite3_column_int(st, 2);
		for (uint32_t l = 0; l < hp->n_layer; l++)
			for (size_t k = 0; k < (size_t)hp->n_head_kv * hp->head_dim; k++) {
				size_t b = l * (size_t)hp->n_head_kv * hp->head_dim + k;
				mn[b] = INFINITY;
				mx[b] = -INFINITY;
				for (int i = 0; i < nt; i++) {
					float x = kv[(size_t)i * row_floats + l * per_layer + k];
					mn[b] = fminf(mn[b], x);
					mx[b] = fmaxf(mx[b], x);
				}
			}
		ids[n] = sqlite3_column_int64(st, 0);
		scores[n++] = store_cold_summary_score(q, n_q, hp->n_layer, hp->n_head, hp->n_head_kv,
		                                       hp->head_dim, mn, mx);
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	free(mn);
	free(mx);
	return n;
}

/* Recall query's best block (it must be block id, positions p0..p1, with
 * some of its tokens evicted) with a budget of just its evicted tokens,
 * place it, and check that each placed token holds its own row of the
 * block's stored rows (cold_kv_read: row p - p0). */
static void place_check(struct run *r, struct store *s, struct store_cold_query *query, int64_t id,
                        int32_t p0, int32_t p1, const char *what)
{
	bool was_out[64] = { false };
	uint32_t out = 0;
	struct err e;
	for (int32_t p = p0; p <= p1 && p - p0 < 64; p++)
		out += was_out[p - p0] = kv_cache_find(r->kv, p) < 0;
	struct store_cold_hit *hits;
	size_t n_hits;
	T_CHECK(store_cold_recall_by(r->cold, query, out, &hits, &n_hits, &e) == KVS_OK, "%s", e.msg);
	T_CHECK(n_hits == 1 && hits[0].id == id && hits[0].n_tokens == out, "%s: %zu blocks recalled",
	        what, n_hits);
	free(hits);
	T_EQ_INT(kv_cache_begin_turn(r->kv, KV_ROLE_USER, out, &e), KVS_OK); /* room */
	T_CHECK(store_cold_place(r->cold, &e) == KVS_OK, "%s: %s", what, e.msg);
	uint64_t bytes = 0, row = engine_kv_bytes_per_slot(r->eng);
	uint8_t *all = NULL, *got = xmalloc(row);
	T_CHECK(cold_kv_read(s, id, &all, &bytes), "%s: block %lld: no K/V rows", what, (long long)id);
	uint32_t same = 0, placed = 0;
	for (int32_t p = p0; all != NULL && p <= p1 && p - p0 < 64; p++) {
		int32_t i = kv_cache_find(r->kv, p);
		if (!was_out[p - p0] || i < 0)
			continue;
		placed++;
		if (engine_kv_save(r->eng, kv_cache_toks(r->kv)[i].slot, got, &e) == KVS_OK)
			same += memcmp(got, all + (size_t)(p - p0) * row, row) == 0;
	}
	T_CHECK(placed == out && same == out,
	        "%s: block %lld: %u of %u evicted tokens placed, %u with their own rows", what,
	        (long long)id, placed, out, same);
	free(all);
	free(got);
}

static void test_rankings(const struct tiny *t)
{
	char *path = xasprintf("%s/rank.db", tmpdir);
	struct store *s;
	struct err e;
	T_CHECK(store_open(&s, path, STORE_RW, &e) == KVS_OK, "%s", e.msg);
	struct store_session in = { .title = (char *)"rank",
		                        .model_path = (char *)"tiny.gguf",
		                        .model_sha256 = (char *)"ab",
		                        .arch = (char *)"llama",
		                        .policy = (char *)"streaming",
		                        .sampler = (char *)"temp=0" };
	int64_t id = 0;
	T_EQ_INT(store_session_create(s, &in, &id, &e), KVS_OK);
	const char *sha = "3333333333333333333333333333333333333333333333333333333333333333";
	struct run r;
	run_open(&r, t->m, 16, 0);
	T_CHECK(store_cold_attach(r.cold, s, id, sha, &e) == KVS_OK, "%s", e.msg);
	run_turn(&r, t->m, "ab remember zebra quartz seven");
	for (int i = 0; i < 3; i++)
		run_turn(&r, t->m, filler);
	struct store_cold_flush_info fi;
	T_CHECK(store_cold_flush(r.cold, 0, &fi, &e) == KVS_OK, "%s", e.msg);
	T_CHECK(store_cold_has_blocks(r.cold), "no blocks after a flush");
	T_CHECK(fi.blocks >= 3, "%u blocks", fi.blocks);

	/* the probe: queries of the turn to come, the cache left as it was */
	const struct hparams *hp = &t->m->hp;
	size_t per = (size_t)hp->n_layer * hp->n_head * hp->head_dim;
	int32_t *pids;
	size_t np = tokens_of(t->m, "what about the zebra?", &pids);
	float *q = xcalloc(np * per, sizeof *q), *q2 = xcalloc(np * per, sizeof *q2);
	uint32_t n0 = kv_cache_n(r.kv);
	struct kv_tok before[64];
	memcpy(before, kv_cache_toks(r.kv), n0 * sizeof *before);
	T_EQ_INT(kv_cache_begin_turn(r.kv, KV_ROLE_USER, (uint32_t)np, &e), KVS_OK);
	n0 = kv_cache_n(r.kv);
	memcpy(before, kv_cache_toks(r.kv), n0 * sizeof *before);
	int32_t next = kv_cache_next_pos(r.kv);
	T_CHECK(kv_cache_probe(r.kv, pids, (uint32_t)np, q, &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(kv_cache_n(r.kv), n0);
	T_EQ_INT(kv_cache_next_pos(r.kv), next);
	T_CHECK(memcmp(before, kv_cache_toks(r.kv), n0 * sizeof *before) == 0, "tokens changed");
	T_EQ_INT(kv_cache_check(r.kv, &e), KVS_OK);
	/* the same probe twice gives the same queries (its slots were emptied,
	 * nothing of the first run is visible to the second) */
	T_CHECK(kv_cache_probe(r.kv, pids, (uint32_t)np, q2, &e) == KVS_OK, "%s", e.msg);
	T_CHECK(memcmp(q, q2, np * per * sizeof *q) == 0, "a second probe differs");
	T_EQ_INT(kv_cache_probe(r.kv, pids, 65, q2, &e), KVS_ERANGE);
	uint32_t n_q = np < 3 ? (uint32_t)np : 3;
	const float *ql = q + (np - n_q) * per;

	/* summary: every block scored as this test scores it from its rows;
	 * the best one first */
	int64_t ids[256];
	double want[256];
	size_t n_all = all_scores(path, hp, engine_kv_bytes_per_slot(r.eng) / sizeof(float), ql, n_q,
	                          ids, want, 256);
	T_EQ_INT(n_all, fi.blocks);
	struct store_cold_query query = { .text = "zebra", .q = ql, .n_q = n_q };
	query.rank = STORE_COLD_SUMMARY;
	struct store_cold_hit *hits;
	size_t n_hits;
	T_CHECK(store_cold_recall_by(r.cold, &query, 16, &hits, &n_hits, &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(n_hits, 1);
	double best = -INFINITY;
	int64_t best_id = 0;
	for (size_t i = 0; i < n_all; i++)
		if (want[i] > best) {
			best = want[i];
			best_id = ids[i];
		}
	if (n_hits == 1) {
		T_EQ_INT(hits[0].id, best_id);
		T_NEAR(hits[0].summary, best, 1e-6 * (1 + fabs(best)));
		T_CHECK(hits[0].bm25 == 0, "summary alone gave BM25 %g", hits[0].bm25);
	}
	free(hits);

	/* both: the rankings interleave, FTS first, so the one block the
	 * words match comes first whatever its summary rank */
	query.rank = STORE_COLD_BOTH;
	T_CHECK(store_cold_recall_by(r.cold, &query, 16, &hits, &n_hits, &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(n_hits, 1);
	if (n_hits == 1) {
		char *bt = text_of(t->m, r.ids, (uint32_t)hits[0].pos0, (uint32_t)hits[0].pos1 + 1);
		T_CHECK(strstr(bt, "zebra") != NULL, "both recalled \"%s\"", bt);
		T_CHECK(hits[0].bm25 > 0 && isfinite(hits[0].summary), "bm25 %g summary %g", hits[0].bm25,
		        hits[0].summary);
		free(bt);
	}
	free(hits);
	/* both with a summary ranking of one block: the block the words match
	 * still leads (it used to be dropped unless the summary also ranked it) */
	query.top_k = 1;
	T_CHECK(store_cold_recall_by(r.cold, &query, 16, &hits, &n_hits, &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(n_hits, 1);
	int64_t zebra = n_hits == 1 ? hits[0].id : 0;
	if (n_hits == 1) {
		char *bt = text_of(t->m, r.ids, (uint32_t)hits[0].pos0, (uint32_t)hits[0].pos1 + 1);
		T_CHECK(strstr(bt, "zebra") != NULL, "both, k 1, recalled \"%s\"", bt);
		T_CHECK(hits[0].bm25 > 0, "bm25 %g", hits[0].bm25);
		/* scored by the summary only where it is the summary's best */
		T_CHECK(hits[0].id == best_id ? isfinite(hits[0].summary) : isnan(hits[0].summary),
		        "block %lld (summary's best %lld): summary %g", (long long)hits[0].id,
		        (long long)best_id, hits[0].summary);
		free(bt);
	}
	free(hits);
	query.top_k = 0;
	/* placed, the block is in the cache: a recall leaves out its tokens
	 * there, and a block with none left is not recalled; after a turn
	 * evicts part of it again, only that part comes back */
	T_CHECK(store_cold_recall_by(r.cold, &query, 16, &hits, &n_hits, &e) == KVS_OK, "%s", e.msg);
	free(hits);
	T_EQ_INT(kv_cache_begin_turn(r.kv, KV_ROLE_USER, 16, &e), KVS_OK);
	T_EQ_INT(store_cold_place(r.cold, &e), KVS_OK);
	T_CHECK(store_cold_recall_by(r.cold, &query, 16, &hits, &n_hits, &e) == KVS_OK, "%s", e.msg);
	for (size_t i = 0; i < n_hits; i++)
		T_CHECK(hits[i].id != zebra, "block %lld recalled while in the cache", (long long)zebra);
	free(hits);
	/* a turn of 6 tokens into the full cache evicts the 6 oldest past the
	 * sinks: the front of the recalled block */
	T_EQ_INT(kv_cache_begin_turn(r.kv, KV_ROLE_USER, 6, &e), KVS_OK);
	char zsql[128];
	snprintf(zsql, sizeof zsql, "SELECT pos0 FROM cold_blocks WHERE id = %lld", (long long)zebra);
	int32_t zp0 = (int32_t)sqlq_int(path, zsql);
	snprintf(zsql, sizeof zsql, "SELECT pos1 FROM cold_blocks WHERE id = %lld", (long long)zebra);
	int32_t zp1 = (int32_t)sqlq_int(path, zsql);
	uint32_t out = 0, in_cache = 0;
	for (int32_t p = zp0; p <= zp1; p++)
		kv_cache_find(r.kv, p) >= 0 ? in_cache++ : out++;
	T_CHECK(store_cold_recall_by(r.cold, &query, 64, &hits, &n_hits, &e) == KVS_OK, "%s", e.msg);
	size_t zi = 0;
	while (zi < n_hits && hits[zi].id != zebra)
		zi++;
	T_CHECK(out > 0 && in_cache > 0, "block %lld: %u evicted, %u cached: not a partial block",
	        (long long)zebra, out, in_cache);
	T_CHECK(zi < n_hits && hits[zi].n_tokens == out,
	        "block %lld with %u of its tokens evicted again (%u cached): %s %u", (long long)zebra,
	        out, in_cache, zi < n_hits ? "recalled" : "not recalled",
	        zi < n_hits ? hits[zi].n_tokens : 0);
	printf("test-store-cold: the words' block %lld, %u tokens evicted again and %u cached: %u "
	       "recalled\n",
	       (long long)zebra, out, in_cache, zi < n_hits ? hits[zi].n_tokens : 0);
	free(hits);
	/* with no word matching, both is summary's order */
	query.text = "xyzzy";
	T_EQ_INT(store_cold_recall_by(r.cold, &query, 16, &hits, &n_hits, &e), KVS_OK);
	T_CHECK(n_hits == 1 && hits[0].id == best_id, "both without words: %zu hits", n_hits);
	free(hits);
	/* summary without a probe: the words alone */
	query.text = "zebra";
	query.q = NULL;
	query.rank = STORE_COLD_SUMMARY;
	T_EQ_INT(store_cold_recall_by(r.cold, &query, 16, &hits, &n_hits, &e), KVS_OK);
	T_CHECK(n_hits == 1 && hits[0].bm25 > 0 && isnan(hits[0].summary),
	        "summary without a probe: %zu hits", n_hits);
	free(hits);
	/* a custom scorer sees every block with its text; the earliest first */
	size_t calls = 0;
	query.q = ql;
	query.rank = STORE_COLD_SCORES;
	query.scorer = score_earliest;
	query.scorer_ud = &calls;
	T_EQ_INT(store_cold_recall_by(r.cold, &query, 16, &hits, &n_hits, &e), KVS_OK);
	T_EQ_INT(calls, 1);
	T_CHECK(n_hits >= 1 && hits[0].pos0 == sqlq_int(path, "SELECT min(pos0) FROM cold_blocks"),
	        "custom scorer: %zu hits, first at %d", n_hits, n_hits ? hits[0].pos0 : -1);
	free(hits);
	/* one that fails: both's order */
	query.scorer = score_fails;
	T_EQ_INT(store_cold_recall_by(r.cold, &query, 16, &hits, &n_hits, &e), KVS_OK);
	if (n_hits == 1) {
		char *bt = text_of(t->m, r.ids, (uint32_t)hits[0].pos0, (uint32_t)hits[0].pos1 + 1);
		T_CHECK(strstr(bt, "zebra") != NULL, "fallback recalled \"%s\"", bt);
		free(bt);
	}
	T_EQ_INT(n_hits, 1);
	free(hits);
	/* the block evicted again in part, recalled and placed: each of its
	 * evicted tokens holds the rows its position had in the block as
	 * stored (row p - pos0 of the block's rows for position p); first with
	 * its front evicted (streaming's order), then with a hole in its
	 * middle (its first two tokens pinned, the next three evicted) */
	query.text = "zebra";
	query.q = ql;
	query.rank = STORE_COLD_BOTH;
	query.scorer = NULL;
	place_check(&r, s, &query, zebra, zp0, zp1, "front");
	T_EQ_INT(kv_cache_pin(r.kv, zp0, true, &e), KVS_OK);
	T_EQ_INT(kv_cache_pin(r.kv, zp0 + 1, true, &e), KVS_OK);
	/* a turn that needs the cache's free room and three slots more */
	T_EQ_INT(kv_cache_begin_turn(r.kv, KV_ROLE_USER, kv_cache_budget(r.kv) - kv_cache_n(r.kv) + 3,
	                             &e),
	         KVS_OK);
	T_CHECK(kv_cache_find(r.kv, zp0 + 1) >= 0 && kv_cache_find(r.kv, zp0 + 2) < 0 &&
	                kv_cache_find(r.kv, zp0 + 4) < 0 && kv_cache_find(r.kv, zp1) >= 0,
	        "block %lld: no hole in its middle", (long long)zebra);
	place_check(&r, s, &query, zebra, zp0, zp1, "middle");
	free(q);
	free(q2);
	free(pids);
	run_close(&r);
	store_close(s);
	free(path);
}

/* ------------------------------------------------------------ a full disk */

struct cold_seen {
	uint32_t writes, stops, saved_ok, saved_failed;
	char msg[512];
};

static void full_on_cold(void *ud, const struct session_cold_event *ev)
{
	struct cold_seen *s = ud;
	s->writes += ev->kind == SESSION_COLD_WRITE;
	if (ev->kind == SESSION_COLD_STOP) {
		s->stops++;
		snprintf(s->msg, sizeof s->msg, "%s", ev->msg ? ev->msg : "");
	}
}

static void full_on_saved(void *ud, int64_t id, uint32_t index, int status, const char *msg)
{
	struct cold_seen *s = ud;
	(void)id, (void)index, (void)msg;
	if (status == KVS_OK)
		s->saved_ok++;
	else
		s->saved_failed++;
}

/* The database's size cap, as SQLite's max_page_count: pages (0: the
 * current page count, so that nothing more fits). */
static void full_cap(struct store *st, int64_t pages)
{
	char sql[96];
	if (pages == 0) {
		sqlite3_stmt *q;
		sqlite3_prepare_v2(st->db, "PRAGMA page_count", -1, &q, NULL);
		if (sqlite3_step(q) == SQLITE_ROW)
			pages = sqlite3_column_int64(q, 0);
		sqlite3_finalize(q);
	}
	snprintf(sql, sizeof sql, "PRAGMA max_page_count = %lld", (long long)pages);
	T_EQ_INT(sqlite3_exec(st->db, sql, NULL, NULL, NULL), SQLITE_OK);
}

/* A cold write that hits SQLITE_FULL stops cold writes with one message;
 * the chat goes on, and every turn committed stays as it was (the
 * exchange whose commit failed too is committed with the next one). */
static void test_full_disk(void)
{
	char *mpath = tinymodel_write_temp("cold-full");
	char *path = xasprintf("%s/full.db", tmpdir);
	struct store *st;
	struct err e;
	T_CHECK(store_open(&st, path, STORE_RW, &e) == KVS_OK, "%s", e.msg);
	struct session_config c;
	session_config_default(&c);
	c.gen.model_path = mpath;
	c.gen.engine.backend = ENGINE_BACKEND_CPU;
	c.gen.engine.n_threads = 1;
	c.gen.sampler.temp = 0;
	kv_policy_parse("streaming", &c.gen.kv.policy, NULL);
	c.gen.kv.budget = 64;
	c.max_tokens = 6;
	c.system = "be brief";
	struct session *s;
	T_CHECK(session_open(&s, &c, &e) == KVS_OK, "%s", e.msg);
	struct cold_seen seen = { 0 };
	struct session_hooks h = { .cold = full_on_cold, .saved = full_on_saved, .ud = &seen };
	session_set_hooks(s, &h);
	struct session_store ss = {
		.st = st,
		.title = "full",
		.model_path = mpath,
		.model_sha256 = "4444444444444444444444444444444444444444444444444444444444444444",
		.sampler = "temp=0",
	};
	T_CHECK(session_set_store(s, &ss, &e) == KVS_OK, "%s", e.msg);
	struct session_cold_config cc = {
		.on = true, .block = 16, .recall = SESSION_RECALL_FTS, .recall_budget = 16
	};
	session_set_cold(s, &cc);
	for (int i = 0; i < 4; i++)
		T_CHECK(session_chat(s, "zebra quartz seven", &e) == KVS_OK, "%s", e.msg);
	T_CHECK(seen.writes > 0, "no cold write in four exchanges");
	T_EQ_INT(seen.saved_ok, 4);
	int64_t blocks = sqlq_int(path, "SELECT count(*) FROM cold_blocks");
	int64_t turns = sqlq_int(path, "SELECT count(*) FROM turns");
	T_CHECK(blocks > 0 && turns == 4, "%lld blocks, %lld turns", (long long)blocks,
	        (long long)turns);

	/* the disk is full: the exchange's commit and its cold write fail; the
	 * chat goes on */
	full_cap(st, 0);
	T_CHECK(session_chat(s, "zebra quartz seven", &e) == KVS_OK, "the chat stopped: %s", e.msg);
	T_EQ_INT(seen.stops, 1);
	T_CHECK(strstr(seen.msg, "full") != NULL && strstr(seen.msg, "cold tier not written") &&
	                strchr(seen.msg, '\n') == NULL,
	        "message: %s", seen.msg);
	/* the exchange's commit may have fitted in free pages; none was lost */
	int64_t now = sqlq_int(path, "SELECT count(*) FROM turns");
	T_CHECK(now == turns || (now == turns + 1 && seen.saved_failed == 0), "%lld turns",
	        (long long)now);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_blocks"), blocks);

	/* room again: turns commit (the failed one with the next), cold writes
	 * stay stopped, said once */
	full_cap(st, 1 << 30);
	uint32_t writes = seen.writes;
	for (int i = 0; i < 2; i++)
		T_CHECK(session_chat(s, "zebra quartz seven", &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(seen.stops, 1);
	T_EQ_INT(seen.writes, writes);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM turns"), 7);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_blocks"), blocks);
	T_EQ_INT(store_check(st, &e), KVS_OK);
	session_close(s);
	store_close(st);
	unlink(mpath);
	free(mpath);
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
	test_summary_score();
	test_probe_queries(&t);
	test_rankings(&t);
	test_full_disk();
	model_free(t.m);
	free(t.buf);
	char *cmd = xasprintf("rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
	free(cmd);
	return t_done("test-store-cold");
}
