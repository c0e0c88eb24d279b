/*
 * script-dispatch.c: the host calling into plugins: hooks by event (sorted
 * by priority, settled after the outermost dispatch), the event pushers,
 * scheduled functions and timers (one hook budget per plugin per tick),
 * commands and their completion, views and status items.
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
void script_hooks_settle(struct script_rt *rt)
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

/* A comparison as a table (the "compare" event). */
static int push_compare(lua_State *L, void *ud)
{
	static const char *const states[] = { "replaying", "following", "stopped" };
	const struct compare_view *v = ud;
	const struct {
		const char *name;
		lua_Integer n;
	} ints[] = {
		{ "done", v->done },
		{ "total", v->total },
		{ "budget", v->side[1].budget },
		{ "kept_a", v->sum.kept[0] },
		{ "kept_b", v->sum.kept[1] },
		{ "overlap", v->sum.overlap },
		{ "exchanges", v->sum.turns },
		{ "kv_bytes", (lua_Integer)v->kv_bytes },
	};
	lua_createtable(L, 0, 14);
	lua_pushstring(L, (unsigned)v->state < KVS_ARRAY_LEN(states) ? states[v->state] : "?");
	lua_setfield(L, -2, "state");
	for (size_t i = 0; i < KVS_ARRAY_LEN(ints); i++) {
		lua_pushinteger(L, ints[i].n);
		lua_setfield(L, -2, ints[i].name);
	}
	lua_pushstring(L, v->side[1].policy);
	lua_setfield(L, -2, "policy");
	if (v->sum.div_turn >= 0) {
		lua_pushinteger(L, v->sum.div_turn + 1);
		lua_setfield(L, -2, "part_exchange");
		lua_pushinteger(L, v->sum.div_tok + 1);
		lua_setfield(L, -2, "part_token");
	}
	lua_pushstring(L, v->msg);
	lua_setfield(L, -2, "msg");
	return 1;
}

void script_on_compare(struct script_rt *rt, const struct compare_view *v)
{
	script_dispatch(rt, SEV_COMPARE, push_compare, (void *)v);
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

static int push_recall(lua_State *L, void *ud)
{
	const struct evict_args *a = ud;
	const struct kv_event *ev = a->ev;
	lua_createtable(L, 0, 4);
	api_push_toks(L, ev->recalled, ev->n_recalled, a->rt->vocab);
	lua_setfield(L, -2, "tokens");
	lua_pushinteger(L, ev->n_recalled);
	lua_setfield(L, -2, "n");
	lua_pushstring(L, ev->policy ? ev->policy : "");
	lua_setfield(L, -2, "policy");
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
	} else if (ev->kind == KV_EVENT_RECALL) {
		script_dispatch(rt, SEV_RECALL, push_recall, &a);
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
