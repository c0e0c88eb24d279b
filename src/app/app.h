/*
 * app.h: the application layer's one public header: length targets, the
 * generation context, the chat session and its worker thread, KV traces.
 * The layer's insides (struct gen's fields, the length controller's token
 * classes and per-turn state) are in app-int.h, for src/app/ and its tests.
 *
 * gen.c   a generation context (struct gen, opaque): one model, one
 *         engine, one sampler and the KV cache with its retention policy
 *         (kv_cache.h). It feeds turns, samples, and streams text. The
 *         command-line tools (generate, logits, perplexity, bench, eval)
 *         and the chat session sit on it; accessors hand out its parts.
 * session.c a chat session over one gen: the system prompt, the turns (user
 *         text in, reply out, stop reason, timings) and their history, with
 *         hooks for each turn, reply token and KV-cache event. Synchronous:
 *         the front ends run it on a worker thread (TUI) or directly (the
 *         line-mode chat, Lua scripts); the only thread-safe entry is
 *         session_cancel.
 * worker.c a session on a worker thread: commands in (chat text, cancel,
 *         policy, budget, pin, reset), events out (deep copies of what the
 *         session hooks deliver), for front ends whose main thread owns
 *         the screen and the Lua states.
 * compare.c a second retention policy on the same dialogue (:compare): a
 *         shadow session over the same weights replays the exchanges and
 *         follows new ones; kept-set overlap and first divergence.
 * trace.c KV-cache events as JSON lines (kvscope generate --trace).
 * lenctl.c length control at decoding time: Ruler's target levels and
 *         windows, the \w+ word counter, and the turn controller that biases
 *         logits toward ending inside a target window and decides why a
 *         reply stops (end token, length target, forced, max tokens, stop
 *         string, user).
 */
#ifndef KVS_APP_H
#define KVS_APP_H

#include "base/base.h"
#include "engine/engine.h"
#include "kv/kv_cache.h"
#include "engine/sampler.h"
#include "model/model.h"
#include "store/store.h"

#include <stdatomic.h>
#include <stdio.h>

/* ---- lenctl.c: length targets (methods.md section 9) ---- */

/* The unit a length target counts. */
enum len_unit { LEN_NONE = 0, LEN_WORDS, LEN_TOKENS };

#define LEN_OPEN UINT32_MAX /* a window without upper bound (Ruler's ">800") */

/* A window (lo, hi], left-open and right-closed as Ruler scores it. */
struct len_window {
	uint32_t lo, hi;
};
/* Whether n lies in w. */
bool len_window_hit(struct len_window w, uint32_t n);

/* One row of Ruler's TLG table (methods.md 9.1, 9.2): the target, its
 * precise (PM) and flexible (FM) windows, and the level 0-2 it belongs to. */
struct len_level {
	const char *name; /* "10" .. "700", ">800" */
	uint32_t target;  /* 800 for ">800" */
	struct len_window pm, fm;
	int group; /* Ruler's Level 0, 1 or 2 */
};
extern const struct len_level len_levels[];
extern const size_t len_n_levels;
/* The level named name ("150", ">800", "800+"), or NULL. */
const struct len_level *len_level_find(const char *name);

/* What a turn should measure: unit LEN_NONE leaves generation untouched. */
struct len_target {
	enum len_unit unit;
	uint32_t n;            /* the target */
	struct len_window win; /* where to land: a level's PM window, else n +- max(10, n/10) */
	int level;             /* index in len_levels, or -1 */
	bool instruct;         /* also ask in the prompt (len_instruction); default true */
};
/* Words target n (a Ruler level's window when n is one of its targets). */
void len_target_words(struct len_target *t, uint32_t n);
/* Parse "120", "120w", "200t", a level name (">800", "800+") or "off"
 * (unit LEN_NONE). KVS_EARG naming what was expected. */
int len_target_parse(const char *s, struct len_target *t, struct err *e);
/* "150 words (130, 170]" and the like, for status lines. */
const char *len_target_format(const struct len_target *t, char *buf, size_t cap);
/* The prompt-side sentence ("The response should have a word count of N
 * words.", Ruler's wording, methods.md 9.1), caller owns; NULL when there is
 * no target or t->instruct is off. */
char *len_instruction(const struct len_target *t);
/* text + "\n" + the sentence (or a copy of text when there is none). */
char *len_instruct_text(const char *text, const struct len_target *t);

/* Ruler's word count: the number of \w+ matches (methods.md 9.2), fed in
 * pieces of UTF-8 (a sequence may be split between pieces). */
struct wordcount {
	uint32_t words;
	bool in_word;
	uint8_t pend[4];
	uint8_t n_pend;
};
/* Start a count at zero. */
void wordcount_init(struct wordcount *w);
/* Count the words of the next piece s[0..n). */
void wordcount_feed(struct wordcount *w, const char *s, size_t n);
/* The words of a whole text. */
uint32_t wordcount_text(const char *s, size_t n);
/* Whether text ends a sentence: . ! ? or an ellipsis, then maybe closing
 * quotes or brackets and white space; not a list number ("2.") nor "e.g.". */
bool text_ends_sentence(const char *s, size_t n);

