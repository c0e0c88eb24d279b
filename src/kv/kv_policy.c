/*
 * kv_policy.c: the retention-policy table and the policies' selections.
 *
 * One row per policy: its name, one line of help, its parameters (with the
 * defaults of the papers' released code), where its score comes from, how
 * it assigns positions, and a selection function. A selection sees the
 * unpinned cached tokens in cache order and marks which stay (kv-int.h);
 * the cache does the rest. The budget arithmetic follows the papers' code:
 *
 *   streaming  keep [0, S) and the most recent target - S
 *              (StreamingLLM evict_for_space: [0,S) + [n-W+m, n), W = B-S)
 *   window     the most recent target
 *   sirllm     K = E - m with E = B - S - W; keep {first S} u TopK(e, K)
 *              over all candidates (sinks included, ties: the older), then
 *              back-fill from the newest (down to index 1) up to target
 *              (SirLLM evict_for_space_token_entropy)
 *   lminfinite keep the first G (global branch) and the most recent
 *              target - G (local branch); positions stay original and the
 *              globals sit at most `cap` positions from the query
 *   h2o        keep the most recent target - H, then the H heaviest hitters
 *              among the rest by attention accumulated over layers and KV
 *              heads (each KV head's score sums its query heads)
 *   snapkv     keep the first S, then the top by the votes of the prompt's
 *              last W queries (kv_vote.c; tokens not yet voted on first,
 *              the window itself is incoming and kept): attention
 *              summed over the window and each KV head's query heads,
 *              max-pooled along the cache (kernel 7), summed over layers
 *              and KV heads (one keep-set for all heads); heads=1 keeps
 *              the top of each (layer, KV head)'s own votes, as the
 *              paper's code selects per head
 *   kvzip      keep the first S, then the top by the max attention a
 *              re-read of the context received after a "repeat the
 *              previous context" prompt (kv_zip.c; tokens not yet scored
 *              first), a token scored by its max over (layer, KV head);
 *              heads=1 keeps per (layer, KV head) the top of its own;
 *              reread=all re-reads the whole cache each turn (the paper's
 *              rule), new only what came since
 *
 * carry > 0 (snapkv, kvzip; default 0, the papers' rule) lets the scores
 * outlive the vote or re-read that made them: each new one adds to the
 * old times carry (kv_vote.c, kv_zip.c), as SirLLM decays its entropies
 * per turn, so a fact that the questions of later turns never ask about
 * keeps what its own turns gave it instead of losing every later vote.
 *
 * heads=1 (snapkv, h2o, kvzip) gives each (layer, KV head) its
 * own keep-set of at most target tokens (kv_heads.c): the selection runs
 * once per head over the candidates that head still keeps, scored by its
 * own row of acc; the cache holds the union (at most spread x budget
 * tokens) and counts bytes per kept (token, layer, KV head) entry, so the
 * bytes stay within the budget's. store=heads (kv_store.c) gives each
 * head cells of its own, so the union's spread costs no memory.
 * alloc=adaptive (snapkv, kvzip; kv_alloc.c) replaces the uniform target
 * with Ada-KV's: a layer's heads share the sum of their targets by one
 * ranking of their scores, each first keeping floor x its own (0.2).
 *
 * where B is the budget, m the incoming tokens and target = B - m (less the
 * pinned tokens).
 *
 * With spans on (the span option every policy takes, default word;
 * kv_span.c), the three helpers below (the first S, the most recent, the
 * top by score) mark whole spans: top-k ranks spans by the max (or mean) of
 * their tokens' scores and skips a span larger than what is left of k; the
 * sinks and the recent window end at the first span that does not fit. A
 * selection then keeps at most target, fewer by less than a span where a
 * span did not fit; with span=off every span is one token and the rules
 * above hold exactly as the papers' code has them.
 */
#include "kv/kv-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------- parameters */

static const char *const policy_sirllm_modes[] = { "paper", "compat", NULL };
static const char *const policy_pos_modes[] = { "original", "compact", NULL };
static const char *const policy_stores[] = { "slots", "heads", NULL };
static const char *const policy_zip_rereads[] = { "new", "all", NULL };
static const char *const policy_allocs[] = { "uniform", "adaptive", NULL };
static const char *const policy_ranks[] = { "sum", "max", NULL };

enum { STREAM_SINKS = 0 };
static const struct kv_param_def policy_streaming_params[] = {
	{ "sinks", 4, 0, 1 << 20, NULL, true, "attention-sink tokens kept at the start (paper: 4)" },
};

enum { SIR_MODE = 0, SIR_SINKS, SIR_RECENT, SIR_LAMBDA };
static const struct kv_param_def policy_sirllm_params[] = {
	{ "mode", 0, 0, 1, policy_sirllm_modes, true,
	  "token entropy: paper (-log p(x_i|x_<i)) or compat (the released code's scoring)" },
	{ "sinks", 4, 0, 1 << 20, NULL, true, "start tokens always kept (code: start_size 4)" },
	{ "recent", 0, 0, 1 << 20, NULL, true,
	  "recent window W; key tokens E = budget - sinks - W (README commands: 0)" },
	{ "lambda", 1.0f, 0, 1, NULL, false,
	  "memory decay per turn (code default 1.0; README: RPS 0.9, DailyDialog 0.7, Grocery 1.0)" },
};

