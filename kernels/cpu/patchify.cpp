#include "kernels/patchify.h"

#include <cstring>
#include <sstream>

namespace kernels {

PatchGeometry patch_geometry(const Shape& s, int64_t t, int64_t p, const char* op,
                             const std::string& what) {
  ENGINE_CHECK(s.size() == 4 || s.size() == 5, op, ": expected [B, H, W, C] or [B, T, H, W, C], got ",
               what);
  ENGINE_CHECK(t >= 1 && p >= 1, op, ": tubelet length t = ", t, " and patch size p = ", p,
               " must be >= 1");
  PatchGeometry g{};
  const bool video = s.size() == 5;
  g.B = s[0];
  g.T = video ? s[1] : 1;
  g.H = s[video ? 2 : 1];
  g.W = s[video ? 3 : 2];
  g.C = s[video ? 4 : 3];
  g.t = t;
  g.p = p;
  ENGINE_CHECK(video || t == 1, op, ": an image ", what, " has one frame; the tubelet length t must be 1, got ", t);
  ENGINE_CHECK(g.T % t == 0, op, ": ", what, ": T = ", g.T, " frames is not divisible by the tubelet length t = ", t);
  ENGINE_CHECK(g.H % p == 0 && g.W % p == 0, op, ": ", what, ": H = ", g.H, " and W = ", g.W,
               " must both be divisible by the patch size p = ", p);
  g.nt = g.T / t;
  g.nh = g.H / p;
  g.nw = g.W / p;
  return g;
}

Tensor patch_coordinates(int64_t T, int64_t H, int64_t W, int64_t t, int64_t p) {
  std::ostringstream what;
  what << "[T = " << T << ", H = " << H << ", W = " << W << "]";
  ENGINE_CHECK(T >= 1 && H >= 1 && W >= 1, "patch_coordinates: sizes must be >= 1, got ", what.str());
  const PatchGeometry g = patch_geometry({1, T, H, W, 1}, t, p, "patch_coordinates", what.str());
  Tensor out = Tensor::empty({g.N(), 3}, DType::f32);
  float* o = out.data<float>();
  for (int64_t it = 0; it < g.nt; ++it)
    for (int64_t ih = 0; ih < g.nh; ++ih)
      for (int64_t iw = 0; iw < g.nw; ++iw, o += 3) {
        o[0] = float(double(it * t) / double(T));
        o[1] = float(double(ih * p) / double(H));
        o[2] = float(double(iw * p) / double(W));
      }
  return out;
}

namespace cpu {
namespace {

constexpr int64_t kParallelWork = int64_t(1) << 15;

// The one loop both directions share: for every patch (b, n) and every (dt, dy), a run of p*C
// elements is contiguous in the video and in the patch matrix. to_patches: src is the video and
// dst the patches; otherwise the reverse.
void move_runs(const PatchGeometry& g, size_t es, const char* src, char* dst, bool to_patches) {
  const int64_t N = g.N(), P = g.P(), total = g.B * N, e = int64_t(es);
  const size_t run = size_t(g.p * g.C) * es;
#pragma omp parallel for if (total * P > kParallelWork) schedule(static)
  for (int64_t bn = 0; bn < total; ++bn) {
    const int64_t b = bn / N, n = bn % N;
    const int64_t it = n / (g.nh * g.nw), ih = (n / g.nw) % g.nh, iw = n % g.nw;
    for (int64_t dt = 0; dt < g.t; ++dt)
      for (int64_t dy = 0; dy < g.p; ++dy) {
        const int64_t v = (((b * g.T + it * g.t + dt) * g.H + ih * g.p + dy) * g.W + iw * g.p) * g.C;
        const int64_t q = bn * P + (dt * g.p + dy) * g.p * g.C;
        if (to_patches) std::memcpy(dst + q * e, src + v * e, run);
        else std::memcpy(dst + v * e, src + q * e, run);
      }
  }
}

}  // namespace

Tensor patchify(const Tensor& x_in, int64_t t, int64_t p) {
  engine::check_defined(x_in, "patchify", "x");
  engine::check_cpu(x_in, "patchify");
  const PatchGeometry g = patch_geometry(x_in.shape(), t, p, "patchify", x_in.describe());
  const Tensor x = x_in.contiguous();
  Tensor out = Tensor::empty(g.patches_shape(), x.dtype());
  if (out.numel() == 0) return out;
  move_runs(g, x.element_size(), static_cast<const char*>(x.raw_data()),
            static_cast<char*>(out.raw_data()), true);
  return out;
}

Tensor unpatchify_backward(const Tensor& g_in, const Shape& original_shape, int64_t t, int64_t p) {
  engine::check_defined(g_in, "unpatchify_backward", "grad");
  engine::check_cpu(g_in, "unpatchify_backward");
  std::ostringstream what;
  what << "original shape " << original_shape;
  const PatchGeometry g = patch_geometry(original_shape, t, p, "unpatchify_backward", what.str());
  ENGINE_CHECK(g_in.shape() == g.patches_shape(), "unpatchify_backward: grad ", g_in.describe(),
               " does not match the patches ", g.patches_shape(), " of ", what.str());
  const Tensor gc = g_in.contiguous();
  Tensor out = Tensor::empty(original_shape, gc.dtype());
  if (out.numel() == 0) return out;
  move_runs(g, gc.element_size(), static_cast<const char*>(gc.raw_data()),
            static_cast<char*>(out.raw_data()), false);
  return out;
}

}  // namespace cpu
}  // namespace kernels
