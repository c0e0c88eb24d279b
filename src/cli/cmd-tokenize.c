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
#include "cli/cli.h"
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmd_tokenize_exec(int argc, char **argv);

const struct cli_cmd cmd_tokenize = {
	"tokenize",
	"[-m PATH] [--pieces] [--no-special] (-f FILE | TEXT)",
	"print the token ids of a text (-f - reads standard input; --pieces: id and text per "
	"line; --no-special: <|...|> stays text)",
	cmd_tokenize_exec,
	OPTG_MODEL | OPTG_TOKENIZE,
};

struct tokenize_args {
	const char *model;
	const char *file;
	const char *text;
	bool pieces;
	bool no_special;
};

/* The options, one row each: flags set a bool, the others take a value. */
static const struct {
	const char *name;
	const char *short_name; /* or NULL */
	size_t off;   /* field in struct tokenize_args */
	bool value;   /* takes an argument */
} tokenize_opts[] = {
	{ "--model", "-m", offsetof(struct tokenize_args, model), true },
	{ "--file", "-f", offsetof(struct tokenize_args, file), true },
	{ "--pieces", NULL, offsetof(struct tokenize_args, pieces), false },
	{ "--no-special", NULL, offsetof(struct tokenize_args, no_special), false },
};

/* Parse argv into a; prints the usage error itself. */
static int tokenize_parse(int argc, char **argv, struct tokenize_args *a)
{
	int i;
	size_t k;
	bool ends = false;

	memset(a, 0, sizeof(*a));
	for (i = 1; i < argc; i++) {
		const char *arg = argv[i];

		if (!ends && strcmp(arg, "--") == 0) {
			ends = true;
			continue;
		}
		if (!ends && arg[0] == '-' && arg[1] != '\0') {
			for (k = 0; k < KVS_ARRAY_LEN(tokenize_opts); k++)
				if (strcmp(arg, tokenize_opts[k].name) == 0 ||
				    (tokenize_opts[k].short_name != NULL &&
				     strcmp(arg, tokenize_opts[k].short_name) == 0))
					break;
			if (k == KVS_ARRAY_LEN(tokenize_opts))
				return cli_usage(&cmd_tokenize, "unknown option '%s'", arg);
			if (!tokenize_opts[k].value) {
				*(bool *)((char *)a + tokenize_opts[k].off) = true;
				continue;
			}
			if (i + 1 >= argc)
				return cli_usage(&cmd_tokenize, "%s needs a value", arg);
			*(const char **)((char *)a + tokenize_opts[k].off) = argv[++i];
			continue;
		}
		if (a->text != NULL)
			return cli_usage(&cmd_tokenize, "unexpected argument '%s' (quote the text as one "
			                 "argument)", arg);
		a->text = arg;
	}
	if ((a->text == NULL) == (a->file == NULL))
		return cli_usage(&cmd_tokenize, a->text ? "give either --file or TEXT, not both"
		                                        : "expected --file F or TEXT");
	return CLI_OK;
}

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
static int cmd_tokenize_exec(int argc, char **argv)
{
	struct tokenize_args a;
	struct gguf_file *f = NULL;
	struct vocab *v = NULL;
	struct err e;
	char *path = NULL, *text = NULL, *piece = NULL;
	size_t len = 0, n = 0, cap = 0, i, pn, piece_cap = 256;
	int32_t *ids = NULL;
	int rc;

	err_clear(&e);
	rc = tokenize_parse(argc, argv, &a);
	if (rc != CLI_OK)
		return rc;
	if (a.file != NULL) {
		if (file_read_all(a.file, &text, &len, &e) != KVS_OK)
			return cli_fail(&e);
	} else {
		len = strlen(a.text);
	}
	path = cli_model_path(a.model);
	if (gguf_open(&f, path, &e) != KVS_OK || vocab_load(&v, f, &e) != KVS_OK) {
		if (f != NULL)
			err_prefix(&e, "%s", path);
		rc = cli_fail(&e);
		goto out;
	}
	if (vocab_tokenize(v, text ? text : a.text, len, true, !a.no_special, &ids, &n, &cap, &e) !=
	    KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	if (!a.pieces) {
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
	if (fflush(stdout) != 0) {
		err_set(&e, KVS_EIO, "writing the result failed");
		rc = cli_fail(&e);
		goto out;
	}
	rc = CLI_OK;
out:
	free(piece);
	free(ids);
	free(text);
	free(path);
	vocab_free(v);
	gguf_close(f);
	return rc;
}
