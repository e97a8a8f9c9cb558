// Softmax cross-entropy: the fused kernels against a reference computed from log-softmax in
// f64 (hard targets with and without label smoothing and ignored rows, soft targets), extreme
// logits, errors, the autograd reductions and gradchecks.
#include <cmath>

#include "autograd/cross_entropy.h"
#include "autograd/gradcheck.h"
#include "kernels/cross_entropy.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {

// Class indices in [0, C), with every `ignore_every`-th row set to `ignore` (when > 0).
Tensor rand_targets(int64_t N, int64_t C, uint64_t stream, int ignore_every = 0,
                    int64_t ignore = -100, DType dt = DType::i64) {
  auto u = testing::randu({N}, stream, 0, double(C), DType::f64).to_vector<double>();
  std::vector<int64_t> t;
  for (int64_t i = 0; i < N; ++i)
    t.push_back(ignore_every && i % ignore_every == 1 ? ignore
                                                      : std::min<int64_t>(C - 1, int64_t(u[i])));
  return Tensor::from_vector(t, {N}, DType::i64).to(dt);
}

// Non-negative rows; normalised to sum 1 unless `raw`.
Tensor rand_probs(int64_t N, int64_t C, uint64_t stream, bool raw = false) {
  auto u = testing::randu({N, C}, stream, 0, 1, DType::f64).to_vector<double>();
  if (!raw)
    for (int64_t i = 0; i < N; ++i) {
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += u[i * C + c];
      for (int64_t c = 0; c < C; ++c) u[i * C + c] /= s;
    }
  return Tensor::from_vector(u, {N, C});
}

double tol_of(DType dt) { return dt == DType::f32 ? 2e-5 : 1e-11; }

}  // namespace

TEST_CASE("cross_entropy: hard targets vs log-softmax reference (smoothing, ignore_index)") {
  for (DType dt : {DType::f32, DType::f64}) {
    const double tol = tol_of(dt);
    for (auto [N, C] : {std::pair<int64_t, int64_t>{37, 13}, {7, 130}, {1, 1}, {301, 67}}) {
      for (double eps : {0.0, 0.1}) {
        INFO(engine::dtype_name(dt) << " N " << N << " C " << C << " eps " << eps);
        Tensor x = randn({N, C}, 1, dt, 3.0);
        Tensor t = rand_targets(N, C, 2, 4, -100, N % 2 ? DType::i64 : DType::i32);
        auto got = kernels::softmax_cross_entropy(x, t, eps);
        auto ref = kernels::ref::softmax_cross_entropy(x, t, eps);
        CHECK(got.losses.dtype() == dt);
        CHECK_CLOSE(got.losses, ref.losses, tol, tol);
        CHECK_CLOSE(got.lse, ref.lse, tol, tol);
        CHECK(got.num_valid == ref.num_valid);
        auto nc = kernels::softmax_cross_entropy(testing::non_contiguous(x), t, eps);
        CHECK_CLOSE(nc.losses, ref.losses, tol, tol);
        // Backward with a per-row gradient and a scale; and with an expanded scalar gradient.
        Tensor g = randn({N}, 3, dt);
        CHECK_CLOSE(kernels::softmax_cross_entropy_backward(g, x, t, got.lse, eps, -100, 0.5),
                    kernels::ref::softmax_cross_entropy_backward(g, x, t, ref.lse, eps, -100, 0.5),
                    tol, tol);
        Tensor gs = Tensor::full({1}, 1.5, dt).expand({N});
        CHECK_CLOSE(kernels::softmax_cross_entropy_backward(gs, testing::non_contiguous(x), t,
                                                            got.lse, eps),
                    kernels::ref::softmax_cross_entropy_backward(gs, x, t, ref.lse, eps), tol,
                    tol);
      }
    }
  }
  // A custom ignore_index inside [0, C) ignores that class's rows.
  Tensor x = randn({9, 5}, 4, DType::f64);
  Tensor t = Tensor::from_vector<int64_t>({0, 1, 2, 3, 4, 2, 2, 1, 0}, {9});
  auto got = kernels::softmax_cross_entropy(x, t, 0.0, 2);
  CHECK(got.num_valid == 6);
  CHECK(got.losses.at({2}) == 0.0);
  CHECK_CLOSE(got.losses, kernels::ref::softmax_cross_entropy(x, t, 0.0, 2).losses, 1e-12, 1e-12);
  Tensor dx = kernels::softmax_cross_entropy_backward(Tensor::ones({9}, DType::f64), x, t, got.lse,
                                                      0.0, 2);
  for (double v : dx.select(0, 5).to_vector<double>()) CHECK(v == 0.0);
}

