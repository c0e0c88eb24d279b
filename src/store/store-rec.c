/*
 * store-rec.c: the recorder: turns, their token rows and the memory events
 * of a session, written as they happen.
 *
 * The recorder copies the KV cache's memory events as they come
 * (store_rec_event) and queues finished turns (store_rec_turn); a commit
 * writes all queued turns with their token rows, memory events and
 * snapshot reference (store-snap.c) in one BEGIN IMMEDIATE ... COMMIT, so a
 * crash leaves a turn either absent or whole. A failed commit rolls back
 * and keeps the queue for the next one.
 *
 * Token rows are keyed by (session, epoch, orig_pos): a cleared cache
 * starts a new epoch, and the rows of the old one are marked evicted. Rows
 * that still match the cache as of the last commit are not rewritten.
 */
#include "store/store-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A copied memory event waiting for its commit. */
struct rec_event {
	enum kv_event_kind kind;
	uint32_t turn; /* turn index during which it happened */
	uint32_t epoch;
	double at;
	enum kv_evict_cause cause;
	char *policy;
	char *fallback;
	uint32_t n_incoming;
	uint32_t n;
	struct kv_tok *toks; /* (n): evicted, or the pinned token */
};

struct rec_turn {
	struct store_turn t; /* strings owned */
	uint32_t epoch;
	int32_t end_pos; /* next_pos when it was queued */
};

struct store_rec {
	struct store *s;
	int64_t id;
	struct kv_cache *kv;
	bool snapshots;
	uint32_t n_turns; /* committed */
	uint32_t epoch;   /* current */
	uint32_t committed_epoch;
	int32_t committed_pos; /* tokens below it (committed_epoch) have rows */
	uint64_t seen_mark;    /* n_seen last observed: a drop means the cache was cleared */
	struct rec_event *ev;
	size_t n_ev, cap_ev;
	struct rec_turn *turns;
	size_t n_pending, cap_turns;
	char snap_sha[65];   /* the snapshot the database refers to ("" none) */
	struct kv_tok *last; /* (n_last) the cache as of the last commit: rows that */
	uint32_t n_last;     /* still match it need no update */
};

int store_rec_open(struct store_rec **out, struct store *s, int64_t id, struct kv_cache *kv,
                   bool snapshots, struct err *e)
{
	sqlite3_stmt *st;
	*out = NULL;
	if (s->ro)
		return err_set(e, KVS_ESTATE, "%s: opened read-only; cannot record", s->path);
	int rc = store_session_row(
	        s,
	        "SELECT epoch, next_pos, (SELECT count(*) FROM turns WHERE session_id "
	        "= ?1), (SELECT sha256 FROM snapshots WHERE session_id = ?1 ORDER BY "
	        "turn DESC LIMIT 1) FROM sessions WHERE id = ?1",
	        id, &st, e);
	if (rc != KVS_OK)
		return rc;
	struct store_rec *rec = xcalloc(1, sizeof *rec);
	rec->s = s;
	rec->id = id;
	rec->kv = kv;
	rec->snapshots = snapshots;
	rec->epoch = rec->committed_epoch = (uint32_t)sqlite3_column_int64(st, 0);
	rec->committed_pos = (int32_t)sqlite3_column_int64(st, 1);
	rec->n_turns = (uint32_t)sqlite3_column_int64(st, 2);
	const unsigned char *sha = sqlite3_column_text(st, 3);
	if (store_is_sha256((const char *)sha)) /* a crafted name is never unlinked */
		snprintf(rec->snap_sha, sizeof rec->snap_sha, "%s", (const char *)sha);
	sqlite3_finalize(st);
	struct kv_stats ks;
	kv_cache_stats(kv, &ks);
	rec->seen_mark = ks.n_seen;
	/* a cache that does not continue the session (a fresh one for an old
	 * session that was not resumed) starts a new epoch */
	if ((int32_t)ks.n_seen < rec->committed_pos || kv_cache_next_pos(kv) < rec->committed_pos) {
		rec->epoch++;
		rec->committed_pos = 0;
	}
	*out = rec;
	return KVS_OK;
}

