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
 * does (session-cold.c: the scorer --recall, the budget --recall-budget;
 * the turn's words are the question's, its probe the prompt's last
 * tokens). The tokens and their positions are the same either way; each
 * sample is an epoch of its own in the cold tier.
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
	         "[--json] [--cold on [--recall R] [--recall-budget N]] [options]",
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

/* Run one sample; fills *right, *kept (share of needle digit tokens cached
 * after the prompt) and *n_tok. */
static int pk_sample(struct gen *g, const struct cli_opts *o, bool raw, uint32_t n_blocks,
                     uint32_t depth, uint32_t key, struct eval_cold *cold, bool *right,
                     double *kept, size_t *n_tok, char **answer, struct err *e)
{
	uint32_t before = (uint32_t)((double)n_blocks * depth / 100.0 + 0.5);
	char *text = pk_text(n_blocks, before, key);
	int32_t *ids = NULL;
	size_t n = 0;
	int rc = pk_tokens(g, text, raw, &ids, &n, e);
	free(text);
	if (rc != KVS_OK)
		return rc;
	*n_tok = n;
	gen_reset(g);
	/* with a cold tier the question starts a turn of its own */
	size_t head = n;
	int32_t qa = -1, qb = -1;
	if (cold->sc != NULL && eval_find_tokens(gen_vocab(g), ids, n, pk_question, 0, 0, &qa, &qb) &&
	    qa > 0)
		head = (size_t)qa;
	rc = gen_begin_turn(g, KV_ROLE_USER, head, e);
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
	if (rc == KVS_OK && kv_cache_sparse(gen_kv(g))->mode == ENGINE_SPARSE_SQUEEZED)
		rc = pk_squeeze(g, n, e);
	if (rc != KVS_OK) {
		free(ids);
		return rc;
	}
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
	free(ids);
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

static void pk_json(FILE *fp, const struct cli_opts *o, struct gen *g, const char *policy,
                    uint32_t budget, bool raw, const struct pk_cell *cells, uint32_t n_cells)
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
		        "\"peak_kv_bytes\":%llu,\"prefill_tok_s\":%.1f,\"decode_tok_s\":%.1f}",
		        i ? "," : "", c->length, c->depth, c->n, c->correct, c->correct / cn,
		        c->tokens / cn, c->kept / cn, c->all_kept, (unsigned long long)c->peak_bytes,
		        c->prefill_ms > 0 ? c->prefill_tok * 1e3 / c->prefill_ms : 0.0,
		        c->decode_ms > 0 ? c->decode_tok * 1e3 / c->decode_ms : 0.0);
	}
	fprintf(fp, "],\"n\":%u,\"correct\":%u,\"accuracy\":%.4f}\n", n, right,
	        n ? (double)right / n : 0.0);
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
	char pol[256];
	enum cli_exit rc;

	if (eval_parse_list("lengths", o->lengths ? o->lengths : "2k,4k,8k,16k,32k", 64, 1u << 22,
	                    lengths, PK_MAX_LIST, &n_len, &e) != KVS_OK ||
	    eval_parse_list("depths", o->depths ? o->depths : "10,30,50,70,90", 0, 100, depths,
	                    PK_MAX_LIST, &n_dep, &e) != KVS_OK) {
		rc = cli_usage(&cmd_eval_passkey, "%s", e.msg);
		goto out;
	}
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
	if (o->cold.on && eval_cold_open(&cold, g, o, "eval passkey", pol, &e) != KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	cells = xcalloc((size_t)n_len * n_dep, sizeof *cells);
	struct eval_progress pr;
	eval_progress_start(&pr, "passkey", (uint64_t)n_len * n_dep * o->samples);
	uint64_t done = 0, right = 0;
	fprintf(stderr, "kvscope eval passkey: %s, budget %u, %s format, seed %u%s\n", pol, budget,
	        raw ? "raw" : "chat", o->eval_seed,
	        cold.sc != NULL ? ", cold tier (a temporary database)" : "");
	for (uint32_t li = 0; li < n_len; li++) {
		uint32_t n_blocks;
		if (pk_calibrate(g, raw, lengths[li], &n_blocks, &e) != KVS_OK) {
			rc = cli_fail(&e);
			goto out;
		}
		for (uint32_t di = 0; di < n_dep; di++) {
			struct pk_cell *c = &cells[li * n_dep + di];
			c->length = lengths[li];
			c->depth = depths[di];
			for (uint32_t s = 0; s < o->samples; s++) {
				struct eval_rng r;
				eval_rng_seed(&r,
				              ((uint64_t)o->eval_seed << 32) ^ ((uint64_t)lengths[li] << 12) ^
				                      ((uint64_t)depths[di] << 24) ^ s);
				uint32_t key = 1 + (uint32_t)(eval_rng_next(&r) % 9999999u);
				bool ok;
				double kept;
				size_t n_tok;
				char *answer = NULL;
				struct gen_timing t0, t1;
				gen_timings(g, &t0);
				if (pk_sample(g, o, raw, n_blocks, depths[di], key, &cold, &ok, &kept, &n_tok,
				              &answer, &e) != KVS_OK) {
					rc = cli_fail(&e);
					goto out;
				}
				struct kv_stats ks;
				kv_cache_stats(gen_kv(g), &ks);
				gen_timings(g, &t1);
				c->n++;
				c->correct += ok;
				c->tokens += (double)n_tok;
				c->kept += kept;
				c->all_kept += kept >= 1.0;
				c->peak_bytes = KVS_MAX(c->peak_bytes, ks.bytes_peak);
				c->prefill_ms += t1.prefill_ms - t0.prefill_ms;
				c->decode_ms += t1.decode_ms - t0.decode_ms;
				c->prefill_tok += t1.n_prefilled - t0.n_prefilled;
				c->decode_tok += t1.n_decoded - t0.n_decoded;
				right += ok;
				done++;
				log_info("passkey length %u depth %u sample %u: %zu tokens, key %u, answer '%s' "
				         "(%s), needle kept %.2f",
				         lengths[li], depths[di], s, n_tok, key, answer, ok ? "right" : "wrong",
				         kept);
				free(answer);
				eval_progress(&pr, done, "len %u depth %u%%  acc %llu/%llu", lengths[li],
				              depths[di], (unsigned long long)right, (unsigned long long)done);
			}
		}
	}
	eval_progress_end(&pr);
	printf("passkey: %s, budget %u tokens, %s format, seed %u, %u sample(s) per cell\n", pol,
	       budget, raw ? "raw" : "chat", o->eval_seed, o->samples);
	if (cold.sc != NULL)
		printf("cold tier: recall %s, %llu tokens recalled over the run\n",
		       session_recall_name(o->cold.recall), (unsigned long long)cold.recalled);
	printf("%7s %6s %7s %9s %6s %8s %9s %8s\n", "length", "depth", "tokens", "right", "kept",
	       "peakMiB", "prefill/s", "decode/s");
	for (uint32_t i = 0; i < n_len * n_dep; i++)
		pk_row(stdout, &cells[i]);
	for (uint32_t li = 0; li < n_len; li++) {
		uint32_t n = 0, k = 0;
		for (uint32_t di = 0; di < n_dep; di++) {
			n += cells[li * n_dep + di].n;
			k += cells[li * n_dep + di].correct;
		}
		printf("length %u: accuracy %u/%u (%.1f %%)\n", lengths[li], k, n, n ? 100.0 * k / n : 0.0);
	}
	printf("overall: accuracy %llu/%llu (%.1f %%)\n", (unsigned long long)right,
	       (unsigned long long)done, done ? 100.0 * (double)right / (double)done : 0.0);
	if (o->json)
		pk_json(stdout, o, g, pol, budget, raw, cells, n_len * n_dep);
	fflush(stdout);
	rc = CLI_OK;
out:
	free(cells);
	eval_cold_close(&cold);
	gen_close(g);
	return rc;
}
