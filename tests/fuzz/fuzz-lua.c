/*
 * fuzz-lua.c: libFuzzer target for the Lua sandbox (doc/FUZZING.md).
 *
 * An input is a plugin: Lua source as it is when it begins with "--" (the
 * committed corpus is readable scripts), else a script built from the
 * bytes by a small grammar of the kvscope API and of the constructs that
 * once crashed or froze the host (FUZZ_STMTS below): hooks, commands,
 * timers, sessions driven from hooks, retention policies, error values
 * with hostile metamethods, backtracking patterns, huge table operations,
 * looping handlers and finalizers, writes to odd paths. Each input gets a
 * fresh runtime (hooks 20 ms, main chunk 100 ms, 16 MiB) whose sessions
 * use a tiny model written at start-up, and is driven as a front end
 * would: loaded, then its commands run and completed, its events
 * dispatched (key, turn_start, token), its timers ticked, then unloaded.
 *
 * Besides "no crash, no sanitizer report", it aborts when
 *   - any one call into the runtime returns more than FUZZ_SLACK_MS past
 *     its deadline (a hang the sandbox failed to stop), or
 *   - anything appears in its folder (a fresh one under $TMPDIR, removed at
 *     exit) other than results/, the only place kvscope.write may write,
 *     or a file the grammar's escapes name appears (checked after every
 *     input).
 */
#include "script/script.h"
#include "tests/util/ggufw.h"
#include "tests/util/tinymodel.h"

#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_HOOK_MS 20.0
#define FUZZ_LOAD_MS 100.0
#define FUZZ_SLACK_MS 1500.0 /* past a deadline: sanitizers and a busy machine, not a hang */
#define FUZZ_MAX_SCRIPT 16384

static char *fuzz_dir, *fuzz_model, *fuzz_results;

/* The grammar: $S a statement, $E an expression, $F a function body, $N a
 * number, $T a string literal; each input byte picks the next choice. */
static const char *const fuzz_stmts[] = {
	"local s = kvscope.session{ max_tokens = $N, budget = 64, policy = 'window', temp = 0 } S = s",
	"if S then S:chat($T) end",
	"if S then S:feed($T) end",
	"if S then S:generate($N) end",
	"if S then S:close() end",
	"if S then S:reset() end",
	"if S then S:prompt($T) end",
	"if S then S:end_reply() end",
	"if S then S:set_policy('fuzzpol') end",
	"if S then S:set_budget($N) end",
	"if S then S:pin($N) end",
	"if S then S:set_length($T) end",
	"if S then local t = S:tokens() local x = t[$N] and t[$N].text end",
	"kvscope.on('turn_end', function(t) $F end)",
	"kvscope.on('token', function(t) $F end)",
	"kvscope.on('turn_start', function(i, u) $F end)",
	"kvscope.on('evict', function(ev) $F end)",
	"kvscope.on('key', function(k) $F return true end)",
	"kvscope.on('unload', function() $F end)",
	"kvscope.command('c$N', function(a) $F end, 'help', function(p) $F return { 'x' } end)",
	"kvscope.schedule(function() $F end)",
	"kvscope.timer($N, function() $F end, $N > 3)",
	"kvscope.policy.register('fuzzpol', function(t, n) $F local o = {} for i = 1, #t do o[i] = i "
	"end return o end)",
	"kvscope.write($T, $T)",
	"kvscope.write('../escape.txt', 'x')",
	"kvscope.write('/tmp/escape.txt', 'x')",
	"kvscope.write('a/b/c.txt', $T, 'a')",
	"kvscope.view('v'):text($T)",
	"kvscope.status($T)",
	"kvscope.log($E)",
	"print($E, $E)",
	"kvscope.unload_plugin('fuzz')",
	"kvscope.run_command('c$N', $T)",
	"pcall(function() $F end)",
	"xpcall(function() $F end, function(m) $F return m end)",
	"error($E)",
	"error(setmetatable({}, { __index = function() $F error('boom') end }))",
	"error(setmetatable({}, { __tostring = function() $F return 'x' end }))",
	"error({ kvscope_exit = $N })",
	"setmetatable({}, { __gc = function() $F end })",
	"coroutine.wrap(function() local x <close> = setmetatable({}, { __close = function() $F end }) "
	"$F end)()",
	"local co = coroutine.create(function() $F coroutine.yield() $F end) coroutine.resume(co) "
	"coroutine.close(co)",
	"while true do $S end",
	"for i = 1, $N do $S end",
	"string.rep($T, $N, $T)",
	"string.rep('', math.maxinteger)",
	"table.move({}, 1, 2^40, 1, {})",
	"string.find(('a'):rep(3000), ('a*'):rep(12) .. 'b')",
	"string.gsub(($T):rep($N), $T, $T)",
	"for w in string.gmatch(($T):rep($N), $T) do $S end",
	"string.match($T, $T)",
	"table.insert(setmetatable({}, { __len = function() return 2^40 end }), 1, 0)",
	"table.sort({ $N, $N, $N, $E }, function(a, b) $F return a < b end)",
	"table.concat({ $E, $E }, $T)",
	"load(string.rep('x = 1 ', $N))",
	"load($T)",
	"collectgarbage()",
	"local t = {} for i = 1, $N * 1000 do t[i] = tostring(i) end",
	"kvscope.sleep($N)",
	"kvscope.exit($N)",
	"require($T)",
	"local t = kvscope.plugins() local l = kvscope.plugin_log('fuzz')",
	"S = nil collectgarbage()",
};

