/*
 * test-store-cold-index.c: the cold tier's summary index
 * (src/store/store-cold-index.c) against a brute-force scan that this test
 * computes itself from the blocks' stored K/V rows:
 *   - synthetic evicted tokens (a tiny model's KV shape, f32) in blocks of
 *     8, index groups of 4, flushes that end mid-group; each block's keys
 *     have a scale that drifts with its position, so whole groups score
 *     low and the search has something to prune;
 *   - for random probes and k = 1, 3, 64: the index's top k equals the
 *     first k of the brute-force ranking (score descending, pos0
 *     ascending), block for block, score for score; the full scan equals
 *     the whole brute-force ranking; some searches read fewer groups than
 *     there are (the pruning happens), none reads more;
 *   - the public recall (rank summary, a one-block budget) brings back
 *     the brute force's best block;
 *   - --cold-max drops the oldest blocks: their summaries go with them,
 *     groups left empty are deleted, every summary is in a group whose
 *     bounds hold it, and the search still equals the scan;
 *   - an old database (schema 2: bounds in cold_blocks, no index) migrates
 *     to the latest schema: its blocks get summaries (ungrouped until the
 *     writer attaches, then grouped), and the search equals the brute
 *     force before and after the grouping;
 *   - the two stages (cold_summary_top: the sketches pick candidates,
 *     store-cold-sketch.c): with every block a candidate the result is
 *     the brute force's top k; with the default candidates every returned
 *     score is its block's exact score, best first; without sketches
 *     (a migrated database before its writer attaches) the exact search
 *     alone runs;
 *   - a database of schema 4 (no sketches) migrates: the writer's attach
 *     sketches every block, byte for byte as the writer made them;
 *   - bounds that are F16 values exactly (an f16 cache's) are stored as
 *     F16, the others as float32, in one table; the search and the two
 *     stages over such a mixed table equal the brute force;
 *   - the memory stage (cold_mem, store-cold-sketch.c) follows the
 *     database through flushes and the cap's drops (its ids are the
 *     sketch rows', in order), reads the sketches of its candidates only,
 *     returns exact scores best first, and with as many candidates as
 *     blocks steps aside (the result is the sketches', bit for bit).
 */
#include "app/app.h"
#include "engine/engine.h"
#include "model/model.h"
#include "store/store-int.h"
#include "store/store.h"
#include "tests/unit/test.h"
#include "tests/util/sqlq.h"
#include "tests/util/tinymodel.h"

#include <math.h>
#include <sqlite3.h>
#include <stdint.h>
#include <unistd.h>

#define BLOCK 8
#define GROUP 4

static char tmpdir[256];
static uint64_t rng = 0x243f6a8885a308d3ull;

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
	const struct hparams *hp;
	size_t row_floats, nb; /* floats of a token's K/V rows; of a block's bounds */
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
	f->hp = &f->m->hp;
	f->row_floats = engine_kv_bytes_per_slot(f->eng) / sizeof(float);
	f->nb = (size_t)f->hp->n_layer * f->hp->n_head_kv * f->hp->head_dim;
}

static void fix_close(struct fix *f)
{
	kv_cache_free(f->kv);
	engine_free(f->eng);
	model_free(f->m);
	free(f->buf);
}

/* A session in a new database at path, its cold tier attached. */
static struct store *open_session(struct fix *f, const char *path, uint64_t max,
                                  struct store_cold **cold, int64_t *id)
{
	struct store *s;
	struct err e;
	T_CHECK(store_open(&s, path, STORE_RW, &e) == KVS_OK, "%s", e.msg);
	struct store_session in = { .title = (char *)"index",
		                        .model_path = (char *)"tiny.gguf",
		                        .model_sha256 = (char *)"ab",
		                        .arch = (char *)"llama",
		                        .policy = (char *)"streaming",
		                        .sampler = (char *)"temp=0" };
	T_EQ_INT(store_session_create(s, &in, id, &e), KVS_OK);
	struct store_cold_config cc = { .block = BLOCK, .max_tokens = max, .group = GROUP };
	store_cold_open(cold, f->kv, f->m->vocab, &cc);
	T_CHECK(store_cold_attach(*cold, s, *id, "", &e) == KVS_OK, "%s", e.msg);
	return s;
}

