// softmax / log_softmax: the backward kernels work from the saved output y alone.
#include "autograd/softmax.h"

#include "kernels/softmax.h"

namespace autograd {

Var softmax(const Var& x, int axis) {
  Tensor y = kernels::softmax(x.data(), axis);
  return make_result(y, "softmax", {x}, [y, axis](const Tensor& g, Grads& grads) {
    grads.set(0, kernels::softmax_backward(g, y, axis));  // y (g - sum(g y))
  });
}

Var log_softmax(const Var& x, int axis) {
  Tensor y = kernels::log_softmax(x.data(), axis);
  return make_result(y, "log_softmax", {x}, [y, axis](const Tensor& g, Grads& grads) {
    grads.set(0, kernels::log_softmax_backward(g, y, axis));  // g - exp(y) sum(g)
  });
}

}  // namespace autograd
