/*
 * lenctl.c: length control at decoding time, with no training.
 *
 * Ruler (methods.md section 9) teaches a model Meta Length Tokens by
 * fine-tuning; here an unmodified model is steered while it samples. The
 * target levels and their windows are Ruler's (section 9.2, the code's
 * config.py): a reply hits a target when lo < words <= hi, words being the
 * number of \w+ matches (NLTK's RegexpTokenizer, Python's re: letters,
 * numbers and '_'; "don't" is 2 words and "3.5" is 2). The word counter
 * runs on the decoded text, piece by piece, so the controller always knows
 * the count the scorer will see.
 *
 * The controller follows the proposal of section 9.6, with the target T and
 * the window (lo, hi] (for ">800" the controller aims at lo + 80 and stops
 * by lo + 160; a scorer has no upper bound there):
 *   floor    while w <= lo the end tokens are masked, and so is a run of
 *            blank lines (a token of white space with a newline after a
 *            blank line already), the cheap way to pad;
 *   zone     at a sentence end (text_ends_sentence) with w > lo the end
 *            tokens get gamma + beta * (w - T) / (hi - T): about -4 just
 *            above lo, +4 at T, +12 at hi; past T the sentence-final
 *            punctuation tokens get up to +delta, so sentences close;
 *   ceiling  a token that would take the count past hi is masked (its \w
 *            runs, and whether it continues the current word, are known per
 *            token), so the count never leaves the window; at the ceiling
 *            punctuation gets +2 delta and at the next sentence end only
 *            the end tokens are left (a graceful finish: length-target);
 *            after `grace` tokens without one the end is forced and the
 *            reply is flagged `forced`.
 * For a token target the unit is one sampled token and the same rules hold.
 * A small greedy model asked for more words than it wants to write falls
 * into loops, so under a target the controller also bans a token that
 * would repeat an earlier 4-gram of the reply's tokens (no_repeat; 0 turns
 * it off); the floor would otherwise buy its words with repetition.
 *
 * struct turnctl wraps the controller with the other stop rules (max
 * tokens, stop strings held back until they can no longer begin, the
 * user's cancel flag) so that one function decides every stop reason, and
 * a test can drive it with scripted logits and no model. Without a target
 * nothing touches the logits (gen.c samples from them as they are).
 */
#include "app/app-int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LEN_MASKED (-1e30f)

/* Ruler's table, methods.md 9.1 (targets and levels) and 9.2 (windows). */
const struct len_level len_levels[] = {
	{ "10", 10, { 0, 20 }, { 0, 20 }, 0 },
	{ "30", 30, { 20, 40 }, { 20, 40 }, 0 },
	{ "50", 50, { 40, 60 }, { 40, 60 }, 0 },
	{ "80", 80, { 70, 90 }, { 60, 100 }, 0 },
	{ "150", 150, { 130, 170 }, { 100, 200 }, 1 },
	{ "300", 300, { 280, 320 }, { 200, 400 }, 1 },
	{ "500", 500, { 450, 550 }, { 400, 600 }, 1 },
	{ "700", 700, { 630, 770 }, { 600, 800 }, 2 },
	{ ">800", 800, { 800, LEN_OPEN }, { 800, LEN_OPEN }, 2 },
};
const size_t len_n_levels = KVS_ARRAY_LEN(len_levels);

bool len_window_hit(struct len_window w, uint32_t n)
{
	return n > w.lo && (w.hi == LEN_OPEN || n <= w.hi);
}

const struct len_level *len_level_find(const char *name)
{
	if (strcmp(name, "800+") == 0 || strcmp(name, "more-than-800") == 0)
		name = ">800";
	for (size_t i = 0; i < len_n_levels; i++)
		if (strcmp(name, len_levels[i].name) == 0)
			return &len_levels[i];
	return NULL;
}

/* The window of an arbitrary target n: n +- max(10, n/10), lo >= 0. */
static struct len_window len_window_around(uint32_t n)
{
	uint32_t d = KVS_MAX(10u, (n + 9) / 10);
	struct len_window w = { n > d ? n - d : 0, n + d };
	return w;
}

