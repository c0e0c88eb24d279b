/*
 * squeeze.c: Squeezed Attention's offline step (Hooper et al., "Squeezed
 * Attention", ACL 2025, arXiv 2411.09688) and the index it leaves: the
 * document's keys clustered once per (layer, KV head), so that a decode
 * step compares its query with a few centroids instead of every key, and
 * attends only the keys of the clusters whose estimated weight passes a
 * threshold.
 *
 * The clustering follows the paper: k-means on the L2-normalised keys as
 * rotated to their positions (cosine clustering; k-means++ start, seeded,
 * so a seed gives the same clusters), the number of fine clusters a share
 * of the document's keys (10 % by default), and a coarse level made by
 * clustering the fine centres (normalised too), about `fanout` fine per
 * coarse. The centroid a lookup compares with is the mean of the member
 * keys un-normalised, as the paper's is: q.C_c is then the cluster's mean
 * logit, and exp(q.C_c) / sum_c N_c exp(q.C_c) estimates each member's
 * softmax weight. Each (layer, KV head) keeps a permutation of the keys
 * grouped by fine cluster, fine clusters grouped by coarse, so the keys of
 * a chosen cluster are one run of it.
 *
 * Memory, per (layer, KV head): the centroids (n_fine + n_coarse) x
 * head_dim floats, and 8 bytes per key (permutation and label): at 5 %
 * clusters and head_dim 64 in an f16 cache that is 10 % + 6 % of the key
 * bytes (the keys themselves are not copied).
 *
 * The threshold's calibration (the paper's is a global quantile of the
 * estimates over layers, heads and keys, taken offline on the document's
 * last queries) is kept online here: a histogram of log2 estimates of the
 * past decode steps (squeeze_hist), pooled the same way; the first step,
 * with no past, takes the quantile of its own estimates per head.
 *
 * The index is saved as bytes (engine_squeeze_save): a header "KVSQ",
 * version, the shapes, then the arrays in host order (little-endian on
 * every host kvscope builds for); loading checks every shape, range and
 * permutation, so a damaged or foreign blob is refused with one line.
 */
#include "engine/sparse.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ k-means */

uint32_t squeeze_n_fine(uint32_t n, uint32_t pct)
{
	uint32_t k = (uint32_t)((uint64_t)n * pct / 100);
	return KVS_MIN(KVS_MAX(k, 1u), KVS_MAX(n, 1u));
}

uint32_t squeeze_n_coarse(uint32_t n_fine, uint32_t fanout)
{
	uint32_t k = fanout ? (n_fine + fanout - 1) / fanout : 1;
	return KVS_MIN(KVS_MAX(k, 1u), KVS_MAX(n_fine, 1u));
}

void squeeze_normalise(float *x, uint32_t n, uint32_t d)
{
	for (uint32_t i = 0; i < n; i++) {
		float *r = x + (size_t)i * d;
		double s = 0;
		for (uint32_t j = 0; j < d; j++)
			s += (double)r[j] * r[j];
		if (s <= 0)
			continue;
		float inv = (float)(1.0 / sqrt(s));
		for (uint32_t j = 0; j < d; j++)
			r[j] *= inv;
	}
}

/* xorshift64*: the k-means++ draws. */
static uint64_t squeeze_rand(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545F4914F6CDD1DULL;
}

/* Squared distance of rows a and b (d). */
static double squeeze_d2(const float *a, const float *b, uint32_t d)
{
	float s = 0;
	for (uint32_t j = 0; j < d; j++) {
		float t = a[j] - b[j];
		s += t * t;
	}
	return s;
}

/* The dot of a and b (d): eight partial sums, so the compiler keeps them
 * in vector lanes (a serial float sum is one long dependency chain). */
static float squeeze_dot(const float *a, const float *b, uint32_t d)
{
	float acc[8] = { 0 };
	uint32_t j = 0;
	for (; j + 8 <= d; j += 8)
		for (int u = 0; u < 8; u++)
			acc[u] += a[j + u] * b[j + u];
	float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
	for (; j < d; j++)
		s += a[j] * b[j];
	return s;
}

/* Assign every point to its nearest centre (ties: the lower); returns the
 * objective and whether any label changed. cn (k): squared centre norms. */
