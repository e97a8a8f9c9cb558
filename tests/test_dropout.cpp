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

TEST_CASE("dropout: forward vs reference; drop fraction close to p; exact scaling") {
  const int64_t n = 100003;
  Tensor x = randu({n}, 1, 0.5, 2.0);  // no zeros, so a zero output means dropped
  for (double p : {0.1, 0.5, 0.9}) {
    CAPTURE(p);
    Tensor y = kernels::dropout(x, p, 42, 7);
    CHECK(y.dtype() == DType::f32);
    CHECK_CLOSE(y, kernels::ref::dropout(x, p, 42, 7), 1e-6, 0);
    auto xv = x.to_vector<float>(), yv = y.to_vector<float>();
    const float scale = float(1.0 / (1.0 - p));
    int64_t dropped = 0;
    bool exact = true;
    for (int64_t i = 0; i < n; ++i) {
      if (yv[i] == 0.0f)
        ++dropped;
      else
        exact = exact && yv[i] == xv[i] * scale;
    }
    CHECK(exact);
    // 6 standard deviations of a binomial proportion.
    CHECK(std::abs(double(dropped) / n - p) < 6 * std::sqrt(p * (1 - p) / n));
  }
}

TEST_CASE("dropout: the key decides the mask; backward applies the same mask") {
  Tensor x = randu({7, 13, 37}, 2, 0.5, 2.0);
  auto mask = [](const Tensor& y) {
    std::vector<bool> m;
    for (float v : y.to_vector<float>()) m.push_back(v != 0.0f);
    return m;
  };
  Tensor y = kernels::dropout(x, 0.3, 5, 1);
  CHECK(mask(y) == mask(kernels::dropout(x, 0.3, 5, 1)));
  CHECK(mask(y) != mask(kernels::dropout(x, 0.3, 5, 2)));
  CHECK(mask(y) != mask(kernels::dropout(x, 0.3, 6, 1)));
  // The mask follows the logical (row-major) index, whatever the layout.
  CHECK(y.to_vector<float>() ==
        kernels::dropout(testing::non_contiguous(x), 0.3, 5, 1).to_vector<float>());
  Tensor g = randu({7, 13, 37}, 3, 0.5, 2.0);
  Tensor dx = kernels::dropout_backward(g, 0.3, 5, 1);
  CHECK(mask(dx) == mask(y));
  CHECK_CLOSE(dx, kernels::ref::dropout(g, 0.3, 5, 1), 1e-6, 0);
  // f64 and bf16 draw the same mask.
  CHECK(mask(kernels::dropout(x.to(DType::f64), 0.3, 5, 1)) == mask(y));
  Tensor yb = kernels::dropout(x.to(DType::bf16), 0.3, 5, 1);
  CHECK(yb.dtype() == DType::bf16);
  CHECK(mask(yb) == mask(y));
  CHECK_CLOSE(yb, kernels::ref::dropout(x.to(DType::bf16), 0.3, 5, 1), 1.0 / 128, 0);
}

TEST_CASE("dropout: p = 0 is the identity; p outside [0, 1) is an error") {
  Tensor x = randn({5, 7}, 1);
  Tensor y = kernels::dropout(x, 0.0, 1, 2);
  CHECK(y.shares_storage(x));
  CHECK(y.to_vector<float>() == x.to_vector<float>());
  CHECK_THROWS_CONTAINING(kernels::dropout(x, 1.0, 1, 2), "dropout: p must be in [0, 1), got 1");
  CHECK_THROWS_CONTAINING(kernels::dropout(x, -0.1, 1, 2), "p must be in [0, 1)");
  CHECK_THROWS_CONTAINING(kernels::dropout_backward(x, 1.5, 1, 2), "dropout_backward: p must be");
  CHECK_THROWS_CONTAINING(autograd::dropout(autograd::Var(x), 1.0, 1, 2, false),
                          "p must be in [0, 1)");
  CHECK_THROWS_CONTAINING(kernels::dropout(Tensor::zeros({3}, DType::i32), 0.5, 1, 2),
                          "expected a floating dtype");
  CHECK(kernels::dropout(Tensor::empty({0, 3}), 0.5, 1, 2).shape() == Shape{0, 3});
  // Not training: the input itself.
  autograd::Var v(x, true);
  CHECK(autograd::dropout(v, 0.5, 1, 2, false).impl() == v.impl());
}

TEST_CASE("dropout: gradient with a fixed key (gradcheck f64)") {
  auto r = autograd::gradcheck(
      [](const std::vector<autograd::Var>& v) { return autograd::dropout(v[0], 0.4, 11, 3); },
      {randn({3, 7}, 1, DType::f64)});
  INFO(r.detail);
  CHECK(r.ok);
}
