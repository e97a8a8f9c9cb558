// Differentiable entmax-1.5 over the last axis (see kernels/entmax.h): sparse probabilities, the
// SpheroMoE combine weights.
#pragma once
#include "autograd/var.h"

namespace autograd {

Var entmax15(const Var& z);

}  // namespace autograd