static double squeeze_assign(const float *x, uint32_t n, uint32_t d, const float *cent, uint32_t k,
                             float *cn, uint32_t *label, bool *changed)
{
	double obj = 0;
	*changed = false;
	for (uint32_t c = 0; c < k; c++)
		cn[c] = squeeze_dot(cent + (size_t)c * d, cent + (size_t)c * d, d);
	for (uint32_t i = 0; i < n; i++) {
		const float *xi = x + (size_t)i * d;
		/* |x - c|^2 = |x|^2 + |c|^2 - 2 x.c: rank by the last two */
		float best = INFINITY;
		uint32_t bc = 0;
		for (uint32_t c = 0; c < k; c++) {
			float v = cn[c] - 2 * squeeze_dot(xi, cent + (size_t)c * d, d);
			if (v < best) {
				best = v;
				bc = c;
			}
		}
		if (label[i] != bc)
			*changed = true;
		label[i] = bc;
		obj += squeeze_d2(xi, cent + (size_t)bc * d, d);
	}
	return obj;
}

/* Each centre to the mean of its members (x (n, d), label (n)); a centre
 * with none keeps its value. acc (k, d) and cnt (k) are scratch. */
static void squeeze_centres(const float *x, uint32_t n, uint32_t d, const uint32_t *label,
                            uint32_t k, double *acc, uint32_t *cnt, float *cent)
{
	memset(acc, 0, (size_t)k * d * sizeof(double));
	memset(cnt, 0, k * sizeof(uint32_t));
	for (uint32_t i = 0; i < n; i++) {
		cnt[label[i]]++;
		for (uint32_t j = 0; j < d; j++)
			acc[(size_t)label[i] * d + j] += x[(size_t)i * d + j];
	}
	for (uint32_t c = 0; c < k; c++)
		for (uint32_t j = 0; cnt[c] > 0 && j < d; j++)
			cent[(size_t)c * d + j] = (float)(acc[(size_t)c * d + j] / cnt[c]);
}

uint32_t squeeze_kmeans(const float *x, uint32_t n, uint32_t d, uint32_t k, uint32_t iters,
                        uint64_t seed, uint32_t *label, float *cent, double *obj)
{
	uint64_t rs = seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
	double *mind = xmallocarray(n, sizeof(double));
	float *cn = xmallocarray(k, sizeof(float));
	uint32_t *cnt = xmallocarray(k, sizeof(uint32_t));
	double *acc = xmallocarray((size_t)k * d, sizeof(double));
	if (rs == 0)
		rs = 1;
	/* k-means++: the first centre uniform, each next by D^2 */
	uint32_t first = (uint32_t)(squeeze_rand(&rs) % n);
	memcpy(cent, x + (size_t)first * d, d * sizeof(float));
	for (uint32_t i = 0; i < n; i++)
		mind[i] = squeeze_d2(x + (size_t)i * d, cent, d);
	for (uint32_t c = 1; c < k; c++) {
		double sum = 0;
		for (uint32_t i = 0; i < n; i++)
			sum += mind[i];
		uint32_t pick = n - 1;
		if (sum > 0) {
			double r = (double)(squeeze_rand(&rs) >> 11) * (1.0 / 9007199254740992.0) * sum;
			for (uint32_t i = 0; i < n; i++) {
				if (r < mind[i]) {
					pick = i;
					break;
				}
				r -= mind[i];
			}
		} else {
			pick = (uint32_t)(squeeze_rand(&rs) % n); /* every point is a centre already */
		}
		float *cc = cent + (size_t)c * d;
		memcpy(cc, x + (size_t)pick * d, d * sizeof(float));
		for (uint32_t i = 0; i < n; i++) {
			double t = squeeze_d2(x + (size_t)i * d, cc, d);
			mind[i] = t < mind[i] ? t : mind[i];
		}
	}
	for (uint32_t i = 0; i < n; i++)
		label[i] = UINT32_MAX;
	bool changed;
	double o = squeeze_assign(x, n, d, cent, k, cn, label, &changed);
	if (obj != NULL)
		obj[0] = o;
	uint32_t it = 0;
	while (it < iters) {
		squeeze_centres(x, n, d, label, k, acc, cnt, cent);
		o = squeeze_assign(x, n, d, cent, k, cn, label, &changed);
		it++;
		if (obj != NULL)
			obj[it] = o;
		if (!changed)
			break;
	}
	/* the centres of the final labels (what a caller checks against) */
	if (it > 0 || iters == 0)
		squeeze_centres(x, n, d, label, k, acc, cnt, cent);
	free(mind);
	free(cn);
	free(cnt);
	free(acc);
	return it;
}