static void rec_event_free(struct rec_event *ev)
{
	free(ev->policy);
	free(ev->fallback);
	free(ev->toks);
}

static void rec_turn_free(struct rec_turn *t)
{
	free((char *)t->t.user);
	free((char *)t->t.reply);
	free((char *)t->t.stop);
}

void store_rec_free(struct store_rec *r)
{
	if (r == NULL)
		return;
	for (size_t i = 0; i < r->n_ev; i++)
		rec_event_free(&r->ev[i]);
	for (size_t i = 0; i < r->n_pending; i++)
		rec_turn_free(&r->turns[i]);
	free(r->ev);
	free(r->turns);
	free(r->last);
	free(r);
}

/* Notice a cleared cache (its n_seen went back): a new epoch begins. */
static void rec_check_reset(struct store_rec *r, uint64_t n_seen)
{
	if (n_seen < r->seen_mark) {
		r->epoch++;
		struct rec_event ev = { .kind = KV_EVENT_TURN }; /* TURN marks a reset here */
		ev.turn = r->n_turns + (uint32_t)r->n_pending;
		ev.epoch = r->epoch;
		ev.at = store_now();
		if (r->n_ev == r->cap_ev) {
			r->cap_ev = r->cap_ev ? 2 * r->cap_ev : 16;
			r->ev = xreallocarray(r->ev, r->cap_ev, sizeof *r->ev);
		}
		r->ev[r->n_ev++] = ev;
	}
	r->seen_mark = n_seen;
}

void store_rec_event(struct store_rec *r, const struct kv_event *ev)
{
	rec_check_reset(r, ev->stats.n_seen);
	bool pin = ev->kind == KV_EVENT_PIN && ev->tok != NULL;
	bool recall = ev->kind == KV_EVENT_RECALL && ev->n_recalled > 0;
	if (ev->kind != KV_EVENT_EVICT && ev->kind != KV_EVENT_POLICY && !pin && !recall)
		return;
	if (r->n_ev == r->cap_ev) {
		r->cap_ev = r->cap_ev ? 2 * r->cap_ev : 16;
		r->ev = xreallocarray(r->ev, r->cap_ev, sizeof *r->ev);
	}
	struct rec_event *c = &r->ev[r->n_ev++];
	memset(c, 0, sizeof *c);
	c->kind = ev->kind;
	c->turn = r->n_turns + (uint32_t)r->n_pending;
	c->epoch = r->epoch;
	c->at = store_now();
	c->cause = ev->cause;
	c->policy = ev->policy ? xstrdup(ev->policy) : NULL;
	if (ev->kind == KV_EVENT_POLICY) {
		char buf[256];
		free(c->policy);
		c->policy = xstrdup(kv_policy_format(kv_cache_policy(r->kv), buf, sizeof buf));
		c->n_incoming = ev->stats.budget;
	}
	c->fallback = ev->fallback && ev->fallback_why ? xstrdup(ev->fallback_why) : NULL;
	c->n_incoming = ev->kind == KV_EVENT_EVICT ? ev->n_incoming : c->n_incoming;
	if (ev->kind == KV_EVENT_EVICT && ev->n_evicted > 0) {
		c->n = ev->n_evicted;
		c->toks = xmallocarray(c->n, sizeof *c->toks);
		memcpy(c->toks, ev->evicted, c->n * sizeof *c->toks);
	} else if (pin) {
		c->n = 1;
		c->toks = xmalloc(sizeof *c->toks);
		*c->toks = *ev->tok;
	} else if (recall) {
		/* back from the cold tier, at their new positions */
		c->n = ev->n_recalled;
		c->toks = xmallocarray(c->n, sizeof *c->toks);
		memcpy(c->toks, ev->recalled, c->n * sizeof *c->toks);
	}
}

