// Indexing ops on the GPU (kernels/index.h): embedding and its deterministic scatter-add backward,
// index_select / index_add, gather / scatter_add.
//
// embedding (gather): one warp per looked-up position copies the table row with the widest unit
// (16/8/4/2 bytes) that the row length, row stride and both base addresses allow. Pure data
// movement: 1 read + 1 write of D * element_size bytes per position, coalesced 512-byte warp
// transactions for 16-byte units, so it should reach ~85-90% of 3.35 TB/s for D*es >= 512 B
// (small rows leave lanes idle; that costs lanes, not bandwidth). No shared memory, ~20 registers.
//
// embedding_backward (scatter-add), deterministic with no float atomics, bit-identical to the CPU
// op (which adds the rows of each id in position order, into zero):
//   1. keys: ids -> (key = id, value = position) pairs, checking every id.
//   2. a stable LSD radix sort of the pairs by id, 8 bits per pass (1 pass for V <= 256, 2 for
//      V <= 65536, ...). Per pass: a tile histogram (1024 pairs per 256-thread block, counts in
//      shared memory), one exclusive scan of the [256 digits x tiles] counts (one block; it is
//      tiny: 256 * n / 1024 ints), and a stable scatter: each warp ranks its 4 x 32 pairs with one
//      ballot per digit bit (at most 8; lanes holding the same digit), per-warp digit counters in
//      shared memory (8 KB), and a per-digit scan over the 8 warps. Integer atomics only count,
//      so every pass is deterministic. Traffic per pass: ~3 reads + 2 writes of 4 bytes per pair
//      (the sort moves 8-byte pairs, tiny next to the [n, D] gradient rows of step 3).
//   3. rows: block (v, column slice) finds v's run of sorted pairs by binary search and each thread
//      sums its 16-byte column unit over the run's gradient rows in position order (4 rows in
//      flight for memory parallelism), writing out[v] (zeros for unused ids and padding_idx), so the
//      output needs no memset. Reads each gradient row once, writes [V, D] once: bandwidth-bound.
// A heavily repeated id serialises its rows on one block per 512-column slice; this is the
// price of the fixed summation order (typical inputs - token ids, positions - spread out).
//
// index_select: one thread per copy unit of the output [outer, n, inner], the unit the widest of
// 16/8/4 bytes that divides a contiguous inner run, its strides and both base addresses (else one
// element); 1 read + 1 write per element, coalesced along the inner run: bandwidth-bound like
// embedding. gather: one thread per element of idx, reading x at the element's coordinates with
// the index along the axis (reads are coalesced when the axis is not the innermost dim).
//
// index_add (index_select's backward), deterministic as embedding_backward: the indices are
// validated into (key, position) pairs, stably radix-sorted, and block (destination row, column
// slice) adds its run of src rows in position order, starting from the destination as the CPU op
// does (a contiguous destination: d += s_j in turn; a strided one: d + Σ_j s_j summed from 0; a
// new output: Σ_j s_j from 0), so the results are bit-identical to the CPU's.
//
// scatter_add (gather's backward): one thread per column of idx (its coordinates outside the
// axis) walks the axis in order and adds into the destination; columns touch disjoint elements,
// so no atomics and the CPU op's order. Parallelism is the number of columns: fine for its uses
// (topk / gather backward over rows with a short axis); a long axis with few columns runs serially.
//
// Index validation: the kernels flag the first bad position in a device word (atomicMax of
// n - position) and the host reads it back once per call (a synchronisation), then throws the
// CPU op's message naming the index, its position and the range.
#include "kernels/index.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "engine/strided.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"

#ifndef UNROLL
#if defined(__CUDACC__)
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("GCC unroll 16")
#endif
#endif

