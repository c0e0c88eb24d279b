/*
 * eval.h: what the evaluation commands (cmd-eval-*.c) share: a seeded
 * generator, a progress bar on stderr, the parsing of number lists, and
 * opening a greedy generation context with the KV options.
 */
#ifndef KVS_CLI_EVAL_H
#define KVS_CLI_EVAL_H

#include "cli/opts.h"

/* splitmix64: a small seeded generator; the same seed gives the same run. */
struct eval_rng {
	uint64_t s;
};
void eval_rng_seed(struct eval_rng *r, uint64_t seed);
uint64_t eval_rng_next(struct eval_rng *r);
/* Uniform in [0, 1). */
double eval_rng_unit(struct eval_rng *r);

/* A progress bar on stderr: redrawn in place on a terminal, one line per
 * tenth otherwise. */
struct eval_progress {
	const char *what;
	uint64_t total;
	double t0_ms;
	bool tty;
	int last_tenth;
};
void eval_progress_start(struct eval_progress *p, const char *what, uint64_t total);
/* Show done/total and a short status (printf-style). */
void eval_progress(struct eval_progress *p, uint64_t done, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
void eval_progress_end(struct eval_progress *p);

/* Parse "2k,4k,8192" (k = 1024) or "10,30,50" into out (at most cap
 * values in [lo, hi]); KVS_EARG naming the option and the bad item. */
int eval_parse_list(const char *opt, const char *s, uint32_t lo, uint32_t hi, uint32_t *out,
                    uint32_t cap, uint32_t *n, struct err *e);

struct vocab;
/* The indices [*first, *last] of the tokens of ids whose text overlaps the
 * first occurrence of text in their concatenation, less its first skip and
 * last trim bytes; false (and -1) when text does not occur. */
bool eval_find_tokens(const struct vocab *v, const int32_t *ids, size_t n, const char *text,
                      size_t skip, size_t trim, int32_t *first, int32_t *last);

/* The cold tier of an eval run (--cold on): a temporary database with one
 * session row in it, and a cold tier over the run's cache writing to it
 * (deleted by eval_cold_close). */
struct eval_cold {
	char *dir;
	struct store *st;
	struct session_cold *sc; /* NULL: no cold tier */
	uint32_t index;          /* exchanges so far (the cold tier's turn index) */
	uint64_t recalled;       /* tokens recalled over the run */
};
/* Open it over g's cache with o->cold's settings (title and policy name
 * the session row). */
int eval_cold_open(struct eval_cold *cold, struct gen *g, const struct cli_opts *o,
                   const char *title, const char *pol, struct err *e);
/* Free the cold tier and remove its temporary database. */
void eval_cold_close(struct eval_cold *cold);

/* Write s as a JSON string. */
void eval_json_str(FILE *fp, const char *s);

struct gen;
/* Open the greedy context of a retention eval (passkey, recall, rps): a
 * policy that never evicts gets no budget and, unless --ctx was given, a
 * context of full_ctx tokens; an evicting one default_budget when no
 * --kv-budget was given; chat format needs the model's template. pol (cap
 * bytes) gets the policy as given, a sparse mode after it, *budget the
 * budget in force. CLI_OK or the exit status after the error. */
enum cli_exit eval_open(struct cli_opts *o, uint32_t full_ctx, uint32_t default_budget,
                        struct gen **g, char *pol, size_t cap, uint32_t *budget);
/* Open a chat-format conversation: BOS where the vocabulary adds one, then
 * the template's default system turn (a layout without a system role gets
 * it as a user turn of its own); KVS_OK or the feed's error. */
int eval_feed_system(struct gen *g, struct err *e);
/* A retention eval's JSON line up to its own fields: {"eval":eval,
 * "model":..,"policy":..,"budget":..,"format":..,"seed":.. (no comma after). */
void eval_json_head(FILE *fp, const char *eval, struct gen *g, const char *policy, uint32_t budget,
                    bool raw, uint32_t seed);

/* The prompt cache of eval sparse (eval-kvfile.c): a prefilled prompt's
 * raw K/V kept in a file of dir named by length and seed (caller owns
 * the path). Load fills slots 0..len-1 at positions 0..len-1 and sets
 * *hit only when the file was made by the model whose hex SHA-256 is sha,
 * with this KV type and these len token ids (any other file, a damaged
 * one included, is a miss, never an error); KVS_EIO when an existing file
 * cannot be read. Save writes slots 0..len-1 (through a temporary file
 * renamed into place). */
char *eval_kvfile_path(const char *dir, uint32_t len, uint64_t seed);
int eval_kvfile_load(struct engine *eng, const char *path, const char *sha, const int32_t *ids,
                     uint32_t len, bool *hit, struct err *e);
int eval_kvfile_save(const struct engine *eng, const char *path, const char *sha,
                     const int32_t *ids, uint32_t len, struct err *e);

#endif
