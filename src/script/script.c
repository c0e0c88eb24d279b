/*
 * script.c: the Lua runtime: plugin states, calls and their budgets,
 * dispatch, timers, commands, views and logs.
 *
 * One lua_State per plugin (a "script" is a plugin that kvscope run loads
 * with its own deadline), made by sandbox.c, which enforces the whitelist,
 * the memory cap and the deadline of the current call; this file sets the
 * deadline of each call. Everything here runs on the runtime's own thread
 * (script-int.h says which thread owns what).
 *
 * Every call into a state goes through script_pcall (or script_call, which
 * pushes the arguments inside the protected call): nothing touches a state
 * outside a protected call but raw reads and pushes that cannot allocate,
 * so no plugin can raise an unprotected error. A message handler appends a
 * traceback, the error goes to the plugin's log, and after max_errors
 * consecutive errors or overruns (or scores a policy returned that are not
 * a table of numbers: api_score) the plugin is disabled and the user told;
 * a call that returns far past its deadline disables it at once. One
 * plugin's hooks of one event, and its scheduled functions and timers of
 * one tick, share one hook budget (struct script_share). Hooks are kept in one array sorted by priority; a hook added
 * during a dispatch is appended and not seen by that dispatch (its sequence
 * number is newer), a hook removed during one is flagged dead, and the array
 * is compacted and re-sorted when the outermost dispatch ends.
 */
#include "script/script-int.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <dirent.h>
#include <unistd.h>

const char *const script_event_names[SEV_COUNT] = {
	"token", "turn_start", "turn_end", "evict", "attention", "model_loaded", "key", "unload",
};

const bool script_event_fast[SEV_COUNT] = {
	[SEV_TOKEN] = true,
	[SEV_TURN_START] = true,
	[SEV_EVICT] = true,
	[SEV_ATTENTION] = true,
};

bool script_available(void)
{
	return true;
}

void script_config_default(struct script_config *c)
{
	memset(c, 0, sizeof *c);
	gen_config_default(&c->gen);
	c->max_tokens = 256;
	c->mem_cap = (size_t)64 << 20;
	c->hook_ms = 50;
	c->load_ms = 1000;
	c->script_ms = 0;
	c->max_errors = 3;
	c->results_dir = "results";
}

/* ------------------------------------------------------------- budgets */

struct script_plugin *script_plugin_of(lua_State *L)
{
	return *(struct script_plugin **)lua_getextraspace(L);
}

int script_error(lua_State *L, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	luaL_where(L, 1);
	lua_pushstring(L, buf);
	lua_concat(L, 2);
	return lua_error(L);
}

lua_Integer script_int(lua_State *L, int idx, const char *what, lua_Integer lo, lua_Integer hi)
{
	int isint;
	lua_Integer v = lua_tointegerx(L, idx, &isint);

	if (!isint || v < lo || v > hi) {
		const char *got = lua_type(L, idx) == LUA_TNUMBER || lua_type(L, idx) == LUA_TSTRING
		        ? luaL_tolstring(L, idx, NULL)
		        : luaL_typename(L, idx);
		script_error(L, "%s: %s: expected an integer in %lld..%lld", what, got, (long long)lo,
		             (long long)hi);
	}
	return v;
}

lua_Integer script_optint(lua_State *L, int idx, const char *what, lua_Integer def, lua_Integer lo,
                          lua_Integer hi)
{
	return lua_isnoneornil(L, idx) ? def : script_int(L, idx, what, lo, hi);
}

void script_charge(lua_State *L, size_t n, const char *what)
{
	struct script_plugin *P = script_plugin_of(L);

	if (P->mem + P->host + n > P->mem_cap) {
		lua_gc(L, LUA_GCCOLLECT); /* its garbage may be what fills the cap */
		if (P->mem + P->host + n > P->mem_cap)
			script_error(L,
			             "%s: the plugin's memory cap of %zu KiB is reached (%zu KiB in Lua, "
			             "%zu KiB held for it by kvscope, %zu KiB more asked)",
			             what, P->mem_cap >> 10, P->mem >> 10, P->host >> 10, (n + 1023) >> 10);
	}
	P->host += n;
}

void script_uncharge(struct script_plugin *P, size_t n)
{
	P->host -= KVS_MIN(n, P->host);
}

/* kvscope.exit's request among error values: a table whose field
 * kvscope_exit holds the status. Returns 1 for a request with an integer
 * status in 0..125 (*status), -1 for a table holding anything else there,
 * 0 for any other value. Raw reads of a key kept alive in the registry:
 * no metamethod runs and nothing is allocated, so this may run outside a
 * protected call on whatever a plugin raised. */
static int script_exit_request(struct script_plugin *P, lua_State *L, int idx, int *status)
{
	if (lua_type(L, idx) != LUA_TTABLE || P->exit_key == LUA_NOREF || !lua_checkstack(L, 2))
		return 0;
	idx = lua_absindex(L, idx);
	lua_rawgeti(L, LUA_REGISTRYINDEX, P->exit_key);
	int t = lua_rawget(L, idx), isint = 0, r = 0;
	if (t != LUA_TNIL) {
		lua_Integer v = t == LUA_TNUMBER ? lua_tointegerx(L, -1, &isint) : -1;
		r = isint && v >= 0 && v <= 125 ? 1 : -1;
		if (r == 1)
			*status = (int)v;
	}
	lua_pop(L, 1);
	return r;
}

/* The text of the error value at idx, read without metamethods or
 * allocation (it may run outside a protected call): a string's own bytes,
 * a number formatted into buf, else its type. */
static const char *script_error_text(lua_State *L, int idx, char *buf, size_t n)
{
	int t = lua_type(L, idx);
	if (t == LUA_TSTRING)
		return lua_tostring(L, idx);
	if (t == LUA_TNUMBER && lua_isinteger(L, idx))
		snprintf(buf, n, "%lld", (long long)lua_tointeger(L, idx));
	else if (t == LUA_TNUMBER)
		snprintf(buf, n, "%.14g", lua_tonumber(L, idx));
	else
		snprintf(buf, n, "(error object is a %s value)", lua_typename(L, t));
	return buf;
}

/* The message handler: the error with a traceback (a script's valid
 * kvscope.exit request goes through as it is). A __tostring of the error
 * object runs in a thread of its own, where the count hook is on. */
