/*
 * compare.c: a second retention policy on the same dialogue (:compare).
 *
 * A comparison owns a shadow session (session_open_shadow): the same model
 * and weights as the session it follows, a KV cache of its own under the
 * second policy and budget, and a replica of the sampler whose generator
 * starts where the session's conversation started. It replays the
 * session's exchanges one at a time (the same user texts, the same limits:
 * tokens per reply and length target, a reply the user stopped replayed
 * to the same number of tokens), the replies re-generated under the second
 * policy; after that it follows each new exchange. With the same policy
 * and budget a replay gives the same replies token for token (the engine's
 * results do not depend on the cache it runs in), so any difference the
 * view shows is the policy's.
 *
 * Its cost while on: a second KV cache (the shadow's budget times
 * engine_kv_bytes_per_slot) and a second decode of every exchange, on the
 * worker thread after the session's own. Off, nothing of it runs.
 *
 * Places on the dialogue: two streams number their tokens from their own
 * starts, and their replies may differ in length, so a token is placed by
 * (exchange, offset from the exchange's first token) instead of its
 * original position; a user turn has the same tokens at the same offsets
 * in both, a reply's k-th token is the same place in both. The overlap of
 * the kept sets counts the places both caches hold with the same token.
 * The first divergence is the first exchange whose reply token ids differ,
 * and the first reply token where they do.
 */
#include "app/app-int.h"

#include <stdlib.h>
#include <string.h>

struct compare {
	struct session *shadow;
	uint32_t budget; /* asked for (0: every slot) */
	bool stopped;    /* a cancel stopped a replayed reply */
};

int32_t compare_diverge(const int32_t *a, uint32_t na, const int32_t *b, uint32_t nb)
{
	uint32_t n = KVS_MIN(na, nb);
	for (uint32_t i = 0; i < n; i++)
		if (a[i] != b[i])
			return (int32_t)i;
	return na == nb ? -1 : (int32_t)n;
}

bool compare_place(const struct compare_side *s, int32_t orig_pos, uint32_t *turn, uint32_t *off)
{
	uint32_t epoch = 0, lo, hi;

	for (uint32_t i = 0; i < s->n_turns; i++)
		if (s->turns[i].restarted)
			epoch = i; /* the cache holds this epoch's tokens only */
	if (s->n_turns == 0 || orig_pos < s->turns[epoch].first_pos)
		return false;
	/* the last turn of the epoch starting at or before orig_pos */
	lo = epoch;
	hi = s->n_turns;
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (s->turns[mid].first_pos <= orig_pos)
			lo = mid;
		else
			hi = mid;
	}
	*turn = lo;
	*off = (uint32_t)(orig_pos - s->turns[lo].first_pos);
	return true;
}

/* A kept token's place and id, for sorting and search. */
struct compare_key {
	uint64_t place; /* turn << 32 | offset */
	int32_t token;
};

static int compare_key_cmp(const void *a, const void *b)
{
	const struct compare_key *x = a, *y = b;
	return x->place < y->place ? -1 : x->place > y->place;
}

uint32_t compare_overlap(const struct compare_side *a, const struct compare_side *b)
{
	struct compare_key *kb = xmallocarray(b->n_kept ? b->n_kept : 1, sizeof *kb);
	uint32_t n = 0, both = 0, turn, off;

	for (uint32_t i = 0; i < b->n_kept; i++)
		if (compare_place(b, b->kept[i].orig_pos, &turn, &off))
			kb[n++] = (struct compare_key){ (uint64_t)turn << 32 | off, b->kept[i].token };
	qsort(kb, n, sizeof *kb, compare_key_cmp);
	for (uint32_t i = 0; i < a->n_kept; i++) {
		struct compare_key k;
		const struct compare_key *hit;
		if (!compare_place(a, a->kept[i].orig_pos, &turn, &off))
			continue;
		k.place = (uint64_t)turn << 32 | off;
		hit = bsearch(&k, kb, n, sizeof *kb, compare_key_cmp);
		if (hit != NULL && hit->token == a->kept[i].token)
			both++;
	}
	free(kb);
	return both;
}

