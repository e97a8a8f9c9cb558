// Building blocks of the row-wise CUDA kernels (LayerNorm, L2-normalise, softmax, reductions over
// one axis, bias + GELU): strided row views of tensors, 8-element chunk loads and stores in f32 or
// bf16, and a "team" of threads per row (one warp, or one block for wide rows) with shuffle /
// shared-memory reductions.
//
// A tensor is seen as rows of D elements: element j of row r lives at p + rows.offset(r) + j*es.
// The rows are every index of the dims other than the reduced axis, in row-major order, so row r
// of the input is row r of a contiguous output. Views, transposes and other axes work (then
// es != 1: scalar, uncoalesced access); the fast path is a contiguous last axis.
//
// Two kinds of kernel per op, picked on the host (plan()):
// - kVec: every operand's rows start 16-byte aligned with es == 1 and D % 8 == 0 (IMP/ViT widths):
//   chunks move as 16-byte loads/stores and each thread caches its kSlots chunks of the row in
//   registers (kSlots × 8 floats), so a kernel reads its input from DRAM once however many passes
//   it makes. One warp per row up to D = 1024, one block of ≤ 256 threads up to 8192; wider rows
//   stream (kSlots = 0: each pass re-reads the row, from L2).
// - scalar (odd widths, strided views): element loads, no register cache (kSlots = 0; the
//   re-reads hit L1/L2). Caching scalar-loaded rows makes ptxas schedule dozens of loads ahead
//   and spill.
// Values are computed in f32 whatever the storage dtype (f32 or bf16, a runtime flag: the branch
// is uniform per launch and keeps the number of instantiations down).
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/backend.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"

#if defined(__CUDACC__)
#define ROWS_UNROLL _Pragma("unroll")
#define ROWS_NO_UNROLL _Pragma("unroll 1")
#else
#define ROWS_UNROLL _Pragma("GCC unroll 8")
#define ROWS_NO_UNROLL _Pragma("GCC unroll 1")
#endif

namespace kernels::cuda::rows {

constexpr int kChunk = 8;          // elements per chunk (16 bytes of bf16, 32 bytes of f32)
constexpr int kWarpThreads = 128;  // warp-per-row kernels: 4 rows per block
constexpr int kBlockThreads = 256; // block-per-row kernels: at most this many threads
constexpr int kWarpSlots = 4;      // warp per row up to 32 * 4 chunks = 1024 elements
constexpr int kBlockSlots = 4;     // block per row up to 256 * 4 chunks = 8192 elements
constexpr int kMaxWarpWidth = 32 * kWarpSlots * kChunk;

enum Kind : int { kF32 = 0, kBF16 = 1 };

// Offsets of the rows of a tensor: the dims other than the row axis, merged where contiguous,
// must reduce to at most two (outer, inner): row r = r1 · n0 + r0 starts at r0 · s0 + r1 · s1.
// That covers contiguous tensors, any single axis of them, and transposed/sliced views; others
// are first gathered into a contiguous copy by representable(). n0 == 0 marks one linear stride
// (the common case: no division). Kept this small on purpose: a kernel that loops over rows has
// these values hoisted into registers for every operand.
struct RowMap {
  uint32_t n0 = 0;  // 32-bit: the division is inlined (a 64-bit one is a call, which spills)
  int64_t s0 = 0, s1 = 0;
  __host__ __device__ __forceinline__ int64_t offset(int64_t r) const {
    if (n0 == 0) return r * s0;
    const uint32_t q = uint32_t(r) / n0;  // rows < 2^32 (checked by the callers' row count)
    return int64_t(uint32_t(r) - q * n0) * s0 + int64_t(q) * s1;
  }
};

// An operand. p == nullptr marks an absent optional one (a LayerNorm without weight).
struct In {
  const void* p = nullptr;
  RowMap rows;
  int64_t es = 1;
  int kind = kF32;
};
struct Out {
  void* p = nullptr;
  RowMap rows;
  int64_t es = 1;
  int kind = kF32;
};

// --- host side ---------------------------------------------------------------------------------

inline cudaStream_t stream() { return static_cast<cudaStream_t>(kernels::cuda::stream()); }

inline void check_on_device(const Tensor& t, const char* op, const char* name) {
  ENGINE_CHECK(t.device() == kernels::cuda::device(), op, ": ", name, " ", t.describe(),
               " is not on ", kernels::cuda::device());
}
// The dtypes the GPU kernels read: f32 and bf16 (f64 is a CPU-only dtype for gradient checks).
inline void check_gpu_dtype(const Tensor& t, const char* op, const char* name) {
  ENGINE_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16, op, ": ", name,
               " must be f32 or bf16 on the GPU, got ", t.describe());
}

