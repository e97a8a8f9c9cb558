// L2 normalisation: forward and backward kernels against the f64 reference along every axis,
// non-contiguous and bf16 input, zero vectors, errors, and gradcheck of the autograd op.
#include <cmath>

#include "autograd/gradcheck.h"
#include "autograd/l2norm.h"
#include "kernels/l2norm.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {

double atol_for(DType dt) { return dt == DType::f64 ? 1e-14 : 1e-6; }

// Calls f(x, g, axis) for odd 1-, 2- and 3-D shapes along every axis (and -1). Each dtype has
// its own run of 18 random streams.
template <class F>
void axis_sweep(DType dt, F f) {
  uint64_t stream = dt == DType::f64 ? 18 : 0;
  for (Shape s : {Shape{37}, Shape{5, 130}, Shape{3, 7, 13}})
    for (int axis = -1; axis < int(s.size()); ++axis) {
      CAPTURE(s);
      CAPTURE(axis);
      Tensor x = randn(s, ++stream, dt, 3.0), g = randn(s, ++stream, dt);
      f(x, g, axis);
    }
}

void check_forward(const Tensor& in, const kernels::L2NormOut& ref, int axis) {
  auto out = kernels::l2_normalize(in, 1e-6, axis);
  CHECK(out.y.dtype() == in.dtype());
  CHECK_CLOSE(out.y, ref.y, 1e-5, atol_for(in.dtype()));
  CHECK_CLOSE(out.inv_norm, ref.inv_norm, 1e-5, 0);
}

void check_gradcheck_axis(int axis) {
  auto r = autograd::gradcheck(
      [axis](const std::vector<autograd::Var>& v) {
        return autograd::l2_normalize(v[0], 1e-6, axis);
      },
      {randn({3, 4, 5}, 1, DType::f64)});
  INFO(r.detail);
  CHECK(r.ok);
}

}  // namespace

TEST_CASE_TEMPLATE("l2norm: forward matches the reference along every axis", T, float, double) {
  axis_sweep(engine::dtype_v<T>, [](const Tensor& x, const Tensor&, int axis) {
    check_forward(x, kernels::ref::l2_normalize(x, 1e-6, axis), axis);
  });
}

TEST_CASE_TEMPLATE("l2norm: forward on non-contiguous input matches the reference", T, float,
                   double) {
  axis_sweep(engine::dtype_v<T>, [](const Tensor& x, const Tensor&, int axis) {
    check_forward(testing::non_contiguous(x), kernels::ref::l2_normalize(x, 1e-6, axis), axis);
  });
}

TEST_CASE_TEMPLATE("l2norm: backward matches the reference along every axis", T, float, double) {
  const DType dt = engine::dtype_v<T>;
  axis_sweep(dt, [&](const Tensor& x, const Tensor& g, int axis) {
    auto ref = kernels::ref::l2_normalize(x, 1e-6, axis);
    const Tensor ref_dx = kernels::ref::l2_normalize_backward(g, ref.y, ref.inv_norm, axis);
    // From the forward of a contiguous and of a non-contiguous input, with a non-contiguous g.
    for (const Tensor& in : {x, testing::non_contiguous(x)}) {
      auto out = kernels::l2_normalize(in, 1e-6, axis);
      Tensor dx =
          kernels::l2_normalize_backward(testing::non_contiguous(g), out.y, out.inv_norm, axis);
      CHECK_CLOSE(dx, ref_dx, 1e-5, atol_for(dt));
    }
  });
}

TEST_CASE("l2norm: rows have unit norm") {
  Tensor x = randn({7, 13}, 1);
  auto out = kernels::l2_normalize(x);
  CHECK(out.inv_norm.shape() == Shape{7});
  auto y = out.y.to_vector<double>();
  for (int r = 0; r < 7; ++r) {
    double s = 0;
    for (int j = 0; j < 13; ++j) s += y[r * 13 + j] * y[r * 13 + j];
    CHECK(std::abs(s - 1.0) < 1e-5);
  }
}

TEST_CASE("l2norm: zero vectors stay finite, forward and backward") {
  Tensor z = Tensor::zeros({2, 5});
  auto zo = kernels::l2_normalize(z, 1e-6);
  CHECK(zo.y.to_vector<float>() == std::vector<float>(10, 0.0f));
  CHECK(std::abs(zo.inv_norm.at({0}) - 1000.0) < 1e-3);  // 1 / sqrt(1e-6)
  Tensor dz = kernels::l2_normalize_backward(Tensor::ones({2, 5}), zo.y, zo.inv_norm, -1);
  for (float v : dz.to_vector<float>()) CHECK(std::isfinite(v));
}

TEST_CASE("l2norm: eps is inside the root for tiny vectors") {
  // eps dominates: y = x / sqrt(|x|² + eps) exactly as defined.
  Tensor t = Tensor::from_vector<double>({3e-4, 4e-4}, {2});
  auto to = kernels::l2_normalize(t, 1e-6);
  CHECK(std::abs(to.y.at({0}) - 3e-4 / std::sqrt(25e-8 + 1e-6)) < 1e-15);
}

TEST_CASE("l2norm: bf16 input") {
  Tensor x = randn({5, 130}, 1, DType::bf16);
  auto out = kernels::l2_normalize(x);
  CHECK(out.y.dtype() == DType::bf16);
  CHECK(out.inv_norm.dtype() == DType::f32);
  CHECK_CLOSE(out.y, kernels::ref::l2_normalize(x, 1e-6, -1).y, 1.0 / 128, 1e-4);
}

TEST_CASE("l2norm: forward errors") {
  CHECK_THROWS_CONTAINING(kernels::l2_normalize(Tensor::zeros({3, 4}), 1e-6, 2),
                          "l2_normalize: axis 2 out of range");
  CHECK_THROWS_CONTAINING(kernels::l2_normalize(Tensor::zeros({3}, DType::i64)),
                          "l2_normalize: expected a floating dtype");
}

TEST_CASE("l2norm: backward errors") {
  Tensor x = Tensor::zeros({3, 4});
  CHECK_THROWS_CONTAINING(kernels::l2_normalize_backward(x, x, Tensor::zeros({4}), -1),
                          "l2_normalize_backward: inv_norm f32[4] does not match f32[3, 4]");
}

TEST_CASE("l2norm: l2_normalize gradcheck along the last axis") { check_gradcheck_axis(-1); }
TEST_CASE("l2norm: l2_normalize gradcheck along axis 0") { check_gradcheck_axis(0); }
TEST_CASE("l2norm: l2_normalize gradcheck along axis 1") { check_gradcheck_axis(1); }
