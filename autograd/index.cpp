#include "autograd/index.h"

#include "kernels/index.h"

namespace autograd {

Var embedding(const Var& table, const Tensor& ids, int64_t padding_idx) {
  engine::check_dim(table.data(), 2, "embedding", "table");
  const int64_t V = table.size(0);
  ENGINE_CHECK(padding_idx >= -1 && padding_idx < V, "embedding: padding_idx ", padding_idx,
               " out of range [-1, ", V, ") for table ", table.data().describe());
  return make_result(kernels::embedding(table.data(), ids), "embedding", {table},
                     [ids, V, padding_idx](const Tensor& g, Grads& grads) {
                       grads.set(0, kernels::embedding_backward(g, ids, V, padding_idx));
                     });
}

Var index_select(const Var& x, int axis, const Tensor& idx) {
  Shape xs = x.shape();
  return make_result(kernels::index_select(x.data(), axis, idx), "index_select", {x},
                     [xs, axis, idx](const Tensor& g, Grads& grads) {
                       grads.set(0, kernels::index_add(xs, axis, idx, g));
                     });
}

Var gather(const Var& x, int axis, const Tensor& idx) {
  Shape xs = x.shape();
  return make_result(kernels::gather(x.data(), axis, idx), "gather", {x},
                     [xs, axis, idx](const Tensor& g, Grads& grads) {
                       grads.set(0, kernels::scatter_add(xs, axis, idx, g));
                     });
}

}  // namespace autograd
