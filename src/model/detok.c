/*
 * detok.c: token ids back to text: one token's bytes as llama.cpp renders
 * them (vocab_piece), and the streaming detokenizer (detok_*).
 *
 * A BPE token's text is spelled in GPT-2's byte alphabet and is mapped back
 * byte by byte; an SPM token's U+2581 become spaces and its <0xNN> byte
 * tokens the byte. Special tokens show only when asked for.
 *
 * The stream holds back an incomplete UTF-8 sequence at a token edge, so it
 * never shows half a character; a sequence that turns out broken becomes
 * one U+FFFD and the byte that broke it starts afresh.
 */
#include "model/model-int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Copy src[0, n) to buf if it fits; return n. */
static size_t piece_copy(char *buf, size_t cap, const char *src, size_t n)
{
	if (n <= cap)
		memcpy(buf, src, n);
	return n;
}

/* BPE: map the byte-alphabet text of a token back to bytes. */
static size_t piece_bpe(const struct vocab *v, struct gguf_str t, char *buf, size_t cap)
{
	size_t pos = 0, n = 0, k, nb;
	uint32_t cp;
	char u[4], hex[4];

	while (pos < t.n) {
		pos += ucp_decode_lax((const uint8_t *)t.p + pos, t.n - pos, &cp);
		if (cp < 0x144 && v->unbyte[cp] >= 0) {
			if (n < cap)
				buf[n] = (char)v->unbyte[cp];
			n++;
			continue;
		}
		/* not in the alphabet: llama.cpp writes a marker, and so do we */
		n += piece_copy(buf + KVS_MIN(n, cap), n < cap ? cap - n : 0, "[UNK_BYTE_0x", 12);
		nb = utf8_encode_any(cp, u);
		for (k = 0; k < nb; k++) {
			snprintf(hex, sizeof(hex), "%02x", (uint8_t)u[k]);
			n += piece_copy(buf + KVS_MIN(n, cap), n < cap ? cap - n : 0, hex, 2);
		}
		n += piece_copy(buf + KVS_MIN(n, cap), n < cap ? cap - n : 0, t.p, t.n);
		n += piece_copy(buf + KVS_MIN(n, cap), n < cap ? cap - n : 0, "]", 1);
	}
	return n;
}

/* SPM: U+2581 back to spaces. */
static size_t piece_spm(struct gguf_str t, char *buf, size_t cap)
{
	size_t pos = 0, n = 0;

	while (pos < t.n) {
		if (t.n - pos >= 3 && memcmp(t.p + pos, "\xe2\x96\x81", 3) == 0) {
			if (n < cap)
				buf[n] = ' ';
			pos += 3;
		} else {
			if (n < cap)
				buf[n] = t.p[pos];
			pos++;
		}
		n++;
	}
	return n;
}

/* Bytes of one token as llama.cpp renders it; returns the full length. */
size_t vocab_piece(const struct vocab *v, int32_t id, bool render_special, char *buf, size_t cap)
{
	struct gguf_str t;
	uint16_t a;
	char b;

	if (id < 0 || (uint32_t)id >= v->n_tokens)
		return 0;
	a = v->attr[id];
	t = v->text[id];
	if (a & VOCAB_A_SPECIAL)
		return render_special ? piece_copy(buf, cap, t.p, t.n) : 0;
	if (a & VOCAB_A_USER)
		return piece_copy(buf, cap, t.p, t.n);
	if (a & VOCAB_A_NORMAL)
		return v->kind == VOCAB_BPE ? piece_bpe(v, t, buf, cap) : piece_spm(t, buf, cap);
	if ((a & VOCAB_A_BYTE) && v->kind == VOCAB_SPM) {
		b = (char)vocab_byte_of(t);
		return piece_copy(buf, cap, &b, 1);
	}
	return 0; /* unused / undefined: nothing, as llama.cpp */
}

