/*
 * bench-cold.c: the cost of the cold tier (src/store/store-cold*.c) at a
 * given size, on the default model's KV shape.
 *
 *   make -C build bench/bench-cold && build/bench/bench-cold TOKENS [dir] [--keys K] [--group N]
 *                                                 [--recalls N] [--mem N|off] [--reuse]
 *   sh bench/cold.sh            (10k, 100k and 1M tokens, one process each)
 *
 * It fills one session's cold tier with TOKENS evicted tokens through the
 * store's own API (store_cold_evicted, store_cold_flush every 4096 tokens,
 * blocks of 64): the tokens spell random words from a fixed bank of
 * made-up words (so FTS5 has a vocabulary of realistic size). Their K/V
 * rows (n_layer, 2, n_head_kv, head_dim) in the cache's element type (f16
 * by default) come, with --keys model (the default), from the model
 * itself: it reads BC_POOL tokens of the bank's words under a 256-token
 * streaming budget and keeps what that evicts, and each block is 64
 * consecutive rows of that pool from a random place (real keys, real
 * bounds); with --keys random, from 512 rows of random values in [-2, 2].
 * Then it times 20 recalls per ranking (fts, summary, both) with a recall
 * budget of 128 tokens (two blocks) and a question of three words of the
 * bank; the probe is, with model keys, the queries of the question's last
 * 8 tokens as the model computes them (kv_cache_probe, as a chat turn's
 * probe), else 8 random vectors per layer and head. A recall here is the
 * whole choice: ranking, reading the chosen blocks' rows, nothing placed.
 * The recalls run three times with the same questions: "warm", the page
 * cache as the run left it; "cold", every file of the folder dropped from
 * the page cache before each recall (posix_fadvise DONTNEED, no root
 * needed); "kvcold", only the cold K/V file (PATH-cold, store-cold-kv.c)
 * dropped, the database cached (as its quick_check at open leaves it);
 * each with the bytes it made the kernel read from the disk
 * (/proc/self/io read_bytes; SQLite's own page cache is kept) and its wall
 * clock less the time the thread waited for a CPU (/proc/thread-self/
 * schedstat): on a shared machine, what the recall would take on a quiet
 * one (its CPU, its disk waits), which the plain wall clock is not.
 * Then, for --overlap N more questions (default 5), the summary ranking's
 * best 16 by the two stages (the sketches' 64 candidates ranked exactly,
 * store-cold-sketch.c) against the exact search of every block
 * (STORE_COLD_EXACT): the share of the exact top 16 the two stages return,
 * and both times (--cands N: the sketches' candidates, else the store's
 * default 2k + 32), and against reading every sketch (no memory stage):
 * the share of that top 16 the memory stage keeps (--mem N: the memory
 * stage's candidates, else the store's default 8 (2k + 32); off: none).
 * With a folder and --reuse, a database an earlier run of the same TOKENS
 * left there is used as it is (no fill; the fill's random draws are still
 * made, so the questions are the same): a 1M fill takes half an hour.
 * It prints the median and the 90th percentile of each (wall clock), the
 * median CPU time of the recalling thread (what the load does not move), what the summary
 * ranking read (blocks scored in memory and the bytes the memory stage holds, sketches,
 * candidates, blocks), the fill's write rate, the database's
 * bytes per 1k tokens (file and WAL), and the process's resident memory
 * after the fill and after the recalls (its peak too), with the load
 * average: a shared machine moves all of it.
 */
#include "app/app.h"
#include "store/store.h"

#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BC_BLOCK 64
#define BC_FLUSH 4096 /* tokens per flush */
#define BC_WORDS 4096 /* the word bank */
#define BC_RECALLS 20 /* recalls per ranking (--recalls) */
#define BC_PROBE 8
#define BC_BUDGET 128 /* two blocks of 64 */
#define BC_POOL 4096  /* tokens of model keys the blocks are cut from */
#define BC_CTX 256    /* the capture's KV budget */
#define BC_TOPK 16    /* the summary ranking's k that --overlap compares */

static uint64_t bc_rng = 0x9e3779b97f4a7c15ull;

