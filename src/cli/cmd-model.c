/*
 * cmd-model.c: `kvscope model info [--model PATH]`.
 *
 * Loads the model with every check model_load makes, then prints what a
 * person wants to know before running it: the file, the architecture and
 * its hyper-parameters, the architecture features it uses (and the ones it
 * does not), the tokenizer, the chat template recognised and the start of
 * its source, the backend that would run it, and a table of every tensor
 * (name, type, shape, bytes) with totals per type. A file that fails validation prints
 * the loader's one line and exits 2.
 *
 * Everything that comes from the file (names, token texts, the template) is
 * printed with control bytes escaped, so a hostile file cannot drive the
 * terminal.
 */
#include "cli/opts.h"
#include "gpu/gpu.h"
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODEL_TEMPLATE_LINES 6   /* chat template lines shown */
#define MODEL_TEMPLATE_WIDTH 100 /* bytes shown per template line */

/* Print s[0..n) with control bytes as \xNN (valid UTF-8 passes through). */
static void model_put(FILE *fp, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f)
			fprintf(fp, "\\x%02x", c);
		else
			fputc(c, fp);
	}
}

/* "1,234,567" into buf. */
static const char *model_commas(uint64_t v, char *buf, size_t cap)
{
	char tmp[32];
	int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v), o = 0;

	for (int i = 0; i < n && (size_t)o + 2 < cap; i++) {
		if (i > 0 && (n - i) % 3 == 0)
			buf[o++] = ',';
		buf[o++] = tmp[i];
	}
	buf[o] = '\0';
	return buf;
}

/* One special token: "1 '<|im_start|>'" or "-". */
static void model_put_token(const struct vocab *v, const char *label, int32_t id)
{
	printf("  %-16s", label);
	if (id < 0) {
		printf("-\n");
		return;
	}
	struct gguf_str s = vocab_token_text(v, id);
	printf("%d '", id);
	model_put(stdout, s.p, (size_t)s.n);
	printf("'\n");
}

static void model_print_header(const struct model *m)
{
	const struct gguf_file *f = m->gguf;
	const struct hparams *hp = &m->hp;
	struct gpu_info gi;
	struct err e = { 0 };

	printf("file            %s\n", f->path);
	printf("format          GGUF v%u, %llu bytes, %llu keys, %llu tensors, alignment %u\n",
	       f->version, (unsigned long long)f->size, (unsigned long long)f->n_kv,
	       (unsigned long long)f->n_tensors, f->alignment);
	printf("name            ");
	model_put(stdout, m->name, strlen(m->name));
	printf("\narchitecture    %s\n", hp->arch);
	if (gpu_probe(&gi, &e) == KVS_OK)
		printf("backend         cuda (%s, %.1f GiB, compute capability %d.%d)\n", gi.name,
		       (double)gi.mem_bytes / (1024.0 * 1024 * 1024), gi.cc_major, gi.cc_minor);
	else
		printf("backend         cpu (CUDA: %s)\n", e.msg);

	printf("\nhyper-parameters\n");
	printf("  %-16s%u\n", "layers", hp->n_layer);
	printf("  %-16s%u\n", "context (train)", hp->n_ctx_train);
	printf("  %-16s%u\n", "embedding", hp->n_embd);
	printf("  %-16s%u\n", "feed-forward", hp->n_ff);
	printf("  %-16s%u (kv heads %u, group %u, head dim %u)\n", "heads", hp->n_head, hp->n_head_kv,
	       hp->n_head / hp->n_head_kv, hp->head_dim);
	printf("  %-16s%s, %u dims, base %g, freq scale %g\n", "rope",
	       hp->rope == ROPE_NEOX ? "neox (rotate half)" : "norm (adjacent pairs)", hp->n_rot,
	       (double)hp->rope_base, (double)hp->rope_freq_scale);
	if (hp->rope_scaling == ROPE_SCALING_YARN)
		printf("  %-16syarn, factor %g, original context %u, ramp over pairs %g..%g, "
		       "attention factor %g\n",
		       "rope scaling", 1.0 / (double)hp->rope_freq_scale, hp->rope_ctx_orig,
		       (double)hp->rope_yarn_corr[0], (double)hp->rope_yarn_corr[1],
		       (double)hp->rope_attn_factor * (1.0 + 0.1 * log(1.0 / (double)hp->rope_freq_scale)));
	else if (hp->rope_scaling == ROPE_SCALING_LINEAR && hp->rope_freq_scale != 1.0f)
		printf("  %-16slinear, factor %g\n", "rope scaling", 1.0 / (double)hp->rope_freq_scale);
	if (hp->rope_factors_long != NULL)
		printf("  %-16slongrope: long divisors past %u positions of context, short ones "
		       "within; attention factor %g\n",
		       "rope scaling", hp->rope_ctx_orig, (double)hp->rope_attn_factor);
	uint32_t n_local = 0;
	for (uint32_t l = 0; l < hp->n_layer; l++)
		n_local += model_layer_window(hp, l) > 0;
	if (n_local > 0) {
		printf("  %-16s%u positions in %u of %u layers (local:", "sliding window", hp->n_swa,
		       n_local, hp->n_layer);
		for (uint32_t l = 0, shown = 0; l < hp->n_layer && shown < 12; l++)
			if (model_layer_window(hp, l) > 0)
				printf("%s%u", shown++ ? "," : " ", l);
		printf("%s); rope base %g there\n", n_local > 12 ? ",..." : "", (double)hp->rope_base_swa);
	}
	if (hp->attn_softcap > 0 || hp->final_softcap > 0)
		printf("  %-16sattention %g, logits %g (0: none)\n", "soft-caps", (double)hp->attn_softcap,
		       (double)hp->final_softcap);
	printf("  %-16s%g\n", "rms eps", (double)hp->rms_eps);
	printf("  %-16s%g\n", "attention scale", (double)hp->attn_scale);
	printf("  %-16s%s\n", "qkv bias", hp->has_qkv_bias ? "yes" : "no");
	printf("  %-16s%s\n", "output",
	       hp->tied_output ? "tied to token_embd.weight" : "output.weight");
	printf("  %-16s%u\n", "vocab", hp->n_vocab);
}