/* ------------------------------------------------------------ the index */

struct engine_squeeze *squeeze_alloc(uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim,
                                     uint32_t n_keys, uint32_t n_fine, uint32_t n_coarse)
{
	struct engine_squeeze *sq = xcalloc(1, sizeof *sq);
	size_t lh = (size_t)n_layer * n_head_kv;
	sq->n_layer = n_layer;
	sq->n_head_kv = n_head_kv;
	sq->head_dim = head_dim;
	sq->n_keys = n_keys;
	sq->n_fine = n_fine;
	sq->n_coarse = n_coarse;
	sq->slot = xcalloc(n_keys, sizeof(uint32_t));
	sq->pos = xcalloc(n_keys, sizeof(int32_t));
	sq->fine = xcalloc(lh * n_fine * head_dim, sizeof(float));
	sq->coarse = xcalloc(lh * n_coarse * head_dim, sizeof(float));
	sq->perm = xcalloc(lh * n_keys, sizeof(uint32_t));
	sq->fstart = xcalloc(lh * (n_fine + 1), sizeof(uint32_t));
	sq->cstart = xcalloc(lh * (n_coarse + 1), sizeof(uint32_t));
	sq->label = xcalloc(lh * n_keys, sizeof(uint32_t));
	return sq;
}

void squeeze_free(struct engine_squeeze *sq)
{
	if (sq == NULL)
		return;
	free(sq->slot);
	free(sq->pos);
	free(sq->fine);
	free(sq->coarse);
	free(sq->perm);
	free(sq->fstart);
	free(sq->cstart);
	free(sq->label);
	free(sq);
}

void squeeze_order(struct engine_squeeze *sq, uint32_t l, uint32_t h, const float *k,
                   const uint32_t *lab, const uint32_t *flab)
{
	uint32_t n = sq->n_keys, nf = sq->n_fine, nc = sq->n_coarse, hd = sq->head_dim;
	size_t lh = (size_t)l * sq->n_head_kv + h;
	uint32_t *perm = sq->perm + lh * n, *fs = sq->fstart + lh * (nf + 1);
	uint32_t *cs = sq->cstart + lh * (nc + 1), *label = sq->label + lh * n;
	float *fine = sq->fine + lh * nf * hd, *coarse = sq->coarse + lh * nc * hd;
	uint32_t *renum = xmallocarray(nf, sizeof(uint32_t)); /* raw fine -> ordered */
	uint32_t *cnt = xcalloc(nf, sizeof(uint32_t));
	double *acc = xmallocarray(hd, sizeof(double));
	/* fine clusters grouped by coarse, in raw order within a group */
	uint32_t id = 0;
	for (uint32_t g = 0; g < nc; g++) {
		cs[g] = id;
		for (uint32_t c = 0; c < nf; c++)
			if (flab[c] == g)
				renum[c] = id++;
	}
	cs[nc] = id;
	for (uint32_t i = 0; i < n; i++) {
		label[i] = renum[lab[i]];
		cnt[label[i]]++;
	}
	fs[0] = 0;
	for (uint32_t c = 0; c < nf; c++)
		fs[c + 1] = fs[c] + cnt[c];
	memset(cnt, 0, nf * sizeof(uint32_t));
	for (uint32_t i = 0; i < n; i++) /* keys in cache order within a cluster */
		perm[fs[label[i]] + cnt[label[i]]++] = i;
	/* lookup centroids: the members' keys as rotated, un-normalised */
	for (uint32_t c = 0; c < nf; c++) {
		memset(acc, 0, hd * sizeof(double));
		for (uint32_t i = fs[c]; i < fs[c + 1]; i++)
			for (uint32_t j = 0; j < hd; j++)
				acc[j] += k[(size_t)perm[i] * hd + j];
		for (uint32_t j = 0; j < hd; j++)
			fine[(size_t)c * hd + j] =
			        fs[c + 1] > fs[c] ? (float)(acc[j] / (fs[c + 1] - fs[c])) : 0;
	}
	for (uint32_t g = 0; g < nc; g++) {
		uint32_t a = fs[cs[g]], b = fs[cs[g + 1]];
		memset(acc, 0, hd * sizeof(double));
		for (uint32_t i = a; i < b; i++)
			for (uint32_t j = 0; j < hd; j++)
				acc[j] += k[(size_t)perm[i] * hd + j];
		for (uint32_t j = 0; j < hd; j++)
			coarse[(size_t)g * hd + j] = b > a ? (float)(acc[j] / (b - a)) : 0;
	}
	free(renum);
	free(cnt);
	free(acc);
}

