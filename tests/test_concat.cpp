// concat and split: forward against the f64 reference on every axis with pieces of different
// sizes (including empty and non-contiguous ones), every dtype, round trips, errors, gradchecks.
#include <cmath>

#include "autograd/concat.h"
#include "autograd/gradcheck.h"
#include "kernels/concat.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {

void check_same(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  CHECK(a.to_vector<double>() == b.to_vector<double>());
}

const Shape kBase = {3, 4, 5};

// Calls f(pieces, axis) on every axis of kBase, for three pieces of sizes 2, 7 and 1 along it.
template <class F>
void axis_sweep(DType dt, F f) {
  for (int axis = 0; axis < 3; ++axis) {
    INFO("axis " << axis);
    std::vector<Tensor> ts;
    const int64_t sizes[3] = {2, 7, 1};
    for (int i = 0; i < 3; ++i) {
      Shape s = kBase;
      s[axis] = sizes[i];
      ts.push_back(randn(s, 10 * axis + i, dt));
    }
    f(ts, axis);
  }
}

void check_gradcheck(const autograd::GradcheckResult& r) {
  INFO(r.detail);
  CHECK(r.ok);
}

}  // namespace

TEST_CASE_TEMPLATE("concat: forward matches the reference on every axis", T, float, double) {
  axis_sweep(engine::dtype_v<T>, [](const std::vector<Tensor>& ts, int axis) {
    Tensor ref = kernels::ref::concat(ts, axis);
    Tensor out = kernels::concat(ts, axis);
    CHECK(out.is_contiguous());
    CHECK(out.size(axis) == 10);
    check_same(out, ref);
    check_same(kernels::concat(ts, axis - 3), ref);
  });
}

TEST_CASE_TEMPLATE("concat: non-contiguous pieces mixed with contiguous ones", T, float, double) {
  const DType dt = engine::dtype_v<T>;
  axis_sweep(dt, [&](const std::vector<Tensor>& ts, int axis) {
    Tensor ref = kernels::ref::concat(ts, axis);
    // After freeing a NaN block of the same size, so a stale correct result in recycled memory
    // cannot pass.
    { Tensor poison = Tensor::full(ref.shape(), NAN, dt); }
    std::vector<Tensor> nc = {testing::non_contiguous(ts[0]), ts[1],
                              testing::non_contiguous(ts[2])};
    CHECK(!nc[0].is_contiguous());
    check_same(kernels::concat(nc, axis), ref);
  });
}

TEST_CASE_TEMPLATE("concat: an empty piece changes nothing", T, float, double) {
  const DType dt = engine::dtype_v<T>;
  axis_sweep(dt, [&](const std::vector<Tensor>& ts, int axis) {
    Shape es = kBase;
    es[axis] = 0;
    std::vector<Tensor> with_empty = {ts[0], Tensor::empty(es, dt), ts[1], ts[2]};
    check_same(kernels::concat(with_empty, axis), kernels::ref::concat(ts, axis));
  });
}

TEST_CASE("concat: a single tensor is returned unchanged") {
  Tensor a = randn({7}, 30);
  check_same(kernels::concat({a}, 0), a);
}

TEST_CASE("concat: 1-D tensors") {
  Tensor a = randn({7}, 30);
  check_same(kernels::concat({a, a}, 0), kernels::ref::concat({a, a}, 0));
}

TEST_CASE("concat: forward on the parallel path") {
  std::vector<Tensor> big = {randn({301, 37}, 31, DType::f64), randn({301, 130}, 32, DType::f64),
                             randn({301, 3}, 33, DType::f64)};
  check_same(kernels::concat(big, 1), kernels::ref::concat(big, 1));
}

TEST_CASE("concat: i64 tensors are copied exactly") {
  Tensor i1 = Tensor::from_vector<int64_t>({1, 2, 3, 4}, {2, 2});
  Tensor i2 = Tensor::from_vector<int64_t>({5, 6}, {2, 1});
  CHECK(kernels::concat({i1, i2}, 1).to_vector<int64_t>() ==
        std::vector<int64_t>{1, 2, 5, 3, 4, 6});
}

TEST_CASE("concat: bf16 tensors are copied exactly") {
  Tensor b1 = randn({3, 5}, 40).to(DType::bf16), b2 = randn({2, 5}, 41).to(DType::bf16);
  Tensor out = kernels::concat({b1, b2}, 0);
  CHECK(out.dtype() == DType::bf16);
  check_same(out, kernels::ref::concat({b1, b2}, 0));
}

TEST_CASE("concat: i32 tensors are copied exactly") {
  Tensor i32 = Tensor::from_vector<int32_t>({7, 8, 9}, {3});
  CHECK(kernels::concat({i32, i32}, 0).to_vector<int32_t>() ==
        std::vector<int32_t>{7, 8, 9, 7, 8, 9});
}

