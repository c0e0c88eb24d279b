/*
 * api-view.c: what the user sees and drives: plugin commands, status items,
 * views (panes of text lines, bars and heatmaps), the plugin list, and the
 * files and progress bar a script writes.
 *
 * All of it is plain data in the runtime (script_rt): a renderer or the
 * command line reads it through script.h, never through Lua. A command or
 * view belongs to the plugin that created it; another plugin may not take
 * its name, and unloading the owner removes it (script.c). A view's version
 * moves on every change so a renderer redraws only what moved.
 *
 * Files go only under the results directory, by relative paths of plain
 * components (letters, digits, '.', '-', '_'; no '.', '..' or empty
 * component, no NUL). The directory is never empty or "/", and below it
 * every component is opened with O_NOFOLLOW from the one before (openat,
 * mkdirat), so a symbolic link inside it, to a file or a folder, is
 * refused rather than followed; the file written must be a regular file
 * with one name (not a hard link to a file elsewhere, not a FIFO).
 */
#include "script/script-int.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define API_VIEW "kvscope.view"

/* ------------------------------------------------------- commands, status */

static int api_status(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	size_t len = 0;
	const char *s = luaL_optlstring(L, 1, NULL, &len);
	/* at most 200 bytes, cut at a character boundary */
	size_t n = s ? utf8_complete_prefix((const uint8_t *)s, KVS_MIN(len, 200)) : 0;
	script_charge(L, s ? n + 1 : 0, "kvscope.status");
	if (P->status != NULL)
		script_uncharge(P, strlen(P->status) + 1);
	free(P->status);
	P->status = s ? xstrndup(s, n) : NULL;
	return 0;
}

/* What the host holds for a command. */
static size_t api_cmd_bytes(const char *name, const char *help)
{
	return sizeof(struct script_cmd) + strlen(name) + 1 + strlen(help) + 1;
}

