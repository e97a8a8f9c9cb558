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
}  // namespace

TEST_CASE("layernorm: forward vs reference, with and without weight and bias, odd widths") {
  uint64_t stream = 0;
  for (DType dt : {DType::f32, DType::f64})
    for (int64_t d : {1, 7, 130, 385})
      for (int variant = 0; variant < 4; ++variant) {
        CAPTURE(d);
        CAPTURE(variant);
        Tensor x = randn({3, 5, d}, ++stream, dt, 2.0);
        Tensor w = variant & 1 ? randn({d}, ++stream, dt) : Tensor();
        Tensor b = variant & 2 ? randn({d}, ++stream, dt) : Tensor();
        auto ref = kernels::ref::layernorm(x, w, b, 1e-6);
        for (const Tensor& in : {x, testing::non_contiguous(x)}) {
          auto out = kernels::layernorm(in, w, b, 1e-6);
          CHECK(out.y.dtype() == dt);
          CHECK(out.mean.dtype() == dt);
          CHECK(out.mean.shape() == Shape{3, 5});
          CHECK_CLOSE(out.y, ref.y, 1e-5, tol(dt));
          CHECK_CLOSE(out.mean, ref.mean, 1e-5, tol(dt));
          CHECK_CLOSE(out.rstd, ref.rstd, 1e-5, tol(dt));
        }
      }
}

TEST_CASE("layernorm: constant rows and large offsets keep their precision") {
  // Constant rows: variance 0, y = bias exactly, rstd = 1/sqrt(eps).
  Tensor x = Tensor::full({4, 13}, 3.25);
  Tensor b = randn({13}, 1);
  auto out = kernels::layernorm(x, randn({13}, 2), b, 1e-5);
  CHECK_CLOSE(out.y, b.expand({4, 13}), 0, 0);
  CHECK_CLOSE(out.rstd, Tensor::full({4}, 1.0 / std::sqrt(1e-5), DType::f64), 1e-6, 0);
  // 1e4 + small noise in f32: a one-pass E[x²] - E[x]² in f32 would lose every digit here.
  for (int64_t d : {7, 130, 385}) {
    Tensor xo = Tensor::normal({9, d}, 7, 3, 1e4, 0.05, DType::f32);
    auto ref = kernels::ref::layernorm(xo, Tensor(), Tensor(), 1e-6);
    auto got = kernels::layernorm(xo, Tensor(), Tensor(), 1e-6);
    CHECK_CLOSE(got.y, ref.y, 1e-5, 1e-5);
    CHECK_CLOSE(got.rstd, ref.rstd, 1e-5, 0);
    auto g = randn({9, d}, 4);
    auto dref = kernels::ref::layernorm_backward(g, xo, Tensor(), ref.mean, ref.rstd, false);
    auto dgot = kernels::layernorm_backward(g, xo, Tensor(), got.mean, got.rstd, false);
    // dx scales with rstd (~20 here).
    CHECK_CLOSE(dgot.dx, dref.dx, 1e-4, 1e-3);
  }
}

TEST_CASE("layernorm: backward vs reference, with and without weight and bias") {
  uint64_t stream = 50;
  for (DType dt : {DType::f32, DType::f64})
    for (int64_t d : {1, 7, 130})
      for (int variant = 0; variant < 4; ++variant) {
        CAPTURE(d);
        CAPTURE(variant);
        Tensor x = randn({37, d}, ++stream, dt);
        Tensor g = randn({37, d}, ++stream, dt);
        Tensor w = variant & 1 ? randn({d}, ++stream, dt) : Tensor();
        const bool has_bias = variant & 2;
        auto f = kernels::layernorm(x, w, has_bias ? randn({d}, ++stream, dt) : Tensor(), 1e-6);
        auto ref = kernels::ref::layernorm_backward(g, x, w, f.mean, f.rstd, has_bias);
        auto got = kernels::layernorm_backward(
            testing::non_contiguous(g), testing::non_contiguous(x), w, f.mean, f.rstd, has_bias);
        // dx is a difference of O(1) terms: tolerance relative to the row scale.
        CHECK_CLOSE(got.dx, ref.dx, 1e-5, 50 * tol(dt));
        CHECK(got.dweight.defined() == w.defined());
        CHECK(got.dbias.defined() == has_bias);
        if (w.defined()) CHECK_CLOSE(got.dweight, ref.dweight, 1e-5, 20 * tol(dt));
        if (has_bias) CHECK_CLOSE(got.dbias, ref.dbias, 1e-5, 20 * tol(dt));
      }
}

