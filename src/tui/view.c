/*
 * view.c: the layout and the panes.
 *
 * The pane registry is a table the built-in panes start and plugins may
 * extend (tui_pane_register); nothing switches on pane names. At
 * TUI_WIDE_W x TUI_WIDE_H or more every built-in pane is visible: chat on
 * the left, attention and KV memory on the right, the retention strip
 * across the bottom; a further pane (plugins, a plugin's own) chosen with
 * F12 or :pane takes the right column until F2-F5 bring the built-ins
 * back (the attention pane is attn.c's). Smaller terminals get a tab bar
 * and one pane at a time. Under
 * the panes sit the length gauge, the input line (one row per line of a
 * multi-line input, at most five) and the status line (chrome.c). Every
 * drawing call is clipped to its rectangle, and every size down to 1x1 has
 * a layout, so a resize at any moment cannot write out of bounds.
 */
#include "tui/tui-int.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void pane_chat(struct tui *t, struct tui_grid *g, struct tui_rect r);
static void pane_memory(struct tui *t, struct tui_grid *g, struct tui_rect r);
static void pane_retention(struct tui *t, struct tui_grid *g, struct tui_rect r);
static void pane_plugins(struct tui *t, struct tui_grid *g, struct tui_rect r);

#define TUI_MAX_PANES 16
static struct tui_pane tui_panes[TUI_MAX_PANES] = {
	{ "chat", "Chat", pane_chat, false },
	{ "attention", "Attention", attn_pane, false },
	{ "memory", "KV memory", pane_memory, false },
	{ "retention", "Retention", pane_retention, false },
	{ "plugins", "Plugins", pane_plugins, false },
};
static size_t tui_n_panes = 5;

size_t tui_pane_count(void)
{
	return tui_n_panes;
}

const struct tui_pane *tui_pane_at(size_t i)
{
	return i < tui_n_panes ? &tui_panes[i] : NULL;
}

int tui_pane_register(const struct tui_pane *p)
{
	if (tui_n_panes == TUI_MAX_PANES || tui_pane_find(p->name) >= 0)
		return KVS_ERANGE;
	tui_panes[tui_n_panes++] = *p;
	return KVS_OK;
}

int tui_pane_find(const char *name)
{
	for (size_t i = 0; i < tui_n_panes; i++)
		if (strcmp(tui_panes[i].name, name) == 0)
			return (int)i;
	return -1;
}

void tui_layout(const struct tui *t, int w, int h, int input_rows, struct tui_layout *l)
{
	int body;

	memset(l, 0, sizeof *l);
	if (input_rows < 1)
		input_rows = 1;
	if (input_rows > 5)
		input_rows = 5;
	if (w < 1 || h < 1)
		return;
	l->status = (struct tui_rect){ 0, h - 1, w, 1 };
	if (h < 2 + input_rows) {
		/* too small for anything but the status line and maybe the input */
		if (h >= 2)
			l->input = (struct tui_rect){ 0, h - 2, w, 1 };
		l->tabs = true;
		return;
	}
	l->input = (struct tui_rect){ 0, h - 1 - input_rows, w, input_rows };
	l->gauge = (struct tui_rect){ 0, l->input.y - 1, w, 1 };
	body = l->gauge.y; /* rows 0 .. body-1 */
	l->tabs = !(w >= TUI_WIDE_W && h >= TUI_WIDE_H);
	if (l->tabs) {
		int tab = t->tab >= 0 && (size_t)t->tab < tui_n_panes ? t->tab : 0;
		l->tabbar = (struct tui_rect){ 0, 0, w, body > 0 ? 1 : 0 };
		if (body > 1)
			l->pane[tab] = (struct tui_rect){ 0, 1, w, body - 1 };
		return;
	}
	int strip_h = 7;
	int top = body - strip_h;
	int chat_w = w * 11 / 20;
	int att_h = top * 3 / 5;
	l->pane[0] = (struct tui_rect){ 0, 0, chat_w, top };
	l->pane[3] = (struct tui_rect){ 0, top, w, strip_h };
	if (t->tab >= 4 && (size_t)t->tab < tui_n_panes && t->tab < TUI_MAX_PANES) {
		/* a pane beyond the built-ins (plugins, a plugin's own) takes the
		 * right column until F2-F5 or :pane bring attention and memory back */
		if (tui_panes[t->tab].wide) { /* :compare's two sides want the whole width */
			l->pane[0] = (struct tui_rect){ 0 };
			l->pane[t->tab] = (struct tui_rect){ 0, 0, w, top };
		} else
			l->pane[t->tab] = (struct tui_rect){ chat_w, 0, w - chat_w, top };
		return;
	}
	l->pane[1] = (struct tui_rect){ chat_w, 0, w - chat_w, att_h };
	l->pane[2] = (struct tui_rect){ chat_w, att_h, w - chat_w, top - att_h };
}

