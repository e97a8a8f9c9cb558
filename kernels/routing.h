// MoE routing: router probabilities, token-choice and expert-choice selection, the dispatch plan
// that sorts assignments by expert, row gather / weighted combine, the auxiliary losses, and the
// SpheroMoE dispatch softmax (over tokens). entmax-1.5 (the SpheroMoE combine) is in
// kernels/entmax.h, drop-token in kernels/drop_token.h.
//
// How an MoE layer uses them (token choice, x [T, D], E experts, top-k):
//   probs = router_softmax(logits)                    [T, E] fp32
//   tc    = topk_per_token(probs, k)                  expert_ids / gates [T, k]
//   plan  = make_dispatch(tc.expert_ids, E)           counts, offsets, perm, rows  (A = T·k)
//   xs    = permute_rows(x, plan.rows)                [A, D], rows of expert e contiguous
//   gs    = permute_rows(tc.gates.flatten(), plan.perm)   gates in sorted order
//   ys    = grouped_matmul(xs, w, plan.counts)        kernels/grouped_matmul.h
//   out   = combine_rows(ys, plan.rows, gs, T)        [T, D]
// Expert choice (probs [G, t, E] by groups of t tokens, capacity C): ec = topk_per_expert(probs, C)
// gives token_ids (global rows g·t + i) and gates [G, E, C]; for G = 1 they are already sorted by
// expert (rows = ec.token_ids.flatten()); for G > 1, plan = make_dispatch(the slot experts, [G, E, C]
// holding e, flattened to [G·E·C], E) gives the expert-major order: rows = permute_rows(ec.token_ids.flatten(),
// plan.perm), gates likewise (every expert then owns G·C rows).
// Backward: combine_rows_backward (d ys, d gs), permute_rows_backward (d x, d gates through perm),
// topk_per_token_backward / topk_per_expert_backward (d gates -> d probs), router_softmax_backward.
//
// Conventions shared by every op here:
// - Router statistics are computed in fp32: f32 or bf16 inputs give f32 outputs; f64 inputs give
//   f64 outputs (CPU, for gradient checks). Backward outputs have the dtype of the incoming
//   gradient.
// - Index inputs are i64 or i32 (outputs are i64); every index is checked, and an out-of-range
//   one throws naming the op, the index, its position and the valid range.
// - Orders are total, so every backend returns the same ids bit for bit: values descending,
//   NaN above every number, -0 == +0, ties to the lower index (the rule of kernels/topk.h).
// - Sums that gather several rows into one (combine_rows, permute_rows_backward) add the
//   contributions of an output row in increasing source-row order, without float atomics, so
//   results are reproducible run to run on every backend.
// CUDA versions take contiguous tensors on kernels::cuda::device() (f32/bf16; f64 is CPU-only).
#pragma once
#include <cstdint>

#include "kernels/backend.h"

