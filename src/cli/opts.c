/*
 * opts.c: one table of command-line options shared by the tools.
 *
 * Each row names an option, its group, its argument and a setter that
 * parses the argument strictly (the whole string must be a number in range)
 * and says in one line what was expected. "--name value", "--name=value" and
 * short forms "-t 2" are accepted; "--" ends the options. Parsing records
 * which rows were given (a bit per row), so a command can tell an option
 * left at its default from one given with the default's value.
 */
#include "cli/opts.h"
#include "store/store.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cli_opt {
	const char *name; /* long name without "--" */
	char short_name;  /* 0 if none */
	const char *arg;  /* argument name, NULL for a flag */
	unsigned group;
	int (*set)(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e);
	size_t off;    /* field offset for the generic setters */
	double lo, hi; /* range for the numeric setters */
	const char *help;
};

/* Parse an unsigned integer in [lo, hi] into the uint32_t at off. */
static int opt_u32(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(arg, &end, 10);
	if (arg[0] == '\0' || arg[0] == '-' || *end != '\0' || errno != 0 || v < opt->lo || v > opt->hi)
		return err_set(e, KVS_EARG, "--%s: '%s' is not a whole number in %.0f..%.0f", opt->name,
		               arg, opt->lo, opt->hi);
	*(uint32_t *)((char *)o + opt->off) = (uint32_t)v;
	return KVS_OK;
}

/* The KV budget: 0 (every slot of the context, the default) or lo..hi. */
static int opt_budget(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	if (strcmp(arg, "0") == 0) {
		*(uint32_t *)((char *)o + opt->off) = 0;
		return KVS_OK;
	}
	if (opt_u32(o, arg, opt, e) != KVS_OK)
		return err_set(e, KVS_EARG,
		               "--%s: '%s' is not 0 (every slot) or a whole number in "
		               "%.0f..%.0f",
		               opt->name, arg, opt->lo, opt->hi);
	return KVS_OK;
}

/* Parse a signed integer in [lo, hi] into the int32_t at off. */
static int opt_i32(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(arg, &end, 10);
	if (arg[0] == '\0' || *end != '\0' || errno != 0 || v < opt->lo || v > opt->hi)
		return err_set(e, KVS_EARG, "--%s: '%s' is not a whole number in %.0f..%.0f", opt->name,
		               arg, opt->lo, opt->hi);
	*(int32_t *)((char *)o + opt->off) = (int32_t)v;
	return KVS_OK;
}

/* Parse a finite number in [lo, hi] of opt into *v. */
static int opt_number(const char *arg, const struct cli_opt *opt, double *v, struct err *e)
{
	char *end;

	errno = 0;
	*v = strtod(arg, &end);
	if (arg[0] == '\0' || *end != '\0' || errno != 0 || !isfinite(*v) || *v < opt->lo ||
	    *v > opt->hi)
		return err_set(e, KVS_EARG, "--%s: '%s' is not a number in %g..%g", opt->name, arg, opt->lo,
		               opt->hi);
	return KVS_OK;
}

/* A finite number in [lo, hi] into the float at off. */
static int opt_f32(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	double v;
	int rc = opt_number(arg, opt, &v, e);
	if (rc == KVS_OK)
		*(float *)((char *)o + opt->off) = (float)v;
	return rc;
}

/* A finite number in [lo, hi] into the double at off. */
static int opt_f64(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	double v;
	int rc = opt_number(arg, opt, &v, e);
	if (rc == KVS_OK)
		*(double *)((char *)o + opt->off) = v;
	return rc;
}

static int opt_str(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	(void)e;
	*(const char **)((char *)o + opt->off) = arg;
	return KVS_OK;
}

/* A file or folder name into the string at off: never empty or blank (an
 * unset shell variable), which would name no file, or a surprising one (SQLite
 * takes "" for a private temporary database). */
static int opt_path(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	if (arg[strspn(arg, " \t")] == '\0')
		return err_set(e, KVS_EARG, "--%s: empty file name; expected a path", opt->name);
	return opt_str(o, arg, opt, e);
}

/* --title TEXT: one line of UTF-8 text (store_title_check). */
static int opt_title(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	char msg[sizeof e->msg];

	if (store_title_check(arg, e) != KVS_OK) {
		snprintf(msg, sizeof msg, "%s", e->msg);
		return err_set(e, KVS_EARG, "--%s: %s", opt->name, msg);
	}
	return opt_str(o, arg, opt, e);
}

