// Differentiable drop-token gather: x [B, L, ...] -> x[b, idx[b, p]] as [B, keep, ...]. idx comes
// from kernels::drop_token_indices (rows strictly increasing); the gradient scatters back, zero
// for dropped tokens.
#pragma once
#include "autograd/var.h"

namespace autograd {

Var drop_token(const Var& x, const Tensor& idx);

}  // namespace autograd
