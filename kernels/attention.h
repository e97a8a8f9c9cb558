// Fused multi-head attention with optional QK LayerNorm, key-padding mask and causal mask.
//
//   q, k, v: [B, H, Nq, Dh], [B, H, Nk, Dh], [B, H, Nk, Dh]   (f32, f64; bf16 computed in f32)
//   with qk_norm: q̂ = LN(q)·w, k̂ = LN(k)·w  (LayerNorm over Dh, mean-centred, eps, no bias,
//                 one weight w [Dh] shared by every head); else q̂ = q, k̂ = k
//   S = scale · q̂ k̂ᵀ, masked keys (key_mask[b, j] == 0) and, if causal, keys j > i get -inf,
//   P = softmax(S) over keys, out = P v, lse = logsumexp of each row of S.
// A row whose keys are all masked has out = 0 and lse = -inf (and zero gradients).
//
// The backward recomputes P from lse (no N×N matrix is stored between the passes).
// Inputs may be strided views: the kernels read rows in place when the last dim is unit-stride,
// e.g. q = qkv[B, N, H, Dh].permute(0, 2, 1, 3), the layout a QKV projection produces. Outputs
// follow q's layout: for such token-major q, out (and dq, dk, dv for k, v) are [B, H, N, Dh] views
// of [B, N, H, Dh] storage, so out.permute(0, 2, 1, 3).reshape({B, N, H*Dh}) is a free view.
#pragma once
#include <optional>

#include "kernels/backend.h"

namespace kernels {

struct AttentionOptions {
  std::optional<double> scale;  // default 1/sqrt(Dh)
  bool causal = false;          // key j visible to query i only if j <= i (needs Nq == Nk)
  bool qk_norm = false;
  Tensor qk_norm_weight;        // [Dh], required iff qk_norm
  double qk_norm_eps = 1e-6;
  Tensor key_mask;              // optional [B, Nk], any dtype: nonzero = keep
};

struct AttentionResult {
  Tensor out;                   // [B, H, Nq, Dh], dtype of q
  Tensor lse;                   // [B, H, Nq], f32 (f64 for f64 input)
  // With qk_norm, the per-row LayerNorm statistics ([B, H, Nq] / [B, H, Nk], compute dtype),
  // so the backward can recompute q̂ and k̂ without storing them.
  Tensor q_mean, q_rstd, k_mean, k_rstd;
};

struct AttentionGrads {
  Tensor dq, dk, dv;            // shapes and dtypes of q, k, v
  Tensor dqk_norm_weight;       // [Dh], dtype of the weight; only with qk_norm
};

namespace cpu {
AttentionResult attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionOptions& opts);
// `fwd` is the forward's result (out, lse and, with qk_norm, the LN statistics).
AttentionGrads attention_backward(const Tensor& g_out, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const AttentionOptions& opts,
                                  const AttentionResult& fwd);
}  // namespace cpu

namespace ref {
// Naive f64 reference: full score matrix, plain softmax, separate LayerNorm. Returns out and lse
// in f64 (the LN statistics are left undefined).
AttentionResult attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionOptions& opts);
}  // namespace ref

namespace cuda {
// The same ops on the CUDA backend (kernels/cuda/attention.cu): f32 and bf16 (f64 is not supported
// on the GPU), head dims 32, 64, 128, tensors on kernels::cuda::device(); lse and the LayerNorm
// statistics are f32. Deterministic (no atomics).
AttentionResult attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionOptions& opts);
AttentionGrads attention_backward(const Tensor& g_out, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const AttentionOptions& opts,
                                  const AttentionResult& fwd);
// Baselines for ./bench, nvcc build only (the sim build has no definition): contiguous
// [B, H, N, Dh] tensors, no QK-LN; both return out and lse ([B, H, Nq] f32).
// sdpa_cublas (kernels/cuda/sdpa_cublas.cu): unfused, two cuBLAS strided-batched GEMMs around a
//   softmax kernel; f32/bf16, optional key mask and causal.
// sdpa_cudnn (kernels/cuda/sdpa_cudnn.cu): cuDNN's fused flash attention (backend graph API);
//   bf16 only, optional causal, no key mask. Unsupported cases throw a one-line engine::Error.
AttentionResult sdpa_cublas(const Tensor& q, const Tensor& k, const Tensor& v,
                            const AttentionOptions& opts);
AttentionResult sdpa_cudnn(const Tensor& q, const Tensor& k, const Tensor& v,
                           const AttentionOptions& opts);
}  // namespace cuda

inline AttentionResult attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                         const AttentionOptions& opts = {}) {
  KERNEL_ROUTE(q.device(), attention_forward, q, k, v, opts);
}
inline AttentionGrads attention_backward(const Tensor& g_out, const Tensor& q, const Tensor& k,
                                         const Tensor& v, const AttentionOptions& opts,
                                         const AttentionResult& fwd) {
  KERNEL_ROUTE(q.device(), attention_backward, g_out, q, k, v, opts, fwd);
}

}  // namespace kernels
