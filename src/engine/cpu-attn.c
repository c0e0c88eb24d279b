/*
 * cpu-attn.c: the CPU backend's attention: RoPE, the KV cache rows, and the
 * three ways a query block meets the keys (whole score rows, tiled prefill,
 * decode split by keys across threads).
 *
 * KV cache: per layer K and V as (n_ctx, n_head_kv, head_dim), F16 or F32.
 * Keys are stored twice: before RoPE (the exact source, for re-positioning
 * and engine_kv_read) and rotated to the slot's current position (what
 * attention reads, rounded to the cache type as llama.cpp's cache is). A
 * forward first re-rotates, from the pre-RoPE keys, the visible slots whose
 * position moved since their rotated keys were made (compaction), so a
 * rotated key is always the pre-RoPE key rotated directly to its position.
 * Each forward sorts the visible slots by position (empty slots last); a
 * query at position p attends to the prefix of that order with positions
 * <= p. A one-token batch (decode) reads keys and values in place, row by
 * row, each row once for all the query heads of its KV head. A larger batch
 * goes tile by tile (cpu_flash): a block of queries (tokens x the heads of
 * one KV head) against CPU_FA_TILE keys at a time, the tile converted to
 * f32 once (keys transposed, so scores against 16 keys are 16-wide FMAs)
 * for the whole block, with an online softmax, so a long prefill never
 * streams all the keys once per query. The features that need a query's
 * whole row of scores (Λ-masks, per-key attention sums, the reference
 * path) gather the keys per layer into f32 scratch (transposed keys
 * (n_head_kv, head_dim, n_vis), values (n_head_kv, n_vis, head_dim)) and
 * take one query at a time (cpu_attend).
 *
 * Attention rule: query i at position p sees visible slot s when
 * 0 <= pos(s) <= p, and in a local (sliding-window) layer of window w also
 * pos(s) > p - w: the keys it sees are then a range [cpu_window_start,
 * prefix) of the order, and the keys before it get exactly no weight
 * (skipped where the key loop allows, masked where a whole row of scores
 * is kept). The cache keeps every token for every layer; only attention
 * narrows. Per-head keep-sets (engine_batch.head_keep) narrow it per
 * (layer, KV head): every path (cpu_attend's rows, the tiles of cpu_flash,
 * the parts of cpu_attend_split, and cpu-sparse.c's lists) scores a key
 * the head dropped at -inf and then sets its weight to exactly 0, and only
 * where the head dropped something, so a mask that drops nothing computes
 * bit for bit what no mask computes. A query that sees nothing gets a zero
 * output. Gemma 2 soft-caps
 * the scores (c tanh(s / c)) before the softmax, after any Λ re-scoring.
 * Gemma 3's local layers rotate with their own angles (cpu_rope_hp).
 */
#include "engine/cpu-int.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* -------------------------------------------------------------- attention */

/* Rotate one head vector with the table cs, (2, n_rot / 2): cos, then sin. */
static void cpu_rope(const struct cpu *c, float *x, const float *cs)
{
	c->ops->rope(x, cs, (int)c->hp.n_rot, c->hp.rope == ROPE_NEOX);
}

/* Store the f32 head vector x (head_dim) at dst, an element of the cache type. */
static void cpu_kv_put(const struct cpu *c, const float *x, uint8_t *dst)
{
	if (c->kv_es == 2)
		c->ops->f32_to_f16(x, (uint16_t *)dst, c->hp.head_dim);
	else
		memcpy(dst, x, c->hp.head_dim * sizeof(float));
}

/* Re-rotate, every layer, the keys of the visible slots whose position
 * moved since their rotated keys were made, from the pre-RoPE keys. */
void cpu_refresh_keys(struct cpu *c, const struct engine_batch *b, int ith, int nth)
{
	const struct hparams *hp = &c->hp;
	uint32_t lo, hi, nr = hp->n_rot, hd = hp->head_dim;
	float *cs = c->rcs + (size_t)ith * 2 * nr, *cs_swa = cs + nr, kb[KERN_ROW_MAX];
	if (NEVER(hd > KERN_ROW_MAX)) /* cpu_create refuses longer heads */
		return;
	cpu_share(b->n_visible, ith, nth, &lo, &hi);
	for (uint32_t j = lo; j < hi; j++) {
		uint32_t s = b->visible[j];
		int32_t p = c->slot_pos[s];
		if (p < 0 || c->kr_pos[s] == p)
			continue;
		engine_rope_cos_sin(hp, p, cs, cs + nr / 2);
		if (c->two_ropes)
			engine_rope_cos_sin(&c->hp_swa, p, cs_swa, cs_swa + nr / 2);
		for (uint32_t l = 0; l < hp->n_layer; l++)
			for (uint32_t h = 0; h < hp->n_head_kv; h++) {
				const float *lcs = cpu_rope_hp(c, l) == hp ? cs : cs_swa;
				size_t at = ((size_t)l * hp->n_head_kv + h) * c->cfg.n_ctx + s;
				if (c->rows != NULL && b->head_keep != NULL && !b->head_keep[at])
					continue; /* the per-head store: its row is another token's now */
				uint64_t off = cpu_cell_off(c, l, h, s);
				if (c->kv_es == 2)
					c->ops->f16_to_f32((const uint16_t *)(c->kc[l] + off), kb, hd);
				else
					memcpy(kb, c->kc[l] + off, hd * sizeof(float));
				c->ops->rope(kb, lcs, (int)nr, hp->rope == ROPE_NEOX);
				cpu_kv_put(c, kb, c->kr[l] + off);
			}
		c->kr_pos[s] = p;
	}
}

/* Order the visible slots by position, empty slots last, so that the keys a
 * query at position p may see are a prefix of the order. */
