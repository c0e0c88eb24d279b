/*
 * prompt.c: reading a prompt from the command line or a file and turning it
 * into token ids, with or without the chat template. Shared by generate,
 * logits and chat so all three treat text the same way.
 */
#include "cli/opts.h"
#include "script/script.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Read the prompt from --prompt or --prompt-file into an allocated buffer. */
int cli_prompt_read(const struct cli_opts *o, char **text, size_t *len, struct err *e)
{
	int rc;

	*text = NULL;
	*len = 0;
	if ((o->prompt != NULL) == (o->prompt_file != NULL))
		return err_set(e, KVS_EARG, "give exactly one of --prompt TEXT or --prompt-file FILE");
	if (o->prompt != NULL) {
		*len = strlen(o->prompt);
		*text = xstrndup(o->prompt, *len);
	} else {
		rc = file_read_all(o->prompt_file, text, len, e);
		if (rc != KVS_OK)
			return rc;
	}
	if (*len == 0) {
		free(*text);
		*text = NULL;
		return err_set(e, KVS_EARG, "the prompt is empty: expected at least one character");
	}
	if (!utf8_valid((const uint8_t *)*text, *len)) {
		size_t off = 0;
		uint32_t cp;
		while (off < *len) {
			size_t k = utf8_decode((const uint8_t *)*text + off, *len - off, &cp);
			if (k == 0)
				break;
			off += k;
		}
		free(*text);
		*text = NULL;
		return err_set(e, KVS_EFORMAT, "the prompt is not valid UTF-8 (bad byte at offset %zu)",
		               off);
	}
	return KVS_OK;
}

/* Tokenize text as one user turn in the chat template (raw: as it is, with
 * BOS as the vocabulary says and special-token text parsed). */
int cli_prompt_tokens(struct gen *g, const char *text, size_t len, bool raw, const char *system,
                      int32_t **ids, size_t *n, struct err *e)
{
	const struct vocab *v = gen_vocab(g);
	const struct chat_template *ct;
	struct chat_prompt p = { 0 };
	size_t cap = 0;
	int rc;

	*ids = NULL;
	*n = 0;
	if (raw)
		return vocab_tokenize(v, text, len, true, true, ids, n, &cap, e);
	if ((ct = gen_chat(g, e)) == NULL)
		return e->code;
	if (vocab_add_bos(v) && vocab_bos(v) >= 0) {
		cap = 16;
		*ids = xmallocarray(cap, sizeof **ids);
		(*ids)[(*n)++] = vocab_bos(v);
	}
	{
		char *content = xstrndup(text, len);
		chat_first_user(ct, system, content, &p, &p);
		free(content);
	}
	chat_generation_prompt(ct, &p);
	rc = chat_tokenize(v, &p, ids, n, &cap, e);
	chat_prompt_free(&p);
	return rc;
}

/* A context whose buffers the system refused: name the option (the engine
 * names the size). */
static void cli_ctx_error(const struct cli_opts *o, struct err *e)
{
	if (e->code != KVS_ENOMEM)
		return;
	if (cli_opts_given(o, "ctx"))
		err_prefix(e, "--ctx %u", o->gen.engine.n_ctx);
	else
		err_prefix(e, "--ctx (not given, the model's default)");
}

enum cli_exit cli_gen_open(struct cli_opts *o, struct gen **g)
{
	struct err e;
	char *path = cli_model_path(o->gen.model_path);
	const char *saved = o->gen.model_path;
	int rc;

	o->gen.model_path = path;
	rc = gen_open(g, &o->gen, &e);
	o->gen.model_path = saved;
	free(path);
	if (rc != KVS_OK)
		cli_ctx_error(o, &e);
	return rc == KVS_OK ? CLI_OK : cli_fail(&e);
}

enum cli_exit cli_session_open(struct cli_opts *o, struct session **s)
{
	struct session_config c;
	struct err e;
	char *path = cli_model_path(o->gen.model_path);
	int rc;

	session_config_default(&c);
	c.gen = o->gen;
	c.gen.model_path = path;
	c.system = o->system;
	c.max_tokens = o->max_tokens;
	rc = session_open(s, &c, &e);
	free(path);
	if (rc != KVS_OK)
		cli_ctx_error(o, &e);
	bool restarted;
	if (rc == KVS_OK && o->doc != NULL &&
	    (rc = session_set_doc(*s, o->doc, &restarted, &e)) != KVS_OK)
		err_prefix(&e, "--doc");
	return rc == KVS_OK ? CLI_OK : cli_fail(&e);
}

char *cli_find_script(const char *arg, const char *sub)
{
	struct stat st;
	if (stat(arg, &st) == 0 || strchr(arg, '/') != NULL)
		return xstrdup(arg);
	char *dir = script_data_dir();
	size_t n = strlen(arg);
	char *p = xasprintf("%s/%s/%s%s", dir, sub, arg,
	                    n > 4 && strcmp(arg + n - 4, ".lua") == 0 ? "" : ".lua");
	free(dir);
	if (stat(p, &st) == 0)
		return p;
	free(p);
	return xstrdup(arg);
}