static int opt_flag(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	(void)arg;
	(void)e;
	*(bool *)((char *)o + opt->off) = true;
	return KVS_OK;
}

static int opt_threads(struct cli_opts *o, const char *arg, const struct cli_opt *opt,
                       struct err *e)
{
	return opt_i32(o, arg, opt, e);
}

static int opt_backend(struct cli_opts *o, const char *arg, const struct cli_opt *opt,
                       struct err *e)
{
	(void)opt;
	return engine_backend_parse(arg, &o->gen.engine.backend, e);
}

static int opt_isa(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	(void)opt;
	return engine_isa_parse(arg, &o->gen.engine.isa, e);
}

static int opt_kv_type(struct cli_opts *o, const char *arg, const struct cli_opt *opt,
                       struct err *e)
{
	(void)opt;
	return engine_kv_type_parse(arg, &o->gen.engine.kv_type, e);
}

/* --seed accepts 0..4294967294; -1 means random (as in llama.cpp). */
static int opt_seed(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(arg, &end, 10);
	if (arg[0] == '\0' || *end != '\0' || errno != 0 || v < -1 || v >= (long long)UINT32_MAX)
		return err_set(e, KVS_EARG, "--%s: '%s' is not a seed (0..4294967294, or -1 for random)",
		               opt->name, arg);
	o->gen.sampler.seed = v < 0 ? SAMPLER_SEED_RANDOM : (uint32_t)v;
	return KVS_OK;
}

/* --policy NAME[:k=v,...] */
static int opt_policy(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	(void)opt;
	o->policy_spec = arg;
	return kv_policy_parse(arg, &o->gen.kv.policy, e);
}

/* --sparse off|quest|hip|squeezed[:k=v,...]: the last one given is the
 * session's; each is kept in order for the evals that run several. */
static int opt_sparse(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	if (o->n_sparse_modes == CLI_SPARSE_MAX)
		return err_set(e, KVS_EARG, "--%s %s: given more than %d times, expected at most %d modes",
		               opt->name, arg, CLI_SPARSE_MAX, CLI_SPARSE_MAX);
	int rc = engine_sparse_parse(arg, &o->gen.kv.sparse, e);
	if (rc != KVS_OK)
		err_prefix(e, "--%s", opt->name);
	else
		o->sparse_modes[o->n_sparse_modes++] = o->gen.kv.sparse;
	return rc;
}

/* --token-stats auto|on|off */
static int opt_token_stats(struct cli_opts *o, const char *arg, const struct cli_opt *opt,
                           struct err *e)
{
	static const char *const names[] = { "auto", "on", "off" };
	for (size_t i = 0; i < KVS_ARRAY_LEN(names); i++)
		if (strcmp(arg, names[i]) == 0) {
			o->gen.kv.token_stats = (enum kv_stats_mode)i;
			return KVS_OK;
		}
	return err_set(e, KVS_EARG, "--%s: '%s', expected auto, on or off", opt->name, arg);
}

/* --format chat|raw (the evals): the chat template, or raw text. */
static int opt_eval_format(struct cli_opts *o, const char *arg, const struct cli_opt *opt,
                           struct err *e)
{
	if (strcmp(arg, "chat") != 0 && strcmp(arg, "raw") != 0)
		return err_set(e, KVS_EARG, "--%s: '%s', expected chat or raw", opt->name, arg);
	o->eval_raw = strcmp(arg, "raw") == 0;
	return KVS_OK;
}

/* --cold on|off: the cold tier (what the policy evicts, kept and recalled). */
static int opt_cold(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	if (strcmp(arg, "on") != 0 && strcmp(arg, "off") != 0)
		return err_set(e, KVS_EARG, "--%s: '%s', expected on or off", opt->name, arg);
	o->cold.on = strcmp(arg, "on") == 0;
	return KVS_OK;
}

/* --recall off|fts|summary|both: how the cold tier's blocks are chosen
 * each turn (the scorer table, session-cold.c). */
static int opt_recall(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	if (session_recall_parse(arg, &o->cold.recall, NULL) != KVS_OK)
		return err_set(e, KVS_EARG, "--%s: '%s', expected one of %s", opt->name, arg,
		               session_recall_names());
	return KVS_OK;
}

