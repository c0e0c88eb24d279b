/*
 * kv-int.h: the kv layer's insides, shared by kv_cache.c and kv_policy.c and
 * by the layer's own unit test (never by another layer): the cache's state,
 * the shape of a policy-table row and what a policy's selection is given.
 *
 * A selection runs on the candidates, the cached tokens that are not pinned,
 * in cache order. It marks at most target of them to keep, with the flag
 * saying why (sink, key token; none for recency), and never looks at or
 * changes anything else: the cache does the gathering, the positions and
 * the events.
 *
 * The cache's state (struct kv_cache) keeps these invariants between calls,
 * and kv_cache_check() verifies them (after every eviction and
 * repositioning in a debug build):
 *   - n <= budget <= n_ctx;
 *   - toks[0..n) are in cache order: orig_pos strictly increasing, each
 *     below next_pos;
 *   - every engine slot is either held by exactly one cached token or on the
 *     free-slot stack exactly once (n + n_free == n_ctx), and the engine
 *     gives a held slot its token's pos and a free slot no position (-1);
 *   - the per-token metadata is one array (toks), so it cannot fall out of
 *     step with itself; the one parallel array, acc, exists whenever the
 *     policy scores by attention, and its row i belongs to toks[i]
 *     (acc_tok records whose each row is, and moves with it).
 * With per-head keep-sets (kv_heads.c: snapkv/h2o heads=1, kvzip) the
 * first rule reads instead: each (layer, KV head) keeps at most budget of
 * the cached tokens (hkeep, by slot), every cached token is kept by at
 * least one of them (toks[i].n_heads > 0, the count), and the cached
 * tokens, the union, fit the slots the policy may hold (kv_slot_cap).
 */
#ifndef KVS_KV_INT_H
#define KVS_KV_INT_H

#include "kv/kv_cache.h"

#include <string.h>

#define KV_KEEP 0x80u /* in kv_select.keep: the candidate stays */

