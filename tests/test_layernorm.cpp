// LayerNorm: forward and backward kernels against the f64 reference (with and without weight and
// bias, odd widths, constant rows, large offsets, non-contiguous and bf16 input), deterministic
// weight gradients, errors, and gradcheck of the autograd op.
#include <omp.h>

#include <cmath>

#include "autograd/gradcheck.h"
#include "autograd/layernorm.h"
#include "kernels/layernorm.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {
double tol(DType dt) { return dt == DType::f64 ? 1e-12 : 2e-6; }

// Calls f(x, w, b) for x [3, 5, d] over odd widths d, each with and without weight and bias.
// Each dtype has its own run of 32 random streams.
template <class F>
void forward_sweep(DType dt, F f) {
  uint64_t stream = dt == DType::f64 ? 32 : 0;
  for (int64_t d : {1, 7, 130, 385})
    for (int variant = 0; variant < 4; ++variant) {
      CAPTURE(d);
      CAPTURE(variant);
      Tensor x = randn({3, 5, d}, ++stream, dt, 2.0);
      Tensor w = variant & 1 ? randn({d}, ++stream, dt) : Tensor();
      Tensor b = variant & 2 ? randn({d}, ++stream, dt) : Tensor();
      f(x, w, b);
    }
}

void check_forward(const Tensor& in, const Tensor& w, const Tensor& b,
                   const kernels::LayerNormOut& ref) {
  const DType dt = in.dtype();
  auto out = kernels::layernorm(in, w, b, 1e-6);
  CHECK(out.y.dtype() == dt);
  CHECK(out.mean.dtype() == dt);
  CHECK(out.mean.shape() == Shape{3, 5});
  CHECK_CLOSE(out.y, ref.y, 1e-5, tol(dt));
  CHECK_CLOSE(out.mean, ref.mean, 1e-5, tol(dt));
  CHECK_CLOSE(out.rstd, ref.rstd, 1e-5, tol(dt));
}

// One backward problem: x, g [37, d], optional weight, the forward statistics, and the
// reference and kernel gradients (the kernel's on non-contiguous g and x).
struct BackwardCase {
  Tensor w;
  bool has_bias;
  kernels::LayerNormGrads ref, got;
};

// Calls f(case) over widths d in {1, 7, 130}, with and without weight and bias. Each dtype has
// its own run of 36 random streams.
template <class F>
void backward_sweep(DType dt, F f) {
  uint64_t stream = dt == DType::f64 ? 86 : 50;
  for (int64_t d : {1, 7, 130})
    for (int variant = 0; variant < 4; ++variant) {
      CAPTURE(d);
      CAPTURE(variant);
      Tensor x = randn({37, d}, ++stream, dt);
      Tensor g = randn({37, d}, ++stream, dt);
      Tensor w = variant & 1 ? randn({d}, ++stream, dt) : Tensor();
      const bool has_bias = variant & 2;
      auto fw = kernels::layernorm(x, w, has_bias ? randn({d}, ++stream, dt) : Tensor(), 1e-6);
      auto ref = kernels::ref::layernorm_backward(g, x, w, fw.mean, fw.rstd, has_bias);
      auto got = kernels::layernorm_backward(testing::non_contiguous(g), testing::non_contiguous(x),
                                             w, fw.mean, fw.rstd, has_bias);
      f(BackwardCase{w, has_bias, ref, got});
    }
}

// Rows of 1e4 + small noise in f32: a one-pass E[x²] - E[x]² in f32 would lose every digit.
Tensor offset_rows(int64_t d) { return Tensor::normal({9, d}, 7, 3, 1e4, 0.05, DType::f32); }

// Large enough (300 × 130) for the parallel path.
struct ThreadedBackward {
  Tensor x = randn({300, 130}, 1), g = randn({300, 130}, 2), w = randn({130}, 3);
  kernels::LayerNormOut f = kernels::layernorm(x, w, Tensor(), 1e-6);
  // The backward with `threads` OpenMP threads.
  kernels::LayerNormGrads backward(int threads) const {
    const int prev = omp_get_max_threads();
    omp_set_num_threads(threads);
    auto d = kernels::layernorm_backward(g, x, w, f.mean, f.rstd, true);
    omp_set_num_threads(prev);
    return d;
  }
  static int many_threads() { return std::max(omp_get_max_threads(), 2); }
};

void check_gradcheck(const autograd::GradcheckResult& r) {
  INFO(r.detail);
  CHECK(r.ok);
}

}  // namespace

