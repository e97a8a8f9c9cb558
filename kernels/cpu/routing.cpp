// CPU routing ops. The softmaxes reuse the softmax family's fused row / strip kernels; top-k
// selection reuses kernels::cpu::topk (same total order); the sorts by expert or by destination
// row are one stable counting sort (per-thread histograms + a scan when large), so every gather
// and combine walks contiguous rows, threads own disjoint output rows, and sums run in a fixed
// order (no atomics).
#include "kernels/routing.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/elementwise.h"
#include "kernels/softmax.h"
#include "kernels/topk.h"

namespace kernels::cpu {
namespace {

constexpr int64_t kParallelMin = int64_t(1) << 15;  // elements touched

// f32/f64 (bf16 read as f32), contiguous, with the expected rank.
Tensor stat_input(const Tensor& x, const char* op, const char* arg, int ndim) {
  engine::check_defined(x, op, arg);
  engine::check_cpu(x, op);
  ENGINE_CHECK(engine::is_floating(x.dtype()), op, ": expected a floating-point '", arg, "', got ",
               x.describe());
  if (ndim >= 0) engine::check_dim(x, ndim, op, arg);
  return (x.dtype() == DType::bf16 ? x.to(DType::f32) : x).contiguous();
}

// i32/i64 index tensor as a contiguous i64 tensor.
Tensor index_input(const Tensor& t, const char* op, const char* arg) {
  engine::check_defined(t, op, arg);
  engine::check_cpu(t, op);
  ENGINE_CHECK(t.dtype() == DType::i64 || t.dtype() == DType::i32, op, ": '", arg,
               "' must be i64 or i32, got ", t.describe());
  return t.to(DType::i64).contiguous();
}

// Throws on the first index outside [0, limit); branch-free scan first so it vectorises.
void check_range(const int64_t* p, int64_t n, int64_t limit, const char* op) {
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) bad |= (p[i] < 0) | (p[i] >= limit);
  if (!bad) return;
  for (int64_t i = 0; i < n; ++i)
    ENGINE_CHECK(p[i] >= 0 && p[i] < limit, op, ": index ", p[i], " at position ", i,
                 " is out of range [0, ", limit, ")");
}

double scalar_of(const Tensor& g, const char* op) {
  engine::check_defined(g, op, "g");
  engine::check_cpu(g, op);
  ENGINE_CHECK(g.numel() == 1 && engine::is_floating(g.dtype()), op,
               ": expected a one-element floating-point loss gradient, got ", g.describe());
  return g.item();
}

DType compute_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

// Stable counting sort of key[0..n) into `bins` buckets: counts[b], offsets[b] (exclusive scan,
// offsets[bins] = n), perm = positions ordered by (key, position). Large inputs: each thread
// counts its chunk, a scan in (bucket, thread) order gives every thread its own cursor per
// bucket, and the scatter keeps the order. Same result for any thread count.
void stable_bucket_sort(const int64_t* key, int64_t n, int64_t bins, int64_t* counts,
                        int64_t* offsets, int64_t* perm) {
  const int max_threads = n >= (int64_t(1) << 16) ? omp_get_max_threads() : 1;
  if (max_threads <= 1) {
    std::fill(counts, counts + bins, 0);
    for (int64_t i = 0; i < n; ++i) counts[key[i]]++;
    int64_t run = 0;
    for (int64_t b = 0; b < bins; ++b) {
      offsets[b] = run;
      run += counts[b];
    }
    offsets[bins] = n;
    std::vector<int64_t> cur(offsets, offsets + bins);
    for (int64_t i = 0; i < n; ++i) perm[cur[key[i]]++] = i;
    return;
  }
  std::vector<int64_t> h(size_t(max_threads) * size_t(bins), 0);
#pragma omp parallel num_threads(max_threads)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
    int64_t* mine = h.data() + size_t(t) * size_t(bins);
    for (int64_t i = lo; i < hi; ++i) mine[key[i]]++;
#pragma omp barrier
#pragma omp single
    {
      int64_t run = 0;
      for (int64_t b = 0; b < bins; ++b) {
        offsets[b] = run;
        for (int u = 0; u < nt; ++u) {
          int64_t& c = h[size_t(u) * size_t(bins) + size_t(b)];
          const int64_t cnt = c;
          c = run;
          run += cnt;
        }
        counts[b] = run - offsets[b];
      }
      offsets[bins] = n;
    }
    for (int64_t i = lo; i < hi; ++i) perm[mine[key[i]]++] = i;
  }
}

