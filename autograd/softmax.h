// Differentiable softmax and log_softmax over one axis (negative axes count from the end).
#pragma once
#include "autograd/var.h"

namespace autograd {

Var softmax(const Var& x, int axis);
Var log_softmax(const Var& x, int axis);

}  // namespace autograd
