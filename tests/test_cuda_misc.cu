// The handwritten CUDA kernels of cross_entropy.cu, index.cu (embedding), adamw.cu (AdamW, SGD,
// grad_norm, scale_) and patchify.cu, run under the sim and compared with the CPU ops
// (kernels::cpu::...) on sizes that cross warp, block and 16-byte-vector edges, f32 and bf16.
// Every output is checked for NaN/Inf (fresh device memory is NaN under the sim, so an element a
// kernel forgot shows up; the guard bytes around each allocation catch writes past the end), and
// each kernel runs again with the threads in reverse and shuffled order: the kernels are
// deterministic, so the results must be bit-identical. These tests verify our kernels, not NVIDIA
// libraries (none are called here).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/clip.h"
#include "kernels/cross_entropy.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "kernels/index.h"
#include "kernels/patchify.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;

namespace {

engine::Device dev() { return kernels::cuda::device(); }
Tensor on_dev(const Tensor& t) { return t.to(dev()); }
Tensor on_cpu(const Tensor& t) { return t.to(engine::Device::cpu()); }

// Every element finite (an element left unwritten reads as NaN under the sim).
void check_finite(const Tensor& t, const char* what) {
  const std::vector<double> v = t.to_vector<double>();
  size_t bad = 0;
  for (double x : v) bad += !std::isfinite(x);
  INFO(what << ": " << bad << " non-finite of " << v.size());
  CHECK(bad == 0);
}

// Bit-level equality of two tensors of the same dtype (run-to-run and order-to-order checks).
bool same_bits(const Tensor& a, const Tensor& b) {
  if (!(a.shape() == b.shape()) || a.dtype() != b.dtype()) return false;
  Tensor x = on_cpu(a).contiguous(), y = on_cpu(b).contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

// Runs f under the reverse and a shuffled thread order; f compares against its forward-order
// result itself.
void other_orders(const std::function<void()>& f) {
  {
    INFO("thread order: reverse");
    sim::ScopedThreadOrder o(sim::ThreadOrder::reverse);
    f();
  }
  {
    INFO("thread order: shuffled");
    sim::ScopedThreadOrder o(sim::ThreadOrder::shuffled, 12345);
    f();
  }
}

// Class targets in [0, C) with every `ignore_every`-th row set to ignore_index.
Tensor make_targets(int64_t N, int64_t C, uint64_t stream, int ignore_every, DType dt) {
  std::vector<double> u = testing::randu({N}, stream, 0.0, double(C), DType::f64).to_vector<double>();
  std::vector<int64_t> v;
  for (int64_t i = 0; i < N; ++i)
    v.push_back(ignore_every > 0 && i % ignore_every == 1 ? -100
                                                          : std::min<int64_t>(C - 1, int64_t(u[i])));
  return Tensor::from_vector(v, {N}, DType::i64).to(dt);
}

// A distribution per row (soft targets).
Tensor make_probs(int64_t N, int64_t C, uint64_t stream) {
  Tensor u = testing::randu({N, C}, stream, 0.0, 1.0, DType::f64);
  std::vector<double> v = u.to_vector<double>();
  for (int64_t i = 0; i < N; ++i) {
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += v[i * C + c];
    for (int64_t c = 0; c < C; ++c) v[i * C + c] /= s;
  }
  return Tensor::from_vector(v, {N, C}, DType::f64).to(DType::f32);
}

}  // namespace

// --- cross-entropy ------------------------------------------------------------------------------

namespace {

// One hard-target configuration: forward (losses, lse, num_valid) and backward against the CPU
// op on the same values; bf16 logits are compared with the CPU op on their f32 values.
void check_ce(const Tensor& logits_cpu, const Tensor& targets, double eps, bool orders) {
  const int64_t N = logits_cpu.size(0), C = logits_cpu.size(1);
  const bool bf = logits_cpu.dtype() == DType::bf16;
  const Tensor ref_logits = logits_cpu.to(DType::f32);
  INFO("N " << N << " C " << C << " eps " << eps << " dtype " << logits_cpu.describe());
  kernels::CrossEntropyOut ref = kernels::cpu::softmax_cross_entropy(ref_logits, targets, eps);
  Tensor x = on_dev(logits_cpu), t = on_dev(targets);
  kernels::CrossEntropyOut got = kernels::cuda::softmax_cross_entropy(x, t, eps);
  CHECK(got.num_valid == ref.num_valid);
  CHECK(got.losses.device() == dev());
  CHECK(got.losses.dtype() == DType::f32);
  check_finite(got.losses, "losses");
  check_finite(got.lse, "lse");
  // Online one-pass statistics vs the CPU's two passes: a few ulp of the row's magnitude.
  const double tol = 2e-6 * std::sqrt(double(C)) + 1e-6;
  CHECK_CLOSE(got.losses, ref.losses, 1e-5, tol);
  CHECK_CLOSE(got.lse, ref.lse, 1e-5, tol);

  Tensor g = randn({N}, 77);
  const double scale = 0.37;
  Tensor ref_dx = kernels::cpu::softmax_cross_entropy_backward(g, ref_logits, targets, ref.lse,
                                                                eps, -100, scale);
  Tensor dx = kernels::cuda::softmax_cross_entropy_backward(on_dev(g), x, t, got.lse, eps, -100,
                                                            scale);
  CHECK(dx.dtype() == logits_cpu.dtype());
  check_finite(dx, "dx");
  if (bf) CHECK_CLOSE(dx, ref_dx, 0.08, 1e-6);
  else CHECK_CLOSE(dx, ref_dx, 1e-5, 1e-7);
  // A scalar gradient expanded to [N] (stride 0), as the mean reduction passes it.
  Tensor g1 = Tensor::full({1}, 0.5);
  Tensor ref_dx1 = kernels::cpu::softmax_cross_entropy_backward(g1.expand({N}), ref_logits,
                                                                 targets, ref.lse, eps, -100, 1.0);
  Tensor dx1 = kernels::cuda::softmax_cross_entropy_backward(on_dev(g1).expand({N}), x, t,
                                                             got.lse, eps, -100, 1.0);
  if (bf) CHECK_CLOSE(dx1, ref_dx1, 0.08, 1e-6);
  else CHECK_CLOSE(dx1, ref_dx1, 1e-5, 1e-7);

  if (orders)
    other_orders([&] {
      kernels::CrossEntropyOut o = kernels::cuda::softmax_cross_entropy(x, t, eps);
      CHECK(same_bits(o.losses, got.losses));
      CHECK(same_bits(o.lse, got.lse));
      CHECK(o.num_valid == got.num_valid);
      CHECK(same_bits(kernels::cuda::softmax_cross_entropy_backward(on_dev(g), x, t, got.lse, eps,
                                                                    -100, scale),
                      dx));
    });
}

}  // namespace

TEST_CASE("cuda cross_entropy: hard targets vs the CPU op (C in {1, 7, 33, 1000}, N in {1, 17, 65})") {
  uint64_t stream = 1;
  for (int64_t C : {1, 7, 33, 1000})
    for (int64_t N : {1, 17, 65})
      for (double eps : {0.0, 0.1}) {
        Tensor x = randn({N, C}, stream++, DType::f32, 3.0);
        Tensor t = make_targets(N, C, stream++, N > 1 ? 5 : 0, N == 17 ? DType::i32 : DType::i64);
        check_ce(x, t, eps, N == 17 && (C == 33 || C == 1000));
      }
}

TEST_CASE("cuda cross_entropy: block rows (C > 1024, up to 32K classes) and bf16 logits") {
  uint64_t stream = 100;
  for (int64_t C : {1025, 1503}) {
    Tensor x = randn({3, C}, stream++, DType::f32, 4.0);
    check_ce(x, make_targets(3, C, stream++, 2, DType::i64), 0.1, C == 1503);
  }
  Tensor wide = randn({2, 32771}, stream++, DType::f32, 2.0);
  check_ce(wide, make_targets(2, 32771, stream++, 0, DType::i64), 0.0, false);
  for (int64_t C : {7, 33, 1000, 1503})
    for (double eps : {0.0, 0.1}) {
      Tensor x = randn({17, C}, stream++, DType::f32, 3.0).to(DType::bf16);
      check_ce(x, make_targets(17, C, stream++, 4, DType::i64), eps, C == 33 && eps > 0);
    }
}

TEST_CASE("cuda cross_entropy: strided rows and targets, huge logits, NaN propagation") {
  // Rows of a wider matrix that start 1 element past a 16-byte boundary (scalar head, vector
  // body, tail, and a dx whose rows are aligned differently from x's).
  Tensor wide = randn({17, 45}, 200, DType::f32, 3.0);
  Tensor x = wide.slice(1, 1, 38);
  Tensor tt = make_targets(34, 37, 201, 3, DType::i64).slice(0, 0, 34, 2);
  kernels::CrossEntropyOut ref = kernels::cpu::softmax_cross_entropy(x, tt, 0.1);
  Tensor xd = on_dev(wide).slice(1, 1, 38);
  Tensor td = on_dev(make_targets(34, 37, 201, 3, DType::i64)).slice(0, 0, 34, 2);
  REQUIRE(td.stride(0) == 2);
  kernels::CrossEntropyOut got = kernels::cuda::softmax_cross_entropy(xd, td, 0.1);
  CHECK(got.num_valid == ref.num_valid);
  CHECK_CLOSE(got.losses, ref.losses, 1e-5, 1e-5);
  Tensor g = randn({17}, 202);
  CHECK_CLOSE(kernels::cuda::softmax_cross_entropy_backward(on_dev(g), xd, td, got.lse, 0.1),
              kernels::cpu::softmax_cross_entropy_backward(g, x, tt, ref.lse, 0.1), 1e-5, 1e-7);

  // Logits of 1e4 with spread: the loss stays accurate (no cancellation in the smoothing term).
  std::vector<float> hv = randn({5, 33}, 203, DType::f32, 5.0).to_vector<float>();
  for (float& v : hv) v += 1e4f;
  Tensor huge = Tensor::from_vector(hv, {5, 33});
  Tensor ht = make_targets(5, 33, 204, 0, DType::i64);
  CHECK_CLOSE(kernels::cuda::softmax_cross_entropy(on_dev(huge), on_dev(ht), 0.1).losses,
              kernels::ref::softmax_cross_entropy(huge, ht, 0.1).losses, 1e-5, 1e-3);

  // A NaN logit makes its row's loss NaN (and only its row's).
  std::vector<float> nv = randn({3, 9}, 205).to_vector<float>();
  nv[9 + 4] = NAN;
  Tensor nx = Tensor::from_vector(nv, {3, 9});
  Tensor nt = Tensor::from_vector<int64_t>({1, 2, 3}, {3});
  std::vector<float> l = kernels::cuda::softmax_cross_entropy(on_dev(nx), on_dev(nt)).losses.to_vector<float>();
  CHECK(std::isfinite(l[0]));
  CHECK(std::isnan(l[1]));
  CHECK(std::isfinite(l[2]));
}

TEST_CASE("cuda cross_entropy: soft targets and loss_sum vs the CPU op") {
  uint64_t stream = 300;
  for (int64_t C : {7, 33, 1503})
    for (int64_t N : {1, C > 1024 ? 3 : 17}) {
      INFO("N " << N << " C " << C);
      Tensor x = randn({N, C}, stream++, DType::f32, 3.0);
      Tensor q = make_probs(N, C, stream++);
      kernels::CrossEntropyOut ref = kernels::cpu::softmax_cross_entropy_soft(x, q);
      kernels::CrossEntropyOut got = kernels::cuda::softmax_cross_entropy_soft(on_dev(x), on_dev(q));
      CHECK(got.num_valid == N);
      CHECK_CLOSE(got.losses, ref.losses, 1e-5, 1e-5);
      CHECK_CLOSE(got.lse, ref.lse, 1e-5, 1e-5);
      Tensor g = randn({N}, stream++);
      Tensor ref_dx = kernels::cpu::softmax_cross_entropy_soft_backward(g, x, q, ref.lse, 0.5);
      Tensor dx = kernels::cuda::softmax_cross_entropy_soft_backward(on_dev(g), on_dev(x), on_dev(q),
                                                                     got.lse, 0.5);
      check_finite(dx, "soft dx");
      CHECK_CLOSE(dx, ref_dx, 1e-5, 1e-7);
      // bf16 logits with f32 and with bf16 probabilities.
      Tensor xb = x.to(DType::bf16);
      for (DType qt : {DType::f32, DType::bf16}) {
        Tensor qq = q.to(qt);
        kernels::CrossEntropyOut rb = kernels::cpu::softmax_cross_entropy_soft(xb.to(DType::f32), qq.to(DType::f32));
        kernels::CrossEntropyOut gb = kernels::cuda::softmax_cross_entropy_soft(on_dev(xb), on_dev(qq));
        CHECK_CLOSE(gb.losses, rb.losses, 1e-5, 1e-5);
        Tensor db = kernels::cuda::softmax_cross_entropy_soft_backward(on_dev(g), on_dev(xb), on_dev(qq), gb.lse);
        CHECK(db.dtype() == DType::bf16);
        CHECK_CLOSE(db, kernels::cpu::softmax_cross_entropy_soft_backward(g, xb.to(DType::f32), qq.to(DType::f32), rb.lse), 0.08, 1e-6);
      }
      if (N > 1 && C != 7)
        other_orders([&] {
          kernels::CrossEntropyOut o = kernels::cuda::softmax_cross_entropy_soft(on_dev(x), on_dev(q));
          CHECK(same_bits(o.losses, got.losses));
          CHECK(same_bits(kernels::cuda::softmax_cross_entropy_soft_backward(on_dev(g), on_dev(x), on_dev(q), got.lse, 0.5), dx));
        });
    }
  for (int64_t n : {1, 17, 300, 1000}) {
    Tensor l = randn({n}, stream++);
    Tensor s = kernels::cuda::loss_sum(on_dev(l), 0.25);
    CHECK(s.dim() == 0);
    CHECK(s.dtype() == DType::f32);
    CHECK(s.item() == doctest::Approx(kernels::cpu::loss_sum(l, 0.25).item()).epsilon(1e-6));
  }
}

TEST_CASE("cuda cross_entropy: errors match the CPU op's") {
  Tensor x = randn({4, 5}, 400);
  Tensor bad = Tensor::from_vector<int64_t>({0, 7, -100, -3}, {4});
  std::string cpu_msg = "<none>";
  try {
    kernels::cpu::softmax_cross_entropy(x, bad);
  } catch (const engine::Error& e) {
    cpu_msg = e.what();
  }
  const std::string expect = "softmax_cross_entropy: target 7 at row 1 is out of range [0, 5)";
  REQUIRE(cpu_msg.find(expect) != std::string::npos);
  CHECK_THROWS_CONTAINING(kernels::cuda::softmax_cross_entropy(on_dev(x), on_dev(bad)), expect);
  CHECK_THROWS_CONTAINING(
      kernels::cuda::softmax_cross_entropy_backward(on_dev(randn({4}, 401)), on_dev(x), on_dev(bad),
                                                    on_dev(randn({4}, 402))),
      "softmax_cross_entropy_backward: target 7 at row 1 is out of range [0, 5)");
  // The first bad row is reported, wherever the threads ran.
  Tensor bad2 = Tensor::from_vector<int32_t>({0, 1, 2, -5, 9}, {5});
  other_orders([&] {
    CHECK_THROWS_CONTAINING(kernels::cuda::softmax_cross_entropy(on_dev(randn({5, 5}, 403)), on_dev(bad2)),
                            "target -5 at row 3");
  });
  CHECK_THROWS_CONTAINING(kernels::cuda::softmax_cross_entropy(x, bad), "is not on the CUDA device");
  CHECK_THROWS_CONTAINING(kernels::cuda::softmax_cross_entropy(on_dev(x.to(DType::f64)), on_dev(bad)),
                          "must be f32 or bf16");
  CHECK_THROWS_CONTAINING(
      kernels::cuda::softmax_cross_entropy(on_dev(x), on_dev(Tensor::zeros({3}, DType::i64))),
      "must have shape [4]");
  CHECK_THROWS_CONTAINING(kernels::cuda::softmax_cross_entropy(on_dev(x), on_dev(bad), 1.5),
                          "label_smoothing 1.5 is outside [0, 1]");
  CHECK_THROWS_CONTAINING(kernels::cuda::softmax_cross_entropy(on_dev(x).transpose(0, 1),
                                                               on_dev(Tensor::zeros({5}, DType::i64))),
                          "contiguous rows");
  // An empty batch is fine.
  kernels::CrossEntropyOut e = kernels::cuda::softmax_cross_entropy(
      on_dev(Tensor::zeros({0, 5})), on_dev(Tensor::zeros({0}, DType::i64)));
  CHECK(e.losses.numel() == 0);
  CHECK(e.num_valid == 0);
}

// --- embedding ----------------------------------------------------------------------------------

namespace {

Tensor rand_ids(const Shape& s, int64_t n, uint64_t stream, DType dt = DType::i64) {
  std::vector<double> u = testing::randu(s, stream, 0.0, double(n), DType::f64).to_vector<double>();
  std::vector<int64_t> v;
  for (double x : u) v.push_back(std::min<int64_t>(n - 1, int64_t(x)));
  return Tensor::from_vector(v, s, DType::i64).to(dt);
}

// The backward on the device against the CPU op: the same order of additions, so bit-identical;
// also the same bits in every thread order.
void check_embedding_backward(const Tensor& g, const Tensor& ids, int64_t V, int64_t pad,
                              bool orders) {
  INFO("g " << g.describe() << " ids " << ids.describe() << " V " << V << " padding " << pad);
  Tensor ref = kernels::cpu::embedding_backward(g, ids, V, pad);
  Tensor gd = on_dev(g), idd = on_dev(ids);
  Tensor got = kernels::cuda::embedding_backward(gd, idd, V, pad);
  check_finite(got, "embedding_backward");
  CHECK_CLOSE(got, ref, 1e-6, 1e-6);
  CHECK(same_bits(got, ref));
  CHECK(same_bits(kernels::cuda::embedding_backward(gd, idd, V, pad), got));  // run to run
  if (orders)
    other_orders([&] { CHECK(same_bits(kernels::cuda::embedding_backward(gd, idd, V, pad), got)); });
}

}  // namespace

TEST_CASE("cuda embedding: gather vs the CPU op (every unit width, dtypes, strided tables and ids)") {
  struct Case {
    Tensor table, ids;
  };
  Tensor wide = randn({37, 20}, 501);
  std::vector<Case> cases = {
      {randn({37, 13}, 502), rand_ids({130}, 37, 503)},                     // 4-byte units
      {randn({37, 16}, 504), rand_ids({7, 5}, 37, 505, DType::i32)},        // 16-byte units
      {randn({11, 7}, 506).to(DType::bf16), rand_ids({9}, 11, 507)},        // 2-byte units
      {randn({11, 6}, 508).to(DType::bf16), rand_ids({33}, 11, 509)},       // 4-byte bf16 pairs
      {randn({9, 5}, 510, DType::f64), rand_ids({3, 11}, 9, 511)},          // 8-byte units
      {randn({9, 4}, 512, DType::f64), rand_ids({17}, 9, 513)},             // 16-byte f64 pairs
      {rand_ids({13, 3}, 100, 514, DType::i32), rand_ids({65}, 13, 515)},   // integer table
      {randn({1, 31}, 516), rand_ids({63}, 1, 517)},                        // one row
      {randn({17, 1}, 518), rand_ids({31}, 17, 519)},                       // one column
  };
  for (const Case& c : cases) {
    INFO("table " << c.table.describe() << " ids " << c.ids.describe());
    Tensor ref = kernels::cpu::embedding(c.table, c.ids);
    Tensor got = kernels::cuda::embedding(on_dev(c.table), on_dev(c.ids));
    CHECK(got.device() == dev());
    CHECK(same_bits(got, ref));
  }
  // A column slice of a wider table (row stride 20), misaligned by 3 floats: 4-byte units.
  Tensor ids = rand_ids({5, 7}, 37, 520);
  Tensor wd = on_dev(wide);
  CHECK(same_bits(kernels::cuda::embedding(wd.slice(1, 3, 16), on_dev(ids)),
                  kernels::cpu::embedding(wide.slice(1, 3, 16), ids)));
  // ... 16-byte aligned (offset 4, 8 columns, row stride 80 bytes): 16-byte units.
  CHECK(same_bits(kernels::cuda::embedding(wd.slice(1, 4, 12), on_dev(ids)),
                  kernels::cpu::embedding(wide.slice(1, 4, 12), ids)));
  // A transposed table (column stride 37) and non-contiguous ids.
  Tensor tt = randn({13, 37}, 521);
  Tensor ncids = testing::non_contiguous(rand_ids({6, 9}, 37, 522));
  CHECK(same_bits(kernels::cuda::embedding(on_dev(tt).transpose(0, 1), on_dev(ncids)),
                  kernels::cpu::embedding(tt.transpose(0, 1), ncids)));
  Tensor ids_h = rand_ids({9, 6}, 37, 523);
  Tensor ids_t = on_dev(ids_h).transpose(0, 1);  // strided ids on the device
  Tensor ref_t = kernels::cpu::embedding(tt.transpose(0, 1), ids_h.transpose(0, 1));
  CHECK(same_bits(kernels::cuda::embedding(on_dev(tt).transpose(0, 1), ids_t), ref_t));
  other_orders([&] {
    CHECK(same_bits(kernels::cuda::embedding(on_dev(tt).transpose(0, 1), ids_t), ref_t));
  });
  CHECK(kernels::cuda::embedding(on_dev(tt), on_dev(Tensor::zeros({0}, DType::i64))).shape() ==
        Shape{0, 37});
}

TEST_CASE("cuda embedding: deterministic scatter-add backward, bit-identical to the CPU op") {
  // Many repeats (35 ids over 6 rows), padding, vector (D = 16) and scalar (D = 13) columns.
  for (DType dt : {DType::f32, DType::f64})
    for (int64_t D : {13, 16}) {
      Tensor ids = rand_ids({7, 5}, 6, 600);
      Tensor g = randn({7, 5, D}, 601, dt);
      check_embedding_backward(g, ids, 9, -1, false);
      check_embedding_backward(g, ids.to(DType::i32), 9, 3, dt == DType::f32 && D == 16);
      check_embedding_backward(testing::non_contiguous(g), ids, 9, 0, false);
    }
  // One tile, one radix pass (V <= 256); three tiles (the last one nearly empty), two passes
  // (V = 300); V = 1 (no pass).
  check_embedding_backward(randn({1000, 5}, 602), rand_ids({1000}, 97, 603), 97, 5, true);
  check_embedding_backward(randn({2100, 8}, 604), rand_ids({2100}, 300, 605), 300, -1, false);
  check_embedding_backward(randn({2, 33, 3}, 606), rand_ids({2, 33}, 1, 607), 1, -1, false);
  check_embedding_backward(randn({1, 4}, 608), rand_ids({1}, 5, 609), 5, -1, false);
  // Every id the same: one long run.
  check_embedding_backward(randn({1100, 4}, 610), Tensor::full({1100}, 7.0, DType::i64), 10, -1, false);
  // Strided ids on the device (a transposed view) and an empty batch.
  Tensor ids = rand_ids({6, 9}, 11, 611);
  Tensor g = randn({9, 6, 5}, 612);
  Tensor idt = on_dev(ids).transpose(0, 1);
  CHECK(same_bits(kernels::cuda::embedding_backward(on_dev(g), idt, 11, 2),
                  kernels::cpu::embedding_backward(g, ids.transpose(0, 1), 11, 2)));
  Tensor e = kernels::cuda::embedding_backward(on_dev(Tensor::zeros({0, 5})),
                                               on_dev(Tensor::zeros({0}, DType::i64)), 4, -1);
  CHECK(e.shape() == Shape{4, 5});
  for (double v : e.to_vector<double>()) CHECK(v == 0.0);
}

TEST_CASE("cuda embedding: errors match the CPU op's") {
  Tensor table = randn({5, 3}, 700);
  Tensor bad = Tensor::from_vector<int64_t>({0, 4, 5, 1, -1}, {5});
  const std::string expect = "embedding: index 5 at position 2 is out of range [0, 5)";
  CHECK_THROWS_CONTAINING(kernels::cpu::embedding(table, bad), expect);
  other_orders([&] {
    CHECK_THROWS_CONTAINING(kernels::cuda::embedding(on_dev(table), on_dev(bad)), expect);
  });
  Tensor g = randn({5, 3}, 701);
  CHECK_THROWS_CONTAINING(kernels::cpu::embedding_backward(g, bad, 5), "embedding_backward: " + expect.substr(11));
  CHECK_THROWS_CONTAINING(kernels::cuda::embedding_backward(on_dev(g), on_dev(bad), 5),
                          "embedding_backward: index 5 at position 2 is out of range [0, 5)");
  // Non-contiguous ids: the position is the flat (row-major) one.
  Tensor ids2 = Tensor::from_vector<int32_t>({0, 1, 2, 3, 9, 4}, {2, 3});
  CHECK_THROWS_CONTAINING(kernels::cuda::embedding(on_dev(table), on_dev(ids2).transpose(0, 1)),
                          "index 9 at position 3");
  CHECK_THROWS_CONTAINING(kernels::cuda::embedding(table, on_dev(bad)), "is not on the CUDA device");
  CHECK_THROWS_CONTAINING(kernels::cuda::embedding(on_dev(table), on_dev(bad.to(DType::f32))),
                          "indices must be i64 or i32");
  CHECK_THROWS_CONTAINING(kernels::cuda::embedding_backward(on_dev(g), on_dev(bad), 5, 5),
                          "padding_idx 5 out of range [-1, 5)");
  CHECK_THROWS_CONTAINING(kernels::cuda::embedding_backward(on_dev(randn({4, 3}, 702)), on_dev(bad), 5),
                          "does not match ids");
}

// --- AdamW, SGD, grad_norm, scale_ ---------------------------------------------------------------

namespace {

// The optimizer state on the CPU and, independently, on the device as views of `offset`-shifted
// buffers (offset 0: 16-byte aligned vectors; the same non-zero offset everywhere: a scalar head;
// different offsets or a stride: the scalar path).
struct OptState {
  int64_t n;
  Tensor p, g, m, v, mask;          // CPU
  Tensor dp, dg, dm, dv, dmask;     // device views
  Tensor keep[5];                   // the device buffers behind the views
};

Tensor dev_view(const Tensor& host, int64_t offset, int64_t step, Tensor& keep) {
  const int64_t n = host.numel();
  Tensor big = Tensor::full({offset + n * step}, NAN, host.dtype());
  big.slice(0, offset, offset + n * step, step).copy_(host);
  keep = on_dev(big);
  return keep.slice(0, offset, offset + n * step, step);
}

OptState make_state(int64_t n, DType dt, bool mask, uint64_t stream, const int64_t (&offsets)[5],
                    int64_t step = 1) {
  OptState s;
  s.n = n;
  s.p = randn({n}, stream, dt);
  s.g = randn({n}, stream + 1, dt);
  s.m = randn({n}, stream + 2, dt, 0.1);
  s.v = testing::randu({n}, stream + 3, 0.0, 0.5, dt);
  if (mask) {
    std::vector<double> k(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) k[i] = i % 3 == 0 ? 0.0 : 1.0;
    s.mask = Tensor::from_vector(k, {n}).to(dt);
  }
  s.dp = dev_view(s.p, offsets[0], step, s.keep[0]);
  s.dg = dev_view(s.g, offsets[1], step, s.keep[1]);
  s.dm = dev_view(s.m, offsets[2], step, s.keep[2]);
  s.dv = dev_view(s.v, offsets[3], step, s.keep[3]);
  if (mask) s.dmask = dev_view(s.mask, offsets[4], step, s.keep[4]);
  return s;
}

// Views come back through their contiguous buffer (device tensors copy only contiguous data).
Tensor fetch(const Tensor& view, const Tensor& buffer) {
  const int64_t off = view.offset() - buffer.offset();
  const int64_t step = view.numel() > 1 ? view.stride(0) : 1;
  return on_cpu(buffer).slice(0, off, off + view.numel() * step, step).contiguous();
}

void check_adamw(OptState& s, int steps, double tol) {
  kernels::AdamWParams hp;
  hp.lr = 3e-3;
  hp.weight_decay = 0.1;
  hp.grad_scale = 0.5;
  for (int t = 1; t <= steps; ++t) {
    hp.step = t;
    kernels::cpu::adamw_step(s.p, s.g, s.m, s.v, s.mask, hp);
    kernels::cuda::adamw_step(s.dp, s.dg, s.dm, s.dv, s.dmask, hp);
  }
  CHECK_CLOSE(fetch(s.dp, s.keep[0]), s.p, tol, tol);
  CHECK_CLOSE(fetch(s.dm, s.keep[2]), s.m, tol, tol);
  CHECK_CLOSE(fetch(s.dv, s.keep[3]), s.v, tol, tol);
  // Only the view was written: the padding around it is still NaN.
  std::vector<double> whole = on_cpu(s.keep[0]).to_vector<double>();
  size_t finite = 0;
  for (double x : whole) finite += std::isfinite(x);
  CHECK(finite == size_t(s.n));
}

}  // namespace

TEST_CASE("cuda adamw: several steps vs the CPU op (1, 17, 100003 elements, mask, grad_scale)") {
  const int64_t aligned[5] = {0, 0, 0, 0, 0}, shifted[5] = {3, 3, 3, 3, 3}, mixed[5] = {1, 2, 0, 3, 1};
  uint64_t stream = 800;
  for (int64_t n : {1, 17, 100003})
    for (bool mask : {false, true}) {
      INFO("n " << n << " mask " << mask);
      OptState a = make_state(n, DType::f32, mask, stream += 5, aligned);
      check_adamw(a, 3, 2e-6);
      OptState b = make_state(n, DType::f32, mask, stream += 5, shifted);
      check_adamw(b, 2, 2e-6);
      if (n != 100003) {
        OptState c = make_state(n, DType::f32, mask, stream += 5, mixed);
        check_adamw(c, 2, 2e-6);
        OptState d = make_state(n, DType::f32, mask, stream += 5, aligned, 2);  // strided views
        check_adamw(d, 2, 2e-6);
        OptState e = make_state(n, DType::f64, mask, stream += 5, shifted);
        check_adamw(e, 3, 1e-13);
      }
    }
  // Thread order cannot matter (each element is one thread's); checked anyway.
  OptState a = make_state(1001, DType::f32, true, 900, {1, 1, 1, 1, 1});
  Tensor p0 = fetch(a.dp, a.keep[0]);
  kernels::AdamWParams hp;
  kernels::cuda::adamw_step(a.dp, a.dg, a.dm, a.dv, a.dmask, hp);
  const Tensor once = fetch(a.dp, a.keep[0]);
  other_orders([&] {
    OptState b = make_state(1001, DType::f32, true, 900, {1, 1, 1, 1, 1});
    kernels::cuda::adamw_step(b.dp, b.dg, b.dm, b.dv, b.dmask, hp);
    CHECK(same_bits(fetch(b.dp, b.keep[0]), once));
  });
  CHECK(!same_bits(p0, once));
}

TEST_CASE("cuda sgd: momentum, nesterov, weight decay with mask vs the CPU op") {
  const int64_t aligned[5] = {0, 0, 0, 0, 0}, shifted[5] = {2, 2, 2, 2, 2}, mixed[5] = {0, 1, 2, 0, 3};
  uint64_t stream = 1000;
  struct Cfg {
    double momentum;
    bool nesterov;
    bool mask;
  };
  for (int64_t n : {1, 17, 100003})
    for (Cfg c : {Cfg{0.0, false, false}, Cfg{0.9, false, true}, Cfg{0.9, true, false},
                  Cfg{0.5, true, true}})
      for (const int64_t(*off)[5] : {&aligned, &shifted, &mixed}) {
        if (n == 100003 && (off == &mixed || !c.mask)) continue;  // the big size: 2 configs
        INFO("n " << n << " momentum " << c.momentum << " nesterov " << c.nesterov << " mask "
                  << c.mask << " offset " << (*off)[1]);
        OptState s = make_state(n, DType::f32, c.mask, stream += 5, *off);
        Tensor buf = c.momentum != 0 ? s.m : Tensor(), dbuf = c.momentum != 0 ? s.dm : Tensor();
        for (int t = 0; t < 3; ++t) {
          kernels::cpu::sgd_momentum_step(s.p, s.g, buf, s.mask, 0.01, c.momentum, 0.05, c.nesterov, 0.7);
          kernels::cuda::sgd_momentum_step(s.dp, s.dg, dbuf, s.dmask, 0.01, c.momentum, 0.05,
                                           c.nesterov, 0.7);
        }
        CHECK_CLOSE(fetch(s.dp, s.keep[0]), s.p, 1e-6, 1e-7);
        CHECK_CLOSE(fetch(s.dm, s.keep[2]), s.m, 1e-6, 1e-7);  // untouched without momentum
      }
}

TEST_CASE("cuda adamw/sgd: argument errors") {
  OptState s = make_state(17, DType::f32, true, 1100, {0, 0, 0, 0, 0});
  kernels::AdamWParams hp;
  CHECK_THROWS_CONTAINING(kernels::cuda::adamw_step(s.dp, s.dg, s.dm, s.dv, on_dev(s.mask.to(DType::f64)), hp),
                          "must have the params' dtype (f32)");
  CHECK_THROWS_CONTAINING(kernels::cuda::adamw_step(s.dp, s.dg, s.dp, s.dv, s.dmask, hp),
                          "'params' and 'm' overlap in memory");
  CHECK_THROWS_CONTAINING(kernels::cuda::adamw_step(s.p, s.dg, s.dm, s.dv, s.dmask, hp),
                          "is not on the CUDA device");
  CHECK_THROWS_CONTAINING(kernels::cuda::adamw_step(s.dp, s.dg.narrow(0, 0, 16), s.dm, s.dv, s.dmask, hp),
                          "does not match 'params'");
  hp.step = 0;
  CHECK_THROWS_CONTAINING(kernels::cuda::adamw_step(s.dp, s.dg, s.dm, s.dv, s.dmask, hp), "step must be >= 1");
  CHECK_THROWS_CONTAINING(kernels::cuda::sgd_momentum_step(s.dp, s.dg, Tensor(), s.dmask, 0.1, 0.9, 0, false, 1),
                          "'buf' is undefined but momentum is 0.9");
  CHECK_THROWS_CONTAINING(kernels::cuda::sgd_momentum_step(s.dp, s.dg, s.dm, s.dmask, 0.1, 0.0, 0, true, 1),
                          "nesterov momentum requires momentum > 0");
  CHECK_THROWS_CONTAINING(kernels::cuda::adamw_step(on_dev(Tensor::zeros({3}, DType::bf16)),
                                                    on_dev(Tensor::zeros({3}, DType::bf16)),
                                                    on_dev(Tensor::zeros({3}, DType::bf16)),
                                                    on_dev(Tensor::zeros({3}, DType::bf16)), Tensor(),
                                                    kernels::AdamWParams{}),
                          "expected dtype f32 or f64, got bf16");
}

TEST_CASE("cuda grad_norm and scale_: vs the CPU op, deterministic, NaN/Inf propagate") {
  Tensor a = randn({100003}, 1200);
  Tensor b = randn({17}, 1201).to(DType::bf16);
  Tensor c = randn({33}, 1202, DType::f64);
  Tensor d = randn({13, 7}, 1203);  // used transposed: non-contiguous
  Tensor e = randn({70001}, 1204).to(DType::bf16);
  Tensor da = on_dev(a), db = on_dev(b), dc = on_dev(c), dd = on_dev(d), de = on_dev(e);
  const std::vector<Tensor> host = {a, b, Tensor(), c, d.transpose(0, 1), e, Tensor::zeros({0})};
  const std::vector<Tensor> devs = {da, db, Tensor(), dc, dd.transpose(0, 1), de,
                                    on_dev(Tensor::zeros({0}))};
  const double ref = kernels::cpu::grad_norm(host);
  const double got = kernels::cuda::grad_norm(devs);
  CHECK(got == doctest::Approx(ref).epsilon(1e-13));
  CHECK(kernels::cuda::grad_norm(devs) == got);  // bit-identical run to run
  other_orders([&] { CHECK(kernels::cuda::grad_norm(devs) == got); });
  // Misaligned starts (16-byte loads after a scalar head) and single tensors.
  for (int64_t off : {1, 2, 3}) {
    CHECK(kernels::cuda::grad_norm({da.narrow(0, off, 70000)}) ==
          doctest::Approx(kernels::cpu::grad_norm({a.narrow(0, off, 70000)})).epsilon(1e-13));
    CHECK(kernels::cuda::grad_norm({de.narrow(0, off, 1001)}) ==
          doctest::Approx(kernels::cpu::grad_norm({e.narrow(0, off, 1001)})).epsilon(1e-13));
  }
  CHECK(kernels::cuda::grad_norm({da.slice(0, 0, 1001, 3)}) ==
        doctest::Approx(kernels::cpu::grad_norm({a.slice(0, 0, 1001, 3)})).epsilon(1e-13));
  CHECK(kernels::cuda::grad_norm(std::vector<Tensor>{Tensor()}) == 0.0);
  // NaN and Inf reach the trainer.
  std::vector<float> v(37, 1.0f);
  v[20] = NAN;
  CHECK(std::isnan(kernels::cuda::grad_norm({on_dev(Tensor::from_vector(v, {37})), da})));
  v[20] = INFINITY;
  CHECK(std::isinf(kernels::cuda::grad_norm({da, on_dev(Tensor::from_vector(v, {37}))})));
  CHECK_THROWS_CONTAINING(kernels::cuda::grad_norm({da, on_dev(Tensor::zeros({3}, DType::i32))}),
                          "grad_norm: tensor 1 is i32[3]");
  CHECK_THROWS_CONTAINING(kernels::cuda::grad_norm({a}), "is not on the CUDA device");

  // scale_: contiguous with a head, strided, 2-D transposed, f64.
  for (int64_t off : {0, 1, 3}) {
    Tensor buf = on_dev(a);
    Tensor view = buf.narrow(0, off, 1001);
    kernels::cuda::scale_(view, -0.25);
    Tensor expect = a.clone();
    kernels::cpu::scale_(expect.narrow(0, off, 1001), -0.25);
    CHECK(same_bits(buf, expect));  // one exact multiply per element, nothing outside the view
  }
  Tensor t2 = on_dev(d);
  kernels::cuda::scale_(t2.transpose(0, 1), 3.0);
  Tensor e2 = d.clone();
  kernels::cpu::scale_(e2.transpose(0, 1), 3.0);
  CHECK(same_bits(t2, e2));
  Tensor t3 = on_dev(c);
  kernels::cuda::scale_(t3.slice(0, 1, 33, 2), 0.5);
  Tensor e3 = c.clone();
  kernels::cpu::scale_(e3.slice(0, 1, 33, 2), 0.5);
  CHECK(same_bits(t3, e3));
  CHECK_THROWS_CONTAINING(kernels::cuda::scale_(on_dev(Tensor::zeros({1})).expand({4}), 2.0),
                          "overlapping elements");
}

// --- patchify ------------------------------------------------------------------------------------

TEST_CASE("cuda patchify: forward and inverse vs the CPU op (odd sizes, every unit width, strides)") {
  struct Case {
    Shape shape;
    int64_t t, p;
    DType dt;
  };
  const Case cases[] = {
      {{2, 6, 9, 15, 5}, 3, 3, DType::f32},   // 60-byte runs: 4-byte units
      {{2, 4, 8, 8, 4}, 2, 2, DType::f32},    // 32-byte runs: 16-byte units
      {{1, 3, 6, 10, 3}, 1, 2, DType::bf16},  // 12-byte runs: 4-byte units
      {{2, 3, 9, 9, 3}, 3, 3, DType::bf16},   // 18-byte runs: 2-byte units
      {{3, 7, 7, 1}, 1, 7, DType::f64},       // image, one patch each
      {{2, 13, 13, 7}, 1, 1, DType::i32},     // p = 1
      {{1, 5, 3, 3, 3}, 5, 1, DType::f32},
      {{2, 2, 4, 4, 8}, 1, 4, DType::bf16},   // 64-byte runs: 16-byte units
  };
  uint64_t stream = 1300;
  for (const Case& c : cases) {
    INFO("shape " << c.shape << " t " << c.t << " p " << c.p << " " << engine::dtype_name(c.dt));
    Tensor x = randn(c.shape, stream++, DType::f64, 10.0).to(c.dt);
    Tensor ref = kernels::cpu::patchify(x, c.t, c.p);
    Tensor xd = on_dev(x);
    Tensor got = kernels::cuda::patchify(xd, c.t, c.p);
    CHECK(same_bits(got, ref));
    Tensor g = randn(ref.shape(), stream++, DType::f64, 10.0).to(c.dt);
    Tensor gref = kernels::cpu::unpatchify_backward(g, c.shape, c.t, c.p);
    Tensor gd = on_dev(g);
    Tensor ggot = kernels::cuda::unpatchify_backward(gd, c.shape, c.t, c.p);
    CHECK(same_bits(ggot, gref));
    CHECK(same_bits(kernels::cuda::unpatchify_backward(got, c.shape, c.t, c.p), xd));
    // Channels-first storage seen channels-last (element path), and a transposed gradient.
    Tensor xt = on_dev(x.transpose(-1, -2).contiguous()).transpose(-1, -2);  // same values, strided
    CHECK(same_bits(kernels::cuda::patchify(xt, c.t, c.p), ref));
    Tensor gt = on_dev(g.transpose(1, 2).contiguous()).transpose(1, 2);
    CHECK(same_bits(kernels::cuda::unpatchify_backward(gt, c.shape, c.t, c.p), gref));
    if (c.dt == DType::bf16 && c.p == 3)
      other_orders([&] {
        CHECK(same_bits(kernels::cuda::patchify(xd, c.t, c.p), ref));
        CHECK(same_bits(kernels::cuda::unpatchify_backward(gd, c.shape, c.t, c.p), gref));
      });
  }
  // A misaligned view (offset 1 element): narrower units, same result.
  Tensor big = randn({2 * 4 * 8 * 8 * 4 + 1}, 1400);
  Tensor xv = big.narrow(0, 1, 2 * 4 * 8 * 8 * 4).view({2, 4, 8, 8, 4});
  CHECK(same_bits(kernels::cuda::patchify(on_dev(big).narrow(0, 1, 2048).view({2, 4, 8, 8, 4}), 2, 2),
                  kernels::cpu::patchify(xv, 2, 2)));
  CHECK(kernels::cuda::patchify(on_dev(Tensor::zeros({0, 2, 4, 4, 3})), 2, 2).shape() == Shape{0, 4, 24});
  // Errors as on the CPU.
  Tensor v = on_dev(Tensor::zeros({2, 6, 9, 15, 5}));
  CHECK_THROWS_CONTAINING(kernels::cuda::patchify(v, 4, 3), "not divisible by the tubelet length t = 4");
  CHECK_THROWS_CONTAINING(kernels::cuda::patchify(v, 3, 2), "divisible by the patch size p = 2");
  CHECK_THROWS_CONTAINING(kernels::cuda::unpatchify_backward(on_dev(Tensor::zeros({2, 30, 44})), v.shape(), 3, 3),
                          "does not match the patches [2, 30, 135]");
  CHECK_THROWS_CONTAINING(kernels::cuda::patchify(Tensor::zeros({2, 6, 9, 15, 5}), 3, 3),
                          "is not on the CUDA device");
}
