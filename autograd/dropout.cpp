#include "autograd/dropout.h"

#include "kernels/dropout.h"

namespace autograd {

Var dropout(const Var& x, double p, uint64_t seed, uint64_t stream, bool training) {
  ENGINE_CHECK(p >= 0.0 && p < 1.0, "dropout: p must be in [0, 1), got ", p);
  if (!training || p == 0.0) return x;
  Tensor y = kernels::dropout(x.data(), p, seed, stream);
  // The gradient passes through the same mask with the same scale; nothing is saved but the key.
  return make_result(y, "dropout", {x}, [p, seed, stream](const Tensor& g, Grads& grads) {
    grads.set(0, kernels::dropout_backward(g, p, seed, stream));
  });
}

}  // namespace autograd
