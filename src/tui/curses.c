/*
 * curses.c: the terminal side of the workbench: ncurses set-up, colours,
 * the main loop, keys and mouse, and restoring the terminal.
 *
 * The main thread sleeps in poll() on the terminal and the worker's event
 * pipe. Keys go to the input line (libedit, input.c) unless they are
 * workbench keys (F-keys, Ctrl-C, Tab, scrolling); worker events update
 * the view model (model.c). Redraws are coalesced: at most one every
 * TUI_FRAME_MS, however fast tokens arrive, and fewer when frames are
 * expensive (a big terminal, a slow one): the interval grows so that
 * drawing takes at most TUI_DRAW_SHARE of the time, since on a machine
 * whose cores all decode every millisecond drawn is a millisecond less
 * decoding. A frame is drawn into the text
 * grid (view.c) and only the cells that changed since the last frame are
 * sent to curses, so the renderer stays a thin copy loop.
 *
 * The terminal is restored on every way out: normal quit, an error, a
 * fatal signal (the handler calls endwin before re-raising) and exit().
 */
#include "tui/tui-int.h"

#include <curses.h>
#include <errno.h>
#include <locale.h>
#include <pthread.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TUI_FRAME_MS 33.0      /* the shortest interval between frames (30 a second) */
#define TUI_FRAME_MAX_MS 250.0 /* the longest, whatever a frame costs */
#define TUI_DRAW_SHARE 0.03    /* of the wall time drawing may take */
/* Clicks and the wheel, no motion: the least tracking that serves them */
#define TUI_MOUSE_MASK (BUTTON1_CLICKED | BUTTON1_PRESSED | BUTTON4_PRESSED | BUTTON5_PRESSED)

static volatile sig_atomic_t tui_in_curses;
static volatile sig_atomic_t tui_sigquit;

bool tui_available(void)
{
	return true;
}

static void tui_restore(void)
{
	if (tui_in_curses) {
		tui_in_curses = 0;
		endwin();
	}
}

static void tui_fatal_signal(int sig)
{
	/* put the terminal back, then die of the same signal */
	tui_restore();
	signal(sig, SIG_DFL);
	raise(sig);
}

static void tui_quit_signal(int sig)
{
	(void)sig;
	tui_sigquit = 1;
}

struct tui_term {
	struct tui t;
	struct tui_ctx ctx;
	struct tui_grid grid, prev;
	struct tui_input *in;
	struct worker *w;
	enum tui_color_mode mode; /* resolved: 256, TRUE or NONE (8 colours count as 256) */
	bool colors8;
	attr_t attr[R_COUNT];
	const struct tui_theme *applied;
	bool full_redraw;
	bool armed_quit; /* Ctrl-C on an empty line: another one quits */
	bool mouse_off;  /* the mask applied (tui.mouse_off when drawn) */
	double last_draw_ms;
	bool dirty;
	FILE *screen_out; /* the terminal curses writes to */
	/* plugin messages (script_config.notify may come from the worker) */
	pthread_mutex_t note_mu;
	char note[256];
	bool have_note;
	uint32_t n_frames;
	double frame_ms; /* spent drawing, all frames */
	double apply_ms; /* spent applying events */
	double cost_ms;  /* a frame's cost, smoothed */
	/* bench */
	bool bench_exit, bench_sent, bench_done;
	double bench_tps;
	uint32_t bench_tokens;
	double bench_ms;
};

/* Colour pairs and attributes for the theme. */
static void tui_apply_theme(struct tui_term *tt)
{
	const struct tui_theme *th = tt->t.theme;

	for (int r = 0; r < R_COUNT; r++) {
		const struct tui_role_color *rc = &th->role[r];
		attr_t a = 0;
		bool mono = tt->mode == TUI_COLOR_NONE;
		if (rc->attr & TUI_A_BOLD)
			a |= A_BOLD;
		if (rc->attr & TUI_A_UNDERLINE)
			a |= A_UNDERLINE;
		if (mono && (rc->attr & TUI_A_REVERSE))
			a |= A_REVERSE;
		if (mono && (rc->attr & TUI_A_DIM))
			a |= A_DIM;
		if (!mono) {
			int fg = tt->colors8 ? rc->fg8 : rc->fg, bg = tt->colors8 ? rc->bg8 : rc->bg;
			if (tt->mode == TUI_COLOR_TRUE) {
				/* direct colour: colour numbers are 0xRRGGBB */
				fg = fg < 0 ? -1 : (int)tui_color_rgb(fg);
				bg = bg < 0 ? -1 : (int)tui_color_rgb(bg);
			}
			init_extended_pair(r + 1, fg, bg);
		}
		tt->attr[r] = a;
	}
	tt->applied = th;
	tt->full_redraw = true;
}

