// Differentiable indexing ops. Indices are plain i64/i32 tensors (no gradient).
#pragma once
#include "autograd/var.h"

namespace autograd {

// table [V, D], ids [...] -> [..., D]. Gradient: rows of g summed into the rows they came from
// (repeated ids accumulate); the padding_idx row (when >= 0) gets no gradient.
Var embedding(const Var& table, const Tensor& ids, int64_t padding_idx = -1);
// x's slices idx[0], idx[1], ... along axis; gradient: index_add back (repeats accumulate).
Var index_select(const Var& x, int axis, const Tensor& idx);
// torch.gather semantics; gradient: scatter_add of g at idx.
Var gather(const Var& x, int axis, const Tensor& idx);

}  // namespace autograd
