/*
 * kv_cache.h: the kv layer's one public header: the KV cache with per-token
 * memory, the retention policies and the introspection events. The layer
 * sits above the engine: it includes engine.h, never the other way round.
 *
 * Shape notation (every header of src/kv/ and src/engine/ uses it): a
 * comment such as (n_layer, n_head, n_visible) on a buffer gives its
 * dimensions outermost first, row-major, so the last one is contiguous and
 * element [l][h][j] sits at (l * n_head + h) * n_visible + j. Each dimension
 * is named by the hyper-parameter (struct hparams: n_layer, n_head,
 * n_head_kv, head_dim, n_rot, n_vocab) or the count field (n_ctx, n_tokens,
 * n_visible, n, ...) that sizes it, never by a bare number; a vector is (n).
 * What follows the shape says what the elements are, their unit and order
 * ("(n_tokens) in nats", "(n) cache order"), which prefix is live when the
 * buffer has room for more ("(n_ctx) cache order, the first n live"), and
 * "or NULL" when it may be absent.
 *
 * Where retention happens, all in this folder: kv_cache.c makes room
 * (kv_evict: pinned tokens, the policy's or a score provider's selection,
 * the gather that frees slots), re-assigns positions (kv_reposition, and
 * LM-Infinite's sink moves in kv_feed_chunk); kv_inspect.c checks the
 * result (kv_cache_check) and summarises attention; kv_restore.c rebuilds a
 * saved cache; kv_policy.c holds the policy table and each policy's
 * selection; kv_span.c cuts the candidates into words that an eviction
 * keeps or drops whole (span=word, every policy); kv_vote.c lets a prompt's
 * last queries vote before an eviction (snapkv); kv-int.h the cache's
 * state, its invariants and a selection's inputs. The engine offers only primitives: slot positions
 * (engine_kv_set_pos), attention over a list of visible slots, and the
 * masks the policies ask of a forward (engine_batch: dist_cap, the
 * Λ-mask, per-KV-head attention sums).
 *
 * A kv_cache sits on one engine and owns the meaning of its slots: which
 * token each cached slot holds, where that token came from (original
 * position, turn, role), what the model thought of it (surprisal, predictive
 * entropy), its retention score and the attention it has accumulated per
 * (layer, KV head), and flags (sink, key token, pinned). Cached tokens are
 * kept in stream order ("cache order", original position ascending); cache
 * index i is the i-th cached token, and its key lives in engine slot
 * toks[i].slot (slots are never moved: eviction frees slots, new tokens take
 * free ones).
 *
 * The budget (tokens) is never exceeded: between forwards at most budget
 * tokens are cached (a vote's scratch window, snapkv, briefly takes W free
 * engine slots beyond them, kv_policy_scratch). Before every forward of m tokens,
 * when n + m > budget, the active retention policy chooses which cached
 * tokens stay (at most budget - m of them) and the cache re-assigns their
 * RoPE positions as the policy says: re-compacted to cache indices
 * (StreamingLLM, SirLLM), original positions (H2O as in its paper code), or
 * original positions with a distance cap for the global tokens
 * (LM-Infinite). Keys are cached before RoPE, so re-positioning is exact.
 * Turns: kv_cache_begin_turn(m) evicts once for the whole turn's incoming m
 * tokens (SirLLM's semantics) and applies the memory decay; a turn or a
 * reply longer than expected evicts again per prefill chunk or decode step.
 * A voting policy (snapkv) defers the turn's eviction to the turn's first
 * feed, whose last tokens vote first; every prefill chunk's eviction votes
 * with the end of its feed, a decode step's uses the last votes. KVzip
 * (kv_zip.c) re-reads the cache before an eviction that finds more than
 * half of what it keeps unscored (about once per turn).
 *
 * Per-head keep-sets (kv_heads.c: snapkv and h2o heads=1, kvzip): each
 * (layer, KV head) keeps its own set of at most budget tokens, and the
 * engine gives a key a head dropped exactly zero weight from that head.
 * The cached tokens are then the union of the sets, at most spread x
 * budget (kv_policy_scratch gives the engine the slots); the engine holds
 * every head's K/V of a cached token, so kv_stats.bytes counts the union
 * (never past the budget's bytes with spread 1, the default) and
 * kv_stats.bytes_entries the kept (token, layer, KV head) entries;
 * kv_tok.n_heads says how many heads keep a token, kv_stats.heads_load
 * the most one head keeps.
 *
 * Policies are one table (kv_policy.c), each with named parameters whose
 * defaults come from the papers' released code. A score provider (a
 * function, user data and a time budget) can replace the built-in scoring,
 * e.g. a Lua policy; when it fails or overruns, the cache falls back to the
 * built-in policy for that eviction and says so in the eviction event.
 *
 * Introspection: with capture on, every forward's last query produces a
 * step event (attention per layer and head over the cached tokens, per-head
 * summaries, the token's surprisal and entropy, KV statistics by region);
 * evictions, turns and policy changes produce their own events. With
 * capture off nothing extra is computed. Events are delivered synchronously
 * on the calling (worker) thread; their pointers are valid only during the
 * call, so a consumer copies what it keeps.
 */
