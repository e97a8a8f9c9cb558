// The handwritten CUDA topk kernels (kernels/cuda/topk.cu), run under the sim and compared bit for
// bit with the CPU op (kernels::cpu::topk): values and indices, largest and smallest, every axis,
// every dtype, strided inputs, data full of ties (lower index first), NaN (largest of all), -0 vs
// +0 and infinities, k = 1 .. n, and rows longer than one 1024-element chunk (the merge levels,
// with k below, at and above the chunk size). The kernels have barriers (the bitonic sort), so
// they also run under reverse and shuffled thread orders. Built only in the sim build
// (g++ -x c++ -DENGINE_SIM).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "kernels/topk.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {

Tensor on_dev(const Tensor& t) { return t.to(kernels::cuda::device()); }
Tensor on_cpu(const Tensor& t) { return t.to(engine::Device::cpu()); }

bool same_bits(const Tensor& a, const Tensor& b) {
  if (!(a.shape() == b.shape()) || a.dtype() != b.dtype()) return false;
  Tensor x = on_cpu(a).contiguous(), y = on_cpu(b).contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

// The device result for x_dev against the CPU op on x (the same values): identical bits.
void check_topk(const Tensor& x, const Tensor& x_dev, int64_t k, int axis, bool largest) {
  INFO("x " << x.describe() << " k " << k << " axis " << axis << " largest " << largest);
  kernels::TopK want = kernels::cpu::topk(x, k, axis, largest);
  kernels::TopK got = kernels::cuda::topk(x_dev, k, axis, largest);
  CHECK(got.values.device() == kernels::cuda::device());
  CHECK(got.indices.dtype() == DType::i64);
  CHECK(same_bits(got.indices, want.indices));
  CHECK(same_bits(got.values, want.values));
}
void check_topk(const Tensor& x, int64_t k, int axis, bool largest) {
  check_topk(x, on_dev(x), k, axis, largest);
}

// Small integers (as x's dtype): many exact ties.
Tensor with_ties(const Shape& s, uint64_t stream, int levels, DType dt) {
  auto u = testing::randu(s, stream, 0, levels, DType::f64).to_vector<double>();
  for (double& v : u) v = std::floor(v) - levels / 2;
  return Tensor::from_vector(u, s, DType::f64).to(dt);
}

}  // namespace

TEST_CASE("cuda topk: last axis, k = 1, 3, n, largest and smallest, bit-identical to the CPU op") {
  uint64_t stream = 1;
  for (int64_t n : {1, 2, 7, 33, 130})
    for (DType dt : {DType::f32, DType::bf16, DType::f64}) {
      Tensor x = randn({3, n}, stream++, dt);
      for (int64_t k : {int64_t(1), std::min<int64_t>(3, n), n})
        for (bool largest : {true, false}) check_topk(x, k, -1, largest);
    }
}

TEST_CASE("cuda topk: every axis of a 3-D tensor, strided inputs, k = 0") {
  Tensor x = randn({5, 13, 6}, 20);
  for (int axis = 0; axis < 3; ++axis)
    for (bool largest : {true, false}) {
      check_topk(x, 2, axis, largest);
      check_topk(x, x.size(axis), axis, largest);
    }
  // A transposed device view and a narrowed one, on every axis.
  Tensor xt_h = x.transpose(0, 2).contiguous().transpose(0, 2);
  Tensor xt_d = on_dev(x.transpose(0, 2).contiguous()).transpose(0, 2);
  Tensor wide = randn({5, 13, 9}, 21);
  for (int axis = 0; axis < 3; ++axis) {
    check_topk(xt_h, xt_d, 3, axis, true);
    check_topk(wide.narrow(2, 2, 6), on_dev(wide).narrow(2, 2, 6), 4, axis, false);
  }
  kernels::TopK e = kernels::cuda::topk(on_dev(x), 0, 1, true);
  CHECK(e.values.shape() == Shape{5, 0, 6});
  CHECK(e.indices.shape() == Shape{5, 0, 6});
}

TEST_CASE("cuda topk: ties go to the lower index, for every dtype") {
  uint64_t stream = 40;
  for (DType dt : {DType::f32, DType::bf16, DType::f64, DType::i32, DType::i64})
    for (int levels : {2, 5}) {
      CAPTURE(dt);
      CAPTURE(levels);
      Tensor x = with_ties({4, 41}, stream++, levels, dt);
      for (bool largest : {true, false})
        for (int64_t k : {1, 20, 41}) {
          check_topk(x, k, 1, largest);
          check_topk(x.transpose(0, 1).contiguous(), std::min<int64_t>(k, 4), 0, largest);
        }
    }
  // All equal: indices 0, 1, 2, ... in both directions.
  Tensor c = Tensor::full({3, 10}, 2.5);
  kernels::TopK r = kernels::cuda::topk(on_dev(c), 4, 1, false);
  CHECK(on_cpu(r.indices).to_vector<int64_t>() ==
        std::vector<int64_t>{0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3});
}

