#include "autograd/layernorm.h"

#include "kernels/layernorm.h"

namespace autograd {

Var layer_norm(const Var& x, const Var& weight, const Var& bias, double eps) {
  const Tensor X = x.data();
  const Tensor W = weight.defined() ? weight.data() : Tensor();
  const bool has_bias = bias.defined();
  kernels::LayerNormOut r = kernels::layernorm(X, W, has_bias ? bias.data() : Tensor(), eps);
  // Backward: dx, dweight, dbias from the saved row statistics (see kernels/layernorm.h).
  return make_result(r.y, "layer_norm", {x, weight, bias},
                     [X, W, mean = r.mean, rstd = r.rstd, has_bias](const Tensor& g, Grads& grads) {
                       kernels::LayerNormGrads d =
                           kernels::layernorm_backward(g, X, W, mean, rstd, has_bias);
                       grads.set(0, d.dx);
                       if (d.dweight.defined()) grads.set(1, d.dweight);
                       if (d.dbias.defined()) grads.set(2, d.dbias);
                     });
}

}  // namespace autograd
