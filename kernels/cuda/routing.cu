// CUDA routing kernels (MoE router, dispatch plan, gather/combine, aux losses, SpheroMoE dispatch
// softmax). Same signatures and results as kernels::cpu (kernels/routing.h); ids, perm, rows and
// counts are bit-identical, floats agree to fp32 rounding.
//
// Design for H100 (3.35 TB/s, 132 SMs); every kernel here is memory- or latency-bound:
// - Per-token router rows (router_softmax[_backward], z-loss, topk_per_token): a row of E <= 256
//   values is owned by W = min(32, pow2(E)) lanes of one warp (so E = 4..32 packs 32/W tokens
//   per warp and lanes are not idle), each lane holding up to 8 values in registers: one read and
//   one write of the row, warp-shuffle reductions, no shared memory. Lanes read consecutive
//   elements, so every warp load is a full 128-byte line. Expected ~80% of DRAM bandwidth
//   (8 bytes/element f32 in+out); at T·E = 16k·16 that is ~0.3 µs of traffic, i.e. launch-bound.
// - topk_per_expert: one block per (group, expert) sorts the group's column of t <= 16384
//   (prob, token) pairs as 64-bit keys with a bitonic sort in dynamic shared memory (8·pow2(t)
//   bytes), then writes the first C. O(t log² t) shared-memory work per block, G·E blocks; the
//   column read is strided by E (sectors are shared with the E-1 other blocks of the group
//   through L2). For t = 2048: 66 barrier stages, a few µs.
// - make_dispatch (stable counting sort by expert): (1) per 256-assignment block, each
//   assignment's rank among equal ids earlier in the block (a loop over the block's ids in
//   shared memory) and the block's count per expert into a [E, blocks] matrix; (2) one-block
//   exclusive scan of that matrix (8 ints per thread, warp-shuffle scans); (3) scatter to
//   base[e][block] + rank. Integer atomics nowhere, so perm is deterministic and stable.
// - combine_rows / permute_rows_backward (deterministic gather-sum): histogram of destination
//   rows (int atomics), scan, slot fill (int atomics), then each destination's short list sorted
//   by source row (one thread per destination, insertion sort: lists are k or <= E long), so the
//   sum order is the increasing source-row order of the CPU; then one warp per destination row
//   accumulates gate·y in fp32 registers with 16-byte vector loads. Reads A·D + writes T·D
//   elements: ~75% of bandwidth expected for D >= 256.
// - permute_rows: a pure row gather with 16-byte words when rows and pointers allow (any dtype):
//   W lanes per row, W = min(32, pow2(words per row)); ~85% of bandwidth.
// - combine_rows_backward: one warp per assignment: dy = gate·dout[row], dgate = <y, dout[row]>
//   (vector loads, shuffle reduction).
// - z-loss and load-balance: per-row / per-block partials written to a buffer, reduced by one
//   block in a fixed order (double accumulation), so the scalars are reproducible.
// - dispatch_softmax [B, N, S] (softmax over the token axis N, per (b, slot)): no transpose. A
//   block of 32x8 threads owns 32 consecutive slots of one b; threadIdx.x walks the slots (each
//   warp row read is one 128-byte line), threadIdx.y strides over the N tokens; column max and
//   sum are combined across the 8 row groups through shared memory in a fixed order. Three
//   passes over the [N, 32] tile (the 2nd and 3rd hit L2: a tile is N·128 bytes); DRAM traffic
//   is one read and one write per element.
// Index inputs are validated on the device (first bad position found with an atomicMin), which
// costs one 8-byte device-to-host copy per op call; the error names the op, index, position and
// range exactly as the CPU op does.
// ptxas (sm_80 / sm_90): no spills; see the comment at each kernel for register counts.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "kernels/routing.h"

// Full unrolling keeps the per-lane arrays in registers; g++ (the sim) has no such pragma.
#if defined(__CUDACC__)
#define UNROLL _Pragma("unroll")
#else
#define UNROLL
#endif

namespace kernels::cuda {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kRowThreads = 128;  // per-token row kernels: 4 warps per block
constexpr int kMaxPerLane = 8;    // values per lane: E <= 8 · 32 = 256
constexpr int64_t kMaxRouterExperts = 256;
constexpr int64_t kMaxGroupTokens = 16384;

cudaStream_t cu_stream() { return static_cast<cudaStream_t>(stream()); }

// ---------------------------------------------------------------------------------------------
// Device helpers

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// An unsigned key that orders like the documented value order: NaN above +inf, -0 == +0.
__device__ __forceinline__ uint32_t order_key(float v) {
  if (v != v) return 0xffffffffu;
  if (v == 0.0f) v = 0.0f;
  const uint32_t b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float seg_max(float v, int W) {
  for (int o = W / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o, W));
  return v;
}
__device__ __forceinline__ float seg_sum(float v, int W) {
  for (int o = W / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o, W);
  return v;
}

// 16-byte (or narrower) packs for vector loads of float / bf16 rows.
template <class T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};
template <class T, int VEC>
__device__ __forceinline__ void load_pack(const T* p, float (&out)[VEC]) {
  const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(p);
  UNROLL
  for (int u = 0; u < VEC; ++u) out[u] = to_f32(pk.v[u]);
}
template <class T, int VEC>
__device__ __forceinline__ void store_pack(T* p, const float (&in)[VEC]) {
  Pack<T, VEC> pk;
  UNROLL
  for (int u = 0; u < VEC; ++u) pk.v[u] = from_f32<T>(in[u]);
  *reinterpret_cast<Pack<T, VEC>*>(p) = pk;
}

// Ascending bitonic sort of n (a power of two) keys in shared memory by the whole block. Every
// thread of the block must call it (it contains barriers); the caller syncs before.
__device__ void block_bitonic_sort(unsigned long long* s, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int p = threadIdx.x; p < n / 2; p += blockDim.x) {
        const int i = 2 * stride * (p / stride) + (p % stride), j = i + stride;
        const bool up = (i & size) == 0;
        const unsigned long long a = s[i], b = s[j];
        if ((a > b) == up) {
          s[i] = b;
          s[j] = a;
        }
      }
      __syncthreads();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Index validation

// Smallest position i whose index is outside [lo_i, lo_i + limit), lo_i = (i / group)·span
// (group = 0: lo = 0). 16-20 regs.
template <class I>
__global__ void find_bad_index_kernel(const I* idx, int64_t n, int64_t limit, int64_t group,
                                      int64_t span, unsigned long long* first_bad) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t lo = group ? (i / group) * span : 0;
    const int64_t v = int64_t(idx[i]);
    if (v < lo || v >= lo + limit) atomicMin(first_bad, static_cast<unsigned long long>(i));
  }
}

struct BadIndex {
  int64_t pos = -1, value = 0;
};

BadIndex find_bad_index(const Tensor& idx, int64_t limit, int64_t group = 0, int64_t span = 0) {
  const int64_t n = idx.numel();
  if (n == 0) return {};
  Tensor flag = Tensor::empty({1}, DType::i64, device());
  CUDA_CHECK(cudaMemsetAsync(flag.raw_data(), 0xff, sizeof(int64_t), cu_stream()));
  const int blocks = int(std::min<int64_t>((n + 255) / 256, 1024));
  auto* f = static_cast<unsigned long long*>(flag.raw_data());
  if (idx.dtype() == DType::i64)
    LAUNCH(find_bad_index_kernel<int64_t>, blocks, 256, 0, cu_stream())
    (idx.data<int64_t>(), n, limit, group, span, f);
  else
    LAUNCH(find_bad_index_kernel<int32_t>, blocks, 256, 0, cu_stream())
    (idx.data<int32_t>(), n, limit, group, span, f);
  CHECK_LAUNCH("find_bad_index_kernel");
  BadIndex bad;
  bad.pos = int64_t(flag.to(engine::Device::cpu()).data<int64_t>()[0]);  // all ones = none
  if (bad.pos >= 0)
    bad.value = int64_t(idx.flatten().narrow(0, bad.pos, 1).to(engine::Device::cpu()).item());
  return bad;
}

