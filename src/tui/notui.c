/*
 * notui.c: the workbench's interface in a build without ncursesw
 * (configure --without-tui): tui_available() says so, and tui_run
 * explains how to get a chat anyway.
 */
#include "tui/tui.h"

bool tui_available(void)
{
	return false;
}

int tui_run(struct session *s, const struct tui_options *o, struct err *e)
{
	(void)s;
	(void)o;
	return err_set(e, KVS_EUNSUPPORTED,
	               "the workbench was not built (configure found no ncursesw); try 'kvscope chat'");
}
