/*
 * kv_cache.c: the KV cache's per-token memory and eviction (checks and
 * summaries: kv_inspect.c; restoring a saved cache: kv_restore.c).
 *
 * The cache owns an array of kv_tok in cache order (original position
 * ascending) and, when the policy scores by attention, a parallel array of
 * accumulated attention per (layer, KV head). Engine slots never move: a new
 * token takes a free slot (from a stack that starts as 0, 1, 2, ...), an
 * evicted one gives its slot back (engine position -1). So with nothing
 * evicted, token i sits in slot i at
 * position i, exactly as a linear context would put it, and a policy that
 * keeps everything computes bit for bit what no policy computes.
 *
 * Every forward goes through kv_feed_chunk: make room (kv_evict) when the
 * chunk would not fit the budget, give the chunk slots and positions, list
 * the visible slots (the cached tokens in cache order, then the chunk), run
 * the engine, then record the chunk's metadata: surprisal and entropy of
 * each token from the row before it (the first token of a chunk uses the
 * previous chunk's last logits, kept here), the policy's score, the
 * attention accumulated, and the capture event.
 *
 * Positions: COMPACT gives cache index i position i (after every eviction
 * they are re-assigned 0..n-1); ORIGINAL keeps orig_pos; CAPPED keeps
 * orig_pos and has the engine score the leading sinks (LM-Infinite's global
 * branch) of each query at distance at most cap (ENGINE_CAP_DIST_CAP); on a
 * backend without that, it moves every sink to max(orig_pos, q_last - cap)
 * before each forward instead, exact for the batch's last query. Keys are
 * pre-RoPE in the engine, so all of this is exact.
 *
 * With a local window smaller than the cache (lminfinite local=N), the
 * engine also applies the Λ-mask: cached tokens beyond the local window are
 * the "middle", masked except for the top-k each head of the last query
 * picks in layers >= topk_layer (ENGINE_CAP_LAMBDA).
 *
 * H2O's accumulators take every query's attention, summed per KV head by
 * the engine (ENGINE_CAP_ATTN_KV), or the last query's where the backend
 * cannot.
 *
 * SirLLM's token entropy: paper mode scores token i with its surprisal
 * -log p(x_i | x_<i). Compat mode reproduces the released code: within a
 * turn (its chunk), s_j = -log softmax(row_j)[x_j] (the row's own token),
 * e_i = s_{i-1}, and the turn's first token gets the maximum of the s_j;
 * that needs every row's logits, so compat feeds ask for all rows.
 *
 * kv_cache_check verifies the invariants kv-int.h lists; a debug build runs
 * it after every eviction, repositioning, restore and forward and aborts on
 * a failure, so the test suites exercise it at every step.
 */
#include "kv/kv-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define KV_COMPAT_CHUNK 64 /* rows of logits per forward in compat mode */

static const char *const kv_role_names[] = { "none", "system", "user", "assistant" };
static const char *const kv_cause_names[] = { "turn", "prefill", "decode", "budget" };

const char *kv_role_name(enum kv_role r)
{
	return (unsigned)r < KVS_ARRAY_LEN(kv_role_names) ? kv_role_names[r] : "?";
}

const char *kv_evict_cause_name(enum kv_evict_cause c)
{
	return (unsigned)c < KVS_ARRAY_LEN(kv_cause_names) ? kv_cause_names[c] : "?";
}

void kv_config_default(struct kv_config *c)
{
	memset(c, 0, sizeof *c);
	kv_policy_default(&c->policy);
	engine_sparse_default(&c->sparse);
	c->n_batch = 512;
	c->summary_topk = 10;
}

/* ------------------------------------------------------------- helpers */

/* The active policy's table row. */
const struct kv_policy_def *kv_def(const struct kv_cache *c)
{
	return c->cfg.policy.def;
}

/* Whether scores follow SirLLM's released code (compat mode). */
static bool kv_compat(const struct kv_cache *c)
{
	const struct kv_policy_def *d = kv_def(c);
	return d->compat_param >= 0 && c->cfg.policy.p[d->compat_param] >= 0.5f && !c->has_scorer;
}

/* Whether the active policy lets the prompt's window vote before it evicts. */
static bool kv_votes(const struct kv_cache *c)
{
	return kv_def(c)->score == KV_SCORE_VOTE && !c->has_scorer;
}

/* Whether per-token surprisal and entropy are computed. */
bool kv_need_stats(const struct kv_cache *c)
{
	if (kv_def(c)->score == KV_SCORE_SURPRISAL)
		return true;
	if (c->cfg.token_stats == KV_TOKSTATS_ON)
		return true;
	return c->cfg.token_stats == KV_TOKSTATS_AUTO && c->cfg.capture != KV_CAPTURE_OFF;
}

/* How the active policy assigns positions. */
static enum kv_pos_mode kv_pos_mode(const struct kv_cache *c)
{
	return kv_def(c)->pos_mode(c->cfg.policy.p);
}

/* The distance cap of a CAPPED policy, in positions. */
static int32_t kv_cap(const struct kv_cache *c)
{
	int32_t cap = kv_def(c)->cap(c->cfg.policy.p);
	if (cap <= 0)
		cap = (int32_t)(c->hp->n_ctx_train ? c->hp->n_ctx_train : 2048);
	return cap;
}

/* Surprisal of targets t1 (the row's next token) and t0 (the row's own
 * token, for SirLLM's compat scoring) and the entropy of one logits row, in
 * nats; a negative target gives NaN. */
