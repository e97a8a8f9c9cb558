// softmax and log_softmax over one axis (negative axes count from the end), and their backward
// kernels from the forward output y:
//   softmax_backward(g, y)     = y * (g - sum(g * y))
//   log_softmax_backward(g, y) = g - exp(y) * sum(g)
// (sums over the axis). dtypes: f32, f64, bf16 (computed in f32). Max-shifted, so large inputs
// are safe; -inf entries get probability 0 (a row that is all -inf gives NaN).
#pragma once
#include "kernels/backend.h"

namespace kernels {
namespace cpu {
Tensor softmax(const Tensor& x, int axis);
Tensor log_softmax(const Tensor& x, int axis);
Tensor softmax_backward(const Tensor& g, const Tensor& y, int axis);
Tensor log_softmax_backward(const Tensor& g, const Tensor& y, int axis);
}  // namespace cpu

// Plain f64 loops for the tests; results are f64 tensors.
namespace ref {
Tensor softmax(const Tensor& x, int axis);
Tensor log_softmax(const Tensor& x, int axis);
Tensor softmax_backward(const Tensor& g, const Tensor& y, int axis);
Tensor log_softmax_backward(const Tensor& g, const Tensor& y, int axis);
}  // namespace ref

// The GPU kernels (kernels/cuda/softmax.cu): f32 or bf16 on the device, computed in f32; any
// axis (the last one is the fast, coalesced case). An all -inf row gives NaN, as on the CPU.
namespace cuda {
Tensor softmax(const Tensor& x, int axis);
Tensor log_softmax(const Tensor& x, int axis);
Tensor softmax_backward(const Tensor& g, const Tensor& y, int axis);
Tensor log_softmax_backward(const Tensor& g, const Tensor& y, int axis);
}  // namespace cuda

inline Tensor softmax(const Tensor& x, int axis) { KERNEL_ROUTE(x.device(), softmax, x, axis); }
inline Tensor log_softmax(const Tensor& x, int axis) {
  KERNEL_ROUTE(x.device(), log_softmax, x, axis);
}
inline Tensor softmax_backward(const Tensor& g, const Tensor& y, int axis) {
  KERNEL_ROUTE(g.device(), softmax_backward, g, y, axis);
}
inline Tensor log_softmax_backward(const Tensor& g, const Tensor& y, int axis) {
  KERNEL_ROUTE(g.device(), log_softmax_backward, g, y, axis);
}

}  // namespace kernels