/* --recall-place order|near. */
static int opt_recall_place(struct cli_opts *o, const char *arg, const struct cli_opt *opt,
                            struct err *e)
{
	if (strcmp(arg, "order") != 0 && strcmp(arg, "near") != 0)
		return err_set(e, KVS_EARG, "--%s: '%s', expected order or near", opt->name, arg);
	o->cold.recall_near = strcmp(arg, "near") == 0;
	return KVS_OK;
}

/* --plugin FILE, repeatable. */
static int opt_plugin(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	if (arg[strspn(arg, " \t")] == '\0')
		return err_set(e, KVS_EARG, "--%s: empty file name; expected a plugin file or name",
		               opt->name);
	if (o->n_plugins == (int)KVS_ARRAY_LEN(o->plugins))
		return err_set(e, KVS_EARG, "--%s: at most %zu plugins", opt->name,
		               KVS_ARRAY_LEN(o->plugins));
	o->plugins[o->n_plugins++] = arg;
	return KVS_OK;
}

/* --resume [ID|TITLE]: the value may be left out (the latest session); a
 * value given empty or blank is an error, not the latest session. */
static int opt_resume(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	if (arg != NULL && store_key_check(arg, e) != KVS_OK)
		return err_set(e, KVS_EARG,
		               "--%s: empty session id or title; expected an id (digits) or a title, "
		               "or --%s alone for the latest session",
		               opt->name, opt->name);
	o->resume = arg ? arg : "";
	return KVS_OK;
}

static int opt_length(struct cli_opts *o, const char *arg, const struct cli_opt *opt,
                      struct err *e);

/* --target-words N: a word target (Ruler's window when N is a level; a
 * level's name, such as >800, is taken as --length and :len take it). */
static int opt_target_words(struct cli_opts *o, const char *arg, const struct cli_opt *opt,
                            struct err *e)
{
	char *end;
	unsigned long long v;

	if (len_level_find(arg) != NULL)
		return opt_length(o, arg, opt, e);
	errno = 0;
	v = strtoull(arg, &end, 10);
	if (arg[0] < '0' || arg[0] > '9' || *end != '\0' || errno != 0 || v < opt->lo || v > opt->hi)
		return err_set(e, KVS_EARG,
		               "--%s: '%s' is not a whole number of words in %.0f..%.0f nor a level "
		               "(>800)",
		               opt->name, arg, opt->lo, opt->hi);
	len_target_words(&o->len, (uint32_t)v);
	return KVS_OK;
}

/* --length SPEC: 120w, 200t, a level name or off. */
static int opt_length(struct cli_opts *o, const char *arg, const struct cli_opt *opt, struct err *e)
{
	char msg[sizeof e->msg];

	if (len_target_parse(arg, &o->len, e) != KVS_OK) {
		snprintf(msg, sizeof msg, "%s", e->msg);
		return err_set(e, KVS_EARG, "--%s: %s", opt->name, msg);
	}
	return KVS_OK;
}

void cli_len_target(const struct cli_opts *o, struct len_target *t)
{
	*t = o->len;
	t->instruct = !o->no_len_prompt;
}

void cli_len_apply(const struct cli_opts *o, struct gen *g)
{
	struct gen_turn_opts turn = *gen_turn(g);
	cli_len_target(o, &turn.len);
	turn.ctl = o->lenp;
	turn.stops = o->stop != NULL && o->stop[0] != '\0' ? &o->stop : NULL;
	turn.n_stops = turn.stops != NULL;
	gen_set_turn(g, &turn);
}

#define O(f) offsetof(struct cli_opts, f)
#define OG(f) offsetof(struct cli_opts, gen.f)

