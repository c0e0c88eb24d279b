/*
 * cmd-chat.c: `kvscope chat`, a plain line-mode chat. Each input line is one
 * user turn; the reply streams to stdout and ends with a newline. The
 * conversation stays in the KV cache between turns, so only the new turn is
 * fed. On a terminal there is a prompt and libedit line editing; from a pipe
 * there is no prompt, one reply per line, for scripting. Lines starting with
 * ':' are commands, as in the workbench (one table: :new, :policy, :budget,
 * :kv, :len, :save, :quit, :help); '/' still works in their place, as it
 * did before. Ctrl-D at the prompt ends the chat on a new line. With a
 * length target (--target-words N, or :len 120w, :len 200t, :len 150, :len
 * off) every
 * reply is steered into the target window (app/lenctl.c) and each user line
 * gets Ruler's sentence asking for the length, unless --no-length-prompt;
 * a status line on stderr then gives the words and the stop reason.
 *
 * With --db, --save, --title or --resume the conversation is saved (store.h,
 * through the session), and :save [TITLE] starts saving mid-way (the
 * exchanges so far first) or retitles the saved session: each finished exchange commits with its token rows,
 * memory events and a KV snapshot; a failed commit says why on stderr, the
 * chat goes on in memory and the next exchange's commit retries. --resume
 * restores a saved session's retained cache (snapshot, else recompute) with
 * its model, policy, budget and system prompt, recaps its last exchanges
 * (one line each, then "-- resumed 'TITLE' (N turns, K tokens retained)
 * --") on stderr, terminal or not, so that stdout keeps one reply per input
 * line, and the dialogue continues.
 *
 * A line with a NUL byte is not sent (C strings would cut it): one line on
 * stderr says so and its reply line is empty. When stdout fails (a full
 * disk, a closed pipe) the reply is cancelled and the chat ends; main
 * reports the write error.
 */
#include "cli/lineedit.h"
#include "cli/opts.h"
#include "store/store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static enum cli_exit cmd_chat_exec(struct cli_opts *o);
static enum cli_exit cmd_chat_defaults(struct cli_opts *o);

const struct cli_cmd cmd_chat = {
	.name = "chat",
	.usage = "[--model PATH] [--system TEXT] [--max-tokens N] "
	         "[--target-words N | --length SPEC] [--no-length-prompt] [--stop TEXT] [options]",
	.help = "plain line-mode chat (libedit on a terminal; one reply per line from a pipe)",
	.exec = cmd_chat_exec,
	.options = OPTG_MODEL | OPTG_ENGINE | OPTG_SAMPLER | OPTG_GEN | OPTG_PROMPT | OPTG_KV |
	        OPTG_DB | OPTG_SAVE | OPTG_LEN | OPTG_COLD | OPTG_TRACE,
	.args = "none: chat reads its turns from standard input",
	.defaults = cmd_chat_defaults,
};

#define CHAT_RECAP_TURNS 3  /* exchanges recapped after --resume */
#define CHAT_RECAP_COLS 100 /* code points of each recapped message */

/* The database behind a saving chat (st NULL when not saving). */
struct chat_db {
	struct store *st;
	int64_t id;       /* resumed session, or 0 */
	char *model_path; /* the resumed session's model, or NULL */
	char *system;     /* the resumed session's system prompt, or NULL */
	char *tmpdir;     /* --cold on without a database: a temporary one here, or NULL */
	FILE *trace;      /* --trace FILE: memory and cold-tier events, or NULL */
	const struct vocab *v;
};

/* --cold on without --db: a temporary database, removed at exit. */
static int chat_db_temp(struct chat_db *db, struct err *e)
{
	char *dir = file_mkdtemp("kvscope-cold", "cold tier", e);
	if (dir == NULL)
		return KVS_EIO;
	db->tmpdir = dir;
	char *path = xasprintf("%s/cold.db", dir);
	int rc = store_open(&db->st, path, STORE_RW, e);
	free(path);
	if (rc == KVS_OK)
		fprintf(stderr,
		        "kvscope: cold tier in a temporary database, deleted at exit "
		        "(--db PATH keeps it)\n");
	return rc;
}

/* The saved session's sparse spec (NULL: saved before it was kept, dense)
 * unless --sparse is given; an explicit one that differs says so. */
