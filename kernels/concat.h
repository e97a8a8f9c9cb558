// Concatenation along an axis, and its inverse, split (views, no copy).
#pragma once
#include <vector>

#include "kernels/backend.h"

namespace kernels {

namespace cpu {
// All tensors share dtype and rank and agree in every dim except `axis` (any size there,
// including 0). Accepts every dtype and non-contiguous inputs; the result is contiguous.
Tensor concat(const std::vector<Tensor>& tensors, int axis);
}  // namespace cpu

namespace ref {
Tensor concat(const std::vector<Tensor>& tensors, int axis);  // f64 result
}  // namespace ref

// CUDA kernel (kernels/cuda/concat.cu): every tensor on kernels::cuda::device(), any dtype and
// layout; the same result as cpu::concat, bit for bit.
namespace cuda {
Tensor concat(const std::vector<Tensor>& tensors, int axis);
}  // namespace cuda

inline Tensor concat(const std::vector<Tensor>& tensors, int axis) {
  ENGINE_CHECK(!tensors.empty(), "concat: no tensors given");
  KERNEL_ROUTE(tensors[0].device(), concat, tensors, axis);
}

// Consecutive pieces of x along `axis` with the given sizes (which must add up to the size of
// that axis); each piece is a view of x. Device-independent: it only builds views.
inline std::vector<Tensor> split(const Tensor& x, int axis, const std::vector<int64_t>& sizes) {
  engine::check_defined(x, "split", "x");
  axis = engine::normalize_axis(axis, x.dim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) {
    ENGINE_CHECK(s >= 0, "split: negative size ", s, " for ", x.describe());
    total += s;
  }
  ENGINE_CHECK(total == x.size(axis), "split: sizes add up to ", total, " but axis ", axis, " of ",
               x.describe(), " has ", x.size(axis));
  std::vector<Tensor> out;
  out.reserve(sizes.size());
  int64_t start = 0;
  for (int64_t s : sizes) {
    out.push_back(x.narrow(axis, start, s));
    start += s;
  }
  return out;
}

}  // namespace kernels
