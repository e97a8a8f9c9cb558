// LayerNorm forward and backward on the GPU (same contract as kernels::cpu::layernorm, see
// kernels/layernorm.h), f32 or bf16 activations and parameters, f32 statistics.
//
// Design (H100, 3.35 TB/s; both kernels are memory-bound at ~1-2 FLOP/byte), on the row
// machinery of kernels/cuda/rows.cuh:
// - Forward: for D % 8 == 0 (IMP/ViT widths 192-1024) one warp per row, 4 rows per 128-thread
//   block; the row is read once with 16-byte loads into registers (≤ 32 floats per lane) and
//   stays there for the three passes: sum -> m0; Σd and Σd² with d = x - m0 (the mean is refined
//   to m0 + mean(d), so a large common offset costs no precision, as in the f64 CPU kernel, and
//   var = E[d²] - mean(d)² has no cancellation); write y = (d - mean(d)) · rstd · w + b. weight
//   and bias chunks are re-read per row from L1. Wider rows: one block per row (≤ 8192 cached,
//   streamed above); odd widths and strided views: scalar loads, re-read from L1.
//   DRAM traffic per element: read x + write y = 8 B (f32) or 4 B (bf16), plus 8 B per row of
//   statistics; expected ≥ 80% of 3.35 TB/s once there are a few thousand rows (e.g. 50k × 768
//   bf16 moves 154 MB: ~55 µs).
// - Backward: the same row teams compute dx with one fused 3-way reduction (Σd, Σg·w,
//   Σg·w·d; the exact mean is recovered from the saved one in the same pass, as on the CPU).
//   dweight = Σ g·xhat and dbias = Σ g are reduced deterministically in two stages: block b owns
//   a fixed range of rows (≤ 512 blocks, ≥ 4 rows per warp); its warps accumulate their columns
//   in shared memory (32 KB: [warp][w|b][8][128], e-major so lanes hit distinct banks), then add
//   the 4 warps' sums in warp order into part[b][D]; column_sum adds the parts in order. No
//   float atomics: the result depends on the shape only. DRAM traffic per element: read x, g,
//   write dx = 12 B (f32) / 6 B (bf16); the parts add 2 × 512 × D × 4 B written and read
//   (≈ 2% at 50k × 1024). Registers: x and g cached, ≤ 128 per thread (launch bounds for 4
//   blocks/SM, no spills; the per-thread accumulators live in shared memory for that reason).
#include <algorithm>
#include <climits>

#include "kernels/cuda/rows.cuh"
#include "kernels/layernorm.h"

