/*
 * cmd-run.c: the ':' command line around the table of cmd.c: splitting and
 * running a line (built-in commands first, then plugin commands), Tab
 * completion of command names and arguments, and the help's lines (the
 * keys, the built-in commands, the plugins' commands), wrapped to the
 * width. It reads the table only through tui_cmd_count and tui_cmd_at.
 */
#include "tui/tui-int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The plugin that registered command name, or NULL. */
static const char *cmd_plugin_of(struct script_rt *rt, const char *name)
{
	for (size_t i = 0; i < script_command_count(rt); i++) {
		struct script_command_info ci;
		script_command_at(rt, i, &ci);
		if (strcmp(ci.name, name) == 0)
			return ci.plugin;
	}
	return NULL;
}

int tui_cmd_run(struct tui_ctx *c, const char *line)
{
	char buf[1024], *argv[32], *p;
	int argc = 0;

	/* a command asked to be sent again counts only as the very next line */
	snprintf(c->armed_prev, sizeof c->armed_prev, "%s", c->t->armed);
	c->t->armed[0] = '\0';
	while (*line == ':' || *line == ' ')
		line++;
	if (strlen(line) >= sizeof buf)
		return tui_cmd_fail(c, "command too long: at most %zu characters", sizeof buf - 1);
	strcpy(buf, line);
	p = buf;
	while (*p && argc < (int)KVS_ARRAY_LEN(argv)) {
		while (*p == ' ' || *p == '\t' || *p == '\n')
			*p++ = '\0';
		if (*p == '\0')
			break;
		argv[argc++] = p;
		/* :lua takes the rest of the line as one argument */
		if (argc == 2 && strcmp(argv[0], "lua") == 0)
			break;
		while (*p && *p != ' ' && *p != '\t' && *p != '\n')
			p++;
	}
	if (argc == 0)
		return tui_cmd_fail(c, "empty command: expected one of :help");
	for (size_t i = 0; i < tui_cmd_count(); i++)
		if (strcmp(tui_cmd_at(i)->name, argv[0]) == 0)
			return tui_cmd_at(i)->exec(c, argc, argv);
	if (c->t->rt != NULL) {
		/* a plugin's command gets the rest of the line */
		const char *args = line + strlen(argv[0]);
		const char *plugin = cmd_plugin_of(c->t->rt, argv[0]);
		size_t n_log = plugin ? script_log_count(c->t->rt, plugin) : 0;
		struct err e;
		int rc;
		args += strspn(args, " \t");
		rc = script_command_run(c->t->rt, argv[0], args, &e);
		if (rc == KVS_OK) {
			/* what it printed or logged, else that it ran: never silence */
			size_t n = plugin ? script_log_count(c->t->rt, plugin) : 0;
			if (n > n_log)
				tui_status(c->t, false, ":%s: %s", argv[0],
				           script_log_line(c->t->rt, plugin, n - 1));
			else
				tui_status(c->t, false, ":%s done", argv[0]);
			return KVS_OK;
		}
		if (rc != KVS_ENOTFOUND)
			return tui_cmd_fail(c, ":%s: %s", argv[0], e.msg);
	}
	return tui_cmd_fail(c, "unknown command ':%s' (:help lists the commands)", argv[0]);
}

/* Fold one candidate into the completion: the common prefix and the list. */
static void comp_add(const char *cand, const char *word, const char **first, size_t *common,
                     char *names, size_t names_cap, int *n)
{
	size_t wlen = strlen(word);

	if (strncmp(cand, word, wlen) != 0)
		return;
	if (*first == NULL) {
		*first = cand;
		*common = strlen(cand);
	} else {
		size_t k = 0;
		while (k < *common && cand[k] == (*first)[k])
			k++;
		*common = k;
	}
	if (strlen(names) + strlen(cand) + 2 < names_cap) {
		if (names[0])
			strcat(names, " ");
		strcat(names, cand);
	}
	(*n)++;
}

int tui_cmd_complete(struct script_rt *rt, const char *line, char *out, size_t cap, char *names,
                     size_t names_cap)
{
	const char *word, *sp, *cand, *first = NULL;
	size_t common = 0, wlen;
	int n = 0;
	int (*src)(const char *, size_t, const char **) = tui_cmd_names;
	char *plug[32];
	size_t n_plug = 0;
	bool first_word;

	out[0] = '\0';
	names[0] = '\0';
	if (line[0] != ':')
		return 0;
	line++;
	sp = strrchr(line, ' ');
	first_word = sp == NULL;
	if (!first_word) {
		/* an argument: the command's own completion (a plugin's when it is theirs) */
		size_t cl = strcspn(line, " ");
		bool builtin = false;
		src = NULL;
		for (size_t i = 0; i < tui_cmd_count(); i++)
			if (strlen(tui_cmd_at(i)->name) == cl && strncmp(tui_cmd_at(i)->name, line, cl) == 0) {
				src = tui_cmd_at(i)->complete;
				builtin = true;
			}
		word = sp + 1;
		if (!builtin && rt != NULL && cl < 64) {
			char name[64];
			memcpy(name, line, cl);
			name[cl] = '\0';
			n_plug = script_command_complete(rt, name, word, plug, KVS_ARRAY_LEN(plug));
		}
		if (src == NULL && n_plug == 0)
			return 0;
	} else {
		word = line;
	}
	wlen = strlen(word);
	for (size_t i = 0; src != NULL && src(word, i, &cand); i++)
		comp_add(cand, word, &first, &common, names, names_cap, &n);
	for (size_t i = 0; i < n_plug; i++)
		comp_add(plug[i], word, &first, &common, names, names_cap, &n);
	if (first_word && rt != NULL) {
		for (size_t i = 0; i < script_command_count(rt); i++) {
			struct script_command_info ci;
			script_command_at(rt, i, &ci);
			comp_add(ci.name, word, &first, &common, names, names_cap, &n);
		}
	}
	if (first != NULL && common > wlen && common - wlen < cap) {
		memcpy(out, first + wlen, common - wlen);
		out[common - wlen] = '\0';
	}
	if (n == 1 && strlen(out) + 2 < cap)
		strcat(out, " ");
	for (size_t i = 0; i < n_plug; i++)
		free(plug[i]);
	return n;
}

