/*
 * cuda_cold.cu: the CUDA backend's batched raw K/V copies, the device side
 * of the cold tier (engine_kv_save_batch, engine_kv_load_batch).
 *
 * Save: the engine's host ring (engine-int.h) is pinned memory this file
 * allocates, with a device staging buffer of the same size beside it (a
 * batch at ring offset o is staged at offset o). A batch runs on the copy
 * stream cst, after an event recorded on the compute stream (the keys the
 * decode wrote are in place): the slot list goes up, one gather kernel
 * copies every layer's K and V rows of each slot into the staging buffer
 * in engine_kv_save's layout (gpuplan_raw_off), the event `gathered` is
 * recorded, and one device-to-host copy moves the batch into the ring,
 * ending with the job's event. The compute stream waits for `gathered`
 * before its next write to the cache (cu_cold_fence: a forward, a slot
 * copy, a load), never for the host copy, which overlaps the decode. The
 * engine reads a batch's bytes only once its job's event completed
 * (cu_cold_job), and reuses its ring bytes only after that.
 *
 * Jobs: job j's event is done[j % CU_COLD_JOBS]. Starting job j when the
 * event of job j - CU_COLD_JOBS is still pending waits for it first, so a
 * job older than the window has completed; its error, if any, was
 * reported then (the copy stream's errors are sticky on the stream's
 * next calls too).
 *
 * Load: the rows go through a pinned upload buffer (one host copy, one
 * upload) into a device buffer and one scatter kernel writes them to
 * their slots on the compute stream, so the next forward sees them; the
 * upload buffer is reused only after the previous upload's event.
 */
#include "gpu/gpu-int.h"

#include <stdlib.h>
#include <string.h>

/* Batch entry j (of n_layer layers, rows of row16 16-byte words): its
 * layer l's K row (v = 0) or V row (v = 1) in the raw layout. */
static __device__ __forceinline__ uint64_t cc_off(uint32_t j, uint32_t l, uint32_t v,
                                                  uint32_t n_layer, uint32_t row16)
{
	return gpuplan_raw_off(j, l, v, n_layer, row16);
}

/* Entry blockIdx.x (slot slots[j]) of layer blockIdx.y: scatter == 0
 * copies its K and V rows out of the caches into buf, else back in. */
static __global__ void k_cold_copy(uint4 *kc, uint4 *vc, const uint32_t *slots, uint4 *buf,
                                   uint32_t n_ctx, uint32_t n_layer, uint32_t row16, int scatter)
{
	uint32_t j = blockIdx.x, l = blockIdx.y;
	uint64_t at = ((uint64_t)l * n_ctx + slots[j]) * row16;
	uint4 *k = kc + at, *v = vc + at;
	uint4 *bk = buf + cc_off(j, l, 0, n_layer, row16), *bv = buf + cc_off(j, l, 1, n_layer, row16);
	for (uint32_t t = threadIdx.x; t < row16; t += blockDim.x) {
		if (scatter) {
			k[t] = bk[t];
			v[t] = bv[t];
		} else {
			bk[t] = k[t];
			bv[t] = v[t];
		}
	}
}

/* 16-byte words per K (or V) row of one slot and layer. */
static uint32_t cc_row16(const struct cu *c)
{
	return c->hp.n_head_kv * c->hp.head_dim * (uint32_t)sizeof(__half) / 16;
}

/* Launch the gather (scatter 0) or scatter of n entries on stream st. */
static void cc_launch(struct cu *c, cudaStream_t st, const uint32_t *d_slots, uint32_t n,
                      uint8_t *buf, int scatter)
{
	dim3 grid(n, c->hp.n_layer);
	k_cold_copy<<<grid, 128, 0, st>>>((uint4 *)c->kc, (uint4 *)c->vc, d_slots, (uint4 *)buf,
	                                  c->plan.n_ctx, c->hp.n_layer, cc_row16(c), scatter);
}

int cu_cold_init(struct cu *c, struct err *e)
{
	struct cu_cold *k = &c->cold;
	CU_TRY(cudaStreamCreateWithFlags(&k->cst, cudaStreamNonBlocking), "cudaStreamCreate (cold)");
	CU_TRY(cudaEventCreateWithFlags(&k->main, cudaEventDisableTiming), "cudaEventCreate (cold)");
	CU_TRY(cudaEventCreateWithFlags(&k->gathered, cudaEventDisableTiming),
	       "cudaEventCreate (cold)");
	CU_TRY(cudaEventCreateWithFlags(&k->up, cudaEventDisableTiming), "cudaEventCreate (cold)");
	CU_TRY(cudaEventCreateWithFlags(&k->loaded, cudaEventDisableTiming), "cudaEventCreate (cold)");
	for (int i = 0; i < CU_COLD_JOBS; i++)
		CU_TRY(cudaEventCreateWithFlags(&k->done[i], cudaEventDisableTiming),
		       "cudaEventCreate (cold)");
	uint64_t ctx = c->plan.n_ctx;
	CU_TRY(cudaMalloc((void **)&k->d_slots, ctx * 4), "cudaMalloc (cold)");
	CU_TRY(cudaMalloc((void **)&k->d_lslots, ctx * 4), "cudaMalloc (cold)");
	CU_TRY(cudaMallocHost((void **)&k->h_slots, ctx * 4), "cudaMallocHost (cold)");
	CU_TRY(cudaMallocHost((void **)&k->h_lslots, ctx * 4), "cudaMallocHost (cold)");
	k->ok = true;
	return KVS_OK;
}

