// The handwritten CUDA kernels for LayerNorm, L2-normalise, softmax / log_softmax, reductions
// over one axis, sum_all / mean_all and bias + GELU, run under the sim and compared with the CPU
// ops (kernels::cpu::*). Shapes hit every launch variant (one warp per row with 1, 2 or 4 cached
// chunks, one block per row, streaming rows; 16-byte vector and scalar paths), f32 and bf16,
// strided views, NaN/Inf rows, and run under reverse and shuffled thread orders to expose missing
// barriers. Fresh device memory is NaN and guarded, so an unwritten or out-of-bounds element fails.
// Built only in the sim build (g++ -x c++ -DENGINE_SIM).
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "kernels/bias_gelu.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "kernels/l2norm.h"
#include "kernels/layernorm.h"
#include "kernels/reduce.h"
#include "kernels/softmax.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {

Tensor dev(const Tensor& t) { return t.defined() ? t.to(kernels::cuda::device()) : t; }
Tensor host(const Tensor& t) { return t.to(engine::Device::cpu()); }

struct RowsD {
  int64_t rows, d;
};
// Rows × widths that reach every launch variant: D % 8 == 0 takes the vector path (one warp per
// row with 1 / 2 / 4 cached chunks per lane at 64 / 384 / 768, one block per row at 2048,
// streaming at 8200); 1, 7, 33, 130 and 1025 take the scalar path (warp or block per row).
const RowsD kShapes[] = {{1, 1},  {3, 7},  {17, 33}, {65, 130}, {33, 768},
                         {5, 1025}, {3, 64}, {9, 384}, {3, 2048}, {2, 8200}};

// Runs f in forward order, then in reverse or shuffled order (alternating with `which`, so each
// appears across a test's shapes): a kernel missing a barrier fails in one of them. Every order
// costs a full sim run, hence two per call rather than three.
template <class F>
void two_orders(int which, F&& f) {
  f();
  CAPTURE(which);
  sim::ScopedThreadOrder scoped(which % 2 ? sim::ThreadOrder::shuffled : sim::ThreadOrder::reverse,
                                uint64_t(which) + 1);
  f();
}

// The GPU result against the CPU op's: f32 |err| <= atol + 1e-5 |ref|, bf16 (as llm.c)
// |err| <= atol + 0.08 |ref| with atol at least 0.02 (values of order 1). A NaN where the reference is
// finite (an element never written: fresh device memory is NaN) fails.
void check_gpu(const Tensor& gpu, const Tensor& cpu, double atol = 1e-5) {
  CHECK(gpu.device() == kernels::cuda::device());
  CHECK(gpu.dtype() == cpu.dtype());
  if (gpu.dtype() == DType::bf16) CHECK_CLOSE(host(gpu), cpu, 0.08, std::max(atol, 0.02));
  else CHECK_CLOSE(host(gpu), cpu, 1e-5, atol);
}

bool bits_equal(const Tensor& a, const Tensor& b) {
  return host(a).to_vector<float>() == host(b).to_vector<float>();
}

}  // namespace

// --- LayerNorm ---------------------------------------------------------------------------------

TEST_CASE("cuda layernorm: forward and backward vs the CPU op, every launch variant, f32 and bf16") {
  uint64_t stream = 100;
  int which = 0;
  for (const RowsD& s : kShapes)
    for (DType dt : {DType::f32, DType::bf16})
      for (int variant = 0; variant < 4; ++variant) {  // bit 0: weight, bit 1: bias
        if (dt == DType::bf16 && (variant & 1) == 0) continue;
        CAPTURE(s.rows);
        CAPTURE(s.d);
        CAPTURE(dt);
        CAPTURE(variant);
        Tensor x = Tensor::normal({s.rows, s.d}, 5, ++stream, 0.5, 2.0, dt);
        Tensor g = randn({s.rows, s.d}, ++stream, dt);
        // The weight is bf16 with bf16 input in one variant: parameters may have either dtype.
        Tensor w = variant & 1 ? randn({s.d}, ++stream, variant == 3 ? dt : DType::f32) : Tensor();
        Tensor b = variant & 2 ? randn({s.d}, ++stream) : Tensor();
        const bool has_bias = variant & 2;
        auto cf = kernels::cpu::layernorm(x, w, b, 1e-5);
        auto cb = kernels::cpu::layernorm_backward(g, x, w, cf.mean, cf.rstd, has_bias);
        auto run = [&] {
          auto gf = kernels::cuda::layernorm(dev(x), dev(w), dev(b), 1e-5);
          check_gpu(gf.y, cf.y);
          check_gpu(gf.mean, cf.mean, 1e-6);
          check_gpu(gf.rstd, cf.rstd);
          auto gb = kernels::cuda::layernorm_backward(dev(g), dev(x), dev(w), gf.mean, gf.rstd, has_bias);
          check_gpu(gb.dx, cb.dx, 1e-4);
          CHECK(gb.dweight.defined() == w.defined());
          CHECK(gb.dbias.defined() == has_bias);
          // Sums over rows: the error grows with the number of rows.
          const double atol = 2e-6 * double(s.rows) + 1e-5;
          if (w.defined()) CHECK_CLOSE(host(gb.dweight), cb.dweight, 1e-5, atol);
          if (has_bias) CHECK_CLOSE(host(gb.dbias), cb.dbias, 1e-5, atol);
        };
        if (variant == 3 && dt == DType::f32) two_orders(which++, run);
        else run();
      }
}

