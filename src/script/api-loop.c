/*
 * api-loop.c: kvscope.on and the main loop: hooks, scheduled functions,
 * timers, the clock, the log, kvscope.exit and kvscope.sleep.
 *
 * Hooks, timers and scheduled functions are rows of the runtime's arrays
 * (script_rt) holding a registry reference into the plugin's state; the
 * runtime (script.c) calls them. A hook added during a dispatch is appended
 * and sorted in when the outermost dispatch ends; one removed during a
 * dispatch is flagged dead and dropped then. kvscope.exit raises a table
 * the runtime recognises (script_pcall), so a script ends through every
 * nested call.
 */
#include "script/script-int.h"

#include <limits.h>
#include <math.h>
#include <string.h>
#include <time.h>

#define API_TIMER "kvscope.timer"

/* ------------------------------------------------------------------ hooks */

static int api_on(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	struct script_rt *rt = P->rt;
	const char *ev = luaL_checkstring(L, 1);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	lua_Integer prio = script_optint(L, 3, "kvscope.on: priority", 0, INT_MIN, INT_MAX);
	int k;
	for (k = 0; k < SEV_COUNT; k++)
		if (strcmp(ev, script_event_names[k]) == 0)
			break;
	if (k == SEV_COUNT) {
		luaL_Buffer b;
		luaL_buffinit(L, &b);
		for (int i = 0; i < SEV_COUNT; i++) {
			luaL_addstring(&b, i ? ", " : "");
			luaL_addstring(&b, script_event_names[i]);
		}
		luaL_pushresult(&b);
		return script_error(L, "kvscope.on: unknown event '%s' (expected one of %s)", ev,
		                    lua_tostring(L, -1));
	}
	script_charge(L, sizeof(struct script_hook), "kvscope.on");
	if (rt->n_hooks == rt->cap_hooks) {
		rt->cap_hooks = rt->cap_hooks ? rt->cap_hooks * 2 : 16;
		rt->hooks = xreallocarray(rt->hooks, rt->cap_hooks, sizeof *rt->hooks);
	}
	lua_pushvalue(L, 2);
	struct script_hook h = {
		.ev = (enum script_event)k,
		.priority = (int)prio,
		.p = P,
		.ref = luaL_ref(L, LUA_REGISTRYINDEX),
		.id = rt->next_id++,
		.seq = ++rt->seq,
	};
	rt->hooks[rt->n_hooks++] = h;
	if (rt->dispatching == 0) {
		/* keep the order now; during a dispatch it is restored at its end */
		for (size_t i = rt->n_hooks - 1; i > 0; i--) {
			struct script_hook *a = &rt->hooks[i - 1], *b = &rt->hooks[i];
			if (a->priority >= b->priority)
				break;
			struct script_hook t = *a;
			*a = *b;
			*b = t;
		}
	}
	lua_pushinteger(L, (lua_Integer)h.id);
	return 1;
}

static int api_off(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	struct script_rt *rt = P->rt;
	lua_Integer id = script_int(L, 1, "kvscope.off: id", 1, LUA_MAXINTEGER);
	for (size_t i = 0; i < rt->n_hooks; i++)
		if ((lua_Integer)rt->hooks[i].id == id && rt->hooks[i].p == P && !rt->hooks[i].dead) {
			rt->hooks[i].dead = true;
			if (rt->dispatching == 0) {
				luaL_unref(L, LUA_REGISTRYINDEX, rt->hooks[i].ref);
				script_uncharge(P, sizeof(struct script_hook));
				memmove(rt->hooks + i, rt->hooks + i + 1,
				        (rt->n_hooks - i - 1) * sizeof *rt->hooks);
				rt->n_hooks--;
			}
			lua_pushboolean(L, 1);
			return 1;
		}
	lua_pushboolean(L, 0);
	return 1;
}

static int api_schedule(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	struct script_rt *rt = P->rt;
	luaL_checktype(L, 1, LUA_TFUNCTION);
	script_charge(L, sizeof(struct script_sched), "kvscope.schedule");
	if (rt->n_sched == rt->cap_sched) {
		rt->cap_sched = rt->cap_sched ? rt->cap_sched * 2 : 16;
		rt->sched = xreallocarray(rt->sched, rt->cap_sched, sizeof *rt->sched);
	}
	lua_pushvalue(L, 1);
	rt->sched[rt->n_sched].p = P;
	rt->sched[rt->n_sched].ref = luaL_ref(L, LUA_REGISTRYINDEX);
	rt->n_sched++;
	return 0;
}

static int api_in_fast(lua_State *L)
{
	lua_pushboolean(L, script_plugin_of(L)->fast > 0);
	return 1;
}

static int api_log(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	script_concat_args(L, ' ');
	script_log(P, "%s", lua_tostring(L, -1));
	if (P->rt->cfg.headless)
		script_notify(P->rt, P, "%s", lua_tostring(L, -1));
	return 0;
}

static int api_clock(lua_State *L)
{
	lua_pushnumber(L, clock_now_ms());
	return 1;
}

/* ----------------------------------------------------------------- timers */

struct api_timer {
	uint64_t id;
};