// A tensor reduced or normalised along one axis: D elements per row, nrows rows. A 0-d tensor
// has one implicit axis of size 1 (axis = -1 then: its one element is row 0, element 0).
struct AxisRows {
  int axis = -1;
  int64_t D = 1, nrows = 1;
};
inline AxisRows axis_rows(const Tensor& t, int axis_in, const char* op) {
  AxisRows a;
  if (t.dim() == 0) {
    engine::normalize_axis(axis_in, 1, op);
    return a;
  }
  a.axis = engine::normalize_axis(axis_in, t.dim(), op);
  a.D = t.size(a.axis);
  for (int d = 0; d < t.dim(); ++d)
    if (d != a.axis) a.nrows *= t.size(d);
  ENGINE_CHECK(a.D <= INT32_MAX, op, ": rows of ", a.D, " elements are too wide for the GPU kernels");
  return a;
}

// The dims of t other than `axis`, size-1 dims dropped and contiguous neighbours merged,
// innermost first: {size, stride} pairs.
struct MergedDims {
  int nd = 0;
  int64_t size[engine::kMaxDims] = {}, stride[engine::kMaxDims] = {};
};
inline MergedDims merged_dims(const Tensor& t, int axis) {
  MergedDims m;
  for (int d = t.dim() - 1; d >= 0; --d) {
    if (d == axis || t.size(d) == 1) continue;
    if (m.nd > 0 && t.stride(d) == m.stride[m.nd - 1] * m.size[m.nd - 1]) {
      m.size[m.nd - 1] *= t.size(d);
    } else {
      m.size[m.nd] = t.size(d);
      m.stride[m.nd] = t.stride(d);
      ++m.nd;
    }
  }
  return m;
}

// Row view of t with rows along `axis` (normalised; -1 for one element per row, as for the
// per-row statistics). t must be representable (below).
template <class Operand>
Operand view(const Tensor& t, int axis) {
  Operand o;
  if (!t.defined()) return o;
  o.p = t.raw_data();
  o.kind = t.dtype() == DType::bf16 ? kBF16 : kF32;
  o.es = axis >= 0 && t.size(axis) > 1 ? t.stride(axis) : 1;
  const MergedDims m = merged_dims(t, axis);
  ENGINE_CHECK(m.nd <= 2, "row view of ", t.describe(), ": more than two row dims");
  ENGINE_CHECK(t.numel() < (int64_t(1) << 32), "row view of ", t.describe(),
               ": at most 2^32 elements on the GPU");
  if (m.nd == 1) o.rows = RowMap{0, m.stride[0], 0};
  if (m.nd == 2) o.rows = RowMap{uint32_t(m.size[0]), m.stride[0], m.stride[1]};
  return o;
}
inline In in_view(const Tensor& t, int axis) { return view<In>(t, axis); }
inline Out out_view(const Tensor& t, int axis) { return view<Out>(t, axis); }

// Whether t's rows along `axis` allow 16-byte chunk accesses (an undefined t does not object).
inline bool vec_ok(const Tensor& t, int axis) {
  if (!t.defined()) return true;
  const int64_t esize = int64_t(t.element_size());
  if (reinterpret_cast<uintptr_t>(t.raw_data()) % 16 != 0) return false;
  if (axis >= 0 && t.size(axis) > 1 && t.stride(axis) != 1) return false;
  const MergedDims m = merged_dims(t, axis);
  for (int d = 0; d < m.nd; ++d)
    if ((m.stride[d] * esize) % 16 != 0) return false;
  return true;
}

// How a row kernel is launched for rows of width D (vec: every operand passes vec_ok).
struct Plan {
  bool block_team = false;
  bool vec = false;
  int slots = 0;          // chunks cached per thread; 0 = streaming
  unsigned threads = 0;   // per block
  unsigned rows_per_block = 1;
  int64_t blocks(int64_t rows) const { return (rows + rows_per_block - 1) / rows_per_block; }
};

inline Plan plan(int64_t D, bool vec) {
  const int64_t nc = (D + kChunk - 1) / kChunk;
  Plan p;
  p.vec = vec && D % kChunk == 0;
  if (nc <= 32 * kWarpSlots) {
    p.slots = !p.vec ? 0 : nc <= 32 ? 1 : nc <= 64 ? 2 : kWarpSlots;
    p.threads = kWarpThreads;
    p.rows_per_block = kWarpThreads / 32;
  } else {
    p.block_team = true;
    p.slots = p.vec && nc <= int64_t(kBlockThreads) * kBlockSlots ? kBlockSlots : 0;
    p.threads = p.slots ? unsigned((nc + kBlockSlots - 1) / kBlockSlots + 31) / 32 * 32 : kBlockThreads;
  }
  return p;
}

