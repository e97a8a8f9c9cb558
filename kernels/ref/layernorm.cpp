// Reference LayerNorm: plain loops over rows in f64.
#include "kernels/layernorm.h"

#include <cmath>
#include <vector>

namespace kernels::ref {
namespace {
std::vector<double> values_or(const Tensor& t, int64_t n, double fill) {
  return t.defined() ? t.to_vector<double>() : std::vector<double>(size_t(n), fill);
}
Shape rows_of(const Tensor& x) {
  Shape s = x.shape();
  s.erase(s.size() - 1);
  return s;
}
}  // namespace

LayerNormOut layernorm(const Tensor& x_in, const Tensor& weight, const Tensor& bias, double eps) {
  const int64_t d = x_in.size(-1), rows = x_in.numel() / d;
  std::vector<double> x = x_in.to_vector<double>();
  std::vector<double> w = values_or(weight, d, 1.0), b = values_or(bias, d, 0.0);
  std::vector<double> y(x.size()), mean(static_cast<size_t>(rows)), rstd(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    double mu = 0;
    for (int64_t j = 0; j < d; ++j) mu += x[r * d + j];
    mu /= double(d);
    double var = 0;
    for (int64_t j = 0; j < d; ++j) var += (x[r * d + j] - mu) * (x[r * d + j] - mu);
    var /= double(d);
    const double rs = 1.0 / std::sqrt(var + eps);
    for (int64_t j = 0; j < d; ++j) y[r * d + j] = (x[r * d + j] - mu) * rs * w[j] + b[j];
    mean[r] = mu;
    rstd[r] = rs;
  }
  return {Tensor::from_vector(y, x_in.shape()), Tensor::from_vector(mean, rows_of(x_in)),
          Tensor::from_vector(rstd, rows_of(x_in))};
}

LayerNormGrads layernorm_backward(const Tensor& g_in, const Tensor& x_in, const Tensor& weight,
                                  const Tensor& mean_in, const Tensor& rstd_in, bool has_bias) {
  const int64_t d = x_in.size(-1), rows = x_in.numel() / d;
  std::vector<double> x = x_in.to_vector<double>(), g = g_in.to_vector<double>();
  std::vector<double> mean = mean_in.to_vector<double>(), rstd = rstd_in.to_vector<double>();
  std::vector<double> w = values_or(weight, d, 1.0);
  std::vector<double> dx(x.size()), dw(size_t(d), 0.0), db(size_t(d), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double mean_gw = 0, mean_gwxh = 0;
    for (int64_t j = 0; j < d; ++j) {
      const double xh = (x[r * d + j] - mean[r]) * rstd[r];
      mean_gw += g[r * d + j] * w[j] / double(d);
      mean_gwxh += g[r * d + j] * w[j] * xh / double(d);
      dw[j] += g[r * d + j] * xh;
      db[j] += g[r * d + j];
    }
    for (int64_t j = 0; j < d; ++j) {
      const double xh = (x[r * d + j] - mean[r]) * rstd[r];
      dx[r * d + j] = rstd[r] * (g[r * d + j] * w[j] - mean_gw - xh * mean_gwxh);
    }
  }
  LayerNormGrads out;
  out.dx = Tensor::from_vector(dx, x_in.shape());
  if (weight.defined()) out.dweight = Tensor::from_vector(dw, {d});
  if (has_bias) out.dbias = Tensor::from_vector(db, {d});
  return out;
}

}  // namespace kernels::ref
