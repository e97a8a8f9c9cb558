// MoE feed-forward layers (models/moe_token_choice.h, models/moe_expert_choice.h, models/experts.h)
// and the capacity index plans (kernels/capacity.h): shapes and parameter names, forwards against
// per-token references with explicit per-expert matrices, routing invariants, auxiliary losses,
// random routing, expert averaging, and module gradients by central differences in f64.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>

#include "autograd/ops.h"
#include "engine/philox.h"
#include "kernels/capacity.h"
#include "models/moe_expert_choice.h"
#include "models/moe_token_choice.h"
#include "models/params.h"
#include "tests/helpers.h"

using autograd::Var;
using engine::DType;
using engine::Tensor;
using models::Context;
using models::ParamSet;
using testing::randn;

namespace {

using Vec = std::vector<double>;

models::ExpertsConfig experts_cfg(int64_t D, int64_t H, int64_t E, bool bias = true) {
  models::ExpertsConfig c;
  c.dim = D;
  c.hidden = H;
  c.num_experts = E;
  c.bias = bias;
  return c;
}

models::TokenChoiceConfig tc_cfg(int64_t D, int64_t H, int64_t E, int64_t k) {
  models::TokenChoiceConfig c;
  c.experts = experts_cfg(D, H, E);
  c.k = k;
  return c;
}

models::ExpertChoiceConfig ec_cfg(int64_t D, int64_t H, int64_t E, int64_t group_size) {
  models::ExpertChoiceConfig c;
  c.experts = experts_cfg(D, H, E);
  c.group_size = group_size;
  return c;
}

Vec values(const ParamSet& ps, const std::string& name) {
  return ps.at(name).var.data().to_vector<double>();
}

double gelu_tanh(double v) {
  return 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
}

// The layer's maths written out per token from the stacked parameters (module = ParamSet root).
struct Ref {
  int64_t D, H, E;
  bool has_router_bias, has_bias;
  Vec rw, rb, w1, b1, w2, b2;
  Ref(const ParamSet& ps, int64_t D_, int64_t H_, int64_t E_) : D(D_), H(H_), E(E_) {
    has_router_bias = ps.contains("router.bias");
    has_bias = ps.contains("experts.fc1.bias");
    if (ps.contains("router.weight")) rw = values(ps, "router.weight");
    if (has_router_bias) rb = values(ps, "router.bias");
    w1 = values(ps, "experts.fc1.weight");
    w2 = values(ps, "experts.fc2.weight");
    if (has_bias) {
      b1 = values(ps, "experts.fc1.bias");
      b2 = values(ps, "experts.fc2.bias");
    }
  }
  Vec logits(const double* x) const {
    Vec l(size_t(E), 0.0);
    for (int64_t e = 0; e < E; ++e) {
      l[size_t(e)] = has_router_bias ? rb[size_t(e)] : 0.0;
      for (int64_t d = 0; d < D; ++d) l[size_t(e)] += rw[size_t(e * D + d)] * x[d];
    }
    return l;
  }
  Vec probs(const double* x) const {
    Vec l = logits(x), p(l.size());
    double m = *std::max_element(l.begin(), l.end()), s = 0;
    for (size_t e = 0; e < l.size(); ++e) s += (p[e] = std::exp(l[e] - m));
    for (double& v : p) v /= s;
    return p;
  }
  double lse(const double* x) const {
    Vec l = logits(x);
    double m = *std::max_element(l.begin(), l.end()), s = 0;
    for (double v : l) s += std::exp(v - m);
    return m + std::log(s);
  }
  Vec expert(int64_t e, const double* x) const {
    Vec h(static_cast<size_t>(H)), y(static_cast<size_t>(D));
    for (int64_t j = 0; j < H; ++j) {
      double a = has_bias ? b1[size_t(e * H + j)] : 0.0;
      for (int64_t d = 0; d < D; ++d) a += w1[size_t((e * H + j) * D + d)] * x[d];
      h[size_t(j)] = gelu_tanh(a);
    }
    for (int64_t d = 0; d < D; ++d) {
      double a = has_bias ? b2[size_t(e * D + d)] : 0.0;
      for (int64_t j = 0; j < H; ++j) a += w2[size_t((e * D + d) * H + j)] * h[size_t(j)];
      y[size_t(d)] = a;
    }
    return y;
  }
};

// Indices of v sorted by value descending, ties to the lower index.
std::vector<int64_t> order_desc(const Vec& v) {
  std::vector<int64_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return v[a] > v[b]; });
  return idx;
}

void scale_param(ParamSet& ps, const std::string& name, double s) {
  Tensor t = ps.at(name).var.data();
  auto v = values(ps, name);
  for (double& e : v) e *= s;
  t.copy_(Tensor::from_vector(v, t.shape(), t.dtype()));
}

void set_param(ParamSet& ps, const std::string& name, const Vec& v) {
  Tensor t = ps.at(name).var.data();
  t.copy_(Tensor::from_vector(v, t.shape(), t.dtype()));
}