/* The controller's knobs (lenctl.c says what each does). */
struct lenctl_params {
	float beta;         /* end bias at sentence ends, per unit of (w - target) / (hi - target): 8 */
	float gamma;        /* end bias at sentence ends at w = target: 4 */
	float delta;        /* sentence-end punctuation bias near the ceiling: 6 */
	uint32_t grace;     /* tokens allowed at the ceiling before a forced end: 8 */
	uint32_t no_repeat; /* ban a token that would repeat an earlier n-gram of this many tokens
	                     * of the reply (0: off; default 4); only under a length target */
};
/* The defaults named in the fields' comments. */
void lenctl_params_default(struct lenctl_params *p);

/* What the next replies are steered by: the length target, the
 * controller's knobs and the stop strings (gen_set_turn). */
struct gen_turn_opts {
	struct len_target len; /* unit LEN_NONE: no length control */
	struct lenctl_params ctl;
	const char *const *stops; /* stop strings (borrows until the turn ends), or NULL */
	size_t n_stops;
};
/* No length target, the default knobs, no stop strings. */
void gen_turn_opts_default(struct gen_turn_opts *o);

/* ---- gen.c: the generation context ---- */

/* What the last reply produced. */
struct gen_reply_info {
	int stop;   /* enum gen_stop */
	bool ended; /* an end-of-turn token closed it (gen_stop_ended of its own
	             * reason, before a late cancel made the reason user) */
	uint32_t n_tokens, n_words;
	double surprisal_sum; /* -ln p(token) under the model's own (unbiased) logits */
	int32_t *ids;         /* (n_tokens) the sampled tokens */
	float *surprisal;     /* (n_tokens) */
	size_t cap;
};

struct gen_config {
	const char *model_path;
	struct engine_config engine;
	struct sampler_params sampler;
	uint32_t n_batch;          /* prefill chunk in tokens (default 512) */
	struct kv_config kv;       /* retention policy, budget (0: every slot), capture */
	const char *chat_template; /* chat layout by name (--template), NULL: recognise */
	bool no_think;             /* qwen3: answer without a thinking block (--no-think) */
};
/* The default model, engine, sampler and KV settings. */
void gen_config_default(struct gen_config *c);

/* A reply token as gen_reply produces it (after it was fed to the cache). */
struct gen_token {
	int32_t id;
	const struct kv_tok *meta; /* its cache entry (surprisal, entropy when token stats are on) */
	const char *text;          /* text this token completed (may be empty; whole UTF-8) */
	size_t len;
	bool eog; /* the end-of-generation token (fed, no text) */
};

/* The generation context; its fields are in app-int.h. */
struct gen;

/* Run toks[0..m) at positions and slots start .. start+m-1 with slots
 * 0 .. start+m-1 visible: the plain linear cache that the measuring tools
 * (logits, perplexity, bench) use, bypassing retention. */
int gen_run_linear(struct engine *eng, const int32_t *toks, uint32_t start, uint32_t m,
                   enum engine_logits logits, struct engine_out *out, struct err *e);

/* Load the model, create the engine and the sampler. */
int gen_open(struct gen **out, const struct gen_config *c, struct err *e);
/* A shadow of base (borrows base's model and weights until gen_close of the
 * shadow, which comes first): an engine sharing base's weights with a
 * cache of its own (engine_create_shared), a KV cache under kv (budget 0:
 * as many slots as base's engine), base's chat layout, turn options and
 * sampler settings with the random generator in state rng (NULL: fresh
 * from base's seed). KVS_EUNSUPPORTED when the backend cannot share. */
int gen_open_shadow(struct gen **out, struct gen *base, const struct kv_config *kv,
                    const struct mt19937 *rng, struct err *e);
/* Free the context, its engine, sampler and model (NULL is fine). */
void gen_close(struct gen *g);
/* The context size in tokens (engine slots). */
uint32_t gen_n_ctx(const struct gen *g);
/* The vocabulary size (the length of a logits row). */
uint32_t gen_n_vocab(const struct gen *g);
/* The prefill chunk in tokens (gen_config.n_batch, 512 when 0). */
uint32_t gen_n_batch(const struct gen *g);
/* The model (hyper-parameters, name, file) and its vocabulary. */
const struct model *gen_model(const struct gen *g);
/* The model's vocabulary (gen_model(g)->vocab). */
const struct vocab *gen_vocab(const struct gen *g);
/* The engine (backend, threads, the linear cache of gen_run_linear). */
struct engine *gen_engine(const struct gen *g);
/* The sampler (seed, parameters). */
struct sampler *gen_sampler(const struct gen *g);
/* The KV cache and its retention policy (policy, budget, events, stats). */
struct kv_cache *gen_kv(const struct gen *g);
/* Take up a change made through gen_kv that evicted tokens (a new policy
 * or budget): the context counts what the cache holds now. */
void gen_kv_changed(struct gen *g);
/* The model's chat template, or NULL when it has none (e says why). */
const struct chat_template *gen_chat(const struct gen *g, struct err *e);
/* The next-token logits (n_vocab) after the last fed token, or NULL. */
const float *gen_logits(const struct gen *g);
/* What the last gen_reply produced. */
const struct gen_reply_info *gen_last_reply(const struct gen *g);
/* The turn options the next replies use (gen_set_turn). */
const struct gen_turn_opts *gen_turn(const struct gen *g);

