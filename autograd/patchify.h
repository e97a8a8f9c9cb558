// Differentiable patchify (kernels/patchify.h): x [B, T, H, W, C] or [B, H, W, C] ->
// [B, N, t*p*p*C] tubelets. Gradient: the inverse permutation back to x's shape.
#pragma once
#include "autograd/var.h"

namespace autograd {

Var patchify(const Var& x, int64_t t, int64_t p);

}  // namespace autograd
