/*
 * test-lenctl.c: the length controller (app/lenctl.c).
 *
 * The word counter against Ruler's rule (\w+ matches, Python's re) on
 * hand-counted tricky text, fed whole and split at every byte; the windows
 * of every level against methods.md 9.2 typed in here; the sentence-end
 * test; the controller driven by scripted logits over a made-up vocabulary
 * (no model) through every stop reason; and, on a tiny random model, that a
 * reply with no target is token for token the plain sampling loop
 * reimplemented here (greedy and seeded).
 */
#include "app/app-int.h"
#include "tests/util/tinymodel.h"

#include "test.h"

#include <errno.h>
#include <unistd.h>

/* ---- the word counter ---- */

struct wc_case {
	const char *text;
	uint32_t words; /* counted by hand with Python's re.findall(r"\w+", text) */
};

static const struct wc_case wc_cases[] = {
	{ "", 0 },
	{ "Hello, world!", 2 },
	{ "don't", 2 },           /* the apostrophe splits */
	{ "it\xE2\x80\x99s", 2 }, /* so does U+2019 */
	{ "3.5", 2 },
	{ "$3,000.50 each", 4 },
	{ "well-known e-mail", 4 },
	{ "snake_case_name", 1 },     /* '_' is a word character */
	{ "... !!! ??? --- ***", 0 }, /* punctuation runs */
	{ "end.Next", 2 },
	{ "caf\xC3\xA9 na\xC3\xAFve r\xC3\xA9sum\xC3\xA9", 3 }, /* precomposed letters */
	{ "cafe\xCC\x81", 1 },                                  /* e + U+0301: the mark is not \w */
	{ "cafe\xCC\x81"
	  "s",
	  2 }, /* ... so it splits the word */
	{ "\xE6\x9D\xB1\xE4\xBA\xAC\xE3\x82\xBF\xE3\x83\xAF\xE3\x83\xBC", 1 }, /* one CJK run */
	{ "\xE6\x97\xA5\xE6\x9C\xAC \xE3\x83\x86\xE3\x82\xB9\xE3\x83\x88", 2 },
	{ "x\xC2\xB2 + \xC2\xBD", 2 }, /* superscript two, one half: \p{N} */
	{ "\xF0\x9F\x98\x80"
	  " smile \xE2\x80\x94 ok",
	  2 }, /* emoji and em dash are not */
	{ "\xCE\xA9mega \xD0\xBF\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82", 2 },
	{ "line one\n\n\tline two\r\n", 4 },
	{ "100% of 7am", 3 },
	{ "a.b.c", 3 },
	{ "\xC2\xB7middle\xC2\xB7"
	  "dot",
	  2 },                     /* U+00B7 is punctuation */
	{ "\xC2\xAA\xC2\xB5", 1 }, /* feminine ordinal, micro sign: letters */
};

static void test_wordcount(void)
{
	for (size_t i = 0; i < sizeof wc_cases / sizeof wc_cases[0]; i++) {
		const char *s = wc_cases[i].text;
		size_t n = strlen(s);
		T_CHECK(wordcount_text(s, n) == wc_cases[i].words, "\"%s\": %u words, expected %u", s,
		        wordcount_text(s, n), wc_cases[i].words);
		/* split at every byte, even inside a UTF-8 sequence */
		for (size_t cut = 0; cut <= n; cut++) {
			struct wordcount w;
			wordcount_init(&w);
			wordcount_feed(&w, s, cut);
			wordcount_feed(&w, s + cut, n - cut);
			T_CHECK(w.words == wc_cases[i].words, "\"%s\" cut at %zu: %u words", s, cut, w.words);
		}
		struct wordcount w;
		wordcount_init(&w);
		for (size_t k = 0; k < n; k++)
			wordcount_feed(&w, s + k, 1);
		T_CHECK(w.words == wc_cases[i].words, "\"%s\" byte by byte: %u words", s, w.words);
	}
	/* a broken byte is a non-word and does not swallow what follows */
	T_EQ_INT(wordcount_text("ab\xFF"
	                        "cd",
	                        5),
	         2);
	T_EQ_INT(wordcount_text("ab\xE2"
	                        "cd",
	                        5),
	         2);
}

/* ---- windows ---- */

