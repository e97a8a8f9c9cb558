#include "kernels/cross_entropy.h"

#include <cmath>
#include <vector>

#include "kernels/elementwise.h"  // math::exp: a vectorisable f32 exp
#include "kernels/index.h"

namespace kernels::cpu {
namespace {

using kernels::detail::visit_index;

constexpr int64_t kParallelWork = int64_t(1) << 14;

void check_logits(const Tensor& logits, const char* op) {
  engine::check_defined(logits, op, "logits");
  engine::check_cpu(logits, op);
  engine::check_dim(logits, 2, op, "logits");
}

// Checks targets and counts the rows that are not ignored.
template <class I>
int64_t check_targets(const I* t, int64_t N, int64_t C, int64_t ignore_index, const char* op) {
  int64_t valid = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t v = t[i];
    if (v == ignore_index) continue;
    ENGINE_CHECK(v >= 0 && v < C, op, ": target ", v, " at row ", i, " is out of range [0, ", C,
                 ") and is not ignore_index (", ignore_index, ")");
    ++valid;
  }
  return valid;
}

Tensor checked_targets(const Tensor& targets, int64_t N, const char* op) {
  engine::check_defined(targets, op, "targets");
  engine::check_cpu(targets, op);
  ENGINE_CHECK(targets.dim() == 1 && targets.size(0) == N, op, ": targets ", targets.describe(),
               " must have shape [", N, "] (one class index per row of logits)");
  return targets.contiguous();
}

void check_smoothing(double eps, const char* op) {
  ENGINE_CHECK(eps >= 0.0 && eps <= 1.0, op, ": label_smoothing ", eps, " is outside [0, 1]");
}

// Per-row gradient scale g[i] * scale, for a g of shape [N] with any stride (e.g. an expanded
// scalar), converted to T.
template <class T>
struct RowScale {
  std::vector<T> v;
  RowScale(const Tensor& g, int64_t N, double scale, const char* op) {
    engine::check_defined(g, op, "grad");
    ENGINE_CHECK(g.dim() == 1 && g.size(0) == N, op, ": grad ", g.describe(),
                 " must have shape [", N, "]");
    std::vector<double> gv = g.to_vector<double>();
    v.resize(size_t(N));
    for (int64_t i = 0; i < N; ++i) v[i] = T(gv[i] * scale);
  }
};

// max and log(sum exp(x - max)) of one row: lse = m + log_s, and the loss is assembled from the
// non-negative parts (m - x_c) and log_s, so it stays accurate for huge logits of either sign.
template <class T>
inline void row_stats(const T* x, int64_t C, T& m, T& log_s) {
  T mx = x[0];
#pragma omp simd reduction(max : mx)
  for (int64_t c = 1; c < C; ++c) mx = x[c] > mx ? x[c] : mx;
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < C; ++c) s += math::exp<T>(x[c] - mx);
  m = mx;
  log_s = std::log(s);
}

}  // namespace

CrossEntropyOut softmax_cross_entropy(const Tensor& logits_in, const Tensor& targets_in,
                                      double label_smoothing, int64_t ignore_index) {
  const char* op = "softmax_cross_entropy";
  check_logits(logits_in, op);
  check_smoothing(label_smoothing, op);
  const int64_t N = logits_in.size(0), C = logits_in.size(1);
  ENGINE_CHECK(C > 0 || N == 0, op, ": logits ", logits_in.describe(), " have no classes");
  const Tensor targets = checked_targets(targets_in, N, op);
  const Tensor x = logits_in.contiguous();
  CrossEntropyOut out{Tensor::empty({N}, x.dtype()), Tensor::empty({N}, x.dtype()), 0};
  visit_index(targets.dtype(), op, [&](auto zi) {
    using I = decltype(zi);
    const I* t = targets.data<I>();
    out.num_valid = check_targets(t, N, C, ignore_index, op);
    engine::visit_float(x.dtype(), op, [&](auto zt) {
      using T = decltype(zt);
      const T* xp = x.data<T>();
      T* loss = out.losses.data<T>();
      T* lse = out.lse.data<T>();
      const T on = T(1.0 - label_smoothing), off = T(label_smoothing / double(C));
#pragma omp parallel for if (N * C > kParallelWork) schedule(static)
      for (int64_t i = 0; i < N; ++i) {
        const T* xr = xp + i * C;
        T m, log_s;
        row_stats(xr, C, m, log_s);
        lse[i] = m + log_s;
        if (int64_t(t[i]) == ignore_index) {
          loss[i] = 0;
          continue;
        }
        T l = log_s + on * (m - xr[t[i]]);
        if (off != T(0)) {
          T sd = 0;
#pragma omp simd reduction(+ : sd)
          for (int64_t c = 0; c < C; ++c) sd += m - xr[c];
          l += off * sd;
        }
        loss[i] = l;
      }
    });
  });
  return out;
}