void store_rec_turn(struct store_rec *r, const struct store_turn *t)
{
	struct kv_stats ks;
	kv_cache_stats(r->kv, &ks);
	rec_check_reset(r, ks.n_seen);
	if (r->n_pending == r->cap_turns) {
		r->cap_turns = r->cap_turns ? 2 * r->cap_turns : 4;
		r->turns = xreallocarray(r->turns, r->cap_turns, sizeof *r->turns);
	}
	struct rec_turn *q = &r->turns[r->n_pending++];
	q->t = *t;
	q->t.user = xstrdup(t->user ? t->user : "");
	q->t.reply = xstrdup(t->reply ? t->reply : "");
	q->t.stop = xstrdup(t->stop ? t->stop : "");
	q->epoch = r->epoch;
	q->end_pos = t->end_pos != 0 ? t->end_pos : kv_cache_next_pos(r->kv);
}

uint32_t store_rec_pending(const struct store_rec *r)
{
	return (uint32_t)r->n_pending;
}

uint32_t store_rec_n_turns(const struct store_rec *r)
{
	return r->n_turns + (uint32_t)r->n_pending;
}

/* The pending turn that brought in the token at orig_pos of epoch. */
static uint32_t rec_token_turn(const struct store_rec *r, uint32_t epoch, int32_t orig_pos)
{
	for (size_t i = 0; i < r->n_pending; i++)
		if (r->turns[i].epoch > epoch ||
		    (r->turns[i].epoch == epoch && orig_pos < r->turns[i].end_pos))
			return r->n_turns + (uint32_t)i;
	return r->n_turns + (uint32_t)(r->n_pending ? r->n_pending - 1 : 0);
}

static void bind_float(sqlite3_stmt *st, int i, float v)
{
	if (isnan(v) || isinf(v))
		sqlite3_bind_null(st, i);
	else
		sqlite3_bind_double(st, i, v);
}

/* s as the inside of a JSON string into out (cap >= 6 * strlen(s) + 1:
 * a control byte takes six); returns the bytes written. */
static size_t rec_json_escape(char *out, size_t cap, const char *s)
{
	size_t n = 0;
	for (; *s && n + 7 <= cap; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\') {
			out[n++] = '\\';
			out[n++] = (char)ch;
		} else if (ch < 0x20) {
			n += (size_t)snprintf(out + n, cap - n, "\\u%04x", ch);
		} else {
			out[n++] = (char)ch;
		}
	}
	out[n] = '\0';
	return n;
}

/* The event's detail as JSON (allocated): a policy change's policy and
 * budget, else the list of [orig_pos, token, score] of its tokens. */
static char *rec_detail(const struct rec_event *ev)
{
	size_t cap = 32 + (size_t)ev->n * 48, n = 0;
	char *buf;
	if (ev->kind == KV_EVENT_POLICY) {
		/* sized for the policy text whole, every byte escaped at worst */
		const char *pol = ev->policy ? ev->policy : "";
		cap = 48 + 6 * strlen(pol);
		buf = xmalloc(cap);
		n = (size_t)snprintf(buf, cap, "{\"policy\":\"");
		n += rec_json_escape(buf + n, cap - n, pol);
		snprintf(buf + n, cap - n, "\",\"budget\":%u}", ev->n_incoming);
		return buf;
	}
	buf = xmalloc(cap);
	buf[n++] = '[';
	for (uint32_t i = 0; i < ev->n; i++) {
		const struct kv_tok *t = &ev->toks[i];
		if (isnan(t->score) || isinf(t->score))
			n += (size_t)snprintf(buf + n, cap - n, "%s[%d,%d,null]", i ? "," : "", t->orig_pos,
			                      t->token);
		else
			n += (size_t)snprintf(buf + n, cap - n, "%s[%d,%d,%.6g]", i ? "," : "", t->orig_pos,
			                      t->token, (double)t->score);
	}
	snprintf(buf + n, cap - n, "]");
	return buf;
}

static const char *rec_kind_name(const struct rec_event *ev)
{
	switch (ev->kind) {
	case KV_EVENT_EVICT: return "evict";
	case KV_EVENT_POLICY: return "policy";
	case KV_EVENT_PIN: return ev->n && (ev->toks[0].flags & KV_FLAG_PINNED) ? "pin" : "unpin";
	case KV_EVENT_RECALL: return "recall";
	default: return "reset";
	}
}

