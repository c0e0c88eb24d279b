/*
 * cpu-hip-prefill.c: HiP's block-sparse prefill on the CPU (engine_sparse
 * hip, prefill=N): each block of the tiled prefill's queries and KV head
 * attends the sinks, its window and the key blocks HiP's search finds for
 * it, by an online softmax over the listed keys; and the statistics a
 * prefill reports (keys read, dense keys, the mass its last rows captured).
 *
 * The search ranks a half by its first block's max q.k over every fourth
 * query of the block (the prompt's page bounds are not current while it is
 * written), through tiles of keys as cpu_flash reads them, and keeps the
 * decode's `beam` x K halves a round, K in the last. The prompt's last
 * `tail` queries (a batch whose logits are wanted) attend every key: the
 * question the reply answers must see what dense attention sees. Session
 * 12 measured both on the 8k passkey (doc/EVALS.md): without the tail the
 * prefill lost every needle dense found, the tail brought back the two at
 * depth 10 % and the beam one of the two at depth 50 %.
 */
#include "engine/cpu-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

bool cpu_sparse_prefill(const struct cpu_job *jb, uint32_t l)
{
	const struct cpu *c = jb->c;
	/* local layers are short already; soft-capped scores (Gemma 2) take
	 * cpu_flash's path, which caps them */
	return c->sparse != NULL && jb->b->n_tokens > 1 && l >= c->sparse->dense_layers &&
	        c->L[l].window == 0 && c->hp.attn_softcap <= 0;
}

/* The dense attention mass that the keys attended (sinks k < k0, window
 * k >= k1, else those of chosen block blk[(k - k0) / block]) captured for
 * nq query rows q over the m keys they see; summed over the rows. */
static double cpu_hip_mass(struct cpu *c, uint32_t l, uint32_t kvh, const float *q, uint32_t nq,
                           uint32_t m, uint32_t k0, uint32_t k1, const uint8_t *blk, int ith)
{
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, vc = c->vis_cap, bk = c->sparse->block;
	float *sc = c->scores + (size_t)ith * c->q_rows * vc; /* (KERN_ATT_Q, vis_cap) */
	double total = 0;
	for (uint32_t r0 = 0; r0 < nq; r0 += KERN_ATT_Q) {
		uint32_t n = KVS_MIN((uint32_t)KERN_ATT_Q, nq - r0);
		c->ops->att_scores_rows(q + (size_t)r0 * hd, (int)n, (int)hd,
		                        c->kr[l] + (uint64_t)kvh * hd * c->kv_es, (int64_t)c->kv_row,
		                        c->kv_es == 2, c->vslot, m, hp->attn_scale, sc, vc);
		for (uint32_t r = 0; r < n; r++) {
			const float *sr = sc + (size_t)r * vc;
			float mx = c->ops->max_f32(sr, m);
			double all = 0, got = 0;
			for (uint32_t k = 0; k < m; k++) {
				double w = exp((double)sr[k] - mx);
				all += w;
				got += k < k0 || k >= k1 || blk[(k - k0) / bk] ? w : 0;
			}
			total += got / all;
		}
	}
	return total;
}

/* Gather into qs (rows, head_dim) the queries of KV head kvh of every
 * fourth token of [i0, i0 + nt), from the last; returns the rows. */
static uint32_t cpu_hip_scorers(const struct cpu *c, uint32_t kvh, uint32_t i0, uint32_t nt,
                                float *qs)
{
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, grp = hp->n_head / hp->n_head_kv, nq = 0;
	for (uint32_t t = nt; t-- > 0;) {
		if ((nt - 1 - t) % 4 != 0)
			continue;
		memcpy(qs + (size_t)nq * hd, c->q + ((size_t)(i0 + t) * hp->n_head + kvh * grp) * hd,
		       (size_t)grp * hd * sizeof(float));
		nq += grp;
	}
	return nq;
}

/* A prefill search's scoring (sparse_score_fn): the search's keys, and the
 * tile scratch of the block's attention, which runs after it. */
struct cpu_hip_pf {
	struct cpu_hip_ctx x;
	struct cpu_fa *f;
};

/*
 * HiP's first-block representative for a prefill block: each half scores
 * the max q.k of its first `block` keys over the scoring rows. The keys of
 * every half are gathered once into transposed tiles of CPU_FA_TILE, as
 * cpu_flash reads them, and scored by att_scores KERN_ATT_Q rows at a time:
 * the per-key kernel (att_scores_rows, which the decode's single query
 * suits) converts each key once per 4 rows and ends every dot product with
 * a horizontal sum, which made the search cost more than the attention it
 * chose for at 32k. The scores are the same dot products, summed in
 * another order.
 */
