// dst += alpha * src, in place (src is broadcast to dst's shape). The one primitive that the
// backward engine (gradient accumulation) and the optimizers rely on.
#pragma once
#include "kernels/backend.h"

namespace kernels {
namespace cpu {
void accumulate(Tensor& dst, const Tensor& src, double alpha);
}
// The GPU kernel (kernels/cuda/accumulate.cu): the CPU op's contract (f32 or f64 dst, src
// converted to dst's dtype and broadcast, any strides), bit-identical results. dst must not
// have broadcast (stride-0) dims, which would race on the device.
namespace cuda {
void accumulate(Tensor& dst, const Tensor& src, double alpha);
}
inline void accumulate(Tensor& dst, const Tensor& src, double alpha = 1.0) {
  KERNEL_ROUTE(dst.device(), accumulate, dst, src, alpha);
}
}  // namespace kernels