static const struct cli_opt cli_opt_table[] = {
	{ "model", 'm', "PATH", OPTG_MODEL, opt_path, OG(model_path), 0, 0,
	  "GGUF model file (default: $KVSCOPE_MODEL, else the installed default model)" },
	{ "threads", 't', "N", OPTG_ENGINE, opt_threads, OG(engine.n_threads), 0, 1024,
	  "CPU threads (default: all cores)" },
	{ "ctx", 'c', "N", OPTG_ENGINE | OPTG_PPL, opt_u32, OG(engine.n_ctx), 16, 1 << 20,
	  "context size in tokens (default: min(training context, 4096); perplexity: 512)" },
	{ "batch", 'b', "N", OPTG_ENGINE, opt_u32, OG(n_batch), 1, 8192,
	  "prefill chunk in tokens (default 512)" },
	{ "backend", 0, "auto|cpu|cuda", OPTG_ENGINE, opt_backend, 0, 0, 0,
	  "compute backend (default auto: CUDA when a GPU is usable)" },
	{ "kv-type", 0, "f16|f32", OPTG_ENGINE, opt_kv_type, 0, 0, 0,
	  "KV cache element type (default f16)" },
	{ "isa", 0, "auto|avx512|avx2|scalar", OPTG_ENGINE, opt_isa, 0, 0, 0,
	  "CPU kernel level (default auto: the best this CPU has)" },
	{ "temp", 0, "T", OPTG_SAMPLER, opt_f32, OG(sampler.temp), 0, 100,
	  "temperature (default 0.8; 0 = greedy)" },
	{ "top-k", 0, "K", OPTG_SAMPLER, opt_i32, OG(sampler.top_k), 0, 1 << 30,
	  "keep the K most likely tokens (default 40; 0 = all)" },
	{ "top-p", 0, "P", OPTG_SAMPLER, opt_f32, OG(sampler.top_p), 0, 1,
	  "nucleus sampling mass (default 0.95; 1 = off)" },
	{ "min-p", 0, "P", OPTG_SAMPLER, opt_f32, OG(sampler.min_p), 0, 1,
	  "drop tokens below P times the best one's probability (default 0.05)" },
	{ "repeat-penalty", 0, "R", OPTG_SAMPLER, opt_f32, OG(sampler.repeat_penalty), 0.01, 100,
	  "repetition penalty (default 1.0 = off)" },
	{ "repeat-last-n", 0, "N", OPTG_SAMPLER, opt_i32, OG(sampler.repeat_last_n), 0, 65535,
	  "penalty window in tokens (default 64)" },
	{ "presence-penalty", 0, "X", OPTG_SAMPLER, opt_f32, OG(sampler.presence_penalty), -100, 100,
	  "presence penalty (default 0)" },
	{ "frequency-penalty", 0, "X", OPTG_SAMPLER, opt_f32, OG(sampler.freq_penalty), -100, 100,
	  "frequency penalty (default 0)" },
	{ "seed", 's', "S", OPTG_SAMPLER, opt_seed, 0, 0, 0, "RNG seed (default: random)" },
	{ "prompt", 'p', "TEXT", OPTG_PROMPT, opt_str, O(prompt), 0, 0, "the prompt text" },
	{ "prompt-file", 'f', "FILE", OPTG_PROMPT, opt_path, O(prompt_file), 0, 0,
	  "read the prompt from FILE (bytes as they are)" },
	{ "raw", 0, NULL, OPTG_PROMPT, opt_flag, O(raw), 0, 0,
	  "feed the prompt as is, without the chat template" },
	{ "template", 0, "NAME", OPTG_PROMPT | OPTG_EVAL, opt_str, OG(chat_template), 0, 0,
	  "chat layout: chatml, llama3, gemma, phi3 or mistral (default: recognised from the "
	  "model's template)" },
	{ "no-think", 0, NULL, OPTG_PROMPT, opt_flag, OG(no_think), 0, 0,
	  "qwen3: answer without thinking (an empty <think> block opens each reply)" },
	{ "hide-think", 0, NULL, OPTG_PROMPT, opt_flag, O(hide_think), 0, 0,
	  "chat: do not show a reply's <think>...</think> block (:think show|hide toggles it)" },
	{ "system", 0, "TEXT", OPTG_PROMPT, opt_str, O(system), 0, 0,
	  "system prompt (default: the template's; \"\" for none)" },
	{ "doc", 0, "FILE", OPTG_PROMPT | OPTG_RUN, opt_path, O(doc), 0, 0,
	  "a text document pinned at the start of the conversation (chat, tui; run: of every "
	  "session a script opens)" },
	{ "max-tokens", 'n', "N", OPTG_GEN, opt_u32, O(max_tokens), 0, 1 << 24,
	  "stop after N tokens (default 256)" },
	{ "stop", 0, "TEXT", OPTG_GEN, opt_str, O(stop), 0, 0,
	  "end the reply where TEXT appears (TEXT is not printed; stop reason stop-string)" },
	{ "top", 'k', "K", OPTG_LOGITS, opt_u32, O(top), 1, 1 << 20,
	  "logits per position to print (default 10)" },
	{ "file", 'f', "FILE", OPTG_PPL, opt_path, O(file), 0, 0, "text file to score" },
	{ "file", 'f', "FILE", OPTG_TOKENIZE, opt_path, O(file), 0, 0,
	  "read the text from FILE (- : standard input; bytes as they are)" },
	{ "pieces", 0, NULL, OPTG_TOKENIZE, opt_flag, O(pieces), 0, 0,
	  "one line per token: the id, a tab and its text with C escapes" },
	{ "no-special", 0, NULL, OPTG_TOKENIZE, opt_flag, O(no_special), 0, 0,
	  "special-token text such as <|im_start|> stays text" },
	{ "chunks", 0, "N", OPTG_PPL, opt_u32, O(chunks), 0, 1 << 24,
	  "score only the first N chunks (default: all)" },
	{ "n-prompt", 'p', "N", OPTG_BENCH, opt_u32, O(n_prompt), 0, 1 << 20,
	  "prefill test length in tokens (default 512; 0 skips)" },
	{ "n-gen", 'n', "N", OPTG_BENCH | OPTG_SPARSE, opt_u32, O(n_gen), 0, 1 << 20,
	  "decode test length in tokens (default 128; 0 skips; eval sparse: decode steps, default "
	  "32)" },
	{ "reps", 'r', "N", OPTG_BENCH | OPTG_SPARSE, opt_u32, O(reps), 1, 1000,
	  "repetitions (default 5; eval sparse: 2)" },
	{ "n-depth", 'd', "N", OPTG_BENCH, opt_u32, O(n_depth), 0, 1 << 20,
	  "tokens in the cache before each test, not timed (default 0)" },
	{ "json", 0, NULL, OPTG_BENCH | OPTG_EVAL, opt_flag, O(json), 0, 0,
	  "print one JSON object (evals: last on stdout)" },
	{ "policy", 0, "NAME[:k=v,...]", OPTG_KV, opt_policy, 0, 0, 0,
	  "KV retention policy: full (default; chat: streaming), window, streaming, sirllm, "
	  "lminfinite, h2o, snapkv; parameters as k=v, span=word|number|off on all (see 'kvscope "
	  "help policies')" },
	{ "kv-budget", 0, "N", OPTG_KV, opt_budget, OG(kv.budget), 8, 1 << 24,
	  "KV cache budget in tokens (0, the default: every slot of the context)" },
	{ "sparse", 0, "off|quest|hip|squeezed[:k=v,...]", OPTG_KV, opt_sparse, 0, 0, 0,
	  "sparse decode attention over what the policy kept: off (default), quest "
	  "(budget=1024,page=16,sinks=4,recent=64,dense=2), hip (budget=1024,block=8,...,"
	  "refresh=8) or squeezed over the --doc document (clusters=10,quantile=0.9,...; see "
	  "'kvscope help sparse')" },
	{ "token-stats", 0, "auto|on|off", OPTG_KV, opt_token_stats, 0, 0, 0,
	  "per-token surprisal and entropy (default auto: when the policy or a trace needs them)" },
	{ "trace", 0, "FILE", OPTG_TRACE, opt_path, O(trace), 0, 0,
	  "write KV-cache events to FILE, one JSON line each (generate: step, eviction, turn; chat: "
	  "evictions, turns, recalls and the cold tier's writes)" },
	{ "trace-attn", 0, NULL, OPTG_TRACE, opt_flag, O(trace_attn), 0, 0,
	  "include every step's attention rows (layer x head x cached tokens) in the trace" },
	{ "trace-every", 0, "MS", OPTG_TRACE, opt_u32, O(trace_every_ms), 0, 60000,
	  "at most one step event per MS milliseconds (default 0: every step; the workbench "
	  "uses 33)" },
	{ "lengths", 0, "LIST", OPTG_PASSKEY | OPTG_SPARSE, opt_str, O(lengths), 0, 0,
	  "passkey prompt lengths in tokens, e.g. 2k,4k,8k (default 2k,4k,8k,16k,32k)" },
	{ "cap", 0, "N", OPTG_SPARSE, opt_u32, O(pos_cap), 1, 1 << 24,
	  "eval sparse: keys more than N before the first decode query move to one position, "
	  "LM-Infinite's bound (default: the model's training context)" },
	{ "prompt-cache", 0, "DIR", OPTG_SPARSE, opt_path, O(prompt_cache), 0, 0,
	  "eval sparse: keep each length's densely prefilled prompt in DIR and load it on a later "
	  "run with the same model, KV type and prompt instead of prefilling again" },
	{ "depths", 0, "LIST", OPTG_PASSKEY, opt_str, O(depths), 0, 0,
	  "passkey needle depths in percent (default 10,30,50,70,90)" },
	{ "samples", 0, "N", OPTG_PASSKEY | OPTG_TLG | OPTG_RECALL, opt_u32, O(samples), 1, 100000,
	  "samples per case: passkey per (length, depth) (default 1); tlg per level (default 30); "
	  "recall per (turns, fact kind) (default 3)" },
	{ "rounds", 0, "N", OPTG_RPS, opt_u32, O(rounds), 1, 1000000,
	  "rock-paper-scissors rounds (default 300)" },
	{ "dominant", 0, "MOVE", OPTG_RPS, opt_str, O(dominant), 0, 0,
	  "the user's dominant move: rock (default), paper or scissors" },
	{ "turns", 0, "LIST", OPTG_RECALL, opt_str, O(turns), 0, 0,
	  "eval recall: unrelated turns between the fact and the question (default 10,30)" },
	{ "facts", 0, "LIST", OPTG_RECALL, opt_str, O(facts), 0, 0,
	  "eval recall: fact kinds among number, name, code, day (default all four)" },
	{ "value", 0, "TEXT", OPTG_RECALL, opt_str, O(fact_value), 0, 0,
	  "eval recall: use TEXT as every fact's value (e.g. --facts code --value TIGER-42)" },
	{ "target-words", 0, "N", OPTG_LEN, opt_target_words, 0, 1, 100000,
	  "aim the reply at N words (Ruler's window when N is 10, 30, 50, 80, 150, 300, 500 or "
	  "700; else N +- max(10, N/10)); or the level >800" },
	{ "length", 0, "SPEC", OPTG_LEN, opt_length, 0, 0, 0,
	  "length target: 120w (words), 200t (tokens), a level (10 .. 700, >800) or off" },
	{ "no-length-prompt", 0, NULL, OPTG_LEN, opt_flag, O(no_len_prompt), 0, 0,
	  "do not add \"The response should have a word count of N words.\" to the prompt" },
	{ "no-repeat", 0, "N", OPTG_LEN, opt_u32, O(lenp.no_repeat), 0, 64,
	  "under a length target, ban tokens repeating an earlier N-gram of the reply (default 4; "
	  "0 = off)" },
	{ "levels", 0, "LIST", OPTG_TLG, opt_str, O(levels), 0, 0,
	  "eval tlg: target levels, e.g. 10,150,>800 (default: all nine)" },
	{ "prompts", 0, "FILE", OPTG_TLG, opt_path, O(prompts), 0, 0,
	  "eval tlg: prompt set as TSV lines LEVEL<TAB>FORM<TAB>INSTRUCTION (default: built in)" },
	{ "format", 0, "chat|raw", OPTG_EVAL, opt_eval_format, 0, 0, 0,
	  "prompt format: chat template (default) or raw text" },
	{ "seed", 's', "S", OPTG_EVAL, opt_u32, O(eval_seed), 0, 4294967295.0,
	  "seed of the eval's generator (default 1)" },
	{ "plugin", 0, "FILE", OPTG_RUN | OPTG_PLUGIN, opt_plugin, 0, 0, 0,
	  "load a Lua plugin before the script (repeatable; a bare NAME: the bundled one)" },
	{ "timeout", 0, "SEC", OPTG_RUN, opt_f64, O(timeout_s), 0, 1e7,
	  "stop the script after SEC seconds of wall time (default 0: no limit)" },
	{ "hook-ms", 0, "MS", OPTG_RUN, opt_f64, O(hook_ms), 1, 60000,
	  "deadline of one hook, command, timer or policy call (default 50)" },
	{ "mem-cap", 0, "MIB", OPTG_RUN, opt_u32, O(mem_cap_mib), 1, 65536,
	  "memory cap of each Lua state in MiB (default 64)" },
	{ "results", 0, "DIR", OPTG_RUN, opt_path, O(results), 0, 0,
	  "directory kvscope.write writes under (default results)" },
	{ "api-doc", 0, NULL, OPTG_RUN, opt_flag, O(api_doc), 0, 0,
	  "print the Lua API reference (doc/lua-api.md) and exit" },
	{ "db", 0, "PATH", OPTG_DB, opt_path, O(db), 0, 0,
	  "session database (default $XDG_DATA_HOME/kvscope/memory.db)" },
	{ "resume", 0, "[ID|TITLE]", OPTG_SAVE, opt_resume, 0, 0, 0,
	  "continue a saved session (default: the latest) from its retained KV cache" },
	{ "title", 0, "TEXT", OPTG_SAVE, opt_title, O(title), 0, 0,
	  "save the conversation as a session with this title" },
	{ "save", 0, NULL, OPTG_SAVE, opt_flag, O(save), 0, 0,
	  "save the conversation (implied by --db, --resume and --title)" },
	{ "cold", 0, "on|off", OPTG_COLD, opt_cold, 0, 0, 0,
	  "cold tier (default off): what the policy evicts goes to the session's database "
	  "(without --db a temporary one, deleted at exit) and each turn recalls what it needs" },
	{ "cold-max", 0, "N", OPTG_COLD, opt_u32, O(cold.max_tokens), 0, 1 << 30,
	  "cold tokens kept per session, oldest blocks out first (default 0: no cap)" },
	{ "cold-block", 0, "N", OPTG_COLD, opt_u32, O(cold.block), 1, 4096,
	  "tokens per cold block at most (default 64; a run evicted together is split only past it)" },
	{ "recall", 0, "off|fts|summary|both", OPTG_COLD, opt_recall, 0, 0, 0,
	  "how each user turn ranks cold blocks: both (default: fts and summary interleaved), summary "
	  "(its queries against the blocks' key bounds), fts (its words, BM25) or off" },
	{ "recall-budget", 0, "N", OPTG_COLD, opt_u32, O(cold.recall_budget), 1, 1 << 24,
	  "tokens recalled per turn at most (default: an eighth of the KV budget)" },
	{ "recall-place", 0, "order|near", OPTG_COLD, opt_recall_place, 0, 0, 0,
	  "where recalled blocks sit under a compact-position policy for their turn: order (default: "
	  "at their place in the text's order, after older cached tokens) or near (right before the "
	  "turn, after every other cached token)" },
	{ "format", 0, "md|json", OPTG_EXPORT, opt_str, O(format), 0, 0,
	  "export format: Markdown (default) or JSON" },
	{ "theme", 0, "dark|light", OPTG_TUI, opt_str, O(theme), 0, 0, "colour theme (default dark)" },
	{ "color", 0, "auto|256|truecolor|none", OPTG_TUI, opt_str, O(color), 0, 0,
	  "colours: auto (256 where the terminal has them), truecolor (direct-colour terminals), "
	  "none (also NO_COLOR)" },
	{ "ascii", 0, NULL, OPTG_TUI, opt_flag, O(ascii), 0, 0,
	  "ASCII glyphs instead of blocks and braille" },
	{ "no-plugins", 0, NULL, OPTG_TUI, opt_flag, O(no_plugins), 0, 0,
	  "load no plugins at start (the bundled ones and $XDG_CONFIG_HOME/kvscope/plugins)" },
	{ "bench-exit", 0, NULL, OPTG_TUI, opt_flag, O(bench_exit), 0, 0,
	  "with --prompt: quit after the reply and print its decode tok/s (benchmarks)" },
	{ "help", 'h', NULL, OPTG_HELP, opt_flag, O(help), 0, 0, "print this command's usage" },
};

