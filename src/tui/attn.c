/*
 * attn.c: the attention pane. Its header names the layer and head (or the
 * head aggregation) with their ranges and the query; the sparsity line and
 * the top keys come from the shown step (named by that step's own key
 * labels: the cache may have changed since). The heatmap is a grid of
 * queries x keys over the steps of the history, keys on one axis by
 * original position (a key the cache did not hold at a step is blank), or
 * the shown row alone wrapped (:attn row). The grid's cursor is no state
 * of its own: its row is the shown step (step_back) and its column the
 * retention strip's selected token, so the two views are linked both ways
 * by construction. The layer x head overview follows where the height
 * leaves the grid six queries or more. Everything draws clipped to the
 * pane's rectangle.
 */
#include "tui/tui-int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const tui_agg_names[AGG_COUNT] = { "head", "mean", "max" };
static const char *const tui_ov_names[OV_COUNT] = { "entropy", "sink mass", "k90" };

/* The sparsity line of the row shown: its summary (the head's own, or
 * one computed on the aggregated row, renormalised: a max row does not
 * sum to 1). */
static void attn_summary(const struct tui *t, const struct tui_step *s, const float *row,
                         uint32_t n, uint32_t layer, uint32_t head, struct kv_head_summary *sum)
{
	float tot = 0, *norm, *scratch;

	if (t->agg == AGG_HEAD && s->heads != NULL) {
		*sum = s->heads[(size_t)layer * s->n_head + head];
		return;
	}
	norm = xmallocarray(n, sizeof *norm);
	scratch = xmallocarray(n, sizeof *scratch);
	for (uint32_t k = 0; k < n; k++)
		tot += row[k];
	for (uint32_t k = 0; k < n; k++)
		norm[k] = tot > 0 ? row[k] / tot : 0;
	kv_head_summarize(norm, n, 10, scratch, sum);
	free(norm);
	free(scratch);
}

/* "top keys: #12 'Paris' .31  #0 '<|im_start|>' .22 ...": the largest
 * weights of the row shown, each key named as the cache held it at that
 * step (the step's own labels: the cache may have changed since, and a
 * key named from today's cache could be a token later than its query). */
static void attn_top_keys(const struct tui *t, const struct tui_step *s, struct tui_grid *g,
                          struct tui_rect r, int y, const float *row, uint32_t n)
{
	int x = r.x + tui_grid_printf(g, r, r.x, y, R_DIM, "top keys:");
	uint32_t top[6];
	int nt = 0;

	if (s->key_pos == NULL || s->key_tok == NULL) {
		tui_grid_printf(g, r, x, y, R_DIM, " (the keys of this step are not known)");
		return;
	}
	/* the 6 largest weights, by insertion */
	for (uint32_t k = 0; k < n; k++) {
		bool full = nt == 6;
		int p = full ? 5 : nt++;
		if (full && row[k] <= row[top[5]])
			continue; /* not among the 6 largest so far */
		top[p] = k;
		while (p > 0 && row[top[p]] > row[top[p - 1]]) {
			uint32_t tmp = top[p];
			top[p] = top[p - 1];
			top[p - 1] = tmp;
			p--;
		}
	}
	for (int i = 0; i < nt; i++) {
		char lab[64];
		struct tui_tok tk = { 0 };
		tui_piece(t, s->key_tok[top[i]], tk.text, sizeof tk.text);
		tui_tok_label(g, &tk, lab, sizeof lab);
		x += tui_grid_printf(g, r, x, y, i == 0 ? R_HEAT7 : R_NORMAL, "  #%d '%s' %.2f",
		                     s->key_pos[top[i]], lab, (double)row[top[i]]);
	}
}

/* Bins (tui_heat_bin's split of n keys) that sparse attention left out:
 * out[b] = 1 when bin b holds a key of the step (sel 0 or 1; 2: absent)
 * and none of them was attended (sel 1). */