enum { LMI_GLOBAL = 0, LMI_CAP, LMI_LOCAL, LMI_TOPK, LMI_TOPK_LAYER, LMI_TOPK_AT };
static const struct kv_param_def policy_lmi_params[] = {
	{ "global", 10, 0, 1 << 20, NULL, true,
	  "global branch n_global (passkey/extreme-length commands: 10; code default 100)" },
	{ "cap", 0, 0, 1 << 30, NULL, true,
	  "distance cap d for the global tokens (0: the model's training context L)" },
	{ "local", 0, 0, 1 << 30, NULL, true,
	  "local branch n_local (0: all the budget after the globals; smaller keeps a middle)" },
	{ "topk", 0, 0, 1 << 20, NULL, true,
	  "middle tokens each head may attend from the last query (passkey commands: 5)" },
	{ "topk_layer", 4, 0, 1 << 20, NULL, true, "first layer of the top-k middle (code: 4)" },
	{ "topk_at", 2048, 1, 1 << 30, NULL, true,
	  "distance the middle tokens are scored and attended at (code: 2048)" },
};

/* The per-head parameters' help (snapkv, h2o, kvzip). */
#define POLICY_HEADS_HELP \
	"1: a keep-set per (layer, KV head), scored by its own attention; 0: one for all heads"
#define POLICY_STORE_HELP                                                                   \
	"per-head keep-sets: slots (the engine holds every head's K/V of each token some head " \
	"keeps) or heads (each head only its own entries, in budget + scratch rows per layer "  \
	"that the layer's heads share, whatever spread is)"
#define POLICY_CARRY_HELP                                                                          \
	"what the scores of earlier votes keep at the next one: 0 the paper's rule; > 0 they add up, " \
	"the old ones times carry first (1: never forget, as sirllm's lambda 1)"
#define POLICY_ALLOC_HELP                                                                       \
	"per-head keep-sets: every (layer, KV head) keeps the same number (uniform) or a layer's "  \
	"heads share its budget by their scores (adaptive: Ada-KV's rule, the layer's top entries " \
	"over all its heads; use with store=heads and spread > 1)"
#define POLICY_FLOOR_HELP \
	"alloc=adaptive: the share of the uniform budget every head keeps first (Ada-KV: 0.2)"
#define POLICY_SPREAD_HELP                                                                  \
	"per-head keep-sets: the tokens some head keeps (the engine holds their K/V for every " \
	"head) at most spread x budget; 1 keeps the held bytes within the budget's"

enum { H2O_HEAVY = 0, H2O_POS, H2O_HEADS, H2O_SPREAD, H2O_STORE };
static const struct kv_param_def policy_h2o_params[] = {
	{ "heavy", 0.5f, 0, 1, NULL, false,
	  "heavy-hitter share of the budget (rest: recent window; 0.5 = B/2 + B/2)" },
	{ "pos", 0, 0, 1, policy_pos_modes, true,
	  "positions: original (paper real-drop code) or compact (its streaming variant)" },
	{ "heads", 0, 0, 1, NULL, true, POLICY_HEADS_HELP " (paper code: per head)" },
	{ "spread", 1, 1, 64, NULL, true, POLICY_SPREAD_HELP },
	{ "store", 0, 0, 1, policy_stores, true, POLICY_STORE_HELP },
};

enum {
	SNAP_WINDOW = 0,
	SNAP_KERNEL,
	SNAP_SINKS,
	SNAP_POS,
	SNAP_HEADS,
	SNAP_SPREAD,
	SNAP_STORE,
	SNAP_CARRY,
	SNAP_ALLOC,
	SNAP_FLOOR,
	SNAP_RANK
};
static const struct kv_param_def policy_snapkv_params[] = {
	{ "window", 32, 1, 1024, NULL, true,
	  "observation window: the prompt's last W queries vote (code: window_size 32)" },
	{ "kernel", 7, 1, 63, NULL, true, "max-pooling kernel over the votes, odd (code: 7)" },
	{ "sinks", 4, 0, 1 << 20, NULL, true, "start tokens always kept" },
	{ "pos", 0, 0, 1, policy_pos_modes, true,
	  "positions: original (the code keeps the rotated keys) or compact" },
	{ "heads", 0, 0, 1, NULL, true, POLICY_HEADS_HELP " (paper code: per head)" },
	{ "spread", 1, 1, 64, NULL, true, POLICY_SPREAD_HELP },
	{ "store", 0, 0, 1, policy_stores, true, POLICY_STORE_HELP },
	{ "carry", 0, 0, 1, NULL, false, POLICY_CARRY_HELP " (paper: each vote replaces the last)" },
	{ "alloc", 0, 0, 1, policy_allocs, true, POLICY_ALLOC_HELP },
	{ "floor", 0.2f, 0, 1, NULL, false, POLICY_FLOOR_HELP },
	{ "rank", 0, 0, 1, policy_ranks, true,
	  "one set (heads=0): a token's score, its votes summed over (layer, KV head) (sum: the "
	  "paper's) or the most votes any one (layer, KV head) gives it (max: a token one head "
	  "reads stays, as kvzip's one set ranks)" },
};

