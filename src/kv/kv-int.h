/*
 * kv-int.h: the insides shared by kv_cache.c and kv_policy.c (not for other
 * layers): the shape of a policy-table row and what a policy's selection
 * function is given.
 *
 * A selection runs on the candidates, the cached tokens that are not pinned,
 * in cache order. It marks at most target of them to keep, with the flag
 * saying why (sink, key token; none for recency), and never looks at or
 * changes anything else: the cache does the gathering, the positions and
 * the events.
 */
#ifndef KVS_KV_INT_H
#define KVS_KV_INT_H

#include "kv/kv_cache.h"

#define KV_KEEP 0x80u /* in kv_select.keep: the candidate stays */

struct kv_select {
	const struct kv_tok *toks;   /* (n_all) cache order */
	const uint32_t *cand;        /* (n) cache indices of the candidates, ascending */
	uint32_t n;
	const float *acc;            /* (n_all, acc_stride) accumulated attention, or NULL */
	uint32_t acc_stride;         /* n_layer * n_head_kv */
	uint32_t m;                  /* tokens about to come in */
	uint32_t budget;             /* the cache's budget in tokens */
	uint32_t target;             /* keep at most this many candidates (< n) */
	const float *p;              /* the policy's parameters */
	uint8_t *keep;               /* (n) out: 0, or KV_KEEP | KV_FLAG_SINK | KV_FLAG_KEY */
	float *score;                /* (n) scratch */
	uint32_t *order;             /* (n) scratch */
};

/* Where a policy's retention score comes from. */
enum kv_score_kind {
	KV_SCORE_NONE = 0,   /* no score (NaN) */
	KV_SCORE_SURPRISAL,  /* token entropy e_i (SirLLM), decayed per turn */
	KV_SCORE_ATTN,       /* accumulated attention per (layer, KV head) (H2O) */
};

struct kv_policy_def {
	const char *name;
	const char *help;
	const struct kv_param_def *params;
	uint32_t n_params;
	bool evicts;
	enum kv_score_kind score;
	int decay_param;   /* index of the per-turn decay factor, or -1 */
	int compat_param;  /* index of the mode parameter (1 = SirLLM code's scoring), or -1 */
	enum kv_pos_mode (*pos_mode)(const float *p);
	uint32_t (*n_sinks)(const float *p); /* tokens flagged sink as they arrive */
	/* LM-Infinite's distance cap in positions (0: the model's training context) */
	int32_t (*cap)(const float *p);
	/* LM-Infinite's Λ-mask: n_local, middle top-k, its first layer and
	 * distance (all 0 when the policy has none) */
	void (*lambda)(const float *p, int32_t *n_local, uint32_t *topk, uint32_t *from_layer,
	               int32_t *insert_at);
	void (*select)(struct kv_select *s);
};

/* Keep the top k candidates by s->score among those not yet kept (ties:
 * the more recent), flagging them; returns how many were marked. */
uint32_t kv_select_top(struct kv_select *s, uint32_t k, uint8_t flag);

#endif
