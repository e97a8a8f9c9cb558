#include "models/init.h"

#include <cmath>
#include <vector>

#include "engine/error.h"
#include "engine/philox.h"

namespace models {
namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Fan-in and fan-out of the matrices in a parameter [.., out, in] (a vector: fan_in = its size).
void fans(const Shape& s, double& fan_in, double& fan_out) {
  if (s.size() < 2) {
    fan_in = fan_out = double(s.numel() > 0 ? s.numel() : 1);
    return;
  }
  fan_in = double(s[s.size() - 1]);
  fan_out = double(s[s.size() - 2]);
}

// Standard normal truncated to [-2, 2] by resampling: attempt r of element i uses stream + r.
double trunc_std_normal(uint64_t seed, uint64_t stream, uint64_t i) {
  for (uint64_t r = 0;; ++r) {
    const double z = engine::philox_normal(seed, stream + r * 0x9E3779B97F4A7C15ull, i);
    if (std::fabs(z) <= 2.0) return z;
  }
}

// Rows of m [rows, cols] made orthonormal (rows <= cols) by modified Gram-Schmidt, twice for
// accuracy in float-sized problems; columns instead when rows > cols.
void orthonormalise(std::vector<double>& m, int64_t rows, int64_t cols) {
  const bool by_rows = rows <= cols;
  const int64_t nvec = by_rows ? rows : cols, len = by_rows ? cols : rows;
  auto at = [&](int64_t v, int64_t k) -> double& {
    return by_rows ? m[v * cols + k] : m[k * cols + v];
  };
  for (int pass = 0; pass < 2; ++pass)
    for (int64_t v = 0; v < nvec; ++v) {
      for (int64_t u = 0; u < v; ++u) {
        double dot = 0;
        for (int64_t k = 0; k < len; ++k) dot += at(v, k) * at(u, k);
        for (int64_t k = 0; k < len; ++k) at(v, k) -= dot * at(u, k);
      }
      double n2 = 0;
      for (int64_t k = 0; k < len; ++k) n2 += at(v, k) * at(v, k);
      const double inv = 1.0 / std::sqrt(n2);
      for (int64_t k = 0; k < len; ++k) at(v, k) *= inv;
    }
}

}  // namespace

std::string describe(const Init& init) {
  switch (init.kind) {
    case Init::Kind::zeros: return "zeros";
    case Init::Kind::ones: return "ones";
    case Init::Kind::constant: return "constant(" + std::to_string(init.a) + ")";
    case Init::Kind::normal: return "normal(std=" + std::to_string(init.a) + ")";
    case Init::Kind::trunc_normal: return "trunc_normal(std=" + std::to_string(init.a) + ")";
    case Init::Kind::uniform:
      return "uniform(" + std::to_string(init.a) + ", " + std::to_string(init.b) + ")";
    case Init::Kind::xavier_uniform: return "xavier_uniform";
    case Init::Kind::lecun_normal: return "lecun_normal";
    case Init::Kind::orthogonal: return "orthogonal";
  }
  return "?";
}

void initialize(Tensor& t, const Init& init, uint64_t seed, const std::string& name) {
  ENGINE_CHECK(t.device().is_cpu() && t.is_contiguous() &&
                   (t.dtype() == DType::f32 || t.dtype() == DType::f64),
               "initialize(", name, "): needs a contiguous CPU f32/f64 tensor, got ", t.describe());
  const int64_t n = t.numel();
  const uint64_t stream = fnv1a(name);
  double fan_in, fan_out;
  fans(t.shape(), fan_in, fan_out);
  std::vector<double> v(size_t(n), 0.0);
  switch (init.kind) {
    case Init::Kind::zeros: break;
    case Init::Kind::ones: std::fill(v.begin(), v.end(), 1.0); break;
    case Init::Kind::constant: std::fill(v.begin(), v.end(), init.a); break;
    case Init::Kind::normal:
      for (int64_t i = 0; i < n; ++i) v[i] = init.a * engine::philox_normal(seed, stream, i);
      break;
    case Init::Kind::trunc_normal:
      for (int64_t i = 0; i < n; ++i) v[i] = init.a * trunc_std_normal(seed, stream, i);
      break;
    case Init::Kind::uniform:
      for (int64_t i = 0; i < n; ++i)
        v[i] = init.a + (init.b - init.a) * engine::philox_uniform(seed, stream, i);
      break;
    case Init::Kind::xavier_uniform: {
      const double bound = std::sqrt(6.0 / (fan_in + fan_out));
      for (int64_t i = 0; i < n; ++i)
        v[i] = bound * (2.0 * engine::philox_uniform(seed, stream, i) - 1.0);
      break;
    }
    case Init::Kind::lecun_normal: {
      // flax: truncated normal scaled so the truncated distribution has variance 1 / fan_in
      // (0.87962566 is the std of a standard normal truncated to ±2).
      const double s = std::sqrt(1.0 / fan_in) / 0.87962566103423978;
      for (int64_t i = 0; i < n; ++i) v[i] = s * trunc_std_normal(seed, stream, i);
      break;
    }
    case Init::Kind::orthogonal: {
      const int64_t cols = t.dim() >= 1 ? t.size(-1) : 1;
      const int64_t rows = cols > 0 ? n / cols : 0;
      for (int64_t i = 0; i < n; ++i) v[i] = engine::philox_normal(seed, stream, i);
      if (rows > 0 && cols > 0) orthonormalise(v, rows, cols);
      break;
    }
  }
  if (t.dtype() == DType::f32) {
    float* p = t.data<float>();
    for (int64_t i = 0; i < n; ++i) p[i] = float(v[i]);
  } else {
    double* p = t.data<double>();
    for (int64_t i = 0; i < n; ++i) p[i] = v[i];
  }
}

}  // namespace models
