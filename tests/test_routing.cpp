// MoE routing ops on the CPU against the f64 reference (odd token and expert counts, f32/f64/
// bf16, strided inputs), their invariants (expert choice fills every expert with exactly C
// tokens, the dispatch is a stable permutation, combine inverts permute), determinism of the
// combine's summation order, gradchecks of every backward formula, and error messages.
#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <set>
#include <vector>

#include "autograd/gradcheck.h"
#include "kernels/routing.h"
#include "tests/helpers.h"

using autograd::Grads;
using autograd::Var;
using engine::DType;
using engine::Shape;
using engine::Tensor;
using testing::non_contiguous;
using testing::randn;
using testing::randu;

namespace {

double rtol_of(DType dt) { return dt == DType::f64 ? 1e-12 : 1e-5; }
double atol_of(DType dt) { return dt == DType::f64 ? 1e-13 : 1e-6; }

const std::vector<int64_t> kTokens = {1, 17, 65, 130};
const std::vector<int64_t> kExperts = {1, 4, 16, 33};

// Probabilities with many exact ties: logits on a coarse grid.
Tensor tied_probs(const Shape& s, uint64_t stream) {
  std::vector<double> v = randu(s, stream, 0, 4, DType::f64).to_vector<double>();
  for (double& e : v) e = std::floor(e);
  return kernels::ref::router_softmax(
             Tensor::from_vector(v, s, DType::f64).view({-1, s[s.size() - 1]}))
      .view(s)
      .to(DType::f32);
}

Tensor ids_tensor(const std::vector<int64_t>& v, const Shape& s, DType dt = DType::i64) {
  return Tensor::from_vector(v, s, DType::i64).to(dt);
}

// Random expert ids in [0, E) of the given shape.
Tensor random_ids(const Shape& s, int64_t E, uint64_t stream) {
  std::vector<double> u = randu(s, stream, 0, double(E), DType::f64).to_vector<double>();
  std::vector<int64_t> v;
  for (double x : u) v.push_back(std::min<int64_t>(E - 1, int64_t(x)));
  return ids_tensor(v, s);
}

void check_grad(const char* name, const std::function<Var(const std::vector<Var>&)>& f,
                const std::vector<Tensor>& inputs, std::vector<bool> wrt = {}) {
  autograd::GradcheckResult r = autograd::gradcheck(f, inputs, {}, wrt);
  INFO(name << ": " << r.detail << " (max abs err " << r.max_abs_err << ")");
  CHECK(r.ok);
}

// Differentiable wrappers written for the gradchecks from the forward / backward kernel pairs.
Var router_softmax_v(const Var& x) {
  Tensor p = kernels::router_softmax(x.data());
  return autograd::make_result(p, "router_softmax", {x}, [p](const Tensor& g, Grads& gr) {
    gr.set(0, kernels::router_softmax_backward(g, p));
  });
}
Var z_loss_v(const Var& x) {
  Tensor l = x.data();
  return autograd::make_result(
      kernels::router_z_loss(l), "z_loss", {x},
      [l](const Tensor& g, Grads& gr) { gr.set(0, kernels::router_z_loss_backward(g, l)); });
}
Var load_balance_v(const Var& probs, const Tensor& ids, int64_t E) {
  kernels::LoadBalance lb = kernels::load_balance_stats(probs.data(), ids, E);
  const int64_t T = probs.size(0);
  Tensor f = lb.f;
  return autograd::make_result(
      lb.loss, "load_balance", {probs},
      [f, T](const Tensor& g, Grads& gr) { gr.set(0, kernels::load_balance_backward(g, f, T)); });
}
Var combine_v(const Var& y, const Tensor& rows, const Var& gates, int64_t N) {
  Tensor yd = y.data(), gd = gates.data();
  return autograd::make_result(kernels::combine_rows(yd, rows, gd, N), "combine", {y, gates},
                               [yd, gd, rows](const Tensor& g, Grads& gr) {
                                 kernels::CombineGrads c =
                                     kernels::combine_rows_backward(g, yd, rows, gd);
                                 gr.set(0, c.dy);
                                 gr.set(1, c.dgates);
                               });
}
Var permute_v(const Var& x, const Tensor& rows) {
  const int64_t N = x.size(0);
  return autograd::make_result(kernels::permute_rows(x.data(), rows), "permute", {x},
                               [rows, N](const Tensor& g, Grads& gr) {
                                 gr.set(0, kernels::permute_rows_backward(g, rows, N));
                               });
}
Var dispatch_softmax_v(const Var& x) {
  Tensor y = kernels::dispatch_softmax(x.data());
  return autograd::make_result(y, "dispatch_softmax", {x}, [y](const Tensor& g, Grads& gr) {
    gr.set(0, kernels::dispatch_softmax_backward(g, y));
  });
}
Var token_gates_v(const Var& probs, int64_t k) {
  kernels::TokenChoice tc = kernels::topk_per_token(probs.data(), k);
  const int64_t E = probs.size(1);
  Tensor ids = tc.expert_ids;
  return autograd::make_result(tc.gates, "topk_per_token", {probs},
                               [ids, E](const Tensor& g, Grads& gr) {
                                 gr.set(0, kernels::topk_per_token_backward(g, ids, E));
                               });
}
Var expert_gates_v(const Var& probs, int64_t C) {
  kernels::ExpertChoice ec = kernels::topk_per_expert(probs.data(), C);
  const int64_t t = probs.size(1);
  Tensor ids = ec.token_ids;
  return autograd::make_result(ec.gates, "topk_per_expert", {probs},
                               [ids, t](const Tensor& g, Grads& gr) {
                                 gr.set(0, kernels::topk_per_expert_backward(g, ids, t));
                               });
}

}  // namespace

