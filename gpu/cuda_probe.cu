/*
 * cuda_probe.cu: find a CUDA device through the runtime API.
 *
 * With cudart linked statically this runs on any machine: without a driver
 * cudaGetDeviceCount fails with a status that we turn into one line.
 */
#include "gpu/gpu.h"

#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

extern "C" bool gpu_compiled(void)
{
	return true;
}

extern "C" int gpu_probe(struct gpu_info *info, struct err *e)
{
	int n = 0, drv = 0, rt = 0;
	cudaError_t st;
	cudaDeviceProp prop;

	cudaRuntimeGetVersion(&rt);
	cudaDriverGetVersion(&drv);
	st = cudaGetDeviceCount(&n);
	if (st == cudaErrorInsufficientDriver && drv == 0)
		return err_set(e, KVS_EUNSUPPORTED, "no NVIDIA driver is loaded (CUDA runtime %d.%d)",
		               rt / 1000, (rt % 1000) / 10);
	if (st == cudaErrorInsufficientDriver)
		return err_set(e, KVS_EUNSUPPORTED,
		               "the NVIDIA driver supports CUDA %d.%d, this build needs %d.%d", drv / 1000,
		               (drv % 1000) / 10, rt / 1000, (rt % 1000) / 10);
	if (st != cudaSuccess || n == 0)
		return err_set(e, KVS_EUNSUPPORTED, "no CUDA device found (%s)",
		               st != cudaSuccess ? cudaGetErrorString(st) : "device count is 0");
	memset(info, 0, sizeof *info);
	info->n_devices = n;
	info->device = 0;
	st = cudaGetDeviceProperties(&prop, 0);
	if (st != cudaSuccess)
		return err_set(e, KVS_EUNSUPPORTED, "cannot query CUDA device 0: %s",
		               cudaGetErrorString(st));
	snprintf(info->name, sizeof info->name, "%s", prop.name);
	info->mem_bytes = prop.totalGlobalMem;
	info->cc_major = prop.major;
	info->cc_minor = prop.minor;
	info->driver_version = drv;
	info->runtime_version = rt;
	return KVS_OK;
}
