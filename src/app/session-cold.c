/*
 * session-cold.c: a chat session's cold tier, between the KV cache's
 * eviction listener and the store's cold blocks (store_cold_*).
 *
 * Order of a user turn with the cold tier on (session.c calls these):
 *   1. scold_recall: the turn's text selects blocks (FTS5, BM25) up to the
 *      recall budget, which is at most what the budget leaves beside the
 *      turn's m incoming tokens;
 *   2. the turn's eviction makes room for m plus the chosen tokens (one
 *      eviction, as without recall);
 *   3. scold_place: the blocks go back into the cache by original
 *      position, before the turn's tokens, kept through this turn;
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

struct session_cold {
	struct gen *g;
	struct session_cold_config cfg;
	struct store_cold *c;
	uint32_t n_chosen; /* tokens chosen by the last scold_recall, not yet placed */
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
	*out = sc;
}

void scold_free(struct session_cold *sc)
{
	if (sc == NULL)
		return;
	kv_cache_set_cold(sc->g->kv, NULL, NULL);
	store_cold_free(sc->c);
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

uint32_t scold_recall(struct session_cold *sc, const char *text, uint32_t m, uint32_t index,
                      const struct session_hooks *h)
{
	struct store_cold_hit *hits = NULL;
	size_t n_hits = 0;
	struct err e;
	sc->n_chosen = 0;
	if (sc->c == NULL || sc->cfg.recall == SESSION_RECALL_OFF || !store_cold_attached(sc->c))
		return 0;
	uint32_t budget = kv_cache_budget(sc->g->kv);
	uint32_t want = sc->cfg.recall_budget ? sc->cfg.recall_budget : budget / 8;
	uint32_t room = budget > m ? budget - m : 0;
	want = KVS_MIN(want, room);
	if (want == 0)
		return 0;
	if (store_cold_recall(sc->c, text, want, &hits, &n_hits, &e) != KVS_OK) {
		struct session_cold_event ev = { .kind = SESSION_COLD_FAILED,
			                             .index = index,
			                             .msg = e.msg };
		scold_emit(h, &ev);
		return 0;
	}
	for (size_t i = 0; i < n_hits; i++)
		sc->n_chosen += hits[i].n_tokens;
	if (n_hits > 0) {
		struct session_cold_event ev = { .kind = SESSION_COLD_RECALL, .index = index };
		ev.hits = hits;
		ev.n_hits = n_hits;
		ev.tokens = sc->n_chosen;
		scold_emit(h, &ev);
	}
	free(hits);
	return sc->n_chosen;
}

void scold_place(struct session_cold *sc, const struct session_hooks *h)
{
	struct err e;
	if (sc->c == NULL || sc->n_chosen == 0)
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
