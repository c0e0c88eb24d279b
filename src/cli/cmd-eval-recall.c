/*
 * cmd-eval-recall.c: `kvscope eval recall`, multi-turn fact recall under a
 * KV retention policy (ours; no paper defines it).
 *
 * A sample is one conversation in the model's chat template (raw format:
 * "USER: ...\n\nASSISTANT: ...\n\n"), the cache never reset within it: the
 * system turn, then a user turn stating a fact ("Please remember this: The
 * secret code is TIGER-42.") answered by a scripted "Okay, I will remember
 * that.", then N unrelated short exchanges (a question and its scripted
 * answer, drawn from a fixed bank without immediate repeats), then the
 * question ("What is the secret code?") with the reply primed ("The secret
 * code is") and decoded greedily. Each exchange is one turn: the policy
 * evicts once for it (kv_cache_begin_turn) and applies its decay.
 *
 * Facts come in four kinds, each with its own sentence, question and
 * primer: a number (1000-9999), a name, a code with a hyphen (WORD-NN) and
 * a day of the week. Values are drawn from --seed, the turn count, the kind
 * and the sample index, so a cell is reproducible on its own and every
 * policy sees the same conversations. --value fixes every value.
 *
 * Verdicts: right when the reply contains the value (ASCII case ignored);
 * partial when it does not, but its first word (quotes and punctuation
 * around it stripped) is the value with some of its tokens left out, at
 * least two characters long: "TIG-42" for TIGER-42 tokenized " TIG" "ER"
 * "-" "42" (what a cache that kept part of the fact makes the model say);
 * wrong otherwise. Also reported: whether the value's tokens were all,
 * partly or not at all in the cache when the question had been read.
 *
 * With --cold on, what the policy evicts goes to a cold tier in a
 * temporary database (deleted at exit) and every turn recalls from it as a
 * chat would (session-cold.c: the scorer --recall, the budget
 * --recall-budget); each conversation is an epoch of its own, so a sample
 * recalls only from its own dialogue. "held" is then counted after the
 * question's recall: a fact brought back is held. With per-head keep-sets
 * a token is held when some (layer, KV head) keeps it; each answer's
 * "heads" (--json) says how many do: the mean share of the pairs keeping
 * each of the fact's tokens (1 with one keep-set and the fact held).
 *
 * The table goes to stdout (one row per turn count and kind, and per turn
 * count over all kinds); with --json one JSON object, with every sample's
 * answer, follows it as the last line. Progress goes to stderr.
 */
#include "cli/eval.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static enum cli_exit cmd_eval_recall_exec(struct cli_opts *o);
static enum cli_exit cmd_eval_recall_defaults(struct cli_opts *o);

const struct cli_cmd cmd_eval_recall = {
	.name = "eval recall",
	.usage = "[--policy P] [--kv-budget N] [--turns 10,30,...] [--facts number,name,code,day] "
	         "[--value TEXT] [--samples N] [--format chat|raw] [--max-tokens N (default 12)] "
	         "[--seed S] [--json] [--cold on [--recall R] [--recall-budget N] "
	         "[--recall-place order|near]] [options]",
	.help = "multi-turn fact recall: a fact, N unrelated turns, the question, under a KV policy",
	.exec = cmd_eval_recall_exec,
	.options = OPTG_MODEL | OPTG_ENGINE | OPTG_KV | OPTG_EVAL | OPTG_RECALL | OPTG_GEN | OPTG_COLD,
	.defaults = cmd_eval_recall_defaults,
};

#define RC_MAX_LIST 16
#define RC_DEFAULT_BUDGET 256
#define RC_MAX_PIECES 16 /* value tokens considered for a partial answer */

/* A kind of fact: what states it, what asks for it, what primes the reply. */
struct rc_kind {
	const char *name;
	const char *statement; /* followed by " VALUE." */
	const char *question;
	const char *primer;
	void (*value)(struct eval_rng *r, char *buf, size_t cap);
};

static const char *const rc_names[] = { "Marguerite", "Bartholomew", "Evangeline", "Ignatius",
	                                    "Rosalind",   "Cornelius",   "Theodora",   "Leopold",
	                                    "Genevieve",  "Maximilian" };
