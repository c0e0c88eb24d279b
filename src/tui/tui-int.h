/*
 * tui-int.h: the workbench's insides, shared by the src/tui files and the tests.
 *
 * Three parts that know nothing of curses:
 *   grid.c   a text grid of cells (code point, colour role): every pane
 *            draws into it; the fake renderer is the grid itself (dumped
 *            as text by the tests), the ncurses renderer copies it to the
 *            screen (curses.c). Glyph sets: UTF-8 blocks/braille or ASCII.
 *   theme.c  semantic colour roles and the themes mapping them to colours.
 *   model.c  the view model (struct tui): chat, attention, KV memory,
 *            retention and status, updated from the worker's events.
 *   view.c   layout and the pane registry; each pane draws the model into
 *            a rectangle of the grid (the attention pane: attn.c).
 *   export.c what the panes show, written as CSV or JSON.
 *   chrome.c the gauge, input line, status line and help around the panes.
 *   cmd.c    the ':' commands (one table: exec, help, completion);
 *            cmd-run.c runs a line, completes it and lays out the help.
 *   input.c  the input line (libedit as the editing engine).
 * curses.c owns the terminal and the main loop.
 */
#ifndef KVS_TUI_INT_H
#define KVS_TUI_INT_H

#include "script/script.h"
#include "tui/tui.h"

#include <stdio.h>

/* ---- colour roles (theme.c) ---- */

enum tui_role {
	R_NORMAL = 0,
	R_DIM,
	R_TITLE,
	R_BORDER,
	R_TAB,
	R_TAB_ACTIVE,
	R_STATUS,
	R_STATUS_ERR,
	R_SYSTEM,
	R_USER,
	R_ASSISTANT,
	R_BANNER,
	R_INFO,
	R_INPUT,
	R_CURSOR,
	R_KEPT,
	R_EVICTED,
	R_SINK,
	R_KEY,
	R_PINNED,
	R_DOC,
	R_SELECTED,
	R_BAR_FILL,
	R_BAR_EMPTY,
	R_SPARK,
	R_HEAT0,
	R_HEAT1,
	R_HEAT2,
	R_HEAT3,
	R_HEAT4,
	R_HEAT5,
	R_HEAT6,
	R_HEAT7,
	R_SURP0,
	R_SURP1,
	R_SURP2,
	R_SURP3,
	R_SURP4,
	R_RECALLED, /* a token back from the cold tier */
	R_COUNT
};
#define TUI_HEAT_LEVELS 8
#define TUI_SURP_LEVELS 5

struct tui_role_color {
	int16_t fg, bg;   /* 256-colour indices, -1 default */
	int16_t fg8, bg8; /* the 8-colour fallback */
	uint8_t attr;     /* TUI_A_* (also the monochrome rendering) */
};
enum { TUI_A_BOLD = 1, TUI_A_REVERSE = 2, TUI_A_DIM = 4, TUI_A_UNDERLINE = 8 };

struct tui_theme {
	const char *name;
	struct tui_role_color role[R_COUNT];
};

size_t tui_theme_count(void);
const struct tui_theme *tui_theme_at(size_t i);
const struct tui_theme *tui_theme_find(const char *name);
const char *tui_role_name(enum tui_role r);
/* RGB of a 256-colour index (for truecolour output). */
uint32_t tui_color_rgb(int idx);

/* ---- the grid (grid.c) ---- */

struct tui_cell {
	uint32_t cp;  /* code point; 0: the right half of a wide character */
	uint8_t role; /* enum tui_role */
};

struct tui_grid {
	int w, h;
	struct tui_cell *c; /* (h, w) */
	bool ascii;         /* ASCII glyphs only */
};

struct tui_rect {
	int x, y, w, h;
};

void tui_grid_resize(struct tui_grid *g, int w, int h);
void tui_grid_free(struct tui_grid *g);
void tui_grid_clear(struct tui_grid *g);
/* Write UTF-8 text at (x, y) clipped to the rectangle r; returns the
 * columns used. Control characters show as '?', wide ones take two. */
int tui_grid_text(struct tui_grid *g, struct tui_rect r, int x, int y, enum tui_role role,
                  const char *s, size_t len);