TEST_CASE("concat: split returns views of the given sizes, and concat gives x back") {
  Tensor x = randn({5, 13, 3}, 50);
  for (int axis = 0; axis < 3; ++axis) {
    INFO("axis " << axis);
    const int64_t n = x.size(axis);
    const std::vector<int64_t> sizes = {1, 0, n - 1};
    auto pieces = kernels::split(x, axis, sizes);
    REQUIRE(pieces.size() == 3);
    for (size_t i = 0; i < 3; ++i) {
      CHECK(pieces[i].shares_storage(x));
      CHECK(pieces[i].size(axis) == sizes[i]);
    }
    check_same(kernels::concat(pieces, axis), x);
  }
}

TEST_CASE("concat: split pieces index into x at their offset") {
  Tensor x = randn({5, 13, 3}, 50);
  auto p = kernels::split(x, 1, {4, 9});
  CHECK(p[1].at({2, 0, 1}) == x.at({2, 4, 1}));
}

TEST_CASE("concat: split errors name the sizes and the shape") {
  Tensor x = randn({5, 13, 3}, 50);
  CHECK_THROWS_CONTAINING(kernels::split(x, 1, {4, 8}),
                          "split: sizes add up to 12 but axis 1 of f32[5, 13, 3] has 13");
  CHECK_THROWS_CONTAINING(kernels::split(x, 1, {14, -1}), "split: negative size -1");
}

TEST_CASE("concat: shape errors name the mismatching tensor and both shapes") {
  Tensor a = randn({3, 4}, 60), b = randn({2, 4}, 61), c = randn({3, 5}, 62);
  CHECK_THROWS_CONTAINING(kernels::concat({a, a, c}, 0),
                          "concat: tensor 2 has shape [3, 5] but tensor 0 has [3, 4]; all dims "
                          "except axis 0 must match");
  CHECK_THROWS_CONTAINING(kernels::concat({a, b}, 1), "tensor 1 has shape [2, 4]");
  CHECK_THROWS_CONTAINING(kernels::concat({a, randn({3, 4, 1}, 1)}, 0),
                          "tensor 1 has shape [3, 4, 1] but tensor 0 has [3, 4]");
}

TEST_CASE("concat: dtype, axis and empty-list errors") {
  Tensor a = randn({3, 4}, 60), b = randn({2, 4}, 61);
  CHECK_THROWS_CONTAINING(kernels::concat({a, a.to(DType::f64)}, 0),
                          "concat: tensor 1 f64[3, 4] has another dtype than tensor 0 f32[3, 4]");
  CHECK_THROWS_CONTAINING(kernels::concat({a, b}, 2), "concat: axis 2 out of range");
  CHECK_THROWS_CONTAINING(kernels::concat({}, 0), "concat: no tensors given");
}

TEST_CASE("concat: concat gradcheck with a non-contiguous piece") {
  for (int axis = 0; axis < 2; ++axis) {
    INFO("axis " << axis);
    Shape s0 = {3, 2}, s1 = {3, 2}, s2 = {3, 2};
    s0[axis] = 1;
    s1[axis] = 3;
    check_gradcheck(autograd::gradcheck(
        [&](const std::vector<autograd::Var>& v) {
          return autograd::concat({v[0], v[1], v[2]}, axis);
        },
        {randn(s0, 70, DType::f64), randn(s1, 71, DType::f64),
         testing::non_contiguous(randn(s2, 72, DType::f64))}));
  }
}

TEST_CASE("concat: split gradcheck with reordered, repeated and unused pieces") {
  // The split gradients must land in the right slices and accumulate.
  for (int axis = 0; axis < 2; ++axis) {
    INFO("axis " << axis);
    check_gradcheck(autograd::gradcheck(
        [&](const std::vector<autograd::Var>& v) {
          auto p = autograd::split(v[0], axis, {1, 2, 1});
          return autograd::concat({p[2], p[0], p[2]}, axis);
        },
        {randn({4, 4}, 73 + axis, DType::f64)}));
  }
}

TEST_CASE("concat: split gradient is exact: zero for an unused piece, 2 for a twice-used one") {
  autograd::Var x(Tensor::ones({4, 3}, DType::f64), true);
  auto p = autograd::split(x, 0, {1, 2, 1});
  autograd::concat({p[2], p[0], p[2]}, 0).backward(Tensor::ones({3, 3}, DType::f64));
  CHECK(x.grad().to_vector<double>() == std::vector<double>{1, 1, 1, 0, 0, 0, 0, 0, 0, 2, 2, 2});
}
