// Switch / token-choice top-k MoE feed-forward (switch-ViT; the token-choice ablation of IMP).
//
//   logits = router(x) [T, E] (T = B·N tokens, Linear(D, E), fp32), probs = softmax(logits)
//   each token picks its k most probable experts; out[t] = Σ_s probs[t, e_s] · expert_{e_s}(x[t])
// Modes:
//   dropless (default): every assignment is computed; the grouped matmul takes any counts.
//   capacity: each expert takes at most C = int(capacity_factor · T·k / E) (at least 1)
//     assignments; those over capacity are dropped at random (kernels/capacity.h, Philox keyed by
//     ctx.rng_seed() and ctx.next_stream()). A token none of whose assignments survived passes
//     through unchanged: its output row is its input row (as the reference switch-ViT).
// Auxiliary losses, pushed into ctx.aux_losses already weighted (weight 0 = off):
//   "<name>.load_balance" = α · E · Σ_e f_e P_e (f from the router's choices before any drop),
//   "<name>.z_loss" = w · mean_t logsumexp(logits_t)².
// Statistics into ctx.moe_stats[name]: load (the router's assignment fractions f), drop_rate
// (fraction of tokens no expert processed), unweighted loss values.
//
// Random routing (switch-ViT's AdaMix-inspired variant): no router parameters. In training each
// step draws one expert uniformly and every token goes to it with gate 1. The draw is keyed by
// ctx.rng_seed() and a fixed stream, so by default every layer of a step draws the same expert;
// with random_routing_per_layer the stream also depends on layer_index. At inference
// (ctx.training false) the layer computes the expert-averaged MLP (what average_experts gives).
#pragma once
#include <string>

#include "autograd/routing.h"
#include "kernels/routing.h"
#include "models/experts.h"

namespace models {

struct TokenChoiceConfig {
  ExpertsConfig experts;  // dim, hidden, num_experts, bias, dropout, gelu, init
  int64_t k = 1;          // experts per token (1 = Switch)
  bool router_bias = true;
  Init router_init = Init::xavier_uniform();
  bool normalize_gates = false;  // divide the k gates of a token by their sum (k > 1)
  enum class Mode { dropless, capacity };
  Mode mode = Mode::dropless;
  double capacity_factor = 1.0;       // capacity mode only
  double load_balance_weight = 0.01;  // α (Switch Transformer); 0 = off
  double z_loss_weight = 0.0;         // router z-loss coefficient (e.g. 1e-3); 0 = off
  bool random_routing = false;
  bool random_routing_per_layer = false;
  int64_t layer_index = 0;      // keys per-layer random draws
  std::string name = "moe";     // key of ctx.moe_stats and prefix of the aux-loss names
};

// The routing decisions of one forward pass (exposed for tests and analysis tools).
struct TokenChoiceRouting {
  Var logits, probs;         // [T, E] fp32 (f64 for f64 models); undefined under random routing
  Var gates;                 // [T, k] chosen probabilities (normalised when configured)
  Tensor expert_ids;         // i64 [T, k] the router's choices (before any drop)
  kernels::DispatchPlan plan;  // of expert_ids (the router's per-expert counts)
  // What is computed: assignments sorted by expert after capacity drops.
  Tensor counts;    // i64 [E]
  Tensor perm;      // i64 [K] assignment ids (t·k + s)
  Tensor rows;      // i64 [K] token rows
  Tensor experts;   // i64 [K] expert of each row
  Tensor unrouted;  // i64 [P] tokens with no surviving assignment (pass through); capacity mode
  int64_t capacity = 0;  // capacity mode only
  int64_t dropped = 0;   // assignments dropped
};

class TokenChoiceMoE : public FeedForward {
 public:
  explicit TokenChoiceMoE(const TokenChoiceConfig& cfg);
  Var forward(const Var& x, Context& ctx) const override;
  // Router, selection and capacity plan for x [T, D] (consumes the capacity stream of ctx).
  TokenChoiceRouting route(const Var& x, Context& ctx) const;
  // The expert index a random-routing layer uses in the step of ctx.
  int64_t random_expert(const Context& ctx) const;
  // Router + k experts (1 expert and no router under random routing).
  int64_t active_parameters() const override;
  double macs_per_token() const override;
  // Capacity per expert for T tokens (capacity mode).
  int64_t capacity(int64_t num_tokens) const;
  // The expert-averaged dense MLP (see models/experts.h).
  AveragedMLP averaged_mlp() const { return average_experts(*experts); }

  TokenChoiceConfig cfg;
  std::shared_ptr<Linear> router;  // null under random routing
  std::shared_ptr<Experts> experts;
};

}  // namespace models