static const char *const rc_words[] = { "TIGER", "FALCON", "COBRA",  "PANTHER",
	                                    "MAPLE", "ORBIT",  "VELVET", "SILVER" };
static const char *const rc_days[] = { "Monday", "Tuesday",  "Wednesday", "Thursday",
	                                   "Friday", "Saturday", "Sunday" };

/* One of n strings, uniformly. */
static const char *rc_pick(struct eval_rng *r, const char *const *v, size_t n)
{
	return v[eval_rng_next(r) % n];
}

static void rc_value_number(struct eval_rng *r, char *buf, size_t cap)
{
	snprintf(buf, cap, "%u", 1000 + (unsigned)(eval_rng_next(r) % 9000));
}

static void rc_value_name(struct eval_rng *r, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s", rc_pick(r, rc_names, KVS_ARRAY_LEN(rc_names)));
}

static void rc_value_code(struct eval_rng *r, char *buf, size_t cap)
{
	const char *w = rc_pick(r, rc_words, KVS_ARRAY_LEN(rc_words));
	snprintf(buf, cap, "%s-%u", w, 10 + (unsigned)(eval_rng_next(r) % 90));
}

static void rc_value_day(struct eval_rng *r, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s", rc_pick(r, rc_days, KVS_ARRAY_LEN(rc_days)));
}

static const struct rc_kind rc_kinds[] = {
	{ "number", "My locker number is", "What is my locker number?", "Your locker number is",
	  rc_value_number },
	{ "name", "My sister's name is", "What is my sister's name?", "Your sister's name is",
	  rc_value_name },
	{ "code", "The secret code is", "What is the secret code?", "The secret code is",
	  rc_value_code },
	{ "day", "The meeting is on", "What day is the meeting?", "The meeting is on", rc_value_day },
};

/* The unrelated exchanges: a short question and its scripted answer, with
 * no numbers, names or days in them. */
static const char *const rc_filler[][2] = {
	{ "What color is the sky?", "The sky is blue." },
	{ "How many legs does a spider have?", "A spider has eight legs." },
	{ "What do bees make?", "Bees make honey." },
	{ "Name a fruit that is yellow.", "A banana is yellow." },
	{ "What is the opposite of hot?", "The opposite of hot is cold." },
	{ "Where do fish live?", "Fish live in water." },
	{ "What season comes after winter?", "Spring comes after winter." },
	{ "Which animal says meow?", "A cat says meow." },
	{ "What is frozen water called?", "Frozen water is called ice." },
	{ "What do you write with?", "You can write with a pen or a pencil." },
	{ "How many wheels does a bicycle have?", "A bicycle has two wheels." },
	{ "What color is grass?", "Grass is green." },
	{ "What shines in the sky at night?", "The moon and the stars." },
	{ "What do birds use to fly?", "Birds use their wings." },
	{ "What do plants need to grow?", "Plants need water and sunlight." },
	{ "Which is bigger, a mouse or an elephant?", "An elephant is bigger." },
	{ "What do we wear on our feet?", "We wear shoes on our feet." },
	{ "What sound does a dog make?", "A dog barks." },
	{ "What falls from clouds when it rains?", "Water falls as rain." },
	{ "What do you call a baby cat?", "A baby cat is a kitten." },
	{ "Is ice cream hot or cold?", "Ice cream is cold." },
	{ "What do people use umbrellas for?", "To stay dry in the rain." },
	{ "What do cows eat?", "Cows eat grass." },
	{ "What is the color of snow?", "Snow is white." },
};

enum rc_verdict { RC_RIGHT = 0, RC_PARTIAL, RC_WRONG };
enum rc_held { RC_HELD_ALL = 0, RC_HELD_PART, RC_HELD_NONE };
static const char *const rc_verdict_names[] = { "right", "partial", "wrong" };
static const char *const rc_held_names[] = { "all", "part", "none" };

struct rc_cell {
	uint32_t turns;
	int kind; /* index into rc_kinds, -1: every kind */
	uint32_t n, verdict[3], held[3];
	double tokens, cached; /* sums: tokens fed, tokens cached at the question */
	double ms;
};

