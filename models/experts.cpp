#include "models/experts.h"

#include "autograd/dropout.h"
#include "autograd/grouped_matmul.h"
#include "autograd/index.h"
#include "autograd/matmul.h"
#include "autograd/reduce.h"
#include "engine/error.h"
#include "kernels/reduce.h"

namespace models {

ExpertLinear::ExpertLinear(int64_t E, int64_t in, int64_t out, bool has_bias, Init init)
    : Module("ExpertLinear"), num_experts(E), in_features(in), out_features(out) {
  ENGINE_CHECK(E > 0 && in > 0 && out > 0, "ExpertLinear: sizes must be positive, got experts=", E,
               " in=", in, " out=", out);
  weight = param("weight", {E, out, in}, init, true);
  if (has_bias) bias = param("bias", {E, out}, Init::zeros(), false);
}

Experts::Experts(const ExpertsConfig& c) : Module("Experts"), cfg(c) {
  ENGINE_CHECK(cfg.dim > 0 && cfg.hidden > 0 && cfg.num_experts > 0,
               "Experts: dim, hidden and num_experts must be positive, got dim=", cfg.dim,
               " hidden=", cfg.hidden, " num_experts=", cfg.num_experts);
  ENGINE_CHECK(cfg.dropout >= 0 && cfg.dropout < 1, "Experts: dropout must be in [0, 1), got ",
               cfg.dropout);
  fc1 = child("fc1", std::make_shared<ExpertLinear>(cfg.num_experts, cfg.dim, cfg.hidden, cfg.bias,
                                                    cfg.init));
  fc2 = child("fc2", std::make_shared<ExpertLinear>(cfg.num_experts, cfg.hidden, cfg.dim, cfg.bias,
                                                    cfg.init));
}

Var Experts::forward(const Var& xs, const Tensor& counts, const Tensor& row_experts,
                     Context& ctx) const {
  ENGINE_CHECK(xs.dim() == 2 && xs.size(1) == cfg.dim, "Experts(dim ", cfg.dim,
               "): rows must be [A, ", cfg.dim, "], got ", xs.data().describe());
  ENGINE_CHECK(counts.defined() && counts.dim() == 1 && counts.size(0) == cfg.num_experts,
               "Experts(", cfg.num_experts, " experts): counts must be [", cfg.num_experts,
               "], got ", counts.defined() ? counts.describe() : std::string("undefined"));
  ENGINE_CHECK(!cfg.bias || (row_experts.defined() && row_experts.numel() == xs.size(0)),
               "Experts: the biases need the expert of each of the ", xs.size(0), " rows, got ",
               row_experts.defined() ? row_experts.describe() : std::string("undefined"));
  const bool drop = ctx.training && cfg.dropout > 0;
  // The bias of a row is its expert's row of the stacked bias: a gather, scatter-added back.
  Var h = autograd::grouped_matmul(xs, fc1->weight, counts, /*trans_w=*/true);
  if (cfg.bias) h = h + autograd::embedding(fc1->bias, row_experts);
  h = autograd::gelu(h, cfg.gelu);
  if (drop) h = autograd::dropout(h, cfg.dropout, ctx.rng_seed(), ctx.next_stream());
  Var y = autograd::grouped_matmul(h, fc2->weight, counts, /*trans_w=*/true);
  if (cfg.bias) y = y + autograd::embedding(fc2->bias, row_experts);
  if (drop) y = autograd::dropout(y, cfg.dropout, ctx.rng_seed(), ctx.next_stream());
  return y;
}

Var Experts::forward_averaged(const Var& x) const {
  auto avg = [](const Var& p) { return p.defined() ? autograd::mean(p, 0) : Var(); };
  Var h = autograd::gelu(autograd::linear(x, avg(fc1->weight), avg(fc1->bias)), cfg.gelu);
  return autograd::linear(h, avg(fc2->weight), avg(fc2->bias));
}

int64_t Experts::parameters_per_expert() const {
  return 2 * cfg.dim * cfg.hidden + (cfg.bias ? cfg.hidden + cfg.dim : 0);
}

AveragedMLP average_experts(const Experts& ex) {
  ENGINE_CHECK(ex.fc1->weight.data().defined(),
               "average_experts: the experts have no weights yet (build the model's ParamSet or "
               "load a checkpoint first)");
  AveragedMLP out;
  out.config.dim = ex.cfg.dim;
  out.config.hidden = ex.cfg.hidden;
  out.config.out = ex.cfg.dim;
  out.config.bias = ex.cfg.bias;
  out.config.dropout = ex.cfg.dropout;
  out.config.gelu = ex.cfg.gelu;
  out.config.init = ex.cfg.init;
  out.tensors["fc1.weight"] = kernels::mean(ex.fc1->weight.data(), 0);
  out.tensors["fc2.weight"] = kernels::mean(ex.fc2->weight.data(), 0);
  if (ex.cfg.bias) {
    out.tensors["fc1.bias"] = kernels::mean(ex.fc1->bias.data(), 0);
    out.tensors["fc2.bias"] = kernels::mean(ex.fc2->bias.data(), 0);
  }
  return out;
}

std::map<std::string, Tensor> with_prefix(const std::map<std::string, Tensor>& tensors,
                                          const std::string& prefix) {
  std::map<std::string, Tensor> out;
  for (const auto& [name, t] : tensors) out[join_name(prefix, name)] = t;
  return out;
}

}  // namespace models
