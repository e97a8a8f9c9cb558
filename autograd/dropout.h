// Differentiable dropout with a Philox mask keyed by (seed, stream) (kernels/dropout.h).
#pragma once
#include <cstdint>

#include "autograd/var.h"

namespace autograd {

// In training, elements are dropped with probability p and the rest scaled by 1 / (1 - p);
// backward regenerates the same mask from the key. Not training, or p = 0: x itself.
Var dropout(const Var& x, double p, uint64_t seed, uint64_t stream, bool training = true);

}  // namespace autograd
