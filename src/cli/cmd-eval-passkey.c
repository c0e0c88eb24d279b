/*
 * cmd-eval-passkey.c: `kvscope eval passkey`, passkey retrieval under a KV
 * retention policy (LM-Infinite's protocol, generated here).
 *
 * A prompt is the task description, filler (a five-sentence block about
 * grass, sky and sun, repeated), the needle "The pass key is K. Remember it.
 * K is the pass key." at a given depth of the filler, and the question. K is
 * drawn uniformly from 1..9,999,999 by a generator seeded from --seed, the
 * length, the depth and the sample index, so every cell is reproducible on
 * its own. The number of filler blocks is calibrated with our tokenizer so
 * the prompt lands near the requested length; the true token count of every
 * sample is reported. In chat format the text is one user message and the
 * reply is primed with "The pass key is"; raw format appends " What is the
 * pass key? The pass key is" to the text. Decoding is greedy; a sample is
 * right when the first integer of the answer equals K.
 *
 * With --cold on, what the policy evicts goes to a cold tier in a
 * temporary database (deleted at exit), and the prompt is fed as two turns
 * of the cache: the haystack, whose evictions are written to the cold tier,
 * then, from the question on, a turn that recalls first as a chat turn
 * does (session-cold.c: the scorer --recall, the budget --recall-budget,
 * where the blocks sit --recall-place; the turn's words are the
 * question's, its probe the prompt's last tokens). The tokens are the
 * same either way, and so are their positions but where --recall-place
 * near moves the recalled blocks; each sample is an epoch of its own in
 * the cold tier.
 *
 * --sparse may be repeated (off, quest, hip, squeezed, each with its
 * parameters): every prompt is then answered under each mode in turn, and
 * the modes whose prefill is dense (all but a hip whose block-sparse
 * prefill the prompt reaches) decode from one prefill of it: after the
 * first such mode's answer the cache goes back to the prompt's end
 * (kv_cache_back; where a policy evicted since, the prompt is fed again),
 * so a long prompt costs one dense prefill, not one per mode, and each
 * mode answers exactly as a run of it alone would. The tables come per
 * mode, then one of accuracy by length and mode; the JSON cells carry
 * their mode ("sparse"), "modes" the totals of each. With several modes
 * the cold tier is refused (its epochs are per feed).
 *
 * Per (length, depth): accuracy, the share of the needle's digit tokens
 * still cached when the question has been read (recalls included), peak KV
 * bytes, and prefill and decode speed. The table goes to stdout; with --json one JSON object
 * follows it as the last line. Progress goes to stderr.
 */
#include "cli/eval.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static enum cli_exit cmd_eval_passkey_exec(struct cli_opts *o);
static enum cli_exit cmd_eval_passkey_defaults(struct cli_opts *o);

const struct cli_cmd cmd_eval_passkey = {
	.name = "eval passkey",
	.usage = "[--policy P] [--kv-budget N] [--lengths 2k,4k,...] [--depths 10,30,...] "
	         "[--samples N] [--format chat|raw] [--max-tokens N (default 10)] [--seed S] "
	         "[--sparse MODE (repeatable)] [--json] [--cold on [--recall R] [--recall-budget N] "
	         "[--recall-place order|near]] "
	         "[options]",
	.help = "passkey retrieval (LM-Infinite's protocol) under a KV retention policy and budget",
	.exec = cmd_eval_passkey_exec,
	.options = OPTG_MODEL | OPTG_ENGINE | OPTG_KV | OPTG_EVAL | OPTG_PASSKEY | OPTG_GEN | OPTG_COLD,
	.defaults = cmd_eval_passkey_defaults,
};

#define PK_MAX_LIST 32
#define PK_DEFAULT_BUDGET 1024

static const char pk_task[] =
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
        "them. I will quiz you about the important information there.";
static const char pk_filler[] =
        "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
