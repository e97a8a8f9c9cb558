// Index plans for capacity-limited token-choice routing (Switch Transformer's expert capacity).
//
// apply_capacity(plan, C, seed, stream) takes a dispatch plan (kernels/routing.h: assignments
// sorted by expert) and keeps at most C assignments per expert. An expert over capacity keeps a
// uniformly random subset of C of its assignments: assignment a gets the Philox word
// philox_u32(seed, stream, a) as its priority and the C smallest (word, a) pairs survive, which
// is the same as visiting the assignments in a random order and filling each expert until it is
// full. Survivors keep the plan's order (expert-major, original order within an expert), so the
// result is again a dispatch plan that the grouped matmul and combine_rows take as is. The draw
// depends only on (seed, stream, assignment id), so every backend drops the same assignments.
//
// unnamed_rows(rows, N) lists the rows of [0, N) that no entry of `rows` names: after
// apply_capacity, the tokens none of whose assignments survived (they pass through the layer
// unchanged); for expert choice, the tokens no expert took.
//
// Only CPU implementations exist: the plans are a few integers per token, so for tensors on
// another device the entry points copy them to the host and the results back (one
// synchronisation per call; capacity mode is the faithful mode, dropless routing is the fast path).
#pragma once
#include <cstdint>

#include "kernels/routing.h"

namespace kernels {

struct CapacityPlan {
  Tensor counts;    // i64 [E]: min(count_e, capacity), kept assignments per expert
  Tensor offsets;   // i64 [E + 1]: exclusive prefix sum of counts
  Tensor perm;      // i64 [K]: the kept assignments (ids into the plan's assignment numbering)
  Tensor rows;      // i64 [K]: the token of each kept assignment
  Tensor experts;   // i64 [K]: the expert of each kept assignment (non-decreasing)
  int64_t dropped = 0;  // assignments over capacity: Σ_e max(0, count_e - capacity)
};

namespace cpu {
CapacityPlan apply_capacity(const DispatchPlan& plan, int64_t capacity, uint64_t seed,
                            uint64_t stream);
// rows [A] (i64 or i32) with values in [0, num_rows) -> i64 [P], ascending.
Tensor unnamed_rows(const Tensor& rows, int64_t num_rows);
}  // namespace cpu

// Plain loops (full sorts, sets) for the tests; same results.
namespace ref {
CapacityPlan apply_capacity(const DispatchPlan& plan, int64_t capacity, uint64_t seed,
                            uint64_t stream);
Tensor unnamed_rows(const Tensor& rows, int64_t num_rows);
}  // namespace ref

namespace detail {
inline Tensor host(const Tensor& t) { return t.device().is_cpu() ? t : t.to(Device::cpu()); }
}  // namespace detail

inline CapacityPlan apply_capacity(const DispatchPlan& plan, int64_t capacity, uint64_t seed,
                                   uint64_t stream) {
  const Device dev = plan.counts.defined() ? plan.counts.device() : Device::cpu();
  if (dev.is_cpu()) return cpu::apply_capacity(plan, capacity, seed, stream);
  DispatchPlan h{detail::host(plan.counts), detail::host(plan.offsets), detail::host(plan.perm),
                 detail::host(plan.rows)};
  CapacityPlan c = cpu::apply_capacity(h, capacity, seed, stream);
  return {c.counts.to(dev), c.offsets.to(dev), c.perm.to(dev), c.rows.to(dev),
          c.experts.to(dev), c.dropped};
}

inline Tensor unnamed_rows(const Tensor& rows, int64_t num_rows) {
  if (!rows.defined() || rows.device().is_cpu()) return cpu::unnamed_rows(rows, num_rows);
  return cpu::unnamed_rows(detail::host(rows), num_rows).to(rows.device());
}

}  // namespace kernels
