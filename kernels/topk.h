// topk: the k largest (or smallest) elements along an axis, with their positions.
//
// The order is a total order, so the result is unique and every backend must reproduce it
// exactly (the MoE routers depend on this):
//   largest=true : descending value; NaN counts as larger than every number (as in torch);
//   largest=false: ascending value; NaN counts as larger than every number, so NaNs come last;
//   equal values (and NaNs among themselves, and -0 vs +0) are ordered by the lower index first.
// values keep x's dtype, indices are i64; both have x's shape with size k along axis.
// 0 <= k <= size along axis (k = 0 gives empty results).
#pragma once
#include "kernels/backend.h"

namespace kernels {

struct TopK {
  Tensor values;
  Tensor indices;
};

namespace cpu {
// Every dtype (bf16 compared as float). Partial selection per row, OpenMP over rows.
TopK topk(const Tensor& x, int64_t k, int axis = -1, bool largest = true);
}  // namespace cpu

namespace ref {
TopK topk(const Tensor& x, int64_t k, int axis = -1, bool largest = true);  // full stable sort, f64
}  // namespace ref

// CUDA kernels (kernels/cuda/topk.cu): x on kernels::cuda::device(), any layout and dtype; the
// same values and indices as the CPU op, bit for bit.
namespace cuda {
TopK topk(const Tensor& x, int64_t k, int axis = -1, bool largest = true);
}  // namespace cuda

inline TopK topk(const Tensor& x, int64_t k, int axis = -1, bool largest = true) {
  KERNEL_ROUTE(x.device(), topk, x, k, axis, largest);
}

}  // namespace kernels
