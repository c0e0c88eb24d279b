/*
 * main.c: kvscope's entry point and command table.
 *
 * `kvscope COMMAND [ARGS]` runs one command from the table below; the table
 * is also the help text. Two-word commands ("model info") match on both
 * words. Every command runs through main_run: its defaults hook, the
 * option table (opts.c), the count of positional arguments its entry
 * allows, then its exec. Without a command (options alone are fine:
 * `kvscope --model X`) kvscope starts the workbench on a terminal, and the
 * plain line-mode chat when standard input or output is not a terminal.
 *
 * Output that was lost is not success: main flushes and closes stdout and
 * stderr once, at exit (as coreutils' close_stdout does), and a write that
 * failed there or anywhere before (a full disk, a closed descriptor) turns
 * the exit status into CLI_FAIL with one line, "kvscope: write error:
 * REASON". A closed descriptor 0, 1 or 2 is held open on /dev/null in the
 * wrong direction before anything else is opened, so a file kvscope opens
 * can never become its stdout and writes to it fail as they should.
 */
#include "cli/cli.h"
#include "cli/opts.h"
#include "model/model.h"
#include "store/store.h"
#include "kv/kv_cache.h"
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

static const struct cli_cmd *const cli_cmds[] = {
	&cmd_tui,
	&cmd_chat,
	&cmd_generate,
	&cmd_eval_passkey,
	&cmd_eval_recall,
	&cmd_eval_rps,
	&cmd_eval_sparse,
	&cmd_eval_tlg,
	&cmd_run,
	&cmd_model_info,
	&cmd_tokenize,
	&cmd_logits,
	&cmd_perplexity,
	&cmd_bench,
	&cmd_sessions_list,
	&cmd_sessions_show,
	&cmd_sessions_export,
	&cmd_sessions_delete,
	&cmd_sessions_vacuum,
	&cmd_sessions_check,
};

char *cli_model_path(const char *explicit_path)
{
	return model_default_path(explicit_path);
}

/* The exit code of each status code (base.h): what the input caused is
 * CLI_BADINPUT. A status past the table (a new one) exits CLI_FAIL. */
static const enum cli_exit main_exit_of[] = {
	[KVS_OK] = CLI_OK,           [KVS_EFORMAT] = CLI_BADINPUT,   [KVS_EUNSUPPORTED] = CLI_BADINPUT,
	[KVS_EIO] = CLI_FAIL,        [KVS_EARG] = CLI_BADINPUT,      [KVS_ERANGE] = CLI_BADINPUT,
	[KVS_ESTATE] = CLI_FAIL,     [KVS_ENOTFOUND] = CLI_BADINPUT, [KVS_ECHECKSUM] = CLI_BADINPUT,
	[KVS_ENOMEM] = CLI_BADINPUT,
};

enum cli_exit cli_exit_code(int status)
{
	if (status < 0 || (size_t)status >= KVS_ARRAY_LEN(main_exit_of))
		return CLI_FAIL;
	return main_exit_of[status];
}

enum cli_exit cli_fail(const struct err *e)
{
	/* a message may quote a database, a file or a path: no escape sequences */
	char *msg = store_text_escape(e->msg[0] ? e->msg : err_name(e->code), 0);
	fprintf(stderr, "kvscope: %s\n", msg);
	free(msg);
	return cli_exit_code(e->code);
}

/* errno of the first failed flush of stdout that cli_stdout_flush saw. */
static int main_stdout_errno;

bool cli_stdout_flush(void)
{
	/* a write that failed inside printf (a full buffer flushed on its
	 * own) leaves ferror set and nothing to flush: its errno is still the
	 * last one when this runs right after the output */
	if (fflush(stdout) != 0 || ferror(stdout)) {
		if (main_stdout_errno == 0)
			main_stdout_errno = errno;
		return false;
	}
	return true;
}

/* Keep descriptors 0, 1 and 2 taken: a closed one gets /dev/null opened
 * the other way (stdin for writing, stdout and stderr for reading), so
 * reads and writes on it fail instead of reaching a file opened later. */
