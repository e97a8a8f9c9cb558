// Reference routing ops: plain loops in f64 over std::vectors, written from the definitions in
// kernels/routing.h without the fast code's tricks (full stable sorts, direct sums). Tests only.
#include "kernels/routing.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace kernels::ref {
namespace {

using Vec = std::vector<double>;
using IVec = std::vector<int64_t>;

Tensor f64(const Vec& v, const Shape& s) { return Tensor::from_vector(v, s, DType::f64); }
Tensor i64(const IVec& v, const Shape& s) { return Tensor::from_vector(v, s, DType::i64); }

void check_index(int64_t v, int64_t pos, int64_t limit, const char* op) {
  ENGINE_CHECK(v >= 0 && v < limit, op, ": index ", v, " at position ", pos,
               " is out of range [0, ", limit, ")");
}

// "a before b" for values descending, NaN largest, ties (and -0/+0) to the lower index.
bool before(double va, int64_t ia, double vb, int64_t ib) {
  const bool na = std::isnan(va), nb = std::isnan(vb);
  if (na != nb) return na;
  if (!na && va != vb) return va > vb;
  return ia < ib;
}

// The k first positions of v in that order (a full sort).
IVec best(const Vec& v, int64_t k) {
  IVec idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return before(v[a], a, v[b], b); });
  idx.resize(static_cast<size_t>(k));
  return idx;
}

Vec softmax_of(const Vec& v) {
  double m = -INFINITY;
  for (double e : v) m = std::max(m, e);
  double s = 0;
  for (double e : v) s += std::exp(e - m);
  Vec out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = std::exp(v[i] - m) / s;
  return out;
}

double logsumexp(const Vec& v) {
  double m = -INFINITY;
  for (double e : v) m = std::max(m, e);
  double s = 0;
  for (double e : v) s += std::exp(e - m);
  return m + std::log(s);
}

Vec row(const Vec& x, int64_t r, int64_t n) {
  return Vec(x.begin() + r * n, x.begin() + (r + 1) * n);
}

int64_t row_size(const Tensor& t) { return t.size(0) ? t.numel() / t.size(0) : 0; }

Shape with_rows(const Shape& s, int64_t n) {
  Shape out = s;
  out[0] = n;
  return out;
}

}  // namespace

Tensor router_softmax(const Tensor& logits) {
  engine::check_dim(logits, 2, "router_softmax", "logits");
  const int64_t T = logits.size(0), E = logits.size(1);
  Vec x = logits.to_vector<double>(), out(x.size());
  for (int64_t t = 0; t < T; ++t) {
    Vec p = softmax_of(row(x, t, E));
    std::copy(p.begin(), p.end(), out.begin() + t * E);
  }
  return f64(out, logits.shape());
}

Tensor router_softmax_backward(const Tensor& g, const Tensor& probs) {
  const int64_t T = probs.size(0), E = probs.size(1);
  Vec gv = g.to_vector<double>(), p = probs.to_vector<double>(), out(p.size());
  for (int64_t t = 0; t < T; ++t) {
    double dot = 0;
    for (int64_t e = 0; e < E; ++e) dot += gv[t * E + e] * p[t * E + e];
    for (int64_t e = 0; e < E; ++e) out[t * E + e] = p[t * E + e] * (gv[t * E + e] - dot);
  }
  return f64(out, probs.shape());
}

TokenChoice topk_per_token(const Tensor& probs, int64_t k) {
  ENGINE_CHECK(k >= 1 && k <= probs.size(1), "topk_per_token: k = ", k, " is out of range [1, ",
               probs.size(1), "]");
  const int64_t T = probs.size(0), E = probs.size(1);
  Vec p = probs.to_vector<double>(), gates;
  IVec ids;
  for (int64_t t = 0; t < T; ++t) {
    Vec r = row(p, t, E);
    for (int64_t e : best(r, k)) {
      ids.push_back(e);
      gates.push_back(r[e]);
    }
  }
  return {i64(ids, {T, k}), f64(gates, {T, k})};
}

Tensor topk_per_token_backward(const Tensor& dgates, const Tensor& expert_ids, int64_t E) {
  const int64_t T = dgates.size(0), k = dgates.size(1);
  Vec dg = dgates.to_vector<double>(), out(size_t(T * E), 0.0);
  IVec id = expert_ids.to_vector<int64_t>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t s = 0; s < k; ++s) {
      check_index(id[t * k + s], t * k + s, E, "topk_per_token_backward");
      out[t * E + id[t * k + s]] += dg[t * k + s];
    }
  return f64(out, {T, E});
}

