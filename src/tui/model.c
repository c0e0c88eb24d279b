/*
 * model.c: the workbench's view model, a plain struct that the worker's
 * events update and the panes read.
 *
 * The chat is a list of messages; a reply is a list of spans, one per
 * token, each with its surprisal so the pane can tint it. The dialogue's
 * tokens are indexed by original position (kv_tok.orig_pos): snapshots of
 * the cache (sent by the worker after the prompt is fed and after every
 * command) say which are cached and with what flags and scores, reply
 * tokens arrive one by one, eviction events mark the ones that left with
 * their final score and the cause. A cache clear (new conversation)
 * shows up as a snapshot whose next position went backwards, and starts
 * the token list over. Resuming a saved session replaces the chat with
 * its transcript (tui_replay): the store's texts of its last turns, shown
 * as the live exchanges were but marked replayed, so no token ever streams
 * into them, and a separator line before the new exchanges. Step events keep the last TUI_STEP_HISTORY
 * attention snapshots in a ring, so a past query token can be selected;
 * each keeps the positions and tokens of its columns as the cache held
 * them then, so its keys are named right after the cache has changed.
 * Nothing here knows about curses or the worker thread.
 */
#include "tui/tui-int.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tui_init(struct tui *t)
{
	memset(t, 0, sizeof *t);
	t->sel_tok = -1;
	t->evsum.msg = -1;
	t->chat_hit = -1;
	t->theme = tui_theme_at(0);
	snprintf(t->plugins, sizeof t->plugins, "plugins: none");
	snprintf(t->status, sizeof t->status, "%s", TUI_HINT);
}

static void tui_step_free(struct tui_step *s)
{
	free(s->attn);
	free(s->heads);
	free(s->key_pos);
	free(s->key_tok);
	free(s->sel);
	memset(s, 0, sizeof *s);
}

/* Forget every chat message. */
static void tui_msgs_clear(struct tui *t)
{
	for (uint32_t i = 0; i < t->n_msgs; i++) {
		for (uint32_t j = 0; j < t->msgs[i].n_spans; j++)
			free(t->msgs[i].spans[j].text);
		free(t->msgs[i].spans);
	}
	t->n_msgs = 0;
	t->chat_scroll = 0;
	t->chat_hit = -1;
	memset(&t->evsum, 0, sizeof t->evsum);
	t->evsum.msg = -1;
}

void tui_free(struct tui *t)
{
	tui_msgs_clear(t);
	free(t->msgs);
	free(t->toks);
	free(t->hits);
	free(t->yank);
	free(t->grid.pos);
	compare_view_free(t->cmp);
	tui_sparsity_free(t);
	tui_heads_free(t);
	for (int i = 0; i < TUI_STEP_HISTORY; i++)
		tui_step_free(&t->steps[i]);
	memset(t, 0, sizeof *t);
}

void tui_status(struct tui *t, bool err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(t->status, sizeof t->status, fmt, ap);
	va_end(ap);
	/* one line: a message never spills into the panes */
	for (char *p = t->status; *p; p++)
		if (*p == '\n' || *p == '\r' || *p == '\t')
			*p = ' ';
	t->status_err = err;
}

static void tui_span_add(struct tui_msg *m, const char *text, size_t len, float surprisal)
{
	if (m->n_spans == m->cap_spans) {
		m->cap_spans = m->cap_spans ? m->cap_spans * 2 : 16;
		m->spans = xreallocarray(m->spans, m->cap_spans, sizeof *m->spans);
	}
	m->spans[m->n_spans].text = xmalloc(len + 1);
	memcpy(m->spans[m->n_spans].text, text, len);
	m->spans[m->n_spans].text[len] = '\0';
	m->spans[m->n_spans].surprisal = surprisal;
	m->n_spans++;
}

struct tui_msg *tui_msg_add(struct tui *t, enum tui_msg_kind kind, const char *text)
{
	struct tui_msg *m;

	if (t->n_msgs == t->cap_msgs) {
		t->cap_msgs = t->cap_msgs ? t->cap_msgs * 2 : 32;
		t->msgs = xreallocarray(t->msgs, t->cap_msgs, sizeof *t->msgs);
	}
	m = &t->msgs[t->n_msgs++];
	memset(m, 0, sizeof *m);
	m->kind = kind;
	if (text != NULL)
		tui_span_add(m, text, strlen(text), NAN);
	return m;
}

