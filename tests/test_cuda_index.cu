// The handwritten CUDA index kernels of kernels/cuda/index.cu other than embedding (which
// test_cuda_misc.cu covers): index_select / index_add and gather / scatter_add, run under the sim
// and compared bit for bit with the CPU ops (kernels::cpu::...): the moves copy bits, and the
// scatter-adds promise the CPU op's summation order. Odd shapes on every axis, repeated indices
// and destination rows no index names, i64 and i32 indices, strided inputs, indices and
// destinations, every dtype the CPU op accepts, the radix sort's multi-tile and two-pass cases,
// reverse and shuffled thread orders, and the index errors with the CPU op's messages. Also the
// host round trip of the capacity plans (kernels/capacity.h) for device tensors. Fresh device
// memory is NaN-poisoned and guarded, so a missed element or a write past the end shows up.
// Built only in the sim build (g++ -x c++ -DENGINE_SIM).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/capacity.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "kernels/index.h"
#include "kernels/routing.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {

engine::Device dev() { return kernels::cuda::device(); }
Tensor on_dev(const Tensor& t) { return t.to(dev()); }
// A host copy of any device tensor: a strided view (the in-place ops' destinations) is read as its
// whole storage and viewed the same way on the host, so these tests need no device strided copy.
Tensor on_cpu(const Tensor& t) {
  if (t.device().is_cpu() || t.is_contiguous()) return t.to(engine::Device::cpu());
  const int64_t elems = int64_t(t.storage()->nbytes() / t.element_size());
  Tensor all(t.storage(), Shape{elems}, Shape{1}, 0, t.dtype());
  Tensor h = all.to(engine::Device::cpu());
  return Tensor(h.storage(), t.shape(), t.strides(), t.offset(), t.dtype());
}

bool same_bits(const Tensor& a, const Tensor& b) {
  if (!(a.shape() == b.shape()) || a.dtype() != b.dtype()) return false;
  Tensor x = on_cpu(a).contiguous(), y = on_cpu(b).contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

// Uniform random integers in [0, n) with the given shape and index dtype.
Tensor rand_ids(const Shape& s, int64_t n, uint64_t stream, DType dt = DType::i64) {
  std::vector<double> u = testing::randu(s, stream, 0.0, double(n), DType::f64).to_vector<double>();
  std::vector<int64_t> v;
  for (double x : u) v.push_back(std::min<int64_t>(n - 1, int64_t(std::floor(x))));
  return Tensor::from_vector(v, s, DType::i64).to(dt);
}

// Values of any dtype: normal floats, or integers in [-1000, 1000).
Tensor values(const Shape& s, uint64_t stream, DType dt) {
  if (dt == DType::i32 || dt == DType::i64)
    return testing::randu(s, stream, -1000, 1000, DType::f64).to(dt);
  return randn(s, stream, dt);
}

// A strided device view with t's values: t's transpose copied to the device, transposed back.
Tensor dev_transposed(const Tensor& t, int a, int b) {
  return on_dev(t.transpose(a, b).contiguous()).transpose(a, b);
}

// Runs f under the reverse and a shuffled thread order.
template <class F>
void other_orders(F&& f) {
  for (auto order : {sim::ThreadOrder::reverse, sim::ThreadOrder::shuffled}) {
    sim::ScopedThreadOrder o(order, 4242);
    f();
  }
}

}  // namespace

// --- index_select -------------------------------------------------------------------------------

TEST_CASE("cuda index_select: every axis and dtype, repeated i64/i32 indices, bit-identical") {
  uint64_t stream = 1;
  for (DType dt : {DType::f32, DType::bf16, DType::f64, DType::i32, DType::i64})
    for (int axis = 0; axis < 3; ++axis) {
      CAPTURE(dt);
      CAPTURE(axis);
      Tensor x = values({5, 7, 3}, stream++, dt);
      Tensor idx = rand_ids({11}, x.size(axis), stream++, axis == 1 ? DType::i32 : DType::i64);
      Tensor got = kernels::cuda::index_select(on_dev(x), axis, on_dev(idx));
      CHECK(got.device() == dev());
      CHECK(same_bits(got, kernels::cpu::index_select(x, axis, idx)));
      CHECK(same_bits(kernels::cuda::index_select(on_dev(x), axis - 3, on_dev(idx)), got));
    }
}

