/*
 * err.c: status codes and one-line error messages.
 *
 * Every failure that a user can cause ends as one line: what was wrong (the
 * file, field or value) and what was expected. Layers add context on the way
 * up with err_prefix, so the message reads outermost-first:
 * "model.gguf: tensor 'blk.0.attn_q.weight': type 4 is not supported".
 */
#include "base.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int err_set(struct err *e, int code, const char *fmt, ...)
{
	va_list ap;

	if (e == NULL)
		return code;
	e->code = code;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof e->msg, fmt, ap);
	va_end(ap);
	return code;
}

void err_prefix(struct err *e, const char *fmt, ...)
{
	char head[ERR_MSG_MAX], tail[ERR_MSG_MAX];
	va_list ap;

	if (e == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(head, sizeof head, fmt, ap);
	va_end(ap);
	memcpy(tail, e->msg, sizeof tail);
	/* Truncation is acceptable: the message is for a person. */
	size_t n = strlen(head);
	if (n > sizeof e->msg - 3)
		n = sizeof e->msg - 3;
	memcpy(e->msg, head, n);
	memcpy(e->msg + n, ": ", 2);
	n += 2;
	size_t t = strlen(tail);
	if (t > sizeof e->msg - 1 - n)
		t = sizeof e->msg - 1 - n;
	memcpy(e->msg + n, tail, t);
	e->msg[n + t] = '\0';
}

void err_clear(struct err *e)
{
	if (e == NULL)
		return;
	e->code = KVS_OK;
	e->msg[0] = '\0';
}

static const char *const err_names[] = {
	[KVS_OK] = "ok",
	[KVS_EFORMAT] = "format error",
	[KVS_EUNSUPPORTED] = "unsupported",
	[KVS_EIO] = "I/O error",
	[KVS_EARG] = "bad argument",
	[KVS_ERANGE] = "out of range",
	[KVS_ESTATE] = "invalid state",
	[KVS_ENOTFOUND] = "not found",
	[KVS_ECHECKSUM] = "checksum mismatch",
	[KVS_ENOMEM] = "out of memory for the size asked",
};

const char *err_name(int code)
{
	if (code < 0 || (size_t)code >= KVS_ARRAY_LEN(err_names) || err_names[code] == NULL)
		return "unknown error";
	return err_names[code];
}

void err_invariant(const char *what, const char *file, int line)
{
	fprintf(stderr, "kvscope: invariant failed: %s (%s:%d)\n", what, file, line);
	fflush(stderr);
	abort();
}
