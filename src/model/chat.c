/*
 * chat.c: chat templates, recognised rather than evaluated.
 *
 * A GGUF's tokenizer.chat_template is Jinja. Evaluating it would mean
 * running file-supplied code (llama-cpp-python shipped an RCE that way), so
 * we only look for the markers that identify a layout we know, and lift the
 * default system prompt out of a string literal when the template has one.
 *
 * Rendering produces segments. Markers ("<|im_start|>") are special and
 * become exactly one token each; everything else is raw text, tokenized with
 * special parsing off. Adjacent raw segments are tokenized together, so
 * "user\n" + content gives the same ids as tokenizing the rendered string
 * whole (what llama.cpp does), while a user who types "<|im_end|>" gets the
 * literal characters, not the marker.
 *
 * A source that names no known layout falls back to the layout whose
 * markers the vocabulary has, and t->note says so in one line that quotes
 * the source's start; --template NAME picks a layout outright. Qwen3's
 * template knows <think> blocks: a reply opens with the model's thoughts
 * unless no_think puts an empty block in the generation prompt (its
 * enable_thinking=false), and chat_strip_think hides them for display.
 */
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One layout: how a message is wrapped. */
struct chat_layout {
	const char *name;
	const char *detect;      /* substring of the Jinja source that identifies it */
	const char *open;        /* special marker before the role (NULL: "<|role|>", one per role) */
	const char *role_suffix; /* raw text after the role */
	const char *close;       /* special marker after the content */
	const char *after_close; /* raw text after the closing marker */
	const char *assistant;   /* the role name the model answers as */
	bool has_system;         /* a system role exists */
};

/* Detection goes in table order, so a template that quotes another's
 * markers is caught by its own first. */
static const struct chat_layout chat_layouts[] = {
	[CHAT_CHATML] = { "chatml", "<|im_start|>", "<|im_start|>", "\n", "<|im_end|>", "\n",
	                  "assistant", true },
	[CHAT_LLAMA3] = { "llama3", "<|start_header_id|>", "<|start_header_id|>", "<|end_header_id|>",
	                  "<|eot_id|>", "", "assistant", true },
	[CHAT_GEMMA] = { "gemma", "<start_of_turn>", "<start_of_turn>", "\n", "<end_of_turn>", "\n",
	                 "model", false },
	[CHAT_PHI3] = { "phi3", "<|assistant|>", NULL, "\n", "<|end|>", "\n", "assistant", true },
	[CHAT_MISTRAL] = { "mistral", "[INST]", "[INST]", " ", "</s>", "", "assistant", false },
};

static const char *const chat_names[] = { "chatml", "llama3", "gemma", "phi3", "mistral", NULL };

const char *const *chat_style_names(void)
{
	return chat_names;
}

/* Append a segment, merging raw text into a preceding raw segment. */
static void chat_push(struct chat_prompt *p, const char *text, size_t len, bool special)
{
	struct chat_seg *last = p->n ? &p->seg[p->n - 1] : NULL;

	if (len == 0)
		return;
	if (!special && last != NULL && !last->special) {
		last->text = xrealloc(last->text, last->len + len + 1);
		memcpy(last->text + last->len, text, len);
		last->len += len;
		last->text[last->len] = '\0';
		return;
	}
	if (p->n == p->cap) {
		p->cap = p->cap ? p->cap * 2 : 16;
		p->seg = xreallocarray(p->seg, p->cap, sizeof *p->seg);
	}
	p->seg[p->n].text = xstrndup(text, len);
	p->seg[p->n].len = len;
	p->seg[p->n].special = special;
	p->n++;
}

static void chat_push_str(struct chat_prompt *p, const char *s, bool special)
{
	chat_push(p, s, strlen(s), special);
}

/* The marker that opens role's turn in layout l: its open marker, or the
 * role's own ("<|user|>" for phi3); buf holds the latter. */
static const char *chat_open_marker(const struct chat_layout *l, const char *role, char *buf,
                                    size_t cap)
{
	if (l->open != NULL)
		return l->open;
	snprintf(buf, cap, "<|%s|>", role);
	return buf;
}

