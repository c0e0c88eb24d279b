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
 */
#include "model/model.h"

#include <stdlib.h>
#include <string.h>

/* One layout: how a message is wrapped. */
struct chat_layout {
	const char *name;
	const char *detect;      /* substring of the Jinja source that identifies it */
	const char *open;        /* special marker before the role */
	const char *role_suffix; /* raw text after the role */
	const char *close;       /* special marker after the content */
	const char *after_close; /* raw text after the closing marker */
	const char *assistant;   /* the role name the model answers as */
	bool has_system;         /* a system role exists */
};

static const struct chat_layout chat_layouts[] = {
	[CHAT_CHATML] = { "chatml", "<|im_start|>", "<|im_start|>", "\n", "<|im_end|>", "\n",
	                  "assistant", true },
	[CHAT_LLAMA3] = { "llama3", "<|start_header_id|>", "<|start_header_id|>", "<|end_header_id|>",
	                  "<|eot_id|>", "", "assistant", true },
	[CHAT_GEMMA] = { "gemma", "<start_of_turn>", "<start_of_turn>", "\n", "<end_of_turn>", "\n",
	                 "model", false },
};

static const char *const chat_names[] = { "chatml", "llama3", "gemma", NULL };

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

/* The llama3 header is "<|start_header_id|>role<|end_header_id|>\n\n": its
 * role suffix is itself a marker followed by raw text. */
static void chat_header(const struct chat_template *t, const char *role, struct chat_prompt *p)
{
	const struct chat_layout *l = &chat_layouts[t->style];

	chat_push_str(p, l->open, true);
	chat_push_str(p, role, false);
	if (t->style == CHAT_LLAMA3) {
		chat_push_str(p, "<|end_header_id|>", true);
		chat_push_str(p, "\n\n", false);
	} else {
		chat_push_str(p, l->role_suffix, false);
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

int chat_template_init(struct chat_template *t, const char *src, const struct vocab *v,
                       struct err *e)
{
	size_t i;
	int style = -1;

	memset(t, 0, sizeof *t);
	for (i = 0; i < KVS_ARRAY_LEN(chat_layouts); i++) {
		if (src != NULL && strstr(src, chat_layouts[i].detect) != NULL) {
			style = (int)i;
			break;
		}
	}
	/* No (or an unknown) template: pick the layout whose markers the vocab has. */
	if (style < 0) {
		for (i = 0; i < KVS_ARRAY_LEN(chat_layouts); i++) {
			const char *m = chat_layouts[i].open;
			if (vocab_lookup(v, m, strlen(m)) >= 0) {
				style = (int)i;
				break;
			}
		}
	}
	if (style < 0)
		return err_set(e, KVS_EUNSUPPORTED,
		               "chat template not recognised and the vocabulary has none of the "
		               "chatml, llama3 or gemma markers; use --raw");
	t->style = (enum chat_style)style;
	t->name = chat_layouts[style].name;
	/* Every marker of the layout must be a single token. */
	{
		const char *need[3] = { chat_layouts[style].open, chat_layouts[style].close,
			                    style == CHAT_LLAMA3 ? "<|end_header_id|>" : NULL };
		for (i = 0; i < 3; i++) {
			if (need[i] != NULL && vocab_lookup(v, need[i], strlen(need[i])) < 0)
				return err_set(e, KVS_EFORMAT,
				               "chat template '%s' needs the token %s, which the vocabulary "
				               "lacks",
				               t->name, need[i]);
		}
	}
	if (style == CHAT_CHATML)
		t->default_system = chat_find_default_system(src);
	return KVS_OK;
}

void chat_template_free(struct chat_template *t)
{
	free(t->default_system);
	t->default_system = NULL;
}

void chat_system(const struct chat_template *t, const char *system, struct chat_prompt *p)
{
	if (system == NULL)
		system = t->default_system;
	if (system == NULL || system[0] == '\0')
		return;
	if (!chat_layouts[t->style].has_system) {
		/* Gemma has no system role: the convention is a user turn. */
		chat_message(t, "user", system, p);
		return;
	}
	chat_message(t, "system", system, p);
}

void chat_message(const struct chat_template *t, const char *role, const char *content,
                  struct chat_prompt *p)
{
	const struct chat_layout *l = &chat_layouts[t->style];

	if (t->style == CHAT_GEMMA && strcmp(role, "assistant") == 0)
		role = l->assistant;
	chat_header(t, role, p);
	chat_push_str(p, content, false);
	chat_push_str(p, l->close, true);
	chat_push_str(p, l->after_close, false);
}

void chat_generation_prompt(const struct chat_template *t, struct chat_prompt *p)
{
	chat_header(t, chat_layouts[t->style].assistant, p);
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