static void tui_setup_colors(struct tui_term *tt, enum tui_color_mode want)
{
	const char *nc = getenv("NO_COLOR");

	if (want == TUI_COLOR_NONE || (nc != NULL && nc[0] != '\0') || !has_colors()) {
		tt->mode = TUI_COLOR_NONE;
		return;
	}
	start_color();
	use_default_colors();
	if (want == TUI_COLOR_TRUE && COLORS >= 0x1000000)
		tt->mode = TUI_COLOR_TRUE;
	else if (COLORS >= 256)
		tt->mode = TUI_COLOR_256;
	else if (COLORS >= 8) {
		tt->mode = TUI_COLOR_256;
		tt->colors8 = true;
	} else
		tt->mode = TUI_COLOR_NONE;
	if (want == TUI_COLOR_TRUE && tt->mode != TUI_COLOR_TRUE)
		tui_status(&tt->t, false,
		           "truecolour needs a direct-colour terminal (e.g. TERM=xterm-direct); using %d "
		           "colours",
		           COLORS);
}

/* Write the run of cells [x0, x1) of row y (one role) to curses. */
static void tui_put_run(struct tui_term *tt, int y, int x0, int x1)
{
	const struct tui_cell *c = &tt->grid.c[y * tt->grid.w];
	wchar_t buf[512];
	int n = 0, role = c[x0].role;
	int pair = tt->mode == TUI_COLOR_NONE ? 0 : role + 1;

	for (int x = x0; x < x1 && n < (int)KVS_ARRAY_LEN(buf) - 1; x++)
		if (c[x].cp != 0) /* 0: the right half of a wide character */
			buf[n++] = (wchar_t)c[x].cp;
	buf[n] = 0;
	wattr_set(stdscr, tt->attr[role], (short)pair, NULL);
	mvaddnwstr(y, x0, buf, n);
}

/* Copy the grid's changed cells to the screen, in runs of one role. */
static void tui_blit(struct tui_term *tt, int cx, int cy)
{
	struct tui_grid *g = &tt->grid, *p = &tt->prev;
	bool full = tt->full_redraw || p->w != g->w || p->h != g->h;

	if (full) {
		tui_grid_resize(p, g->w, g->h);
		clearok(stdscr, TRUE);
	}
	for (int y = 0; y < g->h; y++) {
		/* the bottom-right cell is written apart: adding there could scroll */
		int w = y == g->h - 1 ? g->w - 1 : g->w;
		int run = -1;
		for (int x = 0; x < w; x++) {
			const struct tui_cell *c = &g->c[y * g->w + x];
			struct tui_cell *o = &p->c[y * g->w + x];
			bool changed = full || c->cp != o->cp || c->role != o->role;
			*o = *c;
			if (run >= 0 && (!changed || c->role != g->c[y * g->w + run].role || x - run >= 500)) {
				tui_put_run(tt, y, run, x);
				run = -1;
			}
			if (changed && run < 0) {
				/* a run never starts on the right half of a wide character */
				run = c->cp == 0 && x > 0 ? x - 1 : x;
			}
		}
		if (run >= 0)
			tui_put_run(tt, y, run, w);
		if (y == g->h - 1 && g->w > 0) {
			const struct tui_cell *c = &g->c[y * g->w + g->w - 1];
			struct tui_cell *o = &p->c[y * g->w + g->w - 1];
			if ((full || c->cp != o->cp || c->role != o->role) && c->cp != 0) {
				cchar_t cc;
				wchar_t wc[2] = { (wchar_t)c->cp, 0 };
				int pair = tt->mode == TUI_COLOR_NONE ? 0 : c->role + 1;
				setcchar(&cc, wc, tt->attr[c->role], 0, &pair);
				mvins_wch(y, g->w - 1, &cc);
			}
			*o = *c;
		}
	}
	tt->full_redraw = false;
	move(cy, cx);
	refresh();
}

static void tui_frame(struct tui_term *tt)
{
	size_t cur;
	const char *text = tui_input_text(tt->in, &cur);
	int cx, cy;
	double t0 = clock_now_ms();

	if (tt->t.theme != tt->applied)
		tui_apply_theme(tt);
	if (tt->t.mouse_off != tt->mouse_off) {
		/* :mouse off: no tracking, so the terminal's own selection works */
		mousemask(tt->t.mouse_off ? 0 : TUI_MOUSE_MASK, NULL);
		tt->mouse_off = tt->t.mouse_off;
	}
	if (tt->t.yank != NULL) {
		/* OSC 52 goes straight to the terminal; it moves no cursor */
		char *seq = tui_osc52(tt->t.yank);
		fputs(seq, tt->screen_out);
		fflush(tt->screen_out);
		free(seq);
		free(tt->t.yank);
		tt->t.yank = NULL;
	}
	tui_grid_resize(&tt->grid, COLS, LINES);
	tt->grid.ascii = tt->prev.ascii;
	tui_draw(&tt->t, &tt->grid, text, cur, &cx, &cy);
	tui_blit(tt, cx, cy);
	tt->last_draw_ms = clock_now_ms();
	tt->n_frames++;
	tt->frame_ms += tt->last_draw_ms - t0;
	tt->cost_ms = tt->n_frames == 1 ? tt->last_draw_ms - t0
	                                : 0.8 * tt->cost_ms + 0.2 * (tt->last_draw_ms - t0);
	tt->dirty = false;
}

