/*
 * opts.h: the options every command-line tool shares, in one table
 * (opts.c). A command names the groups it accepts; the table gives the
 * parsing, the help text, the error messages and whether an option was
 * given (cli_opts_given).
 */
#ifndef KVS_CLI_OPTS_H
#define KVS_CLI_OPTS_H

#include "app/app.h"
#include "cli/cli.h"

#include <stdio.h>

/* --sparse may be repeated this many times (eval sparse, eval passkey). */
#define CLI_SPARSE_MAX 8

struct cli_opts {
	struct gen_config gen;
	const char *prompt;
	const char *prompt_file;
	const char *system;
	const char *doc; /* --doc FILE: the pinned document (chat, tui) */
	bool raw;
	bool hide_think; /* chat --hide-think: thinking blocks not shown */
	uint32_t max_tokens;
	uint32_t top;
	const char *file;
	uint32_t chunks;   /* 0 = all */
	uint32_t n_prompt; /* bench -p */
	uint32_t n_gen;    /* bench -n */
	uint32_t reps;     /* bench -r */
	uint32_t n_depth;  /* bench -d: tokens already cached before each test */
	bool json;
	const char *policy_spec; /* --policy as given (NULL: not given) */
	const char *trace;       /* generate --trace FILE */
	bool trace_attn;         /* and the attention rows */
	uint32_t trace_every_ms; /* at most one step event per this many ms (0: every step) */
	const char *lengths;     /* eval passkey: "2k,4k,..." */
	uint32_t pos_cap;        /* eval sparse --cap: keys farther back share one position (given
	                          * or not: cli_opts_given; default the training context) */
	const char *prompt_cache; /* eval sparse: the prefilled prompts' folder (NULL: none) */
	const char *depths;      /* eval passkey: "10,30,50,70,90" (percent) */
	uint32_t samples;        /* eval passkey: per (length, depth) */
	uint32_t rounds;         /* eval rps */
	const char *dominant;    /* eval rps: rock, paper or scissors */
	const char *turns;       /* eval recall: filler turns, "10,30" */
	const char *facts;       /* eval recall: fact kinds, "number,name,code,day" */
	const char *fact_value;  /* eval recall: every fact's value (NULL: drawn) */
	bool eval_raw;           /* eval --format raw (default chat: the chat template) */
	const char *format;      /* sessions export --format: md or json */
	uint32_t eval_seed;
	const char *plugins[16]; /* run --plugin FILE (repeatable) */
	/* --sparse as given, in order (eval sparse and eval passkey run each;
	 * everything else uses the last, gen.kv.sparse) */
	struct engine_sparse sparse_modes[CLI_SPARSE_MAX]; /* (n_sparse_modes) */
	uint32_t n_sparse_modes;
	int n_plugins;
	double timeout_s;                /* run: the script's deadline (0: none) */
	double hook_ms;                  /* run: a hook's deadline */
	uint32_t mem_cap_mib;            /* run: per plugin */
	const char *results;             /* run: kvscope.write's directory */
	bool api_doc;                    /* run --api-doc */
	bool stop_at_arg;                /* options end at the first positional argument (run) */
	const char *db;                  /* --db PATH (NULL: the default database) */
	const char *resume;              /* --resume [ID|TITLE] ("" : the latest session) */
	const char *title;               /* chat: the new session's title */
	bool save;                       /* chat: save the conversation */
	struct session_cold_config cold; /* chat: --cold, --cold-max, --recall, --recall-budget */
	struct len_target len;           /* --target-words / --length (unit LEN_NONE: none) */
	bool no_len_prompt;              /* --no-length-prompt */
	struct lenctl_params lenp;       /* --no-repeat */
	const char *stop;                /* --stop TEXT */
	const char *levels;              /* eval tlg: "10,150,>800" */
	const char *prompts;             /* eval tlg: a TSV prompt set instead of the built-in one */
	const char *theme;               /* tui: dark or light */
	const char *color;               /* tui: auto, 256, truecolor or none */
	bool ascii;                      /* tui: ASCII glyphs */
	bool bench_exit;                 /* tui: quit after the first reply, print its decode rate */
	bool no_plugins;                 /* tui: load no plugins at start */
	bool pieces;                     /* tokenize: id and piece per line */
	bool no_special;                 /* tokenize: <|...|> stays text */
	bool help;                       /* -h, --help */
	uint64_t given[2];               /* bit i: row i of the option table was on the command line */
	char **args;                     /* positional arguments */
	int n_args;
};

/* Defaults for every option. */
void cli_opts_default(struct cli_opts *o);
/* Parse argv[1..] for cmd (the option groups in cmd->options). Returns
 * CLI_OK, or prints a usage error and returns CLI_BADINPUT. */
enum cli_exit cli_opts_parse(const struct cli_cmd *cmd, int argc, char **argv, struct cli_opts *o);
/* Whether the option with long name name ("ctx", "policy") was given. */
bool cli_opts_given(const struct cli_opts *o, const char *name);
/* Print the options of mask, one per line (for help). */
void cli_opts_help(unsigned mask, FILE *fp);
/* Free what parsing allocated (the argument list). */
void cli_opts_free(struct cli_opts *o);

/* prompt.c: read --prompt / --prompt-file (non-empty, valid UTF-8). */
int cli_prompt_read(const struct cli_opts *o, char **text, size_t *len, struct err *e);
/* prompt.c: token ids for text as one user turn (or raw with --raw). */
int cli_prompt_tokens(struct gen *g, const char *text, size_t len, bool raw, const char *system,
                      int32_t **ids, size_t *n, struct err *e);
/* The length target of o as the turn should use it (--no-length-prompt
 * applied). */
void cli_len_target(const struct cli_opts *o, struct len_target *t);
/* Give g the length target, the controller's knobs and the stop string of o
 * (g borrows o's strings: o stays valid until g's last reply). */
void cli_len_apply(const struct cli_opts *o, struct gen *g);

/* Resolve the model path in o (explicit, $KVSCOPE_MODEL or the default) and
 * open a generation context; prints the error and returns the exit code. */
enum cli_exit cli_gen_open(struct cli_opts *o, struct gen **g);
/* Open a chat session with o's model, engine, sampler, KV, system prompt
 * and max tokens; CLI_OK or the exit status after printing the error. */
enum cli_exit cli_session_open(struct cli_opts *o, struct session **s);
/* The file a script or plugin argument names: arg itself when it exists or
 * has a '/', else the bundled sub/arg[.lua] of the data folder when that
 * exists, else arg (caller owns). */
char *cli_find_script(const char *arg, const char *sub);

#endif
