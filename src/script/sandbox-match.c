/*
 * sandbox-match.c: Lua's string patterns (string.find, match, gmatch and
 * gsub) for the sandbox, on a matcher that holds the call's deadline.
 *
 * The library's matcher backtracks: a pattern with k quantifiers can try
 * n^k ways on a subject of n bytes (("a*"):rep(12) .. "b" on 3000 a's
 * would run for ages), all inside one C call the count hook never sees.
 * This matcher has the same semantics (the patterns of the reference
 * manual, section 6.4.1: classes, sets, the four quantifiers, anchors,
 * captures and position captures, back references, %b and %f; the same
 * error messages; gmatch and gsub skip an empty match where the last one
 * ended) and counts its steps: every item tried, every character a
 * quantifier or %b scans, and every SANDBOX_STEPS steps it checks the
 * deadline, so no pattern runs past it. Recursion is bounded as in Lua
 * (MATCH_DEPTH levels, then "pattern too complex"). A plain find (plain
 * true, or no magic characters) uses memmem, linear in the subject.
 *
 * Subjects and patterns are Lua strings: they stay alive and in place
 * while the call runs (they are its arguments), so pointers into them are
 * valid throughout; gmatch's iterator keeps offsets between calls.
 */
#include "script/script-int.h"

#include <ctype.h>
#include <string.h>

#define MATCH_MAXCAP 32 /* captures in one pattern (LUA_MAXCAPTURES) */
#define MATCH_DEPTH 200 /* nested items before "pattern too complex" */
#define MATCH_OPEN (-1) /* a capture's len while it is open */
#define MATCH_POS (-2)  /* a position capture's len */
#define MATCH_SPECIALS "^$*+?.([%-"

#define U(c) ((unsigned char)(c))

/* One matching call's state. */
struct match {
	lua_State *L;
	const char *src, *src_end; /* the subject */
	const char *pat_end;       /* the pattern's end */
	int depth;                 /* levels left */
	unsigned steps;            /* since the call began */
	int level;                 /* captures open or closed */
	struct {
		const char *at;
		ptrdiff_t len; /* MATCH_OPEN, MATCH_POS or a length */
	} cap[MATCH_MAXCAP];
};

/* Whether c is NUL (%z: deprecated in Lua 5.2, still matched by 5.4). */
static int match_iszero(int c)
{
	return c == 0;
}

/* The classes %a ... %z (an upper-case letter is the complement). */
static const struct {
	char cl;
	int (*is)(int);
} match_classes[] = {
	{ 'a', isalpha }, { 'c', iscntrl },  { 'd', isdigit },      { 'g', isgraph },
	{ 'l', islower }, { 'p', ispunct },  { 's', isspace },      { 'u', isupper },
	{ 'w', isalnum }, { 'x', isxdigit }, { 'z', match_iszero },
};

/* One step of work: a deadline check every SANDBOX_STEPS. */
static void match_step(struct match *m)
{
	if ((++m->steps & (SANDBOX_STEPS - 1)) == 0)
		sandbox_check(m->L);
}

static void match_init(struct match *m, lua_State *L, const char *s, size_t ls, const char *p,
                       size_t lp)
{
	m->L = L;
	m->src = s;
	m->src_end = s + ls;
	m->pat_end = p + lp;
	m->depth = MATCH_DEPTH;
	m->steps = 0;
	m->level = 0;
}

/* Whether c is in class cl (%cl); a non-letter cl stands for itself. */
static bool match_class(int c, int cl)
{
	for (size_t i = 0; i < KVS_ARRAY_LEN(match_classes); i++)
		if (match_classes[i].cl == tolower(cl)) {
			bool in = match_classes[i].is(c) != 0;
			return isupper(cl) ? !in : in;
		}
	return cl == c;
}

