// Tensor-core tiles for the attention kernels: 16×16×16 bf16 × bf16 → fp32 warp tiles.
//
// Under nvcc these are nvcuda::wmma fragments (HMMA on sm_80 and sm_90). Under the sim each
// operation has a CPU body that computes the same warp-collective result:
//   - an A or B fragment holds the whole 16×16 tile in every lane (each lane reads all of it from
//     memory, which the device also requires to be visible to the whole warp);
//   - an accumulator holds 8 fp32 elements per lane in the layout below, and mma/store/load touch
//     only the calling lane's elements, so a missing __syncwarp between a store and a read of
//     another lane's elements shows up as a read of unwritten (0xFF = NaN) memory.
// Pointers must be 32-byte aligned and leading dimensions multiples of 16 bytes, as WMMA requires;
// the sim traps otherwise.
//
// Accumulator layout. WMMA leaves the element ↔ (row, col) mapping unspecified; on sm_80 and sm_90
// an m16n16k16 fp32 accumulator is two m16n8k16 HMMA tiles side by side, i.e. with lane = 4g + t:
//   element i of the lane is (row, col) = (g + 8·((i >> 1) & 1), 2t + (i & 1) + 8·(i >> 2)).
// The attention kernels rely on it (a row's elements live in the 4 lanes of a quad, so row
// reductions are two shuffles), the sim implements exactly this layout, and acc_layout_matches()
// lets the host verify it once on the real device before the first launch.
//
// (This wrapper belongs to the attention kernels; the grouped matmul has its own in wmma.cuh.
// The two should be merged into one kernels/cuda/mma.cuh.)
#pragma once
#include <cstdint>

#include "kernels/cuda/compat.h"

#if defined(__CUDACC__)
#include <mma.h>
#endif

namespace kernels::cuda::attn_mma {

__host__ __device__ constexpr int acc_row(int lane, int i) { return (lane >> 2) + 8 * ((i >> 1) & 1); }
__host__ __device__ constexpr int acc_col(int lane, int i) { return 2 * (lane & 3) + (i & 1) + 8 * (i >> 2); }
constexpr int kAccElems = 8;

#if defined(__CUDACC__)

using FragA = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16,
                                     nvcuda::wmma::row_major>;
// B(k, n) at p[k·ld + n] (row-major) or at p[n·ld + k] (col-major, i.e. a row-major n×k tile
// used transposed).
using FragBRow = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __nv_bfloat16,
                                        nvcuda::wmma::row_major>;
using FragBCol = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __nv_bfloat16,
                                        nvcuda::wmma::col_major>;
using FragAcc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;

__device__ __forceinline__ void load(FragA& f, const __nv_bfloat16* p, unsigned ld) {
  nvcuda::wmma::load_matrix_sync(f, p, ld);
}
__device__ __forceinline__ void load(FragBRow& f, const __nv_bfloat16* p, unsigned ld) {
  nvcuda::wmma::load_matrix_sync(f, p, ld);
}
__device__ __forceinline__ void load(FragBCol& f, const __nv_bfloat16* p, unsigned ld) {
  nvcuda::wmma::load_matrix_sync(f, p, ld);
}
// Row-major fp32 tile into an accumulator (used by the layout probe).
__device__ __forceinline__ void load(FragAcc& f, const float* p, unsigned ld) {
  nvcuda::wmma::load_matrix_sync(f, p, ld, nvcuda::wmma::mem_row_major);
}
__device__ __forceinline__ void fill(FragAcc& f, float v) { nvcuda::wmma::fill_fragment(f, v); }
template <class FragB>
__device__ __forceinline__ void mma(FragAcc& d, const FragA& a, const FragB& b, const FragAcc& c) {
  nvcuda::wmma::mma_sync(d, a, b, c);
}

#else  // ENGINE_SIM

namespace detail {
inline int lane_id() {
  return int((threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31u);
}
inline void check_operand(const void* p, unsigned ld, unsigned elem_bytes) {
  if ((reinterpret_cast<uintptr_t>(p) & 31u) != 0 || (ld * elem_bytes) % 16u != 0) __trap();
}
}  // namespace detail

struct FragA {
  float v[16][16];  // v[row][k]
};
struct FragBRow {
  float v[16][16];  // v[k][n]
};
struct FragBCol {
  float v[16][16];  // v[k][n]
};
struct FragAcc {
  static constexpr int num_elements = kAccElems;
  float x[kAccElems];
};

inline void load(FragA& f, const __nv_bfloat16* p, unsigned ld) {
  detail::check_operand(p, ld, 2);
  for (int r = 0; r < 16; ++r)
    for (int k = 0; k < 16; ++k) f.v[r][k] = float(p[r * ld + k]);
}
inline void load(FragBRow& f, const __nv_bfloat16* p, unsigned ld) {
  detail::check_operand(p, ld, 2);
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 16; ++n) f.v[k][n] = float(p[k * ld + n]);
}
inline void load(FragBCol& f, const __nv_bfloat16* p, unsigned ld) {
  detail::check_operand(p, ld, 2);
  for (int n = 0; n < 16; ++n)
    for (int k = 0; k < 16; ++k) f.v[k][n] = float(p[n * ld + k]);
}
inline void load(FragAcc& f, const float* p, unsigned ld) {
  detail::check_operand(p, ld, 4);
  const int lane = detail::lane_id();
  for (int i = 0; i < kAccElems; ++i) f.x[i] = p[acc_row(lane, i) * ld + acc_col(lane, i)];
}
inline void fill(FragAcc& f, float v) {
  for (float& x : f.x) x = v;
}
// d = a·b + c for the calling lane's 8 elements; products of bf16 values are exact in fp32, the
// 16 of them are summed in fp32 and added to c.
template <class FragB>
inline void mma(FragAcc& d, const FragA& a, const FragB& b, const FragAcc& c) {
  const int lane = detail::lane_id();
  for (int i = 0; i < kAccElems; ++i) {
    const int r = acc_row(lane, i), n = acc_col(lane, i);
    float s = 0.0f;
    for (int k = 0; k < 16; ++k) s += a.v[r][k] * b.v[k][n];
    d.x[i] = c.x[i] + s;
  }
}

#endif

}  // namespace kernels::cuda::attn_mma
