/* refdata.c: the llama.cpp reference fixtures' parsers (see refdata.h). */
#include "tests/util/refdata.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool refdata_parse_pos(const char *s, struct ref_pos *r)
{
	const char *p = strstr(s, "\"token\":");

	if (p == NULL || sscanf(p + 8, "%d", &r->token) != 1)
		return false;
	p = strstr(s, "\"top\":[");
	if (p == NULL)
		return false;
	p += 7;
	for (int k = 0; k < REFDATA_TOPK; k++) {
		p = strchr(p, '[');
		if (p == NULL || sscanf(p + 1, "%d,%f", &r->top_id[k], &r->top_logit[k]) != 2)
			return false;
		p++;
	}
	return true;
}

/* The text just after key's opening bracket, or NULL. */
static const char *refdata_array(const char *s, const char *key)
{
	const char *p = strstr(s, key);

	if (p == NULL || (p = strchr(p, '[')) == NULL)
		return NULL;
	return p + 1;
}

size_t refdata_ints(const char *s, const char *key, int32_t *out, size_t cap)
{
	const char *p = refdata_array(s, key);
	size_t n = 0;

	while (p != NULL && *p && *p != ']' && n < cap) {
		out[n++] = (int32_t)strtol(p, (char **)&p, 10);
		if (*p == ',')
			p++;
	}
	return n;
}

size_t refdata_floats(const char *s, const char *key, float *out, size_t cap)
{
	const char *p = refdata_array(s, key);
	size_t n = 0;

	while (p != NULL && *p && *p != ']' && n < cap) {
		out[n++] = strtof(p, (char **)&p);
		if (*p == ',')
			p++;
	}
	return n;
}

int32_t refdata_argmax(const float *l, uint32_t n)
{
	int32_t best = 0;

	for (uint32_t j = 1; j < n; j++)
		if (l[j] > l[best])
			best = (int32_t)j;
	return best;
}

const float *refdata_decode_one(struct engine *eng, int32_t tok, int32_t p, struct err *e)
{
	uint32_t sl = (uint32_t)p;
	struct engine_batch d = { .n_tokens = 1,
		                      .tokens = &tok,
		                      .pos = &p,
		                      .slot = &sl,
		                      .n_visible = sl + 1,
		                      .logits = ENGINE_LOGITS_LAST };
	struct engine_out o;

	return engine_forward(eng, &d, &o, e) == KVS_OK ? o.logits : NULL;
}

size_t refdata_read_logits(const char *path, struct ref_pos **out, struct err *e)
{
	char *text, *save = NULL;
	size_t len, cap = 0, n = 0;
	struct ref_pos *ref = NULL;

	*out = NULL;
	if (file_read_all(path, &text, &len, e) != KVS_OK)
		return 0;
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (n == cap) {
			cap = cap ? cap * 2 : 1024;
			ref = xreallocarray(ref, cap, sizeof *ref);
		}
		if (!refdata_parse_pos(line, &ref[n])) {
			err_set(e, KVS_EFORMAT, "%s: line %zu: expected {\"pos\":i,\"token\":id,\"top\":[...]}",
			        path, n + 1);
			free(ref);
			free(text);
			return 0;
		}
		n++;
	}
	free(text);
	if (n == 0)
		err_set(e, KVS_EFORMAT, "%s: no positions", path);
	*out = ref;
	return n;
}