int tui_grid_printf(struct tui_grid *g, struct tui_rect r, int x, int y, enum tui_role role,
                    const char *fmt, ...) __attribute__((format(printf, 6, 7)));
void tui_grid_put(struct tui_grid *g, int x, int y, uint32_t cp, enum tui_role role);
void tui_grid_fill(struct tui_grid *g, struct tui_rect r, uint32_t cp, enum tui_role role);
/* A box with a title on its top edge; returns the inner rectangle. */
struct tui_rect tui_grid_box(struct tui_grid *g, struct tui_rect r, const char *title, bool focus);
/* Row y as UTF-8 text, trailing blanks removed (the fake renderer's output). */
char *tui_grid_row(const struct tui_grid *g, int y);
/* The whole grid as text, one line per row. */
char *tui_grid_dump(const struct tui_grid *g);
/* Display width of UTF-8 text (wide characters count two). */
int tui_text_width(const char *s, size_t len);

/* Glyphs: the level-th of n block heights (sparklines), the heat glyph. */
uint32_t tui_glyph_spark(const struct tui_grid *g, int level /* 0..7 */);
uint32_t tui_glyph_heat(const struct tui_grid *g, int level /* 0..TUI_HEAT_LEVELS-1 */);
uint32_t tui_glyph_bar(const struct tui_grid *g, bool full);
/* Braille cell with two samples (left, right), each 0..4 dots high. */
uint32_t tui_glyph_braille(int left, int right);

/* ---- the view model (model.c) ---- */

/* MSG_RULE: a one-line separator ("── resumed ... ──") between a replayed
 * transcript and the new exchanges. */
enum tui_msg_kind { MSG_SYSTEM = 0, MSG_USER, MSG_ASSISTANT, MSG_BANNER, MSG_INFO, MSG_RULE };

struct tui_span {
	char *text;
	float surprisal; /* nats; NaN: not a model token */
};

struct tui_msg {
	enum tui_msg_kind kind;
	struct tui_span *spans;
	uint32_t n_spans, cap_spans;
	char stop[24]; /* assistant: why it ended ("" while streaming) */
	bool replayed; /* from a saved session's transcript (never streaming) */
};

/* How many of a resumed session's last turns the chat replays: every one
 * (the pane lays out only the rows it shows, so a long transcript costs a
 * frame what its last screenful costs). */
#define TUI_REPLAY_TURNS UINT32_MAX

/* One token of the dialogue, by original position. */
struct tui_tok {
	struct kv_tok t;
	char text[16]; /* its piece, shortened for display */
	bool known, cached, evicted;
	uint8_t evict_cause;
	char evict_policy[24];
};

#define TUI_STEP_HISTORY 32
#define TUI_STEP_BYTES ((size_t)48 << 20) /* attention rows kept in the ring */

/* A step event's attention (owns its rows). */
struct tui_step {
	uint64_t step;
	struct kv_tok query;
	uint32_t n_layer, n_head, n_cached;
	float *attn;                   /* (n_layer, n_head, n_cached) or NULL */
	struct kv_head_summary *heads; /* (n_layer, n_head) */
	int32_t *key_pos, *key_tok;    /* (n_cached) the columns' tokens at this step, or NULL */
	uint8_t *sel;                  /* (n_layer, n_head_kv, n_cached) sparse: 1 attended, or NULL */
	uint32_t n_head_kv;
};

enum tui_agg { AGG_HEAD = 0, AGG_MEAN, AGG_MAX, AGG_COUNT };
enum tui_overview { OV_ENTROPY = 0, OV_SINK, OV_K90, OV_COUNT };
/* The attention pane's heatmap: queries x keys over the steps of the
 * history (the cursor is the shown step and the selected token), or the
 * shown step's row alone, wrapped. */
enum tui_attn_view { ATTN_GRID = 0, ATTN_ROW };

#define TUI_SPARK_N 120
#define TUI_RECALLS 256 /* recalled blocks the details can name */

/* The evictions one summary line of the chat counts: those of one exchange
 * (prefill and decode), or those between exchanges (a budget change). */