static void kv_row_stats(const float *row, uint32_t nv, int32_t t1, int32_t t0, float *s1,
                         float *s0, float *ent)
{
	bool v1 = t1 >= 0 && (uint32_t)t1 < nv, v0 = t0 >= 0 && (uint32_t)t0 < nv;
	float sv;
	engine_row_stats(row, nv, v1 ? t1 : v0 ? t0 : -1, &sv, ent);
	/* one log-partition serves both targets: s(a) - s(b) = l(b) - l(a) */
	if (s1)
		*s1 = v1 ? sv : NAN;
	if (s0)
		*s0 = !v0 ? NAN : v1 ? sv + row[t1] - row[t0] : sv;
}

/* log-sum-exp of one logits row, and its entropy in nats. */
double kv_row_lse(const float *row, uint32_t nv, float *ent)
{
	float s;
	engine_row_stats(row, nv, 0, &s, ent); /* s = lse - row[0] */
	return (double)s + row[0];
}

/* Complete ev (turn, policy, statistics) and hand it to the listener. */
void kv_emit(struct kv_cache *c, struct kv_event *ev)
{
	if (c->ev_fn == NULL)
		return;
	ev->turn = c->turn;
	ev->policy = c->has_scorer ? c->scorer.name : kv_policy_name(&c->cfg.policy);
	kv_cache_stats(c, &ev->stats);
	c->ev_fn(ev, c->ev_ud);
}

int kv_reposition(struct kv_cache *c, struct err *e)
{
	enum kv_pos_mode mode = kv_pos_mode(c);
	struct kv_pos_walk w;
	kv_pos_walk_init(c, &w);
	for (uint32_t i = 0; i < c->n; i++) {
		struct kv_tok *t = &c->toks[i];
		int32_t p = mode == KV_POS_COMPACT ? kv_pos_walk_next(c, &w, i) : t->orig_pos;
		if (p != t->pos) {
			int rc = engine_kv_set_pos(c->eng, t->slot, p, e);
			if (rc != KVS_OK)
				return rc;
			t->pos = p;
		}
	}
	return KVS_OK;
}

/* Allocate the attention accumulators (zero), their rows tagged with the
 * cached tokens they belong to. */
static void kv_acc_alloc(struct kv_cache *c)
{
	c->acc = xcalloc((size_t)c->n_ctx * c->acc_stride, sizeof *c->acc);
	c->acc_tok = xmallocarray(c->n_ctx, sizeof *c->acc_tok);
	for (uint32_t i = 0; i < c->n; i++)
		c->acc_tok[i] = c->toks[i].orig_pos;
}

/* -------------------------------------------------------- create, free */

/* Whether the backend runs sparse mode `mode` (off always). */
static bool kv_sparse_runs(const struct engine *eng, enum engine_sparse_mode mode)
{
	return mode == ENGINE_SPARSE_OFF ||
	        (engine_kv_row_map(eng) == NULL && /* not over the per-head store */
	         engine_supports(eng,
	                         ENGINE_CAP_SPARSE |
	                                 (mode == ENGINE_SPARSE_SQUEEZED ? ENGINE_CAP_SQUEEZED : 0u)));
}

/* The error of a sparse mode on a backend without it. */
static int kv_sparse_refuse(struct engine *eng, enum engine_sparse_mode mode, struct err *e)
{
	if (mode == ENGINE_SPARSE_SQUEEZED && engine_supports(eng, ENGINE_CAP_SPARSE))
		return err_set(e, KVS_EUNSUPPORTED,
		               "sparse attention: backend %s runs quest and hip, not squeezed (expected "
		               "--sparse quest or hip, or --backend cpu)",
		               engine_backend_name(eng));
	if (engine_kv_row_map(eng) != NULL)
		return err_set(e, KVS_EUNSUPPORTED,
		               "sparse attention over the per-head store (store="
		               "heads) is not built (expected --sparse off)");
	if (engine_model(eng)->hp.attn_softcap > 0)
		return err_set(e, KVS_EUNSUPPORTED,
		               "sparse attention: this model soft-caps its attention scores, which the "
		               "sparse kernels do not (expected --sparse off)");
	return err_set(
	        e, KVS_EUNSUPPORTED,
	        "sparse attention: backend %s has none (expected --sparse off, or --backend cpu)",
	        engine_backend_name(eng));
}

int kv_cache_set_sparse(struct kv_cache *c, const struct engine_sparse *s, struct err *e)
{
	if (!kv_sparse_runs(c->eng, s->mode))
		return kv_sparse_refuse(c->eng, s->mode, e);
	c->cfg.sparse = *s;
	return KVS_OK;
}

const struct engine_sparse *kv_cache_sparse(const struct kv_cache *c)
{
	return &c->cfg.sparse;
}

