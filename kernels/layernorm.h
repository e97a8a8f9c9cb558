// LayerNorm over the last dim: y = (x - mean) · rstd · weight + bias, rstd = 1 / sqrt(var + eps),
// var the biased (1/D) variance. weight and bias are [D] and each may be undefined (IMP's blocks
// use LayerNorm without bias; a plain normalisation has neither).
//
// Forward saves mean and rstd per row ([...] = x's shape without the last dim), in f32 for f32
// and bf16 input, f64 for f64 input. Statistics are two-pass (mean, then the mean of squared
// deviations) with f64 accumulation, so rows with a large common offset keep their precision.
// Backward:  xhat = (x - mean) · rstd,  gw = g · weight,
//   dx = rstd · (gw - mean(gw) - xhat · mean(gw · xhat)),
//   dweight = Σ_rows g · xhat,  dbias = Σ_rows g.
// Backward recovers each row's exact mean from the saved one (mean + mean(x - mean), in the
// same pass), so an f32-rounded mean of a row with a large offset costs no precision.
// The weight/bias reductions over rows are computed as partial sums over fixed row chunks, then
// summed in chunk order: no atomics, and the result does not depend on the thread count.
// dtypes: x f32, f64 or bf16 (computed in f32); y and dx have x's dtype; weight and bias may have
// any floating dtype (converted); dweight and dbias come in the compute dtype (f32 or f64).
#pragma once
#include "kernels/backend.h"

namespace kernels {

struct LayerNormOut {
  Tensor y, mean, rstd;
};
struct LayerNormGrads {
  Tensor dx, dweight, dbias;  // dweight undefined without weight, dbias unless has_bias
};

namespace cpu {
LayerNormOut layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
LayerNormGrads layernorm_backward(const Tensor& g, const Tensor& x, const Tensor& weight,
                                  const Tensor& mean, const Tensor& rstd, bool has_bias);
}  // namespace cpu

namespace ref {
// Plain loops in f64; every result is f64.
LayerNormOut layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
LayerNormGrads layernorm_backward(const Tensor& g, const Tensor& x, const Tensor& weight,
                                  const Tensor& mean, const Tensor& rstd, bool has_bias);
}  // namespace ref

namespace cuda {
// The GPU kernels (kernels/cuda/layernorm.cu): x, weight and bias f32 or bf16 on the device;
// mean, rstd, dweight and dbias in f32; dweight/dbias reduced deterministically (no atomics).
LayerNormOut layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
LayerNormGrads layernorm_backward(const Tensor& g, const Tensor& x, const Tensor& weight,
                                  const Tensor& mean, const Tensor& rstd, bool has_bias);
}  // namespace cuda

inline LayerNormOut layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias,
                              double eps = 1e-6) {
  KERNEL_ROUTE(x.device(), layernorm, x, weight, bias, eps);
}
inline LayerNormGrads layernorm_backward(const Tensor& g, const Tensor& x, const Tensor& weight,
                                         const Tensor& mean, const Tensor& rstd, bool has_bias) {
  KERNEL_ROUTE(x.device(), layernorm_backward, g, x, weight, mean, rstd, has_bias);
}

}  // namespace kernels