/* cli_opts.given has a bit per row. */
_Static_assert(KVS_ARRAY_LEN(cli_opt_table) <= 64 * KVS_ARRAY_LEN(((struct cli_opts *)0)->given),
               "more option rows than given bits");

void cli_opts_default(struct cli_opts *o)
{
	memset(o, 0, sizeof *o);
	gen_config_default(&o->gen);
	o->max_tokens = 256;
	o->cold.recall = SESSION_RECALL_BOTH;
	o->top = 10;
	o->n_prompt = 512;
	o->n_gen = 128;
	o->reps = 5;
	o->samples = 1;
	o->rounds = 300;
	o->eval_seed = 1;
	o->len.level = -1;
	o->len.instruct = true;
	lenctl_params_default(&o->lenp);
}

void cli_opts_free(struct cli_opts *o)
{
	free(o->args);
	o->args = NULL;
}

/* Find the option for "--name" or "-c" among those in mask. */
static const struct cli_opt *opts_find(unsigned mask, const char *name, size_t len, char short_name)
{
	for (size_t i = 0; i < KVS_ARRAY_LEN(cli_opt_table); i++) {
		const struct cli_opt *opt = &cli_opt_table[i];
		if (!(opt->group & mask))
			continue;
		if (short_name != 0 ? opt->short_name == short_name
		                    : strlen(opt->name) == len && strncmp(opt->name, name, len) == 0)
			return opt;
	}
	return NULL;
}

