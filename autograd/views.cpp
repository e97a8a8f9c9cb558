#include "autograd/views.h"

#include "engine/strided.h"
#include "kernels/elementwise.h"

namespace autograd {
namespace {

// Gradient of a view that picks part of x: zeros of x's shape with g copied into that part.
template <class Pick>
Tensor scatter_into_zeros(const Tensor& g, const Shape& x_shape, Pick pick) {
  Tensor z = Tensor::zeros(x_shape, g.dtype(), g.device());
  Tensor part = pick(z);
  part.copy_(g);
  return z;
}

}  // namespace

Var reshape(const Var& x, const Shape& shape) {
  Shape xs = x.shape();
  return make_result(x.data().reshape(shape), "reshape", {x},
                     [xs](const Tensor& g, Grads& grads) { grads.set(0, g.reshape(xs)); });
}

Var view(const Var& x, const Shape& shape) {
  Shape xs = x.shape();
  return make_result(x.data().view(shape), "view", {x},
                     [xs](const Tensor& g, Grads& grads) { grads.set(0, g.reshape(xs)); });
}

Var permute(const Var& x, const std::vector<int>& dims) {
  Tensor out = x.data().permute(dims);  // validates dims
  std::vector<int> inv(dims.size());
  for (size_t i = 0; i < dims.size(); ++i)
    inv[engine::normalize_axis(dims[i], x.dim(), "permute")] = int(i);
  return make_result(out, "permute", {x},
                     [inv](const Tensor& g, Grads& grads) { grads.set(0, g.permute(inv)); });
}

Var transpose(const Var& x, int a, int b) {
  return make_result(x.data().transpose(a, b), "transpose", {x},
                     [a, b](const Tensor& g, Grads& grads) { grads.set(0, g.transpose(a, b)); });
}

Var slice(const Var& x, int axis, int64_t start, int64_t end, int64_t step) {
  Shape xs = x.shape();
  return make_result(x.data().slice(axis, start, end, step), "slice", {x},
                     [=](const Tensor& g, Grads& grads) {
                       grads.set(0, scatter_into_zeros(g, xs, [&](const Tensor& z) {
                                   return z.slice(axis, start, end, step);
                                 }));
                     });
}

Var narrow(const Var& x, int axis, int64_t start, int64_t length) {
  Shape xs = x.shape();
  return make_result(x.data().narrow(axis, start, length), "narrow", {x},
                     [=](const Tensor& g, Grads& grads) {
                       grads.set(0, scatter_into_zeros(g, xs, [&](const Tensor& z) {
                                   return z.narrow(axis, start, length);
                                 }));
                     });
}

Var select(const Var& x, int axis, int64_t index) {
  Shape xs = x.shape();
  return make_result(x.data().select(axis, index), "select", {x},
                     [=](const Tensor& g, Grads& grads) {
                       grads.set(0, scatter_into_zeros(g, xs, [&](const Tensor& z) {
                                   return z.select(axis, index);
                                 }));
                     });
}

Var unsqueeze(const Var& x, int dim) {
  const int d = engine::normalize_axis(dim, x.dim() + 1, "unsqueeze");
  return make_result(x.data().unsqueeze(d), "unsqueeze", {x},
                     [d](const Tensor& g, Grads& grads) { grads.set(0, g.squeeze(d)); });
}

Var squeeze(const Var& x, int dim) {
  const int d = engine::normalize_axis(dim, x.dim(), "squeeze");
  return make_result(x.data().squeeze(d), "squeeze", {x},
                     [d](const Tensor& g, Grads& grads) { grads.set(0, g.unsqueeze(d)); });
}

Var expand(const Var& x, const Shape& shape) {
  Shape xs = x.shape();
  return make_result(x.data().expand(shape), "expand", {x},
                     [xs](const Tensor& g, Grads& grads) { grads.set(0, kernels::sum_to_shape(g, xs)); });
}

Var contiguous(const Var& x) {
  return make_result(x.data().contiguous(), "contiguous", {x},
                     [](const Tensor& g, Grads& grads) { grads.set(0, g); });
}

Var flatten(const Var& x, int start_dim, int end_dim) {
  const Shape& xs = x.shape();
  if (x.dim() == 0) return reshape(x, {1});
  const int s = engine::normalize_axis(start_dim, x.dim(), "flatten");
  const int e = engine::normalize_axis(end_dim, x.dim(), "flatten");
  ENGINE_CHECK(s <= e, "flatten: start_dim ", start_dim, " comes after end_dim ", end_dim,
               " for a tensor of ", x.dim(), " dimensions");
  Shape out;
  for (int d = 0; d < s; ++d) out.push_back(xs[d]);
  int64_t merged = 1;
  for (int d = s; d <= e; ++d) merged *= xs[d];
  out.push_back(merged);
  for (int d = e + 1; d < x.dim(); ++d) out.push_back(xs[d]);
  return reshape(x, out);
}

}  // namespace autograd