enum {
	ZIP_HEADS = 0,
	ZIP_SINKS,
	ZIP_CHUNK,
	ZIP_POS,
	ZIP_SPREAD,
	ZIP_STORE,
	ZIP_CARRY,
	ZIP_REREAD,
	ZIP_ALLOC,
	ZIP_FLOOR
};
static const struct kv_param_def policy_kvzip_params[] = {
	{ "heads", 0, 0, 1, NULL, true,
	  "0: one set, each token scored by its max over (layer, KV head) (the one-set form of the "
	  "paper's default: one threshold over every layer and head); 1: a keep-set per (layer, "
	  "KV head), uniform budgets (the paper's pair-uniform; at spread 1 the union keeps what "
	  "most heads nominate)" },
	{ "sinks", 4, 0, 1 << 20, NULL, true, "start tokens always kept" },
	{ "chunk", 512, 16, 1 << 16, NULL, true,
	  "context tokens re-read per scratch forward (fewer when fewer slots are free)" },
	{ "pos", 0, 0, 1, policy_pos_modes, true,
	  "positions: original (the code keeps the rotated keys) or compact" },
	{ "spread", 1, 1, 64, NULL, true, POLICY_SPREAD_HELP },
	{ "store", 0, 0, 1, policy_stores, true, POLICY_STORE_HELP },
	{ "carry", 0, 0, 1, NULL, false,
	  POLICY_CARRY_HELP " (paper: an entry keeps the most any re-read gave it)" },
	{ "reread", 0, 0, 1, policy_zip_rereads, true,
	  "what a re-read reads: the tokens fed since the last one (new: each token once, its "
	  "score from its own turn's re-read) or every cached token against the whole cache, "
	  "scores replaced (all: the paper's rule, a prefill of the cache per turn)" },
	{ "alloc", 0, 0, 1, policy_allocs, true,
	  POLICY_ALLOC_HELP " (paper: one threshold over every layer)" },
	{ "floor", 0.2f, 0, 1, NULL, false, POLICY_FLOOR_HELP },
};

/* Options every policy takes, stored in kv_policy.common (kv_cache.h). */
static const char *const policy_span_modes[] = { "word", "number", "off", NULL };
static const char *const policy_span_scores[] = { "max", "mean", NULL };
static const struct kv_param_def policy_common_params[KV_POLICY_N_COMMON] = {
	[KV_COMMON_SPAN] = { "span", KV_SPAN_WORD, 0, 2, policy_span_modes, true,
	                     "evict whole words, numbers, codes (word), only words holding a digit "
	                     "(number), or single tokens as the papers do (off)" },
	[KV_COMMON_SPAN_SCORE] = { "span_score", KV_SPAN_SCORE_MAX, 0, 1, policy_span_scores, true,
	                           "a span's score: the max or the mean of its tokens' scores" },
};

/* ------------------------------------------------------------ helpers */

struct kv_rank {
	float score;
	uint32_t i;
};

/* Descending score; ties: the older (lower index) first. */
static int policy_cmp_older(const void *a, const void *b)
{
	const struct kv_rank *x = a, *y = b;
	if (x->score != y->score)
		return x->score > y->score ? -1 : 1;
	return x->i < y->i ? -1 : x->i > y->i;
}

/* Descending score; ties: the more recent first. */
static int policy_cmp_newer(const void *a, const void *b)
{
	const struct kv_rank *x = a, *y = b;
	if (x->score != y->score)
		return x->score > y->score ? -1 : 1;
	return x->i > y->i ? -1 : x->i < y->i;
}

/* First and one-past-last candidate of candidate i's span. */
static uint32_t policy_sbeg(const struct kv_select *s, uint32_t i)
{
	return s->sbeg ? s->sbeg[i] : i;
}

static uint32_t policy_send(const struct kv_select *s, uint32_t i)
{
	return s->send ? s->send[i] : i + 1;
}

/* Candidates of [b, e) not yet kept. */
static uint32_t policy_unkept(const struct kv_select *s, uint32_t b, uint32_t e)
{
	uint32_t u = 0;
	for (uint32_t i = b; i < e; i++)
		u += !s->keep[i];
	return u;
}

/* Mark the candidates of [b, e) not yet kept. */
static void policy_mark(struct kv_select *s, uint32_t b, uint32_t e, uint8_t flag)
{
	for (uint32_t i = b; i < e; i++)
		if (!s->keep[i])
			s->keep[i] = (uint8_t)(KV_KEEP | flag);
}

/* The score of span [b, e): the max or the mean of its tokens' (NaN counts
 * as no score; a span with none scores -inf). */
static float policy_span_score(const struct kv_select *s, uint32_t b, uint32_t e)
{
	double sum = 0, best = -INFINITY;
	uint32_t k = 0;
	for (uint32_t i = b; i < e; i++) {
		float v = s->score[i];
		if (isnan(v))
			continue;
		sum += v;
		best = v > best ? v : best;
		k++;
	}
	if (k == 0)
		return -INFINITY;
	return (float)(s->span_mean ? sum / k : best);
}

/* Mark the top k of the candidates not yet kept by s->score, whole spans
 * at a time (a span that does not fit what is left of k is skipped);
 * older_first breaks ties towards the older token (SirLLM's stable sort). */
