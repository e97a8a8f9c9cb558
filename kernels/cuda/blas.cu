// cuBLAS wrapper (see kernels/cuda/blas.h) and the device copy that gives library calls a layout
// they accept.
//
// copy_strided kernel: one thread per element in a grid-stride loop, the flat index unravelled
// over up to 8 dims for both sides. Memory-bound (2 × element size bytes per element), but the
// per-element index arithmetic and uncoalesced side make it ~20–40% of 3.35 TB/s; it only runs
// for layouts that BLAS cannot describe (e.g. a stride-2 last dim), never on the hot path.
#include "kernels/cuda/blas.h"

#include <algorithm>
#include <climits>

#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"

#if defined(__CUDACC__)
#include <cublas_v2.h>
#else
#include "kernels/matmul.h"  // the sim carries the column-major call out on the CPU
#endif

namespace kernels::cuda {
namespace {

using engine::DType;
using engine::Shape;
using engine::Tensor;

#if defined(__CUDACC__)
[[noreturn]] void throw_cublas_error(cublasStatus_t st, const char* call) {
  ENGINE_FAIL("cuBLAS error in ", call, ": ", cublasGetStatusName(st), " (",
              cublasGetStatusString(st), ")");
}
#define CUBLAS_CHECK(call)                                          \
  do {                                                              \
    cublasStatus_t engine_cublas_st_ = (call);                      \
    if (engine_cublas_st_ != CUBLAS_STATUS_SUCCESS) [[unlikely]]    \
      ::kernels::cuda::throw_cublas_error(engine_cublas_st_, #call); \
  } while (0)

// One handle per host thread (cuBLAS handles must not be used by two threads at once), created
// on first use. Never destroyed: at thread or process exit the CUDA context may already be gone.
cublasHandle_t handle() {
  thread_local cublasHandle_t h = [] {
    cublasHandle_t created = nullptr;
    CUBLAS_CHECK(cublasCreate(&created));
    return created;
  }();
  CUBLAS_CHECK(cublasSetStream(h, static_cast<cudaStream_t>(stream())));
  return h;
}

cudaDataType data_type(DType dt) {
  return dt == DType::bf16 ? CUDA_R_16BF : dt == DType::f32 ? CUDA_R_32F : CUDA_R_64F;
}
#endif

const char* flag_name(bool t) { return t ? "T" : "N"; }

// cuBLAS's own contract, column-major: C (m×n, ldc) = alpha · op(A)·op(B) + beta · C with
// op(A) m×k stored as A (lda >= its rows: m, or k when trans_a), op(B) k×n stored as B
// (ldb >= k, or n when trans_b), batched with element strides.
void colmajor_gemm(DType dt, bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha,
                   const void* A, int64_t lda, int64_t sa, const void* B, int64_t ldb, int64_t sb,
                   double beta, void* C, int64_t ldc, int64_t sc, int64_t batch) {
  const char* call = batch == 1 ? "cublasGemmEx" : "cublasGemmStridedBatchedEx";
  ENGINE_CHECK(dt == DType::f32 || dt == DType::bf16 || dt == DType::f64, call,
               ": dtype f32, bf16 or f64 expected, got ", engine::dtype_name(dt));
  // What cuBLAS would reject with CUBLAS_STATUS_INVALID_VALUE, named the same way in both builds.
  const int64_t ra = ta ? k : m, rb = tb ? n : k;
  ENGINE_CHECK(m >= 0 && n >= 0 && k >= 0 && batch >= 1 && lda >= std::max<int64_t>(1, ra) &&
                   ldb >= std::max<int64_t>(1, rb) && ldc >= std::max<int64_t>(1, m),
               call, ": invalid arguments (transa=", flag_name(ta), ", transb=", flag_name(tb),
               ", m=", m, ", n=", n, ", k=", k, ", lda=", lda, ", ldb=", ldb, ", ldc=", ldc,
               ", batch=", batch, ")");
  for (int64_t v : {m, n, k, lda, ldb, ldc, batch})
    ENGINE_CHECK(v <= INT_MAX, call, ": ", v, " exceeds cuBLAS's int range");
  if (m == 0 || n == 0) return;
#if defined(__CUDACC__)
  cublasHandle_t h = handle();
  const cudaDataType t = data_type(dt);
  const cublasOperation_t oa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, ob = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const float alpha32 = float(alpha), beta32 = float(beta);
  const bool f64 = dt == DType::f64;
  const void* pa = f64 ? static_cast<const void*>(&alpha) : &alpha32;
  const void* pb = f64 ? static_cast<const void*>(&beta) : &beta32;
  const cublasComputeType_t ct = f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
  if (batch == 1) {
    CUBLAS_CHECK(cublasGemmEx(h, oa, ob, int(m), int(n), int(k), pa, A, t, int(lda), B, t, int(ldb),
                              pb, C, t, int(ldc), ct, CUBLAS_GEMM_DEFAULT));
  } else {
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(h, oa, ob, int(m), int(n), int(k), pa, A, t, int(lda),
                                            sa, B, t, int(ldb), sb, pb, C, t, int(ldc), sc,
                                            int(batch), ct, CUBLAS_GEMM_DEFAULT));
  }
#else
  // The same contract carried out by the CPU matmul on the host-backed device memory: each
  // operand becomes a CPU tensor over the device pointer with column-major strides [1, ld].
  const size_t es = engine::dtype_size(dt);
  auto wrap = [&](const void* p, int64_t rows, int64_t cols, int64_t ld, int64_t bs) {
    const int64_t span = (batch - 1) * bs + (cols - 1) * ld + rows;  // elements reached
    auto st = std::make_shared<engine::Storage>(const_cast<void*>(p), size_t(std::max<int64_t>(span, 0)) * es,
                                                engine::Device::cpu());
    return Tensor(st, Shape{batch, rows, cols}, Shape{bs, 1, ld}, 0, dt);
  };
  Tensor a = wrap(A, ta ? k : m, ta ? m : k, lda, sa);
  Tensor b = wrap(B, tb ? n : k, tb ? k : n, ldb, sb);
  Tensor c = wrap(C, m, n, ldc, sc);
  kernels::cpu::matmul_out(c, a, b, ta, tb, alpha, beta);
#endif
}

// ---- strided copy ------------------------------------------------------------------------------

struct Layout8 {
  int nd;
  int64_t shape[engine::kMaxDims];
  int64_t dst_stride[engine::kMaxDims];
  int64_t src_stride[engine::kMaxDims];
};

template <class Bits>
__global__ void copy_strided_kernel(Bits* dst, const Bits* src, Layout8 l, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest = i, od = 0, os = 0;
    for (int d = l.nd - 1; d >= 0; --d) {
      const int64_t q = rest % l.shape[d];
      rest /= l.shape[d];
      od += q * l.dst_stride[d];
      os += q * l.src_stride[d];
    }
    dst[od] = src[os];
  }
}

template <class Bits>
void launch_copy(Tensor& dst, const Tensor& src, const Layout8& l, int64_t n) {
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 4096);
  LAUNCH((copy_strided_kernel<Bits>), unsigned(blocks), 256, 0, static_cast<cudaStream_t>(stream()))(
      static_cast<Bits*>(dst.raw_data()), static_cast<const Bits*>(src.raw_data()), l, n);
  CHECK_LAUNCH("copy_strided_kernel");
}

}  // namespace