/* Load time and the prefill and decode totals since gen_open. */
struct gen_timing {
	double load_ms; /* model_load + engine_create */
	double prefill_ms, decode_ms;
	uint64_t n_prefilled, n_decoded; /* tokens */
};
void gen_timings(const struct gen *g, struct gen_timing *t);
/* Append tokens to the cache in n_batch chunks, evicting as the policy says;
 * afterwards last_logits holds the next-token logits. KVS_ERANGE when they
 * would not fit (policy full). */
int gen_feed(struct gen *g, const int32_t *ids, size_t n, struct err *e);
/* Begin a turn of role with about m incoming tokens (eviction between
 * turns and the policy's memory decay happen here). */
int gen_begin_turn(struct gen *g, enum kv_role role, size_t m, struct err *e);
/* Role of the tokens fed next. */
void gen_set_role(struct gen *g, enum kv_role role);
/* Tokenize and feed a rendered prompt as role. */
int gen_feed_prompt(struct gen *g, const struct chat_prompt *p, enum kv_role role, struct err *e);
/* Sample the next token from last_logits (does not feed it). */
int32_t gen_sample(struct gen *g);
/* Forget the conversation (cache and penalty history). */
void gen_reset(struct gen *g);
/* Go back to the cache's snapshot s (kv_cache_snap of gen_kv(g)), taken
 * after a prompt fed from gen_reset: its tokens and next-token logits, the
 * penalty history empty again; the next reply then decodes as it did after
 * that prompt. KVS_ESTATE (nothing changed) where the cache cannot go back
 * (kv_cache_back: tokens evicted or moved since). */
int gen_back(struct gen *g, const struct kv_snap *s, struct err *e);
/* Tokenize a chat prompt (markers as exact tokens, text without special parsing). */
int gen_tokenize_prompt(struct gen *g, const struct chat_prompt *p, int32_t **ids, size_t *n,
                        struct err *e);

/* Why a reply stopped. eos: the model ended the turn (no length target);
 * length-target: it ended inside the target window under the controller;
 * forced: the controller had to end it (last resort, see lenctl.c);
 * max-tokens; stop-string: a stop string appeared (it is not emitted);
 * user: the cancel flag was raised; context: the cache was full. */
enum gen_stop {
	GEN_STOP_EOS = 0,
	GEN_STOP_LENGTH,
	GEN_STOP_FORCED,
	GEN_STOP_MAX_TOKENS,
	GEN_STOP_STRING,
	GEN_STOP_USER,
	GEN_STOP_CONTEXT,
};
/* "eos", "length-target", "forced", "max-tokens", "stop-string", "user", "context". */
const char *gen_stop_name(enum gen_stop s);
/* True when the reply ended with the model's end-of-turn token (fed to the
 * cache): eos, length-target and forced. Otherwise the caller closes the turn. */
bool gen_stop_ended(enum gen_stop s);

/* Options for the next replies (copied; the stop strings are not):
 * NULL restores the defaults (no target, no stop strings). */
void gen_set_turn(struct gen *g, const struct gen_turn_opts *o);
/* Set just the length target (NULL: none). */
void gen_set_length_target(struct gen *g, const struct len_target *t);

/* A reply's cancel flag (an atomic_int any thread may ask through):
 * NONE, ASKED (stop at the next token, reason user) or SEALED (the reply
 * ended: a cancel reaches nothing until the next gen_reply re-arms it).
 * gen_reply seals it as it returns, so whoever was told a cancel reached
 * the reply sees that reply stop with "user": a cancel that came after its
 * last token was checked, while it was finishing, still counts. */
enum gen_cancel { GEN_CANCEL_NONE, GEN_CANCEL_ASKED, GEN_CANCEL_SEALED };
/* Ask the reply behind flag to stop; false when it had ended (sealed). */
bool gen_cancel_ask(atomic_int *flag);
/* A new exchange or reply: a sealed flag takes cancels again (one already
 * asked stays asked). */
void gen_cancel_open(atomic_int *flag);
/* Let gen_reply stop (reason user) once *flag is ASKED (gen_cancel_ask),
 * from any thread. NULL: no cancellation. A session sets its own
 * (session_cancel); a front end without one sets this. */
void gen_set_cancel(struct gen *g, atomic_int *flag);

/* Called with each piece of complete UTF-8 text as it is produced. */
typedef void (*gen_text_fn)(const char *text, size_t len, void *ud);

/* A growing NUL-terminated text; gen_text_collect (a gen_text_fn whose ud is
 * a struct gen_text) appends each piece. */
struct gen_text {
	char *s; /* NULL until something (even "") was appended */
	size_t n, cap;
};
void gen_text_collect(const char *text, size_t len, void *ud);

/* Sample and feed (as the assistant) up to max_tokens tokens (stopping at end-of-generation,
 * which is fed too so the turn is closed in the cache), streaming text to fn.
 * Returns the status; *stop says why it ended; *n_out counts sampled tokens.
 * The turn options (gen_set_turn) apply; without a length target, stop
 * strings or cancel flag the tokens are exactly those of plain sampling.
 * gen_last_reply(g) describes the reply afterwards. */
int gen_reply(struct gen *g, uint32_t max_tokens, gen_text_fn fn, void *ud, enum gen_stop *stop,
              uint32_t *n_out, struct err *e);

/* ---- session.c ---- */