TEST_CASE("cuda layernorm: constant rows, large offsets, NaN and Inf rows") {
  // Constant rows: variance 0, y = bias exactly, rstd = 1/sqrt(eps).
  Tensor b = randn({13}, 1);
  auto c = kernels::cuda::layernorm(dev(Tensor::full({4, 13}, 3.25)), dev(randn({13}, 2)), dev(b), 1e-5);
  CHECK_CLOSE(host(c.y), b.expand({4, 13}), 0, 0);
  CHECK_CLOSE(host(c.rstd), Tensor::full({4}, 1.0 / std::sqrt(1e-5), DType::f64), 1e-6, 0);
  for (int64_t d : {64, 130, 768}) {  // vector and scalar paths
    Tensor e = Tensor::full({3, d}, 0.1);
    auto ce = kernels::cuda::layernorm(dev(e), Tensor(), Tensor(), 1e-5);
    CHECK_CLOSE(host(ce.y), Tensor::zeros({3, d}), 0, 1e-6);
    auto cbw = kernels::cuda::layernorm_backward(dev(randn({3, d}, 3)), dev(e), Tensor(), ce.mean, ce.rstd, true);
    CHECK(std::isfinite(host(cbw.dx).to_vector<float>()[0]));
  }
  // 1e4 + small noise in f32: the refined mean keeps the digits a plain f32 mean would lose.
  for (int64_t d : {7, 130, 384}) {
    CAPTURE(d);
    Tensor xo = Tensor::normal({9, d}, 7, 3, 1e4, 0.05, DType::f32);
    auto cpu = kernels::cpu::layernorm(xo, Tensor(), Tensor(), 1e-6);
    auto gpu = kernels::cuda::layernorm(dev(xo), Tensor(), Tensor(), 1e-6);
    CHECK_CLOSE(host(gpu.y), cpu.y, 1e-5, 1e-5);
    CHECK_CLOSE(host(gpu.rstd), cpu.rstd, 1e-5, 0);
    Tensor g = randn({9, d}, 4);
    auto cb = kernels::cpu::layernorm_backward(g, xo, Tensor(), cpu.mean, cpu.rstd, false);
    auto gb = kernels::cuda::layernorm_backward(dev(g), dev(xo), Tensor(), gpu.mean, gpu.rstd, false);
    CHECK_CLOSE(host(gb.dx), cb.dx, 1e-4, 1e-3);  // dx scales with rstd (~20 here)
  }
  // A NaN or an Inf poisons its own row only, as on the CPU.
  for (int64_t d : {64, 33}) {
    Tensor x = randn({4, d}, 5);
    std::vector<float> v = x.to_vector<float>();
    v[1 * d + 3] = std::numeric_limits<float>::quiet_NaN();
    v[2 * d + d - 1] = std::numeric_limits<float>::infinity();
    x = Tensor::from_vector(v, {4, d});
    auto cpu = kernels::cpu::layernorm(x, Tensor(), Tensor(), 1e-5);
    auto gpu = kernels::cuda::layernorm(dev(x), Tensor(), Tensor(), 1e-5);
    check_gpu(gpu.y, cpu.y);
    Tensor y = host(gpu.y);
    CHECK(std::isnan(y.at({1, 0})));
    CHECK(std::isnan(y.at({2, 0})));
    CHECK(std::isfinite(y.at({0, 0})));
    CHECK(std::isfinite(y.at({3, d - 1})));
  }
}