TEST_CASE("cuda index_select: copy units, strided inputs and indices, empty and 0-d indices") {
  // Rows of D elements along the last dims: f32 D = 8 / 2 / 1 take 16 / 8 / 4-byte units, bf16
  // D = 8 / 4 / 2 / 3 take 16 / 8 / 4 / 2-byte units; a narrowed table (rows not 16-byte aligned)
  // falls back to elements.
  uint64_t stream = 100;
  for (DType dt : {DType::f32, DType::bf16})
    for (int64_t d : {8, 4, 2, 1, 3}) {
      CAPTURE(dt);
      CAPTURE(d);
      Tensor x = values({6, 9, d}, stream++, dt);
      Tensor idx = rand_ids({13}, 9, stream++);
      CHECK(same_bits(kernels::cuda::index_select(on_dev(x), 1, on_dev(idx)),
                      kernels::cpu::index_select(x, 1, idx)));
      Tensor idx0 = rand_ids({4}, 6, stream++, DType::i32);
      CHECK(same_bits(kernels::cuda::index_select(on_dev(x), 0, on_dev(idx0)),
                      kernels::cpu::index_select(x, 0, idx0)));
    }
  Tensor wide = randn({10, 17}, 120);
  Tensor idx = rand_ids({21}, 10, 121);
  CHECK(same_bits(kernels::cuda::index_select(on_dev(wide).narrow(1, 1, 16), 0, on_dev(idx)),
                  kernels::cpu::index_select(wide.narrow(1, 1, 16), 0, idx)));
  // Transposed input on every axis, strided (every other) i32 indices.
  Tensor x = randn({4, 6, 5}, 122);
  Tensor xt = dev_transposed(x, 0, 2);
  for (int axis = 0; axis < 3; ++axis) {
    CAPTURE(axis);
    Tensor sid = rand_ids({14}, x.size(axis), 124 + axis, DType::i32);
    CHECK(same_bits(kernels::cuda::index_select(xt, axis, on_dev(sid).slice(0, 0, 14, 2)),
                    kernels::cpu::index_select(x, axis, sid.slice(0, 0, 14, 2))));
  }
  // No indices, a 0-d index, an empty x.
  Tensor none = Tensor::zeros({0}, DType::i64);
  Tensor e = kernels::cuda::index_select(on_dev(x), 1, on_dev(none));
  CHECK(e.shape() == Shape{4, 0, 5});
  Tensor one = Tensor::full({}, 3.0, DType::i64);
  CHECK(same_bits(kernels::cuda::index_select(on_dev(x), 1, on_dev(one)),
                  kernels::cpu::index_select(x, 1, one)));
  CHECK(kernels::cuda::index_select(on_dev(Tensor::zeros({0, 3})), 1,
                                    on_dev(Tensor::zeros({2}, DType::i64)))
            .shape() == Shape{0, 2});
}

// --- index_add ----------------------------------------------------------------------------------