#ifndef KVS_KV_CACHE_H
#define KVS_KV_CACHE_H

#include "engine/engine.h"

#include <stdio.h>

/* ---- per-token metadata ---- */

enum kv_role { KV_ROLE_NONE = 0, KV_ROLE_SYSTEM, KV_ROLE_USER, KV_ROLE_ASSISTANT };
const char *kv_role_name(enum kv_role r);

enum kv_flag {
	KV_FLAG_SINK = 1u << 0,   /* kept as a sink / global token */
	KV_FLAG_KEY = 1u << 1,    /* kept for its score (key token, heavy hitter) */
	KV_FLAG_PINNED = 1u << 2, /* pinned by the user: never evicted */
	/* the document loaded by --doc / :doc (pinned too): squeezed clusters
	 * its keys; a region of its own in the views */
	KV_FLAG_DOC = 1u << 3,
	/* brought back from the cold tier (kv_cache_recall): kept through the
	 * turn it was recalled for, evictable afterwards */
	KV_FLAG_RECALLED = 1u << 4,
	KV_FLAG_ALL = KV_FLAG_SINK | KV_FLAG_KEY | KV_FLAG_PINNED | KV_FLAG_DOC | KV_FLAG_RECALLED,
};

struct kv_tok {
	int32_t token;    /* token id */
	int32_t orig_pos; /* position in the stream since the last clear */
	int32_t pos;      /* RoPE position its key is rotated to now */
	uint32_t slot;    /* engine KV slot */
	uint32_t turn;    /* turn id (kv_cache_begin_turn counts them) */
	uint8_t role;     /* enum kv_role */
	uint8_t flags;    /* enum kv_flag */
	uint16_t n_heads; /* per-head keep-sets: the (layer, KV head) pairs keeping it;
	                   * 0 with one keep-set (every pair) */
	float surprisal;  /* nats, -log p(token | what preceded it); NaN unknown */
	float entropy;    /* nats, entropy of the distribution it was drawn from; NaN unknown */
	float score;      /* the active policy's retention score; NaN when it has none */
};

/* ---- retention policies (kv_policy.c) ---- */

#define KV_POLICY_MAX_PARAMS 12

/* How positions are assigned to kept and new tokens. */
enum kv_pos_mode {
	KV_POS_COMPACT = 0, /* cache index: 0 .. n-1 (StreamingLLM, SirLLM) */
	KV_POS_ORIGINAL,    /* the original position (H2O paper code) */
	KV_POS_CAPPED,      /* original, sinks at most cap away from the query (LM-Infinite) */
};

struct kv_param_def {
	const char *name;
	float def, lo, hi;
	const char *const *choices; /* an enumeration: NULL-terminated names, value = index */
	bool integer;
	const char *help;
};

struct kv_policy_def; /* a row of the policy table */

/*
 * Span-coherent retention, an option of every policy (kv_span.c): eviction
 * keeps or drops spans, not tokens. A span is a run of cached tokens,
 * adjacent in the stream, that form one whitespace-delimited word (a word,
 * a number, an identifier like TIGER-42, an e-mail address), at most
 * KV_SPAN_MAX_TOKENS long; control tokens and whitespace end it. number
 * makes spans only of the words holding a digit (numbers, dates, codes);
 * off is the papers' token-granular rule. A span's score is the max (or the
 * mean) of its tokens' scores.
 */
