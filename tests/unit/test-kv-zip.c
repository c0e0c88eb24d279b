/*
 * test-kv-zip.c: KVzip's whole re-read (kvzip:reread=all, kv_zip.c), the
 * paper's rule, against the incremental one (reread=new), on tiny llamas
 * (2 layers, 4 query heads, 2 KV heads, head_dim 16) with an F32 cache.
 *
 *   - by hand: a model whose weights are all zero attends uniformly, so a
 *     re-read query that sees v keys gives each 1/v, and the most a cached
 *     entry gets is 1/(n + 1) (the first query sees the n cached tokens
 *     and itself). After n0 tokens, a re-read, n1 more and a re-read, the
 *     incremental rule ranks by arrival (the first n0 keep 1/(n0 + 1), the
 *     rest 1/(n0 + n1 + 1)) while the whole re-read scores every entry
 *     1/(n0 + n1 + 1); the tokens each read counts are counted here;
 *   - the whole re-read's scores equal the max attention that its chunks'
 *     queries give each cached entry per KV head, taken here one query at a
 *     time from a plain engine (1e-5), with the later chunks' prompt ("the
 *     part ... starting with" the previous chunk's last 8 tokens, inside
 *     the user turn) built here from its text; a second re-read replaces
 *     the scores (it does not keep the max);
 *   - the whole re-read's scores depend on the cache, not on its history:
 *     a cache fed in three parts with a re-read after each ends with the
 *     scores of one fed at once and re-read once (1e-5), where the
 *     incremental rule's differ (the test can fail);
 *   - the option parses, prints, and a bad value is named in one line;
 *     kvzip keeps one set by default, and spread or store=heads without
 *     heads=1 are refused in one line.
 */
#include "kv/kv-int.h"
#include "model/model.h"
#include "tests/unit/test.h"
#include "tests/util/tinymodel.h"

#include <math.h>
#include <stdint.h>

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static void rnd_tokens(int32_t *ids, uint32_t n, uint32_t n_vocab)
{
	for (uint32_t i = 0; i < n; i++) {
		rng ^= rng << 13;
		rng ^= rng >> 7;
		rng ^= rng << 17;
		ids[i] = 3 + (int32_t)((rng >> 11) % (n_vocab - 3));
	}
}

static struct kv_cache *mk_cache(struct engine *eng, const char *spec, uint32_t budget)
{
	struct kv_config c;
	struct kv_cache *kv;
	struct err e;
	kv_config_default(&c);
	if (kv_policy_parse(spec, &c.policy, &e) != KVS_OK) {
		fprintf(stderr, "policy %s: %s\n", spec, e.msg);
		exit(99);
	}
	c.budget = budget;
	c.n_batch = 64;
	if (kv_cache_create(&kv, eng, &c, &e) != KVS_OK) {
		fprintf(stderr, "cache %s: %s\n", spec, e.msg);
		exit(99);
	}
	return kv;
}

/* One forward of ids (n) at slots and positions start.., seeing slots
 * 0..nv-1; want_attn when attn. */
static struct engine_out fwd(struct engine *eng, const int32_t *ids, uint32_t start, uint32_t n,
                             uint32_t nv, bool attn)
{
	static uint32_t vis[256];
	int32_t pos[64];
	uint32_t slot[64];
	for (uint32_t i = 0; i < 256; i++)
		vis[i] = i;
	for (uint32_t i = 0; i < n; i++) {
		pos[i] = (int32_t)(start + i);
		slot[i] = start + i;
	}
	struct engine_batch b = { 0 };
	b.n_tokens = n;
	b.tokens = ids;
	b.pos = pos;
	b.slot = slot;
	b.n_visible = nv;
	b.visible = vis;
	b.logits = ENGINE_LOGITS_NONE;
	b.want_attn = attn;
	struct engine_out o;
	struct err e;
	if (engine_forward(eng, &b, &o, &e) != KVS_OK) {
		fprintf(stderr, "forward: %s\n", e.msg);
		exit(99);
	}
	return o;
}

/* Feed ids (n) to kv in prefill pieces of at most 64. */
static void feed(struct kv_cache *kv, const int32_t *ids, uint32_t n)
{
	struct err e;
	T_CHECK(kv_cache_feed(kv, ids, n, &e) == KVS_OK, "feed: %s", e.msg);
}

