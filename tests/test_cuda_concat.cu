// The handwritten CUDA concat kernel (kernels/cuda/concat.cu), run under the sim and compared bit
// for bit with the CPU op (kernels::cpu::concat) on every axis of odd shapes, every dtype, empty
// pieces, strided pieces (transposed, narrowed, expanded) and pieces whose rows allow 16/8/4-byte
// units or none. Fresh device memory is NaN-poisoned and guarded, so an element the kernel misses
// or writes past shows up. Built only in the sim build (g++ -x c++ -DENGINE_SIM).
#include <doctest/doctest.h>

#include <cstring>
#include <functional>
#include <vector>

#include "kernels/concat.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
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

// Values of any dtype: normal floats, or integers in [-1000, 1000).
Tensor values(const Shape& s, uint64_t stream, DType dt) {
  if (dt == DType::i32 || dt == DType::i64)
    return testing::randu(s, stream, -1000, 1000, DType::f64).to(dt);
  return randn(s, stream, dt);
}

// Device copies of the pieces (device views of the same layout as the host ones when `strided`:
// the host tensor's storage layout is copied, then the same view taken).
std::vector<Tensor> to_device(const std::vector<Tensor>& ts) {
  std::vector<Tensor> out;
  for (const Tensor& t : ts) out.push_back(on_dev(t));
  return out;
}

void check_concat(const std::vector<Tensor>& host, const std::vector<Tensor>& dev, int axis) {
  Tensor ref = kernels::cpu::concat(host, axis);
  Tensor got = kernels::cuda::concat(dev, axis);
  CHECK(got.device() == kernels::cuda::device());
  CHECK(got.is_contiguous());
  CHECK(same_bits(got, ref));
}

}  // namespace

TEST_CASE("cuda concat: every axis and dtype, odd and empty pieces, bit-identical to the CPU op") {
  const Shape base = {3, 5, 7};
  uint64_t stream = 1;
  for (DType dt : {DType::f32, DType::bf16, DType::f64, DType::i32, DType::i64})
    for (int axis = 0; axis < 3; ++axis) {
      CAPTURE(dt);
      CAPTURE(axis);
      std::vector<Tensor> ts;
      for (int64_t size : {2, 0, 5, 1}) {
        Shape s = base;
        s[axis] = size;
        ts.push_back(values(s, stream++, dt));
      }
      check_concat(ts, to_device(ts), axis);
      check_concat(ts, to_device(ts), axis - 3);     // negative axis
      check_concat({ts[2]}, {on_dev(ts[2])}, axis);  // one piece
    }
}

TEST_CASE("cuda concat: rows that move as 16, 8, 4 or 2-byte units") {
  // Last-axis pieces of D elements: f32 D = 8 (16-byte units), 2 (8), 1 (4); bf16 D = 8, 4, 2, 1,
  // 3 (units 16, 8, 4, 2, 2); along axis 0 the whole piece is one row.
  uint64_t stream = 50;
  for (DType dt : {DType::f32, DType::bf16})
    for (int64_t d : {8, 4, 2, 1, 3})
      for (int axis : {0, 1}) {
        CAPTURE(dt);
        CAPTURE(d);
        CAPTURE(axis);
        std::vector<Tensor> ts = {values({9, d}, stream++, dt), values({9, 2 * d}, stream++, dt),
                                  values({9, d}, stream++, dt)};
        if (axis == 0) ts = {values({3, d}, stream++, dt), values({7, d}, stream++, dt)};
        check_concat(ts, to_device(ts), axis);
      }
  // 1000 rows: several blocks of the grid-stride loop.
  std::vector<Tensor> big = {randn({1000, 12}, 60), randn({1000, 20}, 61)};
  check_concat(big, to_device(big), 1);
}