static void tui_complete(struct tui_term *tt)
{
	size_t cur;
	const char *text = tui_input_text(tt->in, &cur);
	char ext[128], names[512];
	int n;

	if (cur != strlen(text) || text[0] != ':') {
		tui_status(&tt->t, false, "Tab completes :commands (type ':' first)");
		return;
	}
	n = tui_cmd_complete(tt->t.rt, text, ext, sizeof ext, names, sizeof names);
	if (ext[0] != '\0')
		tui_input_insert(tt->in, ext);
	if (n == 0)
		tui_status(&tt->t, true, "no completion for '%s'", text);
	else if (n > 1)
		tui_status(&tt->t, false, "%s", names);
}

/* A line from the input: a ':' command or a message. */
static void tui_line(struct tui_term *tt, char *line)
{
	if (line[0] != ':')
		tt->t.armed[0] = '\0'; /* ":quit again" means the very next line */
	if (line[0] == ':') {
		tui_cmd_run(&tt->ctx, line + 1);
	} else if (tui_search_line(&tt->t, line)) {
		/* a search of the chat or the help */
	} else if (line[strspn(line, " \n\t")] == '\0') {
		/* blank: nothing to send */
	} else if (tt->t.busy) {
		/* the message stays in the input line for Enter once the reply
		 * ends (other commands, a :save's first commit, just queue) */
		tui_input_insert(tt->in, line);
		tui_status(&tt->t, true,
		           "a reply is in progress: Enter sends this when it ends (Ctrl-C stops it)");
	} else {
		/* "//text" is the message "/text" */
		const char *msg = line[0] == '/' && line[1] == '/' ? line + 1 : line;
		worker_send(tt->w, &(struct worker_cmd){ .kind = WORKER_CHAT, .text = msg });
		tt->t.busy = true;
		tt->armed_quit = false;
		tui_status(&tt->t, false, "%s", "");
	}
	free(line);
}

/* ---- the workbench's keys: an F-key or Shift-key and its Alt-key twin ---- */

static void act_help(struct tui *t, int arg)
{
	(void)arg;
	t->help = !t->help;
	t->help_scroll = 0;
}

static void act_tab(struct tui *t, int arg)
{
	t->tab = arg >= 0 ? arg : tui_pane_find("plugins");
}

/* The sparsity pane (registered here too: a dense session may ask). */
static void act_sparsity(struct tui *t, int arg)
{
	(void)arg;
	tui_sparsity_register();
	t->tab = tui_pane_find("sparsity");
}

/* arg -1 / +1: the previous / next layer (wrapping). */
static void act_layer(struct tui *t, int arg)
{
	uint32_t nl = t->n_layer ? t->n_layer : 1;
	t->layer = (t->layer + nl + (uint32_t)arg) % nl;
}

static void act_head(struct tui *t, int arg)
{
	uint32_t nh = t->n_head ? t->n_head : 1;
	t->head = (t->head + nh + (uint32_t)arg) % nh;
	t->agg = AGG_HEAD;
}

static void act_agg(struct tui *t, int arg)
{
	(void)arg;
	t->agg = (enum tui_agg)((t->agg + 1) % AGG_COUNT);
}

static void act_overview(struct tui *t, int arg)
{
	(void)arg;
	t->overview = (enum tui_overview)((t->overview + 1) % OV_COUNT);
}

/* arg +1: an earlier query step; -1: a later one. */
static void act_step(struct tui *t, int arg)
{
	if (arg > 0 && t->step_back + 1 < KVS_MIN(t->n_steps, (uint32_t)TUI_STEP_HISTORY))
		t->step_back++;
	else if (arg < 0 && t->step_back > 0)
		t->step_back--;
}

static void act_sel(struct tui *t, int arg)
{
	tui_select(t, (enum tui_sel)arg);
}

/* Every F-key and Shift-key binding has an Alt-key twin (many terminals,
 * ssh and tmux set-ups swallow F-keys and Shift-arrows): Alt-1 .. Alt-9,
 * Alt-0, Alt-- and Alt-= follow the keyboard's row as F1 .. F12 do;
 * Alt-k/j, Alt-h/l walk the query steps and the strip as vi does, Alt-p/n
 * go by turn, Alt-g/G to the first token and the live tail. */
