// Plain-loop references for the indexing ops, in f64: every output element is found by
// unravelling its coordinates and applying the op's definition literally.
#include <vector>

#include "kernels/index.h"

namespace kernels::ref {
namespace {

std::vector<int64_t> unravel(int64_t flat, const Shape& s) {
  std::vector<int64_t> c(s.size());
  for (int d = s.size() - 1; d >= 0; --d) {
    c[d] = flat % s[d];
    flat /= s[d];
  }
  return c;
}

int64_t ravel(const std::vector<int64_t>& c, const Shape& s) {
  int64_t flat = 0;
  for (int d = 0; d < s.size(); ++d) flat = flat * s[d] + c[d];
  return flat;
}

void check_range(int64_t v, int64_t n, const char* op) {
  ENGINE_CHECK(v >= 0 && v < n, op, ": index ", v, " is out of range [0, ", n, ")");
}

Tensor from(const std::vector<double>& v, const Shape& s) {
  return Tensor::from_vector(v, s, DType::f64);
}

}  // namespace

Tensor embedding(const Tensor& table, const Tensor& ids) {
  auto t = table.to_vector<double>();
  auto id = ids.to_vector<int64_t>();
  const int64_t V = table.size(0), D = table.size(1);
  Shape out_shape = ids.shape();
  out_shape.push_back(D);
  std::vector<double> out;
  for (int64_t v : id) {
    check_range(v, V, "embedding");
    for (int64_t d = 0; d < D; ++d) out.push_back(t[v * D + d]);
  }
  return from(out, out_shape);
}

Tensor embedding_backward(const Tensor& g, const Tensor& ids, int64_t num_rows,
                          int64_t padding_idx) {
  auto gv = g.to_vector<double>();
  auto id = ids.to_vector<int64_t>();
  const int64_t D = g.size(-1);
  std::vector<double> out(num_rows * D, 0.0);
  for (size_t p = 0; p < id.size(); ++p) {
    check_range(id[p], num_rows, "embedding_backward");
    if (id[p] == padding_idx) continue;
    for (int64_t d = 0; d < D; ++d) out[id[p] * D + d] += gv[p * D + d];
  }
  return from(out, {num_rows, D});
}

Tensor index_select(const Tensor& x, int axis, const Tensor& idx) {
  axis = engine::normalize_axis(axis, x.dim(), "index_select");
  auto xv = x.to_vector<double>();
  auto iv = idx.to_vector<int64_t>();
  Shape out_shape = x.shape();
  out_shape[axis] = int64_t(iv.size());
  std::vector<double> out(out_shape.numel());
  for (int64_t e = 0; e < out_shape.numel(); ++e) {
    auto c = unravel(e, out_shape);
    c[axis] = iv[c[axis]];
    check_range(c[axis], x.size(axis), "index_select");
    out[e] = xv[ravel(c, x.shape())];
  }
  return from(out, out_shape);
}

Tensor index_add(const Shape& x_shape, int axis, const Tensor& idx, const Tensor& src) {
  axis = engine::normalize_axis(axis, x_shape.size(), "index_add");
  auto sv = src.to_vector<double>();
  auto iv = idx.to_vector<int64_t>();
  std::vector<double> out(x_shape.numel(), 0.0);
  for (int64_t e = 0; e < src.numel(); ++e) {
    auto c = unravel(e, src.shape());
    c[axis] = iv[c[axis]];
    check_range(c[axis], x_shape[axis], "index_add");
    out[ravel(c, x_shape)] += sv[e];
  }
  return from(out, x_shape);
}

Tensor gather(const Tensor& x, int axis, const Tensor& idx) {
  axis = engine::normalize_axis(axis, x.dim(), "gather");
  auto xv = x.to_vector<double>();
  auto iv = idx.to_vector<int64_t>();
  std::vector<double> out(idx.numel());
  for (int64_t e = 0; e < idx.numel(); ++e) {
    auto c = unravel(e, idx.shape());
    c[axis] = iv[e];
    check_range(c[axis], x.size(axis), "gather");
    out[e] = xv[ravel(c, x.shape())];
  }
  return from(out, idx.shape());
}

Tensor scatter_add(const Shape& base_shape, int axis, const Tensor& idx, const Tensor& src) {
  axis = engine::normalize_axis(axis, base_shape.size(), "scatter_add");
  auto sv = src.to_vector<double>();
  auto iv = idx.to_vector<int64_t>();
  std::vector<double> out(base_shape.numel(), 0.0);
  for (int64_t e = 0; e < idx.numel(); ++e) {
    auto c = unravel(e, idx.shape());
    const double s = sv[ravel(c, src.shape())];  // src may be larger than idx
    c[axis] = iv[e];
    check_range(c[axis], base_shape[axis], "scatter_add");
    out[ravel(c, base_shape)] += s;
  }
  return from(out, base_shape);
}

}  // namespace kernels::ref