/* Every architecture feature, used or not, with what it is. */
static void model_print_features(const struct model *m)
{
	struct model_feature f[MODEL_N_FEATURES];

	model_features(m, f);
	printf("\nfeatures\n");
	for (size_t i = 0; i < MODEL_N_FEATURES; i++)
		printf("  %-16s%-10s%s\n", f[i].name, f[i].used ? "used" : "not used", f[i].what);
}

static void model_print_vocab(const struct model *m)
{
	const struct vocab *v = m->vocab;
	struct gguf_str tm = { "?", 1 };
	struct err e;

	gguf_get_str(m->gguf, "tokenizer.ggml.model", &tm, &e);
	printf("\ntokenizer\n");
	printf("  %-16s", "model");
	model_put(stdout, tm.p, (size_t)tm.n);
	printf(" (%s)\n", vocab_kind(v) == VOCAB_SPM ? "SentencePiece" : "byte-level BPE");
	printf("  %-16s%s\n", "pre-tokenizer", vocab_pre_name(v));
	printf("  %-16s%u\n", "tokens", vocab_n_tokens(v));
	model_put_token(v, "bos", vocab_bos(v));
	model_put_token(v, "eos", vocab_eos(v));
	model_put_token(v, "eot", vocab_eot(v));
	printf("  %-16s%s\n", "add bos", vocab_add_bos(v) ? "yes" : "no");
}

/* The layout chat.c recognises in the template (or why it fell back). */
static void model_print_layout(const struct model *m)
{
	struct chat_template t;
	struct err e = { 0 };

	if (chat_template_init(&t, m->chat_template, NULL, m->vocab, &e) != KVS_OK) {
		printf("  %-16s%s\n", "layout", e.msg);
		return;
	}
	printf("  %-16s%s%s\n", "layout", t.name, t.think ? " (with <think> blocks)" : "");
	if (t.note[0] != '\0')
		printf("  %-16s%s\n", "note", t.note);
	chat_template_free(&t);
}

