// bias + GELU (tanh): forward and backward kernels against the f64 reference on odd shapes, f32,
// f64 and bf16, non-contiguous inputs, the backward against finite differences of the forward,
// extreme inputs, deterministic bias gradients, empty tensors and errors.
#include <omp.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/bias_gelu.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {
// f32 holds gelu to a few ulp (the vectorised exp is ~1.4 ulp).
double rtol(DType dt) { return dt == DType::f64 ? 1e-12 : 1e-5; }
double atol(DType dt) { return dt == DType::f64 ? 1e-13 : 1e-6; }
}  // namespace

TEST_CASE("bias_gelu: forward and backward vs reference on odd shapes, f32 and f64") {
  uint64_t stream = 0;
  for (DType dt : {DType::f32, DType::f64})
    for (Shape s : {Shape{1}, Shape{1, 1}, Shape{7, 13}, Shape{3, 5, 37}, Shape{130, 9}}) {
      CAPTURE(s);
      CAPTURE(dt);
      const int64_t d = s[s.size() - 1];
      Tensor x = randn(s, ++stream, dt, 2.5);
      Tensor b = randn({d}, ++stream, dt);
      Tensor g = randn(s, ++stream, dt);
      Tensor y = kernels::bias_gelu(x, b);
      CHECK(y.dtype() == dt);
      CHECK(y.shape() == s);
      CHECK_CLOSE(y, kernels::ref::bias_gelu(x, b), rtol(dt), atol(dt));
      auto got = kernels::bias_gelu_backward(g, x, b);
      auto ref = kernels::ref::bias_gelu_backward(g, x, b);
      CHECK(got.dx.dtype() == dt);
      CHECK(got.dbias.dtype() == dt);
      CHECK_CLOSE(got.dx, ref.dx, rtol(dt), atol(dt));
      // dbias sums over every leading row: its error grows with their number.
      CHECK_CLOSE(got.dbias, ref.dbias, rtol(dt), atol(dt) * double(x.numel() / d));
    }
}

TEST_CASE("bias_gelu: non-contiguous x, g and bias give the same results") {
  Tensor x = randn({13, 7}, 1, DType::f32, 2.0), g = randn({13, 7}, 2), b = randn({7}, 3);
  Tensor y = kernels::bias_gelu(x, b);
  auto d = kernels::bias_gelu_backward(g, x, b);
  Tensor xn = testing::non_contiguous(x), gn = testing::non_contiguous(g);
  Tensor bn = testing::non_contiguous(b);
  CHECK(!xn.is_contiguous());
  CHECK(!bn.is_contiguous());
  CHECK(kernels::bias_gelu(xn, bn).to_vector<float>() == y.to_vector<float>());
  auto dn = kernels::bias_gelu_backward(gn, xn, bn);
  CHECK(dn.dx.to_vector<float>() == d.dx.to_vector<float>());
  CHECK(dn.dbias.to_vector<float>() == d.dbias.to_vector<float>());
  // A broadcast (stride 0) x works too.
  Tensor xe = randn({1, 7}, 4).expand({5, 7});
  CHECK_CLOSE(kernels::bias_gelu(xe, b), kernels::ref::bias_gelu(xe, b), 1e-5, 1e-6);
}

TEST_CASE("bias_gelu: bf16 input is computed in f32 and returned in bf16") {
  Tensor x = randn({9, 37}, 5, DType::bf16, 2.0), g = randn({9, 37}, 6, DType::bf16);
  Tensor b = randn({37}, 7);  // an f32 bias with bf16 activations
  Tensor y = kernels::bias_gelu(x, b);
  CHECK(y.dtype() == DType::bf16);
  // The reference on the same (bf16-exact) inputs, then one bf16 rounding: |err| <= 2^-8 |ref|.
  CHECK_CLOSE(y, kernels::ref::bias_gelu(x, b), 1.0 / 256, 1e-6);
  auto got = kernels::bias_gelu_backward(g, x, b);
  auto ref = kernels::ref::bias_gelu_backward(g, x, b);
  CHECK(got.dx.dtype() == DType::bf16);
  CHECK(got.dbias.dtype() == DType::f32);
  CHECK_CLOSE(got.dx, ref.dx, 1.0 / 256, 1e-6);
  // dbias is summed from the f32 dx, before its rounding to bf16.
  CHECK_CLOSE(got.dbias, ref.dbias, 1e-5, 1e-5);
}

