/*
 * script-plugin.c: loading, reloading and unloading plugins: a new state's
 * protected set-up (sandbox, the kvscope module, a script's arguments), the
 * plugin directory, name checks, syntax errors with their line, and what
 * an unloaded plugin leaves behind (nothing: hooks, commands, views,
 * timers and sessions go with it).
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

/* ----------------------------------------------------------- plugins */

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
	/* sessions that use one of its recall scorers rank by both from now on */
	for (size_t i = 0; i < rt->n_recalls; i++)
		if (rt->recalls[i]->p == P)
			rt->recalls[i]->p = NULL;
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
int script_plugin_file(struct script_rt *rt, const char *path, bool is_script, int argc,
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
void script_unload_plugin(struct script_rt *rt, struct script_plugin *P)
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
