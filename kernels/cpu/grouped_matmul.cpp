#include "kernels/grouped_matmul.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <climits>
#include <vector>

namespace kernels::cpu {
namespace {

// OpenBLAS runs single-threaded inside our parallel regions (its own threads would oversubscribe
// the cores) and gets its setting back on exit. kernels/cpu/attention.cpp has the same guard;
// the two belong in one shared header.
class BlasSingleThread {
 public:
  explicit BlasSingleThread(bool on) : on_(on) {
    if (on_) {
      prev_ = openblas_get_num_threads();
      openblas_set_num_threads(1);
    }
  }
  ~BlasSingleThread() {
    if (on_) openblas_set_num_threads(prev_);
  }
  BlasSingleThread(const BlasSingleThread&) = delete;
  BlasSingleThread& operator=(const BlasSingleThread&) = delete;

 private:
  bool on_;
  int prev_ = 1;
};

void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, const float* a, int lda,
          const float* b, int ldb, float* c, int ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}
void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, const double* a, int lda,
          const double* b, int ldb, double* c, int ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, 1.0, a, lda, b, ldb, 0.0, c, ldc);
}

// A row-major matrix view (element (i, j) at p[i·ld + j]) of a tensor whose last dim is
// contiguous, or a contiguous copy when it is not. `ld` covers the 2-D case; for [E, R, C]
// weights `batch` is the distance between experts.
template <class T>
struct RowMajor {
  Tensor keep;  // owns the copy, if one was made
  const T* p = nullptr;
  int64_t ld = 0, batch = 0;
  bool transposed = false;  // stored as the transpose of the logical matrix (strides [1, ld])
};

// Last two dims of t: row-major with ld >= cols, or (when allow_transposed) each matrix stored
// transposed (strides [1, ld]); anything else is copied to contiguous.
template <class T>
RowMajor<T> as_row_major(const Tensor& t, bool allow_transposed) {
  RowMajor<T> r;
  const int64_t rows = t.size(-2), cols = t.size(-1);
  const int64_t s0 = t.stride(-2), s1 = t.stride(-1);
  const int64_t sb = t.dim() == 3 ? t.stride(0) : 0;
  if ((cols <= 1 || s1 == 1) && (rows <= 1 || s0 >= std::max<int64_t>(cols, 1))) {
    r.keep = t;
    r.ld = rows <= 1 ? std::max<int64_t>(cols, 1) : s0;
    r.batch = sb;
  } else if (allow_transposed && (rows <= 1 || s0 == 1) && (cols <= 1 || s1 >= rows)) {
    r.keep = t;
    r.transposed = true;
    r.ld = cols <= 1 ? std::max<int64_t>(rows, 1) : s1;
    r.batch = sb;
  } else {
    r.keep = t.contiguous();
    r.ld = std::max<int64_t>(cols, 1);
    r.batch = rows * cols;
  }
  r.p = r.keep.template data<T>();
  for (int64_t v : {rows, cols, r.ld})
    ENGINE_CHECK(v <= INT_MAX, "grouped_matmul: dimension or stride ", v,
                 " exceeds the BLAS int range");
  return r;
}

// Expert e's rows start at offsets[e]; checks counts (i64 [E], >= 0, summing to `rows`).
std::vector<int64_t> row_offsets(const Tensor& counts, int64_t experts, int64_t rows,
                                 const char* op, const Tensor& x) {
  engine::check_defined(counts, op, "counts");
  engine::check_cpu(counts, op);
  ENGINE_CHECK(counts.dtype() == DType::i64 && counts.dim() == 1 && counts.size(0) == experts, op,
               ": counts must be i64 [", experts, "] (one row count per expert), got ",
               counts.describe());
  const std::vector<int64_t> c = counts.to_vector<int64_t>();
  std::vector<int64_t> off(size_t(experts) + 1, 0);
  for (int64_t e = 0; e < experts; ++e) {
    ENGINE_CHECK(c[e] >= 0, op, ": counts[", e, "] = ", c[e], " is negative");
    ENGINE_CHECK(c[e] <= INT_MAX, op, ": counts[", e, "] = ", c[e], " exceeds the BLAS int range");
    off[e + 1] = off[e] + c[e];
  }
  ENGINE_CHECK(off[experts] == rows, op, ": counts sum to ", off[experts], " but ", x.describe(),
               " has ", rows, " rows");
  return off;
}

