// Softmax cross-entropy: the fused kernels against a reference computed from log-softmax in
// f64 (hard targets with and without label smoothing and ignored rows, soft targets), extreme
// logits, errors, the autograd reductions and gradchecks.
#include <cmath>

#include "autograd/cross_entropy.h"
#include "autograd/gradcheck.h"
#include "kernels/cross_entropy.h"
#include "tests/helpers.h"

using autograd::Reduction;
using autograd::Var;
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

// One hard-target problem: logits x [N, C] (scale 3), targets with every 4th row ignored (i32
// targets when N is even), label smoothing eps, and the kernel's and reference's forward.
struct HardCase {
  int64_t N;
  double eps;
  Tensor x, t;
  kernels::CrossEntropyOut got, ref;
};

// Calls f(case) over odd and degenerate (N, C), with and without label smoothing.
template <class F>
void hard_sweep(DType dt, F f) {
  for (auto [N, C] : {std::pair<int64_t, int64_t>{37, 13}, {7, 130}, {1, 1}, {301, 67}})
    for (double eps : {0.0, 0.1}) {
      INFO(engine::dtype_name(dt) << " N " << N << " C " << C << " eps " << eps);
      Tensor x = randn({N, C}, 1, dt, 3.0);
      Tensor t = rand_targets(N, C, 2, 4, -100, N % 2 ? DType::i64 : DType::i32);
      f(HardCase{N, eps, x, t, kernels::softmax_cross_entropy(x, t, eps),
                 kernels::ref::softmax_cross_entropy(x, t, eps)});
    }
}

// 9 rows of 5 classes whose targets include the custom ignore_index 2 (rows 2, 5 and 6).
struct CustomIgnore {
  Tensor x = randn({9, 5}, 4, DType::f64);
  Tensor t = Tensor::from_vector<int64_t>({0, 1, 2, 3, 4, 2, 2, 1, 0}, {9});
};

// Calls f(x, q) for soft targets whose rows sum to 1 and (raw) do not.
template <class F>
void soft_sweep(DType dt, F f) {
  for (bool raw : {false, true}) {
    INFO("raw " << raw);
    f(randn({13, 37}, 10, dt, 2.0), rand_probs(13, 37, 11, raw).to(dt));
  }
}

// Rows of +-1e4 with the target at the top, at the bottom, and tied at the top.
struct Extreme {
  Tensor x, t;
  explicit Extreme(DType dt)
      : x(Tensor::from_vector(std::vector<double>{1e4, -1e4, -1e4, 0, -1e4, 1e4, 1e4, -1e4, 1e4,
                                                  1e4, -1e4, -1e4, -1e4, -1e4, -1e4, -1e4},
                              {4, 4})
              .to(dt)),
        t(Tensor::from_vector<int64_t>({0, 0, 1, 2}, {4})) {}
};

// [2, 3, 5] logits with two ignored targets, and the reference per-row losses at eps = 0.1.
struct Reductions {
  Tensor x = randn({2, 3, 5}, 30, DType::f64);
  Tensor t = Tensor::from_vector<int64_t>({1, -100, 4, 0, -100, 2}, {2, 3});
  kernels::CrossEntropyOut ref =
      kernels::ref::softmax_cross_entropy(x.reshape({6, 5}), t.reshape({6}), 0.1);
  double total() const {
    double s = 0;
    for (double l : ref.losses.to_vector<double>()) s += l;
    return s;
  }
};

void check_gradcheck(const autograd::GradcheckResult& r) {
  INFO(r.detail);
  CHECK(r.ok);
}

// Hard-target gradcheck on [5, 4] logits (one ignored row), with and without smoothing.
void gradcheck_hard(Reduction red) {
  Tensor x = randn({5, 4}, 40, DType::f64, 2.0);
  Tensor t = Tensor::from_vector<int64_t>({3, -100, 0, 1, 3}, {5});
  for (double eps : {0.0, 0.1}) {
    INFO("eps " << eps);
    check_gradcheck(autograd::gradcheck(
        [&](const std::vector<Var>& v) { return autograd::cross_entropy(v[0], t, eps, -100, red); },
        {x}));
  }
}

// Soft-target gradcheck on [5, 4] logits with rows of q that do not sum to 1.
void gradcheck_soft(Reduction red) {
  Tensor x = randn({5, 4}, 40, DType::f64, 2.0);
  Tensor q = rand_probs(5, 4, 42, true).to(DType::f64);
  check_gradcheck(autograd::gradcheck(
      [&](const std::vector<Var>& v) { return autograd::cross_entropy_soft(v[0], q, red); }, {x}));
}

}  // namespace

