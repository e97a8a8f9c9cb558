// Fused bias + GELU (tanh approximation), the activation after the first Linear of an MLP block:
//   y = gelu_tanh(x + bias),   x [..., D], bias [D],
//   gelu_tanh(v) = 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v³))).
// Backward, with v = x + bias:  dx = g · gelu_tanh'(v),  dbias = Σ dx over every dim but the last
// (summed in fixed row chunks, then in chunk order: reproducible for any thread count).
// One pass over x (and g) instead of the three of add + gelu (+ sum_to_shape).
// dtypes: x f32, f64 or bf16 (computed in f32); y and dx have x's dtype; bias and g may have any
// floating dtype (converted); dbias comes in the compute dtype (f32 or f64).
#pragma once
#include "kernels/backend.h"

namespace kernels {

struct BiasGeluGrads {
  Tensor dx, dbias;
};

namespace cpu {
Tensor bias_gelu(const Tensor& x, const Tensor& bias);
BiasGeluGrads bias_gelu_backward(const Tensor& g, const Tensor& x, const Tensor& bias);
}  // namespace cpu

namespace ref {
// Plain loops in f64 from the textbook formula; every result is f64.
Tensor bias_gelu(const Tensor& x, const Tensor& bias);
BiasGeluGrads bias_gelu_backward(const Tensor& g, const Tensor& x, const Tensor& bias);
}  // namespace ref

namespace cuda {
// The GPU kernels (kernels/cuda/bias_gelu.cu): x, bias and g f32 or bf16 on the device; dbias in
// f32, reduced deterministically (no atomics).
Tensor bias_gelu(const Tensor& x, const Tensor& bias);
BiasGeluGrads bias_gelu_backward(const Tensor& g, const Tensor& x, const Tensor& bias);
}  // namespace cuda

inline Tensor bias_gelu(const Tensor& x, const Tensor& bias) {
  KERNEL_ROUTE(x.device(), bias_gelu, x, bias);
}
inline BiasGeluGrads bias_gelu_backward(const Tensor& g, const Tensor& x, const Tensor& bias) {
  KERNEL_ROUTE(x.device(), bias_gelu_backward, g, x, bias);
}

}  // namespace kernels