static const char pk_question[] = "What is the pass key?";
static const char pk_answer_prefix[] = "The pass key is";

struct pk_cell {
	uint32_t mode; /* index into the run's sparse modes */
	uint32_t length, depth;
	uint32_t n, correct, all_kept;
	double tokens, kept; /* sums over samples */
	uint64_t peak_bytes;
	double prefill_ms, decode_ms;
	uint64_t prefill_tok, decode_tok;
};

/* The haystack text: task, blocks of filler with the needle after
 * n_before of them, n_blocks in all. */
static char *pk_text(uint32_t n_blocks, uint32_t n_before, uint32_t key)
{
	size_t cap = sizeof pk_task + (size_t)(n_blocks + 2) * sizeof pk_filler + 128, o = 0;
	char *s = xmalloc(cap);
	o += (size_t)snprintf(s + o, cap - o, "%s", pk_task);
	for (uint32_t b = 0; b <= n_blocks; b++) {
		if (b == n_before && key > 0)
			o += (size_t)snprintf(s + o, cap - o,
			                      " The pass key is %u. Remember it. %u is the pass key.", key,
			                      key);
		if (b < n_blocks)
			o += (size_t)snprintf(s + o, cap - o, " %s", pk_filler);
	}
	return s;
}

/* Token ids of the whole prompt for the haystack text. */
static int pk_tokens(struct gen *g, const char *text, bool raw, int32_t **ids, size_t *n,
                     struct err *e)
{
	const struct vocab *v = gen_vocab(g);
	size_t cap = 0;
	*ids = NULL;
	*n = 0;
	if (raw) {
		char *full = xasprintf("%s %s %s", text, pk_question, pk_answer_prefix);
		int rc = vocab_tokenize(v, full, strlen(full), true, false, ids, n, &cap, e);
		free(full);
		return rc;
	}
	const struct chat_template *ct = gen_chat(g, e);
	if (ct == NULL)
		return e->code;
	struct chat_prompt p = { 0 };
	char *user = xasprintf("%s %s", text, pk_question);
	if (vocab_add_bos(v) && vocab_bos(v) >= 0) {
		cap = 16;
		*ids = xmallocarray(cap, sizeof **ids);
		(*ids)[(*n)++] = vocab_bos(v);
	}
	chat_first_user(ct, NULL, user, &p, &p);
	chat_generation_prompt(ct, &p);
	int rc = chat_tokenize(v, &p, ids, n, &cap, e);
	chat_prompt_free(&p);
	free(user);
	if (rc == KVS_OK)
		rc = vocab_tokenize(v, pk_answer_prefix, strlen(pk_answer_prefix), false, false, ids, n,
		                    &cap, e);
	return rc;
}

/* Filler blocks that bring the prompt closest to length tokens. */
static int pk_calibrate(struct gen *g, bool raw, uint32_t length, uint32_t *n_blocks, struct err *e)
{
	uint32_t counts[2];
	for (int k = 0; k < 2; k++) {
		char *t = pk_text((uint32_t)k * 10, 0, 1234567);
		int32_t *ids;
		size_t n;
		int rc = pk_tokens(g, t, raw, &ids, &n, e);
		free(t);
		free(ids);
		if (rc != KVS_OK)
			return rc;
		counts[k] = (uint32_t)n;
	}
	double per_block = (counts[1] - counts[0]) / 10.0;
	double want = ((double)length - counts[0]) / per_block;
	*n_blocks = want < 1 ? 1 : (uint32_t)(want + 0.5);
	return KVS_OK;
}

/* The first integer in s, or -1 (none, or longer than 10 digits). */
static long long pk_first_int(const char *s)
{
	while (*s && !isdigit((unsigned char)*s))
		s++;
	if (!*s)
		return -1;
	long long v = 0;
	for (int d = 0; isdigit((unsigned char)*s); s++, d++) {
		if (d >= 10)
			return -1;
		v = v * 10 + (*s - '0');
	}
	return v;
}

