// Autograd wrappers of the MoE routing kernels (autograd/routing.h): forwards against the f64
// references and plain loops (combine = index_add of gate·row, token- and expert-choice chains),
// f64 gradchecks of every wrapper (top-k gates with well-separated values so the selection is
// fixed under the finite differences), the whole token-choice chain against a composition of
// softmax / gather / mul / sum, gradient dtypes for bf16 inputs, and error messages.
#include <algorithm>
#include <functional>
#include <numeric>
#include <vector>

#include "autograd/elementwise.h"
#include "autograd/gradcheck.h"
#include "autograd/index.h"
#include "autograd/reduce.h"
#include "autograd/routing.h"
#include "autograd/softmax.h"
#include "autograd/views.h"
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
using V = const std::vector<Var>&;

namespace {

Tensor ids_tensor(const std::vector<int64_t>& v, const Shape& s, DType dt = DType::i64) {
  return Tensor::from_vector(v, s, DType::i64).to(dt);
}

void check_grad(const char* name, const std::function<Var(const std::vector<Var>&)>& f,
                const std::vector<Tensor>& inputs) {
  autograd::GradcheckResult r = autograd::gradcheck(f, inputs);
  INFO(name << ": " << r.detail << " (max abs err " << r.max_abs_err << ")");
  CHECK(r.ok);
}

// f64 values in (0, 1) whose entries along `axis` (1 of a 2-D or 3-D shape) are a permutation of
// n levels 1/n apart plus noise below 0.3/n: no two candidates of a top-k are within 0.7/n, so
// finite differences never change the selection.
Tensor separated(const Shape& s, uint64_t stream) {
  const int64_t n = s[1];
  REQUIRE(std::gcd(n, int64_t(2)) == 1);  // level = (2·i + ...) mod n is a permutation of i
  std::vector<double> u = randu(s, stream, 0, 0.3, DType::f64).to_vector<double>();
  const int64_t inner = s.numel() / (s[0] * n);
  for (int64_t a = 0; a < s[0]; ++a)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < inner; ++c) {
        double& v = u[size_t((a * n + i) * inner + c)];
        v = (double((2 * i + 3 * c + a) % n) + 0.2 + v) / double(n);
      }
  return Tensor::from_vector(u, s, DType::f64);
}

// Indices of the k largest values of v, descending, ties to the lower index (kernels/topk.h).
std::vector<int64_t> top_indices(const std::vector<double>& v, int64_t k) {
  std::vector<int64_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return v[a] > v[b]; });
  idx.resize(size_t(k));
  return idx;
}

// Runs the backward function of `out`'s node on `g` (every input wanting a gradient) and returns
// the raw gradients, before the engine's own dtype conversion when accumulating.
std::vector<Tensor> raw_grads(const Var& out, const Tensor& g) {
  REQUIRE(out.grad_fn());
  Grads grads(std::vector<bool>(out.grad_fn()->inputs.size(), true));
  autograd::NoGradGuard ng;
  out.grad_fn()->backward(g, grads);
  return grads.tensors();
}

struct ChainOut {
  Var out;       // [T, D]
  Tensor ids;    // [T, k]
};

// Token-choice MoE layer whose expert e scales its rows by scale[e].
ChainOut token_choice_chain(const Var& logits, const Var& x, int64_t k,
                            const std::vector<double>& scale) {
  const int64_t T = logits.size(0), E = logits.size(1);
  Var probs = autograd::router_softmax(logits);
  autograd::TokenChoiceVar tc = autograd::topk_per_token(probs, k);
  kernels::DispatchPlan plan = kernels::make_dispatch(tc.expert_ids, E);
  Var xs = autograd::permute_rows(x, plan.rows);
  Var gs = autograd::permute_rows(autograd::flatten(tc.gates), plan.perm);
  std::vector<int64_t> ids = tc.expert_ids.to_vector<int64_t>(),
                       perm = plan.perm.to_vector<int64_t>();
  std::vector<double> s;
  for (int64_t j : perm) s.push_back(scale[size_t(ids[size_t(j)])]);
  Var ys = autograd::mul(xs, Var(Tensor::from_vector(s, {int64_t(s.size()), 1}, x.dtype())));
  return {autograd::combine_rows(ys, plan.rows, gs, T), tc.expert_ids};
}

}  // namespace