/* The special marker that opens a role's turn. */
static void chat_open(const struct chat_template *t, const char *role, struct chat_prompt *p)
{
	char buf[64];

	chat_push_str(p, chat_open_marker(&chat_layouts[t->style], role, buf, sizeof buf), true);
}

/* A role's header. ChatML, Gemma: marker, role, newline; Llama 3:
 * "<|start_header_id|>role<|end_header_id|>\n\n" (its role suffix is itself
 * a marker followed by raw text); Phi-3: the role's own marker, newline;
 * Mistral: "[INST] " before a user turn, nothing before the answer. */
static void chat_header(const struct chat_template *t, const char *role, struct chat_prompt *p)
{
	const struct chat_layout *l = &chat_layouts[t->style];

	switch (t->style) {
	case CHAT_MISTRAL:
		if (strcmp(role, l->assistant) != 0) {
			chat_push_str(p, "[INST]", t->inst_tokens);
			chat_push_str(p, " ", false);
		}
		return;
	case CHAT_PHI3:
		chat_open(t, role, p);
		chat_push_str(p, l->role_suffix, false);
		return;
	case CHAT_LLAMA3:
		chat_open(t, role, p);
		chat_push_str(p, role, false);
		chat_push_str(p, "<|end_header_id|>", true);
		chat_push_str(p, "\n\n", false);
		return;
	default:
		chat_open(t, role, p);
		chat_push_str(p, role, false);
		chat_push_str(p, l->role_suffix, false);
		return;
	}
}

/* Lift the literal default system prompt out of a ChatML template: the text
 * between "<|im_start|>system\n" and "<|im_end|>" inside a string literal. */
static char *chat_find_default_system(const char *src)
{
	static const char head[] = "<|im_start|>system\n";
	const char *a, *b;

	if (src == NULL)
		return NULL;
	a = strstr(src, head);
	if (a == NULL)
		return NULL;
	a += sizeof head - 1;
	b = strstr(a, "<|im_end|>");
	if (b == NULL || b == a)
		return NULL;
	/* Only a plain literal qualifies: no Jinja expressions or quotes. */
	for (const char *c = a; c < b; c++)
		if (*c == '{' || *c == '}' || *c == '\'' || *c == '"' || *c == '+')
			return NULL;
	return xstrndup(a, (size_t)(b - a));
}

/* Printable start of a template's source for a message: at most 40
 * bytes, newlines and control bytes as spaces. */
static void chat_excerpt(const char *src, char *buf, size_t cap)
{
	size_t n = 0;

	for (; src[n] != '\0' && n < 40 && n + 4 < cap; n++)
		buf[n] = (unsigned char)src[n] < 0x20 || src[n] == 0x7f ? ' ' : src[n];
	if (src[n] != '\0' && n + 4 < cap) {
		memcpy(buf + n, "...", 3);
		n += 3;
	}
	buf[n] = '\0';
}

/* Whether the vocab has marker as one token. */
static bool chat_has_token(const struct vocab *v, const char *marker)
{
	return vocab_lookup(v, marker, strlen(marker)) >= 0;
}

/* Every marker the layout needs must be one token of the vocab. */
static int chat_check_markers(const struct chat_template *t, const struct vocab *v, struct err *e)
{
	const struct chat_layout *l = &chat_layouts[t->style];
	char buf[64];
	const char *need[4] = { chat_open_marker(l, "user", buf, sizeof buf), l->close, NULL, NULL };

	if (t->style == CHAT_LLAMA3)
		need[2] = "<|end_header_id|>";
	if (t->style == CHAT_PHI3)
		need[2] = "<|assistant|>";
	if (t->style == CHAT_MISTRAL)
		need[0] = NULL; /* [INST] may be plain text (older vocabularies) */
	for (size_t i = 0; i < KVS_ARRAY_LEN(need); i++)
		if (need[i] != NULL && !chat_has_token(v, need[i]))
			return err_set(e, KVS_EFORMAT,
			               "chat template '%s' needs the token %s, which the vocabulary lacks",
			               t->name, need[i]);
	return KVS_OK;
}

