#include "trainer/objectives.h"

#include "autograd/ops.h"
#include "engine/error.h"

namespace train {

Var contrastive_nce(const Var& a, const Var& b, const Var& tau) {
  ENGINE_CHECK(a.dim() == 2 && b.dim() == 2 && a.shape() == b.shape(),
               "contrastive_nce: a and b must both be [B, D], got ", a.data().describe(), " and ",
               b.data().describe());
  ENGINE_CHECK(tau.numel() == 1, "contrastive_nce: tau must have one element, got ",
               tau.data().describe());
  const int64_t B = a.size(0);
  Var an = autograd::l2_normalize(a, 1e-6), bn = autograd::l2_normalize(b, 1e-6);
  Var s = autograd::div(autograd::matmul(an, bn, false, true), autograd::reshape(tau, {1, 1}));
  engine::Tensor diag = engine::Tensor::arange(B);
  if (!(diag.device() == s.data().device())) diag = diag.to(s.data().device());
  Var l_ab = autograd::cross_entropy(s, diag);
  // Contiguous rows: what the CUDA cross-entropy kernel reads (a copy of B² elements).
  Var l_ba = autograd::cross_entropy(autograd::contiguous(autograd::transpose(s, 0, 1)), diag);
  return autograd::mul_scalar(autograd::add(l_ab, l_ba), 0.5);
}

}  // namespace train
