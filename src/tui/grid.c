/*
 * grid.c: the text grid every pane draws into, and the fake renderer.
 *
 * A cell holds one code point and a colour role; a wide character takes
 * two cells, the second holding 0. Drawing is clipped to a rectangle, so a
 * pane can never write outside its place whatever the terminal size (a
 * 1x1 grid included). The ncurses layer copies the grid to the screen; the
 * tests read it back as text, which is the whole "fake renderer".
 */
#include "tui/tui-int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

void tui_grid_resize(struct tui_grid *g, int w, int h)
{
	if (w < 1)
		w = 1;
	if (h < 1)
		h = 1;
	if (w != g->w || h != g->h) {
		free(g->c);
		g->c = xcalloc((size_t)w * (size_t)h, sizeof *g->c);
		g->w = w;
		g->h = h;
	}
	tui_grid_clear(g);
}

void tui_grid_free(struct tui_grid *g)
{
	free(g->c);
	g->c = NULL;
	g->w = g->h = 0;
}

void tui_grid_clear(struct tui_grid *g)
{
	for (int i = 0; i < g->w * g->h; i++) {
		g->c[i].cp = ' ';
		g->c[i].role = R_NORMAL;
	}
}

/* Columns a code point takes: 1 or 2 (0 for combining marks). */
static int tui_cp_width(uint32_t cp)
{
	int w;
	if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0))
		return -1;
	if (cp < 0x300)
		return 1;
	w = wcwidth((wchar_t)cp);
	return w;
}

void tui_grid_put(struct tui_grid *g, int x, int y, uint32_t cp, enum tui_role role)
{
	if (x < 0 || y < 0 || x >= g->w || y >= g->h)
		return;
	g->c[y * g->w + x].cp = cp;
	g->c[y * g->w + x].role = (uint8_t)role;
}

int tui_grid_text(struct tui_grid *g, struct tui_rect r, int x, int y, enum tui_role role,
                  const char *s, size_t len)
{
	int x0 = x;
	size_t i = 0;

	if (y < r.y || y >= r.y + r.h)
		return 0;
	while (i < len) {
		uint32_t cp;
		size_t k = utf8_decode((const uint8_t *)s + i, len - i, &cp);
		int w;
		if (k == 0) {
			cp = '?';
			k = 1;
		}
		i += k;
		w = tui_cp_width(cp);
		if (w < 0) {
			cp = cp == '\t' ? ' ' : '?';
			w = 1;
		}
		if (w == 0)
			continue; /* combining marks are dropped, never misplaced */
		if (x + w > r.x + r.w)
			break;
		if (x >= r.x) {
			tui_grid_put(g, x, y, cp, role);
			if (w == 2)
				tui_grid_put(g, x + 1, y, 0, role);
		}
		x += w;
	}
	return x - x0;
}

int tui_grid_printf(struct tui_grid *g, struct tui_rect r, int x, int y, enum tui_role role,
                    const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		return 0;
	return tui_grid_text(g, r, x, y, role, buf, strlen(buf));
}

void tui_grid_fill(struct tui_grid *g, struct tui_rect r, uint32_t cp, enum tui_role role)
{
	for (int y = r.y; y < r.y + r.h; y++)
		for (int x = r.x; x < r.x + r.w; x++)
			tui_grid_put(g, x, y, cp, role);
}

struct tui_rect tui_grid_box(struct tui_grid *g, struct tui_rect r, const char *title, bool focus)
{
	uint32_t h = g->ascii ? '-' : 0x2500, v = g->ascii ? '|' : 0x2502;
	uint32_t tl = g->ascii ? '+' : 0x250c, tr = g->ascii ? '+' : 0x2510;
	uint32_t bl = g->ascii ? '+' : 0x2514, br = g->ascii ? '+' : 0x2518;
	struct tui_rect in = { r.x + 1, r.y + 1, r.w - 2, r.h - 2 };