/* The layout's index by name, or -1. */
static int chat_style_by_name(const char *name)
{
	for (size_t i = 0; i < KVS_ARRAY_LEN(chat_layouts); i++)
		if (strcmp(chat_layouts[i].name, name) == 0)
			return (int)i;
	return -1;
}

/* The layout whose marker the vocab has (the first in table order), or -1. */
static int chat_style_by_vocab(const struct vocab *v)
{
	for (size_t i = 0; i < KVS_ARRAY_LEN(chat_layouts); i++) {
		char buf[64];
		if (i != CHAT_MISTRAL &&
		    chat_has_token(v, chat_open_marker(&chat_layouts[i], "user", buf, sizeof buf)))
			return (int)i;
	}
	return -1;
}

int chat_template_init(struct chat_template *t, const char *src, const char *force,
                       const struct vocab *v, struct err *e)
{
	int style = -1;
	char ex[48];

	memset(t, 0, sizeof *t);
	if (force != NULL) {
		style = chat_style_by_name(force);
		if (style < 0)
			return err_set(e, KVS_EARG,
			               "--template '%s': expected one of chatml, llama3, gemma, phi3, "
			               "mistral",
			               force);
	}
	for (size_t i = 0; style < 0 && src != NULL && i < KVS_ARRAY_LEN(chat_layouts); i++)
		if (strstr(src, chat_layouts[i].detect) != NULL)
			style = (int)i;
	/* No (or an unknown) template: pick the layout whose markers the vocab has. */
	if (style < 0) {
		style = chat_style_by_vocab(v);
		if (src != NULL)
			chat_excerpt(src, ex, sizeof ex);
		if (style < 0)
			return err_set(e, KVS_EUNSUPPORTED,
			               "chat template %s%s%s not recognised and the vocabulary has none of "
			               "the chatml, llama3, gemma or phi3 markers; use --raw or "
			               "--template NAME",
			               src ? "'" : "(none)", src ? ex : "", src ? "'" : "");
		snprintf(t->note, sizeof t->note,
		         "chat template %s%s%s not recognised; using %s, whose markers the "
		         "vocabulary has (--template NAME overrides)",
		         src ? "'" : "(none)", src ? ex : "", src ? "'" : "", chat_layouts[style].name);
	}
	t->style = (enum chat_style)style;
	t->name = chat_layouts[style].name;
	t->inst_tokens = chat_has_token(v, "[INST]") && chat_has_token(v, "[/INST]");
	int rc = chat_check_markers(t, v, e);
	if (rc != KVS_OK)
		return rc;
	if (style == CHAT_CHATML)
		t->default_system = chat_find_default_system(src);
	t->think = src != NULL && strstr(src, "<think>") != NULL && chat_has_token(v, "<think>") &&
	        chat_has_token(v, "</think>");
	return KVS_OK;
}

void chat_template_free(struct chat_template *t)
{
	free(t->default_system);
	t->default_system = NULL;
}

bool chat_system(const struct chat_template *t, const char *system, struct chat_prompt *p)
{
	if (system == NULL)
		system = t->default_system;
	if (system == NULL || system[0] == '\0')
		return false;
	if (!chat_layouts[t->style].has_system) {
		/* Gemma and Mistral have no system role: their templates (and
		 * llama.cpp's built-in ones) put the system text at the start of
		 * the first user turn, a blank line after it. */
		chat_header(t, "user", p);
		chat_push_str(p, system, false);
		chat_push_str(p, "\n\n", false);
		return true;
	}
	chat_message(t, "system", system, p);
	return false;
}

/* A message's content and its close, after its header. */
static void chat_body(const struct chat_template *t, bool answer, const char *content,
                      struct chat_prompt *p)
{
	const struct chat_layout *l = &chat_layouts[t->style];

