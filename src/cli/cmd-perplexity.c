/*
 * cmd-perplexity.c: `kvscope perplexity`, computed the way llama.cpp's
 * perplexity tool does so the numbers compare directly: the file is
 * tokenized whole (BOS first if the vocabulary adds one), cut into
 * non-overlapping chunks of n_ctx tokens, each chunk evaluated from an empty
 * cache (its first token replaced by BOS when the vocabulary adds one), and
 * only the second half of each chunk scored: logits at positions
 * n_ctx/2 .. n_ctx-2 against the tokens that follow. The running estimate
 * goes to stderr per chunk; stdout ends with "ppl X".
 */
#include "cli/opts.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static enum cli_exit cmd_perplexity_exec(struct cli_opts *o);

const struct cli_cmd cmd_perplexity = {
	.name = "perplexity",
	.usage = "[--model PATH] --file F [--ctx N] [--chunks N] [options]",
	.help = "perplexity of a text file over non-overlapping chunks (as llama.cpp's perplexity "
	        "tool)",
	.exec = cmd_perplexity_exec,
	.options = OPTG_MODEL | OPTG_ENGINE | OPTG_PPL,
	.args_max = 1,
	.args = "one text FILE (or --file FILE)",
};

static enum cli_exit cmd_perplexity_exec(struct cli_opts *o)
{
	struct gen *g = NULL;
	struct err e;
	char *text = NULL;
	size_t len, n_ids = 0, cap = 0;
	int32_t *ids = NULL;
	double nll = 0.0, nll2 = 0.0;
	uint64_t count = 0;
	enum cli_exit rc;

	if (o->n_args == 1 && o->file != NULL) {
		rc = cli_usage(&cmd_perplexity, "give either --file F or FILE ('%s'), not both",
		               o->args[0]);
		goto out;
	}
	if (o->n_args == 1)
		o->file = o->args[0];
	if (o->file == NULL) {
		rc = cli_usage(&cmd_perplexity, "missing --file F");
		goto out;
	}
	if (file_read_all(o->file, &text, &len, &e) != KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	uint32_t n_ctx = cli_opts_given(o, "ctx") ? o->gen.engine.n_ctx : 512;
	o->gen.engine.n_ctx = n_ctx;
	rc = cli_gen_open(o, &g);
	if (rc != CLI_OK)
		goto out;
	const struct vocab *v = gen_vocab(g);
	bool add_bos = vocab_add_bos(v) && vocab_bos(v) >= 0;
	if (vocab_tokenize(v, text, len, true, false, &ids, &n_ids, &cap, &e) != KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	size_t n_chunks = n_ids / n_ctx;
	if (o->chunks > 0 && o->chunks < n_chunks)
		n_chunks = o->chunks;
	if (n_chunks == 0) {
		err_set(&e, KVS_EARG, "%s: %zu tokens is less than one chunk of --ctx %u tokens", o->file,
		        n_ids, n_ctx);
		rc = cli_fail(&e);
		goto out;
	}
	fprintf(stderr, "kvscope: %zu tokens, %zu chunks of %u, scoring positions %u..%u of each\n",
	        n_ids, n_chunks, n_ctx, n_ctx / 2, n_ctx - 2);
	uint32_t n_vocab = gen_n_vocab(g), first = n_ctx / 2, nb = gen_n_batch(g);
	int32_t *chunk = xmallocarray(n_ctx, sizeof *chunk);
	double t0 = clock_now_s();
	for (size_t c = 0; c < n_chunks; c++) {
		memcpy(chunk, ids + c * n_ctx, n_ctx * sizeof *chunk);
		if (add_bos)
			chunk[0] = vocab_bos(v);
		engine_kv_clear(gen_engine(g));
		for (uint32_t done = 0; done < n_ctx;) {
			uint32_t m = KVS_MIN(nb, n_ctx - done);
			enum engine_logits lg = done + m > first ? ENGINE_LOGITS_ALL : ENGINE_LOGITS_NONE;
			struct engine_out out;
			if (gen_run_linear(gen_engine(g), chunk + done, done, m, lg, &out, &e) != KVS_OK) {
				free(chunk);
				rc = cli_fail(&e);
				goto out;
			}
			for (uint32_t i = 0; lg == ENGINE_LOGITS_ALL && i < m; i++) {
				uint32_t p = done + i;
				float s, h;
				if (p < first || p > n_ctx - 2)
					continue;
				engine_row_stats(out.logits + (size_t)i * n_vocab, n_vocab, ids[c * n_ctx + p + 1],
				                 &s, &h);
				nll += s;
				nll2 += (double)s * s;
				count++;
			}
			done += m;
		}
		fprintf(stderr, "[%zu]%.4f,", c + 1, exp(nll / (double)count));
		if (c == 0)
			fprintf(stderr, " (%.2f s per chunk) ", clock_now_s() - t0);
	}
	fputc('\n', stderr);
	free(chunk);
	double mean = nll / (double)count;
	double var = nll2 / (double)count - mean * mean;
	double ppl = exp(mean);
	/* llama.cpp's +/- : the standard error of the mean nll, through exp. */
	double se = count > 1 && var > 0 ? sqrt(var / (double)(count - 1)) * ppl : 0.0;
	fprintf(stderr, "kvscope: final estimate: PPL = %.4f +/- %.5f over %llu tokens in %.1f s\n",
	        ppl, se, (unsigned long long)count, clock_now_s() - t0);
	printf("ppl %.4f\n", ppl);
	rc = fflush(stdout) == 0 ? CLI_OK : CLI_FAIL;
out:
	free(ids);
	free(text);
	gen_close(g);
	return rc;
}