TEST_CASE_TEMPLATE("layernorm: forward matches the reference, with and without weight and bias", T,
                   float, double) {
  forward_sweep(engine::dtype_v<T>, [](const Tensor& x, const Tensor& w, const Tensor& b) {
    check_forward(x, w, b, kernels::ref::layernorm(x, w, b, 1e-6));
  });
}

TEST_CASE_TEMPLATE("layernorm: forward on non-contiguous input matches the reference", T, float,
                   double) {
  forward_sweep(engine::dtype_v<T>, [](const Tensor& x, const Tensor& w, const Tensor& b) {
    check_forward(testing::non_contiguous(x), w, b, kernels::ref::layernorm(x, w, b, 1e-6));
  });
}

TEST_CASE("layernorm: constant rows give y = bias and rstd = 1/sqrt(eps)") {
  // Variance 0: y = bias exactly.
  Tensor x = Tensor::full({4, 13}, 3.25);
  Tensor b = randn({13}, 1);
  auto out = kernels::layernorm(x, randn({13}, 2), b, 1e-5);
  CHECK_CLOSE(out.y, b.expand({4, 13}), 0, 0);
  CHECK_CLOSE(out.rstd, Tensor::full({4}, 1.0 / std::sqrt(1e-5), DType::f64), 1e-6, 0);
}

TEST_CASE("layernorm: forward keeps its precision at large offsets") {
  for (int64_t d : {7, 130, 385}) {
    CAPTURE(d);
    Tensor xo = offset_rows(d);
    auto ref = kernels::ref::layernorm(xo, Tensor(), Tensor(), 1e-6);
    auto got = kernels::layernorm(xo, Tensor(), Tensor(), 1e-6);
    CHECK_CLOSE(got.y, ref.y, 1e-5, 1e-5);
    CHECK_CLOSE(got.rstd, ref.rstd, 1e-5, 0);
  }
}

TEST_CASE("layernorm: backward keeps its precision at large offsets") {
  for (int64_t d : {7, 130, 385}) {
    CAPTURE(d);
    Tensor xo = offset_rows(d);
    auto ref = kernels::ref::layernorm(xo, Tensor(), Tensor(), 1e-6);
    auto got = kernels::layernorm(xo, Tensor(), Tensor(), 1e-6);
    auto g = randn({9, d}, 4);
    auto dref = kernels::ref::layernorm_backward(g, xo, Tensor(), ref.mean, ref.rstd, false);
    auto dgot = kernels::layernorm_backward(g, xo, Tensor(), got.mean, got.rstd, false);
    // dx scales with rstd (~20 here).
    CHECK_CLOSE(dgot.dx, dref.dx, 1e-4, 1e-3);
  }
}

TEST_CASE_TEMPLATE("layernorm: backward dx on non-contiguous input matches the reference", T, float,
                   double) {
  const DType dt = engine::dtype_v<T>;
  backward_sweep(dt, [&](const BackwardCase& c) {
    // dx is a difference of O(1) terms: tolerance relative to the row scale.
    CHECK_CLOSE(c.got.dx, c.ref.dx, 1e-5, 50 * tol(dt));
  });
}

TEST_CASE_TEMPLATE("layernorm: backward weight and bias gradients match the reference", T, float,
                   double) {
  const DType dt = engine::dtype_v<T>;
  backward_sweep(dt, [&](const BackwardCase& c) {
    CHECK(c.got.dweight.defined() == c.w.defined());
    CHECK(c.got.dbias.defined() == c.has_bias);
    if (c.w.defined()) CHECK_CLOSE(c.got.dweight, c.ref.dweight, 1e-5, 20 * tol(dt));
    if (c.has_bias) CHECK_CLOSE(c.got.dbias, c.ref.dbias, 1e-5, 20 * tol(dt));
  });
}

TEST_CASE("layernorm: backward is the same for any thread count") {
  const ThreadedBackward t;
  auto one = t.backward(1), many = t.backward(ThreadedBackward::many_threads());
  CHECK(one.dweight.to_vector<float>() == many.dweight.to_vector<float>());
  CHECK(one.dbias.to_vector<float>() == many.dbias.to_vector<float>());
  CHECK(one.dx.to_vector<float>() == many.dx.to_vector<float>());
}

TEST_CASE("layernorm: threaded weight gradient matches the reference") {
  const ThreadedBackward t;
  auto many = t.backward(ThreadedBackward::many_threads());
  auto ref = kernels::ref::layernorm_backward(t.g, t.x, t.w, t.f.mean, t.f.rstd, true);
  CHECK_CLOSE(many.dweight, ref.dweight, 1e-5, 1e-4);
}