enum kv_span_mode { KV_SPAN_WORD = 0, KV_SPAN_NUMBER, KV_SPAN_OFF };
enum kv_span_score { KV_SPAN_SCORE_MAX = 0, KV_SPAN_SCORE_MEAN };
#define KV_SPAN_MAX_TOKENS 16 /* a longer run (CJK text, a URL) is cut every 16 tokens */

/* Options every policy takes, after its own parameters (common[i]). */
enum { KV_COMMON_SPAN = 0, KV_COMMON_SPAN_SCORE, KV_POLICY_N_COMMON };

/* A policy with its parameter values (p[i] belongs to the i-th parameter,
 * common[i] to the i-th option every policy takes). */
struct kv_policy {
	const struct kv_policy_def *def;
	float p[KV_POLICY_MAX_PARAMS];
	float common[KV_POLICY_N_COMMON];
};

/* Number of policies in the table and the name of the i-th. */
size_t kv_policy_count(void);
const char *kv_policy_name_at(size_t i);
/* The default policy: "full" (exact; the cache refuses what does not fit). */
void kv_policy_default(struct kv_policy *p);
/* Parse "NAME", "NAME:k=v,k=v" or "NAME k=v k=v" (values: numbers or an
 * enumeration's names). KVS_EARG naming the policy, parameter or value. */
int kv_policy_parse(const char *spec, struct kv_policy *out, struct err *e);
/* Set one parameter of p by name. */
int kv_policy_set(struct kv_policy *p, const char *key, const char *val, struct err *e);
/* Value of parameter key, NaN when the policy has no such parameter. */
float kv_policy_get(const struct kv_policy *p, const char *key);
const char *kv_policy_name(const struct kv_policy *p);
/* "sirllm mode=paper sinks=4 recent=0 lambda=0.9" into buf (the options
 * every policy takes only where they differ from their defaults, so
 * "... span=off"); returns buf. */
char *kv_policy_format(const struct kv_policy *p, char *buf, size_t cap);
/* Help text: every policy, one line each, then its parameters, then the
 * options every policy takes. */
void kv_policy_help(FILE *fp);
/* Whether the policy ever evicts (full does not). */
bool kv_policy_evicts(const struct kv_policy *p);
/* Engine slots the policy wants beyond budget: a voting policy's (snapkv)
 * scratch window, KVzip's re-read chunk and prompt, and with per-head
 * keep-sets (heads=1) room for the union of the heads' sets, (spread - 1)
 * x budget (none with spread 1, the default); 0 for the others. A vote or a re-read runs in free slots and
 * empties them (with fewer free slots it votes with fewer queries, re-reads
 * in smaller chunks). */
uint32_t kv_policy_scratch(const struct kv_policy *p, uint32_t budget);
/* K/V rows per (layer, KV head) for policy p at budget when it asks for
 * the per-head store (store=heads: the budget and the fixed scratch, so
 * spread costs no memory; engine_config.n_rows), or 0: the slot store. */
uint32_t kv_policy_rows(const struct kv_policy *p, uint32_t budget);

/* ---- score providers (custom policies from outside the engine) ---- */

/*
 * Fill scores, (n), for the cached tokens toks, (n) cache order; the cache
 * keeps the pinned tokens and then the n_keep highest scores (ties: the more
 * recent), whole spans at a time as the policy's span option says (a span
 * scores the max or mean of its tokens). deadline_ms is on clock_now_ms(): a provider that returns later,
 * returns an error or a NaN score is ignored for this eviction and the
 * built-in policy decides instead.
 */
typedef int (*kv_score_fn)(void *ud, const struct kv_tok *toks, uint32_t n, uint32_t n_keep,
                           float *scores, double deadline_ms, struct err *e);

struct kv_scorer {
	const char *name;
	kv_score_fn fn;
	void *ud;
	double budget_ms; /* time allowed per call */
};

/* ---- events ---- */

enum kv_capture {
	KV_CAPTURE_OFF = 0, /* no step events, nothing extra computed */
	KV_CAPTURE_SUMMARY, /* step events with per-head summaries and stats */
	KV_CAPTURE_FULL,    /* and the attention rows themselves */
};

