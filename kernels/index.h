// Indexing ops: embedding lookup, index_select, gather and their scatter-add backwards.
//
// Index tensors are i64 or i32 and may be non-contiguous. Every index is checked before anything
// is written; an out-of-range one throws naming the op, the index, its position and the valid
// range [0, n). Negative indices are out of range (no Python-style wrap-around).
//
// The scatter-adds (embedding_backward, index_add, scatter_add) are deterministic: each output
// element is summed by one thread in the order of the index positions, so results are
// bit-identical from run to run and for any thread count (no atomics).
//
// embedding, index_select and gather move bytes and accept every dtype; the scatter-adds
// accumulate and accept f32/f64.
#pragma once
#include "kernels/backend.h"

namespace kernels {

namespace detail {
// Calls f(I{}) with I = int32_t or int64_t, the C++ type of an index tensor's dtype.
template <class F>
decltype(auto) visit_index(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::i64: return f(int64_t{});
    case DType::i32: return f(int32_t{});
    default: ENGINE_FAIL(op, ": indices must be i64 or i32, got ", engine::dtype_name(t));
  }
}
}  // namespace detail

namespace cpu {
// table [V, D], ids [...] -> [..., D]: out[p, :] = table[ids[p], :].
Tensor embedding(const Tensor& table, const Tensor& ids);
// g [..., D] with ids [...] -> [V, D]: row v is the sum of g's rows at positions p with
// ids[p] == v; rows never named (and padding_idx, when >= 0) stay zero.
Tensor embedding_backward(const Tensor& g, const Tensor& ids, int64_t num_rows,
                          int64_t padding_idx = -1);
// out has x's shape with size idx.numel() along axis: out[.., j, ..] = x[.., idx[j], ..].
Tensor index_select(const Tensor& x, int axis, const Tensor& idx);
// The backward of index_select: into[.., idx[j], ..] += src[.., j, ..] (repeats accumulate).
void index_add_(Tensor& into, int axis, const Tensor& idx, const Tensor& src);
Tensor index_add(const Shape& x_shape, int axis, const Tensor& idx, const Tensor& src);
// torch.gather: idx has x's rank, idx.size(d) <= x.size(d) for d != axis; out has idx's shape,
// out[i][j][k] = x[i][idx[i][j][k]][k] (for axis 1).
Tensor gather(const Tensor& x, int axis, const Tensor& idx);
// torch.scatter_add, gather's backward: into[i][idx[i][j][k]][k] += src[i][j][k] (axis 1), over
// idx's extent; src's dims are >= idx's, into's non-axis dims are >= idx's.
void scatter_add_(Tensor& into, int axis, const Tensor& idx, const Tensor& src);
Tensor scatter_add(const Shape& base_shape, int axis, const Tensor& idx, const Tensor& src);
}  // namespace cpu

namespace ref {
Tensor embedding(const Tensor& table, const Tensor& ids);
Tensor embedding_backward(const Tensor& g, const Tensor& ids, int64_t num_rows,
                          int64_t padding_idx = -1);
Tensor index_select(const Tensor& x, int axis, const Tensor& idx);
Tensor index_add(const Shape& x_shape, int axis, const Tensor& idx, const Tensor& src);
Tensor gather(const Tensor& x, int axis, const Tensor& idx);
Tensor scatter_add(const Shape& base_shape, int axis, const Tensor& idx, const Tensor& src);
}  // namespace ref

// CUDA kernels (kernels/cuda/index.cu), on kernels::cuda::device() tensors (indices too); any
// layout. Indices are checked on the device and the status read back once per call (a
// synchronisation), with the CPU op's error message; the in-place ops write nothing when an index
// is bad. Same dtypes as the CPU ops. The scatter-adds sum in the CPU op's order, so their
// results are bit-identical to it (no float atomics): embedding_backward and index_add sort the
// index positions by index (a stable radix sort) and give each destination row its run;
// scatter_add gives each column of idx (its coordinates outside the axis) one thread that walks
// the axis in order.
namespace cuda {
Tensor embedding(const Tensor& table, const Tensor& ids);
Tensor embedding_backward(const Tensor& g, const Tensor& ids, int64_t num_rows,
                          int64_t padding_idx = -1);
Tensor index_select(const Tensor& x, int axis, const Tensor& idx);
void index_add_(Tensor& into, int axis, const Tensor& idx, const Tensor& src);
Tensor index_add(const Shape& x_shape, int axis, const Tensor& idx, const Tensor& src);
Tensor gather(const Tensor& x, int axis, const Tensor& idx);
void scatter_add_(Tensor& into, int axis, const Tensor& idx, const Tensor& src);
Tensor scatter_add(const Shape& base_shape, int axis, const Tensor& idx, const Tensor& src);
}  // namespace cuda

inline Tensor embedding(const Tensor& table, const Tensor& ids) {
  KERNEL_ROUTE(table.device(), embedding, table, ids);
}
inline Tensor embedding_backward(const Tensor& g, const Tensor& ids, int64_t num_rows,
                                 int64_t padding_idx = -1) {
  KERNEL_ROUTE(g.device(), embedding_backward, g, ids, num_rows, padding_idx);
}
inline Tensor index_select(const Tensor& x, int axis, const Tensor& idx) {
  KERNEL_ROUTE(x.device(), index_select, x, axis, idx);
}
inline void index_add_(Tensor& into, int axis, const Tensor& idx, const Tensor& src) {
  KERNEL_ROUTE(into.device(), index_add_, into, axis, idx, src);
}
inline Tensor index_add(const Shape& x_shape, int axis, const Tensor& idx, const Tensor& src) {
  KERNEL_ROUTE(src.device(), index_add, x_shape, axis, idx, src);
}
inline Tensor gather(const Tensor& x, int axis, const Tensor& idx) {
  KERNEL_ROUTE(x.device(), gather, x, axis, idx);
}
inline void scatter_add_(Tensor& into, int axis, const Tensor& idx, const Tensor& src) {
  KERNEL_ROUTE(into.device(), scatter_add_, into, axis, idx, src);
}
inline Tensor scatter_add(const Shape& base_shape, int axis, const Tensor& idx, const Tensor& src) {
  KERNEL_ROUTE(src.device(), scatter_add, base_shape, axis, idx, src);
}

}  // namespace kernels