TEST_CASE("cuda index_add: every axis, repeated indices, f32/f64, bit-identical to the CPU op") {
  uint64_t stream = 200;
  for (DType dt : {DType::f32, DType::f64})
    for (int axis = 0; axis < 3; ++axis) {
      CAPTURE(dt);
      CAPTURE(axis);
      const Shape xs = {5, 7, 3};
      // 23 indices over a few rows (many repeats; some rows named by none).
      Tensor idx = rand_ids({23}, std::max<int64_t>(1, xs[axis] - 2), stream++,
                            axis == 2 ? DType::i32 : DType::i64);
      Shape ss = xs;
      ss[axis] = 23;
      Tensor src = randn(ss, stream++, dt, 3.0);
      Tensor ref = kernels::cpu::index_add(xs, axis, idx, src);
      Tensor got = kernels::cuda::index_add(xs, axis, on_dev(idx), on_dev(src));
      CHECK(got.device() == dev());
      CHECK(same_bits(got, ref));
      // In place into a contiguous destination: d += s_j in turn.
      Tensor base = randn(xs, stream++, dt);
      Tensor into_h = base.clone();
      kernels::cpu::index_add_(into_h, axis, idx, src);
      Tensor into_d = on_dev(base);
      kernels::cuda::index_add_(into_d, axis, on_dev(idx), on_dev(src));
      CHECK(same_bits(into_d, into_h));
      // In place into a transposed destination (the CPU op sums from 0, then adds).
      Tensor tb_h = base.transpose(0, 2).contiguous().transpose(0, 2);
      Tensor tb_d = dev_transposed(base, 0, 2);
      kernels::cpu::index_add_(tb_h, axis, idx, src);
      kernels::cuda::index_add_(tb_d, axis, on_dev(idx), on_dev(src));
      CHECK(!tb_d.is_contiguous());
      CHECK(same_bits(tb_d, tb_h));
    }
}

TEST_CASE("cuda index_add: strided src and indices, sort tiles and passes, thread orders") {
  // A transposed src and every-other i32 indices.
  Tensor src = randn({6, 9}, 300);
  Tensor idx = rand_ids({18}, 4, 301, DType::i32).slice(0, 0, 18, 2);
  Tensor ref = kernels::cpu::index_add({6, 4}, 1, idx, src);
  Tensor src_t = dev_transposed(src, 0, 1);
  Tensor idx_d = on_dev(rand_ids({18}, 4, 301, DType::i32)).slice(0, 0, 18, 2);
  CHECK(same_bits(kernels::cuda::index_add({6, 4}, 1, idx_d, src_t), ref));
  // 2500 indices (3 sort tiles) into 300 rows (two 8-bit radix passes), f32 and f64; 5000 into
  // 2 rows (long runs); then the same under other thread orders.
  struct Case {
    int64_t n, rows, d;
  };
  for (Case c : {Case{2500, 300, 5}, Case{5000, 2, 3}, Case{1, 1, 4}})
    for (DType dt : {DType::f32, DType::f64}) {
      CAPTURE(c.n);
      CAPTURE(dt);
      Tensor ids = rand_ids({c.n}, c.rows, 310 + c.n);
      Tensor s = randn({c.n, c.d}, 311 + c.n, dt);
      Tensor want = kernels::cpu::index_add({c.rows, c.d}, 0, ids, s);
      Tensor got = kernels::cuda::index_add({c.rows, c.d}, 0, on_dev(ids), on_dev(s));
      CHECK(same_bits(got, want));
      if (c.n == 2500 && dt == DType::f32)
        other_orders([&] {
          CHECK(same_bits(kernels::cuda::index_add({c.rows, c.d}, 0, on_dev(ids), on_dev(s)), got));
        });
    }
  // No indices: zeros (out of place), unchanged (in place).
  Tensor z = kernels::cuda::index_add({3, 4}, 0, on_dev(Tensor::zeros({0}, DType::i64)),
                                      on_dev(Tensor::zeros({0, 4})));
  CHECK(same_bits(z, Tensor::zeros({3, 4})));
  Tensor base = randn({3, 4}, 320);
  Tensor into = on_dev(base);
  kernels::cuda::index_add_(into, 1, on_dev(Tensor::zeros({0}, DType::i64)),
                            on_dev(Tensor::zeros({3, 0})));
  CHECK(same_bits(into, base));
}

// --- gather / scatter_add -----------------------------------------------------------------------

namespace {

// Calls f(x, axis, idx, src) on every axis of a [4, 7, 5] x, for idx with x's shape except 3
// along the axis and for a smaller one (9 along the axis: positions repeat); src has idx's shape.
template <class F>
void gather_sweep(DType dt, uint64_t stream, F f) {
  Tensor x = values({4, 7, 5}, stream, dt);
  for (int axis = 0; axis < 3; ++axis) {
    Shape is = x.shape();
    is[axis] = 3;
    Shape small = {3, 4, 2};
    small[axis] = 9;
    for (const Shape& s : {is, small}) {
      CAPTURE(axis);
      CAPTURE(s);
      Tensor idx =
          rand_ids(s, x.size(axis), stream + 10 * axis + s[0], axis == 2 ? DType::i32 : DType::i64);
      f(x, axis, idx, values(s, stream + 100 + axis, dt));
    }
  }
}

}  // namespace

