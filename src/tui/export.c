/*
 * export.c: what the workbench shows, written to a file (:export-view, and
 * kvscope.export_view from Lua through the workbench's send hook).
 *
 * Two views, each as CSV or JSON, from one table:
 *   attention  the steps in the attention history (the rows Shift-Up walks,
 *              at most TUI_STEP_HISTORY), every layer and head. The JSON
 *              is the shape attention viewers load: "tokens" (the keys, by
 *              original position: the union of the keys of those steps),
 *              "queries" (one per step, with its index in tokens) and
 *              "attention"[layer][head][query][key], a key not in the
 *              cache at a step (evicted before it, or later than its
 *              query) weighing 0. So each row sums to 1 as the step's did.
 *              The CSV is the same in long form, one line per (step,
 *              layer, head, key cached at that step).
 *   retention  the dialogue's tokens as the strip shows them: position,
 *              id, text, turn, role, cached or evicted (by which policy,
 *              for what cause), sink / key / pinned, surprisal and score.
 * Every text is valid output whatever the token holds: JSON strings escape
 * quotes, backslashes and control bytes, CSV quotes fields with commas,
 * quotes or line breaks, and bytes that are not UTF-8 become U+FFFD in
 * both. Numbers a token does not have (NaN) are null / empty.
 */
#include "tui/tui-int.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Text as UTF-8 with each invalid byte replaced by U+FFFD (allocated). */
static char *exp_utf8(const char *s)
{
	size_t n = strlen(s), o = 0;
	char *out = xmalloc(n * 3 + 1);

	for (size_t i = 0; i < n;) {
		uint32_t cp;
		size_t k = utf8_decode((const uint8_t *)s + i, n - i, &cp);
		if (k == 0) {
			memcpy(out + o, "\xef\xbf\xbd", 3);
			o += 3;
			i++;
			continue;
		}
		memcpy(out + o, s + i, k);
		o += k;
		i += k;
	}
	out[o] = '\0';
	return out;
}

/* A JSON string. */
static void exp_json_str(FILE *fp, const char *s)
{
	char *u = exp_utf8(s);

	fputc('"', fp);
	for (const unsigned char *p = (const unsigned char *)u; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(fp, "\\%c", *p);
		else if (*p == '\n')
			fputs("\\n", fp);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(fp, "\\u%04x", *p);
		else
			fputc(*p, fp);
	}
	fputc('"', fp);
	free(u);
}

/* A CSV field (RFC 4180: quoted when it holds a comma, a quote or a line
 * break; quotes doubled). */
static void exp_csv_str(FILE *fp, const char *s)
{
	char *u = exp_utf8(s);

	if (strpbrk(u, ",\"\r\n") == NULL) {
		fputs(u, fp);
	} else {
		fputc('"', fp);
		for (const char *p = u; *p; p++) {
			if (*p == '"')
				fputc('"', fp);
			fputc(*p, fp);
		}
		fputc('"', fp);
	}
	free(u);
}

/* A number, or null (JSON) / nothing (CSV) when it is NaN. */
static void exp_num(FILE *fp, float v, bool json)
{
	if (isnan(v) || isinf(v))
		fputs(json ? "null" : "", fp);
	else
		fprintf(fp, "%.6g", (double)v);
}

/* ---- attention ---- */

