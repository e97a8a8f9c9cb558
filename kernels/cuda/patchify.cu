// Patchify and its inverse on the GPU (kernels/patchify.h): a permutation copy between a video
// [B, T, H, W, C] (an image is T = 1) and its tubelets [B, N, t*p*p*C].
//
// Design (H100): pure data movement, 1 read + 1 write per element. Within a patch, each (dt, dy)
// row of p*C elements is contiguous on both sides, so the copy unit is the widest of 16/8/4/2
// bytes that divides that run, every stride and both base addresses (f32 RGB with p = 16: a
// 192-byte run of 12 x 16-byte units). Threads walk the patch side in order (fully coalesced
// there; runs of p*C*es bytes on the video side), grid-stride, 256 threads per block, 16 blocks
// per SM at most. The index decode costs 8 32-bit divisions per unit (~80 instructions per 16
// bytes), under the ~130 instructions per 16-byte unit the SMs can issue at 3.35 TB/s, so it
// should reach ~70-85% of bandwidth for 16-byte units (less for 2-byte bf16 runs of odd width,
// which are rare). Non-contiguous inputs (the channel or column stride not 1) fall back to one
// element per thread with full strides. No shared memory, no barriers, ~30 registers.
#include "kernels/patchify.h"

#include <algorithm>
#include <cstdint>
#include <sstream>

#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"

namespace kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 132 * 8;

struct PatchArgs {
  const void* src;
  void* dst;
  bool to_patches;  // src is the video (patchify) or the patches (the backward)
  unsigned N, nhw, nw, t, p, C;
  unsigned run;    // copy units per (dt, dy) row: p*C elements (merged) or 1 element
  unsigned upp;    // copy units per patch
  unsigned total;  // copy units in all
  int64_t vs[5];   // video strides [B, T, H, W, C], in copy units (vs[3], vs[4] unused if merged)
  int64_t ps[3];   // patch strides [B, N, feature], in copy units (ps[2] = 1 if merged)
};

// kMerged: the (dx, c) run is contiguous on both sides and moves as `run` units of U; otherwise
// U is one element and dx, c are decoded separately.
template <class U, bool kMerged>
__global__ void __launch_bounds__(kThreads) patch_move(PatchArgs a) {
  const unsigned stride = gridDim.x * blockDim.x;
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < a.total; i += stride) {
    const unsigned bn = i / a.upp, j = i % a.upp;
    const unsigned b = bn / a.N, n = bn % a.N;
    const unsigned it = n / a.nhw, ih = (n % a.nhw) / a.nw, iw = n % a.nw;
    const unsigned rows = j / a.run, k = j % a.run;  // (dt, dy) row and the unit within it
    const unsigned dt = rows / a.p, dy = rows % a.p;
    int64_t v = int64_t(b) * a.vs[0] + int64_t(it * a.t + dt) * a.vs[1] +
                int64_t(ih * a.p + dy) * a.vs[2];
    int64_t q = int64_t(b) * a.ps[0] + int64_t(n) * a.ps[1];
    if constexpr (kMerged) {
      v += int64_t(iw) * a.run + k;  // columns iw*p.. of C elements each: iw runs of units
      q += j;
    } else {
      const unsigned dx = k / a.C, c = k % a.C;
      v += int64_t(iw * a.p + dx) * a.vs[3] + int64_t(c) * a.vs[4];
      q += int64_t(j) * a.ps[2];
    }
    const U* s = static_cast<const U*>(a.src);
    U* d = static_cast<U*>(a.dst);
    if (a.to_patches) d[q] = s[v];
    else d[v] = s[q];
  }
}

cudaStream_t cu_stream() { return static_cast<cudaStream_t>(stream()); }

void check_on_device(const Tensor& t, const char* op, const char* arg) {
  engine::check_defined(t, op, arg);
  ENGINE_CHECK(t.device() == device(), op, ": '", arg, "' ", t.describe(),
               " is not on the CUDA device ", device());
}

// Video strides as 5-D [B, T, H, W, C] (a 4-D image has T = 1).
void video_strides(const Tensor& x, int64_t (&s)[5]) {
  if (x.dim() == 5) {
    for (int d = 0; d < 5; ++d) s[d] = x.stride(d);
  } else {
    s[0] = x.stride(0), s[1] = 0, s[2] = x.stride(1), s[3] = x.stride(2), s[4] = x.stride(3);
  }
}