TEST_CASE("cross_entropy: soft targets vs reference") {
  for (DType dt : {DType::f32, DType::f64}) {
    const double tol = tol_of(dt);
    for (bool raw : {false, true}) {  // raw: rows that do not sum to 1
      INFO("raw " << raw);
      Tensor x = randn({13, 37}, 10, dt, 2.0);
      Tensor q = rand_probs(13, 37, 11, raw).to(dt);
      auto got = kernels::softmax_cross_entropy_soft(testing::non_contiguous(x), q);
      auto ref = kernels::ref::softmax_cross_entropy_soft(x, q);
      CHECK_CLOSE(got.losses, ref.losses, tol, tol);
      CHECK_CLOSE(got.lse, ref.lse, tol, tol);
      CHECK(got.num_valid == 13);
      Tensor g = randn({13}, 12, dt);
      CHECK_CLOSE(kernels::softmax_cross_entropy_soft_backward(g, x, q, got.lse, 2.0),
                  kernels::ref::softmax_cross_entropy_soft_backward(g, x, q, ref.lse, 2.0), tol,
                  tol);
    }
  }
  // A one-hot soft target equals the hard loss.
  Tensor x = randn({5, 7}, 13, DType::f64);
  Tensor t = Tensor::from_vector<int64_t>({6, 0, 3, 3, 1}, {5});
  std::vector<double> oh(35, 0.0);
  for (int i = 0; i < 5; ++i) oh[i * 7 + t.to_vector<int64_t>()[i]] = 1.0;
  CHECK_CLOSE(kernels::softmax_cross_entropy_soft(x, Tensor::from_vector(oh, {5, 7})).losses,
              kernels::softmax_cross_entropy(x, t).losses, 1e-12, 1e-12);
}

TEST_CASE("cross_entropy: extreme logits stay finite and accurate") {
  for (DType dt : {DType::f32, DType::f64}) {
    // Rows of +-1e4 with the target at the top, at the bottom, and tied at the top.
    std::vector<double> v = {1e4, -1e4, -1e4, 0,     -1e4, 1e4, 1e4, -1e4,
                             1e4, 1e4,  -1e4, -1e4,  -1e4, -1e4, -1e4, -1e4};
    Tensor x = Tensor::from_vector(v, {4, 4}).to(dt);
    Tensor t = Tensor::from_vector<int64_t>({0, 0, 1, 2}, {4});
    for (double eps : {0.0, 0.1}) {
      auto got = kernels::softmax_cross_entropy(x, t, eps);
      auto ref = kernels::ref::softmax_cross_entropy(x, t, eps);
      for (double l : got.losses.to_vector<double>()) CHECK(std::isfinite(l));
      CHECK_CLOSE(got.losses, ref.losses, 1e-6, 1e-6);
      Tensor dx = kernels::softmax_cross_entropy_backward(Tensor::ones({4}, dt), x, t, got.lse, eps);
      for (double d : dx.to_vector<double>()) CHECK(std::isfinite(d));
      // The saved lse is rounded to the logits' dtype, so softmax = exp(x - lse) carries an
      // absolute error of about |lse| * ulp(1): ~1e-3 in f32 at |lse| = 1e4.
      const double dtol = dt == DType::f32 ? 1e4 * 0x1p-23 : 1e-9;
      CHECK_CLOSE(dx, kernels::ref::softmax_cross_entropy_backward(Tensor::ones({4}, dt), x, t,
                                                                   ref.lse, eps),
                  dtol, dtol);
    }
    // The target 2e4 below the max: loss 2e4 to full relative precision; on top: exactly 0.
    auto l = kernels::softmax_cross_entropy(x, t).losses.to_vector<double>();
    CHECK(l[0] == 0.0);
    CHECK(l[1] == doctest::Approx(2e4 + std::log(2.0)).epsilon(1e-7));
    CHECK(l[2] == doctest::Approx(std::log(2.0)).epsilon(1e-6));
  }
}

TEST_CASE("cross_entropy: bad targets and shapes are errors") {
  Tensor x = randn({4, 13}, 20);
  CHECK_THROWS_CONTAINING(
      kernels::softmax_cross_entropy(x, Tensor::from_vector<int64_t>({0, 1, 13, 2}, {4})),
      "softmax_cross_entropy: target 13 at row 2 is out of range [0, 13) and is not "
      "ignore_index (-100)");
  CHECK_THROWS_CONTAINING(
      kernels::softmax_cross_entropy(x, Tensor::from_vector<int32_t>({0, -1, 3, 2}, {4})),
      "target -1 at row 1 is out of range [0, 13)");
  CHECK_THROWS_CONTAINING(kernels::softmax_cross_entropy(x, Tensor::zeros({5}, DType::i64)),
                          "targets i64[5] must have shape [4]");
  CHECK_THROWS_CONTAINING(kernels::softmax_cross_entropy(x, Tensor::zeros({4})),
                          "indices must be i64 or i32, got f32");
  CHECK_THROWS_CONTAINING(kernels::softmax_cross_entropy(randn({4}, 1), Tensor::zeros({4})),
                          "expected 'logits' to have 2 dimensions");
  CHECK_THROWS_CONTAINING(
      kernels::softmax_cross_entropy(x, Tensor::zeros({4}, DType::i64), 1.5),
      "label_smoothing 1.5 is outside [0, 1]");
  CHECK_THROWS_CONTAINING(kernels::softmax_cross_entropy_soft(x, Tensor::zeros({4, 12})),
                          "target_probs f32[4, 12] must have the shape of logits f32[4, 13]");
  CHECK_THROWS_CONTAINING(
      kernels::softmax_cross_entropy_backward(Tensor::zeros({3}), x,
                                              Tensor::zeros({4}, DType::i64), Tensor::zeros({4})),
      "grad f32[3] must have shape [4]");
  CHECK_THROWS_CONTAINING(kernels::softmax_cross_entropy(x.to(DType::i32),
                                                         Tensor::zeros({4}, DType::i64)),
                          "expected dtype f32 or f64, got i32");
  autograd::Var v(randn({2, 3, 5}, 21));
  CHECK_THROWS_CONTAINING(autograd::cross_entropy(v, Tensor::zeros({6}, DType::i64)),
                          "cross_entropy: targets i64[6] must have the leading shape [2, 3]");
}

