/*
 * input.c: the workbench's input line, with libedit as its editing engine.
 *
 * libedit wants to own a terminal: it reads keys from it, switches its
 * modes and redraws the line with escape sequences, while ncurses owns the
 * same terminal. The design (doc/tui.md, "the input line"): libedit gets a
 * pseudo-terminal of its own, so it sees a real tty (editing stays on),
 * changes that tty's modes and writes its redraws there; we throw that
 * output away. Keys come from the curses loop through EL_GETCFN, one at a
 * time in unbuffered mode, and after each key the line buffer and cursor
 * (el_line) are read back and drawn by the curses layer like any other
 * view. libedit thus provides the emacs key map, kill/yank, history
 * (history(3), kept in $XDG_STATE_HOME/kvscope/history) and Ctrl-R
 * incremental search; the workbench adds Tab completion from its command
 * table and multi-line input (Ctrl-J or Alt-Enter insert a newline).
 * Built without libedit, a small editor of our own handles the same basic
 * keys and a session-only history.
 */
#include "config.h"
#include "tui/tui-int.h"

#include <curses.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <wchar.h>

#ifdef HAVE_LIBEDIT
#include <histedit.h>
#endif

#define CTRL(c) ((c)&0x1f)

struct tui_input {
	char *buf; /* the line as UTF-8 (the fallback editor's, or libedit's copy) */
	size_t len, cap, cur;
	bool esc; /* the previous key was a lone Escape (Alt prefix) */
#ifdef HAVE_LIBEDIT
	EditLine *el;
	History *hist;
	int master, slave;
	FILE *fin, *fout;
	char *hist_path;
	wchar_t queue[16]; /* keys for libedit's next reads */
	int q_head, q_n;
	bool search_enter; /* Enter ended a Ctrl-R search: the line found is sent */
#endif
	/* Waits for the user's next key when libedit reads on by itself (NULL:
	 * it gets none); see in_getc. */
	bool (*wait)(void *ud, int *key, bool *fkey);
	void *wait_ud;
};

static void in_reserve(struct tui_input *in, size_t n)
{
	if (n + 1 > in->cap) {
		in->cap = KVS_MAX(in->cap * 2, n + 64);
		in->buf = xrealloc(in->buf, in->cap);
	}
}

#ifdef HAVE_LIBEDIT
static int in_map_fkey(int key);
static void in_sync(struct tui_input *in);
static void in_drain(struct tui_input *in);

/*
 * libedit's read function. We feed exactly the keys we have, one el_gets
 * per key, so a read with an empty queue means libedit reads on by itself
 * inside one command: Ctrl-R's incremental search reads its pattern key by
 * key. Then the line as it stands (the search prompt) is shown and the
 * user's next key awaited through in->wait; without a waiter the read
 * ends the command.
 */
static int in_getc(EditLine *el, wchar_t *c)
{
	struct tui_input *in;

	el_get(el, EL_CLIENTDATA, &in);
	if (in == NULL)
		return 0;
	while (in->q_n == 0) {
		int key;
		bool fkey;
		if (in->wait == NULL)
			return 0;
		in_drain(in);
		in_sync(in);
		if (!in->wait(in->wait_ud, &key, &fkey))
			return 0;
		if (fkey)
			key = in_map_fkey(key);
		if (key == 3)
			key = CTRL('g'); /* Ctrl-C leaves the search */
		if (key == '\r' || key == '\n')
			in->search_enter = true; /* libedit ends the search; we send the line */
		if (key > 0) {
			*c = (wchar_t)key;
			return 1;
		}
	}
	*c = in->queue[in->q_head];
	in->q_head = (in->q_head + 1) % (int)KVS_ARRAY_LEN(in->queue);
	in->q_n--;
	return 1;
}

static char *in_prompt(EditLine *el)
{
	(void)el;
	return (char *)"";
}

/* Throw away what libedit drew on its pseudo-terminal. */
static void in_drain(struct tui_input *in)
{
	char b[1024];
	while (read(in->master, b, sizeof b) > 0)
		;
}

/* Copy libedit's line into buf. */
static void in_sync(struct tui_input *in)
{
	const LineInfo *li = el_line(in->el);
	size_t n = (size_t)(li->lastchar - li->buffer);

	in_reserve(in, n);
	memcpy(in->buf, li->buffer, n);
	in->buf[n] = '\0';
	in->len = n;
	in->cur = (size_t)(li->cursor - li->buffer);
}

/* Feed one character to libedit and read the line back. */
static const char *in_feed(struct tui_input *in, wchar_t c, int *count)
{
	const char *r;

	in->queue[(in->q_head + in->q_n) % (int)KVS_ARRAY_LEN(in->queue)] = c;
	in->q_n++;
	r = el_gets(in->el, count);
	in->q_n = 0;
	in_drain(in);
	in_sync(in);
	return r;
}


