/*
 * compare.c: :compare and its pane, two retention policies on one dialogue.
 *
 * The worker runs the comparison (src/app/compare.c: a shadow session over
 * the same weights replays the exchanges under the second policy, then
 * follows each new one) and sends it whole after every exchange
 * (WORKER_EV_COMPARE); the view model keeps the last one (tui.cmp) and
 * this file draws it. The pane and its status item are registered at the
 * first :compare, so a workbench that never compares draws nothing more
 * and its tab bar is unchanged.
 *
 * The pane, top to bottom: a summary line (kept tokens on each side, the
 * overlap of the kept sets, where the replies first part), the cost line,
 * then each side (side by side from TUI_COMPARE_SIDE_W columns, stacked
 * below): its policy and budget, one retention row per exchange on a
 * shared axis (a cell is the same places of the dialogue on both sides:
 * exchange and offset, compare.c), and the replies of the exchange where
 * they part (else the last one), the first parting token marked.
 */
#include "tui/tui-int.h"

#include <stdlib.h>
#include <string.h>

#define TUI_COMPARE_SIDE_W 120 /* side by side from this width on */

/* A place's state on one side: bits. */
enum { CP_HERE = 1, CP_KEPT = 2, CP_SINK = 4, CP_KEY = 8, CP_PINNED = 16 };

static void compare_pane(struct tui *t, struct tui_grid *g, struct tui_rect r);
static void compare_status(const struct tui *t, char *buf, size_t cap);

/* Register the pane and the status item (once). */
static void compare_register(void)
{
	static bool done;
	if (done)
		return;
	done = true;
	tui_pane_register(&(struct tui_pane){ "compare", "Compare", compare_pane, true });
	tui_status_register(&(struct tui_status_item){ "compare", compare_status });
}

bool tui_compare_on(const struct tui *t)
{
	return t->cmp_pending || (t->cmp != NULL && t->cmp->state != COMPARE_STOPPED);
}

int tui_compare_complete(const char *word, size_t i, const char **out)
{
	(void)word;
	if (i == 0) {
		*out = "off";
		return 1;
	}
	if (i - 1 >= kv_policy_count())
		return 0;
	*out = kv_policy_name_at(i - 1);
	return 1;
}

/* Whether the chat holds an exchange made in this conversation. */
static bool compare_have_exchange(const struct tui *t)
{
	for (uint32_t i = 0; i < t->n_msgs; i++)
		if (t->msgs[i].kind == MSG_ASSISTANT && !t->msgs[i].replayed && t->msgs[i].stop[0])
			return true;
	return false;
}