static void attn_unsel_bins(const uint8_t *sel, uint32_t n, uint32_t n_bins, uint8_t *out)
{
	for (uint32_t b = 0; b < n_bins; b++) {
		uint64_t lo = (uint64_t)b * n / n_bins, hi = (uint64_t)(b + 1) * n / n_bins;
		bool present = false, chosen = false;
		if (hi == lo)
			hi = lo + 1;
		for (uint64_t k = lo; k < hi && k < n; k++) {
			present |= sel[k] != 2;
			chosen |= sel[k] == 1;
		}
		out[b] = present && !chosen;
	}
}

/* A heat cell: a bin sparse attention left out shows a cross, coloured by
 * the dense mass it missed (the shadow's weight), so a key not attended
 * never looks like one that got no mass (a blank). */
static void attn_cell(struct tui_grid *g, int x, int y, uint8_t lv, bool unsel, bool cursor)
{
	uint32_t cp = unsel ? (g->ascii ? 'x' : 0xd7) : tui_glyph_heat(g, lv);
	tui_grid_put(g, x, y, cp, cursor ? R_SELECTED : unsel && lv == 0 ? R_DIM : R_HEAT0 + lv);
}

/* The shown row alone: keys in cache order, row-major, one key or bin per
 * cell, then the scale (and with sel, the step's choice (n), the mark of
 * keys not attended); returns the next free row. */
static int attn_row_map(struct tui_grid *g, struct tui_rect r, int y, int rows, const float *row,
                        uint32_t n, const uint8_t *sel)
{
	uint32_t cols = (uint32_t)r.w, bins = KVS_MIN(cols * (uint32_t)rows, n);
	uint8_t *lv = xmalloc(bins ? bins : 1), *un = xcalloc(bins ? bins : 1, 1);
	int x;

	tui_heat_bin(row, n, bins, 1e-4f, lv);
	if (sel != NULL)
		attn_unsel_bins(sel, n, bins, un);
	for (uint32_t b = 0; b < bins; b++)
		attn_cell(g, r.x + (int)(b % cols), y + (int)(b / cols), lv[b], un[b], false);
	free(lv);
	free(un);
	y += (int)((bins + cols - 1) / cols);
	x = r.x +
	        tui_grid_printf(g, r, r.x, y, R_DIM, "keys 0..%u, %.1f per cell, log scale 1e-4 ",
	                        n - 1, (double)n / bins);
	for (int l = 0; l < TUI_HEAT_LEVELS; l++)
		tui_grid_put(g, x++, y, tui_glyph_heat(g, l == 0 ? 1 : l), R_HEAT0 + l);
	x += tui_grid_printf(g, r, x, y, R_DIM, " 1");
	if (sel != NULL)
		tui_grid_printf(g, r, x, y, R_DIM, "  %s not attended (sparse)",
		                g->ascii ? "x" : "\xc3\x97");
	return y + 1;
}

/* The bin of key k when n keys fall in n_bins (tui_heat_bin's split). */
static uint32_t attn_bin_of(uint32_t k, uint32_t n, uint32_t n_bins)
{
	uint32_t b = (uint32_t)((uint64_t)k * n_bins / n);

	while (b + 1 < n_bins && (uint64_t)(b + 1) * n / n_bins <= k)
		b++;
	while (b > 0 && (uint64_t)b * n / n_bins > k)
		b--;
	return b;
}

#define ATTN_LABEL_W 14 /* "#1234 'piece' " before each grid row */

/* The queries x keys grid: one row per step of the history (oldest at the
 * top, up to rows - 2 of them around the shown one), one column per key
 * by original position (or per bin of keys), a key not in the cache at a
 * step blank; axis ticks under it, then the cursor's line. The cursor is
 * the shown step (Shift-Up/Down) and the selected token (Shift-Left/Right,
 * the strip): the strip and the grid share it. Returns the next free row. */