// Central differences of loss = Σ out·proj + Σ aux losses w.r.t. every parameter element and
// every input element, against the analytic gradients (f64 parameters, fresh Context per call).
template <class M>
void check_module_gradients(const M& m, ParamSet& ps, const Tensor& x, bool training) {
  const Tensor proj = randn(x.shape(), 77, DType::f64);
  auto loss_of = [&](const Var& xv) {
    Context ctx(training, 5, 3);
    Var loss = autograd::sum_all(m.forward(xv, ctx) * Var(proj));
    Var aux = ctx.aux_loss_sum();
    return aux.defined() ? loss + aux : loss;
  };
  ps.zero_grad();
  Var xv(x.clone(), true);
  loss_of(xv).backward();
  const Vec gx = xv.grad().to_vector<double>();
  const Vec gp = ps.grad.to_vector<double>();
  auto numeric = [&](double* p) {
    autograd::NoGradGuard ng;
    const double eps = 1e-6, keep = *p;
    *p = keep + eps;
    const double lp = loss_of(Var(x)).item();
    *p = keep - eps;
    const double lm = loss_of(Var(x)).item();
    *p = keep;
    return (lp - lm) / (2 * eps);
  };
  double worst = 0;
  std::string where;
  auto compare = [&](double ana, double num, const std::string& what) {
    const double excess = std::abs(ana - num) - (1e-6 + 1e-4 * std::abs(num));
    if (excess > worst) {
      worst = excess;
      where = what + ": analytic " + std::to_string(ana) + " numeric " + std::to_string(num);
    }
  };
  double* pd = ps.data.data<double>();
  int64_t nonzero = 0;
  for (const auto& e : ps.entries())
    for (int64_t i = 0; i < e.shape.numel(); ++i) {
      const double num = numeric(pd + e.offset + i);
      nonzero += std::abs(num) > 1e-8;
      compare(gp[size_t(e.offset + i)], num, e.name + "[" + std::to_string(i) + "]");
    }
  Tensor xc = x;  // the Var(x) of loss_of shares this storage
  double* xd = xc.data<double>();
  for (int64_t i = 0; i < x.numel(); ++i) compare(gx[size_t(i)], numeric(xd + i), "x");
  INFO(where);
  CHECK(worst <= 0);
  CHECK(nonzero > ps.num_parameters() / 2);  // the check exercised real gradients
}

}  // namespace

// ---- experts and parameter layout ------------------------------------------------------------

TEST_CASE("moe/experts: stacked parameters have PyTorch-style names and shapes") {
  models::TokenChoiceMoE tc(tc_cfg(6, 7, 3, 1));
  std::map<std::string, engine::Shape> got;
  for (const auto& p : tc.parameters()) got[p.name] = p.shape;
  std::map<std::string, engine::Shape> want = {
      {"router.weight", {3, 6}},         {"router.bias", {3}},
      {"experts.fc1.weight", {3, 7, 6}}, {"experts.fc1.bias", {3, 7}},
      {"experts.fc2.weight", {3, 6, 7}}, {"experts.fc2.bias", {3, 6}}};
  CHECK(got == want);

  auto ecfg = ec_cfg(6, 7, 3, 2048);
  ecfg.experts.bias = false;
  models::ExpertChoiceMoE ec(ecfg);
  got.clear();
  for (const auto& p : ec.parameters()) got[p.name] = p.shape;
  want = {{"router.weight", {3, 6}},
          {"experts.fc1.weight", {3, 7, 6}},
          {"experts.fc2.weight", {3, 6, 7}}};
  CHECK(got == want);

  auto rr = tc_cfg(6, 7, 3, 1);
  rr.random_routing = true;
  models::TokenChoiceMoE rand_layer(rr);
  CHECK(rand_layer.router == nullptr);
  CHECK(rand_layer.num_parameters() == 3 * (2 * 6 * 7 + 7 + 6));
}

TEST_CASE("moe/experts: switch-ViT layer sizes reproduce the reference parameter counts") {
  // Per-layer difference between the 32-expert switch-ViT and the dense ViT of specs/switch_vit.md:
  // (238,732,426 - 12,798,490) / 12 = switch layer - dense MLP(300 -> 1024 -> 300).
  const int64_t E = 32, D = 300, H = 1024 - E / 2 + 2;
  models::TokenChoiceMoE layer(tc_cfg(D, H, E, 1));
  models::MLPConfig mc;
  mc.dim = D;
  mc.hidden = 1024;
  models::MLP dense(mc);
  CHECK((238732426 - 12798490) / 12 == layer.num_parameters() - dense.num_parameters());
  CHECK((238732426 - 12798490) % 12 == 0);
}

TEST_CASE("moe/token choice: output shape, active parameters and MACs per token") {
  const int64_t D = 6, H = 7, E = 3;
  for (int64_t k : {1, 2}) {
    models::TokenChoiceMoE m(tc_cfg(D, H, E, k));
    ParamSet ps(m, 1, DType::f32);
    Context ctx(true, 1, 0);
    Var y = m.forward(Var(randn({2, 5, D}, 1)), ctx);
    CHECK(y.shape() == engine::Shape{2, 5, D});
    const int64_t per_expert = D * H + H + H * D + D;
    CHECK(m.active_parameters() == D * E + E + k * per_expert);
    CHECK(m.macs_per_token() == doctest::Approx(double(D * E + k * 2 * D * H)));
  }
  auto rr = tc_cfg(D, H, E, 1);
  rr.random_routing = true;
  models::TokenChoiceMoE r(rr);
  CHECK(r.active_parameters() == D * H + H + H * D + D);
  CHECK(r.macs_per_token() == doctest::Approx(double(2 * D * H)));
}

// ---- token choice ----------------------------------------------------------------------------

