/* file.c: whole-file reads with errors that name the path. */
#include "base.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

char *file_xdg_path(const char *var, const char *fallback, const char *rel)
{
	const char *dir = getenv(var), *home = getenv("HOME");

	if (dir != NULL && dir[0] == '/')
		return xasprintf("%s/%s", dir, rel);
	return xasprintf("%s/%s/%s", home != NULL && home[0] != '\0' ? home : ".", fallback, rel);
}

int file_mkdirs(const char *dir, unsigned mode)
{
	char *d = xstrdup(dir);
	int rc = 0;

	for (char *p = d + 1; rc == 0; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char c = *p;
		*p = '\0';
		if (mkdir(d, (mode_t)mode) != 0 && errno != EEXIST)
			rc = -1;
		*p = c;
		if (c == '\0')
			break;
	}
	free(d);
	return rc;
}

int file_read_all(const char *path, char **out, size_t *len, struct err *e)
{
	FILE *fp;
	char *buf = NULL;
	size_t cap = 0, n = 0, got;

	fp = fopen(path, "rb");
	if (fp == NULL)
		return err_set(e, KVS_EIO, "%s: cannot open: %s", path, strerror(errno));
	for (;;) {
		if (cap - n < 65536) {
			cap = cap ? cap * 2 : 65536;
			buf = xrealloc(buf, cap + 1);
		}
		got = fread(buf + n, 1, cap - n, fp);
		n += got;
		if (got == 0)
			break;
	}
	if (ferror(fp)) {
		int saved = errno;
		fclose(fp);
		free(buf);
		return err_set(e, KVS_EIO, "%s: read failed: %s", path, strerror(saved));
	}
	fclose(fp);
	if (buf == NULL)
		buf = xmalloc(1);
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return KVS_OK;
}

int file_sha256(const char *path, char out[65], struct err *e)
{
	FILE *fp = fopen(path, "rb");
	struct sha256 s;
	uint8_t d[32];
	size_t got;

	if (fp == NULL)
		return err_set(e, KVS_EIO, "%s: cannot open: %s", path, strerror(errno));
	uint8_t *buf = xmalloc(1 << 20);
	sha256_init(&s);
	while ((got = fread(buf, 1, 1 << 20, fp)) > 0)
		sha256_update(&s, buf, got);
	int bad = ferror(fp), saved = errno;
	fclose(fp);
	free(buf);
	if (bad)
		return err_set(e, KVS_EIO, "%s: read failed: %s", path, strerror(saved));
	sha256_final(&s, d);
	sha256_hex(d, out);
	return KVS_OK;
}
