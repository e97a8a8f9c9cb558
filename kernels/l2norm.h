// L2 normalisation along one axis:  y = x / sqrt(sum(x²) + eps)   (IMP's embeddings, eps 1e-6).
// eps sits inside the square root, so a zero vector gives y = 0 (finite) and the map is smooth
// everywhere. Forward saves inv_norm = 1 / sqrt(sum(x²) + eps), shaped like x without `axis`
// (f32 for f32/bf16 input, f64 for f64). Backward, with s = sum(g·y) along the axis:
//   dx = inv_norm · (g - y · s)
// which is the exact derivative of the formula above (y = x · inv_norm).
// dtypes: f32, f64, bf16 (computed in f32, y and dx in the input dtype).
#pragma once
#include "kernels/backend.h"

namespace kernels {

struct L2NormOut {
  Tensor y, inv_norm;
};

namespace cpu {
L2NormOut l2_normalize(const Tensor& x, double eps, int axis);
Tensor l2_normalize_backward(const Tensor& g, const Tensor& y, const Tensor& inv_norm, int axis);
}  // namespace cpu

namespace ref {
// Plain loops in f64; results are f64.
L2NormOut l2_normalize(const Tensor& x, double eps, int axis);
Tensor l2_normalize_backward(const Tensor& g, const Tensor& y, const Tensor& inv_norm, int axis);
}  // namespace ref

namespace cuda {
// The GPU kernels (kernels/cuda/l2norm.cu): f32 or bf16 on the device, inv_norm in f32; any
// axis (the last one is the fast, coalesced case).
L2NormOut l2_normalize(const Tensor& x, double eps, int axis);
Tensor l2_normalize_backward(const Tensor& g, const Tensor& y, const Tensor& inv_norm, int axis);
}  // namespace cuda

inline L2NormOut l2_normalize(const Tensor& x, double eps = 1e-6, int axis = -1) {
  KERNEL_ROUTE(x.device(), l2_normalize, x, eps, axis);
}
inline Tensor l2_normalize_backward(const Tensor& g, const Tensor& y, const Tensor& inv_norm,
                                    int axis = -1) {
  KERNEL_ROUTE(y.device(), l2_normalize_backward, g, y, inv_norm, axis);
}

}  // namespace kernels
