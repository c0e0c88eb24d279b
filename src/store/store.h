/*
 * store.h: the store layer's one public header: dialogue memory in SQLite.
 *
 * One database file (default $XDG_DATA_HOME/kvscope/memory.db) holds the
 * sessions, their turns, every token that entered the KV cache with what
 * the cache knew of it (surprisal, final score, kept or evicted and when,
 * pinned), an audit row per memory event (eviction batch, pin, unpin,
 * policy change) and a reference to the newest KV snapshot. Snapshots are
 * files beside the database (PATH-kv/HASH.kvs), named by the SHA-256 of
 * their bytes; a missing or damaged one only costs a recompute on resume.
 * doc/store.md describes the schema and the durability design.
 *
 * Writing goes through a recorder: it copies the KV cache's memory events
 * as they happen (store_rec_event, from the cache's event listener) and
 * queues finished turns (store_rec_turn); store_rec_commit writes every
 * queued turn, its token rows, its events and a snapshot reference in one
 * transaction. When a commit fails (disk full, I/O error, a second writer
 * holding the lock) the queue stays in memory and the next commit writes
 * it; nothing committed is ever lost or half-written.
 *
 * Built without SQLite (configure --without-sqlite), every call fails with
 * a message saying so (nostore.c); callers need no #ifdef.
 */
#ifndef KVS_STORE_H
#define KVS_STORE_H

#include "base/base.h"
#include "engine/engine.h"
#include "kv/kv_cache.h"

#include <stdio.h>

struct store;

enum store_mode {
	STORE_RW = 0, /* create the file when missing, migrate forward */
	STORE_RO,     /* readers: list, show, export (never creates or alters) */
};

/* Whether this build has the store (false: built without SQLite). */
bool store_available(void);
/* $XDG_DATA_HOME/kvscope/memory.db (caller owns). */
char *store_default_path(void);
/* Open (or, read-write, create) the database at path. Refuses, without
 * touching the file, one that is not SQLite, a SQLite database that is not
 * kvscope's, one written by a newer kvscope, or a damaged one; an empty or
 * blank path (KVS_EARG). path is always a file name (":memory:" and
 * "file:..." included). Read-only, it reads from read-only media too (a
 * folder where the WAL index cannot be created); read-write, a folder or
 * file that is not writable gets "read-only ...; cannot save". Processes
 * opening a new database at once each see it created once. */
int store_open(struct store **out, const char *path, enum store_mode mode, struct err *e);
void store_close(struct store *s);
const char *store_path(const struct store *s);
/* How long a writer waits for another writer's lock (default 5000 ms). */
void store_set_busy_timeout(struct store *s, int ms);
/* Schema version of the open database and the newest this build knows. */
int store_schema_version(const struct store *s);
int store_schema_latest(void);

/* ---- text in and out (store-text.c; built with or without SQLite) ---- */

enum {
	STORE_TEXT_KEEP_NL = 1u << 0,  /* store_text_escape: newlines pass (multi-line bodies) */
	STORE_TEXT_KEEP_TAB = 1u << 1, /* and tabs */
};
/* s (NULL: "") for a terminal or a Markdown page: every control character
 * (C0, DEL, C1) but those keep names, and every byte of invalid UTF-8, as
 * \xHH. Caller owns. */
char *store_text_escape(const char *s, unsigned keep);
/* A session title given by a user: KVS_OK, or KVS_EARG when it is blank,
 * not valid UTF-8 or has a control character (a title is one line). */
int store_title_check(const char *title, struct err *e);
/* A session id or title given by a user to look one up: KVS_EARG when NULL,
 * empty or blank (an unset shell variable must not pick a session). */
int store_key_check(const char *key, struct err *e);

/* ---- sessions ---- */

struct store_session {
	int64_t id;
	char *title;
	char *model_path, *model_sha256, *arch;
	char *policy; /* kv_policy_format */
	uint32_t budget, n_ctx;
	char *sampler;           /* "temp=0.8 top-k=40 ..." */
	char *system;            /* system prompt or NULL */
	char *sparse;            /* engine_sparse_format as of the last commit, or NULL (dense) */
	double created, updated; /* seconds since the epoch */
	uint32_t n_turns, n_incomplete, n_tokens, n_kept;
};

void store_session_free(struct store_session *s);
/* Create a session from in's descriptive fields; *id is the new id. A
 * title NULL or "" becomes "session ID"; another must pass
 * store_title_check. */
int store_session_create(struct store *s, const struct store_session *in, int64_t *id,
                         struct err *e);
/* A session by id (digits only) or by title (matched exactly; the newest
 * with it); NULL: the most recently updated. An empty or blank key is
 * KVS_EARG (store_key_check); KVS_ENOTFOUND names what was looked for. */
