#include "autograd/concat.h"

#include "kernels/concat.h"

namespace autograd {

Var concat(const std::vector<Var>& xs, int axis) {
  ENGINE_CHECK(!xs.empty(), "concat: no tensors given");
  std::vector<Tensor> ts;
  ts.reserve(xs.size());
  for (const Var& x : xs) ts.push_back(x.data());
  Tensor out = kernels::concat(ts, axis);  // validates shapes and axis
  axis = engine::normalize_axis(axis, out.dim(), "concat");
  std::vector<int64_t> sizes;
  for (const Var& x : xs) sizes.push_back(x.size(axis));
  return make_result(out, "concat", xs, [axis, sizes](const Tensor& g, Grads& grads) {
    int64_t start = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (grads.need(i)) grads.set(i, g.narrow(axis, start, sizes[i]));
      start += sizes[i];
    }
  });
}

std::vector<Var> split(const Var& x, int axis, const std::vector<int64_t>& sizes) {
  std::vector<Tensor> pieces = kernels::split(x.data(), axis, sizes);  // validates sizes
  axis = engine::normalize_axis(axis, x.dim(), "split");
  Shape xs = x.shape();
  std::vector<Var> out;
  out.reserve(pieces.size());
  int64_t start = 0;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const int64_t len = sizes[i];
    out.push_back(make_result(pieces[i], "split", {x}, [xs, axis, start, len](const Tensor& g,
                                                                              Grads& grads) {
      Tensor z = Tensor::zeros(xs, g.dtype(), g.device());
      Tensor part = z.narrow(axis, start, len);
      part.copy_(g);
      grads.set(0, z);
    }));
    start += len;
  }
  return out;
}

}  // namespace autograd
