/*
 * cmd-run.c: `kvscope run SCRIPT.lua [ARGS...]`, a Lua experiment script
 * without the TUI (doc/lua.md). The options before the script set the
 * defaults of the sessions it opens (model, engine, sampler, KV) and the
 * runtime's budgets; everything after the script is its kvscope.args.
 * print goes to stdout, kvscope.log, plugin errors and notices to stderr.
 * A script name without a '/' that is not a file here is looked up in the
 * bundled sessions/ folder, a plugin's in plugins/ (--plugin token-stats).
 */
#include "cli/opts.h"
#include "script/script.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static enum cli_exit cmd_run_exec(struct cli_opts *o);
static enum cli_exit cmd_run_defaults(struct cli_opts *o);

/* No minimum count: --api-doc needs no script (exec asks for one). */
const struct cli_cmd cmd_run = {
	.name = "run",
	.usage = "[--plugin FILE]... [--timeout SEC] [--model PATH] [options] SCRIPT.lua "
	         "[ARGS...] | --api-doc",
	.help = "run a Lua experiment script headless (sessions/ holds the bundled ones)",
	.exec = cmd_run_exec,
	.options = OPTG_MODEL | OPTG_ENGINE | OPTG_SAMPLER | OPTG_GEN | OPTG_KV | OPTG_RUN | OPTG_DB,
	.args_max = -1,
	.defaults = cmd_run_defaults,
};

/* The options end at the script (what follows is its kvscope.args); a
 * hook's deadline 50 ms, a plugin's memory 64 MiB. */
static enum cli_exit cmd_run_defaults(struct cli_opts *o)
{
	o->stop_at_arg = true;
	o->hook_ms = 50;
	o->mem_cap_mib = 64;
	return CLI_OK;
}

/* Plugin messages go to stderr, one line per message line. */
static void run_notify(void *ud, const char *plugin, const char *msg)
{
	(void)ud;
	fprintf(stderr, "kvscope: %s%s%s%s\n", plugin ? "plugin " : "", plugin ? plugin : "",
	        plugin ? ": " : "", msg);
}


static enum cli_exit cmd_run_exec(struct cli_opts *o)
{
	struct script_config c;
	struct script_rt *rt = NULL;
	struct err e;
	char *model = NULL, *path = NULL;
	enum cli_exit rc;

	if (o->api_doc) {
		rc = script_api_doc(stdout, &e) == KVS_OK ? CLI_OK : cli_fail(&e);
		goto out;
	}
	if (o->n_args < 1) {
		rc = cli_usage(&cmd_run, "expected a script: kvscope run SCRIPT.lua [ARGS...]");
		goto out;
	}
	script_config_default(&c);
	c.gen = o->gen;
	model = cli_model_path(o->gen.model_path);
	c.gen.model_path = model;
	c.system = o->system;
	c.doc = o->doc;
	c.max_tokens = o->max_tokens;
	c.mem_cap = (size_t)o->mem_cap_mib << 20;
	c.hook_ms = o->hook_ms;
	c.script_ms = o->timeout_s * 1000.0;
	if (o->results != NULL)
		c.results_dir = o->results;
	c.db_path = o->db;
	c.headless = true;
	c.notify = run_notify;
	if (script_rt_new(&rt, &c, &e) != KVS_OK) {
		if (o->results != NULL)
			err_prefix(&e, "--results");
		rc = cli_fail(&e);
		goto out;
	}
	for (int i = 0; i < o->n_plugins; i++) {
		char *pp = cli_find_script(o->plugins[i], "plugins");
		int lrc = script_load(rt, pp, &e);
		free(pp);
		if (lrc != KVS_OK) {
			rc = cli_fail(&e);
			goto out;
		}
	}
	path = cli_find_script(o->args[0], "sessions");
	int status;
	if (script_run(rt, path, o->n_args - 1, o->args + 1, &status, &e) != KVS_OK) {
		fflush(stdout);
		rc = cli_fail(&e);
		goto out;
	}
	rc = (enum cli_exit)status; /* 0, or what the script passed to kvscope.exit (0..125) */
out:
	fflush(stdout);
	script_rt_free(rt);
	free(model);
	free(path);
	return rc;
}