static const struct tui_bind {
	int key; /* curses KEY_* */
	int alt; /* the character after Esc */
	void (*act)(struct tui *t, int arg);
	int arg;
} tui_binds[] = {
	{ KEY_F(1), '1', act_help, 0 },
	{ KEY_F(2), '2', act_tab, 0 },
	{ KEY_F(3), '3', act_tab, 1 },
	{ KEY_F(4), '4', act_tab, 2 },
	{ KEY_F(5), '5', act_tab, 3 },
	{ KEY_F(6), '6', act_layer, -1 },
	{ KEY_F(7), '7', act_layer, 1 },
	{ KEY_F(8), '8', act_head, -1 },
	{ KEY_F(9), '9', act_head, 1 },
	{ KEY_F(10), '0', act_agg, 0 },
	{ KEY_F(11), '-', act_overview, 0 },
	{ KEY_F(12), '=', act_tab, -1 },
	{ KEY_F(13), 's', act_sparsity, 0 }, /* F13: Shift-F1 on xterm */
	{ KEY_SR, 'k', act_step, 1 },
	{ KEY_SF, 'j', act_step, -1 },
	{ KEY_SLEFT, 'h', act_sel, SEL_PREV },
	{ KEY_SRIGHT, 'l', act_sel, SEL_NEXT },
	{ KEY_SPREVIOUS, 'p', act_sel, SEL_TURN_PREV },
	{ KEY_SNEXT, 'n', act_sel, SEL_TURN_NEXT },
	{ KEY_SHOME, 'g', act_sel, SEL_FIRST },
	{ KEY_SEND, 'G', act_sel, SEL_OFF },
};

/* The binding of a key (fkey: a KEY_* code) or of Alt and a character. */
static const struct tui_bind *tui_bind_find(int key, bool alt)
{
	for (size_t i = 0; i < KVS_ARRAY_LEN(tui_binds); i++)
		if (alt ? tui_binds[i].alt == key : tui_binds[i].key == key)
			return &tui_binds[i];
	return NULL;
}

/* Keys the workbench handles itself; false: give it to the input line. */
static bool tui_key(struct tui_term *tt, int key, bool fkey)
{
	struct tui *t = &tt->t;

	if (!fkey) {
		switch (key) {
		case 3: /* Ctrl-C */
		{
			size_t cur;
			const char *text = tui_input_text(tt->in, &cur);
			if (t->busy) {
				worker_cancel(tt->w);
				tui_status(t, false, "stopping the reply");
			} else if (tui_compare_on(t) && worker_compare_stop(tt->w)) {
				tui_status(t, false, "stopping the comparison");
			} else if (text[0] != '\0') {
				tui_input_clear(tt->in);
			} else if (tt->armed_quit) {
				t->quit = true;
			} else {
				/* on an empty line: a second Ctrl-C in a row quits */
				uint32_t n = t->n_unsaved;
				tt->armed_quit = true;
				if (n > 0)
					tui_status(t, true,
					           "Ctrl-C again quits; %u exchange%s not saved (:save [TITLE] "
					           "keeps %s)",
					           n, n == 1 ? " is" : "s are", n == 1 ? "it" : "them");
				else
					tui_status(t, false, "Ctrl-C again quits (:quit does too)");
			}
			return true;
		}
		case '\t': tui_complete(tt); return true;
		case 12: /* Ctrl-L */ tt->full_redraw = true; return true;
		case 0x1b: {
			/* a lone Escape (nothing follows within the escape delay) lets
			 * go of what is held; one that begins an Alt key is the input's */
			wint_t next;
			int r = get_wch(&next);
			const struct tui_bind *b = r == OK ? tui_bind_find((int)next, true) : NULL;
			if (b != NULL) {
				b->act(t, b->arg);
				return true;
			}
			if (r != ERR) {
				if (r == KEY_CODE_YES)
					ungetch((int)next);
				else
					unget_wch((wchar_t)next);
				return false;
			}
			if (t->help) {
				t->help = false;
			} else if (t->sel_tok >= 0) {
				tui_select(t, SEL_OFF);
			} else if (t->chat_scroll > 0 || t->chat_hit >= 0) {
				/* back to the bottom of the chat (a search ends) */
				t->chat_scroll = 0;
				t->chat_hit = -1;
				t->chat_jump = false;
			} else if (t->step_back > 0) {
				t->step_back = 0;
			} else if (tui_compare_on(t) && worker_compare_stop(tt->w)) {
				tui_status(t, false, "stopping the comparison");
			}
			return true;
		}
		default: return false;
		}
	}
	if (t->help) {
		/* the help scrolls (drawing clamps it at the end) */
		static const struct {
			int key, rows; /* rows: +-1 a line, +-2 a page, +-3 an end */
		} nav[] = { { KEY_UP, -1 },   { KEY_DOWN, 1 },  { KEY_PPAGE, -2 },
			        { KEY_NPAGE, 2 }, { KEY_HOME, -3 }, { KEY_END, 3 } };
		int page = LINES > 4 ? LINES - 4 : 1;
		for (size_t i = 0; i < KVS_ARRAY_LEN(nav); i++) {
			if (nav[i].key != key)
				continue;
			int d = nav[i].rows;
			t->help_scroll += d == 1 || d == -1 ? d
			        : d == 2                    ? page
			        : d == -2                   ? -page
			        : d == 3                    ? 1 << 20
			                                    : -(1 << 20);
			if (t->help_scroll < 0)
				t->help_scroll = 0;
			return true;
		}
	}
	const struct tui_bind *b = tui_bind_find(key, false);
	if (b != NULL) {
		b->act(t, b->arg);
		return true;
	}
	switch (key) {
	case KEY_PPAGE:
	case KEY_NPAGE:
		if (t->sel_tok >= 0 || (t->tab == 3 && (COLS < TUI_WIDE_W || LINES < TUI_WIDE_H)))
			tui_select(t, key == KEY_PPAGE ? SEL_PAGE_UP : SEL_PAGE_DOWN);
		else if (key == KEY_PPAGE)
			t->chat_scroll += 10;
		else
			t->chat_scroll = t->chat_scroll > 10 ? t->chat_scroll - 10 : 0;
		return true;
	case KEY_RESIZE: tt->full_redraw = true; return true;
	case KEY_MOUSE: {
		MEVENT me;
		if (getmouse(&me) != OK)
			return true;
		if (me.bstate & BUTTON4_PRESSED)
			tui_wheel(t, me.x, me.y, 1);
		else if (me.bstate & BUTTON5_PRESSED)
			tui_wheel(t, me.x, me.y, -1);
		else if (me.bstate & (BUTTON1_CLICKED | BUTTON1_PRESSED))
			tui_click(t, &tt->grid, me.x, me.y);
		return true;
	}
	default: return false;
	}
}

