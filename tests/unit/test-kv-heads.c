/*
 * test-kv-heads.c: per-(layer, KV head) keep-sets (kv_heads.c, the
 * engine's head_keep in every CPU attention path) and KVzip's re-read
 * scores (kv_zip.c), on a tiny random llama (2 layers, 4 query heads, 2 KV
 * heads, head_dim 16) with an F32 cache.
 *
 *   - the engine: a mask that drops nothing gives bit for bit what no mask
 *     gives, in the split decode, the per-row (want_attn) path, the tiled
 *     prefill, the whole-row prefill (want_attn_kv), sparse quest and hip
 *     decode and hip's sparse prefill; dropping slots for every head equals
 *     leaving them out of the visible list (1e-5); dropping a slot for one
 *     (layer, KV head) gives it exactly zero weight from that head's query
 *     heads, the other keys of that head the weights of the unmasked run
 *     renormalised without it (1e-6; computed here), and leaves the other
 *     heads of the layer bit for bit as they were;
 *   - attn_kv_max gives per KV head the max over queries and query heads,
 *     checked against one-query runs taken here;
 *   - the cache: a per-head policy that keeps everything is bit-identical
 *     to the plain engine (to full); after an eviction the next turn's
 *     logits equal, bit for bit, a plain engine's recomputation masked by
 *     the per-head sets kv_cache_token_heads reports; under long random
 *     dialogues every head keeps at most the budget (recounted here from
 *     hkeep), the bytes held are the union's tokens and never pass budget
 *     x bytes_per_token with spread 1 (the default), the kept entries
 *     never pass it at any spread, the engine's allocation is the budget
 *     plus the policy's fixed scratch (and (spread - 1) x budget); with
 *     spread 1 every head keeps the whole union (nothing it gave up would
 *     save a byte), with spread > 1 the union does pass the budget (the
 *     heads keep different tokens: the test can fail), every key a head
 *     dropped gets exactly
 *     zero weight in the captured attention, and kv_cache_check holds
 *     after every step;
 *   - snapkv:rank=max: the same votes, each token scored by the max of its
 *     row instead of the sum, and ranked otherwise;
 *   - carry > 0 (snapkv, kvzip): a second vote or re-read adds its own
 *     scores (taken from caches with carry 0 and 1) to the first's times
 *     carry;
 *   - KVzip's scores equal the max attention the chunked re-read's
 *     queries give each cached token per KV head, taken here one query at
 *     a time from a plain engine (1e-5), after a first re-read of every
 *     token and after a second of only the tokens fed since.
 */
#include "kv/kv-int.h"
#include "model/model.h"
#include "tests/unit/test.h"
#include "tests/util/ggufw.h"
#include "tests/util/tinymodel.h"

#include <math.h>
#include <stdint.h>

static uint64_t rng = 0x2545F4914F6CDD1Dull;

static uint32_t rnd_u32(uint32_t n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)((rng >> 11) % n);
}

static void rnd_tokens(int32_t *ids, uint32_t n, uint32_t n_vocab)
{
	for (uint32_t i = 0; i < n; i++)
		ids[i] = 3 + (int32_t)rnd_u32(n_vocab - 3);
}

static struct kv_cache *mk_cache(struct engine *eng, const char *spec, uint32_t budget,
                                 uint32_t n_batch)
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
	c.n_batch = n_batch;
	if (kv_cache_create(&kv, eng, &c, &e) != KVS_OK) {
		fprintf(stderr, "cache %s: %s\n", spec, e.msg);
		exit(99);
	}
	return kv;
}

/* ------------------------------------------------------------- the engine */

/* One forward of ids at slots/positions start.. (n), seeing slots vis (nv). */
struct fw {
	struct engine *eng;
	const uint32_t *vis;
	uint32_t nv;
	const uint8_t *keep;
	const struct engine_sparse *sparse;
	bool attn, attn_kv;
	enum engine_logits logits;
};

static struct engine_out run(const struct fw *f, const int32_t *ids, uint32_t start, uint32_t n)
{
	int32_t pos[64];
	uint32_t slot[64];
	for (uint32_t i = 0; i < n; i++) {
		pos[i] = (int32_t)(start + i);
		slot[i] = start + i;
	}
	struct engine_batch b = { 0 };
	b.n_tokens = n;
	b.tokens = ids;
	b.pos = pos;
	b.slot = slot;
	b.n_visible = f->nv;
	b.visible = f->vis;
	b.logits = f->logits;
	b.want_attn = f->attn;
	b.want_attn_kv = f->attn_kv;
	b.head_keep = f->keep;
	b.sparse = f->sparse;
	struct engine_out o;
	struct err e;
	if (engine_forward(f->eng, &b, &o, &e) != KVS_OK) {
		fprintf(stderr, "forward: %s\n", e.msg);
		exit(99);
	}
	return o;
}

/* The logits rows of o copied (rows x n_vocab). */
static float *copy_logits(const struct engine_out *o, uint32_t n_vocab)
{
	size_t n = (size_t)o->n_rows * n_vocab;
	float *x = xmallocarray(n, sizeof *x);
	memcpy(x, o->logits, n * sizeof *x);
	return x;
}

/* The attention paths a batch can take, by what it asks. */
enum path { P_SPLIT, P_ROWS, P_TILED, P_WHOLE, P_QUEST, P_HIP, P_HIP_PREFILL, P_N };
static const char *const path_names[P_N] = { "split decode",      "per-row decode", "tiled prefill",
	                                         "whole-row prefill", "quest decode",   "hip decode",
	                                         "hip prefill" };