/* The zero-weight model: uniform attention, scores by hand. */
static void test_uniform(void)
{
	struct tinymodel_spec s;
	struct model *m;
	uint8_t *buf;
	tinymodel_defaults(&s, "llama");
	s.n_embd = 64;
	s.n_ff = 128;
	s.scale = 0; /* every matrix zero: q = k = 0, every score 0 */
	tinymodel_load(&s, &m, &buf);
	const struct hparams *hp = &m->hp;
	uint32_t n0 = 20, n1 = 14, nh = hp->n_layer * hp->n_head_kv;
	int32_t ids[64];
	rnd_tokens(ids, n0 + n1, hp->n_vocab);
	for (int all = 0; all < 2; all++) {
		struct engine *eng = tinymodel_engine(m, 256, 1, true);
		struct kv_cache *kv =
		        mk_cache(eng, all ? "kvzip:chunk=16,reread=all" : "kvzip:chunk=16", 128);
		struct err e;
		feed(kv, ids, n0);
		T_EQ_INT(kv_zip_score(kv, 0, &e), KVS_OK);
		feed(kv, ids + n0, n1);
		T_EQ_INT(kv_zip_score(kv, 0, &e), KVS_OK);
		T_EQ_INT(kv->n_zip_reads, 2);
		uint32_t n = n0 + n1;
		for (uint32_t j = 0; j < n; j++) {
			float want = 1.0f / (float)((j < n0 && !all ? n0 : n) + 1);
			for (uint32_t r = 0; r < nh; r++)
				T_NEAR(kv->acc[(size_t)j * kv->acc_stride + r], want, 1e-6);
			T_NEAR(kv->toks[j].score, want, 1e-6);
		}
		/* what each read: the first n0 in two chunks, then the new n1 (new)
		 * or all n in three (all; later chunks with the longer prompt) */
		uint64_t np = kv->n_zip_ids, nm = kv->n_zip_more + 8;
		uint64_t first = n0 + np + (all ? nm : np);
		T_EQ_INT(kv->n_zip_tokens, all ? first + n + np + 2 * nm : first + n1 + np);
		kv_cache_free(kv);
		engine_free(eng);
	}
	model_free(m);
	free(buf);
}

/* The text of tokens ids (n) into out (cap). */
static void detok(const struct model *m, const int32_t *ids, uint32_t n, char *out, size_t cap)
{
	size_t o = 0;
	out[0] = 0;
	for (uint32_t i = 0; i < n && o + 1 < cap; i++)
		o += vocab_piece(m->vocab, ids[i], true, out + o, cap - o);
	out[KVS_MIN(o, cap - 1)] = 0;
}

/* The whole re-read against one query at a time on a plain engine b that
 * holds the same n tokens (toks) in slots 0..n-1: per chunk of `chunk`,
 * the prompt (the request, or for a later chunk the request for the part
 * starting with the previous chunk's last 8 tokens, spliced before the
 * turn's end as built here from the text), then the chunk, one query at a
 * time after the cache, each seeing the cache and the chunk's re-read so
 * far; want (n, n_layer, n_head_kv) is zeroed, then keeps the max. */