static uint32_t policy_top(struct kv_select *s, uint32_t k, uint8_t flag, bool older_first)
{
	if (k == 0)
		return 0;
	struct kv_rank *r = xmallocarray(s->n ? s->n : 1, sizeof *r);
	uint32_t nr = 0, got = 0;
	for (uint32_t i = 0; i < s->n; i = policy_send(s, i))
		if (policy_unkept(s, i, policy_send(s, i)) > 0)
			r[nr++] = (struct kv_rank){ policy_span_score(s, i, policy_send(s, i)), i };
	qsort(r, nr, sizeof *r, older_first ? policy_cmp_older : policy_cmp_newer);
	for (uint32_t j = 0; j < nr && got < k; j++) {
		uint32_t e = policy_send(s, r[j].i), u = policy_unkept(s, r[j].i, e);
		if (u <= k - got) {
			policy_mark(s, r[j].i, e, flag);
			got += u;
		}
	}
	free(r);
	return got;
}

uint32_t kv_policy_top(struct kv_select *s, uint32_t k, uint8_t flag)
{
	return policy_top(s, k, flag, false);
}

/* Mark the first k candidates (sinks), whole spans: the first span that
 * does not fit ends them. */
static uint32_t policy_first(struct kv_select *s, uint32_t k, uint8_t flag)
{
	uint32_t got = 0;
	for (uint32_t i = 0; i < s->n && got < k; i = policy_send(s, i)) {
		uint32_t e = policy_send(s, i), u = policy_unkept(s, i, e);
		if (u > k - got)
			break;
		policy_mark(s, i, e, flag);
		got += u;
	}
	return got;
}

/* Mark up to k of the newest candidates not yet kept, stopping at index
 * lowest, whole spans: the first span that does not fit (or reaches below
 * lowest) ends the window; returns how many were marked. */
static uint32_t policy_recent(struct kv_select *s, uint32_t k, uint32_t lowest)
{
	uint32_t got = 0;
	for (uint32_t i = s->n; i-- > lowest && got < k;) {
		if (s->keep[i])
			continue;
		uint32_t b = policy_sbeg(s, i), e = policy_send(s, i), u = policy_unkept(s, b, e);
		if (b < lowest || u > k - got)
			break;
		policy_mark(s, b, e, 0);
		got += u;
		i = b;
	}
	return got;
}

/* -------------------------------------------------------------- policies */

/* The table's per-policy columns: positions, sinks flagged on arrival, the
 * distance cap and the Λ-mask, each from the policy's parameters. */

static enum kv_pos_mode policy_pos_compact(const float *p)
{
	(void)p;
	return KV_POS_COMPACT;
}

static enum kv_pos_mode policy_pos_capped(const float *p)
{
	(void)p;
	return KV_POS_CAPPED;
}

static enum kv_pos_mode policy_pos_h2o(const float *p)
{
	return p[H2O_POS] >= 0.5f ? KV_POS_COMPACT : KV_POS_ORIGINAL;
}

static uint32_t policy_no_sinks(const float *p)
{
	(void)p;
	return 0;
}

static uint32_t policy_streaming_sinks(const float *p)
{
	return (uint32_t)p[STREAM_SINKS];
}

static uint32_t policy_sirllm_sinks(const float *p)
{
	return (uint32_t)p[SIR_SINKS];
}

static uint32_t policy_lmi_sinks(const float *p)
{
	return (uint32_t)p[LMI_GLOBAL];
}

static int32_t policy_no_cap(const float *p)
{
	(void)p;
	return 0;
}

static int32_t policy_lmi_cap(const float *p)
{
	return (int32_t)p[LMI_CAP];
}

static void policy_no_lambda(const float *p, int32_t *n_local, uint32_t *topk, uint32_t *from_layer,
                             int32_t *insert_at)
{
	(void)p;
	*n_local = 0;
	*topk = *from_layer = 0;
	*insert_at = 0;
}

static void policy_lmi_lambda(const float *p, int32_t *n_local, uint32_t *topk,
                              uint32_t *from_layer, int32_t *insert_at)
{
	*n_local = (int32_t)p[LMI_LOCAL];
	*topk = (uint32_t)p[LMI_TOPK];
	*from_layer = (uint32_t)p[LMI_TOPK_LAYER];
	*insert_at = (int32_t)p[LMI_TOPK_AT];
}

/* full never evicts: the cache refuses a chunk that does not fit. */
static void policy_full_select(struct kv_select *s)
{
	policy_recent(s, s->target, 0);
}

static void policy_window_select(struct kv_select *s)
{
	policy_recent(s, s->target, 0);
}

static void policy_streaming_select(struct kv_select *s)
{
	uint32_t got = policy_first(s, KVS_MIN(s->target, (uint32_t)s->p[STREAM_SINKS]), KV_FLAG_SINK);
	policy_recent(s, s->target - got, 0);
}

static void policy_sirllm_select(struct kv_select *s)
{
	uint32_t S = (uint32_t)s->p[SIR_SINKS], W = (uint32_t)s->p[SIR_RECENT];
	int64_t E = (int64_t)s->budget - S - W;
	int64_t K = E - (int64_t)s->m;
	for (uint32_t i = 0; i < s->n; i++)
		s->score[i] = s->toks[s->cand[i]].score;
	/* TopK over every candidate, sinks included; the sinks join after, so
	 * an overlap leaves room for the back-fill. */
	uint32_t got = 0;
	if (K > 0)
		got = policy_top(s, (uint32_t)KVS_MIN(K, (int64_t)s->target), KV_FLAG_KEY, true);
	for (uint32_t i = 0; i < s->n && i < S; i = policy_send(s, i)) {
		uint32_t e = policy_send(s, i), u = policy_unkept(s, i, e);
		if (u == 0) {
			for (uint32_t j = i; j < e && j < S; j++)
				s->keep[j] = KV_KEEP | KV_FLAG_SINK;
		} else if (u <= s->target - got) {
			policy_mark(s, i, e, KV_FLAG_SINK);
			got += u;
		}
	}
	if (got < s->target)
		policy_recent(s, s->target - got, 1);
}

