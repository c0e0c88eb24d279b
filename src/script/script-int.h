/*
 * script-int.h: the scripting layer's insides, shared by its files:
 * script.c (the runtime: plugin states, budgets, dispatch), sandbox.c (the
 * security boundary), policy.c (Lua policies on other threads), api.c (the
 * API machinery) and api-*.c (the bindings, one file per object).
 *
 * Threads. A runtime (script_rt) and every lua_State in it belong to one
 * thread; no lua_State is ever used by two threads, so no lock guards one:
 *
 *   - the front end's runtime, its plugins' states and the sessions they
 *     open belong to the main thread (the one that made the runtime);
 *   - a Lua policy that the KV cache calls on another thread (the TUI's
 *     session worker) runs in a copy (struct script_copy): a runtime of its
 *     own in which the plugin's source ran again. The main thread makes it
 *     (script_policy_scorer) and touches its runtime no more; the first
 *     thread that calls its score provider owns it from then on, and a
 *     call from any other thread is refused. The plugin's commands reach
 *     the copy as messages (copy->inbox) that its owner runs before its
 *     next call; unloading or disabling the plugin retires the copy, and
 *     its owner closes it at its next call (the main thread does, when no
 *     thread claimed it, and at script_rt_free, when every caller is gone);
 *   - a Lua recall scorer (kvscope.recall.register) runs in its plugin's
 *     own state, so only a cold tier on the main thread (a plugin's own
 *     session, cold = true) uses it; api_recall_score refuses any other
 *     thread and the cold tier then ranks by both. (A cold tier on the
 *     TUI's worker would need a copy, as a policy has.)
 *
 * Locks: script_copy.mu is the layer's only lock. It guards a copy's
 * ownership, retirement and inbox, and is a leaf: nothing else is locked,
 * and no Lua runs, while it is held. The front end's notify callback may
 * be called from a copy's thread (it takes the front end's own lock).
 */
#ifndef KVS_SCRIPT_INT_H
#define KVS_SCRIPT_INT_H

#include "script/script.h"
#include "app/app.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <pthread.h>

#define SCRIPT_API_VERSION 1
#define SCRIPT_LOG_LINES 256
#define SCRIPT_HOOK_COUNT 1000   /* instructions between deadline checks */
#define SCRIPT_ABANDON_MS 2000   /* a plugin call this late (10 budgets at least) disables it */
#define SANDBOX_STEPS 1024       /* loop steps of a guarded C function between deadline checks */
#define SANDBOX_LOAD_PIECE 65536 /* bytes load's parser reads between deadline checks */
#define SCRIPT_SRC_MAX ((size_t)4 << 20) /* bytes of a plugin's source, at most */
#define SCRIPT_SESSIONS_MAX 4            /* sessions a plugin has open at once, at most */

/* Events plugins hook with kvscope.on (names in script_event_names). */
enum script_event {
	SEV_TOKEN = 0,
	SEV_TURN_START,
	SEV_TURN_END,
	SEV_EVICT,
	SEV_ATTENTION,
	SEV_MODEL_LOADED,
	SEV_KEY,
	SEV_UNLOAD,
	SEV_RECALL,
	SEV_COMPARE,
	SEV_COUNT
};

extern const char *const script_event_names[SEV_COUNT];
/* Whether hooks of the event run in the fast tier. */
extern const bool script_event_fast[SEV_COUNT];

