/*
 * test-kv-span.c: span-coherent retention (kv_span.c and the span-aware
 * selection helpers of kv_policy.c).
 *
 *   - spans read from token classes match spans worked out by hand: words
 *     end at whitespace and control tokens, a gap in the stream or a pinned
 *     token between two tokens ends a span, a run is cut every
 *     KV_SPAN_MAX_TOKENS, number mode keeps only the words with a digit;
 *   - a span of " TIGER-42" is kept or dropped whole by every policy, and
 *     by every head of a per-head policy (each scoring by its own row);
 *   - over many random token streams, budgets, scores and every policy, a
 *     selection with spans never splits a span (checked with a rule written
 *     here, not with kv_span_split alone), never keeps more than its target
 *     and falls short of it by less than one span; with span=off (or no
 *     spans) it keeps exactly what the token-granular rule keeps;
 *   - the span options parse, format (only when not the default) and show
 *     up in the parameter list of an error.
 */
#include "kv/kv-int.h"
#include "tests/unit/test.h"

#include <math.h>
#include <stdint.h>

/* Fake token ids and their classes: id = index into tk_cls. */
enum {
	TK_CTRL = 0, /* <|im_start|> */
	TK_THE,      /* "The" */
	TK_SECRET,   /* " secret" */
	TK_IS,       /* " is" */
	TK_TIG,      /* " TIG" */
	TK_ER,       /* "ER" */
	TK_DASH,     /* "-" */
	TK_42,       /* "42" */
	TK_DOT,      /* "." */
	TK_NL,       /* "\n" */
	TK_X,        /* "x": a letter inside a word */
	TK_N_,
};
static const uint8_t tk_cls[TK_N_] = {
	[TK_CTRL] = KV_CLS_SPECIAL,
	[TK_THE] = 0,
	[TK_SECRET] = KV_CLS_LEAD_WS,
	[TK_IS] = KV_CLS_LEAD_WS,
	[TK_TIG] = KV_CLS_LEAD_WS,
	[TK_ER] = 0,
	[TK_DASH] = 0,
	[TK_42] = KV_CLS_DIGIT,
	[TK_DOT] = 0,
	[TK_NL] = KV_CLS_LEAD_WS | KV_CLS_TRAIL_WS,
	[TK_X] = 0,
};

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint32_t rnd_u32(uint32_t n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)((rng >> 11) % n);
}

/* toks[i] = ids[i] at orig_pos pos[i] (NULL: i); cand = 0..n-1. */
static void mk_toks(struct kv_tok *toks, uint32_t *cand, const int32_t *ids, const int32_t *pos,
                    uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		memset(&toks[i], 0, sizeof toks[i]);
		toks[i].token = ids[i];
		toks[i].orig_pos = pos ? pos[i] : (int32_t)i;
		cand[i] = i;
	}
}

/* The spans as a string of span starts: 'b' where a span begins, '.' inside. */
static const char *span_str(const uint32_t *sbeg, const uint32_t *send, uint32_t n, char *buf)
{
	for (uint32_t i = 0; i < n; i++) {
		buf[i] = sbeg[i] == i ? 'b' : '.';
		T_CHECK(sbeg[i] <= i && send[i] > i && send[i] <= n, "span of %u: [%u, %u)", i, sbeg[i],
		        send[i]);
		T_CHECK(send[i] == send[sbeg[i]], "span end of %u: %u, of its start %u", i, send[i],
		        send[sbeg[i]]);
	}
	buf[n] = '\0';
	return buf;
}