namespace kernels::cuda {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kTileThreads = 256;                    // radix passes: 8 warps
constexpr int kItems = 4;                            // pairs per thread per tile
constexpr int kTile = kTileThreads * kItems;         // 1024 pairs per tile
constexpr int kScanThreads = 1024;
constexpr int kRowThreads = 128;                     // rows kernel: 128 column units per block

// Element offsets of a strided tensor's flat (row-major) indices, dims merged on the host.
struct Layout {
  int nd;
  int64_t shape[engine::kMaxDims];
  int64_t stride[engine::kMaxDims];
};

Layout layout_of(const Shape& shape, const Shape& strides) {
  Layout l{};
  engine::StridedLayout<1> m = engine::merge_dims<1>(shape, {strides});
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

__device__ __forceinline__ int64_t load_id(const void* p, int64_t off, bool is64) {
  return is64 ? static_cast<const int64_t*>(p)[off] : int64_t(static_cast<const int32_t*>(p)[off]);
}

// Records position p as bad; the smallest bad position wins.
__device__ __forceinline__ void flag_bad(unsigned long long* status, int64_t n, int64_t p) {
  atomicMax(status, static_cast<unsigned long long>(n - p));
}

// --- embedding (gather) -----------------------------------------------------------------------

struct GatherArgs {
  const void* table;
  int64_t V, row_stride, col_stride;  // in copy units
  const void* ids;
  Layout ids_layout;
  bool ids64;
  int64_t n, units;  // positions, copy units per row
  void* out;
  unsigned long long* status;
};

template <class U>
__global__ void __launch_bounds__(256) embedding_gather(GatherArgs a) {
  const int64_t p = int64_t(blockIdx.x) * 8 + threadIdx.x / 32;
  const int lane = int(threadIdx.x % 32);
  if (p < a.n) {
    const int64_t id = load_id(a.ids, offset_of(a.ids_layout, p), a.ids64);
    U* dst = static_cast<U*>(a.out) + p * a.units;
    if (id < 0 || id >= a.V) {
      if (lane == 0) flag_bad(a.status, a.n, p);
      for (int64_t k = lane; k < a.units; k += 32) dst[k] = U{};  // defined output until the throw
    } else {
      const U* src = static_cast<const U*>(a.table) + id * a.row_stride;
      for (int64_t k = lane; k < a.units; k += 32) dst[k] = src[k * a.col_stride];
    }
  }
}

// --- embedding_backward: keys, radix passes, rows -----------------------------------------------

__global__ void __launch_bounds__(256) emb_keys(const void* ids, Layout l, bool ids64, int64_t n,
                                                int64_t V, int* keys, int* vals,
                                                unsigned long long* status) {
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < n;
       p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t id = load_id(ids, offset_of(l, p), ids64);
    const bool ok = id >= 0 && id < V;
    if (!ok) flag_bad(status, n, p);
    keys[p] = ok ? int(id) : 0;
    vals[p] = int(p);
  }
}

// Digit counts of one tile, written digit-major: hist[digit * tiles + tile].
__global__ void __launch_bounds__(kTileThreads) radix_hist(const int* keys, int n, int shift,
                                                           int* hist, int tiles) {
  SHARED(int, cnt, [256]);
  cnt[threadIdx.x] = 0;
  __syncthreads();
  const int base = int(blockIdx.x) * kTile;
  UNROLL
  for (int r = 0; r < kItems; ++r) {
    const int i = base + r * kTileThreads + int(threadIdx.x);
    if (i < n) atomicAdd(&cnt[(keys[i] >> shift) & 255], 1);
  }
  __syncthreads();
  hist[threadIdx.x * tiles + blockIdx.x] = cnt[threadIdx.x];
}

// Exclusive prefix sum of a[0, m) in place, by one block of up to 1024 threads (each thread a
// contiguous chunk; the host sizes the block to m).
__global__ void __launch_bounds__(kScanThreads) exclusive_scan(int* a, int m) {
  SHARED(int, warp_total, [32]);
  const int t = int(threadIdx.x), lane = t % 32, warp = t / 32, nt = int(blockDim.x);
  const int chunk = (m + nt - 1) / nt;
  const int begin = min(m, t * chunk), end = min(m, begin + chunk);
  int local = 0;
  for (int i = begin; i < end; ++i) local += a[i];
  // Inclusive scan of the per-thread sums within the warp, then across the warps.
  int inc = local;
  UNROLL
  for (int o = 1; o < 32; o <<= 1) {
    const int v = __shfl_up_sync(kFull, inc, o);
    if (lane >= o) inc += v;
  }
  if (lane == 31) warp_total[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    int w = lane < nt / 32 ? warp_total[lane] : 0;
    UNROLL
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(kFull, w, o);
      if (lane >= o) w += v;
    }
    warp_total[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  int run = inc - local + (warp > 0 ? warp_total[warp - 1] : 0);
  for (int i = begin; i < end; ++i) {
    const int v = a[i];
    a[i] = run;
    run += v;
  }
}

// Stable scatter of one tile by the `nbits`-bit digit at `shift`: pairs keep their input order
// within a digit (warp segments in order, rounds in order, lanes in order). Warps and rounds past
// the end of the data skip the ranking (warp-uniform conditions).
__global__ void __launch_bounds__(kTileThreads) radix_scatter(const int* keys, const int* vals, int n,
                                                              int shift, int nbits, const int* offsets,
                                                              int tiles, int* keys_out, int* vals_out) {
  SHARED(int, wcnt, [8][256]);  // per warp: pairs of each digit seen so far, then warp bases
  const int t = int(threadIdx.x), lane = t % 32, warp = t / 32;
  for (int i = t; i < 8 * 256; i += kTileThreads) wcnt[i / 256][i % 256] = 0;
  __syncthreads();
  const unsigned lower = (1u << lane) - 1u;
  const int seg = int(blockIdx.x) * kTile + warp * (32 * kItems);  // this warp's first pair
  int key[kItems], val[kItems], rank[kItems];
  UNROLL
  for (int r = 0; r < kItems; ++r) {
    const int i = seg + r * 32 + lane;
    const bool valid = i < n;
    key[r] = valid ? keys[i] : -1;
    val[r] = valid ? vals[i] : 0;
    rank[r] = 0;
    if (seg + r * 32 < n) {  // uniform over the warp
      const int d = (key[r] >> shift) & 255;
      // Lanes holding the same digit: one ballot per digit bit.
      unsigned same = __ballot_sync(kFull, valid);
      for (int b = 0; b < nbits; ++b) {
        const unsigned ones = __ballot_sync(kFull, (d >> b) & 1);
        same &= ((d >> b) & 1) ? ones : ~ones;
      }
      const int before = __popc(same & lower);
      rank[r] = wcnt[warp][d] + before;
      __syncwarp();
      if (valid && before == 0) wcnt[warp][d] += __popc(same);  // the group's first lane
      __syncwarp();
    }
  }
  __syncthreads();
  {  // per digit: exclusive scan over the warps (thread t owns digit t)
    int run = 0;
    for (int w = 0; w < 8; ++w) {
      const int c = wcnt[w][t];
      wcnt[w][t] = run;
      run += c;
    }
  }
  __syncthreads();
  UNROLL
  for (int r = 0; r < kItems; ++r) {
    if (key[r] >= 0) {
      const int d = (key[r] >> shift) & 255;
      const int dst = offsets[d * tiles + int(blockIdx.x)] + wcnt[warp][d] + rank[r];
      keys_out[dst] = key[r];
      vals_out[dst] = val[r];
    }
  }
}

__device__ __forceinline__ int lower_bound(const int* a, int n, int v) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// K elements of T moved as one 16-byte unit (K = 16 / sizeof(T)) or one element (K = 1).
template <class T, int K>
struct Unit {
  T v[K];
};

struct RowsArgs {
  const int* keys;  // sorted ids
  const int* vals;  // their positions, ascending within each id
  int n;
  int64_t padding_idx;
  const void* g;
  Layout g_rows;     // g's leading dims (the positions)
  int64_t g_col;     // g's last-dim stride, in elements
  int64_t units, D;  // column units per row, columns
  void* out;         // [V, D] contiguous
};

template <class T, int K>
__global__ void __launch_bounds__(kRowThreads) emb_rows(RowsArgs a) {
  const int v = int(blockIdx.x);
  const int64_t k = int64_t(blockIdx.y) * kRowThreads + threadIdx.x;
  if (k < a.units) {
    T acc[K];
    UNROLL
    for (int j = 0; j < K; ++j) acc[j] = T(0);
    if (v != a.padding_idx) {
      const int lo = lower_bound(a.keys, a.n, v), hi = lower_bound(a.keys, a.n, v + 1);
      const T* g = static_cast<const T*>(a.g);
      auto row = [&](int i) { return g + offset_of(a.g_rows, a.vals[i]) + k * K * a.g_col; };
      int i = lo;
      for (; i + 4 <= hi; i += 4) {  // 4 loads in flight, added in position order
        Unit<T, K> u[4];
        UNROLL
        for (int q = 0; q < 4; ++q) {
          if constexpr (K > 1) {
            u[q] = *reinterpret_cast<const Unit<T, K>*>(row(i + q));
          } else {
            u[q].v[0] = row(i + q)[0];
          }
        }
        UNROLL
        for (int q = 0; q < 4; ++q)
          UNROLL
          for (int j = 0; j < K; ++j) acc[j] += u[q].v[j];
      }
      for (; i < hi; ++i) {
        const T* r = row(i);
        if constexpr (K > 1) {
          const Unit<T, K> u = *reinterpret_cast<const Unit<T, K>*>(r);
          UNROLL
          for (int j = 0; j < K; ++j) acc[j] += u.v[j];
        } else {
          acc[0] += r[0];
        }
      }
    }
    T* dst = static_cast<T*>(a.out) + int64_t(v) * a.D + k * K;
    if constexpr (K > 1) {
      Unit<T, K> u;
      UNROLL
      for (int j = 0; j < K; ++j) u.v[j] = acc[j];
      *reinterpret_cast<Unit<T, K>*>(dst) = u;
    } else {
      dst[0] = acc[0];
    }
  }
}

// --- index_select, gather, index_add, scatter_add ----------------------------------------------

// Flags the first index of a (strided) index tensor outside [0, limit).
__global__ void __launch_bounds__(256)
    find_bad_ids(const void* ids, Layout l, bool ids64, int64_t n, int64_t limit,
                 unsigned long long* status) {
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < n;
       p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t id = load_id(ids, offset_of(l, p), ids64);
    if (id < 0 || id >= limit) flag_bad(status, n, p);
  }
}

// index_select: out [O, n, inner] (contiguous) element (o, j, k) = x at outer offset of o +
// idx[j] * axis stride + inner offset of k. Everything in copy units U (one element, or 16/8/4
// bytes of a contiguous inner run).
struct SelectArgs {
  const void* x;
  Layout x_outer, x_inner;
  int64_t x_axis;
  const void* idx;
  Layout idx_layout;
  bool idx64;
  int64_t n, inner, total;  // indices, units per (o, j), units in all
  void* out;
};

template <class U>
__global__ void __launch_bounds__(256) index_select_kernel(SelectArgs a) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < a.total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t oj = e / a.inner, k = e - oj * a.inner;
    const int64_t o = oj / a.n, j = oj - o * a.n;
    const int64_t id = load_id(a.idx, offset_of(a.idx_layout, j), a.idx64);
    static_cast<U*>(a.out)[e] = static_cast<const U*>(
        a.x)[offset_of(a.x_outer, o) + id * a.x_axis + offset_of(a.x_inner, k)];
  }
}

