#include "autograd/drop_token.h"

#include "kernels/drop_token.h"

namespace autograd {

Var drop_token(const Var& x, const Tensor& idx) {
  const int64_t L = x.dim() >= 2 ? x.size(1) : 0;
  Tensor y = kernels::drop_token_gather(x.data(), idx);
  // Each kept token's gradient goes back to its position; dropped positions get 0.
  return make_result(y, "drop_token", {x}, [idx, L](const Tensor& g, Grads& grads) {
    grads.set(0, kernels::drop_token_scatter(g, idx, L));
  });
}

}  // namespace autograd