int kv_cache_create(struct kv_cache **out, struct engine *eng, const struct kv_config *cfg,
                    struct err *e)
{
	*out = NULL;
	uint32_t n_ctx = engine_n_ctx(eng);
	if (cfg->policy.def == NULL)
		return err_set(e, KVS_EARG, "KV cache: no retention policy given");
	if (cfg->budget > n_ctx)
		return err_set(e, KVS_EARG, "KV budget %u tokens: expected at most the context's %u slots",
		               cfg->budget, n_ctx);
	if (cfg->budget != 0 && cfg->budget < 8 && kv_policy_evicts(&cfg->policy))
		return err_set(e, KVS_EARG, "KV budget %u tokens: expected at least 8", cfg->budget);
	if (!kv_sparse_runs(eng, cfg->sparse.mode))
		return kv_sparse_refuse(eng, cfg->sparse.mode, e);
	int rc = kv_heads_refuse(eng, &cfg->policy, cfg->budget, e);
	if (rc != KVS_OK)
		return rc;
	struct kv_cache *c = xcalloc(1, sizeof *c);
	const struct model *m = engine_model(eng);
	c->eng = eng;
	c->hp = &m->hp;
	c->cfg = *cfg;
	if (c->cfg.budget == 0)
		c->cfg.budget = n_ctx;
	if (c->cfg.n_batch == 0)
		c->cfg.n_batch = 512;
	if (c->cfg.summary_topk == 0)
		c->cfg.summary_topk = 10;
	c->n_ctx = n_ctx;
	c->n_vocab = c->hp->n_vocab;
	c->acc_stride = c->hp->n_layer * c->hp->n_head_kv;
	/* sized from the context the user chose: a refusal is an error */
	bool got = true;
	size_t per_slot = 0;
#define KV_ARRAY(f) \
	(per_slot += sizeof *c->f, c->f = malloc((size_t)n_ctx * sizeof *c->f), got &= c->f != NULL)
	KV_ARRAY(toks);
	KV_ARRAY(free_slots);
	KV_ARRAY(visible);
	KV_ARRAY(bslot);
	KV_ARRAY(cand);
	KV_ARRAY(order);
	KV_ARRAY(bpos);
	KV_ARRAY(keep);
	KV_ARRAY(fscratch);
	KV_ARRAY(evicted);
	KV_ARRAY(sbeg);
	KV_ARRAY(send);
#undef KV_ARRAY
	if (!got) {
		kv_cache_free(c);
		return engine_nomem(e, n_ctx, (double)n_ctx * per_slot);
	}
	c->heads = xmallocarray((size_t)c->hp->n_layer * c->hp->n_head, sizeof *c->heads);
	c->span_cls = kv_span_classes(m->vocab);
	c->n_span_cls = vocab_n_tokens(m->vocab);
	c->logits = xmallocarray(c->n_vocab, sizeof *c->logits);
	c->bytes_per_token = engine_kv_bytes_per_slot(eng);
	if (KV_SCORE_HAS_ACC(kv_def(c)->score))
		kv_acc_alloc(c);
	kv_zip_prompt(c);
	kv_cache_clear(c);
	*out = c;
	return KVS_OK;
}

void kv_cache_free(struct kv_cache *c)
{
	if (c == NULL)
		return;
	kv_cold_end(c);
	free(c->toks);
	free(c->acc);
	free(c->acc_tok);
	free(c->free_slots);
	free(c->visible);
	free(c->bslot);
	free(c->cand);
	free(c->order);
	free(c->bpos);
	free(c->keep);
	free(c->fscratch);
	free(c->evicted);
	free(c->cold_slots);
	free(c->sbeg);
	free(c->send);
	free(c->span_cls);
	free(c->hkeep);
	free(c->zip_ids);
	free(c->zip_more);
	free(c->heads);
	free(c->logits);
	kv_sparse_free(c);
	kv_store_free(c);
	free(c);
}

void kv_cache_clear(struct kv_cache *c)
{
	engine_kv_clear(c->eng);
	c->n_clears++;
	c->n = 0;
	c->n_free = c->n_ctx;
	for (uint32_t i = 0; i < c->n_ctx; i++)
		c->free_slots[i] = c->n_ctx - 1 - i;
	c->next_pos = 0;
	c->pending_room = 0;
	c->pending_vote = false;
	c->turn = 0;
	c->role = KV_ROLE_NONE;
	c->have_logits = false;
	c->have_lse = false;
	c->last_capture_ms = -1e300;
	c->capture_next = false;
	c->turn_first = -1;
	c->turn_max = -INFINITY;
	c->prev_self = NAN;
	c->n_seen = c->n_evicted = c->step = c->bytes_peak = 0;
	c->n_evictions = c->n_fallbacks = 0;
	c->n_zip_reads = c->n_zip_tokens = 0;
	c->recall_turn = 0;
	c->recall_pos0 = 0;
	kv_heads_reset(c);
}

void kv_cache_set_events(struct kv_cache *c, kv_event_fn fn, void *ud)
{
	c->ev_fn = fn;
	c->ev_ud = ud;
}

void kv_cache_set_capture(struct kv_cache *c, enum kv_capture cap, double interval_ms)
{
	c->cfg.capture = cap;
	c->cfg.capture_interval_ms = interval_ms > 0 ? interval_ms : 0;
}

void kv_cache_capture_next(struct kv_cache *c)
{
	c->capture_next = true;
}

static int kv_evict(struct kv_cache *c, uint32_t m, enum kv_evict_cause cause, struct err *e);

void kv_cache_set_scorer(struct kv_cache *c, const struct kv_scorer *s)
{
	c->has_scorer = s != NULL && s->fn != NULL;
	if (c->has_scorer)
		c->scorer = *s;
	kv_heads_reset(c); /* a provider scores tokens: one keep-set while it is installed */
	struct err e;      /* leaving per-head keep-sets, their union may be over the budget */
	if (kv_over(c, 0) && kv_evict(c, 0, KV_EVICT_BUDGET, &e) != KVS_OK)
		log_warn("KV cache: %s", e.msg);
}

