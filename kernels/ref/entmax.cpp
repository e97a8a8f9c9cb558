// Reference entmax-1.5, computed without sorting: p_i = max(x_i - tau, 0)² with x = (z - max)/2
// and tau the root of Σ max(x_i - tau, 0)² = 1, found by bisection on [-1, 0] in f64 (the
// maximum alone gives 1 at tau = -1, nothing gives 0 at tau = 0). Tests only.
#include "kernels/entmax.h"

#include <cmath>
#include <limits>
#include <vector>

namespace kernels::ref {

Tensor entmax15(const Tensor& z) {
  const int64_t K = z.size(-1), rows = z.numel() / K;
  std::vector<double> v = z.to_vector<double>(), out(v.size());
  for (int64_t r = 0; r < rows; ++r) {
    double* x = v.data() + r * K;
    double* p = out.data() + r * K;
    double m = -INFINITY;
    bool nan = false;
    for (int64_t i = 0; i < K; ++i) {
      nan = nan || std::isnan(x[i]);
      if (x[i] > m) m = x[i];
    }
    if (nan || !std::isfinite(m)) {
      for (int64_t i = 0; i < K; ++i) p[i] = std::numeric_limits<double>::quiet_NaN();
      continue;
    }
    for (int64_t i = 0; i < K; ++i) x[i] = (x[i] - m) / 2;
    double lo = -1, hi = 0;
    for (int it = 0; it < 200; ++it) {
      const double tau = (lo + hi) / 2;
      double s = 0;
      for (int64_t i = 0; i < K; ++i)
        if (x[i] > tau) s += (x[i] - tau) * (x[i] - tau);
      (s >= 1 ? lo : hi) = tau;
    }
    const double tau = (lo + hi) / 2;
    for (int64_t i = 0; i < K; ++i) p[i] = x[i] > tau ? (x[i] - tau) * (x[i] - tau) : 0.0;
  }
  return Tensor::from_vector(out, z.shape(), DType::f64);
}

Tensor entmax15_backward(const Tensor& g, const Tensor& p) {
  const int64_t K = p.size(-1), rows = p.numel() / K;
  std::vector<double> gv = g.to_vector<double>(), pv = p.to_vector<double>(), out(pv.size());
  for (int64_t r = 0; r < rows; ++r) {
    double sgs = 0, ss = 0;
    for (int64_t i = 0; i < K; ++i) {
      sgs += gv[r * K + i] * std::sqrt(pv[r * K + i]);
      ss += std::sqrt(pv[r * K + i]);
    }
    for (int64_t i = 0; i < K; ++i) {
      const double s = std::sqrt(pv[r * K + i]);
      out[r * K + i] = gv[r * K + i] * s - s * sgs / ss;
    }
  }
  return Tensor::from_vector(out, p.shape(), DType::f64);
}

}  // namespace kernels::ref