// out[n] = Σ_{j: rows[j] = n} w_j · y[j] with w_j = gates[j] (or 1), j ascending. y is
// contiguous [A, D] of T (bf16: accumulated in f32), gates of the compute type C.
template <class T, class C>
void gather_sum(const T* y, const int64_t* rows, const C* gates, int64_t A, int64_t D, int64_t N,
                T* out) {
  std::vector<int64_t> counts(static_cast<size_t>(N)), offsets(size_t(N) + 1),
      order(static_cast<size_t>(A));
  stable_bucket_sort(rows, A, N, counts.data(), offsets.data(), order.data());
  const bool par = (A + N) * D >= kParallelMin;
#pragma omp parallel if (par)
  {
    std::vector<C> acc(static_cast<size_t>(D));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      C* a = acc.data();
      std::fill(a, a + D, C(0));
      for (int64_t i = offsets[n]; i < offsets[n + 1]; ++i) {
        const int64_t j = order[i];
        const T* yr = y + j * D;
        if (gates) {
          const C w = gates[j];
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) a[d] += w * C(yr[d]);
        } else {
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) a[d] += C(yr[d]);
        }
      }
      T* o = out + n * D;
      for (int64_t d = 0; d < D; ++d) o[d] = T(a[d]);
    }
  }
}

// Calls f(T{}, C{}) for the storage type T of a floating dtype and its compute type C.
template <class F>
void visit_storage(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::f32:
      return f(float{}, float{});
    case DType::f64:
      return f(double{}, double{});
    case DType::bf16:
      return f(bf16{}, float{});
    default:
      ENGINE_FAIL(op, ": expected a floating-point tensor, got dtype ", engine::dtype_name(t));
  }
}

Shape with_rows(const Shape& s, int64_t n) {
  Shape out = s;
  out[0] = n;
  return out;
}

}  // namespace

Tensor router_softmax(const Tensor& logits) {
  return softmax(stat_input(logits, "router_softmax", "logits", 2), 1);
}

Tensor router_softmax_backward(const Tensor& g, const Tensor& probs) {
  const char* op = "router_softmax_backward";
  Tensor gc = stat_input(g, op, "g", 2);
  Tensor pc = stat_input(probs, op, "probs", 2);
  engine::check_same_shape(g, probs, op);
  return softmax_backward(gc, pc.to(gc.dtype()), 1);
}

TokenChoice topk_per_token(const Tensor& probs, int64_t k) {
  const char* op = "topk_per_token";
  engine::check_defined(probs, op, "probs");
  engine::check_cpu(probs, op);
  engine::check_dim(probs, 2, op, "probs");
  ENGINE_CHECK(engine::is_floating(probs.dtype()), op, ": expected floating-point probs, got ",
               probs.describe());
  ENGINE_CHECK(k >= 1 && k <= probs.size(1), op, ": k = ", k, " is out of range [1, ",
               probs.size(1), "] for probs ", probs.describe());
  TopK r = topk(probs, k, 1, true);
  return {r.indices, r.values};
}

Tensor topk_per_token_backward(const Tensor& dgates, const Tensor& expert_ids, int64_t E) {
  const char* op = "topk_per_token_backward";
  Tensor dg = stat_input(dgates, op, "dgates", 2);
  Tensor ids = index_input(expert_ids, op, "expert_ids");
  ENGINE_CHECK(expert_ids.shape() == dgates.shape(), op, ": expert_ids ", expert_ids.describe(),
               " does not match dgates ", dgates.describe());
  ENGINE_CHECK(E >= 1, op, ": num_experts must be >= 1, got ", E);
  const int64_t T = dg.size(0), k = dg.size(1);
  const int64_t* id = ids.data<int64_t>();
  check_range(id, ids.numel(), E, op);
  Tensor out = Tensor::zeros({T, E}, dg.dtype());
  engine::visit_float(dg.dtype(), op, [&](auto z) {
    using C = decltype(z);
    const C* g = dg.data<C>();
    C* o = out.data<C>();
#pragma omp parallel for if (T * (E + k) >= kParallelMin) schedule(static)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t s = 0; s < k; ++s) o[t * E + id[t * k + s]] += g[t * k + s];
  });
  return out;
}

