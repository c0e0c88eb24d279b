/* refdata.c: the llama.cpp reference fixtures' parsers (see refdata.h). */
#include "tests/util/refdata.h"

#include <math.h>
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

int refdata_score(struct engine *eng, const struct ref_pos *ref, size_t n, float gap_min,
                  struct ref_tally *t, double *file_max, uint64_t *file_agree, struct err *e)
{
	uint32_t n_vocab = engine_model(eng)->hp.n_vocab;
	int32_t *toks = xmallocarray(n, sizeof *toks), *pos = xmallocarray(n, sizeof *pos);
	uint32_t *slot = xmallocarray(n, sizeof *slot);
	for (size_t i = 0; i < n; i++) {
		toks[i] = ref[i].token;
		pos[i] = (int32_t)i;
		slot[i] = (uint32_t)i;
	}
	engine_kv_clear(eng);
	struct engine_batch b = { .n_tokens = (uint32_t)n,
		                      .tokens = toks,
		                      .pos = pos,
		                      .slot = slot,
		                      .n_visible = (uint32_t)n,
		                      .logits = ENGINE_LOGITS_ALL };
	struct engine_out o;
	int rc = engine_forward(eng, &b, &o, e);
	*file_max = 0.0;
	*file_agree = 0;
	for (size_t i = 0; rc == KVS_OK && i < n; i++) {
		const float *row = o.logits + i * n_vocab;
		bool same = refdata_argmax(row, n_vocab) == ref[i].top_id[0];
		*file_agree += same;
		if (ref[i].top_logit[0] - ref[i].top_logit[1] >= gap_min) {
			t->n_clear++;
			t->n_clear_agree += same;
		}
		for (int k = 0; k < REFDATA_TOPK; k++) {
			double d = fabs((double)row[ref[i].top_id[k]] - ref[i].top_logit[k]);
			*file_max = d > *file_max ? d : *file_max;
		}
	}
	if (rc == KVS_OK) {
		t->n_pos += n;
		t->n_agree += *file_agree;
		t->max_diff = *file_max > t->max_diff ? *file_max : t->max_diff;
	}
	free(toks);
	free(pos);
	free(slot);
	return rc;
}