void kv_cache_set_deadline(struct kv_cache *c, double deadline_ms)
{
	c->deadline_ms = deadline_ms > 0 ? deadline_ms : 0;
}

/* ---------------------------------------------------------------- reading */

uint32_t kv_cache_n(const struct kv_cache *c)
{
	return c->n;
}

uint32_t kv_cache_budget(const struct kv_cache *c)
{
	return c->cfg.budget;
}

const struct kv_tok *kv_cache_toks(const struct kv_cache *c)
{
	return c->toks;
}

const float *kv_cache_acc(const struct kv_cache *c)
{
	return c->acc;
}

const struct kv_policy *kv_cache_policy(const struct kv_cache *c)
{
	return &c->cfg.policy;
}

struct engine *kv_cache_engine(const struct kv_cache *c)
{
	return c->eng;
}

int32_t kv_cache_next_pos(const struct kv_cache *c)
{
	return c->next_pos;
}

const float *kv_cache_logits(const struct kv_cache *c)
{
	return c->have_logits ? c->logits : NULL;
}

int32_t kv_cache_find(const struct kv_cache *c, int32_t orig_pos)
{
	uint32_t lo = 0, hi = c->n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (c->toks[mid].orig_pos < orig_pos)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < c->n && c->toks[lo].orig_pos == orig_pos ? (int32_t)lo : -1;
}

/* --------------------------------------------------------------- eviction */

/* Call the score provider; false (with why) when it fails, overruns or
 * gives a NaN, true with keep[] filled otherwise. */
static bool kv_provider_select(struct kv_cache *c, struct kv_select *s, const char **why)
{
	struct err pe;
	err_clear(&pe);
	float *all = xmallocarray(c->n ? c->n : 1, sizeof *all);
	double t0 = clock_now_ms();
	int rc = c->scorer.fn(c->scorer.ud, c->toks, c->n, s->target, all, t0 + c->scorer.budget_ms,
	                      &pe);
	double dt = clock_now_ms() - t0;
	bool ok = false;
	if (rc != KVS_OK) {
		*why = "the score provider failed";
		log_warn("score provider %s failed: %s", c->scorer.name, pe.msg);
	} else if (dt > c->scorer.budget_ms) {
		*why = "the score provider overran its time budget";
		log_warn("score provider %s took %.1f ms, over its %.1f ms budget", c->scorer.name, dt,
		         c->scorer.budget_ms);
	} else {
		ok = true;
		for (uint32_t i = 0; i < s->n; i++) {
			s->score[i] = all[s->cand[i]];
			if (isnan(s->score[i])) {
				*why = "the score provider returned NaN";
				ok = false;
				break;
			}
		}
	}
	free(all);
	if (ok) {
		memset(s->keep, 0, s->n);
		kv_policy_top(s, s->target, KV_FLAG_KEY);
	}
	return ok;
}

/* Make room for m incoming tokens: keep at most budget - m cached tokens
 * (pinned first), as the policy or the score provider chooses. */
