// Reference topk: a full stable sort of each row by (is NaN, value), so ties keep the lower
// index first; then the first k.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>
#include <vector>

#include "kernels/topk.h"

namespace kernels::ref {

TopK topk(const Tensor& x, int64_t k, int axis, bool largest) {
  axis = engine::normalize_axis(axis, x.dim(), "topk");
  const int64_t n = x.size(axis);
  ENGINE_CHECK(k >= 0 && k <= n, "topk: k = ", k, " out of range [0, ", n, "]");
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= x.size(d);
  for (int d = axis + 1; d < x.dim(); ++d) inner *= x.size(d);
  auto xv = x.to_vector<double>();
  Shape out_shape = x.shape();
  out_shape[axis] = k;
  std::vector<double> vals(out_shape.numel());
  std::vector<int64_t> idx(out_shape.numel());
  // NaN is larger than every number.
  auto key = [](double v) { return std::isnan(v) ? std::pair<int, double>{1, 0.0}
                                                 : std::pair<int, double>{0, v}; };
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < inner; ++i) {
      auto at = [&](int64_t j) { return xv[(o * n + j) * inner + i]; };
      std::vector<int64_t> order(n);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return largest ? key(at(a)) > key(at(b)) : key(at(a)) < key(at(b));
      });
      for (int64_t j = 0; j < k; ++j) {
        vals[(o * k + j) * inner + i] = at(order[j]);
        idx[(o * k + j) * inner + i] = order[j];
      }
    }
  }
  return {Tensor::from_vector(vals, out_shape, DType::f64),
          Tensor::from_vector(idx, out_shape, DType::i64)};
}

}  // namespace kernels::ref