static void policy_lmi_select(struct kv_select *s)
{
	uint32_t got = policy_first(s, KVS_MIN(s->target, (uint32_t)s->p[LMI_GLOBAL]), KV_FLAG_SINK);
	policy_recent(s, s->target - got, 0);
}

/* Candidate i's score from the per-(layer, KV head) rows acc: a per-head
 * selection's own entry; otherwise the token's score, or with sum the sum
 * of its row (H2O). A token not yet scored (+inf) stays first either way. */
static float policy_acc_score(const struct kv_select *s, uint32_t i, bool sum)
{
	const struct kv_tok *t = &s->toks[s->cand[i]];
	const float *a = s->acc ? s->acc + (size_t)s->cand[i] * s->acc_stride : NULL;
	if (!sum && (s->head1 == 0 || isinf(t->score)))
		return t->score;
	if (a == NULL)
		return 0;
	if (s->head1 > 0)
		return a[s->head1 - 1];
	double total = 0;
	for (uint32_t j = 0; j < s->acc_stride; j++)
		total += a[j];
	return (float)total;
}

static void policy_h2o_select(struct kv_select *s)
{
	uint32_t heavy = (uint32_t)lroundf(s->p[H2O_HEAVY] * (float)s->budget);
	heavy = KVS_MIN(heavy, s->target);
	/* what the window leaves (less than a span, with spans on) goes to the
	 * heavy hitters */
	heavy = s->target - policy_recent(s, s->target - heavy, 0);
	for (uint32_t i = 0; i < s->n; i++)
		s->score[i] = policy_acc_score(s, i, true);
	policy_top(s, heavy, KV_FLAG_KEY, false);
}

static bool policy_h2o_heads(const float *p)
{
	return p[H2O_HEADS] >= 0.5f;
}

static enum kv_pos_mode policy_pos_snapkv(const float *p)
{
	return p[SNAP_POS] >= 0.5f ? KV_POS_COMPACT : KV_POS_ORIGINAL;
}

static uint32_t policy_snapkv_sinks(const float *p)
{
	return (uint32_t)p[SNAP_SINKS];
}

static void policy_no_vote(const float *p, uint32_t *window, uint32_t *kernel)
{
	(void)p;
	*window = *kernel = 0;
}

static void policy_snapkv_vote(const float *p, uint32_t *window, uint32_t *kernel)
{
	*window = (uint32_t)p[SNAP_WINDOW];
	*kernel = (uint32_t)p[SNAP_KERNEL] | 1u; /* odd: centred */
}

/* SnapKV: the sinks, then the top by the window's votes. The observation
 * window is the incoming prompt's end, kept as it comes in; tokens that
 * came after the last vote score +inf (kv_cache.c), so a decode step keeps
 * the current prompt and reply first. */
static void policy_snapkv_select(struct kv_select *s)
{
	uint32_t got = policy_first(s, KVS_MIN(s->target, (uint32_t)s->p[SNAP_SINKS]), KV_FLAG_SINK);
	for (uint32_t i = 0; i < s->n; i++)
		s->score[i] = policy_acc_score(s, i, false);
	policy_top(s, s->target - got, KV_FLAG_KEY, false);
}

static bool policy_snapkv_heads(const float *p)
{
	return p[SNAP_HEADS] >= 0.5f;
}

static enum kv_pos_mode policy_pos_kvzip(const float *p)
{
	return p[ZIP_POS] >= 0.5f ? KV_POS_COMPACT : KV_POS_ORIGINAL;
}

static uint32_t policy_kvzip_sinks(const float *p)
{
	return (uint32_t)p[ZIP_SINKS];
}

static bool policy_kvzip_heads(const float *p)
{
	return p[ZIP_HEADS] >= 0.5f;
}

static uint32_t policy_kvzip_reread(const float *p)
{
	return (uint32_t)p[ZIP_CHUNK];
}

/* KVzip: the sinks, then the top by the re-read's max attention (per
 * head with heads=1); tokens that came after the last re-read score +inf
 * (kv_cache.c), so the turn being fed and the reply are kept first. */
static void policy_kvzip_select(struct kv_select *s)
{
	uint32_t got = policy_first(s, KVS_MIN(s->target, (uint32_t)s->p[ZIP_SINKS]), KV_FLAG_SINK);
	for (uint32_t i = 0; i < s->n; i++)
		s->score[i] = policy_acc_score(s, i, false);
	policy_top(s, s->target - got, KV_FLAG_KEY, false);
}

#define P(a) a, (uint32_t)KVS_ARRAY_LEN(a)

