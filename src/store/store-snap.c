/*
 * store-snap.c: KV snapshots, and resuming a session's cache from one.
 *
 * A snapshot holds the K/V rows of the cached tokens, their ids and
 * positions, the last logits and the attention accumulators. It is written
 * to a temporary file, fsynced, renamed to SHA256.kvs in PATH-kv/ and the
 * directory fsynced, all before the transaction that refers to it (the
 * recorder's commit, store-rec.c). The file's name is its content hash, so
 * a damaged file is recognised on load and resume recomputes instead.
 * Files no row refers to (an old snapshot whose unlink a crash prevented)
 * go at the next vacuum (store.c).
 *
 * Resuming reads the session's retained token rows, then loads the
 * snapshot when it matches them (model sha256, token ids and positions, KV
 * type); otherwise it restores the rows and recomputes their K/V.
 */
#include "store/store-int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SNAP_MAGIC "KVSSNAP1"

/* ------------------------------------------------------------------ files */

bool store_is_sha256(const char *sha)
{
	return sha != NULL && strlen(sha) == 64 && strspn(sha, "0123456789abcdef") == 64;
}

/* Path of snapshot sha in s's snapshot directory (allocated); sha is a
 * checked name (store_is_sha256). */
static char *snap_path(const struct store *s, const char *sha)
{
	return xasprintf("%s/%s.kvs", s->snapdir, sha);
}

/* The snapshot directory opened for *at calls, never through a symbolic
 * link (a link would let the store write and delete in another folder);
 * create: make it first when it is missing. Returns the descriptor, or -1
 * with e saying why (KVS_ENOTFOUND: missing and not created). */
static int snap_dir_open(const struct store *s, bool create, struct err *e)
{
	if (create && mkdir(s->snapdir, 0777) != 0 && errno != EEXIST) {
		err_set(e, KVS_EIO, "%s: cannot create the snapshot directory: %s", s->snapdir,
		        strerror(errno));
		return -1;
	}
	int fd = open(s->snapdir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd >= 0)
		return fd;
	int why = errno;
	struct stat sb;
	if (why == ELOOP || (lstat(s->snapdir, &sb) == 0 && S_ISLNK(sb.st_mode)))
		err_set(e, KVS_EARG,
		        "%s: is a symbolic link; snapshots are not written or removed through one",
		        s->snapdir);
	else
		err_set(e, why == ENOENT ? KVS_ENOTFOUND : KVS_EIO, "%s: cannot open: %s", s->snapdir,
		        strerror(why));
	return -1;
}

/* Remove a snapshot file unless a row still refers to it. A name that is
 * not a SHA-256 (a crafted database's "../x") is never a file name. */
void store_snap_unlink_unused(struct store *s, const char *sha)
{
	sqlite3_stmt *st;
	struct err e;
	if (!store_is_sha256(sha))
		return;
	if (store_prepare(s, "SELECT 1 FROM snapshots WHERE sha256 = ?", &st, &e) != KVS_OK)
		return;
	sqlite3_bind_text(st, 1, sha, -1, SQLITE_TRANSIENT);
	bool used = sqlite3_step(st) == SQLITE_ROW;
	sqlite3_finalize(st);
	if (used)
		return;
	int dfd = snap_dir_open(s, false, &e);
	if (dfd < 0)
		return;
	char name[72];
	snprintf(name, sizeof name, "%s.kvs", sha);
	unlinkat(dfd, name, 0);
	close(dfd);
}

/* Remove the temporary files a crash left and the snapshot files no row
 * refers to (store_vacuum); a missing directory has nothing to remove. */
int store_snap_sweep(struct store *s, struct err *e)
{
	int dfd = snap_dir_open(s, false, e);
	if (dfd < 0)
		return e->code == KVS_ENOTFOUND ? KVS_OK : e->code;
	DIR *d = fdopendir(dfd);
	if (d == NULL) {
		close(dfd);
		return err_set(e, KVS_EIO, "%s: cannot read: %s", s->snapdir, strerror(errno));
	}
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);
		if (strncmp(de->d_name, ".tmp-", 5) == 0) {
			unlinkat(dirfd(d), de->d_name, 0);
		} else if (len == 68 && strcmp(de->d_name + 64, ".kvs") == 0) {
			char sha[65];
			memcpy(sha, de->d_name, 64);
			sha[64] = '\0';
			store_snap_unlink_unused(s, sha);
		}
	}
	closedir(d);
	return KVS_OK;
}

/* The fixed part of a snapshot file (native byte order; the magic's
 * version changes when this does). */