/* Per (layer, head) summary of the last query's attention over the cache. */
struct kv_head_summary {
	float entropy;   /* nats */
	float sink_mass; /* mass on the first KV_SINK_PROBE cached tokens */
	float topk_mass; /* mass on the kv_config.summary_topk largest weights */
	uint32_t k90;    /* fewest keys holding >= 90 % of the mass */
};

#define KV_SINK_PROBE 4

/* Sparse attention as a watcher sees it (kv_sparse.c): filled while a
 * sparse mode is on and the capture is (a view, a trace, a Lua hook
 * watches); NaN and zero otherwise. "Candidates" are the keys between the
 * sinks and the recent window, the ones a selection chooses among. */
struct kv_sparse_stats {
	enum engine_sparse_mode mode; /* the cache's mode now */
	uint64_t step;                /* the decode step these describe (kv_event.step), 0 none */
	uint64_t bytes_read;          /* K and V bytes the step's attention read */
	uint64_t bytes_dense;         /* and dense attention would have */
	/* Overlap of the step's chosen candidates with the previous step's,
	 * |A and B| / |A or B| by original position, summed over the sparse
	 * layers' (layer, KV head) sets: 1 = the same keys. NaN: no step before. */
	float overlap;
	/* The last dense shadow (every `shadow` decode steps): the dense
	 * attention mass the choice captured, per (sparse layer, KV head) the
	 * mean over its query heads, summarised as mean, min and 10th
	 * percentile; quest's tightness (true max logit / bound, the mean over
	 * chosen pages, NaN for hip). */
	uint64_t shadow_step; /* the step it ran at, 0 none yet */
	uint32_t shadow_every;
	float mass_mean, mass_min, mass_p10;
	float tight;
	/* Attention time of the last plain sparse step and of the last shadow
	 * step (the shadow's cost is their difference, never in the speed). */
	double attn_ms, select_ms, shadow_ms;
};

/* One sparse decode step's choice, carried by its KV_EVENT_STEP (lent
 * until the event returns). Columns are the step's visible keys in cache
 * order (the query's own last). */
struct kv_sparse_view {
	enum engine_sparse_mode mode;
	uint32_t n_layer, n_head_kv, n_cached;
	uint32_t dense_layers; /* layers [0, dense_layers) attend every key */
	uint32_t page;         /* quest's page or hip's block: keys a choice goes by */
	const uint8_t *sel;    /* (n_layer, n_head_kv, n_cached) 1: attended */
	const uint8_t *mark;   /* (n_cached) KV_SPMARK_*: why a key is always attended */
	const float *bound;    /* (n_layer, n_cached) quest: the max over the KV heads of each key's
	                        * page bound (NaN: dense layer, -inf: not a candidate); NULL: hip */
	const float *mass;     /* (n_layer, n_head_kv) the last shadow's captured mass, NaN before */
	const float *tight;    /* (n_layer, n_head_kv) the last shadow's tightness, NaN n/a */
	bool shadow;           /* this step ran the dense shadow (the event has attention rows) */
};

/* A key's mark in kv_sparse_view.mark. KV_SPMARK_DOC is the pinned
 * document's region (--doc), attended like the sinks. */
enum { KV_SPMARK_NONE = 0, KV_SPMARK_SINK, KV_SPMARK_RECENT, KV_SPMARK_DOC };