static int chat_resume_sparse(struct cli_opts *o, const char *saved, struct err *e)
{
	struct engine_sparse sp;
	char a[256], b[256];
	if (saved == NULL || saved[0] == '\0')
		return KVS_OK;
	if (engine_sparse_parse(saved, &sp, e) != KVS_OK) {
		err_prefix(e, "the saved session's sparse spec");
		return e->code;
	}
	engine_sparse_format(&sp, a, sizeof a);
	engine_sparse_format(&o->gen.kv.sparse, b, sizeof b);
	if (!cli_opts_given(o, "sparse"))
		o->gen.kv.sparse = sp;
	else if (strcmp(a, b) != 0)
		fprintf(stderr, "kvscope: --sparse %s overrides the session's sparse %s\n", b, a);
	return KVS_OK;
}

/* Open the database when saving was asked for; when resuming, take the
 * session's model, policy, budget, context and system prompt unless given. */
static int chat_db_open(struct chat_db *db, struct cli_opts *o, struct err *e)
{
	struct store_session ss;
	if (o->db == NULL && o->resume == NULL && o->title == NULL && !o->save)
		return o->cold.on ? chat_db_temp(db, e) : KVS_OK;
	char *path = o->db ? xstrdup(o->db) : store_default_path();
	int rc = store_open(&db->st, path, STORE_RW, e);
	free(path);
	if (rc != KVS_OK || o->resume == NULL)
		return rc;
	/* "" is --resume alone: the latest session (opts.c refuses an empty value) */
	rc = store_session_find(db->st, o->resume[0] ? o->resume : NULL, &db->id, e);
	if (rc == KVS_OK)
		rc = store_session_get(db->st, db->id, &ss, e);
	if (rc != KVS_OK)
		return rc;
	if (o->gen.model_path == NULL && ss.model_path != NULL && ss.model_path[0] != '\0') {
		db->model_path = xstrdup(ss.model_path);
		o->gen.model_path = db->model_path;
	}
	if (!cli_opts_given(o, "policy"))
		rc = kv_policy_parse(ss.policy, &o->gen.kv.policy, e);
	if (rc == KVS_OK)
		rc = chat_resume_sparse(o, ss.sparse, e);
	if (o->gen.kv.budget == 0)
		o->gen.kv.budget = ss.budget;
	if (!cli_opts_given(o, "ctx"))
		o->gen.engine.n_ctx = ss.n_ctx;
	if (o->system == NULL && ss.system != NULL) {
		db->system = xstrdup(ss.system);
		o->system = db->system;
	}
	store_session_free(&ss);
	return rc;
}

/* One message of the recap on one line: runs of white space become one
 * space, control characters go, and text beyond CHAT_RECAP_COLS code
 * points becomes "...". */
static void chat_recap_msg(const char *who, const char *text)
{
	const uint8_t *p = (const uint8_t *)(text ? text : "");
	size_t n = strlen((const char *)p), i = 0;
	uint32_t cols = 0, cp;
	bool space = false;

	fputs(who, stderr);
	while (i < n) {
		size_t k = utf8_decode(p + i, n - i, &cp);
		if (k == 0) {
			k = 1;
			cp = '?';
		}
		if (cp == ' ' || cp == '\t' || cp == '\r' || cp == '\n') {
			space = cols > 0;
		} else if (cp >= 0x20 && cp != 0x7f) {
			uint32_t need = space ? 2 : 1;
			if (cols + need > CHAT_RECAP_COLS) {
				fputs(" ...", stderr);
				break;
			}
			if (space)
				fputc(' ', stderr);
			fwrite(cp == '?' ? (const uint8_t *)"?" : p + i, 1, cp == '?' ? 1 : k, stderr);
			cols += need;
			space = false;
		}
		i += k;
	}
	fputc('\n', stderr);
}

/* After a resume: the last CHAT_RECAP_TURNS exchanges, one line each side,
 * then the separator, all on stderr (stdout carries replies only). A
 * transcript that cannot be read costs only the recap. */