static void tui_events(struct tui_term *tt)
{
	struct worker_event *ev;

	while ((ev = worker_poll(tt->w)) != NULL) {
		double t0 = clock_now_ms();
		tui_apply(&tt->t, ev, t0);
		tt->apply_ms += clock_now_ms() - t0;
		if (tt->t.rt != NULL) {
			/* the plugins see the session's own types (deep copies) */
			switch (ev->kind) {
			case WORKER_EV_TURN_START:
				script_on_turn_start(tt->t.rt, ev->index, ev->user ? ev->user : "");
				break;
			case WORKER_EV_TOKEN: script_on_token(tt->t.rt, &ev->token); break;
			case WORKER_EV_TURN_END: script_on_turn_end(tt->t.rt, &ev->turn); break;
			case WORKER_EV_KV: script_on_kv_event(tt->t.rt, &ev->kv); break;
			case WORKER_EV_COMPARE: /* the view model took the view */
				if (tt->t.cmp != NULL)
					script_on_compare(tt->t.rt, tt->t.cmp);
				break;
			default: break;
			}
		}
		if (tt->bench_exit && ev->kind == WORKER_EV_TURN_END) {
			tt->bench_tokens = ev->turn.n_reply;
			tt->bench_ms = ev->turn.decode_ms;
			tt->bench_tps =
			        ev->turn.decode_ms > 0 ? ev->turn.n_reply * 1e3 / ev->turn.decode_ms : 0;
		}
		if (tt->bench_exit && ev->kind == WORKER_EV_RESULT && ev->cmd == WORKER_CHAT) {
			tt->bench_done = true;
			tt->t.quit = true;
		}
		worker_event_free(ev);
		tt->dirty = true;
	}
}

/* The log lines said since the last look (the caller captures them while
 * the screen is up, cmd-tui.c): each one in the chat and on the status
 * line, in the error colour unless it is only information. */
static void tui_log_lines(struct tui_term *tt)
{
	enum log_level level;
	char *line;

	while ((line = log_capture_next(&level)) != NULL) {
		char *msg = xasprintf("%s: %s", log_level_name(level), line);
		tui_msg_note(&tt->t, msg);
		tui_status(&tt->t, level <= LOG_WARN, "%s", msg);
		tt->dirty = true;
		free(msg);
		free(line);
	}
}

/* The interval between frames: TUI_FRAME_MS, longer when frames cost more
 * than TUI_DRAW_SHARE of it. */
static double tui_frame_interval(const struct tui_term *tt)
{
	double iv = tt->cost_ms / TUI_DRAW_SHARE;
	return iv < TUI_FRAME_MS ? TUI_FRAME_MS : iv > TUI_FRAME_MAX_MS ? TUI_FRAME_MAX_MS : iv;
}

/* The input line waits for a key while its editor reads on by itself
 * (Ctrl-R's search): draw the screen as it stands, then block for the key.
 * Worker events wait in their queue meanwhile; a resize redraws. */