void tui_replay(struct tui *t, const struct session_recap *r, int status, const char *msg)
{
	char buf[320];

	tui_msgs_clear(t);
	if (r->system != NULL && r->system[0] != '\0')
		tui_msg_add(t, MSG_SYSTEM, r->system);
	if (r->first > 0) {
		snprintf(buf, sizeof buf,
		         "%u earlier turn%s not shown ('kvscope sessions export %lld' has them all)",
		         r->first, r->first == 1 ? "" : "s", (long long)r->id);
		tui_msg_add(t, MSG_INFO, buf);
	}
	for (uint32_t i = 0; i < r->n; i++) {
		tui_msg_add(t, MSG_USER, r->turns[i].user ? r->turns[i].user : "")->replayed = true;
		tui_msg_add(t, MSG_ASSISTANT, r->turns[i].reply ? r->turns[i].reply : "")->replayed = true;
	}
	if (status != KVS_OK) {
		snprintf(buf, sizeof buf, "the transcript could not be read: %s", msg ? msg : "");
		tui_msg_add(t, MSG_INFO, buf);
	}
	tui_msg_add(t, MSG_RULE, session_recap_line(r, buf, sizeof buf));
}

void tui_piece(const struct tui *t, int32_t token, char *out, size_t cap)
{
	char buf[64];
	size_t n = 0;

	if (cap == 0)
		return;
	if (t->vocab != NULL)
		n = vocab_piece(t->vocab, token, true, buf, sizeof buf - 1);
	else
		n = (size_t)snprintf(buf, sizeof buf, "#%d", token);
	if (n > sizeof buf - 1)
		n = sizeof buf - 1;
	n = utf8_complete_prefix((const uint8_t *)buf, KVS_MIN(n, cap - 1));
	memcpy(out, buf, n);
	out[n] = '\0';
}

/* The token at original position pos (grown as needed). */
static struct tui_tok *tui_tok_at(struct tui *t, int32_t pos)
{
	if (pos < 0 || pos > (1 << 26))
		return NULL;
	if ((uint32_t)pos >= t->cap_toks) {
		uint32_t cap = t->cap_toks ? t->cap_toks : 256;
		while (cap <= (uint32_t)pos)
			cap *= 2;
		t->toks = xreallocarray(t->toks, cap, sizeof *t->toks);
		memset(t->toks + t->cap_toks, 0, (cap - t->cap_toks) * sizeof *t->toks);
		t->cap_toks = cap;
	}
	if ((uint32_t)pos >= t->n_toks)
		t->n_toks = (uint32_t)pos + 1;
	return &t->toks[pos];
}

/* Record what the cache says of one token (its piece from the vocab). */
static struct tui_tok *tui_tok_update(struct tui *t, const struct kv_tok *k)
{
	struct tui_tok *x = tui_tok_at(t, k->orig_pos);

	if (x == NULL)
		return NULL;
	if (!x->known || x->t.token != k->token)
		tui_piece(t, k->token, x->text, sizeof x->text);
	x->t = *k;
	x->known = true;
	return x;
}

/* Forget the dialogue's tokens (the cache was cleared). */
static void tui_toks_reset(struct tui *t)
{
	if (t->toks != NULL)
		memset(t->toks, 0, t->cap_toks * sizeof *t->toks);
	t->n_toks = 0;
	t->sel_tok = -1;
	t->n_spark = 0; /* the sparklines start over with the conversation */
}

static void tui_spark_push(struct tui *t, float cache, float tps)
{
	if (t->n_spark == TUI_SPARK_N) {
		memmove(t->spark_cache, t->spark_cache + 1, (TUI_SPARK_N - 1) * sizeof(float));
		memmove(t->spark_tps, t->spark_tps + 1, (TUI_SPARK_N - 1) * sizeof(float));
		t->n_spark--;
	}
	t->spark_cache[t->n_spark] = cache;
	t->spark_tps[t->n_spark] = tps;
	t->n_spark++;
}

/* The reply being streamed (the last assistant message), or NULL. */
static struct tui_msg *tui_reply(struct tui *t)
{
	if (t->n_msgs > 0 && t->msgs[t->n_msgs - 1].kind == MSG_ASSISTANT &&
	    !t->msgs[t->n_msgs - 1].replayed)
		return &t->msgs[t->n_msgs - 1];
	for (uint32_t i = t->n_msgs; i-- > 0;) {
		if (t->msgs[i].kind == MSG_ASSISTANT)
			return t->msgs[i].stop[0] == '\0' && !t->msgs[i].replayed ? &t->msgs[i] : NULL;
		if (t->msgs[i].kind == MSG_USER)
			return NULL;
	}
	return NULL;
}

/* Insert a message of kind at index i (later ones move down); returns it. */
static struct tui_msg *tui_msg_insert(struct tui *t, uint32_t i, enum tui_msg_kind kind)
{
	struct tui_msg m;

	tui_msg_add(t, kind, NULL);
	m = t->msgs[t->n_msgs - 1];
	memmove(&t->msgs[i + 1], &t->msgs[i], (t->n_msgs - 1 - i) * sizeof *t->msgs);
	t->msgs[i] = m;
	if (t->chat_hit >= (int32_t)i)
		t->chat_hit++; /* a search hit stays on its message */
	return &t->msgs[i];
}

/* A line about the session (a log line, say) while the chat goes on:
 * before the reply being streamed, so that the reply stays the last thing
 * in the pane, else after the last message. */