TEST_CASE("cuda layernorm: strided views and >2-D inputs give the same results as contiguous ones") {
  Tensor x = randn({6, 5, 40}, 11);
  Tensor w = randn({40}, 12), g = randn({6, 5, 40}, 13);
  auto cf = kernels::cpu::layernorm(x, w, Tensor(), 1e-5);
  auto cb = kernels::cpu::layernorm_backward(g, x, w, cf.mean, cf.rstd, true);
  // Rows along a transposed axis (element stride != 1), a narrowed slice (unaligned rows), and a
  // permutation whose rows need three strides (gathered into a contiguous copy first).
  Tensor xt = dev(x.transpose(1, 2).contiguous()).transpose(1, 2);
  CHECK(xt.stride(-1) != 1);
  Tensor xp = dev(x.permute({1, 0, 2}).contiguous()).permute({1, 0, 2});
  for (const Tensor& xd : {xt, xp}) {
    auto gf = kernels::cuda::layernorm(xd, dev(w), Tensor(), 1e-5);
    check_gpu(gf.y, cf.y);
    auto gb = kernels::cuda::layernorm_backward(dev(g), xd, dev(w), gf.mean, gf.rstd, true);
    check_gpu(gb.dx, cb.dx, 1e-4);
    CHECK_CLOSE(host(gb.dweight), cb.dweight, 1e-5, 1e-4);
    CHECK_CLOSE(host(gb.dbias), cb.dbias, 1e-5, 1e-4);
  }
  // A narrowed slice of a wider tensor: rows 43 apart, starting one element in.
  Tensor h = Tensor::zeros({6, 5, 43});
  h.narrow(2, 1, 40).copy_(x);
  Tensor xs = dev(h).narrow(2, 1, 40);
  auto gs = kernels::cuda::layernorm(xs, dev(w), Tensor(), 1e-5);
  check_gpu(gs.y, cf.y);
  CHECK(gs.y.shape() == Shape{6, 5, 40});
  CHECK(gs.mean.shape() == Shape{6, 5});
}

TEST_CASE("cuda layernorm: weight and bias gradients are bit-identical across thread orders") {
  // 150 rows: 10 row chunks, so the second stage adds more parts than it has warps.
  for (RowsD s : {RowsD{150, 64}, RowsD{17, 130}, RowsD{17, 2048}}) {
    CAPTURE(s.d);
    Tensor x = randn({s.rows, s.d}, 21), g = randn({s.rows, s.d}, 22), w = randn({s.d}, 23);
    auto f = kernels::cuda::layernorm(dev(x), dev(w), Tensor(), 1e-5);
    auto a = kernels::cuda::layernorm_backward(dev(g), dev(x), dev(w), f.mean, f.rstd, true);
    auto cf = kernels::cpu::layernorm(x, w, Tensor(), 1e-5);
    auto c = kernels::cpu::layernorm_backward(g, x, w, cf.mean, cf.rstd, true);
    CHECK_CLOSE(host(a.dweight), c.dweight, 1e-5, 1e-4);
    CHECK_CLOSE(host(a.dbias), c.dbias, 1e-5, 1e-4);
    sim::ScopedThreadOrder scoped(sim::ThreadOrder::shuffled, 99);
    auto b = kernels::cuda::layernorm_backward(dev(g), dev(x), dev(w), f.mean, f.rstd, true);
    CHECK(bits_equal(a.dweight, b.dweight));
    CHECK(bits_equal(a.dbias, b.dbias));
  }
}

TEST_CASE("cuda layernorm: empty row sets and errors") {
  auto e = kernels::cuda::layernorm(dev(Tensor::zeros({0, 9})), Tensor(), Tensor(), 1e-5);
  CHECK(e.y.shape() == Shape{0, 9});
  auto eb = kernels::cuda::layernorm_backward(dev(Tensor::zeros({0, 9})), dev(Tensor::zeros({0, 9})),
                                              dev(Tensor::ones({9})), e.mean, e.rstd, true);
  CHECK(host(eb.dweight).to_vector<float>() == std::vector<float>(9, 0.0f));
  CHECK(host(eb.dbias).to_vector<float>() == std::vector<float>(9, 0.0f));
  Tensor x = dev(randn({3, 8}, 1));
  CHECK_THROWS_CONTAINING(kernels::cuda::layernorm(randn({3, 8}, 1), Tensor(), Tensor(), 1e-5),
                          "layernorm: x f32[3, 8] is not on sim:0");
  CHECK_THROWS_CONTAINING(kernels::cuda::layernorm(dev(randn({3, 8}, 1, DType::f64)), Tensor(), Tensor(), 1e-5),
                          "must be f32 or bf16 on the GPU");
  CHECK_THROWS_CONTAINING(kernels::cuda::layernorm(x, dev(randn({7}, 2)), Tensor(), 1e-5),
                          "does not match the last dim");
  CHECK_THROWS_CONTAINING(kernels::cuda::layernorm(x, randn({8}, 2), Tensor(), 1e-5), "weight f32[8] is not on");
  CHECK_THROWS_CONTAINING(kernels::cuda::layernorm(dev(Tensor::zeros({3, 0})), Tensor(), Tensor(), 1e-5),
                          "non-empty last dim");
  auto f = kernels::cuda::layernorm(x, Tensor(), Tensor(), 1e-5);
  CHECK_THROWS_CONTAINING(kernels::cuda::layernorm_backward(x, x, Tensor(), f.rstd.narrow(0, 0, 2), f.rstd, false),
                          "saved statistics");
  CHECK_THROWS_CONTAINING(kernels::cuda::layernorm_backward(dev(randn({3, 7}, 3)), x, Tensor(), f.mean, f.rstd, false),
                          "layernorm_backward");
}

