// Reference bias + GELU (tanh): plain loops in f64 from the textbook formula.
#include "kernels/bias_gelu.h"

#include <cmath>
#include <vector>

namespace kernels::ref {
namespace {
const double kC = std::sqrt(2.0 / 3.14159265358979323846);
}  // namespace

Tensor bias_gelu(const Tensor& x_in, const Tensor& bias) {
  const int64_t d = x_in.size(-1), rows = d == 0 ? 0 : x_in.numel() / d;
  std::vector<double> x = x_in.to_vector<double>(), b = bias.to_vector<double>();
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < d; ++j) {
      const double v = x[r * d + j] + b[j];
      y[r * d + j] = 0.5 * v * (1.0 + std::tanh(kC * (v + 0.044715 * v * v * v)));
    }
  return Tensor::from_vector(y, x_in.shape());
}

BiasGeluGrads bias_gelu_backward(const Tensor& g_in, const Tensor& x_in, const Tensor& bias) {
  const int64_t d = x_in.size(-1), rows = d == 0 ? 0 : x_in.numel() / d;
  std::vector<double> x = x_in.to_vector<double>(), g = g_in.to_vector<double>();
  std::vector<double> b = bias.to_vector<double>();
  std::vector<double> dx(x.size()), db(size_t(d), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < d; ++j) {
      const double v = x[r * d + j] + b[j];
      const double t = std::tanh(kC * (v + 0.044715 * v * v * v));
      const double dgelu =
          0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * kC * (1.0 + 3.0 * 0.044715 * v * v);
      dx[r * d + j] = g[r * d + j] * dgelu;
      db[j] += dx[r * d + j];
    }
  return {Tensor::from_vector(dx, x_in.shape()), Tensor::from_vector(db, Shape{d})};
}

}  // namespace kernels::ref
