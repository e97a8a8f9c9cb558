#include "kernels/topk.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace kernels::cpu {
namespace {

template <class K>
struct Entry {
  K v;
  int64_t i;
};

template <class K>
bool is_nan(K v) {
  if constexpr (std::is_floating_point_v<K>) return std::isnan(v);
  else return false;
}

// "a comes before b" in the documented order (see kernels/topk.h).
template <bool Largest, class K>
inline bool before(K va, int64_t ia, K vb, int64_t ib) {
  const bool na = is_nan(va), nb = is_nan(vb);
  if (na || nb) {
    if (na && nb) return ia < ib;
    return Largest ? na : nb;  // NaN is the largest value
  }
  if (va != vb) return Largest ? va > vb : va < vb;
  return ia < ib;
}

// Position of the first element that comes first in the order, for a contiguous row. Floats:
// a vectorised max (or min) that skips NaN and notes whether there is one, then a scan for the
// first element equal to it (or the first NaN, which wins for largest). Other types: the
// generic scan.
template <bool Largest, class T>
int64_t arg_best(const T* x, int64_t n) {
  if constexpr (std::is_floating_point_v<T>) {
    T m = Largest ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::infinity();
    int any_nan = 0;
    if constexpr (Largest) {
#pragma omp simd reduction(max : m) reduction(| : any_nan)
      for (int64_t j = 0; j < n; ++j) {
        any_nan |= int(x[j] != x[j]);
        m = x[j] > m ? x[j] : m;
      }
    } else {
#pragma omp simd reduction(min : m)
      for (int64_t j = 0; j < n; ++j) m = x[j] < m ? x[j] : m;
    }
    int64_t j = 0;
    if (Largest && any_nan) {
      while (x[j] == x[j]) ++j;
      return j;
    }
    while (j < n && x[j] != m) ++j;
    return j < n ? j : 0;  // smallest of an all-NaN row: the first NaN
  } else {
    using K = std::conditional_t<std::is_same_v<T, bf16>, float, T>;
    int64_t best = 0;
    for (int64_t j = 1; j < n; ++j)
      if (before<Largest>(K(x[j]), j, K(x[best]), best)) best = j;
    return best;
  }
}

// Up to this k, insertion into a short sorted list beats nth_element (the MoE routers' k).
constexpr int64_t kSmallK = 8;

template <class T, bool Largest>
void topk_rows(const T* x, T* vals, int64_t* idx, int64_t outer, int64_t n, int64_t inner,
               int64_t k) {
  using K = std::conditional_t<std::is_same_v<T, bf16>, float, T>;
  const int64_t rows = outer * inner;
  const bool par = rows > 1 && rows * n > (int64_t(1) << 14);
#pragma omp parallel if (par)
  {
    std::vector<Entry<K>> buf(k > kSmallK ? size_t(n) : 0);  // one buffer per thread
    auto cmp = [](const Entry<K>& a, const Entry<K>& b) {
      return before<Largest>(a.v, a.i, b.v, b.i);
    };
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t o = r / inner, i = r % inner;
      const T* xr = x + o * n * inner + i;
      T* vr = vals + o * k * inner + i;
      int64_t* ir = idx + o * k * inner + i;
      if (k == 1 && inner == 1) {  // the router's common case
        const int64_t best = arg_best<Largest>(xr, n);
        vr[0] = xr[best];
        ir[0] = best;
        continue;
      }
      if (k == 1) {  // one linear scan
        int64_t best = 0;
        K bv = K(xr[0]);
        for (int64_t j = 1; j < n; ++j) {
          const K v = K(xr[j * inner]);
          if (before<Largest>(v, j, bv, best)) best = j, bv = v;
        }
        vr[0] = xr[best * inner];
        ir[0] = best;
        continue;
      }
      if (k <= kSmallK) {  // a sorted list of the best k so far, filled by insertion
        Entry<K> best[kSmallK];
        int64_t cnt = 0;
        for (int64_t j = 0; j < n; ++j) {
          const K v = K(xr[j * inner]);
          if (cnt == k && !before<Largest>(v, j, best[k - 1].v, best[k - 1].i)) continue;
          int64_t p = cnt < k ? cnt++ : k - 1;
          for (; p > 0 && before<Largest>(v, j, best[p - 1].v, best[p - 1].i); --p)
            best[p] = best[p - 1];
          best[p] = {v, j};
        }
        for (int64_t j = 0; j < k; ++j) {
          vr[j * inner] = xr[best[j].i * inner];
          ir[j * inner] = best[j].i;
        }
        continue;
      }
      for (int64_t j = 0; j < n; ++j) buf[j] = {K(xr[j * inner]), j};
      if (k < n) std::nth_element(buf.begin(), buf.begin() + k, buf.end(), cmp);
      std::sort(buf.begin(), buf.begin() + k, cmp);
      for (int64_t j = 0; j < k; ++j) {
        vr[j * inner] = xr[buf[j].i * inner];
        ir[j * inner] = buf[j].i;
      }
    }
  }
}

}  // namespace

TopK topk(const Tensor& x_in, int64_t k, int axis, bool largest) {
  engine::check_defined(x_in, "topk", "x");
  engine::check_cpu(x_in, "topk");
  axis = engine::normalize_axis(axis, x_in.dim(), "topk");
  const int64_t n = x_in.size(axis);
  ENGINE_CHECK(k >= 0 && k <= n, "topk: k = ", k, " is out of range [0, ", n, "] for axis ", axis,
               " of ", x_in.describe());
  Shape out_shape = x_in.shape();
  out_shape[axis] = k;
  TopK res{Tensor::empty(out_shape, x_in.dtype()), Tensor::empty(out_shape, DType::i64)};
  if (res.values.numel() == 0) return res;
  const Tensor x = x_in.contiguous();
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= x.size(d);
  for (int d = axis + 1; d < x.dim(); ++d) inner *= x.size(d);
  engine::visit_dtype(x.dtype(), [&](auto z) {
    using T = decltype(z);
    if (largest)
      topk_rows<T, true>(x.data<T>(), res.values.data<T>(), res.indices.data<int64_t>(), outer,
                         n, inner, k);
    else
      topk_rows<T, false>(x.data<T>(), res.values.data<T>(), res.indices.data<int64_t>(), outer,
                          n, inner, k);
  });
  return res;
}

}  // namespace kernels::cpu
