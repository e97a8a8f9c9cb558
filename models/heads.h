// IMP's heads (specs/imp.md, "Heads" and "Objectives"): a per-modality Linear on every output
// token, masked global average pooling (no CLS token), then a classifier per (modality, dataset)
// or a cross-modal head per ordered modality pair, plus the learned contrastive temperature.
#pragma once
#include "models/layers.h"

namespace models {

// Mean over the tokens of x [B, L, D] -> [B, D]. mask [B, L] (any dtype; 1 = real token, 0 =
// padding) restricts the mean to real tokens: Σ_l m·x / max(Σ_l m, 1), so an example without
// real tokens pools to 0 instead of NaN. Autograd ops only (the mask gets no gradient).
Var masked_mean_pool(const Var& x, const Tensor& mask = Tensor());

// The per-modality output projection (`out_proj`, Linear with bias on every token) followed by
// masked mean pooling: x [B, L, D] -> [B, D].
class OutputPool : public Module {
 public:
  explicit OutputPool(int64_t dim, bool bias = true);
  Var forward(const Var& x, const Tensor& mask = Tensor()) const;
  int64_t dim;
  std::shared_ptr<Linear> out_proj;
};

// Linear(dim -> classes) (`fc`) on the pooled feature [B, dim] -> logits [B, classes].
class ClassifierHead : public Module {
 public:
  ClassifierHead(int64_t dim, int64_t classes, Init weight_init = Init::xavier_uniform());
  Var forward(const Var& pooled) const;
  int64_t dim, classes;
  std::shared_ptr<Linear> fc;
};

// Cross-modal head of one ordered modality pair A→B: Linear(dim, hidden) `fc1` → GELU (tanh) →
// Linear(hidden, out) `fc2` → LayerNorm(out) `norm`. IMP uses hidden = out = 1024.
struct CrossModalHeadConfig {
  int64_t dim = 0;
  int64_t hidden = 1024;
  int64_t out = 1024;
  double norm_eps = 1e-6;
};
class CrossModalHead : public Module {
 public:
  explicit CrossModalHead(const CrossModalHeadConfig& cfg);
  Var forward(const Var& pooled) const;  // [B, dim] (or [..., dim]) -> [B, out]
  CrossModalHeadConfig cfg;
  std::shared_ptr<Linear> fc1, fc2;
  std::shared_ptr<LayerNorm> norm;
};

// The learned temperature of one modality pair: a scalar parameter `temperature` [1], no weight
// decay, initialised to `init` (IMP: 0.2 dense, 1.0 MoE). The value used is
// tau = relu(temperature) + 1e-6, a Var [1] that broadcasts against similarity matrices.
class Temperature : public Module {
 public:
  explicit Temperature(double init = 0.2);
  Var tau() const;
  double init;
  Var temperature;
};

}  // namespace models
