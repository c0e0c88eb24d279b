/*
 * kv_zip.c: KVzip's query-agnostic scores (Kim et al., 2025, arXiv
 * 2505.23416) within a token budget.
 *
 * Query-aware policies (SnapKV) keep what the question being asked needs;
 * the next question, asked of the same cache, finds the rest gone. KVzip
 * asks instead which cached entries the model needs to reconstruct the
 * whole context: it feeds, after the cache, a "repeat the previous
 * context" prompt followed by the context itself (teacher-forced), and
 * scores each cached (token, layer, KV head) entry by the maximum
 * attention any of those queries (and any query head of the KV head's
 * group) gives it. The tokens whose best entry (the max over layers and
 * KV heads) scores lowest go (heads=0, the default: one keep-set, the
 * one-set form of the authors' default, one threshold over every (token,
 * layer, head) entry); heads=1 keeps per (layer, KV head) the top of its
 * own, uniform head budgets (kv_heads.c).
 *
 * Here the budget is never exceeded, so a re-read runs at evictions: at
 * the one that begins a turn, and at any other that finds more than half
 * of what it keeps not yet scored (a long prompt: every other prefill
 * chunk; a long reply); tokens fed since the last re-read score +inf (kept
 * first) until the next. Two rules for what it reads (`reread`):
 *
 *   all  the paper's: every cached token, in cache order, and the scores
 *        it gives replace the old ones, so every entry is scored against
 *        the same cache in the same pass, whatever its history. Chunks as
 *        the authors' code makes them: the first after "Repeat the
 *        previous context exactly.", each later one after "Repeat the part
 *        of the previous context exactly, starting with" and the previous
 *        chunk's last 8 tokens (inside the user turn); each chunk is read
 *        on its own (it sees the cache and itself, not the earlier chunks'
 *        re-reads). Cost: a prefill of the cache per turn.
 *   new  ours, cheaper: only the tokens not yet scored, every entry
 *        keeping the most attention any re-read gave it. Each token is
 *        re-read once, so a turn costs about twice its prefill; but a
 *        token's score then comes from a re-read of its own turn placed
 *        right after the prompt (as if its turn were the start of the
 *        context), against the cache as it was then.
 *
 * Each chunk is a scratch forward in free engine slots right after the
 * cache (positions as a feed would give them), `chunk` context tokens
 * (fewer when fewer slots are free) after its prompt; the engine reports
 * the per-KV-head max over the chunk's queries and query heads
 * (engine_batch.attn_kv_max) for every cached entry, and an entry keeps
 * the max over chunks. The slots are then emptied: the cache is exactly as
 * before. A head scores only what it keeps (the re-read sees the cache as
 * each head has it).
 *
 * Against the authors' code: there a chunk scores only its own part of the
 * context, with the softmax taken over the system prompt, that part and
 * the chunk's re-read; here every entry takes the max over every chunk,
 * the softmax over the whole cache. The two agree when the cache fits one
 * chunk (the authors' chunk is 2,000 tokens; ours 512 by default, since
 * the scratch slots are held for the whole session). Their default head
 * budgets are non-uniform (one threshold over every layer and head): with
 * one token set that is heads=0; heads=1 with store=heads and spread > 1
 * is their `pair-uniform` option. heads=1 at spread 1 cuts the union by
 * how many heads nominated a token, which drops what only the copying
 * heads read (doc/EVALS.md, session 10).
 *
 * carry > 0 sums instead of keeping the max: each re-read adds the most
 * attention its chunks gave every cached entry to the old score times
 * carry, so what later re-reads still attend to gains over what they
 * ignore. (Session 9 blamed the max rule's ties for kvzip forgetting over
 * many turns; it was heads=1's union cut: with one set the incremental
 * rule holds a fact 30 turns in every conversation measured.)
 */
