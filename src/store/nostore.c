/*
 * nostore.c: the store when kvscope is built without SQLite (configure
 * --without-sqlite): every call that would touch a database fails with one
 * line saying so, so callers need no #ifdef.
 */
#include "store/store.h"

#include <stdlib.h>
#include <string.h>

#define NOSTORE(e)                                                                     \
	err_set(e, KVS_EUNSUPPORTED,                                                       \
	        "sessions are not available: kvscope was built without SQLite (configure " \
	        "--with-sqlite)")

bool store_available(void)
{
	return false;
}

char *store_default_path(void)
{
	return file_xdg_path("XDG_DATA_HOME", ".local/share", "kvscope/memory.db");
}

int store_open(struct store **out, const char *path, enum store_mode mode, struct err *e)
{
	(void)path, (void)mode;
	*out = NULL;
	return NOSTORE(e);
}

/* Nothing below is reachable without a store from store_open. */
void store_close(struct store *s)
{
	(void)s;
}
const char *store_path(const struct store *s)
{
	(void)s;
	return "";
}
void store_set_busy_timeout(struct store *s, int ms)
{
	(void)s, (void)ms;
}
int store_schema_version(const struct store *s)
{
	(void)s;
	return 0;
}
int store_schema_latest(void)
{
	return 0;
}
void store_session_free(struct store_session *s)
{
	(void)s;
}

int store_session_create(struct store *s, const struct store_session *in, int64_t *id,
                         struct err *e)
{
	(void)s, (void)in, (void)id;
	return NOSTORE(e);
}

int store_session_find(struct store *s, const char *key, int64_t *id, struct err *e)
{
	(void)s, (void)key, (void)id;
	return NOSTORE(e);
}

int store_session_get(struct store *s, int64_t id, struct store_session *out, struct err *e)
{
	(void)s, (void)id, (void)out;
	return NOSTORE(e);
}

int store_session_list(struct store *s, struct store_session **out, size_t *n, struct err *e)
{
	(void)s;
	*out = NULL;
	*n = 0;
	return NOSTORE(e);
}

int store_session_set_title(struct store *s, int64_t id, const char *title, struct err *e)
{
	(void)s, (void)id, (void)title;
	return NOSTORE(e);
}

int store_session_delete(struct store *s, int64_t id, struct err *e)
{
	(void)s, (void)id;
	return NOSTORE(e);
}

int store_check(struct store *s, struct err *e)
{
	(void)s;
	return NOSTORE(e);
}

int store_vacuum(struct store *s, struct err *e)
{
	(void)s;
	return NOSTORE(e);
}

int store_model_sha256(struct store *s, const char *path, char out[65], struct err *e)
{
	(void)s, (void)path, (void)out;
	return NOSTORE(e);
}

int store_format_parse(const char *name, enum store_format *out, struct err *e)
{
	(void)name, (void)out;
	return NOSTORE(e);
}

int store_export(struct store *s, int64_t id, enum store_format fmt, const struct vocab *v,
                 FILE *fp, struct err *e)
{
	(void)s, (void)id, (void)fmt, (void)v, (void)fp;
	return NOSTORE(e);
}

int store_rec_open(struct store_rec **out, struct store *s, int64_t id, struct kv_cache *kv,
                   bool snapshots, struct err *e)
{
	(void)s, (void)id, (void)kv, (void)snapshots;
	*out = NULL;
	return NOSTORE(e);
}

void store_rec_free(struct store_rec *r)
{
	(void)r;
}
void store_rec_event(struct store_rec *r, const struct kv_event *ev)
{
	(void)r, (void)ev;
}
void store_rec_turn(struct store_rec *r, const struct store_turn *t)
{
	(void)r, (void)t;
}
uint32_t store_rec_pending(const struct store_rec *r)
{
	(void)r;
	return 0;
}
uint32_t store_rec_n_turns(const struct store_rec *r)
{
	(void)r;
	return 0;
}

int store_rec_commit(struct store_rec *r, struct err *e)
{
	(void)r;
	return NOSTORE(e);
}

int store_resume(struct store *s, int64_t id, struct kv_cache *kv, const char *model_sha256,
                 struct store_resume_info *info, struct err *e)
{
	(void)s, (void)id, (void)kv, (void)model_sha256, (void)info;
	return NOSTORE(e);
}

