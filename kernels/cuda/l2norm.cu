// L2 normalisation on the GPU (same contract as kernels::cpu::l2_normalize, see
// kernels/l2norm.h): y = x · inv_norm, inv_norm = 1 / sqrt(Σx² + eps); backward
// dx = inv_norm · (g - y · Σ g·y). f32 or bf16 in and out, f32 sums and inv_norm.
//
// Design (H100): the row machinery of kernels/cuda/rows.cuh. Along the last axis (IMP's
// embeddings, D = 256..1024) one warp per row with the row cached in registers: one 16-byte-load
// pass for Σx², one pass writing y, so DRAM traffic is read x + write y (8 B/element f32, 4 B
// bf16) plus 4 B per row; ~2 FLOP/element. Backward reads g and y once (cached) and writes dx:
// 12 B/element f32. Both are memory-bound at ≤ 0.3 FLOP/byte; expected ≥ 80% of 3.35 TB/s for
// more than a few thousand rows (an embedding batch of 4096 × 512 moves 16 MB: ~6 µs, where the
// launch latency dominates). Other axes run the same kernels with strided element access
// (correct, uncoalesced: the models only normalise the last axis).
#include "kernels/cuda/rows.cuh"
#include "kernels/l2norm.h"

namespace kernels::cuda {
namespace {

using namespace rows;

template <class Team, int kSlots, bool kVec>
__global__ void __launch_bounds__(Team::kMaxThreads, Team::kMinBlocks)
    l2norm_forward_kernel(In x, Out y, float* inv_norm, int64_t nrows, int D, float eps) {
  const int64_t row = team_row<Team>();
  if (row >= nrows) return;  // only whole warps of the last warp-team block; no barrier follows
  const int nc = (D + kChunk - 1) / kChunk;
  const Row<Team, kSlots, kVec> xr(x, row, D);
  float s[1] = {0.0f};
  for_chunks<Team, kSlots>(nc, [&](int k, int c) {
    float v[kChunk];
    xr.get(k, c, v);  // 0 past D
    ROWS_UNROLL
    for (int e = 0; e < kChunk; ++e) s[0] += v[e] * v[e];
  });
  Team::reduce(s, SumOp{});
  const float inv = rsqrtf(s[0] + eps);
  const int64_t yo = y.rows.offset(row);
  for_chunks<Team, kSlots>(nc, [&](int k, int c) {
    float v[kChunk];
    xr.get(k, c, v);
    ROWS_UNROLL
    for (int e = 0; e < kChunk; ++e) v[e] *= inv;
    store_chunk<kVec>(y, yo, c, D, v);
  });
  if (Team::rank() == 0) inv_norm[row] = inv;
}

template <class Team, int kSlots, bool kVec>
__global__ void __launch_bounds__(Team::kMaxThreads, Team::kMinBlocks)
    l2norm_backward_kernel(In g, In y, In inv_norm, Out dx, int64_t nrows, int D) {
  const int64_t row = team_row<Team>();
  if (row >= nrows) return;
  const int nc = (D + kChunk - 1) / kChunk;
  const Row<Team, kSlots, kVec> gr(g, row, D), yr(y, row, D);
  float s[1] = {0.0f};
  for_chunks<Team, kSlots>(nc, [&](int k, int c) {
    float gv[kChunk], yv[kChunk];
    gr.get(k, c, gv);
    yr.get(k, c, yv);
    ROWS_UNROLL
    for (int e = 0; e < kChunk; ++e) s[0] += gv[e] * yv[e];
  });
  Team::reduce(s, SumOp{});
  const float inv = load1(inv_norm, inv_norm.rows.offset(row));
  const int64_t dxo = dx.rows.offset(row);
  for_chunks<Team, kSlots>(nc, [&](int k, int c) {
    float gv[kChunk], yv[kChunk];
    gr.get(k, c, gv);
    yr.get(k, c, yv);
    ROWS_UNROLL
    for (int e = 0; e < kChunk; ++e) gv[e] = inv * (gv[e] - yv[e] * s[0]);
    store_chunk<kVec>(dx, dxo, c, D, gv);
  });
}

void check_input(const char* op, const char* name, const Tensor& t) {
  engine::check_defined(t, op, name);
  check_on_device(t, op, name);
  check_gpu_dtype(t, op, name);
  ENGINE_CHECK(t.dim() >= 1, op, ": expected at least 1-D input, got ", t.describe());
}

Shape without(const Shape& s, int axis) {
  Shape r = s;
  r.erase(axis);
  return r;
}

}  // namespace

L2NormOut l2_normalize(const Tensor& x_in, double eps, int axis_in) {
  const char* op = "l2_normalize";
  check_input(op, "x", x_in);
  ENGINE_CHECK(eps >= 0, "l2_normalize: eps must be >= 0, got ", eps);
  const AxisRows a = axis_rows(x_in, axis_in, op);
  const Tensor x = representable(x_in, a.axis);
  L2NormOut out{Tensor::empty(x.shape(), x.dtype(), x.device()),
                Tensor::empty(without(x.shape(), a.axis), DType::f32, x.device())};
  if (a.nrows == 0) return out;
  const Plan p = plan(a.D, vec_ok(x, a.axis) && vec_ok(out.y, a.axis));
  dispatch(p, [&](auto team, auto slots, auto vec) {
    using Team = decltype(team);
    constexpr int kSlots = decltype(slots)::value;
    constexpr bool kVec = decltype(vec)::value;
    LAUNCH((l2norm_forward_kernel<Team, kSlots, kVec>), dim3(unsigned(p.blocks(a.nrows))), dim3(p.threads), 0,
           rows::stream())(in_view(x, a.axis), out_view(out.y, a.axis), out.inv_norm.data<float>(),
                           a.nrows, int(a.D), float(eps));
    CHECK_LAUNCH("l2norm_forward_kernel");
  });
  return out;
}

Tensor l2_normalize_backward(const Tensor& g_in, const Tensor& y_in, const Tensor& inv_in,
                             int axis_in) {
  const char* op = "l2_normalize_backward";
  check_input(op, "y", y_in);
  check_input(op, "g", g_in);
  engine::check_defined(inv_in, op, "inv_norm");
  check_on_device(inv_in, op, "inv_norm");
  check_gpu_dtype(inv_in, op, "inv_norm");
  engine::check_same_shape(g_in, y_in, op);
  const AxisRows a = axis_rows(y_in, axis_in, op);
  ENGINE_CHECK(inv_in.shape() == without(y_in.shape(), a.axis), op, ": inv_norm ", inv_in.describe(),
               " does not match ", y_in.describe(), " reduced over axis ", a.axis);
  const Tensor g = representable(g_in, a.axis), y = representable(y_in, a.axis);
  const Tensor inv = representable(inv_in, -1);
  Tensor dx = Tensor::empty(y.shape(), y.dtype(), y.device());
  if (a.nrows == 0) return dx;
  const Plan p = plan(a.D, vec_ok(g, a.axis) && vec_ok(y, a.axis) && vec_ok(dx, a.axis));
  dispatch(p, [&](auto team, auto slots, auto vec) {
    using Team = decltype(team);
    constexpr int kSlots = decltype(slots)::value;
    constexpr bool kVec = decltype(vec)::value;
    LAUNCH((l2norm_backward_kernel<Team, kSlots, kVec>), dim3(unsigned(p.blocks(a.nrows))), dim3(p.threads), 0,
           rows::stream())(in_view(g, a.axis), in_view(y, a.axis), in_view(inv, -1),
                           out_view(dx, a.axis), a.nrows, int(a.D));
    CHECK_LAUNCH("l2norm_backward_kernel");
  });
  return dx;
}

}  // namespace kernels::cuda