/* :compare POLICY[:k=v,...] [BUDGET] | off | (nothing: show it) */
int tui_compare_exec(struct tui_ctx *c, int argc, char **argv)
{
	struct tui *t = c->t;
	struct kv_policy p;
	struct err e;
	long long budget = -1;
	char *end = NULL;

	if (argc == 1) {
		if (t->cmp == NULL && !t->cmp_pending)
			return tui_cmd_fail(c,
			                    ":compare: expected a policy and maybe a budget, e.g. "
			                    ":compare h2o:heavy=0.5 256 (off: stop)");
		t->tab = tui_pane_find("compare");
		return KVS_OK;
	}
	if (argc > 3)
		return tui_cmd_fail(c,
		                    ":compare: expected POLICY[:k=v,...] [BUDGET] or off, e.g. "
		                    ":compare streaming 256");
	if (strcmp(argv[1], "off") == 0) {
		if (argc != 2)
			return tui_cmd_fail(c, ":compare off: expected nothing after it");
		if (!tui_compare_on(t))
			return tui_cmd_fail(c, ":compare off: no comparison is on");
		if (c->w != NULL)
			worker_compare_stop(c->w);
		c->last = (struct worker_cmd){ .kind = WORKER_COMPARE, .text = "off" };
		c->have_last = true;
		if (c->w != NULL)
			worker_send(c->w, &c->last);
		tui_status(t, false, "stopping the comparison");
		return KVS_OK;
	}
	if (tui_compare_on(t))
		return tui_cmd_fail(c,
		                    ":compare: a comparison with %s (budget %u) is on: expected "
		                    ":compare off first",
		                    t->cmp ? t->cmp->side[1].policy : argv[1],
		                    t->cmp ? t->cmp->side[1].budget : 0);
	if (kv_policy_parse(argv[1], &p, &e) != KVS_OK)
		return tui_cmd_fail(c, ":compare: %s", e.msg);
	if (argc == 3) {
		const char *s = argv[2];
		budget = -1;
		if (*s >= '0' && *s <= '9')
			budget = strtoll(s, &end, 10);
		if (budget < 0 || end == NULL || *end != '\0' || budget > (long long)(UINT32_MAX / 2))
			return tui_cmd_fail(c,
			                    ":compare: budget '%s': expected a whole number of tokens "
			                    "(0: every slot), e.g. :compare %s 256",
			                    s, argv[1]);
	}
	if (!compare_have_exchange(t))
		return tui_cmd_fail(c,
		                    ":compare: no conversation yet: expected at least one exchange "
		                    "to replay (send a message first)");
	compare_register();
	c->last = (struct worker_cmd){ .kind = WORKER_COMPARE, .text = argv[1], .n = budget };
	snprintf(c->last_text, sizeof c->last_text, "%s", argv[1]);
	c->last.text = c->last_text;
	c->have_last = true;
	if (c->w != NULL)
		worker_send(c->w, &c->last);
	t->cmp_pending = true;
	t->tab = tui_pane_find("compare");
	tui_status(t, false,
	           "replaying the conversation under %s: a second KV cache and decode while on "
	           "(Esc stops, :compare off frees it)",
	           argv[1]);
	return KVS_OK;
}

void tui_compare_apply(struct tui *t, struct worker_event *ev)
{
	if (ev->kind == WORKER_EV_COMPARE) {
		compare_view_free(t->cmp);
		t->cmp = ev->cmp;
		ev->cmp = NULL;
		t->cmp_pending = false;
		if (t->cmp->state == COMPARE_STOPPED && t->cmp->msg[0])
			tui_status(t, strstr(t->cmp->msg, "comparison off") != t->cmp->msg, "%s", t->cmp->msg);
	} else if (ev->kind == WORKER_EV_RESULT && ev->cmd == WORKER_COMPARE) {
		t->cmp_pending = false; /* refused before it began, or done */
	}
}

static void compare_status(const struct tui *t, char *buf, size_t cap)
{
	const struct compare_view *v = t->cmp;

	buf[0] = '\0';
	if (t->cmp_pending)
		snprintf(buf, cap, "compare: starting");
	else if (v != NULL && v->state == COMPARE_REPLAYING)
		snprintf(buf, cap, "compare %.40s %u: replaying %u/%u", v->side[1].policy,
		         v->side[1].budget, v->done, v->total);
	else if (v != NULL && v->state == COMPARE_FOLLOWING)
		snprintf(buf, cap, "compare %.40s %u (2x KV, 2x decode)", v->side[1].policy,
		         v->side[1].budget);
}

/* ---- the pane ---- */

/* Tokens exchange i spans on side s (0: none there). */
static uint32_t side_len(const struct compare_side *s, uint32_t i)
{
	const struct compare_turn *t = &s->turns[i];

	if (i >= s->n_turns)
		return 0;
	if (i + 1 < s->n_turns && !s->turns[i + 1].restarted &&
	    s->turns[i + 1].first_pos > t->first_pos)
		return (uint32_t)(s->turns[i + 1].first_pos - t->first_pos);
	if (i + 1 == s->n_turns && s->next_pos > t->first_pos)
		return (uint32_t)(s->next_pos - t->first_pos);
	return t->n_prompt + t->n_reply; /* an earlier epoch: its closing markers are not known */
}