/* ------------------------------------------------------------- chat */

/* Rows of the chat laid out at one width, bottom-aligned by the caller. */
struct rows {
	struct tui_cell *c; /* (n, w) */
	int n, cap, w;
	int x; /* column in the last row */
};

static void rows_newline(struct rows *rw)
{
	if (rw->n == rw->cap) {
		rw->cap = rw->cap ? rw->cap * 2 : 64;
		rw->c = xreallocarray(rw->c, (size_t)rw->cap * (size_t)rw->w, sizeof *rw->c);
	}
	for (int x = 0; x < rw->w; x++)
		rw->c[(size_t)rw->n * rw->w + x] = (struct tui_cell){ ' ', R_NORMAL };
	rw->n++;
	rw->x = 0;
}

/* Append text to the rows, wrapping at the width between words (newlines
 * start a row). */
static void rows_text(struct rows *rw, const char *s, enum tui_role role, int indent)
{
	size_t len = strlen(s), i = 0;

	if (rw->n == 0)
		rows_newline(rw);
	while (i < len) {
		uint32_t cp;
		size_t k = utf8_decode((const uint8_t *)s + i, len - i, &cp);
		if (k == 0) {
			k = 1;
			cp = '?';
		}
		i += k;
		if (cp == '\n') {
			rows_newline(rw);
			rw->x = indent;
			continue;
		}
		if (cp == '\r')
			continue;
		if (cp == '\t')
			cp = ' ';
		int cw = tui_text_width(s + i - k, k);
		if (cw == 0)
			continue;
		if (cp < 0x20 || cw < 0)
			cp = '?';
		if (rw->x + cw > rw->w) {
			/* word wrap: a word begun on this row moves to the next whole,
			 * unless it fills the row (then it breaks where it must) */
			int end = rw->x, sp = -1;
			if (cp != ' ') {
				const struct tui_cell *row = &rw->c[(size_t)(rw->n - 1) * rw->w];
				for (int j = end - 1; j > indent; j--)
					if (row[j].cp == ' ') {
						sp = j;
						break;
					}
			}
			rows_newline(rw);
			rw->x = indent;
			if (sp > indent) {
				struct tui_cell *prev = &rw->c[(size_t)(rw->n - 2) * rw->w];
				struct tui_cell *cur = &rw->c[(size_t)(rw->n - 1) * rw->w];
				int wl = end - sp - 1;
				memcpy(cur + indent, prev + sp + 1, (size_t)wl * sizeof *cur);
				for (int j = sp + 1; j < end; j++)
					prev[j] = (struct tui_cell){ ' ', R_NORMAL };
				rw->x = indent + wl;
			}
			if (cp == ' ')
				continue;
		}
		if (rw->x + cw > rw->w)
			continue; /* wider than the pane */
		rw->c[(size_t)(rw->n - 1) * rw->w + rw->x] = (struct tui_cell){ cp, (uint8_t)role };
		if (cw == 2)
			rw->c[(size_t)(rw->n - 1) * rw->w + rw->x + 1] = (struct tui_cell){ 0, (uint8_t)role };
		rw->x += cw;
	}
}

/* Lay out message i on rows of its own (every message starts a row). */
static void chat_msg_rows(const struct tui *t, const struct tui_grid *g, uint32_t i,
                          struct rows *rw)
{
	const struct tui_msg *m = &t->msgs[i];

	switch (m->kind) {
	case MSG_SYSTEM: rows_text(rw, "system> ", R_SYSTEM, 2); break;
	case MSG_USER: rows_text(rw, "you> ", R_USER, 2); break;
	case MSG_ASSISTANT: rows_text(rw, "model> ", R_TITLE, 2); break;
	case MSG_BANNER: rows_text(rw, g->ascii ? "!! " : "\xe2\x96\xb2 ", R_BANNER, 2); break;
	case MSG_INFO: rows_text(rw, "-- ", R_INFO, 2); break;
	case MSG_RULE: rows_text(rw, g->ascii ? "-- " : "\xe2\x94\x80\xe2\x94\x80 ", R_DIM, 0); break;
	}
	for (uint32_t j = 0; j < m->n_spans; j++) {
		enum tui_role role = m->kind == MSG_SYSTEM ? R_SYSTEM
		        : m->kind == MSG_USER              ? R_USER
		        : m->kind == MSG_BANNER            ? R_BANNER
		        : m->kind == MSG_INFO              ? R_INFO
		        : m->kind == MSG_RULE              ? R_DIM
		                              : R_SURP0 + tui_surp_level(m->spans[j].surprisal);
		rows_text(rw, m->spans[j].text, role, 2);
	}
	if (m->kind == MSG_RULE) {
		rows_text(rw, g->ascii ? " --" : " \xe2\x94\x80\xe2\x94\x80", R_DIM, 0);
	} else if (m->kind == MSG_ASSISTANT && m->stop[0] != '\0') {
		char buf[40];
		snprintf(buf, sizeof buf, " [%s]", m->stop);
		rows_text(rw, buf, R_DIM, 2);
	} else if (m->kind == MSG_ASSISTANT && t->busy && i == t->n_msgs - 1) {
		rows_text(rw, g->ascii ? "_" : "\xe2\x96\x8f", R_DIM, 2);
	}
	if (rw->n == 0)
		rows_newline(rw);
}