static void chat_recap(const struct chat_db *db, uint32_t n_tokens)
{
	struct session_recap r;
	struct err e;
	char buf[320];

	if (session_recap_read(db->st, db->id, CHAT_RECAP_TURNS, &r, &e) != KVS_OK) {
		err_prefix(&e, "no recap");
		(void)cli_fail(&e);
		session_recap_free(&r);
		return;
	}
	r.n_tokens = n_tokens;
	if (r.first > 0)
		fprintf(stderr, "(%u earlier turn%s: kvscope sessions export %lld)\n", r.first,
		        r.first == 1 ? "" : "s", (long long)r.id);
	for (uint32_t i = 0; i < r.n; i++) {
		chat_recap_msg("you> ", r.turns[i].user);
		chat_recap_msg("model> ", r.turns[i].reply);
	}
	fprintf(stderr, "-- %s --\n", session_recap_line(&r, buf, sizeof buf));
	session_recap_free(&r);
}

/* With the model loaded: its hash, then resume or start saving. */
static int chat_db_start(struct chat_db *db, struct cli_opts *o, struct session *s, struct err *e)
{
	char sha[65], smp[256];
	struct store_resume_info info;
	const struct sampler_params *sp = &o->gen.sampler;
	if (db->st == NULL)
		return KVS_OK;
	char *mp = cli_model_path(o->gen.model_path);
	int rc = store_model_sha256(db->st, mp, sha, e);
	snprintf(smp, sizeof smp, "temp=%g top-k=%d top-p=%g min-p=%g repeat-penalty=%g seed=%u",
	         (double)sp->temp, sp->top_k, (double)sp->top_p, (double)sp->min_p,
	         (double)sp->repeat_penalty, sp->seed);
	struct session_store ss = { .st = db->st,
		                        .id = db->id,
		                        .title = o->title,
		                        .model_path = mp,
		                        .model_sha256 = sha,
		                        .sampler = smp,
		                        .snapshots = db->tmpdir == NULL };
	session_set_cold(s, &o->cold);
	if (rc == KVS_OK && db->id != 0) {
		rc = session_resume(s, &ss, &info, e);
		if (rc == KVS_OK && info.from_snapshot)
			fprintf(stderr, "kvscope: resumed session %lld: %u token%s from the KV snapshot\n",
			        (long long)db->id, info.n_tokens, info.n_tokens == 1 ? "" : "s");
		else if (rc == KVS_OK)
			fprintf(stderr, "kvscope: resumed session %lld: %u token%s recomputed (%s)\n",
			        (long long)db->id, info.n_tokens, info.n_tokens == 1 ? "" : "s", info.why);
		if (rc == KVS_OK)
			chat_recap(db, info.n_tokens);
	} else if (rc == KVS_OK) {
		rc = session_set_store(s, &ss, e);
	}
	free(mp);
	return rc;
}

static void chat_db_close(struct chat_db *db)
{
	store_close(db->st);
	if (db->tmpdir != NULL) {
		/* the temporary database with its WAL, index and snapshot folder */
		static const char *const parts[] = { "cold.db",          "cold.db-wal",
			                                 "cold.db-shm",      "cold.db-journal",
			                                 "cold.db-cold",     "cold.db-cold-wal",
			                                 "cold.db-cold-shm", "cold.db-cold-journal" };
		for (size_t i = 0; i < KVS_ARRAY_LEN(parts); i++) {
			char *f = xasprintf("%s/%s", db->tmpdir, parts[i]);
			(void)unlink(f);
			free(f);
		}
		char *kv = xasprintf("%s/cold.db-kv", db->tmpdir);
		(void)rmdir(kv);
		free(kv);
		if (rmdir(db->tmpdir) != 0)
			log_warn("cold tier: could not remove the temporary folder %s", db->tmpdir);
		free(db->tmpdir);
	}
	if (db->trace != NULL)
		fclose(db->trace);
	free(db->model_path);
	free(db->system);
}

/* A commit's outcome: failures on stderr (the chat goes on), successes in
 * the info log (KVSCOPE_LOG=info; the crash-loop test reads them). */
static void chat_saved(void *ud, int64_t id, uint32_t index, int status, const char *msg)
{
	struct err e;
	(void)ud;
	if (status != KVS_OK) {
		err_set(&e, status, "%s", msg);
		(void)cli_fail(&e);
	} else
		log_info("session %lld: turn %u saved", (long long)id, index);
}

/* What the reply stream shows: a model that thinks first (qwen3) opens its
 * reply with <think>...</think>; :think hide drops that block from the
 * screen (the cache keeps it, as the model wrote it). */
