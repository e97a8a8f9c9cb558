#include "kernels/index.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/accumulate.h"

namespace kernels::cpu {
namespace {

using kernels::detail::visit_index;

// Below this many elements moved, a parallel region costs more than it saves.
constexpr int64_t kParallelWork = int64_t(1) << 15;

// Throws on the first index outside [0, limit). The scan is branch-free so it vectorises; the
// slow search for the culprit only runs when something is wrong.
template <class I>
void check_indices(const I* p, int64_t n, int64_t limit, const char* op) {
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) bad |= (int64_t(p[i]) < 0) | (int64_t(p[i]) >= limit);
  if (!bad) return;
  for (int64_t i = 0; i < n; ++i)
    ENGINE_CHECK(p[i] >= 0 && int64_t(p[i]) < limit, op, ": index ", int64_t(p[i]),
                 " at position ", i, " is out of range [0, ", limit, ")");
}

// Element offsets (in `strides`) of every row-major coordinate of dims [d0, d1) of `shape`.
std::vector<int64_t> dim_offsets(const Shape& shape, const Shape& strides, int d0, int d1) {
  std::vector<int64_t> off{0};
  for (int d = d0; d < d1; ++d) {
    std::vector<int64_t> next;
    next.reserve(off.size() * size_t(shape[d]));
    for (int64_t base : off)
      for (int64_t i = 0; i < shape[d]; ++i) next.push_back(base + i * strides[d]);
    off.swap(next);
  }
  return off;
}

int64_t prod(const Shape& s, int d0, int d1) {
  int64_t p = 1;
  for (int d = d0; d < d1; ++d) p *= s[d];
  return p;
}

// Calls f(U{}) with U an unsigned integer type of the given element size: ops that only move
// elements copy them as raw bits, which covers every dtype (bf16 included) with one code path.
template <class F>
void visit_bits(size_t element_size, F&& f) {
  switch (element_size) {
    case 2: f(uint16_t{}); return;
    case 4: f(uint32_t{}); return;
    case 8: f(uint64_t{}); return;
    default: ENGINE_FAIL("unsupported element size ", element_size);
  }
}

// An in-place target must not have overlapping elements (an expanded view): two index
// positions would then race for the same memory.
void check_writable(const Tensor& t, const char* op) {
  for (int d = 0; d < t.dim(); ++d)
    ENGINE_CHECK(t.size(d) <= 1 || t.stride(d) != 0, op, ": destination ", t.describe(),
                 " has overlapping elements (stride 0 in dim ", d, ")");
}

// out[o, idx[j], :] += src[o, j, :] for out [O, A, inner] and src [O, n, inner], both
// contiguous. Each task owns a range of out's rows (and one o), scans all of idx and adds the
// positions that land in its range in index order: deterministic, no atomics.
template <class T, class I>
void add_rows(T* out, int64_t O, int64_t A, int64_t inner, const T* src, int64_t n, const I* idx,
              int64_t skip) {
  const int64_t work = O * n * inner;
  const bool par = work > kParallelWork;
  int64_t parts = 1;
  if (par && O < 4 * omp_get_max_threads()) parts = std::min<int64_t>(omp_get_max_threads(), A);
  parts = std::max<int64_t>(parts, 1);
  const int64_t tasks = O * parts;
#pragma omp parallel for if (par) schedule(static)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t o = t / parts, p = t % parts;
    const int64_t lo = A * p / parts, hi = A * (p + 1) / parts;
    T* ob = out + o * A * inner;
    const T* sb = src + o * n * inner;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t r = idx[j];
      if (r < lo || r >= hi || r == skip) continue;
      T* d = ob + r * inner;
      const T* s = sb + j * inner;
      for (int64_t k = 0; k < inner; ++k) d[k] += s[k];
    }
  }
}

}  // namespace

