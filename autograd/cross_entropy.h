// Softmax cross-entropy losses over the last axis of logits [..., C] (leading dims are rows).
#pragma once
#include "autograd/var.h"

namespace autograd {

// mean: average over the rows that are not ignored (0, with zero gradient, when every row is
// ignored: a batch of padding should not turn the loss into NaN); sum: their sum; none: the
// per-row losses with the targets' shape (0 at ignored rows).
enum class Reduction { mean, sum, none };

// targets: i64/i32 class indices with logits' leading shape; label_smoothing eps mixes the
// one-hot target with the uniform distribution ((1 - eps) on the target + eps / C everywhere).
Var cross_entropy(const Var& logits, const Tensor& targets, double label_smoothing = 0.0,
                  int64_t ignore_index = -100, Reduction reduction = Reduction::mean);
// target_probs: a distribution per row (the shape of logits), e.g. Mixup/CutMix labels; mean is
// over all rows. No gradient flows into target_probs.
Var cross_entropy_soft(const Var& logits, const Tensor& target_probs,
                       Reduction reduction = Reduction::mean);

}  // namespace autograd