TEST_CASE("autograd routing: forwards match the f64 references") {
  Tensor logits = randn({7, 5}, 1);
  Var lv(logits, true);
  Var probs = autograd::router_softmax(lv);
  CHECK(probs.dtype() == DType::f32);
  CHECK(probs.requires_grad());
  CHECK_CLOSE(probs.data(), kernels::ref::router_softmax(logits), 1e-5, 1e-6);

  autograd::TokenChoiceVar tc = autograd::topk_per_token(probs, 2);
  kernels::TokenChoice rtc = kernels::ref::topk_per_token(probs.data(), 2);
  CHECK(tc.expert_ids.to_vector<int64_t>() == rtc.expert_ids.to_vector<int64_t>());
  CHECK_CLOSE(tc.gates.data(), rtc.gates, 1e-6, 1e-7);

  Tensor p3 = randu({2, 9, 3}, 2, 0, 1);
  autograd::ExpertChoiceVar ec = autograd::topk_per_expert(Var(p3, true), 4);
  kernels::ExpertChoice rec = kernels::ref::topk_per_expert(p3, 4);
  CHECK(ec.token_ids.to_vector<int64_t>() == rec.token_ids.to_vector<int64_t>());
  CHECK_CLOSE(ec.gates.data(), rec.gates, 1e-6, 1e-7);

  Var z = autograd::router_z_loss(lv);
  CHECK(z.dim() == 0);
  CHECK_CLOSE(z.data(), kernels::ref::router_z_loss(logits), 1e-5, 1e-6);

  autograd::LoadBalanceVar lb = autograd::load_balance_loss(probs, tc.expert_ids, 5);
  kernels::LoadBalance rlb = kernels::ref::load_balance_stats(probs.data(), tc.expert_ids, 5);
  CHECK_CLOSE(lb.loss.data(), rlb.loss, 1e-5, 1e-6);
  CHECK_CLOSE(lb.f, rlb.f, 1e-6, 1e-7);
  CHECK_CLOSE(lb.P, rlb.P, 1e-5, 1e-6);

  Tensor dl = randn({3, 7, 5}, 3, DType::f32, 2.0);
  Var d = autograd::dispatch_softmax(Var(non_contiguous(dl), true));
  CHECK_CLOSE(d.data(), kernels::ref::dispatch_softmax(dl), 1e-5, 1e-6);
}

TEST_CASE("autograd routing: permute_rows and combine_rows equal plain loops") {
  // Rows with repeats (4 three times, 0 twice) and unnamed rows (1, 3) of N = 6.
  const std::vector<int64_t> r = {4, 0, 4, 2, 5, 0, 4};
  const int64_t A = 7, N = 6, D = 6;
  for (DType dt : {DType::f32, DType::f64})
    for (DType it : {DType::i64, DType::i32}) {
      INFO(engine::dtype_name(dt) << " rows " << engine::dtype_name(it));
      Tensor rows = ids_tensor(r, {A}, it);
      Tensor x = randn({N, 2, 3}, 10, dt);
      Var xs = autograd::permute_rows(Var(non_contiguous(x), true), rows);
      CHECK(xs.shape() == Shape{A, 2, 3});
      std::vector<double> xv = x.to_vector<double>(), pv = xs.data().to_vector<double>();
      for (int64_t j = 0; j < A; ++j)
        for (int64_t c = 0; c < D; ++c) CHECK(pv[size_t(j * D + c)] == xv[size_t(r[j] * D + c)]);

      // combine = index_add over rows of gates[j]·y[j].
      Tensor y = randn({A, 2, 3}, 11, dt), gates = randu({A}, 12, 0, 1, dt);
      Var out = autograd::combine_rows(Var(y, true), rows, Var(gates, true), N);
      std::vector<double> yv = y.to_vector<double>(), gv = gates.to_vector<double>();
      std::vector<double> ref(size_t(N * D), 0.0);
      for (int64_t j = 0; j < A; ++j)
        for (int64_t c = 0; c < D; ++c)
          ref[size_t(r[j] * D + c)] += gv[size_t(j)] * yv[size_t(j * D + c)];
      CHECK_CLOSE(out.data(), Tensor::from_vector(ref, {N, 2, 3}, DType::f64), 1e-6, 1e-6);
      CHECK(out.dtype() == dt);
      std::vector<double> ov = out.data().to_vector<double>();
      for (int64_t n : {1, 3})
        for (int64_t c = 0; c < D; ++c) CHECK(ov[size_t(n * D + c)] == 0.0);
    }
}

