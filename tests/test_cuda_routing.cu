// The handwritten routing, entmax and drop-token CUDA kernels (kernels/cuda/routing.cu,
// entmax.cu, drop_token.cu) run under the sim against the CPU ops: integer outputs (expert and
// token ids, perm, rows, counts, drop-token indices) and pure moves must be bit-identical, float
// results within fp32 (or bf16) tolerance. Sizes cross the warp / sub-warp / block / chunk edges;
// unwritten outputs show up as NaN or -1 (fresh device memory is 0xFF), out-of-bounds writes
// trip the guard bytes, and the kernels with barriers or warp exchanges also run with the
// threads in reverse and shuffled order. These are our kernels, not NVIDIA libraries.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "kernels/drop_token.h"
#include "kernels/entmax.h"
#include "kernels/routing.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::randn;
using testing::randu;

namespace {

Tensor dev(const Tensor& t) { return t.contiguous().to(kernels::cuda::device()); }
Tensor host(const Tensor& t) { return t.to(engine::Device::cpu()); }

std::vector<int64_t> ints(const Tensor& t) { return host(t).to_vector<int64_t>(); }

// Runs f once per thread order: forward, reverse and a shuffled one.
template <class F>
void in_every_order(F&& f) {
  for (sim::ThreadOrder o :
       {sim::ThreadOrder::forward, sim::ThreadOrder::reverse, sim::ThreadOrder::shuffled}) {
    sim::ScopedThreadOrder scope(o, 7);
    INFO("thread order " << int(o));
    f();
  }
}

const std::vector<int64_t> kTokens = {1, 17, 65, 130};
const std::vector<int64_t> kExperts = {1, 4, 16, 33};

Tensor ids_tensor(const std::vector<int64_t>& v, const Shape& s) {
  return Tensor::from_vector(v, s, DType::i64);
}

Tensor random_ids(const Shape& s, int64_t E, uint64_t stream) {
  std::vector<double> u = randu(s, stream, 0, double(E), DType::f64).to_vector<double>();
  std::vector<int64_t> v;
  for (double x : u) v.push_back(std::min<int64_t>(E - 1, int64_t(x)));
  return ids_tensor(v, s);
}

// Probabilities with many exact ties (logits on a coarse grid).
Tensor tied_probs(const Shape& s, uint64_t stream) {
  std::vector<double> v = randu(s, stream, 0, 3, DType::f64).to_vector<double>();
  for (double& e : v) e = std::floor(e);
  Tensor l = Tensor::from_vector(v, s, DType::f32);
  return kernels::cpu::router_softmax(l.view({-1, s[s.size() - 1]})).view(s);
}

}  // namespace

TEST_CASE("cuda routing: router_softmax, its backward and the z-loss match the CPU") {
  uint64_t stream = 1;
  auto check = [&](int64_t T, int64_t E, DType dt) {
    INFO("T " << T << " E " << E << " " << engine::dtype_name(dt));
    Tensor x = randn({T, E}, stream++, dt, 3.0);
    Tensor p = kernels::cuda::router_softmax(dev(x));
    CHECK(p.dtype() == DType::f32);
    Tensor pc = kernels::cpu::router_softmax(x);
    CHECK_CLOSE(host(p), pc, 1e-5, 1e-7);
    Tensor g = randn({T, E}, stream++);
    CHECK_CLOSE(host(kernels::cuda::router_softmax_backward(dev(g), dev(pc))),
                kernels::cpu::router_softmax_backward(g, pc), 1e-5, 1e-6);
    Tensor z = kernels::cuda::router_z_loss(dev(x));
    CHECK(z.dim() == 0);
    CHECK_CLOSE(host(z), kernels::cpu::router_z_loss(x), 1e-5, 1e-6);
    Tensor gl = Tensor::full({}, 0.37);
    CHECK_CLOSE(host(kernels::cuda::router_z_loss_backward(dev(gl), dev(x))),
                kernels::cpu::router_z_loss_backward(gl, x), 1e-5, 1e-7);
  };
  for (int64_t T : kTokens)
    for (int64_t E : kExperts) check(T, E, DType::f32);
  check(17, 256, DType::f32);  // the widest row: 8 values per lane
  check(5, 255, DType::f32);
  check(17, 16, DType::bf16);
  check(65, 33, DType::bf16);
  in_every_order([&] {
    check(65, 33, DType::f32);
    check(17, 4, DType::f32);
  });
  // Stability and -inf as on the CPU: huge logits, -inf entries.
  const float inf = INFINITY;
  Tensor big =
      Tensor::from_vector<float>({1e4f, 1e4f - 1, -1e4f, 2e4f, -inf, 1.0f, -inf, 1.0f}, {2, 4});
  CHECK_CLOSE(host(kernels::cuda::router_softmax(dev(big))), kernels::cpu::router_softmax(big),
              1e-6, 0);
  CHECK_THROWS_CONTAINING(
      kernels::cuda::router_softmax(dev(randn({3, 257}, 1))),
      "router_softmax: E = 257 experts in f32[3, 257] (sim:0); the CUDA kernel handles 1..256");
}