static void test_windows(void)
{
	/* methods.md 9.2, typed from the table: target, PM (lo, hi], FM (lo, hi], level */
	static const struct {
		const char *name;
		uint32_t t, plo, phi, flo, fhi;
		int group;
	} want[] = {
		{ "10", 10, 0, 20, 0, 20, 0 },
		{ "30", 30, 20, 40, 20, 40, 0 },
		{ "50", 50, 40, 60, 40, 60, 0 },
		{ "80", 80, 70, 90, 60, 100, 0 },
		{ "150", 150, 130, 170, 100, 200, 1 },
		{ "300", 300, 280, 320, 200, 400, 1 },
		{ "500", 500, 450, 550, 400, 600, 1 },
		{ "700", 700, 630, 770, 600, 800, 2 },
		{ ">800", 800, 800, LEN_OPEN, 800, LEN_OPEN, 2 },
	};
	T_EQ_INT(len_n_levels, 9);
	for (size_t i = 0; i < 9; i++) {
		const struct len_level *lv = len_level_find(want[i].name);
		T_CHECK(lv == &len_levels[i], "level %s", want[i].name);
		if (lv == NULL)
			continue;
		T_EQ_INT(lv->target, want[i].t);
		T_EQ_INT(lv->pm.lo, want[i].plo);
		T_EQ_INT(lv->pm.hi, want[i].phi);
		T_EQ_INT(lv->fm.lo, want[i].flo);
		T_EQ_INT(lv->fm.hi, want[i].fhi);
		T_EQ_INT(lv->group, want[i].group);
		/* left-open, right-closed */
		T_CHECK(!len_window_hit(lv->pm, want[i].plo), "%s: lo is outside", want[i].name);
		T_CHECK(len_window_hit(lv->pm, want[i].plo + 1), "%s: lo+1 is inside", want[i].name);
		if (want[i].phi != LEN_OPEN) {
			T_CHECK(len_window_hit(lv->pm, want[i].phi), "%s: hi is inside", want[i].name);
			T_CHECK(!len_window_hit(lv->pm, want[i].phi + 1), "%s: hi+1 outside", want[i].name);
			T_CHECK(len_window_hit(lv->fm, want[i].fhi), "%s: FM hi", want[i].name);
			T_CHECK(!len_window_hit(lv->fm, want[i].fhi + 1), "%s: FM hi+1", want[i].name);
		} else {
			T_CHECK(len_window_hit(lv->pm, 100000), ">800 has no upper bound");
		}
		T_CHECK(!len_window_hit(lv->pm, 0), "0 words never hit");
		/* a words target of a level takes its PM window */
		struct len_target t;
		struct err e;
		T_EQ_INT(len_target_parse(want[i].name, &t, &e), KVS_OK);
		T_EQ_INT(t.unit, LEN_WORDS);
		T_EQ_INT(t.win.lo, want[i].plo);
		T_EQ_INT(t.win.hi, want[i].phi);
		T_EQ_INT(t.level, (int)i);
	}
	T_CHECK(len_level_find("800+") == &len_levels[8], "800+ is >800");
	T_CHECK(len_level_find("90") == NULL, "90 is no level");

	struct len_target t;
	struct err e;
	T_EQ_INT(len_target_parse("120w", &t, &e), KVS_OK); /* +- max(10, 12) */
	T_EQ_INT(t.unit, LEN_WORDS);
	T_EQ_INT(t.win.lo, 108);
	T_EQ_INT(t.win.hi, 132);
	T_EQ_INT(t.level, -1);
	T_EQ_INT(len_target_parse("25", &t, &e), KVS_OK); /* +- 10 */
	T_EQ_INT(t.win.lo, 15);
	T_EQ_INT(t.win.hi, 35);
	T_EQ_INT(len_target_parse("5", &t, &e), KVS_OK);
	T_EQ_INT(t.win.lo, 0);
	T_EQ_INT(t.win.hi, 15);
	T_EQ_INT(len_target_parse("200t", &t, &e), KVS_OK);
	T_EQ_INT(t.unit, LEN_TOKENS);
	T_EQ_INT(t.win.lo, 180);
	T_EQ_INT(t.win.hi, 220);
	T_EQ_INT(len_target_parse("150t", &t, &e), KVS_OK); /* tokens never take a level */
	T_EQ_INT(t.win.lo, 135);
	T_EQ_INT(t.level, -1);
	T_EQ_INT(len_target_parse("off", &t, &e), KVS_OK);
	T_EQ_INT(t.unit, LEN_NONE);
	static const char *const bad[] = { "",    "0",      "0w", "-5",   "12x", "abc",
		                               "1e3", "100001", "w",  "30 w", ">900" };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		T_CHECK(len_target_parse(bad[i], &t, &e) == KVS_EARG, "'%s' must be refused", bad[i]);
		T_CHECK(strstr(e.msg, "expected") != NULL, "'%s': %s", bad[i], e.msg);
	}

	char *s;
	len_target_words(&t, 150);
	s = len_instruction(&t);
	T_EQ_STR(s, "The response should have a word count of 150 words.");
	free(s);
	s = len_instruct_text("Explain tides.", &t);
	T_EQ_STR(s, "Explain tides.\nThe response should have a word count of 150 words.");
	free(s);
	len_target_parse(">800", &t, &e);
	s = len_instruction(&t);
	T_EQ_STR(s, "The response should have a word count of more than 800 words.");
	free(s);
	t.instruct = false;
	T_CHECK(len_instruction(&t) == NULL, "the sentence can be switched off");
	s = len_instruct_text("Explain tides.", &t);
	T_EQ_STR(s, "Explain tides.");
	free(s);
}