enum cli_exit cli_opts_parse(const struct cli_cmd *cmd, int argc, char **argv, struct cli_opts *o)
{
	unsigned mask = cmd->options;
	struct err e;
	bool opts_done = false;

	o->args = xcalloc((size_t)argc + 1, sizeof *o->args);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *val = NULL, *eq;
		const struct cli_opt *opt;

		if (opts_done || a[0] != '-' || a[1] == '\0') {
			o->args[o->n_args++] = argv[i];
			opts_done |= o->stop_at_arg;
			continue;
		}
		if (strcmp(a, "--") == 0) {
			opts_done = true;
			continue;
		}
		if (a[1] == '-') {
			eq = strchr(a + 2, '=');
			opt = opts_find(mask, a + 2, eq ? (size_t)(eq - a - 2) : strlen(a + 2), 0);
			if (eq != NULL)
				val = eq + 1;
		} else {
			opt = a[2] == '\0' ? opts_find(mask, NULL, 0, a[1]) : NULL;
		}
		if (opt == NULL)
			return cli_usage(cmd, "unknown option '%s'", a);
		if (opt->set == opt_resume && val == NULL && (i + 1 >= argc || argv[i + 1][0] == '-')) {
			/* --resume alone: the latest session */
		} else if (opt->arg != NULL && val == NULL) {
			if (i + 1 >= argc)
				return cli_usage(cmd, "option '%s' needs an argument (%s)", a, opt->arg);
			val = argv[++i];
		} else if (opt->arg == NULL && val != NULL) {
			return cli_usage(cmd, "option '--%s' takes no argument", opt->name);
		}
		if (opt->set(o, val, opt, &e) != KVS_OK)
			return cli_usage(cmd, "%s", e.msg);
		size_t row = (size_t)(opt - cli_opt_table);
		o->given[row / 64] |= UINT64_C(1) << (row % 64);
	}
	return CLI_OK;
}

bool cli_opts_given(const struct cli_opts *o, const char *name)
{
	bool known = false;
	for (size_t i = 0; i < KVS_ARRAY_LEN(cli_opt_table); i++) {
		if (strcmp(cli_opt_table[i].name, name) != 0)
			continue;
		known = true;
		if (o->given[i / 64] >> (i % 64) & 1)
			return true;
	}
	assert(known); /* a name from the code, not from the user */
	(void)known;
	return false;
}

void cli_opts_help(unsigned mask, FILE *fp)
{
	for (size_t i = 0; i < KVS_ARRAY_LEN(cli_opt_table); i++) {
		const struct cli_opt *opt = &cli_opt_table[i];
		char head[64];
		if (!(opt->group & mask))
			continue;
		if (opt->short_name)
			snprintf(head, sizeof head, "-%c, --%s%s%s", opt->short_name, opt->name,
			         opt->arg ? " " : "", opt->arg ? opt->arg : "");
		else
			snprintf(head, sizeof head, "    --%s%s%s", opt->name, opt->arg ? " " : "",
			         opt->arg ? opt->arg : "");
		fprintf(fp, "  %-30s %s\n", head, opt->help);
	}
}
