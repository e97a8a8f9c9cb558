// CPU drop-token: indices straight from engine::philox_choose_sorted (a bounded heap, O(L log k)
// per example), gather and scatter as row memcpys, examples split over threads.
#include "kernels/drop_token.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/philox.h"

namespace kernels {

int64_t keep_count(int64_t L, double rate) {
  ENGINE_CHECK(L >= 1, "keep_count: sequence length L must be >= 1, got ", L);
  if (rate == 0.0) return L;
  ENGINE_CHECK(rate > 0.0 && rate < 1.0 - 1.0 / double(L), "drop-token rate r must be < 1 - 1/L",
               " (and >= 0): got r = ", rate, " for L = ", L);
  // (1 - r)·L > 1 exactly; the max only guards a last-bit rounding at the boundary.
  return std::max<int64_t>(1, static_cast<int64_t>((1.0 - rate) * double(L)));
}

namespace cpu {
namespace {

constexpr int64_t kParallelBytes = int64_t(1) << 17;

// i64 copy of a [B, keep] index tensor, each value in [0, L); optionally strictly increasing.
Tensor check_idx(const Tensor& idx, int64_t B, int64_t L, bool increasing, const char* op) {
  engine::check_defined(idx, op, "idx");
  engine::check_cpu(idx, op);
  ENGINE_CHECK(idx.dtype() == DType::i64 || idx.dtype() == DType::i32, op,
               ": idx must be i64 or i32, got ", idx.describe());
  ENGINE_CHECK(idx.dim() == 2 && idx.size(0) == B, op, ": idx ", idx.describe(),
               " must be [B, keep] with B = ", B);
  Tensor t = idx.to(DType::i64).contiguous();
  const int64_t* p = t.data<int64_t>();
  const int64_t keep = idx.size(1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < keep; ++j) {
      const int64_t v = p[b * keep + j];
      ENGINE_CHECK(v >= 0 && v < L, op, ": index ", v, " at position ", b * keep + j,
                   " is out of range [0, ", L, ")");
      ENGINE_CHECK(!increasing || j == 0 || v > p[b * keep + j - 1], op, ": indices of example ", b,
                   " are not strictly increasing at position ", j);
    }
  return t;
}

Shape swap_dim1(const Shape& s, int64_t n) {
  Shape out = s;
  out[1] = n;
  return out;
}

// Copies row src_row[b, p] of `from` (rows of `bytes`, `from_rows` per example) to row
// dst_row[b, p] of `to`; one of the maps is the identity.
void move_rows(const char* from, char* to, const int64_t* idx, int64_t B, int64_t keep, int64_t L,
               size_t bytes, bool gather) {
#pragma omp parallel for collapse(2) if (int64_t(bytes) * B * keep >= kParallelBytes) \
    schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < keep; ++p) {
      const int64_t l = idx[b * keep + p];
      if (gather)
        std::memcpy(to + (b * keep + p) * bytes, from + (b * L + l) * bytes, bytes);
      else
        std::memcpy(to + (b * L + l) * bytes, from + (b * keep + p) * bytes, bytes);
    }
}

}  // namespace

Tensor drop_token_indices(int64_t B, int64_t L, int64_t keep, uint64_t seed, uint64_t stream) {
  ENGINE_CHECK(B >= 0 && L >= 0 && keep >= 0 && keep <= L, "drop_token_indices: need B >= 0 and ",
               "0 <= keep <= L, got B = ", B, ", L = ", L, ", keep = ", keep);
  Tensor out = Tensor::empty({B, keep}, DType::i64);
  int64_t* o = out.data<int64_t>();
#pragma omp parallel for if (B > 1 && B * L >= (int64_t(1) << 14)) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    engine::philox_choose_sorted(seed, drop_token_stream(stream, b), L, keep, o + b * keep);
  return out;
}

Tensor drop_token_gather(const Tensor& x_in, const Tensor& idx_in) {
  const char* op = "drop_token_gather";
  engine::check_defined(x_in, op, "x");
  engine::check_cpu(x_in, op);
  ENGINE_CHECK(x_in.dim() >= 2, op, ": x must be [B, L, ...], got ", x_in.describe());
  const int64_t B = x_in.size(0), L = x_in.size(1);
  const Tensor idx = check_idx(idx_in, B, L, false, op);
  const int64_t keep = idx.size(1);
  Tensor out = Tensor::empty(swap_dim1(x_in.shape(), keep), x_in.dtype());
  if (out.numel() == 0) return out;
  const Tensor x = x_in.contiguous();
  const size_t bytes = size_t(x.numel() / (B * L)) * x.element_size();
  move_rows(static_cast<const char*>(x.raw_data()), static_cast<char*>(out.raw_data()),
            idx.data<int64_t>(), B, keep, L, bytes, true);
  return out;
}

Tensor drop_token_scatter(const Tensor& g_in, const Tensor& idx_in, int64_t L) {
  const char* op = "drop_token_scatter";
  engine::check_defined(g_in, op, "g");
  engine::check_cpu(g_in, op);
  ENGINE_CHECK(g_in.dim() >= 2, op, ": g must be [B, keep, ...], got ", g_in.describe());
  const int64_t B = g_in.size(0);
  const Tensor idx = check_idx(idx_in, B, L, true, op);
  const int64_t keep = idx.size(1);
  ENGINE_CHECK(g_in.size(1) == keep, op, ": g ", g_in.describe(), " does not match idx ",
               idx_in.describe());
  Tensor out = Tensor::zeros(swap_dim1(g_in.shape(), L), g_in.dtype());
  if (g_in.numel() == 0) return out;
  const Tensor g = g_in.contiguous();
  const size_t bytes = size_t(g.numel() / (B * keep)) * g.element_size();
  move_rows(static_cast<const char*>(g.raw_data()), static_cast<char*>(out.raw_data()),
            idx.data<int64_t>(), B, keep, L, bytes, false);
  return out;
}

}  // namespace cpu
}  // namespace kernels