TEST_CASE("routing: router_softmax and its backward match the reference") {
  uint64_t stream = 1;
  for (DType dt : {DType::f32, DType::f64})
    for (int64_t T : kTokens)
      for (int64_t E : kExperts) {
        INFO(engine::dtype_name(dt) << " T " << T << " E " << E);
        Tensor x = randn({T, E}, stream++, dt, 3.0);
        Tensor p = kernels::router_softmax(x);
        CHECK(p.dtype() == dt);
        Tensor pr = kernels::ref::router_softmax(x);
        CHECK_CLOSE(p, pr, rtol_of(dt), atol_of(dt));
        CHECK_CLOSE(kernels::router_softmax(non_contiguous(x)), pr, rtol_of(dt), atol_of(dt));
        Tensor g = randn({T, E}, stream++, dt);
        Tensor pd = pr.to(dt);
        Tensor dr = kernels::ref::router_softmax_backward(g, pd);
        CHECK_CLOSE(kernels::router_softmax_backward(g, pd), dr, rtol_of(dt) * 10,
                    atol_of(dt) * 10);
        CHECK_CLOSE(kernels::router_softmax_backward(non_contiguous(g), pd), dr, rtol_of(dt) * 10,
                    atol_of(dt) * 10);
      }
  // bf16 logits give fp32 probabilities (the router is fp32).
  Tensor xb = randn({17, 16}, 99, DType::bf16, 2.0);
  Tensor pb = kernels::router_softmax(xb);
  CHECK(pb.dtype() == DType::f32);
  CHECK_CLOSE(pb, kernels::ref::router_softmax(xb), 1e-5, 1e-6);
}

