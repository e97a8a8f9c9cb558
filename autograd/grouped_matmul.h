// Differentiable grouped expert matmul (kernels/grouped_matmul.h): rows of x sorted by expert,
// counts i64 [E] rows per expert (a plain tensor: routing decisions carry no gradient).
#pragma once
#include "autograd/var.h"

namespace autograd {

// y [T, N] with y[rows of e] = x[rows of e] · op(w[e]); w [E, K, N], or [E, N, K] when trans_w.
// Gradients for x (a grouped matmul with the other transpose) and w (the variable-K weight
// gradient; zero for experts without rows).
Var grouped_matmul(const Var& x, const Var& w, const Tensor& counts, bool trans_w = false);

}  // namespace autograd
