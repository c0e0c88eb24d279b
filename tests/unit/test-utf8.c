/* test-utf8.c: the strict UTF-8 codec and its lead-byte table against
 * hand-computed cases (RFC 3629). */
#include "base/base.h"
#include "test.h"

int main(void)
{
	uint32_t cp = 0;
	char buf[4];

	T_EQ_INT(utf8_decode((const uint8_t *)"A", 1, &cp), 1);
	T_EQ_INT(cp, 0x41);
	T_EQ_INT(utf8_decode((const uint8_t *)"\xC3\xA9", 2, &cp), 2); /* é */
	T_EQ_INT(cp, 0xE9);
	T_EQ_INT(utf8_decode((const uint8_t *)"\xE4\xB8\xAD", 3, &cp), 3); /* 中 */
	T_EQ_INT(cp, 0x4E2D);
	T_EQ_INT(utf8_decode((const uint8_t *)"\xF0\x9F\x98\x80", 4, &cp), 4); /* 😀 */
	T_EQ_INT(cp, 0x1F600);
	/* invalid: overlong, surrogate, > U+10FFFF, stray continuation, truncation */
	T_EQ_INT(utf8_decode((const uint8_t *)"\xC0\xAF", 2, &cp), 0);
	T_EQ_INT(utf8_decode((const uint8_t *)"\xE0\x80\xAF", 3, &cp), 0);
	T_EQ_INT(utf8_decode((const uint8_t *)"\xED\xA0\x80", 3, &cp), 0);
	T_EQ_INT(utf8_decode((const uint8_t *)"\xF4\x90\x80\x80", 4, &cp), 0);
	T_EQ_INT(utf8_decode((const uint8_t *)"\x80", 1, &cp), 0);
	T_EQ_INT(utf8_decode((const uint8_t *)"\xE4\xB8", 2, &cp), 0);

	/* the lead-byte table: spot checks, then every byte against RFC 3629's
	 * well-formed first bytes (00..7F, C2..DF, E0..EF, F0..F4) */
	T_EQ_INT(utf8_lead_len(0x41), 1);
	T_EQ_INT(utf8_lead_len(0x80), 0);
	T_EQ_INT(utf8_lead_len(0xC1), 0);
	T_EQ_INT(utf8_lead_len(0xC2), 2);
	T_EQ_INT(utf8_lead_len(0xEF), 3);
	T_EQ_INT(utf8_lead_len(0xF4), 4);
	T_EQ_INT(utf8_lead_len(0xF5), 0);
	T_EQ_INT(utf8_lead_len(0xFF), 0);
	for (int b = 0; b < 256; b++) {
		size_t want = b <= 0x7F          ? 1
		        : b >= 0xC2 && b <= 0xDF ? 2
		        : b >= 0xE0 && b <= 0xEF ? 3
		        : b >= 0xF0 && b <= 0xF4 ? 4
		                                 : 0;
		T_CHECK(utf8_lead_len((uint8_t)b) == want, "utf8_lead_len(0x%02X) = %zu, expected %zu", b,
		        utf8_lead_len((uint8_t)b), want);
	}

	T_EQ_INT(utf8_encode(0x1F600, buf), 4);
	T_CHECK(memcmp(buf, "\xF0\x9F\x98\x80", 4) == 0, "encode U+1F600");
	T_EQ_INT(utf8_encode(0xD800, buf), 0);
	T_EQ_INT(utf8_encode(0x110000, buf), 0);

	/* a split sequence is held back; complete or invalid input is not */
	T_EQ_INT(utf8_complete_prefix((const uint8_t *)"ab\xE4\xB8", 4), 2);
	T_EQ_INT(utf8_complete_prefix((const uint8_t *)"ab\xE4\xB8\xAD", 5), 5);
	T_EQ_INT(utf8_complete_prefix((const uint8_t *)"ab\xF0", 3), 2);
	T_EQ_INT(utf8_complete_prefix((const uint8_t *)"ab\xFF", 3), 3);
	T_EQ_INT(utf8_complete_prefix((const uint8_t *)"", 0), 0);

	T_CHECK(utf8_valid((const uint8_t *)"h\xC3\xA9llo", 6), "valid");
	T_CHECK(!utf8_valid((const uint8_t *)"h\xC3llo", 5), "invalid");
	return t_done("test-utf8");
}
