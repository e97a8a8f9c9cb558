// Fused attention with QK LayerNorm on the GPU (flash-attention-2 style), forward and backward.
// Semantics, layouts and errors are those of kernels/cpu/attention.cpp (see kernels/attention.h).
//
// Kernels (T = bf16 or fp32 input, D = head dim 32 / 64 / 128, 128 threads = 4 warps per CTA):
//   attn_keep_kernel       key_mask (any dtype, strided) → i32 keep flags [B, Nk]
//   attn_to_f32_kernel     QK-LN weight (any float dtype) → fp32 [D]
//   attn_ln_stats_kernel   QK-LN: mean, rstd (fp32) of every k row (8 lanes per row)
//   attn_fwd_kernel        one CTA per (query block, head, batch); loops over key blocks
//   attn_bwd_delta_kernel  delta_i = rowsum(dO ∘ O), one thread per row
//   attn_bwd_dkdv_kernel   one CTA per key block, loops over query blocks: dK, dV (+ QK-LN bwd of k)
//   attn_bwd_dq_kernel     one CTA per query block, loops over key blocks: dQ (+ QK-LN bwd of q)
//   attn_dw_reduce_kernel  QK-LN weight gradient: per-CTA partials summed in a fixed order
// Everything is deterministic (no atomics): dQ has its own pass instead of atomics into global.
//
// QK LayerNorm. Each forward CTA computes the statistics (fp32 mean, rstd) of its own query rows
// while loading its Q block and normalises them on the way into shared memory, (x − mean)·rstd·w.
// K rows get their statistics from a tiny pre-pass kernel (attn_ln_stats_kernel) and are then
// normalised elementwise while each K tile is staged, so neither q̂ nor k̂ is ever written to global
// memory. Why a pre-pass for K: every K row is staged by all Nq/Br query-block CTAs, so fused
// statistics would be recomputed Nq/Br times, with two row reductions between the K-tile load and
// the first MMA of every key block; the pre-pass reads k once (N·Dh·2 bytes per head for bf16), ≈
// 45/N of the forward kernel's time at 30% of peak (≈ 9% at N = 512, 2% at N = 2048), and its
// output is needed anyway (k_mean, k_rstd are saved for the backward). The backward normalises
// with the saved statistics (elementwise again) and runs the LN backward in its epilogues, where
// each row's dq̂ / dk̂ is still in registers.
// Tiles (per CTA of 4 warps; smem rows padded by 16 bytes):
//   forward  bf16: each warp owns 32 query rows (2 m-tiles) → Br = 128; Bc = 64 keys (Dh 32, 64)
//                  or 32 (Dh 128); smem 39 / 55 / 62 KB for Dh 32 / 64 / 128
//            fp32: 16 rows per warp → Br = 64; same Bc; 45 / 69 / 76 KB
//   dK/dV    16 keys per warp → 64 keys per CTA; query steps of 64 (Dh 32, 64) or 32 (Dh 128)
//   dQ       16 query rows per warp → 64 rows per CTA; key steps of 64 (32 for fp32 Dh 128)
// Registers: the O (dQ, dK, dV) accumulators, the S/P and dP tiles and the softmax state (row max
// m, partial row sum l) in fp32. Shared memory: the Q̂ (and dO) block, the K̂ and V tiles, and per
// warp one P (dS) tile: bf16 on the tensor-core path, fp32 on the CUDA-core path.
//
// GEMM-like products go through WarpMma<E>: for bf16 they are WMMA 16×16×16 tiles with fp32
// accumulators (attention_mma.cuh); fp32 inputs keep fp32 accuracy (which bf16/tf32 tensor cores
// cannot give) and run the same tiles on CUDA cores with the same accumulator layout. Softmax runs
// in registers: in the sm_80/sm_90 accumulator layout a row lives in the 4 lanes of a quad, so a
// row max is two shuffles and the row sum is reduced once at the end. P goes through shared memory
// to become the A operand of P·V (WMMA has no accumulator → operand conversion).
//
// H100 performance argument (bf16 forward, Dh 64–128, N ≥ 512). Per warp and key block the two
// products do 4·32·Bc·Dh FLOPs; the dense BF16 peak is 989 TFLOP/s ≈ 4096 FLOP/clk/SM.
//   - shared memory: the MMAs read Q̂ (32·Dh·2 B), K̂ and V (2·Bc·Dh·2 B) and write + read P
//     (2·32·Bc·2 B): ≈ 18 FLOP/B at (Dh, Bc) = (64, 64) and (128, 32). At 128 B/clk/SM that caps
//     the kernel at ≈ 2300 FLOP/clk/SM ≈ 57% of peak. Two m-tiles per warp (each K̂/V fragment
//     feeds two MMAs) is what lifts this cap well above 40%: with one it would be ≈ 36%.
//   - exponentials: one exp2 per score, 4·Dh FLOPs per score; 16 MUFU ops/clk/SM → 64·Dh
//     FLOP/clk: 100% of peak at Dh 64, 200% at Dh 128. The ≈ 8 FP32 ops per score (scale, max,
//     subtract, sum, rescale of O, conversion) at 128/clk/SM bound the same way. Dh 64 is therefore
//     co-limited by MUFU/ALU; Dh 128 is not.
//   - instruction class: WMMA compiles to HMMA.16816 (mma.sync), which reaches ≈ 2/3 of the H100
//     tensor peak (the wgmma peak); FlashAttention-2, built on the same instruction with P kept in
//     registers and cp.async double buffering, measures ≈ 35% of peak on H100.
//   - global memory: each CTA streams K and V once per 128 query rows, 128 FLOP per byte, served
//     by L2 (query-block CTAs of one head are adjacent in the grid); HBM sees q, k, v, out once.
//   - occupancy: ≤ 168 registers and 39 / 55 KB smem → 3 CTAs (12 warps) per SM at Dh 32 / 64;
//     218 registers and 62 KB → 2 CTAs at Dh 128 (kMinBlocks). The tile loads are synchronous
//     (global → registers → normalise/convert → smem); the other CTAs' MMAs run meanwhile.
//   Estimate: ≈ 25–35% of peak at Dh 128 and somewhat less at Dh 64, i.e. below the 40% target.
//   What closes the gap, in order: an mma.sync m16n8k16 wrapper (documented fragment layout) so
//   P stays in registers (−14% smem traffic at Dh 128, −29% at 64); cp.async double buffering of V and of a normalised
//   bf16 K̂ written by the stats pre-pass; on sm_90, wgmma + TMA (FlashAttention-3: ≈ 75%), which
//   needs a sim body for warpgroup MMAs. None of this can be measured here (no GPU).
//   Backward: 7 tile products instead of FA2's 5 (the deterministic dQ pass recomputes S and dP),
//   so at equal raw FLOP rate it delivers 5/7 of it in useful (MFU) FLOPs.
// The fp32 path is for parity and fp32 models: CUDA-core FMA with operands streamed from smem
// (≈ 1 shared load per 2 FMA), a few TFLOP/s.
//
// ptxas (nvcc 13, -O3, sm_80 and sm_90): no spills and no stack frame in any kernel; bf16 forward
// 152–218 registers, backward 136–236; fp32 forward 111–154, backward 154–240.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernels/attention.h"
#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"

