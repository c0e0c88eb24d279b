/*
 * store-export.c: a saved session as Markdown or JSON (kvscope sessions
 * export): its settings, every turn, and each turn's memory events, with
 * the evicted tokens' text when the caller passes the vocabulary.
 *
 * The output is read-only work over the database, and stays well formed
 * whatever the database holds (a crafted file included): the JSON is one
 * valid object (strings escaped, control characters as \u00XX, invalid
 * UTF-8 as U+FFFD, non-finite numbers as null, a detail column copied as
 * is only when it is one JSON value); the Markdown quotes user text line
 * by line so it cannot break the page, and shows control characters and
 * invalid UTF-8 as \xHH (store_text_escape), so printing it cannot drive
 * a terminal. Writing stops at the first write error.
 */
#include "store/store-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const store_format_names[] = { "md", "json" };

int store_format_parse(const char *name, enum store_format *out, struct err *e)
{
	for (size_t i = 0; i < KVS_ARRAY_LEN(store_format_names); i++)
		if (strcmp(name, store_format_names[i]) == 0) {
			*out = (enum store_format)i;
			return KVS_OK;
		}
	return err_set(e, KVS_EARG, "export format '%s': expected md or json", name);
}

/* A JSON string (quotes included) that is always valid JSON, whatever the
 * database holds: control characters (C0, DEL, C1) as \u00XX (so the JSON
 * is also safe to print), each byte of an invalid UTF-8 sequence as
 * U+FFFD. */
static void json_str(FILE *fp, const char *s)
{
	const uint8_t *p = (const uint8_t *)(s ? s : "");
	size_t n = strlen((const char *)p);
	fputc('"', fp);
	for (size_t i = 0; i < n;) {
		uint32_t cp = 0;
		size_t k = utf8_decode(p + i, n - i, &cp);
		if (k == 0) {
			fputs("\xEF\xBF\xBD", fp); /* U+FFFD */
			i++;
			continue;
		}
		if (cp == '"' || cp == '\\')
			fprintf(fp, "\\%c", (char)cp);
		else if (cp == '\n')
			fputs("\\n", fp);
		else if (cp == '\t')
			fputs("\\t", fp);
		else if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
			fprintf(fp, "\\u%04x", (unsigned)cp);
		else
			fwrite(p + i, 1, k, fp);
		i += k;
	}
	fputc('"', fp);
}

/* A JSON number (a time: milliseconds' precision; else 9 digits), or null
 * for what JSON has no number for (inf, nan). */
static void json_num(FILE *fp, bool time, double v)
{
	if (!isfinite(v))
		fputs("null", fp);
	else if (time)
		fprintf(fp, "%.3f", v);
	else
		fprintf(fp, "%.9g", v);
}

/* Skip JSON white space. */
static const char *json_ws(const char *p)
{
	return p + strspn(p, " \t\n\r");
}

/* The end of the JSON value at p (white space before it skipped), or NULL
 * when it is not one (RFC 8259, strings in valid UTF-8 without raw control
 * characters; nesting at most depth levels). */