void len_target_words(struct len_target *t, uint32_t n)
{
	memset(t, 0, sizeof *t);
	t->unit = LEN_WORDS;
	t->n = n;
	t->level = -1;
	t->instruct = true;
	for (size_t i = 0; i < len_n_levels; i++)
		if (len_levels[i].target == n && len_levels[i].pm.hi != LEN_OPEN) {
			t->level = (int)i;
			t->win = len_levels[i].pm;
			return;
		}
	t->win = len_window_around(n);
}

int len_target_parse(const char *s, struct len_target *t, struct err *e)
{
	const struct len_level *lv;
	char *end;
	unsigned long v;
	bool instruct = true; /* the caller may switch it off afterwards */

	if (strcmp(s, "off") == 0 || strcmp(s, "none") == 0) {
		memset(t, 0, sizeof *t);
		t->level = -1;
		t->instruct = instruct;
		return KVS_OK;
	}
	lv = len_level_find(s);
	if (lv != NULL) {
		len_target_words(t, lv->target);
		t->level = (int)(lv - len_levels);
		t->win = lv->pm;
		t->instruct = instruct;
		return KVS_OK;
	}
	v = (s[0] >= '0' && s[0] <= '9') ? strtoul(s, &end, 10) : 0;
	if (v == 0 || v > 100000 || (*end != '\0' && strcmp(end, "w") != 0 && strcmp(end, "t") != 0))
		return err_set(e, KVS_EARG,
		               "length '%s': expected a number of words (120 or 120w, 1..100000), "
		               "of tokens (200t), a level (10, 30, 50, 80, 150, 300, 500, 700, >800) "
		               "or off",
		               s);
	len_target_words(t, (uint32_t)v);
	if (*end == 't') {
		t->unit = LEN_TOKENS;
		t->level = -1;
		t->win = len_window_around((uint32_t)v);
	}
	t->instruct = instruct;
	return KVS_OK;
}

const char *len_target_format(const struct len_target *t, char *buf, size_t cap)
{
	if (t->unit == LEN_NONE)
		snprintf(buf, cap, "off");
	else if (t->win.hi == LEN_OPEN)
		snprintf(buf, cap, "more than %u words (%u, inf)", t->win.lo, t->win.lo);
	else
		snprintf(buf, cap, "%u %s (%u, %u]", t->n, t->unit == LEN_WORDS ? "words" : "tokens",
		         t->win.lo, t->win.hi);
	return buf;
}

char *len_instruction(const struct len_target *t)
{
	if (t->unit == LEN_NONE || !t->instruct)
		return NULL;
	if (t->unit == LEN_TOKENS)
		return xasprintf("The response should have a length of about %u tokens.", t->n);
	if (t->win.hi == LEN_OPEN)
		return xasprintf("The response should have a word count of more than %u words.", t->win.lo);
	return xasprintf("The response should have a word count of %u words.", t->n);
}

char *len_instruct_text(const char *text, const struct len_target *t)
{
	char *s = len_instruction(t), *r;
	if (s == NULL)
		return xstrdup(text);
	r = xasprintf("%s\n%s", text, s);
	free(s);
	return r;
}

/* ---- the word counter ---- */

void wordcount_init(struct wordcount *w)
{
	memset(w, 0, sizeof *w);
}

/* Count one code point (or an undecodable byte: not a word character). */
static void wordcount_cp(struct wordcount *w, bool word)
{
	if (word && !w->in_word)
		w->words++;
	w->in_word = word;
}

/* Decode what is pending: whole sequences are counted, a broken one counts
 * its first byte as a non-word and the rest is looked at again. */
