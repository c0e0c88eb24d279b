/*
 * cmd-eval-tlg.c: `kvscope eval tlg`, Ruler's Target Length Generation task
 * (methods.md 9.1, 9.2) run against the training-free length controller
 * (app/lenctl.c, methods.md 9.6).
 *
 * The prompt set is our own (data/tlg-prompts.tsv, 30 instructions for each
 * of Ruler's nine target levels, embedded at build time; --prompts FILE
 * reads another in the same LEVEL<TAB>FORM<TAB>INSTRUCTION form). Each
 * instruction gets Ruler's sentence "The response should have a word count
 * of T words." ("more than 800" for >800) and the chat template; decoding
 * is greedy, as Ruler's temperature 0. Three arms:
 *   prompt-only  the sentence alone, no controller (Ruler's "vanilla" arm);
 *   controller   the sentence and the controller aiming at the PM window
 *                (--no-length-prompt drops the sentence: an ablation);
 *   oracle       the prompt-only output cut after the window centre's word
 *                ((lo + hi) / 2; lo + 80 for >800): a truncating control.
 * Scored per level, per Ruler level group and overall (micro averages): PM
 * and FM exactly as Ruler (\w+ words, lo < w <= hi), mean |w - T| / T,
 * forced stops, replies not ending a sentence, the fraction of repeated
 * word 4-grams, and the model's own mean surprisal (nats per token) of
 * what it wrote. Each level's max-tokens cap is twice the controller's word
 * ceiling (at least 64, at most 2048, Ruler's own cap): enough to see an
 * output overshoot the window, without letting greedy loops run to 2048.
 */
#include "cli/eval.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const char tlg_prompts_tsv[];
extern const size_t tlg_prompts_tsv_len;

static enum cli_exit cmd_eval_tlg_exec(struct cli_opts *o);
static enum cli_exit cmd_eval_tlg_defaults(struct cli_opts *o);

const struct cli_cmd cmd_eval_tlg = {
	.name = "eval tlg",
	.usage = "[--samples N] [--levels 10,150,>800] [--prompts FILE] [--no-length-prompt] "
	         "[--seed S] [--json] [options]",
	.help = "Ruler's target-length task: prompt-only, length controller and oracle "
	        "truncation, PM/FM",
	.exec = cmd_eval_tlg_exec,
	.options = OPTG_MODEL | OPTG_ENGINE | OPTG_EVAL | OPTG_TLG | OPTG_LEN,
	.defaults = cmd_eval_tlg_defaults,
};

enum { ARM_PROMPT, ARM_CTL, ARM_ORACLE, N_ARMS };
static const char *const tlg_arm_names[N_ARMS] = { "prompt-only", "controller", "oracle-trunc" };

struct tlg_item {
	int level; /* index in len_levels */
	char *form;
	char *text; /* the instruction, line breaks restored */
};

/* Sums over the outputs of one arm at one level (or a group of levels). */
struct tlg_acc {
	uint32_t n, pm, fm, forced, mid, max_tokens;
	double words, dev, rep, surp;
};

/* One scored output. */
struct tlg_out {
	uint32_t words;
	bool forced, mid, capped;
	double rep, surp;
};

/* Parse the prompt set (LEVEL<TAB>FORM<TAB>INSTRUCTION lines; '#' comments). */
static int tlg_parse(const char *name, const char *s, size_t len, struct tlg_item **out, size_t *n,
                     struct err *e)
{
	size_t cap = 0, line = 0;
	const char *end = s + len;

