// CUDA entmax-1.5 over the last axis (kernels/entmax.h), forward and backward.
//
// Forward: one warp per row (4 rows per 128-thread block), K <= 512.
//   1. Each lane loads elements lane + 32q (coalesced), keeping them in registers; warp max and
//      NaN vote; a NaN row or a non-finite max writes NaN (as the CPU op).
//   2. x = (z - max)/2 goes to the warp's shared-memory row (pow2(K) >= 32 floats, -inf
//      padding) and is sorted descending by a warp-wide bitonic sort (__syncwarp between the
//      log²/2 stages; Kp/64 compare-exchanges per lane per stage).
//   3. Lane l takes the contiguous sorted chunk [l·c, l·c + c), c = Kp/32 <= 16: Welford
//      statistics (count, mean, M2) of the chunk, an exclusive warp scan of them with Chan's
//      merge (5 shuffle steps), then per element the running (mean_k, ss_k = M2_k), tau_k and the
//      support test tau_k <= x_(k); the support size is a warp sum, tau* is shuffled from the
//      lane that owns position k* - 1.
//   4. p = max(x - tau*, 0)² written from the registers of step 1.
//   Traffic: one read and one write per element (8 bytes f32); the work is O(K log² K) shared
//   memory ops per row, so for K = 294 (SpheroMoE) it is latency/shared-memory bound: ~45 sort
//   stages ≈ 2-3 µs per warp, thousands of rows in flight over 132 SMs (8 KB shared per block).
//   Registers: the 3 x 16-float lane arrays stay in registers (all indices unrolled).
// Backward: one warp per row, any K: Σ g·sqrt(p) and Σ sqrt(p) by shuffles, then dz; two reads
//   of the row (the second from L1/L2) and one write: bandwidth-bound, ~80% of DRAM bandwidth.
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "kernels/entmax.h"

// Full unrolling keeps the per-lane arrays in registers; g++ (the sim) has no such pragma.
#if defined(__CUDACC__)
#define UNROLL _Pragma("unroll")
#else
#define UNROLL
#endif

namespace kernels::cuda {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kWarps = 4;
constexpr int kMaxK = int(kEntmaxMaxK);
constexpr int kMaxPer = kMaxK / 32;

cudaStream_t cu_stream() { return static_cast<cudaStream_t>(stream()); }

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

struct Stats {
  float n, mean, m2;  // count, mean, sum of squared deviations
};

// Chan et al.'s merge of the statistics of a prefix `a` and the block `b` that follows it.
__device__ __forceinline__ Stats merge(const Stats& a, const Stats& b) {
  const float n = a.n + b.n;
  if (n == 0.0f) return {0.0f, 0.0f, 0.0f};
  const float delta = b.mean - a.mean, fb = b.n / n;
  return {n, a.mean + delta * fb, a.m2 + b.m2 + delta * delta * a.n * fb};
}

// 1 row per warp; Kp = pow2 >= max(K, 32). 54 regs (sm_80 and sm_90), 8 KB static
// shared memory, no spills.
template <class T>
__global__ void __launch_bounds__(32 * kWarps)
    entmax15_kernel(const T* z, float* p, int64_t rows, int K, int Kp) {
  SHARED(float, buf, [kWarps][kMaxK]);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = int64_t(blockIdx.x) * kWarps + warp;
  if (row >= rows) return;  // warp-uniform, and only warp-level sync below
  float* s = buf[warp];
  const T* zr = z + row * K;
  float* pr = p + row * K;
  const int per = Kp / 32;

  float zv[kMaxPer];
  float m = -CUDART_INF_F;
  bool nan = false;
  UNROLL
  for (int q = 0; q < kMaxPer; ++q) {
    const int i = lane + 32 * q;
    zv[q] = (q < per && i < K) ? to_f32(zr[i]) : -CUDART_INF_F;
    nan |= zv[q] != zv[q];
    m = fmaxf(m, zv[q]);
  }
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(kFull, m, o));
  if (__any_sync(kFull, nan) || !isfinite(m)) {
    for (int i = lane; i < K; i += 32) pr[i] = CUDART_NAN_F;
    return;
  }
  UNROLL
  for (int q = 0; q < kMaxPer; ++q)
    if (q < per) s[lane + 32 * q] = (zv[q] - m) * 0.5f;  // padding stays -inf
  __syncwarp();

