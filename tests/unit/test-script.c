/*
 * test-script.c: the scripting layer's C interface, as a front end (the
 * TUI) uses it, with events built here by hand:
 *
 *   - token, eviction and attention events reach a plugin's hooks with the
 *     values given here (read back through its status item);
 *   - a key hook consumes the keys it returns true for;
 *   - commands run and complete; views and status items are plain data
 *     (a heatmap's range is the min and max of its cells);
 *   - kvscope.send reaches the front end's send callback, its refusal
 *     comes back as the command's error;
 *   - a Lua policy, through the score provider, returns the scores its Lua
 *     function computes (2 * position + 1 here); a copy nobody calls stops
 *     when 1 MiB of the plugin's commands are queued for it;
 *   - kvscope.send's argument is at most 1 MiB;
 *   - a failing hook logs a traceback and, after 3 failures, the plugin is
 *     disabled and the front end told once; unloading removes its command,
 *     view, status item and policy;
 *   - a policy called from another thread while the main thread unloads its
 *     plugin: the call runs in the thread's own copy of the plugin, so it
 *     finishes (or, coming after the unload, fails cleanly) whatever the
 *     main thread does (ASan watches the memory);
 *   - a policy running on another thread, 2000 calls and more, while the
 *     main thread runs the same plugin's command and token hook: the
 *     command's parameter reaches the policy in order (never backwards, the
 *     last value after the last command), every score is the function of
 *     that parameter, the main side counted every token, and a call from a
 *     second thread is refused (TSan and ASan builds watch for races);
 *   - built without Lua, the runtime cannot be created and says why.
 */
#include "script/script.h"
#include "tests/unit/test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int n_notified;
static char notified[512];

static void on_notify(void *ud, const char *plugin, const char *msg)
{
	(void)ud;
	(void)plugin;
	n_notified++;
	snprintf(notified, sizeof notified, "%s", msg);
}

static char sent[128];

static int on_send(void *ud, const char *cmd, const char *arg, struct err *e)
{
	(void)ud;
	if (strcmp(cmd, "budget") == 0 && strcmp(arg, "0") == 0)
		return err_set(e, KVS_EARG, "budget 0 refused here");
	snprintf(sent, sizeof sent, "%s:%s", cmd, arg);
	return KVS_OK;
}

static const char plugin_src[] =
        "local kvscope = require 'kvscope'\n"
        "kvscope.on('token', function(t)\n"
        "  kvscope.status(string.format('tok %d %s %.2f %d', t.id, t.text, t.surprisal, "
        "t.position))\n"
        "end)\n"
        "kvscope.on('evict', function(ev)\n"
        "  kvscope.status(string.format('evict %d %s %d %d %s', ev.n, ev.policy, "
        "ev.tokens[1].position,\n"
        "    ev.tokens[2].position, tostring(ev.fallback)))\n"
        "end)\n"
        "kvscope.on('attention', function(a)\n"
        "  kvscope.status(string.format('attn %d %d %d %.3f %.3f', #a, #a[1], #a[1][1], "
        "a[2][1][3], a:get(1, 2, 1)))\n"
        "end)\n"
        "kvscope.on('key', function(k) return k == 'C-x' end)\n"
        "kvscope.command('pick', function(args) kvscope.status('picked ' .. args) end, 'pick "
        "one',\n"
        "  function(p) local out = {} for _, w in ipairs{'reset', 'rerun', 'show'} do\n"
        "    if w:sub(1, #p) == p then out[#out + 1] = w end end return out end)\n"
        "kvscope.command('boom', function() error('boom on purpose') end, 'fail')\n"
        "kvscope.command('send', function(a) local c, v = a:match('(%S+) ?(.*)') kvscope.send(c, "
        "v) end)\n"
        "local v = kvscope.view('pane')\n"
        "v:text('hello')\n"
        "v:bar('kept', 3, 4)\n"
        "v:heatmap('m', {{1, -2, 3}, {0.5, 7, 0}})\n"
        "kvscope.policy.register('double', function(toks, n_keep)\n"
        "  local s = {} for i = 1, #toks do s[i] = 2 * toks[i].position + 1 end return s end,\n"
        "  {base = 'streaming'})\n"
        "kvscope.timer(10000, function() end, true)\n";

