// Differentiable reductions on Var: over one axis (negative axes count from the end; keepdim
// keeps it as size 1) or over everything (to a 0-d Var).
#pragma once
#include "autograd/var.h"

namespace autograd {

Var sum(const Var& x, int axis, bool keepdim = false);
Var mean(const Var& x, int axis, bool keepdim = false);
// Values of the maximum; the gradient goes to the first maximal element of each slice.
Var max(const Var& x, int axis, bool keepdim = false);
Var logsumexp(const Var& x, int axis, bool keepdim = false);
Var sum_all(const Var& x);
Var mean_all(const Var& x);

}  // namespace autograd
