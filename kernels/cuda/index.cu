// Embedding lookup and its deterministic scatter-add backward on the GPU (kernels/index.h).
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

  // 2. stable radix sort by id, 8 bits per pass.
  int bits = 0;
  while ((int64_t(1) << bits) < V) ++bits;
  if (n > 1 && bits > 0) {
    const int tiles = int((n + kTile - 1) / kTile);
    Tensor hist = Tensor::empty({int64_t(256) * tiles}, DType::i32, dev);
    Tensor keys2 = Tensor::empty({n}, DType::i32, dev), vals2 = Tensor::empty({n}, DType::i32, dev);
    // About 4 counts per scan thread, in whole warps.
    const int scan_threads = int(std::clamp<int64_t>((int64_t(256) * tiles / 4 + 31) / 32 * 32, 32, kScanThreads));
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

}  // namespace kernels::cuda
