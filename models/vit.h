// Vision Transformer image classifier, the backbone of switch-ViT (specs/switch_vit.md) and of
// SpheroMoE's ViT-T (specs/spheromoe.md). Which blocks hold an MoE layer, and of what kind, is
// decided by the FfnFactory the preset passes in.
//
// Images are channels-last [B, H, W, C]. Parameter names follow timm:
//   patch_embed.proj.{weight,bias}, cls_token [1,1,D], pos_embed [1,rows,D], blocks.<i>.*,
//   norm.* (final LayerNorm, CLS pooling) or fc_norm.* (after average pooling), head.* .
#pragma once
#include "models/model.h"
#include "models/transformer.h"

namespace models {

struct ViTConfig {
  int64_t image_size = 32, patch = 4, channels = 3, classes = 10;
  int64_t dim = 300, depth = 12, heads = 12, mlp_hidden = 1024;
  bool cls_token = true;
  // Rows of the learned positional table; the first N + cls rows are used. 0: exactly N + cls.
  // The reference switch-ViT allocates dim rows (300), which its parameter count includes.
  int64_t pos_rows = 0;
  enum class Pool { cls, avg } pool = Pool::cls;  // avg: mean of the patch tokens, then fc_norm
  int64_t head_hidden = 0;      // > 0: Linear(D, h) → GELU → Linear(h, classes); 0: one Linear
  double dropout = 0.0;         // embedding, attention output and MLP dropout
  double drop_path = 0.0;       // stochastic depth, linear over depth up to this
  double norm_eps = 1e-5;
  autograd::GeluApprox gelu = autograd::GeluApprox::erf;
  Init init = Init::trunc_normal(0.02);
};

class ViT : public Model {
 public:
  // ffn(i) builds block i's feed-forward; default: the dense MLP of the config.
  explicit ViT(const ViTConfig& cfg, const FfnFactory& ffn = nullptr);
  std::string family() const override { return "vit"; }
  std::vector<SummaryRow> summary() const override;

  // images [B, H, W, C] -> logits [B, classes].
  Var forward(const Var& images, Context& ctx) const;
  // The pooled, normalised features [B, D] (before the head).
  Var features(const Var& images, Context& ctx) const;
  // Token features after the last block, [B, N(+1), D]; what recycling and probes look at.
  Var tokens(const Var& images, Context& ctx) const;
  // The dense MLP of a config (the non-MoE blocks, and the dense equivalent of an MoE block).
  static std::shared_ptr<FeedForward> dense_mlp(const ViTConfig& cfg);

  ViTConfig cfg;
  int64_t num_patches;
  std::shared_ptr<Linear> patch_proj;
  Var cls, pos;
  std::vector<std::shared_ptr<Block>> blocks;
  std::shared_ptr<LayerNorm> norm, fc_norm;  // one of them, per pooling
  std::shared_ptr<Linear> head_fc1, head_fc2;   // head_fc1 only with head_hidden
};

}  // namespace models
