/*
 * sparsity.c: the sparsity pane, sparse attention watched step by step,
 * and the choice the attention view marks.
 *
 * The worker sends, with each captured sparse decode step, the step's
 * choice (struct kv_sparse_view: which keys every (layer, KV head)
 * attended, quest's page bound of each key, the last dense shadow's
 * captured mass and bound tightness) and, in the stats, the figures
 * (struct kv_sparse_stats). The view model keeps the last view (tui.spv,
 * owned) and, on a step with attention rows (a shadow), a copy of its
 * choice beside the rows in the history, so the attention view can draw
 * a key that was not attended differently from one that got no mass.
 *
 * The pane, top to bottom: the mode and step; the keys touched against
 * dense (key-heads and K+V bytes per token); attention time of the plain
 * steps and what the shadow costs apart; the shadow's captured mass, the
 * bound's tightness and the overlap with the step before; then the map:
 * one row per layer (or per group of layers when the height is short),
 * one column per bin of keys in cache order, with the KV heads' captured
 * mass at the row's start. A cell's glyph says whether its keys were
 * chosen (the share of key-heads, a block; a dot: none), its colour the
 * quest bound (low to high within the layer); sinks, the recent window
 * and a pinned document are lettered S, R and D; dense layers '~'.
 *
 * The pane is registered at the first sign of sparse attention (a step,
 * the stats' mode, :sparse, Alt-s), so a dense session's tab bar is
 * unchanged.
 */
#include "tui/tui-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void sparsity_pane(struct tui *t, struct tui_grid *g, struct tui_rect r);

void tui_sparsity_register(void)
{
	static bool done;
	if (done)
		return;
	done = true;
	tui_pane_register(&(struct tui_pane){ "sparsity", "Sparsity", sparsity_pane, false });
}

void tui_sparsity_free(struct tui *t)
{
	worker_sparse_free(t->spv);
	t->spv = NULL;
}

bool tui_sparsity_take(struct tui *t, struct kv_event *ev)
{
	t->spv_fresh = false;
	if (ev->stats.sp.mode != ENGINE_SPARSE_OFF)
		tui_sparsity_register();
	if (ev->sparse == NULL)
		return true;
	tui_sparsity_register();
	worker_sparse_free(t->spv);
	t->spv = ev->sparse;
	t->spv_stats = ev->stats;
	ev->sparse = NULL;
	t->spv_fresh = true;
	return ev->attn != NULL || ev->heads != NULL;
}

void tui_sparsity_step(struct tui *t, struct tui_step *s)
{
	const struct kv_sparse_view *v = t->spv;
	if (!t->spv_fresh || v == NULL || v->n_cached != s->n_cached || v->n_layer != s->n_layer)
		return;
	size_t n = (size_t)v->n_layer * v->n_head_kv * v->n_cached;
	s->sel = xmalloc(n ? n : 1);
	memcpy(s->sel, v->sel, n);
	s->n_head_kv = v->n_head_kv;
}

bool tui_sel_row_of(const struct tui *t, const struct tui_step *s, uint8_t *out)
{
	if (s == NULL || s->sel == NULL || s->n_head_kv == 0 || s->n_head % s->n_head_kv != 0)
		return false;
	uint32_t layer = KVS_MIN(t->layer, s->n_layer - 1), grp = s->n_head / s->n_head_kv;
	const uint8_t *base = s->sel + (size_t)layer * s->n_head_kv * s->n_cached;
	for (uint32_t k = 0; k < s->n_cached; k++) {
		uint8_t any = 0;
		if (t->agg == AGG_HEAD)
			any = base[(size_t)(KVS_MIN(t->head, s->n_head - 1) / grp) * s->n_cached + k];
		else
			for (uint32_t h = 0; h < s->n_head_kv; h++)
				any |= base[(size_t)h * s->n_cached + k];
		out[k] = any != 0;
	}
	return true;
}

/* "1.23 MB" of bytes (decimal megabytes, as llama.cpp's reports). */
static double sparsity_mb(uint64_t bytes)
{
	return (double)bytes / 1e6;
}

/* v with prec decimals, or "-" for NaN, into buf. */
static const char *sparsity_num(char *buf, size_t cap, int prec, double v)
{
	if (isnan(v))
		snprintf(buf, cap, "-");
	else
		snprintf(buf, cap, "%.*f", prec, v);
	return buf;
}

/* One map cell: the layers [l0, l1) over keys [k0, k1) of view v. lo and
 * hi: the rows' bound range for the colour. */