struct session_config {
	struct gen_config gen;
	const char *system;  /* system prompt; NULL: the chat template's default, "": none */
	uint32_t max_tokens; /* per reply (default 512) */
};
/* gen_config_default, the template's system prompt, 512 tokens per reply. */
void session_config_default(struct session_config *c);

/* One finished exchange: the user's text and the reply. */
struct session_turn {
	uint32_t index;   /* 0-based, in this conversation */
	uint32_t kv_turn; /* the KV cache's turn id of the user part (kv_tok.turn) */
	char *user;       /* the user's text */
	char *reply;      /* the reply as streamed */
	enum gen_stop stop;
	int32_t first_pos; /* original position of the turn's first token */
	uint32_t n_prompt; /* tokens fed for the user part (system, markers included) */
	uint32_t n_reply;  /* tokens sampled */
	uint32_t n_words;  /* \w+ words of the reply (Ruler's count, lenctl.c) */
	double prefill_ms, decode_ms;
	double started_unix;   /* wall-clock seconds since the epoch */
	bool restarted;        /* the cache was full: this turn started in an empty cache */
	int32_t *ids;          /* (n_reply) the sampled tokens (lent until the session forgets
	                      * the turn; NULL in worker events) */
	uint32_t max_tokens;   /* the limits the reply was made under: tokens per reply, */
	struct len_target len; /* the length target (a replay repeats them) */
};

/* The cold tier of a session (session-cold.c): what the retention policy
 * evicts goes to the saved session's database, and each user turn recalls
 * the blocks its scorer ranks best (store.h, store_cold_*). The scorers are
 * one table (session_recall_parse, session_recall_help). */
enum session_recall {
	SESSION_RECALL_OFF = 0,
	SESSION_RECALL_FTS,     /* the turn's words, BM25 */
	SESSION_RECALL_SUMMARY, /* the turn's probe queries against the key bounds */
	SESSION_RECALL_BOTH,    /* both rankings fused (the default) */
};
/* "off", "fts", "summary" or "both"; KVS_EARG naming them otherwise. */
int session_recall_parse(const char *s, enum session_recall *out, struct err *e);
const char *session_recall_name(enum session_recall r);
/* One line per scorer: name and help. */
void session_recall_help(FILE *fp);
/* "off|fts|summary|both" (static). */
const char *session_recall_names(void);
struct session_cold_config {
	bool on;
	uint32_t block;      /* tokens per block (default 64) */
	uint32_t max_tokens; /* per session (--cold-max; 0: no cap) */
	enum session_recall recall;
	uint32_t recall_budget; /* tokens per turn (0: an eighth of the KV budget) */
	bool recall_near;       /* recalled blocks placed right before their turn (compact policies) */
	/* A custom scorer (a Lua recall hook): with recall not off, it ranks
	 * the blocks instead (summary scores computed for it where a probe can
	 * run); borrowed until the cold tier is set again or the session ends. */
	const char *scorer_name;
	store_cold_scorer_fn scorer;
	void *scorer_ud;
};
enum session_cold_kind {
	SESSION_COLD_WRITE = 0, /* queued blocks written (blocks, tokens, drops) */
	SESSION_COLD_RECALL,    /* blocks came back for a turn (hits) */
	SESSION_COLD_STOP,      /* cold writes stopped (msg: why; the chat goes on) */
	SESSION_COLD_REFUSED,   /* the saved cold tier is not this model's (msg); cold tier off */
	SESSION_COLD_FAILED,    /* a recall could not be placed (msg); the turn goes on */
};
struct session_cold_event {
	enum session_cold_kind kind;
	uint32_t index; /* the exchange (0-based) it belongs to */
	uint32_t blocks, dropped_blocks;
	uint64_t tokens, dropped_tokens;
	const struct store_cold_hit *hits; /* RECALL: (n_hits) best first */
	size_t n_hits;
	const char *scorer; /* RECALL: the ranking used ("both", "summary", "fts", a Lua name) */
	const char *msg;
};

struct session_hooks {
	void (*turn_start)(void *ud, uint32_t index, const char *user);
	void (*token)(void *ud, const struct gen_token *t);
	/* the reply's text as it streams: every piece, the final flush of an
	 * incomplete UTF-8 tail included (token texts may miss that tail) */
	void (*text)(void *ud, const char *text, size_t len);
	void (*turn_end)(void *ud, const struct session_turn *t);
	void (*kv)(void *ud, const struct kv_event *ev);
	/* after an exchange was committed to the store (status KVS_OK) as turn
	 * index of saved session id, or not (status and msg say why; the
	 * exchange stays queued for the next commit) */
	void (*saved)(void *ud, int64_t id, uint32_t index, int status, const char *msg);
	/* the cold tier wrote, recalled, stopped or was refused */
	void (*cold)(void *ud, const struct session_cold_event *ev);
	/* the document's keys being clustered (squeezed): done of total
	 * (layer, KV head) pairs; done == total once */
	void (*progress)(void *ud, uint32_t done, uint32_t total);
	/* one line for the user: the document clustered, its clusters restored
	 * or refused (then clustered again), an explicit --sparse overriding */
	void (*notice)(void *ud, const char *msg);
	void *ud;
};