struct tui_msg *tui_msg_note(struct tui *t, const char *text)
{
	struct tui_msg *reply = tui_reply(t), *m;

	if (reply == NULL)
		return tui_msg_add(t, MSG_INFO, text);
	m = tui_msg_insert(t, (uint32_t)(reply - t->msgs), MSG_INFO);
	tui_span_add(m, text, strlen(text), NAN);
	if (t->evsum.msg >= (int32_t)(m - t->msgs))
		t->evsum.msg++; /* the eviction summary moved down with the reply */
	return m;
}

/* "s" unless n is 1. */
static const char *tui_plural(uint32_t n)
{
	return n == 1 ? "" : "s";
}

/* Close the open eviction summary: the next round starts a new line. */
static void tui_evict_close(struct tui *t)
{
	memset(&t->evsum, 0, sizeof t->evsum);
	t->evsum.msg = -1;
}

/* Fold an eviction round into the chat's one summary line ("evicted 212
 * tokens from turns 3-5 in 14 rounds (sirllm, budget 512); system prompt
 * kept"): during an exchange it sits between the user's message and the
 * reply, so that the reply stays the last thing in the pane however many
 * decode steps evict; between exchanges it follows the last message and
 * takes the later rounds while nothing else is said. The details of each
 * token are in the retention strip and the KV pane. */
static void tui_evict_banner(struct tui *t, const struct kv_event *ev)
{
	struct tui_evict_sum *sm = &t->evsum;
	struct tui_msg *reply = tui_reply(t), *m;
	char buf[256];

	if (reply != NULL && reply->stop[0] != '\0')
		reply = NULL; /* ended: the rounds come after it */

	if (sm->msg >= 0 &&
	    ((uint32_t)sm->msg >= t->n_msgs || t->msgs[sm->msg].kind != MSG_BANNER ||
	     (reply == NULL && (uint32_t)sm->msg != t->n_msgs - 1)))
		tui_evict_close(t); /* what it counted is no longer where it was */
	if (sm->msg < 0) {
		tui_evict_close(t);
		sm->lo = UINT32_MAX;
		if (reply != NULL) {
			uint32_t at = (uint32_t)(reply - t->msgs);
			tui_msg_insert(t, at, MSG_BANNER);
			sm->msg = (int32_t)at;
		} else {
			tui_msg_add(t, MSG_BANNER, NULL);
			sm->msg = (int32_t)t->n_msgs - 1;
		}
	}
	for (uint32_t i = 0; i < ev->n_evicted; i++) {
		sm->lo = KVS_MIN(sm->lo, ev->evicted[i].turn);
		sm->hi = KVS_MAX(sm->hi, ev->evicted[i].turn);
		sm->n_sys += ev->evicted[i].role == KV_ROLE_SYSTEM;
	}
	sm->n += ev->n_evicted;
	sm->rounds++;
	sm->budget = ev->stats.budget;
	sm->fallback |= ev->fallback;
	snprintf(sm->policy, sizeof sm->policy, "%s", ev->policy ? ev->policy : "?");
	int k = sm->lo == sm->hi ? snprintf(buf, sizeof buf, "evicted %u token%s from turn %u", sm->n,
	                                    tui_plural(sm->n), sm->lo)
	                         : snprintf(buf, sizeof buf, "evicted %u token%s from turns %u-%u",
	                                    sm->n, tui_plural(sm->n), sm->lo, sm->hi);
	snprintf(buf + k, sizeof buf - (size_t)k, " in %u round%s (%s, budget %u)%s%s", sm->rounds,
	         tui_plural(sm->rounds), sm->policy, sm->budget,
	         sm->n_sys ? "; system prompt partly evicted" : "; system prompt kept",
	         sm->fallback ? "; score provider failed, built-in policy used" : "");
	m = &t->msgs[sm->msg];
	for (uint32_t j = 0; j < m->n_spans; j++)
		free(m->spans[j].text);
	m->n_spans = 0;
	tui_span_add(m, buf, strlen(buf), NAN);
}

/* Keep the ring's attention rows under TUI_STEP_BYTES: older steps keep
 * their head summaries and lose their rows (long contexts make rows big). */
static void tui_steps_trim(struct tui *t)
{
	uint32_t have = KVS_MIN(t->n_steps, (uint32_t)TUI_STEP_HISTORY);
	size_t bytes = 0;

	for (uint32_t back = 0; back < have; back++) {
		struct tui_step *s = &t->steps[(t->n_steps - 1 - back) % TUI_STEP_HISTORY];
		size_t b = (size_t)s->n_layer * s->n_head * s->n_cached * sizeof(float);
		if (s->attn == NULL)
			continue;
		if (back > 0 && bytes + b > TUI_STEP_BYTES) {
			free(s->attn);
			s->attn = NULL;
			continue;
		}
		bytes += b;
	}
}

