#include "kernels/matmul.h"
#include "kernels/cpu/blas_threads.h"

#include <cblas.h>
#include <omp.h>

#include <climits>

#include "engine/strided.h"

namespace kernels::cpu {
namespace {

// How a 2-D matrix of r×c with strides (s0, s1) can be handed to BLAS without a copy.
struct Layout {
  bool ok = false;
  bool row_major = true;  // element (i, j) at i·ld + j; otherwise at i + j·ld
  int64_t ld = 1;
};

Layout blas_layout(int64_t r, int64_t c, int64_t s0, int64_t s1) {
  // A size-1 dim never moves the pointer, so its stride is free; BLAS still wants ld >= 1 and
  // ld >= the length of the contiguous side.
  if ((c == 1 || s1 == 1) && (r == 1 || s0 >= std::max<int64_t>(c, 1)))
    return {true, true, r == 1 ? std::max<int64_t>(c, 1) : s0};
  if ((r == 1 || s0 == 1) && (c == 1 || s1 >= std::max<int64_t>(r, 1)))
    return {true, false, c == 1 ? std::max<int64_t>(r, 1) : s1};
  return {};
}

Layout matrix_layout(const Tensor& t) {
  return blas_layout(t.size(-2), t.size(-1), t.stride(-2), t.stride(-1));
}

void gemm(CBLAS_ORDER o, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha,
          const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  cblas_sgemm(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void gemm(CBLAS_ORDER o, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, double alpha,
          const double* a, int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  cblas_dgemm(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void gemv(CBLAS_TRANSPOSE t, int m, int n, float alpha, const float* a, int lda, const float* x,
          int incx, float beta, float* y, int incy) {
  cblas_sgemv(CblasRowMajor, t, m, n, alpha, a, lda, x, incx, beta, y, incy);
}
void gemv(CBLAS_TRANSPOSE t, int m, int n, double alpha, const double* a, int lda, const double* x,
          int incx, double beta, double* y, int incy) {
  cblas_dgemv(CblasRowMajor, t, m, n, alpha, a, lda, x, incx, beta, y, incy);
}

// One product C = alpha · op(A)·op(B) + beta · C as BLAS sees it. A result that is a single
// column or row goes to GEMV (GEMM would pack the whole matrix first; GEMV streams it once).
template <class T>
struct Call {
  T alpha, beta;
  bool use_gemv = false;
  // GEMM: the call's order follows C's layout; an operand stored in the other order flips its flag.
  CBLAS_ORDER order = CblasRowMajor;
  CBLAS_TRANSPOSE fa = CblasNoTrans, fb = CblasNoTrans;
  int m = 0, n = 0, k = 0, lda = 1, ldb = 1, ldc = 1;
  // GEMV: y = alpha · op(M)·x + beta · y with M = A (one output column) or B (one output row),
  // M a row-major rows × cols matrix with leading dimension ldm.
  bool matrix_is_a = true;
  CBLAS_TRANSPOSE fm = CblasNoTrans;
  int rows = 0, cols = 0, ldm = 1, incx = 1, incy = 1, leny = 0;

  void operator()(const T* A, const T* B, T* C) const {
    if (!use_gemv) {
      gemm(order, fa, fb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
      return;
    }
    // beta = 0 must ignore y's old contents (NaN included) whatever BLAS does with 0 · NaN.
    if (beta == T(0))
      for (int i = 0; i < leny; ++i) C[int64_t(i) * incy] = T(0);
    if (matrix_is_a)
      gemv(fm, rows, cols, alpha, A, ldm, B, incx, beta, C, incy);
    else
      gemv(fm, rows, cols, alpha, B, ldm, A, incx, beta, C, incy);
  }
};

// The call for op(a)·op(b) into out (last two dims), all three with BLAS-compatible layouts.
template <class T>
Call<T> plan(const Tensor& a, const Tensor& b, const Tensor& out, bool ta, bool tb, T alpha,
             T beta) {
  const Layout la = matrix_layout(a), lb = matrix_layout(b), lo = matrix_layout(out);
  const int64_t m = out.size(-2), n = out.size(-1), k = ta ? a.size(-2) : a.size(-1);
  for (int64_t v : {m, n, k, la.ld, lb.ld, lo.ld, a.stride(-1), a.stride(-2), b.stride(-1),
                    b.stride(-2), out.stride(-1), out.stride(-2)})
    ENGINE_CHECK(v <= INT_MAX, "matmul: dimension or stride ", v, " exceeds the BLAS int range");
  Call<T> c{alpha, beta};
  auto flag = [](bool t) { return t ? CblasTrans : CblasNoTrans; };
  if (n == 1) {
    // out[:, 0] = op(A) · op(B)[:, 0]; stored A is (ta ? k×m : m×k).
    const int sr = int(ta ? k : m), sc = int(ta ? m : k);
    c.use_gemv = true;
    c.matrix_is_a = true;
    c.fm = la.row_major ? flag(ta) : flag(!ta);
    c.rows = la.row_major ? sr : sc;
    c.cols = la.row_major ? sc : sr;
    c.ldm = int(la.ld);
    c.incx = k > 1 ? int(tb ? b.stride(-1) : b.stride(-2)) : 1;
    c.incy = m > 1 ? int(out.stride(-2)) : 1;
    c.leny = int(m);
  } else if (m == 1) {
    // out[0, :] = op(B)ᵀ · op(A)[0, :]; stored B is (tb ? n×k : k×n).
    const int sr = int(tb ? n : k), sc = int(tb ? k : n);
    c.use_gemv = true;
    c.matrix_is_a = false;
    c.fm = lb.row_major ? flag(!tb) : flag(tb);
    c.rows = lb.row_major ? sr : sc;
    c.cols = lb.row_major ? sc : sr;
    c.ldm = int(lb.ld);
    c.incx = k > 1 ? int(ta ? a.stride(-2) : a.stride(-1)) : 1;
    c.incy = int(out.stride(-1));
    c.leny = int(n);
  } else {
    c.order = lo.row_major ? CblasRowMajor : CblasColMajor;
    c.fa = flag(ta != (la.row_major != lo.row_major));
    c.fb = flag(tb != (lb.row_major != lo.row_major));
    c.m = int(m);
    c.n = int(n);
    c.k = int(k);
    c.lda = int(la.ld);
    c.ldb = int(lb.ld);
    c.ldc = int(lo.ld);
  }
  return c;
}

// Threading policy for a batch of GEMMs when several threads are available:
//  (a) one GEMM after another, each threaded by OpenBLAS, or
//  (b) the batch spread over OpenMP threads, each GEMM single-threaded (OpenBLAS is set to one
//      thread for the loop and restored after).
// (b) is chosen when every thread gets whole GEMMs without much imbalance (batch >= threads and
// either the batch divides evenly or is >= 4× the threads) or when the GEMMs are small
// (M·N·K <= 128³: OpenBLAS does not thread below ~64³ and scales poorly a little above).
// Inside an enclosing parallel region, or when the whole batch is little work (< 2^18
// multiply-adds), the GEMMs just run one after another, untouched.
bool spread_over_batch(int64_t batch, int64_t mnk) {
  // A batch with little work in total stays serial: a parallel region costs microseconds (and
  // far more when a worker thread has been descheduled on a busy machine).
  if (batch < 2 || batch * mnk < (int64_t(1) << 18) || omp_in_parallel()) return false;
  const int64_t threads = omp_get_max_threads();
  if (threads < 2 || batch < threads) return false;
  const bool small = mnk <= (int64_t(1) << 21);
  return small || batch % threads == 0 || batch >= 4 * threads;
}

// call(A_p, B_p, C_p) for p < batch, where X_p = X + p·sx.
template <class T>
void run_batch(const Call<T>& call, int64_t batch, int64_t flops, const T* A, int64_t sa,
               const T* B, int64_t sb, T* C, int64_t sc) {
  if (spread_over_batch(batch, flops)) {
    BlasSingleThread single;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < batch; ++p) call(A + p * sa, B + p * sb, C + p * sc);
  } else {
    for (int64_t p = 0; p < batch; ++p) call(A + p * sa, B + p * sb, C + p * sc);
  }
}

// t [..., R, C] seen as one [P·R, C] matrix, if its leading dims merge into one stride.
bool fold_rows(const Tensor& t, Tensor& folded) {
  const int n = t.dim();
  int64_t rows = 1, expect = -1, row_stride = std::max<int64_t>(t.size(-1), 1);
  bool first = true;
  for (int d = n - 2; d >= 0; --d) {
    if (t.size(d) == 1) continue;
    if (first) {
      row_stride = t.stride(d);
      first = false;
    } else if (t.stride(d) != expect) {
      return false;
    }
    expect = t.stride(d) * t.size(d);
    rows *= t.size(d);
  }
  folded =
      Tensor(t.storage(), {rows, t.size(-1)}, {row_stride, t.stride(-1)}, t.offset(), t.dtype());
  return true;
}

// Strides of t's batch dims (all but the last two) right-aligned to `batch`; broadcast dims
// get stride 0.
Shape batch_strides(const Tensor& t, const Shape& batch) {
  Shape s;
  const int nb = t.dim() - 2, off = batch.size() - nb;
  for (int d = 0; d < batch.size(); ++d) {
    const int td = d - off;
    s.push_back(td < 0 || t.size(td) == 1 ? 0 : t.stride(td));
  }
  return s;
}

// Scales a strided tensor in place (the K = 0 case: no products, C = beta · C).
template <class T>
void scale(Tensor& out, T beta) {
  if (beta == T(0)) {
    out.zero_();
    return;
  }
  T* p = out.data<T>();
  engine::for_each_row<1>(out.shape(), {out.strides()},
                          [&](const int64_t* off, int64_t n, const int64_t* in) {
                            for (int64_t i = 0; i < n; ++i) p[off[0] + i * in[0]] *= beta;
                          });
}

bool has_broadcast_dim(const Tensor& t) {
  for (int d = 0; d < t.dim(); ++d)
    if (t.size(d) > 1 && t.stride(d) == 0) return true;
  return false;
}

// out = alpha · op(a)·op(b) + beta · out; shapes and dtypes already checked.
template <class T>
void run(Tensor& out_in, Tensor a, Tensor b, bool ta, bool tb, T alpha, T beta) {
  Tensor out = out_in;
  const int64_t k = ta ? a.size(-2) : a.size(-1);
  if (out.numel() == 0) return;
  if (k == 0) return scale<T>(out, beta);

  // Leading dims of a folded into M: one GEMM instead of one per batch element.
  if (b.dim() == 2 && a.dim() > 2 && !ta) {
    Tensor fa, fo;
    if (fold_rows(a, fa) && fold_rows(out, fo) && matrix_layout(fa).ok && matrix_layout(fo).ok) {
      a = fa;
      out = fo;
    }
  }
  if (!matrix_layout(a).ok) a = a.contiguous();
  if (!matrix_layout(b).ok) b = b.contiguous();
  const Layout lo = matrix_layout(out);
  if (!lo.ok) {
    // Irregular output: compute into a contiguous copy, then write back.
    Tensor tmp = Tensor::empty(out.shape(), out.dtype());
    if (beta != T(0)) tmp.copy_(out);
    run<T>(tmp, a, b, ta, tb, alpha, beta);
    out.copy_(tmp);
    return;
  }
  const Call<T> call = plan<T>(a, b, out, ta, tb, alpha, beta);
  const int64_t mnk = out.size(-2) * out.size(-1) * k;
  Shape batch;
  for (int d = 0; d + 2 < out.dim(); ++d) batch.push_back(out.size(d));
  const T* A = a.data<T>();
  const T* B = b.data<T>();
  T* C = out.data<T>();
  engine::for_each_row<3>(
      batch, {batch_strides(a, batch), batch_strides(b, batch), batch_strides(out, batch)},
      [&](const int64_t* off, int64_t cnt, const int64_t* in) {
        run_batch<T>(call, cnt, mnk, A + off[0], in[0], B + off[1], in[1], C + off[2], in[2]);
      });
}

// Checks the operands and returns the result's shape.
Shape result_shape(const char* op, const Tensor& a, const Tensor& b, bool ta, bool tb) {
  engine::check_defined(a, op, "a");
  engine::check_defined(b, op, "b");
  engine::check_cpu(a, op);
  engine::check_cpu(b, op);
  ENGINE_CHECK(engine::is_floating(a.dtype()), op, ": expected a floating dtype, got ",
               a.describe());
  engine::check_same_dtype(a, b, op);
  ENGINE_CHECK(a.dim() >= 2 && b.dim() >= 2, op, ": expected matrices (at least 2-D), got ",
               a.describe(), " and ", b.describe());
  const int64_t m = ta ? a.size(-1) : a.size(-2), ka = ta ? a.size(-2) : a.size(-1);
  const int64_t kb = tb ? b.size(-1) : b.size(-2), n = tb ? b.size(-2) : b.size(-1);
  ENGINE_CHECK(ka == kb, op, ": cannot multiply ", a.shape(), " and ", b.shape(),
               " (trans_a=", ta ? "true" : "false", ", trans_b=", tb ? "true" : "false",
               "): inner dimensions ", ka, " and ", kb, " differ");
  Shape ba, bb;
  for (int d = 0; d + 2 < a.dim(); ++d) ba.push_back(a.size(d));
  for (int d = 0; d + 2 < b.dim(); ++d) bb.push_back(b.size(d));
  Shape out = engine::broadcast_shapes(ba, bb, op);
  out.push_back(m);
  out.push_back(n);
  return out;
}

void dispatch(Tensor& out, const Tensor& a, const Tensor& b, bool ta, bool tb, double alpha,
              double beta) {
  if (out.dtype() == DType::bf16) {
    // bf16: computed in f32 and rounded once at the end.
    Tensor tmp = Tensor::empty(out.shape(), DType::f32);
    if (beta != 0) tmp.copy_(out);
    run<float>(tmp, a.to(DType::f32), b.to(DType::f32), ta, tb, float(alpha), float(beta));
    out.copy_(tmp);
    return;
  }
  engine::visit_float(out.dtype(), "matmul", [&](auto z) {
    using T = decltype(z);
    run<T>(out, a, b, ta, tb, T(alpha), T(beta));
  });
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  Tensor out = Tensor::empty(result_shape("matmul", a, b, trans_a, trans_b), a.dtype());
  dispatch(out, a, b, trans_a, trans_b, 1.0, 0.0);
  return out;
}

void matmul_out(Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                double alpha, double beta) {
  Shape s = result_shape("matmul_out", a, b, trans_a, trans_b);
  engine::check_defined(out, "matmul_out", "out");
  engine::check_cpu(out, "matmul_out");
  engine::check_same_dtype(out, a, "matmul_out");
  ENGINE_CHECK(out.shape() == s, "matmul_out: out is ", out.describe(), ", the product of ",
               a.describe(), " and ", b.describe(), " is ", s);
  ENGINE_CHECK(!has_broadcast_dim(out), "matmul_out: out ", out.describe(), " with strides ",
               out.strides(), " is a broadcast view; its elements cannot be written separately");
  dispatch(out, a, b, trans_a, trans_b, alpha, beta);
}

Tensor bmm(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  engine::check_defined(a, "bmm", "a");
  engine::check_defined(b, "bmm", "b");
  ENGINE_CHECK(a.dim() == 3 && b.dim() == 3,
               "bmm: expected 3-D operands [B, M, K] and [B, K, N], got ", a.describe(), " and ",
               b.describe());
  ENGINE_CHECK(a.size(0) == b.size(0) || a.size(0) == 1 || b.size(0) == 1, "bmm: batch sizes of ",
               a.shape(), " and ", b.shape(), " differ (and neither is 1)");
  Tensor out = Tensor::empty(result_shape("bmm", a, b, trans_a, trans_b), a.dtype());
  dispatch(out, a, b, trans_a, trans_b, 1.0, 0.0);
  return out;
}

}  // namespace kernels::cpu