static int script_msgh(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	int status, req = P->is_script ? script_exit_request(P, L, 1, &status) : 0;
	char buf[64];
	const char *msg;
	if (req == 1) {
		lua_settop(L, 1);
		return 1;
	}
	if (req < 0) {
		lua_rawgeti(L, LUA_REGISTRYINDEX, P->exit_key);
		lua_rawget(L, 1);
		const char *v = lua_type(L, -1) == LUA_TNUMBER ? script_error_text(L, -1, buf, sizeof buf)
		                                               : luaL_typename(L, -1);
		msg = lua_pushfstring(L,
		                      "error{kvscope_exit = %s}: an exit request needs an integer "
		                      "status in 0..125 (call kvscope.exit(status))",
		                      v);
	} else if (lua_type(L, 1) != LUA_TTABLE && lua_type(L, 1) != LUA_TUSERDATA) {
		msg = script_error_text(L, 1, buf, sizeof buf);
	} else if (luaL_getmetafield(L, 1, "__tostring") != LUA_TNIL) {
		lua_pushvalue(L, 1);
		bool ok = sandbox_call_fresh(L, 1) == LUA_OK && lua_type(L, -1) == LUA_TSTRING;
		msg = ok ? lua_tostring(L, -1) : script_error_text(L, 1, buf, sizeof buf);
	} else {
		msg = script_error_text(L, 1, buf, sizeof buf);
	}
	luaL_traceback(L, L, msg, 1);
	return 1;
}

/* ----------------------------------------------------------- messages */

/* Append one line to P's log ring. */
static void script_log_add(struct script_plugin *P, const char *line, size_t len)
{
	size_t slot = (P->log_head + P->log_n) % SCRIPT_LOG_LINES;
	if (P->log_n == SCRIPT_LOG_LINES) {
		free(P->log[P->log_head]);
		P->log_head = (P->log_head + 1) % SCRIPT_LOG_LINES;
		slot = (P->log_head + P->log_n - 1) % SCRIPT_LOG_LINES;
	} else {
		P->log_n++;
	}
	P->log[slot] = xstrndup(line, len);
}

void script_log(struct script_plugin *P, const char *fmt, ...)
{
	va_list ap;
	char buf[2048];

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	for (const char *s = buf; *s != '\0';) {
		size_t n = strcspn(s, "\n");
		script_log_add(P, s, n);
		s += n + (s[n] == '\n');
	}
}

void script_notify(struct script_rt *rt, struct script_plugin *P, const char *fmt, ...)
{
	va_list ap;
	char buf[2048];

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (rt->cfg.notify != NULL)
		rt->cfg.notify(rt->cfg.notify_ud, P ? P->name : NULL, buf);
	else
		log_warn("plugin %s: %s", P ? P->name : "-", buf);
}

/* Push the arguments of the running function as one string, each through
 * tostring, separated by sep (print's and kvscope.log's rule). */
void script_concat_args(lua_State *L, char sep)
{
	luaL_Buffer b;
	int n = lua_gettop(L);

	luaL_buffinit(L, &b);
	for (int i = 1; i <= n; i++) {
		if (i > 1)
			luaL_addchar(&b, sep);
		luaL_tolstring(L, i, NULL);
		luaL_addvalue(&b); /* pops it: the buffer's stack use stays balanced */
	}
	luaL_pushresult(&b);
}

/* Disable P: its hooks, timers, commands and policies stop being called. */
static void script_disable(struct script_plugin *P, const char *why)
{
	P->disabled = true;
	policy_copies_retire(P->rt, P);
	free(P->disabled_why);
	P->disabled_why = xstrdup(why);
	script_log(P, "disabled: %s", why);
	script_notify(P->rt, P, "plugin %s disabled: %s (:plugin reload %s to try again)", P->name, why,
	              P->name);
}

/* -------------------------------------------------------------- calls */

void script_stale(struct script_rt *rt)
{
	for (size_t i = 0; i < rt->n_plugins; i++)
		rt->plugins[i]->epoch++;
}

lua_State *script_thread(struct script_plugin *P)
{
	return P->depth > 0 && P->active != NULL ? P->active : P->L;
}

/* What script_call pushes inside the protected call. */
struct script_push {
	int (*push)(lua_State *L, void *ud);
	void *ud;
	int nargs, nres;
};

/* The function a protected call runs when its arguments are pushed inside
 * it: below its last argument (a light userdata, the struct script_push)
 * are the function and nargs arguments; push adds the rest. */
static int script_trampoline(lua_State *L)
{
	struct script_push *sp = lua_touserdata(L, -1);
	lua_pop(L, 1);
	int n = sp->push(L, sp->ud);
	lua_call(L, sp->nargs + n, sp->nres);
	return sp->nres;
}

/* script_pcall and script_call: the function and nargs arguments on L's
 * stack, push (when not NULL) adds arguments inside the protected call.
 * The deadline is budget_ms away; messages name the budget shown_ms (a
 * hook's whole budget, when this call has what is left of it). */
