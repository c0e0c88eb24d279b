/*
 * script-int.h: the scripting layer's insides, shared by script.c (the
 * runtime: plugin states, sandbox, budgets, dispatch) and api.c (the API
 * table and its bindings).
 */
#ifndef KVS_SCRIPT_INT_H
#define KVS_SCRIPT_INT_H

#include "script/script.h"
/* api.c still reads struct gen's fields (g->model, g->last_logits, g->kv):
 * until it uses app.h's accessors it needs the app layer's insides. */
#include "app/app-int.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <pthread.h>
#include <stdatomic.h>

#define SCRIPT_API_VERSION 1
#define SCRIPT_LOG_LINES 256
#define SCRIPT_HOOK_COUNT 1000 /* instructions between deadline checks */

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
	SEV_COUNT
};

extern const char *const script_event_names[SEV_COUNT];
/* Whether hooks of the event run in the fast tier. */
extern const bool script_event_fast[SEV_COUNT];

struct script_plugin {
	struct script_rt *rt;
	char *name, *path;
	lua_State *L;
	lua_State *active;        /* the thread inside an API call now (nested calls use it) */
	bool is_script;
	size_t mem, mem_cap;      /* bytes held by the state, its cap */
	double deadline;          /* clock_now_ms of the current call's deadline; 0 none */
	double budget_ms;         /* of the current call, for the message */
	bool overrun;
	int depth;                /* calls into the state in progress */
	int fast;                 /* fast-tier calls in progress */
	const char *fast_what;    /* the outermost fast call's event */
	uint32_t n_errors, consecutive;
	bool disabled;
	char *disabled_why;
	int exit_status;          /* a script's kvscope.exit status; -1 until it exits */
	char *log[SCRIPT_LOG_LINES]; /* ring */
	size_t log_n, log_head;
	char *status;
	pthread_mutex_t lock;     /* recursive: the KV cache may call a policy from a worker */
	/* Bumped when data lent to this state (an event's, a cache's) stops
	 * being valid; atomic: a policy may run on the session's worker thread. */
	_Atomic uint64_t epoch;
	uint32_t pins;            /* policy calls from other threads in progress (rt->life) */
};

struct script_hook {
	enum script_event ev;
	int priority;             /* higher first */
	struct script_plugin *p;  /* NULL once its plugin is gone (then dead) */
	int ref;
	uint64_t id, seq;
	bool dead;
};

struct script_timer {
	struct script_plugin *p;
	int ref;
	uint64_t id;
	double due, interval_ms;  /* interval 0: one-shot */
	bool dead;
};

struct script_sched {
	struct script_plugin *p;
	int ref;
};

struct script_cmd {
	char *name, *help;
	struct script_plugin *p;
	int ref, complete_ref;    /* complete_ref LUA_NOREF: no completion */
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

struct script_viewrec {
	struct script_view v;
	struct script_plugin *p;
	bool dead;
};

/* A session a plugin opened (api.c); listed so that a policy going away can
 * be taken out of the sessions that use it. */
struct api_session {
	struct script_plugin *p;
	struct session *s;
	bool owned;               /* opened by the plugin (closed with it) */
	bool busy;                /* an exchange is running */
	struct script_policy *policy; /* Lua policy installed, or NULL */
	struct api_session *next;
};

struct script_rt {
	struct script_config cfg;
	/* A plugin's lifetime against score providers called from a worker
	 * thread: api_score pins the plugin under this lock, unloading waits
	 * until no pin is left. */
	pthread_mutex_t life;
	pthread_cond_t unpinned;
	char *results_dir, *system;
	struct script_plugin **plugins;
	size_t n_plugins;
	struct script_hook *hooks;
	size_t n_hooks, cap_hooks;
	int dispatching;          /* dispatch depth: dead hooks are freed at 0 */
	uint64_t seq, next_id;
	struct script_timer *timers;
	size_t n_timers, cap_timers;
	struct script_sched *sched;
	size_t n_sched, cap_sched;
	struct script_cmd *cmds;
	size_t n_cmds, cap_cmds;
	struct script_policy **policies;
	size_t n_policies;
	struct script_viewrec **views;
	size_t n_views;
	struct api_session *sessions;
	struct session *current;
	const struct kv_tok *step_toks; /* the cache's tokens during a step event (api sessions) */
	uint32_t step_n;
	const struct vocab *vocab;    /* of the last session seen, to render token text */
	char *datadir;
};

/* script.c */
struct script_plugin *script_plugin_of(lua_State *L);
/* Call the function below nargs arguments on L's stack as P under a
 * deadline of budget_ms, in the fast tier when fast; leaves nres results
 * on success (true). On failure logs the error (with traceback), counts it
 * towards disabling, fills e when not NULL and returns false. */
bool script_pcall(struct script_plugin *P, lua_State *L, int nargs, int nres, bool fast,
                  const char *what, double budget_ms, struct err *e);
/* The thread to push a nested call on. */
lua_State *script_thread(struct script_plugin *P);
/* Count a failure of P in what (logged, towards disabling); fills e. */
void script_failed(struct script_plugin *P, const char *what, const char *msg, struct err *e);
/* luaL_error with printf formats (luaL_error's own take only %d, %s, %f). */
int script_error(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Every state's lent data is stale now (an event ended, a cache changed). */
void script_stale(struct script_rt *rt);
void script_log(struct script_plugin *P, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Push the running function's arguments as one string, through tostring,
 * separated by sep (print and kvscope.log). */
void script_concat_args(lua_State *L, char sep);
void script_notify(struct script_rt *rt, struct script_plugin *P, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Dispatch ev to the hooks: push(L, ud) pushes the arguments and returns
 * their count; a hook returning true stops the dispatch (returns true). */
bool script_dispatch(struct script_rt *rt, enum script_event ev, int (*push)(lua_State *L, void *ud),
                     void *ud);

/* api.c */
/* Build the kvscope module in P's state and leave it on the stack. */
int api_open(lua_State *L);
/* Drop the policy from every session using it (it was unregistered). */
void api_policy_gone(struct script_rt *rt, struct script_policy *pol);
int api_score(void *ud, const struct kv_tok *toks, uint32_t n, uint32_t n_keep, float *scores,
              double deadline_ms, struct err *e);
/* Push event data as read-only userdata (api.c). */
void api_push_token(lua_State *L, const struct gen_token *t);
void api_push_toks(lua_State *L, const struct kv_tok *toks, uint32_t n, const struct vocab *v);
void api_push_attention(lua_State *L, const struct kv_event *ev);
void api_push_turn(lua_State *L, const struct session_turn *t);
int api_push_model(lua_State *L, const struct gen *g);
int api_doc(FILE *fp, struct err *e);

#endif
