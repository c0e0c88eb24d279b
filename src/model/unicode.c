/*
 * unicode.c: code point classes and the lenient UTF-8 decoding of the
 * tokenizer.
 *
 * Classes come from the generated table in unicode-data.c: sorted runs of
 * code points with equal flags, plus an index by 256-code-point block so a
 * lookup binary-searches only the runs inside one block (usually one or
 * two). The first 256 code points have a table of their own.
 *
 * Decoding is deliberately not strict: to split text exactly as llama.cpp
 * does we accept what its decoder accepts (overlong forms and surrogates
 * decode to their value) and, like it, turn every byte that cannot start a
 * sequence into U+FFFD. The one difference: llama.cpp decodes F4 90.. and
 * F5..F7 leads to values above U+10FFFF and then aborts; we treat those
 * leads as invalid bytes (U+FFFD each).
 */
#include "model/model-int.h"

/* Index of the range holding cp (cp < 0x110000). */
static size_t ucp_range_of(uint32_t cp)
{
	size_t lo = ucp_block[cp >> 8], hi;

	hi = (cp >> 8) + 1 < (0x110000 >> 8) ? (size_t)ucp_block[(cp >> 8) + 1] + 1 : ucp_n_ranges;
	/* invariant: ucp_ranges[lo].first <= cp; the answer is < hi */
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		if (ucp_ranges[mid].first <= cp)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* Class flags of one code point. */
uint16_t ucp_flags(uint32_t cp)
{
	if (cp < 0x100)
		return ucp_latin1[cp];
	if (cp >= 0x110000)
		return UCP_UNDEF;
	return ucp_ranges[ucp_range_of(cp)].flags;
}

/* \w of Python's re: letters, numbers and the underscore. */
bool unicode_is_word(uint32_t cp)
{
	return cp == '_' || (ucp_flags(cp) & (UCP_LETTER | UCP_NUMBER)) != 0;
}

/* Decode one code point leniently (see the top of the file). */
size_t ucp_decode_lax(const uint8_t *s, size_t n, uint32_t *cp)
{
	uint8_t c = s[0];
	size_t len, i;
	uint32_t v;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if ((c & 0xE0) == 0xC0) {
		len = 2;
		v = c & 0x1F;
	} else if ((c & 0xF0) == 0xE0) {
		len = 3;
		v = c & 0x0F;
	} else if ((c & 0xF8) == 0xF0) {
		len = 4;
		v = c & 0x07;
	} else {
		goto bad; /* a continuation byte or F8..FF */
	}
	if (n < len)
		goto bad;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xC0) != 0x80)
			goto bad;
		v = (v << 6) | (s[i] & 0x3F);
	}
	if (v > 0x10FFFF)
		goto bad;
	*cp = v;
	return len;
bad:
	*cp = 0xFFFD;
	return 1;
}