// Threading policy: experts spread over OpenMP threads (each GEMM single-threaded) when there
// are at least as many non-empty experts as threads and either the GEMMs are small (OpenBLAS
// hardly threads below ~128³) or the largest expert is at most 1.25× a thread's fair share (with
// dynamic scheduling the loop then takes at most ~1.25× the ideal time); otherwise one expert
// after another, each GEMM threaded by OpenBLAS. Little work in total (or a caller already in a
// parallel region) runs serially untouched.
bool spread_over_experts(const std::vector<int64_t>& work) {
  int64_t total = 0, largest = 0, busy = 0;
  for (int64_t w : work) {
    total += w;
    largest = std::max(largest, w);
    busy += w > 0;
  }
  if (busy < 2 || total < (int64_t(1) << 18) || omp_in_parallel()) return false;
  const int64_t threads = omp_get_max_threads();
  if (threads < 2 || busy < threads) return false;
  const bool small = largest <= (int64_t(1) << 21);
  return small || 4 * largest * threads <= 5 * total;
}

// Runs job(e) for every expert under the policy above; dynamic scheduling because experts
// differ in size.
template <class Job>
void for_each_expert(const std::vector<int64_t>& work, const Job& job) {
  const int64_t experts = int64_t(work.size());
  if (spread_over_experts(work)) {
    BlasSingleThread single(true);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t e = 0; e < experts; ++e) job(e);
  } else {
    for (int64_t e = 0; e < experts; ++e) job(e);
  }
}

CBLAS_TRANSPOSE flag(bool t) { return t ? CblasTrans : CblasNoTrans; }

template <class T>
void forward(const Tensor& x, const Tensor& w, const std::vector<int64_t>& off, bool trans_w,
             Tensor& y) {
  const int64_t experts = w.size(0), k = x.size(1), n = y.size(1);
  const RowMajor<T> X = as_row_major<T>(x, false);
  const RowMajor<T> W = as_row_major<T>(w, true);
  // Stored transposed, w[e] flips its flag: op(w[e]) is the same logical matrix.
  const bool tw = trans_w != W.transposed;
  T* Y = y.data<T>();
  std::vector<int64_t> work(experts);
  for (int64_t e = 0; e < experts; ++e) work[e] = (off[e + 1] - off[e]) * k * n;
  for_each_expert(work, [&](int64_t e) {
    const int64_t rows = off[e + 1] - off[e];
    if (rows == 0) return;
    T* out = Y + off[e] * n;
    if (k == 0) {
      std::fill(out, out + rows * n, T(0));
      return;
    }
    gemm(CblasNoTrans, flag(tw), int(rows), int(n), int(k), X.p + off[e] * X.ld, int(X.ld),
         W.p + e * W.batch, int(W.ld), out, int(n));
  });
}

// dw[e] (r × c) = a_eᵀ · b_e with a [T, r], b [T, c] and the rows of expert e.
template <class T>
void wgrad(const Tensor& a, const Tensor& b, const std::vector<int64_t>& off, Tensor& dw) {
  const int64_t experts = dw.size(0), r = dw.size(1), c = dw.size(2);
  const RowMajor<T> A = as_row_major<T>(a, false);
  const RowMajor<T> B = as_row_major<T>(b, false);
  T* D = dw.data<T>();
  std::vector<int64_t> work(experts);
  for (int64_t e = 0; e < experts; ++e) work[e] = (off[e + 1] - off[e]) * r * c;
  for_each_expert(work, [&](int64_t e) {
    const int64_t rows = off[e + 1] - off[e];
    T* out = D + e * r * c;
    if (rows == 0 || r == 0 || c == 0) {
      std::fill(out, out + r * c, T(0));  // no rows: a zero gradient
      return;
    }
    gemm(CblasTrans, CblasNoTrans, int(r), int(c), int(rows), A.p + off[e] * A.ld, int(A.ld),
         B.p + off[e] * B.ld, int(B.ld), out, int(c));
  });
}

