/*
 * test-session.c: the chat session (src/app/session.c) on a tiny generated
 * model.
 *
 *   - the tokens an exchange feeds are exactly the ChatML text of the
 *     system turn, the user turn and the reply header, tokenized here with
 *     special tokens parsed (an independent path from chat.c's segments),
 *     and the greedy reply equals what a bare gen fed with those tokens
 *     produces;
 *   - the next exchange starts where the previous one's closing markers end;
 *   - the token hook sees every sampled token, and its text is the reply;
 *   - session_cancel stops the reply with stop "user" and the session goes on;
 *   - empty and non-UTF-8 messages are refused and leave no turn behind;
 *   - a cache that never evicts, once full, restarts the conversation and
 *     keeps the history.
 */
#include "app/app.h"
#include "tests/unit/test.h"
#include "tests/util/tinymodel.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *model_path;

static void config(struct session_config *c, uint32_t max_tokens)
{
	session_config_default(c);
	c->gen.model_path = model_path;
	c->gen.engine.backend = ENGINE_BACKEND_CPU;
	c->gen.engine.n_threads = 1;
	c->gen.engine.n_ctx = 256;
	c->gen.sampler.temp = 0; /* greedy */
	c->max_tokens = max_tokens;
	c->system = "be brief";
}

struct seen {
	int32_t ids[512];
	uint32_t n;
	char text[4096];
	size_t len;
	uint32_t starts, ends;
};

static void on_token(void *ud, const struct gen_token *t)
{
	struct seen *s = ud;
	if (s->n < 512)
		s->ids[s->n++] = t->id;
	if (s->len + t->len < sizeof s->text) {
		memcpy(s->text + s->len, t->text, t->len);
		s->len += t->len;
		s->text[s->len] = '\0';
	}
}

static void on_start(void *ud, uint32_t index, const char *user)
{
	(void)index;
	(void)user;
	((struct seen *)ud)->starts++;
}

static void on_end(void *ud, const struct session_turn *t)
{
	(void)t;
	((struct seen *)ud)->ends++;
}

/* Tokens of ChatML text with the markers parsed as special tokens. */
static size_t chatml_ids(const struct vocab *v, const char *text, int32_t **ids)
{
	size_t n = 0, cap = 0;
	struct err e;
	*ids = NULL;
	if (vocab_tokenize(v, text, strlen(text), false, true, ids, &n, &cap, &e) != KVS_OK) {
		fprintf(stderr, "tokenize: %s\n", e.msg);
		exit(99);
	}
	return n;
}

