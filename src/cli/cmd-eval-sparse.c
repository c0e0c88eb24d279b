/*
 * cmd-eval-sparse.c: `kvscope eval sparse`, sparse decode attention
 * (--sparse, default quest) measured against dense attention in the same
 * run, at each cached length of --lengths.
 *
 * Per length L: a seeded pseudo-text of L tokens is prefilled (densely,
 * straight into engine slots 0..L-1), then --n-gen decode steps run greedy
 * under dense attention; those tokens are then fed again, teacher-forced,
 * under the sparse mode, so both modes decode the same sequence over the
 * same cache. Passes alternate (dense, sparse, dense, sparse, ... --reps of
 * each) and each mode keeps its fastest pass, so a busy machine hurts both
 * alike. One more sparse pass asks for the attention weights: the engine
 * then reports, per layer and KV head, which keys were attended and the
 * dense weights of the same query (a shadow; its cost is not in the
 * timed passes). From it: the dense attention mass the selection captured
 * per (step, sparse layer, query head), its median and 10th percentile,
 * the oracle's mass (the same number of keys per (layer, KV head), those
 * with the largest dense weight over its query heads: what any selection
 * of that size could capture; engine_sparse_oracle), and the recall of
 * each row's 10 largest dense weights. Also: the keys
 * read against dense (all layers, the dense ones included), attention time
 * per step and its speed-up, the selection's share of dense attention
 * time, the decode step time and its speed-up (wall clock, and the
 * process's CPU time, which other jobs on a shared machine barely change;
 * with several threads it includes their waits), how often the sparse
 * step's argmax equals the dense token, and how many sparse steps chose
 * their keys against those that reused a choice (hip between refreshes;
 * every quest step chooses).
 *
 * Beyond the model's training window (L = n_ctx_train, 8192 for the
 * default model; --cap L sets another, so a shorter prompt has a capped
 * region too) positions are capped as LM-Infinite bounds distances:
 * after the prompt's prefill (at true positions, one cache for both
 * modes) the keys more than L before the first decode query sit at len -
 * L, so every decode query sees them at distance L (plus the steps since,
 * at most --n-gen), and dense and sparse decode the same capped function.
 * A keyless warm-up step then re-rotates the moved keys, outside the
 * timing. The rows say "(cap)".
 *
 * With hip and a prefill threshold the length reaches, the prompt's
 * prefill is measured too, before any decode pass: passes alternate
 * (sparse, dense, ... the last dense, so the decode passes of every mode
 * start from the same dense cache either way), each
 * mode's fastest kept, wall clock and CPU time; the keys its queries read
 * against dense; and, from one more sparse pass with the shadow on, the
 * mean dense mass the block-sparse choice captured for each query block's
 * last token (per sparse layer and query head).
 */
#include "cli/eval.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static enum cli_exit cmd_eval_sparse_exec(struct cli_opts *o);
static enum cli_exit cmd_eval_sparse_defaults(struct cli_opts *o);

const struct cli_cmd cmd_eval_sparse = {
	.name = "eval sparse",
	.usage = "[--sparse quest|hip|squeezed[:k=v,...] (repeatable)] [--lengths 2k,8k] [--n-gen N] "
	         "[--reps N] [--cap N] "
	         "[--seed S] "
	         "[--json] [options]",
	.help = "sparse decode attention against dense: captured and oracle mass, top-10 recall, keys "
	        "read, attention and decode speed-up",
	.exec = cmd_eval_sparse_exec,
	.options = OPTG_MODEL | OPTG_ENGINE | OPTG_KV | OPTG_EVAL | OPTG_SPARSE,
	.defaults = cmd_eval_sparse_defaults,
};

#define SP_MAX_LIST 16
#define SP_TOPK 10

/* One length's results. */
struct sp_row {
	uint32_t length;
	double keys_pct;           /* sparse keys read, % of dense */
	double mass_med, mass_p10; /* captured dense mass */
	double oracle_med, oracle_p10; /* what the best choice of as many keys captures */
	double mass_med_step[2];   /* its median on steps that reused a choice, that chose (hip) */
	double recall;             /* top-10 recall, mean over rows */
	double agree;              /* sparse argmax == dense token, share of steps */
	double attn_ms[2], sel_ms; /* per step: dense, sparse; selection (sparse) */
	double step_ms[2];         /* per step, fastest pass: dense, sparse */
	double cpu_ms[2];          /* the process's CPU time per step, same passes */
	uint32_t chose, reused;    /* sparse steps of the fastest pass */
	bool pf;                   /* the prefill was measured (hip, prefill <= length) */
	bool sq;                   /* squeezed: the prompt clustered as its document */
	struct engine_squeeze_info sqi;
	double pf_ms[2], pf_cpu[2]; /* prefill, fastest pass: dense, sparse */
	double pf_keys_pct;         /* sparse prefill's keys read, % of dense */
	double pf_mass;             /* its captured mass (mean over sampled rows) */
	bool capped;                /* positions capped at the training window */
};

