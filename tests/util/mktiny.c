/*
 * mktiny.c: write a tiny random-weight llama model with a ChatML template
 * to the path given (for end-to-end tests that need a fast model, e.g.
 * tests/e2e/lua.sh). The same bytes every time (tinymodel's fixed seed).
 */
#include "tests/util/tinymodel.h"

#include <stdio.h>

int main(int argc, char **argv)
{
	struct tinymodel_spec s;

	if (argc != 2) {
		fprintf(stderr, "usage: mktiny OUT.gguf\n");
		return 2;
	}
	tinymodel_defaults(&s, "llama");
	s.n_embd = 64;
	s.n_ff = 128;
	s.n_ctx = 2048;
	struct ggufw *w = ggufw_new();
	tinymodel_add(w, &s);
	int rc = ggufw_write_file(w, argv[1]);
	ggufw_free(w);
	if (rc != 0) {
		fprintf(stderr, "mktiny: cannot write %s\n", argv[1]);
		return 1;
	}
	return 0;
}