static void cpu_hip_pf_score(void *ctx, const uint32_t *start, const uint32_t *size, uint32_t n,
                             float *score)
{
	const struct cpu_hip_pf *pf = ctx;
	const struct cpu_hip_ctx *x = &pf->x;
	struct cpu *c = x->c;
	uint32_t hd = c->hp.head_dim, bk = c->sparse->block;
	uint32_t *keys = c->hip_keys + (size_t)x->ith * c->sp_vis_cap;    /* (keys scored) slots */
	uint32_t *own = c->hip_kn + (size_t)x->ith * (c->sp_vis_cap + 1); /* (keys scored) half */
	uint32_t nk = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t a = x->k0 + start[i] * bk, e = KVS_MIN(a + bk, x->k1);
		for (uint32_t k = a; k < e; k++) {
			keys[nk] = c->vslot[k];
			own[nk++] = i;
		}
		score[i] = -INFINITY;
	}
	(void)size; /* a half is scored by its first block, whatever its size */
	struct cpu_fa *f = pf->f;
	uint64_t head_off = (uint64_t)x->h * hd * c->kv_es;
	for (uint32_t t0 = 0; t0 < nk; t0 += CPU_FA_TILE) {
		uint32_t mt = KVS_MIN((uint32_t)CPU_FA_TILE, nk - t0);
		c->ops->kv_rows_f32(c->kr[x->l] + head_off, (int64_t)c->kv_row, c->kv_es == 2, keys + t0,
		                    mt, (int)hd, true, f->kt, CPU_FA_TILE);
		for (uint32_t r0 = 0; r0 < x->nq; r0 += KERN_ATT_Q)
			c->ops->att_scores(x->q + (size_t)r0 * hd,
			                   (int)KVS_MIN((uint32_t)KERN_ATT_Q, x->nq - r0), (int)hd, f->kt,
			                   CPU_FA_TILE, mt, c->hp.attn_scale, f->s + (size_t)r0 * CPU_FA_TILE,
			                   CPU_FA_TILE);
		for (uint32_t r = 0; r < x->nq; r++) {
			const float *sr = f->s + (size_t)r * CPU_FA_TILE;
			for (uint32_t j = 0; j < mt; j++) {
				float *d = &score[own[t0 + j]];
				*d = sr[j] > *d ? sr[j] : *d;
			}
		}
	}
}

/* The online softmax of cpu_flash over the keys at slots[0, n) (sorted
 * by position) for the block's rows (token-major, then head) in f, token
 * t taking the first lim[t] keys; the outputs into c->ao. */
static void cpu_hip_attend(struct cpu *c, uint32_t l, uint32_t kvh, uint32_t i0, uint32_t nt,
                           const uint32_t *slots, uint32_t n, const uint32_t *lim, struct cpu_fa *f)
{
	const struct hparams *hp = &c->hp;
	uint32_t hd = hp->head_dim, grp = hp->n_head / hp->n_head_kv, rows = nt * grp;
	uint64_t head_off = (uint64_t)kvh * hd * c->kv_es;
	bool half = c->kv_es == 2;
	memset(f->o, 0, (size_t)rows * hd * sizeof(float));
	for (uint32_t r = 0; r < rows; r++) {
		f->mx[r] = -INFINITY;
		f->l[r] = 0;
	}
	for (uint32_t t0 = 0; t0 < n; t0 += CPU_FA_TILE) {
		uint32_t mt = KVS_MIN((uint32_t)CPU_FA_TILE, n - t0);
		c->ops->kv_rows_f32(c->kr[l] + head_off, (int64_t)c->kv_row, half, slots + t0, mt, (int)hd,
		                    true, f->kt, CPU_FA_TILE);
		c->ops->kv_rows_f32(c->vc[l] + head_off, (int64_t)c->kv_row, half, slots + t0, mt, (int)hd,
		                    false, f->v, hd);
		for (uint32_t r0 = 0; r0 < rows; r0 += KERN_ATT_Q)
			c->ops->att_scores(f->q + (size_t)r0 * hd,
			                   (int)KVS_MIN((uint32_t)KERN_ATT_Q, rows - r0), (int)hd, f->kt,
			                   CPU_FA_TILE, mt, hp->attn_scale, f->s + (size_t)r0 * CPU_FA_TILE,
			                   CPU_FA_TILE);
		for (uint32_t r = 0; r < rows; r++) {
			float *sr = f->s + (size_t)r * CPU_FA_TILE;
			uint32_t lm = lim[r / grp] > t0 ? KVS_MIN(mt, lim[r / grp] - t0) : 0;
			f->alpha[r] = 1;
			if (lm > 0) {
				float tmax = c->ops->max_f32(sr, lm);
				float nmx = tmax > f->mx[r] ? tmax : f->mx[r];
				f->alpha[r] = expf(f->mx[r] - nmx); /* 0 on the first tile: -inf */
				f->l[r] = f->l[r] * f->alpha[r] + c->ops->exp_sum(sr, lm, nmx);
				f->mx[r] = nmx;
			}
			memset(sr + lm, 0, (mt - lm) * sizeof(float));
		}
		for (uint32_t r0 = 0; r0 < rows; r0 += KERN_ATT_Q)
			c->ops->att_pv(f->s + (size_t)r0 * CPU_FA_TILE,
			               (int)KVS_MIN((uint32_t)KERN_ATT_Q, rows - r0), CPU_FA_TILE, f->v, mt,
			               (int)hd, f->pv + (size_t)r0 * hd);
		for (uint32_t r = 0; r < rows; r++)
			if (f->alpha[r] != 0)
				c->ops->axpy_f32(f->pv + (size_t)r * hd, f->o + (size_t)r * hd, f->alpha[r], hd);
		float *tmp = f->o;
		f->o = f->pv;
		f->pv = tmp;
	}
	for (uint32_t r = 0; r < rows; r++) {
		uint32_t t = r / grp, h = kvh * grp + r % grp;
		float *out = c->ao + ((size_t)(i0 + t) * hp->n_head + h) * hd;
		float inv = f->l[r] > 0 ? 1.0f / f->l[r] : 0.0f; /* 0: the query sees nothing */
		for (uint32_t d = 0; d < hd; d++)
			out[d] = f->o[(size_t)r * hd + d] * inv;
	}
}

