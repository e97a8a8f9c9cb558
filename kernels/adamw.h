// Fused optimizer steps over flat buffers. Parameters, gradients and moments each live in one
// contiguous 1-D buffer (module parameters are views into it), so one call updates the whole
// model in a single pass over memory.
//
// The tensors passed as `params`, `m`, `v`, `buf` are updated in place: the handles are const,
// the memory behind them is written (so views such as buffer.narrow(...) can be passed).
#pragma once
#include "kernels/backend.h"

namespace kernels {

struct AdamWParams {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
  int64_t step = 1;         // 1-based step count of this update, for the bias correction
  double grad_scale = 1.0;  // multiplied into the gradient first (how clipping is applied)
};

// torch.optim.AdamW (decoupled weight decay), with g = grad_scale * grads:
//   p -= lr * wd * mask * p
//   m  = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g²
//   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// params, grads, m, v: 1-D, same length, same dtype (f32 or f64). decay_mask: per-element
// multiplier of the decay (1 = decay, 0 = not: norms, biases, positions, temperatures), any
// dtype (the params' dtype avoids a conversion), or an undefined tensor: decay everything.
//
// SGD as torch.optim.SGD (dampening 0), with g = grad_scale * grads + wd * mask * p:
//   buf = momentum * buf + g;   p -= lr * (nesterov ? g + momentum * buf : buf)
// A zero-initialised buf gives torch's first step (buf = g). With momentum == 0 buf is not
// used (it may be undefined).
namespace cpu {
void adamw_step(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                const Tensor& decay_mask, const AdamWParams& hp);
void sgd_momentum_step(const Tensor& params, const Tensor& grads, const Tensor& buf,
                       const Tensor& decay_mask, double lr, double momentum, double weight_decay,
                       bool nesterov, double grad_scale);
}  // namespace cpu

// Plain f64 loops in torch's order of operations; tests only.
namespace ref {
void adamw_step(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                const Tensor& decay_mask, const AdamWParams& hp);
void sgd_momentum_step(const Tensor& params, const Tensor& grads, const Tensor& buf,
                       const Tensor& decay_mask, double lr, double momentum, double weight_decay,
                       bool nesterov, double grad_scale);
}  // namespace ref

// CUDA kernels (kernels/cuda/adamw.cu), on kernels::cuda::device() buffers, f32 or f64; the decay
// mask must have the params' dtype there (no conversion on the device). 16-byte vectorised when
// every buffer has unit stride and the same offset mod 16 (e.g. views of buffers allocated alike).
namespace cuda {
void adamw_step(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                const Tensor& decay_mask, const AdamWParams& hp);
void sgd_momentum_step(const Tensor& params, const Tensor& grads, const Tensor& buf,
                       const Tensor& decay_mask, double lr, double momentum, double weight_decay,
                       bool nesterov, double grad_scale);
}  // namespace cuda

inline void adamw_step(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                       const Tensor& decay_mask, const AdamWParams& hp) {
  KERNEL_ROUTE(params.device(), adamw_step, params, grads, m, v, decay_mask, hp);
}
inline void sgd_momentum_step(const Tensor& params, const Tensor& grads, const Tensor& buf,
                              const Tensor& decay_mask, double lr, double momentum,
                              double weight_decay, bool nesterov, double grad_scale = 1.0) {
  KERNEL_ROUTE(params.device(), sgd_momentum_step, params, grads, buf, decay_mask, lr, momentum,
               weight_decay, nesterov, grad_scale);
}

}  // namespace kernels