/* xorshift64*: a number in [0, 2^64). */
static uint64_t bc_next(void)
{
	bc_rng ^= bc_rng >> 12;
	bc_rng ^= bc_rng << 25;
	bc_rng ^= bc_rng >> 27;
	return bc_rng * 0x2545f4914f6cdd1dull;
}

/* A number in [-1, 1). */
static float bc_unit(void)
{
	return (float)((double)(bc_next() >> 11) / 4503599627370496.0 - 1.0);
}

static int bc_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* This thread's CPU time in ms: what a recall costs whatever the load
 * (the wall clock counts the other sessions' share of the cores too). */
static double bc_cpu_ms(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
		return 0;
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* How long this thread has waited for a CPU, in ms (the run queue, the
 * second field of /proc/thread-self/schedstat), or 0: the part of a wall
 * clock that the other processes' load adds. */
static double bc_runq_ms(void)
{
	unsigned long long run = 0, wait = 0;
	FILE *fp = fopen("/proc/thread-self/schedstat", "r");
	if (fp == NULL)
		return 0;
	int ok = fscanf(fp, "%llu %llu", &run, &wait) == 2;
	fclose(fp);
	return ok ? (double)wait / 1e6 : 0;
}

/* Resident memory now, in MiB (/proc/self/statm), or -1. */
static double bc_rss_mib(void)
{
	long pages = 0, res = 0;
	FILE *fp = fopen("/proc/self/statm", "r");
	if (fp == NULL)
		return -1;
	int ok = fscanf(fp, "%ld %ld", &pages, &res) == 2;
	fclose(fp);
	return ok ? (double)res * (double)sysconf(_SC_PAGESIZE) / 1048576.0 : -1;
}

static double bc_peak_mib(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_maxrss / 1024.0;
}

static uint64_t bc_size(const char *path)
{
	struct stat sb;
	return stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

/* Bytes this process has made the kernel fetch from storage so far
 * (/proc/self/io read_bytes: page-cache hits do not count), or 0. */
static uint64_t bc_read_bytes(void)
{
	char line[128];
	unsigned long long v = 0;
	FILE *fp = fopen("/proc/self/io", "r");
	if (fp == NULL)
		return 0;
	while (fgets(line, sizeof line, fp) != NULL)
		if (sscanf(line, "read_bytes: %llu", &v) == 1)
			break;
	fclose(fp);
	return (uint64_t)v;
}

/* Drops the page cache's copy of every regular file in dir (the database,
 * its WAL and any file beside them; with kv_only, only the cold K/V file
 * PATH-cold and its WAL): the next reads come from the disk. */
static void bc_drop_cache(const char *dir, bool kv_only)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (kv_only && strstr(de->d_name, "-cold") == NULL)
			continue;
		char *p = xasprintf("%s/%s", dir, de->d_name);
		int fd = open(p, O_RDONLY);
		if (fd >= 0) {
			struct stat sb;
			if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode))
				(void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
			close(fd);
		}
		free(p);
	}
	closedir(d);
}

/* Evicted rows kept for the fill (the capture's cold listener). */
struct bc_pool {
	uint8_t *rows; /* (cap, row) */
	uint64_t row;
	uint32_t n, cap;
};

static void bc_pool_listen(void *ud, const struct kv_tok *toks, uint32_t n, const void *raw,
                           uint64_t bytes_per_tok)
{
	struct bc_pool *p = ud;
	(void)toks;
	if (raw == NULL || bytes_per_tok != p->row)
		return;
	uint32_t take = KVS_MIN(n, p->cap - p->n);
	memcpy(p->rows + (size_t)p->n * p->row, raw, (size_t)take * p->row);
	p->n += take;
}

/* The tokens of a sentence of bank words into ids (up to cap): "the W of W
 * is W W." */
static size_t bc_sentence(struct gen *g, char (*words)[16], int32_t *ids, size_t cap)
{
	char text[160];
	snprintf(text, sizeof text, " The %s of %s is %s %s.", words[bc_next() % BC_WORDS],
	         words[bc_next() % BC_WORDS], words[bc_next() % BC_WORDS], words[bc_next() % BC_WORDS]);
	int32_t *t = NULL;
	size_t n = 0, tcap = 0;
	struct err e;
	if (vocab_tokenize(gen_vocab(g), text, strlen(text), false, false, &t, &n, &tcap, &e) != KVS_OK)
		n = 0;
	n = KVS_MIN(n, cap);
	memcpy(ids, t, n * sizeof *ids);
	free(t);
	return n;
}