static void wordcount_drain(struct wordcount *w)
{
	while (w->n_pend > 0) {
		uint32_t cp;
		size_t len = utf8_decode(w->pend, w->n_pend, &cp), want = utf8_lead_len(w->pend[0]);
		if (len > 0) {
			wordcount_cp(w, unicode_is_word(cp));
		} else {
			bool prefix = want > w->n_pend;
			for (uint8_t i = 1; i < w->n_pend && prefix; i++)
				prefix = (w->pend[i] & 0xC0) == 0x80;
			if (prefix)
				return; /* so far valid: wait for the rest */
			wordcount_cp(w, false);
			len = 1;
		}
		memmove(w->pend, w->pend + len, w->n_pend - len);
		w->n_pend = (uint8_t)(w->n_pend - len);
	}
}

void wordcount_feed(struct wordcount *w, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t b = (uint8_t)s[i];
		if (w->n_pend == 0 && b < 0x80) {
			wordcount_cp(w, unicode_is_word(b));
			continue;
		}
		w->pend[w->n_pend++] = b;
		wordcount_drain(w);
	}
}

uint32_t wordcount_text(const char *s, size_t n)
{
	struct wordcount w;
	wordcount_init(&w);
	wordcount_feed(&w, s, n);
	/* a sequence cut at the end is a non-word, as a decoder would replace it */
	return w.words;
}

/* Whether c closes a quotation or bracket after a sentence's end. */
static size_t closer_len(const char *s, size_t i)
{
	static const char *const multi[] = { "\xE2\x80\x9D", "\xE2\x80\x99", "\xC2\xBB" };
	if (i >= 1 && strchr("\"')]*_", s[i - 1]) != NULL && s[i - 1] != '\0')
		return 1;
	for (size_t k = 0; k < KVS_ARRAY_LEN(multi); k++) {
		size_t l = strlen(multi[k]);
		if (i >= l && memcmp(s + i - l, multi[k], l) == 0)
			return l;
	}
	return 0;
}

bool text_ends_sentence(const char *s, size_t n)
{
	static const char *const abbrev[] = { "Mr", "Mrs", "Ms", "Dr", "St", "vs", "Prof", "Jr", "Sr" };
	size_t i = n, l, k;

	while (i > 0 && strchr(" \t\r\n", s[i - 1]) != NULL && s[i - 1] != '\0')
		i--;
	while ((l = closer_len(s, i)) > 0)
		i -= l;
	if (i >= 3 && memcmp(s + i - 3, "\xE2\x80\xA6", 3) == 0)
		return true;
	if (i == 0 || strchr(".!?", s[i - 1]) == NULL || s[i - 1] == '\0')
		return false;
	if (s[i - 1] != '.')
		return true;
	k = i - 1; /* the word before the period: s[k..i-1) */
	while (k > 0 &&
	       ((s[k - 1] >= 'a' && s[k - 1] <= 'z') || (s[k - 1] >= 'A' && s[k - 1] <= 'Z') ||
	        (s[k - 1] >= '0' && s[k - 1] <= '9')))
		k--;
	l = i - 1 - k;
	if (l == 0)
		return true;
	if (strspn(s + k, "0123456789") >= l) {
		/* "2." alone on its line so far is a list number */
		size_t j = k;
		while (j > 0 && (s[j - 1] == ' ' || s[j - 1] == '\t'))
			j--;
		if (j == 0 || s[j - 1] == '\n')
			return false;
		return true;
	}
	if (l == 1 && k > 0 && s[k - 1] == '.')
		return false; /* "e.g." */
	for (size_t a = 0; a < KVS_ARRAY_LEN(abbrev); a++)
		if (strlen(abbrev[a]) == l && memcmp(s + k, abbrev[a], l) == 0)
			return false;
	return true;
}

/* ---- token classes ---- */

