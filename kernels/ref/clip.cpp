// Reference global L2 norm: one sequential double loop. Tests only.
#include <cmath>

#include "kernels/clip.h"

namespace kernels::ref {

double grad_norm(const std::vector<Tensor>& tensors) {
  double sum = 0;
  for (const Tensor& t : tensors) {
    if (!t.defined()) continue;
    for (double x : t.to_vector<double>()) sum += x * x;
  }
  return std::sqrt(sum);
}

}  // namespace kernels::ref