TEST_CASE("cuda routing: topk_per_token ids are bit-identical to the CPU; backward too") {
  uint64_t stream = 100;
  auto check = [&](const Tensor& probs, int64_t k) {
    INFO(probs.describe() << " k " << k);
    kernels::TokenChoice g = kernels::cuda::topk_per_token(dev(probs), k);
    kernels::TokenChoice c = kernels::cpu::topk_per_token(probs, k);
    CHECK(ints(g.expert_ids) == c.expert_ids.to_vector<int64_t>());
    CHECK(g.gates.dtype() == probs.dtype());
    CHECK_CLOSE(host(g.gates), c.gates, 0, 0);
    Tensor dg = randn({probs.size(0), k}, 5 + k);
    CHECK_CLOSE(host(kernels::cuda::topk_per_token_backward(dev(dg), g.expert_ids, probs.size(1))),
                kernels::cpu::topk_per_token_backward(dg, c.expert_ids, probs.size(1)), 0, 0);
  };
  for (int64_t T : kTokens)
    for (int64_t E : kExperts)
      for (int64_t k : {int64_t(1), int64_t(2), E}) {
        if (k > E || (k == E && k > 2 && T > 17)) continue;  // k = E: every rank, on small T
        check(kernels::cpu::router_softmax(randn({T, E}, stream++)), k);
        check(tied_probs({T, E}, stream++), k);
      }
  check(tied_probs({9, 256}, stream++), 8);
  check(randn({17, 16}, stream++, DType::bf16), 2);
  // NaN above every number, -0 == +0, ties to the lower expert.
  Tensor p = Tensor::from_vector<float>(
      {0.25f, 0.5f, 0.25f, 0.5f, -0.0f, 0.0f, -1.0f, 0.0f, 0.1f, NAN, 0.9f, NAN}, {3, 4});
  CHECK(ints(kernels::cuda::topk_per_token(dev(p), 3).expert_ids) ==
        std::vector<int64_t>{1, 3, 0, 0, 1, 3, 1, 3, 2});
  in_every_order([&] {
    check(tied_probs({65, 33}, 900), 2);
    check(kernels::cpu::router_softmax(randn({17, 4}, 901)), 3);
  });
  CHECK_THROWS_CONTAINING(kernels::cuda::topk_per_token(dev(p), 5),
                          "topk_per_token: k = 5 is out of range [1, 4]");
  CHECK_THROWS_CONTAINING(kernels::cuda::topk_per_token_backward(
                              dev(randn({2, 1}, 1)), dev(ids_tensor({0, 4}, {2, 1})), 4),
                          "topk_per_token_backward: index 4 at position 1 is out of range [0, 4)");
}