void check_indices(const Tensor& idx, int64_t limit, const char* op) {
  const BadIndex b = find_bad_index(idx, limit);
  ENGINE_CHECK(b.pos < 0, op, ": index ", b.value, " at position ", b.pos, " is out of range [0, ",
               limit, ")");
}

// ---------------------------------------------------------------------------------------------
// Host-side argument checks (the CPU ops' messages, plus device and layout)

void check_on_device(const Tensor& t, const char* op, const char* arg) {
  engine::check_defined(t, op, arg);
  ENGINE_CHECK(t.device() == device(), op, ": '", arg, "' is on ", t.device(),
               "; the CUDA kernel needs it on ", device());
  ENGINE_CHECK(t.is_contiguous(), op, ": the CUDA kernel needs a contiguous '", arg, "', got ",
               t.describe(), " with strides ", t.strides());
}
void check_float_input(const Tensor& t, const char* op, const char* arg) {
  check_on_device(t, op, arg);
  ENGINE_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16, op,
               ": expected an f32 or bf16 '", arg, "' on the GPU, got ", t.describe());
}
void check_f32_input(const Tensor& t, const char* op, const char* arg) {
  check_on_device(t, op, arg);
  ENGINE_CHECK(t.dtype() == DType::f32, op, ": expected an f32 '", arg, "' on the GPU, got ",
               t.describe());
}
void check_index_input(const Tensor& t, const char* op, const char* arg) {
  check_on_device(t, op, arg);
  ENGINE_CHECK(t.dtype() == DType::i64 || t.dtype() == DType::i32, op, ": '", arg,
               "' must be i64 or i32, got ", t.describe());
}
void check_loss_grad(const Tensor& g, const char* op) {
  check_on_device(g, op, "g");
  ENGINE_CHECK(g.numel() == 1 && g.dtype() == DType::f32, op,
               ": expected a one-element floating-point loss gradient (f32 on the GPU), got ",
               g.describe());
}
void check_router_width(int64_t E, const char* op, const Tensor& t) {
  ENGINE_CHECK(E >= 1 && E <= kMaxRouterExperts, op, ": E = ", E, " experts in ", t.describe(),
               "; the CUDA kernel handles 1..", kMaxRouterExperts);
}

// Calls f(T{}) with T = float or __nv_bfloat16 for an f32 / bf16 tensor.
template <class F>
void visit_f32_bf16(DType t, F&& f) {
  if (t == DType::bf16)
    f(__nv_bfloat16{});
  else
    f(float{});
}
template <class T>
const T* ptr(const Tensor& t) {
  return static_cast<const T*>(t.raw_data());
}
template <class T>
T* mut_ptr(const Tensor& t) {
  return static_cast<T*>(t.raw_data());
}

int next_pow2(int64_t n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Lanes per token row and blocks for the per-token kernels.
struct RowGeom {
  int W = 1, per = 1, rows_per_block = kRowThreads;
  int blocks = 0;
};
RowGeom row_geom(int64_t rows, int64_t E) {
  RowGeom g;
  g.W = std::min(32, next_pow2(E));
  g.per = int((E + g.W - 1) / g.W);
  g.rows_per_block = kRowThreads / g.W;
  g.blocks = int((rows + g.rows_per_block - 1) / g.rows_per_block);
  return g;
}

// ---------------------------------------------------------------------------------------------
// Router softmax / backward / z-loss: W lanes per token row, values in registers. 31-42 regs
// (sm_80/sm_90), no spills.

// Loads a row into registers (-inf padding) and returns its softmax shift: the max when finite,
// else 0 (like the CPU: a row of -inf gives NaN, +inf flows through).
template <class T>
__device__ __forceinline__ float load_row(const T* x, int64_t row, bool live, int E, int W,
                                          int lane, float (&v)[kMaxPerLane]) {
  float m = -CUDART_INF_F;
  UNROLL
  for (int q = 0; q < kMaxPerLane; ++q) {
    const int e = lane + W * q;
    v[q] = (live && e < E) ? to_f32(x[row * E + e]) : -CUDART_INF_F;
    m = fmaxf(m, v[q]);
  }
  m = seg_max(m, W);
  return isfinite(m) ? m : 0.0f;
}

template <class T>
__global__ void __launch_bounds__(kRowThreads)
    router_softmax_kernel(const T* x, float* y, int64_t rows, int E, int W) {
  const int lane = threadIdx.x % W;
  const int64_t row = int64_t(blockIdx.x) * (kRowThreads / W) + threadIdx.x / W;
  const bool live = row < rows;
  float v[kMaxPerLane];
  const float c = load_row(x, row, live, E, W, lane, v);
  float s = 0.0f;
  UNROLL
  for (int q = 0; q < kMaxPerLane; ++q) {
    v[q] = expf(v[q] - c);  // padding: exp(-inf) = 0
    s += v[q];
  }
  s = seg_sum(s, W);
  const float inv = 1.0f / s;
  UNROLL
  for (int q = 0; q < kMaxPerLane; ++q) {
    const int e = lane + W * q;
    if (live && e < E) y[row * E + e] = v[q] * inv;
  }
}

__global__ void __launch_bounds__(kRowThreads)
    router_softmax_backward_kernel(const float* g, const float* p, float* dx, int64_t rows, int E,
                                   int W) {
  const int lane = threadIdx.x % W;
  const int64_t row = int64_t(blockIdx.x) * (kRowThreads / W) + threadIdx.x / W;
  const bool live = row < rows;
  float gv[kMaxPerLane], pv[kMaxPerLane];
  float dot = 0.0f;
  UNROLL
  for (int q = 0; q < kMaxPerLane; ++q) {
    const int e = lane + W * q;
    const bool ok = live && e < E;
    gv[q] = ok ? g[row * E + e] : 0.0f;
    pv[q] = ok ? p[row * E + e] : 0.0f;
    dot += gv[q] * pv[q];
  }
  dot = seg_sum(dot, W);
  UNROLL
  for (int q = 0; q < kMaxPerLane; ++q) {
    const int e = lane + W * q;
    if (live && e < E) dx[row * E + e] = pv[q] * (gv[q] - dot);
  }
}

// lse[row] = logsumexp of the row.
template <class T>
__global__ void __launch_bounds__(kRowThreads)
    row_logsumexp_kernel(const T* x, float* lse, int64_t rows, int E, int W) {
  const int lane = threadIdx.x % W;
  const int64_t row = int64_t(blockIdx.x) * (kRowThreads / W) + threadIdx.x / W;
  const bool live = row < rows;
  float v[kMaxPerLane];
  const float c = load_row(x, row, live, E, W, lane, v);
  float s = 0.0f;
  UNROLL
  for (int q = 0; q < kMaxPerLane; ++q) s += expf(v[q] - c);
  s = seg_sum(s, W);
  if (live && lane == 0) lse[row] = c + logf(s);
}

// out = (Σ_t lse_t²) / T, summed in a fixed order in double by one block of 256 threads.
__global__ void __launch_bounds__(256)
    z_loss_reduce_kernel(const float* lse, int64_t rows, float* out) {
  SHARED(double, part, [256]);
  double s = 0.0;
  for (int64_t t = threadIdx.x; t < rows; t += blockDim.x) s += double(lse[t]) * double(lse[t]);
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = 128; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = float(part[0] / double(rows));
}

template <class T>
__global__ void __launch_bounds__(kRowThreads)
    z_loss_backward_kernel(const float* g, const T* x, float* dx, int64_t rows, int E, int W) {
  const int lane = threadIdx.x % W;
  const int64_t row = int64_t(blockIdx.x) * (kRowThreads / W) + threadIdx.x / W;
  const bool live = row < rows;
  float v[kMaxPerLane];
  const float c = load_row(x, row, live, E, W, lane, v);
  float s = 0.0f;
  UNROLL
  for (int q = 0; q < kMaxPerLane; ++q) {
    v[q] = expf(v[q] - c);
    s += v[q];
  }
  s = seg_sum(s, W);
  const float lse = c + logf(s);
  const float scale =
      float(double(g[0]) * 2.0 / double(rows)) * lse / s;  // g · 2 lse / T · softmax
  UNROLL
  for (int q = 0; q < kMaxPerLane; ++q) {
    const int e = lane + W * q;
    if (live && e < E) dx[row * E + e] = v[q] * scale;
  }
}

// ---------------------------------------------------------------------------------------------
// Token choice: k rounds of a segment-wide argmax over 64-bit (order key, ~index) values. 48 regs.

template <class T>
__global__ void __launch_bounds__(kRowThreads)
    topk_per_token_kernel(const T* probs, int64_t* ids, T* gates, int64_t rows, int E, int k,
                          int W) {
  const int lane = threadIdx.x % W;
  const int64_t row = int64_t(blockIdx.x) * (kRowThreads / W) + threadIdx.x / W;
  const bool live = row < rows;
  uint32_t key[kMaxPerLane];
  unsigned valid = 0;
  UNROLL
  for (int q = 0; q < kMaxPerLane; ++q) {
    const int e = lane + W * q;
    const bool ok = live && e < E;
    key[q] = ok ? order_key(to_f32(probs[row * E + e])) : 0u;
    valid |= unsigned(ok) << q;
  }
  for (int s = 0; s < k; ++s) {
    // Larger key first; on equal keys the larger ~index, i.e. the lower expert.
    unsigned long long best = 0;
    UNROLL
    for (int q = 0; q < kMaxPerLane; ++q) {
      const unsigned long long cand =
          (static_cast<unsigned long long>(key[q]) << 32) | (0xffffffffu - uint32_t(lane + W * q));
      if ((valid >> q) & 1u) best = cand > best ? cand : best;
    }
    for (int o = W / 2; o > 0; o >>= 1) {
      const unsigned long long other = __shfl_xor_sync(kFull, best, o, W);
      best = other > best ? other : best;
    }
    if (live) {
      const int e = int(0xffffffffu - uint32_t(best & 0xffffffffull));
      if (e % W == lane) valid &= ~(1u << (e / W));
      if (lane == 0) {
        ids[row * k + s] = e;
        gates[row * k + s] = probs[row * E + e];
      }
    }
  }
}

// dprobs[t, ids[t, s]] += dgates[t, s], s ascending; one thread per token (out zeroed). 24-26 regs.
template <class I>
__global__ void topk_per_token_backward_kernel(const float* dg, const I* ids, float* out,
                                               int64_t rows, int k, int E) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= rows) return;
  for (int s = 0; s < k; ++s) out[t * E + int64_t(ids[t * k + s])] += dg[t * k + s];
}

