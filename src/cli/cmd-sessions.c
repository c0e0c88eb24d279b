/*
 * cmd-sessions.c: `kvscope sessions list|show|export|delete|vacuum|check`, the
 * saved sessions in the database (--db PATH, default
 * $XDG_DATA_HOME/kvscope/memory.db). Readers open it read-only, so they
 * work beside a running chat; delete and vacuum write.
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
	time_t tt = (time_t)t;
	struct tm tm;
	localtime_r(&tt, &tm);
	strftime(buf, cap, "%Y-%m-%d %H:%M", &tm);
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
			snprintf(pol, sizeof pol, "%s", l[i].policy ? l[i].policy : "");
			printf("%-5lld %-16s %6u %8u %8u  %-24s %s%s\n", (long long)l[i].id,
			       sessions_time(l[i].updated, t, sizeof t), l[i].n_turns, l[i].n_tokens,
			       l[i].n_kept, pol, l[i].title, l[i].n_incomplete ? " (incomplete turns)" : "");
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
	if (rc == CLI_OK && (store_session_find(st, o->args[0], &id, &e) != KVS_OK ||
	                     store_session_get(st, id, &s, &e) != KVS_OK))
		rc = cli_fail(&e);
	if (rc == CLI_OK) {
		printf("session  %lld: %s\n", (long long)s.id, s.title);
		printf("model    %s (%s)\nsha256   %s\n", s.model_path, s.arch, s.model_sha256);
		printf("policy   %s, budget %u tokens, context %u\n", s.policy, s.budget, s.n_ctx);
		printf("sampler  %s\n", s.sampler);
		printf("system   %s\n", s.system ? s.system : "(none)");
		printf("created  %s\n", sessions_time(s.created, t, sizeof t));
		printf("updated  %s\n", sessions_time(s.updated, t, sizeof t));
		printf("turns    %u (%u incomplete)\n", s.n_turns, s.n_incomplete);
		printf("tokens   %u entered the cache, %u kept, %u evicted\n", s.n_tokens, s.n_kept,
		       s.n_tokens - s.n_kept);
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
	if (rc == CLI_OK && (store_session_find(st, o->args[0], &id, &e) != KVS_OK ||
	                     store_session_get(st, id, &ss, &e) != KVS_OK))
		rc = cli_fail(&e);
	if (rc == CLI_OK) {
		/* the session's model, for the evicted tokens' text (ids only without it) */
		char sha[65];
		struct err me;
		if (model_load(&m, ss.model_path, &me) != KVS_OK)
			fprintf(stderr, "kvscope: evicted tokens shown as ids: %s\n", me.msg);
		else if (store_model_sha256(st, ss.model_path, sha, &me) != KVS_OK ||
		         strcmp(sha, ss.model_sha256) != 0) {
			fprintf(stderr, "kvscope: evicted tokens shown as ids: %s is no longer the session's "
			                "model file\n", ss.model_path);
			model_free(m);
			m = NULL;
		}
		if (store_export(st, id, fmt, m ? m->vocab : NULL, stdout, &e) != KVS_OK)
			rc = cli_fail(&e);
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
	if (rc == CLI_OK && (store_session_find(st, o->args[0], &id, &e) != KVS_OK ||
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