struct snap_head {
	char magic[8];    /* SNAP_MAGIC */
	uint32_t kv_type; /* enum engine_kv_type */
	uint32_t n;       /* tokens */
	uint64_t bytes_per_slot;
	uint32_t n_vocab;    /* logits that follow, 0: none */
	uint32_t acc_stride; /* accumulators per token that follow, 0: none */
	char model_sha256[64];
};

/* Write all of buf to fd and into the running hash. */
static int snap_write(int fd, struct sha256 *h, const void *buf, size_t n, const char *path,
                      struct err *e)
{
	const uint8_t *p = buf;
	sha256_update(h, buf, n);
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return err_set(e, KVS_EIO, "%s: write failed: %s", path, strerror(errno));
		p += w;
		n -= (size_t)w;
	}
	return KVS_OK;
}

/* A new temporary file in the directory dfd, opened for writing (its name,
 * ".tmp-...", into name); -1 with errno when none could be made. */
static int snap_tmp_open(int dfd, char name[64])
{
	static unsigned counter;
	struct timespec ts;
	for (int tries = 0; tries < 100; tries++) {
		clock_gettime(CLOCK_REALTIME, &ts);
		snprintf(name, 64, ".tmp-%ld-%u-%ld", (long)getpid(), counter++, (long)ts.tv_nsec);
		int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd >= 0 || errno != EEXIST)
			return fd;
	}
	return -1;
}

/* Write kv's snapshot (model_sha identifies the model); sha gets its name.
 * Every file operation is relative to the directory opened without
 * following a link (snap_dir_open). */
int store_snap_save(struct store *s, struct kv_cache *kv, const char *model_sha, char sha[65],
                    uint64_t *bytes, struct err *e)
{
	struct engine *eng = kv_cache_engine(kv);
	const struct hparams *hp = &engine_model(eng)->hp;
	uint32_t n = kv_cache_n(kv);
	const struct kv_tok *toks = kv_cache_toks(kv);
	const float *logits = kv_cache_logits(kv), *acc = kv_cache_acc(kv);
	struct snap_head h;
	struct sha256 hs;
	uint8_t d[32];
	char name[64], final[72];
	*bytes = 0;
	int dfd = snap_dir_open(s, true, e);
	if (dfd < 0)
		return e->code;
	int fd = snap_tmp_open(dfd, name);
	if (fd < 0) {
		int rc = err_set(e, KVS_EIO, "%s: cannot create a snapshot: %s", s->snapdir,
		                 strerror(errno));
		close(dfd);
		return rc;
	}
	char *tmp = xasprintf("%s/%s", s->snapdir, name);
	memset(&h, 0, sizeof h);
	memcpy(h.magic, SNAP_MAGIC, 8);
	h.kv_type = (uint32_t)engine_kv_type(eng);
	h.n = n;
	h.bytes_per_slot = engine_kv_bytes_per_slot(eng);
	h.n_vocab = logits ? hp->n_vocab : 0;
	h.acc_stride = acc ? hp->n_layer * hp->n_head_kv : 0;
	memcpy(h.model_sha256, model_sha, 64);
	sha256_init(&hs);
	int rc = snap_write(fd, &hs, &h, sizeof h, tmp, e);
	for (uint32_t i = 0; i < n && rc == KVS_OK; i++) {
		int32_t v[3] = { toks[i].token, toks[i].pos, toks[i].orig_pos };
		rc = snap_write(fd, &hs, v, sizeof v, tmp, e);
	}
	uint8_t *row = xmalloc(h.bytes_per_slot);
	for (uint32_t i = 0; i < n && rc == KVS_OK; i++) {
		rc = engine_kv_save(eng, toks[i].slot, row, e);
		if (rc == KVS_OK)
			rc = snap_write(fd, &hs, row, h.bytes_per_slot, tmp, e);
	}
	free(row);
	if (rc == KVS_OK && logits)
		rc = snap_write(fd, &hs, logits, h.n_vocab * sizeof(float), tmp, e);
	if (rc == KVS_OK && acc)
		rc = snap_write(fd, &hs, acc, (size_t)n * h.acc_stride * sizeof(float), tmp, e);
	if (rc == KVS_OK && fsync(fd) != 0)
		rc = err_set(e, KVS_EIO, "%s: fsync failed: %s", tmp, strerror(errno));
	if (close(fd) != 0 && rc == KVS_OK)
		rc = err_set(e, KVS_EIO, "%s: close failed: %s", tmp, strerror(errno));
	if (rc == KVS_OK) {
		sha256_final(&hs, d);
		sha256_hex(d, sha);
		snprintf(final, sizeof final, "%s.kvs", sha);
		if (renameat(dfd, name, dfd, final) != 0)
			rc = err_set(e, KVS_EIO, "%s/%s: rename failed: %s", s->snapdir, final,
			             strerror(errno));
	}
	/* the rename is durable once the directory is */
	if (rc == KVS_OK && fsync(dfd) != 0)
		rc = err_set(e, KVS_EIO, "%s: fsync failed: %s", s->snapdir, strerror(errno));
	if (rc != KVS_OK)
		unlinkat(dfd, name, 0);
	close(dfd);
	*bytes = sizeof h + (uint64_t)n * (12 + h.bytes_per_slot) + h.n_vocab * 4ull +
	        (uint64_t)n * h.acc_stride * 4;
	free(tmp);
	return rc;
}