enum { SQ_TURN, SQ_TOK, SQ_EVICT, SQ_EVENT, SQ_RESET, SQ_SNAP, SQ_SESSION, SQ_PIN, SQ_N };

static const char *const rec_sql[SQ_N] = {
	[SQ_TURN] = "INSERT INTO turns (session_id, idx, user_text, reply, n_prompt, n_reply, "
	            "prefill_ms, decode_ms, stop, complete, started, committed) "
	            "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
	/* a token in the cache now: new row, or its latest position, flags and score */
	[SQ_TOK] = "INSERT INTO tokens (session_id, epoch, orig_pos, turn, kv_turn, token, role, pos, "
	           "flags, pinned, surprisal, entropy, score, kept) "
	           "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 1) "
	           "ON CONFLICT (session_id, epoch, orig_pos) DO UPDATE SET pos = excluded.pos, "
	           "flags = excluded.flags, pinned = excluded.pinned, score = excluded.score, kept = 1",
	/* an evicted token: new row, or the row marked evicted with its final score */
	[SQ_EVICT] = "INSERT INTO tokens (session_id, epoch, orig_pos, turn, kv_turn, token, role, "
	             "pos, flags, pinned, surprisal, entropy, score, kept, evicted_turn, "
	             "evicted_event) "
	             "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 0, ?14, ?15) "
	             "ON CONFLICT (session_id, epoch, orig_pos) DO UPDATE SET flags = excluded.flags, "
	             "pinned = excluded.pinned, score = excluded.score, kept = 0, "
	             "evicted_turn = excluded.evicted_turn, evicted_event = excluded.evicted_event",
	[SQ_EVENT] = "INSERT INTO memory_events (session_id, turn, at, kind, cause, policy, n_tokens, "
	             "n_incoming, fallback, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
	[SQ_RESET] = "UPDATE tokens SET kept = 0, evicted_turn = ?3, evicted_event = ?4 "
	             "WHERE session_id = ?1 AND epoch < ?2 AND kept",
	[SQ_SNAP] = "INSERT OR REPLACE INTO snapshots (session_id, turn, sha256, n_tokens, bytes, "
	            "created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
	[SQ_SESSION] = "UPDATE sessions SET updated = ?2, epoch = ?3, next_pos = ?4, kv_turn = ?5, "
	               "n_seen = ?6, n_evicted = ?7, n_evictions = ?8, policy = ?9, budget = ?10, "
	               "sparse = ?11 WHERE id = ?1",
	[SQ_PIN] = "UPDATE tokens SET pinned = ?4, flags = ?5 WHERE session_id = ?1 AND epoch = ?2 "
	           "AND orig_pos = ?3",
};

/* Step a prepared statement to completion and reset it. */
static int rec_step(struct store *s, sqlite3_stmt *st, const char *what, struct err *e)
{
	int r = sqlite3_step(st);
	sqlite3_reset(st);
	return r == SQLITE_DONE ? KVS_OK : store_fail(s, r, what, e);
}

/* Bind a token's columns 1..13 for SQ_TOK / SQ_EVICT. */
static void rec_bind_tok(sqlite3_stmt *st, const struct store_rec *r, uint32_t epoch,
                         const struct kv_tok *t)
{
	sqlite3_bind_int64(st, 1, r->id);
	sqlite3_bind_int64(st, 2, epoch);
	sqlite3_bind_int64(st, 3, t->orig_pos);
	sqlite3_bind_int64(st, 4, rec_token_turn(r, epoch, t->orig_pos));
	sqlite3_bind_int64(st, 5, t->turn);
	sqlite3_bind_int64(st, 6, t->token);
	sqlite3_bind_int64(st, 7, t->role);
	sqlite3_bind_int64(st, 8, t->pos);
	sqlite3_bind_int64(st, 9, t->flags);
	sqlite3_bind_int64(st, 10, (t->flags & KV_FLAG_PINNED) != 0);
	bind_float(st, 11, t->surprisal);
	bind_float(st, 12, t->entropy);
	bind_float(st, 13, t->score);
}

