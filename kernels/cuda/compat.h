// The one header every kernels/cuda/*.cu file includes. Under nvcc it is the real CUDA runtime;
// under g++ -DENGINE_SIM it is the CPU emulation layer in kernels/sim/, which runs the very same
// kernel source in the test suite (see kernels/sim/README.md). Kernels use only what both
// provide, plus these macros:
//
//   LAUNCH(kernel, grid, block, smem_bytes, stream)(args...)   the only way to launch a kernel
//       (no <<<>>> anywhere else). Put a template kernel with commas in parentheses:
//       LAUNCH((gemm<float, 64>), grid, block, 0, stream)(...).
//   SHARED(type, name, extents)    static shared memory, inside a kernel or device function:
//                                  SHARED(float, tile, [32][33]); SHARED(float, total); the sim
//                                  fills it with 0xFF bytes at every block start, so reads of
//                                  unwritten slots show up as NaN.
//   DYNAMIC_SHARED(type, name)     `type* name` pointing at the launch's dynamic shared memory
//                                  (16-byte aligned; also refilled with 0xFF at each block start).
//   CUDA_CHECK(call)               throws engine::Error naming the call and the CUDA error (with
//                                  the sim's detailed message under the sim).
//   NOINLINE                       __noinline__ (which the sim cannot define: libstdc++ uses the
//                                  same word inside __attribute__).
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#define LAUNCH(kernel, grid, block, smem_bytes, stream) kernel<<<(grid), (block), (smem_bytes), (stream)>>>
#define NOINLINE __noinline__
#define SHARED(type, name, ...) __shared__ type name __VA_ARGS__
#define DYNAMIC_SHARED(type, name)                                      \
  extern __shared__ __align__(16) unsigned char engine_dynamic_smem_[]; \
  type* name = reinterpret_cast<type*>(engine_dynamic_smem_)

#else
#include "kernels/sim/cuda_sim.h"

#define SHARED(type, name, ...)                                  \
  static thread_local type name __VA_ARGS__;                     \
  static thread_local unsigned long long name##_sim_serial_ = 0; \
  ::sim::detail::poison_shared(name##_sim_serial_, &name, sizeof(name))
#define DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::sim::detail::dynamic_smem())
#define NOINLINE __attribute__((noinline))
#endif

#include "engine/error.h"

namespace kernels::cuda {
[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* call) {
#if defined(__CUDACC__)
  ENGINE_FAIL("CUDA error in ", call, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
#else
  const char* detail = sim::error_detail(err);
  ENGINE_FAIL("CUDA error in ", call, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")",
              detail[0] ? " [sim: " : "", detail, detail[0] ? "]" : "");
#endif
}
}  // namespace kernels::cuda

#define CUDA_CHECK(call)                                          \
  do {                                                            \
    cudaError_t engine_cuda_err_ = (call);                        \
    if (engine_cuda_err_ != cudaSuccess) [[unlikely]]             \
      ::kernels::cuda::throw_cuda_error(engine_cuda_err_, #call); \
  } while (0)
