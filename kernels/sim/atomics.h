// Device atomics as real atomics (blocks run on several OS threads): std::atomic_ref with relaxed
// order, like CUDA's atomicXxx; floating-point adds are compare-and-swap loops. __threadfence is a
// sequentially consistent fence, which is what the "write, fence, atomic flag" patterns need.
#pragma once
#include <atomic>

#include "kernels/sim/bf16.h"

namespace sim::detail {
template <class T, class F>
inline T atomic_update(T* p, F f) {
  std::atomic_ref<T> a(*p);
  T old = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(old, f(old), std::memory_order_relaxed)) {
  }
  return old;
}
template <class T>
inline T atomic_add(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed);
}
}  // namespace sim::detail

inline int atomicAdd(int* p, int v) { return sim::detail::atomic_add(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return sim::detail::atomic_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return sim::detail::atomic_add(p, v);
}
inline float atomicAdd(float* p, float v) {
  return sim::detail::atomic_update(p, [v](float old) { return old + v; });
}
inline double atomicAdd(double* p, double v) {
  return sim::detail::atomic_update(p, [v](double old) { return old + v; });
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* p, __nv_bfloat16 v) {
  return sim::detail::atomic_update(p, [v](__nv_bfloat16 old) { return __hadd(old, v); });
}

inline int atomicSub(int* p, int v) { return std::atomic_ref<int>(*p).fetch_sub(v, std::memory_order_relaxed); }
inline unsigned atomicSub(unsigned* p, unsigned v) {
  return std::atomic_ref<unsigned>(*p).fetch_sub(v, std::memory_order_relaxed);
}

template <class T>
inline T sim_atomic_max(T* p, T v) {
  return sim::detail::atomic_update(p, [v](T old) { return old < v ? v : old; });
}
template <class T>
inline T sim_atomic_min(T* p, T v) {
  return sim::detail::atomic_update(p, [v](T old) { return v < old ? v : old; });
}
inline int atomicMax(int* p, int v) { return sim_atomic_max(p, v); }
inline unsigned atomicMax(unsigned* p, unsigned v) { return sim_atomic_max(p, v); }
inline long long atomicMax(long long* p, long long v) { return sim_atomic_max(p, v); }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) { return sim_atomic_max(p, v); }
inline int atomicMin(int* p, int v) { return sim_atomic_min(p, v); }
inline unsigned atomicMin(unsigned* p, unsigned v) { return sim_atomic_min(p, v); }
inline long long atomicMin(long long* p, long long v) { return sim_atomic_min(p, v); }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) { return sim_atomic_min(p, v); }

inline int atomicExch(int* p, int v) { return std::atomic_ref<int>(*p).exchange(v, std::memory_order_relaxed); }
inline unsigned atomicExch(unsigned* p, unsigned v) {
  return std::atomic_ref<unsigned>(*p).exchange(v, std::memory_order_relaxed);
}
inline unsigned long long atomicExch(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).exchange(v, std::memory_order_relaxed);
}
inline float atomicExch(float* p, float v) { return std::atomic_ref<float>(*p).exchange(v, std::memory_order_relaxed); }

template <class T>
inline T sim_atomic_cas(T* p, T compare, T val) {
  std::atomic_ref<T>(*p).compare_exchange_strong(compare, val, std::memory_order_relaxed);
  return compare;  // the old value, whether or not the swap happened
}
inline int atomicCAS(int* p, int compare, int val) { return sim_atomic_cas(p, compare, val); }
inline unsigned atomicCAS(unsigned* p, unsigned compare, unsigned val) { return sim_atomic_cas(p, compare, val); }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long compare, unsigned long long val) {
  return sim_atomic_cas(p, compare, val);
}
inline unsigned short atomicCAS(unsigned short* p, unsigned short compare, unsigned short val) {
  return sim_atomic_cas(p, compare, val);
}

inline int atomicAnd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_and(v, std::memory_order_relaxed); }
inline unsigned atomicAnd(unsigned* p, unsigned v) {
  return std::atomic_ref<unsigned>(*p).fetch_and(v, std::memory_order_relaxed);
}
inline int atomicOr(int* p, int v) { return std::atomic_ref<int>(*p).fetch_or(v, std::memory_order_relaxed); }
inline unsigned atomicOr(unsigned* p, unsigned v) {
  return std::atomic_ref<unsigned>(*p).fetch_or(v, std::memory_order_relaxed);
}
inline int atomicXor(int* p, int v) { return std::atomic_ref<int>(*p).fetch_xor(v, std::memory_order_relaxed); }
inline unsigned atomicXor(unsigned* p, unsigned v) {
  return std::atomic_ref<unsigned>(*p).fetch_xor(v, std::memory_order_relaxed);
}
// atomicInc/atomicDec wrap at `limit` like the device's.
inline unsigned atomicInc(unsigned* p, unsigned limit) {
  return sim::detail::atomic_update(p, [limit](unsigned old) { return old >= limit ? 0u : old + 1; });
}
inline unsigned atomicDec(unsigned* p, unsigned limit) {
  return sim::detail::atomic_update(p, [limit](unsigned old) { return (old == 0 || old > limit) ? limit : old - 1; });
}

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }
