// CPU attention: the flash-attention tiling done with BLAS calls. Each task takes one block of
// bq query rows of one (batch, head) pair, computes the bq × Nk score block with one GEMM, does
// mask / row max / exp / sum in one pass over it, and multiplies by V with a second GEMM.
//
// With QK LayerNorm the rows of q̂ and k̂ are normalised into per-thread scratch right before
// the GEMMs that use them (flash attention's fusion: q̂, k̂ never exist as whole tensors).
//
// Memory: besides the outputs (out, lse and, with QK-LN, the row statistics), only per-thread
// scratch, never a B·H·N·N tensor:
//   forward   nthreads × (bq·Nk [+ (bq + Nk)·Dh + 2·Nk with QK-LN])
//   backward  nthreads × (2·bq·Nk + bq [+ (Nq + Nk)·Dh with QK-LN])
// with bq ≤ 128 query rows; e.g. N = 197, Dh = 64, f32 (bq = 99): 80 KB per thread forward
// (155 KB with QK-LN), 160 KB backward (260 KB). The backward recomputes P = exp(S − lse) block
// by block.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/attention.h"
#include "kernels/cpu/blas_threads.h"

namespace kernels::cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Small building blocks

inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m),
              int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}
inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
                 int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m),
              int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}

// exp written so that a loop over it vectorises (glibc's vector expf needs -ffast-math): Cephes'
// range reduction x = n·ln2 + r and degree-6 polynomial, within 1 ulp. For softmax inputs
// (x ≤ 88; here always ≤ about 0). Everything at or below -88 (where exp is under 2^-126), -inf
// from masked scores included, gives exactly 0. Written for GCC's default -ftrapping-math, under which floorf, float min/max and any
// float comparison that lets the compiler split the loop body keep a loop scalar: the lower clamp
// is an unsigned min on the bit pattern (for x ≤ 0, more negative = larger bits), n is rounded
// with the 1.5·2^23 shift trick, and 2^n for n = -127 is the bit pattern 0, i.e. +0.
inline float exp_vec(float x) {
  const float xc = std::bit_cast<float>(std::min(std::bit_cast<uint32_t>(x), 0xC2B00000u));
  const float kShift = 12582912.0f;  // 1.5·2^23: adding it rounds to the nearest integer
  const float t = xc * 1.44269504088896341f + kShift;
  const float n = t - kShift;
  float r = xc - n * 0.693359375f;  // ln2 split in two for an exact first product
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t ni = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(kShift);
  return p * std::bit_cast<float>((ni + 127) << 23);
}
inline double exp_vec(double x) { return std::exp(x); }  // f64 is for checks, not speed

constexpr double kNegInf = -std::numeric_limits<double>::infinity();


int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Query block size: at most 128 rows (bigger GEMMs run faster; the score block stays in L2),
// smaller (down to 16) while there are fewer than min_blocks blocks, and balanced so that e.g.
// 197 rows are 2 × 99 rather than 128 + 69.
int64_t query_block(int64_t nq, int64_t min_blocks) {
  int64_t bq = 128;
  while (bq > 16 && ceil_div(nq, bq) < min_blocks) bq /= 2;
  return ceil_div(nq, ceil_div(nq, bq));
}

// ---------------------------------------------------------------------------------------------
// Layouts: every [B, H, N, Dh] operand is read and written as unit-stride rows.

template <class T>
struct Rows {
  T* p;
  int64_t sb, sh, sn;  // element strides of batch, head, row
  T* pair(int64_t b, int64_t h) const { return p + b * sb + h * sh; }
};

// t itself when its rows are unit-stride and ordered for BLAS (row stride ≥ Dh), else a copy.
Tensor rows_readable(const Tensor& t) {
  const int64_t n = t.size(2), dh = t.size(3);
  const bool ok = (dh == 1 || t.stride(3) == 1) && (n == 1 || t.stride(2) >= dh);
  return ok ? t : t.contiguous();
}

template <class T>
Rows<T> rows_of(const Tensor& t) {
  const int64_t n = t.size(2), dh = t.size(3);
  return {static_cast<T*>(t.raw_data()), t.stride(0), t.stride(1), n == 1 ? dh : t.stride(2)};
}