static void main_hold_std_fds(void)
{
	for (int fd = 0; fd <= 2; fd++)
		if (fcntl(fd, F_GETFD) < 0 && errno == EBADF &&
		    open("/dev/null", fd == 0 ? O_WRONLY : O_RDONLY) < 0)
			_exit(CLI_FAIL); /* nothing to say it with, and no safe way on */
}

/* Flush and close stdout and stderr; a write that failed makes a
 * successful rc CLI_FAIL, with one line on stderr while it still works. */
static int main_close_std(int rc)
{
	bool failed = false;
	int err = 0;

	if (fflush(stdout) != 0) {
		failed = true;
		err = errno;
	} else if (ferror(stdout)) { /* failed earlier, its data gone */
		failed = true;
		err = main_stdout_errno; /* 0: the reason was not seen */
	}
	if (fclose(stdout) != 0 && !failed) {
		failed = true;
		err = errno;
	}
	if (failed) {
		if (err != 0)
			fprintf(stderr, "kvscope: write error: %s\n", strerror(err));
		else
			fprintf(stderr, "kvscope: write error\n");
		if (rc == CLI_OK)
			rc = CLI_FAIL;
	}
	if ((fflush(stderr) != 0 || ferror(stderr) || fclose(stderr) != 0) && rc == CLI_OK)
		rc = CLI_FAIL;
	return rc;
}

enum cli_exit cli_usage(const struct cli_cmd *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "kvscope %s: ", cmd->name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see 'kvscope help %s')\n", cmd->name);
	return CLI_BADINPUT;
}

/* `kvscope help CMD` and CMD --help: the usage line, the help line, the options. */
static void main_cmd_help(const struct cli_cmd *cmd, FILE *fp)
{
	fprintf(fp, "usage: kvscope %s %s\n%s\n", cmd->name, cmd->usage, cmd->help);
	if (cmd->options != 0) {
		fprintf(fp, "\noptions:\n");
		cli_opts_help(cmd->options, fp);
	}
}

/* The count of positional arguments against cmd's entry; prints the usage
 * error naming the first argument too many, or what is missing. */
static enum cli_exit main_check_args(const struct cli_cmd *cmd, const struct cli_opts *o)
{
	if (o->n_args < cmd->args_min)
		return cli_usage(cmd, "expected %s", cmd->args);
	if (cmd->args_max >= 0 && o->n_args > cmd->args_max) {
		const char *extra = o->args[cmd->args_max];
		if (cmd->args == NULL)
			return cli_usage(cmd, "unexpected argument '%s'", extra);
		return cli_usage(cmd, "unexpected argument '%s'; expected %s", extra, cmd->args);
	}
	return CLI_OK;
}

/* Run cmd on argv[1..]: its defaults, the options, the argument count, exec. */
static enum cli_exit main_run(const struct cli_cmd *cmd, int argc, char **argv)
{
	struct cli_opts o;
	enum cli_exit rc;

	cli_opts_default(&o);
	rc = cmd->defaults != NULL ? cmd->defaults(&o) : CLI_OK;
	if (rc == CLI_OK)
		rc = cli_opts_parse(cmd, argc, argv, &o);
	if (rc == CLI_OK && o.help) {
		main_cmd_help(cmd, stdout);
		cli_stdout_flush(); /* a failure's reason, for main_close_std */
	} else if (rc == CLI_OK && (rc = main_check_args(cmd, &o)) == CLI_OK) {
		rc = cmd->exec(&o);
	}
	cli_opts_free(&o);
	return rc;
}

