// Reductions on the GPU (same contract as kernels::cpu::sum etc., see kernels/reduce.h): sum,
// mean, max, argmax, logsumexp over one axis, and sum_all / mean_all. f32 or bf16 input, results
// in the input dtype (argmax: i64), accumulated in f32 per row.
//
// Semantics as on the CPU: max and argmax propagate NaN (argmax: the first NaN, else the first
// maximum); logsumexp shifts by the NaN-skipping max when it is finite (a row of -inf gives -inf);
// an empty axis gives sum 0, mean NaN, logsumexp -inf, and max / argmax throw.
//
// Design (H100): kernels/cuda/rows.cuh. A reduction over the last axis reads each element once:
// one warp per row up to D = 1024 (16-byte loads, butterfly shuffle reduction, lane 0 writes),
// one block per row above (a streaming loop, then a shared-memory reduction). DRAM traffic:
// 4 B/element f32, 2 B bf16 (+ one value per row); ≤ 1 FLOP/byte (logsumexp: 2 passes over the
// register-cached row, one expf per element). Expected ≥ 80% of 3.35 TB/s for ≥ a few MB. Other
// axes run the same kernels with strided element access (correct, uncoalesced).
// sum_all / mean_all: two stages with a partition fixed by the size alone, so results are
// reproducible bit for bit: ≤ 1024 blocks of 256 threads each sum a fixed range of 8-element
// chunks (f32 per chunk, f64 per thread and across the block) into part[b]; one block adds the
// parts in a fixed tree order. One DRAM read of x (plus 8 B per block).
#include <climits>
#include <vector>

#include "kernels/cuda/rows.cuh"
#include "kernels/reduce.h"