static const char *const sp_words[] = {
	"the",     "river",   "old",      "market", "quietly",  "stone",    "bright",     "garden",
	"of",      "a",       "merchant", "walked", "across",   "northern", "bridge",     "and",
	"counted", "silver",  "coins",    "while",  "children", "sang",     "under",      "tall",
	"trees",   "near",    "harbour",  "where",  "ships",    "waited",   "for",        "morning",
	"wind",    "lantern", "painted",  "blue",   "winter",   "kept",     "its",        "promise",
	"slowly",  "baker",   "sold",     "warm",   "bread",    "to",       "travellers", "from",
	"distant", "valleys", "mountain", "road",   "was",      "long",     "narrow",     "clock",
	"tower",   "rang",    "twice",
};

/* Seeded pseudo-prose: sentences of 6..14 words from sp_words. */
static char *sp_text(struct eval_rng *r, size_t n_words)
{
	size_t cap = n_words * 12 + 16, o = 0, left = 0;
	char *s = xmalloc(cap);
	for (size_t w = 0; w < n_words; w++) {
		if (left == 0)
			left = 6 + eval_rng_next(r) % 9;
		const char *word = sp_words[eval_rng_next(r) % KVS_ARRAY_LEN(sp_words)];
		bool first = o == 0 || s[o - 1] == '.';
		o += (size_t)snprintf(s + o, cap - o, "%s%c%s%s", o ? " " : "",
		                      first ? word[0] - 'a' + 'A' : word[0], word + 1,
		                      --left == 0 ? "." : "");
	}
	return s;
}

static int sp_cmp(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return x < y ? -1 : x > y;
}

/* Feed ids[0, n) at positions and slots from at, as one-token steps with
 * the given sparse mode (NULL: dense); tokens given are fed (teacher
 * forcing), or, when greedy, the argmax is fed next and stored in ids.
 * Adds the step times, attention times, keys; with want_attn, the mass
 * and recall samples. */
struct sp_pass {
	double step_ms, cpu_ms, attn_ms, sel_ms;
	uint64_t keys_read, keys_dense;
	uint32_t agree;
	uint32_t chose, reused; /* sparse steps that chose their keys, that reused a choice */
	float *mass;            /* (cap) captured-mass samples */
	float *oracle;          /* (cap) the same samples' oracle mass (engine_sparse_oracle) */
	size_t n_mass, cap_mass;
	uint8_t *by_chose; /* (cap) 1: the sample's step chose its keys (hip: a refresh) */
	double recall_sum;
	uint64_t n_recall;
};

