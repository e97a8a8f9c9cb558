// Reference patchify, element by element through f64: every output element looks up its source
// with the definition's formula, written independently of the fast code's run copies.
#include <vector>

#include "kernels/patchify.h"

namespace kernels::ref {
namespace {

// Video element offset (row-major [B, T, H, W, C]) of feature f of patch n of example b.
int64_t video_offset(const PatchGeometry& g, int64_t b, int64_t n, int64_t f) {
  const int64_t iw = n % g.nw, ih = (n / g.nw) % g.nh, it = n / (g.nw * g.nh);
  const int64_t c = f % g.C, dx = (f / g.C) % g.p, dy = (f / (g.C * g.p)) % g.p,
                dt = f / (g.C * g.p * g.p);
  const int64_t tt = it * g.t + dt, y = ih * g.p + dy, x = iw * g.p + dx;
  return (((b * g.T + tt) * g.H + y) * g.W + x) * g.C + c;
}

}  // namespace

Tensor patchify(const Tensor& x, int64_t t, int64_t p) {
  const PatchGeometry g = patch_geometry(x.shape(), t, p, "patchify", x.describe());
  const std::vector<double> v = x.to_vector<double>();
  std::vector<double> out(size_t(g.B * g.N() * g.P()));
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t n = 0; n < g.N(); ++n)
      for (int64_t f = 0; f < g.P(); ++f)
        out[size_t((b * g.N() + n) * g.P() + f)] = v[size_t(video_offset(g, b, n, f))];
  return Tensor::from_vector(out, g.patches_shape(), DType::f64).to(x.dtype());
}

Tensor unpatchify_backward(const Tensor& grad, const Shape& original_shape, int64_t t, int64_t p) {
  const PatchGeometry g = patch_geometry(original_shape, t, p, "unpatchify_backward", "");
  const std::vector<double> v = grad.to_vector<double>();
  std::vector<double> out(size_t(original_shape.numel()));
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t n = 0; n < g.N(); ++n)
      for (int64_t f = 0; f < g.P(); ++f)
        out[size_t(video_offset(g, b, n, f))] = v[size_t((b * g.N() + n) * g.P() + f)];
  return Tensor::from_vector(out, original_shape, DType::f64).to(grad.dtype());
}

Tensor patch_coordinates(int64_t T, int64_t H, int64_t W, int64_t t, int64_t p) {
  std::vector<double> out;
  for (int64_t f0 = 0; f0 < T; f0 += t)
    for (int64_t y0 = 0; y0 < H; y0 += p)
      for (int64_t x0 = 0; x0 < W; x0 += p) {
        out.push_back(double(f0) / double(T));
        out.push_back(double(y0) / double(H));
        out.push_back(double(x0) / double(W));
      }
  return Tensor::from_vector(out, {int64_t(out.size() / 3), 3}, DType::f64);
}

}  // namespace kernels::ref