TEST_CASE("cuda routing: topk_per_expert picks the CPU's tokens bit for bit; backward too") {
  uint64_t stream = 200;
  auto check = [&](const Tensor& probs, int64_t C) {
    INFO(probs.describe() << " C " << C);
    kernels::ExpertChoice g = kernels::cuda::topk_per_expert(dev(probs), C);
    kernels::ExpertChoice c = kernels::cpu::topk_per_expert(probs, C);
    CHECK(ints(g.token_ids) == c.token_ids.to_vector<int64_t>());
    CHECK_CLOSE(host(g.gates), c.gates, 0, 0);
    const int64_t G = probs.size(0), t = probs.size(1), E = probs.size(2);
    Tensor dg = randn({G, E, C}, stream++);
    CHECK_CLOSE(host(kernels::cuda::topk_per_expert_backward(dev(dg), g.token_ids, t)),
                kernels::cpu::topk_per_expert_backward(dg, c.token_ids, t), 0, 0);
  };
  for (int64_t G : {1, 3})
    for (int64_t t : {1, 17, 65})
      for (int64_t E : {1, 4, 5})
        for (int64_t C : {int64_t(1), (t + 1) / 2, t}) {
          check(kernels::cpu::router_softmax(randn({G * t, E}, stream++)).view({G, t, E}), C);
          check(tied_probs({G, t, E}, stream++), C);
        }
  check(kernels::cpu::router_softmax(randn({300, 3}, stream++)).view({1, 300, 3}),
        100);  // 256 threads
  check(randn({2, 33, 4}, stream++, DType::bf16), 9);
  in_every_order([&] {
    check(tied_probs({2, 65, 4}, 990), 17);
    check(kernels::cpu::router_softmax(randn({130, 5}, 991)).view({1, 130, 5}), 26);
  });
  CHECK_THROWS_CONTAINING(kernels::cuda::topk_per_expert(dev(randn({1, 5, 4}, 1)), 6),
                          "topk_per_expert: capacity C = 6 is out of range [1, 5]");
  CHECK_THROWS_CONTAINING(kernels::cuda::topk_per_expert(dev(randn({1, 16385, 1}, 1)), 2),
                          "the CUDA kernel sorts at most 16384 per group");
  CHECK_THROWS_CONTAINING(
      kernels::cuda::topk_per_expert_backward(dev(randn({2, 1, 2}, 1)),
                                              dev(ids_tensor({0, 1, 2, 3}, {2, 1, 2})), 3),
      "topk_per_expert_backward: token index 2 at position 2 is out of range [3, 6) of group 1");
}

TEST_CASE("cuda routing: make_dispatch gives the CPU's counts, offsets, perm and rows") {
  uint64_t stream = 300;
  auto check = [&](const Tensor& ids, int64_t E) {
    INFO(ids.describe() << " E " << E);
    kernels::DispatchPlan g = kernels::cuda::make_dispatch(dev(ids), E);
    kernels::DispatchPlan c = kernels::cpu::make_dispatch(ids, E);
    CHECK(ints(g.counts) == c.counts.to_vector<int64_t>());
    CHECK(ints(g.offsets) == c.offsets.to_vector<int64_t>());
    CHECK(ints(g.perm) == c.perm.to_vector<int64_t>());
    CHECK(ints(g.rows) == c.rows.to_vector<int64_t>());
  };
  for (int64_t T : kTokens)
    for (int64_t E : kExperts)
      for (int64_t k : {1, 2}) check(random_ids({T, k}, E, stream++), E);
  // Chunk edges of the per-block ranking (256 assignments), i32 ids, empty experts, no ids.
  for (int64_t A : {255, 256, 257, 1031}) check(random_ids({A}, 5, stream++), 5);
  check(random_ids({300, 2}, 3, stream++).to(DType::i32), 3);
  check(ids_tensor({7, 7, 2, 7, 2, 0}, {6}), 9);
  check(ids_tensor({}, {0}), 4);
  in_every_order([&] {
    check(random_ids({130, 2}, 33, 990), 33);
    check(random_ids({513}, 4, 991), 4);
    // 4100 experts x 3 blocks: the scan over [E, blocks] spans two 8192-entry chunks.
    check(random_ids({600}, 4100, 992), 4100);
  });
  CHECK_THROWS_CONTAINING(kernels::cuda::make_dispatch(dev(ids_tensor({0, 4, 1}, {3})), 4),
                          "make_dispatch: index 4 at position 1 is out of range [0, 4)");
  CHECK_THROWS_CONTAINING(kernels::cuda::make_dispatch(dev(ids_tensor({0, -3, 9}, {3})), 4),
                          "make_dispatch: index -3 at position 1 is out of range [0, 4)");
}

