/*
 * store-int.h: the store layer's internal header (not for other layers).
 *
 * The SQLite store is split by object over four files that share what is
 * declared here:
 *   store.c         the database handle: opening, migrations, sessions, and
 *                   the SQLite machinery below (errors, statements)
 *   store-snap.c    KV snapshot files, and resuming a session's cache
 *   store-rec.c     the recorder: turns, token rows and memory events
 *   store-export.c  a session as Markdown or JSON
 *   store-cold.c    the cold tier: evicted blocks written, chosen, placed
 *   store-cold-rank.c  how a recall ranks the cold blocks
 *   store-cold-kv.c    the cold blocks' K/V rows, in a file of their own
 *   store-cold-index.c the summary index: block bounds apart from the K/V,
 *                   group bounds over them, the exact top-k search
 *   store-cold-sketch.c the summary recall's first stage: 4-bit sketches of
 *                   the bounds on every other layer, scored to pick candidates,
 *                   and the memory stage before it (a few layers of each
 *                   sketch held in memory)
 * nostore.c (built without SQLite) answers store.h alone and needs none of it.
 *
 * Every function here that can fail returns a KVS_* status and fills e
 * with a message naming the database and what was being done.
 */
#ifndef KVS_STORE_INT_H
#define KVS_STORE_INT_H

#include "store/store.h"

#include <sqlite3.h>
#include <string.h>

#define STORE_APP_ID 0x6b767363   /* "kvsc" in PRAGMA application_id */
#define COLD_KV_APP_ID 0x6b76736b /* "kvsk": the cold K/V file's (store-cold-kv.c) */

struct store {
	sqlite3 *db;
	char *path;
	char *snapdir; /* PATH-kv */
	int version;   /* PRAGMA user_version of the open database */
	bool ro;       /* opened STORE_RO */
	bool cold_kv;  /* the cold K/V file (PATH-cold) is attached as `cold` */
};

/* ---- store.c: the machinery ---- */

/* Wall-clock time in seconds since the epoch (the tables' timestamps). */
double store_now(void);
/* Fill e from SQLite's last error on the store, naming what was being done;
 * returns the status (KVS_EIO, or KVS_EFORMAT for a damaged database). */
int store_fail(struct store *s, int rc, const char *what, struct err *e);
/* Run SQL without results. */
int store_exec(struct store *s, const char *sql, const char *what, struct err *e);
/* Prepare one statement. */
int store_prepare(struct store *s, const char *sql, sqlite3_stmt **st, struct err *e);
/* One integer from a query without parameters (pragmas, counts). */
int store_int(struct store *s, const char *sql, int64_t *out, struct err *e);
/* Column i of the current row as an allocated string (NULL for NULL). */
char *store_col_str(sqlite3_stmt *st, int i);
/* Prepare sql, bind session id to its ?1 and step to its row: KVS_OK with
 * *out on the row (the caller finalizes it), else the error with nothing
 * left to finalize. */
int store_session_row(struct store *s, const char *sql, int64_t id, sqlite3_stmt **out,
                      struct err *e);

/* Refuse a path whose non-empty file is not a SQLite database or is shorter
 * than its header says (*exists: a non-empty file is there). */
int store_check_header(const char *path, bool *exists, struct err *e);
/* The SQLite URI of path (allocated), query appended ("" or "?..."). */
char *store_uri(const char *path, const char *query);

/* ---- store-cold-kv.c: the cold blocks' K/V file ---- */

/* Attach PATH-cold as `cold` (once): create it when create is set (a
 * writer), else KVS_ENOTFOUND when it is not there. Another program's
 * file, a symbolic link or a damaged header is refused with one line and
 * left as it is. */
int cold_kv_attach(struct store *s, bool create, struct err *e);
/* Bring session sid's rows of the two files in step after a crash between
 * their commits: K/V rows of no block are deleted; blocks whose K/V row
 * was never committed are deleted (they cannot be recalled); *lost: how
 * many. A writer's attach runs it. */
int cold_kv_repair(struct store *s, int64_t sid, uint32_t *lost, struct err *e);
/* Move session sid's blocks written before migration 006 (their rows in
 * cold_blocks.kv, kv_at 0) to the K/V file, COLD_KV_MOVE blocks a step,
 * each step two commits: the copy into the file, then the blocks marked
 * kv_at 1 with their kv emptied (a crash between them leaves a copy that
 * the next move makes again; nothing is lost either way). The database
 * keeps the freed pages (a VACUUM returns them); *moved: the blocks. A
 * writer's attach runs it after cold_kv_repair. */
int cold_kv_move(struct store *s, int64_t sid, uint32_t *moved, struct err *e);
/* The K/V rows of block id into buf (bytes of them): from the cold file
 * when kv_at is 1, else from cold_blocks.kv; false when missing. */
bool cold_kv_read(struct store *s, int64_t id, uint8_t **buf, uint64_t *bytes);
/* Bytes of session sid's K/V rows in both places. */
int cold_kv_bytes(struct store *s, int64_t sid, uint64_t *bytes, struct err *e);