/* ---- sentence ends ---- */

static void test_sentence_end(void)
{
	static const struct {
		const char *s;
		bool end;
	} c[] = {
		{ "Hello.", true },       { "Hello.\n\n", true },
		{ "Really?!", true },     { "He said \"yes.\"", true },
		{ "(see above.)", true }, { "Wait\xE2\x80\xA6", true },
		{ "It costs 3.", true },  { "Done!\xE2\x80\x9D ", true },
		{ "Hello", false },       { "list item\n", false },
		{ "1.", false },          { "Steps:\n2.", false },
		{ "  12. ", false },      { "e.g.", false },
		{ "Ask Mr.", false },     { "", false },
		{ "well,", false },
	};
	for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)
		T_CHECK(text_ends_sentence(c[i].s, strlen(c[i].s)) == c[i].end, "\"%s\": expected %s",
		        c[i].s, c[i].end ? "an end" : "no end");
}

/* ---- the controller on scripted logits ---- */

enum { T_END, T_WORD, T_DOT, T_BLANK, T_TWO, T_S, T_COMMA, T_HELLO, T_NV };
static const char *const t_pieces[T_NV] = {
	"", " word", ".", "\n\n", " big day", "s", ",", " Hello"
};
static const bool t_end[T_NV] = { true, false, false, false, false, false, false, false };

/* A scripted model: logits[step] is a function of the step and the text. */
typedef void (*script_fn)(uint32_t step, const char *text, float *logits);

struct run {
	int stop;
	uint32_t tokens, words;
	char text[16384];  /* all the text the tokens made */
	char shown[16384]; /* what turnctl emitted */
	int32_t ids[1024];
};

/* Drive a turnctl with greedy choice over the (biased) scripted logits. */
static void drive(const struct gen_turn_opts *o, const struct len_vocab *lv, uint32_t max_tokens,
                  script_fn fn, atomic_int *cancel_at, uint32_t cancel_step, struct run *r)
{
	struct turnctl t;
	float lg[T_NV];
	const char *emit;
	size_t n_emit, tl = 0, sl = 0;

	memset(r, 0, sizeof *r);
	turnctl_begin(&t, o, lv, max_tokens);
	t.cancel = cancel_at;
	for (uint32_t step = 0;; step++) {
		if (cancel_at != NULL && step == cancel_step)
			T_CHECK(gen_cancel_ask(cancel_at), "an unsealed flag takes the cancel");
		int why = turnctl_precheck(&t);
		if (why >= 0) {
			r->stop = why;
			break;
		}
		fn(step, r->text, lg);
		if (turnctl_active(&t))
			turnctl_bias(&t, lg);
		int32_t id = 0;
		for (int32_t k = 1; k < T_NV; k++)
			if (lg[k] > lg[id])
				id = k;
		r->ids[r->tokens++] = id;
		const char *p = t_pieces[id];
		memcpy(r->text + tl, p, strlen(p));
		tl += strlen(p);
		r->text[tl] = '\0';
		why = turnctl_token(&t, id, t_end[id], p, strlen(p), &emit, &n_emit);
		if (n_emit > 0)
			memcpy(r->shown + sl, emit, n_emit);
		sl += n_emit;
		r->shown[sl] = '\0';
		if (why >= 0) {
			r->stop = why;
			break;
		}
		if (r->tokens >= 1000)
			break;
	}
	if (r->stop != GEN_STOP_STRING) {
		turnctl_flush(&t, &emit, &n_emit);
		if (n_emit > 0)
			memcpy(r->shown + sl, emit, n_emit);
		r->shown[sl + n_emit] = '\0';
	}
	r->words = t.wc.words;
	turnctl_end(&t);
}

