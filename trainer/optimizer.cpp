#include "trainer/optimizer.h"

#include <cmath>
#include <cstdlib>

#include "engine/error.h"
#include "kernels/adamw.h"
#include "kernels/clip.h"

namespace train {

void validate(const OptimizerConfig& c) {
  ENGINE_CHECK(c.name == "adamw" || c.name == "sgd", "optimizer: unknown name '", c.name,
               "' (expected adamw or sgd)");
  ENGINE_CHECK(c.beta1 >= 0 && c.beta1 < 1, "optimizer: beta1 must be in [0, 1), got ", c.beta1);
  ENGINE_CHECK(c.beta2 >= 0 && c.beta2 < 1, "optimizer: beta2 must be in [0, 1), got ", c.beta2);
  ENGINE_CHECK(std::isfinite(c.eps) && c.eps >= 0, "optimizer: eps must be finite and >= 0, got ",
               c.eps);
  ENGINE_CHECK(std::isfinite(c.weight_decay) && c.weight_decay >= 0,
               "optimizer: weight_decay must be finite and >= 0, got ", c.weight_decay);
  ENGINE_CHECK(std::isfinite(c.momentum) && c.momentum >= 0,
               "optimizer: momentum must be finite and >= 0, got ", c.momentum);
  ENGINE_CHECK(!c.nesterov || c.momentum > 0, "optimizer: nesterov needs momentum > 0");
  ENGINE_CHECK(std::isfinite(c.max_grad_norm) && c.max_grad_norm >= 0,
               "optimizer: max_grad_norm must be finite and >= 0 (0 = off), got ",
               c.max_grad_norm);
}

int vit_layer_id(const std::string& name, int num_layers) {
  auto starts = [&](const char* p) { return name.rfind(p, 0) == 0; };
  if (starts("patch_embed.") || name == "cls_token" || starts("pos_embed")) return 0;
  if (starts("blocks.")) {
    // blocks.<i>.<rest>: i must be a number followed by a dot.
    const size_t dot = name.find('.', 7);
    const std::string idx = name.substr(7, dot == std::string::npos ? std::string::npos : dot - 7);
    ENGINE_CHECK(dot != std::string::npos && !idx.empty() &&
                     idx.find_first_not_of("0123456789") == std::string::npos,
                 "layer decay: cannot read the block index of parameter '", name, "'");
    const long i = std::strtol(idx.c_str(), nullptr, 10);
    ENGINE_CHECK(i < num_layers, "layer decay: parameter '", name, "' is in block ", i,
                 " but num_layers is ", num_layers);
    return int(i) + 1;
  }
  return num_layers + 1;
}

std::vector<double> lr_scales_from(const models::ParamSet& ps,
                                   const std::function<double(const std::string&)>& scale_of) {
  std::vector<double> out;
  out.reserve(ps.entries().size());
  for (const auto& e : ps.entries()) out.push_back(scale_of(e.name));
  return out;
}

std::vector<double> layer_decay_scales(const models::ParamSet& ps, int num_layers, double decay,
                                       const std::function<bool(const std::string&)>& full_rate) {
  ENGINE_CHECK(num_layers >= 0, "layer decay: num_layers must be >= 0, got ", num_layers);
  ENGINE_CHECK(std::isfinite(decay) && decay > 0 && decay <= 1,
               "layer decay: decay must be in (0, 1], got ", decay);
  return lr_scales_from(ps, [&](const std::string& name) {
    if (full_rate && full_rate(name)) return 1.0;
    return std::pow(decay, num_layers + 1 - vit_layer_id(name, num_layers));
  });
}

Optimizer::Optimizer(const models::ParamSet& ps, OptimizerConfig cfg,
                     std::vector<double> lr_scales)
    : cfg_(std::move(cfg)), data_(ps.data), grad_(ps.grad) {
  validate(cfg_);
  ENGINE_CHECK(data_.defined() && data_.dim() == 1, "optimizer: the ParamSet has no flat buffer");
  const auto& entries = ps.entries();
  ENGINE_CHECK(lr_scales.empty() || lr_scales.size() == entries.size(), "optimizer: ",
               lr_scales.size(), " lr scales for ", entries.size(), " parameters");
  for (size_t i = 0; i < lr_scales.size(); ++i)
    ENGINE_CHECK(std::isfinite(lr_scales[i]) && lr_scales[i] >= 0, "optimizer: lr scale of '",
                 entries[i].name, "' must be finite and >= 0, got ", lr_scales[i]);
  // Runs of entries with equal multiplier and decay flag; entry i owns [offset_i, offset_{i+1}) so
  // its padding (zero gradient, never moves) rides along and the ranges tile the whole buffer. The
  // decay flag per range replaces a model-sized mask (a parameter's worth of memory).
  const int64_t total = data_.numel();
  for (size_t i = 0; i < entries.size(); ++i) {
    const double s = lr_scales.empty() ? 1.0 : lr_scales[i];
    const bool decay = entries[i].decay;
    const int64_t begin = i == 0 ? 0 : entries[i].offset;
    const int64_t end = i + 1 < entries.size() ? entries[i + 1].offset : total;
    if (!ranges_.empty() && ranges_.back().scale == s && ranges_.back().decay == decay)
      ranges_.back().length = end - ranges_.back().begin;
    else
      ranges_.push_back({begin, end - begin, s, decay});
  }
  const auto dt = data_.dtype();
  const auto dev = data_.device();
  if (cfg_.name == "adamw") {
    m_ = Tensor::zeros({total}, dt, dev);
    v_ = Tensor::zeros({total}, dt, dev);
  } else if (cfg_.momentum != 0) {
    buf_ = Tensor::zeros({total}, dt, dev);
  }
}

double Optimizer::step(double lr) {
  ENGINE_CHECK(std::isfinite(lr) && lr >= 0, "optimizer: lr must be finite and >= 0, got ", lr);
  const double norm = kernels::grad_norm(grad_);
  skipped_ = !std::isfinite(norm) && cfg_.skip_nonfinite;
  if (skipped_) {
    ++skipped_total_;
    return norm;
  }
  const double scale = cfg_.max_grad_norm > 0 ? kernels::clip_scale(norm, cfg_.max_grad_norm) : 1.0;
  last_scale_ = scale;
  ++step_;
  for (const Range& r : ranges_) {
    auto view = [&](const Tensor& t) { return t.defined() ? t.narrow(0, r.begin, r.length) : t; };
    if (cfg_.name == "adamw") {
      kernels::AdamWParams hp;
      hp.lr = lr * r.scale;
      hp.beta1 = cfg_.beta1;
      hp.beta2 = cfg_.beta2;
      hp.eps = cfg_.eps;
      hp.weight_decay = r.decay ? cfg_.weight_decay : 0.0;
      hp.step = step_;
      hp.grad_scale = scale;
      kernels::adamw_step(view(data_), view(grad_), view(m_), view(v_), Tensor(), hp);
    } else {
      kernels::sgd_momentum_step(view(data_), view(grad_), view(buf_), Tensor(), lr * r.scale,
                                 cfg_.momentum, r.decay ? cfg_.weight_decay : 0.0, cfg_.nesterov,
                                 scale);
    }
  }
  return norm;
}

std::vector<std::pair<std::string, Tensor>> Optimizer::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  if (m_.defined()) {
    out.emplace_back("exp_avg", m_);
    out.emplace_back("exp_avg_sq", v_);
  }
  if (buf_.defined()) out.emplace_back("momentum_buffer", buf_);
  out.emplace_back("step", Tensor::from_vector(std::vector<int64_t>{step_}, {1}));
  return out;
}