static int kv_evict(struct kv_cache *c, uint32_t m, enum kv_evict_cause cause, struct err *e)
{
	uint32_t budget = c->cfg.budget;
	if (m > budget)
		return err_set(e, KVS_EARG, "KV cache: %u incoming tokens exceed the budget of %u", m,
		               budget);
	uint32_t target = budget - m;
	if (kv_heads_on(c) ? !kv_over(c, m) : c->n <= target)
		return KVS_OK;
	if (!kv_policy_evicts(&c->cfg.policy) && !c->has_scorer)
		return err_set(e, KVS_ERANGE,
		               "KV cache full: %u tokens cached + %u new exceed the budget of %u "
		               "(policy full never evicts; raise --kv-budget or choose another --policy)",
		               c->n, m, budget);
	/* KVzip scores what is not yet scored first (a re-read of the cache) */
	int rc = !kv_def(c)->reread || c->has_scorer
	        ? KVS_OK
	        : kv_zip_score(c, cause == KV_EVICT_TURN ? 0 : target, e);
	if (rc != KVS_OK)
		return rc;
	/* Pinned and just-recalled tokens stay (the newest when over the target). */
	uint32_t n_pinned = 0, n_cand = 0;
	for (uint32_t i = 0; i < c->n; i++)
		n_pinned += kv_protected(c, &c->toks[i]);
	uint32_t pin_skip = n_pinned > target ? n_pinned - target : 0;
	for (uint32_t i = 0; i < c->n; i++) {
		if (kv_protected(c, &c->toks[i]) && pin_skip == 0)
			continue;
		if (kv_protected(c, &c->toks[i]))
			pin_skip--;
		c->cand[n_cand++] = i;
	}
	uint32_t kept_pinned = c->n - n_cand;
	uint8_t *ckeep = c->keep; /* indexed by candidate */
	memset(ckeep, 0, n_cand);
	kv_span_find(c->span_cls, c->n_span_cls, c->toks, c->cand, n_cand,
	             (enum kv_span_mode)c->cfg.policy.common[KV_COMMON_SPAN], c->sbeg, c->send);
	struct kv_select s = {
		.toks = c->toks,
		.cand = c->cand,
		.n = n_cand,
		.acc = c->acc,
		.acc_stride = c->acc_stride,
		.m = m,
		.budget = budget,
		.target = target - kept_pinned,
		.p = c->cfg.policy.p,
		.keep = ckeep,
		.score = c->fscratch,
		.order = c->order,
		.sbeg = c->sbeg,
		.send = c->send,
		.span_mean = c->cfg.policy.common[KV_COMMON_SPAN_SCORE] >= 0.5f,
	};
	bool fallback = false;
	const char *why = NULL;
	if (c->has_scorer && !kv_provider_select(c, &s, &why)) {
		fallback = true;
		c->n_fallbacks++;
		memset(ckeep, 0, n_cand);
	}
	/* (full never gets here without a provider; as a fallback its
	 * selection keeps the most recent) */
	if (kv_heads_on(c))
		rc = kv_heads_select(c, &s, kept_pinned, e); /* per head; each keeps spans whole */
	else if (!c->has_scorer || fallback)
		kv_def(c)->select(&s);
	if (rc != KVS_OK)
		return rc;
	/* every selection helper marks whole spans */
	int64_t split = kv_heads_on(c) ? -1 : kv_span_split(&s);
	if (NEVER(split >= 0))
		return err_set(e, KVS_ESTATE,
		               "KV cache: the selection split the span of candidate %lld (cache index "
		               "%u)",
		               (long long)split, c->cand[split]);
	/* Gather: kept tokens move down, evicted ones free their slot (rows read first for cold). */
	uint32_t w = 0, ne = 0, ci = 0;
	kv_cold_begin(c, c->n - (kv_heads_on(c) ? 0 : KVS_MIN(c->n, target)));
	for (uint32_t i = 0; i < c->n; i++) {
		struct kv_tok t = c->toks[i];
		bool is_cand = ci < n_cand && c->cand[ci] == i;
		uint8_t k = is_cand ? ckeep[ci++] : (uint8_t)(KV_KEEP | t.flags);
		if (k & KV_KEEP) {
			t.flags = (uint8_t)((t.flags & (KV_FLAG_PINNED | KV_FLAG_RECALLED | KV_FLAG_DOC)) |
			                    (k & (KV_FLAG_SINK | KV_FLAG_KEY)));
			if (c->acc && w != i) {
				memmove(c->acc + (size_t)w * c->acc_stride, c->acc + (size_t)i * c->acc_stride,
				        c->acc_stride * sizeof *c->acc);
				c->acc_tok[w] = c->acc_tok[i];
			}
			c->toks[w++] = t;
		} else {
			kv_cold_save(c, ne, t.slot);
			c->evicted[ne++] = t;
			c->free_slots[c->n_free++] = t.slot;
			/* a cached token's slot is a valid slot: emptying it cannot fail */
			(void)ALWAYS(engine_kv_set_pos(c->eng, t.slot, -1, NULL) == KVS_OK);
		}
	}
	c->n = w;
	c->n_evicted += ne;
	c->n_evictions++;
	/* every selection marks at most its target, and the pinned tokens kept
	 * are at most the rest (per head: the union its slots' cap) */
	kv_heads_count(c);
	if (kv_heads_on(c))
		target = kv_slot_cap(c) - KVS_MIN(m, kv_slot_cap(c));
	if (NEVER(w > target))
		return err_set(e, KVS_ESTATE, "KV cache: %u tokens kept, over the eviction's target of %u",
		               w, target);
	rc = kv_reposition(c, e);
	if (rc != KVS_OK)
		return rc;
	kv_debug_check(c);
	kv_cold_emit(c, ne);
	struct kv_event ev = { .kind = KV_EVENT_EVICT };
	ev.cause = cause;
	ev.n_incoming = m;
	ev.n_evicted = ne;
	ev.evicted = c->evicted;
	ev.fallback = fallback;
	ev.fallback_why = why;
	kv_emit(c, &ev);
	return KVS_OK;
}

/* --------------------------------------------------------- turns, policy */

/* Multiply every score by the policy's decay factor (SirLLM, per turn). */
static void kv_decay(struct kv_cache *c)
{
	const struct kv_policy_def *d = kv_def(c);
	if (d->decay_param < 0)
		return;
	float lambda = c->cfg.policy.p[d->decay_param];
	if (lambda == 1.0f)
		return;
	for (uint32_t i = 0; i < c->n; i++)
		c->toks[i].score *= lambda;
}

int kv_cache_begin_turn(struct kv_cache *c, enum kv_role role, uint32_t m, struct err *e)
{
	c->turn++;
	c->role = role;
	c->turn_first = -1;
	c->turn_max = -INFINITY;
	c->prev_self = NAN;
	uint32_t room = KVS_MIN(m, c->cfg.budget);
	c->pending_room = 0;
	c->pending_vote = kv_votes(c) && kv_policy_carry(&c->cfg.policy) > 0;
	if (kv_over(c, room) && kv_votes(c)) {
		/* the turn's prompt votes first: its first feed evicts */
		c->pending_room = room;
	} else if (kv_over(c, room) && (kv_policy_evicts(&c->cfg.policy) || c->has_scorer)) {
		int rc = kv_evict(c, room, KV_EVICT_TURN, e);
		if (rc != KVS_OK)
			return rc;
	}
	kv_decay(c);
	struct kv_event ev = { .kind = KV_EVENT_TURN };
	ev.n_incoming = m;
	kv_emit(c, &ev);
	return KVS_OK;
}

void kv_cache_set_role(struct kv_cache *c, enum kv_role role)
{
	c->role = role;
}

