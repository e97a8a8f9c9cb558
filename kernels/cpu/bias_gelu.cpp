// CPU bias + GELU (tanh): one pass per row, rows split over threads, the inner loop over the
// contiguous last dim vectorised through the branch-free kernels::math formulas. bf16 input is
// widened per element (no f32 copy of x). The backward's bias gradient is summed per fixed chunk
// of rows in f64, then over chunks in order: no atomics, the same bits for any thread count.
#include "kernels/bias_gelu.h"

#include <algorithm>
#include <vector>

#include "kernels/elementwise.h"

namespace kernels::cpu {
namespace {

constexpr int64_t kParallelMin = int64_t(1) << 14;  // elements; each costs an exp
constexpr int64_t kMaxChunks = 64;                  // bias-gradient row chunks

DType compute_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

// f(S{}, C{}): S the storage type of x, C the compute type.
template <class F>
void visit_storage(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::f32: return f(float{}, float{});
    case DType::f64: return f(double{}, double{});
    case DType::bf16: return f(bf16{}, float{});
    default: ENGINE_FAIL(op, ": expected dtype f32, f64 or bf16, got ", engine::dtype_name(t));
  }
}

void check_x(const char* op, const Tensor& x) {
  engine::check_defined(x, op, "x");
  engine::check_cpu(x, op);
  ENGINE_CHECK(engine::is_floating(x.dtype()), op, ": expected a floating dtype, got ", x.describe());
  ENGINE_CHECK(x.dim() >= 1, op, ": expected at least 1-D input, got ", x.describe());
}

// bias [D] in the compute dtype, contiguous.
Tensor bias_param(const char* op, const Tensor& bias, const Tensor& x, DType ct) {
  engine::check_defined(bias, op, "bias");
  engine::check_cpu(bias, op);
  ENGINE_CHECK(bias.dim() == 1 && bias.size(0) == x.size(-1), op, ": bias ", bias.describe(),
               " does not match the last dim of ", x.describe());
  ENGINE_CHECK(engine::is_floating(bias.dtype()), op, ": bias must be floating, got ",
               bias.describe());
  return bias.to(ct).contiguous();
}

template <class S, class C>
void forward_rows(const S* X, const C* B, S* Y, int64_t rows, int64_t d) {
#pragma omp parallel for schedule(static) if (rows * d > kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const S* x = X + r * d;
    S* y = Y + r * d;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) y[j] = S(math::gelu_tanh<C>(C(x[j]) + B[j]));
  }
}

// dx for every row; part[c] = Σ dx over the rows of chunk c (in f64, before dx is rounded to S).
template <class S, class C>
void backward_rows(const C* G, const S* X, const C* B, S* DX, double* part, int64_t rows,
                   int64_t d, int64_t chunks) {
  const int64_t per_chunk = (rows + chunks - 1) / chunks;
#pragma omp parallel for schedule(static) if (rows * d > kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    double* p = part + c * d;
    std::fill(p, p + d, 0.0);
    const int64_t r1 = std::min(rows, (c + 1) * per_chunk);
    for (int64_t r = c * per_chunk; r < r1; ++r) {
      const S* x = X + r * d;
      const C* g = G + r * d;
      S* dx = DX + r * d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) {
        const C dv = g[j] * math::gelu_tanh_grad<C>(C(x[j]) + B[j]);
        dx[j] = S(dv);
        p[j] += double(dv);
      }
    }
  }
}

}  // namespace

Tensor bias_gelu(const Tensor& x_in, const Tensor& bias) {
  const char* op = "bias_gelu";
  check_x(op, x_in);
  const DType ct = compute_dtype(x_in.dtype());
  const Tensor b = bias_param(op, bias, x_in, ct);
  const Tensor x = x_in.contiguous();
  const int64_t d = x.size(-1), rows = d == 0 ? 0 : x.numel() / d;
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  visit_storage(x.dtype(), op, [&](auto s, auto c) {
    using S = decltype(s);
    using C = decltype(c);
    forward_rows<S, C>(x.data<S>(), b.data<C>(), y.data<S>(), rows, d);
  });
  return y;
}

BiasGeluGrads bias_gelu_backward(const Tensor& g_in, const Tensor& x_in, const Tensor& bias) {
  const char* op = "bias_gelu_backward";
  check_x(op, x_in);
  engine::check_defined(g_in, op, "g");
  engine::check_cpu(g_in, op);
  engine::check_same_shape(g_in, x_in, op);
  ENGINE_CHECK(engine::is_floating(g_in.dtype()), op, ": g must be floating, got ", g_in.describe());
  const DType ct = compute_dtype(x_in.dtype());
  const Tensor b = bias_param(op, bias, x_in, ct);
  const Tensor x = x_in.contiguous();
  const Tensor g = g_in.to(ct).contiguous();
  const int64_t d = x.size(-1), rows = d == 0 ? 0 : x.numel() / d;
  const int64_t chunks = std::max<int64_t>(1, std::min(rows, kMaxChunks));
  BiasGeluGrads out{Tensor::empty(x.shape(), x.dtype()), Tensor::empty({d}, ct)};
  std::vector<double> part(size_t(chunks * d));
  visit_storage(x.dtype(), op, [&](auto s, auto c) {
    using S = decltype(s);
    using C = decltype(c);
    backward_rows<S, C>(g.data<C>(), x.data<S>(), b.data<C>(), out.dx.data<S>(), part.data(), rows,
                        d, chunks);
    C* db = out.dbias.data<C>();
    for (int64_t j = 0; j < d; ++j) {
      double acc = part[size_t(j)];
      for (int64_t k = 1; k < chunks; ++k) acc += part[size_t(k * d + j)];
      db[j] = C(acc);
    }
  });
  return out;
}

}  // namespace kernels::cpu