/* ------------------------------------------------------------ calibration */

void squeeze_hist_add(struct squeeze_hist *hst, const float *p, const uint32_t *wt, uint32_t n)
{
	const double step = -SQUEEZE_LOG2_MIN / SQUEEZE_BINS;
	for (uint32_t i = 0; i < n; i++) {
		if (wt[i] == 0)
			continue;
		int b = 0;
		if (p[i] > 0) {
			double t = (log2((double)p[i]) - SQUEEZE_LOG2_MIN) / step;
			b = t < 0 ? 0 : t >= SQUEEZE_BINS ? SQUEEZE_BINS - 1 : (int)t;
		}
		hst->w[b] += wt[i];
		hst->total += wt[i];
	}
}

float squeeze_hist_quantile(const struct squeeze_hist *hst, uint32_t quantile)
{
	const double step = -SQUEEZE_LOG2_MIN / SQUEEZE_BINS;
	if (quantile == 0 || hst->total <= 0)
		return 0;
	double want = hst->total * quantile / 1000.0, cum = 0;
	for (int b = 0; b < SQUEEZE_BINS; b++) {
		cum += hst->w[b];
		if (cum >= want)
			return b == 0 ? 0 : (float)exp2(SQUEEZE_LOG2_MIN + b * step);
	}
	return (float)exp2(SQUEEZE_LOG2_MIN + (SQUEEZE_BINS - 1) * step);
}

float squeeze_quantile(const float *p, const uint32_t *wt, uint32_t n, uint32_t quantile,
                       uint32_t *scratch)
{
	double total = 0;
	if (quantile == 0 || n == 0)
		return 0;
	for (uint32_t i = 0; i < n; i++) {
		scratch[i] = i;
		total += wt[i];
	}
	/* insertion sort of the indices by estimate: one step's clusters only */
	for (uint32_t i = 1; i < n; i++) {
		uint32_t v = scratch[i], j = i;
		while (j > 0 && p[scratch[j - 1]] > p[v]) {
			scratch[j] = scratch[j - 1];
			j--;
		}
		scratch[j] = v;
	}
	double want = total * quantile / 1000.0, cum = 0;
	for (uint32_t i = 0; i < n; i++) {
		cum += wt[scratch[i]];
		if (cum >= want)
			return p[scratch[i]];
	}
	return p[scratch[n - 1]];
}

/* ------------------------------------------------------------ building */

/* One clustering job: the (layer, KV head) pairs i = ith, ith + nth, ... */
struct squeeze_job {
	struct engine *eng;
	const struct engine_sparse *spec;
	struct engine_squeeze *sq;
	const uint32_t *slots;
	double *obj;       /* (n_layer * n_head_kv) final objective of each pair */
	atomic_uint done;  /* pairs finished */
	atomic_int failed; /* a key could not be read */
	engine_progress_fn fn;
	void *ud;
};

/* Cluster pair i: read its keys, k-means the fine level, then the coarse. */
static void squeeze_pair(struct squeeze_job *jb, uint32_t i, float *k, float *x, float *fc,
                         float *cc, uint32_t *lab, uint32_t *flab, double *obj)
{
	struct engine_squeeze *sq = jb->sq;
	uint32_t n = sq->n_keys, hd = sq->head_dim, nf = sq->n_fine, nc = sq->n_coarse;
	uint32_t l = i / sq->n_head_kv, h = i % sq->n_head_kv;
	for (uint32_t j = 0; j < n; j++)
		if (engine_kv_read(jb->eng, l, jb->slots[j], h, false, true, k + (size_t)j * hd, NULL) !=
		    KVS_OK) {
			atomic_store(&jb->failed, 1);
			return;
		}
	memcpy(x, k, (size_t)n * hd * sizeof(float));
	squeeze_normalise(x, n, hd);
	uint64_t seed = (uint64_t)jb->spec->seed * 1000003u + i;
	uint32_t it = squeeze_kmeans(x, n, hd, nf, jb->spec->iters, seed, lab, fc, obj);
	jb->obj[i] = obj[it];
	squeeze_normalise(fc, nf, hd);
	squeeze_kmeans(fc, nf, hd, nc, jb->spec->iters, seed ^ 0x5bd1e995u, flab, cc, NULL);
	squeeze_order(sq, l, h, k, lab, flab);
}