/* Show where text occurs in a message's rows (within a row; ASCII case
 * ignored). */
static void chat_mark(struct rows *rw, const char *text)
{
	size_t n = strlen(text);

	for (int y = 0; n > 0 && y < rw->n; y++) {
		struct tui_cell *row = &rw->c[(size_t)y * rw->w];
		for (int x = 0; x + (int)n <= rw->w; x++) {
			size_t k = 0;
			while (k < n && row[x + (int)k].cp < 0x80 &&
			       tolower((int)row[x + (int)k].cp) == tolower((unsigned char)text[k]))
				k++;
			if (k < n)
				continue;
			for (k = 0; k < n; k++)
				row[x + (int)k].role = R_SELECTED;
		}
	}
}

/* The chat is laid out from its newest message back, only as far as the
 * rows shown and the scroll offset reach: a resumed session's transcript
 * of a thousand turns costs a frame what its last screenful costs, and
 * only scrolling to its top lays it all out. */
static void pane_chat(struct tui *t, struct tui_grid *g, struct tui_rect box)
{
	struct tui_rect r = tui_grid_box(g, box, "Chat", false);
	struct rows *blk = NULL; /* (n_blk) messages' rows, newest first */
	uint32_t n_blk = 0;
	int x, total = 0;

	if (r.w < 4 || r.h < 2)
		return;
	/* legend */
	x = r.x + tui_grid_text(g, r, r.x, r.y, R_DIM, "surprisal: low ", strlen("surprisal: low "));
	for (int l = 0; l < TUI_SURP_LEVELS; l++) {
		tui_grid_put(g, x++, r.y, g->ascii ? (uint32_t)('1' + l) : 0x25a0, R_SURP0 + l);
		x++;
	}
	tui_grid_text(g, r, x, r.y, R_DIM, "high", strlen("high"));
	int view_h = r.h - 1;
	if (t->chat_scroll < 0)
		t->chat_scroll = 0;
	blk = xcalloc(t->n_msgs ? t->n_msgs : 1, sizeof *blk);
	if (t->n_msgs == 0) {
		blk[0].w = r.w;
		rows_text(&blk[0],
		          "Type a message and press Enter; ':help' lists the commands, F1 the keys.",
		          R_INFO, 0);
		total = blk[0].n;
		n_blk = 1;
	}
	bool jump = t->chat_jump && t->chat_hit >= 0 && (uint32_t)t->chat_hit < t->n_msgs;
	int hit_total = 0; /* rows from the bottom to the hit's first */
	for (uint32_t i = t->n_msgs;
	     i-- > 0 && (total < view_h + t->chat_scroll || (jump && (int32_t)i >= t->chat_hit));) {
		blk[n_blk].w = r.w;
		chat_msg_rows(t, g, i, &blk[n_blk]);
		if ((int32_t)i == t->chat_hit)
			chat_mark(&blk[n_blk], t->chat_find);
		total += blk[n_blk++].n;
		if ((int32_t)i == t->chat_hit)
			hit_total = total;
	}
	if (jump) {
		/* the search hit's first row at the top of the pane */
		t->chat_scroll = KVS_MAX(hit_total - view_h, 0);
		t->chat_jump = false;
	}
	/* everything laid out and still short of the offset: clamp it */
	int max_scroll = total > view_h ? total - view_h : 0;
	if (t->chat_scroll > max_scroll)
		t->chat_scroll = max_scroll;
	/* row 0 is the oldest laid-out message's first row */
	int first = total - view_h - t->chat_scroll, row = 0;
	for (uint32_t b = n_blk; b-- > 0;) {
		for (int k = 0; k < blk[b].n; k++, row++) {
			int y = row - first;
			if (y < 0 || y >= view_h)
				continue;
			memcpy(&g->c[(r.y + 1 + y) * g->w + r.x], &blk[b].c[(size_t)k * blk[b].w],
			       (size_t)r.w * sizeof *g->c);
		}
		free(blk[b].c);
	}
	free(blk);
	if (t->chat_scroll > 0)
		tui_grid_printf(g, box, box.x + box.w - 30, box.y + box.h - 1, R_TITLE,
		                " scrolled %d up, Esc: bottom ", t->chat_scroll);
}

