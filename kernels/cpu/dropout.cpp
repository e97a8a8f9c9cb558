#include "kernels/dropout.h"

#include <cmath>

#include "engine/philox.h"

namespace kernels::cpu {
namespace {

constexpr int64_t kParallelMin = int64_t(1) << 14;

// Elements per group: the mask words of 16 Philox blocks are generated first, then applied in
// one vectorised pass. (The Philox rounds themselves are scalar: compiler-vectorised versions
// measured no faster here.)
constexpr int64_t kLanes = 16;
constexpr int64_t kGroup = 4 * kLanes;

// Applies the mask of (seed, stream) to n contiguous elements, one group of blocks at a time.
template <class T, class S>
void apply(const T* x, T* y, int64_t n, uint32_t threshold, S scale, uint64_t seed,
           uint64_t stream) {
  const int64_t groups = (n + kGroup - 1) / kGroup;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t q = 0; q < groups; ++q) {
    uint32_t w[kGroup];
    for (int64_t j = 0; j < kLanes; ++j) {
      const engine::U32x4 r = engine::philox_block(seed, stream, uint64_t(q * kLanes + j));
      for (int k = 0; k < 4; ++k) w[4 * j + k] = r.v[k];
    }
    const int64_t i0 = q * kGroup;
    if (i0 + kGroup <= n) {
#pragma omp simd
      for (int64_t i = 0; i < kGroup; ++i)
        y[i0 + i] = (w[i] >> 8) >= threshold ? T(S(x[i0 + i]) * scale) : T(S(0));
    } else {
      for (int64_t i = 0; i < n - i0; ++i)
        y[i0 + i] = (w[i] >> 8) >= threshold ? T(S(x[i0 + i]) * scale) : T(S(0));
    }
  }
}

Tensor run(const char* op, const Tensor& x_in, double p, uint64_t seed, uint64_t stream) {
  engine::check_defined(x_in, op, "x");
  engine::check_cpu(x_in, op);
  ENGINE_CHECK(engine::is_floating(x_in.dtype()), op, ": expected a floating dtype, got ",
               x_in.describe());
  ENGINE_CHECK(p >= 0.0 && p < 1.0, op, ": p must be in [0, 1), got ", p);
  if (p == 0.0) return x_in;
  Tensor x = x_in.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  // k / 2^24 >= p  <=>  k >= ceil(p · 2^24); exact, since p · 2^24 is exact in f64.
  const uint32_t threshold = uint32_t(std::ceil(p * 16777216.0));
  const double scale = 1.0 / (1.0 - p);
  const int64_t n = x.numel();
  switch (x.dtype()) {
    case DType::f32:
      apply<float, float>(x.data<float>(), y.data<float>(), n, threshold, float(scale), seed,
                          stream);
      break;
    case DType::f64:
      apply<double, double>(x.data<double>(), y.data<double>(), n, threshold, scale, seed, stream);
      break;
    default:
      apply<bf16, float>(x.data<bf16>(), y.data<bf16>(), n, threshold, float(scale), seed, stream);
  }
  return y;
}

}  // namespace

Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t stream) {
  return run("dropout", x, p, seed, stream);
}

Tensor dropout_backward(const Tensor& g, double p, uint64_t seed, uint64_t stream) {
  return run("dropout_backward", g, p, seed, stream);
}

}  // namespace kernels::cpu
