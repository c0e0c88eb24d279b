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
 * the index's order, the head's outliers (the `outliers` share of the
 * document's keys farthest from their centroid, chosen once per index:
 * what a mean misjudges most, such as a fact stated once among repeated
 * text), then every key that is not a choosable document key
 * (the conversation, the sinks, the recent window, a document key whose
 * position moved since it was clustered), by position. A threshold of 0
 * keeps every cluster, and the result is then dense attention's up to the
 * order of summation.
 *
 * The lookup is kept to the centroids and the chosen keys: each (layer,
 * KV head) keeps its keys' slots in cluster order (sq_pslot, made once per
 * index), so a kept cluster is one run copied into the list; the keys no
 * choice drops are listed once per step (sq_other, by the prepare) and
 * copied after. The document keys among those (the sinks, a recent window
 * over the document's end: never more than a few) are taken out of the
 * copied runs by where they sit (sq_ipos), not by a check of every key
 * (up to SQ_EXC_MAX of them; more, as after a compaction, take the check).
 * The per-key mask is made only where whole score rows are computed
 * (weights asked, cpu_attend's features). Nothing per step walks every
 * visible key per head.
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
#define SQ_EXC_MAX 256 /* unchoosable document keys the fast list path takes out */

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
	free(c->sq_off);
	c->sq_p_cap = cap;
	c->sq_off = xmallocarray(nt * cap, sizeof(uint32_t));
	c->sq_p = xmallocarray(nt * 2 * cap, sizeof(float));
	c->sq_w = xmallocarray(nt * 2 * cap, sizeof(uint32_t));
	c->sq_fl = xmallocarray(nt * cap, sizeof(uint32_t));
	c->sq_keep = xmallocarray(nt * cap, 1);
	c->sq_iota = xmallocarray(cap, sizeof(uint32_t));
	for (uint32_t i = 0; i < cap; i++)
		c->sq_iota[i] = i;
	c->sq_iota_n = cap;
}

/* Per (layer, KV head) of index sq: the share pm (thousandths) of the
 * document's keys farthest from their fine cluster's lookup centroid (the
 * squared distance as rotated: |q.k - q.C| <= |q| |k - C| bounds what the
 * centroid misjudges) are its outliers. Each cluster's run in sq_pslot
 * lists its inliers, then (from sq_fe) its outliers; sq_olist lists every
 * outlier's slot. A key not rotated to its clustered position in the
 * cache is never an outlier (it is not choosable anyway). */
static void cpu_squeeze_outliers(struct cpu *c, const struct engine_squeeze *sq, uint32_t pm)
{
	uint32_t nkv = sq->n_head_kv, hd = sq->head_dim, nk = sq->n_keys, nf = sq->n_fine;
	size_t heads = (size_t)sq->n_layer * nkv;
	free(c->sq_pslot);
	free(c->sq_pdoc);
	free(c->sq_fe);
	free(c->sq_olist);
	free(c->sq_nout);
	free(c->sq_isout);
	free(c->sq_ipos);
	c->sq_ipos = xmallocarray(heads * nk + 1, sizeof(uint32_t));
	c->sq_pslot = xmallocarray(heads * nk + 1, sizeof(uint32_t));
	c->sq_pdoc = xmallocarray(heads * nk + 1, sizeof(uint32_t));
	c->sq_fe = xmallocarray(heads * nf + 1, sizeof(uint32_t));
	c->sq_olist = xmallocarray(heads * nk + 1, sizeof(uint32_t));
	c->sq_nout = xcalloc(heads, sizeof(uint32_t));
	c->sq_isout = xcalloc(heads * nk + 1, 1);
	c->sq_out_pm = pm;
	uint32_t n_out = (uint32_t)((uint64_t)nk * pm / 1000);
	float *dist = xmallocarray(nk + 1, sizeof(float)), *scr = xmallocarray(nk + 1, sizeof(float));
	float x[KERN_ROW_MAX];
	for (uint32_t l = 0; l < sq->n_layer; l++)
		for (uint32_t h = 0; h < nkv; h++) {
			size_t lh = (size_t)l * nkv + h;
			const uint32_t *perm = sq->perm + lh * nk, *label = sq->label + lh * nk;
			const uint32_t *fs = sq->fstart + lh * (nf + 1);
			const float *cent = sq->fine + lh * nf * hd;
			uint8_t *out = c->sq_isout + lh * nk;
			for (uint32_t d = 0; d < nk; d++) {
				uint32_t sl = sq->slot[d];
				dist[d] = -INFINITY;
				if (sl >= c->cfg.n_ctx || c->kr_pos[sl] != sq->pos[d])
					continue;
				const uint8_t *src =
				        c->kr[l] + ((uint64_t)sl * c->kv_row + (uint64_t)h * hd) * c->kv_es;
				if (c->kv_es == 2)
					c->ops->f16_to_f32((const uint16_t *)src, x, hd);
				else
					memcpy(x, src, hd * sizeof(float));
				const float *ce = cent + (size_t)label[d] * hd;
				float dd = 0;
				for (uint32_t i = 0; i < hd; i++)
					dd += (x[i] - ce[i]) * (x[i] - ce[i]);
				dist[d] = dd;
			}
			sparse_top(dist, nk, n_out, scr, out);
			uint32_t *ps = c->sq_pslot + lh * nk, *pd = c->sq_pdoc + lh * nk;
			uint32_t *ol = c->sq_olist + lh * nk, no = 0, *ip = c->sq_ipos + lh * nk;
			for (uint32_t f = 0; f < nf; f++) {
				uint32_t w = fs[f];
				for (int pass = 0; pass < 2; pass++) {
					if (pass == 1)
						c->sq_fe[lh * nf + f] = w;
					for (uint32_t j = fs[f]; j < fs[f + 1]; j++) {
						uint32_t d = perm[j];
						if (out[d] != pass)
							continue;
						ip[d] = pass == 1 ? no : w;
						ps[w] = sq->slot[d];
						pd[w++] = d;
						if (pass == 1)
							ol[no++] = sq->slot[d];
					}
				}
			}
			c->sq_nout[lh] = no;
		}
	free(dist);
	free(scr);
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
		c->sq_out_pm = UINT32_MAX;
	}
	if (c->sq_out_pm != c->sparse->outliers)
		cpu_squeeze_outliers(c, sq, c->sparse->outliers);
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
		free(c->sq_other);
		c->sq_kd_cap = c->sp_vis_cap;
		c->sq_kd = xmallocarray(c->sq_kd_cap, sizeof(uint32_t));
		c->sq_other = xmallocarray(c->sq_kd_cap, sizeof(uint32_t));
	}
	if (c->sq_keys_cap < sq->n_keys) {
		free(c->sq_ok);
		free(c->sq_exc);
		c->sq_keys_cap = sq->n_keys;
		c->sq_ok = xmallocarray(sq->n_keys, 1);
		c->sq_exc = xmallocarray(sq->n_keys, sizeof(uint32_t));
	}
	if (c->sq_rm == NULL)
		c->sq_rm = xmallocarray(nt * SQ_EXC_MAX, sizeof(uint32_t));
	cpu_squeeze_scratch(c, sq->n_fine + sq->n_coarse + 2);
	/* which sorted keys are document keys a choice may drop */
	uint32_t m = c->sp_m, k0 = c->sp_sinks, k1 = m - c->sp_recent;
	uint32_t n_ok = 0;
	memset(c->sq_ok, 0, sq->n_keys);
	c->sq_n_other = 0;
	for (uint32_t k = 0; k < m; k++) {
		uint32_t d = k >= k0 && k < k1 ? c->sq_doc[c->vslot[k]] : SQ_NONE;
		if (d != SQ_NONE && sq->pos[d] != c->vpos[k])
			d = SQ_NONE; /* moved since it was clustered: attended */
		c->sq_kd[k] = d;
		if (d != SQ_NONE) {
			c->sq_ok[d] = 1;
			n_ok++;
		} else {
			c->sq_other[c->sq_n_other++] = c->vslot[k];
		}
	}
	c->sq_all_ok = n_ok == sq->n_keys;
	/* the few document keys no choice may drop (the sinks, a window over
	 * the document's end): kept runs are still copied whole, then these
	 * taken out of the list, instead of a check per key */
	c->sq_n_exc = 0;
	c->sq_fast = c->sq_all_ok || sq->n_keys - n_ok <= SQ_EXC_MAX;
	for (uint32_t d = 0; !c->sq_all_ok && c->sq_fast && d < sq->n_keys; d++)
		if (!c->sq_ok[d])
			c->sq_exc[c->sq_n_exc++] = d;
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