/* Give the cached tokens the scores and sink flags the policy starts from. */
static void kv_rescore(struct kv_cache *c)
{
	const struct kv_policy_def *d = kv_def(c);
	uint32_t sinks = d->n_sinks(c->cfg.policy.p);
	for (uint32_t i = 0; i < c->n; i++) {
		struct kv_tok *t = &c->toks[i];
		t->flags = (uint8_t)((t->flags & (KV_FLAG_PINNED | KV_FLAG_RECALLED | KV_FLAG_DOC)) |
		                     (i < sinks ? KV_FLAG_SINK : 0));
		if (d->score == KV_SCORE_NONE)
			t->score = NAN;
		else if (d->score == KV_SCORE_SURPRISAL)
			t->score = isnan(t->surprisal) ? 0.0f : t->surprisal;
		else
			t->score = d->score == KV_SCORE_ZIP ? INFINITY : 0; /* KVzip re-reads them */
	}
	if (KV_SCORE_HAS_ACC(d->score) && c->acc == NULL)
		kv_acc_alloc(c);
	else if (KV_SCORE_HAS_ACC(d->score))
		memset(c->acc, 0, (size_t)c->n_ctx * c->acc_stride * sizeof *c->acc);
}

int kv_cache_set_policy(struct kv_cache *c, const struct kv_policy *p, struct err *e)
{
	if (p->def == NULL)
		return err_set(e, KVS_EARG, "KV cache: no retention policy given");
	int rc = kv_heads_refuse(c->eng, p, c->cfg.budget, e);
	if (rc == KVS_OK && !p->def->evicts && !c->has_scorer && c->n > c->cfg.budget)
		rc = err_set(e, KVS_ESTATE,
		             "policy %s never evicts: %u tokens are cached, over the "
		             "budget of %u (the per-head keep-sets' union)",
		             p->def->name, c->n, c->cfg.budget);
	if (rc != KVS_OK)
		return rc;
	bool same = p->def == c->cfg.policy.def;
	bool heads = kv_policy_per_head(p) != kv_heads_on(c);
	c->cfg.policy = *p;
	if (!same)
		kv_rescore(c);
	if (!same || heads)
		kv_heads_reset(c);
	rc = kv_reposition(c, e);
	/* leaving per-head keep-sets, their union may be over the budget */
	if (rc == KVS_OK && kv_over(c, 0))
		rc = kv_evict(c, 0, KV_EVICT_BUDGET, e);
	if (rc == KVS_OK)
		kv_debug_check(c);
	struct kv_event ev = { .kind = KV_EVENT_POLICY };
	kv_emit(c, &ev);
	return rc;
}

int kv_cache_set_budget(struct kv_cache *c, uint32_t budget, struct err *e)
{
	if (budget == 0 || budget > c->n_ctx)
		return err_set(e, KVS_EARG, "KV budget %u tokens: expected 1..%u (the context's slots)",
		               budget, c->n_ctx);
	if (budget < 8 && kv_policy_evicts(&c->cfg.policy))
		return err_set(e, KVS_EARG, "KV budget %u tokens: expected at least 8", budget);
	if (c->n > budget && !kv_policy_evicts(&c->cfg.policy) && !c->has_scorer)
		return err_set(e, KVS_ESTATE,
		               "KV budget %u tokens: %u are cached and policy full never evicts", budget,
		               c->n);
	int rc = kv_store_refuse(c->eng, &c->cfg.policy, budget, e);
	if (rc != KVS_OK)
		return rc;
	c->cfg.budget = budget;
	if (kv_over(c, 0))
		rc = kv_evict(c, 0, KV_EVICT_BUDGET, e);
	struct kv_event ev = { .kind = KV_EVENT_POLICY };
	kv_emit(c, &ev);
	return rc;
}

int kv_cache_pin(struct kv_cache *c, int32_t orig_pos, bool pinned, struct err *e)
{
	int32_t i = kv_cache_find(c, orig_pos);
	if (i < 0)
		return err_set(e, KVS_ENOTFOUND, "token at position %d is not in the KV cache", orig_pos);
	if (!pinned && (c->toks[i].flags & KV_FLAG_DOC))
		return err_set(e, KVS_EARG, "token at position %d is part of the pinned document",
		               orig_pos);
	if (pinned)
		c->toks[i].flags |= KV_FLAG_PINNED;
	else
		c->toks[i].flags &= (uint8_t)~KV_FLAG_PINNED;
	struct kv_event ev = { .kind = KV_EVENT_PIN };
	ev.tok = &c->toks[i];
	kv_emit(c, &ev);
	return KVS_OK;
}

/* ------------------------------------------------------------------ feeding */

/* Record the compat-mode token entropy of the token at cache index i,
 * whose own row gives self-surprisal s. */
static void kv_compat_score(struct kv_cache *c, uint32_t i, float s)
{
	struct kv_tok *t = &c->toks[i];
	float sv = isnan(s) ? 0.0f : s;
	if (c->turn_first < 0) {
		c->turn_first = t->orig_pos;
		c->turn_max = sv;
		t->score = sv;
	} else {
		t->score = isnan(c->prev_self) ? 0.0f : c->prev_self;
		if (sv > c->turn_max) {
			c->turn_max = sv;
			int32_t f = kv_cache_find(c, c->turn_first);
			if (f >= 0)
				c->toks[f].score = sv;
		}
	}
	c->prev_self = sv;
}