/* How many of ubatch tokens [i0, i0 + nt) come before the batch's dense
 * tail: its last `tail` tokens when its logits are wanted (the prompt's
 * end, whose queries the next token is predicted from); nt without one. */
static uint32_t cpu_hip_before_tail(const struct cpu_job *jb, uint32_t i0, uint32_t nt)
{
	const struct engine_batch *b = jb->b;
	uint32_t tail = jb->c->sparse->tail;
	if (tail == 0 || b->logits == ENGINE_LOGITS_NONE)
		return nt;
	uint32_t from = b->n_tokens > tail ? b->n_tokens - tail : 0; /* batch index */
	uint32_t at = jb->t0 + i0;
	return at >= from ? 0 : KVS_MIN(nt, from - at);
}

/* The dense tail's tokens [i0, i0 + nt): cpu_flash over every key they
 * see, counted as read in full. */
static void cpu_hip_tail(struct cpu_job *jb, uint32_t l, uint32_t kvh, uint32_t i0, uint32_t nt,
                         int ith)
{
	struct cpu *c = jb->c;
	uint32_t grp = c->hp.n_head / c->hp.n_head_kv;
	double *acc = c->hip_pf + (size_t)ith * 4; /* keys read, dense, mass, rows */
	for (uint32_t t = 0; t < nt; t++) {
		uint32_t m = cpu_prefix(c, jb->b->pos[jb->t0 + i0 + t]);
		acc[0] += (double)m * grp;
		acc[1] += (double)m * grp;
	}
	cpu_flash(jb, l, kvh, i0, nt, ith);
}

/*
 * One query block's HiP attention, tokens [i0, i0 + nt) (cpu_hip_flash
 * says what it attends).
 */
