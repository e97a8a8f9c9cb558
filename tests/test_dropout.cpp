// Dropout: the mask against the definition (reference), drop rate, exact scaling, key
// determinism, backward reusing the mask, p = 0, errors, and gradcheck with a fixed key.
#include <cmath>

#include "autograd/dropout.h"
#include "autograd/gradcheck.h"
#include "kernels/dropout.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;
using testing::randu;

namespace {

const int64_t kLarge = 100003;
const double kRates[] = {0.1, 0.5, 0.9};

// No zeros, so a zero output means dropped.
Tensor large_input() { return randu({kLarge}, 1, 0.5, 2.0); }

// [7, 13, 37] input without zeros, its output at p = 0.3 with key (5, 1), and the mask of kept
// elements of a result.
Tensor small_input() { return randu({7, 13, 37}, 2, 0.5, 2.0); }
Tensor small_output(const Tensor& x) { return kernels::dropout(x, 0.3, 5, 1); }
std::vector<bool> mask(const Tensor& y) {
  std::vector<bool> m;
  for (float v : y.to_vector<float>()) m.push_back(v != 0.0f);
  return m;
}

}  // namespace

TEST_CASE("dropout: forward matches the reference") {
  Tensor x = large_input();
  for (double p : kRates) {
    CAPTURE(p);
    Tensor y = kernels::dropout(x, p, 42, 7);
    CHECK(y.dtype() == DType::f32);
    CHECK_CLOSE(y, kernels::ref::dropout(x, p, 42, 7), 1e-6, 0);
  }
}

TEST_CASE("dropout: kept elements are scaled by exactly 1 / (1 - p)") {
  Tensor x = large_input();
  auto xv = x.to_vector<float>();
  for (double p : kRates) {
    CAPTURE(p);
    auto yv = kernels::dropout(x, p, 42, 7).to_vector<float>();
    const float scale = float(1.0 / (1.0 - p));
    bool exact = true;
    for (int64_t i = 0; i < kLarge; ++i)
      if (yv[i] != 0.0f) exact = exact && yv[i] == xv[i] * scale;
    CHECK(exact);
  }
}

TEST_CASE("dropout: the dropped fraction is close to p") {
  Tensor x = large_input();
  for (double p : kRates) {
    CAPTURE(p);
    auto yv = kernels::dropout(x, p, 42, 7).to_vector<float>();
    int64_t dropped = 0;
    for (int64_t i = 0; i < kLarge; ++i) dropped += yv[i] == 0.0f;
    // 6 standard deviations of a binomial proportion.
    CHECK(std::abs(double(dropped) / kLarge - p) < 6 * std::sqrt(p * (1 - p) / kLarge));
  }
}

TEST_CASE("dropout: the key decides the mask") {
  Tensor x = small_input();
  Tensor y = small_output(x);
  CHECK(mask(y) == mask(kernels::dropout(x, 0.3, 5, 1)));
  CHECK(mask(y) != mask(kernels::dropout(x, 0.3, 5, 2)));
  CHECK(mask(y) != mask(kernels::dropout(x, 0.3, 6, 1)));
}

TEST_CASE("dropout: the mask follows the logical index of a non-contiguous input") {
  Tensor x = small_input();
  CHECK(small_output(x).to_vector<float>() ==
        kernels::dropout(testing::non_contiguous(x), 0.3, 5, 1).to_vector<float>());
}

TEST_CASE("dropout: backward applies the forward's mask") {
  Tensor y = small_output(small_input());
  Tensor g = randu({7, 13, 37}, 3, 0.5, 2.0);
  Tensor dx = kernels::dropout_backward(g, 0.3, 5, 1);
  CHECK(mask(dx) == mask(y));
  CHECK_CLOSE(dx, kernels::ref::dropout(g, 0.3, 5, 1), 1e-6, 0);
}

TEST_CASE("dropout: f64 and bf16 inputs draw the same mask") {
  Tensor x = small_input();
  Tensor y = small_output(x);
  CHECK(mask(kernels::dropout(x.to(DType::f64), 0.3, 5, 1)) == mask(y));
  Tensor yb = kernels::dropout(x.to(DType::bf16), 0.3, 5, 1);
  CHECK(yb.dtype() == DType::bf16);
  CHECK(mask(yb) == mask(y));
  CHECK_CLOSE(yb, kernels::ref::dropout(x.to(DType::bf16), 0.3, 5, 1), 1.0 / 128, 0);
}

TEST_CASE("dropout: p = 0 is the identity") {
  Tensor x = randn({5, 7}, 1);
  Tensor y = kernels::dropout(x, 0.0, 1, 2);
  CHECK(y.shares_storage(x));
  CHECK(y.to_vector<float>() == x.to_vector<float>());
}

TEST_CASE("dropout: p outside [0, 1) and integer input are errors") {
  Tensor x = randn({5, 7}, 1);
  CHECK_THROWS_CONTAINING(kernels::dropout(x, 1.0, 1, 2), "dropout: p must be in [0, 1), got 1");
  CHECK_THROWS_CONTAINING(kernels::dropout(x, -0.1, 1, 2), "p must be in [0, 1)");
  CHECK_THROWS_CONTAINING(kernels::dropout_backward(x, 1.5, 1, 2), "dropout_backward: p must be");
  CHECK_THROWS_CONTAINING(autograd::dropout(autograd::Var(x), 1.0, 1, 2, false),
                          "p must be in [0, 1)");
  CHECK_THROWS_CONTAINING(kernels::dropout(Tensor::zeros({3}, DType::i32), 0.5, 1, 2),
                          "expected a floating dtype");
}

TEST_CASE("dropout: empty input gives an empty output") {
  CHECK(kernels::dropout(Tensor::empty({0, 3}), 0.5, 1, 2).shape() == Shape{0, 3});
}

TEST_CASE("dropout: not training returns the input itself") {
  autograd::Var v(randn({5, 7}, 1), true);
  CHECK(autograd::dropout(v, 0.5, 1, 2, false).impl() == v.impl());
}

TEST_CASE("dropout: gradcheck with a fixed key") {
  auto r = autograd::gradcheck(
      [](const std::vector<autograd::Var>& v) { return autograd::dropout(v[0], 0.4, 11, 3); },
      {randn({3, 7}, 1, DType::f64)});
  INFO(r.detail);
  CHECK(r.ok);
}