void compare_summarize(const struct compare_side side[2], struct compare_sum *out)
{
	memset(out, 0, sizeof *out);
	out->kept[0] = side[0].n_kept;
	out->kept[1] = side[1].n_kept;
	out->overlap = compare_overlap(&side[0], &side[1]);
	out->turns = KVS_MIN(side[0].n_turns, side[1].n_turns);
	out->div_turn = out->div_tok = -1;
	for (uint32_t i = 0; i < out->turns; i++) {
		const struct compare_turn *a = &side[0].turns[i], *b = &side[1].turns[i];
		int32_t k = compare_diverge(a->ids, a->n_reply, b->ids, b->n_reply);
		if (k >= 0) {
			out->div_turn = (int32_t)i;
			out->div_tok = k;
			break;
		}
	}
}

/* One side from session s (its first n_turns exchanges). */
static void compare_side_fill(struct compare_side *d, const struct session *s, uint32_t n_turns)
{
	const struct kv_cache *kv = gen_kv(session_gen(s));

	kv_policy_format(kv_cache_policy(kv), d->policy, sizeof d->policy);
	d->budget = kv_cache_budget(kv);
	d->n_turns = n_turns;
	d->turns = xcalloc(n_turns ? n_turns : 1, sizeof *d->turns);
	for (uint32_t i = 0; i < n_turns; i++) {
		const struct session_turn *t = session_turn_at(s, i);
		struct compare_turn *c = &d->turns[i];
		c->first_pos = t->first_pos;
		c->n_prompt = t->n_prompt;
		c->n_reply = t->ids != NULL ? t->n_reply : 0;
		c->stop = (uint8_t)t->stop;
		c->restarted = t->restarted;
		c->reply = xstrdup(t->reply ? t->reply : "");
		c->ids = xmallocarray(c->n_reply ? c->n_reply : 1, sizeof *c->ids);
		if (c->n_reply > 0)
			memcpy(c->ids, t->ids, c->n_reply * sizeof *c->ids);
	}
	d->n_kept = kv_cache_n(kv);
	d->kept = xmallocarray(d->n_kept ? d->n_kept : 1, sizeof *d->kept);
	memcpy(d->kept, kv_cache_toks(kv), d->n_kept * sizeof *d->kept);
	d->next_pos = kv_cache_next_pos(kv);
}

static void compare_side_free(struct compare_side *d)
{
	for (uint32_t i = 0; i < d->n_turns; i++) {
		free(d->turns[i].reply);
		free(d->turns[i].ids);
	}
	free(d->turns);
	free(d->kept);
	memset(d, 0, sizeof *d);
}

void compare_view_free(struct compare_view *v)
{
	if (v == NULL)
		return;
	compare_side_free(&v->side[0]);
	compare_side_free(&v->side[1]);
	free(v);
}

int compare_open(struct compare **out, struct session *base, const char *spec, int64_t budget,
                 struct err *e)
{
	const struct session_turn *t0 = session_turn_at(base, 0);
	struct kv_cache *bkv = gen_kv(session_gen(base));
	struct kv_config kc;
	int rc;

	*out = NULL;
	if (t0 == NULL)
		return err_set(e, KVS_ESTATE,
		               "no conversation yet: expected at least one exchange before :compare");
	if (t0->first_pos != 0 && !t0->restarted)
		return err_set(e, KVS_ESTATE,
		               "this conversation continues a saved session, whose exchanges cannot be "
		               "replayed: expected a conversation begun here (:new)");
	kv_config_default(&kc);
	rc = kv_policy_parse(spec, &kc.policy, e);
	if (rc != KVS_OK)
		return rc;
	if (budget < 0)
		kc.budget = kv_cache_budget(bkv); /* the session's */
	else if (budget > (int64_t)UINT32_MAX / 2)
		return err_set(e, KVS_EARG, "budget %lld: expected 0 (every slot) .. %u tokens",
		               (long long)budget, UINT32_MAX / 2);
	else
		kc.budget = (uint32_t)budget;
	kc.sparse = *kv_cache_sparse(bkv); /* only the policy and the budget differ */
	kc.capture = KV_CAPTURE_OFF;
	kc.token_stats = KV_TOKSTATS_AUTO;
	struct compare *c = xcalloc(1, sizeof *c);
	c->budget = kc.budget;
	rc = session_open_shadow(&c->shadow, base, &kc, e);
	if (rc != KVS_OK) {
		free(c);
		return rc;
	}
	*out = c;
	return KVS_OK;
}

