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
