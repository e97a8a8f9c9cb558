#include "autograd/patchify.h"

#include "kernels/patchify.h"

namespace autograd {

Var patchify(const Var& x, int64_t t, int64_t p) {
  const Shape xs = x.shape();
  return make_result(kernels::patchify(x.data(), t, p), "patchify", {x},
                     [xs, t, p](const Tensor& g, Grads& grads) {
                       // A permutation: its adjoint is the inverse permutation.
                       grads.set(0, kernels::unpatchify_backward(g, xs, t, p));
                     });
}

}  // namespace autograd