/* One side's places for exchanges [first, first + n): state[k * stride +
 * off] (CP_*), each exchange's row stride places long. */
static uint8_t *side_places(const struct compare_side *s, uint32_t first, uint32_t n,
                            uint32_t stride)
{
	size_t n_places = (size_t)n * stride;
	uint8_t *st = xcalloc(n_places ? n_places : 1, 1);
	uint32_t turn, off;

	for (uint32_t k = 0; k < n; k++) {
		uint32_t len = KVS_MIN(side_len(s, first + k), stride);
		memset(st + (size_t)k * stride, CP_HERE, len);
	}
	for (uint32_t i = 0; i < s->n_kept; i++) {
		const struct kv_tok *x = &s->kept[i];
		if (!compare_place(s, x->orig_pos, &turn, &off) || turn < first || turn >= first + n ||
		    off >= stride)
			continue;
		st[(size_t)(turn - first) * stride + off] = CP_HERE | CP_KEPT |
		        (x->flags & KV_FLAG_SINK ? CP_SINK : 0) | (x->flags & KV_FLAG_KEY ? CP_KEY : 0) |
		        (x->flags & KV_FLAG_PINNED ? CP_PINNED : 0);
	}
	return st;
}

/* The glyph and role of the places st[0..n). */
static void cell_glyph(const struct tui_grid *g, const uint8_t *st, uint32_t n, uint32_t *cp,
                       enum tui_role *role)
{
	uint32_t here = 0, kept = 0;
	uint8_t any = 0;

	for (uint32_t i = 0; i < n; i++) {
		here += (st[i] & CP_HERE) != 0;
		kept += (st[i] & CP_KEPT) != 0;
		any |= st[i];
	}
	*role = R_KEPT;
	if (here == 0) {
		*cp = ' ';
		*role = R_NORMAL;
	} else if (kept == 0) {
		*cp = g->ascii ? '.' : 0x00b7; /* · */
		*role = R_EVICTED;
	} else {
		*cp = kept == here ? tui_glyph_bar(g, true) : g->ascii ? '+' : 0x2592; /* ▒ */
		*role = any & CP_PINNED ? R_PINNED : any & CP_SINK ? R_SINK : any & CP_KEY ? R_KEY : R_KEPT;
	}
}

/* The rows of exchanges [first, first + n) shown, and places per cell. */
struct compare_rows {
	uint32_t first, n;
	uint32_t stride; /* the longest exchange's places */
	uint32_t per;    /* places per cell */
	int w;           /* cells */
};

/* Draw side s's retention rows at (r.x, y). */
static void side_strip(const struct tui *t, struct tui_grid *g, struct tui_rect r, int y,
                       const struct compare_side *s, const struct compare_rows *cr)
{
	const struct compare_view *v = t->cmp;
	uint8_t *st = side_places(s, cr->first, cr->n, cr->stride);

	for (uint32_t k = 0; k < cr->n && y < r.y + r.h; k++, y++) {
		uint32_t ex = cr->first + k;
		int32_t mark = -1; /* the cell of the first parting token */
		if (v->sum.div_turn == (int32_t)ex && ex < s->n_turns)
			mark = (int32_t)((s->turns[ex].n_prompt + (uint32_t)v->sum.div_tok) / cr->per);
		tui_grid_printf(g, r, r.x, y, v->sum.div_turn == (int32_t)ex ? R_TITLE : R_DIM, "%3u ",
		                ex + 1);
		for (int c = 0; c < cr->w; c++) {
			uint32_t lo = (uint32_t)c * cr->per;
			uint32_t cp;
			enum tui_role role;
			if (lo >= cr->stride)
				break;
			cell_glyph(g, st + (size_t)k * cr->stride + lo, KVS_MIN(cr->per, cr->stride - lo), &cp,
			           &role);
			if (c == mark) {
				cp = g->ascii ? 'x' : 0x00d7; /* × */
				role = R_SELECTED;
			}
			tui_grid_put(g, r.x + 4 + c, y, cp, role);
		}
	}
	free(st);
}