/* " word" x3 then the end token. */
static void script_short(uint32_t step, const char *text, float *lg)
{
	(void)text;
	for (int k = 0; k < T_NV; k++)
		lg[k] = 0;
	lg[step < 3 ? T_WORD : T_END] = 10;
}

/* Wants to end at once; words next, then a period. */
static void script_eager(uint32_t step, const char *text, float *lg)
{
	(void)step;
	(void)text;
	for (int k = 0; k < T_NV; k++)
		lg[k] = 0;
	lg[T_END] = 9;
	lg[T_WORD] = 8;
	lg[T_DOT] = 7;
}

/* Sentences of five words; the end token 5 below the best. */
static void script_sentences(uint32_t step, const char *text, float *lg)
{
	(void)step;
	for (int k = 0; k < T_NV; k++)
		lg[k] = 0;
	size_t n = strlen(text);
	uint32_t w = wordcount_text(text, n);
	bool after_dot = n > 0 && text[n - 1] == '.';
	lg[(w % 5 == 0 && w > 0 && !after_dot) ? T_DOT : T_WORD] = 8;
	lg[T_END] = 3;
	if (lg[T_DOT] == 0)
		lg[T_DOT] = 1;
}

/* Never wants to stop: words, with a period far down. */
static void script_rambling(uint32_t step, const char *text, float *lg)
{
	(void)step;
	(void)text;
	for (int k = 0; k < T_NV; k++)
		lg[k] = 0;
	lg[T_WORD] = 8;
	lg[T_DOT] = 1;
	lg[T_END] = -20;
}

/* Words, then word continuations forever; no punctuation at all. */
static void script_stubborn(uint32_t step, const char *text, float *lg)
{
	(void)step;
	(void)text;
	for (int k = 0; k < T_NV; k++)
		lg[k] = -100;
	lg[T_WORD] = 8;
	lg[T_S] = 7;
	lg[T_END] = -50;
}

/* Blank lines first, then words; the end token on top. */
static void script_blank(uint32_t step, const char *text, float *lg)
{
	(void)step;
	(void)text;
	for (int k = 0; k < T_NV; k++)
		lg[k] = 0;
	lg[T_END] = 9;
	lg[T_BLANK] = 8;
	lg[T_WORD] = 7;
}

/* The tokens in a pseudo-random order that changes each step. */
static void script_varied(uint32_t step, const char *text, float *lg)
{
	(void)text;
	for (int k = 0; k < T_NV; k++)
		lg[k] = (float)(((step + 1u) * 2654435761u ^ (uint32_t)k * 40503u) % 1000u) / 1000.0f;
	lg[T_END] = -20;
}

/* When the guard would leave nothing, it gives way (a token is written). */
static void script_rambling(uint32_t step, const char *text, float *lg);

/* " Hello word." then words. */
static void script_hello(uint32_t step, const char *text, float *lg)
{
	(void)text;
	static const int seq[] = { T_HELLO, T_WORD, T_DOT };
	for (int k = 0; k < T_NV; k++)
		lg[k] = 0;
	lg[step < 3 ? seq[step] : T_WORD] = 10;
}