TEST_CASE(
    "cuda concat: strided pieces (transposed, narrowed, expanded) mixed with contiguous ones") {
  Tensor a = randn({6, 5, 4}, 70), b = randn({6, 3, 4}, 71), c = randn({6, 5, 4}, 72);
  // Transposed: the device copy of the transposed storage, viewed back.
  Tensor at_h = a.transpose(0, 2).contiguous().transpose(0, 2);
  Tensor at_d = on_dev(a.transpose(0, 2).contiguous()).transpose(0, 2);
  CHECK(!at_d.is_contiguous());
  // Narrowed from a wider tensor: rows start one element in (no 16-byte units for it).
  Tensor wide = randn({6, 3, 9}, 73);
  Tensor bn_h = wide.narrow(2, 1, 4), bn_d = on_dev(wide).narrow(2, 1, 4);
  // Expanded: stride 0 along dim 0.
  Tensor row = randn({1, 5, 4}, 74);
  Tensor ce_h = row.expand({6, 5, 4}), ce_d = on_dev(row).expand({6, 5, 4});
  check_concat({at_h, b, ce_h}, {at_d, on_dev(b), ce_d}, 1);
  check_concat({a, bn_h.narrow(1, 0, 3)}, {on_dev(a), bn_d.narrow(1, 0, 3)}, 1);
  check_concat({at_h, c, ce_h, a}, {at_d, on_dev(c), ce_d, on_dev(a)}, 0);
  check_concat({at_h, ce_h}, {at_d, ce_d}, 2);
  // bf16 and i64 strided pieces.
  Tensor h = values({4, 7}, 75, DType::bf16), i = values({7, 4}, 76, DType::i64);
  check_concat({h.transpose(0, 1).contiguous().transpose(0, 1), h},
               {on_dev(h.transpose(0, 1).contiguous()).transpose(0, 1), on_dev(h)}, 0);
  check_concat({i.transpose(0, 1), i.transpose(0, 1)},
               {on_dev(i).transpose(0, 1), on_dev(i).transpose(0, 1)}, 1);
}

TEST_CASE("cuda concat: the same bits under reverse and shuffled thread orders") {
  std::vector<Tensor> ts = {randn({33, 9}, 80),
                            randn({33, 4}, 81).transpose(0, 1).contiguous().transpose(0, 1),
                            randn({33, 16}, 82)};
  // The middle piece is [4, 33] transposed: a strided [33, 4] view on the device.
  std::vector<Tensor> dv = {
      on_dev(ts[0]), on_dev(ts[1].transpose(0, 1).contiguous()).transpose(0, 1), on_dev(ts[2])};
  const Tensor first = kernels::cuda::concat(dv, 1);
  CHECK(same_bits(first, kernels::cpu::concat(ts, 1)));
  for (auto order : {sim::ThreadOrder::reverse, sim::ThreadOrder::shuffled}) {
    sim::ScopedThreadOrder o(order, 7);
    CHECK(same_bits(kernels::cuda::concat(dv, 1), first));
  }
}

TEST_CASE("cuda concat: empty results and errors") {
  Tensor e =
      kernels::cuda::concat({on_dev(Tensor::zeros({0, 3})), on_dev(Tensor::zeros({0, 3}))}, 0);
  CHECK(e.shape() == Shape{0, 3});
  CHECK(e.device() == kernels::cuda::device());
  Tensor x = on_dev(randn({2, 3}, 90));
  CHECK_THROWS_CONTAINING(kernels::cuda::concat({}, 0), "concat: no tensors given");
  CHECK_THROWS_CONTAINING(kernels::cuda::concat({x, randn({2, 3}, 91)}, 0),
                          "concat: tensor 1 f32[2, 3] is not on the CUDA device sim:0");
  CHECK_THROWS_CONTAINING(kernels::cuda::concat({x, Tensor()}, 0), "concat: tensor 1 is undefined");
  CHECK_THROWS_CONTAINING(kernels::cuda::concat({x, on_dev(randn({2, 3}, 92, DType::bf16))}, 0),
                          "has another dtype than tensor 0");
  CHECK_THROWS_CONTAINING(kernels::cuda::concat({x, on_dev(randn({2, 4}, 93))}, 0),
                          "all dims except axis 0 must match");
  CHECK_THROWS_CONTAINING(kernels::cuda::concat({x, on_dev(randn({2, 3, 1}, 94))}, 1),
                          "all dims except axis 1 must match");
  CHECK_THROWS_CONTAINING(kernels::cuda::concat({x}, 2), "concat");
}