struct rc_sample {
	uint32_t turns;
	int kind;
	char value[64];
	char *answer;
	enum rc_verdict verdict;
	enum rc_held held;
	/* the fact's tokens at the question: the mean share of (layer, KV
	 * head) pairs keeping each (0 for one not held; with one keep-set the
	 * share held) */
	double heads;
};

/* Token ids of one message of role ("user", "assistant") with content;
 * assistant with open set: only the header and the content (the primed
 * reply, left open). */
static int rc_message(struct gen *g, bool raw, const char *role, const char *content, bool open,
                      int32_t **ids, size_t *n, struct err *e)
{
	const struct vocab *v = gen_vocab(g);
	size_t cap = 0;
	*ids = NULL;
	*n = 0;
	if (raw) {
		bool user = strcmp(role, "user") == 0;
		char *t = xasprintf("%s%s%s", user ? "USER: " : " ", content,
		                    user           ? "\n\nASSISTANT:"
		                            : open ? ""
		                                   : "\n\n");
		int rc = vocab_tokenize(v, t, strlen(t), false, false, ids, n, &cap, e);
		free(t);
		return rc;
	}
	const struct chat_template *ct = gen_chat(g, NULL); /* the caller checked */
	struct chat_prompt p = { 0 };
	if (open)
		chat_generation_prompt(ct, &p);
	else
		chat_message(ct, role, content, &p);
	int rc = chat_tokenize(v, &p, ids, n, &cap, e);
	chat_prompt_free(&p);
	if (rc == KVS_OK && open)
		rc = vocab_tokenize(v, content, strlen(content), false, false, ids, n, &cap, e);
	return rc;
}

/* One exchange as one turn: the user's message, then the assistant's
 * (open: primed and left for the model to go on); with a cold tier, the
 * turn recalls before it is fed and what it evicted is written after. */
static int rc_exchange(struct gen *g, bool raw, const char *user, const char *asst, bool open,
                       uint32_t extra, struct eval_cold *cold, int32_t **uids, size_t *nu,
                       struct err *e)
{
	int32_t *aids = NULL;
	size_t na = 0;
	uint32_t room = 0;
	int rc = rc_message(g, raw, "user", user, false, uids, nu, e);
	if (rc == KVS_OK)
		rc = rc_message(g, raw, "assistant", asst, open, &aids, &na, e);
	if (rc == KVS_OK && cold->sc != NULL)
		room = scold_recall(cold->sc, user, *uids, *nu, (uint32_t)(*nu + na + extra), cold->index,
		                    NULL);
	if (rc == KVS_OK)
		rc = gen_begin_turn(g, KV_ROLE_USER, *nu + na + extra + room, e);
	if (rc == KVS_OK && room > 0) {
		uint32_t n0 = kv_cache_n(gen_kv(g));
		scold_place(cold->sc, NULL);
		cold->recalled += kv_cache_n(gen_kv(g)) - n0;
	}
	if (rc == KVS_OK) {
		gen_set_role(g, KV_ROLE_USER);
		rc = gen_feed(g, *uids, *nu, e);
	}
	if (rc == KVS_OK) {
		gen_set_role(g, KV_ROLE_ASSISTANT);
		rc = gen_feed(g, aids, na, e);
	}
	free(aids);
	if (cold->sc != NULL)
		scold_flush(cold->sc, cold->index, NULL);
	cold->index++;
	return rc;
}

/* Original positions [*first, *last] of the tokens of ids (fed at base)
 * overlapping the first occurrence of text; false when it is not there. */
static bool rc_locate(struct gen *g, const int32_t *ids, size_t n, int32_t base, const char *text,
                      int32_t *first, int32_t *last)
{
	if (!eval_find_tokens(gen_vocab(g), ids, n, text, 0, 0, first, last))
		return false;
	*first += base;
	*last += base;
	return true;
}

/* Whether s contains needle, ASCII case ignored. */
static bool rc_contains(const char *s, const char *needle)
{
	size_t nl = strlen(needle);
	for (; *s; s++)
		if (strncasecmp(s, needle, nl) == 0)
			return true;
	return false;
}

/* The first word of the reply: leading blanks, quotes and asterisks
 * skipped, up to the next blank, trailing punctuation stripped. */
