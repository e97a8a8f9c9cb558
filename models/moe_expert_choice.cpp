#include "models/moe_expert_choice.h"

#include <algorithm>
#include <cmath>

#include "autograd/views.h"
#include "engine/error.h"
#include "kernels/capacity.h"
#include "kernels/routing.h"

namespace models {
namespace {
Tensor on_device(const Tensor& t, const engine::Device& dev) {
  return dev.is_cpu() ? t : t.to(dev);
}
}  // namespace

ExpertChoiceMoE::ExpertChoiceMoE(const ExpertChoiceConfig& c)
    : FeedForward("ExpertChoiceMoE"), cfg(c) {
  ENGINE_CHECK(cfg.experts.num_experts > 0, "ExpertChoiceMoE: num_experts must be positive, got ",
               cfg.experts.num_experts);
  ENGINE_CHECK(cfg.capacity_factor > 0, "ExpertChoiceMoE: capacity_factor must be > 0, got ",
               cfg.capacity_factor);
  ENGINE_CHECK(cfg.group_size >= 1, "ExpertChoiceMoE: group_size must be >= 1, got ",
               cfg.group_size);
  ENGINE_CHECK(cfg.z_loss_weight >= 0, "ExpertChoiceMoE: z_loss_weight must be >= 0, got ",
               cfg.z_loss_weight);
  router = child("router", std::make_shared<Linear>(cfg.experts.dim, cfg.experts.num_experts,
                                                    /*bias=*/false, cfg.router_init));
  experts = child("experts", std::make_shared<Experts>(cfg.experts));
}

int64_t ExpertChoiceMoE::num_groups(int64_t T) const {
  ENGINE_CHECK(T >= 1, "ExpertChoiceMoE(", cfg.name, "): no tokens to route");
  for (int64_t G = (T + cfg.group_size - 1) / cfg.group_size; G < T; ++G)
    if (T % G == 0) return G;
  return T;
}

int64_t ExpertChoiceMoE::capacity(int64_t t) const {
  const double c = std::round(cfg.capacity_factor * double(t) / double(cfg.experts.num_experts));
  return std::min<int64_t>(t, std::max<int64_t>(1, static_cast<int64_t>(c)));
}

ExpertChoiceRouting ExpertChoiceMoE::route(const Var& x) const {
  ENGINE_CHECK(x.dim() == 2 && x.size(1) == cfg.experts.dim, "ExpertChoiceMoE(", cfg.name,
               "): tokens must be [T, ", cfg.experts.dim, "], got ", x.data().describe());
  const int64_t T = x.size(0), E = cfg.experts.num_experts;
  const engine::Device dev = x.data().device();
  ExpertChoiceRouting r;
  r.groups = num_groups(T);
  r.tokens_per_group = T / r.groups;
  r.capacity = capacity(r.tokens_per_group);
  const int64_t G = r.groups, t = r.tokens_per_group, C = r.capacity;
  r.logits = router->forward(x);
  r.probs = autograd::router_softmax(r.logits);
  autograd::ExpertChoiceVar ec =
      autograd::topk_per_expert(autograd::reshape(r.probs, {G, t, E}), C);
  r.gates = ec.gates;
  r.token_ids = ec.token_ids;
  Var flat_gates = autograd::reshape(ec.gates, {G * E * C});
  Tensor flat_ids = ec.token_ids.reshape({G * E * C});
  if (G == 1) {  // [1, E, C] is already expert-major
    r.rows = flat_ids;
    r.sorted_gates = flat_gates;
  } else {
    // Slots [G, E, C] hold their expert; a stable sort by it gives expert-major order.
    Tensor slot_experts =
        on_device(Tensor::arange(E).view({1, E, 1}).expand({G, E, C}).contiguous(), dev);
    kernels::DispatchPlan plan = kernels::make_dispatch(slot_experts.reshape({G * E * C}), E);
    r.rows = kernels::permute_rows(flat_ids, plan.perm);
    r.sorted_gates = autograd::permute_rows(flat_gates, plan.perm);
  }
  r.counts = on_device(Tensor::full({E}, double(G * C), DType::i64), dev);
  r.experts = on_device(
      Tensor::arange(E).view({E, 1}).expand({E, G * C}).contiguous().reshape({E * G * C}), dev);
  return r;
}

Var ExpertChoiceMoE::forward(const Var& x, Context& ctx) const {
  ENGINE_CHECK(x.dim() == 3 && x.size(2) == cfg.experts.dim, "ExpertChoiceMoE(", cfg.name,
               "): input must be [B, N, ", cfg.experts.dim, "], got ", x.data().describe());
  const int64_t B = x.size(0), N = x.size(1), T = B * N, D = cfg.experts.dim;
  const int64_t E = cfg.experts.num_experts;
  Var xf = autograd::reshape(x, {T, D});
  ExpertChoiceRouting r = route(xf);
  Var xs = autograd::permute_rows(xf, r.rows);
  Var ys = experts->forward(xs, r.counts, r.experts, ctx);
  Var out = autograd::combine_rows(ys, r.rows, r.sorted_gates, T);

  Var z = autograd::router_z_loss(r.logits);
  if (cfg.z_loss_weight > 0)
    ctx.aux_losses.emplace_back(cfg.name + ".z_loss", z * cfg.z_loss_weight);
  MoEStats stats;
  stats.load.assign(size_t(E), 1.0 / double(E));
  stats.drop_rate = double(kernels::unnamed_rows(r.rows, T).numel()) / double(T);
  stats.z_loss = z.item();
  ctx.moe_stats[cfg.name] = stats;
  return autograd::reshape(out, {B, N, D});
}

// A token is processed by E·C·G/T ≈ capacity_factor experts on average (at most E).
int64_t ExpertChoiceMoE::active_parameters() const {
  const double per_token = std::min(cfg.capacity_factor, double(cfg.experts.num_experts));
  return cfg.experts.dim * cfg.experts.num_experts +
         std::llround(per_token * double(experts->parameters_per_expert()));
}

double ExpertChoiceMoE::macs_per_token() const {
  const double per_token = std::min(cfg.capacity_factor, double(cfg.experts.num_experts));
  return double(cfg.experts.dim) * double(cfg.experts.num_experts) +
         per_token * experts->macs_per_expert_token();
}

}  // namespace models