static const char *json_value_end(const char *p, int depth)
{
	p = json_ws(p);
	if (depth <= 0)
		return NULL;
	if (*p == '{' || *p == '[') {
		char close = *p == '{' ? '}' : ']';
		bool obj = *p == '{';
		p = json_ws(p + 1);
		if (*p == close)
			return p + 1;
		for (;;) {
			if (obj) {
				if (*json_ws(p) != '"' || (p = json_value_end(p, depth - 1)) == NULL)
					return NULL;
				p = json_ws(p);
				if (*p++ != ':')
					return NULL;
			}
			if ((p = json_value_end(p, depth - 1)) == NULL)
				return NULL;
			p = json_ws(p);
			if (*p == close)
				return p + 1;
			if (*p++ != ',')
				return NULL;
		}
	}
	if (*p == '"') {
		const uint8_t *q = (const uint8_t *)p + 1;
		for (;;) {
			uint32_t cp;
			size_t k = utf8_decode(q, strlen((const char *)q), &cp);
			if (k == 0 || cp < 0x20)
				return NULL; /* bad UTF-8, a raw control character or the end */
			if (cp == '"')
				return (const char *)q + 1;
			if (cp == '\\') {
				if (q[1] == 'u') {
					if (strspn((const char *)q + 2, "0123456789abcdefABCDEF") < 4)
						return NULL;
					q += 6;
				} else if (q[1] != '\0' && strchr("\"\\/bfnrt", q[1]) != NULL) {
					q += 2;
				} else {
					return NULL;
				}
				continue;
			}
			q += k;
		}
	}
	static const char *const words[] = { "true", "false", "null" };
	for (size_t i = 0; i < KVS_ARRAY_LEN(words); i++)
		if (strncmp(p, words[i], strlen(words[i])) == 0)
			return p + strlen(words[i]);
	/* a number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
	const char *q = p + (*p == '-');
	size_t d = strspn(q, "0123456789");
	if (d == 0 || (q[0] == '0' && d > 1))
		return NULL;
	q += d;
	if (*q == '.') {
		d = strspn(q + 1, "0123456789");
		if (d == 0)
			return NULL;
		q += 1 + d;
	}
	if (*q == 'e' || *q == 'E') {
		q += 1 + (q[1] == '+' || q[1] == '-');
		d = strspn(q, "0123456789");
		if (d == 0)
			return NULL;
		q += d;
	}
	return q;
}

/* A column that holds JSON (an event's detail): copied when it is one JSON
 * value, else written as a string, so the export stays valid JSON. */
static void json_raw(FILE *fp, const char *s)
{
	const char *end = s ? json_value_end(s, 32) : NULL;
	if (end != NULL && *json_ws(end) == '\0')
		fputs(s, fp);
	else
		json_str(fp, s);
}

/* Text from the database for a Markdown page: control characters and bad
 * UTF-8 as \xHH (store_text_escape); keep: what passes as it is. */
static void md_text(FILE *fp, const char *s, unsigned keep)
{
	char *t = store_text_escape(s, keep);
	fputs(t, fp);
	free(t);
}

/* Text for a Markdown quote block: every line prefixed with "> ". */
static void md_quote(FILE *fp, const char *s)
{
	char *t = store_text_escape(s, STORE_TEXT_KEEP_NL | STORE_TEXT_KEEP_TAB);
	fputs("> ", fp);
	for (const char *p = t; *p; p++) {
		fputc(*p, fp);
		if (*p == '\n')
			fputs("> ", fp);
	}
	fputc('\n', fp);
	free(t);
}

/* Print one column value as JSON (number, string or null). */
static void json_col(FILE *fp, sqlite3_stmt *st, int i)
{
	switch (sqlite3_column_type(st, i)) {
	case SQLITE_INTEGER: fprintf(fp, "%lld", (long long)sqlite3_column_int64(st, i)); break;
	case SQLITE_FLOAT: json_num(fp, false, sqlite3_column_double(st, i)); break;
	case SQLITE_NULL: fputs("null", fp); break;
	default: json_str(fp, (const char *)sqlite3_column_text(st, i));
	}
}

/* Column i as text for Markdown: "" for NULL. */
static const char *col_text(sqlite3_stmt *st, int i)
{
	const unsigned char *t = sqlite3_column_text(st, i);
	return t ? (const char *)t : "";
}

/* The text of the tokens in an event's detail ("[[pos, id, score], ...]"),
 * as one JSON string or a Markdown code span. */
static void export_token_text(FILE *fp, const char *detail, const struct vocab *v, bool json)
{
	char piece[256], *buf = NULL;
	size_t n = 0, cap = 0;
	const char *p = detail;
	int pos, id;
	while ((p = strstr(p, "[")) != NULL) {
		if (sscanf(p, "[%d,%d,", &pos, &id) == 2) {
			size_t k = vocab_piece(v, id, true, piece, sizeof piece);
			k = KVS_MIN(k, sizeof piece);
			if (n + k + 1 > cap) {
				cap = KVS_MAX(2 * cap, n + k + 1);
				buf = xrealloc(buf, cap);
			}
			memcpy(buf + n, piece, k);
			n += k;
		}
		p++;
	}
	if (buf == NULL)
		buf = xstrdup("");
	buf[n] = '\0';
	/* a cut UTF-8 sequence or a control byte must not break the output */
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)buf[i] < 0x20 || buf[i] == '`')
			buf[i] = ' ';
	if (!utf8_valid((const uint8_t *)buf, n))
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)buf[i] >= 0x80)
				buf[i] = '?';
	if (json)
		json_str(fp, buf);
	else
		fprintf(fp, "`%s`", buf);
	free(buf);
}