static int attn_grid(struct tui *t, struct tui_grid *g, struct tui_rect r, int y, int rows)
{
	const struct tui_step *st[TUI_STEP_HISTORY], *shown = tui_step_shown(t);
	uint32_t n_st = tui_attn_steps(t, st), n_keys, cols, first, n_rows, sel_k = UINT32_MAX;
	int32_t *pos, *tok;
	float *full, *row;
	uint8_t *lv;
	int gx = r.x + ATTN_LABEL_W, sel_b = -1;
	char lab[64];

	if (n_st == 0 || r.w < ATTN_LABEL_W + 8)
		return y;
	pos = tui_attn_keys(st, n_st, &n_keys, &tok);
	cols = KVS_MIN((uint32_t)(r.w - ATTN_LABEL_W), n_keys);
	/* the rows: the last ones, or a window that holds the shown step */
	n_rows = KVS_MIN(n_st, (uint32_t)(rows - 2));
	first = n_st - n_rows;
	for (uint32_t i = 0; i < n_st; i++)
		if (st[i] == shown && i < first)
			first = i;
	if (t->sel_tok >= 0) {
		int32_t *hit = bsearch(&t->sel_tok, pos, n_keys, sizeof *pos, tui_cmp_i32);
		if (hit != NULL) {
			sel_k = (uint32_t)(hit - pos);
			sel_b = (int)attn_bin_of(sel_k, n_keys, cols);
		}
	}
	full = xcalloc(n_keys, sizeof *full);
	row = NULL;
	lv = xmalloc(cols);
	uint8_t *fsel = xmalloc(n_keys), *un = xmalloc(cols), *ssel = NULL;
	bool any_sel = false;
	/* for clicks: the cells, the key axis, each row's step */
	t->grid.cells = (struct tui_rect){ gx, y, (int)cols, (int)n_rows };
	t->grid.n_keys = n_keys;
	free(t->grid.pos);
	t->grid.pos = xmallocarray(n_keys, sizeof *pos);
	memcpy(t->grid.pos, pos, n_keys * sizeof *pos);
	for (uint32_t i = first; i < first + n_rows; i++)
		for (uint32_t k = 0; k < KVS_MIN(t->n_steps, (uint32_t)TUI_STEP_HISTORY); k++)
			if (&t->steps[(t->n_steps - 1 - k) % TUI_STEP_HISTORY] == st[i])
				t->grid.back[i - first] = k;
	float cursor_w = NAN;
	for (uint32_t i = first; i < first + n_rows; i++) {
		uint32_t nc = st[i]->n_cached;
		bool is_shown = st[i] == shown;
		free(row);
		row = xmallocarray(nc, sizeof *row);
		nc = tui_attn_row_of(t, st[i], row, nc);
		for (uint32_t k = 0; k < n_keys; k++) {
			full[k] = 0;
			fsel[k] = 2;
		}
		free(ssel);
		ssel = xmalloc(st[i]->n_cached + 1);
		bool has_sel = tui_sel_row_of(t, st[i], ssel);
		any_sel |= has_sel;
		for (uint32_t k = 0; k < nc; k++) {
			int32_t *hit = bsearch(&st[i]->key_pos[k], pos, n_keys, sizeof *pos, tui_cmp_i32);
			full[hit - pos] = row[k];
			fsel[hit - pos] = has_sel ? ssel[k] : 1;
			if (is_shown && (uint32_t)(hit - pos) == sel_k)
				cursor_w = row[k];
		}
		tui_heat_bin(full, n_keys, cols, 1e-4f, lv);
		attn_unsel_bins(fsel, n_keys, cols, un);
		struct tui_tok tk = { 0 };
		tui_piece(t, st[i]->query.token, tk.text, sizeof tk.text);
		tui_tok_label(g, &tk, lab, sizeof lab);
		struct tui_rect lr = { r.x, r.y, ATTN_LABEL_W - 1, r.h };
		tui_grid_printf(g, lr, r.x, y, is_shown ? R_SELECTED : R_DIM, "#%-4d '%s'",
		                st[i]->query.orig_pos, lab);
		for (uint32_t b = 0; b < cols; b++)
			attn_cell(g, gx + (int)b, y, lv[b], un[b], is_shown && (int)b == sel_b);
		y++;
	}
	free(fsel);
	free(un);
	free(ssel);
	/* axis ticks: a key position every 12 columns, the selected one marked */
	if (any_sel) /* the sparse legend in place of the axis name */
		tui_grid_printf(g, r, r.x, y, R_DIM, "%s=not attended", g->ascii ? "x" : "\xc3\x97");
	else
		tui_grid_printf(g, r, r.x, y, R_DIM, "queries/keys");
	for (uint32_t b = 0; b < cols; b += 12) {
		char tick[16];
		int tw = snprintf(tick, sizeof tick, "|%d", pos[(uint64_t)b * n_keys / cols]);
		if (gx + (int)b + tw <= r.x + r.w) /* whole, or not at all */
			tui_grid_text(g, r, gx + (int)b, y, R_DIM, tick, (size_t)tw);
	}
	if (sel_b >= 0)
		tui_grid_put(g, gx + sel_b, y, '^', R_SELECTED);
	y++;
	/* the cursor: its query, its key, the weight */
	{
		char ql[64], kl[64];
		struct tui_tok tk = { 0 };
		tui_piece(t, shown->query.token, tk.text, sizeof tk.text);
		tui_tok_label(g, &tk, ql, sizeof ql);
		if (sel_k == UINT32_MAX) {
			tui_grid_printf(g, r, r.x, y, R_DIM,
			                "%u quer%s x %u key%s: Shift-Left/Right or a strip click picks a key",
			                n_rows, n_rows == 1 ? "y" : "ies", n_keys, n_keys == 1 ? "" : "s");
		} else {
			tui_piece(t, tok[sel_k], tk.text, sizeof tk.text);
			tui_tok_label(g, &tk, kl, sizeof kl);
			if (isnan(cursor_w))
				tui_grid_printf(g, r, r.x, y, R_TITLE,
				                "query #%d '%s' -> key #%d '%s': not in the cache at this step",
				                shown->query.orig_pos, ql, pos[sel_k], kl);
			else
				tui_grid_printf(g, r, r.x, y, R_TITLE, "query #%d '%s' -> key #%d '%s': %.4f",
				                shown->query.orig_pos, ql, pos[sel_k], kl, (double)cursor_w);
		}
		y++;
	}
	free(lv);
	free(row);
	free(full);
	free(pos);
	free(tok);
	return y;
}