ExpertChoice topk_per_expert(const Tensor& probs, int64_t C) {
  const char* op = "topk_per_expert";
  engine::check_defined(probs, op, "probs");
  engine::check_cpu(probs, op);
  engine::check_dim(probs, 3, op, "probs");
  ENGINE_CHECK(engine::is_floating(probs.dtype()), op, ": expected floating-point probs, got ",
               probs.describe());
  const int64_t G = probs.size(0), t = probs.size(1), E = probs.size(2);
  ENGINE_CHECK(C >= 1 && C <= t, op, ": capacity C = ", C, " is out of range [1, ", t,
               "] (tokens per group) for probs ", probs.describe());
  TopK r = topk(probs, C, 1, true);  // [G, C, E], best first along C
  ExpertChoice ec{Tensor::empty({G, E, C}, DType::i64), Tensor::empty({G, E, C}, probs.dtype())};
  const int64_t* ri = r.indices.data<int64_t>();
  int64_t* ti = ec.token_ids.data<int64_t>();
  engine::visit_dtype(probs.dtype(), [&](auto z) {
    using T = decltype(z);
    const T* rv = r.values.data<T>();
    T* gv = ec.gates.data<T>();
    for (int64_t g = 0; g < G; ++g)
      for (int64_t e = 0; e < E; ++e)
        for (int64_t c = 0; c < C; ++c) {
          const int64_t src = (g * C + c) * E + e, dst = (g * E + e) * C + c;
          ti[dst] = g * t + ri[src];
          gv[dst] = rv[src];
        }
  });
  return ec;
}

Tensor topk_per_expert_backward(const Tensor& dgates, const Tensor& token_ids, int64_t t) {
  const char* op = "topk_per_expert_backward";
  Tensor dg = stat_input(dgates, op, "dgates", 3);
  Tensor ids = index_input(token_ids, op, "token_ids");
  ENGINE_CHECK(token_ids.shape() == dgates.shape(), op, ": token_ids ", token_ids.describe(),
               " does not match dgates ", dgates.describe());
  ENGINE_CHECK(t >= 1, op, ": tokens_per_group must be >= 1, got ", t);
  const int64_t G = dg.size(0), E = dg.size(1), C = dg.size(2);
  const int64_t* id = ids.data<int64_t>();
  for (int64_t g = 0; g < G; ++g)
    for (int64_t i = 0; i < E * C; ++i) {
      const int64_t v = id[g * E * C + i];
      ENGINE_CHECK(v >= g * t && v < (g + 1) * t, op, ": token index ", v, " at position ",
                   g * E * C + i, " is out of range [", g * t, ", ", (g + 1) * t, ") of group ", g);
    }
  Tensor out = Tensor::zeros({G, t, E}, dg.dtype());
  engine::visit_float(dg.dtype(), op, [&](auto z) {
    using T = decltype(z);
    const T* gp = dg.data<T>();
    T* o = out.data<T>();
    for (int64_t g = 0; g < G; ++g)
      for (int64_t e = 0; e < E; ++e)
        for (int64_t c = 0; c < C; ++c) {
          const int64_t src = (g * E + e) * C + c;
          o[(id[src]) * E + e] += gp[src];  // id = g·t + i: row g·t + i of [G·t, E]
        }
  });
  return out;
}

DispatchPlan make_dispatch(const Tensor& expert_ids, int64_t E) {
  const char* op = "make_dispatch";
  Tensor ids = index_input(expert_ids, op, "expert_ids");
  ENGINE_CHECK(expert_ids.dim() == 1 || expert_ids.dim() == 2, op,
               ": expert_ids must be [A] or [T, k], got ", expert_ids.describe());
  ENGINE_CHECK(E >= 1, op, ": num_experts must be >= 1, got ", E);
  const int64_t A = ids.numel();
  const int64_t k = expert_ids.dim() == 2 ? expert_ids.size(1) : 1;
  const int64_t* id = ids.data<int64_t>();
  check_range(id, A, E, op);
  DispatchPlan p{Tensor::empty({E}, DType::i64), Tensor::empty({E + 1}, DType::i64),
                 Tensor::empty({A}, DType::i64), Tensor::empty({A}, DType::i64)};
  int64_t* perm = p.perm.data<int64_t>();
  stable_bucket_sort(id, A, E, p.counts.data<int64_t>(), p.offsets.data<int64_t>(), perm);
  int64_t* rows = p.rows.data<int64_t>();
  for (int64_t j = 0; j < A; ++j) rows[j] = perm[j] / k;
  return p;
}