static void rc_first_word(const char *s, char *buf, size_t cap)
{
	while (*s && (isspace((unsigned char)*s) || strchr("\"'*`", *s)))
		s++;
	size_t n = 0;
	while (s[n] && !isspace((unsigned char)s[n]))
		n++;
	while (n > 0 && strchr(".,;:!?\"'*`)", s[n - 1]))
		n--;
	n = KVS_MIN(n, cap - 1);
	memcpy(buf, s, n);
	buf[n] = '\0';
}

/* Whether word is value with some (not all, not none) of its tokens left
 * out, and at least two characters long. */
static bool rc_partial(struct gen *g, const char *value, const char *word, struct err *e)
{
	size_t wl = strlen(word);
	if (wl < 2)
		return false;
	char *spaced = xasprintf(" %s", value);
	int32_t *ids = NULL;
	size_t n = 0, cap = 0;
	int rc = vocab_tokenize(gen_vocab(g), spaced, strlen(spaced), false, false, &ids, &n, &cap, e);
	free(spaced);
	char pieces[RC_MAX_PIECES][32];
	size_t np = 0;
	for (size_t i = 0; rc == KVS_OK && i < n && np < RC_MAX_PIECES; i++) {
		char piece[32];
		size_t pl = vocab_piece(gen_vocab(g), ids[i], false, piece, sizeof piece - 1);
		pl = KVS_MIN(pl, sizeof piece - 1);
		piece[pl] = '\0';
		const char *p = piece;
		while (np == 0 && *p == ' ')
			p++;
		snprintf(pieces[np++], sizeof pieces[0], "%s", p);
	}
	free(ids);
	bool hit = false;
	/* every strict, non-empty subset of the pieces, in order */
	for (uint32_t mask = 1; np > 1 && mask + 1 < (1u << np) && !hit; mask++) {
		char cat[256];
		size_t o = 0;
		for (size_t i = 0; i < np; i++) {
			size_t pl = strlen(pieces[i]);
			if (mask >> i & 1 && o + pl < sizeof cat) {
				memcpy(cat + o, pieces[i], pl);
				o += pl;
			}
		}
		cat[o] = '\0';
		hit = o == wl && strcasecmp(cat, word) == 0;
	}
	return hit;
}

/* One conversation: its fact, turns fillers, the question and the reply. */
/* The mean share of (layer, KV head) pairs that keep each token at
 * original positions [first, last] (0 for a token not cached). */
static double rc_heads_share(const struct kv_cache *kv, int32_t first, int32_t last)
{
	uint32_t nl, nkv;
	uint8_t *map = kv_cache_head_map(kv, &nl, &nkv); /* (n_cached, n_layer, n_head_kv) or NULL */
	size_t h = (size_t)nl * nkv;
	double share = 0;
	for (int32_t p = first; p <= last; p++) {
		int32_t i = kv_cache_find(kv, p);
		uint32_t k = 0;
		for (size_t r = 0; i >= 0 && map != NULL && r < h; r++)
			k += map[(size_t)i * h + r];
		share += i < 0 ? 0 : map == NULL ? 1 : (double)k / (double)h;
	}
	free(map);
	return last >= first ? share / (double)(last - first + 1) : 0;
}