// ---- hard targets

TEST_CASE_TEMPLATE("cross_entropy: forward matches the reference (smoothing, ignored rows)", T,
                   float, double) {
  const DType dt = engine::dtype_v<T>;
  hard_sweep(dt, [&](const HardCase& c) {
    CHECK(c.got.losses.dtype() == dt);
    CHECK_CLOSE(c.got.losses, c.ref.losses, tol_of(dt), tol_of(dt));
    CHECK_CLOSE(c.got.lse, c.ref.lse, tol_of(dt), tol_of(dt));
    CHECK(c.got.num_valid == c.ref.num_valid);
  });
}

TEST_CASE_TEMPLATE("cross_entropy: forward on non-contiguous logits", T, float, double) {
  const DType dt = engine::dtype_v<T>;
  hard_sweep(dt, [&](const HardCase& c) {
    auto nc = kernels::softmax_cross_entropy(testing::non_contiguous(c.x), c.t, c.eps);
    CHECK_CLOSE(nc.losses, c.ref.losses, tol_of(dt), tol_of(dt));
  });
}

TEST_CASE_TEMPLATE("cross_entropy: backward with a per-row gradient and a scale", T, float,
                   double) {
  const DType dt = engine::dtype_v<T>;
  hard_sweep(dt, [&](const HardCase& c) {
    Tensor g = randn({c.N}, 3, dt);
    CHECK_CLOSE(
        kernels::softmax_cross_entropy_backward(g, c.x, c.t, c.got.lse, c.eps, -100, 0.5),
        kernels::ref::softmax_cross_entropy_backward(g, c.x, c.t, c.ref.lse, c.eps, -100, 0.5),
        tol_of(dt), tol_of(dt));
  });
}

TEST_CASE_TEMPLATE(
    "cross_entropy: backward with an expanded scalar gradient, non-contiguous logits", T, float,
    double) {
  const DType dt = engine::dtype_v<T>;
  hard_sweep(dt, [&](const HardCase& c) {
    Tensor gs = Tensor::full({1}, 1.5, dt).expand({c.N});
    CHECK_CLOSE(kernels::softmax_cross_entropy_backward(gs, testing::non_contiguous(c.x), c.t,
                                                        c.got.lse, c.eps),
                kernels::ref::softmax_cross_entropy_backward(gs, c.x, c.t, c.ref.lse, c.eps),
                tol_of(dt), tol_of(dt));
  });
}

TEST_CASE("cross_entropy: a custom ignore_index inside [0, C) ignores that class's rows") {
  const CustomIgnore c;
  auto got = kernels::softmax_cross_entropy(c.x, c.t, 0.0, 2);
  CHECK(got.num_valid == 6);
  CHECK(got.losses.at({2}) == 0.0);
  CHECK_CLOSE(got.losses, kernels::ref::softmax_cross_entropy(c.x, c.t, 0.0, 2).losses, 1e-12,
              1e-12);
}

TEST_CASE("cross_entropy: backward gives zero gradient to rows of a custom ignore_index") {
  const CustomIgnore c;
  auto got = kernels::softmax_cross_entropy(c.x, c.t, 0.0, 2);
  Tensor dx = kernels::softmax_cross_entropy_backward(Tensor::ones({9}, DType::f64), c.x, c.t,
                                                      got.lse, 0.0, 2);
  for (double v : dx.select(0, 5).to_vector<double>()) CHECK(v == 0.0);
}

// ---- soft targets

TEST_CASE_TEMPLATE("cross_entropy: soft-target forward on non-contiguous logits", T, float,
                   double) {
  const DType dt = engine::dtype_v<T>;
  soft_sweep(dt, [&](const Tensor& x, const Tensor& q) {
    auto got = kernels::softmax_cross_entropy_soft(testing::non_contiguous(x), q);
    auto ref = kernels::ref::softmax_cross_entropy_soft(x, q);
    CHECK_CLOSE(got.losses, ref.losses, tol_of(dt), tol_of(dt));
    CHECK_CLOSE(got.lse, ref.lse, tol_of(dt), tol_of(dt));
    CHECK(got.num_valid == 13);
  });
}

