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

static void chat_write(const char *text, size_t len, void *ud)
{
	(void)ud;
	fwrite(text, 1, len, stdout);
	fflush(stdout);
}

/* Feed a rendered prompt as role; KVS_ERANGE if it does not fit. */
static int chat_feed(struct gen *g, const struct chat_prompt *p, enum kv_role role, struct err *e)
{
	return gen_feed_prompt(g, p, role, e);
}

/* Begin a turn and feed it: the system turn first in a new conversation,
 * then the user's line and the header of the reply. */
static int chat_turn(struct gen *g, const char *system, bool first, const char *line,
                     struct err *e)
{
	struct chat_prompt ps = { 0 }, pu = { 0 }, pa = { 0 };
	int32_t *ids = NULL;
	size_t n = 0;
	int rc;

	if (first)
		chat_system(&g->chat, system, &ps);
	chat_message(&g->chat, "user", line, &pu);
	chat_generation_prompt(&g->chat, &pa);
	/* the turn's size, for eviction between turns */
	rc = gen_tokenize_prompt(g, &ps, &ids, &n, e);
	if (rc == KVS_OK) {
		size_t cap = n;
		rc = chat_tokenize(g->model->vocab, &pu, &ids, &n, &cap, e);
		if (rc == KVS_OK)
			rc = chat_tokenize(g->model->vocab, &pa, &ids, &n, &cap, e);
	}
	if (rc == KVS_OK)
		rc = gen_begin_turn(g, KV_ROLE_USER, n, e);
	if (rc == KVS_OK && first)
		rc = chat_feed(g, &ps, KV_ROLE_SYSTEM, e);
	if (rc == KVS_OK)
		rc = chat_feed(g, &pu, KV_ROLE_USER, e);
	if (rc == KVS_OK)
		rc = chat_feed(g, &pa, KV_ROLE_ASSISTANT, e);
	free(ids);
	chat_prompt_free(&ps);
	chat_prompt_free(&pu);
	chat_prompt_free(&pa);
	return rc;
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
	struct gen *g = NULL;
	struct lineedit *le = NULL;
	struct err e;
	bool interactive = isatty(0) && isatty(1), first = true;
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
	rc = cli_gen_open(&o, &g);
	if (rc != CLI_OK)
		goto out;
	if (!g->has_chat) {
		rc = cli_fail(&g->chat_err);
		goto out;
	}
	if (vocab_add_bos(g->model->vocab) && vocab_bos(g->model->vocab) >= 0) {
		int32_t bos = vocab_bos(g->model->vocab);
		gen_set_role(g, KV_ROLE_SYSTEM);
		if (gen_feed(g, &bos, 1, &e) != KVS_OK) {
			rc = cli_fail(&e);
			goto out;
		}
	}
	le = lineedit_open(interactive);
	if (interactive)
		fprintf(stderr, "kvscope chat: %s on %s/%s, context %u tokens; /help for commands\n",
		        g->model->name, engine_backend_name(g->engine), engine_isa_name(g->engine),
		        gen_n_ctx(g));
	while ((line = lineedit_read(le, "> ")) != NULL) {
		struct chat_prompt p = { 0 };
		enum gen_stop stop;
		uint32_t n_out;

		if (line[0] == '\0') {
			free(line);
			continue;
		}
		lineedit_remember(le, line);
		if (line[0] == '/') {
			bool quit = strcmp(line, "/quit") == 0 || strcmp(line, "/exit") == 0;
			if (strcmp(line, "/reset") == 0) {
				gen_reset(g);
				first = true;
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
		if (!utf8_valid((const uint8_t *)line, strlen(line))) {
			fprintf(stderr, "kvscope: input is not valid UTF-8; line ignored\n");
			free(line);
			continue;
		}
		rc = chat_turn(g, o.system, first, line, &e);
		if (rc == KVS_ERANGE && !first) {
			/* The context is full (policy full): start over with this turn. */
			fprintf(stderr, "kvscope: context full (%u tokens): starting a new conversation\n",
			        kv_cache_budget(g->kv));
			gen_reset(g);
			rc = chat_turn(g, o.system, true, line, &e);
		}
		free(line);
		if (rc != KVS_OK) {
			fprintf(stderr, "kvscope: %s\n", e.msg);
			gen_reset(g);
			first = true;
			continue;
		}
		first = false;
		rc = gen_reply(g, o.max_tokens, chat_write, NULL, &stop, &n_out, &e);
		fputc('\n', stdout);
		fflush(stdout);
		if (rc != KVS_OK) {
			fprintf(stderr, "kvscope: %s\n", e.msg);
			gen_reset(g);
			first = true;
			continue;
		}
		if (stop == GEN_STOP_EOS)
			chat_reply_end(&g->chat, &p);
		else
			chat_close(&g->chat, &p);
		if (chat_feed(g, &p, KV_ROLE_ASSISTANT, &e) != KVS_OK) {
			gen_reset(g);
			first = true;
		}
		chat_prompt_free(&p);
		if (interactive)
			fprintf(stderr, "[%u tokens, %s, %.1f tok/s, KV %u/%u, %s]\n", n_out,
			        gen_stop_name(stop),
			        g->decode_ms > 0 ? (double)g->n_decoded * 1e3 / g->decode_ms : 0.0, g->n_past,
			        kv_cache_budget(g->kv), kv_policy_name(kv_cache_policy(g->kv)));
	}
	rc = CLI_OK;
out:
	lineedit_close(le);
	gen_close(g);
	cli_opts_free(&o);
	return rc;
}
