// Reference capacity plans, written from the definitions in kernels/capacity.h: per expert, a full
// sort of its assignments by (Philox word, id), the first C into a set, then a pass in plan order.
// Tests only.
#include "kernels/capacity.h"

#include <algorithm>
#include <set>
#include <utility>
#include <vector>

#include "engine/philox.h"

namespace kernels::ref {

CapacityPlan apply_capacity(const DispatchPlan& plan, int64_t C, uint64_t seed, uint64_t stream) {
  ENGINE_CHECK(C >= 0, "apply_capacity: capacity must be >= 0, got ", C);
  const auto counts = plan.counts.to_vector<int64_t>();
  const auto perm = plan.perm.to_vector<int64_t>();
  const auto rows = plan.rows.to_vector<int64_t>();
  const int64_t E = int64_t(counts.size());
  std::vector<int64_t> kc, ko, kp, kr, ke;
  int64_t start = 0;
  for (int64_t e = 0; e < E; ++e) {
    std::vector<std::pair<uint32_t, int64_t>> prio;
    for (int64_t j = start; j < start + counts[size_t(e)]; ++j)
      prio.push_back(
          {engine::philox_u32(seed, stream, uint64_t(perm[size_t(j)])), perm[size_t(j)]});
    std::sort(prio.begin(), prio.end());
    std::set<int64_t> keep;
    for (int64_t i = 0; i < std::min<int64_t>(C, int64_t(prio.size())); ++i)
      keep.insert(prio[size_t(i)].second);
    ko.push_back(int64_t(kp.size()));
    for (int64_t j = start; j < start + counts[size_t(e)]; ++j) {
      if (!keep.count(perm[size_t(j)])) continue;
      kp.push_back(perm[size_t(j)]);
      kr.push_back(rows[size_t(j)]);
      ke.push_back(e);
    }
    kc.push_back(int64_t(kp.size()) - ko.back());
    start += counts[size_t(e)];
  }
  ko.push_back(int64_t(kp.size()));
  const int64_t K = int64_t(kp.size());
  CapacityPlan out;
  out.counts = Tensor::from_vector(kc, {E}, DType::i64);
  out.offsets = Tensor::from_vector(ko, {E + 1}, DType::i64);
  out.perm = Tensor::from_vector(kp, {K}, DType::i64);
  out.rows = Tensor::from_vector(kr, {K}, DType::i64);
  out.experts = Tensor::from_vector(ke, {K}, DType::i64);
  out.dropped = int64_t(perm.size()) - K;
  return out;
}

Tensor unnamed_rows(const Tensor& rows, int64_t num_rows) {
  const auto r = rows.to_vector<int64_t>();
  std::vector<int64_t> out;
  for (int64_t n = 0; n < num_rows; ++n)
    if (std::find(r.begin(), r.end(), n) == r.end()) out.push_back(n);
  return Tensor::from_vector(out, {int64_t(out.size())}, DType::i64);
}

}  // namespace kernels::ref