/* Text wrapped into r from row y on: split bytes in role, then a marker
 * and the rest in after (split past the end: all in role). Returns the
 * row after the text. */
static int wrap_text(struct tui_grid *g, struct tui_rect r, int y, const char *s, size_t split,
                     enum tui_role role, enum tui_role after)
{
	size_t n = strlen(s);
	int x = r.x;
	bool marked = split > n;

	for (size_t i = 0; i <= n && y < r.y + r.h;) {
		if (!marked && i == split) {
			marked = true;
			role = after;
			x += tui_grid_text(g, r, x, y, R_SELECTED, g->ascii ? "|" : "\xe2\x96\x8c",
			                   g->ascii ? 1 : 3);
			continue;
		}
		if (i == n)
			break;
		if (s[i] == '\n') {
			y++;
			x = r.x;
			i++;
			continue;
		}
		size_t k = 1;
		while (i + k < n && ((unsigned char)s[i + k] & 0xc0) == 0x80)
			k++;
		int cw = tui_text_width(s + i, k);
		if (x + cw > r.x + r.w) {
			y++;
			x = r.x;
			if (y >= r.y + r.h)
				break;
		}
		x += tui_grid_text(g, r, x, y, role, s + i, k);
		i += k;
	}
	return y + 1;
}

/* One side in r: header, retention rows, the shown exchange's reply. */
static void side_draw(const struct tui *t, struct tui_grid *g, struct tui_rect r, int k,
                      const struct compare_rows *cr, uint32_t shown)
{
	const struct compare_view *v = t->cmp;
	const struct compare_side *s = &v->side[k];
	int y = r.y;

	tui_grid_printf(g, r, r.x, y++, R_TITLE, "%s %s, budget %u: kept %u%s", k ? "B" : "A",
	                s->policy, s->budget, s->n_kept, k ? " (shadow)" : " (this session)");
	side_strip(t, g, r, y, s, cr);
	y += (int)cr->n;
	if (shown >= s->n_turns || y >= r.y + r.h)
		return;
	const struct compare_turn *ct = &s->turns[shown];
	bool parts = v->sum.div_turn == (int32_t)shown;
	tui_grid_printf(g, r, r.x, y++, R_DIM, "reply %u (%u tokens, %s)%s", shown + 1, ct->n_reply,
	                gen_stop_name((enum gen_stop)ct->stop), parts ? ", parting at the mark" : "");
	struct tui_rect tr = { r.x, y, r.w, r.y + r.h - y };
	wrap_text(g, tr, y, ct->reply, parts ? v->div_byte[k] : (size_t)-1, R_ASSISTANT, R_INFO);
}