struct chat_view {
	struct session *s;
	const struct chat_db *db; /* the trace and cold-tier hooks' database */
	bool hide_think;
	bool in_think; /* inside a hidden block */
	bool skip_nl;  /* drop the newlines that follow a hidden block */
};

/* Write text[0..len), less any hidden thinking. */
static void chat_show(struct chat_view *v, const char *text, size_t len)
{
	static const char open[] = "<think>", close[] = "</think>";

	while (len > 0) {
		const char *p;
		if (v->in_think) {
			p = memmem(text, len, close, sizeof close - 1);
			if (p == NULL)
				return;
			len -= (size_t)(p - text) + sizeof close - 1;
			text = p + sizeof close - 1;
			v->in_think = false;
			v->skip_nl = true;
			continue;
		}
		for (; v->skip_nl && len > 0 && *text == '\n'; text++, len--)
			;
		if (len == 0)
			return;
		v->skip_nl = false;
		p = v->hide_think ? memmem(text, len, open, sizeof open - 1) : NULL;
		if (p == NULL) {
			fwrite(text, 1, len, stdout);
			return;
		}
		fwrite(text, 1, (size_t)(p - text), stdout);
		len -= (size_t)(p - text) + sizeof open - 1;
		text = p + sizeof open - 1;
		v->in_think = true;
	}
}

/* Stream the reply's text as it comes (ud: the chat_view); a failed write
 * (a full disk, a closed pipe) cancels the reply. */
static void chat_text(void *ud, const char *text, size_t len)
{
	struct chat_view *v = ud;

	chat_show(v, text, len);
	if (!cli_stdout_flush())
		session_cancel(v->s);
}

/* What a command line's commands act on. */
struct chat_ctx {
	struct cli_opts *o;
	struct session *s;
	struct chat_db *db;
	char sigil; /* ':' or '/', as the line was typed (errors name it so) */
	struct chat_view *view;
	bool quit;
};

/* A KV event: to the trace. */
static void chat_on_kv(void *ud, const struct kv_event *ev)
{
	const struct chat_db *db = ((const struct chat_view *)ud)->db;
	if (db->trace != NULL && ev->kind != KV_EVENT_STEP)
		trace_write_event(db->trace, ev, db->v);
}

/* A cold-tier event: to the trace; a stop, refusal or failure on stderr
 * (one line; the chat goes on). */
/* The document's clustering: a counter on stderr, rewritten in place on a
 * terminal, every tenth on lines of their own otherwise. */
static void chat_progress(void *ud, uint32_t done, uint32_t total)
{
	(void)ud;
	if (isatty(2))
		fprintf(stderr, "\rkvscope: clustering the document's keys: %u/%u%s", done, total,
		        done == total ? "\n" : "");
	else if (done == total || done % KVS_MAX(total / 10, 1u) == 0)
		fprintf(stderr, "kvscope: clustering the document's keys: %u/%u\n", done, total);
}

/* A session's notice: one line on stderr. */
static void chat_notice(void *ud, const char *msg)
{
	(void)ud;
	fprintf(stderr, "kvscope: %s\n", msg);
}

static void chat_on_cold(void *ud, const struct session_cold_event *ev)
{
	const struct chat_db *db = ((const struct chat_view *)ud)->db;
	if (db->trace != NULL)
		trace_write_cold(db->trace, ev);
	if (ev->msg != NULL) {
		char *m = store_text_escape(ev->msg, 0);
		fprintf(stderr, "kvscope: %s%s\n", m,
		        ev->kind == SESSION_COLD_STOP ? "; cold writes stopped, the chat goes on" : "");
		free(m);
	}
	if (ev->kind == SESSION_COLD_RECALL && ev->n_hits > 0)
		log_info("recalled %llu tokens in %zu blocks by %s (best: turn %u, summary score %.2f, "
		         "BM25 %.2f)",
		         (unsigned long long)ev->tokens, ev->n_hits, ev->scorer ? ev->scorer : "?",
		         ev->hits[0].turn, ev->hits[0].summary, ev->hits[0].bm25);
}

/* :think show|hide: whether a reply's thinking block is shown. */
static void chat_think(struct chat_ctx *c, const char *arg)
{
	if (strcmp(arg, "show") != 0 && strcmp(arg, "hide") != 0) {
		fprintf(stderr, "kvscope: :think: expected show or hide\n");
		return;
	}
	c->view->hide_think = arg[0] == 'h';
	fprintf(stderr, "thinking blocks: %s\n", c->view->hide_think ? "hidden" : "shown");
}

