// Grouped expert matmul: the GEMMs of every expert of an MoE layer in one call (DESIGN.md §4.3).
//
// The rows of x are sorted by expert, so expert e owns the contiguous rows
// [offset_e, offset_e + counts[e]) with offset_e = counts[0] + ... + counts[e-1].
//
// grouped_matmul(x, w, counts, trans_w) -> y [T, N]
//   x [T, K], counts i64 [E] (each >= 0, sum = T; empty experts allowed),
//   w [E, K, N], or [E, N, K] when trans_w (PyTorch Linear weights, y = x · wᵀ per expert);
//   y[rows of e] = x[rows of e] · op(w[e]).
// grouped_matmul_wgrad(x, dy, counts, trans_w) -> dw [E, K, N] (or [E, N, K] when trans_w)
//   dw[e] = x_eᵀ · dy_e (or dy_eᵀ · x_e): a GEMM whose inner dimension is the expert's row count;
//   an expert with no rows gets a zero gradient.
// The input gradient needs no kernel of its own: dx = grouped_matmul(dy, w, counts, !trans_w).
//
// dtypes: f32 and f64 (bf16 input on the CPU: computed in f32, rounded back; the output has the
// input dtype). x, w (dy) share one dtype. Any strides are accepted; the kernels copy what BLAS
// cannot take as is.
// CPU: one BLAS GEMM per expert; many small experts run in parallel over OpenMP threads with
// single-threaded BLAS, few large ones one after another with threaded BLAS.
// CUDA (kernels/cuda/grouped_matmul.cu): one launch for all experts and no host synchronisation
// (counts stay on the device and are checked by the kernel: bad counts fail the launch); f32 (CUDA
// cores, exact fp32) and bf16 (tensor cores, fp32 accumulation), no f64; any K and N (16-byte
// vector accesses where alignment allows). See the top of that file for the tile scheduler, the
// tile sizes and the limitations.
#pragma once
#include "kernels/backend.h"

namespace kernels {
namespace cpu {
Tensor grouped_matmul(const Tensor& x, const Tensor& w, const Tensor& counts, bool trans_w);
Tensor grouped_matmul_wgrad(const Tensor& x, const Tensor& dy, const Tensor& counts, bool trans_w);
}  // namespace cpu

namespace ref {
// Plain loops in f64; results are f64. Same shape rules as above.
Tensor grouped_matmul(const Tensor& x, const Tensor& w, const Tensor& counts, bool trans_w);
Tensor grouped_matmul_wgrad(const Tensor& x, const Tensor& dy, const Tensor& counts, bool trans_w);
}  // namespace ref

namespace cuda {
Tensor grouped_matmul(const Tensor& x, const Tensor& w, const Tensor& counts, bool trans_w);
Tensor grouped_matmul_wgrad(const Tensor& x, const Tensor& dy, const Tensor& counts, bool trans_w);

// CTA tile choice of the CUDA kernels. `automatic` (the default) picks per call from the shapes
// (see grouped_matmul.cu); tests and benchmarks force one to cover both.
enum class GroupedTile { automatic, large, small };
void set_grouped_matmul_tile(GroupedTile tile);
GroupedTile grouped_matmul_tile();
}  // namespace cuda

inline Tensor grouped_matmul(const Tensor& x, const Tensor& w, const Tensor& counts,
                             bool trans_w = false) {
  KERNEL_ROUTE(x.device(), grouped_matmul, x, w, counts, trans_w);
}
inline Tensor grouped_matmul_wgrad(const Tensor& x, const Tensor& dy, const Tensor& counts,
                                   bool trans_w = false) {
  KERNEL_ROUTE(x.device(), grouped_matmul_wgrad, x, dy, counts, trans_w);
}
}  // namespace kernels