TEST_CASE("cuda topk: NaN is the largest value, -0 ties with +0, infinities and integer extremes") {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = INFINITY;
  Tensor v = Tensor::from_vector<float>(
      {1, nan, 3, nan, -inf, inf, -0.0f, 0.0f, -nan, 3, -0.0f, 1e-30f}, {12});
  Tensor rows =
      Tensor::from_vector<float>({nan, nan, nan, inf, nan, inf, -inf, -inf, -inf}, {3, 3});
  for (DType dt : {DType::f32, DType::bf16, DType::f64})
    for (bool largest : {true, false}) {
      CAPTURE(dt);
      for (int64_t k : {1, 3, 6, 12}) check_topk(v.to(dt), k, 0, largest);
      for (int64_t k : {1, 2, 3}) check_topk(rows.to(dt), k, 1, largest);
    }
  // The documented order, checked directly: largest puts the NaNs first, in index order.
  kernels::TopK r = kernels::cuda::topk(on_dev(v), 4, 0, true);
  CHECK(on_cpu(r.indices).to_vector<int64_t>() == std::vector<int64_t>{1, 3, 8, 5});
  kernels::TopK s = kernels::cuda::topk(on_dev(v), 5, 0, false);
  CHECK(on_cpu(s.indices).to_vector<int64_t>() == std::vector<int64_t>{4, 6, 7, 10, 11});
  Tensor ints = Tensor::from_vector<int64_t>(
      {0, std::numeric_limits<int64_t>::min(), -1, std::numeric_limits<int64_t>::max(), 1, -1},
      {6});
  const Tensor ints32 = Tensor::from_vector<int32_t>(
      {0, std::numeric_limits<int32_t>::min(), -1, std::numeric_limits<int32_t>::max(), 1, -1},
      {6});
  for (const Tensor& t : {ints, ints32})
    for (bool largest : {true, false})
      for (int64_t k : {1, 3, 6}) check_topk(t, k, 0, largest);
}

TEST_CASE("cuda topk: rows longer than one chunk (merge levels), k below, at and above 1024") {
  // 2500 = 3 chunks (two merge levels, an odd run carried), 2048 = exactly 2 chunks; ties and
  // NaNs across chunk boundaries.
  Tensor x = with_ties({2, 2500}, 60, 50, DType::f32);
  std::vector<float> v = x.to_vector<float>();
  for (size_t i = 7; i < v.size(); i += 301) v[i] = NAN;
  x = Tensor::from_vector(v, {2, 2500});
  for (int64_t k : {5, 1024, 1500, 2500}) check_topk(x, k, 1, k != 1024);
  check_topk(randn({2048, 2}, 61), 1030, 0, true);  // along axis 0 (strided rows)
  check_topk(randn({1, 2048}, 62, DType::bf16), 7, 1, false);
}

TEST_CASE("cuda topk: the same results under reverse and shuffled thread orders") {
  Tensor x = with_ties({2, 1100}, 70, 30, DType::f32);
  Tensor xd = on_dev(x);
  kernels::TopK a = kernels::cuda::topk(xd, 40, 1, true);
  kernels::TopK small = kernels::cuda::topk(xd.narrow(1, 0, 37), 5, 1, false);
  for (auto order : {sim::ThreadOrder::reverse, sim::ThreadOrder::shuffled}) {
    sim::ScopedThreadOrder o(order, 99);
    kernels::TopK b = kernels::cuda::topk(xd, 40, 1, true);
    CHECK(same_bits(b.values, a.values));
    CHECK(same_bits(b.indices, a.indices));
    kernels::TopK c = kernels::cuda::topk(xd.narrow(1, 0, 37), 5, 1, false);
    CHECK(same_bits(c.indices, small.indices));
  }
  check_topk(x, xd, 40, 1, true);
}

TEST_CASE("cuda topk: errors") {
  Tensor xd = on_dev(randn({3, 5}, 80));
  CHECK_THROWS_CONTAINING(kernels::cuda::topk(xd, 6, 1, true),
                          "topk: k = 6 is out of range [0, 5] for axis 1");
  CHECK_THROWS_CONTAINING(kernels::cuda::topk(xd, -1, 0, true),
                          "topk: k = -1 is out of range [0, 3]");
  CHECK_THROWS_CONTAINING(kernels::cuda::topk(xd, 1, 2, true), "topk");
  CHECK_THROWS_CONTAINING(kernels::cuda::topk(randn({3, 5}, 81), 1, 1, true),
                          "is not on the CUDA device sim:0");
  CHECK_THROWS_CONTAINING(kernels::cuda::topk(Tensor(), 1, 0, true), "topk");
}
