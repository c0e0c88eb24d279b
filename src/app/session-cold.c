/*
 * session-cold.c: a chat session's cold tier, between the KV cache's
 * eviction listener and the store's cold blocks (store_cold_*).
 *
 * The scorers are one table (recall_table): fts ranks by the turn's words
 * alone and can choose before the turn's eviction; summary and both (and a
 * custom scorer, a Lua hook) need the turn's queries, which a probe takes
 * (kv_cache_probe: the turn's last SCOLD_PROBE_CTX prompt tokens run over
 * the hot cache in free slots, the last SCOLD_PROBE_Q of them scoring),
 * so they reserve the whole recall budget in the turn's eviction and
 * choose after it.
 *
 * Order of a user turn with the cold tier on (session.c calls these):
 *   1. scold_recall: fts selects blocks up to the recall budget, which is
 *      at most what the budget leaves beside the turn's m incoming tokens;
 *      a probing scorer only reserves that budget;
 *   2. the turn's eviction makes room for m plus the chosen (or reserved)
 *      tokens (one eviction, as without recall);
 *   3. scold_place: a probing scorer probes and chooses now; the blocks go
 *      back into the cache by original position, before the turn's tokens,
 *      kept through this turn;
 *   4. after the exchange's commit, scold_flush writes what was evicted
 *      meanwhile, in its own transaction (a crash between the two loses
 *      only cold blocks, never a committed turn).
 * A flush that fails (disk full, I/O error, lock) stops cold writes with
 * one message (SESSION_COLD_STOP) and the chat goes on; a saved cold tier
 * written by another model turns the cold tier off with one message and
 * leaves the rows as they are.
 */
#include "app/app-int.h"

#include <stdlib.h>
#include <string.h>

#define SCOLD_PROBE_CTX 64 /* prompt tokens a probe runs (the turn's last) */
#define SCOLD_PROBE_Q 8    /* of which the last this many score the blocks */

/* A recall scorer: its name, help line, ranking and whether it probes. */
struct recall_def {
	const char *name;
	const char *help;
	enum store_cold_rank rank;
	bool probe;
};

/* clang-format off */
static const struct recall_def recall_table[] = {
	[SESSION_RECALL_OFF] = { "off", "no recall (the cold tier is still written)",
	                         STORE_COLD_FTS, false },
	[SESSION_RECALL_FTS] = { "fts", "the turn's words: BM25 over the blocks' text (SQLite FTS5)",
	                         STORE_COLD_FTS, false },
	[SESSION_RECALL_SUMMARY] = { "summary", "the turn's queries (a probe of its last prompt "
	                             "tokens) against each block's per-channel key bounds (Quest's "
	                             "upper bound)", STORE_COLD_SUMMARY, true },
	[SESSION_RECALL_BOTH] = { "both", "fts and summary interleaved, fts first: its best, "
	                          "summary's best, its second, ... (default)", STORE_COLD_BOTH, true },
};
/* clang-format on */

int session_recall_parse(const char *s, enum session_recall *out, struct err *e)
{
	for (size_t i = 0; i < KVS_ARRAY_LEN(recall_table); i++)
		if (strcmp(s, recall_table[i].name) == 0) {
			*out = (enum session_recall)i;
			return KVS_OK;
		}
	return err_set(e, KVS_EARG, "recall scorer '%s': expected %s", s, session_recall_names());
}

const char *session_recall_name(enum session_recall r)
{
	return (size_t)r < KVS_ARRAY_LEN(recall_table) ? recall_table[r].name : "?";
}

const char *session_recall_names(void)
{
	return "off|fts|summary|both";
}

void session_recall_help(FILE *fp)
{
	for (size_t i = 0; i < KVS_ARRAY_LEN(recall_table); i++)
		fprintf(fp, "  %-8s %s\n", recall_table[i].name, recall_table[i].help);
}

struct session_cold {
	struct gen *g;
	struct session_cold_config cfg;
	struct store_cold *c;
	uint32_t n_chosen; /* tokens chosen by the last scold_recall, not yet placed */
	uint32_t reserved; /* tokens a probing scorer reserved, chosen at scold_place */
	char *text;        /* (reserved) the turn's words, until scold_place */
	int32_t *probe;    /* (n_probe) the turn's last prompt tokens */
	uint32_t n_probe, index, m;
	float *q;          /* (SCOLD_PROBE_CTX, n_layer, n_head, head_dim) probe queries */
	bool warned_probe; /* said once that the probe could not run */
};