static bool in_open_libedit(struct tui_input *in)
{
	HistEvent ev;
	const char *name;

	in->master = posix_openpt(O_RDWR | O_NOCTTY);
	if (in->master < 0 || grantpt(in->master) != 0 || unlockpt(in->master) != 0 ||
	    (name = ptsname(in->master)) == NULL)
		goto fail;
	fcntl(in->master, F_SETFL, O_NONBLOCK);
	fcntl(in->master, F_SETFD, FD_CLOEXEC);
	in->slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (in->slave < 0)
		goto fail;
	in->fin = fdopen(in->slave, "r");
	in->fout = fdopen(dup(in->slave), "w");
	if (in->fin == NULL || in->fout == NULL)
		goto fail;
	in->el = el_init_fd("kvscope", in->fin, in->fout, in->fout, in->slave, fileno(in->fout),
	                    fileno(in->fout));
	if (in->el == NULL)
		goto fail;
	in->hist = history_init();
	history(in->hist, &ev, H_SETSIZE, 1000);
	history(in->hist, &ev, H_SETUNIQUE, 1);
	in->hist_path = file_xdg_path("XDG_STATE_HOME", ".local/state", "kvscope/history");
	if (in->hist_path != NULL)
		history(in->hist, &ev, H_LOAD, in->hist_path); /* absent on first use: fine */
	el_set(in->el, EL_CLIENTDATA, in);
	el_set(in->el, EL_EDITOR, "emacs");
	el_set(in->el, EL_HIST, history, in->hist);
	el_set(in->el, EL_PROMPT, in_prompt);
	el_set(in->el, EL_SIGNAL, 0);
	el_set(in->el, EL_GETCFN, in_getc);
	el_set(in->el, EL_UNBUFFERED, 1);
	in_drain(in);
	return true;
fail:
	if (in->fin != NULL)
		fclose(in->fin);
	else if (in->slave >= 0)
		close(in->slave);
	if (in->fout != NULL)
		fclose(in->fout);
	if (in->master >= 0)
		close(in->master);
	in->fin = in->fout = NULL;
	in->master = in->slave = -1;
	return false;
}
#endif

struct tui_input *tui_input_open(void)
{
	struct tui_input *in = xcalloc(1, sizeof *in);

	in_reserve(in, 64);
	in->buf[0] = '\0';
#ifdef HAVE_LIBEDIT
	in->master = in->slave = -1;
	in_open_libedit(in); /* on failure: the fallback editor */
#endif
	return in;
}

void tui_input_save(struct tui_input *in)
{
#ifdef HAVE_LIBEDIT
	HistEvent ev;
	if (in->el != NULL && in->hist_path != NULL) {
		char *dir = xstrdup(in->hist_path);
		char *slash = strrchr(dir, '/');
		if (slash != NULL && slash != dir) {
			*slash = '\0';
			(void)file_mkdirs(dir, 0700);
		}
		free(dir);
		history(in->hist, &ev, H_SAVE, in->hist_path);
	}
#else
	(void)in;
#endif
}

void tui_input_close(struct tui_input *in)
{
	if (in == NULL)
		return;
#ifdef HAVE_LIBEDIT
	if (in->el != NULL) {
		tui_input_save(in);
		el_end(in->el);
		history_end(in->hist);
		fclose(in->fin);
		fclose(in->fout);
		close(in->master);
	}
	free(in->hist_path);
#endif
	free(in->buf);
	free(in);
}

void tui_input_set_wait(struct tui_input *in, bool (*wait)(void *ud, int *key, bool *fkey),
                        void *ud)
{
	in->wait = wait;
	in->wait_ud = ud;
}

const char *tui_input_text(struct tui_input *in, size_t *cursor)
{
	*cursor = in->cur;
	return in->buf;
}

/* The fallback editor: insert UTF-8 at the cursor. */
static void fb_insert(struct tui_input *in, const char *s, size_t n)
{
	in_reserve(in, in->len + n);
	memmove(in->buf + in->cur + n, in->buf + in->cur, in->len - in->cur + 1);
	memcpy(in->buf + in->cur, s, n);
	in->len += n;
	in->cur += n;
}

void tui_input_insert(struct tui_input *in, const char *s)
{
#ifdef HAVE_LIBEDIT
	if (in->el != NULL) {
		el_insertstr(in->el, s);
		in_sync(in);
		return;
	}
#endif
	fb_insert(in, s, strlen(s));
}