static bool script_call_in(struct script_plugin *P, lua_State *L, int nargs,
                           int (*push)(lua_State *L, void *ud), void *ud, int nres, bool fast,
                           const char *what, double budget_ms, double shown_ms, struct err *e)
{
	double saved_deadline = P->deadline, saved_budget = P->budget_ms;
	lua_State *saved_active = P->active;
	const char *saved_what = P->fast_what;
	double dl = budget_ms > 0 ? clock_now_ms() + budget_ms : 0;
	struct script_push sp = { push, ud, nargs, nres };

	if (P->disabled) {
		lua_pop(L, nargs + 1);
		err_set(e, KVS_ESTATE, "plugin %s is disabled: %s", P->name,
		        P->disabled_why ? P->disabled_why : "");
		return false;
	}
	if (!lua_checkstack(L, 4)) {
		lua_pop(L, nargs + 1);
		script_failed(P, what, "stack overflow (calls nested too deep)", e);
		return false;
	}
	/* the enclosing call's deadline is tighter: its overrun is the enclosing call's */
	bool inherited = saved_deadline > 0 && (dl == 0 || saved_deadline < dl);
	if (inherited) {
		dl = saved_deadline;
		budget_ms = saved_budget;
	}
	P->deadline = dl;
	P->budget_ms = inherited ? budget_ms : shown_ms;
	if (fast && P->fast++ == 0)
		P->fast_what = what;
	P->depth++;
	int base = lua_gettop(L) - nargs;
	lua_pushcfunction(L, script_msgh);
	lua_insert(L, base);
	int rc;
	if (push != NULL) {
		lua_pushcfunction(L, script_trampoline);
		lua_insert(L, base + 1);
		lua_pushlightuserdata(L, &sp);
		rc = lua_pcall(L, nargs + 2, nres, base);
	} else {
		rc = lua_pcall(L, nargs, nres, base);
	}
	lua_remove(L, base);
	P->depth--;
	if (fast)
		P->fast--;
	P->fast_what = saved_what;
	bool overrun = P->overrun;
	P->overrun = false;
	if (overrun) {
		sandbox_rearm(L);
		sandbox_rearm(P->L);
	}
	P->deadline = saved_deadline;
	P->budget_ms = saved_budget;
	P->active = saved_active;
	double late = dl > 0 ? clock_now_ms() - dl : 0;
	if (late > KVS_MAX(SCRIPT_ABANDON_MS, 10 * shown_ms) && !inherited && !P->is_script &&
	    !P->disabled) {
		/* something the checks do not reach held the host: never call it again */
		char why[256];
		snprintf(why, sizeof why, "%s returned %.0f ms past its %.0f ms deadline", what, late,
		         shown_ms);
		script_disable(P, why);
	}
	if (rc == LUA_OK) {
		P->consecutive = 0;
		return true;
	}
	int status;
	if (rc != LUA_ERRMEM && P->is_script && script_exit_request(P, L, -1, &status) == 1) {
		/* a script ends: nothing of it runs again (api_sleep unwinds) */
		lua_pop(L, 1);
		P->exit_status = status;
		P->disabled = true;
		free(P->disabled_why);
		P->disabled_why = xstrdup("the script called kvscope.exit");
		err_set(e, KVS_OK, "the script exited with status %d", status);
		return false;
	}
	char msg[1536], buf[64];
	if (rc == LUA_ERRMEM)
		snprintf(msg, sizeof msg, "stopped: memory cap of %zu KiB reached", P->mem_cap >> 10);
	else
		snprintf(msg, sizeof msg, "%s", script_error_text(L, -1, buf, sizeof buf));
	lua_pop(L, 1);
	if (rc == LUA_ERRMEM)
		lua_gc(L, LUA_GCCOLLECT);
	if (overrun && inherited) {
		/* the enclosing call overran: it reports (and counts) that once */
		script_log(P, "error in %s: %s", what, msg);
		size_t first = strcspn(msg, "\n");
		err_set(e, KVS_ESTATE, "plugin %s: %s: %.*s", P->name, what, (int)KVS_MIN(first, 400), msg);
		return false;
	}
	if (overrun && P->is_script && P->depth == 0 && P->in_main) {
		/* a script's main chunk past --timeout: one line, no traceback */
		P->timed_out = true;
		script_log(P, "error in %s: %s", what, msg);
		err_set(e, KVS_ESTATE, "%s: stopped at its --timeout of %g s", P->path ? P->path : P->name,
		        budget_ms / 1000);
		return false;
	}
	script_failed(P, what, msg, e);
	return false;
}

bool script_pcall(struct script_plugin *P, lua_State *L, int nargs, int nres, bool fast,
                  const char *what, double budget_ms, struct err *e)
{
	return script_call_in(P, L, nargs, NULL, NULL, nres, fast, what, budget_ms, budget_ms, e);
}

bool script_call(struct script_plugin *P, lua_State *L, int (*push)(lua_State *L, void *ud),
                 void *ud, int nres, bool fast, const char *what, double budget_ms, struct err *e)
{
	return script_call_in(P, L, 0, push, ud, nres, fast, what, budget_ms, budget_ms, e);
}

/* script_call with what is left (left_ms) of the hook budget shared by a
 * plugin's calls of one event or tick. */
static bool script_call_share(struct script_plugin *P, lua_State *L,
                              int (*push)(lua_State *L, void *ud), void *ud, int nres, bool fast,
                              const char *what, double left_ms, struct err *e)
{
	return script_call_in(P, L, 0, push, ud, nres, fast, what, left_ms, P->rt->cfg.hook_ms, e);
}

void script_failed(struct script_plugin *P, const char *what, const char *msg, struct err *e)
{
	struct script_rt *rt = P->rt;
	P->n_errors++;
	P->consecutive++;
	script_log(P, "error in %s: %s", what, msg);
	if (rt->cfg.headless)
		script_notify(rt, P, "%s: %s", what, msg);
	size_t first = strcspn(msg, "\n");
	err_set(e, KVS_EFORMAT, "plugin %s: %s: %.*s", P->name, what, (int)KVS_MIN(first, 400), msg);
	/* plugins only: a script's errors end up in its own results or its exit */
	if (P->consecutive >= rt->cfg.max_errors && !P->disabled && !P->is_script) {
		char why[512];
		snprintf(why, sizeof why,
		         "%u consecutive errors, overruns or bad results (last in %s: %.*s)",
		         P->consecutive, what, (int)KVS_MIN(first, 300), msg);
		script_disable(P, why);
	}
}

/* What a new state's set-up is given (script_setup). */
struct script_setup_args {
	const char *side; /* lua/kvscope.lua's text */
	size_t side_len;
	int argc; /* a script's arguments (kvscope.args), -1: a plugin */
	char **argv;
	const char *arg0;
};

static int script_push_setup(lua_State *L, void *ud)
{
	lua_pushlightuserdata(L, ud);
	return 1;
}

/* Protected set-up of a new state: sandbox, the kvscope module (C part,
 * then lua/kvscope.lua over it), a script's kvscope.args, the exit
 * request's key kept alive. Argument: the struct script_setup_args. */
