/* nocuda.c: the GPU interface in a build without CUDA: never a device. */
#include "gpu/gpu.h"

bool gpu_compiled(void)
{
	return false;
}

int gpu_probe(struct gpu_info *info, struct err *e)
{
	(void)info;
	return err_set(e, KVS_EUNSUPPORTED,
	               "this kvscope was built without CUDA (configure found no nvcc)");
}

const struct backend_ops *gpu_backend_ops(void)
{
	return NULL;
}

void gpu_timing(bool on)
{
	(void)on;
}

double gpu_last_ms(void)
{
	return -1.0;
}

void gpu_graph_counts(uint64_t *captures, uint64_t *hits)
{
	*captures = 0;
	*hits = 0;
}

uint64_t gpu_graph_nodes(void)
{
	return 0;
}
