/*
 * tui.h: the ncurses workbench, the front end `kvscope` starts with no
 * command. The one public header of src/tui/; the insides (view models,
 * the renderer interface, panes, commands, the input line) are in
 * tui-int.h. Built only with ncursesw (HAVE_TUI); otherwise notui.c
 * provides these functions and tui_available() says no.
 */
#ifndef KVS_TUI_H
#define KVS_TUI_H

#include "app/app.h"

enum tui_color_mode {
	TUI_COLOR_AUTO = 0, /* 256 colours when the terminal has them, else 8, else none */
	TUI_COLOR_256,
	TUI_COLOR_TRUE, /* 24-bit where the terminal supports direct colour */
	TUI_COLOR_NONE, /* monochrome (also when NO_COLOR is set) */
};

struct tui_options {
	const char *theme; /* "dark" (default) or "light" */
	enum tui_color_mode color;
	bool ascii;                 /* ASCII glyphs instead of block/braille */
	const char *prompt;         /* sent as the first message (NULL: none) */
	bool bench_exit;            /* quit after the first reply; print its decode tok/s */
	const char *model_path;     /* for the sessions plugins open */
	bool no_plugins;            /* do not autoload plugins */
	const char *const *plugins; /* (n_plugins) plugin files to load at start (--plugin) */
	int n_plugins;
	const char *db_path; /* session database for :save, :load ... (NULL: the default) */
	const char *resume;  /* at start, :load this saved session ("": the latest; NULL: none) */
	bool save;           /* at start, :save (title: save_title, NULL: none) */
	const char *save_title;
	const char *sampler; /* the sampler settings saved sessions record (text) */
	/* with resume: what the command line asked for, applied after the saved
	 * session's own policy and budget (NULL, -1: keep those) */
	const char *resume_policy;
	int64_t resume_budget;
	/* the session has a cold tier (session_set_cold), in a temporary
	 * database deleted at exit when cold_temp (the status line says so) */
	bool cold, cold_temp;
};

/* Whether this build has the workbench. */
bool tui_available(void);
/* Run the workbench on s until the user quits; the terminal is restored
 * on every exit path. */
int tui_run(struct session *s, const struct tui_options *o, struct err *e);

#endif