/* Where a session saves its exchanges (store.h). */
struct session_store {
	struct store *st;       /* open read-write; outlives the session */
	int64_t id;             /* the saved session; 0: created at the first exchange */
	const char *title;      /* for a new one (NULL: "session N") */
	const char *model_path; /* the model file and its sha256, recorded with it */
	const char *model_sha256;
	const char *sampler; /* the sampler settings, as text */
	bool snapshots;      /* write a KV snapshot with each commit */
};

struct session;

/* Load the model and start an empty conversation. */
int session_open(struct session **out, const struct session_config *c, struct err *e);
/* A shadow of base for :compare (borrows base until session_close of the
 * shadow, which comes first): the same model and weights (gen_open_shadow),
 * system prompt, chat layout, sampler settings and turn options, its own
 * KV cache under kv, and the sampler's random generator as it was when
 * base's conversation began, so that replaying base's exchanges under the
 * same policy gives the same replies token for token. No hooks. */
int session_open_shadow(struct session **out, struct session *base, const struct kv_config *kv,
                        struct err *e);
/* Free the session, its turns and its gen (NULL is fine). */
void session_close(struct session *s);
/* Hooks are called on the session's thread during session_chat (copied). */
void session_set_hooks(struct session *s, const struct session_hooks *h);
/* One exchange: feed text as a user turn (the system prompt first in a new
 * conversation), stream the reply and close the turn in the cache. On
 * success the turn is session_turn_at(s, session_n_turns(s) - 1). On a
 * failure the conversation starts over (the cache is cleared). */
int session_chat(struct session *s, const char *text, struct err *e);
/* Feed the user part of an exchange (the system turn first in a new
 * conversation, the message, the reply header) without replying; extra
 * counts the tokens the caller feeds after it in the same turn, so that
 * eviction makes room once. Not recorded in the history. */
int session_prompt(struct session *s, const char *text, uint32_t extra, struct err *e);
/* Feed text (plain tokenization, no control tokens) as role. */
int session_feed_text(struct session *s, const char *text, enum kv_role role, struct err *e);
/* Close a reply fed by hand: what follows the end-of-turn token when it was
 * fed (eot_fed), else the closing marker and what follows it. */
int session_end_reply(struct session *s, bool eot_fed, struct err *e);
/* Stop the reply in progress (any thread; the turn ends with stop "user"),
 * or, before its reply started, the exchange's reply before its first
 * token. False when the last reply had ended and no new one began: the
 * cancel reaches nothing (gen_cancel_ask). */
bool session_cancel(struct session *s);
/* Withdraw a cancel that has not stopped a reply yet, and re-arm (any
 * thread: the next exchange starts not cancelled). */
void session_cancel_clear(struct session *s);
/* Make the next exchange's reply stop before its first token (a cancel
 * queued before the exchange began). */
void session_cancel_next(struct session *s);
/* Forget the conversation: empty cache, no turns. */
void session_reset(struct session *s);
/* Replace the system prompt (takes effect in the next new conversation);
 * NULL: the chat template's default, "": none. */
void session_set_system(struct session *s, const char *system);
/* The system prompt as set (NULL: the template's default). */
const char *session_system(const struct session *s);
/* Tokens per reply from the next exchange on. */
void session_set_max_tokens(struct session *s, uint32_t n);
/* Finished exchanges in this conversation. */
uint32_t session_n_turns(const struct session *s);
/* Exchange i (0-based), or NULL past the end. */
const struct session_turn *session_turn_at(const struct session *s, uint32_t i);
/* The generation context (model, engine, KV cache) for reading and for
 * policy or budget changes between turns. */
struct gen *session_gen(const struct session *s);
/* Save every finished exchange to a store (NULL: stop saving): each
 * commits in one transaction with its tokens, memory events and a KV
 * snapshot; an interrupted reply (stop "user") is saved as incomplete.
 * With ss->id 0 and exchanges already in this conversation, the saved
 * session is created now and they are committed first (a failed commit
 * keeps them queued for the next exchange's). */
int session_set_store(struct session *s, const struct session_store *ss, struct err *e);
/* Exchanges of this conversation not yet committed to a store (all of
 * them when not saving). */
uint32_t session_n_unsaved(const struct session *s);
/* Continue saved session ss->id: restore its retained KV cache (snapshot,
 * else recompute; info says which) and save the next exchanges to it. */
int session_resume(struct session *s, const struct session_store *ss,
                   struct store_resume_info *info, struct err *e);
/* The saved session's id (0: none yet). */
int64_t session_store_id(const struct session *s);

/* ---- the pinned document (--doc, :doc) ---- */

/* What the session's document is. */
struct session_doc_info {
	const char *path;              /* as given (lent until the next session_set_doc), or NULL */
	uint32_t n_tokens;             /* its message's tokens, markers included */
	size_t n_bytes;                /* its text's bytes (what the session holds) */
	uint32_t n_cached;             /* document tokens in the cache now (KV_FLAG_DOC) */
	bool clustered;                /* squeezed's index is installed */
	struct engine_squeeze_info sq; /* when clustered */
};
/*
 * Load the text file at path as the document of every new conversation
 * (NULL: none): fed after the system turn as a message of its own, pinned
 * (KV_FLAG_PINNED | KV_FLAG_DOC, and the turn before it pinned too, so no
 * retention policy evicts or moves it). A conversation already begun starts
 * over (*restarted true). KVS_EIO for a file that cannot be read, KVS_EARG
 * (one line naming the file) for an empty one, a binary one (a NUL byte,
 * not UTF-8) or one whose tokens do not fit the KV budget beside a
 * conversation; nothing changes then.
 */
