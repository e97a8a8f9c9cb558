// Reference products: plain triple loops in f64 over broadcast batches.
#include "kernels/matmul.h"

namespace kernels::ref {

Tensor matmul(const Tensor& a_in, const Tensor& b_in, bool ta, bool tb) {
  // op(x) materialised as a contiguous f64 [..., rows, cols] copy.
  Tensor a = (ta ? a_in.transpose(-1, -2) : a_in).to(DType::f64).contiguous();
  Tensor b = (tb ? b_in.transpose(-1, -2) : b_in).to(DType::f64).contiguous();
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  ENGINE_CHECK(b.size(-2) == k, "ref::matmul: inner dimensions differ");
  Shape ba, bb;
  for (int d = 0; d + 2 < a.dim(); ++d) ba.push_back(a.size(d));
  for (int d = 0; d + 2 < b.dim(); ++d) bb.push_back(b.size(d));
  Shape batch = engine::broadcast_shapes(ba, bb, "ref::matmul");
  Shape sa = batch, sb = batch, so = batch;
  sa.push_back(m);
  sa.push_back(k);
  sb.push_back(k);
  sb.push_back(n);
  so.push_back(m);
  so.push_back(n);
  a = a.expand(sa).contiguous();
  b = b.expand(sb).contiguous();
  Tensor out = Tensor::empty(so, DType::f64);
  const double* A = a.data<double>();
  const double* B = b.data<double>();
  double* C = out.data<double>();
  for (int64_t p = 0; p < batch.numel(); ++p)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t q = 0; q < k; ++q) s += A[(p * m + i) * k + q] * B[(p * k + q) * n + j];
        C[(p * m + i) * n + j] = s;
      }
  return out;
}

Tensor bmm(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  ENGINE_CHECK(a.dim() == 3 && b.dim() == 3, "ref::bmm: expected 3-D operands");
  return matmul(a, b, ta, tb);
}

}  // namespace kernels::ref