struct tui_evict_sum {
	int32_t msg;        /* its message, -1: none open */
	uint32_t n, rounds; /* tokens and eviction events */
	uint32_t lo, hi;    /* the turns they came from */
	uint32_t n_sys;     /* system-prompt tokens among them */
	uint32_t budget;    /* the budget of the last round */
	char policy[48];    /* the policy of the last round */
	bool fallback;      /* a score provider failed in one of the rounds */
};

struct tui_pane;

struct tui {
	/* facts */
	char model[64];
	char backend[64];
	uint32_t n_layer, n_head, n_ctx;
	const struct vocab *vocab; /* read-only (token pieces) */
	const struct hparams *hp;  /* the model's, read-only (each layer's sliding window);
	                            * NULL in tests without a model */
	/* chat */
	struct tui_msg *msgs;
	uint32_t n_msgs, cap_msgs;
	int chat_scroll;    /* rows up from the bottom */
	char chat_find[64]; /* the last '/' search of the chat ("" none) */
	int32_t chat_hit;   /* the message it found, -1 none */
	bool chat_jump;     /* scroll to chat_hit at the next draw */
	/* dialogue tokens, index = original position */
	struct tui_tok *toks;
	uint32_t n_toks, cap_toks;
	int32_t sel_tok; /* selected original position, -1 none */
	/* attention */
	struct tui_step steps[TUI_STEP_HISTORY]; /* ring */
	uint32_t n_steps;                        /* total received */
	uint32_t step_back;                      /* 0: the latest; k: k steps back */
	uint32_t layer, head;
	enum tui_agg agg;
	enum tui_overview overview;
	enum tui_attn_view attn_view;
	/* KV memory */
	struct kv_stats stats;
	/* per-head keep-sets as the last snapshot had them (heads.c) */
	uint8_t *hk;     /* (n_hk, hk_layer, hk_head_kv) 1 = that pair keeps it */
	int32_t *hk_pos; /* (n_hk) the tokens' original positions, ascending */
	uint32_t n_hk, hk_layer, hk_head_kv;
	char policy[160];
	float spark_cache[TUI_SPARK_N]; /* cached tokens, one sample per step event */
	float spark_tps[TUI_SPARK_N];   /* decode tokens/s */
	uint32_t n_spark;
	/* the turn in progress */
	bool busy;
	double turn_t0_ms, first_tok_ms;
	uint32_t turn_tokens;
	uint32_t turn_words;
	char last_stop[24];
	double prefill_tps, decode_tps; /* the last turn's, or the live decode rate */
	struct len_target len;       /* the length target of the next replies (unit LEN_NONE: none) */
	struct len_target reply_len; /* the one the last reply was made under */
	/* Lua plugins (NULL: none, or a build without Lua) */
	struct script_rt *rt;
	char lua_policy[64]; /* the Lua policy in use ("" none); the scorer's name */
	char lua_base[160];  /* its base policy, restored when plugins change */
	char db_path[256];   /* the session database ("" : the default) */
	bool saving;         /* the conversation goes to the database */
	uint32_t n_unsaved;  /* its exchanges not saved (all of them when not saving) */
	char armed[16];      /* the command that, sent again, drops them ("" none) */
	/* status */
	char status[256];
	bool status_err;
	char plugins[64];
	/* view */
	const struct tui_theme *theme;
	int tab;            /* the pane shown in tab mode */
	bool help;          /* F1 overlay */
	int help_scroll;    /* its first line shown (clamped when drawn) */
	int help_w;         /* the width it was last laid out at (0: not yet) */
	char help_find[64]; /* the last search of the help ("" none) */
	bool quit;
	uint32_t n_evicted_total;
	struct tui_evict_sum evsum; /* the chat's open eviction summary line */
	/* where the retention strip drew each token (for mouse selection) */
	struct tui_hit {
		int16_t x, y, w;
		int32_t pos;
	} * hits;
	uint32_t n_hits, cap_hits;
	uint32_t strip_page;   /* tokens the strip showed at once (its page) */
	struct tui_rect strip; /* where it drew them (w 0: not shown) */
	char find[64];         /* the last :find text */
	/* where the attention grid drew its cells (for mouse selection) */
	struct tui_attn_hit {
		struct tui_rect cells;           /* w 0: not shown */
		uint32_t n_keys;                 /* keys over cells.w columns */
		int32_t *pos;                    /* (n_keys) their positions, owned */
		uint32_t back[TUI_STEP_HISTORY]; /* each row's step_back */
	} grid;
	/* the mouse and the clipboard (curses.c acts on them) */
	bool mouse_off; /* :mouse off: the terminal keeps the mouse */
	char *yank;     /* :yank's text for the clipboard, NULL none */
	/* :compare (compare.c): the comparison as the worker last sent it
	 * (owned; NULL: none yet), and a :compare sent but not begun */
	struct compare_view *cmp;
	bool cmp_pending;
	/* the cold tier (WORKER_EV_COLD): the last TUI_RECALLS blocks recalled,
	 * a ring (n_recalls counts every one), for the strip's details */
	bool cold_on, cold_temp;
	struct tui_recall {
		int32_t pos0, pos1; /* original positions of the block */
		uint32_t turn;      /* the cache's turn of its first token */
		double summary;     /* summary score (NAN: not scored) */
		double bm25;        /* BM25, 0: its words did not match */
	} recalls[TUI_RECALLS];
	uint32_t n_recalls;
	uint64_t cold_written, cold_recalled; /* tokens */
	bool cold_stopped;
	/* sparse attention (sparsity.c): the last sparse step's choice (owned,
	 * NULL: none yet), and whether the event being applied brought it */
	const struct kv_sparse_view *spv;
	struct kv_stats spv_stats; /* the stats of spv's step (its figures) */
	bool spv_fresh;
};

