// The sim's host runtime: device memory (host memory with guard bytes), copies, streams, events,
// device properties and the per-thread error state. See runtime.h for the semantics.
#include "kernels/sim/runtime.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <unordered_map>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define SIM_ASAN 1
#else
#define SIM_ASAN 0
#endif

struct CUstream_st {
  unsigned flags = 0;
};
struct CUevent_st {
  unsigned flags = 0;
  bool recorded = false;
  std::chrono::steady_clock::time_point time;
};

namespace sim {
namespace {

// ---------------------------------------------------------------------------------------------
// Errors

struct ErrorState {
  cudaError_t last = cudaSuccess;
  cudaError_t detail_code = cudaSuccess;
  std::string detail;
};
thread_local ErrorState t_error;

// ---------------------------------------------------------------------------------------------
// Allocations: [front guard][user bytes][back guard], the user pointer 256-byte aligned like
// cudaMalloc's.

constexpr size_t kFront = 256;
constexpr size_t kBack = 64;
constexpr unsigned char kGuard = 0xA5;

struct Alloc {
  unsigned char* raw;
  size_t size;
};

struct Registry {
  std::mutex mu;
  std::map<uintptr_t, Alloc> device;  // by user address
  std::set<void*> host;
  std::set<CUstream_st*> streams;
  std::set<CUevent_st*> events;
  std::unordered_map<const void*, size_t> smem_limit;
  size_t device_bytes = 0;
};
Registry& reg() {
  static Registry* r = new Registry;  // never destroyed: frees from static destructors stay safe
  return *r;
}

bool guards_intact(const Alloc& a) {
  for (size_t i = 0; i < kFront; ++i)
    if (a.raw[i] != kGuard) return false;
  const unsigned char* back = a.raw + kFront + a.size;
  for (size_t i = 0; i < kBack; ++i)
    if (back[i] != kGuard) return false;
  return true;
}

// The allocation holding [p, p + n), if any (caller holds the lock).
const Alloc* find_locked(const void* p, size_t n, uintptr_t* base = nullptr) {
  auto& m = reg().device;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = m.upper_bound(a);
  if (it == m.begin()) return nullptr;
  --it;
  const size_t offset = a - it->first, size = it->second.size;
  if (offset >= size || n > size - offset) return nullptr;
  if (base) *base = it->first;
  return &it->second;
}

bool is_device(const void* p) {
  std::lock_guard<std::mutex> lk(reg().mu);
  return find_locked(p, 0) != nullptr;
}

std::string ptr_str(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

// cudaErrorInvalidValue unless [p, p + n) lies inside one live device allocation.
cudaError_t check_device_range(const char* fn, const char* what, const void* p, size_t n) {
  std::lock_guard<std::mutex> lk(reg().mu);
  if (find_locked(p, n)) return cudaSuccess;
  std::string msg = std::string(fn) + ": " + what + " range [" + ptr_str(p) + ", +" + std::to_string(n) +
                    " bytes) is not inside one live device allocation";
  if (const Alloc* a = find_locked(p, 0)) msg += " (the allocation holds " + std::to_string(a->size) + " bytes)";
  return detail::fail(cudaErrorInvalidValue, msg.c_str());
}

bool stream_ok(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return true;
  std::lock_guard<std::mutex> lk(reg().mu);
  return reg().streams.count(s) != 0;
}

cudaError_t bad_stream(const char* fn) {
  return detail::fail(cudaErrorInvalidResourceHandle, (std::string(fn) + ": invalid or destroyed stream").c_str());
}

cudaError_t device_malloc(void** ptr, size_t size, const char* fn) {
  if (!ptr) return detail::fail(cudaErrorInvalidValue, (std::string(fn) + ": null output pointer").c_str());
  if (size == 0) {
    *ptr = nullptr;
    return cudaSuccess;
  }
  unsigned char* raw = nullptr;
  try {
    raw = static_cast<unsigned char*>(::operator new(kFront + size + kBack, std::align_val_t(256)));
  } catch (const std::bad_alloc&) {
    *ptr = nullptr;
    return detail::fail(cudaErrorMemoryAllocation,
                        (std::string(fn) + ": out of memory allocating " + std::to_string(size) + " bytes").c_str());
  }
  unsigned char* user = raw + kFront;
  std::memset(raw, kGuard, kFront);
  std::memset(user, 0xFF, size);  // never-written device memory reads as NaN
  std::memset(user + size, kGuard, kBack);
#if SIM_ASAN
  ASAN_POISON_MEMORY_REGION(raw, kFront);
  ASAN_POISON_MEMORY_REGION(user + size, kBack);
#endif
  {
    std::lock_guard<std::mutex> lk(reg().mu);
    reg().device[reinterpret_cast<uintptr_t>(user)] = Alloc{raw, size};
    reg().device_bytes += size;
  }
  *ptr = user;
  return cudaSuccess;
}

cudaError_t device_free(void* p, const char* fn) {
  if (!p) return cudaSuccess;
  Alloc a;
  {
    std::lock_guard<std::mutex> lk(reg().mu);
    auto it = reg().device.find(reinterpret_cast<uintptr_t>(p));
    if (it == reg().device.end()) {
      return detail::fail(cudaErrorInvalidValue, (std::string(fn) + "(" + ptr_str(p) +
                                                  "): not a live device allocation (double free, or a pointer "
                                                  "cudaMalloc did not return)")
                                                     .c_str());
    }
    a = it->second;
    reg().device.erase(it);
    reg().device_bytes -= a.size;
  }
#if SIM_ASAN
  ASAN_UNPOISON_MEMORY_REGION(a.raw, kFront + a.size + kBack);
#endif
  const bool intact = guards_intact(a);
  ::operator delete(a.raw, std::align_val_t(256));
  if (!intact) {
    return detail::fail(
        cudaErrorIllegalAddress,
        (std::string(fn) + "(" + ptr_str(p) + "): the guard bytes around this allocation were overwritten").c_str());
  }
  return cudaSuccess;
}

cudaError_t memcpy_impl(void* dst, const void* src, size_t count, cudaMemcpyKind kind, const char* fn) {
  if (count == 0) return cudaSuccess;
  if (!dst || !src) return detail::fail(cudaErrorInvalidValue, (std::string(fn) + ": null pointer").c_str());
  bool dst_dev = false, src_dev = false;
  switch (kind) {
    case cudaMemcpyHostToHost: break;
    case cudaMemcpyHostToDevice: dst_dev = true; break;
    case cudaMemcpyDeviceToHost: src_dev = true; break;
    case cudaMemcpyDeviceToDevice: dst_dev = src_dev = true; break;
    case cudaMemcpyDefault:
      dst_dev = is_device(dst);
      src_dev = is_device(src);
      break;
    default:
      return detail::fail(cudaErrorInvalidMemcpyDirection, (std::string(fn) + ": invalid cudaMemcpyKind").c_str());
  }
  if (dst_dev) {
    if (cudaError_t e = check_device_range(fn, "destination", dst, count)) return e;
  }
  if (src_dev) {
    if (cudaError_t e = check_device_range(fn, "source", src, count)) return e;
  }
  std::memcpy(dst, src, count);
  return cudaSuccess;
}

cudaError_t memset_impl(void* p, int value, size_t count, const char* fn) {
  if (count == 0) return cudaSuccess;
  if (cudaError_t e = check_device_range(fn, "destination", p, count)) return e;
  std::memset(p, value, count);
  return cudaSuccess;
}

cudaError_t check_device_index(int device, const char* fn) {
  if (device != 0)
    return detail::fail(
        cudaErrorInvalidDevice,
        (std::string(fn) + ": device " + std::to_string(device) + " does not exist (the sim has 1)").c_str());
  return cudaSuccess;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// sim:: helpers

const char* last_error_detail() { return t_error.detail.c_str(); }
const char* error_detail(cudaError_t code) { return t_error.detail_code == code ? t_error.detail.c_str() : ""; }

bool find_allocation(const void* p, Allocation* out) {
  std::lock_guard<std::mutex> lk(reg().mu);
  uintptr_t base = 0;
  const Alloc* a = find_locked(p, 0, &base);
  if (!a) return false;
  if (out) *out = Allocation{reinterpret_cast<const void*>(base), a->size};
  return true;
}

size_t live_allocation_count() {
  std::lock_guard<std::mutex> lk(reg().mu);
  return reg().device.size();
}

namespace detail {

cudaError_t fail(cudaError_t code, const char* detail) {
  t_error.last = code;
  t_error.detail_code = code;
  t_error.detail = detail ? detail : "";
  return code;
}

bool stream_is_valid(cudaStream_t s) { return stream_ok(s); }

size_t dynamic_smem_limit(const void* func) {
  std::lock_guard<std::mutex> lk(reg().mu);
  auto it = reg().smem_limit.find(func);
  return it == reg().smem_limit.end() ? kDefaultDynamicSmemLimit : it->second;
}

bool check_allocation_guards(char* msg, size_t msg_size) {
#if SIM_ASAN
  // The guards are poisoned: AddressSanitizer has already reported any access to them.
  (void)msg;
  (void)msg_size;
  return true;
#else
  std::lock_guard<std::mutex> lk(reg().mu);
  for (auto& [user, a] : reg().device) {
    if (guards_intact(a)) continue;
    std::snprintf(msg, msg_size,
                  "wrote outside the device allocation of %zu bytes at %p (its guard bytes were overwritten)", a.size,
                  reinterpret_cast<void*>(user));
    std::memset(a.raw, kGuard, kFront);  // report each overrun once
    std::memset(a.raw + kFront + a.size, kGuard, kBack);
    return false;
  }
  return true;
#endif
}

}  // namespace detail
}  // namespace sim

using sim::detail::fail;

// ---------------------------------------------------------------------------------------------
// The CUDA runtime API

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidSymbol: return "cudaErrorInvalidSymbol";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchTimeout: return "cudaErrorLaunchTimeout";
    case cudaErrorAssert: return "cudaErrorAssert";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorUnknown: return "cudaErrorUnknown";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidSymbol: return "invalid device symbol";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchTimeout: return "the launch timed out and was terminated";
    case cudaErrorAssert: return "device-side assert triggered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorUnknown: return "unknown error";
  }
  return "unknown error";
}

cudaError_t cudaGetLastError() {
  cudaError_t e = sim::t_error.last;
  sim::t_error.last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return sim::t_error.last; }

cudaError_t cudaGetDeviceCount(int* count) {
  if (!count) return fail(cudaErrorInvalidValue, "cudaGetDeviceCount: null pointer");
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return sim::check_device_index(device, "cudaSetDevice"); }
cudaError_t cudaGetDevice(int* device) {
  if (!device) return fail(cudaErrorInvalidValue, "cudaGetDevice: null pointer");
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  if (!p) return fail(cudaErrorInvalidValue, "cudaGetDeviceProperties: null pointer");
  if (cudaError_t e = sim::check_device_index(device, "cudaGetDeviceProperties")) return e;
  *p = cudaDeviceProp{};
  std::snprintf(p->name, sizeof p->name, "%s", "engine sim (sm_90, H100-like)");
  p->totalGlobalMem = size_t(80) << 30;
  p->sharedMemPerBlock = sim::kDefaultDynamicSmemLimit;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = 1024;
  p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647;
  p->maxGridSize[1] = 65535;
  p->maxGridSize[2] = 65535;
  p->totalConstMem = 65536;
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 132;
  p->memoryBusWidth = 5120;
  p->l2CacheSize = 50 * 1024 * 1024;
  p->maxThreadsPerMultiProcessor = 2048;
  p->sharedMemPerMultiprocessor = 228 * 1024;
  p->regsPerMultiprocessor = 65536;
  p->sharedMemPerBlockOptin = sim::kMaxDynamicSmemOptin;
  p->maxBlocksPerMultiProcessor = 32;
  p->unifiedAddressing = 1;
  p->concurrentKernels = 1;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (!value) return fail(cudaErrorInvalidValue, "cudaDeviceGetAttribute: null pointer");
  if (cudaError_t e = sim::check_device_index(device, "cudaDeviceGetAttribute")) return e;
  cudaDeviceProp p;
  cudaGetDeviceProperties(&p, 0);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimX: *value = p.maxThreadsDim[0]; break;
    case cudaDevAttrMaxGridDimX: *value = p.maxGridSize[0]; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = int(p.sharedMemPerBlock); break;
    case cudaDevAttrWarpSize: *value = p.warpSize; break;
    case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
    case cudaDevAttrL2CacheSize: *value = p.l2CacheSize; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = p.maxThreadsPerMultiProcessor; break;
    case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = int(p.sharedMemPerMultiprocessor); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = int(p.sharedMemPerBlockOptin); break;
    default: return fail(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute not modelled by the sim");
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }  // all work is already done
cudaError_t cudaDriverGetVersion(int* v) {
  if (!v) return fail(cudaErrorInvalidValue, "cudaDriverGetVersion: null pointer");
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  if (!v) return fail(cudaErrorInvalidValue, "cudaRuntimeGetVersion: null pointer");
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  if (!free_bytes || !total_bytes) return fail(cudaErrorInvalidValue, "cudaMemGetInfo: null pointer");
  const size_t total = size_t(80) << 30;
  std::lock_guard<std::mutex> lk(sim::reg().mu);
  *total_bytes = total;
  *free_bytes = total - std::min(total, sim::reg().device_bytes);
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t size) { return sim::device_malloc(ptr, size, "cudaMalloc"); }
cudaError_t cudaFree(void* ptr) { return sim::device_free(ptr, "cudaFree"); }
cudaError_t cudaMallocAsync(void** ptr, size_t size, cudaStream_t stream) {
  if (!sim::stream_ok(stream)) return sim::bad_stream("cudaMallocAsync");
  return sim::device_malloc(ptr, size, "cudaMallocAsync");
}
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream) {
  if (!sim::stream_ok(stream)) return sim::bad_stream("cudaFreeAsync");
  return sim::device_free(ptr, "cudaFreeAsync");
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  if (!ptr) return fail(cudaErrorInvalidValue, "cudaMallocHost: null output pointer");
  void* p = std::aligned_alloc(256, std::max<size_t>(256, (size + 255) / 256 * 256));
  if (!p) return fail(cudaErrorMemoryAllocation, "cudaMallocHost: out of memory");
  std::lock_guard<std::mutex> lk(sim::reg().mu);
  sim::reg().host.insert(p);
  *ptr = p;
  return cudaSuccess;
}
cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned int) { return cudaMallocHost(ptr, size); }
cudaError_t cudaFreeHost(void* ptr) {
  if (!ptr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lk(sim::reg().mu);
    if (!sim::reg().host.erase(ptr))
      return fail(cudaErrorInvalidValue, "cudaFreeHost: not a live cudaMallocHost allocation (double free?)");
  }
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  return sim::memcpy_impl(dst, src, count, kind, "cudaMemcpy");
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  if (!sim::stream_ok(stream)) return sim::bad_stream("cudaMemcpyAsync");
  return sim::memcpy_impl(dst, src, count, kind, "cudaMemcpyAsync");
}
cudaError_t cudaMemset(void* ptr, int value, size_t count) { return sim::memset_impl(ptr, value, count, "cudaMemset"); }
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
  if (!sim::stream_ok(stream)) return sim::bad_stream("cudaMemsetAsync");
  return sim::memset_impl(ptr, value, count, "cudaMemsetAsync");
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  if (!stream) return fail(cudaErrorInvalidValue, "cudaStreamCreate: null output pointer");
  auto* s = new CUstream_st{flags};
  std::lock_guard<std::mutex> lk(sim::reg().mu);
  sim::reg().streams.insert(s);
  *stream = s;
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lk(sim::reg().mu);
    if (!stream || !sim::reg().streams.erase(stream)) return sim::bad_stream("cudaStreamDestroy");
  }
  delete stream;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  return sim::stream_ok(stream) ? cudaSuccess : sim::bad_stream("cudaStreamSynchronize");
}
cudaError_t cudaStreamQuery(cudaStream_t stream) {
  return sim::stream_ok(stream) ? cudaSuccess : sim::bad_stream("cudaStreamQuery");
}

