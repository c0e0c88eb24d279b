/*
 * test-chat.c: chat templates (chat.c) on tiny models whose vocabularies
 * carry each layout's markers.
 *
 * The expected prompts are written out by hand from each family's published
 * format (ChatML, Llama 3, Gemma, Phi-3, Mistral [INST], Qwen3 with
 * enable_thinking=false): the rendered text, and which segments are markers
 * (one token each) rather than text. Recognition goes by the template's
 * source; an unknown source names itself and the fallback in one line;
 * --template NAME overrides both.
 */
#include "model/model.h"
#include "tests/unit/test.h"
#include "tests/util/ggufw.h"
#include "tests/util/tinymodel.h"

#include <string.h>

/* Every marker of every layout, so one vocabulary serves them all. */
static const char *const markers[] = {
	"<|start_header_id|>",
	"<|end_header_id|>",
	"<|eot_id|>",
	"<start_of_turn>",
	"<end_of_turn>",
	"<|system|>",
	"<|user|>",
	"<|assistant|>",
	"<|end|>",
	"[INST]",
	"[/INST]",
	"</s>",
	"<think>",
	"</think>",
};

/* A tiny model with the given template source (NULL: none) and markers. */
static struct model *chat_model(const char *src, uint32_t n_markers, uint8_t **buf)
{
	struct tinymodel_spec s;
	struct ggufw *w = ggufw_new();
	struct gguf_file *f;
	struct model *m = NULL;
	struct err e;
	size_t n;

	tinymodel_defaults(&s, "llama");
	s.chat_template = src != NULL;
	s.template_src = src;
	s.extra_tokens = markers;
	s.n_extra_tokens = n_markers;
	tinymodel_add(w, &s);
	ggufw_write_mem(w, buf, &n);
	T_EQ_INT(gguf_open_memory(&f, *buf, n, &e), KVS_OK);
	T_EQ_INT(model_load_gguf(&m, f, &e), KVS_OK);
	ggufw_free(w);
	return m;
}

/* Render system + user + generation prompt (+ a reply when given) and
 * compare the text and the list of markers ("|"-joined). */
static void check_render(const char *what, const struct chat_template *t, const char *system,
                         const char *reply, const char *want_text, const char *want_markers)
{
	struct chat_prompt p = { 0 };
	char got_markers[512] = "";
	size_t o = 0;

	chat_first_user(t, system, "Hi there", &p, &p);
	if (reply != NULL)
		chat_message(t, "assistant", reply, &p);
	chat_generation_prompt(t, &p);
	char *text = chat_prompt_text(&p);
	T_CHECK(strcmp(text, want_text) == 0, "%s: rendered\n'%s'\nexpected\n'%s'", what, text,
	        want_text);
	for (size_t i = 0; i < p.n; i++)
		if (p.seg[i].special)
			o += (size_t)snprintf(got_markers + o, sizeof got_markers - o, "%s%s", o ? "|" : "",
			                      p.seg[i].text);
	T_CHECK(strcmp(got_markers, want_markers) == 0, "%s: markers '%s', expected '%s'", what,
	        got_markers, want_markers);
	free(text);
	chat_prompt_free(&p);
}

/* Recognition and rendering of each layout. */
static void test_layouts(void)
{
	static const struct {
		const char *src; /* a template fragment as the family's files have it */
		const char *name;
		const char *text, *markers;
	} cases[] = {
		{ "{{ '<|im_start|>' + message['role'] }}", "chatml",
		  "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
		  "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>assistant\n",
		  "<|im_start|>|<|im_end|>|<|im_start|>|<|im_end|>|<|im_start|>|<|im_end|>|<|im_start|>" },
		{ "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}", "llama3",
		  "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
		  "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
		  "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
		  "<|start_header_id|>assistant<|end_header_id|>\n\n",
		  "<|start_header_id|>|<|end_header_id|>|<|eot_id|>|<|start_header_id|>|"
		  "<|end_header_id|>|<|eot_id|>|<|start_header_id|>|<|end_header_id|>|<|eot_id|>|"
		  "<|start_header_id|>|<|end_header_id|>" },
		{ "{{ '<start_of_turn>' + role + '\\n' }}", "gemma",
		  /* the system text opens the first user turn (Gemma 3's first_user_prefix) */
		  "<start_of_turn>user\nBe brief.\n\nHi there"
		  "<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n<start_of_turn>model\n",
		  "<start_of_turn>|<end_of_turn>|<start_of_turn>|<end_of_turn>|<start_of_turn>" },
		{ "{{'<|user|>' + '\\n' + message['content'] + '<|end|>' + '\\n' + '<|assistant|>'}}",
		  "phi3",
		  "<|system|>\nBe brief.<|end|>\n<|user|>\nHi there<|end|>\n<|assistant|>\nHello<|end|>\n"
		  "<|assistant|>\n",
		  "<|system|>|<|end|>|<|user|>|<|end|>|<|assistant|>|<|end|>|<|assistant|>" },
		{ "{{ '[INST] ' + message['content'] + ' [/INST]' }}", "mistral",
		  "[INST] Be brief.\n\nHi there [/INST]Hello</s>", "[INST]|[/INST]|</s>" },
	};
	for (size_t c = 0; c < KVS_ARRAY_LEN(cases); c++) {
		uint8_t *buf = NULL;
		struct model *m = chat_model(cases[c].src, KVS_ARRAY_LEN(markers), &buf);
		struct chat_template t;
		struct err e;
		if (m == NULL) {
			free(buf);
			continue;
		}
		T_EQ_INT(chat_template_init(&t, m->chat_template, NULL, m->vocab, &e), KVS_OK);
		T_EQ_STR(t.name, cases[c].name);
		T_EQ_STR(t.note, "");
		check_render(cases[c].name, &t, "Be brief.", "Hello", cases[c].text, cases[c].markers);
		/* the markers tokenize to one token each; text never to a marker */
		struct chat_prompt p = { 0 };
		int32_t *ids = NULL;
		size_t n = 0, cap = 0, n_special = 0;
		chat_message(&t, "user", "<|im_end|>[INST]<|end|>", &p);
		T_EQ_INT(chat_tokenize(m->vocab, &p, &ids, &n, &cap, &e), KVS_OK);
		for (size_t i = 0; i < n; i++)
			n_special += vocab_token_attr(m->vocab, ids[i]) == TOKEN_CONTROL;
		size_t want_special = 0;
		for (size_t i = 0; i < p.n; i++)
			want_special += p.seg[i].special;
		T_CHECK(n_special == want_special, "%s: %zu control tokens, expected %zu (the markers)",
		        cases[c].name, n_special, want_special);
		free(ids);
		chat_prompt_free(&p);
		chat_template_free(&t);
		model_free(m);
		free(buf);
	}
}