static void sparsity_cell(struct tui_grid *g, int x, int y, const struct kv_sparse_view *v,
                          uint32_t l0, uint32_t l1, uint32_t k0, uint32_t k1, const float *lo,
                          const float *hi)
{
	static const enum tui_role mark_role[] = { R_NORMAL, R_SINK, R_KEPT, R_PINNED };
	static const char mark_ch[] = { ' ', 'S', 'R', 'D' };
	uint8_t mk = v->mark[k0];
	bool all_marked = mk != KV_SPMARK_NONE;
	for (uint32_t k = k0; k < k1; k++)
		all_marked &= v->mark[k] == mk;
	if (all_marked) {
		tui_grid_put(g, x, y, (uint32_t)mark_ch[mk], mark_role[mk]);
		return;
	}
	if (l1 <= v->dense_layers) {
		tui_grid_put(g, x, y, '~', R_DIM);
		return;
	}
	uint64_t chosen = 0, cand = 0;
	double lv = 0;
	uint32_t n_lv = 0;
	for (uint32_t l = KVS_MAX(l0, v->dense_layers); l < l1; l++)
		for (uint32_t k = k0; k < k1; k++) {
			if (v->mark[k] != KV_SPMARK_NONE)
				continue;
			cand += v->n_head_kv;
			for (uint32_t h = 0; h < v->n_head_kv; h++)
				chosen += v->sel[((size_t)l * v->n_head_kv + h) * v->n_cached + k];
			if (v->bound != NULL) {
				float u = v->bound[(size_t)l * v->n_cached + k];
				if (isfinite(u) && hi[l] > lo[l]) {
					lv += (u - lo[l]) / (hi[l] - lo[l]);
					n_lv++;
				}
			}
		}
	double f = cand ? (double)chosen / (double)cand : 0;
	int shade = n_lv ? (int)(lv / n_lv * (TUI_HEAT_LEVELS - 2) + 1.5) : 0;
	if (v->bound == NULL)
		shade = (int)(f * (TUI_HEAT_LEVELS - 2) + 1.5);
	shade = KVS_MIN(KVS_MAX(shade, 1), TUI_HEAT_LEVELS - 1);
	/* chosen: heat glyphs 2..7 by the share chosen; level 1 ('.' in ASCII)
	 * is the dot of none chosen */
	if (chosen == 0)
		tui_grid_put(g, x, y, g->ascii ? '.' : 0xb7, v->bound ? R_HEAT0 + shade : R_DIM);
	else
		tui_grid_put(g, x, y, tui_glyph_heat(g, 2 + (int)(f * (TUI_HEAT_LEVELS - 3) + 0.5)),
		             R_HEAT0 + shade);
}

/* The map: rows of layers, columns of keys; returns the next free row. */
static int sparsity_map(struct tui_grid *g, struct tui_rect r, int y,
                        const struct kv_sparse_view *v)
{
	int rows = r.y + r.h - y;
	int cols = r.w - 9; /* "L12 " and the three mass cells and a space */
	if (rows < 1 || cols < 4 || v->n_cached == 0 || v->n_layer == 0)
		return y;
	uint32_t nl = v->n_layer, per = (nl + (uint32_t)rows - 1) / (uint32_t)rows;
	uint32_t ncol = KVS_MIN((uint32_t)cols, v->n_cached);
	float *lo = xmallocarray(nl, sizeof(float)), *hi = xmallocarray(nl, sizeof(float));
	for (uint32_t l = 0; l < nl; l++) {
		lo[l] = INFINITY;
		hi[l] = -INFINITY;
		for (uint32_t k = 0; v->bound != NULL && k < v->n_cached; k++) {
			float u = v->bound[(size_t)l * v->n_cached + k];
			if (isfinite(u)) {
				lo[l] = u < lo[l] ? u : lo[l];
				hi[l] = u > hi[l] ? u : hi[l];
			}
		}
	}
	for (uint32_t l0 = 0; l0 < nl && y < r.y + r.h; l0 += per, y++) {
		uint32_t l1 = KVS_MIN(l0 + per, nl);
		tui_grid_printf(g, r, r.x, y, R_DIM, "L%-3u", l0); /* a group: its first layer */
		int x = r.x + 4;
		/* the KV heads' captured mass, the lowest over the row's layers */
		for (uint32_t h = 0; h < v->n_head_kv && h < 3; h++) {
			float m = INFINITY;
			for (uint32_t l = l0; l < l1; l++) {
				float mv = v->mass[(size_t)l * v->n_head_kv + h];
				m = mv < m ? mv : m;
			}
			if (isnan(m) || isinf(m))
				tui_grid_put(g, x++, y, '-', R_DIM);
			else
				tui_grid_put(g, x++, y,
				             tui_glyph_heat(g, KVS_MAX(1, (int)(m * (TUI_HEAT_LEVELS - 1) + 0.5f))),
				             R_HEAT0 + KVS_MAX(0, (int)(m * (TUI_HEAT_LEVELS - 1) + 0.5f)));
		}
		x = r.x + 8;
		for (uint32_t b = 0; b < ncol; b++) {
			uint32_t k0 = (uint32_t)((uint64_t)b * v->n_cached / ncol);
			uint32_t k1 = (uint32_t)((uint64_t)(b + 1) * v->n_cached / ncol);
			sparsity_cell(g, x + (int)b, y, v, l0, l1, k0, KVS_MAX(k1, k0 + 1), lo, hi);
		}
	}
	free(lo);
	free(hi);
	return y;
}