Tensor permute_rows(const Tensor& x_in, const Tensor& rows_in) {
  const char* op = "permute_rows";
  engine::check_defined(x_in, op, "x");
  engine::check_cpu(x_in, op);
  ENGINE_CHECK(x_in.dim() >= 1, op, ": x must have a row dimension, got ", x_in.describe());
  Tensor rows = index_input(rows_in, op, "rows");
  const int64_t N = x_in.size(0), A = rows.numel();
  const int64_t* r = rows.data<int64_t>();
  check_range(r, A, N, op);
  Tensor out = Tensor::empty(with_rows(x_in.shape(), A), x_in.dtype());
  if (out.numel() == 0) return out;
  const Tensor x = x_in.contiguous();
  const size_t row_bytes = size_t(x.numel() / N) * x.element_size();
  const char* src = static_cast<const char*>(x.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
#pragma omp parallel for if (int64_t(row_bytes) * A >= 4 * kParallelMin) schedule(static)
  for (int64_t j = 0; j < A; ++j)
    std::memcpy(dst + j * row_bytes, src + r[j] * row_bytes, row_bytes);
  return out;
}

Tensor permute_rows_backward(const Tensor& g_in, const Tensor& rows_in, int64_t N) {
  const char* op = "permute_rows_backward";
  engine::check_defined(g_in, op, "g");
  engine::check_cpu(g_in, op);
  ENGINE_CHECK(g_in.dim() >= 1, op, ": g must have a row dimension, got ", g_in.describe());
  ENGINE_CHECK(N >= 0, op, ": negative number of rows ", N);
  Tensor rows = index_input(rows_in, op, "rows");
  const int64_t A = rows.numel();
  ENGINE_CHECK(g_in.size(0) == A, op, ": g ", g_in.describe(), " has ", g_in.size(0), " rows for ",
               A, " indices");
  const int64_t* r = rows.data<int64_t>();
  check_range(r, A, N, op);
  Tensor out = Tensor::empty(with_rows(g_in.shape(), N), g_in.dtype());
  if (out.numel() == 0) return out;
  const Tensor g = g_in.contiguous();
  const int64_t D = N ? out.numel() / N : 0;
  visit_storage(g.dtype(), op, [&](auto zt, auto zc) {
    using T = decltype(zt);
    using C = decltype(zc);
    gather_sum<T, C>(g.data<T>(), r, nullptr, A, D, N, out.data<T>());
  });
  return out;
}

Tensor combine_rows(const Tensor& y_in, const Tensor& rows_in, const Tensor& gates_in, int64_t N) {
  const char* op = "combine_rows";
  engine::check_defined(y_in, op, "y");
  engine::check_cpu(y_in, op);
  engine::check_defined(gates_in, op, "gates");
  engine::check_cpu(gates_in, op);
  ENGINE_CHECK(y_in.dim() >= 1, op, ": y must have a row dimension, got ", y_in.describe());
  ENGINE_CHECK(N >= 0, op, ": negative number of rows ", N);
  Tensor rows = index_input(rows_in, op, "rows");
  const int64_t A = rows.numel();
  ENGINE_CHECK(y_in.size(0) == A && gates_in.numel() == A, op, ": y ", y_in.describe(), ", rows ",
               rows_in.describe(), " and gates ", gates_in.describe(),
               " must have the same number of rows");
  ENGINE_CHECK(engine::is_floating(y_in.dtype()) && gates_in.dtype() == compute_dtype(y_in.dtype()),
               op, ": gates must be ", engine::dtype_name(compute_dtype(y_in.dtype())), " for y ",
               y_in.describe(), ", got ", gates_in.describe());
  const int64_t* r = rows.data<int64_t>();
  check_range(r, A, N, op);
  Tensor out = Tensor::empty(with_rows(y_in.shape(), N), y_in.dtype());
  if (out.numel() == 0) return out;
  const Tensor y = y_in.contiguous(), gates = gates_in.contiguous();
  const int64_t D = out.numel() / N;
  visit_storage(y.dtype(), op, [&](auto zt, auto zc) {
    using T = decltype(zt);
    using C = decltype(zc);
    gather_sum<T, C>(y.data<T>(), r, gates.data<C>(), A, D, N, out.data<T>());
  });
  return out;
}

CombineGrads combine_rows_backward(const Tensor& dout_in, const Tensor& y_in, const Tensor& rows_in,
                                   const Tensor& gates_in) {
  const char* op = "combine_rows_backward";
  for (const Tensor* t : {&dout_in, &y_in, &gates_in}) {
    engine::check_defined(*t, op, t == &dout_in ? "dout" : t == &y_in ? "y" : "gates");
    engine::check_cpu(*t, op);
  }
  engine::check_same_dtype(dout_in, y_in, op);
  ENGINE_CHECK(y_in.dim() >= 1 && dout_in.dim() == y_in.dim(), op, ": dout ", dout_in.describe(),
               " and y ", y_in.describe(), " must be [rows, ...] of the same row shape");
  for (int d = 1; d < y_in.dim(); ++d)
    ENGINE_CHECK(dout_in.size(d) == y_in.size(d), op, ": dout ", dout_in.describe(), " and y ",
                 y_in.describe(), " differ in the row shape");
  Tensor rows = index_input(rows_in, op, "rows");
  const int64_t A = rows.numel(), N = dout_in.size(0);
  ENGINE_CHECK(y_in.size(0) == A && gates_in.numel() == A, op, ": y ", y_in.describe(), ", rows ",
               rows_in.describe(), " and gates ", gates_in.describe(),
               " must have the same number of rows");
  ENGINE_CHECK(engine::is_floating(y_in.dtype()) && gates_in.dtype() == compute_dtype(y_in.dtype()),
               op, ": gates must be ", engine::dtype_name(compute_dtype(y_in.dtype())), " for y ",
               y_in.describe(), ", got ", gates_in.describe());
  const int64_t* r = rows.data<int64_t>();
  check_range(r, A, N, op);
  CombineGrads res{Tensor::empty(y_in.shape(), y_in.dtype()),
                   Tensor::empty(gates_in.shape(), gates_in.dtype())};
  if (A == 0) return res;
  const Tensor dout = dout_in.contiguous(), y = y_in.contiguous(), gates = gates_in.contiguous();
  const int64_t D = y.numel() / A;
  visit_storage(y.dtype(), op, [&](auto zt, auto zc) {
    using T = decltype(zt);
    using C = decltype(zc);
    const T* dp = dout.data<T>();
    const T* yp = y.data<T>();
    const C* gp = gates.data<C>();
    T* dy = res.dy.data<T>();
    C* dg = res.dgates.data<C>();
#pragma omp parallel for if (A * D >= kParallelMin) schedule(static)
    for (int64_t j = 0; j < A; ++j) {
      const T* o = dp + r[j] * D;
      const T* yr = yp + j * D;
      T* d = dy + j * D;
      const C w = gp[j];
      C s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < D; ++c) {
        s += C(yr[c]) * C(o[c]);
        d[c] = T(w * C(o[c]));
      }
      dg[j] = s;
    }
  });
  return res;
}