/* The cache's composition (regions by flag) and memory. */
struct kv_stats {
	uint32_t n_cached, budget, n_ctx;
	uint32_t n_sink, n_key, n_recent, n_pinned; /* n_recent: neither sink nor key */
	uint32_t n_recalled;                        /* flagged KV_FLAG_RECALLED */
	uint32_t n_doc;                             /* flagged KV_FLAG_DOC (counted in n_pinned) */
	uint64_t n_seen;                            /* tokens fed since the last clear */
	uint64_t n_evicted;                         /* tokens evicted since the last clear */
	uint32_t n_evictions;                       /* eviction rounds since the last clear */
	uint32_t n_fallbacks;                       /* score-provider failures since the last clear */
	uint64_t bytes_per_token;                   /* K and V, all layers */
	uint64_t bytes_per_layer;                   /* cached tokens' K and V in one layer */
	uint64_t bytes;                             /* cached tokens' K and V, all layers: what
	                                             * the engine holds for them */
	uint64_t bytes_entries;   /* per-head keep-sets: the kept (token, layer, KV head)
	                         * entries' K and V (bytes otherwise) */
	uint64_t bytes_peak;      /* the most bytes held since the last clear */
	uint64_t bytes_allocated; /* n_ctx slots; the per-head store's n_rows rows */
	/* The last decode step's attention: keys read, and keys dense attention
	 * reads, summed over layers and KV heads (equal unless sparse). */
	uint64_t keys_read, keys_dense;
	struct kv_sparse_stats sp;
	/* Per-head keep-sets: the most tokens one (layer, KV head) keeps (at
	 * most the budget with uniform head budgets, possibly more with
	 * alloc=adaptive, where a layer's heads share budget x n_head_kv;
	 * n_cached with one keep-set); kv_tok.n_heads says how many heads keep
	 * a token. */
	uint32_t heads_load;
	uint32_t n_head_sets; /* keep-sets: n_layer x n_head_kv per head, 0 with one */
	/* KVzip re-reads since the last clear, and the tokens they ran */
	uint64_t n_zip_reads, n_zip_tokens;
};

enum kv_event_kind {
	KV_EVENT_STEP = 0, /* a forward's last query (capture on) */
	KV_EVENT_EVICT,    /* tokens left the cache */
	KV_EVENT_TURN,     /* a turn began */
	KV_EVENT_POLICY,   /* the policy or the budget changed */
	KV_EVENT_PIN,      /* a token was pinned or unpinned (tok, its new flags) */
	KV_EVENT_RECALL,   /* tokens came back from the cold tier (kv_cache_recall) */
};

enum kv_evict_cause { KV_EVICT_TURN = 0, KV_EVICT_PREFILL, KV_EVICT_DECODE, KV_EVICT_BUDGET };
const char *kv_evict_cause_name(enum kv_evict_cause c);

struct kv_event {
	enum kv_event_kind kind;
	uint32_t turn;
	const char *policy;    /* policy name (or the score provider's) */
	struct kv_stats stats; /* after the event */
	/* KV_EVENT_STEP */
	uint64_t step;            /* forwards since the last clear */
	const struct kv_tok *tok; /* the query token (cached) */
	float next_entropy;       /* entropy of the next-token distribution; NaN unknown */
	uint32_t n_layer, n_head;
	uint32_t n_cached;                   /* columns of attn: cache order */
	const float *attn;                   /* FULL: (n_layer, n_head, n_cached), else NULL */
	const struct kv_head_summary *heads; /* (n_layer, n_head) */
	/* Under sparse attention, a decode step's choice (else NULL). Then a
	 * step between dense shadows has no attention rows: attn and heads are
	 * NULL and n_cached 0 (kv_sparse_view.n_cached counts its columns). */
	const struct kv_sparse_view *sparse;
	/* KV_EVENT_EVICT */
	enum kv_evict_cause cause;
	uint32_t n_incoming; /* the m tokens room was made for */
	uint32_t n_evicted;
	const struct kv_tok *evicted; /* (n_evicted) with their final scores */
	bool fallback;                /* the score provider failed; built-in policy used */
	const char *fallback_why;
	/* KV_EVENT_RECALL */
	uint32_t n_recalled;
	const struct kv_tok *recalled; /* (n_recalled) orig_pos ascending, at their new positions */
};

typedef void (*kv_event_fn)(const struct kv_event *ev, void *ud);

/* ---- the cache ---- */

enum kv_stats_mode {
	KV_TOKSTATS_AUTO = 0, /* when the policy or capture needs them */
	KV_TOKSTATS_ON,
	KV_TOKSTATS_OFF, /* unless the policy needs them */
};

struct kv_config {
	struct kv_policy policy;
	uint32_t budget;  /* tokens; 0 = every engine slot */
	uint32_t n_batch; /* prefill chunk (default 512; capped at budget/4 when evicting) */
	enum kv_capture capture;
	/* Cost budget of capture: at most one step event per this many ms (0:
	 * every forward); a front end redrawing 30 times a second sets 33. */
	double capture_interval_ms;
	enum kv_stats_mode token_stats; /* per-token surprisal and entropy */
	uint32_t summary_topk;          /* k of kv_head_summary.topk_mass (default 10) */
	struct engine_sparse sparse;    /* sparse decode attention (default off) */
};