static int script_setup(lua_State *L)
{
	const struct script_setup_args *a = lua_touserdata(L, 1);
	struct script_plugin *P = script_plugin_of(L);

	sandbox_open(L);
	api_open(L); /* the module table */
	int M = lua_gettop(L);
	if (luaL_loadbufferx(L, a->side, a->side_len, "@lua/kvscope.lua", "t") != LUA_OK)
		return lua_error(L);
	lua_pushvalue(L, M);
	lua_call(L, 1, 1);
	if (!lua_istable(L, -1))
		return script_error(L, "lua/kvscope.lua did not return the module table");
	if (a->argc >= 0) {
		lua_createtable(L, a->argc, 1);
		for (int i = 0; i < a->argc; i++) {
			lua_pushstring(L, a->argv[i]);
			lua_rawseti(L, -2, i + 1);
		}
		lua_pushstring(L, a->arg0);
		lua_rawseti(L, -2, 0);
		lua_setfield(L, -2, "args");
	}
	lua_setfield(L, LUA_REGISTRYINDEX, "kvscope.module");
	lua_pushliteral(L, "kvscope_exit");
	P->exit_key = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

/* ----------------------------------------------------------- plugins */

char *script_data_dir(void)
{
	const char *env = getenv("KVSCOPE_DATADIR");
	struct stat st;

	if (env != NULL && env[0] != '\0')
		return xstrdup(env);
#ifdef KVS_PKGDATADIR
	if (stat(KVS_PKGDATADIR "/lua/kvscope.lua", &st) == 0)
		return xstrdup(KVS_PKGDATADIR);
#endif
#ifdef KVS_SRCDIR
	if (stat(KVS_SRCDIR "/lua/kvscope.lua", &st) == 0)
		return xstrdup(KVS_SRCDIR);
#endif
	(void)st;
	return xstrdup(".");
}

static struct script_plugin *script_find(const struct script_rt *rt, const char *name)
{
	for (size_t i = 0; i < rt->n_plugins; i++)
		if (strcmp(rt->plugins[i]->name, name) == 0)
			return rt->plugins[i];
	return NULL;
}

/* The plugin name of a path: the file name without ".lua". */
static char *script_name_of(const char *path, struct err *e)
{
	const char *b = strrchr(path, '/');
	b = b ? b + 1 : path;
	size_t n = strlen(b);
	if (n > 4 && strcmp(b + n - 4, ".lua") == 0)
		n -= 4;
	if (n == 0 || n > 64) {
		err_set(e, KVS_EARG, "%s: expected a file name like NAME.lua", path);
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		char c = b[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_' || c == '.')) {
			err_set(e, KVS_EARG, "%s: plugin names use letters, digits, '-', '_' and '.'", path);
			return NULL;
		}
	}
	return xstrndup(b, n);
}

static void script_hooks_settle(struct script_rt *rt);

/* Remove everything P owns from the runtime and close its state. */
static void script_plugin_free(struct script_rt *rt, struct script_plugin *P)
{
	/* its hooks and timers die with it; p NULL: their references went with the state */
	for (size_t i = 0; i < rt->n_hooks; i++)
		if (rt->hooks[i].p == P) {
			rt->hooks[i].dead = true;
			rt->hooks[i].p = NULL;
		}
	for (size_t i = 0; i < rt->n_timers; i++)
		if (rt->timers[i].p == P) {
			rt->timers[i].dead = true;
			rt->timers[i].p = NULL;
		}
	size_t w = 0;
	for (size_t i = 0; i < rt->n_sched; i++)
		if (rt->sched[i].p != P)
			rt->sched[w++] = rt->sched[i];
	rt->n_sched = w;
	w = 0;
	for (size_t i = 0; i < rt->n_cmds; i++) {
		if (rt->cmds[i].p == P) {
			free(rt->cmds[i].name);
			free(rt->cmds[i].help);
		} else {
			rt->cmds[w++] = rt->cmds[i];
		}
	}
	rt->n_cmds = w;
	w = 0;
	for (size_t i = 0; i < rt->n_views; i++) {
		struct script_viewrec *v = rt->views[i];
		if (v->p == P) {
			for (size_t k = 0; k < v->v.n_items; k++) {
				free(v->v.items[k].text);
				free(v->v.items[k].cells);
			}
			free(v->v.items);
			free(v->v.name);
			free(v);
		} else {
			rt->views[w++] = v;
		}
	}
	rt->n_views = w;
	for (size_t i = 0; i < rt->n_policies; i++)
		if (rt->policies[i]->p == P) {
			api_policy_gone(rt, rt->policies[i]);
			rt->policies[i]->p = NULL;
		}
	/* its copies on other threads stop at their next call */
	policy_copies_retire(rt, P);
	P->closing = true; /* finalizers that lua_close runs may not call the API */
	if (P->L != NULL)
		lua_close(P->L); /* its sessions' __gc closes them */
	api_sessions_gone(rt, P);
	for (size_t i = 0; i < rt->n_plugins; i++)
		if (rt->plugins[i] == P) {
			memmove(rt->plugins + i, rt->plugins + i + 1,
			        (rt->n_plugins - i - 1) * sizeof *rt->plugins);
			rt->n_plugins--;
			break;
		}
	for (size_t i = 0; i < P->log_n; i++)
		free(P->log[(P->log_head + i) % SCRIPT_LOG_LINES]);
	if (rt->dispatching == 0)
		script_hooks_settle(rt);
	free(P->status);
	free(P->src);
	free(P->chunk);
	free(P->disabled_why);
	free(P->name);
	free(P->path);
	free(P);
	script_stale(rt);
}

/* The error of a file whose text does not compile: "PATH:LINE: what Lua
 * says", without the token Lua quotes after "near", which is the file's own
 * text (load_plugin on a file that is not Lua would otherwise hand a plugin
 * the file's first word). The text is compiled again under an empty chunk
 * name, so that the line and the message are found without parsing the
 * path. Returns KVS_EFORMAT. */
static int script_syntax_error(lua_State *L, const char *path, const char *src, size_t len,
                               struct err *e)
{
	int line = 0, at = 0;
	const char *msg = NULL;

	if (luaL_loadbufferx(L, src, len, "=", "t") != LUA_OK) {
		msg = lua_tostring(L, -1);
		if (msg == NULL || sscanf(msg, ":%d: %n", &line, &at) != 1 || at == 0)
			msg = NULL;
	}
	if (msg == NULL) {
		lua_pop(L, 1);
		return err_set(e, KVS_EFORMAT, "%s: does not compile as Lua text", path);
	}
	msg += at;
	const char *near = strstr(msg, " near ");
	int n = near != NULL ? (int)(near - msg) : (int)strlen(msg);
	err_set(e, KVS_EFORMAT, "%s:%d: %.*s", path, line, KVS_MIN(n, 200), msg);
	lua_pop(L, 1);
	return KVS_EFORMAT;
}

/* Create plugin name's state and run its main chunk src[0, len) (script:
 * with argv as kvscope.args); path is the file it came from (NULL: text
 * given directly, e.g. :lua), chunk the name Lua's messages give it. Takes
 * name. */
static int script_plugin_new(struct script_rt *rt, char *name, const char *path, const char *chunk,
                             const char *src, size_t len, bool is_script, int argc, char **argv,
                             struct script_plugin **out, struct err *e)
{
	char *side = NULL, *sidepath;
	size_t side_len;
	int rc;

	*out = NULL;
	if (rt->closing) {
		/* an unload hook loading plugins would keep script_rt_free going forever */
		rc = err_set(e, KVS_ESTATE, "%s: the runtime is closing: no plugin loads now", name);
		free(name);
		return rc;
	}
	if (script_find(rt, name) != NULL) {
		rc = err_set(e, KVS_EARG, "a plugin named %s is loaded already (unload it first)", name);
		free(name);
		return rc;
	}
	sidepath = xasprintf("%s/lua/kvscope.lua", rt->datadir);
	rc = file_read_all(sidepath, &side, &side_len, e);
	if (rc != KVS_OK) {
		err_prefix(e, "the Lua side of the API (set KVSCOPE_DATADIR to the folder holding lua/)");
		free(sidepath);
		free(name);
		return rc;
	}
	free(sidepath);

	struct script_plugin *P = xcalloc(1, sizeof *P);
	P->rt = rt;
	P->name = name;
	P->path = path ? xstrdup(path) : NULL;
	P->src = xmalloc(len + 1);
	memcpy(P->src, src, len);
	P->src[len] = '\0';
	P->src_len = len;
	P->chunk = xstrdup(chunk);
	P->is_script = is_script;
	P->exit_status = -1;
	P->exit_key = LUA_NOREF;
	P->mem_cap = rt->cfg.mem_cap;
	P->host = len + 1 + strlen(chunk) + 1; /* the source kept for copies (len: script_src_max) */
	rt->plugins = xreallocarray(rt->plugins, rt->n_plugins + 1, sizeof *rt->plugins);
	rt->plugins[rt->n_plugins++] = P;
	P->L = sandbox_new(P);
	if (P->L == NULL) {
		rc = err_set(e, KVS_ERANGE, "%s: cannot create a Lua state within %zu KiB", P->name,
		             P->mem_cap >> 10);
		goto fail;
	}
	lua_State *L = P->L;
	struct script_setup_args sa = { side, side_len, is_script ? argc : -1, argv,
		                            path ? path : P->name };
	lua_pushcfunction(L, script_setup);
	bool ok = script_call(P, L, script_push_setup, &sa, 0, false, "set-up", rt->cfg.load_ms, e);
	if (ok) {
		rc = luaL_loadbufferx(L, src, len, chunk, "t");
		if (rc != LUA_OK) {
			if (path != NULL && rc == LUA_ERRSYNTAX)
				rc = script_syntax_error(L, path, src, len, e);
			else {
				char buf[64];
				rc = err_set(e, KVS_EFORMAT, "%s", script_error_text(L, -1, buf, sizeof buf));
			}
			lua_pop(L, 1);
			goto fail;
		}
		P->in_main = true;
		ok = script_pcall(P, L, 0, 0, false, "main chunk",
		                  is_script ? rt->cfg.script_ms : rt->cfg.load_ms, e);
		P->in_main = false;
	}
	if (!ok) {
		rc = e ? e->code : KVS_EFORMAT;
		if (is_script) {
			*out = P; /* the caller reports and unloads */
			free(side);
			return rc;
		}
		goto fail;
	}
	free(side);
	*out = P;
	return KVS_OK;
fail:
	free(side);
	script_plugin_free(rt, P);
	return rc;
}

/* The largest plugin or script source: SCRIPT_SRC_MAX, or a quarter of
 * the memory cap when that is less (the host keeps the text for copies,
 * counted in the cap, and its compiled form lives in the state). */
static size_t script_src_max(const struct script_rt *rt)
{
	return KVS_MIN((size_t)SCRIPT_SRC_MAX, rt->cfg.mem_cap / 4);
}

/* Read the plugin or script file at path and create it. */
static int script_plugin_file(struct script_rt *rt, const char *path, bool is_script, int argc,
                              char **argv, struct script_plugin **out, struct err *e)
{
	char *src = NULL, *name = script_name_of(path, e);
	size_t len;

	*out = NULL;
	if (name == NULL)
		return KVS_EARG;
	if (file_read_max(path, script_src_max(rt), &src, &len, e) != KVS_OK) {
		free(name);
		e->code = KVS_EARG; /* a path the user gave */
		return KVS_EARG;
	}
	char *chunk = xasprintf("@%s", path);
	int rc = script_plugin_new(rt, name, path, chunk, src, len, is_script, argc, argv, out, e);
	free(chunk);
	free(src);
	return rc;
}

int script_load(struct script_rt *rt, const char *path, struct err *e)
{
	struct script_plugin *P;
	return script_plugin_file(rt, path, false, 0, NULL, &P, e);
}

int script_load_text(struct script_rt *rt, const char *name, const char *code, struct err *e)
{
	struct script_plugin *P;
	size_t len = strlen(code);
	if (len > script_src_max(rt))
		return err_set(e, KVS_EARG, "plugin %s: %zu bytes of code, expected at most %zu", name, len,
		               script_src_max(rt));
	char *chunk = xasprintf("=%s", name);
	int rc = script_plugin_new(rt, xstrdup(name), NULL, chunk, code, len, false, 0, NULL, &P, e);
	free(chunk);
	return rc;
}

int script_plugin_copy(struct script_rt *to, const struct script_plugin *P,
                       struct script_plugin **out, struct err *e)
{
	return script_plugin_new(to, xstrdup(P->name), P->path, P->chunk, P->src, P->src_len, false, 0,
	                         NULL, out, e);
}

/* Load every *.lua in dir (sorted). */
static void script_load_dir(struct script_rt *rt, const char *dir)
{
	struct dirent **names = NULL;
	int n = scandir(dir, &names, NULL, alphasort);
	for (int i = 0; i < n; i++) {
		size_t l = strlen(names[i]->d_name);
		if (l > 4 && strcmp(names[i]->d_name + l - 4, ".lua") == 0) {
			char *path = xasprintf("%s/%s", dir, names[i]->d_name);
			struct err e;
			if (script_load(rt, path, &e) != KVS_OK)
				script_notify(rt, NULL, "%s", e.msg);
			free(path);
		}
		free(names[i]);
	}
	free(names);
}

void script_autoload(struct script_rt *rt)
{
	char *bundled = xasprintf("%s/plugins", rt->datadir);
	char *user = file_xdg_path("XDG_CONFIG_HOME", ".config", "kvscope/plugins");
	script_load_dir(rt, bundled);
	script_load_dir(rt, user);
	free(bundled);
	free(user);
}

/* Run P's unload hooks, then free it. */
static void script_unload_plugin(struct script_rt *rt, struct script_plugin *P)
{
	for (size_t i = 0; i < rt->n_hooks; i++) {
		struct script_hook h = rt->hooks[i];
		if (h.p != P || h.dead || h.ev != SEV_UNLOAD || P->disabled)
			continue;
		lua_rawgeti(P->L, LUA_REGISTRYINDEX, h.ref);
		script_pcall(P, P->L, 0, 0, false, "unload", rt->cfg.hook_ms, NULL);
	}
	script_plugin_free(rt, P);
}

int script_unload(struct script_rt *rt, const char *name, struct err *e)
{
	struct script_plugin *P = script_find(rt, name);
	if (P == NULL)
		return err_set(e, KVS_ENOTFOUND, "no plugin named %s is loaded", name);
	/* running (its own command unloads it): refuse */
	if (P->depth > 0)
		return err_set(e, KVS_ESTATE, "plugin %s is running; unload it from the main loop", name);
	script_unload_plugin(rt, P);
	return KVS_OK;
}

int script_reload(struct script_rt *rt, const char *name, struct err *e)
{
	struct script_plugin *P = script_find(rt, name);
	if (P == NULL)
		return err_set(e, KVS_ENOTFOUND, "no plugin named %s is loaded", name);
	if (P->path == NULL)
		return err_set(e, KVS_EARG, "plugin %s was given as text, not a file: load it again", name);
	char *path = xstrdup(P->path);
	int rc = script_unload(rt, name, e);
	if (rc == KVS_OK)
		rc = script_load(rt, path, e);
	free(path);
	return rc;
}

size_t script_plugin_count(const struct script_rt *rt)
{
	return rt->n_plugins;
}

void script_plugin_at(const struct script_rt *rt, size_t i, struct script_plugin_info *out)
{
	const struct script_plugin *P = rt->plugins[i];
	out->name = P->name;
	out->path = P->path;
	out->enabled = !P->disabled;
	out->disabled_why = P->disabled_why;
	out->n_errors = P->n_errors;
	out->mem_bytes = P->mem + P->host;
	out->host_bytes = P->host;
	out->is_script = P->is_script;
}

size_t script_log_count(const struct script_rt *rt, const char *plugin)
{
	struct script_plugin *P = script_find(rt, plugin);
	if (P == NULL)
		return 0;
	return P->log_n;
}

const char *script_log_line(const struct script_rt *rt, const char *plugin, size_t i)
{
	struct script_plugin *P = script_find(rt, plugin);
	if (P == NULL || i >= P->log_n)
		return NULL;
	return P->log[(P->log_head + i) % SCRIPT_LOG_LINES];
}

/* ---------------------------------------------------------- runtime */

int script_rt_new(struct script_rt **out, const struct script_config *c, struct err *e)
{
	const char *results = c->results_dir ? c->results_dir : "results";
	*out = NULL;
	int rc = api_results_check(results, e);
	if (rc != KVS_OK)
		return rc;
	struct script_rt *rt = xcalloc(1, sizeof *rt);
	rt->thread = pthread_self();
	rt->cfg = *c;
	if (rt->cfg.mem_cap < ((size_t)1 << 20))
		rt->cfg.mem_cap = (size_t)1 << 20;
	if (rt->cfg.max_errors == 0)
		rt->cfg.max_errors = 1;
	rt->results_dir = xstrdup(results);
	rt->cfg.results_dir = rt->results_dir;
	rt->system = c->system ? xstrdup(c->system) : NULL;
	rt->cfg.system = rt->system;
	rt->datadir = script_data_dir();
	rt->next_id = 1;
	*out = rt;
	return KVS_OK;
}

void script_rt_free(struct script_rt *rt)
{
	if (rt == NULL)
		return;
	rt->closing = true;
	while (rt->n_plugins > 0)
		script_unload_plugin(rt, rt->plugins[rt->n_plugins - 1]);
	policy_copies_free(rt);
	for (size_t i = 0; i < rt->n_policies; i++) {
		free(rt->policies[i]->name);
		free(rt->policies[i]);
	}
	free(rt->policies);
	free(rt->views);
	free(rt->hooks);
	free(rt->timers);
	free(rt->sched);
	free(rt->cmds);
	free(rt->plugins);
	free(rt->results_dir);
	free(rt->system);
	free(rt->datadir);
	free(rt);
}

void script_attach_session(struct script_rt *rt, struct session *s)
{
	rt->current = s;
	if (s != NULL)
		rt->vocab = gen_vocab(session_gen(s));
	script_stale(rt);
}

/* ---------------------------------------------------------- dispatch */

/* Order hooks by priority (higher first), then by registration. */
static int script_hook_cmp(const void *a, const void *b)
{
	const struct script_hook *x = a, *y = b;
	if (x->priority != y->priority)
		return x->priority > y->priority ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Drop dead hooks (their references first) and restore the order. */
static void script_hooks_settle(struct script_rt *rt)
{
	size_t w = 0;
	for (size_t i = 0; i < rt->n_hooks; i++) {
		struct script_hook *h = &rt->hooks[i];
		if (!h->dead) {
			rt->hooks[w++] = *h;
			continue;
		}
		if (h->p != NULL) {
			luaL_unref(h->p->L, LUA_REGISTRYINDEX, h->ref);
			script_uncharge(h->p, sizeof *h);
		}
	}
	rt->n_hooks = w;
	if (w > 1)
		qsort(rt->hooks, rt->n_hooks, sizeof *rt->hooks, script_hook_cmp);
}

/* A plugin's share of one dispatch: its hooks of the event share one
 * budget (the time spent in them, not in other plugins' hooks between),
 * so that many hooks cannot add up past it. */
struct script_share {
	const struct script_plugin *p;
	double used_ms;
	bool spent; /* told: its remaining hooks were skipped */
};

/* P's entry in shares (*n of them, grown as needed). */
static struct script_share *script_share_of(struct script_share **shares, size_t *n,
                                            const struct script_plugin *P)
{
	for (size_t i = 0; i < *n; i++)
		if ((*shares)[i].p == P)
			return &(*shares)[i];
	*shares = xreallocarray(*shares, *n + 1, sizeof **shares);
	(*shares)[*n] = (struct script_share){ P, 0, false };
	return &(*shares)[(*n)++];
}

bool script_dispatch(struct script_rt *rt, enum script_event ev,
                     int (*push)(lua_State *L, void *ud), void *ud)
{
	uint64_t seq = rt->seq;
	bool consumed = false;
	struct script_share *shares = NULL;
	size_t n_shares = 0;

	rt->dispatching++;
	for (size_t i = 0; i < rt->n_hooks && !consumed; i++) {
		struct script_hook h = rt->hooks[i];
		if (h.dead || h.ev != ev || h.seq > seq || h.p->disabled)
			continue;
		struct script_plugin *P = h.p;
		struct script_share *sh = script_share_of(&shares, &n_shares, P);
		double left = rt->cfg.hook_ms - sh->used_ms, t0 = clock_now_ms();
		if (left <= 0) {
			if (!sh->spent) {
				char msg[160];
				snprintf(msg, sizeof msg,
				         "its %s hooks used the %.0f ms budget of one event; "
				         "the rest were skipped",
				         script_event_names[ev], rt->cfg.hook_ms);
				sh->spent = true;
				script_failed(P, script_event_names[ev], msg, NULL);
			}
			continue;
		}
		lua_State *L = script_thread(P);
		lua_rawgeti(L, LUA_REGISTRYINDEX, h.ref);
		bool ok = script_call_share(P, L, push, ud, 1, script_event_fast[ev],
		                            script_event_names[ev], left, NULL);
		/* P may be gone now (its hook unloaded it): sh is found by address only */
		sh = script_share_of(&shares, &n_shares, P);
		sh->used_ms += clock_now_ms() - t0;
		if (ok) {
			consumed = ev == SEV_KEY && lua_toboolean(L, -1);
			lua_pop(L, 1);
		}
	}
	free(shares);
	if (--rt->dispatching == 0)
		script_hooks_settle(rt);
	script_stale(rt);
	return consumed;
}

static int push_model(lua_State *L, void *ud)
{
	return api_push_model(L, ud);
}

void script_on_model_loaded(struct script_rt *rt, const struct gen *g)
{
	rt->vocab = gen_vocab(g);
	script_dispatch(rt, SEV_MODEL_LOADED, push_model, (void *)g);
}

struct turn_start_args {
	uint32_t index;
	const char *user;
};

static int push_turn_start(lua_State *L, void *ud)
{
	const struct turn_start_args *a = ud;
	lua_pushinteger(L, (lua_Integer)a->index + 1);
	lua_pushstring(L, a->user);
	return 2;
}

void script_on_turn_start(struct script_rt *rt, uint32_t index, const char *user)
{
	struct turn_start_args a = { index, user };
	script_dispatch(rt, SEV_TURN_START, push_turn_start, &a);
}

static int push_token(lua_State *L, void *ud)
{
	api_push_token(L, ud);
	return 1;
}

void script_on_token(struct script_rt *rt, const struct gen_token *t)
{
	script_dispatch(rt, SEV_TOKEN, push_token, (void *)t);
}

static int push_turn(lua_State *L, void *ud)
{
	api_push_turn(L, ud);
	return 1;
}

void script_on_turn_end(struct script_rt *rt, const struct session_turn *t)
{
	script_dispatch(rt, SEV_TURN_END, push_turn, (void *)t);
}

struct evict_args {
	struct script_rt *rt;
	const struct kv_event *ev;
};

static int push_evict(lua_State *L, void *ud)
{
	const struct evict_args *a = ud;
	const struct kv_event *ev = a->ev;
	lua_createtable(L, 0, 8);
	api_push_toks(L, ev->evicted, ev->n_evicted, a->rt->vocab);
	lua_setfield(L, -2, "tokens");
	lua_pushinteger(L, ev->n_evicted);
	lua_setfield(L, -2, "n");
	lua_pushstring(L, ev->policy ? ev->policy : "");
	lua_setfield(L, -2, "policy");
	lua_pushstring(L, kv_evict_cause_name(ev->cause));
	lua_setfield(L, -2, "cause");
	lua_pushinteger(L, ev->n_incoming);
	lua_setfield(L, -2, "incoming");
	lua_pushboolean(L, ev->fallback);
	lua_setfield(L, -2, "fallback");
	if (ev->fallback_why != NULL) {
		lua_pushstring(L, ev->fallback_why);
		lua_setfield(L, -2, "why");
	}
	lua_pushinteger(L, ev->stats.n_cached);
	lua_setfield(L, -2, "kept");
	return 1;
}

static int push_attention(lua_State *L, void *ud)
{
	const struct evict_args *a = ud;
	api_push_attention(L, a->ev);
	return 1;
}

void script_on_kv_event(struct script_rt *rt, const struct kv_event *ev)
{
	struct evict_args a = { rt, ev };
	if (ev->kind == KV_EVENT_EVICT) {
		if (ev->fallback)
			script_notify(rt, NULL, "retention policy %s fell back to the built-in policy: %s",
			              ev->policy ? ev->policy : "?", ev->fallback_why ? ev->fallback_why : "");
		script_dispatch(rt, SEV_EVICT, push_evict, &a);
	} else if (ev->kind == KV_EVENT_STEP && ev->heads != NULL) {
		script_dispatch(rt, SEV_ATTENTION, push_attention, &a);
	}
}

static int push_key(lua_State *L, void *ud)
{
	lua_pushstring(L, ud);
	return 1;
}

bool script_on_key(struct script_rt *rt, const char *key)
{
	return script_dispatch(rt, SEV_KEY, push_key, (void *)key);
}

/* ------------------------------------------------------------ timers */

double script_tick(struct script_rt *rt)
{
	/* each plugin's scheduled functions and timers share one budget per
	 * tick; what does not fit waits for the next tick */
	struct script_share *shares = NULL;
	size_t n_shares = 0, n_later = 0;
	/* scheduled functions: those queued so far; new ones wait for the next tick */
	size_t n = rt->n_sched;
	struct script_sched *q = rt->sched;
	rt->sched = NULL;
	rt->n_sched = rt->cap_sched = 0;
	for (size_t i = 0; i < n; i++) {
		struct script_plugin *P = q[i].p;
		bool alive = false;
		for (size_t k = 0; k < rt->n_plugins; k++)
			alive |= rt->plugins[k] == P;
		if (!alive)
			continue;
		struct script_share *sh = script_share_of(&shares, &n_shares, P);
		double left = rt->cfg.hook_ms - sh->used_ms, t0 = clock_now_ms();
		if (left <= 0 && !P->disabled) {
			q[n_later++] = q[i]; /* i >= n_later: kept in order, in place */
			continue;
		}
		lua_State *L = script_thread(P);
		lua_rawgeti(L, LUA_REGISTRYINDEX, q[i].ref);
		luaL_unref(L, LUA_REGISTRYINDEX, q[i].ref);
		script_uncharge(P, sizeof q[i]);
		script_call_share(P, L, NULL, NULL, 0, false, "scheduled function", left, NULL);
		sh = script_share_of(&shares, &n_shares, P);
		sh->used_ms += clock_now_ms() - t0;
	}
	if (n_later > 0) {
		/* the ones left over go first next time */
		q = xreallocarray(q, n_later + rt->n_sched, sizeof *q);
		if (rt->n_sched > 0)
			memcpy(q + n_later, rt->sched, rt->n_sched * sizeof *q);
		free(rt->sched);
		rt->sched = q;
		rt->n_sched = rt->cap_sched = n_later + rt->n_sched;
	} else {
		free(q);
	}
	double now = clock_now_ms(), next = -1;
	size_t nt = rt->n_timers;
	for (size_t i = 0; i < nt; i++) {
		struct script_timer t = rt->timers[i];
		if (t.dead || t.p->disabled || t.due > now)
			continue;
		struct script_share *sh = script_share_of(&shares, &n_shares, t.p);
		double left = rt->cfg.hook_ms - sh->used_ms, t0 = clock_now_ms();
		if (left <= 0)
			continue; /* still due: the next tick */
		if (t.interval_ms > 0)
			rt->timers[i].due = now + t.interval_ms;
		else
			rt->timers[i].dead = true;
		lua_State *L = script_thread(t.p);
		lua_rawgeti(L, LUA_REGISTRYINDEX, t.ref);
		script_call_share(t.p, L, NULL, NULL, 0, false, "timer", left, NULL);
		sh = script_share_of(&shares, &n_shares, t.p);
		sh->used_ms += clock_now_ms() - t0;
	}
	free(shares);
	size_t w = 0;
	for (size_t i = 0; i < rt->n_timers; i++) {
		struct script_timer *t = &rt->timers[i];
		if (t->dead) {
			if (t->p != NULL) {
				luaL_unref(t->p->L, LUA_REGISTRYINDEX, t->ref);
				script_uncharge(t->p, sizeof *t);
			}
			continue;
		}
		rt->timers[w++] = *t;
		double left = t->due - clock_now_ms();
		if (!t->p->disabled && (next < 0 || left < next))
			next = left < 0 ? 0 : left;
	}
	rt->n_timers = w;
	if (rt->n_sched > 0)
		next = 0;
	return next;
}

/* ---------------------------------------------------------- commands */

/* Push the string ud (a command's arguments, a completion's prefix). */
static int script_push_string(lua_State *L, void *ud)
{
	lua_pushstring(L, ud);
	return 1;
}

size_t script_command_count(const struct script_rt *rt)
{
	return rt->n_cmds;
}

void script_command_at(const struct script_rt *rt, size_t i, struct script_command_info *out)
{
	out->name = rt->cmds[i].name;
	out->help = rt->cmds[i].help;
	out->plugin = rt->cmds[i].p->name;
}

static struct script_cmd *script_cmd_find(struct script_rt *rt, const char *name)
{
	for (size_t i = 0; i < rt->n_cmds; i++)
		if (strcmp(rt->cmds[i].name, name) == 0)
			return &rt->cmds[i];
	return NULL;
}

int script_command_run(struct script_rt *rt, const char *name, const char *args, struct err *e)
{
	struct script_cmd *c = script_cmd_find(rt, name);
	if (c == NULL)
		return err_set(e, KVS_ENOTFOUND, "unknown command :%s", name);
	struct script_plugin *P = c->p;
	char what[96];
	snprintf(what, sizeof what, "command :%s", name);
	if (P->disabled)
		return err_set(e, KVS_ESTATE, "plugin %s is disabled: %s", P->name,
		               P->disabled_why ? P->disabled_why : "");
	lua_State *L = script_thread(P);
	lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);
	bool ok = script_call(P, L, script_push_string, (void *)(args ? args : ""), 0, false, what,
	                      rt->cfg.hook_ms, e);
	/* the plugin's copies run it too, so that what it sets reaches their policies */
	policy_copies_post(rt, P, name, args ? args : "");
	return ok ? KVS_OK : e->code;
}

size_t script_command_complete(struct script_rt *rt, const char *name, const char *prefix,
                               char **out, size_t cap)
{
	struct script_cmd *c = script_cmd_find(rt, name);
	size_t n = 0;
	if (c == NULL || c->complete_ref == LUA_NOREF)
		return 0;
	struct script_plugin *P = c->p;
	if (P->disabled)
		return 0;
	lua_State *L = script_thread(P);
	lua_rawgeti(L, LUA_REGISTRYINDEX, c->complete_ref);
	if (script_call(P, L, script_push_string, (void *)(prefix ? prefix : ""), 1, false,
	                "completion", rt->cfg.hook_ms, NULL)) {
		if (lua_istable(L, -1))
			for (lua_Integer i = 1; n < cap; i++) {
				if (lua_rawgeti(L, -1, i) != LUA_TSTRING) {
					lua_pop(L, 1);
					break;
				}
				out[n++] = xstrdup(lua_tostring(L, -1));
				lua_pop(L, 1);
			}
		lua_pop(L, 1);
	}
	return n;
}

/* ------------------------------------------------------------- views */

size_t script_view_count(const struct script_rt *rt)
{
	return rt->n_views;
}

const struct script_view *script_view_at(const struct script_rt *rt, size_t i)
{
	return i < rt->n_views ? &rt->views[i]->v : NULL;
}

size_t script_status_count(const struct script_rt *rt)
{
	size_t n = 0;
	for (size_t i = 0; i < rt->n_plugins; i++)
		n += rt->plugins[i]->status != NULL && !rt->plugins[i]->disabled;
	return n;
}

const char *script_status_at(const struct script_rt *rt, size_t i, const char **plugin)
{
	for (size_t k = 0; k < rt->n_plugins; k++) {
		const struct script_plugin *P = rt->plugins[k];
		if (P->status == NULL || P->disabled)
			continue;
		if (i-- == 0) {
			if (plugin)
				*plugin = P->name;
			return P->status;
		}
	}
	return NULL;
}

/* ------------------------------------------------------------ scripts */

int script_run(struct script_rt *rt, const char *path, int argc, char **argv, int *status,
               struct err *e)
{
	struct script_plugin *P;
	double dl = rt->cfg.script_ms > 0 ? clock_now_ms() + rt->cfg.script_ms : 0;
	*status = 0;
	int rc = script_plugin_file(rt, path, true, argc, argv, &P, e);
	if (P == NULL)
		return rc;
	/* what the script scheduled last, and what that scheduled (bounded),
	 * still under --timeout: the calls take the tighter deadline */
	P->deadline = dl;
	P->budget_ms = rt->cfg.script_ms;
	for (int round = 0; round < 100 && rt->n_sched > 0 && P->exit_status < 0 && !P->timed_out;
	     round++) {
		script_tick(rt);
		if (dl > 0 && clock_now_ms() > dl && P->exit_status < 0) {
			P->timed_out = true;
			rc = err_set(e, KVS_ESTATE, "%s: stopped at its --timeout of %g s", path,
			             rt->cfg.script_ms / 1000);
		}
	}
	P->deadline = 0;
	if (P->exit_status >= 0) {
		*status = P->exit_status;
		rc = KVS_OK;
	} else if (rc != KVS_OK && P->depth == 0 && P->L != NULL && !P->timed_out) {
		/* it loaded and ran, then raised: a runtime failure, not bad input */
		rc = err_set(e, KVS_ESTATE, "%s failed (the error is above)", path);
	}
	script_unload_plugin(rt, P);
	return rc;
}

int script_api_doc(FILE *fp, struct err *e)
{
	return api_doc(fp, e);
}