/* Squeezed: the prompt's cached keys but its last PK_ASK tokens (the
 * question, always in the recent window) are the fixed context; cluster
 * them as a pinned document's would be. */
#define PK_ASK 32
static int pk_squeeze(struct gen *g, size_t n, struct err *e)
{
	struct kv_cache *kv = gen_kv(g);
	const struct kv_tok *t = kv_cache_toks(kv);
	uint32_t *slots = xmallocarray(kv_cache_n(kv) + 1, sizeof(uint32_t)), m = 0;
	for (uint32_t i = 0; i < kv_cache_n(kv); i++)
		if ((size_t)t[i].orig_pos + PK_ASK < n)
			slots[m++] = t[i].slot;
	int rc = engine_squeeze_build(gen_engine(g), slots, m, kv_cache_sparse(kv), NULL, NULL, e);
	free(slots);
	return rc;
}

/* The text of ids [a, b] (pieces joined, newlines shown as \\n). */
static char *pk_span_text(const struct vocab *v, const int32_t *ids, int32_t a, int32_t b)
{
	size_t cap = 64, len = 0;
	char *s = xmalloc(cap);
	for (int32_t i = a; i <= b; i++) {
		char piece[64];
		size_t pl = KVS_MIN(vocab_piece(v, ids[i], false, piece, sizeof piece), sizeof piece);
		if (len + 2 * pl + 1 > cap) {
			cap = 2 * (len + 2 * pl + 1);
			s = xrealloc(s, cap);
		}
		for (size_t j = 0; j < pl; j++) {
			if (piece[j] == '\n') {
				s[len++] = '\\';
				s[len++] = 'n';
			} else
				s[len++] = piece[j];
		}
	}
	s[len] = '\0';
	return s;
}

/* At debug level: the cache as the question left it, one line per run of
 * consecutive original positions (where it sits, whether it was recalled,
 * its text; long runs by their ends), so a wrong answer can be read
 * against what the model saw. */
static void pk_log_cache(struct gen *g, const int32_t *ids, size_t n)
{
	if (log_get_level() < LOG_DEBUG)
		return;
	struct kv_cache *kv = gen_kv(g);
	const struct kv_tok *t = kv_cache_toks(kv);
	uint32_t nc = kv_cache_n(kv);
	for (uint32_t i = 0; i < nc;) {
		uint32_t j = i + 1;
		bool rec = t[i].flags & KV_FLAG_RECALLED;
		while (j < nc && t[j].orig_pos == t[j - 1].orig_pos + 1 &&
		       (bool)(t[j].flags & KV_FLAG_RECALLED) == rec)
			j++;
		int32_t a = t[i].orig_pos, b = t[j - 1].orig_pos;
		if ((size_t)b >= n) { /* never: the cache holds the prompt only */
			i = j;
			continue;
		}
		char *text;
		if (rec || b - a < 160)
			text = pk_span_text(gen_vocab(g), ids, a, b);
		else {
			char *x = pk_span_text(gen_vocab(g), ids, a, a + 40);
			char *y = pk_span_text(gen_vocab(g), ids, b - 40, b);
			text = xasprintf("%s ... %s", x, y);
			free(x);
			free(y);
		}
		log_debug("passkey cache: %u tokens at original %d..%d, cache positions %d..%d%s: '%s'",
		          j - i, a, b, t[i].pos, t[j - 1].pos, rec ? ", recalled" : "", text);
		free(text);
		i = j;
	}
}

/* Feed the prompt ids (n) from an empty cache; with a cold tier the
 * question starts a turn of its own. */
