// SpheroMoE (MoE Jetpack, specs/spheromoe.md): a dual-path soft MoE with hyperspherical routing.
//
// x [B, N, D] (the block's LN2 output), E = E_core + E_univ experts with S slots each, M = E·S:
//   k = l2norm(x), q = l2norm(LN(phi))                       phi [M, D] slot queries
//   L = k·qᵀ [B, N, M];  Ld = L / tau_d + noise,  Lc = L / tau_c + noise   (one noise draw)
//   D = softmax over tokens N of Ld;  C = entmax-1.5 over the M slots of Lc
//   slots = Dᵀ·x [B, M, D];  core experts (hidden H_core) on the first E_core·S slots, universal
//   experts (hidden H_univ) on the rest;  out = C · concat(y_core, y_univ) [B, N, D]
// then drop-path over the whole branch per example.
//
// Slot m belongs to expert m / S. The experts of a path are stored stacked ([E, out, in] weights,
// PyTorch-like names `core.fc1.weight`, `univ.fc2.bias`) and run as one batched GEMM with the
// expert as the batch: [E, B·S, D] · [E, D, H].
//
// Temperatures are used as learned directly, not clamped: they start at 0.5 and the cosine
// logits are bounded, so a temperature that drifts towards 0 only sharpens the routing; keeping
// it positive is the optimizer's job (no weight decay on them, as in the reference).
//
// Dtypes: f32 and f64 (gradient checks). bf16 needs a cast op between the fp32 routing weights
// and the bf16 expert outputs, which autograd does not have yet.
#pragma once
#include "models/layers.h"

namespace models {

struct SpheroMoEConfig {
  int64_t dim = 0;
  int64_t core_experts = 0, univ_experts = 0;  // either may be 0, not both
  int64_t slots_per_expert = 1;
  double mlp_ratio = 4.0;
  int64_t core_hidden = 0;  // 0: mlp_ratio · dim
  int64_t univ_hidden = 0;  // 0: core_hidden / 4 (a quarter of the core width)
  bool noise = true;        // N(0, (1/E)²) logit noise in training
  double expert_dropout = 0.4;  // inside every expert, after GELU and after the second linear
  double drop_path = 0.0;       // on the whole MoE branch output, per example
  double tau_init = 0.5;
  double norm_eps = 1e-6;       // LayerNorm of phi
  double l2_eps = 1e-6;         // l2norm of tokens and slot queries
  autograd::GeluApprox gelu = autograd::GeluApprox::tanh;  // as MLPConfig, so recycling matches
  Init init = Init::xavier_uniform();  // expert weights (each expert its own fans)
  int64_t flops_tokens = 197;  // the token count macs_per_token() assumes (ViT/16 at 224 + CLS)
  // When not empty, forward records routing statistics in ctx.moe_stats[stats_name].
  std::string stats_name;
};

// E stacked linear maps: x [E, R, in] -> x · W[e]ᵀ + b[e], weight [E, out, in], bias [E, out].
class StackedLinear : public Module {
 public:
  StackedLinear(int64_t experts, int64_t in, int64_t out, Init weight_init);
  Var forward(const Var& x) const;
  int64_t experts, in_features, out_features;
  Var weight, bias;
};

// E stacked expert MLPs (fc1 → GELU → dropout → fc2 → dropout) on x [E, R, D] -> [E, R, D].
class StackedExperts : public Module {
 public:
  StackedExperts(int64_t experts, int64_t dim, int64_t hidden, Init init);
  Var forward(const Var& x, double dropout, autograd::GeluApprox gelu, Context& ctx) const;
  int64_t experts, dim, hidden;
  std::shared_ptr<StackedLinear> fc1, fc2;
};

// The routing of one forward pass, each [B, N, M].
struct SpheroRouting {
  Var logits;    // L: cosine similarities (before temperature and noise)
  Var dispatch;  // D: softmax over the tokens (each column sums to 1 over N)
  Var combine;   // C: entmax-1.5 over the slots (each row sums to 1 over M, sparse)
};

class SpheroMoE : public FeedForward {
 public:
  explicit SpheroMoE(const SpheroMoEConfig& cfg);
  Var forward(const Var& x, Context& ctx) const override;
  // The routing weights for x [B, N, D]; draws the noise stream (training with noise on), so a
  // forward is routing + experts_forward + combine with the same draws.
  SpheroRouting routing(const Var& x, Context& ctx) const;
  // slots [B, M, D] -> every slot through its expert, [B, M, D].
  Var experts_forward(const Var& slots, Context& ctx) const;

  // Soft MoE sends every token's mixture through every expert, so every parameter is active.
  int64_t active_parameters() const override { return num_parameters(); }
  // GEMM MACs per token for examples of n tokens: the routing logits, dispatch and combine
  // (3·M·D each) plus the experts' work on the B·M slots spread over the n tokens.
  double macs_per_token_for(int64_t n) const;
  double macs_per_token() const override { return macs_per_token_for(cfg.flops_tokens); }

  int64_t num_experts() const { return cfg.core_experts + cfg.univ_experts; }
  int64_t num_slots() const { return num_experts() * cfg.slots_per_expert; }

  SpheroMoEConfig cfg;
  Var phi;                          // [M, D], orthogonal init
  std::shared_ptr<LayerNorm> phi_norm;
  Var tau_dispatch, tau_combine;    // [1], no weight decay
  std::shared_ptr<StackedExperts> core, univ;  // null when that path has no experts
};

}  // namespace models
