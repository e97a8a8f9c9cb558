#include "autograd/attention.h"

#include "kernels/attention.h"

namespace autograd {

Var attention(const Var& q, const Var& k, const Var& v, const Tensor& key_mask,
              const Var& qk_norm_weight, std::optional<double> scale, bool causal) {
  ENGINE_CHECK(q.defined() && k.defined() && v.defined(), "attention: q, k and v must be defined");
  kernels::AttentionOptions opts;
  opts.scale = scale;
  opts.causal = causal;
  opts.key_mask = key_mask;
  opts.qk_norm = qk_norm_weight.defined();
  if (opts.qk_norm) opts.qk_norm_weight = qk_norm_weight.data();
  kernels::AttentionResult fwd = kernels::attention_forward(q.data(), k.data(), v.data(), opts);
  Tensor out = fwd.out;
  // Backward: recomputes P from lse (and q̂, k̂ from the saved LayerNorm statistics):
  //   dV = Pᵀg, dS = P∘(g vᵀ − rowsum(g∘out)), dq̂ = scale·dS k̂, dk̂ = scale·dSᵀ q̂,
  //   then the LayerNorm backward to dq, dk and dw (see kernels/cpu/attention.cpp).
  return make_result(out, "attention", {q, k, v, qk_norm_weight},
                     [qd = q.data(), kd = k.data(), vd = v.data(), opts, fwd = std::move(fwd)](
                         const Tensor& g, Grads& grads) {
                       kernels::AttentionGrads r =
                           kernels::attention_backward(g, qd, kd, vd, opts, fwd);
                       grads.set(0, r.dq);
                       grads.set(1, r.dk);
                       grads.set(2, r.dv);
                       if (opts.qk_norm) grads.set(3, r.dqk_norm_weight);
                     });
}

}  // namespace autograd
