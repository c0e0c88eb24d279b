/*
 * trace.c: KV-cache events as JSON lines, one object per line, for
 * scripting (`kvscope generate --trace FILE`).
 *
 * Every line has "event" (step, evict, turn, policy), "turn", "policy" and
 * "kv" (the cache's statistics after the event). A step line adds the
 * query token (id, text, positions, role, surprisal, entropy), the entropy
 * of the next-token distribution, the per-head summaries as arrays indexed
 * [layer][head], and, when attention rows were captured, "attn"
 * [layer][head][cache index]. An evict line lists the evicted tokens with
 * their final scores, a recall line the recalled tokens at their new
 * positions. Cold-tier lines (trace_write_cold; `kvscope chat --trace`)
 * have "event" cold-write, cold-recall (its blocks with their turn,
 * positions and BM25 score), cold-stop, cold-refused or cold-failed, and
 * "index", the exchange. NaN is written as null.
 */
#include "app/app.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* A float, or null for NaN / infinity. */
static void trace_num(FILE *fp, double v)
{
	if (isfinite(v))
		fprintf(fp, "%.6g", v);
	else
		fputs("null", fp);
}

/* A JSON string of bytes s[0..n) (control bytes escaped, UTF-8 as is). */
static void trace_str(FILE *fp, const char *s, size_t n)
{
	fputc('"', fp);
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch == '"' || ch == '\\')
			fprintf(fp, "\\%c", ch);
		else if (ch == '\n')
			fputs("\\n", fp);
		else if (ch == '\t')
			fputs("\\t", fp);
		else if (ch < 0x20 || ch == 0x7f)
			fprintf(fp, "\\u%04x", ch);
		else
			fputc(ch, fp);
	}
	fputc('"', fp);
}

/* A token's text, rendered (invalid UTF-8 pieces become U+FFFD). */
static void trace_token_text(FILE *fp, const struct vocab *v, int32_t id)
{
	char buf[256];
	size_t n = vocab_piece(v, id, true, buf, sizeof buf);
	if (n > sizeof buf)
		n = sizeof buf;
	if (!utf8_valid((const uint8_t *)buf, n)) {
		trace_str(fp, "\xEF\xBF\xBD", 3);
		return;
	}
	trace_str(fp, buf, n);
}

static void trace_stats(FILE *fp, const struct kv_stats *s)
{
	fprintf(fp,
	        "\"kv\":{\"cached\":%u,\"budget\":%u,\"sink\":%u,\"key\":%u,\"recent\":%u,"
	        "\"pinned\":%u,\"seen\":%llu,\"evicted\":%llu,\"evictions\":%u,\"fallbacks\":%u,"
	        "\"bytes\":%llu,\"bytes_per_layer\":%llu,\"bytes_peak\":%llu,\"bytes_allocated\":%llu,"
	        "\"keys_read\":%llu,\"keys_dense\":%llu}",
	        s->n_cached, s->budget, s->n_sink, s->n_key, s->n_recent, s->n_pinned,
	        (unsigned long long)s->n_seen, (unsigned long long)s->n_evicted, s->n_evictions,
	        s->n_fallbacks, (unsigned long long)s->bytes, (unsigned long long)s->bytes_per_layer,
	        (unsigned long long)s->bytes_peak, (unsigned long long)s->bytes_allocated,
	        (unsigned long long)s->keys_read, (unsigned long long)s->keys_dense);
}

/* One summary field of every head as [[layer 0 heads], [layer 1 heads], ...]. */
static void trace_heads(FILE *fp, const char *name, const struct kv_event *ev, int field)
{
	fprintf(fp, ",\"%s\":[", name);
	for (uint32_t l = 0; l < ev->n_layer; l++) {
		fputs(l ? ",[" : "[", fp);
		for (uint32_t h = 0; h < ev->n_head; h++) {
			const struct kv_head_summary *s = &ev->heads[(size_t)l * ev->n_head + h];
			if (h)
				fputc(',', fp);
			switch (field) {
			case 0: trace_num(fp, s->entropy); break;
			case 1: trace_num(fp, s->sink_mass); break;
			case 2: trace_num(fp, s->topk_mass); break;
			default: fprintf(fp, "%u", s->k90); break;
			}
		}
		fputc(']', fp);
	}
	fputc(']', fp);
}