/* :len [SPEC]: show or set the length target of the next replies. */
static void chat_len(struct chat_ctx *c, const char *spec)
{
	struct gen *g = session_gen(c->s);
	bool instruct = !c->o->no_len_prompt;
	struct len_target t = gen_turn(g)->len;
	struct err e;
	char buf[96];

	if (*spec != '\0' && len_target_parse(spec, &t, &e) != KVS_OK) {
		fprintf(stderr, "kvscope: %clen: %s\n", c->sigil, e.msg);
		return;
	}
	t.instruct = instruct;
	gen_set_length_target(g, &t);
	fprintf(stderr, "length target: %s\n", len_target_format(&t, buf, sizeof buf));
}

/* The cache's figures after :policy, :budget and :kv. */
static void chat_kv_show(struct gen *g)
{
	struct kv_cache *kv = gen_kv(g);
	struct kv_stats st;
	char buf[256];

	kv_cache_stats(kv, &st);
	fprintf(stderr,
	        "KV %s, budget %u: %u cached (sink %u, key %u, recent %u, pinned %u), %llu evicted "
	        "in %u round%s; %.1f MiB (%.1f KiB per layer), peak %.1f MiB\n",
	        kv_policy_format(kv_cache_policy(kv), buf, sizeof buf), st.budget, st.n_cached,
	        st.n_sink, st.n_key, st.n_recent, st.n_pinned, (unsigned long long)st.n_evicted,
	        st.n_evictions, st.n_evictions == 1 ? "" : "s", (double)st.bytes / 1048576.0,
	        (double)st.bytes_per_layer / 1024.0, (double)st.bytes_peak / 1048576.0);
	if (st.n_doc > 0) /* the document's tokens count in the budget like any */
		fprintf(stderr,
		        "document: %u tokens pinned, %.1f MiB, in the budget (%u tokens left beside it)\n",
		        st.n_doc, (double)st.n_doc * (double)st.bytes_per_token / 1048576.0,
		        st.budget > st.n_pinned ? st.budget - st.n_pinned : 0);
	uint64_t chose, reused;
	engine_sparse_steps(gen_engine(g), &chose, &reused);
	if (kv_cache_sparse(kv)->mode != ENGINE_SPARSE_OFF)
		fprintf(stderr,
		        "sparse %s: the last decode step read %.1f %% of the keys; %llu sparse steps "
		        "chose their keys, %llu reused a choice\n",
		        engine_sparse_format(kv_cache_sparse(kv), buf, sizeof buf),
		        st.keys_dense ? 100.0 * (double)st.keys_read / (double)st.keys_dense : 100.0,
		        (unsigned long long)chose, (unsigned long long)reused);
}

/* :policy [NAME [k=v ...]]: show or change the retention policy. */
static void chat_policy(struct chat_ctx *c, const char *spec)
{
	struct gen *g = session_gen(c->s);
	struct kv_policy p;
	struct err e;
	char buf[256];

	if (*spec == '\0') {
		fprintf(stderr, "policy: %s\n",
		        kv_policy_format(kv_cache_policy(gen_kv(g)), buf, sizeof buf));
		return;
	}
	if (kv_policy_parse(spec, &p, &e) != KVS_OK ||
	    kv_cache_set_policy(gen_kv(g), &p, &e) != KVS_OK) {
		gen_kv_changed(g);
		fprintf(stderr, "kvscope: %s\n", e.msg);
		return;
	}
	gen_kv_changed(g);
	chat_kv_show(g);
}

/* :sparse [off|quest|hip[:k=v,...]]: show or change sparse decode attention. */
static void chat_sparse(struct chat_ctx *c, const char *spec)
{
	struct gen *g = session_gen(c->s);
	struct engine_sparse sp;
	struct err e;
	char buf[160];

	if (*spec == '\0') {
		fprintf(stderr, "sparse: %s\n",
		        engine_sparse_format(kv_cache_sparse(gen_kv(g)), buf, sizeof buf));
		return;
	}
	if (engine_sparse_parse(spec, &sp, &e) != KVS_OK ||
	    kv_cache_set_sparse(gen_kv(g), &sp, &e) != KVS_OK || session_squeeze(c->s, &e) != KVS_OK) {
		fprintf(stderr, "kvscope: %s\n", e.msg);
		return;
	}
	if (sp.mode == ENGINE_SPARSE_SQUEEZED && !session_doc(c->s, NULL))
		fprintf(stderr,
		        "kvscope: squeezed has no document to cluster (:doc FILE loads one); "
		        "attention stays dense\n");
	chat_kv_show(g);
}

