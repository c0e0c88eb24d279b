/*
 * policy.c: Lua retention policies for callers on other threads: the score
 * provider script_policy_scorer hands out runs the policy in a copy of its
 * plugin that belongs to the thread calling it, never in the plugin's own
 * state (which belongs to the main thread).
 *
 * A copy (struct script_copy) is a runtime of its own in which the
 * plugin's source ran again, made on the main thread when the provider is
 * asked for; from then on the main thread leaves its runtime alone. The
 * first call claims it for the calling thread; a call from another thread
 * is refused (the cache falls back to the base policy), so each copy's
 * states have one thread. A copy mirrors its plugin through messages: every
 * command the plugin runs ("name args", e.g. :recency-entropy 2 8) is queued
 * in the copy's inbox and runs there, in order, before its next policy call,
 * so parameters a command sets reach the policy; hooks and timers do not
 * run in copies. The inbox is bounded (POLICY_INBOX_MAX_BYTES): a copy
 * whose owner has not called it while more piled up is retired, and its
 * policy falls back. When the plugin is unloaded or disabled the copy is
 * retired: its next call closes its runtime on its own thread and fails;
 * an unclaimed copy is closed by the main thread at once. Copy shells live
 * until the main runtime is freed, since providers point at them.
 *
 * copy->mu guards claimed, owner, retired and the inbox; it is a leaf and
 * is never held while Lua runs (script-int.h states the whole rule).
 */
#include "script/script-int.h"

#include <stdlib.h>
#include <string.h>

/* A copy's inbox holds at most this many bytes (the commands' text and a
 * pointer each): past them the copy is retired (its owner has not called it
 * while they piled up). */
#define POLICY_INBOX_MAX_BYTES (1 << 20)

/* -------------------------------------------------------- the main thread */

struct script_policy *policy_find(const struct script_rt *rt, const char *name)
{
	for (size_t i = 0; i < rt->n_policies; i++)
		if (rt->policies[i]->p != NULL && strcmp(rt->policies[i]->name, name) == 0)
			return rt->policies[i];
	return NULL;
}

size_t script_policy_count(const struct script_rt *rt)
{
	size_t n = 0;
	for (size_t i = 0; i < rt->n_policies; i++)
		n += rt->policies[i]->p != NULL;
	return n;
}

const char *script_policy_name_at(const struct script_rt *rt, size_t i)
{
	for (size_t k = 0; k < rt->n_policies; k++)
		if (rt->policies[k]->p != NULL && i-- == 0)
			return rt->policies[k]->name;
	return NULL;
}

/* Close cp's runtime (on its owner's thread, or an unclaimed one's). */
static void policy_copy_close(struct script_copy *cp)
{
	script_rt_free(cp->rt);
	cp->rt = NULL;
	cp->pol = NULL;
}

/* Drop the commands queued for cp; under cp->mu. */
static void policy_inbox_clear(struct script_copy *cp)
{
	for (size_t i = 0; i < cp->n_inbox; i++)
		free(cp->inbox[i]);
	free(cp->inbox);
	cp->inbox = NULL;
	cp->n_inbox = 0;
	cp->inbox_bytes = 0;
}

static int policy_copy_score(void *ud, const struct kv_tok *toks, uint32_t n, uint32_t n_keep,
                             float *scores, double deadline_ms, struct err *e);

/* Make *out, a copy of pol's plugin with its own runtime. */
static int policy_copy_new(struct script_rt *rt, const struct script_policy *pol,
                           struct script_copy **out, struct err *e)
{
	struct script_config c = rt->cfg;
	struct script_rt *crt;
	struct script_plugin *P;
	int rc;

	c.send = NULL;      /* the front end's session is not the copy's to drive */
	c.headless = false; /* print goes to the copy's log, not to stdout from another thread */
	rc = script_rt_new(&crt, &c, e);
	if (rc != KVS_OK)
		return rc;
	crt->vocab = rt->vocab; /* the front end's model outlives its worker */
	rc = script_plugin_copy(crt, pol->p, &P, e);
	if (rc != KVS_OK) {
		err_prefix(e, "Lua policy %s: its plugin does not load again for another thread",
		           pol->name);
		script_rt_free(crt);
		return rc;
	}
	struct script_policy *cpol = policy_find(crt, pol->name);
	if (cpol == NULL || cpol->p != P) {
		script_rt_free(crt);
		return err_set(e, KVS_ESTATE,
		               "Lua policy %s: plugin %s does not register it when it "
		               "loads, so it cannot run on another thread",
		               pol->name, pol->p->name);
	}
	struct script_copy *cp = xcalloc(1, sizeof *cp);
	cp->name = xstrdup(pol->name);
	cp->of = pol->p;
	cp->rt = crt;
	cp->pol = cpol;
	pthread_mutex_init(&cp->mu, NULL);
	cp->next = rt->copies;
	rt->copies = cp;
	*out = cp;
	return KVS_OK;
}