// --- device side: loads and stores -------------------------------------------------------------

__device__ __forceinline__ float bf16_to_float(unsigned bits16) { return __uint_as_float(bits16 << 16); }
__device__ __forceinline__ unsigned short float_to_bf16(float f) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

__device__ __forceinline__ float load1(const In& s, int64_t off) {
  return s.kind == kBF16 ? bf16_to_float(static_cast<const unsigned short*>(s.p)[off])
                         : static_cast<const float*>(s.p)[off];
}
__device__ __forceinline__ void store1(const Out& d, int64_t off, float v) {
  if (d.kind == kBF16) static_cast<unsigned short*>(d.p)[off] = float_to_bf16(v);
  else static_cast<float*>(d.p)[off] = v;
}

// Chunk c (elements 8c .. 8c+7) of the row at row_off; elements past D read as 0. kVec: one
// or two 16-byte loads (the plan guarantees alignment and D % 8 == 0).
template <bool kVec>
__device__ __forceinline__ void load_chunk(const In& s, int64_t row_off, int c, int D,
                                           float (&v)[kChunk]) {
  const int j0 = c * kChunk;
  if constexpr (kVec) {
    if (s.kind == kBF16) {
      const uint4 u = *reinterpret_cast<const uint4*>(static_cast<const unsigned short*>(s.p) + row_off + j0);
      const unsigned w[4] = {u.x, u.y, u.z, u.w};
      ROWS_UNROLL
      for (int i = 0; i < 4; ++i) {
        v[2 * i] = __uint_as_float(w[i] << 16);
        v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
      }
    } else {
      const float4* q = reinterpret_cast<const float4*>(static_cast<const float*>(s.p) + row_off + j0);
      const float4 a = q[0], b = q[1];
      v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
      v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    }
  } else {
    const int n = D - j0;
    if (s.kind == kBF16) {
      const unsigned short* q = static_cast<const unsigned short*>(s.p) + row_off + int64_t(j0) * s.es;
      ROWS_UNROLL
      for (int e = 0; e < kChunk; ++e, q += s.es) v[e] = e < n ? bf16_to_float(*q) : 0.0f;
    } else {
      const float* q = static_cast<const float*>(s.p) + row_off + int64_t(j0) * s.es;
      ROWS_UNROLL
      for (int e = 0; e < kChunk; ++e, q += s.es) v[e] = e < n ? *q : 0.0f;
    }
  }
}

// Chunk c of an optional [D] parameter (weight, bias); `absent` everywhere when there is none.
template <bool kVec>
__device__ __forceinline__ void load_param(const In& s, int c, int D, float absent,
                                           float (&v)[kChunk]) {
  if (s.p) {
    load_chunk<kVec>(s, 0, c, D, v);
  } else {
    ROWS_UNROLL
    for (int e = 0; e < kChunk; ++e) v[e] = absent;
  }
}

// Stores the first min(8, D - 8c) elements of chunk c.
template <bool kVec>
__device__ __forceinline__ void store_chunk(const Out& d, int64_t row_off, int c, int D,
                                            const float (&v)[kChunk]) {
  const int j0 = c * kChunk;
  if constexpr (kVec) {
    if (d.kind == kBF16) {
      unsigned w[4];
      ROWS_UNROLL
      for (int i = 0; i < 4; ++i)
        w[i] = unsigned(float_to_bf16(v[2 * i])) | (unsigned(float_to_bf16(v[2 * i + 1])) << 16);
      *reinterpret_cast<uint4*>(static_cast<unsigned short*>(d.p) + row_off + j0) = make_uint4(w[0], w[1], w[2], w[3]);
    } else {
      float4* q = reinterpret_cast<float4*>(static_cast<float*>(d.p) + row_off + j0);
      q[0] = make_float4(v[0], v[1], v[2], v[3]);
      q[1] = make_float4(v[4], v[5], v[6], v[7]);
    }
  } else {
    const int n = D - j0;
    ROWS_UNROLL
    for (int e = 0; e < kChunk; ++e)
      if (e < n) store1(d, row_off + int64_t(j0 + e) * d.es, v[e]);
  }
}

// --- device side: teams and reductions ---------------------------------------------------------

struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
  __device__ __forceinline__ static float identity() { return 0.0f; }
};
// max that skips NaN (fmaxf): the shift of softmax / logsumexp, like the CPU ops.
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
  __device__ __forceinline__ static float identity() { return -CUDART_INF_F; }
};

// One warp per row; the block holds blockDim.x / 32 rows. No block barriers.
struct WarpTeam {
  static constexpr bool kBlock = false;
  static constexpr int kMaxThreads = kWarpThreads;
  static constexpr int kMinBlocks = 4;  // ≤ 128 registers: 16 warps per SM
  __device__ __forceinline__ static int rank() { return int(threadIdx.x & 31); }
  __device__ __forceinline__ static int size() { return 32; }
  __device__ __forceinline__ static int index() { return int(threadIdx.x >> 5); }  // team in block
  __device__ __forceinline__ static int count() { return int(blockDim.x >> 5); }
  // Butterfly: every lane ends with the same value (a + b == b + a bit for bit).
  template <int N, class Op>
  __device__ __forceinline__ static void reduce(float (&v)[N], Op op) {
    ROWS_UNROLL
    for (int o = 16; o > 0; o >>= 1)
      ROWS_UNROLL
      for (int i = 0; i < N; ++i) v[i] = op(v[i], __shfl_xor_sync(0xffffffffu, v[i], o));
  }
};

// One block per row. reduce() has two barriers: every thread of the block must call it.
struct BlockTeam {
  static constexpr bool kBlock = true;
  static constexpr int kMaxThreads = kBlockThreads;
  static constexpr int kMinBlocks = 2;  // ≤ 128 registers
  __device__ __forceinline__ static int rank() { return int(threadIdx.x); }
  __device__ __forceinline__ static int size() { return int(blockDim.x); }
  __device__ __forceinline__ static int index() { return 0; }
  __device__ __forceinline__ static int count() { return 1; }
  template <int N, class Op>
  __device__ __forceinline__ static void reduce(float (&v)[N], Op op) {
    SHARED(float, part, [N][32]);
    WarpTeam::reduce(v, op);
    const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5);
    if (lane == 0)
      ROWS_UNROLL
      for (int i = 0; i < N; ++i) part[i][warp] = v[i];
    __syncthreads();
    const int nw = int(blockDim.x >> 5);
    ROWS_UNROLL
    for (int i = 0; i < N; ++i) v[i] = lane < nw ? part[i][lane] : Op::identity();
    WarpTeam::reduce(v, op);  // every warp computes the same total: no broadcast step
    __syncthreads();          // part is rewritten by the next reduction
  }
};

// f(k, c) for every chunk c < nc this thread owns (k: its register slot; 0 when streaming).
template <class Team, int kSlots, class F>
__device__ __forceinline__ void for_chunks(int nc, F&& f) {
  if constexpr (kSlots > 0) {
    ROWS_UNROLL
    for (int k = 0; k < kSlots; ++k) {
      const int c = Team::rank() + k * Team::size();
      if (c < nc) f(k, c);
    }
  } else {
    // A warp's stride is 32, but read at run time (blockDim.y is 1 in every row launch): with a
    // constant stride ptxas unrolls this loop, hoists the loads of several chunks and spills
    // (measured on the LayerNorm forward: 128 registers + 164 bytes of spills vs 64 registers).
    const int step = Team::kBlock ? Team::size() : int(blockDim.y) * 32;
    ROWS_NO_UNROLL
    for (int c = Team::rank(); c < nc; c += step) f(0, c);
  }
}

// One row of an input operand: cached in registers (kSlots > 0) or re-read on every get().
template <class Team, int kSlots, bool kVec>
struct Row {
  In s;
  int64_t off;
  int D;
  float v[kSlots > 0 ? kSlots : 1][kChunk];

  __device__ __forceinline__ Row(const In& src, int64_t row, int width)
      : s(src), off(src.rows.offset(row)), D(width) {
    if constexpr (kSlots > 0) {
      const int nc = (D + kChunk - 1) / kChunk;
      for_chunks<Team, kSlots>(nc, [&](int k, int c) { load_chunk<kVec>(s, off, c, D, v[k]); });
    }
  }
  __device__ __forceinline__ void get(int k, int c, float (&out)[kChunk]) const {
    if constexpr (kSlots > 0) {
      ROWS_UNROLL
      for (int e = 0; e < kChunk; ++e) out[e] = v[k][e];
    } else {
      load_chunk<kVec>(s, off, c, D, out);
    }
  }
};