static const struct kv_policy_def policy_table[] = {
	{ "full", "no eviction: the cache refuses what does not fit the budget", NULL, 0, false,
	  KV_SCORE_NONE, -1, -1, policy_pos_compact, policy_no_sinks, policy_no_cap, policy_no_lambda,
	  policy_full_select, policy_no_vote, NULL, NULL },
	{ "window", "the most recent tokens only (sliding window, positions re-compacted)", NULL, 0,
	  true, KV_SCORE_NONE, -1, -1, policy_pos_compact, policy_no_sinks, policy_no_cap,
	  policy_no_lambda, policy_window_select, policy_no_vote, NULL, NULL },
	{ "streaming",
	  "StreamingLLM: S attention sinks + the most recent tokens, positions re-compacted",
	  P(policy_streaming_params), true, KV_SCORE_NONE, -1, -1, policy_pos_compact,
	  policy_streaming_sinks, policy_no_cap, policy_no_lambda, policy_streaming_select,
	  policy_no_vote, NULL, NULL },
	{ "sirllm", "SirLLM: sinks + key tokens by token entropy with per-turn decay, recent back-fill",
	  P(policy_sirllm_params), true, KV_SCORE_SURPRISAL, SIR_LAMBDA, SIR_MODE, policy_pos_compact,
	  policy_sirllm_sinks, policy_no_cap, policy_no_lambda, policy_sirllm_select, policy_no_vote,
	  NULL, NULL },
	{ "lminfinite",
	  "LM-Infinite: Lambda-shaped global + local branches, original positions, distance cap",
	  P(policy_lmi_params), true, KV_SCORE_NONE, -1, -1, policy_pos_capped, policy_lmi_sinks,
	  policy_lmi_cap, policy_lmi_lambda, policy_lmi_select, policy_no_vote, NULL, NULL },
	{ "h2o", "H2O: heavy hitters by accumulated attention (GQA-summed) + a recent window",
	  P(policy_h2o_params), true, KV_SCORE_ATTN, -1, -1, policy_pos_h2o, policy_no_sinks,
	  policy_no_cap, policy_no_lambda, policy_h2o_select, policy_no_vote, policy_h2o_heads, NULL },
	{ "snapkv",
	  "SnapKV: the prompt's last W queries vote (pooled attention); sinks + window + top votes",
	  P(policy_snapkv_params), true, KV_SCORE_VOTE, -1, -1, policy_pos_snapkv, policy_snapkv_sinks,
	  policy_no_cap, policy_no_lambda, policy_snapkv_select, policy_snapkv_vote,
	  policy_snapkv_heads, NULL },
	{ "kvzip",
	  "KVzip: query-agnostic; the tokens a re-read of the context attends most "
	  "(reread=new: each token once, about twice the prefill; all: the whole cache each turn)",
	  P(policy_kvzip_params), true, KV_SCORE_ZIP, -1, -1, policy_pos_kvzip, policy_kvzip_sinks,
	  policy_no_cap, policy_no_lambda, policy_kvzip_select, policy_no_vote, policy_kvzip_heads,
	  policy_kvzip_reread },
};

/* ------------------------------------------------------------ the table */

size_t kv_policy_count(void)
{
	return KVS_ARRAY_LEN(policy_table);
}

const char *kv_policy_name_at(size_t i)
{
	return i < KVS_ARRAY_LEN(policy_table) ? policy_table[i].name : NULL;
}

/* Give p the definition def and its defaults. */
static void policy_init(struct kv_policy *p, const struct kv_policy_def *def)
{
	memset(p, 0, sizeof *p);
	p->def = def;
	for (uint32_t i = 0; i < def->n_params; i++)
		p->p[i] = def->params[i].def;
	for (uint32_t i = 0; i < KV_POLICY_N_COMMON; i++)
		p->common[i] = policy_common_params[i].def;
}

void kv_policy_default(struct kv_policy *p)
{
	policy_init(p, &policy_table[0]);
}

const char *kv_policy_name(const struct kv_policy *p)
{
	return p->def ? p->def->name : "?";
}

bool kv_policy_evicts(const struct kv_policy *p)
{
	return p->def && p->def->evicts;
}

/* Tokens of KVzip's re-read prompt the scratch leaves room for: the
 * request (20 tokens on the default model); with reread=all also the later
 * chunks' request for the part starting with the previous chunk's last 8
 * tokens (28 on the default model, 79 on a vocabulary that spells the
 * request in bytes, as the tests' tiny model does). */
#define POLICY_ZIP_PROMPT 64
#define POLICY_ZIP_PROMPT_ALL 96

uint32_t kv_policy_scratch(const struct kv_policy *p, uint32_t budget)
{
	uint32_t window = 0, kernel;
	if (p->def == NULL)
		return 0;
	p->def->vote(p->p, &window, &kernel);
	uint32_t chunk = kv_policy_reread(p);
	if (chunk > 0)
		window += KVS_MIN(chunk, KVS_MAX(budget, 16u)) +
		        (kv_policy_get(p, "reread") >= 0.5f ? POLICY_ZIP_PROMPT_ALL : POLICY_ZIP_PROMPT);
	if (kv_policy_per_head(p)) {
		float spread = kv_policy_get(p, "spread");
		if (!isnan(spread) && spread > 1)
			window += (uint32_t)(spread - 1) * budget;
	}
	return window;
}