int session_set_doc(struct session *s, const char *path, bool *restarted, struct err *e);
/* Whether the session has a document (info may be NULL). */
bool session_doc(const struct session *s, struct session_doc_info *info);
/* Squeezed's index for the document in the cache, when the sparse mode is
 * squeezed and none is installed: from the saved session's store when it
 * holds one for this model and document, else clustered now (progress and
 * notice hooks); then kept in the store when saving. KVS_OK with nothing to
 * do otherwise. */
int session_squeeze(struct session *s, struct err *e);
/* Turn the cold tier on (c->on) or off. It writes once the session saves
 * (session_set_store or session_resume, before or after this call); until
 * then evicted blocks wait in memory. */
void session_set_cold(struct session *s, const struct session_cold_config *c);

/* A cold tier driven by hand (session-cold.c): what a session does with
 * one, for callers that feed a gen themselves (kvscope eval recall). Per
 * user turn: scold_recall, the turn's eviction (gen_begin_turn with the
 * room it returns added), scold_place, the feed, then scold_flush. */
struct session_cold;
/* A cold tier over g's cache (its listener set) with config c. */
void scold_open(struct session_cold **out, struct gen *g, const struct session_cold_config *c);
/* Unset the listener and free (NULL is fine). */
void scold_free(struct session_cold *sc);
/* Write to saved session id of st (model_sha: the model's); a refusal is
 * reported through the hooks and turns the cold tier off (false). */
bool scold_attach(struct session_cold *sc, struct store *st, int64_t id, const char *model_sha,
                  const struct session_hooks *h);
/* Before a user turn of m incoming tokens (ids, (n_ids), its prompt):
 * choose the blocks text recalls, or reserve the recall budget for a
 * scorer that probes; returns the tokens the turn's eviction must make
 * room for beside m. */
uint32_t scold_recall(struct session_cold *sc, const char *text, const int32_t *ids, size_t n_ids,
                      uint32_t m, uint32_t index, const struct session_hooks *h);
/* After the turn's eviction: probe and choose (a probing scorer), then
 * place the chosen blocks. */
void scold_place(struct session_cold *sc, const struct session_hooks *h);
/* After a commit: write the queued blocks (exchange index). */
void scold_flush(struct session_cold *sc, uint32_t index, const struct session_hooks *h);


/* A saved session's transcript as a front end replays it when resuming:
 * the texts of its last turns, oldest first (the store's turn rows). */
struct session_recap_turn {
	char *user, *reply;
};
struct session_recap {
	int64_t id;
	char *title;
	char *system;                     /* the saved system prompt, or NULL */
	uint32_t n_turns;                 /* turns saved */
	uint32_t first;                   /* index of turns[0]: the turns before it were not read */
	uint32_t n;                       /* turns read */
	struct session_recap_turn *turns; /* (n) */
	uint32_t n_tokens;                /* tokens the resume restored (the caller sets it) */
};
/* Read saved session id's last max_turns turns (all when it has fewer;
 * none when max_turns is 0) into r (free with session_recap_free). */
int session_recap_read(struct store *st, int64_t id, uint32_t max_turns, struct session_recap *r,
                       struct err *e);
/* Free what session_recap_read filled (also after a failed read). */
void session_recap_free(struct session_recap *r);
/* "resumed 'TITLE' (N turns, K tokens retained)", the line front ends put
 * between a replayed transcript and the new exchanges. */
const char *session_recap_line(const struct session_recap *r, char *buf, size_t cap);

/* ---- compare.c: a second policy on the same dialogue (:compare) ---- */

/* One exchange of one side, as a comparison shows it. */
struct compare_turn {
	int32_t first_pos; /* original position of its first token, in its side's stream */
	uint32_t n_prompt; /* tokens of its user part */
	uint32_t n_reply;  /* tokens sampled */
	uint8_t stop;      /* enum gen_stop */
	bool restarted;    /* its cache started over at this exchange */
	char *reply;
	int32_t *ids; /* (n_reply) */
};

/* One side: a session's policy, its exchanges, what its cache keeps now. */
struct compare_side {
	char policy[160];
	uint32_t budget;
	struct compare_turn *turns; /* (n_turns) */
	uint32_t n_turns;
	struct kv_tok *kept; /* (n_kept) the cached tokens, cache order */
	uint32_t n_kept;
	int32_t next_pos; /* the stream's next original position */
};

/* The one-line summary. */
struct compare_sum {
	uint32_t kept[2]; /* tokens each cache holds */
	uint32_t overlap; /* places of the dialogue both hold, with the same token */
	uint32_t turns;   /* exchanges both sides have */
	int32_t div_turn; /* the first exchange whose replies part (0-based), -1 none */
	int32_t div_tok;  /* the first reply token where they do, -1 none */
};

enum compare_state {
	COMPARE_REPLAYING = 0, /* catching up with the session's exchanges */
	COMPARE_FOLLOWING,     /* caught up: it follows each new exchange */
	COMPARE_STOPPED,       /* cancelled, turned off or failed (msg says which) */
};

