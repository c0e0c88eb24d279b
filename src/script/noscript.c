/*
 * noscript.c: the scripting interface when kvscope is built without Lua
 * (configure --without-lua). The runtime cannot be created; everything
 * else answers as for a runtime with no plugins.
 */
#include "script/script.h"

#include <stdlib.h>
#include <string.h>

bool script_available(void)
{
	return false;
}

void script_config_default(struct script_config *c)
{
	memset(c, 0, sizeof *c);
	gen_config_default(&c->gen);
}

int script_rt_new(struct script_rt **out, const struct script_config *c, struct err *e)
{
	(void)c;
	*out = NULL;
	return err_set(e, KVS_EUNSUPPORTED,
	               "Lua support was not built (configure found no Lua 5.4, or --without-lua)");
}

void script_rt_free(struct script_rt *rt)
{
	(void)rt;
}

int script_load(struct script_rt *rt, const char *path, struct err *e)
{
	(void)rt;
	return err_set(e, KVS_EUNSUPPORTED, "%s: Lua support was not built", path);
}

int script_load_text(struct script_rt *rt, const char *name, const char *code, struct err *e)
{
	(void)rt;
	(void)code;
	return err_set(e, KVS_EUNSUPPORTED, "%s: Lua support was not built", name);
}

void script_autoload(struct script_rt *rt)
{
	(void)rt;
}

int script_unload(struct script_rt *rt, const char *name, struct err *e)
{
	(void)rt;
	return err_set(e, KVS_ENOTFOUND, "no plugin named %s is loaded", name);
}

int script_reload(struct script_rt *rt, const char *name, struct err *e)
{
	return script_unload(rt, name, e);
}

size_t script_plugin_count(const struct script_rt *rt)
{
	(void)rt;
	return 0;
}

void script_plugin_at(const struct script_rt *rt, size_t i, struct script_plugin_info *out)
{
	(void)rt;
	(void)i;
	memset(out, 0, sizeof *out);
}

size_t script_log_count(const struct script_rt *rt, const char *plugin)
{
	(void)rt;
	(void)plugin;
	return 0;
}

const char *script_log_line(const struct script_rt *rt, const char *plugin, size_t i)
{
	(void)rt;
	(void)plugin;
	(void)i;
	return NULL;
}

int script_run(struct script_rt *rt, const char *path, int argc, char **argv, int *status,
               struct err *e)
{
	(void)rt;
	(void)argc;
	(void)argv;
	*status = 0;
	return err_set(e, KVS_EUNSUPPORTED, "%s: Lua support was not built", path);
}

void script_on_model_loaded(struct script_rt *rt, const struct gen *g)
{
	(void)rt;
	(void)g;
}

void script_on_turn_start(struct script_rt *rt, uint32_t index, const char *user)
{
	(void)rt;
	(void)index;
	(void)user;
}

void script_on_token(struct script_rt *rt, const struct gen_token *t)
{
	(void)rt;
	(void)t;
}

void script_on_turn_end(struct script_rt *rt, const struct session_turn *t)
{
	(void)rt;
	(void)t;
}

void script_on_compare(struct script_rt *rt, const struct compare_view *v)
{
	(void)rt;
	(void)v;
}

void script_on_kv_event(struct script_rt *rt, const struct kv_event *ev)
{
	(void)rt;
	(void)ev;
}

bool script_on_key(struct script_rt *rt, const char *key)
{
	(void)rt;
	(void)key;
	return false;
}

double script_tick(struct script_rt *rt)
{
	(void)rt;
	return -1;
}

void script_attach_session(struct script_rt *rt, struct session *s)
{
	(void)rt;
	(void)s;
}

size_t script_command_count(const struct script_rt *rt)
{
	(void)rt;
	return 0;
}

void script_command_at(const struct script_rt *rt, size_t i, struct script_command_info *out)
{
	(void)rt;
	(void)i;
	memset(out, 0, sizeof *out);
}

int script_command_run(struct script_rt *rt, const char *name, const char *args, struct err *e)
{
	(void)rt;
	(void)args;
	return err_set(e, KVS_ENOTFOUND, "unknown command :%s", name);
}

size_t script_command_complete(struct script_rt *rt, const char *name, const char *prefix,
                               char **out, size_t cap)
{
	(void)rt;
	(void)name;
	(void)prefix;
	(void)out;
	(void)cap;
	return 0;
}

size_t script_view_count(const struct script_rt *rt)
{
	(void)rt;
	return 0;
}

const struct script_view *script_view_at(const struct script_rt *rt, size_t i)
{
	(void)rt;
	(void)i;
	return NULL;
}

size_t script_status_count(const struct script_rt *rt)
{
	(void)rt;
	return 0;
}

const char *script_status_at(const struct script_rt *rt, size_t i, const char **plugin)
{
	(void)rt;
	(void)i;
	(void)plugin;
	return NULL;
}

size_t script_policy_count(const struct script_rt *rt)
{
	(void)rt;
	return 0;
}

const char *script_policy_name_at(const struct script_rt *rt, size_t i)
{
	(void)rt;
	(void)i;
	return NULL;
}

int script_policy_scorer(struct script_rt *rt, const char *name, struct kv_scorer *out,
                         struct kv_policy *base, struct err *e)
{
	(void)rt;
	(void)out;
	(void)base;
	return err_set(e, KVS_ENOTFOUND, "no Lua retention policy named %s (Lua support was not built)",
	               name);
}

int script_api_doc(FILE *fp, struct err *e)
{
	(void)fp;
	return err_set(e, KVS_EUNSUPPORTED, "Lua support was not built");
}

char *script_data_dir(void)
{
	const char *env = getenv("KVSCOPE_DATADIR");
	return xstrdup(env && *env ? env : ".");
}