TEST_CASE("autograd routing: token-choice chain with identity experts gives sum_k gate_k * x") {
  const int64_t T = 7, E = 5, k = 2, D = 3;
  Tensor logits = randn({T, E}, 20), x = randn({T, D}, 21);
  ChainOut c = token_choice_chain(Var(logits, true), Var(x, true), k, std::vector<double>(E, 1.0));
  // Independent: f64 softmax and a plain top-k per token.
  std::vector<double> lv = logits.to_vector<double>(), xv = x.to_vector<double>();
  std::vector<double> ref(size_t(T * D), 0.0);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> p(lv.begin() + t * E, lv.begin() + (t + 1) * E);
    const double m = *std::max_element(p.begin(), p.end());
    double s = 0;
    for (double& v : p) s += (v = std::exp(v - m));
    for (double& v : p) v /= s;
    double gate_sum = 0;
    for (int64_t e : top_indices(p, k)) gate_sum += p[size_t(e)];
    for (int64_t d = 0; d < D; ++d) ref[size_t(t * D + d)] = gate_sum * xv[size_t(t * D + d)];
  }
  CHECK(c.out.shape() == Shape{T, D});
  CHECK_CLOSE(c.out.data(), Tensor::from_vector(ref, {T, D}, DType::f64), 1e-5, 1e-6);
}

TEST_CASE("autograd routing: expert-choice chain (G = 2) combines each token's chosen slots") {
  const int64_t G = 2, t = 9, E = 3, C = 4, D = 5, T = G * t;
  Tensor probs = kernels::ref::router_softmax(randn({T, E}, 30)).to(DType::f32).view({G, t, E});
  Tensor x = randn({T, D}, 31);
  autograd::ExpertChoiceVar ec = autograd::topk_per_expert(Var(probs, true), C);
  // Slot (g, e, c) belongs to expert e; the dispatch sorts the slots expert-major (the slots
  // as a flat [A] list: make_dispatch takes [A] or [T, k]).
  std::vector<int64_t> se;
  for (int64_t g = 0; g < G; ++g)
    for (int64_t e = 0; e < E; ++e)
      for (int64_t c = 0; c < C; ++c) se.push_back(e);
  kernels::DispatchPlan plan = kernels::make_dispatch(ids_tensor(se, {G * E * C}), E);
  CHECK(plan.counts.to_vector<int64_t>() == std::vector<int64_t>(size_t(E), G * C));
  Tensor rows = kernels::permute_rows(ec.token_ids.flatten(), plan.perm);
  Var gs = autograd::permute_rows(autograd::flatten(ec.gates), plan.perm);
  Var xs = autograd::permute_rows(Var(x, true), rows);
  Var out = autograd::combine_rows(xs, rows, gs, T);
  // Plain: token i of group g gets probs[g, i, e]·x for every expert e whose top C it is in.
  std::vector<double> pv = probs.to_vector<double>(), xv = x.to_vector<double>();
  std::vector<double> ref(size_t(T * D), 0.0);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t e = 0; e < E; ++e) {
      std::vector<double> col;
      for (int64_t i = 0; i < t; ++i) col.push_back(pv[size_t((g * t + i) * E + e)]);
      for (int64_t i : top_indices(col, C))
        for (int64_t d = 0; d < D; ++d)
          ref[size_t((g * t + i) * D + d)] += col[size_t(i)] * xv[size_t((g * t + i) * D + d)];
    }
  CHECK_CLOSE(out.data(), Tensor::from_vector(ref, {T, D}, DType::f64), 1e-5, 1e-6);
}

TEST_CASE("autograd routing: gradcheck of router_softmax, router_z_loss, dispatch_softmax") {
  check_grad("router_softmax", [](V v) { return autograd::router_softmax(v[0]); },
             {randn({7, 5}, 40, DType::f64)});
  check_grad("router_z_loss", [](V v) { return autograd::router_z_loss(v[0]); },
             {randn({7, 5}, 41, DType::f64, 2.0)});
  check_grad("dispatch_softmax", [](V v) { return autograd::dispatch_softmax(v[0]); },
             {randn({3, 7, 5}, 42, DType::f64)});
}