Tensor router_z_loss(const Tensor& logits_in) {
  const char* op = "router_z_loss";
  const Tensor x = stat_input(logits_in, op, "logits", 2);
  const int64_t T = x.size(0), E = x.size(1);
  ENGINE_CHECK(T >= 1 && E >= 1, op, ": needs at least one token and one expert, got ",
               logits_in.describe());
  Tensor out;
  engine::visit_float(x.dtype(), op, [&](auto z) {
    using C = decltype(z);
    const C* p = x.data<C>();
    std::vector<C> lse(static_cast<size_t>(T));
#pragma omp parallel for if (T * E >= kParallelMin) schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      const C* q = p + t * E;
      C m = -std::numeric_limits<C>::infinity();
      for (int64_t e = 0; e < E; ++e) m = q[e] > m ? q[e] : m;
      const C c = std::isfinite(m) ? m : C(0);
      C s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t e = 0; e < E; ++e) s += math::exp<C>(q[e] - c);
      lse[t] = c + std::log(s);
    }
    double acc = 0;  // fixed order, double: the same loss whatever the thread count
    for (int64_t t = 0; t < T; ++t) acc += double(lse[t]) * double(lse[t]);
    out = Tensor::full({}, acc / double(T), x.dtype());
  });
  return out;
}

