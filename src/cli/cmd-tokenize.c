/*
 * cmd-tokenize.c: `kvscope tokenize`: text in, token ids out.
 *
 * Only the file's vocabulary is loaded (gguf_open + vocab_load), so this
 * also works on vocab-only GGUF files. The defaults follow llama.cpp's
 * llama-tokenize so the two can be compared directly: special-token text
 * such as <|im_start|> is parsed as the special token (--no-special turns
 * that off), and BOS/EOS are added when the vocabulary asks for them. One
 * difference: llama-tokenize rewrites escapes like \n in its input unless
 * given --no-escape; we never touch the bytes (--file reads them exactly).
 *
 * Output: the ids on one line, separated by spaces; with --pieces, one line
 * per token, "ID<TAB>PIECE", the piece with C escapes for bytes that are not
 * printable ASCII.
 */
#include "cli/opts.h"
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static enum cli_exit cmd_tokenize_exec(struct cli_opts *o);

const struct cli_cmd cmd_tokenize = {
	.name = "tokenize",
	.usage = "[-m PATH] [--pieces] [--no-special] (-f FILE | TEXT)",
	.help = "print the token ids of a text (-f - reads standard input; --pieces: id and text "
	        "per line; --no-special: <|...|> stays text)",
	.exec = cmd_tokenize_exec,
	.options = OPTG_MODEL | OPTG_TOKENIZE,
	.args_max = 1,
	.args = "one TEXT: quote the text as one argument",
};

/* Print one piece with C escapes for anything but printable ASCII. */
static void tokenize_print_piece(const char *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '\\')
			fputs("\\\\", stdout);
		else if (c == '\n')
			fputs("\\n", stdout);
		else if (c == '\t')
			fputs("\\t", stdout);
		else if (c == '\r')
			fputs("\\r", stdout);
		else if (c < 0x20 || c == 0x7F)
			printf("\\x%02x", c);
		else
			putchar(c); /* UTF-8 passes through; the terminal shows it */
	}
}

/* Print ids space-separated on one line (formatted by hand: a megabyte of
 * text gives half a million ids, and printf per id would double the time). */
static void tokenize_print_ids(const int32_t *ids, size_t n)
{
	char *buf = xmalloc(n * 12 + 2), *o = buf, tmp[12];
	size_t i, k;

	for (i = 0; i < n; i++) {
		uint32_t x = (uint32_t)ids[i]; /* ids are >= 0 */
		if (i > 0)
			*o++ = ' ';
		k = 0;
		do {
			tmp[k++] = (char)('0' + x % 10);
			x /= 10;
		} while (x != 0);
		while (k > 0)
			*o++ = tmp[--k];
	}
	*o++ = '\n';
	fwrite(buf, 1, (size_t)(o - buf), stdout);
	free(buf);
}

/* Load the vocabulary, tokenize the text, print the ids or pieces. */
static enum cli_exit cmd_tokenize_exec(struct cli_opts *o)
{
	const char *arg = o->n_args > 0 ? o->args[0] : NULL;
	struct gguf_file *f = NULL;
	struct vocab *v = NULL;
	struct err e;
	char *path = NULL, *text = NULL, *piece = NULL;
	size_t len = 0, n = 0, cap = 0, i, pn, piece_cap = 256;
	int32_t *ids = NULL;
	enum cli_exit rc;

	err_clear(&e);
	if ((arg == NULL) == (o->file == NULL))
		return cli_usage(&cmd_tokenize,
		                 arg ? "give either --file or TEXT, not both"
		                     : "expected --file F or TEXT");
	if (o->file != NULL) {
		if (file_read_all(o->file, &text, &len, &e) != KVS_OK)
			return cli_fail(&e);
	} else {
		len = strlen(arg);
	}
	path = cli_model_path(o->gen.model_path);
	if (gguf_open(&f, path, &e) != KVS_OK || vocab_load(&v, f, &e) != KVS_OK) {
		if (f != NULL)
			err_prefix(&e, "%s", path);
		rc = cli_fail(&e);
		goto out;
	}
	if (vocab_tokenize(v, text ? text : arg, len, true, !o->no_special, &ids, &n, &cap, &e) !=
	    KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	if (!o->pieces) {
		tokenize_print_ids(ids, n);
	} else {
		piece = xmalloc(piece_cap);
		for (i = 0; i < n; i++) {
			pn = vocab_piece(v, ids[i], true, piece, piece_cap);
			if (pn > piece_cap) {
				piece_cap = pn;
				piece = xrealloc(piece, piece_cap);
				vocab_piece(v, ids[i], true, piece, piece_cap);
			}
			printf("%d\t", ids[i]);
			tokenize_print_piece(piece, pn);
			putchar('\n');
		}
	}
	rc = cli_stdout_flush() ? CLI_OK : CLI_FAIL; /* main says "write error" once */
out:
	free(piece);
	free(ids);
	free(text);
	free(path);
	vocab_free(v);
	gguf_close(f);
	return rc;
}