TEST_CASE("autograd routing: gradcheck of permute_rows and combine_rows (repeats, unnamed rows)") {
  Tensor rows = ids_tensor({4, 0, 4, 2, 5, 0, 4}, {7});
  check_grad("permute_rows", [rows](V v) { return autograd::permute_rows(v[0], rows); },
             {randn({6, 3}, 50, DType::f64)});
  check_grad("permute_rows 3-D", [rows](V v) { return autograd::permute_rows(v[0], rows); },
             {randn({6, 2, 3}, 51, DType::f64)});
  check_grad("combine_rows",
             [rows](V v) { return autograd::combine_rows(v[0], rows, v[1], 6); },
             {randn({7, 3}, 52, DType::f64), randu({7}, 53, 0, 1, DType::f64)});
  check_grad("combine_rows 3-D, gates [7, 1]",
             [rows](V v) { return autograd::combine_rows(v[0], rows, v[1], 6); },
             {randn({7, 2, 3}, 54, DType::f64), randu({7, 1}, 55, 0, 1, DType::f64)});
}

TEST_CASE("autograd routing: gradcheck of the top-k gates (token and expert choice)") {
  check_grad("topk_per_token gates", [](V v) { return autograd::topk_per_token(v[0], 2).gates; },
             {separated({7, 5}, 60)});
  check_grad("topk_per_expert gates",
             [](V v) { return autograd::topk_per_expert(v[0], 4).gates; },
             {separated({2, 9, 3}, 61)});
  // Through the router: logits levels 1 apart keep the softmax's order separated as well.
  std::vector<double> lv = separated({7, 5}, 62).to_vector<double>();
  for (double& v : lv) v *= 5.0;
  check_grad("topk_per_token(router_softmax) gates",
             [](V v) { return autograd::topk_per_token(autograd::router_softmax(v[0]), 2).gates; },
             {Tensor::from_vector(lv, {7, 5}, DType::f64)});
}

TEST_CASE("autograd routing: load_balance_loss statistics by plain loops; gradcheck via P") {
  const int64_t T = 7, E = 5, k = 2;
  Tensor probs = kernels::ref::router_softmax(randn({T, E}, 70, DType::f64));
  Tensor ids = ids_tensor({0, 3, 3, 1, 4, 0, 3, 2, 0, 4, 3, 1, 0, 3}, {T, k});
  autograd::LoadBalanceVar lb = autograd::load_balance_loss(Var(probs, true), ids, E);
  std::vector<double> pv = probs.to_vector<double>(), f(size_t(E), 0), P(size_t(E), 0);
  for (int64_t id : ids.to_vector<int64_t>()) f[size_t(id)] += 1.0 / double(T * k);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) P[size_t(e)] += pv[size_t(t * E + e)] / double(T);
  double loss = 0;
  for (int64_t e = 0; e < E; ++e) loss += double(E) * f[size_t(e)] * P[size_t(e)];
  CHECK_CLOSE(lb.f, Tensor::from_vector(f, {E}, DType::f64), 1e-14, 1e-15);
  CHECK_CLOSE(lb.P, Tensor::from_vector(P, {E}, DType::f64), 1e-13, 1e-15);
  CHECK(lb.loss.item() == doctest::Approx(loss).epsilon(1e-12));
  check_grad("load_balance_loss",
             [ids](V v) { return autograd::load_balance_loss(v[0], ids, 5).loss; }, {probs});
  Tensor ids1 = ids_tensor({2, 0, 4, 4, 1, 3, 2}, {T});  // [T] (top-1) ids
  check_grad("load_balance_loss top-1",
             [ids1](V v) { return autograd::load_balance_loss(v[0], ids1, 5).loss; }, {probs});
}