static const char *const fuzz_exprs[] = {
	"nil",
	"true",
	"1",
	"-1",
	"0/0",
	"math.huge",
	"math.maxinteger",
	"'x'",
	"{}",
	"S",
	"setmetatable({}, { __index = function() error('e') end })",
	"function() end",
	"coroutine.create(function() end)",
	"kvscope",
	"string.rep('a', 100)",
};

static const char *const fuzz_strs[] = {
	"'hello'", "''",          "'%'",     "'a*'",           "'(a)%1'", "'[a'",
	"'%b()'",  "'%f[%w]%w+'", "'..'",    "'results.txt'",  "'../x'",  "'/abs'",
	"'a\\0b'", "'200t'",      "'x y z'", "('a'):rep(300)",
};

/* Bytes left to read, for the grammar. */
struct fuzz_in {
	const uint8_t *p;
	size_t n;
};

static unsigned fuzz_pick(struct fuzz_in *in, unsigned n)
{
	if (in->n == 0)
		return 0;
	in->n--;
	return *in->p++ % n;
}

/* Append text to the script buffer out (len *n, at most FUZZ_MAX_SCRIPT). */
static void fuzz_put(char *out, size_t *n, const char *text, size_t len)
{
	len = KVS_MIN(len, FUZZ_MAX_SCRIPT - 1 - *n);
	memcpy(out + *n, text, len);
	*n += len;
	out[*n] = '\0';
}

static void fuzz_stmt(struct fuzz_in *in, char *out, size_t *n, int depth);

/* Expand a template: its holes from the bytes. */
static void fuzz_expand(struct fuzz_in *in, const char *t, char *out, size_t *n, int depth)
{
	char num[32];
	for (; *t != '\0'; t++) {
		if (*t != '$' || t[1] == '\0') {
			fuzz_put(out, n, t, 1);
			continue;
		}
		switch (*++t) {
		case 'S': fuzz_stmt(in, out, n, depth + 1); break;
		case 'F':
			for (unsigned k = fuzz_pick(in, 3); k > 0; k--) {
				fuzz_stmt(in, out, n, depth + 1);
				fuzz_put(out, n, " ", 1);
			}
			break;
		case 'E': {
			const char *e = fuzz_exprs[fuzz_pick(in, KVS_ARRAY_LEN(fuzz_exprs))];
			fuzz_put(out, n, e, strlen(e));
			break;
		}
		case 'T': {
			const char *s = fuzz_strs[fuzz_pick(in, KVS_ARRAY_LEN(fuzz_strs))];
			fuzz_put(out, n, s, strlen(s));
			break;
		}
		case 'N':
			snprintf(num, sizeof num, "%u", fuzz_pick(in, 256) * (fuzz_pick(in, 4) == 0 ? 257 : 1));
			fuzz_put(out, n, num, strlen(num));
			break;
		default: fuzz_put(out, n, t - 1, 2);
		}
	}
}

static void fuzz_stmt(struct fuzz_in *in, char *out, size_t *n, int depth)
{
	if (depth > 4 || in->n == 0) {
		fuzz_put(out, n, "local _ = 0", 11);
		return;
	}
	fuzz_expand(in, fuzz_stmts[fuzz_pick(in, KVS_ARRAY_LEN(fuzz_stmts))], out, n, depth);
}

/* The script of an input (caller frees). */
static char *fuzz_script(const uint8_t *data, size_t size)
{
	char *out = malloc(FUZZ_MAX_SCRIPT);
	size_t n = 0;
	out[0] = '\0';
	if (size >= 2 && data[0] == '-' && data[1] == '-') {
		fuzz_put(out, &n, (const char *)data, size);
		return out;
	}
	struct fuzz_in in = { data, size };
	fuzz_put(out, &n, "local kvscope = require 'kvscope'\n", 34);
	while (in.n > 0 && n < FUZZ_MAX_SCRIPT - 256) {
		fuzz_stmt(&in, out, &n, 0);
		fuzz_put(out, &n, "\n", 1);
	}
	return out;
}

/* Remove one file or folder (nftw). */
static int fuzz_rm(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	(void)st;
	(void)flag;
	(void)f;
	remove(path);
	return 0;
}

/* Abort unless the fuzz folder holds nothing but the model and results/,
 * and no escape was written; then empty results/. */
