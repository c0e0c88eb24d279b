/*
 * utf8.c: strict UTF-8 decoding and encoding (RFC 3629): no overlong forms,
 * no surrogates, nothing above U+10FFFF. Streaming output uses
 * utf8_complete_prefix to hold back a sequence split across two tokens.
 *
 * utf8_lead holds what every lead byte announces; it is the tree's only
 * such table (the detokenizer and the word counter ask utf8_lead_len). The
 * tokenizer's lenient decoding (model/unicode.c) follows llama.cpp's rule
 * instead, on purpose, and does not use it.
 */
#include "base.h"

/* Sequence length by lead byte: 1 ASCII; 0 continuation (0x80..0xBF), overlong
 * leads (0xC0, 0xC1) and leads beyond U+10FFFF (0xF5..0xFF); else 2, 3, 4. */
static const uint8_t utf8_lead[256] = {
	/* 0x00..0x7F: ASCII */
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	1,
	/* 0x80..0xBF: continuation bytes */
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	/* 0xC0..0xDF: two bytes (0xC0, 0xC1 only overlong) */
	0,
	0,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	2,
	/* 0xE0..0xEF: three bytes */
	3,
	3,
	3,
	3,
	3,
	3,
	3,
	3,
	3,
	3,
	3,
	3,
	3,
	3,
	3,
	3,
	/* 0xF0..0xFF: four bytes up to 0xF4 (U+10FFFF) */
	4,
	4,
	4,
	4,
	4,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
	0,
};

/* Length of the sequence a lead byte announces (0 if it cannot lead). */
size_t utf8_lead_len(uint8_t c)
{
	return utf8_lead[c];
}

size_t utf8_decode(const uint8_t *s, size_t n, uint32_t *cp)
{
	uint32_t c;
	size_t len, i;

	if (n == 0)
		return 0;
	c = s[0];
	len = utf8_lead[c];
	if (len == 1) {
		*cp = c;
		return 1;
	}
	if (len == 0)
		return 0;
	c &= 0x7Fu >> len; /* the lead's payload: 5, 4 or 3 bits */
	if (n < len)
		return 0;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		c = (c << 6) | (s[i] & 0x3F);
	}
	if ((len == 3 && c < 0x800) || (len == 4 && (c < 0x10000 || c > 0x10FFFF)) ||
	    (c >= 0xD800 && c <= 0xDFFF))
		return 0;
	*cp = c;
	return len;
}

size_t utf8_encode(uint32_t cp, char *out)
{
	if (cp >= 0xD800 && cp <= 0xDFFF)
		return 0;
	return utf8_encode_any(cp, out);
}

size_t utf8_encode_any(uint32_t cp, char *out)
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xC0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xE0 | (cp >> 12));
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		out[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	if (cp <= 0x10FFFF) {
		out[0] = (char)(0xF0 | (cp >> 18));
		out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
		out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
		out[3] = (char)(0x80 | (cp & 0x3F));
		return 4;
	}
	return 0;
}

size_t utf8_complete_prefix(const uint8_t *s, size_t n)
{
	size_t i, start, want;

	/* Walk back over at most 3 continuation bytes to the last lead byte. */
	if (n == 0)
		return 0;
	start = n;
	for (i = 0; i < 4 && start > 0; i++) {
		start--;
		if ((s[start] & 0xC0) != 0x80)
			break;
	}
	want = utf8_lead_len(s[start]);
	if (want == 0 || want <= n - start)
		return n; /* complete, or invalid (not ours to hold back) */
	return start;
}

bool utf8_valid(const uint8_t *s, size_t n)
{
	size_t i = 0, k;
	uint32_t cp;

	while (i < n) {
		k = utf8_decode(s + i, n - i, &cp);
		if (k == 0)
			return false;
		i += k;
	}
	return true;
}