struct kv_cache {
	struct engine *eng;
	const struct hparams *hp;
	struct kv_config cfg;
	uint32_t n_ctx, n_vocab;
	uint32_t n;           /* cached tokens */
	struct kv_tok *toks;  /* (n_ctx) cache order, the first n live */
	float *acc;           /* (n_ctx, n_layer, n_head_kv) the first n rows live, or NULL */
	uint32_t acc_stride;  /* n_layer * n_head_kv: floats per acc row */
	int32_t *acc_tok;     /* (n_ctx) orig_pos of the token each acc row belongs
	                               * to, the first n live (kv_cache_check's witness) */
	uint32_t *free_slots; /* (n_ctx) stack of free slots, the first n_free live;
	                               * top free_slots[n_free - 1] (slot 0 after a clear) */
	uint32_t n_free;
	int32_t next_pos; /* original position of the next token */
	uint32_t turn;
	enum kv_role role;
	uint8_t feed_flags; /* enum kv_flag: what fed tokens get (kv_cache_set_feed_flags) */
	float *logits;      /* (n_vocab) next-token logits */
	bool have_logits;
	bool have_lse;     /* logits_lse / logits_ent are for logits */
	double logits_lse; /* log-sum-exp of logits */
	float logits_ent;  /* entropy of softmax(logits), nats */
	/* compat scoring within the current turn */
	int32_t turn_first; /* orig_pos of the turn's first token, -1 before it */
	float turn_max;     /* max of s_j in the turn */
	float prev_self;    /* s of the previous token in the turn, NaN if none */
	/* scratch */
	uint32_t *visible;             /* (n_ctx) a forward's visible slots */
	uint32_t *bslot;               /* (n_ctx) a forward's slots */
	uint32_t *cand;                /* (n_ctx) an eviction's candidates */
	uint32_t *order;               /* (n_ctx) a selection's scratch */
	int32_t *bpos;                 /* (n_ctx) a forward's positions */
	uint8_t *keep;                 /* (n_ctx) an eviction's choices, by candidate */
	float *fscratch;               /* (n_ctx) scores, summaries */
	struct kv_tok *evicted;        /* (n_ctx) an eviction's victims */
	uint32_t *sbeg, *send;         /* (n_ctx) each: an eviction's spans, by candidate */
	uint32_t pending_room;         /* a voting policy's turn eviction, deferred to the feed */
	bool pending_vote;             /* carry > 0: the turn's prompt votes even without one */
	uint8_t *span_cls;             /* (n_span_cls) enum kv_span_class by token id */
	uint32_t n_span_cls;           /* the vocabulary's tokens */
	struct kv_head_summary *heads; /* (n_layer, n_head) */
	/* per-(layer, KV head) keep-sets (kv_heads.c), while the policy keeps them */
	uint8_t *hkeep;   /* (n_layer, n_head_kv, n_ctx) by slot: 1 = that head keeps the
	                   * slot's token; NULL: one keep-set for every head */
	bool heads_over;  /* a restore left heads over the budget: cut at the next eviction */
	/* the per-head store (kv_store.c), while the engine has a row map */
	uint32_t *rfree;   /* (n_layer, n_rows x n_head_kv) each layer's stack of free cells */
	uint32_t *n_rfree; /* (n_layer) free cells of each layer */
	uint8_t *sheld;    /* (n_ctx) a sync's scratch: 1 = the slot is held */
	int32_t *zip_ids; /* (n_zip_ids) KVzip's "repeat the previous context" prompt */
	uint32_t n_zip_ids;
	/* (n_zip_more) the prompt of a later chunk of a whole re-read, "repeat the
	 * part ... starting with", the previous chunk's last tokens go at zip_cut */
	int32_t *zip_more;
	uint32_t n_zip_more, zip_cut;
	uint64_t n_zip_reads; /* KVzip re-reads since the last clear, and their tokens */
	uint64_t n_zip_tokens;
	/* events and providers */
	kv_event_fn ev_fn;
	void *ev_ud;
	struct kv_scorer scorer;
	bool has_scorer;
	double deadline_ms; /* clock_now_ms after which feeds stop; 0: none */
	/* the cold tier (kv_cold.c) */
	kv_cold_fn cold_fn; /* the eviction listener, or NULL */
	void *cold_ud;
	uint32_t *cold_slots;     /* (cold_cap) an eviction's victims' slots */
	uint32_t cold_cap;
	bool cold_raw_ok;         /* the rows of this eviction are to be read */
	struct kv_cold_q *cold_q; /* evictions waiting for their rows' copies (kv_cold.c) */
	uint32_t recall_turn;     /* the turn recalled tokens are kept through (0: none) */
	int32_t recall_pos0;      /* next_pos when they came back: the turn's tokens start there */
	bool recall_near;         /* COMPACT: recalled tokens sit right before the turn (kv_cold.c) */
	/* statistics since the last clear */
	uint64_t n_seen, n_evicted, step, bytes_peak;
	uint64_t n_clears; /* kv_cache_clear calls since creation (kv_snap.c's witness) */
	uint32_t n_evictions, n_fallbacks;
	uint64_t bytes_per_token;
	bool warned_lambda;              /* said once that the backend lacks the Λ-mask */
	double last_capture_ms;          /* when the last step event was captured */
	bool capture_next;               /* capture the next forward regardless */
	uint64_t keys_read, keys_dense;  /* the last decode step's (engine_out) */
	struct kv_sparse_stats sp_stats; /* kv_sparse.c's figures */
	struct kv_sparse *sps;           /* kv_sparse.c's state, NULL until a watched sparse step */
};

struct kv_select {
	const struct kv_tok *toks; /* (n_cached) every cached token, cache order */
	const uint32_t *cand;      /* (n) cache indices of the candidates, ascending */
	uint32_t n;
	const float *acc;    /* (n_cached, n_layer, n_head_kv) accumulated attention, or NULL */
	uint32_t acc_stride; /* n_layer * n_head_kv: floats per acc row */
	uint32_t m;          /* tokens about to come in */
	uint32_t budget;     /* the cache's budget in tokens */
	uint32_t target;     /* keep at most this many candidates (< n) */
	uint32_t head1;      /* a per-head selection: 1 + its row of acc (layer * n_head_kv
	                      * + KV head), its candidates the ones that head keeps; 0
	                      * (what a zeroed kv_select says): one keep-set for all */
	const float *p;      /* the policy's parameters */
	uint8_t *keep;       /* (n) out: 0, or KV_KEEP | KV_FLAG_SINK | KV_FLAG_KEY */
	float *score;        /* (n) scratch */
	uint32_t *order;     /* (n) scratch */
	/* spans (kv_span.c): candidate i's span is [sbeg[i], send[i]), candidate
	 * indices; NULL: every candidate is its own span */
	const uint32_t *sbeg; /* (n) or NULL */
	const uint32_t *send; /* (n) or NULL */
	bool span_mean;       /* a span scores the mean of its tokens, not the max */
};