TEST_CASE("routing: topk_per_token matches the reference; ties go to the lower expert") {
  uint64_t stream = 100;
  for (int64_t T : kTokens)
    for (int64_t E : kExperts)
      for (int64_t k : {int64_t(1), int64_t(2), E}) {
        if (k > E) continue;
        INFO("T " << T << " E " << E << " k " << k);
        for (Tensor probs :
             {kernels::router_softmax(randn({T, E}, stream++)), tied_probs({T, E}, stream++)}) {
          kernels::TokenChoice tc = kernels::topk_per_token(probs, k);
          kernels::TokenChoice r = kernels::ref::topk_per_token(probs, k);
          CHECK(tc.expert_ids.dtype() == DType::i64);
          CHECK(tc.expert_ids.to_vector<int64_t>() == r.expert_ids.to_vector<int64_t>());
          CHECK_CLOSE(tc.gates, r.gates, 0, 0);
          CHECK(kernels::topk_per_token(non_contiguous(probs), k).expert_ids.to_vector<int64_t>() ==
                r.expert_ids.to_vector<int64_t>());
        }
      }
  // Explicit ties, -0 == +0 and NaN above every number.
  Tensor p = Tensor::from_vector<float>({0.25f, 0.5f, 0.25f, 0.5f,  //
                                         -0.0f, 0.0f, -1.0f, 0.0f,  //
                                         0.1f, NAN, 0.9f, NAN},
                                        {3, 4});
  kernels::TokenChoice tc = kernels::topk_per_token(p, 3);
  CHECK(tc.expert_ids.to_vector<int64_t>() == std::vector<int64_t>{1, 3, 0, 0, 1, 3, 1, 3, 2});
  // bf16 probabilities keep their dtype in the gates.
  Tensor pb = randn({5, 7}, 7, DType::bf16);
  CHECK(kernels::topk_per_token(pb, 2).gates.dtype() == DType::bf16);
  CHECK(kernels::topk_per_token(pb, 2).expert_ids.to_vector<int64_t>() ==
        kernels::ref::topk_per_token(pb, 2).expert_ids.to_vector<int64_t>());
}

TEST_CASE("routing: topk_per_token_backward scatters gate gradients to the chosen experts") {
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor probs = kernels::router_softmax(randn({17, 13}, 200, dt));
    kernels::TokenChoice tc = kernels::topk_per_token(probs, 3);
    Tensor dg = randn({17, 3}, 201, dt);
    Tensor d = kernels::topk_per_token_backward(dg, tc.expert_ids, 13);
    CHECK(d.dtype() == dt);
    CHECK_CLOSE(d, kernels::ref::topk_per_token_backward(dg, tc.expert_ids, 13), 0, 0);
    CHECK_CLOSE(
        kernels::topk_per_token_backward(non_contiguous(dg), tc.expert_ids.to(DType::i32), 13),
        kernels::ref::topk_per_token_backward(dg, tc.expert_ids, 13), 0, 0);
  }
}

TEST_CASE("routing: expert choice gives each expert exactly C tokens per group") {
  uint64_t stream = 300;
  for (int64_t G : {1, 3})
    for (int64_t t : {1, 7, 37})
      for (int64_t E : {1, 4, 5})
        for (int64_t C : {int64_t(1), (t + 2) / 3, t}) {
          INFO("G " << G << " t " << t << " E " << E << " C " << C);
          for (Tensor probs : {kernels::router_softmax(randn({G * t, E}, stream++)).view({G, t, E}),
                               tied_probs({G, t, E}, stream++)}) {
            kernels::ExpertChoice ec = kernels::topk_per_expert(probs, C);
            kernels::ExpertChoice r = kernels::ref::topk_per_expert(probs, C);
            CHECK(ec.token_ids.shape() == Shape{G, E, C});
            CHECK(ec.token_ids.to_vector<int64_t>() == r.token_ids.to_vector<int64_t>());
            CHECK_CLOSE(ec.gates, r.gates, 0, 0);
            CHECK(
                kernels::topk_per_expert(non_contiguous(probs), C).token_ids.to_vector<int64_t>() ==
                r.token_ids.to_vector<int64_t>());
            // Invariants, checked directly: C distinct tokens of the group per expert, gates are
            // their probabilities, in descending order, and no token left out beats a chosen one.
            std::vector<int64_t> ids = ec.token_ids.to_vector<int64_t>();
            std::vector<float> gates = ec.gates.to_vector<float>();
            std::vector<float> pv = probs.contiguous().to_vector<float>();
            bool ok = true;
            for (int64_t g = 0; g < G; ++g)
              for (int64_t e = 0; e < E; ++e) {
                std::set<int64_t> seen;
                float lowest = INFINITY;
                for (int64_t c = 0; c < C; ++c) {
                  const int64_t i = ids[(g * E + e) * C + c];
                  const float gate = gates[(g * E + e) * C + c];
                  ok = ok && i >= g * t && i < (g + 1) * t && seen.insert(i).second;
                  ok = ok && gate == pv[i * E + e] && gate <= lowest;
                  lowest = gate;
                }
                for (int64_t i = g * t; i < (g + 1) * t; ++i)
                  if (!seen.count(i)) ok = ok && pv[i * E + e] <= lowest;
              }
            CHECK(ok);
          }
        }
}

