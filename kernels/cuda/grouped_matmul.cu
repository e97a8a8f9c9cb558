// Grouped expert matmul on the GPU (kernels/grouped_matmul.h): every expert's GEMM in ONE launch.
//
// Two products, one kernel template each for bf16 (tensor cores) and f32 (CUDA cores):
//   var_m  forward and input gradient: C[rows of e] = A[rows of e] · op(B_e). The row count M of
//          each GEMM is the expert's count; K and N are fixed.
//   var_k  weight gradient: C_e = A_eᵀ · B_e with A_e, B_e the expert's rows of x and dy. The inner
//          dimension K of each GEMM is the expert's count; M and N are fixed.
//
// Tile scheduler (no host synchronisation, counts stay on the device): the grid is sized from
// shapes known on the host. var_m: grid.x = an upper bound on the number of row tiles,
// sum_e ceil(count_e / BM) <= min(T, (T + E·(BM-1)) / BM), grid.y = column tiles. At the start
// of each CTA warp 0 reads the E counts (lane l sums a contiguous chunk of experts), takes an
// exclusive prefix sum of rows and row tiles across the lanes with warp shuffles, and the lane
// whose tile range holds blockIdx.x finds the CTA's expert, its first row and the tile inside it;
// CTAs past the last tile exit (the whole block, before any further barrier). var_k: grid =
// (M tiles, N tiles, E) and the same scan gives expert blockIdx.z's first row and count. The
// scan costs E loads from L2 and ~12 warp-shuffle steps per CTA (< 1 µs for E <= 1024), against
// tens of µs of MMA work per CTA at MoE sizes, and saves a second launch and a scratch buffer.
// The same scan checks the counts: a negative count or a sum other than T traps the kernel
// (a device-side assert: the launch fails, as an out-of-range index would in PyTorch); the CPU
// op checks them on the host.
// Rows past an expert's count, columns past N and the k tail are masked: loads fill zeros
// (both operands, so 0 · garbage cannot make a NaN), stores skip them. Nothing is padded in
// memory and empty experts cost nothing (var_m) or write zeros (var_k).
//
// bf16 path (tensor cores through kernels/cuda/wmma.cuh, bf16 m16n16k16, fp32 accumulation):
//   large tile 128×128×32, 8 warps (2 × 4) of 64×32 (4×2 fragments, 64 fp32 accumulators per
//   thread); small tile 64×64×32, 4 warps of 32×32. Shared memory: two stages of the A and B
//   tiles in their global orientation (wmma reads row- or col-major), rows padded by 8 bf16
//   (16 B) against bank conflicts: large 34–40 KB, small 17–20 KB (static, < 48 KB). Double
//   buffering through registers: the next k-tile's global loads (16-byte vectors, 2 per thread
//   and operand on the large tile) are issued before the MMAs on the current stage and stored to
//   the other stage after them, one __syncthreads per k-tile. Epilogue: each warp stages up to 4
//   accumulator fragments at a time in the (now free) pipeline buffers, then every lane converts
//   8 consecutive outputs to bf16 and writes them as one 16-byte store.
//   Intensity: a 128×128×32 k-step moves 16 KB from L2 for 1.05 MFLOP = 64 FLOP/B (L2), and each
//   expert's weight panel is reused by all its row tiles through L2. Expected on H100 for MoE
//   sizes (rows per expert >= 512, K, N >= 768): bound by mma.sync issue and the register-staged
//   two-stage pipeline, roughly 30–45% of the 989 TFLOP/s dense bf16 peak (wmma/mma.sync cannot
//   reach the wgmma peak; cp.async with 3–4 stages would hide more latency than the registers);
//   an sm_90 wgmma + TMA variant is the next step (not runnable under the sim, so it needs its
//   own test on a GPU).
// f32 path (exact fp32 on CUDA cores: TF32 tensor cores would give ~1e-3 relative error, outside
//   the fp32 tolerance): large tile 128×128×8, 256 threads with 8×8 register micro-tiles (two
//   4-wide halves BM/2 and BN/2 apart, so float4 shared loads are conflict-free); small tile
//   64×64×16, 64 threads with 8×8. Shared memory holds both operands k-major (A transposed on the
//   way in when it is row-major), padded by 4 floats: 16.5 KB / 17 KB, two stages.
//   Per k: 16 shared floats read for 64 FMAs; from L2 8 KB per 128×128×8 step = 32 FLOP/B.
//   Expected ~60–70% of H100's 67 TFLOP/s fp32 (FP32 is the accuracy path, not the fast one).
// Vector (16-byte) global accesses are used when the base pointer is 16-byte aligned and the
// leading dimension (and expert stride) a multiple of 16 bytes; otherwise, and at the edges of a
// tile, loads and stores fall back to single elements, so any K and N work.
// Tile choice (automatic): the large tile when the average rows per expert (var_m) or M (var_k)
// and N are >= 128 and the large-tile grid fills the SMs at least once; otherwise the small one.
// Limitation: var_k has no split-K, so when nearly all rows sit in one expert and M·N is small
// the weight gradient runs on few SMs.
// Registers (nvcc 13, -Xptxas -v; sm_80 / sm_90 alike, no spills anywhere): the large tiles are
// capped at 128 registers by __launch_bounds__(256, 2) so two CTAs share an SM (bf16: 35–41 KB
// shared memory each); small tiles: bf16 114–123 registers (128 threads), f32 161–191 (64
// threads).
#include "kernels/grouped_matmul.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/blas.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/wmma.cuh"