void tui_init(struct tui *t);
void tui_free(struct tui *t);
/* Apply one worker event to the model (now_ms: clock_now_ms()). */
void tui_apply(struct tui *t, const struct worker_event *ev, double now_ms);
/* Set the one-line status (errors in the error colour). */
void tui_status(struct tui *t, bool err, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
/* Add a message (copies text); returns it. */
struct tui_msg *tui_msg_add(struct tui *t, enum tui_msg_kind kind, const char *text);
/* An MSG_INFO line said while the chat goes on: before the reply being
 * streamed (which stays last), else at the end. */
struct tui_msg *tui_msg_note(struct tui *t, const char *text);
/* Replace the chat with a resumed session's transcript (status: whether
 * its texts could be read, msg why not), then the separator line. */
void tui_replay(struct tui *t, const struct session_recap *r, int status, const char *msg);
/* The step shown (latest minus step_back), or NULL. */
const struct tui_step *tui_step_shown(const struct tui *t);
/* Attention row of the shown step for the selected layer and head with the
 * head aggregation applied; out has n_cached floats. Returns n_cached. */
uint32_t tui_attn_row(const struct tui *t, float *out, uint32_t cap);
/* The same for step s (NULL: none). */
uint32_t tui_attn_row_of(const struct tui *t, const struct tui_step *s, float *out, uint32_t cap);
/* The steps of the history with rows and key labels, oldest first (out
 * has TUI_STEP_HISTORY places); returns how many. */
uint32_t tui_attn_steps(const struct tui *t, const struct tui_step **out);
/* The union of the steps' key positions, sorted (allocated; *n_keys), and
 * when tok is not NULL each key's token (allocated). */
int32_t *tui_attn_keys(const struct tui_step *const *st, uint32_t n_st, uint32_t *n_keys,
                       int32_t **tok);
/* qsort / bsearch order of int32_t. */
int tui_cmp_i32(const void *a, const void *b);
/* Bin n weights into n_bins cells (max per bin) and map each to a heat
 * level 0..TUI_HEAT_LEVELS-1 on a log scale from floor to 1. */
void tui_heat_bin(const float *w, uint32_t n, uint32_t n_bins, float floor, uint8_t *level);
/* A token's piece as the view shows it (shortened, whole UTF-8). */
void tui_piece(const struct tui *t, int32_t token, char *out, size_t cap);
/* Surprisal (nats) to a tint level 0..TUI_SURP_LEVELS-1. */
int tui_surp_level(float surprisal);
/* Counts of the dialogue's tokens by region. */
struct tui_regions {
	uint32_t sink, key, recent, pinned, evicted, recalled;
};
/* ---- cold.c: the cold tier's view ---- */
/* Apply a cold-tier event (the worker's WORKER_EV_COLD). */
void tui_cold_apply(struct tui *t, const struct session_cold_event *c);
/* The recalled block that holds position pos (the latest), or NULL. */
const struct tui_recall *tui_cold_recall_of(const struct tui *t, int32_t pos);
/* Why the recalled token at pos is cached, for the retention details:
 * "recalled from turn T, summary score S, BM25 B". */
void tui_cold_why(const struct tui *t, int32_t pos, char *why, size_t cap);
void tui_regions(const struct tui *t, struct tui_regions *r);
/* Ways to move the retention strip's selection (tui_select). */
enum tui_sel {
	SEL_PREV = 0,
	SEL_NEXT, /* one token */
	SEL_PAGE_UP,
	SEL_PAGE_DOWN, /* the tokens the strip shows at once */
	SEL_TURN_PREV,
	SEL_TURN_NEXT, /* the first token of the previous / next turn */
	SEL_FIRST,     /* the dialogue's first token */
	SEL_OFF,       /* none: the strip follows the live tail again */
};
/* Move the selection; SEL_TURN_NEXT past the last turn and SEL_NEXT past
 * the last token let go of it. */
void tui_select(struct tui *t, enum tui_sel how);
/* Select the first token, after the selection (wrapping round), where
 * text begins in the dialogue's token texts (ASCII case ignored); false
 * when nowhere. */
bool tui_find(struct tui *t, const char *text);
/* Find text (ASCII case ignored) in the chat's messages from the last hit
 * on, older (dir 1) or newer (-1); the hit is scrolled to at the next
 * draw. False when no message that way holds it. */
bool tui_chat_find(struct tui *t, const char *text, int dir);
/* Whether text occurs in s, ASCII case ignored. */
bool tui_has_text(const char *s, const char *text);
/* The status line's first words: how to find the rest. */
#define TUI_HINT "F1 help, : commands, Tab completes, / searches the chat"
/* Words in text (runs of non-space). */
uint32_t tui_count_words(const char *s);

/* ---- layout and panes (view.c) ---- */

struct tui_pane {
	const char *name; /* "chat", "attention", ... */
	const char *title;
	void (*draw)(struct tui *t, struct tui_grid *g, struct tui_rect r);
	bool wide; /* chosen at TUI_WIDE_W: the whole width above the strip, not the right column */
};

/* The pane registry (built-ins first; plugins may add more). */
size_t tui_pane_count(void);
const struct tui_pane *tui_pane_at(size_t i);
int tui_pane_register(const struct tui_pane *p);
int tui_pane_find(const char *name);

/* Status line items, left to right (built-ins first; plugins may add more):
 * fn writes the item's text ("" hides it). */
struct tui_status_item {
	const char *name;
	void (*fn)(const struct tui *t, char *buf, size_t cap);
};
int tui_status_register(const struct tui_status_item *it);

/* Where each pane goes: rect[i] for pane i (w == 0: hidden). */
struct tui_layout {
	bool tabs; /* too small for all panes: one at a time */
	struct tui_rect tabbar, input, gauge, status;
	struct tui_rect pane[16];
};
#define TUI_WIDE_W 160
#define TUI_WIDE_H 40
void tui_layout(const struct tui *t, int w, int h, int input_rows, struct tui_layout *l);

/* The attention pane (attn.c). */
void attn_pane(struct tui *t, struct tui_grid *g, struct tui_rect r);
/* A token's text as the panes show it: newlines and tabs as visible marks. */
void tui_tok_label(const struct tui_grid *g, const struct tui_tok *x, char *out, size_t cap);

/* ---- around the panes (chrome.c) ---- */

/* The length gauge: the words (or tokens) of the turn against the target
 * the reply was made under, whether it landed in the window, the stop
 * reason. Where the long form does not fit, a short one (never a cut
 * stop reason). */
void chrome_gauge(struct tui *t, struct tui_grid *g, struct tui_rect r);
/* The help over the whole screen but the status line, scrolled to
 * t->help_scroll (clamped here, where the page size is known). */
void chrome_help(struct tui *t, struct tui_grid *g);
void chrome_input(struct tui_grid *g, struct tui_rect r, const char *in, size_t cur, int *cx,
                  int *cy);
/* The status line: a message on the left, the items after it. When they
 * do not fit, the lowest-ranked items go first (a long model name never
 * pushes out the context and the policy), then the message is cut with
 * "...". */
void chrome_status(struct tui *t, struct tui_grid *g, struct tui_rect r);
/* Draw everything; the input line's text and cursor come from the editor. */
void tui_draw(struct tui *t, struct tui_grid *g, const char *input, size_t input_cursor,
              int *cursor_x, int *cursor_y);
/* The token under grid cell (x, y) in the retention strip, or -1. */
int32_t tui_hit_token(const struct tui *t, const struct tui_grid *g, int x, int y);
/* A click at (x, y): a token selects it; the selected token again, or the
 * strip beside its tokens, lets go of the selection; a cell of the
 * attention grid selects its key and shows its query's step. */
void tui_click(struct tui *t, const struct tui_grid *g, int x, int y);
/* The mouse wheel at (x, y), up (dir 1) or down (-1): the help when it
 * is open, the strip's selection over the strip, else the chat. */
void tui_wheel(struct tui *t, int x, int y, int dir);
/* The OSC 52 sequence that puts text on the terminal's clipboard
 * (allocated): ESC ] 52 ; c ; base64(text) BEL. */
char *tui_osc52(const char *text);
/* The last reply's text (all: the whole chat, one message a line),
 * allocated; NULL when there is none. */
char *tui_chat_text(const struct tui *t, bool all);

/* ---- exporting what is shown (export.c) ---- */

/* Write view ("attention": the steps of the attention history, every layer
 * and head; "retention": the dialogue's tokens) to path as fmt ("csv",
 * "json"; NULL or "": from the name, .csv else JSON). */
int tui_export_view(const struct tui *t, const char *view, const char *path, const char *fmt,
                    struct err *e);
/* The same to an open file, fmt "csv" or "json" (kvscope.export_view). */
int tui_export_view_fp(const struct tui *t, const char *view, const char *fmt, FILE *fp,
                       struct err *e);

/* ---- commands (cmd.c) ---- */

struct tui_ctx {
	struct tui *t;
	struct worker *w;              /* NULL in tests: commands that need it say so */
	const struct worker_cmd *sent; /* tests: the last command sent */
	struct worker_cmd last;        /* its text copied into last_text */
	char last_text[256];
	bool have_last;
	char armed_prev[16]; /* tui.armed as the line being run found it */
};

struct tui_cmd {
	const char *name;
	const char *args; /* synopsis */
	const char *help;
	int (*complete)(const char *word, size_t i, const char **out); /* i-th candidate */
	int (*exec)(struct tui_ctx *c, int argc, char **argv);
};

size_t tui_cmd_count(void);
const struct tui_cmd *tui_cmd_at(size_t i);
/* Completion source of the built-in command names (i-th candidate). */
int tui_cmd_names(const char *word, size_t i, const char **out);
/* Set the status line to the formatted error (one line) and return KVS_EARG. */
int tui_cmd_fail(struct tui_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Run one ':' line (without the colon); errors go to the status line. */
int tui_cmd_run(struct tui_ctx *c, const char *line);
/* Completion of line at its end (built-in commands, and rt's plugin
 * commands when rt is not NULL): the common extension of the last word
 * (appended to out) and the number of candidates; names lists up to a few. */
int tui_cmd_complete(struct script_rt *rt, const char *line, char *out, size_t cap, char *names,
                     size_t names_cap);
/* The help's lines for width w (caller owns them; tui_help_free): the
 * keys, the commands, rt's plugin commands (rt may be NULL), then the
 * glossary, each description wrapped to the width rather than cut. */
size_t tui_help_lines(struct script_rt *rt, int w, char ***lines);
void tui_help_free(char **lines, size_t n);
/* Open the help at the next line holding text (ASCII case ignored; after
 * the line shown when text is the last one searched); false: none does. */
bool tui_help_find(struct tui *t, const char *text);
/* A line of the input that starts with '/' (search the chat, or the help
 * when it is open; '/' alone: the next older match) or is '?' alone after
 * a search (the next newer one); false: not a search (a message, "//..."
 * sends "/..."). */
bool tui_search_line(struct tui *t, const char *line);

/* ---- :compare and its pane (compare.c) ---- */

/* :compare POLICY[:k=v,...] [BUDGET] | off | nothing (show the pane). */
int tui_compare_exec(struct tui_ctx *c, int argc, char **argv);
/* Its completion: off, then the policies. */
int tui_compare_complete(const char *word, size_t i, const char **out);
/* Take a comparison event (the model takes ev->cmp) or :compare's result. */
void tui_compare_apply(struct tui *t, struct worker_event *ev);
/* Whether a comparison is starting, replaying or following (Esc and
 * Ctrl-C stop its work in progress: worker_compare_stop). */
bool tui_compare_on(const struct tui *t);

/* ---- per-head keep-sets (heads.c) ---- */

/* Copy a snapshot's per-head map (none with one keep-set). */
void tui_heads_snapshot(struct tui *t, const struct worker_event *ev);
/* The map row, (hk_layer, hk_head_kv), of the token at original position
 * pos as the last snapshot had it (lent until the next snapshot), or NULL. */
const uint8_t *tui_heads_of(const struct tui *t, int32_t pos);
/* Name the pairs of map m, (n_layer, n_head_kv), that keep (kept) or
 * dropped (!kept) the token, a layer's heads together ("L3 h1, L7 h0 h2"),
 * into buf, cut with "..." at cap; returns the length. */
size_t tui_heads_list(const uint8_t *m, uint32_t n_layer, uint32_t n_head_kv, bool kept, char *buf,
                      size_t cap);
/* Rows the retention view gives the map of the token at pos, out of spare
 * (0: no map for it; 1: the header line alone; 2 short of the whole map:
 * the header and a digit per layer). */
int tui_heads_rows(const struct tui *t, int32_t pos, int spare);
/* Draw that many rows of pos's map from row y of r. */
void tui_heads_draw(const struct tui *t, struct tui_grid *g, struct tui_rect r, int y, int rows,
                    int32_t pos);
void tui_heads_free(struct tui *t);

/* ---- sparse attention (sparsity.c) ---- */

/* Register the sparsity pane (once; at the first sign of sparse attention). */
void tui_sparsity_register(void);
/* Take a step event's sparse view into the model (ev->sparse moves);
 * false when the event has no attention rows (a sparse step between dense
 * shadows): the attention history then stays as it is. */
bool tui_sparsity_take(struct tui *t, struct kv_event *ev);
/* The step just added to the history: a copy of the view's choice beside
 * its rows, when the view came with them. */
void tui_sparsity_step(struct tui *t, struct tui_step *s);
/* Step s's choice for the attention view's layer and head (any KV head
 * of the layer when the heads are aggregated) into out (n_cached): 1
 * attended; false when s has none (dense). */
bool tui_sel_row_of(const struct tui *t, const struct tui_step *s, uint8_t *out);
void tui_sparsity_free(struct tui *t);

/* ---- the input line (input.c) ---- */

struct tui_input;
struct tui_input *tui_input_open(void);
void tui_input_close(struct tui_input *in);
/* Feed one key: a character (code point) or, with fkey, a curses KEY_*
 * code; returns true and sets *line (caller owns) when a line was entered. */
bool tui_input_key(struct tui_input *in, int key, bool fkey, char **line);
/* How the input line waits for the user's next key when its editor reads
 * on by itself (Ctrl-R's incremental search): wait draws the screen and
 * blocks for a key (false: none; the search ends). */
void tui_input_set_wait(struct tui_input *in, bool (*wait)(void *ud, int *key, bool *fkey),
                        void *ud);
/* Save the history (also done by close). */
void tui_input_save(struct tui_input *in);
/* The buffer and the cursor (byte offset). */
const char *tui_input_text(struct tui_input *in, size_t *cursor);
void tui_input_clear(struct tui_input *in);
void tui_input_insert(struct tui_input *in, const char *s);

#endif