// Token-major: heads inside tokens, i.e. a permuted view of [B, N, H, Dh] storage.
bool token_major(const Tensor& t) {
  return t.size(1) > 1 && t.size(2) > 1 && t.stride(3) == 1 && t.stride(1) < t.stride(2);
}

// A new [B, H, N, Dh] tensor laid out like `like` (token-major or plain), see the header.
Tensor empty_like_layout(const Tensor& like, DType dt) {
  const Shape& s = like.shape();
  if (token_major(like)) return Tensor::empty({s[0], s[2], s[1], s[3]}, dt).permute({0, 2, 1, 3});
  return Tensor::empty(s, dt);
}

// ---------------------------------------------------------------------------------------------
// Checks and the per-call problem description

struct Problem {
  int64_t B, H, Nq, Nk, Dh;
  double scale;
  bool causal, qk_norm;
  double eps;
  Tensor keep;  // contiguous i32 [B, Nk], nonzero = keep, when a key mask is given
};

// The key mask as contiguous i32 (nonzero = keep): an i32 mask is used as it is, any other dtype
// is converted (not through .to(i32), which would truncate a float 0.5 to 0).
Tensor keep_mask(const Tensor& m) {
  if (m.dtype() == DType::i32) return m.contiguous();
  const Tensor c = m.contiguous();
  Tensor out = Tensor::empty(m.shape(), DType::i32);
  int32_t* o = out.data<int32_t>();
  engine::visit_dtype(c.dtype(), [&](auto z) {
    using M = decltype(z);
    const M* src = c.data<M>();
    for (int64_t i = 0; i < c.numel(); ++i) o[i] = static_cast<double>(src[i]) != 0.0;
  });
  return out;
}

Problem check_and_describe(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                           const AttentionOptions& o) {
  engine::check_defined(q, op, "q");
  engine::check_defined(k, op, "k");
  engine::check_defined(v, op, "v");
  for (const Tensor* t : {&q, &k, &v}) engine::check_cpu(*t, op);
  engine::check_dim(q, 4, op, "q");
  engine::check_dim(k, 4, op, "k");
  engine::check_dim(v, 4, op, "v");
  ENGINE_CHECK(engine::is_floating(q.dtype()), op, ": expected floating q, got ", q.describe());
  ENGINE_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype(), op,
               ": q, k, v must share a dtype, got ", q.describe(), ", ", k.describe(), ", ",
               v.describe());
  ENGINE_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3), op,
               ": q ", q.describe(), " and k ", k.describe(),
               " must agree in batch, heads and head dim ([B, H, N, Dh])");
  ENGINE_CHECK(v.shape() == k.shape(), op, ": v ", v.describe(), " must have the shape of k ",
               k.describe());
  Problem p;
  p.B = q.size(0);
  p.H = q.size(1);
  p.Nq = q.size(2);
  p.Nk = k.size(2);
  p.Dh = q.size(3);
  ENGINE_CHECK(p.Dh >= 1, op, ": head dim of q ", q.describe(), " must be at least 1");
  p.scale = o.scale ? *o.scale : 1.0 / std::sqrt(double(p.Dh));
  ENGINE_CHECK(std::isfinite(p.scale), op, ": scale ", p.scale, " is not finite");
  p.causal = o.causal;
  ENGINE_CHECK(!p.causal || p.Nq == p.Nk, op, ": causal attention needs as many queries as keys, "
               "got q ", q.describe(), " and k ", k.describe());
  p.qk_norm = o.qk_norm;
  p.eps = o.qk_norm_eps;
  if (o.qk_norm) {
    ENGINE_CHECK(o.qk_norm_weight.defined(), op, ": qk_norm needs qk_norm_weight of shape [",
                 p.Dh, "]");
    engine::check_cpu(o.qk_norm_weight, op);
    ENGINE_CHECK(o.qk_norm_weight.shape() == Shape{p.Dh} &&
                     engine::is_floating(o.qk_norm_weight.dtype()),
                 op, ": qk_norm_weight ", o.qk_norm_weight.describe(),
                 " must be a floating vector of the head dim [", p.Dh, "] (q ", q.describe(), ")");
  } else {
    ENGINE_CHECK(!o.qk_norm_weight.defined(), op,
                 ": qk_norm_weight given but qk_norm is false");
  }
  if (o.key_mask.defined()) {
    engine::check_cpu(o.key_mask, op);
    ENGINE_CHECK(o.key_mask.shape() == Shape({p.B, p.Nk}), op, ": key_mask ",
                 o.key_mask.describe(), " must be [batch, keys] = [", p.B, ", ", p.Nk,
                 "] for k ", k.describe());
    p.keep = keep_mask(o.key_mask);
  }
  return p;
}