/* What a front end draws: side[0] the session, side[1] the shadow. */
struct compare_view {
	enum compare_state state;
	uint32_t done, total; /* exchanges the shadow has, of those to replay */
	struct compare_side side[2];
	struct compare_sum sum;
	uint64_t kv_bytes; /* the shadow's KV cache at its budget */
	/* the bytes of each side's reply at sum.div_turn before its first
	 * parting token (the text of reply tokens 0 .. div_tok-1) */
	uint32_t div_byte[2];
	char msg[256]; /* why it stopped */
};

/* The first index where a[0..na) and b[0..nb) differ (the shorter one's
 * length when one is a prefix of the other), -1 when they are equal. */
int32_t compare_diverge(const int32_t *a, uint32_t na, const int32_t *b, uint32_t nb);
/* The place of orig_pos in side s: its exchange (in the cache's epoch,
 * after its last restart) and the offset from that exchange's first token;
 * false before the epoch's first token or without exchanges. */
bool compare_place(const struct compare_side *s, int32_t orig_pos, uint32_t *turn, uint32_t *off);
/* Kept tokens of a at places where b keeps the same token. */
uint32_t compare_overlap(const struct compare_side *a, const struct compare_side *b);
/* Kept counts, overlap and the first divergence of two sides. */
void compare_summarize(const struct compare_side side[2], struct compare_sum *out);
/* Free a view and what it holds (NULL is fine). */
void compare_view_free(struct compare_view *v);

struct compare;
/* A comparison of base (borrows base until compare_close) with a shadow
 * session under policy spec ("NAME", "NAME:k=v,...") and budget (tokens;
 * 0: every slot; < 0: base's budget). KVS_ESTATE without an exchange to
 * replay or for a resumed conversation, KVS_EARG for a bad policy or
 * budget, KVS_EUNSUPPORTED where the backend cannot share its weights. */
int compare_open(struct compare **out, struct session *base, const char *spec, int64_t budget,
                 struct err *e);
void compare_close(struct compare *c);
/* The shadow session (for cancelling its reply from another thread:
 * session_cancel). */
struct session *compare_shadow(const struct compare *c);
/* The shadow's KV cache in bytes at its budget. */
uint64_t compare_kv_bytes(const struct compare *c);
/* Exchanges of base the shadow has not replayed yet. */
uint32_t compare_pending(const struct compare *c, const struct session *base);
/* Replay base's next exchange the shadow lacks (none: nothing to do). */
int compare_step(struct compare *c, const struct session *base, struct err *e);
/* Whether a cancel stopped a replayed reply (the comparison is then
 * incomplete and should be closed). */
bool compare_stopped(const struct compare *c);
/* The comparison now as a view (caller owns; compare_view_free). */
struct compare_view *compare_view_make(const struct compare *c, const struct session *base,
                                       enum compare_state state, uint32_t total);

/* ---- worker.c ---- */

enum worker_cmd_kind {
	WORKER_CHAT = 0, /* text: one exchange */
	WORKER_POLICY,   /* text: a policy spec, "NAME k=v ..." */
	WORKER_BUDGET,   /* n: tokens (0: every slot) */
	WORKER_PIN,      /* n: original position (as int32) */
	WORKER_UNPIN,
	WORKER_RESET,      /* a new conversation */
	WORKER_MAX_TOKENS, /* n: per reply */
	WORKER_SNAPSHOT,   /* send the cache's tokens now */
	WORKER_SCORER,     /* policy + scorer: a score provider on a built-in policy
	                     * (e.g. a Lua policy); the provider is called on the worker */
	WORKER_SAVE,       /* text: a title or NULL: save the conversation, its exchanges so
	                     * far and the next ones (worker_set_store gives the database) */
	WORKER_LOAD,       /* text: a saved session's id or title: resume it; n: at most
	                     * this many of its last turns in the transcript event */
	WORKER_LEN,        /* text: a length target ("120w", "200t", "150", "off") */
	WORKER_SPARSE,     /* text: a sparse attention spec ("quest:budget=512", "off") */
	WORKER_DOC,        /* text: a document file to pin (session_set_doc), or "off" */
	WORKER_COMPARE,    /* text: a policy spec to compare with (n: its budget, 0 every
	                     * slot, < 0 the session's), or "off" (compare.c) */
};

struct worker_cmd {
	enum worker_cmd_kind kind;
	const char *text; /* copied */
	int64_t n;
	struct kv_policy policy; /* WORKER_SCORER: the base policy */
	struct kv_scorer scorer; /* WORKER_SCORER (borrows name until the scorer is replaced) */
};