/* Classes and \w runs of one piece. */
static void len_classify(const char *p, size_t n, bool end, uint8_t *cls, uint8_t *runs)
{
	struct wordcount w;
	bool blank = n > 0, nl = false;
	uint32_t cp;

	*cls = end ? LTOK_END : 0;
	wordcount_init(&w);
	wordcount_feed(&w, p, n);
	*runs = (uint8_t)KVS_MIN(w.words, 255u);
	if (n > 0 && utf8_decode((const uint8_t *)p, n, &cp) > 0 && unicode_is_word(cp))
		*cls |= LTOK_WSTART;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\n')
			nl = true;
		else if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
			blank = false;
	}
	if (blank && nl)
		*cls |= LTOK_BLANK;
	if (*runs == 0 && n > 0 && text_ends_sentence(p, n))
		*cls |= LTOK_SENT;
}

void len_vocab_build(struct len_vocab *lv, const struct vocab *v)
{
	char buf[256];

	lv->n = vocab_n_tokens(v);
	lv->cls = xcalloc(lv->n ? lv->n : 1, 1);
	lv->runs = xcalloc(lv->n ? lv->n : 1, 1);
	for (uint32_t id = 0; id < lv->n; id++) {
		size_t n = vocab_piece(v, (int32_t)id, false, buf, sizeof buf);
		len_classify(buf, KVS_MIN(n, sizeof buf), vocab_is_eog(v, (int32_t)id), &lv->cls[id],
		             &lv->runs[id]);
	}
}

void len_vocab_from_pieces(struct len_vocab *lv, const char *const *pieces, uint32_t n,
                           const bool *end)
{
	lv->n = n;
	lv->cls = xcalloc(n ? n : 1, 1);
	lv->runs = xcalloc(n ? n : 1, 1);
	for (uint32_t id = 0; id < n; id++)
		len_classify(pieces[id], strlen(pieces[id]), end[id], &lv->cls[id], &lv->runs[id]);
}

void len_vocab_free(struct len_vocab *lv)
{
	free(lv->cls);
	free(lv->runs);
	memset(lv, 0, sizeof *lv);
}

/* ---- the turn controller ---- */

void lenctl_params_default(struct lenctl_params *p)
{
	p->beta = 8.0f;
	p->gamma = 4.0f;
	p->delta = 6.0f;
	p->grace = 8;
	p->no_repeat = 4;
}

void gen_turn_opts_default(struct gen_turn_opts *o)
{
	memset(o, 0, sizeof *o);
	o->len.level = -1;
	o->len.instruct = true;
	lenctl_params_default(&o->ctl);
}

void turnctl_begin(struct turnctl *t, const struct gen_turn_opts *o, const struct len_vocab *lv,
                   uint32_t max_tokens)
{
	memset(t, 0, sizeof *t);
	t->o = *o;
	t->lv = lv;
	t->max_tokens = max_tokens;
	wordcount_init(&t->wc);
}

void turnctl_end(struct turnctl *t)
{
	free(t->held);
	free(t->out);
	free(t->hist);
	free(t->ban);
	t->ban = NULL;
	t->cap_ban = 0;
	t->hist = NULL;
	t->n_hist = t->cap_hist = 0;
	t->held = t->out = NULL;
	t->n_held = t->cap_held = t->cap_out = 0;
}

bool turnctl_active(const struct turnctl *t)
{
	return t->o.len.unit != LEN_NONE && t->lv != NULL;
}

uint32_t turnctl_count(const struct turnctl *t)
{
	return t->o.len.unit == LEN_TOKENS ? t->n_tokens : t->wc.words;
}

/* The controller's aim and ceiling: the target and the window's top, or for
 * an open window lo + 80 and lo + 160 (see the top of the file). */
static void turnctl_aim(const struct turnctl *t, uint32_t *aim, uint32_t *ceil)
{
	const struct len_target *l = &t->o.len;
	if (l->win.hi == LEN_OPEN) {
		*aim = l->win.lo + 80;
		*ceil = l->win.lo + 160;
	} else {
		*aim = KVS_MIN(KVS_MAX(l->n, l->win.lo + 1), l->win.hi);
		*ceil = l->win.hi;
	}
}

