#include "autograd/entmax.h"

#include "kernels/entmax.h"

namespace autograd {

Var entmax15(const Var& z) {
  Tensor p = kernels::entmax15(z.data());
  // The backward needs only the output: with s = sqrt(p), dz = g·s - s·Σ(g·s)/Σs.
  return make_result(p, "entmax15", {z}, [p](const Tensor& g, Grads& grads) {
    grads.set(0, kernels::entmax15_backward(g, p));
  });
}

}  // namespace autograd
