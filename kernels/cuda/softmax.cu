// softmax / log_softmax and their backward kernels on the GPU (same contract as
// kernels::cpu::softmax etc., see kernels/softmax.h). f32 or bf16 in and out, f32 statistics.
// Any axis: the last one is the fast case; other axes use the same kernels with strided element
// access (correct, uncoalesced; no transpose copy is made).
//
// Forward: max (NaN-skipping, like the CPU), shift c = max when finite else 0 (a row of -inf
// then gives 0/0 = NaN, +inf and NaN flow through, exactly as on the CPU), s = Σ exp(x - c),
// y = exp(x - c) / s or x - (c + log s). Backward from y: softmax dx = y (g - Σ g·y),
// log_softmax dx = g - exp(y) Σ g.
//
// Design (H100): kernels/cuda/rows.cuh. For rows up to 1024 (router logits, attention-size rows,
// class logits) one warp per row with the row in registers: three passes over registers, one
// DRAM read of x and one write of y: 8 B/element f32, 4 B bf16. exp is recomputed in the write
// pass rather than kept (2 expf per element ≈ 2 × ~4 instructions: far below the issue rate
// that 3.35 TB/s at 4-8 B/element needs, ~0.5-1 TFLOP/s). Expected ≥ 80% of the DRAM roofline for
// more than a few thousand rows. Backward: read g and y once, write dx (12 B/element f32).
#include "kernels/cuda/rows.cuh"
#include "kernels/softmax.h"

namespace kernels::cuda {
namespace {

using namespace rows;

template <class Team, int kSlots, bool kVec, bool kLog>
__global__ void __launch_bounds__(Team::kMaxThreads, Team::kMinBlocks)
    softmax_forward_kernel(In x, Out y, int64_t nrows, int D) {
  const int64_t row = team_row<Team>();
  if (row >= nrows) return;  // only whole warps of the last warp-team block; no barrier follows
  const int nc = (D + kChunk - 1) / kChunk;
  const Row<Team, kSlots, kVec> xr(x, row, D);
  float m[1] = {-CUDART_INF_F};
  for_chunks<Team, kSlots>(nc, [&](int k, int c) {
    float v[kChunk];
    xr.get(k, c, v);
    const int n = D - c * kChunk;
    ROWS_UNROLL
    for (int e = 0; e < kChunk; ++e)
      if (e < n) m[0] = fmaxf(m[0], v[e]);
  });
  Team::reduce(m, MaxOp{});
  const float shift = m[0] > -CUDART_INF_F && m[0] < CUDART_INF_F ? m[0] : 0.0f;
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
  const float inv = 1.0f / s[0];
  const float lse = shift + logf(s[0]);
  const int64_t yo = y.rows.offset(row);
  for_chunks<Team, kSlots>(nc, [&](int k, int c) {
    float v[kChunk];
    xr.get(k, c, v);
    ROWS_UNROLL
    for (int e = 0; e < kChunk; ++e) v[e] = kLog ? v[e] - lse : expf(v[e] - shift) * inv;
    store_chunk<kVec>(y, yo, c, D, v);
  });
}

template <class Team, int kSlots, bool kVec, bool kLog>
__global__ void __launch_bounds__(Team::kMaxThreads, Team::kMinBlocks)
    softmax_backward_kernel(In g, In y, Out dx, int64_t nrows, int D) {
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
    for (int e = 0; e < kChunk; ++e) s[0] += kLog ? gv[e] : gv[e] * yv[e];  // 0 past D
  });
  Team::reduce(s, SumOp{});
  const int64_t dxo = dx.rows.offset(row);
  for_chunks<Team, kSlots>(nc, [&](int k, int c) {
    float gv[kChunk], yv[kChunk];
    gr.get(k, c, gv);
    yr.get(k, c, yv);
    ROWS_UNROLL
    for (int e = 0; e < kChunk; ++e)
      gv[e] = kLog ? gv[e] - expf(yv[e]) * s[0] : yv[e] * (gv[e] - s[0]);
    store_chunk<kVec>(dx, dxo, c, D, gv);
  });
}

void check_input(const char* op, const char* name, const Tensor& t) {
  engine::check_defined(t, op, name);
  check_on_device(t, op, name);
  check_gpu_dtype(t, op, name);
}

template <bool kLog>
Tensor forward(const Tensor& x_in, int axis, const char* op) {
  check_input(op, "x", x_in);
  const AxisRows a = axis_rows(x_in, axis, op);
  const Tensor x = representable(x_in, a.axis);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() == 0) return y;
  const Plan p = plan(a.D, vec_ok(x, a.axis) && vec_ok(y, a.axis));
  dispatch(p, [&](auto team, auto slots, auto vec) {
    using Team = decltype(team);
    constexpr int kSlots = decltype(slots)::value;
    constexpr bool kVec = decltype(vec)::value;
    LAUNCH((softmax_forward_kernel<Team, kSlots, kVec, kLog>), dim3(unsigned(p.blocks(a.nrows))),
           dim3(p.threads), 0, rows::stream())(in_view(x, a.axis), out_view(y, a.axis), a.nrows, int(a.D));
    CHECK_LAUNCH("softmax_forward_kernel");
  });
  return y;
}

template <bool kLog>
Tensor backward(const Tensor& g_in, const Tensor& y_in, int axis, const char* op) {
  check_input(op, "g", g_in);
  check_input(op, "y", y_in);
  engine::check_same_shape(g_in, y_in, op);
  engine::check_same_dtype(g_in, y_in, op);
  const AxisRows a = axis_rows(g_in, axis, op);
  const Tensor g = representable(g_in, a.axis), y = representable(y_in, a.axis);
  Tensor dx = Tensor::empty(g.shape(), g.dtype(), g.device());
  if (g.numel() == 0) return dx;
  const Plan p = plan(a.D, vec_ok(g, a.axis) && vec_ok(y, a.axis) && vec_ok(dx, a.axis));
  dispatch(p, [&](auto team, auto slots, auto vec) {
    using Team = decltype(team);
    constexpr int kSlots = decltype(slots)::value;
    constexpr bool kVec = decltype(vec)::value;
    LAUNCH((softmax_backward_kernel<Team, kSlots, kVec, kLog>), dim3(unsigned(p.blocks(a.nrows))),
           dim3(p.threads), 0, rows::stream())(in_view(g, a.axis), in_view(y, a.axis),
                                               out_view(dx, a.axis), a.nrows, int(a.D));
    CHECK_LAUNCH("softmax_backward_kernel");
  });
  return dx;
}

}  // namespace

Tensor softmax(const Tensor& x, int axis) { return forward<false>(x, axis, "softmax"); }
Tensor log_softmax(const Tensor& x, int axis) { return forward<true>(x, axis, "log_softmax"); }
Tensor softmax_backward(const Tensor& g, const Tensor& y, int axis) {
  return backward<false>(g, y, axis, "softmax_backward");
}
Tensor log_softmax_backward(const Tensor& g, const Tensor& y, int axis) {
  return backward<true>(g, y, axis, "log_softmax_backward");
}

}  // namespace kernels::cuda