static int rc_sample_run(struct gen *g, const struct cli_opts *o, bool raw, struct rc_sample *sm,
                         struct eval_rng *r, struct rc_cell *c, struct eval_cold *cold,
                         struct err *e)
{
	const struct rc_kind *k = &rc_kinds[sm->kind];
	gen_reset(g);
	double t0 = clock_now_ms();
	int rc = KVS_OK;
	if (!raw)
		rc = eval_feed_system(g, e);
	/* the fact */
	char *stmt = xasprintf("%s %s.", k->statement, sm->value);
	char *user = xasprintf("Please remember this: %s", stmt);
	int32_t *uids = NULL, first = -1, last = -1;
	size_t nu = 0;
	int32_t base = kv_cache_next_pos(gen_kv(g));
	if (rc == KVS_OK)
		rc = rc_exchange(g, raw, user, "Okay, I will remember that.", false, 0, cold, &uids, &nu,
		                 e);
	if (rc == KVS_OK && !rc_locate(g, uids, nu, base, sm->value, &first, &last))
		rc = err_set(e, KVS_EFORMAT, "recall: the value '%s' is not found in its turn", sm->value);
	free(uids);
	free(user);
	free(stmt);
	/* the unrelated turns */
	size_t prev = SIZE_MAX;
	for (uint32_t t = 0; rc == KVS_OK && t < sm->turns; t++) {
		size_t f = eval_rng_next(r) % KVS_ARRAY_LEN(rc_filler);
		if (f == prev)
			f = (f + 1) % KVS_ARRAY_LEN(rc_filler);
		prev = f;
		rc = rc_exchange(g, raw, rc_filler[f][0], rc_filler[f][1], false, 0, cold, &uids, &nu, e);
		free(uids);
	}
	/* the question, the primed reply */
	if (rc == KVS_OK)
		rc = rc_exchange(g, raw, k->question, k->primer, true, o->max_tokens, cold, &uids, &nu, e);
	free(uids);
	if (rc != KVS_OK)
		return rc;
	uint32_t held = 0;
	for (int32_t p = first; p <= last; p++)
		held += kv_cache_find(gen_kv(g), p) >= 0;
	sm->heads = rc_heads_share(gen_kv(g), first, last);
	sm->held = held == (uint32_t)(last - first + 1) ? RC_HELD_ALL
	        : held > 0                              ? RC_HELD_PART
	                                                : RC_HELD_NONE;
	c->cached += kv_cache_n(gen_kv(g));
	c->tokens += kv_cache_next_pos(gen_kv(g));
	struct gen_text b = { 0 };
	enum gen_stop stop;
	uint32_t n_out;
	rc = gen_reply(g, o->max_tokens, gen_text_collect, &b, &stop, &n_out, e);
	if (rc != KVS_OK) {
		free(b.s);
		return rc;
	}
	sm->answer = b.s ? b.s : xstrdup("");
	/* one line: what follows a newline is not the answer */
	sm->answer[strcspn(sm->answer, "\n")] = '\0';
	char word[64];
	rc_first_word(sm->answer, word, sizeof word);
	if (rc_contains(sm->answer, sm->value))
		sm->verdict = RC_RIGHT;
	else if (rc_partial(g, sm->value, word, e))
		sm->verdict = RC_PARTIAL;
	else
		sm->verdict = RC_WRONG;
	c->ms += clock_now_ms() - t0;
	return KVS_OK;
}

/* Add a sample's verdict to a cell. */
static void rc_count(struct rc_cell *c, const struct rc_sample *sm)
{
	c->n++;
	c->verdict[sm->verdict]++;
	c->held[sm->held]++;
}

/* One row of the table. */
static void rc_row(FILE *fp, const struct rc_cell *c)
{
	double n = c->n ? c->n : 1;
	fprintf(fp, "%6u %-7s %4u/%-4u %7u %5u  %4u %4u %4u %8.0f %7.0f %7.1f\n", c->turns,
	        c->kind < 0 ? "all" : rc_kinds[c->kind].name, c->verdict[RC_RIGHT], c->n,
	        c->verdict[RC_PARTIAL], c->verdict[RC_WRONG], c->held[RC_HELD_ALL],
	        c->held[RC_HELD_PART], c->held[RC_HELD_NONE], c->tokens / n, c->cached / n,
	        c->ms / n / 1e3);
}