TEST_CASE("cuda routing: permute_rows moves bytes; its backward sums in the CPU's order") {
  uint64_t stream = 400;
  auto check = [&](const Tensor& x, const Tensor& rows) {
    INFO(x.describe() << " rows " << rows.describe());
    Tensor g = kernels::cuda::permute_rows(dev(x), dev(rows));
    Tensor c = kernels::cpu::permute_rows(x, rows);
    CHECK(host(g).to_vector<double>() == c.to_vector<double>());
    if (engine::is_floating(x.dtype()) && x.dtype() != DType::f64) {
      Tensor dy = randn(c.shape(), stream++, x.dtype());
      // No products, the same order: bit-identical sums.
      Tensor gb = kernels::cuda::permute_rows_backward(dev(dy), dev(rows), x.size(0));
      CHECK(host(gb).to_vector<double>() ==
            kernels::cpu::permute_rows_backward(dy, rows, x.size(0)).to_vector<double>());
    }
  };
  for (int64_t N : {1, 17, 130})
    for (int64_t D : {1, 7, 33, 64}) {
      const uint64_t s0 = stream;
      stream += 4;
      check(randn({N, D}, s0), random_ids({N + 3}, N, s0 + 1));
      check(randn({N, D}, s0 + 2, DType::bf16), random_ids({2 * N}, N, s0 + 3));
    }
  check(randn({9, 5}, 40, DType::f64), random_ids({4}, 9, 41));
  check(Tensor::arange(11), random_ids({13}, 11, 42).to(DType::i32));
  check(randn({6, 3, 4}, 43), random_ids({5}, 6, 44));
  in_every_order([&] { check(randn({65, 33}, 990), random_ids({70}, 65, 991)); });
  CHECK_THROWS_CONTAINING(
      kernels::cuda::permute_rows(dev(randn({3, 2}, 1)), dev(ids_tensor({1, 3}, {2}))),
      "permute_rows: index 3 at position 1 is out of range [0, 3)");
}

TEST_CASE("cuda routing: combine_rows and its backward match the CPU") {
  uint64_t stream = 500;
  auto check = [&](int64_t T, int64_t D, DType dt) {
    INFO("T " << T << " D " << D << " " << engine::dtype_name(dt));
    const int64_t A = 2 * T + 3;
    Tensor y = randn({A, D}, stream++, dt);
    Tensor rows = random_ids({A}, T, stream++);
    Tensor gates = randu({A}, stream++, 0, 1);
    Tensor out = kernels::cuda::combine_rows(dev(y), dev(rows), dev(gates), T);
    CHECK(out.dtype() == dt);
    const double tol = dt == DType::bf16 ? 1e-2 : 1e-5;
    CHECK_CLOSE(host(out), kernels::cpu::combine_rows(y, rows, gates, T), tol, tol);
    Tensor dout = randn({T, D}, stream++, dt);
    kernels::CombineGrads g =
        kernels::cuda::combine_rows_backward(dev(dout), dev(y), dev(rows), dev(gates));
    kernels::CombineGrads c = kernels::cpu::combine_rows_backward(dout, y, rows, gates);
    CHECK_CLOSE(host(g.dy), c.dy, tol, tol);
    CHECK_CLOSE(host(g.dgates), c.dgates, 1e-5, 1e-5);
  };
  for (int64_t T : kTokens)
    for (int64_t D : {1, 33, 64}) check(T, D, DType::f32);
  check(17, 40, DType::bf16);  // 8-element bf16 packs
  check(17, 7, DType::bf16);
  check(5, 300, DType::f32);  // more than one register tile per lane
  in_every_order([&] {
    check(65, 64, DType::f32);
    check(17, 33, DType::f32);
    // 9000 destinations: the scan of the per-destination counts spans two 8192-entry chunks.
    Tensor y = randn({50, 3}, 995), rows = random_ids({50}, 9000, 996),
           gates = randu({50}, 997, 0, 1);
    CHECK_CLOSE(host(kernels::cuda::combine_rows(dev(y), dev(rows), dev(gates), 9000)),
                kernels::cpu::combine_rows(y, rows, gates, 9000), 1e-6, 0);
  });
  // The router pipeline end to end: dispatch, identity experts, combine with unit gates = x.
  Tensor x = randn({65, 24}, stream++);
  kernels::TokenChoice tc = kernels::cuda::topk_per_token(
      kernels::cuda::router_softmax(dev(randn({65, 4}, stream++))), 1);
  kernels::DispatchPlan plan = kernels::cuda::make_dispatch(tc.expert_ids, 4);
  Tensor xs = kernels::cuda::permute_rows(dev(x), plan.rows);
  CHECK_CLOSE(host(kernels::cuda::combine_rows(xs, plan.rows, dev(Tensor::ones({65})), 65)), x, 0,
              0);
  CHECK_THROWS_CONTAINING(
      kernels::cuda::combine_rows(dev(randn({2, 3}, 1)), dev(ids_tensor({0, 2}, {2})),
                                  dev(Tensor::ones({2})), 2),
      "combine_rows: index 2 at position 1 is out of range [0, 2)");
}