Tensor embedding(const Tensor& table_in, const Tensor& ids_in) {
  engine::check_defined(table_in, "embedding", "table");
  engine::check_defined(ids_in, "embedding", "ids");
  engine::check_cpu(table_in, "embedding");
  engine::check_cpu(ids_in, "embedding");
  engine::check_dim(table_in, 2, "embedding", "table");
  const Tensor ids = ids_in.contiguous();
  const int64_t V = table_in.size(0), D = table_in.size(1), n = ids.numel();
  Shape out_shape = ids.shape();
  out_shape.push_back(D);
  Tensor out = Tensor::empty(out_shape, table_in.dtype());
  // Rows only need to be contiguous themselves; a table that is a row slice of a larger one is
  // used in place.
  const Tensor table = table_in.stride(1) == 1 || D <= 1 ? table_in : table_in.contiguous();
  visit_index(ids.dtype(), "embedding", [&](auto z) {
    using I = decltype(z);
    const I* p = ids.data<I>();
    check_indices(p, n, V, "embedding");
    if (out.numel() == 0) return;
    const size_t row_bytes = size_t(D) * table.element_size();
    const int64_t row_stride = table.stride(0) * int64_t(table.element_size());
    const char* src = static_cast<const char*>(table.raw_data());
    char* dst = static_cast<char*>(out.raw_data());
#pragma omp parallel for if (n * D > kParallelWork) schedule(static)
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(dst + i * int64_t(row_bytes), src + int64_t(p[i]) * row_stride, row_bytes);
  });
  return out;
}

Tensor embedding_backward(const Tensor& g_in, const Tensor& ids_in, int64_t num_rows,
                          int64_t padding_idx) {
  engine::check_defined(g_in, "embedding_backward", "grad");
  engine::check_defined(ids_in, "embedding_backward", "ids");
  engine::check_cpu(g_in, "embedding_backward");
  engine::check_cpu(ids_in, "embedding_backward");
  ENGINE_CHECK(num_rows >= 0, "embedding_backward: negative number of rows ", num_rows);
  ENGINE_CHECK(padding_idx >= -1 && padding_idx < num_rows, "embedding_backward: padding_idx ",
               padding_idx, " out of range [-1, ", num_rows, ")");
  Shape expect = ids_in.shape();
  ENGINE_CHECK(g_in.dim() == expect.size() + 1, "embedding_backward: grad ", g_in.describe(),
               " does not match ids ", ids_in.describe(), " (expected ids' shape + [D])");
  expect.push_back(g_in.size(-1));
  ENGINE_CHECK(g_in.shape() == expect, "embedding_backward: grad ", g_in.describe(),
               " does not match ids ", ids_in.describe(), " (expected ids' shape + [D])");
  const Tensor ids = ids_in.contiguous();
  const Tensor g = g_in.contiguous();
  const int64_t D = g.size(-1), n = ids.numel();
  Tensor out = Tensor::zeros({num_rows, D}, g.dtype());
  engine::visit_float(g.dtype(), "embedding_backward", [&](auto zt) {
    using T = decltype(zt);
    visit_index(ids.dtype(), "embedding_backward", [&](auto zi) {
      using I = decltype(zi);
      const I* p = ids.data<I>();
      check_indices(p, n, num_rows, "embedding_backward");
      if (out.numel() == 0 || n == 0) return;
      add_rows<T, I>(out.data<T>(), 1, num_rows, D, g.data<T>(), n, p, padding_idx);
    });
  });
  return out;
}

Tensor index_select(const Tensor& x_in, int axis, const Tensor& idx_in) {
  engine::check_defined(x_in, "index_select", "x");
  engine::check_defined(idx_in, "index_select", "idx");
  engine::check_cpu(x_in, "index_select");
  engine::check_cpu(idx_in, "index_select");
  ENGINE_CHECK(idx_in.dim() <= 1, "index_select: idx must be 1-D, got ", idx_in.describe());
  axis = engine::normalize_axis(axis, x_in.dim(), "index_select");
  const Tensor idx = idx_in.contiguous();
  const Tensor x = x_in.contiguous();
  const int64_t A = x.size(axis), n = idx.numel();
  const int64_t O = prod(x.shape(), 0, axis), inner = prod(x.shape(), axis + 1, x.dim());
  Shape out_shape = x.shape();
  out_shape[axis] = n;
  Tensor out = Tensor::empty(out_shape, x.dtype());
  visit_index(idx.dtype(), "index_select", [&](auto z) {
    using I = decltype(z);
    const I* p = idx.data<I>();
    check_indices(p, n, A, "index_select");
    if (out.numel() == 0) return;
    const size_t es = x.element_size();
    const size_t chunk = size_t(inner) * es;
    const char* src = static_cast<const char*>(x.raw_data());
    char* dst = static_cast<char*>(out.raw_data());
    const int64_t rows = O * n;
#pragma omp parallel for if (rows * inner > kParallelWork) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t o = r / n, j = r % n;
      std::memcpy(dst + r * int64_t(chunk), src + (o * A + int64_t(p[j])) * int64_t(chunk), chunk);
    }
  });
  return out;
}

