// Differentiable MoE routing (kernels/routing.h). Routing decisions (expert ids, token ids, the
// dispatch plan, load-balance fractions f) are plain tensors: they carry no gradient, and the
// gradient flows through the gate values and the permuted / combined rows.
//
// A token-choice MoE layer (x [T, D], logits [T, E], top-k):
//   Var probs = router_softmax(logits);                              [T, E] fp32
//   TokenChoiceVar tc = topk_per_token(probs, k);                    gates [T, k]
//   kernels::DispatchPlan plan = kernels::make_dispatch(tc.expert_ids, E);
//   Var xs = permute_rows(x, plan.rows);                             [T·k, D] sorted by expert
//   Var gs = permute_rows(flatten(tc.gates), plan.perm);             gates in sorted order
//   Var ys = grouped_matmul(xs, w, plan.counts);                     (the experts)
//   Var out = combine_rows(ys, plan.rows, gs, T);                    [T, D]
// plus router_z_loss(logits) and load_balance_loss(probs, tc.expert_ids, E).loss as auxiliary
// losses. Expert choice: topk_per_expert(probs [G, t, E], C) gives token_ids and gates
// [G, E, C]; for G = 1 rows = token_ids.flatten(), for G > 1 sort the slots by expert with
// make_dispatch as described in kernels/routing.h.
//
// Dtypes follow the kernels: router statistics are f32 for f32/bf16 inputs and f64 for f64
// inputs; gates of combine_rows must be f32 for f32/bf16 y and f64 for f64 y. Every input's
// gradient has that input's dtype and shape.
#pragma once
#include <cstdint>

#include "autograd/var.h"

namespace autograd {

struct TokenChoiceVar {
  Var gates;          // [T, k], probs' dtype: the probabilities of the chosen experts
  Tensor expert_ids;  // i64 [T, k], per token its k experts in the topk order
};

struct ExpertChoiceVar {
  Var gates;         // [G, E, C], probs' dtype
  Tensor token_ids;  // i64 [G, E, C]: global token rows g·t + i
};

struct LoadBalanceVar {
  Var loss;  // 0-d: E · Σ_e f_e · P_e
  Tensor f;  // [E] fraction of assignments per expert (a constant of the routing)
  Tensor P;  // [E] mean router probability per expert
};

// Softmax over the experts of logits [T, E].
Var router_softmax(const Var& logits);
// The k most probable experts per token; gradient: the gate gradients scattered back to the
// chosen experts' probabilities.
TokenChoiceVar topk_per_token(const Var& probs, int64_t k);
// probs [G, t, E] -> per group and expert the `capacity` most probable tokens; gradient: each
// gate gradient back to its token's probability.
ExpertChoiceVar topk_per_expert(const Var& probs, int64_t capacity);
// x [N, ...], rows [A] -> [A, ...] with out[j] = x[rows[j]]; gradient: rows summed back
// (repeated rows accumulate, unnamed rows get zero).
Var permute_rows(const Var& x, const Tensor& rows);
// y [A, ...], rows [A] in [0, num_rows), gates [A] -> [num_rows, ...]:
// out[n] = Σ_{j: rows[j] = n} gates[j]·y[j]. Gradients to y and gates.
Var combine_rows(const Var& y, const Tensor& rows, const Var& gates, int64_t num_rows);
// Mean over tokens of logsumexp(logits[t, :])² (0-d).
Var router_z_loss(const Var& logits);
// Switch load balance of probs [T, E] and expert_ids [T, k] (or [T]). The gradient flows
// through P only: f counts discrete assignments.
LoadBalanceVar load_balance_loss(const Var& probs, const Tensor& expert_ids, int64_t num_experts);
// SpheroMoE dispatch weights: logits [B, N, S] -> softmax over the token axis N.
Var dispatch_softmax(const Var& logits);

}  // namespace autograd
