#include "autograd/cross_entropy.h"

#include "kernels/cross_entropy.h"

namespace autograd {
namespace {

// logits [..., C] as rows [N, C] (a view when possible).
Tensor as_rows(const Var& logits, const char* op) {
  ENGINE_CHECK(logits.dim() >= 1, op, ": logits ", logits.data().describe(),
               " need a class axis");
  ENGINE_CHECK(logits.size(-1) > 0, op, ": logits ", logits.data().describe(), " have no classes");
  return logits.data().reshape({-1, logits.size(-1)});
}

// The per-row gradient a reduction hands to the kernel: [N] for none, else the scalar gradient
// seen as [N] through a stride-0 view (the kernel applies the 1/count scale).
Tensor row_grad(const Tensor& g, int64_t N, Reduction r) {
  return r == Reduction::none ? g.reshape({N}) : g.reshape({1}).expand({N});
}

// The forward result for a reduction over `count` rows; sets the gradient scale it implies.
Tensor reduced(const Tensor& losses, int64_t count, Reduction r, const Shape& lead,
               double& scale) {
  scale = 1.0;
  if (r == Reduction::none) return losses.reshape(lead);
  if (r == Reduction::mean) scale = count > 0 ? 1.0 / double(count) : 0.0;
  return kernels::loss_sum(losses, scale);
}

}  // namespace

Var cross_entropy(const Var& logits, const Tensor& targets, double label_smoothing,
                  int64_t ignore_index, Reduction reduction) {
  const char* op = "cross_entropy";
  Tensor x = as_rows(logits, op);
  Shape lead = logits.shape();
  lead.erase(lead.size() - 1);
  engine::check_defined(targets, op, "targets");
  ENGINE_CHECK(targets.shape() == lead, op, ": targets ", targets.describe(),
               " must have the leading shape ", lead, " of logits ", logits.data().describe());
  const int64_t N = x.size(0);
  Tensor t = targets.reshape({N});
  kernels::CrossEntropyOut ce = kernels::softmax_cross_entropy(x, t, label_smoothing, ignore_index);
  double scale;
  Tensor out = reduced(ce.losses, ce.num_valid, reduction, lead, scale);
  Shape xs = logits.shape();
  Tensor lse = ce.lse;
  return make_result(out, "cross_entropy", {logits},
                     [=](const Tensor& g, Grads& grads) {
                       Tensor dx = kernels::softmax_cross_entropy_backward(
                           row_grad(g, N, reduction), x, t, lse, label_smoothing, ignore_index,
                           scale);
                       grads.set(0, dx.reshape(xs));
                     });
}

Var cross_entropy_soft(const Var& logits, const Tensor& target_probs, Reduction reduction) {
  const char* op = "cross_entropy_soft";
  Tensor x = as_rows(logits, op);
  engine::check_defined(target_probs, op, "target_probs");
  ENGINE_CHECK(target_probs.shape() == logits.shape(), op, ": target_probs ",
               target_probs.describe(), " must have the shape of logits ",
               logits.data().describe());
  const int64_t N = x.size(0);
  Tensor q = target_probs.reshape({N, x.size(1)});
  kernels::CrossEntropyOut ce = kernels::softmax_cross_entropy_soft(x, q);
  Shape lead = logits.shape();
  lead.erase(lead.size() - 1);
  double scale;
  Tensor out = reduced(ce.losses, N, reduction, lead, scale);
  Shape xs = logits.shape();
  Tensor lse = ce.lse;
  return make_result(out, "cross_entropy_soft", {logits}, [=](const Tensor& g, Grads& grads) {
    Tensor dx =
        kernels::softmax_cross_entropy_soft_backward(row_grad(g, N, reduction), x, q, lse, scale);
    grads.set(0, dx.reshape(xs));
  });
}

}  // namespace autograd