static void test_find(void)
{
	/* <ctrl> The secret is TIGER-42.\n<ctrl> */
	int32_t ids[] = { TK_CTRL, TK_THE, TK_SECRET, TK_IS, TK_TIG, TK_ER,
		              TK_DASH, TK_42,  TK_DOT,    TK_NL, TK_CTRL };
	uint32_t n = KVS_ARRAY_LEN(ids), cand[64], sbeg[64], send[64];
	struct kv_tok toks[64];
	char buf[80];
	mk_toks(toks, cand, ids, NULL, n);
	kv_span_find(tk_cls, TK_N_, toks, cand, n, KV_SPAN_WORD, sbeg, send);
	T_EQ_STR(span_str(sbeg, send, n, buf), "bbbbb....bb");
	T_EQ_INT(send[4], 9); /* " TIG" "ER" "-" "42" "." */
	kv_span_find(tk_cls, TK_N_, toks, cand, n, KV_SPAN_NUMBER, sbeg, send);
	T_EQ_STR(span_str(sbeg, send, n, buf), "bbbbb....bb");
	kv_span_find(tk_cls, TK_N_, toks, cand, n, KV_SPAN_OFF, sbeg, send);
	T_EQ_STR(span_str(sbeg, send, n, buf), "bbbbbbbbbbb");
	/* number mode: "The" + "x" "x" (no digit) are single tokens */
	int32_t ids2[] = { TK_THE, TK_X, TK_X, TK_SECRET, TK_X, TK_42 };
	mk_toks(toks, cand, ids2, NULL, 6);
	kv_span_find(tk_cls, TK_N_, toks, cand, 6, KV_SPAN_WORD, sbeg, send);
	T_EQ_STR(span_str(sbeg, send, 6, buf), "b..b..");
	kv_span_find(tk_cls, TK_N_, toks, cand, 6, KV_SPAN_NUMBER, sbeg, send);
	T_EQ_STR(span_str(sbeg, send, 6, buf), "bbbb..");
	/* a gap in the stream (" TIG" at 4, "ER" at 6: 5 was evicted) ends it */
	int32_t ids3[] = { TK_TIG, TK_ER, TK_DASH, TK_42 };
	int32_t pos3[] = { 4, 6, 7, 8 };
	mk_toks(toks, cand, ids3, pos3, 4);
	kv_span_find(tk_cls, TK_N_, toks, cand, 4, KV_SPAN_WORD, sbeg, send);
	T_EQ_STR(span_str(sbeg, send, 4, buf), "bb..");
	/* a pinned token between (not a candidate: cache index 1 missing) */
	mk_toks(toks, cand, ids3, NULL, 4);
	uint32_t cand4[3] = { 0, 2, 3 };
	kv_span_find(tk_cls, TK_N_, toks, cand4, 3, KV_SPAN_WORD, sbeg, send);
	T_EQ_STR(span_str(sbeg, send, 3, buf), "bb.");
	/* a run without spaces is cut every KV_SPAN_MAX_TOKENS */
	int32_t ids5[40];
	for (uint32_t i = 0; i < 40; i++)
		ids5[i] = TK_X;
	mk_toks(toks, cand, ids5, NULL, 40);
	kv_span_find(tk_cls, TK_N_, toks, cand, 40, KV_SPAN_WORD, sbeg, send);
	T_EQ_INT(sbeg[15], 0);
	T_EQ_INT(sbeg[16], 16);
	T_EQ_INT(send[16], 32);
	T_EQ_INT(send[39], 40);
	/* an id outside the table is special */
	int32_t ids6[] = { TK_X, 999, TK_X };
	mk_toks(toks, cand, ids6, NULL, 3);
	kv_span_find(tk_cls, TK_N_, toks, cand, 3, KV_SPAN_WORD, sbeg, send);
	T_EQ_STR(span_str(sbeg, send, 3, buf), "bbb");
}

struct sel {
	struct kv_tok toks[256];
	uint32_t cand[256], order[256], sbeg[256], send[256];
	uint8_t keep[256];
	float sc[256], acc[256 * 4];
};

/* The per-head row run_sel selects for (1 + row of acc; 0: one keep-set). */
static uint32_t sel_head1;

/* Run spec's selection over toks (n) with scores and accumulators set,
 * spans as mode gives them (with_spans false: sbeg/send NULL). */
static void run_sel(struct sel *x, const struct kv_policy *p, uint32_t n, uint32_t m,
                    uint32_t budget, enum kv_span_mode mode, bool with_spans)
{
	kv_span_find(tk_cls, TK_N_, x->toks, x->cand, n, mode, x->sbeg, x->send);
	memset(x->keep, 0, n);
	struct kv_select s = { .toks = x->toks,
		                   .cand = x->cand,
		                   .n = n,
		                   .acc = x->acc,
		                   .acc_stride = 4,
		                   .m = m,
		                   .budget = budget,
		                   .target = budget - m,
		                   .p = p->p,
		                   .keep = x->keep,
		                   .score = x->sc,
		                   .order = x->order,
		                   .sbeg = with_spans ? x->sbeg : NULL,
		                   .send = with_spans ? x->send : NULL,
		                   .span_mean = p->common[KV_COMMON_SPAN_SCORE] >= 0.5f,
		                   .head1 = sel_head1 };
	p->def->select(&s);
	T_EQ_INT(kv_span_split(&s), -1);
}

/* Whether tokens a and b (cache indices a + 1 == b) belong to one word by
 * the rule of this test: the same orig_pos run, no whitespace or control
 * between them (the length cap aside). */
static bool same_word(const struct kv_tok *a, const struct kv_tok *b)
{
	uint8_t ca = tk_cls[a->token], cb = tk_cls[b->token];
	return b->orig_pos == a->orig_pos + 1 && !(ca & (KV_CLS_SPECIAL | KV_CLS_TRAIL_WS)) &&
	        !(cb & (KV_CLS_SPECIAL | KV_CLS_LEAD_WS));
}