// Moves every element between `video` (strides vs, elements) and `patches` (strides ps).
void launch_move(const PatchGeometry& g, size_t es, const void* src, void* dst, bool to_patches,
                 const int64_t (&vs)[5], const int64_t (&ps)[3], const void* video,
                 const void* patches, const char* op) {
  const int64_t elems = g.B * g.N() * g.P();
  const int64_t sizes[5] = {g.B, g.T, g.H, g.W, g.C};
  // The (dx, c) run is contiguous in both when c and dx step by 1 and C elements, and the
  // features by 1 element.
  const bool merged =
      (g.C == 1 || vs[4] == 1) && (g.p == 1 || vs[3] == g.C) && (g.P() == 1 || ps[2] == 1);
  int64_t unit = int64_t(es);
  if (merged) {
    const int64_t run_bytes = g.p * g.C * int64_t(es);
    for (int64_t u : {16, 8, 4, 2}) {
      if (u < int64_t(es)) break;
      bool ok = run_bytes % u == 0 && reinterpret_cast<uintptr_t>(video) % u == 0 &&
                reinterpret_cast<uintptr_t>(patches) % u == 0;
      for (int d = 0; d < 3; ++d) ok = ok && (sizes[d] <= 1 || (vs[d] * int64_t(es)) % u == 0);
      for (int d = 0; d < 2; ++d) ok = ok && (ps[d] * int64_t(es)) % u == 0;
      if (ok) {
        unit = u;
        break;
      }
    }
  }
  const int64_t per = unit / int64_t(es);  // elements per unit
  const int64_t total = elems / per;
  ENGINE_CHECK(total < (int64_t(1) << 32), op, ": ", elems,
               " elements are more than one launch of the CUDA kernel moves (2^32 units)");
  PatchArgs a{};
  a.src = src;
  a.dst = dst;
  a.to_patches = to_patches;
  a.N = unsigned(g.N());
  a.nhw = unsigned(g.nh * g.nw);
  a.nw = unsigned(g.nw);
  a.t = unsigned(g.t);
  a.p = unsigned(g.p);
  a.C = unsigned(g.C);
  a.run = unsigned(merged ? g.p * g.C / per : g.p * g.C);
  a.upp = unsigned(g.P() / per);
  a.total = unsigned(total);
  for (int d = 0; d < 5; ++d) a.vs[d] = merged && d < 3 ? vs[d] * int64_t(es) / unit : vs[d];
  for (int d = 0; d < 3; ++d) a.ps[d] = merged && d < 2 ? ps[d] * int64_t(es) / unit : ps[d];
  const unsigned blocks = unsigned(std::clamp<int64_t>((total + kThreads - 1) / kThreads, 1, kMaxBlocks));
  auto go = [&]<class U, bool kMerged>() {
    LAUNCH((patch_move<U, kMerged>), blocks, kThreads, 0, cu_stream())(a);
    CHECK_LAUNCH("patch_move");
  };
  if (!merged) {
    switch (es) {
      case 2: go.template operator()<unsigned short, false>(); break;
      case 4: go.template operator()<unsigned, false>(); break;
      default: go.template operator()<uint2, false>(); break;
    }
    return;
  }
  switch (unit) {
    case 16: go.template operator()<uint4, true>(); break;
    case 8: go.template operator()<uint2, true>(); break;
    case 4: go.template operator()<unsigned, true>(); break;
    default: go.template operator()<unsigned short, true>(); break;
  }
}

}  // namespace

Tensor patchify(const Tensor& x, int64_t t, int64_t p) {
  const char* op = "patchify";
  check_on_device(x, op, "x");
  const PatchGeometry g = patch_geometry(x.shape(), t, p, op, x.describe());
  Tensor out = Tensor::empty(g.patches_shape(), x.dtype(), device());
  if (out.numel() == 0) return out;
  int64_t vs[5];
  video_strides(x, vs);
  const int64_t ps[3] = {g.N() * g.P(), g.P(), 1};
  launch_move(g, x.element_size(), x.raw_data(), out.raw_data(), true, vs, ps, x.raw_data(),
              out.raw_data(), op);
  return out;
}

Tensor unpatchify_backward(const Tensor& grad, const Shape& original_shape, int64_t t, int64_t p) {
  const char* op = "unpatchify_backward";
  check_on_device(grad, op, "grad");
  std::ostringstream what;
  what << "original shape " << original_shape;
  const PatchGeometry g = patch_geometry(original_shape, t, p, op, what.str());
  ENGINE_CHECK(grad.shape() == g.patches_shape(), op, ": grad ", grad.describe(),
               " does not match the patches ", g.patches_shape(), " of ", what.str());
  Tensor out = Tensor::empty(original_shape, grad.dtype(), device());
  if (out.numel() == 0) return out;
  int64_t vs[5];
  video_strides(out, vs);
  const int64_t ps[3] = {grad.stride(0), grad.stride(1), grad.stride(2)};
  launch_move(g, grad.element_size(), grad.raw_data(), out.raw_data(), false, vs, ps,
              out.raw_data(), grad.raw_data(), op);
  return out;
}

}  // namespace kernels::cuda
