// CPU reductions. A reduction over one axis sees the (contiguous) input as [outer, len, inner].
// When the axis is innermost (inner == 1) each output is one contiguous row, reduced with a
// vectorised loop, rows split over threads. Otherwise the work is split into strips of up to
// kBlock inner columns: a strip walks the axis adding whole contiguous column blocks into
// accumulators on the stack, so nothing is transposed or copied.
#include "kernels/reduce.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/elementwise.h"

namespace kernels::cpu {
namespace {

constexpr int64_t kParallelMin = 1 << 15;  // elements read; below this one thread is faster
constexpr int64_t kBlock = 256;            // inner columns per strip
constexpr int64_t kChunk = 1 << 16;        // sum_all partial sums: fixed, so results do not
                                           // depend on the number of threads

struct AxisLayout {
  int axis = 0;
  int64_t outer = 1, len = 1, inner = 1;
  Shape out_shape;
};

AxisLayout axis_layout(const Tensor& x, int axis_in, bool keepdim, const char* op) {
  engine::check_defined(x, op, "x");
  engine::check_cpu(x, op);
  AxisLayout L;
  if (x.dim() == 0) {  // a 0-d tensor reduces over its one implicit axis, like a [1]
    engine::normalize_axis(axis_in, 1, op);
    return L;
  }
  L.axis = engine::normalize_axis(axis_in, x.dim(), op);
  for (int d = 0; d < L.axis; ++d) L.outer *= x.size(d);
  L.len = x.size(L.axis);
  for (int d = L.axis + 1; d < x.dim(); ++d) L.inner *= x.size(d);
  L.out_shape = x.shape();
  if (keepdim) L.out_shape[L.axis] = 1;
  else L.out_shape.erase(L.axis);
  return L;
}

// f32/f64 input, contiguous: bf16 is widened to f32 first (and the result narrowed back).
Tensor compute_input(const Tensor& x, const char* op) {
  ENGINE_CHECK(engine::is_floating(x.dtype()), op, ": expected a floating-point tensor, got ",
               x.describe());
  return (x.dtype() == DType::bf16 ? x.to(DType::f32) : x).contiguous();
}
Tensor restore_dtype(const Tensor& out, DType dtype) {
  return out.dtype() == dtype ? out : out.to(dtype);
}

// Runs row(o) for every output row (inner == 1) or strip(o, j0, w) for every block of at most
// `block` (<= kBlock) columns.
template <class RowFn, class StripFn>
void for_each_slice(const AxisLayout& L, RowFn&& row, StripFn&& strip, int64_t block = kBlock) {
  const bool par = L.outer * L.len * L.inner >= kParallelMin;
  if (L.inner == 1) {
#pragma omp parallel for if (par) schedule(static)
    for (int64_t o = 0; o < L.outer; ++o) row(o);
    return;
  }
  // Few outer slices (a reduction over the leading axis): narrower strips, so that every
  // thread gets some.
  while (par && block > 16 && L.outer * ((L.inner + block - 1) / block) < 4 * omp_get_max_threads())
    block /= 2;
  const int64_t nb = (L.inner + block - 1) / block;
#pragma omp parallel for if (par) schedule(static)
  for (int64_t t = 0; t < L.outer * nb; ++t) {
    const int64_t o = t / nb, j0 = (t % nb) * block;
    strip(o, j0, std::min(block, L.inner - j0));
  }
}

// Strip width for reductions that walk a strip twice: narrow enough that the strip (len rows
// of it) is still in L2 for the second pass.
int64_t reread_block(int64_t len, size_t elem) {
  constexpr int64_t kStripBytes = 256 << 10;
  return std::clamp<int64_t>(kStripBytes / std::max<int64_t>(1, len * int64_t(elem)), 64, kBlock);
}

// sum, or mean (the sum divided by len), accumulated in f64.
Tensor sum_impl(const Tensor& x_in, int axis, bool keepdim, bool is_mean, const char* op) {
  const AxisLayout L = axis_layout(x_in, axis, keepdim, op);
  const Tensor x = compute_input(x_in, op);
  Tensor out;
  engine::visit_float(x.dtype(), op, [&](auto z) {
    using T = decltype(z);
    out = Tensor::empty(L.out_shape, x.dtype());
    const T* p = x.data<T>();
    T* o = out.data<T>();
    const int64_t len = L.len, inner = L.inner;
    const double div = is_mean ? double(len) : 1.0;
    for_each_slice(
        L,
        [&](int64_t r) {
          const T* q = p + r * len;
          double s = 0;
#pragma omp simd reduction(+ : s)
          for (int64_t i = 0; i < len; ++i) s += double(q[i]);
          o[r] = T(s / div);
        },
        [&](int64_t r, int64_t j0, int64_t w) {
          double acc[kBlock];
          for (int64_t j = 0; j < w; ++j) acc[j] = 0;
          const T* q = p + r * len * inner + j0;
          for (int64_t i = 0; i < len; ++i, q += inner) {
#pragma omp simd
            for (int64_t j = 0; j < w; ++j) acc[j] += double(q[j]);
          }
          for (int64_t j = 0; j < w; ++j) o[r * inner + j0 + j] = T(acc[j] / div);
        });
  });
  return restore_dtype(out, x_in.dtype());
}

}  // namespace

Tensor sum(const Tensor& x, int axis, bool keepdim) {
  return sum_impl(x, axis, keepdim, false, "sum");
}

Tensor mean(const Tensor& x, int axis, bool keepdim) {
  return sum_impl(x, axis, keepdim, true, "mean");
}

Tensor max(const Tensor& x_in, int axis, bool keepdim) {
  const AxisLayout L = axis_layout(x_in, axis, keepdim, "max");
  ENGINE_CHECK(L.len > 0 || L.outer * L.inner == 0, "max: cannot reduce ", x_in.describe(),
               " over axis ", axis, " of size 0");
  const Tensor x = compute_input(x_in, "max");
  Tensor out;
  engine::visit_float(x.dtype(), "max", [&](auto z) {
    using T = decltype(z);
    out = Tensor::empty(L.out_shape, x.dtype());
    const T* p = x.data<T>();
    T* o = out.data<T>();
    const int64_t len = L.len, inner = L.inner;
    const T nan = std::numeric_limits<T>::quiet_NaN();
    // The vectorised max does not order NaNs; a separate flag makes any NaN the result.
    for_each_slice(
        L,
        [&](int64_t r) {
          const T* q = p + r * len;
          T m = -std::numeric_limits<T>::infinity();
          int has_nan = 0;
#pragma omp simd reduction(max : m) reduction(| : has_nan)
          for (int64_t i = 0; i < len; ++i) {
            const T v = q[i];
            m = v > m ? v : m;  // not std::max: its references keep GCC from vectorising
            has_nan |= v != v;
          }
          o[r] = has_nan ? nan : m;
        },
        [&](int64_t r, int64_t j0, int64_t w) {
          T acc[kBlock];
          int has_nan[kBlock];
          for (int64_t j = 0; j < w; ++j) {
            acc[j] = -std::numeric_limits<T>::infinity();
            has_nan[j] = 0;
          }
          const T* q = p + r * len * inner + j0;
          for (int64_t i = 0; i < len; ++i, q += inner) {
#pragma omp simd
            for (int64_t j = 0; j < w; ++j) {
              const T v = q[j];
              acc[j] = v > acc[j] ? v : acc[j];
              has_nan[j] |= v != v;
            }
          }
          for (int64_t j = 0; j < w; ++j) o[r * inner + j0 + j] = has_nan[j] ? nan : acc[j];
        });
  });
  return restore_dtype(out, x_in.dtype());
}

Tensor argmax(const Tensor& x_in, int axis, bool keepdim) {
  const AxisLayout L = axis_layout(x_in, axis, keepdim, "argmax");
  ENGINE_CHECK(L.len > 0 || L.outer * L.inner == 0, "argmax: cannot reduce ", x_in.describe(),
               " over axis ", axis, " of size 0");
  const Tensor x = compute_input(x_in, "argmax");
  Tensor out = Tensor::empty(L.out_shape, DType::i64);
  engine::visit_float(x.dtype(), "argmax", [&](auto z) {
    using T = decltype(z);
    const T* p = x.data<T>();
    int64_t* o = out.data<int64_t>();
    const int64_t len = L.len, inner = L.inner;
    // v replaces the best so far if larger, or if it is the first NaN (NaN is the maximum).
    auto better = [](T v, T m) { return v > m || (v != v && m == m); };
    for_each_slice(
        L,
        [&](int64_t r) {
          // A vectorised max (and NaN check), then a scan for its first occurrence.
          const T* q = p + r * len;
          T m = q[0];
          int has_nan = 0;
#pragma omp simd reduction(max : m) reduction(| : has_nan)
          for (int64_t i = 0; i < len; ++i) {
            const T v = q[i];
            m = v > m ? v : m;
            has_nan |= v != v;
          }
          int64_t best = 0;
          if (has_nan) {
            while (q[best] == q[best]) ++best;
          } else {
            while (q[best] != m) ++best;
          }
          o[r] = best;
        },
        [&](int64_t r, int64_t j0, int64_t w) {
          T acc[kBlock];
          int64_t best[kBlock];
          const T* q = p + r * len * inner + j0;
          for (int64_t j = 0; j < w; ++j) {
            acc[j] = q[j];
            best[j] = 0;
          }
          q += inner;
          for (int64_t i = 1; i < len; ++i, q += inner)
            for (int64_t j = 0; j < w; ++j)
              if (better(q[j], acc[j])) {
                acc[j] = q[j];
                best[j] = i;
              }
          for (int64_t j = 0; j < w; ++j) o[r * inner + j0 + j] = best[j];
        });
  });
  return out;
}

Tensor logsumexp(const Tensor& x_in, int axis, bool keepdim) {
  const AxisLayout L = axis_layout(x_in, axis, keepdim, "logsumexp");
  const Tensor x = compute_input(x_in, "logsumexp");
  Tensor out;
  engine::visit_float(x.dtype(), "logsumexp", [&](auto z) {
    using T = decltype(z);
    out = Tensor::empty(L.out_shape, x.dtype());
    const T* p = x.data<T>();
    T* o = out.data<T>();
    const int64_t len = L.len, inner = L.inner;
    // Shift by the max when it is finite. A row of -inf then sums exp(-inf) = 0 and gives
    // log(0) = -inf, a +inf gives +inf, a NaN gives NaN, with no inf - inf on the way.
    auto shift = [](T m) { return std::isfinite(m) ? m : T(0); };
    for_each_slice(
        L,
        [&](int64_t r) {
          const T* q = p + r * len;
          T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
          for (int64_t i = 0; i < len; ++i) m = q[i] > m ? q[i] : m;
          const T c = shift(m);
          double s = 0;
#pragma omp simd reduction(+ : s)
          for (int64_t i = 0; i < len; ++i) s += double(math::exp<T>(q[i] - c));
          o[r] = T(double(c) + std::log(s));
        },
        [&](int64_t r, int64_t j0, int64_t w) {
          T m[kBlock];
          double s[kBlock];
          for (int64_t j = 0; j < w; ++j) {
            m[j] = -std::numeric_limits<T>::infinity();
            s[j] = 0;
          }
          const T* q0 = p + r * len * inner + j0;
          const T* q = q0;
          for (int64_t i = 0; i < len; ++i, q += inner) {
#pragma omp simd
            for (int64_t j = 0; j < w; ++j) m[j] = q[j] > m[j] ? q[j] : m[j];
          }
          for (int64_t j = 0; j < w; ++j) m[j] = shift(m[j]);
          q = q0;
          for (int64_t i = 0; i < len; ++i, q += inner) {
#pragma omp simd
            for (int64_t j = 0; j < w; ++j) s[j] += double(math::exp<T>(q[j] - m[j]));
          }
          for (int64_t j = 0; j < w; ++j)
            o[r * inner + j0 + j] = T(double(m[j]) + std::log(s[j]));
        },
        reread_block(len, sizeof(T)));
  });
  return restore_dtype(out, x_in.dtype());
}

namespace {
// Sum of every element in f64, in fixed chunks combined in order: deterministic for any number
// of threads, and accurate for long f32 tensors.
double total(const Tensor& x_in, const char* op) {
  engine::check_defined(x_in, op, "x");
  engine::check_cpu(x_in, op);
  const Tensor x = compute_input(x_in, op);
  const int64_t n = x.numel();
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(chunks);
  engine::visit_float(x.dtype(), op, [&](auto z) {
    using T = decltype(z);
    const T* p = x.data<T>();
#pragma omp parallel for if (n >= kParallelMin) schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      const T* q = p + c * kChunk;
      const int64_t m = std::min(kChunk, n - c * kChunk);
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < m; ++i) s += double(q[i]);
      part[c] = s;
    }
  });
  double s = 0;
  for (double v : part) s += v;
  return s;
}
}  // namespace

