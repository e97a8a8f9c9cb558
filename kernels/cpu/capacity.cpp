// CPU capacity plans: experts are independent, so each thread handles whole experts; an expert
// over capacity finds its C-th priority with nth_element and keeps the assignments at or below
// it in their original order.
#include "kernels/capacity.h"

#include <algorithm>
#include <vector>

#include "engine/philox.h"

namespace kernels::cpu {
namespace {

Tensor index_vector(const Tensor& t, const char* op, const char* arg) {
  engine::check_defined(t, op, arg);
  engine::check_cpu(t, op);
  ENGINE_CHECK(t.dim() == 1, op, ": '", arg, "' must be 1-D, got ", t.describe());
  ENGINE_CHECK(t.dtype() == DType::i64 || t.dtype() == DType::i32, op, ": '", arg,
               "' must be i64 or i32, got ", t.describe());
  return t.to(DType::i64).contiguous();
}

// Priority of an assignment: its Philox word, ties broken by the id (a strict total order).
struct Prio {
  uint32_t key;
  int64_t id;
  bool operator<(const Prio& o) const { return key < o.key || (key == o.key && id < o.id); }
};

}  // namespace

CapacityPlan apply_capacity(const DispatchPlan& plan, int64_t C, uint64_t seed, uint64_t stream) {
  const char* op = "apply_capacity";
  ENGINE_CHECK(C >= 0, op, ": capacity must be >= 0, got ", C);
  Tensor counts = index_vector(plan.counts, op, "counts");
  Tensor offsets = index_vector(plan.offsets, op, "offsets");
  Tensor perm = index_vector(plan.perm, op, "perm");
  Tensor rows = index_vector(plan.rows, op, "rows");
  const int64_t E = counts.numel(), A = perm.numel();
  ENGINE_CHECK(offsets.numel() == E + 1, op, ": offsets must have E + 1 = ", E + 1,
               " entries, got ", offsets.describe());
  ENGINE_CHECK(rows.numel() == A, op, ": perm ", perm.describe(), " and rows ", rows.describe(),
               " differ in length");
  const int64_t *cnt = counts.data<int64_t>(), *off = offsets.data<int64_t>();
  ENGINE_CHECK(off[0] == 0 && off[E] == A, op, ": offsets must run from 0 to ", A, ", got ", off[0],
               " .. ", off[E]);
  for (int64_t e = 0; e < E; ++e)
    ENGINE_CHECK(cnt[e] >= 0 && off[e + 1] - off[e] == cnt[e], op, ": counts[", e, "] = ", cnt[e],
                 " does not match offsets ", off[e], " .. ", off[e + 1]);

  CapacityPlan out;
  out.counts = Tensor::empty({E}, DType::i64);
  out.offsets = Tensor::empty({E + 1}, DType::i64);
  int64_t *kc = out.counts.data<int64_t>(), *ko = out.offsets.data<int64_t>();
  int64_t K = 0;
  for (int64_t e = 0; e < E; ++e) {
    ko[e] = K;
    kc[e] = std::min(cnt[e], C);
    K += kc[e];
  }
  ko[E] = K;
  out.dropped = A - K;
  out.perm = Tensor::empty({K}, DType::i64);
  out.rows = Tensor::empty({K}, DType::i64);
  out.experts = Tensor::empty({K}, DType::i64);
  const int64_t *p = perm.data<int64_t>(), *r = rows.data<int64_t>();
  int64_t *op_ = out.perm.data<int64_t>(), *or_ = out.rows.data<int64_t>(),
          *oe = out.experts.data<int64_t>();
#pragma omp parallel for schedule(dynamic) if (A >= (int64_t(1) << 14))
  for (int64_t e = 0; e < E; ++e) {
    const int64_t b = off[e], n = cnt[e];
    int64_t w = ko[e];
    if (n <= C) {
      for (int64_t j = b; j < b + n; ++j, ++w) {
        op_[w] = p[j];
        or_[w] = r[j];
        oe[w] = e;
      }
      continue;
    }
    if (C == 0) continue;
    std::vector<Prio> pr(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j)
      pr[size_t(j)] = {engine::philox_u32(seed, stream, uint64_t(p[b + j])), p[b + j]};
    std::vector<Prio> sel = pr;
    std::nth_element(sel.begin(), sel.begin() + (C - 1), sel.end());
    const Prio last = sel[size_t(C - 1)];  // the C-th smallest priority: keep everything <= it
    for (int64_t j = 0; j < n; ++j) {
      if (last < pr[size_t(j)]) continue;
      op_[w] = p[b + j];
      or_[w] = r[b + j];
      oe[w] = e;
      ++w;
    }
  }
  return out;
}

Tensor unnamed_rows(const Tensor& rows_in, int64_t N) {
  const char* op = "unnamed_rows";
  ENGINE_CHECK(N >= 0, op, ": num_rows must be >= 0, got ", N);
  Tensor rows = index_vector(rows_in, op, "rows");
  const int64_t A = rows.numel();
  const int64_t* r = rows.data<int64_t>();
  std::vector<char> named(static_cast<size_t>(N), 0);
  for (int64_t j = 0; j < A; ++j) {
    ENGINE_CHECK(r[j] >= 0 && r[j] < N, op, ": index ", r[j], " at position ", j,
                 " is out of range [0, ", N, ")");
    named[size_t(r[j])] = 1;
  }
  std::vector<int64_t> out;
  for (int64_t n = 0; n < N; ++n)
    if (!named[size_t(n)]) out.push_back(n);
  return Tensor::from_vector(out, {int64_t(out.size())}, DType::i64);
}

}  // namespace kernels::cpu