static int api_timer(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	struct script_rt *rt = P->rt;
	double ms = luaL_checknumber(L, 1);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	bool periodic = lua_toboolean(L, 3);
	if (!(ms >= 0) || (periodic && ms < 1))
		return script_error(L, "kvscope.timer: %f ms (expected >= 0, >= 1 when periodic)", ms);
	script_charge(L, sizeof(struct script_timer), "kvscope.timer");
	if (rt->n_timers == rt->cap_timers) {
		rt->cap_timers = rt->cap_timers ? rt->cap_timers * 2 : 8;
		rt->timers = xreallocarray(rt->timers, rt->cap_timers, sizeof *rt->timers);
	}
	lua_pushvalue(L, 2);
	struct script_timer t = {
		.p = P,
		.ref = luaL_ref(L, LUA_REGISTRYINDEX),
		.id = rt->next_id++,
		.due = clock_now_ms() + ms,
		.interval_ms = periodic ? ms : 0,
	};
	rt->timers[rt->n_timers++] = t;
	struct api_timer *u = lua_newuserdatauv(L, sizeof *u, 0);
	u->id = t.id;
	luaL_setmetatable(L, API_TIMER);
	return 1;
}

static int api_timer_stop(lua_State *L)
{
	struct api_timer *u = luaL_checkudata(L, 1, API_TIMER);
	struct script_rt *rt = api_rt(L);
	bool found = false;
	for (size_t i = 0; i < rt->n_timers; i++)
		if (rt->timers[i].id == u->id && !rt->timers[i].dead) {
			rt->timers[i].dead = true;
			found = true;
		}
	lua_pushboolean(L, found);
	return 1;
}

/* ---------------------------------------------------------------- scripts */

static int api_exit(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	const char *msg = luaL_optstring(L, 2, NULL);
	if (!P->is_script)
		return msg ? script_error(L, "%s", msg)
		           : script_error(L,
		                          "kvscope.exit ends a script (kvscope run); a plugin is "
		                          "stopped with :plugin unload");
	lua_Integer status = script_optint(L, 1, "kvscope.exit: status", 0, 0, 125);
	if (msg != NULL) {
		fflush(stdout);
		fprintf(stderr, "%s\n", msg);
	}
	return api_raise_exit(L, (int)status);
}

/* kvscope.sleep(ms): run due timers and scheduled functions until ms have
 * passed, the script exited, or its deadline came (then the budget error). */
static int api_sleep(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	double ms = luaL_checknumber(L, 1);
	if (!P->is_script || P->depth != 1)
		return script_error(L, "kvscope.sleep is for a script's main chunk (kvscope run)");
	if (ms != ms)
		return script_error(L, "kvscope.sleep: ms is not a number (NaN)");
	double end = clock_now_ms() + (ms > 0 ? ms : 0);
	for (;;) {
		double next = script_tick(P->rt);
		double now = clock_now_ms(), left = end - now;
		if (P->exit_status >= 0)
			break; /* a timer ended the script: api_call raises the exit */
		if (P->deadline > 0 && now >= P->deadline)
			return sandbox_overrun(L);
		if (left <= 0)
			break;
		if (next >= 0 && next < left)
			left = next;
		if (P->deadline > 0 && P->deadline - now < left)
			left = P->deadline - now;
		left = KVS_MIN(left, 1000.0); /* whole seconds at most: an infinite ms stays finite */
		struct timespec ts = { (time_t)(left / 1000), (long)(fmod(left, 1000) * 1e6) };
		nanosleep(&ts, NULL);
	}
	return 0;
}

static int api_version(lua_State *L)
{
	lua_pushinteger(L, SCRIPT_API_VERSION);
	return 1;
}

static const struct api_fn api_loop_fns[] = {
	{ "on", API_FAST, API_C, "(event, fn [, priority]) -> id",
	  "call fn for every event (see Events); higher priority first; returns the hook's id",
	  api_on },
	{ "off", API_FAST, API_C, "(id) -> bool",
	  "remove one of the plugin's hooks (safe during dispatch)", api_off },
	{ "schedule", API_FAST, API_C, "(fn)",
	  "run fn on the main loop at the next tick (the way out of a fast hook)", api_schedule },
	{ "in_fast", API_FAST, API_C, "() -> bool", "whether the caller runs in a fast hook",
	  api_in_fast },
	{ "timer", API_DEFERRED, API_C, "(ms, fn [, periodic]) -> timer",
	  "call fn after ms (every ms when periodic) on the main loop; timer:stop() cancels",
	  api_timer },
	{ "timer:stop", API_FAST, API_C, "() -> bool", "cancel the timer", api_timer_stop },
	{ "exit", API_FAST, API_C, "([status [, message]])",
	  "scripts: end now with exit status 0..125 (default 0), printing message on stderr; in a "
	  "plugin it raises message as an error",
	  api_exit },
	{ "sleep", API_DEFERRED, API_C, "(ms)",
	  "scripts only: wait ms while running due timers and scheduled functions", api_sleep },
	{ "clock", API_FAST, API_C, "() -> ms", "a monotonic clock in milliseconds", api_clock },
	{ "log", API_FAST, API_C, "(...)",
	  "append a line to the plugin's log (:plugin log NAME; stderr under kvscope run)", api_log },
	{ "api_version", API_FAST, API_C, "() -> n", "the API's version number (1)", api_version },
};

static const struct api_type api_loop_types[] = {
	{ API_TIMER, "timer", NULL, NULL, NULL },
};

const struct api_lib api_loop_lib = API_LIB(api_loop_fns, api_loop_types);
