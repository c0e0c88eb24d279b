/*
 * refdata.h: reading the llama.cpp reference fixtures (tests/fixtures/engine
 * and tests/fixtures/qwen2: JSON lines made by llama.cpp, see their READMEs)
 * and the small engine steps the fidelity tests share.
 */
#ifndef KVS_TEST_REFDATA_H
#define KVS_TEST_REFDATA_H

#include "engine/engine.h"

#define REFDATA_TOPK 10

/* One position of a logits fixture. */
struct ref_pos {
	int32_t token;
	int32_t top_id[REFDATA_TOPK];
	float top_logit[REFDATA_TOPK];
};

/* Parse {"pos":i,"token":t,"top":[[id,logit],...]} (REFDATA_TOPK entries). */
bool refdata_parse_pos(const char *line, struct ref_pos *r);
/* Read a logits fixture (one refdata_parse_pos line per position) into
 * *out (caller owns); its position count, or 0 with e set when the file cannot
 * be read or a line is malformed (then *out is NULL). */
size_t refdata_read_logits(const char *path, struct ref_pos **out, struct err *e);
/* Parse the int / float array after key in line, e.g. "prompt":[1,2,3];
 * returns the count (at most cap). */
size_t refdata_ints(const char *line, const char *key, int32_t *out, size_t cap);
size_t refdata_floats(const char *line, const char *key, float *out, size_t cap);
/* Index of the largest of n logits (the lowest id on ties, as llama.cpp). */
int32_t refdata_argmax(const float *logits, uint32_t n);
/* The engine's agreement with logits fixtures, summed over files. */
struct ref_tally {
	uint64_t n_pos, n_agree;         /* positions; top-1 equal to llama.cpp's */
	uint64_t n_clear, n_clear_agree; /* of those, with llama.cpp's gap >= gap_min */
	double max_diff;                 /* largest |logit difference| over its top-K */
};
/* Forward the n tokens of ref at positions 0..n-1 in one batch (the cache
 * cleared first) and add the comparison with ref to t; *file_max and
 * *file_agree get this file's own largest difference and top-1 count.
 * KVS_OK, or the forward's error with nothing added. */
int refdata_score(struct engine *eng, const struct ref_pos *ref, size_t n, float gap_min,
                  struct ref_tally *t, double *file_max, uint64_t *file_agree, struct err *e);
/* Feed one token at position p into slot p (slots 0..p visible); the new
 * logits, or NULL with e set. */
const float *refdata_decode_one(struct engine *eng, int32_t tok, int32_t p, struct err *e);

#endif
