// Reference grouped matmul: per-expert triple loops in f64, straight from the definition.
#include <vector>

#include "kernels/grouped_matmul.h"

namespace kernels::ref {
namespace {

std::vector<int64_t> offsets(const Tensor& counts) {
  const std::vector<int64_t> c = counts.to_vector<int64_t>();
  std::vector<int64_t> off(c.size() + 1, 0);
  for (size_t e = 0; e < c.size(); ++e) off[e + 1] = off[e] + c[e];
  return off;
}

}  // namespace

Tensor grouped_matmul(const Tensor& x_in, const Tensor& w_in, const Tensor& counts, bool trans_w) {
  // w as [E, K, N] whatever its storage.
  Tensor x = x_in.to(DType::f64).contiguous();
  Tensor w = (trans_w ? w_in.transpose(1, 2) : w_in).to(DType::f64).contiguous();
  const int64_t T = x.size(0), K = x.size(1), N = w.size(2);
  ENGINE_CHECK(w.size(1) == K, "ref::grouped_matmul: K differs");
  const std::vector<int64_t> off = offsets(counts);
  ENGINE_CHECK(off.back() == T, "ref::grouped_matmul: counts do not sum to the rows of x");
  Tensor y = Tensor::empty({T, N}, DType::f64);
  const double* X = x.data<double>();
  const double* W = w.data<double>();
  double* Y = y.data<double>();
  for (size_t e = 0; e + 1 < off.size(); ++e)
    for (int64_t t = off[e]; t < off[e + 1]; ++t)
      for (int64_t j = 0; j < N; ++j) {
        double s = 0;
        for (int64_t q = 0; q < K; ++q) s += X[t * K + q] * W[(int64_t(e) * K + q) * N + j];
        Y[t * N + j] = s;
      }
  return y;
}

Tensor grouped_matmul_wgrad(const Tensor& x_in, const Tensor& dy_in, const Tensor& counts,
                            bool trans_w) {
  Tensor x = x_in.to(DType::f64).contiguous();
  Tensor dy = dy_in.to(DType::f64).contiguous();
  const int64_t K = x.size(1), N = dy.size(1);
  const std::vector<int64_t> off = offsets(counts);
  const int64_t E = int64_t(off.size()) - 1;
  ENGINE_CHECK(off.back() == x.size(0) && x.size(0) == dy.size(0),
               "ref::grouped_matmul_wgrad: counts do not sum to the rows of x and dy");
  // dw[e][q][j] = sum over the expert's rows t of x[t][q] · dy[t][j]; zero for an empty expert.
  Tensor dw = Tensor::zeros({E, K, N}, DType::f64);
  const double* X = x.data<double>();
  const double* G = dy.data<double>();
  double* D = dw.data<double>();
  for (int64_t e = 0; e < E; ++e)
    for (int64_t q = 0; q < K; ++q)
      for (int64_t j = 0; j < N; ++j) {
        double s = 0;
        for (int64_t t = off[e]; t < off[e + 1]; ++t) s += X[t * K + q] * G[t * N + j];
        D[(e * K + q) * N + j] = s;
      }
  return trans_w ? dw.transpose(1, 2).contiguous() : dw;
}

}  // namespace kernels::ref
