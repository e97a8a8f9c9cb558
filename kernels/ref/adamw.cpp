// Reference optimizer steps: f64 loops that follow torch.optim.AdamW / torch.optim.SGD line by
// line. Tests only; inputs are assumed valid.
#include <cmath>
#include <vector>

#include "kernels/adamw.h"

namespace kernels::ref {
namespace {

std::vector<double> values(const Tensor& t) { return t.to_vector<double>(); }

// Writes `vals` back into `t` (any layout, any floating dtype).
void store(const Tensor& t, const std::vector<double>& vals) {
  Tensor dst = t;  // a handle to the same memory
  dst.copy_(Tensor::from_vector(vals, t.shape()));
}

std::vector<double> mask_values(const Tensor& mask, size_t n) {
  return mask.defined() ? values(mask) : std::vector<double>(n, 1.0);
}

}  // namespace

void adamw_step(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                const Tensor& decay_mask, const AdamWParams& hp) {
  std::vector<double> p = values(params), g = values(grads), mm = values(m), vv = values(v);
  std::vector<double> mask = mask_values(decay_mask, p.size());
  const double bias_correction1 = 1.0 - std::pow(hp.beta1, double(hp.step));
  const double bias_correction2 = 1.0 - std::pow(hp.beta2, double(hp.step));
  const double step_size = hp.lr / bias_correction1;
  for (size_t i = 0; i < p.size(); ++i) {
    double grad = g[i] * hp.grad_scale;
    p[i] *= 1.0 - hp.lr * hp.weight_decay * mask[i];
    mm[i] = mm[i] * hp.beta1 + (1.0 - hp.beta1) * grad;
    vv[i] = vv[i] * hp.beta2 + (1.0 - hp.beta2) * grad * grad;
    double denom = std::sqrt(vv[i]) / std::sqrt(bias_correction2) + hp.eps;
    p[i] -= step_size * mm[i] / denom;
  }
  store(params, p);
  store(m, mm);
  store(v, vv);
}

void sgd_momentum_step(const Tensor& params, const Tensor& grads, const Tensor& buf,
                       const Tensor& decay_mask, double lr, double momentum, double weight_decay,
                       bool nesterov, double grad_scale) {
  std::vector<double> p = values(params), g = values(grads);
  std::vector<double> b = buf.defined() ? values(buf) : std::vector<double>(p.size(), 0.0);
  std::vector<double> mask = mask_values(decay_mask, p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    double d = g[i] * grad_scale + weight_decay * mask[i] * p[i];
    if (momentum != 0) {
      b[i] = momentum * b[i] + d;
      d = nesterov ? d + momentum * b[i] : b[i];
    }
    p[i] -= lr * d;
  }
  store(params, p);
  if (buf.defined() && momentum != 0) store(buf, b);
}

}  // namespace kernels::ref