// ---------------------------------------------------------------------------------------------
// Expert choice: one block per (group, expert) sorts the column's (~key, token) pairs. 32 regs;
// dynamic shared memory 8·pow2(t) bytes.

template <class T>
__global__ void __launch_bounds__(1024)
    topk_per_expert_kernel(const T* probs, int64_t* ids, T* gates, int64_t t, int E, int C,
                           int n2) {
  DYNAMIC_SHARED(unsigned long long, keys);
  const int64_t g = blockIdx.x / E;
  const int e = int(blockIdx.x % E);
  const T* col = probs + g * t * E + e;
  for (int i = threadIdx.x; i < n2; i += blockDim.x)
    keys[i] =
        i < t ? (static_cast<unsigned long long>(~order_key(to_f32(col[int64_t(i) * E]))) << 32) |
                    static_cast<unsigned long long>(i)
              : ~0ull;  // padding sorts last
  __syncthreads();
  block_bitonic_sort(keys, n2);
  const int64_t out0 = (g * E + e) * int64_t(C);
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const int64_t i = int64_t(keys[c] & 0xffffffffull);
    ids[out0 + c] = g * t + i;
    gates[out0 + c] = col[i * E];
  }
}

// dprobs[g·t + i, e] += dgates[g, e, c] for token g·t + i, c ascending; one thread per (g, e)
// so no two threads touch one output. 22-26 regs.
template <class I>
__global__ void topk_per_expert_backward_kernel(const float* dg, const I* ids, float* out,
                                                int64_t GE, int E, int C) {
  const int64_t ge = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ge >= GE) return;
  const int e = int(ge % E);
  for (int c = 0; c < C; ++c) out[int64_t(ids[ge * C + c]) * E + e] += dg[ge * C + c];
}

// ---------------------------------------------------------------------------------------------
// Exclusive scan of n ints by one block: out[i] = Σ_{i' < i} in[i'], out[n] = total.
// 1024 threads × 8 items per chunk, warp-shuffle scans, a carry between chunks. 32 regs, 128 B
// static shared memory.

constexpr int kScanThreads = 1024, kScanItems = 8;

__global__ void __launch_bounds__(kScanThreads)
    exclusive_scan_kernel(const int* in, int* out, int64_t n) {
  SHARED(int, warp_total, [32]);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  int carry = 0;
  for (int64_t base = 0; base < n; base += int64_t(kScanThreads) * kScanItems) {
    const int64_t start = base + int64_t(tid) * kScanItems;
    int v[kScanItems], local = 0;
    UNROLL
    for (int q = 0; q < kScanItems; ++q) {
      v[q] = start + q < n ? in[start + q] : 0;
      local += v[q];
    }
    int incl = local;
    UNROLL
    for (int o = 1; o < 32; o <<= 1) {
      const int up = __shfl_up_sync(kFull, incl, o);
      if (lane >= o) incl += up;
    }
    if (lane == 31) warp_total[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      int w = warp_total[lane];
      UNROLL
      for (int o = 1; o < 32; o <<= 1) {
        const int up = __shfl_up_sync(kFull, w, o);
        if (lane >= o) w += up;
      }
      warp_total[lane] = w;
    }
    __syncthreads();
    int run = carry + (warp ? warp_total[warp - 1] : 0) + incl - local;
    UNROLL
    for (int q = 0; q < kScanItems; ++q) {
      if (start + q < n) out[start + q] = run;
      run += v[q];
    }
    carry += warp_total[31];
    __syncthreads();  // warp_total is rewritten by the next chunk
  }
  if (tid == 0) out[n] = carry;
}

void exclusive_scan(const int* in, int* out, int64_t n) {
  LAUNCH(exclusive_scan_kernel, 1, kScanThreads, 0, cu_stream())(in, out, n);
  CHECK_LAUNCH("exclusive_scan_kernel");
}

// ---------------------------------------------------------------------------------------------
// make_dispatch: stable counting sort by expert without atomics.

constexpr int kDispatchChunk = 256;

// Block b: rank[a] = #{a' < a in the block : id[a'] = id[a]}; the last assignment of each expert
// in the block writes the block's count into cnt[e · nb + b] (zeroed before). 20 regs, 1 KB smem.
template <class I>
__global__ void __launch_bounds__(kDispatchChunk)
    dispatch_rank_kernel(const I* ids, int64_t A, int64_t nb, int* cnt, int* rank) {
  SHARED(int, bin, [kDispatchChunk]);
  const int tid = threadIdx.x;
  const int64_t a = int64_t(blockIdx.x) * kDispatchChunk + tid;
  const int mine = a < A ? int(ids[a]) : -1;
  bin[tid] = mine;
  __syncthreads();
  if (a < A) {
    int before = 0;
    bool last = true;
    for (int i = 0; i < kDispatchChunk; ++i) {
      const int b = bin[i];  // the same address for every thread: a broadcast
      before += (i < tid) & (b == mine);
      last = last && !((i > tid) & (b == mine));
    }
    rank[a] = before;
    if (last) cnt[int64_t(mine) * nb + blockIdx.x] = before + 1;
  }
}

