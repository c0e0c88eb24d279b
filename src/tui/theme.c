/*
 * theme.c: semantic colour roles and the themes that colour them.
 *
 * Drawing code names roles (R_USER, R_HEAT3, R_EVICTED ...), never
 * colours. A theme gives each role a 256-colour pair, an 8-colour fallback
 * and attributes; monochrome uses the attributes alone, so every role
 * stays distinguishable without colour (evicted is dim, selected is
 * reversed, titles are bold). The heat ramp runs from dark to bright and
 * avoids a rainbow; the surprisal tint runs from calm to alarming.
 */
#include "tui/tui-int.h"

#include <string.h>

static const char *const tui_role_names[R_COUNT] = {
	"normal",  "dim",   "title",     "border", "tab",      "tab-active", "status",   "status-error",
	"system",  "user",  "assistant", "banner", "info",     "input",      "cursor",   "kept",
	"evicted", "sink",  "key",       "pinned", "document", "selected",   "bar-fill", "bar-empty",
	"spark",   "heat0", "heat1",     "heat2",  "heat3",    "heat4",      "heat5",    "heat6",
	"heat7",   "surp0", "surp1",     "surp2",  "surp3",    "surp4",      "recalled",
};

#define C(fg, bg, fg8, bg8, a) \
	{                          \
		fg, bg, fg8, bg8, a    \
	}
/* 8-colour indices: 0 black 1 red 2 green 3 yellow 4 blue 5 magenta 6 cyan 7 white */
static const struct tui_theme tui_themes[] = {
	{ "dark",
	  {
	          [R_NORMAL] = C(252, -1, 7, -1, 0),
	          [R_DIM] = C(244, -1, 7, -1, TUI_A_DIM),
	          [R_TITLE] = C(111, -1, 6, -1, TUI_A_BOLD),
	          [R_BORDER] = C(240, -1, 4, -1, 0),
	          [R_TAB] = C(250, 236, 7, 0, 0),
	          [R_TAB_ACTIVE] = C(16, 111, 0, 6, TUI_A_BOLD | TUI_A_REVERSE),
	          [R_STATUS] = C(252, 236, 7, 4, TUI_A_REVERSE),
	          [R_STATUS_ERR] = C(231, 124, 7, 1, TUI_A_BOLD | TUI_A_REVERSE),
	          [R_SYSTEM] = C(180, -1, 3, -1, TUI_A_DIM),
	          [R_USER] = C(117, -1, 6, -1, TUI_A_BOLD),
	          [R_ASSISTANT] = C(252, -1, 7, -1, 0),
	          [R_BANNER] = C(16, 214, 0, 3, TUI_A_REVERSE | TUI_A_BOLD),
	          [R_INFO] = C(109, -1, 6, -1, TUI_A_DIM),
	          [R_INPUT] = C(255, 235, 7, -1, 0),
	          [R_CURSOR] = C(16, 252, 0, 7, TUI_A_REVERSE),
	          [R_KEPT] = C(255, -1, 7, -1, TUI_A_BOLD),
	          [R_EVICTED] = C(239, -1, 0, -1, TUI_A_DIM),
	          [R_SINK] = C(16, 141, 0, 5, TUI_A_UNDERLINE),
	          [R_KEY] = C(16, 220, 0, 3, TUI_A_UNDERLINE | TUI_A_BOLD),
	          [R_PINNED] = C(16, 84, 0, 2, TUI_A_UNDERLINE | TUI_A_BOLD),
	          [R_DOC] = C(16, 110, 0, 6, TUI_A_UNDERLINE),
	          [R_SELECTED] = C(16, 231, 0, 7, TUI_A_REVERSE),
	          [R_BAR_FILL] = C(78, -1, 2, -1, TUI_A_BOLD),
	          [R_BAR_EMPTY] = C(238, -1, 7, -1, TUI_A_DIM),
	          [R_SPARK] = C(80, -1, 6, -1, 0),
	          [R_HEAT0] = C(235, -1, 0, -1, TUI_A_DIM),
	          [R_HEAT1] = C(23, -1, 4, -1, TUI_A_DIM),
	          [R_HEAT2] = C(30, -1, 4, -1, 0),
	          [R_HEAT3] = C(37, -1, 6, -1, 0),
	          [R_HEAT4] = C(72, -1, 6, -1, 0),
	          [R_HEAT5] = C(136, -1, 3, -1, TUI_A_BOLD),
	          [R_HEAT6] = C(178, -1, 3, -1, TUI_A_BOLD),
	          [R_HEAT7] = C(220, -1, 3, -1, TUI_A_BOLD),
	          [R_SURP0] = C(252, -1, 7, -1, 0),
	          [R_SURP1] = C(187, -1, 7, -1, 0),
	          [R_SURP2] = C(222, -1, 3, -1, 0),
	          [R_SURP3] = C(209, -1, 3, -1, TUI_A_BOLD),
	          [R_SURP4] = C(203, -1, 1, -1, TUI_A_BOLD | TUI_A_UNDERLINE),
	          [R_RECALLED] = C(16, 81, 0, 6, TUI_A_UNDERLINE | TUI_A_BOLD),
	  } },
	{ "light",
	  {
	          [R_NORMAL] = C(235, -1, 0, -1, 0),
	          [R_DIM] = C(245, -1, 0, -1, TUI_A_DIM),
	          [R_TITLE] = C(25, -1, 4, -1, TUI_A_BOLD),
	          [R_BORDER] = C(250, -1, 4, -1, 0),
	          [R_TAB] = C(238, 253, 0, 7, 0),
	          [R_TAB_ACTIVE] = C(231, 25, 7, 4, TUI_A_BOLD | TUI_A_REVERSE),
	          [R_STATUS] = C(235, 253, 0, 7, TUI_A_REVERSE),
	          [R_STATUS_ERR] = C(231, 160, 7, 1, TUI_A_BOLD | TUI_A_REVERSE),
	          [R_SYSTEM] = C(130, -1, 3, -1, TUI_A_DIM),
	          [R_USER] = C(24, -1, 4, -1, TUI_A_BOLD),
	          [R_ASSISTANT] = C(235, -1, 0, -1, 0),
	          [R_BANNER] = C(231, 166, 7, 3, TUI_A_REVERSE | TUI_A_BOLD),
	          [R_INFO] = C(66, -1, 6, -1, TUI_A_DIM),
	          [R_INPUT] = C(232, 254, 0, -1, 0),
	          [R_CURSOR] = C(231, 238, 7, 0, TUI_A_REVERSE),
	          [R_KEPT] = C(232, -1, 0, -1, TUI_A_BOLD),
	          [R_EVICTED] = C(250, -1, 7, -1, TUI_A_DIM),
	          [R_SINK] = C(231, 97, 7, 5, TUI_A_UNDERLINE),
	          [R_KEY] = C(232, 214, 0, 3, TUI_A_UNDERLINE | TUI_A_BOLD),
	          [R_PINNED] = C(232, 114, 0, 2, TUI_A_UNDERLINE | TUI_A_BOLD),
	          [R_DOC] = C(232, 117, 0, 6, TUI_A_UNDERLINE),
	          [R_SELECTED] = C(231, 232, 7, 0, TUI_A_REVERSE),
	          [R_BAR_FILL] = C(28, -1, 2, -1, TUI_A_BOLD),
	          [R_BAR_EMPTY] = C(252, -1, 7, -1, TUI_A_DIM),
	          [R_SPARK] = C(31, -1, 4, -1, 0),
	          [R_HEAT0] = C(255, -1, 7, -1, TUI_A_DIM),
	          [R_HEAT1] = C(153, -1, 6, -1, TUI_A_DIM),
	          [R_HEAT2] = C(117, -1, 6, -1, 0),
	          [R_HEAT3] = C(74, -1, 4, -1, 0),
	          [R_HEAT4] = C(31, -1, 4, -1, 0),
	          [R_HEAT5] = C(172, -1, 3, -1, TUI_A_BOLD),
	          [R_HEAT6] = C(166, -1, 1, -1, TUI_A_BOLD),
	          [R_HEAT7] = C(124, -1, 1, -1, TUI_A_BOLD),
	          [R_SURP0] = C(235, -1, 0, -1, 0),
	          [R_SURP1] = C(94, -1, 3, -1, 0),
	          [R_SURP2] = C(130, -1, 3, -1, 0),
	          [R_SURP3] = C(166, -1, 1, -1, TUI_A_BOLD),
	          [R_SURP4] = C(160, -1, 1, -1, TUI_A_BOLD | TUI_A_UNDERLINE),
	          [R_RECALLED] = C(232, 117, 0, 6, TUI_A_UNDERLINE | TUI_A_BOLD),
	  } },
};
#undef C

