#include "kernels/concat.h"

#include <cstring>

namespace kernels::cpu {

Tensor concat(const std::vector<Tensor>& tensors, int axis) {
  ENGINE_CHECK(!tensors.empty(), "concat: no tensors given");
  for (size_t i = 0; i < tensors.size(); ++i) {
    ENGINE_CHECK(tensors[i].defined(), "concat: tensor ", i, " is undefined");
    engine::check_cpu(tensors[i], "concat");
  }
  const Tensor& first = tensors[0];
  axis = engine::normalize_axis(axis, first.dim(), "concat");
  Shape out_shape = first.shape();
  out_shape[axis] = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    ENGINE_CHECK(t.dtype() == first.dtype(), "concat: tensor ", i, " ", t.describe(),
                 " has another dtype than tensor 0 ", first.describe());
    bool same = t.dim() == first.dim();
    for (int d = 0; same && d < t.dim(); ++d) same = d == axis || t.size(d) == first.size(d);
    ENGINE_CHECK(same, "concat: tensor ", i, " has shape ", t.shape(), " but tensor 0 has ",
                 first.shape(), "; all dims except axis ", axis, " must match");
    out_shape[axis] += t.size(axis);
  }
  Tensor out = Tensor::empty(out_shape, first.dtype());
  if (out.numel() == 0) return out;

  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= out_shape[d];
  for (int d = axis + 1; d < out_shape.size(); ++d) inner *= out_shape[d];
  const int64_t es = int64_t(out.element_size());
  const int64_t out_row = out_shape[axis] * inner * es;  // bytes of one outer row of out

  // Contiguous inputs are copied as one block per (outer row, tensor); others through the
  // strided copy into their slice of out.
  std::vector<const char*> src(tensors.size(), nullptr);
  std::vector<int64_t> bytes(tensors.size()), at(tensors.size());
  int64_t start = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    bytes[i] = t.size(axis) * inner * es;
    at[i] = start * inner * es;
    if (t.numel() > 0) {
      if (t.is_contiguous()) {
        src[i] = static_cast<const char*>(t.raw_data());
      } else {
        Tensor dst = out.narrow(axis, start, t.size(axis));
        dst.copy_(t);
      }
    }
    start += t.size(axis);
  }
  char* dst = static_cast<char*>(out.raw_data());
  const int64_t n = int64_t(tensors.size());
#pragma omp parallel for if (out.nbytes() > (size_t(1) << 18)) schedule(static)
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < n; ++i)
      if (src[i]) std::memcpy(dst + o * out_row + at[i], src[i] + o * bytes[i], size_t(bytes[i]));
  return out;
}

}  // namespace kernels::cpu
