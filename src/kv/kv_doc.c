/*
 * kv_doc.c: the pinned document's hooks in the KV cache. A front end that
 * loads a document (--doc, :doc) feeds it with the feed flags set to
 * KV_FLAG_PINNED | KV_FLAG_DOC, so that no retention policy evicts it
 * (kv_protected keeps pinned tokens) and the views and squeezed attention
 * find it by its flag; the turn before it is fed pinned too, so that a
 * compacting policy never moves the document's positions (squeezed's
 * clusters are of its keys as rotated there).
 */
#include "kv/kv-int.h"

void kv_cache_set_feed_flags(struct kv_cache *c, uint8_t flags)
{
	c->feed_flags = (uint8_t)(flags & (KV_FLAG_PINNED | KV_FLAG_DOC));
}

uint32_t kv_cache_doc_slots(const struct kv_cache *c, uint32_t *slots)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < c->n; i++)
		if (c->toks[i].flags & KV_FLAG_DOC)
			slots[n++] = c->toks[i].slot;
	return n;
}
