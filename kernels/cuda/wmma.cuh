// Tensor cores for the handwritten kernels: the subset of CUDA's warp matrix API (nvcuda::wmma)
// that the kernels use, under the same names in namespace kernels::cuda::wmma.
//
//   bf16 × bf16 -> fp32, one 16×16×16 tile per warp:
//     fragment<matrix_a, 16, 16, 16, __nv_bfloat16, row_major | col_major>   A (16×16, M×K)
//     fragment<matrix_b, 16, 16, 16, __nv_bfloat16, row_major | col_major>   B (16×16, K×N)
//     fragment<accumulator, 16, 16, 16, float>                               C, D (16×16, M×N)
//     fill_fragment(c, v)                       every element of c = v
//     load_matrix_sync(a, ptr, ldm)             A or B from memory (layout from the type)
//     load_matrix_sync(c, ptr, ldm, mem_row_major | mem_col_major)
//     mma_sync(d, a, b, c)                      d = a·b + c (fp32 accumulation; d may be c)
//     store_matrix_sync(ptr, c, ldm, mem_row_major | mem_col_major)
//
// Under nvcc these ARE nvcuda::wmma (using-declarations, no extra code); under the sim
// (g++ -DENGINE_SIM) they are the CPU bodies below, which compute the same warp-collective result.
//
// Rules (the device's, enforced or mimicked by the sim):
// - Every call is warp-collective: all 32 lanes of the warp make it together, with the same
//   arguments (no divergence around it).
// - Code uses only the functions above on fragments. It NEVER reads or writes fragment elements
//   (no `.x[i]`, no `num_elements`): which lane holds which element is unspecified on the device.
//   The sim fragments have no such members, so the sim build rejects element access at compile
//   time, and the sim's accumulator gives each lane a different share than an intuitive layout
//   would, so code that guesses the mapping fails its tests.
// - ptr must be 256-bit (32-byte) aligned; ldm is in elements and a multiple of 8 for bf16 and
//   of 4 for float (16 bytes). The sim checks both (a violation fails the launch).
// - Memory ordering between lanes is the kernel's business: a tile stored by one warp (or lane)
//   and read by another needs __syncwarp / __syncthreads in between, as on the device.
//
// The sim: a matrix_a / matrix_b fragment holds the whole 16×16 tile in every lane (each lane
// loads it in full, which is cheap); an accumulator holds 256 floats too, but each lane owns only
// the elements e with e % 32 == lane (row-major index e = row·16 + col): mma_sync computes just
// those (so a warp does the work of one tile, not 32), and store_matrix_sync writes just those.
// All 32 lanes' stores together write the tile; a lane that skips a store leaves its elements
// unwritten (NaN in fresh memory, which the tests catch). Products of bf16 values are exact in
// fp32, and the sim accumulates them in k order in fp32; the tensor cores may add in another
// order, so results agree to fp32 rounding, not bit for bit.
#pragma once
#include "kernels/cuda/compat.h"

#if defined(__CUDACC__)
#include <mma.h>

namespace kernels::cuda::wmma {
using nvcuda::wmma::accumulator;
using nvcuda::wmma::col_major;
using nvcuda::wmma::fill_fragment;
using nvcuda::wmma::fragment;
using nvcuda::wmma::layout_t;
using nvcuda::wmma::load_matrix_sync;
using nvcuda::wmma::matrix_a;
using nvcuda::wmma::matrix_b;
using nvcuda::wmma::mem_col_major;
using nvcuda::wmma::mem_row_major;
using nvcuda::wmma::mma_sync;
using nvcuda::wmma::row_major;
using nvcuda::wmma::store_matrix_sync;
}  // namespace kernels::cuda::wmma

#else
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace kernels::cuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace detail {

inline int lane_id() {
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  return int(t % 32u);
}

// The device's requirements on every load/store: 256-bit aligned pointer, 16-byte multiple ldm.
inline void check_access(const void* p, unsigned ldm, unsigned elem_bytes, const char* fn) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || (ldm * elem_bytes) % 16 != 0)
    throw std::runtime_error(std::string("wmma::") + fn +
                             ": pointer not 32-byte aligned or ldm not a multiple of 16 bytes");
}