// --- L2 normalisation --------------------------------------------------------------------------

TEST_CASE("cuda l2_normalize: forward and backward vs the CPU op, every launch variant, f32 and bf16") {
  uint64_t stream = 300;
  int which = 0;
  for (const RowsD& s : kShapes)
    for (DType dt : {DType::f32, DType::bf16}) {
      CAPTURE(s.rows);
      CAPTURE(s.d);
      CAPTURE(dt);
      Tensor x = randn({s.rows, s.d}, ++stream, dt, 3.0);
      Tensor g = randn({s.rows, s.d}, ++stream, dt);
      auto cf = kernels::cpu::l2_normalize(x, 1e-6, -1);
      Tensor cdx = kernels::cpu::l2_normalize_backward(g, cf.y, cf.inv_norm, -1);
      auto run = [&] {
        auto gf = kernels::cuda::l2_normalize(dev(x), 1e-6, -1);
        check_gpu(gf.y, cf.y, 1e-6);
        CHECK_CLOSE(host(gf.inv_norm), cf.inv_norm, 1e-5, 0);
        // From the CPU forward's y, so both backward kernels see the same input.
        check_gpu(kernels::cuda::l2_normalize_backward(dev(g), dev(cf.y), gf.inv_norm, -1), cdx, 1e-6);
      };
      if (dt == DType::f32) two_orders(which++, run);
      else run();
    }
}

TEST_CASE("cuda l2_normalize: other axes, zero and NaN rows, errors") {
  // Axis 0 and a middle axis: rows of strided elements.
  Tensor x = randn({7, 5, 12}, 31), g = randn({7, 5, 12}, 32);
  for (int axis : {0, 1, -1}) {
    CAPTURE(axis);
    auto cf = kernels::cpu::l2_normalize(x, 1e-6, axis);
    auto gf = kernels::cuda::l2_normalize(dev(x), 1e-6, axis);
    check_gpu(gf.y, cf.y, 1e-6);
    CHECK(gf.inv_norm.shape() == cf.inv_norm.shape());
    CHECK_CLOSE(host(gf.inv_norm), cf.inv_norm, 1e-5, 0);
    check_gpu(kernels::cuda::l2_normalize_backward(dev(g), gf.y, gf.inv_norm, axis),
              kernels::cpu::l2_normalize_backward(g, cf.y, cf.inv_norm, axis), 1e-6);
  }
  // A zero row stays zero (eps inside the root); a NaN poisons its own row only.
  std::vector<float> v = randn({3, 16}, 33).to_vector<float>();
  for (int j = 0; j < 16; ++j) v[j] = 0.0f;
  v[2 * 16 + 5] = std::numeric_limits<float>::quiet_NaN();
  Tensor xz = Tensor::from_vector(v, {3, 16});
  auto gz = kernels::cuda::l2_normalize(dev(xz), 1e-6, -1);
  check_gpu(gz.y, kernels::cpu::l2_normalize(xz, 1e-6, -1).y, 1e-6);
  Tensor yz = host(gz.y);
  CHECK(yz.at({0, 3}) == 0.0);
  CHECK(std::isfinite(yz.at({1, 3})));
  CHECK(std::isnan(yz.at({2, 0})));
  CHECK_THROWS_CONTAINING(kernels::cuda::l2_normalize(dev(x), 1e-6, 3), "l2_normalize");
  CHECK_THROWS_CONTAINING(kernels::cuda::l2_normalize(dev(x), -1.0, -1), "eps must be >= 0");
  CHECK_THROWS_CONTAINING(kernels::cuda::l2_normalize(x, 1e-6, -1), "is not on sim:0");
  auto f = kernels::cuda::l2_normalize(dev(x), 1e-6, -1);
  CHECK_THROWS_CONTAINING(kernels::cuda::l2_normalize_backward(f.y, f.y, f.inv_norm, 0),
                          "does not match f32[7, 5, 12] (sim:0) reduced over axis 0");
}

