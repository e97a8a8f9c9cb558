// Dropout and its backward on the GPU (same contract as kernels::cpu::dropout, kernels/dropout.h):
// element i (row-major index) is kept iff (philox_u32(seed, stream, i) >> 8) >= ceil(p · 2^24),
// kept values are scaled by 1 / (1 - p) in the CPU op's precision (f32 for f32 and bf16, f64 for
// f64) and rounded once, so mask and values are bit-identical to the CPU's. The Philox code is
// engine/philox.h, compiled for the device.
//
// Design (H100): one thread per Philox block, i.e. 4 consecutive elements (one 4x32 block gives the
// words of elements 4b .. 4b+3), so each block's 10 rounds are computed once. Contiguous inputs
// whose element count is a multiple of 4 and whose pointers allow it move as one 16-byte (f32),
// 8-byte (bf16) or 2x16-byte (f64) access per thread. Per element: one read, one write and a
// quarter of a Philox block (~40 integer multiply/xor instructions): 8 B/element in f32 against
// ~10 instructions per element, so it stays memory-bound on an H100 (~80-90% of 3.35 TB/s for
// tensors of a few MB). Strided inputs read through their merged layout, element by element.
// Grid-stride, 256 threads per block; no shared memory, no barriers.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "engine/philox.h"
#include "engine/strided.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "kernels/dropout.h"

namespace kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 132 * 16;

struct Layout {
  int nd;
  int64_t shape[engine::kMaxDims];
  int64_t stride[engine::kMaxDims];
};

Layout layout_of(const Tensor& t) {
  Layout l{};
  const engine::StridedLayout<1> m = engine::merge_dims<1>(t.shape(), {t.strides()});
  l.nd = m.shape.size();
  for (int d = 0; d < l.nd; ++d) {
    l.shape[d] = m.shape[d];
    l.stride[d] = m.strides[0][d];
  }
  return l;
}

__device__ __forceinline__ int64_t offset_of(const Layout& l, int64_t p) {
  if (l.nd == 1) return p * l.stride[0];
  int64_t off = 0;
  for (int d = l.nd - 1; d >= 0; --d) {
    const int64_t s = l.shape[d];
    off += (p % s) * l.stride[d];
    p /= s;
  }
  return off;
}

// Element types: the stored type E and the type S the scale is applied in. bf16 travels as its
// raw 16 bits.
struct Bf16Bits {
  unsigned short bits;
};
__device__ __forceinline__ float to_compute(float v) { return v; }
__device__ __forceinline__ double to_compute(double v) { return v; }
__device__ __forceinline__ float to_compute(Bf16Bits v) {
  return __uint_as_float(unsigned(v.bits) << 16);
}
template <class E>
__device__ __forceinline__ E from_compute(float v);
template <>
__device__ __forceinline__ float from_compute<float>(float v) { return v; }
template <>
__device__ __forceinline__ Bf16Bits from_compute<Bf16Bits>(float v) {
  return Bf16Bits{__bfloat16_as_ushort(__float2bfloat16_rn(v))};
}

template <class E>
struct alignas(4 * sizeof(E)) Quad {
  E v[4];
};

template <class E, class S>
__device__ __forceinline__ E apply(E x, uint32_t word, uint32_t threshold, S scale) {
  if constexpr (sizeof(S) == 8) {
    return (word >> 8) >= threshold ? E(to_compute(x) * scale) : E(0.0);
  } else {
    return from_compute<E>((word >> 8) >= threshold ? to_compute(x) * scale : 0.0f);
  }
}

// kMode 0: contiguous, 4 elements as one aligned access (n % 4 == 0); 1: contiguous, scalar
// accesses; 2: strided source.
template <class E, class S, int kMode>
__global__ void __launch_bounds__(kThreads)
    dropout_kernel(const E* x, Layout l, E* y, int64_t n, uint32_t threshold, S scale,
                   uint64_t seed, uint64_t stream) {
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks;
       b += int64_t(gridDim.x) * blockDim.x) {
    const engine::U32x4 r = engine::philox_block(seed, stream, uint64_t(b));
    if constexpr (kMode == 0) {
      Quad<E> q = reinterpret_cast<const Quad<E>*>(x)[b];
      for (int k = 0; k < 4; ++k) q.v[k] = apply(q.v[k], r.v[k], threshold, scale);
      reinterpret_cast<Quad<E>*>(y)[b] = q;
    } else {
      for (int k = 0; k < 4; ++k) {
        const int64_t i = 4 * b + k;
        if (i < n) y[i] = apply(kMode == 1 ? x[i] : x[offset_of(l, i)], r.v[k], threshold, scale);
      }
    }
  }
}

template <class E, class S>
void launch(const Tensor& x, Tensor& y, uint32_t threshold, S scale, uint64_t seed,
            uint64_t stream_id) {
  const int64_t n = x.numel();
  const int64_t quads = (n + 3) / 4;
  const unsigned blocks =
      unsigned(std::clamp<int64_t>((quads + kThreads - 1) / kThreads, 1, kMaxBlocks));
  const E* xp = static_cast<const E*>(x.raw_data());
  E* yp = static_cast<E*>(y.raw_data());
  const Layout l = layout_of(x);
  const cudaStream_t s = static_cast<cudaStream_t>(stream());
  const uintptr_t a = sizeof(Quad<E>);
  const bool vec = n % 4 == 0 && reinterpret_cast<uintptr_t>(xp) % a == 0 &&
                   reinterpret_cast<uintptr_t>(yp) % a == 0;
  if (!x.is_contiguous()) {
    LAUNCH((dropout_kernel<E, S, 2>), blocks, kThreads, 0, s)(xp, l, yp, n, threshold, scale,
                                                             seed, stream_id);
  } else if (vec) {
    LAUNCH((dropout_kernel<E, S, 0>), blocks, kThreads, 0, s)(xp, l, yp, n, threshold, scale,
                                                             seed, stream_id);
  } else {
    LAUNCH((dropout_kernel<E, S, 1>), blocks, kThreads, 0, s)(xp, l, yp, n, threshold, scale,
                                                             seed, stream_id);
  }
  CHECK_LAUNCH("dropout_kernel");
}

Tensor run(const char* op, const Tensor& x, double p, uint64_t seed, uint64_t stream_id) {
  engine::check_defined(x, op, "x");
  ENGINE_CHECK(x.device() == device(), op, ": 'x' ", x.describe(), " is not on the CUDA device ",
               device());
  ENGINE_CHECK(engine::is_floating(x.dtype()), op, ": expected a floating dtype, got ",
               x.describe());
  ENGINE_CHECK(p >= 0.0 && p < 1.0, op, ": p must be in [0, 1), got ", p);
  if (p == 0.0) return x;
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() == 0) return y;
  // k / 2^24 >= p  <=>  k >= ceil(p · 2^24); exact, since p · 2^24 is exact in f64.
  const uint32_t threshold = uint32_t(std::ceil(p * 16777216.0));
  const double scale = 1.0 / (1.0 - p);
  switch (x.dtype()) {
    case DType::f32: launch<float, float>(x, y, threshold, float(scale), seed, stream_id); break;
    case DType::f64: launch<double, double>(x, y, threshold, scale, seed, stream_id); break;
    default: launch<Bf16Bits, float>(x, y, threshold, float(scale), seed, stream_id); break;
  }
  return y;
}

}  // namespace

Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t stream) {
  return run("dropout", x, p, seed, stream);
}

Tensor dropout_backward(const Tensor& g, double p, uint64_t seed, uint64_t stream) {
  return run("dropout_backward", g, p, seed, stream);
}

}  // namespace kernels::cuda
