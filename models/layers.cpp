#include "models/layers.h"

#include <cmath>

#include "autograd/attention.h"
#include "autograd/dropout.h"
#include "autograd/layernorm.h"
#include "autograd/matmul.h"
#include "autograd/views.h"
#include "engine/error.h"
#include "engine/philox.h"

namespace models {

Linear::Linear(int64_t in, int64_t out, bool has_bias, Init weight_init, Init bias_init)
    : Module("Linear"), in_features(in), out_features(out) {
  ENGINE_CHECK(in > 0 && out > 0, "Linear: sizes must be positive, got in=", in, " out=", out);
  weight = param("weight", {out, in}, weight_init, true);
  if (has_bias) bias = param("bias", {out}, bias_init, false);
}

Var Linear::forward(const Var& x) const {
  ENGINE_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "Linear(", in_features, " -> ",
               out_features, "): input ", x.data().describe(), " has the wrong last dim");
  if (x.dim() == 1) return autograd::reshape(forward(autograd::unsqueeze(x, 0)), {out_features});
  return autograd::linear(x, weight, bias);
}

LayerNorm::LayerNorm(int64_t d, bool has_bias, double eps_)
    : Module("LayerNorm"), dim(d), eps(eps_) {
  ENGINE_CHECK(d > 0, "LayerNorm: dim must be positive, got ", d);
  weight = param("weight", {d}, Init::ones(), false);
  if (has_bias) bias = param("bias", {d}, Init::zeros(), false);
}

Var LayerNorm::forward(const Var& x) const {
  ENGINE_CHECK(x.dim() >= 1 && x.size(-1) == dim, "LayerNorm(", dim, "): input ",
               x.data().describe(), " has the wrong last dim");
  return autograd::layer_norm(x, weight, bias, eps);
}

MLP::MLP(const MLPConfig& c) : FeedForward("MLP"), cfg(c) {
  if (cfg.out == 0) cfg.out = cfg.dim;
  ENGINE_CHECK(cfg.dropout >= 0 && cfg.dropout < 1, "MLP: dropout must be in [0, 1), got ",
               cfg.dropout);
  fc1 = child("fc1", std::make_shared<Linear>(cfg.dim, cfg.hidden, cfg.bias, cfg.init));
  fc2 = child("fc2", std::make_shared<Linear>(cfg.hidden, cfg.out, cfg.bias, cfg.init));
}

Var MLP::hidden(const Var& x, Context& ctx) const {
  return autograd::gelu(fc1->forward(x), cfg.gelu);
}

Var MLP::forward(const Var& x, Context& ctx) const {
  Var h = hidden(x, ctx);
  if (ctx.training && cfg.dropout > 0)
    h = autograd::dropout(h, cfg.dropout, ctx.rng_seed(), ctx.next_stream());
  Var y = fc2->forward(h);
  if (ctx.training && cfg.dropout > 0)
    y = autograd::dropout(y, cfg.dropout, ctx.rng_seed(), ctx.next_stream());
  return y;
}

Attention::Attention(const AttentionConfig& c) : Module("Attention"), cfg(c) {
  ENGINE_CHECK(cfg.heads > 0 && cfg.dim % cfg.heads == 0, "Attention: dim ", cfg.dim,
               " is not divisible by heads ", cfg.heads);
  ENGINE_CHECK(cfg.attn_dropout == 0.0,
               "Attention: dropout on attention probabilities is not supported by the fused "
               "kernel (attn_dropout must be 0)");
  head_dim = cfg.dim / cfg.heads;
  qkv = child("qkv", std::make_shared<Linear>(cfg.dim, 3 * cfg.dim, cfg.qkv_bias, cfg.init));
  if (cfg.qk_norm) {
    auto norm = child("qk_norm", std::make_shared<LayerNorm>(head_dim, false, cfg.qk_norm_eps));
    qk_norm_weight = norm->weight;
  }
  proj = child("proj", std::make_shared<Linear>(cfg.dim, cfg.dim, cfg.proj_bias, cfg.init));
}

Var Attention::forward(const Var& x, Context& ctx, const Tensor& key_mask) const {
  ENGINE_CHECK(x.dim() == 3 && x.size(2) == cfg.dim, "Attention(dim ", cfg.dim,
               "): input must be [B, N, ", cfg.dim, "], got ", x.data().describe());
  const int64_t B = x.size(0), N = x.size(1), H = cfg.heads, Dh = head_dim;
  // [B, N, 3, H, Dh]; q, k, v are [B, H, N, Dh] views the fused kernel reads in place.
  Var qkv5 = autograd::reshape(qkv->forward(x), {B, N, 3, H, Dh});
  auto part = [&](int i) { return autograd::permute(autograd::select(qkv5, 2, i), {0, 2, 1, 3}); };
  Var o = autograd::attention(part(0), part(1), part(2), key_mask,
                              cfg.qk_norm ? qk_norm_weight : Var());
  Var merged = autograd::reshape(autograd::permute(o, {0, 2, 1, 3}), {B, N, cfg.dim});
  Var y = proj->forward(merged);
  if (ctx.training && cfg.proj_dropout > 0)
    y = autograd::dropout(y, cfg.proj_dropout, ctx.rng_seed(), ctx.next_stream());
  return y;
}

Var drop_path(const Var& x, double p, Context& ctx) {
  ENGINE_CHECK(p >= 0 && p < 1, "drop_path: probability must be in [0, 1), got ", p);
  if (!ctx.training || p == 0) return x;
  const int64_t B = x.size(0);
  const uint64_t seed = ctx.rng_seed(), stream = ctx.next_stream();
  // One keep/drop draw per example; the mask is tiny, so it is made on the host.
  std::vector<double> m(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b)
    m[size_t(b)] = engine::philox_uniform(seed, stream, uint64_t(b)) >= p ? 1.0 / (1.0 - p) : 0.0;
  Shape ms(std::vector<int64_t>(size_t(x.dim()), 1));
  ms[0] = B;
  Tensor mask = Tensor::from_vector(m, ms, x.dtype());
  if (!x.device().is_cpu()) mask = mask.to(x.device());
  return autograd::mul(x, Var(mask));
}

}  // namespace models