static void model_print_template(const struct model *m)
{
	const char *p = m->chat_template;
	size_t len, lines = 0, shown = 0;

	if (p == NULL) {
		printf("\nchat template   none\n");
		model_print_layout(m);
		return;
	}
	len = strlen(p);
	for (size_t i = 0; i < len; i++)
		lines += p[i] == '\n';
	if (len > 0 && p[len - 1] != '\n')
		lines++;
	printf("\nchat template (%zu bytes, %zu lines)\n", len, lines);
	model_print_layout(m);
	while (*p != '\0' && shown < MODEL_TEMPLATE_LINES) {
		size_t n = strcspn(p, "\n");
		printf("  ");
		model_put(stdout, p, n < MODEL_TEMPLATE_WIDTH ? n : MODEL_TEMPLATE_WIDTH);
		printf("%s\n", n > MODEL_TEMPLATE_WIDTH ? " ..." : "");
		p += n + (p[n] == '\n');
		shown++;
	}
	if (lines > shown)
		printf("  ... (%zu more lines)\n", lines - shown);
}

static void model_print_tensors(const struct model *m)
{
	const struct gguf_file *f = m->gguf;
	uint64_t n_of[DT_COUNT_] = { 0 }, bytes_of[DT_COUNT_] = { 0 }, elems_of[DT_COUNT_] = { 0 };
	uint64_t total = 0, elems = 0;
	char shape[96], num[40];

	printf("\ntensors\n  %-32s %-6s %-20s %14s\n", "name", "type", "shape", "bytes");
	for (uint64_t i = 0; i < f->n_tensors; i++) {
		const struct gguf_tensor *t = &f->tensors[i];
		uint64_t ne = 1;
		int o = 0;
		for (uint32_t d = 0; d < t->n_dims; d++) {
			o += snprintf(shape + o, sizeof shape - (size_t)o, "%s%lld", d ? " x " : "",
			              (long long)t->ne[d]);
			ne *= (uint64_t)t->ne[d];
		}
		printf("  %-32s %-6s %-20s %14s\n", t->name, dtype_name(t->type), shape,
		       model_commas(t->nbytes, num, sizeof num));
		n_of[t->type]++;
		bytes_of[t->type] += t->nbytes;
		elems_of[t->type] += ne;
		total += t->nbytes;
		elems += ne;
	}
	printf("\ntotals\n  %-6s %8s %16s %10s %16s\n", "type", "tensors", "bytes", "MiB", "elements");
	for (uint32_t t = 0; t < DT_COUNT_; t++) {
		char elem_s[40];
		if (n_of[t] == 0)
			continue;
		printf("  %-6s %8llu %16s %10.2f %16s\n", dtype_name(t), (unsigned long long)n_of[t],
		       model_commas(bytes_of[t], num, sizeof num), (double)bytes_of[t] / (1024.0 * 1024),
		       model_commas(elems_of[t], elem_s, sizeof elem_s));
	}
	{
		char elem_s[40];
		printf("  %-6s %8llu %16s %10.2f %16s\n", "all", (unsigned long long)f->n_tensors,
		       model_commas(total, num, sizeof num), (double)total / (1024.0 * 1024),
		       model_commas(elems, elem_s, sizeof elem_s));
	}
}

/* Load the model (every check model_load makes) and print what it holds. */
static enum cli_exit cmd_model_info_exec(struct cli_opts *o)
{
	struct model *m;
	struct err e = { 0 };
	char *path;
	int st;

	path = cli_model_path(o->gen.model_path);
	st = model_load(&m, path, &e);
	free(path);
	if (st != KVS_OK)
		return cli_fail(&e);
	model_print_header(m);
	model_print_features(m);
	model_print_vocab(m);
	model_print_template(m);
	model_print_tensors(m);
	model_free(m);
	return fflush(stdout) == 0 ? CLI_OK : CLI_FAIL;
}

const struct cli_cmd cmd_model_info = {
	.name = "model info",
	.usage = "[--model PATH]",
	.help = "validate a GGUF model and show its architecture, tokenizer, template and tensors",
	.exec = cmd_model_info_exec,
	.options = OPTG_MODEL | OPTG_HELP,
};
