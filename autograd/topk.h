// Differentiable topk: the values carry gradient (scattered back to the chosen positions), the
// indices are a plain i64 tensor. Order and tie rule: see kernels/topk.h.
#pragma once
#include "autograd/var.h"

namespace autograd {

struct TopK {
  Var values;
  Tensor indices;
};

TopK topk(const Var& x, int64_t k, int axis = -1, bool largest = true);

}  // namespace autograd