struct script_plugin {
	struct script_rt *rt;
	char *name, *path;
	char *src, *chunk; /* the main chunk's text and name (copies run it again) */
	size_t src_len;
	lua_State *L;
	lua_State *active; /* the thread inside an API call now (nested calls use it) */
	bool is_script;
	/* Memory. mem: bytes of the Lua state; host: bytes the host holds for
	 * the plugin (its source, views, commands, hooks, timers, scheduled
	 * functions, status, policy slots, its sessions' turns); mem + host
	 * stays within mem_cap: the state's allocator and script_charge refuse
	 * what would pass it. */
	size_t mem, host, mem_cap;
	uint32_t n_sessions; /* sessions it opened, not yet closed (SCRIPT_SESSIONS_MAX) */
	bool closing;        /* its state is being closed: the API refuses every call */
	double deadline;     /* clock_now_ms of the current call's deadline; 0 none */
	double budget_ms;    /* of the current call, for the message */
	bool overrun;
	int depth;             /* calls into the state in progress */
	int fast;              /* fast-tier calls in progress */
	const char *fast_what; /* the outermost fast call's event */
	uint32_t n_errors, consecutive;
	bool disabled;
	char *disabled_why;
	int exit_status; /* a script's kvscope.exit status; -1 until it exits */
	int exit_key;    /* registry ref of the string "kvscope_exit" (LUA_NOREF before set-up) */
	bool in_main;    /* its main chunk runs */
	bool timed_out;  /* a script's main chunk overran --timeout */
	char *log[SCRIPT_LOG_LINES]; /* ring */
	size_t log_n, log_head;
	char *status;
	/* Bumped when data lent to this state (an event's, a cache's) stops
	 * being valid. */
	uint64_t epoch;
};

struct script_hook {
	enum script_event ev;
	int priority;            /* higher first */
	struct script_plugin *p; /* NULL once its plugin is gone (then dead) */
	int ref;
	uint64_t id, seq;
	bool dead;
};

struct script_timer {
	struct script_plugin *p;
	int ref;
	uint64_t id;
	double due, interval_ms; /* interval 0: one-shot */
	bool dead;
};

struct script_sched {
	struct script_plugin *p;
	int ref;
};

struct script_cmd {
	char *name, *help;
	struct script_plugin *p;
	int ref, complete_ref; /* complete_ref LUA_NOREF: no completion */
};

/* A Lua retention policy. Slots live until the runtime is freed (score
 * providers point at them); p NULL: unregistered. */
struct script_policy {
	struct script_rt *rt;
	char *name;
	struct script_plugin *p;
	int ref;
	struct kv_policy base;
	double budget_ms;
};

/* A plugin copied for a policy called on another thread (policy.c). The
 * shell lives until the main runtime is freed (a score provider points at
 * it); its runtime goes earlier. */
struct script_copy {
	char *name;                     /* the policy's (the provider's name points here) */
	const struct script_plugin *of; /* main thread: the plugin copied; compared only */
	struct script_copy *next;       /* main thread: the runtime's list */
	/* The owner's (the main thread's until claimed): */
	struct script_rt *rt;      /* the copy's runtime; NULL once closed */
	struct script_policy *pol; /* the policy's slot in rt */
	/* Under mu: */
	pthread_mutex_t mu;
	bool claimed;
	pthread_t owner; /* when claimed */
	bool retired;    /* its plugin was unloaded or disabled */
	char **inbox;    /* (n_inbox) commands to run first: "name\0args" */
	size_t n_inbox, inbox_bytes;
};

struct script_viewrec {
	struct script_view v;
	struct script_plugin *p;
	bool dead;
};

/* A session a plugin opened (api-session.c); listed so that a policy going
 * away can be taken out of the sessions that use it. */
struct api_session {
	struct script_plugin *p;
	struct session *s;
	bool owned;                   /* opened by the plugin (closed with it) */
	const char *running;          /* the driving call in progress ("chat"), or NULL */
	const char *phase;            /* of it: "hooks", "turn_end hook" */
	bool cut;                     /* the call's reply was cancelled at its deadline */
	struct script_policy *policy; /* Lua policy installed, or NULL */
	struct store *cold_st;        /* cold = true: its temporary database, or NULL */
	char *cold_dir;               /* and the folder it lives in */
	size_t charged;               /* bytes counted in p->host for it (owned sessions) */
	size_t system_len;            /* of the system prompt it was given, NUL included */
	struct api_session *next;
};