TEST_CASE("moe/token choice: dropless forward equals a per-token reference") {
  const int64_t B = 2, N = 5, D = 6, H = 7, E = 3, T = B * N;
  for (bool normalize : {false, true}) {
    auto cfg = tc_cfg(D, H, E, 2);
    cfg.normalize_gates = normalize;
    models::TokenChoiceMoE m(cfg);
    ParamSet ps(m, 3, DType::f64);
    Ref ref(ps, D, H, E);
    Tensor x = randn({B, N, D}, 2, DType::f64);
    Context ctx(true, 1, 0);
    Tensor y = m.forward(Var(x), ctx).data();
    const Vec xv = x.to_vector<double>();
    Vec want(size_t(T * D), 0.0);
    for (int64_t t = 0; t < T; ++t) {
      const double* xt = xv.data() + t * D;
      Vec p = ref.probs(xt);
      auto top = order_desc(p);
      const double norm = normalize ? p[size_t(top[0])] + p[size_t(top[1])] : 1.0;
      for (int s = 0; s < 2; ++s) {
        Vec ye = ref.expert(top[size_t(s)], xt);
        for (int64_t d = 0; d < D; ++d)
          want[size_t(t * D + d)] += p[size_t(top[size_t(s)])] / norm * ye[size_t(d)];
      }
    }
    CHECK_CLOSE(y, Tensor::from_vector(want, {B, N, D}, DType::f64), 1e-10, 1e-12);
  }
}

TEST_CASE("moe/token choice: dropless routes every token exactly k times") {
  const int64_t D = 6, H = 5, E = 4, T = 23;
  for (int64_t k : {1, 2, 3}) {
    models::TokenChoiceMoE m(tc_cfg(D, H, E, k));
    ParamSet ps(m, 4, DType::f32);
    scale_param(ps, "router.weight", 4.0);
    Context ctx(true, 1, 0);
    models::TokenChoiceRouting r = m.route(Var(randn({T, D}, 3)), ctx);
    const auto rows = r.rows.to_vector<int64_t>(), experts = r.experts.to_vector<int64_t>();
    const auto ids = r.expert_ids.to_vector<int64_t>(), counts = r.counts.to_vector<int64_t>();
    REQUIRE(int64_t(rows.size()) == T * k);
    CHECK(r.dropped == 0);
    std::vector<std::set<int64_t>> seen(static_cast<size_t>(T));
    for (size_t j = 0; j < rows.size(); ++j) {
      seen[size_t(rows[j])].insert(experts[j]);
      if (j) CHECK(experts[j - 1] <= experts[j]);  // sorted by expert
    }
    for (int64_t t = 0; t < T; ++t) {
      std::set<int64_t> want(ids.begin() + t * k, ids.begin() + (t + 1) * k);
      CHECK(int64_t(want.size()) == k);  // k distinct experts
      CHECK(seen[size_t(t)] == want);    // routed to exactly those, once each
    }
    for (int64_t e = 0; e < E; ++e)
      CHECK(counts[size_t(e)] == std::count(experts.begin(), experts.end(), e));

    Context c2(true, 1, 0);
    m.forward(Var(randn({1, T, D}, 3)), c2);
    const models::MoEStats& st = c2.moe_stats.at("moe");
    CHECK(st.drop_rate == 0);
    for (int64_t e = 0; e < E; ++e)
      CHECK(st.load[size_t(e)] == doctest::Approx(double(counts[size_t(e)]) / double(T * k)));
  }
}

TEST_CASE(
    "moe/token choice: capacity mode drops exactly the overflow; dropped tokens pass through") {
  const int64_t B = 3, N = 7, D = 6, H = 5, E = 3, T = B * N;
  for (int64_t k : {1, 2}) {
    auto cfg = tc_cfg(D, H, E, k);
    cfg.mode = models::TokenChoiceConfig::Mode::capacity;
    cfg.capacity_factor = 1.0;
    models::TokenChoiceMoE m(cfg);
    ParamSet ps(m, 5, DType::f64);
    set_param(ps, "router.bias", {2.0, 1.0, -1.0});  // unbalanced: expert 0 overflows
    Ref ref(ps, D, H, E);
    Tensor x = randn({B, N, D}, 4, DType::f64);
    const Vec xv = x.to_vector<double>();
    CHECK(m.capacity(T) == int64_t(1.0 * T * k / E));

    Context rc(true, 9, 2);
    models::TokenChoiceRouting r = m.route(Var(x.reshape({T, D})), rc);
    const auto ids = r.expert_ids.to_vector<int64_t>();
    std::vector<int64_t> routed(size_t(E), 0);
    for (int64_t v : ids) routed[size_t(v)]++;
    int64_t overflow = 0;
    for (int64_t e = 0; e < E; ++e)
      overflow += std::max<int64_t>(0, routed[size_t(e)] - r.capacity);
    REQUIRE(overflow > 0);
    CHECK(r.dropped == overflow);
    const auto counts = r.counts.to_vector<int64_t>();
    for (int64_t e = 0; e < E; ++e)
      CHECK(counts[size_t(e)] == std::min(routed[size_t(e)], r.capacity));

    // Survivors: assignment ids t·k + s whose expert matches the router's choice.
    const auto perm = r.perm.to_vector<int64_t>(), rows = r.rows.to_vector<int64_t>();
    const auto experts = r.experts.to_vector<int64_t>();
    std::vector<int64_t> kept(size_t(T), 0);
    for (size_t j = 0; j < perm.size(); ++j) {
      CHECK(rows[j] == perm[j] / k);
      CHECK(experts[j] == ids[size_t(perm[j])]);
      kept[size_t(rows[j])]++;
    }
    std::vector<int64_t> unrouted;
    for (int64_t t = 0; t < T; ++t)
      if (!kept[size_t(t)]) unrouted.push_back(t);
    CHECK(r.unrouted.to_vector<int64_t>() == unrouted);
    if (k == 1) REQUIRE(!unrouted.empty());

    // The forward (same seed and step: the same drops) against the per-token reference.
    Context fc(true, 9, 2);
    Tensor y = m.forward(Var(x), fc).data();
    Vec want(size_t(T * D), 0.0);
    for (size_t j = 0; j < perm.size(); ++j) {
      const int64_t t = rows[j];
      Vec p = ref.probs(xv.data() + t * D);
      Vec ye = ref.expert(experts[j], xv.data() + t * D);
      for (int64_t d = 0; d < D; ++d)
        want[size_t(t * D + d)] += p[size_t(experts[j])] * ye[size_t(d)];
    }
    const Vec yv = y.to_vector<double>();
    for (int64_t t : unrouted)
      for (int64_t d = 0; d < D; ++d) {
        CHECK(yv[size_t(t * D + d)] == xv[size_t(t * D + d)]);  // exactly the input row
        want[size_t(t * D + d)] = xv[size_t(t * D + d)];
      }
    CHECK_CLOSE(y, Tensor::from_vector(want, {B, N, D}, DType::f64), 1e-10, 1e-12);
    CHECK(fc.moe_stats.at("moe").drop_rate == doctest::Approx(double(unrouted.size()) / T));

    // Another step drops other assignments (the drops are random, keyed by the step).
    bool differs = false;
    for (uint64_t step = 3; step < 8 && !differs; ++step) {
      Context oc(true, 9, step);
      differs = m.route(Var(x.reshape({T, D})), oc).perm.to_vector<int64_t>() != perm;
    }
    CHECK(differs);
  }
}