Tensor router_z_loss_backward(const Tensor& g, const Tensor& logits_in) {
  const char* op = "router_z_loss_backward";
  const double gv = scalar_of(g, op);
  const Tensor x = stat_input(logits_in, op, "logits", 2).to(compute_dtype(g.dtype()));
  const int64_t T = x.size(0), E = x.size(1);
  Tensor out = Tensor::empty({T, E}, x.dtype());
  if (out.numel() == 0) return out;
  engine::visit_float(x.dtype(), op, [&](auto z) {
    using C = decltype(z);
    const C* p = x.data<C>();
    C* o = out.data<C>();
#pragma omp parallel for if (T * E >= kParallelMin) schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      const C* q = p + t * E;
      C* d = o + t * E;
      C m = -std::numeric_limits<C>::infinity();
      for (int64_t e = 0; e < E; ++e) m = q[e] > m ? q[e] : m;
      const C c = std::isfinite(m) ? m : C(0);
      C s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t e = 0; e < E; ++e) {
        d[e] = math::exp<C>(q[e] - c);
        s += d[e];
      }
      const C lse = c + std::log(s);
      const C scale = C(gv * 2.0 / double(T)) * lse / s;  // g · 2 lse / T · softmax
#pragma omp simd
      for (int64_t e = 0; e < E; ++e) d[e] *= scale;
    }
  });
  return out;
}

LoadBalance load_balance_stats(const Tensor& probs_in, const Tensor& expert_ids, int64_t E) {
  const char* op = "load_balance_stats";
  const Tensor probs = stat_input(probs_in, op, "probs", 2);
  Tensor ids = index_input(expert_ids, op, "expert_ids");
  const int64_t T = probs.size(0);
  ENGINE_CHECK(probs.size(1) == E && E >= 1, op, ": probs ", probs_in.describe(), " for ", E,
               " experts");
  ENGINE_CHECK(T >= 1, op, ": needs at least one token, got probs ", probs_in.describe());
  ENGINE_CHECK((expert_ids.dim() == 1 || expert_ids.dim() == 2) && expert_ids.size(0) == T, op,
               ": expert_ids ", expert_ids.describe(), " must be [T] or [T, k] for probs ",
               probs_in.describe());
  const int64_t A = ids.numel();
  const int64_t* id = ids.data<int64_t>();
  check_range(id, A, E, op);
  LoadBalance lb;
  engine::visit_float(probs.dtype(), op, [&](auto z) {
    using C = decltype(z);
    std::vector<int64_t> cnt(size_t(E), 0);
    for (int64_t a = 0; a < A; ++a) cnt[id[a]]++;
    std::vector<double> col(size_t(E), 0.0);
    const C* p = probs.data<C>();
    for (int64_t t = 0; t < T; ++t)
#pragma omp simd
      for (int64_t e = 0; e < E; ++e) col[e] += double(p[t * E + e]);
    lb.f = Tensor::empty({E}, probs.dtype());
    lb.P = Tensor::empty({E}, probs.dtype());
    C* f = lb.f.data<C>();
    C* P = lb.P.data<C>();
    double loss = 0;
    for (int64_t e = 0; e < E; ++e) {
      const double fe = A ? double(cnt[e]) / double(A) : 0.0, pe = col[e] / double(T);
      f[e] = C(fe);
      P[e] = C(pe);
      loss += fe * pe;
    }
    lb.loss = Tensor::full({}, double(E) * loss, probs.dtype());
  });
  return lb;
}

Tensor load_balance_backward(const Tensor& g, const Tensor& f_in, int64_t T) {
  const char* op = "load_balance_backward";
  const double gv = scalar_of(g, op);
  const Tensor f = stat_input(f_in, op, "f", 1).to(compute_dtype(g.dtype()));
  ENGINE_CHECK(T >= 0, op, ": negative number of tokens ", T);
  const int64_t E = f.numel();
  Tensor out = Tensor::empty({T, E}, f.dtype());
  if (out.numel() == 0) return out;
  engine::visit_float(f.dtype(), op, [&](auto z) {
    using C = decltype(z);
    std::vector<C> row(static_cast<size_t>(E));
    const C* fp = f.data<C>();
    for (int64_t e = 0; e < E; ++e) row[e] = C(gv * double(E) / double(T)) * fp[e];
    C* o = out.data<C>();
    for (int64_t t = 0; t < T; ++t) std::memcpy(o + t * E, row.data(), size_t(E) * sizeof(C));
  });
  return out;
}

Tensor dispatch_softmax(const Tensor& logits) {
  return softmax(stat_input(logits, "dispatch_softmax", "logits", 3), 1);
}

Tensor dispatch_softmax_backward(const Tensor& g, const Tensor& y) {
  const char* op = "dispatch_softmax_backward";
  Tensor gc = stat_input(g, op, "g", 3);
  Tensor yc = stat_input(y, op, "y", 3);
  engine::check_same_shape(g, y, op);
  return softmax_backward(gc, yc.to(gc.dtype()), 1);
}

}  // namespace kernels::cpu