  // Descending bitonic sort of s[0, Kp).
  for (int size = 2; size <= Kp; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int pp = lane; pp < Kp / 2; pp += 32) {
        const int i = 2 * stride * (pp / stride) + (pp % stride), j = i + stride;
        const bool desc = (i & size) == 0;
        const float a = s[i], b = s[j];
        if ((a < b) == desc) {
          s[i] = b;
          s[j] = a;
        }
      }
      __syncwarp();
    }
  }

  // This lane's chunk of sorted values; -inf (padding or input) never enters the support and
  // sits after every finite value.
  float xs[kMaxPer];
  Stats mine{0.0f, 0.0f, 0.0f};
  UNROLL
  for (int q = 0; q < kMaxPer; ++q) {
    xs[q] = q < per ? s[lane * per + q] : -CUDART_INF_F;
    if (xs[q] != -CUDART_INF_F) {
      mine.n += 1.0f;
      const float d = xs[q] - mine.mean;
      mine.mean += d / mine.n;
      mine.m2 += d * (xs[q] - mine.mean);
    }
  }
  // Inclusive scan of the chunk statistics, then the exclusive prefix of this lane.
  Stats incl = mine;
  for (int o = 1; o < 32; o <<= 1) {
    Stats up;
    up.n = __shfl_up_sync(kFull, incl.n, o);
    up.mean = __shfl_up_sync(kFull, incl.mean, o);
    up.m2 = __shfl_up_sync(kFull, incl.m2, o);
    if (lane >= o) incl = merge(up, incl);
  }
  Stats run;
  run.n = __shfl_up_sync(kFull, incl.n, 1);
  run.mean = __shfl_up_sync(kFull, incl.mean, 1);
  run.m2 = __shfl_up_sync(kFull, incl.m2, 1);
  if (lane == 0) run = {0.0f, 0.0f, 0.0f};

  float taus[kMaxPer];
  int support = 0;
  UNROLL
  for (int q = 0; q < kMaxPer; ++q) {
    taus[q] = 0.0f;
    if (xs[q] != -CUDART_INF_F) {
      run.n += 1.0f;
      const float d = xs[q] - run.mean;
      run.mean += d / run.n;
      run.m2 += d * (xs[q] - run.mean);
      taus[q] = run.mean - sqrtf(fmaxf((1.0f - run.m2) / run.n, 0.0f));
      support += taus[q] <= xs[q];
    }
  }
  for (int o = 16; o > 0; o >>= 1) support += __shfl_xor_sync(kFull, support, o);
  const int owner = (support - 1) / per, at = (support - 1) % per;
  float t_mine = 0.0f;
  UNROLL
  for (int q = 0; q < kMaxPer; ++q)
    if (q == at) t_mine = taus[q];
  const float tau = __shfl_sync(kFull, t_mine, owner);

  UNROLL
  for (int q = 0; q < kMaxPer; ++q) {
    const int i = lane + 32 * q;
    if (q < per && i < K) {
      const float t = fmaxf((zv[q] - m) * 0.5f - tau, 0.0f);
      pr[i] = t * t;
    }
  }
}

// dz = g·sqrt(p) - sqrt(p)·Σ(g·sqrt(p))/Σ sqrt(p); one warp per row, any K. 28-29 regs.
__global__ void __launch_bounds__(32 * kWarps)
    entmax15_backward_kernel(const float* g, const float* p, float* dz, int64_t rows, int64_t K) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= rows) return;  // warp-uniform
  const float* gr = g + row * K;
  const float* pr = p + row * K;
  float sgs = 0.0f, ss = 0.0f;
  for (int64_t i = lane; i < K; i += 32) {
    const float sq = sqrtf(pr[i]);
    sgs += gr[i] * sq;
    ss += sq;
  }
  for (int o = 16; o > 0; o >>= 1) {
    sgs += __shfl_xor_sync(kFull, sgs, o);
    ss += __shfl_xor_sync(kFull, ss, o);
  }
  const float q = sgs / ss;
  for (int64_t i = lane; i < K; i += 32) {
    const float sq = sqrtf(pr[i]);
    dz[row * K + i] = gr[i] * sq - sq * q;
  }
}

void check_on_device(const Tensor& t, const char* op, const char* arg) {
  engine::check_defined(t, op, arg);
  ENGINE_CHECK(t.device() == device(), op, ": '", arg, "' is on ", t.device(),
               "; the CUDA kernel needs it on ", device());
  ENGINE_CHECK(t.is_contiguous(), op, ": the CUDA kernel needs a contiguous '", arg, "', got ",
               t.describe(), " with strides ", t.strides());
  ENGINE_CHECK(t.dim() >= 1 && t.size(-1) >= 1, op, ": '", arg,
               "' needs a last axis of size >= 1, got ", t.describe());
}

int next_pow2(int64_t n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

}  // namespace

Tensor entmax15(const Tensor& z) {
  const char* op = "entmax15";
  check_on_device(z, op, "z");
  ENGINE_CHECK(z.dtype() == DType::f32 || z.dtype() == DType::bf16, op,
               ": expected an f32 or bf16 'z' on the GPU, got ", z.describe());
  const int64_t K = z.size(-1), rows = z.numel() / K;
  ENGINE_CHECK(K <= kEntmaxMaxK, op, ": rows of K = ", K, " in ", z.describe(),
               "; the CUDA kernel sorts at most ", kEntmaxMaxK, " values per row");
  Tensor out = Tensor::empty(z.shape(), DType::f32, device());
  if (rows == 0) return out;
  const int Kp = std::max(32, next_pow2(K));
  const int blocks = int((rows + kWarps - 1) / kWarps);
  if (z.dtype() == DType::bf16)
    LAUNCH(entmax15_kernel<__nv_bfloat16>, blocks, 32 * kWarps, 0, cu_stream())
    (static_cast<const __nv_bfloat16*>(z.raw_data()), out.data<float>(), rows, int(K), Kp);
  else
    LAUNCH(entmax15_kernel<float>, blocks, 32 * kWarps, 0, cu_stream())
    (z.data<float>(), out.data<float>(), rows, int(K), Kp);
  CHECK_LAUNCH("entmax15_kernel");
  return out;
}

Tensor entmax15_backward(const Tensor& g, const Tensor& p) {
  const char* op = "entmax15_backward";
  check_on_device(g, op, "g");
  check_on_device(p, op, "p");
  engine::check_same_shape(g, p, op);
  ENGINE_CHECK(g.dtype() == DType::f32 && p.dtype() == DType::f32, op,
               ": expected f32 'g' and 'p' on the GPU, got ", g.describe(), " and ", p.describe());
  const int64_t K = g.size(-1), rows = g.numel() / K;
  Tensor out = Tensor::empty(g.shape(), DType::f32, device());
  if (rows == 0) return out;
  const int blocks = int((rows + kWarps - 1) / kWarps);
  LAUNCH(entmax15_backward_kernel, blocks, 32 * kWarps, 0, cu_stream())
  (g.data<float>(), p.data<float>(), out.data<float>(), rows, K);
  CHECK_LAUNCH("entmax15_backward_kernel");
  return out;
}

}  // namespace kernels::cuda
