/*
 * cpu-sparse-note.c: what a Quest step reports beside its choice, for the
 * views that watch sparse attention (engine_out's page_ub and tight).
 *
 * The page bounds are copied as the choice used them (one row per layer
 * and KV head, unscaled q.k units). The tightness needs the true logits of
 * the chosen pages' keys, which a sparse step never computes apart from
 * the attention itself: it is measured only when the dense shadow is on
 * (want_attn), on the same scratch the choice used, so it costs a shadow
 * step one more pass over the chosen keys and a plain step nothing.
 * A region's keys, chosen by content group (cpu-sparse-group.c), are left
 * out of the tightness, which is the pages'.
 * Invariant (up to float rounding): a page's true max logit never exceeds
 * its bound, so a tightness is at most 1.
 */
#include "engine/cpu-int.h"

#include <math.h>
#include <string.h>

void cpu_quest_note(struct cpu_job *jb, uint32_t l, uint32_t h, int ith)
{
	struct cpu *c = jb->c;
	struct backend_out *bo = jb->bo;
	if (bo->page_ub == NULL || NEVER(c->sp.n_pages != bo->n_pages))
		return;
	const struct hparams *hp = &c->hp;
	uint32_t nkv = hp->n_head_kv, np = c->sp.n_pages, pc = c->sp_pages_cap, hd = hp->head_dim;
	uint32_t grp = hp->n_head / nkv, vc = c->vis_cap, page = c->sparse->page;
	const float *ub = c->sp_ub + (size_t)h * pc; /* (np) */
	memcpy(bo->page_ub + ((size_t)l * nkv + h) * np, ub, np * sizeof(float));
	if (bo->tight == NULL)
		return;
	/* the chosen pages' candidate keys */
	const uint8_t *psel = c->sp_psel + (size_t)h * pc;
	uint32_t *keys = c->hip_keys + (size_t)ith * c->sp_vis_cap; /* (n) slots */
	uint32_t n = 0;
	for (uint32_t k = c->sp_sinks; k < c->sp_m - c->sp_recent; k++)
		if ((k < c->grp_r0 || k >= c->grp_r1) && psel[c->sp_kpage[k]]) /* a region's: by group */
			keys[n++] = c->vslot[k];
	float *pmax = c->sp_scr + (size_t)ith * pc; /* (np) each page's true max logit */
	for (uint32_t p = 0; p < np; p++)
		pmax[p] = -INFINITY;
	float *sc = c->scores + (size_t)ith * c->q_rows * vc; /* (KERN_ATT_Q, vis_cap) */
	uint64_t head_off = (uint64_t)h * hd * c->kv_es;
	for (uint32_t r0 = 0; r0 < grp && n > 0; r0 += KERN_ATT_Q) {
		uint32_t nq = KVS_MIN((uint32_t)KERN_ATT_Q, grp - r0);
		c->ops->att_scores_rows(c->q + (size_t)(h * grp + r0) * hd, (int)nq, (int)hd,
		                        c->kr[l] + head_off, (int64_t)c->kv_row, c->kv_es == 2, keys, n,
		                        1.0f, sc, vc);
		for (uint32_t r = 0; r < nq; r++)
			for (uint32_t i = 0; i < n; i++) {
				float v = sc[(size_t)r * vc + i];
				float *u = &pmax[keys[i] / page];
				*u = v > *u ? v : *u;
			}
	}
	double sum = 0;
	uint32_t cnt = 0;
	for (uint32_t p = 0; p < np; p++)
		if (psel[p] && ub[p] > 0 && pmax[p] > -INFINITY) {
			sum += (double)pmax[p] / (double)ub[p];
			cnt++;
		}
	bo->tight[(size_t)l * nkv + h] = cnt ? (float)(sum / cnt) : NAN;
}