void scold_open(struct session_cold **out, struct gen *g, const struct session_cold_config *c)
{
	struct session_cold *sc = xcalloc(1, sizeof *sc);
	struct store_cold_config cc = { .block = c->block ? c->block : 64,
		                            .max_tokens = c->max_tokens };
	sc->g = g;
	sc->cfg = *c;
	store_cold_open(&sc->c, g->kv, g->model->vocab, &cc);
	if (sc->c != NULL)
		kv_cache_set_cold(g->kv, store_cold_evicted, sc->c);
	kv_cache_set_recall_near(g->kv, c->recall_near);
	/* a block larger than the recall budget never comes back: say so once */
	uint32_t budget = kv_cache_budget(g->kv);
	uint32_t want = c->recall_budget ? c->recall_budget : budget / 8;
	if (c->recall != SESSION_RECALL_OFF && want < cc.block)
		log_warn("cold tier: the recall budget (%u tokens%s) is smaller than a block (%u): "
		         "only blocks cut short by a turn's end can come back; raise --recall-budget "
		         "or lower --cold-block",
		         want, c->recall_budget ? "" : ", an eighth of the KV budget", cc.block);
	*out = sc;
}

void scold_free(struct session_cold *sc)
{
	if (sc == NULL)
		return;
	kv_cache_set_cold(sc->g->kv, NULL, NULL);
	kv_cache_set_recall_near(sc->g->kv, false);
	store_cold_free(sc->c);
	free(sc->text);
	free(sc->probe);
	free(sc->q);
	free(sc);
}

/* Tell the hooks. */
static void scold_emit(const struct session_hooks *h, const struct session_cold_event *ev)
{
	if (h != NULL && h->cold != NULL)
		h->cold(h->ud, ev);
}

bool scold_attach(struct session_cold *sc, struct store *st, int64_t id, const char *model_sha,
                  const struct session_hooks *h)
{
	struct err e;
	if (sc->c == NULL)
		return false;
	if (store_cold_attached(sc->c))
		return true;
	if (store_cold_attach(sc->c, st, id, model_sha, &e) == KVS_OK)
		return true;
	struct session_cold_event ev = { .kind = SESSION_COLD_REFUSED, .msg = e.msg };
	scold_emit(h, &ev);
	kv_cache_set_cold(sc->g->kv, NULL, NULL);
	store_cold_free(sc->c);
	sc->c = NULL;
	return false;
}

/* The recall budget for a turn of m incoming tokens: the configured one
 * (an eighth of the KV budget by default), at most what the budget leaves. */
static uint32_t scold_want(const struct session_cold *sc, uint32_t m)
{
	uint32_t budget = kv_cache_budget(sc->g->kv);
	uint32_t want = sc->cfg.recall_budget ? sc->cfg.recall_budget : budget / 8;
	return KVS_MIN(want, budget > m ? budget - m : 0);
}

/* Whether this cold tier's scorer needs the turn's queries. */
static bool scold_probes(const struct session_cold *sc)
{
	return sc->cfg.scorer != NULL || recall_table[sc->cfg.recall].probe;
}

/* Choose up to want tokens of blocks (q: n_q probe queries or NULL) and
 * tell the hooks; the tokens chosen. */
static uint32_t scold_choose(struct session_cold *sc, const char *text, const float *q,
                             uint32_t n_q, uint32_t want, uint32_t index,
                             const struct session_hooks *h)
{
	struct store_cold_hit *hits = NULL;
	size_t n_hits = 0;
	struct err e;
	struct store_cold_query query = { .text = text, .q = q, .n_q = n_q };
	query.rank = recall_table[sc->cfg.recall].rank;
	const char *name = recall_table[sc->cfg.recall].name;
	if (sc->cfg.scorer != NULL) {
		query.rank = STORE_COLD_SCORES;
		query.scorer = sc->cfg.scorer;
		query.scorer_ud = sc->cfg.scorer_ud;
		name = sc->cfg.scorer_name ? sc->cfg.scorer_name : "custom";
	}
	if (store_cold_recall_by(sc->c, &query, want, &hits, &n_hits, &e) != KVS_OK) {
		struct session_cold_event ev = { .kind = SESSION_COLD_FAILED,
			                             .index = index,
			                             .msg = e.msg };
		scold_emit(h, &ev);
		return 0;
	}
	uint32_t n = 0;
	for (size_t i = 0; i < n_hits; i++)
		n += hits[i].n_tokens;
	if (n_hits > 0) {
		struct session_cold_event ev = { .kind = SESSION_COLD_RECALL, .index = index };
		ev.hits = hits;
		ev.n_hits = n_hits;
		ev.tokens = n;
		ev.scorer = name;
		scold_emit(h, &ev);
	}
	free(hits);
	return n;
}

