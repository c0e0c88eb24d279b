/*
 * cmd-eval-rps.c: `kvscope eval rps`, SirLLM's Rock-Paper-Scissors
 * preference-memory protocol under a KV retention policy.
 *
 * The user plays a biased stream drawn here from --seed: the dominant move
 * with probability 0.5, the move that beats it 0.3, the third 0.2 (the
 * statistics of SirLLM's released data files). Round 1 asks "Let's play a
 * game of Rock-Paper-Scissors. Choose one option from: (A) rock (B) paper
 * (C) scissors."; every later round reveals the user's previous move in
 * brackets: "I chose [rock]. Analyze my preferences to maximize your winning
 * rate and proceed to the next round. Choices: (A) rock (B) paper (C)
 * scissors. You choose:". Each round is one turn in the model's chat
 * template (raw format: "USER: ...\n\nASSISTANT:"); the cache is never
 * reset. The model's move is the candidate letter whose first token has the
 * largest log-probability after the prompt (SirLLM's rule (ii)); the chosen
 * letter and the end of the turn are appended to the history. As in
 * SirLLM's code, trailing spaces of the prompt move into the candidate
 * (round 1's candidates are " A", " B", " C"), and the eviction check runs
 * once per round for the whole round (prompt and answer), followed by the
 * policy's memory decay.
 *
 * Reported: win / tie / lose rates, the win rate over a sliding window of
 * 50 rounds, the model's move histogram, and how many of the bracketed past
 * moves the cache still holds (at the end, and on average over the rounds,
 * with their age). Random play wins 33.3 %; always countering the dominant
 * move wins about 50 %.
 */
#include "cli/eval.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static enum cli_exit cmd_eval_rps_exec(struct cli_opts *o);

const struct cli_cmd cmd_eval_rps = {
	.name = "eval rps",
	.usage = "[--policy P] [--kv-budget N] [--rounds N] [--dominant rock|paper|scissors] "
	         "[--format chat|raw] [--seed S] [--json] [options]",
	.help = "SirLLM's Rock-Paper-Scissors memory test under a KV retention policy and budget",
	.exec = cmd_eval_rps_exec,
	.options = OPTG_MODEL | OPTG_ENGINE | OPTG_KV | OPTG_EVAL | OPTG_RPS,
};

#define RPS_DEFAULT_BUDGET 256
#define RPS_WINDOW 50

static const char *const rps_moves[] = { "rock", "paper", "scissors" };
static const char *const rps_letters[] = { "A", "B", "C" };

/* The move that beats m (paper beats rock, scissors paper, rock scissors). */
static int rps_beats(int m)
{
	return (m + 1) % 3;
}

/* +1 win, 0 tie, -1 lose for the model playing a against the user's u. */
static int rps_outcome(int a, int u)
{
	return a == u ? 0 : a == rps_beats(u) ? 1 : -1;
}

/* The user's move: dominant 0.5, the one beating it 0.3, the other 0.2. */
static int rps_user_move(struct eval_rng *r, int dom)
{
	double x = eval_rng_unit(r);
	if (x < 0.5)
		return dom;
	if (x < 0.8)
		return rps_beats(dom);
	return rps_beats(rps_beats(dom));
}

struct rps_round {
	int32_t first, last; /* original positions of the bracketed move's tokens, -1 none */
};

/* Token ids of one round's prompt (the turn up to the answer) and of each
 * candidate continuation (answer + end of turn). */