/* A KV event; a step's key labels (key_pos, key_tok) move into the ring. */
static void tui_apply_kv(struct tui *t, struct kv_event *ev, int32_t *key_pos, int32_t *key_tok,
                         double now_ms)
{
	t->stats = ev->stats;
	switch (ev->kind) {
	case KV_EVENT_STEP: {
		if (!tui_sparsity_take(t, ev)) { /* between shadows: the choice alone */
			if (ev->tok != NULL)
				tui_tok_update(t, ev->tok);
			free(key_pos);
			free(key_tok);
			tui_spark_push(t, (float)ev->stats.n_cached, t->busy ? (float)t->decode_tps : 0.0f);
			break;
		}
		struct tui_step *s = &t->steps[t->n_steps % TUI_STEP_HISTORY];
		tui_step_free(s);
		s->step = ev->step;
		if (ev->tok != NULL) {
			s->query = *ev->tok;
			tui_tok_update(t, ev->tok);
			if (t->toks != NULL && ev->tok->orig_pos >= 0 &&
			    (uint32_t)ev->tok->orig_pos < t->n_toks)
				t->toks[ev->tok->orig_pos].cached = true;
		}
		s->n_layer = ev->n_layer;
		s->n_head = ev->n_head;
		s->n_cached = ev->n_cached;
		/* the event's arrays move into the ring */
		s->attn = (float *)ev->attn;
		s->heads = (struct kv_head_summary *)ev->heads;
		ev->attn = NULL;
		ev->heads = NULL;
		s->key_pos = key_pos;
		s->key_tok = key_tok;
		tui_sparsity_step(t, s);
		t->n_steps++;
		/* a past step on show stays on show */
		if (t->step_back > 0 && t->step_back + 1 < TUI_STEP_HISTORY)
			t->step_back++;
		tui_steps_trim(t);
		if (t->n_layer == 0) {
			t->n_layer = ev->n_layer;
			t->n_head = ev->n_head;
		}
		tui_spark_push(t, (float)ev->stats.n_cached, t->busy ? (float)t->decode_tps : 0.0f);
		break;
	}
	case KV_EVENT_EVICT:
		for (uint32_t i = 0; i < ev->n_evicted; i++) {
			struct tui_tok *x = tui_tok_update(t, &ev->evicted[i]);
			if (x == NULL)
				continue;
			x->cached = false;
			x->evicted = true;
			x->evict_cause = (uint8_t)ev->cause;
			snprintf(x->evict_policy, sizeof x->evict_policy, "%s", ev->policy ? ev->policy : "");
		}
		t->n_evicted_total += ev->n_evicted;
		if (ev->n_evicted > 0)
			tui_evict_banner(t, ev);
		break;
	case KV_EVENT_RECALL:
		/* back from the cold tier: cached again, no longer marked evicted */
		for (uint32_t i = 0; i < ev->n_recalled; i++) {
			struct tui_tok *x = tui_tok_update(t, &ev->recalled[i]);
			if (x == NULL)
				continue;
			x->cached = true;
			x->evicted = false;
		}
		break;
	case KV_EVENT_POLICY:
	case KV_EVENT_TURN:
	case KV_EVENT_PIN:
		/* the snapshot that follows every command carries their effect */
		break;
	}
	(void)now_ms;
}

static void tui_apply_snapshot(struct tui *t, const struct worker_event *ev)
{
	if ((uint32_t)ev->next_pos < t->n_toks || ev->n_toks == 0)
		tui_toks_reset(t);
	for (uint32_t i = 0; i < t->n_toks; i++)
		t->toks[i].cached = false;
	for (uint32_t i = 0; i < ev->n_toks; i++) {
		struct tui_tok *x = tui_tok_update(t, &ev->toks[i]);
		if (x != NULL) {
			x->cached = true;
			x->evicted = false;
		}
	}
	for (uint32_t i = 0; i < t->n_toks; i++)
		if (t->toks[i].known && !t->toks[i].cached)
			t->toks[i].evicted = true;
	t->stats = ev->stats;
	tui_heads_snapshot(t, ev);
	snprintf(t->policy, sizeof t->policy, "%s", ev->policy);
	t->n_unsaved = ev->n_unsaved;
	t->saving = ev->saving;
}