/* The probe of a question (per: floats a token's queries take), its last
 * BC_PROBE tokens' queries into qbuf (64 tokens' room): with model keys the
 * model's own (kv_cache_probe), else random; NULL after a message. */
static const float *bc_probe(struct gen *g, bool model_keys, const char *text, float *qbuf,
                             size_t per)
{
	if (!model_keys) {
		for (size_t k = 0; k < BC_PROBE * per; k++)
			qbuf[k] = bc_unit();
		return qbuf;
	}
	int32_t *qi = NULL;
	size_t nqi = 0, qcap = 0;
	struct err e;
	if (vocab_tokenize(gen_vocab(g), text, strlen(text), false, false, &qi, &nqi, &qcap, &e) !=
	            KVS_OK ||
	    nqi < BC_PROBE || nqi > 64 ||
	    kv_cache_probe(gen_kv(g), qi, (uint32_t)nqi, qbuf, &e) != KVS_OK) {
		fprintf(stderr, "bench-cold: probe: %s\n", nqi ? e.msg : "no tokens");
		free(qi);
		return NULL;
	}
	free(qi);
	return qbuf + (nqi - BC_PROBE) * per;
}

/* A made-up word of 2 to 4 syllables. */
static void bc_word(char *buf, size_t cap)
{
	static const char *const syl[] = { "ka", "lo", "mi", "ne", "ru", "sa", "te", "vo",
		                               "zi", "da", "po", "gu", "fe", "bi", "ho", "ja" };
	size_t n = 2 + bc_next() % 3, o = 0;
	for (size_t i = 0; i < n && o + 3 < cap; i++)
		o += (size_t)snprintf(buf + o, cap - o, "%s", syl[bc_next() % 16]);
}