TEST_CASE("routing: topk_per_expert_backward writes each gate gradient to its token") {
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor probs = kernels::router_softmax(randn({3 * 11, 5}, 400, dt)).view({3, 11, 5});
    kernels::ExpertChoice ec = kernels::topk_per_expert(probs, 4);
    Tensor dg = randn({3, 5, 4}, 401, dt);
    Tensor d = kernels::topk_per_expert_backward(dg, ec.token_ids, 11);
    CHECK(d.shape() == Shape{3, 11, 5});
    CHECK_CLOSE(d, kernels::ref::topk_per_expert_backward(dg, ec.token_ids, 11), 0, 0);
  }
  // A token id outside its group's range is an error, not a silent write into another group.
  Tensor ids = ids_tensor({0, 1, 5, 3}, {2, 1, 2});  // group 1 owns [3, 6); group 0 names 1, 0
  Tensor bad = ids_tensor({0, 1, 2, 3}, {2, 1, 2});  // group 1 names 2
  CHECK_NOTHROW(kernels::topk_per_expert_backward(randn({2, 1, 2}, 1), ids, 3));
  CHECK_THROWS_CONTAINING(kernels::topk_per_expert_backward(randn({2, 1, 2}, 1), bad, 3),
                          "token index 2 at position 2 is out of range [3, 6) of group 1");
}

TEST_CASE("routing: make_dispatch is a stable permutation with counts and offsets") {
  uint64_t stream = 500;
  auto check_plan = [](const Tensor& ids, int64_t E) {
    kernels::DispatchPlan p = kernels::make_dispatch(ids, E);
    kernels::DispatchPlan r = kernels::ref::make_dispatch(ids, E);
    CHECK(p.counts.to_vector<int64_t>() == r.counts.to_vector<int64_t>());
    CHECK(p.offsets.to_vector<int64_t>() == r.offsets.to_vector<int64_t>());
    CHECK(p.perm.to_vector<int64_t>() == r.perm.to_vector<int64_t>());
    CHECK(p.rows.to_vector<int64_t>() == r.rows.to_vector<int64_t>());
    // The invariants themselves: counts sum to A, perm is a permutation, each expert's slice
    // holds exactly its assignments in increasing order, rows = perm / k.
    std::vector<int64_t> id = ids.contiguous().to_vector<int64_t>(),
                         perm = p.perm.to_vector<int64_t>();
    std::vector<int64_t> off = p.offsets.to_vector<int64_t>(), rows = p.rows.to_vector<int64_t>();
    const int64_t A = int64_t(id.size()), k = ids.dim() == 2 ? ids.size(1) : 1;
    std::vector<int64_t> sorted = perm;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> iota(static_cast<size_t>(A));
    std::iota(iota.begin(), iota.end(), 0);
    CHECK(sorted == iota);
    CHECK(off.front() == 0);
    CHECK(off.back() == A);
    bool ok = true;
    for (int64_t e = 0; e < E; ++e)
      for (int64_t j = off[e]; j < off[e + 1]; ++j) {
        ok = ok && id[perm[j]] == e && rows[j] == perm[j] / k;
        if (j > off[e]) ok = ok && perm[j] > perm[j - 1];
      }
    CHECK(ok);
  };
  for (int64_t T : kTokens)
    for (int64_t E : kExperts)
      for (int64_t k : {1, 2}) {
        INFO("T " << T << " E " << E << " k " << k);
        Tensor ids = random_ids({T, k}, E, stream++);
        check_plan(ids, E);
        check_plan(ids.to(DType::i32), E);
        check_plan(ids.flatten(), E);
      }
  // Empty experts (ids only hit a few of 9), and the threaded path (per-thread histograms).
  check_plan(ids_tensor({7, 7, 2, 7, 2, 0}, {6}), 9);
  check_plan(random_ids({70001, 2}, 16, stream++), 16);
  check_plan(random_ids({3}, 4, stream++).slice(0, 0, 0), 4);  // no assignments at all
}