static void sparsity_pane(struct tui *t, struct tui_grid *g, struct tui_rect box)
{
	struct tui_rect r = tui_grid_box(g, box, "Sparsity", false);
	const struct kv_sparse_stats *sp = &t->spv_stats.sp; /* the figures of v's step */
	const struct kv_sparse_view *v = t->spv;
	char a[32], b[32], c[32], d[32], e[32];
	int y = r.y;

	if (r.w < 8 || r.h < 1)
		return;
	if (t->stats.sp.mode == ENGINE_SPARSE_OFF) {
		tui_grid_printf(g, r, r.x, y, R_INFO,
		                "sparse attention is off: :sparse quest or :sparse hip turns it on");
		return;
	}
	if (v == NULL || sp->step == 0) {
		tui_grid_printf(g, r, r.x, y, R_INFO,
		                "%s: no sparse decode step yet (send a message; prefill is dense)",
		                t->stats.sp.mode == ENGINE_SPARSE_HIP ? "hip" : "quest");
		return;
	}
	uint32_t sparse_layers = v->n_layer - v->dense_layers;
	tui_grid_printf(g, r, r.x, y++, R_TITLE,
	                "%s  step %llu  %u keys  %u of %u layers sparse  %s %u",
	                v->mode == ENGINE_SPARSE_HIP ? "hip" : "quest", (unsigned long long)sp->step,
	                v->n_cached, sparse_layers, v->n_layer,
	                v->mode == ENGINE_SPARSE_HIP ? "block" : "page", v->page);
	const struct kv_stats *st = &t->spv_stats;
	double pct = st->keys_dense ? 100.0 * (double)st->keys_read / (double)st->keys_dense : 0;
	tui_grid_printf(g, r, r.x, y++, R_NORMAL,
	                "keys touched %.1f %% (%llu of %llu key-heads), K+V %.2f of %.2f MB a token",
	                pct, (unsigned long long)st->keys_read, (unsigned long long)st->keys_dense,
	                sparsity_mb(sp->bytes_read), sparsity_mb(sp->bytes_dense));
	if (y < r.y + r.h)
		tui_grid_printf(g, r, r.x, y++, R_NORMAL,
		                "attention %s ms a step (select %s), shadow %s ms every %u (apart)",
		                sparsity_num(a, sizeof a, 2, sp->attn_ms),
		                sparsity_num(b, sizeof b, 2, sp->select_ms),
		                sparsity_num(c, sizeof c, 2, sp->shadow_step ? sp->shadow_ms : NAN),
		                sp->shadow_every);
	if (y < r.y + r.h) {
		if (sp->shadow_step == 0)
			tui_grid_printf(g, r, r.x, y++, R_DIM, "mass: no dense shadow yet  overlap %s",
			                sparsity_num(d, sizeof d, 3, sp->overlap));
		else
			tui_grid_printf(g, r, r.x, y++, R_NORMAL,
			                "mass (step %llu) mean %s min %s p10 %s  tight %s  overlap %s",
			                (unsigned long long)sp->shadow_step,
			                sparsity_num(a, sizeof a, 3, sp->mass_mean),
			                sparsity_num(b, sizeof b, 3, sp->mass_min),
			                sparsity_num(c, sizeof c, 3, sp->mass_p10),
			                sparsity_num(e, sizeof e, 2, sp->tight),
			                sparsity_num(d, sizeof d, 3, sp->overlap));
	}
	if (y < r.y + r.h) {
		int x = r.x +
		        tui_grid_printf(g, r, r.x, y, R_DIM, "mass/KV head  %s chosen %s not  ",
		                        g->ascii ? "#" : "\xe2\x96\x88", g->ascii ? "." : "\xc2\xb7");
		x += tui_grid_text(g, r, x, y, R_SINK, "S sink ", 7);
		x += tui_grid_text(g, r, x, y, R_KEPT, "R recent ", 9);
		x += tui_grid_text(g, r, x, y, R_PINNED, "D doc ", 6);
		x += tui_grid_printf(g, r, x, y, R_DIM, "~ dense");
		if (v->bound != NULL)
			tui_grid_printf(g, r, x, y, R_DIM, ", colour: bound");
		y++;
	}
	sparsity_map(g, r, y, v);
}
