/*
 * cmd-generate.c: `kvscope generate`: one prompt in, the continuation out.
 * stdout carries only the generated text; timings go to stderr.
 */
#include "cli/opts.h"

#include <stdio.h>
#include <stdlib.h>

static int cmd_generate_exec(int argc, char **argv);

const struct cli_cmd cmd_generate = {
	"generate",
	"[--model PATH] (--prompt TEXT | --prompt-file F) [--max-tokens N] [--temp T] [--seed S] "
	"[--raw] [options]",
	"print the model's continuation of a prompt (one user turn in the chat template unless --raw)",
	cmd_generate_exec,
	OPTG_MODEL | OPTG_ENGINE | OPTG_SAMPLER | OPTG_PROMPT | OPTG_GEN,
};

/* Stream generated text to stdout as it arrives. */
static void generate_write(const char *text, size_t len, void *ud)
{
	(void)ud;
	fwrite(text, 1, len, stdout);
	fflush(stdout);
}

static int cmd_generate_exec(int argc, char **argv)
{
	struct cli_opts o;
	struct gen *g = NULL;
	struct err e;
	char *text = NULL;
	size_t len, n_ids = 0;
	int32_t *ids = NULL;
	enum gen_stop stop;
	uint32_t n_out = 0;
	int rc;

	cli_opts_default(&o);
	rc = cli_opts_parse(&cmd_generate, cmd_generate.options, argc, argv, &o);
	if (rc != CLI_OK)
		goto out;
	if (o.n_args > 0) {
		rc = cli_usage(&cmd_generate, "unexpected argument '%s'", o.args[0]);
		goto out;
	}
	if (cli_prompt_read(&o, &text, &len, &e) != KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	rc = cli_gen_open(&o, &g);
	if (rc != CLI_OK)
		goto out;
	if (cli_prompt_tokens(g, text, len, o.raw, o.system, &ids, &n_ids, &e) != KVS_OK ||
	    gen_feed(g, ids, n_ids, &e) != KVS_OK ||
	    gen_reply(g, o.max_tokens, generate_write, NULL, &stop, &n_out, &e) != KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	if (!o.raw)
		putchar('\n');
	fflush(stdout);
	fprintf(stderr,
	        "kvscope: prompt %zu tokens in %.0f ms (%.1f tok/s); generated %u tokens in %.0f ms "
	        "(%.1f tok/s); stop: %s; backend %s/%s, %d threads; seed %u\n",
	        n_ids, g->prefill_ms + (n_ids == 1 ? g->decode_ms : 0),
	        g->prefill_ms > 0 ? (double)g->n_prefilled * 1e3 / g->prefill_ms : 0.0, n_out,
	        g->decode_ms, g->decode_ms > 0 ? (double)g->n_decoded * 1e3 / g->decode_ms : 0.0,
	        gen_stop_name(stop), engine_backend_name(g->engine), engine_isa_name(g->engine),
	        engine_n_threads(g->engine), sampler_seed(g->sampler));
	rc = CLI_OK;
out:
	free(ids);
	free(text);
	gen_close(g);
	cli_opts_free(&o);
	return rc;
}
