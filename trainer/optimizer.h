// The optimizer over a model's flat parameter buffer (models::ParamSet): AdamW (torch.optim.AdamW)
// or SGD with momentum (torch.optim.SGD), global gradient-norm clipping, and per-parameter
// learning-rate multipliers (layer-wise lr decay).
//
// The moments are flat buffers laid out like ParamSet::data, so an update is one fused kernel
// call per run of parameters sharing a multiplier: ONE call for a model without LLRD, a few
// (one per layer) with it. Clipping is folded into the update as the kernels' grad_scale, so it
// costs one read of the gradients (the norm) and no extra write.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"
#include "models/params.h"

namespace train {
using engine::Tensor;

struct OptimizerConfig {
  std::string name = "adamw";  // "adamw" | "sgd"
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // AdamW
  double weight_decay = 0.0;   // applied to the entries whose decay flag is set (ParamSet)
  double momentum = 0.9;       // SGD (0: plain SGD, no buffer)
  bool nesterov = false;       // SGD
  double max_grad_norm = 0.0;  // global L2 clipping threshold; 0 = off
  // A NaN/Inf gradient norm skips the update (parameters and moments untouched, the step count
  // not advanced) instead of poisoning the moments; step() still returns the norm.
  bool skip_nonfinite = true;
};

// Throws naming the field ("optimizer: beta2 must be in [0, 1), got 1").
void validate(const OptimizerConfig& cfg);

// Layer index of a ViT-style parameter name for layer-wise lr decay: 0 for the embeddings
// (patch_embed.*, cls_token, pos_embed*), i + 1 for blocks.<i>.*, num_layers + 1 for everything
// else (final norm, fc_norm, head).
int vit_layer_id(const std::string& name, int num_layers);

// Per-entry lr multipliers (aligned with ps.entries()) for layer-wise lr decay as in BEiT/timm:
// decay^(num_layers + 1 - layer), so the head gets 1 and the embeddings decay^(num_layers + 1).
// Entries for which is_full_rate(name) is true (e.g. MoE expert parameters) get 1.
std::vector<double> layer_decay_scales(
    const models::ParamSet& ps, int num_layers, double decay,
    const std::function<bool(const std::string&)>& is_full_rate = {});

// Per-entry multipliers from any function of the parameter name.
std::vector<double> lr_scales_from(const models::ParamSet& ps,
                                   const std::function<double(const std::string&)>& scale_of);

class Optimizer {
 public:
  // A contiguous range [begin, begin + length) of the flat buffers updated with lr * scale.
  struct Range {
    int64_t begin = 0, length = 0;
    double scale = 1.0;
    bool decay = true;  // weight decay applies (matrices), or not (norms, biases, positions, ...)
  };

  // lr_scales: one multiplier per entry of ps.entries() (empty: all 1). The optimizer keeps
  // handles to ps.data / grad (the storage is shared, the ParamSet may go away).
  Optimizer(const models::ParamSet& ps, OptimizerConfig cfg, std::vector<double> lr_scales = {});

  // One update with learning rate `lr` (times each range's scale). Returns the global L2 norm of
  // the gradients before clipping (deterministic; NaN/Inf when the gradients are).
  double step(double lr);

  const OptimizerConfig& config() const { return cfg_; }
  int64_t steps() const { return step_; }             // updates applied so far
  bool last_step_skipped() const { return skipped_; }  // the last step() had a non-finite norm
  int64_t skipped_steps() const { return skipped_total_; }
  double last_clip_scale() const { return last_scale_; }  // grad_scale of the last update
  // The ranges with their multipliers and decay flags (adjacent entries with equal scale and flag
  // merged; the alignment
  // padding after an entry belongs to its range): one kernel call each.
  const std::vector<Range>& ranges() const { return ranges_; }
  int64_t num_kernel_calls_per_step() const { return int64_t(ranges_.size()); }

  // State for checkpoints: AdamW "exp_avg", "exp_avg_sq"; SGD "momentum_buffer" (when momentum
  // != 0); both "step" (i64 [1]). Flat buffers of ParamSet::data's length, views (not copies).
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  // Validates every tensor first (names, 1-D lengths, the step) and only then copies (dtype
  // converted, moved to the buffers' device), so a failed load changes nothing.
  void load_state(const std::map<std::string, Tensor>& state);

 private:
  OptimizerConfig cfg_;
  Tensor data_, grad_;
  Tensor m_, v_, buf_;
  std::vector<Range> ranges_;
  int64_t step_ = 0;
  int64_t skipped_total_ = 0;
  bool skipped_ = false;
  double last_scale_ = 1.0;
};

}  // namespace train
