// Reference elementwise ops: every element computed in f64 from the textbook formula, with
// broadcasting done by explicit index arithmetic. Slow and obviously correct; tests only.
#include <cmath>
#include <vector>

#include "kernels/elementwise.h"

namespace kernels::ref {
namespace {

Tensor make(const std::vector<double>& v, const Shape& s) {
  return Tensor::from_vector(v, s, DType::f64);
}

// Flat index into a contiguous tensor of shape `in` of the element that broadcasting sends to
// the output position `flat` of shape `out` (dims aligned from the right; size-1 dims repeat).
int64_t source_index(int64_t flat, const Shape& out, const Shape& in) {
  int64_t src = 0, stride = 1;
  for (int d = out.size() - 1; d >= 0; --d) {
    const int64_t i = flat % out[d];
    flat /= out[d];
    const int din = d - (out.size() - in.size());
    if (din < 0) continue;
    if (in[din] != 1) src += i * stride;
    stride *= in[din];
  }
  return src;
}

template <class F>
Tensor map1(const Tensor& x, F f) {
  std::vector<double> v = x.to_vector<double>();
  for (double& e : v) e = f(e);
  return make(v, x.shape());
}

template <class F>
Tensor map2(const Tensor& a, const Tensor& b, const char* op, F f) {
  const Shape s = engine::broadcast_shapes(a.shape(), b.shape(), op);
  const std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
  std::vector<double> out(s.numel());
  for (int64_t i = 0; i < s.numel(); ++i)
    out[i] = f(va[source_index(i, s, a.shape())], vb[source_index(i, s, b.shape())]);
  return make(out, s);
}

const double kPi = 3.14159265358979323846;

double gelu_tanh_inner(double x) { return std::sqrt(2 / kPi) * (x + 0.044715 * x * x * x); }
double phi(double x) { return std::exp(-x * x / 2) / std::sqrt(2 * kPi); }
double cdf(double x) { return 0.5 * (1 + std::erf(x / std::sqrt(2.0))); }

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  return map2(a, b, "add", [](double x, double y) { return x + y; });
}
Tensor sub(const Tensor& a, const Tensor& b) {
  return map2(a, b, "sub", [](double x, double y) { return x - y; });
}
Tensor mul(const Tensor& a, const Tensor& b) {
  return map2(a, b, "mul", [](double x, double y) { return x * y; });
}
Tensor div(const Tensor& a, const Tensor& b) {
  return map2(a, b, "div", [](double x, double y) { return x / y; });
}
Tensor add_scalar(const Tensor& x, double s) { return map1(x, [s](double v) { return v + s; }); }
Tensor mul_scalar(const Tensor& x, double s) { return map1(x, [s](double v) { return v * s; }); }
Tensor pow_scalar(const Tensor& x, double p) {
  return map1(x, [p](double v) { return std::pow(v, p); });
}
Tensor neg(const Tensor& x) { return map1(x, [](double v) { return -v; }); }
Tensor exp(const Tensor& x) { return map1(x, [](double v) { return std::exp(v); }); }
Tensor log(const Tensor& x) { return map1(x, [](double v) { return std::log(v); }); }
Tensor tanh(const Tensor& x) { return map1(x, [](double v) { return std::tanh(v); }); }
Tensor sqrt(const Tensor& x) { return map1(x, [](double v) { return std::sqrt(v); }); }
Tensor rsqrt(const Tensor& x) { return map1(x, [](double v) { return 1 / std::sqrt(v); }); }
Tensor relu(const Tensor& x) { return map1(x, [](double v) { return v > 0 ? v : 0.0; }); }
Tensor sigmoid(const Tensor& x) { return map1(x, [](double v) { return 1 / (1 + std::exp(-v)); }); }
Tensor gelu_tanh(const Tensor& x) {
  return map1(x, [](double v) { return 0.5 * v * (1 + std::tanh(gelu_tanh_inner(v))); });
}
Tensor gelu_erf(const Tensor& x) { return map1(x, [](double v) { return v * cdf(v); }); }
Tensor square(const Tensor& x) { return map1(x, [](double v) { return v * v; }); }
Tensor abs(const Tensor& x) { return map1(x, [](double v) { return std::fabs(v); }); }

Tensor relu_backward(const Tensor& g, const Tensor& x) {
  return map2(g, x, "relu_backward", [](double gv, double v) { return v > 0 ? gv : 0.0; });
}
Tensor gelu_tanh_backward(const Tensor& g, const Tensor& x) {
  return map2(g, x, "gelu_tanh_backward", [](double gv, double v) {
    const double t = std::tanh(gelu_tanh_inner(v));
    const double du = std::sqrt(2 / kPi) * (1 + 3 * 0.044715 * v * v);
    return gv * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * du);
  });
}
Tensor gelu_erf_backward(const Tensor& g, const Tensor& x) {
  return map2(g, x, "gelu_erf_backward",
              [](double gv, double v) { return gv * (cdf(v) + v * phi(v)); });
}
Tensor sigmoid_backward(const Tensor& g, const Tensor& y) {
  return map2(g, y, "sigmoid_backward", [](double gv, double v) { return gv * v * (1 - v); });
}
Tensor tanh_backward(const Tensor& g, const Tensor& y) {
  return map2(g, y, "tanh_backward", [](double gv, double v) { return gv * (1 - v * v); });
}

Tensor sum_to_shape(const Tensor& g, const Shape& shape) {
  ENGINE_CHECK(engine::broadcast_shapes(shape, g.shape(), "sum_to_shape") == g.shape(),
               "sum_to_shape: cannot reduce ", g.describe(), " to shape ", shape);
  const std::vector<double> v = g.to_vector<double>();
  std::vector<double> out(shape.numel(), 0.0);
  for (int64_t i = 0; i < g.numel(); ++i) out[source_index(i, g.shape(), shape)] += v[i];
  return make(out, shape);
}

}  // namespace kernels::ref