void cu_cold_free(struct cu *c)
{
	struct cu_cold *k = &c->cold;
	if (k->cst != NULL)
		(void)cudaStreamSynchronize(k->cst);
	cudaEvent_t evs[] = { k->main, k->gathered, k->up, k->loaded };
	for (size_t i = 0; i < KVS_ARRAY_LEN(evs); i++)
		if (evs[i] != NULL)
			cudaEventDestroy(evs[i]);
	for (int i = 0; i < CU_COLD_JOBS; i++)
		if (k->done[i] != NULL)
			cudaEventDestroy(k->done[i]);
	void *dev[] = { k->d_slots, k->d_lslots, k->d_ring, k->d_load };
	for (size_t i = 0; i < KVS_ARRAY_LEN(dev); i++)
		if (dev[i] != NULL)
			cudaFree(dev[i]);
	void *pin[] = { k->h_slots, k->h_lslots, k->h_load };
	for (size_t i = 0; i < KVS_ARRAY_LEN(pin); i++)
		if (pin[i] != NULL)
			cudaFreeHost(pin[i]);
	if (k->cst != NULL)
		cudaStreamDestroy(k->cst);
	memset(k, 0, sizeof *k);
}

void cu_cold_fence(struct cu *c)
{
	struct cu_cold *k = &c->cold;
	if (!k->gather_pending)
		return;
	/* an error here shows at the stream's next call, which checks */
	(void)cudaStreamWaitEvent(c->st, k->gathered, 0);
	k->gather_pending = false;
}

void *cu_ring_alloc(void *state, size_t bytes, struct err *e)
{
	struct cu *c = (struct cu *)state;
	struct cu_cold *k = &c->cold;
	if (!k->ok) {
		err_set(e, KVS_ESTATE, "CUDA cold copies: the copy stream was not created");
		return NULL;
	}
	if (k->h_ring != NULL) {
		err_set(e, KVS_ESTATE, "CUDA cold copies: a ring exists: expected it given back first");
		return NULL;
	}
	void *h = NULL, *d = NULL;
	if (cudaMallocHost(&h, bytes) != cudaSuccess) {
		(void)cudaGetLastError();
		err_set(e, KVS_ENOMEM, "CUDA cold copies: %zu bytes of pinned host memory refused", bytes);
		return NULL;
	}
	if (cudaMalloc(&d, bytes) != cudaSuccess) {
		(void)cudaGetLastError();
		cudaFreeHost(h);
		err_set(e, KVS_ENOMEM, "CUDA cold copies: %zu bytes of device staging refused", bytes);
		return NULL;
	}
	k->h_ring = (uint8_t *)h;
	k->d_ring = (uint8_t *)d;
	k->ring_bytes = bytes;
	return h;
}

void cu_ring_free(void *state, void *p)
{
	struct cu *c = (struct cu *)state;
	struct cu_cold *k = &c->cold;
	if (p == NULL || p != k->h_ring)
		return;
	(void)cudaStreamSynchronize(k->cst); /* the engine waited; this is belt and braces */
	cudaFreeHost(k->h_ring);
	cudaFree(k->d_ring);
	k->h_ring = k->d_ring = NULL;
	k->ring_bytes = 0;
}

