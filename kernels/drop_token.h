// Drop-token (IMP): during training each example keeps a uniformly random subset of its L tokens,
// in their original order; the encoder then runs on [B, keep, D] only.
//
// Randomness: example b of a call with key (seed, stream) uses Philox stream
//   stream_b = stream + (b << 32)            (drop_token_stream)
// and its kept indices are exactly engine::philox_choose_sorted(seed, stream_b, L, keep): the
// `keep` tokens j with the smallest (philox_u32(seed, stream_b, j), j) pairs, sorted by j. Putting
// b in the high 32 bits (rather than stream·B + b) keeps calls with different batch sizes from
// reusing each other's subsets: (stream, b) -> stream_b is one-to-one for stream < 2^32.
// Every backend returns the same indices bit for bit.
#pragma once
#include <cstdint>

#include "kernels/backend.h"

namespace kernels {

// int((1 - rate) · L), truncated as the reference does. rate = 0 keeps every token; otherwise
// 0 < rate < 1 - 1/L is required (so at least one token is kept), else an error that says
// "drop-token rate r must be < 1 - 1/L".
int64_t keep_count(int64_t L, double rate);

inline uint64_t drop_token_stream(uint64_t stream, int64_t b) {
  return stream + (static_cast<uint64_t>(b) << 32);
}

namespace cpu {
// i64 [B, keep], each row strictly increasing in [0, L). 0 <= keep <= L.
Tensor drop_token_indices(int64_t B, int64_t L, int64_t keep, uint64_t seed, uint64_t stream);
// x [B, L, ...] (any dtype), idx [B, keep] (i64/i32, each in [0, L)) -> [B, keep, ...]:
// out[b, p] = x[b, idx[b, p]].
Tensor drop_token_gather(const Tensor& x, const Tensor& idx);
// The backward: g [B, keep, ...] -> [B, L, ...], out[b, idx[b, p]] = g[b, p], other rows 0.
// Each row of idx must be strictly increasing (distinct), as drop_token_indices makes it.
Tensor drop_token_scatter(const Tensor& g, const Tensor& idx, int64_t L);
}  // namespace cpu

// Plain loops: all L keys sorted as (key, index) pairs, no heap, no philox_choose_sorted.
namespace ref {
Tensor drop_token_indices(int64_t B, int64_t L, int64_t keep, uint64_t seed, uint64_t stream);
Tensor drop_token_gather(const Tensor& x, const Tensor& idx);
Tensor drop_token_scatter(const Tensor& g, const Tensor& idx, int64_t L);
}  // namespace ref

// kernels/cuda/drop_token.cu. drop_token_indices handles L <= 16384 (one block sorts an
// example's keys in shared memory); gather/scatter move any dtype.
namespace cuda {
inline constexpr int64_t kDropTokenMaxL = 16384;
Tensor drop_token_indices(int64_t B, int64_t L, int64_t keep, uint64_t seed, uint64_t stream);
Tensor drop_token_gather(const Tensor& x, const Tensor& idx);
Tensor drop_token_scatter(const Tensor& g, const Tensor& idx, int64_t L);
}  // namespace cuda

// Indices are made on `device` (nothing else says where they should live).
inline Tensor drop_token_indices(int64_t B, int64_t L, int64_t keep, uint64_t seed, uint64_t stream,
                                 Device device = Device::cpu()) {
  KERNEL_ROUTE(device, drop_token_indices, B, L, keep, seed, stream);
}
inline Tensor drop_token_gather(const Tensor& x, const Tensor& idx) {
  KERNEL_ROUTE(x.device(), drop_token_gather, x, idx);
}
inline Tensor drop_token_scatter(const Tensor& g, const Tensor& idx, int64_t L) {
  KERNEL_ROUTE(g.device(), drop_token_scatter, g, idx, L);
}

}  // namespace kernels
