/*
 * script.h: the scripting layer's one public header: Lua plugins and
 * experiment scripts (doc/lua.md is the user guide, doc/lua-api.md the API).
 *
 * A script_rt (runtime) owns every plugin. Each plugin is one lua_State with
 * its own allocator cap, instruction-count deadline and log, built from a
 * whitelist environment; every call into it is a protected call with a
 * traceback, and a plugin that fails or overruns max_errors times in a row
 * is disabled and the user told (config.notify). Unloading a plugin removes
 * everything it owned (hooks, timers, commands, views, status item,
 * policies, sessions).
 *
 * Threads: every script_* function runs on the front end's main thread
 * (the one that made the runtime), except the score provider that
 * script_policy_scorer returns, which the KV cache calls on whatever thread
 * feeds it. That provider runs the policy in a copy of its plugin (the
 * plugin's source loaded again into states of its own) that belongs to the
 * first thread calling it, so no Lua state is ever used by two threads; the
 * plugin's commands reach the copy before its next call. A front end whose
 * session runs on a worker thread copies the session's events to the main
 * thread and hands them to the script_on_* entry points there.
 *
 * Views and status items are plain data (text lines, bars, heatmap
 * matrices) that any renderer draws; commands are names, help lines and a
 * completion function. Built without Lua (configure --without-lua), the
 * same interface exists (noscript.c): script_rt_new fails with a message
 * saying so.
 */
#ifndef KVS_SCRIPT_H
#define KVS_SCRIPT_H

#include "app/app.h"

#include <stdio.h>

/* Whether this build has Lua support. */
bool script_available(void);

struct script_config {
	struct gen_config gen;   /* defaults for the sessions scripts open */
	const char *system;      /* their system prompt (NULL: the template's) */
	const char *doc;         /* the document they pin (--doc; NULL: none) */
	uint32_t max_tokens;     /* their reply length (default 256) */
	size_t mem_cap;          /* bytes per plugin state (default 64 MiB) */
	double hook_ms;          /* deadline of one hook, command or timer call (default 50) */
	double load_ms;          /* deadline of a plugin's main chunk (default 1000) */
	double script_ms;        /* deadline of a script's main chunk (0: none) */
	uint32_t max_errors;     /* consecutive errors, overruns or bad policy results before
	                           * disabling (default 3) */
	const char *results_dir; /* where kvscope.write puts files (default "results") */
	const char *db_path;     /* the session database kvscope.store_* read (NULL: the default) */
	bool headless;           /* kvscope run: print goes to stdout, progress to stderr */
	/* Messages for the user (a plugin disabled, a policy fell back): the
	 * front end shows them (TUI status line, stderr for kvscope run). A Lua
	 * policy running on a worker thread may call it from there. */
	void (*notify)(void *ud, const char *plugin, const char *msg);
	void *notify_ud;
	/* The front end's own session, when it runs on a worker thread: a
	 * plugin's kvscope.send(cmd, arg) asks the front end to queue cmd
	 * ("chat", "policy", "budget", "reset", "pin", "unpin", "max_tokens",
	 * "sparse", "doc")
	 * with its argument; NULL: kvscope.send says there is no front end. */
	int (*send)(void *ud, const char *cmd, const char *arg, struct err *e);
	void *send_ud;
};

void script_config_default(struct script_config *c);

struct script_rt;

/* A runtime with no plugins; KVS_EUNSUPPORTED without Lua support. */
int script_rt_new(struct script_rt **out, const struct script_config *c, struct err *e);
/* Unload every plugin (their on_unload hooks run) and free the runtime. */
void script_rt_free(struct script_rt *rt);

/* ---- plugins ---- */

/* Load a plugin file; its name is the file name without ".lua". KVS_EARG
 * when a plugin of that name is loaded, the file's error otherwise. */
int script_load(struct script_rt *rt, const char *path, struct err *e);
/* Load Lua source code as plugin name (the workbench's :lua); it has no
 * file, so it cannot be reloaded. */
int script_load_text(struct script_rt *rt, const char *name, const char *code, struct err *e);
/* Load every *.lua in the bundled plugin directory and in
 * $XDG_CONFIG_HOME/kvscope/plugins/ (errors go to the notify callback). */
void script_autoload(struct script_rt *rt);
int script_unload(struct script_rt *rt, const char *name, struct err *e);
int script_reload(struct script_rt *rt, const char *name, struct err *e);

struct script_plugin_info {
	const char *name, *path; /* path: NULL for a plugin given as text */
	bool enabled;
	const char *disabled_why; /* when disabled */
	uint32_t n_errors;        /* errors and overruns since loading */
	size_t mem_bytes;         /* counted in its memory cap: its Lua state's and host_bytes */
	size_t host_bytes; /* what kvscope holds for it (views, commands, sessions' turns, ...) */
	bool is_script;    /* loaded by kvscope run */
};

