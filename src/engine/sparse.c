/*
 * sparse.c: sparse decode attention's configuration and its backend-free
 * parts: parsing "--sparse quest:budget=1024", the page bounds a backend
 * keeps over its rotated keys (sparse.h says when they are exact), Quest's
 * page bound and the top-k choice of pages.
 *
 * The bounds are kept over pages of engine slots, not of cache order: slots
 * never move, so evicting tokens leaves the other pages' slots where they
 * were and only a changed position (compaction re-rotates a key) or a new
 * key makes a page dirty. A new key in a clean page is folded in (min and
 * max widened); anything else recomputes the page from its slots.
 *
 * Memory: one min and one max vector per (layer, page, KV head), in the
 * cache's element type: 2 / page of the key bytes, 1 / page of the K+V
 * bytes (6.25 % at page 16).
 *
 * HiP (Lee et al., "HiP Attention", ICLR 2025; its reference search,
 * hip-attention v1.1's attention2_draft) finds K blocks of keys by a
 * tree search: K even ranges over the blocks, each
 * halved per round, each half scored by one representative value, the
 * best K halves kept, until every range is one block: log2(n_blocks / K)
 * rounds of 2K scores. The tree is pure here: the callback says what
 * represents a half. The reference code takes the half's first block
 * (the max logit over its b_k first keys), trusting locality (nearby keys
 * score alike) to carry the estimate; on the default model that lost a
 * range whose mass sat behind a low first block often enough to cap the
 * captured mass near 0.90 at 8k. kvscope's decode therefore ranks a half
 * of several blocks by the largest Quest page bound over its keys (an
 * upper bound of every logit in it: a half is never dropped for where its
 * best key sits) and the last round, when every half is one block, by the
 * blocks' true max logits; the prefill keeps the first block (its bounds
 * are not current while the prompt is written), and attends the prompt's
 * last `tail` queries densely (cpu-hip-prefill.c). A bound is loose where a
 * key reaches far along a few channels, and a round that keeps only K of
 * 2K halves drops a range for good: the decode's search keeps beam x K
 * halves in every round but the last (sparse_hip_tree_beam; `beam`,
 * default 2, lifted the 8k mass from 0.944 to 0.955 at the same keys
 * read), which still keeps K blocks.
 *
 * A choice serves `refresh` steps, but a head that copies from far back
 * (the passkey's digits, one a step) turns to keys the refresh's query
 * did not look at: its next key, one position on, leaves the chosen block
 * for the one after within `block` steps. `rerank` keeps as candidates
 * the refresh's last round's best blocks (rerank x K, by their true max
 * logit then; the K chosen among them) and the block after each chosen
 * one, and on every step between ranks them again by their page bounds
 * under the step's own query, keeping the K best (sparse_hip_candidates,
 * sparse_hip_rerank): one bound per candidate page, no search.
 */
#include "engine/sparse.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ the spec */

struct sparse_param {
	const char *name;
	size_t off; /* of the uint32_t field in struct engine_sparse */
	uint32_t def, lo, hi;
	unsigned modes; /* SP_QUEST | SP_HIP | SP_SQZ: the modes it belongs to */
	bool milli;     /* given as a decimal 0..1, kept in thousandths ("0.9": 900) */
	const char *help;
};

#define SP_QUEST (1u << ENGINE_SPARSE_QUEST)
#define SP_HIP (1u << ENGINE_SPARSE_HIP)
#define SP_SQZ (1u << ENGINE_SPARSE_SQUEEZED)