static void rc_json(FILE *fp, const struct cli_opts *o, struct gen *g, const char *policy,
                    uint32_t budget, bool raw, const struct rc_cell *cells, uint32_t n_cells,
                    const struct rc_sample *sm, uint32_t n_sm)
{
	eval_json_head(fp, "recall", g, policy, budget, raw, o->eval_seed);
	fprintf(fp, ",\"samples\":%u,\"max_tokens\":%u,\"cells\":[", o->samples, o->max_tokens);
	for (uint32_t i = 0; i < n_cells; i++) {
		const struct rc_cell *c = &cells[i];
		double n = c->n ? c->n : 1;
		fprintf(fp,
		        "%s{\"turns\":%u,\"kind\":\"%s\",\"n\":%u,\"right\":%u,\"partial\":%u,"
		        "\"wrong\":%u,\"held_all\":%u,\"held_part\":%u,\"held_none\":%u,"
		        "\"tokens_mean\":%.1f,\"cached_mean\":%.1f,\"seconds_mean\":%.2f}",
		        i ? "," : "", c->turns, c->kind < 0 ? "all" : rc_kinds[c->kind].name, c->n,
		        c->verdict[RC_RIGHT], c->verdict[RC_PARTIAL], c->verdict[RC_WRONG],
		        c->held[RC_HELD_ALL], c->held[RC_HELD_PART], c->held[RC_HELD_NONE], c->tokens / n,
		        c->cached / n, c->ms / n / 1e3);
	}
	fprintf(fp, "],\"answers\":[");
	for (uint32_t i = 0; i < n_sm; i++) {
		fprintf(fp, "%s{\"turns\":%u,\"kind\":\"%s\",\"value\":", i ? "," : "", sm[i].turns,
		        rc_kinds[sm[i].kind].name);
		eval_json_str(fp, sm[i].value);
		fprintf(fp, ",\"answer\":");
		eval_json_str(fp, sm[i].answer ? sm[i].answer : "");
		fprintf(fp, ",\"verdict\":\"%s\",\"held\":\"%s\",\"heads\":%.3f}",
		        rc_verdict_names[sm[i].verdict], rc_held_names[sm[i].held], sm[i].heads);
	}
	fprintf(fp, "]}\n");
}

/* The answer is a word or two: 12 tokens are enough; 3 samples per cell. */
static enum cli_exit cmd_eval_recall_defaults(struct cli_opts *o)
{
	o->max_tokens = 12;
	o->samples = 3;
	return CLI_OK;
}

/* Parse --facts into kinds (indices into rc_kinds). */
static int rc_parse_kinds(const char *s, int *kinds, uint32_t *n, struct err *e)
{
	*n = 0;
	while (*s) {
		size_t len = strcspn(s, ",");
		int k = -1;
		for (size_t i = 0; i < KVS_ARRAY_LEN(rc_kinds); i++)
			if (strlen(rc_kinds[i].name) == len && strncmp(rc_kinds[i].name, s, len) == 0)
				k = (int)i;
		if (k < 0 || *n >= KVS_ARRAY_LEN(rc_kinds))
			return err_set(e, KVS_EARG, "--facts: '%.*s', expected number, name, code or day",
			               (int)len, s);
		kinds[(*n)++] = k;
		s += len + (s[len] == ',');
	}
	return *n ? KVS_OK : err_set(e, KVS_EARG, "--facts: empty, expected number, name, code or day");
}

static enum cli_exit cmd_eval_recall_exec(struct cli_opts *o)
{
	struct gen *g = NULL;
	struct err e;
	uint32_t turns[RC_MAX_LIST], n_turns = 0, n_kinds = 0;
	int kinds[8];
	struct rc_cell *cells = NULL;
	struct rc_sample *sm = NULL;
	uint32_t n_sm = 0;
	char pol[256];
	enum cli_exit rc;
	struct eval_cold cold = { 0 };