/* pool_fn: this thread's pairs; thread 0 reports the progress. */
static void squeeze_run(void *arg, int ith, int nth)
{
	struct squeeze_job *jb = arg;
	struct engine_squeeze *sq = jb->sq;
	uint32_t n = sq->n_keys, hd = sq->head_dim, nf = sq->n_fine, nc = sq->n_coarse;
	uint32_t pairs = sq->n_layer * sq->n_head_kv;
	float *k = xmallocarray((size_t)n * hd, sizeof(float));   /* (n, head_dim) as rotated */
	float *x = xmallocarray((size_t)n * hd, sizeof(float));   /* (n, head_dim) normalised */
	float *fc = xmallocarray((size_t)nf * hd, sizeof(float)); /* (n_fine, head_dim) */
	float *cc = xmallocarray((size_t)nc * hd, sizeof(float)); /* (n_coarse, head_dim) */
	uint32_t *lab = xmallocarray(n, sizeof(uint32_t)), *flab = xmallocarray(nf, sizeof(uint32_t));
	double *obj = xmallocarray(jb->spec->iters + 1, sizeof(double));
	for (uint32_t i = (uint32_t)ith; i < pairs && !atomic_load(&jb->failed); i += (uint32_t)nth) {
		squeeze_pair(jb, i, k, x, fc, cc, lab, flab, obj);
		unsigned d = atomic_fetch_add(&jb->done, 1) + 1;
		if (ith == 0 && jb->fn != NULL && d < pairs)
			jb->fn(jb->ud, d, pairs);
	}
	free(k);
	free(x);
	free(fc);
	free(cc);
	free(lab);
	free(flab);
	free(obj);
}

int engine_squeeze_build(struct engine *eng, const uint32_t *slots, uint32_t n,
                         const struct engine_sparse *spec, engine_progress_fn fn, void *ud,
                         struct err *e)
{
	const struct hparams *hp = &engine_model(eng)->hp;
	uint32_t n_ctx = engine_n_ctx(eng), nkv = hp->n_head_kv;
	if (n == 0)
		return err_set(e, KVS_EARG, "squeezed: no document keys to cluster (load one with --doc)");
	uint8_t *seen = xcalloc(n_ctx, 1);
	for (uint32_t i = 0; i < n; i++) {
		if (slots[i] >= n_ctx || engine_kv_pos(eng, slots[i]) < 0 || seen[slots[i]]) {
			free(seen);
			return err_set(e, KVS_EARG,
			               "squeezed: document key %u at slot %u: expected a held slot < %u, "
			               "listed once",
			               i, slots[i], n_ctx);
		}
		seen[slots[i]] = 1;
	}
	free(seen);
	double t0 = clock_now_ms();
	uint32_t nf = squeeze_n_fine(n, spec->clusters), nc = squeeze_n_coarse(nf, spec->fanout);
	uint32_t pairs = hp->n_layer * nkv;
	struct squeeze_job jb = { .eng = eng, .spec = spec, .slots = slots, .fn = fn, .ud = ud };
	jb.sq = squeeze_alloc(hp->n_layer, nkv, hp->head_dim, n, nf, nc);
	jb.obj = xcalloc(pairs, sizeof(double));
	atomic_init(&jb.done, 0);
	atomic_init(&jb.failed, 0);
	for (uint32_t i = 0; i < n; i++) {
		jb.sq->slot[i] = slots[i];
		jb.sq->pos[i] = engine_kv_pos(eng, slots[i]);
	}
	/* the pairs are independent: a pool of the engine's thread count */
	struct pool *pl = pool_create(KVS_MAX(engine_n_threads(eng), 1));
	pool_run(pl, squeeze_run, &jb);
	pool_free(pl);
	double objsum = 0;
	for (uint32_t i = 0; i < pairs; i++)
		objsum += jb.obj[i];
	free(jb.obj);
	if (atomic_load(&jb.failed)) {
		squeeze_free(jb.sq);
		return err_set(e, KVS_ESTATE, "squeezed: a document key could not be read");
	}
	if (fn != NULL)
		fn(ud, pairs, pairs);
	jb.sq->build_ms = clock_now_ms() - t0;
	jb.sq->objective = objsum / ((double)n * pairs);
	engine_squeeze_put(eng, jb.sq);
	return KVS_OK;
}