/* ----------------------------------------------------------- memory */

static void spark(struct tui_grid *g, struct tui_rect r, int x, int y, const float *v, uint32_t n)
{
	float mx = 0;
	int w = r.x + r.w - x;
	uint32_t from;

	if (w <= 0 || n == 0)
		return;
	from = n > (uint32_t)w ? n - (uint32_t)w : 0;
	for (uint32_t i = from; i < n; i++)
		mx = v[i] > mx ? v[i] : mx;
	for (uint32_t i = from; i < n; i++) {
		int l = mx > 0 ? (int)(v[i] / mx * 7.0f + 0.5f) : 0;
		tui_grid_put(g, x + (int)(i - from), y, tui_glyph_spark(g, l), R_SPARK);
	}
}

static void pane_memory(struct tui *t, struct tui_grid *g, struct tui_rect box)
{
	struct tui_rect r = tui_grid_box(g, box, "KV memory", false);
	const struct kv_stats *st = &t->stats;
	struct tui_regions rg;
	int y = r.y, x, bar_w;

	if (r.w < 8 || r.h < 1)
		return;
	tui_grid_printf(g, r, r.x, y++, R_TITLE, "policy %s", t->policy[0] ? t->policy : "?");
	x = r.x + tui_grid_printf(g, r, r.x, y, R_NORMAL, "budget ");
	bar_w = r.w - 34;
	if (bar_w > 60)
		bar_w = 60;
	if (bar_w > 4) {
		uint32_t budget = st->budget ? st->budget : st->n_ctx;
		int fill = budget ? (int)((uint64_t)st->n_cached * (uint64_t)bar_w / budget) : 0;
		for (int i = 0; i < bar_w; i++)
			tui_grid_put(g, x + i, y, tui_glyph_bar(g, i < fill),
			             i < fill ? R_BAR_FILL : R_BAR_EMPTY);
		x += bar_w + 1;
	}
	tui_grid_printf(g, r, x, y++, R_NORMAL, "%u/%u tokens (ctx %u)", st->n_cached, st->budget,
	                st->n_ctx);
	tui_regions(t, &rg);
	x = r.x + tui_grid_text(g, r, r.x, y, R_NORMAL, "regions ", strlen("regions "));
	x += tui_grid_printf(g, r, x, y, R_SINK, "sink %u", st->n_sink);
	x += tui_grid_text(g, r, x, y, R_NORMAL, " ", strlen(" "));
	x += tui_grid_printf(g, r, x, y, R_KEY, "key %u", st->n_key);
	x += tui_grid_text(g, r, x, y, R_NORMAL, " ", strlen(" "));
	x += tui_grid_printf(g, r, x, y, R_KEPT, "recent %u", st->n_recent);
	x += tui_grid_text(g, r, x, y, R_NORMAL, " ", strlen(" "));
	x += tui_grid_printf(g, r, x, y, R_PINNED, "pinned %u", st->n_pinned);
	x += tui_grid_text(g, r, x, y, R_NORMAL, " ", strlen(" "));
	if (st->n_doc > 0) { /* the pinned document: a region of its own */
		x += tui_grid_printf(g, r, x, y, R_DOC, "document %u", st->n_doc);
		x += tui_grid_text(g, r, x, y, R_NORMAL, " ", strlen(" "));
	}
	if (rg.recalled > 0 || t->cold_on) {
		x += tui_grid_printf(g, r, x, y, R_RECALLED, "recalled %u", rg.recalled);
		x += tui_grid_text(g, r, x, y, R_NORMAL, " ", strlen(" "));
	}
	tui_grid_printf(g, r, x, y++, R_EVICTED, "evicted %llu in %u round%s",
	                (unsigned long long)st->n_evicted, st->n_evictions,
	                st->n_evictions == 1 ? "" : "s");
	if (t->cold_on && y < r.y + r.h)
		tui_grid_printf(g, r, r.x, y++, R_RECALLED,
		                "cold tier%s: %llu tokens written, %llu recalled in %u block%s%s",
		                t->cold_temp ? " (temporary database)" : "",
		                (unsigned long long)t->cold_written, (unsigned long long)t->cold_recalled,
		                t->n_recalls, t->n_recalls == 1 ? "" : "s",
		                t->cold_stopped ? "; writes stopped" : "");
	{
		/* one line where it fits, else two: never cut */
		char b1[96], b2[96];
		snprintf(b1, sizeof b1, "bytes %.2f MiB (peak %.2f of %.1f MiB)",
		         (double)st->bytes / 1048576.0, (double)st->bytes_peak / 1048576.0,
		         (double)st->bytes_allocated / 1048576.0);
		snprintf(b2, sizeof b2, "%.1f KiB per layer x %u, %.1f KiB/token",
		         (double)st->bytes_per_layer / 1024.0, t->n_layer,
		         (double)st->bytes_per_token / 1024.0);
		if ((int)(strlen(b1) + 2 + strlen(b2)) <= r.w) {
			tui_grid_printf(g, r, r.x, y++, R_NORMAL, "%s, %s", b1, b2);
		} else {
			tui_grid_printf(g, r, r.x, y++, R_NORMAL, "%s", b1);
			tui_grid_printf(g, r, r.x, y++, R_NORMAL, "      %s", b2);
		}
	}
	if (y < r.y + r.h && st->n_head_sets > 0)
		tui_grid_printf(g, r, r.x, y++, R_NORMAL,
		                "per-head keep-sets: %u (layer, KV head) sets, the fullest keeps %u "
		                "(budget %u); kept entries %.2f MiB of the %.2f held",
		                st->n_head_sets, st->heads_load, st->budget,
		                (double)st->bytes_entries / 1048576.0, (double)st->bytes / 1048576.0);
	if (y < r.y + r.h && st->n_zip_reads > 0)
		tui_grid_printf(g, r, r.x, y++, R_NORMAL, "kvzip: %llu re-read%s, %llu tokens",
		                (unsigned long long)st->n_zip_reads, st->n_zip_reads == 1 ? "" : "s",
		                (unsigned long long)st->n_zip_tokens);
	if (y < r.y + r.h) {
		x = r.x + tui_grid_printf(g, r, r.x, y, R_NORMAL, "cache  %5u ", st->n_cached);
		spark(g, r, x, y++, t->spark_cache, t->n_spark);
	}
	if (y < r.y + r.h) {
		x = r.x + tui_grid_printf(g, r, r.x, y, R_NORMAL, "tok/s  %5.0f ", t->decode_tps);
		spark(g, r, x, y++, t->spark_tps, t->n_spark);
	}
	if (y < r.y + r.h && st->keys_dense > 0 && st->keys_read < st->keys_dense)
		tui_grid_printf(g, r, r.x, y++, R_NORMAL, "sparse: the last step read %.1f %% of the keys",
		                100.0 * (double)st->keys_read / (double)st->keys_dense);
	if (y < r.y + r.h && st->n_fallbacks > 0)
		tui_grid_printf(g, r, r.x, y++, R_STATUS_ERR, "score provider fell back %u time%s",
		                st->n_fallbacks, st->n_fallbacks == 1 ? "" : "s");
}

