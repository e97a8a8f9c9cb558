// Reference reductions: plain loops over [outer, len, inner] in f64. Tests only.
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/reduce.h"

namespace kernels::ref {
namespace {

struct Split {
  int64_t outer = 1, len = 1, inner = 1;
  Shape out;
};

Split split(const Shape& s, int axis, bool keepdim, const char* op) {
  Split p;
  if (s.size() == 0) {
    engine::normalize_axis(axis, 1, op);
    return p;
  }
  const int a = engine::normalize_axis(axis, s.size(), op);
  for (int d = 0; d < a; ++d) p.outer *= s[d];
  p.len = s[a];
  for (int d = a + 1; d < s.size(); ++d) p.inner *= s[d];
  p.out = s;
  if (keepdim) p.out[a] = 1;
  else p.out.erase(a);
  return p;
}

// out[o, j] = f(the len values x[o, :, j]).
template <class F>
Tensor reduce(const Tensor& x, int axis, bool keepdim, const char* op, DType dt, F f) {
  const Split p = split(x.shape(), axis, keepdim, op);
  const std::vector<double> v = x.to_vector<double>();
  std::vector<double> out(p.outer * p.inner), slice(p.len);
  for (int64_t o = 0; o < p.outer; ++o)
    for (int64_t j = 0; j < p.inner; ++j) {
      for (int64_t r = 0; r < p.len; ++r) slice[r] = v[(o * p.len + r) * p.inner + j];
      out[o * p.inner + j] = f(slice);
    }
  return Tensor::from_vector(out, p.out, dt);
}

double max_of(const std::vector<double>& s) {
  double m = -INFINITY;
  for (double e : s) {
    if (std::isnan(e)) return e;
    if (e > m) m = e;
  }
  return m;
}

}  // namespace

Tensor sum(const Tensor& x, int axis, bool keepdim) {
  return reduce(x, axis, keepdim, "sum", DType::f64, [](const std::vector<double>& s) {
    double t = 0;
    for (double e : s) t += e;
    return t;
  });
}

Tensor mean(const Tensor& x, int axis, bool keepdim) {
  return reduce(x, axis, keepdim, "mean", DType::f64, [](const std::vector<double>& s) {
    double t = 0;
    for (double e : s) t += e;
    return t / double(s.size());
  });
}

Tensor max(const Tensor& x, int axis, bool keepdim) {
  return reduce(x, axis, keepdim, "max", DType::f64, max_of);
}

Tensor argmax(const Tensor& x, int axis, bool keepdim) {
  return reduce(x, axis, keepdim, "argmax", DType::i64, [](const std::vector<double>& s) {
    for (size_t i = 0; i < s.size(); ++i)
      if (std::isnan(s[i])) return double(i);
    size_t best = 0;
    for (size_t i = 1; i < s.size(); ++i)
      if (s[i] > s[best]) best = i;
    return double(best);
  });
}

Tensor logsumexp(const Tensor& x, int axis, bool keepdim) {
  return reduce(x, axis, keepdim, "logsumexp", DType::f64, [](const std::vector<double>& s) {
    const double m = max_of(s);
    if (std::isinf(m) || std::isnan(m)) return m;
    double t = 0;
    for (double e : s) t += std::exp(e - m);
    return m + std::log(t);
  });
}

Tensor sum_all(const Tensor& x) {
  double t = 0;
  for (double e : x.to_vector<double>()) t += e;
  return Tensor::scalar(t, DType::f64);
}

Tensor mean_all(const Tensor& x) {
  double t = 0;
  for (double e : x.to_vector<double>()) t += e;
  return Tensor::scalar(t / double(x.numel()), DType::f64);
}

Tensor max_backward(const Tensor& g, const Tensor& argmax, const Shape& in_shape, int axis) {
  const Split p = split(in_shape, axis, false, "max_backward");
  const std::vector<double> gv = g.to_vector<double>();
  const std::vector<int64_t> iv = argmax.to_vector<int64_t>();
  std::vector<double> out(in_shape.numel(), 0.0);
  for (int64_t o = 0; o < p.outer; ++o)
    for (int64_t j = 0; j < p.inner; ++j) {
      const int64_t k = o * p.inner + j;
      out[(o * p.len + iv[k]) * p.inner + j] = gv[k];
    }
  return Tensor::from_vector(out, in_shape, DType::f64);
}

}  // namespace kernels::ref