int script_policy_scorer(struct script_rt *rt, const char *name, struct kv_scorer *out,
                         struct kv_policy *base, struct err *e)
{
	struct script_policy *pol = policy_find(rt, name);
	if (pol == NULL)
		return err_set(e, KVS_ENOTFOUND, "no Lua retention policy named %s is registered", name);
	if (pol->p->is_script)
		return err_set(e, KVS_EARG,
		               "Lua policy %s belongs to the script %s: it runs only in the "
		               "sessions the script opens",
		               name, pol->p->name);
	struct script_copy *cp;
	int rc = policy_copy_new(rt, pol, &cp, e);
	if (rc != KVS_OK)
		return rc;
	out->name = cp->name;
	out->fn = policy_copy_score;
	out->ud = cp;
	out->budget_ms = pol->budget_ms;
	if (base != NULL)
		*base = pol->base;
	return KVS_OK;
}

/* Retire cp (main thread): its owner closes it at its next call; an
 * unclaimed copy is claimed and closed here. */
static void policy_copy_retire(struct script_copy *cp)
{
	pthread_mutex_lock(&cp->mu);
	/* unclaimed: the main thread claims it to close it now; a caller
	 * then finds it retired and not its own, and leaves it alone */
	bool close = !cp->claimed;
	cp->claimed = true;
	if (close)
		cp->owner = pthread_self();
	cp->retired = true;
	cp->of = NULL; /* its plugin may go away; a later plugin may get its address */
	policy_inbox_clear(cp);
	pthread_mutex_unlock(&cp->mu);
	if (close)
		policy_copy_close(cp);
}

void policy_copies_post(struct script_rt *rt, const struct script_plugin *P, const char *name,
                        const char *args)
{
	size_t nl = strlen(name), al = strlen(args);
	for (struct script_copy *cp = rt->copies; cp; cp = cp->next) {
		if (cp->of != P)
			continue;
		char *msg = xmalloc(nl + al + 2);
		memcpy(msg, name, nl + 1);
		memcpy(msg + nl + 1, args, al + 1);
		pthread_mutex_lock(&cp->mu);
		size_t bytes = nl + al + 2 + sizeof *cp->inbox;
		bool full = cp->inbox_bytes + bytes > POLICY_INBOX_MAX_BYTES;
		bool retire = full && !cp->retired;
		if (cp->retired || full) {
			free(msg);
		} else {
			cp->inbox = xreallocarray(cp->inbox, cp->n_inbox + 1, sizeof *cp->inbox);
			cp->inbox[cp->n_inbox++] = msg;
			cp->inbox_bytes += bytes;
		}
		pthread_mutex_unlock(&cp->mu);
		if (retire) {
			/* its owner has not called for a long while: what it would run
			 * first is bounded, so the copy stops and its policy falls back */
			script_notify(rt, NULL,
			              "Lua policy %s stopped: its plugin's commands queued more "
			              "than %d KiB for it before the policy was called again",
			              cp->name, POLICY_INBOX_MAX_BYTES >> 10);
			policy_copy_retire(cp);
		}
	}
}

void policy_copies_retire(struct script_rt *rt, const struct script_plugin *P)
{
	for (struct script_copy *cp = rt->copies; cp; cp = cp->next)
		if (cp->of == P)
			policy_copy_retire(cp);
}

void policy_copies_free(struct script_rt *rt)
{
	while (rt->copies != NULL) {
		struct script_copy *cp = rt->copies;
		rt->copies = cp->next;
		if (cp->rt != NULL)
			policy_copy_close(cp);
		policy_inbox_clear(cp);
		pthread_mutex_destroy(&cp->mu);
		free(cp->name);
		free(cp);
	}
}

/* ------------------------------------------------------- the copy's owner */

/* The score provider of a copy: claim it, run what its plugin's commands
 * queued, then the policy, all in the copy's own states. */
static int policy_copy_score(void *ud, const struct kv_tok *toks, uint32_t n, uint32_t n_keep,
                             float *scores, double deadline_ms, struct err *e)
{
	struct script_copy *cp = ud;
	pthread_t self = pthread_self();
	char **inbox = NULL;
	size_t n_inbox = 0;

	pthread_mutex_lock(&cp->mu);
	if (!cp->claimed) {
		cp->claimed = true;
		cp->owner = self;
	}
	bool mine = pthread_equal(cp->owner, self), retired = cp->retired;
	if (mine && !retired) {
		inbox = cp->inbox;
		n_inbox = cp->n_inbox;
		cp->inbox = NULL;
		cp->n_inbox = 0;
		cp->inbox_bytes = 0;
	}
	pthread_mutex_unlock(&cp->mu);
	if (retired) {
		if (mine && cp->rt != NULL)
			policy_copy_close(cp); /* on its owner's thread, as its states were used */
		return err_set(e, KVS_ENOTFOUND, "Lua policy %s: its plugin was unloaded or disabled",
		               cp->name);
	}
	if (!mine)
		return err_set(e, KVS_ESTATE,
		               "Lua policy %s runs on the thread that first called it, "
		               "not on this one (ask script_policy_scorer for another)",
		               cp->name);
	cp->rt->thread = self;
	for (size_t i = 0; i < n_inbox; i++) {
		struct err ce;
		const char *name = inbox[i];
		/* a failure is in the copy's log and counts towards disabling it */
		script_command_run(cp->rt, name, name + strlen(name) + 1, &ce);
		free(inbox[i]);
	}
	free(inbox);
	return api_score(cp->pol, toks, n, n_keep, scores, deadline_ms, e);
}