size_t script_plugin_count(const struct script_rt *rt);
void script_plugin_at(const struct script_rt *rt, size_t i, struct script_plugin_info *out);
/* The plugin's log, oldest first (errors with tracebacks, kvscope.log lines). */
size_t script_log_count(const struct script_rt *rt, const char *plugin);
const char *script_log_line(const struct script_rt *rt, const char *plugin, size_t i);

/* Run a script (kvscope run): load it with the script deadline, pass argv
 * as kvscope.args, then run what it scheduled. KVS_EARG when the file
 * cannot be read, KVS_EFORMAT when it does not compile, KVS_ESTATE when it
 * ran and raised an error (shown through notify with its traceback).
 * *status is the exit status the script asked for with kvscope.exit, else 0. */
int script_run(struct script_rt *rt, const char *path, int argc, char **argv, int *status,
               struct err *e);

/* ---- events (main thread; the pointers are valid during the call) ---- */

void script_on_model_loaded(struct script_rt *rt, const struct gen *g);
void script_on_turn_start(struct script_rt *rt, uint32_t index, const char *user);
void script_on_token(struct script_rt *rt, const struct gen_token *t);
void script_on_turn_end(struct script_rt *rt, const struct session_turn *t);
/* KV-cache events: evictions go to "evict" hooks, steps to "attention". */
void script_on_kv_event(struct script_rt *rt, const struct kv_event *ev);
/* The workbench's :compare after an exchange or as it stopped ("compare"). */
void script_on_compare(struct script_rt *rt, const struct compare_view *v);
/* A key the front end did not handle ("C-x", "F5", "a"); true when a hook consumed it. */
bool script_on_key(struct script_rt *rt, const char *key);
/* Run due timers and scheduled functions; returns ms until the next timer
 * is due (-1: none). */
double script_tick(struct script_rt *rt);
/* The session plugins see as kvscope.current() (NULL: none); the runtime
 * borrows s until the next call (NULL detaches) or script_rt_free.
 * Only for a session that runs on the main thread (plugins call into it
 * directly); a front end whose session runs on a worker offers it through
 * config.send instead. */
void script_attach_session(struct script_rt *rt, struct session *s);

/* ---- commands ---- */

struct script_command_info {
	const char *name, *help, *plugin;
};

size_t script_command_count(const struct script_rt *rt);
void script_command_at(const struct script_rt *rt, size_t i, struct script_command_info *out);
/* Run :name args. KVS_ENOTFOUND for an unknown name, KVS_EFORMAT when the
 * command's function fails (the error is in e and the plugin's log). */
int script_command_run(struct script_rt *rt, const char *name, const char *args, struct err *e);
/* Completions of the argument prefix for :name: up to cap new strings
 * into out (caller owns them); returns how many. */
size_t script_command_complete(struct script_rt *rt, const char *name, const char *prefix,
                               char **out, size_t cap);

/* ---- views and status items (plain data for any renderer) ---- */

enum script_item_kind { SCRIPT_ITEM_TEXT = 0, SCRIPT_ITEM_BAR, SCRIPT_ITEM_HEATMAP };

struct script_item {
	enum script_item_kind kind;
	char *text;          /* TEXT: the line; BAR, HEATMAP: the label */
	double value, max;   /* BAR: value in [0, max] */
	uint32_t rows, cols; /* HEATMAP */
	float *cells;        /* HEATMAP: (rows, cols) */
	float lo, hi;        /* HEATMAP: the value range (min and max of cells) */
};

struct script_view {
	char *name;
	const char *plugin;
	struct script_item *items; /* (n_items) top to bottom */
	size_t n_items, cap_items;
	uint64_t version; /* bumped on every change: redraw when it moved */
};

size_t script_view_count(const struct script_rt *rt);
const struct script_view *script_view_at(const struct script_rt *rt, size_t i);
/* Status items: one short text per plugin that set one. */
size_t script_status_count(const struct script_rt *rt);
/* The i-th status text; *plugin names its plugin. */
const char *script_status_at(const struct script_rt *rt, size_t i, const char **plugin);

/* ---- retention policies written in Lua ---- */

size_t script_policy_count(const struct script_rt *rt);
const char *script_policy_name_at(const struct script_rt *rt, size_t i);
/* A score provider for policy name, to be called on one thread of the
 * caller's choosing (the first to call it; others are refused), and the
 * built-in policy it runs on (positions, fallback). Each call loads the
 * policy's plugin again for the provider (its main chunk runs again).
 * KVS_ENOTFOUND for an unknown name, KVS_EARG for a policy a script
 * registered, KVS_ESTATE when the plugin does not register the policy as
 * it loads. The provider fails once its plugin is unloaded or disabled;
 * it must not be called after script_rt_free. */
int script_policy_scorer(struct script_rt *rt, const char *name, struct kv_scorer *out,
                         struct kv_policy *base, struct err *e);

/* ---- the API table ---- */

/* Write doc/lua-api.md (generated from the API table). */
int script_api_doc(FILE *fp, struct err *e);
/* The directory holding lua/, plugins/ and sessions/ ($KVSCOPE_DATADIR, the
 * installed copy, else the source tree); caller owns. */
char *script_data_dir(void);

#endif
