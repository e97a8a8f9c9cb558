#include "models/heads.h"

#include "autograd/elementwise.h"
#include "autograd/reduce.h"
#include "autograd/views.h"
#include "engine/error.h"
#include "kernels/elementwise.h"
#include "kernels/reduce.h"

namespace models {

Var masked_mean_pool(const Var& x, const Tensor& mask) {
  ENGINE_CHECK(x.defined() && x.dim() == 3, "masked_mean_pool: x must be [B, L, D], got ",
               x.defined() ? x.data().describe() : std::string("an undefined Var"));
  if (!mask.defined()) return autograd::mean(x, 1);
  const int64_t B = x.size(0), L = x.size(1);
  ENGINE_CHECK(mask.dim() == 2 && mask.size(0) == B && mask.size(1) == L, "masked_mean_pool: mask ",
               mask.describe(), " does not match x ", x.data().describe(), " (expected [", B, ", ",
               L, "])");
  Tensor m = mask.to(x.dtype());
  if (!(m.device() == x.device())) m = m.to(x.device());
  // max(count, 1) = 1 + relu(count - 1): a fully padded example pools to 0, not 0/0.
  const Tensor count = kernels::add_scalar(
      kernels::relu(kernels::add_scalar(kernels::sum(m, 1, true), -1.0)), 1.0);  // [B, 1]
  Var summed = autograd::sum(autograd::mul(x, Var(m.reshape({B, L, 1}))), 1);  // [B, D]
  return autograd::div(summed, Var(count));
}

OutputPool::OutputPool(int64_t d, bool bias) : Module("OutputPool"), dim(d) {
  out_proj = child("out_proj", std::make_shared<Linear>(dim, dim, bias));
}

Var OutputPool::forward(const Var& x, const Tensor& mask) const {
  return masked_mean_pool(out_proj->forward(x), mask);
}

ClassifierHead::ClassifierHead(int64_t d, int64_t c, Init weight_init)
    : Module("ClassifierHead"), dim(d), classes(c) {
  ENGINE_CHECK(d > 0 && c > 0, "ClassifierHead: dim and classes must be positive, got dim = ", d,
               ", classes = ", c);
  fc = child("fc", std::make_shared<Linear>(dim, classes, true, weight_init));
}

Var ClassifierHead::forward(const Var& pooled) const { return fc->forward(pooled); }

CrossModalHead::CrossModalHead(const CrossModalHeadConfig& c) : Module("CrossModalHead"), cfg(c) {
  ENGINE_CHECK(cfg.dim > 0 && cfg.hidden > 0 && cfg.out > 0,
               "CrossModalHead: dim, hidden and out must be positive, got dim = ", cfg.dim,
               ", hidden = ", cfg.hidden, ", out = ", cfg.out);
  fc1 = child("fc1", std::make_shared<Linear>(cfg.dim, cfg.hidden));
  fc2 = child("fc2", std::make_shared<Linear>(cfg.hidden, cfg.out));
  norm = child("norm", std::make_shared<LayerNorm>(cfg.out, true, cfg.norm_eps));
}

Var CrossModalHead::forward(const Var& pooled) const {
  Var h = autograd::gelu(fc1->forward(pooled), autograd::GeluApprox::tanh);
  return norm->forward(fc2->forward(h));
}

Temperature::Temperature(double init_) : Module("Temperature"), init(init_) {
  ENGINE_CHECK(init > 0, "Temperature: the initial temperature must be positive, got ", init);
  temperature = param("temperature", {1}, Init::constant(init), false);
}

Var Temperature::tau() const { return autograd::add_scalar(autograd::relu(temperature), 1e-6); }

}  // namespace models
