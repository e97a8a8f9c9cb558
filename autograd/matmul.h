// Differentiable matrix products. Shapes and transpose flags as in kernels/matmul.h.
#pragma once
#include "autograd/var.h"

namespace autograd {

// op(a) · op(b). b is 2-D (a may have leading batch dims, which are folded into one GEMM), or
// a and b have the same batch dims. Broadcast batches: use bmm.
Var matmul(const Var& a, const Var& b, bool trans_a = false, bool trans_b = false);

// [B, M, K] · [B, K, N] (each optionally transposed); a batch of size 1 on either side is
// broadcast, and its gradient summed over the batch.
Var bmm(const Var& a, const Var& b, bool trans_a = false, bool trans_b = false);

// y = x · wᵀ + b with w stored [out, in] (as PyTorch); x [..., in] with at least 2 dims, b [out]
// or undefined. The weight gradient is one GEMM over all leading dims of x.
Var linear(const Var& x, const Var& w, const Var& b = Var());

}  // namespace autograd
