// Reductions: the gradient of a reduced output is broadcast back over the reduced axis
// (as an expanded view: no copy until someone needs one).
#include "autograd/reduce.h"

#include "kernels/elementwise.h"
#include "kernels/reduce.h"
#include "kernels/softmax.h"

namespace autograd {
namespace {

// g (the reduced shape) viewed with the reduced axis back as size 1.
Tensor with_kept_dim(const Tensor& g, const Shape& in_shape, int axis, bool keepdim) {
  if (keepdim || in_shape.size() == 0) return g;
  return g.unsqueeze(engine::normalize_axis(axis, in_shape.size(), "reduce backward"));
}

}  // namespace

Var sum(const Var& x, int axis, bool keepdim) {
  return make_result(kernels::sum(x.data(), axis, keepdim), "sum", {x},
                     [s = x.shape(), axis, keepdim](const Tensor& g, Grads& grads) {
                       grads.set(0, with_kept_dim(g, s, axis, keepdim).expand(s));
                     });
}

Var mean(const Var& x, int axis, bool keepdim) {
  return make_result(kernels::mean(x.data(), axis, keepdim), "mean", {x},
                     [s = x.shape(), axis, keepdim](const Tensor& g, Grads& grads) {
                       const int64_t len = s.size() == 0 ? 1 : s[engine::normalize_axis(axis, s.size(), "mean")];
                       const Tensor scaled = kernels::mul_scalar(g, 1.0 / double(len));
                       grads.set(0, with_kept_dim(scaled, s, axis, keepdim).expand(s));
                     });
}

Var max(const Var& x, int axis, bool keepdim) {
  return make_result(kernels::max(x.data(), axis, keepdim), "max", {x},
                     [tx = x.data(), axis, keepdim](const Tensor& g, Grads& grads) {
                       // The winners are found again here rather than kept from the forward,
                       // so inference and no-grad calls pay nothing for them.
                       const Tensor idx = kernels::argmax(tx, axis, keepdim);
                       grads.set(0, kernels::max_backward(g, idx, tx.shape(), axis));
                     });
}

Var logsumexp(const Var& x, int axis, bool keepdim) {
  return make_result(kernels::logsumexp(x.data(), axis, keepdim), "logsumexp", {x},
                     [tx = x.data(), axis, keepdim](const Tensor& g, Grads& grads) {
                       // d lse / dx = softmax(x) along the axis
                       const Tensor gk = with_kept_dim(g, tx.shape(), axis, keepdim);
                       grads.set(0, kernels::mul(kernels::softmax(tx, axis), gk));
                     });
}

Var sum_all(const Var& x) {
  return make_result(kernels::sum_all(x.data()), "sum_all", {x},
                     [s = x.shape()](const Tensor& g, Grads& grads) { grads.set(0, g.expand(s)); });
}

Var mean_all(const Var& x) {
  return make_result(kernels::mean_all(x.data()), "mean_all", {x},
                     [s = x.shape()](const Tensor& g, Grads& grads) {
                       grads.set(0, kernels::mul_scalar(g, 1.0 / double(s.numel())).expand(s));
                     });
}

}  // namespace autograd