static void test_controller(void)
{
	struct len_vocab lv;
	struct gen_turn_opts o;
	struct run r;
	struct err e;

	len_vocab_from_pieces(&lv, t_pieces, T_NV, t_end);
	T_EQ_INT(lv.cls[T_END], LTOK_END);
	T_EQ_INT(lv.cls[T_WORD], 0);
	T_EQ_INT(lv.runs[T_WORD], 1);
	T_EQ_INT(lv.cls[T_DOT], LTOK_SENT);
	T_EQ_INT(lv.cls[T_BLANK], LTOK_BLANK);
	T_EQ_INT(lv.runs[T_TWO], 2);
	T_EQ_INT(lv.cls[T_S], LTOK_WSTART);
	T_EQ_INT(lv.cls[T_COMMA], 0);

	/* eos: no target, the model ends */
	gen_turn_opts_default(&o);
	T_EQ_INT(o.ctl.no_repeat, 4);
	o.ctl.no_repeat = 0; /* the scripts repeat on purpose; the guard is tested below */
	drive(&o, &lv, 100, script_short, NULL, 0, &r);
	T_EQ_INT(r.stop, GEN_STOP_EOS);
	T_EQ_INT(r.tokens, 4);
	T_EQ_STR(r.shown, " word word word");

	/* max-tokens */
	drive(&o, &lv, 2, script_short, NULL, 0, &r);
	T_EQ_INT(r.stop, GEN_STOP_MAX_TOKENS);
	T_EQ_INT(r.tokens, 2);

	/* user: the cancel flag, checked before each token */
	atomic_int cancel;
	atomic_init(&cancel, GEN_CANCEL_NONE);
	drive(&o, &lv, 100, script_rambling, &cancel, 3, &r);
	T_EQ_INT(r.stop, GEN_STOP_USER);
	T_EQ_INT(r.tokens, 3);
	T_CHECK(atomic_load(&cancel) == GEN_CANCEL_NONE, "the flag is consumed");

	/* stop-string: never shown, and held back while it may begin */
	const char *stops[] = { "word." };
	o.stops = stops;
	o.n_stops = 1;
	drive(&o, &lv, 100, script_hello, NULL, 0, &r);
	T_EQ_INT(r.stop, GEN_STOP_STRING);
	T_EQ_INT(r.tokens, 3);
	T_EQ_STR(r.shown, " Hello ");
	/* a partial match at the end is shown after all */
	drive(&o, &lv, 2, script_hello, NULL, 0, &r);
	T_EQ_INT(r.stop, GEN_STOP_MAX_TOKENS);
	T_EQ_STR(r.shown, " Hello word");
	o.stops = NULL;
	o.n_stops = 0;

	/* floor: the end token is masked until w > lo = 20, then taken at once */
	T_EQ_INT(len_target_parse("30", &o.len, &e), KVS_OK);
	drive(&o, &lv, 1000, script_eager, NULL, 0, &r);
	T_EQ_INT(r.stop, GEN_STOP_LENGTH);
	T_EQ_INT(r.words, 21);
	T_EQ_INT(r.ids[r.tokens - 1], T_END);

	/* zone: at sentence ends the end bias is gamma + beta (w - 30) / 10:
	 * 0 at 25 words (3 < 8), +4 at 30 (7 < 8), +8 at 35 (11 > 8): ends at 35 */
	drive(&o, &lv, 1000, script_sentences, NULL, 0, &r);
	T_EQ_INT(r.stop, GEN_STOP_LENGTH);
	T_EQ_INT(r.words, 35);
	T_CHECK(text_ends_sentence(r.text, strlen(r.text)), "ends a sentence: \"%s\"", r.text);

	/* ceiling, graceful: no word past hi = 40, the period is pushed, then the end */
	drive(&o, &lv, 1000, script_rambling, NULL, 0, &r);
	T_EQ_INT(r.stop, GEN_STOP_LENGTH);
	T_EQ_INT(r.words, 40);
	T_EQ_INT(r.ids[r.tokens - 2], T_DOT);
	T_EQ_INT(r.ids[r.tokens - 1], T_END);

	/* forced: at the ceiling the model only continues its word; after
	 * grace = 8 such tokens the end is forced, mid-sentence */
	drive(&o, &lv, 1000, script_stubborn, NULL, 0, &r);
	T_EQ_INT(r.stop, GEN_STOP_FORCED);
	T_EQ_INT(r.words, 40);
	T_EQ_INT(r.tokens, 40 + 8 + 1);
	T_CHECK(!text_ends_sentence(r.text, strlen(r.text)), "forced mid-sentence");

	/* two-word tokens never jump over the ceiling */
	o.len.win.hi = 41; /* odd room: " big day" would make 42 */
	drive(&o, &lv, 1000, script_rambling, NULL, 0, &r);
	T_CHECK(r.words <= 41, "%u words past the ceiling 41", r.words);
	len_target_parse("30", &o.len, &e);

	/* runaway blank lines below the floor: never two blank-line tokens in a row */
	drive(&o, &lv, 200, script_blank, NULL, 0, &r);
	T_EQ_INT(r.stop, GEN_STOP_LENGTH);
	T_EQ_INT(r.words, 21);
	for (uint32_t i = 1; i < r.tokens; i++)
		T_CHECK(!(r.ids[i] == T_BLANK && r.ids[i - 1] == T_BLANK), "blank run at token %u", i);

	/* a token target: counted in tokens, ceiling at 40, ends at a boundary */
	T_EQ_INT(len_target_parse("30t", &o.len, &e), KVS_OK);
	drive(&o, &lv, 1000, script_rambling, NULL, 0, &r);
	T_EQ_INT(r.stop, GEN_STOP_FORCED); /* every token is a word: no room for a period */
	T_EQ_INT(r.tokens, 41);
	drive(&o, &lv, 1000, script_sentences, NULL, 0, &r);
	T_EQ_INT(r.stop, GEN_STOP_LENGTH);
	T_CHECK(r.tokens - 1 > 20 && r.tokens - 1 <= 40, "%u tokens", r.tokens - 1);

	/* the open level: more than 800 words, and it still ends */
	T_EQ_INT(len_target_parse(">800", &o.len, &e), KVS_OK);
	drive(&o, &lv, 2000, script_rambling, NULL, 0, &r);
	T_EQ_INT(r.stop, GEN_STOP_LENGTH);
	T_CHECK(r.words > 800 && r.words <= 960, "%u words", r.words);

	/* the n-gram guard: no 4-gram of tokens twice (before the forced end) */
	o.ctl.no_repeat = 4;
	len_target_parse("80", &o.len, &e);
	drive(&o, &lv, 1000, script_varied, NULL, 0, &r);
	T_CHECK(r.stop == GEN_STOP_LENGTH || r.stop == GEN_STOP_FORCED, "stop %d", r.stop);
	T_CHECK(r.words > 70, "%u words, %u tokens, stop %d: %s", r.words, r.tokens, r.stop, r.text);
	for (uint32_t i = 0; i + 4 <= r.tokens - 1; i++)
		for (uint32_t j = i + 1; j + 4 <= r.tokens - 1; j++)
			T_CHECK(memcmp(r.ids + i, r.ids + j, 4 * sizeof r.ids[0]) != 0,
			        "4-gram at %u repeats at %u", i, j);
	/* the tiny vocabulary runs out of fresh 4-grams: the guard gives way
	 * rather than leave only the masked end token */
	drive(&o, &lv, 1000, script_rambling, NULL, 0, &r);
	T_CHECK(r.words > 70, "%u words, stop %d", r.words, r.stop);
	o.ctl.no_repeat = 0;

	T_EQ_STR(gen_stop_name(GEN_STOP_EOS), "eos");
	T_EQ_STR(gen_stop_name(GEN_STOP_LENGTH), "length-target");
	T_EQ_STR(gen_stop_name(GEN_STOP_FORCED), "forced");
	T_EQ_STR(gen_stop_name(GEN_STOP_MAX_TOKENS), "max-tokens");
	T_EQ_STR(gen_stop_name(GEN_STOP_STRING), "stop-string");
	T_EQ_STR(gen_stop_name(GEN_STOP_USER), "user");
	T_CHECK(gen_stop_ended(GEN_STOP_FORCED) && !gen_stop_ended(GEN_STOP_STRING), "ended");
	len_vocab_free(&lv);
}

