// Reference cross-entropy, in f64, written from the definition: log-softmax per row, then
// loss = -sum_c q_c log p_c and dlogits = g * (p * sum_c q_c - q).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cross_entropy.h"

namespace kernels::ref {
namespace {

// log-softmax of row i of x [N, C] (row-major values), and its logsumexp.
std::vector<double> log_softmax_row(const std::vector<double>& x, int64_t i, int64_t C,
                                    double& lse) {
  double m = -INFINITY;
  for (int64_t c = 0; c < C; ++c) m = std::max(m, x[i * C + c]);
  double s = 0;
  for (int64_t c = 0; c < C; ++c) s += std::exp(x[i * C + c] - m);
  lse = m + std::log(s);
  std::vector<double> lp(C);
  for (int64_t c = 0; c < C; ++c) lp[c] = x[i * C + c] - lse;
  return lp;
}

// The target distribution of row i: smoothed one-hot, or the given probabilities.
std::vector<double> hard_q(int64_t t, int64_t C, double eps) {
  std::vector<double> q(C, eps / double(C));
  q[t] += 1.0 - eps;
  return q;
}

CrossEntropyOut forward(const Tensor& logits, const std::vector<std::vector<double>>& qs,
                        const std::vector<bool>& ignored) {
  const int64_t N = logits.size(0), C = logits.size(1);
  auto x = logits.to_vector<double>();
  std::vector<double> loss(N, 0.0), lse(N);
  int64_t valid = 0;
  for (int64_t i = 0; i < N; ++i) {
    auto lp = log_softmax_row(x, i, C, lse[i]);
    if (ignored[i]) continue;
    ++valid;
    for (int64_t c = 0; c < C; ++c) loss[i] -= qs[i][c] * lp[c];
  }
  return {Tensor::from_vector(loss, {N}, DType::f64), Tensor::from_vector(lse, {N}, DType::f64),
          valid};
}

Tensor backward(const Tensor& g, const Tensor& logits, const std::vector<std::vector<double>>& qs,
                const std::vector<bool>& ignored, double scale) {
  const int64_t N = logits.size(0), C = logits.size(1);
  auto x = logits.to_vector<double>();
  auto gv = g.to_vector<double>();
  std::vector<double> dx(N * C, 0.0);
  for (int64_t i = 0; i < N; ++i) {
    if (ignored[i]) continue;
    double lse;
    auto lp = log_softmax_row(x, i, C, lse);
    double qsum = 0;
    for (double q : qs[i]) qsum += q;
    for (int64_t c = 0; c < C; ++c)
      dx[i * C + c] = gv[i] * scale * (std::exp(lp[c]) * qsum - qs[i][c]);
  }
  return Tensor::from_vector(dx, {N, C}, DType::f64);
}

void hard_targets(const Tensor& logits, const Tensor& targets, double eps, int64_t ignore_index,
                  std::vector<std::vector<double>>& qs, std::vector<bool>& ignored) {
  const int64_t C = logits.size(1);
  for (int64_t t : targets.to_vector<int64_t>()) {
    ignored.push_back(t == ignore_index);
    ENGINE_CHECK(t == ignore_index || (t >= 0 && t < C), "softmax_cross_entropy: target ", t,
                 " out of range");
    qs.push_back(t == ignore_index ? std::vector<double>(C, 0.0) : hard_q(t, C, eps));
  }
}

void soft_targets(const Tensor& probs, std::vector<std::vector<double>>& qs,
                  std::vector<bool>& ignored) {
  const int64_t N = probs.size(0), C = probs.size(1);
  auto p = probs.to_vector<double>();
  for (int64_t i = 0; i < N; ++i) {
    qs.emplace_back(p.begin() + i * C, p.begin() + (i + 1) * C);
    ignored.push_back(false);
  }
}

}  // namespace

CrossEntropyOut softmax_cross_entropy(const Tensor& logits, const Tensor& targets,
                                      double label_smoothing, int64_t ignore_index) {
  std::vector<std::vector<double>> qs;
  std::vector<bool> ignored;
  hard_targets(logits, targets, label_smoothing, ignore_index, qs, ignored);
  return forward(logits, qs, ignored);
}

Tensor softmax_cross_entropy_backward(const Tensor& g, const Tensor& logits,
                                      const Tensor& targets, const Tensor& lse,
                                      double label_smoothing, int64_t ignore_index, double scale) {
  std::vector<std::vector<double>> qs;
  std::vector<bool> ignored;
  hard_targets(logits, targets, label_smoothing, ignore_index, qs, ignored);
  return backward(g, logits, qs, ignored, scale);
}

CrossEntropyOut softmax_cross_entropy_soft(const Tensor& logits, const Tensor& target_probs) {
  std::vector<std::vector<double>> qs;
  std::vector<bool> ignored;
  soft_targets(target_probs, qs, ignored);
  return forward(logits, qs, ignored);
}

Tensor softmax_cross_entropy_soft_backward(const Tensor& g, const Tensor& logits,
                                           const Tensor& target_probs, const Tensor& lse,
                                           double scale) {
  std::vector<std::vector<double>> qs;
  std::vector<bool> ignored;
  soft_targets(target_probs, qs, ignored);
  return backward(g, logits, qs, ignored, scale);
}

}  // namespace kernels::ref