// ---------------------------------------------------------------------------------------------
// QK LayerNorm, fused into the attention tasks: q̂ and k̂ rows are normalised into per-thread
// scratch right before their GEMMs, so they are never written to memory as whole tensors.

// dst rows (contiguous) = LN(x rows)·w for n rows. Computes mean/rstd, or with have_stats uses
// the saved ones: the backward thereby recomputes exactly the forward's q̂ and k̂.
template <class T>
void layernorm_rows(const T* x, int64_t xsn, int64_t n, int64_t Dh, const T* w, double eps,
                    bool have_stats, T* mean, T* rstd, T* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const T* xr = x + i * xsn;
    if (!have_stats) {
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < Dh; ++j) s += double(xr[j]);
      const double mu = s / double(Dh);
      double ss = 0;
#pragma omp simd reduction(+ : ss)
      for (int64_t j = 0; j < Dh; ++j) ss += (double(xr[j]) - mu) * (double(xr[j]) - mu);
      mean[i] = T(mu);
      rstd[i] = T(1.0 / std::sqrt(ss / double(Dh) + eps));
    }
    const T mu = mean[i], rs = rstd[i];
    T* d = dst + i * Dh;
#pragma omp simd
    for (int64_t j = 0; j < Dh; ++j) d[j] = (xr[j] - mu) * rs * w[j];
  }
}

