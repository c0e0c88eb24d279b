/*
 * script.c: the Lua runtime: calls and their budgets, messages and logs,
 * the runtime's life and headless scripts (loading plugins:
 * script-plugin.c; hooks, timers, commands and views: script-dispatch.c).
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
	"token",        "turn_start", "turn_end", "evict",  "attention",
	"model_loaded", "key",        "unload",   "recall", "compare",
};

const bool script_event_fast[SEV_COUNT] = {
	[SEV_TOKEN] = true,     [SEV_TURN_START] = true, [SEV_EVICT] = true,
	[SEV_ATTENTION] = true, [SEV_RECALL] = true,
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
const char *script_error_text(lua_State *L, int idx, char *buf, size_t n)
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
bool script_call_share(struct script_plugin *P, lua_State *L, int (*push)(lua_State *L, void *ud),
                       void *ud, int nres, bool fast, const char *what, double left_ms,
                       struct err *e)
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
	for (size_t i = 0; i < rt->n_recalls; i++) {
		free(rt->recalls[i]->name);
		free(rt->recalls[i]);
	}
	free(rt->recalls);
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
