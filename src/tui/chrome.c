/*
 * chrome.c: what surrounds the panes: the length gauge, the input line (one
 * row per line of a multi-line input), the status line and the help
 * overlay. The status line is a registry of items like the panes' (plugins
 * may add items); when the items do not fit, the lowest-ranked go first,
 * so a message is never cut mid-word. Everything draws clipped to its
 * rectangle.
 */
#include "tui/tui-int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* The length gauge: the words (or tokens) of the turn against the target
 * the reply was made under, whether it landed in the window, the stop
 * reason. Where the long form does not fit, a short one (never a cut
 * stop reason). */
void chrome_gauge(struct tui *t, struct tui_grid *g, struct tui_rect r)
{
	char len[160], judge[32] = "", stop[48] = "", tb[96];
	const struct len_target *lt = t->busy || !t->last_stop[0] ? &t->len : &t->reply_len;
	bool hit = false;

	tui_grid_fill(g, r, g->ascii ? '-' : 0x2500, R_BORDER);
	for (int pass = 0; pass < 2; pass++) {
		bool brief = pass == 1;
		if (lt->unit != LEN_NONE) {
			uint32_t have = lt->unit == LEN_WORDS ? t->turn_words : t->turn_tokens;
			const char *u = lt->unit == LEN_WORDS ? "word" : "token";
			hit = len_window_hit(lt->win, have);
			snprintf(len, sizeof len, brief ? " %u %s%s of %s " : " length %u %s%s of target %s ",
			         have, u, have == 1 ? "" : "s", len_target_format(lt, tb, sizeof tb));
			if (!t->busy && t->last_stop[0])
				snprintf(judge, sizeof judge, " %s ",
				         hit ? (brief ? "in" : "in the window")
				             : (brief ? "out" : "outside the window"));
		} else {
			snprintf(len, sizeof len, brief ? " %u word%s " : " length %u word%s (no target) ",
			         t->turn_words, t->turn_words == 1 ? "" : "s");
		}
		if (t->last_stop[0] && !t->busy)
			snprintf(stop, sizeof stop, " stop: %s ", t->last_stop);
		else if (t->busy)
			snprintf(stop, sizeof stop, brief ? " generating " : " generating (Ctrl-C stops) ");
		if ((int)(strlen(len) + strlen(judge) + strlen(stop)) + 2 <= r.w)
			break;
	}
	int x = r.x + 1;
	x += tui_grid_text(g, r, x, r.y, R_TITLE, len, strlen(len));
	if (judge[0])
		x += tui_grid_text(g, r, x, r.y, hit ? R_BAR_FILL : R_STATUS_ERR, judge, strlen(judge));
	x += tui_grid_text(g, r, x, r.y, R_NORMAL, stop, strlen(stop));
	if (lt != &t->len) {
		/* :len after the reply: it is judged by its own target, the new one
		 * waits for the next reply */
		char a[96], b[96];
		len_target_format(&t->reply_len, a, sizeof a);
		len_target_format(&t->len, b, sizeof b);
		if (strcmp(a, b) != 0)
			tui_grid_printf(g, r, x, r.y, R_DIM, " next replies: target %s ", b);
	}
}

/* ---- status items: a registry like the panes' ---- */

static void st_model(const struct tui *t, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s", t->model);
}

static void st_backend(const struct tui *t, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s", t->backend);
}

static void st_speed(const struct tui *t, char *buf, size_t cap)
{
	snprintf(buf, cap, "prefill %.0f tok/s | decode %.0f tok/s", t->prefill_tps, t->decode_tps);
}

static void st_ctx(const struct tui *t, char *buf, size_t cap)
{
	snprintf(buf, cap, "ctx %u/%u", t->stats.n_cached, t->stats.budget);
}

static void st_policy(const struct tui *t, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s", t->policy[0] ? t->policy : "?");
}

/* The cold tier, when on: where it lives and what it brought back. */
static void st_cold(const struct tui *t, char *buf, size_t cap)
{
	if (!t->cold_on) {
		buf[0] = '\0';
		return;
	}
	snprintf(buf, cap, "cold tier%s, %llu recalled%s",
	         t->cold_temp ? ": temporary database, deleted at exit" : " on",
	         (unsigned long long)t->cold_recalled, t->cold_stopped ? ", writes stopped" : "");
}