void tui_apply(struct tui *t, const struct worker_event *cev, double now_ms)
{
	struct worker_event *ev = (struct worker_event *)cev;
	struct tui_msg *m;

	switch (ev->kind) {
	case WORKER_EV_TURN_START:
		tui_evict_close(t);
		tui_msg_add(t, MSG_USER, ev->user ? ev->user : "");
		tui_msg_add(t, MSG_ASSISTANT, NULL);
		t->busy = true;
		t->turn_t0_ms = now_ms;
		t->first_tok_ms = 0;
		t->turn_tokens = 0;
		t->turn_words = 0;
		t->last_stop[0] = '\0';
		if (t->chat_hit < 0)
			t->chat_scroll = 0; /* a search hit being read stays */
		t->reply_len = t->len;  /* what this reply is judged by */
		break;
	case WORKER_EV_TOKEN:
		m = tui_reply(t);
		if (t->turn_tokens == 0)
			t->first_tok_ms = now_ms;
		t->turn_tokens++;
		if (t->turn_tokens > 1 && now_ms > t->first_tok_ms)
			t->decode_tps = (t->turn_tokens - 1) * 1e3 / (now_ms - t->first_tok_ms);
		if (ev->token.meta != NULL && ev->token.meta->orig_pos >= 0) {
			struct tui_tok *x = tui_tok_update(t, ev->token.meta);
			if (x != NULL)
				x->cached = true;
		}
		if (m != NULL && !ev->token.eog && ev->token.len > 0) {
			tui_span_add(m, ev->token.text, ev->token.len,
			             ev->token.meta ? ev->token.meta->surprisal : NAN);
			/* words so far: count on the whole reply (spans split words) */
			size_t len = 0;
			for (uint32_t i = 0; i < m->n_spans; i++)
				len += strlen(m->spans[i].text);
			char *all = xmalloc(len + 1);
			len = 0;
			for (uint32_t i = 0; i < m->n_spans; i++) {
				size_t k = strlen(m->spans[i].text);
				memcpy(all + len, m->spans[i].text, k);
				len += k;
			}
			all[len] = '\0';
			t->turn_words = tui_count_words(all);
			free(all);
		}
		break;
	case WORKER_EV_TURN_END:
		m = tui_reply(t);
		if (m != NULL) {
			/* the detokeniser's final flush reaches the reply, not a token */
			size_t have = 0, all = ev->turn.reply ? strlen(ev->turn.reply) : 0;
			for (uint32_t i = 0; i < m->n_spans; i++)
				have += strlen(m->spans[i].text);
			if (all > have)
				tui_span_add(m, ev->turn.reply + have, all - have, NAN);
			snprintf(m->stop, sizeof m->stop, "%s", gen_stop_name(ev->turn.stop));
		}
		snprintf(t->last_stop, sizeof t->last_stop, "%s", gen_stop_name(ev->turn.stop));
		t->turn_words = tui_count_words(ev->turn.reply ? ev->turn.reply : "");
		if (ev->turn.prefill_ms > 0)
			t->prefill_tps = ev->turn.n_prompt * 1e3 / ev->turn.prefill_ms;
		if (ev->turn.decode_ms > 0)
			t->decode_tps = ev->turn.n_reply * 1e3 / ev->turn.decode_ms;
		if (ev->turn.restarted)
			tui_msg_add(t, MSG_BANNER,
			            "context full: this turn started a new conversation (the model no "
			            "longer sees earlier turns)");
		t->busy = false;
		tui_evict_close(t);
		break;
	case WORKER_EV_KV:
		if (ev->kv.kind == KV_EVENT_STEP) {
			tui_apply_kv(t, &ev->kv, ev->key_pos, ev->key_tok, now_ms);
			ev->key_pos = ev->key_tok = NULL;
		} else {
			tui_apply_kv(t, &ev->kv, NULL, NULL, now_ms);
		}
		break;
	case WORKER_EV_SNAPSHOT: tui_apply_snapshot(t, ev); break;
	case WORKER_EV_TRANSCRIPT: tui_replay(t, &ev->recap, ev->status, ev->msg); break;
	case WORKER_EV_COMPARE: tui_compare_apply(t, ev); break;
	case WORKER_EV_COLD: tui_cold_apply(t, &ev->cold); break;
	case WORKER_EV_PROGRESS: /* the notice that follows says how it ended */
		if (ev->done < ev->total)
			tui_status(t, false, "clustering document: %u %%",
			           (unsigned)((uint64_t)ev->done * 100 / ev->total));
		break;
	case WORKER_EV_NOTICE: tui_status(t, false, "%s", ev->msg); break;
	case WORKER_EV_SAVED:
		/* a commit that failed keeps the exchange queued for the next */
		if (ev->status != KVS_OK)
			tui_status(t, true, "not saved yet (the next exchange retries): %s", ev->msg);
		break;
	case WORKER_EV_RESULT:
		if (ev->status != KVS_OK) {
			tui_status(t, true, "%s", ev->msg);
			if (ev->cmd == WORKER_CHAT) {
				m = tui_reply(t);
				if (m != NULL)
					snprintf(m->stop, sizeof m->stop, "error");
				tui_msg_add(t, MSG_INFO, ev->msg);
			}
		} else if (ev->cmd != WORKER_CHAT && ev->cmd != WORKER_SNAPSHOT) {
			tui_status(t, false, "%s", ev->msg);
		}
		if (ev->cmd == WORKER_LOAD && ev->status == KVS_OK) {
			t->lua_policy[0] = '\0'; /* the saved session's built-in policy is back */
			/* what came back, the policy and budget included, stays in the chat */
			tui_msg_add(t, MSG_INFO, ev->msg);
		}
		if (ev->cmd == WORKER_CHAT)
			t->busy = false;
		if (ev->cmd == WORKER_COMPARE)
			tui_compare_apply(t, ev);
		break;
	}
}