/* One forward of ids[0..m) (m fits the budget after eviction). */
static int kv_feed_chunk(struct kv_cache *c, const int32_t *ids, uint32_t m, bool last,
                         struct err *e)
{
	/* kv_cache_feed made room (or refused) before the chunk */
	if (NEVER(kv_over(c, m) || m > c->n_free))
		return err_set(e, KVS_ESTATE,
		               "KV cache: a chunk of %u tokens does not fit (%u cached, budget %u, "
		               "%u free slots)",
		               m, c->n, c->cfg.budget, c->n_free);
	const struct kv_policy_def *d = kv_def(c);
	enum kv_pos_mode mode = kv_pos_mode(c);
	bool stats = kv_need_stats(c), compat = kv_compat(c);
	bool attn_policy = d->score == KV_SCORE_ATTN && !c->has_scorer;
	bool capture = c->cfg.capture != KV_CAPTURE_OFF && last;
	if (capture && c->cfg.capture_interval_ms > 0) {
		double now = clock_now_ms();
		capture = c->capture_next || now - c->last_capture_ms >= c->cfg.capture_interval_ms;
		if (capture)
			c->last_capture_ms = now;
	}
	if (last)
		c->capture_next = false;
	uint32_t n = c->n;
	for (uint32_t i = 0; i < m; i++) {
		c->bslot[i] = c->free_slots[c->n_free - 1 - i];
		c->bpos[i] = mode == KV_POS_COMPACT ? (int32_t)(n + i) : c->next_pos + (int32_t)i;
	}
	uint32_t n_global = 0;
	bool engine_cap = mode == KV_POS_CAPPED && engine_supports(c->eng, ENGINE_CAP_DIST_CAP);
	if (engine_cap) {
		/* The engine caps each query's distance to the leading sinks. */
		while (n_global < n && (c->toks[n_global].flags & KV_FLAG_SINK))
			n_global++;
	} else if (mode == KV_POS_CAPPED) {
		/* Without the engine's cap: the sinks sit at most cap before the
		 * batch's last query (exact for a decode step). */
		int32_t lim = c->bpos[m - 1] - kv_cap(c);
		for (uint32_t i = 0; i < n; i++) {
			struct kv_tok *t = &c->toks[i];
			int32_t p = (t->flags & KV_FLAG_SINK) && lim > t->orig_pos ? lim : t->orig_pos;
			if (p != t->pos) {
				int rc = engine_kv_set_pos(c->eng, t->slot, p, e);
				if (rc != KVS_OK)
					return rc;
				t->pos = p;
			}
		}
	}
	struct engine_batch b = kv_batch_after_cache(c, ids, m);
	b.logits = compat         ? ENGINE_LOGITS_ALL
	        : (last || stats) ? ENGINE_LOGITS_LAST
	                          : ENGINE_LOGITS_NONE;
	b.want_surprisal = stats && !compat;
	bool attn_kv = attn_policy && engine_supports(c->eng, ENGINE_CAP_ATTN_KV);
	b.want_attn_kv = attn_kv;
	b.want_attn = capture || (attn_policy && !attn_kv);
	if (n_global > 0) {
		b.n_global = n_global;
		b.dist_cap = kv_cap(c);
	}
	if (engine_cap) {
		int32_t n_local;
		uint32_t topk, from;
		int32_t at;
		d->lambda(c->cfg.policy.p, &n_local, &topk, &from, &at);
		if (n_local > 0 && engine_supports(c->eng, ENGINE_CAP_LAMBDA)) {
			b.n_local = n_local;
			b.middle_topk = topk;
			b.middle_from_layer = from;
			b.middle_insert_at = at;
		} else if (n_local > 0 && !c->warned_lambda) {
			log_warn("backend %s has no Lambda mask: policy %s's local and topk are ignored",
			         engine_backend_name(c->eng), d->name);
			c->warned_lambda = true;
		}
	}
	capture = kv_sparse_prepare(c, &b, m, capture);
	struct engine_out o;
	int rc = engine_forward(c->eng, &b, &o, e);
	if (rc != KVS_OK)
		return rc;
	kv_sparse_after(c, &o, m);

