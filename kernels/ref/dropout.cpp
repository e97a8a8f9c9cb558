// Reference dropout: the definition, element by element.
#include "kernels/dropout.h"

#include <vector>

#include "engine/philox.h"

namespace kernels::ref {

Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t stream) {
  std::vector<double> v = x.to_vector<double>();
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = double(engine::philox_uniform(seed, stream, i)) >= p ? v[i] / (1.0 - p) : 0.0;
  return Tensor::from_vector(v, x.shape());
}

}  // namespace kernels::ref
