// Block barriers and warp-level functions of the sim. Every one of them is a call into the
// scheduler (scheduler.cpp), which suspends the calling CUDA thread (a fiber) until the other
// participants have arrived: all threads of the block for __syncthreads, the lanes named in the
// mask for the warp functions. Values travel through a per-warp exchange buffer; a source lane that
// does not take part (outside the mask, exited, or beyond a partial last warp) reads as all-ones
// bits (NaN for floats), as its value is undefined on the device.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace sim::detail {

enum class WarpOp : uint8_t {
  sync,
  shfl_idx,
  shfl_up,
  shfl_down,
  shfl_xor,
  ballot,
  any,
  all,
  reduce_add,
  reduce_min_s,
  reduce_min_u,
  reduce_max_s,
  reduce_max_u,
  reduce_and,
  reduce_or,
  reduce_xor,
  activemask,
};
enum class BarrierKind : uint8_t { plain, count, all, any };

// Both return once every participant has arrived (or throw when the block is aborted).
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t bits, int size, int param, int width);
int block_barrier(BarrierKind kind, int pred);
unsigned active_mask(const void* call_site);
[[noreturn]] void trap();

// Counts blocks run on this OS thread; SHARED variables refill themselves when it changes.
extern thread_local constinit unsigned long long block_serial;
unsigned char* dynamic_smem();

inline void poison_shared(unsigned long long& serial, void* p, size_t n) {
  if (serial != block_serial) {
    serial = block_serial;
    std::memset(p, 0xFF, n);
  }
}

template <class T>
inline uint64_t to_bits(const T& v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "warp functions move values of at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(static_cast<void*>(&v), &b, sizeof(T));
  return v;
}
template <class T>
inline T shuffle(WarpOp op, unsigned mask, const T& v, int param, int width) {
  return from_bits<T>(warp_collective(op, mask, to_bits(v), int(sizeof(T)), param, width));
}

}  // namespace sim::detail

inline void __syncthreads() { sim::detail::block_barrier(sim::detail::BarrierKind::plain, 0); }
inline int __syncthreads_count(int pred) { return sim::detail::block_barrier(sim::detail::BarrierKind::count, pred); }
inline int __syncthreads_and(int pred) { return sim::detail::block_barrier(sim::detail::BarrierKind::all, pred); }
inline int __syncthreads_or(int pred) { return sim::detail::block_barrier(sim::detail::BarrierKind::any, pred); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  sim::detail::warp_collective(sim::detail::WarpOp::sync, mask, 0, 0, 0, 32);
}
template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32) {
  return sim::detail::shuffle(sim::detail::WarpOp::shfl_idx, mask, var, srcLane, width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return sim::detail::shuffle(sim::detail::WarpOp::shfl_up, mask, var, int(delta), width);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return sim::detail::shuffle(sim::detail::WarpOp::shfl_down, mask, var, int(delta), width);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32) {
  return sim::detail::shuffle(sim::detail::WarpOp::shfl_xor, mask, var, laneMask, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return unsigned(sim::detail::warp_collective(sim::detail::WarpOp::ballot, mask, pred != 0, 4, 0, 32));
}
inline int __any_sync(unsigned mask, int pred) {
  return int(sim::detail::warp_collective(sim::detail::WarpOp::any, mask, pred != 0, 4, 0, 32));
}
inline int __all_sync(unsigned mask, int pred) {
  return int(sim::detail::warp_collective(sim::detail::WarpOp::all, mask, pred != 0, 4, 0, 32));
}
// The lanes of the caller's warp that reach this __activemask call together: the caller waits
// until every other live lane of its warp is either here too, or waiting elsewhere (a barrier,
// another warp function or __activemask call), or has exited; the result names the lanes here.
// Not a barrier on the device, but this is the convergence a kernel may rely on.
__attribute__((noinline)) inline unsigned __activemask() {
  return sim::detail::active_mask(__builtin_return_address(0));
}

// sm_80 warp reductions.
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) {
  return unsigned(sim::detail::warp_collective(sim::detail::WarpOp::reduce_add, mask, v, 4, 0, 32));
}
inline int __reduce_add_sync(unsigned mask, int v) {
  return int(sim::detail::warp_collective(sim::detail::WarpOp::reduce_add, mask, unsigned(v), 4, 0, 32));
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) {
  return unsigned(sim::detail::warp_collective(sim::detail::WarpOp::reduce_min_u, mask, v, 4, 0, 32));
}
inline int __reduce_min_sync(unsigned mask, int v) {
  return int(sim::detail::warp_collective(sim::detail::WarpOp::reduce_min_s, mask, unsigned(v), 4, 0, 32));
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) {
  return unsigned(sim::detail::warp_collective(sim::detail::WarpOp::reduce_max_u, mask, v, 4, 0, 32));
}
inline int __reduce_max_sync(unsigned mask, int v) {
  return int(sim::detail::warp_collective(sim::detail::WarpOp::reduce_max_s, mask, unsigned(v), 4, 0, 32));
}
inline unsigned __reduce_and_sync(unsigned mask, unsigned v) {
  return unsigned(sim::detail::warp_collective(sim::detail::WarpOp::reduce_and, mask, v, 4, 0, 32));
}
inline unsigned __reduce_or_sync(unsigned mask, unsigned v) {
  return unsigned(sim::detail::warp_collective(sim::detail::WarpOp::reduce_or, mask, v, 4, 0, 32));
}
inline unsigned __reduce_xor_sync(unsigned mask, unsigned v) {
  return unsigned(sim::detail::warp_collective(sim::detail::WarpOp::reduce_xor, mask, v, 4, 0, 32));
}

// __trap() aborts the kernel: the launch reports cudaErrorLaunchFailure.
inline void __trap() { sim::detail::trap(); }
