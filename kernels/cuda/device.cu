// Device memory for tensors (a caching allocator over cudaMalloc), host<->device copies, and the
// registration of the backend with the engine (engine::DeviceHooks).
#include "kernels/cuda/device.h"

#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "engine/allocator.h"
#include "engine/storage.h"
#include "kernels/cuda/compat.h"

namespace kernels::cuda {
namespace {

#if defined(__CUDACC__)
constexpr engine::DeviceType kType = engine::DeviceType::cuda;
#else
constexpr engine::DeviceType kType = engine::DeviceType::sim;
#endif

// Freed blocks are kept by size and reused, so a steady training step never calls cudaMalloc.
// On a GPU sizes are rounded to the CPU allocator's size classes; under the sim every block has
// its exact size, so the sim's guard bytes sit right after the tensor and catch overruns.
struct Pool {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_lists;
  DeviceAllocatorStats st;
};
Pool& pool() {
  static Pool* p = new Pool;  // never destroyed: tensors may be freed during static teardown
  return *p;
}

size_t block_size(size_t bytes) {
#if defined(__CUDACC__)
  return engine::CpuAllocator::size_class(bytes);
#else
  return bytes == 0 ? 1 : bytes;
#endif
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

void* allocate(size_t bytes, int index) {
  ENGINE_CHECK(available(), "no CUDA device is present on this machine; use --device cpu");
  ENGINE_CHECK(index == 0, "device index ", index, " requested; this build uses device 0 only");
  size_t sz = block_size(bytes);
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> lock(p.mu);
    p.st.bytes_in_use += sz;
    p.st.peak_bytes = std::max(p.st.peak_bytes, p.st.bytes_in_use);
    auto it = p.free_lists.find(sz);
    if (it != p.free_lists.end() && !it->second.empty()) {
      void* ptr = it->second.back();
      it->second.pop_back();
      p.st.bytes_cached -= sz;
      return ptr;
    }
    p.st.device_allocs++;
  }
  void* ptr = nullptr;
  cudaError_t err = cudaMalloc(&ptr, sz);
  if (err != cudaSuccess) {  // release the cache and try once more before giving up
    (void)cudaGetLastError();
    release_cached();
    err = cudaMalloc(&ptr, sz);
  }
  if (err != cudaSuccess) {
    std::lock_guard<std::mutex> lock(p.mu);
    p.st.bytes_in_use -= sz;
    CUDA_CHECK(err);
  }
  return ptr;
}

void deallocate(void* ptr, size_t bytes, int) {
  if (!ptr) return;
  size_t sz = block_size(bytes);
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  p.st.bytes_in_use -= sz;
  p.st.bytes_cached += sz;
  p.free_lists[sz].push_back(ptr);
}

cudaStream_t compute_stream() { return static_cast<cudaStream_t>(stream()); }

void copy_to_host(void* dst, const void* src, size_t n, int) {
  CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, compute_stream()));
  CUDA_CHECK(cudaStreamSynchronize(compute_stream()));
}
void copy_from_host(void* dst, const void* src, size_t n, int) {
  CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, compute_stream()));
  CUDA_CHECK(cudaStreamSynchronize(compute_stream()));  // src may be freed by the caller next
}
void copy_on_device(void* dst, const void* src, size_t n, int) {
  CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, compute_stream()));
}
void memset_zero(void* dst, size_t n, int) { CUDA_CHECK(cudaMemsetAsync(dst, 0, n, compute_stream())); }

// Registers the backend when the program starts (the test and train binaries link every object).
const bool registered = [] {
  engine::DeviceHooks h;
  h.allocate = allocate;
  h.deallocate = deallocate;
  h.copy_to_host = copy_to_host;
  h.copy_from_host = copy_from_host;
  h.copy_on_device = copy_on_device;
  h.memset_zero = memset_zero;
  engine::register_device_hooks(kType, h);
  return true;
}();

}  // namespace

engine::Device device() { return {kType, 0}; }

bool available() {
  static const bool ok = device_count() > 0;
  return ok;
}

void synchronize() { CUDA_CHECK(cudaStreamSynchronize(compute_stream())); }

// The default stream for now; a dedicated non-blocking stream comes with multi-stream overlap.
void* stream() { return nullptr; }

DeviceAllocatorStats allocator_stats() {
  std::lock_guard<std::mutex> lock(pool().mu);
  return pool().st;
}

void release_cached() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  for (auto& [sz, blocks] : p.free_lists) {
    for (void* ptr : blocks) (void)cudaFree(ptr);
    blocks.clear();
  }
  p.st.bytes_cached = 0;
}

void check_launch(const char* kernel, const char* file, int line) {
  static const bool sync_each = [] {
    const char* e = std::getenv("ENGINE_CUDA_SYNC");
    return e && e[0] == '1';
  }();
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess && sync_each) err = cudaStreamSynchronize(compute_stream());
  if (err == cudaSuccess) return;
#if defined(__CUDACC__)
  ENGINE_FAIL("CUDA kernel ", kernel, " (", file, ":", line, ") failed: ", cudaGetErrorName(err),
              " (", cudaGetErrorString(err), ")");
#else
  ENGINE_FAIL("CUDA kernel ", kernel, " (", file, ":", line, ") failed: ", cudaGetErrorName(err),
              " [sim: ", sim::error_detail(err), "]");
#endif
}

}  // namespace kernels::cuda