ExpertChoice topk_per_expert(const Tensor& probs, int64_t C) {
  const int64_t G = probs.size(0), t = probs.size(1), E = probs.size(2);
  ENGINE_CHECK(C >= 1 && C <= t, "topk_per_expert: capacity C = ", C, " is out of range [1, ", t,
               "]");
  Vec p = probs.to_vector<double>(), gates;
  IVec ids;
  for (int64_t g = 0; g < G; ++g)
    for (int64_t e = 0; e < E; ++e) {
      Vec col(static_cast<size_t>(t));
      for (int64_t i = 0; i < t; ++i) col[i] = p[(g * t + i) * E + e];
      for (int64_t i : best(col, C)) {
        ids.push_back(g * t + i);
        gates.push_back(col[i]);
      }
    }
  return {i64(ids, {G, E, C}), f64(gates, {G, E, C})};
}

Tensor topk_per_expert_backward(const Tensor& dgates, const Tensor& token_ids, int64_t t) {
  const int64_t G = dgates.size(0), E = dgates.size(1), C = dgates.size(2);
  Vec dg = dgates.to_vector<double>(), out(size_t(G * t * E), 0.0);
  IVec id = token_ids.to_vector<int64_t>();
  for (int64_t g = 0; g < G; ++g)
    for (int64_t e = 0; e < E; ++e)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t pos = (g * E + e) * C + c, i = id[pos] - g * t;
        ENGINE_CHECK(i >= 0 && i < t, "topk_per_expert_backward: token index ", id[pos],
                     " at position ", pos, " is out of range");
        out[(g * t + i) * E + e] += dg[pos];
      }
  return f64(out, {G, t, E});
}

DispatchPlan make_dispatch(const Tensor& expert_ids, int64_t E) {
  IVec id = expert_ids.to_vector<int64_t>();
  const int64_t A = int64_t(id.size());
  const int64_t k = expert_ids.dim() == 2 ? expert_ids.size(1) : 1;
  IVec counts(size_t(E), 0), offsets(size_t(E) + 1, 0), perm, rows;
  for (int64_t a = 0; a < A; ++a) {
    check_index(id[a], a, E, "make_dispatch");
    counts[id[a]]++;
  }
  for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + counts[e];
  for (int64_t e = 0; e < E; ++e)  // expert by expert, assignments in their order
    for (int64_t a = 0; a < A; ++a)
      if (id[a] == e) {
        perm.push_back(a);
        rows.push_back(a / k);
      }
  return {i64(counts, {E}), i64(offsets, {E + 1}), i64(perm, {A}), i64(rows, {A})};
}

Tensor permute_rows(const Tensor& x, const Tensor& rows) {
  const int64_t N = x.size(0), D = row_size(x);
  Vec xv = x.to_vector<double>(), out;
  IVec r = rows.to_vector<int64_t>();
  for (int64_t j = 0; j < int64_t(r.size()); ++j) {
    check_index(r[j], j, N, "permute_rows");
    for (int64_t d = 0; d < D; ++d) out.push_back(xv[r[j] * D + d]);
  }
  return f64(out, with_rows(x.shape(), int64_t(r.size())));
}

Tensor permute_rows_backward(const Tensor& g, const Tensor& rows, int64_t N) {
  const int64_t D = row_size(g);
  Vec gv = g.to_vector<double>(), out(size_t(N * D), 0.0);
  IVec r = rows.to_vector<int64_t>();
  for (int64_t j = 0; j < int64_t(r.size()); ++j) {
    check_index(r[j], j, N, "permute_rows_backward");
    for (int64_t d = 0; d < D; ++d) out[r[j] * D + d] += gv[j * D + d];
  }
  return f64(out, with_rows(g.shape(), N));
}

Tensor combine_rows(const Tensor& y, const Tensor& rows, const Tensor& gates, int64_t N) {
  const int64_t D = row_size(y);
  Vec yv = y.to_vector<double>(), gv = gates.to_vector<double>(), out(size_t(N * D), 0.0);
  IVec r = rows.to_vector<int64_t>();
  for (int64_t j = 0; j < int64_t(r.size()); ++j) {
    check_index(r[j], j, N, "combine_rows");
    for (int64_t d = 0; d < D; ++d) out[r[j] * D + d] += gv[j] * yv[j * D + d];
  }
  return f64(out, with_rows(y.shape(), N));
}