int store_squeeze_put(struct store *s, int64_t id, const char *model_sha256, const char *spec,
                      const struct engine_squeeze_info *info, const void *blob, size_t len,
                      struct err *e)
{
	(void)s, (void)id, (void)model_sha256, (void)spec, (void)info, (void)blob, (void)len;
	return NOSTORE(e);
}

int store_squeeze_get(struct store *s, int64_t id, const char *model_sha256, void **blob,
                      size_t *len, struct err *e)
{
	(void)s, (void)id, (void)model_sha256;
	*blob = NULL;
	*len = 0;
	return NOSTORE(e);
}

int store_turn_text(struct store *s, int64_t id, uint32_t i, char **user, char **reply,
                    struct err *e)
{
	(void)s, (void)id, (void)i;
	*user = *reply = NULL;
	return NOSTORE(e);
}

/* The cold tier: nothing to open without a store; the cache's listener is
 * never set (store_cold_open gives nothing to set it to). */
void store_cold_open(struct store_cold **out, struct kv_cache *kv, const struct vocab *v,
                     const struct store_cold_config *cfg)
{
	(void)kv, (void)v, (void)cfg;
	*out = NULL;
}
void store_cold_free(struct store_cold *c)
{
	(void)c;
}
int store_cold_attach(struct store_cold *c, struct store *s, int64_t id, const char *model_sha,
                      struct err *e)
{
	(void)c, (void)s, (void)id, (void)model_sha;
	return NOSTORE(e);
}
bool store_cold_attached(const struct store_cold *c)
{
	(void)c;
	return false;
}
void store_cold_evicted(void *ud, const struct kv_tok *toks, uint32_t n, const void *raw,
                        uint64_t bytes_per_tok)
{
	(void)ud, (void)toks, (void)n, (void)raw, (void)bytes_per_tok;
}
uint64_t store_cold_pending(const struct store_cold *c)
{
	(void)c;
	return 0;
}
int store_cold_flush(struct store_cold *c, uint32_t turn, struct store_cold_flush_info *info,
                     struct err *e)
{
	(void)c, (void)turn, (void)e;
	memset(info, 0, sizeof *info);
	return KVS_OK;
}
void store_cold_stop(struct store_cold *c)
{
	(void)c;
}
bool store_cold_stopped(const struct store_cold *c)
{
	(void)c;
	return true;
}
int store_cold_recall(struct store_cold *c, const char *text, uint32_t budget,
                      struct store_cold_hit **hits, size_t *n_hits, struct err *e)
{
	(void)c, (void)text, (void)budget, (void)e;
	*hits = NULL;
	*n_hits = 0;
	return KVS_OK;
}
bool store_cold_has_blocks(struct store_cold *c)
{
	(void)c;
	return false;
}
int store_cold_recall_by(struct store_cold *c, const struct store_cold_query *query,
                         uint32_t budget, struct store_cold_hit **hits, size_t *n_hits,
                         struct err *e)
{
	(void)c, (void)query, (void)budget, (void)e;
	*hits = NULL;
	*n_hits = 0;
	return KVS_OK;
}
int store_cold_place(struct store_cold *c, struct err *e)
{
	(void)c, (void)e;
	return KVS_OK;
}
int store_recall_count(struct store *s, int64_t id, uint32_t *events, uint64_t *tokens,
                       struct err *e)
{
	(void)s, (void)id;
	*events = 0;
	*tokens = 0;
	return NOSTORE(e);
}
int store_cold_summary_top(struct store_cold *c, const float *q, uint32_t n_q, uint32_t k,
                           uint32_t cands, uint32_t mem_cands, int64_t *ids, double *scores,
                           size_t *n, struct err *e)
{
	(void)c, (void)q, (void)n_q, (void)k, (void)cands, (void)mem_cands, (void)ids, (void)scores,
	        (void)e;
	*n = 0;
	return KVS_OK;
}
size_t store_cold_mem_bytes(const struct store_cold *c)
{
	(void)c;
	return 0;
}
void store_cold_rank_stats(const struct store_cold *c, struct store_cold_rank_stats *out)
{
	(void)c;
	memset(out, 0, sizeof *out);
}
int store_cold_count(struct store *s, int64_t id, uint32_t *blocks, uint64_t *tokens,
                     uint64_t *bytes, struct err *e)
{
	(void)s, (void)id;
	*blocks = 0;
	*tokens = *bytes = 0;
	return NOSTORE(e);
}
int store_cold_sketch_bytes(struct store *s, int64_t id, int64_t *bytes, struct err *e)
{
	(void)s, (void)id;
	*bytes = 0;
	return NOSTORE(e);
}