/* Where a policy's retention score comes from. */
enum kv_score_kind {
	KV_SCORE_NONE = 0,  /* no score (NaN) */
	KV_SCORE_SURPRISAL, /* token entropy e_i (SirLLM), decayed per turn */
	KV_SCORE_ATTN,      /* accumulated attention per (layer, KV head) (H2O) */
	KV_SCORE_VOTE,      /* the last prompt window's pooled attention (SnapKV; kv_vote.c) */
	KV_SCORE_ZIP,       /* the max attention of a re-read of the context (KVzip; kv_zip.c) */
};

/* Whether a policy of this score keeps the per-(layer, KV head) rows acc. */
#define KV_SCORE_HAS_ACC(s) ((s) == KV_SCORE_ATTN || (s) == KV_SCORE_VOTE || (s) == KV_SCORE_ZIP)
/* Whether tokens that arrive score +inf until scored (kept before any
 * scored token): the scores come from a pass over the cache, not as the
 * tokens arrive. */
#define KV_SCORE_LATE(s) ((s) == KV_SCORE_VOTE || (s) == KV_SCORE_ZIP)

struct kv_policy_def {
	const char *name;
	const char *help;
	const struct kv_param_def *params;
	uint32_t n_params;
	bool evicts;
	enum kv_score_kind score;
	int decay_param;  /* index of the per-turn decay factor, or -1 */
	int compat_param; /* index of the mode parameter (1 = SirLLM code's scoring), or -1 */
	enum kv_pos_mode (*pos_mode)(const float *p);
	uint32_t (*n_sinks)(const float *p); /* tokens flagged sink as they arrive */
	/* LM-Infinite's distance cap in positions (0: the model's training context) */
	int32_t (*cap)(const float *p);
	/* LM-Infinite's Λ-mask: n_local, middle top-k, its first layer and
	 * distance (all 0 when the policy has none) */
	void (*lambda)(const float *p, int32_t *n_local, uint32_t *topk, uint32_t *from_layer,
	               int32_t *insert_at);
	void (*select)(struct kv_select *s);
	/* SnapKV's observation window W and pooling kernel (0 when the policy
	 * does not vote) */
	void (*vote)(const float *p, uint32_t *window, uint32_t *kernel);
	/* Whether the policy keeps a keep-set per (layer, KV head) (NULL:
	 * never; kv_heads.c) */
	bool (*per_head)(const float *p);
	/* KVzip's re-read chunk, context tokens per scratch forward (NULL: the
	 * policy does not re-read; kv_zip.c) */
	uint32_t (*reread)(const float *p);
};

/* Keep the top k candidates by s->score among those not yet kept (ties:
 * the more recent), flagging them, whole spans at a time; returns how many
 * were marked. */
uint32_t kv_policy_top(struct kv_select *s, uint32_t k, uint8_t flag);

/* ---- spans (kv_span.c) ---- */

/* Token classes by token id, what span boundaries are read from. */
enum kv_span_class {
	KV_CLS_LEAD_WS = 1u << 0,  /* its text starts with whitespace */
	KV_CLS_TRAIL_WS = 1u << 1, /* its text ends with whitespace */
	KV_CLS_SPECIAL = 1u << 2,  /* a control token or empty text: a span of its own */
	KV_CLS_DIGIT = 1u << 3,    /* its text holds a digit 0-9 */
};

/* The class of every token id of v, (n_vocab); the caller frees it. */
uint8_t *kv_span_classes(const struct vocab *v);
/*
 * The spans of candidates cand, (n) cache indices ascending, of toks: two
 * neighbouring candidates join when they are neighbours in the cache and in
 * the stream (orig_pos one apart), neither is special, the first does not
 * end with whitespace and the second does not start with it, and the span
 * so far is shorter than KV_SPAN_MAX_TOKENS. Number mode then unjoins every
 * span without a digit. Out: sbeg, send, (n) each, as kv_select has them.
 * cls is (n_cls) by token id; an id outside it is special.
 */