TEST_CASE("cuda gather: every axis and dtype, smaller and repeating indices, strided inputs") {
  uint64_t stream = 400;
  for (DType dt : {DType::f32, DType::bf16, DType::f64, DType::i32, DType::i64}) {
    CAPTURE(dt);
    gather_sweep(dt, stream += 1000,
                 [&](const Tensor& x, int axis, const Tensor& idx, const Tensor&) {
                   Tensor got = kernels::cuda::gather(on_dev(x), axis, on_dev(idx));
                   CHECK(got.device() == dev());
                   CHECK(same_bits(got, kernels::cpu::gather(x, axis, idx)));
                 });
  }
  // Transposed x and transposed indices.
  gather_sweep(DType::f32, 9000, [&](const Tensor& x, int axis, const Tensor& idx, const Tensor&) {
    CHECK(same_bits(kernels::cuda::gather(dev_transposed(x, 0, 2), axis, dev_transposed(idx, 1, 2)),
                    kernels::cpu::gather(x, axis, idx)));
  });
  CHECK(
      kernels::cuda::gather(on_dev(randn({3, 4}, 1)), 1, on_dev(Tensor::zeros({3, 0}, DType::i64)))
          .shape() == Shape{3, 0});
}

TEST_CASE("cuda scatter_add: every axis, repeats, strided operands, f32/f64, bit-identical") {
  uint64_t stream = 500;
  for (DType dt : {DType::f32, DType::f64}) {
    CAPTURE(dt);
    gather_sweep(
        dt, stream += 1000, [&](const Tensor& x, int axis, const Tensor& idx, const Tensor& src) {
          Tensor got = kernels::cuda::scatter_add(x.shape(), axis, on_dev(idx), on_dev(src));
          CHECK(got.device() == dev());
          CHECK(same_bits(got, kernels::cpu::scatter_add(x.shape(), axis, idx, src)));
          // In place into x, contiguous and transposed; a transposed src and idx.
          Tensor a = x.clone();
          kernels::cpu::scatter_add_(a, axis, idx, src);
          Tensor ad = on_dev(x);
          kernels::cuda::scatter_add_(ad, axis, on_dev(idx), on_dev(src));
          CHECK(same_bits(ad, a));
          Tensor td = dev_transposed(x, 0, 1);
          kernels::cuda::scatter_add_(td, axis, dev_transposed(idx, 0, 2),
                                      dev_transposed(src, 1, 2));
          CHECK(same_bits(td, a));
        });
  }
  // src larger than idx (only idx's extent is used), a long axis, thread orders.
  Tensor idx = rand_ids({2, 300, 3}, 5, 601);
  Tensor src = randn({3, 300, 4}, 602);
  Tensor want = kernels::cpu::scatter_add({2, 5, 3}, 1, idx, src);
  Tensor got = kernels::cuda::scatter_add({2, 5, 3}, 1, on_dev(idx), on_dev(src));
  CHECK(same_bits(got, want));
  other_orders([&] {
    CHECK(same_bits(kernels::cuda::scatter_add({2, 5, 3}, 1, on_dev(idx), on_dev(src)), got));
  });
}

// --- errors -------------------------------------------------------------------------------------