static int pk_fill(struct gen *g, const int32_t *ids, size_t n, struct eval_cold *cold,
                   struct err *e)
{
	gen_reset(g);
	size_t head = n;
	int32_t qa = -1, qb = -1;
	if (cold->sc != NULL && eval_find_tokens(gen_vocab(g), ids, n, pk_question, 0, 0, &qa, &qb) &&
	    qa > 0)
		head = (size_t)qa;
	int rc = gen_begin_turn(g, KV_ROLE_USER, head, e);
	if (rc == KVS_OK)
		rc = gen_feed(g, ids, head, e);
	if (rc == KVS_OK && head < n) {
		size_t m = n - head;
		scold_flush(cold->sc, cold->index++, NULL);
		uint32_t room =
		        scold_recall(cold->sc, pk_question, ids + head, m, (uint32_t)m, cold->index, NULL);
		rc = gen_begin_turn(g, KV_ROLE_USER, m + room, e);
		if (rc == KVS_OK && room > 0) {
			uint32_t n0 = kv_cache_n(gen_kv(g));
			scold_place(cold->sc, NULL);
			cold->recalled += kv_cache_n(gen_kv(g)) - n0;
		}
		if (rc == KVS_OK)
			rc = gen_feed(g, ids + head, m, e);
		scold_flush(cold->sc, cold->index++, NULL);
	}
	if (rc == KVS_OK)
		pk_log_cache(g, ids, n);
	return rc;
}

/* Whether mode sp prefills a prompt of n tokens densely (every mode but
 * a hip whose block-sparse prefill the prompt reaches): such modes can
 * share one prefill. */
static bool pk_dense_prefill(const struct engine_sparse *sp, size_t n)
{
	return sp->mode != ENGINE_SPARSE_HIP || sp->prefill == 0 || n < sp->prefill;
}

/* One sample's prompt, shared by its modes: the tokens and, once a mode
 * whose prefill is dense has fed them, the cache to go back to. */
struct pk_prompt {
	int32_t *ids; /* (n) */
	size_t n;
	struct kv_snap *snap;     /* after the dense prefill, or NULL */
	double fill_ms, fill_tok; /* that prefill's time and tokens */
};

/* Run one sample under the cache's sparse mode now; fills *right, *kept
 * (share of needle digit tokens cached after the prompt), *shared (the
 * prompt's dense prefill was another mode's) and *answer. With share, a
 * dense prefill is kept in pp for the sample's next modes and taken from
 * there when one is kept. */
static int pk_sample(struct gen *g, const struct cli_opts *o, struct pk_prompt *pp, bool share,
                     struct eval_cold *cold, uint32_t key, bool *right, double *kept, bool *shared,
                     char **answer, struct err *e)
{
	const int32_t *ids = pp->ids;
	size_t n = pp->n;
	bool dense = pk_dense_prefill(kv_cache_sparse(gen_kv(g)), n);
	int rc = KVS_ESTATE;
	*shared = false;
	if (dense && pp->snap != NULL) {
		rc = gen_back(g, pp->snap, e);
		*shared = rc == KVS_OK;
	}
	if (rc != KVS_OK) {
		struct gen_timing t0, t1;
		gen_timings(g, &t0);
		rc = pk_fill(g, ids, n, cold, e);
		gen_timings(g, &t1);
		if (rc == KVS_OK && dense && share && pp->snap == NULL) {
			pp->snap = kv_cache_snap(gen_kv(g));
			pp->fill_ms = t1.prefill_ms - t0.prefill_ms;
			pp->fill_tok = (double)(t1.n_prefilled - t0.n_prefilled);
		}
	}
	if (rc == KVS_OK && kv_cache_sparse(gen_kv(g))->mode == ENGINE_SPARSE_SQUEEZED)
		rc = pk_squeeze(g, n, e);
	if (rc != KVS_OK)
		return rc;
	/* the needle's digits are the only digits in the prompt */
	uint32_t nd = 0, nk = 0;
	for (size_t i = 0; i < n; i++) {
		char piece[64];
		size_t pl = vocab_piece(gen_vocab(g), ids[i], false, piece, sizeof piece);
		bool digit = false;
		for (size_t j = 0; j < pl && j < sizeof piece; j++)
			digit = digit || isdigit((unsigned char)piece[j]);
		if (digit) {
			nd++;
			nk += kv_cache_find(gen_kv(g), (int32_t)i) >= 0;
		}
	}
	*kept = nd ? (double)nk / nd : 0;
	struct gen_text b = { 0 };
	enum gen_stop stop;
	uint32_t n_out;
	rc = gen_reply(g, o->max_tokens, gen_text_collect, &b, &stop, &n_out, e);
	if (rc != KVS_OK) {
		free(b.s);
		return rc;
	}
	*right = pk_first_int(b.s ? b.s : "") == (long long)key;
	*answer = b.s ? b.s : xstrdup("");
	return KVS_OK;
}