/* Whether c is in the set [p, ec] (p at '[', ec at its ']'). */
static bool match_set(int c, const char *p, const char *ec)
{
	bool in = true;
	p++;
	if (*p == '^') {
		in = false;
		p++;
	}
	for (; p < ec; p++) {
		if (*p == '%') {
			p++;
			if (match_class(c, U(*p)))
				return in;
		} else if (p + 2 < ec && p[1] == '-') {
			if (U(p[0]) <= c && c <= U(p[2]))
				return in;
			p += 2;
		} else if (U(*p) == c) {
			return in;
		}
	}
	return !in;
}

/* The end of the single-character class at p. */
static const char *match_class_end(struct match *m, const char *p)
{
	char c = *p++;
	if (c == '%') {
		if (p >= m->pat_end)
			luaL_error(m->L, "malformed pattern (ends with '%%')");
		return p + 1;
	}
	if (c == '[') {
		if (p < m->pat_end && *p == '^')
			p++;
		do { /* the set's first character, ']' included, is a member */
			if (p >= m->pat_end)
				luaL_error(m->L, "malformed pattern (missing ']')");
			c = *p++;
			if (c == '%' && p < m->pat_end)
				p++;
		} while (p >= m->pat_end || *p != ']');
		return p + 1;
	}
	return p;
}

/* Whether the subject character at s is in the class [p, ep). */
static bool match_single(const struct match *m, const char *s, const char *p, const char *ep)
{
	if (s >= m->src_end)
		return false;
	int c = U(*s);
	switch (*p) {
	case '.': return true;
	case '%': return match_class(c, U(p[1]));
	case '[': return match_set(c, p, ep - 1);
	default: return U(*p) == c;
	}
}

static const char *match_do(struct match *m, const char *s, const char *p);

/* x* and x+: the longest run first, then shorter ones. */
static const char *match_max(struct match *m, const char *s, const char *p, const char *ep)
{
	ptrdiff_t i = 0;
	while (match_single(m, s + i, p, ep)) {
		i++;
		match_step(m);
	}
	for (; i >= 0; i--) {
		const char *r = match_do(m, s + i, ep + 1);
		if (r != NULL)
			return r;
	}
	return NULL;
}

/* x-: the shortest run first. */
static const char *match_min(struct match *m, const char *s, const char *p, const char *ep)
{
	for (;;) {
		const char *r = match_do(m, s, ep + 1);
		if (r != NULL)
			return r;
		if (!match_single(m, s, p, ep))
			return NULL;
		s++;
	}
}

/* ( and (): open capture what at s, match the rest from p. */
static const char *match_open(struct match *m, const char *s, const char *p, ptrdiff_t what)
{
	if (m->level >= MATCH_MAXCAP)
		luaL_error(m->L, "too many captures");
	m->cap[m->level].at = s;
	m->cap[m->level].len = what;
	m->level++;
	const char *r = match_do(m, s, p);
	if (r == NULL)
		m->level--;
	return r;
}

/* ): close the innermost open capture at s, match the rest from p. */
static const char *match_close(struct match *m, const char *s, const char *p)
{
	int l = m->level - 1;
	while (l >= 0 && m->cap[l].len != MATCH_OPEN)
		l--;
	if (l < 0)
		luaL_error(m->L, "invalid pattern capture");
	m->cap[l].len = s - m->cap[l].at;
	const char *r = match_do(m, s, p);
	if (r == NULL)
		m->cap[l].len = MATCH_OPEN;
	return r;
}

/* %bxy at s (p at x): the end of the balanced run, or NULL. */
static const char *match_balance(struct match *m, const char *s, const char *p)
{
	if (p + 1 >= m->pat_end)
		luaL_error(m->L, "malformed pattern (missing arguments to '%%b')");
	if (s >= m->src_end || *s != p[0])
		return NULL;
	int open = 1;
	while (++s < m->src_end) {
		match_step(m);
		if (*s == p[1]) {
			if (--open == 0)
				return s + 1;
		} else if (*s == p[0]) {
			open++;
		}
	}
	return NULL;
}