void kv_span_find(const uint8_t *cls, uint32_t n_cls, const struct kv_tok *toks,
                  const uint32_t *cand, uint32_t n, enum kv_span_mode mode, uint32_t *sbeg,
                  uint32_t *send);
/* The first candidate whose span a selection split (some of it kept, some
 * not), or -1: every selection keeps or drops spans whole. */
int64_t kv_span_split(const struct kv_select *s);

/* ---- shared by kv_cache.c, kv_inspect.c and kv_restore.c */

/* The active policy's table row. */
const struct kv_policy_def *kv_def(const struct kv_cache *c);
/* Complete ev (turn, policy, statistics) and hand it to the listener. */
void kv_emit(struct kv_cache *c, struct kv_event *ev);
/* Whether per-token surprisal and entropy are computed. */
bool kv_need_stats(const struct kv_cache *c);
/* log-sum-exp of one logits row, and its entropy in nats. */
double kv_row_lse(const float *row, uint32_t nv, float *ent);
/* Emit the step event of the forward just done (its last token). */
void kv_capture_step(struct kv_cache *c, const struct engine_out *o);
/* Whether eviction must keep t now: pinned, or recalled for this turn. */
bool kv_protected(const struct kv_cache *c, const struct kv_tok *t);
/* The COMPACT positions of the cached tokens, one token at a time in cache
 * order (kv_cold.c): the cache index, or, while recalled tokens are kept
 * for this turn and placement is near, the older tokens first, then the
 * recalled ones, then the turn's own. */
struct kv_pos_walk {
	bool near;
	uint32_t n_older; /* tokens before the turn that were not recalled */
	uint32_t older, recalled;
};
void kv_pos_walk_init(const struct kv_cache *c, struct kv_pos_walk *w);
/* Re-assign the positions of the cached tokens as the policy says (COMPACT:
 * the walk above; the others: original positions); kv_cache.c. */
int kv_reposition(struct kv_cache *c, struct err *e);
/* The position of the i-th cached token (called for i = 0, 1, ... in order). */
int32_t kv_pos_walk_next(const struct kv_cache *c, struct kv_pos_walk *w, uint32_t i);
/* Before an eviction frees slots: make room for n tokens' raw rows (when a
 * cold listener is set). */
void kv_cold_begin(struct kv_cache *c, uint32_t n);
/* Read the raw rows of the i-th evicted token from slot (before the slot is
 * emptied), when a cold listener is set. */
void kv_cold_save(struct kv_cache *c, uint32_t i, uint32_t slot);
/* Start saving the n evicted tokens' (c->evicted) rows and hand them to
 * the listener once the copy landed (kv_cold.c says when). */
void kv_cold_emit(struct kv_cache *c, uint32_t n);
/* Before the cache is freed: hand over every queued eviction. */
void kv_cold_end(struct kv_cache *c);
/* In a debug build, abort with kv_cache_check's message when the cache
 * breaks an invariant (after evictions, repositioning, restores, feeds). */
void kv_debug_check(const struct kv_cache *c);

/* ---- per-(layer, KV head) keep-sets (kv_heads.c) ---- */

/* Whether the cache keeps a keep-set per (layer, KV head) now: the policy
 * asks for them and no score provider replaces it. */
bool kv_heads_on(const struct kv_cache *c);
/* Allocate, free or reset hkeep for the active policy (every held slot
 * kept by every head); after a policy change, a clear or a restore. */
void kv_heads_reset(struct kv_cache *c);
/* Mark the m slots kept by every head (tokens that arrive, a scratch). */
void kv_heads_take(struct kv_cache *c, const uint32_t *slots, uint32_t m);
/* The most cached tokens one head keeps (c->n with one keep-set; with
 * alloc=adaptive the fullest layer's mean head, rounded up). */
uint32_t kv_heads_load(const struct kv_cache *c);
/* The tokens the cache may hold (the union): the budget with one keep-set;
 * with per-head ones, the engine's slots less the policy's scratch (at
 * least the budget). */