/* Qwen3: <think> in the source; no_think opens the answer with an empty
 * thought; chat_strip_think hides a thought from a reply. */
static void test_qwen3_think(void)
{
	static const char src[] = "{{ '<|im_start|>' + message.role }}{{ '<think>\\n\\n</think>' }}";
	uint8_t *buf = NULL;
	struct model *m = chat_model(src, KVS_ARRAY_LEN(markers), &buf);
	struct chat_template t;
	struct err e;

	if (m != NULL) {
		T_EQ_INT(chat_template_init(&t, m->chat_template, NULL, m->vocab, &e), KVS_OK);
		T_EQ_STR(t.name, "chatml");
		T_EQ_INT(t.think, 1);
		check_render("qwen3 thinking", &t, "", NULL,
		             "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
		             "<|im_start|>|<|im_end|>|<|im_start|>");
		t.no_think = true;
		check_render("qwen3 no_think", &t, "", NULL,
		             "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
		             "<think>\n\n</think>\n\n",
		             "<|im_start|>|<|im_end|>|<|im_start|>|<think>|</think>");
		chat_template_free(&t);
		model_free(m);
	}
	free(buf);

	char reply[] = "<think>\nThe user greets.\n</think>\n\nHello!";
	size_t len = strlen(reply);
	T_EQ_INT(chat_strip_think(reply, &len), 1);
	T_CHECK(len == 6 && memcmp(reply, "Hello!", 6) == 0, "stripped: '%.*s'", (int)len, reply);
	char open[] = "<think>\nstill thinking";
	len = strlen(open);
	T_EQ_INT(chat_strip_think(open, &len), 0);
	T_EQ_INT(len, strlen("<think>\nstill thinking"));
}

/* An unknown source names itself and the fallback; --template overrides;
 * a bad name or a layout the vocabulary cannot spell is refused. */
static void test_unknown_and_override(void)
{
	static const char src[] =
	        "{% for m in messages %}<<{{ m.role }}>>\n{{ m.content }}{% endfor %}";
	uint8_t *buf = NULL;
	struct model *m = chat_model(src, KVS_ARRAY_LEN(markers), &buf);
	struct chat_template t;
	struct err e;

	if (m != NULL) {
		T_EQ_INT(chat_template_init(&t, m->chat_template, NULL, m->vocab, &e), KVS_OK);
		T_EQ_STR(t.name, "chatml");
		T_CHECK(strstr(t.note, "chat template '{% for m in messages %}<<{{ m.role }}>> ...'") &&
		                strstr(t.note, "not recognised; using chatml") &&
		                strstr(t.note, "--template NAME"),
		        "note: %s", t.note);
		T_CHECK(strchr(t.note, '\n') == NULL, "one line: %s", t.note);
		chat_template_free(&t);
		T_EQ_INT(chat_template_init(&t, m->chat_template, "phi3", m->vocab, &e), KVS_OK);
		T_EQ_STR(t.name, "phi3");
		T_EQ_STR(t.note, "");
		chat_template_free(&t);
		T_EQ_INT(chat_template_init(&t, m->chat_template, "vicuna", m->vocab, &e), KVS_EARG);
		T_CHECK(strstr(e.msg, "--template 'vicuna'") && strstr(e.msg, "phi3, mistral"), "msg: %s",
		        e.msg);
		model_free(m);
	}
	free(buf);

	/* only ChatML's markers: asking for llama3 names the missing token */
	m = chat_model(NULL, 0, &buf);
	if (m != NULL) {
		T_EQ_INT(chat_template_init(&t, NULL, NULL, m->vocab, &e), KVS_OK);
		T_EQ_STR(t.name, "chatml");
		T_CHECK(strstr(t.note, "chat template (none) not recognised"), "note: %s", t.note);
		chat_template_free(&t);
		T_EQ_INT(chat_template_init(&t, NULL, "llama3", m->vocab, &e), KVS_EFORMAT);
		T_CHECK(strstr(e.msg, "'llama3' needs the token <|start_header_id|>"), "msg: %s", e.msg);
		model_free(m);
	}
	free(buf);
}

int main(void)
{
	test_layouts();
	test_qwen3_think();
	test_unknown_and_override();
	return t_done("test-chat");
}