/* Everything pending, inside the open transaction. */
static int rec_write(struct store_rec *r, sqlite3_stmt **q, const char *snap_sha,
                     uint64_t snap_bytes, struct err *e)
{
	struct store *s = r->s;
	double now = store_now();
	char sql[160];
	int64_t have = 0;
	/* another kvscope may have resumed the same session and saved turns:
	 * never interleave two conversations in one session */
	snprintf(sql, sizeof sql, "SELECT count(*) FROM turns WHERE session_id = %lld",
	         (long long)r->id);
	int rc = store_int(s, sql, &have, e);
	if (rc == KVS_OK && have != (int64_t)r->n_turns)
		rc = err_set(e, KVS_ESTATE,
		             "%s: session %lld was saved meanwhile by another kvscope (%lld turns, "
		             "this one expected %u); not mixing the two conversations",
		             s->path, (long long)r->id, (long long)have, r->n_turns);
	for (size_t i = 0; i < r->n_pending && rc == KVS_OK; i++) {
		const struct store_turn *t = &r->turns[i].t;
		sqlite3_stmt *st = q[SQ_TURN];
		sqlite3_bind_int64(st, 1, r->id);
		sqlite3_bind_int64(st, 2, r->n_turns + (int64_t)i);
		sqlite3_bind_text(st, 3, t->user, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 4, t->reply, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 5, t->n_prompt);
		sqlite3_bind_int64(st, 6, t->n_reply);
		sqlite3_bind_double(st, 7, t->prefill_ms);
		sqlite3_bind_double(st, 8, t->decode_ms);
		sqlite3_bind_text(st, 9, t->stop, -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 10, t->complete);
		sqlite3_bind_double(st, 11, t->started);
		sqlite3_bind_double(st, 12, now);
		rc = rec_step(s, st, "saving a turn", e);
	}
	/* memory events in order, with the tokens they evicted */
	for (size_t i = 0; i < r->n_ev && rc == KVS_OK; i++) {
		struct rec_event *ev = &r->ev[i];
		sqlite3_stmt *st = q[SQ_EVENT];
		char *detail = rec_detail(ev);
		sqlite3_bind_int64(st, 1, r->id);
		sqlite3_bind_int64(st, 2, ev->turn);
		sqlite3_bind_double(st, 3, ev->at);
		sqlite3_bind_text(st, 4, rec_kind_name(ev), -1, SQLITE_STATIC);
		if (ev->kind == KV_EVENT_EVICT)
			sqlite3_bind_text(st, 5, kv_evict_cause_name(ev->cause), -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(st, 5);
		if (ev->policy)
			sqlite3_bind_text(st, 6, ev->policy, -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(st, 6);
		sqlite3_bind_int64(st, 7, ev->n);
		if (ev->kind == KV_EVENT_EVICT || ev->kind == KV_EVENT_POLICY)
			sqlite3_bind_int64(st, 8, ev->n_incoming);
		else
			sqlite3_bind_null(st, 8);
		if (ev->fallback)
			sqlite3_bind_text(st, 9, ev->fallback, -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(st, 9);
		sqlite3_bind_text(st, 10, detail, -1, SQLITE_TRANSIENT);
		free(detail);
		rc = rec_step(s, st, "saving a memory event", e);
		int64_t evid = sqlite3_last_insert_rowid(s->db);
		if (rc == KVS_OK && ev->kind == KV_EVENT_TURN) {
			st = q[SQ_RESET];
			sqlite3_bind_int64(st, 1, r->id);
			sqlite3_bind_int64(st, 2, ev->epoch);
			sqlite3_bind_int64(st, 3, ev->turn);
			sqlite3_bind_int64(st, 4, evid);
			rc = rec_step(s, st, "marking a cleared cache", e);
		}
		for (uint32_t k = 0; k < ev->n && rc == KVS_OK && ev->kind == KV_EVENT_EVICT; k++) {
			st = q[SQ_EVICT];
			rec_bind_tok(st, r, ev->epoch, &ev->toks[k]);
			sqlite3_bind_int64(st, 14, ev->turn);
			sqlite3_bind_int64(st, 15, evid);
			rc = rec_step(s, st, "saving an evicted token", e);
		}
		if (rc == KVS_OK && ev->kind == KV_EVENT_PIN) {
			st = q[SQ_PIN];
			sqlite3_bind_int64(st, 1, r->id);
			sqlite3_bind_int64(st, 2, ev->epoch);
			sqlite3_bind_int64(st, 3, ev->toks[0].orig_pos);
			sqlite3_bind_int64(st, 4, (ev->toks[0].flags & KV_FLAG_PINNED) != 0);
			sqlite3_bind_int64(st, 5, ev->toks[0].flags);
			rc = rec_step(s, st, "saving a pin", e);
		}
	}
	/* the cache as it is now: new tokens, and committed ones that changed */
	uint32_t n = kv_cache_n(r->kv), j = 0;
	const struct kv_tok *toks = kv_cache_toks(r->kv);
	bool same_epoch = r->epoch == r->committed_epoch;
	for (uint32_t i = 0; i < n && rc == KVS_OK; i++) {
		const struct kv_tok *t = &toks[i];
		if (same_epoch && t->orig_pos < r->committed_pos) {
			while (j < r->n_last && r->last[j].orig_pos < t->orig_pos)
				j++;
			const struct kv_tok *o = j < r->n_last ? &r->last[j] : NULL;
			if (o && o->orig_pos == t->orig_pos && o->pos == t->pos && o->flags == t->flags &&
			    (memcmp(&o->score, &t->score, sizeof t->score) == 0 ||
			     (isnan(o->score) && isnan(t->score))))
				continue;
		}
		rec_bind_tok(q[SQ_TOK], r, r->epoch, t);
		rc = rec_step(s, q[SQ_TOK], "saving a token", e);
	}
	uint32_t last = r->n_turns + (uint32_t)r->n_pending - 1;
	if (rc == KVS_OK && snap_sha != NULL) {
		sqlite3_stmt *st = q[SQ_SNAP];
		sqlite3_bind_int64(st, 1, r->id);
		sqlite3_bind_int64(st, 2, last);
		sqlite3_bind_text(st, 3, snap_sha, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 4, n);
		sqlite3_bind_int64(st, 5, (int64_t)snap_bytes);
		sqlite3_bind_double(st, 6, now);
		rc = rec_step(s, st, "saving a snapshot reference", e);
	}
	if (rc == KVS_OK) {
		/* one snapshot per session: the newest (or none when it failed) */
		snprintf(sql, sizeof sql, "DELETE FROM snapshots WHERE session_id = %lld AND turn <> %u",
		         (long long)r->id, snap_sha ? last : UINT32_MAX);
		rc = store_exec(s, sql, "dropping an old snapshot reference", e);
	}
	if (rc == KVS_OK) {
		struct kv_stats ks;
		kv_cache_stats(r->kv, &ks);
		sqlite3_stmt *st = q[SQ_SESSION];
		sqlite3_bind_int64(st, 1, r->id);
		sqlite3_bind_double(st, 2, now);
		sqlite3_bind_int64(st, 3, r->epoch);
		sqlite3_bind_int64(st, 4, kv_cache_next_pos(r->kv));
		sqlite3_bind_int64(st, 5, kv_cache_turn(r->kv));
		sqlite3_bind_int64(st, 6, (int64_t)ks.n_seen);
		sqlite3_bind_int64(st, 7, (int64_t)ks.n_evicted);
		sqlite3_bind_int64(st, 8, ks.n_evictions);
		char pol[256]; /* a /policy or /budget change applies on resume too */
		sqlite3_bind_text(st, 9, kv_policy_format(kv_cache_policy(r->kv), pol, sizeof pol), -1,
		                  SQLITE_TRANSIENT);
		sqlite3_bind_int64(st, 10, kv_cache_budget(r->kv));
		char sp[256]; /* so is a :sparse change */
		sqlite3_bind_text(st, 11, engine_sparse_format(kv_cache_sparse(r->kv), sp, sizeof sp), -1,
		                  SQLITE_TRANSIENT);
		rc = rec_step(s, st, "updating the session", e);
	}
	return rc;
}

int store_rec_commit(struct store_rec *r, struct err *e)
{
	struct store *s = r->s;
	char sha[65] = "";
	uint64_t bytes = 0;
	bool snap = false;
	if (r->n_pending == 0)
		return KVS_OK;
	if (r->snapshots && kv_cache_n(r->kv) > 0) {
		char model_sha[65];
		struct err se;
		sqlite3_stmt *st;
		model_sha[0] = '\0';
		if (store_prepare(s, "SELECT model_sha256 FROM sessions WHERE id = ?", &st, &se) ==
		    KVS_OK) {
			sqlite3_bind_int64(st, 1, r->id);
			if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
				snprintf(model_sha, sizeof model_sha, "%s",
				         (const char *)sqlite3_column_text(st, 0));
			sqlite3_finalize(st);
		}
		if (strlen(model_sha) != 64)
			memset(model_sha, '0', 64), model_sha[64] = '\0';
		int src = store_snap_save(s, r->kv, model_sha, sha, &bytes, &se);
		snap = src == KVS_OK;
		if (!snap && src != KVS_EUNSUPPORTED)
			log_warn("KV snapshot not written (%s); resuming will recompute the cache", se.msg);
	}
	sqlite3_stmt *q[SQ_N] = { 0 };
	int rc = KVS_OK;
	for (int i = 0; i < SQ_N && rc == KVS_OK; i++)
		rc = store_prepare(s, rec_sql[i], &q[i], e);
	if (rc == KVS_OK)
		rc = store_exec(s, "BEGIN IMMEDIATE", "saving the turn", e);
	if (rc == KVS_OK) {
		rc = rec_write(r, q, snap ? sha : NULL, bytes, e);
		if (rc == KVS_OK)
			rc = store_exec(s, "COMMIT", "saving the turn", e);
		if (rc != KVS_OK)
			sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	}
	for (int i = 0; i < SQ_N; i++)
		sqlite3_finalize(q[i]);
	if (rc != KVS_OK) {
		if (snap && strcmp(sha, r->snap_sha) != 0)
			store_snap_unlink_unused(s, sha);
		err_prefix(e, "turn not saved (kept in memory; the next turn retries)");
		return rc;
	}
	char old[65];
	memcpy(old, r->snap_sha, sizeof old);
	memcpy(r->snap_sha, snap ? sha : "", snap ? 65 : 1);
	if (old[0] && strcmp(old, r->snap_sha) != 0)
		store_snap_unlink_unused(s, old);
	r->n_turns += (uint32_t)r->n_pending;
	for (size_t i = 0; i < r->n_pending; i++)
		rec_turn_free(&r->turns[i]);
	r->n_pending = 0;
	for (size_t i = 0; i < r->n_ev; i++)
		rec_event_free(&r->ev[i]);
	r->n_ev = 0;
	r->committed_epoch = r->epoch;
	r->committed_pos = kv_cache_next_pos(r->kv);
	r->n_last = kv_cache_n(r->kv);
	r->last = xreallocarray(r->last, r->n_last ? r->n_last : 1, sizeof *r->last);
	memcpy(r->last, kv_cache_toks(r->kv), r->n_last * sizeof *r->last);
	return KVS_OK;
}

/* -------------------------------------------------------------- reading */

int store_turn_text(struct store *s, int64_t id, uint32_t i, char **user, char **reply,
                    struct err *e)
{
	sqlite3_stmt *st;
	*user = *reply = NULL;
	int rc = store_prepare(s, "SELECT user_text, reply FROM turns WHERE session_id = ? AND idx = ?",
	                       &st, e);
	if (rc != KVS_OK)
		return rc;
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_int64(st, 2, i);
	int r = sqlite3_step(st);
	if (r == SQLITE_ROW) {
		*user = store_col_str(st, 0);
		*reply = store_col_str(st, 1);
	} else {
		rc = r == SQLITE_DONE
		        ? err_set(e, KVS_ENOTFOUND, "session %lld has no turn %u", (long long)id, i)
		        : store_fail(s, r, "reading a turn", e);
	}
	sqlite3_finalize(st);
	return rc;
}
