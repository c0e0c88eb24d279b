/*
 * kv_span.c: spans, the units that span-coherent retention keeps or drops
 * whole (the span option every policy takes; kv_cache.h).
 *
 * Token-granular eviction breaks facts: a policy that keeps "TIG" and "-42"
 * of " TIGER-42" but drops "ER" leaves the model a value that was never
 * said, worse than none. So before a selection the cache cuts its
 * candidates into spans, and every selection helper (kv_policy.c) marks
 * whole spans: a span that does not fit what is left of a count is skipped
 * (top-k) or ends the walk (sinks, the recent window). A selection thus
 * keeps at most its target, possibly a few tokens fewer (less than one
 * span), and never a part of a span; kv_span_split is the witness the cache
 * checks after each selection.
 *
 * Boundaries come from the token texts alone: a class byte per token id
 * (leading or trailing whitespace, control token, digit), computed once
 * per cache from the vocabulary. A span is a maximal run of neighbouring
 * tokens (in the cache and in the stream) with no whitespace or control
 * token between them, cut every KV_SPAN_MAX_TOKENS so that text without
 * spaces (CJK, a long URL) still evicts in bounded pieces. Tokens not
 * neighbours in the stream (something between them was evicted) or with a
 * pinned token between them (pinned tokens are no candidates) never join.
 */
#include "kv/kv-int.h"

#include <stdlib.h>

/* Whether byte b is ASCII whitespace. */
static bool span_ws(unsigned char b)
{
	return b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\v' || b == '\f';
}

uint8_t *kv_span_classes(const struct vocab *v)
{
	uint32_t n = vocab_n_tokens(v);
	uint8_t *cls = xmalloc(n ? n : 1);
	size_t cap = 256;
	char *buf = xmalloc(cap);
	for (uint32_t id = 0; id < n; id++) {
		int attr = vocab_token_attr(v, (int32_t)id);
		size_t len = vocab_piece(v, (int32_t)id, false, buf, cap);
		if (len > cap) {
			cap = len;
			buf = xrealloc(buf, cap);
			len = vocab_piece(v, (int32_t)id, false, buf, cap);
		}
		uint8_t c = 0;
		if (attr == TOKEN_CONTROL || attr == TOKEN_UNKNOWN || attr == TOKEN_UNUSED || len == 0)
			c |= KV_CLS_SPECIAL;
		if (len > 0 && span_ws((unsigned char)buf[0]))
			c |= KV_CLS_LEAD_WS;
		if (len > 0 && span_ws((unsigned char)buf[len - 1]))
			c |= KV_CLS_TRAIL_WS;
		for (size_t k = 0; k < len; k++)
			if (buf[k] >= '0' && buf[k] <= '9') {
				c |= KV_CLS_DIGIT;
				break;
			}
		cls[id] = c;
	}
	free(buf);
	return cls;
}

/* The class of token id (special when outside the table). */
static uint8_t span_cls(const uint8_t *cls, uint32_t n_cls, int32_t id)
{
	return id >= 0 && (uint32_t)id < n_cls ? cls[id] : KV_CLS_SPECIAL;
}

void kv_span_find(const uint8_t *cls, uint32_t n_cls, const struct kv_tok *toks,
                  const uint32_t *cand, uint32_t n, enum kv_span_mode mode, uint32_t *sbeg,
                  uint32_t *send)
{
	uint32_t start = 0;
	for (uint32_t i = 0; i < n; i++) {
		bool join = false;
		if (mode != KV_SPAN_OFF && cls != NULL && i > 0 && cand[i] == cand[i - 1] + 1 &&
		    i - start < KV_SPAN_MAX_TOKENS) {
			const struct kv_tok *a = &toks[cand[i - 1]], *b = &toks[cand[i]];
			uint8_t ca = span_cls(cls, n_cls, a->token), cb = span_cls(cls, n_cls, b->token);
			join = b->orig_pos == a->orig_pos + 1 && !(ca & (KV_CLS_SPECIAL | KV_CLS_TRAIL_WS)) &&
			        !(cb & (KV_CLS_SPECIAL | KV_CLS_LEAD_WS));
		}
		if (!join)
			start = i;
		sbeg[i] = start;
	}
	for (uint32_t i = n; i-- > 0;)
		send[i] = i + 1 < n && sbeg[i + 1] == sbeg[i] ? send[i + 1] : i + 1;
	if (mode != KV_SPAN_NUMBER)
		return;
	for (uint32_t b = 0; b < n;) {
		uint32_t e = send[b];
		bool digit = false;
		for (uint32_t i = b; i < e && !digit; i++)
			digit = (span_cls(cls, n_cls, toks[cand[i]].token) & KV_CLS_DIGIT) != 0;
		for (uint32_t i = b; i < e && !digit; i++) {
			sbeg[i] = i;
			send[i] = i + 1;
		}
		b = e;
	}
}

int64_t kv_span_split(const struct kv_select *s)
{
	if (s->sbeg == NULL || s->send == NULL)
		return -1;
	for (uint32_t i = 0; i < s->n; i++) {
		uint32_t b = s->sbeg[i];
		if (b > i || s->send[i] <= i || s->send[i] > s->n ||
		    ((s->keep[i] ^ s->keep[b]) & KV_KEEP) != 0)
			return i;
	}
	return -1;
}