// In place on n rows: d holds dL/d(x̂·w) on entry and dL/dx on exit; dw (double, Dh)
// accumulates dL/dw = Σ d ∘ x̂.
template <class T>
void layernorm_rows_backward(const T* x, int64_t xsn, T* d, int64_t dsn, int64_t n, int64_t Dh,
                             const T* w, const T* mean, const T* rstd, double* dw) {
  for (int64_t i = 0; i < n; ++i) {
    const T* xr = x + i * xsn;
    T* dr = d + i * dsn;
    const T mu = mean[i], rs = rstd[i];
    double a = 0, c = 0;
#pragma omp simd reduction(+ : a, c)
    for (int64_t j = 0; j < Dh; ++j) {
      const T xh = (xr[j] - mu) * rs;
      const T gx = dr[j] * w[j];
      a += double(gx);
      c += double(gx * xh);
      dw[j] += double(dr[j] * xh);
    }
    const T am = T(a / double(Dh)), cm = T(c / double(Dh));
#pragma omp simd
    for (int64_t j = 0; j < Dh; ++j) {
      const T xh = (xr[j] - mu) * rs;
      dr[j] = rs * (dr[j] * w[j] - am - xh * cm);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward

template <class T>
void forward_impl(const Problem& p, const Tensor& q, const Tensor& k, const Tensor& v,
                  const Tensor& w, AttentionResult& res, const Tensor& out) {
  const Rows<const T> Q = rows_of<const T>(q), K = rows_of<const T>(k), V = rows_of<const T>(v);
  const Rows<T> O = rows_of<T>(out);
  T* lse = res.lse.data<T>();
  const int64_t B = p.B, H = p.H, Nq = p.Nq, Nk = p.Nk, Dh = p.Dh;
  const T* wp = p.qk_norm ? w.data<T>() : nullptr;

  const bool par = B * H * Nq * Nk * Dh > (1 << 15);
  const int nthreads = par ? omp_get_max_threads() : 1;
  // Enough (pair, block) tasks to balance the threads: about 4 per thread.
  const int64_t bq = query_block(Nq, ceil_div(4 * nthreads, B * H));
  const int64_t nqb = ceil_div(Nq, bq);
  // Per thread: scores [bq, Nk]; with qk_norm also q̂ [bq, Dh], k̂ [Nk, Dh] and k statistics.
  const int64_t per_thread = bq * Nk + (p.qk_norm ? bq * Dh + Nk * Dh + 2 * Nk : 0);
  Tensor scratch = Tensor::empty({nthreads, per_thread}, engine::dtype_v<T>);
  T* const scr = scratch.data<T>();
  const int32_t* keep = p.keep.defined() ? p.keep.data<int32_t>() : nullptr;
  const T scale = T(p.scale);

  BlasSingleThread single(par);
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t task = 0; task < B * H * nqb; ++task) {
    const int64_t bh = task / nqb, b = bh / H, h = bh % H, blk = task % nqb;
    const int64_t i0 = blk * bq, m = std::min(bq, Nq - i0);
    const int64_t nk = p.causal ? std::min(Nk, i0 + m) : Nk;  // later keys are invisible
    T* S = scr + int64_t(omp_get_thread_num()) * per_thread;
    const int32_t* kb = keep ? keep + b * Nk : nullptr;
    T* lrow = lse + bh * Nq + i0;

    const T* qb = Q.pair(b, h) + i0 * Q.sn;
    const T* kp = K.pair(b, h);
    int64_t qld = Q.sn, kld = K.sn;
    if (p.qk_norm) {
      T* qh = S + bq * Nk;
      T* kh = qh + bq * Dh;
      T* kstat = kh + Nk * Dh;
      layernorm_rows(qb, Q.sn, m, Dh, wp, p.eps, false, res.q_mean.data<T>() + bh * Nq + i0,
                     res.q_rstd.data<T>() + bh * Nq + i0, qh);
      // Every block of a pair normalises the same keys; the last one (which sees all Nk keys,
      // causal or not) also stores their statistics.
      const bool last = blk == nqb - 1;
      layernorm_rows(kp, K.sn, nk, Dh, wp, p.eps, false,
                     last ? res.k_mean.data<T>() + bh * Nk : kstat,
                     last ? res.k_rstd.data<T>() + bh * Nk : kstat + Nk, kh);
      qb = qh;
      kp = kh;
      qld = kld = Dh;
    }

    gemm(false, true, m, nk, Dh, scale, qb, qld, kp, kld, T(0), S, nk);
    for (int64_t r = 0; r < m; ++r) {
      // Loops are kept free of branches so that they vectorise: masked keys become -inf, keys
      // [lim, nk) are causally invisible and only zero-filled at the end.
      T* s = S + r * nk;
      const int64_t lim = p.causal ? i0 + r + 1 : nk;
      if (kb) {
#pragma omp simd
        for (int64_t j = 0; j < lim; ++j) s[j] = kb[j] ? s[j] : T(kNegInf);
      }
      T mx = T(kNegInf);  // a value select: std::max returns a reference, which blocks simd
#pragma omp simd reduction(max : mx)
      for (int64_t j = 0; j < lim; ++j) mx = s[j] > mx ? s[j] : mx;
      if (mx == T(kNegInf)) {  // every key masked: zero output, lse = -inf
        std::fill(s, s + nk, T(0));
        lrow[r] = T(kNegInf);
        continue;
      }
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < lim; ++j) {
        const T e = exp_vec(s[j] - mx);
        s[j] = e;
        sum += e;
      }
      const T inv = T(1) / sum;
#pragma omp simd
      for (int64_t j = 0; j < lim; ++j) s[j] *= inv;
      std::fill(s + lim, s + nk, T(0));
      lrow[r] = mx + std::log(sum);
    }
    gemm(false, false, m, Dh, nk, T(1), S, nk, V.pair(b, h), V.sn, T(0), O.pair(b, h) + i0 * O.sn,
         O.sn);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward

template <class T>
void backward_impl(const Problem& p, const Tensor& g, const Tensor& q, const Tensor& k,
                   const Tensor& v, const Tensor& w, const Tensor& out, const AttentionResult& fwd,
                   const Tensor& dq, const Tensor& dk, const Tensor& dv, Tensor& dw_pairs) {
  const Rows<const T> Q0 = rows_of<const T>(q), K0 = rows_of<const T>(k), V = rows_of<const T>(v),
                      G = rows_of<const T>(g), O = rows_of<const T>(out);
  const Rows<T> dQ = rows_of<T>(dq), dK = rows_of<T>(dk), dV = rows_of<T>(dv);
  const Tensor lse_t = fwd.lse.contiguous();
  const T* lse = lse_t.data<T>();
  const int64_t B = p.B, H = p.H, Nq = p.Nq, Nk = p.Nk, Dh = p.Dh;

  // Parallel over (b, h) pairs so dK, dV of a pair accumulate over its query blocks without
  // atomics. A single pair runs serially with BLAS free to use its own threads.
  const bool par = B * H > 1 && B * H * Nq * Nk * Dh > (1 << 15);
  const int nthreads = par ? omp_get_max_threads() : 1;
  const int64_t bq = query_block(Nq, 1);
  // Per thread: P (then dS) and dP [bq, Nk], D [bq]; with qk_norm q̂ [Nq, Dh] and k̂ [Nk, Dh].
  const int64_t per_thread = 2 * bq * Nk + bq + (p.qk_norm ? (Nq + Nk) * Dh : 0);
  Tensor scratch = Tensor::empty({nthreads, per_thread}, engine::dtype_v<T>);
  T* const scr = scratch.data<T>();
  const int32_t* keep = p.keep.defined() ? p.keep.data<int32_t>() : nullptr;
  const T scale = T(p.scale);
  const T* wp = p.qk_norm ? w.data<T>() : nullptr;
  double* dwp = p.qk_norm ? dw_pairs.data<double>() : nullptr;

  BlasSingleThread single(par);
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    T* P = scr + int64_t(omp_get_thread_num()) * per_thread;  // P, then dS
    T* dP = P + bq * Nk;
    T* D = dP + bq * Nk;  // rowsum(g ∘ out) of the block
    const int32_t* kb = keep ? keep + b * Nk : nullptr;

    // q̂, k̂ of this pair, recomputed from the saved statistics (or q, k themselves).
    const T* qp = Q0.pair(b, h);
    const T* kp = K0.pair(b, h);
    int64_t qld = Q0.sn, kld = K0.sn;
    if (p.qk_norm) {
      T* qh = D + bq;
      T* kh = qh + Nq * Dh;
      layernorm_rows(qp, Q0.sn, Nq, Dh, wp, p.eps, true, fwd.q_mean.data<T>() + bh * Nq,
                     fwd.q_rstd.data<T>() + bh * Nq, qh);
      layernorm_rows(kp, K0.sn, Nk, Dh, wp, p.eps, true, fwd.k_mean.data<T>() + bh * Nk,
                     fwd.k_rstd.data<T>() + bh * Nk, kh);
      qp = qh;
      kp = kh;
      qld = kld = Dh;
    }

    T* dkp = dK.pair(b, h);
    T* dvp = dV.pair(b, h);
    for (int64_t j = 0; j < Nk; ++j) {
      std::fill(dkp + j * dK.sn, dkp + j * dK.sn + Dh, T(0));
      std::fill(dvp + j * dV.sn, dvp + j * dV.sn + Dh, T(0));
    }
    for (int64_t i0 = 0; i0 < Nq; i0 += bq) {
      const int64_t m = std::min(bq, Nq - i0);
      const int64_t nk = p.causal ? std::min(Nk, i0 + m) : Nk;
      const T* qb = qp + i0 * qld;
      const T* gb = G.pair(b, h) + i0 * G.sn;
      const T* ob = O.pair(b, h) + i0 * O.sn;
      const T* lrow = lse + bh * Nq + i0;
      // P = exp(scale · q̂ k̂ᵀ − lse), zero where masked.
      gemm(false, true, m, nk, Dh, scale, qb, qld, kp, kld, T(0), P, nk);
      for (int64_t r = 0; r < m; ++r) {
        T* s = P + r * nk;
        const T l = lrow[r];
        const T* gr = gb + r * G.sn;
        const T* orow = ob + r * O.sn;
        T d = 0;
#pragma omp simd reduction(+ : d)
        for (int64_t j = 0; j < Dh; ++j) d += gr[j] * orow[j];
        D[r] = d;
        if (l == T(kNegInf)) {  // fully masked row: P = 0
          std::fill(s, s + nk, T(0));
          continue;
        }
        const int64_t lim = p.causal ? i0 + r + 1 : nk;  // keys [lim, nk) are causally masked
#pragma omp simd
        for (int64_t j = 0; j < lim; ++j) s[j] = exp_vec(s[j] - l);
        std::fill(s + lim, s + nk, T(0));
        if (kb) {
#pragma omp simd
          for (int64_t j = 0; j < lim; ++j) s[j] = kb[j] ? s[j] : T(0);
        }
      }
      // dV += Pᵀ g;  dP = g vᵀ;  dS = P ∘ (dP − D);  dq̂ = scale·dS k̂;  dk̂ += scale·dSᵀ q̂.
      gemm(true, false, nk, Dh, m, T(1), P, nk, gb, G.sn, T(1), dvp, dV.sn);
      gemm(false, true, m, nk, Dh, T(1), gb, G.sn, V.pair(b, h), V.sn, T(0), dP, nk);
      for (int64_t r = 0; r < m; ++r) {
        T* s = P + r * nk;
        const T* dp = dP + r * nk;
        const T d = D[r];
#pragma omp simd
        for (int64_t j = 0; j < nk; ++j) s[j] = s[j] * (dp[j] - d);
      }
      gemm(false, false, m, Dh, nk, scale, P, nk, kp, kld, T(0), dQ.pair(b, h) + i0 * dQ.sn,
           dQ.sn);
      gemm(true, false, nk, Dh, m, scale, P, nk, qb, qld, T(1), dkp, dK.sn);
    }
    if (p.qk_norm) {  // through q̂ = LN(q)·w and k̂ = LN(k)·w; dw partial of this pair
      double* dwr = dwp + bh * Dh;
      std::fill(dwr, dwr + Dh, 0.0);
      layernorm_rows_backward(Q0.pair(b, h), Q0.sn, dQ.pair(b, h), dQ.sn, Nq, Dh, wp,
                              fwd.q_mean.data<T>() + bh * Nq, fwd.q_rstd.data<T>() + bh * Nq, dwr);
      layernorm_rows_backward(K0.pair(b, h), K0.sn, dkp, dK.sn, Nk, Dh, wp,
                              fwd.k_mean.data<T>() + bh * Nk, fwd.k_rstd.data<T>() + bh * Nk, dwr);
    }
  }
}

// Compute dtype of an input dtype: bf16 runs in f32.
DType compute_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

}  // namespace

// ---------------------------------------------------------------------------------------------

AttentionResult attention_forward(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                  const AttentionOptions& opts) {
  const Problem p = check_and_describe("attention", q_in, k_in, v_in, opts);
  const DType dt = compute_dtype(q_in.dtype());
  const Tensor q = rows_readable(q_in.to(dt)), k = rows_readable(k_in.to(dt)),
               v = rows_readable(v_in.to(dt));
  const Tensor w = p.qk_norm ? opts.qk_norm_weight.to(dt).contiguous() : Tensor();

  AttentionResult res;
  Tensor out = empty_like_layout(q_in, dt);
  res.lse = Tensor::empty({p.B, p.H, p.Nq}, dt);
  if (p.qk_norm) {
    res.q_mean = Tensor::empty({p.B, p.H, p.Nq}, dt);
    res.q_rstd = Tensor::empty({p.B, p.H, p.Nq}, dt);
    res.k_mean = Tensor::empty({p.B, p.H, p.Nk}, dt);
    res.k_rstd = Tensor::empty({p.B, p.H, p.Nk}, dt);
  }
  if (p.Nk == 0 || out.numel() == 0) {  // no keys: every row is "fully masked"
    out.zero_();
    res.lse.fill_(kNegInf);
    for (Tensor* t : {&res.q_mean, &res.q_rstd, &res.k_mean, &res.k_rstd})
      if (t->defined()) t->zero_();
  } else {
    engine::visit_float(dt, "attention", [&](auto z) {
      forward_impl<decltype(z)>(p, q, k, v, w, res, out);
    });
  }
  if (q_in.dtype() == dt) {
    res.out = out;
  } else {
    res.out = empty_like_layout(q_in, q_in.dtype());
    res.out.copy_(out);
  }
  return res;
}

AttentionGrads attention_backward(const Tensor& g_in, const Tensor& q_in, const Tensor& k_in,
                                  const Tensor& v_in, const AttentionOptions& opts,
                                  const AttentionResult& fwd) {
  const char* op = "attention_backward";
  const Problem p = check_and_describe(op, q_in, k_in, v_in, opts);
  engine::check_defined(g_in, op, "g_out");
  engine::check_defined(fwd.out, op, "out");
  engine::check_defined(fwd.lse, op, "lse");
  ENGINE_CHECK(g_in.shape() == q_in.shape() && fwd.out.shape() == q_in.shape(), op,
               ": g_out ", g_in.describe(), " and out ", fwd.out.describe(),
               " must have the shape of q ", q_in.describe());
  ENGINE_CHECK(fwd.lse.shape() == Shape({p.B, p.H, p.Nq}), op, ": lse ", fwd.lse.describe(),
               " must be [", p.B, ", ", p.H, ", ", p.Nq, "]");
  const DType dt = compute_dtype(q_in.dtype());
  ENGINE_CHECK(fwd.lse.dtype() == dt, op, ": lse ", fwd.lse.describe(), " must be ",
               engine::dtype_name(dt), " for q ", q_in.describe());
  if (p.qk_norm) {
    for (const Tensor* t : {&fwd.q_mean, &fwd.q_rstd, &fwd.k_mean, &fwd.k_rstd})
      ENGINE_CHECK(t->defined() && t->dtype() == dt && t->is_contiguous(), op,
                   ": qk_norm needs the forward's LayerNorm statistics (", engine::dtype_name(dt), ")");
    ENGINE_CHECK(fwd.q_mean.shape() == fwd.lse.shape() && fwd.q_rstd.shape() == fwd.lse.shape() &&
                     fwd.k_mean.shape() == Shape({p.B, p.H, p.Nk}) &&
                     fwd.k_rstd.shape() == fwd.k_mean.shape(),
                 op, ": LayerNorm statistics ", fwd.q_mean.describe(), " / ", fwd.k_mean.describe(),
                 " do not match q ", q_in.describe(), " and k ", k_in.describe());
  }
  const Tensor q = rows_readable(q_in.to(dt)), k = rows_readable(k_in.to(dt)),
               v = rows_readable(v_in.to(dt)), g = rows_readable(g_in.to(dt)),
               out = rows_readable(fwd.out.to(dt));
  const Tensor w = p.qk_norm ? opts.qk_norm_weight.to(dt).contiguous() : Tensor();

  Tensor dq = empty_like_layout(q_in, dt), dk = empty_like_layout(k_in, dt),
         dv = empty_like_layout(v_in, dt);
  Tensor dw_pairs = p.qk_norm ? Tensor::empty({p.B * p.H, p.Dh}, DType::f64) : Tensor();
  if (p.B * p.H * p.Nq == 0 || p.Nk == 0) {
    dq.zero_();
    dk.zero_();
    dv.zero_();
    if (p.qk_norm) dw_pairs.zero_();
  } else {
    engine::visit_float(dt, op, [&](auto z) {
      backward_impl<decltype(z)>(p, g, q, k, v, w, out, fwd, dq, dk, dv, dw_pairs);
    });
  }

  AttentionGrads res;
  auto back = [](const Tensor& t, const Tensor& like) {
    if (t.dtype() == like.dtype()) return t;
    Tensor r = empty_like_layout(like, like.dtype());
    r.copy_(t);
    return r;
  };
  res.dq = back(dq, q_in);
  res.dk = back(dk, k_in);
  res.dv = back(dv, v_in);
  if (p.qk_norm) {
    // Pairs reduced in a fixed order: the same bits for any thread count.
    Tensor acc = Tensor::zeros({p.Dh}, DType::f64);
    double* a = acc.data<double>();
    const double* pp = dw_pairs.data<double>();
    for (int64_t bh = 0; bh < p.B * p.H; ++bh)
      for (int64_t j = 0; j < p.Dh; ++j) a[j] += pp[bh * p.Dh + j];
    res.dqk_norm_weight = acc.to(opts.qk_norm_weight.dtype());
  }
  return res;
}

}  // namespace kernels::cpu