void compare_close(struct compare *c)
{
	if (c == NULL)
		return;
	session_close(c->shadow);
	free(c);
}

struct session *compare_shadow(const struct compare *c)
{
	return c->shadow;
}

uint64_t compare_kv_bytes(const struct compare *c)
{
	const struct gen *g = session_gen(c->shadow);
	return (uint64_t)kv_cache_budget(gen_kv(g)) * engine_kv_bytes_per_slot(gen_engine(g));
}

uint32_t compare_pending(const struct compare *c, const struct session *base)
{
	uint32_t nb = session_n_turns(base), ns = session_n_turns(c->shadow);
	return nb > ns ? nb - ns : 0;
}

int compare_step(struct compare *c, const struct session *base, struct err *e)
{
	uint32_t i = session_n_turns(c->shadow);
	const struct session_turn *t = session_turn_at(base, i);
	struct gen *g = session_gen(c->shadow);
	int rc;

	if (t == NULL)
		return KVS_OK;
	/* the limits the session's reply was made under; a reply the user
	 * stopped is replayed to as many tokens */
	uint32_t max = t->max_tokens;
	if (t->stop == GEN_STOP_USER)
		max = t->n_reply ? t->n_reply : 1;
	session_set_max_tokens(c->shadow, max);
	gen_set_length_target(g, &t->len);
	rc = session_chat(c->shadow, t->user, e);
	if (rc != KVS_OK)
		return rc;
	const struct session_turn *r = session_turn_at(c->shadow, i);
	if (r != NULL && r->stop == GEN_STOP_USER && t->stop != GEN_STOP_USER)
		c->stopped = true; /* a cancel, not the replay's limit */
	return KVS_OK;
}

bool compare_stopped(const struct compare *c)
{
	return c->stopped;
}

/* The bytes of reply that ids[0..n) produced (whole UTF-8 only, at most
 * the reply's length). */
static uint32_t compare_text_bytes(const struct vocab *v, const int32_t *ids, uint32_t n,
                                   const char *reply)
{
	struct detok d;
	char *buf = NULL;
	size_t len = 0, cap = 0, all = strlen(reply);

	detok_init(&d, v, false);
	for (uint32_t i = 0; i < n; i++)
		if (!vocab_is_eog(v, ids[i]))
			detok_push(&d, ids[i], &buf, &len, &cap);
	free(buf);
	return (uint32_t)KVS_MIN(len, all);
}

struct compare_view *compare_view_make(const struct compare *c, const struct session *base,
                                       enum compare_state state, uint32_t total)
{
	struct compare_view *v = xcalloc(1, sizeof *v);
	uint32_t ns = session_n_turns(c->shadow);

	v->state = state;
	v->done = ns;
	v->total = total;
	/* the session's side as far as the shadow has come: the exchanges
	 * compared; its cache as it is now */
	compare_side_fill(&v->side[0], base, session_n_turns(base));
	compare_side_fill(&v->side[1], c->shadow, ns);
	compare_summarize(v->side, &v->sum);
	v->kv_bytes = compare_kv_bytes(c);
	for (int k = 0; k < 2 && v->sum.div_turn >= 0; k++) {
		const struct compare_turn *t = &v->side[k].turns[v->sum.div_turn];
		v->div_byte[k] = compare_text_bytes(gen_vocab(session_gen(base)), t->ids,
		                                    (uint32_t)v->sum.div_tok, t->reply);
	}
	return v;
}
