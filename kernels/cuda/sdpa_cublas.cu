// Unfused attention baseline for ./bench: S = scale·Q Kᵀ and O = P V as two cuBLAS
// strided-batched GEMMs (fp32 accumulation; bf16 inputs on tensor cores) around a row-softmax
// kernel, with the full B·H·Nq·Nk fp32 score matrix in global memory. It is what the fused kernel
// in attention.cu is measured against (and what "no N×N matrix in global memory" saves); the
// fused reference is cuDNN's flash attention in sdpa_cudnn.cu.
//
// Compiled only by nvcc: under g++ (the sim build, -DENGINE_SIM) this file is empty, and
// kernels::cuda::sdpa_cublas is not defined there (the sim tests verify our kernels only).
#if defined(__CUDACC__)
#include <cublas_v2.h>

#include <cmath>
#include <limits>
#include <mutex>

#include "kernels/attention.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"

namespace kernels::cuda {
namespace {

#define SDPA_CUBLAS_CHECK(call)                                                          \
  do {                                                                                   \
    cublasStatus_t sdpa_st_ = (call);                                                    \
    ENGINE_CHECK(sdpa_st_ == CUBLAS_STATUS_SUCCESS, "sdpa_cublas: ", #call, " failed: ", \
                 cublasGetStatusString(sdpa_st_));                                       \
  } while (0)

cublasHandle_t cublas() {
  static std::once_flag once;
  static cublasHandle_t h = nullptr;
  std::call_once(once, [] { SDPA_CUBLAS_CHECK(cublasCreate(&h)); });
  SDPA_CUBLAS_CHECK(cublasSetStream(h, static_cast<cudaStream_t>(stream())));
  return h;
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T>
__device__ __forceinline__ T from_float(float x) {
  return T(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

// One warp per row of S [B·H·Nq, Nk] (already scaled): P = softmax (masked keys 0), lse.
template <class T>
__global__ void sdpa_softmax_kernel(const float* S, T* P, float* lse, const int32_t* keep, int H,
                                    int Nq, int Nk, int causal, int64_t rows) {
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = int(threadIdx.x) & 31;
  if (row >= rows) return;  // no block barrier below: whole warps leave together
  const int i = int(row % Nq);
  const int64_t b = row / (int64_t(Nq) * H);
  const float* s = S + row * Nk;
  auto visible = [&](int j) {
    return (keep == nullptr || keep[b * Nk + j] != 0) && (!causal || j <= i);
  };
  float mx = -CUDART_INF_F;
  for (int j = lane; j < Nk; j += 32)
    if (visible(j)) mx = fmaxf(mx, s[j]);
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  float sum = 0.0f;
  if (mx != -CUDART_INF_F)
    for (int j = lane; j < Nk; j += 32)
      if (visible(j)) sum += __expf(s[j] - mx);
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  for (int j = lane; j < Nk; j += 32)
    P[row * Nk + j] = from_float<T>(visible(j) && sum > 0.0f ? __expf(s[j] - mx) * inv : 0.0f);
  if (lane == 0) lse[row] = sum > 0.0f ? mx + logf(sum) : -CUDART_INF_F;
}

template <class T>
__global__ void sdpa_keep_kernel(const T* mask, int64_t n, int32_t* keep) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) keep[i] = to_float(mask[i]) != 0.0f ? 1 : 0;
}
__global__ void sdpa_keep_i32_kernel(const int32_t* mask, int64_t n, int32_t* keep) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) keep[i] = mask[i] != 0 ? 1 : 0;
}

}  // namespace

