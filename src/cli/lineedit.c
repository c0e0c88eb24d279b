/*
 * lineedit.c: line input for `kvscope chat`. With libedit and a terminal,
 * its readline interface gives editing, Ctrl-R and a persistent history
 * (the last 1000 lines, written on exit). Without either, lines are read
 * with getline and no prompt is printed, so piped input gives exactly one
 * reply per line.
 */
#include "cli/lineedit.h"
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifdef HAVE_LIBEDIT
#include <editline/readline.h>
#endif

struct lineedit {
	bool interactive;
	char *history;
};

char *lineedit_history_path(void)
{
	return file_xdg_path("XDG_STATE_HOME", ".local/state", "kvscope/history");
}

#ifdef HAVE_LIBEDIT
/* mkdir -p for the directory part of path. */
static void lineedit_mkdirs(const char *path)
{
	char *dir = xstrdup(path);

	for (char *p = dir + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(dir, 0700) != 0 && errno != EEXIST)
			break;
		*p = '/';
	}
	free(dir);
}
#endif

struct lineedit *lineedit_open(bool interactive)
{
	struct lineedit *le = xcalloc(1, sizeof *le);

#ifdef HAVE_LIBEDIT
	le->interactive = interactive;
	if (interactive) {
		le->history = lineedit_history_path();
		lineedit_mkdirs(le->history);
		using_history();
		stifle_history(1000);
		read_history(le->history); /* absent on first use: fine */
	}
#else
	(void)interactive;
#endif
	return le;
}

char *lineedit_read(struct lineedit *le, const char *prompt, size_t *len)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;

#ifdef HAVE_LIBEDIT
	if (le->interactive) {
		line = readline(prompt);
		*len = line ? strlen(line) : 0;
		return line;
	}
#endif
	(void)prompt;
	n = getline(&line, &cap, stdin);
	if (n < 0) {
		free(line);
		return NULL;
	}
	if (n > 0 && line[n - 1] == '\n')
		line[--n] = '\0';
	if (n > 0 && line[n - 1] == '\r')
		line[--n] = '\0';
	*len = (size_t)n;
	return line;
}

void lineedit_remember(struct lineedit *le, const char *line)
{
#ifdef HAVE_LIBEDIT
	if (le->interactive && line[0] != '\0')
		add_history(line);
#else
	(void)le;
	(void)line;
#endif
}

void lineedit_close(struct lineedit *le)
{
	if (le == NULL)
		return;
#ifdef HAVE_LIBEDIT
	if (le->interactive && le->history != NULL && write_history(le->history) != 0)
		log_warn("could not save the line history to %s", le->history);
#endif
	free(le->history);
	free(le);
}
