/*
 * cold.c: the workbench's view of the cold tier (--cold on): the blocks
 * each turn recalled, what the tier wrote, and its failures.
 *
 * The worker forwards the session's cold-tier events (WORKER_EV_COLD,
 * deep copies). A recall's event comes before the cache's own recall
 * event, which flags the tokens KV_FLAG_RECALLED; the view keeps the last
 * TUI_RECALLS blocks (a ring: positions, turn, summary score, BM25) so the
 * retention strip can say of a recalled token where it came from and why.
 * The KV pane's recalled region and the strip's colour come from the flag
 * (view.c), the status item from cold_on and cold_temp (chrome.c).
 */
#include "tui/tui-int.h"

#include <math.h>
#include <stdio.h>

void tui_cold_apply(struct tui *t, const struct session_cold_event *c)
{
	switch (c->kind) {
	case SESSION_COLD_WRITE: t->cold_written += c->tokens; break;
	case SESSION_COLD_RECALL:
		for (size_t i = 0; i < c->n_hits; i++) {
			const struct store_cold_hit *h = &c->hits[i];
			t->recalls[t->n_recalls++ % TUI_RECALLS] =
			        (struct tui_recall){ h->pos0, h->pos1, h->turn, h->summary, h->bm25 };
			t->cold_recalled += h->n_tokens;
		}
		break;
	case SESSION_COLD_STOP:
		t->cold_stopped = true;
		tui_status(t, true, "cold tier: %s; cold writes stopped, the chat goes on",
		           c->msg ? c->msg : "?");
		break;
	case SESSION_COLD_REFUSED:
		t->cold_on = false;
		tui_status(t, true, "cold tier off: %s", c->msg ? c->msg : "?");
		break;
	case SESSION_COLD_FAILED:
		tui_status(t, true, "cold tier: %s; the turn goes on", c->msg ? c->msg : "?");
		break;
	}
}

const struct tui_recall *tui_cold_recall_of(const struct tui *t, int32_t pos)
{
	uint32_t n = t->n_recalls < TUI_RECALLS ? t->n_recalls : TUI_RECALLS;
	for (uint32_t k = 0; k < n; k++) {
		const struct tui_recall *r = &t->recalls[(t->n_recalls - 1 - k) % TUI_RECALLS];
		if (pos >= r->pos0 && pos <= r->pos1)
			return r;
	}
	return NULL;
}

void tui_cold_why(const struct tui *t, int32_t pos, char *why, size_t cap)
{
	const struct tui_recall *rc = tui_cold_recall_of(t, pos);
	char sum[24];
	if (rc == NULL) {
		snprintf(why, cap, "recalled from the cold tier");
		return;
	}
	if (isnan(rc->summary))
		snprintf(sum, sizeof sum, "-");
	else
		snprintf(sum, sizeof sum, "%.2f", rc->summary);
	snprintf(why, cap, "recalled from turn %u, summary score %s, BM25 %.1f", rc->turn, sum,
	         rc->bm25);
}