void check_float_pair(const Tensor& a, const Tensor& b, const char* op, const char* an,
                      const char* bn) {
  engine::check_defined(a, op, an);
  engine::check_defined(b, op, bn);
  engine::check_cpu(a, op);
  engine::check_cpu(b, op);
  ENGINE_CHECK(engine::is_floating(a.dtype()), op, ": expected a floating dtype, got ",
               a.describe());
  engine::check_same_dtype(a, b, op);
}

}  // namespace

Tensor grouped_matmul(const Tensor& x, const Tensor& w, const Tensor& counts, bool trans_w) {
  const char* op = "grouped_matmul";
  check_float_pair(x, w, op, "x", "w");
  ENGINE_CHECK(x.dim() == 2 && w.dim() == 3, op, ": expected x [T, K] and w [E, K, N]",
               trans_w ? " (or [E, N, K] with trans_w)" : "", ", got ", x.describe(), " and ",
               w.describe());
  const int64_t k = trans_w ? w.size(2) : w.size(1), n = trans_w ? w.size(1) : w.size(2);
  ENGINE_CHECK(x.size(1) == k, op, ": x ", x.describe(), " does not match w ", w.describe(),
               " (trans_w=", trans_w ? "true" : "false", "): K is ", x.size(1), " vs ", k);
  const std::vector<int64_t> off = row_offsets(counts, w.size(0), x.size(0), op, x);
  Tensor y = Tensor::empty({x.size(0), n}, x.dtype());
  if (y.numel() == 0) return y;
  if (x.dtype() == DType::bf16) {
    Tensor y32 = Tensor::empty(y.shape(), DType::f32);
    forward<float>(x.to(DType::f32), w.to(DType::f32), off, trans_w, y32);
    y.copy_(y32);
    return y;
  }
  engine::visit_float(x.dtype(), op, [&](auto z) {
    using T = decltype(z);
    forward<T>(x, w, off, trans_w, y);
  });
  return y;
}

Tensor grouped_matmul_wgrad(const Tensor& x, const Tensor& dy, const Tensor& counts, bool trans_w) {
  const char* op = "grouped_matmul_wgrad";
  check_float_pair(x, dy, op, "x", "dy");
  ENGINE_CHECK(x.dim() == 2 && dy.dim() == 2 && x.size(0) == dy.size(0), op,
               ": expected x [T, K] and dy [T, N] with the same rows, got ", x.describe(), " and ",
               dy.describe());
  engine::check_defined(counts, op, "counts");
  ENGINE_CHECK(counts.dim() == 1, op, ": counts must be i64 [E], got ", counts.describe());
  const int64_t experts = counts.size(0);
  const std::vector<int64_t> off = row_offsets(counts, experts, x.size(0), op, x);
  // trans_w: dw[e] = dy_eᵀ · x_e, the same product with the operands swapped.
  const Tensor& a = trans_w ? dy : x;
  const Tensor& b = trans_w ? x : dy;
  Tensor dw = Tensor::empty({experts, a.size(1), b.size(1)}, x.dtype());
  if (dw.numel() == 0) return dw;
  if (x.dtype() == DType::bf16) {
    Tensor d32 = Tensor::empty(dw.shape(), DType::f32);
    wgrad<float>(a.to(DType::f32), b.to(DType::f32), off, d32);
    dw.copy_(d32);
    return dw;
  }
  engine::visit_float(x.dtype(), op, [&](auto z) {
    using T = decltype(z);
    wgrad<T>(a, b, off, dw);
  });
  return dw;
}

}  // namespace kernels::cpu