/* A turn's memory events: Markdown list lines or a JSON array. */
static int export_events(struct store *s, int64_t id, int64_t turn, enum store_format fmt,
                         const struct vocab *v, FILE *fp, struct err *e)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s,
	                       "SELECT kind, cause, policy, n_tokens, n_incoming, fallback, detail, at "
	                       "FROM memory_events WHERE session_id = ? AND turn = ? ORDER BY id",
	                       &st, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_int64(st, 2, turn);
	static const char *const names[] = { "kind",       "cause",    "policy", "n_tokens",
		                                 "n_incoming", "fallback", "detail", "at" };
	int r = SQLITE_DONE, k = 0;
	if (fmt == STORE_FMT_JSON)
		fputc('[', fp);
	while (!ferror(fp) && (r = sqlite3_step(st)) == SQLITE_ROW) {
		const char *kind = col_text(st, 0), *detail = col_text(st, 6);
		if (fmt == STORE_FMT_JSON) {
			fputs(k++ ? ",{" : "{", fp);
			for (int c = 0; c < 8; c++) {
				fprintf(fp, "%s\"%s\":", c ? "," : "", names[c]);
				if (c == 6)
					json_raw(fp, detail); /* already JSON, unless the file was altered */
				else
					json_col(fp, st, c);
			}
			if (v != NULL && strcmp(kind, "policy") != 0) {
				fputs(",\"text\":", fp);
				export_token_text(fp, detail, v, true);
			}
			fputc('}', fp);
			continue;
		}
		if (k++ == 0)
			fputs("\nMemory events:\n\n", fp);
		if (strcmp(kind, "evict") == 0) {
			fprintf(fp, "- evicted %lld tokens (cause: ", (long long)sqlite3_column_int64(st, 3));
			md_text(fp, col_text(st, 1), 0);
			fprintf(fp, ", making room for %lld; policy ", (long long)sqlite3_column_int64(st, 4));
			md_text(fp, sqlite3_column_type(st, 2) == SQLITE_NULL ? "?" : col_text(st, 2), 0);
			if (sqlite3_column_type(st, 5) != SQLITE_NULL) {
				fputs("; fallback: ", fp);
				md_text(fp, col_text(st, 5), 0);
			}
			fputc(')', fp);
			if (v != NULL) {
				fputs(": ", fp);
				export_token_text(fp, detail, v, false);
			}
			fputs("; [position, token id, final score]: ", fp);
		} else if (strcmp(kind, "policy") == 0) {
			fputs("- policy changed: ", fp);
		} else if (strcmp(kind, "reset") == 0) {
			fprintf(fp, "- the cache was cleared (a new conversation began)\n");
			continue;
		} else {
			fputs("- ", fp);
			md_text(fp, kind, 0);
			if (v != NULL) {
				fputs(" ", fp);
				export_token_text(fp, detail, v, false);
			}
			fputs(": [position, token id, score] ", fp);
		}
		md_text(fp, detail, 0);
		fputc('\n', fp);
	}
	if (fmt == STORE_FMT_JSON)
		fputc(']', fp);
	rc = ferror(fp) || r == SQLITE_DONE ? KVS_OK : store_fail(s, r, "reading memory events", e);
	sqlite3_finalize(st);
	return rc;
}