	chat_push_str(p, content, false);
	if (t->style == CHAT_MISTRAL && !answer) {
		chat_push_str(p, " ", false);
		chat_push_str(p, "[/INST]", t->inst_tokens);
		return;
	}
	chat_push_str(p, l->close, true);
	chat_push_str(p, l->after_close, false);
}

void chat_message(const struct chat_template *t, const char *role, const char *content,
                  struct chat_prompt *p)
{
	bool answer = strcmp(role, "assistant") == 0;

	if (t->style == CHAT_GEMMA && answer)
		role = chat_layouts[t->style].assistant;
	chat_header(t, role, p);
	chat_body(t, answer, content, p);
}

void chat_user_rest(const struct chat_template *t, const char *content, struct chat_prompt *p)
{
	chat_body(t, false, content, p);
}

void chat_first_user(const struct chat_template *t, const char *system, const char *content,
                     struct chat_prompt *ps, struct chat_prompt *pu)
{
	if (chat_system(t, system, ps))
		chat_user_rest(t, content, pu);
	else
		chat_message(t, "user", content, pu);
}

void chat_generation_prompt(const struct chat_template *t, struct chat_prompt *p)
{
	chat_header(t, chat_layouts[t->style].assistant, p);
	if (t->think && t->no_think) {
		/* qwen3's switch: an empty thought, and the answer follows */
		chat_push_str(p, "<think>", true);
		chat_push_str(p, "\n\n", false);
		chat_push_str(p, "</think>", true);
		chat_push_str(p, "\n\n", false);
	}
}

void chat_close(const struct chat_template *t, struct chat_prompt *p)
{
	chat_push_str(p, chat_layouts[t->style].close, true);
	chat_push_str(p, chat_layouts[t->style].after_close, false);
}

void chat_reply_end(const struct chat_template *t, struct chat_prompt *p)
{
	chat_push_str(p, chat_layouts[t->style].after_close, false);
}

bool chat_strip_think(char *text, size_t *len)
{
	static const char open[] = "<think>", close[] = "</think>";
	char *a = memmem(text, *len, open, sizeof open - 1), *b;

	if (a == NULL)
		return false;
	b = memmem(a, *len - (size_t)(a - text), close, sizeof close - 1);
	if (b == NULL)
		return false;
	b += sizeof close - 1;
	while (b < text + *len && (*b == '\n' || *b == ' '))
		b++;
	memmove(a, b, *len - (size_t)(b - text));
	*len -= (size_t)(b - a);
	return true;
}

char *chat_prompt_text(const struct chat_prompt *p)
{
	size_t total = 0, off = 0;
	char *s;

	for (size_t i = 0; i < p->n; i++)
		total += p->seg[i].len;
	s = xmalloc(total + 1);
	for (size_t i = 0; i < p->n; i++) {
		memcpy(s + off, p->seg[i].text, p->seg[i].len);
		off += p->seg[i].len;
	}
	s[off] = '\0';
	return s;
}

int chat_tokenize(const struct vocab *v, const struct chat_prompt *p, int32_t **ids, size_t *n,
                  size_t *cap, struct err *e)
{
	for (size_t i = 0; i < p->n; i++) {
		const struct chat_seg *s = &p->seg[i];
		if (s->special) {
			int32_t id = vocab_lookup(v, s->text, s->len);
			if (id < 0)
				return err_set(e, KVS_EFORMAT, "chat marker %s is not a token of this vocabulary",
				               s->text);
			if (*n == *cap) {
				*cap = *cap ? *cap * 2 : 64;
				*ids = xreallocarray(*ids, *cap, sizeof **ids);
			}
			(*ids)[(*n)++] = id;
		} else {
			int rc = vocab_tokenize(v, s->text, s->len, false, false, ids, n, cap, e);
			if (rc != KVS_OK)
				return rc;
		}
	}
	return KVS_OK;
}

void chat_prompt_free(struct chat_prompt *p)
{
	for (size_t i = 0; i < p->n; i++)
		free(p->seg[i].text);
	free(p->seg);
	p->seg = NULL;
	p->n = p->cap = 0;
}
