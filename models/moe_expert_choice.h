// Expert-Choice MoE feed-forward (IMP; Zhou et al. 2022).
//
//   logits = router(x) [T, E] (T = B·N tokens; Linear(D, E) without bias, init N(0, 0.02), fp32)
//   probs = softmax over experts, viewed as [G, t, E]: G groups of t = T / G tokens, G the
//     smallest divisor of T with t <= group_size (2048 in IMP)
//   C = round(capacity_factor · t / E) clamped to [1, t]
//   each expert takes its C most probable tokens of every group (topk_per_expert);
//   out[n] = Σ over the (expert, slot) pairs that took token n of gate · expert(x[n]),
//   0 for a token no expert took (the block's residual carries it).
// Auxiliary loss "<name>.z_loss" = w · mean_t logsumexp(logits_t)² (w = 1.0 in IMP) into
// ctx.aux_losses; statistics into ctx.moe_stats[name]: load (1/E each: every expert processes
// exactly G·C tokens), drop_rate (fraction of tokens no expert took), z_loss (unweighted).
#pragma once
#include <string>

#include "autograd/routing.h"
#include "models/experts.h"

namespace models {

struct ExpertChoiceConfig {
  ExpertsConfig experts;  // dim, hidden, num_experts, bias, dropout, gelu, init
  double capacity_factor = 1.0;
  int64_t group_size = 2048;  // most tokens per routing group
  Init router_init = Init::normal(0.02);
  double z_loss_weight = 1.0;  // 0 = off
  std::string name = "moe";    // key of ctx.moe_stats and prefix of the aux-loss name
};

// The routing decisions of one forward pass (exposed for tests and analysis tools).
struct ExpertChoiceRouting {
  int64_t groups = 0, tokens_per_group = 0, capacity = 0;  // G, t, C
  Var logits, probs;  // [T, E]
  Var gates;          // [G, E, C]
  Tensor token_ids;   // i64 [G, E, C] global token rows g·t + i
  // Slots sorted by expert (expert-major, then group, then topk order): what is computed.
  Tensor rows;        // i64 [E·G·C] token rows
  Var sorted_gates;   // [E·G·C]
  Tensor counts;      // i64 [E], G·C each
  Tensor experts;     // i64 [E·G·C]
};

class ExpertChoiceMoE : public FeedForward {
 public:
  explicit ExpertChoiceMoE(const ExpertChoiceConfig& cfg);
  Var forward(const Var& x, Context& ctx) const override;
  // Router and selection for x [T, D].
  ExpertChoiceRouting route(const Var& x) const;
  // G for T tokens: the smallest divisor of T with T / G <= group_size.
  int64_t num_groups(int64_t num_tokens) const;
  // C for groups of t tokens.
  int64_t capacity(int64_t tokens_per_group) const;
  // Router + capacity_factor experts' worth (the average number of experts per token, E·C·G/T,
  // up to rounding).
  int64_t active_parameters() const override;
  double macs_per_token() const override;
  AveragedMLP averaged_mlp() const { return average_experts(*experts); }

  ExpertChoiceConfig cfg;
  std::shared_ptr<Linear> router;
  std::shared_ptr<Experts> experts;
};

}  // namespace models