/* One row of the table. */
static void pk_row(FILE *fp, const struct pk_cell *c)
{
	fprintf(fp, "%7u %5u%% %7.0f %4u/%-4u %6.2f %8.1f %9.0f %8.1f\n", c->length, c->depth,
	        c->tokens / (c->n ? c->n : 1), c->correct, c->n, c->kept / (c->n ? c->n : 1),
	        (double)c->peak_bytes / 1048576.0,
	        c->prefill_ms > 0 ? c->prefill_tok * 1e3 / c->prefill_ms : 0.0,
	        c->decode_ms > 0 ? c->decode_tok * 1e3 / c->decode_ms : 0.0);
}

/* The run's sparse modes: each one's spec as text, and the order they run
 * in (the modes that share the dense prefill first). */
struct pk_modes {
	struct engine_sparse sp[CLI_SPARSE_MAX]; /* (n) as given */
	char name[CLI_SPARSE_MAX][160];          /* (n) engine_sparse_format */
	uint32_t order[CLI_SPARSE_MAX];          /* (n) */
	uint32_t n;
};

static void pk_json(FILE *fp, const struct cli_opts *o, struct gen *g, const char *policy,
                    uint32_t budget, bool raw, const struct pk_modes *md,
                    const struct pk_cell *cells, uint32_t n_cells)
{
	uint32_t n = 0, right = 0;
	eval_json_head(fp, "passkey", g, policy, budget, raw, o->eval_seed);
	fprintf(fp, ",\"samples\":%u,\"max_tokens\":%u,\"cells\":[", o->samples, o->max_tokens);
	for (uint32_t i = 0; i < n_cells; i++) {
		const struct pk_cell *c = &cells[i];
		double cn = c->n ? c->n : 1;
		n += c->n;
		right += c->correct;
		fprintf(fp,
		        "%s{\"length\":%u,\"depth\":%u,\"n\":%u,\"correct\":%u,\"accuracy\":%.4f,"
		        "\"tokens_mean\":%.1f,\"needle_kept\":%.4f,\"needle_all_kept\":%u,"
		        "\"peak_kv_bytes\":%llu,\"prefill_tok_s\":%.1f,\"decode_tok_s\":%.1f,\"sparse\":",
		        i ? "," : "", c->length, c->depth, c->n, c->correct, c->correct / cn,
		        c->tokens / cn, c->kept / cn, c->all_kept, (unsigned long long)c->peak_bytes,
		        c->prefill_ms > 0 ? c->prefill_tok * 1e3 / c->prefill_ms : 0.0,
		        c->decode_ms > 0 ? c->decode_tok * 1e3 / c->decode_ms : 0.0);
		eval_json_str(fp, md->name[c->mode]);
		fprintf(fp, "}");
	}
	fprintf(fp, "],\"n\":%u,\"correct\":%u,\"accuracy\":%.4f,\"modes\":[", n, right,
	        n ? (double)right / n : 0.0);
	for (uint32_t m = 0; m < md->n; m++) {
		uint32_t mn = 0, mr = 0;
		for (uint32_t i = 0; i < n_cells; i++)
			if (cells[i].mode == m) {
				mn += cells[i].n;
				mr += cells[i].correct;
			}
		fprintf(fp, "%s{\"sparse\":", m ? "," : "");
		eval_json_str(fp, md->name[m]);
		fprintf(fp, ",\"n\":%u,\"correct\":%u,\"accuracy\":%.4f}", mn, mr,
		        mn ? (double)mr / mn : 0.0);
	}
	fprintf(fp, "]}\n");
}