TEST_CASE(
    "cuda index ops: bad indices give the CPU op's messages, and in-place ops write nothing") {
  Tensor x = randn({3, 5}, 700);
  Tensor xd = on_dev(x);
  for (DType it : {DType::i64, DType::i32}) {
    CAPTURE(it);
    Tensor bad = Tensor::from_vector<int64_t>({0, 2, 3, 1}, {4}).to(it);
    Tensor neg = Tensor::from_vector<int64_t>({1, -1}, {2}).to(it);
    const char* sel = "index_select: index 3 at position 2 is out of range [0, 3)";
    CHECK_THROWS_CONTAINING(kernels::cpu::index_select(x, 0, bad), sel);
    CHECK_THROWS_CONTAINING(kernels::cuda::index_select(xd, 0, on_dev(bad)), sel);
    CHECK_THROWS_CONTAINING(kernels::cuda::index_select(xd, 0, on_dev(neg)),
                            "index_select: index -1 at position 1 is out of range [0, 3)");
    const char* add = "index_add: index 3 at position 2 is out of range [0, 3)";
    CHECK_THROWS_CONTAINING(kernels::cpu::index_add({3, 5}, 0, bad, randn({4, 5}, 1)), add);
    CHECK_THROWS_CONTAINING(
        kernels::cuda::index_add({3, 5}, 0, on_dev(bad), on_dev(randn({4, 5}, 1))), add);
    Tensor into = on_dev(x);
    CHECK_THROWS_CONTAINING(
        kernels::cuda::index_add_(into, 0, on_dev(bad), on_dev(randn({4, 5}, 1))), add);
    CHECK(same_bits(into, x));
    // Position 3 (row-major in idx) holds the bad 5; a strided idx view names its own position.
    Tensor gi = Tensor::from_vector<int64_t>({0, 1, 2, 5, 0, 1}, {3, 2}).to(it);
    const char* gat = "gather: index 5 at position 3 is out of range [0, 5)";
    CHECK_THROWS_CONTAINING(kernels::cpu::gather(x, 1, gi), gat);
    CHECK_THROWS_CONTAINING(kernels::cuda::gather(xd, 1, on_dev(gi)), gat);
    CHECK_THROWS_CONTAINING(kernels::cuda::gather(xd, 1, dev_transposed(gi, 0, 1)), gat);
    const char* sca = "scatter_add: index 5 at position 3 is out of range [0, 4)";
    CHECK_THROWS_CONTAINING(kernels::cpu::scatter_add({3, 4}, 1, gi, randn({3, 2}, 1)), sca);
    CHECK_THROWS_CONTAINING(
        kernels::cuda::scatter_add({3, 4}, 1, on_dev(gi), on_dev(randn({3, 2}, 1))), sca);
    Tensor zeros = on_dev(Tensor::zeros({3, 4}));
    CHECK_THROWS_CONTAINING(
        kernels::cuda::scatter_add_(zeros, 1, on_dev(gi), on_dev(randn({3, 2}, 1))), sca);
    CHECK(same_bits(zeros, Tensor::zeros({3, 4})));
  }
}

