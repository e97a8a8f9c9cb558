#include "autograd/var.h"

#include <unordered_map>
#include <unordered_set>

#include "kernels/accumulate.h"

namespace autograd {
namespace {
thread_local bool g_grad_enabled = true;
}

bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : prev_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = prev_; }

Var::Var(Tensor data, bool requires_grad) : impl_(std::make_shared<VarImpl>()) {
  impl_->data = std::move(data);
  set_requires_grad(requires_grad);
}

void Var::set_requires_grad(bool r) {
  ENGINE_CHECK(!r || engine::is_floating(impl_->data.dtype()),
               "requires_grad on a tensor of dtype ", engine::dtype_name(impl_->data.dtype()),
               "; only floating-point tensors can have gradients");
  ENGINE_CHECK(is_leaf() || r, "set_requires_grad(false) on a non-leaf Var; use detach()");
  impl_->requires_grad = r;
}

Var make_result(Tensor out, const char* name, const std::vector<Var>& inputs, BackwardFn backward) {
  Var v(std::move(out), false);
  if (!g_grad_enabled) return v;
  bool any = false;
  for (const Var& in : inputs) any = any || in.requires_grad();
  if (!any) return v;
  auto node = std::make_shared<Node>();
  node->name = name;
  node->inputs.reserve(inputs.size());
  for (const Var& in : inputs) node->inputs.push_back(in.requires_grad() ? in.impl() : nullptr);
  node->backward = std::move(backward);
  node->out_shape = v.shape();
  node->out_dtype = v.dtype();
  v.impl()->requires_grad = true;
  v.impl()->grad_fn = std::move(node);
  return v;
}

namespace {

// Adds g into impl->grad. A leaf's first gradient is copied, because g may alias another
// tensor (e.g. add passes its incoming gradient to both inputs) and later accumulations are in
// place; an intermediate's first gradient is kept as is, since it is consumed and freed.
void accumulate_grad(VarImpl* impl, const Tensor& g, const char* op) {
  ENGINE_CHECK(g.shape() == impl->data.shape(), "backward of ", op, ": gradient ", g.describe(),
               " does not match input ", impl->data.describe());
  Tensor gg = g.dtype() == impl->data.dtype() ? g : g.to(impl->data.dtype());
  if (!impl->grad.defined()) {
    impl->grad = impl->grad_fn ? gg : gg.clone();
  } else if (impl->grad_fn) {
    // An intermediate's gradient may alias tensors owned by other nodes: add out of place.
    Tensor sum = impl->grad.clone();
    kernels::accumulate(sum, gg);
    impl->grad = sum;
  } else {
    kernels::accumulate(impl->grad, gg);
  }
}

}  // namespace

void Var::backward(const Tensor& grad_output) const {
  ENGINE_CHECK(defined(), "backward on an undefined Var");
  ENGINE_CHECK(requires_grad(), "backward on a Var that does not require grad (no input of the "
               "computation requires grad, or it was computed under NoGradGuard)");
  Tensor g0 = grad_output;
  if (!g0.defined()) {
    ENGINE_CHECK(numel() == 1, "backward: grad_output must be given for a Var of shape ", shape());
    g0 = Tensor::ones(shape(), dtype(), device());
  }
  ENGINE_CHECK(g0.shape() == shape() && g0.dtype() == dtype(), "backward: grad_output ",
               g0.describe(), " does not match ", data().describe());
  if (is_leaf()) {
    accumulate_grad(impl_.get(), g0, "backward");
    return;
  }
  ENGINE_CHECK(impl_->grad_fn->backward != nullptr, "backward through the graph of '",
               impl_->grad_fn->name, "' a second time: its saved tensors were already freed");

  // Topological order of the nodes reachable from this one (iterative DFS: graphs of deep
  // models would overflow a recursive one).
  // `order` owns its entries: processing a node drops its edges, which may release the last
  // other reference to an input that is still waiting for its turn.
  std::vector<std::shared_ptr<VarImpl>> order;
  std::unordered_set<VarImpl*> seen;
  std::vector<std::pair<std::shared_ptr<VarImpl>, size_t>> stack{{impl_, 0}};
  seen.insert(impl_.get());
  while (!stack.empty()) {
    auto& [v, next] = stack.back();
    Node* n = v->grad_fn.get();
    if (n && next < n->inputs.size()) {
      const std::shared_ptr<VarImpl>& in = n->inputs[next++];
      if (in && in->grad_fn && seen.insert(in.get()).second) stack.push_back({in, 0});
      continue;
    }
    order.push_back(std::move(v));
    stack.pop_back();
  }

  impl_->grad = g0;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    VarImpl* v = it->get();
    std::shared_ptr<Node> node = v->grad_fn;
    Tensor gout = std::move(v->grad);
    v->grad = Tensor();
    if (!gout.defined() || !node->backward) continue;  // not on a path to a leaf, or freed
    std::vector<bool> needs(node->inputs.size());
    for (size_t i = 0; i < needs.size(); ++i) needs[i] = node->inputs[i] != nullptr;
    Grads grads(std::move(needs));
    {
      NoGradGuard no_grad;  // backward formulas are not themselves recorded
      node->backward(gout, grads);
    }
    for (size_t i = 0; i < node->inputs.size(); ++i) {
      VarImpl* in = node->inputs[i].get();
      const Tensor& g = grads.tensors()[i];
      if (in && g.defined()) accumulate_grad(in, g, node->name);
    }
    node->backward = nullptr;  // frees the saved tensors
    node->inputs.clear();
  }
}

}  // namespace autograd