Tensor sum_all(const Tensor& x) {
  const double s = total(x, "sum_all");
  return Tensor::scalar(s, x.dtype());
}

Tensor mean_all(const Tensor& x) {
  const double s = total(x, "mean_all");
  return Tensor::scalar(s / double(x.numel()), x.dtype());
}

Tensor max_backward(const Tensor& g_in, const Tensor& idx_in, const Shape& in_shape, int axis) {
  const char* op = "max_backward";
  engine::check_defined(g_in, op, "g");
  engine::check_defined(idx_in, op, "argmax");
  engine::check_cpu(g_in, op);
  engine::check_cpu(idx_in, op);
  ENGINE_CHECK(idx_in.dtype() == DType::i64, op, ": expected i64 indices, got ", idx_in.describe());
  engine::check_same_shape(g_in, idx_in, op);
  const int nd = in_shape.size();
  const int a = engine::normalize_axis(axis, std::max(nd, 1), op);
  Shape kept = in_shape, dropped = in_shape;
  if (nd > 0) {
    kept[a] = 1;
    dropped.erase(a);
  }
  ENGINE_CHECK(g_in.shape() == kept || g_in.shape() == dropped, op, ": gradient ",
               g_in.describe(), " does not match the max over axis ", axis, " of shape ",
               in_shape);
  int64_t outer = 1, len = nd > 0 ? in_shape[a] : 1, inner = 1;
  for (int d = 0; d < a && d < nd; ++d) outer *= in_shape[d];
  for (int d = a + 1; d < nd; ++d) inner *= in_shape[d];
  const Tensor g = g_in.contiguous(), idx = idx_in.contiguous();
  Tensor out = Tensor::zeros(in_shape, g.dtype());
  const int64_t* ip = idx.data<int64_t>();
  for (int64_t k = 0; k < outer * inner; ++k)
    ENGINE_CHECK(ip[k] >= 0 && ip[k] < len, op, ": index ", ip[k], " out of range for axis ",
                 axis, " of size ", len);
  engine::visit_dtype(g.dtype(), [&](auto z) {
    using T = decltype(z);
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double> ||
                  std::is_same_v<T, bf16>) {
      const T* gp = g.data<T>();
      T* o = out.data<T>();
#pragma omp parallel for if (outer * inner >= kParallelMin) schedule(static)
      for (int64_t r = 0; r < outer; ++r)
        for (int64_t j = 0; j < inner; ++j)
          o[(r * len + ip[r * inner + j]) * inner + j] = gp[r * inner + j];
    } else {
      ENGINE_FAIL(op, ": expected a floating-point gradient, got ", g.describe());
    }
  });
  return out;
}

}  // namespace kernels::cpu