int store_session_find(struct store *s, const char *id_or_title, int64_t *id, struct err *e);
int store_session_get(struct store *s, int64_t id, struct store_session *out, struct err *e);
/* Every session, most recently updated first. */
int store_session_list(struct store *s, struct store_session **out, size_t *n, struct err *e);
/* Rename a session (the title must pass store_title_check). */
int store_session_set_title(struct store *s, int64_t id, const char *title, struct err *e);
/* Delete a session with its turns, tokens, events and snapshots. */
int store_session_delete(struct store *s, int64_t id, struct err *e);
/* PRAGMA integrity_check: KVS_OK when SQLite says "ok", else KVS_EFORMAT
 * with its first complaint. */
int store_check(struct store *s, struct err *e);
/* Compact the database and remove snapshot files no session refers to. */
int store_vacuum(struct store *s, struct err *e);
/* The SHA-256 of a model file (cached by path, size and mtime). */
int store_model_sha256(struct store *s, const char *path, char out[65], struct err *e);

enum store_format { STORE_FMT_MD = 0, STORE_FMT_JSON };
int store_format_parse(const char *name, enum store_format *out, struct err *e);
/* The session as Markdown or JSON: turns, and what was evicted and why;
 * with v (the session's vocabulary, or NULL) the evicted tokens' text too. */
int store_export(struct store *s, int64_t id, enum store_format fmt, const struct vocab *v,
                 FILE *fp, struct err *e);

/* ---- recording turns ---- */

/* A finished (or interrupted) turn, as the chat saw it. */
struct store_turn {
	const char *user, *reply;
	const char *stop; /* gen_stop_name */
	bool complete;    /* false: the reply was interrupted or failed */
	bool restarted;   /* the cache was cleared before this turn */
	uint32_t n_prompt, n_reply;
	double prefill_ms, decode_ms;
	double started;  /* seconds since the epoch */
	int32_t end_pos; /* the original position after its last token: the cache's tokens
	                          * before it belong to it; 0: the cache's next position (a turn
	                          * just finished); negative: none (an earlier epoch's turn) */
};

struct store_rec;

/* A recorder for session id over kv (borrows both: they stay valid until
 * store_rec_free). snapshots:
 * write a KV snapshot with each commit. It continues after the session's
 * last committed turn. */
int store_rec_open(struct store_rec **out, struct store *s, int64_t id, struct kv_cache *kv,
                   bool snapshots, struct err *e);
void store_rec_free(struct store_rec *r);
/* Copy a KV-cache event that the database keeps (evictions, pins, policy
 * changes); others are ignored. Call from the cache's event listener. */
void store_rec_event(struct store_rec *r, const struct kv_event *ev);
/* Queue a turn; the cache must be between turns (the turn closed). */
void store_rec_turn(struct store_rec *r, const struct store_turn *t);
/* Write every queued turn in one transaction. On failure the queue stays
 * for the next commit and e says why (one line). */
int store_rec_commit(struct store_rec *r, struct err *e);
/* Turns queued but not yet committed. */
uint32_t store_rec_pending(const struct store_rec *r);
/* Turns committed for this session (its next turn index). */
uint32_t store_rec_n_turns(const struct store_rec *r);

/* ---- resuming ---- */

struct store_resume_info {
	uint32_t n_tokens;  /* tokens restored */
	bool from_snapshot; /* false: recomputed from the token ids */
	char why[200];      /* why no snapshot was used, when not */
};

/* Restore session id's retained cache into kv (on an engine of the same
 * model): load its snapshot when it matches (model sha256, token ids and
 * positions, KV type), else recompute the tokens at their stored positions. */
int store_resume(struct store *s, int64_t id, struct kv_cache *kv, const char *model_sha256,
                 struct store_resume_info *info, struct err *e);

/* ---- Squeezed Attention's clusters (store-squeeze.c) ---- */

/* Keep the clusters of session id's document (engine_squeeze_save bytes,
 * made by model model_sha256 under spec), replacing any. */
int store_squeeze_put(struct store *s, int64_t id, const char *model_sha256, const char *spec,
                      const struct engine_squeeze_info *info, const void *blob, size_t len,
                      struct err *e);
/* Session id's clusters for model model_sha256 (caller owns *blob):
 * KVS_ENOTFOUND when it has none, KVS_EFORMAT (one line naming both
 * hashes) when they were made by another model. */
int store_squeeze_get(struct store *s, int64_t id, const char *model_sha256, void **blob,
                      size_t *len, struct err *e);

/* Turn i's user text and reply (caller owns both; for replaying a transcript). */
int store_turn_text(struct store *s, int64_t id, uint32_t i, char **user, char **reply,
                    struct err *e);

/* ---- the cold tier (store-cold.c) ---- */