void tui_input_clear(struct tui_input *in)
{
#ifdef HAVE_LIBEDIT
	if (in->el != NULL) {
		/* leaving and re-entering unbuffered mode starts a fresh line */
		el_set(in->el, EL_UNBUFFERED, 0);
		el_set(in->el, EL_UNBUFFERED, 1);
		in_drain(in);
		in_sync(in);
		return;
	}
#endif
	in->len = in->cur = 0;
	in->buf[0] = '\0';
}

/* The line entered: take it, remember it, start a new one. */
static char *in_take(struct tui_input *in)
{
	char *line = xstrdup(in->buf);
	size_t n = strlen(line);

	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = '\0';
#ifdef HAVE_LIBEDIT
	if (in->el != NULL && n > 0) {
		HistEvent ev;
		history(in->hist, &ev, H_ENTER, line);
	}
#endif
	tui_input_clear(in);
	return line;
}

/* A curses function key as the emacs control key libedit knows. */
static int in_map_fkey(int key)
{
	static const struct {
		int key, ctrl;
	} map[] = {
		{ KEY_LEFT, CTRL('b') }, { KEY_RIGHT, CTRL('f') }, { KEY_UP, CTRL('p') },
		{ KEY_DOWN, CTRL('n') }, { KEY_HOME, CTRL('a') },  { KEY_END, CTRL('e') },
		{ KEY_BACKSPACE, 0x7f }, { KEY_DC, CTRL('d') },    { KEY_ENTER, '\r' },
	};
	for (size_t i = 0; i < KVS_ARRAY_LEN(map); i++)
		if (map[i].key == key)
			return map[i].ctrl;
	return -1;
}

bool tui_input_key(struct tui_input *in, int key, bool fkey, char **line)
{
	*line = NULL;
	if (fkey) {
		key = in_map_fkey(key);
		if (key < 0)
			return false;
	}
	if (in->esc) {
		in->esc = false;
		if (key == '\r' || key == '\n') {
			tui_input_insert(in, "\n");
			return false;
		}
#ifdef HAVE_LIBEDIT
		/* any other Alt key is libedit's (Alt-b, Alt-f, Alt-d ...) */
		if (in->el != NULL) {
			int count;
			in_feed(in, 0x1b, &count);
		}
#endif
	}
	if (key == 0x1b) {
		in->esc = true;
		return false;
	}
	if (key == CTRL('j')) {
		tui_input_insert(in, "\n");
		return false;
	}
	if (key == CTRL('d') && in->len == 0)
		return false; /* end-of-file means nothing here */
	if (key == CTRL('h'))
		key = 0x7f;
#ifdef HAVE_LIBEDIT
	if (in->el != NULL) {
		int count = 0;
		in->search_enter = false;
		const char *r = in_feed(in, (wchar_t)key, &count);
		if (in->search_enter) {
			/* libedit ended the search and pushed the Enter back for its
			 * next read: let it read that now (with no waiter, an empty
			 * queue reads as end of input), so no later key meets it */
			bool (*wait)(void *, int *, bool *) = in->wait;
			in->wait = NULL;
			(void)el_gets(in->el, &count);
			in->wait = wait;
			in_drain(in);
			in_sync(in);
			in->search_enter = false;
			*line = in_take(in);
			return true;
		}
		if (key == '\r' || (r != NULL && count > 0 && r[count - 1] == '\n')) {
			*line = in_take(in);
			return true;
		}
		return false;
	}
#endif
	/* the fallback editor */
	switch (key) {
	case '\r': *line = in_take(in); return true;
	case 0x7f:
		if (in->cur > 0) {
			size_t p = in->cur - 1;
			while (p > 0 && ((unsigned char)in->buf[p] & 0xc0) == 0x80)
				p--;
			memmove(in->buf + p, in->buf + in->cur, in->len - in->cur + 1);
			in->len -= in->cur - p;
			in->cur = p;
		}
		return false;
	case CTRL('b'):
		while (in->cur > 0 && ((unsigned char)in->buf[--in->cur] & 0xc0) == 0x80)
			;
		return false;
	case CTRL('f'):
		if (in->cur < in->len)
			while (++in->cur < in->len && ((unsigned char)in->buf[in->cur] & 0xc0) == 0x80)
				;
		return false;
	case CTRL('a'): in->cur = 0; return false;
	case CTRL('e'): in->cur = in->len; return false;
	case CTRL('u'):
		memmove(in->buf, in->buf + in->cur, in->len - in->cur + 1);
		in->len -= in->cur;
		in->cur = 0;
		return false;
	default:
		if (key >= 0x20 && key != 0x7f) {
			char u[8];
			size_t n = utf8_encode((uint32_t)key, u);
			fb_insert(in, u, n);
		}
		return false;
	}
}
