// topk: values and indices against a full stable sort (the reference), on random data and on
// data full of ties (the lower-index-first rule exactly), NaNs, every dtype, edge values of k,
// errors, and the gradient of the values.
#include <cmath>

#include "autograd/gradcheck.h"
#include "autograd/topk.h"
#include "kernels/topk.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {

void check_topk(const Tensor& x, int64_t k, int axis, bool largest) {
  INFO("x " << x.describe() << " k " << k << " axis " << axis << " largest " << largest);
  kernels::TopK got = kernels::topk(x, k, axis, largest);
  kernels::TopK ref = kernels::ref::topk(x, k, axis, largest);
  CHECK(got.values.dtype() == x.dtype());
  CHECK(got.indices.dtype() == DType::i64);
  REQUIRE(got.indices.shape() == ref.indices.shape());
  CHECK(got.indices.to_vector<int64_t>() == ref.indices.to_vector<int64_t>());
  // Values are copies of elements of x: exact (NaN compared as NaN).
  auto gv = got.values.to_vector<double>(), rv = ref.values.to_vector<double>();
  REQUIRE(gv.size() == rv.size());
  size_t bad = gv.size();
  for (size_t i = 0; i < gv.size() && bad == gv.size(); ++i)
    if (!(gv[i] == rv[i] || (std::isnan(gv[i]) && std::isnan(rv[i])))) bad = i;
  INFO("first differing value at " << bad);
  CHECK(bad == gv.size());
}

// Small integers as floats: lots of exact ties.
Tensor with_ties(const Shape& s, uint64_t stream, int levels, DType dt = DType::f32) {
  auto u = testing::randu(s, stream, 0, levels, DType::f64).to_vector<double>();
  for (double& v : u) v = std::floor(v);
  return Tensor::from_vector(u, s, DType::f64).to(dt);
}

// Random [7, 37] and [5, 13, 3] inputs.
Tensor random_2d(DType dt) { return randn({7, 37}, 1, dt); }
Tensor random_3d(DType dt) { return randn({5, 13, 3}, 2, dt); }

// 1, NaN, 3, NaN, -inf, inf.
Tensor nan_vector() {
  return Tensor::from_vector<float>({1, NAN, 3, NAN, -INFINITY, INFINITY}, {6});
}

// Rows of only NaN, and NaN with +inf.
Tensor nan_rows() {
  return Tensor::from_vector<float>({NAN, NAN, NAN, INFINITY, NAN, INFINITY}, {2, 3});
}