/* -------------------------------------------------------- retention */

static void hit_add(struct tui *t, int x, int y, int w, int32_t pos)
{
	if (t->n_hits == t->cap_hits) {
		t->cap_hits = t->cap_hits ? t->cap_hits * 2 : 256;
		t->hits = xreallocarray(t->hits, t->cap_hits, sizeof *t->hits);
	}
	t->hits[t->n_hits++] = (struct tui_hit){ (int16_t)x, (int16_t)y, (int16_t)w, pos };
}

static enum tui_role tok_role(const struct tui *t, const struct tui_tok *x, int32_t pos)
{
	const struct tui_step *q = t->step_back > 0 ? tui_step_shown(t) : NULL;

	if (pos == t->sel_tok)
		return R_SELECTED;
	if (q != NULL && pos == q->query.orig_pos)
		return R_TITLE; /* the attention pane's past query (Shift-Up) */
	if (x->evicted && !x->cached)
		return R_EVICTED;
	if (x->cached && (x->t.flags & KV_FLAG_RECALLED))
		return R_RECALLED;
	if (x->t.flags & KV_FLAG_DOC)
		return R_DOC;
	if (x->t.flags & KV_FLAG_PINNED)
		return R_PINNED;
	if (x->t.flags & KV_FLAG_SINK)
		return R_SINK;
	if (x->t.flags & KV_FLAG_KEY)
		return R_KEY;
	return R_KEPT;
}

/* A token's text for the strip: newlines and tabs as visible marks. */
void tui_tok_label(const struct tui_grid *g, const struct tui_tok *x, char *out, size_t cap)
{
	size_t n = 0;
	for (const char *p = x->text; *p && n + 4 < cap; p++) {
		if (*p == '\n') {
			const char *m = g->ascii ? "~" : "\xe2\x8f\x8e";
			memcpy(out + n, m, strlen(m));
			n += strlen(m);
		} else if ((unsigned char)*p < 0x20) {
			out[n++] = '?';
		} else {
			out[n++] = *p;
		}
	}
	if (n == 0)
		out[n++] = g->ascii ? '_' : ' ';
	out[n] = '\0';
}

