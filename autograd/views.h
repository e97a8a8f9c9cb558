// Differentiable view and shape ops on Var. The forward is the Tensor view (no copy, except
// reshape/contiguous when the strides require one); the backward maps the gradient back: the
// inverse view (reshape, permute, squeeze/unsqueeze), a zero tensor with the gradient copied
// into the viewed part (slice, narrow, select), or a sum over the broadcast dims (expand).
#pragma once
#include <vector>

#include "autograd/var.h"

namespace autograd {

Var reshape(const Var& x, const Shape& shape);  // one dim may be -1
Var view(const Var& x, const Shape& shape);     // like reshape, but throws instead of copying
Var permute(const Var& x, const std::vector<int>& dims);
Var transpose(const Var& x, int a, int b);
Var slice(const Var& x, int axis, int64_t start, int64_t end, int64_t step = 1);  // python bounds
Var narrow(const Var& x, int axis, int64_t start, int64_t length);
Var select(const Var& x, int axis, int64_t index);  // removes axis
Var unsqueeze(const Var& x, int dim);
Var squeeze(const Var& x, int dim);
Var expand(const Var& x, const Shape& shape);  // numpy broadcasting to `shape`
Var contiguous(const Var& x);
// Merges dims [start_dim, end_dim] (inclusive, negative counts from the end) into one.
Var flatten(const Var& x, int start_dim = 0, int end_dim = -1);

}  // namespace autograd