bool engine_squeeze_info(const struct engine *eng, struct engine_squeeze_info *info)
{
	const struct engine_squeeze *sq = engine_squeeze_get(eng);
	if (sq == NULL)
		return false;
	if (info != NULL) {
		size_t lh = (size_t)sq->n_layer * sq->n_head_kv;
		info->n_keys = sq->n_keys;
		info->n_fine = sq->n_fine;
		info->n_coarse = sq->n_coarse;
		info->bytes = lh *
		        ((uint64_t)(sq->n_fine + sq->n_coarse) * sq->head_dim * sizeof(float) +
		         (uint64_t)sq->n_keys * 2 * sizeof(uint32_t) +
		         (uint64_t)(sq->n_fine + sq->n_coarse + 2) * sizeof(uint32_t));
		info->build_ms = sq->build_ms;
		info->objective = sq->objective;
	}
	return true;
}

/* ------------------------------------------------------------ bytes */

#define SQUEEZE_MAGIC "KVSQ"
#define SQUEEZE_VERSION 1u

/* A growing byte buffer. */
struct squeeze_buf {
	uint8_t *b;
	size_t n;
};

static void squeeze_put(struct squeeze_buf *w, const void *p, size_t len)
{
	memcpy(w->b + w->n, p, len);
	w->n += len;
}

int engine_squeeze_save(const struct engine *eng, void **buf, size_t *len, struct err *e)
{
	const struct engine_squeeze *sq = engine_squeeze_get(eng);
	if (sq == NULL)
		return err_set(e, KVS_ESTATE, "squeezed: no clusters to save (no document clustered)");
	size_t lh = (size_t)sq->n_layer * sq->n_head_kv;
	uint32_t hdr[7] = { SQUEEZE_VERSION, sq->n_layer, sq->n_head_kv, sq->head_dim,
		                sq->n_keys,      sq->n_fine,  sq->n_coarse };
	size_t total = 4 + sizeof hdr + 2 * sizeof(double) + (size_t)sq->n_keys * 4 +
	        lh *
	                ((size_t)(sq->n_fine + sq->n_coarse) * sq->head_dim * 4 +
	                 (size_t)sq->n_keys * 4 + (size_t)(sq->n_fine + 1) * 4 +
	                 (size_t)(sq->n_coarse + 1) * 4);
	struct squeeze_buf w = { xmalloc(total), 0 };
	squeeze_put(&w, SQUEEZE_MAGIC, 4);
	squeeze_put(&w, hdr, sizeof hdr);
	squeeze_put(&w, &sq->build_ms, sizeof(double));
	squeeze_put(&w, &sq->objective, sizeof(double));
	squeeze_put(&w, sq->pos, (size_t)sq->n_keys * 4);
	squeeze_put(&w, sq->fine, lh * sq->n_fine * sq->head_dim * 4);
	squeeze_put(&w, sq->coarse, lh * sq->n_coarse * sq->head_dim * 4);
	squeeze_put(&w, sq->perm, lh * sq->n_keys * 4);
	squeeze_put(&w, sq->fstart, lh * (sq->n_fine + 1) * 4);
	squeeze_put(&w, sq->cstart, lh * (sq->n_coarse + 1) * 4);
	*buf = w.b;
	*len = w.n;
	return KVS_OK;
}

/* Take len bytes from the reader; false past the end. */
static bool squeeze_get(const uint8_t **p, const uint8_t *end, void *dst, size_t len)
{
	if ((size_t)(end - *p) < len)
		return false;
	memcpy(dst, *p, len);
	*p += len;
	return true;
}

/* Check one (layer, KV head) of a loaded index and derive its labels. */
static bool squeeze_valid(struct engine_squeeze *sq, size_t lh, uint8_t *seen)
{
	uint32_t n = sq->n_keys, nf = sq->n_fine, nc = sq->n_coarse;
	const uint32_t *perm = sq->perm + lh * n, *fs = sq->fstart + lh * (nf + 1);
	const uint32_t *cs = sq->cstart + lh * (nc + 1);
	if (fs[0] != 0 || fs[nf] != n || cs[0] != 0 || cs[nc] != nf)
		return false;
	for (uint32_t c = 0; c < nf; c++)
		if (fs[c + 1] < fs[c])
			return false;
	for (uint32_t g = 0; g < nc; g++)
		if (cs[g + 1] < cs[g])
			return false;
	memset(seen, 0, n);
	for (uint32_t c = 0; c < nf; c++)
		for (uint32_t i = fs[c]; i < fs[c + 1]; i++) {
			if (perm[i] >= n || seen[perm[i]])
				return false;
			seen[perm[i]] = 1;
			sq->label[lh * n + perm[i]] = c;
		}
	return true;
}

