// The dense building blocks: Linear, LayerNorm, MLP, multi-head attention, stochastic depth.
// Parameter names follow PyTorch/timm (`weight`, `bias`, `qkv`, `proj`, `fc1`, `fc2`).
#pragma once
#include <optional>

#include "autograd/elementwise.h"
#include "models/module.h"

namespace models {

// y = x · Wᵀ + b, W [out, in] as torch.nn.Linear.
class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias = true, Init weight_init = Init::xavier_uniform(),
         Init bias_init = Init::zeros());
  Var forward(const Var& x) const;
  int64_t in_features, out_features;
  Var weight, bias;  // bias undefined without bias
};

// LayerNorm over the last dim; `bias` false gives the scale-only norm of IMP's blocks.
class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t dim, bool bias = true, double eps = 1e-6);
  Var forward(const Var& x) const;
  int64_t dim;
  double eps;
  Var weight, bias;
};

// The feed-forward slot of a transformer block: the dense MLP or an MoE layer.
// x [B, N, D] -> [B, N, D]. MoE layers report auxiliary losses and statistics through ctx.
class FeedForward : public Module {
 public:
  using Module::Module;
  virtual Var forward(const Var& x, Context& ctx) const = 0;
  // Parameters one token actually uses (for --summary): all of them for a dense MLP.
  virtual int64_t active_parameters() const { return num_parameters(); }
  // Forward multiply-accumulates per token (GEMMs only), for FLOP estimates.
  virtual double macs_per_token() const = 0;
};

// Linear(d, hidden) → GELU → dropout → Linear(hidden, out) → dropout.
struct MLPConfig {
  int64_t dim = 0, hidden = 0;
  int64_t out = 0;  // 0: dim
  bool bias = true;
  double dropout = 0.0;
  autograd::GeluApprox gelu = autograd::GeluApprox::tanh;
  Init init = Init::xavier_uniform();
};
class MLP : public FeedForward {
 public:
  explicit MLP(const MLPConfig& cfg);
  Var forward(const Var& x, Context& ctx) const override;
  double macs_per_token() const override {
    return double(cfg.dim) * cfg.hidden + double(cfg.hidden) * (cfg.out ? cfg.out : cfg.dim);
  }
  // The hidden activations (after GELU, before dropout): what checkpoint recycling measures.
  Var hidden(const Var& x, Context& ctx) const;
  MLPConfig cfg;
  std::shared_ptr<Linear> fc1, fc2;
};

// Multi-head self-attention on x [B, N, D]: one fused QKV projection (`qkv`, [3D, D]) and an
// output projection (`proj`). With qk_norm, Q and K are LayerNorm-ed over d_head with one scale
// vector shared by all heads (`qk_norm.weight`, IMP). key_mask [B, N] (nonzero = real token).
struct AttentionConfig {
  int64_t dim = 0, heads = 1;
  bool qkv_bias = true, proj_bias = true;
  bool qk_norm = false;
  double qk_norm_eps = 1e-6;
  double attn_dropout = 0.0;  // not supported by the fused kernel; must be 0
  double proj_dropout = 0.0;
  Init init = Init::xavier_uniform();
};
class Attention : public Module {
 public:
  explicit Attention(const AttentionConfig& cfg);
  Var forward(const Var& x, Context& ctx, const Tensor& key_mask = Tensor()) const;
  AttentionConfig cfg;
  int64_t head_dim;
  std::shared_ptr<Linear> qkv, proj;
  Var qk_norm_weight;  // [head_dim], only with qk_norm
};

// Stochastic depth: in training, each example's branch is zeroed with probability p and the
// survivors scaled by 1/(1-p) (timm's DropPath). x [B, ...]. Identity when not training or p=0.
Var drop_path(const Var& x, double p, Context& ctx);

}  // namespace models