uint32_t kv_policy_rows(const struct kv_policy *p, uint32_t budget)
{
	if (!kv_policy_per_head(p) || !(kv_policy_get(p, "store") >= 0.5f))
		return 0;
	float spread = kv_policy_get(p, "spread");
	uint32_t extra = !isnan(spread) && spread > 1 ? (uint32_t)(spread - 1) * budget : 0;
	return budget + kv_policy_scratch(p, budget) - extra;
}

bool kv_policy_per_head(const struct kv_policy *p)
{
	return p->def && p->def->per_head && p->def->per_head(p->p);
}

float kv_policy_floor(const struct kv_policy *p)
{
	if (!kv_policy_per_head(p) || !(kv_policy_get(p, "alloc") >= 0.5f))
		return -1;
	return kv_policy_get(p, "floor");
}

float kv_policy_carry(const struct kv_policy *p)
{
	float carry = p->def ? kv_policy_get(p, "carry") : NAN;
	return isnan(carry) ? 0 : carry;
}

uint32_t kv_policy_reread(const struct kv_policy *p)
{
	return p->def && p->def->reread ? p->def->reread(p->p) : 0;
}

/* The parameter named key[0..len) of def, or -1; the options every policy
 * takes follow its own parameters (n_params + i). */
static int policy_param_index(const struct kv_policy_def *def, const char *key, size_t len)
{
	for (uint32_t i = 0; i < def->n_params; i++)
		if (strlen(def->params[i].name) == len && strncmp(def->params[i].name, key, len) == 0)
			return (int)i;
	for (uint32_t i = 0; i < KV_POLICY_N_COMMON; i++)
		if (strlen(policy_common_params[i].name) == len &&
		    strncmp(policy_common_params[i].name, key, len) == 0)
			return (int)(def->n_params + i);
	return -1;
}

/* The definition and the value of parameter index i (policy_param_index). */
static const struct kv_param_def *policy_param_at(struct kv_policy *p, int i, float **val)
{
	if ((uint32_t)i < p->def->n_params) {
		*val = &p->p[i];
		return &p->def->params[i];
	}
	*val = &p->common[(uint32_t)i - p->def->n_params];
	return &policy_common_params[(uint32_t)i - p->def->n_params];
}

/* Parameter names of def as "a, b, c" (or "none"), then the options every
 * policy takes, into buf. */
static const char *policy_param_names(const struct kv_policy_def *def, char *buf, size_t cap)
{
	size_t o = 0;
	buf[0] = '\0';
	for (uint32_t i = 0; i < def->n_params && o < cap; i++)
		o += (size_t)snprintf(buf + o, cap - o, "%s%s", i ? ", " : "", def->params[i].name);
	if (o < cap)
		o += (size_t)snprintf(buf + o, cap - o, "%s", def->n_params ? "" : "none");
	for (uint32_t i = 0; i < KV_POLICY_N_COMMON && o < cap; i++)
		o += (size_t)snprintf(buf + o, cap - o, "%s%s",
		                      i ? ", " : "; every policy: ", policy_common_params[i].name);
	return buf;
}

/* Set parameter key[0..klen) from val[0..vlen). */
static int policy_set_n(struct kv_policy *p, const char *key, size_t klen, const char *val,
                        size_t vlen, struct err *e)
{
	char names[256], vbuf[64];
	int i = policy_param_index(p->def, key, klen);
	if (i < 0)
		return err_set(e, KVS_EARG, "policy %s has no parameter '%.*s' (parameters: %s)",
		               p->def->name, (int)klen, key,
		               policy_param_names(p->def, names, sizeof names));
	float *dst;
	const struct kv_param_def *pd = policy_param_at(p, i, &dst);
	if (vlen == 0 || vlen >= sizeof vbuf)
		return err_set(e, KVS_EARG, "policy %s parameter %s: '%.*s' is not a value", p->def->name,
		               pd->name, (int)vlen, val);
	memcpy(vbuf, val, vlen);
	vbuf[vlen] = '\0';
	if (pd->choices != NULL) {
		for (int c = 0; pd->choices[c] != NULL; c++)
			if (strcmp(pd->choices[c], vbuf) == 0) {
				*dst = (float)c;
				return KVS_OK;
			}
		size_t o = 0;
		names[0] = '\0';
		for (int c = 0; pd->choices[c] != NULL && o < sizeof names; c++)
			o += (size_t)snprintf(names + o, sizeof names - o, "%s%s", c ? " or " : "",
			                      pd->choices[c]);
		return err_set(e, KVS_EARG, "policy %s parameter %s: '%s', expected %s", p->def->name,
		               pd->name, vbuf, names);
	}
	char *end;
	double v = strtod(vbuf, &end);
	if (*end != '\0' || !isfinite(v) || v < pd->lo || v > pd->hi || (pd->integer && v != floor(v)))
		return err_set(e, KVS_EARG, "policy %s parameter %s: '%s', expected %s in %g..%g",
		               p->def->name, pd->name, vbuf, pd->integer ? "a whole number" : "a number",
		               (double)pd->lo, (double)pd->hi);
	*dst = (float)v;
	return KVS_OK;
}

int kv_policy_set(struct kv_policy *p, const char *key, const char *val, struct err *e)
{
	return policy_set_n(p, key, strlen(key), val, strlen(val), e);
}

float kv_policy_get(const struct kv_policy *p, const char *key)
{
	int i = p->def ? policy_param_index(p->def, key, strlen(key)) : -1;
	if (i < 0)
		return NAN;
	return (uint32_t)i < p->def->n_params ? p->p[i] : p->common[(uint32_t)i - p->def->n_params];
}

