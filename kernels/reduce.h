// Reductions over one axis (negative axes count from the end; keepdim keeps it as size 1) and
// over the whole tensor (to a 0-d tensor).
//
// dtypes: f32, f64, and bf16 (computed in f32). Sums accumulate in f64. argmax returns i64
// indices of the first maximum; a NaN counts as the maximum (max and argmax propagate it).
// logsumexp is max-shifted; a row of -inf gives -inf. Reducing an empty axis: sum 0, mean NaN,
// logsumexp -inf; max and argmax throw.
#pragma once
#include "kernels/backend.h"

namespace kernels {
namespace cpu {
Tensor sum(const Tensor& x, int axis, bool keepdim = false);
Tensor mean(const Tensor& x, int axis, bool keepdim = false);
Tensor max(const Tensor& x, int axis, bool keepdim = false);
Tensor argmax(const Tensor& x, int axis, bool keepdim = false);
Tensor logsumexp(const Tensor& x, int axis, bool keepdim = false);
Tensor sum_all(const Tensor& x);
Tensor mean_all(const Tensor& x);
Tensor max_backward(const Tensor& g, const Tensor& argmax, const Shape& in_shape, int axis);
}  // namespace cpu

// Plain f64 loops for the tests; results are f64 tensors (argmax: i64).
namespace ref {
Tensor sum(const Tensor& x, int axis, bool keepdim = false);
Tensor mean(const Tensor& x, int axis, bool keepdim = false);
Tensor max(const Tensor& x, int axis, bool keepdim = false);
Tensor argmax(const Tensor& x, int axis, bool keepdim = false);
Tensor logsumexp(const Tensor& x, int axis, bool keepdim = false);
Tensor sum_all(const Tensor& x);
Tensor mean_all(const Tensor& x);
Tensor max_backward(const Tensor& g, const Tensor& argmax, const Shape& in_shape, int axis);
}  // namespace ref

// The GPU kernels (kernels/cuda/reduce.cu): f32 or bf16 on the device, accumulated in f32 per
// row (f64 across blocks for sum_all / mean_all, whose two-stage order is fixed by the size, so
// results are reproducible). Any axis (the last one is the fast, coalesced case).
namespace cuda {
Tensor sum(const Tensor& x, int axis, bool keepdim = false);
Tensor mean(const Tensor& x, int axis, bool keepdim = false);
Tensor max(const Tensor& x, int axis, bool keepdim = false);
Tensor argmax(const Tensor& x, int axis, bool keepdim = false);
Tensor logsumexp(const Tensor& x, int axis, bool keepdim = false);
Tensor sum_all(const Tensor& x);
Tensor mean_all(const Tensor& x);
// As the CPU op (f32, bf16 or f64 g; i64 indices; any strides), bit-identical: a scatter.
Tensor max_backward(const Tensor& g, const Tensor& argmax, const Shape& in_shape, int axis);
}  // namespace cuda

inline Tensor sum(const Tensor& x, int axis, bool keepdim = false) {
  KERNEL_ROUTE(x.device(), sum, x, axis, keepdim);
}
inline Tensor mean(const Tensor& x, int axis, bool keepdim = false) {
  KERNEL_ROUTE(x.device(), mean, x, axis, keepdim);
}
inline Tensor max(const Tensor& x, int axis, bool keepdim = false) {
  KERNEL_ROUTE(x.device(), max, x, axis, keepdim);
}
inline Tensor argmax(const Tensor& x, int axis, bool keepdim = false) {
  KERNEL_ROUTE(x.device(), argmax, x, axis, keepdim);
}
inline Tensor logsumexp(const Tensor& x, int axis, bool keepdim = false) {
  KERNEL_ROUTE(x.device(), logsumexp, x, axis, keepdim);
}
inline Tensor sum_all(const Tensor& x) { KERNEL_ROUTE(x.device(), sum_all, x); }
inline Tensor mean_all(const Tensor& x) { KERNEL_ROUTE(x.device(), mean_all, x); }
// Gradient of max over `axis`: g (the reduced shape, with or without the kept dim) goes to the
// argmax position of each slice, zeros elsewhere; the result has in_shape.
inline Tensor max_backward(const Tensor& g, const Tensor& argmax, const Shape& in_shape, int axis) {
  KERNEL_ROUTE(g.device(), max_backward, g, argmax, in_shape, axis);
}

}  // namespace kernels
