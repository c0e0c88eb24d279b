/*
 * replay.c: main() for fuzz targets built without libFuzzer.
 *
 * `fuzz-NAME FILE|DIR...` feeds every file (directories: every regular file
 * in them, in name order) to LLVMFuzzerTestOneInput, each in a buffer of
 * exactly its size so a sanitizer build catches over-reads as libFuzzer
 * would. It prints the number of inputs run; a crash is the failure signal.
 */
#include "base/base.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Run one file; returns false if it cannot be read. */
static bool replay_file(const char *path)
{
	struct err e;
	char *buf, *exact;
	size_t n;

	if (file_read_all(path, &buf, &n, &e) != KVS_OK) {
		fprintf(stderr, "replay: %s\n", e.msg);
		return false;
	}
	exact = xmalloc(n ? n : 1);
	memcpy(exact, buf, n);
	free(buf);
	LLVMFuzzerTestOneInput((const uint8_t *)exact, n);
	free(exact);
	return true;
}

static int replay_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Run every regular file in dir, sorted by name; returns the count or -1. */
static long replay_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char **names = NULL;
	size_t n = 0;
	long done = 0;

	if (d == NULL) {
		perror(dir);
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		names = xreallocarray(names, n + 1, sizeof *names);
		names[n++] = xasprintf("%s/%s", dir, de->d_name);
	}
	closedir(d);
	qsort(names, n, sizeof *names, replay_cmp);
	for (size_t i = 0; i < n; i++) {
		struct stat st;
		if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
			if (!replay_file(names[i]))
				done = -1;
			else if (done >= 0)
				done++;
		}
		free(names[i]);
	}
	free(names);
	return done;
}

int main(int argc, char **argv)
{
	long total = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
		return 2;
	}
	for (int i = 1; i < argc; i++) {
		struct stat st;
		long n;
		if (stat(argv[i], &st) != 0) {
			perror(argv[i]);
			return 2;
		}
		n = S_ISDIR(st.st_mode) ? replay_dir(argv[i]) : replay_file(argv[i]) ? 1 : -1;
		if (n < 0)
			return 2;
		total += n;
	}
	printf("replayed %ld inputs\n", total);
	return 0;
}
