#include "autograd/grouped_matmul.h"

#include "kernels/grouped_matmul.h"

namespace autograd {

// y_e = x_e · op(W_e), G = dL/dy:  dx_e = G_e · op(W_e)ᵀ (the same grouped product with the
// other transpose of the stored w),  dW_e = x_eᵀ · G_e (or its transpose for trans_w).
Var grouped_matmul(const Var& x, const Var& w, const Tensor& counts, bool trans_w) {
  const Tensor X = x.data(), W = w.data();
  Tensor y = kernels::grouped_matmul(X, W, counts, trans_w);
  return make_result(y, "grouped_matmul", {x, w},
                     [X, W, counts, trans_w](const Tensor& g, Grads& grads) {
                       if (grads.need(0))
                         grads.set(0, kernels::grouped_matmul(g, W, counts, !trans_w));
                       if (grads.need(1))
                         grads.set(1, kernels::grouped_matmul_wgrad(X, g, counts, trans_w));
                     });
}

}  // namespace autograd