TEST_CASE("cross_entropy: reductions mean over non-ignored rows, sum and none") {
  using autograd::Reduction;
  using autograd::Var;
  Tensor x = randn({2, 3, 5}, 30, DType::f64);
  Tensor t = Tensor::from_vector<int64_t>({1, -100, 4, 0, -100, 2}, {2, 3});
  auto ref = kernels::ref::softmax_cross_entropy(x.reshape({6, 5}), t.reshape({6}), 0.1);
  auto rl = ref.losses.to_vector<double>();
  double total = 0;
  for (double l : rl) total += l;
  Var none = autograd::cross_entropy(Var(x), t, 0.1, -100, Reduction::none);
  CHECK(none.shape() == Shape{2, 3});
  CHECK_CLOSE(none.data(), ref.losses.reshape({2, 3}), 1e-12, 1e-12);
  CHECK(autograd::cross_entropy(Var(x), t, 0.1, -100, Reduction::sum).item() ==
        doctest::Approx(total).epsilon(1e-12));
  Var mean = autograd::cross_entropy(Var(x), t, 0.1);
  CHECK(mean.shape() == Shape{});
  CHECK(mean.item() == doctest::Approx(total / 4).epsilon(1e-12));
  // Every row ignored: loss 0 and zero gradient, not NaN.
  Var xv(x, true);
  Var all = autograd::cross_entropy(xv, Tensor::full({2, 3}, -100, DType::i64));
  CHECK(all.item() == 0.0);
  all.backward();
  for (double g : xv.grad().to_vector<double>()) CHECK(g == 0.0);
  // Soft: mean over all rows.
  Tensor q = rand_probs(6, 5, 31).to(DType::f64).reshape({2, 3, 5});
  auto sref = kernels::ref::softmax_cross_entropy_soft(x.reshape({6, 5}), q.reshape({6, 5}));
  double stotal = 0;
  for (double l : sref.losses.to_vector<double>()) stotal += l;
  CHECK(autograd::cross_entropy_soft(Var(x), q).item() == doctest::Approx(stotal / 6).epsilon(1e-12));
  CHECK(autograd::cross_entropy_soft(Var(x), q, Reduction::sum).item() ==
        doctest::Approx(stotal).epsilon(1e-12));
  CHECK(autograd::cross_entropy_soft(Var(x), q, Reduction::none).shape() == Shape{2, 3});
}

TEST_CASE("cross_entropy: gradcheck of every reduction, with smoothing and soft targets") {
  using autograd::Reduction;
  using autograd::Var;
  Tensor x = randn({5, 4}, 40, DType::f64, 2.0);
  Tensor t = Tensor::from_vector<int64_t>({3, -100, 0, 1, 3}, {5});
  for (Reduction red : {Reduction::mean, Reduction::sum, Reduction::none})
    for (double eps : {0.0, 0.1}) {
      INFO("reduction " << int(red) << " eps " << eps);
      auto r = autograd::gradcheck(
          [&](const std::vector<Var>& v) { return autograd::cross_entropy(v[0], t, eps, -100, red); },
          {x});
      INFO(r.detail);
      CHECK(r.ok);
    }
  // 3-D logits.
  Tensor x3 = randn({2, 3, 4}, 41, DType::f64);
  Tensor t3 = Tensor::from_vector<int32_t>({0, 3, 2, 1, 1, 0}, {2, 3});
  auto r3 = autograd::gradcheck(
      [&](const std::vector<Var>& v) { return autograd::cross_entropy(v[0], t3, 0.2); }, {x3});
  INFO(r3.detail);
  CHECK(r3.ok);
  Tensor q = rand_probs(5, 4, 42, true).to(DType::f64);
  for (Reduction red : {Reduction::mean, Reduction::sum, Reduction::none}) {
    auto r = autograd::gradcheck(
        [&](const std::vector<Var>& v) { return autograd::cross_entropy_soft(v[0], q, red); },
        {x});
    INFO(r.detail);
    CHECK(r.ok);
  }
}