// Full unrolling keeps fragment and register-tile arrays in registers under nvcc; g++ (the sim)
// does not know the CUDA pragma. (compat.h could provide this macro for every kernel file.)
#if defined(__CUDACC__)
#define UNROLL _Pragma("unroll")
#else
#define UNROLL
#endif

namespace kernels::cuda {
namespace {

enum class Mode { var_m, var_k };

// One launch's problem, passed by value. Element (m, k) of A is a[m·lda + k] (row-major) or
// a[k·lda + m] (A_COL); element (k, n) of B is b[k·ldb + n] or b[n·ldb + k] (B_COL); C is
// row-major. var_m: A and C start at the expert's first row, B at b + e·b_expert.
// var_k: A and B start at the expert's first row, C at c + e·c_expert.
struct Problem {
  const void* a;
  const void* b;
  void* c;
  const int64_t* counts;
  int experts, rows;  // E and T = sum of counts
  int m, n, k;        // var_m: n, k fixed; var_k: m, n fixed
  int64_t lda, ldb, ldc, b_expert, c_expert;
  bool vec_a, vec_b, vec_c;  // 16-byte vector accesses allowed
};

// Where a CTA works: its expert, the expert's first row and row count, and (var_m) the row tile
// inside the expert. expert = -1: no tile for this CTA.
struct Group {
  int expert, row_begin, count, tile;
};

constexpr unsigned kFull = 0xffffffffu;
// Two CTAs per SM (<= 128 registers per thread at 256 threads): while one CTA waits at its
// barrier or on global loads the other issues MMAs.
constexpr int kMinCtasPerSm = 2;

// Called by the 32 lanes of warp 0. by_tile (var_m): finds the expert whose row tiles
// (ceil(count/bm) each, experts in order) contain tile number `key`; otherwise expert `key`.
// Traps when a count is negative or the counts do not sum to p.rows.
__device__ void locate_group(const Problem& p, int bm, bool by_tile, int key, Group* out) {
  const int lane = int(threadIdx.x) & 31;
  const int per = (p.experts + 31) / 32;
  const int e0 = min(p.experts, lane * per), e1 = min(p.experts, e0 + per);
  long long rows = 0, tiles = 0;
  int bad = 0;
  for (int e = e0; e < e1; ++e) {
    long long c = p.counts[e];
    bad |= c < 0 || c > p.rows;
    c = c < 0 ? 0 : (c > p.rows ? p.rows : c);  // keep the sums in range; the kernel traps below
    rows += c;
    tiles += (c + bm - 1) / bm;
  }
  long long rows_inc = rows, tiles_inc = tiles;
UNROLL
  for (int d = 1; d < 32; d <<= 1) {
    const long long r = __shfl_up_sync(kFull, rows_inc, d);
    const long long t = __shfl_up_sync(kFull, tiles_inc, d);
    if (lane >= d) {
      rows_inc += r;
      tiles_inc += t;
    }
  }
  const long long total_rows = __shfl_sync(kFull, rows_inc, 31);
  const long long total_tiles = __shfl_sync(kFull, tiles_inc, 31);
  if (__any_sync(kFull, bad) || total_rows != p.rows) __trap();
  long long row = rows_inc - rows, tile = tiles_inc - tiles;
  if (by_tile) {
    if (lane == 0 && key >= total_tiles) *out = Group{-1, 0, 0, 0};
    if (key >= tile && key < tiles_inc) {
      for (int e = e0; e < e1; ++e) {
        const long long c = p.counts[e], t = (c + bm - 1) / bm;
        if (key < tile + t) {
          *out = Group{e, int(row), int(c), int(key - tile)};
          break;
        }
        row += c;
        tile += t;
      }
    }
  } else if (key >= e0 && key < e1) {
    for (int e = e0; e < key; ++e) row += p.counts[e];
    *out = Group{key, int(row), int(p.counts[key]), 0};
  }
}

// 16 bytes seen as raw element bits (uint16_t for bf16, uint32_t for f32).
template <class E>
union Vec16 {
  uint4 u;
  E e[16 / sizeof(E)];
};

// Moves an R×C tile, in storage orientation (element (r, c) at g[r·ld + c], contiguous along c),
// from global memory through registers to shared memory. Elements outside [0, r_lim) × [0, c_lim)
// read as zero. NT threads, each owning N vectors of 16 bytes (vector v: row v / (C/V), columns
// (v % (C/V))·V ...), so consecutive threads read consecutive 16-byte pieces of a row.
template <class E, int R, int C, int NT>
struct TileLoader {
  static constexpr int V = 16 / int(sizeof(E));
  static constexpr int VPR = C / V;
  static constexpr int N = R * VPR / NT;
  static_assert(C % V == 0 && (R * VPR) % NT == 0, "tile does not split evenly over the threads");
  Vec16<E> reg[N];

