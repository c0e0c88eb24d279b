/*
 * worker-note.c: the session hooks that report the pinned document's
 * clustering to the main thread: its progress (WORKER_EV_PROGRESS, done of
 * total (layer, KV head) pairs, as squeeze.c reports them) and the one-line
 * notices the session makes (WORKER_EV_NOTICE). A front end shows the
 * progress while it runs ("clustering document: 40 %") and the notice when
 * it ends. The hooks run on the worker's thread; the events copy what they
 * carry.
 */
#include "app/app-int.h"

#include <stdio.h>

void worker_hook_progress(void *ud, uint32_t done, uint32_t total)
{
	struct worker_event *ev = worker_event_new(WORKER_EV_PROGRESS);
	ev->done = done;
	ev->total = total;
	worker_push(ud, ev);
}

void worker_hook_notice(void *ud, const char *msg)
{
	struct worker_event *ev = worker_event_new(WORKER_EV_NOTICE);
	snprintf(ev->msg, sizeof ev->msg, "%s", msg != NULL ? msg : "");
	worker_push(ud, ev);
}