// --- softmax -----------------------------------------------------------------------------------

TEST_CASE("cuda softmax: softmax and log_softmax, forward and backward vs the CPU op") {
  uint64_t stream = 500;
  int which = 0;
  for (const RowsD& s : kShapes)
    for (DType dt : {DType::f32, DType::bf16}) {
      CAPTURE(s.rows);
      CAPTURE(s.d);
      CAPTURE(dt);
      Tensor x = randn({s.rows, s.d}, ++stream, dt, 4.0);
      Tensor g = randn({s.rows, s.d}, ++stream, dt);
      Tensor cy = kernels::cpu::softmax(x, -1), cly = kernels::cpu::log_softmax(x, -1);
      Tensor cdx = kernels::cpu::softmax_backward(g, cy, -1);
      Tensor cldx = kernels::cpu::log_softmax_backward(g, cly, -1);
      auto run = [&] {
        check_gpu(kernels::cuda::softmax(dev(x), -1), cy, 1e-7);
        check_gpu(kernels::cuda::log_softmax(dev(x), -1), cly, 1e-5);
        check_gpu(kernels::cuda::softmax_backward(dev(g), dev(cy), -1), cdx, 1e-6);
        check_gpu(kernels::cuda::log_softmax_backward(dev(g), dev(cly), -1), cldx, 1e-5);
      };
      if (dt == DType::f32) two_orders(which++, run);
      else run();
    }
}

TEST_CASE("cuda softmax: -inf entries and rows, +inf, NaN, large logits") {
  const float inf = std::numeric_limits<float>::infinity();
  for (int64_t d : {16, 13, 2048}) {  // vector warp, scalar warp, block per row
    CAPTURE(d);
    std::vector<float> v = randn({5, d}, 41, DType::f32, 3.0).to_vector<float>();
    for (int64_t j = 0; j < d; ++j) v[size_t(d + j)] = -inf;   // row 1: all -inf
    v[size_t(2 * d + 1)] = -inf;                                // row 2: one -inf
    v[size_t(3 * d + 2)] = std::numeric_limits<float>::quiet_NaN();  // row 3: a NaN
    for (int64_t j = 0; j < d; ++j) v[size_t(4 * d + j)] += 1e4f;      // row 4: large logits
    Tensor x = Tensor::from_vector(v, {5, d});
    Tensor cy = kernels::cpu::softmax(x, -1), cly = kernels::cpu::log_softmax(x, -1);
    Tensor y = kernels::cuda::softmax(dev(x), -1), ly = kernels::cuda::log_softmax(dev(x), -1);
    check_gpu(y, cy, 1e-7);
    check_gpu(ly, cly, 1e-3);  // |log p| ~ 10 around 1e4 logits: f32 rounding of x - lse
    Tensor yh = host(y), lyh = host(ly);
    // An all -inf row is NaN (0/0), as on the CPU; a -inf entry has probability 0 (log: -inf).
    CHECK(std::isnan(yh.at({1, 0})));
    CHECK(std::isnan(lyh.at({1, d - 1})));
    CHECK(yh.at({2, 1}) == 0.0);
    CHECK(lyh.at({2, 1}) == -INFINITY);
    CHECK(std::isnan(yh.at({3, 0})));
    CHECK(std::isfinite(yh.at({4, 0})));
  }
  // A +inf logit: inf/inf = NaN there and 0 elsewhere, like the CPU (no special case).
  Tensor xi = Tensor::from_vector(std::vector<float>{1.0f, inf, 2.0f}, {1, 3});
  check_gpu(kernels::cuda::softmax(dev(xi), -1), kernels::cpu::softmax(xi, -1));
}

