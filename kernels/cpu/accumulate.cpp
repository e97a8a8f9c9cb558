#include "kernels/accumulate.h"

#include "engine/strided.h"

namespace kernels::cpu {

void accumulate(Tensor& dst, const Tensor& src_in, double alpha) {
  engine::check_defined(dst, "accumulate", "dst");
  engine::check_defined(src_in, "accumulate", "src");
  engine::check_cpu(dst, "accumulate");
  Tensor src = src_in.dtype() == dst.dtype() ? src_in : src_in.to(dst.dtype());
  ENGINE_CHECK(engine::broadcast_shapes(dst.shape(), src.shape(), "accumulate") == dst.shape(),
               "accumulate: cannot add ", src.describe(), " into ", dst.describe());
  src = src.expand(dst.shape());
  engine::visit_float(dst.dtype(), "accumulate", [&](auto z) {
    using T = decltype(z);
    T* d = dst.data<T>();
    const T* s = src.data<T>();
    const T a = T(alpha);
    if (dst.is_contiguous() && src.is_contiguous()) {
      const int64_t n = dst.numel();
#pragma omp parallel for simd if (n > (1 << 16)) schedule(static)
      for (int64_t i = 0; i < n; ++i) d[i] += a * s[i];
      return;
    }
    engine::for_each_row<2>(dst.shape(), {dst.strides(), src.strides()},
                            [&](const int64_t* off, int64_t n, const int64_t* in) {
                              T* dp = d + off[0];
                              const T* sp = s + off[1];
                              for (int64_t i = 0; i < n; ++i) dp[i * in[0]] += a * sp[i * in[1]];
                            });
  });
}

}  // namespace kernels::cpu