TEST_CASE("cuda index ops: shape, dtype, device and overlap errors") {
  Tensor xd = on_dev(randn({3, 5}, 710));
  Tensor i2 = on_dev(Tensor::zeros({2}, DType::i64));
  CHECK_THROWS_CONTAINING(
      kernels::cuda::index_select(xd, 0, on_dev(Tensor::zeros({2, 1}, DType::i64))),
      "index_select: idx must be 1-D");
  CHECK_THROWS_CONTAINING(kernels::cuda::index_select(xd, 2, i2),
                          "index_select: axis 2 out of range");
  CHECK_THROWS_CONTAINING(kernels::cuda::index_select(xd, 0, on_dev(Tensor::zeros({2}))),
                          "index_select: indices must be i64 or i32, got f32");
  CHECK_THROWS_CONTAINING(kernels::cuda::index_select(xd, 0, Tensor::zeros({2}, DType::i64)),
                          "is not on the CUDA device sim:0");
  CHECK_THROWS_CONTAINING(kernels::cuda::index_select(randn({3, 5}, 1), 0, i2),
                          "is not on the CUDA device sim:0");
  CHECK_THROWS_CONTAINING(kernels::cuda::index_add({3, 5}, 1, i2, on_dev(randn({3, 3}, 1))),
                          "index_add: src f32[3, 3] (sim:0) does not match");
  CHECK_THROWS_CONTAINING(
      kernels::cuda::index_add({3, 5}, 0, i2, on_dev(randn({2, 5}, 1, DType::bf16))),
      "index_add: expected dtype f32 or f64, got bf16");
  Tensor f64 = on_dev(Tensor::zeros({3, 5}, DType::f64));
  CHECK_THROWS_CONTAINING(kernels::cuda::index_add_(f64, 0, i2, on_dev(randn({2, 5}, 1))),
                          "index_add");
  Tensor overlapping = on_dev(Tensor::zeros({1, 5})).expand({3, 5});
  CHECK_THROWS_CONTAINING(kernels::cuda::index_add_(overlapping, 0, i2, on_dev(randn({2, 5}, 1))),
                          "overlapping elements");
  CHECK_THROWS_CONTAINING(
      kernels::cuda::scatter_add_(overlapping, 1, on_dev(Tensor::zeros({3, 2}, DType::i64)),
                                  on_dev(randn({3, 2}, 1))),
      "scatter_add: destination f32[3, 5] (sim:0) has overlapping elements");
  CHECK_THROWS_CONTAINING(kernels::cuda::gather(xd, 1, on_dev(Tensor::zeros({6}, DType::i64))),
                          "gather: idx i64[6] (sim:0) must have the rank of x");
  CHECK_THROWS_CONTAINING(kernels::cuda::gather(xd, 0, on_dev(Tensor::zeros({2, 6}, DType::i64))),
                          "is larger than x f32[3, 5] (sim:0) in dim 1");
  Tensor gi = on_dev(Tensor::zeros({3, 2}, DType::i64));
  CHECK_THROWS_CONTAINING(kernels::cuda::scatter_add({3, 9}, 1, gi, on_dev(randn({3, 1}, 1))),
                          "is larger than src");
  CHECK_THROWS_CONTAINING(kernels::cuda::scatter_add({2, 9}, 1, gi, on_dev(randn({3, 2}, 1))),
                          "is larger than the destination");
  CHECK_THROWS_CONTAINING(
      kernels::cuda::scatter_add({3, 9}, 1, gi, on_dev(randn({3, 2}, 1, DType::bf16))),
      "scatter_add: expected dtype f32 or f64, got bf16");
}

// --- capacity plans (CPU code; the entry points round-trip device plans through the host) ------

TEST_CASE("cuda capacity: apply_capacity and unnamed_rows on device plans equal the CPU results") {
  const int64_t T = 37, E = 5, k = 2;
  Tensor ids = rand_ids({T, k}, E, 800);
  kernels::DispatchPlan plan = kernels::cpu::make_dispatch(ids, E);
  kernels::DispatchPlan dplan{on_dev(plan.counts), on_dev(plan.offsets), on_dev(plan.perm),
                              on_dev(plan.rows)};
  for (int64_t C : {0, 3, 9, 100}) {
    CAPTURE(C);
    kernels::CapacityPlan want = kernels::cpu::apply_capacity(plan, C, 11, 12);
    kernels::CapacityPlan got = kernels::apply_capacity(dplan, C, 11, 12);
    for (const Tensor* t : {&got.counts, &got.offsets, &got.perm, &got.rows, &got.experts})
      CHECK(t->device() == dev());
    CHECK(same_bits(got.counts, want.counts));
    CHECK(same_bits(got.offsets, want.offsets));
    CHECK(same_bits(got.perm, want.perm));
    CHECK(same_bits(got.rows, want.rows));
    CHECK(same_bits(got.experts, want.experts));
    CHECK(got.dropped == want.dropped);
    Tensor un = kernels::unnamed_rows(got.rows, T);
    CHECK(un.device() == dev());
    CHECK(same_bits(un, kernels::cpu::unnamed_rows(want.rows, T)));
  }
  // i32 rows on the device.
  Tensor r32 = rand_ids({20}, 30, 801, DType::i32);
  CHECK(same_bits(kernels::unnamed_rows(on_dev(r32), 30), kernels::cpu::unnamed_rows(r32, 30)));
}
