/*
 * cpu-squeeze.c: the CPU backend's squeezed decode (engine_sparse
 * squeezed, Squeezed Attention's online step) over the index squeeze.c
 * built for the document's keys.
 *
 * Per sparse layer each thread takes whole KV heads (as Quest's choice
 * does) and, for each: scores the coarse centroids with the KV head's
 * query heads (the attention-score kernel, the centroids read as f32
 * rows), turns the scores into estimated per-key softmax weights
 * (exp(s_g) / sum_g N_g exp(s_g), the max over the query heads), keeps the
 * coarse clusters at or over the coarse threshold; scores only the fine
 * clusters under those, estimates them the same way (the rejected coarse
 * clusters' mass stays in the denominator) and keeps those at or over the
 * fine threshold. The keys it attends: the kept fine clusters' keys, in
 * the index's order (a cluster is one run of its permutation), then every
 * key that is not a choosable document key (the conversation, the sinks,
 * the recent window, a document key whose position moved since it was
 * clustered), by position. A threshold of 0 keeps every cluster, and the
 * result is then dense attention's up to the order of summation.
 *
 * Calibration: each thread adds its heads' estimates to its own histogram
 * of this step (squeeze_hist); the next step's prepare pools them into the
 * past's and takes the thresholds as the quantiles of that (the first
 * step, with no past, calibrates each head on its own estimates).
 */
#include "engine/cpu-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SQ_NONE UINT32_MAX
#define SQ_MAX_GRP 64 /* query heads per KV head the estimates handle */

/* Per-thread scratch of this many clusters. */
static void cpu_squeeze_scratch(struct cpu *c, uint32_t cap)
{
	size_t nt = (size_t)pool_size(c->pool);
	if (c->sq_p_cap >= cap)
		return;
	free(c->sq_p);
	free(c->sq_w);
	free(c->sq_fl);
	free(c->sq_keep);
	free(c->sq_iota);
	c->sq_p_cap = cap;
	c->sq_p = xmallocarray(nt * 2 * cap, sizeof(float));
	c->sq_w = xmallocarray(nt * 2 * cap, sizeof(uint32_t));
	c->sq_fl = xmallocarray(nt * cap, sizeof(uint32_t));
	c->sq_keep = xmallocarray(nt * cap, 1);
	c->sq_iota = xmallocarray(cap, sizeof(uint32_t));
	for (uint32_t i = 0; i < cap; i++)
		c->sq_iota[i] = i;
	c->sq_iota_n = cap;
}

bool cpu_squeeze_prepare(struct cpu *c, const struct engine_batch *b)
{
	const struct engine_squeeze *sq = b->squeeze;
	const struct hparams *hp = &c->hp;
	size_t nt = (size_t)pool_size(c->pool);
	if (sq == NULL || sq->n_layer != hp->n_layer || sq->n_head_kv != hp->n_head_kv ||
	    sq->head_dim != hp->head_dim || hp->n_head / hp->n_head_kv > SQ_MAX_GRP)
		return false;
	if (c->sq_doc == NULL) {
		c->sq_doc = xmallocarray(c->cfg.n_ctx, sizeof(uint32_t));
		c->sq_th = xcalloc(nt * 2, sizeof(struct squeeze_hist));
	}
	if (c->sq_made != sq || c->sq_made_id != sq->id) {
		/* a new index: its slots, and a calibration of its own */
		for (uint32_t s = 0; s < c->cfg.n_ctx; s++)
			c->sq_doc[s] = SQ_NONE;
		for (uint32_t d = 0; d < sq->n_keys; d++)
			if (sq->slot[d] < c->cfg.n_ctx)
				c->sq_doc[sq->slot[d]] = d;
		memset(c->sq_hist, 0, sizeof c->sq_hist);
		memset(c->sq_th, 0, nt * 2 * sizeof(struct squeeze_hist));
		c->sq_made = sq;
		c->sq_made_id = sq->id;
		c->sq_steps = 0;
	}
	c->sq = sq;
	/* the last step's estimates join the past */
	for (size_t t = 0; t < nt; t++)
		for (int lv = 0; lv < 2; lv++) {
			struct squeeze_hist *th = &c->sq_th[t * 2 + lv];
			for (int i = 0; i < SQUEEZE_BINS; i++)
				c->sq_hist[lv].w[i] += th->w[i];
			c->sq_hist[lv].total += th->total;
			memset(th, 0, sizeof *th);
		}
	const struct engine_sparse *s = c->sparse;
	c->sq_first = c->sq_hist[1].total <= 0;
	c->sq_tau[0] = squeeze_hist_quantile(&c->sq_hist[0], s->coarse);
	c->sq_tau[1] = squeeze_hist_quantile(&c->sq_hist[1], s->quantile);
	if (c->sq_kd_cap < c->sp_vis_cap) {
		free(c->sq_kd);
		c->sq_kd_cap = c->sp_vis_cap;
		c->sq_kd = xmallocarray(c->sq_kd_cap, sizeof(uint32_t));
	}
	if (c->sq_keys_cap < sq->n_keys) {
		free(c->sq_ok);
		c->sq_keys_cap = sq->n_keys;
		c->sq_ok = xmallocarray(sq->n_keys, 1);
	}
	cpu_squeeze_scratch(c, sq->n_fine + sq->n_coarse + 2);
	/* which sorted keys are document keys a choice may drop */
	uint32_t m = c->sp_m, k0 = c->sp_sinks, k1 = m - c->sp_recent;
	memset(c->sq_ok, 0, sq->n_keys);
	for (uint32_t k = 0; k < m; k++) {
		uint32_t d = k >= k0 && k < k1 ? c->sq_doc[c->vslot[k]] : SQ_NONE;
		if (d != SQ_NONE && sq->pos[d] != c->vpos[k])
			d = SQ_NONE; /* moved since it was clustered: attended */
		c->sq_kd[k] = d;
		if (d != SQ_NONE)
			c->sq_ok[d] = 1;
	}
	c->sq_steps++;
	return true;
}

