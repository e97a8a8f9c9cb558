// Reverse-mode autograd. A Var holds a tensor, its gradient, and (for results of ops) the graph
// node that produced it. Ops are written as: compute the forward with kernels, then
// make_result(out, "name", {inputs...}, backward_fn), with the backward formula right there.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace autograd {
using engine::DType;
using engine::Shape;
using engine::Tensor;

struct Node;

struct VarImpl {
  Tensor data;
  Tensor grad;                     // accumulated gradient (leaves keep it; intermediates free it)
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;   // null for leaves
};

class Var {
 public:
  Var() = default;
  explicit Var(Tensor data, bool requires_grad = false);

  bool defined() const { return impl_ != nullptr; }
  const Tensor& data() const { return impl_->data; }
  Tensor& mutable_data() { return impl_->data; }
  const Tensor& grad() const { return impl_->grad; }
  // Gradient storage may be preset (e.g. a view into a flat gradient buffer); backward then
  // accumulates into it in place.
  void set_grad(Tensor g) { impl_->grad = std::move(g); }
  bool requires_grad() const { return impl_ && impl_->requires_grad; }
  void set_requires_grad(bool r);
  bool is_leaf() const { return !impl_->grad_fn; }
  const std::shared_ptr<Node>& grad_fn() const { return impl_->grad_fn; }

  const Shape& shape() const { return impl_->data.shape(); }
  int dim() const { return impl_->data.dim(); }
  int64_t size(int d) const { return impl_->data.size(d); }
  int64_t numel() const { return impl_->data.numel(); }
  DType dtype() const { return impl_->data.dtype(); }
  engine::Device device() const { return impl_->data.device(); }
  double item() const { return impl_->data.item(); }

  // Backpropagates from this Var. grad_output defaults to ones for a single-element Var.
  // Saved tensors and graph edges are freed as nodes are processed (no retain_graph).
  void backward(const Tensor& grad_output = Tensor()) const;
  // The same data, cut from the graph.
  Var detach() const { return Var(impl_->data, false); }

  const std::shared_ptr<VarImpl>& impl() const { return impl_; }

 private:
  std::shared_ptr<VarImpl> impl_;
};

// Gradients a backward function produces, one slot per input; need(i) says whether input i
// wants one, so a formula can skip work nobody uses.
class Grads {
 public:
  explicit Grads(std::vector<bool> needs) : needs_(std::move(needs)), grads_(needs_.size()) {}
  bool need(size_t i) const { return needs_[i]; }
  void set(size_t i, Tensor g) {
    if (needs_[i]) grads_[i] = std::move(g);
  }
  std::vector<Tensor>& tensors() { return grads_; }

 private:
  std::vector<bool> needs_;
  std::vector<Tensor> grads_;
};

using BackwardFn = std::function<void(const Tensor& grad_out, Grads& grads)>;

struct Node {
  const char* name;
  std::vector<std::shared_ptr<VarImpl>> inputs;
  BackwardFn backward;
  Shape out_shape;
  DType out_dtype;
};

// Wraps `out` as the result of op `name`. Records a node only if grad mode is on and some input
// requires grad; the backward function must produce gradients with each input's shape.
Var make_result(Tensor out, const char* name, const std::vector<Var>& inputs, BackwardFn backward);

bool grad_enabled();

// Within its scope no graph is recorded (inference, evaluation, optimizer updates).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

}  // namespace autograd