TEST_CASE("moe/token choice: module gradients match finite differences (dropless and capacity)") {
  const int64_t B = 2, N = 5, D = 6, H = 7, E = 3;
  for (auto mode :
       {models::TokenChoiceConfig::Mode::dropless, models::TokenChoiceConfig::Mode::capacity}) {
    auto cfg = tc_cfg(D, H, E, mode == models::TokenChoiceConfig::Mode::dropless ? 2 : 1);
    cfg.mode = mode;
    cfg.load_balance_weight = 0.3;
    cfg.z_loss_weight = 0.1;
    models::TokenChoiceMoE m(cfg);
    ParamSet ps(m, 6, DType::f64);
    scale_param(ps, "router.weight", 10.0);  // well-separated logits: no ties near the choice
    if (mode == models::TokenChoiceConfig::Mode::capacity)
      set_param(ps, "router.bias", {1.5, 0.0, -1.0});  // some tokens are dropped
    check_module_gradients(m, ps, randn({B, N, D}, 8, DType::f64), /*training=*/true);
  }
}

TEST_CASE("moe/token choice: load-balance and z losses equal plain-loop references") {
  const int64_t D = 6, H = 5, E = 4, T = 13;
  for (int64_t k : {1, 2}) {
    auto cfg = tc_cfg(D, H, E, k);
    cfg.load_balance_weight = 0.01;
    cfg.z_loss_weight = 1e-3;
    cfg.name = "blocks.3.mlp";
    models::TokenChoiceMoE m(cfg);
    ParamSet ps(m, 7, DType::f64);
    scale_param(ps, "router.weight", 3.0);
    Ref ref(ps, D, H, E);
    Tensor x = randn({1, T, D}, 9, DType::f64);
    const Vec xv = x.to_vector<double>();
    Vec f(size_t(E), 0.0), P(size_t(E), 0.0);
    double z = 0;
    for (int64_t t = 0; t < T; ++t) {
      Vec p = ref.probs(xv.data() + t * D);
      auto top = order_desc(p);
      for (int64_t s = 0; s < k; ++s) f[size_t(top[size_t(s)])] += 1.0 / double(T * k);
      for (int64_t e = 0; e < E; ++e) P[size_t(e)] += p[size_t(e)] / double(T);
      const double l = ref.lse(xv.data() + t * D);
      z += l * l / double(T);
    }
    double lb = 0;
    for (int64_t e = 0; e < E; ++e) lb += double(E) * f[size_t(e)] * P[size_t(e)];

    Context ctx(true, 1, 0);
    m.forward(Var(x), ctx);
    REQUIRE(ctx.aux_losses.size() == 2);
    CHECK(ctx.aux_losses[0].first == "blocks.3.mlp.load_balance");
    CHECK(ctx.aux_losses[0].second.item() == doctest::Approx(0.01 * lb).epsilon(1e-12));
    CHECK(ctx.aux_losses[1].first == "blocks.3.mlp.z_loss");
    CHECK(ctx.aux_losses[1].second.item() == doctest::Approx(1e-3 * z).epsilon(1e-12));
    const models::MoEStats& st = ctx.moe_stats.at("blocks.3.mlp");
    CHECK(st.aux_loss == doctest::Approx(lb).epsilon(1e-12));
    CHECK(st.z_loss == doctest::Approx(z).epsilon(1e-12));
    for (int64_t e = 0; e < E; ++e) CHECK(st.load[size_t(e)] == doctest::Approx(f[size_t(e)]));

    // Weight 0 turns a loss off (no entry), the statistics are still reported.
    cfg.load_balance_weight = 0;
    cfg.z_loss_weight = 0;
    models::TokenChoiceMoE off(cfg);
    ParamSet ps_off(off, 7, DType::f64);
    Context c2(true, 1, 0);
    off.forward(Var(x), c2);
    CHECK(c2.aux_losses.empty());
    CHECK(c2.moe_stats.at("blocks.3.mlp").aux_loss > 0);
  }
}