static int exp_attention(const struct tui *t, FILE *fp, bool json, struct err *e)
{
	const struct tui_step *st[TUI_STEP_HISTORY];
	uint32_t n_st = tui_attn_steps(t, st), n_keys, n_layer, n_head;
	int32_t *pos, *tok;
	int32_t *col; /* (n_st, n_keys) the step's cache column of each key, -1 none */
	char piece[64];

	if (n_st == 0)
		return err_set(e, KVS_ESTATE,
		               "no attention to export yet: send a message first (the steps the "
		               "attention pane walks are exported)");
	n_layer = st[n_st - 1]->n_layer;
	n_head = st[n_st - 1]->n_head;
	pos = tui_attn_keys(st, n_st, &n_keys, &tok);
	col = xmallocarray((size_t)n_st * n_keys, sizeof *col);
	for (size_t i = 0; i < (size_t)n_st * n_keys; i++)
		col[i] = -1;
	for (uint32_t i = 0; i < n_st; i++)
		for (uint32_t k = 0; k < st[i]->n_cached; k++) {
			int32_t *hit = bsearch(&st[i]->key_pos[k], pos, n_keys, sizeof *pos, tui_cmp_i32);
			col[(size_t)i * n_keys + (size_t)(hit - pos)] = (int32_t)k;
		}
	if (!json) {
		fputs("step,query_position,query_token,layer,head,key_position,key_token,weight\n", fp);
		for (uint32_t i = 0; i < n_st; i++) {
			char qp[64];
			tui_piece(t, st[i]->query.token, qp, sizeof qp);
			for (uint32_t l = 0; l < st[i]->n_layer; l++)
				for (uint32_t h = 0; h < st[i]->n_head; h++) {
					const float *row =
					        st[i]->attn + ((size_t)l * st[i]->n_head + h) * st[i]->n_cached;
					for (uint32_t k = 0; k < st[i]->n_cached; k++) {
						fprintf(fp, "%llu,%d,", (unsigned long long)st[i]->step,
						        st[i]->query.orig_pos);
						exp_csv_str(fp, qp);
						fprintf(fp, ",%u,%u,%d,", l, h, st[i]->key_pos[k]);
						tui_piece(t, st[i]->key_tok[k], piece, sizeof piece);
						exp_csv_str(fp, piece);
						fprintf(fp, ",%.6g\n", (double)row[k]);
					}
				}
		}
	} else {
		fprintf(fp, "{\"format\":\"kvscope-attention-1\",\"n_layer\":%u,\"n_head\":%u,", n_layer,
		        n_head);
		fprintf(fp, "\"layer_shown\":%u,\"head_shown\":%u,\"tokens\":[", t->layer, t->head);
		for (uint32_t k = 0; k < n_keys; k++) {
			tui_piece(t, tok[k], piece, sizeof piece);
			if (k)
				fputc(',', fp);
			exp_json_str(fp, piece);
		}
		fputs("],\"positions\":[", fp);
		for (uint32_t k = 0; k < n_keys; k++)
			fprintf(fp, "%s%d", k ? "," : "", pos[k]);
		fputs("],\"queries\":[", fp);
		for (uint32_t i = 0; i < n_st; i++) {
			int32_t *hit = bsearch(&st[i]->query.orig_pos, pos, n_keys, sizeof *pos, tui_cmp_i32);
			tui_piece(t, st[i]->query.token, piece, sizeof piece);
			fprintf(fp, "%s{\"step\":%llu,\"position\":%d,\"index\":%d,\"token\":", i ? "," : "",
			        (unsigned long long)st[i]->step, st[i]->query.orig_pos,
			        hit ? (int)(hit - pos) : -1);
			exp_json_str(fp, piece);
			fputc('}', fp);
		}
		/* attention[layer][head][query][key] */
		fputs("],\"attention\":[", fp);
		for (uint32_t l = 0; l < n_layer; l++) {
			fputs(l ? ",[" : "[", fp);
			for (uint32_t h = 0; h < n_head; h++) {
				fputs(h ? ",[" : "[", fp);
				for (uint32_t i = 0; i < n_st; i++) {
					bool same = st[i]->n_layer == n_layer && st[i]->n_head == n_head;
					const float *row =
					        same ? st[i]->attn + ((size_t)l * n_head + h) * st[i]->n_cached : NULL;
					fputs(i ? ",[" : "[", fp);
					for (uint32_t k = 0; k < n_keys; k++) {
						int32_t c = col[(size_t)i * n_keys + k];
						if (k)
							fputc(',', fp);
						if (c < 0 || !same)
							fputc('0', fp);
						else
							fprintf(fp, "%.6g", (double)row[c]);
					}
					fputc(']', fp);
				}
				fputc(']', fp);
			}
			fputc(']', fp);
		}
		fputs("]}\n", fp);
	}
	free(col);
	free(pos);
	free(tok);
	return KVS_OK;
}

/* ---- retention ---- */

/* The flags and state of a token as the strip colours it. */
struct exp_tok_row {
	bool cached, evicted, sink, key, pinned;
	const char *cause; /* "" when kept */
};

static void exp_tok_row(const struct tui_tok *x, struct exp_tok_row *r)
{
	r->cached = x->cached;
	r->evicted = x->evicted && !x->cached;
	r->sink = (x->t.flags & KV_FLAG_SINK) != 0;
	r->key = (x->t.flags & KV_FLAG_KEY) != 0;
	r->pinned = (x->t.flags & KV_FLAG_PINNED) != 0;
	r->cause = r->evicted ? kv_evict_cause_name((enum kv_evict_cause)x->evict_cause) : "";
}

