/*
 * cmd-logits.c: `kvscope logits`: the model's logits at every position of a
 * prompt, as JSON lines {"pos":i,"token":id,"top":[[id,logit],...]}, the top
 * K by logit (ties by lower id). The same shape as the reference fixtures,
 * so outputs can be compared line by line with other engines.
 */
#include "cli/opts.h"

#include <stdio.h>
#include <stdlib.h>

static enum cli_exit cmd_logits_exec(struct cli_opts *o);

const struct cli_cmd cmd_logits = {
	.name = "logits",
	.usage = "[--model PATH] --prompt-file F [--raw] [--top K] [options]",
	.help = "print the top-K logits at every position of a prompt as JSON lines",
	.exec = cmd_logits_exec,
	.options = OPTG_MODEL | OPTG_ENGINE | OPTG_PROMPT | OPTG_LOGITS,
};

/* Indices of the k largest values of row (n), best first, into idx. */
static void logits_top(const float *row, uint32_t n, uint32_t k, int32_t *idx)
{
	uint32_t have = 0;

	for (uint32_t j = 0; j < n; j++) {
		float v = row[j];
		uint32_t at;
		if (have == k && !(v > row[idx[k - 1]]))
			continue;
		at = have < k ? have++ : k - 1;
		while (at > 0 && v > row[idx[at - 1]]) {
			idx[at] = idx[at - 1];
			at--;
		}
		idx[at] = (int32_t)j;
	}
}

static enum cli_exit cmd_logits_exec(struct cli_opts *o)
{
	struct gen *g = NULL;
	struct err e;
	char *text = NULL;
	size_t len, n_ids = 0;
	int32_t *ids = NULL, *top = NULL;
	enum cli_exit rc;

	if (o->doc != NULL)
		return cli_usage(&cmd_logits,
		                 "--doc applies to chat and tui; put the text in --prompt-file");
	if (cli_prompt_read(o, &text, &len, &e) != KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	rc = cli_gen_open(o, &g);
	if (rc != CLI_OK)
		goto out;
	if (cli_prompt_tokens(g, text, len, o->raw, o->system, &ids, &n_ids, &e) != KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	if (n_ids > gen_n_ctx(g)) {
		err_set(&e, KVS_ERANGE,
		        "context overflow: the prompt has %zu tokens, the context %u (raise --ctx)", n_ids,
		        gen_n_ctx(g));
		rc = cli_fail(&e);
		goto out;
	}
	uint32_t n_vocab = gen_n_vocab(g), k = KVS_MIN(o->top, n_vocab);
	top = xmallocarray(k, sizeof *top);
	for (size_t done = 0; done < n_ids;) {
		uint32_t m = (uint32_t)KVS_MIN((size_t)gen_n_batch(g), n_ids - done);
		struct engine_out out;

		if (gen_run_linear(gen_engine(g), ids + done, (uint32_t)done, m, ENGINE_LOGITS_ALL, &out,
		                   &e) != KVS_OK) {
			rc = cli_fail(&e);
			goto out;
		}
		for (uint32_t i = 0; i < m; i++) {
			const float *row = out.logits + (size_t)i * n_vocab;
			logits_top(row, n_vocab, k, top);
			printf("{\"pos\":%zu,\"token\":%d,\"top\":[", done + i, ids[done + i]);
			for (uint32_t j = 0; j < k; j++)
				printf("%s[%d,%.6f]", j ? "," : "", top[j], row[top[j]]);
			printf("]}\n");
		}
		done += m;
	}
	rc = fflush(stdout) == 0 ? CLI_OK : CLI_FAIL;
out:
	free(ids);
	free(top);
	free(text);
	gen_close(g);
	return rc;
}
