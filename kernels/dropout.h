// Dropout with a counter-based mask: element i (row-major index into x) is kept iff
//   philox_uniform(seed, stream, i) >= p
// and kept values are scaled by 1 / (1 - p). The mask is a pure function of (seed, stream, i),
// so no mask tensor is stored: backward regenerates it from the same key, and every backend
// draws the same mask. The comparison is exact: philox_uniform is k / 2^24 with k the word's
// top 24 bits, so it is done as k >= ceil(p · 2^24) in integers (what a device kernel does too).
// p must be in [0, 1); p = 0 returns the input itself (same storage).
// dtypes: f32, f64, bf16 (bf16 scaled in f32 and rounded).
#pragma once
#include <cstdint>

#include "kernels/backend.h"

namespace kernels {

namespace cpu {
Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t stream);
// dx = the same mask and scale applied to g.
Tensor dropout_backward(const Tensor& g, double p, uint64_t seed, uint64_t stream);
}  // namespace cpu

namespace ref {
// Element by element from the definition; the result is f64.
Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t stream);
}  // namespace ref

// CUDA kernels (kernels/cuda/dropout.cu), on kernels::cuda::device() tensors of any layout: the
// same mask (the same Philox word per element) and the same values as the CPU ops, bit for bit.
namespace cuda {
Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t stream);
Tensor dropout_backward(const Tensor& g, double p, uint64_t seed, uint64_t stream);
}  // namespace cuda

inline Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t stream) {
  KERNEL_ROUTE(x.device(), dropout, x, p, seed, stream);
}
inline Tensor dropout_backward(const Tensor& g, double p, uint64_t seed, uint64_t stream) {
  KERNEL_ROUTE(g.device(), dropout_backward, g, p, seed, stream);
}

}  // namespace kernels