static void test_exchange(void)
{
	struct session_config c;
	struct session *s;
	struct err e;
	struct seen seen = { 0 };

	config(&c, 24);
	T_CHECK(session_open(&s, &c, &e) == KVS_OK, "%s", e.msg);
	struct gen *g = session_gen(s);
	session_set_hooks(
	        s,
	        &(struct session_hooks){
	                .turn_start = on_start, .token = on_token, .turn_end = on_end, .ud = &seen });
	T_CHECK(session_chat(s, "hello there", &e) == KVS_OK, "%s", e.msg);
	T_EQ_INT(session_n_turns(s), 1);
	const struct session_turn *t = session_turn_at(s, 0);
	T_EQ_INT(seen.starts, 1);
	T_EQ_INT(seen.ends, 1);
	T_EQ_INT(t->index, 0);
	T_EQ_INT(t->first_pos, 0);
	T_EQ_STR(t->user, "hello there");

	/* what was fed: the ChatML text, tokenized independently */
	int32_t *want;
	size_t n_want = chatml_ids(gen_vocab(g),
	                           "<|im_start|>system\nbe brief<|im_end|>\n"
	                           "<|im_start|>user\nhello there<|im_end|>\n"
	                           "<|im_start|>assistant\n",
	                           &want);
	T_EQ_INT(t->n_prompt, n_want);
	const struct kv_tok *toks = kv_cache_toks(gen_kv(g));
	bool same = kv_cache_n(gen_kv(g)) >= n_want;
	for (size_t i = 0; same && i < n_want; i++)
		same = toks[i].token == want[i] && toks[i].orig_pos == (int32_t)i;
	T_CHECK(same, "the cache does not start with the ChatML tokens of the exchange");

	/* the token hook saw every sampled token, and the reply is their text */
	T_EQ_INT(seen.n, t->n_reply);
	T_CHECK(t->n_reply > 0, "no reply tokens");
	T_CHECK(strncmp(t->reply, seen.text, seen.len) == 0, "reply '%s' does not start with '%s'",
	        t->reply, seen.text);
	T_CHECK(t->stop == GEN_STOP_EOS || t->stop == GEN_STOP_MAX_TOKENS, "stop %s",
	        gen_stop_name(t->stop));

	/* a bare gen fed the same tokens replies the same (greedy) */
	struct gen *g2;
	T_CHECK(gen_open(&g2, &c.gen, &e) == KVS_OK, "%s", e.msg);
	T_CHECK(gen_feed(g2, want, n_want, &e) == KVS_OK, "%s", e.msg);
	bool equal = true;
	for (uint32_t i = 0; i < seen.n && equal; i++) {
		int32_t id = gen_sample(g2);
		sampler_accept(gen_sampler(g2), id);
		equal = id == seen.ids[i];
		if (equal && gen_feed(g2, &id, 1, &e) != KVS_OK)
			equal = false;
	}
	T_CHECK(equal, "the session's greedy reply differs from a bare gen's");
	gen_close(g2);
	free(want);

	/* the next exchange starts after the closing markers */
	int32_t end_pos = kv_cache_next_pos(gen_kv(g));
	int32_t closing = t->stop == GEN_STOP_EOS ? 1 : 2; /* "\n" or "<|im_end|>\n" */
	T_EQ_INT(end_pos, (int32_t)(t->n_prompt + t->n_reply) + closing);
	memset(&seen, 0, sizeof seen);
	T_CHECK(session_chat(s, "and then?", &e) == KVS_OK, "%s", e.msg);
	t = session_turn_at(s, 1);
	if (t == NULL)
		return;
	T_EQ_INT(t->index, 1);
	T_EQ_INT(t->first_pos, end_pos);
	n_want = chatml_ids(gen_vocab(g),
	                    "<|im_start|>user\nand then?<|im_end|>\n"
	                    "<|im_start|>assistant\n",
	                    &want);
	T_EQ_INT(t->n_prompt, n_want);
	free(want);

	/* a cancel after the reply ended reaches nothing (sealed) */
	T_CHECK(!session_cancel(s), "a cancel between exchanges reached an ended reply");
	T_CHECK(session_chat(s, "go on", &e) == KVS_OK, "%s", e.msg);
	T_CHECK(session_turn_at(s, 2)->stop != GEN_STOP_USER, "a late cancel stopped the next reply");
	/* cancellation before the reply: stop "user", no tokens, session goes on */
	session_cancel_next(s);
	T_CHECK(session_chat(s, "stop now", &e) == KVS_OK, "%s", e.msg);
	t = session_turn_at(s, 3);
	if (t == NULL)
		return;
	T_CHECK(t->stop == GEN_STOP_USER, "stop %s, expected user", gen_stop_name(t->stop));
	T_EQ_INT(t->n_reply, 0);
	T_CHECK(session_chat(s, "again", &e) == KVS_OK, "%s", e.msg);
	T_CHECK(session_turn_at(s, 4)->stop != GEN_STOP_USER, "cancel flag was not cleared");

	/* bad input leaves no turn */
	T_EQ_INT(session_chat(s, "", &e), KVS_EARG);
	T_EQ_INT(session_chat(s, "bad \xff byte", &e), KVS_EARG);
	T_CHECK(strstr(e.msg, "UTF-8") != NULL, "message: %s", e.msg);
	T_EQ_INT(session_n_turns(s), 5);

	/* reset: an empty cache and no history */
	session_reset(s);
	T_EQ_INT(session_n_turns(s), 0);
	T_EQ_INT(kv_cache_n(gen_kv(g)), 0);
	session_close(s);
}

static void test_full_restarts(void)
{
	struct session_config c;
	struct session *s;
	struct err e;

	config(&c, 8);
	c.gen.kv.budget = 80; /* policy full: never evicts; an exchange is ~60 tokens */
	T_CHECK(session_open(&s, &c, &e) == KVS_OK, "%s", e.msg);
	uint32_t restarts = 0;
	for (int i = 0; i < 6; i++) {
		T_CHECK(session_chat(s, "tell me more", &e) == KVS_OK, "turn %d: %s", i, e.msg);
		const struct session_turn *t = session_turn_at(s, session_n_turns(s) - 1);
		if (t == NULL)
			break;
		restarts += t->restarted;
		if (t->restarted)
			T_EQ_INT(t->first_pos, 0);
		T_CHECK(kv_cache_n(gen_kv(session_gen(s))) <= 80, "cache over budget");
	}
	T_EQ_INT(session_n_turns(s), 6);
	T_CHECK(restarts > 0, "an 80-token cache held six exchanges");
	session_close(s);
}

int main(void)
{
	model_path = tinymodel_write_temp("session");
	test_exchange();
	test_full_restarts();
	unlink(model_path);
	free(model_path);
	return t_done("test-session");
}
