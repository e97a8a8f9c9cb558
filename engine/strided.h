// Iteration over the elements of K strided operands of one shape. Dimensions that are
// contiguous in every operand are merged first, so the innermost loop is as long as possible
// and a contiguous tensor is one flat loop that the compiler vectorises.
#pragma once
#include <array>
#include <cstdint>

#include "engine/shape.h"

namespace engine {

template <int K>
struct StridedLayout {
  Shape shape;                      // merged dims (at least one)
  std::array<Shape, K> strides;     // per operand, in elements
};

template <int K>
StridedLayout<K> merge_dims(const Shape& shape, const std::array<Shape, K>& strides) {
  StridedLayout<K> out;
  for (int d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;  // size-1 dims never move the pointer
    bool merge = out.shape.size() > 0;
    if (merge) {
      int last = out.shape.size() - 1;
      for (int k = 0; k < K; ++k)
        if (out.strides[k][last] != strides[k][d] * shape[d]) merge = false;
    }
    if (merge) {
      int last = out.shape.size() - 1;
      out.shape[last] *= shape[d];
      for (int k = 0; k < K; ++k) out.strides[k][last] = strides[k][d];
    } else {
      out.shape.push_back(shape[d]);
      for (int k = 0; k < K; ++k) out.strides[k].push_back(strides[k][d]);
    }
  }
  if (out.shape.size() == 0) {
    out.shape.push_back(1);
    for (int k = 0; k < K; ++k) out.strides[k].push_back(1);
  }
  return out;
}

// Calls f(offsets, n, inner) once per innermost row: offsets[k] is operand k's element offset
// of the row start, n the row length, inner[k] operand k's stride along the row.
template <int K, class F>
void for_each_row(const Shape& shape, const std::array<Shape, K>& strides, F&& f) {
  if (shape.numel() == 0) return;
  StridedLayout<K> L = merge_dims<K>(shape, strides);
  int nd = L.shape.size();
  int64_t n = L.shape[nd - 1];
  std::array<int64_t, K> inner;
  for (int k = 0; k < K; ++k) inner[k] = L.strides[k][nd - 1];
  std::array<int64_t, kMaxDims> idx{};
  std::array<int64_t, K> off{};
  int64_t rows = L.shape.numel() / n;
  for (int64_t r = 0; r < rows; ++r) {
    f(off.data(), n, inner.data());
    for (int d = nd - 2; d >= 0; --d) {  // odometer increment over the outer dims
      ++idx[d];
      for (int k = 0; k < K; ++k) off[k] += L.strides[k][d];
      if (idx[d] < L.shape[d]) break;
      for (int k = 0; k < K; ++k) off[k] -= L.strides[k][d] * L.shape[d];
      idx[d] = 0;
    }
  }
}

// Element offset of a flat row-major index into a strided tensor.
inline int64_t strided_offset(int64_t flat, const Shape& shape, const Shape& strides) {
  int64_t off = 0;
  for (int d = shape.size() - 1; d >= 0; --d) {
    off += (flat % shape[d]) * strides[d];
    flat /= shape[d];
  }
  return off;
}

}  // namespace engine
