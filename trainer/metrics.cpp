#include "trainer/metrics.h"

#include <algorithm>

#include "engine/error.h"
#include "kernels/l2norm.h"
#include "kernels/matmul.h"

namespace train {

int64_t topk_correct(const Tensor& scores, const Tensor& labels, int64_t k) {
  ENGINE_CHECK(scores.dim() == 2 && labels.dim() == 1 && labels.size(0) == scores.size(0),
               "topk_correct: scores [N, C] and labels [N] expected, got ", scores.describe(),
               " and ", labels.describe());
  const auto s = scores.to(engine::DType::f64).contiguous().to_vector<double>();
  const auto l = labels.to(engine::DType::i64).contiguous().to_vector<int64_t>();
  const int64_t N = scores.size(0), C = scores.size(1);
  int64_t correct = 0;
  for (int64_t i = 0; i < N; ++i) {
    ENGINE_CHECK(l[i] >= 0 && l[i] < C, "topk_correct: label ", l[i], " of row ", i,
                 " is outside [0, ", C, ")");
    const double v = s[i * C + l[i]];
    int64_t above = 0;  // classes ranked before the label
    for (int64_t c = 0; c < C; ++c) {
      const double u = s[i * C + c];
      above += u > v || (u == v && c < l[i]);
    }
    correct += above < k;
  }
  return correct;
}

RetrievalMetrics retrieval(const Tensor& sim) {
  ENGINE_CHECK(sim.dim() == 2 && sim.size(0) == sim.size(1) && sim.size(0) > 0,
               "retrieval: sim must be a non-empty square [N, N], got ", sim.describe());
  const int64_t N = sim.size(0);
  const auto s = sim.to(engine::DType::f64).contiguous().to_vector<double>();
  std::vector<int64_t> ranks(N);
  RetrievalMetrics m;
  for (int64_t i = 0; i < N; ++i) {
    int64_t higher = 0;
    for (int64_t j = 0; j < N; ++j) higher += s[i * N + j] > s[i * N + i];
    ranks[i] = higher + 1;
    m.r1 += ranks[i] <= 1;
    m.r5 += ranks[i] <= 5;
    m.r10 += ranks[i] <= 10;
  }
  m.r1 /= N;
  m.r5 /= N;
  m.r10 /= N;
  std::sort(ranks.begin(), ranks.end());
  m.median_rank = N % 2 ? double(ranks[N / 2]) : 0.5 * double(ranks[N / 2 - 1] + ranks[N / 2]);
  return m;
}

Tensor cosine_similarity(const Tensor& x, const Tensor& y) {
  ENGINE_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(1) == y.size(1),
               "cosine_similarity: x [N, D] and y [M, D] expected, got ", x.describe(), " and ",
               y.describe());
  Tensor xn = kernels::l2_normalize(x.to(engine::DType::f32).contiguous(), 1e-6, -1).y;
  Tensor yn = kernels::l2_normalize(y.to(engine::DType::f32).contiguous(), 1e-6, -1).y;
  return kernels::matmul(xn, yn, false, true);
}

}  // namespace train
