// Reference drop-token: every example's L (key, index) pairs fully sorted, the first `keep`
// indices sorted again; gather / scatter element by element. Tests only.
#include "kernels/drop_token.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "engine/philox.h"

namespace kernels::ref {
namespace {
int64_t row_size(const Shape& s) {  // elements per token: the dims after [B, L]
  int64_t n = 1;
  for (int d = 2; d < s.size(); ++d) n *= s[d];
  return n;
}
}  // namespace

Tensor drop_token_indices(int64_t B, int64_t L, int64_t keep, uint64_t seed, uint64_t stream) {
  std::vector<int64_t> out;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<std::pair<uint32_t, int64_t>> keyed;
    for (int64_t j = 0; j < L; ++j)
      keyed.push_back({engine::philox_u32(seed, stream + (uint64_t(b) << 32), uint64_t(j)), j});
    std::sort(keyed.begin(), keyed.end());
    std::vector<int64_t> chosen;
    for (int64_t p = 0; p < keep; ++p) chosen.push_back(keyed[p].second);
    std::sort(chosen.begin(), chosen.end());
    out.insert(out.end(), chosen.begin(), chosen.end());
  }
  return Tensor::from_vector(out, {B, keep}, DType::i64);
}

Tensor drop_token_gather(const Tensor& x, const Tensor& idx) {
  const int64_t B = x.size(0), L = x.size(1), keep = idx.size(1), D = row_size(x.shape());
  std::vector<double> xv = x.to_vector<double>(), out;
  std::vector<int64_t> iv = idx.to_vector<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < keep; ++p)
      for (int64_t d = 0; d < D; ++d) out.push_back(xv[(b * L + iv[b * keep + p]) * D + d]);
  Shape s = x.shape();
  s[1] = keep;
  return Tensor::from_vector(out, s, DType::f64);
}

Tensor drop_token_scatter(const Tensor& g, const Tensor& idx, int64_t L) {
  const int64_t B = g.size(0), keep = g.size(1), D = row_size(g.shape());
  std::vector<double> gv = g.to_vector<double>(), out(size_t(B * L * D), 0.0);
  std::vector<int64_t> iv = idx.to_vector<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < keep; ++p)
      for (int64_t d = 0; d < D; ++d)
        out[(b * L + iv[b * keep + p]) * D + d] = gv[(b * keep + p) * D + d];
  Shape s = g.shape();
  s[1] = L;
  return Tensor::from_vector(out, s, DType::f64);
}

}  // namespace kernels::ref