#include "kv/kv-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The re-read's request, as the paper's prompt asks it; a later chunk of a
 * whole re-read asks for the part that starts with the previous chunk's
 * last ZIP_HINT tokens (the authors' code: prev_postfix_size 8). */
static const char zip_request[] = "Repeat the previous context exactly.";
static const char zip_request_more[] =
        "Repeat the part of the previous context exactly, starting with";
#define ZIP_HINT 8

/* The request text as a user turn with the generation prompt after it in
 * the model's chat template (or as plain text, then end), into *ids (n);
 * the template's tail (end of turn, generation prompt) is its last *n_tail
 * tokens. KVS_OK, or a status with nothing allocated. */
static int zip_tokenize(const struct model *m, const char *text, const char *end, int32_t **ids,
                        size_t *n, uint32_t *n_tail)
{
	struct chat_template t;
	struct err e;
	size_t cap = 0, n_empty = 0, cap_empty = 0;
	int32_t *empty = NULL;
	*ids = NULL;
	*n = 0;
	*n_tail = 0;
	int rc = chat_template_init(&t, m->chat_template, NULL, m->vocab, &e);
	if (rc == KVS_OK) {
		/* the same turn with nothing in it: what the two share at the end is
		 * the template's tail */
		for (int k = 0; k < 2 && rc == KVS_OK; k++) {
			struct chat_prompt p = { 0 };
			chat_message(&t, "user", k ? "" : text, &p);
			chat_generation_prompt(&t, &p);
			rc = k ? chat_tokenize(m->vocab, &p, &empty, &n_empty, &cap_empty, &e)
			       : chat_tokenize(m->vocab, &p, ids, n, &cap, &e);
			chat_prompt_free(&p);
		}
		chat_template_free(&t);
		uint32_t k = 0;
		while (rc == KVS_OK && k + 1 < *n && k < n_empty &&
		       (*ids)[*n - 1 - k] == empty[n_empty - 1 - k])
			k++;
		*n_tail = k;
		free(empty);
	}
	if (rc != KVS_OK) {
		/* a model without a chat layout: the request as plain text */
		free(*ids);
		*ids = NULL;
		*n = cap = 0;
		*n_tail = 0;
		char buf[96];
		int len = snprintf(buf, sizeof buf, "\n\n%s%s", text, end);
		rc = vocab_tokenize(m->vocab, buf, (size_t)len, false, false, ids, n, &cap, &e);
	}
	if (rc == KVS_OK && *n == 0)
		rc = KVS_EARG;
	if (rc != KVS_OK) {
		free(*ids);
		*ids = NULL;
		*n = 0;
	}
	return rc;
}

void kv_zip_prompt(struct kv_cache *c)
{
	free(c->zip_ids);
	free(c->zip_more);
	c->zip_ids = c->zip_more = NULL;
	c->n_zip_ids = c->n_zip_more = c->zip_cut = 0;
	const struct model *m = engine_model(c->eng);
	int32_t *ids;
	size_t n;
	uint32_t tail;
	if (zip_tokenize(m, zip_request, "\n", &ids, &n, &tail) == KVS_OK) {
		c->zip_ids = ids;
		c->n_zip_ids = (uint32_t)n;
	} /* else the re-read runs the context alone */
	if (zip_tokenize(m, zip_request_more, "", &ids, &n, &tail) == KVS_OK) {
		c->zip_more = ids;
		c->n_zip_more = (uint32_t)n;
		c->zip_cut = (uint32_t)n - tail;
	}
}

/* The prompt before the chunk at un[j0] of a re-read into ids, its length:
 * the request, or for a later chunk of a whole re-read the request for the
 * part starting with the previous chunk's last tokens. */
static uint32_t zip_chunk_prompt(const struct kv_cache *c, bool all, const uint32_t *un,
                                 uint32_t j0, int32_t *ids)
{
	if (!all || j0 == 0 || c->n_zip_more == 0) {
		if (c->n_zip_ids > 0)
			memcpy(ids, c->zip_ids, c->n_zip_ids * sizeof *ids);
		return c->n_zip_ids;
	}
	uint32_t h = KVS_MIN(j0, (uint32_t)ZIP_HINT), o = c->zip_cut;
	memcpy(ids, c->zip_more, o * sizeof *ids);
	for (uint32_t i = 0; i < h; i++)
		ids[o++] = c->toks[un[j0 - h + i]].token;
	memcpy(ids + o, c->zip_more + c->zip_cut, (c->n_zip_more - c->zip_cut) * sizeof *ids);
	return o + c->n_zip_more - c->zip_cut;
}

int kv_zip_score(struct kv_cache *c, uint32_t target, struct err *e)
{
	uint32_t n = c->n, nu = 0;
	bool all = kv_policy_get(&c->cfg.policy, "reread") >= 0.5f;
	uint32_t *un = c->order; /* (nu) cache indices of the tokens to re-read */
	for (uint32_t i = 0; i < n; i++)
		if (isinf(c->toks[i].score) && c->toks[i].score > 0)
			un[nu++] = i;
	if (nu == 0 || 2 * nu <= target || NEVER(c->acc == NULL))
		return KVS_OK;
	if (all) /* every cached token, in cache order */
		for (nu = 0; nu < n; nu++)
			un[nu] = nu;
	/* the longest prompt a chunk may get */
	uint32_t np = KVS_MAX(c->n_zip_ids, all && c->n_zip_more ? c->n_zip_more + ZIP_HINT : 0);
	uint32_t chunk = kv_policy_reread(&c->cfg.policy);
	uint32_t room = kv_store_room(c); /* free slots (and the per-head store's rows) */
	if (room <= np)
		return KVS_OK; /* no room to re-read: the last scores stand */
	chunk = KVS_MIN(chunk, room - np);
	bool compact = kv_def(c)->pos_mode(c->cfg.policy.p) == KV_POS_COMPACT;
	float carry = kv_policy_carry(&c->cfg.policy);
	int32_t *ids = xmallocarray(np + chunk, sizeof *ids); /* (n_prompt + chunk) */
	/* this re-read's own max first where it does not simply raise the old
	 * scores, (n, n_layer, n_head_kv) */
	float *fresh = carry > 0 || all ? xcalloc((size_t)n * c->acc_stride, sizeof *fresh) : NULL;
	int rc = KVS_OK;
	for (uint32_t j0 = 0; j0 < nu && rc == KVS_OK; j0 += chunk) {
		uint32_t mp = zip_chunk_prompt(c, all, un, j0, ids);
		uint32_t mc = KVS_MIN(chunk, nu - j0), m = mp + mc;
		for (uint32_t i = 0; i < mc; i++)
			ids[mp + i] = c->toks[un[j0 + i]].token;
		for (uint32_t i = 0; i < m; i++) {
			c->bslot[i] = c->free_slots[c->n_free - 1 - i];
			c->bpos[i] = (compact ? (int32_t)n : c->next_pos) + (int32_t)i;
		}
		struct engine_batch b = kv_batch_after_cache(c, ids, m);
		b.logits = ENGINE_LOGITS_NONE;
		b.want_attn_kv = true;
		b.attn_kv_max = true;
		struct engine_out o;
		rc = engine_forward(c->eng, &b, &o, e);
		/* the scratch slots go back empty, whatever happened */
		for (uint32_t i = 0; i < m; i++)
			(void)ALWAYS(engine_kv_set_pos(c->eng, c->bslot[i], -1, NULL) == KVS_OK);
		if (rc != KVS_OK)
			break;
		c->n_zip_tokens += m;
		/* every cached entry keeps the most attention any chunk gave it */
		float *dst = fresh ? fresh : c->acc;
		for (uint32_t r = 0; r < c->acc_stride; r++) {
			const float *a = o.attn_kv + (size_t)r * o.n_visible; /* cache columns first */
			for (uint32_t j = 0; j < n; j++) {
				float *d = &dst[(size_t)j * c->acc_stride + r];
				*d = a[j] > *d ? a[j] : *d;
			}
		}
	}
	/* carry: the re-reads add up, the old scores times carry; a whole
	 * re-read with carry 0 replaces them */
	for (size_t k = 0; rc == KVS_OK && fresh != NULL && k < (size_t)n * c->acc_stride; k++)
		c->acc[k] = carry * c->acc[k] + fresh[k];
	free(fresh);
	if (rc == KVS_OK) {
		/* a token's own score: the max over its heads (one keep-set, views) */
		for (uint32_t j = 0; j < n; j++) {
			const float *r = c->acc + (size_t)j * c->acc_stride;
			float mx = 0;
			for (uint32_t k = 0; k < c->acc_stride; k++)
				mx = r[k] > mx ? r[k] : mx;
			c->toks[j].score = mx;
		}
		c->n_zip_reads++;
	}
	free(ids);
	return rc;
}
