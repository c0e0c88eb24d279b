/*
 * cmd-generate.c: `kvscope generate`: one prompt in, the continuation out.
 * stdout carries only the generated text; timings go to stderr. With
 * --target-words N (or --length) the length controller (app/lenctl.c)
 * steers the reply into the target window and the prompt gets Ruler's
 * sentence asking for N words (unless --no-length-prompt). With
 * --trace FILE every KV-cache event (a step per forward's last token,
 * evictions, the turn) is written to FILE as one JSON line (app/trace.c).
 */
#include "cli/opts.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static enum cli_exit cmd_generate_exec(struct cli_opts *o);

const struct cli_cmd cmd_generate = {
	.name = "generate",
	.usage = "[--model PATH] (--prompt TEXT | --prompt-file F) [--max-tokens N] [--temp T] "
	         "[--seed S] [--raw] [--target-words N | --length SPEC] [--no-length-prompt] "
	         "[--stop TEXT] [--policy P] [--kv-budget N] [--trace FILE [--trace-attn] "
	         "[--trace-every MS]] [options]",
	.help = "print the model's continuation of a prompt (one user turn in the chat template "
	        "unless --raw)",
	.exec = cmd_generate_exec,
	.options = OPTG_MODEL | OPTG_ENGINE | OPTG_SAMPLER | OPTG_PROMPT | OPTG_GEN | OPTG_KV |
	        OPTG_TRACE | OPTG_LEN,
};

struct generate_trace {
	FILE *fp;
	const struct vocab *v;
};

/* Write each KV-cache event as a JSON line. */
static void generate_trace_event(const struct kv_event *ev, void *ud)
{
	struct generate_trace *t = ud;
	trace_write_event(t->fp, ev, t->v);
}

/* Stream generated text to stdout as it arrives; a failed write (a full
 * disk, a closed pipe) raises the cancel flag in ud, so generating stops. */
static void generate_write(const char *text, size_t len, void *ud)
{
	fwrite(text, 1, len, stdout);
	if (!cli_stdout_flush())
		gen_cancel_ask(ud);
}

static enum cli_exit cmd_generate_exec(struct cli_opts *o)
{
	struct gen *g = NULL;
	struct err e;
	char *text = NULL;
	size_t len, n_ids = 0;
	int32_t *ids = NULL;
	enum gen_stop stop;
	uint32_t n_out = 0;
	struct generate_trace tr = { 0 };
	struct kv_stats ks;
	struct gen_timing tm;
	struct len_target lt;
	char pol[256], lbuf[96];
	atomic_int lost; /* stdout failed: stop generating (enum gen_cancel) */
	enum cli_exit rc;

	atomic_init(&lost, GEN_CANCEL_NONE);
	if (o->doc != NULL)
		return cli_usage(&cmd_generate,
		                 "--doc pins a document in a conversation: it applies to "
		                 "chat and tui; put the text in --prompt-file here");
	if (cli_prompt_read(o, &text, &len, &e) != KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	if ((o->trace_attn || o->trace_every_ms) && o->trace == NULL) {
		rc = cli_usage(&cmd_generate, "--trace-attn and --trace-every need --trace FILE");
		goto out;
	}
	if (o->trace != NULL) {
		tr.fp = fopen(o->trace, "w");
		if (tr.fp == NULL) {
			err_set(&e, KVS_EIO, "cannot write the trace file %s: %s", o->trace, strerror(errno));
			rc = cli_fail(&e);
			goto out;
		}
		o->gen.kv.capture = o->trace_attn ? KV_CAPTURE_FULL : KV_CAPTURE_SUMMARY;
		o->gen.kv.capture_interval_ms = o->trace_every_ms;
	}
	cli_len_target(o, &lt);
	if (lt.unit != LEN_NONE && lt.instruct) {
		char *t = len_instruct_text(text, &lt);
		free(text);
		text = t;
		len = strlen(t);
	}
	rc = cli_gen_open(o, &g);
	if (rc != CLI_OK)
		goto out;
	cli_len_apply(o, g);
	gen_set_cancel(g, &lost);
	if (tr.fp != NULL) {
		tr.v = gen_vocab(g);
		kv_cache_set_events(gen_kv(g), generate_trace_event, &tr);
	}
	if (cli_prompt_tokens(g, text, len, o->raw, o->system, &ids, &n_ids, &e) != KVS_OK ||
	    gen_begin_turn(g, KV_ROLE_USER, n_ids, &e) != KVS_OK ||
	    gen_feed(g, ids, n_ids, &e) != KVS_OK ||
	    gen_reply(g, o->max_tokens, generate_write, &lost, &stop, &n_out, &e) != KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	if (!o->raw)
		putchar('\n');
	if (!cli_stdout_flush()) {
		rc = CLI_FAIL; /* main says why, once */
		goto out;
	}
	gen_timings(g, &tm);
	struct engine *eng = gen_engine(g);
	fprintf(stderr,
	        "kvscope: prompt %zu tokens in %.0f ms (%.1f tok/s); generated %u tokens in %.0f ms "
	        "(%.1f tok/s); stop: %s; backend %s/%s, %d threads; seed %u\n",
	        n_ids, tm.prefill_ms + (n_ids == 1 ? tm.decode_ms : 0),
	        tm.prefill_ms > 0 ? (double)tm.n_prefilled * 1e3 / tm.prefill_ms : 0.0, n_out,
	        tm.decode_ms, tm.decode_ms > 0 ? (double)tm.n_decoded * 1e3 / tm.decode_ms : 0.0,
	        gen_stop_name(stop), engine_backend_name(eng), engine_isa_name(eng),
	        engine_n_threads(eng), sampler_seed(gen_sampler(g)));
	if (lt.unit != LEN_NONE)
		fprintf(stderr, "kvscope: length target %s: %u words, %u tokens; stop: %s\n",
		        len_target_format(&lt, lbuf, sizeof lbuf), gen_last_reply(g)->n_words, n_out,
		        gen_stop_name(stop));
	kv_cache_stats(gen_kv(g), &ks);
	fprintf(stderr,
	        "kvscope: KV %s, budget %u: %u tokens cached (%.1f MiB), %llu evicted in %u rounds, "
	        "peak %.1f MiB\n",
	        kv_policy_format(kv_cache_policy(gen_kv(g)), pol, sizeof pol), ks.budget, ks.n_cached,
	        (double)ks.bytes / 1048576.0, (unsigned long long)ks.n_evicted, ks.n_evictions,
	        (double)ks.bytes_peak / 1048576.0);
	rc = CLI_OK;
	if (tr.fp != NULL && (fflush(tr.fp) != 0 || ferror(tr.fp))) {
		err_set(&e, KVS_EIO, "writing the trace file %s failed", o->trace);
		rc = cli_fail(&e);
	}
out:
	if (tr.fp != NULL)
		fclose(tr.fp);
	free(ids);
	free(text);
	gen_close(g);
	return rc;
}