/* v as text, "-" when unknown (NaN: no score under this policy, no stats). */
static const char *num(char *buf, size_t cap, float v)
{
	if (isnan(v))
		snprintf(buf, cap, "-");
	else
		snprintf(buf, cap, "%.3g", (double)v);
	return buf;
}

static void pane_retention(struct tui *t, struct tui_grid *g, struct tui_rect box)
{
	struct tui_rect r = tui_grid_box(g, box, "Retention", false);
	int strip_h = r.h - 1, first, n_rows = 0;
	char lab[64];

	t->n_hits = 0;
	if (r.w < 8 || r.h < 2)
		return;
	/* a cached token under per-head keep-sets: its map of heads above the details */
	int hk_rows = 0;
	if (t->sel_tok >= 0 && (uint32_t)t->sel_tok < t->n_toks && t->toks[t->sel_tok].cached)
		hk_rows = tui_heads_rows(t, t->sel_tok, r.h - 3);
	strip_h -= hk_rows;
	/* lay out every token in rows, then show the rows that hold the
	 * selection (or the most recent ones) */
	int *row_of = xmallocarray(t->n_toks + 1, sizeof *row_of);
	int *col_of = xmallocarray(t->n_toks + 1, sizeof *col_of);
	int x = 0, row = 0;
	for (uint32_t i = 0; i < t->n_toks; i++) {
		row_of[i] = -1;
		if (!t->toks[i].known)
			continue;
		tui_tok_label(g, &t->toks[i], lab, sizeof lab);
		int w = tui_text_width(lab, strlen(lab));
		if (w > r.w)
			w = r.w;
		if (x + w > r.w) {
			row++;
			x = 0;
		}
		row_of[i] = row;
		col_of[i] = x;
		x += w;
	}
	n_rows = t->n_toks ? row + 1 : 0;
	first = n_rows > strip_h ? n_rows - strip_h : 0;
	if (t->sel_tok >= 0 && (uint32_t)t->sel_tok < t->n_toks && row_of[t->sel_tok] >= 0) {
		int sr = row_of[t->sel_tok];
		if (sr < first)
			first = sr;
		if (sr >= first + strip_h)
			first = sr - strip_h + 1;
	}
	t->strip = r;
	t->strip_page = 0;
	for (uint32_t i = 0; i < t->n_toks; i++) {
		if (row_of[i] < first || row_of[i] >= first + strip_h)
			continue;
		const struct tui_tok *tk = &t->toks[i];
		tui_tok_label(g, tk, lab, sizeof lab);
		int y = r.y + row_of[i] - first;
		int w = tui_grid_text(g, r, r.x + col_of[i], y, tok_role(t, tk, (int32_t)i), lab,
		                      strlen(lab));
		hit_add(t, r.x + col_of[i], y, w, (int32_t)i);
		t->strip_page++;
	}
	free(row_of);
	free(col_of);
	tui_heads_draw(t, g, r, r.y + strip_h, hk_rows, t->sel_tok);
	/* the details line */
	int y = r.y + r.h - 1;
	if (t->sel_tok >= 0 && (uint32_t)t->sel_tok < t->n_toks && t->toks[t->sel_tok].known) {
		const struct tui_tok *tk = &t->toks[t->sel_tok];
		char why[112], sc[24], su[24];
		num(sc, sizeof sc, tk->t.score);
		num(su, sizeof su, tk->t.surprisal);
		if (tk->evicted && !tk->cached)
			snprintf(why, sizeof why, "evicted by %s (%s), final score %s",
			         tk->evict_policy[0] ? tk->evict_policy : "?",
			         kv_evict_cause_name((enum kv_evict_cause)tk->evict_cause), sc);
		else if (tk->t.flags & KV_FLAG_RECALLED)
			tui_cold_why(t, tk->t.orig_pos, why, sizeof why);
		else if (tk->t.flags & KV_FLAG_DOC)
			snprintf(why, sizeof why, "kept: the pinned document (:doc)");
		else if (tk->t.flags & KV_FLAG_PINNED)
			snprintf(why, sizeof why, "kept: pinned by you");
		else if (tk->t.flags & KV_FLAG_SINK)
			snprintf(why, sizeof why, "kept: attention sink");
		else if (tk->t.flags & KV_FLAG_KEY)
			snprintf(why, sizeof why, "kept: key token (score %s)", sc);
		else
			snprintf(why, sizeof why, "kept: in the recent window");
		if (tk->cached && tk->t.n_heads > 0 && t->stats.n_head_sets > 0) {
			/* per-head keep-sets: how many (layer, KV head) pairs keep it */
			size_t o = strlen(why);
			snprintf(why + o, sizeof why - o, ", by %u/%u heads", tk->t.n_heads,
			         t->stats.n_head_sets);
		}
		char where[48];
		if (tk->cached) {
			/* cache index: cached tokens before it (cache order is stream order) */
			uint32_t ci = 0;
			for (int32_t i = 0; i < t->sel_tok; i++)
				ci += t->toks[i].known && t->toks[i].cached;
			snprintf(where, sizeof where, "cache index %u, rope pos %d", ci, tk->t.pos);
		} else {
			snprintf(where, sizeof where, "not cached");
		}
		tui_tok_label(g, tk, lab, sizeof lab);
		tui_grid_printf(
		        g, r, r.x, y, R_TITLE,
		        "#%d id %d '%s' turn %u %s  original pos %d, %s  surprisal %s  score %s  %s",
		        tk->t.orig_pos, tk->t.token, lab, tk->t.turn,
		        kv_role_name((enum kv_role)tk->t.role), tk->t.orig_pos, where, su, sc, why);
	} else {
		int x2 = r.x +
		        tui_grid_printf(g, r, r.x, y, R_DIM, "%u token%s: ", t->n_toks,
		                        t->n_toks == 1 ? "" : "s");
		x2 += tui_grid_text(g, r, x2, y, R_KEPT, "kept ", strlen("kept "));
		x2 += tui_grid_text(g, r, x2, y, R_EVICTED, "evicted ", strlen("evicted "));
		x2 += tui_grid_text(g, r, x2, y, R_SINK, "sink", strlen("sink"));
		x2 += tui_grid_text(g, r, x2, y, R_DIM, " ", strlen(" "));
		x2 += tui_grid_text(g, r, x2, y, R_KEY, "key", strlen("key"));
		x2 += tui_grid_text(g, r, x2, y, R_DIM, " ", strlen(" "));
		x2 += tui_grid_text(g, r, x2, y, R_PINNED, "pinned", strlen("pinned"));
		x2 += tui_grid_text(g, r, x2, y, R_DIM, " ", strlen(" "));
		x2 += tui_grid_text(g, r, x2, y, R_DOC, "doc", strlen("doc"));
		if (t->cold_on || t->n_recalls > 0) {
			x2 += tui_grid_text(g, r, x2, y, R_DIM, " ", strlen(" "));
			x2 += tui_grid_text(g, r, x2, y, R_RECALLED, "recalled", strlen("recalled"));
		}
		static const char hint[] =
		        "   Shift-Left/Right, a click or :find selects a token; Esc lets go";
		tui_grid_text(g, r, x2, y, R_DIM, hint, strlen(hint));
	}
}