/* Load snapshot sha into kv, already restored from toks (n): KVS_OK when it
 * matched and was loaded; otherwise why (in why) and nothing changed but
 * possibly some slots' K/V, which a recompute overwrites. */
static int snap_load(struct store *s, const char *sha, const char *model_sha,
                     const struct kv_tok *toks, uint32_t n, struct kv_restore *r,
                     struct kv_cache *kv, char *why, size_t why_cap)
{
	struct engine *eng = kv_cache_engine(kv);
	const struct hparams *hp = &engine_model(eng)->hp;
	char *path, *buf = NULL;
	size_t len = 0;
	struct err e;
	uint8_t d[32];
	char hex[65];
	struct sha256 hs;
	if (!store_is_sha256(sha)) {
		snprintf(why, why_cap, "the database names a snapshot that is not a SHA-256 (ignored)");
		return KVS_EFORMAT;
	}
	path = snap_path(s, sha);
	int rc = file_read_all(path, &buf, &len, &e);
	free(path);
	if (rc != KVS_OK) {
		snprintf(why, why_cap, "snapshot unreadable (%.150s)", e.msg);
		return KVS_ENOTFOUND;
	}
	sha256_init(&hs);
	sha256_update(&hs, buf, len);
	sha256_final(&hs, d);
	sha256_hex(d, hex);
	struct snap_head h;
	rc = KVS_EFORMAT;
	if (strcmp(hex, sha) != 0) {
		snprintf(why, why_cap, "snapshot %.12s is damaged (its content hash differs)", sha);
		goto out;
	}
	if (len < sizeof h) {
		snprintf(why, why_cap, "snapshot %.12s is truncated", sha);
		goto out;
	}
	memcpy(&h, buf, sizeof h);
	uint64_t need = sizeof h + (uint64_t)h.n * (12 + h.bytes_per_slot) + h.n_vocab * 4ull +
	        (uint64_t)h.n * h.acc_stride * 4;
	if (memcmp(h.magic, SNAP_MAGIC, 8) != 0 || need != len) {
		snprintf(why, why_cap, "snapshot %.12s has an unknown format", sha);
		goto out;
	}
	if (memcmp(h.model_sha256, model_sha, 64) != 0) {
		snprintf(why, why_cap, "snapshot was taken with another model file");
		goto out;
	}
	if (h.kv_type != (uint32_t)engine_kv_type(eng) ||
	    h.bytes_per_slot != engine_kv_bytes_per_slot(eng)) {
		snprintf(why, why_cap, "snapshot has another KV cache type");
		goto out;
	}
	if (h.n != n || (h.n_vocab != 0 && h.n_vocab != hp->n_vocab) ||
	    (h.acc_stride != 0 && h.acc_stride != hp->n_layer * hp->n_head_kv)) {
		snprintf(why, why_cap, "snapshot holds %u tokens, the session %u", h.n, n);
		goto out;
	}
	const uint8_t *p = (const uint8_t *)buf + sizeof h;
	for (uint32_t i = 0; i < n; i++, p += 12) {
		int32_t v[3];
		memcpy(v, p, sizeof v);
		if (v[0] != toks[i].token || v[1] != toks[i].pos || v[2] != toks[i].orig_pos) {
			snprintf(why, why_cap,
			         "snapshot differs from the saved tokens at cache index %u (older than the "
			         "last commit)",
			         i);
			goto out;
		}
	}
	const uint8_t *rows = p;
	p += (size_t)n * h.bytes_per_slot;
	r->logits = h.n_vocab ? (const float *)p : NULL; /* buf is malloc-aligned; floats at 4k */
	p += h.n_vocab * 4ull;
	r->acc = h.acc_stride ? (const float *)p : NULL;
	rc = kv_cache_restore(kv, r, &e);
	if (rc == KVS_OK)
		rc = kv_cache_load_rows(kv, rows, &e);
	if (rc != KVS_OK)
		snprintf(why, why_cap, "%.150s", e.msg);
out:
	r->logits = NULL;
	r->acc = NULL;
	free(buf);
	return rc;
}

/* ---------------------------------------------------------------- resuming */

