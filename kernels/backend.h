// How an op reaches its backend. Every op family has one header kernels/<family>.h that declares
//   namespace kernels::cpu  { the CPU implementation (kernels/cpu/<family>.cpp) }
//   namespace kernels::ref  { a plain loop reference in f64, used by tests (kernels/ref/<family>.cpp) }
//   namespace kernels::cuda { the CUDA implementation (kernels/cuda/<family>.cu), when built }
// and an inline entry point kernels::<op>(...) that routes by the first tensor's device:
//   inline Tensor softmax(const Tensor& x, int axis) { KERNEL_ROUTE(x.device(), softmax, x, axis); }
// Adding a backend adds a namespace and a branch here; models and the trainer never change.
#pragma once
#include "engine/tensor.h"

namespace kernels {
using engine::bf16;
using engine::Device;
using engine::DType;
using engine::Shape;
using engine::Tensor;

[[noreturn]] void no_backend(const Device& device, const char* op);
}  // namespace kernels

// ENGINE_HAS_CUDA is defined by builds that link the CUDA backend: the Makefile's g++ builds (its
// kernels/cuda/*.cu objects are compiled against the sim) and `make cuda` (nvcc). Without it (a
// dev build of a few files) a non-CPU tensor reaches no_backend(), a clear error.
#if defined(ENGINE_HAS_CUDA)
#define KERNEL_ROUTE(dev, NAME, ...)                                 \
  do {                                                               \
    if ((dev).is_cpu()) return ::kernels::cpu::NAME(__VA_ARGS__);    \
    return ::kernels::cuda::NAME(__VA_ARGS__);                       \
  } while (0)
#else
#define KERNEL_ROUTE(dev, NAME, ...)                                 \
  do {                                                               \
    if ((dev).is_cpu()) return ::kernels::cpu::NAME(__VA_ARGS__);    \
    ::kernels::no_backend((dev), #NAME);                             \
  } while (0)
#endif
