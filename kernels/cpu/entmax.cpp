// CPU entmax-1.5: rows split over threads; each row is shifted, halved and sorted (a copy, in
// f64 so the running statistics of long rows lose nothing), the support found with one Welford
// pass, then written in the original order. The backward is two fused passes per row.
#include "kernels/entmax.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

namespace kernels::cpu {
namespace {

constexpr int64_t kParallelMin = int64_t(1) << 13;  // elements; a sort makes each one costly

Tensor float_input(const Tensor& x, const char* op, const char* arg) {
  engine::check_defined(x, op, arg);
  engine::check_cpu(x, op);
  ENGINE_CHECK(engine::is_floating(x.dtype()), op, ": expected a floating-point '", arg, "', got ",
               x.describe());
  ENGINE_CHECK(x.dim() >= 1 && x.size(-1) >= 1, op, ": '", arg,
               "' needs a last axis of size >= 1, got ", x.describe());
  return (x.dtype() == DType::bf16 ? x.to(DType::f32) : x).contiguous();
}

// One row: z -> p (K values), with `x` and `sorted` as scratch of K doubles.
template <class T>
void entmax_row(const T* z, T* p, int64_t K, double* x, double* sorted) {
  double m = -INFINITY;
  bool nan = false;
  for (int64_t i = 0; i < K; ++i) {
    nan |= std::isnan(double(z[i]));
    m = std::max(m, double(z[i]));
  }
  if (nan || !std::isfinite(m)) {
    std::fill(p, p + K, std::numeric_limits<T>::quiet_NaN());
    return;
  }
  int64_t finite = 0;
  for (int64_t i = 0; i < K; ++i) {
    x[i] = (double(z[i]) - m) * 0.5;
    if (x[i] != -INFINITY) sorted[finite++] = x[i];  // -inf never enters the support
  }
  std::sort(sorted, sorted + finite, std::greater<double>());
  // tau_k for the prefix k: Welford's running mean and sum of squared deviations (= ss_k).
  double mean = 0, ss = 0, tau_star = 0;
  int64_t support = 0;
  for (int64_t k = 1; k <= finite; ++k) {
    const double v = sorted[k - 1], d = v - mean;
    mean += d / double(k);
    ss += d * (v - mean);
    const double tau = mean - std::sqrt(std::max((1.0 - ss) / double(k), 0.0));
    if (tau <= v) ++support;
    sorted[k - 1] = tau;  // the value is not needed again; keep tau_k for the lookup below
  }
  tau_star = sorted[support - 1];
  for (int64_t i = 0; i < K; ++i) {
    const double t = std::max(x[i] - tau_star, 0.0);
    p[i] = T(t * t);
  }
}

}  // namespace

Tensor entmax15(const Tensor& z_in) {
  const char* op = "entmax15";
  const Tensor z = float_input(z_in, op, "z");
  const int64_t K = z.size(-1), rows = z.numel() / K;
  Tensor out = Tensor::empty(z.shape(), z.dtype());
  engine::visit_float(z.dtype(), op, [&](auto zero) {
    using T = decltype(zero);
    const T* zp = z.data<T>();
    T* op_ = out.data<T>();
#pragma omp parallel if (rows > 1 && rows * K >= kParallelMin)
    {
      std::vector<double> x(static_cast<size_t>(K)), sorted(static_cast<size_t>(K));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r)
        entmax_row(zp + r * K, op_ + r * K, K, x.data(), sorted.data());
    }
  });
  return out;
}

Tensor entmax15_backward(const Tensor& g_in, const Tensor& p_in) {
  const char* op = "entmax15_backward";
  const Tensor g = float_input(g_in, op, "g");
  const Tensor p = float_input(p_in, op, "p").to(g.dtype());
  engine::check_same_shape(g_in, p_in, op);
  const int64_t K = g.size(-1), rows = g.numel() / K;
  Tensor out = Tensor::empty(g.shape(), g.dtype());
  engine::visit_float(g.dtype(), op, [&](auto zero) {
    using T = decltype(zero);
    const T* gp = g.data<T>();
    const T* pp = p.data<T>();
    T* dp = out.data<T>();
#pragma omp parallel for if (rows > 1 && rows * K >= 4 * kParallelMin) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* gr = gp + r * K;
      const T* pr = pp + r * K;
      T* d = dp + r * K;
      T sgs = 0, ss = 0;
#pragma omp simd reduction(+ : sgs, ss)
      for (int64_t i = 0; i < K; ++i) {
        const T s = std::sqrt(pr[i]);
        d[i] = gr[i] * s;
        sgs += d[i];
        ss += s;
      }
      const T q = sgs / ss;
#pragma omp simd
      for (int64_t i = 0; i < K; ++i) d[i] -= std::sqrt(pr[i]) * q;
    }
  });
  return out;
}

}  // namespace kernels::cpu