TEST_CASE("layernorm: bf16 forward is computed in f32, y in bf16, statistics in f32") {
  Tensor x = randn({5, 130}, 1, DType::bf16), w = randn({130}, 2);
  auto out = kernels::layernorm(x, w, Tensor(), 1e-6);
  CHECK(out.y.dtype() == DType::bf16);
  CHECK(out.mean.dtype() == DType::f32);
  auto ref = kernels::ref::layernorm(x, w, Tensor(), 1e-6);
  CHECK_CLOSE(out.y, ref.y, 1.0 / 128, 1e-3);
  CHECK_CLOSE(out.rstd, ref.rstd, 1e-5, 0);
}

TEST_CASE("layernorm: bf16 backward gives dx in bf16") {
  Tensor x = randn({5, 130}, 1, DType::bf16), w = randn({130}, 2);
  auto out = kernels::layernorm(x, w, Tensor(), 1e-6);
  auto g = randn({5, 130}, 3, DType::bf16);
  auto d = kernels::layernorm_backward(g, x, w, out.mean, out.rstd, false);
  CHECK(d.dx.dtype() == DType::bf16);
  auto dref = kernels::ref::layernorm_backward(g, x, w, out.mean, out.rstd, false);
  CHECK_CLOSE(d.dx, dref.dx, 1.0 / 64, 2e-2);
  CHECK_CLOSE(d.dweight, dref.dweight, 1e-4, 1e-4);
}

TEST_CASE("layernorm: forward errors") {
  Tensor x = Tensor::zeros({3, 7});
  CHECK_THROWS_CONTAINING(kernels::layernorm(x, Tensor::ones({5}), Tensor(), 1e-6),
                          "layernorm: weight f32[5] does not match the last dim of f32[3, 7]");
  CHECK_THROWS_CONTAINING(kernels::layernorm(x, Tensor(), Tensor::ones({7, 1}), 1e-6),
                          "layernorm: bias f32[7, 1] does not match");
  CHECK_THROWS_CONTAINING(
      kernels::layernorm(Tensor::zeros({3, 7}, DType::i32), Tensor(), Tensor(), 1e-6),
      "layernorm: expected a floating dtype");
  CHECK_THROWS_CONTAINING(kernels::layernorm(Tensor::zeros({3, 0}), Tensor(), Tensor(), 1e-6),
                          "non-empty last dim");
}

TEST_CASE("layernorm: backward errors") {
  Tensor x = Tensor::zeros({3, 7});
  CHECK_THROWS_CONTAINING(
      kernels::layernorm_backward(Tensor::zeros({3, 7}), x, Tensor(), Tensor::zeros({4}),
                                  Tensor::zeros({3}), false),
      "layernorm_backward: saved statistics f32[4] do not match the rows of f32[3, 7]");
}

TEST_CASE("layernorm: no rows give empty outputs and zero parameter gradients") {
  auto e = kernels::layernorm(Tensor::zeros({0, 7}), Tensor::ones({7}), Tensor(), 1e-6);
  CHECK(e.y.shape() == Shape{0, 7});
  auto eg = kernels::layernorm_backward(Tensor::zeros({0, 7}), Tensor::zeros({0, 7}),
                                        Tensor::ones({7}), e.mean, e.rstd, true);
  CHECK(eg.dweight.to_vector<float>() == std::vector<float>(7, 0.0f));
}

TEST_CASE("layernorm: layer_norm gradcheck for x, weight and bias") {
  check_gradcheck(autograd::gradcheck(
      [](const std::vector<autograd::Var>& v) {
        return autograd::layer_norm(v[0], v[1], v[2], 1e-5);
      },
      {randn({2, 3, 7}, 1, DType::f64), randn({7}, 2, DType::f64), randn({7}, 3, DType::f64)}));
}

TEST_CASE("layernorm: layer_norm gradcheck with weight only") {
  check_gradcheck(autograd::gradcheck(
      [](const std::vector<autograd::Var>& v) {
        return autograd::layer_norm(v[0], v[1], autograd::Var(), 1e-5);
      },
      {randn({2, 3, 7}, 1, DType::f64), randn({7}, 4, DType::f64)}));
}

TEST_CASE("layernorm: layer_norm gradcheck without weight and bias") {
  check_gradcheck(autograd::gradcheck(
      [](const std::vector<autograd::Var>& v) {
        return autograd::layer_norm(v[0], autograd::Var(), autograd::Var(), 1e-5);
      },
      {randn({4, 5}, 5, DType::f64)}));
}