// The row-major coordinates of a flat index over `size`, as element offsets of K operands with
// their own strides.
struct Coords {
  int nd;
  int64_t size[engine::kMaxDims];
  int64_t stride[3][engine::kMaxDims];
};

template <int K>
__device__ __forceinline__ void offsets_of(const Coords& c, int64_t p, int64_t (&off)[K]) {
  UNROLL
  for (int k = 0; k < K; ++k) off[k] = 0;
  for (int d = c.nd - 1; d >= 0; --d) {
    const int64_t s = c.size[d];
    const int64_t i = p % s;
    p /= s;
    UNROLL
    for (int k = 0; k < K; ++k) off[k] += i * c.stride[k][d];
  }
}

// gather: out[p] = x at p's coordinates in idx's shape with idx[p] along the axis. Operand 0 of
// c is x (axis stride 0), operand 1 is idx.
template <class U>
__global__ void __launch_bounds__(256)
    gather_kernel(const U* x, Coords c, int64_t x_axis, const void* idx, bool idx64, U* out,
                  int64_t n) {
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < n;
       p += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[2];
    offsets_of<2>(c, p, off);
    out[p] = x[off[0] + load_id(idx, off[1], idx64) * x_axis];
  }
}

// scatter_add_: one thread per column of idx (its coordinates outside the axis) walks the axis
// in order, dst[.., idx[.., a, ..], ..] += src[.., a, ..] for a = 0, 1, ...: the CPU op's order.
// Different columns write different elements (the destination has no overlapping elements), so
// no atomics. Operands of c (idx's shape without the axis): 0 dst, 1 src, 2 idx.
template <class T>
__global__ void __launch_bounds__(128)
    scatter_add_kernel(T* dst, const T* src, const void* idx, bool idx64, Coords c, int64_t A,
                       int64_t dst_axis, int64_t src_axis, int64_t idx_axis, int64_t columns) {
  for (int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; col < columns;
       col += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[3];
    offsets_of<3>(c, col, off);
    for (int64_t a = 0; a < A; ++a) {
      const int64_t id = load_id(idx, off[2] + a * idx_axis, idx64);
      dst[off[0] + id * dst_axis] += src[off[1] + a * src_axis];
    }
  }
}