/* clang-format off */
static const struct sparse_param sparse_params[] = {
	{ "budget", offsetof(struct engine_sparse, budget), 1024, 1, 1u << 24, SP_QUEST | SP_HIP, false,
	  "keys attended per layer and KV head, sinks and recent included" },
	{ "page", offsetof(struct engine_sparse, page), 16, 1, 1024, SP_QUEST | SP_HIP, false,
	  "slots per page: the granularity of the key bounds (hip: that rank its halves); a run of "
	  "4 pages or more of keys at one position (LM-Infinite's cap) is cut into groups of as "
	  "many keys alike in content instead, and exact scores choose among the shortlisted keys "
	  "(CUDA: by position)" },
	{ "block", offsetof(struct engine_sparse, block), 8, 1, 1024, SP_HIP, false,
	  "keys per final block of the hierarchical search (positions in a row)" },
	{ "sinks", offsetof(struct engine_sparse, sinks), 4, 0, 1u << 24, SP_QUEST | SP_HIP | SP_SQZ,
	  false, "first keys by position, always attended" },
	{ "recent", offsetof(struct engine_sparse, recent), 64, 0, 1u << 24, SP_QUEST | SP_HIP | SP_SQZ,
	  false, "last keys by position, always attended" },
	{ "dense", offsetof(struct engine_sparse, dense_layers), 2, 0, 1u << 16,
	  SP_QUEST | SP_HIP | SP_SQZ, false, "first layers attended densely" },
	{ "refresh", offsetof(struct engine_sparse, refresh), 8, 1, 1u << 16, SP_HIP, false,
	  "decode steps one choice of keys serves (chosen anew every N steps)" },
	{ "prefill", offsetof(struct engine_sparse, prefill), 2048, 0, 1u << 24, SP_HIP, false,
	  "prompts seeing this many keys prefill block-sparsely (0: never)" },
	{ "tail", offsetof(struct engine_sparse, tail), 64, 0, 1u << 24, SP_HIP, false,
	  "a block-sparse prefill attends the prompt's last N queries densely (0: none)" },
	{ "shadow", offsetof(struct engine_sparse, shadow), 16, 0, 1u << 16, SP_QUEST | SP_HIP, false,
	  "decode steps between dense shadow passes while a view watches (0: every captured step)" },
	{ "beam", offsetof(struct engine_sparse, beam), 2, 1, 64, SP_HIP, false,
	  "halves each round keeps before the last, in multiples of the final blocks (1: HiP's)" },
	{ "rerank", offsetof(struct engine_sparse, rerank), 1000, 0, 8000, SP_HIP, true,
	  "steps between refreshes re-choose among the refresh's best N x final blocks and the block "
	  "after each chosen one, by their page bounds (0: reuse the choice; CUDA: 0)" },
	{ "clusters", offsetof(struct engine_sparse, clusters), 10, 1, 100, SP_SQZ, false,
	  "fine clusters per layer and KV head, % of the document's keys" },
	{ "fanout", offsetof(struct engine_sparse, fanout), 8, 2, 1024, SP_SQZ, false,
	  "fine clusters per coarse cluster, about (the hierarchical lookup)" },
	{ "quantile", offsetof(struct engine_sparse, quantile), 900, 0, 1000, SP_SQZ, true,
	  "fine threshold: this quantile of past steps' estimates (0: keep all)" },
	{ "coarse", offsetof(struct engine_sparse, coarse), 700, 0, 1000, SP_SQZ, true,
	  "coarse threshold: this quantile of past steps' estimates (0: keep all)" },
	{ "outliers", offsetof(struct engine_sparse, outliers), 20, 0, 1000, SP_SQZ, true,
	  "this share of the document's keys, the farthest from their centroid, always attended" },
	{ "iters", offsetof(struct engine_sparse, iters), 10, 1, 1000, SP_SQZ, false,
	  "k-means iterations at most (fewer when no key changes cluster)" },
	{ "seed", offsetof(struct engine_sparse, seed), 1, 0, 1u << 31, SP_SQZ, false,
	  "k-means++ seed (the same seed, the same clusters)" },
};
/* clang-format on */

/* The modes, by value, with their help lines. */
static const struct {
	const char *name, *help;
} sparse_modes[] = {
	{ "off", "dense attention over every cached token (default)" },
	{ "quest", "decode attends the pages whose key bounds score highest (Quest)" },
	{ "hip",
	  "decode attends the key blocks a hierarchical top-k search finds, searched "
	  "anew every `refresh` steps; long prompts prefill block-sparsely (HiP)" },
	{ "squeezed",
	  "decode attends the document's key clusters whose centroid estimate passes a "
	  "calibrated threshold, and every other key (Squeezed Attention; needs --doc)" },
};

