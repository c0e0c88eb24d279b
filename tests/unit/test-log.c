/*
 * test-log.c: the log's capture (src/base/log.c), which keeps lines while a
 * full-screen program owns the terminal.
 *
 *   - without a capture a line goes to stderr at once, prefixed
 *     "kvscope: LEVEL: "; lines under the level are dropped either way;
 *   - with one, nothing reaches stderr; log_capture_next hands the lines
 *     out in order, each once, with its level; log_capture_stop writes
 *     every kept line (handed out or not) to stderr and ends the capture;
 *   - lines from several threads are all kept, each thread's in its order;
 *   - past 256 lines the rest are counted and the count is said at stop;
 *     a line longer than 1,023 bytes ends in "...".
 * stderr is pointed at a temporary file for the checks and read back.
 */
#include "base/base.h"
#include "tests/unit/test.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static FILE *err_file;
static int saved_err = -1;

/* Point stderr at a fresh temporary file. */
static void err_begin(void)
{
	fflush(stderr);
	err_file = tmpfile();
	T_CHECK(err_file != NULL, "tmpfile failed");
	saved_err = dup(2);
	dup2(fileno(err_file), 2);
}

/* Give stderr back; what was written to it (caller frees). */
static char *err_end(void)
{
	long n;
	char *s;

	fflush(stderr);
	dup2(saved_err, 2);
	close(saved_err);
	n = ftell(err_file);
	s = xmalloc((size_t)n + 1);
	rewind(err_file);
	T_EQ_INT(fread(s, 1, (size_t)n, err_file), n);
	s[n] = '\0';
	fclose(err_file);
	return s;
}

static void test_plain(void)
{
	char *out;

	err_begin();
	log_warn("disk %d%% full", 93);
	log_info("not shown at the default level");
	log_error("bad");
	out = err_end();
	T_EQ_STR(out, "kvscope: warning: disk 93% full\nkvscope: error: bad\n");
	free(out);
}

static void test_capture(void)
{
	enum log_level level = LOG_QUIET;
	char *line, *out;

	err_begin();
	log_capture_start();
	log_warn("first %s", "one");
	log_info("dropped: under the level");
	log_error("second");
	out = err_end();
	T_EQ_STR(out, ""); /* nothing over the screen */
	free(out);

	line = log_capture_next(&level);
	T_EQ_STR(line ? line : "(none)", "first one");
	T_EQ_INT(level, LOG_WARN);
	free(line);
	line = log_capture_next(&level);
	T_EQ_STR(line ? line : "(none)", "second");
	T_EQ_INT(level, LOG_ERROR);
	free(line);
	T_CHECK(log_capture_next(NULL) == NULL, "a line handed out twice");
	log_warn("third");
	line = log_capture_next(NULL);
	T_EQ_STR(line ? line : "(none)", "third");
	free(line);

	err_begin();
	log_capture_stop();
	out = err_end();
	T_EQ_STR(out, "kvscope: warning: first one\nkvscope: error: second\nkvscope: warning: third\n");
	free(out);
	/* the capture is over: straight to stderr again, nothing kept */
	err_begin();
	log_warn("after");
	out = err_end();
	T_EQ_STR(out, "kvscope: warning: after\n");
	free(out);
	T_CHECK(log_capture_next(NULL) == NULL, "a line kept after the capture ended");
}

/* 100 lines from each of two threads, numbered. */
static void *logger(void *arg)
{
	int id = *(int *)arg;
	for (int i = 0; i < 100; i++)
		log_warn("t%d %d", id, i);
	return NULL;
}

static void test_threads(void)
{
	pthread_t th[2];
	int ids[2] = { 0, 1 }, next[2] = { 0, 0 };
	char *line, *out;

	log_capture_start();
	for (int i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, logger, &ids[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	while ((line = log_capture_next(NULL)) != NULL) {
		int id, k;
		T_CHECK(sscanf(line, "t%d %d", &id, &k) == 2 && id >= 0 && id < 2, "line '%s'", line);
		if (id >= 0 && id < 2) {
			T_EQ_INT(k, next[id]); /* each thread's lines in its order */
			next[id] = k + 1;
		}
		free(line);
	}
	T_EQ_INT(next[0], 100);
	T_EQ_INT(next[1], 100);
	err_begin();
	log_capture_stop();
	out = err_end();
	size_t n = 0;
	for (const char *p = out; (p = strchr(p, '\n')) != NULL; p++)
		n++;
	T_EQ_INT(n, 200);
	free(out);
}

static void test_limits(void)
{
	char big[2000], *line, *out;

	log_capture_start();
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	log_warn("%s", big);
	line = log_capture_next(NULL);
	T_EQ_INT(line ? strlen(line) : 0, 1023);
	T_CHECK(line && strcmp(line + 1020, "...") == 0, "a cut line does not end in ...");
	free(line);
	for (int i = 1; i < 300; i++)
		log_warn("line %d", i);
	err_begin();
	log_capture_stop();
	out = err_end();
	T_CHECK(strstr(out, "kvscope: warning: line 255\n") != NULL, "the 256th line not kept");
	T_CHECK(strstr(out, "line 256\n") == NULL, "the 257th line kept");
	T_CHECK(strstr(out, "44 more log lines were not kept") != NULL, "the count is missing: %s",
	        out + (strlen(out) > 200 ? strlen(out) - 200 : 0));
	free(out);
}

int main(void)
{
	test_plain();
	test_capture();
	test_threads();
	test_limits();
	return t_done("test-log");
}