/* Score rows n of the centroid table cent (f32 rows of head_dim) listed
 * in rows with the grp query heads q into sc (grp, lds). */
static void cpu_squeeze_score(const struct cpu *c, const float *q, uint32_t grp, const float *cent,
                              const uint32_t *rows, uint32_t n, float *sc, uint32_t lds)
{
	uint32_t hd = c->hp.head_dim;
	for (uint32_t r0 = 0; r0 < grp; r0 += KERN_ATT_Q) {
		uint32_t nq = KVS_MIN((uint32_t)KERN_ATT_Q, grp - r0);
		c->ops->att_scores_rows(q + (size_t)r0 * hd, (int)nq, (int)hd, cent, (int64_t)hd, false,
		                        rows, n, c->hp.attn_scale, sc + (size_t)r0 * lds, lds);
	}
}

/* Choose the keys of layer l, KV head h (thread ith's scratch). */
static void cpu_squeeze_head(struct cpu_job *jb, uint32_t l, uint32_t h, int ith)
{
	struct cpu *c = jb->c;
	const struct hparams *hp = &c->hp;
	const struct engine_squeeze *sq = c->sq;
	const struct engine_sparse *s = c->sparse;
	uint32_t hd = hp->head_dim, nkv = hp->n_head_kv, grp = hp->n_head / nkv, vc = c->vis_cap;
	uint32_t nf = sq->n_fine, nc = sq->n_coarse, nk = sq->n_keys, cap = c->sq_p_cap;
	size_t lh = (size_t)l * nkv + h;
	const uint32_t *fs = sq->fstart + lh * (nf + 1), *cs = sq->cstart + lh * (nc + 1);
	const uint32_t *perm = sq->perm + lh * nk, *label = sq->label + lh * nk;
	const float *q = c->q + (size_t)h * grp * hd;         /* (grp, head_dim) rotated */
	float *sc = c->scores + (size_t)ith * c->q_rows * vc; /* (grp, vis_cap) */
	float *p1 = c->sq_p + (size_t)ith * 2 * cap, *p2 = p1 + cap;
	uint32_t *w1 = c->sq_w + (size_t)ith * 2 * cap, *w2 = w1 + cap;
	uint32_t *fl = c->sq_fl + (size_t)ith * cap, nfl = 0;
	uint8_t *keep = c->sq_keep + (size_t)ith * cap;
	uint8_t *mask = c->sp_mask + (size_t)h * c->sp_vis_cap;
	uint32_t *list = c->sp_list + (size_t)h * c->sp_vis_cap, n = 0, m = c->sp_m;
	float m1[SQ_MAX_GRP], rsum[SQ_MAX_GRP], mx[SQ_MAX_GRP], z[SQ_MAX_GRP];
	uint32_t rejected = 0;

	memset(keep, 0, nf);
	if (nc > vc || nf > vc) {
		/* more centroids than score room (never with a whole document
		 * visible): keep every cluster */
		for (uint32_t f = 0; f < nf; f++) {
			fl[nfl++] = f;
			keep[f] = 1;
		}
	} else {
		/* the coarse level: estimates, threshold, the kept groups */
		cpu_squeeze_score(c, q, grp, sq->coarse + lh * nc * hd, c->sq_iota, nc, sc, vc);
		for (uint32_t g = 0; g < nc; g++)
			w1[g] = fs[cs[g + 1]] - fs[cs[g]];
		for (uint32_t r = 0; r < grp; r++) {
			const float *sr = sc + (size_t)r * vc;
			float best = -INFINITY;
			for (uint32_t g = 0; g < nc; g++)
				best = w1[g] > 0 && sr[g] > best ? sr[g] : best;
			double zz = 0;
			for (uint32_t g = 0; g < nc; g++)
				zz += w1[g] > 0 ? w1[g] * exp((double)sr[g] - best) : 0;
			m1[r] = best;
			z[r] = (float)zz;
		}
		for (uint32_t g = 0; g < nc; g++) {
			float best = 0;
			for (uint32_t r = 0; r < grp && w1[g] > 0; r++) {
				float v = expf(sc[(size_t)r * vc + g] - m1[r]) / z[r];
				best = v > best ? v : best;
			}
			p1[g] = best;
		}
		float tau1 = c->sq_first ? squeeze_quantile(p1, w1, nc, s->coarse, w2) : c->sq_tau[0];
		squeeze_hist_add(&c->sq_th[(size_t)ith * 2], p1, w1, nc);
		for (uint32_t r = 0; r < grp; r++)
			rsum[r] = 0;
		for (uint32_t g = 0; g < nc; g++) {
			if (p1[g] >= tau1 && w1[g] > 0) {
				for (uint32_t f = cs[g]; f < cs[g + 1]; f++)
					fl[nfl++] = f;
				continue;
			}
			rejected += w1[g];
			for (uint32_t r = 0; r < grp && w1[g] > 0; r++)
				rsum[r] += w1[g] * expf(sc[(size_t)r * vc + g] - m1[r]);
		}
		/* the fine level under the kept groups */
		if (nfl > 0)
			cpu_squeeze_score(c, q, grp, sq->fine + lh * nf * hd, fl, nfl, sc, vc);
		for (uint32_t i = 0; i < nfl; i++)
			w2[i] = fs[fl[i] + 1] - fs[fl[i]];
		for (uint32_t r = 0; r < grp; r++) {
			const float *sr = sc + (size_t)r * vc;
			float best = rejected > 0 ? m1[r] : -INFINITY;
			for (uint32_t i = 0; i < nfl; i++)
				best = w2[i] > 0 && sr[i] > best ? sr[i] : best;
			double zz = rejected > 0 ? rsum[r] * exp((double)m1[r] - best) : 0;
			for (uint32_t i = 0; i < nfl; i++)
				zz += w2[i] > 0 ? w2[i] * exp((double)sr[i] - best) : 0;
			mx[r] = best;
			z[r] = (float)zz;
		}
		for (uint32_t i = 0; i < nfl; i++) {
			float best = 0;
			for (uint32_t r = 0; r < grp && w2[i] > 0; r++) {
				float v = expf(sc[(size_t)r * vc + i] - mx[r]) / z[r];
				best = v > best ? v : best;
			}
			p2[i] = best;
		}
		/* the rejected groups' keys count as estimates of 0 */
		p2[nfl] = 0;
		w2[nfl] = rejected;
		float tau2 =
		        c->sq_first ? squeeze_quantile(p2, w2, nfl + 1, s->quantile, w1) : c->sq_tau[1];
		squeeze_hist_add(&c->sq_th[(size_t)ith * 2 + 1], p2, w2, nfl + 1);
		for (uint32_t i = 0; i < nfl; i++)
			keep[fl[i]] = p2[i] >= tau2;
	}
	/* the kept clusters' keys, one run of the permutation each */
	for (uint32_t i = 0; i < nfl; i++) {
		if (!keep[fl[i]])
			continue;
		for (uint32_t j = fs[fl[i]]; j < fs[fl[i] + 1]; j++)
			if (c->sq_ok[perm[j]])
				list[n++] = sq->slot[perm[j]];
	}
	/* then every key a choice may not drop, by position */
	for (uint32_t k = 0; k < m; k++) {
		uint32_t d = c->sq_kd[k];
		mask[k] = d == SQ_NONE || keep[label[d]];
		if (d == SQ_NONE)
			list[n++] = c->vslot[k];
	}
	c->sp_n[h] = n;
	cpu_sparse_report(jb, l, h, mask);
}

void cpu_squeeze_choose(struct cpu_job *jb, uint32_t l, int ith, int nth)
{
	struct cpu *c = jb->c;
	uint32_t lo, hi;
	cpu_share(c->hp.n_head_kv, ith, nth, &lo, &hi);
	for (uint32_t h = lo; h < hi; h++)
		cpu_squeeze_head(jb, l, h, ith);
}

void cpu_squeeze_free(struct cpu *c)
{
	free(c->sq_doc);
	free(c->sq_kd);
	free(c->sq_ok);
	free(c->sq_iota);
	free(c->sq_th);
	free(c->sq_p);
	free(c->sq_w);
	free(c->sq_fl);
	free(c->sq_keep);
}
