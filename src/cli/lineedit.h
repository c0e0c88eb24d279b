/*
 * lineedit.h: reading input lines for the plain chat: libedit (emacs keys,
 * Ctrl-R search, history kept in $XDG_STATE_HOME/kvscope/history) when
 * stdin is a terminal and libedit was built in; plain reads otherwise.
 */
#ifndef KVS_CLI_LINEEDIT_H
#define KVS_CLI_LINEEDIT_H

#include "base/base.h"

struct lineedit;

/* interactive: stdin is a terminal (prompts shown, history kept). */
struct lineedit *lineedit_open(bool interactive);
/* One line without its newline (caller owns), or NULL at end of input;
 * *len is its length in bytes, more than strlen when it holds a NUL. */
char *lineedit_read(struct lineedit *le, const char *prompt, size_t *len);
/* Remember line in the history (interactive only). */
void lineedit_remember(struct lineedit *le, const char *line);
/* Save the history and release everything. */
void lineedit_close(struct lineedit *le);
/* The history file path (caller owns). */
char *lineedit_history_path(void);

#endif