static uint32_t *sparse_field(struct engine_sparse *s, const struct sparse_param *p)
{
	return (uint32_t *)((char *)s + p->off);
}

void engine_sparse_default(struct engine_sparse *s)
{
	memset(s, 0, sizeof *s);
	s->mode = ENGINE_SPARSE_OFF;
	for (size_t i = 0; i < KVS_ARRAY_LEN(sparse_params); i++)
		*sparse_field(s, &sparse_params[i]) = sparse_params[i].def;
}

/* "budget=N,page=N,..." of a mode's parameters into buf (the usage). */
static const char *sparse_usage(unsigned mode, bool names_only, char *buf, size_t cap)
{
	size_t n = 0, k = 0, total = 0;
	buf[0] = '\0';
	for (size_t i = 0; i < KVS_ARRAY_LEN(sparse_params); i++)
		total += (sparse_params[i].modes >> mode) & 1;
	for (size_t i = 0; i < KVS_ARRAY_LEN(sparse_params) && n < cap; i++) {
		if (!((sparse_params[i].modes >> mode) & 1))
			continue;
		const char *sep = k == 0 ? "" : !names_only ? "," : k + 1 == total ? " or " : ", ";
		n += (size_t)snprintf(buf + n, cap - n, "%s%s%s", sep, sparse_params[i].name,
		                      names_only                       ? ""
		                              : sparse_params[i].milli ? "=Q"
		                                                       : "=N");
		k++;
	}
	return buf;
}

/* Set a decimal parameter ("0.9", "1", "0.125") in thousandths. */
static int sparse_set_milli(struct engine_sparse *s, const struct sparse_param *p, const char *num,
                            struct err *e)
{
	char *end;
	double v = strtod(num, &end);
	if (*end != '\0' || num[0] == '-' || !(v >= p->lo / 1000.0 && v <= p->hi / 1000.0))
		return err_set(e, KVS_EARG, "sparse: %s=%s: expected a number in %g..%g", p->name, num,
		               p->lo / 1000.0, p->hi / 1000.0);
	*sparse_field(s, p) = (uint32_t)lround(v * 1000.0);
	return KVS_OK;
}

/* Set one "key=value" of a spec for mode. */
static int sparse_set(struct engine_sparse *s, const char *kv, size_t len, struct err *e)
{
	const char *eq = memchr(kv, '=', len);
	size_t klen = eq ? (size_t)(eq - kv) : len;
	unsigned mode = (unsigned)s->mode;
	for (size_t i = 0; i < KVS_ARRAY_LEN(sparse_params); i++) {
		const struct sparse_param *p = &sparse_params[i];
		if (!((p->modes >> mode) & 1) || strlen(p->name) != klen || memcmp(p->name, kv, klen) != 0)
			continue;
		char num[32];
		size_t vlen = eq ? len - klen - 1 : 0;
		if (vlen == 0 || vlen >= sizeof num)
			return err_set(e, KVS_EARG, "sparse: %.*s: expected %s=N with N in %u..%u", (int)len,
			               kv, p->name, p->lo, p->hi);
		memcpy(num, eq + 1, vlen);
		num[vlen] = '\0';
		if (p->milli)
			return sparse_set_milli(s, p, num, e);
		char *end;
		unsigned long v = strtoul(num, &end, 10);
		if (*end != '\0' || num[0] == '-' || v < p->lo || v > p->hi)
			return err_set(e, KVS_EARG, "sparse: %s=%s: expected an integer in %u..%u", p->name,
			               num, p->lo, p->hi);
		*sparse_field(s, p) = (uint32_t)v;
		return KVS_OK;
	}
	char names[128];
	return err_set(e, KVS_EARG, "sparse: unknown parameter '%.*s' for %s: expected %s", (int)klen,
	               kv, sparse_modes[mode].name, sparse_usage(mode, true, names, sizeof names));
}

