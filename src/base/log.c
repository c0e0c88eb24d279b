/*
 * log.c: diagnostics to stderr. stdout belongs to command results, so every
 * log line goes to stderr, prefixed with the program name and the level.
 *
 * A full-screen program owns the terminal: a line written to stderr while
 * it draws lands in the middle of its panes and is gone at the next frame.
 * While a capture is on (log_capture_start) lines are kept instead, in
 * order, from any thread; the program shows them as they come
 * (log_capture_next) and log_capture_stop writes them all to stderr once the
 * screen is given back, so what was said is in the terminal after exit.
 */
#include "base.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The most lines a capture keeps; later ones are counted, not kept. */
#define LOG_CAPTURE_MAX 256
/* The longest line kept (longer ones end in "..."). */
#define LOG_LINE_MAX 1024

static const char *const log_names[] = { "", "error", "warning", "info", "debug" };
static enum log_level log_level = LOG_WARN;

static struct {
	pthread_mutex_t mu;
	bool on;
	char *lines[LOG_CAPTURE_MAX];
	enum log_level levels[LOG_CAPTURE_MAX];
	size_t n;       /* lines kept */
	size_t shown;   /* of which log_capture_next handed out */
	size_t dropped; /* lines past LOG_CAPTURE_MAX */
} log_cap = { .mu = PTHREAD_MUTEX_INITIALIZER };

void log_set_level(enum log_level level)
{
	log_level = level;
}

enum log_level log_get_level(void)
{
	return log_level;
}

const char *log_level_name(enum log_level level)
{
	return (unsigned)level < KVS_ARRAY_LEN(log_names) ? log_names[level] : "log";
}

/* Write one line to stderr as "kvscope: LEVEL: LINE". */
static void log_print(enum log_level level, const char *line)
{
	fprintf(stderr, "kvscope: %s: %s\n", log_level_name(level), line);
}

/* Keep the line (the capture's lock held). */
static void log_keep(enum log_level level, const char *line)
{
	if (log_cap.n == LOG_CAPTURE_MAX) {
		log_cap.dropped++;
		return;
	}
	log_cap.lines[log_cap.n] = xstrdup(line);
	log_cap.levels[log_cap.n] = level;
	log_cap.n++;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	char line[LOG_LINE_MAX];
	va_list ap;
	int n;

	if (level > log_level || level == LOG_QUIET)
		return;
	va_start(ap, fmt);
	n = vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (n < 0)
		snprintf(line, sizeof line, "(a log line that could not be formatted: %s)", fmt);
	else if ((size_t)n >= sizeof line)
		memcpy(line + sizeof line - 4, "...", 4);
	pthread_mutex_lock(&log_cap.mu);
	if (log_cap.on)
		log_keep(level, line);
	else
		log_print(level, line);
	pthread_mutex_unlock(&log_cap.mu);
}

void log_capture_start(void)
{
	pthread_mutex_lock(&log_cap.mu);
	log_cap.on = true;
	pthread_mutex_unlock(&log_cap.mu);
}

char *log_capture_next(enum log_level *level)
{
	char *line = NULL;

	pthread_mutex_lock(&log_cap.mu);
	if (log_cap.shown < log_cap.n) {
		line = xstrdup(log_cap.lines[log_cap.shown]);
		if (level != NULL)
			*level = log_cap.levels[log_cap.shown];
		log_cap.shown++;
	}
	pthread_mutex_unlock(&log_cap.mu);
	return line;
}

void log_capture_stop(void)
{
	pthread_mutex_lock(&log_cap.mu);
	for (size_t i = 0; i < log_cap.n; i++) {
		log_print(log_cap.levels[i], log_cap.lines[i]);
		free(log_cap.lines[i]);
	}
	if (log_cap.dropped > 0)
		fprintf(stderr,
		        "kvscope: warning: %zu more log lines were not kept (the first %d are above)\n",
		        log_cap.dropped, LOG_CAPTURE_MAX);
	log_cap.n = log_cap.shown = log_cap.dropped = 0;
	log_cap.on = false;
	pthread_mutex_unlock(&log_cap.mu);
}