uint32_t kv_slot_cap(const struct kv_cache *c);
/* Whether m incoming tokens need an eviction first: a head or the slots
 * would go over. */
bool kv_over(const struct kv_cache *c, uint32_t m);
/* K/V bytes the engine holds for the cached tokens (the union with
 * per-head keep-sets): bytes_per_token each. */
uint64_t kv_bytes(const struct kv_cache *c);
/* K/V bytes of the kept entries: per (token, layer, KV head) entry with
 * per-head keep-sets, kv_bytes otherwise. */
uint64_t kv_bytes_entries(const struct kv_cache *c);
/* kv_cache_stats' bytes and per-head fields. */
void kv_heads_stats(const struct kv_cache *c, struct kv_stats *s);
/* Each of the first n tokens' score: the sum of its accumulator row (its
 * votes or attention over every (layer, KV head)). */
void kv_acc_scores(struct kv_cache *c, uint32_t n);
/* Kept (token, layer, KV head) entries, and each token's n_heads. */
uint64_t kv_heads_count(struct kv_cache *c);
/* Run the policy's selection once per (layer, KV head) over the
 * candidates that head keeps (a span whole per head), update hkeep and
 * mark in s->keep the union (with the slots' cap, cut from the tokens the
 * fewest heads keep, whole spans); KVS_ESTATE naming a head whose
 * selection split a span. */
int kv_heads_select(struct kv_cache *c, struct kv_select *s, uint32_t kept_pinned, struct err *e);
/* alloc=adaptive (kv_alloc.c): fill target, (n_layer * n_head_kv), the
 * candidates of s each head may keep, a layer's heads sharing the sum of
 * their uniform targets unif by one ranking of their scores, each first
 * keeping floor_share x its own. */
void kv_alloc_targets(const struct kv_cache *c, const struct kv_select *s, float floor_share,
                      const uint32_t *unif, uint32_t *target);
/* kv_cache_check's part for per-head keep-sets. */
int kv_heads_check(const struct kv_cache *c, struct err *e);
/* Add the attention a forward's queries gave the cached and new tokens to
 * acc (H2O: each KV head summing its query heads) and each token's score. */
void kv_accumulate(struct kv_cache *c, const struct engine_out *o);
/* KVS_EUNSUPPORTED (one line) when the engine cannot run policy p's
 * per-head keep-sets or its re-read, or p at budget its store
 * (kv_store_refuse). */
int kv_heads_refuse(struct engine *eng, const struct kv_policy *p, uint32_t budget, struct err *e);

/* ---- the per-head store (kv_store.c) ---- */

/* Whether the engine keeps K/V in per-head rows behind a row map. */
bool kv_store_on(const struct kv_cache *c);
/* Bring the row map in step with hkeep and the held slots (the cached
 * tokens and the m slots extra): free the rows of what a head dropped or
 * the cache let go, then give a row to each held slot a head keeps. */
void kv_store_sync(struct kv_cache *c, const uint32_t *extra, uint32_t m);
/* Tokens a scratch forward may add: the free slots, and with the store
 * also the free rows of the fullest head. */
uint32_t kv_store_room(const struct kv_cache *c);
/* Under the store with per-head sets: set slot's hkeep from its raw rows,
 * raw (bytes_per_token) as engine_kv_save gave them: a head whose K and V
 * are all zero bits dropped the token (a save gives a head without a row
 * zeros). */
void kv_store_marks(struct kv_cache *c, uint32_t slot, const uint8_t *raw);
/* Before a recall loads the raw rows of n tokens, raw (n, bytes_per_token),
 * into the next free slots: their keep-sets from the rows' marks, and rows
 * for them (nothing without the store). */
void kv_store_recall(struct kv_cache *c, uint32_t n, const uint8_t *raw);
/* Rows in use over every (layer, KV head); 0 without the store. */
uint64_t kv_store_entries(const struct kv_cache *c);
/* kv_cache_check's part for the store: each head's rows accounted once. */
int kv_store_check(const struct kv_cache *c, struct err *e);
void kv_store_free(struct kv_cache *c);
/* KVS_EUNSUPPORTED / KVS_EARG (one line) when policy p at budget cannot
 * run on eng's store: store=heads on an engine made with a row per slot,
 * or a store with fewer rows than the budget and the policy's scratch. */
