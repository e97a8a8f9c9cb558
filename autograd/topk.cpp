#include "autograd/topk.h"

#include "kernels/index.h"
#include "kernels/topk.h"

namespace autograd {

TopK topk(const Var& x, int64_t k, int axis, bool largest) {
  kernels::TopK r = kernels::topk(x.data(), k, axis, largest);
  axis = engine::normalize_axis(axis, x.dim(), "topk");
  Shape xs = x.shape();
  Tensor idx = r.indices;
  Var values = make_result(r.values, "topk", {x}, [xs, axis, idx](const Tensor& g, Grads& grads) {
    grads.set(0, kernels::scatter_add(xs, axis, idx, g));  // positions are distinct
  });
  return {values, r.indices};
}

}  // namespace autograd
