/*
 * cmd-chat.c: `kvscope chat`, a plain line-mode chat. Each input line is one
 * user turn; the reply streams to stdout and ends with a newline. The
 * conversation stays in the KV cache between turns, so only the new turn is
 * fed. On a terminal there is a prompt and libedit line editing; from a pipe
 * there is no prompt, one reply per line, for scripting. Lines starting with
 * '/' are commands: /reset, /quit, /len (see /help). With a length target
 * (--target-words N, or /len 120w, /len 200t, /len 150, /len off) every
 * reply is steered into the target window (app/lenctl.c) and each user line
 * gets Ruler's sentence asking for the length, unless --no-length-prompt;
 * a status line on stderr then gives the words and the stop reason.
 *
 * With --db, --save, --title or --resume the conversation is saved (store.h,
 * through the session): each finished exchange commits with its token rows,
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
	        OPTG_DB | OPTG_SAVE | OPTG_LEN,
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
};

/* Open the database when saving was asked for; when resuming, take the
 * session's model, policy, budget, context and system prompt unless given. */
static int chat_db_open(struct chat_db *db, struct cli_opts *o, struct err *e)
{
	struct store_session ss;
	if (o->db == NULL && o->resume == NULL && o->title == NULL && !o->save)
		return KVS_OK;
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
		                        .snapshots = true };
	if (rc == KVS_OK && db->id != 0) {
		rc = session_resume(s, &ss, &info, e);
		if (rc == KVS_OK && info.from_snapshot)
			fprintf(stderr, "kvscope: resumed session %lld: %u tokens from the KV snapshot\n",
			        (long long)db->id, info.n_tokens);
		else if (rc == KVS_OK)
			fprintf(stderr, "kvscope: resumed session %lld: %u tokens recomputed (%s)\n",
			        (long long)db->id, info.n_tokens, info.why);
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
 * reply with <think>...</think>; /think hide drops that block from the
 * screen (the cache keeps it, as the model wrote it). */
struct chat_view {
	struct session *s;
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

/* /len [SPEC]: show or set the length target of the next replies. */
static void chat_len_command(struct gen *g, const char *line, bool instruct)
{
	const char *spec = line + 4 + strspn(line + 4, " ");
	struct len_target t = gen_turn(g)->len;
	struct err e;
	char buf[96];

	if (*spec != '\0' && len_target_parse(spec, &t, &e) != KVS_OK) {
		fprintf(stderr, "kvscope: /len: %s\n", e.msg);
		return;
	}
	t.instruct = instruct;
	gen_set_length_target(g, &t);
	fprintf(stderr, "length target: %s\n", len_target_format(&t, buf, sizeof buf));
}

/* /policy NAME [k=v ...], /budget N and /kv: change or show the KV cache. */
static void chat_kv_command(struct gen *g, const char *line)
{
	struct kv_cache *kv = gen_kv(g);
	struct err e;
	char buf[256];
	struct kv_stats st;
	int rc = KVS_OK;

	if (strncmp(line, "/policy", 7) == 0 && (line[7] == ' ' || line[7] == '\0')) {
		struct kv_policy p;
		const char *spec = line + 7 + strspn(line + 7, " ");
		if (*spec == '\0') {
			fprintf(stderr, "policy: %s\n", kv_policy_format(kv_cache_policy(kv), buf, sizeof buf));
			return;
		}
		rc = kv_policy_parse(spec, &p, &e);
		if (rc == KVS_OK)
			rc = kv_cache_set_policy(kv, &p, &e);
	} else if (strncmp(line, "/budget", 7) == 0 && (line[7] == ' ' || line[7] == '\0')) {
		char *end;
		unsigned long v = strtoul(line + 7, &end, 10);
		if (end == line + 7 || *end != '\0' || v > UINT32_MAX)
			rc = err_set(&e, KVS_EARG, "/budget: expected a number of tokens, e.g. /budget 512");
		else
			rc = kv_cache_set_budget(kv, (uint32_t)v, &e);
	}
	gen_kv_changed(g);
	if (rc != KVS_OK) {
		fprintf(stderr, "kvscope: %s\n", e.msg);
		return;
	}
	kv_cache_stats(kv, &st);
	fprintf(stderr,
	        "KV %s, budget %u: %u cached (sink %u, key %u, recent %u, pinned %u), %llu evicted "
	        "in %u rounds; %.1f MiB (%.1f KiB per layer), peak %.1f MiB\n",
	        kv_policy_format(kv_cache_policy(kv), buf, sizeof buf), st.budget, st.n_cached,
	        st.n_sink, st.n_key, st.n_recent, st.n_pinned, (unsigned long long)st.n_evicted,
	        st.n_evictions, (double)st.bytes / 1048576.0, (double)st.bytes_per_layer / 1024.0,
	        (double)st.bytes_peak / 1048576.0);
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
	rc = cli_session_open(o, &s);
	if (rc != CLI_OK)
		goto out;
	if (chat_db_start(&db, o, s, &e) != KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	g = session_gen(s);
	cli_len_apply(o, g);
	le = lineedit_open(interactive);
	if (interactive)
		fprintf(stderr, "kvscope chat: %s on %s/%s, context %u tokens; /help for commands\n",
		        gen_model(g)->name, engine_backend_name(gen_engine(g)),
		        engine_isa_name(gen_engine(g)), gen_n_ctx(g));
	while ((line = lineedit_read(le, "> ", &len)) != NULL) {
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
		if (line[0] == '/') {
			bool quit = strcmp(line, "/quit") == 0 || strcmp(line, "/exit") == 0;
			if (strcmp(line, "/reset") == 0) {
				session_reset(s);
				fprintf(stderr, "kvscope: new conversation\n");
			} else if (strcmp(line, "/help") == 0) {
				fprintf(stderr,
				        "commands: /reset (new conversation), /policy NAME [k=v ...], "
				        "/budget N, /kv (cache statistics), /len [120w|200t|150|>800|off] "
				        "(length target), /think show|hide (a reply's thinking block), "
				        "/quit\n");
			} else if (strcmp(line, "/think show") == 0 || strcmp(line, "/think hide") == 0) {
				view.hide_think = line[7] == 'h';
				fprintf(stderr, "thinking blocks: %s\n", view.hide_think ? "hidden" : "shown");
			} else if (strncmp(line, "/len", 4) == 0 && (line[4] == ' ' || line[4] == '\0')) {
				chat_len_command(g, line, !o->no_len_prompt);
			} else if (strncmp(line, "/policy", 7) == 0 || strncmp(line, "/budget", 7) == 0 ||
			           strcmp(line, "/kv") == 0) {
				chat_kv_command(g, line);
			} else if (!quit) {
				fprintf(stderr,
				        "kvscope: unknown command '%s'; expected /reset, /policy, /budget, /kv, "
				        "/len, /think show|hide, /quit or /help\n",
				        line);
			}
			free(line);
			if (quit)
				break;
			continue;
		}
		view.s = s;
		view.in_think = view.skip_nl = false;
		session_set_hooks(
		        s, &(struct session_hooks){ .text = chat_text, .saved = chat_saved, .ud = &view });
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
			fprintf(stderr, "[%u tokens, %u words, %s, %.1f tok/s, KV %u/%u, %s]\n", t->n_reply,
			        t->n_words, gen_stop_name(t->stop),
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