namespace {
bool event_ok(cudaEvent_t e) {
  std::lock_guard<std::mutex> lk(sim::reg().mu);
  return e && sim::reg().events.count(e) != 0;
}
cudaError_t bad_event(const char* fn) {
  return fail(cudaErrorInvalidResourceHandle, (std::string(fn) + ": invalid or destroyed event").c_str());
}
}  // namespace

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  if (!sim::stream_ok(stream)) return sim::bad_stream("cudaStreamWaitEvent");
  return event_ok(event) ? cudaSuccess : bad_event("cudaStreamWaitEvent");
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  if (!event) return fail(cudaErrorInvalidValue, "cudaEventCreate: null output pointer");
  auto* e = new CUevent_st;
  e->flags = flags;
  std::lock_guard<std::mutex> lk(sim::reg().mu);
  sim::reg().events.insert(e);
  *event = e;
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  {
    std::lock_guard<std::mutex> lk(sim::reg().mu);
    if (!event || !sim::reg().events.erase(event)) return bad_event("cudaEventDestroy");
  }
  delete event;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (!event_ok(event)) return bad_event("cudaEventRecord");
  if (!sim::stream_ok(stream)) return sim::bad_stream("cudaEventRecord");
  event->recorded = true;
  event->time = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  return event_ok(event) ? cudaSuccess : bad_event("cudaEventSynchronize");
}
cudaError_t cudaEventQuery(cudaEvent_t event) { return event_ok(event) ? cudaSuccess : bad_event("cudaEventQuery"); }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!ms) return fail(cudaErrorInvalidValue, "cudaEventElapsedTime: null pointer");
  if (!event_ok(start) || !event_ok(end)) return bad_event("cudaEventElapsedTime");
  if ((start->flags | end->flags) & cudaEventDisableTiming)
    return fail(cudaErrorInvalidResourceHandle,
                "cudaEventElapsedTime: an event was created with cudaEventDisableTiming");
  if (!start->recorded || !end->recorded)
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: an event has not been recorded");
  *ms = std::chrono::duration<float, std::milli>(end->time - start->time).count();
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (!func) return fail(cudaErrorInvalidDeviceFunction, "cudaFuncSetAttribute: null function");
  switch (attr) {
    case cudaFuncAttributeMaxDynamicSharedMemorySize:
      if (value < 0 || size_t(value) > sim::kMaxDynamicSmemOptin) {
        return fail(cudaErrorInvalidValue,
                    ("cudaFuncSetAttribute: MaxDynamicSharedMemorySize " + std::to_string(value) + " is outside [0, " +
                     std::to_string(sim::kMaxDynamicSmemOptin) + "]")
                        .c_str());
      }
      {
        std::lock_guard<std::mutex> lk(sim::reg().mu);
        sim::reg().smem_limit[func] = size_t(value);
      }
      return cudaSuccess;
    case cudaFuncAttributePreferredSharedMemoryCarveout:
      if (value < -1 || value > 100)
        return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: carveout outside [-1, 100]");
      return cudaSuccess;
  }
  return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: attribute not modelled by the sim");
}
