// Differentiable L2 normalisation: y = x / sqrt(sum(x²) + eps) along `axis`
// (kernels/l2norm.h has the backward formula).
#pragma once
#include "autograd/var.h"

namespace autograd {

Var l2_normalize(const Var& x, double eps = 1e-6, int axis = -1);

}  // namespace autograd