static void test_random(void)
{
	static struct sel x, y;
	static const char *const specs[] = {
		"window", "streaming",     "sirllm", "sirllm:sinks=2,recent=8", "lminfinite:global=4",
		"h2o",    "h2o:heavy=0.2", "full",
	};
	uint32_t splits_seen = 0, rounds = 0;
	for (uint32_t round = 0; round < 3000; round++) {
		const char *spec = specs[rnd_u32(KVS_ARRAY_LEN(specs))];
		struct kv_policy p;
		struct err e;
		T_CHECK(kv_policy_parse(spec, &p, &e) == KVS_OK, "%s", e.msg);
		if (rnd_u32(2))
			kv_policy_set(&p, "span_score", "mean", NULL);
		uint32_t n = 20 + rnd_u32(200), budget = 8 + rnd_u32(n - 8), m = rnd_u32(budget / 2 + 1);
		if (n <= budget - m)
			continue;
		int32_t pos = 0;
		for (uint32_t i = 0; i < n; i++) {
			memset(&x.toks[i], 0, sizeof x.toks[i]);
			/* words of 1-6 letters, some with digits, some control tokens,
			 * now and then a gap in the stream */
			uint32_t r = rnd_u32(100);
			x.toks[i].token = r < 5 ? TK_CTRL
			        : r < 25        ? TK_SECRET
			        : r < 30        ? TK_NL
			        : r < 40        ? TK_42
			        : r < 48        ? TK_DASH
			                        : TK_X;
			pos += rnd_u32(20) == 0 ? 2 : 1;
			x.toks[i].orig_pos = pos;
			x.toks[i].score = (float)rnd_u32(50);
			x.cand[i] = i;
			x.sc[i] = 0;
		}
		for (uint32_t i = 0; i < n * 4; i++)
			x.acc[i] = (float)rnd_u32(1000) / 100.0f;
		enum kv_span_mode mode = rnd_u32(2) ? KV_SPAN_WORD : KV_SPAN_NUMBER;
		run_sel(&x, &p, n, m, budget, mode, true);
		uint32_t kept = 0, maxspan = 0;
		for (uint32_t i = 0; i < n; i++) {
			kept += (x.keep[i] & KV_KEEP) != 0;
			maxspan = KVS_MAX(maxspan, x.send[i] - x.sbeg[i]);
		}
		T_CHECK(kept <= budget - m, "%s: %u kept, target %u", spec, kept, budget - m);
		T_CHECK(kept + maxspan > budget - m, "%s: %u kept, target %u, spans up to %u", spec, kept,
		        budget - m, maxspan);
		/* independent witness: in word mode two neighbours of one word are
		 * kept or dropped together unless the cap cut them */
		for (uint32_t i = 1; i < n && mode == KV_SPAN_WORD; i++)
			if (same_word(&x.toks[i - 1], &x.toks[i]) && x.sbeg[i] != i &&
			    ((x.keep[i] ^ x.keep[i - 1]) & KV_KEEP))
				T_CHECK(0, "%s: tokens %u and %u of one word split", spec, i - 1, i);
		/* spans off and no spans at all keep the same, token by token */
		memcpy(&y, &x, sizeof x);
		run_sel(&x, &p, n, m, budget, KV_SPAN_OFF, true);
		run_sel(&y, &p, n, m, budget, KV_SPAN_OFF, false);
		T_CHECK(memcmp(x.keep, y.keep, n) == 0, "%s: span=off differs from token selection", spec);
		uint32_t kept_off = 0;
		for (uint32_t i = 0; i < n; i++)
			kept_off += (x.keep[i] & KV_KEEP) != 0;
		T_EQ_INT(kept_off, budget - m);
		/* and the token rule does split words now and then (the test can fail) */
		for (uint32_t i = 1; i < n; i++)
			if (same_word(&x.toks[i - 1], &x.toks[i]) && ((x.keep[i] ^ x.keep[i - 1]) & KV_KEEP)) {
				splits_seen++;
				break;
			}
		rounds++;
	}
	T_CHECK(rounds > 2000, "only %u rounds ran", rounds);
	T_CHECK(splits_seen > rounds / 4, "token selections split words in %u of %u rounds only",
	        splits_seen, rounds);
}

/* " TIGER-42" among short words: every policy keeps it whole or drops it
 * whole at every budget. */
