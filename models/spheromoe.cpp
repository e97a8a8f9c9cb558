#include "models/spheromoe.h"

#include <algorithm>

#include "autograd/concat.h"
#include "autograd/dropout.h"
#include "autograd/entmax.h"
#include "autograd/l2norm.h"
#include "autograd/matmul.h"
#include "autograd/reduce.h"
#include "autograd/routing.h"
#include "autograd/views.h"
#include "engine/error.h"

namespace models {

StackedLinear::StackedLinear(int64_t e, int64_t in, int64_t out, Init weight_init)
    : Module("StackedLinear"), experts(e), in_features(in), out_features(out) {
  ENGINE_CHECK(e > 0 && in > 0 && out > 0, "StackedLinear: sizes must be positive, got experts=",
               e, " in=", in, " out=", out);
  weight = param("weight", {e, out, in}, weight_init, true);
  bias = param("bias", {e, out}, Init::zeros(), false);
}

Var StackedLinear::forward(const Var& x) const {
  ENGINE_CHECK(x.dim() == 3 && x.size(0) == experts && x.size(2) == in_features,
               "StackedLinear(", experts, " x ", in_features, " -> ", out_features, "): input ",
               x.data().describe(), " must be [experts, rows, in]");
  Var y = autograd::bmm(x, weight, false, true);  // [E, R, out]
  return autograd::add(y, autograd::reshape(bias, {experts, 1, out_features}));
}

StackedExperts::StackedExperts(int64_t e, int64_t d, int64_t h, Init init)
    : Module("StackedExperts"), experts(e), dim(d), hidden(h) {
  fc1 = child("fc1", std::make_shared<StackedLinear>(e, d, h, init));
  fc2 = child("fc2", std::make_shared<StackedLinear>(e, h, d, init));
}

Var StackedExperts::forward(const Var& x, double p, autograd::GeluApprox gelu,
                            Context& ctx) const {
  Var h = autograd::gelu(fc1->forward(x), gelu);
  if (ctx.training && p > 0) h = autograd::dropout(h, p, ctx.rng_seed(), ctx.next_stream());
  Var y = fc2->forward(h);
  if (ctx.training && p > 0) y = autograd::dropout(y, p, ctx.rng_seed(), ctx.next_stream());
  return y;
}

SpheroMoE::SpheroMoE(const SpheroMoEConfig& c) : FeedForward("SpheroMoE"), cfg(c) {
  ENGINE_CHECK(cfg.dim > 0, "SpheroMoE: dim must be positive, got ", cfg.dim);
  ENGINE_CHECK(cfg.core_experts >= 0 && cfg.univ_experts >= 0 && num_experts() > 0,
               "SpheroMoE: needs at least one expert, got core_experts=", cfg.core_experts,
               " univ_experts=", cfg.univ_experts);
  ENGINE_CHECK(cfg.slots_per_expert > 0, "SpheroMoE: slots_per_expert must be positive, got ",
               cfg.slots_per_expert);
  ENGINE_CHECK(cfg.expert_dropout >= 0 && cfg.expert_dropout < 1,
               "SpheroMoE: expert_dropout must be in [0, 1), got ", cfg.expert_dropout);
  ENGINE_CHECK(cfg.drop_path >= 0 && cfg.drop_path < 1,
               "SpheroMoE: drop_path must be in [0, 1), got ", cfg.drop_path);
  ENGINE_CHECK(cfg.tau_init > 0, "SpheroMoE: tau_init must be positive, got ", cfg.tau_init);
  if (cfg.core_hidden == 0) cfg.core_hidden = int64_t(cfg.mlp_ratio * double(cfg.dim) + 0.5);
  if (cfg.univ_hidden == 0) cfg.univ_hidden = std::max<int64_t>(1, cfg.core_hidden / 4);
  ENGINE_CHECK(cfg.core_hidden > 0 && cfg.univ_hidden > 0,
               "SpheroMoE: hidden widths must be positive, got core_hidden=", cfg.core_hidden,
               " univ_hidden=", cfg.univ_hidden);

  phi = param("phi", {num_slots(), cfg.dim}, Init::orthogonal(), true);
  tau_dispatch = param("tau_dispatch", {1}, Init::constant(cfg.tau_init), false);
  tau_combine = param("tau_combine", {1}, Init::constant(cfg.tau_init), false);
  phi_norm = child("phi_norm", std::make_shared<LayerNorm>(cfg.dim, true, cfg.norm_eps));
  if (cfg.core_experts > 0)
    core = child("core", std::make_shared<StackedExperts>(cfg.core_experts, cfg.dim,
                                                          cfg.core_hidden, cfg.init));
  if (cfg.univ_experts > 0)
    univ = child("univ", std::make_shared<StackedExperts>(cfg.univ_experts, cfg.dim,
                                                          cfg.univ_hidden, cfg.init));
}

SpheroRouting SpheroMoE::routing(const Var& x, Context& ctx) const {
  ENGINE_CHECK(x.dim() == 3 && x.size(2) == cfg.dim, "SpheroMoE(dim ", cfg.dim,
               "): input must be [B, N, ", cfg.dim, "], got ", x.data().describe());
  ENGINE_CHECK(x.size(0) > 0 && x.size(1) > 0, "SpheroMoE: empty input ", x.data().describe());
  const int64_t B = x.size(0), N = x.size(1), M = num_slots();
  Var k = autograd::l2_normalize(x, cfg.l2_eps);                                  // [B, N, D]
  Var q = autograd::l2_normalize(phi_norm->forward(phi), cfg.l2_eps);             // [M, D]
  SpheroRouting r;
  r.logits = autograd::matmul(k, q, false, true);                                 // [B, N, M]
  Var ld = autograd::div(r.logits, tau_dispatch);
  Var lc = autograd::div(r.logits, tau_combine);
  if (ctx.training && cfg.noise) {
    // One draw, added to both logits: the same perturbation of the routing for D and C.
    Tensor noise = Tensor::normal({B, N, M}, ctx.rng_seed(), ctx.next_stream(), 0.0,
                                  1.0 / double(num_experts()), x.dtype());
    if (!x.device().is_cpu()) noise = noise.to(x.device());
    ld = autograd::add(ld, Var(noise));
    lc = autograd::add(lc, Var(noise));
  }
  r.dispatch = autograd::dispatch_softmax(ld);
  r.combine = autograd::entmax15(lc);
  return r;
}

Var SpheroMoE::experts_forward(const Var& slots, Context& ctx) const {
  const int64_t B = slots.size(0), S = cfg.slots_per_expert, D = cfg.dim;
  ENGINE_CHECK(slots.dim() == 3 && slots.size(1) == num_slots() && slots.size(2) == D,
               "SpheroMoE: slots ", slots.data().describe(), " must be [B, ", num_slots(), ", ",
               D, "]");
  Var s4 = autograd::reshape(slots, {B, num_experts(), S, D});
  // One path: its experts' slots as [E_path, B·S, D] (expert-major, one batched GEMM), and back.
  auto run = [&](const StackedExperts& path, int64_t first) {
    const int64_t E = path.experts;
    Var xs = autograd::narrow(s4, 1, first, E);                                  // [B, E, S, D]
    xs = autograd::reshape(autograd::permute(xs, {1, 0, 2, 3}), {E, B * S, D});
    Var ys = path.forward(xs, cfg.expert_dropout, cfg.gelu, ctx);               // [E, B·S, D]
    return autograd::permute(autograd::reshape(ys, {E, B, S, D}), {1, 0, 2, 3});  // [B, E, S, D]
  };
  std::vector<Var> parts;
  if (core) parts.push_back(run(*core, 0));
  if (univ) parts.push_back(run(*univ, cfg.core_experts));
  Var y = parts.size() == 1 ? parts[0] : autograd::concat(parts, 1);
  return autograd::reshape(y, {B, num_slots(), D});
}

Var SpheroMoE::forward(const Var& x, Context& ctx) const {
  SpheroRouting r = routing(x, ctx);
  Var slots = autograd::bmm(r.dispatch, x, true, false);  // [B, M, D] = Dᵀ·x (x, not k)
  Var y = experts_forward(slots, ctx);
  Var out = autograd::bmm(r.combine, y);                   // [B, N, D]
  if (!cfg.stats_name.empty()) {
    // Load = the share of the combine mass each expert receives (soft MoE never drops tokens).
    autograd::NoGradGuard ng;
    const int64_t E = num_experts();
    Var c = autograd::reshape(r.combine.detach(), {x.size(0) * x.size(1), E, cfg.slots_per_expert});
    std::vector<double> mass = autograd::sum(autograd::sum(c, 2), 0).data().to_vector<double>();
    double total = 0;
    for (double v : mass) total += v;
    MoEStats st;
    for (double v : mass) st.load.push_back(total > 0 ? v / total : 0.0);
    ctx.moe_stats[cfg.stats_name] = std::move(st);
  }
  return drop_path(out, cfg.drop_path, ctx);
}

double SpheroMoE::macs_per_token_for(int64_t n) const {
  ENGINE_CHECK(n > 0, "SpheroMoE::macs_per_token_for: token count must be positive, got ", n);
  const double D = double(cfg.dim), M = double(num_slots()), S = double(cfg.slots_per_expert);
  const double expert_macs = S * (double(cfg.core_experts) * 2.0 * D * double(cfg.core_hidden) +
                                  double(cfg.univ_experts) * 2.0 * D * double(cfg.univ_hidden));
  return 3.0 * M * D + expert_macs / double(n);
}

}  // namespace models