TEST_CASE("cuda softmax: other axes, 0-d and empty tensors, errors") {
  Tensor x = randn({6, 9, 10}, 51, DType::f32, 2.0), g = randn({6, 9, 10}, 52);
  for (int axis : {0, 1}) {
    CAPTURE(axis);
    Tensor cy = kernels::cpu::softmax(x, axis), cly = kernels::cpu::log_softmax(x, axis);
    check_gpu(kernels::cuda::softmax(dev(x), axis), cy, 1e-7);
    check_gpu(kernels::cuda::log_softmax(dev(x), axis), cly);
    check_gpu(kernels::cuda::softmax_backward(dev(g), dev(cy), axis), kernels::cpu::softmax_backward(g, cy, axis), 1e-6);
    check_gpu(kernels::cuda::log_softmax_backward(dev(g), dev(cly), axis),
              kernels::cpu::log_softmax_backward(g, cly, axis));
  }
  // A transposed view along the last axis.
  Tensor xt = dev(x.transpose(1, 2).contiguous()).transpose(1, 2);
  check_gpu(kernels::cuda::softmax(xt, -1), kernels::cpu::softmax(x, -1), 1e-7);
  check_gpu(kernels::cuda::softmax(dev(Tensor::scalar(3.0)), 0), kernels::cpu::softmax(Tensor::scalar(3.0), 0));
  CHECK(kernels::cuda::softmax(dev(Tensor::zeros({0, 4})), -1).shape() == Shape{0, 4});
  CHECK(kernels::cuda::log_softmax(dev(Tensor::zeros({4, 0})), -1).shape() == Shape{4, 0});
  CHECK_THROWS_CONTAINING(kernels::cuda::softmax(dev(x), 3), "softmax");
  CHECK_THROWS_CONTAINING(kernels::cuda::softmax_backward(dev(g), dev(g.to(DType::bf16)), -1),
                          "softmax_backward");
  CHECK_THROWS_CONTAINING(kernels::cuda::log_softmax_backward(dev(g), dev(x.narrow(0, 0, 2)), -1),
                          "log_softmax_backward");
  CHECK_THROWS_CONTAINING(kernels::cuda::softmax(x, -1), "softmax: x f32[6, 9, 10] is not on sim:0");
}

// --- reductions --------------------------------------------------------------------------------

TEST_CASE("cuda reduce: sum, mean, max, argmax, logsumexp over the last axis vs the CPU op") {
  uint64_t stream = 700;
  int which = 0;
  for (const RowsD& s : kShapes)
    for (DType dt : {DType::f32, DType::bf16}) {
      CAPTURE(s.rows);
      CAPTURE(s.d);
      CAPTURE(dt);
      Tensor x = randn({s.rows, s.d}, ++stream, dt, 2.0);
      // f32 partial sums against the CPU's f64: the error scales with Σ|x| ≈ 1.6 D.
      const double sum_atol = 4e-7 * double(s.d) + 1e-6;
      auto run = [&] {
        check_gpu(kernels::cuda::sum(dev(x), -1), kernels::cpu::sum(x, -1), sum_atol);
        check_gpu(kernels::cuda::mean(dev(x), -1, true), kernels::cpu::mean(x, -1, true), 1e-6);
        check_gpu(kernels::cuda::max(dev(x), -1), kernels::cpu::max(x, -1), 0);
        check_gpu(kernels::cuda::logsumexp(dev(x), -1), kernels::cpu::logsumexp(x, -1));
        Tensor am = kernels::cuda::argmax(dev(x), -1);
        CHECK(am.dtype() == DType::i64);
        CHECK(host(am).to_vector<int64_t>() == kernels::cpu::argmax(x, -1).to_vector<int64_t>());
      };
      if (dt == DType::f32) two_orders(which++, run);
      else run();
    }
}