/*
 * What the retention policy evicts, kept: the KV cache's cold listener
 * (store_cold_evicted) queues the evicted tokens in blocks of consecutive
 * original positions (their raw K/V rows, text, key bounds); a flush writes
 * the queued blocks of a session in one transaction and drops the oldest
 * blocks beyond the session's cap, each drop a memory event ("cold-drop").
 * store_cold_recall finds the blocks a turn's words match (FTS5, BM25) and
 * puts them back into the cache (kv_cache_recall). doc/store.md has the
 * schema.
 */
struct store_cold;

struct store_cold_config {
	uint32_t block;      /* tokens per block at most (default 64) */
	uint64_t max_tokens; /* per session (--cold-max); 0: no cap */
	uint32_t group;      /* blocks per summary index group (default 32) */
};

/* What the last ranking read of the summary index (store-cold-index.c). */
struct store_cold_rank_stats {
	uint64_t groups;        /* groups of the epoch whose bounds were scored */
	uint64_t groups_read;   /* groups whose members were read */
	uint64_t blocks_read;   /* blocks whose bounds were read */
	uint64_t blocks_cut;    /* of those, dropped part-way through the layers */
	uint64_t blocks_scored; /* scored in full */
	uint64_t sketched;      /* blocks the first stage scored by their sketch */
	uint64_t candidates;    /* of those, handed to the exact scorer */
	uint64_t mem_scored;    /* blocks the memory stage scored (before stage 1) */
};

/* One block a recall brought back. */
struct store_cold_hit {
	int64_t id;
	uint32_t epoch, turn, n_tokens;
	int32_t pos0, pos1; /* original positions of its first and last token */
	double bm25;        /* SQLite's bm25() negated: higher matches better; 0 not matched */
	double summary;     /* store_cold_summary_score against the probe; NAN not scored */
};

/* What one flush did. */
struct store_cold_flush_info {
	uint32_t blocks, dropped_blocks;
	uint64_t tokens, dropped_tokens;
};

/* A cold tier for kv's evictions (v: the model's vocabulary, for the
 * blocks' text); nothing is written before store_cold_attach. */
void store_cold_open(struct store_cold **out, struct kv_cache *kv, const struct vocab *v,
                     const struct store_cold_config *cfg);
void store_cold_free(struct store_cold *c);
/* Write to (and recall from) session id of s from now on; model_sha
 * identifies the model. Cold rows of that session written by another model
 * or KV layout are refused (KVS_EFORMAT, one line) and left as they are. */
int store_cold_attach(struct store_cold *c, struct store *s, int64_t id, const char *model_sha,
                      struct err *e);
/* Whether attached. */
bool store_cold_attached(const struct store_cold *c);
/* The cache's cold listener (kv_cold_fn; ud is the store_cold): queue the
 * evicted tokens in blocks (tokens flagged KV_FLAG_RECALLED are in the
 * cold tier already and are skipped). */
void store_cold_evicted(void *ud, const struct kv_tok *toks, uint32_t n, const void *raw,
                        uint64_t bytes_per_tok);
/* Tokens queued and not yet written. */
uint64_t store_cold_pending(const struct store_cold *c);
/* Write the queued blocks in one transaction; the blocks beyond the cap go,
 * oldest first, each a memory event of turn index turn. On a failure
 * (disk full, I/O error, lock) the queue is dropped and e says why: the
 * caller stops cold writes (store_cold_stop). */
int store_cold_flush(struct store_cold *c, uint32_t turn, struct store_cold_flush_info *info,
                     struct err *e);
/* Stop writing (the queue and later evictions are dropped); recall goes on. */
void store_cold_stop(struct store_cold *c);
bool store_cold_stopped(const struct store_cold *c);
/* Choose the blocks of this epoch that text's words match best (BM25), up
 * to budget tokens, skipping blocks with a token in the cache; *hits
 * (caller frees) lists them, best first. No word in text, or no match:
 * *n_hits 0. The cache is not touched: the caller makes room for them
 * (their tokens summed) and calls store_cold_place. */
int store_cold_recall(struct store_cold *c, const char *text, uint32_t budget,
                      struct store_cold_hit **hits, size_t *n_hits, struct err *e);
/* Whether this epoch has a block written (something to recall). */
bool store_cold_has_blocks(struct store_cold *c);
/* How a recall ranks the blocks. */
enum store_cold_rank {
	STORE_COLD_FTS = 0, /* the turn's words, BM25 */
	STORE_COLD_SUMMARY, /* the probe's queries against each block's key bounds */
	STORE_COLD_BOTH,    /* the two interleaved, FTS first (store-cold-rank.c) */
	STORE_COLD_SCORES,  /* the caller's scores (scorer), e.g. a Lua hook */
};
/* A block as a custom scorer sees it. */
struct store_cold_cand {
	const struct store_cold_hit *hit; /* bm25 and summary filled where scored */
	const char *text;
};
/* A custom scorer: scores (n) for cands (n), higher better, NAN: never
 * recall; false to fall back to BOTH's ranking. */