namespace kernels::cuda {
namespace {

using namespace rows;

enum ReduceOp : int { kSum = 0, kMean = 1, kMax = 2, kLogSumExp = 3 };

// max that propagates NaN (the result of max / argmax for a row holding one).
struct NanMaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const {
    return (a > b || a != a) ? a : b;
  }
  __device__ __forceinline__ static float identity() { return -CUDART_INF_F; }
};

template <class Team, int kSlots, bool kVec, int kOp>
__global__ void __launch_bounds__(Team::kMaxThreads, Team::kMinBlocks)
    reduce_rows_kernel(In x, Out out, int64_t nrows, int D) {
  const int64_t row = team_row<Team>();
  if (row >= nrows) return;  // only whole warps of the last warp-team block; no barrier follows
  const int nc = (D + kChunk - 1) / kChunk;
  const Row<Team, kSlots, kVec> xr(x, row, D);
  float r[1];
  if constexpr (kOp == kSum || kOp == kMean) {
    r[0] = 0.0f;
    for_chunks<Team, kSlots>(nc, [&](int k, int c) {
      float v[kChunk];
      xr.get(k, c, v);  // 0 past D
      ROWS_UNROLL
      for (int e = 0; e < kChunk; ++e) r[0] += v[e];
    });
    Team::reduce(r, SumOp{});
    if (kOp == kMean) r[0] /= float(D);  // 0/0 = NaN for an empty axis, as on the CPU
  } else {
    r[0] = -CUDART_INF_F;
    for_chunks<Team, kSlots>(nc, [&](int k, int c) {
      float v[kChunk];
      xr.get(k, c, v);
      const int n = D - c * kChunk;
      ROWS_UNROLL
      for (int e = 0; e < kChunk; ++e)
        if (e < n) r[0] = kOp == kMax ? NanMaxOp{}(r[0], v[e]) : fmaxf(r[0], v[e]);
    });
    if constexpr (kOp == kMax) {
      Team::reduce(r, NanMaxOp{});
    } else {
      Team::reduce(r, MaxOp{});
      const float shift = r[0] > -CUDART_INF_F && r[0] < CUDART_INF_F ? r[0] : 0.0f;
      float s[1] = {0.0f};
      for_chunks<Team, kSlots>(nc, [&](int k, int c) {
        float v[kChunk];
        xr.get(k, c, v);
        const int n = D - c * kChunk;
        ROWS_UNROLL
        for (int e = 0; e < kChunk; ++e)
          if (e < n) s[0] += expf(v[e] - shift);
      });
      Team::reduce(s, SumOp{});
      r[0] = shift + logf(s[0]);
    }
  }
  if (Team::rank() == 0) store1(out, row, r[0]);
}

// (value, index) of the first maximum, a NaN counting as the maximum (its first occurrence).
struct ArgBest {
  float v;
  int i;
};
__device__ __forceinline__ ArgBest arg_better(ArgBest a, ArgBest b) {
  const bool an = a.v != a.v, bn = b.v != b.v;
  const bool tie = a.v == b.v || (an && bn);
  return (a.v > b.v || (an && !bn) || (tie && a.i < b.i)) ? a : b;
}
__device__ __forceinline__ ArgBest warp_arg_reduce(ArgBest a) {
  ROWS_UNROLL
  for (int o = 16; o > 0; o >>= 1) {
    const ArgBest b{__shfl_xor_sync(0xffffffffu, a.v, o), __shfl_xor_sync(0xffffffffu, a.i, o)};
    a = arg_better(a, b);
  }
  return a;
}

template <class Team, int kSlots, bool kVec>
__global__ void __launch_bounds__(Team::kMaxThreads, Team::kMinBlocks)
    argmax_rows_kernel(In x, int64_t* out, int64_t nrows, int D) {
  const int64_t row = team_row<Team>();
  if (row >= nrows) return;
  const int nc = (D + kChunk - 1) / kChunk;
  const Row<Team, kSlots, kVec> xr(x, row, D);
  ArgBest best{-CUDART_INF_F, INT_MAX};  // loses every tie against a real element
  for_chunks<Team, kSlots>(nc, [&](int k, int c) {
    float v[kChunk];
    xr.get(k, c, v);
    const int n = D - c * kChunk;
    ROWS_UNROLL
    for (int e = 0; e < kChunk; ++e)
      if (e < n) best = arg_better(best, ArgBest{v[e], c * kChunk + e});
  });
  best = warp_arg_reduce(best);
  if constexpr (Team::kBlock) {
    SHARED(float, pv, [32]);
    SHARED(int, pi, [32]);
    const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5);
    if (lane == 0) {
      pv[warp] = best.v;
      pi[warp] = best.i;
    }
    __syncthreads();
    if (warp == 0) {
      best = lane < int(blockDim.x >> 5) ? ArgBest{pv[lane], pi[lane]} : ArgBest{-CUDART_INF_F, INT_MAX};
      best = warp_arg_reduce(best);
    }
  }
  if (Team::rank() == 0) out[row] = best.i;
}

// --- sum_all / mean_all ------------------------------------------------------------------------

constexpr int kAllThreads = 256;
constexpr int64_t kAllMaxBlocks = 1024;

