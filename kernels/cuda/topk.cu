// topk on the GPU (same contract and total order as kernels::cpu::topk, kernels/topk.h): the k
// largest (smallest) elements along any axis, ties to the lower index, NaN larger than every
// number, -0 equal to +0; every dtype. Values and indices are bit-identical to the CPU op's.
//
// Every element becomes a pair (order key, index) whose ascending order is the documented order:
// the key maps the value monotonically to an unsigned integer (floats: sign-magnitude flip, -0
// folded onto +0, every NaN the largest key; integers: sign bit flipped; bf16 through float), and
// is complemented for largest = true. The index breaks ties, so all pairs are distinct.
//
// Design (H100):
//   1. chunk sort: one block (up to 256 threads) per (row, chunk of up to 1024 elements) loads its
//      pairs into shared memory (12 KB), bitonic-sorts them (log² steps, one barrier each; up to 2
//      compare-exchanges per thread and step) and keeps the first
//      min(k, chunk) pairs: the final result when the row is one chunk (the common case: router
//      rows, class scores), else one sorted run per chunk in a [rows, chunks, k] buffer.
//   2. merge levels (rows longer than 1024 only): pairs of runs are merged by rank, one thread per
//      element: its position in the merged run is its own position plus the number of pairs of the
//      other run below it (binary search; the pairs are distinct), kept if below k. log2(chunks)
//      launches; the last writes the results.
// A row is read once; the work per element is O(log² chunk) shared-memory steps plus O(log k ·
// log chunks) for long rows. Rows of a few elements leave most of a 32-thread block idle (a
// block per row): fine for the sizes topk sees here (the MoE routers use kernels/routing.h).
#include <algorithm>
#include <cstdint>

#include "engine/strided.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "kernels/topk.h"

namespace kernels::cuda {
namespace {

constexpr int kMaxChunk = 1024;  // elements sorted by one block
constexpr int kMaxThreads = 256;  // 2 compare-exchanges per thread and step for a full chunk
using u64 = unsigned long long;

struct Layout {
  int nd;
  int64_t shape[engine::kMaxDims];
  int64_t stride[engine::kMaxDims];
};

// Layout of t's dims other than `axis`: the start of row r (flat over those dims) is
// offset_of(layout, r).
Layout rows_layout(const Tensor& t, int axis) {
  Shape shape, strides;
  for (int d = 0; d < t.dim(); ++d)
    if (d != axis) {
      shape.push_back(t.size(d));
      strides.push_back(t.stride(d));
    }
  Layout l{};
  const engine::StridedLayout<1> m = engine::merge_dims<1>(shape, {strides});
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

struct Bf16Bits {
  unsigned short bits;
};

// Ascending order keys (the order of largest = false).
__device__ __forceinline__ u64 raw_key(float v) {
  if (v != v) return 0xffffffffull;  // every NaN, above +inf
  if (v == 0.0f) v = 0.0f;           // -0 ties with +0
  const unsigned b = __float_as_uint(v);
  return u64((b & 0x80000000u) ? ~b : (b | 0x80000000u));
}
__device__ __forceinline__ u64 raw_key(Bf16Bits v) {
  return raw_key(__uint_as_float(unsigned(v.bits) << 16));
}
__device__ __forceinline__ u64 raw_key(double v) {
  if (v != v) return ~0ull;
  if (v == 0.0) v = 0.0;
  const u64 b = static_cast<u64>(__double_as_longlong(v));
  return (b >> 63) ? ~b : (b | (1ull << 63));
}
__device__ __forceinline__ u64 raw_key(int32_t v) { return u64(unsigned(v) ^ 0x80000000u); }
__device__ __forceinline__ u64 raw_key(int64_t v) { return static_cast<u64>(v) ^ (1ull << 63); }

template <bool kLargest, class T>
__device__ __forceinline__ u64 order_key(T v) {
  const u64 k = raw_key(v);
  return kLargest ? ~k : k;
}

__device__ __forceinline__ bool pair_less(u64 ka, unsigned ia, u64 kb, unsigned ib) {
  return ka < kb || (ka == kb && ia < ib);
}

struct TopkArgs {
  const void* x;
  Layout rows;          // row starts
  int64_t axis_stride;  // elements along the axis
  int64_t n, k, nrows, inner;
  int64_t chunk, chunks;  // elements per chunk (a power of 2), chunks per row
  void* values;           // [outer, k, inner] contiguous, x's dtype
  int64_t* indices;       // same layout
};

// Writes result j of row r: the element at index i of the row.
template <class T>
__device__ __forceinline__ void write_result(const TopkArgs& a, int64_t r, int64_t j, unsigned i) {
  const int64_t o = r / a.inner, in = r - o * a.inner;
  const int64_t dst = (o * a.k + j) * a.inner + in;
  static_cast<T*>(a.values)[dst] =
      static_cast<const T*>(a.x)[offset_of(a.rows, r) + int64_t(i) * a.axis_stride];
  a.indices[dst] = int64_t(i);
}

// Sorts n (a power of 2) pairs in shared memory ascending; every thread of the block calls it.
__device__ __forceinline__ void bitonic_sort(u64* key, unsigned* idx, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int p = threadIdx.x; p < n / 2; p += blockDim.x) {
        const int i = 2 * stride * (p / stride) + (p % stride), j = i + stride;
        const bool up = (i & size) == 0;
        const u64 ka = key[i], kb = key[j];
        const unsigned ia = idx[i], ib = idx[j];
        if (pair_less(kb, ib, ka, ia) == up) {
          key[i] = kb, key[j] = ka;
          idx[i] = ib, idx[j] = ia;
        }
      }
      __syncthreads();
    }
  }
}

