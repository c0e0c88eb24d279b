/*
 * store-squeeze.c: Squeezed Attention's clusters kept with a session (the
 * squeeze table, 004-squeeze.sql), so that resuming a session with a pinned
 * document installs them instead of clustering its keys again. One row per
 * session, the newest clustering; the bytes are the engine's
 * (engine_squeeze_save), which checks them again when it loads them. Rows
 * made by another model (by sha256) are refused here, with both hashes.
 */
#include "store/store-int.h"

#include <stdlib.h>
#include <string.h>

int store_squeeze_put(struct store *s, int64_t id, const char *model_sha256, const char *spec,
                      const struct engine_squeeze_info *info, const void *blob, size_t len,
                      struct err *e)
{
	sqlite3_stmt *st;
	int rc =
	        store_prepare(s,
	                      "INSERT OR REPLACE INTO squeeze (session_id, model_sha256, spec, n_keys, "
	                      "n_fine, n_coarse, created, blob) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
	                      &st, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_text(st, 2, model_sha256 ? model_sha256 : "", -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 3, spec ? spec : "", -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 4, info->n_keys);
	sqlite3_bind_int64(st, 5, info->n_fine);
	sqlite3_bind_int64(st, 6, info->n_coarse);
	sqlite3_bind_double(st, 7, store_now());
	sqlite3_bind_blob64(st, 8, blob, len, SQLITE_TRANSIENT);
	int r = sqlite3_step(st);
	sqlite3_finalize(st);
	return r == SQLITE_DONE ? KVS_OK : store_fail(s, r, "saving the document's clusters", e);
}

int store_squeeze_get(struct store *s, int64_t id, const char *model_sha256, void **blob,
                      size_t *len, struct err *e)
{
	sqlite3_stmt *st;
	*blob = NULL;
	*len = 0;
	int rc =
	        store_prepare(s, "SELECT model_sha256, blob FROM squeeze WHERE session_id = ?", &st, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_bind_int64(st, 1, id);
	int r = sqlite3_step(st);
	if (r == SQLITE_DONE) {
		rc = err_set(e, KVS_ENOTFOUND, "session %lld has no stored clusters", (long long)id);
	} else if (r != SQLITE_ROW) {
		rc = store_fail(s, r, "reading the document's clusters", e);
	} else {
		const char *sha = (const char *)sqlite3_column_text(st, 0);
		if (sha == NULL || model_sha256 == NULL || strcmp(sha, model_sha256) != 0) {
			rc = err_set(e, KVS_EFORMAT,
			             "stored clusters of session %lld were made by model %.12s, this model "
			             "is %.12s: refused",
			             (long long)id, sha ? sha : "?", model_sha256 ? model_sha256 : "?");
		} else {
			size_t n = (size_t)sqlite3_column_bytes(st, 1);
			*blob = xmalloc(n ? n : 1);
			if (n > 0)
				memcpy(*blob, sqlite3_column_blob(st, 1), n);
			*len = n;
		}
	}
	sqlite3_finalize(st);
	return rc;
}