int engine_sparse_parse(const char *spec, struct engine_sparse *out, struct err *e)
{
	struct engine_sparse s;
	engine_sparse_default(&s);
	if (spec == NULL)
		spec = "";
	size_t nlen = strcspn(spec, ": ");
	int mode = -1;
	for (size_t i = 0; i < KVS_ARRAY_LEN(sparse_modes); i++)
		if (strlen(sparse_modes[i].name) == nlen && memcmp(sparse_modes[i].name, spec, nlen) == 0)
			mode = (int)i;
	if (mode < 0) {
		char q[128], h[128], z[160];
		return err_set(e, KVS_EARG,
		               "sparse mode '%.*s': expected off, quest[:%s], hip[:%s] or squeezed[:%s]",
		               (int)nlen, spec, sparse_usage(ENGINE_SPARSE_QUEST, false, q, sizeof q),
		               sparse_usage(ENGINE_SPARSE_HIP, false, h, sizeof h),
		               sparse_usage(ENGINE_SPARSE_SQUEEZED, false, z, sizeof z));
	}
	s.mode = (enum engine_sparse_mode)mode;
	const char *p = spec + nlen;
	if (*p != '\0')
		p++;
	if (*p != '\0' && s.mode == ENGINE_SPARSE_OFF)
		return err_set(e, KVS_EARG, "sparse: off takes no parameters, got '%s'", p);
	while (*p != '\0') {
		size_t len = strcspn(p, ", ");
		if (len > 0) {
			int rc = sparse_set(&s, p, len, e);
			if (rc != KVS_OK)
				return rc;
		}
		p += len;
		if (*p != '\0')
			p++;
	}
	*out = s;
	return KVS_OK;
}

char *engine_sparse_format(const struct engine_sparse *s, char *buf, size_t cap)
{
	if (cap == 0)
		return buf;
	unsigned mode = (unsigned)s->mode < KVS_ARRAY_LEN(sparse_modes) ? (unsigned)s->mode : 0;
	size_t n = (size_t)snprintf(buf, cap, "%s", sparse_modes[mode].name);
	for (size_t i = 0; i < KVS_ARRAY_LEN(sparse_params) && n < cap; i++) {
		const struct sparse_param *p = &sparse_params[i];
		if (!((p->modes >> mode) & 1))
			continue;
		uint32_t v = *sparse_field((struct engine_sparse *)s, p);
		if (p->milli)
			n += (size_t)snprintf(buf + n, cap - n, " %s=%u.%03u", p->name, v / 1000, v % 1000);
		else
			n += (size_t)snprintf(buf + n, cap - n, " %s=%u", p->name, v);
	}
	return buf;
}

void engine_sparse_help(FILE *fp)
{
	for (size_t m = 0; m < KVS_ARRAY_LEN(sparse_modes); m++) {
		fprintf(fp, "  %-6s %s\n", sparse_modes[m].name, sparse_modes[m].help);
		for (size_t i = 0; i < KVS_ARRAY_LEN(sparse_params); i++) {
			const struct sparse_param *p = &sparse_params[i];
			if (((p->modes >> m) & 1) && p->milli)
				fprintf(fp, "    %-7s %u.%03u %s\n", p->name, p->def / 1000, p->def % 1000,
				        p->help);
			else if ((p->modes >> m) & 1)
				fprintf(fp, "    %-7s %-5u %s\n", p->name, p->def, p->help);
		}
	}
}

uint64_t engine_sparse_bytes(const struct engine *eng, uint32_t page)
{
	const struct hparams *hp = &engine_model(eng)->hp;
	if (page == 0)
		return 0;
	uint64_t pages = (engine_n_ctx(eng) + page - 1) / page;
	uint64_t es = engine_kv_type(eng) == ENGINE_KV_F16 ? 2 : 4;
	return (uint64_t)hp->n_layer * pages * hp->n_head_kv * 2 * hp->head_dim * es;
}

/* ------------------------------------------------------------ the bounds */

void sparse_pages_free(struct sparse_pages *sp)
{
	free(sp->b);
	free(sp->sum_pos);
	free(sp->page_n);
	free(sp->dirty);
	free(sp->dirty_list);
	memset(sp, 0, sizeof *sp);
}