// Block (row, chunk): sorts the chunk's pairs, keeps the first min(k, chunk length).
template <class T, bool kLargest>
__global__ void __launch_bounds__(kMaxThreads)
    topk_chunk_kernel(TopkArgs a, u64* run_key, unsigned* run_idx) {
  SHARED(u64, key, [kMaxChunk]);
  SHARED(unsigned, idx, [kMaxChunk]);
  const int64_t r = int64_t(blockIdx.x) / a.chunks, c = int64_t(blockIdx.x) % a.chunks;
  const T* x = static_cast<const T*>(a.x) + offset_of(a.rows, r);
  const int64_t first = c * a.chunk;
  const int len = int(min(a.chunk, a.n - first)), S = int(a.chunk);
  for (int i = threadIdx.x; i < S; i += blockDim.x) {
    if (i < len) {
      key[i] = order_key<kLargest>(x[(first + i) * a.axis_stride]);
      idx[i] = unsigned(first + i);
    } else {  // padding sorts after every element
      key[i] = ~0ull;
      idx[i] = ~0u;
    }
  }
  __syncthreads();
  bitonic_sort(key, idx, S);
  const int m = int(min(a.k, int64_t(len)));
  for (int i = threadIdx.x; i < m; i += blockDim.x) {
    if (a.chunks == 1) {
      write_result<T>(a, r, i, idx[i]);
    } else {
      const int64_t slot = (r * a.chunks + c) * a.k + i;
      run_key[slot] = key[i];
      run_idx[slot] = idx[i];
    }
  }
}

// Length of run j when runs cover `span` elements of the row each.
__device__ __forceinline__ int64_t run_len(const TopkArgs& a, int64_t j, int64_t span) {
  const int64_t begin = j * span;
  if (begin >= a.n) return 0;
  return min(a.k, min(a.n, begin + span) - begin);
}

// Merges runs 2m and 2m + 1 (span elements of the row each) of every row into run m, keeping the
// first k pairs; one thread per pair of the two runs. kFinal: writes the results instead.
template <class T, bool kFinal>
__global__ void __launch_bounds__(256)
    topk_merge_kernel(TopkArgs a, const u64* in_key, const unsigned* in_idx, u64* out_key,
                      unsigned* out_idx, int64_t span, int64_t merged_runs) {
  const int64_t per = 2 * a.k, total = a.nrows * merged_runs * per;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = t % per, rm = t / per;
    const int64_t m = rm % merged_runs, r = rm / merged_runs;
    const int side = int(p / a.k);
    const int64_t q = p - side * a.k;
    const int64_t mine = 2 * m + side, other = 2 * m + 1 - side;
    if (q >= run_len(a, mine, span)) continue;
    const int64_t mine_at = (r * a.chunks + mine) * a.k, other_at = (r * a.chunks + other) * a.k;
    const u64 kq = in_key[mine_at + q];
    const unsigned iq = in_idx[mine_at + q];
    // Pairs of the other run below (kq, iq).
    int64_t lo = 0, hi = run_len(a, other, span);
    while (lo < hi) {
      const int64_t mid = (lo + hi) >> 1;
      if (pair_less(in_key[other_at + mid], in_idx[other_at + mid], kq, iq)) lo = mid + 1;
      else hi = mid;
    }
    const int64_t rank = q + lo;
    if (rank >= a.k) continue;
    if constexpr (kFinal) {
      write_result<T>(a, r, rank, iq);
    } else {
      const int64_t slot = (r * a.chunks + m) * a.k + rank;
      out_key[slot] = kq;
      out_idx[slot] = iq;
    }
  }
}