/* %1 ... %9 at s (d the digit): the end of the repeated capture, or NULL. */
static const char *match_backref(struct match *m, const char *s, int d)
{
	int l = d - '1';
	if (l < 0 || l >= m->level || m->cap[l].len == MATCH_OPEN)
		luaL_error(m->L, "invalid capture index %%%d", l + 1);
	size_t len = (size_t)m->cap[l].len; /* a position capture's is huge: no match */
	if ((size_t)(m->src_end - s) >= len && memcmp(m->cap[l].at, s, len) == 0)
		return s + len;
	return NULL;
}

/* Match the pattern from p against the subject from s: the end of the
 * match, or NULL. Tail items loop; the others recurse. */
static const char *match_do(struct match *m, const char *s, const char *p)
{
	if (m->depth-- == 0)
		luaL_error(m->L, "pattern too complex");
	while (s != NULL && p < m->pat_end) {
		match_step(m);
		if (*p == '(') {
			if (p + 1 < m->pat_end && p[1] == ')')
				s = match_open(m, s, p + 2, MATCH_POS);
			else
				s = match_open(m, s, p + 1, MATCH_OPEN);
			break;
		}
		if (*p == ')') {
			s = match_close(m, s, p + 1);
			break;
		}
		if (*p == '$' && p + 1 == m->pat_end) {
			s = s == m->src_end ? s : NULL;
			break;
		}
		if (*p == '%' && p + 1 < m->pat_end) {
			char c = p[1];
			if (c == 'b') {
				s = match_balance(m, s, p + 2);
				p += 4;
				continue;
			}
			if (c == 'f') {
				p += 2;
				if (p >= m->pat_end || *p != '[')
					luaL_error(m->L, "missing '[' after '%%f' in pattern");
				const char *ep = match_class_end(m, p);
				int prev = s == m->src ? '\0' : U(s[-1]);
				int cur = s < m->src_end ? U(*s) : '\0';
				if (match_set(prev, p, ep - 1) || !match_set(cur, p, ep - 1))
					s = NULL;
				p = ep;
				continue;
			}
			if (isdigit(U(c))) {
				s = match_backref(m, s, c);
				p += 2;
				continue;
			}
		}
		/* a single-character class, maybe with a quantifier */
		const char *ep = match_class_end(m, p);
		char q = ep < m->pat_end ? *ep : '\0';
		if (!match_single(m, s, p, ep)) {
			if (q == '*' || q == '?' || q == '-')
				p = ep + 1;
			else
				s = NULL;
			continue;
		}
		if (q == '?') {
			const char *r = match_do(m, s + 1, ep + 1);
			if (r != NULL) {
				s = r;
				break;
			}
			p = ep + 1;
		} else if (q == '+') {
			s = match_max(m, s + 1, p, ep);
			break;
		} else if (q == '*') {
			s = match_max(m, s, p, ep);
			break;
		} else if (q == '-') {
			s = match_min(m, s, p, ep);
			break;
		} else {
			s++;
			p = ep;
		}
	}
	m->depth++;
	return s;
}

/* ------------------------------------------------------------ captures */

/* Push capture i (the whole match s..e when there is none and i is 0). */
static void match_capture(struct match *m, int i, const char *s, const char *e)
{
	if (i >= m->level) {
		if (i != 0)
			luaL_error(m->L, "invalid capture index %%%d", i + 1);
		lua_pushlstring(m->L, s, (size_t)(e - s));
		return;
	}
	ptrdiff_t len = m->cap[i].len;
	if (len == MATCH_OPEN)
		luaL_error(m->L, "unfinished capture");
	if (len == MATCH_POS)
		lua_pushinteger(m->L, (m->cap[i].at - m->src) + 1);
	else
		lua_pushlstring(m->L, m->cap[i].at, (size_t)len);
}

/* Push every capture (the whole match when there is none and s is given). */
static int match_captures(struct match *m, const char *s, const char *e)
{
	int n = m->level == 0 && s != NULL ? 1 : m->level;
	luaL_checkstack(m->L, n, "too many captures");
	for (int i = 0; i < n; i++)
		match_capture(m, i, s, e);
	return n;
}

