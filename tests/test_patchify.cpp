// Patchify: the CPU op against the element-by-element f64 reference on odd sizes (images and
// videos, every dtype, non-contiguous inputs), against slices of the input taken with views,
// the inverse permutation, coordinates, errors, and a gradcheck of the autograd op.
#include <array>
#include <cmath>

#include "autograd/gradcheck.h"
#include "autograd/patchify.h"
#include "kernels/patchify.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {

void check_same(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  CHECK(a.dtype() == b.dtype());
  CHECK(a.to_vector<double>() == b.to_vector<double>());
}

struct Case {
  Shape shape;
  int64_t t, p;
};

// Odd sizes: several patches along each axis, 1-frame videos, images, p = 1, one patch per image.
const Case kCases[] = {
    {{2, 6, 9, 15, 5}, 3, 3}, {{3, 1, 7, 7, 1}, 1, 7}, {{1, 5, 3, 3, 3}, 5, 1},
    {{2, 13, 13, 7}, 1, 13},  {{3, 9, 15, 7}, 1, 1},   {{1, 4, 10, 6, 3}, 2, 2},
};

}  // namespace

TEST_CASE("patchify: forward and backward vs reference on odd sizes, every dtype") {
  for (const Case& c : kCases)
    for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::i32}) {
      INFO("shape " << c.shape << " t " << c.t << " p " << c.p << " dtype "
                    << engine::dtype_name(dt));
      Tensor x = randn(c.shape, 1, DType::f64, 10.0).to(dt);
      Tensor out = kernels::patchify(x, c.t, c.p);
      check_same(out, kernels::ref::patchify(x, c.t, c.p));
      check_same(kernels::patchify(testing::non_contiguous(x), c.t, c.p), out);
      // The backward is the inverse permutation.
      check_same(kernels::unpatchify_backward(out, x.shape(), c.t, c.p), x);
      Tensor g = randn(out.shape(), 2, DType::f64, 10.0).to(dt);
      check_same(kernels::unpatchify_backward(g, x.shape(), c.t, c.p),
                 kernels::ref::unpatchify_backward(g, x.shape(), c.t, c.p));
      check_same(kernels::unpatchify_backward(testing::non_contiguous(g), x.shape(), c.t, c.p),
                 kernels::ref::unpatchify_backward(g, x.shape(), c.t, c.p));
    }
}

TEST_CASE("patchify: each patch is the matching block of the input, flattened (dt, dy, dx, c)") {
  // Independent of both implementations: the block is cut with slice views and flattened.
  Tensor x = randn({2, 6, 9, 15, 5}, 3);
  const int64_t t = 3, p = 3, nh = 3, nw = 5;
  Tensor out = kernels::patchify(x, t, p);
  CHECK(out.shape() == Shape{2, 2 * 3 * 5, 3 * 3 * 3 * 5});
  for (int64_t b : {0, 1})
    for (int64_t n : {0, 4, 7, 29}) {
      const int64_t it = n / (nh * nw), ih = (n / nw) % nh, iw = n % nw;
      Tensor block = x.select(0, b)
                         .slice(0, it * t, (it + 1) * t)
                         .slice(1, ih * p, (ih + 1) * p)
                         .slice(2, iw * p, (iw + 1) * p)
                         .contiguous()
                         .flatten();
      INFO("b " << b << " patch " << n);
      CHECK(out.select(0, b).select(0, n).to_vector<float>() == block.to_vector<float>());
    }
}

TEST_CASE("patchify: large enough for the parallel path; empty batch") {
  Tensor x = randn({4, 4, 32, 32, 3}, 4);
  Tensor out = kernels::patchify(x, 2, 4);
  check_same(out, kernels::ref::patchify(x, 2, 4));
  check_same(kernels::unpatchify_backward(out, x.shape(), 2, 4), x);

  Tensor e = Tensor::zeros({0, 2, 4, 4, 3});
  CHECK(kernels::patchify(e, 2, 2).shape() == Shape{0, 4, 24});
  CHECK(kernels::unpatchify_backward(Tensor::zeros({0, 4, 24}), e.shape(), 2, 2).shape() ==
        e.shape());
}