/* Set f for path p; returns the batch's token count. */
static uint32_t path_setup(struct fw *f, enum path p, struct engine_sparse *sp)
{
	engine_sparse_default(sp);
	sp->budget = 12;
	sp->page = 4;
	sp->block = 4;
	sp->sinks = 2;
	sp->recent = 4;
	sp->dense_layers = 0;
	sp->refresh = 1;
	sp->prefill = 16;
	f->sparse = NULL;
	f->attn = p == P_ROWS;
	f->attn_kv = p == P_WHOLE;
	f->logits = p == P_TILED || p == P_WHOLE || p == P_HIP_PREFILL ? ENGINE_LOGITS_ALL
	                                                               : ENGINE_LOGITS_LAST;
	if (p == P_QUEST || p == P_HIP || p == P_HIP_PREFILL) {
		sp->mode = p == P_QUEST ? ENGINE_SPARSE_QUEST : ENGINE_SPARSE_HIP;
		f->sparse = sp;
	}
	return p == P_TILED || p == P_WHOLE || p == P_HIP_PREFILL ? 12 : 1;
}

static void test_engine(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t n_ctx = 96, n0 = 40, nh = hp->n_layer * hp->n_head_kv;
	struct engine *eng = tinymodel_engine(m, n_ctx, 2, true);
	int32_t ids[64], q[16];
	rnd_tokens(ids, n0, hp->n_vocab);
	rnd_tokens(q, 12, hp->n_vocab);
	uint32_t vis[96], vis_less[96], n_less = 0;
	for (uint32_t i = 0; i < n_ctx; i++)
		vis[i] = i;
	uint8_t *ones = xmalloc((size_t)nh * n_ctx), *drop = xmalloc((size_t)nh * n_ctx);
	memset(ones, 1, (size_t)nh * n_ctx);
	memcpy(drop, ones, (size_t)nh * n_ctx);
	static const uint32_t gone[] = { 3, 17, 25, 26 };
	for (uint32_t i = 0; i < KVS_ARRAY_LEN(gone); i++)
		for (uint32_t r = 0; r < nh; r++)
			drop[(size_t)r * n_ctx + gone[i]] = 0;
	for (uint32_t i = 0; i < n0 + 12; i++) {
		bool out = false;
		for (uint32_t k = 0; k < KVS_ARRAY_LEN(gone); k++)
			out |= gone[k] == i;
		if (!out)
			vis_less[n_less++] = i;
	}
	struct fw f = { .eng = eng, .vis = vis, .nv = n0, .logits = ENGINE_LOGITS_NONE };
	(void)run(&f, ids, 0, n0);
	for (enum path p = 0; p < P_N; p++) {
		struct engine_sparse sp;
		uint32_t n = path_setup(&f, p, &sp);
		/* nothing dropped: bit for bit */
		f.vis = vis;
		f.nv = n0 + n;
		f.keep = NULL;
		struct engine_out o = run(&f, q, n0, n);
		float *plain = copy_logits(&o, hp->n_vocab);
		f.keep = ones;
		o = run(&f, q, n0, n);
		T_CHECK(memcmp(plain, o.logits, (size_t)o.n_rows * hp->n_vocab * sizeof(float)) == 0,
		        "%s: a mask keeping everything changed the logits", path_names[p]);
		/* dropped for every head = not visible; a hip choice made without
		 * the slots scores other blocks, so the sparse runs keep a budget
		 * that covers every key */
		if (f.sparse != NULL)
			sp.budget = 64;
		f.keep = drop;
		o = run(&f, q, n0, n);
		float *masked = copy_logits(&o, hp->n_vocab);
		f.keep = NULL;
		f.vis = vis_less;
		f.nv = n_less - (12 - n);
		o = run(&f, q, n0, n);
		double d = tinymodel_max_diff(masked, o.logits, (size_t)o.n_rows * hp->n_vocab);
		T_CHECK(d <= 1e-5, "%s: dropped everywhere vs not visible: max diff %g", path_names[p], d);
		free(plain);
		free(masked);
	}

	/* one (layer 0, KV head 1) drops slot 17: zero weight there, the rest
	 * of that head renormalised, the other heads untouched */
	struct engine_sparse sp;
	path_setup(&f, P_ROWS, &sp);
	f.vis = vis;
	f.nv = n0 + 1;
	f.keep = NULL;
	struct engine_out o = run(&f, q, n0, 1);
	uint32_t nv = o.n_visible, grp = hp->n_head / hp->n_head_kv;
	float *w0 = xmallocarray((size_t)hp->n_layer * hp->n_head * nv, sizeof *w0);
	memcpy(w0, o.attn, (size_t)hp->n_layer * hp->n_head * nv * sizeof *w0);
	memcpy(drop, ones, (size_t)nh * n_ctx);
	drop[(size_t)1 * n_ctx + 17] = 0; /* row (layer 0, KV head 1) */
	f.keep = drop;
	o = run(&f, q, n0, 1);
	for (uint32_t h = 0; h < hp->n_head; h++) {
		const float *a = w0 + (size_t)h * nv, *b = o.attn + (size_t)h * nv;
		if (h / grp != 1) {
			T_CHECK(memcmp(a, b, nv * sizeof *a) == 0, "layer 0 head %u (KV head 0) changed", h);
			continue;
		}
		T_CHECK(b[17] == 0.0f, "layer 0 head %u: the dropped slot has weight %g", h, b[17]);
		T_CHECK(a[17] > 0, "layer 0 head %u: slot 17 had no weight to drop", h);
		double worst = 0;
		for (uint32_t j = 0; j < nv; j++)
			if (j != 17)
				worst = fmax(worst, fabs(b[j] - a[j] / (1.0 - a[17])));
		T_CHECK(worst <= 1e-6, "layer 0 head %u: renormalised weights off by %g", h, worst);
	}
	free(w0);

	/* attn_kv_max: the max over the queries (each run alone here) and each
	 * KV head's query heads */
	float *want = xcalloc((size_t)nh * (n0 + 4), sizeof *want);
	f.keep = NULL;
	f.attn = true;
	f.attn_kv = false;
	f.logits = ENGINE_LOGITS_NONE;
	for (uint32_t t = 0; t < 4; t++) {
		f.nv = n0 + t + 1;
		o = run(&f, q + t, n0 + t, 1);
		for (uint32_t l = 0; l < hp->n_layer; l++)
			for (uint32_t h = 0; h < hp->n_head; h++)
				for (uint32_t j = 0; j <= n0 + t; j++) {
					float v = o.attn[((size_t)l * hp->n_head + h) * o.n_visible + j];
					float *d = &want[((size_t)l * hp->n_head_kv + h / grp) * (n0 + 4) + j];
					*d = v > *d ? v : *d;
				}
	}
	struct engine_batch b = { 0 };
	int32_t pos[4];
	uint32_t slot[4];
	for (uint32_t t = 0; t < 4; t++) {
		pos[t] = (int32_t)(n0 + t);
		slot[t] = n0 + t;
	}
	b.n_tokens = 4;
	b.tokens = q;
	b.pos = pos;
	b.slot = slot;
	b.n_visible = n0 + 4;
	b.visible = vis;
	b.logits = ENGINE_LOGITS_NONE;
	b.want_attn_kv = true;
	b.attn_kv_max = true;
	struct err e;
	T_EQ_INT(engine_forward(eng, &b, &o, &e), KVS_OK);
	double d = tinymodel_max_diff(want, o.attn_kv, (size_t)nh * (n0 + 4));
	T_CHECK(d <= 1e-5, "attn_kv_max: off by %g from the one-query maxima", d);
	free(want);
	free(ones);
	free(drop);
	engine_free(eng);
}