int store_export(struct store *s, int64_t id, enum store_format fmt, const struct vocab *v,
                 FILE *fp, struct err *e)
{
	struct store_session ss;
	sqlite3_stmt *st;
	int rc = store_session_get(s, id, &ss, e);
	if (rc != KVS_OK)
		return rc;
	if (fmt == STORE_FMT_JSON) {
		fprintf(fp, "{\"id\":%lld,\"title\":", (long long)ss.id);
		json_str(fp, ss.title);
		fputs(",\"model\":", fp);
		json_str(fp, ss.model_path);
		fputs(",\"model_sha256\":", fp);
		json_str(fp, ss.model_sha256);
		fputs(",\"arch\":", fp);
		json_str(fp, ss.arch);
		fputs(",\"policy\":", fp);
		json_str(fp, ss.policy);
		fprintf(fp, ",\"budget\":%u,\"n_ctx\":%u,\"sampler\":", ss.budget, ss.n_ctx);
		json_str(fp, ss.sampler);
		fputs(",\"system\":", fp);
		if (ss.system)
			json_str(fp, ss.system);
		else
			fputs("null", fp);
		fputs(",\"created\":", fp);
		json_num(fp, true, ss.created);
		fputs(",\"updated\":", fp);
		json_num(fp, true, ss.updated);
		fprintf(fp, ",\"tokens\":%u,\"kept\":%u,\"turns\":[", ss.n_tokens, ss.n_kept);
	} else {
		/* every string from the database through md_text: one line each */
		fputs("# ", fp);
		md_text(fp, ss.title, 0);
		fprintf(fp, "\n\nSession %lld, model ", (long long)ss.id);
		md_text(fp, ss.model_path, 0);
		fputs(" (", fp);
		md_text(fp, ss.arch, 0);
		fputs(", sha256 ", fp);
		md_text(fp, ss.model_sha256, 0);
		fputs("), KV policy ", fp);
		md_text(fp, ss.policy, 0);
		fprintf(fp, ", budget %u tokens, context %u; sampler ", ss.budget, ss.n_ctx);
		md_text(fp, ss.sampler, 0);
		fputs(".\n", fp);
		fprintf(fp, "%u tokens entered the cache, %u are kept now, %u were evicted.\n", ss.n_tokens,
		        ss.n_kept, ss.n_tokens - ss.n_kept);
		if (ss.system)
			fprintf(fp, "\nSystem prompt:\n\n"), md_quote(fp, ss.system);
	}
	rc = store_prepare(s,
	                   "SELECT idx, user_text, reply, n_prompt, n_reply, prefill_ms, decode_ms, "
	                   "stop, complete, started, (SELECT count(*) FROM tokens k WHERE "
	                   "k.session_id = t.session_id AND k.turn = t.idx), (SELECT count(*) FROM "
	                   "tokens k WHERE k.session_id = t.session_id AND k.turn = t.idx AND NOT "
	                   "k.kept) FROM turns t WHERE session_id = ? ORDER BY idx",
	                   &st, e);
	if (rc == KVS_OK) {
		int r = SQLITE_DONE, k = 0;
		sqlite3_bind_int64(st, 1, id);
		while (rc == KVS_OK && !ferror(fp) && (r = sqlite3_step(st)) == SQLITE_ROW) {
			int64_t idx = sqlite3_column_int64(st, 0);
			if (fmt == STORE_FMT_JSON) {
				static const char *const names[] = { "index",     "user",    "reply",
					                                 "n_prompt",  "n_reply", "prefill_ms",
					                                 "decode_ms", "stop",    "complete",
					                                 "started",   "tokens",  "tokens_evicted" };
				fputs(k++ ? ",{" : "{", fp);
				for (int c = 0; c < 12; c++) {
					fprintf(fp, "%s\"%s\":", c ? "," : "", names[c]);
					if (c == 8)
						fputs(sqlite3_column_int(st, c) ? "true" : "false", fp);
					else
						json_col(fp, st, c);
				}
				fputs(",\"memory_events\":", fp);
				rc = export_events(s, id, idx, fmt, v, fp, e);
				fputc('}', fp);
				continue;
			}
			fprintf(fp, "\n## Turn %lld%s\n\n**User:**\n\n", (long long)idx,
			        sqlite3_column_int(st, 8) ? "" : " (incomplete)");
			md_quote(fp, col_text(st, 1));
			fputs("\n**Assistant:**\n\n", fp);
			md_quote(fp, col_text(st, 2));
			fprintf(fp, "\n%lld prompt tokens (%.0f ms), %lld reply tokens (%.0f ms), stop: ",
			        (long long)sqlite3_column_int64(st, 3), sqlite3_column_double(st, 5),
			        (long long)sqlite3_column_int64(st, 4), sqlite3_column_double(st, 6));
			md_text(fp, col_text(st, 7), 0);
			fprintf(fp, "; %lld of its tokens have been evicted since.\n",
			        (long long)sqlite3_column_int64(st, 11));
			rc = export_events(s, id, idx, fmt, v, fp, e);
		}
		if (rc == KVS_OK && !ferror(fp) && r != SQLITE_DONE)
			rc = store_fail(s, r, "reading turns", e);
		sqlite3_finalize(st);
	}
	if (fmt == STORE_FMT_JSON)
		fputs("]}\n", fp);
	store_session_free(&ss);
	if (rc == KVS_OK && ferror(fp))
		rc = err_set(e, KVS_EIO, "export: write error");
	return rc;
}
