// Differentiable concat and split.
#pragma once
#include <vector>

#include "autograd/var.h"

namespace autograd {

// Gradient of input i: the slice of g along axis that input i filled.
Var concat(const std::vector<Var>& xs, int axis);
// Pieces of x along axis (views); each piece's gradient is written into its slice of a zero
// gradient of x's shape, and the engine sums the pieces' contributions.
std::vector<Var> split(const Var& x, int axis, const std::vector<int64_t>& sizes);

}  // namespace autograd