void gradcheck_values(bool largest) {
  Tensor x = randn({3, 7}, 30, DType::f64);
  for (int axis : {0, 1}) {
    CAPTURE(axis);
    auto r = autograd::gradcheck(
        [&](const std::vector<autograd::Var>& v) {
          return autograd::topk(v[0], 2, axis, largest).values;
        },
        {x});
    INFO(r.detail);
    CHECK(r.ok);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("topk: last axis matches a full sort, k = 1, 3, n", T, float, double) {
  Tensor a = random_2d(engine::dtype_v<T>);
  for (bool largest : {true, false})
    for (int64_t k : {int64_t(1), int64_t(3), int64_t(37)}) check_topk(a, k, -1, largest);
}

TEST_CASE_TEMPLATE("topk: first axis matches a full sort, k = 1, 2, n", T, float, double) {
  Tensor a = random_2d(engine::dtype_v<T>);
  for (bool largest : {true, false})
    for (int64_t k : {int64_t(1), int64_t(2), int64_t(7)}) check_topk(a, k, 0, largest);
}

TEST_CASE_TEMPLATE("topk: every axis of a 3-D tensor matches a full sort", T, float, double) {
  Tensor b = random_3d(engine::dtype_v<T>);
  for (bool largest : {true, false})
    for (int axis = 0; axis < 3; ++axis)
      for (int64_t k : {int64_t(1), int64_t(3), b.size(axis)}) check_topk(b, k, axis, largest);
}

TEST_CASE_TEMPLATE("topk: non-contiguous input matches a full sort", T, float, double) {
  Tensor b = random_3d(engine::dtype_v<T>);
  for (bool largest : {true, false}) check_topk(testing::non_contiguous(b), 2, 1, largest);
}

TEST_CASE("topk: many rows (the parallel path) match a full sort") {
  Tensor c = randn({2001, 13}, 3);
  check_topk(c, 2, -1, true);
  check_topk(c, 1, -1, false);
  check_topk(c, 5, 0, true);
}

TEST_CASE("topk: ties are broken by the lower index first (hand-worked)") {
  // The three 3s win, in index order; the smallest two are 1 (index 0) and 2.
  Tensor x = Tensor::from_vector<float>({1, 3, 3, 2, 3}, {5});
  auto r = kernels::topk(x, 3);
  CHECK(r.indices.to_vector<int64_t>() == std::vector<int64_t>{1, 2, 4});
  CHECK(r.values.to_vector<float>() == std::vector<float>{3, 3, 3});
  CHECK(kernels::topk(x, 2, 0, false).indices.to_vector<int64_t>() == std::vector<int64_t>{0, 3});
  CHECK(kernels::topk(x, 1).indices.item() == 1);
}

TEST_CASE("topk: -0 and +0 are equal, the lower index wins either way") {
  Tensor z = Tensor::from_vector<float>({0.0f, -0.0f, 0.0f}, {3});
  CHECK(kernels::topk(z, 2).indices.to_vector<int64_t>() == std::vector<int64_t>{0, 1});
  z = Tensor::from_vector<float>({-0.0f, 0.0f}, {2});
  CHECK(kernels::topk(z, 1).indices.item() == 0);
}

TEST_CASE("topk: the order of every tied block matches a full sort") {
  // Random data with 3 distinct values.
  Tensor t = with_ties({37, 41}, 10, 3);
  for (bool largest : {true, false})
    for (int64_t k : {int64_t(1), int64_t(5), int64_t(20), int64_t(41)}) {
      check_topk(t, k, 1, largest);
      check_topk(t.transpose(0, 1), k, 0, largest);
    }
}

TEST_CASE("topk: rows of equal values give the first k indices") {
  Tensor all_equal = Tensor::full({3, 9}, 2.5);
  CHECK(kernels::topk(all_equal, 4).indices.select(0, 2).to_vector<int64_t>() ==
        std::vector<int64_t>{0, 1, 2, 3});
}

TEST_CASE("topk: NaN counts as larger than every number (hand-worked)") {
  Tensor x = nan_vector();
  CHECK(kernels::topk(x, 3).indices.to_vector<int64_t>() == std::vector<int64_t>{1, 3, 5});
  CHECK(kernels::topk(x, 3, 0, false).indices.to_vector<int64_t>() ==
        std::vector<int64_t>{4, 0, 2});
  CHECK(kernels::topk(x, 6, 0, false).indices.to_vector<int64_t>() ==
        std::vector<int64_t>{4, 0, 2, 5, 1, 3});
  CHECK(kernels::topk(x, 1).indices.item() == 1);
  CHECK(std::isnan(kernels::topk(x, 1).values.item()));
  CHECK(kernels::topk(x, 1, 0, false).indices.item() == 4);
}

TEST_CASE("topk: NaN and infinities match a full sort") {
  Tensor x = nan_vector();
  for (bool largest : {true, false})
    for (int64_t k : {int64_t(1), int64_t(2), int64_t(6)}) check_topk(x, k, 0, largest);
}

TEST_CASE("topk: all-NaN rows and NaN with +inf agree on the k = 1 and general paths") {
  Tensor rows = nan_rows();
  for (bool largest : {true, false})
    for (int64_t k : {int64_t(1), int64_t(2), int64_t(3)}) {
      check_topk(rows, k, 1, largest);
      check_topk(rows.to(DType::bf16), k, 1, largest);
      check_topk(rows.to(DType::f64), k, 1, largest);
    }
}

TEST_CASE("topk: all-NaN rows and NaN with +inf give the hand-worked indices") {
  Tensor rows = nan_rows();
  CHECK(kernels::topk(rows, 1, 1, false).indices.to_vector<int64_t>() ==
        std::vector<int64_t>{0, 0});
  CHECK(kernels::topk(rows, 1, 1, true).indices.to_vector<int64_t>() == std::vector<int64_t>{0, 1});
}

TEST_CASE("topk: random NaNs among ties in f64 and bf16, contiguous and strided rows") {
  Tensor t = with_ties({13, 17}, 11, 4, DType::f64);
  auto v = t.to_vector<double>();
  for (size_t i = 0; i < v.size(); i += 5) v[i] = NAN;
  Tensor tn = Tensor::from_vector(v, t.shape());
  for (bool largest : {true, false})
    for (int64_t k : {int64_t(1), int64_t(4), int64_t(9), int64_t(17)}) {
      check_topk(tn, k, 1, largest);
      check_topk(tn.to(DType::bf16), k, 1, largest);
      check_topk(tn.transpose(0, 1), k, 0, largest);  // strided rows (inner > 1)
    }
}

TEST_CASE("topk: bf16 input (rounding creates ties) matches a full sort") {
  Tensor b = randn({5, 11}, 20).to(DType::bf16);
  for (bool largest : {true, false}) check_topk(b, 4, 1, largest);
  CHECK(kernels::topk(b, 4).values.dtype() == DType::bf16);
}

TEST_CASE("topk: i32 and i64 inputs match a full sort") {
  Tensor i = with_ties({6, 9}, 21, 5).to(DType::i32);
  for (bool largest : {true, false}) check_topk(i, 3, 1, largest);
  Tensor l = with_ties({6, 9}, 22, 100).to(DType::i64);
  check_topk(l, 9, 1, true);
}

TEST_CASE("topk: k = 0 gives empty values and indices") {
  auto r0 = kernels::topk(randn({4, 7}, 23), 0);
  CHECK(r0.values.shape() == Shape{4, 0});
  CHECK(r0.indices.shape() == Shape{4, 0});
}

TEST_CASE("topk: size-1 axis") { check_topk(randn({4, 7}, 23).slice(1, 0, 1), 1, 1, true); }

TEST_CASE("topk: an input without rows gives empty results") {
  CHECK(kernels::topk(Tensor::empty({0, 5}), 2).values.shape() == Shape{0, 2});
}

TEST_CASE("topk: k and axis out of range are errors") {
  Tensor x = randn({4, 7}, 23);
  CHECK_THROWS_CONTAINING(kernels::topk(x, 8),
                          "topk: k = 8 is out of range [0, 7] for axis 1 of f32[4, 7]");
  CHECK_THROWS_CONTAINING(kernels::topk(x, -1), "topk: k = -1 is out of range");
  CHECK_THROWS_CONTAINING(kernels::topk(x, 1, 2), "topk: axis 2 out of range");
}

TEST_CASE("topk: gradcheck of the largest values") { gradcheck_values(true); }
TEST_CASE("topk: gradcheck of the smallest values") { gradcheck_values(false); }

TEST_CASE("topk: the gradient lands exactly on the chosen positions") {
  autograd::Var v(Tensor::from_vector<double>({0.5, 4, -1, 3}, {4}), true);
  auto t = autograd::topk(v, 2);
  CHECK(t.indices.to_vector<int64_t>() == std::vector<int64_t>{1, 3});
  t.values.backward(Tensor::from_vector<double>({10, 20}, {2}));
  CHECK(v.grad().to_vector<double>() == std::vector<double>{0, 10, 0, 20});
}