/* One query head's estimates over n clusters: the scores sr (n), with
 * weights w (keys per cluster; 0: empty, never counted), become exp(s -
 * max) in place; the max also covers `base`, the max of rejected clusters
 * whose sum of w * exp(s - base) is `rest`. *z gets the softmax
 * denominator sum w * exp(s - max) (the rest included); returns the max. */
static float cpu_squeeze_exp(float *sr, const uint32_t *w, uint32_t n, float base, float rest,
                             float *z)
{
	float best = base;
	for (uint32_t i = 0; i < n; i++)
		best = w[i] > 0 && sr[i] > best ? sr[i] : best;
	double zz = rest > 0 ? rest * exp((double)base - best) : 0;
	for (uint32_t i = 0; i < n; i++) {
		sr[i] = w[i] > 0 ? expf(sr[i] - best) : 0;
		zz += w[i] * (double)sr[i];
	}
	*z = (float)zz;
	return best;
}

/* Each cluster's estimated per-key weight, the max over the grp query
 * heads of exp(s - max) / z, from e (grp, lds) as cpu_squeeze_exp left
 * it, into p (n). */
static void cpu_squeeze_est(const float *e, uint32_t lds, uint32_t grp, const uint32_t *w,
                            uint32_t n, const float *z, float *p)
{
	for (uint32_t i = 0; i < n; i++) {
		float best = 0;
		for (uint32_t r = 0; r < grp && w[i] > 0; r++) {
			float v = e[(size_t)r * lds + i] / z[r];
			best = v > best ? v : best;
		}
		p[i] = best;
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
	const uint32_t *label = sq->label + lh * nk;
	const float *q = c->q + (size_t)h * grp * hd;         /* (grp, head_dim) rotated */
	float *sc = c->scores + (size_t)ith * c->q_rows * vc; /* (grp, vis_cap) */
	float *p1 = c->sq_p + (size_t)ith * 2 * cap, *p2 = p1 + cap;
	uint32_t *w1 = c->sq_w + (size_t)ith * 2 * cap, *w2 = w1 + cap;
	uint32_t *fl = c->sq_fl + (size_t)ith * cap, nfl = 0;
	uint8_t *keep = c->sq_keep + (size_t)ith * cap;
	uint8_t *mask = c->sp_mask + (size_t)h * c->sp_vis_cap;
	uint32_t *list = c->sp_list + (size_t)h * c->sp_vis_cap, n = 0, m = c->sp_m;
	float m1[SQ_MAX_GRP], rsum[SQ_MAX_GRP], z[SQ_MAX_GRP];
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
		for (uint32_t r = 0; r < grp; r++)
			m1[r] = cpu_squeeze_exp(sc + (size_t)r * vc, w1, nc, -INFINITY, 0, &z[r]);
		cpu_squeeze_est(sc, vc, grp, w1, nc, z, p1);
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
				rsum[r] += w1[g] * sc[(size_t)r * vc + g]; /* exp(s - m1) */
		}
		/* the fine level under the kept groups */
		if (nfl > 0)
			cpu_squeeze_score(c, q, grp, sq->fine + lh * nf * hd, fl, nfl, sc, vc);
		for (uint32_t i = 0; i < nfl; i++)
			w2[i] = fs[fl[i] + 1] - fs[fl[i]];
		for (uint32_t r = 0; r < grp; r++)
			cpu_squeeze_exp(sc + (size_t)r * vc, w2, nfl, rejected > 0 ? m1[r] : -INFINITY, rsum[r],
			                &z[r]);
		cpu_squeeze_est(sc, vc, grp, w2, nfl, z, p2);
		/* the rejected groups' keys count as estimates of 0 */
		p2[nfl] = 0;
		w2[nfl] = rejected;
		float tau2 =
		        c->sq_first ? squeeze_quantile(p2, w2, nfl + 1, s->quantile, w1) : c->sq_tau[1];
		squeeze_hist_add(&c->sq_th[(size_t)ith * 2 + 1], p2, w2, nfl + 1);
		for (uint32_t i = 0; i < nfl; i++)
			keep[fl[i]] = p2[i] >= tau2;
	}
	/* the kept clusters' inliers, one run each, and the head's outliers
	 * (only the choosable ones where some document key is not) */
	const uint32_t *ps = c->sq_pslot + lh * nk, *pd = c->sq_pdoc + lh * nk;
	const uint32_t *fe = c->sq_fe + lh * nf;
	uint32_t *off = c->sq_off + (size_t)ith * cap;
	for (uint32_t i = 0; i < nfl; i++) {
		uint32_t f = fl[i], a = fs[f], e = fe[f];
		if (!keep[f])
			continue;
		if (c->sq_fast) {
			off[f] = n;
			memcpy(list + n, ps + a, (e - a) * sizeof(uint32_t));
			n += e - a;
			continue;
		}
		for (uint32_t j = a; j < e; j++)
			if (c->sq_ok[pd[j]])
				list[n++] = ps[j];
	}
	if (c->sq_fast) {
		uint32_t o0 = n, nr = 0, *rm = c->sq_rm + (size_t)ith * SQ_EXC_MAX;
		const uint32_t *ip = c->sq_ipos + lh * nk;
		memcpy(list + n, c->sq_olist + lh * nk, c->sq_nout[lh] * sizeof(uint32_t));
		n += c->sq_nout[lh];
		/* where the unchoosable keys landed (each at most once) */
		for (uint32_t x = 0; x < c->sq_n_exc; x++) {
			uint32_t d = c->sq_exc[x], f = label[d];
			if (c->sq_isout[lh * nk + d])
				rm[nr++] = o0 + ip[d];
			else if (keep[f])
				rm[nr++] = off[f] + ip[d] - fs[f];
		}
		/* taken out from the highest position down, each by the list's
		 * last key: the order of the list is not the attention's concern */
		for (uint32_t i = 1; i < nr; i++)
			for (uint32_t j = i; j > 0 && rm[j - 1] < rm[j]; j--) {
				uint32_t t = rm[j];
				rm[j] = rm[j - 1];
				rm[j - 1] = t;
			}
		for (uint32_t i = 0; i < nr; i++)
			list[rm[i]] = list[--n];
	} else {
		for (uint32_t f = 0; f < nf; f++)
			for (uint32_t j = fe[f]; j < fs[f + 1]; j++)
				if (c->sq_ok[pd[j]])
					list[n++] = ps[j];
	}
	/* then every key a choice may not drop, by position */
	memcpy(list + n, c->sq_other, c->sq_n_other * sizeof(uint32_t));
	n += c->sq_n_other;
	c->sp_n[h] = n;
	if (jb->whole || jb->b->want_attn) {
		/* whole score rows read the mask; a view reads it too */
		for (uint32_t k = 0; k < m; k++) {
			uint32_t d = c->sq_kd[k];
			mask[k] = d == SQ_NONE || keep[label[d]] || c->sq_isout[lh * nk + d];
		}
		cpu_sparse_report(jb, l, h, mask);
	}
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
	free(c->sq_other);
	free(c->sq_pslot);
	free(c->sq_pdoc);
	free(c->sq_fe);
	free(c->sq_olist);
	free(c->sq_nout);
	free(c->sq_isout);
	free(c->sq_ipos);
	free(c->sq_exc);
	free(c->sq_rm);
	free(c->sq_off);
	free(c->sq_ok);
	free(c->sq_iota);
	free(c->sq_th);
	free(c->sq_p);
	free(c->sq_w);
	free(c->sq_fl);
	free(c->sq_keep);
}