	*out = NULL;
	*n = 0;
	while (s < end) {
		const char *nl = memchr(s, '\n', (size_t)(end - s));
		size_t l = nl ? (size_t)(nl - s) : (size_t)(end - s);
		char *row = xstrndup(s, l), *t1, *t2;
		line++;
		s += l + (nl != NULL);
		if (l > 0 && row[l - 1] == '\r')
			row[--l] = '\0';
		if (l == 0 || row[0] == '#') {
			free(row);
			continue;
		}
		t1 = strchr(row, '\t');
		t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
		if (t2 == NULL || t2[1] == '\0') {
			free(row);
			return err_set(e, KVS_EFORMAT,
			               "%s:%zu: expected LEVEL<TAB>FORM<TAB>INSTRUCTION with a non-empty "
			               "instruction",
			               name, line);
		}
		*t1 = *t2 = '\0';
		const struct len_level *lv = len_level_find(row);
		if (lv == NULL) {
			err_set(e, KVS_EFORMAT,
			        "%s:%zu: unknown level '%s', expected 10, 30, 50, 80, 150, 300, 500, 700 "
			        "or >800",
			        name, line, row);
			free(row);
			return e->code;
		}
		if (!utf8_valid((const uint8_t *)t2 + 1, strlen(t2 + 1))) {
			free(row);
			return err_set(e, KVS_EFORMAT, "%s:%zu: the instruction is not valid UTF-8", name,
			               line);
		}
		if (*n == cap) {
			cap = cap ? cap * 2 : 64;
			*out = xreallocarray(*out, cap, sizeof **out);
		}
		struct tlg_item *it = &(*out)[(*n)++];
		it->level = (int)(lv - len_levels);
		it->form = xstrdup(t1 + 1);
		/* "\n" in the file stands for a line break */
		it->text = xmalloc(strlen(t2 + 1) + 1);
		size_t k = 0;
		for (const char *p = t2 + 1; *p; p++) {
			if (p[0] == '\\' && p[1] == 'n') {
				it->text[k++] = '\n';
				p++;
			} else {
				it->text[k++] = *p;
			}
		}
		it->text[k] = '\0';
		free(row);
	}
	if (*n == 0)
		return err_set(e, KVS_EFORMAT, "%s: no instructions found", name);
	return KVS_OK;
}

/* Fraction of word 4-grams (\w+ words, ASCII letters lower-cased) that
 * repeat one seen earlier in the text. */
static double tlg_repetition(const char *s, size_t n)
{
	uint64_t *w = NULL, h = 0;
	size_t nw = 0, cap = 0, i = 0;
	bool in = false;

	while (i <= n) {
		uint32_t cp = 0;
		size_t l = i < n ? utf8_decode((const uint8_t *)s + i, n - i, &cp) : 1;
		bool word = i < n && l > 0 && unicode_is_word(cp);
		if (l == 0)
			l = 1;
		if (word) {
			if (!in)
				h = 0xCBF29CE484222325ull;
			if (cp >= 'A' && cp <= 'Z')
				cp += 'a' - 'A';
			h = (h ^ cp) * 0x100000001B3ull;
		} else if (in) {
			if (nw == cap) {
				cap = cap ? cap * 2 : 256;
				w = xreallocarray(w, cap, sizeof *w);
			}
			w[nw++] = h;
		}
		in = word;
		i += l;
	}
	double rep = 0;
	if (nw >= 4) {
		size_t m = nw - 3, tcap = 1, dup = 0;
		while (tcap < 2 * m)
			tcap <<= 1;
		uint64_t *tab = xcalloc(tcap, sizeof *tab);
		for (size_t k = 0; k < m; k++) {
			uint64_t g = 0x9E3779B97F4A7C15ull;
			for (size_t q = 0; q < 4; q++)
				g = (g ^ w[k + q]) * 0xBF58476D1CE4E5B9ull + q;
			g |= 1; /* 0 marks an empty slot */
			size_t j = (size_t)(g & (tcap - 1));
			while (tab[j] != 0 && tab[j] != g)
				j = (j + 1) & (tcap - 1);
			if (tab[j] == g)
				dup++;
			else
				tab[j] = g;
		}
		free(tab);
		rep = (double)dup / (double)m;
	}
	free(w);
	return rep;
}

/* Byte offset just after the k-th \w+ word of s (n when it has fewer). */
static size_t tlg_cut_after(const char *s, size_t n, uint32_t k)
{
	struct wordcount wc;
	wordcount_init(&wc);
	for (size_t i = 0; i < n; i++) {
		wordcount_feed(&wc, s + i, 1);
		if (wc.words > k)
			return i; /* the (k+1)-th word begins at i: cut before it */
	}
	return n;
}

static void tlg_add(struct tlg_acc *a, const struct len_level *lv, const struct tlg_out *o)
{
	a->n++;
	a->pm += len_window_hit(lv->pm, o->words);
	a->fm += len_window_hit(lv->fm, o->words);
	a->forced += o->forced;
	a->mid += o->mid;
	a->max_tokens += o->capped;
	a->words += o->words;
	a->dev += fabs((double)o->words - (double)lv->target) / (double)lv->target;
	a->rep += o->rep;
	a->surp += o->surp;
}

/* Score one output text. */
static void tlg_score(const char *s, size_t n, struct tlg_out *o)
{
	o->words = wordcount_text(s, n);
	o->mid = !text_ends_sentence(s, n);
	o->rep = tlg_repetition(s, n);
}

/* Run one reply for item it; fills b with the text. */
static int tlg_generate(struct gen *g, const struct tlg_item *it, const struct len_target *ask,
                        const struct len_target *ctl, uint32_t cap, struct gen_text *b,
                        enum gen_stop *stop, struct err *e)
{
	char *text = len_instruct_text(it->text, ask);
	int32_t *ids = NULL;
	size_t n = 0;
	uint32_t n_out;
	int rc;