static void st_plugins(const struct tui *t, char *buf, size_t cap)
{
	size_t n, off;
	uint32_t disabled = 0, errors = 0;

	if (t->rt == NULL) {
		snprintf(buf, cap, "%s", t->plugins);
		return;
	}
	n = script_plugin_count(t->rt);
	for (size_t i = 0; i < n; i++) {
		struct script_plugin_info pi;
		script_plugin_at(t->rt, i, &pi);
		disabled += !pi.enabled;
		errors += pi.n_errors;
	}
	off = (size_t)snprintf(buf, cap, "plugins %zu", n);
	if (disabled && off < cap)
		off += (size_t)snprintf(buf + off, cap - off, ", %u disabled", disabled);
	if (errors && off < cap)
		off += (size_t)snprintf(buf + off, cap - off, ", %u error%s", errors,
		                        errors == 1 ? "" : "s");
	/* the plugins' own status items */
	for (size_t i = 0; i < script_status_count(t->rt) && off < cap; i++) {
		const char *plugin;
		const char *txt = script_status_at(t->rt, i, &plugin);
		/* named by their plugin: token-stats' "5 tok/s" is not the decode rate */
		off += (size_t)snprintf(buf + off, cap - off, " | %s: %s", plugin ? plugin : "?", txt);
	}
}

#define TUI_MAX_STATUS 16
static struct tui_status_item tui_status_items[TUI_MAX_STATUS] = {
	{ "model", st_model }, { "backend", st_backend }, { "speed", st_speed },
	{ "context", st_ctx }, { "policy", st_policy },   { "plugins", st_plugins },
	{ "cold", st_cold },
};
static size_t tui_n_status = 7;

int tui_status_register(const struct tui_status_item *it)
{
	if (tui_n_status == TUI_MAX_STATUS)
		return KVS_ERANGE;
	tui_status_items[tui_n_status++] = *it;
	return KVS_OK;
}

/* Which status items go first when the line is short: the higher the
 * sooner kept (items not named here, plugins' own, rank 3). */
static const struct {
	const char *name;
	int rank;
} tui_status_rank[] = {
	{ "context", 6 }, { "cold", 5 },  { "policy", 5 },  { "speed", 4 },
	{ "plugins", 3 }, { "model", 2 }, { "backend", 1 },
};

static int status_rank(const char *name)
{
	for (size_t i = 0; i < KVS_ARRAY_LEN(tui_status_rank); i++)
		if (strcmp(tui_status_rank[i].name, name) == 0)
			return tui_status_rank[i].rank;
	return 3;
}

/* The status line: a message on the left, the items after it. When they
 * do not fit, the lowest-ranked items go first (a long model name never
 * pushes out the context and the policy), then the message is cut with
 * "...". */
void chrome_status(struct tui *t, struct tui_grid *g, struct tui_rect r)
{
	char item[TUI_MAX_STATUS][256], msg[310], buf[1100];
	int iw[TUI_MAX_STATUS], total = 0, n_on = 0, msg_w = 0;
	bool on[TUI_MAX_STATUS];
	size_t n = 0;
	int x = r.x;

	tui_grid_fill(g, r, ' ', R_STATUS);
	for (size_t i = 0; i < tui_n_status; i++) {
		tui_status_items[i].fn(t, item[i], sizeof item[i]);
		on[i] = item[i][0] != '\0';
		iw[i] = on[i] ? tui_text_width(item[i], strlen(item[i])) + 3 : 0; /* " | " */
		total += iw[i];
		n_on += on[i];
	}
	if (t->status[0] != '\0') {
		snprintf(msg, 300, " %s ", t->status); /* room for "... " after a cut */
		msg_w = tui_text_width(msg, strlen(msg));
	}
	/* items go, lowest rank first, until the message fits; the context and
	 * the policy (rank 5 and up) only when not even a third of the line
	 * would be left for it */
	while (msg_w + total > r.w && n_on > 0) {
		int worst = -1;
		for (size_t i = 0; i < tui_n_status; i++)
			if (on[i] &&
			    (worst < 0 ||
			     status_rank(tui_status_items[i].name) < status_rank(tui_status_items[worst].name)))
				worst = (int)i;
		if (status_rank(tui_status_items[worst].name) >= 5 && r.w - total >= r.w / 3)
			break;
		on[worst] = false;
		total -= iw[worst];
		n_on--;
	}
	if (msg_w > 0) {
		int avail = r.w - total;
		if (msg_w > avail && avail > 4) {
			/* cut whole characters, then "..." */
			size_t k = strlen(msg);
			while (k > 0 && tui_text_width(msg, k) > avail - 4)
				k--;
			k = utf8_complete_prefix((const uint8_t *)msg, k);
			memcpy(msg + k, "... ", 5);
		}
		x += tui_grid_text(g, r, x, r.y, t->status_err ? R_STATUS_ERR : R_STATUS, msg, strlen(msg));
	}
	buf[0] = '\0';
	for (size_t i = 0; i < tui_n_status && n < sizeof buf; i++)
		if (on[i])
			n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s", n ? " | " : " ", item[i]);
	tui_grid_text(g, r, x, r.y, R_STATUS, buf, strlen(buf));
}