struct script_rt {
	struct script_config cfg;
	pthread_t thread; /* the owner: its states run on no other thread */
	char *results_dir, *system;
	struct script_plugin **plugins;
	size_t n_plugins;
	struct script_hook *hooks;
	size_t n_hooks, cap_hooks;
	int dispatching; /* dispatch depth: dead hooks are freed at 0 */
	bool closing;    /* script_rt_free runs: no plugin loads */
	uint64_t seq, next_id;
	struct script_timer *timers;
	size_t n_timers, cap_timers;
	struct script_sched *sched;
	size_t n_sched, cap_sched;
	struct script_cmd *cmds;
	size_t n_cmds, cap_cmds;
	struct script_policy **policies;
	size_t n_policies;
	struct script_policy **recalls; /* recall scorers (kvscope.recall.register); base unused */
	size_t n_recalls;
	struct script_copy *copies; /* of this runtime's plugins, for other threads */
	struct script_viewrec **views;
	size_t n_views;
	struct api_session *sessions;
	struct session *current;
	const struct kv_tok *step_toks; /* the cache's tokens during a step event (api sessions) */
	uint32_t step_n;
	const struct vocab *vocab; /* of the last session seen, to render token text */
	char *datadir;
};

/* ---- script.c ---- */

struct script_plugin *script_plugin_of(lua_State *L);
/* Call the function below nargs arguments on L's stack as P under a
 * deadline of budget_ms, in the fast tier when fast; leaves nres results
 * on success (true). On failure logs the error (with traceback), counts it
 * towards disabling, fills e when not NULL and returns false. */
bool script_pcall(struct script_plugin *P, lua_State *L, int nargs, int nres, bool fast,
                  const char *what, double budget_ms, struct err *e);
/* script_pcall of the function on top of L's stack, whose arguments
 * push(L, ud) pushes (returning their count) inside the protected call, so
 * that nothing allocates in the state outside one. */
bool script_call(struct script_plugin *P, lua_State *L, int (*push)(lua_State *L, void *ud),
                 void *ud, int nres, bool fast, const char *what, double budget_ms, struct err *e);
/* The thread to push a nested call on. */
lua_State *script_thread(struct script_plugin *P);
/* Count n more bytes that the host holds for L's plugin in its memory cap;
 * when they do not fit (after a full collection of the state's garbage)
 * raise an error naming what and the cap, counting nothing. */
