/*
 * mktiny.c: write a random-weight model (llama unless --arch says) with a
 * ChatML template to the path given: by default a tiny one (for end-to-end
 * tests that need a fast model, e.g. tests/e2e/lua.sh), or any shape and
 * weight type for benchmarks (bench/types.sh, bench/gemma.sh). The same
 * bytes every time for the same arguments (tinymodel's fixed seed).
 *
 *   mktiny OUT.gguf [--arch A] [--type T] [--layers N] [--embd N] [--ff N]
 *                   [--heads N] [--kv-heads N] [--head-dim N] [--window N]
 *                   [--embd-type T]
 *
 * --window writes {arch}.attention.sliding_window (gemma2, gemma3).
 */
#include "tests/util/tinymodel.h"
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A dtype id by name ("Q4_K"), or -1. */
static int type_by_name(const char *name)
{
	for (int t = 0; t < DT_COUNT_; t++)
		if (dtype_info((uint32_t)t) != NULL && strcmp(dtype_name((uint32_t)t), name) == 0)
			return t;
	return -1;
}

int main(int argc, char **argv)
{
	struct tinymodel_spec s;
	static const char *const archs[] = { "llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3" };
	const char *arch = "llama";
	uint32_t window = 0;

	if (argc < 2 || argc % 2 != 0) {
		fprintf(stderr,
		        "usage: mktiny OUT.gguf [--arch A] [--type T] [--layers N] [--embd N] [--ff N] "
		        "[--heads N] [--kv-heads N] [--head-dim N] [--window N] [--ctx N] [--embd-type "
		        "T]\n");
		return 2;
	}
	for (int i = 2; i + 1 < argc; i += 2)
		if (strcmp(argv[i], "--arch") == 0)
			arch = argv[i + 1];
	bool known = false;
	for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++)
		known = known || strcmp(arch, archs[i]) == 0;
	if (!known) {
		fprintf(stderr,
		        "mktiny: --arch '%s': expected llama, qwen2, qwen3, phi3, gemma2 or gemma3\n",
		        arch);
		return 2;
	}
	tinymodel_defaults(&s, arch);
	s.n_embd = 64;
	s.n_ff = 128;
	s.n_ctx = 2048;
	for (int i = 2; i + 1 < argc; i += 2) {
		const char *k = argv[i], *v = argv[i + 1];
		long n = strtol(v, NULL, 10);
		if (strcmp(k, "--arch") == 0)
			continue;
		if (strcmp(k, "--type") == 0 || strcmp(k, "--embd-type") == 0) {
			int t = type_by_name(v);
			if (t < 0) {
				fprintf(stderr, "mktiny: %s: unknown type '%s'\n", k, v);
				return 2;
			}
			*(strcmp(k, "--type") == 0 ? &s.wtype : &s.embd_type) = (uint32_t)t;
		} else if (n <= 0 || n > 65536) {
			fprintf(stderr, "mktiny: %s: '%s' is not a count in 1..65536\n", k, v);
			return 2;
		} else if (strcmp(k, "--layers") == 0) {
			s.n_layer = (uint32_t)n;
		} else if (strcmp(k, "--embd") == 0) {
			s.n_embd = (uint32_t)n;
		} else if (strcmp(k, "--ff") == 0) {
			s.n_ff = (uint32_t)n;
		} else if (strcmp(k, "--heads") == 0) {
			s.n_head = (uint32_t)n;
		} else if (strcmp(k, "--kv-heads") == 0) {
			s.n_head_kv = (uint32_t)n;
		} else if (strcmp(k, "--head-dim") == 0) {
			s.head_dim = (uint32_t)n;
		} else if (strcmp(k, "--window") == 0) {
			window = (uint32_t)n;
		} else if (strcmp(k, "--ctx") == 0) {
			s.n_ctx = (uint32_t)n; /* the training context (context_length) */
		} else {
			fprintf(stderr, "mktiny: unknown option %s\n", k);
			return 2;
		}
	}
	if (s.n_embd != 64)
		s.scale = 1.0f / sqrtf((float)s.n_embd); /* the usual init: tame activations */
	struct ggufw *w = ggufw_new();
	tinymodel_add(w, &s);
	if (window > 0) {
		char key[64];
		snprintf(key, sizeof key, "%s.attention.sliding_window", arch);
		ggufw_add_u32(w, key, window);
	}
	int rc = ggufw_write_file(w, argv[1]);
	ggufw_free(w);
	if (rc != 0) {
		fprintf(stderr, "mktiny: cannot write %s\n", argv[1]);
		return 1;
	}
	return 0;
}