/* ---- no target: the plain sampling loop, token for token ---- */

/* The reply loop as it was before the controller: sample, accept, feed,
 * stop after an end token. */
static uint32_t plain_loop(struct gen *g, uint32_t max, int32_t *out)
{
	struct err e;
	uint32_t n = 0;
	while (n < max) {
		int32_t id = sampler_sample(g->sampler, g->last_logits);
		sampler_accept(g->sampler, id);
		out[n++] = id;
		if (gen_feed(g, &id, 1, &e) != KVS_OK || vocab_is_eog(g->model->vocab, id))
			break;
	}
	return n;
}

static void test_session(const char *path);

static void test_identical(void)
{
	char *p = tinymodel_write_temp("lenctl");
	for (int mode = 0; mode < 2; mode++) {
		struct gen_config c;
		struct gen *a = NULL, *b = NULL;
		struct err e;
		int32_t prompt[] = { 5, 40, 41, 42, 100, 7 }, ra[200], rb[200];
		enum gen_stop stop;
		uint32_t na, nb;
		gen_config_default(&c);
		c.model_path = p;
		c.engine.n_threads = 1;
		c.engine.n_ctx = 512;
		c.sampler.temp = mode == 0 ? 0.0f : 0.9f;
		c.sampler.seed = 1234;
		if (gen_open(&a, &c, &e) != KVS_OK || gen_open(&b, &c, &e) != KVS_OK) {
			fprintf(stderr, "gen_open: %s\n", e.msg);
			exit(99);
		}
		/* set a target and take it away again: the path must be as if never set */
		struct len_target t;
		len_target_words(&t, 50);
		gen_set_length_target(a, &t);
		gen_set_length_target(a, NULL);
		T_EQ_INT(gen_feed(a, prompt, 6, &e), KVS_OK);
		T_EQ_INT(gen_feed(b, prompt, 6, &e), KVS_OK);
		T_EQ_INT(gen_reply(a, 120, NULL, NULL, &stop, &na, &e), KVS_OK);
		nb = plain_loop(b, 120, rb);
		memcpy(ra, a->reply.ids, na * sizeof *ra);
		T_EQ_INT(na, nb);
		T_EQ_INT(a->reply.n_tokens, na);
		T_CHECK(memcmp(ra, rb, KVS_MIN(na, nb) * sizeof *ra) == 0, "mode %d: tokens differ", mode);
		T_CHECK(a->reply.surprisal_sum > 0, "surprisal recorded");
		T_EQ_INT(stop,
		         vocab_is_eog(a->model->vocab, ra[na - 1]) ? GEN_STOP_EOS : GEN_STOP_MAX_TOKENS);
		/* with a target the controller does act: at least lo + 1 words or the cap */
		gen_reset(a);
		len_target_words(&t, 10);
		t.win.lo = 5;
		gen_set_length_target(a, &t);
		T_EQ_INT(gen_feed(a, prompt, 6, &e), KVS_OK);
		T_EQ_INT(gen_reply(a, 120, NULL, NULL, &stop, &na, &e), KVS_OK);
		T_CHECK(stop == GEN_STOP_MAX_TOKENS || a->reply.n_words > 5, "%s with %u words",
		        gen_stop_name(stop), a->reply.n_words);
		T_CHECK(a->reply.n_words <= 20, "%u words past the ceiling", a->reply.n_words);
		gen_close(a);
		gen_close(b);
	}
	test_session(p);
	unlink(p);
	free(p);
}

