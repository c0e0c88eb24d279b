/*
 * cli.h: the command-line front end. One file per command (cmd-NAME.c), each
 * exporting one constant struct cli_cmd; main.c lists them in a table that
 * also feeds `kvscope help` and usage errors.
 *
 * Exit codes: 0 success, 1 runtime failure, 2 bad input (usage, file,
 * text). stdout carries only a command's result; everything else is stderr.
 */
#ifndef KVS_CLI_H
#define KVS_CLI_H

#include "base/base.h"

enum { CLI_OK = 0, CLI_FAIL = 1, CLI_BADINPUT = 2 };

/* Option groups a command accepts (the table is in opts.c). */
enum opt_group {
	OPTG_MODEL = 1u << 0,   /* --model */
	OPTG_ENGINE = 1u << 1,  /* -t, --ctx, --backend, --kv-type, --batch */
	OPTG_SAMPLER = 1u << 2, /* --temp, --top-k, --top-p, --min-p, penalties, --seed */
	OPTG_PROMPT = 1u << 3,  /* --prompt, --prompt-file, --raw, --system */
	OPTG_GEN = 1u << 4,     /* --max-tokens */
	OPTG_LOGITS = 1u << 5,  /* --top */
	OPTG_PPL = 1u << 6,     /* --file, --chunks (with --ctx) */
	OPTG_BENCH = 1u << 7,   /* -p, -n, -r, --json */
	OPTG_TOKENIZE = 1u << 8,
	OPTG_KV = 1u << 9,      /* --policy, --kv-budget, --token-stats */
	OPTG_TRACE = 1u << 10,  /* --trace, --trace-attn */
	OPTG_EVAL = 1u << 11,   /* --format, --seed, --json */
	OPTG_PASSKEY = 1u << 12, /* --lengths, --depths, --samples */
	OPTG_RPS = 1u << 13,    /* --rounds, --dominant */
	OPTG_RUN = 1u << 14,    /* --plugin, --timeout, --hook-ms, --mem-cap, --results, --api-doc */
	OPTG_DB = 1u << 15,     /* --db */
	OPTG_SAVE = 1u << 16,   /* --resume, --title, --save (chat) */
	OPTG_EXPORT = 1u << 17, /* --format md|json (sessions export) */
	OPTG_LEN = 1u << 18,    /* --target-words, --length, --no-length-prompt, --no-repeat */
	OPTG_TLG = 1u << 19,    /* --levels, --prompts (eval tlg) */
	OPTG_TUI = 1u << 20,    /* --theme, --color, --ascii, --bench-exit */
	OPTG_PLUGIN = 1u << 21, /* --plugin (run and the workbench) */
};


struct cli_cmd {
	const char *name;   /* "tokenize", or "model info" for a two-word command */
	const char *usage;  /* argument synopsis */
	const char *help;   /* one line */
	int (*exec)(int argc, char **argv); /* argv[0] is the command name */
	unsigned options;   /* option groups it accepts (opts.h), for help */
};

/* The model path to use: explicit (--model), else $KVSCOPE_MODEL, else the
 * default model in $XDG_DATA_HOME/kvscope/models/. Returns a new string
 * (caller owns); never NULL. */
char *cli_model_path(const char *explicit_path);
/* Print "kvscope: MSG" for a failed status; return the matching exit code. */
int cli_fail(const struct err *e);
/* Print a usage error for cmd with a one-line reason; return CLI_BADINPUT. */
int cli_usage(const struct cli_cmd *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Map a status code to an exit code (input problems are 2). */
int cli_exit_code(int status);

extern const struct cli_cmd cmd_bench;
extern const struct cli_cmd cmd_chat;
extern const struct cli_cmd cmd_eval_passkey;
extern const struct cli_cmd cmd_eval_rps;
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