void cpu_sort_visible(struct cpu *c, const struct engine_batch *b)
{
	uint32_t nv = b->n_visible, n_valid = 0;
	bool sorted = true;
	int32_t last = -1;
	for (uint32_t j = 0; j < nv; j++) {
		int32_t p = c->slot_pos[b->visible[j]];
		if (p < 0) {
			sorted = false;
			continue;
		}
		sorted = sorted && p >= last;
		last = p;
		n_valid++;
	}
	c->n_valid = n_valid;
	if (sorted) {
		for (uint32_t j = 0; j < nv; j++) {
			c->vorder[j] = j;
			c->vpos[j] = c->slot_pos[b->visible[j]];
			c->vslot[j] = b->visible[j];
		}
		return;
	}
	/* insertion of the valid ones by position (a merge of runs would do; the
	 * visible set is mostly sorted already), then the empty ones */
	uint32_t k = 0;
	for (uint32_t j = 0; j < nv; j++) {
		int32_t p = c->slot_pos[b->visible[j]];
		if (p < 0)
			continue;
		uint32_t at = k++;
		while (at > 0 && c->vpos[at - 1] > p) {
			c->vpos[at] = c->vpos[at - 1];
			c->vorder[at] = c->vorder[at - 1];
			at--;
		}
		c->vpos[at] = p;
		c->vorder[at] = j;
	}
	if (NEVER(k != n_valid)) /* both passes count the same slots */
		c->n_valid = k;
	for (uint32_t j = 0; j < nv; j++)
		if (c->slot_pos[b->visible[j]] < 0) {
			c->vpos[k] = -1;
			c->vorder[k++] = j;
		}
	for (uint32_t j = 0; j < nv; j++)
		c->vslot[j] = b->visible[c->vorder[j]];
}

/* Gather the visible rotated keys (transposed) and values of layer l, KV
 * heads [h0, h1), in position order, as f32. */
void cpu_gather_kv(struct cpu *c, uint32_t l, uint32_t h0, uint32_t h1, int ith, int nth)
{
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, vc = c->vis_cap;
	uint32_t lo, hi;
	cpu_share(c->n_valid, ith, nth, &lo, &hi);
	float kbuf[KERN_ROW_MAX];
	for (uint32_t k = lo; k < hi; k++) {
		uint32_t s = c->vslot[k];
		for (uint32_t h = h0; h < h1; h++) {
			uint64_t off = cpu_cell_off(c, l, h, s);
			float *vdst = c->vf + ((size_t)h * vc + k) * hd;
			if (c->kv_es == 2) {
				c->ops->f16_to_f32((const uint16_t *)(c->kr[l] + off), kbuf, hd);
				c->ops->f16_to_f32((const uint16_t *)(c->vc[l] + off), vdst, hd);
			} else {
				memcpy(kbuf, c->kr[l] + off, hd * sizeof(float));
				memcpy(vdst, c->vc[l] + off, hd * sizeof(float));
			}
			float *kt = c->krot + (size_t)h * hd * vc + k;
			for (uint32_t d = 0; d < hd; d++)
				kt[(size_t)d * vc] = kbuf[d];
		}
	}
}

/* Load the pre-RoPE key of visible slot s, KV head kvh, layer l into kb and
 * rotate it with the angles cs. */
static void cpu_raw_key(const struct cpu *c, uint32_t l, uint32_t s, uint32_t kvh, const float *cs,
                        float *kb)
{
	uint32_t hd = c->hp.head_dim;
	uint64_t off = cpu_cell_off(c, l, kvh, s);
	if (c->kv_es == 2)
		c->ops->f16_to_f32((const uint16_t *)(c->kc[l] + off), kb, hd);
	else
		memcpy(kb, c->kc[l] + off, hd * sizeof(float));
	cpu_rope(c, kb, cs);
}

/* The angles of position at in layer l's RoPE, through the per-thread
 * cache (cs, *cached: 2 at + 1 for a local layer's angles). */
static const float *cpu_angles_at(const struct cpu *c, uint32_t l, float *cs, int32_t *cached,
                                  int32_t at)
{
	const struct hparams *rh = cpu_rope_hp(c, l);
	int32_t key = 2 * at + (rh != &c->hp);
	if (*cached != key) {
		engine_rope_cos_sin(rh, at, cs, cs + c->hp.n_rot / 2);
		*cached = key;
	}
	return cs;
}