void tui_click(struct tui *t, const struct tui_grid *g, int x, int y)
{
	int32_t p = tui_hit_token(t, g, x, y);
	const struct tui_rect *r = &t->strip, *c = &t->grid.cells;

	if (x >= c->x && x < c->x + c->w && y >= c->y && y < c->y + c->h && t->grid.n_keys > 0) {
		/* a grid cell: its key (the first of its bin) and its query's step */
		t->sel_tok = t->grid.pos[(uint64_t)(x - c->x) * t->grid.n_keys / (uint32_t)c->w];
		t->step_back = t->grid.back[y - c->y];
		return;
	}

	if (p >= 0 && p != t->sel_tok)
		t->sel_tok = p;
	else if (p >= 0 || (x >= r->x && x < r->x + r->w && y >= r->y && y < r->y + r->h))
		tui_select(t, SEL_OFF); /* the selected token again, or beside the tokens */
}

void tui_wheel(struct tui *t, int x, int y, int dir)
{
	const struct tui_rect *r = &t->strip;

	if (t->help) {
		t->help_scroll = KVS_MAX(t->help_scroll - 3 * dir, 0);
	} else if (x >= r->x && x < r->x + r->w && y >= r->y && y < r->y + r->h) {
		for (int i = 0; i < 3; i++)
			tui_select(t, dir > 0 ? SEL_PREV : SEL_NEXT);
	} else {
		t->chat_scroll = KVS_MAX(t->chat_scroll + 3 * dir, 0);
	}
}

int32_t tui_hit_token(const struct tui *t, const struct tui_grid *g, int x, int y)
{
	(void)g;
	for (uint32_t i = 0; i < t->n_hits; i++)
		if (t->hits[i].y == y && x >= t->hits[i].x && x < t->hits[i].x + t->hits[i].w)
			return t->hits[i].pos;
	return -1;
}

/* ---------------------------------------------------------- plugins */

/* The plugins' views (plain data from the script layer): text lines, bars
 * and heatmaps, one view after the other. */