TEST_CASE("cuda reduce: NaN, ties, infinities, other axes, 0-d and empty axes") {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t d : {16, 37, 2048}) {
    CAPTURE(d);
    std::vector<float> v = randn({5, d}, 61).to_vector<float>();
    for (int64_t j = 0; j < d; ++j) v[size_t(j)] = 2.0f;            // row 0: all tied
    for (int64_t j = 0; j < d; ++j) v[size_t(d + j)] = -inf;        // row 1: all -inf
    v[size_t(2 * d + d - 1)] = nan;                                   // row 2: NaNs at the end
    v[size_t(2 * d + d / 2)] = nan;                                   //        and the middle
    v[size_t(3 * d + 3)] = inf;                                       // row 3: +inf
    v[size_t(4 * d + d - 1)] = 100.0f;                                // row 4: max last
    Tensor x = Tensor::from_vector(v, {5, d});
    check_gpu(kernels::cuda::max(dev(x), -1), kernels::cpu::max(x, -1), 0);
    check_gpu(kernels::cuda::logsumexp(dev(x), -1), kernels::cpu::logsumexp(x, -1));
    check_gpu(kernels::cuda::sum(dev(x), -1), kernels::cpu::sum(x, -1), 1e-6 * double(d));
    const std::vector<int64_t> am = host(kernels::cuda::argmax(dev(x), -1)).to_vector<int64_t>();
    CHECK(am == kernels::cpu::argmax(x, -1).to_vector<int64_t>());
    CHECK(am == std::vector<int64_t>{0, 0, d / 2, 3, d - 1});
    Tensor lse = host(kernels::cuda::logsumexp(dev(x), -1));
    CHECK(lse.at({1}) == -INFINITY);
    CHECK(std::isnan(lse.at({2})));
    CHECK(std::isnan(host(kernels::cuda::max(dev(x), -1)).at({2})));
  }
  // Other axes (strided rows) and a transposed view.
  Tensor x = randn({6, 7, 11}, 62);
  for (int axis : {0, 1}) {
    CAPTURE(axis);
    check_gpu(kernels::cuda::sum(dev(x), axis, true), kernels::cpu::sum(x, axis, true), 1e-5);
    check_gpu(kernels::cuda::max(dev(x), axis), kernels::cpu::max(x, axis), 0);
    check_gpu(kernels::cuda::logsumexp(dev(x), axis), kernels::cpu::logsumexp(x, axis));
    CHECK(host(kernels::cuda::argmax(dev(x), axis)).to_vector<int64_t>() ==
          kernels::cpu::argmax(x, axis).to_vector<int64_t>());
  }
  Tensor xt = dev(x.transpose(1, 2).contiguous()).transpose(1, 2);
  check_gpu(kernels::cuda::mean(xt, -1), kernels::cpu::mean(x, -1), 1e-6);
  // 0-d: the one element; an empty axis: sum 0, mean NaN, logsumexp -inf, max and argmax throw.
  Tensor s = Tensor::scalar(2.5);
  CHECK(host(kernels::cuda::sum(dev(s), 0)).item() == 2.5);
  CHECK(host(kernels::cuda::argmax(dev(s), -1)).item() == 0);
  Tensor e = dev(Tensor::zeros({3, 0}));
  CHECK(host(kernels::cuda::sum(e, -1)).to_vector<float>() == std::vector<float>(3, 0.0f));
  CHECK(std::isnan(host(kernels::cuda::mean(e, -1)).at({0})));
  CHECK(host(kernels::cuda::logsumexp(e, -1)).at({2}) == -INFINITY);
  CHECK_THROWS_CONTAINING(kernels::cuda::max(e, -1), "max: cannot reduce f32[3, 0]");
  CHECK_THROWS_CONTAINING(kernels::cuda::argmax(e, 1), "argmax: cannot reduce");
  CHECK(kernels::cuda::max(dev(Tensor::zeros({0, 3})), 1).shape() == Shape{0});
  CHECK_THROWS_CONTAINING(kernels::cuda::max(dev(Tensor::zeros({0, 3})), 0), "of size 0");
  CHECK_THROWS_CONTAINING(kernels::cuda::sum(dev(x), 3), "sum");
  CHECK_THROWS_CONTAINING(kernels::cuda::sum(x, 0), "sum: x f32[6, 7, 11] is not on sim:0");
  CHECK_THROWS_CONTAINING(kernels::cuda::mean(dev(x.to(DType::f64)), 0), "mean: x must be f32 or bf16 on the GPU, got f64[6, 7, 11]");
}

TEST_CASE("cuda reduce: sum_all and mean_all, two-stage and reproducible") {
  for (int64_t n : {1, 37, 1000, 100003}) {  // 100003: 13 partial blocks and an odd tail
    for (DType dt : {DType::f32, DType::bf16}) {
      CAPTURE(n);
      CAPTURE(dt);
      Tensor x = Tensor::normal({n}, 9, uint64_t(n), 0.25, 1.0, dt);
      const double atol = 2e-7 * double(n) + 1e-6;
      Tensor s = kernels::cuda::sum_all(dev(x));
      CHECK(s.dim() == 0);
      check_gpu(s, kernels::cpu::sum_all(x), atol);
      check_gpu(kernels::cuda::mean_all(dev(x)), kernels::cpu::mean_all(x), 1e-6);
      sim::ScopedThreadOrder scoped(sim::ThreadOrder::shuffled, 3);
      CHECK(bits_equal(kernels::cuda::sum_all(dev(x)), s));
    }
  }
  // Non-contiguous input (rows of a transposed view, scalar loads) and an odd-shaped 3-D tensor.
  Tensor x = randn({33, 130}, 71);
  Tensor xt = dev(x.transpose(0, 1).contiguous()).transpose(0, 1);
  check_gpu(kernels::cuda::sum_all(xt), kernels::cpu::sum_all(x), 1e-3);
  check_gpu(kernels::cuda::mean_all(xt), kernels::cpu::mean_all(x), 1e-6);
  Tensor x3 = randn({5, 7, 13}, 72);
  check_gpu(kernels::cuda::sum_all(dev(x3)), kernels::cpu::sum_all(x3), 1e-4);
  check_gpu(kernels::cuda::sum_all(dev(Tensor::scalar(-4.0))), Tensor::scalar(-4.0));
  // Empty: the sum is 0 and the mean NaN, as on the CPU.
  CHECK(host(kernels::cuda::sum_all(dev(Tensor::zeros({0, 5})))).item() == 0.0);
  CHECK(std::isnan(host(kernels::cuda::mean_all(dev(Tensor::zeros({0})))).item()));
  CHECK_THROWS_CONTAINING(kernels::cuda::sum_all(x), "sum_all: x f32[33, 130] is not on sim:0");
}

