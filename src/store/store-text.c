/*
 * store-text.c: the rules for text that goes into and comes out of the
 * store, built with or without SQLite (nothing here touches a database).
 *
 * Out: whatever a database holds is shown on a terminal or in a Markdown
 * file only through store_text_escape, so a crafted title, path or reply
 * cannot send escape sequences to a terminal (retitle it, move the cursor,
 * hide lines) or break a line: every control character (C0, DEL and the C1
 * range U+0080..U+009F, where U+009B is a CSI on some terminals) and every
 * byte of an invalid UTF-8 sequence is written as \xHH, one per byte. A
 * backslash stays as it is: the escapes are for reading, not for parsing
 * back (the JSON export is the exact form).
 *
 * In: a title that names a session is one line of valid UTF-8 with
 * something in it besides spaces (store_title_check); a key that looks a
 * session up is never empty or blank (store_key_check), since an unset
 * shell variable must not mean "the latest session".
 */
#include "store/store.h"

#include <stdlib.h>
#include <string.h>

/* Whether code point cp is a control character (C0, DEL, C1). */
static bool store_text_is_control(uint32_t cp)
{
	return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f);
}

char *store_text_escape(const char *s, unsigned keep)
{
	const uint8_t *p = (const uint8_t *)(s ? s : "");
	size_t n = strlen((const char *)p), o = 0;
	char *out = xmalloc(4 * n + 1); /* each byte becomes at most \xHH */
	static const char hex[] = "0123456789abcdef";

	for (size_t i = 0; i < n;) {
		uint32_t cp = 0;
		size_t k = utf8_decode(p + i, n - i, &cp);
		bool kept = (cp == '\n' && (keep & STORE_TEXT_KEEP_NL)) ||
		        (cp == '\t' && (keep & STORE_TEXT_KEEP_TAB));
		if (k > 0 && (kept || !store_text_is_control(cp))) {
			memcpy(out + o, p + i, k);
			o += k;
			i += k;
			continue;
		}
		/* a control character (all its bytes) or one byte of a bad sequence */
		for (size_t j = 0; j < (k > 0 ? k : 1); j++) {
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hex[p[i + j] >> 4];
			out[o++] = hex[p[i + j] & 15];
		}
		i += k > 0 ? k : 1;
	}
	out[o] = '\0';
	return out;
}

/* Whether s holds nothing but spaces and tabs. */
static bool store_text_blank(const char *s)
{
	return s[strspn(s, " \t")] == '\0';
}

int store_title_check(const char *title, struct err *e)
{
	const uint8_t *p = (const uint8_t *)title;
	size_t n = strlen(title);

	if (store_text_blank(title))
		return err_set(e, KVS_EARG, "empty session title; expected some text");
	for (size_t i = 0; i < n;) {
		uint32_t cp = 0;
		size_t k = utf8_decode(p + i, n - i, &cp);
		if (k == 0)
			return err_set(e, KVS_EARG,
			               "session title is not valid UTF-8 (byte %zu); expected UTF-8 text", i);
		if (store_text_is_control(cp))
			return err_set(e, KVS_EARG,
			               "session title has a control character (U+%04X at byte %zu); "
			               "expected one line of text",
			               (unsigned)cp, i);
		i += k;
	}
	return KVS_OK;
}

int store_key_check(const char *key, struct err *e)
{
	if (key == NULL || store_text_blank(key))
		return err_set(e, KVS_EARG,
		               "empty session id or title; expected an id (digits) or a title "
		               "(kvscope sessions list shows them)");
	return KVS_OK;
}

/* Whether byte ch is part of a word for recall: ASCII letters and digits,
 * and every byte of a multi-byte UTF-8 sequence. */
static bool text_word_byte(unsigned char ch)
{
	return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
	        ch >= 0x80;
}

char *store_cold_fts_query(const char *text)
{
	enum { MAX_TERMS = 64 };
	size_t len = text ? strlen(text) : 0, n = 0;
	/* each byte at most once, plus quotes and " OR " per term */
	char *q = xmalloc(len + (size_t)MAX_TERMS * 6 + 1);
	unsigned terms = 0;
	for (size_t i = 0; i < len && terms < MAX_TERMS;) {
		if (!text_word_byte((unsigned char)text[i])) {
			i++;
			continue;
		}
		size_t j = i;
		while (j < len && text_word_byte((unsigned char)text[j]))
			j++;
		if (terms > 0) {
			memcpy(q + n, " OR ", 4);
			n += 4;
		}
		/* a word holds no quote, so a quoted word is one FTS5 string */
		q[n++] = '"';
		memcpy(q + n, text + i, j - i);
		n += j - i;
		q[n++] = '"';
		terms++;
		i = j;
	}
	q[n] = '\0';
	if (terms == 0) {
		free(q);
		return NULL;
	}
	return q;
}