TEST_CASE("patchify: patch coordinates") {
  for (auto [T, H, W, t, p] : {std::array<int64_t, 5>{6, 9, 15, 3, 3},
                               std::array<int64_t, 5>{1, 28, 28, 1, 4},
                               std::array<int64_t, 5>{16, 7, 21, 4, 7}}) {
    Tensor c = kernels::patch_coordinates(T, H, W, t, p);
    CHECK(c.dtype() == DType::f32);
    CHECK(c.shape() == Shape{(T / t) * (H / p) * (W / p), 3});
    CHECK_CLOSE(c, kernels::ref::patch_coordinates(T, H, W, t, p), 1e-7, 0);
    for (double v : c.to_vector<double>()) {
      CHECK(v >= 0.0);
      CHECK(v < 1.0);
    }
  }
  // Row n is the start of patch n: the last patch starts at (T - t, H - p, W - p).
  Tensor c = kernels::patch_coordinates(6, 9, 15, 3, 3);
  CHECK(c.at({29, 0}) == doctest::Approx(3.0 / 6));
  CHECK(c.at({29, 1}) == doctest::Approx(6.0 / 9));
  CHECK(c.at({29, 2}) == doctest::Approx(12.0 / 15));
  CHECK_THROWS_CONTAINING(kernels::patch_coordinates(6, 9, 15, 4, 3), "not divisible");
  CHECK_THROWS_CONTAINING(kernels::patch_coordinates(0, 9, 15, 1, 3), ">= 1");
}

TEST_CASE("patchify: errors name the op, the shape and the rule") {
  Tensor v = Tensor::zeros({2, 6, 9, 15, 5});
  CHECK_THROWS_CONTAINING(kernels::patchify(v, 4, 3), "not divisible by the tubelet length t = 4");
  CHECK_THROWS_CONTAINING(kernels::patchify(v, 3, 2), "divisible by the patch size p = 2");
  CHECK_THROWS_CONTAINING(kernels::patchify(v, 3, 2), "f32[2, 6, 9, 15, 5]");
  CHECK_THROWS_CONTAINING(kernels::patchify(v, 0, 3), "must be >= 1");
  CHECK_THROWS_CONTAINING(kernels::patchify(Tensor::zeros({9, 15, 5}), 1, 3),
                          "expected [B, H, W, C] or [B, T, H, W, C]");
  CHECK_THROWS_CONTAINING(kernels::patchify(Tensor::zeros({2, 9, 15, 5}), 3, 3),
                          "tubelet length t must be 1");
  CHECK_THROWS_CONTAINING(kernels::patchify(Tensor(), 1, 1), "undefined");
  CHECK_THROWS_CONTAINING(kernels::unpatchify_backward(Tensor::zeros({2, 30, 44}), v.shape(), 3, 3),
                          "does not match the patches [2, 30, 135]");
}

TEST_CASE("patchify: gradcheck of the autograd op (video and image)") {
  using autograd::Var;
  auto r = autograd::gradcheck(
      [](const std::vector<Var>& v) { return autograd::patchify(v[0], 2, 2); },
      {randn({1, 2, 2, 4, 3}, 5, DType::f64)});
  INFO(r.detail);
  CHECK(r.ok);
  auto r2 = autograd::gradcheck(
      [](const std::vector<Var>& v) { return autograd::patchify(v[0], 1, 3); },
      {randn({2, 3, 6, 1}, 6, DType::f64)});
  INFO(r2.detail);
  CHECK(r2.ok);
  // The gradient lands where the element came from.
  Var x(randn({1, 2, 4, 4, 1}, 7, DType::f64), true);
  Tensor g = Tensor::zeros({1, 4, 8}, DType::f64);
  g.select(0, 0).select(0, 3).slice(0, 5, 6).fill_(1.0);  // patch 3, feature (dt 1, dy 0, dx 1)
  autograd::patchify(x, 2, 2).backward(g);
  CHECK(x.grad().at({0, 1, 2, 3, 0}) == 1.0);
  double total = 0;
  for (double v : x.grad().to_vector<double>()) total += v;
  CHECK(total == 1.0);
}
