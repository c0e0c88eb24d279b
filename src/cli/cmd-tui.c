/*
 * cmd-tui.c: `kvscope tui`, also what `kvscope` with no command starts:
 * the ncurses workbench (src/tui/). The session is opened here like the
 * plain chat's, with attention capture on (full rows, at most one step
 * event per 33 ms, the UI's frame time) and per-token statistics, then
 * handed to tui_run; --resume, --save, --title and --db act as :load and
 * :save at start (--db saves from the first exchange, as chat --db does), --target-words N and --length SPEC as :len (the same options,
 * parsed by the same len_target_parse, as chat and generate). In a build without the workbench it says so in one
 * line and points to `kvscope chat`. --cold on (and --cold-max, --cold-block,
 * --recall, --recall-budget) gives the session a cold tier as chat's: in
 * the --db database, or without one in a temporary database saved from
 * the first exchange and deleted at exit (the status line says which).
 */
#include "cli/opts.h"
#include "tui/tui.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static enum cli_exit cmd_tui_exec(struct cli_opts *o);
static enum cli_exit cmd_tui_defaults(struct cli_opts *o);

const struct cli_cmd cmd_tui = {
	.name = "tui",
	.usage = "[--model PATH] [--system TEXT] [--policy NAME] [--theme dark|light] "
	         "[--target-words N | --length SPEC] [--cold on [--recall R]] [options]",
	.help = "the workbench: chat, attention, KV memory and retention views (the default "
	        "command)",
	.exec = cmd_tui_exec,
	.options = OPTG_MODEL | OPTG_ENGINE | OPTG_SAMPLER | OPTG_GEN | OPTG_PROMPT | OPTG_KV |
	        OPTG_TUI | OPTG_DB | OPTG_SAVE | OPTG_PLUGIN | OPTG_LEN | OPTG_COLD,
	.defaults = cmd_tui_defaults,
};

/* Refuse at once in a build without the workbench (before the options:
 * tests probe for it with an option that does not exist); else the chat's
 * defaults: replies of up to 512 tokens, the streaming policy. */
static enum cli_exit cmd_tui_defaults(struct cli_opts *o)
{
	if (!tui_available()) {
		fprintf(stderr,
		        "kvscope: the workbench was not built (no ncursesw at configure "
		        "time); try 'kvscope chat'\n");
		return CLI_FAIL;
	}
	o->max_tokens = 512;
	/* a conversation outlives any budget: sinks + recent by default */
	kv_policy_parse("streaming", &o->gen.kv.policy, NULL);
	return CLI_OK;
}

/* Remove the temporary cold-tier folder dir: its database files and the
 * snapshot files a save wrote beside them (nothing else lives there). */
static void cmd_tui_cold_rm(const char *dir)
{
	static const char *const parts[] = { "cold.db",          "cold.db-wal",
		                                 "cold.db-shm",      "cold.db-journal",
		                                 "cold.db-cold",     "cold.db-cold-wal",
		                                 "cold.db-cold-shm", "cold.db-cold-journal" };
	for (size_t i = 0; i < KVS_ARRAY_LEN(parts); i++) {
		char *f = xasprintf("%s/%s", dir, parts[i]);
		(void)unlink(f);
		free(f);
	}
	char *kv = xasprintf("%s/cold.db-kv", dir);
	DIR *d = opendir(kv);
	if (d != NULL) {
		struct dirent *de;
		while ((de = readdir(d)) != NULL) {
			if (de->d_name[0] == '.')
				continue;
			char *f = xasprintf("%s/%s", kv, de->d_name);
			(void)unlink(f);
			free(f);
		}
		closedir(d);
	}
	(void)rmdir(kv);
	free(kv);
	if (rmdir(dir) != 0)
		log_warn("cold tier: could not remove the temporary folder %s", dir);
}

static enum cli_exit cmd_tui_exec(struct cli_opts *o)
{
	static const struct {
		const char *name;
		enum tui_color_mode mode;
	} colors[] = { { "auto", TUI_COLOR_AUTO },
		           { "256", TUI_COLOR_256 },
		           { "truecolor", TUI_COLOR_TRUE },
		           { "none", TUI_COLOR_NONE } };
	struct tui_options to = { 0 };
	struct session *s = NULL;
	char *model_path = NULL, *cold_dir = NULL, *cold_db = NULL;
	char sampler[256], policy[256];
	struct err e;
	enum cli_exit rc;
	int run;