/* Evict n_blocks synthetic blocks from position *pos on, flushing after
 * every `flush` blocks: keys of block b scaled by a drift in [0.05, 2]. */
static bool f16_keys; /* fill's keys are F16 values exactly (as an f16 cache's are) */

static void fill(struct fix *f, struct store_cold *cold, uint32_t n_blocks, uint32_t flush,
                 int32_t *pos)
{
	struct kv_tok toks[BLOCK];
	float *raw = xcalloc((size_t)BLOCK * f->row_floats, sizeof *raw);
	size_t per_layer = 2 * (size_t)f->hp->n_head_kv * f->hp->head_dim;
	struct err e;
	for (uint32_t b = 0; b < n_blocks; b++) {
		double drift = 0.05 + 1.95 * (0.5 + 0.5 * sin((double)*pos / (BLOCK * 11.0)));
		memset(toks, 0, sizeof toks);
		for (uint32_t i = 0; i < BLOCK; i++) {
			toks[i].token = 40 + (int32_t)(unit() * 26);
			toks[i].orig_pos = *pos + (int32_t)i;
			toks[i].turn = (uint32_t)(*pos / 64);
			toks[i].role = KV_ROLE_USER;
			for (size_t k = 0; k < f->row_floats; k++) {
				double x = 2 * unit() - 1;
				float v = (float)(k % per_layer < per_layer / 2 ? drift * x : x); /* K, then V */
				raw[i * f->row_floats + k] = f16_keys ? dtype_f16_to_f32(dtype_f32_to_f16(v)) : v;
			}
		}
		store_cold_evicted(cold, toks, BLOCK, raw, f->row_floats * sizeof(float));
		*pos += BLOCK;
		if ((b + 1) % flush == 0 || b + 1 == n_blocks) {
			struct store_cold_flush_info fi;
			T_CHECK(store_cold_flush(cold, 0, &fi, &e) == KVS_OK, "%s", e.msg);
		}
	}
	free(raw);
}

/* The brute force: every block's score from its own K rows, ranked by
 * (score descending, pos0 ascending), into out (cap entries). */