bool tui_has_text(const char *s, const char *text)
{
	size_t n = strlen(text);

	if (n == 0)
		return false;
	for (; *s; s++) {
		size_t k = 0;
		while (k < n && s[k] && tolower((unsigned char)s[k]) == tolower((unsigned char)text[k]))
			k++;
		if (k == n)
			return true;
	}
	return false;
}

/* Whether message m's text holds text. */
static bool tui_msg_has(const struct tui_msg *m, const char *text)
{
	size_t len = 1;
	char *all;
	bool has;

	for (uint32_t j = 0; j < m->n_spans; j++)
		len += strlen(m->spans[j].text);
	all = xmalloc(len);
	all[0] = '\0';
	for (uint32_t j = 0; j < m->n_spans; j++)
		strcat(all, m->spans[j].text);
	has = tui_has_text(all, text);
	free(all);
	return has;
}

bool tui_chat_find(struct tui *t, const char *text, int dir)
{
	int32_t i = t->chat_hit >= 0 ? t->chat_hit - dir : dir > 0 ? (int32_t)t->n_msgs - 1 : 0;

	if (strcmp(text, t->chat_find) != 0) { /* a new search starts at the bottom */
		i = dir > 0 ? (int32_t)t->n_msgs - 1 : 0;
		snprintf(t->chat_find, sizeof t->chat_find, "%s", text);
	}
	for (; i >= 0 && i < (int32_t)t->n_msgs; i -= dir)
		if (tui_msg_has(&t->msgs[i], text)) {
			t->chat_hit = i;
			t->chat_jump = true;
			return true;
		}
	return false;
}

const struct tui_step *tui_step_shown(const struct tui *t)
{
	uint32_t have = KVS_MIN(t->n_steps, (uint32_t)TUI_STEP_HISTORY);
	uint32_t back = t->step_back;

	if (have == 0)
		return NULL;
	if (back >= have)
		back = have - 1;
	return &t->steps[(t->n_steps - 1 - back) % TUI_STEP_HISTORY];
}

uint32_t tui_attn_steps(const struct tui *t, const struct tui_step **out)
{
	uint32_t have = KVS_MIN(t->n_steps, (uint32_t)TUI_STEP_HISTORY), n = 0;

	for (uint32_t k = have; k-- > 0;) {
		const struct tui_step *s = &t->steps[(t->n_steps - 1 - k) % TUI_STEP_HISTORY];
		if (s->attn != NULL && s->key_pos != NULL && s->key_tok != NULL && s->n_cached > 0)
			out[n++] = s;
	}
	return n;
}

int tui_cmp_i32(const void *a, const void *b)
{
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	return (x > y) - (x < y);
}

int32_t *tui_attn_keys(const struct tui_step *const *st, uint32_t n_st, uint32_t *n_keys,
                       int32_t **tok_out)
{
	size_t total = 0, n = 0, u = 0;
	int32_t *pos, *tok;

	for (uint32_t i = 0; i < n_st; i++)
		total += st[i]->n_cached;
	pos = xmallocarray(total ? total : 1, sizeof *pos);
	for (uint32_t i = 0; i < n_st; i++)
		for (uint32_t k = 0; k < st[i]->n_cached; k++)
			pos[n++] = st[i]->key_pos[k];
	qsort(pos, n, sizeof *pos, tui_cmp_i32);
	for (size_t i = 0; i < n; i++)
		if (u == 0 || pos[u - 1] != pos[i])
			pos[u++] = pos[i];
	tok = xmallocarray(u ? u : 1, sizeof *tok);
	for (uint32_t i = 0; i < n_st; i++)
		for (uint32_t k = 0; k < st[i]->n_cached; k++) {
			int32_t *hit = bsearch(&st[i]->key_pos[k], pos, u, sizeof *pos, tui_cmp_i32);
			tok[hit - pos] = st[i]->key_tok[k]; /* the latest step names it */
		}
	*n_keys = (uint32_t)u;
	if (tok_out != NULL)
		*tok_out = tok;
	else
		free(tok);
	return pos;
}

uint32_t tui_attn_row(const struct tui *t, float *out, uint32_t cap)
{
	return tui_attn_row_of(t, tui_step_shown(t), out, cap);
}

uint32_t tui_attn_row_of(const struct tui *t, const struct tui_step *s, float *out, uint32_t cap)
{
	uint32_t n, layer;

	if (s == NULL || s->attn == NULL || s->n_layer == 0 || s->n_head == 0)
		return 0;
	n = KVS_MIN(s->n_cached, cap);
	layer = KVS_MIN(t->layer, s->n_layer - 1);
	for (uint32_t k = 0; k < n; k++) {
		const float *base = s->attn + (size_t)layer * s->n_head * s->n_cached + k;
		float v;
		if (t->agg == AGG_HEAD) {
			v = base[(size_t)KVS_MIN(t->head, s->n_head - 1) * s->n_cached];
		} else {
			float sum = 0, mx = 0;
			for (uint32_t h = 0; h < s->n_head; h++) {
				float x = base[(size_t)h * s->n_cached];
				sum += x;
				mx = x > mx ? x : mx;
			}
			v = t->agg == AGG_MEAN ? sum / (float)s->n_head : mx;
		}
		out[k] = v;
	}
	return n;
}

