/*
 * log.c: diagnostics to stderr. stdout belongs to command results, so every
 * log line goes to stderr, prefixed with the program name and the level.
 */
#include "base.h"

#include <stdio.h>

static enum log_level log_level = LOG_WARN;

void log_set_level(enum log_level level)
{
	log_level = level;
}

enum log_level log_get_level(void)
{
	return log_level;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	static const char *const names[] = { "", "error", "warning", "info", "debug" };
	va_list ap;

	if (level > log_level || level == LOG_QUIET)
		return;
	fprintf(stderr, "kvscope: %s: ", names[level]);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}