static size_t brute(struct fix *f, const char *path, const float *q, uint32_t n_q,
                    struct cold_scored *out, size_t cap)
{
	const struct hparams *hp = f->hp;
	size_t per_layer = 2 * (size_t)hp->n_head_kv * hp->head_dim, n = 0;
	float *mn = xcalloc(f->nb, sizeof *mn), *mx = xcalloc(f->nb, sizeof *mx);
	sqlite3 *db;
	sqlite3_stmt *st;
	sqlq_open(path, 0, &db);
	sqlite3_prepare_v2(db, "SELECT id, pos0, kv, n_tokens FROM cold_blocks_kv", -1, &st, NULL);
	while (sqlite3_step(st) == SQLITE_ROW && n < cap) {
		const float *kv = sqlite3_column_blob(st, 2);
		int nt = sqlite3_column_int(st, 3);
		for (uint32_t l = 0; l < hp->n_layer; l++)
			for (size_t k = 0; k < (size_t)hp->n_head_kv * hp->head_dim; k++) {
				size_t b = l * (size_t)hp->n_head_kv * hp->head_dim + k;
				mn[b] = INFINITY;
				mx[b] = -INFINITY;
				for (int i = 0; i < nt; i++) {
					float x = kv[(size_t)i * f->row_floats + l * per_layer + k];
					mn[b] = fminf(mn[b], x);
					mx[b] = fmaxf(mx[b], x);
				}
			}
		out[n].id = sqlite3_column_int64(st, 0);
		out[n].pos0 = sqlite3_column_int(st, 1);
		out[n++].score = store_cold_summary_score(q, n_q, hp->n_layer, hp->n_head, hp->n_head_kv,
		                                          hp->head_dim, mn, mx);
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	free(mn);
	free(mx);
	/* insertion sort: a few hundred blocks */
	for (size_t i = 1; i < n; i++) {
		struct cold_scored x = out[i];
		size_t j = i;
		while (j > 0 &&
		       (out[j - 1].score < x.score ||
		        (out[j - 1].score == x.score && out[j - 1].pos0 > x.pos0))) {
			out[j] = out[j - 1];
			j--;
		}
		out[j] = x;
	}
	return n;
}

/* A random probe of n_q tokens (n_q, n_layer, n_head, head_dim). */
static float *probe(const struct hparams *hp, uint32_t n_q)
{
	size_t n = (size_t)n_q * hp->n_layer * hp->n_head * hp->head_dim;
	float *q = xmallocarray(n, sizeof *q);
	for (size_t i = 0; i < n; i++)
		q[i] = (float)(2 * unit() - 1);
	return q;
}

/* The search and the scan against the brute force for a few probes;
 * returns how many searches read fewer groups than there are. */
static int check_search(struct fix *f, struct store *s, const char *path, int64_t id,
                        const char *what)
{
	enum { CAP = 1024 };
	struct cold_scored *bf = xcalloc(CAP, sizeof *bf);
	int pruned = 0;
	uint32_t epoch = (uint32_t)sqlq_int(path, "SELECT coalesce(max(epoch), 0) FROM cold_sums");
	for (int t = 0; t < 8; t++) {
		uint32_t n_q = 1 + (uint32_t)(unit() * 4);
		float *q = probe(f->hp, n_q);
		size_t n_bf = brute(f, path, q, n_q, bf, CAP);
		T_CHECK(n_bf > 0, "%s: no blocks", what);
		static const size_t ks[] = { 1, 3, 64 };
		for (size_t ki = 0; ki < KVS_ARRAY_LEN(ks); ki++) {
			struct store_cold_rank_stats stats = { 0 };
			struct cold_scope sc = { s, id, epoch, f->hp, BLOCK * 16, &stats, 0, 0, NULL, 0 };
			struct cold_scored *top = NULL;
			size_t n_top = 0;
			struct err e;
			T_CHECK(cold_index_top(&sc, q, n_q, ks[ki], &top, &n_top, &e) == KVS_OK, "%s", e.msg);
			T_EQ_INT(n_top, KVS_MIN(ks[ki], n_bf));
			for (size_t i = 0; i < n_top && i < n_bf; i++) {
				T_CHECK(top[i].id == bf[i].id,
				        "%s: probe %d k %zu: place %zu is block %lld, the "
				        "scan's is %lld",
				        what, t, ks[ki], i, (long long)top[i].id, (long long)bf[i].id);
				T_NEAR(top[i].score, bf[i].score, 1e-12 * (1 + fabs(bf[i].score)));
			}
			T_CHECK(stats.groups_read <= stats.groups, "%s: read %llu of %llu groups", what,
			        (unsigned long long)stats.groups_read, (unsigned long long)stats.groups);
			pruned += stats.groups_read < stats.groups;
			free(top);
		}
		/* the full scan: every block, in the brute force's order */
		struct cold_scope sc = { s, id, epoch, f->hp, BLOCK * 16, NULL, 0, 0, NULL, 0 };
		struct cold_scored *all = NULL;
		size_t n_all = 0;
		struct err e;
		T_EQ_INT(cold_index_scan(&sc, q, n_q, &all, &n_all, &e), KVS_OK);
		T_EQ_INT(n_all, n_bf);
		size_t same = 0;
		for (size_t i = 0; i < n_all && i < n_bf; i++)
			same += all[i].id == bf[i].id;
		T_EQ_INT(same, n_bf);
		free(all);
		free(q);
	}
	free(bf);
	return pruned;
}

/* The two stages against the brute force for a few probes; sketched: the
 * epoch's blocks all have sketches (else the exact search runs alone). */
static void check_two_stage(struct fix *f, struct store *s, const char *path, int64_t id,
                            bool sketched, const char *what)
{
	enum { CAP = 1024 };
	struct cold_scored *bf = xcalloc(CAP, sizeof *bf);
	uint32_t epoch = (uint32_t)sqlq_int(path, "SELECT coalesce(max(epoch), 0) FROM cold_sums");
	for (int t = 0; t < 4; t++) {
		uint32_t n_q = 1 + (uint32_t)(unit() * 4);
		float *q = probe(f->hp, n_q);
		size_t n_bf = brute(f, path, q, n_q, bf, CAP);
		struct err e;
		/* every block a candidate: the exact top 8 */
		struct store_cold_rank_stats st = { 0 };
		struct cold_scope sc = { s, id, epoch, f->hp, BLOCK * 16, &st, 0, (uint32_t)n_bf, NULL, 0 };
		struct cold_scored *top = NULL;
		size_t n_top = 0;
		T_CHECK(cold_summary_top(&sc, q, n_q, 8, &top, &n_top, &e) == KVS_OK, "%s", e.msg);
		T_EQ_INT(n_top, KVS_MIN((size_t)8, n_bf));
		for (size_t i = 0; i < n_top; i++) {
			T_CHECK(top[i].id == bf[i].id, "%s: place %zu is block %lld, the brute force's %lld",
			        what, i, (long long)top[i].id, (long long)bf[i].id);
			T_NEAR(top[i].score, bf[i].score, 1e-12 * (1 + fabs(bf[i].score)));
		}
		T_EQ_INT(st.sketched, sketched ? n_bf : 0);
		T_EQ_INT(st.candidates, sketched ? n_bf : 0);
		free(top);
		/* the default candidates: exact scores, best first */
		memset(&st, 0, sizeof st);
		sc.cands = 0;
		T_CHECK(cold_summary_top(&sc, q, n_q, 3, &top, &n_top, &e) == KVS_OK, "%s", e.msg);
		T_EQ_INT(n_top, KVS_MIN((size_t)3, n_bf));
		for (size_t i = 0; i < n_top; i++) {
			size_t j = 0;
			while (j < n_bf && bf[j].id != top[i].id)
				j++;
			T_CHECK(j < n_bf, "%s: block %lld is no block", what, (long long)top[i].id);
			if (j < n_bf)
				T_NEAR(top[i].score, bf[j].score, 1e-12 * (1 + fabs(bf[j].score)));
			if (i > 0)
				T_CHECK(top[i - 1].score >= top[i].score, "%s: not best first", what);
		}
		T_EQ_INT(st.candidates, sketched ? KVS_MIN((size_t)(2 * 3 + 32), n_bf) : 0);
		free(top);
		free(q);
	}
	free(bf);
}

/* Decode a bounds blob by hand (little-endian F16 or float32, told apart
 * by its size), independently of the store's reader; false: another size. */
static bool blob_bounds(sqlite3_stmt *st, int col, size_t nb, float *out)
{
	const uint8_t *p = sqlite3_column_blob(st, col);
	size_t bytes = (size_t)sqlite3_column_bytes(st, col);
	if (bytes != 2 * nb && bytes != 4 * nb)
		return false;
	for (size_t i = 0; i < nb; i++) {
		if (bytes == 2 * nb) {
			out[i] = dtype_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
			continue;
		}
		uint32_t u = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
		        (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
		memcpy(&out[i], &u, 4);
	}
	return true;
}

/* Every summary sits in a group whose bounds hold its own; no group is
 * empty; every block has its summary. */
static void check_groups(struct fix *f, const char *path, const char *what)
{
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_sums"),
	         sqlq_int(path, "SELECT count(*) FROM cold_blocks"));
	T_EQ_INT(sqlq_int(path,
	                  "SELECT count(*) FROM cold_sums WHERE grp IS NULL OR grp NOT IN "
	                  "(SELECT id FROM cold_groups)"),
	         0);
	T_EQ_INT(sqlq_int(path,
	                  "SELECT count(*) FROM cold_groups g WHERE NOT EXISTS (SELECT 1 FROM "
	                  "cold_sums s WHERE s.grp = g.id)"),
	         0);
	T_CHECK(sqlq_int(path,
	                 "SELECT max(c) FROM (SELECT count(*) AS c FROM cold_sums GROUP BY "
	                 "grp)") <= GROUP,
	        "%s: a group over %d blocks", what, GROUP);
	sqlite3 *db;
	sqlite3_stmt *st;
	sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
	sqlite3_prepare_v2(db,
	                   "SELECT s.kmin, s.kmax, g.kmin, g.kmax FROM cold_sums s JOIN cold_groups g "
	                   "ON g.id = s.grp",
	                   -1, &st, NULL);
	size_t outside = 0, rows = 0;
	float *b = xmallocarray(4 * f->nb, sizeof *b);
	float *smn = b, *smx = b + f->nb, *gmn = b + 2 * f->nb, *gmx = b + 3 * f->nb;
	while (sqlite3_step(st) == SQLITE_ROW) {
		T_CHECK(blob_bounds(st, 0, f->nb, smn) && blob_bounds(st, 1, f->nb, smx) &&
		                blob_bounds(st, 2, f->nb, gmn) && blob_bounds(st, 3, f->nb, gmx),
		        "%s: a bounds blob of %d bytes, expected %zu (F16) or %zu (float32)", what,
		        sqlite3_column_bytes(st, 2), 2 * f->nb, 4 * f->nb);
		for (size_t i = 0; i < f->nb; i++)
			outside += smn[i] < gmn[i] || smx[i] > gmx[i] || smn[i] > smx[i];
		rows++;
	}
	free(b);
	sqlite3_finalize(st);
	sqlite3_close(db);
	T_CHECK(rows > 0, "%s: no grouped summaries", what);
	T_EQ_INT(outside, 0);
}

static void test_search(struct fix *f)
{
	char *path = xasprintf("%s/index.db", tmpdir);
	struct store_cold *cold;
	int64_t id;
	struct store *s = open_session(f, path, 0, &cold, &id);
	int32_t pos = 0;
	fill(f, cold, 150, 7, &pos);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_blocks"), 150);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_groups"), (150 + GROUP - 1) / GROUP);
	T_EQ_INT(sqlq_int(path, "SELECT length(kmin) + length(kmax) FROM cold_blocks LIMIT 1"), 0);
	check_groups(f, path, "fill");
	int pruned = check_search(f, s, path, id, "fill");
	T_CHECK(pruned > 0, "no search skipped a group");
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_sketch"), 150);
	check_two_stage(f, s, path, id, true, "fill");
	/* the public recall: a one-block budget takes the brute force's best */
	{
		enum { CAP = 256 };
		struct cold_scored bf[CAP];
		float *q = probe(f->hp, 2);
		size_t n_bf = brute(f, path, q, 2, bf, CAP);
		struct store_cold_query query = {
			.text = NULL, .q = q, .n_q = 2, .rank = STORE_COLD_SUMMARY
		};
		struct store_cold_hit *hits;
		size_t n_hits;
		struct err e;
		T_CHECK(store_cold_recall_by(cold, &query, BLOCK, &hits, &n_hits, &e) == KVS_OK, "%s",
		        e.msg);
		T_EQ_INT(n_hits, 1);
		if (n_hits == 1 && n_bf > 0) {
			T_EQ_INT(hits[0].id, bf[0].id);
			T_NEAR(hits[0].summary, bf[0].score, 1e-12 * (1 + fabs(bf[0].score)));
		}
		struct store_cold_rank_stats rs;
		store_cold_rank_stats(cold, &rs);
		T_CHECK(rs.blocks_read > 0 && rs.blocks_read <= 150, "read %llu blocks",
		        (unsigned long long)rs.blocks_read);
		free(hits);
		free(q);
	}
	store_cold_free(cold);
	store_close(s);
	free(path);
}