static const char slow_src[] =
        "local kvscope = require 'kvscope'\n"
        "kvscope.policy.register('slow', function(toks)\n"
        "  local t0 = kvscope.clock() while kvscope.clock() < t0 + 150 do end\n"
        "  local s = {} for i = 1, #toks do s[i] = 7 end return s end, {budget_ms = 1000})\n";

/* The policy scores k * 1000 + position, k set by the command; the token
 * hook counts on the main side. */
static const char tuned_src[] =
        "local kvscope = require 'kvscope'\n"
        "local k, seen = 0, 0\n"
        "kvscope.on('token', function(t) seen = seen + 1 kvscope.status('seen ' .. seen) end)\n"
        "kvscope.command('k', function(a) k = math.tointeger(tonumber(a)) end, 'set k')\n"
        "kvscope.policy.register('tuned', function(toks, n_keep)\n"
        "  local s = {} for i = 1, #toks do s[i] = k * 1000 + toks[i].position end return s end,\n"
        "  {budget_ms = 1000})\n";

#define TUNED_ROUNDS 2000

struct tuned_run {
	struct kv_scorer sc;
	atomic_bool stop; /* the main thread sent its last command */
	atomic_bool gone; /* the thread returned */
	atomic_uint n_calls;
	uint32_t n_bad, n_back; /* wrong scores, k going backwards */
	int last_k, rc;
	char msg[ERR_MSG_MAX];
};

/* Call the policy until the main thread is done, then once more. */
static void *tuned_thread(void *arg)
{
	struct tuned_run *r = arg;
	struct kv_tok toks[4] = {
		{ .orig_pos = 0 }, { .orig_pos = 1 }, { .orig_pos = 2 }, { .orig_pos = 3 }
	};
	int prev = 0;
	bool last;

	do {
		last = atomic_load(&r->stop); /* before the call: the last call sees every command */
		float s[4];
		struct err e;
		r->rc = r->sc.fn(r->sc.ud, toks, 4, 2, s, clock_now_ms() + 5000, &e);
		if (r->rc != KVS_OK) {
			snprintf(r->msg, sizeof r->msg, "%s", e.msg);
			break;
		}
		atomic_fetch_add(&r->n_calls, 1);
		int k = (int)s[0] / 1000;
		for (int i = 0; i < 4; i++)
			r->n_bad += s[i] != (float)(k * 1000 + i);
		r->n_back += k < prev;
		prev = r->last_k = k;
	} while (!last);
	atomic_store(&r->gone, true);
	return NULL;
}

/* The main thread drives the plugin at path while a thread runs its policy. */
static void test_concurrent_policy(struct script_rt *rt, const char *path)
{
	struct tuned_run run = { .rc = KVS_OK };
	struct kv_policy base;
	struct err e;
	pthread_t th;
	char arg[32];

	T_EQ_INT(script_load(rt, path, &e), KVS_OK);
	T_EQ_INT(script_policy_scorer(rt, "tuned", &run.sc, &base, &e), KVS_OK);
	T_EQ_STR(kv_policy_name(&base), "window");
	atomic_init(&run.stop, false);
	atomic_init(&run.gone, false);
	atomic_init(&run.n_calls, 0);
	pthread_create(&th, NULL, tuned_thread, &run);
	struct kv_tok meta = { .token = 7, .orig_pos = 3 };
	struct gen_token tok = { .id = 7, .meta = &meta, .text = "x", .len = 1 };
	/* at least TUNED_ROUNDS rounds on each side, overlapping */
	int n = 0, n_ok = 0;
	while (n < TUNED_ROUNDS ||
	       (atomic_load(&run.n_calls) < TUNED_ROUNDS && !atomic_load(&run.gone))) {
		snprintf(arg, sizeof arg, "%d", ++n);
		n_ok += script_command_run(rt, "k", arg, &e) == KVS_OK;
		script_on_token(rt, &tok);
	}
	atomic_store(&run.stop, true);
	pthread_join(th, NULL);
	T_EQ_INT(n_ok, n);
	T_CHECK(run.rc == KVS_OK, "policy call: %s", run.msg);
	T_CHECK(atomic_load(&run.n_calls) > TUNED_ROUNDS, "%u calls", atomic_load(&run.n_calls));
	T_EQ_INT(run.n_bad, 0);
	T_EQ_INT(run.n_back, 0);
	T_EQ_INT(run.last_k, n);
	snprintf(arg, sizeof arg, "seen %d", n);
	T_EQ_STR(script_status_at(rt, 0, NULL), arg);
	printf("test-script: %u policy calls on a thread during %d commands and token events\n",
	       atomic_load(&run.n_calls), n);
	/* the copy is the first caller's: another thread (this one) is refused */
	struct kv_tok one = { .orig_pos = 0 };
	float s1;
	T_EQ_INT(run.sc.fn(run.sc.ud, &one, 1, 1, &s1, clock_now_ms() + 1000, &e), KVS_ESTATE);
	T_EQ_INT(script_unload(rt, "tuned", &e), KVS_OK);
}