static void cpu_hip_block(struct cpu_job *jb, uint32_t l, uint32_t kvh, uint32_t i0, uint32_t nt,
                          int ith)
{
	struct cpu *c = jb->c;
	const struct hparams *hp = &c->hp;
	const struct engine_sparse *s = c->sparse;
	uint32_t hd = hp->head_dim, grp = hp->n_head / hp->n_head_kv, rows = nt * grp;
	uint32_t vc = c->sp_vis_cap, bk = s->block;
	uint32_t m[CPU_FA_ROWS], lim[CPU_FA_ROWS], mmax = 0, mmin = UINT32_MAX;
	for (uint32_t t = 0; t < nt; t++) {
		m[t] = cpu_prefix(c, jb->b->pos[jb->t0 + i0 + t]);
		mmax = KVS_MAX(mmax, m[t]);
		mmin = KVS_MIN(mmin, m[t]);
	}
	uint32_t k0 = KVS_MIN(s->sinks, mmin);
	uint32_t k1 = mmin > k0 + s->recent ? mmin - s->recent : k0;
	uint32_t always = k0 + (mmax - k1);
	uint32_t k_blocks = s->budget > always ? (s->budget - always + bk - 1) / bk : 0;
	uint32_t n_blocks = (k1 - k0 + bk - 1) / bk;
	uint8_t *blk = c->hip_blk + (size_t)ith * vc;               /* (n_blocks) */
	uint32_t *slots = c->hip_list + (size_t)ith * vc, n = 0, k; /* (keys attended) */
	bool sparse = n_blocks > k_blocks;
	struct cpu_fa f;
	cpu_flash_carve(c, ith, &f);
	if (sparse) {
		float *qs = c->hip_q + (size_t)ith * c->fa_rows * hd; /* (scoring rows, head_dim) */
		uint32_t nq = cpu_hip_scorers(c, kvh, i0, nt, qs);
		struct cpu_hip_pf pf = { { c, l, kvh, k0, k1, ith, qs, nq, NULL, NULL }, &f };
		uint64_t scored = 0;
		sparse_tree_ensure(&c->hip_tree[ith], n_blocks);
		sparse_hip_tree_beam(&c->hip_tree[ith], n_blocks, k_blocks, k_blocks * s->beam,
		                     cpu_hip_pf_score, &pf, blk, &scored);
	} else {
		memset(blk, 1, n_blocks);
	}
	/* the keys its head dropped (per-head keep-sets) are left out */
	const uint8_t *hk = cpu_head_keep(jb, l, kvh);
	for (k = 0; k < k0; k++)
		if (hk == NULL || hk[c->vslot[k]])
			slots[n++] = c->vslot[k];
	for (; k < k1; k++)
		if (blk[(k - k0) / bk] && (hk == NULL || hk[c->vslot[k]]))
			slots[n++] = c->vslot[k];
	uint32_t n_mid = n;
	for (; k < mmax; k++)
		if (hk == NULL || hk[c->vslot[k]])
			slots[n++] = c->vslot[k];
	double *acc = c->hip_pf + (size_t)ith * 4; /* keys read, dense, mass, rows */
	for (uint32_t t = 0; t < nt; t++) {
		/* token t's own keys: the list up to its prefix m[t] */
		lim[t] = n_mid;
		for (k = k1; k < m[t]; k++)
			lim[t] += hk == NULL || hk[c->vslot[k]];
		acc[0] += (double)lim[t] * grp;
		acc[1] += (double)m[t] * grp;
	}
	if (sparse && jb->bo->attn != NULL) {
		const float *ql = c->q + ((size_t)(i0 + nt - 1) * hp->n_head + kvh * grp) * hd;
		acc[2] += cpu_hip_mass(c, l, kvh, ql, grp, m[nt - 1], k0, k1, blk, ith);
		acc[3] += grp;
	}
	for (uint32_t t = 0; t < nt; t++)
		memcpy(f.q + (size_t)t * grp * hd, c->q + ((size_t)(i0 + t) * hp->n_head + kvh * grp) * hd,
		       (size_t)grp * hd * sizeof(float));
	for (uint32_t r = 0; c->kv_es == 2 && r < rows; r++) {
		/* as cpu_attend: an f16 cache multiplies f16 by f16 */
		uint16_t h16[KERN_ROW_MAX];
		c->ops->f32_to_f16(f.q + (size_t)r * hd, h16, hd);
		c->ops->f16_to_f32(h16, f.q + (size_t)r * hd, hd);
	}
	cpu_hip_attend(c, l, kvh, i0, nt, slots, n, lim, &f);
}

/*
 * HiP's block-sparse prefill of ubatch tokens [i0, i0 + nt) with the
 * query heads of KV head kvh, layer l. Token t sees the sorted keys [0,
 * m_t); the block attends the sinks, the window from `recent` keys before
 * its first token's prefix to its last's (its own keys included), and the
 * blocks the search chose among the keys between (beam x K halves a round,
 * as the decode's search keeps), scored by every fourth
 * of its tokens from the last (all the KV head's query heads: HiP's code
 * scores with every second query; on two cores the search then costs as
 * much as the attention it saves). The keys past a token's own prefix are
 * the list's last and are cut by its limit. With want_attn the last
 * token's dense mass captured is added to the thread's sums (a shadow).
 * The batch's dense tail (`tail`: its last tokens, when it ends a prompt)
 * attends every key instead.
 */
void cpu_hip_flash(struct cpu_job *jb, uint32_t l, uint32_t kvh, uint32_t i0, uint32_t nt, int ith)
{
	uint32_t ns = cpu_hip_before_tail(jb, i0, nt);
	if (ns < nt)
		cpu_hip_tail(jb, l, kvh, i0 + ns, nt - ns, ith);
	if (ns > 0)
		cpu_hip_block(jb, l, kvh, i0, ns, ith);
}

void cpu_sparse_finish(struct cpu *c, const struct engine_batch *b, struct backend_out *out)
{
	if (c->sparse == NULL || b->n_tokens == 1)
		return;
	double sum[4] = { 0 };
	for (int t = 0; t < pool_size(c->pool); t++)
		for (int i = 0; i < 4; i++)
			sum[i] += c->hip_pf[(size_t)t * 4 + i];
	out->prefill_read = (uint64_t)sum[0];
	out->prefill_dense = (uint64_t)sum[1];
	out->prefill_mass = sum[2];
	out->prefill_rows = (uint64_t)sum[3];
}