/* A (n_layer, n_head_kv) table of floats as [[layer 0], [layer 1], ...]. */
static void trace_lh(FILE *fp, const char *name, const float *x, uint32_t nl, uint32_t nh)
{
	fprintf(fp, ",\"%s\":[", name);
	for (uint32_t l = 0; l < nl; l++) {
		fputs(l ? ",[" : "[", fp);
		for (uint32_t h = 0; h < nh; h++) {
			if (h)
				fputc(',', fp);
			trace_num(fp, x[(size_t)l * nh + h]);
		}
		fputc(']', fp);
	}
	fputc(']', fp);
}

/* A sparse step's figures: what it read against dense, the overlap with
 * the step before, the last shadow's mass and tightness (per layer and KV
 * head too), and the keys each layer attended (summed over KV heads). */
static void trace_sparse(FILE *fp, const struct kv_event *ev)
{
	const struct kv_sparse_view *v = ev->sparse;
	const struct kv_sparse_stats *s = &ev->stats.sp;
	fprintf(fp,
	        ",\"sparse\":{\"mode\":\"%s\",\"shadow\":%s,\"bytes_read\":%llu,\"bytes_dense\":%llu,"
	        "\"overlap\":",
	        v->mode == ENGINE_SPARSE_HIP ? "hip" : "quest", v->shadow ? "true" : "false",
	        (unsigned long long)s->bytes_read, (unsigned long long)s->bytes_dense);
	trace_num(fp, s->overlap);
	fprintf(fp, ",\"shadow_step\":%llu,\"shadow_every\":%u,\"mass_mean\":",
	        (unsigned long long)s->shadow_step, s->shadow_every);
	trace_num(fp, s->mass_mean);
	fputs(",\"mass_min\":", fp);
	trace_num(fp, s->mass_min);
	fputs(",\"mass_p10\":", fp);
	trace_num(fp, s->mass_p10);
	fputs(",\"tight\":", fp);
	trace_num(fp, s->tight);
	fputs(",\"attn_ms\":", fp);
	trace_num(fp, s->attn_ms);
	fputs(",\"select_ms\":", fp);
	trace_num(fp, s->select_ms);
	fputs(",\"shadow_ms\":", fp);
	trace_num(fp, s->shadow_ms);
	fputs(",\"attended\":[", fp);
	for (uint32_t l = 0; l < v->n_layer; l++) {
		uint64_t n = 0;
		for (size_t i = 0; i < (size_t)v->n_head_kv * v->n_cached; i++)
			n += v->sel[(size_t)l * v->n_head_kv * v->n_cached + i];
		fprintf(fp, l ? ",%llu" : "%llu", (unsigned long long)n);
	}
	fputc(']', fp);
	trace_lh(fp, "head_mass", v->mass, v->n_layer, v->n_head_kv);
	trace_lh(fp, "head_tight", v->tight, v->n_layer, v->n_head_kv);
	fputc('}', fp);
}

static void trace_step(FILE *fp, const struct kv_event *ev, const struct vocab *v)
{
	const struct kv_tok *t = ev->tok;
	fprintf(fp, ",\"step\":%llu,\"token\":%d,\"text\":", (unsigned long long)ev->step, t->token);
	trace_token_text(fp, v, t->token);
	fprintf(fp, ",\"orig_pos\":%d,\"pos\":%d,\"role\":\"%s\",\"surprisal\":", t->orig_pos, t->pos,
	        kv_role_name((enum kv_role)t->role));
	trace_num(fp, t->surprisal);
	fputs(",\"entropy\":", fp);
	trace_num(fp, t->entropy);
	fputs(",\"next_entropy\":", fp);
	trace_num(fp, ev->next_entropy);
	fprintf(fp, ",\"n_layer\":%u,\"n_head\":%u,\"n_cached\":%u", ev->n_layer, ev->n_head,
	        ev->n_cached);
	if (ev->sparse != NULL)
		trace_sparse(fp, ev);
	if (ev->heads != NULL) {
		trace_heads(fp, "head_entropy", ev, 0);
		trace_heads(fp, "head_sink_mass", ev, 1);
		trace_heads(fp, "head_topk_mass", ev, 2);
		trace_heads(fp, "head_k90", ev, 3);
	}
	if (ev->attn != NULL) {
		fputs(",\"attn\":[", fp);
		for (uint32_t l = 0; l < ev->n_layer; l++) {
			fputs(l ? ",[" : "[", fp);
			for (uint32_t h = 0; h < ev->n_head; h++) {
				const float *row = ev->attn + ((size_t)l * ev->n_head + h) * ev->n_cached;
				fputs(h ? ",[" : "[", fp);
				for (uint32_t j = 0; j < ev->n_cached; j++)
					fprintf(fp, j ? ",%.4g" : "%.4g", (double)row[j]);
				fputc(']', fp);
			}
			fputc(']', fp);
		}
		fputc(']', fp);
	}
}