void kv_config_default(struct kv_config *c);

struct kv_cache;

/* A cache over eng's slots (all of them must be empty); KVS_EARG when the
 * budget exceeds the engine's slots. */
int kv_cache_create(struct kv_cache **out, struct engine *eng, const struct kv_config *cfg,
                    struct err *e);
void kv_cache_free(struct kv_cache *c);
/* Forget everything: empty cache, turn 0, statistics reset. */
void kv_cache_clear(struct kv_cache *c);

/* Events go to fn(ev, ud) (NULL: none). */
void kv_cache_set_events(struct kv_cache *c, kv_event_fn fn, void *ud);
void kv_cache_set_capture(struct kv_cache *c, enum kv_capture cap, double interval_ms);
/* Capture the next forward whatever the interval (capture on): the last
 * step of a reply, so the views end on what the answer's last token saw. */
void kv_cache_capture_next(struct kv_cache *c);
/* Switch policy or budget (between turns); evicts at once when the cache
 * holds more than the new budget. */
int kv_cache_set_policy(struct kv_cache *c, const struct kv_policy *p, struct err *e);
int kv_cache_set_budget(struct kv_cache *c, uint32_t budget, struct err *e);
/* Switch sparse attention (between turns; selection runs over whatever
 * the policy kept). KVS_EUNSUPPORTED on a backend without it. */
int kv_cache_set_sparse(struct kv_cache *c, const struct engine_sparse *s, struct err *e);
const struct engine_sparse *kv_cache_sparse(const struct kv_cache *c);
/* Install (s != NULL) or remove a score provider (copied). */
void kv_cache_set_scorer(struct kv_cache *c, const struct kv_scorer *s);
/* Stop feeds past clock_now_ms deadline_ms (0: never): kv_cache_feed then
 * fails before its next chunk, keeping the chunks fed and no logits (a
 * caller with a time budget, such as a plugin's session, bounds a long
 * prefill this way). */
void kv_cache_set_deadline(struct kv_cache *c, double deadline_ms);

/* Begin a turn of role whose incoming length is about m tokens: evict once
 * to make room for them (when needed) and apply the policy's memory decay. */
int kv_cache_begin_turn(struct kv_cache *c, enum kv_role role, uint32_t m, struct err *e);
/* Set the role of the tokens fed next (within a turn). */
void kv_cache_set_role(struct kv_cache *c, enum kv_role role);
/* Append tokens: chunks of at most n_batch, evicting before a chunk when it
 * would not fit. Afterwards kv_cache_logits() holds the next-token logits.
 * KVS_ERANGE when a policy that never evicts is full. */
int kv_cache_feed(struct kv_cache *c, const int32_t *ids, uint32_t n, struct err *e);
/* Next-token logits (n_vocab) after the last feed, or NULL. */
const float *kv_cache_logits(const struct kv_cache *c);
/* Pin or unpin the cached token at original position orig_pos; a
 * document token (KV_FLAG_DOC) cannot be unpinned (KVS_EARG). */
int kv_cache_pin(struct kv_cache *c, int32_t orig_pos, bool pinned, struct err *e);

/* ---- the pinned document (kv_doc.c) ---- */

/* Flags (KV_FLAG_PINNED, KV_FLAG_DOC) every token fed from now on gets
 * besides the policy's, until set to 0: how a front end pins a document
 * (and the turn before it, so that its positions never move). */
void kv_cache_set_feed_flags(struct kv_cache *c, uint8_t flags);
/* The engine slots of the document tokens (KV_FLAG_DOC), cache order,
 * into slots (n_ctx); returns how many. */
uint32_t kv_cache_doc_slots(const struct kv_cache *c, uint32_t *slots);

/* ---- the cold tier's hooks (kv_cold.c) ---- */

/*
 * Evicted tokens toks, (n) cache order, with raw, (n, bytes_per_tok), their
 * K/V rows as engine_kv_save gives them (pre-RoPE keys, the cache's element
 * type), or NULL when the backend has no raw slot access (or the copy
 * failed). Called once the rows' batched copy landed: on the CPU inside
 * the eviction, after the tokens left the cache; where the copy runs
 * behind the decode (CUDA), at a later eviction, at kv_cache_cold_sync or
 * when the listener changes; always in eviction order. The pointers are
 * lent during the call only.
 */
