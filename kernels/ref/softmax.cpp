// Reference softmax family: plain loops over [outer, len, inner] in f64. Tests only.
#include <cmath>
#include <vector>

#include "kernels/softmax.h"

namespace kernels::ref {
namespace {

struct Split {
  int64_t outer = 1, len = 1, inner = 1;
};

Split split(const Shape& s, int axis, const char* op) {
  Split p;
  if (s.size() == 0) {
    engine::normalize_axis(axis, 1, op);
    return p;
  }
  const int a = engine::normalize_axis(axis, s.size(), op);
  for (int d = 0; d < a; ++d) p.outer *= s[d];
  p.len = s[a];
  for (int d = a + 1; d < s.size(); ++d) p.inner *= s[d];
  return p;
}

// For every slice along the axis, f(x slice, g slice, out slice) (g empty when not given).
template <class F>
Tensor per_slice(const Tensor& x, const Tensor& g, int axis, const char* op, F f) {
  const Split p = split(x.shape(), axis, op);
  const std::vector<double> xv = x.to_vector<double>();
  const std::vector<double> gv = g.defined() ? g.to_vector<double>() : std::vector<double>();
  std::vector<double> out(xv.size());
  std::vector<double> xs(p.len), gs(p.len), os(p.len);
  for (int64_t o = 0; o < p.outer; ++o)
    for (int64_t j = 0; j < p.inner; ++j) {
      for (int64_t r = 0; r < p.len; ++r) {
        xs[r] = xv[(o * p.len + r) * p.inner + j];
        if (g.defined()) gs[r] = gv[(o * p.len + r) * p.inner + j];
      }
      f(xs, gs, os);
      for (int64_t r = 0; r < p.len; ++r) out[(o * p.len + r) * p.inner + j] = os[r];
    }
  return Tensor::from_vector(out, x.shape(), DType::f64);
}

double max_of(const std::vector<double>& s) {
  double m = -INFINITY;
  for (double e : s) m = e > m ? e : m;
  return m;
}

}  // namespace

Tensor softmax(const Tensor& x, int axis) {
  return per_slice(x, Tensor(), axis, "softmax",
                   [](const std::vector<double>& v, const std::vector<double>&,
                      std::vector<double>& out) {
                     const double m = max_of(v);
                     double s = 0;
                     for (double e : v) s += std::exp(e - m);
                     for (size_t i = 0; i < v.size(); ++i) out[i] = std::exp(v[i] - m) / s;
                   });
}

Tensor log_softmax(const Tensor& x, int axis) {
  return per_slice(x, Tensor(), axis, "log_softmax",
                   [](const std::vector<double>& v, const std::vector<double>&,
                      std::vector<double>& out) {
                     const double m = max_of(v);
                     double s = 0;
                     for (double e : v) s += std::exp(e - m);
                     for (size_t i = 0; i < v.size(); ++i) out[i] = v[i] - m - std::log(s);
                   });
}

Tensor softmax_backward(const Tensor& g, const Tensor& y, int axis) {
  return per_slice(y, g, axis, "softmax_backward",
                   [](const std::vector<double>& yv, const std::vector<double>& gv,
                      std::vector<double>& out) {
                     double dot = 0;
                     for (size_t i = 0; i < yv.size(); ++i) dot += gv[i] * yv[i];
                     for (size_t i = 0; i < yv.size(); ++i) out[i] = yv[i] * (gv[i] - dot);
                   });
}

Tensor log_softmax_backward(const Tensor& g, const Tensor& y, int axis) {
  return per_slice(y, g, axis, "log_softmax_backward",
                   [](const std::vector<double>& yv, const std::vector<double>& gv,
                      std::vector<double>& out) {
                     double sg = 0;
                     for (double e : gv) sg += e;
                     for (size_t i = 0; i < yv.size(); ++i) out[i] = gv[i] - std::exp(yv[i]) * sg;
                   });
}

}  // namespace kernels::ref