TEST_CASE("cuda routing: load-balance statistics and backward match the CPU") {
  uint64_t stream = 600;
  auto check = [&](int64_t T, int64_t E, int64_t k) {
    INFO("T " << T << " E " << E << " k " << k);
    Tensor probs = kernels::cpu::router_softmax(randn({T, E}, stream++));
    Tensor ids = random_ids({T, k}, E, stream++);
    kernels::LoadBalance g = kernels::cuda::load_balance_stats(dev(probs), dev(ids), E);
    kernels::LoadBalance c = kernels::cpu::load_balance_stats(probs, ids, E);
    CHECK_CLOSE(host(g.f), c.f, 1e-6, 0);
    CHECK_CLOSE(host(g.P), c.P, 1e-5, 1e-7);
    CHECK_CLOSE(host(g.loss), c.loss, 1e-5, 1e-7);
    Tensor gl = Tensor::full({}, 0.3);
    CHECK_CLOSE(host(kernels::cuda::load_balance_backward(dev(gl), g.f, T)),
                kernels::cpu::load_balance_backward(gl, c.f, T), 1e-6, 0);
  };
  for (int64_t T : kTokens)
    for (int64_t E : kExperts) check(T, E, std::min<int64_t>(2, E));
  check(130, 300, 1);  // more experts than threads: several column passes
  in_every_order([&] { check(130, 33, 2); });
  CHECK_THROWS_CONTAINING(
      kernels::cuda::load_balance_stats(dev(randn({2, 3}, 1)), dev(ids_tensor({0, 3}, {2})), 3),
      "load_balance_stats: index 3 at position 1 is out of range [0, 3)");
}

TEST_CASE("cuda routing: dispatch_softmax over tokens, forward and backward") {
  uint64_t stream = 700;
  auto check = [&](const Shape& s, DType dt) {
    INFO(s << " " << engine::dtype_name(dt));
    Tensor L = randn(s, stream++, dt, 2.0);
    Tensor y = kernels::cuda::dispatch_softmax(dev(L));
    Tensor yc = kernels::cpu::dispatch_softmax(L);
    CHECK_CLOSE(host(y), yc, 1e-5, 1e-7);
    Tensor g = randn(s, stream++);
    CHECK_CLOSE(host(kernels::cuda::dispatch_softmax_backward(dev(g), dev(yc))),
                kernels::cpu::dispatch_softmax_backward(g, yc), 1e-5, 1e-6);
  };
  for (int64_t N : {1, 17, 130})
    for (int64_t S : {1, 31, 33, 65}) check({2, N, S}, DType::f32);
  check({3, 17, 33}, DType::bf16);
  in_every_order([&] { check({2, 65, 33}, DType::f32); });
}