template <class Layout>
constexpr bool is_row_major() {
  static_assert(std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>,
                "wmma: layout must be row_major or col_major");
  return std::is_same_v<Layout, row_major>;
}

}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
  static_assert(M == 16 && N == 16 && K == 16, "wmma (sim): only the 16x16x16 shape is provided");
  static_assert(std::is_same_v<Use, matrix_a> || std::is_same_v<Use, matrix_b> ||
                    std::is_same_v<Use, accumulator>,
                "wmma: fragment use must be matrix_a, matrix_b or accumulator");
  static_assert(std::is_same_v<Use, accumulator> ? std::is_same_v<T, float>
                                                 : std::is_same_v<T, __nv_bfloat16>,
                "wmma (sim): provides bf16 matrix_a/matrix_b and float accumulators");
  static_assert(std::is_same_v<Use, accumulator> == std::is_same_v<Layout, void>,
                "wmma: matrix_a/matrix_b take a layout, accumulators do not");

  // Row-major 16×16 (A: M×K, B: K×N, C: M×N). Private: element access is not part of the API.
  float v_[256];

  template <class L>
  friend void load_matrix_sync(fragment<matrix_a, 16, 16, 16, __nv_bfloat16, L>&,
                               const __nv_bfloat16*, unsigned);
  template <class L>
  friend void load_matrix_sync(fragment<matrix_b, 16, 16, 16, __nv_bfloat16, L>&,
                               const __nv_bfloat16*, unsigned);
  friend void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>&, const float*, unsigned,
                               layout_t);
  friend void store_matrix_sync(float*, const fragment<accumulator, 16, 16, 16, float>&, unsigned,
                                layout_t);
  friend void fill_fragment(fragment<accumulator, 16, 16, 16, float>&, float);
  template <class LA, class LB>
  friend void mma_sync(fragment<accumulator, 16, 16, 16, float>&,
                       const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>&,
                       const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>&,
                       const fragment<accumulator, 16, 16, 16, float>&);
};

using AccFragment = fragment<accumulator, 16, 16, 16, float>;

// A: element (m, k) at p[m·ldm + k] (row_major) or p[k·ldm + m] (col_major).
template <class L>
void load_matrix_sync(fragment<matrix_a, 16, 16, 16, __nv_bfloat16, L>& f, const __nv_bfloat16* p,
                      unsigned ldm) {
  detail::check_access(p, ldm, 2, "load_matrix_sync(matrix_a)");
  constexpr bool rm = detail::is_row_major<L>();
  for (int m = 0; m < 16; ++m)
    for (int k = 0; k < 16; ++k) f.v_[m * 16 + k] = float(rm ? p[m * ldm + k] : p[k * ldm + m]);
}

// B: element (k, n) at p[k·ldm + n] (row_major) or p[n·ldm + k] (col_major).
template <class L>
void load_matrix_sync(fragment<matrix_b, 16, 16, 16, __nv_bfloat16, L>& f, const __nv_bfloat16* p,
                      unsigned ldm) {
  detail::check_access(p, ldm, 2, "load_matrix_sync(matrix_b)");
  constexpr bool rm = detail::is_row_major<L>();
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 16; ++n) f.v_[k * 16 + n] = float(rm ? p[k * ldm + n] : p[n * ldm + k]);
}

inline void load_matrix_sync(AccFragment& f, const float* p, unsigned ldm, layout_t layout) {
  detail::check_access(p, ldm, 4, "load_matrix_sync(accumulator)");
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n)
      f.v_[m * 16 + n] = layout == mem_row_major ? p[m * ldm + n] : p[n * ldm + m];
}

inline void fill_fragment(AccFragment& f, float value) {
  for (float& v : f.v_) v = value;
}

// d = a·b + c for the elements this lane owns (e % 32 == lane); fp32 accumulation in k order.
template <class LA, class LB>
void mma_sync(AccFragment& d, const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
              const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b, const AccFragment& c) {
  const int lane = detail::lane_id();
  for (int e = lane; e < 256; e += 32) {
    const int m = e / 16, n = e % 16;
    float s = c.v_[e];
    for (int k = 0; k < 16; ++k) s += a.v_[m * 16 + k] * b.v_[k * 16 + n];
    d.v_[e] = s;
  }
}

// Writes the elements this lane owns; the warp's 32 lanes together write the whole tile.
inline void store_matrix_sync(float* p, const AccFragment& f, unsigned ldm, layout_t layout) {
  detail::check_access(p, ldm, 4, "store_matrix_sync");
  for (int e = detail::lane_id(); e < 256; e += 32) {
    const int m = e / 16, n = e % 16;
    (layout == mem_row_major ? p[m * ldm + n] : p[n * ldm + m]) = f.v_[e];
  }
}

}  // namespace kernels::cuda::wmma
#endif
