/*
 * cmd.c: the ':' commands of the workbench.
 *
 * One constant table gives each command its name, argument synopsis, help
 * line, argument completion and exec function; :help, the F1 overlay and
 * Tab completion all read it. A command either changes the view model
 * (layer, head, theme), or sends a command to the worker (policy, budget,
 * pin, new conversation), whose result comes back as an event and lands on
 * the status line. A bad command or argument sets one status line naming
 * what was wrong and what was expected, and changes nothing else. Running
 * a line, completion and the help: cmd-run.c.
 */
#include "store/store.h"
#include "tui/tui-int.h"

#include <errno.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Say what was wrong on the status line; KVS_EARG. */
int tui_cmd_fail(struct tui_ctx *c, const char *fmt, ...)
{
	char buf[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	tui_status(c->t, true, "%s", buf);
	return KVS_EARG;
}

/* Send a command to the worker (tests without one record it instead). */
static void cmd_send(struct tui_ctx *c, const struct worker_cmd *wc)
{
	c->last = *wc;
	if (wc->text != NULL) {
		snprintf(c->last_text, sizeof c->last_text, "%s", wc->text);
		c->last.text = c->last_text;
	}
	c->have_last = true;
	if (c->w != NULL)
		worker_send(c->w, wc);
}

/* Exchanges a quit, :new or :load would drop: those not saved, and the
 * reply in progress when nothing is saved. */
static uint32_t cmd_unsaved(const struct tui *t)
{
	return t->n_unsaved + (t->busy && !t->saving);
}

/* An unsaved conversation is never dropped without a word: the first time
 * cmd asks (true: stop here), the same command next time goes ahead. */
static bool cmd_confirm(struct tui_ctx *c, const char *cmd, const char *what)
{
	uint32_t n = cmd_unsaved(c->t);

	if (n == 0 || strcmp(c->armed_prev, cmd) == 0)
		return false;
	snprintf(c->t->armed, sizeof c->t->armed, "%s", cmd);
	tui_status(c->t, true, "%u exchange%s not saved: :save [TITLE] keeps %s; :%s again %s", n,
	           n == 1 ? " is" : "s are", n == 1 ? "it" : "them", cmd, what);
	return true;
}

/* Parse a whole non-negative integer; false when s is anything else. */
static bool cmd_uint(const char *s, long long max, long long *out)
{
	char *end;
	long long v;

	if (s == NULL || *s == '\0' || *s == '-' || *s == '+')
		return false;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0' || v > max)
		return false;
	*out = v;
	return true;
}

/* ---- completion sources ---- */

static int comp_policy(const char *word, size_t i, const char **out)
{
	(void)word;
	if (i >= kv_policy_count())
		return 0;
	*out = kv_policy_name_at(i);
	return 1;
}

static int comp_theme(const char *word, size_t i, const char **out)
{
	(void)word;
	if (i >= tui_theme_count())
		return 0;
	*out = tui_theme_at(i)->name;
	return 1;
}

static int comp_list(const char *const *names, size_t i, const char **out)
{
	for (size_t k = 0; names[k]; k++)
		if (k == i) {
			*out = names[k];
			return 1;
		}
	return 0;
}

static int comp_plugin(const char *word, size_t i, const char **out)
{
	static const char *const n[] = { "list", "load", "unload", "reload", "log", NULL };
	(void)word;
	return comp_list(n, i, out);
}

/* The words some commands take, each list feeding both the command and
 * its completion. */
static const char *const cmd_agg_words[] = { "head", "mean", "max", NULL };
static const char *const cmd_ov_words[] = { "entropy", "sink", "k90", NULL };
static const char *const cmd_attn_words[] = { "grid", "row", NULL };

static int comp_agg(const char *word, size_t i, const char **out)
{
	(void)word;
	return comp_list(cmd_agg_words, i, out);
}

static int comp_overview(const char *word, size_t i, const char **out)
{
	(void)word;
	return comp_list(cmd_ov_words, i, out);
}

static int comp_attn(const char *word, size_t i, const char **out)
{
	(void)word;
	return comp_list(cmd_attn_words, i, out);
}

/* The place of the one argument in words (NULL-terminated), or -1. */
static int cmd_word(int argc, char **argv, const char *const *words)
{
	for (int i = 0; argc == 2 && words[i] != NULL; i++)
		if (strcmp(argv[1], words[i]) == 0)
			return i;
	return -1;
}

/* ---- commands ---- */

static int x_policy(struct tui_ctx *c, int argc, char **argv)
{
	char spec[256] = "";
	struct kv_policy p;
	struct err e;

	if (argc < 2) {
		tui_status(c->t, false, "policy %s", c->t->policy[0] ? c->t->policy : "?");
		return KVS_OK;
	}
	for (int i = 1; i < argc; i++) {
		if (strlen(spec) + strlen(argv[i]) + 2 > sizeof spec)
			return tui_cmd_fail(c,
			                    ":policy: the specification is too long (at most %zu characters)",
			                    sizeof spec - 1);
		if (i > 1)
			strcat(spec, " ");
		strcat(spec, argv[i]);
	}
	/* check here so that a bad spec changes nothing and says why at once */
	if (kv_policy_parse(spec, &p, &e) != KVS_OK) {
		/* a retention policy a Lua plugin registered */
		struct worker_cmd wc = { .kind = WORKER_SCORER };
		struct err e2;
		if (argc == 2 && c->t->rt != NULL &&
		    script_policy_scorer(c->t->rt, argv[1], &wc.scorer, &wc.policy, &e2) == KVS_OK) {
			/* the cache keeps the name: ours lives as long as the worker */
			snprintf(c->t->lua_policy, sizeof c->t->lua_policy, "%s", argv[1]);
			kv_policy_format(&wc.policy, c->t->lua_base, sizeof c->t->lua_base);
			wc.scorer.name = c->t->lua_policy;
			cmd_send(c, &wc);
			tui_status(c->t, false, "switching to the Lua policy %s ...", argv[1]);
			return KVS_OK;
		}
		return tui_cmd_fail(c, ":policy: %s", e.msg);
	}
	cmd_send(c, &(struct worker_cmd){ .kind = WORKER_POLICY, .text = spec });
	c->t->lua_policy[0] = '\0';
	tui_status(c->t, false, "switching to policy %s ...", spec);
	return KVS_OK;
}

/* :sparse off|quest|hip[:k=v,...]: checked here, applied by the worker */
static int x_sparse(struct tui_ctx *c, int argc, char **argv)
{
	struct engine_sparse sp;
	struct err e;
	if (argc != 2)
		return tui_cmd_fail(c,
		                    ":sparse: expected off, quest[:budget=N,page=N,...], "
		                    "hip[:budget=N,block=N,refresh=N,...] or squeezed[:quantile=Q,...], "
		                    "e.g. :sparse quest:budget=512");
	if (engine_sparse_parse(argv[1], &sp, &e) != KVS_OK)
		return tui_cmd_fail(c, ":sparse: %s", e.msg);
	if (sp.mode != ENGINE_SPARSE_OFF)
		tui_sparsity_register(); /* :pane sparsity, Alt-s */
	cmd_send(c, &(struct worker_cmd){ .kind = WORKER_SPARSE, .text = argv[1] });
	return KVS_OK;
}

/* :doc FILE|off: pin a document at the start of a new conversation (the
 * worker reads and checks the file; a conversation begun starts over) */
static int x_doc(struct tui_ctx *c, int argc, char **argv)
{
	if (argc != 2)
		return tui_cmd_fail(c, ":doc: expected a text file (or off), e.g. :doc notes.txt");
	if (cmd_confirm(c, "doc", "starts a new conversation with the document"))
		return KVS_OK;
	cmd_send(c, &(struct worker_cmd){ .kind = WORKER_DOC, .text = argv[1] });
	tui_status(c->t, false, "loading %s ...", argv[1]);
	return KVS_OK;
}

static int x_budget(struct tui_ctx *c, int argc, char **argv)
{
	long long v;

	if (argc != 2 || !cmd_uint(argv[1], UINT32_MAX, &v))
		return tui_cmd_fail(
		        c, ":budget: expected a number of tokens (0: every slot), e.g. :budget 512");
	cmd_send(c, &(struct worker_cmd){ .kind = WORKER_BUDGET, .n = v });
	return KVS_OK;
}

static int x_len(struct tui_ctx *c, int argc, char **argv)
{
	struct len_target lt = c->t->len;
	struct err e;
	char buf[96];

	if (argc == 1) {
		tui_status(c->t, false, "length target: %s", len_target_format(&lt, buf, sizeof buf));
		return KVS_OK;
	}
	if (argc != 2 || len_target_parse(argv[1], &lt, &e) != KVS_OK)
		return tui_cmd_fail(c, ":len: %s",
		                    argc != 2 ? "expected one target, e.g. :len 120w" : e.msg);
	c->t->len = lt;
	cmd_send(c, &(struct worker_cmd){ .kind = WORKER_LEN, .text = argv[1] });
	return KVS_OK;
}

static int x_max(struct tui_ctx *c, int argc, char **argv)
{
	long long v;

	if (argc != 2 || !cmd_uint(argv[1], 1000000, &v) || v == 0)
		return tui_cmd_fail(c, ":max: expected the most tokens a reply may have, 1 .. 1000000");
	cmd_send(c, &(struct worker_cmd){ .kind = WORKER_MAX_TOKENS, .n = v });
	return KVS_OK;
}

static int x_layer(struct tui_ctx *c, int argc, char **argv)
{
	long long v;
	uint32_t n = c->t->n_layer;

	if (argc != 2 || !cmd_uint(argv[1], 1 << 20, &v) || (n > 0 && v >= n))
		return tui_cmd_fail(c, ":layer: expected a layer number 0 .. %u", n ? n - 1 : 0);
	c->t->layer = (uint32_t)v;
	tui_status(c->t, false, "layer %lld", v);
	return KVS_OK;
}

static int x_head(struct tui_ctx *c, int argc, char **argv)
{
	long long v;
	uint32_t n = c->t->n_head;

	if (argc != 2 || !cmd_uint(argv[1], 1 << 20, &v) || (n > 0 && v >= n))
		return tui_cmd_fail(c, ":head: expected a head number 0 .. %u", n ? n - 1 : 0);
	c->t->head = (uint32_t)v;
	c->t->agg = AGG_HEAD;
	tui_status(c->t, false, "head %lld", v);
	return KVS_OK;
}

static int x_agg(struct tui_ctx *c, int argc, char **argv)
{
	int i = cmd_word(argc, argv, cmd_agg_words);

	if (i < 0)
		return tui_cmd_fail(c, ":agg: expected head, mean or max");
	c->t->agg = (enum tui_agg)i;
	tui_status(c->t, false, "heads: %s", cmd_agg_words[i]);
	return KVS_OK;
}

static int x_overview(struct tui_ctx *c, int argc, char **argv)
{
	int i = cmd_word(argc, argv, cmd_ov_words);

	if (i < 0)
		return tui_cmd_fail(c, ":overview: expected entropy, sink or k90");
	c->t->overview = (enum tui_overview)i;
	tui_status(c->t, false, "overview: %s", cmd_ov_words[i]);
	return KVS_OK;
}

/* :attn grid|row: the attention pane's heatmap. */
static int x_attn(struct tui_ctx *c, int argc, char **argv)
{
	int i = cmd_word(argc, argv, cmd_attn_words);

	if (i < 0)
		return tui_cmd_fail(c, ":attn: expected grid (queries x keys) or row (the shown query)");
	c->t->attn_view = (enum tui_attn_view)i;
	tui_status(c->t, false, "attention: %s", i == ATTN_GRID ? "queries x keys" : "one row");
	return KVS_OK;
}

/* The token :pin and :unpin act on: the argument or the selection. */
static int x_pin_common(struct tui_ctx *c, int argc, char **argv, bool pin)
{
	long long v;

	if (argc == 1) {
		if (c->t->sel_tok < 0)
			return tui_cmd_fail(c,
			                    ":%s: select a token in the retention strip first, or give its "
			                    "position (:%s POS)",
			                    pin ? "pin" : "unpin", pin ? "pin" : "unpin");
		v = c->t->sel_tok;
	} else if (argc != 2 || !cmd_uint(argv[1], INT32_MAX, &v)) {
		return tui_cmd_fail(c, ":%s: expected a token position, e.g. :%s 12", pin ? "pin" : "unpin",
		                    pin ? "pin" : "unpin");
	}
	cmd_send(c, &(struct worker_cmd){ .kind = pin ? WORKER_PIN : WORKER_UNPIN, .n = v });
	return KVS_OK;
}

static int x_pin(struct tui_ctx *c, int argc, char **argv)
{
	return x_pin_common(c, argc, argv, true);
}

static int x_unpin(struct tui_ctx *c, int argc, char **argv)
{
	return x_pin_common(c, argc, argv, false);
}

/* :sel POS|turn N|first|last|off: the retention strip's selection. */
static int x_sel(struct tui_ctx *c, int argc, char **argv)
{
	struct tui *t = c->t;
	long long v;

	if (argc == 1) {
		if (t->sel_tok < 0)
			tui_status(t, false, "no token selected (the strip follows the live tail)");
		else
			tui_status(t, false, "token #%d selected", t->sel_tok);
		return KVS_OK;
	}
	if (argc == 2 && strcmp(argv[1], "off") == 0) {
		tui_select(t, SEL_OFF);
	} else if (argc == 2 && strcmp(argv[1], "first") == 0) {
		tui_select(t, SEL_FIRST);
	} else if (argc == 2 && strcmp(argv[1], "last") == 0) {
		tui_select(t, SEL_OFF);
		tui_select(t, SEL_PREV);
	} else if (argc == 3 && strcmp(argv[1], "turn") == 0 && cmd_uint(argv[2], UINT32_MAX, &v)) {
		int32_t p = -1;
		for (uint32_t i = 0; i < t->n_toks && p < 0; i++)
			if (t->toks[i].known && t->toks[i].t.turn == (uint32_t)v)
				p = (int32_t)i;
		if (p < 0)
			return tui_cmd_fail(c, ":sel: no token of turn %lld in the strip", v);
		t->sel_tok = p;
	} else if (argc == 2 && cmd_uint(argv[1], INT32_MAX, &v)) {
		if ((uint64_t)v >= t->n_toks || !t->toks[v].known)
			return tui_cmd_fail(c, ":sel: no token at position %lld in the strip (0 .. %u)", v,
			                    t->n_toks ? t->n_toks - 1 : 0);
		t->sel_tok = (int32_t)v;
	} else {
		return tui_cmd_fail(c, ":sel: expected a position, turn N, first, last or off");
	}
	if (t->sel_tok >= 0)
		tui_status(t, false, "token #%d selected (Esc lets go)", t->sel_tok);
	else
		tui_status(t, false, "no token selected (the strip follows the live tail)");
	return KVS_OK;
}

/* :find TEXT: the next token where TEXT begins; alone, the last TEXT again. */
static int x_find(struct tui_ctx *c, int argc, char **argv)
{
	char what[sizeof c->t->find] = "";

	for (int i = 1; i < argc; i++) {
		if (strlen(what) + strlen(argv[i]) + 2 > sizeof what)
			return tui_cmd_fail(c, ":find: at most %zu characters", sizeof what - 1);
		if (i > 1)
			strcat(what, " ");
		strcat(what, argv[i]);
	}
	if (what[0] == '\0')
		snprintf(what, sizeof what, "%s", c->t->find);
	if (what[0] == '\0')
		return tui_cmd_fail(c, ":find: expected the text to look for in the retention strip");
	snprintf(c->t->find, sizeof c->t->find, "%s", what);
	if (!tui_find(c->t, what))
		return tui_cmd_fail(c, ":find: '%s' is not in the dialogue's tokens", what);
	tui_status(c->t, false, "'%s' at token #%d (:find again for the next)", what, c->t->sel_tok);
	return KVS_OK;
}

static int comp_sel(const char *word, size_t i, const char **out)
{
	static const char *const n[] = { "first", "last", "off", "turn", NULL };
	(void)word;
	return comp_list(n, i, out);
}

static int x_new(struct tui_ctx *c, int argc, char **argv)
{
	(void)argv;
	if (argc != 1)
		return tui_cmd_fail(c, ":new takes no arguments");
	if (cmd_confirm(c, "new", "starts a new conversation without them"))
		return KVS_OK;
	cmd_send(c, &(struct worker_cmd){ .kind = WORKER_RESET });
	tui_msg_add(c->t, MSG_INFO, "new conversation");
	return KVS_OK;
}

/* A read-only connection to the session database for listing and export
 * (the worker's own connection records; SQLite handles the two). */
static struct store *cmd_store_ro(struct tui_ctx *c, const char *cmd)
{
	struct store *st;
	struct err e;
	char *path;
	int rc;

	if (!store_available()) {
		tui_cmd_fail(c, ":%s: the session store was not built (configure found no SQLite)", cmd);
		return NULL;
	}
	path = c->t->db_path[0] ? xstrdup(c->t->db_path) : store_default_path();
	rc = store_open(&st, path, STORE_RO, &e);
	if (rc == KVS_ENOTFOUND && strcmp(cmd, "sessions") == 0)
		tui_status(c->t, false,
		           "no saved sessions yet in %s: :save [TITLE] saves this "
		           "conversation there",
		           path);
	else if (rc == KVS_ENOTFOUND)
		tui_cmd_fail(c, ":%s: no saved sessions yet in %s (:save [TITLE] saves this conversation)",
		             cmd, path);
	else if (rc != KVS_OK)
		tui_cmd_fail(c, ":%s: %s", cmd, e.msg);
	if (rc != KVS_OK)
		st = NULL;
	free(path);
	return st;
}

static int x_sessions(struct tui_ctx *c, int argc, char **argv)
{
	struct store *st;
	struct store_session *ss = NULL;
	size_t n = 0;
	struct err e;
	char buf[256] = "";

	(void)argv;
	if (argc != 1)
		return tui_cmd_fail(c, ":sessions takes no arguments");
	if ((st = cmd_store_ro(c, "sessions")) == NULL)
		return c->t->status_err ? KVS_EIO : KVS_OK;
	if (store_session_list(st, &ss, &n, &e) != KVS_OK) {
		store_close(st);
		return tui_cmd_fail(c, ":sessions: %s", e.msg);
	}
	for (size_t i = 0; i < n; i++) {
		char one[96];
		snprintf(one, sizeof one, "%s%lld '%s' (%u turn%s)", i ? ", " : "", (long long)ss[i].id,
		         ss[i].title ? ss[i].title : "", ss[i].n_turns, ss[i].n_turns == 1 ? "" : "s");
		if (strlen(buf) + strlen(one) + 1 < sizeof buf)
			strcat(buf, one);
		store_session_free(&ss[i]);
	}
	free(ss);
	store_close(st);
	if (n == 0)
		tui_status(c->t, false, "no saved sessions yet%s",
		           c->t->saving ? " (this conversation is saved from its first exchange)"
		                        : ": :save [TITLE] saves this conversation");
	else
		tui_status(c->t, false, "%zu saved session%s: %s", n, n == 1 ? "" : "s", buf);
	return KVS_OK;
}

static int x_save(struct tui_ctx *c, int argc, char **argv)
{
	char title[200] = "";

	if (!store_available())
		return tui_cmd_fail(c,
		                    ":save: the session store was not built (configure found no SQLite)");
	for (int i = 1; i < argc; i++) {
		if (strlen(title) + strlen(argv[i]) + 2 >= sizeof title)
			return tui_cmd_fail(c, ":save: the title is too long (at most %zu characters)",
			                    sizeof title - 1);
		if (i > 1)
			strcat(title, " ");
		strcat(title, argv[i]);
	}
	cmd_send(c, &(struct worker_cmd){ .kind = WORKER_SAVE, .text = title[0] ? title : NULL });
	return KVS_OK;
}

static int x_load(struct tui_ctx *c, int argc, char **argv)
{
	if (!store_available())
		return tui_cmd_fail(c,
		                    ":load: the session store was not built (configure found no SQLite)");
	char what[200] = "";

	if (argc < 2)
		return tui_cmd_fail(c,
		                    ":load: expected a saved session's id or title (:sessions lists them)");
	if (cmd_confirm(c, "load", "replaces them with the saved session"))
		return KVS_OK;
	for (int i = 1; i < argc; i++) {
		/* a title may have spaces */
		if (strlen(what) + strlen(argv[i]) + 2 >= sizeof what)
			return tui_cmd_fail(c, ":load: the title is too long (at most %zu characters)",
			                    sizeof what - 1);
		if (i > 1)
			strcat(what, " ");
		strcat(what, argv[i]);
	}
	cmd_send(c, &(struct worker_cmd){ .kind = WORKER_LOAD, .text = what, .n = TUI_REPLAY_TURNS });
	tui_msg_add(c->t, MSG_INFO, "loading a saved session ...");
	return KVS_OK;
}

static int x_export(struct tui_ctx *c, int argc, char **argv)
{
	struct store *st;
	enum store_format fmt = STORE_FMT_MD;
	int64_t id;
	struct err e;
	FILE *fp;
	int rc;

	if (argc < 3 || argc > 4)
		return tui_cmd_fail(c, ":export: expected ID|TITLE FILE [md|json]");
	if (argc == 4 && store_format_parse(argv[3], &fmt, &e) != KVS_OK)
		return tui_cmd_fail(c, ":export: %s", e.msg);
	if ((st = cmd_store_ro(c, "export")) == NULL)
		return KVS_EIO;
	rc = store_session_find(st, argv[1], &id, &e);
	if (rc == KVS_OK) {
		fp = fopen(argv[2], "w");
		if (fp == NULL) {
			rc = err_set(&e, KVS_EIO, "cannot write %s: %s", argv[2], strerror(errno));
		} else {
			rc = store_export(st, id, fmt, c->t->vocab, fp, &e);
			if (fclose(fp) != 0 && rc == KVS_OK)
				rc = err_set(&e, KVS_EIO, "cannot write %s: %s", argv[2], strerror(errno));
		}
	}
	store_close(st);
	if (rc != KVS_OK)
		return tui_cmd_fail(c, ":export: %s", e.msg);
	tui_status(c->t, false, "session %lld exported to %s", (long long)id, argv[2]);
	return KVS_OK;
}

/* :export-view attention|retention FILE [csv|json]: what the panes show. */
static int x_export_view(struct tui_ctx *c, int argc, char **argv)
{
	struct err e;

	if (argc < 3 || argc > 4)
		return tui_cmd_fail(c, ":export-view: expected attention|retention FILE [csv|json]");
	if (tui_export_view(c->t, argv[1], argv[2], argc == 4 ? argv[3] : NULL, &e) != KVS_OK)
		return tui_cmd_fail(c, ":export-view: %s", e.msg);
	tui_status(c->t, false, "%s view written to %s", argv[1], argv[2]);
	return KVS_OK;
}

static int comp_view(const char *word, size_t i, const char **out)
{
	static const char *const n[] = { "attention", "retention", NULL };
	(void)word;
	return comp_list(n, i, out);
}

/* The runtime, or a failure saying why there is none. */
static struct script_rt *cmd_rt(struct tui_ctx *c, const char *cmd)
{
	if (c->t->rt == NULL)
		tui_cmd_fail(c, ":%s: Lua plugins are not available (%s)", cmd,
		             script_available() ? "the runtime did not start" : "built without Lua");
	return c->t->rt;
}

/* Plugins are about to change: a Lua policy in use goes back to its base
 * policy first (its provider may be unloaded). */
static void cmd_drop_lua_policy(struct tui_ctx *c)
{
	if (c->t->lua_policy[0] == '\0')
		return;
	cmd_send(c, &(struct worker_cmd){ .kind = WORKER_POLICY, .text = c->t->lua_base });
	c->t->lua_policy[0] = '\0';
}

/* The last line of a plugin's log, or "". */
static const char *cmd_last_log(struct script_rt *rt, const char *plugin)
{
	size_t n = script_log_count(rt, plugin);
	return n ? script_log_line(rt, plugin, n - 1) : "";
}

/* :lua CODE: the code becomes the plugin "lua" (replacing the previous
 * one), so what it registers (hooks, commands, views) stays until the next
 * :lua or :plugin unload lua; print() goes to its log, whose last line is
 * shown. */
static int x_lua(struct tui_ctx *c, int argc, char **argv)
{
	struct script_rt *rt = cmd_rt(c, "lua");
	struct err e;

	if (rt == NULL)
		return KVS_EUNSUPPORTED;
	if (argc < 2)
		return tui_cmd_fail(c, ":lua: expected Lua code, e.g. :lua print(1 + 1)");
	cmd_drop_lua_policy(c);
	script_unload(rt, "lua", &e); /* the previous chunk, if any */
	/* kvscope preloaded, as a plugin would require it (on line 1: line
	 * numbers in errors stay the user's) */
	char *code = xasprintf("local kvscope = require 'kvscope'; %s", argv[1]);
	int rc = script_load_text(rt, "lua", code, &e);
	free(code);
	if (rc != KVS_OK)
		return tui_cmd_fail(c, ":lua: %s", e.msg);
	tui_status(c->t, false, "lua: %s", cmd_last_log(rt, "lua")[0] ? cmd_last_log(rt, "lua") : "ok");
	return KVS_OK;
}

/* A plugin's path: as given, else plugins/NAME.lua in the data folder. */
static char *cmd_plugin_path(const char *arg)
{
	struct stat st;
	char *dir, *p;
	size_t n = strlen(arg);

	if (stat(arg, &st) == 0 || strchr(arg, '/') != NULL)
		return xstrdup(arg);
	dir = script_data_dir();
	p = xasprintf("%s/plugins/%s%s", dir, arg,
	              n > 4 && strcmp(arg + n - 4, ".lua") == 0 ? "" : ".lua");
	free(dir);
	return p;
}

static int x_plugin(struct tui_ctx *c, int argc, char **argv)
{
	struct script_rt *rt;
	struct err e;
	const char *sub = argc > 1 ? argv[1] : "";
	int rc = KVS_OK;

	if (strcmp(sub, "list") != 0 && strcmp(sub, "load") != 0 && strcmp(sub, "unload") != 0 &&
	    strcmp(sub, "reload") != 0 && strcmp(sub, "log") != 0)
		return tui_cmd_fail(c,
		                    ":plugin: expected list, load NAME|FILE, unload NAME, reload NAME or "
		                    "log NAME");
	if ((rt = cmd_rt(c, "plugin")) == NULL)
		return KVS_EUNSUPPORTED;
	if (strcmp(sub, "list") == 0) {
		char buf[256] = "";
		size_t n = script_plugin_count(rt);
		for (size_t i = 0; i < n; i++) {
			struct script_plugin_info pi;
			char one[80];
			script_plugin_at(rt, i, &pi);
			snprintf(one, sizeof one, "%s%s%s", i ? ", " : "", pi.name,
			         pi.enabled ? "" : " (disabled)");
			if (strlen(buf) + strlen(one) + 1 < sizeof buf)
				strcat(buf, one);
		}
		tui_status(c->t, false, "%zu plugin%s%s%s", n, n == 1 ? "" : "s", n ? ": " : "", buf);
		return KVS_OK;
	}
	if (argc != 3)
		return tui_cmd_fail(c, ":plugin %s: expected a plugin name", sub);
	if (strcmp(sub, "load") == 0) {
		char *path = cmd_plugin_path(argv[2]);
		rc = script_load(rt, path, &e);
		free(path);
	} else if (strcmp(sub, "unload") == 0) {
		cmd_drop_lua_policy(c);
		rc = script_unload(rt, argv[2], &e);
	} else if (strcmp(sub, "reload") == 0) {
		cmd_drop_lua_policy(c);
		rc = script_reload(rt, argv[2], &e);
	} else {
		const char *l = cmd_last_log(rt, argv[2]);
		tui_status(c->t, false, "%s: %s", argv[2], l[0] ? l : "(empty log)");
		return KVS_OK;
	}
	if (rc != KVS_OK)
		return tui_cmd_fail(c, ":plugin %s: %s", sub, e.msg);
	tui_status(c->t, false, "plugin %s: %s done", argv[2], sub);
	return KVS_OK;
}

static int x_theme(struct tui_ctx *c, int argc, char **argv)
{
	const struct tui_theme *th;

	if (argc == 1) {
		tui_status(c->t, false, "theme %s (dark, light)", c->t->theme->name);
		return KVS_OK;
	}
	if (argc != 2 || (th = tui_theme_find(argv[1])) == NULL)
		return tui_cmd_fail(c, ":theme: unknown theme '%s': expected dark or light",
		                    argc > 1 ? argv[1] : "");
	c->t->theme = th;
	tui_status(c->t, false, "theme %s", th->name);
	return KVS_OK;
}

static int x_help(struct tui_ctx *c, int argc, char **argv)
{
	const char *name = argc > 1 ? argv[1] + (argv[1][0] == ':') : NULL;

	if (argc == 1) {
		c->t->help = true;
		c->t->help_scroll = 0;
		return KVS_OK;
	}
	for (size_t i = 0; i < tui_cmd_count(); i++) {
		const struct tui_cmd *k = tui_cmd_at(i);
		if (strcmp(k->name, name) == 0) {
			tui_status(c->t, false, ":%s %s  %s", k->name, k->args, k->help);
			return KVS_OK;
		}
	}
	for (size_t i = 0; c->t->rt != NULL && i < script_command_count(c->t->rt); i++) {
		struct script_command_info ci;
		script_command_at(c->t->rt, i, &ci);
		if (strcmp(ci.name, name) == 0) {
			tui_status(c->t, false, ":%s ARGS  %s (plugin %s)", ci.name,
			           ci.help && ci.help[0] ? ci.help : "(no help given)",
			           ci.plugin ? ci.plugin : "?");
			return KVS_OK;
		}
	}
	/* not a command: search the help for the words */
	char text[sizeof c->t->help_find] = "";
	for (int i = 1; i < argc; i++)
		if (strlen(text) + strlen(argv[i]) + 2 <= sizeof text)
			snprintf(text + strlen(text), sizeof text - strlen(text), "%s%s", i > 1 ? " " : "",
			         argv[i]);
	if (!tui_help_find(c->t, text)) {
		c->t->help = false;
		return tui_cmd_fail(c, ":help: no command '%s', and the help does not mention it", name);
	}
	tui_status(c->t, false, "help: '%s' (:help %s again for the next)", text, text);
	return KVS_OK;
}

static int comp_pane(const char *word, size_t i, const char **out)
{
	(void)word;
	if (i >= tui_pane_count())
		return 0;
	*out = tui_pane_at(i)->name;
	return 1;
}

static int x_pane(struct tui_ctx *c, int argc, char **argv)
{
	int i = argc == 2 ? tui_pane_find(argv[1]) : -1;

	if (i < 0) {
		char names[256] = "";
		for (size_t k = 0; k < tui_pane_count(); k++) {
			if (strlen(names) + strlen(tui_pane_at(k)->name) + 3 >= sizeof names)
				break;
			strcat(names, k ? ", " : "");
			strcat(names, tui_pane_at(k)->name);
		}
		return tui_cmd_fail(c, ":pane: expected one of %s", names);
	}
	c->t->tab = i;
	return KVS_OK;
}

/* :yank [all]: the last reply (all: the whole chat) to the clipboard,
 * through the terminal (OSC 52: it works over ssh and inside tmux). */
static int x_yank(struct tui_ctx *c, int argc, char **argv)
{
	bool all = argc == 2 && strcmp(argv[1], "all") == 0;
	char *text;

	if (argc > 2 || (argc == 2 && !all))
		return tui_cmd_fail(c, ":yank: expected nothing (the last reply) or all (the whole chat)");
	text = tui_chat_text(c->t, all);
	if (text == NULL || text[0] == '\0') {
		free(text);
		return tui_cmd_fail(c, ":yank: nothing to copy yet (%s)",
		                    all ? "the chat is empty" : "no reply");
	}
	free(c->t->yank);
	c->t->yank = text;
	tui_status(c->t, false,
	           "copied %zu byte%s to the clipboard (OSC 52; tmux needs set-clipboard on)",
	           strlen(text), strlen(text) == 1 ? "" : "s");
	return KVS_OK;
}

/* :mouse [on|off]: off leaves the mouse to the terminal (its own selection). */
static int x_mouse(struct tui_ctx *c, int argc, char **argv)
{
	if (argc == 2 && (strcmp(argv[1], "on") == 0 || strcmp(argv[1], "off") == 0))
		c->t->mouse_off = strcmp(argv[1], "off") == 0;
	else if (argc != 1)
		return tui_cmd_fail(c, ":mouse: expected on or off");
	tui_status(c->t, false, "%s",
	           c->t->mouse_off
	                   ? "mouse off: the terminal selects text (:mouse on to click and scroll here)"
	                   : "mouse on: clicks select tokens, the wheel scrolls (:mouse off to select "
	                     "text)");
	return KVS_OK;
}

static int comp_onoff(const char *word, size_t i, const char **out)
{
	static const char *const n[] = { "on", "off", NULL };
	(void)word;
	return comp_list(n, i, out);
}

static int x_quit(struct tui_ctx *c, int argc, char **argv)
{
	if (argc != 1)
		return tui_cmd_fail(c, ":%s takes no arguments", argv[0]);
	if (strcmp(argv[0], "quit!") != 0 && cmd_confirm(c, "quit", "leaves without saving"))
		return KVS_OK;
	c->t->quit = true;
	return KVS_OK;
}

static const struct tui_cmd tui_cmds[] = {
	{ "policy", "[NAME [k=v ...]]", "switch the KV retention policy (none: show it)", comp_policy,
	  x_policy },
	{ "budget", "N", "KV budget in tokens (0: every slot)", NULL, x_budget },
	{ "sparse", "off|quest|hip|squeezed[:k=v,...]",
	  "sparse decode attention over what the policy kept", NULL, x_sparse },
	{ "doc", "FILE|off", "pin a text document at the start of a new conversation", NULL, x_doc },
	{ "compare", "POLICY[:k=v,...] [BUDGET]|off",
	  "replay this conversation under a second policy in a shadow session, side by side "
	  "(a second KV cache and decode while on; off stops it)",
	  tui_compare_complete, tui_compare_exec },
	{ "len", "[N[w|t]|LEVEL|off]",
	  "length target of the next replies (words, tokens, a Ruler level)", NULL, x_len },
	{ "max", "N", "the most tokens a reply may have (a hard cap)", NULL, x_max },
	{ "layer", "N", "attention pane: layer", NULL, x_layer },
	{ "head", "N", "attention pane: head", NULL, x_head },
	{ "agg", "head|mean|max", "attention pane: one head or all heads aggregated", comp_agg, x_agg },
	{ "overview", "entropy|sink|k90", "attention pane: what the layer x head grid shows",
	  comp_overview, x_overview },
	{ "attn", "grid|row",
	  "attention pane: queries x keys over the last steps (the cursor: Shift-Up/Down, the "
	  "strip's token), or the shown query's row",
	  comp_attn, x_attn },
	{ "sel", "POS|turn N|first|last|off",
	  "select a token in the retention strip (off: follow the live tail)", comp_sel, x_sel },
	{ "find", "[TEXT]",
	  "select the next token where TEXT begins in the retention strip (alone: again)", NULL,
	  x_find },
	{ "pin", "[POS]", "pin the selected token (or POS): never evicted", NULL, x_pin },
	{ "unpin", "[POS]", "unpin the selected token (or POS)", NULL, x_unpin },
	{ "new", "", "start a new conversation", NULL, x_new },
	{ "sessions", "", "list the saved sessions", NULL, x_sessions },
	{ "load", "ID|TITLE", "resume a saved session (its retained KV cache and its transcript)", NULL,
	  x_load },
	{ "save", "[TITLE]",
	  "save this conversation (its exchanges so far and the next ones); when saving, retitle it",
	  NULL, x_save },
	{ "export", "ID|TITLE FILE [md|json]", "export a saved session", NULL, x_export },
	{ "export-view", "attention|retention FILE [csv|json]",
	  "write what the pane shows: the attention steps (every layer and head) or the strip's "
	  "tokens",
	  comp_view, x_export_view },
	{ "lua", "CODE", "run Lua code (as the plugin 'lua', kvscope preloaded)", NULL, x_lua },
	{ "plugin", "list|load|unload|reload|log [NAME]", "manage Lua plugins", comp_plugin, x_plugin },
	{ "pane", "NAME", "show a pane (the tab on small terminals)", comp_pane, x_pane },
	{ "theme", "[dark|light]", "switch the colour theme", comp_theme, x_theme },
	{ "yank", "[all]", "copy the last reply (all: the whole chat) to the clipboard (OSC 52)", NULL,
	  x_yank },
	{ "mouse", "[on|off]",
	  "off: leave the mouse to the terminal (its text selection); on: clicks and wheel here",
	  comp_onoff, x_mouse },
	{ "help", "[CMD|TEXT]", "this list, one command's help, or the help opened where TEXT is",
	  tui_cmd_names, x_help },
	{ "quit", "", "leave; asks first when exchanges are not saved", NULL, x_quit },
	{ "quit!", "", "leave without saving what is not saved", NULL, x_quit },
};

size_t tui_cmd_count(void)
{
	return KVS_ARRAY_LEN(tui_cmds);
}

const struct tui_cmd *tui_cmd_at(size_t i)
{
	return i < KVS_ARRAY_LEN(tui_cmds) ? &tui_cmds[i] : NULL;
}

/* Completion source of :help: the built-in command names. */
int tui_cmd_names(const char *word, size_t i, const char **out)
{
	(void)word;
	if (i >= tui_cmd_count())
		return 0;
	*out = tui_cmd_at(i)->name;
	return 1;
}