/* :doc [FILE|off]: show, load or drop the pinned document. */
static void chat_doc(struct chat_ctx *c, const char *arg)
{
	struct session_doc_info di;
	struct err e;
	bool restarted;

	if (*arg == '\0') {
		if (!session_doc(c->s, &di))
			fprintf(stderr, "doc: none (:doc FILE pins one at the start of a new conversation)\n");
		else
			fprintf(stderr, "doc: %s, %u tokens, %u cached (pinned)%s\n",
			        di.path ? di.path : "(restored)", di.n_tokens, di.n_cached,
			        di.clustered ? ", clustered" : "");
		return;
	}
	if (session_set_doc(c->s, strcmp(arg, "off") == 0 ? NULL : arg, &restarted, &e) != KVS_OK) {
		err_prefix(&e, "%cdoc", c->sigil);
		(void)cli_fail(&e);
		return;
	}
	session_doc(c->s, &di);
	if (di.path == NULL)
		fprintf(stderr, "doc: none from the next conversation on%s\n",
		        restarted ? " (a new one started)" : "");
	else
		fprintf(stderr, "doc: %s, %u tokens, pinned at the start of %s conversation\n", di.path,
		        di.n_tokens, restarted ? "a new" : "the");
}

/* :budget N: the KV budget in tokens (0: every slot). */
static void chat_budget(struct chat_ctx *c, const char *arg)
{
	struct gen *g = session_gen(c->s);
	struct err e;
	char *end;
	unsigned long v = strtoul(arg, &end, 10);
	int rc;

	if (end == arg || *end != '\0' || *arg == '-' || v > UINT32_MAX)
		rc = err_set(&e, KVS_EARG, "%cbudget: expected a number of tokens, e.g. %cbudget 512",
		             c->sigil, c->sigil);
	else
		rc = kv_cache_set_budget(gen_kv(g), (uint32_t)v, &e);
	gen_kv_changed(g);
	if (rc != KVS_OK)
		fprintf(stderr, "kvscope: %s\n", e.msg);
	else
		chat_kv_show(g);
}

/* :kv: the cache's figures. */
static void chat_kv(struct chat_ctx *c, const char *arg)
{
	(void)arg;
	chat_kv_show(session_gen(c->s));
}

/* :new (:reset): a new conversation. */
static void chat_new(struct chat_ctx *c, const char *arg)
{
	(void)arg;
	session_reset(c->s);
	fprintf(stderr, "kvscope: new conversation\n");
}

static void chat_quit(struct chat_ctx *c, const char *arg)
{
	(void)arg;
	c->quit = true;
}

/* :save [TITLE]: start saving this conversation (its exchanges so far
 * first) to --db or the default database; when saving, retitle it. */
static void chat_save(struct chat_ctx *c, const char *title)
{
	struct chat_db *db = c->db;
	int64_t id = session_store_id(c->s);
	struct err e;
	int rc = KVS_OK;
	uint32_t n = session_n_turns(c->s);

	if (!store_available()) {
		fprintf(stderr,
		        "kvscope: :save: the session store was not built (configure found no "
		        "SQLite)\n");
		return;
	}
	if (id != 0) {
		if (*title != '\0')
			rc = store_session_set_title(db->st, id, title, &e);
		if (rc != KVS_OK)
			fprintf(stderr, "kvscope: :save: %s\n", e.msg);
		else if (*title != '\0')
			fprintf(stderr, "saving to %s as session %lld, now titled '%s'\n", store_path(db->st),
			        (long long)id, title);
		else
			fprintf(stderr, "already saving to %s as session %lld\n", store_path(db->st),
			        (long long)id);
		return;
	}
	if (db->st == NULL) {
		char *path = c->o->db ? xstrdup(c->o->db) : store_default_path();
		rc = store_open(&db->st, path, STORE_RW, &e);
		free(path);
	}
	c->o->title = *title ? title : NULL;
	if (rc == KVS_OK)
		rc = chat_db_start(db, c->o, c->s, &e);
	c->o->title = NULL;
	if (rc != KVS_OK) {
		fprintf(stderr, "kvscope: :save: %s\n", e.msg);
		return;
	}
	fprintf(stderr, "saved %u exchange%s to %s as session %lld; the next ones are added\n", n,
	        n == 1 ? "" : "s", store_path(db->st), (long long)session_store_id(c->s));
}