/* The process's CPU time in ms: other jobs on the machine barely change it. */
static double sp_cpu_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static uint32_t sp_argmax(const float *x, uint32_t n)
{
	uint32_t best = 0;
	for (uint32_t i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}

/* The shadow's statistics of one step: per sparse layer and query head.
 * The oracle of each (layer, KV head) takes as many keys as its choice
 * did (sinks and window included), the ones with the largest summed dense
 * weight over its query heads. scratch: 3 x n_visible floats. */
static void sp_shadow(struct sp_pass *p, const struct hparams *hp, const struct engine_out *out,
                      uint32_t dense_layers, float *scratch)
{
	bool chose = out->sparse_chose == 1;
	uint32_t nv = out->n_visible, grp = hp->n_head / hp->n_head_kv;
	float omass[64], *osum = scratch + nv, *oscr = scratch + 2 * (size_t)nv;
	uint8_t *osel = (uint8_t *)(scratch + 3 * (size_t)nv); /* (nv) */
	for (uint32_t l = dense_layers; l < hp->n_layer; l++)
		for (uint32_t h = 0; h < hp->n_head; h++) {
			const float *w = out->attn + ((size_t)l * hp->n_head + h) * nv;
			const uint8_t *sel = out->sel + ((size_t)l * hp->n_head_kv + h / grp) * nv;
			if (h % grp == 0 && grp <= KVS_ARRAY_LEN(omass)) {
				uint32_t k = 0;
				for (uint32_t j = 0; j < nv; j++)
					k += sel[j] != 0;
				engine_sparse_oracle(w, grp, nv, k, oscr, osum, osel, omass);
			}
			double mass = 0;
			for (uint32_t j = 0; j < nv; j++)
				mass += sel[j] ? w[j] : 0;
			if (p->n_mass == p->cap_mass) {
				p->cap_mass = p->cap_mass ? 2 * p->cap_mass : 4096;
				p->mass = xreallocarray(p->mass, p->cap_mass, sizeof(float));
				p->oracle = xreallocarray(p->oracle, p->cap_mass, sizeof(float));
				p->by_chose = xreallocarray(p->by_chose, p->cap_mass, 1);
			}
			p->by_chose[p->n_mass] = chose;
			p->oracle[p->n_mass] = grp <= KVS_ARRAY_LEN(omass) ? omass[h % grp] : NAN;
			p->mass[p->n_mass++] = (float)mass;
			/* the 10 largest dense weights: the 10th largest as a threshold */
			memcpy(scratch, w, nv * sizeof(float));
			qsort(scratch, nv, sizeof(float), sp_cmp);
			uint32_t k = KVS_MIN((uint32_t)SP_TOPK, nv), hit = 0, seen = 0;
			float thr = scratch[nv - k];
			for (uint32_t j = 0; j < nv && seen < k; j++)
				if (w[j] >= thr) {
					seen++;
					hit += sel[j] != 0;
				}
			p->recall_sum += (double)hit / k;
			p->n_recall++;
		}
}

static int sp_run(struct engine *eng, int32_t *ids, uint32_t n, uint32_t at,
                  const struct engine_sparse *sp, bool greedy, bool attn, struct sp_pass *p,
                  struct err *e)
{
	const struct hparams *hp = &engine_model(eng)->hp;
	/* sp_shadow's: 3 rows of floats and one of bytes */
	float *scratch = attn ? xmallocarray(4 * ((size_t)at + n + 1), sizeof(float)) : NULL;
	int32_t tok = ids[0];
	int rc = KVS_OK;
	for (uint32_t i = 0; i < n && rc == KVS_OK; i++) {
		int32_t pos = (int32_t)(at + i);
		uint32_t slot = at + i;
		struct engine_batch b = { .n_tokens = 1, .tokens = &tok, .pos = &pos, .slot = &slot };
		b.n_visible = at + i + 1;
		b.logits = ENGINE_LOGITS_LAST;
		b.want_attn = attn;
		b.sparse = sp;
		struct engine_out out;
		double t0 = clock_now_ms(), c0 = sp_cpu_ms();
		rc = engine_forward(eng, &b, &out, e);
		if (rc != KVS_OK)
			break;
		p->step_ms += clock_now_ms() - t0;
		p->cpu_ms += sp_cpu_ms() - c0;
		p->attn_ms += out.attn_ms;
		p->sel_ms += out.select_ms;
		p->keys_read += out.keys_read;
		p->keys_dense += out.keys_dense;
		p->chose += out.sparse_chose == 1;
		p->reused += out.sparse_chose == 0;
		int32_t next = (int32_t)sp_argmax(out.logits, hp->n_vocab);
		if (i + 1 < n) {
			if (greedy)
				ids[i + 1] = next;
			p->agree += next == ids[i + 1];
			tok = ids[i + 1];
		}
		if (attn && out.sel != NULL)
			sp_shadow(p, hp, &out, sp->dense_layers, scratch);
	}
	free(scratch);
	return rc;
}

/* A prefill pass's figures. */
struct sp_fill {
	double ms, cpu_ms;
	uint64_t read, dense, rows;
	double mass;
};

/* Prefill ids[0, n) into slots 0..n-1 (chunks of n_batch), densely or with
 * sp (a hip prefill where a chunk sees enough keys); adds into f. */
static int sp_prefill(struct engine *eng, const int32_t *ids, uint32_t n, uint32_t n_batch,
                      const struct engine_sparse *sp, bool attn, struct sp_fill *f, struct err *e)
{
	int32_t *pos = xmallocarray(n_batch, sizeof(int32_t));
	uint32_t *slot = xmallocarray(n_batch, sizeof(uint32_t));
	int rc = KVS_OK;
	double t0 = clock_now_ms(), c0 = sp_cpu_ms();
	for (uint32_t i0 = 0; i0 < n && rc == KVS_OK; i0 += n_batch) {
		uint32_t m = KVS_MIN(n_batch, n - i0);
		for (uint32_t i = 0; i < m; i++) {
			pos[i] = (int32_t)(i0 + i);
			slot[i] = i0 + i;
		}
		struct engine_batch b = { .n_tokens = m, .tokens = ids + i0, .pos = pos, .slot = slot };
		b.n_visible = i0 + m;
		/* the last chunk ends the prompt: its logits are wanted (a hip
		 * prefill's dense tail is the prompt's last queries) */
		b.logits = i0 + m == n ? ENGINE_LOGITS_LAST : ENGINE_LOGITS_NONE;
		b.sparse = sp;
		b.want_attn = attn;
		struct engine_out out;
		rc = engine_forward(eng, &b, &out, e);
		if (rc == KVS_OK && f != NULL) {
			f->read += out.prefill_read;
			f->dense += out.prefill_dense;
			f->rows += out.prefill_rows;
			f->mass += out.prefill_mass * (double)out.prefill_rows;
		}
	}
	if (f != NULL) {
		f->ms += clock_now_ms() - t0;
		f->cpu_ms += sp_cpu_ms() - c0;
	}
	free(pos);
	free(slot);
	return rc;
}

/* The prefill of ids[0, len) measured (hip): a shadow pass, then reps
 * alternating sparse and dense passes, the last dense. */
static int sp_prefills(struct engine *eng, const int32_t *ids, uint32_t len, uint32_t reps,
                       const struct engine_sparse *sp, struct sp_row *row, struct err *e)
{
	struct sp_fill sh = { 0 }, best[2] = { { 0 } }, p;
	int rc = sp_prefill(eng, ids, len, 512, sp, true, &sh, e);
	for (uint32_t rep = 0; rep < reps && rc == KVS_OK; rep++)
		for (int mode = 1; mode >= 0 && rc == KVS_OK; mode--) {
			memset(&p, 0, sizeof p);
			rc = sp_prefill(eng, ids, len, 512, mode ? sp : NULL, false, &p, e);
			if (rc == KVS_OK && (rep == 0 || p.ms < best[mode].ms))
				best[mode] = p;
		}
	if (rc != KVS_OK)
		return rc;
	row->pf = true;
	for (int mode = 0; mode < 2; mode++) {
		row->pf_ms[mode] = best[mode].ms;
		row->pf_cpu[mode] = best[mode].cpu_ms;
	}
	row->pf_keys_pct = best[1].dense ? 100.0 * (double)best[1].read / (double)best[1].dense : 100;
	row->pf_mass = sh.rows ? sh.mass / (double)sh.rows : 1.0; /* no block was sparse */
	return KVS_OK;
}

/* LM-Infinite's distance cap over a prompt of len keys in slots 0..len-1
 * for decode queries from position len on: the keys more than cap before
 * len move to position len - cap (their order kept: the positions stay
 * non-decreasing, so the first keys are still the sinks). */
static int sp_cap(struct engine *eng, uint32_t len, uint32_t cap, struct err *e)
{
	int rc = KVS_OK;
	for (uint32_t s = 0; cap > 0 && len > cap && s < len - cap && rc == KVS_OK; s++)
		rc = engine_kv_set_pos(eng, s, (int32_t)(len - cap), e);
	return rc;
}

/* Cluster the prompt's len keys as squeezed's document, for mode sp. */
static int sp_squeeze(struct engine *eng, uint32_t len, const struct engine_sparse *sp,
                      struct sp_row *row, struct err *e)
{
	uint32_t *slots = xmallocarray(len, sizeof(uint32_t));
	for (uint32_t i = 0; i < len; i++)
		slots[i] = i;
	int rc = engine_squeeze_build(eng, slots, len, sp, NULL, NULL, e);
	free(slots);
	row->sq = rc == KVS_OK && engine_squeeze_info(eng, &row->sqi);
	return rc;
}

/* --prompt-cache: the folder (NULL: none) and the model file's SHA-256. */
struct sp_cache {
	const char *dir;
	char sha[65];
};

/* Make the cache's folder and hash the model that fills it (the path
 * as given, $KVSCOPE_MODEL or the default, as cli_gen_open resolves it). */
static int sp_cache_open(struct sp_cache *pc, const char *model_opt, struct err *e)
{
	if (file_mkdirs(pc->dir, 0755) != 0)
		return err_set(e, KVS_EIO, "--prompt-cache %s: cannot make the folder: %s", pc->dir,
		               strerror(errno));
	char *path = cli_model_path(model_opt);
	int rc = file_sha256(path, pc->sha, e);
	free(path);
	return rc;
}

/* The prompt's dense prefill, from the prompt cache when it holds this
 * prompt, and into it when not (a failed write costs only the next run's
 * prefill, so it is a warning). A loaded slot's rotated key is made again
 * from its stored pre-RoPE key, which rounds differently from the
 * prefill's own rotation, so a fresh prefill that was written is loaded
 * back too: every run with --prompt-cache decodes over the same cache. */
static int sp_prefill_cached(struct engine *eng, const int32_t *ids, uint32_t len, uint64_t seed,
                             const struct sp_cache *pc, struct err *e)
{
	if (pc->dir == NULL)
		return sp_prefill(eng, ids, len, 512, NULL, false, NULL, e);
	char *path = eval_kvfile_path(pc->dir, len, seed);
	bool hit = false;
	int rc = eval_kvfile_load(eng, path, pc->sha, ids, len, &hit, e);
	if (rc == KVS_OK && hit)
		log_info("eval sparse: length %u: the prompt's K/V loaded from %s", len, path);
	if (rc == KVS_OK && !hit) {
		rc = sp_prefill(eng, ids, len, 512, NULL, false, NULL, e);
		struct err we;
		if (rc == KVS_OK && eval_kvfile_save(eng, path, pc->sha, ids, len, &we) != KVS_OK)
			log_warn("%s (the run goes on without it)", we.msg);
		else if (rc == KVS_OK)
			rc = eval_kvfile_load(eng, path, pc->sha, ids, len, &hit, e);
	}
	free(path);
	return rc;
}

/* Whether sp is a hip mode whose prefill of len keys is block-sparse: it
 * measures its own prefill. */
static bool sp_own_prefill(const struct engine_sparse *sp, uint32_t len)
{
	return sp->mode == ENGINE_SPARSE_HIP && sp->prefill > 0 && len >= sp->prefill;
}

/* Make mode m the one squeezed's index serves (the engine holds one):
 * cluster anew when another squeezed mode's index is installed, *sq_for
 * names whose is (-1: none). */
static int sp_squeeze_for(struct engine *eng, const struct engine_sparse *sp, uint32_t m,
                          uint32_t len, struct sp_row *row, int *sq_for, struct err *e)
{
	if (sp[m].mode != ENGINE_SPARSE_SQUEEZED || *sq_for == (int)m)
		return KVS_OK;
	*sq_for = (int)m;
	return sp_squeeze(eng, len, &sp[m], row, e);
}

/* One length: the prompt prefilled once (densely; a hip mode whose prefill
 * is block-sparse measures its own first, ending on a dense pass), the
 * dense decode passes once, each mode's passes over the same cache and
 * tokens; rows (n_sp), one per mode. */
static int sp_length(struct gen *g, const struct engine_sparse *sp, uint32_t n_sp, uint32_t len,
                     uint32_t steps, uint32_t reps, uint64_t seed, uint32_t train,
                     const struct sp_cache *pc, struct sp_row *rows, struct err *e)
{
	struct engine *eng = gen_engine(g);
	const struct vocab *v = gen_vocab(g);
	struct eval_rng r;
	eval_rng_seed(&r, seed ^ len);
	int32_t *ids = NULL;
	size_t n = 0, cap = 0;
	char *text = sp_text(&r, (size_t)len * 3 / 2 + 64);
	int rc = vocab_tokenize(v, text, strlen(text), true, false, &ids, &n, &cap, e);
	free(text);
	if (rc == KVS_OK && n < len + 1)
		rc = err_set(e, KVS_ESTATE, "eval sparse: the text gave %zu tokens, expected %u", n,
		             len + 1);
	engine_kv_clear(eng);
	memset(rows, 0, n_sp * sizeof *rows);
	bool prefilled = false;
	for (uint32_t m = 0; m < n_sp && rc == KVS_OK; m++)
		if (sp_own_prefill(&sp[m], len)) {
			rc = sp_prefills(eng, ids, len, reps, &sp[m], &rows[m], e);
			prefilled = true;
		}
	if (rc == KVS_OK && !prefilled)
		rc = sp_prefill_cached(eng, ids, len, seed, pc, e);
	bool capped = train > 0 && len > train;
	if (rc == KVS_OK && capped)
		rc = sp_cap(eng, len, train, e);
	/* the prompt is squeezed's fixed context: its keys clustered once (per
	 * squeezed mode), as they sit after the cap */
	int sq_for = -1;
	for (uint32_t m = 0; m < n_sp && rc == KVS_OK && sq_for < 0; m++)
		rc = sp_squeeze_for(eng, sp, m, len, &rows[m], &sq_for, e);
	int32_t *gen_ids = xmallocarray(steps, sizeof(int32_t));
	if (rc == KVS_OK)
		gen_ids[0] = ids[len];
	if (rc == KVS_OK && capped) {
		/* the moved keys re-rotate at the next forward: not in a timed pass */
		struct sp_pass warm;
		memset(&warm, 0, sizeof warm);
		rc = sp_run(eng, gen_ids, 1, len, NULL, false, false, &warm, e);
	}
	/* per rep: dense (the first pass greedy: it makes the tokens), then
	 * each mode; best (1 + n_sp): each one's fastest pass */
	struct sp_pass *best = xcalloc(1 + n_sp, sizeof *best), p;
	for (uint32_t rep = 0; rep < reps && rc == KVS_OK; rep++)
		for (uint32_t k = 0; k <= n_sp && rc == KVS_OK; k++) {
			if (k > 0)
				rc = sp_squeeze_for(eng, sp, k - 1, len, &rows[k - 1], &sq_for, e);
			memset(&p, 0, sizeof p);
			if (rc == KVS_OK)
				rc = sp_run(eng, gen_ids, steps, len, k ? &sp[k - 1] : NULL, k == 0 && rep == 0,
				            false, &p, e);
			if (rc == KVS_OK && (rep == 0 || p.step_ms < best[k].step_ms))
				best[k] = p;
		}
	float *part = xmallocarray(
	        (size_t)steps * engine_model(eng)->hp.n_layer * engine_model(eng)->hp.n_head + 1,
	        sizeof(float));
	for (uint32_t m = 0; m < n_sp && rc == KVS_OK; m++) {
		struct sp_row *row = &rows[m];
		struct sp_pass sh;
		memset(&sh, 0, sizeof sh);
		rc = sp_squeeze_for(eng, sp, m, len, row, &sq_for, e);
		if (rc == KVS_OK)
			rc = sp_run(eng, gen_ids, steps, len, &sp[m], false, true, &sh, e);
		if (rc == KVS_OK) {
			const struct sp_pass *b = &best[1 + m];
			row->length = len;
			row->capped = capped;
			row->keys_pct =
			        b->keys_dense ? 100.0 * (double)b->keys_read / (double)b->keys_dense : 100.0;
			/* hip's staleness: the median on the steps that reused an
			 * earlier query's choice (k = 0) and on those that chose their
			 * keys (1) */
			for (int k = 0; k < 2; k++) {
				size_t np = 0;
				for (size_t i = 0; i < sh.n_mass; i++)
					if (sh.by_chose[i] == k)
						part[np++] = sh.mass[i];
				qsort(part, np, sizeof(float), sp_cmp);
				row->mass_med_step[k] = np ? part[np / 2] : NAN;
			}
			qsort(sh.mass, sh.n_mass, sizeof(float), sp_cmp);
			row->mass_med = sh.n_mass ? sh.mass[sh.n_mass / 2] : NAN;
			row->mass_p10 = sh.n_mass ? sh.mass[sh.n_mass / 10] : NAN;
			qsort(sh.oracle, sh.n_mass, sizeof(float), sp_cmp);
			row->oracle_med = sh.n_mass ? sh.oracle[sh.n_mass / 2] : NAN;
			row->oracle_p10 = sh.n_mass ? sh.oracle[sh.n_mass / 10] : NAN;
			row->recall = sh.n_recall ? sh.recall_sum / (double)sh.n_recall : NAN;
			row->agree = steps > 1 ? (double)b->agree / (steps - 1) : NAN;
			const struct sp_pass *pm[2] = { &best[0], b };
			for (int k = 0; k < 2; k++) {
				row->attn_ms[k] = pm[k]->attn_ms / steps;
				row->step_ms[k] = pm[k]->step_ms / steps;
				row->cpu_ms[k] = pm[k]->cpu_ms / steps;
			}
			row->sel_ms = b->sel_ms / steps;
			row->chose = b->chose;
			row->reused = b->reused;
		}
		free(sh.mass);
		free(sh.oracle);
		free(sh.by_chose);
	}
	free(part);
	free(best);
	free(gen_ids);
	free(ids);
	engine_kv_clear(eng);
	return rc;
}

static enum cli_exit cmd_eval_sparse_defaults(struct cli_opts *o)
{
	o->n_gen = 32;
	o->reps = 2;
	return CLI_OK;
}

/* The table's first cell: the mode, when there are several. */
static void sp_cell(const char *const *spec, uint32_t n_sp, uint32_t m)
{
	if (n_sp > 1)
		printf("| %s ", spec[m]);
}

static enum cli_exit cmd_eval_sparse_exec(struct cli_opts *o)
{
	struct err e;
	uint32_t lens[SP_MAX_LIST], n_len;
	struct sp_row rows[SP_MAX_LIST * CLI_SPARSE_MAX];
	struct gen *g = NULL;
	enum cli_exit rc;
	if (eval_parse_list("lengths", o->lengths ? o->lengths : "2k,8k", 16, 1u << 22, lens,
	                    SP_MAX_LIST, &n_len, &e) != KVS_OK)
		return cli_usage(&cmd_eval_sparse, "%s", e.msg);
	if (o->n_gen < 2)
		return cli_usage(&cmd_eval_sparse, "--n-gen %u: expected at least 2 decode steps",
		                 o->n_gen);
	/* the modes, in the order given; off is the reference every row is
	 * measured against anyway */
	struct engine_sparse sp[CLI_SPARSE_MAX];
	uint32_t n_sp = 0;
	for (uint32_t i = 0; i < o->n_sparse_modes; i++)
		if (o->sparse_modes[i].mode != ENGINE_SPARSE_OFF)
			sp[n_sp++] = o->sparse_modes[i];
	if (o->n_sparse_modes == 0)
		engine_sparse_parse("quest", &sp[n_sp++], NULL);
	if (n_sp == 0)
		return cli_usage(&cmd_eval_sparse, "--sparse off: expected a sparse mode to measure");
	o->gen.kv.sparse.mode = ENGINE_SPARSE_OFF; /* the engine is driven directly */
	uint32_t max_len = 0;
	for (uint32_t i = 0; i < n_len; i++)
		max_len = KVS_MAX(max_len, lens[i]);
	if (!cli_opts_given(o, "ctx"))
		o->gen.engine.n_ctx = max_len + o->n_gen + 1;
	rc = cli_gen_open(o, &g);
	if (rc != CLI_OK)
		return rc;
	struct engine *eng = gen_engine(g);
	if (max_len + o->n_gen + 1 > engine_n_ctx(eng)) {
		err_set(&e, KVS_ERANGE, "--lengths up to %u and --n-gen %u exceed --ctx %u", max_len,
		        o->n_gen, engine_n_ctx(eng));
		rc = cli_fail(&e);
		goto out;
	}
	if (!engine_supports(eng, ENGINE_CAP_SPARSE)) {
		err_set(&e, KVS_EUNSUPPORTED, "eval sparse: backend %s has no sparse attention",
		        engine_backend_name(eng));
		rc = cli_fail(&e);
		goto out;
	}
	struct sp_cache pc = { .dir = o->prompt_cache };
	if (pc.dir != NULL && sp_cache_open(&pc, o->gen.model_path, &e) != KVS_OK) {
		rc = cli_fail(&e);
		goto out;
	}
	char specs[CLI_SPARSE_MAX][160];
	const char *spec[CLI_SPARSE_MAX];
	for (uint32_t m = 0; m < n_sp; m++)
		spec[m] = engine_sparse_format(&sp[m], specs[m], sizeof specs[m]);
	/* --cap: where the distances are capped (default the training window) */
	uint32_t train = cli_opts_given(o, "cap") ? o->pos_cap : engine_model(eng)->hp.n_ctx_train;
	struct eval_progress pr;
	eval_progress_start(&pr, "sparse", n_len);
	for (uint32_t i = 0; i < n_len; i++) {
		eval_progress(&pr, i, "length %u", lens[i]);
		if (sp_length(g, sp, n_sp, lens[i], o->n_gen, o->reps, o->eval_seed, train, &pc,
		              &rows[i * n_sp], &e) != KVS_OK) {
			eval_progress_end(&pr);
			rc = cli_fail(&e);
			goto out;
		}
	}
	eval_progress(&pr, n_len, "done");
	eval_progress_end(&pr);
	uint32_t n_rows = n_len * n_sp;
	if (n_sp == 1)
		printf("eval sparse: %s against dense; %u decode steps after each prompt "
		       "(teacher-forced with dense's greedy tokens), fastest of %u passes each; %s/%s, "
		       "%d threads\n",
		       spec[0], o->n_gen, o->reps, engine_backend_name(eng), engine_isa_name(eng),
		       engine_n_threads(eng));
	else
		printf("eval sparse: %u modes against dense, one dense prefill and dense decode per "
		       "length for all; %u decode steps after each prompt (teacher-forced with dense's "
		       "greedy tokens), fastest of %u passes each; %s/%s, %d threads\n",
		       n_sp, o->n_gen, o->reps, engine_backend_name(eng), engine_isa_name(eng),
		       engine_n_threads(eng));
	for (uint32_t i = 0; i < n_rows; i++)
		if (rows[i].capped) {
			printf("(cap): beyond the training window of %u positions the keys more than %u "
			       "before the first decode query sit at distance %u (LM-Infinite's bound), for "
			       "dense and sparse alike; the prompt was prefilled at true positions\n",
			       engine_model(eng)->hp.n_ctx_train, train, train);
			break;
		}
	const char *mh = n_sp > 1 ? "| mode " : "", *md = n_sp > 1 ? "| --- " : "";
	printf("%s| length | keys read | mass median | mass p10 | oracle median | oracle p10 | "
	       "top-10 recall | argmax = dense | "
	       "attn ms/step dense | sparse | attn x | select / dense attn | step ms dense | sparse "
	       "| decode x | step CPU ms dense | sparse | decode x (CPU) | steps chose / reused |\n",
	       mh);
	printf("%s| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
	       "---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
	       md);
	for (uint32_t m = 0; m < n_sp; m++)
		for (uint32_t i = 0; i < n_len; i++) {
			const struct sp_row *w = &rows[i * n_sp + m];
			sp_cell(spec, n_sp, m);
			printf("| %u%s | %.1f %% | %.3f | %.3f | %.3f | %.3f | %.3f | %.0f %% | %.2f | %.2f | "
			       "%.2f | %.1f %% | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %u / %u |\n",
			       w->length, w->capped ? " (cap)" : "", w->keys_pct, w->mass_med, w->mass_p10,
			       w->oracle_med, w->oracle_p10, w->recall, 100 * w->agree, w->attn_ms[0],
			       w->attn_ms[1], w->attn_ms[0] / w->attn_ms[1], 100 * w->sel_ms / w->attn_ms[0],
			       w->step_ms[0], w->step_ms[1], w->step_ms[0] / w->step_ms[1], w->cpu_ms[0],
			       w->cpu_ms[1], w->cpu_ms[0] / w->cpu_ms[1], w->chose, w->reused);
		}
	bool any_sq = false;
	for (uint32_t i = 0; i < n_rows; i++)
		any_sq |= rows[i].sq;
	if (any_sq) {
		printf("\nsqueezed's offline step (the prompt clustered as the document):\n");
		printf("%s| length | keys | fine / coarse clusters per (layer, KV head) | index MiB | "
		       "clustering s | k-means objective per key |\n",
		       mh);
		printf("%s| ---: | ---: | ---: | ---: | ---: | ---: |\n", md);
	}
	for (uint32_t m = 0; m < n_sp; m++)
		for (uint32_t i = 0; i < n_len; i++) {
			const struct sp_row *w = &rows[i * n_sp + m];
			if (!w->sq)
				continue;
			sp_cell(spec, n_sp, m);
			printf("| %u | %u | %u / %u | %.2f | %.2f | %.4f |\n", w->length, w->sqi.n_keys,
			       w->sqi.n_fine, w->sqi.n_coarse, (double)w->sqi.bytes / 1048576.0,
			       w->sqi.build_ms / 1000.0, w->sqi.objective);
		}
	bool any_pf = false;
	for (uint32_t i = 0; i < n_rows; i++)
		any_pf |= rows[i].pf;
	if (any_pf) {
		printf("\nprefill (hip block-sparse against dense, fastest of %u passes each):\n", o->reps);
		printf("%s| length | keys read | mass (mean) | prefill ms dense | sparse | prefill x | "
		       "CPU ms dense | sparse | prefill x (CPU) |\n",
		       mh);
		printf("%s| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n", md);
	}
	for (uint32_t m = 0; m < n_sp; m++)
		for (uint32_t i = 0; i < n_len; i++) {
			const struct sp_row *w = &rows[i * n_sp + m];
			if (!w->pf)
				continue;
			sp_cell(spec, n_sp, m);
			printf("| %u%s | %.1f %% | %.3f | %.0f | %.0f | %.2f | %.0f | %.0f | %.2f |\n",
			       w->length, w->capped ? " (cap)" : "", w->pf_keys_pct, w->pf_mass, w->pf_ms[0],
			       w->pf_ms[1], w->pf_ms[0] / w->pf_ms[1], w->pf_cpu[0], w->pf_cpu[1],
			       w->pf_cpu[0] / w->pf_cpu[1]);
		}
	if (o->json) {
		/* "mode": the one spec, or the specs joined by "; "; "modes": each */
		char joined[CLI_SPARSE_MAX * 162];
		size_t jl = 0;
		for (uint32_t m = 0; m < n_sp; m++)
			jl += (size_t)snprintf(joined + jl, sizeof joined - jl, "%s%s", m ? "; " : "", spec[m]);
		printf("{\"eval\":\"sparse\",\"mode\":");
		eval_json_str(stdout, joined);
		printf(",\"modes\":[");
		for (uint32_t m = 0; m < n_sp; m++) {
			printf("%s", m ? "," : "");
			eval_json_str(stdout, spec[m]);
		}
		printf("],\"steps\":%u,\"reps\":%u,\"threads\":%d,\"rows\":[", o->n_gen, o->reps,
		       engine_n_threads(eng));
		for (uint32_t m = 0; m < n_sp; m++)
			for (uint32_t i = 0; i < n_len; i++) {
				const struct sp_row *w = &rows[i * n_sp + m];
				printf("%s{\"length\":%u,\"keys_pct\":%.2f,\"mass_median\":%.4f,\"mass_p10\":%.4f,"
				       "\"oracle_median\":%.4f,\"oracle_p10\":%.4f,\"recall10\":%.4f,\"argmax_"
				       "agree\":%.4f,\"attn_ms\":[%.3f,%.3f],"
				       "\"select_ms\":%.3f,\"step_ms\":[%.3f,%.3f],\"cpu_ms\":[%.3f,%.3f],"
				       "\"steps_chose\":%u,\"steps_reused\":%u",
				       m + i ? "," : "", w->length, w->keys_pct, w->mass_med, w->mass_p10,
				       w->oracle_med, w->oracle_p10, w->recall, w->agree, w->attn_ms[0],
				       w->attn_ms[1], w->sel_ms, w->step_ms[0], w->step_ms[1], w->cpu_ms[0],
				       w->cpu_ms[1], w->chose, w->reused);
				if (w->pf)
					printf(",\"prefill\":{\"keys_pct\":%.2f,\"mass\":%.4f,\"ms\":[%.1f,%.1f],"
					       "\"cpu_ms\":[%.1f,%.1f]}",
					       w->pf_keys_pct, w->pf_mass, w->pf_ms[0], w->pf_ms[1], w->pf_cpu[0],
					       w->pf_cpu[1]);
				printf(",\"capped\":%s", w->capped ? "true" : "false");
				/* hip: the steps that chose against those that reused (null: none) */
				for (int k = 1; k >= 0; k--)
					if (isnan(w->mass_med_step[k]))
						printf(",\"mass_median_%s\":null", k ? "chose" : "reused");
					else
						printf(",\"mass_median_%s\":%.4f", k ? "chose" : "reused",
						       w->mass_med_step[k]);
				printf(",\"mode\":");
				eval_json_str(stdout, spec[m]);
				printf("}");
			}
		printf("]}\n");
	}
	rc = fflush(stdout) == 0 ? CLI_OK : CLI_FAIL;
out:
	gen_close(g);
	return rc;
}
