/*
 * store-export.c: a saved session as Markdown or JSON (kvscope sessions
 * export): its settings, every turn, and each turn's memory events, with
 * the evicted tokens' text when the caller passes the vocabulary.
 *
 * The output is read-only work over the database: the JSON is one object
 * (strings escaped, a detail column that is already JSON copied as is);
 * the Markdown quotes user text line by line so it cannot break the page.
 */
#include "store/store-int.h"

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

/* A JSON string (quotes included). */
static void json_str(FILE *fp, const char *s)
{
	fputc('"', fp);
	for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(fp, "\\%c", *p);
		else if (*p == '\n')
			fputs("\\n", fp);
		else if (*p == '\t')
			fputs("\\t", fp);
		else if (*p < 0x20)
			fprintf(fp, "\\u%04x", *p);
		else
			fputc(*p, fp);
	}
	fputc('"', fp);
}

/* Text for a Markdown quote block: every line prefixed with "> ". */
static void md_quote(FILE *fp, const char *s)
{
	fputs("> ", fp);
	for (const char *p = s ? s : ""; *p; p++) {
		fputc(*p, fp);
		if (*p == '\n')
			fputs("> ", fp);
	}
	fputc('\n', fp);
}

/* Print one column value as JSON (number, string or null). */
static void json_col(FILE *fp, sqlite3_stmt *st, int i)
{
	switch (sqlite3_column_type(st, i)) {
	case SQLITE_INTEGER:
		fprintf(fp, "%lld", (long long)sqlite3_column_int64(st, i));
		break;
	case SQLITE_FLOAT:
		fprintf(fp, "%.9g", sqlite3_column_double(st, i));
		break;
	case SQLITE_NULL:
		fputs("null", fp);
		break;
	default:
		json_str(fp, (const char *)sqlite3_column_text(st, i));
	}
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
	static const char *const names[] = { "kind", "cause", "policy", "n_tokens", "n_incoming",
		                             "fallback", "detail", "at" };
	int r, k = 0;
	if (fmt == STORE_FMT_JSON)
		fputc('[', fp);
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		const char *kind = (const char *)sqlite3_column_text(st, 0);
		if (fmt == STORE_FMT_JSON) {
			fputs(k++ ? ",{" : "{", fp);
			for (int c = 0; c < 8; c++) {
				fprintf(fp, "%s\"%s\":", c ? "," : "", names[c]);
				if (c == 6)
					fputs((const char *)sqlite3_column_text(st, c), fp); /* already JSON */
				else
					json_col(fp, st, c);
			}
			if (v != NULL && strcmp(kind, "policy") != 0) {
				fputs(",\"text\":", fp);
				export_token_text(fp, (const char *)sqlite3_column_text(st, 6), v, true);
			}
			fputc('}', fp);
			continue;
		}
		if (k++ == 0)
			fputs("\nMemory events:\n\n", fp);
		const char *policy = (const char *)sqlite3_column_text(st, 2);
		if (strcmp(kind, "evict") == 0) {
			const char *fb = (const char *)sqlite3_column_text(st, 5);
			fprintf(fp,
			        "- evicted %lld tokens (cause: %s, making room for %lld; policy %s%s%s)",
			        (long long)sqlite3_column_int64(st, 3), sqlite3_column_text(st, 1),
			        (long long)sqlite3_column_int64(st, 4), policy ? policy : "?",
			        fb ? "; fallback: " : "", fb ? fb : "");
			if (v != NULL) {
				fputs(": ", fp);
				export_token_text(fp, (const char *)sqlite3_column_text(st, 6), v, false);
			}
			fprintf(fp, "; [position, token id, final score]: %s\n", sqlite3_column_text(st, 6));
		} else if (strcmp(kind, "policy") == 0) {
			fprintf(fp, "- policy changed: %s\n", sqlite3_column_text(st, 6));
		} else if (strcmp(kind, "reset") == 0) {
			fprintf(fp, "- the cache was cleared (a new conversation began)\n");
		} else {
			fprintf(fp, "- %s", kind);
			if (v != NULL) {
				fputs(" ", fp);
				export_token_text(fp, (const char *)sqlite3_column_text(st, 6), v, false);
			}
			fprintf(fp, ": [position, token id, score] %s\n", sqlite3_column_text(st, 6));
		}
	}
	if (fmt == STORE_FMT_JSON)
		fputc(']', fp);
	rc = r == SQLITE_DONE ? KVS_OK : store_fail(s, r, "reading memory events", e);
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
		fprintf(fp, ",\"created\":%.3f,\"updated\":%.3f,\"tokens\":%u,\"kept\":%u,\"turns\":[",
		        ss.created, ss.updated, ss.n_tokens, ss.n_kept);
	} else {
		fprintf(fp, "# %s\n\nSession %lld, model %s (%s, sha256 %s), KV policy %s, budget %u "
		            "tokens, context %u; sampler %s.\n",
		        ss.title, (long long)ss.id, ss.model_path, ss.arch, ss.model_sha256, ss.policy,
		        ss.budget, ss.n_ctx, ss.sampler);
		fprintf(fp, "%u tokens entered the cache, %u are kept now, %u were evicted.\n",
		        ss.n_tokens, ss.n_kept, ss.n_tokens - ss.n_kept);
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
		int r, k = 0;
		sqlite3_bind_int64(st, 1, id);
		while (rc == KVS_OK && (r = sqlite3_step(st)) == SQLITE_ROW) {
			int64_t idx = sqlite3_column_int64(st, 0);
			if (fmt == STORE_FMT_JSON) {
				static const char *const names[] = { "index", "user", "reply", "n_prompt",
					                             "n_reply", "prefill_ms", "decode_ms", "stop",
					                             "complete", "started", "tokens",
					                             "tokens_evicted" };
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
			md_quote(fp, (const char *)sqlite3_column_text(st, 1));
			fputs("\n**Assistant:**\n\n", fp);
			md_quote(fp, (const char *)sqlite3_column_text(st, 2));
			fprintf(fp,
			        "\n%lld prompt tokens (%.0f ms), %lld reply tokens (%.0f ms), stop: %s; "
			        "%lld of its tokens have been evicted since.\n",
			        (long long)sqlite3_column_int64(st, 3), sqlite3_column_double(st, 5),
			        (long long)sqlite3_column_int64(st, 4), sqlite3_column_double(st, 6),
			        sqlite3_column_text(st, 7), (long long)sqlite3_column_int64(st, 11));
			rc = export_events(s, id, idx, fmt, v, fp, e);
		}
		if (rc == KVS_OK && r != SQLITE_DONE)
			rc = store_fail(s, r, "reading turns", e);
		sqlite3_finalize(st);
	}
	if (fmt == STORE_FMT_JSON)
		fputs("]}\n", fp);
	store_session_free(&ss);
	if (rc == KVS_OK && ferror(fp))
		rc = err_set(e, KVS_EIO, "export: write failed");
	return rc;
}
