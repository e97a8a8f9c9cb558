// MoE routing ops: forwards and backward formulas are the kernels of kernels/routing.h. The
// kernels validate their arguments, so each forward runs first and shapes are read after it.
// Router backwards return the incoming gradient's compute dtype (f32 for bf16), so gradients are
// converted back to the input's dtype where they may differ.
#include "autograd/routing.h"

#include "kernels/routing.h"

namespace autograd {

Var router_softmax(const Var& logits) {
  Tensor p = kernels::router_softmax(logits.data());
  const DType dt = logits.dtype();
  return make_result(p, "router_softmax", {logits}, [p, dt](const Tensor& g, Grads& grads) {
    grads.set(0, kernels::router_softmax_backward(g, p).to(dt));  // p (g - Σ g p)
  });
}

TokenChoiceVar topk_per_token(const Var& probs, int64_t k) {
  kernels::TokenChoice tc = kernels::topk_per_token(probs.data(), k);
  const int64_t E = probs.size(1);
  const DType dt = probs.dtype();
  Tensor ids = tc.expert_ids;
  // The selection is locally constant: d gates[t, s] / d probs[t, ids[t, s]] = 1.
  Var gates = make_result(tc.gates, "topk_per_token", {probs},
                          [ids, E, dt](const Tensor& g, Grads& grads) {
                            grads.set(0, kernels::topk_per_token_backward(g, ids, E).to(dt));
                          });
  return {gates, tc.expert_ids};
}

ExpertChoiceVar topk_per_expert(const Var& probs, int64_t capacity) {
  kernels::ExpertChoice ec = kernels::topk_per_expert(probs.data(), capacity);
  const int64_t t = probs.size(1);
  const DType dt = probs.dtype();
  Tensor ids = ec.token_ids;
  Var gates = make_result(ec.gates, "topk_per_expert", {probs},
                          [ids, t, dt](const Tensor& g, Grads& grads) {
                            grads.set(0, kernels::topk_per_expert_backward(g, ids, t).to(dt));
                          });
  return {gates, ec.token_ids};
}

Var permute_rows(const Var& x, const Tensor& rows) {
  Tensor out = kernels::permute_rows(x.data(), rows);
  const int64_t N = x.size(0);
  return make_result(out, "permute_rows", {x}, [rows, N](const Tensor& g, Grads& grads) {
    grads.set(0, kernels::permute_rows_backward(g, rows, N));  // rows summed back, fixed order
  });
}

Var combine_rows(const Var& y, const Tensor& rows, const Var& gates, int64_t num_rows) {
  const Tensor Y = y.data(), Gt = gates.data();
  Tensor out = kernels::combine_rows(Y, rows, Gt, num_rows);
  // dy[j] = gates[j] · dout[rows[j]], dgates[j] = <y[j], dout[rows[j]]> (in gates' shape).
  return make_result(out, "combine_rows", {y, gates}, [Y, Gt, rows](const Tensor& g, Grads& grads) {
    kernels::CombineGrads c = kernels::combine_rows_backward(g, Y, rows, Gt);
    grads.set(0, c.dy);
    grads.set(1, c.dgates);
  });
}

Var router_z_loss(const Var& logits) {
  const Tensor L = logits.data();
  Tensor loss = kernels::router_z_loss(L);
  return make_result(loss, "router_z_loss", {logits}, [L](const Tensor& g, Grads& grads) {
    grads.set(0, kernels::router_z_loss_backward(g, L).to(L.dtype()));  // 2 lse / T · softmax
  });
}

LoadBalanceVar load_balance_loss(const Var& probs, const Tensor& expert_ids, int64_t num_experts) {
  kernels::LoadBalance lb = kernels::load_balance_stats(probs.data(), expert_ids, num_experts);
  const int64_t T = probs.size(0);
  const DType dt = probs.dtype();
  Tensor f = lb.f;
  // loss = E Σ_e f_e · mean_t probs[t, e] with f constant: dprobs[t, e] = g · E · f_e / T.
  Var loss = make_result(lb.loss, "load_balance_loss", {probs},
                         [f, T, dt](const Tensor& g, Grads& grads) {
                           grads.set(0, kernels::load_balance_backward(g, f, T).to(dt));
                         });
  return {loss, lb.f, lb.P};
}

Var dispatch_softmax(const Var& logits) {
  Tensor y = kernels::dispatch_softmax(logits.data());
  const DType dt = logits.dtype();
  return make_result(y, "dispatch_softmax", {logits}, [y, dt](const Tensor& g, Grads& grads) {
    grads.set(0, kernels::dispatch_softmax_backward(g, y).to(dt));  // y (g - Σ_n g y)
  });
}

}  // namespace autograd
