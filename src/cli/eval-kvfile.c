/*
 * eval-kvfile.c: the prompt cache of `kvscope eval sparse --prompt-cache
 * DIR`. A long prompt's dense prefill is most of a 32k row's cost (about
 * 1000 s of CPU on two cores) and does not depend on the sparse modes
 * measured after it, so a run can keep it: one file per (length, seed)
 * holding the raw K/V rows of slots 0..len-1 (engine_kv_save's bytes) as
 * they are right after the prefill, at true positions, before the
 * position cap. A later run loads the rows into the same slots instead of
 * prefilling.
 *
 * A file is used only when everything that made it matches this run: the
 * model file's SHA-256, the KV cache's element type and its bytes per
 * slot, and the prompt's token ids themselves (so another tokenizer, seed
 * or text generator can never be served a stale cache). Anything else,
 * a damaged or truncated file included, is a miss: the prompt is
 * prefilled and the file written anew (to a temporary name, then renamed,
 * so a run killed while writing never leaves a file that looks whole).
 *
 * Layout (little-endian, as the machine writes it; the magic's version
 * changes with the layout): "KVSPC01\n", the model's hex SHA-256 (64
 * bytes), u32 kv type, u32 len, u64 bytes per slot, len x i32 token ids,
 * len x bytes-per-slot rows.
 */
#include "cli/eval.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KVFILE_MAGIC "KVSPC01\n"
#define KVFILE_MAGIC_LEN 8

struct kvfile_head {
	char magic[KVFILE_MAGIC_LEN];
	char sha[64];
	uint32_t kv_type, len;
	uint64_t row_bytes;
};

static void kvfile_head_make(struct kvfile_head *h, const struct engine *eng, const char *sha,
                             uint32_t len)
{
	memset(h, 0, sizeof *h);
	memcpy(h->magic, KVFILE_MAGIC, KVFILE_MAGIC_LEN);
	memcpy(h->sha, sha, 64);
	h->kv_type = (uint32_t)engine_kv_type(eng);
	h->len = len;
	h->row_bytes = engine_kv_bytes_per_slot(eng);
}

char *eval_kvfile_path(const char *dir, uint32_t len, uint64_t seed)
{
	size_t n = strlen(dir) + 64;
	char *p = xmalloc(n);
	snprintf(p, n, "%s/sparse-%u-seed%llu.kvc", dir, len, (unsigned long long)seed);
	return p;
}

/* Read the file's header and ids; true when they match want and ids. */
static bool kvfile_matches(FILE *fp, const struct kvfile_head *want, const int32_t *ids)
{
	struct kvfile_head got;
	if (fread(&got, sizeof got, 1, fp) != 1 || memcmp(&got, want, sizeof got) != 0)
		return false;
	int32_t *have = xmallocarray(want->len, sizeof(int32_t));
	bool same = fread(have, sizeof(int32_t), want->len, fp) == want->len &&
	        memcmp(have, ids, (size_t)want->len * sizeof(int32_t)) == 0;
	free(have);
	return same;
}

int eval_kvfile_load(struct engine *eng, const char *path, const char *sha, const int32_t *ids,
                     uint32_t len, bool *hit, struct err *e)
{
	*hit = false;
	FILE *fp = fopen(path, "rb");
	if (fp == NULL)
		return errno == ENOENT
		        ? KVS_OK
		        : err_set(e, KVS_EIO, "--prompt-cache: cannot read %s: %s", path, strerror(errno));
	struct kvfile_head want;
	kvfile_head_make(&want, eng, sha, len);
	int rc = KVS_OK;
	if (kvfile_matches(fp, &want, ids)) {
		uint8_t *row = xmalloc(want.row_bytes);
		uint32_t s = 0;
		for (; s < len && rc == KVS_OK; s++) {
			if (fread(row, want.row_bytes, 1, fp) != 1)
				break;
			rc = engine_kv_load(eng, s, (int32_t)s, row, e);
		}
		free(row);
		*hit = rc == KVS_OK && s == len;
		if (rc == KVS_OK && !*hit) /* truncated: whatever was loaded is prefilled over */
			engine_kv_clear(eng);
	}
	fclose(fp);
	return rc;
}

/* Write the header, ids and rows to fp; false on a failed write. */
static bool kvfile_write(FILE *fp, const struct engine *eng, const struct kvfile_head *h,
                         const int32_t *ids, struct err *e, int *rc)
{
	if (fwrite(h, sizeof *h, 1, fp) != 1 || fwrite(ids, sizeof(int32_t), h->len, fp) != h->len)
		return false;
	uint8_t *row = xmalloc(h->row_bytes);
	bool ok = true;
	for (uint32_t s = 0; s < h->len && ok; s++) {
		*rc = engine_kv_save(eng, s, row, e);
		ok = *rc == KVS_OK && fwrite(row, h->row_bytes, 1, fp) == 1;
	}
	free(row);
	return ok;
}

int eval_kvfile_save(const struct engine *eng, const char *path, const char *sha,
                     const int32_t *ids, uint32_t len, struct err *e)
{
	size_t n = strlen(path) + 8;
	char *tmp = xmalloc(n);
	snprintf(tmp, n, "%s.tmp", path);
	FILE *fp = fopen(tmp, "wb");
	int rc = KVS_OK;
	if (fp == NULL) {
		rc = err_set(e, KVS_EIO, "--prompt-cache: cannot write %s: %s", tmp, strerror(errno));
		free(tmp);
		return rc;
	}
	struct kvfile_head h;
	kvfile_head_make(&h, eng, sha, len);
	bool ok = kvfile_write(fp, eng, &h, ids, e, &rc);
	ok = fclose(fp) == 0 && ok;
	if (ok && rename(tmp, path) != 0)
		ok = false;
	if (!ok) {
		if (rc == KVS_OK)
			rc = err_set(e, KVS_EIO, "--prompt-cache: writing %s failed: %s", path,
			             strerror(errno));
		unlink(tmp);
	}
	free(tmp);
	return rc;
}