TEST_CASE("routing: permute_rows gathers rows of any dtype; its backward sums them back") {
  uint64_t stream = 600;
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    Tensor x = randn({13, 37}, stream++, dt);
    Tensor rows = random_ids({41}, 13, stream++);  // repeats and skipped rows
    INFO(engine::dtype_name(dt));
    Tensor y = kernels::permute_rows(x, rows);
    CHECK(y.dtype() == dt);
    CHECK_CLOSE(y, kernels::ref::permute_rows(x, rows), 0, 0);
    CHECK_CLOSE(kernels::permute_rows(non_contiguous(x), rows.to(DType::i32)),
                kernels::ref::permute_rows(x, rows), 0, 0);
    Tensor g = randn({41, 37}, stream++, dt);
    Tensor back = kernels::permute_rows_backward(g, rows, 13);
    CHECK(back.dtype() == dt);
    const double tol = dt == DType::bf16 ? 1e-2 : rtol_of(dt);
    CHECK_CLOSE(back, kernels::ref::permute_rows_backward(g, rows, 13), tol, tol);
  }
  // Integer payloads (gates, ids), rank 1 and rank 3 rows.
  Tensor ids = Tensor::arange(9);
  Tensor rows = ids_tensor({8, 0, 3, 3}, {4});
  CHECK(kernels::permute_rows(ids, rows).to_vector<int64_t>() == std::vector<int64_t>{8, 0, 3, 3});
  Tensor x3 = randn({5, 3, 7}, stream++);
  CHECK_CLOSE(kernels::permute_rows(x3, rows.slice(0, 1, 4)),
              kernels::ref::permute_rows(x3, rows.slice(0, 1, 4)), 0, 0);
  // A permutation undone by its backward is the identity.
  Tensor x = randn({130, 33}, stream++);
  kernels::DispatchPlan plan = kernels::make_dispatch(random_ids({130}, 4, stream++), 4);
  CHECK_CLOSE(kernels::permute_rows_backward(kernels::permute_rows(x, plan.rows), plan.rows, 130),
              x, 0, 0);
}

TEST_CASE("routing: combine_rows matches the reference and sums in row order") {
  uint64_t stream = 700;
  for (DType dt : {DType::f32, DType::f64, DType::bf16})
    for (int64_t T : kTokens)
      for (int64_t D : {1, 33}) {
        INFO(engine::dtype_name(dt) << " T " << T << " D " << D);
        const int64_t A = 2 * T + 3;
        const DType gdt = dt == DType::f64 ? DType::f64 : DType::f32;
        Tensor y = randn({A, D}, stream++, dt);
        Tensor rows = random_ids({A}, T, stream++);
        Tensor gates = randu({A}, stream++, 0, 1, gdt);
        Tensor out = kernels::combine_rows(y, rows, gates, T);
        CHECK(out.dtype() == dt);
        const double tol = dt == DType::bf16 ? 1e-2 : rtol_of(dt) * 10;
        Tensor ref = kernels::ref::combine_rows(y, rows, gates, T);
        CHECK_CLOSE(out, ref, tol, tol);
        CHECK_CLOSE(kernels::combine_rows(non_contiguous(y), rows, non_contiguous(gates), T), ref,
                    tol, tol);
        Tensor dout = randn({T, D}, stream++, dt);
        kernels::CombineGrads cg = kernels::combine_rows_backward(dout, y, rows, gates);
        kernels::CombineGrads cr = kernels::ref::combine_rows_backward(dout, y, rows, gates);
        CHECK(cg.dy.dtype() == dt);
        CHECK(cg.dgates.dtype() == gdt);
        CHECK_CLOSE(cg.dy, cr.dy, tol, tol);
        CHECK_CLOSE(cg.dgates, cr.dgates, tol * 10, tol * 10);
      }
  // Bit-exact against a plain f32 loop that adds each output row's terms in increasing j, on a
  // size big enough for the threaded path.
  const int64_t T = 301, A = 1203, D = 67;
  Tensor y = randn({A, D}, stream++);
  Tensor rows = random_ids({A}, T, stream++);
  Tensor gates = randu({A}, stream++, 0, 1);
  std::vector<float> yv = y.to_vector<float>(), gv = gates.to_vector<float>(),
                     want(size_t(T * D), 0.0f);
  std::vector<int64_t> rv = rows.to_vector<int64_t>();
  for (int64_t j = 0; j < A; ++j)
    for (int64_t d = 0; d < D; ++d) want[rv[j] * D + d] += gv[j] * yv[j * D + d];
  CHECK(kernels::combine_rows(y, rows, gates, T).to_vector<float>() == want);
}