static void test_tiger(void)
{
	static struct sel x;
	int32_t words[] = { TK_CTRL, TK_THE, TK_SECRET, TK_IS, TK_TIG, TK_ER, TK_DASH, TK_42, TK_DOT };
	uint32_t n = 0;
	for (uint32_t rep = 0; rep < 12; rep++)
		for (uint32_t k = 0; k < KVS_ARRAY_LEN(words); k++, n++) {
			memset(&x.toks[n], 0, sizeof x.toks[n]);
			x.toks[n].token = words[k];
			x.toks[n].orig_pos = (int32_t)n;
			/* "ER" scores low: the token rule drops it first */
			x.toks[n].score = words[k] == TK_ER ? 0.1f : (float)(1 + (n * 7) % 13);
			x.cand[n] = n;
		}
	for (uint32_t i = 0; i < n * 4; i++)
		x.acc[i] = x.toks[i / 4].score;
	for (size_t pi = 0; pi < kv_policy_count(); pi++)
		for (uint32_t budget = 8; budget < n; budget += 3) {
			struct kv_policy p;
			T_CHECK(kv_policy_parse(kv_policy_name_at(pi), &p, NULL) == KVS_OK, "parse");
			run_sel(&x, &p, n, 1, budget, KV_SPAN_WORD, true);
			for (uint32_t i = 0; i + 4 < n; i++)
				if (x.toks[i].token == TK_TIG)
					for (uint32_t j = i + 1; j <= i + 4; j++)
						T_CHECK(!((x.keep[i] ^ x.keep[j]) & KV_KEEP),
						        "%s budget %u: TIGER-42 at %u split at %u", kv_policy_name_at(pi),
						        budget, i, j);
		}
	/* per head (heads=1): each of the 4 rows of acc its own scores, "ER"
	 * the lowest in the odd rows only; every head keeps the span whole, and
	 * with span=off some head splits it (so the check can fail) */
	static const char *const per_head[] = { "snapkv:heads=1", "h2o:heads=1", "kvzip:heads=1" };
	for (uint32_t i = 0; i < n * 4; i++)
		x.acc[i] = x.toks[i / 4].token == TK_ER && (i % 4) % 2 ? 0.01f
		                                                       : 1 + (float)rnd_u32(100) / 10.0f;
	uint32_t off_splits = 0;
	for (size_t pi = 0; pi < KVS_ARRAY_LEN(per_head); pi++)
		for (uint32_t budget = 8; budget < n; budget += 5)
			for (sel_head1 = 1; sel_head1 <= 4; sel_head1++) {
				struct kv_policy p;
				T_CHECK(kv_policy_parse(per_head[pi], &p, NULL) == KVS_OK, "parse");
				for (int off = 0; off < 2; off++) {
					run_sel(&x, &p, n, 1, budget, off ? KV_SPAN_OFF : KV_SPAN_WORD, true);
					for (uint32_t i = 0; i + 4 < n; i++)
						if (x.toks[i].token == TK_TIG)
							for (uint32_t j = i + 1; j <= i + 4; j++) {
								bool split = ((x.keep[i] ^ x.keep[j]) & KV_KEEP) != 0;
								off_splits += off && split;
								T_CHECK(off || !split,
								        "%s budget %u head %u: TIGER-42 at %u split at %u",
								        per_head[pi], budget, sel_head1 - 1, i, j);
							}
				}
			}
	sel_head1 = 0;
	T_CHECK(off_splits > 0, "per-head selections with span=off never split TIGER-42");
}

static void test_options(void)
{
	struct kv_policy p;
	struct err e;
	char buf[256];
	T_EQ_INT(kv_policy_parse("sirllm", &p, &e), KVS_OK);
	T_NEAR(kv_policy_get(&p, "span"), KV_SPAN_WORD, 0);
	T_EQ_STR(kv_policy_format(&p, buf, sizeof buf), "sirllm mode=paper sinks=4 recent=0 lambda=1");
	T_EQ_INT(kv_policy_parse("sirllm:span=off,span_score=mean,sinks=2", &p, &e), KVS_OK);
	T_EQ_STR(kv_policy_format(&p, buf, sizeof buf),
	         "sirllm mode=paper sinks=2 recent=0 lambda=1 span=off span_score=mean");
	struct kv_policy q;
	T_EQ_INT(kv_policy_parse(buf, &q, &e), KVS_OK);
	T_CHECK(memcmp(&p, &q, sizeof p) == 0, "format does not round-trip");
	T_EQ_INT(kv_policy_parse("full span=number", &p, &e), KVS_OK);
	T_NEAR(kv_policy_get(&p, "span"), KV_SPAN_NUMBER, 0);
	T_EQ_INT(kv_policy_parse("window:span=all", &p, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "word or number or off"), "%s", e.msg);
	T_EQ_INT(kv_policy_parse("window:sinks=2", &p, &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "span, span_score"), "%s", e.msg);
}

int main(void)
{
	test_find();
	test_options();
	test_tiger();
	test_random();
	return t_done("test-kv-span");
}