TEST_CASE_TEMPLATE("cross_entropy: soft-target backward matches the reference", T, float, double) {
  const DType dt = engine::dtype_v<T>;
  soft_sweep(dt, [&](const Tensor& x, const Tensor& q) {
    auto got = kernels::softmax_cross_entropy_soft(testing::non_contiguous(x), q);
    auto ref = kernels::ref::softmax_cross_entropy_soft(x, q);
    Tensor g = randn({13}, 12, dt);
    CHECK_CLOSE(kernels::softmax_cross_entropy_soft_backward(g, x, q, got.lse, 2.0),
                kernels::ref::softmax_cross_entropy_soft_backward(g, x, q, ref.lse, 2.0),
                tol_of(dt), tol_of(dt));
  });
}

TEST_CASE("cross_entropy: a one-hot soft target equals the hard loss") {
  Tensor x = randn({5, 7}, 13, DType::f64);
  Tensor t = Tensor::from_vector<int64_t>({6, 0, 3, 3, 1}, {5});
  std::vector<double> oh(35, 0.0);
  for (int i = 0; i < 5; ++i) oh[i * 7 + t.to_vector<int64_t>()[i]] = 1.0;
  CHECK_CLOSE(kernels::softmax_cross_entropy_soft(x, Tensor::from_vector(oh, {5, 7})).losses,
              kernels::softmax_cross_entropy(x, t).losses, 1e-12, 1e-12);
}

// ---- extreme logits

TEST_CASE_TEMPLATE("cross_entropy: extreme logits give finite, accurate losses", T, float, double) {
  const Extreme e(engine::dtype_v<T>);
  for (double eps : {0.0, 0.1}) {
    CAPTURE(eps);
    auto got = kernels::softmax_cross_entropy(e.x, e.t, eps);
    auto ref = kernels::ref::softmax_cross_entropy(e.x, e.t, eps);
    for (double l : got.losses.to_vector<double>()) CHECK(std::isfinite(l));
    CHECK_CLOSE(got.losses, ref.losses, 1e-6, 1e-6);
  }
}

TEST_CASE_TEMPLATE("cross_entropy: extreme logits give finite, accurate gradients", T, float,
                   double) {
  const DType dt = engine::dtype_v<T>;
  const Extreme e(dt);
  for (double eps : {0.0, 0.1}) {
    CAPTURE(eps);
    auto got = kernels::softmax_cross_entropy(e.x, e.t, eps);
    auto ref = kernels::ref::softmax_cross_entropy(e.x, e.t, eps);
    Tensor dx =
        kernels::softmax_cross_entropy_backward(Tensor::ones({4}, dt), e.x, e.t, got.lse, eps);
    for (double d : dx.to_vector<double>()) CHECK(std::isfinite(d));
    // The saved lse is rounded to the logits' dtype, so softmax = exp(x - lse) carries an
    // absolute error of about |lse| * ulp(1): ~1e-3 in f32 at |lse| = 1e4.
    const double dtol = dt == DType::f32 ? 1e4 * 0x1p-23 : 1e-9;
    CHECK_CLOSE(
        dx,
        kernels::ref::softmax_cross_entropy_backward(Tensor::ones({4}, dt), e.x, e.t, ref.lse, eps),
        dtol, dtol);
  }
}

TEST_CASE_TEMPLATE("cross_entropy: extreme logits keep full relative precision", T, float, double) {
  const Extreme e(engine::dtype_v<T>);
  // The target 2e4 below the max: loss 2e4 to full relative precision; on top: exactly 0.
  auto l = kernels::softmax_cross_entropy(e.x, e.t).losses.to_vector<double>();
  CHECK(l[0] == 0.0);
  CHECK(l[1] == doctest::Approx(2e4 + std::log(2.0)).epsilon(1e-7));
  CHECK(l[2] == doctest::Approx(std::log(2.0)).epsilon(1e-6));
}

// ---- errors

TEST_CASE("cross_entropy: bad targets are errors") {
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
}

TEST_CASE("cross_entropy: bad logits and label smoothing are errors") {
  Tensor x = randn({4, 13}, 20);
  CHECK_THROWS_CONTAINING(kernels::softmax_cross_entropy(randn({4}, 1), Tensor::zeros({4})),
                          "expected 'logits' to have 2 dimensions");
  CHECK_THROWS_CONTAINING(kernels::softmax_cross_entropy(x, Tensor::zeros({4}, DType::i64), 1.5),
                          "label_smoothing 1.5 is outside [0, 1]");
  CHECK_THROWS_CONTAINING(
      kernels::softmax_cross_entropy(x.to(DType::i32), Tensor::zeros({4}, DType::i64)),
      "expected dtype f32 or f64, got i32");
}

TEST_CASE("cross_entropy: soft targets of the wrong shape are an error") {
  CHECK_THROWS_CONTAINING(
      kernels::softmax_cross_entropy_soft(randn({4, 13}, 20), Tensor::zeros({4, 12})),
      "target_probs f32[4, 12] must have the shape of logits f32[4, 13]");
}