void tui_heat_bin(const float *w, uint32_t n, uint32_t n_bins, float floor, uint8_t *level)
{
	float lf = logf(floor);

	if (n_bins == 0)
		return;
	for (uint32_t b = 0; b < n_bins; b++)
		level[b] = 0;
	for (uint32_t b = 0; b < n_bins && n > 0; b++) {
		/* keys [lo, hi) fall in bin b; the bin shows their largest weight */
		uint64_t lo = (uint64_t)b * n / n_bins, hi = (uint64_t)(b + 1) * n / n_bins;
		float mx = 0;
		if (hi == lo)
			hi = lo + 1;
		for (uint64_t k = lo; k < hi && k < n; k++)
			mx = w[k] > mx ? w[k] : mx;
		if (mx <= floor) {
			level[b] = 0;
			continue;
		}
		float f = (logf(mx) - lf) / -lf; /* 0 at floor, 1 at weight 1 */
		int l = 1 + (int)(f * (TUI_HEAT_LEVELS - 1));
		level[b] = (uint8_t)(l >= TUI_HEAT_LEVELS ? TUI_HEAT_LEVELS - 1 : l);
	}
}

int tui_surp_level(float s)
{
	static const float edge[TUI_SURP_LEVELS - 1] = { 1.0f, 2.5f, 4.0f, 6.0f };
	int l = 0;

	if (isnan(s))
		return 0;
	while (l < TUI_SURP_LEVELS - 1 && s >= edge[l])
		l++;
	return l;
}

void tui_regions(const struct tui *t, struct tui_regions *r)
{
	memset(r, 0, sizeof *r);
	for (uint32_t i = 0; i < t->n_toks; i++) {
		const struct tui_tok *x = &t->toks[i];
		if (!x->known)
			continue;
		if (x->evicted && !x->cached)
			r->evicted++;
		else if (x->t.flags & KV_FLAG_RECALLED)
			r->recalled++;
		else if (x->t.flags & KV_FLAG_PINNED)
			r->pinned++;
		else if (x->t.flags & KV_FLAG_SINK)
			r->sink++;
		else if (x->t.flags & KV_FLAG_KEY)
			r->key++;
		else
			r->recent++;
	}
}

/* The known token after (dir > 0) or before p, or -1. */
static int32_t tui_known_from(const struct tui *t, int32_t p, int dir)
{
	for (p += dir; p >= 0 && (uint32_t)p < t->n_toks; p += dir)
		if (t->toks[p].known)
			return p;
	return -1;
}

/* The first known token of the turn of token p (p itself when none before
 * it is of the same turn). */
static int32_t tui_turn_start(const struct tui *t, int32_t p)
{
	int32_t q;
	while ((q = tui_known_from(t, p, -1)) >= 0 && t->toks[q].t.turn == t->toks[p].t.turn)
		p = q;
	return p;
}

void tui_select(struct tui *t, enum tui_sel how)
{
	int32_t p = t->sel_tok, q;
	uint32_t page = t->strip_page ? t->strip_page : 64;

	if (p >= 0 && ((uint32_t)p >= t->n_toks || !t->toks[p].known))
		p = -1;
	switch (how) {
	case SEL_OFF: p = -1; break;
	case SEL_FIRST: p = tui_known_from(t, -1, 1); break;
	case SEL_PREV:
	case SEL_NEXT:
		/* from nothing: Left starts at the end, Right at the start */
		p = p < 0 ? tui_known_from(t, how == SEL_PREV ? (int32_t)t->n_toks : -1,
		                           how == SEL_PREV ? -1 : 1)
		          : tui_known_from(t, p, how == SEL_PREV ? -1 : 1);
		if (p < 0 && how == SEL_PREV)
			p = tui_known_from(t, -1, 1); /* stays on the first */
		break;
	case SEL_PAGE_UP:
	case SEL_PAGE_DOWN: {
		int dir = how == SEL_PAGE_UP ? -1 : 1;
		if (p < 0)
			p = tui_known_from(t, (int32_t)t->n_toks, -1);
		for (uint32_t k = 0; k < page && p >= 0; k++) {
			q = tui_known_from(t, p, dir);
			if (q < 0)
				break; /* the page stops at the first or the last token */
			p = q;
		}
		break;
	}
	case SEL_TURN_PREV:
		if (p < 0)
			p = tui_known_from(t, (int32_t)t->n_toks, -1);
		if (p < 0)
			break;
		q = tui_turn_start(t, p);
		if (q == p && (q = tui_known_from(t, p, -1)) >= 0)
			q = tui_turn_start(t, q); /* at a turn's start: the turn before */
		p = q < 0 ? p : q;
		break;
	case SEL_TURN_NEXT:
		if (p < 0)
			break;
		q = p;
		while ((q = tui_known_from(t, q, 1)) >= 0 && t->toks[q].t.turn == t->toks[p].t.turn)
			;
		p = q; /* none after the last turn: the live tail again */
		break;
	}
	t->sel_tok = p;
}