TEST_CASE("moe/token choice: expert dropout is keyed by the context's seed and step") {
  auto cfg = tc_cfg(6, 7, 3, 1);
  cfg.experts.dropout = 0.5;
  models::TokenChoiceMoE m(cfg);
  ParamSet ps(m, 1, DType::f32);
  Tensor x = randn({2, 5, 6}, 1);
  auto run = [&](bool training, uint64_t step) {
    Context ctx(training, 3, step);
    return m.forward(Var(x), ctx).data();
  };
  CHECK_CLOSE(run(true, 4), run(true, 4), 0, 0);
  CHECK(!testing::compare(run(true, 4), run(true, 5), 1e-3, 1e-3).ok);
  CHECK(!testing::compare(run(true, 4), run(false, 4), 1e-3, 1e-3).ok);
  CHECK_CLOSE(run(false, 4), run(false, 5), 0, 0);  // no dropout at inference
}

// ---- random routing and expert averaging -----------------------------------------------------

TEST_CASE("moe/random routing: all tokens go to one expert, the same in every layer of a step") {
  const int64_t D = 6, H = 5, E = 4, T = 7;
  Tensor x = randn({1, T, D}, 11, DType::f64);
  const Vec xv = x.to_vector<double>();
  for (bool per_layer : {false, true}) {
    std::vector<std::unique_ptr<models::TokenChoiceMoE>> layers;
    std::vector<std::unique_ptr<ParamSet>> sets;
    for (int64_t l = 0; l < 3; ++l) {
      auto cfg = tc_cfg(D, H, E, 1);
      cfg.random_routing = true;
      cfg.random_routing_per_layer = per_layer;
      cfg.layer_index = l;
      cfg.name = "layer" + std::to_string(l);
      layers.push_back(std::make_unique<models::TokenChoiceMoE>(cfg));
      sets.push_back(std::make_unique<ParamSet>(*layers.back(), 20 + l, DType::f64));
    }
    std::set<int64_t> drawn;
    bool layers_differ = false;
    for (uint64_t step = 0; step < 12; ++step) {
      Context ctx(true, 42, step);
      std::vector<int64_t> chosen;
      for (size_t l = 0; l < layers.size(); ++l) {
        Tensor y = layers[l]->forward(Var(x), ctx).data();
        const auto& load = ctx.moe_stats.at("layer" + std::to_string(l)).load;
        const int64_t e = int64_t(std::max_element(load.begin(), load.end()) - load.begin());
        CHECK(load[size_t(e)] == 1.0);
        CHECK(e == layers[l]->random_expert(ctx));
        chosen.push_back(e);
        Ref ref(*sets[l], D, H, E);
        Vec want;
        for (int64_t t = 0; t < T; ++t) {
          Vec ye = ref.expert(e, xv.data() + t * D);  // gate 1: the expert's output itself
          want.insert(want.end(), ye.begin(), ye.end());
        }
        CHECK_CLOSE(y, Tensor::from_vector(want, {1, T, D}, DType::f64), 1e-10, 1e-12);
      }
      if (!per_layer) CHECK(std::set<int64_t>(chosen.begin(), chosen.end()).size() == 1);
      layers_differ |= std::set<int64_t>(chosen.begin(), chosen.end()).size() > 1;
      drawn.insert(chosen[0]);
    }
    CHECK(drawn.size() > 1);  // a new draw each step
    CHECK(layers_differ == per_layer);
  }
}

TEST_CASE("moe/averaging: averaged weights are the experts' mean and load into a dense MLP") {
  const int64_t D = 6, H = 5, E = 3, T = 4;
  auto cfg = tc_cfg(D, H, E, 1);
  cfg.random_routing = true;
  models::TokenChoiceMoE m(cfg);
  ParamSet ps(m, 12, DType::f64);
  models::AveragedMLP avg = m.averaged_mlp();
  for (const char* role : {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}) {
    const Vec stacked = values(ps, std::string("experts.") + role);
    const int64_t per = int64_t(stacked.size()) / E;
    Vec mean(size_t(per), 0.0);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t i = 0; i < per; ++i) mean[size_t(i)] += stacked[size_t(e * per + i)] / E;
    REQUIRE(avg.tensors.count(role));
    CHECK(avg.tensors.at(role).numel() == per);
    CHECK_CLOSE(avg.tensors.at(role).reshape({per}), Tensor::from_vector(mean, {per}, DType::f64),
                1e-14, 1e-15);
  }
  CHECK(avg.tensors.at("fc1.weight").shape() == engine::Shape{H, D});
  CHECK(avg.tensors.at("fc2.weight").shape() == engine::Shape{D, H});

  models::MLP mlp(avg.config);
  ParamSet mps(mlp, 99, DType::f64);
  mps.load(avg.tensors, /*strict=*/true);
  Tensor x = randn({1, T, D}, 13, DType::f64);
  Context c1(false, 1, 0), c2(false, 1, 0);
  Tensor dense = mlp.forward(Var(x), c1).data();
  // At inference the random-routing layer computes this averaged MLP itself.
  CHECK_CLOSE(m.forward(Var(x), c2).data(), dense, 1e-12, 1e-13);
  // ... which is the plain MLP of the mean weights.
  const Vec w1 = avg.tensors.at("fc1.weight").to_vector<double>(),
            b1 = avg.tensors.at("fc1.bias").to_vector<double>();
  const Vec w2 = avg.tensors.at("fc2.weight").to_vector<double>(),
            b2 = avg.tensors.at("fc2.bias").to_vector<double>();
  const Vec xv = x.to_vector<double>();
  Vec want;
  for (int64_t t = 0; t < T; ++t) {
    Vec h(static_cast<size_t>(H));
    for (int64_t j = 0; j < H; ++j) {
      double a = b1[size_t(j)];
      for (int64_t d = 0; d < D; ++d) a += w1[size_t(j * D + d)] * xv[size_t(t * D + d)];
      h[size_t(j)] = gelu_tanh(a);
    }
    for (int64_t d = 0; d < D; ++d) {
      double a = b2[size_t(d)];
      for (int64_t j = 0; j < H; ++j) a += w2[size_t(d * H + j)] * h[size_t(j)];
      want.push_back(a);
    }
  }
  CHECK_CLOSE(dense, Tensor::from_vector(want, {1, T, D}, DType::f64), 1e-12, 1e-13);
  CHECK(models::with_prefix(avg.tensors, "blocks.2.mlp").count("blocks.2.mlp.fc2.bias") == 1);
}