int store_resume(struct store *s, int64_t id, struct kv_cache *kv, const char *model_sha256,
                 struct store_resume_info *info, struct err *e)
{
	sqlite3_stmt *st;
	memset(info, 0, sizeof *info);
	int rc = store_session_row(s,
	                           "SELECT epoch, next_pos, kv_turn, n_seen, n_evicted, n_evictions, "
	                           "model_sha256, (SELECT sha256 FROM snapshots WHERE session_id = ?1 "
	                           "ORDER BY turn DESC LIMIT 1) FROM sessions WHERE id = ?1",
	                           id, &st, e);
	if (rc != KVS_OK)
		return rc;
	int64_t epoch = sqlite3_column_int64(st, 0);
	struct kv_restore kr = { 0 };
	kr.next_pos = (int32_t)sqlite3_column_int64(st, 1);
	kr.turn = (uint32_t)sqlite3_column_int64(st, 2);
	kr.n_seen = (uint64_t)sqlite3_column_int64(st, 3);
	kr.n_evicted = (uint64_t)sqlite3_column_int64(st, 4);
	kr.n_evictions = (uint32_t)sqlite3_column_int64(st, 5);
	char *sess_sha = store_col_str(st, 6), *snap_sha = store_col_str(st, 7);
	sqlite3_finalize(st);
	if (sess_sha == NULL || model_sha256 == NULL || strcmp(sess_sha, model_sha256) != 0) {
		rc = err_set(e, KVS_EARG,
		             "session %lld was recorded with model sha256 %.16s..., the model loaded "
		             "now has %.16s...; resume it with the same model file (--model)",
		             (long long)id, store_is_sha256(sess_sha) ? sess_sha : "?",
		             model_sha256 ? model_sha256 : "?");
		free(sess_sha);
		free(snap_sha);
		return rc;
	}
	free(sess_sha);
	/* the retained tokens */
	struct kv_tok *toks = NULL;
	size_t n = 0, cap = 0;
	rc = store_prepare(s,
	                   "SELECT token, orig_pos, pos, kv_turn, role, flags, surprisal, entropy, "
	                   "score FROM tokens WHERE session_id = ? AND epoch = ? AND kept "
	                   "ORDER BY orig_pos",
	                   &st, e);
	if (rc == KVS_OK) {
		sqlite3_bind_int64(st, 1, id);
		sqlite3_bind_int64(st, 2, epoch);
		int r;
		while ((r = sqlite3_step(st)) == SQLITE_ROW) {
			if (n == cap) {
				cap = cap ? 2 * cap : 256;
				toks = xreallocarray(toks, cap, sizeof *toks);
			}
			struct kv_tok *t = &toks[n++];
			memset(t, 0, sizeof *t);
			t->token = (int32_t)sqlite3_column_int64(st, 0);
			t->orig_pos = (int32_t)sqlite3_column_int64(st, 1);
			t->pos = (int32_t)sqlite3_column_int64(st, 2);
			t->turn = (uint32_t)sqlite3_column_int64(st, 3);
			t->role = (uint8_t)sqlite3_column_int64(st, 4);
			t->flags = (uint8_t)sqlite3_column_int64(st, 5);
			t->surprisal = sqlite3_column_type(st, 6) == SQLITE_NULL
			        ? NAN
			        : (float)sqlite3_column_double(st, 6);
			t->entropy = sqlite3_column_type(st, 7) == SQLITE_NULL
			        ? NAN
			        : (float)sqlite3_column_double(st, 7);
			t->score = sqlite3_column_type(st, 8) == SQLITE_NULL
			        ? NAN
			        : (float)sqlite3_column_double(st, 8);
		}
		if (r != SQLITE_DONE)
			rc = store_fail(s, r, "reading the retained tokens", e);
		sqlite3_finalize(st);
	}
	kr.toks = toks;
	kr.n = (uint32_t)n;
	if (rc == KVS_OK) {
		info->n_tokens = (uint32_t)n;
		int sr = KVS_ENOTFOUND;
		if (snap_sha == NULL)
			snprintf(info->why, sizeof info->why, "no snapshot was saved");
		else
			sr = snap_load(s, snap_sha, model_sha256, toks, (uint32_t)n, &kr, kv, info->why,
			               sizeof info->why);
		info->from_snapshot = sr == KVS_OK;
		if (sr != KVS_OK) {
			rc = kv_cache_restore(kv, &kr, e);
			if (rc == KVS_OK)
				rc = kv_cache_recompute(kv, e);
			if (rc != KVS_OK)
				err_prefix(e, "session %lld", (long long)id);
		}
	}
	free(toks);
	free(snap_sha);
	return rc;
}