void script_charge(lua_State *L, size_t n, const char *what);
/* The host no longer holds n of the bytes it counted for P. */
void script_uncharge(struct script_plugin *P, size_t n);
/* Count a failure of P in what (logged, towards disabling); fills e. */
void script_failed(struct script_plugin *P, const char *what, const char *msg, struct err *e);
/* luaL_error with printf formats (luaL_error's own take only %d, %s, %f). */
int script_error(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The value at idx as an integer in [lo, hi]; anything else (a float with a
 * fraction, a number out of range, not a number) raises an error naming
 * what ("session:find: position") and the range. Every integer the API
 * takes from Lua goes through here, so none is truncated on its way in. */
lua_Integer script_int(lua_State *L, int idx, const char *what, lua_Integer lo, lua_Integer hi);
/* script_int, or def when the value at idx is none or nil. */
lua_Integer script_optint(lua_State *L, int idx, const char *what, lua_Integer def, lua_Integer lo,
                          lua_Integer hi);
/* Every state's lent data is stale now (an event ended, a cache changed). */
void script_stale(struct script_rt *rt);
void script_log(struct script_plugin *P, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
/* Push the running function's arguments as one string, through tostring,
 * separated by sep (print and kvscope.log). */
void script_concat_args(lua_State *L, char sep);
void script_notify(struct script_rt *rt, struct script_plugin *P, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
/* Dispatch ev to the hooks: push(L, ud) pushes the arguments and returns
 * their count; a hook returning true stops the dispatch (returns true). */
bool script_dispatch(struct script_rt *rt, enum script_event ev,
                     int (*push)(lua_State *L, void *ud), void *ud);
/* Load P's source again as a plugin of runtime to (a copy); *out is the
 * new plugin. */
int script_plugin_copy(struct script_rt *to, const struct script_plugin *P,
                       struct script_plugin **out, struct err *e);

/* ---- sandbox.c ---- */

/* A new state for P: its allocator counts P->mem against P->mem_cap, its
 * count hook enforces P->deadline; NULL when even that does not fit. */
lua_State *sandbox_new(struct script_plugin *P);
/* Make the whitelist environment L's globals (inside a protected call). */
void sandbox_open(lua_State *L);
/* After an overrun (the hook fires at every instruction): back to every
 * SCRIPT_HOOK_COUNT instructions. */
void sandbox_rearm(lua_State *L);
/* The current call is past its deadline: mark the overrun, make L's hook
 * fire at every instruction, raise the budget error. */
int sandbox_overrun(lua_State *L);
/* sandbox_overrun when the current call's deadline has passed (C loops
 * call it every SANDBOX_STEPS steps). */
void sandbox_check(lua_State *L);
/* Call the function below nargs arguments on L's stack in a new thread,
 * where the count hook is on (Lua runs message handlers of the hook's own
 * errors with hooks off); leaves one value on L: its first result, or its
 * error. Returns the status. */
int sandbox_call_fresh(lua_State *L, int nargs);

/* ---- sandbox-lib.c ---- */

/* Replace the functions of the full globals table at index G whose time
 * the count hook cannot bound by guarded ones (string.rep, table.*,
 * xpcall, coroutine.create and wrap, setmetatable; sandbox_match_open). */
void sandbox_lib_guard(lua_State *L, int G);

/* ---- sandbox-match.c ---- */

/* Replace string.find, match, gmatch and gsub of the globals at index G by
 * the bounded matcher's. */
void sandbox_match_open(lua_State *L, int G);

/* ---- policy.c ---- */

/* The slot of the registered Lua policy name, or NULL. */
struct script_policy *policy_find(const struct script_rt *rt, const char *name);
/* P's commands ran "name args" on the main thread: queue it for P's copies. */
void policy_copies_post(struct script_rt *rt, const struct script_plugin *P, const char *name,
                        const char *args);
/* P goes away or is disabled: its copies stop (their owners close them). */
void policy_copies_retire(struct script_rt *rt, const struct script_plugin *P);
/* Free every copy (script_rt_free: no thread calls a provider any more). */
void policy_copies_free(struct script_rt *rt);

/* ---- api.c: the machinery ---- */

enum api_tier { API_FAST = 0, API_DEFERRED };
enum api_kind { API_C = 0, API_LUA };

/* One row of the API: a function, its tier and its doc line. The binding
 * of row "NAME" is api_NAME (api_s_NAME for "session:NAME", api_view_NAME
 * for "view:NAME"); API_LUA rows are defined by lua/kvscope.lua. */
struct api_fn {
	const char *name; /* "on", "policy.register", "session:chat" */
	enum api_tier tier;
	enum api_kind kind;
	const char *args; /* synopsis after the name */
	const char *doc;
	lua_CFunction fn;
};

/* A userdata type: the metatable registered as tname; its methods are the
 * "obj:NAME" rows of the same file, or index answers every field. */
struct api_type {
	const char *tname; /* "kvscope.session" */
	const char *obj;   /* "session", or NULL (index) */
	lua_CFunction index, len, gc;
};

/* One file's share of the API: its rows, in the reference's order, and
 * its userdata types. api.c lists the files' tables (api_libs). */
struct api_lib {
	const struct api_fn *fns;
	size_t n_fns;
	const struct api_type *types;
	size_t n_types;
};
/* A file's lib from its tables of functions and types (arrays, not pointers). */
#define API_LIB(fns, types)                                  \
	{                                                        \
		fns, KVS_ARRAY_LEN(fns), types, KVS_ARRAY_LEN(types) \
	}
#define API_LIB_FNS(fns)                 \
	{                                    \
		fns, KVS_ARRAY_LEN(fns), NULL, 0 \
	}

extern const struct api_lib api_loop_lib, api_view_lib, api_policy_lib, api_session_lib,
        api_session_read_lib, api_store_lib, api_token_lib;

#define API_SESSION "kvscope.session" /* the session userdata's type name */

/* The open session at index i, or a Lua error (not a session, or closed). */
struct api_session *api_checksession(lua_State *L, int i);

/* Build the kvscope module in P's state and leave it on the stack. */
int api_open(lua_State *L);
/* Write doc/lua-api.md. */
int api_doc(FILE *fp, struct err *e);
struct script_rt *api_rt(lua_State *L);
/* Raise kvscope.exit's request for status, ending the script. */
int api_raise_exit(lua_State *L, int status);
/* t[k] = v for the table on top of the stack. */
void api_setnum(lua_State *L, const char *k, double v);
void api_setint(lua_State *L, const char *k, lua_Integer v);
void api_setstr(lua_State *L, const char *k, const char *v);

/* ---- api-view.c ---- */

/* KVS_OK when dir may be the results directory: not empty, not "/". */
int api_results_check(const char *dir, struct err *e);

/* ---- api-token.c: event data, lent as read-only userdata ---- */

extern const char *const api_role_names[];
void api_push_token(lua_State *L, const struct gen_token *t);
void api_push_toks(lua_State *L, const struct kv_tok *toks, uint32_t n, const struct vocab *v);
void api_push_attention(lua_State *L, const struct kv_event *ev);
void api_push_turn(lua_State *L, const struct session_turn *t);
int api_push_model(lua_State *L, const struct gen *g);

/* ---- api-policy.c ---- */

/* The score provider of a Lua policy (ud: its slot), on its runtime's
 * thread: calls the policy's function in its plugin's state. */
int api_score(void *ud, const struct kv_tok *toks, uint32_t n, uint32_t n_keep, float *scores,
              double deadline_ms, struct err *e);

/* ---- api-session.c ---- */

/* Drop the policy from every session using it (it was unregistered). */
void api_policy_gone(struct script_rt *rt, struct script_policy *pol);
/* The slot of the registered Lua recall scorer name, or NULL (api-policy.c). */
struct script_policy *recall_find(const struct script_rt *rt, const char *name);
/* The cold tier's custom scorer (store_cold_scorer_fn) for recall slot ud:
 * runs its function in its plugin's own state, on the runtime's thread
 * only; false (the cold tier then ranks by both) when the plugin is gone
 * or disabled, on another thread, or the call fails (a strike). */
bool api_recall_score(void *ud, const struct store_cold_cand *c, size_t n, double *scores);
/* P's state is closed: close and free any session of P still listed (none
 * when every handle's finalizer ran; this makes sure). */
void api_sessions_gone(struct script_rt *rt, struct script_plugin *P);

/* ---- shared by script.c, script-plugin.c and script-dispatch.c */

/* The text of the error value at idx, read without metamethods or
 * allocation (it may run outside a protected call): a string's own bytes,
 * a number formatted into buf, else its type. */
const char *script_error_text(lua_State *L, int idx, char *buf, size_t n);
/* script_call with what is left (left_ms) of the hook budget shared by a
 * plugin's calls of one event or tick. */
bool script_call_share(struct script_plugin *P, lua_State *L, int (*push)(lua_State *L, void *ud),
                       void *ud, int nres, bool fast, const char *what, double left_ms,
                       struct err *e);
/* Read the plugin or script file at path and create it. */
int script_plugin_file(struct script_rt *rt, const char *path, bool is_script, int argc,
                       char **argv, struct script_plugin **out, struct err *e);
/* Run P's unload hooks, then free it. */
void script_unload_plugin(struct script_rt *rt, struct script_plugin *P);
/* Drop dead hooks (their references first) and restore the order. */
void script_hooks_settle(struct script_rt *rt);

#endif
