// Differentiable multi-head attention (kernels/attention.h): q, k, v [B, H, N, Dh] → [B, H, Nq, Dh].
#pragma once
#include <optional>

#include "autograd/var.h"

namespace autograd {

// key_mask: optional [B, Nk] tensor, nonzero = keep (not differentiable).
// qk_norm_weight: when defined, QK LayerNorm over Dh with this [Dh] scale (shared by all heads,
// no bias, eps 1e-6) is applied to q and k before the scores; it receives a gradient.
// scale defaults to 1/sqrt(Dh).
Var attention(const Var& q, const Var& k, const Var& v, const Tensor& key_mask = Tensor(),
              const Var& qk_norm_weight = Var(), std::optional<double> scale = std::nullopt,
              bool causal = false);

}  // namespace autograd