/* The help over the whole screen but the status line, scrolled to
 * t->help_scroll (clamped here, where the page size is known). */
void chrome_help(struct tui *t, struct tui_grid *g)
{
	struct tui_rect box = { 0, 0, g->w, g->h - 1 }, r;
	char **lines, title[128];
	size_t n;
	int page;

	if (g->w < 10 || box.h < 3)
		return;
	t->help_w = g->w;
	n = tui_help_lines(t->rt, g->w - 2, &lines);
	page = box.h - 2;
	if (t->help_scroll > (int)n - page)
		t->help_scroll = (int)n - page;
	if (t->help_scroll < 0)
		t->help_scroll = 0;
	snprintf(title, sizeof title,
	         "Help %d-%d of %zu (Up/Down/PgUp/PgDn scroll; /TEXT searches; Esc or F1 closes)",
	         t->help_scroll + 1, (int)KVS_MIN((size_t)(t->help_scroll + page), n), n);
	tui_grid_fill(g, box, ' ', R_NORMAL);
	r = tui_grid_box(g, box, title, true);
	for (int i = 0; i < r.h && (size_t)(t->help_scroll + i) < n; i++) {
		const char *l = lines[t->help_scroll + i];
		bool head = l[0] != ' ' && l[0] != '\0';
		bool found = t->help_find[0] != '\0' && tui_has_text(l, t->help_find);
		tui_grid_text(g, r, r.x, r.y + i,
		              found          ? R_SELECTED
		                      : head ? R_TITLE
		                             : R_NORMAL,
		              l, strlen(l));
	}
	tui_help_free(lines, n);
}

void chrome_input(struct tui_grid *g, struct tui_rect r, const char *in, size_t cur, int *cx,
                  int *cy)
{
	size_t len = strlen(in);
	int line = 0, col = 0, cur_line = 0, cur_col = 0, lines = 1;
	const char *p;

	tui_grid_fill(g, r, ' ', R_INPUT);
	for (size_t i = 0; i < len; i++)
		lines += in[i] == '\n';
	/* the cursor's line and column */
	for (size_t i = 0; i < len && i < cur; i++) {
		if (in[i] == '\n') {
			cur_line++;
			cur_col = 0;
		} else if (((unsigned char)in[i] & 0xc0) != 0x80) {
			cur_col++;
		}
	}
	int first_line = cur_line >= r.h ? cur_line - r.h + 1 : 0;
	int prefix = 2;
	int avail = r.w - prefix;
	int hscroll = avail > 0 && cur_col >= avail ? cur_col - avail + 1 : 0;
	p = in;
	for (line = 0; line < lines; line++) {
		const char *end = strchr(p, '\n');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		int y = r.y + line - first_line;
		if (y >= r.y && y < r.y + r.h) {
			tui_grid_text(g, r, r.x, y, R_TITLE, line == 0 ? (in[0] == ':' ? ": " : "> ") : ". ",
			              2);
			/* skip hscroll columns on the cursor's line */
			const char *q = p;
			size_t qn = n;
			if (line == cur_line) {
				for (int k = 0; k < hscroll && qn > 0;) {
					q++;
					qn--;
					if (qn == 0 || ((unsigned char)*q & 0xc0) != 0x80)
						k++;
				}
			}
			struct tui_rect rr = { r.x + prefix, r.y, r.w - prefix, r.h };
			tui_grid_text(g, rr, r.x + prefix, y, R_INPUT, q, qn);
		}
		p = end ? end + 1 : p + n;
		col = 0;
	}
	(void)col;
	*cx = r.x + prefix + cur_col - hscroll;
	*cy = r.y + cur_line - first_line;
	if (*cx >= r.x + r.w)
		*cx = r.x + r.w - 1;
}