enum worker_event_kind {
	WORKER_EV_TURN_START = 0, /* index, user */
	WORKER_EV_TOKEN,          /* token (token.meta -> meta, token.text: the event owns them) */
	WORKER_EV_TURN_END,       /* turn (the event owns its strings) */
	WORKER_EV_KV,             /* kv (the event owns its arrays and strings) */
	WORKER_EV_SNAPSHOT,       /* toks: the cached tokens in cache order; stats; next_pos */
	WORKER_EV_RESULT,         /* a command finished: cmd, status, msg */
	WORKER_EV_TRANSCRIPT, /* a load resumed a session: recap (the event owns it), before the result;
	                           * status, msg: whether its texts could be read */
	WORKER_EV_SAVED,      /* an exchange was committed to the store as turn index of
	                           * saved session saved_id (status KVS_OK), or not (msg says
	                           * why; it stays queued for the next commit) */
	WORKER_EV_COMPARE,    /* cmp: the comparison after a replayed or followed exchange,
	                           * or as it stopped (the event owns it) */
	WORKER_EV_COLD,       /* cold: the cold tier wrote, recalled, stopped or was refused
	                           * (the event owns cold.hits; cold.msg and cold.scorer point
	                           * into msg and cold_scorer) */
	WORKER_EV_PROGRESS,   /* the document's clustering: done of total (layer, KV head)
	                           * pairs, done == total once at its end */
	WORKER_EV_NOTICE,     /* msg: one line for the user (the document clustered, its
	                           * clusters restored or refused, a sparse spec overridden) */
};

/* One event from the worker: deep copies of the session hooks' arguments,
 * that the event owns (worker_event_free releases them). */
struct worker_event {
	enum worker_event_kind kind;
	uint64_t cmd_id; /* the command it belongs to */
	/* TURN_START */
	uint32_t index;
	char *user;
	/* TOKEN */
	struct gen_token token;
	struct kv_tok meta;
	/* TURN_END */
	struct session_turn turn;
	/* KV */
	struct kv_event kv;
	/* KV step events: the cached keys the attention columns belong to, as
	 * the cache held them at that step (NULL when not known) */
	int32_t *key_pos; /* (kv.n_cached) original positions */
	int32_t *key_tok; /* (kv.n_cached) token ids */
	/* SNAPSHOT */
	struct kv_tok *toks; /* (n_toks) */
	uint32_t n_toks;
	uint8_t *head_keep;            /* (n_toks, n_layer, n_head_kv) 1 = that pair keeps the token;
	                     * NULL with one keep-set (kv_cache_head_map) */
	uint32_t hk_layer, hk_head_kv; /* head_keep's n_layer and n_head_kv */
	int32_t next_pos;
	struct kv_stats stats;
	char policy[160];   /* kv_policy_format of the active policy */
	uint32_t n_unsaved; /* exchanges not committed to a store (session_n_unsaved) */
	bool saving;        /* a :save or :load gave the session a store */
	/* SAVED (index, status, msg too) */
	int64_t saved_id;
	/* TRANSCRIPT */
	struct session_recap recap;
	/* COMPARE */
	struct compare_view *cmp;
	/* COLD */
	struct session_cold_event cold;
	char cold_scorer[32];
	/* PROGRESS */
	uint32_t done, total;
	/* RESULT */
	enum worker_cmd_kind cmd;
	int status;                /* KVS_OK or the failure */
	char msg[256];             /* what happened, or what was wrong */
	struct worker_event *next; /* queue link */
};

struct worker;

/* Run s on a new thread (s belongs to the worker until worker_stop). */
int worker_start(struct worker **out, struct session *s, struct err *e);
/* Cancel what runs, finish the thread, free the queued events (not s). */
void worker_stop(struct worker *w);
/* Queue a command; returns its id (events carry it). */
uint64_t worker_send(struct worker *w, const struct worker_cmd *c);
/* The database :save and :load use (NULL: the default), the model file and
 * the sampler settings (text, NULL: none) recorded with saved sessions;
 * call before sending WORKER_SAVE/LOAD. */
void worker_set_store(struct worker *w, const char *db_path, const char *model_path,
                      const char *sampler);
/* Stop the exchange in progress, or the next queued one (any thread);
 * false when there is none, or the running one's reply has ended (a
 * cancel never reaches a later exchange; true means its reply stops with
 * "user", gen_cancel_ask).
 * While a comparison replays or follows an exchange, that is stopped
 * instead (and the comparison with it). */
bool worker_cancel(struct worker *w);
/* Stop a comparison's replay in progress or queued (any thread); false
 * when none runs or waits. The comparison is closed by the command that
 * ran it (a WORKER_COMPARE "off" closes one that follows). */
bool worker_compare_stop(struct worker *w);
/* Whether a command is running or queued. */
bool worker_busy(struct worker *w);
/* How many commands are queued (not counting the one running). */
size_t worker_queued(struct worker *w);
/* The oldest event, or NULL; the caller frees it with worker_event_free. */
struct worker_event *worker_poll(struct worker *w);
/* Free an event and what it owns (NULL is fine). */
void worker_event_free(struct worker_event *ev);
/* A descriptor that is readable while events are queued (for poll). */
int worker_fd(const struct worker *w);
/* Deep copy of a KV event (what worker events hold); free with worker_kv_free. */
void worker_kv_copy(struct kv_event *dst, const struct kv_event *src);
void worker_kv_free(struct kv_event *ev);
/* Free a sparse view that worker_kv_copy made (one the view model took). */
void worker_sparse_free(const struct kv_sparse_view *v);

/* trace.c: write one KV-cache event as a JSON line to fp (attention rows
 * only when the event carries them); v renders token text. */
void trace_write_event(FILE *fp, const struct kv_event *ev, const struct vocab *v);
/* trace.c: one cold-tier event (a write, a recall with its blocks' turns
 * and BM25 scores, a stop or refusal) as a JSON line. */
void trace_write_cold(FILE *fp, const struct session_cold_event *ev);

#endif