__device__ __forceinline__ double block_sum(double v) {
  SHARED(double, part, [32]);
  ROWS_UNROLL
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5);
  if (lane == 0) part[warp] = v;
  __syncthreads();
  v = lane < int(blockDim.x >> 5) ? part[lane] : 0.0;
  ROWS_UNROLL
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// part[b] = Σ of chunks [b·per_block, (b+1)·per_block) of x seen as nrows rows of D elements
// (a contiguous x is one row). kVec: full chunks are 16-byte loads, the row's last partial chunk
// is read element by element.
template <bool kVec>
__global__ void __launch_bounds__(kAllThreads)
    sum_all_partial_kernel(In x, int64_t nrows, int D, int64_t per_block, double* part) {
  const int nc = (D + kChunk - 1) / kChunk;
  const int64_t total = nrows * nc;
  const int64_t q0 = int64_t(blockIdx.x) * per_block;
  const int64_t q1 = q0 + per_block < total ? q0 + per_block : total;
  double acc = 0.0;
  ROWS_NO_UNROLL
  for (int64_t q = q0 + threadIdx.x; q < q1; q += blockDim.x) {
    const int64_t row = q / nc;
    const int c = int(q - row * nc);
    const int64_t off = x.rows.offset(row);
    float v[kChunk];
    if (kVec && (c + 1) * kChunk <= D) load_chunk<kVec>(x, off, c, D, v);
    else load_chunk<false>(x, off, c, D, v);
    float s = 0.0f;
    ROWS_UNROLL
    for (int e = 0; e < kChunk; ++e) s += v[e];
    acc += double(s);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

// out = Σ part (÷ n for the mean), in a fixed order: thread t adds parts t, t + 256, ..., then
// the block tree.
__global__ void __launch_bounds__(kAllThreads)
    sum_all_final_kernel(const double* part, int64_t nparts, double divisor, Out out) {
  double acc = 0.0;
  for (int64_t p = threadIdx.x; p < nparts; p += blockDim.x) acc += part[p];
  acc = block_sum(acc);
  if (threadIdx.x == 0) store1(out, 0, float(acc / divisor));
}

// --- max_backward ------------------------------------------------------------------------------

// out (zeroed, [outer, len, inner]) gets g[k] at the argmax position of slice k = r·inner + j: a
// scatter of element bits (any float dtype). A bad index is not written; the first one seen is
// reported through bad = {flag, index}.
template <class Bits>
__global__ void __launch_bounds__(256)
    max_backward_kernel(const Bits* g, const int64_t* idx, Bits* out, int64_t n, int64_t inner,
                        int64_t len, unsigned long long* bad) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += step) {
    const int64_t r = k / inner, j = k - r * inner;
    const int64_t ix = idx[k];
    if (ix < 0 || ix >= len) {
      if (atomicCAS(&bad[0], 0ull, 1ull) == 0ull) bad[1] = static_cast<unsigned long long>(ix);
      continue;
    }
    out[(r * len + ix) * inner + j] = g[k];
  }
}

// --- host side ---------------------------------------------------------------------------------

struct Reduced {
  AxisRows a;
  Tensor x, out;
};

Reduced prepare(const Tensor& x_in, int axis, bool keepdim, const char* op, DType out_dtype) {
  engine::check_defined(x_in, op, "x");
  check_on_device(x_in, op, "x");
  check_gpu_dtype(x_in, op, "x");
  Reduced r;
  r.a = axis_rows(x_in, axis, op);
  r.x = representable(x_in, r.a.axis);
  Shape s = x_in.shape();
  if (r.a.axis >= 0) {
    if (keepdim) s[r.a.axis] = 1;
    else s.erase(r.a.axis);
  }
  r.out = Tensor::empty(s, out_dtype, x_in.device());
  return r;
}

template <int kOp>
Tensor reduce_rows(const Tensor& x_in, int axis, bool keepdim, const char* op) {
  Reduced r = prepare(x_in, axis, keepdim, op, x_in.dtype());
  if (kOp == kMax)
    ENGINE_CHECK(r.a.D > 0 || r.a.nrows == 0, "max: cannot reduce ", x_in.describe(), " over axis ",
                 axis, " of size 0");
  if (r.a.nrows == 0) return r.out;
  const Plan p = plan(r.a.D, vec_ok(r.x, r.a.axis));
  Out o;
  o.p = r.out.raw_data();
  o.kind = r.out.dtype() == DType::bf16 ? kBF16 : kF32;
  dispatch(p, [&](auto team, auto slots, auto vec) {
    using Team = decltype(team);
    constexpr int kSlots = decltype(slots)::value;
    constexpr bool kVec = decltype(vec)::value;
    LAUNCH((reduce_rows_kernel<Team, kSlots, kVec, kOp>), dim3(unsigned(p.blocks(r.a.nrows))),
           dim3(p.threads), 0, rows::stream())(in_view(r.x, r.a.axis), o, r.a.nrows, int(r.a.D));
    CHECK_LAUNCH("reduce_rows_kernel");
  });
  return r.out;
}