void Optimizer::load_state(const std::map<std::string, Tensor>& state) {
  std::vector<std::pair<std::string, Tensor>> mine = state_tensors();
  for (const auto& [name, t] : state) {
    bool known = false;
    for (const auto& [n, _] : mine) known = known || n == name;
    ENGINE_CHECK(known, "optimizer state: unexpected tensor '", name, "' for a ", cfg_.name,
                 " optimizer", cfg_.name == "sgd" && cfg_.momentum == 0 ? " without momentum" : "");
  }
  for (const auto& [name, dst] : mine) {
    auto it = state.find(name);
    ENGINE_CHECK(it != state.end(), "optimizer state: missing tensor '", name, "' (", cfg_.name,
                 " state)");
    const Tensor& t = it->second;
    ENGINE_CHECK(t.defined() && t.shape() == dst.shape(), "optimizer state: '", name, "' is ",
                 t.defined() ? t.describe() : std::string("undefined"), " but the model needs ",
                 dst.shape(), " (parameters of another model?)");
  }
  const Tensor& st = state.at("step");
  ENGINE_CHECK(st.dtype() == engine::DType::i64 || st.dtype() == engine::DType::i32,
               "optimizer state: 'step' must be an integer tensor, got ", st.describe());
  const int64_t step = int64_t(st.item());
  ENGINE_CHECK(step >= 0, "optimizer state: 'step' must be >= 0, got ", step);
  for (const auto& [name, dst] : mine) {
    if (name == "step") continue;
    const Tensor& src = state.at(name);
    Tensor s = src.dtype() == dst.dtype() ? src : src.to(dst.dtype());
    Tensor d = dst;  // a view of the moment buffer: writing it writes the state
    if (s.device() == d.device()) d.copy_(s);
    else d.copy_(s.to(d.device()));
  }
  step_ = step;
}

}  // namespace train