static bool tui_wait_key(void *ud, int *key, bool *fkey)
{
	struct tui_term *tt = ud;
	tt->dirty = true;
	tui_frame(tt);
	while (!tui_sigquit) {
		struct pollfd pf = { 0, POLLIN, 0 };
		wint_t wk;
		int r = get_wch(&wk);
		if (r == ERR) {
			poll(&pf, 1, 200);
			continue;
		}
		if (r == KEY_CODE_YES && wk == KEY_RESIZE) {
			tt->full_redraw = true;
			tui_frame(tt);
			continue;
		}
		*key = (int)wk;
		*fkey = r == KEY_CODE_YES;
		return true;
	}
	return false;
}

static void tui_loop(struct tui_term *tt)
{
	while (!tt->t.quit && !tui_sigquit) {
		struct pollfd pf[2] = { { 0, POLLIN, 0 }, { worker_fd(tt->w), POLLIN, 0 } };
		double now = clock_now_ms(), wait;
		wint_t wk;
		int r;

		if (tt->dirty)
			wait = tt->last_draw_ms + tui_frame_interval(tt) - now;
		else
			wait = 500; /* a tick, so the live rates settle */
		if (wait < 0)
			wait = 0;
		if (tt->t.rt != NULL) {
			double next = script_tick(tt->t.rt);
			if (next >= 0 && next < wait)
				wait = next;
			tt->dirty = true; /* views may have changed (cheap: frames are rate-limited) */
		}
		if (wait < 0)
			wait = 0;
		poll(pf, 2, (int)wait);
		pthread_mutex_lock(&tt->note_mu);
		if (tt->have_note) {
			tui_status(&tt->t, true, "%s", tt->note);
			tt->have_note = false;
			tt->dirty = true;
		}
		pthread_mutex_unlock(&tt->note_mu);
		tui_log_lines(tt);
		while ((r = get_wch(&wk)) != ERR) {
			char *line;
			bool fkey = r == KEY_CODE_YES;
			tt->dirty = true;
			if (fkey || wk != 3)
				tt->armed_quit = false; /* "Ctrl-C again" means the very next key */
			if (tui_key(tt, (int)wk, fkey))
				continue;
			if (fkey && tt->t.rt != NULL && wk >= KEY_F(1) && wk <= KEY_F(63)) {
				/* function keys the workbench leaves alone go to plugins */
				char name[8];
				snprintf(name, sizeof name, "F%d", (int)(wk - KEY_F(0)));
				if (script_on_key(tt->t.rt, name))
					continue;
			}
			if (tui_input_key(tt->in, (int)wk, fkey, &line))
				tui_line(tt, line);
		}
		tui_events(tt);
		if (tt->dirty && clock_now_ms() - tt->last_draw_ms >= tui_frame_interval(tt))
			tui_frame(tt);
		else if (!tt->dirty && clock_now_ms() - tt->last_draw_ms >= 500)
			tui_frame(tt);
	}
}

/* A plugin's message (any thread): kept for the status line. */
static void tui_notify(void *ud, const char *plugin, const char *msg)
{
	struct tui_term *tt = ud;

	pthread_mutex_lock(&tt->note_mu);
	snprintf(tt->note, sizeof tt->note, "%s%s%s", plugin ? plugin : "", plugin ? ": " : "", msg);
	tt->have_note = true;
	pthread_mutex_unlock(&tt->note_mu);
}

/* Commands plugins may have queued ahead of the session at once (with at
 * most 1 MiB of argument each, kvscope.send's limit, what they hold is
 * bounded). */
#define TUI_SEND_QUEUE 16