// index_add: destination row r (along the axis) gets the src rows j with idx[j] == r, in
// ascending j (sorted pairs: keys = idx values, vals = positions j). Columns are the
// destination's and src's coordinates outside the axis, flat row-major. Modes, as the CPU op:
enum AddMode : int {
  kChain = 0,  // contiguous destination: d = ((d + s_j1) + s_j2) + ...; rows nobody names untouched
  kSumThenAdd = 1,  // strided destination: d = d + (((0 + s_j1) + s_j2) + ...), every row
  kFresh = 2,       // new output: d = ((0 + s_j1) + s_j2) + ..., every row
};

struct AddArgs {
  const int* keys;
  const int* vals;
  int n;
  const void* src;
  Layout src_cols;
  int64_t src_axis;
  void* dst;
  Layout dst_cols;
  int64_t dst_axis;
  int64_t A, C;  // destination rows along the axis, columns
  int mode;
};

template <class T>
__global__ void __launch_bounds__(kRowThreads) index_add_rows(AddArgs a) {
  for (int64_t r = blockIdx.x; r < a.A; r += gridDim.x) {
    const int lo = lower_bound(a.keys, a.n, int(r)), hi = lower_bound(a.keys, a.n, int(r) + 1);
    if (lo == hi && a.mode == kChain) continue;  // uniform over the block
    for (int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; c < a.C;
         c += int64_t(gridDim.y) * blockDim.x) {
      T* d = static_cast<T*>(a.dst) + offset_of(a.dst_cols, c) + r * a.dst_axis;
      const T* s = static_cast<const T*>(a.src) + offset_of(a.src_cols, c);
      T acc = a.mode == kChain ? *d : T(0);
      for (int i = lo; i < hi; ++i) acc += s[int64_t(a.vals[i]) * a.src_axis];
      *d = a.mode == kSumThenAdd ? *d + acc : acc;
    }
  }
}

// --- host side ---------------------------------------------------------------------------------

cudaStream_t cu_stream() { return static_cast<cudaStream_t>(stream()); }

void check_on_device(const Tensor& t, const char* op, const char* arg) {
  engine::check_defined(t, op, arg);
  ENGINE_CHECK(t.device() == device(), op, ": '", arg, "' ", t.describe(),
               " is not on the CUDA device ", device());
}

void check_ids(const Tensor& ids, const char* op) {
  ENGINE_CHECK(ids.dtype() == DType::i64 || ids.dtype() == DType::i32, op,
               ": indices must be i64 or i32, got ", engine::dtype_name(ids.dtype()));
  ENGINE_CHECK(ids.numel() < (int64_t(1) << 31), op, ": ", ids.describe(),
               " has more than 2^31 indices");
}

// Throws the CPU op's message if a kernel flagged a bad index.
void read_status(const Tensor& status, const Tensor& ids, int64_t limit, const char* op) {
  const int64_t st = status.to_vector<int64_t>()[0];
  if (st == 0) return;
  const int64_t p = ids.numel() - st;
  const int64_t off = engine::strided_offset(p, ids.shape(), ids.strides());
  const Tensor one(ids.storage(), Shape{}, Shape{}, ids.offset() + off, ids.dtype());
  ENGINE_FAIL(op, ": index ", int64_t(one.item()), " at position ", p, " is out of range [0, ",
              limit, ")");
}

bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