/* Bounds that are F16 values exactly (an f16 cache's) are stored as F16,
 * half the bytes, and rank exactly as the brute force over the K rows;
 * bounds that are not stay float32, in the same tables: 60 blocks of
 * float32 keys, then 90 of F16 keys (a group straddles the change). */
static void test_f16(struct fix *f)
{
	char *path = xasprintf("%s/f16.db", tmpdir);
	struct store_cold *cold;
	int64_t id;
	struct store *s = open_session(f, path, 0, &cold, &id);
	int32_t pos = 0;
	fill(f, cold, 58, 7, &pos);
	f16_keys = true;
	fill(f, cold, 92, 7, &pos);
	f16_keys = false;
	long long nb = (long long)f->nb;
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_blocks"), 150);
	char *q = xasprintf("SELECT count(*) FROM cold_sums WHERE length(kmin) = %lld AND "
	                    "length(kmax) = %lld AND pos0 >= %d",
	                    2 * nb, 2 * nb, 58 * BLOCK);
	T_EQ_INT(sqlq_int(path, q), 92);
	free(q);
	q = xasprintf("SELECT count(*) FROM cold_sums WHERE length(kmin) = %lld AND "
	              "length(kmax) = %lld AND pos0 < %d",
	              4 * nb, 4 * nb, 58 * BLOCK);
	T_EQ_INT(sqlq_int(path, q), 58);
	free(q);
	/* groups: F16 where every member is, float32 where one is not (the
	 * group of blocks 56-59 holds both): the groups from block 60 on */
	q = xasprintf("SELECT count(*) FROM cold_groups WHERE length(kmin) = %lld", 2 * nb);
	T_EQ_INT(sqlq_int(path, q), (150 - 60 + GROUP - 1) / GROUP);
	free(q);
	check_groups(f, path, "f16");
	check_search(f, s, path, id, "f16");
	check_two_stage(f, s, path, id, true, "f16");
	store_cold_free(cold);
	store_close(s);
	free(path);
}