int main(int argc, char **argv)
{
	long long want = 10000;
	char dir[256] = "";
	bool model_keys = true, have_n = false, reuse = false;
	uint32_t group = 0; /* blocks per index group (0: the store's default) */
	int n_rec = BC_RECALLS, n_ov = 5;
	uint32_t cands = 0;     /* the sketches' candidates (0: the store's default) */
	uint32_t mem_cands = 0; /* the memory stage's (0: the default; STORE_COLD_EXACT: off) */
	struct err e;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--keys") == 0 && i + 1 < argc) {
			model_keys = strcmp(argv[++i], "model") == 0;
			if (!model_keys && strcmp(argv[i], "random") != 0) {
				fprintf(stderr, "bench-cold: --keys %s: expected model or random\n", argv[i]);
				return 2;
			}
		} else if (strcmp(argv[i], "--reuse") == 0) {
			reuse = true;
		} else if (strcmp(argv[i], "--group") == 0 && i + 1 < argc) {
			long v = atol(argv[++i]);
			if (v < 1 || v > 4096) {
				fprintf(stderr, "bench-cold: --group %s: expected 1..4096 blocks\n", argv[i]);
				return 2;
			}
			group = (uint32_t)v;
		} else if (strcmp(argv[i], "--recalls") == 0 && i + 1 < argc) {
			n_rec = atoi(argv[++i]);
			if (n_rec < 1 || n_rec > BC_RECALLS) {
				fprintf(stderr, "bench-cold: --recalls %s: expected 1..%d\n", argv[i], BC_RECALLS);
				return 2;
			}
		} else if (strcmp(argv[i], "--cands") == 0 && i + 1 < argc) {
			long v = atol(argv[++i]);
			if (v < 1 || v > 1000000) {
				fprintf(stderr, "bench-cold: --cands %s: expected 1..1000000 blocks\n", argv[i]);
				return 2;
			}
			cands = (uint32_t)v;
		} else if (strcmp(argv[i], "--mem") == 0 && i + 1 < argc) {
			long v = strcmp(argv[++i], "off") == 0 ? -1 : atol(argv[i]);
			if (v != -1 && (v < 1 || v > 1000000)) {
				fprintf(stderr, "bench-cold: --mem %s: expected 1..1000000 blocks or off\n",
				        argv[i]);
				return 2;
			}
			mem_cands = v == -1 ? STORE_COLD_EXACT : (uint32_t)v;
		} else if (strcmp(argv[i], "--overlap") == 0 && i + 1 < argc) {
			n_ov = atoi(argv[++i]);
			if (n_ov < 0 || n_ov > BC_RECALLS) {
				fprintf(stderr, "bench-cold: --overlap %s: expected 0..%d\n", argv[i], BC_RECALLS);
				return 2;
			}
		} else if (!have_n) {
			want = atoll(argv[i]);
			have_n = true;
		} else {
			snprintf(dir, sizeof dir, "%s", argv[i]);
		}
	}
	if (want < BC_BLOCK || want > 100000000) {
		fprintf(stderr,
		        "usage: bench-cold TOKENS (%d..100000000) [dir] [--keys model|random] [--group "
		        "N] [--recalls N] [--overlap N] [--cands N] [--mem N|off] [--reuse]\n",
		        BC_BLOCK);
		return 2;
	}
	bool keep_dir = dir[0] != '\0';
	if (reuse && !keep_dir) {
		fprintf(stderr, "bench-cold: --reuse: expected a folder (bench-cold TOKENS DIR --reuse)\n");
		return 2;
	}
	if (!keep_dir) {
		struct err te;
		char *t = file_mkdtemp("bench-cold", "the cold tier's database", &te);
		if (t == NULL)
			return fprintf(stderr, "bench-cold: %s\n", te.msg), 1;
		snprintf(dir, sizeof dir, "%s", t);
		free(t);
	}
	struct gen_config c;
	struct gen *g;
	gen_config_default(&c);
	char *mp = model_default_path(NULL);
	c.model_path = mp;
	kv_policy_parse("streaming", &c.kv.policy, NULL);
	c.kv.budget = BC_CTX;
	c.engine.n_ctx = BC_CTX + 64; /* room for a probe beside a full cache */
	if (gen_open(&g, &c, &e) != KVS_OK) {
		fprintf(stderr, "bench-cold: %s\n", e.msg);
		return 1;
	}
	struct engine *eng = gen_engine(g);
	const struct hparams *hp = &gen_model(g)->hp;
	uint64_t row = engine_kv_bytes_per_slot(eng);
	bool f16 = engine_kv_type(eng) == ENGINE_KV_F16;
	char *db = xasprintf("%s/cold.db", dir);
	/* --reuse: the database a run with the same TOKENS left in dir; the fill
	 * is skipped but its random draws are made, so the questions match */
	reuse = reuse && access(db, F_OK) == 0;
	struct store *st;
	int64_t id = 0;
	struct store_session in = { .title = (char *)"bench-cold",
		                        .model_path = (char *)"model",
		                        .model_sha256 = (char *)"",
		                        .arch = (char *)"llama",
		                        .policy = (char *)"streaming",
		                        .sampler = (char *)"temp=0" };
	struct store_cold *cold;
	struct store_cold_config cc = { .block = BC_BLOCK, .max_tokens = 0, .group = group };
	double open0 = clock_now_ms();
	if (store_open(&st, db, STORE_RW, &e) != KVS_OK ||
	    (reuse ? store_session_find(st, "bench-cold", &id, &e)
	           : store_session_create(st, &in, &id, &e)) != KVS_OK) {
		fprintf(stderr, "bench-cold: %s\n", e.msg);
		return 1;
	}
	store_cold_open(&cold, gen_kv(g), gen_vocab(g), &cc);
	if (store_cold_attach(cold, st, id, "", &e) != KVS_OK) {
		fprintf(stderr, "bench-cold: %s\n", e.msg);
		return 1;
	}
	double open_s = (clock_now_ms() - open0) / 1e3;
	/* the word bank, each word's tokens (with its leading space) */
	char(*words)[16] = xcalloc(BC_WORDS, sizeof *words);
	int32_t *wtok = xcalloc((size_t)BC_WORDS * 8, sizeof *wtok);
	uint32_t *wn = xcalloc(BC_WORDS, sizeof *wn);
	for (uint32_t i = 0; i < BC_WORDS; i++) {
		char sp[20];
		bc_word(words[i], sizeof words[i]);
		snprintf(sp, sizeof sp, " %s", words[i]);
		int32_t *ids = NULL;
		size_t n = 0, cap = 0;
		if (vocab_tokenize(gen_vocab(g), sp, strlen(sp), false, false, &ids, &n, &cap, &e) !=
		    KVS_OK)
			return fprintf(stderr, "bench-cold: %s\n", e.msg), 1;
		wn[i] = (uint32_t)KVS_MIN(n, (size_t)8);
		memcpy(wtok + (size_t)i * 8, ids, wn[i] * sizeof *ids);
		free(ids);
	}
	/* the pool of K/V rows the blocks are cut from */
	struct bc_pool pool = { NULL, row, 0, model_keys ? BC_POOL : 512 };
	pool.rows = xmalloc((size_t)pool.cap * row);
	double cap_s = 0;
	if (model_keys) {
		/* the model reads the bank's words; what its budget evicts is kept */
		double c0 = clock_now_ms();
		kv_cache_set_cold(gen_kv(g), bc_pool_listen, &pool);
		int32_t ids[256];
		while (pool.n < pool.cap) {
			size_t n = 0;
			while (n < 96) {
				size_t k = bc_sentence(g, words, ids + n, 256 - n);
				if (k == 0)
					return fprintf(stderr, "bench-cold: the bank's words did not tokenize\n"), 1;
				n += k;
			}
			if (gen_begin_turn(g, KV_ROLE_USER, n, &e) != KVS_OK ||
			    gen_feed(g, ids, n, &e) != KVS_OK)
				return fprintf(stderr, "bench-cold: %s\n", e.msg), 1;
		}
		kv_cache_set_cold(gen_kv(g), NULL, NULL);
		cap_s = (clock_now_ms() - c0) / 1e3;
	} else {
		size_t n_el = (size_t)pool.cap * row / (f16 ? 2 : 4);
		for (size_t k = 0; k < n_el; k++) {
			float x = 2 * bc_unit();
			if (f16) {
				uint16_t h = dtype_f32_to_f16(x);
				memcpy(pool.rows + 2 * k, &h, 2);
			} else {
				memcpy(pool.rows + 4 * k, &x, 4);
			}
		}
		pool.n = pool.cap;
	}
	/* the fill */
	struct kv_tok toks[BC_BLOCK];
	uint8_t *raw = xmalloc((size_t)BC_BLOCK * row);
	double t0 = clock_now_ms(), flush_ms = 0;
	uint32_t wi = 0, wpos = 0;
	for (long long pos = 0; pos < want; pos += BC_BLOCK) {
		memset(toks, 0, sizeof toks);
		for (uint32_t i = 0; i < BC_BLOCK; i++) {
			if (wpos == wn[wi]) {
				wi = (uint32_t)(bc_next() % BC_WORDS);
				wpos = 0;
			}
			toks[i].token = wtok[(size_t)wi * 8 + wpos++];
			toks[i].orig_pos = (int32_t)(pos + i);
			toks[i].turn = (uint32_t)((pos + i) / 200);
			toks[i].role = KV_ROLE_USER;
		}
		if (model_keys) { /* 64 consecutive rows: a real block's keys */
			size_t off = (size_t)(bc_next() % (pool.n - BC_BLOCK + 1));
			if (reuse)
				continue;
			memcpy(raw, pool.rows + off * row, (size_t)BC_BLOCK * row);
		} else {
			for (uint32_t i = 0; i < BC_BLOCK; i++)
				memcpy(raw + (size_t)i * row, pool.rows + (size_t)(bc_next() % pool.n) * row, row);
		}
		if (reuse)
			continue;
		store_cold_evicted(cold, toks, BC_BLOCK, raw, row);
		if ((pos + BC_BLOCK) % BC_FLUSH == 0 || pos + BC_BLOCK >= want) {
			struct store_cold_flush_info fi;
			double f0 = clock_now_ms();
			if (store_cold_flush(cold, (uint32_t)(pos / 200), &fi, &e) != KVS_OK)
				return fprintf(stderr, "bench-cold: %s\n", e.msg), 1;
			flush_ms += clock_now_ms() - f0;
		}
	}
	double fill_s = (clock_now_ms() - t0) / 1e3;
	double rss_fill = bc_rss_mib();
	uint32_t blocks;
	uint64_t tokens, kv_bytes;
	if (store_cold_count(st, id, &blocks, &tokens, &kv_bytes, &e) != KVS_OK)
		return fprintf(stderr, "bench-cold: %s\n", e.msg), 1;
	char *wal = xasprintf("%s-wal", db), *kvf = xasprintf("%s-cold", db),
	     *kvwal = xasprintf("%s-cold-wal", db);
	uint64_t disk_db = bc_size(db) + bc_size(wal), disk_kv = bc_size(kvf) + bc_size(kvwal);
	uint64_t disk = disk_db + disk_kv;
	free(kvf);
	free(kvwal);
	/* the recalls */
	size_t per = (size_t)hp->n_layer * hp->n_head * hp->head_dim;
	float *qbuf = xmallocarray(64 * per, sizeof *qbuf);
	const float *q = qbuf;
	static const char *const rank_names[] = { "fts", "summary", "both" };
	/* pass 0: the page cache as the run left it; pass 1: the folder's files
	 * dropped from it before each recall; pass 2: the K/V file alone
	 * dropped, the database cached (the same questions each pass) */
	double ms[3][3][BC_RECALLS], cpu[3][3][BC_RECALLS], rd[3][3][BC_RECALLS];
	double own[3][3][BC_RECALLS]; /* wall clock less the run-queue wait */
	size_t got[3] = { 0 };
	struct store_cold_rank_stats rs_sum = { 0 };
	uint64_t rng_recalls = bc_rng;
	for (int pass = 0; pass < 3; pass++) {
		bc_rng = rng_recalls;
		for (int r = 0; r < n_rec; r++) {
			char text[128];
			snprintf(text, sizeof text, "what about %s and %s or %s?", words[bc_next() % BC_WORDS],
			         words[bc_next() % BC_WORDS], words[bc_next() % BC_WORDS]);
			if ((q = bc_probe(g, model_keys, text, qbuf, per)) == NULL)
				return 1;
			for (int k = 0; k < 3; k++) {
				struct store_cold_query query = {
					.text = text, .q = q, .n_q = BC_PROBE, .cands = cands, .mem_cands = mem_cands
				};
				query.rank = (enum store_cold_rank)k;
				struct store_cold_hit *hits;
				size_t n_hits;
				if (pass > 0)
					bc_drop_cache(dir, pass == 2);
				uint64_t b0 = bc_read_bytes();
				double r0 = clock_now_ms(), c0 = bc_cpu_ms(), q0 = bc_runq_ms();
				if (store_cold_recall_by(cold, &query, BC_BUDGET, &hits, &n_hits, &e) != KVS_OK)
					return fprintf(stderr, "bench-cold: %s\n", e.msg), 1;
				ms[pass][k][r] = clock_now_ms() - r0;
				own[pass][k][r] = ms[pass][k][r] - (bc_runq_ms() - q0);
				cpu[pass][k][r] = bc_cpu_ms() - c0;
				rd[pass][k][r] = (double)(bc_read_bytes() - b0) / 1024.0;
				if (pass > 0) {
					free(hits);
					continue;
				}
				got[k] += n_hits;
				if (k == 1) {
					struct store_cold_rank_stats rs;
					store_cold_rank_stats(cold, &rs);
					rs_sum.groups += rs.groups;
					rs_sum.groups_read += rs.groups_read;
					rs_sum.blocks_read += rs.blocks_read;
					rs_sum.blocks_cut += rs.blocks_cut;
					rs_sum.blocks_scored += rs.blocks_scored;
					rs_sum.sketched += rs.sketched;
					rs_sum.candidates += rs.candidates;
					rs_sum.mem_scored += rs.mem_scored;
				}
				free(hits);
			}
		}
	}
	/* the two stages against the exact search */
	size_t ov_hit = 0, ov_tot = 0, top1 = 0;
	double gap = 0; /* exact best score less the two stages' best, summed */
	double ms_two[BC_RECALLS], ms_exact[BC_RECALLS];
	size_t mem_hit = 0, mem_tot = 0; /* the memory stage against reading every sketch */
	for (int r = 0; r < n_ov; r++) {
		char text[128];
		snprintf(text, sizeof text, "what about %s and %s or %s?", words[bc_next() % BC_WORDS],
		         words[bc_next() % BC_WORDS], words[bc_next() % BC_WORDS]);
		if ((q = bc_probe(g, model_keys, text, qbuf, per)) == NULL)
			return 1;
		int64_t ids2[BC_TOPK], idsx[BC_TOPK];
		double sc2[BC_TOPK], scx[BC_TOPK];
		size_t n2 = 0, nx = 0;
		double r0 = bc_cpu_ms();
		if (store_cold_summary_top(cold, q, BC_PROBE, BC_TOPK, cands, mem_cands, ids2, sc2, &n2,
		                           &e) != KVS_OK)
			return fprintf(stderr, "bench-cold: %s\n", e.msg), 1;
		double r1 = bc_cpu_ms();
		if (store_cold_summary_top(cold, q, BC_PROBE, BC_TOPK, STORE_COLD_EXACT, 0, idsx, scx, &nx,
		                           &e) != KVS_OK)
			return fprintf(stderr, "bench-cold: %s\n", e.msg), 1;
		ms_two[r] = r1 - r0;
		ms_exact[r] = bc_cpu_ms() - r1;
		/* the sketches alone (every sketch read, no memory stage) */
		int64_t idsm[BC_TOPK];
		double scm[BC_TOPK];
		size_t nm = 0;
		if (mem_cands != STORE_COLD_EXACT) {
			if (store_cold_summary_top(cold, q, BC_PROBE, BC_TOPK, cands, STORE_COLD_EXACT, idsm,
			                           scm, &nm, &e) != KVS_OK)
				return fprintf(stderr, "bench-cold: %s\n", e.msg), 1;
			for (size_t i = 0; i < nm; i++)
				for (size_t j = 0; j < n2; j++)
					mem_hit += idsm[i] == ids2[j];
			mem_tot += nm;
		}
		for (size_t i = 0; i < nx; i++)
			for (size_t j = 0; j < n2; j++)
				ov_hit += idsx[i] == ids2[j];
		ov_tot += nx;
		/* the best block: the same, or one of the same exact score */
		top1 += nx > 0 && n2 > 0 && (ids2[0] == idsx[0] || sc2[0] == scx[0]);
		if (nx > 0 && n2 > 0)
			gap += scx[0] - sc2[0];
	}
	double load[3] = { -1, -1, -1 };
	if (getloadavg(load, 3) < 0)
		load[0] = -1;
	char host[64] = "?";
	gethostname(host, sizeof host);
	printf("bench-cold: %llu tokens in %u blocks of %d (%s KV, %llu bytes a token, %s keys), %s, "
	       "db in %s, load average %.2f\n",
	       (unsigned long long)tokens, blocks, BC_BLOCK, f16 ? "f16" : "f32",
	       (unsigned long long)row, model_keys ? "model" : "random", host, dir, load[0]);
	if (model_keys)
		printf("  keys: %u evicted rows of the model reading the bank's words (%.1f s)\n", pool.n,
		       cap_s);
	if (reuse)
		printf("  fill: none (--reuse: the database %s already held); open and attach %.1f s "
		       "(quick_check, the K/V file's repair)\n",
		       db, open_s);
	else
		printf("  fill: %.1f s (%.0f tokens/s; flushes %.1f s)\n", fill_s, (double)tokens / fill_s,
		       flush_ms / 1e3);
	printf("  disk: %.2f MiB per 1k tokens (files + WALs %.1f MiB: database %.1f MiB, K/V file "
	       "%.1f MiB; K/V rows alone %.2f MiB per 1k)\n",
	       (double)disk / 1048576.0 / ((double)tokens / 1000.0), (double)disk / 1048576.0,
	       (double)disk_db / 1048576.0, (double)disk_kv / 1048576.0,
	       (double)kv_bytes / 1048576.0 / ((double)tokens / 1000.0));
	static const char *const pass_names[] = { "warm", "cold", "kvcold" };
	for (int pass = 0; pass < 3; pass++)
		for (int k = 0; k < 3; k++) {
			qsort(ms[pass][k], (size_t)n_rec, sizeof ms[pass][k][0], bc_cmp);
			qsort(cpu[pass][k], (size_t)n_rec, sizeof cpu[pass][k][0], bc_cmp);
			qsort(rd[pass][k], (size_t)n_rec, sizeof rd[pass][k][0], bc_cmp);
			qsort(own[pass][k], (size_t)n_rec, sizeof own[pass][k][0], bc_cmp);
			printf("  recall %-7s %-6s median %8.2f ms, p90 %8.2f ms, max %8.2f ms; CPU median "
			       "%8.2f, p90 %8.2f ms; less the run-queue wait median %8.2f, p90 %8.2f ms; "
			       "disk read median %7.0f KiB, p90 %7.0f (%d recalls, %.1f blocks each)\n",
			       rank_names[k], pass_names[pass], ms[pass][k][n_rec / 2],
			       ms[pass][k][n_rec * 9 / 10], ms[pass][k][n_rec - 1], cpu[pass][k][n_rec / 2],
			       cpu[pass][k][n_rec * 9 / 10], own[pass][k][n_rec / 2],
			       own[pass][k][n_rec * 9 / 10], rd[pass][k][n_rec / 2],
			       rd[pass][k][n_rec * 9 / 10], n_rec, (double)got[k] / n_rec);
		}
	printf("  summary, per recall: %.1f blocks scored in memory (%.2f MiB held), %.1f sketches "
	       "read and scored, %.1f candidates; %.1f of %.1f groups "
	       "read, %.1f blocks' bounds read, %.1f cut part-way, %.1f scored in full\n",
	       (double)rs_sum.mem_scored / n_rec, (double)store_cold_mem_bytes(cold) / 1048576.0,
	       (double)rs_sum.sketched / n_rec, (double)rs_sum.candidates / n_rec,
	       (double)rs_sum.groups_read / n_rec, (double)rs_sum.groups / n_rec,
	       (double)rs_sum.blocks_read / n_rec, (double)rs_sum.blocks_cut / n_rec,
	       (double)rs_sum.blocks_scored / n_rec);
	int64_t sk_bytes = 0;
	if (store_cold_sketch_bytes(st, id, &sk_bytes, &e) != KVS_OK)
		return fprintf(stderr, "bench-cold: %s\n", e.msg), 1;
	printf("  sketches: %.1f KiB per 1k tokens (%lld bytes a block)\n",
	       (double)sk_bytes / 1024.0 / ((double)tokens / 1000.0),
	       (long long)(blocks ? sk_bytes / blocks : 0));
	if (n_ov > 0) {
		qsort(ms_two, (size_t)n_ov, sizeof ms_two[0], bc_cmp);
		qsort(ms_exact, (size_t)n_ov, sizeof ms_exact[0], bc_cmp);
		printf("  top %d, two stages against the exact search (%d probes): %.3f of the exact top "
		       "%d returned; CPU median %.2f ms against %.2f ms\n",
		       BC_TOPK, n_ov, ov_tot ? (double)ov_hit / (double)ov_tot : 0.0, BC_TOPK,
		       ms_two[n_ov / 2], ms_exact[n_ov / 2]);
		printf("  best block: the same in %zu of %d probes (mean score gap %.4f)\n", top1, n_ov,
		       gap / n_ov);
		if (mem_tot > 0)
			printf("  the memory stage: %.3f of the top %d that reading every sketch gives are "
			       "returned\n",
			       (double)mem_hit / (double)mem_tot, BC_TOPK);
	}
	printf("  RSS: %.1f MiB after the fill, %.1f MiB after the recalls, peak %.1f MiB\n", rss_fill,
	       bc_rss_mib(), bc_peak_mib());
	free(qbuf);
	free(raw);
	free(pool.rows);
	free(words);
	free(wtok);
	free(wn);
	free(wal);
	store_cold_free(cold);
	store_close(st);
	gen_close(g);
	free(db);
	free(mp);
	if (!keep_dir) {
		char *cmd = xasprintf("rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "bench-cold: could not remove %s\n", dir);
		free(cmd);
	}
	return 0;
}