typedef bool (*store_cold_scorer_fn)(void *ud, const struct store_cold_cand *cands, size_t n,
                                     double *scores);
/* What a recall ranks by. */
struct store_cold_query {
	const char *text; /* the turn's words (FTS), or NULL */
	const float *q;   /* (n_q, n_layer, n_head, head_dim) probe queries before
	                                 * RoPE (kv_cache_probe), or NULL */
	uint32_t n_q;
	enum store_cold_rank rank;
	store_cold_scorer_fn scorer; /* STORE_COLD_SCORES */
	void *scorer_ud;
	uint32_t top_k;     /* SUMMARY and BOTH: the summary ranking's best k blocks (0: four
	                 * times the blocks the budget holds, 16 to 64) */
	uint32_t cands;     /* SUMMARY and BOTH: blocks the sketches pass to the exact scorer
	                 * (0: 2 top_k + 32; STORE_COLD_EXACT: no sketch, the exact search) */
	uint32_t mem_cands; /* blocks the memory stage passes to the sketches (0: 8 cands;
	                     * STORE_COLD_EXACT: no memory stage, every sketch read) */
};
#define STORE_COLD_EXACT UINT32_MAX
/* Choose the blocks of this epoch that query ranks best, up to budget
 * tokens, as store_cold_recall does (which is rank FTS). SUMMARY ranks by
 * the best k (top_k) of the summary index's two stages (the sketches pick
 * candidates, the exact scorer ranks them); without a probe it falls back
 * to FTS, and BOTH and SCORES (every block scored) use what they have. */
int store_cold_recall_by(struct store_cold *c, const struct store_cold_query *query,
                         uint32_t budget, struct store_cold_hit **hits, size_t *n_hits,
                         struct err *e);
/*
 * Quest's upper bound of a block for a probe: the mean over layers of
 * max over probe tokens p and query heads h of
 * sum_d max(q_d kmax_d, q_d kmin_d) / sqrt(head_dim), with q (n_q,
 * n_layer, n_head, head_dim) and the bounds kmin, kmax (n_layer, n_head_kv,
 * head_dim); head h reads KV head h / (n_head / n_head_kv). Keys and
 * queries are both before RoPE: the bound is of the position-free logit
 * q.k / sqrt(head_dim) (what a key scores at distance 0, where RoPE is the
 * identity), never below its maximum over the block's keys, and equal to
 * it for a block of one token.
 */
double store_cold_summary_score(const float *q, uint32_t n_q, uint32_t n_layer, uint32_t n_head,
                                uint32_t n_head_kv, uint32_t head_dim, const float *kmin,
                                const float *kmax);
/* The summary ranking alone: the best k blocks of this epoch for the
 * probe q (n_q, n_layer, n_head, head_dim), their ids and exact summary
 * scores best first into ids and scores (k each), *n of them; cands as in
 * store_cold_query (STORE_COLD_EXACT: the exact search), mem_cands too. For measuring the
 * first stage against the exact one (bench-cold, the tests). */
int store_cold_summary_top(struct store_cold *c, const float *q, uint32_t n_q, uint32_t k,
                           uint32_t cands, uint32_t mem_cands, int64_t *ids, double *scores,
                           size_t *n, struct err *e);
/* Bytes the summary recall's memory stage holds now. */
size_t store_cold_mem_bytes(const struct store_cold *c);
/* What the last store_cold_recall_by read of the summary index. */
void store_cold_rank_stats(const struct store_cold *c, struct store_cold_rank_stats *out);
/* Put the chosen blocks back into the cache, in their original order
 * (kv_cache_recall); KVS_EARG when they do not fit (nothing changes). */
int store_cold_place(struct store_cold *c, struct err *e);
/* text's words as a safe FTS5 query: every word quoted (quotes doubled),
 * joined by OR, at most 64 (caller owns; NULL when text has no word). */
char *store_cold_fts_query(const char *text);
/* Session id's recalls: memory events of kind "recall" and the tokens
 * they brought back. */
int store_recall_count(struct store *s, int64_t id, uint32_t *events, uint64_t *tokens,
                       struct err *e);
/* Session id's cold tier: blocks, tokens and bytes of K/V. */
int store_cold_count(struct store *s, int64_t id, uint32_t *blocks, uint64_t *tokens,
                     uint64_t *bytes, struct err *e);
/* Session id's cold tier: bytes of its blocks' sketches (the summary
 * recall's first stage). */
int store_cold_sketch_bytes(struct store *s, int64_t id, int64_t *bytes, struct err *e);

#endif