	b->n = 0;
	gen_reset(g);
	gen_set_length_target(g, ctl);
	rc = cli_prompt_tokens(g, text, strlen(text), false, NULL, &ids, &n, e);
	if (rc == KVS_OK)
		rc = gen_begin_turn(g, KV_ROLE_USER, n, e);
	if (rc == KVS_OK)
		rc = gen_feed(g, ids, n, e);
	if (rc == KVS_OK)
		rc = gen_reply(g, cap, gen_text_collect, b, stop, &n_out, e);
	if (b->s == NULL)
		gen_text_collect("", 0, b);
	free(ids);
	free(text);
	return rc;
}

/* Mean surprisal of the reply's tokens whose bytes start before cut (all
 * when cut is SIZE_MAX); end tokens count as the model wrote them. */
static double tlg_surprisal(const struct gen *g, size_t cut)
{
	const struct gen_reply_info *r = gen_last_reply(g);
	double sum = 0;
	size_t off = 0, k = 0;
	char piece[256];

	for (uint32_t i = 0; i < r->n_tokens; i++) {
		if (cut != SIZE_MAX && off >= cut)
			break;
		sum += r->surprisal[i];
		k++;
		off += vocab_piece(gen_vocab(g), r->ids[i], false, piece, sizeof piece);
	}
	return k ? sum / (double)k : 0;
}

static void tlg_print_row(FILE *fp, const char *name, const struct tlg_acc *a)
{
	double n = a->n ? a->n : 1;
	fprintf(fp, "  %-7s %4u %6.1f %6.1f %7.1f %7.3f %6.1f %6.1f %6.1f %6.1f %6.3f\n", name, a->n,
	        100.0 * a->pm / n, 100.0 * a->fm / n, a->words / n, a->dev / n, 100.0 * a->forced / n,
	        100.0 * a->mid / n, 100.0 * a->max_tokens / n, 100.0 * a->rep / n, a->surp / n);
}

static void tlg_json_acc(FILE *fp, const char *name, const struct tlg_acc *a)
{
	double n = a->n ? a->n : 1;
	fprintf(fp,
	        "{\"level\":\"%s\",\"n\":%u,\"pm\":%.2f,\"fm\":%.2f,\"mean_words\":%.1f,"
	        "\"mean_abs_dev\":%.4f,\"forced\":%.2f,\"mid_sentence\":%.2f,\"max_tokens\":%.2f,"
	        "\"repetition\":%.2f,\"surprisal\":%.4f}",
	        name, a->n, 100.0 * a->pm / n, 100.0 * a->fm / n, a->words / n, a->dev / n,
	        100.0 * a->forced / n, 100.0 * a->mid / n, 100.0 * a->max_tokens / n,
	        100.0 * a->rep / n, a->surp / n);
}

/* Parse --levels into a mask over len_levels. */
static int tlg_levels(const char *s, bool *on, struct err *e)
{
	if (s == NULL) {
		for (size_t i = 0; i < len_n_levels; i++)
			on[i] = true;
		return KVS_OK;
	}
	memset(on, 0, len_n_levels * sizeof *on);
	while (*s) {
		size_t l = strcspn(s, ",");
		char item[16];
		const struct len_level *lv = NULL;
		if (l > 0 && l < sizeof item) {
			memcpy(item, s, l);
			item[l] = '\0';
			lv = len_level_find(item);
		}
		if (lv == NULL)
			return err_set(e, KVS_EARG,
			               "--levels: unknown level '%.*s', expected a list of 10, 30, 50, 80, "
			               "150, 300, 500, 700, >800",
			               (int)l, s);
		on[lv - len_levels] = true;
		s += l + (s[l] == ',');
	}
	return KVS_OK;
}

/* Up to 30 instructions per level: all of the built-in set. */
static enum cli_exit cmd_eval_tlg_defaults(struct cli_opts *o)
{
	o->samples = 30;
	return CLI_OK;
}

static enum cli_exit cmd_eval_tlg_exec(struct cli_opts *o)
{
	struct gen *g = NULL;
	struct err e;
	struct tlg_item *items = NULL;
	size_t n_items = 0;
	struct gen_text buf = { 0 };
	bool on[16];
	struct tlg_acc acc[N_ARMS][16 + 3 + 1];
	char *file = NULL;
	enum cli_exit rc;

