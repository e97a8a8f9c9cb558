#include "kernels/layernorm.h"

#include <cmath>

namespace kernels::cpu {
namespace {

// Below this many elements a thread team costs more than it saves.
constexpr int64_t kParallelMin = int64_t(1) << 15;
// Weight/bias gradients are summed per chunk of rows, then over chunks in order.
constexpr int64_t kMaxChunks = 64;

DType compute_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

Shape row_shape(const Tensor& x) {
  Shape s = x.shape();
  s.erase(s.size() - 1);
  return s;
}

void check_input(const char* op, const Tensor& x) {
  engine::check_defined(x, op, "x");
  engine::check_cpu(x, op);
  ENGINE_CHECK(engine::is_floating(x.dtype()), op, ": expected a floating dtype, got ",
               x.describe());
  ENGINE_CHECK(x.dim() >= 1 && x.size(-1) > 0, op,
               ": expected at least 1-D input with a non-empty last dim, got ", x.describe());
}

// weight/bias: [D] in the compute dtype, contiguous; undefined stays undefined.
Tensor param(const char* op, const char* name, const Tensor& p, const Tensor& x, DType ct) {
  if (!p.defined()) return p;
  engine::check_cpu(p, op);
  ENGINE_CHECK(p.dim() == 1 && p.size(0) == x.size(-1), op, ": ", name, " ", p.describe(),
               " does not match the last dim of ", x.describe());
  ENGINE_CHECK(engine::is_floating(p.dtype()), op, ": ", name, " must be floating, got ",
               p.describe());
  return p.to(ct).contiguous();
}

template <class T>
void forward_rows(const T* X, const T* W, const T* B, T* Y, T* mean, T* rstd, int64_t rows,
                  int64_t d, double eps) {
#pragma omp parallel for schedule(static) if (rows * d > kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = X + r * d;
    T* y = Y + r * d;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < d; ++j) s += double(x[j]);
    const double mu = s / double(d);
    double v = 0;
#pragma omp simd reduction(+ : v)
    for (int64_t j = 0; j < d; ++j) {
      const double c = double(x[j]) - mu;
      v += c * c;
    }
    const double rs = 1.0 / std::sqrt(v / double(d) + eps);
    mean[r] = T(mu);
    rstd[r] = T(rs);
    // The centring is done in f64: a large common offset would otherwise cost f32 precision.
    if (W && B) {
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) y[j] = T((double(x[j]) - mu) * rs) * W[j] + B[j];
    } else if (W) {
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) y[j] = T((double(x[j]) - mu) * rs) * W[j];
    } else if (B) {
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) y[j] = T((double(x[j]) - mu) * rs) + B[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) y[j] = T((double(x[j]) - mu) * rs);
    }
  }
}

template <class T>
void backward_rows(const T* G, const T* X, const T* W, const T* mean, const T* rstd, T* DX,
                   double* dw_part, double* db_part, int64_t rows, int64_t d, int64_t chunks) {
  const int64_t per_chunk = (rows + chunks - 1) / chunks;
#pragma omp parallel for schedule(static) if (rows * d > kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    double* pw = dw_part ? dw_part + c * d : nullptr;
    double* pb = db_part ? db_part + c * d : nullptr;
    if (pw) std::fill(pw, pw + d, 0.0);
    if (pb) std::fill(pb, pb + d, 0.0);
    const int64_t r1 = std::min(rows, (c + 1) * per_chunk);
    for (int64_t r = c * per_chunk; r < r1; ++r) {
      const T* x = X + r * d;
      const T* g = G + r * d;
      T* dx = DX + r * d;
      const double mu0 = double(mean[r]), rs = double(rstd[r]);
      // Pass 1: the row sums of the dx formula. The saved mean may be rounded (f32 for a row with
      // a large offset is off by up to half an ulp of the offset), so the exact mean is
      // recovered here as mu0 + mean(x - mu0) in the same pass.
      double s_d = 0, s_gw = 0, s_gwd = 0;
#pragma omp simd reduction(+ : s_d, s_gw, s_gwd)
      for (int64_t j = 0; j < d; ++j) {
        const double c = double(x[j]) - mu0;
        const double gw = W ? double(g[j]) * double(W[j]) : double(g[j]);
        s_d += c;
        s_gw += gw;
        s_gwd += gw * c;
      }
      const double corr = s_d / double(d), mu = mu0 + corr;
      const double m1 = s_gw / double(d), m2 = rs * (s_gwd - corr * s_gw) / double(d);
      // Pass 2: dx, and this row's share of dweight and dbias.
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) {
        const double xh = (double(x[j]) - mu) * rs;
        const double gw = W ? double(g[j]) * double(W[j]) : double(g[j]);
        dx[j] = T(rs * (gw - m1 - xh * m2));
      }
      if (pw) {
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) pw[j] += double(g[j]) * ((double(x[j]) - mu) * rs);
      }
      if (pb) {
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) pb[j] += double(g[j]);
      }
    }
  }
}

