#include "autograd/matmul.h"

#include "kernels/matmul.h"

namespace autograd {
namespace {

// t [..., R, C] as a [P·R, C] matrix (a view when t is contiguous).
Tensor flatten_rows(const Tensor& t) {
  if (t.dim() == 2) return t;
  return t.contiguous().view({-1, t.size(-1)});
}

bool same_batch(const Tensor& a, const Tensor& b) {
  if (a.dim() != b.dim()) return false;
  for (int d = 0; d + 2 < a.dim(); ++d)
    if (a.size(d) != b.size(d)) return false;
  return true;
}

}  // namespace

// C = op(A)·op(B), G = dL/dC:  d op(A) = G·op(B)ᵀ,  d op(B) = op(A)ᵀ·G; a transposed operand
// takes the transpose of its op's gradient.
Var matmul(const Var& a, const Var& b, bool ta, bool tb) {
  const Tensor A = a.data(), B = b.data();
  ENGINE_CHECK(B.dim() == 2 || same_batch(A, B), "matmul: b ", B.describe(),
               " must be 2-D or have the batch dims of a ", A.describe(),
               " (use bmm for broadcast batches)");
  Tensor out = kernels::matmul(A, B, ta, tb);
  return make_result(out, "matmul", {a, b}, [A, B, ta, tb](const Tensor& g, Grads& grads) {
    if (grads.need(0))
      grads.set(0, ta ? kernels::matmul(B, g, tb, true) : kernels::matmul(g, B, false, !tb));
    if (grads.need(1)) {
      if (B.dim() == 2 && A.dim() > 2) {
        // Sum over the leading dims of A as one GEMM: rows of all batch elements stacked.
        const Tensor A2 = flatten_rows(ta ? A.transpose(-1, -2) : A);  // [P·M, K]
        const Tensor G2 = flatten_rows(g);                             // [P·M, N]
        grads.set(1,
                  tb ? kernels::matmul(G2, A2, true, false) : kernels::matmul(A2, G2, true, false));
      } else {
        grads.set(1, tb ? kernels::matmul(g, A, true, ta) : kernels::matmul(A, g, !ta, false));
      }
    }
  });
}

Var bmm(const Var& a, const Var& b, bool ta, bool tb) {
  const Tensor A = a.data(), B = b.data();
  Tensor out = kernels::bmm(A, B, ta, tb);
  return make_result(out, "bmm", {a, b}, [A, B, ta, tb](const Tensor& g, Grads& grads) {
    const int64_t batch = g.size(0);
    if (grads.need(0)) {
      if (A.size(0) == batch) {
        grads.set(0, ta ? kernels::bmm(B, g, tb, true) : kernels::bmm(g, B, false, !tb));
      } else {
        // A broadcast over the batch: accumulate every batch element's product into one matrix.
        Tensor dA = Tensor::zeros(A.shape(), A.dtype(), A.device());
        Tensor d2 = dA.select(0, 0);
        for (int64_t p = 0; p < batch; ++p) {
          const Tensor gp = g.select(0, p), bp = B.select(0, B.size(0) == 1 ? 0 : p);
          const double beta = p ? 1.0 : 0.0;
          if (ta)
            kernels::matmul_out(d2, bp, gp, tb, true, 1.0, beta);
          else
            kernels::matmul_out(d2, gp, bp, false, !tb, 1.0, beta);
        }
        grads.set(0, dA);
      }
    }
    if (grads.need(1)) {
      if (B.size(0) == batch) {
        grads.set(1, tb ? kernels::bmm(g, A, true, ta) : kernels::bmm(A, g, !ta, false));
      } else {
        // B broadcast over the batch: one GEMM over the stacked rows of every batch element.
        const Tensor A2 = flatten_rows(ta ? A.transpose(-1, -2) : A);  // A has the full batch
        const Tensor G2 = flatten_rows(g);
        Tensor d = tb ? kernels::matmul(G2, A2, true, false) : kernels::matmul(A2, G2, true, false);
        grads.set(1, d.unsqueeze(0));
      }
    }
  });
}

Var linear(const Var& x, const Var& w, const Var& b) {
  const Tensor X = x.data(), W = w.data();
  ENGINE_CHECK(X.dim() >= 2 && W.dim() == 2 && X.size(-1) == W.size(1), "linear: input ",
               X.describe(), " does not match weight ", W.describe(),
               " (expected input [..., in] with at least 2 dims and weight [out, in])");
  Tensor y;
  if (b.defined()) {
    ENGINE_CHECK(b.dim() == 1 && b.size(0) == W.size(0), "linear: bias ", b.data().describe(),
                 " does not match weight ", W.describe());
    Shape s = X.shape();
    s[s.size() - 1] = W.size(0);
    y = Tensor::empty(s, X.dtype(), X.device());
    y.copy_(b.data().expand(s));
    kernels::matmul_out(y, X, W, false, true, 1.0, 1.0);
  } else {
    y = kernels::matmul(X, W, false, true);
  }
  return make_result(y, "linear", {x, w, b}, [X, W](const Tensor& g, Grads& grads) {
    if (grads.need(0)) grads.set(0, kernels::matmul(g, W, false, false));
    if (grads.need(1) || grads.need(2)) {
      const Tensor G2 = flatten_rows(g);  // [rows, out]
      if (grads.need(1)) grads.set(1, kernels::matmul(G2, flatten_rows(X), true, false));
      if (grads.need(2)) {
        // Column sums of G2 as a GEMV with a row of ones.
        const Tensor ones = Tensor::ones({1, G2.size(0)}, G2.dtype(), G2.device());
        grads.set(2, kernels::matmul(ones, G2).view({G2.size(1)}));
      }
    }
  });
}

}  // namespace autograd