// Stable LSD radix sort of the n (key, value) pairs in keys/vals by key (keys in [0, limit)),
// 8 bits per pass; keys and vals are replaced by the sorted arrays.
void radix_sort_pairs(Tensor& keys, Tensor& vals, int64_t n, int64_t limit) {
  int bits = 0;
  while ((int64_t(1) << bits) < limit) ++bits;
  if (n <= 1 || bits == 0) return;
  const engine::Device dev = device();
  const int tiles = int((n + kTile - 1) / kTile);
  Tensor hist = Tensor::empty({int64_t(256) * tiles}, DType::i32, dev);
  Tensor keys2 = Tensor::empty({n}, DType::i32, dev), vals2 = Tensor::empty({n}, DType::i32, dev);
  // About 4 counts per scan thread, in whole warps.
  const int scan_threads =
      int(std::clamp<int64_t>((int64_t(256) * tiles / 4 + 31) / 32 * 32, 32, kScanThreads));
  for (int shift = 0; shift < bits; shift += 8) {
    LAUNCH(radix_hist, tiles, kTileThreads, 0, cu_stream())(keys.data<int32_t>(), int(n), shift,
                                                            hist.data<int32_t>(), tiles);
    CHECK_LAUNCH("radix_hist");
    LAUNCH(exclusive_scan, 1, scan_threads, 0, cu_stream())(hist.data<int32_t>(), 256 * tiles);
    CHECK_LAUNCH("exclusive_scan");
    LAUNCH(radix_scatter, tiles, kTileThreads, 0, cu_stream())(
        keys.data<int32_t>(), vals.data<int32_t>(), int(n), shift, std::min(8, bits - shift),
        hist.data<int32_t>(), tiles, keys2.data<int32_t>(), vals2.data<int32_t>());
    CHECK_LAUNCH("radix_scatter");
    std::swap(keys, keys2);
    std::swap(vals, vals2);
  }
}


}  // namespace

Tensor embedding(const Tensor& table, const Tensor& ids) {
  const char* op = "embedding";
  check_on_device(table, op, "table");
  check_on_device(ids, op, "ids");
  engine::check_dim(table, 2, op, "table");
  check_ids(ids, op);
  const int64_t V = table.size(0), D = table.size(1), n = ids.numel();
  Shape out_shape = ids.shape();
  out_shape.push_back(D);
  const engine::Device dev = device();
  Tensor out = Tensor::empty(out_shape, table.dtype(), dev);
  if (n == 0) return out;
  Tensor status = Tensor::zeros({1}, DType::i64, dev);
  const int64_t es = int64_t(table.element_size());
  const int64_t rs = table.stride(0), cs = D > 1 ? table.stride(1) : 1;
  GatherArgs a{};
  a.table = table.raw_data();
  a.V = V;
  a.ids = ids.raw_data();
  a.ids_layout = layout_of(ids.shape(), ids.strides());
  a.ids64 = ids.dtype() == DType::i64;
  a.n = n;
  a.out = out.raw_data();
  a.status = reinterpret_cast<unsigned long long*>(status.data<int64_t>());
  // The widest unit that divides the row, the row stride and both base addresses.
  int64_t unit = es;
  if (cs == 1)
    for (int64_t u : {16, 8, 4, 2})
      if (u >= es && (D * es) % u == 0 && (rs * es) % u == 0 && aligned(a.table, size_t(u)) &&
          aligned(a.out, size_t(u))) {
        unit = u;
        break;
      }
  a.units = D * es / unit;
  a.row_stride = rs * es / unit;
  a.col_stride = cs == 1 ? 1 : cs;
  const dim3 grid(unsigned((n + 7) / 8));
  auto go = [&]<class U>() {
    LAUNCH((embedding_gather<U>), grid, 256, 0, cu_stream())(a);
    CHECK_LAUNCH("embedding_gather");
  };
  switch (unit) {
    case 16: go.template operator()<uint4>(); break;
    case 8: go.template operator()<uint2>(); break;
    case 4: go.template operator()<unsigned>(); break;
    default: go.template operator()<unsigned short>(); break;
  }
  read_status(status, ids, V, op);
  return out;
}