int engine_squeeze_load(struct engine *eng, const void *buf, size_t len, const uint32_t *slots,
                        uint32_t n, struct err *e)
{
	const struct hparams *hp = &engine_model(eng)->hp;
	const uint8_t *p = buf, *end = p + len;
	char magic[4];
	uint32_t hdr[7];
	if (!squeeze_get(&p, end, magic, 4) || memcmp(magic, SQUEEZE_MAGIC, 4) != 0 ||
	    !squeeze_get(&p, end, hdr, sizeof hdr))
		return err_set(e, KVS_EFORMAT, "stored clusters: not a squeezed index (expected KVSQ)");
	if (hdr[0] != SQUEEZE_VERSION)
		return err_set(e, KVS_EFORMAT, "stored clusters: version %u, expected %u", hdr[0],
		               SQUEEZE_VERSION);
	if (hdr[1] != hp->n_layer || hdr[2] != hp->n_head_kv || hdr[3] != hp->head_dim)
		return err_set(e, KVS_EFORMAT,
		               "stored clusters: made for %u layers x %u KV heads x %u, this model has "
		               "%u x %u x %u",
		               hdr[1], hdr[2], hdr[3], hp->n_layer, hp->n_head_kv, hp->head_dim);
	if (hdr[4] != n)
		return err_set(e, KVS_EFORMAT,
		               "stored clusters: made for %u document keys, the cache holds %u", hdr[4], n);
	if (hdr[5] == 0 || hdr[5] > n || hdr[6] == 0 || hdr[6] > hdr[5])
		return err_set(e, KVS_EFORMAT,
		               "stored clusters: %u fine and %u coarse clusters for %u keys", hdr[5],
		               hdr[6], n);
	struct engine_squeeze *sq = squeeze_alloc(hdr[1], hdr[2], hdr[3], n, hdr[5], hdr[6]);
	size_t lh = (size_t)sq->n_layer * sq->n_head_kv;
	bool ok = squeeze_get(&p, end, &sq->build_ms, sizeof(double)) &&
	        squeeze_get(&p, end, &sq->objective, sizeof(double)) &&
	        squeeze_get(&p, end, sq->pos, (size_t)n * 4) &&
	        squeeze_get(&p, end, sq->fine, lh * sq->n_fine * sq->head_dim * 4) &&
	        squeeze_get(&p, end, sq->coarse, lh * sq->n_coarse * sq->head_dim * 4) &&
	        squeeze_get(&p, end, sq->perm, lh * n * 4) &&
	        squeeze_get(&p, end, sq->fstart, lh * (sq->n_fine + 1) * 4) &&
	        squeeze_get(&p, end, sq->cstart, lh * (sq->n_coarse + 1) * 4) && p == end;
	uint8_t *seen = xmalloc(n);
	for (size_t i = 0; ok && i < lh; i++)
		ok = squeeze_valid(sq, i, seen);
	free(seen);
	for (size_t i = 0; ok && i < lh * (sq->n_fine + sq->n_coarse) * sq->head_dim; i++) {
		float v = i < lh * sq->n_fine * sq->head_dim
		        ? sq->fine[i]
		        : sq->coarse[i - lh * sq->n_fine * sq->head_dim];
		ok = isfinite(v);
	}
	if (!ok) {
		squeeze_free(sq);
		return err_set(e, KVS_EFORMAT,
		               "stored clusters: damaged (a short blob, a bad permutation or range)");
	}
	for (uint32_t i = 0; i < n; i++) {
		if (slots[i] >= engine_n_ctx(eng) || engine_kv_pos(eng, slots[i]) != sq->pos[i]) {
			int32_t at = slots[i] < engine_n_ctx(eng) ? engine_kv_pos(eng, slots[i]) : -1;
			int32_t was = sq->pos[i];
			squeeze_free(sq);
			return err_set(e, KVS_EFORMAT,
			               "stored clusters: document key %u was clustered at position %d, "
			               "the cache has it at %d",
			               i, was, at);
		}
		sq->slot[i] = slots[i];
	}
	engine_squeeze_put(eng, sq);
	return KVS_OK;
}