/* `kvscope help`: every command with its usage and help line. */
static void main_help(FILE *fp)
{
	size_t i;

	fprintf(fp,
	        "usage: kvscope [COMMAND] [ARGS]\n"
	        "       kvscope [OPTIONS]      (no command: interactive chat)\n\ncommands:\n");
	for (i = 0; i < KVS_ARRAY_LEN(cli_cmds); i++)
		fprintf(fp, "  %-12s %s\n      %s\n", cli_cmds[i]->name, cli_cmds[i]->usage,
		        cli_cmds[i]->help);
	fprintf(fp,
	        "\n'kvscope help COMMAND' lists a command's options; 'kvscope help policies' the "
	        "KV retention policies; 'kvscope help sparse' the sparse attention modes.\n");
	fprintf(fp, "\nenvironment: KVSCOPE_MODEL (model file), XDG_DATA_HOME, XDG_STATE_HOME\n");
}

/* Find the command named by argv[1] (and argv[2] for two-word names);
 * *words says how many argv entries the name used. */
static const struct cli_cmd *main_find(int argc, char **argv, int *words)
{
	size_t i, n1;
	const char *name;

	for (i = 0; i < KVS_ARRAY_LEN(cli_cmds); i++) {
		name = cli_cmds[i]->name;
		n1 = strcspn(name, " ");
		if (strncmp(argv[1], name, n1) != 0 || argv[1][n1] != '\0')
			continue;
		if (name[n1] == '\0') {
			*words = 1;
			return cli_cmds[i];
		}
		if (argc > 2 && strcmp(argv[2], name + n1 + 1) == 0) {
			*words = 2;
			return cli_cmds[i];
		}
	}
	return NULL;
}

/* Run the command argv names (or the chat or the workbench); the exit code. */
static int main_dispatch(int argc, char **argv)
{
	const struct cli_cmd *cmd;
	int words = 1;
	const char *lvl = getenv("KVSCOPE_LOG");

	if (lvl != NULL && strcmp(lvl, "debug") == 0)
		log_set_level(LOG_DEBUG);
	else if (lvl != NULL && strcmp(lvl, "info") == 0)
		log_set_level(LOG_INFO);
	if (argc < 2 || (argv[1][0] == '-' && argv[1][1] != '-' && argv[1][1] != 'h') ||
	    (strncmp(argv[1], "--", 2) == 0 && strcmp(argv[1], "--help") != 0 &&
	     strcmp(argv[1], "--version") != 0)) {
		/* No command (or only options): the workbench on a terminal; from
		 * a pipe, the plain chat (one reply per line, for scripts). */
		if (isatty(0) && isatty(1))
			return main_run(&cmd_tui, argc, argv);
		return main_run(&cmd_chat, argc, argv);
	}
	if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
	    strcmp(argv[1], "-h") == 0) {
		if (argc > 2 && strcmp(argv[2], "policies") == 0) {
			printf("KV retention policies (--policy NAME[:k=v,...]; defaults shown):\n");
			kv_policy_help(stdout);
		} else if (argc > 2 && strcmp(argv[2], "sparse") == 0) {
			printf("Sparse decode attention (--sparse MODE[:k=v,...]; defaults shown):\n");
			engine_sparse_help(stdout);
		} else if (argc > 2 && (cmd = main_find(argc - 1, argv + 1, &words)) != NULL) {
			main_cmd_help(cmd, stdout);
		} else {
			main_help(stdout);
		}
		cli_stdout_flush(); /* a failure's reason, for main_close_std */
		return CLI_OK;
	}
	if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
		printf("kvscope %s\n", PACKAGE_VERSION);
		return CLI_OK;
	}
	cmd = main_find(argc, argv, &words);
	if (cmd == NULL) {
		fprintf(stderr, "kvscope: unknown command '%s'; expected one of:", argv[1]);
		for (size_t i = 0; i < KVS_ARRAY_LEN(cli_cmds); i++)
			fprintf(stderr, "%s '%s'", i ? "," : "", cli_cmds[i]->name);
		fprintf(stderr, " (see kvscope help)\n");
		return CLI_BADINPUT;
	}
	return main_run(cmd, argc - words, argv + words);
}

int main(int argc, char **argv)
{
	main_hold_std_fds();
	return main_close_std(main_dispatch(argc, argv));
}