void sparse_pages_ensure(struct sparse_pages *sp, uint32_t page, uint32_t n_ctx, uint32_t n_layer,
                         uint32_t n_head_kv, uint32_t head_dim, size_t es)
{
	if (sp->b != NULL && sp->page == page)
		return;
	sparse_pages_free(sp);
	sp->page = page;
	sp->n_pages = (n_ctx + page - 1) / page;
	sp->n_ctx = n_ctx;
	sp->n_layer = n_layer;
	sp->n_head_kv = n_head_kv;
	sp->head_dim = head_dim;
	sp->es = es;
	sp->b = xmallocarray((size_t)n_layer * sp->n_pages * n_head_kv * 2 * head_dim, es);
	sp->sum_pos = xmallocarray(n_ctx, sizeof(int32_t));
	sp->page_n = xcalloc(sp->n_pages, sizeof(uint32_t));
	sp->dirty = xmallocarray(sp->n_pages, 1);
	sp->dirty_list = xmallocarray(sp->n_pages, sizeof(uint32_t));
	for (uint32_t s = 0; s < n_ctx; s++)
		sp->sum_pos[s] = -1;
	memset(sp->dirty, 1, sp->n_pages);
	sp->n_dirty = 0;
}

void sparse_pages_forget(struct sparse_pages *sp, uint32_t s)
{
	if (sp->b == NULL || s >= sp->n_ctx)
		return;
	if (sp->sum_pos[s] >= 0)
		sp->dirty[s / sp->page] = 1;
	sp->sum_pos[s] = -1;
}

/* Whether slot s's rotated key is current, and its position. */
static bool sparse_current(const struct sparse_keys *k, uint32_t s, int32_t *pos)
{
	*pos = k->slot_pos[s];
	for (uint32_t i = 0; i < k->n_skip; i++)
		if (k->skip[i] == s)
			return false;
	return *pos >= 0 && k->kr_pos[s] == *pos;
}

/* One rotated key, layer l, KV head h, slot s, as floats into out. */
static void sparse_key(const struct sparse_pages *sp, const struct sparse_keys *k, uint32_t l,
                       uint32_t s, uint32_t h, float *out)
{
	const uint8_t *src = k->kr[l] + ((uint64_t)s * k->kv_row + (uint64_t)h * sp->head_dim) * sp->es;
	if (sp->es == 2)
		k->ops->f16_to_f32((const uint16_t *)src, out, sp->head_dim);
	else
		memcpy(out, src, sp->head_dim * sizeof(float));
}

/* Widen (or, with init, set) the bounds at dst (2, head_dim) by key x. */
static void sparse_widen(const struct sparse_pages *sp, const struct sparse_keys *k, uint8_t *dst,
                         const float *x, bool init)
{
	uint32_t hd = sp->head_dim;
	float b[2 * KERN_ROW_MAX];
	if (init) {
		memcpy(b, x, hd * sizeof(float));
		memcpy(b + hd, x, hd * sizeof(float));
	} else {
		if (sp->es == 2)
			k->ops->f16_to_f32((const uint16_t *)dst, b, 2 * hd);
		else
			memcpy(b, dst, 2 * hd * sizeof(float));
		for (uint32_t d = 0; d < hd; d++) {
			b[d] = x[d] < b[d] ? x[d] : b[d];
			b[hd + d] = x[d] > b[hd + d] ? x[d] : b[hd + d];
		}
	}
	if (sp->es == 2)
		k->ops->f32_to_f16(b, (uint16_t *)dst, 2 * hd);
	else
		memcpy(dst, b, 2 * hd * sizeof(float));
}

/* Fold slot s (position pos) into its clean page, every layer and KV head. */
static void sparse_fold(struct sparse_pages *sp, const struct sparse_keys *k, uint32_t s,
                        int32_t pos)
{
	uint32_t p = s / sp->page;
	float x[KERN_ROW_MAX];
	for (uint32_t l = 0; l < sp->n_layer; l++)
		for (uint32_t h = 0; h < sp->n_head_kv; h++) {
			sparse_key(sp, k, l, s, h, x);
			sparse_widen(sp, k, (uint8_t *)sparse_pages_at(sp, l, p, h), x, sp->page_n[p] == 0);
		}
	sp->sum_pos[s] = pos;
	sp->page_n[p]++;
}

