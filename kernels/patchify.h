// Patchify: cutting images and videos into flattened tubelets, the first step of the vision stems.
//
//   x [B, T, H, W, C] (channels last; an image is T = 1 with t = 1, and [B, H, W, C] is accepted as
//   that 1-frame video) -> [B, N, t*p*p*C] with N = (T/t)*(H/p)*(W/p).
//
// Patches are numbered in (time, row, column) order: patch n = (it*(H/p) + ih)*(W/p) + iw starts at
// frame it*t, row ih*p, column iw*p; its features are flattened as (dt, dy, dx, c), so
//   out[b, n, ((dt*p + dy)*p + dx)*C + c] = x[b, it*t + dt, ih*p + dy, iw*p + dx, c].
// T must be divisible by t and H, W by p. The op only moves elements (every dtype; bit-exact).
// unpatchify_backward is the inverse permutation: it takes the gradient of the patches back to
// x's original shape (4-D or 5-D).
//
// patch_coordinates(T, H, W, t, p): f32 [N, 3] CPU tensor, row n = the normalised start of patch n,
// (it*t/T, ih*p/H, iw*p/W), each in [0, 1): the coordinates that index the factorised positional
// tables (id = int(coord * buckets)) and that drop-token carries along with the kept tokens.
#pragma once
#include <string>

#include "kernels/backend.h"

namespace kernels {

namespace cpu {
Tensor patchify(const Tensor& x, int64_t t, int64_t p);
Tensor unpatchify_backward(const Tensor& g, const Shape& original_shape, int64_t t, int64_t p);
}  // namespace cpu

namespace ref {  // element by element from the definition above, through f64 (tests only)
Tensor patchify(const Tensor& x, int64_t t, int64_t p);
Tensor unpatchify_backward(const Tensor& g, const Shape& original_shape, int64_t t, int64_t p);
Tensor patch_coordinates(int64_t T, int64_t H, int64_t W, int64_t t, int64_t p);
}  // namespace ref

namespace cuda {  // kernels/cuda/patchify.cu
Tensor patchify(const Tensor& x, int64_t t, int64_t p);
Tensor unpatchify_backward(const Tensor& g, const Shape& original_shape, int64_t t, int64_t p);
}  // namespace cuda

// Shape bookkeeping shared by every backend (implemented in kernels/cpu/patchify.cpp).
struct PatchGeometry {
  int64_t B, T, H, W, C;  // the input as a 5-D video
  int64_t t, p;           // tubelet length and patch side
  int64_t nt, nh, nw;     // patches along time, rows, columns
  int64_t N() const { return nt * nh * nw; }
  int64_t P() const { return t * p * p * C; }  // features per patch
  Shape patches_shape() const { return {B, N(), P()}; }
};
// Checks a 4-D [B, H, W, C] or 5-D [B, T, H, W, C] shape against t and p (naming `op` and `what`,
// the input's description, in errors) and returns its geometry.
PatchGeometry patch_geometry(const Shape& x_shape, int64_t t, int64_t p, const char* op,
                             const std::string& what);

Tensor patch_coordinates(int64_t T, int64_t H, int64_t W, int64_t t, int64_t p);

inline Tensor patchify(const Tensor& x, int64_t t, int64_t p) {
  KERNEL_ROUTE(x.device(), patchify, x, t, p);
}
inline Tensor unpatchify_backward(const Tensor& g, const Shape& original_shape, int64_t t,
                                  int64_t p) {
  KERNEL_ROUTE(g.device(), unpatchify_backward, g, original_shape, t, p);
}

}  // namespace kernels