Tensor total(const Tensor& x_in, bool is_mean, const char* op) {
  engine::check_defined(x_in, op, "x");
  check_on_device(x_in, op, "x");
  check_gpu_dtype(x_in, op, "x");
  Tensor out = Tensor::empty({}, x_in.dtype(), x_in.device());
  Out o;
  o.p = out.raw_data();
  o.kind = out.dtype() == DType::bf16 ? kBF16 : kF32;
  const int64_t n = x_in.numel();
  const double divisor = is_mean ? double(n) : 1.0;  // mean of nothing: 0/0 = NaN, as on the CPU
  // A contiguous x is one row of n elements; otherwise rows along its last axis.
  const bool flat = x_in.is_contiguous() && n <= INT_MAX;
  const Tensor x = flat || x_in.dim() == 0 ? x_in : representable(x_in, x_in.dim() - 1);
  const int axis = flat || x.dim() == 0 ? -1 : x.dim() - 1;
  const int64_t D = flat ? n : axis >= 0 ? x.size(axis) : 1;
  const int64_t nrows = D == 0 ? 0 : n / D;
  ENGINE_CHECK(D <= INT_MAX, op, ": rows of ", D, " elements are too wide for the GPU kernels");
  In in = flat ? In{x.raw_data(), RowMap{}, 1, x.dtype() == DType::bf16 ? kBF16 : kF32}
               : in_view(x, axis);
  const int64_t chunks = nrows * ((D + kChunk - 1) / kChunk);
  // The partition depends on the size only: reproducible results on any GPU.
  const int64_t per_block =
      std::max<int64_t>((chunks + kAllMaxBlocks - 1) / kAllMaxBlocks, 4 * kAllThreads);
  const int64_t nblocks = (chunks + per_block - 1) / per_block;
  Tensor part = Tensor::empty({std::max<int64_t>(nblocks, 1)}, DType::f64, x_in.device());
  if (nblocks > 0) {
    const bool vec = flat ? reinterpret_cast<uintptr_t>(x.raw_data()) % 16 == 0 : vec_ok(x, axis) && D % kChunk == 0;
    if (vec) {
      LAUNCH(sum_all_partial_kernel<true>, dim3(unsigned(nblocks)), dim3(kAllThreads), 0, rows::stream())(
          in, nrows, int(D), per_block, part.data<double>());
    } else {
      LAUNCH(sum_all_partial_kernel<false>, dim3(unsigned(nblocks)), dim3(kAllThreads), 0, rows::stream())(
          in, nrows, int(D), per_block, part.data<double>());
    }
    CHECK_LAUNCH("sum_all_partial_kernel");
  }
  LAUNCH(sum_all_final_kernel, dim3(1), dim3(kAllThreads), 0, rows::stream())(part.data<double>(), nblocks,
                                                                               divisor, o);
  CHECK_LAUNCH("sum_all_final_kernel");
  return out;
}

}  // namespace

Tensor sum(const Tensor& x, int axis, bool keepdim) { return reduce_rows<kSum>(x, axis, keepdim, "sum"); }
Tensor mean(const Tensor& x, int axis, bool keepdim) {
  return reduce_rows<kMean>(x, axis, keepdim, "mean");
}
Tensor max(const Tensor& x, int axis, bool keepdim) { return reduce_rows<kMax>(x, axis, keepdim, "max"); }
Tensor logsumexp(const Tensor& x, int axis, bool keepdim) {
  return reduce_rows<kLogSumExp>(x, axis, keepdim, "logsumexp");
}