static void trace_evict(FILE *fp, const struct kv_event *ev)
{
	fprintf(fp, ",\"cause\":\"%s\",\"incoming\":%u,\"fallback\":%s", kv_evict_cause_name(ev->cause),
	        ev->n_incoming, ev->fallback ? "true" : "false");
	if (ev->fallback_why) {
		fputs(",\"fallback_why\":", fp);
		trace_str(fp, ev->fallback_why, strlen(ev->fallback_why));
	}
	fputs(",\"evicted\":[", fp);
	for (uint32_t i = 0; i < ev->n_evicted; i++) {
		const struct kv_tok *t = &ev->evicted[i];
		fprintf(fp, "%s{\"orig_pos\":%d,\"token\":%d,\"turn\":%u,\"score\":", i ? "," : "",
		        t->orig_pos, t->token, t->turn);
		trace_num(fp, t->score);
		fputc('}', fp);
	}
	fputc(']', fp);
}

/* The tokens a recall placed, at their new positions. */
static void trace_recall(FILE *fp, const struct kv_event *ev)
{
	fputs(",\"recalled\":[", fp);
	for (uint32_t i = 0; i < ev->n_recalled; i++) {
		const struct kv_tok *t = &ev->recalled[i];
		fprintf(fp, "%s{\"orig_pos\":%d,\"pos\":%d,\"token\":%d,\"turn\":%u}", i ? "," : "",
		        t->orig_pos, t->pos, t->token, t->turn);
	}
	fputc(']', fp);
}

void trace_write_cold(FILE *fp, const struct session_cold_event *ev)
{
	static const char *const kinds[] = { "cold-write", "cold-recall", "cold-stop", "cold-refused",
		                                 "cold-failed" };
	fprintf(fp, "{\"event\":\"%s\",\"index\":%u",
	        (unsigned)ev->kind < KVS_ARRAY_LEN(kinds) ? kinds[ev->kind] : "?", ev->index);
	if (ev->kind == SESSION_COLD_WRITE)
		fprintf(fp, ",\"blocks\":%u,\"tokens\":%llu,\"dropped_blocks\":%u,\"dropped_tokens\":%llu",
		        ev->blocks, (unsigned long long)ev->tokens, ev->dropped_blocks,
		        (unsigned long long)ev->dropped_tokens);
	if (ev->kind == SESSION_COLD_RECALL) {
		fprintf(fp, ",\"tokens\":%llu,", (unsigned long long)ev->tokens);
		if (ev->scorer != NULL) {
			fputs("\"scorer\":", fp);
			trace_str(fp, ev->scorer, strlen(ev->scorer));
			fputc(',', fp);
		}
		fputs("\"blocks\":[", fp);
		for (size_t i = 0; i < ev->n_hits; i++) {
			const struct store_cold_hit *h = &ev->hits[i];
			fprintf(fp, "%s{\"id\":%lld,\"turn\":%u,\"pos0\":%d,\"pos1\":%d,\"n\":%u,\"bm25\":",
			        i ? "," : "", (long long)h->id, h->turn, h->pos0, h->pos1, h->n_tokens);
			trace_num(fp, h->bm25);
			fputs(",\"summary\":", fp);
			trace_num(fp, h->summary);
			fputc('}', fp);
		}
		fputc(']', fp);
	}
	if (ev->msg != NULL) {
		fputs(",\"msg\":", fp);
		trace_str(fp, ev->msg, strlen(ev->msg));
	}
	fputs("}\n", fp);
}

void trace_write_event(FILE *fp, const struct kv_event *ev, const struct vocab *v)
{
	static const char *const kinds[] = { "step", "evict", "turn", "policy", "pin", "recall" };
	fprintf(fp, "{\"event\":\"%s\",\"turn\":%u,\"policy\":",
	        (unsigned)ev->kind < KVS_ARRAY_LEN(kinds) ? kinds[ev->kind] : "?", ev->turn);
	trace_str(fp, ev->policy ? ev->policy : "", ev->policy ? strlen(ev->policy) : 0);
	if (ev->kind == KV_EVENT_STEP)
		trace_step(fp, ev, v);
	else if (ev->kind == KV_EVENT_EVICT)
		trace_evict(fp, ev);
	else if (ev->kind == KV_EVENT_TURN)
		fprintf(fp, ",\"incoming\":%u", ev->n_incoming);
	else if (ev->kind == KV_EVENT_RECALL)
		trace_recall(fp, ev);
	fputc(',', fp);
	trace_stats(fp, &ev->stats);
	fputs("}\n", fp);
}