TEST_CASE("cuda routing: entmax15 matches the CPU; exact zeros; NaN rows; backward") {
  uint64_t stream = 800;
  auto check = [&](const Shape& s, DType dt, double scale) {
    INFO(s << " " << engine::dtype_name(dt) << " scale " << scale);
    Tensor z = randn(s, stream++, dt, scale);
    Tensor p = kernels::cuda::entmax15(dev(z));
    Tensor pc = kernels::cpu::entmax15(z);
    CHECK_CLOSE(host(p), pc, 1e-5, 2e-6);
    // Zeros where the CPU has zeros, except within rounding of the threshold.
    std::vector<float> pg = host(p).to_vector<float>(), pv = pc.to_vector<float>();
    int64_t zero_mismatch = 0;
    for (size_t i = 0; i < pg.size(); ++i)
      zero_mismatch += (pg[i] == 0.0f) != (pv[i] == 0.0f) && std::max(pg[i], pv[i]) > 1e-7f;
    CHECK(zero_mismatch == 0);
    Tensor g = randn(s, stream++);
    CHECK_CLOSE(host(kernels::cuda::entmax15_backward(dev(g), dev(pc))),
                kernels::cpu::entmax15_backward(g, pc), 1e-5, 1e-6);
  };
  for (int64_t K : {1, 7, 33, 294})
    for (int64_t rows : {1, 5}) check({rows, K}, DType::f32, 2.0);
  check({2, 3, 512}, DType::f32, 3.0);  // the largest row: 16 sorted values per lane
  check({3, 33}, DType::bf16, 2.0);
  check({7, 37}, DType::f32, 0.1);  // nearly uniform: everything in the support
  in_every_order([&] {
    check({5, 294}, DType::f32, 2.0);
    check({6, 7}, DType::f32, 1.0);
  });
  const float inf = INFINITY;
  Tensor z = Tensor::from_vector<float>(
      {0.5f, NAN, 0.1f, 1.0f, -inf, 0.9f, -inf, -inf, -inf, inf, 0.0f, 1.0f}, {4, 3});
  CHECK_CLOSE(host(kernels::cuda::entmax15(dev(z))), kernels::cpu::entmax15(z), 1e-6, 1e-7);
  // One dominant entry: one-hot.
  Tensor one = Tensor::from_vector<float>({0.1f, 9.0f, -0.3f, 0.2f, 0.0f}, {1, 5});
  CHECK(host(kernels::cuda::entmax15(dev(one))).to_vector<float>() ==
        std::vector<float>{0, 1, 0, 0, 0});
  // The backward has no K limit.
  Tensor pbig = kernels::cpu::entmax15(randn({2, 600}, stream++));
  Tensor gbig = randn({2, 600}, stream++);
  CHECK_CLOSE(host(kernels::cuda::entmax15_backward(dev(gbig), dev(pbig))),
              kernels::cpu::entmax15_backward(gbig, pbig), 1e-5, 1e-6);
  CHECK_THROWS_CONTAINING(
      kernels::cuda::entmax15(dev(randn({2, 513}, 1))),
      "entmax15: rows of K = 513 in f32[2, 513] (sim:0); the CUDA kernel sorts at most 512");
}