typedef void (*kv_cold_fn)(void *ud, const struct kv_tok *toks, uint32_t n, const void *raw,
                           uint64_t bytes_per_tok);
/* Hand every eviction's tokens and rows to fn(ud, ...) (NULL: nobody, and
 * no row is read). */
void kv_cache_set_cold(struct kv_cache *c, kv_cold_fn fn, void *ud);
/* Wait for every eviction's rows still being copied and hand them over
 * (a turn's end, before the store writes the turn). */
void kv_cache_cold_sync(struct kv_cache *c);
/*
 * Bring back n evicted tokens with their raw rows, raw (n, bytes_per_slot)
 * as the cold listener got them. Each takes its place in cache order by its
 * original position (so a block comes back in its original order, before
 * the turn being fed) and its RoPE position then follows the policy's mode
 * like any cached token's (COMPACT: its cache index; ORIGINAL, CAPPED: its
 * original position); the keys are pre-RoPE, so the placement is exact.
 * Recalled tokens are flagged KV_FLAG_RECALLED; no eviction removes them
 * during the current turn (the one they were recalled for; call after
 * kv_cache_begin_turn), later ones may. Emits KV_EVENT_RECALL. KVS_EARG
 * naming the first bad token (id, order, a position already cached or not
 * yet seen) or a count over the room left (budget - cached); nothing
 * changes then.
 */
int kv_cache_recall(struct kv_cache *c, const struct kv_tok *toks, uint32_t n, const void *raw,
                    struct err *e);
/*
 * Where recalled tokens sit under a COMPACT policy while they are kept for
 * their turn: near false (the default), at their cache index, between the
 * older tokens around their original place (the text reads in its original
 * order, a recalled block right after the sinks when nothing older is
 * cached); near true, right before the turn's own tokens, after every
 * other cached token (positions n_older .., as a retrieved passage placed
 * next to the question), their own order kept. Cache order (original
 * positions) is the same either way; only positions move. From the next
 * turn on they are ordinary tokens again (the next compaction puts them
 * back at their index). ORIGINAL and CAPPED policies ignore it.
 */
void kv_cache_set_recall_near(struct kv_cache *c, bool near);
/*
 * Run ids (n) as the next feed would place them (the same positions, dense
 * attention over every cached token and themselves) in free slots, and
 * fill q, (n, n_layer, n_head, head_dim), with their queries before RoPE;
 * the slots are emptied again and the cache is unchanged. KVS_ERANGE when
 * fewer than n slots are free, KVS_EUNSUPPORTED on a backend without
 * ENGINE_CAP_QUERY.
 */
int kv_cache_probe(struct kv_cache *c, const int32_t *ids, uint32_t n, float *q, struct err *e);

/* ---- restoring (resume a saved session) ---- */

/* The cache's state between two turns, as a saved session holds it. */
struct kv_restore {
	const struct kv_tok *toks; /* (n) cache order: orig_pos ascending, distinct */
	uint32_t n;
	int32_t next_pos;           /* original position of the next token (> every orig_pos) */
	uint32_t turn;              /* turns begun so far */
	const float *logits;        /* (n_vocab) next-token logits, or NULL */
	const float *acc;           /* (n, n_layer, n_head_kv) attention accumulators, or NULL */
	uint64_t n_seen, n_evicted; /* statistics carried over */
	uint32_t n_evictions;
};

/*
 * Install r's tokens (metadata and positions) without computing anything:
 * the cache is cleared, token i takes engine slot i at position toks[i].pos
 * (toks[i].slot is ignored and overwritten), the turn counter and next
 * position are r's. The slots' K/V are then the caller's to fill: raw rows
 * from a snapshot (engine_kv_load, same slots) or kv_cache_recompute. With
 * r->acc NULL and a policy scoring by attention, each token's accumulators
 * start as its stored score spread evenly (the total the policy ranks by).
 * KVS_EARG naming the first bad token (order, position, id) or a count over
 * the budget; the cache is empty then.
 */
int kv_cache_restore(struct kv_cache *c, const struct kv_restore *r, struct err *e);
/* After kv_cache_restore: load the installed tokens' raw rows, rows (n,
 * bytes_per_slot) as engine_kv_save gave them, token i into its slot at
 * its position. Under the per-head store a head whose K and V of a token
 * are all zero bits dropped it (a save gives zeros where a head keeps no
 * entry): the heads get their own sets back, not every token each. */