Tensor argmax(const Tensor& x_in, int axis, bool keepdim) {
  Reduced r = prepare(x_in, axis, keepdim, "argmax", DType::i64);
  ENGINE_CHECK(r.a.D > 0 || r.a.nrows == 0, "argmax: cannot reduce ", x_in.describe(), " over axis ",
               axis, " of size 0");
  if (r.a.nrows == 0) return r.out;
  const Plan p = plan(r.a.D, vec_ok(r.x, r.a.axis));
  dispatch(p, [&](auto team, auto slots, auto vec) {
    using Team = decltype(team);
    constexpr int kSlots = decltype(slots)::value;
    constexpr bool kVec = decltype(vec)::value;
    LAUNCH((argmax_rows_kernel<Team, kSlots, kVec>), dim3(unsigned(p.blocks(r.a.nrows))), dim3(p.threads),
           0, rows::stream())(in_view(r.x, r.a.axis), r.out.data<int64_t>(), r.a.nrows, int(r.a.D));
    CHECK_LAUNCH("argmax_rows_kernel");
  });
  return r.out;
}

// The CPU op's checks and result; the index check needs the device's verdict, so this op waits
// for the GPU (it is not on a training step's hot path).
Tensor max_backward(const Tensor& g_in, const Tensor& idx_in, const Shape& in_shape, int axis) {
  const char* op = "max_backward";
  engine::check_defined(g_in, op, "g");
  engine::check_defined(idx_in, op, "argmax");
  check_on_device(g_in, op, "g");
  check_on_device(idx_in, op, "argmax");
  ENGINE_CHECK(idx_in.dtype() == DType::i64, op, ": expected i64 indices, got ", idx_in.describe());
  engine::check_same_shape(g_in, idx_in, op);
  ENGINE_CHECK(engine::is_floating(g_in.dtype()), op, ": expected a floating-point gradient, got ",
               g_in.describe());
  const int nd = in_shape.size();
  const int a = engine::normalize_axis(axis, std::max(nd, 1), op);
  Shape kept = in_shape, dropped = in_shape;
  if (nd > 0) {
    kept[a] = 1;
    dropped.erase(a);
  }
  ENGINE_CHECK(g_in.shape() == kept || g_in.shape() == dropped, op, ": gradient ",
               g_in.describe(), " does not match the max over axis ", axis, " of shape ",
               in_shape);
  int64_t outer = 1, len = nd > 0 ? in_shape[a] : 1, inner = 1;
  for (int d = 0; d < a && d < nd; ++d) outer *= in_shape[d];
  for (int d = a + 1; d < nd; ++d) inner *= in_shape[d];
  Tensor out = Tensor::zeros(in_shape, g_in.dtype(), g_in.device());
  const int64_t n = outer * inner;
  if (n == 0) return out;
  const Tensor g = g_in.contiguous(), idx = idx_in.contiguous();
  Tensor bad = Tensor::zeros({2}, DType::i64, g_in.device());
  auto* badp = reinterpret_cast<unsigned long long*>(bad.data<int64_t>());
  const unsigned blocks = unsigned(std::min<int64_t>((n + 255) / 256, 132 * 16));
  auto launch = [&](auto bits) {
    using B = decltype(bits);
    LAUNCH((max_backward_kernel<B>), dim3(blocks), dim3(256), 0, rows::stream())(
        static_cast<const B*>(g.raw_data()), idx.data<int64_t>(), static_cast<B*>(out.raw_data()), n,
        inner, len, badp);
    CHECK_LAUNCH("max_backward_kernel");
  };
  switch (g.element_size()) {
    case 2: launch(uint16_t{}); break;
    case 4: launch(uint32_t{}); break;
    default: launch(uint64_t{}); break;
  }
  const std::vector<int64_t> verdict = bad.to_vector<int64_t>();
  ENGINE_CHECK(verdict[0] == 0, op, ": index ", verdict[1], " out of range for axis ", axis,
               " of size ", len);
  return out;
}

Tensor sum_all(const Tensor& x) { return total(x, false, "sum_all"); }
Tensor mean_all(const Tensor& x) { return total(x, true, "mean_all"); }

}  // namespace kernels::cuda