/* The modes of --sparse as given (none: the one the options set), with
 * the ones whose prefill is dense ordered first. */
static void pk_modes_init(struct pk_modes *md, const struct cli_opts *o)
{
	md->n = 0;
	if (o->n_sparse_modes == 0)
		md->sp[md->n++] = o->gen.kv.sparse;
	for (uint32_t i = 0; i < o->n_sparse_modes; i++)
		md->sp[md->n++] = o->sparse_modes[i];
	uint32_t k = 0;
	for (int pass = 0; pass < 2; pass++)
		for (uint32_t m = 0; m < md->n; m++)
			if ((md->sp[m].mode == ENGINE_SPARSE_HIP && md->sp[m].prefill > 0) == (pass == 1))
				md->order[k++] = m;
	for (uint32_t m = 0; m < md->n; m++) {
		if (md->sp[m].mode == ENGINE_SPARSE_OFF)
			snprintf(md->name[m], sizeof md->name[m], "off");
		else
			engine_sparse_format(&md->sp[m], md->name[m], sizeof md->name[m]);
	}
}

/* With several modes: accuracy by length (rows) and mode (columns). */
static void pk_matrix(const struct pk_modes *md, const uint32_t *lengths, uint32_t n_len,
                      uint32_t n_dep, const struct pk_cell *cells)
{
	printf("\n| length |");
	for (uint32_t m = 0; m < md->n; m++)
		printf(" %s |", md->name[m]);
	printf("\n| ---: |");
	for (uint32_t m = 0; m < md->n; m++)
		printf(" ---: |");
	printf("\n");
	for (uint32_t li = 0; li < n_len; li++) {
		printf("| %u |", lengths[li]);
		for (uint32_t m = 0; m < md->n; m++) {
			uint32_t n = 0, k = 0;
			for (uint32_t di = 0; di < n_dep; di++) {
				const struct pk_cell *c = &cells[((size_t)m * n_len + li) * n_dep + di];
				n += c->n;
				k += c->correct;
			}
			printf(" %u/%u |", k, n);
		}
		printf("\n");
	}
}

/* The answer is a number: 10 tokens are enough. */
static enum cli_exit cmd_eval_passkey_defaults(struct cli_opts *o)
{
	o->max_tokens = 10;
	return CLI_OK;
}

static enum cli_exit cmd_eval_passkey_exec(struct cli_opts *o)
{
	struct gen *g = NULL;
	struct err e;
	uint32_t lengths[PK_MAX_LIST], depths[PK_MAX_LIST], n_len = 0, n_dep = 0;
	struct pk_cell *cells = NULL;
	struct eval_cold cold = { 0 };
	struct pk_modes md;
	struct pk_prompt pp = { 0 };
	char pol[256];
	enum cli_exit rc;