TEST_CASE("cross_entropy: backward with a gradient of the wrong shape is an error") {
  CHECK_THROWS_CONTAINING(
      kernels::softmax_cross_entropy_backward(Tensor::zeros({3}), randn({4, 13}, 20),
                                              Tensor::zeros({4}, DType::i64), Tensor::zeros({4})),
      "grad f32[3] must have shape [4]");
}

TEST_CASE("cross_entropy: autograd targets must match the leading shape of the logits") {
  Var v(randn({2, 3, 5}, 21));
  CHECK_THROWS_CONTAINING(autograd::cross_entropy(v, Tensor::zeros({6}, DType::i64)),
                          "cross_entropy: targets i64[6] must have the leading shape [2, 3]");
}

// ---- reductions

TEST_CASE("cross_entropy: reduction none gives the per-row losses") {
  const Reductions r;
  Var none = autograd::cross_entropy(Var(r.x), r.t, 0.1, -100, Reduction::none);
  CHECK(none.shape() == Shape{2, 3});
  CHECK_CLOSE(none.data(), r.ref.losses.reshape({2, 3}), 1e-12, 1e-12);
}

TEST_CASE("cross_entropy: reduction sum adds the per-row losses") {
  const Reductions r;
  CHECK(autograd::cross_entropy(Var(r.x), r.t, 0.1, -100, Reduction::sum).item() ==
        doctest::Approx(r.total()).epsilon(1e-12));
}

TEST_CASE("cross_entropy: reduction mean averages over the non-ignored rows") {
  const Reductions r;
  Var mean = autograd::cross_entropy(Var(r.x), r.t, 0.1);
  CHECK(mean.shape() == Shape{});
  CHECK(mean.item() == doctest::Approx(r.total() / 4).epsilon(1e-12));
}

TEST_CASE("cross_entropy: every row ignored gives loss 0 and zero gradient, not NaN") {
  Var xv(randn({2, 3, 5}, 30, DType::f64), true);
  Var all = autograd::cross_entropy(xv, Tensor::full({2, 3}, -100, DType::i64));
  CHECK(all.item() == 0.0);
  all.backward();
  for (double g : xv.grad().to_vector<double>()) CHECK(g == 0.0);
}

TEST_CASE("cross_entropy: soft-target reductions (mean over all rows, sum, none)") {
  Tensor x = randn({2, 3, 5}, 30, DType::f64);
  Tensor q = rand_probs(6, 5, 31).to(DType::f64).reshape({2, 3, 5});
  auto sref = kernels::ref::softmax_cross_entropy_soft(x.reshape({6, 5}), q.reshape({6, 5}));
  double stotal = 0;
  for (double l : sref.losses.to_vector<double>()) stotal += l;
  CHECK(autograd::cross_entropy_soft(Var(x), q).item() ==
        doctest::Approx(stotal / 6).epsilon(1e-12));
  CHECK(autograd::cross_entropy_soft(Var(x), q, Reduction::sum).item() ==
        doctest::Approx(stotal).epsilon(1e-12));
  CHECK(autograd::cross_entropy_soft(Var(x), q, Reduction::none).shape() == Shape{2, 3});
}

// ---- gradients

TEST_CASE("cross_entropy: gradcheck with reduction mean, with and without smoothing") {
  gradcheck_hard(Reduction::mean);
}
TEST_CASE("cross_entropy: gradcheck with reduction sum, with and without smoothing") {
  gradcheck_hard(Reduction::sum);
}
TEST_CASE("cross_entropy: gradcheck with reduction none, with and without smoothing") {
  gradcheck_hard(Reduction::none);
}

TEST_CASE("cross_entropy: gradcheck of 3-D logits with i32 targets") {
  Tensor t3 = Tensor::from_vector<int32_t>({0, 3, 2, 1, 1, 0}, {2, 3});
  check_gradcheck(autograd::gradcheck(
      [&](const std::vector<Var>& v) { return autograd::cross_entropy(v[0], t3, 0.2); },
      {randn({2, 3, 4}, 41, DType::f64)}));
}

TEST_CASE("cross_entropy: soft-target gradcheck with reduction mean") {
  gradcheck_soft(Reduction::mean);
}
TEST_CASE("cross_entropy: soft-target gradcheck with reduction sum") {
  gradcheck_soft(Reduction::sum);
}
TEST_CASE("cross_entropy: soft-target gradcheck with reduction none") {
  gradcheck_soft(Reduction::none);
}