void sparse_pages_scan(struct sparse_pages *sp, const struct sparse_keys *k)
{
	sp->n_dirty = 0;
	for (uint32_t p = 0; p < sp->n_pages; p++) {
		uint32_t s0 = p * sp->page, s1 = KVS_MIN(s0 + sp->page, sp->n_ctx);
		/* a folded slot that moved or left makes the page dirty */
		for (uint32_t s = s0; !sp->dirty[p] && s < s1; s++) {
			int32_t pos;
			bool cur = sparse_current(k, s, &pos);
			if (sp->sum_pos[s] >= 0 && (!cur || pos != sp->sum_pos[s]))
				sp->dirty[p] = 1;
		}
		if (sp->dirty[p]) {
			sp->dirty_list[sp->n_dirty++] = p;
			continue;
		}
		for (uint32_t s = s0; s < s1; s++) {
			int32_t pos;
			if (sp->sum_pos[s] < 0 && sparse_current(k, s, &pos))
				sparse_fold(sp, k, s, pos);
		}
	}
}

void sparse_pages_rebuild(struct sparse_pages *sp, const struct sparse_keys *k, uint32_t lo,
                          uint32_t hi)
{
	uint32_t hd = sp->head_dim;
	float inf[2 * KERN_ROW_MAX];
	for (uint32_t d = 0; d < hd; d++) {
		inf[d] = INFINITY;
		inf[hd + d] = -INFINITY;
	}
	for (uint32_t i = lo; i < hi && i < sp->n_dirty; i++) {
		uint32_t p = sp->dirty_list[i];
		uint32_t s0 = p * sp->page, s1 = KVS_MIN(s0 + sp->page, sp->n_ctx);
		sp->page_n[p] = 0;
		for (uint32_t l = 0; l < sp->n_layer; l++)
			for (uint32_t h = 0; h < sp->n_head_kv; h++) {
				uint8_t *dst = (uint8_t *)sparse_pages_at(sp, l, p, h);
				if (sp->es == 2)
					k->ops->f32_to_f16(inf, (uint16_t *)dst, 2 * hd);
				else
					memcpy(dst, inf, 2 * hd * sizeof(float));
			}
		for (uint32_t s = s0; s < s1; s++) {
			int32_t pos;
			sp->sum_pos[s] = -1;
			if (sparse_current(k, s, &pos))
				sparse_fold(sp, k, s, pos);
		}
		sp->dirty[p] = 0;
	}
}

/* ------------------------------------------------------------ selection */

float sparse_bound(const float *q, uint32_t nq, uint32_t head_dim, const float *mnmx)
{
	const float *mn = mnmx, *mx = mnmx + head_dim;
	float best = -INFINITY;
	for (uint32_t r = 0; r < nq; r++) {
		const float *qr = q + (size_t)r * head_dim;
		float sum = 0;
		for (uint32_t d = 0; d < head_dim; d++) {
			float a = qr[d] * mx[d], b = qr[d] * mn[d];
			sum += a > b ? a : b;
		}
		best = sum > best ? sum : best;
	}
	return best;
}

void sparse_split_q(const float *q, uint32_t head_dim, float *qs)
{
	for (uint32_t d = 0; d < head_dim; d++) {
		qs[d] = q[d] < 0 ? q[d] : 0;
		qs[head_dim + d] = q[d] > 0 ? q[d] : 0;
	}
}

void sparse_split_q_reach(const float *q, uint32_t head_dim, float reach, float *qs)
{
	for (uint32_t d = 0; d < head_dim; d++) {
		float a = q[d] < 0 ? -q[d] : q[d];
		qs[d] = 0.5f * (q[d] - reach * a);
		qs[head_dim + d] = 0.5f * (q[d] + reach * a);
	}
}

/* The k-th largest (1 <= k <= n) of x[0, n), reordering x: quickselect
 * with a three-way partition, so repeated values cost nothing extra. */