/* ----------------------------------------------------------- functions */

/* A position argument made absolute: 1-based, at least 1 (the library's rule). */
static size_t match_posrelat(lua_Integer pos, size_t len)
{
	if (pos > 0)
		return (size_t)pos;
	if (pos == 0 || pos < -(lua_Integer)len)
		return 1;
	return len + (size_t)pos + 1;
}

/* Whether the pattern has no magic character (a plain search does). */
static bool match_plain(const char *p, size_t lp)
{
	for (size_t i = 0; i < lp; i++)
		if (p[i] != '\0' && strchr(MATCH_SPECIALS, p[i]) != NULL)
			return false;
	return true;
}

/* string.find (find) and string.match. */
static int match_find_aux(lua_State *L, bool find)
{
	size_t ls, lp;
	const char *s = luaL_checklstring(L, 1, &ls);
	const char *p = luaL_checklstring(L, 2, &lp);
	size_t init = match_posrelat(luaL_optinteger(L, 3, 1), ls) - 1;
	if (init > ls) {
		luaL_pushfail(L);
		return 1;
	}
	if (find && (lua_toboolean(L, 4) || match_plain(p, lp))) {
		const char *hit = memmem(s + init, ls - init, p, lp);
		if (hit != NULL) {
			lua_pushinteger(L, (hit - s) + 1);
			lua_pushinteger(L, (lua_Integer)((size_t)(hit - s) + lp));
			return 2;
		}
		luaL_pushfail(L);
		return 1;
	}
	bool anchor = lp > 0 && *p == '^';
	if (anchor) {
		p++;
		lp--;
	}
	struct match m;
	match_init(&m, L, s, ls, p, lp);
	const char *s1 = s + init;
	do {
		m.level = 0;
		m.depth = MATCH_DEPTH;
		const char *e = match_do(&m, s1, p);
		if (e != NULL) {
			if (!find)
				return match_captures(&m, s1, e);
			lua_pushinteger(L, (s1 - s) + 1);
			lua_pushinteger(L, e - s);
			return match_captures(&m, NULL, NULL) + 2;
		}
	} while (s1++ < m.src_end && !anchor);
	luaL_pushfail(L);
	return 1;
}

static int match_find(lua_State *L)
{
	return match_find_aux(L, true);
}

static int match_match(lua_State *L)
{
	return match_find_aux(L, false);
}

/* gmatch's iterator state: offsets into its subject (upvalue 1). */
struct match_gm {
	size_t at;   /* where the next search starts */
	size_t last; /* where the last match ended */
	bool has_last;
};

/* The next match of gmatch's iterator (upvalues: subject, pattern, state). */
static int match_gmatch_next(lua_State *L)
{
	size_t ls, lp;
	const char *s = lua_tolstring(L, lua_upvalueindex(1), &ls);
	const char *p = lua_tolstring(L, lua_upvalueindex(2), &lp);
	struct match_gm *gm = lua_touserdata(L, lua_upvalueindex(3));
	struct match m;
	match_init(&m, L, s, ls, p, lp);
	for (size_t at = gm->at; at <= ls; at++) {
		m.level = 0;
		m.depth = MATCH_DEPTH;
		const char *e = match_do(&m, s + at, p);
		if (e != NULL && (!gm->has_last || (size_t)(e - s) != gm->last)) {
			gm->at = gm->last = (size_t)(e - s);
			gm->has_last = true;
			return match_captures(&m, s + at, e);
		}
	}
	gm->at = ls + 1;
	return 0;
}

