#include "autograd/l2norm.h"

#include "kernels/l2norm.h"

namespace autograd {

Var l2_normalize(const Var& x, double eps, int axis) {
  kernels::L2NormOut r = kernels::l2_normalize(x.data(), eps, axis);
  // dx = inv_norm · (g - y · sum(g·y)); needs only the output and the inverse norm.
  return make_result(r.y, "l2_normalize", {x},
                     [y = r.y, inv = r.inv_norm, axis](const Tensor& g, Grads& grads) {
                       grads.set(0, kernels::l2_normalize_backward(g, y, inv, axis));
                     });
}

}  // namespace autograd