TEST_CASE("autograd routing: chain gradient equals a composition of softmax, gather, mul, sum") {
  const int64_t T = 7, E = 5, k = 2, D = 3;
  const std::vector<double> scale = {0.5, -1.25, 2.0, 0.75, 1.5};  // expert e scales by scale[e]
  std::vector<double> lv = separated({T, E}, 80).to_vector<double>();
  for (double& v : lv) v *= 4.0;
  Tensor logits = Tensor::from_vector(lv, {T, E}, DType::f64);
  Tensor x = randn({T, D}, 81, DType::f64), R = randn({T, D}, 82, DType::f64);

  Var l1(logits, true), x1(x, true);
  ChainOut c = token_choice_chain(l1, x1, k, scale);
  autograd::sum_all(autograd::mul(c.out, Var(R))).backward();

  // out_t = Σ_s softmax(logits)_t[ids[t, s]] · scale[ids[t, s]] · x_t.
  Var l2(logits, true), x2(x, true);
  std::vector<double> cs;
  for (int64_t id : c.ids.to_vector<int64_t>()) cs.push_back(scale[size_t(id)]);
  Var gates = autograd::gather(autograd::softmax(l2, 1), 1, c.ids);
  Var w = autograd::sum(autograd::mul(gates, Var(Tensor::from_vector(cs, {T, k}))), 1, true);
  Var out2 = autograd::mul(w, x2);
  autograd::sum_all(autograd::mul(out2, Var(R))).backward();

  CHECK_CLOSE(c.out.data(), out2.data(), 1e-12, 1e-13);
  CHECK_CLOSE(l1.grad(), l2.grad(), 1e-10, 1e-12);
  CHECK_CLOSE(x1.grad(), x2.grad(), 1e-10, 1e-12);
  // And by finite differences through the whole chain (selection fixed by the separation).
  check_grad("token-choice chain",
             [scale](V v) { return token_choice_chain(v[0], v[1], 2, scale).out; }, {logits, x});
}

TEST_CASE("autograd routing: gradients keep each input's dtype and shape (bf16 inputs)") {
  const int64_t T = 7, E = 5;
  Var logits(randn({T, E}, 90).to(DType::bf16), true);
  Var probs = autograd::router_softmax(logits);
  CHECK(probs.dtype() == DType::f32);  // fp32 router statistics
  std::vector<Tensor> g = raw_grads(probs, randn({T, E}, 91));
  CHECK(g[0].dtype() == DType::bf16);
  CHECK(g[0].shape() == Shape{T, E});

  Var z = autograd::router_z_loss(logits);
  CHECK(z.dtype() == DType::f32);
  g = raw_grads(z, Tensor::ones({}, DType::f32));
  CHECK(g[0].dtype() == DType::bf16);
  CHECK(g[0].shape() == Shape{T, E});

  Var pb(randu({T, E}, 92, 0, 1, DType::bf16), true);
  autograd::TokenChoiceVar tc = autograd::topk_per_token(pb, 2);
  CHECK(tc.gates.dtype() == DType::bf16);
  g = raw_grads(tc.gates, randn({T, 2}, 93, DType::bf16));
  CHECK(g[0].dtype() == DType::bf16);
  CHECK(g[0].shape() == Shape{T, E});

  autograd::LoadBalanceVar lb = autograd::load_balance_loss(pb, tc.expert_ids, E);
  CHECK(lb.loss.dtype() == DType::f32);
  g = raw_grads(lb.loss, Tensor::ones({}, DType::f32));
  CHECK(g[0].dtype() == DType::bf16);
  CHECK(g[0].shape() == Shape{T, E});

  Var p3(randu({2, 9, 3}, 94, 0, 1, DType::bf16), true);
  autograd::ExpertChoiceVar ec = autograd::topk_per_expert(p3, 4);
  g = raw_grads(ec.gates, randn({2, 3, 4}, 95, DType::bf16));
  CHECK(g[0].dtype() == DType::bf16);
  CHECK(g[0].shape() == Shape{2, 9, 3});

  Var dl(randn({3, 7, 5}, 96, DType::bf16), true);
  Var dw = autograd::dispatch_softmax(dl);
  g = raw_grads(dw, randn({3, 7, 5}, 97));
  CHECK(g[0].dtype() == DType::bf16);
  CHECK(g[0].shape() == Shape{3, 7, 5});

  // bf16 rows with f32 gates: dy in bf16, dgates in f32, as the inputs.
  Tensor rows = ids_tensor({4, 0, 4, 2, 5, 0, 4}, {7});
  Var y(randn({7, 3}, 98, DType::bf16), true), gates(randu({7}, 99, 0, 1), true);
  Var out = autograd::combine_rows(y, rows, gates, 6);
  CHECK(out.dtype() == DType::bf16);
  Tensor dout = randn({6, 3}, 100).to(DType::bf16);
  out.backward(dout);
  CHECK(y.grad().dtype() == DType::bf16);
  CHECK(gates.grad().dtype() == DType::f32);
  CHECK(gates.grad().shape() == Shape{7});
  // Values: the f64 formulas on the same (bf16-representable) numbers, within bf16 rounding.
  kernels::CombineGrads ref = kernels::ref::combine_rows_backward(
      dout.to(DType::f32), y.data().to(DType::f32), rows, gates.data());
  CHECK_CLOSE(y.grad(), ref.dy, 1e-2, 1e-2);
  CHECK_CLOSE(gates.grad(), ref.dgates, 1e-5, 1e-5);

  // The whole chain on bf16 logits and x: every leaf gets a gradient of its own dtype.
  Var x(randn({T, 3}, 101, DType::bf16), true);
  ChainOut c = token_choice_chain(logits, x, 2, std::vector<double>(E, 1.0));
  c.out.backward(Tensor::ones({T, 3}, DType::bf16));
  CHECK(logits.grad().dtype() == DType::bf16);
  CHECK(x.grad().dtype() == DType::bf16);
}

