#include "models/moe_token_choice.h"

#include <cmath>
#include <vector>

#include "autograd/elementwise.h"
#include "autograd/reduce.h"
#include "autograd/views.h"
#include "engine/error.h"
#include "engine/philox.h"
#include "kernels/capacity.h"

namespace models {
namespace {

// Stream of the random-routing draw: far above the per-op streams ctx.next_stream() hands out, and
// fixed, so every layer of a step draws the same expert (per-layer draws add the layer index).
constexpr uint64_t kRandomRoutingStream = 0x52414E44524F5554ull;  // "RANDROUT"

Tensor on_device(const Tensor& t, const engine::Device& dev) {
  return dev.is_cpu() ? t : t.to(dev);
}

}  // namespace

TokenChoiceMoE::TokenChoiceMoE(const TokenChoiceConfig& c) : FeedForward("TokenChoiceMoE"), cfg(c) {
  const int64_t E = cfg.experts.num_experts;
  ENGINE_CHECK(E > 0, "TokenChoiceMoE: num_experts must be positive, got ", E);
  ENGINE_CHECK(cfg.k >= 1 && cfg.k <= E, "TokenChoiceMoE: k must be in [1, num_experts = ", E,
               "], got k=", cfg.k);
  ENGINE_CHECK(cfg.mode != TokenChoiceConfig::Mode::capacity || cfg.capacity_factor > 0,
               "TokenChoiceMoE: capacity_factor must be > 0, got ", cfg.capacity_factor);
  ENGINE_CHECK(cfg.load_balance_weight >= 0 && cfg.z_loss_weight >= 0,
               "TokenChoiceMoE: loss weights must be >= 0, got load_balance_weight=",
               cfg.load_balance_weight, " z_loss_weight=", cfg.z_loss_weight);
  ENGINE_CHECK(!cfg.random_routing || cfg.k == 1,
               "TokenChoiceMoE: random routing sends each token to one expert (k must be 1, got ",
               cfg.k, ")");
  ENGINE_CHECK(cfg.layer_index >= 0, "TokenChoiceMoE: layer_index must be >= 0, got ",
               cfg.layer_index);
  if (!cfg.random_routing)
    router = child("router",
                   std::make_shared<Linear>(cfg.experts.dim, E, cfg.router_bias, cfg.router_init));
  experts = child("experts", std::make_shared<Experts>(cfg.experts));
}

int64_t TokenChoiceMoE::capacity(int64_t T) const {
  const double c =
      cfg.capacity_factor * double(T) * double(cfg.k) / double(cfg.experts.num_experts);
  return std::max<int64_t>(1, static_cast<int64_t>(c));  // int() as the reference; at least 1
}

int64_t TokenChoiceMoE::random_expert(const Context& ctx) const {
  const uint64_t stream =
      kRandomRoutingStream + (cfg.random_routing_per_layer ? 1 + uint64_t(cfg.layer_index) : 0);
  uint64_t word = 0;
  return int64_t(engine::philox_detail::bounded(ctx.rng_seed(), stream, &word,
                                                uint64_t(cfg.experts.num_experts)));
}

TokenChoiceRouting TokenChoiceMoE::route(const Var& x, Context& ctx) const {
  ENGINE_CHECK(router != nullptr, "TokenChoiceMoE(", cfg.name,
               "): route() needs a router (random routing has none)");
  ENGINE_CHECK(x.dim() == 2 && x.size(1) == cfg.experts.dim, "TokenChoiceMoE(", cfg.name,
               "): tokens must be [T, ", cfg.experts.dim, "], got ", x.data().describe());
  const int64_t T = x.size(0), E = cfg.experts.num_experts;
  TokenChoiceRouting r;
  // The router statistics (softmax, top-k, losses) are fp32 kernels; for f32/f64 models the
  // logits GEMM is in the model's precision too.
  r.logits = router->forward(x);
  r.probs = autograd::router_softmax(r.logits);
  autograd::TokenChoiceVar tc = autograd::topk_per_token(r.probs, cfg.k);
  r.gates = tc.gates;
  if (cfg.normalize_gates && cfg.k > 1)
    r.gates = autograd::div(r.gates, autograd::sum(r.gates, 1, /*keepdim=*/true));
  r.expert_ids = tc.expert_ids;
  r.plan = kernels::make_dispatch(tc.expert_ids, E);
  if (cfg.mode == TokenChoiceConfig::Mode::capacity) {
    r.capacity = capacity(T);
    kernels::CapacityPlan cp =
        kernels::apply_capacity(r.plan, r.capacity, ctx.rng_seed(), ctx.next_stream());
    r.counts = cp.counts;
    r.perm = cp.perm;
    r.rows = cp.rows;
    r.experts = cp.experts;
    r.dropped = cp.dropped;
    r.unrouted = kernels::unnamed_rows(cp.rows, T);
  } else {
    r.counts = r.plan.counts;
    r.perm = r.plan.perm;
    r.rows = r.plan.rows;
    r.experts = kernels::permute_rows(tc.expert_ids.reshape({T * cfg.k}), r.plan.perm);
  }
  return r;
}

Var TokenChoiceMoE::forward(const Var& x, Context& ctx) const {
  ENGINE_CHECK(x.dim() == 3 && x.size(2) == cfg.experts.dim, "TokenChoiceMoE(", cfg.name,
               "): input must be [B, N, ", cfg.experts.dim, "], got ", x.data().describe());
  const int64_t B = x.size(0), N = x.size(1), T = B * N, D = cfg.experts.dim;
  const int64_t E = cfg.experts.num_experts;
  const engine::Device dev = x.data().device();
  Var xf = autograd::reshape(x, {T, D});
  MoEStats stats;
  Var out;

  if (cfg.random_routing) {
    if (!ctx.training) {
      out = experts->forward_averaged(xf);
      stats.load.assign(size_t(E), 1.0 / double(E));
    } else {
      // Every token to one expert with gate 1: one grouped matmul with a single non-empty group.
      const int64_t e = random_expert(ctx);
      std::vector<int64_t> counts(size_t(E), 0);
      counts[size_t(e)] = T;
      Tensor cnt = on_device(Tensor::from_vector(counts, {E}, DType::i64), dev);
      Tensor row_experts = on_device(Tensor::full({T}, double(e), DType::i64), dev);
      out = experts->forward(xf, cnt, row_experts, ctx);
      stats.load.assign(size_t(E), 0.0);
      stats.load[size_t(e)] = 1.0;
    }
    ctx.moe_stats[cfg.name] = stats;
    return autograd::reshape(out, {B, N, D});
  }

  TokenChoiceRouting r = route(xf, ctx);
  Var xs = autograd::permute_rows(xf, r.rows);
  Var gs = autograd::permute_rows(autograd::reshape(r.gates, {T * cfg.k}), r.perm);
  Var ys = experts->forward(xs, r.counts, r.experts, ctx);
  out = autograd::combine_rows(ys, r.rows, gs, T);
  const int64_t P = r.unrouted.defined() ? r.unrouted.numel() : 0;
  if (P > 0) {
    // Dropped tokens: the FFN output is the input row itself (gate 1, gradient straight to x).
    Var ones(on_device(Tensor::ones({P}, r.gates.dtype()), dev));
    out = out + autograd::combine_rows(autograd::permute_rows(xf, r.unrouted), r.unrouted, ones, T);
  }

  autograd::LoadBalanceVar lb = autograd::load_balance_loss(r.probs, r.expert_ids, E);
  Var z = autograd::router_z_loss(r.logits);
  if (cfg.load_balance_weight > 0)
    ctx.aux_losses.emplace_back(cfg.name + ".load_balance", lb.loss * cfg.load_balance_weight);
  if (cfg.z_loss_weight > 0)
    ctx.aux_losses.emplace_back(cfg.name + ".z_loss", z * cfg.z_loss_weight);

  stats.load = lb.f.to_vector<double>();
  stats.drop_rate = double(P) / double(T);
  stats.aux_loss = lb.loss.item();
  stats.z_loss = z.item();
  ctx.moe_stats[cfg.name] = stats;
  return autograd::reshape(out, {B, N, D});
}

int64_t TokenChoiceMoE::active_parameters() const {
  if (cfg.random_routing) return experts->parameters_per_expert();
  return router->in_features * router->out_features + (cfg.router_bias ? router->out_features : 0) +
         cfg.k * experts->parameters_per_expert();
}

double TokenChoiceMoE::macs_per_token() const {
  const double router_macs =
      cfg.random_routing ? 0.0 : double(cfg.experts.dim) * double(cfg.experts.num_experts);
  return router_macs + double(cfg.k) * experts->macs_per_expert_token();
}

}  // namespace models