// --- bias + GELU -------------------------------------------------------------------------------

TEST_CASE("cuda bias_gelu: forward and backward vs the CPU op, f32 and bf16") {
  uint64_t stream = 900;
  int which = 0;
  for (const RowsD& s : kShapes)
    for (DType dt : {DType::f32, DType::bf16}) {
      CAPTURE(s.rows);
      CAPTURE(s.d);
      CAPTURE(dt);
      Tensor x = randn({s.rows, s.d}, ++stream, dt, 2.0);
      Tensor g = randn({s.rows, s.d}, ++stream, dt);
      Tensor b = randn({s.d}, ++stream, dt == DType::f32 ? DType::bf16 : DType::f32);  // mixed dtypes
      Tensor cy = kernels::cpu::bias_gelu(x, b);
      auto cb = kernels::cpu::bias_gelu_backward(g, x, b);
      auto run = [&] {
        check_gpu(kernels::cuda::bias_gelu(dev(x), dev(b)), cy, 1e-6);
        auto gb = kernels::cuda::bias_gelu_backward(dev(g), dev(x), dev(b));
        check_gpu(gb.dx, cb.dx, 1e-6);
        CHECK_CLOSE(host(gb.dbias), cb.dbias, 1e-5, 2e-6 * double(s.rows) + 1e-6);
      };
      if (dt == DType::f32) two_orders(which++, run);
      else run();
    }
}

TEST_CASE("cuda bias_gelu: strided and 3-D inputs, reproducible bias gradient, errors") {
  Tensor x = randn({4, 9, 40}, 81, DType::f32, 2.0), g = randn({4, 9, 40}, 82), b = randn({40}, 83);
  Tensor cy = kernels::cpu::bias_gelu(x, b);
  auto cb = kernels::cpu::bias_gelu_backward(g, x, b);
  Tensor xt = dev(x.transpose(1, 2).contiguous()).transpose(1, 2);
  Tensor xp = dev(x.permute({1, 0, 2}).contiguous()).permute({1, 0, 2});
  for (const Tensor& xd : {dev(x), xt, xp}) {
    check_gpu(kernels::cuda::bias_gelu(xd, dev(b)), cy, 1e-6);
    auto gb = kernels::cuda::bias_gelu_backward(dev(g), xd, dev(b));
    check_gpu(gb.dx, cb.dx, 1e-6);
    CHECK_CLOSE(host(gb.dbias), cb.dbias, 1e-5, 1e-4);
  }
  // The bias gradient is the same bit for bit under another thread order (no float atomics).
  Tensor xl = randn({300, 96}, 84), gl = randn({300, 96}, 85), bl = randn({96}, 86);
  Tensor d1 = kernels::cuda::bias_gelu_backward(dev(gl), dev(xl), dev(bl)).dbias;
  {
    sim::ScopedThreadOrder scoped(sim::ThreadOrder::shuffled, 5);
    CHECK(bits_equal(kernels::cuda::bias_gelu_backward(dev(gl), dev(xl), dev(bl)).dbias, d1));
  }
  CHECK_CLOSE(host(d1), kernels::cpu::bias_gelu_backward(gl, xl, bl).dbias, 1e-5, 1e-3);
  // Empty rows: dbias is zero.
  auto e = kernels::cuda::bias_gelu_backward(dev(Tensor::zeros({0, 5})), dev(Tensor::zeros({0, 5})),
                                             dev(Tensor::ones({5})));
  CHECK(host(e.dbias).to_vector<float>() == std::vector<float>(5, 0.0f));
  CHECK_THROWS_CONTAINING(kernels::cuda::bias_gelu(dev(x), dev(randn({39}, 1))),
                          "bias_gelu: bias f32[39] (sim:0) does not match the last dim");
  CHECK_THROWS_CONTAINING(kernels::cuda::bias_gelu(dev(x), b), "bias_gelu: bias f32[40] is not on sim:0");
  CHECK_THROWS_CONTAINING(kernels::cuda::bias_gelu_backward(dev(g.narrow(0, 0, 2)), dev(x), dev(b)),
                          "bias_gelu_backward");
  CHECK_THROWS_CONTAINING(kernels::cuda::bias_gelu(dev(x.to(DType::f64)), dev(b)), "must be f32 or bf16");
}