/* ------------------------------------------------------------- the cache */

/* A per-head policy that never needs to evict computes what the plain
 * engine computes, bit for bit. */
static void test_keep_all(const struct model *m, const char *spec)
{
	const struct hparams *hp = &m->hp;
	uint32_t n_ctx = 64, nb = 8, lens[3] = { 19, 7, 13 }, n = 0;
	struct engine *a = tinymodel_engine(m, n_ctx, 1, true),
	              *b = tinymodel_engine(m, n_ctx, 1, true);
	struct kv_cache *kv = mk_cache(a, spec, n_ctx, nb);
	struct err e;
	bool same = true;
	uint32_t vis[64];
	for (uint32_t i = 0; i < n_ctx; i++)
		vis[i] = i;
	for (int turn = 0; turn < 3; turn++) {
		int32_t ids[32];
		rnd_tokens(ids, lens[turn], hp->n_vocab);
		T_CHECK(kv_cache_begin_turn(kv, KV_ROLE_USER, lens[turn], &e) == KVS_OK, "%s", e.msg);
		T_CHECK(kv_cache_feed(kv, ids, lens[turn], &e) == KVS_OK, "%s", e.msg);
		struct engine_out o = { 0 };
		for (uint32_t done = 0; done < lens[turn];) {
			uint32_t mm = KVS_MIN(nb, lens[turn] - done);
			struct fw f = { .eng = b, .vis = vis, .nv = n + mm, .logits = ENGINE_LOGITS_LAST };
			o = run(&f, ids + done, n, mm);
			n += mm;
			done += mm;
		}
		const float *la = kv_cache_logits(kv);
		if (la == NULL || memcmp(la, o.logits, hp->n_vocab * sizeof(float)) != 0)
			same = false;
	}
	T_CHECK(same, "%s keeping everything: logits differ from the plain engine", spec);
	kv_cache_free(kv);
	engine_free(a);
	engine_free(b);
}

/* After an eviction under per-head keep-sets, the next turn's logits equal
 * a reference recomputation: a plain engine that prefilled the same first
 * turn (no eviction, the same chunks, slots = original positions) runs
 * the second turn seeing the tokens some head keeps, each (layer, KV head)
 * masked by the set kv_cache_token_heads reports (the turn's own tokens
 * kept by every head), bit for bit. */