static int rps_tokens(struct gen *g, bool raw, const char *question, int32_t **ids, size_t *n,
                      int32_t *cand_ids[3], size_t cand_n[3], struct err *e)
{
	const struct vocab *v = gen_vocab(g);
	const struct chat_template *ct = gen_chat(g, NULL); /* chat format: the caller checked */
	size_t cap = 0;
	int rc;
	/* trailing spaces move into the continuation, as SirLLM's _encode_pair does */
	size_t ql = strlen(question), sp = 0;
	while (sp < ql && question[ql - 1 - sp] == ' ')
		sp++;
	char *q = xstrndup(question, ql - sp);
	*ids = NULL;
	*n = 0;
	if (raw) {
		char *t = xasprintf("USER: %s\n\nASSISTANT:", q);
		rc = vocab_tokenize(v, t, strlen(t), false, false, ids, n, &cap, e);
		free(t);
	} else {
		struct chat_prompt p = { 0 };
		chat_message(ct, "user", q, &p);
		chat_generation_prompt(ct, &p);
		rc = chat_tokenize(v, &p, ids, n, &cap, e);
		chat_prompt_free(&p);
	}
	free(q);
	for (int c = 0; c < 3 && rc == KVS_OK; c++) {
		size_t ccap = 0;
		/* raw: the space after "ASSISTANT:" is the moved trailing space */
		char *t = xasprintf("%*s%s", raw ? 1 : (int)sp, "", rps_letters[c]);
		cand_ids[c] = NULL;
		cand_n[c] = 0;
		rc = vocab_tokenize(v, t, strlen(t), false, false, &cand_ids[c], &cand_n[c], &ccap, e);
		free(t);
		if (rc == KVS_OK && !raw) {
			struct chat_prompt p = { 0 };
			chat_reply_end(ct, &p);
			int32_t eot = vocab_eot(v) >= 0 ? vocab_eot(v) : vocab_eos(v);
			if (eot >= 0) {
				cand_ids[c] = xreallocarray(cand_ids[c], cand_n[c] + 1, sizeof(int32_t));
				cand_ids[c][cand_n[c]++] = eot;
				ccap = cand_n[c];
			}
			rc = chat_tokenize(v, &p, &cand_ids[c], &cand_n[c], &ccap, e);
			chat_prompt_free(&p);
		} else if (rc == KVS_OK) {
			char *nl = xstrdup("\n");
			rc = vocab_tokenize(v, nl, 1, false, false, &cand_ids[c], &cand_n[c], &ccap, e);
			free(nl);
		}
		if (rc == KVS_OK && cand_n[c] == 0)
			rc = err_set(e, KVS_EFORMAT, "candidate '%s' has no tokens", rps_letters[c]);
	}
	return rc;
}

/* Original positions of the tokens of "[move]" in a round fed at base. */
static struct rps_round rps_locate(struct gen *g, const int32_t *ids, size_t n, int32_t base,
                                   const char *move)
{
	struct rps_round r = { -1, -1 };
	char want[32];
	snprintf(want, sizeof want, "[%s]", move);
	/* the tokens overlapping the move word (inside the brackets) */
	if (eval_find_tokens(gen_vocab(g), ids, n, want, 1, 1, &r.first, &r.last)) {
		r.first += base;
		r.last += base;
	}
	return r;
}

/* Whether every token of round r's move is still cached. */
static bool rps_held(const struct kv_cache *kv, const struct rps_round *r)
{
	if (r->first < 0)
		return false;
	for (int32_t p = r->first; p <= r->last; p++)
		if (kv_cache_find(kv, p) < 0)
			return false;
	return true;
}

struct rps_result {
	uint32_t rounds, win, tie, lose;
	uint32_t hist[3]; /* the model's moves */
	uint32_t user_hist[3];
	double held_mean; /* mean over rounds of (moves held / moves revealed) */
	uint32_t held_end, revealed_end;
	uint32_t age_hist[5]; /* held moves at the end by age: 1-5, 6-20, 21-50, 51-100, >100 */
	double p_mean[3];     /* mean probability of A, B, C renormalised among the three */
	float *curve;         /* (rounds) win rate over the last RPS_WINDOW rounds */
	double ms;
	uint64_t tokens;
};

static void rps_json(FILE *fp, struct gen *g, const char *pol, uint32_t budget, bool raw,
                     uint32_t seed, int dom, const struct rps_result *r)
{
	double n = r->rounds ? r->rounds : 1;
	eval_json_head(fp, "rps", g, pol, budget, raw, seed);
	fprintf(fp,
	        ",\"dominant\":\"%s\",\"rounds\":%u,"
	        "\"win\":%u,\"tie\":%u,\"lose\":%u,\"win_rate\":%.4f,\"tie_rate\":%.4f,"
	        "\"lose_rate\":%.4f,\"model_moves\":{\"rock\":%u,\"paper\":%u,\"scissors\":%u},"
	        "\"user_moves\":{\"rock\":%u,\"paper\":%u,\"scissors\":%u},"
	        "\"p_mean\":{\"A\":%.4f,\"B\":%.4f,\"C\":%.4f},"
	        "\"moves_held_end\":%u,\"moves_revealed_end\":%u,\"moves_held_mean_share\":%.4f,"
	        "\"held_age_hist\":{\"1-5\":%u,\"6-20\":%u,\"21-50\":%u,\"51-100\":%u,\">100\":%u},"
	        "\"tokens\":%llu,\"seconds\":%.1f,\"win_curve\":[",
	        rps_moves[dom], r->rounds, r->win, r->tie, r->lose, r->win / n, r->tie / n, r->lose / n,
	        r->hist[0], r->hist[1], r->hist[2], r->user_hist[0], r->user_hist[1], r->user_hist[2],
	        r->p_mean[0], r->p_mean[1], r->p_mean[2], r->held_end, r->revealed_end, r->held_mean,
	        r->age_hist[0], r->age_hist[1], r->age_hist[2], r->age_hist[3], r->age_hist[4],
	        (unsigned long long)r->tokens, r->ms / 1e3);
	for (uint32_t i = 0; i < r->rounds; i++)
		fprintf(fp, i ? ",%.3f" : "%.3f", (double)r->curve[i]);
	fprintf(fp, "]}\n");
}