static void chat_help(struct chat_ctx *c, const char *arg);

/* The line chat's commands (':' or '/' before the name). */
static const struct {
	const char *name, *args, *help;
	void (*fn)(struct chat_ctx *c, const char *arg);
} chat_cmds[] = {
	{ "new", "", "start a new conversation (also :reset)", chat_new },
	{ "reset", "", NULL, chat_new },
	{ "policy", "[NAME [k=v ...]]", "show or change the KV retention policy", chat_policy },
	{ "budget", "N", "KV budget in tokens (0: every slot)", chat_budget },
	{ "sparse", "[off|quest|hip|squeezed[:k=v,...]]", "show or change sparse decode attention",
	  chat_sparse },
	{ "doc", "[FILE|off]", "pin a text document at the start of a new conversation", chat_doc },
	{ "kv", "", "the KV cache's figures", chat_kv },
	{ "len", "[120w|200t|150|>800|off]", "length target of the next replies", chat_len },
	{ "save", "[TITLE]", "save this conversation (its exchanges so far and the next ones)",
	  chat_save },
	{ "think", "show|hide", "show or hide a reply's <think> block (qwen3)", chat_think },
	{ "help", "", "this list", chat_help },
	{ "quit", "", "leave (also :exit, Ctrl-D)", chat_quit },
	{ "exit", "", NULL, chat_quit },
};

static void chat_help(struct chat_ctx *c, const char *arg)
{
	(void)c;
	(void)arg;
	fprintf(stderr, "commands (':' or '/' first):\n");
	for (size_t i = 0; i < KVS_ARRAY_LEN(chat_cmds); i++)
		if (chat_cmds[i].help != NULL)
			fprintf(stderr, "  :%s%s%s  %s\n", chat_cmds[i].name, chat_cmds[i].args[0] ? " " : "",
			        chat_cmds[i].args, chat_cmds[i].help);
}

/* Run a ':' (or '/') line; false: not a command line (it is a message). */
static bool chat_command(struct chat_ctx *c, const char *line)
{
	if (line[0] != ':' && line[0] != '/')
		return false;
	size_t n = strcspn(line + 1, " \t");
	const char *arg = line + 1 + n;
	c->sigil = line[0];
	arg += strspn(arg, " \t");
	for (size_t i = 0; i < KVS_ARRAY_LEN(chat_cmds); i++)
		if (strlen(chat_cmds[i].name) == n && strncmp(chat_cmds[i].name, line + 1, n) == 0) {
			if (chat_cmds[i].args[0] == '\0' && *arg != '\0' && chat_cmds[i].fn != chat_quit)
				fprintf(stderr, "kvscope: :%s takes no arguments\n", chat_cmds[i].name);
			else
				chat_cmds[i].fn(c, arg);
			return true;
		}
	fprintf(stderr,
	        "kvscope: unknown command '%.*s'; expected :new, :policy, :budget, :sparse, :doc, "
	        ":kv, :len, :save, :think, :quit or :help\n",
	        (int)n + 1, line);
	return true;
}

/* Replies of up to 512 tokens; a conversation outlives any budget, so
 * the policy is streaming (sinks + recent) unless --policy says otherwise. */
static enum cli_exit cmd_chat_defaults(struct cli_opts *o)
{
	o->max_tokens = 512;
	kv_policy_parse("streaming", &o->gen.kv.policy, NULL);
	return CLI_OK;
}

static enum cli_exit cmd_chat_exec(struct cli_opts *o)
{
	struct chat_db db = { 0 };
	struct session *s = NULL;
	struct gen *g;
	struct lineedit *le = NULL;
	struct err e;
	bool interactive = isatty(0) && isatty(1);
	struct chat_view view = { .hide_think = o->hide_think };
	char *line;
	size_t len;
	enum cli_exit rc;
	struct chat_ctx cc = { .o = o, .db = &db, .view = &view };

