// The experts of an MoE layer: E two-layer MLPs (Linear → GELU → dropout → Linear → dropout),
// stored as one stacked parameter per role, PyTorch-style names under the layer:
//   experts.fc1.weight [E, hidden, D]   experts.fc1.bias [E, hidden]
//   experts.fc2.weight [E, D, hidden]   experts.fc2.bias [E, D]
// (each expert's slice is a torch.nn.Linear weight). All experts run in one grouped matmul per
// role over rows sorted by expert (autograd::grouped_matmul, trans_w), never a loop over experts.
//
// Expert weight averaging (switch-ViT inference, AdaMix-style): average_experts() gives the dense
// MLP whose weights and biases are the experts' means (1/E each), as an MLPConfig plus tensors
// named like models::MLP's parameters, ready for ParamSet::load.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "models/layers.h"

namespace models {

struct ExpertsConfig {
  int64_t dim = 0;          // D, the model width
  int64_t hidden = 0;       // each expert's hidden width
  int64_t num_experts = 0;  // E
  bool bias = true;
  double dropout = 0.0;     // after GELU and after fc2, in training
  autograd::GeluApprox gelu = autograd::GeluApprox::tanh;
  Init init = Init::xavier_uniform();  // per expert matrix (fans of [out, in])
};

// E stacked Linear(in, out): weight [E, out, in], bias [E, out].
class ExpertLinear : public Module {
 public:
  ExpertLinear(int64_t num_experts, int64_t in, int64_t out, bool bias, Init init);
  int64_t num_experts, in_features, out_features;
  Var weight, bias;  // bias undefined without bias
};

class Experts : public Module {
 public:
  explicit Experts(const ExpertsConfig& cfg);
  // xs [A, D], rows sorted by expert; counts i64 [E] rows per expert (zeros allowed, sum A);
  // row_experts i64 [A], the expert of each row (used to add the biases; may be undefined
  // without bias). -> [A, D].
  Var forward(const Var& xs, const Tensor& counts, const Tensor& row_experts, Context& ctx) const;
  // x [..., D] through the expert-averaged MLP, differentiable in the stacked parameters (what a
  // random-routing layer computes at inference).
  Var forward_averaged(const Var& x) const;
  int64_t parameters_per_expert() const;
  double macs_per_expert_token() const { return 2.0 * double(cfg.dim) * double(cfg.hidden); }

  ExpertsConfig cfg;
  std::shared_ptr<ExpertLinear> fc1, fc2;
};

// The dense MLP equal to the experts' mean.
struct AveragedMLP {
  MLPConfig config;  // build with std::make_shared<MLP>(config)
  // "fc1.weight" [hidden, D], "fc2.weight" [D, hidden], and with bias "fc1.bias" [hidden],
  // "fc2.bias" [D]: the means over experts (data of a built ParamSet, on its device and dtype).
  std::map<std::string, Tensor> tensors;
};
AveragedMLP average_experts(const Experts& experts);

// The same tensors named under `prefix` ("blocks.3.mlp" -> "blocks.3.mlp.fc1.weight", ...), for
// loading into a whole dense model's ParamSet.
std::map<std::string, Tensor> with_prefix(const std::map<std::string, Tensor>& tensors,
                                          const std::string& prefix);

}  // namespace models