void index_add_(Tensor& into, int axis, const Tensor& idx_in, const Tensor& src_in) {
  engine::check_defined(into, "index_add", "destination");
  engine::check_defined(idx_in, "index_add", "idx");
  engine::check_defined(src_in, "index_add", "src");
  engine::check_cpu(into, "index_add");
  engine::check_cpu(src_in, "index_add");
  engine::check_cpu(idx_in, "index_add");
  engine::check_same_dtype(into, src_in, "index_add");
  ENGINE_CHECK(idx_in.dim() <= 1, "index_add: idx must be 1-D, got ", idx_in.describe());
  axis = engine::normalize_axis(axis, into.dim(), "index_add");
  Shape expect = into.shape();
  expect[axis] = idx_in.numel();
  ENGINE_CHECK(src_in.shape() == expect, "index_add: src ", src_in.describe(), " does not match ",
               into.describe(), " with ", idx_in.numel(), " indices along axis ", axis,
               " (expected ", expect, ")");
  check_writable(into, "index_add");
  const Tensor idx = idx_in.contiguous();
  const Tensor src = src_in.contiguous();
  const int64_t A = into.size(axis), n = idx.numel();
  const int64_t O = prod(into.shape(), 0, axis), inner = prod(into.shape(), axis + 1, into.dim());
  engine::visit_float(into.dtype(), "index_add", [&](auto zt) {
    using T = decltype(zt);
    visit_index(idx.dtype(), "index_add", [&](auto zi) {
      using I = decltype(zi);
      const I* p = idx.data<I>();
      check_indices(p, n, A, "index_add");
      if (src.numel() == 0) return;
      if (into.is_contiguous()) {
        add_rows<T, I>(into.data<T>(), O, A, inner, src.data<T>(), n, p, -1);
      } else {
        Tensor tmp = Tensor::zeros(into.shape(), into.dtype());
        add_rows<T, I>(tmp.data<T>(), O, A, inner, src.data<T>(), n, p, -1);
        cpu::accumulate(into, tmp, 1.0);
      }
    });
  });
}

Tensor index_add(const Shape& x_shape, int axis, const Tensor& idx, const Tensor& src) {
  engine::check_defined(src, "index_add", "src");
  Tensor out = Tensor::zeros(x_shape, src.dtype());
  index_add_(out, axis, idx, src);
  return out;
}

Tensor gather(const Tensor& x, int axis, const Tensor& idx_in) {
  engine::check_defined(x, "gather", "x");
  engine::check_defined(idx_in, "gather", "idx");
  engine::check_cpu(x, "gather");
  engine::check_cpu(idx_in, "gather");
  ENGINE_CHECK(idx_in.dim() == x.dim(), "gather: idx ", idx_in.describe(),
               " must have the rank of x ", x.describe());
  axis = engine::normalize_axis(axis, x.dim(), "gather");
  for (int d = 0; d < x.dim(); ++d)
    ENGINE_CHECK(d == axis || idx_in.size(d) <= x.size(d), "gather: idx ", idx_in.describe(),
                 " is larger than x ", x.describe(), " in dim ", d);
  const Tensor idx = idx_in.contiguous();
  const Shape& is = idx.shape();
  const int64_t A = is[axis], limit = x.size(axis);
  const int64_t O = prod(is, 0, axis), inner = prod(is, axis + 1, is.size());
  Tensor out = Tensor::empty(is, x.dtype());
  visit_index(idx.dtype(), "gather", [&](auto zi) {
    using I = decltype(zi);
    const I* p = idx.data<I>();
    check_indices(p, idx.numel(), limit, "gather");
    if (out.numel() == 0) return;
    // x's offsets for idx's outer and inner coordinates; the axis coordinate comes from idx.
    const std::vector<int64_t> xo = dim_offsets(is, x.strides(), 0, axis);
    const std::vector<int64_t> xi = dim_offsets(is, x.strides(), axis + 1, is.size());
    const int64_t xs = x.stride(axis);
    visit_bits(x.element_size(), [&](auto zb) {
      using U = decltype(zb);
      const U* xp = static_cast<const U*>(x.raw_data());
      U* op = static_cast<U*>(out.raw_data());
      const int64_t rows = O * A;
#pragma omp parallel for if (out.numel() > kParallelWork) schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        const U* xb = xp + xo[r / A];
        const I* ip = p + r * inner;
        U* ob = op + r * inner;
        for (int64_t k = 0; k < inner; ++k) ob[k] = xb[int64_t(ip[k]) * xs + xi[k]];
      }
    });
  });
  return out;
}