int turnctl_precheck(struct turnctl *t)
{
	int asked = GEN_CANCEL_ASKED;
	if (t->cancel != NULL && atomic_compare_exchange_strong(t->cancel, &asked, GEN_CANCEL_NONE))
		return GEN_STOP_USER;
	if (t->n_tokens >= t->max_tokens)
		return GEN_STOP_MAX_TOKENS;
	return -1;
}

/* Whether the text ends with a blank line. */
static bool turnctl_blank_run(const struct turnctl *t)
{
	size_t i = t->n_tail, nl = 0;
	while (i > 0 && strchr(" \t\r\n", t->tail[i - 1]) != NULL) {
		nl += t->tail[i - 1] == '\n';
		i--;
	}
	return nl >= 2;
}

void turnctl_bias(struct turnctl *t, float *logits)
{
	const struct lenctl_params *p = &t->o.ctl;
	uint32_t u = turnctl_count(t), lo = t->o.len.win.lo, aim, ceil;
	bool words = t->o.len.unit == LEN_WORDS;
	bool boundary = text_ends_sentence(t->tail, t->n_tail);
	bool blank = turnctl_blank_run(t);
	float x, end_bias = 0, sent_bias = 0;

	if (!turnctl_active(t))
		return;
	turnctl_aim(t, &aim, &ceil);
	x = ceil > aim ? ((float)u - (float)aim) / (float)(ceil - aim) : 1.0f;
	if (x < -1.0f)
		x = -1.0f;
	if (u > lo && boundary)
		end_bias = p->gamma + p->beta * x;
	if (x > 0)
		sent_bias = p->delta * (x < 1.0f ? x : 1.0f);
	if (u >= ceil)
		sent_bias = 2.0f * p->delta;
	/* the last resort: only the end tokens are left */
	t->forcing = u > lo && u >= ceil &&
	        (boundary || t->at_ceiling > p->grace || t->o.len.unit == LEN_TOKENS);
	/* the n-gram guard: a token that would repeat an earlier n-gram (its
	 * logit kept in hist_ban to give back if nothing else would be left) */
	size_t k = p->no_repeat, n_ban = 0;
	bool left = false;
	if (k >= 2 && !t->forcing && t->n_hist >= k) {
		const int32_t *h = t->hist, *last = h + t->n_hist - (k - 1);
		for (size_t i = k - 1; i < t->n_hist; i++)
			if (memcmp(h + i - (k - 1), last, (k - 1) * sizeof *h) == 0 && h[i] >= 0 &&
			    (uint32_t)h[i] < t->lv->n && !(t->lv->cls[h[i]] & LTOK_END) &&
			    logits[h[i]] != LEN_MASKED) {
				if (n_ban == t->cap_ban) {
					t->cap_ban = t->cap_ban ? t->cap_ban * 2 : 64;
					t->ban = xreallocarray(t->ban, t->cap_ban, sizeof *t->ban);
				}
				t->ban[n_ban].id = h[i];
				t->ban[n_ban++].logit = logits[h[i]];
				logits[h[i]] = LEN_MASKED;
			}
	}
	for (uint32_t id = 0; id < t->lv->n; id++) {
		uint8_t c = t->lv->cls[id];
		uint32_t add;
		if (logits[id] == LEN_MASKED)
			continue;
		if (c & LTOK_END) {
			logits[id] = u <= lo ? LEN_MASKED : logits[id] + end_bias;
			continue;
		}
		if (t->forcing) {
			logits[id] = LEN_MASKED;
			continue;
		}
		add = words ? t->lv->runs[id] - ((t->wc.in_word && (c & LTOK_WSTART)) ? 1u : 0u) : 1u;
		if (u + add > ceil || ((c & LTOK_BLANK) && blank && u <= lo))
			logits[id] = LEN_MASKED;
		else if (c & LTOK_SENT)
			logits[id] += sent_bias;
		left = left || logits[id] != LEN_MASKED;
	}
	/* the guard never leaves the model without a token to write */
	if (!left && !t->forcing)
		for (size_t i = 0; i < n_ban; i++)
			logits[t->ban[i].id] = t->ban[i].logit;
}