int kv_store_refuse(struct engine *eng, const struct kv_policy *p, uint32_t budget, struct err *e);

/* ---- KVzip (kv_zip.c) ---- */

/* Build the re-read's prompt from the model's chat template (or plain
 * text); once per cache. */
void kv_zip_prompt(struct kv_cache *c);
/* KVzip's re-read, when more than target / 2 cached tokens are not yet
 * scored (target 0: any): the prompt and those tokens (reread=new) or
 * every cached token (reread=all) in chunks after the cache, in free slots
 * emptied afterwards; each acc entry becomes the max of itself and the
 * attention the re-read gave it (reread=all: the re-read's alone), each
 * toks[i].score the max over its heads. Too few free slots: the last scores
 * stand. */
int kv_zip_score(struct kv_cache *c, uint32_t target, struct err *e);

/* Whether policy p keeps per-head keep-sets, and its re-read chunk (0:
 * none). */
bool kv_policy_per_head(const struct kv_policy *p);
uint32_t kv_policy_reread(const struct kv_policy *p);
/* What a vote's or re-read's earlier scores keep at the next one (snapkv,
 * kvzip: the carry parameter; 0: the paper's rule, and for other policies). */
float kv_policy_carry(const struct kv_policy *p);
/* alloc=adaptive's floor, the share of the uniform per-head budget each
 * head keeps first (kv_alloc.c); -1 with uniform head budgets or one set. */
float kv_policy_floor(const struct kv_policy *p);

/* ---- votes (kv_vote.c) ---- */

/* Let the window ids, (n_win) the end of the prompt being fed, vote on the
 * cached tokens (SnapKV): a scratch forward of the window after the cache
 * (in free slots, emptied afterwards; the cache is unchanged), its
 * attention summed over the window's queries and each KV head's query
 * heads, max-pooled along the cache, into acc (per layer, KV head) and each
 * token's score (their sum). Fewer free slots than n_win: the window's end
 * only; none: the last votes stand. */
int kv_vote(struct kv_cache *c, const int32_t *ids, uint32_t n_win, struct err *e);
/* Max-pool x, (n), with a window of kernel (odd; clipped at the ends) into
 * out, (n). */
void kv_vote_pool(const float *x, uint32_t n, uint32_t kernel, float *out);

/* A batch of the m tokens ids at c->bslot / c->bpos that sees every cached
 * token and itself: c->visible is the cache's slots in order, then the
 * batch's. The caller sets what it wants back (logits, attention). */
static inline struct engine_batch kv_batch_after_cache(struct kv_cache *c, const int32_t *ids,
                                                       uint32_t m)
{
	uint32_t n = c->n;
	for (uint32_t i = 0; i < n; i++)
		c->visible[i] = c->toks[i].slot;
	memcpy(c->visible + n, c->bslot, m * sizeof *c->bslot);
	struct engine_batch b = { 0 };
	b.n_tokens = m;
	b.tokens = ids;
	b.pos = c->bpos;
	b.slot = c->bslot;
	b.n_visible = n + m;
	b.visible = c->visible;
	if (c->hkeep != NULL) {
		/* the batch's tokens are kept by every head, the cache's as each keeps them */
		kv_heads_take(c, c->bslot, m);
		b.head_keep = c->hkeep;
	}
	kv_store_sync(c, c->bslot, m); /* the per-head store: rows for what each head keeps */
	return b;
}

/* ---- kv_sparse.c: what a watcher of sparse attention sees ---- */

/* Set b's sparse spec for a forward of m tokens; on a watched decode step
 * ask for the choice, and the dense rows only on a shadow step. Returns
 * whether the step is captured (capture, or a shadow step). */
bool kv_sparse_prepare(struct kv_cache *c, struct engine_batch *b, uint32_t m, bool capture);
/* After the forward of m tokens (the chunk not yet in toks): the keys
 * read, and the figures of a watched sparse decode step. */
void kv_sparse_after(struct kv_cache *c, const struct engine_out *o, uint32_t m);
/* The view of the last forward when it was a watched sparse decode step
 * (lent until the next forward), else NULL. */
const struct kv_sparse_view *kv_sparse_view_of(const struct kv_cache *c);
void kv_sparse_free(struct kv_cache *c);

#endif