AttentionResult sdpa_cublas(const Tensor& q, const Tensor& k, const Tensor& v,
                            const AttentionOptions& opts) {
  const char* op = "sdpa_cublas";
  for (const Tensor* t : {&q, &k, &v}) {
    engine::check_dim(*t, 4, op, "q/k/v");
    ENGINE_CHECK(t->device() == device() && t->is_contiguous(), op,
                 ": expects contiguous [B, H, N, Dh] tensors on ", device(), ", got ", t->describe());
    ENGINE_CHECK(t->dtype() == q.dtype() && (q.dtype() == DType::f32 || q.dtype() == DType::bf16),
                 op, ": q, k, v must all be f32 or all bf16, got ", t->describe());
  }
  ENGINE_CHECK(!opts.qk_norm, op, ": QK LayerNorm is not part of the baseline");
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), Nk = k.size(2), D = q.size(3);
  ENGINE_CHECK(k.size(0) == B && k.size(1) == H && k.size(3) == D && v.shape() == k.shape(), op,
               ": shapes q ", q.describe(), ", k ", k.describe(), ", v ", v.describe(), " disagree");
  ENGINE_CHECK(!opts.causal || Nq == Nk, op, ": causal attention needs Nq == Nk");
  const float scale = float(opts.scale ? *opts.scale : 1.0 / std::sqrt(double(D)));
  const cudaStream_t st = static_cast<cudaStream_t>(stream());

  AttentionResult res;
  res.out = Tensor::empty(q.shape(), q.dtype(), device());
  res.lse = Tensor::empty({B, H, Nq}, DType::f32, device());
  if (B * H * Nq == 0) return res;
  ENGINE_CHECK(Nk > 0, op, ": needs at least one key");

  Tensor keep;
  if (opts.key_mask.defined()) {
    const Tensor& m = opts.key_mask;
    ENGINE_CHECK(m.device() == device() && m.is_contiguous() && m.shape() == Shape({B, Nk}) &&
                     (m.dtype() == DType::i32 || m.dtype() == DType::f32 || m.dtype() == DType::bf16),
                 op, ": key_mask must be a contiguous i32/f32/bf16 [B, Nk] device tensor, got ",
                 m.describe());
    keep = Tensor::empty({B, Nk}, DType::i32, device());
    const unsigned blocks = unsigned((B * Nk + 255) / 256);
    if (m.dtype() == DType::i32) {
      LAUNCH(sdpa_keep_i32_kernel, blocks, 256, 0, st)(m.data<int32_t>(), B * Nk, keep.data<int32_t>());
    } else if (m.dtype() == DType::f32) {
      LAUNCH(sdpa_keep_kernel<float>, blocks, 256, 0, st)(m.data<float>(), B * Nk, keep.data<int32_t>());
    } else {
      LAUNCH(sdpa_keep_kernel<__nv_bfloat16>, blocks, 256, 0, st)(
          static_cast<const __nv_bfloat16*>(m.raw_data()), B * Nk, keep.data<int32_t>());
    }
    CHECK_LAUNCH("sdpa_keep_kernel");
  }

  const bool bf = q.dtype() == DType::bf16;
  const cudaDataType_t io = bf ? CUDA_R_16BF : CUDA_R_32F;
  Tensor S = Tensor::empty({B * H, Nq, Nk}, DType::f32, device());
  Tensor P = Tensor::empty({B * H, Nq, Nk}, q.dtype(), device());
  const float one = 1.0f, zero = 0.0f;
  cublasHandle_t h = cublas();
  // Row-major S [Nq, Nk] is column-major Sᵀ = K Qᵀ (cuBLAS is column-major).
  SDPA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      h, CUBLAS_OP_T, CUBLAS_OP_N, int(Nk), int(Nq), int(D), &scale, k.raw_data(), io, int(D),
      Nk * D, q.raw_data(), io, int(D), Nq * D, &zero, S.raw_data(), CUDA_R_32F, int(Nk), Nq * Nk,
      int(B * H), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  const int64_t rows = B * H * Nq;
  const int warps = 8;
  if (bf) {
    LAUNCH(sdpa_softmax_kernel<__nv_bfloat16>, unsigned((rows + warps - 1) / warps), 32 * warps, 0, st)(
        S.data<float>(), static_cast<__nv_bfloat16*>(P.raw_data()), res.lse.data<float>(),
        keep.defined() ? keep.data<int32_t>() : nullptr, int(H), int(Nq), int(Nk), opts.causal, rows);
  } else {
    LAUNCH(sdpa_softmax_kernel<float>, unsigned((rows + warps - 1) / warps), 32 * warps, 0, st)(
        S.data<float>(), P.data<float>(), res.lse.data<float>(),
        keep.defined() ? keep.data<int32_t>() : nullptr, int(H), int(Nq), int(Nk), opts.causal, rows);
  }
  CHECK_LAUNCH("sdpa_softmax_kernel");
  // Row-major O [Nq, D] = P V is column-major Oᵀ = Vᵀ Pᵀ.
  SDPA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      h, CUBLAS_OP_N, CUBLAS_OP_N, int(D), int(Nq), int(Nk), &one, v.raw_data(), io, int(D), Nk * D,
      P.raw_data(), io, int(Nk), Nq * Nk, &zero, res.out.raw_data(), io, int(D), Nq * D, int(B * H),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return res;
}

}  // namespace kernels::cuda
#endif  // __CUDACC__