Tensor embedding_backward(const Tensor& g, const Tensor& ids, int64_t num_rows, int64_t padding_idx) {
  const char* op = "embedding_backward";
  check_on_device(g, op, "grad");
  check_on_device(ids, op, "ids");
  check_ids(ids, op);
  ENGINE_CHECK(num_rows >= 0, "embedding_backward: negative number of rows ", num_rows);
  ENGINE_CHECK(num_rows < (int64_t(1) << 31), "embedding_backward: ", num_rows,
               " rows (at most 2^31 - 1 on the CUDA backend)");
  ENGINE_CHECK(padding_idx >= -1 && padding_idx < num_rows, "embedding_backward: padding_idx ",
               padding_idx, " out of range [-1, ", num_rows, ")");
  Shape expect = ids.shape();
  ENGINE_CHECK(g.dim() == expect.size() + 1, "embedding_backward: grad ", g.describe(),
               " does not match ids ", ids.describe(), " (expected ids' shape + [D])");
  expect.push_back(g.size(-1));
  ENGINE_CHECK(g.shape() == expect, "embedding_backward: grad ", g.describe(),
               " does not match ids ", ids.describe(), " (expected ids' shape + [D])");
  ENGINE_CHECK(g.dtype() == DType::f32 || g.dtype() == DType::f64, op, ": expected dtype f32 or f64, got ",
               engine::dtype_name(g.dtype()));
  const int64_t D = g.size(-1), n = ids.numel(), V = num_rows;
  const engine::Device dev = device();
  Tensor out = Tensor::empty({V, D}, g.dtype(), dev);

  // 1. keys and validation.
  Tensor keys = Tensor::empty({std::max<int64_t>(n, 1)}, DType::i32, dev);
  Tensor vals = Tensor::empty({std::max<int64_t>(n, 1)}, DType::i32, dev);
  if (n > 0) {
    Tensor status = Tensor::zeros({1}, DType::i64, dev);
    const unsigned blocks = unsigned(std::min<int64_t>((n + 255) / 256, 4096));
    LAUNCH(emb_keys, blocks, 256, 0, cu_stream())(
        ids.raw_data(), layout_of(ids.shape(), ids.strides()), ids.dtype() == DType::i64, n, V,
        keys.data<int32_t>(), vals.data<int32_t>(),
        reinterpret_cast<unsigned long long*>(status.data<int64_t>()));
    CHECK_LAUNCH("emb_keys");
    read_status(status, ids, V, op);
  }
  if (out.numel() == 0) return out;

  // 2. stable radix sort by id.
  radix_sort_pairs(keys, vals, n, V);

  // 3. one block per (id, column slice) sums its run in position order.
  RowsArgs a{};
  a.keys = keys.data<int32_t>();
  a.vals = vals.data<int32_t>();
  a.n = int(n);
  a.padding_idx = padding_idx;
  a.g = g.raw_data();
  Shape lead = ids.shape(), lead_strides;
  for (int d = 0; d + 1 < g.dim(); ++d) lead_strides.push_back(g.stride(d));
  a.g_rows = layout_of(lead, lead_strides);
  a.g_col = g.stride(-1);
  a.D = D;
  a.out = out.raw_data();
  const int64_t es = int64_t(g.element_size()), kv = 16 / es;
  bool vec = (D == 1 || a.g_col == 1) && D % kv == 0 && aligned(a.g, 16);
  for (int d = 0; d < a.g_rows.nd; ++d) vec = vec && a.g_rows.stride[d] % kv == 0;
  a.units = vec ? D / kv : D;
  const dim3 grid(unsigned(V), unsigned((a.units + kRowThreads - 1) / kRowThreads));
  auto go = [&]<class T, int K>() {
    LAUNCH((emb_rows<T, K>), grid, kRowThreads, 0, cu_stream())(a);
    CHECK_LAUNCH("emb_rows");
  };
  if (g.dtype() == DType::f32) {
    if (vec) go.template operator()<float, 4>();
    else go.template operator()<float, 1>();
  } else {
    if (vec) go.template operator()<double, 2>();
    else go.template operator()<double, 1>();
  }
  return out;
}


// --- index_select, gather, index_add, scatter_add ----------------------------------------------

namespace {

int64_t prod(const Shape& s, int d0, int d1) {
  int64_t p = 1;
  for (int d = d0; d < d1; ++d) p *= s[d];
  return p;
}

// Layout of dims [d0, d1) of t.
Layout layout_range(const Tensor& t, int d0, int d1) {
  Shape shape, strides;
  for (int d = d0; d < d1; ++d) {
    shape.push_back(t.size(d));
    strides.push_back(t.stride(d));
  }
  return layout_of(shape, strides);
}

// Layout of t's dims other than `axis`.
Layout layout_without(const Tensor& t, int axis) {
  Shape shape, strides;
  for (int d = 0; d < t.dim(); ++d)
    if (d != axis) {
      shape.push_back(t.size(d));
      strides.push_back(t.stride(d));
    }
  return layout_of(shape, strides);
}

// Coordinates over `shape` without dim `skip` (-1: none), with the strides of up to 3 operands
// (the same dims dropped).
Coords coords_of(const Shape& shape, int skip, std::initializer_list<const Shape*> strides) {
  Coords c{};
  for (int d = 0; d < shape.size(); ++d) {
    if (d == skip) continue;
    c.size[c.nd] = shape[d];
    int k = 0;
    for (const Shape* s : strides) c.stride[k++][c.nd] = (*s)[d];
    ++c.nd;
  }
  return c;
}

// An in-place destination must not have overlapping elements (an expanded view): two index
// positions would then add into the same memory.
void check_writable(const Tensor& t, const char* op) {
  for (int d = 0; d < t.dim(); ++d)
    ENGINE_CHECK(t.size(d) <= 1 || t.stride(d) != 0, op, ": destination ", t.describe(),
                 " has overlapping elements (stride 0 in dim ", d, ")");
}

void check_accumulating(const Tensor& t, const char* op) {
  ENGINE_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64, op,
               ": expected dtype f32 or f64, got ", engine::dtype_name(t.dtype()));
}

// Throws the CPU op's message if an index of ids is outside [0, limit) (one synchronisation).
void validate_ids(const Tensor& ids, int64_t limit, const char* op) {
  const int64_t n = ids.numel();
  if (n == 0) return;
  Tensor status = Tensor::zeros({1}, DType::i64, device());
  const unsigned blocks = unsigned(std::min<int64_t>((n + 255) / 256, 4096));
  LAUNCH(find_bad_ids, blocks, 256, 0, cu_stream())(
      ids.raw_data(), layout_of(ids.shape(), ids.strides()), ids.dtype() == DType::i64, n, limit,
      reinterpret_cast<unsigned long long*>(status.data<int64_t>()));
  CHECK_LAUNCH("find_bad_ids");
  read_status(status, ids, limit, op);
}

unsigned grid_for(int64_t n, int threads) {
  return unsigned(std::clamp<int64_t>((n + threads - 1) / threads, 1, 132 * 16));
}

