#include "models/module.h"

#include "autograd/elementwise.h"
#include "engine/error.h"

namespace models {

std::string join_name(const std::string& prefix, const std::string& name) {
  if (prefix.empty()) return name;
  if (name.empty()) return prefix;
  return prefix + "." + name;
}

uint64_t Context::rng_seed() const {
  // splitmix64 of (seed, step): distinct steps get unrelated Philox keys.
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + step + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

Var Context::aux_loss_sum() const {
  Var total;
  for (const auto& [name, loss] : aux_losses) total = total.defined() ? autograd::add(total, loss) : loss;
  return total;
}

Var Module::param(const std::string& name, const Shape& shape, Init init, bool decay) {
  ENGINE_CHECK(!name.empty() && name.find('.') == std::string::npos,
               "Module(", type_, "): bad parameter name '", name, "'");
  for (const auto& p : params_)
    ENGINE_CHECK(p.name != name, "Module(", type_, "): parameter '", name, "' declared twice");
  ParamInfo info;
  info.name = name;
  info.var = Var(Tensor(), true);
  info.shape = shape;
  info.init = init;
  info.decay = decay;
  params_.push_back(info);
  return info.var;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> m) {
  ENGINE_CHECK(m != nullptr, "Module(", type_, "): child '", name, "' is null");
  for (const auto& c : children_)
    ENGINE_CHECK(c.first != name, "Module(", type_, "): child '", name, "' added twice");
  children_.emplace_back(name, std::move(m));
}

void Module::collect(const std::string& prefix, std::vector<ParamInfo>& out) const {
  for (const auto& p : params_) {
    ParamInfo q = p;
    q.name = join_name(prefix, p.name);
    out.push_back(std::move(q));
  }
  for (const auto& [name, c] : children_) c->collect(join_name(prefix, name), out);
}

std::vector<ParamInfo> Module::parameters(const std::string& prefix) const {
  std::vector<ParamInfo> out;
  collect(prefix, out);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.shape.numel();
  return n;
}

Var& Module::parameter(const std::string& name) {
  auto dot = name.find('.');
  if (dot == std::string::npos) {
    for (auto& p : params_)
      if (p.name == name) return p.var;
  } else {
    const std::string head = name.substr(0, dot);
    for (auto& [cname, c] : children_)
      if (cname == head) return c->parameter(name.substr(dot + 1));
  }
  // A child registered without a name contributes its parameters directly (head.weight).
  for (auto& [cname, c] : children_)
    if (cname.empty()) {
      for (const auto& p : c->parameters())
        if (p.name == name) return c->parameter(name);
    }
  ENGINE_FAIL("Module(", type_, "): no parameter named '", name, "'");
}

}  // namespace models