bool tui_find(struct tui *t, const char *text)
{
	size_t len = 0, tl = strlen(text), off = 0, start = 0;
	char *all;
	int32_t *at; /* (len) the token each byte of all belongs to */
	int32_t hit = -1;

	if (tl == 0)
		return false;
	for (uint32_t i = 0; i < t->n_toks; i++)
		if (t->toks[i].known)
			len += strlen(t->toks[i].text);
	all = xmalloc(len + 1);
	at = xmallocarray(len + 1, sizeof *at);
	for (uint32_t i = 0; i < t->n_toks; i++) {
		size_t k = strlen(t->toks[i].text);
		if (!t->toks[i].known)
			continue;
		if (t->sel_tok >= 0 && (int32_t)i <= t->sel_tok)
			start = off + k; /* the search begins after the selection */
		memcpy(all + off, t->toks[i].text, k);
		for (size_t j = 0; j < k; j++)
			at[off + j] = (int32_t)i;
		off += k;
	}
	all[len] = '\0';
	/* from just after the selection to the end, then from the start round */
	for (size_t n = 0; n < len && hit < 0; n++) {
		size_t i = (start + n) % len, j = 0;
		while (j < tl && i + j < len &&
		       tolower((unsigned char)all[i + j]) == tolower((unsigned char)text[j]))
			j++;
		if (j == tl)
			hit = at[i];
	}
	free(all);
	free(at);
	if (hit >= 0)
		t->sel_tok = hit;
	return hit >= 0;
}

char *tui_osc52(const char *text)
{
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const uint8_t *p = (const uint8_t *)text;
	size_t n = strlen(text), k = 0;
	char *out = xmalloc(16 + (n + 2) / 3 * 4);

	k += (size_t)sprintf(out, "\033]52;c;");
	for (size_t i = 0; i < n; i += 3) {
		/* three bytes, 24 bits, four letters of six; '=' pads a short end */
		uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
		        (i + 2 < n ? p[i + 2] : 0);
		out[k++] = b64[v >> 18 & 63];
		out[k++] = b64[v >> 12 & 63];
		out[k++] = i + 1 < n ? b64[v >> 6 & 63] : '=';
		out[k++] = i + 2 < n ? b64[v & 63] : '=';
	}
	out[k++] = '\a';
	out[k] = '\0';
	return out;
}

/* Append the text of message m to the buffer. */
static void tui_msg_text(const struct tui_msg *m, char **buf, size_t *len, size_t *cap)
{
	for (uint32_t j = 0; j < m->n_spans; j++) {
		size_t k = strlen(m->spans[j].text);
		if (*len + k + 1 > *cap) {
			*cap = KVS_MAX(*cap * 2, *len + k + 64);
			*buf = xrealloc(*buf, *cap);
		}
		memcpy(*buf + *len, m->spans[j].text, k);
		*len += k;
		(*buf)[*len] = '\0';
	}
}

char *tui_chat_text(const struct tui *t, bool all)
{
	static const char *const who[] = {
		[MSG_SYSTEM] = "system> ", [MSG_USER] = "you> ", [MSG_ASSISTANT] = "model> ",
		[MSG_BANNER] = "!! ",      [MSG_INFO] = "-- ",   [MSG_RULE] = "-- "
	};
	char *buf = NULL;
	size_t len = 0, cap = 0;

	for (uint32_t i = t->n_msgs; !all && i-- > 0;)
		if (t->msgs[i].kind == MSG_ASSISTANT) {
			tui_msg_text(&t->msgs[i], &buf, &len, &cap);
			return buf != NULL ? buf : xstrdup("");
		}
	for (uint32_t i = 0; all && i < t->n_msgs; i++) {
		struct tui_msg label = { 0 };
		struct tui_span sp = { (char *)who[t->msgs[i].kind], NAN };
		label.spans = &sp;
		label.n_spans = 1;
		tui_msg_text(&label, &buf, &len, &cap);
		tui_msg_text(&t->msgs[i], &buf, &len, &cap);
		sp.text = (char *)"\n";
		tui_msg_text(&label, &buf, &len, &cap);
	}
	return buf;
}

uint32_t tui_count_words(const char *s)
{
	uint32_t n = 0;
	bool in = false;

	for (; *s; s++) {
		bool sp = *s == ' ' || *s == '\n' || *s == '\t' || *s == '\r';
		if (!sp && !in)
			n++;
		in = !sp;
	}
	return n;
}