TEST_CASE("moe/averaging: E identical experts average to the single MLP they copy") {
  const int64_t D = 6, H = 5, E = 4;
  models::MLPConfig mc;
  mc.dim = D;
  mc.hidden = H;
  models::MLP mlp(mc);
  ParamSet mps(mlp, 31, DType::f64);
  auto cfg = tc_cfg(D, H, E, 1);
  cfg.random_routing = true;
  models::TokenChoiceMoE m(cfg);
  ParamSet ps(m, 32, DType::f64);
  for (const char* role : {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}) {
    Tensor stacked = ps.at(std::string("experts.") + role).var.data();
    for (int64_t e = 0; e < E; ++e) stacked.select(0, e).copy_(mps.at(role).var.data());
  }
  Tensor x = randn({2, 3, D}, 14, DType::f64);
  Context c0(false, 1, 0);
  Tensor dense = mlp.forward(Var(x), c0).data();
  for (uint64_t step = 0; step < 3; ++step) {  // whichever expert is drawn
    Context c(true, 1, step);
    CHECK_CLOSE(m.forward(Var(x), c).data(), dense, 1e-12, 1e-13);
  }
  models::AveragedMLP avg = models::average_experts(*m.experts);
  for (const char* role : {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"})
    CHECK_CLOSE(avg.tensors.at(role), mps.at(role).var.data(), 1e-15, 1e-15);
  models::MLP back(avg.config);
  ParamSet bps(back, 5, DType::f64);
  bps.load(avg.tensors);
  Context c1(false, 1, 0);
  CHECK_CLOSE(back.forward(Var(x), c1).data(), dense, 1e-12, 1e-13);
}

// ---- expert choice ---------------------------------------------------------------------------

TEST_CASE("moe/expert choice: group count and capacity follow the spec") {
  models::ExpertChoiceMoE m(ec_cfg(6, 5, 3, 2048));
  CHECK(m.num_groups(6) == 1);
  CHECK(m.num_groups(2048) == 1);
  CHECK(m.num_groups(4096) == 2);
  CHECK(m.num_groups(2049) == 3);     // 2049 = 3 · 683
  CHECK(m.num_groups(5000) == 4);     // 1250 tokens per group (3 does not divide 5000)
  CHECK(m.num_groups(4099) == 4099);  // prime: groups of one token
  models::ExpertChoiceMoE s(ec_cfg(6, 5, 3, 4));
  CHECK(s.num_groups(10) == 5);
  CHECK(s.num_groups(8) == 2);
  CHECK(m.capacity(10) == 3);  // round(10 / 3)
  CHECK(m.capacity(11) == 4);  // round(3.67)
  auto c2 = ec_cfg(6, 5, 3, 2048);
  c2.capacity_factor = 2.0;
  CHECK(models::ExpertChoiceMoE(c2).capacity(10) == 7);
  c2.capacity_factor = 0.01;
  CHECK(models::ExpertChoiceMoE(c2).capacity(10) == 1);
  c2.capacity_factor = 100.0;
  CHECK(models::ExpertChoiceMoE(c2).capacity(10) == 10);
  const int64_t per_expert = 2 * 6 * 5 + 5 + 6;
  c2.capacity_factor = 2.0;
  models::ExpertChoiceMoE two(c2);
  CHECK(two.active_parameters() == 6 * 3 + 2 * per_expert);
  CHECK(two.macs_per_token() == doctest::Approx(6.0 * 3 + 2.0 * 2 * 6 * 5));
}

TEST_CASE("moe/expert choice: every expert takes exactly C tokens per group, its most probable") {
  const int64_t D = 6, H = 5, E = 3, T = 14;
  models::ExpertChoiceMoE m(ec_cfg(D, H, E, 7));
  ParamSet ps(m, 15, DType::f64);
  scale_param(ps, "router.weight", 50.0);
  Ref ref(ps, D, H, E);
  Tensor x = randn({T, D}, 16, DType::f64);
  const Vec xv = x.to_vector<double>();
  models::ExpertChoiceRouting r = m.route(Var(x));
  const int64_t G = r.groups, t = r.tokens_per_group, C = r.capacity;
  REQUIRE(G == 2);
  CHECK(t == 7);
  CHECK(C == 2);  // round(7 / 3)
  CHECK(r.token_ids.shape() == engine::Shape{G, E, C});
  const auto ids = r.token_ids.to_vector<int64_t>();
  for (int64_t g = 0; g < G; ++g)
    for (int64_t e = 0; e < E; ++e) {
      Vec col;
      for (int64_t i = 0; i < t; ++i)
        col.push_back(ref.probs(xv.data() + (g * t + i) * D)[size_t(e)]);
      auto order = order_desc(col);
      for (int64_t c = 0; c < C; ++c)
        CHECK(ids[size_t((g * E + e) * C + c)] == g * t + order[size_t(c)]);
    }
  // Sorted by expert: each owns G·C consecutive rows, group by group.
  CHECK(r.counts.to_vector<int64_t>() == std::vector<int64_t>(size_t(E), G * C));
  const auto rows = r.rows.to_vector<int64_t>(), experts = r.experts.to_vector<int64_t>();
  for (int64_t e = 0; e < E; ++e)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t c = 0; c < C; ++c) {
        const size_t j = size_t((e * G + g) * C + c);
        CHECK(rows[j] == ids[size_t((g * E + e) * C + c)]);
        CHECK(experts[j] == e);
      }
}

TEST_CASE("moe/expert choice: forward, z-loss and statistics equal per-token references") {
  const int64_t B = 2, N = 5, D = 6, H = 7, E = 3, T = B * N;
  for (int64_t group_size : {2048, 5}) {
    auto cfg = ec_cfg(D, H, E, group_size);
    cfg.z_loss_weight = 0.5;
    cfg.name = "enc.moe";
    models::ExpertChoiceMoE m(cfg);
    ParamSet ps(m, 17, DType::f64);
    scale_param(ps, "router.weight", 50.0);
    Ref ref(ps, D, H, E);
    Tensor x = randn({B, N, D}, 18, DType::f64);
    const Vec xv = x.to_vector<double>();
    const int64_t G = m.num_groups(T), t = T / G, C = m.capacity(t);
    Vec want(size_t(T * D), 0.0);
    std::vector<int> taken(size_t(T), 0);
    double z = 0;
    for (int64_t n = 0; n < T; ++n) {
      const double l = ref.lse(xv.data() + n * D);
      z += l * l / T;
    }
    for (int64_t g = 0; g < G; ++g)
      for (int64_t e = 0; e < E; ++e) {
        Vec col;
        for (int64_t i = 0; i < t; ++i)
          col.push_back(ref.probs(xv.data() + (g * t + i) * D)[size_t(e)]);
        auto order = order_desc(col);
        for (int64_t c = 0; c < C; ++c) {
          const int64_t n = g * t + order[size_t(c)];
          taken[size_t(n)] = 1;
          Vec ye = ref.expert(e, xv.data() + n * D);
          for (int64_t d = 0; d < D; ++d)
            want[size_t(n * D + d)] += col[size_t(order[size_t(c)])] * ye[size_t(d)];
        }
      }
    Context ctx(true, 1, 0);
    Tensor y = m.forward(Var(x), ctx).data();
    CHECK(y.shape() == engine::Shape{B, N, D});
    CHECK_CLOSE(y, Tensor::from_vector(want, {B, N, D}, DType::f64), 1e-10, 1e-12);
    const int untaken = int(std::count(taken.begin(), taken.end(), 0));
    REQUIRE(ctx.aux_losses.size() == 1);
    CHECK(ctx.aux_losses[0].first == "enc.moe.z_loss");
    CHECK(ctx.aux_losses[0].second.item() == doctest::Approx(0.5 * z).epsilon(1e-12));
    const models::MoEStats& st = ctx.moe_stats.at("enc.moe");
    CHECK(st.z_loss == doctest::Approx(z).epsilon(1e-12));
    CHECK(st.drop_rate == doctest::Approx(double(untaken) / T));
    for (double l : st.load) CHECK(l == doctest::Approx(1.0 / E));
  }
}

TEST_CASE("moe/expert choice: module gradients match finite differences") {
  const int64_t B = 2, N = 5, D = 6, H = 7, E = 3;
  for (int64_t group_size : {2048, 5}) {
    auto cfg = ec_cfg(D, H, E, group_size);
    models::ExpertChoiceMoE m(cfg);
    ParamSet ps(m, 19, DType::f64);
    scale_param(ps, "router.weight", 50.0);  // well-separated probabilities: no ties
    check_module_gradients(m, ps, randn({B, N, D}, 20, DType::f64), /*training=*/true);
  }
}

// ---- capacity plans (kernels/capacity.h) -----------------------------------------------------

TEST_CASE("moe/capacity: apply_capacity equals the reference and keeps a random subset") {
  const int64_t T = 61, k = 2, E = 5;
  std::vector<int64_t> ids;
  for (int64_t t = 0; t < T; ++t) {  // skewed: expert 0 is popular, expert 4 never used
    const uint32_t w = engine::philox_u32(3, 4, uint64_t(t));
    const int64_t a = (w % 3 == 0) ? 1 + int64_t(w >> 8) % 3 : 0;
    ids.push_back(a);
    ids.push_back(a == 0 ? 1 + int64_t(w >> 16) % 3 : 0);
  }
  Tensor expert_ids = Tensor::from_vector(ids, {T, k}, DType::i64);
  kernels::DispatchPlan plan = kernels::make_dispatch(expert_ids, E);
  const auto counts = plan.counts.to_vector<int64_t>();
  for (int64_t C : {0, 1, 7, 30, 1000}) {
    kernels::CapacityPlan c = kernels::cpu::apply_capacity(plan, C, 11, 12);
    kernels::CapacityPlan r = kernels::ref::apply_capacity(plan, C, 11, 12);
    CHECK(c.counts.to_vector<int64_t>() == r.counts.to_vector<int64_t>());
    CHECK(c.offsets.to_vector<int64_t>() == r.offsets.to_vector<int64_t>());
    CHECK(c.perm.to_vector<int64_t>() == r.perm.to_vector<int64_t>());
    CHECK(c.rows.to_vector<int64_t>() == r.rows.to_vector<int64_t>());
    CHECK(c.experts.to_vector<int64_t>() == r.experts.to_vector<int64_t>());
    CHECK(c.dropped == r.dropped);
    int64_t overflow = 0;
    for (int64_t e = 0; e < E; ++e) overflow += std::max<int64_t>(0, counts[size_t(e)] - C);
    CHECK(c.dropped == overflow);
    // A subsequence of the plan: same order, each kept id with its expert and token.
    const auto perm = plan.perm.to_vector<int64_t>(), kept = c.perm.to_vector<int64_t>();
    size_t j = 0;
    for (int64_t a : kept) {
      while (j < perm.size() && perm[j] != a) ++j;
      CHECK(j < perm.size());
    }
    const auto kr = c.rows.to_vector<int64_t>(), ke = c.experts.to_vector<int64_t>();
    for (size_t i = 0; i < kept.size(); ++i) {
      CHECK(kr[i] == kept[i] / k);
      CHECK(ke[i] == ids[size_t(kept[i])]);
    }
  }
  // Uniform over the overflowing expert's assignments: over many keys, each is kept about C/n
  // of the time; the same key always keeps the same ones.
  const int64_t C = 5, n = counts[0];
  REQUIRE(n > 2 * C);
  std::map<int64_t, int> hits;
  const int trials = 400;
  for (int s = 0; s < trials; ++s) {
    auto kept =
        kernels::cpu::apply_capacity(plan, C, 11, uint64_t(100 + s)).perm.to_vector<int64_t>();
    for (int64_t a : kept)
      if (ids[size_t(a)] == 0) hits[a]++;
  }
  const double expect = double(trials) * C / n;
  CHECK(int64_t(hits.size()) == n);
  for (const auto& [a, h] : hits) CHECK(std::abs(h - expect) < 5 * std::sqrt(expect));
  CHECK(kernels::apply_capacity(plan, C, 11, 7).perm.to_vector<int64_t>() ==
        kernels::apply_capacity(plan, C, 11, 7).perm.to_vector<int64_t>());
  CHECK_THROWS_CONTAINING(kernels::cpu::apply_capacity(plan, -1, 1, 1), "capacity must be >= 0");
  kernels::DispatchPlan bad = plan;
  bad.offsets = Tensor::zeros({E + 1}, DType::i64);
  CHECK_THROWS_CONTAINING(kernels::cpu::apply_capacity(bad, 3, 1, 1), "apply_capacity: offsets");
}

TEST_CASE("moe/capacity: unnamed_rows lists the rows no entry names") {
  Tensor rows = Tensor::from_vector<int64_t>({3, 1, 3, 6}, {4}, DType::i64);
  CHECK(kernels::cpu::unnamed_rows(rows, 8).to_vector<int64_t>() ==
        std::vector<int64_t>{0, 2, 4, 5, 7});
  Tensor many = Tensor::from_vector<int32_t>({9, 0, 4, 4, 2, 11, 9}, {7}, DType::i32);
  CHECK(kernels::cpu::unnamed_rows(many, 12).to_vector<int64_t>() ==
        kernels::ref::unnamed_rows(many, 12).to_vector<int64_t>());
  CHECK(kernels::cpu::unnamed_rows(Tensor::zeros({0}, DType::i64), 3).to_vector<int64_t>() ==
        std::vector<int64_t>{0, 1, 2});
  CHECK_THROWS_CONTAINING(kernels::cpu::unnamed_rows(rows, 5), "unnamed_rows: index 6");
}

// ---- errors ----------------------------------------------------------------------------------

TEST_CASE("moe: bad configurations and inputs give clear errors") {
  CHECK_THROWS_CONTAINING(models::TokenChoiceMoE(tc_cfg(6, 7, 3, 4)),
                          "k must be in [1, num_experts = 3]");
  CHECK_THROWS_CONTAINING(models::TokenChoiceMoE(tc_cfg(6, 7, 3, 0)), "k must be in");
  auto cap = tc_cfg(6, 7, 3, 1);
  cap.mode = models::TokenChoiceConfig::Mode::capacity;
  cap.capacity_factor = 0;
  CHECK_THROWS_CONTAINING(models::TokenChoiceMoE(cap), "capacity_factor must be > 0");
  auto rr = tc_cfg(6, 7, 3, 2);
  rr.random_routing = true;
  CHECK_THROWS_CONTAINING(models::TokenChoiceMoE(rr), "random routing");
  auto ec = ec_cfg(6, 7, 3, 2048);
  ec.capacity_factor = -1;
  CHECK_THROWS_CONTAINING(models::ExpertChoiceMoE(ec), "capacity_factor must be > 0");
  ec = ec_cfg(6, 7, 3, 0);
  CHECK_THROWS_CONTAINING(models::ExpertChoiceMoE(ec), "group_size must be >= 1");
  auto drop = tc_cfg(6, 7, 3, 1);
  drop.experts.dropout = 1.0;
  CHECK_THROWS_CONTAINING(models::TokenChoiceMoE(drop), "dropout must be in [0, 1)");
  CHECK_THROWS_CONTAINING(models::TokenChoiceMoE(tc_cfg(6, 0, 3, 1)), "Experts: dim, hidden");

  models::TokenChoiceMoE t(tc_cfg(6, 7, 3, 1));
  ParamSet ps(t, 1);
  Context ctx(true, 1, 0);
  CHECK_THROWS_CONTAINING(t.forward(Var(randn({2, 5, 4}, 1)), ctx),
                          "TokenChoiceMoE(moe): input must be [B, N, 6], got f32[2, 5, 4]");
  models::ExpertChoiceMoE e(ec_cfg(6, 7, 3, 2048));
  ParamSet pe(e, 1);
  CHECK_THROWS_CONTAINING(e.forward(Var(randn({10, 6}, 1)), ctx),
                          "ExpertChoiceMoE(moe): input must be [B, N, 6]");
  models::TokenChoiceMoE fresh(tc_cfg(6, 7, 3, 1));
  CHECK_THROWS_CONTAINING(fresh.averaged_mlp(), "average_experts: the experts have no weights");
}