TEST_CASE("bias_gelu: the backward agrees with finite differences of the forward (f64)") {
  Tensor x = randn({3, 5}, 8, DType::f64, 2.0), b = randn({5}, 9, DType::f64);
  Tensor g = randn({3, 5}, 10, DType::f64);
  auto grads = kernels::bias_gelu_backward(g, x, b);
  const std::vector<double> gv = g.to_vector<double>();
  // L(x, b) = Σ g · bias_gelu(x, b); central differences with h = 1e-6.
  auto loss = [&](const Tensor& xx, const Tensor& bb) {
    const std::vector<double> y = kernels::bias_gelu(xx, bb).to_vector<double>();
    double s = 0;
    for (size_t i = 0; i < y.size(); ++i) s += gv[i] * y[i];
    return s;
  };
  const double h = 1e-6;
  std::vector<double> xv = x.to_vector<double>(), bv = b.to_vector<double>();
  const std::vector<double> dx = grads.dx.to_vector<double>(), db = grads.dbias.to_vector<double>();
  for (size_t i = 0; i < xv.size(); ++i) {
    std::vector<double> p = xv, m = xv;
    p[i] += h;
    m[i] -= h;
    const double num = (loss(Tensor::from_vector(p, x.shape()), b) -
                        loss(Tensor::from_vector(m, x.shape()), b)) / (2 * h);
    CHECK(dx[i] == doctest::Approx(num).epsilon(1e-7));
  }
  for (size_t j = 0; j < bv.size(); ++j) {
    std::vector<double> p = bv, m = bv;
    p[j] += h;
    m[j] -= h;
    const double num = (loss(x, Tensor::from_vector(p, b.shape())) -
                        loss(x, Tensor::from_vector(m, b.shape()))) / (2 * h);
    CHECK(db[j] == doctest::Approx(num).epsilon(1e-7));
  }
}

TEST_CASE("bias_gelu: extreme inputs follow gelu's limits; NaN propagates") {
  const float inf = std::numeric_limits<float>::infinity();
  Tensor x = Tensor::from_vector(std::vector<float>{-1e30f, -200.f, -30.f, 0.f, 30.f, 200.f, 1e30f, inf,
                                                    std::numeric_limits<float>::quiet_NaN()},
                                 {9});
  Tensor b = Tensor::zeros({9});
  std::vector<float> y = kernels::bias_gelu(x, b).to_vector<float>();
  CHECK(y[0] == 0.0f);  // -0: x·sigmoid(2u) underflows to zero
  CHECK(y[1] == 0.0f);
  CHECK(std::abs(y[2]) < 1e-30f);
  CHECK(y[3] == 0.0f);
  CHECK(y[4] == 30.0f);
  CHECK(y[5] == 200.0f);
  CHECK(y[6] == 1e30f);
  CHECK(y[7] == inf);
  CHECK(std::isnan(y[8]));
  std::vector<float> dx = kernels::bias_gelu_backward(Tensor::ones({9}), x, b).dx.to_vector<float>();
  CHECK(dx[1] == 0.0f);
  CHECK(dx[3] == doctest::Approx(0.5));
  CHECK(dx[5] == 1.0f);
  CHECK(std::isnan(dx[8]));
}

TEST_CASE("bias_gelu: the bias gradient does not depend on the thread count") {
  Tensor x = randn({300, 130}, 11), g = randn({300, 130}, 12), b = randn({130}, 13);
  const int prev = omp_get_max_threads();
  omp_set_num_threads(1);
  auto one = kernels::bias_gelu_backward(g, x, b);
  omp_set_num_threads(3);
  auto three = kernels::bias_gelu_backward(g, x, b);
  omp_set_num_threads(prev);
  CHECK(one.dbias.to_vector<float>() == three.dbias.to_vector<float>());
  CHECK(one.dx.to_vector<float>() == three.dx.to_vector<float>());
}

TEST_CASE("bias_gelu: empty tensors and errors") {
  CHECK(kernels::bias_gelu(Tensor::zeros({0, 5}), Tensor::zeros({5})).shape() == Shape{0, 5});
  auto e = kernels::bias_gelu_backward(Tensor::zeros({0, 5}), Tensor::zeros({0, 5}), Tensor::ones({5}));
  CHECK(e.dbias.to_vector<float>() == std::vector<float>(5, 0.0f));
  CHECK(kernels::bias_gelu(Tensor::zeros({3, 0}), Tensor::zeros({0})).shape() == Shape{3, 0});
  Tensor x = randn({3, 4}, 1);
  CHECK_THROWS_CONTAINING(kernels::bias_gelu(x, Tensor::zeros({5})),
                          "bias_gelu: bias f32[5] does not match the last dim of f32[3, 4]");
  CHECK_THROWS_CONTAINING(kernels::bias_gelu(x, Tensor::zeros({1, 4})), "does not match the last dim");
  CHECK_THROWS_CONTAINING(kernels::bias_gelu(x, Tensor()), "bias_gelu");
  CHECK_THROWS_CONTAINING(kernels::bias_gelu(Tensor::scalar(1.0), Tensor::zeros({1})),
                          "expected at least 1-D input");
  CHECK_THROWS_CONTAINING(kernels::bias_gelu(Tensor::zeros({3, 4}, DType::i64), Tensor::zeros({4})),
                          "expected a floating dtype");
  CHECK_THROWS_CONTAINING(kernels::bias_gelu(x, Tensor::zeros({4}, DType::i32)), "bias must be floating");
  CHECK_THROWS_CONTAINING(kernels::bias_gelu_backward(randn({3, 5}, 2), x, Tensor::zeros({4})),
                          "bias_gelu_backward");
}
