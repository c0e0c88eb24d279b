/*
 * cmd-sessions.c: `kvscope sessions list|show|export|delete|vacuum|check`, the
 * saved sessions in the database (--db PATH, default
 * $XDG_DATA_HOME/kvscope/memory.db). Readers open it read-only, so they
 * work beside a running chat and on read-only media; delete and vacuum
 * write. What the database holds is printed through store_text_escape
 * (control characters as \xHH): a crafted title cannot drive the terminal.
 * An empty or blank ID|TITLE is an error (store_key_check), never "the
 * latest".
 */
#include "cli/opts.h"
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static enum cli_exit sessions_list_exec(struct cli_opts *o);
static enum cli_exit sessions_show_exec(struct cli_opts *o);
static enum cli_exit sessions_export_exec(struct cli_opts *o);
static enum cli_exit sessions_delete_exec(struct cli_opts *o);
static enum cli_exit sessions_vacuum_exec(struct cli_opts *o);
static enum cli_exit sessions_check_exec(struct cli_opts *o);

const struct cli_cmd cmd_sessions_list = {
	.name = "sessions list",
	.usage = "[--db PATH]",
	.help = "list the saved sessions, the most recent first",
	.exec = sessions_list_exec,
	.options = OPTG_DB,
};
const struct cli_cmd cmd_sessions_show = {
	.name = "sessions show",
	.usage = "ID|TITLE [--db PATH]",
	.help = "one session: model, policy, turns, memory",
	.exec = sessions_show_exec,
	.options = OPTG_DB,
	.args_min = 1,
	.args_max = 1,
	.args = "a session id or title",
};
const struct cli_cmd cmd_sessions_export = {
	.name = "sessions export",
	.usage = "ID|TITLE [--format md|json] [--db PATH]",
	.help = "a session's transcript with what was evicted from the KV cache and why",
	.exec = sessions_export_exec,
	.options = OPTG_DB | OPTG_EXPORT,
	.args_min = 1,
	.args_max = 1,
	.args = "a session id or title",
};
const struct cli_cmd cmd_sessions_delete = {
	.name = "sessions delete",
	.usage = "ID|TITLE [--db PATH]",
	.help = "delete a session and its snapshots",
	.exec = sessions_delete_exec,
	.options = OPTG_DB,
	.args_min = 1,
	.args_max = 1,
	.args = "a session id or title",
};
const struct cli_cmd cmd_sessions_vacuum = {
	.name = "sessions vacuum",
	.usage = "[--db PATH]",
	.help = "compact the database and drop unused snapshot files",
	.exec = sessions_vacuum_exec,
	.options = OPTG_DB,
};
const struct cli_cmd cmd_sessions_check = {
	.name = "sessions check",
	.usage = "[--db PATH]",
	.help = "SQLite's integrity check of the database ('ok' when sound)",
	.exec = sessions_check_exec,
	.options = OPTG_DB,
};

/* Open the database (--db, else the default one). */
static enum cli_exit sessions_open(const struct cli_opts *o, enum store_mode mode,
                                   struct store **st)
{
	struct err e;
	*st = NULL;
	char *path = o->db ? xstrdup(o->db) : store_default_path();
	int rc = store_open(st, path, mode, &e);
	free(path);
	return rc == KVS_OK ? CLI_OK : cli_fail(&e);
}

/* "2026-11-27 01:43" in local time. */
static const char *sessions_time(double t, char *buf, size_t cap)
{
	struct tm tm;
	time_t tt;
	/* a crafted database's time may be inf or far out: no undefined cast */
	if (!(t >= 0 && t < 1e12) || (tt = (time_t)t, localtime_r(&tt, &tm) == NULL) ||
	    strftime(buf, cap, "%Y-%m-%d %H:%M", &tm) == 0)
		snprintf(buf, cap, "?");
	return buf;
}

static enum cli_exit sessions_list_exec(struct cli_opts *o)
{
	struct store *st;
	struct store_session *l = NULL;
	size_t n = 0;
	struct err e;
	char t[32];
	enum cli_exit rc = sessions_open(o, STORE_RO, &st);
	if (rc == CLI_OK && store_session_list(st, &l, &n, &e) != KVS_OK)
		rc = cli_fail(&e);
	if (rc == CLI_OK) {
		printf("%-5s %-16s %6s %8s %8s  %-24s %s\n", "ID", "UPDATED", "TURNS", "TOKENS", "KEPT",
		       "POLICY", "TITLE");
		for (size_t i = 0; i < n; i++) {
			char pol[25];
			char *p = store_text_escape(l[i].policy, 0), *title = store_text_escape(l[i].title, 0);
			snprintf(pol, sizeof pol, "%s", p);
			printf("%-5lld %-16s %6u %8u %8u  %-24s %s%s\n", (long long)l[i].id,
			       sessions_time(l[i].updated, t, sizeof t), l[i].n_turns, l[i].n_tokens,
			       l[i].n_kept, pol, title, l[i].n_incomplete ? " (incomplete turns)" : "");
			free(p);
			free(title);
		}
	}
	for (size_t i = 0; i < n; i++)
		store_session_free(&l[i]);
	free(l);
	store_close(st);
	cli_opts_free(o);
	return rc;
}

