// Plain-loop reference for concat, in f64: each output element finds its source tensor by
// walking the axis offsets.
#include <vector>

#include "kernels/concat.h"

namespace kernels::ref {

Tensor concat(const std::vector<Tensor>& tensors, int axis) {
  axis = engine::normalize_axis(axis, tensors.at(0).dim(), "concat");
  Shape out_shape = tensors[0].shape();
  out_shape[axis] = 0;
  std::vector<std::vector<double>> vals;
  for (const Tensor& t : tensors) {
    out_shape[axis] += t.size(axis);
    vals.push_back(t.to_vector<double>());
  }
  std::vector<double> out(out_shape.numel());
  for (int64_t e = 0; e < out_shape.numel(); ++e) {
    std::vector<int64_t> c(out_shape.size());
    int64_t f = e;
    for (int d = out_shape.size() - 1; d >= 0; --d) c[d] = f % out_shape[d], f /= out_shape[d];
    size_t i = 0;
    while (c[axis] >= tensors[i].size(axis)) c[axis] -= tensors[i++].size(axis);
    int64_t flat = 0;
    for (int d = 0; d < out_shape.size(); ++d) flat = flat * tensors[i].size(d) + c[d];
    out[e] = vals[i][flat];
  }
  return Tensor::from_vector(out, out_shape, DType::f64);
}

}  // namespace kernels::ref