/* kvscope.send(cmd, arg): a plugin queues a command on the session. */
static int tui_send(void *ud, const char *cmd, const char *arg, struct err *e)
{
	static const struct {
		const char *name;
		enum worker_cmd_kind kind;
		bool number, text;
	} map[] = {
		{ "chat", WORKER_CHAT, false, true },     { "policy", WORKER_POLICY, false, true },
		{ "budget", WORKER_BUDGET, true, false }, { "sparse", WORKER_SPARSE, false, true },
		{ "reset", WORKER_RESET, false, false },  { "pin", WORKER_PIN, true, false },
		{ "unpin", WORKER_UNPIN, true, false },   { "max_tokens", WORKER_MAX_TOKENS, true, false },
		{ "doc", WORKER_DOC, false, true },
	};
	struct tui_term *tt = ud;

	if (strcmp(cmd, "export_view") == 0) {
		/* kvscope.export_view: "VIEW\tFORMAT\tFD", the file opened by the
		 * script layer under the results directory (never a path from Lua) */
		char view[40];
		int fd = -1, rc;
		char fmt[16];
		FILE *fp;
		if (arg == NULL || sscanf(arg, "%39[^\t]\t%15[^\t]\t%d", view, fmt, &fd) != 3 || fd < 0)
			return err_set(e, KVS_EARG, "export_view: expected VIEW, FILE [, FORMAT]");
		if ((fd = dup(fd)) < 0 || (fp = fdopen(fd, "w")) == NULL) {
			if (fd >= 0)
				close(fd);
			return err_set(e, KVS_EIO, "export_view: %s", strerror(errno));
		}
		rc = tui_export_view_fp(&tt->t, view, fmt, fp, e);
		if (fclose(fp) != 0 && rc == KVS_OK)
			rc = err_set(e, KVS_EIO, "export_view: %s", strerror(errno));
		return rc;
	}
	for (size_t i = 0; i < KVS_ARRAY_LEN(map); i++) {
		struct worker_cmd c = { .kind = map[i].kind };
		if (strcmp(map[i].name, cmd) != 0)
			continue;
		if (worker_queued(tt->w) >= TUI_SEND_QUEUE)
			return err_set(e, KVS_ESTATE,
			               "send %s: %d commands are queued on the session "
			               "already, the most a plugin may add to (wait for them)",
			               cmd, TUI_SEND_QUEUE);
		if (map[i].text)
			c.text = arg ? arg : "";
		if (map[i].number) {
			char *end;
			long long v = arg ? strtoll(arg, &end, 10) : 0;
			if (arg == NULL || *arg == '\0' || *end != '\0')
				return err_set(e, KVS_EARG, "send %s: expected a number, got '%s'", cmd,
				               arg ? arg : "");
			c.n = v;
		}
		worker_send(tt->w, &c);
		if (map[i].kind == WORKER_CHAT)
			tt->t.busy = true;
		return KVS_OK;
	}
	return err_set(e, KVS_EARG,
	               "send '%s': expected chat, policy, budget, reset, pin, unpin, max_tokens or "
	               "export_view",
	               cmd);
}

/* Start the Lua runtime and load the plugins (none without Lua). */
static void tui_plugins_start(struct tui_term *tt, struct session *s, const struct tui_options *o)
{
	struct script_config sc;
	struct err e;

	script_config_default(&sc);
	sc.gen.model_path = o->model_path;
	sc.db_path = o->db_path;
	sc.notify = tui_notify;
	sc.notify_ud = tt;
	sc.send = tui_send;
	sc.send_ud = tt;
	if (script_rt_new(&tt->t.rt, &sc, &e) != KVS_OK) {
		tt->t.rt = NULL;
		snprintf(tt->t.plugins, sizeof tt->t.plugins, "plugins: not built");
		return;
	}
	script_on_model_loaded(tt->t.rt, session_gen(s));
	if (!o->no_plugins)
		script_autoload(tt->t.rt);
	for (int i = 0; i < o->n_plugins; i++)
		if (script_load(tt->t.rt, o->plugins[i], &e) != KVS_OK)
			tui_status(&tt->t, true, "--plugin %s: %s", o->plugins[i], e.msg);
}

