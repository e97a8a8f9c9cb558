// Fused softmax cross-entropy over the last axis of logits [N, C].
//
// Hard targets (i64/i32 [N]): per-row loss = -sum_c q_c log softmax(x)_c with the smoothed target
// distribution q = (1 - eps) onehot(t) + eps / C; rows whose target equals ignore_index get loss
// 0 and gradient 0. Soft targets ([N, C] probabilities, e.g. Mixup/CutMix): q = target_probs.
// The forward saves lse (logsumexp per row) so the backward never re-reduces:
//   dlogits = g * scale * (softmax(x) * sum_c q_c - q),   softmax(x) = exp(x - lse)
// (sum_c q_c is 1 for hard targets). `g` is [N] and may be strided, e.g. a scalar gradient
// expanded to [N]; `scale` folds in a reduction's 1/count.
// Precision: the loss is assembled from (max - x_c) and log(sum exp(x - max)), so it is
// accurate even for logits of 1e4; the saved lse is rounded to the logits' dtype, so the
// backward's softmax has an absolute error of about |lse| * ulp(1) (f32: ~1e-6 at |lse| ~ 10,
// ~1e-3 at 1e4).
#pragma once
#include "kernels/backend.h"

namespace kernels {

struct CrossEntropyOut {
  Tensor losses;      // [N], logits' dtype; 0 at ignored rows
  Tensor lse;         // [N], logsumexp of each row, saved for the backward
  int64_t num_valid;  // rows not ignored (known on the host: targets are checked there)
};

namespace cpu {
CrossEntropyOut softmax_cross_entropy(const Tensor& logits, const Tensor& targets,
                                      double label_smoothing = 0.0, int64_t ignore_index = -100);
Tensor softmax_cross_entropy_backward(const Tensor& g, const Tensor& logits,
                                      const Tensor& targets, const Tensor& lse,
                                      double label_smoothing = 0.0, int64_t ignore_index = -100,
                                      double scale = 1.0);
CrossEntropyOut softmax_cross_entropy_soft(const Tensor& logits, const Tensor& target_probs);
Tensor softmax_cross_entropy_soft_backward(const Tensor& g, const Tensor& logits,
                                           const Tensor& target_probs, const Tensor& lse,
                                           double scale = 1.0);
// scale * sum(losses) as a 0-d tensor of losses' dtype (accumulated in f64): the mean/sum
// reduction of the per-row losses.
Tensor loss_sum(const Tensor& losses, double scale = 1.0);
}  // namespace cpu

namespace ref {  // from log-softmax in f64
CrossEntropyOut softmax_cross_entropy(const Tensor& logits, const Tensor& targets,
                                      double label_smoothing = 0.0, int64_t ignore_index = -100);
Tensor softmax_cross_entropy_backward(const Tensor& g, const Tensor& logits,
                                      const Tensor& targets, const Tensor& lse,
                                      double label_smoothing = 0.0, int64_t ignore_index = -100,
                                      double scale = 1.0);
CrossEntropyOut softmax_cross_entropy_soft(const Tensor& logits, const Tensor& target_probs);
Tensor softmax_cross_entropy_soft_backward(const Tensor& g, const Tensor& logits,
                                           const Tensor& target_probs, const Tensor& lse,
                                           double scale = 1.0);
}  // namespace ref

// CUDA kernels (kernels/cuda/cross_entropy.cu), on kernels::cuda::device() tensors. Logits f32 or
// bf16 with contiguous rows; losses and lse come back in f32 (fp32 statistics, also for bf16
// logits); the backward takes lse in f32, bf16 or f64. Targets are checked on the device and the
// status read back once per call (a synchronisation), with the CPU op's error message.
namespace cuda {
CrossEntropyOut softmax_cross_entropy(const Tensor& logits, const Tensor& targets,
                                      double label_smoothing = 0.0, int64_t ignore_index = -100);
Tensor softmax_cross_entropy_backward(const Tensor& g, const Tensor& logits,
                                      const Tensor& targets, const Tensor& lse,
                                      double label_smoothing = 0.0, int64_t ignore_index = -100,
                                      double scale = 1.0);
CrossEntropyOut softmax_cross_entropy_soft(const Tensor& logits, const Tensor& target_probs);
Tensor softmax_cross_entropy_soft_backward(const Tensor& g, const Tensor& logits,
                                           const Tensor& target_probs, const Tensor& lse,
                                           double scale = 1.0);
Tensor loss_sum(const Tensor& losses, double scale = 1.0);
}  // namespace cuda

inline CrossEntropyOut softmax_cross_entropy(const Tensor& logits, const Tensor& targets,
                                             double label_smoothing = 0.0,
                                             int64_t ignore_index = -100) {
  KERNEL_ROUTE(logits.device(), softmax_cross_entropy, logits, targets, label_smoothing,
               ignore_index);
}
inline Tensor softmax_cross_entropy_backward(const Tensor& g, const Tensor& logits,
                                             const Tensor& targets, const Tensor& lse,
                                             double label_smoothing = 0.0,
                                             int64_t ignore_index = -100, double scale = 1.0) {
  KERNEL_ROUTE(logits.device(), softmax_cross_entropy_backward, g, logits, targets, lse,
               label_smoothing, ignore_index, scale);
}
inline CrossEntropyOut softmax_cross_entropy_soft(const Tensor& logits,
                                                  const Tensor& target_probs) {
  KERNEL_ROUTE(logits.device(), softmax_cross_entropy_soft, logits, target_probs);
}
inline Tensor softmax_cross_entropy_soft_backward(const Tensor& g, const Tensor& logits,
                                                  const Tensor& target_probs, const Tensor& lse,
                                                  double scale = 1.0) {
  KERNEL_ROUTE(logits.device(), softmax_cross_entropy_soft_backward, g, logits, target_probs, lse,
               scale);
}
inline Tensor loss_sum(const Tensor& losses, double scale = 1.0) {
  KERNEL_ROUTE(losses.device(), loss_sum, losses, scale);
}

}  // namespace kernels