TEST_CASE("autograd routing: no graph without requires_grad or under NoGradGuard") {
  Tensor p = randu({7, 5}, 110, 0, 1);
  CHECK_FALSE(autograd::topk_per_token(Var(p), 2).gates.requires_grad());
  CHECK_FALSE(autograd::router_softmax(Var(p)).requires_grad());
  Var pv(p, true);
  autograd::NoGradGuard ng;
  CHECK_FALSE(autograd::topk_per_token(pv, 2).gates.requires_grad());
  CHECK_FALSE(autograd::load_balance_loss(pv, Tensor::zeros({7}, DType::i64), 5)
                  .loss.requires_grad());
}

TEST_CASE("autograd routing: bad inputs throw the kernels' messages") {
  Var probs(kernels::router_softmax(randn({5, 4}, 120)), true);
  Var v1(randn({5}, 121), true), v2(randn({2, 3}, 122), true);
  CHECK_THROWS_CONTAINING(autograd::router_softmax(v1),
                          "router_softmax: expected 'logits' to have 2 dimensions, got f32[5]");
  CHECK_THROWS_CONTAINING(autograd::topk_per_token(probs, 5),
                          "topk_per_token: k = 5 is out of range [1, 4]");
  CHECK_THROWS_CONTAINING(autograd::topk_per_token(v1, 1),
                          "topk_per_token: expected 'probs' to have 2 dimensions");
  CHECK_THROWS_CONTAINING(autograd::topk_per_expert(probs, 2),
                          "topk_per_expert: expected 'probs' to have 3 dimensions");
  CHECK_THROWS_CONTAINING(autograd::topk_per_expert(Var(probs.data().view({1, 5, 4})), 6),
                          "topk_per_expert: capacity C = 6 is out of range [1, 5]");
  CHECK_THROWS_CONTAINING(autograd::permute_rows(v2, ids_tensor({2}, {1})),
                          "permute_rows: index 2 at position 0 is out of range [0, 2)");
  CHECK_THROWS_CONTAINING(
      autograd::permute_rows(Var(Tensor::scalar(1.0), true), ids_tensor({0}, {1})),
      "permute_rows: x must have a row dimension");
  Tensor rows = ids_tensor({0, 1}, {2});
  CHECK_THROWS_CONTAINING(
      autograd::combine_rows(v2, rows, Var(Tensor::ones({2}, DType::f64), true), 2),
      "combine_rows: gates must be f32");
  CHECK_THROWS_CONTAINING(autograd::combine_rows(v2, rows, Var(Tensor::ones({3}), true), 2),
                          "must have the same number of rows");
  CHECK_THROWS_CONTAINING(autograd::router_z_loss(v1),
                          "router_z_loss: expected 'logits' to have 2 dimensions");
  CHECK_THROWS_CONTAINING(autograd::load_balance_loss(probs, ids_tensor({0, 1}, {2}), 4),
                          "load_balance_stats: expert_ids i64[2] must be [T] or [T, k]");
  CHECK_THROWS_CONTAINING(autograd::load_balance_loss(v1, ids_tensor({0}, {1}), 4),
                          "load_balance_stats: expected 'probs' to have 2 dimensions");
  CHECK_THROWS_CONTAINING(autograd::dispatch_softmax(v2),
                          "dispatch_softmax: expected 'logits' to have 3 dimensions");
}