CombineGrads combine_rows_backward(const Tensor& dout, const Tensor& y, const Tensor& rows,
                                   const Tensor& gates) {
  const int64_t D = row_size(y), N = dout.size(0);
  Vec dv = dout.to_vector<double>(), yv = y.to_vector<double>(), gv = gates.to_vector<double>();
  IVec r = rows.to_vector<int64_t>();
  Vec dy(yv.size()), dg(r.size());
  for (int64_t j = 0; j < int64_t(r.size()); ++j) {
    check_index(r[j], j, N, "combine_rows_backward");
    double s = 0;
    for (int64_t d = 0; d < D; ++d) {
      dy[j * D + d] = gv[j] * dv[r[j] * D + d];
      s += yv[j * D + d] * dv[r[j] * D + d];
    }
    dg[j] = s;
  }
  return {f64(dy, y.shape()), f64(dg, gates.shape())};
}

Tensor router_z_loss(const Tensor& logits) {
  const int64_t T = logits.size(0), E = logits.size(1);
  Vec x = logits.to_vector<double>();
  double s = 0;
  for (int64_t t = 0; t < T; ++t) {
    const double l = logsumexp(row(x, t, E));
    s += l * l;
  }
  return Tensor::full({}, s / double(T), DType::f64);
}

Tensor router_z_loss_backward(const Tensor& g, const Tensor& logits) {
  const int64_t T = logits.size(0), E = logits.size(1);
  const double gv = g.item();
  Vec x = logits.to_vector<double>(), out(x.size());
  for (int64_t t = 0; t < T; ++t) {
    Vec r = row(x, t, E);
    const double l = logsumexp(r);
    Vec p = softmax_of(r);
    for (int64_t e = 0; e < E; ++e) out[t * E + e] = gv * 2.0 * l / double(T) * p[e];
  }
  return f64(out, logits.shape());
}

LoadBalance load_balance_stats(const Tensor& probs, const Tensor& expert_ids, int64_t E) {
  const int64_t T = probs.size(0);
  Vec p = probs.to_vector<double>();
  IVec id = expert_ids.to_vector<int64_t>();
  const double A = double(id.size());
  Vec f(size_t(E), 0.0), P(size_t(E), 0.0);
  for (int64_t a = 0; a < int64_t(id.size()); ++a) {
    check_index(id[a], a, E, "load_balance_stats");
    f[id[a]] += 1.0 / A;
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) P[e] += p[t * E + e] / double(T);
  double loss = 0;
  for (int64_t e = 0; e < E; ++e) loss += f[e] * P[e];
  return {f64(f, {E}), f64(P, {E}), Tensor::full({}, double(E) * loss, DType::f64)};
}

Tensor load_balance_backward(const Tensor& g, const Tensor& f, int64_t T) {
  const int64_t E = f.numel();
  Vec fv = f.to_vector<double>(), out(size_t(T * E));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) out[t * E + e] = g.item() * double(E) * fv[e] / double(T);
  return f64(out, {T, E});
}

Tensor dispatch_softmax(const Tensor& logits) {
  engine::check_dim(logits, 3, "dispatch_softmax", "logits");
  const int64_t B = logits.size(0), N = logits.size(1), S = logits.size(2);
  Vec x = logits.to_vector<double>(), out(x.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) {
      Vec col(static_cast<size_t>(N));
      for (int64_t n = 0; n < N; ++n) col[n] = x[(b * N + n) * S + s];
      Vec p = softmax_of(col);
      for (int64_t n = 0; n < N; ++n) out[(b * N + n) * S + s] = p[n];
    }
  return f64(out, logits.shape());
}

Tensor dispatch_softmax_backward(const Tensor& g, const Tensor& y) {
  const int64_t B = y.size(0), N = y.size(1), S = y.size(2);
  Vec gv = g.to_vector<double>(), yv = y.to_vector<double>(), out(yv.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) {
      double dot = 0;
      for (int64_t n = 0; n < N; ++n) dot += gv[(b * N + n) * S + s] * yv[(b * N + n) * S + s];
      for (int64_t n = 0; n < N; ++n) {
        const int64_t i = (b * N + n) * S + s;
        out[i] = yv[i] * (gv[i] - dot);
      }
    }
  return f64(out, y.shape());
}

}  // namespace kernels::ref