  __device__ __forceinline__ void load(const E* g, int64_t ld, int r_lim, int c_lim, bool vec,
                                       int tid) {
UNROLL
    for (int i = 0; i < N; ++i) {
      const int v = tid + i * NT, r = v / VPR, c = (v % VPR) * V;
      if (vec && r < r_lim && c + V <= c_lim) {
        reg[i].u = *reinterpret_cast<const uint4*>(g + r * ld + c);
      } else {
UNROLL
        for (int j = 0; j < V; ++j)
          reg[i].e[j] = (r < r_lim && c + j < c_lim) ? g[r * ld + c + j] : E(0);
      }
    }
  }
  // s[r·sld + c] (sld·sizeof(E) a multiple of 16).
  __device__ __forceinline__ void store(E* s, int sld, int tid) const {
UNROLL
    for (int i = 0; i < N; ++i) {
      const int v = tid + i * NT, r = v / VPR, c = (v % VPR) * V;
      *reinterpret_cast<uint4*>(s + r * sld + c) = reg[i].u;
    }
  }
  // s[c·sld + r]: the tile transposed.
  __device__ __forceinline__ void store_transposed(E* s, int sld, int tid) const {
UNROLL
    for (int i = 0; i < N; ++i) {
      const int v = tid + i * NT, r = v / VPR, c = (v % VPR) * V;
UNROLL
      for (int j = 0; j < V; ++j) s[(c + j) * sld + r] = reg[i].e[j];
    }
  }
};

// The most fragments (a divisor of `frags`, at most `fit`) a warp stages per epilogue round.
__host__ __device__ constexpr int staging_round(int frags, int fit) {
  for (int r = frags < fit ? frags : fit; r > 1; --r)
    if (frags % r == 0) return r;
  return 1;
}

template <int BYTES>
struct alignas(128) SmemBytes {
  unsigned char bytes[BYTES];
};

// The GEMM a CTA computes after locate_group: C[m0.., n0..] of one expert.
template <class E, class O>
struct CtaGemm {
  const E* a;
  const E* b;
  O* c;
  int m0, n0, m_lim, k_lim;  // rows of this GEMM (count or M), inner dimension (K or count)
};

// Sets up the CTA's GEMM from its Group; returns false when the CTA has no tile.
template <Mode MODE, int BM, int BN, class E, class O>
__device__ __forceinline__ bool cta_gemm(const Problem& p, const Group& g, CtaGemm<E, O>& t) {
  if (g.expert < 0) return false;
  const E* a = static_cast<const E*>(p.a);
  const E* b = static_cast<const E*>(p.b);
  O* c = static_cast<O*>(p.c);
  t.n0 = int(blockIdx.y) * BN;
  if (MODE == Mode::var_m) {
    t.a = a + int64_t(g.row_begin) * p.lda;
    t.b = b + int64_t(g.expert) * p.b_expert;
    t.c = c + int64_t(g.row_begin) * p.ldc;
    t.m0 = g.tile * BM;
    t.m_lim = g.count;
    t.k_lim = p.k;
  } else {
    t.a = a + int64_t(g.row_begin) * p.lda;
    t.b = b + int64_t(g.row_begin) * p.ldb;
    t.c = c + int64_t(g.expert) * p.c_expert;
    t.m0 = int(blockIdx.x) * BM;
    t.m_lim = p.m;
    t.k_lim = g.count;
  }
  return true;
}

// Loads the k-tile starting at k0 of both operands into the loaders' registers.
template <bool A_COL, bool B_COL, int BK, class E, class O, class LA, class LB>
__device__ __forceinline__ void load_k_tile(const Problem& p, const CtaGemm<E, O>& t, int k0,
                                            LA& la, LB& lb, int tid) {
  if (!A_COL)
    la.load(t.a + int64_t(t.m0) * p.lda + k0, p.lda, t.m_lim - t.m0, t.k_lim - k0, p.vec_a, tid);
  else
    la.load(t.a + int64_t(k0) * p.lda + t.m0, p.lda, t.k_lim - k0, t.m_lim - t.m0, p.vec_a, tid);
  if (!B_COL)
    lb.load(t.b + int64_t(k0) * p.ldb + t.n0, p.ldb, t.k_lim - k0, p.n - t.n0, p.vec_b, tid);
  else
    lb.load(t.b + int64_t(t.n0) * p.ldb + k0, p.ldb, p.n - t.n0, t.k_lim - k0, p.vec_b, tid);
}

// ---------------------------------------------------------------------------------------------
// bf16 × bf16 -> fp32 on tensor cores; output bf16. BM×BN CTA tile of (BM/WM)·(BN/WN) warps,
// each computing WM×WN as (WM/16)×(WN/16) accumulator fragments.
template <int BM, int BN, int BK, int WM, int WN, Mode MODE, bool A_COL, bool B_COL>
__global__ void __launch_bounds__((BM / WM) * (BN / WN) * 32, kMinCtasPerSm)
    grouped_gemm_bf16(Problem p) {
  namespace wm = kernels::cuda::wmma;
  using E = uint16_t;  // bf16 bits
  constexpr int WARPS_N = BN / WN, WARPS = (BM / WM) * WARPS_N, NT = WARPS * 32;
  constexpr int FM = WM / 16, FN = WN / 16;
  constexpr int PAD = 8;  // 16 bytes: rows start on different banks; keeps ldm a multiple of 8
  constexpr int A_ROWS = A_COL ? BK : BM, A_COLS = A_COL ? BM : BK, A_LD = A_COLS + PAD;
  constexpr int B_ROWS = B_COL ? BN : BK, B_COLS = B_COL ? BK : BN, B_LD = B_COLS + PAD;
  constexpr int A_STAGE = A_ROWS * A_LD, B_STAGE = B_ROWS * B_LD;
  constexpr int PIPE_BYTES = 2 * (A_STAGE + B_STAGE) * 2;
  // Epilogue: fragments staged per warp and round (16×16 floats = 1 KB each) in the pipeline
  // buffers.
  constexpr int ROUND = staging_round(FM * FN, PIPE_BYTES / (1024 * WARPS));
  static_assert(ROUND * 1024 * WARPS <= PIPE_BYTES, "epilogue staging does not fit");
  static_assert(BK % 16 == 0 && WM % 16 == 0 && WN % 16 == 0, "tiles are made of 16×16×16 steps");
  static_assert((A_STAGE * 2) % 32 == 0 && (B_STAGE * 2) % 32 == 0, "stages must stay 32-byte aligned");
  using FragA = wm::fragment<wm::matrix_a, 16, 16, 16, __nv_bfloat16,
                             std::conditional_t<A_COL, wm::col_major, wm::row_major>>;
  using FragB = wm::fragment<wm::matrix_b, 16, 16, 16, __nv_bfloat16,
                             std::conditional_t<B_COL, wm::col_major, wm::row_major>>;
  using FragC = wm::fragment<wm::accumulator, 16, 16, 16, float>;

  SHARED(SmemBytes<PIPE_BYTES>, smem);
  SHARED(Group, group);
  E* const As = reinterpret_cast<E*>(smem.bytes);
  E* const Bs = As + 2 * A_STAGE;

  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
  if (warp == 0)
    locate_group(p, BM, MODE == Mode::var_m, MODE == Mode::var_m ? int(blockIdx.x) : int(blockIdx.z),
                 &group);
  __syncthreads();
  CtaGemm<E, E> t;
  if (!cta_gemm<MODE, BM, BN>(p, group, t)) return;  // the whole CTA: no tile left for it

  const int wm0 = (warp / WARPS_N) * WM, wn0 = (warp % WARPS_N) * WN;
  FragC acc[FM][FN];
UNROLL
  for (int i = 0; i < FM; ++i)
UNROLL
    for (int j = 0; j < FN; ++j) wm::fill_fragment(acc[i][j], 0.0f);

  TileLoader<E, A_ROWS, A_COLS, NT> la;
  TileLoader<E, B_ROWS, B_COLS, NT> lb;
  const int nk = (t.k_lim + BK - 1) / BK;
  if (nk > 0) {
    load_k_tile<A_COL, B_COL, BK>(p, t, 0, la, lb, tid);
    la.store(As, A_LD, tid);
    lb.store(Bs, B_LD, tid);
  }
  __syncthreads();
  for (int kt = 0; kt < nk; ++kt) {
    const int cur = kt & 1;
    if (kt + 1 < nk) load_k_tile<A_COL, B_COL, BK>(p, t, (kt + 1) * BK, la, lb, tid);
    const __nv_bfloat16* a_s = reinterpret_cast<const __nv_bfloat16*>(As + cur * A_STAGE);
    const __nv_bfloat16* b_s = reinterpret_cast<const __nv_bfloat16*>(Bs + cur * B_STAGE);
UNROLL
    for (int kk = 0; kk < BK; kk += 16) {
      // All B fragments of the step, then one A fragment at a time (keeps 12 registers free
      // on the large tile, which it needs to stay within 128 without spilling).
      FragB fb[FN];
UNROLL
      for (int j = 0; j < FN; ++j) {
        const int n = wn0 + j * 16;
        wm::load_matrix_sync(fb[j], B_COL ? b_s + n * B_LD + kk : b_s + kk * B_LD + n, B_LD);
      }
UNROLL
      for (int i = 0; i < FM; ++i) {
        const int m = wm0 + i * 16;
        FragA fa;
        wm::load_matrix_sync(fa, A_COL ? a_s + kk * A_LD + m : a_s + m * A_LD + kk, A_LD);
UNROLL
        for (int j = 0; j < FN; ++j) wm::mma_sync(acc[i][j], fa, fb[j], acc[i][j]);
      }
    }
    if (kt + 1 < nk) {
      la.store(As + (cur ^ 1) * A_STAGE, A_LD, tid);
      lb.store(Bs + (cur ^ 1) * B_STAGE, B_LD, tid);
    }
    __syncthreads();  // stage cur is free, stage cur^1 is complete
  }

  // Epilogue (the pipeline buffers are free: every thread passed the last barrier).
  float* const stage = reinterpret_cast<float*>(smem.bytes) + warp * ROUND * 256;
  const int r = lane / 2, c8 = (lane % 2) * 8;  // this lane's 8 outputs of a fragment
  const bool vec_c = p.vec_c;
UNROLL
  for (int f0 = 0; f0 < FM * FN; f0 += ROUND) {
UNROLL
    for (int f = 0; f < ROUND; ++f)
      wm::store_matrix_sync(stage + f * 256, acc[(f0 + f) / FN][(f0 + f) % FN], 16, wm::mem_row_major);
    __syncwarp();
UNROLL
    for (int f = 0; f < ROUND; ++f) {
      const int i = (f0 + f) / FN, j = (f0 + f) % FN;
      const int gm = t.m0 + wm0 + i * 16 + r, gn = t.n0 + wn0 + j * 16 + c8;
      if (gm < t.m_lim) {
        const float* src = stage + f * 256 + r * 16 + c8;
        Vec16<E> out;
UNROLL
        for (int q = 0; q < 8; ++q) out.e[q] = __bfloat16_as_ushort(__float2bfloat16_rn(src[q]));
        E* dst = t.c + int64_t(gm) * p.ldc + gn;
        if (vec_c && gn + 8 <= p.n) {
          *reinterpret_cast<uint4*>(dst) = out.u;
        } else {
UNROLL
          for (int q = 0; q < 8; ++q)
            if (gn + q < p.n) dst[q] = out.e[q];
        }
      }
    }
    __syncwarp();  // the staging area is rewritten by the next round
  }
}

// ---------------------------------------------------------------------------------------------
// f32 on CUDA cores: 8×8 outputs per thread, rows {ty·4 + i, BM/2 + ty·4 + i}, columns
// {tx·4 + j, BN/2 + tx·4 + j} (i, j < 4), operands k-major in shared memory.
template <int BM, int BN, int BK, Mode MODE, bool A_COL, bool B_COL>
__global__ void __launch_bounds__((BM / 8) * (BN / 8), kMinCtasPerSm) grouped_gemm_f32(Problem p) {
  using E = uint32_t;  // f32 bits
  constexpr int TX = BN / 8, NT = (BM / 8) * TX;
  constexpr int PAD = 4;
  constexpr int A_LD = BM + PAD, B_LD = BN + PAD;  // As[k][m], Bs[k][n]
  constexpr int A_STAGE = BK * A_LD, B_STAGE = BK * B_LD;
  SHARED(SmemBytes<2 * (A_STAGE + B_STAGE) * 4>, smem);
  SHARED(Group, group);
  E* const As = reinterpret_cast<E*>(smem.bytes);
  E* const Bs = As + 2 * A_STAGE;

  const int tid = int(threadIdx.x), tx = tid % TX, ty = tid / TX;
  if (tid < 32)
    locate_group(p, BM, MODE == Mode::var_m, MODE == Mode::var_m ? int(blockIdx.x) : int(blockIdx.z),
                 &group);
  __syncthreads();
  CtaGemm<E, float> t;
  if (!cta_gemm<MODE, BM, BN>(p, group, t)) return;

  float acc[8][8];
UNROLL
  for (int i = 0; i < 8; ++i)
UNROLL
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

  // Storage orientation of the global tiles: A row-major is rows m × cols k (transposed into
  // As[k][m]); A_COL is rows k × cols m. B row-major is rows k × cols n; B_COL is rows n × cols k.
  TileLoader<E, A_COL ? BK : BM, A_COL ? BM : BK, NT> la;
  TileLoader<E, B_COL ? BN : BK, B_COL ? BK : BN, NT> lb;
  auto to_smem = [&](int s) {
    if (A_COL) la.store(As + s * A_STAGE, A_LD, tid);
    else la.store_transposed(As + s * A_STAGE, A_LD, tid);
    if (B_COL) lb.store_transposed(Bs + s * B_STAGE, B_LD, tid);
    else lb.store(Bs + s * B_STAGE, B_LD, tid);
  };
  const int nk = (t.k_lim + BK - 1) / BK;
  if (nk > 0) {
    load_k_tile<A_COL, B_COL, BK>(p, t, 0, la, lb, tid);
    to_smem(0);
  }
  __syncthreads();
  for (int kt = 0; kt < nk; ++kt) {
    const int cur = kt & 1;
    if (kt + 1 < nk) load_k_tile<A_COL, B_COL, BK>(p, t, (kt + 1) * BK, la, lb, tid);
    const float* a_s = reinterpret_cast<const float*>(As + cur * A_STAGE);
    const float* b_s = reinterpret_cast<const float*>(Bs + cur * B_STAGE);
UNROLL
    for (int kk = 0; kk < BK; ++kk) {
      float a[8], b[8];
      const float4 a0 = *reinterpret_cast<const float4*>(a_s + kk * A_LD + ty * 4);
      const float4 a1 = *reinterpret_cast<const float4*>(a_s + kk * A_LD + BM / 2 + ty * 4);
      const float4 b0 = *reinterpret_cast<const float4*>(b_s + kk * B_LD + tx * 4);
      const float4 b1 = *reinterpret_cast<const float4*>(b_s + kk * B_LD + BN / 2 + tx * 4);
      a[0] = a0.x, a[1] = a0.y, a[2] = a0.z, a[3] = a0.w, a[4] = a1.x, a[5] = a1.y, a[6] = a1.z, a[7] = a1.w;
      b[0] = b0.x, b[1] = b0.y, b[2] = b0.z, b[3] = b0.w, b[4] = b1.x, b[5] = b1.y, b[6] = b1.z, b[7] = b1.w;
UNROLL
      for (int i = 0; i < 8; ++i)
UNROLL
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    if (kt + 1 < nk) to_smem(cur ^ 1);
    __syncthreads();
  }

UNROLL
  for (int i = 0; i < 8; ++i) {
    const int gm = t.m0 + (i < 4 ? ty * 4 + i : BM / 2 + ty * 4 + i - 4);
    if (gm >= t.m_lim) continue;
    float* row = t.c + int64_t(gm) * p.ldc;
UNROLL
    for (int h = 0; h < 2; ++h) {
      const int gn = t.n0 + h * (BN / 2) + tx * 4;
      if (p.vec_c && gn + 4 <= p.n) {
        *reinterpret_cast<float4*>(row + gn) =
            make_float4(acc[i][h * 4], acc[i][h * 4 + 1], acc[i][h * 4 + 2], acc[i][h * 4 + 3]);
      } else {
UNROLL
        for (int j = 0; j < 4; ++j)
          if (gn + j < p.n) row[gn + j] = acc[i][h * 4 + j];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

std::atomic<GroupedTile> g_tile{GroupedTile::automatic};

int sm_count() {
  static const int n = [] {
    int dev = 0, v = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    return std::max(v, 1);
  }();
  return n;
}

// Tile sizes, shared by the grid computation and the launches.
struct TileShape {
  int bm, bn;
};
constexpr TileShape kLarge{128, 128}, kSmall{64, 64};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// var_m: an upper bound on sum_e ceil(count_e / bm) for counts summing to T.
int64_t row_tile_bound(int64_t T, int64_t E, int bm) { return std::min(T, (T + E * (bm - 1)) / bm); }

bool choose_large(int64_t rows_per_gemm, int64_t n, int64_t large_ctas) {
  switch (g_tile.load()) {
    case GroupedTile::large: return true;
    case GroupedTile::small: return false;
    case GroupedTile::automatic: break;
  }
  return rows_per_gemm >= 128 && n >= 128 && large_ctas >= sm_count();
}

template <bool BF16, Mode MODE, bool A_COL, bool B_COL, bool LARGE>
void launch_one(const Problem& p, dim3 grid) {
  cudaStream_t s = static_cast<cudaStream_t>(stream());
  if constexpr (BF16) {
    if constexpr (LARGE)
      LAUNCH((grouped_gemm_bf16<128, 128, 32, 64, 32, MODE, A_COL, B_COL>), grid, 256, 0, s)(p);
    else
      LAUNCH((grouped_gemm_bf16<64, 64, 32, 32, 32, MODE, A_COL, B_COL>), grid, 128, 0, s)(p);
    CHECK_LAUNCH("grouped_gemm_bf16");
  } else {
    if constexpr (LARGE)
      LAUNCH((grouped_gemm_f32<128, 128, 8, MODE, A_COL, B_COL>), grid, 256, 0, s)(p);
    else
      LAUNCH((grouped_gemm_f32<64, 64, 16, MODE, A_COL, B_COL>), grid, 64, 0, s)(p);
    CHECK_LAUNCH("grouped_gemm_f32");
  }
}

template <Mode MODE, bool A_COL, bool B_COL>
void launch(const Problem& p, bool bf16, bool large, dim3 grid) {
  if (bf16) {
    if (large) launch_one<true, MODE, A_COL, B_COL, true>(p, grid);
    else launch_one<true, MODE, A_COL, B_COL, false>(p, grid);
  } else {
    if (large) launch_one<false, MODE, A_COL, B_COL, true>(p, grid);
    else launch_one<false, MODE, A_COL, B_COL, false>(p, grid);
  }
}

// A matrix operand (last two dims of t) as the kernels take it: row-major with ld >= cols, or,
// when allowed, stored transposed (strides [1, ld]); any other layout is copied on the device.
struct Operand {
  Tensor keep;
  const void* p = nullptr;
  int64_t ld = 0, batch = 0;
  bool transposed = false;
};

Operand operand(const Tensor& t, bool allow_transposed) {
  Operand o;
  const int64_t rows = t.size(-2), cols = t.size(-1), s0 = t.stride(-2), s1 = t.stride(-1);
  const int64_t sb = t.dim() == 3 ? t.stride(0) : 0;
  if ((cols <= 1 || s1 == 1) && (rows <= 1 || s0 >= std::max<int64_t>(cols, 1))) {
    o.keep = t;
    o.ld = rows <= 1 ? std::max<int64_t>(cols, 1) : s0;
    o.batch = sb;
  } else if (allow_transposed && (rows <= 1 || s0 == 1) && (cols <= 1 || s1 >= rows)) {
    o.keep = t;
    o.transposed = true;
    o.ld = cols <= 1 ? std::max<int64_t>(rows, 1) : s1;
    o.batch = sb;
  } else {
    o.keep = contiguous(t);
    o.ld = std::max<int64_t>(cols, 1);
    o.batch = rows * cols;
  }
  o.p = o.keep.raw_data();
  return o;
}

bool vec_ok(const void* p, int64_t ld, int64_t batch, DType dt) {
  const int64_t v = 16 / int64_t(engine::dtype_size(dt));
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && ld % v == 0 && batch % v == 0;
}

void check_on_device(const Tensor& t, const char* op, const char* name) {
  engine::check_defined(t, op, name);
  ENGINE_CHECK(t.device() == device(), op, ": ", name, " ", t.describe(), " is not on the device ",
               device(), " (the CUDA kernel takes device tensors only)");
}

void check_operands(const Tensor& a, const Tensor& b, const Tensor& counts, const char* op,
                    const char* an, const char* bn) {
  check_on_device(a, op, an);
  check_on_device(b, op, bn);
  check_on_device(counts, op, "counts");
  ENGINE_CHECK(a.dtype() == DType::f32 || a.dtype() == DType::bf16, op,
               ": the CUDA kernel takes f32 or bf16, got ", a.describe());
  engine::check_same_dtype(a, b, op);
}

void check_counts(const Tensor& counts, int64_t experts, const char* op) {
  ENGINE_CHECK(counts.dtype() == DType::i64 && counts.dim() == 1 && counts.size(0) == experts, op,
               ": counts must be i64 [", experts, "] (one row count per expert), got ",
               counts.describe());
}

void check_int(int64_t v, const char* op, const char* what) {
  ENGINE_CHECK(v <= INT_MAX, op, ": ", what, " = ", v, " exceeds the kernel's int range");
}

}  // namespace

void set_grouped_matmul_tile(GroupedTile tile) { g_tile = tile; }
GroupedTile grouped_matmul_tile() { return g_tile.load(); }

Tensor grouped_matmul(const Tensor& x, const Tensor& w, const Tensor& counts, bool trans_w) {
  const char* op = "grouped_matmul";
  check_operands(x, w, counts, op, "x", "w");
  ENGINE_CHECK(x.dim() == 2 && w.dim() == 3, op, ": expected x [T, K] and w [E, K, N]",
               trans_w ? " (or [E, N, K] with trans_w)" : "", ", got ", x.describe(), " and ",
               w.describe());
  const int64_t T = x.size(0), E = w.size(0);
  const int64_t K = trans_w ? w.size(2) : w.size(1), N = trans_w ? w.size(1) : w.size(2);
  ENGINE_CHECK(x.size(1) == K, op, ": x ", x.describe(), " does not match w ", w.describe(),
               " (trans_w=", trans_w ? "true" : "false", "): K is ", x.size(1), " vs ", K);
  check_counts(counts, E, op);
  ENGINE_CHECK(E > 0 || T == 0, op, ": no experts for the ", T, " rows of ", x.describe());
  check_int(T, op, "rows");
  check_int(K, op, "K");
  check_int(N, op, "N");
  Tensor y = Tensor::empty({T, N}, x.dtype(), x.device());
  // No rows or no columns: nothing to compute (the counts are not looked at; the CPU op checks
  // them on the host).
  if (y.numel() == 0 || E == 0) return y;

  const Operand X = operand(x, false), W = operand(w, true);
  const Tensor cnt = contiguous(counts);
  // w[e] stored transposed flips the flag: B is col-major (stored N × K) when exactly one holds.
  const bool b_col = trans_w != W.transposed;
  const DType dt = x.dtype();
  Problem p{X.p, W.p, y.raw_data(), cnt.data<int64_t>(), int(E), int(T), 0, int(N), int(K),
            X.ld, W.ld, N, W.batch, 0,
            vec_ok(X.p, X.ld, 0, dt), vec_ok(W.p, W.ld, W.batch, dt), vec_ok(y.raw_data(), N, 0, dt)};

  const int64_t large_ctas = row_tile_bound(T, E, kLarge.bm) * ceil_div(N, kLarge.bn);
  const bool large = choose_large(T / E, N, large_ctas);
  const TileShape ts = large ? kLarge : kSmall;
  const int64_t gx = row_tile_bound(T, E, ts.bm), gy = ceil_div(N, ts.bn);
  ENGINE_CHECK(gx <= INT_MAX && gy <= 65535, op, ": ", x.describe(), " · ", w.describe(),
               " needs more CTAs than a grid holds");
  const dim3 grid(unsigned(gx), unsigned(gy), 1);
  if (b_col) launch<Mode::var_m, false, true>(p, dt == DType::bf16, large, grid);
  else launch<Mode::var_m, false, false>(p, dt == DType::bf16, large, grid);
  return y;
}

Tensor grouped_matmul_wgrad(const Tensor& x, const Tensor& dy, const Tensor& counts, bool trans_w) {
  const char* op = "grouped_matmul_wgrad";
  check_operands(x, dy, counts, op, "x", "dy");
  ENGINE_CHECK(x.dim() == 2 && dy.dim() == 2 && x.size(0) == dy.size(0), op,
               ": expected x [T, K] and dy [T, N] with the same rows, got ", x.describe(), " and ",
               dy.describe());
  ENGINE_CHECK(counts.dim() == 1, op, ": counts must be i64 [E], got ", counts.describe());
  const int64_t E = counts.size(0), T = x.size(0);
  check_counts(counts, E, op);
  ENGINE_CHECK(E > 0 || T == 0, op, ": no experts for the ", T, " rows of ", x.describe());
  // trans_w: dw[e] = dy_eᵀ · x_e, the same product with the operands swapped.
  const Tensor& a = trans_w ? dy : x;
  const Tensor& b = trans_w ? x : dy;
  const int64_t M = a.size(1), N = b.size(1);
  check_int(T, op, "rows");
  check_int(M, op, "M");
  check_int(N, op, "N");
  Tensor dw = Tensor::empty({E, M, N}, x.dtype(), x.device());
  if (dw.numel() == 0) return dw;

  const Operand A = operand(a, false), B = operand(b, false);
  const Tensor cnt = contiguous(counts);
  const DType dt = x.dtype();
  // A(m, k) = a[first row + k][m]: column-major with ld = a's row stride.
  Problem p{A.p, B.p, dw.raw_data(), cnt.data<int64_t>(), int(E), int(T), int(M), int(N), 0,
            A.ld, B.ld, N, 0, M * N,
            vec_ok(A.p, A.ld, 0, dt), vec_ok(B.p, B.ld, 0, dt), vec_ok(dw.raw_data(), N, M * N, dt)};

  const int64_t large_ctas = ceil_div(M, kLarge.bm) * ceil_div(N, kLarge.bn) * E;
  const bool large = choose_large(M, N, large_ctas);
  const TileShape ts = large ? kLarge : kSmall;
  const int64_t gx = ceil_div(M, ts.bm), gy = ceil_div(N, ts.bn);
  ENGINE_CHECK(gx <= INT_MAX && gy <= 65535 && E <= 65535, op, ": ", x.describe(), " and ",
               dy.describe(), " with ", E, " experts need more CTAs than a grid holds");
  launch<Mode::var_k, true, false>(p, dt == DType::bf16, large, dim3(unsigned(gx), unsigned(gy), unsigned(E)));
  return dw;
}

}  // namespace kernels::cuda
