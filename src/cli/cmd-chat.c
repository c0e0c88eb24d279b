/*
 * cmd-chat.c: `kvscope chat`, a plain line-mode chat. Each input line is one
 * user turn; the reply streams to stdout and ends with a newline. The
 * conversation stays in the KV cache between turns, so only the new turn is
 * fed. On a terminal there is a prompt and libedit line editing; from a pipe
 * there is no prompt, one reply per line, for scripting. Lines starting with
 * '/' are commands: /reset, /quit (see /help).
 */
#include "cli/lineedit.h"
#include "cli/opts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int cmd_chat_exec(int argc, char **argv);

const struct cli_cmd cmd_chat = {
	"chat",
	"[--model PATH] [--system TEXT] [--max-tokens N] [options]",
	"plain line-mode chat (libedit on a terminal; one reply per line from a pipe)",
	cmd_chat_exec,
	OPTG_MODEL | OPTG_ENGINE | OPTG_SAMPLER | OPTG_GEN | OPTG_PROMPT | OPTG_KV,
};

/* Stream each reply token's text as it completes. */
static void chat_token(void *ud, const struct gen_token *t)
{
	(void)ud;
	if (t->len > 0) {
		fwrite(t->text, 1, t->len, stdout);
		fflush(stdout);
	}
}

/* /policy NAME [k=v ...], /budget N and /kv: change or show the KV cache. */
static void chat_kv_command(struct gen *g, const char *line)
{
	struct err e;
	char buf[256];
	struct kv_stats st;
	int rc = KVS_OK;

	if (strncmp(line, "/policy", 7) == 0 && (line[7] == ' ' || line[7] == '\0')) {
		struct kv_policy p;
		const char *spec = line + 7 + strspn(line + 7, " ");
		if (*spec == '\0') {
			fprintf(stderr, "policy: %s\n",
			        kv_policy_format(kv_cache_policy(g->kv), buf, sizeof buf));
			return;
		}
		rc = kv_policy_parse(spec, &p, &e);
		if (rc == KVS_OK)
			rc = kv_cache_set_policy(g->kv, &p, &e);
	} else if (strncmp(line, "/budget", 7) == 0 && (line[7] == ' ' || line[7] == '\0')) {
		char *end;
		unsigned long v = strtoul(line + 7, &end, 10);
		if (end == line + 7 || *end != '\0' || v > UINT32_MAX)
			rc = err_set(&e, KVS_EARG, "/budget: expected a number of tokens, e.g. /budget 512");
		else
			rc = kv_cache_set_budget(g->kv, (uint32_t)v, &e);
	}
	g->n_past = kv_cache_n(g->kv);
	if (rc != KVS_OK) {
		fprintf(stderr, "kvscope: %s\n", e.msg);
		return;
	}
	kv_cache_stats(g->kv, &st);
	fprintf(stderr,
	        "KV %s, budget %u: %u cached (sink %u, key %u, recent %u, pinned %u), %llu evicted "
	        "in %u rounds; %.1f MiB (%.1f KiB per layer), peak %.1f MiB\n",
	        kv_policy_format(kv_cache_policy(g->kv), buf, sizeof buf), st.budget, st.n_cached,
	        st.n_sink, st.n_key, st.n_recent, st.n_pinned, (unsigned long long)st.n_evicted,
	        st.n_evictions, (double)st.bytes / 1048576.0, (double)st.bytes_per_layer / 1024.0,
	        (double)st.bytes_peak / 1048576.0);
}

static int cmd_chat_exec(int argc, char **argv)
{
	struct cli_opts o;
	struct session *s = NULL;
	struct gen *g;
	struct lineedit *le = NULL;
	struct err e;
	bool interactive = isatty(0) && isatty(1);
	char *line;
	int rc;

	cli_opts_default(&o);
	o.max_tokens = 512;
	/* a conversation outlives any budget: sinks + recent by default */
	kv_policy_parse("streaming", &o.gen.kv.policy, NULL);
	rc = cli_opts_parse(&cmd_chat, cmd_chat.options, argc, argv, &o);
	if (rc != CLI_OK)
		goto out;
	if (o.n_args > 0 || o.prompt != NULL || o.prompt_file != NULL || o.raw) {
		rc = cli_usage(&cmd_chat, "chat reads its turns from standard input; --prompt, "
		                          "--prompt-file, --raw and arguments do not apply");
		goto out;
	}
	rc = cli_session_open(&o, &s);
	if (rc != CLI_OK)
		goto out;
	g = session_gen(s);
	le = lineedit_open(interactive);
	if (interactive)
		fprintf(stderr, "kvscope chat: %s on %s/%s, context %u tokens; /help for commands\n",
		        g->model->name, engine_backend_name(g->engine), engine_isa_name(g->engine),
		        gen_n_ctx(g));
	while ((line = lineedit_read(le, "> ")) != NULL) {
		if (line[0] == '\0') {
			free(line);
			continue;
		}
		lineedit_remember(le, line);
		if (line[0] == '/') {
			bool quit = strcmp(line, "/quit") == 0 || strcmp(line, "/exit") == 0;
			if (strcmp(line, "/reset") == 0) {
				session_reset(s);
				fprintf(stderr, "kvscope: new conversation\n");
			} else if (strcmp(line, "/help") == 0) {
				fprintf(stderr, "commands: /reset (new conversation), /policy NAME [k=v ...], "
				                "/budget N, /kv (cache statistics), /quit\n");
			} else if (strncmp(line, "/policy", 7) == 0 || strncmp(line, "/budget", 7) == 0 ||
			           strcmp(line, "/kv") == 0) {
				chat_kv_command(g, line);
			} else if (!quit) {
				fprintf(stderr,
				        "kvscope: unknown command '%s'; expected /reset, /policy, /budget, /kv, "
				        "/quit or /help\n",
				        line);
			}
			free(line);
			if (quit)
				break;
			continue;
		}
		session_set_hooks(s, &(struct session_hooks){ .token = chat_token });
		rc = session_chat(s, line, &e);
		free(line);
		fputc('\n', stdout);
		fflush(stdout);
		if (rc != KVS_OK) {
			fprintf(stderr, "kvscope: %s\n", e.msg);
			continue;
		}
		const struct session_turn *t = session_turn_at(s, session_n_turns(s) - 1);
		if (t->restarted)
			fprintf(stderr, "kvscope: context full (%u tokens): started a new conversation\n",
			        kv_cache_budget(g->kv));
		if (interactive)
			fprintf(stderr, "[%u tokens, %s, %.1f tok/s, KV %u/%u, %s]\n", t->n_reply,
			        gen_stop_name(t->stop),
			        t->decode_ms > 0 ? (double)t->n_reply * 1e3 / t->decode_ms : 0.0,
			        kv_cache_n(g->kv), kv_cache_budget(g->kv),
			        kv_policy_name(kv_cache_policy(g->kv)));
	}
	rc = CLI_OK;
out:
	lineedit_close(le);
	session_close(s);
	cli_opts_free(&o);
	return rc;
}