static void fuzz_check_writes(void)
{
	DIR *d = opendir(fuzz_dir);
	struct dirent *de;
	if (d == NULL)
		abort();
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
		    strcmp(de->d_name, "results") == 0 || strcmp(de->d_name, "tiny.gguf") == 0)
			continue;
		fprintf(stderr, "fuzz-lua: a plugin wrote %s/%s, outside results/\n", fuzz_dir, de->d_name);
		abort();
	}
	closedir(d);
	struct stat st;
	if (stat("escape.txt", &st) == 0 || stat("/tmp/escape.txt", &st) == 0) {
		fprintf(stderr, "fuzz-lua: a plugin wrote escape.txt outside results/\n");
		abort();
	}
	nftw(fuzz_results, fuzz_rm, 16, FTW_DEPTH | FTW_PHYS);
}

/* Remove the fuzz folder (at exit). */
static void fuzz_cleanup(void)
{
	nftw(fuzz_dir, fuzz_rm, 16, FTW_DEPTH | FTW_PHYS);
}

/* Write the tiny model in a fresh folder (once). */
static void fuzz_init(void)
{
	const char *tmp = getenv("TMPDIR");
	fuzz_dir = xasprintf("%s/kvs-fuzz-lua-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
	if (mkdtemp(fuzz_dir) == NULL) {
		perror(fuzz_dir);
		exit(99);
	}
	atexit(fuzz_cleanup);
	struct tinymodel_spec s;
	tinymodel_defaults(&s, "llama");
	s.n_embd = 64;
	s.n_ff = 128;
	s.n_ctx = 2048;
	fuzz_model = xasprintf("%s/tiny.gguf", fuzz_dir);
	struct ggufw *w = ggufw_new();
	tinymodel_add(w, &s);
	if (ggufw_write_file(w, fuzz_model) != 0)
		exit(99);
	ggufw_free(w);
	/* results/ of a folder one level down: "../x" there would land in fuzz_dir */
	fuzz_results = xasprintf("%s/results", fuzz_dir);
	log_set_level(LOG_ERROR);
}

/* Plugin messages: shown when FUZZ_LUA_VERBOSE is set (to see what an input does). */
static void fuzz_notify(void *ud, const char *plugin, const char *msg)
{
	(void)ud;
	if (getenv("FUZZ_LUA_VERBOSE") != NULL)
		fprintf(stderr, "fuzz-lua: %s: %s\n", plugin ? plugin : "-", msg);
}

/* Abort when a call that began at t0 under budget_ms returned too late. */
static void fuzz_timed(double t0, double budget_ms, const char *what)
{
	double late = clock_now_ms() - t0 - budget_ms;
	if (late > FUZZ_SLACK_MS) {
		fprintf(stderr, "fuzz-lua: %s returned %.0f ms past its %.0f ms deadline\n", what, late,
		        budget_ms);
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool ready;
	struct script_config c;
	struct script_rt *rt;
	struct err e;
	if (!ready) {
		fuzz_init();
		ready = true;
	}
	if (!script_available())
		return 0;
	char *src = fuzz_script(data, size);
	script_config_default(&c);
	c.gen.model_path = fuzz_model;
	c.gen.engine.n_threads = 1;
	c.max_tokens = 8;
	c.mem_cap = (size_t)16 << 20;
	c.hook_ms = FUZZ_HOOK_MS;
	c.load_ms = FUZZ_LOAD_MS;
	c.notify = fuzz_notify;
	c.results_dir = fuzz_results;
	if (script_rt_new(&rt, &c, &e) != KVS_OK)
		abort();
	double t0 = clock_now_ms();
	if (script_load_text(rt, "fuzz", src, &e) != KVS_OK)
		fuzz_notify(NULL, "fuzz", e.msg);
	fuzz_timed(t0, FUZZ_LOAD_MS, "loading");
	/* a front end's calls: commands, completion, events, ticks */
	for (size_t i = 0; i < script_command_count(rt) && i < 8; i++) {
		struct script_command_info ci;
		script_command_at(rt, i, &ci);
		char *name = xstrdup(ci.name), *words[4];
		t0 = clock_now_ms();
		if (script_command_run(rt, name, "1 2", &e) != KVS_OK)
			fuzz_notify(NULL, name, e.msg);
		fuzz_timed(t0, FUZZ_HOOK_MS, "a command");
		t0 = clock_now_ms();
		size_t nw = script_command_complete(rt, name, "x", words, 4);
		fuzz_timed(t0, FUZZ_HOOK_MS, "a completion");
		for (size_t k = 0; k < nw; k++)
			free(words[k]);
		free(name);
	}
	t0 = clock_now_ms();
	script_on_key(rt, "C-x");
	script_on_turn_start(rt, 0, "hello");
	fuzz_timed(t0, 2 * FUZZ_HOOK_MS, "key and turn_start hooks");
	for (int i = 0; i < 3; i++) {
		t0 = clock_now_ms();
		script_tick(rt);
		fuzz_timed(t0, FUZZ_HOOK_MS, "a tick");
	}
	t0 = clock_now_ms();
	script_rt_free(rt);
	fuzz_timed(t0, FUZZ_HOOK_MS, "unloading");
	free(src);
	fuzz_check_writes();
	return 0;
}