/* ---- store-snap.c: snapshot files ---- */

/* Write kv's snapshot into s's snapshot directory (model_sha identifies the
 * model); sha gets its name, bytes its size. */
int store_snap_save(struct store *s, struct kv_cache *kv, const char *model_sha, char sha[65],
                    uint64_t *bytes, struct err *e);
/* Whether sha can name a snapshot file: 64 lowercase hex digits. Every
 * name read from a database is checked before it becomes a path. */
bool store_is_sha256(const char *sha);
/* Remove snapshot sha's file unless a row still refers to it (nothing when
 * sha is not a name, or the directory is a symbolic link). */
void store_snap_unlink_unused(struct store *s, const char *sha);
/* Remove leftover temporary files and unreferenced snapshots (vacuum). */
int store_snap_sweep(struct store *s, struct err *e);

/* ---- store-cold-rank.c: ranking the cold tier's blocks ---- */

/* Little-endian 32-bit loads (the cold blobs' byte order on every host). */
static inline uint32_t cold_get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline float cold_getf(const uint8_t *p)
{
	uint32_t u = cold_get32(p);
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* Where a recall looks: one session's epoch of one database. */
struct cold_scope {
	struct store *s;
	int64_t id;
	uint32_t epoch;
	const struct hparams *hp;            /* the shapes of the bounds blobs */
	uint32_t max_block;                  /* tokens a block row may claim at most */
	struct store_cold_rank_stats *stats; /* what the ranking read (added to); NULL: none */
	uint32_t top_k;                      /* the summary ranking's k (0: COLD_CANDIDATES) */
	uint32_t cands; /* the sketch's candidates (0: cold_sketch_cands' default; STORE_COLD_EXACT) */
	struct cold_mem *mem; /* the memory stage (store-cold-sketch.c); NULL: none */
	uint32_t mem_cands;   /* its candidates (0: cold_mem_cands' default; STORE_COLD_EXACT: none) */
};

/* A block a recall may take, and what ranks it. */
struct cold_cand {
	struct store_cold_hit hit;
	uint32_t rank_fts, rank_sum; /* 1 best; 0: not ranked that way */
	double key;                  /* the ranking's: higher first */
	char *text;                  /* custom scorers only, else NULL */
};

/* The blocks of scope that query ranks, best first, into *out (caller
 * frees each text and the array); blocks no ranking scored are left out. */
int cold_rank(const struct cold_scope *scope, const struct store_cold_query *query,
              struct cold_cand **out, size_t *n, struct err *e);

/* ---- store-cold-index.c: the summary index ---- */

/* A probe as the scorers use it: per (layer, KV head) the queries of its
 * query heads and probe tokens split into their positive and negative
 * parts, so a query's bound over a box is one pass (sum_d qp_d kmax_d +
 * qn_d kmin_d, store_cold_summary_score's sum: the parts add exact zeros),
 * and the channel-wise envelope of those parts over the queries. */
struct cold_probe {
	uint32_t n_layer, n_head_kv, head_dim, per; /* per: queries per (layer, KV head) */
	double *qp, *qn; /* (n_layer, n_head_kv, per, head_dim); NULL when qp4 holds them */
	double *pmax, *pmin, *nmax, *nmin; /* (n_layer, n_head_kv, head_dim) over per */
	double *qp4, *qn4; /* (n_layer, n_head_kv, per / 4, head_dim, 4): the same four queries
	                    * at a time, channel-major, for the AVX2 loop (NULL without AVX2 or
	                    * when per is not a multiple of 4) */
};

void cold_probe_init(struct cold_probe *p, const struct hparams *hp, const float *q, uint32_t n_q);
void cold_probe_free(struct cold_probe *p);
/* store_cold_summary_score of the probe over bounds kmin, kmax. */
double cold_probe_score(const struct cold_probe *p, const float *kmin, const float *kmax);
/* Decode column col of st, nb bounds as F16 or float32 LE (told apart by
 * the size: F16 when every value was one exactly), into f; false when its
 * size is neither. */
bool cold_floats_read(sqlite3_stmt *st, int col, size_t nb, float *f);

/* A block's summary score, and what breaks its ties (pos0, lower first). */
struct cold_scored {
	int64_t id;
	int32_t pos0;
	double score;
};

/* The index group a flush is filling (kept between the blocks of one
 * flush; reset after it, so a rolled-back flush leaves nothing behind). */
struct cold_index_w {
	int64_t sid, id; /* the group's row; its bounds below (nb floats each) */
	uint32_t epoch, n;
	size_t nb;
	float *kmin, *kmax; /* (n_layer, n_head_kv, head_dim) */
	bool loaded, dirty;
};

/* Index block block_id (session sid, epoch, first position pos0, bounds
 * kmin, kmax: nb floats each): its cold_sums row, and its group's bounds
 * widened (a new group when the last holds `group` blocks). */
int cold_index_add(struct store *s, struct cold_index_w *w, int64_t sid, uint32_t epoch,
                   int64_t block_id, int32_t pos0, const float *kmin, const float *kmax, size_t nb,
                   uint32_t group, struct err *e);
/* Write the open group back (in the flush's transaction) and forget it. */
int cold_index_finish(struct store *s, struct cold_index_w *w, struct err *e);
void cold_index_w_reset(struct cold_index_w *w);
void cold_index_w_free(struct cold_index_w *w);
/* Delete session sid's groups that no block belongs to any more. */
int cold_index_prune(struct store *s, int64_t sid, struct err *e);
/* Group session sid's ungrouped rows (those the migration copied), in
 * groups of `group` consecutive blocks per epoch, in one transaction. */
int cold_index_build(struct store *s, int64_t sid, size_t nb, uint32_t group, struct err *e);
/* The best k blocks of scope by summary score against the probe (q, n_q),
 * best first, exactly as cold_index_scan's first k (caller frees *out). */
int cold_index_top(const struct cold_scope *c, const float *q, uint32_t n_q, size_t k,
                   struct cold_scored **out, size_t *n, struct err *e);
/* The best k of the blocks ids (n_ids, any order; ids of no block are
 * skipped) by summary score, exactly, best first (caller frees *out). */
int cold_index_top_of(const struct cold_scope *c, const float *q, uint32_t n_q, const int64_t *ids,
                      size_t n_ids, size_t k, struct cold_scored **out, size_t *n, struct err *e);
/* Every block of scope scored, best first (caller frees *out). */
int cold_index_scan(const struct cold_scope *c, const float *q, uint32_t n_q,
                    struct cold_scored **out, size_t *n, struct err *e);

/* ---- store-cold-sketch.c: the first stage ---- */

#define COLD_SKETCH_LAYERS 16 /* probe layers a sketch keeps at most (every other layer) */

/* The probe layers of a model of n_layer layers into layers
 * (COLD_SKETCH_LAYERS at most); returns how many. */
uint32_t cold_sketch_layers(uint32_t n_layer, uint32_t *layers);
/* Bytes of one block's sketch for the shape hp. */
size_t cold_sketch_bytes(const struct hparams *hp);
/* The sketch (cold_sketch_bytes) of bounds kmin, kmax (n_layer, n_head_kv,
 * head_dim) into sk. */
void cold_sketch_make(const struct hparams *hp, const float *kmin, const float *kmax, uint8_t *sk);
/* Stage 1's score of sketch sk for the probe q (n_q, n_layer, n_head,
 * head_dim): over the probe layers, the sum of the best KV head's
 * envelope term over the dequantised box (unscaled: a layer sum like the
 * exact score's, not a mean). */
double cold_sketch_estimate(const struct hparams *hp, const float *q, uint32_t n_q,
                            const uint8_t *sk);
/* Write block block_id's sketch of its bounds. */
int cold_sketch_add(struct store *s, const struct hparams *hp, int64_t sid, uint32_t epoch,
                    int64_t block_id, int32_t pos0, const float *kmin, const float *kmax,
                    struct err *e);
/* Sketch session sid's blocks that have none (rows older than migration
 * 005), from their cold_sums bounds, in one transaction. */
int cold_sketch_build(struct store *s, int64_t sid, const struct hparams *hp, struct err *e);
/* Candidates stage 1 hands on for a top k (cands: the caller's count, 0
 * for the default 2 k + 32). */
size_t cold_sketch_cands(size_t k, uint32_t cands);
/* Candidates the memory stage hands stage 1 when stage 1 passes on
 * `cands` (mem_cands: the caller's count, 0 for the default 8 cands). */
size_t cold_mem_cands(size_t cands, uint32_t mem_cands);
#define COLD_MEM_LAYERS 3 /* probe layers of the sketch the memory stage keeps */
/* The memory stage: the sketches of one epoch on COLD_MEM_LAYERS of their
 * layers, held in memory and brought in step with the database at each
 * search (store-cold-sketch.c). */
struct cold_mem;
struct cold_mem *cold_mem_new(void);
void cold_mem_free(struct cold_mem *m);
/* Bytes the memory stage holds (its arrays' capacity). */
size_t cold_mem_size(const struct cold_mem *m);
/* The blocks it holds now (*ids: theirs, ascending; NULL to skip). */
size_t cold_mem_count(const struct cold_mem *m, const int64_t **ids);
/* The memory stage's score of sketch sk for the probe q (n_q, n_layer,
 * n_head, head_dim): cold_sketch_estimate's sum over the memory layers
 * alone. */
double cold_mem_estimate(const struct hparams *hp, const float *q, uint32_t n_q, const uint8_t *sk);
/* The summary ranking's best k blocks of scope, best first, with their
 * exact scores: stage 1 over the sketches, then cold_index_top_of over its
 * candidates; the exact search alone (cold_index_top) when scope->cands is
 * STORE_COLD_EXACT or a block of the epoch has no sketch. With a memory
 * stage (scope->mem) holding more blocks than it passes on, stage 1 reads
 * only the sketches of the memory stage's best. */
int cold_summary_top(const struct cold_scope *c, const float *q, uint32_t n_q, size_t k,
                     struct cold_scored **out, size_t *n, struct err *e);

#endif