// Launches f(Team{}, integral_constant<int, kSlots>{}, bool_constant<kVec>{}) for the plan.
template <class F>
void dispatch(const Plan& p, F&& f) {
  using std::bool_constant;
  using std::integral_constant;
  if (!p.vec) {
    if (p.block_team) f(BlockTeam{}, integral_constant<int, 0>{}, bool_constant<false>{});
    else f(WarpTeam{}, integral_constant<int, 0>{}, bool_constant<false>{});
  } else if (!p.block_team) {
    if (p.slots == 1) f(WarpTeam{}, integral_constant<int, 1>{}, bool_constant<true>{});
    else if (p.slots == 2) f(WarpTeam{}, integral_constant<int, 2>{}, bool_constant<true>{});
    else f(WarpTeam{}, integral_constant<int, kWarpSlots>{}, bool_constant<true>{});
  } else if (p.slots > 0) {
    f(BlockTeam{}, integral_constant<int, kBlockSlots>{}, bool_constant<true>{});
  } else {
    f(BlockTeam{}, integral_constant<int, 0>{}, bool_constant<true>{});
  }
}

// The row index of the calling thread's team (may be >= rows in the last warp-team block).
template <class Team>
__device__ __forceinline__ int64_t team_row() {
  return int64_t(blockIdx.x) * Team::count() + Team::index();
}

}  // namespace kernels::cuda::rows

namespace kernels::cuda::rows {
namespace {

// Second stage of a deterministic column reduction: dst[j] = Σ_p part[p][j] over the partial
// sums of nparts fixed row chunks. Block (32, ny), ny = min(8, nparts): a warp reads 32
// consecutive columns of one partial row (coalesced, 128 B), warp y takes parts y, y + ny, ...
// (unrolled by 4: independent loads in flight), then warp 0 adds the ny results in order. The
// order depends on nparts only. Accumulated in f64 (≤ a few hundred adds per column: free).
template <int kUnused = 0>
__global__ void __launch_bounds__(256) column_sum(const float* part, int64_t nparts, int D,
                                                  float* dst) {
  SHARED(double, acc, [8][32]);
  const int j = int(blockIdx.x) * 32 + int(threadIdx.x);
  const int ny = int(blockDim.y);
  double s = 0;
  if (j < D) {
#if defined(__CUDACC__)
#pragma unroll 4
#endif
    for (int64_t p = threadIdx.y; p < nparts; p += ny) s += double(part[p * D + j]);
  }
  acc[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && j < D) {
    double t = acc[0][threadIdx.x];
    for (int y = 1; y < ny; ++y) t += acc[y][threadIdx.x];
    dst[j] = float(t);
  }
}

inline void launch_column_sum(const float* part, int64_t nparts, int D, float* dst) {
  if (D == 0) return;
  const unsigned ny = unsigned(std::clamp<int64_t>(nparts, 1, 8));
  LAUNCH(column_sum<>, dim3(unsigned((D + 31) / 32)), dim3(32, ny), 0, stream())(part, nparts, D, dst);
  CHECK_LAUNCH("column_sum");
}

// out[i] = src[offset of element i], for a strided tensor of up to 8 dims (innermost first).
template <class E>
__global__ void __launch_bounds__(256) gather_strided(const E* src, E* out, int64_t n, MergedDims m) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t r = i, off = 0;
    for (int d = 0; d < m.nd; ++d) {
      off += (r % m.size[d]) * m.stride[d];
      r /= m.size[d];
    }
    out[i] = src[off];
  }
}


}  // namespace

// t itself when its rows along `axis` fit a RowMap, else a contiguous copy on the device (the
// engine has no device-side strided copy yet).
inline Tensor representable(const Tensor& t, int axis) {
  if (!t.defined() || merged_dims(t, axis).nd <= 2) return t;
  Tensor out = Tensor::empty(t.shape(), t.dtype(), t.device());
  const MergedDims m = merged_dims(t, -1);  // every dim, innermost first
  const int64_t n = t.numel();
  const unsigned blocks = unsigned(std::min<int64_t>((n + 255) / 256, 4096));
  if (t.element_size() == 2) {
    LAUNCH(gather_strided<unsigned short>, blocks, 256, 0, stream())(
        static_cast<const unsigned short*>(t.raw_data()), static_cast<unsigned short*>(out.raw_data()), n, m);
  } else {
    ENGINE_CHECK(t.element_size() == 4, "representable: unexpected dtype ", t.describe());
    LAUNCH(gather_strided<float>, blocks, 256, 0, stream())(
        static_cast<const float*>(t.raw_data()), static_cast<float*>(out.raw_data()), n, m);
  }
  CHECK_LAUNCH("gather_strided");
  return out;
}

}  // namespace kernels::cuda::rows
