// Reference L2 normalisation: the axis moved last, then plain loops over rows in f64.
#include "kernels/l2norm.h"

#include <cmath>
#include <vector>

namespace kernels::ref {
namespace {
// t with `axis` moved to the end, as contiguous f64.
Tensor axis_last(const Tensor& t, int axis) {
  std::vector<int> perm;
  for (int d = 0; d < t.dim(); ++d)
    if (d != axis) perm.push_back(d);
  perm.push_back(axis);
  return t.permute(perm).to(DType::f64).contiguous();
}
// Inverse of axis_last.
Tensor axis_back(const Tensor& t, int axis) {
  std::vector<int> perm;
  for (int d = 0; d < t.dim(); ++d) perm.push_back(d < axis ? d : d == axis ? t.dim() - 1 : d - 1);
  return t.permute(perm).contiguous();
}
}  // namespace

L2NormOut l2_normalize(const Tensor& x_in, double eps, int axis) {
  axis = engine::normalize_axis(axis, x_in.dim(), "ref::l2_normalize");
  Tensor x = axis_last(x_in, axis);
  Shape rs = x.shape();
  rs.erase(rs.size() - 1);
  const int64_t n = x.size(-1), rows = rs.numel();
  std::vector<double> v = x.to_vector<double>(), y(v.size()), inv(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += v[r * n + i] * v[r * n + i];
    inv[r] = 1.0 / std::sqrt(s + eps);
    for (int64_t i = 0; i < n; ++i) y[r * n + i] = v[r * n + i] * inv[r];
  }
  return {axis_back(Tensor::from_vector(y, x.shape()), axis), Tensor::from_vector(inv, rs)};
}

Tensor l2_normalize_backward(const Tensor& g_in, const Tensor& y_in, const Tensor& inv_in,
                             int axis) {
  axis = engine::normalize_axis(axis, y_in.dim(), "ref::l2_normalize_backward");
  Tensor g = axis_last(g_in, axis), y = axis_last(y_in, axis);
  const int64_t n = y.size(-1), rows = inv_in.numel();
  std::vector<double> gv = g.to_vector<double>(), yv = y.to_vector<double>();
  std::vector<double> inv = inv_in.to_vector<double>(), dx(gv.size());
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += gv[r * n + i] * yv[r * n + i];
    for (int64_t i = 0; i < n; ++i) dx[r * n + i] = inv[r] * (gv[r * n + i] - yv[r * n + i] * s);
  }
  return axis_back(Tensor::from_vector(dx, y.shape()), axis);
}

}  // namespace kernels::ref
