// entmax-1.5 on the CPU: the sort-based kernel against an independent bisection reference (odd
// row lengths, f32/f64/bf16, strided input, ranks 1-3), its defining properties (rows sum to 1,
// exact zeros, one dominant entry -> one-hot, shift invariance, two-entry closed form), NaN and
// -inf rules, the backward against the reference and gradcheck.
#include <cmath>
#include <vector>

#include "autograd/entmax.h"
#include "autograd/gradcheck.h"
#include "kernels/entmax.h"
#include "tests/helpers.h"

using autograd::Var;
using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::non_contiguous;
using testing::randn;

namespace {

// Per row: the sum and the number of exact zeros.
void row_stats(const Tensor& p, std::vector<double>& sums, std::vector<int64_t>& zeros) {
  const int64_t K = p.size(-1), rows = p.numel() / K;
  std::vector<double> v = p.to_vector<double>();
  sums.assign(size_t(rows), 0.0);
  zeros.assign(size_t(rows), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < K; ++i) {
      sums[r] += v[r * K + i];
      zeros[r] += v[r * K + i] == 0.0;
    }
}

}  // namespace

TEST_CASE("entmax: forward matches the bisection reference; rows sum to 1 with exact zeros") {
  uint64_t stream = 1;
  for (DType dt : {DType::f32, DType::f64})
    for (int64_t K : {1, 2, 7, 33, 294})
      for (double scale : {0.5, 3.0}) {
        INFO(engine::dtype_name(dt) << " K " << K << " scale " << scale);
        Tensor z = randn({13, K}, stream++, dt, scale);
        Tensor p = kernels::entmax15(z);
        CHECK(p.dtype() == dt);
        Tensor r = kernels::ref::entmax15(z);
        const double tol = dt == DType::f64 ? 1e-12 : 1e-6;
        CHECK_CLOSE(p, r, tol, tol);
        CHECK_CLOSE(kernels::entmax15(non_contiguous(z)), r, tol, tol);
        std::vector<double> sums;
        std::vector<int64_t> zeros;
        row_stats(p, sums, zeros);
        bool ok = true;
        int64_t total_zeros = 0;
        for (size_t i = 0; i < sums.size(); ++i) {
          ok = ok && std::abs(sums[i] - 1) < (dt == DType::f64 ? 1e-12 : 1e-5);
          total_zeros += zeros[i];
        }
        CHECK(ok);
        if (K >= 33 && scale == 3.0) CHECK(total_zeros > 13 * K / 2);  // sparse, unlike softmax
      }
  // Ranks 1 and 3; bf16 input gives f32 output.
  Tensor z1 = randn({37}, 50, DType::f64);
  CHECK_CLOSE(kernels::entmax15(z1), kernels::ref::entmax15(z1), 1e-12, 1e-12);
  Tensor z3 = randn({3, 5, 11}, 51);
  CHECK_CLOSE(kernels::entmax15(z3), kernels::ref::entmax15(z3), 1e-6, 1e-6);
  Tensor zb = randn({4, 9}, 52, DType::bf16, 2.0);
  CHECK(kernels::entmax15(zb).dtype() == DType::f32);
  CHECK_CLOSE(kernels::entmax15(zb), kernels::ref::entmax15(zb), 1e-6, 1e-6);
}