template <class T, bool kLargest>
void run_topk(const TopkArgs& a) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream());
  const unsigned threads = unsigned(std::clamp<int64_t>(a.chunk / 2, 32, kMaxThreads));
  const engine::Device dev = device();
  Tensor key[2], idx[2];
  if (a.chunks > 1)
    for (int b = 0; b < 2; ++b) {
      key[b] = Tensor::empty({a.nrows * a.chunks * a.k}, DType::i64, dev);
      idx[b] = Tensor::empty({a.nrows * a.chunks * a.k}, DType::i32, dev);
    }
  auto kp = [&](int b) {
    return a.chunks > 1 ? reinterpret_cast<u64*>(key[b].data<int64_t>()) : nullptr;
  };
  auto ip = [&](int b) {
    return a.chunks > 1 ? reinterpret_cast<unsigned*>(idx[b].data<int32_t>()) : nullptr;
  };
  LAUNCH((topk_chunk_kernel<T, kLargest>), unsigned(a.nrows * a.chunks), threads, 0, s)(
      a, kp(0), ip(0));
  CHECK_LAUNCH("topk_chunk_kernel");
  int cur = 0;
  for (int64_t runs = a.chunks, span = a.chunk; runs > 1; runs = (runs + 1) / 2, span *= 2) {
    const int64_t merged = (runs + 1) / 2, total = a.nrows * merged * 2 * a.k;
    const unsigned blocks = unsigned(std::clamp<int64_t>((total + 255) / 256, 1, 132 * 16));
    if (merged == 1) {
      LAUNCH((topk_merge_kernel<T, true>), blocks, 256, 0, s)(a, kp(cur), ip(cur), nullptr,
                                                              nullptr, span, merged);
    } else {
      LAUNCH((topk_merge_kernel<T, false>), blocks, 256, 0, s)(a, kp(cur), ip(cur), kp(1 - cur),
                                                               ip(1 - cur), span, merged);
    }
    CHECK_LAUNCH("topk_merge_kernel");
    cur = 1 - cur;
  }
}

template <class T>
void run_topk(const TopkArgs& a, bool largest) {
  if (largest) run_topk<T, true>(a);
  else run_topk<T, false>(a);
}

}  // namespace

TopK topk(const Tensor& x, int64_t k, int axis, bool largest) {
  engine::check_defined(x, "topk", "x");
  ENGINE_CHECK(x.device() == device(), "topk: 'x' ", x.describe(), " is not on the CUDA device ",
               device());
  axis = engine::normalize_axis(axis, x.dim(), "topk");
  const int64_t n = x.size(axis);
  ENGINE_CHECK(k >= 0 && k <= n, "topk: k = ", k, " is out of range [0, ", n, "] for axis ", axis,
               " of ", x.describe());
  Shape out_shape = x.shape();
  out_shape[axis] = k;
  TopK res{Tensor::empty(out_shape, x.dtype(), x.device()),
           Tensor::empty(out_shape, DType::i64, x.device())};
  if (res.values.numel() == 0) return res;
  ENGINE_CHECK(n < (int64_t(1) << 31), "topk: ", x.describe(),
               " has more than 2^31 - 1 elements along axis ", axis);
  TopkArgs a{};
  a.x = x.raw_data();
  a.rows = rows_layout(x, axis);
  a.axis_stride = x.stride(axis);
  a.n = n;
  a.k = k;
  a.nrows = x.numel() / n;
  a.inner = 1;
  for (int d = axis + 1; d < x.dim(); ++d) a.inner *= x.size(d);
  a.chunk = kMaxChunk;
  if (n <= kMaxChunk)
    for (a.chunk = 1; a.chunk < n;) a.chunk *= 2;
  a.chunks = (n + a.chunk - 1) / a.chunk;
  ENGINE_CHECK(a.nrows * a.chunks < (int64_t(1) << 31), "topk: ", x.describe(),
               " has too many rows for one launch");
  a.values = res.values.raw_data();
  a.indices = res.indices.data<int64_t>();
  switch (x.dtype()) {
    case DType::f32: run_topk<float>(a, largest); break;
    case DType::f64: run_topk<double>(a, largest); break;
    case DType::bf16: run_topk<Bf16Bits>(a, largest); break;
    case DType::i32: run_topk<int32_t>(a, largest); break;
    case DType::i64: run_topk<int64_t>(a, largest); break;
  }
  return res;
}

}  // namespace kernels::cuda