/* Start a stream; SPM vocabularies drop the first text token's space. */
void detok_init(struct detok *d, const struct vocab *v, bool render_special)
{
	memset(d, 0, sizeof(*d));
	d->v = v;
	d->render_special = render_special;
	d->first = v->add_space_prefix;
}

/* Append n bytes to the output buffer. */
static void detok_out(char **out, size_t *n, size_t *cap, const char *p, size_t k)
{
	if (k == 0)
		return;
	if (*n + k > *cap) {
		*cap = KVS_MAX(*n + k, *cap * 2 + 64);
		*out = xrealloc(*out, *cap);
	}
	memcpy(*out + *n, p, k);
	*n += k;
}

/* May byte b follow pending[0..k) in a valid sequence? */
static bool detok_cont_ok(const char *pending, size_t k, uint8_t b)
{
	uint8_t lead = (uint8_t)pending[0], lo = 0x80, hi = 0xBF;

	if (k == 1) {
		if (lead == 0xE0)
			lo = 0xA0;
		else if (lead == 0xED)
			hi = 0x9F;
		else if (lead == 0xF0)
			lo = 0x90;
		else if (lead == 0xF4)
			hi = 0x8F;
	}
	return b >= lo && b <= hi;
}

static const char detok_fffd[] = "\xef\xbf\xbd";

/* Feed bytes through the UTF-8 assembler, writing whole characters. */
static void detok_feed(struct detok *d, const char *p, size_t k, char **out, size_t *n, size_t *cap)
{
	size_t i, run = 0;

	for (i = 0; i < k; i++) {
		uint8_t b = (uint8_t)p[i];

		if (d->n_pending == 0) {
			if (b < 0x80) {
				run++; /* ASCII runs are copied in one go */
				continue;
			}
			detok_out(out, n, cap, p + i - run, run);
			run = 0;
			if (utf8_lead_len(b) == 0) { /* a continuation or a never-lead byte */
				detok_out(out, n, cap, detok_fffd, 3);
				continue;
			}
			d->pending[d->n_pending++] = (char)b;
			continue;
		}
		if (detok_cont_ok(d->pending, d->n_pending, b)) {
			d->pending[d->n_pending++] = (char)b;
			if (d->n_pending == utf8_lead_len((uint8_t)d->pending[0])) {
				detok_out(out, n, cap, d->pending, d->n_pending);
				d->n_pending = 0;
			}
			continue;
		}
		/* the held sequence is broken: one U+FFFD, then b starts afresh */
		detok_out(out, n, cap, detok_fffd, 3);
		d->n_pending = 0;
		i--;
	}
	detok_out(out, n, cap, p + k - run, run);
}

/* Append the whole characters that id completes to out. */
size_t detok_push(struct detok *d, int32_t id, char **out, size_t *n, size_t *cap)
{
	char small[256], *buf = small;
	size_t len, before = *n, skip = 0;
	int attr = vocab_token_attr(d->v, id);

	len = vocab_piece(d->v, id, d->render_special, small, sizeof(small));
	if (len > sizeof(small)) {
		buf = xmalloc(len);
		vocab_piece(d->v, id, d->render_special, buf, len);
	}
	/* SPM: the space the tokenizer put before the text is not the text's */
	if (d->first && attr != TOKEN_CONTROL && attr != TOKEN_UNKNOWN) {
		if (len > 0 && buf[0] == ' ')
			skip = 1;
		d->first = false;
	}
	detok_feed(d, buf + skip, len - skip, out, n, cap);
	if (buf != small)
		free(buf);
	return *n - before;
}

/* End the stream: a held incomplete sequence becomes U+FFFD. */
size_t detok_flush(struct detok *d, char **out, size_t *n, size_t *cap)
{
	size_t before = *n;

	if (d->n_pending > 0) {
		detok_out(out, n, cap, detok_fffd, 3);
		d->n_pending = 0;
	}
	return *n - before;
}