static float sparse_kth(float *x, uint32_t n, uint32_t k)
{
	uint32_t lo = 0, hi = n, want = k - 1; /* want: index in descending order */
	while (hi - lo > 1) {
		float piv = x[lo + (hi - lo) / 2], t;
		/* [lo, a) > piv, [a, i) == piv, [b, hi) < piv */
		uint32_t a = lo, i = lo, b = hi;
		while (i < b) {
			if (x[i] > piv) {
				t = x[a], x[a++] = x[i], x[i++] = t;
			} else if (x[i] < piv) {
				t = x[--b], x[b] = x[i], x[i] = t;
			} else {
				i++;
			}
		}
		if (want < a)
			hi = a;
		else if (want < b)
			return piv;
		else
			lo = b;
	}
	return x[lo];
}

uint32_t sparse_top(const float *ub, uint32_t n, uint32_t k, float *scratch, uint8_t *sel)
{
	uint32_t nc = 0;
	for (uint32_t i = 0; i < n; i++)
		if (ub[i] != -INFINITY)
			scratch[nc++] = ub[i];
	memset(sel, 0, n);
	if (k == 0 || nc == 0)
		return 0;
	if (k >= nc) {
		for (uint32_t i = 0; i < n; i++)
			sel[i] = ub[i] != -INFINITY;
		return nc;
	}
	float thr = sparse_kth(scratch, nc, k);
	uint32_t got = 0;
	for (uint32_t i = 0; i < n; i++)
		if (ub[i] > thr && ub[i] != -INFINITY) {
			sel[i] = 1;
			got++;
		}
	for (uint32_t i = 0; i < n && got < k; i++)
		if (ub[i] == thr) {
			sel[i] = 1;
			got++;
		}
	return got;
}

void engine_sparse_oracle(const float *w, uint32_t grp, uint32_t n, uint32_t k, float *scratch,
                          float *sum, uint8_t *sel, float *mass)
{
	for (uint32_t j = 0; j < n; j++) {
		double v = 0;
		for (uint32_t r = 0; r < grp; r++)
			v += w[(size_t)r * n + j];
		sum[j] = (float)v;
	}
	sparse_top(sum, n, k, scratch, sel);
	for (uint32_t r = 0; r < grp; r++) {
		double m = 0;
		for (uint32_t j = 0; j < n; j++)
			m += sel[j] ? w[(size_t)r * n + j] : 0;
		mass[r] = (float)m;
	}
}

/* ------------------------------------------------------------ HiP's search */

void sparse_tree_free(struct sparse_tree *t)
{
	free(t->start);
	free(t->size);
	free(t->cs);
	free(t->cn);
	free(t->blk);
	free(t->bn);
	free(t->score);
	free(t->scr);
	free(t->got);
	free(t->sel);
	memset(t, 0, sizeof *t);
}

void sparse_tree_ensure(struct sparse_tree *t, uint32_t cap)
{
	if (t->cap >= cap && t->start != NULL)
		return;
	sparse_tree_free(t);
	t->cap = cap;
	size_t c2 = 2 * (size_t)cap + 2;
	t->start = xmallocarray(cap + 1, sizeof(uint32_t));
	t->size = xmallocarray(cap + 1, sizeof(uint32_t));
	t->cs = xmallocarray(c2, sizeof(uint32_t));
	t->cn = xmallocarray(c2, sizeof(uint32_t));
	t->blk = xmallocarray(c2, sizeof(uint32_t));
	t->bn = xmallocarray(c2, sizeof(uint32_t));
	t->score = xmallocarray(c2, sizeof(float));
	t->scr = xmallocarray(c2, sizeof(float));
	t->got = xmallocarray(c2, sizeof(float));
	t->sel = xmallocarray(c2, 1);
}

uint32_t sparse_hip_tree(struct sparse_tree *t, uint32_t n_blocks, uint32_t k_blocks,
                         sparse_score_fn fn, void *ctx, uint8_t *chosen, uint64_t *scored)
{
	return sparse_hip_tree_beam(t, n_blocks, k_blocks, k_blocks, fn, ctx, chosen, scored);
}