namespace kernels {

struct TokenChoice {
  Tensor expert_ids;  // i64 [T, k]: per token, its k experts in the topk order
  Tensor gates;       // [T, k]: the probabilities of those experts (probs' dtype)
};

struct ExpertChoice {
  Tensor token_ids;  // i64 [G, E, C]: per group and expert, global token rows g·t + i, topk order
  Tensor gates;      // [G, E, C]: probs[g, i, e] of those tokens (probs' dtype)
};

// A stable counting sort of assignments by expert. Assignment a is element a of expert_ids in
// row-major order; for expert_ids [T, k] it belongs to token a / k (for [A], k = 1).
struct DispatchPlan {
  Tensor counts;   // i64 [E]: assignments per expert
  Tensor offsets;  // i64 [E + 1]: exclusive prefix sum of counts (offsets[E] = A)
  Tensor perm;     // i64 [A]: perm[j] = the assignment at sorted position j; within an expert,
                   // assignments keep their original order
  Tensor rows;     // i64 [A]: rows[j] = perm[j] / k, the token (row of x) of sorted position j
};

struct CombineGrads {
  Tensor dy;      // [A, ...] (y's dtype): dy[j] = gates[j] · dout[rows[j]]
  Tensor dgates;  // [A] (gates' dtype): dgates[j] = <y[j], dout[rows[j]]>
};

// Switch-Transformer load balance: f_e = (assignments to e) / (T·k) (sums to 1), P_e = mean over
// tokens of probs[:, e], loss = E · Σ_e f_e · P_e (1 when routing and probabilities are uniform).
struct LoadBalance {
  Tensor f;     // [E]
  Tensor P;     // [E]
  Tensor loss;  // 0-d
};

namespace cpu {
// Softmax over the experts of logits [T, E].
Tensor router_softmax(const Tensor& logits);
// dlogits = p · (g - Σ_e g·p) per token.
Tensor router_softmax_backward(const Tensor& g, const Tensor& probs);
// probs [T, E] -> the k best experts per token (1 <= k <= E).
TokenChoice topk_per_token(const Tensor& probs, int64_t k);
// dgates [T, k] -> dprobs [T, E]: dprobs[t, expert_ids[t, s]] += dgates[t, s], zero elsewhere.
Tensor topk_per_token_backward(const Tensor& dgates, const Tensor& expert_ids, int64_t num_experts);
// probs [G, t, E] -> per group and expert the C tokens of largest probability (1 <= C <= t).
ExpertChoice topk_per_expert(const Tensor& probs, int64_t capacity);
// dgates [G, E, C] -> dprobs [G, t, E] (tokens_per_group = t): dprobs[g, i, e] = dgates[g, e, c]
// where token_ids[g, e, c] = g·t + i (each token in group g's range), zero elsewhere.
Tensor topk_per_expert_backward(const Tensor& dgates, const Tensor& token_ids,
                                int64_t tokens_per_group);
// expert_ids [A] or [T, k] with values in [0, num_experts).
DispatchPlan make_dispatch(const Tensor& expert_ids, int64_t num_experts);
// x [N, ...] (any dtype), rows [A] in [0, N) -> [A, ...]: out[j] = x[rows[j]].
Tensor permute_rows(const Tensor& x, const Tensor& rows);
// g [A, ...], rows [A] -> [N, ...]: out[n] = Σ_{j: rows[j] = n} g[j] (zero for unnamed rows).
Tensor permute_rows_backward(const Tensor& g, const Tensor& rows, int64_t num_rows);
// y [A, ...], rows [A] in [0, T), gates [A] -> [T, ...]: out[t] = Σ_{j: rows[j] = t} gates[j]·y[j].
// gates are f32 for f32/bf16 y, f64 for f64 y; the output has y's dtype (fp32 accumulation).
Tensor combine_rows(const Tensor& y, const Tensor& rows, const Tensor& gates, int64_t num_rows);
CombineGrads combine_rows_backward(const Tensor& dout, const Tensor& y, const Tensor& rows,
                                   const Tensor& gates);
// mean over tokens of logsumexp(logits[t, :])², a 0-d tensor.
Tensor router_z_loss(const Tensor& logits);
// g (0-d, the loss gradient) -> dlogits [T, E] = g · 2·lse_t / T · softmax(logits)_t.
Tensor router_z_loss_backward(const Tensor& g, const Tensor& logits);
// probs [T, E], expert_ids [T, k] (or [T]) -> f, P and the loss (see LoadBalance).
LoadBalance load_balance_stats(const Tensor& probs, const Tensor& expert_ids, int64_t num_experts);
// g (0-d) and f [E] -> dprobs [T, E] = g · E · f_e / T (f is a constant of the routing).
Tensor load_balance_backward(const Tensor& g, const Tensor& f, int64_t num_tokens);
// SpheroMoE dispatch weights: L [B, N, S] -> softmax over the token axis N for every (b, slot).
Tensor dispatch_softmax(const Tensor& logits);
// dL = y · (g - Σ_n g·y) over the token axis.
Tensor dispatch_softmax_backward(const Tensor& g, const Tensor& y);
}  // namespace cpu

// Plain f64 loops for the tests (float results are f64 tensors, ids i64).
namespace ref {
Tensor router_softmax(const Tensor& logits);
Tensor router_softmax_backward(const Tensor& g, const Tensor& probs);
TokenChoice topk_per_token(const Tensor& probs, int64_t k);
Tensor topk_per_token_backward(const Tensor& dgates, const Tensor& expert_ids, int64_t num_experts);
ExpertChoice topk_per_expert(const Tensor& probs, int64_t capacity);
Tensor topk_per_expert_backward(const Tensor& dgates, const Tensor& token_ids,
                                int64_t tokens_per_group);
DispatchPlan make_dispatch(const Tensor& expert_ids, int64_t num_experts);
Tensor permute_rows(const Tensor& x, const Tensor& rows);
Tensor permute_rows_backward(const Tensor& g, const Tensor& rows, int64_t num_rows);
Tensor combine_rows(const Tensor& y, const Tensor& rows, const Tensor& gates, int64_t num_rows);
CombineGrads combine_rows_backward(const Tensor& dout, const Tensor& y, const Tensor& rows,
                                   const Tensor& gates);
Tensor router_z_loss(const Tensor& logits);
Tensor router_z_loss_backward(const Tensor& g, const Tensor& logits);
LoadBalance load_balance_stats(const Tensor& probs, const Tensor& expert_ids, int64_t num_experts);
Tensor load_balance_backward(const Tensor& g, const Tensor& f, int64_t num_tokens);
Tensor dispatch_softmax(const Tensor& logits);
Tensor dispatch_softmax_backward(const Tensor& g, const Tensor& y);
}  // namespace ref

// The handwritten kernels (kernels/cuda/routing.cu). Limits: router_softmax / z-loss /
// topk_per_token handle E <= 256 experts (a sub-warp or warp per token, values in registers);
// topk_per_expert handles t <= 16384 tokens per group (one block sorts a group's column in
// shared memory). Index checks cost one 8-byte device-to-host copy per call.
namespace cuda {
Tensor router_softmax(const Tensor& logits);
Tensor router_softmax_backward(const Tensor& g, const Tensor& probs);
TokenChoice topk_per_token(const Tensor& probs, int64_t k);
Tensor topk_per_token_backward(const Tensor& dgates, const Tensor& expert_ids, int64_t num_experts);
ExpertChoice topk_per_expert(const Tensor& probs, int64_t capacity);
Tensor topk_per_expert_backward(const Tensor& dgates, const Tensor& token_ids,
                                int64_t tokens_per_group);
DispatchPlan make_dispatch(const Tensor& expert_ids, int64_t num_experts);
Tensor permute_rows(const Tensor& x, const Tensor& rows);
Tensor permute_rows_backward(const Tensor& g, const Tensor& rows, int64_t num_rows);
Tensor combine_rows(const Tensor& y, const Tensor& rows, const Tensor& gates, int64_t num_rows);
CombineGrads combine_rows_backward(const Tensor& dout, const Tensor& y, const Tensor& rows,
                                   const Tensor& gates);
Tensor router_z_loss(const Tensor& logits);
Tensor router_z_loss_backward(const Tensor& g, const Tensor& logits);
LoadBalance load_balance_stats(const Tensor& probs, const Tensor& expert_ids, int64_t num_experts);
Tensor load_balance_backward(const Tensor& g, const Tensor& f, int64_t num_tokens);
Tensor dispatch_softmax(const Tensor& logits);
Tensor dispatch_softmax_backward(const Tensor& g, const Tensor& y);
}  // namespace cuda

inline Tensor router_softmax(const Tensor& logits) {
  KERNEL_ROUTE(logits.device(), router_softmax, logits);
}
inline Tensor router_softmax_backward(const Tensor& g, const Tensor& probs) {
  KERNEL_ROUTE(g.device(), router_softmax_backward, g, probs);
}
inline TokenChoice topk_per_token(const Tensor& probs, int64_t k) {
  KERNEL_ROUTE(probs.device(), topk_per_token, probs, k);
}
inline Tensor topk_per_token_backward(const Tensor& dgates, const Tensor& expert_ids,
                                      int64_t num_experts) {
  KERNEL_ROUTE(dgates.device(), topk_per_token_backward, dgates, expert_ids, num_experts);
}
inline ExpertChoice topk_per_expert(const Tensor& probs, int64_t capacity) {
  KERNEL_ROUTE(probs.device(), topk_per_expert, probs, capacity);
}
inline Tensor topk_per_expert_backward(const Tensor& dgates, const Tensor& token_ids,
                                       int64_t tokens_per_group) {
  KERNEL_ROUTE(dgates.device(), topk_per_expert_backward, dgates, token_ids, tokens_per_group);
}
inline DispatchPlan make_dispatch(const Tensor& expert_ids, int64_t num_experts) {
  KERNEL_ROUTE(expert_ids.device(), make_dispatch, expert_ids, num_experts);
}
inline Tensor permute_rows(const Tensor& x, const Tensor& rows) {
  KERNEL_ROUTE(x.device(), permute_rows, x, rows);
}
inline Tensor permute_rows_backward(const Tensor& g, const Tensor& rows, int64_t num_rows) {
  KERNEL_ROUTE(g.device(), permute_rows_backward, g, rows, num_rows);
}
inline Tensor combine_rows(const Tensor& y, const Tensor& rows, const Tensor& gates,
                           int64_t num_rows) {
  KERNEL_ROUTE(y.device(), combine_rows, y, rows, gates, num_rows);
}
inline CombineGrads combine_rows_backward(const Tensor& dout, const Tensor& y, const Tensor& rows,
                                          const Tensor& gates) {
  KERNEL_ROUTE(dout.device(), combine_rows_backward, dout, y, rows, gates);
}
inline Tensor router_z_loss(const Tensor& logits) {
  KERNEL_ROUTE(logits.device(), router_z_loss, logits);
}
inline Tensor router_z_loss_backward(const Tensor& g, const Tensor& logits) {
  KERNEL_ROUTE(logits.device(), router_z_loss_backward, g, logits);
}
inline LoadBalance load_balance_stats(const Tensor& probs, const Tensor& expert_ids,
                                      int64_t num_experts) {
  KERNEL_ROUTE(probs.device(), load_balance_stats, probs, expert_ids, num_experts);
}
inline Tensor load_balance_backward(const Tensor& g, const Tensor& f, int64_t num_tokens) {
  KERNEL_ROUTE(f.device(), load_balance_backward, g, f, num_tokens);
}
inline Tensor dispatch_softmax(const Tensor& logits) {
  KERNEL_ROUTE(logits.device(), dispatch_softmax, logits);
}
inline Tensor dispatch_softmax_backward(const Tensor& g, const Tensor& y) {
  KERNEL_ROUTE(g.device(), dispatch_softmax_backward, g, y);
}

}  // namespace kernels