static void test_reference(const struct model *m, const char *spec)
{
	const struct hparams *hp = &m->hp;
	uint32_t budget = 40, nb = 8, n1 = 36, n2 = 12, nh = hp->n_layer * hp->n_head_kv;
	struct kv_policy pol;
	struct err e;
	T_EQ_INT(kv_policy_parse(spec, &pol, &e), KVS_OK);
	struct engine *a = tinymodel_engine(m, budget + kv_policy_scratch(&pol, budget), 1, true),
	              *b = tinymodel_engine(m, 64, 1, true);
	struct kv_cache *kv = mk_cache(a, spec, budget, nb);
	int32_t ids[48];
	uint32_t vis[64];
	rnd_tokens(ids, n1 + n2, hp->n_vocab);
	for (uint32_t i = 0; i < 64; i++)
		vis[i] = i;
	/* H2O's forwards ask for the per-KV-head attention (its whole-row path) */
	bool akv = strncmp(spec, "h2o", 3) == 0;
	/* turn 1 fits: the cache and the reference prefill the same chunks */
	T_CHECK(kv_cache_begin_turn(kv, KV_ROLE_USER, n1, &e) == KVS_OK, "%s", e.msg);
	T_CHECK(kv_cache_feed(kv, ids, n1, &e) == KVS_OK, "%s", e.msg);
	for (uint32_t done = 0; done < n1;) {
		uint32_t mm = KVS_MIN(nb, n1 - done);
		struct fw f = {
			.eng = b, .vis = vis, .nv = done + mm, .attn_kv = akv, .logits = ENGINE_LOGITS_LAST
		};
		run(&f, ids + done, done, mm);
		done += mm;
	}
	/* turn 2 evicts, each head its own tokens */
	T_CHECK(kv_cache_begin_turn(kv, KV_ROLE_USER, n2, &e) == KVS_OK, "%s", e.msg);
	T_CHECK(kv_cache_feed(kv, ids + n1, n2, &e) == KVS_OK, "%s", e.msg);
	uint8_t *keep = xcalloc((size_t)nh * 64, 1); /* (n_layer, n_head_kv, 64) by slot */
	uint8_t row[64];
	uint32_t nv = 0, n_part = 0, pos_ok = 1;
	for (uint32_t i = 0; i < kv_cache_n(kv); i++) {
		const struct kv_tok *t = &kv_cache_toks(kv)[i];
		uint32_t k = kv_cache_token_heads(kv, i, row);
		n_part += k < nh;
		pos_ok &= t->pos == t->orig_pos;
		for (uint32_t r = 0; r < nh; r++)
			keep[(size_t)r * 64 + (uint32_t)t->orig_pos] = row[r];
		if (t->orig_pos < (int32_t)n1)
			vis[nv++] = (uint32_t)t->orig_pos;
	}
	T_CHECK(pos_ok, "%s: the reference needs original positions", spec);
	/* spread 1: the union is cut, every head keeps all of it; else the heads differ */
	bool spread1 = kv_policy_get(&pol, "spread") == 1;
	T_CHECK(spread1 ? nv < n1 && n_part == 0 : n_part > 0,
	        "%s: %u of %u tokens kept, %u by only some heads", spec, nv, n1, n_part);
	struct engine_out o = { 0 };
	for (uint32_t done = 0; done < n2;) {
		uint32_t mm = KVS_MIN(nb, n2 - done);
		for (uint32_t j = 0; j < mm; j++)
			vis[nv + done + j] = n1 + done + j;
		struct fw f = { .eng = b,
			            .vis = vis,
			            .nv = nv + done + mm,
			            .keep = keep,
			            .attn_kv = akv,
			            .logits = ENGINE_LOGITS_LAST };
		o = run(&f, ids + n1 + done, n1 + done, mm);
		done += mm;
	}
	const float *la = kv_cache_logits(kv);
	double d = la ? tinymodel_max_diff(la, o.logits, hp->n_vocab) : INFINITY;
	T_CHECK(la != NULL && memcmp(la, o.logits, hp->n_vocab * sizeof(float)) == 0,
	        "%s: logits differ from the reference with the same per-head sets (max %g)", spec, d);
	free(keep);
	kv_cache_free(kv);
	engine_free(a);
	engine_free(b);
}

struct watch {
	struct kv_cache *kv;
	uint32_t steps, nonzero; /* step events seen; dropped keys with weight */
	uint32_t dropped_seen;   /* dropped (key, head) pairs looked at */
};

/* Every key a head dropped got exactly zero weight from its query heads. */
static void watch_step(const struct kv_event *ev, void *ud)
{
	struct watch *w = ud;
	struct kv_cache *c = w->kv;
	if (ev->kind != KV_EVENT_STEP || ev->attn == NULL || c->hkeep == NULL)
		return;
	w->steps++;
	uint32_t grp = ev->n_head / c->hp->n_head_kv;
	for (uint32_t l = 0; l < ev->n_layer; l++)
		for (uint32_t h = 0; h < ev->n_head; h++) {
			const uint8_t *row = c->hkeep + ((size_t)l * c->hp->n_head_kv + h / grp) * c->n_ctx;
			const float *a = ev->attn + ((size_t)l * ev->n_head + h) * ev->n_cached;
			for (uint32_t j = 0; j < ev->n_cached; j++)
				if (!row[c->toks[j].slot]) {
					w->dropped_seen++;
					w->nonzero += a[j] != 0.0f;
				}
		}
}

/* Long random dialogues under a per-head policy: the heads' budgets, the
 * bytes held (the union: within the budget's with spread 1, the default)
 * and kept (the entries), the engine's allocation (the budget and the
 * policy's fixed scratch), zero weights, the checker. */