TEST_CASE("entmax: limiting cases and closed forms") {
  // One entry far above the others: one-hot (exact zeros elsewhere).
  Tensor z = Tensor::from_vector<double>({0.1, 9.0, -0.3, 0.2, 0.0}, {1, 5});
  CHECK(kernels::entmax15(z).to_vector<double>() == std::vector<double>{0, 1, 0, 0, 0});
  // Equal entries: uniform, like softmax.
  std::vector<double> u =
      kernels::entmax15(Tensor::full({2, 7}, 0.3, DType::f64)).to_vector<double>();
  for (double v : u) CHECK(v == doctest::Approx(1.0 / 7));
  // Two entries z1 >= z2 with d = (z1 - z2)/2 < 1: p1 = ((1 + sqrt(2 - d²)... closed form via
  // tau: (x1 - tau)² + (x2 - tau)² = 1 with x1 = 0, x2 = -d -> tau = (-d - sqrt(2 - d²)) / 2.
  for (double d : {0.0, 0.25, 0.9}) {
    const double tau = (-d - std::sqrt(2 - d * d)) / 2;
    std::vector<double> p =
        kernels::entmax15(Tensor::from_vector<double>({1.0, 1.0 - 2 * d}, {2}, DType::f64))
            .to_vector<double>();
    CHECK(p[0] == doctest::Approx(tau * tau));
    CHECK(p[1] == doctest::Approx((d + tau) * (d + tau)));
  }
  // Shift invariance, and scaling up makes it sparser.
  Tensor x = randn({6, 33}, 3, DType::f64);
  CHECK_CLOSE(kernels::entmax15(kernels::ref::entmax15(x).slice(0, 0, 0)),
              Tensor::zeros({0, 33}, DType::f64), 0, 0);
  Tensor shifted = Tensor::from_vector(x.to_vector<double>(), {6, 33}, DType::f64);
  {
    std::vector<double> v = x.to_vector<double>();
    for (double& e : v) e += 100.0;
    shifted = Tensor::from_vector(v, {6, 33}, DType::f64);
  }
  CHECK_CLOSE(kernels::entmax15(shifted), kernels::entmax15(x), 1e-10, 1e-12);
}

TEST_CASE("entmax: NaN rows, infinite maxima and -inf entries") {
  const float inf = INFINITY;
  Tensor z = Tensor::from_vector<float>({0.5f, NAN, 0.1f,   //
                                         1.0f, -inf, 0.9f,  //
                                         -inf, -inf, -inf,  //
                                         inf, 0.0f, 1.0f},
                                        {4, 3});
  std::vector<float> p = kernels::entmax15(z).to_vector<float>();
  CHECK((std::isnan(p[0]) && std::isnan(p[1]) && std::isnan(p[2])));
  CHECK(p[4] == 0.0f);  // -inf gets exactly 0 in a finite row
  CHECK(p[3] + p[5] == doctest::Approx(1.0));
  CHECK((std::isnan(p[6]) && std::isnan(p[8])));
  CHECK((std::isnan(p[9]) && std::isnan(p[11])));
  CHECK_CLOSE(kernels::entmax15(z), kernels::ref::entmax15(z), 1e-6, 1e-6);
}

TEST_CASE("entmax: backward matches the reference; gradcheck; autograd op") {
  uint64_t stream = 100;
  for (DType dt : {DType::f32, DType::f64})
    for (int64_t K : {1, 7, 33, 294}) {
      Tensor p = kernels::ref::entmax15(randn({9, K}, stream++, DType::f64, 2.0)).to(dt);
      Tensor g = randn({9, K}, stream++, dt);
      const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
      Tensor r = kernels::ref::entmax15_backward(g, p);
      CHECK_CLOSE(kernels::entmax15_backward(g, p), r, tol, tol);
      CHECK_CLOSE(kernels::entmax15_backward(non_contiguous(g), non_contiguous(p)), r, tol, tol);
    }
  // Finite differences through the sort-based forward (ties avoided by random inputs; a scale
  // that leaves several entries in and several out of the support).
  using V = const std::vector<Var>&;
  for (int64_t K : {1, 4, 9}) {
    INFO("K " << K);
    autograd::GradcheckResult res = autograd::gradcheck(
        [](V v) { return autograd::entmax15(v[0]); }, {randn({3, K}, 200 + K, DType::f64, 1.5)});
    INFO(res.detail);
    CHECK(res.ok);
  }
  Var z(randn({2, 3, 6}, 300, DType::f64), true);
  Var p = autograd::entmax15(z);
  CHECK(p.shape() == Shape{2, 3, 6});
  CHECK_THROWS_CONTAINING(kernels::entmax15(Tensor::zeros({3, 0})),
                          "entmax15: 'z' needs a last axis of size >= 1");
  CHECK_THROWS_CONTAINING(kernels::entmax15(Tensor::arange(3)),
                          "entmax15: expected a floating-point 'z'");
  CHECK_THROWS_CONTAINING(kernels::entmax15_backward(randn({2, 3}, 1), randn({3, 2}, 1)),
                          "entmax15_backward: shape mismatch");
}