	if (r.w < 2 || r.h < 2)
		return (struct tui_rect){ r.x, r.y, 0, 0 };
	for (int x = r.x + 1; x < r.x + r.w - 1; x++) {
		tui_grid_put(g, x, r.y, h, R_BORDER);
		tui_grid_put(g, x, r.y + r.h - 1, h, R_BORDER);
	}
	for (int y = r.y + 1; y < r.y + r.h - 1; y++) {
		tui_grid_put(g, r.x, y, v, R_BORDER);
		tui_grid_put(g, r.x + r.w - 1, y, v, R_BORDER);
	}
	tui_grid_put(g, r.x, r.y, tl, R_BORDER);
	tui_grid_put(g, r.x + r.w - 1, r.y, tr, R_BORDER);
	tui_grid_put(g, r.x, r.y + r.h - 1, bl, R_BORDER);
	tui_grid_put(g, r.x + r.w - 1, r.y + r.h - 1, br, R_BORDER);
	if (title != NULL && r.w > 4) {
		struct tui_rect top = { r.x + 1, r.y, r.w - 2, 1 };
		tui_grid_printf(g, top, r.x + 2, r.y, focus ? R_TAB_ACTIVE : R_TITLE, " %s ", title);
	}
	if (in.w < 0)
		in.w = 0;
	if (in.h < 0)
		in.h = 0;
	return in;
}

char *tui_grid_row(const struct tui_grid *g, int y)
{
	char *s = xmalloc((size_t)g->w * 4 + 1);
	size_t n = 0, keep = 0;

	for (int x = 0; y >= 0 && y < g->h && x < g->w; x++) {
		uint32_t cp = g->c[y * g->w + x].cp;
		if (cp == 0)
			continue;
		n += utf8_encode(cp, s + n);
		if (cp != ' ')
			keep = n;
	}
	s[keep] = '\0';
	return s;
}

char *tui_grid_dump(const struct tui_grid *g)
{
	size_t cap = (size_t)g->h * ((size_t)g->w * 4 + 1) + 1, n = 0;
	char *out = xmalloc(cap);

	for (int y = 0; y < g->h; y++) {
		char *row = tui_grid_row(g, y);
		size_t k = strlen(row);
		memcpy(out + n, row, k);
		n += k;
		out[n++] = '\n';
		free(row);
	}
	out[n] = '\0';
	return out;
}

int tui_text_width(const char *s, size_t len)
{
	int w = 0;
	size_t i = 0;

	while (i < len) {
		uint32_t cp;
		size_t k = utf8_decode((const uint8_t *)s + i, len - i, &cp);
		int cw;
		if (k == 0) {
			k = 1;
			cp = '?';
		}
		i += k;
		cw = tui_cp_width(cp);
		w += cw < 0 ? 1 : cw;
	}
	return w;
}

uint32_t tui_glyph_spark(const struct tui_grid *g, int level)
{
	static const char ascii[] = "_.,-=+*#";
	if (level < 0)
		level = 0;
	if (level > 7)
		level = 7;
	return g->ascii ? (uint32_t)ascii[level] : 0x2581 + (uint32_t)level;
}

uint32_t tui_glyph_heat(const struct tui_grid *g, int level)
{
	static const char ascii[TUI_HEAT_LEVELS] = { ' ', '.', ':', '-', '=', '+', '#', '@' };
	static const uint32_t utf[TUI_HEAT_LEVELS] = { ' ',    0x2591, 0x2591, 0x2592,
		                                           0x2592, 0x2593, 0x2593, 0x2588 };
	if (level < 0)
		level = 0;
	if (level >= TUI_HEAT_LEVELS)
		level = TUI_HEAT_LEVELS - 1;
	return g->ascii ? (uint32_t)ascii[level] : utf[level];
}

uint32_t tui_glyph_bar(const struct tui_grid *g, bool full)
{
	if (g->ascii)
		return full ? '#' : '.';
	return full ? 0x2588 : 0x2591;
}

uint32_t tui_glyph_braille(int left, int right)
{
	/* dots from the bottom: left column 7,3,2,1 (bits 6,2,1,0), right 8,6,5,4 (bits 7,5,4,3) */
	static const uint8_t lbits[5] = { 0, 0x40, 0x44, 0x46, 0x47 };
	static const uint8_t rbits[5] = { 0, 0x80, 0xa0, 0xb0, 0xb8 };
	if (left < 0)
		left = 0;
	if (left > 4)
		left = 4;
	if (right < 0)
		right = 0;
	if (right > 4)
		right = 4;
	return 0x2800 + (uint32_t)(lbits[left] | rbits[right]);
}