static void ref_whole(const struct model *m, struct engine *b, const struct kv_cache *kv,
                      const int32_t *toks, uint32_t n, uint32_t chunk, float *want)
{
	const struct hparams *hp = &m->hp;
	uint32_t nh = hp->n_layer * hp->n_head_kv, grp = hp->n_head / hp->n_head_kv;
	memset(want, 0, (size_t)n * nh * sizeof *want);
	int32_t rr[128];
	struct err e;
	for (uint32_t j0 = 0; j0 < n; j0 += chunk) {
		uint32_t np;
		if (j0 == 0) {
			np = kv->n_zip_ids;
			memcpy(rr, kv->zip_ids, np * sizeof *rr);
		} else {
			/* "...starting with" + 8 tokens + the turn's end, the cut
			 * found here from the rendered text */
			char text[512];
			uint32_t cut = 0;
			for (uint32_t k = 1; k <= kv->n_zip_more; k++) {
				detok(m, kv->zip_more, k, text, sizeof text);
				size_t tl = strlen(text);
				if (tl >= 13 && strcmp(text + tl - 13, "starting with") == 0) {
					cut = k;
					break;
				}
			}
			T_CHECK(cut > 0, "no \"starting with\" in the later chunks' prompt");
			np = 0;
			memcpy(rr, kv->zip_more, cut * sizeof *rr);
			np += cut;
			memcpy(rr + np, toks + j0 - 8, 8 * sizeof *rr);
			np += 8;
			memcpy(rr + np, kv->zip_more + cut, (kv->n_zip_more - cut) * sizeof *rr);
			np += kv->n_zip_more - cut;
		}
		uint32_t mc = KVS_MIN(chunk, n - j0);
		memcpy(rr + np, toks + j0, mc * sizeof *rr);
		for (uint32_t t = 0; t < np + mc; t++) {
			struct engine_out o = fwd(b, rr + t, n + t, 1, n + t + 1, true);
			for (uint32_t l = 0; l < hp->n_layer; l++)
				for (uint32_t h = 0; h < hp->n_head; h++)
					for (uint32_t j = 0; j < n; j++) {
						float v = o.attn[((size_t)l * hp->n_head + h) * o.n_visible + j];
						float *d = &want[(size_t)j * nh + l * hp->n_head_kv + h / grp];
						*d = v > *d ? v : *d;
					}
		}
		for (uint32_t t = 0; t < np + mc; t++)
			T_EQ_INT(engine_kv_set_pos(b, n + t, -1, &e), KVS_OK);
	}
}

/* The whole re-read's scores against ref_whole, after a first re-read and
 * after a second one over more tokens (replaced, not the max). */
static void test_reference(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t n0 = 37, n1 = 11, chunk = 16, nh = hp->n_layer * hp->n_head_kv;
	struct engine *a = tinymodel_engine(m, 256, 1, true), *b = tinymodel_engine(m, 256, 1, true);
	struct kv_cache *kv = mk_cache(a, "kvzip:chunk=16,reread=all", 128);
	struct err e;
	int32_t ids[64];
	rnd_tokens(ids, n0 + n1, hp->n_vocab);
	/* the later chunks' prompt: the request's text, then the template's
	 * end of the user turn and the generation prompt after the cut */
	char text[512];
	detok(m, kv->zip_more, kv->n_zip_more, text, sizeof text);
	T_CHECK(strstr(text,
	               "Repeat the part of the previous context exactly, starting with<|im_end|>") !=
	                        NULL &&
	                strstr(text, "<|im_start|>user\n") != NULL &&
	                strstr(text, "<|im_start|>assistant\n") != NULL,
	        "later chunks' prompt: %s", text);
	detok(m, kv->zip_more + kv->zip_cut, kv->n_zip_more - kv->zip_cut, text, sizeof text);
	T_CHECK(strncmp(text, "<|im_end|>", 10) == 0, "after the cut: %s", text);
	float *want = xcalloc((size_t)(n0 + n1) * nh, sizeof *want);
	feed(kv, ids, n0);
	T_EQ_INT(kv_zip_score(kv, 0, &e), KVS_OK);
	(void)fwd(b, ids, 0, n0, n0, false);
	ref_whole(m, b, kv, ids, n0, chunk, want);
	double d = tinymodel_max_diff(want, kv->acc, (size_t)n0 * nh);
	T_CHECK(d <= 1e-5, "whole re-read off by %g from the one-query re-read", d);
	feed(kv, ids + n0, n1);
	T_EQ_INT(kv_zip_score(kv, 0, &e), KVS_OK);
	(void)fwd(b, ids + n0, n0, n1, n0 + n1, false);
	ref_whole(m, b, kv, ids, n0 + n1, chunk, want);
	d = tinymodel_max_diff(want, kv->acc, (size_t)(n0 + n1) * nh);
	T_CHECK(d <= 1e-5, "second whole re-read off by %g", d);
	for (uint32_t j = 0; j < n0 + n1; j++) {
		float mx = 0;
		for (uint32_t r = 0; r < nh; r++)
			mx = fmaxf(mx, want[(size_t)j * nh + r]);
		T_NEAR(kv->toks[j].score, mx, 1e-5);
	}
	T_EQ_INT(kv_cache_check(kv, &e), KVS_OK);
	for (uint32_t s = n0 + n1; s < 256; s++)
		T_EQ_INT(engine_kv_pos(a, s), -1);
	free(want);
	kv_cache_free(kv);
	engine_free(a);
	engine_free(b);
}