static int exp_retention(const struct tui *t, FILE *fp, bool json, struct err *e)
{
	char piece[64];
	bool first = true;

	(void)e;
	if (!json)
		fputs("position,id,text,turn,role,cached,evicted,sink,key,pinned,surprisal,score,"
		      "evicted_by,cause\n",
		      fp);
	else {
		fputs("{\"format\":\"kvscope-retention-1\",\"policy\":", fp);
		exp_json_str(fp, t->policy);
		fprintf(fp, ",\"budget\":%u,\"cached\":%u,\"selected\":%d,\"tokens\":[", t->stats.budget,
		        t->stats.n_cached, t->sel_tok);
	}
	for (uint32_t i = 0; i < t->n_toks; i++) {
		const struct tui_tok *x = &t->toks[i];
		struct exp_tok_row r;
		if (!x->known)
			continue;
		exp_tok_row(x, &r);
		tui_piece(t, x->t.token, piece, sizeof piece);
		if (!json) {
			fprintf(fp, "%d,%d,", x->t.orig_pos, x->t.token);
			exp_csv_str(fp, piece);
			fprintf(fp, ",%u,%s,%d,%d,%d,%d,%d,", x->t.turn, kv_role_name((enum kv_role)x->t.role),
			        r.cached, r.evicted, r.sink, r.key, r.pinned);
			exp_num(fp, x->t.surprisal, false);
			fputc(',', fp);
			exp_num(fp, x->t.score, false);
			fputc(',', fp);
			exp_csv_str(fp, r.evicted ? x->evict_policy : "");
			fprintf(fp, ",%s\n", r.cause);
			continue;
		}
		fprintf(fp, "%s{\"position\":%d,\"id\":%d,\"text\":", first ? "" : ",", x->t.orig_pos,
		        x->t.token);
		first = false;
		exp_json_str(fp, piece);
		fprintf(fp,
		        ",\"turn\":%u,\"role\":\"%s\",\"cached\":%s,\"evicted\":%s,\"sink\":%s,"
		        "\"key\":%s,\"pinned\":%s,\"surprisal\":",
		        x->t.turn, kv_role_name((enum kv_role)x->t.role), r.cached ? "true" : "false",
		        r.evicted ? "true" : "false", r.sink ? "true" : "false", r.key ? "true" : "false",
		        r.pinned ? "true" : "false");
		exp_num(fp, x->t.surprisal, true);
		fputs(",\"score\":", fp);
		exp_num(fp, x->t.score, true);
		fputs(",\"evicted_by\":", fp);
		if (r.evicted) {
			exp_json_str(fp, x->evict_policy);
			fprintf(fp, ",\"cause\":\"%s\"}", r.cause);
		} else {
			fputs("null,\"cause\":null}", fp);
		}
	}
	if (json)
		fputs("]}\n", fp);
	return KVS_OK;
}

/* The views and their writers (json: JSON, else CSV). */
static const struct {
	const char *name;
	int (*write)(const struct tui *t, FILE *fp, bool json, struct err *e);
} tui_export_views[] = {
	{ "attention", exp_attention },
	{ "retention", exp_retention },
};

/* The view's writer and whether fmt is JSON, or a message saying what was
 * expected. */
static int exp_find(const char *view, const char *fmt, size_t *which, bool *json, struct err *e)
{
	if (strcmp(fmt, "csv") != 0 && strcmp(fmt, "json") != 0)
		return err_set(e, KVS_EARG, "unknown format '%s': expected csv or json", fmt);
	*json = strcmp(fmt, "json") == 0;
	for (*which = 0; *which < KVS_ARRAY_LEN(tui_export_views); (*which)++)
		if (strcmp(tui_export_views[*which].name, view) == 0)
			return KVS_OK;
	return err_set(e, KVS_EARG, "unknown view '%s': expected attention or retention", view);
}

int tui_export_view_fp(const struct tui *t, const char *view, const char *fmt, FILE *fp,
                       struct err *e)
{
	size_t i;
	bool json;
	int rc = exp_find(view, fmt, &i, &json, e);

	return rc != KVS_OK ? rc : tui_export_views[i].write(t, fp, json, e);
}

int tui_export_view(const struct tui *t, const char *view, const char *path, const char *fmt,
                    struct err *e)
{
	size_t n = strlen(path), i;
	bool json;
	FILE *fp;
	int rc;

	if (fmt == NULL || fmt[0] == '\0') /* from the file name: .csv, else JSON */
		fmt = n > 4 && strcmp(path + n - 4, ".csv") == 0 ? "csv" : "json";
	if ((rc = exp_find(view, fmt, &i, &json, e)) != KVS_OK)
		return rc; /* before any file is made */
	if ((fp = fopen(path, "w")) == NULL)
		return err_set(e, KVS_EIO, "cannot write %s: %s", path, strerror(errno));
	rc = tui_export_views[i].write(t, fp, json, e);
	if (fclose(fp) != 0 && rc == KVS_OK)
		rc = err_set(e, KVS_EIO, "cannot write %s: %s", path, strerror(errno));
	if (rc != KVS_OK)
		remove(path);
	return rc;
}
