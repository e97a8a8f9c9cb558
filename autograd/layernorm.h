// Differentiable LayerNorm over the last dim (kernels/layernorm.h has the formulas).
#pragma once
#include "autograd/var.h"

namespace autograd {

// weight and bias [D] may each be undefined (Var()): no scale / no shift.
Var layer_norm(const Var& x, const Var& weight, const Var& bias, double eps = 1e-6);

}  // namespace autograd
