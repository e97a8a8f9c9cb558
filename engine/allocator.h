// Host memory for tensors: 64-byte aligned blocks, cached by size class and reused, so a steady
// training step that frees and re-allocates the same sizes never reaches malloc.
#pragma once
#include <cstddef>
#include <cstdint>

namespace engine {

struct AllocatorStats {
  size_t bytes_in_use = 0;    // handed out and not yet freed
  size_t peak_bytes = 0;      // maximum of bytes_in_use since the last reset_peak()
  size_t bytes_cached = 0;    // freed blocks kept for reuse
  uint64_t system_allocs = 0; // calls that reached the system allocator
  uint64_t system_bytes = 0;  // bytes those calls asked for (size classes), in total
  uint64_t allocs = 0;        // all allocation requests
};

class CpuAllocator {
 public:
  static constexpr size_t kAlignment = 64;
  // Freed blocks beyond this many cached bytes go back to the system.
  static constexpr size_t kMaxCachedBytes = size_t(4) << 30;

  // Returns a block of at least `bytes` (rounded up to its size class). bytes == 0 gives a
  // valid, unique, non-null pointer.
  static void* allocate(size_t bytes);
  static void deallocate(void* p, size_t bytes);
  static AllocatorStats stats();
  static void reset_peak();
  // Returns every cached block to the system.
  static void release_cached();
  // The size class a request of `bytes` is rounded up to.
  static size_t size_class(size_t bytes);
};

}  // namespace engine