	if (eval_parse_list("turns", o->turns ? o->turns : "10,30", 0, 10000, turns, RC_MAX_LIST,
	                    &n_turns, &e) != KVS_OK ||
	    rc_parse_kinds(o->facts ? o->facts : "number,name,code,day", kinds, &n_kinds, &e) !=
	            KVS_OK) {
		rc = cli_usage(&cmd_eval_recall, "%s", e.msg);
		goto out;
	}
	if (o->fact_value != NULL &&
	    (o->fact_value[0] == '\0' || strlen(o->fact_value) >= 64 ||
	     strpbrk(o->fact_value, " \t\n") != NULL)) {
		rc = cli_usage(&cmd_eval_recall, "--value: '%s', expected one word of 1..63 bytes",
		               o->fact_value);
		goto out;
	}
	if (o->cold.on && !kv_policy_evicts(&o->gen.kv.policy)) {
		rc = cli_usage(&cmd_eval_recall,
		               "--cold on: policy %s never evicts; expected one that does (streaming, "
		               "sirllm, ...)",
		               kv_policy_name(&o->gen.kv.policy));
		goto out;
	}
	bool raw = o->eval_raw;
	uint32_t max_turns = 0;
	for (uint32_t i = 0; i < n_turns; i++)
		max_turns = KVS_MAX(max_turns, turns[i]);
	uint32_t budget;
	/* the full cache gets room for the longest conversation and its answer */
	rc = eval_open(o, 256 + max_turns * 48 + o->max_tokens, RC_DEFAULT_BUDGET, &g, pol, sizeof pol,
	               &budget);
	if (rc != CLI_OK)
		goto out;
	if (o->cold.on && eval_cold_open(&cold, g, o, "eval recall", pol, &e) != KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	if (cold.sc != NULL) {
		size_t l = strlen(pol);
		snprintf(pol + l, sizeof pol - l, ", cold tier (recall %s)",
		         session_recall_name(o->cold.recall));
	}
	uint32_t n_cells = n_turns * (n_kinds + 1), total = n_turns * n_kinds * o->samples;
	cells = xcalloc(n_cells, sizeof *cells);
	sm = xcalloc(total, sizeof *sm);
	fprintf(stderr, "kvscope eval recall: %s, budget %u, %s format, seed %u\n", pol, budget,
	        raw ? "raw" : "chat", o->eval_seed);
	struct eval_progress pr;
	eval_progress_start(&pr, "recall", total);
	for (uint32_t ti = 0; ti < n_turns; ti++) {
		struct rc_cell *sum = &cells[ti * (n_kinds + 1) + n_kinds];
		sum->turns = turns[ti];
		sum->kind = -1;
		for (uint32_t ki = 0; ki < n_kinds; ki++) {
			struct rc_cell *c = &cells[ti * (n_kinds + 1) + ki];
			c->turns = turns[ti];
			c->kind = kinds[ki];
			for (uint32_t s = 0; s < o->samples; s++) {
				struct rc_sample *x = &sm[n_sm];
				struct eval_rng r;
				eval_rng_seed(&r,
				              ((uint64_t)o->eval_seed << 32) ^ ((uint64_t)turns[ti] << 12) ^
				                      ((uint64_t)kinds[ki] << 24) ^ s);
				x->turns = turns[ti];
				x->kind = kinds[ki];
				rc_kinds[x->kind].value(&r, x->value, sizeof x->value);
				if (o->fact_value != NULL)
					snprintf(x->value, sizeof x->value, "%s", o->fact_value);
				double ms0 = c->ms, tok0 = c->tokens, cached0 = c->cached;
				if (rc_sample_run(g, o, raw, x, &r, c, &cold, &e) != KVS_OK) {
					rc = cli_fail(&e);
					goto out;
				}
				n_sm++;
				rc_count(c, x);
				rc_count(sum, x);
				sum->ms += c->ms - ms0;
				sum->tokens += c->tokens - tok0;
				sum->cached += c->cached - cached0;
				eval_progress(&pr, n_sm, "%u turns, %s %s: %s (%s)", turns[ti],
				              rc_kinds[x->kind].name, x->value, rc_verdict_names[x->verdict],
				              x->answer);
			}
		}
	}
	eval_progress_end(&pr);
	printf("recall: %s, budget %u tokens, %s format, seed %u, %u samples per cell\n", pol, budget,
	       raw ? "raw" : "chat", o->eval_seed, o->samples);
	printf(" turns kind     right  partial wrong  held: all part none   tokens  cached  "
	       "s/sample\n");
	for (uint32_t i = 0; i < n_cells; i++)
		rc_row(stdout, &cells[i]);
	if (cold.sc != NULL)
		printf("cold tier: %llu tokens recalled over %u exchanges\n",
		       (unsigned long long)cold.recalled, cold.index);
	if (o->json)
		rc_json(stdout, o, g, pol, budget, raw, cells, n_cells, sm, n_sm);
	fflush(stdout);
	rc = CLI_OK;
out:
	eval_cold_close(&cold);
	for (uint32_t i = 0; sm && i < n_sm; i++)
		free(sm[i].answer);
	free(sm);
	free(cells);
	gen_close(g);
	return rc;
}
