// Host side of the CUDA backend, usable from plain C++ (no CUDA types here). The same code runs
// on a GPU (built by nvcc, tensors on Device cuda) and on the sim (built by g++ against
// kernels/sim, tensors on Device sim, "device" memory is guarded host memory).
#pragma once
#include <cstddef>
#include <cstdint>

#include "engine/device.h"

namespace kernels::cuda {

// The device tensors of this build live on: {sim, 0} in the sim build, {cuda, 0} under nvcc.
engine::Device device();
// Whether a device is usable (always true under the sim). When false, allocating on it throws a
// one-line error that says so and suggests --device cpu.
bool available();
void synchronize();
// The compute stream every kernel of the backend is launched on (a cudaStream_t).
void* stream();

struct DeviceAllocatorStats {
  size_t bytes_in_use = 0, peak_bytes = 0, bytes_cached = 0;
  uint64_t device_allocs = 0;  // calls that reached cudaMalloc
};
DeviceAllocatorStats allocator_stats();
void release_cached();

// After every LAUNCH: turns a launch or execution error into engine::Error naming the kernel,
// the file and the line. On a GPU only launch errors are caught here (kernels run async);
// ENGINE_CUDA_SYNC=1 synchronises after each launch to pin execution errors to their kernel.
void check_launch(const char* kernel, const char* file, int line);

}  // namespace kernels::cuda

#define CHECK_LAUNCH(kernel_name) ::kernels::cuda::check_launch(kernel_name, __FILE__, __LINE__)