int kv_policy_parse(const char *spec, struct kv_policy *out, struct err *e)
{
	size_t nlen = strcspn(spec, ": \t,");
	const struct kv_policy_def *def = NULL;
	for (size_t i = 0; i < KVS_ARRAY_LEN(policy_table); i++)
		if (strlen(policy_table[i].name) == nlen && strncmp(policy_table[i].name, spec, nlen) == 0)
			def = &policy_table[i];
	if (def == NULL) {
		char names[256];
		size_t o = 0;
		for (size_t i = 0; i < KVS_ARRAY_LEN(policy_table) && o < sizeof names; i++)
			o += (size_t)snprintf(names + o, sizeof names - o, "%s%s", i ? ", " : "",
			                      policy_table[i].name);
		return err_set(e, KVS_EARG, "policy '%.*s': expected one of %s", (int)nlen, spec, names);
	}
	struct kv_policy p;
	policy_init(&p, def);
	const char *s = spec + nlen;
	while (*s != '\0') {
		s += strspn(s, ": \t,");
		if (*s == '\0')
			break;
		size_t len = strcspn(s, " \t,");
		const char *eq = memchr(s, '=', len);
		if (eq == NULL)
			return err_set(e, KVS_EARG, "policy %s: '%.*s' is not key=value", def->name, (int)len,
			               s);
		int rc = policy_set_n(&p, s, (size_t)(eq - s), eq + 1, len - (size_t)(eq - s) - 1, e);
		if (rc != KVS_OK)
			return rc;
		s += len;
	}
	/* spread, store and alloc shape per-head keep-sets: nothing to shape in one set */
	if (def->per_head && !def->per_head(p.p) &&
	    (kv_policy_get(&p, "spread") > 1 || kv_policy_get(&p, "store") >= 0.5f ||
	     kv_policy_get(&p, "alloc") >= 0.5f))
		return err_set(e, KVS_EARG,
		               "policy %s: spread, store=heads and alloc=adaptive shape per-(layer, KV "
		               "head) keep-sets; expected heads=1 with them",
		               def->name);
	/* rank shapes one set's scores: per-head sets rank by their own rows */
	if (def->per_head && def->per_head(p.p) && kv_policy_get(&p, "rank") >= 0.5f)
		return err_set(e, KVS_EARG,
		               "policy %s: rank=max ranks one keep-set; expected heads=0 with it",
		               def->name);
	*out = p;
	return KVS_OK;
}

/* Whether a parameter is written only where it differs from its default:
 * the per-head ones, added later, so that the strings saved before (a
 * session's policy) stay the same. */
static bool policy_quiet(const struct kv_param_def *pd)
{
	return strcmp(pd->name, "heads") == 0 || strcmp(pd->name, "spread") == 0 ||
	        strcmp(pd->name, "carry") == 0 || strcmp(pd->name, "store") == 0 ||
	        strcmp(pd->name, "reread") == 0 || strcmp(pd->name, "alloc") == 0 ||
	        strcmp(pd->name, "floor") == 0 || strcmp(pd->name, "rank") == 0;
}

char *kv_policy_format(const struct kv_policy *p, char *buf, size_t cap)
{
	size_t o = (size_t)snprintf(buf, cap, "%s", kv_policy_name(p));
	for (uint32_t i = 0; p->def && i < p->def->n_params && o < cap; i++) {
		const struct kv_param_def *pd = &p->def->params[i];
		if (policy_quiet(pd) && p->p[i] == pd->def)
			continue;
		if (pd->choices)
			o += (size_t)snprintf(buf + o, cap - o, " %s=%s", pd->name, pd->choices[(int)p->p[i]]);
		else
			o += (size_t)snprintf(buf + o, cap - o, " %s=%g", pd->name, (double)p->p[i]);
	}
	/* the options every policy takes, only where they differ from the default */
	for (uint32_t i = 0; p->def && i < KV_POLICY_N_COMMON && o < cap; i++) {
		const struct kv_param_def *pd = &policy_common_params[i];
		if (p->common[i] != pd->def)
			o += (size_t)snprintf(buf + o, cap - o, " %s=%s", pd->name,
			                      pd->choices[(int)p->common[i]]);
	}
	return buf;
}

void kv_policy_help(FILE *fp)
{
	for (size_t i = 0; i < KVS_ARRAY_LEN(policy_table); i++) {
		const struct kv_policy_def *d = &policy_table[i];
		fprintf(fp, "  %-11s %s\n", d->name, d->help);
		for (uint32_t j = 0; j < d->n_params; j++) {
			const struct kv_param_def *pd = &d->params[j];
			if (pd->choices)
				fprintf(fp, "      %s=%s  %s\n", pd->name, pd->choices[(int)pd->def], pd->help);
			else
				fprintf(fp, "      %s=%g  %s\n", pd->name, (double)pd->def, pd->help);
		}
	}
	fprintf(fp, "  every policy also takes:\n");
	for (uint32_t j = 0; j < KV_POLICY_N_COMMON; j++) {
		const struct kv_param_def *pd = &policy_common_params[j];
		fprintf(fp, "      %s=%s  %s\n", pd->name, pd->choices[(int)pd->def], pd->help);
	}
}
