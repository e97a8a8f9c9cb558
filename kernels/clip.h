// Global gradient-norm clipping (torch.nn.utils.clip_grad_norm_): the L2 norm over all gradients,
// the factor that brings it down to max_norm, and an in-place scale. The trainer usually passes
// clip_scale(...) to adamw_step as grad_scale instead of calling scale_, saving a pass.
#pragma once
#include <cmath>
#include <vector>

#include "kernels/backend.h"

namespace kernels {

// grad_norm: sqrt(sum of x² over every element of every tensor), accumulated in double.
// Undefined tensors are skipped (parameters without a gradient); NaN/Inf propagate so the
// trainer can detect them. Accepts f32, f64, bf16, any layout. Deterministic: the sum is split
// into fixed chunks that do not depend on the thread count and added in order.
// scale_: t *= s in place (f32/f64, any layout; the handle is const, its memory is written).
namespace cpu {
double grad_norm(const std::vector<Tensor>& tensors);
void scale_(const Tensor& t, double s);
}  // namespace cpu

namespace ref {
double grad_norm(const std::vector<Tensor>& tensors);  // plain double loop, tests only
}  // namespace ref

// CUDA kernels (kernels/cuda/adamw.cu), on kernels::cuda::device() tensors. grad_norm: a two-stage
// reduction over the same fixed 65536-element chunks, bit-identical from run to run; the result
// comes back to the host (a synchronisation). scale_: f32/f64, any layout without overlap.
namespace cuda {
double grad_norm(const std::vector<Tensor>& tensors);
void scale_(const Tensor& t, double s);
}  // namespace cuda

inline double grad_norm(const std::vector<Tensor>& tensors) {
  for (const Tensor& t : tensors)
    if (t.defined() && !t.device().is_cpu()) KERNEL_ROUTE(t.device(), grad_norm, tensors);
  return cpu::grad_norm(tensors);
}
// One flat gradient buffer.
inline double grad_norm(const Tensor& flat) { return grad_norm(std::vector<Tensor>{flat}); }

inline void scale_(const Tensor& t, double s) { KERNEL_ROUTE(t.device(), scale_, t, s); }

// min(1, max_norm / (norm + 1e-6)), torch's clip_grad_norm_ rule. A NaN norm gives NaN (the
// gradients are unusable and the step should be skipped); an infinite norm gives 0.
inline double clip_scale(double norm, double max_norm) {
  ENGINE_CHECK(max_norm >= 0, "clip_scale: max_norm must be >= 0, got ", max_norm);
  ENGINE_CHECK(!(norm < 0), "clip_scale: norm must be >= 0, got ", norm);
  if (std::isnan(norm)) return norm;
  const double s = max_norm / (norm + 1e-6);
  return s < 1.0 ? s : 1.0;
}

}  // namespace kernels