TEST_CASE("layernorm: weight gradient is the same for any thread count") {
  // Large enough (300 × 130) for the parallel path.
  Tensor x = randn({300, 130}, 1), g = randn({300, 130}, 2), w = randn({130}, 3);
  auto f = kernels::layernorm(x, w, Tensor(), 1e-6);
  const int prev = omp_get_max_threads();
  omp_set_num_threads(1);
  auto one = kernels::layernorm_backward(g, x, w, f.mean, f.rstd, true);
  omp_set_num_threads(std::max(prev, 2));
  auto many = kernels::layernorm_backward(g, x, w, f.mean, f.rstd, true);
  omp_set_num_threads(prev);
  CHECK(one.dweight.to_vector<float>() == many.dweight.to_vector<float>());
  CHECK(one.dbias.to_vector<float>() == many.dbias.to_vector<float>());
  CHECK(one.dx.to_vector<float>() == many.dx.to_vector<float>());
  auto ref = kernels::ref::layernorm_backward(g, x, w, f.mean, f.rstd, true);
  CHECK_CLOSE(many.dweight, ref.dweight, 1e-5, 1e-4);
}

TEST_CASE("layernorm: bf16 input is computed in f32, y in bf16, statistics in f32") {
  Tensor x = randn({5, 130}, 1, DType::bf16), w = randn({130}, 2);
  auto out = kernels::layernorm(x, w, Tensor(), 1e-6);
  CHECK(out.y.dtype() == DType::bf16);
  CHECK(out.mean.dtype() == DType::f32);
  auto ref = kernels::ref::layernorm(x, w, Tensor(), 1e-6);
  CHECK_CLOSE(out.y, ref.y, 1.0 / 128, 1e-3);
  CHECK_CLOSE(out.rstd, ref.rstd, 1e-5, 0);
  auto g = randn({5, 130}, 3, DType::bf16);
  auto d = kernels::layernorm_backward(g, x, w, out.mean, out.rstd, false);
  CHECK(d.dx.dtype() == DType::bf16);
  auto dref = kernels::ref::layernorm_backward(g, x, w, out.mean, out.rstd, false);
  CHECK_CLOSE(d.dx, dref.dx, 1.0 / 64, 2e-2);
  CHECK_CLOSE(d.dweight, dref.dweight, 1e-4, 1e-4);
}

TEST_CASE("layernorm: errors") {
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
  CHECK_THROWS_CONTAINING(
      kernels::layernorm_backward(Tensor::zeros({3, 7}), x, Tensor(), Tensor::zeros({4}),
                                  Tensor::zeros({3}), false),
      "layernorm_backward: saved statistics f32[4] do not match the rows of f32[3, 7]");
  // No rows: empty outputs, zero parameter gradients.
  auto e = kernels::layernorm(Tensor::zeros({0, 7}), Tensor::ones({7}), Tensor(), 1e-6);
  CHECK(e.y.shape() == Shape{0, 7});
  auto eg = kernels::layernorm_backward(Tensor::zeros({0, 7}), Tensor::zeros({0, 7}),
                                        Tensor::ones({7}), e.mean, e.rstd, true);
  CHECK(eg.dweight.to_vector<float>() == std::vector<float>(7, 0.0f));
}

TEST_CASE("layernorm: gradients of layer_norm for x, weight and bias (gradcheck f64)") {
  using autograd::Var;
  auto full = [](const std::vector<Var>& v) {
    return autograd::layer_norm(v[0], v[1], v[2], 1e-5);
  };
  auto scale_only = [](const std::vector<Var>& v) {
    return autograd::layer_norm(v[0], v[1], Var(), 1e-5);
  };
  auto plain = [](const std::vector<Var>& v) {
    return autograd::layer_norm(v[0], Var(), Var(), 1e-5);
  };
  Tensor x = randn({2, 3, 7}, 1, DType::f64);
  auto r1 = autograd::gradcheck(full, {x, randn({7}, 2, DType::f64), randn({7}, 3, DType::f64)});
  INFO(r1.detail);
  CHECK(r1.ok);
  auto r2 = autograd::gradcheck(scale_only, {x, randn({7}, 4, DType::f64)});
  INFO(r2.detail);
  CHECK(r2.ok);
  auto r3 = autograd::gradcheck(plain, {randn({4, 5}, 5, DType::f64)});
  INFO(r3.detail);
  CHECK(r3.ok);
}