static enum cli_exit sessions_show_exec(struct cli_opts *o)
{
	struct store *st;
	struct store_session s;
	struct err e;
	int64_t id;
	char t[32];
	enum cli_exit rc = sessions_open(o, STORE_RO, &st);
	if (rc == CLI_OK &&
	    (store_session_find(st, o->args[0], &id, &e) != KVS_OK ||
	     store_session_get(st, id, &s, &e) != KVS_OK))
		rc = cli_fail(&e);
	if (rc == CLI_OK) {
		/* the strings, escaped for the terminal: title, model path, arch,
		 * sha256, policy, sampler, system prompt */
		char *f[7];
		const char *raw[7] = { s.title,
			                   s.model_path,
			                   s.arch,
			                   s.model_sha256,
			                   s.policy,
			                   s.sampler,
			                   s.system ? s.system : "(none)" };
		for (int i = 0; i < 7; i++)
			f[i] = store_text_escape(raw[i], 0);
		printf("session  %lld: %s\n", (long long)s.id, f[0]);
		printf("model    %s (%s)\nsha256   %s\n", f[1], f[2], f[3]);
		printf("policy   %s, budget %u tokens, context %u\n", f[4], s.budget, s.n_ctx);
		printf("sampler  %s\n", f[5]);
		printf("system   %s\n", f[6]);
		for (int i = 0; i < 7; i++)
			free(f[i]);
		printf("created  %s\n", sessions_time(s.created, t, sizeof t));
		printf("updated  %s\n", sessions_time(s.updated, t, sizeof t));
		printf("turns    %u (%u incomplete)\n", s.n_turns, s.n_incomplete);
		printf("tokens   %u entered the cache, %u kept, %u evicted\n", s.n_tokens, s.n_kept,
		       s.n_tokens - s.n_kept);
		uint32_t blocks;
		uint64_t ct, cb;
		if (store_cold_count(st, id, &blocks, &ct, &cb, &e) != KVS_OK)
			rc = cli_fail(&e);
		else
			printf("cold     %u blocks, %llu tokens, %.1f MiB of K/V\n", blocks,
			       (unsigned long long)ct, (double)cb / 1048576.0);
		if (rc == CLI_OK && store_recall_count(st, id, &blocks, &ct, &e) != KVS_OK)
			rc = cli_fail(&e);
		else if (rc == CLI_OK)
			printf("recalls  %u, %llu tokens back from the cold tier\n", blocks,
			       (unsigned long long)ct);
		store_session_free(&s);
	}
	store_close(st);
	cli_opts_free(o);
	return rc;
}

static enum cli_exit sessions_export_exec(struct cli_opts *o)
{
	struct store *st;
	struct err e;
	int64_t id;
	enum store_format fmt = STORE_FMT_MD;
	enum cli_exit rc = sessions_open(o, STORE_RO, &st);
	if (rc == CLI_OK && o->format != NULL && store_format_parse(o->format, &fmt, &e) != KVS_OK)
		rc = cli_usage(&cmd_sessions_export, "%s", e.msg);
	struct store_session ss = { 0 };
	struct model *m = NULL;
	if (rc == CLI_OK &&
	    (store_session_find(st, o->args[0], &id, &e) != KVS_OK ||
	     store_session_get(st, id, &ss, &e) != KVS_OK))
		rc = cli_fail(&e);
	if (rc == CLI_OK) {
		/* the session's model, for the evicted tokens' text (ids only without it) */
		char sha[65];
		struct err me;
		if (model_load(&m, ss.model_path, &me) != KVS_OK) {
			err_prefix(&me, "evicted tokens shown as ids");
			(void)cli_fail(&me);
		} else if (store_model_sha256(st, ss.model_path, sha, &me) != KVS_OK ||
		           strcmp(sha, ss.model_sha256) != 0) {
			err_set(&me, KVS_ECHECKSUM,
			        "evicted tokens shown as ids: %s is no longer the session's model file",
			        ss.model_path);
			(void)cli_fail(&me);
			model_free(m);
			m = NULL;
		}
		if (store_export(st, id, fmt, m ? m->vocab : NULL, stdout, &e) != KVS_OK)
			rc = cli_stdout_flush() ? cli_fail(&e) : CLI_FAIL; /* main reports a write error */
	}
	model_free(m);
	store_session_free(&ss);
	store_close(st);
	cli_opts_free(o);
	return rc;
}

static enum cli_exit sessions_delete_exec(struct cli_opts *o)
{
	struct store *st;
	struct err e;
	int64_t id;
	enum cli_exit rc = sessions_open(o, STORE_RW, &st);
	if (rc == CLI_OK &&
	    (store_session_find(st, o->args[0], &id, &e) != KVS_OK ||
	     store_session_delete(st, id, &e) != KVS_OK))
		rc = cli_fail(&e);
	if (rc == CLI_OK)
		fprintf(stderr, "kvscope: session %lld deleted\n", (long long)id);
	store_close(st);
	cli_opts_free(o);
	return rc;
}

static enum cli_exit sessions_vacuum_exec(struct cli_opts *o)
{
	struct store *st;
	struct err e;
	enum cli_exit rc = sessions_open(o, STORE_RW, &st);
	if (rc == CLI_OK && store_vacuum(st, &e) != KVS_OK)
		rc = cli_fail(&e);
	store_close(st);
	cli_opts_free(o);
	return rc;
}

static enum cli_exit sessions_check_exec(struct cli_opts *o)
{
	struct store *st;
	struct err e;
	enum cli_exit rc = sessions_open(o, STORE_RO, &st);
	if (rc == CLI_OK && store_check(st, &e) != KVS_OK)
		rc = cli_fail(&e);
	if (rc == CLI_OK)
		printf("ok\n");
	store_close(st);
	cli_opts_free(o);
	return rc;
}
