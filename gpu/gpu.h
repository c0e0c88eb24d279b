/*
 * gpu.h: the CUDA side as the rest of kvscope sees it.
 *
 * The same declarations are implemented by gpu/cuda_*.cu when configure
 * found nvcc and by gpu/nocuda.c otherwise, so no call site carries an
 * #ifdef. cudart is linked statically: a binary built with CUDA still starts
 * on a machine with no driver, and gpu_probe says why there is no device.
 */
#ifndef KVS_GPU_H
#define KVS_GPU_H

#include "base/base.h"

#ifdef __cplusplus
extern "C" {
#endif

struct gpu_info {
	int n_devices;
	int device;     /* the one we would use */
	char name[256]; /* "NVIDIA H100 80GB HBM3" */
	uint64_t mem_bytes;
	int cc_major, cc_minor; /* compute capability */
	int driver_version;     /* e.g. 12040 */
	int runtime_version;
};

/* True when this binary contains the CUDA backend. */
bool gpu_compiled(void);
/* Find a usable device. KVS_OK fills info; otherwise e says, in one line,
 * why not (built without CUDA, no driver, no device, driver too old). */
int gpu_probe(struct gpu_info *info, struct err *e);

struct backend_ops; /* engine/engine.h */

/* The CUDA backend (engine.h's interface), or NULL in a build without CUDA.
 * Its create fails with one line when there is no usable device. */
const struct backend_ops *gpu_backend_ops(void);

/* Benchmarks: when on, each CUDA forward is timed with events on the GPU;
 * gpu_last_ms is the last one in milliseconds (-1: none, or no CUDA). */
void gpu_timing(bool on);
double gpu_last_ms(void);
/* Decode graphs captured and replayed so far in this process (0 without CUDA). */
void gpu_graph_counts(uint64_t *captures, uint64_t *hits);
/* Nodes (kernel launches and memsets) of the decode graph captured last
 * (0: none yet, or no CUDA): the GPU check holds it to gpuplan_launches. */
uint64_t gpu_graph_nodes(void);

#ifdef __cplusplus
}
#endif

#endif