struct scorer_run {
	struct script_rt *rt;
	struct kv_scorer sc;
	float scores[4];
	int rc;
};

/* Call the score provider as a worker thread would. */
static void *scorer_thread(void *arg)
{
	struct scorer_run *r = arg;
	struct kv_tok toks[4] = {
		{ .orig_pos = 0 }, { .orig_pos = 1 }, { .orig_pos = 2 }, { .orig_pos = 3 }
	};
	struct err e;
	r->rc = r->sc.fn(r->sc.ud, toks, 4, 2, r->scores, clock_now_ms() + 5000, &e);
	return NULL;
}

int main(void)
{
	struct script_config c;
	struct script_rt *rt = NULL;
	struct err e;

	script_config_default(&c);
	c.notify = on_notify;
	c.send = on_send;
	if (!script_available()) {
		T_EQ_INT(script_rt_new(&rt, &c, &e), KVS_EUNSUPPORTED);
		T_CHECK(strstr(e.msg, "not built") != NULL, "message: %s", e.msg);
		return t_done("test-script (without Lua)");
	}
	char dir[] = "/tmp/kvs-script-XXXXXX";
	if (mkdtemp(dir) == NULL) {
		perror("mkdtemp");
		return 99;
	}
	char path[64];
	snprintf(path, sizeof path, "%s/probe.lua", dir);
	FILE *fp = fopen(path, "w");
	if (fp == NULL || fwrite(plugin_src, 1, sizeof plugin_src - 1, fp) != sizeof plugin_src - 1 ||
	    fclose(fp) != 0) {
		perror(path);
		return 99;
	}
	char slow_path[64];
	snprintf(slow_path, sizeof slow_path, "%s/slow.lua", dir);
	fp = fopen(slow_path, "w");
	if (fp == NULL || fwrite(slow_src, 1, sizeof slow_src - 1, fp) != sizeof slow_src - 1 ||
	    fclose(fp) != 0) {
		perror(slow_path);
		return 99;
	}
	T_EQ_INT(script_rt_new(&rt, &c, &e), KVS_OK);
	int rc = script_load(rt, path, &e);
	T_CHECK(rc == KVS_OK, "load: %s", e.msg);
	T_EQ_INT(script_plugin_count(rt), 1);
	T_EQ_INT(script_load(rt, path, &e), KVS_EARG); /* the same name twice */

	/* a token event */
	struct kv_tok meta = { .token = 42, .orig_pos = 17, .surprisal = 1.5f, .entropy = 2.0f };
	struct gen_token tok = { .id = 42, .meta = &meta, .text = "ab", .len = 2 };
	script_on_token(rt, &tok);
	const char *plugin = NULL;
	T_EQ_INT(script_status_count(rt), 1);
	T_EQ_STR(script_status_at(rt, 0, &plugin), "tok 42 ab 1.50 17");
	T_EQ_STR(plugin, "probe");

	/* an eviction event */
	struct kv_tok ev_toks[2] = { { .token = 1, .orig_pos = 5 }, { .token = 2, .orig_pos = 9 } };
	struct kv_event ev = {
		.kind = KV_EVENT_EVICT, .policy = "streaming", .n_evicted = 2, .evicted = ev_toks
	};
	script_on_kv_event(rt, &ev);
	T_EQ_STR(script_status_at(rt, 0, NULL), "evict 2 streaming 5 9 false");

	/* an attention step: 2 layers x 2 heads x 3 columns, w[l][h][i] = l*100 + h*10 + i (0-based) / 1000 */
	float attn[2 * 2 * 3];
	struct kv_head_summary heads[4] = { { 0 } };
	for (int l = 0; l < 2; l++)
		for (int h = 0; h < 2; h++)
			for (int i = 0; i < 3; i++)
				attn[(l * 2 + h) * 3 + i] = (float)(l * 100 + h * 10 + i) / 1000.0f;
	struct kv_event st = { .kind = KV_EVENT_STEP,
		                   .n_layer = 2,
		                   .n_head = 2,
		                   .n_cached = 3,
		                   .attn = attn,
		                   .heads = heads };
	script_on_kv_event(rt, &st);
	/* a[2][1][3] = layer 1, head 0, column 2 = 102/1000; a:get(1,2,1) = layer 0, head 1, col 0 = 10/1000 */
	T_EQ_STR(script_status_at(rt, 0, NULL), "attn 2 2 3 0.102 0.010");

	/* keys */
	T_CHECK(script_on_key(rt, "C-x"), "C-x consumed");
	T_CHECK(!script_on_key(rt, "C-y"), "C-y not consumed");

	/* commands */
	T_EQ_INT(script_command_count(rt), 3);
	struct script_command_info ci;
	script_command_at(rt, 0, &ci);
	T_EQ_STR(ci.name, "pick");
	T_EQ_STR(ci.help, "pick one");
	T_EQ_INT(script_command_run(rt, "pick", "two", &e), KVS_OK);
	T_EQ_STR(script_status_at(rt, 0, NULL), "picked two");
	T_EQ_INT(script_command_run(rt, "nope", "", &e), KVS_ENOTFOUND);
	char *comp[8];
	size_t nc = script_command_complete(rt, "pick", "re", comp, 8);
	T_EQ_INT(nc, 2);
	if (nc == 2) {
		T_EQ_STR(comp[0], "reset");
		T_EQ_STR(comp[1], "rerun");
	}
	for (size_t i = 0; i < nc; i++)
		free(comp[i]);

	/* requests to the front end's session */
	T_EQ_INT(script_command_run(rt, "send", "policy h2o heavy=0.3", &e), KVS_OK);
	T_EQ_STR(sent, "policy:h2o heavy=0.3");
	T_EQ_INT(script_command_run(rt, "send", "budget 0", &e), KVS_EFORMAT);
	T_CHECK(strstr(e.msg, "budget 0 refused here") != NULL, "message: %s", e.msg);
	T_EQ_INT(script_command_run(rt, "send", "explode now", &e), KVS_EFORMAT);
	T_CHECK(strstr(e.msg, "expected chat, policy") != NULL, "message: %s", e.msg);
	/* an argument of 1 MiB goes through, one byte more is refused (what a
	 * plugin can queue on the front end's session is bounded) */
	sent[0] = '\0';
	T_EQ_INT(script_load_text(
	                 rt, "sendbig",
	                 "local kvscope = require 'kvscope'\n"
	                 "kvscope.send('chat', string.rep('x', 1 << 20))\n"
	                 "local ok, err = pcall(kvscope.send, 'chat', string.rep('x', (1 << 20) + 1))\n"
	                 "kvscope.status(ok and 'sent' or err)\n",
	                 &e),
	         KVS_OK);
	T_CHECK(strncmp(sent, "chat:xxxx", 9) == 0, "sent: %.20s", sent);
	const char *big_status = NULL;
	for (size_t i = 0; i < script_status_count(rt); i++) {
		const char *who = NULL, *text = script_status_at(rt, i, &who);
		if (strcmp(who, "sendbig") == 0)
			big_status = text;
	}
	T_CHECK(big_status != NULL &&
	                strstr(big_status, "1048577 bytes of argument, expected at most 1048576") !=
	                        NULL,
	        "status: %s", big_status ? big_status : "(none)");
	T_EQ_INT(script_unload(rt, "sendbig", &e), KVS_OK);

	/* views */
	T_EQ_INT(script_view_count(rt), 1);
	const struct script_view *v = script_view_at(rt, 0);
	T_EQ_STR(v->name, "pane");
	T_EQ_INT(v->n_items, 3);
	T_EQ_INT(v->items[0].kind, SCRIPT_ITEM_TEXT);
	T_EQ_STR(v->items[0].text, "hello");
	T_EQ_INT(v->items[1].kind, SCRIPT_ITEM_BAR);
	T_NEAR(v->items[1].value, 3, 0);
	T_NEAR(v->items[1].max, 4, 0);
	T_EQ_INT(v->items[2].kind, SCRIPT_ITEM_HEATMAP);
	T_EQ_INT(v->items[2].rows, 2);
	T_EQ_INT(v->items[2].cols, 3);
	T_NEAR(v->items[2].cells[4], 7, 0);
	T_NEAR(v->items[2].lo, -2, 0);
	T_NEAR(v->items[2].hi, 7, 0);

	/* the Lua policy through the score provider */
	struct kv_scorer sc;
	struct kv_policy base;
	T_EQ_INT(script_policy_scorer(rt, "double", &sc, &base, &e), KVS_OK);
	T_EQ_STR(kv_policy_name(&base), "streaming");
	struct kv_tok toks[4];
	float scores[4];
	for (int i = 0; i < 4; i++)
		toks[i] = (struct kv_tok){ .token = i, .orig_pos = 10 * i + 3 };
	rc = sc.fn(sc.ud, toks, 4, 2, scores, clock_now_ms() + 1000, &e);
	T_CHECK(rc == KVS_OK, "scorer: %s", e.msg);
	for (int i = 0; i < 4; i++)
		T_NEAR(scores[i], 2.0 * (10 * i + 3) + 1, 0);
	T_EQ_INT(script_policy_scorer(rt, "nope", &sc, &base, &e), KVS_ENOTFOUND);

	/* a copy whose owner never calls it: the plugin's commands queue for it
	 * up to 1 MiB (each ":pick ARG" of 64 KiB takes 65536 + 6 bytes and a
	 * pointer: 15 fit, 16 do not); the next one stops the copy (told once)
	 * instead of growing the queue, and its provider then fails */
	struct kv_scorer idle;
	T_EQ_INT(script_policy_scorer(rt, "double", &idle, &base, &e), KVS_OK);
	int notes = n_notified;
	char *arg = xmalloc(65537);
	memset(arg, 'a', 65536);
	arg[65536] = '\0';
	for (int i = 0; i < 15; i++) {
		T_EQ_INT(script_command_run(rt, "pick", arg, &e), KVS_OK);
		if (i == 7) /* the first copy's owner calls: its queue empties */
			T_EQ_INT(sc.fn(sc.ud, toks, 4, 2, scores, clock_now_ms() + 1000, &e), KVS_OK);
	}
	T_EQ_INT(n_notified, notes);
	T_EQ_INT(script_command_run(rt, "pick", arg, &e), KVS_OK);
	T_EQ_INT(n_notified, notes + 1);
	T_CHECK(strstr(notified, "Lua policy double stopped") != NULL, "notice: %s", notified);
	T_EQ_INT(script_command_run(rt, "pick", arg, &e), KVS_OK);
	T_EQ_INT(n_notified, notes + 1);
	free(arg);
	T_EQ_INT(idle.fn(idle.ud, toks, 4, 2, scores, clock_now_ms() + 1000, &e), KVS_ENOTFOUND);
	rc = sc.fn(sc.ud, toks, 4, 2, scores, clock_now_ms() + 1000, &e);
	T_CHECK(rc == KVS_OK, "the other copy still scores: %s", e.msg);
	n_notified = notes;

	/* a periodic timer is pending */
	double next = script_tick(rt);
	T_CHECK(next > 0 && next <= 10000, "next timer in %g ms", next);

	/* failures: logged with a traceback; the third disables and notifies once */
	T_EQ_INT(script_command_run(rt, "pick", "x", &e), KVS_OK); /* a success resets the count */
	for (int i = 0; i < 3; i++)
		T_EQ_INT(script_command_run(rt, "boom", "", &e), KVS_EFORMAT);
	T_CHECK(strstr(e.msg, "boom on purpose") != NULL, "error: %s", e.msg);
	bool tb = false;
	for (size_t i = 0; i < script_log_count(rt, "probe"); i++)
		tb |= strstr(script_log_line(rt, "probe", i), "stack traceback") != NULL;
	T_CHECK(tb, "the log has a traceback");
	struct script_plugin_info pi;
	script_plugin_at(rt, 0, &pi);
	T_CHECK(!pi.enabled && pi.n_errors == 5, "enabled %d, errors %u (2 refused sends + 3 booms)",
	        pi.enabled, pi.n_errors);
	T_EQ_INT(n_notified, 1);
	T_CHECK(strstr(notified, "disabled") != NULL, "notified: %s", notified);
	T_EQ_INT(script_status_count(rt), 0); /* a disabled plugin's status is hidden */
	T_CHECK(!script_on_key(rt, "C-x"), "a disabled plugin consumes nothing");

	/* unloading removes what it owned */
	T_EQ_INT(script_unload(rt, "probe", &e), KVS_OK);
	T_EQ_INT(script_plugin_count(rt), 0);
	T_EQ_INT(script_command_count(rt), 0);
	T_EQ_INT(script_view_count(rt), 0);
	T_EQ_INT(script_policy_count(rt), 0);
	T_EQ_INT(script_unload(rt, "probe", &e), KVS_ENOTFOUND);
	/* the provider handed out earlier now fails (the engine falls back) */
	T_CHECK(sc.fn(sc.ud, toks, 4, 2, scores, clock_now_ms() + 1000, &e) != KVS_OK,
	        "an unloaded policy's provider fails");

	/* a policy running on another thread (as the TUI's worker runs it) while
	 * the main thread unloads its plugin: the thread's copy is its own */
	T_EQ_INT(script_load(rt, slow_path, &e), KVS_OK);
	struct scorer_run run = { .rt = rt };
	T_EQ_INT(script_policy_scorer(rt, "slow", &run.sc, &base, &e), KVS_OK);
	pthread_t th;
	pthread_create(&th, NULL, scorer_thread, &run);
	usleep(30000); /* let it enter the 150 ms policy call (if it has not, it fails cleanly) */
	T_EQ_INT(script_unload(rt, "slow", &e), KVS_OK);
	pthread_join(th, NULL);
	if (run.rc == KVS_OK) {
		/* the state lived through the whole call (ASan would see it freed) */
		T_NEAR(run.scores[2], 7, 0);
	} else {
		T_EQ_INT(run.rc, KVS_ENOTFOUND); /* the thread came after the unload */
	}
	printf("test-script: cross-thread policy call %s the unload\n",
	       run.rc == KVS_OK ? "finished before" : "came after");

	/* many calls on another thread while the main side uses the plugin */
	char tuned_path[64];
	snprintf(tuned_path, sizeof tuned_path, "%s/tuned.lua", dir);
	fp = fopen(tuned_path, "w");
	if (fp == NULL || fwrite(tuned_src, 1, sizeof tuned_src - 1, fp) != sizeof tuned_src - 1 ||
	    fclose(fp) != 0) {
		perror(tuned_path);
		return 99;
	}
	test_concurrent_policy(rt, tuned_path);

	/* a plugin that does not compile */
	fp = fopen(path, "w");
	fputs("local x = = 1\n", fp);
	fclose(fp);
	T_EQ_INT(script_load(rt, path, &e), KVS_EFORMAT);
	T_CHECK(strstr(e.msg, "probe.lua:1:") != NULL, "message: %s", e.msg);
	T_EQ_INT(script_plugin_count(rt), 0);

	script_rt_free(rt);
	unlink(path);
	unlink(slow_path);
	unlink(tuned_path);
	rmdir(dir);
	return t_done("test-script");
}
