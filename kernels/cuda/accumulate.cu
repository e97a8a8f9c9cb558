// dst += alpha * src on the GPU (same contract as kernels::cpu::accumulate, see
// kernels/accumulate.h): f32 or f64 dst, src converted to dst's dtype (on the device) and
// broadcast to dst's shape, any strides on both sides. The product is rounded on its own
// (__fmul_rn: no FMA), as on the CPU, so results are the CPU's bit for bit.
//
// Design (H100): one thread per element in a grid-stride loop (256 threads, ≤ 132·16 blocks);
// 3 accesses per element (read dst and src, write dst), memory-bound: ~85% of 3.35 TB/s for
// contiguous operands (the flat kernel: offset i on both sides). Views and broadcasts unravel
// the flat index over the merged dims (32-bit divisions), dst's order being the thread order.
#include <algorithm>
#include <climits>
#include <cstdint>

#include "engine/strided.h"
#include "kernels/accumulate.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"

namespace kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 132 * 16;

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// dst and src strides over the merged dims, innermost first.
struct Layout {
  int nd = 0;
  uint32_t size[engine::kMaxDims] = {};
  int64_t dst[engine::kMaxDims] = {};
  int64_t src[engine::kMaxDims] = {};
};

template <class T>
__global__ void __launch_bounds__(kThreads) accumulate_flat(T* d, const T* s, T alpha, int64_t n) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step)
    d[i] = d[i] + mul_rn(alpha, s[i]);
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    accumulate_strided(T* d, const T* s, T alpha, Layout l, uint32_t n) {
  const uint32_t step = gridDim.x * blockDim.x;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
    uint32_t rest = i;
    int64_t od = 0, os = 0;
    for (int k = 0; k < l.nd; ++k) {
      const uint32_t q = rest / l.size[k];
      const int64_t r = int64_t(rest - q * l.size[k]);
      od += r * l.dst[k];
      os += r * l.src[k];
      rest = q;
    }
    d[od] = d[od] + mul_rn(alpha, s[os]);
  }
}

unsigned grid_for(int64_t n) {
  return unsigned(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

}  // namespace

void accumulate(Tensor& dst, const Tensor& src_in, double alpha) {
  engine::check_defined(dst, "accumulate", "dst");
  engine::check_defined(src_in, "accumulate", "src");
  ENGINE_CHECK(dst.device() == device(), "accumulate: dst ", dst.describe(), " is not on ", device());
  ENGINE_CHECK(src_in.device() == device(), "accumulate: src ", src_in.describe(), " is not on ",
               device());
  Tensor src = src_in.dtype() == dst.dtype() ? src_in : src_in.to(dst.dtype());
  ENGINE_CHECK(engine::broadcast_shapes(dst.shape(), src.shape(), "accumulate") == dst.shape(),
               "accumulate: cannot add ", src.describe(), " into ", dst.describe());
  for (int d = 0; d < dst.dim(); ++d)
    ENGINE_CHECK(dst.size(d) <= 1 || dst.stride(d) != 0, "accumulate: dst ", dst.describe(),
                 " is a broadcast view (stride 0 in dim ", d, "); its elements alias");
  src = src.expand(dst.shape());
  const int64_t n = dst.numel();
  engine::visit_float(dst.dtype(), "accumulate", [&](auto z) {
    using T = decltype(z);
    if (n == 0) return;
    T* d = static_cast<T*>(dst.raw_data());
    const T* s = static_cast<const T*>(src.raw_data());
    const T a = T(alpha);
    const cudaStream_t st = static_cast<cudaStream_t>(stream());
    if (dst.is_contiguous() && src.is_contiguous()) {
      LAUNCH(accumulate_flat<T>, grid_for(n), kThreads, 0, st)(d, s, a, n);
      CHECK_LAUNCH("accumulate_flat");
      return;
    }
    // The strided kernel indexes in 32 bits (a 64-bit division is a call on the device).
    ENGINE_CHECK(n <= int64_t(UINT32_MAX), "accumulate: strided ", dst.describe(),
                 " has more elements than the CUDA kernel indexes (2^32)");
    const engine::StridedLayout<2> m =
        engine::merge_dims<2>(dst.shape(), {dst.strides(), src.strides()});
    Layout l;
    l.nd = m.shape.size();
    for (int k = 0; k < l.nd; ++k) {
      const int j = l.nd - 1 - k;
      l.size[k] = uint32_t(m.shape[j]);
      l.dst[k] = m.strides[0][j];
      l.src[k] = m.strides[1][j];
    }
    LAUNCH(accumulate_strided<T>, grid_for(n), kThreads, 0, st)(d, s, a, l, uint32_t(n));
    CHECK_LAUNCH("accumulate_strided");
  });
}

}  // namespace kernels::cuda