Tensor softmax_cross_entropy_backward(const Tensor& g, const Tensor& logits_in,
                                      const Tensor& targets_in, const Tensor& lse_in,
                                      double label_smoothing, int64_t ignore_index, double scale) {
  const char* op = "softmax_cross_entropy_backward";
  check_logits(logits_in, op);
  check_smoothing(label_smoothing, op);
  const int64_t N = logits_in.size(0), C = logits_in.size(1);
  const Tensor targets = checked_targets(targets_in, N, op);
  engine::check_defined(lse_in, op, "lse");
  ENGINE_CHECK(lse_in.dim() == 1 && lse_in.size(0) == N, op, ": lse ", lse_in.describe(),
               " must have shape [", N, "]");
  const Tensor x = logits_in.contiguous();
  const Tensor lse = lse_in.to(x.dtype()).contiguous();
  Tensor dx = Tensor::empty({N, C}, x.dtype());
  visit_index(targets.dtype(), op, [&](auto zi) {
    using I = decltype(zi);
    const I* t = targets.data<I>();
    check_targets(t, N, C, ignore_index, op);
    engine::visit_float(x.dtype(), op, [&](auto zt) {
      using T = decltype(zt);
      RowScale<T> gs(g, N, scale, op);
      const T* xp = x.data<T>();
      const T* lp = lse.data<T>();
      T* dp = dx.data<T>();
      const T on = T(1.0 - label_smoothing), off = T(label_smoothing / double(C));
#pragma omp parallel for if (N * C > kParallelWork) schedule(static)
      for (int64_t i = 0; i < N; ++i) {
        const T* xr = xp + i * C;
        T* dr = dp + i * C;
        if (int64_t(t[i]) == ignore_index) {
          for (int64_t c = 0; c < C; ++c) dr[c] = 0;
          continue;
        }
        const T a = gs.v[i], l = lp[i], b = a * off;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) dr[c] = a * math::exp<T>(xr[c] - l) - b;
        dr[t[i]] -= a * on;
      }
    });
  });
  return dx;
}

CrossEntropyOut softmax_cross_entropy_soft(const Tensor& logits_in, const Tensor& probs_in) {
  const char* op = "softmax_cross_entropy_soft";
  check_logits(logits_in, op);
  engine::check_defined(probs_in, op, "target_probs");
  engine::check_cpu(probs_in, op);
  ENGINE_CHECK(probs_in.shape() == logits_in.shape(), op, ": target_probs ", probs_in.describe(),
               " must have the shape of logits ", logits_in.describe());
  const int64_t N = logits_in.size(0), C = logits_in.size(1);
  ENGINE_CHECK(C > 0 || N == 0, op, ": logits ", logits_in.describe(), " have no classes");
  const Tensor x = logits_in.contiguous();
  const Tensor q = probs_in.to(x.dtype()).contiguous();
  CrossEntropyOut out{Tensor::empty({N}, x.dtype()), Tensor::empty({N}, x.dtype()), N};
  engine::visit_float(x.dtype(), op, [&](auto zt) {
    using T = decltype(zt);
    const T* xp = x.data<T>();
    const T* qp = q.data<T>();
    T* loss = out.losses.data<T>();
    T* lse = out.lse.data<T>();
#pragma omp parallel for if (N * C > kParallelWork) schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const T* xr = xp + i * C;
      const T* qr = qp + i * C;
      T m, log_s;
      row_stats(xr, C, m, log_s);
      lse[i] = m + log_s;
      T qsum = 0, qd = 0;  // sum_c q_c (lse - x_c) = qsum * log_s + sum_c q_c (m - x_c)
#pragma omp simd reduction(+ : qsum, qd)
      for (int64_t c = 0; c < C; ++c) {
        qsum += qr[c];
        qd += qr[c] * (m - xr[c]);
      }
      loss[i] = qsum * log_s + qd;
    }
  });
  return out;
}

Tensor softmax_cross_entropy_soft_backward(const Tensor& g, const Tensor& logits_in,
                                           const Tensor& probs_in, const Tensor& lse_in,
                                           double scale) {
  const char* op = "softmax_cross_entropy_soft_backward";
  check_logits(logits_in, op);
  engine::check_defined(probs_in, op, "target_probs");
  engine::check_defined(lse_in, op, "lse");
  ENGINE_CHECK(probs_in.shape() == logits_in.shape(), op, ": target_probs ", probs_in.describe(),
               " must have the shape of logits ", logits_in.describe());
  const int64_t N = logits_in.size(0), C = logits_in.size(1);
  ENGINE_CHECK(lse_in.dim() == 1 && lse_in.size(0) == N, op, ": lse ", lse_in.describe(),
               " must have shape [", N, "]");
  const Tensor x = logits_in.contiguous();
  const Tensor q = probs_in.to(x.dtype()).contiguous();
  const Tensor lse = lse_in.to(x.dtype()).contiguous();
  Tensor dx = Tensor::empty({N, C}, x.dtype());
  engine::visit_float(x.dtype(), op, [&](auto zt) {
    using T = decltype(zt);
    RowScale<T> gs(g, N, scale, op);
    const T* xp = x.data<T>();
    const T* qp = q.data<T>();
    const T* lp = lse.data<T>();
    T* dp = dx.data<T>();
#pragma omp parallel for if (N * C > kParallelWork) schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const T* xr = xp + i * C;
      const T* qr = qp + i * C;
      T* dr = dp + i * C;
      T qsum = 0;
#pragma omp simd reduction(+ : qsum)
      for (int64_t c = 0; c < C; ++c) qsum += qr[c];
      const T a = gs.v[i], l = lp[i];
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dr[c] = a * (math::exp<T>(xr[c] - l) * qsum - qr[c]);
    }
  });
  return dx;
}

Tensor loss_sum(const Tensor& losses_in, double scale) {
  engine::check_defined(losses_in, "loss_sum", "losses");
  engine::check_cpu(losses_in, "loss_sum");
  const Tensor losses = losses_in.contiguous();
  double s = 0;
  engine::visit_float(losses.dtype(), "loss_sum", [&](auto zt) {
    using T = decltype(zt);
    const T* p = losses.data<T>();
    for (int64_t i = 0; i < losses.numel(); ++i) s += double(p[i]);
  });
  return Tensor::scalar(scale * s, losses.dtype());
}

}  // namespace kernels::cpu