static void compare_pane(struct tui *t, struct tui_grid *g, struct tui_rect box)
{
	struct tui_rect r = tui_grid_box(g, box, "Compare", false);
	const struct compare_view *v = t->cmp;
	int y = r.y;

	if (r.w < 8 || r.h < 3)
		return;
	if (v == NULL) {
		tui_grid_printf(g, r, r.x, y, R_DIM, "%s",
		                t->cmp_pending ? "starting the shadow session..."
		                               : "no comparison: :compare POLICY[:k=v] [BUDGET]");
		return;
	}
	const struct compare_sum *sm = &v->sum;
	/* the summary line */
	if (v->state == COMPARE_REPLAYING)
		tui_grid_printf(g, r, r.x, y, R_INFO, "replaying exchange %u of %u under %s (Esc stops)  ",
		                v->done + 1 > v->total ? v->total : v->done + 1, v->total,
		                v->side[1].policy);
	else if (v->state == COMPARE_STOPPED)
		tui_grid_printf(g, r, r.x, y, R_STATUS_ERR, "%s  ", v->msg);
	else
		tui_grid_printf(g, r, r.x, y, R_INFO,
		                "following: each new exchange runs under B too (Esc stops it)  ");
	y++;
	int x = tui_grid_printf(g, r, r.x, y, R_NORMAL, "kept A %u | B %u, overlap %u", sm->kept[0],
	                        sm->kept[1], sm->overlap);
	if (sm->div_turn >= 0)
		tui_grid_printf(g, r, r.x + x, y, R_TITLE, "; replies part at exchange %d, token %d",
		                sm->div_turn + 1, sm->div_tok + 1);
	else
		tui_grid_printf(g, r, r.x + x, y, R_NORMAL, "; replies identical over %u exchange%s",
		                sm->turns, sm->turns == 1 ? "" : "s");
	y++;
	tui_grid_printf(g, r, r.x, y++, R_DIM,
	                "cost while on: +%.1f MiB KV (B's cache) and a second decode of every "
	                "exchange; :compare off frees it",
	                (double)v->kv_bytes / (1024.0 * 1024.0));
	if (r.y + r.h - y >= 15) {
		/* the legend, where the rows allow it */
		int lx = r.x;
		static const struct {
			uint32_t cp, ascii;
			enum tui_role role;
			const char *what;
		} legend[] = {
			{ 0x2588, '#', R_KEPT, " kept  " },
			{ 0x2592, '+', R_KEPT, " partly kept  " },
			{ 0x00b7, '.', R_EVICTED, " evicted  " },
			{ 'S', 'S', R_SINK, "ink " },
			{ 'K', 'K', R_KEY, "ey token " },
			{ 'P', 'P', R_PINNED, "inned  " },
			{ 0x00d7, 'x', R_SELECTED, " first parting reply token (row: exchange)" },
		};
		for (size_t i = 0; i < KVS_ARRAY_LEN(legend); i++) {
			tui_grid_put(g, lx, y, g->ascii ? legend[i].ascii : legend[i].cp, legend[i].role);
			lx += 1 + tui_grid_printf(g, r, lx + 1, y, R_DIM, "%s", legend[i].what);
		}
		y++;
	}

	/* the exchanges shown: the last ones that fit, the parting one among them */
	bool side = r.w >= TUI_COMPARE_SIDE_W;
	int per_side = side ? r.y + r.h - y : (r.y + r.h - y) / 2;
	int col_w = side ? (r.w - 1) / 2 : r.w;
	uint32_t n_ex = KVS_MAX(v->side[0].n_turns, v->side[1].n_turns);
	int max_rows = KVS_MAX(1, KVS_MIN(per_side / 3, 8));
	struct compare_rows cr = { 0 };
	cr.n = KVS_MIN(n_ex, (uint32_t)max_rows);
	cr.first = n_ex - cr.n;
	if (sm->div_turn >= 0 && (uint32_t)sm->div_turn < cr.first)
		cr.first = (uint32_t)sm->div_turn;
	for (uint32_t k = 0; k < cr.n; k++)
		cr.stride = KVS_MAX(
		        cr.stride,
		        KVS_MAX(side_len(&v->side[0], cr.first + k), side_len(&v->side[1], cr.first + k)));
	cr.w = KVS_MAX(1, col_w - 4);
	cr.per = KVS_MAX(1u, (cr.stride + (uint32_t)cr.w - 1) / (uint32_t)cr.w);
	uint32_t shown = sm->div_turn >= 0 ? (uint32_t)sm->div_turn : sm->turns ? sm->turns - 1 : 0;

	for (int k = 0; k < 2; k++) {
		struct tui_rect sr = side ? (struct tui_rect){ r.x + k * (col_w + 1), y, col_w, per_side }
		                          : (struct tui_rect){ r.x, y + k * per_side, col_w, per_side };
		side_draw(t, g, sr, k, &cr, shown);
		if (side && k == 0)
			for (int yy = y; yy < y + per_side; yy++)
				tui_grid_put(g, r.x + col_w, yy, g->ascii ? '|' : 0x2502, R_BORDER);
	}
}
