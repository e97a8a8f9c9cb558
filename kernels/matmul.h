// Dense matrix products through BLAS (OpenBLAS on the CPU).
//
// matmul(a, b, ta, tb) = op(a) · op(b), op(x) = x or its transpose in the last two dims.
//   a [..., M, K] (or [..., K, M] if ta), b [K, N] (or [N, K] if tb)        -> [..., M, N]
//     A contiguous batch of a is folded into M: one GEMM for all leading dims.
//   a and b both with batch dims: the batch dims broadcast (NumPy rules)   -> [batch..., M, N]
// matmul_out(out, a, b, ta, tb, alpha, beta): out = alpha · op(a)·op(b) + beta · out, with the
//   shapes of matmul; lets a caller accumulate (beta = 1) without a temporary. out must not
//   overlap a or b.
// bmm(a, b, ta, tb): a [B, M, K], b [B, K, N] (each optionally transposed) -> [B, M, N];
//   a batch of size 1 on either side is broadcast.
//
// Layouts: an operand whose last dim is contiguous (row stride >= its width), or which is a
// transposed contiguous matrix (strides [1, ld]), goes to BLAS as is by choosing the transpose
// flag; only other layouts are copied. The same holds for `out`.
// A single-row or single-column result goes to GEMV instead of GEMM.
// Batches: one threaded GEMM per batch element, or the batch spread over OpenMP threads with
// single-threaded GEMMs when the matrices are small or the batch divides well over the threads
// (the policy and its thresholds are in kernels/cpu/matmul.cpp, spread_over_batch).
// dtypes: f32, f64, and bf16 (computed in f32 and rounded back; a native bf16 GEMM path through
// oneDNN comes later, see DESIGN.md §3). a, b (and out) must share one dtype.
#pragma once
#include "kernels/backend.h"

namespace kernels {
namespace cpu {
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);
void matmul_out(Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                double alpha, double beta);
Tensor bmm(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);
}  // namespace cpu

namespace ref {
// Triple loops in f64; the result is f64. Same shape rules as the kernels above.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);
Tensor bmm(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);
}  // namespace ref

namespace cuda {
// cuBLAS behind kernels/cuda/blas.h (kernels/cuda/matmul.cu): the same semantics, f32 / bf16 /
// f64, device tensors only.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);
void matmul_out(Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                double alpha, double beta);
Tensor bmm(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);
}  // namespace cuda

inline Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false) {
  KERNEL_ROUTE(a.device(), matmul, a, b, trans_a, trans_b);
}
inline void matmul_out(Tensor& out, const Tensor& a, const Tensor& b, bool trans_a = false,
                       bool trans_b = false, double alpha = 1.0, double beta = 0.0) {
  KERNEL_ROUTE(out.device(), matmul_out, out, a, b, trans_a, trans_b, alpha, beta);
}
inline Tensor bmm(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false) {
  KERNEL_ROUTE(a.device(), bmm, a, b, trans_a, trans_b);
}
}  // namespace kernels
