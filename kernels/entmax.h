// entmax-1.5 over the last axis (Peters, Niculae & Martins 2019), the SpheroMoE combine weights:
// a softmax-like map whose outputs sum to 1 but are exactly 0 below a threshold.
//
// Forward, per row z of length K (the exact sort-based algorithm): x = (z - max z) / 2, sorted
// descending into x_(1) >= ... >= x_(K); for k = 1..K
//   mean_k = (1/k) Σ_{i<=k} x_(i),  ss_k = Σ_{i<=k} (x_(i) - mean_k)²,  delta_k = (1 - ss_k) / k,
//   tau_k = mean_k - sqrt(max(delta_k, 0));
// support k* = #{k : tau_k <= x_(k)}, tau = tau_{k*}, p = max(x - tau, 0)².
// (ss_k is accumulated with Welford's update, which equals k·(mean of squares - mean²) without
// its cancellation.)
// Backward from the output p: s = sqrt(p), dz = g·s - s · Σ(g·s) / Σ s.
//
// A row that holds a NaN, or whose maximum is not finite (+inf, or every entry -inf), gives a
// row of NaN. -inf entries of other rows get exactly 0.
// dtypes: f32 and bf16 give f32 (routing statistics are fp32), f64 gives f64 (CPU only);
// any rank >= 1, K = size of the last axis >= 1.
#pragma once
#include "kernels/backend.h"

namespace kernels {

namespace cpu {
Tensor entmax15(const Tensor& z);
Tensor entmax15_backward(const Tensor& g, const Tensor& p);
}  // namespace cpu

// f64 reference computed differently: tau found by bisection on Σ max(x - tau, 0)² = 1.
namespace ref {
Tensor entmax15(const Tensor& z);
Tensor entmax15_backward(const Tensor& g, const Tensor& p);
}  // namespace ref

// kernels/cuda/entmax.cu: one warp per row, the row sorted in shared memory; the forward
// handles K <= 512 (larger K throws naming the limit), the backward any K.
namespace cuda {
inline constexpr int64_t kEntmaxMaxK = 512;
Tensor entmax15(const Tensor& z);
Tensor entmax15_backward(const Tensor& g, const Tensor& p);
}  // namespace cuda

inline Tensor entmax15(const Tensor& z) { KERNEL_ROUTE(z.device(), entmax15, z); }
inline Tensor entmax15_backward(const Tensor& g, const Tensor& p) {
  KERNEL_ROUTE(g.device(), entmax15_backward, g, p);
}

}  // namespace kernels