int kv_cache_load_rows(struct kv_cache *c, const uint8_t *rows, struct err *e);
/* Compute the K/V of the installed tokens by running them at their stored
 * positions (n_batch chunks; a new chunk wherever positions stop rising);
 * afterwards kv_cache_logits() holds the last token's next-token logits.
 * The tokens' metadata is left as restored. Under the per-head store every
 * head keeps every token then: KVS_EUNSUPPORTED when they do not fit its
 * rows (a snapshot's raw rows, kv_cache_load_rows, say which heads keep
 * what). */
int kv_cache_recompute(struct kv_cache *c, struct err *e);
/* Statistics carried by kv_restore (tokens fed, evicted, eviction rounds). */
uint32_t kv_cache_turn(const struct kv_cache *c);

/* ---- going back (kv_snap.c) ---- */

/* The cache's state now, to go back to (caller owns; kv_snap_free): its
 * tokens' metadata, accumulators, keep-sets, free slots, logits and
 * statistics, not the engine's K/V rows nor the configuration. */
struct kv_snap;
struct kv_snap *kv_cache_snap(const struct kv_cache *c);
void kv_snap_free(struct kv_snap *s);
/*
 * Go back to snapshot s of this cache: the tokens fed since leave their
 * slots and the metadata becomes s's, so the next feed continues as it did
 * after s was taken (the same slots, positions and logits). The policy,
 * budget and sparse mode stay as set. Exact, and allowed, only while every
 * token of s still holds its slot and position (nothing evicted, compacted
 * or recalled since): otherwise KVS_ESTATE saying what happened, and the
 * cache is unchanged.
 */
int kv_cache_back(struct kv_cache *c, const struct kv_snap *s, struct err *e);

/* ---- reading ---- */

uint32_t kv_cache_n(const struct kv_cache *c);
uint32_t kv_cache_budget(const struct kv_cache *c);
const struct kv_tok *kv_cache_toks(const struct kv_cache *c); /* (n) cache order */
/* Accumulated attention, (n, n_layer, n_head_kv), when the policy tracks it, else NULL. */
const float *kv_cache_acc(const struct kv_cache *c);
/* Cache index of the token at original position orig_pos, or -1 (evicted / never). */
int32_t kv_cache_find(const struct kv_cache *c, int32_t orig_pos);
/* Which (layer, KV head) pairs keep cached token i: out, (n_layer,
 * n_head_kv), gets 1 where the pair keeps it and 0 where that head dropped
 * it; returns how many keep it (with one keep-set: every pair, for every
 * cached token). i must be below kv_cache_n. */
uint32_t kv_cache_token_heads(const struct kv_cache *c, uint32_t i, uint8_t *out);
/* The same for every cached token: (n, n_layer, n_head_kv) in cache order
 * (caller owns; free), or NULL with one keep-set (every pair keeps every
 * token); n_layer and n_head_kv get the map's shape either way. */
uint8_t *kv_cache_head_map(const struct kv_cache *c, uint32_t *n_layer, uint32_t *n_head_kv);
const struct kv_policy *kv_cache_policy(const struct kv_cache *c);
void kv_cache_stats(const struct kv_cache *c, struct kv_stats *s);
struct engine *kv_cache_engine(const struct kv_cache *c);
/* Next original position (tokens fed since the last clear). */
int32_t kv_cache_next_pos(const struct kv_cache *c);

/* Verify the cache's invariants (kv-int.h lists them: counts within the
 * budget, cache order, each slot held once or free once, positions agreeing
 * with the engine's, accumulator rows in step with the tokens): KVS_ESTATE
 * with a message naming the first broken one. A debug build runs it after every eviction,
 * repositioning, restore and forward, and aborts on a failure. */
int kv_cache_check(const struct kv_cache *c, struct err *e);

/* Summaries of one attention row w, (n) probabilities summing to 1: the
 * pure function behind kv_head_summary, for tests and views. scratch is
 * (n). */
void kv_head_summarize(const float *w, uint32_t n, uint32_t topk, float *scratch,
                       struct kv_head_summary *out);

#endif
