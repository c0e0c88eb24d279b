/*
 * kv_restore.c: rebuilding the KV cache's token metadata from a saved
 * session (kv_cache_restore) and recomputing the derived statistics
 * (kv_cache_recompute), with the same checks a live cache keeps.
 */
#include "kv/kv-int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* -------------------------------------------------------------- restoring */

uint32_t kv_cache_turn(const struct kv_cache *c)
{
	return c->turn;
}

int kv_cache_restore(struct kv_cache *c, const struct kv_restore *r, struct err *e)
{
	kv_cache_clear(c);
	/* per-head keep-sets: the store keeps the union, not the heads' sets;
	 * every head keeps every restored token, cut at the next eviction */
	uint32_t cap = kv_heads_on(c) ? kv_slot_cap(c) : c->cfg.budget;
	if (r->n > cap)
		return err_set(e, KVS_EARG, "restore: %u tokens exceed the KV budget of %u", r->n, cap);
	for (uint32_t i = 0; i < r->n; i++) {
		const struct kv_tok *t = &r->toks[i];
		if (t->token < 0 || (uint32_t)t->token >= c->n_vocab)
			return err_set(e, KVS_EARG, "restore: token %u has id %d, expected 0..%u", i, t->token,
			               c->n_vocab - 1);
		if (t->orig_pos < 0 || (i > 0 && t->orig_pos <= r->toks[i - 1].orig_pos) ||
		    t->orig_pos >= r->next_pos)
			return err_set(e, KVS_EARG,
			               "restore: token %u at original position %d: expected positions "
			               "rising from 0 and below the next position %d",
			               i, t->orig_pos, r->next_pos);
		if (t->pos < 0)
			return err_set(e, KVS_EARG, "restore: token %u at position %d, expected >= 0", i,
			               t->pos);
		if (t->role > KV_ROLE_ASSISTANT || (t->flags & ~KV_FLAG_ALL) != 0 || t->turn > r->turn)
			return err_set(e, KVS_EARG,
			               "restore: token %u has role %u, flags 0x%x, turn %u: expected a "
			               "role 0..%d, flags within 0x%x and a turn up to %u",
			               i, t->role, t->flags, t->turn, KV_ROLE_ASSISTANT, KV_FLAG_ALL, r->turn);
	}
	for (uint32_t i = 0; i < r->n; i++) {
		struct kv_tok *t = &c->toks[i];
		*t = r->toks[i];
		t->slot = i;
		int rc = engine_kv_set_pos(c->eng, i, t->pos, e);
		if (rc != KVS_OK) {
			kv_cache_clear(c);
			return rc;
		}
	}
	/* the free-slot stack hands out n, n+1, ... next */
	c->n = r->n;
	c->n_free = c->n_ctx - r->n;
	for (uint32_t i = 0; i < c->n_free; i++)
		c->free_slots[i] = c->n_ctx - 1 - i;
	c->next_pos = r->next_pos;
	c->turn = r->turn;
	c->n_seen = r->n_seen;
	c->n_evicted = r->n_evicted;
	c->n_evictions = r->n_evictions;
	kv_heads_reset(c);
	c->bytes_peak = kv_bytes(c);
	if (c->acc != NULL) {
		for (uint32_t i = 0; i < r->n; i++)
			c->acc_tok[i] = r->toks[i].orig_pos;
		if (r->acc != NULL) {
			memcpy(c->acc, r->acc, (size_t)r->n * c->acc_stride * sizeof *c->acc);
		} else {
			for (uint32_t i = 0; i < r->n; i++) {
				float s = isnan(r->toks[i].score) ? 0.0f : r->toks[i].score;
				for (uint32_t k = 0; k < c->acc_stride; k++)
					c->acc[(size_t)i * c->acc_stride + k] = s / (float)c->acc_stride;
			}
		}
	}
	if (r->logits != NULL) {
		memcpy(c->logits, r->logits, c->n_vocab * sizeof *c->logits);
		c->have_logits = true;
		if (kv_need_stats(c)) {
			c->logits_lse = kv_row_lse(c->logits, c->n_vocab, &c->logits_ent);
			c->have_lse = true;
		}
	}
	kv_debug_check(c);
	return KVS_OK;
}

int kv_cache_load_rows(struct kv_cache *c, const uint8_t *rows, struct err *e)
{
	for (uint32_t i = 0; i < c->n; i++)
		kv_store_marks(c, c->toks[i].slot, rows + (size_t)i * c->bytes_per_token);
	if (kv_store_on(c) && c->hkeep != NULL) {
		kv_heads_count(c);
		c->heads_over = kv_heads_load(c) > c->cfg.budget;
		c->bytes_peak = kv_bytes(c);
	}
	if (kv_store_on(c) && kv_heads_load(c) > engine_kv_rows(c->eng))
		return err_set(e, KVS_EUNSUPPORTED,
		               "restore: a head keeps %u tokens, the per-head store holds %u rows",
		               kv_heads_load(c), engine_kv_rows(c->eng));
	kv_store_sync(c, NULL, 0);
	int rc = KVS_OK;
	for (uint32_t i = 0; i < c->n && rc == KVS_OK; i++)
		rc = engine_kv_load(c->eng, c->toks[i].slot, c->toks[i].pos,
		                    rows + (size_t)i * c->bytes_per_token, e);
	kv_debug_check(c);
	return rc;
}

int kv_cache_recompute(struct kv_cache *c, struct err *e)
{
	if (kv_store_on(c) && c->n > engine_kv_rows(c->eng))
		return err_set(e, KVS_EUNSUPPORTED,
		               "recompute: %u tokens, every head keeping each, over the per-head "
		               "store's %u rows (expected the session's snapshot, whose rows say "
		               "which heads keep what)",
		               c->n, engine_kv_rows(c->eng));
	kv_store_sync(c, NULL, 0);
	uint32_t chunk = KVS_MAX(1u, c->cfg.n_batch);
	int32_t *ids = xmallocarray(chunk, sizeof *ids);
	struct engine_out o;
	int rc = KVS_OK;
	c->have_logits = c->have_lse = false;
	for (uint32_t done = 0; done < c->n && rc == KVS_OK;) {
		uint32_t m = 0;
		while (done + m < c->n && m < chunk &&
		       (m == 0 || c->toks[done + m].pos > c->toks[done + m - 1].pos)) {
			ids[m] = c->toks[done + m].token;
			c->bslot[m] = c->toks[done + m].slot;
			c->bpos[m] = c->toks[done + m].pos;
			m++;
		}
		struct engine_batch b = { 0 };
		b.n_tokens = m;
		b.tokens = ids;
		b.pos = c->bpos;
		b.slot = c->bslot;
		b.n_visible = done + m; /* slots 0 .. done+m-1: the tokens so far */
		b.logits = done + m == c->n ? ENGINE_LOGITS_LAST : ENGINE_LOGITS_NONE;
		rc = engine_forward(c->eng, &b, &o, e);
		if (rc == KVS_OK && o.logits != NULL) {
			memcpy(c->logits, o.logits, c->n_vocab * sizeof(float));
			c->have_logits = true;
			if (kv_need_stats(c)) {
				c->logits_lse = kv_row_lse(c->logits, c->n_vocab, &c->logits_ent);
				c->have_lse = true;
			}
		}
		done += m;
	}
	free(ids);
	return rc;
}