	/* the chunk's metadata */
	uint32_t sinks = d->n_sinks(c->cfg.policy.p);
	for (uint32_t i = 0; i < m; i++) {
		struct kv_tok *t = &c->toks[n + i];
		memset(t, 0, sizeof *t);
		t->token = ids[i];
		t->orig_pos = c->next_pos + (int32_t)i;
		t->pos = c->bpos[i];
		t->slot = c->bslot[i];
		t->turn = c->turn;
		t->role = (uint8_t)c->role;
		t->flags = (uint8_t)((n + i < sinks ? KV_FLAG_SINK : 0) | c->feed_flags);
		t->surprisal = t->entropy = NAN;
		t->score = d->score == KV_SCORE_NONE || c->has_scorer ? NAN : 0.0f;
		if (KV_SCORE_LATE(d->score) && !c->has_scorer)
			t->score = INFINITY; /* no vote yet: kept before any voted token */
		t->n_heads = (uint16_t)(kv_heads_on(c) ? c->acc_stride : 0); /* every head keeps it */
		if (!stats && !compat)
			continue;
		if (i == 0 && c->have_lse) {
			/* the previous row's statistics were taken when it arrived */
			t->surprisal = (float)(c->logits_lse - c->logits[ids[0]]);
			t->entropy = c->logits_ent;
		} else if (i > 0 && !compat) {
			t->surprisal = o.surprisal[i - 1];
			t->entropy = o.entropy[i - 1];
		}
	}
	c->n_free -= m;
	c->n = n + m;
	if (compat) {
		/* one pass per row: the next token's surprisal and entropy, and
		 * the row's own token for the compat score */
		for (uint32_t i = 0; i < m; i++) {
			struct kv_tok *nx = i + 1 < m ? &c->toks[n + i + 1] : NULL;
			float s0;
			kv_row_stats(o.logits + (size_t)i * c->n_vocab, c->n_vocab, nx ? ids[i + 1] : -1,
			             ids[i], nx ? &nx->surprisal : NULL, &s0, nx ? &nx->entropy : NULL);
			kv_compat_score(c, n + i, s0);
		}
	} else if (d->score == KV_SCORE_SURPRISAL && !c->has_scorer) {
		for (uint32_t i = 0; i < m; i++) {
			struct kv_tok *t = &c->toks[n + i];
			t->score = isnan(t->surprisal) ? 0.0f : t->surprisal;
		}
	}
	c->have_lse = false;
	if (o.logits != NULL) {
		uint32_t row = o.n_rows - 1;
		memcpy(c->logits, o.logits + (size_t)row * c->n_vocab, c->n_vocab * sizeof(float));
		c->have_logits = true;
		if (stats || capture) {
			/* one pass: the next token's surprisal and entropy, and the
			 * step event's next_entropy, come from these */
			c->logits_lse = kv_row_lse(c->logits, c->n_vocab, &c->logits_ent);
			c->have_lse = true;
		}
	} else {
		c->have_logits = false;
	}
	for (uint32_t i = 0; c->acc != NULL && i < m; i++)
		c->acc_tok[n + i] = c->toks[n + i].orig_pos;
	if (c->acc != NULL)
		memset(c->acc + (size_t)n * c->acc_stride, 0, (size_t)m * c->acc_stride * sizeof *c->acc);
	/* an attention policy got its accumulators when it was chosen */
	if (attn_policy && ALWAYS(c->acc != NULL))
		kv_accumulate(c, &o);
	c->next_pos += (int32_t)m;
	c->n_seen += m;
	c->step++;
	uint64_t bytes = kv_bytes(c);
	if (bytes > c->bytes_peak)
		c->bytes_peak = bytes;
	kv_debug_check(c);
	if (capture)
		kv_capture_step(c, &o);
	return KVS_OK;
}

int kv_cache_feed(struct kv_cache *c, const int32_t *ids, uint32_t n, struct err *e)
{
	if (n == 0)
		return KVS_OK;
	for (uint32_t i = 0; i < n; i++)
		if (ids[i] < 0 || (uint32_t)ids[i] >= c->n_vocab)
			return err_set(e, KVS_EARG, "token id %d at index %u is outside the vocabulary (0..%u)",
			               ids[i], i, c->n_vocab - 1);
	bool evicts = kv_policy_evicts(&c->cfg.policy) || c->has_scorer;
	uint32_t chunk = c->cfg.n_batch;
	if (evicts)
		chunk = KVS_MIN(chunk, KVS_MAX(1u, c->cfg.budget / 4));
	if (kv_compat(c))
		chunk = KVS_MIN(chunk, (uint32_t)KV_COMPAT_CHUNK);
	chunk = KVS_MIN(chunk, c->cfg.budget);
	if (!evicts && kv_over(c, n))
		return err_set(e, KVS_ERANGE,
		               "context overflow: %u tokens cached + %u new exceed the KV budget of %u "
		               "tokens (policy full never evicts; raise --kv-budget or --ctx, or choose "
		               "another --policy)",
		               c->n, n, c->cfg.budget);
	/* a voting policy's deferred turn eviction: the end of this feed votes */
	uint32_t room = c->pending_room, win = KVS_MIN(n, c->cfg.budget);
	bool evict = room > 0 && kv_over(c, room), vote = evict || c->pending_vote;
	c->pending_room = 0;
	c->pending_vote = false; /* with carry every turn's prompt votes, evicting or not */
	if (vote) {
		int rc = kv_vote(c, ids + (n - win), win, e);
		if (rc == KVS_OK && evict)
			rc = kv_evict(c, room, KV_EVICT_TURN, e);
		if (rc != KVS_OK)
			return rc;
	}
	for (uint32_t done = 0; done < n;) {
		uint32_t m = KVS_MIN(chunk, n - done);
		if (c->deadline_ms > 0 && clock_now_ms() > c->deadline_ms) {
			c->have_logits = false; /* none of the last token fed */
			return err_set(e, KVS_ESTATE, "stopped at the caller's deadline after %u of %u tokens",
			               done, n);
		}
		if (kv_over(c, m)) {
			/* a prefill's end votes (a decode step evicts by the last votes) */
			int rc = n > 1 && kv_votes(c) ? kv_vote(c, ids + (n - win), win, e) : KVS_OK;
			if (rc == KVS_OK)
				rc = kv_evict(c, m, n == 1 ? KV_EVICT_DECODE : KV_EVICT_PREFILL, e);
			if (rc != KVS_OK)
				return rc;
		}
		int rc = kv_feed_chunk(c, ids + done, m, done + m == n, e);
		if (rc != KVS_OK)
			return rc;
		done += m;
	}
	return KVS_OK;
}
