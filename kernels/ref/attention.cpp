// Reference attention in f64: LayerNorm of q and k as a separate step, the full score matrix of
// each (batch, head), a plain softmax, then P·v. Simple loops, for tests only.
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/attention.h"

namespace kernels::ref {

AttentionResult attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionOptions& opts) {
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), Nk = k.size(2), Dh = q.size(3);
  const double scale = opts.scale ? *opts.scale : 1.0 / std::sqrt(double(Dh));
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> Q = q.to_vector<double>(), K = k.to_vector<double>(),
                      V = v.to_vector<double>();
  std::vector<double> mask;
  if (opts.key_mask.defined()) mask = opts.key_mask.to_vector<double>();

  if (opts.qk_norm) {
    std::vector<double> w = opts.qk_norm_weight.to_vector<double>();
    auto layernorm = [&](std::vector<double>& x) {
      for (size_t r = 0; r * Dh < x.size(); ++r) {
        double mean = 0, var = 0;
        for (int64_t d = 0; d < Dh; ++d) mean += x[r * Dh + d];
        mean /= double(Dh);
        for (int64_t d = 0; d < Dh; ++d) var += (x[r * Dh + d] - mean) * (x[r * Dh + d] - mean);
        var /= double(Dh);
        for (int64_t d = 0; d < Dh; ++d)
          x[r * Dh + d] = (x[r * Dh + d] - mean) / std::sqrt(var + opts.qk_norm_eps) * w[d];
      }
    };
    layernorm(Q);
    layernorm(K);
  }

  std::vector<double> out(B * H * Nq * Dh, 0.0), lse(B * H * Nq, 0.0), S(Nq * Nk);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t bh = b * H + h;
      for (int64_t i = 0; i < Nq; ++i)
        for (int64_t j = 0; j < Nk; ++j) {
          double s = 0;
          for (int64_t d = 0; d < Dh; ++d) s += Q[(bh * Nq + i) * Dh + d] * K[(bh * Nk + j) * Dh + d];
          bool masked = (!mask.empty() && mask[b * Nk + j] == 0) || (opts.causal && j > i);
          S[i * Nk + j] = masked ? -inf : scale * s;
        }
      for (int64_t i = 0; i < Nq; ++i) {
        double mx = -inf;
        for (int64_t j = 0; j < Nk; ++j) mx = std::max(mx, S[i * Nk + j]);
        if (mx == -inf) {  // no visible key: zero output
          lse[bh * Nq + i] = -inf;
          continue;
        }
        double sum = 0;
        for (int64_t j = 0; j < Nk; ++j) sum += std::exp(S[i * Nk + j] - mx);
        lse[bh * Nq + i] = mx + std::log(sum);
        for (int64_t j = 0; j < Nk; ++j) {
          const double pij = std::exp(S[i * Nk + j] - mx) / sum;
          for (int64_t d = 0; d < Dh; ++d)
            out[(bh * Nq + i) * Dh + d] += pij * V[(bh * Nk + j) * Dh + d];
        }
      }
    }
  AttentionResult res;
  res.out = Tensor::from_vector(out, {B, H, Nq, Dh});
  res.lse = Tensor::from_vector(lse, {B, H, Nq});
  return res;
}

}  // namespace kernels::ref