static void test_trim(struct fix *f)
{
	char *path = xasprintf("%s/trim.db", tmpdir);
	struct store_cold *cold;
	int64_t id;
	struct store *s = open_session(f, path, 100 * BLOCK, &cold, &id);
	int32_t pos = 0;
	fill(f, cold, 170, 9, &pos);
	T_CHECK(sqlq_int(path, "SELECT sum(n_tokens) FROM cold_blocks") <= 100 * BLOCK, "over the cap");
	T_EQ_INT(sqlq_int(path, "SELECT min(pos0) FROM cold_blocks"), (170 - 100) * BLOCK);
	check_groups(f, path, "trim");
	check_search(f, s, path, id, "trim");
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_sketch"),
	         sqlq_int(path, "SELECT count(*) FROM cold_blocks"));
	check_two_stage(f, s, path, id, true, "trim");
	store_cold_free(cold);
	store_close(s);
	free(path);
}

/* The memory stage (cold_mem) of session id against the database: it
 * holds exactly the epoch's blocks with sketches, ids ascending, and a
 * search through it returns exact scores, best first, having read the
 * sketches of only its candidates. */
static void check_mem(struct fix *f, struct store *s, const char *path, int64_t id,
                      struct cold_mem *m, const char *what)
{
	enum { CAP = 1024 };
	struct cold_scored *bf = xcalloc(CAP, sizeof *bf);
	uint32_t epoch = (uint32_t)sqlq_int(path, "SELECT coalesce(max(epoch), 0) FROM cold_sums");
	float *q = probe(f->hp, 3);
	size_t n_bf = brute(f, path, q, 3, bf, CAP);
	struct err e;
	struct store_cold_rank_stats st = { 0 };
	/* 5 candidates from the memory stage, 4 of them on to the exact score */
	struct cold_scope sc = { s, id, epoch, f->hp, BLOCK * 16, &st, 0, 4, m, 5 };
	struct cold_scored *top = NULL;
	size_t n_top = 0;
	T_CHECK(cold_summary_top(&sc, q, 3, 3, &top, &n_top, &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(n_top, 3);
	T_EQ_INT(st.mem_scored, n_bf);
	T_EQ_INT(st.sketched, 5);
	T_EQ_INT(st.candidates, 4);
	for (size_t i = 0; i < n_top; i++) {
		size_t j = 0;
		while (j < n_bf && bf[j].id != top[i].id)
			j++;
		T_CHECK(j < n_bf, "%s: block %lld is no block", what, (long long)top[i].id);
		if (j < n_bf)
			T_NEAR(top[i].score, bf[j].score, 1e-12 * (1 + fabs(bf[j].score)));
		if (i > 0)
			T_CHECK(top[i - 1].score >= top[i].score, "%s: not best first", what);
	}
	free(top);
	/* it holds the epoch's blocks, as the database lists them */
	const int64_t *ids = NULL;
	size_t n_m = cold_mem_count(m, &ids);
	T_EQ_INT(n_m, sqlq_int(path, "SELECT count(*) FROM cold_sketch"));
	char sql[160];
	for (size_t i = 0; i < n_m; i++) {
		snprintf(sql, sizeof sql, "SELECT id FROM cold_sketch ORDER BY id LIMIT 1 OFFSET %zu", i);
		T_EQ_INT(ids[i], sqlq_int(path, sql));
	}
	/* as many candidates as blocks: no memory stage, the sketches' result */
	struct cold_scored *two = NULL;
	size_t n_two = 0;
	memset(&st, 0, sizeof st);
	sc.mem_cands = (uint32_t)n_bf;
	T_CHECK(cold_summary_top(&sc, q, 3, 3, &top, &n_top, &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(st.mem_scored, 0);
	sc.mem = NULL;
	T_CHECK(cold_summary_top(&sc, q, 3, 3, &two, &n_two, &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(n_top, n_two);
	for (size_t i = 0; i < n_top && i < n_two; i++)
		T_CHECK(top[i].id == two[i].id && top[i].score == two[i].score,
		        "%s: place %zu differs without the memory stage", what, i);
	free(top);
	free(two);
	free(q);
	free(bf);
}

/* The memory stage kept in step: blocks added by flushes and dropped by
 * the cap (oldest first) between searches. */
static void test_mem(struct fix *f)
{
	char *path = xasprintf("%s/mem.db", tmpdir);
	struct store_cold *cold;
	int64_t id;
	struct store *s = open_session(f, path, 40 * BLOCK, &cold, &id);
	struct cold_mem *m = cold_mem_new();
	int32_t pos = 0;
	fill(f, cold, 30, 7, &pos);
	check_mem(f, s, path, id, m, "30 blocks");
	T_EQ_INT(cold_mem_count(m, NULL), 30);
	fill(f, cold, 6, 6, &pos); /* added */
	check_mem(f, s, path, id, m, "36 blocks");
	T_EQ_INT(cold_mem_count(m, NULL), 36);
	fill(f, cold, 20, 5, &pos); /* 16 of the oldest dropped */
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_blocks"), 40);
	check_mem(f, s, path, id, m, "the cap");
	T_EQ_INT(cold_mem_count(m, NULL), 40);
	T_CHECK(cold_mem_size(m) >= 40 * (8 + 4 + cold_sketch_bytes(f->hp) / 2), "%zu bytes held",
	        cold_mem_size(m));
	cold_mem_free(m);
	store_cold_free(cold);
	store_close(s);
	free(path);
}

static void test_migrate(struct fix *f)
{
	char *path = xasprintf("%s/old.db", tmpdir);
	struct store_cold *cold;
	int64_t id;
	struct store *s = open_session(f, path, 0, &cold, &id);
	int32_t pos = 0;
	fill(f, cold, 60, 60, &pos);
	store_cold_free(cold);
	store_close(s);
	/* back to schema 2: the bounds in the block rows, no index (and none of
	 * what later migrations add: 004's squeeze table and sparse column,
	 * 005's sketches, 006's K/V file) */
	sqlq_cold_kv_back(path, 5);
	sqlq_exec(path,
	          "UPDATE cold_blocks SET kmin = (SELECT kmin FROM cold_sums s WHERE s.id = "
	          "cold_blocks.id), kmax = (SELECT kmax FROM cold_sums s WHERE s.id = "
	          "cold_blocks.id); DROP TABLE cold_sums; DROP TABLE cold_groups; "
	          "DROP TABLE squeeze; ALTER TABLE sessions DROP COLUMN sparse; "
	          "DROP TABLE cold_sketch; PRAGMA user_version = 2");
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'cold_sums%'"), 0);
	struct err e;
	T_CHECK(store_open(&s, path, STORE_RW, &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(sqlq_int(path, "PRAGMA user_version"), store_schema_latest());
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_sums WHERE grp IS NULL"), 60);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_groups"), 0);
	check_search(f, s, path, id, "migrated, ungrouped");
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_sketch"), 0);
	check_two_stage(f, s, path, id, false, "migrated, no sketches");
	/* the writer attaches: the old rows are grouped */
	struct store_cold_config cc = { .block = BLOCK, .group = GROUP };
	store_cold_open(&cold, f->kv, f->m->vocab, &cc);
	T_CHECK(store_cold_attach(cold, s, id, "", &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_sums WHERE grp IS NULL"), 0);
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_groups"), 60 / GROUP);
	check_groups(f, path, "migrated");
	check_search(f, s, path, id, "migrated, grouped");
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_sketch"), 60);
	check_two_stage(f, s, path, id, true, "migrated, sketched");
	/* and new blocks join after them */
	fill(f, cold, 10, 10, &pos);
	check_groups(f, path, "migrated, then written");
	check_search(f, s, path, id, "migrated, then written");
	char *ok = sqlq_text(path, "PRAGMA integrity_check");
	T_EQ_STR(ok, "ok");
	free(ok);
	store_cold_free(cold);
	store_close(s);
	free(path);
}

/* Schema 4 (the index, no sketches) to the latest: the writer's attach
 * sketches every block as the writer itself did. */
static void test_migrate4(struct fix *f)
{
	char *path = xasprintf("%s/v4.db", tmpdir);
	struct store_cold *cold;
	int64_t id;
	struct store *s = open_session(f, path, 0, &cold, &id);
	int32_t pos = 0;
	fill(f, cold, 40, 13, &pos);
	store_cold_free(cold);
	store_close(s);
	char *made = sqlq_text(path,
	                       "SELECT group_concat(hex(sk), '.') FROM (SELECT sk FROM "
	                       "cold_sketch ORDER BY id)");
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_sketch"), 40);
	sqlq_cold_kv_back(path, 5);
	sqlq_exec(path, "DROP TABLE cold_sketch; PRAGMA user_version = 4");
	struct err e;
	T_CHECK(store_open(&s, path, STORE_RW, &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(sqlq_int(path, "PRAGMA user_version"), store_schema_latest());
	T_EQ_INT(sqlq_int(path, "SELECT count(*) FROM cold_sketch"), 0);
	check_two_stage(f, s, path, id, false, "schema 4, no sketches");
	struct store_cold_config cc = { .block = BLOCK, .group = GROUP };
	store_cold_open(&cold, f->kv, f->m->vocab, &cc);
	T_CHECK(store_cold_attach(cold, s, id, "", &e) == KVS_OK, "%s", e.msg);
	char *built = sqlq_text(path,
	                        "SELECT group_concat(hex(sk), '.') FROM (SELECT sk FROM "
	                        "cold_sketch ORDER BY id)");
	T_EQ_STR(built, made);
	check_two_stage(f, s, path, id, true, "schema 4, sketched");
	char *ok = sqlq_text(path, "PRAGMA integrity_check");
	T_EQ_STR(ok, "ok");
	free(ok);
	free(made);
	free(built);
	store_cold_free(cold);
	store_close(s);
	free(path);
}

int main(void)
{
	struct fix f;
	snprintf(tmpdir, sizeof tmpdir, "%s/kvs-cidx-XXXXXX",
	         getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(tmpdir) == NULL) {
		perror("mkdtemp");
		return 99;
	}
	fix_open(&f);
	test_search(&f);
	test_trim(&f);
	test_f16(&f);
	test_mem(&f);
	test_migrate(&f);
	test_migrate4(&f);
	fix_close(&f);
	char *cmd = xasprintf("rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
	free(cmd);
	return t_done("test-store-cold-index");
}