/* The keys the help lists (the bindings live in curses.c). */
static const struct {
	const char *key, *does;
} tui_keys[] = {
	{ "Enter", "send the message (or run a :command); during a reply it stays in the input line" },
	{ "Ctrl-J, Alt-Enter", "new line in the message" },
	{ "Ctrl-C", "stop the reply; clear the input line; on an empty line twice in a row, quit" },
	{ "Tab", "complete :commands and their arguments" },
	{ "Up/Down, Ctrl-R", "walk and search the history; emacs keys edit the line" },
	{ "F1", "this help (Up/Down/PgUp/PgDn/Home/End scroll it; Esc or F1 closes)" },
	{ "F2 F3 F4 F5", "chat, attention, KV memory, retention (the tab on small terminals)" },
	{ "F12", "the plugins' pane (at 160x40 and more in place of attention and KV memory)" },
	{ "F6/F7, F8/F9", "attention pane: layer -/+, head -/+" },
	{ "F10, F11", "one head / mean / max over heads; the overview metric" },
	{ "Shift-Up/Down", "an earlier / later query token in the attention pane" },
	{ "Shift-Left/Right, click",
	  "select a token in the retention strip (a click beside the tokens, or on the selected one, "
	  "lets go)" },
	{ "Esc",
	  "let go of the selected token (the strip follows the live tail again); back to the latest "
	  "attention step; close the help" },
	{ "PgUp/PgDn",
	  "scroll the chat; with a token selected (or on the retention tab), page the strip" },
	{ "mouse wheel",
	  "scroll the chat (over the strip: move the selection; in the help: scroll it)" },
	{ "Shift-PgUp/PgDn", "the previous / next turn's first token in the strip" },
	{ "Shift-Home/End", "the first token; let go (the live tail)" },
	{ "Ctrl-L", "redraw the screen" },
};

/* Append line text (copied) to the help's lines. */
static void help_push(char ***lines, size_t *n, size_t *cap, const char *text)
{
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 64;
		*lines = xreallocarray(*lines, *cap, sizeof **lines);
	}
	(*lines)[(*n)++] = xstrdup(text);
}

/* One entry: "  NAME<pad>DESCRIPTION" with the description wrapped at
 * width w under column col; when the name leaves no room beside it, the
 * description goes on the lines below, indented. */
static void help_entry(char ***lines, size_t *n, size_t *cap, const char *name, const char *desc,
                       int col, int w)
{
	char buf[512];
	int ind = col, nl = tui_text_width(name, strlen(name));
	const char *p = desc;

	if (w < col + 24 || nl + 3 > col) {
		snprintf(buf, sizeof buf, "  %s", name);
		help_push(lines, n, cap, buf);
		ind = w < col + 24 ? 6 : col;
		nl = -1; /* the description starts on a line of its own */
	}
	while (*p != '\0') {
		int room = KVS_MAX(w - ind, 16);
		size_t len = strlen(p), cut = len;
		if ((int)len > room) {
			/* the last space within room; a word longer than room is cut */
			cut = (size_t)room;
			while (cut > 0 && p[cut] != ' ')
				cut--;
			if (cut == 0)
				cut = (size_t)room;
		}
		if (nl >= 0) {
			snprintf(buf, sizeof buf, "  %s%*s%.*s", name, ind - 2 - nl, "", (int)cut, p);
			nl = -1;
		} else {
			snprintf(buf, sizeof buf, "%*s%.*s", ind, "", (int)cut, p);
		}
		help_push(lines, n, cap, buf);
		p += cut;
		while (*p == ' ')
			p++;
	}
}

size_t tui_help_lines(struct script_rt *rt, int w, char ***out)
{
	char **lines = NULL, syn[96];
	size_t n = 0, cap = 0;

	help_push(&lines, &n, &cap, "Keys");
	for (size_t i = 0; i < KVS_ARRAY_LEN(tui_keys); i++)
		help_entry(&lines, &n, &cap, tui_keys[i].key, tui_keys[i].does, 26, w);
	help_push(&lines, &n, &cap, "");
	help_push(&lines, &n, &cap, "Commands");
	for (size_t i = 0; i < tui_cmd_count(); i++) {
		snprintf(syn, sizeof syn, ":%s %s", tui_cmd_at(i)->name, tui_cmd_at(i)->args);
		help_entry(&lines, &n, &cap, syn, tui_cmd_at(i)->help, 40, w);
	}
	if (rt != NULL && script_command_count(rt) > 0) {
		help_push(&lines, &n, &cap, "");
		help_push(&lines, &n, &cap, "Plugin commands");
		for (size_t i = 0; i < script_command_count(rt); i++) {
			struct script_command_info ci;
			char desc[256];
			script_command_at(rt, i, &ci);
			snprintf(syn, sizeof syn, ":%s ARGS", ci.name);
			snprintf(desc, sizeof desc, "%s (plugin %s)", ci.help && ci.help[0] ? ci.help : "-",
			         ci.plugin ? ci.plugin : "?");
			help_entry(&lines, &n, &cap, syn, desc, 40, w);
		}
	}
	*out = lines;
	return n;
}

void tui_help_free(char **lines, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(lines[i]);
	free(lines);
}