/* The scores after feeding parts (n each, np of them) with a re-read after
 * each, into acc (n_total, n_layer, n_head_kv). */
static void scores_after(const struct model *m, const char *spec, const int32_t *ids,
                         const uint32_t *parts, uint32_t n_parts, float *acc)
{
	struct engine *eng = tinymodel_engine(m, 256, 1, true);
	struct kv_cache *kv = mk_cache(eng, spec, 128);
	struct err e;
	uint32_t n = 0;
	for (uint32_t i = 0; i < n_parts; i++) {
		feed(kv, ids + n, parts[i]);
		n += parts[i];
		T_EQ_INT(kv_zip_score(kv, 0, &e), KVS_OK);
	}
	memcpy(acc, kv->acc, (size_t)n * kv->acc_stride * sizeof *acc);
	kv_cache_free(kv);
	engine_free(eng);
}

/* The whole re-read's scores depend on the cache only; the incremental
 * rule's on when each token came. */
static void test_history(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t once[1] = { 48 }, thrice[3] = { 20, 15, 13 }, nh = hp->n_layer * hp->n_head_kv;
	int32_t ids[48];
	rnd_tokens(ids, 48, hp->n_vocab);
	size_t na = (size_t)48 * nh;
	float *a = xcalloc(na, sizeof *a), *b = xcalloc(na, sizeof *b);
	scores_after(m, "kvzip:chunk=16,reread=all", ids, once, 1, a);
	scores_after(m, "kvzip:chunk=16,reread=all", ids, thrice, 3, b);
	double d_all = tinymodel_max_diff(a, b, na);
	scores_after(m, "kvzip:chunk=16", ids, once, 1, a);
	scores_after(m, "kvzip:chunk=16", ids, thrice, 3, b);
	double d_new = tinymodel_max_diff(a, b, na);
	T_CHECK(d_all <= 1e-5, "whole re-read: the history moved the scores by %g", d_all);
	T_CHECK(d_new > 1e-3, "incremental re-read: the history moved the scores only %g", d_new);
	free(a);
	free(b);
}

/* The option's name and values; a bad value named in one line. */
static void test_parse(void)
{
	struct kv_policy p;
	struct err e;
	char buf[256];
	T_EQ_INT(kv_policy_parse("kvzip:reread=all", &p, &e), KVS_OK);
	T_EQ_STR(kv_policy_format(&p, buf, sizeof buf),
	         "kvzip sinks=4 chunk=512 pos=original reread=all");
	T_EQ_INT(kv_policy_parse("kvzip:reread=some", &p, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "reread") && strstr(e.msg, "some") && strstr(e.msg, "all"), "%s", e.msg);
	T_EQ_INT(kv_policy_parse("snapkv:reread=all", &p, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "reread"), "%s", e.msg);
	/* one set by default: spread and store=heads want heads=1 */
	T_EQ_INT(kv_policy_parse("kvzip", &p, &e), KVS_OK);
	T_CHECK(!kv_policy_per_head(&p), "kvzip keeps one set by default");
	T_EQ_INT(kv_policy_parse("kvzip:store=heads", &p, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "store=heads") && strstr(e.msg, "heads=1"), "%s", e.msg);
	T_EQ_INT(kv_policy_parse("snapkv:spread=2", &p, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "spread") && strstr(e.msg, "heads=1"), "%s", e.msg);
	T_EQ_INT(kv_policy_parse("kvzip:heads=1,store=heads,spread=2", &p, &e), KVS_OK);
	T_CHECK(kv_policy_per_head(&p), "kvzip:heads=1 keeps per-head sets");
}

int main(void)
{
	struct tinymodel_spec s;
	struct model *m;
	uint8_t *buf;
	test_parse();
	test_uniform();
	tinymodel_defaults(&s, "llama");
	s.n_embd = 64; /* head_dim 16: the CPU backend's attention wants multiples of 16 */
	s.n_ff = 128;
	s.scale = 0.5f;
	tinymodel_load(&s, &m, &buf);
	test_reference(m);
	test_history(m);
	model_free(m);
	free(buf);
	return t_done("test-kv-zip");
}