// Sums chunk partials [chunks, d] in chunk order into out [d].
// (With no rows there is one chunk of zeros.)
template <class T>
void sum_chunks(double* part, int64_t chunks, int64_t d, T* out) {
  for (int64_t c = 1; c < chunks; ++c)
    for (int64_t j = 0; j < d; ++j) part[j] += part[c * d + j];
  for (int64_t j = 0; j < d; ++j) out[j] = T(part[j]);
}

}  // namespace

LayerNormOut layernorm(const Tensor& x_in, const Tensor& weight, const Tensor& bias, double eps) {
  check_input("layernorm", x_in);
  const DType ct = compute_dtype(x_in.dtype());
  Tensor w = param("layernorm", "weight", weight, x_in, ct);
  Tensor b = param("layernorm", "bias", bias, x_in, ct);
  Tensor x = x_in.to(ct).contiguous();
  const int64_t d = x.size(-1), rows = x.numel() / d;
  LayerNormOut out{Tensor::empty(x.shape(), ct), Tensor::empty(row_shape(x), ct),
                   Tensor::empty(row_shape(x), ct)};
  engine::visit_float(ct, "layernorm", [&](auto z) {
    using T = decltype(z);
    forward_rows<T>(x.data<T>(), w.defined() ? w.data<T>() : nullptr,
                    b.defined() ? b.data<T>() : nullptr, out.y.data<T>(), out.mean.data<T>(),
                    out.rstd.data<T>(), rows, d, eps);
  });
  if (x_in.dtype() != ct) out.y = out.y.to(x_in.dtype());
  return out;
}

LayerNormGrads layernorm_backward(const Tensor& g_in, const Tensor& x_in, const Tensor& weight,
                                  const Tensor& mean_in, const Tensor& rstd_in, bool has_bias) {
  const char* op = "layernorm_backward";
  check_input(op, x_in);
  engine::check_defined(g_in, op, "g");
  engine::check_same_shape(g_in, x_in, op);
  const DType ct = compute_dtype(x_in.dtype());
  const Shape rs = row_shape(x_in);
  for (const Tensor* t : {&mean_in, &rstd_in}) {
    engine::check_defined(*t, op, t == &mean_in ? "mean" : "rstd");
    ENGINE_CHECK(t->shape() == rs, op, ": saved statistics ", t->describe(),
                 " do not match the rows of ", x_in.describe());
  }
  Tensor w = param(op, "weight", weight, x_in, ct);
  Tensor x = x_in.to(ct).contiguous();
  Tensor g = g_in.to(ct).contiguous();
  Tensor mean = mean_in.to(ct).contiguous();
  Tensor rstd = rstd_in.to(ct).contiguous();
  const int64_t d = x.size(-1), rows = x.numel() / d;
  const int64_t chunks = std::max<int64_t>(1, std::min(rows, kMaxChunks));

  LayerNormGrads out;
  out.dx = Tensor::empty(x.shape(), ct);
  Tensor dw_part, db_part;
  if (w.defined()) dw_part = Tensor::empty({chunks, d}, DType::f64);
  if (has_bias) db_part = Tensor::empty({chunks, d}, DType::f64);
  engine::visit_float(ct, op, [&](auto z) {
    using T = decltype(z);
    backward_rows<T>(g.data<T>(), x.data<T>(), w.defined() ? w.data<T>() : nullptr, mean.data<T>(),
                     rstd.data<T>(), out.dx.data<T>(),
                     w.defined() ? dw_part.data<double>() : nullptr,
                     has_bias ? db_part.data<double>() : nullptr, rows, d, chunks);
    if (w.defined()) {
      out.dweight = Tensor::empty({d}, ct);
      sum_chunks<T>(dw_part.data<double>(), chunks, d, out.dweight.data<T>());
    }
    if (has_bias) {
      out.dbias = Tensor::empty({d}, ct);
      sum_chunks<T>(db_part.data<double>(), chunks, d, out.dbias.data<T>());
    }
  });
  if (x_in.dtype() != ct) out.dx = out.dx.to(x_in.dtype());
  return out;
}

}  // namespace kernels::cpu