// perm[base[e·nb + b] + rank[a]] = a, rows likewise = a / k. 18 regs.
template <class I>
__global__ void dispatch_scatter_kernel(const I* ids, int64_t A, int64_t nb, int64_t k,
                                        const int* base, const int* rank, int64_t* perm,
                                        int64_t* rows) {
  const int64_t a = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= A) return;
  const int64_t pos = int64_t(base[int64_t(ids[a]) * nb + a / kDispatchChunk]) + rank[a];
  perm[pos] = a;
  rows[pos] = a / k;
}

__global__ void dispatch_offsets_kernel(const int* base, int64_t E, int64_t nb, int64_t A,
                                        int64_t* counts, int64_t* offsets) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e < E) {
    const int64_t lo = base[e * nb], hi = e + 1 < E ? int64_t(base[(e + 1) * nb]) : A;
    offsets[e] = lo;
    counts[e] = hi - lo;
  }
  if (e == 0) offsets[E] = A;
}

// ---------------------------------------------------------------------------------------------
// Deterministic gather-sum (combine_rows, permute_rows_backward): a CSR of source rows by
// destination, each list sorted, then one warp per destination.

template <class I>
__global__ void histogram_kernel(const I* rows, int64_t A, int* hist) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < A) atomicAdd(&hist[int64_t(rows[j])], 1);
}

template <class I>
__global__ void fill_lists_kernel(const I* rows, int64_t A, int* cursor, int* list) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < A) list[atomicAdd(&cursor[int64_t(rows[j])], 1)] = int(j);
}

// Insertion sort of each destination's list (its length is k, or at most E, for the routers).
__global__ void sort_lists_kernel(const int* offs, int64_t N, int* list) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const int beg = offs[n], end = offs[n + 1];
  for (int i = beg + 1; i < end; ++i) {
    const int v = list[i];
    int p = i;
    for (; p > beg && list[p - 1] > v; --p) list[p] = list[p - 1];
    list[p] = v;
  }
}

constexpr int kTile = 4;  // vector chunks per lane held in registers at once

// out[n] = Σ_{i in list of n} w_j · y[j] (w = 1 without gates), j ascending, fp32 registers.
// One warp per destination row, VEC-element packs (16 bytes when rows allow). 48-50 regs
// (f32 packs of 4), 64 (bf16 packs of 8), no spills.
template <class T, int VEC, bool kGates>
__global__ void __launch_bounds__(256)
    gather_sum_kernel(const T* y, const int* list, const int* offs, const float* gates, int64_t N,
                      int64_t D, T* out) {
  const int lane = threadIdx.x & 31;
  const int64_t n = int64_t(blockIdx.x) * 8 + (threadIdx.x >> 5);
  if (n >= N) return;  // warp-uniform; no barriers below
  const int beg = offs[n], end = offs[n + 1];
  const int64_t chunks = D / VEC;
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * kTile) {
    float acc[kTile][VEC];
    UNROLL
    for (int q = 0; q < kTile; ++q) {
      UNROLL
      for (int u = 0; u < VEC; ++u) acc[q][u] = 0.0f;
    }
    for (int i = beg; i < end; ++i) {
      const int64_t j = list[i];
      const float w = kGates ? gates[j] : 1.0f;
      const T* yr = y + j * D;
      UNROLL
      for (int q = 0; q < kTile; ++q) {
        const int64_t c = c0 + 32 * q;
        if (c < chunks) {
          float v[VEC];
          load_pack<T, VEC>(yr + c * VEC, v);
          UNROLL
          for (int u = 0; u < VEC; ++u) acc[q][u] += kGates ? w * v[u] : v[u];
        }
      }
    }
    UNROLL
    for (int q = 0; q < kTile; ++q) {
      const int64_t c = c0 + 32 * q;
      if (c < chunks) store_pack<T, VEC>(out + n * D + c * VEC, acc[q]);
    }
  }
}

// dy[j] = gate_j · dout[rows[j]], dgates[j] = <y[j], dout[rows[j]]>: one warp per j. 32-40 regs.
template <class T, int VEC, class I>
__global__ void __launch_bounds__(256)
    combine_backward_kernel(const T* dout, const T* y, const I* rows, const float* gates, int64_t A,
                            int64_t D, T* dy, float* dg) {
  const int lane = threadIdx.x & 31;
  const int64_t j = int64_t(blockIdx.x) * 8 + (threadIdx.x >> 5);
  if (j >= A) return;  // warp-uniform: the shuffles below involve only this warp's lanes
  const T* o = dout + int64_t(rows[j]) * D;
  const T* yr = y + j * D;
  const float w = gates[j];
  float dot = 0.0f;
  for (int64_t c = lane; c < D / VEC; c += 32) {
    float ov[VEC], yv[VEC], d[VEC];
    load_pack<T, VEC>(o + c * VEC, ov);
    load_pack<T, VEC>(yr + c * VEC, yv);
    UNROLL
    for (int u = 0; u < VEC; ++u) {
      dot += yv[u] * ov[u];
      d[u] = w * ov[u];
    }
    store_pack<T, VEC>(dy + j * D + c * VEC, d);
  }
  for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(kFull, dot, off);
  if (lane == 0) dg[j] = dot;
}

// Row gather of words: out[j] = x[rows[j]], W lanes per row (threadIdx.x), rows along y.
// 16-26 regs.
template <class Word, class I>
__global__ void __launch_bounds__(256)
    gather_rows_kernel(const Word* x, const I* rows, Word* out, int64_t A, int64_t wpr) {
  for (int64_t j = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; j < A;
       j += int64_t(gridDim.x) * blockDim.y) {
    const Word* src = x + int64_t(rows[j]) * wpr;
    Word* dst = out + j * wpr;
    for (int64_t c = threadIdx.x; c < wpr; c += blockDim.x) dst[c] = src[c];
  }
}

// ---------------------------------------------------------------------------------------------
// load_balance_stats

constexpr int kLbThreads = 256, kLbRows = 64;  // rows per block of the partial column sums

// partial[b · E + e] = Σ of probs[r, e] over the block's kLbRows rows, lanes of rows combined in
// a fixed order. 32-40 regs, 1 KB smem.
template <class T>
__global__ void __launch_bounds__(kLbThreads)
    lb_partial_kernel(const T* probs, int64_t rows, int E, float* partial) {
  SHARED(float, part, [kLbThreads]);
  const int cols = E < kLbThreads ? E : kLbThreads, lanes = kLbThreads / cols;
  const int tid = threadIdx.x, col = tid % cols, lane = tid / cols;
  const int64_t r0 = int64_t(blockIdx.x) * kLbRows, r1 = min(rows, r0 + kLbRows);
  for (int e0 = 0; e0 < E; e0 += cols) {  // the same trip count for every thread
    const int e = e0 + col;
    float s = 0.0f;
    if (lane < lanes && e < E)
      for (int64_t r = r0 + lane; r < r1; r += lanes) s += to_f32(probs[r * E + e]);
    part[tid] = s;
    __syncthreads();
    if (lane == 0 && e < E) {
      float tot = 0.0f;
      for (int l = 0; l < lanes; ++l) tot += part[l * cols + col];
      partial[int64_t(blockIdx.x) * E + e] = tot;
    }
    __syncthreads();
  }
}

// f, P and the loss from the partials and counts; one block, double accumulation. 40 regs.
__global__ void __launch_bounds__(256)
    lb_finalize_kernel(const float* partial, int64_t nb, const int* counts, int64_t A, int64_t rows,
                       int E, float* f, float* P, float* loss) {
  SHARED(double, part, [256]);
  double acc = 0.0;
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    double col = 0.0;
    for (int64_t b = 0; b < nb; ++b) col += double(partial[b * E + e]);
    const double pe = col / double(rows), fe = A ? double(counts[e]) / double(A) : 0.0;
    f[e] = float(fe);
    P[e] = float(pe);
    acc += fe * pe;
  }
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int w = 128; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) loss[0] = float(double(E) * part[0]);
}