/* Keep the last bytes of the text for the sentence-end test. */
static void turnctl_tail(struct turnctl *t, const char *s, size_t n)
{
	size_t cap = sizeof t->tail;
	if (n == 0)
		return;
	if (n >= cap) {
		memcpy(t->tail, s + n - cap, cap);
		t->n_tail = cap;
		return;
	}
	if (t->n_tail + n > cap) {
		size_t drop = t->n_tail + n - cap;
		memmove(t->tail, t->tail + drop, t->n_tail - drop);
		t->n_tail -= drop;
	}
	memcpy(t->tail + t->n_tail, s, n);
	t->n_tail += n;
}

/* Length of the longest suffix of held that begins some stop string. */
static size_t turnctl_partial(const struct turnctl *t)
{
	size_t best = 0;
	for (size_t k = 0; k < t->o.n_stops; k++) {
		size_t sl = strlen(t->o.stops[k]);
		for (size_t l = KVS_MIN(sl - (sl > 0), t->n_held); l > best; l--)
			if (memcmp(t->held + t->n_held - l, t->o.stops[k], l) == 0) {
				best = l;
				break;
			}
	}
	return best;
}

int turnctl_token(struct turnctl *t, int32_t id, bool is_end, const char *text, size_t n,
                  const char **emit, size_t *n_emit)
{
	uint32_t aim, ceil;

	*emit = NULL;
	*n_emit = 0;
	if (is_end) {
		t->n_tokens++;
		if (!turnctl_active(t))
			return GEN_STOP_EOS;
		return t->forcing && !text_ends_sentence(t->tail, t->n_tail) ? GEN_STOP_FORCED
		                                                             : GEN_STOP_LENGTH;
	}
	t->n_tokens++;
	if (t->n_hist == t->cap_hist) {
		t->cap_hist = t->cap_hist ? t->cap_hist * 2 : 256;
		t->hist = xreallocarray(t->hist, t->cap_hist, sizeof *t->hist);
	}
	t->hist[t->n_hist++] = id;
	wordcount_feed(&t->wc, text, n);
	turnctl_tail(t, text, n);
	if (turnctl_active(t)) {
		turnctl_aim(t, &aim, &ceil);
		if (turnctl_count(t) >= ceil)
			t->at_ceiling++;
	}
	if (t->o.n_stops == 0) {
		*emit = text;
		*n_emit = n;
		return -1;
	}
	if (t->n_held + n + 1 > t->cap_held) {
		t->cap_held = (t->n_held + n + 1) * 2;
		t->held = xrealloc(t->held, t->cap_held);
	}
	if (n > 0)
		memcpy(t->held + t->n_held, text, n);
	t->n_held += n;
	t->held[t->n_held] = '\0';
	size_t first = SIZE_MAX;
	for (size_t k = 0; k < t->o.n_stops; k++) {
		size_t sl = strlen(t->o.stops[k]);
		for (size_t i = 0; sl > 0 && i + sl <= t->n_held && i < first; i++)
			if (memcmp(t->held + i, t->o.stops[k], sl) == 0) {
				first = i;
				break;
			}
	}
	if (first != SIZE_MAX) {
		*emit = t->held;
		*n_emit = first;
		t->n_held = 0; /* the stop string and what follows are dropped */
		return GEN_STOP_STRING;
	}
	size_t keep = turnctl_partial(t), m = t->n_held - keep;
	/* emit all but the part that may begin a stop string */
	if (m + 1 > t->cap_out) {
		t->cap_out = (m + 1) * 2;
		t->out = xrealloc(t->out, t->cap_out);
	}
	if (m > 0)
		memcpy(t->out, t->held, m);
	memmove(t->held, t->held + m, keep);
	t->n_held = keep;
	*emit = t->out;
	*n_emit = m;
	return -1;
}

void turnctl_flush(struct turnctl *t, const char **emit, size_t *n_emit)
{
	*emit = t->held;
	*n_emit = t->n_held;
	t->n_held = 0;
}