size_t tui_theme_count(void)
{
	return KVS_ARRAY_LEN(tui_themes);
}

const struct tui_theme *tui_theme_at(size_t i)
{
	return i < KVS_ARRAY_LEN(tui_themes) ? &tui_themes[i] : NULL;
}

const struct tui_theme *tui_theme_find(const char *name)
{
	for (size_t i = 0; i < KVS_ARRAY_LEN(tui_themes); i++)
		if (strcmp(tui_themes[i].name, name) == 0)
			return &tui_themes[i];
	return NULL;
}

const char *tui_role_name(enum tui_role r)
{
	return (unsigned)r < R_COUNT ? tui_role_names[r] : "?";
}

uint32_t tui_color_rgb(int idx)
{
	static const uint32_t base16[16] = { 0x000000, 0x800000, 0x008000, 0x808000, 0x000080, 0x800080,
		                                 0x008080, 0xc0c0c0, 0x808080, 0xff0000, 0x00ff00, 0xffff00,
		                                 0x0000ff, 0xff00ff, 0x00ffff, 0xffffff };
	static const int level[6] = { 0, 95, 135, 175, 215, 255 };
	if (idx < 0)
		return 0;
	if (idx < 16)
		return base16[idx];
	if (idx < 232) {
		int i = idx - 16;
		return (uint32_t)(level[i / 36] << 16 | level[(i / 6) % 6] << 8 | level[i % 6]);
	}
	int v = 8 + (idx - 232) * 10;
	return (uint32_t)(v << 16 | v << 8 | v);
}