static void test_budget(const struct model *m, const char *spec, uint32_t turns)
{
	const struct hparams *hp = &m->hp;
	uint32_t budget = 40, nh = hp->n_layer * hp->n_head_kv;
	struct kv_policy pol;
	struct err e;
	T_EQ_INT(kv_policy_parse(spec, &pol, &e), KVS_OK);
	uint32_t spread = (uint32_t)kv_policy_get(&pol, "spread");
	/* the fixed overhead: a vote's window (32), a re-read's chunk and prompt
	 * (64 tokens; 96 for a whole re-read's later chunks) */
	uint32_t window = strncmp(spec, "snapkv", 6) == 0 ? 32 : 0;
	uint32_t chunk = kv_policy_reread(&pol), fixed = window;
	if (chunk > 0)
		fixed += KVS_MIN(chunk, budget) + (strstr(spec, "reread=all") ? 96 : 64);
	T_EQ_INT(kv_policy_scratch(&pol, budget), fixed + (spread - 1) * budget);
	struct engine *eng = tinymodel_engine(m, budget + kv_policy_scratch(&pol, budget), 1, true);
	struct kv_cache *kv = mk_cache(eng, spec, budget, 16);
	struct watch w = { .kv = kv };
	kv_cache_set_events(kv, watch_step, &w);
	kv_cache_set_capture(kv, KV_CAPTURE_FULL, 0);
	uint32_t most_union = 0, partial = 0, bad = 0;
	uint64_t bpt = 0;
	for (uint32_t turn = 0; turn < turns && bad < 3; turn++) {
		int32_t ids[24];
		uint32_t len = 4 + rnd_u32(20), reply = 1 + rnd_u32(6);
		rnd_tokens(ids, len, hp->n_vocab);
		int rc = kv_cache_begin_turn(kv, KV_ROLE_USER, len, &e);
		if (rc == KVS_OK)
			rc = kv_cache_feed(kv, ids, len, &e);
		for (uint32_t r = 0; r < reply && rc == KVS_OK; r++) {
			int32_t t = 3 + (int32_t)rnd_u32(hp->n_vocab - 3);
			rc = kv_cache_feed(kv, &t, 1, &e);
		}
		if (rc == KVS_OK)
			rc = kv_cache_check(kv, &e);
		if (rc != KVS_OK) {
			bad++;
			T_CHECK(false, "%s turn %u: %s", spec, turn, e.msg);
			continue;
		}
		struct kv_stats st;
		kv_cache_stats(kv, &st);
		bpt = st.bytes_per_token;
		/* recount each head's keep-set from hkeep */
		uint32_t most = 0;
		uint64_t entries = 0;
		for (uint32_t r = 0; r < nh; r++) {
			uint32_t k = 0;
			for (uint32_t i = 0; i < kv->n; i++)
				k += kv->hkeep[(size_t)r * kv->n_ctx + kv->toks[i].slot];
			most = KVS_MAX(most, k);
			entries += k;
		}
		for (uint32_t i = 0; i < kv->n; i++)
			partial += kv->toks[i].n_heads < nh;
		/* what the views read: each token's pairs, as the masks have them */
		uint32_t nl, nkv, api_bad = 0;
		uint8_t *map = kv_cache_head_map(kv, &nl, &nkv), row[64];
		for (uint32_t i = 0; i < kv->n && map != NULL; i++) {
			uint32_t k = kv_cache_token_heads(kv, i, row);
			api_bad += k != kv->toks[i].n_heads || memcmp(row, map + (size_t)i * nh, nh) != 0;
			for (uint32_t r = 0; r < nh; r++)
				api_bad += row[r] != kv->hkeep[(size_t)r * kv->n_ctx + kv->toks[i].slot];
		}
		if (map == NULL || nl * nkv != nh || api_bad > 0) {
			bad++;
			T_CHECK(false, "%s turn %u: the head map disagrees with the masks (%u)", spec, turn,
			        api_bad);
		}
		free(map);
		/* held: the union's slots, each every head's K/V; kept: the entries */
		if (most > budget || st.bytes != (uint64_t)kv->n * bpt ||
		    st.bytes > (uint64_t)spread * budget * bpt || st.heads_load != most ||
		    st.bytes_entries != entries * bpt / nh || st.bytes_entries > (uint64_t)budget * bpt ||
		    st.bytes_allocated != (uint64_t)(budget + fixed + (spread - 1) * budget) * bpt) {
			bad++;
			T_CHECK(false,
			        "%s turn %u: a head keeps %u (stats %u), budget %u; %u tokens, %llu bytes "
			        "held, %llu kept, %llu entries, %llu allocated",
			        spec, turn, most, st.heads_load, budget, kv->n, (unsigned long long)st.bytes,
			        (unsigned long long)st.bytes_entries, (unsigned long long)entries,
			        (unsigned long long)st.bytes_allocated);
		}
		most_union = KVS_MAX(most_union, kv->n);
	}
	struct kv_stats st;
	kv_cache_stats(kv, &st);
	T_CHECK(st.bytes_peak <= (uint64_t)spread * budget * bpt,
	        "%s: peak %llu bytes held, over %u x the budget's", spec,
	        (unsigned long long)st.bytes_peak, spread);
	if (spread == 1)
		T_CHECK(most_union <= budget, "%s: the union held %u tokens, over the budget %u", spec,
		        most_union, budget);
	else
		T_CHECK(most_union > budget,
		        "%s: the union never passed the budget (%u): the heads kept "
		        "the same tokens",
		        spec, most_union);
	if (spread == 1) {
		/* the union is one head's budget: every head keeps all of it */
		T_CHECK(partial == 0 && w.dropped_seen == 0,
		        "%s: spread 1, yet %u tokens kept by only some heads, %u dropped keys", spec,
		        partial, w.dropped_seen);
	} else {
		T_CHECK(partial > 0, "%s: no token was kept by only some heads", spec);
		T_CHECK(w.steps > 0 && w.dropped_seen > 0, "%s: %u steps, %u dropped keys looked at", spec,
		        w.steps, w.dropped_seen);
	}
	T_EQ_INT(w.nonzero, 0);
	kv_cache_free(kv);
	engine_free(eng);
}

/* The reference re-read of the tokens toks (nu) after n cached tokens on a
 * plain engine b holding the same K/V in slots 0..n-1: per chunk, the
 * prompt and the chunk's tokens run one at a time after the cache, each
 * seeing the cache and the chunk so far; want, (n, n_layer, n_head_kv),
 * keeps the max of each KV head's query heads' weights on each cached
 * token; then the scratch slots are emptied. */