static void pane_plugins(struct tui *t, struct tui_grid *g, struct tui_rect box)
{
	struct tui_rect r = tui_grid_box(g, box, "Plugins", false);
	int y = r.y;
	size_t nv;

	if (r.w < 8 || r.h < 1)
		return;
	if (t->rt == NULL) {
		tui_grid_printf(g, r, r.x, y, R_INFO, "Lua plugins are not available (%s)",
		                script_available() ? "the runtime did not start" : "built without Lua");
		return;
	}
	nv = script_view_count(t->rt);
	if (nv == 0)
		tui_grid_printf(g, r, r.x, y++, R_INFO,
		                "no plugin views: :plugin load NAME, or a plugin's kvscope.view(...)");
	for (size_t v = 0; v < nv && y < r.y + r.h; v++) {
		const struct script_view *sv = script_view_at(t->rt, v);
		tui_grid_printf(g, r, r.x, y++, R_TITLE, "%s (%s)", sv->name,
		                sv->plugin ? sv->plugin : "?");
		for (size_t i = 0; i < sv->n_items && y < r.y + r.h; i++) {
			const struct script_item *it = &sv->items[i];
			int x = r.x + 2;
			if (it->kind == SCRIPT_ITEM_TEXT) {
				tui_grid_printf(g, r, x, y++, R_NORMAL, "%s", it->text ? it->text : "");
			} else if (it->kind == SCRIPT_ITEM_BAR) {
				int bw = r.w - 30, fill;
				x += tui_grid_printf(g, r, x, y, R_NORMAL, "%-12.12s ", it->text ? it->text : "");
				if (bw > 40)
					bw = 40;
				fill = it->max > 0 && bw > 0 ? (int)(it->value / it->max * bw + 0.5) : 0;
				for (int k = 0; k < bw; k++)
					tui_grid_put(g, x + k, y, tui_glyph_bar(g, k < fill),
					             k < fill ? R_BAR_FILL : R_BAR_EMPTY);
				/* the value alone: a histogram's longest bar read "346/346" */
				tui_grid_printf(g, r, x + KVS_MAX(bw, 0) + 1, y++, R_NORMAL, "%g", it->value);
			} else {
				tui_grid_printf(g, r, x, y++, R_DIM, "%s", it->text ? it->text : "");
				for (uint32_t row = 0; row < it->rows && y < r.y + r.h; row++, y++)
					for (uint32_t col = 0; col < it->cols && (int)col < r.w - 2; col++) {
						float cv = it->cells[(size_t)row * it->cols + col];
						float f = it->hi > it->lo ? (cv - it->lo) / (it->hi - it->lo) : 0;
						int l = (int)(f * (TUI_HEAT_LEVELS - 1) + 0.5f);
						l = l < 0 ? 0 : l >= TUI_HEAT_LEVELS ? TUI_HEAT_LEVELS - 1 : l;
						tui_grid_put(g, x + (int)col, y, tui_glyph_heat(g, KVS_MAX(l, 1)),
						             R_HEAT0 + l);
					}
			}
		}
	}
}

void tui_draw(struct tui *t, struct tui_grid *g, const char *input, size_t cursor, int *cx, int *cy)
{
	struct tui_layout l;
	int rows = 1;

	for (const char *p = input; *p; p++)
		rows += *p == '\n';
	tui_grid_clear(g);
	tui_layout(t, g->w, g->h, rows, &l);
	t->n_hits = 0;
	t->strip = (struct tui_rect){ 0, 0, 0, 0 };
	t->grid.cells = (struct tui_rect){ 0, 0, 0, 0 };
	if (l.tabs && l.tabbar.h > 0) {
		int x = 0;
		tui_grid_fill(g, l.tabbar, ' ', R_TAB);
		for (size_t i = 0; i < tui_n_panes; i++) {
			char lab[48];
			if (i < 4)
				snprintf(lab, sizeof lab, " F%zu %s ", i + 2, tui_panes[i].title);
			else if (i == 4)
				snprintf(lab, sizeof lab, " F12 %s ", tui_panes[i].title);
			else
				snprintf(lab, sizeof lab, " %s ", tui_panes[i].title); /* :pane NAME */
			x += tui_grid_text(g, l.tabbar, x, 0, (int)i == t->tab ? R_TAB_ACTIVE : R_TAB, lab,
			                   strlen(lab));
			x++;
		}
	}
	for (size_t i = 0; i < tui_n_panes && i < TUI_MAX_PANES; i++)
		if (l.pane[i].w > 0 && l.pane[i].h > 0)
			tui_panes[i].draw(t, g, l.pane[i]);
	if (l.gauge.w > 0)
		chrome_gauge(t, g, l.gauge);
	*cx = *cy = 0;
	if (l.input.w > 0 && l.input.h > 0)
		chrome_input(g, l.input, input, cursor, cx, cy);
	chrome_status(t, g, l.status);
	if (t->help)
		chrome_help(t, g);
}