int tui_run(struct session *s, const struct tui_options *o, struct err *e)
{
	struct tui_term *tt = xcalloc(1, sizeof *tt);
	struct gen *g = session_gen(s);
	const struct model *m = gen_model(g);
	static const int fatal[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT };
	static const int quits[] = { SIGTERM, SIGHUP, SIGINT, SIGQUIT };
	int rc;

	tui_init(&tt->t);
	snprintf(tt->t.model, sizeof tt->t.model, "%s", m->name ? m->name : "model");
	snprintf(tt->t.backend, sizeof tt->t.backend, "%s %s",
	         strcmp(engine_backend_name(gen_engine(g)), "cpu") == 0 ? "CPU" : "CUDA",
	         engine_isa_name(gen_engine(g)));
	tt->t.n_layer = m->hp.n_layer;
	tt->t.n_head = m->hp.n_head;
	tt->t.n_ctx = gen_n_ctx(g);
	tt->t.vocab = m->vocab;
	tt->t.hp = &m->hp;
	tt->t.agg = AGG_MAX; /* informative from the first frame: the max over heads */
	/* --target-words / --length (cmd-tui.c gave it to the session) */
	tt->t.len = gen_turn(g)->len;
	if (kv_cache_sparse(gen_kv(g))->mode != ENGINE_SPARSE_OFF)
		tui_sparsity_register();
	if (o->theme != NULL && (tt->t.theme = tui_theme_find(o->theme)) == NULL) {
		tui_free(&tt->t);
		free(tt);
		return err_set(e, KVS_EARG, "--theme %s: expected dark or light", o->theme);
	}
	if (tt->t.theme == NULL)
		tt->t.theme = tui_theme_at(0);
	if (session_system(s)[0] != '\0')
		tui_msg_add(&tt->t, MSG_SYSTEM, session_system(s));
	pthread_mutex_init(&tt->note_mu, NULL);
	tt->ctx.t = &tt->t;
	tui_plugins_start(tt, s, o);
	rc = worker_start(&tt->w, s, e);
	if (rc != KVS_OK) {
		script_rt_free(tt->t.rt);
		tui_free(&tt->t);
		free(tt);
		return rc;
	}
	tt->ctx.w = tt->w;
	worker_set_store(tt->w, o->db_path, o->model_path, o->sampler);
	snprintf(tt->t.db_path, sizeof tt->t.db_path, "%s", o->db_path ? o->db_path : "");
	tt->t.cold_on = o->cold;
	tt->t.cold_temp = o->cold_temp;
	tt->in = tui_input_open();
	tui_input_set_wait(tt->in, tui_wait_key, tt);
	tt->bench_exit = o->bench_exit;

	setlocale(LC_ALL, "");
	setlocale(LC_NUMERIC, "C");
	atexit(tui_restore);
	for (size_t i = 0; i < KVS_ARRAY_LEN(fatal); i++)
		signal(fatal[i], tui_fatal_signal);
	for (size_t i = 0; i < KVS_ARRAY_LEN(quits); i++)
		signal(quits[i], tui_quit_signal);
	/* the screen is the terminal even when standard output is redirected
	 * (--bench-exit prints its result there); newterm, unlike initscr,
	 * returns instead of exiting on failure */
	tt->screen_out = isatty(1) ? stdout : fopen("/dev/tty", "w");
	if (tt->screen_out == NULL || newterm(NULL, tt->screen_out, stdin) == NULL) {
		if (tt->screen_out != NULL && tt->screen_out != stdout)
			fclose(tt->screen_out);
		worker_stop(tt->w);
		script_rt_free(tt->t.rt);
		tui_input_close(tt->in);
		tui_free(&tt->t);
		free(tt);
		return err_set(e, KVS_EIO, "cannot start the terminal (TERM=%s)",
		               getenv("TERM") ? getenv("TERM") : "unset");
	}
	tui_in_curses = 1;
	raw();
	noecho();
	nonl();
	keypad(stdscr, TRUE);
	nodelay(stdscr, TRUE);
	set_escdelay(25);
	mousemask(TUI_MOUSE_MASK, NULL);
	mouseinterval(0);
	tui_setup_colors(tt, o->color);
	tt->prev.ascii = o->ascii;
	tui_apply_theme(tt);

	worker_send(tt->w, &(struct worker_cmd){ .kind = WORKER_SNAPSHOT });
	if (o->resume != NULL) {
		/* --resume: as :load, the latest session when none is named */
		worker_send(tt->w,
		            &(struct worker_cmd){
		                    .kind = WORKER_LOAD, .text = o->resume, .n = TUI_REPLAY_TURNS });
		tui_msg_add(&tt->t, MSG_INFO, "loading a saved session ...");
		/* the load restores the saved policy and budget; --policy and
		 * --kv-budget given as well change them after it */
		if (o->resume_policy != NULL)
			worker_send(tt->w,
			            &(struct worker_cmd){ .kind = WORKER_POLICY, .text = o->resume_policy });
		if (o->resume_budget >= 0)
			worker_send(tt->w,
			            &(struct worker_cmd){ .kind = WORKER_BUDGET, .n = o->resume_budget });
	} else if (o->save) {
		worker_send(tt->w, &(struct worker_cmd){ .kind = WORKER_SAVE, .text = o->save_title });
	}
	if (o->prompt != NULL) {
		worker_send(tt->w, &(struct worker_cmd){ .kind = WORKER_CHAT, .text = o->prompt });
		tt->t.busy = true;
	}
	tui_log_lines(tt); /* what opening the session said */
	tui_frame(tt);
	tui_loop(tt);

	tui_restore();
	if (tt->screen_out != stdout)
		fclose(tt->screen_out);
	worker_stop(tt->w);
	script_rt_free(tt->t.rt); /* plugins' unload hooks run; no worker any more */
	tui_input_close(tt->in);
	pthread_mutex_destroy(&tt->note_mu);
	if (tt->bench_exit) {
		if (tt->bench_done)
			printf("decode %.2f tok/s (%u tokens in %.1f ms)\n"
			       "ui: %u frames, %.1f ms drawing (%.2f ms a frame), %.1f ms applying events\n",
			       tt->bench_tps, tt->bench_tokens, tt->bench_ms, tt->n_frames, tt->frame_ms,
			       tt->n_frames ? tt->frame_ms / tt->n_frames : 0.0, tt->apply_ms);
		else
			rc = err_set(e, KVS_ESTATE, "--bench-exit: the reply did not finish");
	}
	tui_grid_free(&tt->grid);
	tui_grid_free(&tt->prev);
	tui_free(&tt->t);
	free(tt);
	return rc;
}
