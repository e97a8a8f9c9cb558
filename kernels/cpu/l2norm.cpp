#include "kernels/l2norm.h"

#include <cmath>
#include <vector>

namespace kernels::cpu {
namespace {

constexpr int64_t kParallelMin = int64_t(1) << 15;

DType compute_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

// A contiguous tensor seen as [outer, n, inner] around `axis`.
struct Split {
  int64_t outer = 1, n = 1, inner = 1;
};
Split split(const Shape& s, int axis) {
  Split r;
  for (int d = 0; d < s.size(); ++d) {
    if (d < axis)
      r.outer *= s[d];
    else if (d == axis)
      r.n = s[d];
    else
      r.inner *= s[d];
  }
  return r;
}

Shape without(const Shape& s, int axis) {
  Shape r = s;
  r.erase(axis);
  return r;
}

int checked_axis(const char* op, const Tensor& x, int axis) {
  engine::check_defined(x, op, "x");
  engine::check_cpu(x, op);
  ENGINE_CHECK(engine::is_floating(x.dtype()), op, ": expected a floating dtype, got ",
               x.describe());
  ENGINE_CHECK(x.dim() >= 1, op, ": expected at least 1-D input, got ", x.describe());
  return engine::normalize_axis(axis, x.dim(), op);
}

template <class T>
void forward(const T* X, T* Y, T* INV, Split s, double eps) {
  const int64_t n = s.n, inner = s.inner;
  if (inner == 1) {
#pragma omp parallel for schedule(static) if (s.outer * n > kParallelMin)
    for (int64_t o = 0; o < s.outer; ++o) {
      const T* x = X + o * n;
      T* y = Y + o * n;
      double acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < n; ++i) acc += double(x[i]) * double(x[i]);
      const T inv = T(1.0 / std::sqrt(acc + eps));
      INV[o] = inv;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) y[i] = x[i] * inv;
    }
    return;
  }
  // Normalising along an inner axis: accumulate whole rows of `inner` values at a time.
#pragma omp parallel if (s.outer * n * inner > kParallelMin)
  {
    std::vector<double> acc(static_cast<size_t>(inner));
#pragma omp for schedule(static)
    for (int64_t o = 0; o < s.outer; ++o) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t i = 0; i < n; ++i) {
        const T* x = X + (o * n + i) * inner;
#pragma omp simd
        for (int64_t k = 0; k < inner; ++k) acc[k] += double(x[k]) * double(x[k]);
      }
      T* inv = INV + o * inner;
      for (int64_t k = 0; k < inner; ++k) inv[k] = T(1.0 / std::sqrt(acc[k] + eps));
      for (int64_t i = 0; i < n; ++i) {
        const T* x = X + (o * n + i) * inner;
        T* y = Y + (o * n + i) * inner;
#pragma omp simd
        for (int64_t k = 0; k < inner; ++k) y[k] = x[k] * inv[k];
      }
    }
  }
}

template <class T>
void backward(const T* G, const T* Y, const T* INV, T* DX, Split s) {
  const int64_t n = s.n, inner = s.inner;
  if (inner == 1) {
#pragma omp parallel for schedule(static) if (s.outer * n > kParallelMin)
    for (int64_t o = 0; o < s.outer; ++o) {
      const T* g = G + o * n;
      const T* y = Y + o * n;
      T* dx = DX + o * n;
      double acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < n; ++i) acc += double(g[i]) * double(y[i]);
      const T inv = INV[o], dot = T(acc);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) dx[i] = inv * (g[i] - y[i] * dot);
    }
    return;
  }
#pragma omp parallel if (s.outer * n * inner > kParallelMin)
  {
    std::vector<double> acc(static_cast<size_t>(inner));
#pragma omp for schedule(static)
    for (int64_t o = 0; o < s.outer; ++o) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t i = 0; i < n; ++i) {
        const T* g = G + (o * n + i) * inner;
        const T* y = Y + (o * n + i) * inner;
#pragma omp simd
        for (int64_t k = 0; k < inner; ++k) acc[k] += double(g[k]) * double(y[k]);
      }
      const T* inv = INV + o * inner;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t base = (o * n + i) * inner;
#pragma omp simd
        for (int64_t k = 0; k < inner; ++k)
          DX[base + k] = inv[k] * (G[base + k] - Y[base + k] * T(acc[k]));
      }
    }
  }
}

}  // namespace

L2NormOut l2_normalize(const Tensor& x_in, double eps, int axis_in) {
  const int axis = checked_axis("l2_normalize", x_in, axis_in);
  ENGINE_CHECK(eps >= 0, "l2_normalize: eps must be >= 0, got ", eps);
  const DType ct = compute_dtype(x_in.dtype());
  Tensor x = x_in.to(ct).contiguous();
  L2NormOut out{Tensor::empty(x.shape(), ct), Tensor::empty(without(x.shape(), axis), ct)};
  engine::visit_float(ct, "l2_normalize", [&](auto z) {
    using T = decltype(z);
    forward<T>(x.data<T>(), out.y.data<T>(), out.inv_norm.data<T>(), split(x.shape(), axis), eps);
  });
  if (x_in.dtype() != ct) out.y = out.y.to(x_in.dtype());
  return out;
}

Tensor l2_normalize_backward(const Tensor& g_in, const Tensor& y_in, const Tensor& inv_in,
                             int axis_in) {
  const char* op = "l2_normalize_backward";
  const int axis = checked_axis(op, y_in, axis_in);
  engine::check_defined(g_in, op, "g");
  engine::check_defined(inv_in, op, "inv_norm");
  engine::check_same_shape(g_in, y_in, op);
  ENGINE_CHECK(inv_in.shape() == without(y_in.shape(), axis), op, ": inv_norm ", inv_in.describe(),
               " does not match ", y_in.describe(), " reduced over axis ", axis);
  const DType ct = compute_dtype(y_in.dtype());
  Tensor g = g_in.to(ct).contiguous(), y = y_in.to(ct).contiguous();
  Tensor inv = inv_in.to(ct).contiguous();
  Tensor dx = Tensor::empty(y.shape(), ct);
  engine::visit_float(ct, op, [&](auto z) {
    using T = decltype(z);
    backward<T>(g.data<T>(), y.data<T>(), inv.data<T>(), dx.data<T>(), split(y.shape(), axis));
  });
  return y_in.dtype() == ct ? dx : dx.to(y_in.dtype());
}

}  // namespace kernels::cpu