namespace kernels::cuda {
namespace {

// Loop unrolling is nvcc's business; g++ (the sim) would warn about the pragma.
#if defined(__CUDACC__)
#define ATTN_UNROLL _Pragma("unroll")
#define ATTN_UNROLL_4 _Pragma("unroll 4")
#define ATTN_UNROLL_1 _Pragma("unroll 1")
#else
#define ATTN_UNROLL
#define ATTN_UNROLL_4
#define ATTN_UNROLL_1
#endif

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;

// ---------------------------------------------------------------------------------------------
// Element access

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(double x) { return float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

// V elements moved as one 16-byte (or 2-element) access.
template <class T, int V>
struct alignas(V * sizeof(T)) Pack {
  T v[V];
};

template <class P>
__device__ __forceinline__ P load_raw(const void* p) {
#if defined(__CUDACC__)
  return *reinterpret_cast<const P*>(p);
#else
  P r;
  std::memcpy(static_cast<void*>(&r), p, sizeof(P));
  return r;
#endif
}
template <class P>
__device__ __forceinline__ void store_raw(void* p, const P& v) {
#if defined(__CUDACC__)
  *reinterpret_cast<P*>(p) = v;
#else
  std::memcpy(p, static_cast<const void*>(&v), sizeof(P));
#endif
}

template <int Bytes>
__device__ __forceinline__ bool aligned(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & uintptr_t(Bytes - 1)) == 0;
}

// Elements [d0, d0 + V) of a row with element stride sd, as floats: one vector load when the
// row is unit-stride and the address aligned, else scalar loads.
template <class T, int V>
__device__ __forceinline__ void load_chunk(const T* row, int64_t sd, int d0, float (&o)[V]) {
  const T* p = row + d0 * sd;
  if (sd == 1 && aligned<V * sizeof(T)>(p)) {
    const Pack<T, V> pk = load_raw<Pack<T, V>>(p);
ATTN_UNROLL
    for (int i = 0; i < V; ++i) o[i] = to_f(pk.v[i]);
  } else {
ATTN_UNROLL
    for (int i = 0; i < V; ++i) o[i] = to_f(p[i * sd]);
  }
}

// Two consecutive columns (c, c + 1) of an output row.
template <class T>
__device__ __forceinline__ void store_pair(T* row, int64_t sd, int c, float a, float b) {
  T* p = row + c * sd;
  if (sd == 1 && aligned<2 * sizeof(T)>(p)) {
    Pack<T, 2> pk;
    pk.v[0] = from_f<T>(a);
    pk.v[1] = from_f<T>(b);
    store_raw(p, pk);
  } else {
    p[0] = from_f<T>(a);
    p[sd] = from_f<T>(b);
  }
}
template <class T>
__device__ __forceinline__ void load_pair(const T* row, int64_t sd, int c, float& a, float& b) {
  const T* p = row + c * sd;
  if (sd == 1 && aligned<2 * sizeof(T)>(p)) {
    const Pack<T, 2> pk = load_raw<Pack<T, 2>>(p);
    a = to_f(pk.v[0]);
    b = to_f(pk.v[1]);
  } else {
    a = to_f(p[0]);
    b = to_f(p[sd]);
  }
}

template <class T>
__device__ __forceinline__ T from_double(double x);
template <>
__device__ __forceinline__ float from_double<float>(double x) {
  return float(x);
}
template <>
__device__ __forceinline__ double from_double<double>(double x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_double<__nv_bfloat16>(double x) {
  return __double2bfloat16(x);
}

// Accumulator elements i, i + 1 (i even) are adjacent columns of one row: one 2-element store.
template <class T>
__device__ __forceinline__ void store_pair_smem(T* p, float a, float b) {
  Pack<T, 2> pk;
  pk.v[0] = from_f<T>(a);
  pk.v[1] = from_f<T>(b);
  store_raw(p, pk);
}

__device__ __forceinline__ bool nonzero(float x) { return x != 0.0f; }
__device__ __forceinline__ bool nonzero(double x) { return x != 0.0; }
__device__ __forceinline__ bool nonzero(__nv_bfloat16 x) { return __bfloat162float(x) != 0.0f; }
__device__ __forceinline__ bool nonzero(int32_t x) { return x != 0; }
__device__ __forceinline__ bool nonzero(int64_t x) { return x != 0; }

// Shared memory carved into 32-byte aligned regions (WMMA operands need 32-byte alignment).
__device__ __forceinline__ unsigned char* align32(unsigned char* p) {
  return p + ((32 - (reinterpret_cast<uintptr_t>(p) & 31)) & 31);
}

// ---------------------------------------------------------------------------------------------
// Warp tile products. Accumulator layout (both paths): lane = 4g + t holds, of each 16×16 tile,
// rows g and g + 8 and columns 2t, 2t + 1, 2t + 8, 2t + 9 (attn_mma::acc_row / acc_col).
//
//   gemm<MT, NT, K, BCOL>(acc, A, lda, B, ldb):  acc[mt][nt] += A[16·mt.., 0..K) · B[0..K, 16·nt..)
//   A row-major (A(m, k) = A[m·lda + k]); B row-major (B[k·ldb + n]) or, with BCOL, col-major
//   (B[n·ldb + k]: a row-major n × k tile used transposed, e.g. K̂ in S = Q̂ K̂ᵀ).

template <class E>
struct WarpMma;

template <>
struct WarpMma<__nv_bfloat16> {  // tensor cores
  using Acc = attn_mma::FragAcc;
  static __device__ __forceinline__ void zero(Acc& a) { attn_mma::fill(a, 0.0f); }

  template <int MT, int NT, int K, bool BCOL>
  static __device__ __forceinline__ void gemm(Acc (&acc)[MT][NT], const __nv_bfloat16* A, int lda,
                                              const __nv_bfloat16* B, int ldb) {
    // k is not unrolled: that keeps only one k-step's fragments live (full unrolling let the
    // compiler hoist every B fragment of the product and run out of registers).
ATTN_UNROLL_1
    for (int k = 0; k < K; k += 16) {
      attn_mma::FragA a[MT];
ATTN_UNROLL
      for (int mt = 0; mt < MT; ++mt) attn_mma::load(a[mt], A + 16 * mt * lda + k, lda);
ATTN_UNROLL
      for (int nt = 0; nt < NT; ++nt) {
        if constexpr (BCOL) {
          attn_mma::FragBCol b;
          attn_mma::load(b, B + 16 * nt * ldb + k, ldb);
ATTN_UNROLL
          for (int mt = 0; mt < MT; ++mt) attn_mma::mma(acc[mt][nt], a[mt], b, acc[mt][nt]);
        } else {
          attn_mma::FragBRow b;
          attn_mma::load(b, B + k * ldb + 16 * nt, ldb);
ATTN_UNROLL
          for (int mt = 0; mt < MT; ++mt) attn_mma::mma(acc[mt][nt], a[mt], b, acc[mt][nt]);
        }
      }
    }
  }
};

template <>
struct WarpMma<float> {  // CUDA cores, fp32 FMA in k order
  struct Acc {
    float x[attn_mma::kAccElems];
  };
  static __device__ __forceinline__ void zero(Acc& a) {
ATTN_UNROLL
    for (int i = 0; i < attn_mma::kAccElems; ++i) a.x[i] = 0.0f;
  }

  template <int MT, int NT, int K, bool BCOL>
  static __device__ __forceinline__ void gemm(Acc (&acc)[MT][NT], const float* A, int lda,
                                              const float* B, int ldb) {
    const int lane = int(threadIdx.x) & 31, g = lane >> 2, c0 = 2 * (lane & 3);
ATTN_UNROLL_4
    for (int k = 0; k < K; ++k) {
      float a[MT][2];
ATTN_UNROLL
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = A[(16 * mt + g) * lda + k];
        a[mt][1] = A[(16 * mt + g + 8) * lda + k];
      }
ATTN_UNROLL
      for (int nt = 0; nt < NT; ++nt) {
        const int n = 16 * nt + c0;
        float b[4];  // columns n, n + 1, n + 8, n + 9
        if constexpr (BCOL) {
          b[0] = B[n * ldb + k];
          b[1] = B[(n + 1) * ldb + k];
          b[2] = B[(n + 8) * ldb + k];
          b[3] = B[(n + 9) * ldb + k];
        } else {
          const float2 lo = load_raw<float2>(B + k * ldb + n);
          const float2 hi = load_raw<float2>(B + k * ldb + n + 8);
          b[0] = lo.x;
          b[1] = lo.y;
          b[2] = hi.x;
          b[3] = hi.y;
        }
ATTN_UNROLL
        for (int mt = 0; mt < MT; ++mt)
ATTN_UNROLL
          for (int i = 0; i < attn_mma::kAccElems; ++i)
            acc[mt][nt].x[i] = fmaf(a[mt][(i >> 1) & 1], b[(i & 1) + 2 * (i >> 2)], acc[mt][nt].x[i]);
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Tile staging: rows [r0, r0 + ROWS) of an n-row, D-column operand (row stride sn, column stride
// sd, elements T) into shared memory dst[ROWS][LD] (elements E), zero beyond row n; with `mean`
// each row is LayerNorm-ed on the way: (x − mean[r])·rstd[r]·w[d], mean and rstd indexed by the
// row within the tile. 16-byte chunks, one per thread
// and step, so a warp reads 512 contiguous bytes of a unit-stride row set.

template <class T, class E, int D, int LD, int ROWS>
__device__ __forceinline__ void load_tile(E* dst, const T* base, int64_t sn, int64_t sd, int r0,
                                          int n, const float* mean, const float* rstd,
                                          const float* w) {
  static_assert(sizeof(T) == sizeof(E));
  constexpr int V = 16 / sizeof(E), CPR = D / V;
  for (int c = int(threadIdx.x); c < ROWS * CPR; c += kThreads) {
    const int r = c / CPR, d0 = (c % CPR) * V, gr = r0 + r;
    Pack<E, V> out;
    if (gr < n) {
      const T* row = base + int64_t(gr) * sn;
      if (mean == nullptr && sd == 1 && aligned<16>(row + d0)) {
        out = load_raw<Pack<E, V>>(row + d0);  // plain copy (T == E)
      } else {
        float x[V];
        load_chunk<T, V>(row, sd, d0, x);
        if (mean != nullptr) {
          const float mu = mean[r], rs = rstd[r];
ATTN_UNROLL
          for (int i = 0; i < V; ++i) x[i] = (x[i] - mu) * rs * w[d0 + i];
        }
ATTN_UNROLL
        for (int i = 0; i < V; ++i) out.v[i] = from_f<E>(x[i]);
      }
    } else {
ATTN_UNROLL
      for (int i = 0; i < V; ++i) out.v[i] = from_f<E>(0.0f);
    }
    store_raw(dst + r * LD + d0, out);
  }
}

// ---------------------------------------------------------------------------------------------
// Parameters

struct Strides {
  int64_t b, h, n, d;  // elements
};

struct FwdParams {
  const void *q, *k, *v;
  void* out;
  Strides sq, sk, sv, so;
  float* lse;                               // [B, H, Nq]
  const int32_t* keep;                      // [B, Nk] or null
  const float* w;                           // [D] or null (no QK-LN)
  float *q_mean, *q_rstd;                   // [B, H, Nq], written by the kernel
  const float *k_mean, *k_rstd;             // [B, H, Nk], from attn_ln_stats_kernel
  int B, H, Nq, Nk;
  float scale_log2;                         // scale · log2(e)
  float eps;                                // QK-LN
  int causal;
};

struct BwdParams {
  const void *q, *k, *v, *g;
  void *dq, *dk, *dv;
  Strides sq, sk, sv, sg, sdq, sdk, sdv;
  const float* lse;    // [B, H, Nq]
  const float* delta;  // [B, H, Nq]
  const int32_t* keep;
  const float* w;
  const float *q_mean, *q_rstd, *k_mean, *k_rstd;
  float* dw_part;      // [B·H·(query blocks + key blocks), D] with QK-LN
  int B, H, Nq, Nk;
  float scale, scale_log2;
  int causal;
};

template <class T, int D>
struct FwdCfg {
  static constexpr bool kTc = std::is_same_v<T, __nv_bfloat16>;
  static constexpr int MT = kTc ? 2 : 1;            // 16-row m-tiles per warp
  static constexpr int BR = kWarps * 16 * MT;       // query rows per CTA
  static constexpr int BC = D == 128 ? 32 : 64;     // keys per tile
  static constexpr int PAD = 16 / int(sizeof(T));
  static constexpr int LDX = D + PAD, LDP = BC + PAD;
  static constexpr size_t kSmem =
      sizeof(T) * size_t(BR * LDX + 2 * BC * LDX + kWarps * 16 * MT * LDP) +
      sizeof(float) * (D + 2 * BR) + sizeof(int) * BC + 32;
  static_assert(kThreads % BR == 0);
  // CTAs per SM that ptxas must leave registers for (≤ 65536 / (128·blocks) each): 3 at Dh 32/64,
  // 2 at 128 (where the 128-row O accumulator needs > 170). The fp32 path is bound by smem anyway.
  static constexpr int kMinBlocks = kTc ? (D == 128 ? 2 : 3) : 1;
};

template <class T, int D>
struct BwdCfg {
  static constexpr bool kTc = std::is_same_v<T, __nv_bfloat16>;
  static constexpr int PAD = 16 / int(sizeof(T));
  static constexpr int LDX = D + PAD;
  // dK/dV kernel: 16 keys per warp; query steps of BQ.
  static constexpr int BKV = kWarps * 16;
  static constexpr int BQ = D == 128 ? 32 : 64;
  static constexpr int LDB = BQ + PAD;
  static constexpr size_t kSmemKV = sizeof(T) * size_t(2 * BKV * LDX + 2 * BQ * LDX +
                                                       kWarps * 16 * LDB) +
                                    sizeof(float) * (D + 2 * BQ) + sizeof(int) * BKV + 32;
  // dQ kernel: 16 query rows per warp; key steps of BKC.
  static constexpr int BQQ = kWarps * 16;
  static constexpr int BKC = (D == 128 && !kTc) ? 32 : 64;
  static constexpr int LDS = BKC + PAD;
  static constexpr size_t kSmemQ = sizeof(T) * size_t(2 * BQQ * LDX + 2 * BKC * LDX +
                                                      kWarps * 16 * LDS) +
                                   sizeof(float) * D + sizeof(int) * BKC + 32;
  static constexpr int kMinBlocks = kTc ? (D == 128 ? 2 : 3) : 1;  // as FwdCfg
  // The dw reduction reuses the first tile region: kWarps·8 rows of D floats.
  static_assert(sizeof(T) * BKV * LDX >= sizeof(float) * kWarps * 8 * D);
  static_assert(sizeof(T) * BQQ * LDX >= sizeof(float) * kWarps * 8 * D);
};

// ---------------------------------------------------------------------------------------------
// Small kernels

template <class M>
__global__ void attn_keep_kernel(const M* mask, int64_t s0, int64_t s1, int B, int Nk,
                                 int32_t* keep) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < int64_t(B) * Nk) {
    const int64_t b = i / Nk, j = i % Nk;
    keep[i] = nonzero(mask[b * s0 + j * s1]) ? 1 : 0;
  }
}

template <class W>
__global__ void attn_to_f32_kernel(const W* x, int64_t stride, int n, float* out) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = to_f(x[int64_t(i) * stride]);
}

// Elements per vector access when 8 lanes share a row: 16 bytes, fewer if the row is short.
template <class T, int D>
__host__ __device__ constexpr int row_chunk() {
  constexpr int v = 16 / int(sizeof(T));
  static_assert(D % 8 == 0);
  return v < D / 8 ? v : D / 8;
}

// LayerNorm statistics of rows of a [B, H, N, D] operand: 8 lanes per row, 16 rows per CTA.
// Two passes over registers (mean, then centred variance), fp32, as the CPU op's definition.
template <class T, int D>
__global__ void __launch_bounds__(kThreads)
    attn_ln_stats_kernel(const T* x, Strides s, int H, int N, int64_t rows, float eps,
                         float* mean, float* rstd) {
  constexpr int V = row_chunk<T, D>(), CH = D / V / 8;  // chunks per lane
  const int sub = int(threadIdx.x) & 7;
  const int64_t r = int64_t(blockIdx.x) * (kThreads / 8) + (threadIdx.x >> 3);
  const bool ok = r < rows;
  float v[CH][V];
  float sum = 0.0f;
  if (ok) {
    const int64_t n = r % N, h = (r / N) % H, b = r / (int64_t(N) * H);
    const T* row = x + b * s.b + h * s.h + n * s.n;
ATTN_UNROLL
    for (int c = 0; c < CH; ++c) {
      load_chunk<T, V>(row, s.d, (sub + 8 * c) * V, v[c]);
ATTN_UNROLL
      for (int i = 0; i < V; ++i) sum += v[c][i];
    }
  }
ATTN_UNROLL
  for (int o = 1; o < 8; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  const float mu = sum / float(D);
  float ss = 0.0f;
  if (ok) {
ATTN_UNROLL
    for (int c = 0; c < CH; ++c)
ATTN_UNROLL
      for (int i = 0; i < V; ++i) ss += (v[c][i] - mu) * (v[c][i] - mu);
  }
ATTN_UNROLL
  for (int o = 1; o < 8; o <<= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (ok && sub == 0) {
    mean[r] = mu;
    rstd[r] = 1.0f / sqrtf(ss / float(D) + eps);
  }
}

// delta[r] = Σ_d dO[r, d]·O[r, d] (fp32), one thread per row, summed with fmaf in d order: the
// order in which the CUDA-core tile product forms dP_ij = Σ_d dO[i, d]·V[j, d], so that for a row
// whose only visible key is j (O = V_j exactly) dP_ij − delta_i cancels to exactly 0, as it does
// in exact arithmetic. (Each thread reads its own unit-stride row in 16-byte pieces; the kernel
// moves 2·N·Dh elements per head, noise next to the attention kernels.)
template <class T, int D>
__global__ void __launch_bounds__(kThreads)
    attn_bwd_delta_kernel(const T* g, Strides sg, const T* o, Strides so, int H, int N,
                          int64_t rows, float* delta) {
  constexpr int V = 16 / int(sizeof(T));
  const int64_t r = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (r < rows) {
    const int64_t n = r % N, h = (r / N) % H, b = r / (int64_t(N) * H);
    const T* gr = g + b * sg.b + h * sg.h + n * sg.n;
    const T* orow = o + b * so.b + h * so.h + n * so.n;
    float acc = 0.0f;
    for (int d0 = 0; d0 < D; d0 += V) {
      float x[V], y[V];
      load_chunk<T, V>(gr, sg.d, d0, x);
      load_chunk<T, V>(orow, so.d, d0, y);
ATTN_UNROLL
      for (int i = 0; i < V; ++i) acc = fmaf(x[i], y[i], acc);
    }
    delta[r] = acc;
  }
}

// dw[d] = Σ_p part[p, d] in a fixed order (deterministic), accumulated in double.
template <class W>
__global__ void attn_dw_reduce_kernel(const float* part, int nparts, int D, W* out) {
  const int d = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (d < D) {
    double s = 0.0;
    for (int p = 0; p < nparts; ++p) s += double(part[int64_t(p) * D + d]);
    out[d] = from_double<W>(s);
  }
}

// Writes 1 per lane when the tensor-core accumulator layout is the one the kernels assume.
__global__ void attn_acc_layout_probe_kernel(int* ok) {
  DYNAMIC_SHARED(unsigned char, raw);
  float* m = reinterpret_cast<float*>(align32(raw));
  for (int i = int(threadIdx.x); i < 256; i += 32) m[i] = float(i);
  __syncwarp();
  attn_mma::FragAcc f;
  attn_mma::load(f, m, 16);
  const int lane = int(threadIdx.x) & 31;
  bool good = true;
  for (int i = 0; i < attn_mma::FragAcc::num_elements; ++i)
    good = good && f.x[i] == float(16 * attn_mma::acc_row(lane, i) + attn_mma::acc_col(lane, i));
  ok[lane] = good ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------
// Forward

template <class T, int D>
__global__ void __launch_bounds__(kThreads, (FwdCfg<T, D>::kMinBlocks)) attn_fwd_kernel(FwdParams p) {
  using C = FwdCfg<T, D>;
  using M = WarpMma<T>;
  using Acc = typename M::Acc;
  constexpr int MT = C::MT, BR = C::BR, BC = C::BC, LDX = C::LDX, LDP = C::LDP;
  constexpr int NTS = BC / 16, NTO = D / 16;

  DYNAMIC_SHARED(unsigned char, smem_raw);
  T* sQ = reinterpret_cast<T*>(align32(smem_raw));
  T* sK = sQ + BR * LDX;
  T* sV = sK + BC * LDX;
  T* sP = sV + BC * LDX;
  float* sW = reinterpret_cast<float*>(sP + kWarps * 16 * MT * LDP);
  float* sMean = sW + D;  // QK-LN statistics of the block's query rows
  float* sRstd = sMean + BR;
  int* sKeep = reinterpret_cast<int*>(sRstd + BR);

  const int tid = int(threadIdx.x), warp = tid >> 5, lane = tid & 31, g = lane >> 2;
  const int i0 = int(blockIdx.x) * BR, h = int(blockIdx.y), b = int(blockIdx.z);
  const int64_t bh = int64_t(b) * p.H + h;
  const T* q = static_cast<const T*>(p.q) + b * p.sq.b + h * p.sq.h;
  const T* k = static_cast<const T*>(p.k) + b * p.sk.b + h * p.sk.h;
  const T* v = static_cast<const T*>(p.v) + b * p.sv.b + h * p.sv.h;
  const bool norm = p.w != nullptr;

  if (norm) {
    for (int d = tid; d < D; d += kThreads) sW[d] = p.w[d];
    // LayerNorm statistics of the block's query rows, G threads per row (fp32, two passes over the
    // row as the CPU op defines them; the second pass re-reads the row from L1).
    constexpr int G = kThreads / BR, V = 16 / int(sizeof(T));
    const int r = tid / G, sub = tid % G, gr = i0 + r;
    const T* row = q + int64_t(gr < p.Nq ? gr : 0) * p.sq.n;
    float sum = 0.0f, ss = 0.0f;
    if (gr < p.Nq)
      for (int d0 = sub * V; d0 < D; d0 += G * V) {
        float x[V];
        load_chunk<T, V>(row, p.sq.d, d0, x);
ATTN_UNROLL
        for (int i = 0; i < V; ++i) sum += x[i];
      }
    if constexpr (G == 2) sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    const float mu = sum / float(D);
    if (gr < p.Nq)
      for (int d0 = sub * V; d0 < D; d0 += G * V) {
        float x[V];
        load_chunk<T, V>(row, p.sq.d, d0, x);
ATTN_UNROLL
        for (int i = 0; i < V; ++i) ss += (x[i] - mu) * (x[i] - mu);
      }
    if constexpr (G == 2) ss += __shfl_xor_sync(0xffffffffu, ss, 1);
    const float rs = 1.0f / sqrtf(ss / float(D) + p.eps);
    if (sub == 0) {
      sMean[r] = mu;
      sRstd[r] = rs;
      if (gr < p.Nq) {
        p.q_mean[bh * p.Nq + gr] = mu;
        p.q_rstd[bh * p.Nq + gr] = rs;
      }
    }
  }
  __syncthreads();
  load_tile<T, T, D, LDX, BR>(sQ, q, p.sq.n, p.sq.d, i0, p.Nq, norm ? sMean : nullptr,
                              norm ? sRstd : nullptr, sW);

  Acc o[MT][NTO];
  float m[MT][2], l[MT][2];  // running max (log2 units) and this lane's part of the row sum
ATTN_UNROLL
  for (int mt = 0; mt < MT; ++mt) {
ATTN_UNROLL
    for (int nt = 0; nt < NTO; ++nt) M::zero(o[mt][nt]);
    m[mt][0] = m[mt][1] = -CUDART_INF_F;
    l[mt][0] = l[mt][1] = 0.0f;
  }
  const int row0 = i0 + warp * 16 * MT;  // first query row of this warp
  T* myP = sP + warp * 16 * MT * LDP;
  const int kend = p.causal ? min(p.Nk, i0 + BR) : p.Nk;  // later keys are invisible to the block

  for (int j0 = 0; j0 < kend; j0 += BC) {
    __syncthreads();  // the previous tiles are consumed (and sQ is complete on the first pass)
    load_tile<T, T, D, LDX, BC>(sK, k, p.sk.n, p.sk.d, j0, p.Nk,
                                norm ? p.k_mean + bh * p.Nk + j0 : nullptr,
                                norm ? p.k_rstd + bh * p.Nk + j0 : nullptr, sW);
    load_tile<T, T, D, LDX, BC>(sV, v, p.sv.n, p.sv.d, j0, p.Nk, nullptr, nullptr, nullptr);
    for (int j = tid; j < BC; j += kThreads)
      sKeep[j] = j0 + j < p.Nk && (p.keep == nullptr || p.keep[int64_t(b) * p.Nk + j0 + j] != 0);
    __syncthreads();

    Acc s[MT][NTS];
ATTN_UNROLL
    for (int mt = 0; mt < MT; ++mt)
ATTN_UNROLL
      for (int nt = 0; nt < NTS; ++nt) M::zero(s[mt][nt]);
    M::template gemm<MT, NTS, D, true>(s, sQ + warp * 16 * MT * LDX, LDX, sK, LDX);
    bool kv[NTS][4];  // keep flags of this lane's columns 16·nt + 2t + {0, 1, 8, 9}
ATTN_UNROLL
    for (int nt = 0; nt < NTS; ++nt)
ATTN_UNROLL
      for (int e = 0; e < 4; ++e) kv[nt][e] = sKeep[16 * nt + attn_mma::acc_col(lane, (e & 1) + 4 * (e >> 1))] != 0;

    // Online softmax on this lane's elements; a row's elements live in the lane's quad.
ATTN_UNROLL
    for (int mt = 0; mt < MT; ++mt) {
ATTN_UNROLL
      for (int hh = 0; hh < 2; ++hh) {
        const int row = row0 + 16 * mt + g + 8 * hh;
        float mx = -CUDART_INF_F;
ATTN_UNROLL
        for (int nt = 0; nt < NTS; ++nt)
ATTN_UNROLL
          for (int e = 0; e < 4; ++e) {
            const int i = 2 * hh + (e & 1) + 4 * (e >> 1);
            const int col = 16 * nt + attn_mma::acc_col(lane, i);
            const bool ok = kv[nt][e] && (!p.causal || j0 + col <= row);
            const float z = ok ? s[mt][nt].x[i] * p.scale_log2 : -CUDART_INF_F;
            s[mt][nt].x[i] = z;
            mx = fmaxf(mx, z);
          }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[mt][hh], mx);
        const float m_use = m_new == -CUDART_INF_F ? 0.0f : m_new;  // no key seen yet: avoid inf − inf
        const float alpha = exp2f(m[mt][hh] - m_use);
        m[mt][hh] = m_new;
        float rs = 0.0f;
ATTN_UNROLL
        for (int nt = 0; nt < NTS; ++nt)
ATTN_UNROLL
          for (int e = 0; e < 4; ++e) {
            const int i = 2 * hh + (e & 1) + 4 * (e >> 1);
            const float pv = exp2f(s[mt][nt].x[i] - m_use);  // masked: exp2(−inf) = 0
            s[mt][nt].x[i] = pv;
            rs += pv;
          }
        l[mt][hh] = l[mt][hh] * alpha + rs;
ATTN_UNROLL
        for (int nt = 0; nt < NTO; ++nt)
ATTN_UNROLL
          for (int e = 0; e < 4; ++e) o[mt][nt].x[2 * hh + (e & 1) + 4 * (e >> 1)] *= alpha;
      }
    }
    // P → this warp's smem tile, the A operand of O += P·V.
ATTN_UNROLL
    for (int mt = 0; mt < MT; ++mt)
ATTN_UNROLL
      for (int nt = 0; nt < NTS; ++nt)
ATTN_UNROLL
        for (int i = 0; i < attn_mma::kAccElems; i += 2)
          store_pair_smem(myP + (16 * mt + attn_mma::acc_row(lane, i)) * LDP + 16 * nt + attn_mma::acc_col(lane, i),
                          s[mt][nt].x[i], s[mt][nt].x[i + 1]);
    __syncwarp();
    M::template gemm<MT, NTO, BC, false>(o, myP, LDP, sV, LDX);
  }

  // Epilogue: O / l, lse = (m + log2 l)·ln2; a row with no visible key gets 0 and −inf.
  T* out = static_cast<T*>(p.out) + b * p.so.b + h * p.so.h;
ATTN_UNROLL
  for (int mt = 0; mt < MT; ++mt)
ATTN_UNROLL
    for (int hh = 0; hh < 2; ++hh) {
      float lt = l[mt][hh];
      lt += __shfl_xor_sync(0xffffffffu, lt, 1);
      lt += __shfl_xor_sync(0xffffffffu, lt, 2);
      const int row = row0 + 16 * mt + g + 8 * hh;
      if (row < p.Nq) {
        const float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
        T* orow = out + int64_t(row) * p.so.n;
ATTN_UNROLL
        for (int nt = 0; nt < NTO; ++nt)
ATTN_UNROLL
          for (int e = 0; e < 2; ++e) {
            const int i = 2 * hh + 4 * e;
            store_pair(orow, p.so.d, 16 * nt + attn_mma::acc_col(lane, i), o[mt][nt].x[i] * inv,
                       o[mt][nt].x[i + 1] * inv);
          }
        if ((lane & 3) == 0)
          p.lse[bh * p.Nq + row] = lt > 0.0f ? fmaf(m[mt][hh], kLn2, logf(lt)) : -CUDART_INF_F;
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward

// LayerNorm backward for the 16·MT rows (from row0) of this warp whose dx̂·w-gradient d is in
// registers: d becomes dL/dx; dw_out[D] receives this CTA's partial Σ_rows d ∘ x̂ (written by the
// whole CTA: call from every thread; sRed is kWarps·8·D floats of free shared memory).
template <class T, int MT, int D, class Acc>
__device__ __forceinline__ void ln_backward_rows(Acc (&d)[MT][D / 16], int row0, int n,
                                                 const T* x, int64_t sn, int64_t sd,
                                                 const float* mean, const float* rstd,
                                                 const float* sW, float* sRed, float* dw_out) {
  constexpr int NT = D / 16;
  const int tid = int(threadIdx.x), warp = tid >> 5, lane = tid & 31, g = lane >> 2;
  float dwl[NT][4];  // this lane's columns 16·nt + 2t + {0, 1, 8, 9}
ATTN_UNROLL
  for (int nt = 0; nt < NT; ++nt) dwl[nt][0] = dwl[nt][1] = dwl[nt][2] = dwl[nt][3] = 0.0f;
ATTN_UNROLL
  for (int mt = 0; mt < MT; ++mt)
ATTN_UNROLL
    for (int hh = 0; hh < 2; ++hh) {
      const int r = row0 + 16 * mt + g + 8 * hh;
      const bool ok = r < n;
      const float mu = ok ? mean[r] : 0.0f, rs = ok ? rstd[r] : 0.0f;
      const T* xr = x + int64_t(ok ? r : 0) * sn;
      float xh[NT][4], a = 0.0f, c = 0.0f;
ATTN_UNROLL
      for (int nt = 0; nt < NT; ++nt)
ATTN_UNROLL
        for (int e = 0; e < 2; ++e) {
          const int i = 2 * hh + 4 * e, col = 16 * nt + attn_mma::acc_col(lane, i);
          float x0 = 0.0f, x1 = 0.0f;
          if (ok) load_pair(xr, sd, col, x0, x1);
          xh[nt][2 * e] = (x0 - mu) * rs;
          xh[nt][2 * e + 1] = (x1 - mu) * rs;
ATTN_UNROLL
          for (int j = 0; j < 2; ++j) {
            const float gx = d[mt][nt].x[i + j] * sW[col + j];
            a += gx;
            c += gx * xh[nt][2 * e + j];
          }
        }
      a += __shfl_xor_sync(0xffffffffu, a, 1);
      c += __shfl_xor_sync(0xffffffffu, c, 1);
      a += __shfl_xor_sync(0xffffffffu, a, 2);
      c += __shfl_xor_sync(0xffffffffu, c, 2);
      const float am = a / float(D), cm = c / float(D);
ATTN_UNROLL
      for (int nt = 0; nt < NT; ++nt)
ATTN_UNROLL
        for (int e = 0; e < 2; ++e)
ATTN_UNROLL
          for (int j = 0; j < 2; ++j) {
            const int i = 2 * hh + 4 * e + j, col = 16 * nt + attn_mma::acc_col(lane, i);
            const float dd = ok ? d[mt][nt].x[i] : 0.0f, xv = xh[nt][2 * e + j];
            dwl[nt][2 * e + j] += dd * xv;
            d[mt][nt].x[i] = rs * (dd * sW[col] - am - xv * cm);
          }
    }
  // Deterministic reduction of dw over the CTA: rows (warp, g) of sRed, summed in order.
ATTN_UNROLL
  for (int nt = 0; nt < NT; ++nt)
ATTN_UNROLL
    for (int e = 0; e < 2; ++e)
ATTN_UNROLL
      for (int j = 0; j < 2; ++j)
        sRed[(warp * 8 + g) * D + 16 * nt + attn_mma::acc_col(lane, 4 * e + j)] = dwl[nt][2 * e + j];
  __syncthreads();
  for (int col = tid; col < D; col += kThreads) {
    float s = 0.0f;
    for (int r = 0; r < kWarps * 8; ++r) s += sRed[r * D + col];
    dw_out[col] = s;
  }
}

// Writes the 16·MT rows from row0 (< n) of a warp's [16·MT, D] accumulators to out (strided).
template <class T, int MT, int D, class Acc>
__device__ __forceinline__ void store_rows(const Acc (&a)[MT][D / 16], float mul, int row0, int n,
                                           T* out, int64_t sn, int64_t sd) {
  const int lane = int(threadIdx.x) & 31, g = lane >> 2;
ATTN_UNROLL
  for (int mt = 0; mt < MT; ++mt)
ATTN_UNROLL
    for (int hh = 0; hh < 2; ++hh) {
      const int r = row0 + 16 * mt + g + 8 * hh;
      if (r < n) {
        T* orow = out + int64_t(r) * sn;
ATTN_UNROLL
        for (int nt = 0; nt < D / 16; ++nt)
ATTN_UNROLL
          for (int e = 0; e < 2; ++e) {
            const int i = 2 * hh + 4 * e;
            store_pair(orow, sd, 16 * nt + attn_mma::acc_col(lane, i), a[mt][nt].x[i] * mul,
                       a[mt][nt].x[i + 1] * mul);
          }
      }
    }
}

// dK, dV for one block of BKV keys; each warp owns 16 keys and computes the transposed tiles
// Sᵀ = K̂ Q̂ᵀ, Pᵀ, dPᵀ = V dOᵀ, dSᵀ for them, so dK, dV never leave its registers.
template <class T, int D>
__global__ void __launch_bounds__(kThreads, (BwdCfg<T, D>::kMinBlocks)) attn_bwd_dkdv_kernel(BwdParams p) {
  using C = BwdCfg<T, D>;
  using M = WarpMma<T>;
  using Acc = typename M::Acc;
  constexpr int BKV = C::BKV, BQ = C::BQ, LDX = C::LDX, LDB = C::LDB;
  constexpr int NTQ = BQ / 16, NTD = D / 16;

  DYNAMIC_SHARED(unsigned char, smem_raw);
  T* sK = reinterpret_cast<T*>(align32(smem_raw));
  T* sV = sK + BKV * LDX;
  T* sQ = sV + BKV * LDX;
  T* sG = sQ + BQ * LDX;
  T* sP = sG + BQ * LDX;
  float* sW = reinterpret_cast<float*>(sP + kWarps * 16 * LDB);
  float* sLse = sW + D;  // lse·log2(e) of the query step, −inf beyond Nq
  float* sDelta = sLse + BQ;
  int* sKeep = reinterpret_cast<int*>(sDelta + BQ);

  const int tid = int(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const int j0 = int(blockIdx.x) * BKV, h = int(blockIdx.y), b = int(blockIdx.z);
  const int64_t bh = int64_t(b) * p.H + h;
  const T* q = static_cast<const T*>(p.q) + b * p.sq.b + h * p.sq.h;
  const T* k = static_cast<const T*>(p.k) + b * p.sk.b + h * p.sk.h;
  const T* v = static_cast<const T*>(p.v) + b * p.sv.b + h * p.sv.h;
  const T* gq = static_cast<const T*>(p.g) + b * p.sg.b + h * p.sg.h;
  const bool norm = p.w != nullptr;

  if (norm)
    for (int d = tid; d < D; d += kThreads) sW[d] = p.w[d];
  for (int j = tid; j < BKV; j += kThreads)
    sKeep[j] = j0 + j < p.Nk && (p.keep == nullptr || p.keep[int64_t(b) * p.Nk + j0 + j] != 0);
  __syncthreads();
  load_tile<T, T, D, LDX, BKV>(sK, k, p.sk.n, p.sk.d, j0, p.Nk,
                               norm ? p.k_mean + bh * p.Nk + j0 : nullptr,
                               norm ? p.k_rstd + bh * p.Nk + j0 : nullptr, sW);
  load_tile<T, T, D, LDX, BKV>(sV, v, p.sv.n, p.sv.d, j0, p.Nk, nullptr, nullptr, nullptr);

  Acc dk[1][NTD], dv[1][NTD];
ATTN_UNROLL
  for (int nt = 0; nt < NTD; ++nt) {
    M::zero(dk[0][nt]);
    M::zero(dv[0][nt]);
  }
  const int key0 = warp * 16;  // this warp's keys within the block
  T* myP = sP + warp * 16 * LDB;
  // Causal: queries before j0 see none of these keys.
  const int istart = p.causal ? (j0 / BQ) * BQ : 0;

  for (int i0 = istart; i0 < p.Nq; i0 += BQ) {
    __syncthreads();
    load_tile<T, T, D, LDX, BQ>(sQ, q, p.sq.n, p.sq.d, i0, p.Nq,
                                norm ? p.q_mean + bh * p.Nq + i0 : nullptr,
                                norm ? p.q_rstd + bh * p.Nq + i0 : nullptr, sW);
    load_tile<T, T, D, LDX, BQ>(sG, gq, p.sg.n, p.sg.d, i0, p.Nq, nullptr, nullptr, nullptr);
    for (int i = tid; i < BQ; i += kThreads) {
      const bool in = i0 + i < p.Nq;
      sLse[i] = in ? p.lse[bh * p.Nq + i0 + i] * kLog2e : -CUDART_INF_F;
      sDelta[i] = in ? p.delta[bh * p.Nq + i0 + i] : 0.0f;
    }
    __syncthreads();

    Acc st[1][NTQ];  // Sᵀ, then Pᵀ
ATTN_UNROLL
    for (int nt = 0; nt < NTQ; ++nt) M::zero(st[0][nt]);
    M::template gemm<1, NTQ, D, true>(st, sK + key0 * LDX, LDX, sQ, LDX);
ATTN_UNROLL
    for (int nt = 0; nt < NTQ; ++nt)
ATTN_UNROLL
      for (int i = 0; i < attn_mma::kAccElems; ++i) {
        const int kr = key0 + attn_mma::acc_row(lane, i), qc = 16 * nt + attn_mma::acc_col(lane, i);
        const float l2 = sLse[qc];
        const bool ok = sKeep[kr] != 0 && l2 != -CUDART_INF_F && (!p.causal || j0 + kr <= i0 + qc);
        st[0][nt].x[i] = ok ? exp2f(st[0][nt].x[i] * p.scale_log2 - l2) : 0.0f;
      }
ATTN_UNROLL
    for (int nt = 0; nt < NTQ; ++nt)
ATTN_UNROLL
      for (int i = 0; i < attn_mma::kAccElems; i += 2)
        store_pair_smem(myP + attn_mma::acc_row(lane, i) * LDB + 16 * nt + attn_mma::acc_col(lane, i),
                        st[0][nt].x[i], st[0][nt].x[i + 1]);
    __syncwarp();
    M::template gemm<1, NTD, BQ, false>(dv, myP, LDB, sG, LDX);  // dV += Pᵀ dO

    Acc dpt[1][NTQ];  // dPᵀ = V dOᵀ
ATTN_UNROLL
    for (int nt = 0; nt < NTQ; ++nt) M::zero(dpt[0][nt]);
    M::template gemm<1, NTQ, D, true>(dpt, sV + key0 * LDX, LDX, sG, LDX);
    __syncwarp();  // every lane has read Pᵀ before it is overwritten by dSᵀ
ATTN_UNROLL
    for (int nt = 0; nt < NTQ; ++nt)
ATTN_UNROLL
      for (int i = 0; i < attn_mma::kAccElems; i += 2) {
        const int qc = 16 * nt + attn_mma::acc_col(lane, i);
        store_pair_smem(myP + attn_mma::acc_row(lane, i) * LDB + qc,
                        st[0][nt].x[i] * (dpt[0][nt].x[i] - sDelta[qc]),
                        st[0][nt].x[i + 1] * (dpt[0][nt].x[i + 1] - sDelta[qc + 1]));
      }
    __syncwarp();
    M::template gemm<1, NTD, BQ, false>(dk, myP, LDB, sQ, LDX);  // dK̂ += dSᵀ Q̂ (scale later)
  }

  T* dvp = static_cast<T*>(p.dv) + b * p.sdv.b + h * p.sdv.h;
  store_rows<T, 1, D>(dv, 1.0f, j0 + key0, p.Nk, dvp, p.sdv.n, p.sdv.d);  // frees dv's registers
ATTN_UNROLL
  for (int nt = 0; nt < NTD; ++nt)
ATTN_UNROLL
    for (int i = 0; i < attn_mma::kAccElems; ++i) dk[0][nt].x[i] *= p.scale;
  if (norm) {
    __syncthreads();  // the K tile region becomes the dw reduction buffer
    const int64_t part = int64_t(p.B) * p.H * ((p.Nq + C::BQQ - 1) / C::BQQ) +
                         bh * gridDim.x + blockIdx.x;
    ln_backward_rows<T, 1, D>(dk, j0 + key0, p.Nk, k, p.sk.n, p.sk.d, p.k_mean + bh * p.Nk,
                              p.k_rstd + bh * p.Nk, sW, reinterpret_cast<float*>(sK),
                              p.dw_part + part * D);
  }
  T* dkp = static_cast<T*>(p.dk) + b * p.sdk.b + h * p.sdk.h;
  store_rows<T, 1, D>(dk, 1.0f, j0 + key0, p.Nk, dkp, p.sdk.n, p.sdk.d);
}

// dQ for one block of BQQ query rows (16 per warp), looping over key blocks: recomputes S and dP
// (the price of a deterministic dQ without atomics).
template <class T, int D>
__global__ void __launch_bounds__(kThreads, (BwdCfg<T, D>::kMinBlocks)) attn_bwd_dq_kernel(BwdParams p) {
  using C = BwdCfg<T, D>;
  using M = WarpMma<T>;
  using Acc = typename M::Acc;
  constexpr int BQQ = C::BQQ, BKC = C::BKC, LDX = C::LDX, LDS = C::LDS;
  constexpr int NTK = BKC / 16, NTD = D / 16;

  DYNAMIC_SHARED(unsigned char, smem_raw);
  T* sQ = reinterpret_cast<T*>(align32(smem_raw));
  T* sG = sQ + BQQ * LDX;
  T* sK = sG + BQQ * LDX;
  T* sV = sK + BKC * LDX;
  T* sS = sV + BKC * LDX;
  float* sW = reinterpret_cast<float*>(sS + kWarps * 16 * LDS);
  int* sKeep = reinterpret_cast<int*>(sW + D);

  const int tid = int(threadIdx.x), warp = tid >> 5, lane = tid & 31, g = lane >> 2;
  const int i0 = int(blockIdx.x) * BQQ, h = int(blockIdx.y), b = int(blockIdx.z);
  const int64_t bh = int64_t(b) * p.H + h;
  const T* q = static_cast<const T*>(p.q) + b * p.sq.b + h * p.sq.h;
  const T* k = static_cast<const T*>(p.k) + b * p.sk.b + h * p.sk.h;
  const T* v = static_cast<const T*>(p.v) + b * p.sv.b + h * p.sv.h;
  const T* gq = static_cast<const T*>(p.g) + b * p.sg.b + h * p.sg.h;
  const bool norm = p.w != nullptr;

  if (norm)
    for (int d = tid; d < D; d += kThreads) sW[d] = p.w[d];
  __syncthreads();
  load_tile<T, T, D, LDX, BQQ>(sQ, q, p.sq.n, p.sq.d, i0, p.Nq,
                               norm ? p.q_mean + bh * p.Nq + i0 : nullptr,
                               norm ? p.q_rstd + bh * p.Nq + i0 : nullptr, sW);
  load_tile<T, T, D, LDX, BQQ>(sG, gq, p.sg.n, p.sg.d, i0, p.Nq, nullptr, nullptr, nullptr);

  const int row0 = i0 + warp * 16;
  float l2[2], dl[2];  // lse·log2(e) and delta of rows g, g + 8
ATTN_UNROLL
  for (int hh = 0; hh < 2; ++hh) {
    const int r = row0 + g + 8 * hh;
    l2[hh] = r < p.Nq ? p.lse[bh * p.Nq + r] * kLog2e : -CUDART_INF_F;
    dl[hh] = r < p.Nq ? p.delta[bh * p.Nq + r] : 0.0f;
  }
  Acc dq[1][NTD];
ATTN_UNROLL
  for (int nt = 0; nt < NTD; ++nt) M::zero(dq[0][nt]);
  T* myS = sS + warp * 16 * LDS;
  const int kend = p.causal ? min(p.Nk, i0 + BQQ) : p.Nk;

  for (int j0 = 0; j0 < kend; j0 += BKC) {
    __syncthreads();
    load_tile<T, T, D, LDX, BKC>(sK, k, p.sk.n, p.sk.d, j0, p.Nk,
                                 norm ? p.k_mean + bh * p.Nk + j0 : nullptr,
                                 norm ? p.k_rstd + bh * p.Nk + j0 : nullptr, sW);
    load_tile<T, T, D, LDX, BKC>(sV, v, p.sv.n, p.sv.d, j0, p.Nk, nullptr, nullptr, nullptr);
    for (int j = tid; j < BKC; j += kThreads)
      sKeep[j] = j0 + j < p.Nk && (p.keep == nullptr || p.keep[int64_t(b) * p.Nk + j0 + j] != 0);
    __syncthreads();

    Acc s[1][NTK], dp[1][NTK];
ATTN_UNROLL
    for (int nt = 0; nt < NTK; ++nt) {
      M::zero(s[0][nt]);
      M::zero(dp[0][nt]);
    }
    M::template gemm<1, NTK, D, true>(s, sQ + warp * 16 * LDX, LDX, sK, LDX);   // S = Q̂ K̂ᵀ
    M::template gemm<1, NTK, D, true>(dp, sG + warp * 16 * LDX, LDX, sV, LDX);  // dP = dO Vᵀ
ATTN_UNROLL
    for (int nt = 0; nt < NTK; ++nt) {
      bool kv[4];  // keep flags of this lane's columns 16·nt + 2t + {0, 1, 8, 9}
ATTN_UNROLL
      for (int e = 0; e < 4; ++e) kv[e] = sKeep[16 * nt + attn_mma::acc_col(lane, (e & 1) + 4 * (e >> 1))] != 0;
ATTN_UNROLL
      for (int i = 0; i < attn_mma::kAccElems; ++i) {
        const int hh = (i >> 1) & 1, r = row0 + g + 8 * hh;
        const int col = 16 * nt + attn_mma::acc_col(lane, i);
        const bool ok = kv[(i & 1) + 2 * (i >> 2)] && l2[hh] != -CUDART_INF_F && (!p.causal || j0 + col <= r);
        const float pv = ok ? exp2f(s[0][nt].x[i] * p.scale_log2 - l2[hh]) : 0.0f;
        s[0][nt].x[i] = pv * (dp[0][nt].x[i] - dl[hh]);  // dS
      }
ATTN_UNROLL
      for (int i = 0; i < attn_mma::kAccElems; i += 2)
        store_pair_smem(myS + attn_mma::acc_row(lane, i) * LDS + 16 * nt + attn_mma::acc_col(lane, i),
                        s[0][nt].x[i], s[0][nt].x[i + 1]);
    }
    __syncwarp();
    M::template gemm<1, NTD, BKC, false>(dq, myS, LDS, sK, LDX);  // dQ̂ += dS K̂ (scale later)
  }

ATTN_UNROLL
  for (int nt = 0; nt < NTD; ++nt)
ATTN_UNROLL
    for (int i = 0; i < attn_mma::kAccElems; ++i) dq[0][nt].x[i] *= p.scale;
  if (norm) {
    __syncthreads();  // the Q tile region becomes the dw reduction buffer
    const int64_t part = bh * gridDim.x + blockIdx.x;
    ln_backward_rows<T, 1, D>(dq, row0, p.Nq, q, p.sq.n, p.sq.d, p.q_mean + bh * p.Nq,
                              p.q_rstd + bh * p.Nq, sW, reinterpret_cast<float*>(sQ),
                              p.dw_part + part * D);
  }
  T* dqp = static_cast<T*>(p.dq) + b * p.sdq.b + h * p.sdq.h;
  store_rows<T, 1, D>(dq, 1.0f, row0, p.Nq, dqp, p.sdq.n, p.sdq.d);
}

// ---------------------------------------------------------------------------------------------
// Host side

cudaStream_t cur_stream() { return static_cast<cudaStream_t>(stream()); }

unsigned blocks_for(int64_t n, int per_block) { return unsigned((n + per_block - 1) / per_block); }

// Raises the dynamic shared memory limit of a kernel once (needed above 48 KB).
template <class K>
void allow_smem(K* kernel, size_t bytes) {
  if (bytes > 48 * 1024) CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

Strides strides_of(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

bool token_major(const Tensor& t) {
  return t.size(1) > 1 && t.size(2) > 1 && t.stride(3) == 1 && t.stride(1) < t.stride(2);
}

// A new [B, H, N, Dh] device tensor laid out like `like` (token-major or plain), see the header;
// zero-filled on request.
Tensor empty_like_layout(const Tensor& like, DType dt, bool zero = false) {
  const Shape& s = like.shape();
  if (token_major(like)) {
    Tensor st = Tensor::empty({s[0], s[2], s[1], s[3]}, dt, device());
    if (zero) st.zero_();
    return st.permute({0, 2, 1, 3});
  }
  Tensor t = Tensor::empty(s, dt, device());
  if (zero) t.zero_();
  return t;
}

void check_on_device(const Tensor& t, const char* op, const char* name) {
  ENGINE_CHECK(t.device() == device(), op, ": expected ", name, " on ", device(), ", got ",
               t.describe(), (t.device().is_cpu() ? " (cpu)" : ""));
}

struct Problem {
  int64_t B, H, Nq, Nk, Dh;
  double scale;
  bool causal, qk_norm;
  double eps;
};

Problem check_and_describe(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                           const AttentionOptions& o) {
  engine::check_defined(q, op, "q");
  engine::check_defined(k, op, "k");
  engine::check_defined(v, op, "v");
  check_on_device(q, op, "q");
  check_on_device(k, op, "k");
  check_on_device(v, op, "v");
  engine::check_dim(q, 4, op, "q");
  engine::check_dim(k, 4, op, "k");
  engine::check_dim(v, 4, op, "v");
  ENGINE_CHECK(engine::is_floating(q.dtype()), op, ": expected floating q, got ", q.describe());
  ENGINE_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype(), op,
               ": q, k, v must share a dtype, got ", q.describe(), ", ", k.describe(), ", ",
               v.describe());
  ENGINE_CHECK(q.dtype() != DType::f64, op, ": f64 is not supported on the GPU (use f32 or bf16), got q ",
               q.describe());
  ENGINE_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3), op,
               ": q ", q.describe(), " and k ", k.describe(),
               " must agree in batch, heads and head dim ([B, H, N, Dh])");
  ENGINE_CHECK(v.shape() == k.shape(), op, ": v ", v.describe(), " must have the shape of k ",
               k.describe());
  Problem p;
  p.B = q.size(0);
  p.H = q.size(1);
  p.Nq = q.size(2);
  p.Nk = k.size(2);
  p.Dh = q.size(3);
  ENGINE_CHECK(p.Dh == 32 || p.Dh == 64 || p.Dh == 128, op, ": head dim ", p.Dh, " of q ",
               q.describe(), " is not supported on the GPU (32, 64 or 128)");
  ENGINE_CHECK(p.Nq < (int64_t(1) << 31) && p.Nk < (int64_t(1) << 31) && p.H <= 65535 && p.B <= 65535,
               op, ": q ", q.describe(), " / k ", k.describe(), " exceed the GPU kernels' limits");
  p.scale = o.scale ? *o.scale : 1.0 / std::sqrt(double(p.Dh));
  ENGINE_CHECK(std::isfinite(p.scale), op, ": scale ", p.scale, " is not finite");
  p.causal = o.causal;
  ENGINE_CHECK(!p.causal || p.Nq == p.Nk, op, ": causal attention needs as many queries as keys, "
               "got q ", q.describe(), " and k ", k.describe());
  p.qk_norm = o.qk_norm;
  p.eps = o.qk_norm_eps;
  if (o.qk_norm) {
    ENGINE_CHECK(o.qk_norm_weight.defined(), op, ": qk_norm needs qk_norm_weight of shape [",
                 p.Dh, "]");
    check_on_device(o.qk_norm_weight, op, "qk_norm_weight");
    ENGINE_CHECK(o.qk_norm_weight.shape() == Shape{p.Dh} &&
                     engine::is_floating(o.qk_norm_weight.dtype()),
                 op, ": qk_norm_weight ", o.qk_norm_weight.describe(),
                 " must be a floating vector of the head dim [", p.Dh, "] (q ", q.describe(), ")");
  } else {
    ENGINE_CHECK(!o.qk_norm_weight.defined(), op,
                 ": qk_norm_weight given but qk_norm is false");
  }
  if (o.key_mask.defined()) {
    check_on_device(o.key_mask, op, "key_mask");
    ENGINE_CHECK(o.key_mask.shape() == Shape({p.B, p.Nk}), op, ": key_mask ",
                 o.key_mask.describe(), " must be [batch, keys] = [", p.B, ", ", p.Nk,
                 "] for k ", k.describe());
  }
  return p;
}

// Runs a kernel templated on one of the element types of `dt` (bf16, f32, f64, i32, i64).
template <class F>
void visit_any(DType dt, F&& f) {
  switch (dt) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    case DType::bf16: f(__nv_bfloat16{}); return;
    case DType::i32: f(int32_t{}); return;
    case DType::i64: f(int64_t{}); return;
  }
}

// i32 keep flags [B, Nk] from a key mask of any dtype and strides (nonzero = keep).
Tensor keep_flags(const Tensor& mask) {
  const int64_t B = mask.size(0), Nk = mask.size(1);
  Tensor keep = Tensor::empty({B, Nk}, DType::i32, device());
  if (B * Nk == 0) return keep;
  visit_any(mask.dtype(), [&](auto z) {
    using M = decltype(z);
    LAUNCH(attn_keep_kernel<M>, blocks_for(B * Nk, 256), 256, 0, cur_stream())(
        static_cast<const M*>(mask.raw_data()), mask.stride(0), mask.stride(1), int(B), int(Nk),
        keep.data<int32_t>());
    CHECK_LAUNCH("attn_keep_kernel");
  });
  return keep;
}

Tensor weight_f32(const Tensor& w) {
  Tensor out = Tensor::empty({w.size(0)}, DType::f32, device());
  visit_any(w.dtype(), [&](auto z) {
    using W = decltype(z);
    if constexpr (std::is_same_v<W, int32_t> || std::is_same_v<W, int64_t>) {
      ENGINE_FAIL("attention: qk_norm_weight must be floating");
    } else {
      LAUNCH(attn_to_f32_kernel<W>, 1, 128, 0, cur_stream())(static_cast<const W*>(w.raw_data()),
                                                             w.stride(0), int(w.size(0)),
                                                             out.data<float>());
      CHECK_LAUNCH("attn_to_f32_kernel");
    }
  });
  return out;
}

// The tensor-core path relies on the accumulator layout (attention_mma.cuh); checked once.
void check_acc_layout() {
  static const bool ok = [] {
    Tensor flags = Tensor::empty({32}, DType::i32, device());
    LAUNCH(attn_acc_layout_probe_kernel, 1, 32, 256 * sizeof(float) + 32, cur_stream())(
        flags.data<int32_t>());
    CHECK_LAUNCH("attn_acc_layout_probe_kernel");
    for (int32_t f : flags.to_vector<int32_t>())
      if (f != 1) return false;
    return true;
  }();
  ENGINE_CHECK(ok, "attention: the tensor-core accumulator layout of this GPU is not the sm_80/sm_90 "
               "one the attention kernels assume (kernels/cuda/attention_mma.cuh)");
}

template <class F>
void visit_head_dim(int64_t dh, F&& f) {
  switch (dh) {
    case 32: f(std::integral_constant<int, 32>{}); return;
    case 64: f(std::integral_constant<int, 64>{}); return;
    case 128: f(std::integral_constant<int, 128>{}); return;
    default: ENGINE_FAIL("attention: unsupported head dim ", dh);
  }
}
template <class F>
void visit_input(DType dt, F&& f) {
  if (dt == DType::bf16) {
    f(__nv_bfloat16{});
  } else {
    f(float{});
  }
}

template <class T, int D>
void ln_stats(const Tensor& x, float eps, const Tensor& mean, const Tensor& rstd) {
  const int64_t rows = x.size(0) * x.size(1) * x.size(2);
  if (rows == 0) return;
  LAUNCH((attn_ln_stats_kernel<T, D>), blocks_for(rows, kThreads / 8), kThreads, 0, cur_stream())(
      static_cast<const T*>(x.raw_data()), strides_of(x), int(x.size(1)), int(x.size(2)), rows, eps,
      mean.data<float>(), rstd.data<float>());
  CHECK_LAUNCH("attn_ln_stats_kernel");
}

}  // namespace

// ---------------------------------------------------------------------------------------------

AttentionResult attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionOptions& opts) {
  const char* op = "attention";
  const Problem p = check_and_describe(op, q, k, v, opts);
  const Device dev = device();
  AttentionResult res;
  res.out = empty_like_layout(q, q.dtype());
  res.lse = Tensor::empty({p.B, p.H, p.Nq}, DType::f32, dev);
  if (p.qk_norm) {
    res.q_mean = Tensor::empty({p.B, p.H, p.Nq}, DType::f32, dev);
    res.q_rstd = Tensor::empty({p.B, p.H, p.Nq}, DType::f32, dev);
    res.k_mean = Tensor::empty({p.B, p.H, p.Nk}, DType::f32, dev);
    res.k_rstd = Tensor::empty({p.B, p.H, p.Nk}, DType::f32, dev);
  }
  if (p.B * p.H * p.Nq == 0 || p.Nk == 0) {  // no keys: every row is "fully masked"
    res.out = empty_like_layout(q, q.dtype(), true);
    res.lse.fill_(-std::numeric_limits<double>::infinity());
    for (Tensor* t : {&res.q_mean, &res.q_rstd, &res.k_mean, &res.k_rstd})
      if (t->defined()) t->zero_();
    return res;
  }
  const Tensor keep = opts.key_mask.defined() ? keep_flags(opts.key_mask) : Tensor();
  const Tensor w = p.qk_norm ? weight_f32(opts.qk_norm_weight) : Tensor();

  visit_input(q.dtype(), [&](auto z) {
    using T = decltype(z);
    if constexpr (std::is_same_v<T, __nv_bfloat16>) check_acc_layout();
    visit_head_dim(p.Dh, [&](auto dc) {
      constexpr int D = decltype(dc)::value;
      using C = FwdCfg<T, D>;
      if (p.qk_norm) ln_stats<T, D>(k, float(p.eps), res.k_mean, res.k_rstd);  // q's: in the kernel
      FwdParams fp{};
      fp.q = q.raw_data();
      fp.k = k.raw_data();
      fp.v = v.raw_data();
      fp.out = res.out.raw_data();
      fp.sq = strides_of(q);
      fp.sk = strides_of(k);
      fp.sv = strides_of(v);
      fp.so = strides_of(res.out);
      fp.lse = res.lse.data<float>();
      fp.keep = keep.defined() ? keep.data<int32_t>() : nullptr;
      if (p.qk_norm) {
        fp.w = w.data<float>();
        fp.q_mean = res.q_mean.data<float>();
        fp.q_rstd = res.q_rstd.data<float>();
        fp.k_mean = res.k_mean.data<float>();
        fp.k_rstd = res.k_rstd.data<float>();
      }
      fp.B = int(p.B);
      fp.H = int(p.H);
      fp.Nq = int(p.Nq);
      fp.Nk = int(p.Nk);
      fp.scale_log2 = float(p.scale * 1.4426950408889634);
      fp.eps = float(p.eps);
      fp.causal = p.causal ? 1 : 0;
      allow_smem(attn_fwd_kernel<T, D>, C::kSmem);
      const dim3 grid(blocks_for(p.Nq, C::BR), unsigned(p.H), unsigned(p.B));
      LAUNCH((attn_fwd_kernel<T, D>), grid, kThreads, C::kSmem, cur_stream())(fp);
      CHECK_LAUNCH("attn_fwd_kernel");
    });
  });
  return res;
}

AttentionGrads attention_backward(const Tensor& g, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const AttentionOptions& opts,
                                  const AttentionResult& fwd) {
  const char* op = "attention_backward";
  const Problem p = check_and_describe(op, q, k, v, opts);
  engine::check_defined(g, op, "g_out");
  engine::check_defined(fwd.out, op, "out");
  engine::check_defined(fwd.lse, op, "lse");
  check_on_device(g, op, "g_out");
  check_on_device(fwd.out, op, "out");
  check_on_device(fwd.lse, op, "lse");
  ENGINE_CHECK(g.shape() == q.shape() && fwd.out.shape() == q.shape(), op, ": g_out ",
               g.describe(), " and out ", fwd.out.describe(), " must have the shape of q ",
               q.describe());
  ENGINE_CHECK(g.dtype() == q.dtype() && fwd.out.dtype() == q.dtype(), op, ": g_out ",
               g.describe(), " and out ", fwd.out.describe(), " must have the dtype of q ",
               q.describe());
  ENGINE_CHECK(fwd.lse.shape() == Shape({p.B, p.H, p.Nq}), op, ": lse ", fwd.lse.describe(),
               " must be [", p.B, ", ", p.H, ", ", p.Nq, "]");
  ENGINE_CHECK(fwd.lse.dtype() == DType::f32 && fwd.lse.is_contiguous(), op, ": lse ",
               fwd.lse.describe(), " must be contiguous f32 for q ", q.describe());
  if (p.qk_norm) {
    for (const Tensor* t : {&fwd.q_mean, &fwd.q_rstd, &fwd.k_mean, &fwd.k_rstd}) {
      ENGINE_CHECK(t->defined() && t->dtype() == DType::f32 && t->is_contiguous(), op,
                   ": qk_norm needs the forward's LayerNorm statistics (f32)");
      check_on_device(*t, op, "LayerNorm statistics");
    }
    ENGINE_CHECK(fwd.q_mean.shape() == fwd.lse.shape() && fwd.q_rstd.shape() == fwd.lse.shape() &&
                     fwd.k_mean.shape() == Shape({p.B, p.H, p.Nk}) &&
                     fwd.k_rstd.shape() == fwd.k_mean.shape(),
                 op, ": LayerNorm statistics ", fwd.q_mean.describe(), " / ", fwd.k_mean.describe(),
                 " do not match q ", q.describe(), " and k ", k.describe());
  }
  const Device dev = device();
  AttentionGrads res;
  const bool empty = p.B * p.H * p.Nq == 0 || p.Nk == 0;
  res.dq = empty_like_layout(q, q.dtype(), empty);
  res.dk = empty_like_layout(k, k.dtype(), empty);
  res.dv = empty_like_layout(v, v.dtype(), empty);
  if (p.qk_norm) res.dqk_norm_weight = Tensor::empty({p.Dh}, opts.qk_norm_weight.dtype(), dev);
  if (empty) {
    if (p.qk_norm) res.dqk_norm_weight.zero_();
    return res;
  }
  const Tensor keep = opts.key_mask.defined() ? keep_flags(opts.key_mask) : Tensor();
  const Tensor w = p.qk_norm ? weight_f32(opts.qk_norm_weight) : Tensor();
  Tensor delta = Tensor::empty({p.B, p.H, p.Nq}, DType::f32, dev);

  visit_input(q.dtype(), [&](auto z) {
    using T = decltype(z);
    if constexpr (std::is_same_v<T, __nv_bfloat16>) check_acc_layout();
    visit_head_dim(p.Dh, [&](auto dc) {
      constexpr int D = decltype(dc)::value;
      using C = BwdCfg<T, D>;
      const int64_t rows = p.B * p.H * p.Nq;
      LAUNCH((attn_bwd_delta_kernel<T, D>), blocks_for(rows, kThreads), kThreads, 0, cur_stream())(
          static_cast<const T*>(g.raw_data()), strides_of(g), static_cast<const T*>(fwd.out.raw_data()),
          strides_of(fwd.out), int(p.H), int(p.Nq), rows, delta.data<float>());
      CHECK_LAUNCH("attn_bwd_delta_kernel");

      const int64_t nqb = (p.Nq + C::BQQ - 1) / C::BQQ, nkb = (p.Nk + C::BKV - 1) / C::BKV;
      Tensor dw_part = p.qk_norm ? Tensor::empty({p.B * p.H * (nqb + nkb), p.Dh}, DType::f32, dev)
                                 : Tensor();
      BwdParams bp{};
      bp.q = q.raw_data();
      bp.k = k.raw_data();
      bp.v = v.raw_data();
      bp.g = g.raw_data();
      bp.dq = res.dq.raw_data();
      bp.dk = res.dk.raw_data();
      bp.dv = res.dv.raw_data();
      bp.sq = strides_of(q);
      bp.sk = strides_of(k);
      bp.sv = strides_of(v);
      bp.sg = strides_of(g);
      bp.sdq = strides_of(res.dq);
      bp.sdk = strides_of(res.dk);
      bp.sdv = strides_of(res.dv);
      bp.lse = fwd.lse.data<float>();
      bp.delta = delta.data<float>();
      bp.keep = keep.defined() ? keep.data<int32_t>() : nullptr;
      if (p.qk_norm) {
        bp.w = w.data<float>();
        bp.q_mean = fwd.q_mean.data<float>();
        bp.q_rstd = fwd.q_rstd.data<float>();
        bp.k_mean = fwd.k_mean.data<float>();
        bp.k_rstd = fwd.k_rstd.data<float>();
        bp.dw_part = dw_part.data<float>();
      }
      bp.B = int(p.B);
      bp.H = int(p.H);
      bp.Nq = int(p.Nq);
      bp.Nk = int(p.Nk);
      bp.scale = float(p.scale);
      bp.scale_log2 = float(p.scale * 1.4426950408889634);
      bp.causal = p.causal ? 1 : 0;

      allow_smem(attn_bwd_dkdv_kernel<T, D>, C::kSmemKV);
      LAUNCH((attn_bwd_dkdv_kernel<T, D>), dim3(unsigned(nkb), unsigned(p.H), unsigned(p.B)), kThreads,
             C::kSmemKV, cur_stream())(bp);
      CHECK_LAUNCH("attn_bwd_dkdv_kernel");
      allow_smem(attn_bwd_dq_kernel<T, D>, C::kSmemQ);
      LAUNCH((attn_bwd_dq_kernel<T, D>), dim3(unsigned(nqb), unsigned(p.H), unsigned(p.B)), kThreads,
             C::kSmemQ, cur_stream())(bp);
      CHECK_LAUNCH("attn_bwd_dq_kernel");

      if (p.qk_norm) {
        visit_any(opts.qk_norm_weight.dtype(), [&](auto wz) {
          using W = decltype(wz);
          if constexpr (!std::is_same_v<W, int32_t> && !std::is_same_v<W, int64_t>) {
            LAUNCH(attn_dw_reduce_kernel<W>, 1, 128, 0, cur_stream())(
                dw_part.data<float>(), int(p.B * p.H * (nqb + nkb)), int(p.Dh),
                static_cast<W*>(res.dqk_norm_weight.raw_data()));
            CHECK_LAUNCH("attn_dw_reduce_kernel");
          }
        });
      }
    });
  });
  return res;
}

}  // namespace kernels::cuda
