// The CUDA backend's thin wrapper over cuBLAS, plus the device-side layout helpers that library
// calls need. Plain C++ (no CUDA types), so it can be included anywhere.
//
// blas::gemm / blas::gemm_strided_batched take ROW-MAJOR operands (the engine's layout) and turn
// them into cuBLAS's column-major call (C = A·B row-major is Cᵀ = Bᵀ·Aᵀ column-major):
//   C = alpha · op(A)·op(B) + beta · C,  op(A) m×k, op(B) k×n, C m×n
//   A stored m×k with row stride lda (or k×m when trans_a), B stored k×n (or n×k when trans_b),
//   C stored m×n with row stride ldc; lda/ldb/ldc >= the stored row length (and >= 1).
//   Batched: element p of each operand starts at X + p·stride_x (stride 0 broadcasts A or B).
// dtypes (one for A, B and C): f32 and bf16 with fp32 accumulation (cublasGemmEx /
// cublasGemmStridedBatchedEx with CUBLAS_COMPUTE_32F; bf16 results rounded once), and f64
// (CUBLAS_COMPUTE_64F). With beta = 0, C's old contents (NaN included) are ignored.
// The handle is created lazily, one per host thread, and bound to the backend stream
// (kernels::cuda::stream()) on every call. Errors throw engine::Error naming the cuBLAS call and
// its status; arguments cuBLAS would reject are checked first, with the same message in both
// builds.
// Under the sim (g++ -DENGINE_SIM) no cuBLAS symbol is referenced: the column-major call is
// carried out by the CPU matmul on the host-backed device pointers. Tests of this wrapper
// therefore verify OUR plumbing (row/column-major translation, transposes, leading dimensions,
// batch strides), not NVIDIA's library.
#pragma once
#include <cstdint>

#include "engine/tensor.h"

namespace kernels::cuda {
namespace blas {

void gemm(engine::DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
          double alpha, const void* a, int64_t lda, const void* b, int64_t ldb, double beta,
          void* c, int64_t ldc);

void gemm_strided_batched(engine::DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n,
                          int64_t k, double alpha, const void* a, int64_t lda, int64_t stride_a,
                          const void* b, int64_t ldb, int64_t stride_b, double beta, void* c,
                          int64_t ldc, int64_t stride_c, int64_t batch);

}  // namespace blas

// A contiguous row-major copy of a device tensor (the tensor itself when it already is one).
// Tensor::contiguous() cannot copy strided device tensors yet; library wrappers use this.
engine::Tensor contiguous(const engine::Tensor& t);
// dst = src element by element on the device: same shape and dtype, any strides (dst must not
// overlap src or have broadcast dims).
void copy_strided(engine::Tensor& dst, const engine::Tensor& src);

}  // namespace kernels::cuda
