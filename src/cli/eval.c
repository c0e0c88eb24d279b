/*
 * eval.c: helpers shared by the evaluation commands: the seeded generator
 * (splitmix64, so a run is reproducible from --seed alone), the progress
 * bar on stderr, list parsing, JSON strings, and the temporary cold tier
 * of a run with --cold on (eval recall, eval passkey).
 */
#include "cli/eval.h"
#include "app/app.h"
#include "kv/kv_cache.h"
#include "model/model.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void eval_rng_seed(struct eval_rng *r, uint64_t seed)
{
	r->s = seed;
}

uint64_t eval_rng_next(struct eval_rng *r)
{
	uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

double eval_rng_unit(struct eval_rng *r)
{
	return (double)(eval_rng_next(r) >> 11) / (double)(1ull << 53);
}

void eval_progress_start(struct eval_progress *p, const char *what, uint64_t total)
{
	p->what = what;
	p->total = total ? total : 1;
	p->t0_ms = clock_now_ms();
	p->tty = isatty(2);
	p->last_tenth = -1;
}

void eval_progress(struct eval_progress *p, uint64_t done, const char *fmt, ...)
{
	char status[160];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(status, sizeof status, fmt, ap);
	va_end(ap);
	int tenth = (int)(done * 10 / p->total);
	if (!p->tty && tenth == p->last_tenth && done != p->total)
		return;
	p->last_tenth = tenth;
	double el = (clock_now_ms() - p->t0_ms) / 1e3;
	double eta = done ? el * (double)(p->total - done) / (double)done : 0;
	char bar[31];
	int fill = (int)(done * 30 / p->total);
	for (int i = 0; i < 30; i++)
		bar[i] = i < fill ? '#' : '.';
	bar[30] = '\0';
	fprintf(stderr, "%s%s [%s] %llu/%llu %s  %.0fs (eta %.0fs)%s", p->tty ? "\r" : "", p->what, bar,
	        (unsigned long long)done, (unsigned long long)p->total, status, el, eta,
	        p->tty ? "\033[K" : "\n");
	fflush(stderr);
}

void eval_progress_end(struct eval_progress *p)
{
	if (p->tty)
		fputc('\n', stderr);
}

int eval_parse_list(const char *opt, const char *s, uint32_t lo, uint32_t hi, uint32_t *out,
                    uint32_t cap, uint32_t *n, struct err *e)
{
	*n = 0;
	while (*s != '\0') {
		size_t len = strcspn(s, ",");
		char item[32];
		if (len == 0 || len >= sizeof item)
			return err_set(e, KVS_EARG, "--%s: '%.*s' is not a number", opt, (int)len, s);
		memcpy(item, s, len);
		item[len] = '\0';
		char *end;
		errno = 0;
		unsigned long long v = strtoull(item, &end, 10);
		if (end != item && (*end == 'k' || *end == 'K') && end[1] == '\0') {
			v *= 1024;
			end++;
		}
		if (end == item || *end != '\0' || errno != 0 || item[0] == '-' || v < lo || v > hi)
			return err_set(e, KVS_EARG, "--%s: '%s' is not a whole number in %u..%u", opt, item, lo,
			               hi);
		if (*n >= cap)
			return err_set(e, KVS_EARG, "--%s: more than %u values", opt, cap);
		out[(*n)++] = (uint32_t)v;
		s += len;
		if (*s == ',')
			s++;
	}
	if (*n == 0)
		return err_set(e, KVS_EARG, "--%s: empty list, expected at least one value", opt);
	return KVS_OK;
}

void eval_json_str(FILE *fp, const char *s)
{
	fputc('"', fp);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(fp, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(fp, "\\u%04x", ch);
		else
			fputc(ch, fp);
	}
	fputc('"', fp);
}

bool eval_find_tokens(const struct vocab *v, const int32_t *ids, size_t n, const char *text,
                      size_t skip, size_t trim, int32_t *first, int32_t *last)
{
	size_t tl = 0, cap = 256, want = strlen(text);
	char *all = xmalloc(cap);
	size_t *start = xmallocarray(n + 1, sizeof *start);
	for (size_t i = 0; i < n; i++) {
		char piece[128];
		size_t pl = vocab_piece(v, ids[i], false, piece, sizeof piece);
		pl = KVS_MIN(pl, sizeof piece);
		start[i] = tl;
		if (tl + pl + 1 > cap) {
			cap = (tl + pl + 1) * 2;
			all = xrealloc(all, cap);
		}
		memcpy(all + tl, piece, pl);
		tl += pl;
	}
	start[n] = tl;
	all[tl] = '\0';
	const char *hit = strstr(all, text);
	*first = *last = -1;
	if (hit != NULL && skip + trim < want) {
		size_t a = (size_t)(hit - all) + skip, b = (size_t)(hit - all) + want - trim;
		for (size_t i = 0; i < n; i++)
			if (start[i] < b && start[i + 1] > a) {
				if (*first < 0)
					*first = (int32_t)i;
				*last = (int32_t)i;
			}
	}
	free(all);
	free(start);
	return *first >= 0;
}

enum cli_exit eval_open(struct cli_opts *o, uint32_t full_ctx, uint32_t default_budget,
                        struct gen **g, char *pol, size_t cap, uint32_t *budget)
{
	struct err e;

	o->gen.sampler.temp = 0; /* greedy */
	if (!kv_policy_evicts(&o->gen.kv.policy)) {
		if (!cli_opts_given(o, "ctx"))
			o->gen.engine.n_ctx = full_ctx;
		o->gen.kv.budget = 0;
	} else if (o->gen.kv.budget == 0) {
		o->gen.kv.budget = default_budget;
	}
	enum cli_exit rc = cli_gen_open(o, g);
	if (rc != CLI_OK)
		return rc;
	if (!o->eval_raw && gen_chat(*g, &e) == NULL)
		return cli_fail(&e);
	const struct kv_cache *kv = gen_kv(*g);
	kv_policy_format(kv_cache_policy(kv), pol, cap);
	/* a sparse mode is named after the policy: "..., sparse hip budget=256 ..." */
	size_t pl = strlen(pol);
	if (kv_cache_sparse(kv)->mode != ENGINE_SPARSE_OFF && pl + 10 < cap) {
		memcpy(pol + pl, ", sparse ", 10);
		engine_sparse_format(kv_cache_sparse(kv), pol + pl + 9, cap - pl - 9);
	}
	*budget = kv_cache_budget(kv);
	return CLI_OK;
}

void eval_json_head(FILE *fp, const char *eval, struct gen *g, const char *policy, uint32_t budget,
                    bool raw, uint32_t seed)
{
	fprintf(fp, "{\"eval\":");
	eval_json_str(fp, eval);
	fprintf(fp, ",\"model\":");
	eval_json_str(fp, gen_model(g)->name);
	fprintf(fp, ",\"policy\":");
	eval_json_str(fp, policy);
	fprintf(fp, ",\"budget\":%u,\"format\":\"%s\",\"seed\":%u", budget, raw ? "raw" : "chat", seed);
}

int eval_cold_open(struct eval_cold *cold, struct gen *g, const struct cli_opts *o,
                   const char *title, const char *pol, struct err *e)
{
	cold->dir = file_mkdtemp("kvscope-eval", "--cold", e);
	if (cold->dir == NULL)
		return KVS_EIO;
	char *path = xasprintf("%s/cold.db", cold->dir);
	int rc = store_open(&cold->st, path, STORE_RW, e);
	free(path);
	int64_t id = 0;
	struct store_session in = { .title = (char *)title,
		                        .model_path = (char *)gen_model(g)->name,
		                        .model_sha256 = (char *)"",
		                        .arch = (char *)"",
		                        .policy = (char *)pol,
		                        .sampler = (char *)"temp=0" };
	if (rc == KVS_OK)
		rc = store_session_create(cold->st, &in, &id, e);
	if (rc != KVS_OK)
		return rc;
	scold_open(&cold->sc, g, &o->cold);
	if (!scold_attach(cold->sc, cold->st, id, "", NULL)) {
		scold_free(cold->sc);
		cold->sc = NULL;
		return err_set(e, KVS_ESTATE, "--cold: the cold tier could not be attached");
	}
	return KVS_OK;
}

void eval_cold_close(struct eval_cold *cold)
{
	scold_free(cold->sc);
	cold->sc = NULL;
	store_close(cold->st);
	cold->st = NULL;
	if (cold->dir == NULL)
		return;
	static const char *const parts[] = { "cold.db",          "cold.db-wal",
		                                 "cold.db-shm",      "cold.db-journal",
		                                 "cold.db-cold",     "cold.db-cold-wal",
		                                 "cold.db-cold-shm", "cold.db-cold-journal" };
	for (size_t i = 0; i < KVS_ARRAY_LEN(parts); i++) {
		char *p = xasprintf("%s/%s", cold->dir, parts[i]);
		unlink(p);
		free(p);
	}
	char *kv = xasprintf("%s/cold.db-kv", cold->dir);
	rmdir(kv);
	free(kv);
	if (rmdir(cold->dir) != 0)
		log_warn("cold tier: could not remove the temporary folder %s", cold->dir);
	free(cold->dir);
	cold->dir = NULL;
}

int eval_feed_system(struct gen *g, struct err *e)
{
	struct chat_prompt p = { 0 };
	int rc = KVS_OK;
	if (chat_system(gen_chat(g, NULL), NULL, &p))
		chat_user_rest(gen_chat(g, NULL), "", &p);
	int32_t bos = vocab_bos(gen_vocab(g));
	if (vocab_add_bos(gen_vocab(g)) && bos >= 0)
		rc = gen_feed(g, &bos, 1, e);
	if (rc == KVS_OK && p.n > 0)
		rc = gen_feed_prompt(g, &p, KV_ROLE_SYSTEM, e);
	chat_prompt_free(&p);
	return rc;
}