TEST_CASE("routing: combine with unit gates inverts the dispatch") {
  uint64_t stream = 800;
  for (int64_t T : kTokens)
    for (int64_t E : kExperts) {
      Tensor x = randn({T, 19}, stream++);
      kernels::TokenChoice tc =
          kernels::topk_per_token(kernels::router_softmax(randn({T, E}, stream++)), 1);
      kernels::DispatchPlan plan = kernels::make_dispatch(tc.expert_ids, E);
      Tensor xs = kernels::permute_rows(x, plan.rows);
      Tensor out = kernels::combine_rows(xs, plan.rows, Tensor::ones({T}), T);
      CHECK_CLOSE(out, x, 0, 0);
      // Top-2 with the gates carried through perm: each token gets g1·x + g2·x.
      kernels::TokenChoice t2 = kernels::topk_per_token(
          kernels::router_softmax(randn({T, E}, stream++)), std::min<int64_t>(2, E));
      kernels::DispatchPlan p2 = kernels::make_dispatch(t2.expert_ids, E);
      Tensor gs = kernels::permute_rows(t2.gates.flatten(), p2.perm);
      Tensor o2 = kernels::combine_rows(kernels::permute_rows(x, p2.rows), p2.rows, gs, T);
      std::vector<float> gv = t2.gates.to_vector<float>(), xv = x.to_vector<float>();
      std::vector<double> want(xv.size());
      const int64_t k = t2.gates.size(1);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t d = 0; d < 19; ++d) {
          double s = 0;
          for (int64_t q = 0; q < k; ++q) s += double(gv[t * k + q]) * xv[t * 19 + d];
          want[t * 19 + d] = s;
        }
      CHECK_CLOSE(o2, Tensor::from_vector(want, {T, 19}, DType::f64), 1e-5, 1e-6);
    }
}

TEST_CASE("routing: z-loss and load-balance statistics match the reference") {
  uint64_t stream = 900;
  for (DType dt : {DType::f32, DType::f64})
    for (int64_t T : kTokens)
      for (int64_t E : kExperts) {
        INFO(engine::dtype_name(dt) << " T " << T << " E " << E);
        Tensor logits = randn({T, E}, stream++, dt, 2.0);
        Tensor z = kernels::router_z_loss(logits);
        CHECK(z.dim() == 0);
        CHECK(z.dtype() == dt);
        CHECK_CLOSE(z, kernels::ref::router_z_loss(logits), rtol_of(dt), atol_of(dt));
        CHECK_CLOSE(kernels::router_z_loss(non_contiguous(logits)),
                    kernels::ref::router_z_loss(logits), rtol_of(dt), atol_of(dt));
        Tensor g = Tensor::full({}, 0.7, dt);
        CHECK_CLOSE(kernels::router_z_loss_backward(g, logits),
                    kernels::ref::router_z_loss_backward(g, logits), rtol_of(dt) * 10, atol_of(dt));

        Tensor probs = kernels::router_softmax(logits);
        const int64_t k = std::min<int64_t>(2, E);
        Tensor ids = kernels::topk_per_token(probs, k).expert_ids;
        kernels::LoadBalance lb = kernels::load_balance_stats(probs, ids, E);
        kernels::LoadBalance lr = kernels::ref::load_balance_stats(probs, ids, E);
        CHECK_CLOSE(lb.f, lr.f, rtol_of(dt), atol_of(dt));
        CHECK_CLOSE(lb.P, lr.P, rtol_of(dt), atol_of(dt));
        CHECK_CLOSE(lb.loss, lr.loss, rtol_of(dt), atol_of(dt));
        CHECK_CLOSE(kernels::load_balance_backward(g, lb.f, T),
                    kernels::ref::load_balance_backward(g, lb.f, T), rtol_of(dt), atol_of(dt));
      }
  // Uniform probabilities and perfectly balanced routing give a loss of exactly 1.
  Tensor probs = Tensor::full({8, 4}, 0.25);
  Tensor ids = ids_tensor({0, 1, 2, 3, 0, 1, 2, 3}, {8});
  CHECK(kernels::load_balance_stats(probs, ids, 4).loss.item() == doctest::Approx(1.0));
  // Everything on one expert with probability 1: loss = E.
  Tensor one = Tensor::zeros({6, 5});
  for (int64_t t = 0; t < 6; ++t) one.select(0, t).select(0, 2).fill_(1.0);
  CHECK(kernels::load_balance_stats(one, Tensor::full({6}, 2, DType::i64), 5).loss.item() ==
        doctest::Approx(5.0));
  // z-loss of equal logits: lse = c + log E.
  CHECK(kernels::router_z_loss(Tensor::full({3, 4}, 1.5)).item() ==
        doctest::Approx(std::pow(1.5 + std::log(4.0), 2)));
}