uint32_t scold_recall(struct session_cold *sc, const char *text, const int32_t *ids, size_t n_ids,
                      uint32_t m, uint32_t index, const struct session_hooks *h)
{
	sc->n_chosen = 0;
	sc->reserved = 0;
	if (sc->c == NULL || sc->cfg.recall == SESSION_RECALL_OFF || !store_cold_attached(sc->c))
		return 0;
	uint32_t want = scold_want(sc, m);
	if (want == 0)
		return 0;
	if (!scold_probes(sc)) {
		sc->n_chosen = scold_choose(sc, text, NULL, 0, want, index, h);
		return sc->n_chosen;
	}
	/* a probing scorer chooses after the eviction: room for all of want,
	 * once there is something to recall */
	if (!store_cold_has_blocks(sc->c))
		return 0;
	sc->reserved = want;
	sc->index = index;
	sc->m = m;
	free(sc->text);
	sc->text = xstrdup(text);
	sc->n_probe = (uint32_t)KVS_MIN(n_ids, (size_t)SCOLD_PROBE_CTX);
	free(sc->probe);
	sc->probe = xmallocarray(KVS_MAX(sc->n_probe, 1u), sizeof *sc->probe);
	memcpy(sc->probe, ids + (n_ids - sc->n_probe), sc->n_probe * sizeof *ids);
	return want;
}

/* Probe the turn (its last prompt tokens) and choose with its queries;
 * without a probe (no free slots, a backend without queries) the words
 * alone rank, said once. */
static void scold_choose_probed(struct session_cold *sc, const struct session_hooks *h)
{
	const struct hparams *hp = &sc->g->model->hp;
	size_t per = (size_t)hp->n_layer * hp->n_head * hp->head_dim;
	struct err e;
	const float *q = NULL;
	uint32_t n_q = 0;
	if (sc->n_probe > 0) {
		if (sc->q == NULL)
			sc->q = xmallocarray((size_t)SCOLD_PROBE_CTX * per, sizeof *sc->q);
		if (kv_cache_probe(sc->g->kv, sc->probe, sc->n_probe, sc->q, &e) == KVS_OK) {
			n_q = KVS_MIN(sc->n_probe, (uint32_t)SCOLD_PROBE_Q);
			q = sc->q + (size_t)(sc->n_probe - n_q) * per;
		} else if (!sc->warned_probe) {
			log_warn("cold tier: %s; recall ranks by the turn's words alone", e.msg);
			sc->warned_probe = true;
		}
	}
	/* the eviction may have made less room than reserved: never more than there is */
	struct kv_cache *kv = sc->g->kv;
	uint32_t used = kv_cache_n(kv) + sc->m, budget = kv_cache_budget(kv);
	uint32_t room = budget > used ? budget - used : 0;
	uint32_t want = KVS_MIN(sc->reserved, room);
	sc->n_chosen = want ? scold_choose(sc, sc->text, q, n_q, want, sc->index, h) : 0;
}

void scold_place(struct session_cold *sc, const struct session_hooks *h)
{
	struct err e;
	if (sc->c == NULL)
		return;
	if (sc->reserved > 0) {
		scold_choose_probed(sc, h);
		sc->reserved = 0;
		free(sc->text);
		sc->text = NULL;
	}
	if (sc->n_chosen == 0)
		return;
	sc->n_chosen = 0;
	if (store_cold_place(sc->c, &e) != KVS_OK) {
		struct session_cold_event ev = { .kind = SESSION_COLD_FAILED, .msg = e.msg };
		scold_emit(h, &ev);
		return;
	}
	sc->g->n_past = kv_cache_n(sc->g->kv);
}

void scold_flush(struct session_cold *sc, uint32_t index, const struct session_hooks *h)
{
	struct store_cold_flush_info fi;
	struct err e;
	if (sc->c == NULL || store_cold_stopped(sc->c) || !store_cold_attached(sc->c))
		return;
	kv_cache_cold_sync(sc->g->kv); /* evictions whose rows were still being copied */
	if (store_cold_flush(sc->c, index, &fi, &e) != KVS_OK) {
		store_cold_stop(sc->c);
		struct session_cold_event ev = { .kind = SESSION_COLD_STOP, .index = index, .msg = e.msg };
		scold_emit(h, &ev);
		return;
	}
	if (fi.blocks == 0 && fi.dropped_blocks == 0)
		return;
	struct session_cold_event ev = { .kind = SESSION_COLD_WRITE, .index = index };
	ev.blocks = fi.blocks;
	ev.tokens = fi.tokens;
	ev.dropped_blocks = fi.dropped_blocks;
	ev.dropped_tokens = fi.dropped_tokens;
	scold_emit(h, &ev);
}
