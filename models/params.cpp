#include "models/params.h"

#include <sstream>

#include "engine/error.h"

namespace models {

namespace {
int64_t round_up16(int64_t n) { return (n + 15) / 16 * 16; }
}  // namespace

ParamSet::ParamSet(Module& root, uint64_t seed, DType dtype, engine::Device device) {
  ENGINE_CHECK(dtype == DType::f32 || dtype == DType::f64,
               "ParamSet: parameters are f32 or f64, got ", engine::dtype_name(dtype));
  std::vector<ParamInfo> params = root.parameters();
  int64_t total = 0;
  for (const auto& p : params) {
    ENGINE_CHECK(!index_.count(p.name), "ParamSet: duplicate parameter name '", p.name, "'");
    index_[p.name] = entries_.size();
    entries_.push_back({p.name, p.var, p.shape, total, p.decay});
    total += round_up16(p.shape.numel());
  }
  Tensor host = Tensor::zeros({total}, dtype);
  for (const auto& e : entries_) {
    Tensor view = host.narrow(0, e.offset, e.shape.numel()).reshape(e.shape);
    initialize(view, params[index_[e.name]].init, seed, e.name);
  }
  data = device.is_cpu() ? host : host.to(device);
  grad = Tensor::zeros({total}, dtype, device);
  for (auto& e : entries_) {
    auto& impl = *e.var.impl();
    impl.data = data.narrow(0, e.offset, e.shape.numel()).reshape(e.shape);
    impl.grad = grad.narrow(0, e.offset, e.shape.numel()).reshape(e.shape);
    impl.requires_grad = true;
  }
}

Tensor ParamSet::decay_mask() const {
  Tensor mask = Tensor::zeros({data.defined() ? data.numel() : 0}, data.defined() ? data.dtype() : DType::f32);
  for (const auto& e : entries_)
    if (e.decay) mask.narrow(0, e.offset, e.shape.numel()).fill_(1.0);
  return data.defined() && !data.device().is_cpu() ? mask.to(data.device()) : mask;
}

int64_t ParamSet::num_parameters() const {
  int64_t n = 0;
  for (const auto& e : entries_) n += e.shape.numel();
  return n;
}

const ParamSet::Entry& ParamSet::at(const std::string& name) const {
  auto it = index_.find(name);
  ENGINE_CHECK(it != index_.end(), "ParamSet: no parameter named '", name, "'");
  return entries_[it->second];
}

void ParamSet::zero_grad() {
  if (grad.defined()) grad.zero_();
}

std::vector<std::pair<std::string, Tensor>> ParamSet::named_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& e : entries_) out.emplace_back(e.name, e.var.data());
  return out;
}

std::vector<std::string> ParamSet::load(const std::map<std::string, Tensor>& tensors,
                                        bool strict) {
  if (strict) {
    std::vector<std::string> missing, unexpected;
    for (const auto& e : entries_)
      if (!tensors.count(e.name)) missing.push_back(e.name);
    for (const auto& [name, t] : tensors)
      if (!index_.count(name)) unexpected.push_back(name);
    auto list = [](const std::vector<std::string>& v) {
      std::ostringstream s;
      for (size_t i = 0; i < v.size() && i < 5; ++i) s << (i ? ", " : "") << v[i];
      if (v.size() > 5) s << " and " << v.size() - 5 << " more";
      return s.str();
    };
    ENGINE_CHECK(missing.empty(), "load parameters: ", missing.size(), " missing (", list(missing),
                 ")");
    ENGINE_CHECK(unexpected.empty(), "load parameters: ", unexpected.size(),
                 " not in the model (", list(unexpected), ")");
  }
  std::vector<std::string> loaded;
  for (auto& e : entries_) {
    auto it = tensors.find(e.name);
    if (it == tensors.end()) continue;
    ENGINE_CHECK(it->second.shape() == e.shape, "load parameters: '", e.name, "' has shape ",
                 it->second.describe(), " in the file but ", e.shape, " in the model");
    Tensor src = it->second.dtype() == data.dtype() ? it->second : it->second.to(data.dtype());
    Tensor dst = e.var.data();
    if (dst.device() == src.device()) dst.copy_(src);
    else dst.copy_(src.to(dst.device()));
    loaded.push_back(e.name);
  }
  return loaded;
}

}  // namespace models