	if (eval_parse_list("lengths", o->lengths ? o->lengths : "2k,4k,8k,16k,32k", 64, 1u << 22,
	                    lengths, PK_MAX_LIST, &n_len, &e) != KVS_OK ||
	    eval_parse_list("depths", o->depths ? o->depths : "10,30,50,70,90", 0, 100, depths,
	                    PK_MAX_LIST, &n_dep, &e) != KVS_OK) {
		rc = cli_usage(&cmd_eval_passkey, "%s", e.msg);
		goto out;
	}
	pk_modes_init(&md, o);
	if (md.n > 1 && o->cold.on) {
		rc = cli_usage(&cmd_eval_passkey,
		               "--sparse given %u times with --cold on: expected one sparse mode with a "
		               "cold tier",
		               md.n);
		goto out;
	}
	/* with several modes the policy is named alone; each mode is set per run */
	if (md.n > 1)
		o->gen.kv.sparse.mode = ENGINE_SPARSE_OFF;
	bool raw = o->eval_raw;
	uint32_t max_len = 0;
	for (uint32_t i = 0; i < n_len; i++)
		max_len = KVS_MAX(max_len, lengths[i]);
	uint32_t budget;
	/* the full cache gets room for the longest prompt and its answer */
	rc = eval_open(o, max_len + max_len / 16 + 256 + o->max_tokens, PK_DEFAULT_BUDGET, &g, pol,
	               sizeof pol, &budget);
	if (rc != CLI_OK)
		goto out;
	for (uint32_t m = 0; m < md.n && md.n > 1; m++)
		if (kv_cache_set_sparse(gen_kv(g), &md.sp[m], &e) != KVS_OK) {
			err_prefix(&e, "--sparse %s", md.name[m]);
			rc = cli_fail(&e);
			goto out;
		}
	if (o->cold.on && eval_cold_open(&cold, g, o, "eval passkey", pol, &e) != KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	cells = xcalloc((size_t)md.n * n_len * n_dep, sizeof *cells);
	struct eval_progress pr;
	eval_progress_start(&pr, "passkey", (uint64_t)n_len * n_dep * o->samples * md.n);
	uint64_t done = 0, right = 0;
	fprintf(stderr, "kvscope eval passkey: %s, budget %u, %s format, seed %u%s\n", pol, budget,
	        raw ? "raw" : "chat", o->eval_seed,
	        cold.sc != NULL ? ", cold tier (a temporary database)" : "");
	for (uint32_t m = 0; m < md.n && md.n > 1; m++)
		fprintf(stderr, "kvscope eval passkey: sparse mode %u: %s%s\n", m + 1, md.name[m],
		        md.sp[m].mode == ENGINE_SPARSE_HIP && md.sp[m].prefill > 0
		                ? " (its own prefill where a prompt reaches prefill=)"
		                : " (the shared dense prefill)");
	for (uint32_t li = 0; li < n_len; li++) {
		uint32_t n_blocks;
		if (pk_calibrate(g, raw, lengths[li], &n_blocks, &e) != KVS_OK) {
			rc = cli_fail(&e);
			goto out;
		}
		for (uint32_t di = 0; di < n_dep; di++) {
			for (uint32_t s = 0; s < o->samples; s++) {
				struct eval_rng r;
				eval_rng_seed(&r,
				              ((uint64_t)o->eval_seed << 32) ^ ((uint64_t)lengths[li] << 12) ^
				                      ((uint64_t)depths[di] << 24) ^ s);
				uint32_t key = 1 + (uint32_t)(eval_rng_next(&r) % 9999999u);
				uint32_t before = (uint32_t)((double)n_blocks * depths[di] / 100.0 + 0.5);
				char *text = pk_text(n_blocks, before, key);
				free(pp.ids);
				kv_snap_free(pp.snap);
				memset(&pp, 0, sizeof pp);
				int trc = pk_tokens(g, text, raw, &pp.ids, &pp.n, &e);
				free(text);
				if (trc != KVS_OK) {
					rc = cli_fail(&e);
					goto out;
				}
				for (uint32_t k = 0; k < md.n; k++) {
					uint32_t m = md.order[k];
					struct pk_cell *c = &cells[((size_t)m * n_len + li) * n_dep + di];
					c->mode = m;
					c->length = lengths[li];
					c->depth = depths[di];
					bool ok, shared;
					double kept;
					char *answer = NULL;
					struct gen_timing t0, t1;
					if (md.n > 1 && kv_cache_set_sparse(gen_kv(g), &md.sp[m], &e) != KVS_OK) {
						rc = cli_fail(&e);
						goto out;
					}
					gen_timings(g, &t0);
					if (pk_sample(g, o, &pp, md.n > 1, &cold, key, &ok, &kept, &shared, &answer,
					              &e) != KVS_OK) {
						rc = cli_fail(&e);
						goto out;
					}
					struct kv_stats ks;
					kv_cache_stats(gen_kv(g), &ks);
					gen_timings(g, &t1);
					c->n++;
					c->correct += ok;
					c->tokens += (double)pp.n;
					c->kept += kept;
					c->all_kept += kept >= 1.0;
					c->peak_bytes = KVS_MAX(c->peak_bytes, ks.bytes_peak);
					/* a shared prefill counts for every mode that decoded from it */
					c->prefill_ms += shared ? pp.fill_ms : t1.prefill_ms - t0.prefill_ms;
					c->prefill_tok +=
					        shared ? (uint64_t)pp.fill_tok : t1.n_prefilled - t0.n_prefilled;
					c->decode_ms += t1.decode_ms - t0.decode_ms;
					c->decode_tok += t1.n_decoded - t0.n_decoded;
					right += ok;
					done++;
					log_info("passkey length %u depth %u sample %u%s%s: %zu tokens, key %u, "
					         "answer '%s' (%s), needle kept %.2f%s",
					         lengths[li], depths[di], s, md.n > 1 ? ", sparse " : "",
					         md.n > 1 ? md.name[m] : "", pp.n, key, answer, ok ? "right" : "wrong",
					         kept, shared ? ", prefill shared" : "");
					free(answer);
					eval_progress(&pr, done, "len %u depth %u%%  acc %llu/%llu", lengths[li],
					              depths[di], (unsigned long long)right, (unsigned long long)done);
				}
			}
		}
	}
	eval_progress_end(&pr);
	printf("passkey: %s, budget %u tokens, %s format, seed %u, %u sample(s) per cell\n", pol,
	       budget, raw ? "raw" : "chat", o->eval_seed, o->samples);
	if (md.n > 1)
		printf("%u sparse modes over the same prompts, the modes whose prefill is dense "
		       "decoding from one prefill per prompt\n",
		       md.n);
	if (cold.sc != NULL)
		printf("cold tier: recall %s, %llu tokens recalled over the run\n",
		       session_recall_name(o->cold.recall), (unsigned long long)cold.recalled);
	for (uint32_t m = 0; m < md.n; m++) {
		if (md.n > 1)
			printf("\nsparse %s:\n", md.name[m]);
		printf("%7s %6s %7s %9s %6s %8s %9s %8s\n", "length", "depth", "tokens", "right", "kept",
		       "peakMiB", "prefill/s", "decode/s");
		const struct pk_cell *mc = &cells[(size_t)m * n_len * n_dep];
		for (uint32_t i = 0; i < n_len * n_dep; i++)
			pk_row(stdout, &mc[i]);
		for (uint32_t li = 0; li < n_len; li++) {
			uint32_t n = 0, k = 0;
			for (uint32_t di = 0; di < n_dep; di++) {
				n += mc[li * n_dep + di].n;
				k += mc[li * n_dep + di].correct;
			}
			printf("length %u: accuracy %u/%u (%.1f %%)\n", lengths[li], k, n,
			       n ? 100.0 * k / n : 0.0);
		}
	}
	if (md.n > 1)
		pk_matrix(&md, lengths, n_len, n_dep, cells);
	printf("overall: accuracy %llu/%llu (%.1f %%)\n", (unsigned long long)right,
	       (unsigned long long)done, done ? 100.0 * (double)right / (double)done : 0.0);
	if (o->json)
		pk_json(stdout, o, g, pol, budget, raw, &md, cells, md.n * n_len * n_dep);
	fflush(stdout);
	rc = CLI_OK;
out:
	free(pp.ids);
	kv_snap_free(pp.snap);
	free(cells);
	eval_cold_close(&cold);
	gen_close(g);
	return rc;
}