namespace blas {

// Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: the row-major A (m×k, lda) is
// the column-major Aᵀ with the same ld, so the call swaps the operands and m with n, keeping the
// flags.
void gemm(DType dt, bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const void* a,
          int64_t lda, const void* b, int64_t ldb, double beta, void* c, int64_t ldc) {
  colmajor_gemm(dt, tb, ta, n, m, k, alpha, b, ldb, 0, a, lda, 0, beta, c, ldc, 0, 1);
}

void gemm_strided_batched(DType dt, bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha,
                          const void* a, int64_t lda, int64_t stride_a, const void* b, int64_t ldb,
                          int64_t stride_b, double beta, void* c, int64_t ldc, int64_t stride_c,
                          int64_t batch) {
  if (batch == 0) return;
  colmajor_gemm(dt, tb, ta, n, m, k, alpha, b, ldb, stride_b, a, lda, stride_a, beta, c, ldc,
                stride_c, batch);
}

}  // namespace blas

void copy_strided(Tensor& dst, const Tensor& src) {
  ENGINE_CHECK(dst.device() == device() && src.device() == device(), "copy_strided: ",
               dst.describe(), " and ", src.describe(), " must both be on ", device());
  ENGINE_CHECK(dst.shape() == src.shape() && dst.dtype() == src.dtype(), "copy_strided: ",
               dst.describe(), " and ", src.describe(), " differ in shape or dtype");
  const int64_t n = dst.numel();
  if (n == 0) return;
  Layout8 l{};
  for (int d = 0; d < dst.dim(); ++d) {
    if (dst.size(d) == 1) continue;  // size-1 dims do not move either pointer
    l.shape[l.nd] = dst.size(d);
    l.dst_stride[l.nd] = dst.stride(d);
    l.src_stride[l.nd] = src.stride(d);
    ++l.nd;
  }
  switch (dst.element_size()) {
    case 2: launch_copy<uint16_t>(dst, src, l, n); break;
    case 4: launch_copy<uint32_t>(dst, src, l, n); break;
    case 8: launch_copy<uint64_t>(dst, src, l, n); break;
    default: ENGINE_FAIL("copy_strided: unsupported element size ", dst.element_size());
  }
}

Tensor contiguous(const Tensor& t) {
  if (t.is_contiguous()) return t;
  Tensor out = Tensor::empty(t.shape(), t.dtype(), t.device());
  copy_strided(out, t);
  return out;
}

}  // namespace kernels::cuda
