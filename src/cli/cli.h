/*
 * cli.h: the command-line front end. One file per command (cmd-NAME.c), each
 * exporting one constant struct cli_cmd; main.c lists them in a table that
 * also feeds `kvscope help` and usage errors. An entry carries what every
 * command shares: its option groups, how many positional arguments it
 * takes, and a hook for its own defaults. The dispatcher (main.c) sets the
 * defaults, parses the options (opts.c) and checks the argument count once
 * for all commands; exec runs with options that passed.
 *
 * Exit codes are their own type, apart from the status codes of base.h
 * (KVS_E*): cli_exit_code converts a status, in one place. stdout carries
 * only a command's result; everything else is stderr.
 */
#ifndef KVS_CLI_H
#define KVS_CLI_H

#include "base/base.h"

/* What kvscope exits with (doc/kvscope.1, EXIT STATUS). kvscope run may
 * also exit with a script's own status (kvscope.exit, 0..125). */
enum cli_exit {
	CLI_OK = 0,       /* success */
	CLI_FAIL = 1,     /* something outside the input failed: I/O, a script's error */
	CLI_BADINPUT = 2, /* bad input: usage, a malformed file or text, a value out of range */
};

/* Option groups a command accepts (the table is in opts.c). */
enum opt_group {
	OPTG_MODEL = 1u << 0,    /* --model */
	OPTG_ENGINE = 1u << 1,   /* -t, --ctx, --backend, --kv-type, --batch */
	OPTG_SAMPLER = 1u << 2,  /* --temp, --top-k, --top-p, --min-p, penalties, --seed */
	OPTG_PROMPT = 1u << 3,   /* --prompt, --prompt-file, --raw, --system */
	OPTG_GEN = 1u << 4,      /* --max-tokens */
	OPTG_LOGITS = 1u << 5,   /* --top */
	OPTG_PPL = 1u << 6,      /* --file, --chunks (with --ctx) */
	OPTG_BENCH = 1u << 7,    /* -p, -n, -r, -d, --json */
	OPTG_TOKENIZE = 1u << 8, /* --file, --pieces, --no-special */
	OPTG_KV = 1u << 9,       /* --policy, --kv-budget, --token-stats */
	OPTG_TRACE = 1u << 10,   /* --trace, --trace-attn */
	OPTG_EVAL = 1u << 11,    /* --format chat|raw, --seed, --json */
	OPTG_PASSKEY = 1u << 12, /* --lengths, --depths, --samples */
	OPTG_RPS = 1u << 13,     /* --rounds, --dominant */
	OPTG_RUN = 1u << 14,     /* --plugin, --timeout, --hook-ms, --mem-cap, --results, --api-doc */
	OPTG_DB = 1u << 15,      /* --db */
	OPTG_SAVE = 1u << 16,    /* --resume, --title, --save (chat) */
	OPTG_EXPORT = 1u << 17,  /* --format md|json (sessions export) */
	OPTG_LEN = 1u << 18,     /* --target-words, --length, --no-length-prompt, --no-repeat */
	OPTG_TLG = 1u << 19,     /* --levels, --prompts (eval tlg) */
	OPTG_TUI = 1u << 20,     /* --theme, --color, --ascii, --bench-exit */
	OPTG_PLUGIN = 1u << 21,  /* --plugin (run and the workbench) */
	OPTG_HELP = 1u << 22,    /* -h, --help: the command's usage (model info) */
	OPTG_RECALL = 1u << 23,  /* --turns, --facts, --value (eval recall) */
	OPTG_SPARSE = 1u << 24,  /* --lengths, --n-gen, --reps (eval sparse) */
	OPTG_COLD = 1u << 25,    /* --cold, --cold-max, --cold-block, --recall, --recall-* */
};

struct cli_opts; /* opts.h */

struct cli_cmd {
	const char *name;  /* "tokenize", or "model info" for a two-word command */
	const char *usage; /* argument synopsis */
	const char *help;  /* one line */
	/* Run with the parsed options (o->args holds args_min .. args_max
	 * positional arguments). */
	enum cli_exit (*exec)(struct cli_opts *o);
	unsigned options;       /* option groups it accepts (opts.h), for parsing and help */
	int args_min, args_max; /* positional arguments it takes (args_max -1: no limit) */
	const char *args;       /* what they are, for the count errors ("a session id or title") */
	/* Before parsing: the command's own defaults in o (NULL: the shared
	 * ones); an exit code other than CLI_OK ends the command (it has said why). */
	enum cli_exit (*defaults)(struct cli_opts *o);
};

/* The model path to use: explicit (--model), else $KVSCOPE_MODEL, else the
 * default model in $XDG_DATA_HOME/kvscope/models/. Returns a new string
 * (caller owns); never NULL. */
char *cli_model_path(const char *explicit_path);
/* Print "kvscope: MSG" for a failed status (control characters escaped:
 * a message may quote a database or a file); return the matching exit code. */
enum cli_exit cli_fail(const struct err *e);
/* Flush stdout: false when this or an earlier write to it failed (a full
 * disk, a closed descriptor). A command that streams stops there and
 * returns CLI_FAIL without a message of its own; main says "write error"
 * once, at exit (main.c). */
bool cli_stdout_flush(void);
/* Print a usage error for cmd with a one-line reason; return CLI_BADINPUT. */
enum cli_exit cli_usage(const struct cli_cmd *cmd, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
/* The exit code for a status code (base.h): input problems are
 * CLI_BADINPUT, the others CLI_FAIL. The one place statuses become exits. */
enum cli_exit cli_exit_code(int status);

extern const struct cli_cmd cmd_bench;
extern const struct cli_cmd cmd_chat;
extern const struct cli_cmd cmd_eval_passkey;
extern const struct cli_cmd cmd_eval_recall;
extern const struct cli_cmd cmd_eval_rps;
extern const struct cli_cmd cmd_eval_sparse;
extern const struct cli_cmd cmd_eval_tlg;
extern const struct cli_cmd cmd_generate;
extern const struct cli_cmd cmd_logits;
extern const struct cli_cmd cmd_model_info;
extern const struct cli_cmd cmd_perplexity;
extern const struct cli_cmd cmd_run;
extern const struct cli_cmd cmd_tokenize;
extern const struct cli_cmd cmd_sessions_list;
extern const struct cli_cmd cmd_sessions_show;
extern const struct cli_cmd cmd_sessions_export;
extern const struct cli_cmd cmd_sessions_delete;
extern const struct cli_cmd cmd_sessions_vacuum;
extern const struct cli_cmd cmd_sessions_check;
extern const struct cli_cmd cmd_tui;

#endif