void scatter_add_(Tensor& into, int axis, const Tensor& idx_in, const Tensor& src) {
  engine::check_defined(into, "scatter_add", "destination");
  engine::check_defined(idx_in, "scatter_add", "idx");
  engine::check_defined(src, "scatter_add", "src");
  engine::check_cpu(into, "scatter_add");
  engine::check_cpu(idx_in, "scatter_add");
  engine::check_cpu(src, "scatter_add");
  engine::check_same_dtype(into, src, "scatter_add");
  ENGINE_CHECK(idx_in.dim() == into.dim() && src.dim() == into.dim(), "scatter_add: destination ",
               into.describe(), ", idx ", idx_in.describe(), " and src ", src.describe(),
               " must have the same rank");
  axis = engine::normalize_axis(axis, into.dim(), "scatter_add");
  for (int d = 0; d < into.dim(); ++d) {
    ENGINE_CHECK(idx_in.size(d) <= src.size(d), "scatter_add: idx ", idx_in.describe(),
                 " is larger than src ", src.describe(), " in dim ", d);
    ENGINE_CHECK(d == axis || idx_in.size(d) <= into.size(d), "scatter_add: idx ",
                 idx_in.describe(), " is larger than the destination ", into.describe(),
                 " in dim ", d);
  }
  check_writable(into, "scatter_add");
  const Tensor idx = idx_in.contiguous();
  const Shape& is = idx.shape();
  const int64_t A = is[axis], limit = into.size(axis);
  const int64_t O = prod(is, 0, axis), inner = prod(is, axis + 1, is.size());
  engine::visit_float(into.dtype(), "scatter_add", [&](auto zt) {
    using T = decltype(zt);
    visit_index(idx.dtype(), "scatter_add", [&](auto zi) {
      using I = decltype(zi);
      const I* p = idx.data<I>();
      check_indices(p, idx.numel(), limit, "scatter_add");
      if (idx.numel() == 0) return;
      const std::vector<int64_t> d_o = dim_offsets(is, into.strides(), 0, axis);
      const std::vector<int64_t> d_i = dim_offsets(is, into.strides(), axis + 1, is.size());
      const std::vector<int64_t> s_o = dim_offsets(is, src.strides(), 0, axis);
      const std::vector<int64_t> s_i = dim_offsets(is, src.strides(), axis + 1, is.size());
      const int64_t ds = into.stride(axis), ss = src.stride(axis);
      T* dp = into.data<T>();
      const T* sp = src.data<T>();
      // Index positions that differ outside `axis` write to different elements, so tasks split
      // the (outer, inner) positions and each walks `axis` in order: deterministic sums.
      constexpr int64_t kBlock = 256;
      const int64_t nkb = (inner + kBlock - 1) / kBlock, tasks = O * nkb;
#pragma omp parallel for if (idx.numel() > kParallelWork) schedule(static)
      for (int64_t t = 0; t < tasks; ++t) {
        const int64_t o = t / nkb, k0 = (t % nkb) * kBlock, k1 = std::min(inner, k0 + kBlock);
        T* db = dp + d_o[o];
        for (int64_t a = 0; a < A; ++a) {
          const I* ip = p + (o * A + a) * inner;
          const T* sb = sp + s_o[o] + a * ss;
          for (int64_t k = k0; k < k1; ++k) db[int64_t(ip[k]) * ds + d_i[k]] += sb[s_i[k]];
        }
      }
    });
  });
}

Tensor scatter_add(const Shape& base_shape, int axis, const Tensor& idx, const Tensor& src) {
  engine::check_defined(src, "scatter_add", "src");
  Tensor out = Tensor::zeros(base_shape, src.dtype());
  scatter_add_(out, axis, idx, src);
  return out;
}

}  // namespace kernels::cpu
