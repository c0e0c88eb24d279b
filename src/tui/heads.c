/*
 * heads.c: which (layer, KV head) pairs keep a token, for the retention
 * view's selected token.
 *
 * With per-head keep-sets (snapkv and h2o heads=1, kvzip) each (layer, KV
 * head) keeps its own tokens; the count alone ("by 57/90 heads") does not
 * say whether the retrieval heads of the deep layers kept a fact or only
 * the local heads of the first ones. The worker's snapshot, sent after
 * every command, carries the cache's whole map (kv_cache_head_map:
 * (n_cached, n_layer, n_head_kv) bytes); the view model keeps a copy
 * (tui.hk, owned, by original position ascending) until the next snapshot
 * replaces it. A token fed after that snapshot is kept by every pair until
 * an eviction, and the eviction's command ends in a snapshot, so the copy
 * is stale only inside a command (a reply being decoded); there the view
 * shows no map for a token the copy lacks.
 *
 * The retention view draws, above its details line, a header naming the
 * pairs in the minority ("kept by 57/90 (layer, KV head) pairs; dropped
 * by L3 h1, L7 h0 h2") and, where the pane is tall enough, the map: one
 * row per KV head, one column per layer, a full block where that pair
 * keeps the token and a light one where it dropped it. With one row to
 * spare (the default layout's short strip) the map folds into a digit per
 * layer: how many of its KV heads keep the token.
 */
#include "tui/tui-int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tui_heads_free(struct tui *t)
{
	free(t->hk);
	free(t->hk_pos);
	t->hk = NULL;
	t->hk_pos = NULL;
	t->n_hk = 0;
}

void tui_heads_snapshot(struct tui *t, const struct worker_event *ev)
{
	tui_heads_free(t);
	if (ev->head_keep == NULL || ev->hk_layer == 0 || ev->hk_head_kv == 0)
		return;
	size_t pairs = (size_t)ev->hk_layer * ev->hk_head_kv;
	t->hk = xmallocarray(ev->n_toks ? ev->n_toks * pairs : 1, 1);
	t->hk_pos = xmallocarray(ev->n_toks ? ev->n_toks : 1, sizeof *t->hk_pos);
	memcpy(t->hk, ev->head_keep, ev->n_toks * pairs);
	for (uint32_t i = 0; i < ev->n_toks; i++)
		t->hk_pos[i] = ev->toks[i].orig_pos;
	t->n_hk = ev->n_toks;
	t->hk_layer = ev->hk_layer;
	t->hk_head_kv = ev->hk_head_kv;
}

const uint8_t *tui_heads_of(const struct tui *t, int32_t pos)
{
	/* cache order is stream order: the positions ascend */
	uint32_t lo = 0, hi = t->n_hk;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (t->hk_pos[mid] < pos)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo >= t->n_hk || t->hk_pos[lo] != pos)
		return NULL;
	return t->hk + (size_t)lo * t->hk_layer * t->hk_head_kv;
}

size_t tui_heads_list(const uint8_t *m, uint32_t n_layer, uint32_t n_head_kv, bool kept, char *buf,
                      size_t cap)
{
	size_t o = 0;
	if (cap == 0)
		return 0;
	buf[0] = '\0';
	for (uint32_t l = 0; l < n_layer; l++) {
		bool named = false;
		for (uint32_t h = 0; h < n_head_kv; h++) {
			if ((m[(size_t)l * n_head_kv + h] != 0) != kept)
				continue;
			int k = named ? snprintf(buf + o, cap - o, " h%u", h)
			              : snprintf(buf + o, cap - o, "%sL%u h%u", o ? ", " : "", l, h);
			if (k < 0 || (size_t)k >= cap - o) {
				/* cut: end with an ellipsis where it fits */
				if (cap >= 4)
					memcpy(buf + cap - 4, "...", 4);
				return cap - 1;
			}
			o += (size_t)k;
			named = true;
		}
	}
	return o;
}

int tui_heads_rows(const struct tui *t, int32_t pos, int spare)
{
	if (spare < 1 || t->stats.n_head_sets == 0 || tui_heads_of(t, pos) == NULL)
		return 0;
	int want = 1 + (int)t->hk_head_kv;
	return want <= spare ? want : spare >= 2 ? 2 : 1;
}

void tui_heads_draw(const struct tui *t, struct tui_grid *g, struct tui_rect r, int y, int rows,
                    int32_t pos)
{
	const uint8_t *m = tui_heads_of(t, pos);
	if (m == NULL || rows < 1)
		return;
	uint32_t nl = t->hk_layer, nkv = t->hk_head_kv, pairs = nl * nkv, kept = 0;
	for (uint32_t i = 0; i < pairs; i++)
		kept += m[i] != 0;
	/* the header names the minority: the pairs that dropped it, or those that keep it */
	int x = r.x +
	        tui_grid_printf(g, r, r.x, y, R_TITLE, "#%d kept by %u/%u (layer, KV head) pairs", pos,
	                        kept, pairs);
	if (kept < pairs) {
		char list[192];
		bool name_kept = kept * 2 < pairs;
		tui_heads_list(m, nl, nkv, name_kept, list, sizeof list);
		tui_grid_printf(g, r, x, y, R_DIM, "; %s by %s", name_kept ? "kept" : "dropped", list);
	}
	if (rows >= 2 && rows < 1 + (int)nkv) {
		/* short of rows: per layer, how many of its KV heads keep it */
		x = r.x +
		        tui_grid_printf(g, r, r.x, y + 1, R_DIM,
		                        "KV heads keeping it, layers 0-%u: ", nl - 1);
		for (uint32_t l = 0; l < nl && x < r.x + r.w; l++, x++) {
			uint32_t k = 0;
			for (uint32_t h = 0; h < nkv; h++)
				k += m[(size_t)l * nkv + h] != 0;
			uint32_t cp = k > 9 ? '+' : '0' + k;
			tui_grid_put(g, x, y + 1, cp, k == nkv ? R_KEPT : k == 0 ? R_EVICTED : R_KEY);
		}
		return;
	}
	/* the map: a row per KV head, a column per layer */
	for (uint32_t h = 0; h < nkv && (int)h + 1 < rows; h++) {
		int yy = y + 1 + (int)h;
		x = r.x + tui_grid_printf(g, r, r.x, yy, R_DIM, "kv%-2u ", h);
		for (uint32_t l = 0; l < nl && x < r.x + r.w; l++, x++) {
			bool k = m[(size_t)l * nkv + h] != 0;
			tui_grid_put(g, x, yy, tui_glyph_bar(g, k), k ? R_KEPT : R_EVICTED);
		}
		if (h == 0 && x + 2 < r.x + r.w)
			tui_grid_printf(g, r, x + 1, yy, R_DIM, "<- layers 0-%u", nl - 1);
	}
}