static int api_command(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	struct script_rt *rt = P->rt;
	const char *name = luaL_checkstring(L, 1);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	const char *help = luaL_optstring(L, 3, "");
	if (!lua_isnoneornil(L, 4))
		luaL_checktype(L, 4, LUA_TFUNCTION);
	size_t n = strlen(name);
	bool ok = n > 0 && n <= 32 && name[0] >= 'a' && name[0] <= 'z';
	for (size_t i = 0; ok && i < n; i++)
		ok = (name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
		        name[i] == '-' || name[i] == '_';
	if (!ok)
		return script_error(L,
		                    "kvscope.command: bad name '%s' (expected lower-case letters, "
		                    "digits, '-' and '_', starting with a letter)",
		                    name);
	/* counted before anything changes (a refusal leaves the old command) */
	script_charge(L, api_cmd_bytes(name, help), "kvscope.command");
	for (size_t i = 0; i < rt->n_cmds; i++)
		if (strcmp(rt->cmds[i].name, name) == 0) {
			if (rt->cmds[i].p != P)
				return script_error(L, "kvscope.command: :%s belongs to plugin %s", name,
				                    rt->cmds[i].p->name);
			luaL_unref(L, LUA_REGISTRYINDEX, rt->cmds[i].ref);
			luaL_unref(L, LUA_REGISTRYINDEX, rt->cmds[i].complete_ref);
			script_uncharge(P, api_cmd_bytes(rt->cmds[i].name, rt->cmds[i].help));
			free(rt->cmds[i].name);
			free(rt->cmds[i].help);
			rt->cmds[i] = rt->cmds[--rt->n_cmds];
			break;
		}
	if (rt->n_cmds == rt->cap_cmds) {
		rt->cap_cmds = rt->cap_cmds ? rt->cap_cmds * 2 : 8;
		rt->cmds = xreallocarray(rt->cmds, rt->cap_cmds, sizeof *rt->cmds);
	}
	struct script_cmd *c = &rt->cmds[rt->n_cmds++];
	c->name = xstrdup(name);
	c->help = xstrdup(help);
	c->p = P;
	lua_pushvalue(L, 2);
	c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
	c->complete_ref = LUA_NOREF;
	if (!lua_isnoneornil(L, 4)) {
		lua_pushvalue(L, 4);
		c->complete_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	}
	return 0;
}

/* true, or false and the error's message: what a call that may fail returns. */
static int api_push_result(lua_State *L, int rc, const struct err *e)
{
	lua_pushboolean(L, rc == KVS_OK);
	if (rc == KVS_OK)
		return 1;
	lua_pushstring(L, e->msg);
	return 2;
}

static int api_run_command(lua_State *L)
{
	struct err e;
	const char *name = luaL_checkstring(L, 1);
	const char *args = luaL_optstring(L, 2, "");
	int rc = script_command_run(api_rt(L), name, args, &e);
	return api_push_result(L, rc, &e);
}

static int api_commands(lua_State *L)
{
	struct script_rt *rt = api_rt(L);
	lua_createtable(L, (int)rt->n_cmds, 0);
	for (size_t i = 0; i < rt->n_cmds; i++) {
		lua_createtable(L, 0, 3);
		api_setstr(L, "name", rt->cmds[i].name);
		api_setstr(L, "help", rt->cmds[i].help);
		api_setstr(L, "plugin", rt->cmds[i].p->name);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	return 1;
}

/* ------------------------------------------------------------------ views */

struct api_view {
	struct script_viewrec *rec;
};

static int api_view(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	struct script_rt *rt = P->rt;
	const char *name = luaL_checkstring(L, 1);
	struct script_viewrec *rec = NULL;
	for (size_t i = 0; i < rt->n_views; i++)
		if (strcmp(rt->views[i]->v.name, name) == 0) {
			if (rt->views[i]->p != P)
				return script_error(L, "kvscope.view: view %s belongs to plugin %s", name,
				                    rt->views[i]->p->name);
			rec = rt->views[i];
		}
	if (rec == NULL) {
		script_charge(L, sizeof *rec + sizeof *rt->views + strlen(name) + 1, "kvscope.view");
		rec = xcalloc(1, sizeof *rec);
		rec->v.name = xstrdup(name);
		rec->v.plugin = P->name;
		rec->p = P;
		rt->views = xreallocarray(rt->views, rt->n_views + 1, sizeof *rt->views);
		rt->views[rt->n_views++] = rec;
	}
	struct api_view *u = lua_newuserdatauv(L, sizeof *u, 0);
	u->rec = rec;
	luaL_setmetatable(L, API_VIEW);
	return 1;
}

/* What the host holds for an item beyond its slot: its text and cells. */
static size_t api_item_bytes(const struct script_item *it)
{
	return (it->text ? strlen(it->text) + 1 : 0) + (size_t)it->rows * it->cols * sizeof *it->cells;
}

/* A new item of v, its text and cells[0, n_cells) counted in the
 * plugin's cap first (the item takes both). */
static struct script_item *api_view_add(lua_State *L, enum script_item_kind kind, size_t text_len,
                                        size_t n_cells)
{
	struct api_view *u = luaL_checkudata(L, 1, API_VIEW);
	struct script_view *v = &u->rec->v;
	if (v->n_items >= 10000)
		script_error(L, "view %s: more than 10000 items (clear it first)", v->name);
	size_t grow = v->n_items == v->cap_items ? (v->cap_items ? v->cap_items : 16) : 0;
	script_charge(L, grow * sizeof *v->items + text_len + 1 + n_cells * sizeof(float), "view:add");
	if (grow > 0) {
		v->cap_items += grow;
		v->items = xreallocarray(v->items, v->cap_items, sizeof *v->items);
	}
	struct script_item *it = &v->items[v->n_items++];
	memset(it, 0, sizeof *it);
	it->kind = kind;
	v->version++;
	return it;
}

static int api_view_clear(lua_State *L)
{
	struct api_view *u = luaL_checkudata(L, 1, API_VIEW);
	struct script_view *v = &u->rec->v;
	for (size_t i = 0; i < v->n_items; i++) {
		script_uncharge(u->rec->p, api_item_bytes(&v->items[i]));
		free(v->items[i].text);
		free(v->items[i].cells);
	}
	v->n_items = 0;
	v->version++;
	return 0;
}

static int api_view_text(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 2, &len);
	len = strlen(s); /* a line ends at a NUL */
	struct script_item *it = api_view_add(L, SCRIPT_ITEM_TEXT, len, 0);
	it->text = xstrndup(s, len);
	return 0;
}

static int api_view_bar(lua_State *L)
{
	const char *label = luaL_checkstring(L, 2);
	double value = luaL_checknumber(L, 3), max = luaL_optnumber(L, 4, 1.0);
	if (!(max > 0))
		return script_error(L, "view:bar: max %f (expected > 0)", max);
	struct script_item *it = api_view_add(L, SCRIPT_ITEM_BAR, strlen(label), 0);
	it->text = xstrdup(label);
	it->value = value < 0 ? 0 : value > max ? max : value;
	it->max = max;
	return 0;
}

/* view:heatmap(label, matrix): matrix is a table of equal-length rows of
 * numbers. The cells are read into a buffer the state owns (freed by its
 * collector whatever error comes), then copied into the item. */
static int api_view_heatmap(lua_State *L)
{
	const char *label = luaL_checkstring(L, 2);
	luaL_checktype(L, 3, LUA_TTABLE);
	lua_settop(L, 3);
	lua_Integer rows = (lua_Integer)lua_rawlen(L, 3), cols = -1;
	if (rows < 1 || rows > 4096)
		return script_error(L, "view:heatmap: %d rows (expected 1..4096)", (int)rows);
	float *cells = NULL; /* (rows, cols) */
	for (lua_Integer r = 1; r <= rows; r++) {
		if (lua_rawgeti(L, 3, r) != LUA_TTABLE)
			return script_error(L, "view:heatmap: row %d is not a table of numbers", (int)r);
		lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
		if (cols < 0) {
			cols = n;
			if (cols < 1 || cols > 4096)
				return script_error(L, "view:heatmap: %d columns (expected 1..4096)", (int)cols);
			cells = lua_newuserdatauv(L, (size_t)(rows * cols) * sizeof *cells, 0);
			lua_insert(L, 4); /* below the row: anchored until the call returns */
		} else if (n != cols) {
			return script_error(L, "view:heatmap: row %d has %d values, row 1 has %d", (int)r,
			                    (int)n, (int)cols);
		}
		for (lua_Integer c = 1; c <= cols; c++) {
			lua_rawgeti(L, -1, c);
			int isnum;
			double x = lua_tonumberx(L, -1, &isnum);
			lua_pop(L, 1);
			if (!isnum)
				return script_error(L, "view:heatmap: row %d, column %d is not a number", (int)r,
				                    (int)c);
			cells[(r - 1) * cols + (c - 1)] = (float)x;
		}
		lua_pop(L, 1);
	}
	size_t n_cells = (size_t)(rows * cols);
	struct script_item *it = api_view_add(L, SCRIPT_ITEM_HEATMAP, strlen(label), n_cells);
	it->text = xstrdup(label);
	it->rows = (uint32_t)rows;
	it->cols = (uint32_t)cols;
	it->cells = xmallocarray(n_cells, sizeof *it->cells);
	memcpy(it->cells, cells, n_cells * sizeof *cells);
	it->lo = it->hi = cells[0];
	for (size_t i = 1; i < n_cells; i++) {
		it->lo = fminf(it->lo, cells[i]);
		it->hi = fmaxf(it->hi, cells[i]);
	}
	return 0;
}

static const char *const api_item_kinds[] = { "text", "bar", "heatmap" };

/* Push v's items as a list of tables. */
static void api_push_items(lua_State *L, const struct script_view *v)
{
	lua_createtable(L, (int)v->n_items, 0);
	for (size_t i = 0; i < v->n_items; i++) {
		struct script_item *it = &v->items[i];
		lua_createtable(L, 0, 6);
		api_setstr(L, "kind", api_item_kinds[it->kind]);
		api_setstr(L, "text", it->text);
		if (it->kind == SCRIPT_ITEM_BAR) {
			api_setnum(L, "value", it->value);
			api_setnum(L, "max", it->max);
		} else if (it->kind == SCRIPT_ITEM_HEATMAP) {
			api_setint(L, "rows", it->rows);
			api_setint(L, "cols", it->cols);
			api_setnum(L, "lo", it->lo);
			api_setnum(L, "hi", it->hi);
		}
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
}

/* view:items(): the view's items as tables (what a renderer gets). */
static int api_view_items(lua_State *L)
{
	struct api_view *u = luaL_checkudata(L, 1, API_VIEW);
	api_push_items(L, &u->rec->v);
	return 1;
}

/* kvscope.views(): every plugin's views, read-only. */
static int api_views(lua_State *L)
{
	struct script_rt *rt = api_rt(L);
	lua_createtable(L, (int)rt->n_views, 0);
	for (size_t i = 0; i < rt->n_views; i++) {
		const struct script_view *v = &rt->views[i]->v;
		lua_createtable(L, 0, 3);
		api_setstr(L, "name", v->name);
		api_setstr(L, "plugin", v->plugin);
		api_push_items(L, v);
		lua_setfield(L, -2, "items");
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	return 1;
}

/* ---------------------------------------------------------------- plugins */

static int api_plugins(lua_State *L)
{
	struct script_rt *rt = api_rt(L);
	size_t n = script_plugin_count(rt);
	lua_createtable(L, (int)n, 0);
	for (size_t i = 0; i < n; i++) {
		struct script_plugin_info in;
		script_plugin_at(rt, i, &in);
		lua_createtable(L, 0, 6);
		api_setstr(L, "name", in.name);
		api_setstr(L, "path", in.path);
		lua_pushboolean(L, in.enabled);
		lua_setfield(L, -2, "enabled");
		if (in.disabled_why)
			api_setstr(L, "why", in.disabled_why);
		api_setint(L, "errors", in.n_errors);
		api_setint(L, "mem", (lua_Integer)in.mem_bytes);
		api_setint(L, "host", (lua_Integer)in.host_bytes);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	return 1;
}

static int api_plugin_log(lua_State *L)
{
	struct script_rt *rt = api_rt(L);
	const char *name = luaL_checkstring(L, 1);
	size_t n = script_log_count(rt, name);
	lua_createtable(L, (int)n, 0);
	for (size_t i = 0; i < n; i++) {
		lua_pushstring(L, script_log_line(rt, name, i));
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	return 1;
}

static int api_load_plugin(lua_State *L)
{
	struct err e;
	size_t len;
	const char *path = luaL_checklstring(L, 1, &len);
	int rc = strlen(path) != len
	        ? err_set(&e, KVS_EARG, "the path '%s...' holds a NUL byte: refused", path)
	        : script_load(api_rt(L), path, &e);
	return api_push_result(L, rc, &e);
}

static int api_unload_plugin(lua_State *L)
{
	struct err e;
	int rc = script_unload(api_rt(L), luaL_checkstring(L, 1), &e);
	return api_push_result(L, rc, &e);
}

static int api_status_items(lua_State *L)
{
	struct script_rt *rt = api_rt(L);
	size_t n = script_status_count(rt);
	lua_createtable(L, 0, (int)n);
	for (size_t i = 0; i < n; i++) {
		const char *plugin;
		const char *s = script_status_at(rt, i, &plugin);
		lua_pushstring(L, s);
		lua_setfield(L, -2, plugin);
	}
	return 1;
}

/* -------------------------------------------------------------- files out */

/* A relative path of plain components under the results directory. */
static bool api_path_ok(const char *p)
{
	if (p[0] == '\0' || p[0] == '/' || strlen(p) > 200)
		return false;
	for (const char *s = p; *s;) {
		size_t n = strcspn(s, "/");
		if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
			return false;
		for (size_t i = 0; i < n; i++) {
			char c = s[i];
			if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			      c == '.' || c == '-' || c == '_'))
				return false;
		}
		s += n + (s[n] == '/');
	}
	return true;
}

int api_results_check(const char *dir, struct err *e)
{
	struct stat st, root;

	if (dir[0] == '\0')
		return err_set(e, KVS_EARG,
		               "the results directory is empty: expected a folder "
		               "(kvscope.write writes under it)");
	if (stat(dir, &st) == 0 && stat("/", &root) == 0 && st.st_dev == root.st_dev &&
	    st.st_ino == root.st_ino)
		return err_set(e, KVS_EARG,
		               "the results directory %s is the root folder: expected a "
		               "folder of its own (kvscope.write writes under it)",
		               dir);
	return KVS_OK;
}

/* Open the folder comp inside the folder dfd without following a link,
 * creating it when missing; closes dfd. -1 with errno set on failure. */
static int api_open_dir_at(int dfd, const char *comp)
{
	int fd = openat(dfd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT && (mkdirat(dfd, comp, 0777) == 0 || errno == EEXIST))
		fd = openat(dfd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int saved = errno;
	close(dfd);
	errno = saved;
	return fd;
}

/* Open rel (checked by api_path_ok) for writing under the results
 * directory: the directory itself is the user's choice (a link there is
 * followed, it is created when missing), every component below it is
 * opened without following links, so no link inside it leads out; the file
 * must be a regular file with no other name (a hard link would write
 * elsewhere). Returns the descriptor, or raises. */
static int api_open_result(lua_State *L, struct script_rt *rt, const char *rel, bool append)
{
	struct err e;
	struct stat st;

	if (api_results_check(rt->results_dir, &e) != KVS_OK)
		return script_error(L, "kvscope.write: %s", e.msg);
	if (file_mkdirs(rt->results_dir, 0777) != 0)
		return script_error(L, "kvscope.write: cannot create %s: %s", rt->results_dir,
		                    strerror(errno));
	int dfd = open(rt->results_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return script_error(L, "kvscope.write: cannot open %s: %s", rt->results_dir,
		                    strerror(errno));
	if (api_results_check(rt->results_dir, &e) != KVS_OK) {
		close(dfd);
		return script_error(L, "kvscope.write: %s", e.msg);
	}
	char comp[256]; /* api_path_ok: at most 200 bytes */
	const char *s = rel;
	for (size_t n = strcspn(s, "/"); s[n] == '/'; n = strcspn(s, "/")) {
		memcpy(comp, s, n);
		comp[n] = '\0';
		dfd = api_open_dir_at(dfd, comp);
		if (dfd < 0)
			return script_error(
			        L, "kvscope.write: %s/%.*s: %s", rt->results_dir, (int)(s + n - rel), rel,
			        errno == ELOOP || errno == ENOTDIR ? "not a folder (a link or a file): refused"
			                                           : strerror(errno));
		s += n + 1;
	}
	/* O_NONBLOCK: a FIFO placed there fails instead of waiting for a reader */
	int fd = openat(dfd, s,
	                O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC |
	                        (append ? O_APPEND : 0),
	                0666);
	int saved = errno;
	close(dfd);
	if (fd < 0)
		return script_error(L, "kvscope.write: %s/%s: %s", rt->results_dir, rel,
		                    saved == ELOOP           ? "a symbolic link: refused"
		                            : saved == ENXIO ? "a FIFO: refused"
		                                             : strerror(saved));
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1) {
		close(fd);
		return script_error(L,
		                    "kvscope.write: %s/%s: not a regular file of its own (a "
		                    "device, a FIFO or a hard link): refused",
		                    rt->results_dir, rel);
	}
	if (!append && ftruncate(fd, 0) != 0) {
		saved = errno;
		close(fd);
		return script_error(L, "kvscope.write: %s/%s: %s", rt->results_dir, rel, strerror(saved));
	}
	return fd;
}

static int api_write(lua_State *L)
{
	struct script_rt *rt = api_rt(L);
	size_t rlen, len;
	const char *rel = luaL_checklstring(L, 1, &rlen);
	const char *text = luaL_checklstring(L, 2, &len);
	const char *mode = luaL_optstring(L, 3, "w");
	if (strlen(rel) != rlen)
		return script_error(L, "kvscope.write: the path '%s...' holds a NUL byte: refused", rel);
	if (!api_path_ok(rel))
		return script_error(L,
		                    "kvscope.write: '%s' refused (expected a relative path of letters, "
		                    "digits, '.', '-', '_' under the results directory, no '..')",
		                    rel);
	if (strcmp(mode, "w") != 0 && strcmp(mode, "a") != 0)
		return script_error(L, "kvscope.write: mode '%s' (expected \"w\" or \"a\")", mode);
	int fd = api_open_result(L, rt, rel, mode[0] == 'a');
	for (size_t done = 0; done < len;) {
		ssize_t n = write(fd, text + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int saved = n < 0 ? errno : EIO;
			close(fd);
			return script_error(L, "kvscope.write: cannot write %s/%s: %s", rt->results_dir, rel,
			                    strerror(saved));
		}
		done += (size_t)n;
	}
	if (close(fd) != 0)
		return script_error(L, "kvscope.write: cannot write %s/%s: %s", rt->results_dir, rel,
		                    strerror(errno));
	lua_pushfstring(L, "%s/%s", rt->results_dir, rel);
	return 1;
}

/* kvscope.export_view(view, file [, format]): the workbench writes what it
 * shows to file under the results directory. The file is opened here as
 * kvscope.write opens its own (no link inside the folder leads out); the
 * front end gets only the descriptor. */
static int api_export_view(lua_State *L)
{
	struct script_rt *rt = api_rt(L);
	const char *view = luaL_checkstring(L, 1);
	size_t rlen, n;
	const char *rel = luaL_checklstring(L, 2, &rlen);
	const char *fmt = luaL_optstring(L, 3, "");
	char arg[96];
	struct err e;

	if (strlen(rel) != rlen || !api_path_ok(rel))
		return script_error(L,
		                    "kvscope.export_view: '%s' refused (expected a relative path of "
		                    "letters, digits, '.', '-', '_' under the results directory, no '..')",
		                    rel);
	if (rt->cfg.send == NULL)
		return script_error(L,
		                    "kvscope.export_view: no workbench here (it writes what the "
		                    "workbench's panes show)");
	n = strlen(rel);
	if (fmt[0] == '\0') /* from the name: .csv, else JSON */
		fmt = n > 4 && strcmp(rel + n - 4, ".csv") == 0 ? "csv" : "json";
	int fd = api_open_result(L, rt, rel, false);
	snprintf(arg, sizeof arg, "%.32s\t%.8s\t%d", view, fmt, fd);
	int rc = rt->cfg.send(rt->cfg.send_ud, "export_view", arg, &e);
	close(fd);
	if (rc != KVS_OK)
		return script_error(L, "kvscope.export_view: %s", e.msg);
	lua_pushfstring(L, "%s/%s", rt->results_dir, rel);
	return 1;
}

static int api_progress(lua_State *L)
{
	struct script_plugin *P = script_plugin_of(L);
	double done = luaL_checknumber(L, 1), total = luaL_checknumber(L, 2);
	const char *text = luaL_optstring(L, 3, "");
	if (!P->rt->cfg.headless || !isatty(2) || !(total > 0))
		return 0;
	int w = 30, fill = (int)(w * (done / total < 1 ? done / total : 1));
	fprintf(stderr, "\r[%.*s%*s] %.0f/%.0f %s\033[K", fill, "##############################",
	        w - fill, "", done, total, text);
	if (done >= total)
		fputc('\n', stderr);
	fflush(stderr);
	return 0;
}

static const struct api_fn api_view_fns[] = {
	/* user interface */
	{ "command", API_DEFERRED, API_C, "(name, fn [, help [, complete]])",
	  "add :name; fn(args) runs it, complete(prefix) returns a list of completions", api_command },
	{ "run_command", API_DEFERRED, API_C, "(name [, args]) -> ok [, err]",
	  "run a plugin command as the user would", api_run_command },
	{ "commands", API_FAST, API_C, "() -> list", "the plugin commands: {name, help, plugin}",
	  api_commands },
	{ "status", API_FAST, API_C, "(text | nil)", "set or clear the plugin's status-bar item",
	  api_status },
	{ "status_items", API_FAST, API_C, "() -> table", "every status item by plugin name",
	  api_status_items },
	{ "view", API_DEFERRED, API_C, "(name) -> view",
	  "the plugin's pane of that name (created empty on first use)", api_view },
	{ "view:clear", API_DEFERRED, API_C, "()", "remove every item", api_view_clear },
	{ "view:text", API_DEFERRED, API_C, "(line)", "append a line of text", api_view_text },
	{ "view:bar", API_DEFERRED, API_C, "(label, value [, max])",
	  "append a labelled bar (value clamped to [0, max], max defaults to 1)", api_view_bar },
	{ "view:heatmap", API_DEFERRED, API_C, "(label, matrix)",
	  "append a heatmap of a table of equal-length rows of numbers", api_view_heatmap },
	{ "view:items", API_FAST, API_C, "() -> list",
	  "the items as tables {kind, text, value, max, rows, cols, lo, hi}", api_view_items },
	{ "views", API_FAST, API_C, "() -> list",
	  "every plugin's views: {name, plugin, items} (read-only)", api_views },
	/* plugins */
	{ "plugins", API_FAST, API_C, "() -> list",
	  "loaded plugins: {name, path, enabled, why, errors, mem (bytes counted in its memory cap), "
	  "host (of which kvscope holds for it)}",
	  api_plugins },
	{ "plugin_log", API_FAST, API_C, "(name) -> list", "a plugin's log lines", api_plugin_log },
	{ "load_plugin", API_DEFERRED, API_C, "(path) -> ok [, err]", "load a plugin file",
	  api_load_plugin },
	{ "unload_plugin", API_DEFERRED, API_C, "(name) -> ok [, err]",
	  "unload a plugin and everything it owned", api_unload_plugin },
	/* output */
	{ "write", API_DEFERRED, API_C, "(path, text [, mode]) -> fullpath",
	  "write (mode \"w\") or append (\"a\") text to a file under the results directory",
	  api_write },
	{ "export_view", API_DEFERRED, API_C, "(view, file [, format]) -> fullpath",
	  "the workbench writes what it shows (view \"attention\": the attention steps, every layer "
	  "and head; \"retention\": the dialogue's tokens) as csv or json (default: from the name, "
	  ".csv else json) under the results directory",
	  api_export_view },
	{ "progress", API_FAST, API_C, "(done, total [, text])",
	  "draw a progress bar on stderr when it is a terminal (kvscope run)", api_progress },
	{ "json", API_FAST, API_LUA, "(value) -> string",
	  "encode nil, booleans, numbers, strings and tables (arrays or string keys) as JSON", NULL },
	{ "csv", API_FAST, API_LUA, "(list) -> string",
	  "one CSV line (RFC 4180 quoting) from a list of values", NULL },
	{ "table", API_FAST, API_LUA, "(header, rows) -> string",
	  "an aligned plain-text table from a header list and a list of rows", NULL },
	{ "getopt", API_FAST, API_LUA, "(script, args, options [, about])",
	  "parse \"--name value\" arguments: options lists {\"--name\", fn} and {\"--flag\", fn, "
	  "flag = true}, each with optional value = and help = strings; --help prints the usage, "
	  "the options and about, then exits 0; an unknown or incomplete argument exits 2 with one "
	  "line naming the script",
	  NULL },
};

static const struct api_type api_view_types[] = {
	{ API_VIEW, "view", NULL, NULL, NULL },
};

const struct api_lib api_view_lib = API_LIB(api_view_fns, api_view_types);
