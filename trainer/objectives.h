// Training objectives (specs/imp.md "Objectives"): classification cross-entropy lives in
// autograd/cross_entropy.h; this file adds the symmetric contrastive NCE between two modalities.
#pragma once
#include "autograd/var.h"

namespace train {
using autograd::Var;

// a, b [B, D]: row i of a and row i of b are a positive pair, every other row of the batch a
// negative. Both are L2-normalised (eps 1e-6), S = a·bᵀ / tau (tau [1] or 0-d, e.g. IMP's
// relu(t) + 1e-6), loss = ½ (CE(S, diag) + CE(Sᵀ, diag)), each a mean over the batch.
Var contrastive_nce(const Var& a, const Var& b, const Var& tau);

}  // namespace train