static void ref_reread(const struct model *m, struct engine *b, const struct kv_cache *kv,
                       const int32_t *toks, uint32_t nu, uint32_t n, uint32_t chunk, float *want)
{
	const struct hparams *hp = &m->hp;
	uint32_t nh = hp->n_layer * hp->n_head_kv, grp = hp->n_head / hp->n_head_kv;
	uint32_t np = kv->n_zip_ids, vis[256];
	for (uint32_t i = 0; i < 256; i++)
		vis[i] = i;
	int32_t *rr = xmallocarray(np + chunk, sizeof *rr);
	memcpy(rr, kv->zip_ids, np * sizeof *rr);
	struct fw f = { .eng = b, .vis = vis, .attn = true, .logits = ENGINE_LOGITS_NONE };
	struct err e;
	for (uint32_t j0 = 0; j0 < nu; j0 += chunk) {
		uint32_t mc = KVS_MIN(chunk, nu - j0);
		memcpy(rr + np, toks + j0, mc * sizeof *rr);
		for (uint32_t t = 0; t < np + mc; t++) {
			f.nv = n + t + 1;
			struct engine_out o = run(&f, rr + t, n + t, 1);
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
	free(rr);
}

/* KVzip's scores against one query at a time (ref_reread): a first
 * re-read of every token, then, after more tokens, one of the new tokens
 * only, every entry keeping its max. */
static void test_zip_scores(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t n0 = 37, n1 = 11, chunk = 16, n_ctx = 256, nh = hp->n_layer * hp->n_head_kv;
	struct engine *a = tinymodel_engine(m, n_ctx, 1, true),
	              *b = tinymodel_engine(m, n_ctx, 1, true);
	char spec[64];
	snprintf(spec, sizeof spec, "kvzip:chunk=%u", chunk);
	struct kv_cache *kv = mk_cache(a, spec, n_ctx / 2, 64);
	struct err e;
	int32_t ids[64];
	uint32_t vis[256];
	for (uint32_t i = 0; i < n_ctx; i++)
		vis[i] = i;
	rnd_tokens(ids, n0 + n1, hp->n_vocab);
	T_EQ_INT(kv_cache_feed(kv, ids, n0, &e), KVS_OK);
	T_CHECK(kv->n_zip_ids > 0, "no re-read prompt");
	for (uint32_t i = 0; i < n0; i++)
		T_CHECK(isinf(kv->toks[i].score), "token %u scored before the re-read", i);
	T_EQ_INT(kv_zip_score(kv, 2 * n0, &e), KVS_OK); /* half or fewer unscored: none */
	T_EQ_INT(kv->n_zip_reads, 0);
	T_EQ_INT(kv_zip_score(kv, 0, &e), KVS_OK);
	T_EQ_INT(kv->n_zip_reads, 1);
	float *want = xcalloc((size_t)(n0 + n1) * nh, sizeof *want); /* (n, n_layer, n_head_kv) */
	struct fw f = { .eng = b, .vis = vis, .nv = n0, .logits = ENGINE_LOGITS_NONE };
	(void)run(&f, ids, 0, n0);
	ref_reread(m, b, kv, ids, n0, n0, chunk, want);
	double d = tinymodel_max_diff(want, kv->acc, (size_t)n0 * nh);
	T_CHECK(d <= 1e-5, "KVzip scores off by %g from the one-query re-read", d);
	/* more tokens: only they are re-read, and every entry keeps its max */
	T_EQ_INT(kv_cache_feed(kv, ids + n0, n1, &e), KVS_OK);
	T_EQ_INT(kv_zip_score(kv, 0, &e), KVS_OK);
	T_EQ_INT(kv->n_zip_reads, 2);
	T_EQ_INT(kv->n_zip_tokens, (uint64_t)(n0 + 3 * kv->n_zip_ids) + n1 + kv->n_zip_ids);
	f.nv = n0 + n1;
	(void)run(&f, ids + n0, n0, n1);
	ref_reread(m, b, kv, ids + n0, n1, n0 + n1, chunk, want);
	d = tinymodel_max_diff(want, kv->acc, (size_t)(n0 + n1) * nh);
	T_CHECK(d <= 1e-5, "KVzip scores after the second re-read off by %g", d);
	for (uint32_t j = 0; j < n0 + n1; j++) {
		float mx = 0;
		for (uint32_t r = 0; r < nh; r++)
			mx = fmaxf(mx, want[(size_t)j * nh + r]);
		T_NEAR(kv->toks[j].score, mx, 1e-5);
	}
	/* the cache is as it was: every slot past the cache empty */
	T_EQ_INT(kv_cache_check(kv, &e), KVS_OK);
	for (uint32_t s = n0 + n1; s < n_ctx; s++)
		T_EQ_INT(engine_kv_pos(a, s), -1);
	free(want);
	kv_cache_free(kv);
	engine_free(a);
	engine_free(b);
}

/* carry: the second vote's (snapkv) or re-read's (kvzip) scores are the
 * first's times carry plus the second's own, the latter taken from
 * independent caches fed alike: snapkv with carry 0 keeps the second vote
 * alone; kvzip with carry 1 holds the sum, so the second re-read is the
 * difference, and carry 0 keeps the max of both (1e-5, entry by entry). */
static void test_carry(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t n0 = 30, n1 = 9, n_ctx = 256, nh = hp->n_layer * hp->n_head_kv;
	static const char *const specs[2][3] = {
		{ "snapkv:heads=1", "snapkv:heads=1,carry=1", "snapkv:heads=1,carry=0.5" },
		{ "kvzip:chunk=16", "kvzip:chunk=16,carry=1", "kvzip:chunk=16,carry=0.5" },
	};
	int32_t ids[64];
	uint64_t keep_rng = rng; /* the other tests' dialogues stay as they were */
	rnd_tokens(ids, n0 + n1 + 8, hp->n_vocab);
	rng = keep_rng;
	size_t na = (size_t)(n0 + n1) * nh;
	for (int z = 0; z < 2; z++) {
		float *acc1[3], *acc2[3]; /* (n0 + n1, n_layer, n_head_kv) after each pass */
		struct err e;
		for (int k = 0; k < 3; k++) {
			struct engine *eng = tinymodel_engine(m, n_ctx, 1, true);
			struct kv_cache *kv = mk_cache(eng, specs[z][k], n_ctx / 2, 64);
			acc1[k] = xcalloc(na, sizeof(float));
			acc2[k] = xcalloc(na, sizeof(float));
			for (int pass = 0; pass < 2; pass++) {
				uint32_t n = pass ? n0 + n1 : n0;
				T_EQ_INT(kv_cache_feed(kv, ids + (pass ? n0 : 0), pass ? n1 : n0, &e), KVS_OK);
				int rc = z == 0 ? kv_vote(kv, ids + n0 + n1, 8, &e) : kv_zip_score(kv, 0, &e);
				T_CHECK(rc == KVS_OK, "%s: %s", specs[z][k], e.msg);
				memcpy(pass ? acc2[k] : acc1[k], kv->acc, (size_t)n * nh * sizeof(float));
			}
			kv_cache_free(kv);
			engine_free(eng);
		}
		double d1 = 0, d2 = 0, d3 = 0, some = 0;
		for (size_t i = 0; i < na; i++) {
			/* the second pass's own scores */
			float own = z == 0 ? acc2[0][i] : acc2[1][i] - acc1[1][i];
			d1 = fmax(d1, fabs(acc2[1][i] - (acc1[1][i] + own)));
			d2 = fmax(d2, fabs(acc2[2][i] - (0.5f * acc1[2][i] + own)));
			if (z == 1)
				d3 = fmax(d3, fabs(acc2[0][i] - fmaxf(acc1[0][i], own)));
			some += fabs(acc1[2][i]) * (i < (size_t)n0 * nh);
		}
		T_CHECK(some > 0, "%s: the first pass scored nothing", specs[z][2]);
		T_CHECK(d1 <= 1e-5 && d2 <= 1e-5 && d3 <= 1e-5,
		        "%s: carry 1 off by %g, carry 0.5 by %g, the max rule by %g", specs[z][0], d1, d2,
		        d3);
		for (int k = 0; k < 3; k++) {
			free(acc1[k]);
			free(acc2[k]);
		}
	}
	/* with carry, every turn's prompt votes, evicting or not; without,
	 * a turn that fits leaves the first turn's tokens unvoted (+inf) */
	for (int k = 0; k < 2; k++) {
		struct err e;
		struct engine *eng = tinymodel_engine(m, n_ctx, 1, true);
		struct kv_cache *kv = mk_cache(eng, k ? "snapkv:carry=1" : "snapkv", n_ctx / 2, 64);
		T_EQ_INT(kv_cache_begin_turn(kv, KV_ROLE_USER, n0, &e), KVS_OK);
		T_EQ_INT(kv_cache_feed(kv, ids, n0, &e), KVS_OK);
		T_EQ_INT(kv_cache_begin_turn(kv, KV_ROLE_USER, n1, &e), KVS_OK);
		T_EQ_INT(kv_cache_feed(kv, ids + n0, n1, &e), KVS_OK);
		uint32_t voted = 0;
		for (uint32_t i = 0; i < n0; i++)
			voted += !isinf(kv->toks[i].score);
		T_EQ_INT(kv->n_evictions, 0);
		T_EQ_INT(voted, k ? n0 : 0);
		kv_cache_free(kv);
		engine_free(eng);
	}
}

/* snapkv:rank=max scores a token by the most votes one (layer, KV head)
 * gave it: the same votes as rank=sum (bit for bit), each score the max of
 * its row (the sum's the sum), and the two rank the tokens differently. */
static void test_rank(const struct model *m)
{
	const struct hparams *hp = &m->hp;
	uint32_t n0 = 30, n_ctx = 128, nh = hp->n_layer * hp->n_head_kv;
	int32_t ids[40];
	uint64_t keep_rng = rng;
	rnd_tokens(ids, n0 + 8, hp->n_vocab);
	rng = keep_rng;
	struct kv_cache *kv[2];
	struct engine *eng[2];
	struct err e;
	for (int k = 0; k < 2; k++) {
		eng[k] = tinymodel_engine(m, n_ctx, 1, true);
		kv[k] = mk_cache(eng[k], k ? "snapkv:rank=max" : "snapkv", n_ctx / 2, 64);
		T_EQ_INT(kv_cache_feed(kv[k], ids, n0, &e), KVS_OK);
		T_EQ_INT(kv_vote(kv[k], ids + n0, 8, &e), KVS_OK);
	}
	T_CHECK(memcmp(kv[0]->acc, kv[1]->acc, (size_t)n0 * nh * sizeof(float)) == 0,
	        "rank=max changed the votes");
	double dsum = 0, dmax = 0;
	uint32_t order_differs = 0;
	for (uint32_t i = 0; i < n0; i++) {
		const float *r = kv[1]->acc + (size_t)i * nh;
		double sum = 0, best = -INFINITY;
		for (uint32_t j = 0; j < nh; j++) {
			sum += r[j];
			best = fmax(best, r[j]);
		}
		dsum = fmax(dsum, fabs(kv[0]->toks[i].score - sum));
		dmax = fmax(dmax, fabs(kv[1]->toks[i].score - best));
		for (uint32_t j = 0; j < i; j++)
			order_differs += (kv[0]->toks[i].score > kv[0]->toks[j].score) !=
			        (kv[1]->toks[i].score > kv[1]->toks[j].score);
	}
	T_CHECK(dsum <= 1e-4 && dmax == 0, "rank=sum off by %g, rank=max by %g", dsum, dmax);
	T_CHECK(order_differs > 0, "rank=max ranks the %u tokens as rank=sum does", n0);
	for (int k = 0; k < 2; k++) {
		kv_cache_free(kv[k]);
		engine_free(eng[k]);
	}
}

/* One line naming what is wrong: a backend without per-head keep-sets is
 * not at hand here, so check the parameters and the help. */
static void test_parse(void)
{
	struct kv_policy p;
	struct err e;
	char buf[256];
	T_EQ_INT(kv_policy_parse("kvzip", &p, &e), KVS_OK);
	T_CHECK(!kv_policy_per_head(&p), "kvzip keeps one set by default (the max over heads)");
	T_EQ_INT(kv_policy_parse("kvzip:heads=1", &p, &e), KVS_OK);
	T_CHECK(kv_policy_per_head(&p), "kvzip:heads=1 keeps per-head sets");
	T_EQ_INT(kv_policy_parse("kvzip", &p, &e), KVS_OK);
	T_EQ_INT(kv_policy_reread(&p), 512);
	T_EQ_STR(kv_policy_format(&p, buf, sizeof buf), "kvzip sinks=4 chunk=512 pos=original");
	T_EQ_INT(kv_policy_parse("h2o:heads=1,spread=3", &p, &e), KVS_OK);
	T_EQ_STR(kv_policy_format(&p, buf, sizeof buf), "h2o heavy=0.5 pos=original heads=1 spread=3");
	T_EQ_INT(kv_policy_parse("h2o", &p, &e), KVS_OK);
	T_EQ_STR(kv_policy_format(&p, buf, sizeof buf), "h2o heavy=0.5 pos=original");
	T_EQ_INT(kv_policy_parse("snapkv:heads=1", &p, &e), KVS_OK);
	T_CHECK(kv_policy_per_head(&p), "snapkv:heads=1");
	T_EQ_INT(kv_policy_scratch(&p, 100), 32); /* spread 1: the window alone */
	T_EQ_INT(kv_policy_parse("snapkv:heads=1,spread=2", &p, &e), KVS_OK);
	T_EQ_INT(kv_policy_scratch(&p, 100), 32 + 100);
	T_EQ_INT(kv_policy_parse("snapkv", &p, &e), KVS_OK);
	T_CHECK(!kv_policy_per_head(&p), "snapkv's default is one keep-set");
	T_EQ_INT(kv_policy_scratch(&p, 100), 32);
	T_EQ_INT(kv_policy_parse("h2o:heads=2", &p, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "heads") && strstr(e.msg, "0..1"), "%s", e.msg);
	T_EQ_INT(kv_policy_parse("kvzip:chunk=4", &p, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "chunk") && strstr(e.msg, "16.."), "%s", e.msg);
}

int main(void)
{
	struct tinymodel_spec s;
	struct model *m;
	uint8_t *buf;
	tinymodel_defaults(&s, "llama");
	s.n_embd = 64; /* head_dim 16: the CPU backend's attention wants multiples of 16 */
	s.n_ff = 128;
	s.scale = 0.5f;
	tinymodel_load(&s, &m, &buf);
	test_parse();
	test_engine(m);
	test_keep_all(m, "snapkv:heads=1");
	test_keep_all(m, "h2o:heads=1");
	test_keep_all(m, "kvzip:heads=1");
	test_keep_all(m, "kvzip:heads=0,span=off");
	test_zip_scores(m);
	test_carry(m);
	test_reference(m, "snapkv:heads=1");
	test_reference(m, "snapkv:heads=1,spread=2");
	test_reference(m, "h2o:heads=1,spread=2");
	test_reference(m, "kvzip:heads=1");
	test_reference(m, "kvzip:heads=1,spread=2,span=off");
	test_budget(m, "snapkv:heads=1", 300);
	test_budget(m, "h2o:heads=1", 300);
	test_budget(m, "h2o:heads=1,span=off,pos=compact", 300);
	test_budget(m, "kvzip:heads=1", 300);
	test_budget(m, "kvzip:heads=1,span=number,chunk=16", 300);
	test_budget(m, "snapkv:heads=1,spread=2", 300);
	test_budget(m, "h2o:heads=1,spread=2", 300);
	test_budget(m, "kvzip:heads=1,spread=3", 200);
	/* last: the random dialogues above stay as they were */
	test_keep_all(m, "kvzip:heads=1,reread=all");
	test_reference(m, "kvzip:heads=1,reread=all");
	test_budget(m, "kvzip:heads=1,reread=all", 300);
	test_budget(m, "kvzip:heads=1,reread=all,chunk=16,spread=2", 200);
	/* adaptive head budgets (test-kv-alloc.c checks their bytes) */
	test_keep_all(m, "snapkv:heads=1,alloc=adaptive,spread=2");
	test_keep_all(m, "kvzip:heads=1,alloc=adaptive,spread=3");
	test_reference(m, "snapkv:heads=1,alloc=adaptive,spread=3,span=off");
	test_reference(m, "kvzip:heads=1,alloc=adaptive,spread=2,span=off");
	test_rank(m);
	model_free(m);
	free(buf);
	return t_done("test-kv-heads");
}