// index_add into `into` (checked by the caller) in the given mode.
void add_indexed(Tensor& into, int axis, const Tensor& idx, const Tensor& src, AddMode mode,
                 const char* op) {
  const engine::Device dev = device();
  const int64_t A = into.size(axis), n = idx.numel();
  Tensor keys = Tensor::empty({std::max<int64_t>(n, 1)}, DType::i32, dev);
  Tensor vals = Tensor::empty({std::max<int64_t>(n, 1)}, DType::i32, dev);
  if (n > 0) {  // keys = the indices, checked; vals = their positions
    Tensor status = Tensor::zeros({1}, DType::i64, dev);
    LAUNCH(emb_keys, grid_for(n, 256), 256, 0, cu_stream())(
        idx.raw_data(), layout_of(idx.shape(), idx.strides()), idx.dtype() == DType::i64, n, A,
        keys.data<int32_t>(), vals.data<int32_t>(),
        reinterpret_cast<unsigned long long*>(status.data<int64_t>()));
    CHECK_LAUNCH("emb_keys");
    read_status(status, idx, A, op);
  }
  if (src.numel() == 0) {
    if (mode == kFresh) into.zero_();
    return;
  }
  ENGINE_CHECK(A < (int64_t(1) << 31), op, ": ", into.describe(),
               " has more than 2^31 - 1 rows along axis ", axis);
  radix_sort_pairs(keys, vals, n, A);
  AddArgs a{};
  a.keys = keys.data<int32_t>();
  a.vals = vals.data<int32_t>();
  a.n = int(n);
  a.src = src.raw_data();
  a.src_cols = layout_without(src, axis);
  a.src_axis = src.stride(axis);
  a.dst = into.raw_data();
  a.dst_cols = layout_without(into, axis);
  a.dst_axis = into.stride(axis);
  a.A = A;
  a.C = into.numel() / A;
  a.mode = mode;
  const dim3 grid(unsigned(std::min<int64_t>(A, 65535)),
                  unsigned(std::clamp<int64_t>((a.C + kRowThreads - 1) / kRowThreads, 1, 65535)));
  const cudaStream_t s = cu_stream();
  if (into.dtype() == DType::f32) LAUNCH(index_add_rows<float>, grid, kRowThreads, 0, s)(a);
  else LAUNCH(index_add_rows<double>, grid, kRowThreads, 0, s)(a);
  CHECK_LAUNCH("index_add_rows");
}

// The checks of cpu::index_add_ (its messages), for a destination on the device.
void check_index_add(const Tensor& into, int& axis, const Tensor& idx, const Tensor& src) {
  const char* op = "index_add";
  check_on_device(into, op, "destination");
  check_on_device(idx, op, "idx");
  check_on_device(src, op, "src");
  engine::check_same_dtype(into, src, op);
  ENGINE_CHECK(idx.dim() <= 1, "index_add: idx must be 1-D, got ", idx.describe());
  axis = engine::normalize_axis(axis, into.dim(), op);
  Shape expect = into.shape();
  expect[axis] = idx.numel();
  ENGINE_CHECK(src.shape() == expect, "index_add: src ", src.describe(), " does not match ",
               into.describe(), " with ", idx.numel(), " indices along axis ", axis,
               " (expected ", expect, ")");
  check_writable(into, op);
  check_accumulating(into, op);
  check_ids(idx, op);
}

}  // namespace

Tensor index_select(const Tensor& x, int axis, const Tensor& idx) {
  const char* op = "index_select";
  check_on_device(x, op, "x");
  check_on_device(idx, op, "idx");
  ENGINE_CHECK(idx.dim() <= 1, "index_select: idx must be 1-D, got ", idx.describe());
  axis = engine::normalize_axis(axis, x.dim(), op);
  check_ids(idx, op);
  const int64_t A = x.size(axis), n = idx.numel();
  Shape out_shape = x.shape();
  out_shape[axis] = n;
  Tensor out = Tensor::empty(out_shape, x.dtype(), device());
  validate_ids(idx, A, op);
  if (out.numel() == 0) return out;
  const int64_t O = prod(x.shape(), 0, axis), inner = prod(x.shape(), axis + 1, x.dim());
  const int64_t es = int64_t(x.element_size());
  SelectArgs a{};
  a.x = x.raw_data();
  a.x_outer = layout_range(x, 0, axis);
  a.x_inner = layout_range(x, axis + 1, x.dim());
  a.x_axis = A > 1 ? x.stride(axis) : 0;  // a size-1 axis: every valid index is 0
  a.idx = idx.raw_data();
  a.idx_layout = layout_of(idx.shape(), idx.strides());
  a.idx64 = idx.dtype() == DType::i64;
  a.n = n;
  a.out = out.raw_data();
  // The widest unit that divides the inner run (contiguous in x), every x stride it steps by and
  // both base addresses.
  int64_t unit = es;
  if (inner > 1 && a.x_inner.nd == 1 && a.x_inner.stride[0] == 1)
    for (int64_t u : {16, 8, 4}) {
      if (u <= es) break;
      bool ok = (inner * es) % u == 0 && (a.x_axis * es) % u == 0 && aligned(a.x, size_t(u)) &&
                aligned(a.out, size_t(u));
      for (int d = 0; d < a.x_outer.nd; ++d)
        ok = ok && (a.x_outer.shape[d] == 1 || (a.x_outer.stride[d] * es) % u == 0);
      if (ok) {
        unit = u;
        break;
      }
    }
  const int64_t k = unit / es;
  if (k > 1) {
    a.x_axis /= k;
    for (int d = 0; d < a.x_outer.nd; ++d) a.x_outer.stride[d] /= k;
    a.x_inner.shape[0] /= k;
  }
  a.inner = inner / k;
  a.total = O * n * a.inner;
  auto go = [&]<class U>() {
    LAUNCH(index_select_kernel<U>, grid_for(a.total, 256), 256, 0, cu_stream())(a);
    CHECK_LAUNCH("index_select_kernel");
  };
  switch (unit) {
    case 16: go.template operator()<uint4>(); break;
    case 8: go.template operator()<uint2>(); break;
    case 4: go.template operator()<unsigned>(); break;
    default: go.template operator()<unsigned short>(); break;
  }
  return out;
}