int cu_kv_gather(void *state, const uint32_t *slots, uint32_t n, void *dst, uint64_t *job,
                 struct err *e)
{
	struct cu *c = (struct cu *)state;
	struct cu_cold *k = &c->cold;
	uint64_t bytes = (uint64_t)n * 2 * c->hp.n_layer * cc_row16(c) * 16;
	uint8_t *h = (uint8_t *)dst;
	if (k->h_ring == NULL || h < k->h_ring || h + bytes > k->h_ring + k->ring_bytes)
		return err_set(e, KVS_EARG, "CUDA cold copies: destination outside the ring");
	if (n == 0 || n > c->plan.n_ctx)
		return err_set(e, KVS_EARG, "CUDA cold copies: %u slots: expected 1..%u", n, c->plan.n_ctx);
	uint64_t off = (uint64_t)(h - k->h_ring), j = k->next_job;
	/* the window: job j reuses the event of job j - CU_COLD_JOBS */
	CU_TRY(cudaEventSynchronize(k->done[j % CU_COLD_JOBS]), "cold copy (an earlier one)");
	/* the slot list's staging is free once the last upload ran */
	CU_TRY(cudaEventSynchronize(k->up), "cold copy (slot list)");
	memcpy(k->h_slots, slots, (size_t)n * 4);
	/* after what the compute stream enqueued so far (the keys are written) */
	CU_TRY(cudaEventRecord(k->main, c->st), "cold copy (event)");
	CU_TRY(cudaStreamWaitEvent(k->cst, k->main, 0), "cold copy (wait)");
	CU_TRY(cudaMemcpyAsync(k->d_slots, k->h_slots, (size_t)n * 4, cudaMemcpyHostToDevice, k->cst),
	       "cold copy (slot list)");
	CU_TRY(cudaEventRecord(k->up, k->cst), "cold copy (event)");
	cc_launch(c, k->cst, k->d_slots, n, k->d_ring + off, 0);
	CU_TRY(cudaGetLastError(), "cold gather");
	CU_TRY(cudaEventRecord(k->gathered, k->cst), "cold copy (event)");
	k->gather_pending = true;
	CU_TRY(cudaMemcpyAsync(h, k->d_ring + off, bytes, cudaMemcpyDeviceToHost, k->cst),
	       "cold copy (to the host)");
	CU_TRY(cudaEventRecord(k->done[j % CU_COLD_JOBS], k->cst), "cold copy (event)");
	k->next_job = j + 1;
	*job = j;
	return KVS_OK;
}

int cu_kv_job(void *state, uint64_t job, bool wait, bool *done, struct err *e)
{
	struct cu *c = (struct cu *)state;
	struct cu_cold *k = &c->cold;
	*done = true;
	if (job >= k->next_job)
		return err_set(e, KVS_EARG, "CUDA cold copies: job %llu was never started",
		               (unsigned long long)job);
	if (job + CU_COLD_JOBS < k->next_job)
		return KVS_OK; /* out of the window: waited for when its event was reused */
	cudaEvent_t ev = k->done[job % CU_COLD_JOBS];
	cudaError_t st = wait ? cudaEventSynchronize(ev) : cudaEventQuery(ev);
	if (st == cudaErrorNotReady) {
		*done = false;
		return KVS_OK;
	}
	CU_TRY(st, "cold copy");
	return KVS_OK;
}

int cu_kv_scatter(void *state, const uint32_t *slots, uint32_t n, const void *rows, struct err *e)
{
	struct cu *c = (struct cu *)state;
	struct cu_cold *k = &c->cold;
	if (!k->ok)
		return err_set(e, KVS_ESTATE, "CUDA cold copies: the copy stream was not created");
	if (n == 0)
		return KVS_OK;
	uint64_t bytes = (uint64_t)n * 2 * c->hp.n_layer * cc_row16(c) * 16;
	/* the pinned upload buffer is free once the previous load's upload ran */
	CU_TRY(cudaEventSynchronize(k->loaded), "cold load (an earlier one)");
	if (bytes > k->load_bytes) {
		if (k->h_load != NULL)
			cudaFreeHost(k->h_load);
		if (k->d_load != NULL)
			cudaFree(k->d_load);
		k->h_load = NULL;
		k->d_load = NULL;
		k->load_bytes = 0;
		CU_TRY(cudaMallocHost((void **)&k->h_load, bytes), "cudaMallocHost (cold load)");
		CU_TRY(cudaMalloc((void **)&k->d_load, bytes), "cudaMalloc (cold load)");
		k->load_bytes = bytes;
	}
	memcpy(k->h_load, rows, bytes);
	memcpy(k->h_lslots, slots, (size_t)n * 4);
	for (uint32_t i = 0; i < n; i++)
		cu_sp_loaded(c, slots[i]);
	cu_cold_fence(c);
	CU_TRY(cudaMemcpyAsync(k->d_load, k->h_load, bytes, cudaMemcpyHostToDevice, c->st),
	       "cold load (upload)");
	CU_TRY(cudaMemcpyAsync(k->d_lslots, k->h_lslots, (size_t)n * 4, cudaMemcpyHostToDevice, c->st),
	       "cold load (slot list)");
	CU_TRY(cudaEventRecord(k->loaded, c->st), "cold load (event)");
	cc_launch(c, c->st, k->d_lslots, n, k->d_load, 1);
	CU_TRY(cudaGetLastError(), "cold scatter");
	return KVS_OK;
}
