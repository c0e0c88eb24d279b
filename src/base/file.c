/*
 * file.c: whole-file reads with errors that name the path.
 *
 * Every file kvscope reads on a user's say-so (models, prompts, plugins,
 * corpora) is opened through file_open_regular: without blocking, so a FIFO
 * cannot hang the program, and refused unless it is a regular file, so
 * /dev/zero or a directory gets one line instead of an unbounded read.
 * Whole-file reads have a size limit (FILE_READ_MAX unless the caller names
 * a smaller one).
 */
#include "base.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

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

char *file_mkdtemp(const char *name, const char *what, struct err *e)
{
	const char *base = getenv("TMPDIR");
	char *dir = xasprintf("%s/%s-XXXXXX", base && base[0] ? base : "/tmp", name);
	if (mkdtemp(dir) == NULL) {
		err_set(e, KVS_EIO, "%s: cannot create a temporary folder %s: %s", what, dir,
		        strerror(errno));
		free(dir);
		return NULL;
	}
	return dir;
}

/* The kind of a non-regular file, for the refusal message. */
static const char *file_kind(mode_t m)
{
	return S_ISFIFO(m)    ? "a FIFO"
	        : S_ISDIR(m)  ? "a directory"
	        : S_ISCHR(m)  ? "a character device"
	        : S_ISBLK(m)  ? "a block device"
	        : S_ISSOCK(m) ? "a socket"
	                      : "a special file";
}

int file_open_regular(const char *path, const char *what, int *fd_out, uint64_t *size,
                      struct err *e)
{
	struct stat st;
	int fd, flags;

	*fd_out = -1;

	/* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0)
		return err_set(e, errno == ENOENT ? KVS_ENOTFOUND : KVS_EIO, "%s: cannot open: %s", path,
		               strerror(errno));
	if (fstat(fd, &st) != 0) {
		int rc = err_set(e, KVS_EIO, "%s: %s", path, strerror(errno));
		close(fd);
		return rc;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return err_set(e, KVS_EARG, "%s: is %s, not a regular file (expected %s)", path,
		               file_kind(st.st_mode), what);
	}
	flags = fcntl(fd, F_GETFL);
	if (flags >= 0)
		(void)fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
	if (size != NULL)
		*size = (uint64_t)st.st_size;
	*fd_out = fd;
	return KVS_OK;
}

/* Read fd to its end, at most max bytes (size: a first guess of the length);
 * the name is for messages. Closes fd unless it is standard input. */
static int file_read_fd(int fd, const char *path, size_t max, size_t size, char **out, size_t *len,
                        struct err *e)
{
	size_t cap = (size > max ? max : size) + 1, n = 0;
	char *buf = xmalloc(cap + 1);
	int rc = KVS_OK;

	/* The size may change while we read (a growing log, a pipe): read up to
	 * max + 1 bytes whatever fstat said, and refuse what outgrew the limit. */
	for (;;) {
		if (n == cap) {
			if (cap > max) {
				rc = err_set(e, KVS_EARG,
				             "%s: more than %zu bytes, expected at most that "
				             "for a file read whole",
				             path, max);
				break;
			}
			cap = cap > (max + 1) / 2 ? max + 1 : cap * 2;
			buf = xrealloc(buf, cap + 1);
		}
		ssize_t got = read(fd, buf + n, cap - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			rc = err_set(e, KVS_EIO, "%s: read failed: %s", path, strerror(errno));
			break;
		}
		if (got == 0)
			break;
		n += (size_t)got;
	}
	if (fd != STDIN_FILENO)
		close(fd);
	if (rc != KVS_OK) {
		free(buf);
		return rc;
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return KVS_OK;
}

int file_read_max(const char *path, size_t max, char **out, size_t *len, struct err *e)
{
	uint64_t size;
	int fd, rc;

	*out = NULL;
	*len = 0;
	if (strcmp(path, "-") == 0)
		return file_read_fd(STDIN_FILENO, "standard input", max, 65536, out, len, e);
	rc = file_open_regular(path, "a text file", &fd, &size, e);
	if (rc == KVS_ENOTFOUND)
		e->code = rc = KVS_EIO; /* what callers (and the CLI's exit status) expect */
	if (rc != KVS_OK)
		return rc;
	if (size > max) {
		close(fd);
		return err_set(e, KVS_EARG, "%s: %llu bytes, expected at most %zu for a file read whole",
		               path, (unsigned long long)size, max);
	}
	return file_read_fd(fd, path, max, (size_t)size, out, len, e);
}

int file_read_all(const char *path, char **out, size_t *len, struct err *e)
{
	return file_read_max(path, FILE_READ_MAX, out, len, e);
}

int file_sha256(const char *path, char out[65], struct err *e)
{
	struct sha256 s;
	uint8_t d[32];
	size_t got;
	int fd, rc = file_open_regular(path, "a file to hash", &fd, NULL, e);

	if (rc != KVS_OK)
		return rc;
	FILE *fp = fdopen(fd, "rb");
	if (fp == NULL) {
		rc = err_set(e, KVS_EIO, "%s: %s", path, strerror(errno));
		close(fd);
		return rc;
	}
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
