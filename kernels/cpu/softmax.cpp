// CPU softmax family. The (contiguous) input is seen as [outer, len, inner] around the axis.
// Last axis (inner == 1): one row per iteration, fused max / exp+sum / scale passes over the
// row while it is in cache, rows split over threads. Other axes: strips of up to kBlock inner
// columns walk the axis with per-column statistics on the stack, so nothing is transposed.
#include "kernels/softmax.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/elementwise.h"

namespace kernels::cpu {
namespace {

constexpr int64_t kParallelMin = 1 << 14;  // elements; exp makes each one worth more than a copy
constexpr int64_t kBlock = 256;            // inner columns per strip

struct AxisLayout {
  int64_t outer = 1, len = 1, inner = 1;
};

AxisLayout axis_layout(const Shape& s, int axis_in, const char* op) {
  AxisLayout L;
  if (s.size() == 0) {  // a 0-d tensor has one implicit axis of size 1
    engine::normalize_axis(axis_in, 1, op);
    return L;
  }
  const int axis = engine::normalize_axis(axis_in, s.size(), op);
  for (int d = 0; d < axis; ++d) L.outer *= s[d];
  L.len = s[axis];
  for (int d = axis + 1; d < s.size(); ++d) L.inner *= s[d];
  return L;
}

Tensor compute_input(const Tensor& x, const char* op, const char* arg) {
  engine::check_defined(x, op, arg);
  engine::check_cpu(x, op);
  ENGINE_CHECK(engine::is_floating(x.dtype()), op, ": expected a floating-point '", arg,
               "', got ", x.describe());
  return (x.dtype() == DType::bf16 ? x.to(DType::f32) : x).contiguous();
}
Tensor restore_dtype(const Tensor& out, DType dtype) {
  return out.dtype() == dtype ? out : out.to(dtype);
}

// Runs row(o) for every row (inner == 1), or strip(start, w) for every block of w columns,
// start being the offset of its first element. A strip is walked two or three times, so its
// width keeps it (len rows of w values) within about kStripBytes, i.e. in L2.
template <class RowFn, class StripFn>
void for_each_slice(const AxisLayout& L, size_t elem, RowFn&& row, StripFn&& strip) {
  constexpr int64_t kStripBytes = 256 << 10;
  const bool par = L.outer * L.len * L.inner >= kParallelMin;
  if (L.inner == 1) {
#pragma omp parallel for if (par) schedule(static)
    for (int64_t o = 0; o < L.outer; ++o) row(o);
    return;
  }
  int64_t block =
      std::clamp<int64_t>(kStripBytes / std::max<int64_t>(1, L.len * int64_t(elem)), 64, kBlock);
  // Few outer slices: narrower strips, so that every thread gets some.
  while (par && block > 16 && L.outer * ((L.inner + block - 1) / block) < 4 * omp_get_max_threads())
    block /= 2;
  const int64_t nb = (L.inner + block - 1) / block;
#pragma omp parallel for if (par) schedule(static)
  for (int64_t t = 0; t < L.outer * nb; ++t) {
    const int64_t o = t / nb, j0 = (t % nb) * block;
    strip(o * L.len * L.inner + j0, std::min(block, L.inner - j0));
  }
}

// The max is the shift when finite; otherwise 0, so that a row of -inf computes exp(-inf) = 0
// (and then NaN, as 0/0) instead of exp(-inf - -inf), and +inf / NaN flow through.
template <class T>
T shift_of(T m) {
  return std::isfinite(m) ? m : T(0);
}

template <bool kLog>
Tensor forward(const Tensor& x_in, int axis, const char* op) {
  const Tensor x = compute_input(x_in, op, "x");
  const AxisLayout L = axis_layout(x.shape(), axis, op);
  Tensor out;
  engine::visit_float(x.dtype(), op, [&](auto z) {
    using T = decltype(z);
    out = Tensor::empty(x.shape(), x.dtype());
    if (x.numel() == 0) return;
    const T* p = x.data<T>();
    T* y = out.data<T>();
    const int64_t len = L.len, inner = L.inner;
    for_each_slice(
        L, sizeof(T),
        [&](int64_t r) {
          const T* q = p + r * len;
          T* o = y + r * len;
          T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
          for (int64_t i = 0; i < len; ++i) m = q[i] > m ? q[i] : m;  // std::max blocks simd
          const T c = shift_of(m);
          T s = 0;
          if constexpr (kLog) {
#pragma omp simd reduction(+ : s)
            for (int64_t i = 0; i < len; ++i) s += math::exp<T>(q[i] - c);
            const T lse = c + std::log(s);
#pragma omp simd
            for (int64_t i = 0; i < len; ++i) o[i] = q[i] - lse;
          } else {
#pragma omp simd reduction(+ : s)
            for (int64_t i = 0; i < len; ++i) {
              const T e = math::exp<T>(q[i] - c);
              o[i] = e;
              s += e;
            }
            const T inv = T(1) / s;
#pragma omp simd
            for (int64_t i = 0; i < len; ++i) o[i] *= inv;
          }
        },
        [&](int64_t start, int64_t w) {
          T m[kBlock], s[kBlock];
          for (int64_t j = 0; j < w; ++j) {
            m[j] = -std::numeric_limits<T>::infinity();
            s[j] = 0;
          }
          for (int64_t i = 0; i < len; ++i) {
            const T* q = p + start + i * inner;
#pragma omp simd
            for (int64_t j = 0; j < w; ++j) m[j] = q[j] > m[j] ? q[j] : m[j];
          }
          for (int64_t j = 0; j < w; ++j) m[j] = shift_of(m[j]);
          for (int64_t i = 0; i < len; ++i) {
            const T* q = p + start + i * inner;
            T* o = y + start + i * inner;
#pragma omp simd
            for (int64_t j = 0; j < w; ++j) {
              const T e = math::exp<T>(q[j] - m[j]);
              if constexpr (!kLog) o[j] = e;
              s[j] += e;
            }
          }
          // s becomes the per-column factor (softmax) or offset (log_softmax).
          for (int64_t j = 0; j < w; ++j) s[j] = kLog ? m[j] + std::log(s[j]) : T(1) / s[j];
          for (int64_t i = 0; i < len; ++i) {
            const T* q = p + start + i * inner;
            T* o = y + start + i * inner;
            if constexpr (kLog) {
#pragma omp simd
              for (int64_t j = 0; j < w; ++j) o[j] = q[j] - s[j];
            } else {
#pragma omp simd
              for (int64_t j = 0; j < w; ++j) o[j] *= s[j];
            }
          }
        });
  });
  return restore_dtype(out, x_in.dtype());
}

// softmax: dx = y (g - sum(g y)); log_softmax: dx = g - exp(y) sum(g).
template <bool kLog>
Tensor backward(const Tensor& g_in, const Tensor& y_in, int axis, const char* op) {
  engine::check_defined(g_in, op, "g");
  engine::check_defined(y_in, op, "y");
  engine::check_same_shape(g_in, y_in, op);
  engine::check_same_dtype(g_in, y_in, op);
  const Tensor g = compute_input(g_in, op, "g"), y = compute_input(y_in, op, "y");
  const AxisLayout L = axis_layout(g.shape(), axis, op);
  Tensor out;
  engine::visit_float(g.dtype(), op, [&](auto z) {
    using T = decltype(z);
    out = Tensor::empty(g.shape(), g.dtype());
    if (g.numel() == 0) return;
    const T* gp = g.data<T>();
    const T* yp = y.data<T>();
    T* dp = out.data<T>();
    const int64_t len = L.len, inner = L.inner;
    for_each_slice(
        L, sizeof(T),
        [&](int64_t r) {
          const T* gq = gp + r * len;
          const T* yq = yp + r * len;
          T* d = dp + r * len;
          T s = 0;
          if constexpr (kLog) {
#pragma omp simd reduction(+ : s)
            for (int64_t i = 0; i < len; ++i) s += gq[i];
#pragma omp simd
            for (int64_t i = 0; i < len; ++i) d[i] = gq[i] - math::exp<T>(yq[i]) * s;
          } else {
#pragma omp simd reduction(+ : s)
            for (int64_t i = 0; i < len; ++i) s += gq[i] * yq[i];
#pragma omp simd
            for (int64_t i = 0; i < len; ++i) d[i] = yq[i] * (gq[i] - s);
          }
        },
        [&](int64_t start, int64_t w) {
          T s[kBlock];
          for (int64_t j = 0; j < w; ++j) s[j] = 0;
          for (int64_t i = 0; i < len; ++i) {
            const T* gq = gp + start + i * inner;
            const T* yq = yp + start + i * inner;
            if constexpr (kLog) {
#pragma omp simd
              for (int64_t j = 0; j < w; ++j) s[j] += gq[j];
            } else {
#pragma omp simd
              for (int64_t j = 0; j < w; ++j) s[j] += gq[j] * yq[j];
            }
          }
          for (int64_t i = 0; i < len; ++i) {
            const T* gq = gp + start + i * inner;
            const T* yq = yp + start + i * inner;
            T* d = dp + start + i * inner;
            if constexpr (kLog) {
#pragma omp simd
              for (int64_t j = 0; j < w; ++j) d[j] = gq[j] - math::exp<T>(yq[j]) * s[j];
            } else {
#pragma omp simd
              for (int64_t j = 0; j < w; ++j) d[j] = yq[j] * (gq[j] - s[j]);
            }
          }
        });
  });
  return restore_dtype(out, g_in.dtype());
}

}  // namespace

Tensor softmax(const Tensor& x, int axis) { return forward<false>(x, axis, "softmax"); }
Tensor log_softmax(const Tensor& x, int axis) { return forward<true>(x, axis, "log_softmax"); }
Tensor softmax_backward(const Tensor& g, const Tensor& y, int axis) {
  return backward<false>(g, y, axis, "softmax_backward");
}
Tensor log_softmax_backward(const Tensor& g, const Tensor& y, int axis) {
  return backward<true>(g, y, axis, "log_softmax_backward");
}

}  // namespace kernels::cpu