void index_add_(Tensor& into, int axis, const Tensor& idx, const Tensor& src) {
  check_index_add(into, axis, idx, src);
  add_indexed(into, axis, idx, src, into.is_contiguous() ? kChain : kSumThenAdd, "index_add");
}

Tensor index_add(const Shape& x_shape, int axis, const Tensor& idx, const Tensor& src) {
  engine::check_defined(src, "index_add", "src");
  check_on_device(src, "index_add", "src");
  Tensor out = Tensor::empty(x_shape, src.dtype(), device());
  check_index_add(out, axis, idx, src);
  add_indexed(out, axis, idx, src, kFresh, "index_add");
  return out;
}

Tensor gather(const Tensor& x, int axis, const Tensor& idx) {
  const char* op = "gather";
  check_on_device(x, op, "x");
  check_on_device(idx, op, "idx");
  ENGINE_CHECK(idx.dim() == x.dim(), "gather: idx ", idx.describe(), " must have the rank of x ",
               x.describe());
  axis = engine::normalize_axis(axis, x.dim(), op);
  for (int d = 0; d < x.dim(); ++d)
    ENGINE_CHECK(d == axis || idx.size(d) <= x.size(d), "gather: idx ", idx.describe(),
                 " is larger than x ", x.describe(), " in dim ", d);
  check_ids(idx, op);
  Tensor out = Tensor::empty(idx.shape(), x.dtype(), device());
  validate_ids(idx, x.size(axis), op);
  const int64_t n = out.numel();
  if (n == 0) return out;
  Shape xs = x.strides();
  xs[axis] = 0;  // the axis coordinate comes from idx
  const Coords c = coords_of(idx.shape(), -1, {&xs, &idx.strides()});
  auto go = [&]<class U>() {
    LAUNCH(gather_kernel<U>, grid_for(n, 256), 256, 0, cu_stream())(
        static_cast<const U*>(x.raw_data()), c, x.stride(axis), idx.raw_data(),
        idx.dtype() == DType::i64, static_cast<U*>(out.raw_data()), n);
    CHECK_LAUNCH("gather_kernel");
  };
  switch (x.element_size()) {
    case 2: go.template operator()<unsigned short>(); break;
    case 4: go.template operator()<unsigned>(); break;
    default: go.template operator()<uint2>(); break;
  }
  return out;
}

void scatter_add_(Tensor& into, int axis, const Tensor& idx, const Tensor& src) {
  const char* op = "scatter_add";
  check_on_device(into, op, "destination");
  check_on_device(idx, op, "idx");
  check_on_device(src, op, "src");
  engine::check_same_dtype(into, src, op);
  ENGINE_CHECK(idx.dim() == into.dim() && src.dim() == into.dim(), "scatter_add: destination ",
               into.describe(), ", idx ", idx.describe(), " and src ", src.describe(),
               " must have the same rank");
  axis = engine::normalize_axis(axis, into.dim(), op);
  for (int d = 0; d < into.dim(); ++d) {
    ENGINE_CHECK(idx.size(d) <= src.size(d), "scatter_add: idx ", idx.describe(),
                 " is larger than src ", src.describe(), " in dim ", d);
    ENGINE_CHECK(d == axis || idx.size(d) <= into.size(d), "scatter_add: idx ", idx.describe(),
                 " is larger than the destination ", into.describe(), " in dim ", d);
  }
  check_writable(into, op);
  check_accumulating(into, op);
  check_ids(idx, op);
  validate_ids(idx, into.size(axis), op);
  if (idx.numel() == 0) return;
  const int64_t A = idx.size(axis), columns = idx.numel() / A;
  const Coords c = coords_of(idx.shape(), axis, {&into.strides(), &src.strides(), &idx.strides()});
  auto go = [&]<class T>() {
    LAUNCH(scatter_add_kernel<T>, grid_for(columns, 128), 128, 0, cu_stream())(
        static_cast<T*>(into.raw_data()), static_cast<const T*>(src.raw_data()), idx.raw_data(),
        idx.dtype() == DType::i64, c, A, into.stride(axis), src.stride(axis), idx.stride(axis),
        columns);
    CHECK_LAUNCH("scatter_add_kernel");
  };
  if (into.dtype() == DType::f32) go.template operator()<float>();
  else go.template operator()<double>();
}

Tensor scatter_add(const Shape& base_shape, int axis, const Tensor& idx, const Tensor& src) {
  engine::check_defined(src, "scatter_add", "src");
  check_on_device(src, "scatter_add", "src");
  Tensor out = Tensor::zeros(base_shape, src.dtype(), device());
  scatter_add_(out, axis, idx, src);
  return out;
}

}  // namespace kernels::cuda
