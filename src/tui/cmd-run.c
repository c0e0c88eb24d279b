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

/* A name and what it means: a line of the help's keys or glossary. */
struct help_pair {
	const char *name, *text;
};

/* The keys the help lists (the bindings live in curses.c). */
static const struct help_pair tui_keys[] = {
	{ "Enter", "send the message (or run a :command); during a reply it stays in the input line" },
	{ "Ctrl-J, Alt-Enter", "new line in the message" },
	{ "Ctrl-C", "stop the reply; clear the input line; on an empty line twice in a row, quit" },
	{ "Tab", "complete :commands and their arguments" },
	{ "Up/Down, Ctrl-R", "walk and search the history; emacs keys edit the line" },
	{ "/TEXT Enter",
	  "search the chat (the help when it is open); / Enter the next older match, ? Enter the "
	  "next newer one; //TEXT sends a message that starts with /" },
	{ "F1, Alt-1",
	  "this help (Up/Down/PgUp/PgDn/Home/End scroll it, /TEXT or :help TEXT searches it; Esc or "
	  "F1 closes)" },
	{ "F2-F5, Alt-2..Alt-5", "chat, attention, KV memory, retention (the tab on small terminals)" },
	{ "F12, Alt-=", "the plugins' pane (at 160x40 and more in place of attention and KV memory)" },
	{ "Alt-s, F13",
	  "the sparsity pane: what sparse attention (--sparse, :sparse) chose at the last step" },
	{ "F6/F7, Alt-6/Alt-7", "attention pane: layer - / +" },
	{ "F8/F9, Alt-8/Alt-9", "attention pane: head - / +" },
	{ "F10, Alt-0", "one head / mean / max over heads" },
	{ "F11, Alt--", "the overview metric (entropy, sink mass, k90)" },
	{ "Shift-Up/Down, Alt-k/j", "an earlier / later query token in the attention pane" },
	{ "Shift-Left/Right, Alt-h/l, click",
	  "select a token in the retention strip (a click beside the tokens, or on the selected one, "
	  "lets go)" },
	{ "Shift-PgUp/PgDn, Alt-p/n", "the previous / next turn's first token in the strip" },
	{ "Shift-Home/End, Alt-g/G", "the first token; let go (the live tail)" },
	{ "Esc",
	  "close the help; let go of the selected token; back to the bottom of the chat; back to the "
	  "latest attention step (the first that applies)" },
	{ "PgUp/PgDn",
	  "scroll the chat; with a token selected (or on the retention tab), page the strip" },
	{ "mouse wheel",
	  "scroll the chat (over the strip: move the selection; in the help: scroll it)" },
	{ "Ctrl-L", "redraw the screen" },
};

/* The words the panes use, in a line each. */
static const struct help_pair tui_glossary[] = {
	{ "KV cache", "the keys and values of the tokens the model still sees; the budget caps it" },
	{ "budget", "the most tokens the cache keeps; past it the policy evicts (0: every slot)" },
	{ "policy", "the rule that decides which tokens stay (streaming, h2o, sirllm, ...)" },
	{ "sparse attention",
	  "a decode step attends only some cached keys (quest: the pages whose bound scores "
	  "highest; hip: a tree search); keys touched is their share against dense" },
	{ "shadow",
	  "under sparse attention, a dense pass every N steps that measures the attention mass the "
	  "choice captured and the bound's tightness (true max logit / bound); not in the speed" },
	{ "sink",
	  "one of the first tokens, kept always: attention piles up on them whatever they say" },
	{ "key token", "a token a policy keeps for its score (surprisal, accumulated attention)" },
	{ "recent window", "the latest tokens, kept as they are" },
	{ "pinned", "a token you keep (:pin): never evicted" },
	{ "document",
	  "the text :doc / --doc pins at the start of a conversation: never evicted; "
	  "squeezed attention clusters its keys" },
	{ "surprisal", "-log p of a token given what came before (nats): how unexpected it was" },
	{ "entropy", "how spread a head's attention is over the keys (nats; ln n at most)" },
	{ "k90", "the fewest keys that hold 90% of a head's attention: small means focused" },
	{ "sink mass", "the share of a head's attention on the sink tokens" },
	{ "paper / compat",
	  "sirllm's two scorings: the paper's token entropy, or the released code's" },
	{ "step", "one forward pass: the query is its last token (Shift-Up walks back)" },
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
		help_entry(&lines, &n, &cap, tui_keys[i].name, tui_keys[i].text, 36, w);
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
	help_push(&lines, &n, &cap, "");
	help_push(&lines, &n, &cap, "Glossary");
	for (size_t i = 0; i < KVS_ARRAY_LEN(tui_glossary); i++)
		help_entry(&lines, &n, &cap, tui_glossary[i].name, tui_glossary[i].text, 26, w);
	*out = lines;
	return n;
}

void tui_help_free(char **lines, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(lines[i]);
	free(lines);
}

bool tui_help_find(struct tui *t, const char *text)
{
	char **lines;
	size_t n = tui_help_lines(t->rt, t->help_w > 0 ? t->help_w - 2 : 78, &lines);
	size_t from = 0;
	bool found = false;

	/* the same text again: on from the line shown */
	if (t->help && strcmp(text, t->help_find) == 0)
		from = (size_t)t->help_scroll + 1;
	else
		snprintf(t->help_find, sizeof t->help_find, "%s", text);
	for (size_t k = 0; k < n && !found; k++) {
		size_t i = (from + k) % n; /* round to the top */
		if (tui_has_text(lines[i], text)) {
			t->help_scroll = (int)i;
			found = true;
		}
	}
	tui_help_free(lines, n);
	t->help = true;
	return found;
}

bool tui_search_line(struct tui *t, const char *line)
{
	const char *text;
	int dir = 1;

	if (line[0] == '/' && line[1] == '/')
		return false; /* "//..." is a message starting with '/' */
	if (strcmp(line, "?") == 0 && t->chat_find[0] != '\0' && !t->help)
		dir = -1;
	else if (line[0] != '/')
		return false;
	text = line[0] == '/' && line[1] != '\0' ? line + 1 : t->help ? t->help_find : t->chat_find;
	if (text[0] == '\0') {
		tui_status(t, true, "/TEXT searches %s", t->help ? "the help" : "the chat");
	} else if (t->help) {
		if (tui_help_find(t, text))
			tui_status(t, false, "help: '%s' (/ again for the next)", text);
		else
			tui_status(t, true, "help: '%s' is nowhere in the help", text);
	} else if (tui_chat_find(t, text, dir)) {
		tui_status(t, false, "'%s' in message %d of %u; / older, ? newer", text, t->chat_hit + 1,
		           t->n_msgs);
	} else {
		tui_status(t, true, "'%s': no %s message holds it%s", text, dir > 0 ? "older" : "newer",
		           t->chat_hit >= 0 ? " (Esc: the bottom)" : "");
	}
	return true;
}