TEST_CASE("routing: dispatch_softmax normalises over tokens, forward and backward") {
  uint64_t stream = 1000;
  for (DType dt : {DType::f32, DType::f64})
    for (Shape s : {Shape{1, 1, 1}, Shape{2, 17, 33}, Shape{3, 65, 7}, Shape{1, 130, 5}}) {
      INFO(engine::dtype_name(dt) << " " << s);
      Tensor L = randn(s, stream++, dt, 2.0);
      Tensor y = kernels::dispatch_softmax(L);
      Tensor yr = kernels::ref::dispatch_softmax(L);
      CHECK(y.dtype() == dt);
      CHECK_CLOSE(y, yr, rtol_of(dt), atol_of(dt));
      CHECK_CLOSE(kernels::dispatch_softmax(non_contiguous(L)), yr, rtol_of(dt), atol_of(dt));
      Tensor g = randn(s, stream++, dt);
      CHECK_CLOSE(kernels::dispatch_softmax_backward(g, yr.to(dt)),
                  kernels::ref::dispatch_softmax_backward(g, yr.to(dt)), rtol_of(dt) * 10,
                  atol_of(dt) * 10);
      // Every (b, slot) column sums to 1 over the tokens.
      std::vector<double> v = yr.to_vector<double>();
      bool ok = true;
      for (int64_t b = 0; b < s[0]; ++b)
        for (int64_t j = 0; j < s[2]; ++j) {
          double sum = 0;
          for (int64_t n = 0; n < s[1]; ++n) sum += v[(b * s[1] + n) * s[2] + j];
          ok = ok && std::abs(sum - 1) < 1e-12;
        }
      CHECK(ok);
    }
  CHECK(kernels::dispatch_softmax(randn({2, 5, 3}, 1, DType::bf16)).dtype() == DType::f32);
}

TEST_CASE("routing: gradcheck of every backward formula") {
  using V = const std::vector<Var>&;
  check_grad("router_softmax", [](V v) { return router_softmax_v(v[0]); },
             {randn({5, 4}, 1, DType::f64)});
  check_grad("z_loss", [](V v) { return z_loss_v(v[0]); }, {randn({5, 4}, 2, DType::f64, 2.0)});
  Tensor probs = kernels::router_softmax(randn({7, 3}, 3, DType::f64));
  Tensor ids = kernels::topk_per_token(probs, 2).expert_ids;
  check_grad("load_balance", [ids](V v) { return load_balance_v(v[0], ids, 3); }, {probs});
  Tensor rows = ids_tensor({2, 0, 2, 1, 2, 0}, {6});
  check_grad("combine_rows", [rows](V v) { return combine_v(v[0], rows, v[1], 4); },
             {randn({6, 3}, 4, DType::f64), randu({6}, 5, 0, 1, DType::f64)});
  check_grad("permute_rows", [rows](V v) { return permute_v(v[0], rows); },
             {randn({3, 5}, 6, DType::f64)});
  check_grad("dispatch_softmax", [](V v) { return dispatch_softmax_v(v[0]); },
             {randn({2, 5, 3}, 7, DType::f64)});
  // Gates as a function of the probabilities (the selection is locally constant).
  check_grad("topk_per_token gates", [](V v) { return token_gates_v(v[0], 2); },
             {kernels::router_softmax(randn({6, 5}, 8, DType::f64))});
  check_grad("topk_per_expert gates", [](V v) { return expert_gates_v(v[0], 2); },
             {kernels::router_softmax(randn({10, 3}, 9, DType::f64)).view({2, 5, 3})});
}