/* A chat session passes the target through: the instruction is fed with
 * the user's text, the turn reports its words (as the counter recounts the
 * stored reply) and ends inside the window or at the cap. */
static void test_session(const char *path)
{
	struct session_config c;
	struct session *s;
	struct err e;
	struct len_target t;

	session_config_default(&c);
	c.gen.model_path = path;
	c.gen.engine.n_threads = 1;
	c.gen.engine.n_ctx = 512;
	c.gen.sampler.temp = 0;
	c.max_tokens = 200;
	if (session_open(&s, &c, &e) != KVS_OK) {
		fprintf(stderr, "session_open: %s\n", e.msg);
		exit(99);
	}
	T_EQ_INT(session_chat(s, "hello there", &e), KVS_OK);
	uint32_t plain = session_turn_at(s, 0)->n_prompt;
	session_reset(s);
	len_target_words(&t, 30);
	gen_set_length_target(session_gen(s), &t);
	T_EQ_INT(session_chat(s, "hello there", &e), KVS_OK);
	const struct session_turn *tu = session_turn_at(s, 0);
	T_CHECK(tu->n_prompt > plain + 8, "the instruction was not fed: %u vs %u tokens", tu->n_prompt,
	        plain);
	T_EQ_STR(tu->user, "hello there");
	T_EQ_INT(tu->n_words, wordcount_text(tu->reply, strlen(tu->reply)));
	T_CHECK(tu->stop == GEN_STOP_MAX_TOKENS ||
	                ((tu->stop == GEN_STOP_LENGTH || tu->stop == GEN_STOP_FORCED) &&
	                 tu->n_words > 20 && tu->n_words <= 40),
	        "%s with %u words", gen_stop_name(tu->stop), tu->n_words);
	session_close(s);
}

int main(void)
{
	test_wordcount();
	test_windows();
	test_sentence_end();
	test_controller();
	test_identical();
	return t_done("test-lenctl");
}