uint32_t cpu_window_start(const struct cpu *c, uint32_t l, int32_t p)
{
	uint32_t w = c->L[l].window, lo = 0, hi = c->n_valid;
	if (w == 0)
		return 0;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if ((int64_t)p - c->vpos[mid] >= (int64_t)w)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Gemma 2's soft-cap of n scores in place: s becomes c tanh(s / c), in
 * llama.cpp's float steps; a masked (-inf) score stays masked. */
static void cpu_softcap(const struct cpu *c, float *s, uint32_t n)
{
	float cap = c->hp.attn_softcap, inv = 1.0f / cap;
	for (uint32_t k = 0; k < n; k++)
		if (s[k] != -INFINITY)
			s[k] = tanhf(s[k] * inv) * cap;
}

/*
 * LM-Infinite's Λ-attention on one row group (nq query heads of KV head kvh,
 * query at p, scores sc over the sorted prefix [0, m)). Global keys (the
 * first n_global of the visible list) farther than dist_cap are re-scored
 * with the pre-RoPE key rotated to p - dist_cap. With n_local, the other
 * keys n_local or more before p are middle: masked (mk = 1), except, for the
 * batch's last query in layers >= middle_from_layer, each head's
 * middle_topk best by their score at distance middle_insert_at, which keep
 * that score. Returns whether anything was masked.
 */
static bool cpu_lambda(struct cpu_job *jb, uint32_t l, uint32_t i, int32_t p, uint32_t kvh,
                       const float *q, uint32_t nq, uint32_t m, float *sc, uint8_t *mk, int ith)
{
	struct cpu *c = jb->c;
	const struct engine_batch *b = jb->b;
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, vc = c->vis_cap, lc = c->lam_cap;
	float *kb = c->cap_k + (size_t)ith * hd;
	/* the local band: positions > p - n_local, a suffix of [0, m) */
	uint32_t loc = 0;
	if (b->n_local > 0) {
		uint32_t lo = 0, hi = m;
		while (lo < hi) {
			uint32_t mid = lo + (hi - lo) / 2;
			if ((int64_t)p - c->vpos[mid] >= b->n_local)
				lo = mid + 1;
			else
				hi = mid;
		}
		loc = lo;
	}
	bool topk = b->n_local > 0 && b->middle_topk > 0 && jb->last && i == jb->n - 1 &&
	        l >= b->middle_from_layer;
	uint32_t *mid_idx = c->lam_idx ? c->lam_idx + (size_t)ith * lc : NULL;
	float *msc = c->lam_sc ? c->lam_sc + (size_t)ith * KERN_ATT_Q * lc : NULL;
	uint32_t n_mid = 0;
	bool masked = false;
	for (uint32_t k = 0; k < m; k++) {
		bool global = c->vorder[k] < b->n_global;
		if (global) {
			if (b->dist_cap > 0 && (int64_t)p - c->vpos[k] > b->dist_cap) {
				const float *cs = cpu_angles_at(c, l, c->cap_cs + (size_t)ith * hp->n_rot,
				                                &c->cap_pos[ith], p - b->dist_cap);
				cpu_raw_key(c, l, b->visible[c->vorder[k]], kvh, cs, kb);
				for (uint32_t r = 0; r < nq; r++)
					sc[(size_t)r * vc + k] =
					        c->ops->dot_f32(q + (size_t)r * hd, kb, hd) * hp->attn_scale;
			}
			continue;
		}
		if (k >= loc) {
			/* the local band (true distances), or, without a Λ-mask, no
			 * global left far enough to need the cap */
			if (b->n_local > 0 || (int64_t)p - c->vpos[k] <= b->dist_cap)
				break;
			continue;
		}
		masked = true;
		for (uint32_t r = 0; r < nq; r++)
			mk[(size_t)r * lc + k] = 1;
		if (topk) {
			const float *cs = cpu_angles_at(c, l, c->ins_cs + (size_t)ith * hp->n_rot,
			                                &c->ins_pos[ith], p - b->middle_insert_at);
			cpu_raw_key(c, l, b->visible[c->vorder[k]], kvh, cs, kb);
			for (uint32_t r = 0; r < nq; r++)
				msc[(size_t)r * lc + n_mid] =
				        c->ops->dot_f32(q + (size_t)r * hd, kb, hd) * hp->attn_scale;
			mid_idx[n_mid++] = k;
		}
	}
	/* each head un-masks its best middle_topk (ties: the older) */
	for (uint32_t r = 0; topk && r < nq; r++) {
		float *row = msc + (size_t)r * lc;
		for (uint32_t t = 0; t < b->middle_topk && t < n_mid; t++) {
			uint32_t best = UINT32_MAX;
			for (uint32_t j = 0; j < n_mid; j++)
				if (!isnan(row[j]) && (best == UINT32_MAX || row[j] > row[best]))
					best = j;
			if (best == UINT32_MAX)
				break;
			uint32_t k = mid_idx[best];
			mk[(size_t)r * lc + k] = 0;
			sc[(size_t)r * vc + k] = row[best];
			row[best] = NAN;
		}
	}
	for (uint32_t r = 0; masked && r < nq; r++)
		for (uint32_t k = 0; k < loc; k++)
			if (mk[(size_t)r * lc + k])
				sc[(size_t)r * vc + k] = -INFINITY;
	return masked;
}

/* Round x[0..n) to the nearest f16 values, in place. */
static void cpu_round16(const struct cpu *c, float *x, uint32_t n)
{
	uint16_t h[1024];
	for (uint32_t i = 0; i < n; i += 1024) {
		uint32_t m = KVS_MIN(1024u, n - i);
		c->ops->f32_to_f16(x + i, h, m);
		c->ops->f16_to_f32(h, x + i, m);
	}
}

uint32_t cpu_prefix(const struct cpu *c, int32_t p)
{
	uint32_t lo = 0, hi = c->n_valid;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (c->vpos[mid] <= p)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Attention of ubatch token i for query heads [h0, h0 + nq) (one KV head),
 * layer l, into c->ao. */
static void cpu_attend(struct cpu_job *jb, uint32_t l, uint32_t i, uint32_t h0, uint32_t nq,
                       int ith)
{
	struct cpu *c = jb->c;
	const struct engine_batch *b = jb->b;
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, nv = b->n_visible, vc = c->vis_cap;
	uint32_t kvh = h0 / (hp->n_head / hp->n_head_kv);
	int32_t p = b->pos[jb->t0 + i];
	uint32_t m = cpu_prefix(c, p);           /* keys with position <= p */
	uint32_t w0 = cpu_window_start(c, l, p); /* and within a local layer's window */
	const float *q = c->q + ((size_t)i * hp->n_head + h0) * hd;
	float *out = c->ao + ((size_t)i * hp->n_head + h0) * hd;
	float *sc = c->scores + (size_t)ith * c->q_rows * vc;
	float *attn = NULL;
	if (b->want_attn && jb->last && i == jb->n - 1) {
		attn = jb->bo->attn + ((size_t)l * hp->n_head + h0) * nv;
		memset(attn, 0, (size_t)nq * nv * sizeof(float));
	}
	if (m == 0 || w0 >= m) {
		memset(out, 0, (size_t)nq * hd * sizeof(float));
		return;
	}
	/* decode, or a prefill whose other tokens went through cpu_flash (no
	 * gathered copy then): keys and values in place */
	bool direct = jb->n == 1 || !jb->whole;
	bool half = c->kv_es == 2;
	if (half) {
		/* an f16 cache multiplies f16 by f16: the query is rounded too, as
		 * llama.cpp's product with an f16 cache rounds its f32 operand */
		float *qr = c->qh + (size_t)ith * c->q_rows * hd;
		memcpy(qr, q, (size_t)nq * hd * sizeof(float));
		cpu_round16(c, qr, nq * hd);
		q = qr;
	}
	uint64_t head_off = cpu_vbase(c, kvh);
	if (direct)
		c->ops->att_scores_rows(q, (int)nq, (int)hd, c->kr[l] + head_off, cpu_vstride(c),
		                        c->kv_es == 2, cpu_vrows(c, l, kvh), m, hp->attn_scale, sc, vc);
	else
		c->ops->att_scores(q, (int)nq, (int)hd, c->krot + (size_t)kvh * hd * vc, vc, m,
		                   hp->attn_scale, sc, vc);
	uint8_t *mk = NULL;
	bool masked = false;
	if ((b->dist_cap > 0 && b->n_global > 0) || b->n_local > 0) {
		mk = c->lam_mk + (size_t)ith * KERN_ATT_Q * c->lam_cap;
		for (uint32_t r = 0; b->n_local > 0 && r < nq; r++)
			memset(mk + (size_t)r * c->lam_cap, 0, m);
		masked = cpu_lambda(jb, l, i, p, kvh, q, nq, m, sc, mk, ith);
	}
	for (uint32_t r = 0; hp->attn_softcap > 0 && r < nq; r++)
		cpu_softcap(c, sc + (size_t)r * vc, m);
	/* per-head keep-sets: the keys this KV head dropped get no weight */
	const uint8_t *hk = cpu_head_keep(jb, l, kvh);
	bool dropped = false;
	for (uint32_t k = 0; hk != NULL && k < m; k++)
		if (!hk[c->vslot[k]]) {
			dropped = true;
			for (uint32_t r = 0; r < nq; r++)
				sc[(size_t)r * vc + k] = -INFINITY;
		}
	/* a local layer: the keys before its window get no weight */
	for (uint32_t r = 0; w0 > 0 && r < nq; r++)
		for (uint32_t k = 0; k < w0; k++)
			sc[(size_t)r * vc + k] = -INFINITY;
	/* sparse decode: the keys not chosen are masked too; the weights
	 * reported are the dense ones (a shadow), taken before */
	const uint8_t *smk =
	        jb->n == 1 && cpu_sparse_layer(jb, l) ? c->sp_mask + (size_t)kvh * c->sp_vis_cap : NULL;
	bool lam = masked;
	masked = masked || w0 > 0 || dropped;
	if (smk != NULL) {
		for (uint32_t r = 0; attn != NULL && r < nq; r++) {
			const float *sr = sc + (size_t)r * vc;
			const uint8_t *mr = masked ? mk + (size_t)r * c->lam_cap : NULL;
			float mx = -INFINITY;
			double sum = 0;
			for (uint32_t k = 0; k < m; k++)
				mx = (mr == NULL || !mr[k]) && sr[k] > mx ? sr[k] : mx;
			for (uint32_t k = 0; k < m; k++)
				sum += mr != NULL && mr[k] ? 0.0 : exp((double)sr[k] - mx);
			for (uint32_t k = 0; k < m; k++)
				attn[(size_t)r * nv + c->vorder[k]] =
				        mr != NULL && mr[k] ? 0.0f : (float)(exp((double)sr[k] - mx) / sum);
		}
		for (uint32_t r = 0; r < nq; r++)
			for (uint32_t k = 0; k < m; k++)
				if (!smk[k])
					sc[(size_t)r * vc + k] = -INFINITY;
		masked = true;
	}
	float inv[KERN_ATT_Q];
	for (uint32_t r = 0; r < nq; r++) {
		float *sr = sc + (size_t)r * vc, mx = sr[0];
		for (uint32_t k = 1; k < m; k++)
			mx = sr[k] > mx ? sr[k] : mx;
		if (mx == -INFINITY) {
			/* every key it sees was dropped by its head: a zero output */
			memset(sr, 0, m * sizeof(float));
			inv[r] = 0;
		} else if (masked) {
			/* masked keys carry exactly no weight (the vector exp only
			 * flushes them to ~1e-38) */
			c->ops->exp_sum(sr, m, mx);
			float sum = 0;
			for (uint32_t k = 0; k < m; k++) {
				if (k < w0 || (lam && k < c->lam_cap && mk[(size_t)r * c->lam_cap + k]) ||
				    (smk != NULL && !smk[k]) || (dropped && !hk[c->vslot[k]]))
					sr[k] = 0;
				sum += sr[k];
			}
			inv[r] = sum > 0 ? 1.0f / sum : 0.0f;
		} else {
			inv[r] = 1.0f / c->ops->exp_sum(sr, m, mx);
		}
	}
	if (direct)
		c->ops->att_pv_rows(sc, (int)nq, vc, c->vc[l] + head_off, cpu_vstride(c), c->kv_es == 2,
		                    cpu_vrows(c, l, kvh), m, (int)hd, out);
	else
		c->ops->att_pv(sc, (int)nq, vc, c->vf + (size_t)kvh * vc * hd, m, (int)hd, out);
	for (uint32_t r = 0; r < nq; r++) {
		for (uint32_t d = 0; d < hd; d++)
			out[(size_t)r * hd + d] *= inv[r];
		if (attn && smk == NULL)
			for (uint32_t k = 0; k < m; k++)
				attn[(size_t)r * nv + c->vorder[k]] = sc[(size_t)r * vc + k] * inv[r];
	}
	if (jb->bo->attn_kv != NULL) {
		float *acc = c->akv + (((size_t)ith * hp->n_layer + l) * hp->n_head_kv + kvh) * c->akv_cap;
		bool amax = jb->b->attn_kv_max;
		for (uint32_t r = 0; r < nq; r++)
			for (uint32_t k = 0; k < m; k++) {
				float w = sc[(size_t)r * vc + k] * inv[r];
				float *a = &acc[c->vorder[k]];
				*a = amax ? (w > *a ? w : *a) : *a + w;
			}
	}
}

/* Load the keys [k0, k0 + mt) of the sorted visible set, KV head kvh of
 * layer l, into f->kt (transposed) and their values into f->v, as f32. */
static void cpu_flash_tile(const struct cpu *c, uint32_t l, uint32_t kvh, uint32_t k0, uint32_t mt,
                           struct cpu_fa *f)
{
	uint32_t hd = c->hp.head_dim;
	uint64_t head_off = cpu_vbase(c, kvh);
	bool half = c->kv_es == 2;
	const uint32_t *rows = cpu_vrows(c, l, kvh) + k0;
	c->ops->kv_rows_f32(c->kr[l] + head_off, cpu_vstride(c), half, rows, mt, (int)hd, true, f->kt,
	                    CPU_FA_TILE);
	c->ops->kv_rows_f32(c->vc[l] + head_off, cpu_vstride(c), half, rows, mt, (int)hd, false, f->v,
	                    hd);
}

/*
 * Tiled (flash) attention of ubatch tokens [i0, i0 + nt) with the query
 * heads of KV head kvh, layer l, into c->ao. The block's rows (token-major,
 * then head) meet the keys one tile of CPU_FA_TILE at a time: the tile is
 * converted to f32 once (keys transposed) and serves every row, and each
 * row keeps a running max mx, sum of weights l and unnormalised output o,
 * rescaled by exp(old max - new max) when a tile raises the max (online
 * softmax). Only the tiles below the block's longest prefix are visited;
 * within them a row's keys past its own prefix get weight 0. The result
 * equals cpu_attend's up to the order of float additions.
 */
void cpu_flash(struct cpu_job *jb, uint32_t l, uint32_t kvh, uint32_t i0, uint32_t nt, int ith)
{
	struct cpu *c = jb->c;
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, grp = hp->n_head / hp->n_head_kv, rows = nt * grp;
	struct cpu_fa f;
	cpu_flash_carve(c, ith, &f);
	uint32_t m[CPU_FA_ROWS], w[CPU_FA_ROWS], mmax = 0, wmin = UINT32_MAX;
	for (uint32_t t = 0; t < nt; t++) {
		int32_t p = jb->b->pos[jb->t0 + i0 + t];
		m[t] = cpu_prefix(c, p);
		w[t] = cpu_window_start(c, l, p); /* keys [w, m) are the row's */
		mmax = KVS_MAX(mmax, m[t]);
		wmin = KVS_MIN(wmin, w[t]);
		memcpy(f.q + (size_t)t * grp * hd, c->q + ((size_t)(i0 + t) * hp->n_head + kvh * grp) * hd,
		       (size_t)grp * hd * sizeof(float));
	}
	if (c->kv_es == 2) /* as cpu_attend: an f16 cache multiplies f16 by f16 */
		cpu_round16(c, f.q, rows * hd);
	memset(f.o, 0, (size_t)rows * hd * sizeof(float));
	for (uint32_t r = 0; r < rows; r++) {
		f.mx[r] = -INFINITY;
		f.l[r] = 0;
	}
	const uint8_t *hk = cpu_head_keep(jb, l, kvh);
	bool drop[CPU_FA_TILE] = { 0 }; /* the tile's keys this KV head dropped */
	/* tiles wholly before every row's window are skipped */
	for (uint32_t k0 = wmin / CPU_FA_TILE * CPU_FA_TILE; k0 < mmax; k0 += CPU_FA_TILE) {
		uint32_t mt = KVS_MIN((uint32_t)CPU_FA_TILE, mmax - k0);
		bool any = false;
		for (uint32_t j = 0; hk != NULL && j < mt; j++)
			any |= (drop[j] = !hk[c->vslot[k0 + j]]);
		cpu_flash_tile(c, l, kvh, k0, mt, &f);
		for (uint32_t r0 = 0; r0 < rows; r0 += KERN_ATT_Q)
			c->ops->att_scores(f.q + (size_t)r0 * hd, (int)KVS_MIN((uint32_t)KERN_ATT_Q, rows - r0),
			                   (int)hd, f.kt, CPU_FA_TILE, mt, hp->attn_scale,
			                   f.s + (size_t)r0 * CPU_FA_TILE, CPU_FA_TILE);
		for (uint32_t r = 0; r < rows; r++) {
			float *sr = f.s + (size_t)r * CPU_FA_TILE;
			uint32_t lim = m[r / grp] > k0 ? KVS_MIN(mt, m[r / grp] - k0) : 0;
			/* [st, lim) of the tile lie in the row's window */
			uint32_t st = w[r / grp] > k0 ? KVS_MIN(lim, w[r / grp] - k0) : 0;
			f.alpha[r] = 1;
			if (lim > st) {
				if (hp->attn_softcap > 0)
					cpu_softcap(c, sr + st, lim - st);
				for (uint32_t j = st; any && j < lim; j++)
					if (drop[j])
						sr[j] = -INFINITY;
				float tmax = c->ops->max_f32(sr + st, lim - st);
				if (tmax == -INFINITY) {
					/* every key of the tile in its range was dropped */
					memset(sr + st, 0, (lim - st) * sizeof(float));
				} else {
					float nmx = tmax > f.mx[r] ? tmax : f.mx[r];
					f.alpha[r] = expf(f.mx[r] - nmx); /* 0 on the first tile: -inf */
					float tl = c->ops->exp_sum(sr + st, lim - st, nmx);
					if (any) {
						/* dropped keys carry exactly no weight (the vector
						 * exp only flushes them to ~1e-38) */
						double ts = 0;
						for (uint32_t j = st; j < lim; j++) {
							sr[j] = drop[j] ? 0.0f : sr[j];
							ts += sr[j];
						}
						tl = (float)ts;
					}
					f.l[r] = f.l[r] * f.alpha[r] + tl;
					f.mx[r] = nmx;
				}
			}
			memset(sr, 0, st * sizeof(float));
			memset(sr + lim, 0, (mt - lim) * sizeof(float));
		}
		for (uint32_t r0 = 0; r0 < rows; r0 += KERN_ATT_Q)
			c->ops->att_pv(f.s + (size_t)r0 * CPU_FA_TILE,
			               (int)KVS_MIN((uint32_t)KERN_ATT_Q, rows - r0), CPU_FA_TILE, f.v, mt,
			               (int)hd, f.pv + (size_t)r0 * hd);
		/* o = alpha o + pv, into pv, which becomes o */
		for (uint32_t r = 0; r < rows; r++)
			if (f.alpha[r] != 0)
				c->ops->axpy_f32(f.pv + (size_t)r * hd, f.o + (size_t)r * hd, f.alpha[r], hd);
		float *t = f.o;
		f.o = f.pv;
		f.pv = t;
	}
	for (uint32_t r = 0; r < rows; r++) {
		uint32_t t = r / grp, h = kvh * grp + r % grp;
		float *out = c->ao + ((size_t)(i0 + t) * hp->n_head + h) * hd;
		float inv = f.l[r] > 0 ? 1.0f / f.l[r] : 0.0f; /* 0: the query sees nothing */
		for (uint32_t d = 0; d < hd; d++)
			out[d] = f.o[(size_t)r * hd + d] * inv;
	}
}

/* The tiled attention of the ubatch's first n tokens, layer l: work items
 * (query block, KV head) handed out through an atomic counter, so a thread
 * that lost its core to another process does not hold the others up; a
 * short batch takes smaller blocks, so that there are items for every
 * thread (4 each at least, while a block keeps a token). */
void cpu_flash_items(struct cpu_job *jb, uint32_t l, uint32_t n, int ith, int nth, cpu_flash_fn fn)
{
	struct cpu *c = jb->c;
	uint32_t nkv = c->hp.n_head_kv, bq = c->fa_tokens;
	while (bq > 1 && nkv * ((n + bq - 1) / bq) < 4u * (uint32_t)nth)
		bq = (bq + 1) / 2;
	uint32_t nb = (n + bq - 1) / bq;
	for (;;) {
		uint32_t it = atomic_fetch_add_explicit(&c->fa_next[l], 1, memory_order_relaxed);
		if (it >= nb * nkv)
			break;
		uint32_t blk = it / nkv, kvh = it % nkv, i0 = blk * bq;
		fn(jb, l, kvh, i0, KVS_MIN(bq, n - i0), ith);
	}
}

/* One run of cpu_attend_split: the keys k.. (rm of them, sorted-prefix
 * indices) through every KV head, scores into sc (n_head, vis_cap; column
 * k - k0 for key k) or, with pv, the weights in sc times the values added
 * into the parts' outputs (tmp holds one head group's product). */
static void cpu_split_run(const struct cpu *c, uint32_t l, const float *q, uint32_t k0, uint32_t k,
                          uint32_t rm, float *sc, float *part, float *tmp, bool pv)
{
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, grp = hp->n_head / hp->n_head_kv, vc = c->vis_cap, nq;
	bool half = c->kv_es == 2;
	for (uint32_t h0 = 0; h0 < hp->n_head; h0 += nq) {
		/* query heads [h0, h0 + nq) share KV head h0 / grp */
		nq = KVS_MIN((uint32_t)KERN_ATT_Q, grp - h0 % grp);
		uint64_t head_off = cpu_vbase(c, h0 / grp);
		float *s = sc + (size_t)h0 * vc + (k - k0);
		if (!pv) {
			c->ops->att_scores_rows(q + (size_t)h0 * hd, (int)nq, (int)hd, c->kr[l] + head_off,
			                        cpu_vstride(c), half, cpu_vrows(c, l, h0 / grp) + k, rm,
			                        hp->attn_scale, s, vc);
			continue;
		}
		c->ops->att_pv_rows(s, (int)nq, vc, c->vc[l] + head_off, cpu_vstride(c), half,
		                    cpu_vrows(c, l, h0 / grp) + k, rm, (int)hd, tmp);
		for (uint32_t r = 0; r < nq; r++)
			c->ops->axpy_f32(part + (size_t)(h0 + r) * (hd + 2) + 2, tmp + (size_t)r * hd, 1.0f,
			                 hd);
	}
}

/*
 * Decode attention (one token, every thread) with the visible keys split
 * across the threads: thread ith takes its share of the sorted prefix,
 * reading each key and value once for all the query heads of its KV head,
 * and leaves per query head its max, sum of weights and unnormalised output
 * in c->dpart. After a barrier each thread merges the threads' parts itself
 * (cpu_split_merge) into its own output row, so the merge costs no second
 * barrier. The share goes in runs of CPU_DEC_RUN keys, each run through
 * every KV head before the next: a slot's keys (and values) of all the KV
 * heads are adjacent in the cache, so a run reads them as one stream, where
 * a pass per KV head would read a third of each stretch and leave the
 * prefetcher fetching the rest for nothing (2.7 against 7.4 GB/s measured).
 */
void cpu_attend_split(struct cpu_job *jb, uint32_t l, int ith, int nth)
{
	struct cpu *c = jb->c;
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, vc = c->vis_cap;
	int32_t p = jb->b->pos[jb->t0];
	uint32_t m = cpu_prefix(c, p), k0, k1;
	uint32_t w0 = KVS_MIN(cpu_window_start(c, l, p), m); /* a local layer's window: [w0, m) */
	int np = pool_size(c->pool);
	float *sc = c->scores + (size_t)ith * c->q_rows * vc;
	float *tmp = c->txb + (size_t)ith * c->kmax; /* (KERN_ATT_Q, hd) */
	const float *q = c->q;
	if (c->kv_es == 2) { /* as cpu_attend: an f16 cache multiplies f16 by f16 */
		float *qr = c->qh + (size_t)ith * c->q_rows * hd;
		memcpy(qr, q, (size_t)hp->n_head * hd * sizeof(float));
		cpu_round16(c, qr, hp->n_head * hd);
		q = qr;
	}
	/* part j always holds the same keys, whichever thread computes it */
	for (int j = ith; j < np; j += nth) {
		cpu_share(m - w0, j, np, &k0, &k1);
		k0 += w0;
		k1 += w0;
		float *part = c->dpart + (size_t)j * hp->n_head * (hd + 2); /* (n_head, hd + 2): mx, l, o */
		/* the part's weights stay in its own columns [k0, k1) of the
		 * thread's score rows, for cpu_split_weights */
		float *scj = sc + k0;
		if (k1 == k0) {
			for (uint32_t h = 0; h < hp->n_head; h++) {
				part[(size_t)h * (hd + 2)] = -INFINITY;
				part[(size_t)h * (hd + 2) + 1] = 0;
			}
			continue;
		}
		for (uint32_t k = k0; k < k1; k += CPU_DEC_RUN)
			cpu_split_run(c, l, q, k0, k, KVS_MIN((uint32_t)CPU_DEC_RUN, k1 - k), scj, part, tmp,
			              false);
		for (uint32_t h = 0; h < hp->n_head; h++) {
			float *pr = part + (size_t)h * (hd + 2), *sr = scj + (size_t)h * vc;
			const uint8_t *hk = cpu_head_keep(jb, l, h / (hp->n_head / hp->n_head_kv));
			if (hp->attn_softcap > 0)
				cpu_softcap(c, sr, k1 - k0);
			bool any = false;
			for (uint32_t k = k0; hk != NULL && k < k1; k++)
				if (!hk[c->vslot[k]]) {
					sr[k - k0] = -INFINITY;
					any = true;
				}
			memset(pr + 2, 0, hd * sizeof(float));
			pr[0] = c->ops->max_f32(sr, k1 - k0);
			if (pr[0] == -INFINITY) {
				/* its head dropped every key of this part: no weight */
				pr[1] = 0;
				memset(sr, 0, (k1 - k0) * sizeof(float));
				continue;
			}
			pr[1] = c->ops->exp_sum(sr, k1 - k0, pr[0]);
			if (any) {
				/* dropped keys carry exactly no weight */
				double ts = 0;
				for (uint32_t k = k0; k < k1; k++) {
					sr[k - k0] = hk[c->vslot[k]] ? sr[k - k0] : 0.0f;
					ts += sr[k - k0];
				}
				pr[1] = (float)ts;
			}
		}
		for (uint32_t k = k0; k < k1; k += CPU_DEC_RUN)
			cpu_split_run(c, l, q, k0, k, KVS_MIN((uint32_t)CPU_DEC_RUN, k1 - k), scj, part, tmp,
			              true);
	}
}

/* Query head h's merged softmax over the parts of cpu_attend_split: the
 * largest part maximum (returned; -INFINITY when no part saw a key) and
 * the sum of weights relative to it (*sum), in part order, so that
 * cpu_split_merge and cpu_split_weights normalise by the same numbers. */
static float cpu_split_norm(const struct cpu *c, uint32_t h, float *sum)
{
	uint32_t hd = c->hp.head_dim;
	int np = pool_size(c->pool);
	size_t per = (size_t)c->hp.n_head * (hd + 2);
	float mx = -INFINITY;
	*sum = 0;
	for (int t = 0; t < np; t++)
		mx = fmaxf(mx, c->dpart[t * per + (size_t)h * (hd + 2)]);
	for (int t = 0; t < np && mx != -INFINITY; t++) {
		const float *p = c->dpart + t * per + (size_t)h * (hd + 2);
		if (p[0] != -INFINITY)
			*sum += expf(p[0] - mx) * p[1];
	}
	return mx;
}

/* The attention weights of a split decode (want_attn), after the barrier
 * that ends cpu_attend_split: each thread normalises the parts it computed,
 * whose unnormalised weights exp(s - part max) are still in its score rows,
 * by the merged maximum and sum, so the weights reported are those the
 * output was made with. Keys outside every part (before a local layer's
 * window, after the query's position) get 0 from thread 0. */
void cpu_split_weights(struct cpu_job *jb, uint32_t l, int ith, int nth)
{
	struct cpu *c = jb->c;
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, vc = c->vis_cap, nv = jb->b->n_visible;
	int32_t p = jb->b->pos[jb->t0];
	uint32_t m = cpu_prefix(c, p), k0, k1;
	uint32_t w0 = KVS_MIN(cpu_window_start(c, l, p), m);
	int np = pool_size(c->pool);
	size_t per = (size_t)hp->n_head * (hd + 2);
	const float *sc = c->scores + (size_t)ith * c->q_rows * vc;
	float *attn = jb->bo->attn + (size_t)l * hp->n_head * nv;
	for (uint32_t h = 0; h < hp->n_head; h++) {
		float sum, mx = cpu_split_norm(c, h, &sum), *ar = attn + (size_t)h * nv;
		for (uint32_t k = 0; ith == 0 && k < nv; k++)
			if (k < w0 || k >= m)
				ar[c->vorder[k]] = 0.0f;
		for (int j = ith; j < np; j += nth) {
			cpu_share(m - w0, j, np, &k0, &k1);
			k0 += w0;
			k1 += w0;
			const float *pt = c->dpart + j * per + (size_t)h * (hd + 2);
			float w = pt[0] == -INFINITY || sum == 0 ? 0.0f : expf(pt[0] - mx) / sum;
			for (uint32_t k = k0; k < k1; k++)
				ar[c->vorder[k]] = sc[(size_t)h * vc + k] * w;
		}
	}
}

/* Merge the parts of cpu_attend_split into out (n_head, head_dim), in
 * part order. */
void cpu_split_merge(const struct cpu *c, float *out)
{
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim;
	int nth = pool_size(c->pool);
	size_t per = (size_t)hp->n_head * (hd + 2);
	for (uint32_t h = 0; h < hp->n_head; h++) {
		float sum, mx = cpu_split_norm(c, h, &sum), *o = out + (size_t)h * hd;
		memset(o, 0, hd * sizeof(float));
		if (mx == -INFINITY)
			continue; /* no keys at all */
		for (int t = 0; t < nth; t++) {
			const float *p = c->dpart + t * per + (size_t)h * (hd + 2);
			if (p[0] != -INFINITY)
				c->ops->axpy_f32(o, p + 2, expf(p[0] - mx), hd);
		}
		float inv = 1.0f / sum;
		for (uint32_t d = 0; d < hd; d++)
			o[d] *= inv;
	}
}

/* Bias, per-head norm (qwen3), cache the pre-RoPE k and the v, rotate q:
 * ubatch token i. */
void cpu_qkv_finish(struct cpu_job *jb, uint32_t l, uint32_t i)
{
	struct cpu *c = jb->c;
	const struct hparams *hp = &c->hp;
	const struct cpu_layer *L = &c->L[l];
	uint32_t hd = hp->head_dim, nq = hp->n_head * hd, nkv = hp->n_head_kv * hd;
	float *q = c->q + (size_t)i * nq, *k = c->k + (size_t)i * nkv, *v = c->v + (size_t)i * nkv;
	if (L->bq)
		for (uint32_t r = 0; r < nq; r++)
			q[r] += L->bq[r];
	if (L->bk)
		for (uint32_t r = 0; r < nkv; r++)
			k[r] += L->bk[r];
	if (L->bv)
		for (uint32_t r = 0; r < nkv; r++)
			v[r] += L->bv[r];
	if (L->q_norm)
		for (uint32_t h = 0; h < hp->n_head; h++)
			c->ops->rmsnorm(q + (size_t)h * hd, L->q_norm, q + (size_t)h * hd, hd, hp->rms_eps);
	if (L->k_norm)
		for (uint32_t h = 0; h < hp->n_head_kv; h++)
			c->ops->rmsnorm(k + (size_t)h * hd, L->k_norm, k + (size_t)h * hd, hd, hp->rms_eps);
	if (jb->bo->q != NULL) /* want_q: the query as it stands before RoPE */
		memcpy(jb->bo->q + ((size_t)(jb->t0 + i) * hp->n_layer + l) * nq, q, nq * sizeof(float));
	uint32_t s = jb->b->slot[jb->t0 + i];
	const float *cs = (cpu_rope_hp(c, l) == hp ? c->tok_cs : c->tok_cs_swa) + (size_t)i * hp->n_rot;
	for (uint32_t h = 0; h < hp->n_head_kv; h++) {
		/* each head's entry in its row (the slot's own in the slot store) */
		uint64_t off = cpu_cell_off(c, l, h, s);
		cpu_kv_put(c, k + (size_t)h * hd, c->kc[l] + off);
		cpu_kv_put(c, v + (size_t)h * hd, c->vc[l] + off);
		/* k is scratch now: rotate it in place into the rotated cache */
		cpu_rope(c, k + (size_t)h * hd, cs);
		cpu_kv_put(c, k + (size_t)h * hd, c->kr[l] + off);
	}
	for (uint32_t h = 0; h < hp->n_head; h++)
		cpu_rope(c, q + (size_t)h * hd, cs);
}

/* Attention items [i0, i1) of the ubatch; an item is a token and up to
 * KERN_ATT_Q query heads sharing one KV head. */
void cpu_attend_items(struct cpu_job *jb, uint32_t l, uint32_t i0, uint32_t i1, int ith)
{
	const struct hparams *hp = &jb->c->hp;
	uint32_t grp = hp->n_head / hp->n_head_kv, per_kv = (grp + KERN_ATT_Q - 1) / KERN_ATT_Q;
	for (uint32_t it = i0; it < i1; it++) {
		uint32_t i = it / (hp->n_head_kv * per_kv), rest = it % (hp->n_head_kv * per_kv);
		uint32_t g = rest / per_kv, part = rest % per_kv;
		uint32_t h0 = g * grp + part * KERN_ATT_Q;
		cpu_attend(jb, l, i, h0, KVS_MIN((uint32_t)KERN_ATT_Q, grp - part * KERN_ATT_Q), ith);
	}
}

/* ---------------------------------------------- the backend's cache rows */

/* Copy slots src to dst (every layer: keys, values, rotated keys). */
void cpu_kv_copy(void *state, const uint32_t *dst, const uint32_t *src, uint32_t n)
{
	struct cpu *c = state;
	size_t row = c->kv_row * c->kv_es;
	for (uint32_t i = 0; i < n; i++) {
		if (dst[i] == src[i])
			continue;
		for (uint32_t l = 0; l < c->hp.n_layer && c->rows == NULL; l++) {
			memcpy(c->kc[l] + dst[i] * row, c->kc[l] + src[i] * row, row);
			memcpy(c->vc[l] + dst[i] * row, c->vc[l] + src[i] * row, row);
			memcpy(c->kr[l] + dst[i] * row, c->kr[l] + src[i] * row, row);
		}
		if (c->rows != NULL)
			cpu_rows_copy(c, dst[i], src[i]);
		c->kr_pos[dst[i]] = c->kr_pos[src[i]];
		cpu_sparse_forget(c, dst[i]);
	}
}

/* One slot's key or value of kv_head, layer, as f32 into out (head_dim). */
void cpu_kv_read(void *state, uint32_t layer, uint32_t slot, uint32_t kv_head, bool value,
                 float *out)
{
	struct cpu *c = state;
	const uint8_t *base = value ? c->vc[layer] : c->kc[layer];
	if (c->rows != NULL &&
	    c->rows[((size_t)layer * c->hp.n_head_kv + kv_head) * c->cfg.n_ctx + slot] >=
	            c->n_rows * c->hp.n_head_kv) {
		memset(out, 0, c->hp.head_dim * sizeof(float)); /* the head keeps no entry */
		return;
	}
	const uint8_t *p = base + cpu_cell_off(c, layer, kv_head, slot);
	if (c->kv_es == 2)
		for (uint32_t d = 0; d < c->hp.head_dim; d++)
			out[d] = dtype_f16_to_f32(((const uint16_t *)p)[d]);
	else
		memcpy(out, p, c->hp.head_dim * sizeof(float));
}

/* A slot's raw K/V rows of every layer out of (or, load, into) buf. */
int cpu_kv_raw(void *state, uint32_t slot, void *buf, bool load, struct err *e)
{
	struct cpu *c = state;
	size_t row = c->kv_row * c->kv_es;
	uint8_t *b = buf;
	(void)e;
	if (c->rows != NULL)
		cpu_rows_raw(c, slot, b, load);
	for (uint32_t l = 0; l < c->hp.n_layer && c->rows == NULL; l++, b += 2 * row) {
		uint8_t *k = c->kc[l] + (size_t)slot * row, *v = c->vc[l] + (size_t)slot * row;
		if (load) {
			memcpy(k, b, row);
			memcpy(v, b + row, row);
		} else {
			memcpy(b, k, row);
			memcpy(b + row, v, row);
		}
	}
	if (load) {
		c->kr_pos[slot] = -1; /* its rotated keys are remade from these */
		cpu_sparse_forget(c, slot);
	}
	return KVS_OK;
}