/* Whether --policy sets the policy's lambda itself. */
static bool rps_lambda_given(const struct cli_opts *o)
{
	return o->policy_spec != NULL && strstr(o->policy_spec, "lambda=") != NULL;
}

static enum cli_exit cmd_eval_rps_exec(struct cli_opts *o)
{
	struct gen *g = NULL;
	struct err e;
	struct rps_round *moves = NULL;
	struct rps_result res = { 0 };
	int8_t *outcome = NULL;
	char pol[256];
	enum cli_exit rc;
	int st = KVS_OK, dom = 0;

	if (o->dominant != NULL) {
		dom = -1;
		for (int m = 0; m < 3; m++)
			if (strcmp(o->dominant, rps_moves[m]) == 0)
				dom = m;
		if (dom < 0) {
			rc = cli_usage(&cmd_eval_rps, "--dominant: '%s', expected rock, paper or scissors",
			               o->dominant);
			goto out;
		}
	}
	bool raw = o->eval_raw;
	/* SirLLM's README runs RPS with decay 0.9 */
	if (strcmp(kv_policy_name(&o->gen.kv.policy), "sirllm") == 0 && !rps_lambda_given(o))
		kv_policy_set(&o->gen.kv.policy, "lambda", "0.9", NULL);
	uint32_t budget;
	rc = eval_open(o, 64 + o->rounds * 64, RPS_DEFAULT_BUDGET, &g, pol, sizeof pol, &budget);
	if (rc != CLI_OK)
		goto out;
	fprintf(stderr, "kvscope eval rps: %s, budget %u, %s format, dominant %s, seed %u\n", pol,
	        budget, raw ? "raw" : "chat", rps_moves[dom], o->eval_seed);
	moves = xcalloc(o->rounds, sizeof *moves);
	outcome = xcalloc(o->rounds, 1);
	res.curve = xcalloc(o->rounds, sizeof *res.curve);
	struct eval_rng rng;
	eval_rng_seed(&rng, o->eval_seed);
	struct eval_progress pr;
	eval_progress_start(&pr, "rps", o->rounds);
	double t0 = clock_now_ms();
	/* the system turn (the template's default) opens the game */
	if (!raw && eval_feed_system(g, &e) != KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	int prev = -1;
	double held_sum = 0;
	for (uint32_t r = 0; r < o->rounds; r++) {
		char *question;
		if (prev < 0)
			question = xstrdup("Let's play a game of Rock-Paper-Scissors. Choose one option "
			                   "from: (A) rock (B) paper (C) scissors. ");
		else
			question = xasprintf("I chose [%s]. Analyze my preferences to maximize your winning "
			                     "rate and proceed to the next round. Choices: (A) rock (B) paper "
			                     "(C) scissors. You choose:",
			                     rps_moves[prev]);
		int32_t *ids = NULL, *cand[3] = { NULL, NULL, NULL };
		size_t n = 0, cn[3] = { 0, 0, 0 };
		st = rps_tokens(g, raw, question, &ids, &n, cand, cn, &e);
		free(question);
		int32_t base = kv_cache_next_pos(gen_kv(g));
		if (st == KVS_OK)
			st = gen_begin_turn(g, KV_ROLE_USER, n + cn[0], &e);
		if (st == KVS_OK) {
			gen_set_role(g, KV_ROLE_USER);
			st = gen_feed(g, ids, n, &e);
		}
		int pick = 0;
		if (st == KVS_OK) {
			if (prev >= 0)
				moves[r - 1] = rps_locate(g, ids, n, base, rps_moves[prev]);
			/* first-token log-probability: the same softmax, so compare logits */
			const float *lg = gen_logits(g);
			for (int c = 1; c < 3; c++)
				if (lg[cand[c][0]] > lg[cand[pick][0]])
					pick = c;
			/* the three candidates' probabilities, renormalised among them */
			double z = 0, pr3[3];
			for (int c = 0; c < 3; c++)
				z += pr3[c] = exp((double)lg[cand[c][0]] - lg[cand[pick][0]]);
			for (int c = 0; c < 3; c++)
				res.p_mean[c] += pr3[c] / z / o->rounds;
			gen_set_role(g, KV_ROLE_ASSISTANT);
			st = gen_feed(g, cand[pick], cn[pick], &e);
		}
		free(ids);
		for (int c = 0; c < 3; c++)
			free(cand[c]);
		if (st != KVS_OK) {
			rc = cli_fail(&e);
			goto out;
		}
		int user = rps_user_move(&rng, dom);
		int out_c = rps_outcome(pick, user);
		outcome[r] = (int8_t)out_c;
		res.win += out_c > 0;
		res.tie += out_c == 0;
		res.lose += out_c < 0;
		res.hist[pick]++;
		res.user_hist[user]++;
		uint32_t w0 = r + 1 > RPS_WINDOW ? r + 1 - RPS_WINDOW : 0, wins = 0;
		for (uint32_t k = w0; k <= r; k++)
			wins += outcome[k] > 0;
		res.curve[r] = (float)wins / (float)(r + 1 - w0);
		/* bracketed moves revealed so far (rounds 0..r-1) that the cache holds */
		if (r > 0) {
			uint32_t held = 0;
			for (uint32_t k = 0; k < r; k++)
				held += rps_held(gen_kv(g), &moves[k]);
			held_sum += (double)held / r;
		}
		prev = user;
		eval_progress(&pr, r + 1, "win %.1f%% tie %.1f%%  KV %u/%u", 100.0 * res.win / (r + 1),
		              100.0 * res.tie / (r + 1), kv_cache_n(gen_kv(g)), budget);
	}
	eval_progress_end(&pr);
	res.rounds = o->rounds;
	res.ms = clock_now_ms() - t0;
	res.tokens = (uint64_t)kv_cache_next_pos(gen_kv(g));
	res.held_mean = o->rounds > 1 ? held_sum / (o->rounds - 1) : 0;
	res.revealed_end = o->rounds > 0 ? o->rounds - 1 : 0;
	for (uint32_t k = 0; k + 1 < o->rounds; k++)
		if (rps_held(gen_kv(g), &moves[k])) {
			uint32_t age = o->rounds - 1 - k;
			res.held_end++;
			res.age_hist[age <= 5 ? 0 : age <= 20 ? 1 : age <= 50 ? 2 : age <= 100 ? 3 : 4]++;
		}
	double n = res.rounds ? res.rounds : 1;
	printf("rps: %s, budget %u tokens, %s format, dominant %s, seed %u, %u rounds (%llu tokens, "
	       "%.0f s)\n",
	       pol, budget, raw ? "raw" : "chat", rps_moves[dom], o->eval_seed, res.rounds,
	       (unsigned long long)res.tokens, res.ms / 1e3);
	printf("win %.1f %%  tie %.1f %%  lose %.1f %%  (random 33.3 %%; always countering the "
	       "dominant move: about 50 %%)\n",
	       100.0 * res.win / n, 100.0 * res.tie / n, 100.0 * res.lose / n);
	printf("model moves: rock %u, paper %u, scissors %u; user moves: rock %u, paper %u, scissors "
	       "%u\n",
	       res.hist[0], res.hist[1], res.hist[2], res.user_hist[0], res.user_hist[1],
	       res.user_hist[2]);
	printf("mean probability among the three letters: A %.3f, B %.3f, C %.3f\n", res.p_mean[0],
	       res.p_mean[1], res.p_mean[2]);
	printf("bracketed moves held: %u of %u at the end (ages 1-5: %u, 6-20: %u, 21-50: %u, "
	       "51-100: %u, >100: %u); %.1f %% on average over the rounds\n",
	       res.held_end, res.revealed_end, res.age_hist[0], res.age_hist[1], res.age_hist[2],
	       res.age_hist[3], res.age_hist[4], 100.0 * res.held_mean);
	printf("win rate over the last %d rounds at rounds", RPS_WINDOW);
	for (uint32_t k = RPS_WINDOW; k <= res.rounds; k += RPS_WINDOW)
		printf(" %u: %.0f %%", k, 100.0 * res.curve[k - 1]);
	printf("\n");
	if (o->json)
		rps_json(stdout, g, pol, budget, raw, o->eval_seed, dom, &res);
	fflush(stdout);
	rc = CLI_OK;
out:
	free(moves);
	free(outcome);
	free(res.curve);
	gen_close(g);
	return rc;
}