TEST_CASE("routing: errors name the op and the offending input") {
  Tensor probs = kernels::router_softmax(randn({5, 4}, 1));
  CHECK_THROWS_CONTAINING(kernels::router_softmax(randn({5}, 1)),
                          "router_softmax: expected 'logits' to have 2 dimensions, got f32[5]");
  CHECK_THROWS_CONTAINING(kernels::router_softmax(Tensor::arange(4).view({2, 2})),
                          "router_softmax: expected a floating-point 'logits'");
  CHECK_THROWS_CONTAINING(kernels::topk_per_token(probs, 5),
                          "topk_per_token: k = 5 is out of range [1, 4]");
  CHECK_THROWS_CONTAINING(kernels::topk_per_token(probs, 0), "topk_per_token: k = 0");
  CHECK_THROWS_CONTAINING(kernels::topk_per_expert(probs.view({1, 5, 4}), 6),
                          "topk_per_expert: capacity C = 6 is out of range [1, 5]");
  CHECK_THROWS_CONTAINING(kernels::topk_per_expert(probs, 2),
                          "topk_per_expert: expected 'probs' to have 3");
  CHECK_THROWS_CONTAINING(kernels::make_dispatch(ids_tensor({0, 4, 1}, {3}), 4),
                          "make_dispatch: index 4 at position 1 is out of range [0, 4)");
  CHECK_THROWS_CONTAINING(kernels::make_dispatch(ids_tensor({0, -1}, {2}), 4),
                          "make_dispatch: index -1 at position 1");
  CHECK_THROWS_CONTAINING(kernels::make_dispatch(probs, 4),
                          "make_dispatch: 'expert_ids' must be i64 or i32");
  CHECK_THROWS_CONTAINING(kernels::permute_rows(randn({3, 2}, 1), ids_tensor({3}, {1})),
                          "permute_rows: index 3 at position 0 is out of range [0, 3)");
  CHECK_THROWS_CONTAINING(kernels::combine_rows(randn({2, 3}, 1), ids_tensor({0, 1}, {2}),
                                                Tensor::ones({2}, DType::f64), 2),
                          "combine_rows: gates must be f32");
  CHECK_THROWS_CONTAINING(
      kernels::combine_rows(randn({2, 3}, 1), ids_tensor({0, 1}, {2}), Tensor::ones({3}), 2),
      "must have the same number of rows");
  CHECK_THROWS_CONTAINING(
      kernels::combine_rows(randn({2, 3}, 1), ids_tensor({0, 2}, {2}), Tensor::ones({2}), 2),
      "combine_rows: index 2 at position 1 is out of range [0, 2)");
  CHECK_THROWS_CONTAINING(kernels::load_balance_stats(probs, ids_tensor({0, 1}, {2}), 4),
                          "load_balance_stats: expert_ids i64[2] must be [T] or [T, k]");
  CHECK_THROWS_CONTAINING(kernels::load_balance_stats(probs, ids_tensor({0, 1, 2, 3, 4}, {5}), 4),
                          "load_balance_stats: index 4 at position 4");
  CHECK_THROWS_CONTAINING(
      kernels::router_z_loss_backward(Tensor::ones({2}), randn({2, 2}, 1)),
      "router_z_loss_backward: expected a one-element floating-point loss gradient");
  CHECK_THROWS_CONTAINING(kernels::dispatch_softmax(randn({2, 3}, 1)),
                          "dispatch_softmax: expected 'logits' to have 3 dimensions");
  CHECK_THROWS_CONTAINING(kernels::router_z_loss(Tensor::zeros({0, 3})),
                          "router_z_loss: needs at least one token");
}