	if (o->prompt_file != NULL || o->raw) {
		rc = cli_usage(&cmd_tui, "the workbench takes no --prompt-file or --raw");
		goto out;
	}
	if (o->bench_exit && o->prompt == NULL) {
		rc = cli_usage(&cmd_tui, "--bench-exit needs --prompt TEXT");
		goto out;
	}
	if (!isatty(0)) {
		rc = cli_usage(&cmd_tui,
		               "the workbench needs a terminal on standard input; from a pipe "
		               "use 'kvscope chat'");
		goto out;
	}
	to.color = TUI_COLOR_AUTO;
	if (o->color != NULL) {
		size_t i;
		for (i = 0; i < KVS_ARRAY_LEN(colors); i++)
			if (strcmp(o->color, colors[i].name) == 0)
				break;
		if (i == KVS_ARRAY_LEN(colors)) {
			rc = cli_usage(&cmd_tui,
			               "--color %s: expected auto, 256, truecolor or "
			               "none",
			               o->color);
			goto out;
		}
		to.color = colors[i].mode;
	}
	to.theme = o->theme;
	to.ascii = o->ascii;
	to.prompt = o->prompt;
	to.bench_exit = o->bench_exit;
	to.no_plugins = o->no_plugins;
	char *plugins[KVS_ARRAY_LEN(o->plugins)];
	for (int i = 0; i < o->n_plugins; i++)
		plugins[i] = cli_find_script(o->plugins[i], "plugins");
	to.plugins = (const char *const *)plugins;
	to.n_plugins = o->n_plugins;
	to.db_path = o->db;
	if (o->cold.on && o->db == NULL && o->resume == NULL && o->title == NULL && !o->save) {
		/* the cold tier needs a database: a temporary one, as chat's */
		cold_dir = file_mkdtemp("kvscope-cold", "cold tier", &e);
		if (cold_dir == NULL) {
			rc = cli_fail(&e);
			goto out;
		}
		cold_db = xasprintf("%s/cold.db", cold_dir);
		to.db_path = cold_db;
		to.cold_temp = true;
	}
	to.cold = o->cold.on;
	to.resume = o->resume;
	to.resume_budget = -1;
	if (o->resume != NULL && cli_opts_given(o, "policy"))
		to.resume_policy = kv_policy_format(&o->gen.kv.policy, policy, sizeof policy);
	if (o->resume != NULL && cli_opts_given(o, "kv-budget"))
		to.resume_budget = o->gen.kv.budget;
	/* --db saves the conversation from its first exchange, as chat --db does */
	to.save = o->save || o->title != NULL || o->db != NULL || to.cold_temp;
	to.save_title = o->title;
	model_path = cli_model_path(o->gen.model_path);
	to.model_path = model_path;
	if (o->gen.model_path == NULL && access(model_path, F_OK) != 0) {
		/* the first thing a newcomer meets: say how to get the model */
		fprintf(stderr,
		        "kvscope: the default model is not installed (%s): 'make model' in the "
		        "build tree fetches it (or 'sh scripts/setup.sh build' sets everything "
		        "up), or give --model FILE\n",
		        model_path);
		rc = CLI_FAIL;
		goto out;
	}
	o->gen.kv.capture = KV_CAPTURE_FULL;
	o->gen.kv.capture_interval_ms = 33;
	if (o->gen.kv.token_stats == KV_TOKSTATS_AUTO)
		o->gen.kv.token_stats = KV_TOKSTATS_ON;
	/* from here until the screen is given back, log lines are shown in the
	 * workbench (and written to stderr after it), not over its panes */
	log_capture_start();
	rc = cli_session_open(o, &s);
	if (rc != CLI_OK)
		goto out;
	/* the length target the replies start with, as :len sets it later */
	cli_len_apply(o, session_gen(s));
	if (o->cold.on)
		session_set_cold(s, &o->cold);
	/* what saved sessions record of the sampler (the seed in use, resolved) */
	const struct sampler_params *sp = &o->gen.sampler;
	snprintf(sampler, sizeof sampler,
	         "temp=%g top-k=%d top-p=%g min-p=%g repeat-penalty=%g seed=%u", (double)sp->temp,
	         sp->top_k, (double)sp->top_p, (double)sp->min_p, (double)sp->repeat_penalty,
	         sampler_seed(gen_sampler(session_gen(s))));
	to.sampler = sampler;
	run = tui_run(s, &to, &e);
	log_capture_stop(); /* the kept lines before the run's own error */
	rc = run == KVS_OK ? CLI_OK : cli_fail(&e);
out:
	log_capture_stop();
	session_close(s);
	if (cold_dir != NULL)
		cmd_tui_cold_rm(cold_dir);
	free(cold_dir);
	free(cold_db);
	for (int i = 0; i < to.n_plugins; i++)
		free(plugins[i]);
	free(model_path);
	return rc;
}