static int match_gmatch(lua_State *L)
{
	size_t ls, lp;
	luaL_checklstring(L, 1, &ls);
	luaL_checklstring(L, 2, &lp);
	size_t init = match_posrelat(luaL_optinteger(L, 3, 1), ls) - 1;
	lua_settop(L, 2);
	struct match_gm *gm = lua_newuserdatauv(L, sizeof *gm, 0);
	gm->at = init > ls ? ls + 1 : init;
	gm->last = 0;
	gm->has_last = false;
	lua_pushcclosure(L, match_gmatch_next, 3);
	return 1;
}

/* Append gsub's replacement string (argument 3) for the match s..e. */
static void match_add_string(struct match *m, luaL_Buffer *b, const char *s, const char *e)
{
	size_t l;
	const char *r = lua_tolstring(m->L, 3, &l), *end = r + l;
	for (; r < end; r++) {
		if (*r != '%') {
			luaL_addchar(b, *r);
			continue;
		}
		r++;
		if (r < end && *r == '%') {
			luaL_addchar(b, '%');
		} else if (r < end && *r == '0') {
			luaL_addlstring(b, s, (size_t)(e - s));
		} else if (r < end && isdigit(U(*r))) {
			match_capture(m, *r - '1', s, e);
			luaL_tolstring(m->L, -1, NULL);
			lua_remove(m->L, -2);
			luaL_addvalue(b);
		} else {
			luaL_error(m->L, "invalid use of '%c' in replacement string", '%');
		}
	}
}

/* Append the replacement of the match s..e (repl of type tr at index 3);
 * whether it differs from the match. */
static bool match_add_value(struct match *m, luaL_Buffer *b, const char *s, const char *e, int tr)
{
	lua_State *L = m->L;
	if (tr == LUA_TFUNCTION) {
		lua_pushvalue(L, 3);
		int n = match_captures(m, s, e);
		lua_call(L, n, 1);
	} else if (tr == LUA_TTABLE) {
		match_capture(m, 0, s, e);
		lua_gettable(L, 3);
	} else {
		match_add_string(m, b, s, e);
		return true;
	}
	if (!lua_toboolean(L, -1)) { /* nil or false: keep the match */
		lua_pop(L, 1);
		luaL_addlstring(b, s, (size_t)(e - s));
		return false;
	}
	if (!lua_isstring(L, -1))
		luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
	luaL_addvalue(b);
	return true;
}

static int match_gsub(lua_State *L)
{
	size_t ls, lp;
	const char *src = luaL_checklstring(L, 1, &ls);
	const char *p = luaL_checklstring(L, 2, &lp);
	int tr = lua_type(L, 3);
	lua_Integer max_n = luaL_optinteger(L, 4, (lua_Integer)ls + 1), n = 0;
	const char *last = NULL;
	bool changed = false;
	luaL_argexpected(
	        L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE, 3,
	        "string/function/table");
	bool anchor = lp > 0 && *p == '^';
	if (anchor) {
		p++;
		lp--;
	}
	struct match m;
	match_init(&m, L, src, ls, p, lp);
	luaL_Buffer b;
	luaL_buffinit(L, &b);
	while (n < max_n) {
		m.level = 0;
		m.depth = MATCH_DEPTH;
		const char *e = match_do(&m, src, p);
		if (e != NULL && e != last) {
			n++;
			changed |= match_add_value(&m, &b, src, e, tr);
			src = last = e;
		} else if (src < m.src_end) {
			luaL_addchar(&b, *src++);
		} else {
			break;
		}
		if (anchor)
			break;
	}
	if (!changed) {
		lua_pushvalue(L, 1);
	} else {
		luaL_addlstring(&b, src, (size_t)(m.src_end - src));
		luaL_pushresult(&b);
	}
	lua_pushinteger(L, n);
	return 2;
}

void sandbox_match_open(lua_State *L, int G)
{
	static const luaL_Reg fns[] = {
		{ "find", match_find }, { "match", match_match }, { "gmatch", match_gmatch },
		{ "gsub", match_gsub }, { NULL, NULL },
	};
	lua_getfield(L, G, "string");
	luaL_setfuncs(L, fns, 0);
	lua_pop(L, 1);
}