namespace kernels::cuda {
namespace {

using namespace rows;

template <class Team, int kSlots, bool kVec>
__global__ void __launch_bounds__(Team::kMaxThreads, Team::kMinBlocks)
    layernorm_forward_kernel(In x, In w, In b, Out y, float* mean, float* rstd, int64_t nrows,
                             int D, float eps) {
  const int64_t row = team_row<Team>();
  if (row >= nrows) return;  // only whole warps of the last warp-team block; no barrier follows
  const int nc = (D + kChunk - 1) / kChunk;
  const float inv_d = 1.0f / float(D);
  const Row<Team, kSlots, kVec> xr(x, row, D);

  float s1[1] = {0.0f};
  for_chunks<Team, kSlots>(nc, [&](int k, int c) {
    float v[kChunk];
    xr.get(k, c, v);  // elements past D read as 0
    ROWS_UNROLL
    for (int e = 0; e < kChunk; ++e) s1[0] += v[e];
  });
  Team::reduce(s1, SumOp{});
  const float m0 = s1[0] * inv_d;

  float s2[2] = {0.0f, 0.0f};
  for_chunks<Team, kSlots>(nc, [&](int k, int c) {
    float v[kChunk];
    xr.get(k, c, v);
    const int n = D - c * kChunk;
    ROWS_UNROLL
    for (int e = 0; e < kChunk; ++e) {
      const float d = e < n ? v[e] - m0 : 0.0f;
      s2[0] += d;
      s2[1] += d * d;
    }
  });
  Team::reduce(s2, SumOp{});
  const float corr = s2[0] * inv_d;
  const float var = fmaxf(s2[1] * inv_d - corr * corr, 0.0f);
  const float rs = rsqrtf(var + eps);

  const int64_t yo = y.rows.offset(row);
  for_chunks<Team, kSlots>(nc, [&](int k, int c) {
    float v[kChunk], wv[kChunk], bv[kChunk];
    xr.get(k, c, v);
    load_param<kVec>(w, c, D, 1.0f, wv);
    load_param<kVec>(b, c, D, 0.0f, bv);
    ROWS_UNROLL
    for (int e = 0; e < kChunk; ++e) v[e] = ((v[e] - m0) - corr) * rs * wv[e] + bv[e];
    store_chunk<kVec>(y, yo, c, D, v);
  });
  if (Team::rank() == 0) {
    mean[row] = m0 + corr;
    rstd[row] = rs;
  }
}

template <class Team, int kSlots, bool kVec>
__global__ void __launch_bounds__(Team::kMaxThreads, Team::kMinBlocks)
    layernorm_backward_kernel(In g, In x, In w, In mean, In rstd, Out dx, float* dw_part,
                              float* db_part, int64_t nrows, int D, int64_t rows_per_part) {
  const int nc = (D + kChunk - 1) / kChunk;
  const float inv_d = 1.0f / float(D);
  const int64_t r0 = int64_t(blockIdx.x) * rows_per_part;
  const int64_t r1 = r0 + rows_per_part < nrows ? r0 + rows_per_part : nrows;
  float* const pw = dw_part + int64_t(blockIdx.x) * D;
  float* const pb = db_part + int64_t(blockIdx.x) * D;

  // Each thread's share of dweight (q = 0) and dbias (q = 1) over the block's rows, for the
  // columns it owns. Warp teams: shared memory [warp][q][e][c], combined in warp order at the
  // end. Block teams (rows > 1024): the block's own part rows in global memory (L2), every column
  // owned by one thread.
  constexpr int kTeams = Team::kBlock ? 1 : kWarpThreads / 32;
  constexpr int kCols = Team::kBlock ? 1 : 32 * kWarpSlots;
  SHARED(float, wacc, [kTeams][2][kChunk][kCols]);
  auto acc = [&](int q, int c, int e) -> float& {
    if constexpr (Team::kBlock) return (q == 0 ? pw : pb)[c * kChunk + e];
    else return wacc[Team::index()][q][e][c];
  };
  for_chunks<Team, kSlots>(nc, [&](int, int c) {
    ROWS_UNROLL
    for (int e = 0; e < kChunk; ++e)
      if (!Team::kBlock || c * kChunk + e < D) acc(0, c, e) = acc(1, c, e) = 0.0f;
  });

  ROWS_NO_UNROLL  // one row's registers at a time
  for (int64_t row = r0 + Team::index(); row < r1; row += Team::count()) {
    const Row<Team, kSlots, kVec> xr(x, row, D), gr(g, row, D);
    const float mu0 = load1(mean, mean.rows.offset(row));
    const float rs = load1(rstd, rstd.rows.offset(row));
    float s[3] = {0.0f, 0.0f, 0.0f};  // Σ(x - mu0), Σ g·w, Σ g·w·(x - mu0)
    for_chunks<Team, kSlots>(nc, [&](int k, int c) {
      float xv[kChunk], gv[kChunk], wv[kChunk];
      xr.get(k, c, xv);
      gr.get(k, c, gv);
      load_param<kVec>(w, c, D, 1.0f, wv);
      const int n = D - c * kChunk;
      ROWS_UNROLL
      for (int e = 0; e < kChunk; ++e) {
        const float d = e < n ? xv[e] - mu0 : 0.0f;
        const float gw = gv[e] * wv[e];  // 0 past D
        s[0] += d;
        s[1] += gw;
        s[2] += gw * d;
      }
    });
    Team::reduce(s, SumOp{});
    const float corr = s[0] * inv_d, m1 = s[1] * inv_d;
    const float m2 = rs * (s[2] - corr * s[1]) * inv_d;
    const int64_t dxo = dx.rows.offset(row);
    for_chunks<Team, kSlots>(nc, [&](int k, int c) {
      float xv[kChunk], gv[kChunk], wv[kChunk], o[kChunk];
      xr.get(k, c, xv);
      gr.get(k, c, gv);
      load_param<kVec>(w, c, D, 1.0f, wv);
      const int n = D - c * kChunk;
      ROWS_UNROLL
      for (int e = 0; e < kChunk; ++e) {
        const float xh = ((xv[e] - mu0) - corr) * rs;
        o[e] = rs * (gv[e] * wv[e] - m1 - xh * m2);
        if (!Team::kBlock || e < n) {
          acc(0, c, e) += gv[e] * xh;
          acc(1, c, e) += gv[e];
        }
      }
      store_chunk<kVec>(dx, dxo, c, D, o);
    });
  }

  if constexpr (!Team::kBlock) {
    __syncthreads();
    for (int j = int(threadIdx.x); j < D; j += int(blockDim.x)) {
      const int c = j / kChunk, e = j % kChunk;
      float sw = 0.0f, sb = 0.0f;
      for (int t = 0; t < kTeams; ++t) {  // fixed order: deterministic
        sw += wacc[t][0][e][c];
        sb += wacc[t][1][e][c];
      }
      pw[j] = sw;
      pb[j] = sb;
    }
  }
}

Shape row_shape(const Tensor& x) {
  Shape s = x.shape();
  s.erase(s.size() - 1);
  return s;
}

void check_input(const char* op, const Tensor& x) {
  engine::check_defined(x, op, "x");
  check_on_device(x, op, "x");
  check_gpu_dtype(x, op, "x");
  ENGINE_CHECK(x.dim() >= 1 && x.size(-1) > 0, op,
               ": expected at least 1-D input with a non-empty last dim, got ", x.describe());
  ENGINE_CHECK(x.size(-1) <= INT_MAX, op, ": rows of ", x.size(-1), " elements are too wide");
}

void check_param(const char* op, const char* name, const Tensor& p, const Tensor& x) {
  if (!p.defined()) return;
  check_on_device(p, op, name);
  ENGINE_CHECK(p.dim() == 1 && p.size(0) == x.size(-1), op, ": ", name, " ", p.describe(),
               " does not match the last dim of ", x.describe());
  check_gpu_dtype(p, op, name);
}

}  // namespace

LayerNormOut layernorm(const Tensor& x_in, const Tensor& weight, const Tensor& bias, double eps) {
  const char* op = "layernorm";
  check_input(op, x_in);
  const Tensor x = representable(x_in, x_in.dim() - 1);
  check_param(op, "weight", weight, x);
  check_param(op, "bias", bias, x);
  const engine::Device dev = x.device();
  const int64_t D = x.size(-1), nrows = x.numel() / D;
  LayerNormOut out{Tensor::empty(x.shape(), x.dtype(), dev),
                   Tensor::empty(row_shape(x), DType::f32, dev),
                   Tensor::empty(row_shape(x), DType::f32, dev)};
  if (nrows == 0) return out;
  const int ax = x.dim() - 1;
  const Plan p = plan(D, vec_ok(x, ax) && vec_ok(out.y, ax) && vec_ok(weight, 0) && vec_ok(bias, 0));
  dispatch(p, [&](auto team, auto slots, auto vec) {
    using Team = decltype(team);
    constexpr int kSlots = decltype(slots)::value;
    constexpr bool kVec = decltype(vec)::value;
    LAUNCH((layernorm_forward_kernel<Team, kSlots, kVec>), dim3(unsigned(p.blocks(nrows))), dim3(p.threads), 0,
           rows::stream())(in_view(x, ax), in_view(weight, 0), in_view(bias, 0), out_view(out.y, ax),
                           out.mean.data<float>(), out.rstd.data<float>(), nrows, int(D), float(eps));
    CHECK_LAUNCH("layernorm_forward_kernel");
  });
  return out;
}

LayerNormGrads layernorm_backward(const Tensor& g_in, const Tensor& x_in, const Tensor& weight,
                                  const Tensor& mean_in, const Tensor& rstd_in, bool has_bias) {
  const char* op = "layernorm_backward";
  check_input(op, x_in);
  engine::check_defined(g_in, op, "g");
  check_on_device(g_in, op, "g");
  check_gpu_dtype(g_in, op, "g");
  engine::check_same_shape(g_in, x_in, op);
  const Shape rs = row_shape(x_in);
  for (const Tensor* t : {&mean_in, &rstd_in}) {
    const char* name = t == &mean_in ? "mean" : "rstd";
    engine::check_defined(*t, op, name);
    check_on_device(*t, op, name);
    check_gpu_dtype(*t, op, name);
    ENGINE_CHECK(t->shape() == rs, op, ": saved statistics ", t->describe(),
                 " do not match the rows of ", x_in.describe());
  }
  check_param(op, "weight", weight, x_in);
  const int ax = x_in.dim() - 1;
  const Tensor x = representable(x_in, ax), g = representable(g_in, ax);
  const Tensor mean = representable(mean_in, -1), rstd = representable(rstd_in, -1);
  const engine::Device dev = x.device();
  const int64_t D = x.size(-1), nrows = x.numel() / D;

  LayerNormGrads out;
  out.dx = Tensor::empty(x.shape(), x.dtype(), dev);
  const Plan p = plan(D, vec_ok(x, ax) && vec_ok(g, ax) && vec_ok(weight, 0) && vec_ok(out.dx, ax));

  // Fixed row chunks (a function of the shape only, so results are reproducible): at most
  // kMaxParts partial sums, and at least 4 rows per team so that the parts (2·D floats each,
  // written and read once) stay a small fraction of the traffic.
  constexpr int64_t kMaxParts = 512;  // 2048 warps: ~16 per SM on an H100
  const int64_t min_rows = 4 * int64_t(p.rows_per_block);
  const int64_t want = std::min<int64_t>((nrows + min_rows - 1) / min_rows, kMaxParts);
  const int64_t per_part = want == 0 ? 1 : (nrows + want - 1) / want;
  const int64_t nparts = (nrows + per_part - 1) / per_part;

  // Both partial sums are always formed (the kernel stays branch-free); only the requested
  // ones are reduced.
  Tensor dw_part = Tensor::empty({nparts, D}, DType::f32, dev);
  Tensor db_part = Tensor::empty({nparts, D}, DType::f32, dev);
  float* pw = dw_part.data<float>();
  float* pb = db_part.data<float>();
  if (nparts > 0) {
    dispatch(p, [&](auto team, auto slots, auto vec) {
      using Team = decltype(team);
      constexpr int kSlots = decltype(slots)::value;
      constexpr bool kVec = decltype(vec)::value;
      LAUNCH((layernorm_backward_kernel<Team, kSlots, kVec>), dim3(unsigned(nparts)), dim3(p.threads), 0,
             rows::stream())(in_view(g, ax), in_view(x, ax), in_view(weight, 0), in_view(mean, -1),
                             in_view(rstd, -1), out_view(out.dx, ax), pw, pb, nrows, int(D), per_part);
      CHECK_LAUNCH("layernorm_backward_kernel");
    });
  }
  if (weight.defined()) {
    out.dweight = Tensor::empty({D}, DType::f32, dev);
    launch_column_sum(pw, nparts, int(D), out.dweight.data<float>());
  }
  if (has_bias) {
    out.dbias = Tensor::empty({D}, DType::f32, dev);
    launch_column_sum(pb, nparts, int(D), out.dbias.data<float>());
  }
  return out;
}

}  // namespace kernels::cuda