	if (o->prompt != NULL || o->prompt_file != NULL || o->raw) {
		rc = cli_usage(&cmd_chat,
		               "chat reads its turns from standard input; --prompt, "
		               "--prompt-file and --raw do not apply");
		goto out;
	}
	if (chat_db_open(&db, o, &e) != KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	if (o->trace_attn || o->trace_every_ms) {
		rc = cli_usage(&cmd_chat,
		               "chat --trace writes memory and cold-tier events; --trace-attn "
		               "and --trace-every apply to generate");
		goto out;
	}
	if (o->trace != NULL && (db.trace = fopen(o->trace, "w")) == NULL) {
		err_set(&e, KVS_EIO, "cannot write the trace file %s: %s", o->trace, strerror(errno));
		rc = cli_fail(&e);
		goto out;
	}
	rc = cli_session_open(o, &s);
	if (rc != CLI_OK)
		goto out;
	view.s = s;
	view.db = &db;
	const struct session_hooks hooks = { .text = chat_text,
		                                 .saved = chat_saved,
		                                 .kv = chat_on_kv,
		                                 .cold = chat_on_cold,
		                                 .progress = chat_progress,
		                                 .notice = chat_notice,
		                                 .ud = &view };
	db.v = gen_vocab(session_gen(s));
	session_set_hooks(s, &hooks);
	if (chat_db_start(&db, o, s, &e) != KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	g = session_gen(s);
	cc.s = s;
	cli_len_apply(o, g);
	le = lineedit_open(interactive);
	if (interactive)
		fprintf(stderr, "kvscope chat: %s on %s/%s, context %u tokens; :help for commands\n",
		        gen_model(g)->name, engine_backend_name(gen_engine(g)),
		        engine_isa_name(gen_engine(g)), gen_n_ctx(g));
	for (;;) {
		line = lineedit_read(le, "> ", &len);
		if (line == NULL) {
			if (interactive)
				fputc('\n', stdout); /* Ctrl-D: the shell's prompt on a line of its own */
			break;
		}
		if (strlen(line) != len) {
			/* C strings end at the NUL: say so rather than send half the line */
			err_set(&e, KVS_EARG,
			        "the line has a NUL byte (at byte %zu); it was not sent: "
			        "expected text",
			        strlen(line));
			(void)cli_fail(&e);
			free(line);
			fputc('\n', stdout); /* its (empty) reply: one line out per line in */
			if (!cli_stdout_flush())
				break;
			continue;
		}
		if (line[0] == '\0') {
			free(line);
			continue;
		}
		lineedit_remember(le, line);
		if (chat_command(&cc, line)) {
			free(line);
			if (cc.quit)
				break;
			continue;
		}
		view.s = s;
		view.in_think = view.skip_nl = false;
		session_set_hooks(s, &hooks);
		int st = session_chat(s, line, &e);
		free(line);
		fputc('\n', stdout);
		if (!cli_stdout_flush())
			break; /* main says why; no more replies for nobody to read */
		if (st != KVS_OK) {
			(void)cli_fail(&e);
			continue;
		}
		const struct session_turn *t = session_turn_at(s, session_n_turns(s) - 1);
		if (t->restarted)
			fprintf(stderr, "kvscope: context full (%u tokens): started a new conversation\n",
			        kv_cache_budget(gen_kv(g)));
		if (interactive || gen_turn(g)->len.unit != LEN_NONE)
			fprintf(stderr, "[%u token%s, %u word%s, %s, %.1f tok/s, KV %u/%u, %s]\n", t->n_reply,
			        t->n_reply == 1 ? "" : "s", t->n_words, t->n_words == 1 ? "" : "s",
			        gen_stop_name(t->stop),
			        t->decode_ms > 0 ? (double)t->n_reply * 1e3 / t->decode_ms : 0.0,
			        kv_cache_n(gen_kv(g)), kv_cache_budget(gen_kv(g)),
			        kv_policy_name(kv_cache_policy(gen_kv(g))));
	}
	rc = cli_stdout_flush() ? CLI_OK : CLI_FAIL;
out:
	lineedit_close(le);
	session_close(s);
	chat_db_close(&db);
	return rc;
}