TEST_CASE("cuda routing: drop-token indices are bit-identical; gather and scatter") {
  auto check_idx = [](int64_t B, int64_t L, int64_t keep, uint64_t seed, uint64_t stream) {
    INFO("B " << B << " L " << L << " keep " << keep);
    CHECK(ints(kernels::cuda::drop_token_indices(B, L, keep, seed, stream)) ==
          kernels::cpu::drop_token_indices(B, L, keep, seed, stream).to_vector<int64_t>());
  };
  for (int64_t L : {1, 7, 37, 130, 1024})
    for (double rate : {0.0, 0.25, 0.75}) {
      if (rate > 0 && rate >= 1 - 1.0 / L) continue;
      check_idx(3, L, kernels::keep_count(L, rate), 42, 9);
    }
  check_idx(2, 33, 0, 1, 1);
  check_idx(2, 33, 33, 1, 1);
  check_idx(1, 8192, 2048, 5, (uint64_t(1) << 40) + 3);  // 64 KiB of shared memory (> 48 KiB)
  in_every_order([&] { check_idx(4, 130, 32, 3, 2); });

  uint64_t stream = 900;
  auto check_move = [&](const Tensor& x, int64_t keep) {
    INFO(x.describe() << " keep " << keep);
    Tensor idx = kernels::cpu::drop_token_indices(x.size(0), x.size(1), keep, 4, stream++);
    Tensor g = kernels::cuda::drop_token_gather(dev(x), dev(idx));
    Tensor c = kernels::cpu::drop_token_gather(x, idx);
    CHECK(host(g).to_vector<double>() == c.to_vector<double>());
    Tensor back = kernels::cuda::drop_token_scatter(g, dev(idx.to(DType::i32)), x.size(1));
    CHECK(host(back).to_vector<double>() ==
          kernels::cpu::drop_token_scatter(c, idx, x.size(1)).to_vector<double>());
  };
  check_move(randn({3, 37, 13}, stream++), 9);
  check_move(randn({2, 17, 64}, stream++), 5);
  check_move(randn({2, 17, 3, 5}, stream++, DType::bf16), 16);
  check_move(Tensor::arange(2 * 9 * 3).view({2, 9, 3}), 4);
  in_every_order([&] { check_move(randn({3, 65, 33}, 999), 16); });
  Tensor x = dev(randn({2, 6, 3}, 1));
  CHECK_THROWS_CONTAINING(
      kernels::cuda::drop_token_gather(x, dev(ids_tensor({1, 6, 0, 5}, {2, 2}))),
      "drop_token_gather: index 6 at position 1 is out of range [0, 6)");
  CHECK_THROWS_CONTAINING(
      kernels::cuda::drop_token_scatter(dev(randn({2, 2, 3}, 1)),
                                        dev(ids_tensor({1, 2, 3, 3}, {2, 2})), 6),
      "drop_token_scatter: indices of example 1 are not strictly increasing at position 1");
  CHECK_THROWS_CONTAINING(
      kernels::cuda::drop_token_indices(1, 16385, 4, 1, 1),
      "drop_token_indices: L = 16385 tokens; the CUDA kernel sorts at most 16384");
}

TEST_CASE("cuda routing: inputs must be device tensors, contiguous, of a supported dtype") {
  Tensor x = randn({4, 6}, 1);
  CHECK_THROWS_CONTAINING(kernels::cuda::router_softmax(x),
                          "router_softmax: 'logits' is on cpu; the CUDA kernel needs it on sim:0");
  CHECK_THROWS_CONTAINING(kernels::cuda::router_softmax(dev(randn({6, 4}, 1)).transpose(0, 1)),
                          "router_softmax: the CUDA kernel needs a contiguous 'logits'");
  CHECK_THROWS_CONTAINING(
      kernels::cuda::router_softmax(dev(randn({4, 6}, 1, DType::f64))),
      "router_softmax: expected an f32 or bf16 'logits' on the GPU, got f64[4, 6]");
  CHECK_THROWS_CONTAINING(kernels::cuda::make_dispatch(dev(randn({4}, 1)), 4),
                          "make_dispatch: 'expert_ids' must be i64 or i32");
  CHECK_THROWS_CONTAINING(
      kernels::cuda::combine_rows(dev(randn({2, 3}, 1)), dev(ids_tensor({0, 1}, {2})),
                                  Tensor::ones({2}), 2),
      "combine_rows: 'gates' is on cpu");
  CHECK_THROWS_CONTAINING(kernels::cuda::entmax15(x), "entmax15: 'z' is on cpu");
  CHECK_THROWS_CONTAINING(
      kernels::cuda::drop_token_gather(dev(randn({2, 5, 3}, 1)), ids_tensor({0, 1}, {2, 1})),
      "drop_token_gather: 'idx' is on cpu");
}