__global__ void lb_backward_kernel(const float* g, const float* f, int64_t n, int E, float scale,
                                   float* out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = g[0] * scale * f[i % E];
}

// ---------------------------------------------------------------------------------------------
// dispatch_softmax over the token axis of [B, N, S]: a 32-slot × 8-row-group block. 32 regs, 1 KB
// smem.

constexpr int kColSlots = 32, kColGroups = 8;

template <class T>
__global__ void __launch_bounds__(kColSlots* kColGroups)
    dispatch_softmax_kernel(const T* x, float* y, int64_t N, int64_t S) {
  SHARED(float, red, [kColGroups][kColSlots]);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t s = int64_t(blockIdx.x) * kColSlots + tx;
  const bool live = s < S;
  const T* xc = x + int64_t(blockIdx.y) * N * S + s;
  float* yc = y + int64_t(blockIdx.y) * N * S + s;
  float m = -CUDART_INF_F;
  if (live)
    for (int64_t n = ty; n < N; n += kColGroups) m = fmaxf(m, to_f32(xc[n * S]));
  red[ty][tx] = m;
  __syncthreads();
  m = red[0][tx];
  for (int q = 1; q < kColGroups; ++q) m = fmaxf(m, red[q][tx]);
  const float c = isfinite(m) ? m : 0.0f;
  float sum = 0.0f;
  if (live)
    for (int64_t n = ty; n < N; n += kColGroups) sum += expf(to_f32(xc[n * S]) - c);
  __syncthreads();  // everyone has read the maxima
  red[ty][tx] = sum;
  __syncthreads();
  sum = 0.0f;
  for (int q = 0; q < kColGroups; ++q) sum += red[q][tx];
  const float inv = 1.0f / sum;
  if (live)
    for (int64_t n = ty; n < N; n += kColGroups) yc[n * S] = expf(to_f32(xc[n * S]) - c) * inv;
}

__global__ void __launch_bounds__(kColSlots* kColGroups)
    dispatch_softmax_backward_kernel(const float* g, const float* y, float* dx, int64_t N,
                                     int64_t S) {
  SHARED(float, red, [kColGroups][kColSlots]);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t s = int64_t(blockIdx.x) * kColSlots + tx;
  const bool live = s < S;
  const int64_t off = int64_t(blockIdx.y) * N * S + s;
  float dot = 0.0f;
  if (live)
    for (int64_t n = ty; n < N; n += kColGroups) dot += g[off + n * S] * y[off + n * S];
  red[ty][tx] = dot;
  __syncthreads();
  dot = 0.0f;
  for (int q = 0; q < kColGroups; ++q) dot += red[q][tx];
  if (live)
    for (int64_t n = ty; n < N; n += kColGroups)
      dx[off + n * S] = y[off + n * S] * (g[off + n * S] - dot);
}

// ---------------------------------------------------------------------------------------------
// Host helpers

int blocks_for(int64_t n, int threads) { return int((n + threads - 1) / threads); }

// The VEC of 16-byte packs when every row start and pointer is aligned, else 1.
template <class T>
int vec_width(int64_t D, std::initializer_list<const void*> ptrs) {
  constexpr int v = int(16 / sizeof(T));
  if (D % v) return 1;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16) return 1;
  return v;
}

Shape with_rows(const Shape& s, int64_t n) {
  Shape out = s;
  out[0] = n;
  return out;
}

// CSR of source rows by destination: offs [N + 1], list [A] with each segment ascending.
struct Lists {
  Tensor offs, list;
};
template <class I>
Lists build_lists(const I* rows, int64_t A, int64_t N) {
  Tensor hist = Tensor::zeros({N}, DType::i32, device());
  Lists L{Tensor::empty({N + 1}, DType::i32, device()),
          Tensor::empty({std::max<int64_t>(A, 1)}, DType::i32, device())};
  if (A > 0) {
    LAUNCH(histogram_kernel<I>, blocks_for(A, 256), 256, 0, cu_stream())
    (rows, A, mut_ptr<int>(hist));
    CHECK_LAUNCH("histogram_kernel");
  }
  exclusive_scan(ptr<int>(hist), mut_ptr<int>(L.offs), N);
  if (A > 0) {
    CUDA_CHECK(cudaMemcpyAsync(hist.raw_data(), L.offs.raw_data(), size_t(N) * sizeof(int),
                               cudaMemcpyDeviceToDevice, cu_stream()));
    LAUNCH(fill_lists_kernel<I>, blocks_for(A, 256), 256, 0, cu_stream())
    (rows, A, mut_ptr<int>(hist), mut_ptr<int>(L.list));
    CHECK_LAUNCH("fill_lists_kernel");
    LAUNCH(sort_lists_kernel, blocks_for(N, 128), 128, 0, cu_stream())
    (ptr<int>(L.offs), N, mut_ptr<int>(L.list));
    CHECK_LAUNCH("sort_lists_kernel");
  }
  return L;
}

template <class T, bool kGates>
void launch_gather_sum(const Tensor& y, const Lists& L, const float* gates, int64_t N, int64_t D,
                       Tensor& out) {
  const T* yp = ptr<T>(y);
  T* op = mut_ptr<T>(out);
  const int blocks = blocks_for(N, 8);
  if (vec_width<T>(D, {yp, op}) > 1)
    LAUNCH((gather_sum_kernel<T, int(16 / sizeof(T)), kGates>), blocks, 256, 0, cu_stream())
    (yp, ptr<int>(L.list), ptr<int>(L.offs), gates, N, D, op);
  else
    LAUNCH((gather_sum_kernel<T, 1, kGates>), blocks, 256, 0, cu_stream())
    (yp, ptr<int>(L.list), ptr<int>(L.offs), gates, N, D, op);
  CHECK_LAUNCH("gather_sum_kernel");
}