uint32_t sparse_hip_tree_beam(struct sparse_tree *t, uint32_t n_blocks, uint32_t k_blocks,
                              uint32_t beam, sparse_score_fn fn, void *ctx, uint8_t *chosen,
                              uint64_t *scored)
{
	memset(chosen, 0, n_blocks);
	t->n_last = 0;
	if (k_blocks >= n_blocks) {
		memset(chosen, 1, n_blocks);
		return 0;
	}
	if (k_blocks == 0)
		return 0;
	/* w ranges, each at least one block (n_blocks > k_blocks); a wider
	 * beam starts with at most n_blocks / 2 ranges, so that each holds two
	 * blocks and the last round still chooses k_blocks of them */
	uint32_t w = KVS_MAX(k_blocks, KVS_MIN(beam, n_blocks / 2));
	uint32_t big = 0, rounds = 0, last_w = 0;
	for (uint32_t i = 0; i < w; i++) {
		t->start[i] = (uint32_t)((uint64_t)i * n_blocks / w);
		t->size[i] = (uint32_t)((uint64_t)(i + 1) * n_blocks / w) - t->start[i];
		big = KVS_MAX(big, t->size[i]);
	}
	/* a beam round may keep only single blocks: one more round (each
	 * range's block scored as a half) then keeps k_blocks of them */
	while (big > 1 || w > k_blocks) {
		uint32_t nb = 0;
		for (uint32_t i = 0; i < w; i++) {
			uint32_t half = t->size[i] / 2;
			t->cs[2 * i] = t->start[i];
			t->cn[2 * i] = half;
			t->cs[2 * i + 1] = t->start[i] + half;
			t->cn[2 * i + 1] = t->size[i] - half;
		}
		for (uint32_t j = 0; j < 2 * w; j++)
			if (t->cn[j] > 0) {
				t->blk[nb] = t->cs[j];
				t->bn[nb++] = t->cn[j];
			}
		fn(ctx, t->blk, t->bn, nb, t->got);
		*scored += nb;
		last_w = w;
		rounds++;
		for (uint32_t j = 0, g = 0; j < 2 * w; j++)
			t->score[j] = t->cn[j] > 0 ? t->got[g++] : -INFINITY;
		/* the last round (every half one block) keeps k_blocks, the
		 * others the beam; at least w halves are non-empty (every
		 * range's right half), so exactly that many are kept */
		uint32_t keep = big <= 2 ? k_blocks : w;
		sparse_top(t->score, 2 * w, keep, t->scr, t->sel);
		big = 0;
		for (uint32_t j = 0, i = 0; j < 2 * w; j++)
			if (t->sel[j]) {
				t->start[i] = t->cs[j];
				t->size[i] = t->cn[j];
				big = KVS_MAX(big, t->cn[j]);
				i++;
			}
		w = keep;
	}
	for (uint32_t i = 0; i < w; i++)
		chosen[t->start[i]] = 1;
	t->n_last = rounds > 0 ? 2 * last_w : 0;
	return rounds;
}

uint32_t sparse_hip_candidates(struct sparse_tree *t, const uint8_t *chosen, uint32_t n_blocks,
                               uint32_t n_cand, uint8_t *cand)
{
	memcpy(cand, chosen, n_blocks);
	if (t->n_last > 0) {
		sparse_top(t->score, t->n_last, n_cand, t->scr, t->sel);
		for (uint32_t j = 0; j < t->n_last; j++)
			cand[t->cs[j]] |= t->sel[j];
		/* a head that copies moves one key a step: the block after */
		for (uint32_t b = 0; b + 1 < n_blocks; b++)
			cand[b + 1] |= chosen[b];
	}
	uint32_t got = 0;
	for (uint32_t b = 0; b < n_blocks; b++)
		got += cand[b];
	return got;
}

uint32_t sparse_hip_rerank(const uint32_t *pg, const uint32_t *first, uint32_t n, const float *ub,
                           uint32_t k, float *score, float *scratch, uint8_t *sel)
{
	for (uint32_t i = 0; i < n; i++) {
		score[i] = -INFINITY;
		for (uint32_t j = first[i]; j < first[i + 1]; j++)
			score[i] = ub[pg[j]] > score[i] ? ub[pg[j]] : score[i];
	}
	return sparse_top(score, n, k, scratch, sel);
}