void attn_pane(struct tui *t, struct tui_grid *g, struct tui_rect box)
{
	struct tui_rect r = tui_grid_box(g, box, "Attention", false);
	const struct tui_step *s = tui_step_shown(t);
	struct kv_head_summary sum;
	float *row;
	uint32_t n, layer, head;
	int y, ov_rows, hm_rows;
	char qlab[64];

	if (r.w < 8 || r.h < 2)
		return;
	if (s == NULL) {
		tui_grid_printf(g, r, r.x, r.y, R_INFO, "no attention yet: send a message");
		return;
	}
	layer = KVS_MIN(t->layer, s->n_layer ? s->n_layer - 1 : 0);
	head = KVS_MIN(t->head, s->n_head ? s->n_head - 1 : 0);
	snprintf(qlab, sizeof qlab, "?");
	if (s->query.orig_pos >= 0 && (uint32_t)s->query.orig_pos < t->n_toks)
		tui_tok_label(g, &t->toks[s->query.orig_pos], qlab, sizeof qlab);
	/* a model with sliding-window layers: say which kind this one is (a
	 * local layer's keys beyond the window get no weight, whatever the
	 * cache holds) */
	char kind[48] = "";
	if (t->hp != NULL && t->hp->n_swa > 0 && model_layer_window(t->hp, layer) > 0)
		snprintf(kind, sizeof kind, "  local, window %u", t->hp->n_swa);
	else if (t->hp != NULL && t->hp->n_swa > 0)
		snprintf(kind, sizeof kind, "  global");
	if (t->agg == AGG_HEAD)
		tui_grid_printf(g, r, r.x, r.y, R_TITLE,
		                "layer %u [0..%u]%s  head %u [0..%u]  [head]  query #%d '%s'%s", layer,
		                s->n_layer - 1, kind, head, s->n_head - 1, s->query.orig_pos, qlab,
		                t->step_back ? "  (past step)" : "");
	else /* no one head is shown: say over how many */
		tui_grid_printf(g, r, r.x, r.y, R_TITLE,
		                "layer %u [0..%u]%s  heads: %s of %u  [%s]  query #%d '%s'%s", layer,
		                s->n_layer - 1, kind, tui_agg_names[t->agg], s->n_head,
		                tui_agg_names[t->agg], s->query.orig_pos, qlab,
		                t->step_back ? "  (past step)" : "");
	y = r.y + 1;
	row = xmallocarray(s->n_cached + 1, sizeof *row);
	n = tui_attn_row(t, row, s->n_cached);
	ov_rows = s->heads ? (int)s->n_head + 1 : 0;
	if (n > 0) {
		attn_summary(t, s, row, n, layer, head, &sum);
		tui_grid_printf(
		        g, r, r.x, y++, R_NORMAL,
		        "%u key%s  entropy %.2f nats  90%% of mass in %u key%s (%.1f%%)  sink %.2f  "
		        "top-10 %.2f",
		        n, n == 1 ? "" : "s", (double)sum.entropy, sum.k90, sum.k90 == 1 ? "" : "s",
		        100.0 * sum.k90 / n, (double)sum.sink_mass, (double)sum.topk_mass);
		attn_top_keys(t, s, g, r, y++, row, n);
		/* the heatmap: queries x keys, or the shown row alone, wrapped */
		/* the overview goes when the grid would get fewer than 6 queries */
		hm_rows = r.h - (y - r.y) - 1 - ov_rows;
		if (hm_rows < (t->attn_view == ATTN_GRID ? 8 : 1)) {
			ov_rows = 0;
			hm_rows = r.h - (y - r.y) - 1;
		}
		if (t->attn_view == ATTN_GRID && hm_rows >= 3)
			y = attn_grid(t, g, r, y, hm_rows + 1);
		else if (hm_rows > 0) {
			uint8_t *sel = xmalloc(s->n_cached + 1);
			y = attn_row_map(g, r, y, hm_rows, row, n, tui_sel_row_of(t, s, sel) ? sel : NULL);
			free(sel);
		}
	} else {
		const char *why = s->heads != NULL && t->step_back > 0
		        ? "rows of this past step were dropped (memory budget); summaries below"
		        : "attention rows are not captured (capture summary)";
		tui_grid_text(g, r, r.x, y++, R_INFO, why, strlen(why));
	}
	/* the layer x head overview: one cell per head (rows) and layer (columns) */
	if (ov_rows > 0 && s->heads != NULL && y + 1 < r.y + r.h) {
		uint32_t nn = KVS_MAX(s->n_cached, 2u);
		tui_grid_printf(g, r, r.x, y++, R_DIM, "overview: %s per head (rows) and layer (columns)",
		                tui_ov_names[t->overview]);
		for (uint32_t h = 0; h < s->n_head && y < r.y + r.h; h++, y++) {
			tui_grid_printf(g, r, r.x, y, h == head ? R_TITLE : R_DIM, "h%-2u", h);
			for (uint32_t l = 0; l < s->n_layer && (int)(4 + l) < r.w; l++) {
				const struct kv_head_summary *hs = &s->heads[(size_t)l * s->n_head + h];
				float v = t->overview == OV_ENTROPY ? hs->entropy / logf((float)nn)
				        : t->overview == OV_SINK    ? hs->sink_mass
				                                    : (float)hs->k90 / (float)nn;
				int lvl = (int)(v * (TUI_HEAT_LEVELS - 1) + 0.5f);
				bool sel = l == layer && h == head;
				lvl = lvl < 0 ? 0 : lvl >= TUI_HEAT_LEVELS ? TUI_HEAT_LEVELS - 1 : lvl;
				tui_grid_put(g, r.x + 4 + (int)l, y,
				             sel ? (g->ascii ? 'X' : 0x25c9) : tui_glyph_heat(g, KVS_MAX(lvl, 1)),
				             sel ? R_SELECTED : R_HEAT0 + lvl);
			}
		}
	}
	free(row);
}
