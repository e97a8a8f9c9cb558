// Contrastive NCE against a plain f64 reference (+ gradcheck); evaluation metrics against
// definitions computed independently (sorting) in the test.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "tests/helpers.h"
#include "trainer/metrics.h"
#include "trainer/objectives.h"

using engine::DType;
using engine::Tensor;
using testing::randn;

namespace {
double ref_nce(const std::vector<double>& a, const std::vector<double>& b, int64_t B, int64_t D,
               double tau) {
  auto norm = [&](std::vector<double> v) {
    for (int64_t i = 0; i < B; ++i) {
      double s = 0;
      for (int64_t d = 0; d < D; ++d) s += v[i * D + d] * v[i * D + d];
      for (int64_t d = 0; d < D; ++d) v[i * D + d] /= std::sqrt(s + 1e-6);
    }
    return v;
  };
  auto an = norm(a), bn = norm(b);
  std::vector<double> S(B * B);
  for (int64_t i = 0; i < B; ++i)
    for (int64_t j = 0; j < B; ++j) {
      double s = 0;
      for (int64_t d = 0; d < D; ++d) s += an[i * D + d] * bn[j * D + d];
      S[i * B + j] = s / tau;
    }
  double loss = 0;
  for (int dir = 0; dir < 2; ++dir)
    for (int64_t i = 0; i < B; ++i) {
      double mx = -1e300, z = 0;
      for (int64_t j = 0; j < B; ++j) mx = std::max(mx, dir ? S[j * B + i] : S[i * B + j]);
      for (int64_t j = 0; j < B; ++j) z += std::exp((dir ? S[j * B + i] : S[i * B + j]) - mx);
      loss += (mx + std::log(z) - S[i * B + i]) / B;
    }
  return loss / 2;
}
}  // namespace

TEST_CASE("objectives/nce: equals the plain two-direction cross-entropy; gradients check") {
  const int64_t B = 5, D = 7;
  Tensor a = randn({B, D}, 1, DType::f64), b = randn({B, D}, 2, DType::f64);
  Tensor tau = Tensor::full({1}, 0.3, DType::f64);
  double got = train::contrastive_nce(autograd::Var(a), autograd::Var(b), autograd::Var(tau)).item();
  CHECK(got == doctest::Approx(ref_nce(a.to_vector<double>(), b.to_vector<double>(), B, D, 0.3))
                   .epsilon(1e-12));
  auto r = autograd::gradcheck(
      [](const std::vector<autograd::Var>& v) { return train::contrastive_nce(v[0], v[1], v[2]); },
      {a, b, tau});
  CHECK_MESSAGE(r.ok, r.detail);
  // Perfectly aligned, well-separated pairs at low temperature: loss near 0.
  Tensor eye = Tensor::zeros({4, 4}, DType::f64);
  for (int i = 0; i < 4; ++i) eye.narrow(0, i, 1).narrow(1, i, 1).fill_(1.0);
  CHECK(train::contrastive_nce(autograd::Var(eye), autograd::Var(eye),
                               autograd::Var(Tensor::full({1}, 0.01, DType::f64)))
            .item() < 1e-6);
  CHECK_THROWS_CONTAINING(train::contrastive_nce(autograd::Var(a), autograd::Var(randn({B, 3}, 3)),
                                                 autograd::Var(tau)),
                          "contrastive_nce: a and b must both be [B, D]");
}

TEST_CASE("metrics/topk: counts rows whose label is within the k best, ties to the lower index") {
  Tensor s = Tensor::from_vector(std::vector<double>{0.1, 0.5, 0.4,   // label 2: 2nd
                                                     0.3, 0.3, 0.3,   // label 1: tie, 2nd
                                                     0.9, 0.0, 0.1},  // label 0: 1st
                                 {3, 3}, DType::f32);
  Tensor l = Tensor::from_vector(std::vector<int64_t>{2, 1, 0}, {3});
  CHECK(train::topk_correct(s, l, 1) == 1);
  CHECK(train::topk_correct(s, l, 2) == 3);
  CHECK_THROWS_CONTAINING(train::topk_correct(s, Tensor::from_vector(std::vector<int64_t>{0, 3, 0}, {3}), 1),
                          "label 3 of row 1 is outside [0, 3)");
}

TEST_CASE("metrics/retrieval: recall@K and median rank equal a sort-based computation") {
  const int64_t N = 23;
  Tensor sim = randn({N, N}, 5);
  auto s = sim.to_vector<double>();
  std::vector<int64_t> rank(N);
  for (int64_t i = 0; i < N; ++i) {
    std::vector<int64_t> order(N);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t x, int64_t y) { return s[i * N + x] > s[i * N + y]; });
    rank[i] = std::find(order.begin(), order.end(), i) - order.begin() + 1;
  }
  auto m = train::retrieval(sim);
  auto frac = [&](int k) { return double(std::count_if(rank.begin(), rank.end(), [&](int64_t r) { return r <= k; })) / N; };
  CHECK(m.r1 == doctest::Approx(frac(1)));
  CHECK(m.r5 == doctest::Approx(frac(5)));
  CHECK(m.r10 == doctest::Approx(frac(10)));
  std::sort(rank.begin(), rank.end());
  CHECK(m.median_rank == double(rank[N / 2]));
}

TEST_CASE("metrics/cosine: rows are compared by angle only") {
  Tensor x = Tensor::from_vector(std::vector<double>{1, 0, 0, 2}, {2, 2});
  Tensor y = Tensor::from_vector(std::vector<double>{3, 0, 1, 1, 0, -5}, {3, 2});
  auto c = train::cosine_similarity(x, y).to_vector<double>();
  const std::vector<double> ref{1, std::sqrt(0.5), 0, 0, std::sqrt(0.5), -1};
  for (size_t i = 0; i < ref.size(); ++i) CHECK(c[i] == doctest::Approx(ref[i]).epsilon(1e-6));
}