	if (o->eval_raw) {
		rc = cli_usage(&cmd_eval_tlg,
		               "--format: 'raw', expected chat (the task is defined "
		               "on the chat template)");
		goto out;
	}
	if (o->len.unit != LEN_NONE) {
		rc = cli_usage(&cmd_eval_tlg,
		               "--target-words/--length do not apply: the targets are "
		               "the levels (--levels)");
		goto out;
	}
	if (tlg_levels(o->levels, on, &e) != KVS_OK) {
		rc = cli_usage(&cmd_eval_tlg, "%s", e.msg);
		goto out;
	}
	if (o->prompts != NULL) {
		size_t len;
		if (file_read_all(o->prompts, &file, &len, &e) != KVS_OK ||
		    tlg_parse(o->prompts, file, len, &items, &n_items, &e) != KVS_OK) {
			rc = cli_fail(&e);
			goto out;
		}
	} else if (tlg_parse("data/tlg-prompts.tsv", tlg_prompts_tsv, tlg_prompts_tsv_len, &items,
	                     &n_items, &e) != KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	/* the chosen instructions: every one up to --samples per level, picked
	 * by a seeded shuffle when there are more */
	struct eval_rng rng;
	eval_rng_seed(&rng, o->eval_seed);
	size_t *order = xmallocarray(n_items, sizeof *order), n_run = 0;
	for (size_t i = 0; i < n_items; i++)
		order[i] = i;
	for (size_t i = n_items; i > 1; i--) {
		size_t j = (size_t)(eval_rng_next(&rng) % i), t = order[i - 1];
		order[i - 1] = order[j];
		order[j] = t;
	}
	size_t *run = xmallocarray(n_items, sizeof *run);
	for (size_t lv = 0; lv < len_n_levels; lv++) {
		uint32_t k = 0;
		if (!on[lv])
			continue;
		/* keep file order within a level for readability */
		for (size_t i = 0; i < n_items && k < o->samples; i++)
			if (items[order[i]].level == (int)lv) {
				run[n_run++] = order[i];
				k++;
			}
	}
	if (n_run == 0) {
		free(order);
		free(run);
		err_set(&e, KVS_EARG, "the prompt set has no instruction at the chosen levels");
		rc = cli_fail(&e);
		goto out;
	}
	o->gen.sampler.temp = 0; /* greedy, as Ruler's temperature 0 */
	if (!cli_opts_given(o, "ctx"))
		o->gen.engine.n_ctx = 4096;
	rc = cli_gen_open(o, &g);
	if (rc != CLI_OK) {
		free(order);
		free(run);
		goto out;
	}
	if (gen_chat(g, &e) == NULL) {
		free(order);
		free(run);
		rc = cli_fail(&e);
		goto out;
	}
	struct gen_turn_opts turn = *gen_turn(g);
	turn.ctl = o->lenp;
	gen_set_turn(g, &turn);
	fprintf(stderr, "kvscope eval tlg: %zu instructions (up to %u per level), greedy, seed %u%s\n",
	        n_run, o->samples, o->eval_seed,
	        o->no_len_prompt ? ", controller arm without the prompt sentence" : "");
	memset(acc, 0, sizeof acc);
	struct eval_progress pr;
	eval_progress_start(&pr, "tlg", n_run);
	double t0 = clock_now_ms();
	uint64_t tokens = 0;
	rc = CLI_OK;
	for (size_t r = 0; r < n_run && rc == CLI_OK; r++) {
		const struct tlg_item *it = &items[run[r]];
		const struct len_level *lv = &len_levels[it->level];
		struct len_target ask, ctl, none;
		struct tlg_out out[N_ARMS];
		enum gen_stop stop;
		uint32_t ceil_w = lv->pm.hi == LEN_OPEN ? lv->pm.lo + 160 : lv->pm.hi;
		uint32_t cap = KVS_MIN(2048u, KVS_MAX(64u, 2 * ceil_w));
		uint32_t centre = lv->pm.hi == LEN_OPEN ? lv->pm.lo + 80 : (lv->pm.lo + lv->pm.hi) / 2;

		memset(out, 0, sizeof out);
		len_target_parse(lv->name, &ask, NULL);
		ctl = ask;
		ctl.instruct = !o->no_len_prompt;
		memset(&none, 0, sizeof none);
		none.level = -1;
		/* prompt-only and its oracle truncation */
		if (tlg_generate(g, it, &ask, &none, cap, &buf, &stop, &e) != KVS_OK) {
			rc = cli_fail(&e);
			break;
		}
		tokens += gen_last_reply(g)->n_tokens;
		tlg_score(buf.s, buf.n, &out[ARM_PROMPT]);
		out[ARM_PROMPT].capped = stop == GEN_STOP_MAX_TOKENS;
		out[ARM_PROMPT].surp = tlg_surprisal(g, SIZE_MAX);
		size_t cut = tlg_cut_after(buf.s, buf.n, centre);
		tlg_score(buf.s, cut, &out[ARM_ORACLE]);
		out[ARM_ORACLE].capped = out[ARM_PROMPT].capped && cut == buf.n;
		out[ARM_ORACLE].surp = tlg_surprisal(g, cut);
		/* the controller */
		if (tlg_generate(g, it, &ctl, &ctl, cap, &buf, &stop, &e) != KVS_OK) {
			rc = cli_fail(&e);
			break;
		}
		tokens += gen_last_reply(g)->n_tokens;
		tlg_score(buf.s, buf.n, &out[ARM_CTL]);
		out[ARM_CTL].forced = stop == GEN_STOP_FORCED;
		out[ARM_CTL].capped = stop == GEN_STOP_MAX_TOKENS;
		out[ARM_CTL].surp = tlg_surprisal(g, SIZE_MAX);
		for (int a = 0; a < N_ARMS; a++) {
			tlg_add(&acc[a][it->level], lv, &out[a]);
			tlg_add(&acc[a][16 + lv->group], lv, &out[a]);
			tlg_add(&acc[a][19], lv, &out[a]);
		}
		eval_progress(&pr, r + 1, "level %s: %u -> %u words (%s)", lv->name, out[ARM_PROMPT].words,
		              out[ARM_CTL].words, gen_stop_name(stop));
	}
	eval_progress_end(&pr);
	free(order);
	free(run);
	if (rc != CLI_OK)
		goto out;
	double secs = (clock_now_ms() - t0) / 1e3;
	printf("TLG (Ruler's windows, methods.md 9.2), %s, greedy, %zu instructions, seed %u, "
	       "%.0f s, %llu tokens\n",
	       gen_model(g)->name, n_run, o->eval_seed, secs, (unsigned long long)tokens);
	for (int a = 0; a < N_ARMS; a++) {
		printf("%s%s\n", tlg_arm_names[a],
		       a == ARM_CTL && o->no_len_prompt ? " (no prompt sentence)" : "");
		printf("  %-7s %4s %6s %6s %7s %7s %6s %6s %6s %6s %6s\n", "level", "n", "PM%", "FM%",
		       "words", "|d|/T", "forc%", "mid%", "cap%", "rep%", "surp");
		for (size_t lv = 0; lv < len_n_levels; lv++)
			if (acc[a][lv].n > 0)
				tlg_print_row(stdout, len_levels[lv].name, &acc[a][lv]);
		for (int gi = 0; gi < 3; gi++)
			if (acc[a][16 + gi].n > 0) {
				char nm[16];
				snprintf(nm, sizeof nm, "L%d", gi);
				tlg_print_row(stdout, nm, &acc[a][16 + gi]);
			}
		tlg_print_row(stdout, "All", &acc[a][19]);
	}
	if (o->json) {
		printf("{\"eval\":\"tlg\",\"model\":");
		eval_json_str(stdout, gen_model(g)->name);
		printf(",\"instructions\":%zu,\"samples_per_level\":%u,\"seed\":%u,\"length_prompt\":%s,"
		       "\"seconds\":%.1f,\"tokens\":%llu,\"arms\":{",
		       n_run, o->samples, o->eval_seed, o->no_len_prompt ? "false" : "true", secs,
		       (unsigned long long)tokens);
		for (int a = 0; a < N_ARMS; a++) {
			printf("%s\"%s\":[", a ? "," : "", tlg_arm_names[a]);
			bool first = true;
			for (size_t lv = 0; lv < len_n_levels; lv++)
				if (acc[a][lv].n > 0) {
					printf(first ? "" : ",");
					tlg_json_acc(stdout, len_levels[lv].name, &acc[a][lv]);
					first = false;
				}
			for (int gi = 0; gi < 3; gi++)
				if (acc[a][16 + gi].n > 0) {
					char nm[16];
					snprintf(nm, sizeof nm, "L%d", gi);
					printf(",");
					tlg_json_acc(stdout, nm, &acc[a][16 + gi]);
				}
			printf(",");
			tlg_json_acc(stdout, "All", &acc[a][19]);
			printf("]");
		}
		printf("}}\n");
	}
out:
	for (size_t i = 0; i < n_items; i++) {
		free(items[i].form);
		free(items[i].text);
	}
	free(items);
	free(file);
	free(buf.s);
	gen_close(g);
	return rc;
}