// Shared by combine_rows (gates) and permute_rows_backward (no gates).
Tensor gather_sum(const Tensor& y, const Tensor& rows, const Tensor& gates, int64_t N,
                  const char* op) {
  const int64_t A = rows.numel();
  Tensor out = Tensor::empty(with_rows(y.shape(), N), y.dtype(), device());
  if (out.numel() == 0) return out;
  const int64_t D = out.numel() / N;
  Lists L = rows.dtype() == DType::i64 ? build_lists(ptr<int64_t>(rows), A, N)
                                       : build_lists(ptr<int32_t>(rows), A, N);
  const float* gp = gates.defined() ? ptr<float>(gates) : nullptr;
  visit_f32_bf16(y.dtype(), [&](auto z) {
    using T = decltype(z);
    if (gp)
      launch_gather_sum<T, true>(y, L, gp, N, D, out);
    else
      launch_gather_sum<T, false>(y, L, nullptr, N, D, out);
  });
  (void)op;
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points

Tensor router_softmax(const Tensor& logits) {
  const char* op = "router_softmax";
  check_float_input(logits, op, "logits");
  engine::check_dim(logits, 2, op, "logits");
  const int64_t T = logits.size(0), E = logits.size(1);
  check_router_width(E, op, logits);
  Tensor out = Tensor::empty({T, E}, DType::f32, device());
  if (T == 0) return out;
  const RowGeom g = row_geom(T, E);
  visit_f32_bf16(logits.dtype(), [&](auto z) {
    using T_ = decltype(z);
    LAUNCH(router_softmax_kernel<T_>, g.blocks, kRowThreads, 0, cu_stream())
    (ptr<T_>(logits), mut_ptr<float>(out), T, int(E), g.W);
  });
  CHECK_LAUNCH("router_softmax_kernel");
  return out;
}

Tensor router_softmax_backward(const Tensor& g, const Tensor& probs) {
  const char* op = "router_softmax_backward";
  check_f32_input(g, op, "g");
  check_f32_input(probs, op, "probs");
  engine::check_dim(g, 2, op, "g");
  engine::check_same_shape(g, probs, op);
  const int64_t T = g.size(0), E = g.size(1);
  check_router_width(E, op, g);
  Tensor out = Tensor::empty({T, E}, DType::f32, device());
  if (T == 0) return out;
  const RowGeom geo = row_geom(T, E);
  LAUNCH(router_softmax_backward_kernel, geo.blocks, kRowThreads, 0, cu_stream())
  (ptr<float>(g), ptr<float>(probs), mut_ptr<float>(out), T, int(E), geo.W);
  CHECK_LAUNCH("router_softmax_backward_kernel");
  return out;
}

TokenChoice topk_per_token(const Tensor& probs, int64_t k) {
  const char* op = "topk_per_token";
  check_float_input(probs, op, "probs");
  engine::check_dim(probs, 2, op, "probs");
  const int64_t T = probs.size(0), E = probs.size(1);
  ENGINE_CHECK(k >= 1 && k <= E, op, ": k = ", k, " is out of range [1, ", E, "] for probs ",
               probs.describe());
  check_router_width(E, op, probs);
  TokenChoice tc{Tensor::empty({T, k}, DType::i64, device()),
                 Tensor::empty({T, k}, probs.dtype(), device())};
  if (T == 0) return tc;
  const RowGeom g = row_geom(T, E);
  visit_f32_bf16(probs.dtype(), [&](auto z) {
    using T_ = decltype(z);
    LAUNCH(topk_per_token_kernel<T_>, g.blocks, kRowThreads, 0, cu_stream())
    (ptr<T_>(probs), mut_ptr<int64_t>(tc.expert_ids), mut_ptr<T_>(tc.gates), T, int(E), int(k),
     g.W);
  });
  CHECK_LAUNCH("topk_per_token_kernel");
  return tc;
}

Tensor topk_per_token_backward(const Tensor& dgates, const Tensor& expert_ids, int64_t E) {
  const char* op = "topk_per_token_backward";
  check_f32_input(dgates, op, "dgates");
  check_index_input(expert_ids, op, "expert_ids");
  engine::check_dim(dgates, 2, op, "dgates");
  ENGINE_CHECK(expert_ids.shape() == dgates.shape(), op, ": expert_ids ", expert_ids.describe(),
               " does not match dgates ", dgates.describe());
  ENGINE_CHECK(E >= 1, op, ": num_experts must be >= 1, got ", E);
  check_indices(expert_ids, E, op);
  const int64_t T = dgates.size(0), k = dgates.size(1);
  Tensor out = Tensor::zeros({T, E}, DType::f32, device());
  if (T == 0 || k == 0) return out;
  if (expert_ids.dtype() == DType::i64)
    LAUNCH(topk_per_token_backward_kernel<int64_t>, blocks_for(T, 128), 128, 0, cu_stream())
    (ptr<float>(dgates), ptr<int64_t>(expert_ids), mut_ptr<float>(out), T, int(k), int(E));
  else
    LAUNCH(topk_per_token_backward_kernel<int32_t>, blocks_for(T, 128), 128, 0, cu_stream())
    (ptr<float>(dgates), ptr<int32_t>(expert_ids), mut_ptr<float>(out), T, int(k), int(E));
  CHECK_LAUNCH("topk_per_token_backward_kernel");
  return out;
}

ExpertChoice topk_per_expert(const Tensor& probs, int64_t C) {
  const char* op = "topk_per_expert";
  check_float_input(probs, op, "probs");
  engine::check_dim(probs, 3, op, "probs");
  const int64_t G = probs.size(0), t = probs.size(1), E = probs.size(2);
  ENGINE_CHECK(C >= 1 && C <= t, op, ": capacity C = ", C, " is out of range [1, ", t,
               "] (tokens per group) for probs ", probs.describe());
  ENGINE_CHECK(t <= kMaxGroupTokens, op, ": ", t, " tokens per group in ", probs.describe(),
               "; the CUDA kernel sorts at most ", kMaxGroupTokens, " per group in shared memory");
  ExpertChoice ec{Tensor::empty({G, E, C}, DType::i64, device()),
                  Tensor::empty({G, E, C}, probs.dtype(), device())};
  if (G * E == 0) return ec;
  const int n2 = next_pow2(t);
  const int threads = std::clamp(n2 / 2, 32, 1024);
  const int smem = n2 * int(sizeof(unsigned long long));
  visit_f32_bf16(probs.dtype(), [&](auto z) {
    using T_ = decltype(z);
    if (smem > 48 * 1024)
      CUDA_CHECK(cudaFuncSetAttribute(topk_per_expert_kernel<T_>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    LAUNCH(topk_per_expert_kernel<T_>, int(G * E), threads, smem, cu_stream())
    (ptr<T_>(probs), mut_ptr<int64_t>(ec.token_ids), mut_ptr<T_>(ec.gates), t, int(E), int(C), n2);
  });
  CHECK_LAUNCH("topk_per_expert_kernel");
  return ec;
}

Tensor topk_per_expert_backward(const Tensor& dgates, const Tensor& token_ids, int64_t t) {
  const char* op = "topk_per_expert_backward";
  check_f32_input(dgates, op, "dgates");
  check_index_input(token_ids, op, "token_ids");
  engine::check_dim(dgates, 3, op, "dgates");
  ENGINE_CHECK(token_ids.shape() == dgates.shape(), op, ": token_ids ", token_ids.describe(),
               " does not match dgates ", dgates.describe());
  ENGINE_CHECK(t >= 1, op, ": tokens_per_group must be >= 1, got ", t);
  const int64_t G = dgates.size(0), E = dgates.size(1), C = dgates.size(2);
  const BadIndex bad = find_bad_index(token_ids, t, E * C, t);
  if (bad.pos >= 0) {
    const int64_t g = bad.pos / (E * C);
    ENGINE_FAIL(op, ": token index ", bad.value, " at position ", bad.pos, " is out of range [",
                g * t, ", ", (g + 1) * t, ") of group ", g);
  }
  Tensor out = Tensor::zeros({G, t, E}, DType::f32, device());
  if (G * E * C == 0) return out;
  if (token_ids.dtype() == DType::i64)
    LAUNCH(topk_per_expert_backward_kernel<int64_t>, blocks_for(G * E, 128), 128, 0, cu_stream())
    (ptr<float>(dgates), ptr<int64_t>(token_ids), mut_ptr<float>(out), G * E, int(E), int(C));
  else
    LAUNCH(topk_per_expert_backward_kernel<int32_t>, blocks_for(G * E, 128), 128, 0, cu_stream())
    (ptr<float>(dgates), ptr<int32_t>(token_ids), mut_ptr<float>(out), G * E, int(E), int(C));
  CHECK_LAUNCH("topk_per_expert_backward_kernel");
  return out;
}

DispatchPlan make_dispatch(const Tensor& expert_ids, int64_t E) {
  const char* op = "make_dispatch";
  check_index_input(expert_ids, op, "expert_ids");
  ENGINE_CHECK(expert_ids.dim() == 1 || expert_ids.dim() == 2, op,
               ": expert_ids must be [A] or [T, k], got ", expert_ids.describe());
  ENGINE_CHECK(E >= 1, op, ": num_experts must be >= 1, got ", E);
  const int64_t A = expert_ids.numel();
  ENGINE_CHECK(A < (int64_t(1) << 31), op, ": ", A,
               " assignments; the CUDA kernel counts in int32");
  check_indices(expert_ids, E, op);
  const int64_t k = expert_ids.dim() == 2 ? expert_ids.size(1) : 1;
  const int64_t nb = std::max<int64_t>(1, (A + kDispatchChunk - 1) / kDispatchChunk);
  DispatchPlan p{
      Tensor::empty({E}, DType::i64, device()), Tensor::empty({E + 1}, DType::i64, device()),
      Tensor::empty({A}, DType::i64, device()), Tensor::empty({A}, DType::i64, device())};
  Tensor cnt = Tensor::zeros({E * nb}, DType::i32, device());
  Tensor base = Tensor::empty({E * nb + 1}, DType::i32, device());
  Tensor rank = Tensor::empty({std::max<int64_t>(A, 1)}, DType::i32, device());
  auto run = [&](auto z) {
    using I = decltype(z);
    const I* ids = ptr<I>(expert_ids);
    if (A > 0) {
      LAUNCH(dispatch_rank_kernel<I>, int(nb), kDispatchChunk, 0, cu_stream())
      (ids, A, nb, mut_ptr<int>(cnt), mut_ptr<int>(rank));
      CHECK_LAUNCH("dispatch_rank_kernel");
    }
    exclusive_scan(ptr<int>(cnt), mut_ptr<int>(base), E * nb);
    if (A > 0) {
      LAUNCH(dispatch_scatter_kernel<I>, blocks_for(A, 256), 256, 0, cu_stream())
      (ids, A, nb, k, ptr<int>(base), ptr<int>(rank), mut_ptr<int64_t>(p.perm),
       mut_ptr<int64_t>(p.rows));
      CHECK_LAUNCH("dispatch_scatter_kernel");
    }
    LAUNCH(dispatch_offsets_kernel, blocks_for(E, 256), 256, 0, cu_stream())
    (ptr<int>(base), E, nb, A, mut_ptr<int64_t>(p.counts), mut_ptr<int64_t>(p.offsets));
    CHECK_LAUNCH("dispatch_offsets_kernel");
  };
  if (expert_ids.dtype() == DType::i64)
    run(int64_t{});
  else
    run(int32_t{});
  return p;
}

Tensor permute_rows(const Tensor& x, const Tensor& rows) {
  const char* op = "permute_rows";
  check_on_device(x, op, "x");
  check_index_input(rows, op, "rows");
  ENGINE_CHECK(x.dim() >= 1, op, ": x must have a row dimension, got ", x.describe());
  const int64_t N = x.size(0), A = rows.numel();
  check_indices(rows, N, op);
  Tensor out = Tensor::empty(with_rows(x.shape(), A), x.dtype(), device());
  if (out.numel() == 0) return out;
  const int64_t row_bytes = (x.numel() / N) * int64_t(x.element_size());
  // The widest word that divides the row and both base addresses.
  int64_t wb = 16;
  while (wb > 1 && (row_bytes % wb || reinterpret_cast<uintptr_t>(x.raw_data()) % wb ||
                    reinterpret_cast<uintptr_t>(out.raw_data()) % wb))
    wb >>= 1;
  const int64_t wpr = row_bytes / wb;
  const int W = std::min(32, next_pow2(wpr));
  const dim3 block(W, 256 / W);
  const int blocks = int(std::min<int64_t>((A + block.y - 1) / block.y, 65535));
  auto launch = [&](auto word) {
    using Wd = decltype(word);
    if (rows.dtype() == DType::i64)
      LAUNCH((gather_rows_kernel<Wd, int64_t>), blocks, block, 0, cu_stream())
      (ptr<Wd>(x), ptr<int64_t>(rows), mut_ptr<Wd>(out), A, wpr);
    else
      LAUNCH((gather_rows_kernel<Wd, int32_t>), blocks, block, 0, cu_stream())
      (ptr<Wd>(x), ptr<int32_t>(rows), mut_ptr<Wd>(out), A, wpr);
  };
  switch (wb) {
    case 16:
      launch(uint4{});
      break;
    case 8:
      launch(uint2{});
      break;
    case 4:
      launch(uint32_t{});
      break;
    case 2:
      launch(uint16_t{});
      break;
    default:
      launch(uint8_t{});
      break;
  }
  CHECK_LAUNCH("gather_rows_kernel");
  return out;
}

Tensor permute_rows_backward(const Tensor& g, const Tensor& rows, int64_t N) {
  const char* op = "permute_rows_backward";
  check_float_input(g, op, "g");
  check_index_input(rows, op, "rows");
  ENGINE_CHECK(g.dim() >= 1, op, ": g must have a row dimension, got ", g.describe());
  ENGINE_CHECK(N >= 0, op, ": negative number of rows ", N);
  const int64_t A = rows.numel();
  ENGINE_CHECK(g.size(0) == A, op, ": g ", g.describe(), " has ", g.size(0), " rows for ", A,
               " indices");
  ENGINE_CHECK(A < (int64_t(1) << 31) && N < (int64_t(1) << 31), op,
               ": too many rows for int32 lists");
  check_indices(rows, N, op);
  return gather_sum(g, rows, Tensor(), N, op);
}

Tensor combine_rows(const Tensor& y, const Tensor& rows, const Tensor& gates, int64_t N) {
  const char* op = "combine_rows";
  check_float_input(y, op, "y");
  check_index_input(rows, op, "rows");
  check_on_device(gates, op, "gates");
  ENGINE_CHECK(y.dim() >= 1, op, ": y must have a row dimension, got ", y.describe());
  ENGINE_CHECK(N >= 0, op, ": negative number of rows ", N);
  const int64_t A = rows.numel();
  ENGINE_CHECK(y.size(0) == A && gates.numel() == A, op, ": y ", y.describe(), ", rows ",
               rows.describe(), " and gates ", gates.describe(),
               " must have the same number of rows");
  ENGINE_CHECK(gates.dtype() == DType::f32, op, ": gates must be f32 for y ", y.describe(),
               ", got ", gates.describe());
  ENGINE_CHECK(A < (int64_t(1) << 31) && N < (int64_t(1) << 31), op,
               ": too many rows for int32 lists");
  check_indices(rows, N, op);
  return gather_sum(y, rows, gates, N, op);
}

CombineGrads combine_rows_backward(const Tensor& dout, const Tensor& y, const Tensor& rows,
                                   const Tensor& gates) {
  const char* op = "combine_rows_backward";
  check_float_input(dout, op, "dout");
  check_float_input(y, op, "y");
  check_index_input(rows, op, "rows");
  check_on_device(gates, op, "gates");
  engine::check_same_dtype(dout, y, op);
  ENGINE_CHECK(y.dim() >= 1 && dout.dim() == y.dim(), op, ": dout ", dout.describe(), " and y ",
               y.describe(), " must be [rows, ...] of the same row shape");
  for (int d = 1; d < y.dim(); ++d)
    ENGINE_CHECK(dout.size(d) == y.size(d), op, ": dout ", dout.describe(), " and y ", y.describe(),
                 " differ in the row shape");
  const int64_t A = rows.numel(), N = dout.size(0);
  ENGINE_CHECK(y.size(0) == A && gates.numel() == A, op, ": y ", y.describe(), ", rows ",
               rows.describe(), " and gates ", gates.describe(),
               " must have the same number of rows");
  ENGINE_CHECK(gates.dtype() == DType::f32, op, ": gates must be f32 for y ", y.describe(),
               ", got ", gates.describe());
  check_indices(rows, N, op);
  CombineGrads res{Tensor::empty(y.shape(), y.dtype(), device()),
                   Tensor::empty(gates.shape(), DType::f32, device())};
  if (A == 0) return res;
  const int64_t D = y.numel() / A;
  visit_f32_bf16(y.dtype(), [&](auto z) {
    using T = decltype(z);
    const bool vec = vec_width<T>(D, {dout.raw_data(), y.raw_data(), res.dy.raw_data()}) > 1;
    auto launch = [&](auto idx) {
      using I = decltype(idx);
      if (vec)
        LAUNCH((combine_backward_kernel<T, int(16 / sizeof(T)), I>), blocks_for(A, 8), 256, 0,
               cu_stream())
        (ptr<T>(dout), ptr<T>(y), ptr<I>(rows), ptr<float>(gates), A, D, mut_ptr<T>(res.dy),
         mut_ptr<float>(res.dgates));
      else
        LAUNCH((combine_backward_kernel<T, 1, I>), blocks_for(A, 8), 256, 0, cu_stream())
        (ptr<T>(dout), ptr<T>(y), ptr<I>(rows), ptr<float>(gates), A, D, mut_ptr<T>(res.dy),
         mut_ptr<float>(res.dgates));
    };
    if (rows.dtype() == DType::i64)
      launch(int64_t{});
    else
      launch(int32_t{});
  });
  CHECK_LAUNCH("combine_backward_kernel");
  return res;
}

Tensor router_z_loss(const Tensor& logits) {
  const char* op = "router_z_loss";
  check_float_input(logits, op, "logits");
  engine::check_dim(logits, 2, op, "logits");
  const int64_t T = logits.size(0), E = logits.size(1);
  ENGINE_CHECK(T >= 1 && E >= 1, op, ": needs at least one token and one expert, got ",
               logits.describe());
  check_router_width(E, op, logits);
  Tensor lse = Tensor::empty({T}, DType::f32, device());
  Tensor out = Tensor::empty({}, DType::f32, device());
  const RowGeom g = row_geom(T, E);
  visit_f32_bf16(logits.dtype(), [&](auto z) {
    using T_ = decltype(z);
    LAUNCH(row_logsumexp_kernel<T_>, g.blocks, kRowThreads, 0, cu_stream())
    (ptr<T_>(logits), mut_ptr<float>(lse), T, int(E), g.W);
  });
  CHECK_LAUNCH("row_logsumexp_kernel");
  LAUNCH(z_loss_reduce_kernel, 1, 256, 0, cu_stream())(ptr<float>(lse), T, mut_ptr<float>(out));
  CHECK_LAUNCH("z_loss_reduce_kernel");
  return out;
}

Tensor router_z_loss_backward(const Tensor& g, const Tensor& logits) {
  const char* op = "router_z_loss_backward";
  check_loss_grad(g, op);
  check_float_input(logits, op, "logits");
  engine::check_dim(logits, 2, op, "logits");
  const int64_t T = logits.size(0), E = logits.size(1);
  check_router_width(E, op, logits);
  Tensor out = Tensor::empty({T, E}, DType::f32, device());
  if (T == 0) return out;
  const RowGeom geo = row_geom(T, E);
  visit_f32_bf16(logits.dtype(), [&](auto z) {
    using T_ = decltype(z);
    LAUNCH(z_loss_backward_kernel<T_>, geo.blocks, kRowThreads, 0, cu_stream())
    (ptr<float>(g), ptr<T_>(logits), mut_ptr<float>(out), T, int(E), geo.W);
  });
  CHECK_LAUNCH("z_loss_backward_kernel");
  return out;
}

LoadBalance load_balance_stats(const Tensor& probs, const Tensor& expert_ids, int64_t E) {
  const char* op = "load_balance_stats";
  check_float_input(probs, op, "probs");
  check_index_input(expert_ids, op, "expert_ids");
  engine::check_dim(probs, 2, op, "probs");
  const int64_t T = probs.size(0);
  ENGINE_CHECK(probs.size(1) == E && E >= 1, op, ": probs ", probs.describe(), " for ", E,
               " experts");
  ENGINE_CHECK(T >= 1, op, ": needs at least one token, got probs ", probs.describe());
  ENGINE_CHECK((expert_ids.dim() == 1 || expert_ids.dim() == 2) && expert_ids.size(0) == T, op,
               ": expert_ids ", expert_ids.describe(), " must be [T] or [T, k] for probs ",
               probs.describe());
  check_indices(expert_ids, E, op);
  const int64_t A = expert_ids.numel(), nb = (T + kLbRows - 1) / kLbRows;
  LoadBalance lb{Tensor::empty({E}, DType::f32, device()), Tensor::empty({E}, DType::f32, device()),
                 Tensor::empty({}, DType::f32, device())};
  Tensor counts = Tensor::zeros({E}, DType::i32, device());
  Tensor partial = Tensor::empty({nb * E}, DType::f32, device());
  if (A > 0) {
    if (expert_ids.dtype() == DType::i64)
      LAUNCH(histogram_kernel<int64_t>, blocks_for(A, 256), 256, 0, cu_stream())
      (ptr<int64_t>(expert_ids), A, mut_ptr<int>(counts));
    else
      LAUNCH(histogram_kernel<int32_t>, blocks_for(A, 256), 256, 0, cu_stream())
      (ptr<int32_t>(expert_ids), A, mut_ptr<int>(counts));
    CHECK_LAUNCH("histogram_kernel");
  }
  visit_f32_bf16(probs.dtype(), [&](auto z) {
    using T_ = decltype(z);
    LAUNCH(lb_partial_kernel<T_>, int(nb), kLbThreads, 0, cu_stream())
    (ptr<T_>(probs), T, int(E), mut_ptr<float>(partial));
  });
  CHECK_LAUNCH("lb_partial_kernel");
  LAUNCH(lb_finalize_kernel, 1, 256, 0, cu_stream())
  (ptr<float>(partial), nb, ptr<int>(counts), A, T, int(E), mut_ptr<float>(lb.f),
   mut_ptr<float>(lb.P), mut_ptr<float>(lb.loss));
  CHECK_LAUNCH("lb_finalize_kernel");
  return lb;
}

Tensor load_balance_backward(const Tensor& g, const Tensor& f, int64_t T) {
  const char* op = "load_balance_backward";
  check_loss_grad(g, op);
  check_f32_input(f, op, "f");
  engine::check_dim(f, 1, op, "f");
  ENGINE_CHECK(T >= 0, op, ": negative number of tokens ", T);
  const int64_t E = f.numel();
  Tensor out = Tensor::empty({T, E}, DType::f32, device());
  if (out.numel() == 0) return out;
  const int blocks = int(std::min<int64_t>(blocks_for(out.numel(), 256), 4096));
  LAUNCH(lb_backward_kernel, blocks, 256, 0, cu_stream())
  (ptr<float>(g), ptr<float>(f), out.numel(), int(E), float(double(E) / double(T)),
   mut_ptr<float>(out));
  CHECK_LAUNCH("lb_backward_kernel");
  return out;
}

Tensor dispatch_softmax(const Tensor& logits) {
  const char* op = "dispatch_softmax";
  check_float_input(logits, op, "logits");
  engine::check_dim(logits, 3, op, "logits");
  const int64_t B = logits.size(0), N = logits.size(1), S = logits.size(2);
  Tensor out = Tensor::empty(logits.shape(), DType::f32, device());
  if (out.numel() == 0) return out;
  ENGINE_CHECK(B <= 65535, op, ": batch ", B, " exceeds the grid's 65535 blocks along y");
  const dim3 grid(unsigned((S + kColSlots - 1) / kColSlots), unsigned(B)),
      block(kColSlots, kColGroups);
  visit_f32_bf16(logits.dtype(), [&](auto z) {
    using T_ = decltype(z);
    LAUNCH(dispatch_softmax_kernel<T_>, grid, block, 0, cu_stream())
    (ptr<T_>(logits), mut_ptr<float>(out), N, S);
  });
  CHECK_LAUNCH("dispatch_softmax_kernel");
  return out;
}

Tensor dispatch_softmax_backward(const Tensor& g, const Tensor& y) {
  const char* op = "dispatch_softmax_backward";
  check_f32_input(g, op, "g");
  check_f32_input(y, op, "y");
  engine::check_dim(g, 3, op, "g");
  engine::check_same_shape(g, y, op);
  const int64_t B = g.size(0), N = g.size(1), S = g.size(2);
  Tensor out = Tensor::empty(g.shape(), DType::f32, device());
  if (out.numel() == 0) return out;
  ENGINE_CHECK(B <= 65535, op, ": batch ", B, " exceeds the grid's 65535 blocks along y");
  const dim3 grid(unsigned((S + kColSlots - 1) / kColSlots), unsigned(B)),
      block(kColSlots, kColGroups);
  LAUNCH(dispatch_softmax_backward_kernel, grid, block, 0, cu_stream())
  (ptr<float>(g), ptr<float>(y), mut_ptr<float>(out), N, S);
  CHECK_LAUNCH("dispatch_softmax_backward_kernel");
  return out;
}

}  // namespace kernels::cuda
